//! The runner's state machine, persistence and clarification handling, driven by
//! the scripted LLM and mock tools.

use std::sync::Arc;
use std::time::Duration;

use common::{config, harness};
use portia::config::ExecutionMode;
use portia::runner::ReadyPolicy;
use portia::storage::{LeaseQueue as _, WorkflowQuery};
use portia::testing::{MockBehavior, MockTool, ScriptedLlm};
use portia::{Error, ExecutionContext, InMemoryToolRegistry, PlanBuilder, Runner, Workflow, WorkflowState};
use serde_json::json;

use crate::common;

fn registry(tools: Vec<MockTool>) -> InMemoryToolRegistry {
    InMemoryToolRegistry::from_tools(tools.into_iter().map(|t| Arc::new(t) as Arc<dyn portia::Tool>)).unwrap()
}

#[tokio::test]
async fn workflow_is_saved_after_every_state_change_and_step_output() {
    let tools = registry(vec![MockTool::returning("add_tool", json!(3))]);
    let llm = ScriptedLlm::new().tool_call("add_tool", json!({"a": 1, "b": 2})).text("sum is 3");
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let plan = PlanBuilder::new("add")
        .step("Add 1 and 2", Some("add_tool"), "$sum")
        .step("Say the sum", None, "$answer")
        .input("$sum", "the sum")
        .build();
    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert_eq!(workflow.outputs().final_output.as_ref().unwrap().value, json!("sum is 3"));
    let saved: Vec<(WorkflowState, usize)> =
        h.storage.snapshots().iter().map(|w| (w.state(), w.outputs().step_outputs.len())).collect();
    assert_eq!(
        saved,
        [
            (WorkflowState::NotStarted, 0),
            (WorkflowState::InProgress, 0),
            (WorkflowState::InProgress, 1),
            (WorkflowState::InProgress, 2),
            (WorkflowState::Complete, 2),
        ]
    );
    assert_eq!(h.runner.get_workflow(workflow.id()).await.unwrap(), workflow, "the stored copy is the final one");
}

#[tokio::test]
async fn hand_built_plan_is_saved_by_create_workflow() {
    let h = harness(config(ExecutionMode::Sequential, false), registry(vec![]), ScriptedLlm::new());
    let plan = PlanBuilder::new("q").step("think", None, "$x").build();
    let workflow = h.runner.create_workflow(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::NotStarted);
    assert_eq!(h.runner.get_plan(plan.id).await.unwrap(), plan);
    assert_eq!(h.runner.get_workflow(workflow.id()).await.unwrap(), workflow);
}

#[tokio::test]
async fn create_workflow_reports_every_plan_problem() {
    let h = harness(config(ExecutionMode::Sequential, false), registry(vec![]), ScriptedLlm::new());
    let plan = PlanBuilder::new("q")
        .step("", Some("nope_tool"), "$a")
        .step("b", None, "$a")
        .input("$missing", "never produced")
        .build();
    let Err(Error::InvalidPlan(problems)) = h.runner.create_workflow(&plan).await else {
        panic!("expected InvalidPlan")
    };
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 4, "{text:?}");
    assert!(text[0].contains("empty task"));
    assert!(text[1].contains("nope_tool"));
    assert!(text[2].contains("$missing"));
    assert!(text[3].contains("reuses the output name $a"));
    assert!(h.runner.get_plan(plan.id).await.is_err(), "an invalid plan is not saved");
}

#[tokio::test]
async fn finished_workflows_cannot_be_executed_again() {
    let h = harness(config(ExecutionMode::Sequential, false), registry(vec![]), ScriptedLlm::new().text("done"));
    let plan = PlanBuilder::new("q").step("think", None, "$x").build();
    let done = h.runner.run_plan(&plan).await.unwrap();
    let err = h.runner.execute_workflow(done.clone()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidWorkflowState { state: WorkflowState::Complete, .. }), "{err}");
    let created = h.runner.create_workflow(&plan).await.unwrap();
    let failed = h.runner.cancel_workflow(created.id(), "no longer needed").await.unwrap();
    let err = h.runner.execute_workflow(failed).await.unwrap_err();
    assert!(err.to_string().contains("cannot execute it while it is FAILED"), "{err}");
}

