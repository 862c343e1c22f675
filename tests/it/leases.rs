//! The lease protocol as the runner uses it: one run at a time, a run that lost
//! its lease writes nothing and starts no new call, cancellation from any handle,
//! and attempts that count only takeovers of dead runs. The store's clock is a
//! `ManualClock` and tokio's clock is paused, so nothing waits for real.

use std::sync::Arc;
use std::time::Duration;

use portia::storage::{InMemoryStorage, LeaseQueue, ManualClock, ToolCallStatus, WorkflowStore};
use portia::testing::{MockBehavior, MockTool, ScriptedLlm};
use portia::tool::{Tool, ToolError, ToolOutput, ToolRunContext, ToolSpec};
use portia::workflow::FailureKind;
use portia::{Config, Error, InMemoryToolRegistry, PlanBuilder, Runner, Workflow, WorkflowState};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// A tool that says when it has started, then waits to be let go or cancelled.
/// It has side effects unless `read_only`.
#[derive(Debug, Default)]
struct GateTool {
    entered: Notify,
    release: Notify,
    read_only: bool,
}

#[async_trait::async_trait]
impl Tool for GateTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("gate_tool", "Gate Tool", "Waits.")
            .task_argument("task")
            .idempotent(self.read_only)
            .side_effects(!self.read_only)
    }

    async fn run(&self, ctx: &ToolRunContext, _args: Value) -> Result<ToolOutput, ToolError> {
        self.entered.notify_one();
        tokio::select! {
            () = self.release.notified() => Ok(ToolOutput::value("let go")),
            () = ctx.cancellation.cancelled() => Err(ToolError::hard("cancelled while waiting")),
        }
    }
}

struct Setup {
    clock: ManualClock,
    storage: Arc<InMemoryStorage>,
    gate: Arc<GateTool>,
    after: Arc<MockTool>,
}

fn setup() -> Setup {
    let clock = ManualClock::default();
    let storage = Arc::new(InMemoryStorage::with_clock(Arc::new(clock.clone())));
    Setup { clock, storage, gate: Arc::default(), after: Arc::new(MockTool::new("after_tool", MockBehavior::Echo)) }
}

impl Setup {
    fn runner(&self) -> Runner {
        let tools = InMemoryToolRegistry::from_tools([self.gate.clone() as Arc<dyn Tool>, self.after.clone()]).unwrap();
        let config = Config::builder().summarize_final_output(false).build().unwrap();
        Runner::builder(config)
            .tools(tools)
            .llm(Arc::new(ScriptedLlm::new()))
            .storage(self.storage.clone())
            .build()
            .unwrap()
    }

    /// One step that waits at the gate.
    async fn workflow(&self, runner: &Runner) -> Workflow {
        let plan = PlanBuilder::new("wait").step("wait", Some("gate_tool"), "$waited").build();
        runner.create_workflow(&plan).await.unwrap()
    }
}

/// Runs workflow `id` in the background.
fn spawn_run(runner: &Runner, id: portia::WorkflowId) -> tokio::task::JoinHandle<portia::Result<Workflow>> {
    let runner = runner.clone();
    tokio::spawn(async move { runner.execute_workflow_by_id(id).await })
}

#[tokio::test(start_paused = true)]
async fn a_second_run_is_refused_while_the_first_holds_the_lease() {
    let s = setup();
    let (first, second) = (s.runner(), s.runner());
    let workflow = s.workflow(&first).await;
    let running = spawn_run(&first, workflow.id());
    s.gate.entered.notified().await;
    let err = second.execute_workflow(workflow.clone()).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyRunning { workflow_id, .. } if workflow_id == workflow.id()), "{err}");
    s.gate.release.notify_one();
    let done = running.await.unwrap().unwrap();
    assert_eq!(done.state(), WorkflowState::Complete, "the first run went on undisturbed");
}

