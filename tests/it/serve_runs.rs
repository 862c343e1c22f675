//! The runs `portia serve` starts in tasks of its own: a second start of one under
//! way is refused, and shutdown neither drops them nor waits on them for ever: they
//! go on for the grace period, then are stopped with their leases released, left
//! to be resumed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portia::runner::serve::{ServeOptions, Server};
use portia::storage::{InMemoryStorage, Storage};
use portia::testing::ScriptedLlm;
use portia::tool::ToolSpec;
use portia::{InMemoryToolRegistry, Runner, WorkflowId, WorkflowState};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::serve::{config, http_client, tool_plan};

/// Its first call waits at a gate the test opens (or until its run is stopped);
/// the calls after it return at once.
#[derive(Debug, Default)]
struct GateTool {
    calls: AtomicUsize,
    entered: Notify,
    gate: Notify,
}

#[async_trait::async_trait]
impl portia::Tool for GateTool {
    fn spec(&self) -> ToolSpec {
        // Read-only: a call cut short is made again on resume, not asked about.
        ToolSpec::new("gate_tool", "Gate", "Waits at a gate.").task_argument("task").read_only()
    }

    async fn run(&self, _ctx: &portia::ToolRunContext, _args: Value) -> Result<portia::ToolOutput, portia::ToolError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.entered.notify_one();
            // A stopped run drops its running steps, this wait with them.
            self.gate.notified().await;
        }
        Ok(portia::ToolOutput::value("opened"))
    }
}

/// A runner on `storage` whose one tool is `gate`.
fn runner_on(storage: Arc<dyn Storage>, gate: &Arc<GateTool>) -> Runner {
    let tools = InMemoryToolRegistry::from_tools([Arc::clone(gate) as Arc<dyn portia::Tool>]).unwrap();
    Runner::builder(config()).tools(tools).llm(Arc::new(ScriptedLlm::new())).storage(storage).build().unwrap()
}

/// A server whose shutdown the test asks for, and whose end it awaits.
struct Stoppable {
    base: String,
    runner: Runner,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<portia::Result<()>>,
}

impl Stoppable {
    async fn start(gate: &Arc<GateTool>, options: ServeOptions) -> Self {
        let runner = runner_on(Arc::new(InMemoryStorage::new()), gate);
        let server = Server::bind(runner.clone(), "127.0.0.1:0".parse().unwrap(), options).await.unwrap();
        let base = format!("http://{}", server.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(server.run_until(async move {
            let _ = stopped.await;
        }));
        Self { base, runner, http: http_client(), stop: Some(stop), served }
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self.http.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap();
        (response.status(), response.json().await.unwrap_or(Value::Null))
    }

    /// Starts a workflow of the gate's plan in the server, returned once it waits at the gate.
    async fn started_at_gate(&self, gate: &GateTool) -> WorkflowId {
        let (status, created) = self.post("/v1/workflows", json!({"plan": tool_plan("Wait", "gate_tool")})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{created}");
        gate.entered.notified().await;
        created["id"].as_str().unwrap().parse().unwrap()
    }

    /// A server whose one run waits at `gate`, asked to shut down on tokio's paused
    /// clock: with the run's workflow and when the shutdown was asked.
    async fn shutting_down_at_gate(gate: &Arc<GateTool>) -> (Self, WorkflowId, tokio::time::Instant) {
        let mut served = Self::start(gate, ServeOptions::new()).await;
        let id = served.started_at_gate(gate).await;
        tokio::time::pause();
        let asked = tokio::time::Instant::now();
        served.shut_down();
        (served, id, asked)
    }

    fn shut_down(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }
}

/// A second resume of a workflow running in this server is refused, as a
/// concurrent answer is, rather than accepted and dropped.
#[tokio::test]
async fn resuming_a_workflow_running_here_is_409_already_running() {
    let gate = Arc::new(GateTool::default());
    let served = Stoppable::start(&gate, ServeOptions::new()).await;
    let id = served.started_at_gate(&gate).await;
    let (status, refused) = served.post(&format!("/v1/workflows/{id}/resume"), Value::Null).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "already_running");
    gate.gate.notify_one();
}

/// Deleted under its run, a workflow's run died at its next write and its event
/// streams ended with the run open; a DELETE is refused while a run holds it, and
/// goes through once the run has rested.
#[tokio::test]
async fn deleting_a_workflow_a_run_holds_is_409_already_running_and_deletes_once_it_rests() {
    let gate = Arc::new(GateTool::default());
    let served = Stoppable::start(&gate, ServeOptions::new()).await;
    let id = served.started_at_gate(&gate).await;
    let url = format!("{}/v1/workflows/{id}", served.base);
    let refused = served.http.delete(&url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "already_running", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("cancel it"), "{body}");

    let mut events = served.runner.subscribe_to(id);
    gate.gate.notify_one();
    while let Some(Ok(event)) = events.next().await {
        if matches!(event.kind, portia::runner::EventKind::StateChanged { to: WorkflowState::Complete, .. }) {
            break;
        }
    }
    assert_eq!(served.runner.get_workflow(id).await.unwrap().state(), WorkflowState::Complete);
    // The run has released its lease with its last save.
    assert_eq!(served.http.delete(&url).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert!(served.runner.get_workflow(id).await.is_err());
}

/// Past the grace period (30 seconds by default, on a paused clock here), a run
/// still going is stopped as a worker's shutdown stops it: the server ends once it
/// has saved, and its lease is released, so it is resumed at once.
#[tokio::test]
async fn shutdown_stops_a_run_past_the_grace_period_and_leaves_it_to_resume() {
    let gate = Arc::new(GateTool::default());
    let (mut served, id, asked) = Stoppable::shutting_down_at_gate(&gate).await;
    (&mut served.served).await.unwrap().unwrap();
    assert!(asked.elapsed() >= Duration::from_secs(30), "stopped after {:?}", asked.elapsed());

    let left = served.runner.get_workflow(id).await.unwrap();
    assert_eq!(left.state(), WorkflowState::InProgress, "left as last saved: {:?}", left.failure());
    // Another runner on the store takes it over now: no lease is left to lapse.
    let other = runner_on(served.runner.storage().clone(), &gate);
    let done = other.execute_workflow_by_id(id).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
}

/// Within the grace period a run goes on, and the server ends once it has.
#[tokio::test]
async fn shutdown_lets_a_run_end_within_the_grace_period() {
    let gate = Arc::new(GateTool::default());
    let (mut served, id, asked) = Stoppable::shutting_down_at_gate(&gate).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!served.served.is_finished(), "the server waits for its run");
    gate.gate.notify_one();
    (&mut served.served).await.unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(30), "it ended with the run, not the grace");
    assert_eq!(served.runner.get_workflow(id).await.unwrap().state(), WorkflowState::Complete);
}