#[tokio::test]
async fn unresolved_clarifications_return_the_workflow_unchanged_without_any_call() {
    let tools = registry(vec![MockTool::new("ask_tool", MockBehavior::ClarifyInput("city".into()))]);
    let llm = ScriptedLlm::new().tool_call("ask_tool", json!({}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let plan = PlanBuilder::new("q").step("Ask for the city", Some("ask_tool"), "$city").build();
    let waiting = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    let saves_before = h.storage.snapshots().len();

    let again = h.runner.execute_workflow(waiting.clone()).await.unwrap();
    assert_eq!(again, waiting);
    assert_eq!(h.llm.requests().len(), 1, "no LLM call was made");
    assert_eq!(h.storage.snapshots().len(), saves_before, "nothing was saved");
}

/// A one-step plan whose tool asks for a city until it is answered, scripted for
/// the ask and the resumed call.
fn ask_city_harness() -> (common::Harness, Arc<MockTool>, portia::Plan) {
    let tool = Arc::new(MockTool::new("ask_tool", MockBehavior::ClarifyInput("city".into())));
    let tools = InMemoryToolRegistry::from_tools([tool.clone() as Arc<dyn portia::Tool>]).unwrap();
    let llm = ScriptedLlm::new().tool_call("ask_tool", json!({})).tool_call("ask_tool", json!({}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let plan = PlanBuilder::new("q").step("Ask for the city", Some("ask_tool"), "$city").build();
    (h, tool, plan)
}

#[tokio::test]
async fn clarification_resolved_then_resumed_to_complete() {
    let (h, tool, plan) = ask_city_harness();

    let waiting = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    let clarification = waiting.outstanding_clarifications().next().unwrap().clone();
    assert_eq!(clarification.step, Some(0));
    assert_eq!(clarification.argument_name(), Some("city"));

    let ready = h.runner.resolve_clarification(&clarification, "Lisbon").await.unwrap();
    assert_eq!(ready.state(), WorkflowState::ReadyToResume);
    assert_eq!(
        h.runner.get_workflow(ready.id()).await.unwrap().state(),
        WorkflowState::ReadyToResume,
        "resolution is saved"
    );

    let done = h.runner.execute_workflow(ready).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(done.outputs().step_outputs.get("$city").unwrap().value, json!({"city": "Lisbon"}));
    let second_call = &tool.calls()[1];
    assert_eq!(second_call.clarifications[0].response, Some(json!("Lisbon")), "the tool saw the answer");
    assert!(
        second_call.step_context.contains("city: Lisbon"),
        "the agent saw the answer: {}",
        second_call.step_context
    );
}

/// Whatever a run ends in, its last save gives the lease up in the same write; so
/// does a change made outside a run, such as an answer.
#[tokio::test]
async fn a_run_ends_with_one_write_that_saves_and_gives_the_lease_up() {
    let (h, _tool, plan) = ask_city_harness();
    let waiting = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    assert_eq!(h.storage.take_lease_ends(), ["save and release"]);
    let ttl = Duration::from_secs(30);
    let free = h.storage.inner.acquire_lease(waiting.id(), "someone-else", ttl).await.unwrap();
    assert!(!free.reclaimed, "the lease was given up, not left to lapse");
    h.storage.inner.release_lease(&free.lease).await.unwrap();

    let clarification = waiting.outstanding_clarifications().next().unwrap().clone();
    let ready = h.runner.resolve_clarification(&clarification, "Lisbon").await.unwrap();
    assert_eq!(h.storage.take_lease_ends(), ["save and release"], "an answer is saved the same way");
    let done = h.runner.execute_workflow(ready).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(h.storage.take_lease_ends(), ["save and release"]);
    assert_eq!(h.storage.snapshots().last(), Some(&done), "the last save is the workflow returned");
}

#[tokio::test]
async fn multiple_choice_answer_outside_the_options_is_refused_and_not_saved() {
    let options = vec![json!("a.txt"), json!("b.txt")];
    let tools = registry(vec![MockTool::new("pick_tool", MockBehavior::ClarifyChoice("file".into(), options))]);
    let llm = ScriptedLlm::new().tool_call("pick_tool", json!({})).tool_call("pick_tool", json!({}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let plan = PlanBuilder::new("q").step("Pick a file", Some("pick_tool"), "$file").build();
    let waiting = h.runner.run_plan(&plan).await.unwrap();
    let clarification = waiting.outstanding_clarifications().next().unwrap().clone();
    assert_eq!(clarification.category(), "Multiple Choice");

    let err = h.runner.resolve_clarification(&clarification, "c.txt").await.unwrap_err();
    assert!(matches!(err, Error::InvalidClarificationResponse { .. }), "{err}");
    let stored = h.runner.get_workflow(waiting.id()).await.unwrap();
    assert_eq!(stored.state(), WorkflowState::NeedClarification);
    assert!(!stored.outputs().clarifications[0].resolved);

    let ready = h.runner.resolve_clarification(&clarification, "b.txt").await.unwrap();
    let done = h.runner.execute_workflow(ready).await.unwrap();
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("b.txt"));
}

#[tokio::test]
async fn a_tool_missing_at_execution_fails_the_workflow_with_a_message() {
    let h = harness(config(ExecutionMode::Sequential, false), registry(vec![]), ScriptedLlm::new());
    let plan = PlanBuilder::new("q").step("Search", Some("search_tool"), "$x").build();
    // Stored directly, as a plan made when the registry still had the tool would be.
    h.runner.storage().save_plan(&plan).await.unwrap();
    let workflow: Workflow =
        serde_json::from_value(json!({"id": portia::WorkflowId::new(), "plan_id": plan.id, "version": 1})).unwrap();
    h.runner.storage().create_workflow(&workflow).await.unwrap();
    let failed = h.runner.execute_workflow(workflow).await.unwrap();
    assert_eq!(failed.state(), WorkflowState::Failed);
    let failure = failed.failure().unwrap();
    assert_eq!((failure.step, failure.kind), (Some(0), portia::workflow::FailureKind::InvalidStep));
    assert!(failure.message.contains("Tool search_tool is not in the tool registry"), "{}", failure.message);
    assert_eq!(
        h.runner.get_workflow(failed.id()).await.unwrap().state(),
        WorkflowState::Failed,
        "the failure is saved"
    );
}

#[tokio::test]
async fn execute_by_id_and_missing_ids_give_typed_errors() {
    let h = harness(config(ExecutionMode::Sequential, false), registry(vec![]), ScriptedLlm::new().text("ok"));
    let plan = PlanBuilder::new("q").step("think", None, "$x").build();
    let created = h.runner.create_workflow(&plan).await.unwrap();
    let done = h.runner.execute_workflow_by_id(created.id()).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);

    let missing = portia::WorkflowId::new();
    assert!(
        matches!(h.runner.execute_workflow_by_id(missing).await, Err(Error::WorkflowNotFound(id)) if id == missing)
    );
    let missing_plan = portia::PlanId::new();
    assert!(matches!(h.runner.get_plan(missing_plan).await, Err(Error::PlanNotFound(id)) if id == missing_plan));
}

#[tokio::test]
async fn an_empty_plan_is_refused_before_it_runs() {
    let h = harness(config(ExecutionMode::Sequential, true), registry(vec![]), ScriptedLlm::new());
    let plan = PlanBuilder::new("nothing to do").build();
    let err = h.runner.run_plan(&plan).await.unwrap_err();
    assert!(matches!(&err, Error::InvalidPlan(problems) if problems == &[portia::plan::PlanProblem::NoSteps]), "{err}");
}

#[tokio::test]
async fn a_blank_query_is_refused_before_any_llm_call() {
    // The scripted LLM has nothing to say: a call to it would fail as unscripted.
    let h = harness(config(ExecutionMode::Sequential, true), registry(vec![]), ScriptedLlm::new());
    for query in ["", "  \n\t"] {
        let err = h.runner.generate_plan(query).await.unwrap_err();
        assert!(matches!(&err, Error::EmptyQuery), "{err}");
        let err = h.runner.execute_query(query).await.unwrap_err();
        assert!(matches!(&err, Error::EmptyQuery), "{err}");
    }
}

#[tokio::test]
async fn final_summary_failure_only_leaves_the_summary_empty() {
    let llm = ScriptedLlm::new().text("the answer").error(portia::llm::LlmError::Other("summary model down".into()));
    let h = harness(config(ExecutionMode::Sequential, true), registry(vec![]), llm);
    let plan = PlanBuilder::new("q").step("think", None, "$x").build();
    let done = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    let final_output = done.outputs().final_output.as_ref().unwrap();
    assert_eq!(final_output.value, json!("the answer"));
    assert_eq!(final_output.summary, None);
}

#[tokio::test]
async fn workflows_are_listed_by_state() {
    let llm = ScriptedLlm::new().text("one").text("two");
    let h = harness(config(ExecutionMode::Sequential, false), registry(vec![]), llm);
    let plan = PlanBuilder::new("q").step("think", None, "$x").build();
    h.runner.run_plan(&plan).await.unwrap();
    h.runner.run_plan(&plan).await.unwrap();
    h.runner.create_workflow(&plan).await.unwrap();
    let complete = h.runner.list_workflows(&WorkflowQuery::in_state(WorkflowState::Complete)).await.unwrap();
    assert_eq!(complete.count, 2);
    assert!(complete.results.iter().all(|w| w.state() == WorkflowState::Complete));
    let all = h.runner.list_workflows(&WorkflowQuery::default().page_size(2).page(2)).await.unwrap();
    assert_eq!((all.count, all.total_pages, all.results.len()), (3, 2, 1));
}

#[tokio::test]
async fn tool_calls_are_recorded_with_their_outcome() {
    let storage = Arc::new(portia::storage::InMemoryStorage::new());
    let tools = registry(vec![MockTool::returning("add_tool", json!(3))]);
    let llm = Arc::new(ScriptedLlm::new().tool_call("add_tool", json!({"a": 1})));
    let runner = Runner::builder(config(ExecutionMode::Sequential, false))
        .tools(tools)
        .llm(llm)
        .storage(storage.clone())
        .build()
        .unwrap();
    let plan = PlanBuilder::new("q").step("add", Some("add_tool"), "$sum").build();
    let done = runner.create_workflow(&plan).execution_context(ExecutionContext::for_end_user("alice")).await.unwrap();
    let done = runner.execute_workflow(done).await.unwrap();
    let calls = runner.tool_calls(done.id()).await.unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].key.workflow_id, calls[0].key.step, calls[0].key.seq), (done.id(), 0, 0));
    assert_eq!(calls[0].tool_id, "add_tool");
    assert_eq!(calls[0].input, json!({"a": 1}));
    assert_eq!(calls[0].output, json!(3));
    assert_eq!(calls[0].end_user_id.as_deref(), Some("alice"));
    assert_eq!(calls[0].status, portia::storage::ToolCallStatus::Success);
}

#[tokio::test(start_paused = true)]
async fn wait_for_ready_polls_the_tool_then_resolves_action_clarifications() {
    let tool =
        Arc::new(MockTool::new("oauth_tool", MockBehavior::Action("https://example.com/login".into(), json!("mail"))));
    let tools = InMemoryToolRegistry::from_tools([tool.clone() as Arc<dyn portia::Tool>]).unwrap();
    let llm = ScriptedLlm::new().tool_call("oauth_tool", json!({})).tool_call("oauth_tool", json!({}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let plan = PlanBuilder::new("q").step("Read mail", Some("oauth_tool"), "$mail").build();
    let waiting = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);

    let policy = ReadyPolicy::default()
        .initial_interval(Duration::from_secs(2))
        .max_interval(Duration::from_secs(8))
        .timeout(Duration::from_secs(600));
    let started = tokio::time::Instant::now();
    let signer = {
        let tool = tool.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(13)).await;
            tool.set_ready(true);
        }
    };
    let (ready, ()) = tokio::join!(h.runner.wait_for_ready(waiting.id(), policy), signer);
    let ready = ready.unwrap();
    // Polls at 0, 2, 6, 14 s: the first after the user signed in (13 s) ends the wait.
    assert_eq!(started.elapsed(), Duration::from_secs(14));
    assert_eq!(ready.state(), WorkflowState::ReadyToResume);
    assert_eq!(ready.outputs().clarifications[0].response, Some(json!("complete")));
    let done = h.runner.execute_workflow(ready).await.unwrap();
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("mail"));
}

