//! Sub-plans: a step runs another stored plan as a child workflow, linked to its
//! parent; the child's final output is the step's output, its questions surface on
//! the parent, a resumed parent never starts a second child, and validation
//! refuses unknown plans, missing inputs and cycles.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use portia::plan::{AskUser, PlanProblem};
use portia::runner::EventKind;
use portia::storage::{InMemoryStorage, ManualClock, SqliteStorage, Storage, WorkflowQuery};
use portia::testing::ScriptedLlm;
use portia::workflow::{FailureKind, ParentLink};
use portia::{Config, Error, Plan, PlanBuilder, Runner, WorkflowId, WorkflowState};
use serde_json::json;

use crate::common;

fn config() -> Config {
    Config::builder().summarize_final_output(false).build().unwrap()
}

fn runner(storage: Arc<dyn Storage>, llm: ScriptedLlm) -> (Runner, Arc<ScriptedLlm>) {
    let llm = Arc::new(llm);
    (Runner::builder(config()).llm(llm.clone()).storage(storage).build().unwrap(), llm)
}

/// A plan that classifies the ticket it is given.
fn classify_plan() -> Plan {
    PlanBuilder::new("Classify a ticket")
        .plan_input("$ticket", "the ticket")
        .step("Classify the ticket", None, "$class")
        .input("$ticket", "the ticket")
        .build()
}

fn parent_of(child: &Plan) -> Plan {
    PlanBuilder::new("Triage")
        .step("Read the ticket", None, "$text")
        .sub_plan("Classify it", child.id, json!({"ticket": "$text"}), "$class")
        .build()
}

#[tokio::test]
async fn a_sub_plan_step_runs_the_stored_plan_as_a_linked_child_and_takes_its_final_output() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let child_plan = classify_plan();
    storage.save_plan(&child_plan).await.unwrap();
    let (runner, llm) = runner(storage.clone(), ScriptedLlm::new().text("My card was charged twice").text("billing"));
    let parent = runner.run_plan(&parent_of(&child_plan)).await.unwrap();

    assert_eq!(parent.state(), WorkflowState::Complete, "{:?}", parent.failure());
    assert_eq!(parent.outputs().step_outputs.get("$class").unwrap().value, json!("billing"));
    let child_id = ParentLink::new(parent.id(), 1, None).child_id();
    let child = storage.get_workflow(child_id).await.unwrap();
    assert_eq!(child.plan_id(), child_plan.id);
    assert_eq!(child.parent(), Some(&ParentLink::new(parent.id(), 1, None)));
    assert_eq!(child.outputs().step_outputs.get("$ticket").unwrap().value, json!("My card was charged twice"));
    assert!(common::last_user_text(&llm.requests()[1]).contains("My card was charged twice"), "the input reached it");
    let events = storage.events(parent.id(), 0).await.unwrap();
    let started = events.iter().find_map(|e| match &e.event.kind {
        EventKind::SubPlanStarted { step, child, plan_id, .. } => Some((*step, *child, *plan_id)),
        _ => None,
    });
    assert_eq!(started, Some((1, child_id, child_plan.id)));
}

#[tokio::test]
async fn a_childs_question_surfaces_on_the_parent_and_its_answer_reaches_the_child() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let child_plan = PlanBuilder::new("Confirm")
        .plan_input("$ticket", "the ticket")
        .ask_user("Send the reply to $ticket?", AskUser::Confirm, "$ok")
        .build();
    storage.save_plan(&child_plan).await.unwrap();
    let (runner, _) = runner(storage.clone(), ScriptedLlm::new().text("ticket 7"));
    let waiting = runner.run_plan(&parent_of(&child_plan)).await.unwrap();

    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    let question = waiting.outstanding_clarifications().next().unwrap().clone();
    assert_eq!(question.workflow_id, waiting.id(), "asked on the parent");
    assert_eq!(question.step, Some(1));
    assert!(question.user_guidance.contains("ticket 7"), "{}", question.user_guidance);

    runner.resolve_clarification(&question, true).await.unwrap();
    let done = runner.execute_workflow(waiting).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(done.outputs().step_outputs.get("$class").unwrap().value, json!(true));
}

