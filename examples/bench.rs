//! Benchmark: runs the stock_compare workflow N times at a given concurrency and
//! prints one JSON line of figures.
//!
//! ```sh
//! # against its own server (a child process, so its CPU is not counted as the SDK's)
//! cargo run --release --example bench -- --n 100 --concurrency 50
//! # with durable writes: a SQLite database (in a fresh temporary directory)
//! cargo run --release --example bench -- --n 100 --concurrency 50 --storage sqlite
//! # memory, then SQLite, in one session (each line also gives allocations and heap per workflow)
//! cargo run --release --example bench -- --n 500 --concurrency 500 --storage memory,sqlite
//! # the same after 500 workflows not measured, as a service that has been running
//! cargo run --release --example bench -- --n 500 --concurrency 500 --storage memory,sqlite --warmup 500
//! # or a fresh schema of a Postgres database
//! cargo run --release --features postgres --example bench -- --n 200 --concurrency 50 --storage postgres --database-url postgres://...
//! # on worker processes sharing one SQLite database: 1, then 2, then 4 workers
//! cargo run --release --example bench -- --n 400 --workers 1,2,4 --worker-concurrency 10
//! # the same on one Postgres database
//! cargo run --release --features postgres --example bench -- --n 400 --workers 1,2,4 --database-url postgres://...
//! # with 30% of LLM and search calls failing (429, 500, malformed, dropped, slow), seeded
//! cargo run --release --example bench -- --n 100 --concurrency 50 --fault-rate 0.3
//! # the built-in server taking 100 LLM calls a second (429 above, add
//! # --server-retry-after for a Retry-After too), measured without a client-side
//! # limit and then with one of 6,000 requests a minute (PORTIA_LLM_RPM=6000)
//! cargo run --release --example bench -- --n 500 --concurrency 500 --server-rps 100 --client-rpm 6000
//! # every LLM reply sent whole, then every one streamed (the built-in server streams
//! # when asked), in one session
//! cargo run --release --example bench -- --n 200 --concurrency 50 --stream off,on
//! # allocating with mimalloc, the `portia` binary's allocator, instead of the system's malloc
//! PORTIA_BENCH_ALLOCATOR=mimalloc cargo run --release --example bench -- --n 2000 --concurrency 500 --warmup 500
//! # on a current-thread tokio runtime instead of the multi-threaded default
//! cargo run --release --example bench -- --n 2000 --concurrency 500 --warmup 500 --runtime current-thread
//! # against any OpenAI- and Tavily-compatible server
//! cargo run --release --example bench -- --n 100 --concurrency 50 --base-url http://127.0.0.1:8099
//! ```
//!
//! The built-in server answers like a model would for this scenario, after
//! `--latency-ms` per LLM call and `--tool-latency-ms` per search, and counts tokens
//! as `portia::testing` does (one per four characters of messages, tools and schema).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use portia::llm::StreamMode;
use portia::storage::{InMemoryStorage, SqliteStorage, Storage};
use portia::{Config, Runner, WorkflowState};
use serde_json::{Value, json};

// The end-to-end test reads what the server received; the benchmark does not.
#[allow(dead_code)]
#[path = "support/fake_apis.rs"]
mod fake_apis;

#[path = "support/bench_workers.rs"]
mod bench_workers;

// The only unsafe code of the project: a global allocator is an unsafe trait.
#[allow(unsafe_code)]
#[path = "support/counting_alloc.rs"]
mod counting_alloc;

/// The system's allocator or mimalloc (`PORTIA_BENCH_ALLOCATOR=mimalloc`), counting
/// allocations and bytes, so that a measurement can say what a workflow allocates.
#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting::new();

const QUERY: &str = "Which stock price grew faster in 2024, Amazon or Google?";