#[tokio::test(start_paused = true)]
async fn wait_for_ready_rereads_the_stored_workflow_and_times_out_with_a_typed_error() {
    let tool =
        Arc::new(MockTool::new("oauth_tool", MockBehavior::Action("https://example.com/login".into(), json!(1))));
    let tools = InMemoryToolRegistry::from_tools([tool.clone() as Arc<dyn portia::Tool>]).unwrap();
    let h =
        harness(config(ExecutionMode::Sequential, false), tools, ScriptedLlm::new().tool_call("oauth_tool", json!({})));
    let plan = PlanBuilder::new("q").step("Read mail", Some("oauth_tool"), "$mail").build();
    let waiting = h.runner.run_plan(&plan).await.unwrap();
    let policy = ReadyPolicy::default().timeout(Duration::from_secs(30));

    let err = h.runner.wait_for_ready(waiting.id(), policy).await.unwrap_err();
    assert!(matches!(err, Error::NotReady(id) if id == waiting.id()), "{err}");

    // Someone else resolves it (another process, say): the next wait sees the stored state.
    let clarification = waiting.outputs().clarifications[0].clone();
    h.runner.resolve_clarification(&clarification, "done elsewhere").await.unwrap();
    let ready = h.runner.wait_for_ready(waiting.id(), policy).await.unwrap();
    assert_eq!(ready.state(), WorkflowState::ReadyToResume);
}