#[tokio::test]
async fn a_failed_child_fails_the_step_with_its_kind() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let child_plan = PlanBuilder::new("Give up")
        .plan_input("$ticket", "the ticket")
        .exit("Stop", portia::Exit::Failed("nothing to do".into()), "$stop")
        .build();
    storage.save_plan(&child_plan).await.unwrap();
    let (runner, _) = runner(storage, ScriptedLlm::new().text("ticket"));
    let failed = runner.run_plan(&parent_of(&child_plan)).await.unwrap();
    let failure = failed.failure().unwrap();
    assert_eq!((failure.kind, failure.step), (FailureKind::Exited, Some(1)));
    assert!(failure.message.contains("nothing to do"), "{failure}");
}

#[tokio::test]
async fn validation_refuses_an_unknown_plan_a_missing_input_and_a_cycle() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let (runner, _) = runner(storage.clone(), ScriptedLlm::new());
    let unknown = PlanBuilder::new("q").sub_plan("Run it", portia::PlanId::new(), json!({}), "$a").build();
    let Err(Error::InvalidPlan(problems)) = runner.create_workflow(&unknown).await else { panic!("accepted") };
    assert!(matches!(problems[..], [PlanProblem::UnknownPlan { step: 0, .. }]), "{problems:?}");

    let child = classify_plan();
    storage.save_plan(&child).await.unwrap();
    let no_input = PlanBuilder::new("q").sub_plan("Run it", child.id, json!({}), "$a").build();
    let Err(Error::InvalidPlan(problems)) = runner.create_workflow(&no_input).await else { panic!("accepted") };
    assert!(problems[0].to_string().contains("needs the input $ticket"), "{problems:?}");
    // A misspelt input would leave the real one to its default, unseen.
    let misspelt = PlanBuilder::new("q").sub_plan("Run it", child.id, json!({"ticket": "t", "tikcet": "t"}), "$a");
    let Err(Error::InvalidPlan(problems)) = runner.create_workflow(&misspelt.build()).await else { panic!("accepted") };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].to_string().contains("has no input tikcet; it takes $ticket"), "{problems:?}");

    // a runs b, b runs a.
    let mut a = PlanBuilder::new("a").step("x", None, "$x").build();
    let b = PlanBuilder::new("b").sub_plan("Run a", a.id, json!({}), "$y").build();
    a.steps.push(portia::plan::Step::sub_plan("Run b", b.id, json!({}), "$z"));
    storage.save_plan(&b).await.unwrap();
    let Err(Error::InvalidPlan(problems)) = runner.create_workflow(&a).await else { panic!("accepted") };
    let expected = vec![a.id.to_string(), b.id.to_string(), a.id.to_string()];
    assert!(
        matches!(&problems[..], [PlanProblem::SubPlanCycle { step: 1, cycle }] if *cycle == expected),
        "{problems:?}"
    );
}

#[test]
fn the_sub_plan_fields_are_optional_in_json() {
    let child = classify_plan();
    let plan = parent_of(&child);
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["steps"][1]["plan"], json!(child.id.to_string()));
    assert!(json.get("inputs").is_none());
    assert_eq!(serde_json::to_value(&child).unwrap()["inputs"][0]["name"], json!("$ticket"));
    assert_eq!(serde_json::from_value::<Plan>(json).unwrap(), plan);
}

// ----- durability: the parent's process is killed while its child runs -----

const MARKER: &str = "SUB-PLAN-POINT";

fn two_step_child() -> Plan {
    PlanBuilder::new("Classify, then word it")
        .plan_input("$ticket", "the ticket")
        .step("Classify the ticket", None, "$class")
        .input("$ticket", "the ticket")
        .step("Word the class", None, "$label")
        .input("$class", "the class")
        .build()
}

/// The child process: reads the ticket, classifies it in the child workflow, then
/// hangs in the child's second step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the sub-plan durability test"]
async fn sub_plan_child() {
    let Some(db) = std::env::var_os("SUB_PLAN_DB") else { return };
    let storage = Arc::new(SqliteStorage::open(PathBuf::from(db)).unwrap());
    let llm =
        ScriptedLlm::new().text("ticket 9").text("billing").respond_with(|_| common::print_marker_and_wait(MARKER));
    let (runner, _) = runner(storage, llm);
    let id: WorkflowId = std::env::var("SUB_PLAN_WORKFLOW").unwrap().parse().unwrap();
    let _ = runner.execute_workflow_by_id(id).await;
}

