//! Workers in separate processes sharing one store (a SQLite file, and Postgres):
//! 200 workflows submitted from this process, four worker processes, one of them
//! killed with SIGKILL while it holds runs. Every workflow ends COMPLETE, and the
//! dead worker's calls are made again by the others with the same idempotency key,
//! never a new one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use portia::runner::{WorkerOptions, shutdown_signal};
use portia::storage::{PostgresSettings, PostgresStorage, SqliteStorage, Storage};
use portia::testing::ScriptedLlm;
use portia::tool::{Tool, ToolError, ToolOutput, ToolRunContext, ToolSpec};
use portia::{Config, InMemoryToolRegistry, PlanBuilder, Runner, Workflow, WorkflowId, WorkflowState};
use serde_json::{Value, json};

use crate::common::{self, ChildGuard};
use crate::pg;

/// The worker process's test, by its path in this test binary.
const WORKER_CHILD: &str = "workers_distributed::worker_child";
const WORKFLOWS: usize = 200;
const WORKERS: usize = 4;
/// The victim hangs from this call on, so that it dies holding runs.
const VICTIM_HANGS_FROM_CALL: usize = 3;

/// An idempotent tool that logs each call's key (the effect) and says so on stdout.
#[derive(Debug)]
struct KeyedTool {
    effects: PathBuf,
    calls: AtomicUsize,
    hang_from: Option<usize>,
}

#[async_trait::async_trait]
impl Tool for KeyedTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("keyed_tool", "Keyed Tool", "Acts once per key.").task_argument("task").idempotent(true)
    }

    async fn run(&self, ctx: &ToolRunContext, args: Value) -> Result<ToolOutput, ToolError> {
        let key = ctx.idempotency_key.clone().unwrap_or_default();
        append_line(&self.effects, &key);
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        println!("CALL {key}");
        if self.hang_from.is_some_and(|from| call >= from) {
            std::future::pending::<()>().await;
        }
        Ok(ToolOutput::value(json!({"done": args["task"]})))
    }
}

fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    // One short write with O_APPEND: lines from several processes never interleave.
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    file.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// The shared store: `sqlite:PATH`, or `postgres:SCHEMA:URL`.
fn store(spec: &str) -> Arc<dyn Storage> {
    match spec.split_once(':') {
        Some(("sqlite", path)) => Arc::new(SqliteStorage::open(path).unwrap()),
        Some(("postgres", rest)) => {
            let (schema, url) = rest.split_once(':').unwrap();
            let settings = PostgresSettings::new(url).schema(schema).pool_size(4);
            Arc::new(PostgresStorage::new(&settings).unwrap())
        }
        _ => panic!("unknown store {spec}"),
    }
}

fn runner(spec: &str, tool: KeyedTool, announce_done: bool) -> Runner {
    let shared = store(spec);
    let hook = announce_done.then(|| {
        Box::new(|workflow: &Workflow| {
            if workflow.state() == WorkflowState::Complete {
                println!("DONE {}", workflow.id());
            }
        }) as Box<dyn Fn(&Workflow) + Send + Sync>
    });
    let storage = Arc::new(common::RecordingStorage::wrapping(shared, hook));
    let config = Config::builder().summarize_final_output(false).lease_ttl_secs(1u64).build().unwrap();
    let tools = InMemoryToolRegistry::new().with(tool).unwrap();
    Runner::builder(config).tools(tools).llm(Arc::new(ScriptedLlm::new())).storage(storage).build().unwrap()
}

/// A worker process: runs until SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the distributed test"]
async fn worker_child() {
    // Run by the harness (`--include-ignored`), not by `spawn_worker`: nothing to do.
    if std::env::var_os("WORKER_STORE").is_none() {
        return;
    }
    let var = |name: &str| std::env::var(name).unwrap();
    let hang_from = (var("WORKER_VICTIM") == "1").then_some(VICTIM_HANGS_FROM_CALL);
    let tool = KeyedTool { effects: var("WORKER_EFFECTS").into(), calls: AtomicUsize::new(0), hang_from };
    let runner = runner(&var("WORKER_STORE"), tool, true);
    // Listens for SIGTERM before saying it is ready: the test may send it at once.
    let shutdown = shutdown_signal();
    println!("READY");
    let options = WorkerOptions::new().concurrency(8).poll_interval(Duration::from_millis(50));
    let report = runner.worker(options).run_until(shutdown).await;
    println!("REPORT {} {}", report.runs, report.errors);
}

