//! The benchmark's worker mode: N worker processes share one database; this process
//! plans once, submits the workflows, and watches them complete.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portia::runner::WorkerOptions;
use portia::storage::{SqliteStorage, Storage, WorkflowQuery};
use portia::{Runner, WorkflowState};
use serde_json::{Value, json};

use super::{Args, QUERY, cpu_seconds, percentile, round};

/// The shared store: `sqlite:PATH`, or `postgres:SCHEMA:URL` (with the `postgres` feature).
pub(crate) fn open_store(spec: &str) -> Result<Arc<dyn Storage>, String> {
    match spec.split_once(':') {
        Some(("sqlite", path)) => Ok(Arc::new(SqliteStorage::open(path).map_err(|e| e.to_string())?)),
        #[cfg(feature = "postgres")]
        Some(("postgres", rest)) => {
            let (schema, url) = rest.split_once(':').ok_or("postgres:SCHEMA:URL")?;
            let settings = portia::storage::PostgresSettings::new(url).schema(schema).pool_size(16);
            Ok(Arc::new(portia::storage::PostgresStorage::new(&settings).map_err(|e| e.to_string())?))
        }
        _ => Err(format!("unknown store {spec:?}; build with --features postgres for Postgres")),
    }
}

/// The store spec of a fresh schema in the Postgres database at `url`, so that
/// earlier measurements do not weigh on this one.
pub(crate) fn fresh_postgres(url: &str) -> String {
    format!("postgres:bench_{}:{url}", uuid::Uuid::new_v4().simple())
}

/// Runs the workflows on `workers` worker processes and reports one JSON object.
pub(crate) async fn measure(args: &Args, base_url: &str, workers: usize) -> Result<Value, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let spec = match &args.database_url {
        Some(url) => fresh_postgres(url),
        None => format!("sqlite:{}", dir.path().join("portia.db").display()),
    };
    let storage = open_store(&spec)?;
    let runner = super::runner(
        args,
        base_url,
        Arc::clone(&storage),
        super::Variant { client_rpm: args.client_rpm, ..Default::default() },
    )?;
    let plan = runner.generate_plan(QUERY).await.map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for _ in 0..workers {
        children.push(spawn_worker(args, base_url, &spec)?);
    }
    let started = Instant::now();
    let mut submitted = Vec::with_capacity(args.n);
    for _ in 0..args.n {
        submitted.push((runner.submit_plan(&plan).await.map_err(|e| e.to_string())?, Instant::now()));
    }
    let finished = watch(storage.as_ref(), &submitted).await?;
    let wall = started.elapsed();
    let worker_cpu: f64 = children.into_iter().map(stop_worker).sum::<Result<f64, String>>()?;
    let mut latencies: Vec<Duration> = submitted.iter().map(|(id, at)| finished[id].duration_since(*at)).collect();
    latencies.sort();
    Ok(json!({
        "workflows": args.n,
        "workers": workers,
        "concurrency_per_worker": args.worker_concurrency,
        "storage": spec.split(':').next(),
        "wall_seconds": round(wall.as_secs_f64(), 3),
        "workflows_per_second": round(args.n as f64 / wall.as_secs_f64(), 1),
        "latency_p50_seconds": round(percentile(&latencies, 0.5), 3),
        "latency_p90_seconds": round(percentile(&latencies, 0.9), 3),
        "worker_cpu_ms_per_workflow": round(worker_cpu * 1000.0 / args.n as f64, 3),
    }))
}

/// Polls the store until every workflow is COMPLETE, noting when each was first seen so.
async fn watch(
    storage: &dyn Storage,
    submitted: &[(portia::WorkflowId, Instant)],
) -> Result<std::collections::HashMap<portia::WorkflowId, Instant>, String> {
    let mut finished = std::collections::HashMap::new();
    let query = WorkflowQuery::in_state(WorkflowState::Complete).page_size(submitted.len().max(1));
    while finished.len() < submitted.len() {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let page = storage.list_workflows(&query).await.map_err(|e| e.to_string())?;
        let now = Instant::now();
        for workflow in page.results {
            finished.entry(workflow.id()).or_insert(now);
        }
        let failed = storage.list_workflows(&WorkflowQuery::in_state(WorkflowState::Failed)).await;
        if failed.map_err(|e| e.to_string())?.count > 0 {
            return Err("a workflow FAILED; run with PORTIA_LOG_LEVEL=warn to see why".to_owned());
        }
    }
    Ok(finished)
}

fn spawn_worker(args: &Args, base_url: &str, spec: &str) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["--work", spec, "--base-url", base_url])
        .args(["--worker-concurrency", &args.worker_concurrency.to_string()])
        .args(if args.sequential { &["--sequential"][..] } else { &[] })
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start a worker: {e}"))?;
    let stdout = child.stdout.take().ok_or("the worker has no stdout")?;
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "READY" {
        return Err(format!("unexpected worker output {line:?}"));
    }
    // Keep the pipe: the worker reports its CPU time there when it stops.
    child.stdout = Some(reader.into_inner());
    Ok(child)
}

/// Asks a worker to shut down (SIGTERM) and returns the CPU time it reported.
fn stop_worker(mut child: Child) -> Result<f64, String> {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    status.map_err(|e| format!("could not stop a worker: {e}"))?;
    let stdout = child.stdout.take().ok_or("the worker has no stdout")?;
    let cpu = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("CPU ").and_then(|s| s.parse::<f64>().ok()))
        .ok_or("the worker did not report its CPU time")?;
    child.wait().map_err(|e| e.to_string())?;
    Ok(cpu)
}

/// A worker process: runs queued workflows from the store `spec` names until SIGTERM,
/// then prints its CPU time.
pub(crate) async fn work(args: &Args, spec: &str, base_url: &str) -> Result<(), String> {
    let storage = open_store(spec)?;
    let runner: Runner =
        super::runner(args, base_url, storage, super::Variant { client_rpm: args.client_rpm, ..Default::default() })?;
    let options = WorkerOptions::new().concurrency(args.worker_concurrency).poll_interval(Duration::from_millis(20));
    println!("READY");
    let cpu_before = cpu_seconds();
    runner.worker(options).run().await;
    println!("CPU {}", cpu_seconds() - cpu_before);
    Ok(())
}