#[tokio::test]
async fn a_parent_killed_while_its_child_runs_resumes_the_same_child() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("portia.db");
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&db).unwrap());
    let child_plan = two_step_child();
    storage.save_plan(&child_plan).await.unwrap();
    let id = runner(storage, ScriptedLlm::new()).0.create_workflow(&parent_of(&child_plan)).await.unwrap().id();

    common::kill_child_test_at_marker(
        "sub_plans::sub_plan_child",
        &[("SUB_PLAN_DB", db.as_os_str()), ("SUB_PLAN_WORKFLOW", id.to_string().as_ref())],
        MARKER,
    );

    let clock = ManualClock::new(chrono::Utc::now() + chrono::Duration::hours(1));
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open_with_clock(&db, Arc::new(clock)).unwrap());
    let (runner, llm) = runner(storage.clone(), ScriptedLlm::new().text("Billing"));
    let parent = runner.execute_workflow_by_id(id).await.unwrap();

    assert_eq!(parent.state(), WorkflowState::Complete, "{:?}", parent.failure());
    assert_eq!(parent.outputs().step_outputs.get("$class").unwrap().value, json!("Billing"));
    assert_eq!(llm.requests().len(), 1, "only the child's unfinished step asks the model");
    let all = storage.list_workflows(&WorkflowQuery::default()).await.unwrap();
    assert_eq!(all.count, 2, "the parent and one child");
}

// ----- cancelling a parent cancels its children -----

/// A child plan whose one step is a function that says it started and never ends.
fn hanging_child() -> Plan {
    PlanBuilder::new("Wait forever")
        .plan_input("$ticket", "the ticket")
        .function("Wait", "wait_forever", json!({}), "$never")
        .build()
}

/// A runner whose `wait_forever` function notifies `started`, then waits forever.
fn hanging_runner(storage: Arc<dyn Storage>, started: Arc<tokio::sync::Notify>) -> Runner {
    Runner::builder(config())
        .llm(Arc::new(ScriptedLlm::new().text("ticket 3")))
        .storage(storage)
        .function("wait_forever", "Waits forever", move |_: serde_json::Value| {
            let started = started.clone();
            async move {
                started.notify_one();
                std::future::pending::<Result<serde_json::Value, String>>().await
            }
        })
        .build()
        .unwrap()
}

fn assert_cancelled(workflow: &portia::Workflow, reason: &str) {
    assert_eq!(workflow.state(), WorkflowState::Failed, "{}", workflow.id());
    let failure = workflow.failure().unwrap();
    assert_eq!((failure.kind, failure.message.as_str()), (FailureKind::Cancelled, reason), "{}", workflow.id());
}

#[tokio::test]
async fn cancelling_a_parent_waiting_on_its_childs_question_cancels_both() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let child_plan = PlanBuilder::new("Confirm")
        .plan_input("$ticket", "the ticket")
        .ask_user("Send the reply to $ticket?", AskUser::Confirm, "$ok")
        .build();
    storage.save_plan(&child_plan).await.unwrap();
    let (runner, _) = runner(storage.clone(), ScriptedLlm::new().text("ticket 7"));
    let waiting = runner.run_plan(&parent_of(&child_plan)).await.unwrap();
    let child_id = ParentLink::new(waiting.id(), 1, None).child_id();
    assert_eq!(storage.get_workflow(child_id).await.unwrap().state(), WorkflowState::NeedClarification);

    let parent = runner.cancel_workflow(waiting.id(), "not needed").await.unwrap();
    assert_cancelled(&parent, "not needed");
    assert_cancelled(&storage.get_workflow(child_id).await.unwrap(), "not needed");
}

#[tokio::test]
async fn cancelling_a_parent_while_its_child_runs_stops_both() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let child_plan = hanging_child();
    storage.save_plan(&child_plan).await.unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let runner = hanging_runner(storage.clone(), started.clone());
    let parent = runner.create_workflow(&parent_of(&child_plan)).await.unwrap();
    let run = tokio::spawn({
        let (runner, id) = (runner.clone(), parent.id());
        async move { runner.execute_workflow_by_id(id).await }
    });
    started.notified().await;

    let cancelled = runner.cancel_workflow(parent.id(), "the user stopped it").await.unwrap();
    assert_cancelled(&cancelled, "the user stopped it");
    let child = storage.get_workflow(ParentLink::new(parent.id(), 1, None).child_id()).await.unwrap();
    assert_cancelled(&child, "the user stopped it");
    assert_eq!(run.await.unwrap().unwrap(), cancelled, "the parent's run ended with it");
}

