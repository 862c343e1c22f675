//! Events and hooks: the exact events of a run, a subscriber that falls behind,
//! each decision a hook can make, and the approval gate approved, edited, refused
//! and resumed after a restart.

use std::sync::Arc;

use portia::config::ExecutionMode;
use portia::runner::RunnerBuilder;
use portia::runner::{ApprovalGate, HookError, Hooks, StepDecision, ToolCallDecision, ToolCallRequest};
use portia::runner::{EventKind, Missed, WorkflowEvent};
use portia::storage::{SqliteStorage, Storage};
use portia::testing::{MockBehavior, MockTool, ScriptedLlm};
use portia::tool::ToolSpec;
use portia::workflow::FailureKind;
use portia::{Clarification, Config, InMemoryToolRegistry, Output, Plan, PlanBuilder, Runner, Workflow, WorkflowState};
use serde_json::{Value, json};

fn config() -> Config {
    Config::builder().execution(ExecutionMode::Sequential).summarize_final_output(false).build().unwrap()
}

fn builder(llm: ScriptedLlm, tool: Arc<MockTool>) -> RunnerBuilder {
    let tools = InMemoryToolRegistry::from_tools([tool as Arc<dyn portia::Tool>]).unwrap();
    Runner::builder(config()).tools(tools).llm(Arc::new(llm))
}

/// A tool with side effects, so the approval gate guards it.
fn send_tool() -> Arc<MockTool> {
    let spec = ToolSpec::new("send_tool", "Send Tool", "Sends a payment.");
    Arc::new(MockTool::echo("send_tool").with_spec(spec))
}

/// Send a payment, then say it is done.
fn plan() -> Plan {
    PlanBuilder::new("pay")
        .step("Send 5 euros to Ann", Some("send_tool"), "$sent")
        .step("Say it is done", None, "$said")
        .input("$sent", "the payment")
        .build()
}

fn name(event: &WorkflowEvent) -> String {
    let value = serde_json::to_value(event).unwrap();
    let mut name = value["event"].as_str().unwrap().to_owned();
    if let Some(to) = value.get("to").and_then(Value::as_str) {
        name = format!("{name}:{to}");
    }
    name
}

#[tokio::test]
async fn a_run_announces_each_thing_once_in_order() {
    let llm = ScriptedLlm::new().tool_call("send_tool", json!({"to": "Ann", "amount": 5})).text("Done.");
    let runner = builder(llm, send_tool()).build().unwrap();
    let workflow = runner.create_workflow(&plan()).await.unwrap();
    let (mut events, run) = runner.execute_workflow_stream(workflow);
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        seen.push(event.unwrap());
    }
    let done = run.await.unwrap().unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    let names: Vec<String> = seen.iter().map(name).collect();
    assert_eq!(
        names,
        [
            "state_changed:IN_PROGRESS",
            "step_started",
            "llm_call_finished",
            "tool_call_started",
            "tool_call_finished",
            "step_finished",
            "step_started",
            "llm_call_finished",
            "step_finished",
            "state_changed:COMPLETE",
        ]
    );
    let EventKind::ToolCallStarted { arguments, .. } = &seen[3].kind else { panic!("{:?}", seen[3]) };
    assert_eq!(arguments, &json!({"to": "Ann", "amount": 5}));
    let EventKind::LlmCallFinished { step_output, model, usage, .. } = &seen[2].kind else { panic!() };
    assert_eq!((step_output.as_deref(), model.as_str(), usage.llm_calls), (Some("$sent"), "gpt-4.1-mini", 1));
    assert!(seen.iter().all(|e| e.workflow_id == done.id()));
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_what_it_missed_and_goes_on() {
    let llm = ScriptedLlm::new().tool_call("send_tool", json!({"to": "Ann"})).text("Done.");
    let runner = builder(llm, send_tool()).event_capacity(2).build().unwrap();
    let mut slow = runner.subscribe();
    let done = runner.run_plan(&plan()).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete, "the run did not wait for the subscriber");
    let Some(Err(Missed(missed))) = slow.next().await else { panic!("the lag is reported first") };
    assert!(missed >= 8, "missed {missed}");
    let last = slow.next().await.unwrap().unwrap();
    assert!(matches!(last.kind, EventKind::StepFinished { .. } | EventKind::StateChanged { .. }), "{last:?}");
}

