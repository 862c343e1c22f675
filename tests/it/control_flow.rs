//! Control flow in plans: conditions (expressions and words), skipped steps and
//! what depends on them, and exit steps; skips survive a kill and a resume.

use std::path::PathBuf;
use std::sync::Arc;

use common::{config, harness};
use portia::config::ExecutionMode;
use portia::plan::AskUser;
use portia::plan::PlanProblem;
use portia::runner::EventKind;
use portia::storage::{ManualClock, SqliteStorage, Storage};
use portia::testing::{MockTool, ScriptedLlm};
use portia::workflow::StepOutcome;
use portia::{Config, Exit, FailureKind, InMemoryToolRegistry, Plan, PlanBuilder, Runner, WorkflowId, WorkflowState};
use serde_json::json;

use crate::common;

fn ticket_tools(urgent: bool) -> InMemoryToolRegistry {
    let ticket = MockTool::returning("ticket_tool", json!({"urgent": urgent, "count": 3}));
    InMemoryToolRegistry::new().with(ticket).unwrap().with(MockTool::echo("send_tool")).unwrap()
}

/// Read the ticket; draft a reply when urgent; send the draft; note the ticket anyway.
fn triage_plan() -> Plan {
    PlanBuilder::new("Triage the ticket")
        .step("Read the ticket", Some("ticket_tool"), "$ticket")
        .args(json!({}))
        .step("Draft a reply", None, "$draft")
        .condition("$ticket.urgent == true and $ticket.count >= 2")
        .step("Send the draft", Some("send_tool"), "$sent")
        .args(json!({"text": "$draft"}))
        .step("Note the ticket", Some("send_tool"), "$noted")
        .args(json!({"text": "seen $ticket.count"}))
        .build()
}

#[tokio::test]
async fn a_false_expression_skips_its_step_and_the_steps_reading_only_it() {
    let h = harness(config(ExecutionMode::Sequential, false), ticket_tools(false), ScriptedLlm::new());
    let workflow = h.runner.create_workflow(&triage_plan()).await.unwrap();
    let mut events = h.runner.subscribe_to(workflow.id());

    let workflow = h.runner.execute_workflow(workflow).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let outputs = &workflow.outputs().step_outputs;
    let draft = outputs.get("$draft").unwrap();
    assert_eq!(draft.skipped.as_deref(), Some("its condition is false: $ticket.urgent == true and $ticket.count >= 2"));
    let sent = outputs.get("$sent").unwrap();
    assert!(sent.skipped.as_deref().unwrap().contains("every output it reads was skipped ($draft)"), "{sent:?}");
    assert_eq!(outputs.get("$noted").unwrap().value, json!({"text": "seen 3"}), "an independent step still runs");
    assert!(h.llm.requests().is_empty(), "an expression needs no LLM call");
    let mut skipped = Vec::new();
    while let Some(Ok(event)) = events.next().await {
        if let EventKind::StepFinished { step, outcome: StepOutcome::Skipped(_) } = event.kind {
            skipped.push(step);
        }
    }
    assert_eq!(skipped, [1, 2], "skips are announced as steps finishing skipped");
}

#[tokio::test]
async fn a_true_expression_runs_its_step() {
    let llm = ScriptedLlm::new().text("We are on it.");
    let h = harness(config(ExecutionMode::Parallel, false), ticket_tools(true), llm);

    let workflow = h.runner.run_plan(&triage_plan()).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert_eq!(workflow.outputs().step_outputs.get("$sent").unwrap().value, json!({"text": "We are on it."}));
}

#[tokio::test]
async fn a_condition_in_words_is_decided_by_one_llm_call() {
    let llm = ScriptedLlm::new().json(json!({"holds": false, "reason": "the customer is calm"}));
    let h = harness(config(ExecutionMode::Sequential, false), ticket_tools(true), llm);
    let plan = PlanBuilder::new("Triage")
        .step("Read the ticket", Some("ticket_tool"), "$ticket")
        .args(json!({}))
        .step("Apologise", None, "$apology")
        .input("$ticket", "The ticket")
        .condition("the customer in $ticket is angry")
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete);
    let apology = workflow.outputs().step_outputs.get("$apology").unwrap();
    assert!(apology.skipped.as_deref().unwrap().ends_with("the customer is calm"), "{apology:?}");
    let requests = h.llm.requests();
    assert_eq!(requests.len(), 1);
    assert!(common::last_user_text(&requests[0]).starts_with("Condition: the customer in $ticket is angry"));
    assert!(
        workflow.outputs().final_output.as_ref().unwrap().skipped.is_some(),
        "the final output says it was skipped"
    );
}

