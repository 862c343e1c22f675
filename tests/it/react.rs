//! ReAct steps: a step listing tools runs a loop in which the model calls them until
//! it answers, each call journaled and hooked as any tool call, within a call limit;
//! a run killed in the middle resumes without repeating a finished call.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use portia::config::Budget;
use portia::llm::Role;
use portia::plan::PlanProblem;
use portia::runner::ApprovalGate;
use portia::storage::{InMemoryStorage, Journal, ManualClock, SqliteStorage, Storage};
use portia::testing::{MockBehavior, MockTool, ScriptedLlm};
use portia::tool::{Tool, ToolError, ToolOutput, ToolRunContext, ToolSpec};
use portia::workflow::FailureKind;
use portia::{Config, InMemoryToolRegistry, Plan, PlanBuilder, Runner, WorkflowId, WorkflowState};
use serde_json::{Value, json};

use crate::common;

fn config() -> Config {
    Config::builder().summarize_final_output(false).build().unwrap()
}

fn research_plan() -> Plan {
    PlanBuilder::new("How much is 3 Acme shares?")
        .react("Find Acme's share price and work out what 3 shares cost", ["search_tool", "calculator_tool"], "$cost")
        .build()
}

fn research_tools() -> (Arc<MockTool>, Arc<MockTool>, InMemoryToolRegistry) {
    let search = Arc::new(MockTool::returning("search_tool", json!({"price": 12.5})));
    let calculator = Arc::new(MockTool::returning("calculator_tool", json!(37.5)));
    let tools = [search.clone() as Arc<dyn Tool>, calculator.clone() as Arc<dyn Tool>];
    (search, calculator, InMemoryToolRegistry::from_tools(tools).unwrap())
}

fn runner(config: Config, tools: InMemoryToolRegistry, llm: ScriptedLlm) -> (Runner, Arc<ScriptedLlm>) {
    let llm = Arc::new(llm);
    let runner = Runner::builder(config).tools(tools).llm(llm.clone()).build().unwrap();
    (runner, llm)
}