/// A hook that makes one decision before every tool call, and records what it saw.
#[derive(Debug)]
struct Decide(ToolCallDecision);

#[async_trait::async_trait]
impl Hooks for Decide {
    async fn before_tool_call(&self, _call: &ToolCallRequest<'_>) -> Result<ToolCallDecision, HookError> {
        Ok(self.0.clone())
    }
}

async fn run_with(hook: impl Hooks + 'static, tool: Arc<MockTool>, replies: usize) -> (Workflow, Arc<ScriptedLlm>) {
    // The model's replies, in order: the tool call, then the last step's answer.
    let mut llm = ScriptedLlm::new();
    if replies >= 1 {
        llm = llm.tool_call("send_tool", json!({"to": "Ann", "amount": 5}));
    }
    if replies >= 2 {
        llm = llm.text("Done.");
    }
    let llm = Arc::new(llm);
    let tools = InMemoryToolRegistry::from_tools([tool as Arc<dyn portia::Tool>]).unwrap();
    let runner = Runner::builder(config()).tools(tools).llm(llm.clone()).hook(hook).build().unwrap();
    (runner.run_plan(&plan()).await.unwrap(), llm)
}

#[tokio::test]
async fn a_hook_can_replace_the_arguments() {
    let tool = send_tool();
    let hook = Decide(ToolCallDecision::ProceedWith(json!({"to": "Ann", "amount": 1})));
    let (done, _) = run_with(hook, tool.clone(), 2).await;
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(tool.calls()[0].args, json!({"to": "Ann", "amount": 1}));
}

#[tokio::test]
async fn a_hook_can_deny_a_call_which_is_then_never_made() {
    let tool = send_tool();
    let (done, _) = run_with(Decide(ToolCallDecision::Deny("payments are off today".into())), tool.clone(), 1).await;
    let failure = done.failure().unwrap();
    assert_eq!((failure.kind, failure.step), (FailureKind::Denied, Some(0)));
    assert!(failure.message.contains("payments are off today"), "{failure}");
    assert!(tool.calls().is_empty());
}

#[tokio::test]
async fn a_hook_can_ask_a_human_first() {
    let tool = send_tool();
    let question = Clarification::input(portia::WorkflowId::new(), "pin", "Your PIN?");
    let (waiting, _) = run_with(Decide(ToolCallDecision::Ask(Box::new(question))), tool.clone(), 1).await;
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    let asked = waiting.outstanding_clarifications().next().unwrap();
    assert_eq!(asked.user_guidance, "Your PIN?");
    assert!(asked.tool_call.is_some(), "the question is tied to the held call");
    assert!(tool.calls().is_empty());
}

/// Fails before every step, or panics before every tool call.
#[derive(Debug)]
struct Broken {
    panics: bool,
}

#[async_trait::async_trait]
impl Hooks for Broken {
    async fn before_step(&self, _step: &portia::agent::StepContext) -> Result<StepDecision, HookError> {
        if self.panics { Ok(StepDecision::Run) } else { Err(HookError::new("the policy service is down")) }
    }
    async fn before_tool_call(&self, _call: &ToolCallRequest<'_>) -> Result<ToolCallDecision, HookError> {
        assert!(!self.panics, "the hook broke");
        Ok(ToolCallDecision::Proceed)
    }
}

#[tokio::test]
async fn a_failing_hook_fails_the_step_with_a_typed_failure() {
    let (done, _) = run_with(Broken { panics: false }, send_tool(), 0).await;
    let failure = done.failure().unwrap();
    assert_eq!(failure.kind, FailureKind::Hook);
    assert!(failure.message.contains("the policy service is down"), "{failure}");
}

#[tokio::test]
async fn a_panicking_hook_fails_the_step_and_never_hangs_the_run() {
    let (done, _) = run_with(Broken { panics: true }, send_tool(), 1).await;
    let failure = done.failure().unwrap();
    assert_eq!(failure.kind, FailureKind::Panic);
    assert!(failure.message.contains("the hook broke"), "{failure}");
}

/// Skips every step that has no tool, with a fixed answer.
#[derive(Debug)]
struct SkipThinking;