#[tokio::test(start_paused = true)]
async fn a_run_that_lost_its_lease_writes_nothing_and_starts_no_new_call() {
    let s = setup();
    let runner = s.runner();
    let plan = PlanBuilder::new("wait, then echo")
        .step("wait", Some("gate_tool"), "$waited")
        .step("echo", Some("after_tool"), "$after")
        .input("$waited", "what the gate said")
        .build();
    let workflow = runner.create_workflow(&plan).await.unwrap();
    let running = spawn_run(&runner, workflow.id());
    s.gate.entered.notified().await;
    s.clock.advance(Duration::from_secs(3600));
    let takeover = s.storage.acquire_lease(workflow.id(), "another process", Duration::from_secs(30)).await.unwrap();
    assert!(takeover.reclaimed);
    let before = s.storage.get_workflow(workflow.id()).await.unwrap();
    s.gate.release.notify_one();

    let err = running.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    assert_eq!(s.storage.get_workflow(workflow.id()).await.unwrap(), before, "the stale run changed nothing");
    assert!(s.after.calls().is_empty(), "no new tool call after the lease was lost");
}

/// A read-only tool's call is journaled once, when it is over: a resumed run makes a
/// call cut short again whether or not its intent was journaled, so no intent is
/// written. A tool with side effects journals its intent before it is called.
#[tokio::test(start_paused = true)]
async fn a_read_only_call_is_journaled_once_it_is_over_and_made_again_if_cut_short() {
    let mut s = setup();
    s.gate = Arc::new(GateTool { read_only: true, ..GateTool::default() });
    let runner = s.runner();
    let workflow = s.workflow(&runner).await;
    let running = spawn_run(&runner, workflow.id());
    s.gate.entered.notified().await;
    assert!(runner.tool_calls(workflow.id()).await.unwrap().is_empty(), "no intent is journaled");
    assert!(runner.interrupt(workflow.id()));
    assert_eq!(running.await.unwrap().unwrap().state(), WorkflowState::InProgress);

    let resumed = spawn_run(&runner, workflow.id());
    s.gate.entered.notified().await;
    s.gate.release.notify_one();
    assert_eq!(resumed.await.unwrap().unwrap().state(), WorkflowState::Complete);
    let calls = runner.tool_calls(workflow.id()).await.unwrap();
    let journaled: Vec<_> = calls.iter().map(|c| (c.key.seq, c.status, Value::clone(&c.output))).collect();
    assert_eq!(journaled, [(0, ToolCallStatus::Success, json!("let go"))], "one record, with the outcome");

    let s = setup();
    let runner = s.runner();
    let workflow = s.workflow(&runner).await;
    let running = spawn_run(&runner, workflow.id());
    s.gate.entered.notified().await;
    let calls = runner.tool_calls(workflow.id()).await.unwrap();
    assert_eq!(calls.iter().map(|c| c.status).collect::<Vec<_>>(), [ToolCallStatus::Started], "its intent first");
    s.gate.release.notify_one();
    assert_eq!(running.await.unwrap().unwrap().state(), WorkflowState::Complete);
}