#[tokio::test]
async fn a_react_step_calls_the_listed_tools_until_the_model_answers() {
    let (search, calculator, tools) = research_tools();
    let llm = ScriptedLlm::new()
        .tool_call("search_tool", json!({"q": "Acme share price"}))
        .tool_calls(vec![
            ("calculator_tool".into(), json!({"expr": "3 * 12.5"})),
            ("search_tool".into(), json!({"q": "Acme"})),
        ])
        .text("3 shares cost 37.5");
    let (runner, llm) = runner(config(), tools, llm);
    let workflow = runner.run_plan(&research_plan()).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(workflow.outputs().step_outputs.get("$cost").unwrap().value, json!("3 shares cost 37.5"));
    assert_eq!((search.calls().len(), calculator.calls().len()), (2, 1));
    let requests = llm.requests();
    assert_eq!(requests.len(), 3);
    let offered: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(offered, ["search_tool", "calculator_tool"]);
    let results: Vec<&str> =
        requests[2].messages.iter().filter(|m| m.role == Role::Tool).map(|m| m.content.as_str()).collect();
    assert_eq!(results, [r#"{"price":12.5}"#, "37.5", r#"{"price":12.5}"#], "each result is shown to the model");
}

#[tokio::test]
async fn each_react_call_is_journaled() {
    let (_, _, tools) = research_tools();
    let llm = ScriptedLlm::new()
        .tool_call("search_tool", json!({"q": "Acme"}))
        .tool_call("calculator_tool", json!({"expr": "3 * 12.5"}))
        .text("37.5");
    let storage = Arc::new(InMemoryStorage::new());
    let runner = Runner::builder(config()).tools(tools).llm(Arc::new(llm)).storage(storage.clone()).build().unwrap();
    let workflow = runner.run_plan(&research_plan()).await.unwrap();
    let journal = storage.tool_calls(workflow.id()).await.unwrap();
    let calls: Vec<(&str, u32)> = journal.iter().map(|r| (r.tool_id.as_str(), r.key.seq)).collect();
    assert_eq!(calls, [("search_tool", 0), ("calculator_tool", 1)]);
}

#[tokio::test]
async fn a_soft_error_and_a_call_to_an_unlisted_tool_are_shown_to_the_model() {
    let (search, _, tools) = research_tools();
    let llm = ScriptedLlm::new()
        .tool_call("weather_tool", json!({}))
        .tool_call("search_tool", json!({"q": "Acme"}))
        .text("12.5 a share");
    let (runner, llm) = runner(config(), tools, llm);
    let workflow = runner.run_plan(&research_plan()).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(search.calls().len(), 1);
    let second = &llm.requests()[1];
    let error = second.messages.iter().find(|m| m.role == Role::Tool).unwrap();
    assert!(
        error.content.contains("no tool weather_tool; it can call search_tool, calculator_tool"),
        "{}",
        error.content
    );
}

#[tokio::test]
async fn reaching_the_call_limit_fails_the_step_with_its_own_kind() {
    let (search, _, tools) = research_tools();
    let mut plan = research_plan();
    plan.steps[0] = plan.steps[0].clone().max_tool_calls(2);
    let llm = (0..3).fold(ScriptedLlm::new(), |llm, i| llm.tool_call("search_tool", json!({"q": i})));
    let (runner, _) = runner(config(), tools, llm);
    let workflow = runner.run_plan(&plan).await.unwrap();
    let failure = workflow.failure().unwrap();
    assert_eq!(failure.kind, FailureKind::ToolCallLimit);
    assert!(failure.message.contains("2 tool calls, its limit"), "{failure}");
    assert_eq!(search.calls().len(), 2, "the call past the limit is not made");
}

#[tokio::test]
async fn the_default_call_limit_is_25() {
    let (search, _, tools) = research_tools();
    let llm = (0..26).fold(ScriptedLlm::new(), |llm, i| llm.tool_call("search_tool", json!({"q": i})));
    let (runner, _) = runner(config(), tools, llm);
    let workflow = runner.run_plan(&research_plan()).await.unwrap();
    assert_eq!(workflow.failure().unwrap().kind, FailureKind::ToolCallLimit);
    assert_eq!(search.calls().len(), 25);
}

#[tokio::test]
async fn a_react_step_spends_from_the_workflows_llm_call_budget() {
    let (search, _, tools) = research_tools();
    let config =
        Config::builder().summarize_final_output(false).budget(Budget::default().llm_calls(2)).build().unwrap();
    let llm = (0..2).fold(ScriptedLlm::new(), |llm, i| llm.tool_call("search_tool", json!({"q": i})));
    let (runner, llm) = runner(config, tools, llm);
    let workflow = runner.run_plan(&research_plan()).await.unwrap();
    assert_eq!(workflow.failure().unwrap().kind, FailureKind::BudgetExceeded);
    assert_eq!((llm.requests().len(), search.calls().len()), (2, 2));
}

#[tokio::test]
async fn a_typed_react_step_answers_with_json_of_its_schema() {
    let (_, _, tools) = research_tools();
    let schema = json!({"type": "object", "properties": {"cost": {"type": "number"}}, "required": ["cost"]});
    let mut plan = research_plan();
    plan.steps[0] = plan.steps[0].clone().with_output_schema(schema);
    let llm = ScriptedLlm::new()
        .tool_call("search_tool", json!({"q": "Acme"}))
        .text("It costs 37.5")
        .json(json!({"cost": 37.5}));
    let (runner, llm) = runner(config(), tools, llm);
    let workflow = runner.run_plan(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(workflow.outputs().step_outputs.get("$cost").unwrap().value, json!({"cost": 37.5}));
    assert!(llm.requests()[2].output_schema.is_some(), "a text answer is asked for again as JSON");
}

#[tokio::test]
async fn an_approval_inside_a_react_loop_holds_one_call_and_resuming_repeats_none() {
    let (search, _, _) = research_tools();
    let send = Arc::new(
        MockTool::echo("send_tool").with_spec(ToolSpec::new("send_tool", "Send", "Sends.").side_effects(true)),
    );
    let tools =
        || InMemoryToolRegistry::from_tools([search.clone() as Arc<dyn Tool>, send.clone() as Arc<dyn Tool>]).unwrap();
    let plan = PlanBuilder::new("Tell Ann the price")
        .react("Find the price and send it to Ann", ["search_tool", "send_tool"], "$sent")
        .build();
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let build = |llm: Arc<ScriptedLlm>| {
        Runner::builder(config())
            .tools(tools())
            .llm(llm)
            .storage(storage.clone())
            .hook(ApprovalGate::for_tools(["send_tool"]))
            .build()
            .unwrap()
    };
    let first = Arc::new(
        ScriptedLlm::new().tool_call("search_tool", json!({"q": "price"})).tool_call("send_tool", json!({"to": "Ann"})),
    );
    let waiting = build(first).run_plan(&plan).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    assert!(send.calls().is_empty(), "nothing is sent before the approval");

    let second = Arc::new(ScriptedLlm::new().text("Sent."));
    let runner = build(second.clone());
    let question = waiting.outstanding_clarifications().next().unwrap().clone();
    runner.resolve_clarification(&question, true).await.unwrap();
    let done = runner.execute_workflow(waiting).await.unwrap();

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!((search.calls().len(), send.calls().len()), (1, 1), "the search is replayed, the send made once");
    let requests = second.requests();
    assert_eq!(requests.len(), 1, "the model is asked only for its next move");
    assert_eq!(requests[0].messages.iter().filter(|m| m.role == Role::Tool).count(), 2);
}

#[tokio::test]
async fn after_a_tool_asks_a_person_the_model_sees_the_calls_already_made() {
    let (search, _, _) = research_tools();
    let ask = Arc::new(MockTool::new("recipient_tool", MockBehavior::ClarifyInput("recipient".into())));
    let tools = InMemoryToolRegistry::from_tools([search.clone() as Arc<dyn Tool>, ask.clone() as Arc<dyn Tool>]);
    let plan = PlanBuilder::new("q").react("Find the price and whom to tell", ["search_tool", "recipient_tool"], "$a");
    let llm = ScriptedLlm::new()
        .tool_call("search_tool", json!({"q": "price"}))
        .tool_call("recipient_tool", json!({}))
        .tool_call("recipient_tool", json!({}))
        .text("Tell Ann: 12.5");
    let (runner, llm) = runner(config(), tools.unwrap(), llm);
    let waiting = runner.run_plan(&plan.build()).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    let question = waiting.outstanding_clarifications().next().unwrap().clone();
    runner.resolve_clarification(&question, "Ann").await.unwrap();
    let done = runner.execute_workflow(waiting).await.unwrap();

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!((search.calls().len(), ask.calls().len()), (1, 2), "the search is not made again");
    let resumed = &llm.requests()[2];
    let shown: Vec<&str> = resumed.messages.iter().flat_map(|m| &m.tool_calls).map(|c| c.name.as_str()).collect();
    assert_eq!(shown, ["search_tool", "recipient_tool"], "the earlier attempt's calls, as they went");
}

#[test]
fn validation_checks_a_react_steps_tools_and_limit() {
    let (_, _, tools) = research_tools();
    let mut plan = PlanBuilder::new("q")
        .react("Look", ["search_tool", "maps_tool"], "$a")
        .react("Count", ["calculator_tool"], "$b")
        .max_tool_calls(0)
        .step("Think", None, "$c")
        .max_tool_calls(3)
        .build();
    plan.steps.push(portia::plan::Step::react("Both", ["search_tool"], "$d"));
    plan.steps[3].tool_id = Some("search_tool".into());
    let problems = plan.problems(&tools);
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(matches!(&problems[0], PlanProblem::UnknownTool { step: 0, tool_id } if tool_id == "maps_tool"));
    let reasons: Vec<String> = problems[1..].iter().map(ToString::to_string).collect();
    assert!(reasons[0].contains("step 1") && reasons[0].contains("at least 1"), "{}", reasons[0]);
    assert!(reasons[1].contains("step 2") && reasons[1].contains("lists no tools"), "{}", reasons[1]);
    assert!(reasons[2].contains("step 3") && reasons[2].contains("sets tool_id and tools"), "{}", reasons[2]);
}

#[test]
fn the_react_fields_are_optional_in_json() {
    let plan = research_plan();
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["steps"][0]["tools"], json!(["search_tool", "calculator_tool"]));
    assert!(json["steps"][0].get("max_tool_calls").is_none());
    let back: Plan = serde_json::from_value(json).unwrap();
    assert_eq!(back, plan);
    assert_eq!(plan.plan_context.tool_ids, ["search_tool", "calculator_tool"]);
}

// ----- durability: the child is killed mid-loop, the parent resumes -----

const CHILD: &str = "react::react_child";
const MARKER: &str = "REACT-POINT";

/// A tool whose every call is an effect appended (and synced) to a file, so the
/// killed child's calls count too.
#[derive(Debug)]
struct EffectTool {
    id: &'static str,
    effects: PathBuf,
}

#[async_trait::async_trait]
impl Tool for EffectTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new(self.id, self.id, "Does something that must happen once.").side_effects(true)
    }

    async fn run(&self, _ctx: &ToolRunContext, args: Value) -> Result<ToolOutput, ToolError> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.effects).unwrap();
        writeln!(file, "{} {args}", self.id).unwrap();
        file.sync_all().unwrap();
        Ok(ToolOutput::value(json!({"done": self.id})))
    }
}