fn spawn_worker(spec: &str, effects: &Path, victim: bool) -> ChildGuard {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([WORKER_CHILD, "--exact", "--ignored", "--nocapture", "--test-threads=1", "--quiet"])
        .env("WORKER_STORE", spec)
        .env("WORKER_EFFECTS", effects)
        .env("WORKER_VICTIM", if victim { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

/// Forwards each line the child prints, tagged with its index.
fn forward(child: &mut Child, index: usize, lines: mpsc::Sender<(usize, String)>) {
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send((index, line)).is_err() {
                return;
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_four_workers_one_killed_run_every_workflow_once_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("sqlite:{}", dir.path().join("portia.db").display());
    four_workers_one_killed(&spec, &dir.path().join("effects.txt")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn on_postgres_four_workers_one_killed_run_every_workflow_once_per_key() {
    let url = pg::test_url();
    let schema = pg::Schema::fresh(&url);
    let dir = tempfile::tempdir().unwrap();
    four_workers_one_killed(&format!("postgres:{}:{url}", schema.name), &dir.path().join("effects.txt")).await;
    schema.remove().await;
}

async fn four_workers_one_killed(spec: &str, effects: &Path) {
    let effects = effects.to_owned();
    let tool = KeyedTool { effects: effects.clone(), calls: AtomicUsize::new(0), hang_from: None };
    let submitter = runner(spec, tool, false);

    // The victim starts alone and takes work until it hangs holding runs; only then do
    // the others start. Started together, a fast machine let the others finish every
    // workflow before the victim hung, and the test waited for it for ever.
    let (lines, received) = mpsc::channel();
    let mut workers = vec![spawn_worker(spec, &effects, true)];
    forward(&mut workers[0], 0, lines.clone());
    // Waits on the workers' progress, however slow the machine: a line from any worker
    // at all, or the end of every one of them.
    let next = || received.recv().expect("every worker ended before the workflows were done");
    while next().1 != "READY" {}

    let mut ids = Vec::new();
    for i in 0..WORKFLOWS {
        let plan = PlanBuilder::new("job").step(format!("job {i}"), Some("keyed_tool"), "$done").build();
        ids.push(submitter.submit_plan(&plan).await.unwrap());
    }

    let mut done = BTreeSet::new();
    let mut victim_calls = 0;
    while victim_calls <= VICTIM_HANGS_FROM_CALL {
        let (_, line) = next();
        victim_calls += usize::from(line.starts_with("CALL "));
        if let Some(id) = line.strip_prefix("DONE ") {
            done.insert(id.to_owned());
        }
    }
    for i in 1..WORKERS {
        workers.push(spawn_worker(spec, &effects, false));
        forward(&mut workers[i], i, lines.clone());
    }
    drop(lines);
    let mut ready = 0;
    while ready < WORKERS - 1 {
        let (_, line) = next();
        ready += usize::from(line == "READY");
        if let Some(id) = line.strip_prefix("DONE ") {
            done.insert(id.to_owned());
        }
    }
    workers[0].kill().unwrap(); // SIGKILL, holding hung runs
    workers[0].wait().unwrap();

    while done.len() < WORKFLOWS {
        let (_, line) = next();
        if let Some(id) = line.strip_prefix("DONE ") {
            done.insert(id.to_owned());
        }
    }
    for worker in &mut workers[1..] {
        let status = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap();
        assert!(status.success());
        assert!(worker.wait().unwrap().success(), "a worker shuts down cleanly on SIGTERM");
    }

    for id in &ids {
        let workflow = submitter.get_workflow(*id).await.unwrap();
        assert_eq!(workflow.state(), WorkflowState::Complete, "{id}: {:?}", workflow.failure());
    }
    let keys_of = keys_by_workflow(&effects, &ids);
    assert!(keys_of.values().all(|keys| keys.len() == 1), "each workflow's call has one key, however often made");
    let retried = keys_of.values().filter(|keys| keys.values().any(|&calls| calls > 1)).count();
    assert!(retried >= 1, "the dead worker's hung calls were made again, with the same key");
}

/// For each workflow, how many times each idempotency key took effect.
fn keys_by_workflow(effects: &Path, ids: &[WorkflowId]) -> BTreeMap<WorkflowId, BTreeMap<String, usize>> {
    let text = std::fs::read_to_string(effects).unwrap();
    let mut by_workflow: BTreeMap<WorkflowId, BTreeMap<String, usize>> = BTreeMap::new();
    for key in text.lines() {
        let id: WorkflowId = key.split(':').next().unwrap().parse().unwrap();
        *by_workflow.entry(id).or_default().entry(key.to_owned()).or_default() += 1;
    }
    assert_eq!(by_workflow.len(), ids.len(), "every workflow's tool was called");
    by_workflow
}