#[tokio::test]
async fn an_exit_step_completes_the_workflow_early_with_its_message() {
    let h = harness(config(ExecutionMode::Sequential, true), ticket_tools(false), ScriptedLlm::new());
    let plan = PlanBuilder::new("Triage")
        .step("Read the ticket", Some("ticket_tool"), "$ticket")
        .args(json!({}))
        .exit("Stop when nothing is urgent", Exit::Complete("nothing urgent among $ticket.count".into()), "$done")
        .condition("not $ticket.urgent")
        .step("Page someone", Some("send_tool"), "$paged")
        .args(json!({"text": "page"}))
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete);
    let final_output = workflow.outputs().final_output.clone().unwrap();
    assert_eq!(final_output.value, json!("nothing urgent among 3"));
    assert!(!workflow.outputs().step_outputs.contains("$paged"), "no step runs after the exit");
    assert!(h.llm.requests().is_empty(), "the exit's message is its summary");
}

#[tokio::test]
async fn an_exit_step_can_fail_the_workflow_with_its_error() {
    let h = harness(config(ExecutionMode::Sequential, false), ticket_tools(true), ScriptedLlm::new());
    let plan = PlanBuilder::new("Triage")
        .step("Read the ticket", Some("ticket_tool"), "$ticket")
        .args(json!({}))
        .exit("Refuse urgent tickets", Exit::Failed("urgent tickets go to a person".into()), "$refused")
        .condition("$ticket.urgent")
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    let failure = workflow.failure().unwrap();
    assert_eq!((workflow.state(), failure.kind, failure.step), (WorkflowState::Failed, FailureKind::Exited, Some(1)));
    assert_eq!(failure.message, "urgent tickets go to a person");
}

#[tokio::test]
async fn the_planner_can_end_a_workflow_failed_with_a_fail_step() {
    let planned = json!({"steps": [
        {"task": "Read the ticket", "tool_id": "ticket_tool", "output": "$ticket", "args": {}},
        {"task": "urgent tickets go to a person", "tool_id": "fail", "output": "$refused",
         "condition": "$ticket.urgent"}
    ]});
    let h = harness(config(ExecutionMode::Sequential, false), ticket_tools(true), ScriptedLlm::new().json(planned));

    let workflow = h.runner.execute_query("Triage the ticket; refuse urgent ones").await.unwrap();

    let plan = h.runner.get_plan(workflow.plan_id()).await.unwrap();
    assert_eq!(plan.steps[1].exit, Some(Exit::Failed("urgent tickets go to a person".into())));
    let failure = workflow.failure().unwrap();
    assert_eq!((workflow.state(), failure.kind, failure.step), (WorkflowState::Failed, FailureKind::Exited, Some(1)));
    assert_eq!(failure.message, "urgent tickets go to a person");
}

#[test]
fn a_condition_naming_an_unknown_output_is_a_plan_problem() {
    let plan = PlanBuilder::new("q")
        .step("a", None, "$a")
        .step("b", None, "$b")
        .condition("$missing > 2")
        .step("c", None, "$c")
        .condition("when $a mentions $USD")
        .build();
    let problems = plan.problems(&InMemoryToolRegistry::new());
    assert_eq!(problems, [PlanProblem::UnknownConditionReference { step: 1, reference: "$missing".into() }]);
    assert_eq!(plan.dependencies(2), ["$a"], "a condition's references are dependencies");
}

#[test]
fn the_new_fields_are_optional_and_round_trip_in_json() {
    let json = json!({"plan_context": {"query": "q", "tool_ids": []}, "steps": [
        {"task": "a", "output": "$a", "output_schema": {"type": "object"}},
        {"task": "stop", "output": "$stop", "condition": "$a.done", "exit": {"complete": "done"}}
    ], "output_schema": {"type": "string"}});
    let plan: Plan = serde_json::from_value(json).unwrap();
    assert_eq!(plan.steps[1].exit, Some(Exit::Complete("done".into())));
    assert_eq!(plan.steps[1].condition.as_deref(), Some("$a.done"));
    let back = serde_json::to_value(&plan).unwrap();
    assert_eq!(back["steps"][1]["exit"], json!({"complete": "done"}));
    assert!(back["steps"][0].get("condition").is_none(), "absent fields stay out of the JSON");
}

// ----- durability: a child process is killed, the parent resumes -----

const CHILD: &str = "control_flow::control_child";
const MARKER: &str = "CONTROL-POINT";

fn words_plan() -> Plan {
    PlanBuilder::new("Triage")
        .step("Apologise", None, "$apology")
        .condition("the customer is angry")
        .step("Write a note", None, "$note")
        .build()
}

fn sequential() -> Config {
    Config::builder().execution(ExecutionMode::Sequential).summarize_final_output(false).build().unwrap()
}