#[test]
fn runner_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<Runner>();
    let h = harness(config(ExecutionMode::Sequential, false), registry(vec![]), ScriptedLlm::new());
    let clone = h.runner.clone();
    assert!(Arc::ptr_eq(clone.storage(), h.runner.storage()), "a clone shares its parts");
    assert!(Arc::ptr_eq(clone.tools(), h.runner.tools()));
}

#[tokio::test]
async fn runner_without_llm_names_the_missing_key() {
    let config = portia::Config::builder().llm_provider(portia::llm::LlmProvider::Anthropic).build().unwrap();
    let err = Runner::new(config, InMemoryToolRegistry::new()).unwrap_err();
    assert!(matches!(&err, Error::MissingApiKey { env_var, .. } if env_var == "ANTHROPIC_API_KEY"), "{err}");
}

#[tokio::test]
async fn cancelling_fails_and_saves_the_workflow_once() {
    let h = harness(config(ExecutionMode::Sequential, false), registry(vec![]), ScriptedLlm::new());
    let plan = PlanBuilder::new("q").step("think", None, "$x").build();
    let created = h.runner.create_workflow(&plan).await.unwrap();
    let cancelled = h.runner.cancel_workflow(created.id(), "the user said no").await.unwrap();
    assert_eq!(cancelled.state(), WorkflowState::Failed);
    assert_eq!(cancelled.failure().unwrap().message, "the user said no");
    assert_eq!(h.runner.get_workflow(created.id()).await.unwrap(), cancelled);
    let err = h.runner.cancel_workflow(created.id(), "again").await.unwrap_err();
    assert!(matches!(err, Error::InvalidWorkflowState { state: WorkflowState::Failed, .. }), "{err}");
}