#[async_trait::async_trait]
impl Hooks for SkipThinking {
    async fn before_step(&self, step: &portia::agent::StepContext) -> Result<StepDecision, HookError> {
        Ok(if step.tool.is_none() { StepDecision::Skip(Output::new("skipped")) } else { StepDecision::Run })
    }
}

#[tokio::test]
async fn a_hook_can_skip_a_step_with_an_output() {
    let (done, llm) = run_with(SkipThinking, send_tool(), 1).await;
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(done.outputs().step_outputs.get("$said").unwrap().value, json!("skipped"));
    assert_eq!(llm.requests().len(), 1, "only the tool step asked the model");
}

async fn gated(storage: Arc<dyn Storage>, tool: Arc<MockTool>, llm: ScriptedLlm) -> (Runner, Arc<ScriptedLlm>) {
    let llm = Arc::new(llm);
    let tools = InMemoryToolRegistry::from_tools([tool as Arc<dyn portia::Tool>]).unwrap();
    let runner = Runner::builder(config())
        .tools(tools)
        .llm(llm.clone())
        .storage(storage)
        .hook(ApprovalGate::for_side_effects())
        .build()
        .unwrap();
    (runner, llm)
}

#[tokio::test]
async fn an_approval_survives_a_restart_and_runs_the_call_without_a_new_model_call() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("portia.db");
    let tool = send_tool();
    let first_llm = ScriptedLlm::new().tool_call("send_tool", json!({"to": "Ann", "amount": 5}));
    let (first, _) = gated(Arc::new(SqliteStorage::open(&db).unwrap()), tool.clone(), first_llm).await;
    let waiting = first.run_plan(&plan()).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    let question = waiting.outstanding_clarifications().next().unwrap().clone();
    assert_eq!(question.category(), "Value Confirmation");
    assert_eq!(question.response, Some(json!({"to": "Ann", "amount": 5})), "the question shows the arguments");
    assert!(tool.calls().is_empty(), "nothing is sent before the approval");
    drop(first);

    // A new process: only the final step may ask the model.
    let (second, llm) =
        gated(Arc::new(SqliteStorage::open(&db).unwrap()), tool.clone(), ScriptedLlm::new().text("Done.")).await;
    second.resolve_clarification(&question, json!({"to": "Ann", "amount": 4})).await.unwrap();
    let done = second.execute_workflow(waiting).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(tool.calls().len(), 1);
    assert_eq!(tool.calls()[0].args, json!({"to": "Ann", "amount": 4}), "the approved (edited) arguments");
    assert_eq!(llm.requests().len(), 1);
}

/// Runs a one-step payment whose tool asks for a memo after the gate's approval,
/// the model choosing the arguments first `first`, then (after the memo) `second`.
/// Answers every approval with `approval` and the memo with "lunch"; returns the
/// workflow and the approvals asked.
async fn approve_then_answer_the_tools_question(first: Value, second: Value, approval: Value) -> (Workflow, usize) {
    let spec = ToolSpec::new("send_tool", "Send Tool", "Sends a payment.");
    let tool = Arc::new(MockTool::new("send_tool", MockBehavior::ClarifyInput("memo".into())).with_spec(spec));
    let llm = ScriptedLlm::new().tool_call("send_tool", first).tool_call("send_tool", second);
    let (runner, _) = gated(Arc::new(portia::storage::InMemoryStorage::new()), tool, llm).await;
    let plan = PlanBuilder::new("pay").step("Send 5 euros to Ann", Some("send_tool"), "$sent").build();
    let mut workflow = runner.run_plan(&plan).await.unwrap();
    let mut approvals = 0;
    while workflow.state() == WorkflowState::NeedClarification {
        let question = workflow.outstanding_clarifications().next().unwrap().clone();
        let answer = if question.tool_call.is_some() { approval.clone() } else { json!("lunch") };
        approvals += usize::from(question.tool_call.is_some());
        runner.resolve_clarification(&question, answer).await.unwrap();
        workflow = runner.execute_workflow(workflow).await.unwrap();
    }
    (workflow, approvals)
}

