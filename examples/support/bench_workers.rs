//! The benchmark's worker mode: N worker processes share one database; this process
//! plans once, submits the workflows, and hears from the workers as each ends.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use portia::runner::{EventKind, WorkerOptions};
use portia::storage::{SqliteStorage, Storage, WorkflowQuery};
use portia::{Runner, WorkflowId, WorkflowState};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

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
    let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
    let mut children = Vec::new();
    for _ in 0..workers {
        children.push(spawn_worker(args, base_url, &spec, ended_tx.clone())?);
    }
    let started = Instant::now();
    let mut submitted = Vec::with_capacity(args.n);
    for _ in 0..args.n {
        submitted.push((runner.submit_plan(&plan).await.map_err(|e| e.to_string())?, SystemTime::now()));
    }
    let finished = watch(storage.as_ref(), &submitted, ended).await?;
    let wall = started.elapsed();
    let worker_cpu: f64 = children.into_iter().map(stop_worker).sum::<Result<f64, String>>()?;
    let mut latencies: Vec<Duration> =
        submitted.iter().map(|(id, at)| finished[id].duration_since(*at).unwrap_or_default()).collect();
    latencies.sort();
    Ok(json!({
        "workflows": args.n,
        "workers": workers,
        "concurrency_per_worker": args.worker_concurrency,
        "allocator": crate::ALLOCATOR.name(),
        "runtime": args.runtime.name(),
        "storage": spec.split(':').next(),
        "wall_seconds": round(wall.as_secs_f64(), 3),
        "workflows_per_second": round(args.n as f64 / wall.as_secs_f64(), 1),
        "latency_p50_seconds": round(percentile(&latencies, 0.5), 3),
        "latency_p90_seconds": round(percentile(&latencies, 0.9), 3),
        "worker_cpu_ms_per_workflow": round(worker_cpu * 1000.0 / args.n as f64, 3),
    }))
}

/// How a worker process reports what it did, a line on its stdout each.
enum Report {
    /// A workflow ended in this state, at this time.
    Ended(WorkflowId, WorkflowState, SystemTime),
    /// The worker's CPU time, in seconds, as it stops.
    Cpu(f64),
}

impl Report {
    fn parse(line: &str) -> Option<Self> {
        if let Some(cpu) = line.strip_prefix("CPU ") {
            return cpu.parse().ok().map(Self::Cpu);
        }
        let mut words = line.strip_prefix("ENDED ")?.split(' ');
        let id = words.next()?.parse().ok()?;
        let state = serde_json::from_value(json!(words.next()?)).ok()?;
        let micros: u64 = words.next()?.parse().ok()?;
        Some(Self::Ended(id, state, SystemTime::UNIX_EPOCH + Duration::from_micros(micros)))
    }
}

/// Waits until every workflow submitted has ended COMPLETE, as the workers report
/// (the store is only asked, cheaply, should a report be missed); returns when each
/// ended.
async fn watch(
    storage: &dyn Storage,
    submitted: &[(WorkflowId, SystemTime)],
    mut ended: UnboundedReceiver<(WorkflowId, WorkflowState, SystemTime)>,
) -> Result<std::collections::HashMap<WorkflowId, SystemTime>, String> {
    let mut finished = std::collections::HashMap::new();
    let complete = WorkflowQuery::in_state(WorkflowState::Complete).page_size(1);
    while finished.len() < submitted.len() {
        match tokio::time::timeout(Duration::from_millis(500), ended.recv()).await {
            Ok(Some((id, WorkflowState::Complete, at))) => {
                finished.insert(id, at);
            }
            Ok(Some((id, state, _))) => {
                return Err(format!("workflow {id} ended {state}; run with PORTIA_LOG_LEVEL=warn to see why"));
            }
            Ok(None) => return Err("every worker stopped".to_owned()),
            Err(_) => {
                let count = storage.list_workflows(&complete).await.map_err(|e| e.to_string())?.count;
                if count >= submitted.len() {
                    let now = SystemTime::now();
                    for (id, _) in submitted {
                        finished.entry(*id).or_insert(now);
                    }
                }
            }
        }
    }
    Ok(finished)
}

/// A worker process, and the thread reading its reports (which yields its CPU time).
struct WorkerProcess {
    child: Child,
    reports: std::thread::JoinHandle<Option<f64>>,
}

fn spawn_worker(
    args: &Args,
    base_url: &str,
    spec: &str,
    ended: UnboundedSender<(WorkflowId, WorkflowState, SystemTime)>,
) -> Result<WorkerProcess, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["--work", spec, "--base-url", base_url])
        .args(["--worker-concurrency", &args.worker_concurrency.to_string()])
        .args(["--runtime", args.runtime.name()])
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
    let reports = std::thread::spawn(move || {
        let mut cpu = None;
        for report in reader.lines().map_while(Result::ok).filter_map(|line| Report::parse(&line)) {
            match report {
                Report::Ended(id, state, at) => drop(ended.send((id, state, at))),
                Report::Cpu(seconds) => cpu = Some(seconds),
            }
        }
        cpu
    });
    Ok(WorkerProcess { child, reports })
}

/// Asks a worker to shut down (SIGTERM) and returns the CPU time it reported.
fn stop_worker(mut worker: WorkerProcess) -> Result<f64, String> {
    let status = Command::new("kill").args(["-TERM", &worker.child.id().to_string()]).status();
    status.map_err(|e| format!("could not stop a worker: {e}"))?;
    worker.child.wait().map_err(|e| e.to_string())?;
    let cpu = worker.reports.join().map_err(|_| "the worker's reader panicked")?;
    cpu.ok_or_else(|| "the worker did not report its CPU time".to_owned())
}

/// A worker process: runs queued workflows from the store `spec` names until SIGTERM,
/// then prints its CPU time.
pub(crate) async fn work(args: &Args, spec: &str, base_url: &str) -> Result<(), String> {
    let storage = open_store(spec)?;
    let runner: Runner =
        super::runner(args, base_url, storage, super::Variant { client_rpm: args.client_rpm, ..Default::default() })?;
    let options = WorkerOptions::new().concurrency(args.worker_concurrency).poll_interval(Duration::from_millis(20));
    report_endings(&runner);
    println!("READY");
    let cpu_before = cpu_seconds();
    runner.worker(options).run().await;
    println!("CPU {}", cpu_seconds() - cpu_before);
    Ok(())
}

/// Prints `ENDED <id> <state> <unix µs>` as each workflow this worker runs ends.
fn report_endings(runner: &Runner) {
    let mut events = runner.subscribe();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            // A missed event is only a report missed: the parent then asks the store.
            let Ok(event) = event else { continue };
            if let EventKind::StateChanged { to, .. } = event.kind
                && to.is_terminal()
            {
                println!("ENDED {} {} {}", event.workflow_id, to, event.at.timestamp_micros());
            }
        }
    });
}