#[tokio::test]
async fn a_cancel_reaches_the_children_of_children() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let grandchild_plan = hanging_child();
    let child_plan = PlanBuilder::new("Pass it on")
        .plan_input("$ticket", "the ticket")
        .sub_plan("Wait for it", grandchild_plan.id, json!({"ticket": "$ticket"}), "$waited")
        .build();
    storage.save_plan(&grandchild_plan).await.unwrap();
    storage.save_plan(&child_plan).await.unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let runner = hanging_runner(storage.clone(), started.clone());
    let parent = runner.create_workflow(&parent_of(&child_plan)).await.unwrap();
    let run = tokio::spawn({
        let (runner, id) = (runner.clone(), parent.id());
        async move { runner.execute_workflow_by_id(id).await }
    });
    started.notified().await;

    runner.cancel_workflow(parent.id(), "stop").await.unwrap();
    let child = ParentLink::new(parent.id(), 1, None).child_id();
    let grandchild = ParentLink::new(child, 0, None).child_id();
    for id in [parent.id(), child, grandchild] {
        assert_cancelled(&storage.get_workflow(id).await.unwrap(), "stop");
    }
    run.await.unwrap().unwrap();
}

/// The child process: runs the parent, whose child hangs in its function step,
/// until a cancel from the test process stops both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the sub-plan cancellation test"]
async fn sub_plan_cancel_child() {
    let Some(db) = std::env::var_os("SUB_PLAN_DB") else { return };
    let storage = Arc::new(SqliteStorage::open(PathBuf::from(db)).unwrap());
    let started = Arc::new(tokio::sync::Notify::new());
    let runner = hanging_runner(storage, started.clone());
    let id: WorkflowId = std::env::var("SUB_PLAN_WORKFLOW").unwrap().parse().unwrap();
    let run = tokio::spawn(async move { runner.execute_workflow_by_id(id).await });
    started.notified().await;
    println!("{MARKER}");
    let ended = run.await.unwrap().unwrap();
    println!("ENDED {}", ended.state());
}

#[tokio::test]
async fn a_cancel_from_another_process_stops_the_parent_and_its_running_child() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("portia.db");
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&db).unwrap());
    let child_plan = hanging_child();
    storage.save_plan(&child_plan).await.unwrap();
    let (runner, _) = runner(storage.clone(), ScriptedLlm::new());
    let id = runner.create_workflow(&parent_of(&child_plan)).await.unwrap().id();

    let process = Command::new(std::env::current_exe().unwrap())
        .args([
            "sub_plans::sub_plan_cancel_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env("SUB_PLAN_DB", &db)
        .env("SUB_PLAN_WORKFLOW", id.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut process = common::ChildGuard(process);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(process.stdout.take().unwrap()));
    assert!(lines.any(|l| l.unwrap().starts_with(MARKER)), "the child process ended before its child ran");

    let seen = runner.cancel_workflow(id, "stopped from elsewhere").await.unwrap();
    assert_eq!(seen.state(), WorkflowState::InProgress, "the run in the other process stops on its own");
    let ended = lines.find_map(|l| l.unwrap().strip_prefix("ENDED ").map(str::to_owned));
    assert_eq!(ended.as_deref(), Some("FAILED"), "the parent's run ended");
    assert!(process.wait().unwrap().success());
    assert_cancelled(&storage.get_workflow(id).await.unwrap(), "stopped from elsewhere");
    let child = ParentLink::new(id, 1, None).child_id();
    assert_cancelled(&storage.get_workflow(child).await.unwrap(), "stopped from elsewhere");
}

// ----- an interrupted parent leaves its child to be resumed with it -----

/// Answers "ticket 9", then hangs on its second call (the child's step) until the
/// run is stopped, then answers "billing".
#[derive(Debug, Default)]
struct HangsOnSecondCall {
    calls: std::sync::atomic::AtomicUsize,
    second_started: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl portia::llm::LlmClient for HangsOnSecondCall {
    async fn chat(&self, _: portia::llm::LlmRequest) -> Result<portia::llm::LlmResponse, portia::llm::LlmError> {
        match self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Ok(portia::llm::LlmResponse::text("ticket 9")),
            1 => {
                self.second_started.notify_one();
                std::future::pending().await
            }
            _ => Ok(portia::llm::LlmResponse::text("billing")),
        }
    }
}

#[tokio::test]
async fn an_interrupted_parent_leaves_its_child_resumable_and_resuming_the_parent_resumes_it() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let child_plan = classify_plan();
    storage.save_plan(&child_plan).await.unwrap();
    let llm = Arc::new(HangsOnSecondCall::default());
    let runner = Runner::builder(config()).llm_as_is(llm.clone()).storage(storage.clone()).build().unwrap();
    let parent = runner.create_workflow(&parent_of(&child_plan)).await.unwrap();
    let run = tokio::spawn({
        let (runner, id) = (runner.clone(), parent.id());
        async move { runner.execute_workflow_by_id(id).await }
    });
    llm.second_started.notified().await;

    assert!(runner.interrupt(parent.id()));
    assert_eq!(run.await.unwrap().unwrap().state(), WorkflowState::InProgress);
    let child_id = ParentLink::new(parent.id(), 1, None).child_id();
    // The child's run stops with its parent's, in a task of its own: wait for it to end.
    while runner.interrupt(child_id) {
        tokio::task::yield_now().await;
    }
    assert_eq!(storage.get_workflow(child_id).await.unwrap().state(), WorkflowState::InProgress, "left to resume");

    let resumed = runner.execute_workflow_by_id(parent.id()).await.unwrap();
    assert_eq!(resumed.state(), WorkflowState::Complete, "{:?}", resumed.failure());
    assert_eq!(resumed.outputs().step_outputs.get("$class").unwrap().value, json!("billing"));
    assert_eq!(storage.get_workflow(child_id).await.unwrap().state(), WorkflowState::Complete);
    assert_eq!(llm.calls.load(std::sync::atomic::Ordering::SeqCst), 3, "the parent's finished step is not asked again");
    assert_eq!(storage.list_workflows(&WorkflowQuery::default()).await.unwrap().count, 2, "the same child");
}