#[tokio::test]
async fn an_approved_call_made_again_after_its_tools_own_question_is_not_asked_about_twice() {
    let ann = json!({"to": "Ann", "amount": 5});
    let (done, approvals) = approve_then_answer_the_tools_question(ann.clone(), ann.clone(), json!(true)).await;
    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(done.outputs().step_outputs.get("$sent").unwrap().value, json!({"memo": "lunch"}));
    assert_eq!(approvals, 1, "the same call with the same arguments was approved once");

    let bob = json!({"to": "Bob", "amount": 500});
    let (done, approvals) = approve_then_answer_the_tools_question(ann.clone(), bob, json!(true)).await;
    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(approvals, 2, "other arguments need their own approval");

    // Approved edited, the call was made with 4: the model's 5 again is another call.
    let edited = json!({"to": "Ann", "amount": 4});
    let (done, approvals) = approve_then_answer_the_tools_question(ann.clone(), ann, edited).await;
    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(approvals, 2, "the arguments the person approved are not the model's");
}

#[tokio::test]
async fn a_refusal_at_the_gate_fails_the_step_as_denied() {
    let tool = send_tool();
    let llm = ScriptedLlm::new().tool_call("send_tool", json!({"to": "Ann", "amount": 5}));
    let (runner, _) = gated(Arc::new(portia::storage::InMemoryStorage::new()), tool.clone(), llm).await;
    let waiting = runner.run_plan(&plan()).await.unwrap();
    let question = waiting.outstanding_clarifications().next().unwrap().clone();
    runner.resolve_clarification(&question, json!({"denied": "not today"})).await.unwrap();
    let done = runner.execute_workflow(waiting).await.unwrap();
    let failure = done.failure().unwrap();
    assert_eq!(failure.kind, FailureKind::Denied);
    assert!(failure.message.contains("not today"), "{failure}");
    assert!(tool.calls().is_empty());
}

#[tokio::test]
async fn the_gate_leaves_read_only_tools_alone() {
    let tool =
        Arc::new(MockTool::echo("send_tool").with_spec(ToolSpec::new("send_tool", "Look", "Looks.").read_only()));
    let llm = ScriptedLlm::new().tool_call("send_tool", json!({"to": "Ann"})).text("Done.");
    let (runner, _) = gated(Arc::new(portia::storage::InMemoryStorage::new()), tool.clone(), llm).await;
    assert_eq!(runner.run_plan(&plan()).await.unwrap().state(), WorkflowState::Complete);
    assert_eq!(tool.calls().len(), 1);
}

#[tokio::test]
async fn another_process_watches_the_stored_history_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("portia.db");
    let llm = ScriptedLlm::new().tool_call("send_tool", json!({"to": "Ann"})).text("Done.");
    let tools = InMemoryToolRegistry::from_tools([send_tool() as Arc<dyn portia::Tool>]).unwrap();
    let storage = Arc::new(SqliteStorage::open(&db).unwrap());
    let runner = Runner::builder(config()).tools(tools).llm(Arc::new(llm)).storage(storage).build().unwrap();
    let workflow = runner.create_workflow(&plan()).await.unwrap();
    let (mut live, run) = runner.execute_workflow_stream(workflow.clone());
    let mut announced = Vec::new();
    while let Some(event) = live.next().await {
        announced.push(event.unwrap());
    }
    run.await.unwrap().unwrap();

    // A runner on the same database, as in another process, with no model at all.
    let storage = Arc::new(SqliteStorage::open(&db).unwrap());
    let watcher = Runner::builder(config()).llm(Arc::new(ScriptedLlm::new())).storage(storage).build().unwrap();
    let mut watch = watcher.watch(workflow.id());
    let mut stored = Vec::new();
    while let Some(event) = watch.next().await {
        stored.push(event.unwrap());
    }
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=announced.len() as u64).collect::<Vec<_>>());
    let kinds: Vec<_> = stored.into_iter().map(|e| e.event.kind).collect();
    assert_eq!(kinds, announced.into_iter().map(|e| e.kind).collect::<Vec<_>>(), "the same events, in the same order");
}