fn effect_tools(effects: &Path) -> InMemoryToolRegistry {
    let tool = |id| EffectTool { id, effects: effects.to_owned() };
    InMemoryToolRegistry::new().with(tool("reserve_tool")).unwrap().with(tool("charge_tool")).unwrap()
}

fn effect_plan() -> Plan {
    PlanBuilder::new("Book it")
        .react("Reserve the room, then charge the card", ["reserve_tool", "charge_tool"], "$booked")
        .build()
}

/// The child: the model reserves and charges, then hangs deciding what is next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the ReAct durability test"]
async fn react_child() {
    let Some(db) = std::env::var_os("REACT_DB") else { return };
    let storage = Arc::new(SqliteStorage::open(PathBuf::from(db)).unwrap());
    let llm = ScriptedLlm::new()
        .tool_call("reserve_tool", json!({"room": 4}))
        .tool_call("charge_tool", json!({"amount": 90}))
        .respond_with(|_| common::print_marker_and_wait(MARKER));
    let tools = effect_tools(Path::new(&std::env::var("REACT_EFFECTS").unwrap()));
    let runner = Runner::builder(config()).tools(tools).llm(Arc::new(llm)).storage(storage).build().unwrap();
    let id: WorkflowId = std::env::var("REACT_WORKFLOW").unwrap().parse().unwrap();
    let _ = runner.execute_workflow_by_id(id).await;
}