#[derive(Parser, Debug)]
#[command(about = "Run the stock_compare workflow N times and print one JSON line of figures")]
struct Args {
    /// How many workflows to run.
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// How many workflows run at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Latency of each LLM call of the built-in server, in milliseconds.
    #[arg(long, default_value_t = 200)]
    latency_ms: u64,
    /// Latency of each search call of the built-in server, in milliseconds.
    #[arg(long, default_value_t = 100)]
    tool_latency_ms: u64,
    /// Use this server (OpenAI API under /v1, Tavily at /search) instead of the built-in one.
    #[arg(long)]
    base_url: Option<String>,
    /// Run steps one at a time instead of in parallel.
    #[arg(long)]
    sequential: bool,
    /// Share of the built-in server's LLM and search calls that fail (0 to 1): a 429
    /// with a Retry-After, a 500, a body that is not JSON, a dropped connection, or an
    /// answer a second late, in equal shares.
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// The built-in server takes this many LLM calls a second and answers 429 (no
    /// requests left, and when the next one is) above it.
    #[arg(long)]
    server_rps: Option<u32>,
    /// With --server-rps: the 429s also carry `Retry-After: 1`, as some providers send.
    #[arg(long)]
    server_retry_after: bool,
    /// Measure twice: with no client-side rate limit, then with this many requests a
    /// minute (`PORTIA_LLM_RPM`). Each line counts the 429s the built-in server sent.
    #[arg(long)]
    client_rpm: Option<u32>,
    /// Seed of the fault injection: the same seed fails the same calls the same ways.
    #[arg(long, default_value_t = 15)]
    seed: u64,
    /// Where workflows are kept: in memory, in SQLite with durable (fsynced) writes,
    /// or in Postgres at --database-url (a fresh schema; needs the `postgres` feature).
    /// A comma-separated list measures each in turn, in one session: `memory,sqlite`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "memory")]
    storage: Vec<StorageChoice>,