/// The child: decides the condition (false), then hangs in the next step's LLM call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the control-flow durability tests"]
async fn control_child() {
    let Some(db) = std::env::var_os("CONTROL_DB") else { return };
    let storage = Arc::new(SqliteStorage::open(PathBuf::from(db)).unwrap());
    let llm = ScriptedLlm::new()
        .json(json!({"holds": false, "reason": "calm words"}))
        .respond_with(|_| common::print_marker_and_wait(MARKER));
    let runner = Runner::builder(sequential()).llm(Arc::new(llm)).storage(storage).build().unwrap();
    let id: WorkflowId = std::env::var("CONTROL_WORKFLOW").unwrap().parse().unwrap();
    let _ = runner.execute_workflow_by_id(id).await;
}

#[tokio::test]
async fn a_skipped_step_stays_skipped_after_a_kill_and_is_not_decided_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("portia.db");
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&db).unwrap());
    let setup = Runner::builder(sequential()).llm(Arc::new(ScriptedLlm::new())).storage(storage).build().unwrap();
    let id = setup.create_workflow(&words_plan()).await.unwrap().id();

    kill_child_at_marker(CHILD, &db, id);

    let clock = ManualClock::new(chrono::Utc::now() + chrono::Duration::hours(1));
    let storage = Arc::new(SqliteStorage::open_with_clock(&db, Arc::new(clock)).unwrap());
    let llm = Arc::new(ScriptedLlm::new().text("Noted."));
    let runner = Runner::builder(sequential()).llm(llm.clone()).storage(storage).build().unwrap();
    let workflow = runner.execute_workflow_by_id(id).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete);
    let apology = workflow.outputs().step_outputs.get("$apology").unwrap();
    assert!(apology.skipped.as_deref().unwrap().ends_with("calm words"), "{apology:?}");
    assert_eq!(llm.requests().len(), 1, "only the note: the condition is not decided again");
}

// ----- for_each -----

fn tickets_tool() -> MockTool {
    MockTool::returning(
        "tickets_tool",
        json!([{"id": "t1", "urgent": true}, {"id": "t2", "urgent": false}, {"id": "t3", "urgent": true}]),
    )
}