/// A parent FAILED because its child did (the provider went down in the child's
/// second step) is retried: the retry's sub-plan step takes the FAILED child up
/// again, so neither the parent's first step nor the child's runs again, and only
/// the step that failed calls the model.
#[tokio::test]
async fn retrying_a_parent_takes_its_failed_child_up_again_keeping_what_the_child_finished() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let child_plan = PlanBuilder::new("Summarise, then classify")
        .plan_input("$ticket", "the ticket")
        .step("Summarise the ticket", None, "$summary")
        .input("$ticket", "the ticket")
        .step("Classify the summary", None, "$class")
        .input("$summary", "the summary")
        .build();
    storage.save_plan(&child_plan).await.unwrap();
    let outage = portia::llm::LlmError::Other("the provider is down".into());
    let script = ScriptedLlm::new().text("ticket 7").text("charged twice").error(outage).text("billing");
    let (runner, llm) = runner(storage.clone(), script);
    let failed = runner.run_plan(&parent_of(&child_plan)).await.unwrap();
    assert_eq!((failed.state(), failed.failure().unwrap().step), (WorkflowState::Failed, Some(1)));
    let failed_child = ParentLink::new(failed.id(), 1, None).child_id();

    let retry = runner.retry_workflow(failed.id()).await.unwrap();
    let done = runner.execute_workflow(retry).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(done.outputs().step_outputs.get("$class").unwrap().value, json!("billing"));
    assert_eq!(llm.requests().len(), 4, "one call more than the failed run made: the step that failed");
    let child = storage.get_workflow(ParentLink::new(done.id(), 1, None).child_id()).await.unwrap();
    assert_eq!((child.retry_of(), child.parent()), (Some(failed_child), Some(&ParentLink::new(done.id(), 1, None))));
    assert_eq!(child.outputs().step_outputs.get("$summary").unwrap().value, json!("charged twice"));
    assert_eq!(storage.get_workflow(failed_child).await.unwrap().state(), WorkflowState::Failed);
}

/// Deleting a parent deletes the child workflow its sub-plan step started: left
/// behind, the child would be taken up by a workflow stored later under the same
/// id (a retry deleted and made again).
#[tokio::test]
async fn deleting_a_parent_deletes_its_child_workflows() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let child_plan = classify_plan();
    storage.save_plan(&child_plan).await.unwrap();
    let (runner, _) = runner(storage.clone(), ScriptedLlm::new().text("My card was charged twice").text("billing"));
    let parent = runner.run_plan(&parent_of(&child_plan)).await.unwrap();
    let child = ParentLink::new(parent.id(), 1, None).child_id();
    assert!(storage.get_workflow(child).await.is_ok(), "the child ran");

    runner.delete_workflow(parent.id()).await.unwrap();
    for id in [parent.id(), child] {
        let gone = storage.get_workflow(id).await.unwrap_err();
        assert!(matches!(gone, Error::WorkflowNotFound(_)), "{gone}");
    }
}