/// A run dropped before it ends (its task aborted) stops renewing its lease, which
/// then lapses, so another runner takes the workflow over.
#[tokio::test(start_paused = true)]
async fn a_run_dropped_midway_stops_renewing_its_lease() {
    let s = setup();
    let runner = s.runner();
    let workflow = s.workflow(&runner).await;
    let running = spawn_run(&runner, workflow.id());
    s.gate.entered.notified().await;
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    // A heartbeat that outlived its run would renew the lease meanwhile (every 10 s
    // of tokio's clock, which jumps ahead) to 30 s past the store's time then.
    s.clock.advance(Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(15)).await;
    s.clock.advance(Duration::from_secs(20));
    let taken = s.storage.acquire_lease(workflow.id(), "another process", Duration::from_secs(30)).await.unwrap();
    assert!(taken.reclaimed, "the dropped run's lease lapsed");
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_from_another_runner_stops_the_run_and_its_tool() {
    let s = setup();
    let (running_runner, other) = (s.runner(), s.runner());
    let workflow = s.workflow(&running_runner).await;
    let running = spawn_run(&running_runner, workflow.id());
    s.gate.entered.notified().await;
    // Another runner (as in another process) can only leave the request in the store.
    let seen = other.cancel_workflow(workflow.id(), "the user changed their mind").await.unwrap();
    assert_eq!(seen.state(), WorkflowState::InProgress);

    // The running run sees it when it next renews its lease (tokio's clock is paused
    // and jumps ahead while everything waits), and its tool sees the token.
    let cancelled = running.await.unwrap().unwrap();
    assert_eq!(cancelled.state(), WorkflowState::Failed);
    let failure = cancelled.failure().unwrap();
    assert_eq!(failure.kind, FailureKind::Cancelled);
    assert_eq!(failure.message, "the user changed their mind");
    assert_eq!(s.storage.get_workflow(workflow.id()).await.unwrap(), cancelled);
}

#[tokio::test(start_paused = true)]
async fn cancelling_on_the_running_runner_returns_the_failed_workflow_at_once() {
    let s = setup();
    let runner = s.runner();
    let workflow = s.workflow(&runner).await;
    let running = spawn_run(&runner, workflow.id());
    s.gate.entered.notified().await;
    let cancelled = runner.cancel_workflow(workflow.id(), "stop").await.unwrap();
    assert_eq!(cancelled.failure().unwrap().kind, FailureKind::Cancelled);
    assert_eq!(running.await.unwrap().unwrap(), cancelled);
}

#[tokio::test]
async fn an_old_copy_runs_the_stored_workflow_and_keeps_the_answers() {
    let s = setup();
    let tools = InMemoryToolRegistry::new().with(MockTool::new("ask_tool", MockBehavior::ClarifyInput("city".into())));
    let runner = Runner::builder(Config::builder().summarize_final_output(false).build().unwrap())
        .tools(tools.unwrap())
        .llm(Arc::new(ScriptedLlm::new().tool_call("ask_tool", json!({})).tool_call("ask_tool", json!({}))))
        .storage(s.storage.clone())
        .build()
        .unwrap();
    let plan = PlanBuilder::new("ask").step("ask for the city", Some("ask_tool"), "$city").build();
    let old_copy = runner.create_workflow(&plan).await.unwrap();
    let paused = runner.execute_workflow(old_copy.clone()).await.unwrap();
    let question = paused.outstanding_clarifications().next().unwrap().clone();
    runner.resolve_clarification(&question, "Lisbon").await.unwrap();

    let done = runner.execute_workflow(old_copy).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(done.outputs().step_outputs.get("$city").unwrap().value, json!({"city": "Lisbon"}));
    // Resuming after a clarification is not a takeover of a dead run.
    let grant = s.storage.acquire_lease(done.id(), "x", Duration::from_secs(1)).await;
    assert!(matches!(grant, Err(Error::InvalidWorkflowState { .. })));
    let calls = runner.tool_calls(done.id()).await.unwrap();
    assert_eq!(calls.iter().map(|c| c.key.attempt).collect::<Vec<_>>(), [0, 1], "one attempt per resume");
}

#[tokio::test]
async fn attempts_count_only_takeovers_of_dead_runs() {
    let s = setup();
    let runner = s.runner();
    let workflow = s.workflow(&runner).await;
    let ttl = Duration::from_secs(30);
    let first = s.storage.acquire_lease(workflow.id(), "a", ttl).await.unwrap();
    s.storage.release_lease(&first.lease).await.unwrap();
    let second = s.storage.acquire_lease(workflow.id(), "b", ttl).await.unwrap();
    assert_eq!((second.reclaimed, second.attempts), (false, 0));
    s.clock.advance(ttl * 2);
    let third = s.storage.acquire_lease(workflow.id(), "c", ttl).await.unwrap();
    assert_eq!((third.reclaimed, third.attempts), (true, 1));
    assert!(third.lease.epoch > second.lease.epoch);
}
