//! Control flow in plans: conditions (expressions and words), skipped steps and
//! what depends on them, and exit steps; skips survive a kill and a resume.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{config, harness};
use portia::config::ExecutionMode;
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
    let llm = ScriptedLlm::new().json(json!({"holds": false, "reason": "calm words"})).respond_with(|_| {
        println!("{MARKER}");
        loop {
            std::thread::park();
        }
    });
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

    let child = Command::new(std::env::current_exe().unwrap())
        .args([CHILD, "--exact", "--ignored", "--nocapture", "--test-threads=1", "--quiet"])
        .env("CONTROL_DB", &db)
        .env("CONTROL_WORKFLOW", id.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = common::ChildGuard(child);
    let stdout = child.stdout.take().unwrap();
    let reached = std::io::BufRead::lines(std::io::BufReader::new(stdout)).any(|l| l.unwrap().starts_with(MARKER));
    assert!(reached, "the child ended before its second step");
    child.kill().unwrap();
    child.wait().unwrap();

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