#[tokio::test]
async fn for_each_runs_a_step_per_item_in_parallel_and_collects_outputs_in_item_order() {
    let tools = InMemoryToolRegistry::new().with(tickets_tool()).unwrap().with(MockTool::echo("send_tool")).unwrap();
    let h = harness(config(ExecutionMode::Parallel, false), tools, ScriptedLlm::new());
    let plan = PlanBuilder::new("Acknowledge every ticket")
        .step("List the tickets", Some("tickets_tool"), "$tickets")
        .args(json!({}))
        .step("Acknowledge the ticket", Some("send_tool"), "$acks")
        .for_each("$tickets")
        .args(json!({"id": "$item.id", "n": "$index"}))
        .build();
    assert!(plan.problems(&h.runner.tools().clone()).is_empty(), "{:?}", plan.problems(&h.runner.tools().clone()));
    let workflow = h.runner.create_workflow(&plan).await.unwrap();
    let mut events = h.runner.subscribe_to(workflow.id());

    let workflow = h.runner.execute_workflow(workflow).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(
        workflow.outputs().step_outputs.get("$acks").unwrap().value,
        json!([{"id": "t1", "n": 0}, {"id": "t2", "n": 1}, {"id": "t3", "n": 2}])
    );
    assert!(workflow.outputs().loop_items.is_empty(), "the items make way for the step's output");
    let mut items = Vec::new();
    while let Some(Ok(event)) = events.next().await {
        if let EventKind::LoopItemFinished { step: 1, item, .. } = event.kind {
            items.push(item);
        }
    }
    items.sort_unstable();
    assert_eq!(items, [0, 1, 2], "each item is announced");
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
struct Draft {
    reply: String,
}

#[tokio::test]
async fn a_loops_condition_and_schema_apply_to_each_item() {
    let tools = InMemoryToolRegistry::new().with(tickets_tool()).unwrap();
    let llm = ScriptedLlm::new().json(json!({"reply": "On it (t1)."})).json(json!({"reply": "On it (t3)."}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let plan = PlanBuilder::new("Draft replies to urgent tickets")
        .step("List the tickets", Some("tickets_tool"), "$tickets")
        .args(json!({}))
        .step("Draft a reply to the ticket", None, "$drafts")
        .for_each("$tickets")
        .condition("$item.urgent")
        .step_output::<Draft>()
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let drafts = &workflow.outputs().step_outputs.get("$drafts").unwrap().value;
    assert_eq!(drafts, &json!([{"reply": "On it (t1)."}, null, {"reply": "On it (t3)."}]));
    let first = common::last_user_text(&h.llm.requests()[0]);
    assert!(first.contains("- $item (item 0 (from 0) of $tickets): {\"id\":\"t1\""), "{first}");
}

#[tokio::test]
async fn for_each_reads_a_text_output_holding_a_json_list_as_that_list() {
    let tools = InMemoryToolRegistry::new().with(MockTool::returning("ids_tool", json!("[1, 2, 3]"))).unwrap();
    let tools = tools.with(MockTool::echo("send_tool")).unwrap();
    let plan = PlanBuilder::new("Send each")
        .step("List the ids", Some("ids_tool"), "$ids")
        .args(json!({}))
        .step("Send one", Some("send_tool"), "$sent")
        .args(json!({"id": "$item"}))
        .for_each("$ids")
        .build();
    let h = harness(config(ExecutionMode::Parallel, false), tools, ScriptedLlm::new());
    let workflow = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let sent = &workflow.outputs().step_outputs.get("$sent").unwrap().value;
    assert_eq!(**sent, json!([{"id": 1}, {"id": 2}, {"id": 3}]));
}

#[tokio::test]
async fn for_each_over_something_that_is_not_a_list_fails_the_step() {
    let tools = InMemoryToolRegistry::new().with(MockTool::returning("one_tool", json!({"id": 1}))).unwrap();
    let h = harness(config(ExecutionMode::Sequential, false), tools, ScriptedLlm::new());
    let plan = PlanBuilder::new("q")
        .step("Get one", Some("one_tool"), "$one")
        .args(json!({}))
        .step("Loop", None, "$each")
        .for_each("$one")
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    let failure = workflow.failure().unwrap();
    assert_eq!((failure.kind, failure.step), (FailureKind::InvalidStep, Some(1)));
    assert!(failure.message.contains("which is an object, not a list"), "{}", failure.message);
}

#[test]
fn for_each_must_name_an_earlier_list() {
    let plan = PlanBuilder::new("q")
        .step("Classify", None, "$ticket")
        .step_output::<Draft>()
        .step("Loop over nothing", None, "$a")
        .for_each("$missing")
        .step("Loop over a string", None, "$b")
        .for_each("$ticket.reply")
        .step("Loop over words", None, "$c")
        .for_each("tickets")
        .step("Use the item", None, "$d")
        .for_each("$a")
        .input("$item", "the item")
        .build();
    let problems = plan.problems(&InMemoryToolRegistry::new());
    let steps: Vec<usize> = problems
        .iter()
        .map(|p| match p {
            PlanProblem::InvalidForEach { step, .. } => *step,
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(steps, [1, 2, 3], "{problems:?}");
    assert!(problems[1].to_string().contains("it is a string, not a list"), "{}", problems[1]);
}

fn loop_plan() -> Plan {
    PlanBuilder::new("Answer each")
        .step("List", Some("tickets_tool"), "$tickets")
        .args(json!({}))
        .step("Answer the ticket", None, "$answers")
        .for_each("$tickets")
        .build()
}

/// The child for the loop: answers items 0 and 1, then hangs in item 2's call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the control-flow durability tests"]
async fn loop_child() {
    let Some(db) = std::env::var_os("CONTROL_DB") else { return };
    let storage = Arc::new(SqliteStorage::open(PathBuf::from(db)).unwrap());
    let llm = ScriptedLlm::new().text("A").text("B").respond_with(|_| common::print_marker_and_wait(MARKER));
    let tools = InMemoryToolRegistry::new().with(tickets_tool()).unwrap();
    let runner = Runner::builder(sequential()).tools(tools).llm(Arc::new(llm)).storage(storage).build().unwrap();
    let id: WorkflowId = std::env::var("CONTROL_WORKFLOW").unwrap().parse().unwrap();
    let _ = runner.execute_workflow_by_id(id).await;
}

#[tokio::test]
async fn a_killed_loop_resumes_at_the_first_unfinished_item_and_never_repeats_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("portia.db");
    let tools = || InMemoryToolRegistry::new().with(tickets_tool()).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&db).unwrap());
    let setup = Runner::builder(sequential()).tools(tools()).llm(Arc::new(ScriptedLlm::new())).storage(storage);
    let id = setup.build().unwrap().create_workflow(&loop_plan()).await.unwrap().id();

    kill_child_at_marker("control_flow::loop_child", &db, id);

    let clock = ManualClock::new(chrono::Utc::now() + chrono::Duration::hours(1));
    let storage = Arc::new(SqliteStorage::open_with_clock(&db, Arc::new(clock)).unwrap());
    let llm = Arc::new(ScriptedLlm::new().text("C"));
    let runner = Runner::builder(sequential()).tools(tools()).llm(llm.clone()).storage(storage).build().unwrap();
    let workflow = runner.execute_workflow_by_id(id).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(workflow.outputs().step_outputs.get("$answers").unwrap().value, json!(["A", "B", "C"]));
    let requests = llm.requests();
    assert_eq!(requests.len(), 1, "only item 2 runs again");
    assert!(common::last_user_text(&requests[0]).contains("\"t3\""));
}

/// Runs `child` (a test of this binary) on the workflow until it prints the marker, then kills it.
fn kill_child_at_marker(child: &str, db: &std::path::Path, id: WorkflowId) {
    common::kill_child_test_at_marker(
        child,
        &[("CONTROL_DB", db.as_os_str()), ("CONTROL_WORKFLOW", id.to_string().as_ref())],
        MARKER,
    );
}

#[tokio::test]
async fn a_steps_own_model_receives_its_llm_calls() {
    let llm = ScriptedLlm::new().text("quick").text("deep");
    let h = harness(config(ExecutionMode::Sequential, false), InMemoryToolRegistry::new(), llm);
    let plan = PlanBuilder::new("q")
        .step("Answer quickly", None, "$quick")
        .model("openai/gpt-4o-mini")
        .step("Answer deeply", None, "$deep")
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete);
    let models: Vec<Option<String>> = h.llm.requests().into_iter().map(|r| r.model).collect();
    assert_eq!(models, [Some("openai/gpt-4o-mini".to_owned()), None]);
    assert_eq!(serde_json::to_value(&plan).unwrap()["steps"][0]["model"], "openai/gpt-4o-mini");
}

#[tokio::test]
async fn a_user_step_asks_a_person_and_the_answer_is_its_output() {
    let tools = InMemoryToolRegistry::new().with(MockTool::echo("send_tool")).unwrap();
    let h = harness(config(ExecutionMode::Sequential, false), tools, ScriptedLlm::new());
    let plan = PlanBuilder::new("Handle the return")
        .step("Note the order", Some("send_tool"), "$order")
        .args(json!({"id": 7781}))
        .ask_user(
            "Refund or replace order $order.id?",
            AskUser::Choice { options: vec![json!("refund"), json!("replace")] },
            "$choice",
        )
        .step("Act on it", Some("send_tool"), "$done")
        .args(json!({"action": "$choice"}))
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::NeedClarification);
    let question = workflow.outstanding_clarifications().next().unwrap().clone();
    assert_eq!(question.user_guidance, "Refund or replace order 7781?", "references in the question are resolved");
    assert!(h.runner.resolve_clarification(&question, "keep").await.is_err(), "an answer outside the options");
    h.runner.resolve_clarification(&question, "refund").await.unwrap();
    let workflow = h.runner.execute_workflow(workflow).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert_eq!(workflow.outputs().step_outputs.get("$choice").unwrap().value, json!("refund"));
    assert_eq!(workflow.outputs().step_outputs.get("$done").unwrap().value, json!({"action": "refund"}));
    assert!(h.llm.requests().is_empty(), "asking a person takes no LLM call");
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Refund {
    order: u64,
    cents: i64,
}

#[tokio::test]
async fn a_function_step_calls_a_registered_rust_function_journaled_and_without_an_llm_call() {
    let llm = Arc::new(ScriptedLlm::new());
    let tools =
        InMemoryToolRegistry::new().with(MockTool::returning("order_tool", json!({"id": 7781, "paid": 1250}))).unwrap();
    let runner = Runner::builder(config(ExecutionMode::Sequential, false))
        .tools(tools)
        .llm(llm.clone())
        .function("refund", "Refunds an order", |refund: Refund| async move {
            Ok::<_, String>(json!({"refunded": refund.cents, "order": refund.order}))
        })
        .build()
        .unwrap();
    let plan = PlanBuilder::new("Refund the order")
        .step("Look the order up", Some("order_tool"), "$order")
        .args(json!({}))
        .function("Refund it", "refund", json!({"order": "$order.id", "cents": "$order.paid"}), "$refund")
        .build();

    let workflow = runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(workflow.outputs().step_outputs.get("$refund").unwrap().value, json!({"refunded": 1250, "order": 7781}));
    assert!(llm.requests().is_empty());
    let journaled = runner.tool_calls(workflow.id()).await.unwrap();
    assert!(journaled.iter().any(|c| c.tool_id == "refund" && c.input == json!({"order": 7781, "cents": 1250})));

    let unknown = PlanBuilder::new("q").function("Nope", "missing_fn", json!({}), "$x").build();
    let err = runner.run_plan(&unknown).await.unwrap_err();
    assert!(
        matches!(&err, portia::Error::InvalidPlan(p) if p == &[PlanProblem::UnknownFunction { step: 0, function: "missing_fn".into() }]),
        "{err}"
    );
}

/// A function step makes no LLM call, so a model cannot make up arguments that
/// fit: arguments that do not fit, or a soft error, fail the step by name.
#[tokio::test]
async fn a_function_step_whose_arguments_do_not_fit_fails_without_asking_a_model() {
    let llm = Arc::new(ScriptedLlm::new());
    let runner = Runner::builder(config(ExecutionMode::Sequential, false))
        .llm(llm.clone())
        .function("refund", "Refunds an order", |refund: Refund| async move {
            if refund.cents > 10_000 {
                return Err("too much to refund at once".to_owned());
            }
            Ok(json!({"refunded": refund.cents}))
        })
        .build()
        .unwrap();

    let unfit = PlanBuilder::new("Refund").function("Refund it", "refund", json!({"order": "five"}), "$r").build();
    let workflow = runner.run_plan(&unfit).await.unwrap();
    let failure = workflow.failure().expect("the step fails");
    assert_eq!(failure.kind, FailureKind::InvalidStep, "{failure:?}");
    assert!(failure.message.contains(r#"{"order":"five"}"#) && failure.message.contains("refund"), "{failure:?}");

    let refused =
        PlanBuilder::new("Refund").function("Refund it", "refund", json!({"order": 7, "cents": 50_000}), "$r").build();
    let workflow = runner.run_plan(&refused).await.unwrap();
    let failure = workflow.failure().expect("the step fails");
    assert_eq!(failure.kind, FailureKind::ToolError, "{failure:?}");
    assert!(failure.message.contains("too much to refund at once"), "{failure:?}");

    assert!(llm.requests().is_empty(), "no model was asked: {:?}", llm.requests());
}

/// A tool's output is one value, not copies: the journal's record, the
/// `ToolCallFinished` and `StepFinished` events, the step's output and the final
/// output all hold the same one.
#[tokio::test]
async fn a_tool_output_is_held_once_by_the_journal_the_events_and_the_outputs() {
    let tools =
        InMemoryToolRegistry::new().with(MockTool::returning("search_tool", json!({"results": ["a", "b"]}))).unwrap();
    let runner = Runner::builder(config(ExecutionMode::Sequential, false))
        .tools(tools)
        .llm(Arc::new(ScriptedLlm::new()))
        .build()
        .unwrap();
    let plan = PlanBuilder::new("Search").step("Search", Some("search_tool"), "$found").args(json!({})).build();
    let workflow = runner.create_workflow(&plan).await.unwrap();
    let (mut events, run) = runner.execute_workflow_stream(workflow);
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        seen.push(event.unwrap().kind);
    }
    let workflow = run.await.unwrap().unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());

    let output = &workflow.outputs().step_outputs.get("$found").unwrap().value;
    assert_eq!(*output, json!({"results": ["a", "b"]}));
    let record = runner.tool_calls(workflow.id()).await.unwrap().remove(0);
    let announced = seen.iter().find_map(|kind| match kind {
        EventKind::ToolCallFinished { output, .. } => Some(output),
        _ => None,
    });
    let finished = seen.iter().find_map(|kind| match kind {
        EventKind::StepFinished { outcome: StepOutcome::Output(output), .. } => Some(&output.value),
        _ => None,
    });
    let last = &workflow.outputs().final_output.as_ref().unwrap().value;
    for (holder, value) in [
        ("journal", &record.output),
        ("tool event", announced.unwrap()),
        ("step event", finished.unwrap()),
        ("final", last),
    ] {
        assert!(Arc::ptr_eq(value.as_arc(), output.as_arc()), "the {holder} holds a copy");
    }
}

#[tokio::test]
async fn references_in_a_tasks_text_read_as_their_values() {
    let tools = InMemoryToolRegistry::new()
        .with(MockTool::returning("ticket_tool", json!({"body": "the printer is on fire", "id": 7})))
        .unwrap();
    let plan = PlanBuilder::new("Summarise the ticket")
        .step("Fetch", Some("ticket_tool"), "$ticket")
        .args(json!({}))
        .step("Summarise ticket $ticket.id: $ticket.body (costs $5)", None, "$summary")
        .build();
    let llm = Arc::new(ScriptedLlm::new().text("Fire."));
    let runner = Runner::builder(sequential()).tools(tools).llm(llm.clone()).build().unwrap();
    let workflow = runner.run_plan(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let prompt = common::last_user_text(&llm.requests()[0]);
    assert!(prompt.contains("Task: Summarise ticket 7: the printer is on fire (costs $5)"), "{prompt}");
}

/// A step with no inputs is ready at once; in a parallel run it started beside the
/// exit before it, and its side effects outlived the exit.
#[tokio::test]
async fn no_step_after_an_exit_starts_before_the_exit_is_decided_in_a_parallel_run() {
    let h = harness(config(ExecutionMode::Parallel, false), ticket_tools(false), ScriptedLlm::new());
    let plan = PlanBuilder::new("Triage")
        .step("Read the ticket", Some("ticket_tool"), "$ticket")
        .args(json!({}))
        .exit("Stop when nothing is urgent", Exit::Failed("nothing to do".into()), "$done")
        .condition("not $ticket.urgent")
        .step("Page someone", Some("send_tool"), "$paged")
        .args(json!({"text": "page"}))
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    let failure = workflow.failure().unwrap();
    assert_eq!((workflow.state(), failure.kind), (WorkflowState::Failed, FailureKind::Exited));
    assert!(!workflow.outputs().step_outputs.contains("$paged"), "the page was never sent");
}

#[tokio::test]
async fn a_step_waits_for_the_outputs_its_task_text_names_in_a_parallel_run() {
    let tools = InMemoryToolRegistry::new()
        .with(MockTool::returning("ticket_tool", json!({"body": "the printer is on fire"})))
        .unwrap();
    let plan = PlanBuilder::new("Summarise the ticket")
        .step("Fetch", Some("ticket_tool"), "$ticket")
        .args(json!({}))
        .step("Summarise $ticket.body", None, "$summary")
        .build();
    assert_eq!(plan.dependencies(1), ["$ticket"]);
    let h = harness(config(ExecutionMode::Parallel, false), tools, ScriptedLlm::new().text("Fire."));

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let prompt = common::last_user_text(&h.llm.requests()[0]);
    assert!(prompt.contains("Task: Summarise the printer is on fire"), "{prompt}");
}

#[test]
fn an_exit_cannot_loop_and_a_task_cannot_name_a_later_output() {
    let plan = PlanBuilder::new("q")
        .plan_input("$items", "the items")
        .exit("stop at 2", Exit::Failed("hit $item".into()), "$stop")
        .for_each("$items")
        .step("Then read $later and write $then", None, "$then")
        .exit("stop", Exit::Complete("done: $last".into()), "$stopped")
        .step("later", None, "$later")
        .step("last", None, "$last")
        .build();
    let problems = plan.problems(&InMemoryToolRegistry::new());
    assert!(
        matches!(&problems[0], PlanProblem::InvalidForEach { step: 0, reason, .. } if reason.contains("looping block")),
        "{problems:?}"
    );
    assert_eq!(problems[1], PlanProblem::ForwardReference { step: 1, reference: "$later".into() });
    assert_eq!(problems[2], PlanProblem::ForwardReference { step: 2, reference: "$last".into() });
    assert_eq!(problems.len(), 3, "a step's own output in its task is prose: {problems:?}");
}

#[tokio::test]
async fn a_condition_may_test_an_output_that_was_skipped() {
    let h = harness(config(ExecutionMode::Parallel, false), ticket_tools(false), ScriptedLlm::new());
    let plan = PlanBuilder::new("Triage")
        .step("Read the ticket", Some("ticket_tool"), "$ticket")
        .args(json!({}))
        .step("Draft a reply", None, "$draft")
        .condition("$ticket.urgent")
        .exit("Say so when there is no draft", Exit::Complete("no reply needed".into()), "$none")
        .condition("$draft == null")
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(workflow.outputs().final_output.clone().unwrap().value, json!("no reply needed"));
    assert!(h.llm.requests().is_empty());
}

#[tokio::test]
async fn a_condition_comparing_what_was_skipped_skips_its_step_rather_than_failing() {
    let h = harness(config(ExecutionMode::Sequential, false), ticket_tools(false), ScriptedLlm::new());
    // The ticket is not urgent, so `$score` is skipped; paging tests `condition`.
    let paging = |condition: &str| {
        PlanBuilder::new("Triage")
            .step("Read the ticket", Some("ticket_tool"), "$ticket")
            .args(json!({}))
            .step("Score it", None, "$score")
            .condition("$ticket.urgent")
            .step("Page when the score is high", Some("send_tool"), "$paged")
            .args(json!({"text": "page"}))
            .condition(condition)
            .build()
    };

    let workflow = h.runner.run_plan(&paging("$score > 3")).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let paged = workflow.outputs().step_outputs.get("$paged").unwrap();
    assert_eq!(paged.skipped.as_deref(), Some("its condition tests only what was skipped ($score)"));

    // With an output that was not skipped beside it, the type error is the author's.
    let failed = h.runner.run_plan(&paging("$score == null and $ticket.count > \"x\"")).await.unwrap();
    assert_eq!(failed.failure().map(|f| f.kind), Some(FailureKind::InvalidStep), "{:?}", failed.failure());
}

#[tokio::test]
async fn a_condition_of_literals_is_decided_without_the_model_and_a_malformed_one_is_a_plan_problem() {
    let h = harness(config(ExecutionMode::Sequential, false), ticket_tools(false), ScriptedLlm::new());
    let plan = PlanBuilder::new("q").step("never", None, "$never").condition("false").build();
    let workflow = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert!(h.llm.requests().is_empty(), "`false` needs no model");

    let deep = format!("{}$never == 1", "not ".repeat(50_000));
    for (condition, expected) in [("$never >", "missing a value"), ("", "empty"), (deep.as_str(), "256 allowed")] {
        let plan = PlanBuilder::new("q").step("a", None, "$never").step("b", None, "$b").condition(condition).build();
        let problems = plan.problems(&InMemoryToolRegistry::new());
        assert!(
            matches!(&problems[..], [PlanProblem::InvalidCondition { step: 1, reason }] if reason.contains(expected)),
            "{condition:.20}: {problems:?}"
        );
    }
}

#[test]
fn misnamed_inputs_invalid_schemas_and_unanswerable_choices_are_plan_problems() {
    let mut plan = PlanBuilder::new("q")
        .plan_input("ticket", "no $")
        .plan_input("$y", "once")
        .plan_input("$y", "twice")
        .step("a", None, "$a")
        .step_output_schema(json!({"type": "frobnicate"}))
        .ask_user("Which one?", AskUser::Choice { options: vec![] }, "$pick")
        .ask_user("Which?", AskUser::Choice { options: vec![json!("x"), json!("x")] }, "$pick2")
        .build();
    plan.output_schema = Some(json!({"properties": 7}));
    let problems: Vec<String> = plan.problems(&InMemoryToolRegistry::new()).iter().map(ToString::to_string).collect();
    let expected = [
        "the plan's input \"ticket\" is not a name",
        "the plan's input \"$y\" is declared twice",
        "the plan's output_schema is not a valid JSON Schema",
        "step 0's output_schema is not a valid JSON Schema",
        "step 1 asks the user something unanswerable: a choice of no options",
        "step 2 asks the user something unanswerable: the option \"x\" is listed twice",
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for (problem, expected) in problems.iter().zip(expected) {
        assert!(problem.starts_with(expected), "{problem} / {expected}");
    }
}

/// An exit's message was the final output whatever the plan's output schema said,
/// so a typed run could be COMPLETE with an output that is not its type.
#[tokio::test]
async fn an_exits_message_is_held_to_the_plans_and_its_steps_output_schema() {
    let h = harness(config(ExecutionMode::Sequential, false), ticket_tools(false), ScriptedLlm::new());
    let exiting = |message: &str| {
        PlanBuilder::new("Count")
            .step("Read the ticket", Some("ticket_tool"), "$ticket")
            .args(json!({}))
            .exit("Stop early", Exit::Complete(message.into()), "$stop")
            .condition("not $ticket.urgent")
            .step("Count properly", None, "$total")
            .build()
    };
    let schema = json!({"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]});

    let mut mismatched = exiting("done early");
    mismatched.output_schema = Some(schema.clone());
    let failed = h.runner.run_plan(&mismatched).await.unwrap();
    let failure = failed.failure().unwrap();
    assert_eq!(
        (failed.state(), failure.kind, failure.step),
        (WorkflowState::Failed, FailureKind::SchemaMismatch, Some(1))
    );
    assert!(failure.message.contains("the exit's message does not fit the plan's output schema"), "{failure}");

    let mut fitting = exiting("{\"total\": $ticket.count}");
    fitting.output_schema = Some(schema);
    let done = h.runner.run_plan(&fitting).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(*done.outputs().final_output.clone().unwrap().value, json!({"total": 3}), "the JSON it holds");

    let mut failing = exiting("x");
    failing.steps[1].exit = Some(Exit::Failed("nothing to count".into()));
    failing.steps[1].output_schema = Some(json!({"type": "number"}));
    let failed = h.runner.run_plan(&failing).await.unwrap();
    let failure = failed.failure().unwrap();
    assert_eq!(
        (failure.kind, failure.message.as_str()),
        (FailureKind::Exited, "nothing to count"),
        "no output to check"
    );

    let mut step_typed = exiting("x");
    step_typed.steps[1].output_schema = Some(json!({"type": "number"}));
    let failed = h.runner.run_plan(&step_typed).await.unwrap();
    let failure = failed.failure().unwrap();
    assert_eq!((failure.kind, failure.step), (FailureKind::SchemaMismatch, Some(1)), "{failure}");
    assert!(failure.message.contains("the step's output schema"), "{failure}");
}