#[tokio::test]
async fn a_late_watcher_reads_the_history_then_follows_live() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let tool = Arc::new(GateTool(Arc::clone(&gate)));
    let tools = InMemoryToolRegistry::from_tools([tool as Arc<dyn portia::Tool>]).unwrap();
    let runner = Runner::builder(config()).tools(tools).llm(Arc::new(ScriptedLlm::new())).build().unwrap();
    let plan = PlanBuilder::new("wait").step("wait", Some("gate_tool"), "$waited").build();
    let workflow = runner.create_workflow(&plan).await.unwrap();
    let (mut live, run) = runner.execute_workflow_stream(workflow.clone());
    // Once the tool has started, the run's first save is stored.
    while !matches!(live.next().await, Some(Ok(WorkflowEvent { kind: EventKind::ToolCallStarted { .. }, .. }))) {}
    let mut watch = runner.watch(workflow.id());
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.seq, 1);
    assert!(matches!(first.event.kind, EventKind::StateChanged { to: WorkflowState::InProgress, .. }));
    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(event) = watch.next().await {
        rest.push(event.unwrap().event.kind);
    }
    assert!(matches!(rest.last(), Some(EventKind::StateChanged { to: WorkflowState::Complete, .. })), "{rest:?}");
    run.await.unwrap().unwrap();
}

/// Waits at a gate, called with its step's task (no model needed).
#[derive(Debug)]
struct GateTool(Arc<tokio::sync::Notify>);

#[async_trait::async_trait]
impl portia::Tool for GateTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("gate_tool", "Gate", "Waits.").task_argument("task").read_only()
    }

    async fn run(&self, _ctx: &portia::ToolRunContext, _args: Value) -> Result<portia::ToolOutput, portia::ToolError> {
        self.0.notified().await;
        Ok(portia::ToolOutput::value("opened"))
    }
}

/// Reports its progress twice, called with its step's task.
#[derive(Debug)]
struct ProgressTool;

#[async_trait::async_trait]
impl portia::Tool for ProgressTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("progress_tool", "Progress", "Works in halves.").task_argument("task").read_only()
    }

    async fn run(&self, ctx: &portia::ToolRunContext, _args: Value) -> Result<portia::ToolOutput, portia::ToolError> {
        ctx.events.progress(1.0, Some(2.0), Some("first half".into()));
        ctx.events.progress(2.0, Some(2.0), None);
        Ok(portia::ToolOutput::value("done"))
    }
}

#[tokio::test]
async fn a_tool_reports_progress_as_events_of_its_call_that_are_stored() {
    let tools = InMemoryToolRegistry::from_tools([Arc::new(ProgressTool) as Arc<dyn portia::Tool>]).unwrap();
    let runner = Runner::builder(config()).tools(tools).llm(Arc::new(ScriptedLlm::new())).build().unwrap();
    let plan = PlanBuilder::new("work").step("Do the work", Some("progress_tool"), "$done").build();
    let workflow = runner.create_workflow(&plan).await.unwrap();
    let (mut events, run) = runner.execute_workflow_stream(workflow);
    let mut live = Vec::new();
    while let Some(event) = events.next().await {
        live.push(event.unwrap());
    }
    let done = run.await.unwrap().unwrap();

    let names: Vec<String> = live.iter().map(name).collect();
    assert_eq!(names[2..6], ["tool_call_started", "tool_progress", "tool_progress", "tool_call_finished"], "{names:?}");
    let EventKind::ToolCallStarted { call, .. } = &live[2].kind else { panic!() };
    let EventKind::ToolProgress { call: reported, tool_id, progress, total, message } = &live[3].kind else { panic!() };
    assert_eq!((reported, tool_id.as_str()), (call, "progress_tool"));
    assert_eq!((*progress, *total, message.as_deref()), (1.0, Some(2.0), Some("first half")));
    let stored: Vec<EventKind> =
        runner.storage().events(done.id(), 0).await.unwrap().into_iter().map(|e| e.event.kind).collect();
    assert_eq!(stored.iter().filter(|k| matches!(k, EventKind::ToolProgress { .. })).count(), 2);
}

/// Asks a person to pick a colour while its call stays open (for `wait`), and
/// carries on with the answer; unanswered, it leaves the question to the workflow.
#[derive(Debug)]
struct AskTool {
    wait: std::time::Duration,
}