/// A tool that signals when it starts and then waits to be released (or panics).
#[derive(Debug, Default)]
struct BlockingTool {
    started: tokio::sync::Notify,
    release: tokio::sync::Notify,
    calls: std::sync::atomic::AtomicUsize,
    panics: bool,
}

#[async_trait::async_trait]
impl portia::Tool for BlockingTool {
    fn spec(&self) -> portia::ToolSpec {
        portia::ToolSpec::new("slow_tool", "Slow Tool", "Takes its time.").args_schema(json!({"type": "object"}))
    }
    async fn run(
        &self,
        _ctx: &portia::ToolRunContext,
        _args: serde_json::Value,
    ) -> Result<portia::ToolOutput, portia::ToolError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.started.notify_one();
        assert!(!self.panics, "the slow tool broke");
        self.release.notified().await;
        Ok(portia::ToolOutput::value("slow result"))
    }
}

fn slow_harness(llm: ScriptedLlm) -> (common::Harness, Arc<BlockingTool>, portia::Plan) {
    let tool = Arc::new(BlockingTool::default());
    let tools = InMemoryToolRegistry::from_tools([tool.clone() as Arc<dyn portia::Tool>]).unwrap();
    let plan = PlanBuilder::new("q").step("wait", Some("slow_tool"), "$slow").build();
    (harness(config(ExecutionMode::Sequential, false), tools, llm), tool, plan)
}

