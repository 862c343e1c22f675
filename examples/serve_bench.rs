//! Benchmark of `portia serve`'s API: how many workflows per second
//! `POST /v1/workflows` starts at a given concurrency, against the built-in server
//! on loopback, and how long they take to finish. Prints one JSON line.
//!
//! ```sh
//! cargo run --release --features server --example serve_bench -- --n 2000 --concurrency 50
//! # queued for in-process workers instead of run in the server's tasks
//! cargo run --release --features server --example serve_bench -- --n 2000 --concurrency 50 --workers 8
//! # on a SQLite store (durable writes), as `portia serve` keeps them by default
//! cargo run --release --features server --example serve_bench -- --n 2000 --concurrency 50 --storage sqlite
//! ```
//!
//! Each workflow is a one-step plan whose tool arguments are fixed in the plan (a mock
//! weather tool, no LLM call), so the figures are the server's and the store's.

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use portia::runner::serve::{ServeOptions, Server};
use portia::storage::{InMemoryStorage, SqliteStorage, Storage, WorkflowQuery};
use portia::testing::{MockTool, ScriptedLlm};
use portia::{Config, InMemoryToolRegistry, Runner, WorkflowState};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Start N workflows through POST /v1/workflows and print one JSON line of figures")]
struct Args {
    /// How many workflows to start.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// How many requests are in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// In-process workers (0: each workflow runs in a task of the server's own).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// `memory`, or `sqlite` (a fresh database in a temporary directory).
    #[arg(long, default_value = "memory")]
    storage: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let storage: Arc<dyn Storage> = match args.storage.as_str() {
        "sqlite" => Arc::new(SqliteStorage::open(dir.path().join("portia.db"))?),
        _ => Arc::new(InMemoryStorage::new()),
    };
    let config = Config::builder().summarize_final_output(false).build()?;
    let tools = InMemoryToolRegistry::new().with(MockTool::returning("weather_tool", json!("-3°C")))?;
    let runner = Runner::builder(config).tools(tools).llm(Arc::new(ScriptedLlm::new())).storage(storage).build()?;
    let server =
        Server::bind(runner.clone(), "127.0.0.1:0".parse()?, ServeOptions::new().workers(args.workers)).await?;
    let url = format!("http://{}/v1/workflows", server.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let body = json!({"plan": {
        "plan_context": {"query": "Weather in Oslo?", "tool_ids": ["weather_tool"]},
        "steps": [{"task": "Get the weather in Oslo", "inputs": [], "tool_id": "weather_tool",
                   "output": "$weather", "args": {"city": "Oslo"}}]
    }});
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (http, url, body, next, n) = (http.clone(), url.clone(), body.clone(), next.clone(), args.n);
        clients.spawn(async move {
            let mut failed = 0usize;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let ok = http.post(&url).json(&body).send().await.is_ok_and(|r| r.status() == 202);
                failed += usize::from(!ok);
            }
            failed
        });
    }
    let mut failed = 0;
    while let Some(result) = clients.join_next().await {
        failed += result?;
    }
    let posted = started.elapsed();
    // Then until every workflow has finished, read from the store.
    loop {
        let complete =
            runner.list_workflows(&WorkflowQuery::in_state(WorkflowState::Complete).page_size(1)).await?.count;
        if complete + failed >= args.n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let finished = started.elapsed();
    let _ = stop.send(());
    serving.await??;
    println!(
        "{}",
        json!({
            "n": args.n, "concurrency": args.concurrency, "workers": args.workers, "storage": args.storage,
            "failed_requests": failed,
            "post_seconds": posted.as_secs_f64(),
            "workflows_started_per_second": (args.n - failed) as f64 / posted.as_secs_f64(),
            "all_complete_seconds": finished.as_secs_f64(),
            "workflows_completed_per_second": (args.n - failed) as f64 / finished.as_secs_f64(),
        })
    );
    Ok(())
}
