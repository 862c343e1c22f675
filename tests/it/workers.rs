//! Workers in one process: they run submitted workflows (and only those), an answer
//! given anywhere queues a workflow again, concurrency is capped, and shutdown hands
//! the runs still going back to the store. Tokio's clock is paused where time matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portia::runner::WorkerOptions;
use portia::storage::{InMemoryStorage, Storage};
use portia::testing::ScriptedLlm;
use portia::tool::{Tool, ToolError, ToolOutput, ToolRunContext, ToolSpec};
use portia::{Clarification, Config, InMemoryToolRegistry, PlanBuilder, Runner, WorkflowId, WorkflowState};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

/// A tool called with its step's task (no model needed) that may ask for a city,
/// or wait at a gate until let go.
#[derive(Debug, Default)]
struct TaskTool {
    running: AtomicUsize,
    most_at_once: AtomicUsize,
    gate: Option<Arc<Notify>>,
}

#[async_trait::async_trait]
impl Tool for TaskTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("task_tool", "Task Tool", "Does the task.").task_argument("task").read_only()
    }

    async fn run(&self, ctx: &ToolRunContext, args: Value) -> Result<ToolOutput, ToolError> {
        if args["task"] == "ask for the city" && ctx.clarified("city").is_none() {
            return Ok(ToolOutput::clarification(Clarification::input(ctx.workflow_id, "city", "Which city?")));
        }
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            tokio::select! {
                () = gate.notified() => {}
                () = ctx.cancellation.cancelled() => {}
            }
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(ToolOutput::value(json!({"done": args["task"], "city": ctx.clarified("city")})))
    }
}

fn runner(storage: Arc<dyn Storage>, tool: Arc<TaskTool>) -> Runner {
    let tools = InMemoryToolRegistry::from_tools([tool as Arc<dyn Tool>]).unwrap();
    let config = Config::builder().summarize_final_output(false).build().unwrap();
    Runner::builder(config).tools(tools).llm(Arc::new(ScriptedLlm::new())).storage(storage).build().unwrap()
}

fn plan(task: &str) -> portia::Plan {
    PlanBuilder::new(task).step(task, Some("task_tool"), "$done").build()
}

/// Starts a worker; the returned sender shuts it down.
fn start_worker(
    runner: &Runner,
    options: WorkerOptions,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<portia::runner::WorkerReport>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = runner.worker(options);
    let handle = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    (stop, handle)
}

async fn wait(runner: &Runner, id: WorkflowId) -> portia::Workflow {
    runner.wait_for_completion(id, Duration::from_secs(60)).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_worker_runs_submitted_workflows_and_leaves_created_ones_alone() {
    let runner = runner(Arc::new(InMemoryStorage::new()), Arc::default());
    let kept = runner.create_workflow(&plan("run me yourself")).await.unwrap();
    let (stop, worker) = start_worker(&runner, WorkerOptions::new());
    let mut ids = Vec::new();
    for task in ["one", "two", "three"] {
        ids.push(runner.submit_plan(&plan(task)).await.unwrap());
    }
    for id in &ids {
        let done = wait(&runner, *id).await;
        assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    }
    stop.send(()).unwrap();
    let report = worker.await.unwrap();
    assert_eq!((report.runs, report.errors, report.handed_back), (3, 0, 0));
    assert_eq!(runner.get_workflow(kept.id()).await.unwrap().state(), WorkflowState::NotStarted);
}

#[tokio::test(start_paused = true)]
async fn an_answer_queues_the_workflow_for_a_worker_again() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let worker_side = runner(Arc::clone(&storage), Arc::default());
    // The answer comes from another runner, as from another process.
    let other_side = runner(storage, Arc::default());
    let (stop, worker) = start_worker(&worker_side, WorkerOptions::new().poll_interval(Duration::from_secs(3600)));
    let id = other_side.submit_plan(&plan("ask for the city")).await.unwrap();
    let waiting = wait(&other_side, id).await;
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);

    let started = tokio::time::Instant::now();
    let question = waiting.outstanding_clarifications().next().unwrap().clone();
    other_side.resolve_clarification(&question, "Lisbon").await.unwrap();
    let done = wait(&other_side, id).await;
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(done.outputs().step_outputs.get("$done").unwrap().value["city"], "Lisbon");
    assert!(started.elapsed() < Duration::from_secs(3600), "the answer woke the worker; it did not wait for a poll");
    stop.send(()).unwrap();
    assert_eq!(worker.await.unwrap().runs, 2);
}

#[tokio::test(start_paused = true)]
async fn a_worker_runs_at_most_its_concurrency_at_once() {
    let gate = Arc::new(Notify::new());
    let tool = Arc::new(TaskTool { gate: Some(Arc::clone(&gate)), ..TaskTool::default() });
    let runner = runner(Arc::new(InMemoryStorage::new()), Arc::clone(&tool));
    let (stop, worker) = start_worker(&runner, WorkerOptions::new().concurrency(2));
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(runner.submit_plan(&plan(&format!("job {i}"))).await.unwrap());
    }
    for _ in 0..5 {
        // Let the worker take what it can, then let one run finish.
        tokio::time::sleep(Duration::from_millis(10)).await;
        gate.notify_one();
    }
    for id in ids {
        assert_eq!(wait(&runner, id).await.state(), WorkflowState::Complete);
    }
    assert_eq!(tool.most_at_once.load(Ordering::SeqCst), 2);
    stop.send(()).unwrap();
    assert_eq!(worker.await.unwrap().runs, 5);
}

#[tokio::test(start_paused = true)]
async fn shutdown_hands_runs_past_the_grace_period_back_at_once() {
    let gate = Arc::new(Notify::new());
    let tool = Arc::new(TaskTool { gate: Some(gate), ..TaskTool::default() });
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let runner = runner(Arc::clone(&storage), Arc::clone(&tool));
    let options = WorkerOptions::new().shutdown_grace(Duration::from_secs(5));
    let (stop, worker) = start_worker(&runner, options);
    let id = runner.submit_plan(&plan("never let go")).await.unwrap();
    while tool.running.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    let report = worker.await.unwrap();
    assert_eq!((report.runs, report.handed_back), (1, 1));

    // Released, not left to expire: another worker takes it over at once, and that
    // is no takeover of a dead run.
    let next = storage.claim_runnable("next worker", Duration::from_secs(30)).await.unwrap().expect("runnable");
    assert_eq!((next.workflow.id(), next.workflow.state()), (id, WorkflowState::InProgress));
    assert_eq!((next.reclaimed, next.attempts), (false, 0));
}

#[tokio::test]
async fn memory_storage_can_keep_only_the_newest_finished_workflows() {
    let clock = portia::storage::ManualClock::default();
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::with_clock(Arc::new(clock.clone())).keep_finished(2));
    let runner = runner(Arc::clone(&storage), Arc::default());
    let waiting = runner.run_plan(&plan("ask for the city")).await.unwrap();
    let mut done = Vec::new();
    for task in ["one", "two", "three", "four"] {
        clock.advance(Duration::from_secs(1));
        done.push(runner.run_plan(&plan(task)).await.unwrap().id());
    }
    let all = storage.list_workflows(&portia::storage::WorkflowQuery::default()).await.unwrap();
    let mut kept: Vec<WorkflowId> = all.results.iter().map(portia::Workflow::id).collect();
    kept.sort();
    let mut expected = vec![waiting.id(), done[2], done[3]];
    expected.sort();
    assert_eq!(kept, expected, "the two newest finished, and the one still waiting for a human");
}