/// Starts a run of a new workflow of `plan` and returns once its slow tool is running.
async fn start_slow_run(
    h: &common::Harness,
    tool: &BlockingTool,
    plan: &portia::Plan,
) -> (Workflow, tokio::task::JoinHandle<portia::Result<Workflow>>) {
    let workflow = h.runner.create_workflow(plan).await.unwrap();
    let run = tokio::spawn({
        let runner = h.runner.clone();
        let id = workflow.id();
        async move { runner.execute_workflow_by_id(id).await }
    });
    tool.started.notified().await;
    (workflow, run)
}

#[tokio::test]
async fn a_stale_copy_of_a_finished_workflow_is_not_run_again() {
    let (h, tool, plan) = ask_city_harness();
    let waiting = h.runner.run_plan(&plan).await.unwrap();
    let ready = h.runner.resolve_clarification(&waiting.outputs().clarifications[0], "Rome").await.unwrap();
    let done = h.runner.execute_workflow(ready.clone()).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);

    let err = h.runner.execute_workflow(ready).await.unwrap_err();
    assert!(matches!(err, Error::InvalidWorkflowState { state: WorkflowState::Complete, .. }), "{err}");
    assert_eq!(tool.calls().len(), 2, "the tool did not run a third time");
    assert_eq!(h.runner.get_workflow(done.id()).await.unwrap(), done, "the stored workflow was not overwritten");
}