#[tokio::test]
async fn a_killed_react_loop_resumes_without_repeating_a_finished_call() {
    let dir = tempfile::tempdir().unwrap();
    let (db, effects) = (dir.path().join("portia.db"), dir.path().join("effects.txt"));
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&db).unwrap());
    let setup =
        Runner::builder(config()).tools(effect_tools(&effects)).llm(Arc::new(ScriptedLlm::new())).storage(storage);
    let id = setup.build().unwrap().create_workflow(&effect_plan()).await.unwrap().id();

    common::kill_child_test_at_marker(
        CHILD,
        &[
            ("REACT_DB", db.as_os_str()),
            ("REACT_EFFECTS", effects.as_os_str()),
            ("REACT_WORKFLOW", id.to_string().as_ref()),
        ],
        MARKER,
    );

    let clock = ManualClock::new(chrono::Utc::now() + chrono::Duration::hours(1));
    let storage = Arc::new(SqliteStorage::open_with_clock(&db, Arc::new(clock)).unwrap());
    let llm = Arc::new(ScriptedLlm::new().text("Booked room 4 for 90."));
    let runner =
        Runner::builder(config()).tools(effect_tools(&effects)).llm(llm.clone()).storage(storage).build().unwrap();
    let workflow = runner.execute_workflow_by_id(id).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let lines = std::fs::read_to_string(&effects).unwrap();
    assert_eq!(lines.lines().collect::<Vec<_>>(), [r#"reserve_tool {"room":4}"#, r#"charge_tool {"amount":90}"#]);
    let requests = llm.requests();
    assert_eq!(requests.len(), 1, "the model is asked only for its next move");
    let calls: Vec<&str> = requests[0].messages.iter().flat_map(|m| &m.tool_calls).map(|c| c.name.as_str()).collect();
    assert_eq!(calls, ["reserve_tool", "charge_tool"], "the journaled calls are shown as they went");
}