    /// Watch every run: a subscriber reads every event, and tracing logs every span
    /// as it closes (to nowhere), to measure what watching costs.
    #[arg(long)]
    watched: bool,
    /// Run the workflows on this many worker processes instead (a comma-separated
    /// list measures each in turn), submitted to a shared SQLite database.
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// How many workflows each worker process runs at once.
    #[arg(long, default_value_t = 10)]
    worker_concurrency: usize,
    /// Measure once per streaming mode listed (`off`, `on`, `auto`), in this order
    /// and session: `--stream off,on` shows what streaming every reply costs.
    #[arg(long, value_delimiter = ',', value_parser = |s: &str| s.parse::<StreamMode>())]
    stream: Vec<StreamMode>,
    /// The most idle HTTP connections kept per host (`http_max_idle_per_host`); the
    /// library's default unless set. A comma-separated list measures each in turn.
    #[arg(long, value_delimiter = ',')]
    max_idle_per_host: Vec<usize>,
    /// Workflows run before each measurement, at its concurrency, and not counted:
    /// they open the connections and warm the allocator as a running service has.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// The tokio runtime of the benchmark (and of its worker processes, with
    /// --workers): `multi-thread` (one worker thread per core, the default of
    /// `#[tokio::main]`) or `current-thread` (everything on the thread that runs the
    /// workflows), to show what the runtime an application picks costs. The
    /// built-in server always runs on every core.
    #[arg(long, value_enum, default_value = "multi-thread")]
    runtime: RuntimeChoice,
    /// Internal: serve the fake APIs and print the port.
    #[arg(long, hide = true)]
    serve: bool,
    /// With --workers: share this Postgres database (a fresh schema per measurement;
    /// needs the `postgres` feature) instead of a SQLite file. With --storage
    /// postgres: the database to keep workflows in.
    #[arg(long)]
    database_url: Option<String>,
    /// Internal: be a worker on this store (`sqlite:PATH` or `postgres:SCHEMA:URL`).
    #[arg(long, hide = true)]
    work: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StorageChoice {
    Memory,
    Sqlite,
    Postgres,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum RuntimeChoice {
    MultiThread,
    CurrentThread,
}

impl RuntimeChoice {
    /// The name the command line takes.
    fn name(self) -> &'static str {
        match self {
            Self::MultiThread => "multi-thread",
            Self::CurrentThread => "current-thread",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut builder = match args.runtime {
        RuntimeChoice::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        RuntimeChoice::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = builder.enable_all().build().expect("tokio runtime");
    if args.serve {
        runtime.block_on(serve(&args));
        return ExitCode::SUCCESS;
    }
    let result = match (&args.work, &args.base_url) {
        (Some(db), Some(url)) => runtime.block_on(bench_workers::work(&args, db, url)),
        (Some(_), None) => Err("--work needs --base-url".to_owned()),
        (None, _) => runtime.block_on(run(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Spawns this program as the fake server and returns the child and its base URL.
fn spawn_server(args: &Args) -> Result<(Child, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([
            "--serve",
            "--latency-ms",
            &args.latency_ms.to_string(),
            "--tool-latency-ms",
            &args.tool_latency_ms.to_string(),
            "--fault-rate",
            &args.fault_rate.to_string(),
            "--seed",
            &args.seed.to_string(),
        ])
        .args(args.server_rps.map(|rps| format!("--server-rps={rps}")))
        .args(args.server_retry_after.then_some("--server-retry-after"))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start the built-in server: {e}"))?;
    let stdout = child.stdout.take().ok_or("the server has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).map_err(|e| e.to_string())?;
    let url = line.trim().strip_prefix("LISTENING ").ok_or_else(|| format!("unexpected server output {line:?}"))?;
    Ok((child, url.to_owned()))
}

/// What one measurement varies.
#[derive(Clone, Copy, Debug, Default)]
struct Variant {
    storage: Option<StorageChoice>,
    client_rpm: Option<u32>,
    stream: Option<StreamMode>,
    max_idle_per_host: Option<usize>,
}

/// The measurements `args` asks for, in order: per store, per idle bound, each
/// streaming mode (or the default), then with the client-side rate limit.
fn variants(args: &Args) -> Vec<Variant> {
    if !args.workers.is_empty() {
        return Vec::new();
    }
    let idle: Vec<Option<usize>> = if args.max_idle_per_host.is_empty() {
        vec![None]
    } else {
        args.max_idle_per_host.iter().copied().map(Some).collect()
    };
    let streams: Vec<Option<StreamMode>> =
        if args.stream.is_empty() { vec![None] } else { args.stream.iter().copied().map(Some).collect() };
    let mut variants = Vec::new();
    for &storage in &args.storage {
        for &max_idle_per_host in &idle {
            let base = Variant { storage: Some(storage), max_idle_per_host, ..Variant::default() };
            variants.extend(streams.iter().map(|&stream| Variant { stream, ..base }));
            if let Some(rpm) = args.client_rpm {
                variants.push(Variant { client_rpm: Some(rpm), ..base });
            }
        }
    }
    variants
}

/// Measures, printing one JSON line per measurement.
async fn run(args: &Args) -> Result<(), String> {
    let (child, base_url) = match &args.base_url {
        Some(url) => (None, url.trim_end_matches('/').to_owned()),
        None => {
            let (child, url) = spawn_server(args)?;
            (Some(child), url)
        }
    };
    let result = async {
        for variant in variants(args) {
            println!("{}", measure(args, &base_url, variant).await?);
        }
        for &workers in &args.workers {
            println!("{}", bench_workers::measure(args, &base_url, workers.max(1)).await?);
        }
        Ok(())
    }
    .await;
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// A runner against the server at `base_url`, on `storage`, configured as `variant` says.
fn runner(args: &Args, base_url: &str, storage: Arc<dyn Storage>, variant: Variant) -> Result<Runner, String> {
    let execution = if args.sequential { "sequential" } else { "parallel" };
    let mut config = Config::builder();
    if let Some(rpm) = variant.client_rpm {
        config = config.llm_rpm(rpm);
    }
    if let Some(mode) = variant.stream {
        config = config.llm_stream(mode);
    }
    if let Some(idle) = variant.max_idle_per_host {
        config = config.http_max_idle_per_host(idle);
    }
    let config = config
        .llm_provider(portia::llm::LlmProvider::OpenAi)
        .openai_api_key("sk-bench")
        .openai_base_url(format!("{base_url}/v1"))
        .tavily_api_key("tvly-bench")
        .tavily_base_url(base_url)
        .execution(execution.parse::<portia::config::ExecutionMode>()?)
        .build()
        .map_err(|e| e.to_string())?;
    let tools = portia::tools::example_tool_registry(&config);
    Runner::builder(config).tools(tools).storage(storage).build().map_err(|e| e.to_string())
}

/// How many LLM calls the built-in server has answered 429 for its rate limit (0 for another server).
async fn rate_limited(base_url: &str) -> u64 {
    let stats = async { reqwest::get(format!("{base_url}/stats")).await.ok()?.json::<Value>().await.ok() };
    stats.await.and_then(|s| s["rate_limited"].as_u64()).unwrap_or(0)
}

async fn measure(args: &Args, base_url: &str, variant: Variant) -> Result<Value, String> {
    settle_heap().await;
    let execution = if args.sequential { "sequential" } else { "parallel" };
    // Kept until the end of the run, so the database outlives every workflow.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let choice = variant.storage.unwrap_or(StorageChoice::Memory);
    let storage: Arc<dyn Storage> = match choice {
        StorageChoice::Memory => Arc::new(InMemoryStorage::new()),
        StorageChoice::Sqlite => {
            Arc::new(SqliteStorage::open(dir.path().join("portia.db")).map_err(|e| e.to_string())?)
        }
        StorageChoice::Postgres => {
            let url = args.database_url.as_deref().ok_or("--storage postgres needs --database-url")?;
            bench_workers::open_store(&bench_workers::fresh_postgres(url))?
        }
    };
    let runner = runner(args, base_url, storage, variant)?;
    if args.warmup > 0 {
        // Not measured: the first workflows of a session fill the connection pools
        // and the allocator's free lists, which a long-running service has done.
        let warmed = run_batch(&runner, args.warmup, args.concurrency).await?;
        if let Some((_, Err(e))) = warmed.iter().find(|(_, result)| result.is_err()) {
            return Err(format!("a warm-up workflow failed: {e}"));
        }
    }
    let rate_limited_before = rate_limited(base_url).await;
    let watching = args.watched.then(|| watch_everything(&runner));

    let memory_before = Memory::start();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let runs = run_batch(&runner, args.n, args.concurrency).await?;
    let mut latencies = Vec::with_capacity(args.n);
    let (mut calls, mut prompt, mut completion, mut failed) = (0u64, 0u64, 0u64, 0usize);
    let mut completed = Vec::new();
    for (latency, result) in runs {
        latencies.push(latency);
        match result {
            Ok(workflow) if workflow.state() == WorkflowState::Complete => {
                completed.push(workflow.id());
                calls += u64::from(workflow.usage().total.llm_calls);
                prompt += workflow.usage().total.prompt_tokens;
                completion += workflow.usage().total.completion_tokens;
            }
            Ok(workflow) => {
                failed += 1;
                eprintln!("bench: workflow ended {}: {:?}", workflow.state(), workflow.failure());
            }
            Err(e) => {
                failed += 1;
                eprintln!("bench: {e}");
            }
        }
    }
    let wall = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let memory = memory_before.end(args.n, args.concurrency);
    let http_429 = rate_limited(base_url).await - rate_limited_before;
    let events_seen = watching.map_or(0, |seen| seen.load(std::sync::atomic::Ordering::Relaxed));
    let mut tool_calls = 0;
    for id in completed {
        tool_calls += runner.tool_calls(id).await.map_err(|e| e.to_string())?.len();
    }
    let done = (args.n - failed).max(1) as f64;
    latencies.sort();
    Ok(json!({
        "workflows": args.n,
        "complete": args.n - failed,
        "failed": failed,
        "fault_rate": args.fault_rate,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "allocator": ALLOCATOR.name(),
        "runtime": args.runtime.name(),
        "execution": execution,
        "storage": format!("{choice:?}").to_lowercase(),
        "server": args.base_url.clone().unwrap_or_else(|| format!("built-in ({} ms per LLM call, {} ms per search)", args.latency_ms, args.tool_latency_ms)),
        "server_llm_rps": args.server_rps,
        "server_retry_after": args.server_retry_after,
        "client_rpm": variant.client_rpm,
        "llm_stream": variant.stream.unwrap_or_default().as_str(),
        "http_max_idle_per_host": variant.max_idle_per_host.unwrap_or(Config::default().http_max_idle_per_host),
        "http_429": http_429,
        "llm_calls_per_second": round(calls as f64 / wall.as_secs_f64(), 1),
        "wall_seconds": round(wall.as_secs_f64(), 3),
        "workflows_per_second": round(args.n as f64 / wall.as_secs_f64(), 1),
        "latency_p50_seconds": round(percentile(&latencies, 0.5), 3),
        "latency_p90_seconds": round(percentile(&latencies, 0.9), 3),
        "llm_calls_per_workflow": round(calls as f64 / done, 2),
        "prompt_tokens_per_workflow": round(prompt as f64 / done, 1),
        "completion_tokens_per_workflow": round(completion as f64 / done, 1),
        "tool_calls_per_workflow": round(tool_calls as f64 / done, 2),
        "events_seen_per_workflow": round(events_seen as f64 / done, 1),
        "cpu_ms_per_workflow": round(cpu * 1000.0 / args.n as f64, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_kb_per_workflow_in_flight": memory.rss_kb_per_in_flight,
        "allocations_per_workflow": memory.allocations_per_workflow,
        "allocated_kb_per_workflow": memory.allocated_kb_per_workflow,
        "peak_heap_kb_per_workflow_in_flight": memory.peak_heap_kb_per_in_flight,
        "heap_kb_kept_per_workflow": memory.heap_kb_kept_per_workflow,
    }))
}

/// Waits until what an earlier measurement left behind is freed (its runner's
/// background tasks end within a second of their last run), so that this one's heap
/// figures start from a steady heap and do not count that freeing.
async fn settle_heap() {
    let mut last = heap_bytes();
    for round in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = heap_bytes();
        // Past the background tasks' one-second poll, and steady.
        if round >= 4 && (now - last).abs() < 64 * 1024 {
            return;
        }
        last = now;
    }
}

/// Runs the query `n` times, `concurrency` at a time; each run's latency and outcome.
async fn run_batch(
    runner: &Runner,
    n: usize,
    concurrency: usize,
) -> Result<Vec<(Duration, portia::Result<portia::Workflow>)>, String> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let runner = runner.clone();
        let permit = semaphore.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        tasks.spawn(async move {
            let began = Instant::now();
            let result = runner.execute_query(QUERY).await;
            drop(permit);
            (began.elapsed(), result)
        });
    }
    let mut runs = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        runs.push(joined.map_err(|e| e.to_string())?);
    }
    Ok(runs)
}

/// Subscribes to every event of `runner` (counting them) and logs every span at
/// trace level into a sink: what a watched, traced deployment pays.
fn watch_everything(runner: &Runner) -> Arc<std::sync::atomic::AtomicU64> {
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut events = runner.subscribe();
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let count = match event {
                Ok(_) => 1,
                Err(portia::runner::Missed(n)) => n,
            };
            counter.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter("portia=trace")
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::sink)
        .try_init();
    seen
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64()
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// CPU time of this process's threads so far, from Linux's per-thread scheduler
/// statistics (nanosecond resolution, unlike the 10 ms ticks of `/proc/self/stat`).
/// The runtime's threads live for the whole run, so none of their time is lost.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let nanos: u64 = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanos as f64 / 1e9
}

/// The most resident memory this process has used (`VmHWM`) since the measurement
/// began, in MB.
fn peak_rss_mb() -> f64 {
    status_kb("VmHWM:") / 1024.0
}

/// A figure of `/proc/self/status` in kB (0 where there is none).
fn status_kb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Bytes on the heap now.
fn heap_bytes() -> i64 {
    let stats = ALLOCATOR.stats();
    stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
}

/// The process's memory when a measurement began, and a thread noting the most heap
/// in use since, every 5 ms.
struct Memory {
    rss_kb: f64,
    heap: i64,
    allocations: usize,
    allocated: usize,
    peak_heap: Arc<std::sync::atomic::AtomicI64>,
    sampling: Arc<std::sync::atomic::AtomicBool>,
}

/// What the workflows of a measurement cost in memory.
struct MemoryCost {
    rss_kb_per_in_flight: f64,
    allocations_per_workflow: f64,
    allocated_kb_per_workflow: f64,
    peak_heap_kb_per_in_flight: f64,
    heap_kb_kept_per_workflow: f64,
}

impl Memory {
    /// Resets the peak of resident memory (so that a second measurement of the same
    /// session starts afresh), notes the memory now, and starts sampling the heap.
    fn start() -> Self {
        use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
        // Linux resets VmHWM to the current RSS on "5"; elsewhere the peak is the process's.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let stats = ALLOCATOR.stats();
        let (peak_heap, sampling) = (Arc::new(AtomicI64::new(heap_bytes())), Arc::new(AtomicBool::new(true)));
        let (peak, on) = (Arc::clone(&peak_heap), Arc::clone(&sampling));
        std::thread::spawn(move || {
            while on.load(Relaxed) {
                peak.fetch_max(heap_bytes(), Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            rss_kb: status_kb("VmRSS:"),
            heap: heap_bytes(),
            allocations: stats.allocations,
            allocated: stats.bytes_allocated,
            peak_heap,
            sampling,
        }
    }

    /// The cost of `n` workflows run `concurrency` at a time: the growth of the peak
    /// resident memory and of the heap per workflow in flight, and what was allocated
    /// (counting a reallocation as one) and is still held (as finished workflows a
    /// store keeps) per workflow.
    fn end(self, n: usize, concurrency: usize) -> MemoryCost {
        use std::sync::atomic::Ordering::Relaxed;
        self.sampling.store(false, Relaxed);
        let in_flight = n.min(concurrency).max(1) as f64;
        let n = n.max(1) as f64;
        let stats = ALLOCATOR.stats();
        let kb = |bytes: f64| bytes / 1024.0;
        MemoryCost {
            rss_kb_per_in_flight: round((status_kb("VmHWM:") - self.rss_kb) / in_flight, 1),
            allocations_per_workflow: round((stats.allocations - self.allocations) as f64 / n, 1),
            allocated_kb_per_workflow: round(kb((stats.bytes_allocated - self.allocated) as f64) / n, 1),
            peak_heap_kb_per_in_flight: round(kb((self.peak_heap.load(Relaxed) - self.heap) as f64) / in_flight, 1),
            heap_kb_kept_per_workflow: round(kb((heap_bytes() - self.heap) as f64) / n, 1),
        }
    }
}

/// The built-in server, in this child process.
async fn serve(args: &Args) {
    let faults = fake_apis::Faults {
        rate: args.fault_rate.clamp(0.0, 1.0),
        seed: args.seed,
        llm_rps: args.server_rps,
        retry_after: args.server_retry_after,
    };
    let (llm, tool) = (Duration::from_millis(args.latency_ms), Duration::from_millis(args.tool_latency_ms));
    let server = fake_apis::start_with_faults(llm, tool, faults).await;
    println!("LISTENING {}", server.uri());
    let _ = std::io::stdout().flush();
    // Serve until the parent kills us.
    std::future::pending::<()>().await;
}