#[tokio::test]
async fn a_workflow_already_running_is_not_started_twice() {
    let (h, tool, plan) = slow_harness(ScriptedLlm::new().tool_call("slow_tool", json!({})));
    let (workflow, first) = start_slow_run(&h, &tool, &plan).await;
    let err = h.runner.execute_workflow_by_id(workflow.id()).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyRunning { workflow_id, .. } if workflow_id == workflow.id()), "{err}");
    tool.release.notify_one();
    assert_eq!(first.await.unwrap().unwrap().state(), WorkflowState::Complete);
    assert_eq!(tool.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cancelling_a_running_workflow_is_not_undone_by_the_run() {
    let (h, tool, plan) = slow_harness(ScriptedLlm::new().tool_call("slow_tool", json!({})));
    let (workflow, run) = start_slow_run(&h, &tool, &plan).await;
    let cancelled = h.runner.cancel_workflow(workflow.id(), "the user stopped it").await.unwrap();
    assert_eq!(cancelled.state(), WorkflowState::Failed);
    tool.release.notify_one();

    let ended = run.await.unwrap().unwrap();
    assert_eq!(ended.state(), WorkflowState::Failed);
    assert_eq!(ended.failure().unwrap().message, "the user stopped it");
    assert!(ended.outputs().step_outputs.is_empty(), "the step that was running is not recorded");
    assert_eq!(h.runner.get_workflow(workflow.id()).await.unwrap(), ended);
}

/// A cancellation asked through another runner (another process, say) reaches the
/// run within a second, not at its next lease renewal a third of a lease later.
#[tokio::test(start_paused = true)]
async fn a_cancellation_from_another_runner_stops_the_run_within_a_second() {
    let (h, tool, plan) = slow_harness(ScriptedLlm::new().tool_call("slow_tool", json!({})));
    assert_eq!(h.runner.config().lease_ttl(), Duration::from_secs(30), "renewals come every 10 s");
    let (workflow, run) = start_slow_run(&h, &tool, &plan).await;
    let other = Runner::builder(h.runner.config().clone())
        .storage(h.storage.clone())
        .llm(Arc::new(ScriptedLlm::new()))
        .build()
        .unwrap();
    let asked = tokio::time::Instant::now();
    let still_running = other.cancel_workflow(workflow.id(), "stopped from elsewhere").await.unwrap();
    assert_eq!(still_running.state(), WorkflowState::InProgress);

    let ended = run.await.unwrap().unwrap();
    assert!(asked.elapsed() <= Duration::from_secs(1), "stopped after {:?}", asked.elapsed());
    assert_eq!(ended.state(), WorkflowState::Failed);
    assert_eq!(ended.failure().unwrap().message, "stopped from elsewhere");
}

/// An interrupt stops the run at once and leaves the workflow IN_PROGRESS with its
/// lease released; resuming it does not call again the tool whose outcome is unknown.
#[tokio::test]
async fn an_interrupted_run_is_left_resumable_with_its_lease_released() {
    let (h, tool, plan) = slow_harness(ScriptedLlm::new().tool_call("slow_tool", json!({})));
    let (workflow, run) = start_slow_run(&h, &tool, &plan).await;
    assert!(h.runner.interrupt(workflow.id()));
    let stopped = run.await.unwrap().unwrap();
    assert_eq!(stopped.state(), WorkflowState::InProgress);
    assert_eq!(h.runner.get_workflow(workflow.id()).await.unwrap(), stopped);
    assert!(!h.runner.interrupt(workflow.id()), "nothing runs it any more");

    let taken = h.storage.acquire_lease(workflow.id(), "another-runner", Duration::from_secs(60)).await.unwrap();
    assert!(!taken.reclaimed, "the lease was given up, not left to lapse");
    h.storage.release_lease(&taken.lease).await.unwrap();

    let resumed = h.runner.execute_workflow_by_id(workflow.id()).await.unwrap();
    assert_eq!(resumed.state(), WorkflowState::NeedClarification, "whether the call took effect is asked");
    assert_eq!(tool.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_panicking_tool_fails_its_step_and_the_workflow_is_saved() {
    let tool = Arc::new(BlockingTool { panics: true, ..BlockingTool::default() });
    let tools = InMemoryToolRegistry::from_tools([tool.clone() as Arc<dyn portia::Tool>]).unwrap();
    let h =
        harness(config(ExecutionMode::Sequential, false), tools, ScriptedLlm::new().tool_call("slow_tool", json!({})));
    let plan = PlanBuilder::new("q").step("wait", Some("slow_tool"), "$slow").build();
    let failed = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(failed.state(), WorkflowState::Failed);
    let failure = failed.failure().unwrap();
    assert_eq!(failure.step, Some(0));
    assert!(failure.message.contains("the step panicked: the slow tool broke"), "{}", failure.message);
    assert_eq!(h.runner.get_workflow(failed.id()).await.unwrap(), failed);
}

#[tokio::test]
async fn an_older_copy_of_a_paused_workflow_runs_the_stored_one() {
    let tools = registry(vec![
        MockTool::returning("write_tool", json!("written")),
        MockTool::new("ask_tool", MockBehavior::ClarifyInput("city".into())),
    ]);
    let llm = ScriptedLlm::new().tool_call("write_tool", json!({})).tool_call("ask_tool", json!({}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let plan =
        PlanBuilder::new("q").step("write", Some("write_tool"), "$w").step("ask", Some("ask_tool"), "$city").build();
    let created = h.runner.create_workflow(&plan).await.unwrap();
    let waiting = h.runner.execute_workflow(created.clone()).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);

    // `created` is the NOT_STARTED copy: the stored workflow, still waiting, is what runs.
    let again = h.runner.execute_workflow(created).await.unwrap();
    assert_eq!(again, waiting, "the waiting workflow comes back unchanged");
    assert_eq!(h.runner.get_workflow(waiting.id()).await.unwrap(), waiting, "nothing was overwritten");
}

#[tokio::test]
async fn answers_are_refused_while_running_and_a_cancelled_workflow_never_starts() {
    let (h, tool, plan) = slow_harness(ScriptedLlm::new().tool_call("slow_tool", json!({})));
    let (workflow, run) = start_slow_run(&h, &tool, &plan).await;
    let question = portia::Clarification::input(workflow.id(), "x", "x?");
    let err = h.runner.resolve_clarification(&question, "1").await.unwrap_err();
    assert!(matches!(err, Error::AlreadyRunning { workflow_id, .. } if workflow_id == workflow.id()), "{err}");
    tool.release.notify_one();
    assert_eq!(run.await.unwrap().unwrap().state(), WorkflowState::Complete);

    // With no run going on, a cancellation claims the workflow while it works.
    let other = h.runner.create_workflow(&plan).await.unwrap();
    let cancelled = h.runner.cancel_workflow(other.id(), "not needed").await.unwrap();
    assert_eq!(cancelled.state(), WorkflowState::Failed);
    let err = h.runner.execute_workflow(other).await.unwrap_err();
    assert!(matches!(err, Error::InvalidWorkflowState { state: WorkflowState::Failed, .. }), "{err}");
}

/// A workflow FAILED by a provider's error is taken up again once the provider is
/// back: the retry keeps the finished step's output, so its tool is not called
/// again, runs the step that failed, and completes; the failed workflow stays as it
/// was, and the retry names it.
#[tokio::test]
async fn a_failed_workflow_is_retried_from_the_step_that_failed_keeping_what_finished() {
    let weather = Arc::new(MockTool::returning("weather_tool", json!({"temp": 21})));
    let tools = InMemoryToolRegistry::from_tools([weather.clone() as Arc<dyn portia::Tool>]).unwrap();
    let outage = portia::llm::LlmError::Other("the provider is down".into());
    let h = harness(config(ExecutionMode::Sequential, false), tools, ScriptedLlm::new().error(outage).text("Warm."));
    let plan = PlanBuilder::new("Is it warm?")
        .step("Get the weather", Some("weather_tool"), "$weather")
        .args(json!({"city": "Paris"}))
        .step("Say whether it is warm", None, "$answer")
        .build();
    let failed = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!((failed.state(), failed.failure().unwrap().step), (WorkflowState::Failed, Some(1)));

    let retry = h.runner.retry_workflow(failed.id()).await.unwrap();
    assert_eq!((retry.state(), retry.retry_of()), (WorkflowState::NotStarted, Some(failed.id())));
    assert_ne!(retry.id(), failed.id());
    assert_eq!(h.runner.get_workflow(retry.id()).await.unwrap(), retry, "the retry is stored");
    let done = h.runner.execute_workflow(retry).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(done.outputs().step_outputs.get("$weather").unwrap().value, json!({"temp": 21}));
    assert_eq!(done.outputs().step_outputs.get("$answer").unwrap().value, json!("Warm."));
    assert_eq!(weather.calls().len(), 1, "the finished step is not run again");
    assert_eq!(done.usage().total.llm_calls, 1, "the retry counts its own calls only");
    assert_eq!(h.runner.get_workflow(failed.id()).await.unwrap(), failed, "the failed workflow is kept as it was");

    let again = h.runner.retry_workflow(failed.id()).await.unwrap();
    assert_eq!((again.id(), again.state()), (done.id(), WorkflowState::Complete), "retried once: the same retry");
    assert_eq!(weather.calls().len(), 1);
    let finished = h.runner.retry_workflow(done.id()).await.unwrap_err();
    assert!(matches!(finished, Error::InvalidWorkflowState { state: WorkflowState::Complete, .. }), "{finished}");
    let missing = h.runner.retry_workflow(portia::WorkflowId::new()).await.unwrap_err();
    assert!(matches!(missing, Error::WorkflowNotFound(_)), "{missing}");
}

/// A retry made to run in its own process, whose run stopped mid-step (as a run
/// does at shutdown; one that died leaves its lease to expire), is queued when a
/// retry for the workers is asked for next, so a worker takes it, where nothing
/// would have run it until a resume.
#[tokio::test]
async fn a_retry_made_to_run_here_is_queued_when_asked_again_for_the_workers() {
    let outage = portia::llm::LlmError::Other("the provider is down".into());
    let (h, tool, plan) = slow_harness(ScriptedLlm::new().error(outage).tool_call("slow_tool", json!({})));
    let failed = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(failed.state(), WorkflowState::Failed);
    let storage = Arc::clone(h.runner.storage());
    let ttl = Duration::from_secs(60);

    let made_here = h.runner.retry_workflow(failed.id()).await.unwrap();
    let run = tokio::spawn({
        let (runner, id) = (h.runner.clone(), made_here.id());
        async move { runner.execute_workflow_by_id(id).await }
    });
    tool.started.notified().await;
    assert!(h.runner.interrupt(made_here.id()));
    assert_eq!(run.await.unwrap().unwrap().state(), WorkflowState::InProgress);
    assert!(storage.claim_runnable("worker", ttl).await.unwrap().is_none(), "made to run here: not queued");

    let queued = h.runner.submit_retry(failed.id()).await.unwrap();
    assert_eq!((queued.id(), queued.state()), (made_here.id(), WorkflowState::InProgress), "the same retry");
    let claimed = storage.claim_runnable("worker", ttl).await.unwrap().expect("queued now");
    assert_eq!(claimed.workflow.id(), made_here.id());
    storage.release_lease(&claimed.lease).await.unwrap();
    assert!(!storage.queue(made_here.id()).await.unwrap(), "queued once");
}