#[async_trait::async_trait]
impl portia::Tool for AskTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("ask_tool", "Ask", "Asks for a colour.").task_argument("task").read_only()
    }

    async fn run(&self, ctx: &portia::ToolRunContext, _args: Value) -> Result<portia::ToolOutput, portia::ToolError> {
        if let Some(answer) = ctx.clarified("colour") {
            return Ok(portia::ToolOutput::value(json!({"stored": answer})));
        }
        let question =
            Clarification::multiple_choice(ctx.workflow_id, "colour", vec![json!("red"), json!("blue")], "Which?");
        match ctx.ask(question.clone(), self.wait).await {
            Some(answer) => Ok(portia::ToolOutput::value(json!({"live": answer}))),
            None => Ok(portia::ToolOutput::clarification(question)),
        }
    }
}

fn ask_runner(wait: std::time::Duration) -> (Runner, Plan) {
    let tools = InMemoryToolRegistry::from_tools([Arc::new(AskTool { wait }) as Arc<dyn portia::Tool>]).unwrap();
    let runner = Runner::builder(config()).tools(tools).llm(Arc::new(ScriptedLlm::new())).build().unwrap();
    (runner, PlanBuilder::new("pick").step("Pick a colour", Some("ask_tool"), "$colour").build())
}

#[tokio::test]
async fn a_question_answered_while_the_call_waits_completes_the_run_and_is_stored_resolved() {
    let (runner, plan) = ask_runner(std::time::Duration::from_secs(3600));
    let workflow = runner.create_workflow(&plan).await.unwrap();
    let (mut events, run) = runner.execute_workflow_stream(workflow);
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        if let EventKind::ClarificationRaised { clarification } = &event.kind {
            let refused = runner.resolve_clarification(clarification, "green").await.unwrap_err();
            assert!(matches!(refused, portia::Error::InvalidClarificationResponse { .. }), "{refused}");
            let answered = runner.resolve_clarification(clarification, "blue").await.unwrap();
            assert_eq!(answered.state(), WorkflowState::InProgress, "delivered to the waiting tool");
        }
        seen.push(event);
    }
    let done = run.await.unwrap().unwrap();
    assert_eq!(done.state(), WorkflowState::Complete, "{done:?}");
    assert_eq!(done.outputs().step_outputs.get("$colour").unwrap().value, json!({"live": "blue"}));
    let names: Vec<String> = seen.iter().map(name).collect();
    assert!(!names.contains(&"state_changed:NEED_CLARIFICATION".to_owned()), "{names:?}");
    let raised = names.iter().position(|n| n == "clarification_raised").unwrap();
    let resolved = names.iter().position(|n| n == "clarification_resolved").unwrap();
    let finished = names.iter().position(|n| n == "tool_call_finished").unwrap();
    assert!(raised < resolved && resolved < finished, "{names:?}");
    let stored = &done.outputs().clarifications;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].resolved && stored[0].response == Some(json!("blue")) && stored[0].step == Some(0));
    let kept: Vec<String> =
        runner.storage().events(done.id(), 0).await.unwrap().iter().map(|e| name(&e.event)).collect();
    assert_eq!(kept.iter().filter(|n| n.starts_with("clarification_")).count(), 2, "{kept:?}");
}

#[tokio::test(start_paused = true)]
async fn a_question_nobody_answers_in_time_waits_in_the_workflow_and_is_announced_once() {
    // Paused time: the runtime jumps the clock to the end of the wait once every task idles.
    let (runner, plan) = ask_runner(std::time::Duration::from_secs(30));
    let workflow = runner.create_workflow(&plan).await.unwrap();
    let (mut events, run) = runner.execute_workflow_stream(workflow);
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        seen.push(event.unwrap());
    }
    let waiting = run.await.unwrap().unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    let names: Vec<String> = seen.iter().map(name).collect();
    assert_eq!(names.iter().filter(|n| *n == "clarification_raised").count(), 1, "{names:?}");
    let question = waiting.outstanding_clarifications().next().unwrap().clone();
    let EventKind::ClarificationRaised { clarification } =
        &seen[names.iter().position(|n| n == "clarification_raised").unwrap()].kind
    else {
        panic!()
    };
    assert_eq!(clarification.id, question.id, "the question asked live is the one stored");

    let ready = runner.resolve_clarification(&question, "red").await.unwrap();
    assert_eq!(ready.state(), WorkflowState::ReadyToResume);
    let done = runner.execute_workflow(ready).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(done.outputs().step_outputs.get("$colour").unwrap().value, json!({"stored": "red"}));
}
