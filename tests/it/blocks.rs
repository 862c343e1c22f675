//! Blocks: a step whose own steps run as an inline sub-plan, once or per item of a
//! `for_each`, reading earlier outputs and `$item` with no hand-written arguments;
//! validation names a block's steps by path; hooks see sub-plan and block steps; a
//! killed loop over a block resumes at its first unfinished item.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use portia::agent::StepContext;
use portia::plan::{AskUser, PlanProblem, Step};
use portia::runner::{HookError, Hooks, StepDecision};
use portia::storage::{
    InMemoryStorage, ManualClock, PlanStore, Retention, SqliteStorage, Storage, WorkflowQuery, WorkflowStore,
};
use portia::testing::{MockTool, ScriptedLlm};
use portia::workflow::{FailureKind, ParentLink, StepOutcome};
use portia::{Config, InMemoryToolRegistry, Plan, PlanBuilder, Runner, WorkflowId, WorkflowState};
use serde_json::json;

use crate::common;

fn sequential() -> Config {
    Config::builder()
        .execution(portia::config::ExecutionMode::Sequential)
        .summarize_final_output(false)
        .build()
        .unwrap()
}

fn tickets_tool() -> MockTool {
    MockTool::returning(
        "tickets_tool",
        json!([{"id": "t1", "urgent": true}, {"id": "t2", "urgent": false}, {"id": "t3", "urgent": true}]),
    )
}

fn tools(note: Arc<MockTool>) -> InMemoryToolRegistry {
    InMemoryToolRegistry::from_tools([Arc::new(tickets_tool()) as Arc<dyn portia::Tool>, note]).unwrap()
}

/// For each ticket: note it (a tool call), then draft a reply when it is urgent.
fn triage_plan() -> Plan {
    PlanBuilder::new("Triage the tickets")
        .step("List the tickets", Some("tickets_tool"), "$tickets")
        .args(json!({}))
        .step("Pick a tone", None, "$tone")
        .block("Triage one ticket", "$drafts", |b| {
            b.step("Note $item.id", Some("note_tool"), "$noted")
                .args(json!({"id": "$item.id", "index": "$index"}))
                .step("Draft a reply to $item.id in a $tone tone", None, "$draft")
                .condition("$item.urgent == true")
        })
        .for_each("$tickets")
        .build()
}

#[tokio::test]
async fn a_block_runs_once_per_item_as_a_child_and_lists_its_last_outputs_in_item_order() {
    let note = Arc::new(MockTool::echo("note_tool"));
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let llm = Arc::new(ScriptedLlm::new().text("calm").text("reply 1").text("reply 3"));
    let runner = Runner::builder(sequential())
        .tools(tools(note.clone()))
        .llm(llm.clone())
        .storage(storage.clone())
        .build()
        .unwrap();
    let plan = triage_plan();

    let workflow = runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let drafts = &workflow.outputs().step_outputs.get("$drafts").unwrap().value;
    assert_eq!(drafts, &json!(["reply 1", null, "reply 3"]), "the skipped draft of t2 is null");
    let noted: Vec<_> = note.calls().into_iter().map(|c| c.args).collect();
    assert_eq!(
        noted,
        [json!({"id": "t1", "index": 0}), json!({"id": "t2", "index": 1}), json!({"id": "t3", "index": 2})]
    );
    let asked = common::last_user_text(&llm.requests()[1]);
    assert!(asked.contains("Draft a reply to t1 in a calm tone"), "enclosing outputs reach the block: {asked}");

    let block = plan.block_plan(2).unwrap();
    let inputs: Vec<&str> = block.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(inputs, ["$item", "$index", "$tone"], "what the block reads from outside, found by itself");
    assert_eq!(storage.get_plan(block.id).await.unwrap(), block, "stored once, under an id derived from the plan");
    assert_eq!(plan.block_plan(2).unwrap().id, block.id);
    let second = ParentLink::new(workflow.id(), 2, Some(1)).child_id();
    let child = storage.get_workflow(second).await.unwrap();
    assert_eq!((child.plan_id(), child.parent()), (block.id, Some(&ParentLink::new(workflow.id(), 2, Some(1)))));
    assert_eq!(child.outputs().step_outputs.get("$item").unwrap().value, json!({"id": "t2", "urgent": false}));
    let all = storage.list_workflows(&WorkflowQuery::default()).await.unwrap();
    assert_eq!(all.count, 4, "the parent and a child per item");
    let events = storage.events(workflow.id(), 0).await.unwrap();
    let started: Vec<Option<usize>> = events
        .iter()
        .filter_map(|e| match &e.event.kind {
            portia::runner::EventKind::SubPlanStarted { step: 2, item, plan_id, .. } if *plan_id == block.id => {
                Some(*item)
            }
            _ => None,
        })
        .collect();
    assert_eq!(started, [Some(0), Some(1), Some(2)], "each item's child is announced");
}

#[tokio::test]
async fn in_parallel_a_looped_blocks_outputs_stay_in_item_order() {
    let answer = |request: &portia::llm::LlmRequest| {
        let asked = common::last_user_text(request);
        let id = ["t1", "t2", "t3"].into_iter().find(|id| asked.contains(&format!("Answer ticket {id}"))).unwrap();
        Ok(portia::llm::LlmResponse::text(format!("answer to {id}")))
    };
    let llm = ScriptedLlm::new().respond_with(answer).respond_with(answer).respond_with(answer);
    let config = common::config(portia::config::ExecutionMode::Parallel, false);
    let h = common::harness_with(config, tools(Arc::new(MockTool::echo("note_tool"))), llm);

    let workflow = h.runner.run_plan(&loop_plan()).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let answers = &workflow.outputs().step_outputs.get("$answers").unwrap().value;
    assert_eq!(answers, &json!(["answer to t1", "answer to t2", "answer to t3"]));
}

#[tokio::test]
async fn a_block_without_a_loop_reads_earlier_outputs_and_checks_its_output_schema() {
    let llm = ScriptedLlm::new().text("Paris").json(json!({"city": "Paris", "ok": true}));
    let h = common::harness(sequential(), InMemoryToolRegistry::new(), llm);
    let plan = PlanBuilder::new("Where is the meeting?")
        .step("Find the city", None, "$city")
        .block("Check it", "$checked", |b| b.step("Check $city", None, "$check"))
        .step_output_schema(json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let checked = &workflow.outputs().final_output.as_ref().unwrap().value;
    assert_eq!(checked, &json!({"city": "Paris", "ok": true}));
    assert!(common::last_user_text(&h.llm.requests()[1]).contains("Check Paris"));
    assert_eq!(h.llm.requests().len(), 2, "a child workflow writes no summary of its own");

    let misfit = ScriptedLlm::new().text("Paris").json(json!({"town": "Paris"})).json(json!({"town": "Paris"}));
    let h = common::harness(sequential(), InMemoryToolRegistry::new(), misfit);
    let failed = h.runner.run_plan(&plan).await.unwrap();
    let failure = failed.failure().unwrap();
    assert_eq!((failure.kind, failure.step), (FailureKind::SchemaMismatch, Some(1)), "{failure}");
    assert!(failure.message.contains("`city` is missing"), "{failure}");
}

#[tokio::test]
async fn a_block_that_ends_a_typed_plan_answers_in_the_plans_schema() {
    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    struct Verdict {
        city: String,
    }
    let llm = ScriptedLlm::new().text("Paris").json(json!({"city": "Paris"}));
    let h = common::harness(sequential(), InMemoryToolRegistry::new(), llm);
    let plan = PlanBuilder::new("Where is the meeting?")
        .step("Find the city", None, "$city")
        .block("Answer", "$answer", |b| b.step("Say where: $city", None, "$said"))
        .output::<Verdict>()
        .build();

    let typed = h.runner.run_plan_as::<Verdict>(&plan).await.unwrap();

    assert!(h.llm.requests()[1].output_schema.is_some(), "the block's last step is asked for the plan's shape");
    assert_eq!(typed.into_output().unwrap().city, "Paris");
}

#[tokio::test]
async fn a_question_inside_a_looped_block_surfaces_on_the_parent_and_its_answer_reaches_the_child() {
    let note = Arc::new(MockTool::echo("note_tool"));
    let h = common::harness_with(sequential(), tools(note), ScriptedLlm::new());
    let plan = PlanBuilder::new("Confirm each ticket")
        .step("List the tickets", Some("tickets_tool"), "$tickets")
        .args(json!({}))
        .block("Confirm one", "$confirmed", |b| {
            b.ask_user("Close ticket $item.id?", AskUser::Confirm, "$ok")
                .step("Note it", Some("note_tool"), "$noted")
                .args(json!({"id": "$item.id", "close": "$ok"}))
        })
        .for_each("$tickets")
        .build();

    let mut workflow = h.runner.run_plan(&plan).await.unwrap();
    let mut asked = Vec::new();
    while workflow.state() == WorkflowState::NeedClarification {
        let question = workflow.outstanding_clarifications().next().unwrap().clone();
        assert_eq!((question.workflow_id, question.step), (workflow.id(), Some(1)), "asked on the parent's block step");
        asked.push(question.user_guidance.clone());
        let close = question.user_guidance.contains("t2");
        h.runner.resolve_clarification(&question, close).await.unwrap();
        workflow = h.runner.execute_workflow(workflow).await.unwrap();
    }

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(asked, ["Close ticket t1?", "Close ticket t2?", "Close ticket t3?"]);
    let confirmed = &workflow.outputs().step_outputs.get("$confirmed").unwrap().value;
    let closes: Vec<&serde_json::Value> = confirmed.as_array().unwrap().iter().map(|v| &v["close"]).collect();
    assert_eq!(closes, [&json!(false), &json!(true), &json!(false)], "each answer reached its own item's child");
}

#[tokio::test]
async fn cancelling_a_parent_cancels_the_block_children_waiting_on_questions() {
    let note = Arc::new(MockTool::echo("note_tool"));
    let h = common::harness_with(sequential(), tools(note), ScriptedLlm::new());
    let plan = PlanBuilder::new("Confirm each ticket")
        .step("List the tickets", Some("tickets_tool"), "$tickets")
        .args(json!({}))
        .block("Confirm one", "$confirmed", |b| b.ask_user("Close ticket $item.id?", AskUser::Confirm, "$ok"))
        .for_each("$tickets")
        .build();
    let waiting = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    let child_id = ParentLink::new(waiting.id(), 1, Some(0)).child_id();
    assert_eq!(h.storage.get_workflow(child_id).await.unwrap().state(), WorkflowState::NeedClarification);

    let parent = h.runner.cancel_workflow(waiting.id(), "not today").await.unwrap();

    assert_eq!(parent.failure().map(|f| f.kind), Some(FailureKind::Cancelled));
    let child = h.storage.get_workflow(child_id).await.unwrap();
    assert_eq!(child.state(), WorkflowState::Failed);
    let failure = child.failure().unwrap();
    assert_eq!((failure.kind, failure.message.as_str()), (FailureKind::Cancelled, "not today"));
}

#[tokio::test]
async fn a_block_nested_at_its_blocks_own_step_index_runs_as_a_child_of_its_own() {
    let note = Arc::new(MockTool::echo("note_tool"));
    let h = common::harness_with(sequential(), tools(note), ScriptedLlm::new());
    let plan = PlanBuilder::new("Nested")
        .step("List the tickets", Some("tickets_tool"), "$tickets")
        .args(json!({}))
        .block("Outer", "$outer", |b| {
            b.step("Note the first", Some("note_tool"), "$first").args(json!({"id": "first"})).block(
                "Inner",
                "$inner",
                |b| b.step("Note the count", Some("note_tool"), "$n").args(json!({"n": 2})),
            )
        })
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let child = ParentLink::new(workflow.id(), 1, None).child_id();
    let grandchild = ParentLink::new(child, 1, None).child_id();
    assert_ne!(grandchild, workflow.id(), "a grandchild never gets its grandparent's id");
    let grandchild = h.storage.get_workflow(grandchild).await.unwrap();
    assert_eq!(grandchild.state(), WorkflowState::Complete);
    assert_eq!(grandchild.parent(), Some(&ParentLink::new(child, 1, None)));
    assert_ne!(grandchild.plan_id(), plan.id, "the inner block has a plan of its own");
}

/// The id 0.4 derived for a link's child (pinned here as 0.4 wrote it).
fn child_id_of_0_4(link: &ParentLink) -> WorkflowId {
    let salt = ((link.step as u128 + 1) << 64) | (link.item.map_or(0, |i| i as u128 + 1));
    let mixed = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    WorkflowId::from_uuid(uuid::Uuid::from_u128(link.workflow_id.uuid().as_u128() ^ mixed))
}

#[tokio::test]
async fn a_parent_stopped_under_0_4_goes_on_with_the_child_it_started_there() {
    let note = Arc::new(MockTool::echo("note_tool"));
    let h = common::harness_with(sequential(), tools(note), ScriptedLlm::new());
    let confirm = PlanBuilder::new("Confirm").ask_user("Close them all?", AskUser::Confirm, "$yes").build();
    h.storage.save_plan(&confirm).await.unwrap();
    let plan = PlanBuilder::new("Close the tickets")
        .step("List the tickets", Some("tickets_tool"), "$tickets")
        .args(json!({}))
        .sub_plan("Confirm all", confirm.id, json!({}), "$ok")
        .build();
    let waiting = h.runner.run_plan(&plan).await.unwrap();
    let link = ParentLink::new(waiting.id(), 1, None);
    // Move the child to the id 0.4 gave it, as a store written by 0.4 holds it.
    let child = serde_json::to_string(&h.storage.get_workflow(link.child_id()).await.unwrap()).unwrap();
    let child = child.replace(&link.child_id().to_string(), &child_id_of_0_4(&link).to_string());
    h.storage.create_workflow(&serde_json::from_str(&child).unwrap()).await.unwrap();
    h.storage.delete_workflow(link.child_id()).await.unwrap();

    let question = waiting.outstanding_clarifications().next().unwrap().clone();
    h.runner.resolve_clarification(&question, true).await.unwrap();
    let done = h.runner.execute_workflow_by_id(waiting.id()).await.unwrap();

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(done.outputs().step_outputs.get("$ok").unwrap().value, json!(true));
    let old = h.storage.get_workflow(child_id_of_0_4(&link)).await.unwrap();
    assert_eq!(old.state(), WorkflowState::Complete, "the child 0.4 started was resumed");
    let second = h.storage.get_workflow(link.child_id()).await;
    assert!(matches!(second, Err(portia::Error::WorkflowNotFound(_))), "no second child: {second:?}");
}

#[tokio::test]
async fn creating_a_workflow_names_unknown_functions_and_sub_plan_cycles_inside_blocks() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let runner = Runner::builder(sequential()).llm(Arc::new(ScriptedLlm::new())).storage(storage.clone()).build();
    let runner = runner.unwrap();
    // a runs b inside a block; b runs a.
    let mut a = PlanBuilder::new("a").step("x", None, "$x").build();
    let b = PlanBuilder::new("b").sub_plan("Run a", a.id, json!({}), "$y").build();
    storage.save_plan(&b).await.unwrap();
    let inner = vec![Step::sub_plan("Run b", b.id, json!({}), "$z"), Step::new("Call it", None, "$w")];
    let mut block = Step::block("Both", inner, "$both");
    block.steps[1].function = Some("missing_fn".into());
    block.steps[1].args = Some(json!({}));
    a.steps.push(block);

    let Err(portia::Error::InvalidPlan(problems)) = runner.create_workflow(&a).await else { panic!("accepted") };

    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 2, "{text:#?}");
    assert!(text[0].starts_with("step 1, block step 1 calls the function \"missing_fn\""), "{text:?}");
    let expected = vec![a.id.to_string(), b.id.to_string(), a.id.to_string()];
    let cycle = matches!(&problems[1], PlanProblem::InBlock { step: 1, inner }
        if matches!(&**inner, PlanProblem::SubPlanCycle { step: 0, cycle } if *cycle == expected));
    assert!(cycle, "{text:?}");
}

#[test]
fn a_block_is_optional_in_json_and_round_trips() {
    let plan = triage_plan();
    let json = serde_json::to_value(&plan).unwrap();
    assert!(json["steps"][0].get("steps").is_none(), "left out when a step is no block");
    assert_eq!(json["steps"][2]["steps"][1]["condition"], json!("$item.urgent == true"));
    assert_eq!(serde_json::from_value::<Plan>(json).unwrap(), plan);
}

#[test]
fn a_blocks_steps_are_validated_and_named_by_their_path() {
    let plan = PlanBuilder::new("q")
        .step("List", Some("tickets_tool"), "$tickets")
        .step_output_schema(
            json!({"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}}}}),
        )
        .block("Each", "$each", |b| {
            b.step("Use a later output", None, "$a")
                .input("$later", "produced after the block")
                .step("Use a field the list has not", None, "$b")
                .input("$tickets[0].colour", "no such field")
                .step("Branch on nothing", None, "$c")
                .condition("$nowhere == 1")
                .block("Inner", "$d", |inner| inner.step("Use nothing", None, "$e").input("$gone", "unknown"))
        })
        .for_each("$tickets")
        .step("Later", None, "$later")
        .build();
    let tools = InMemoryToolRegistry::new().with(tickets_tool()).unwrap();

    let problems = plan.problems(&tools);

    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 4, "{text:#?}");
    assert!(
        matches!(&problems[0], PlanProblem::InBlock { step: 1, inner } if matches!(**inner, PlanProblem::UnknownInput { step: 0, .. }))
    );
    assert_eq!(text[0], "step 1, block step 0 reads $later, which no earlier step outputs");
    assert!(text[1].starts_with("step 1, block step 1 refers to $tickets[0].colour, but"), "{}", text[1]);
    assert_eq!(text[2], "step 1, block step 2's condition refers to $nowhere, which no earlier step outputs");
    assert_eq!(text[3], "step 1, block step 3, block step 0 reads $gone, which no earlier step outputs");

    let block = || Step::block("B", vec![Step::new("x", None, "$x")], "$b");
    let mut with_tool = block();
    with_tool.tool_id = Some("tickets_tool".into());
    let steps = vec![with_tool, block().args(json!({"x": 1}))];
    let mixed = Plan::new(portia::PlanContext::new("q", ["tickets_tool"]), steps);
    let text: Vec<String> = mixed.problems(&tools).iter().map(ToString::to_string).collect();
    assert!(text[0].starts_with("step 0 sets tool_id and steps;"), "{text:?}");
    assert!(text[1].contains("a block takes no args"), "{text:?}");
}

/// Records what each before- and after-step hook saw: the step's output name and
/// whether it runs a child (a sub-plan or a block).
#[derive(Debug, Default)]
struct SeenSteps(Arc<Mutex<Vec<String>>>);

#[async_trait::async_trait]
impl Hooks for SeenSteps {
    async fn before_step(&self, step: &StepContext) -> Result<StepDecision, HookError> {
        let kind = if step.step.plan.is_some() {
            "sub-plan"
        } else if step.step.is_block() {
            "block"
        } else {
            "step"
        };
        self.0.lock().unwrap().push(format!("before {kind} {}", step.step.output));
        Ok(StepDecision::Run)
    }
    async fn after_step(&self, step: &StepContext, outcome: &StepOutcome) -> Result<(), HookError> {
        let value = match outcome {
            StepOutcome::Output(output) => output.value.to_string(),
            other => format!("{other:?}"),
        };
        self.0.lock().unwrap().push(format!("after {} = {value}", step.step.output));
        Ok(())
    }
}

#[tokio::test]
async fn the_step_hooks_see_sub_plan_and_block_steps() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let child =
        PlanBuilder::new("Classify").plan_input("$text", "the text").step("Classify $text", None, "$class").build();
    storage.save_plan(&child).await.unwrap();
    let seen = SeenSteps::default();
    let llm = ScriptedLlm::new().text("billing").text("Dear customer");
    let runner = Runner::builder(sequential())
        .llm(Arc::new(llm))
        .storage(storage)
        .hook(SeenSteps(seen.0.clone()))
        .build()
        .unwrap();
    let plan = PlanBuilder::new("Triage")
        .sub_plan("Classify the ticket", child.id, json!({"text": "charged twice"}), "$class")
        .block("Reply", "$reply", |b| b.step("Draft a $class reply", None, "$draft"))
        .build();

    let workflow = runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let seen = seen.0.lock().unwrap().clone();
    let expected = [
        "before sub-plan $class",
        "before step $class",
        "after $class = \"billing\"",
        "after $class = \"billing\"",
        "before block $reply",
        "before step $draft",
        "after $draft = \"Dear customer\"",
        "after $reply = \"Dear customer\"",
    ];
    assert_eq!(seen, expected, "the child's own steps are hooked inside their parent step's hooks");
}

// ----- durability: killed in the middle of a loop over a block -----

const MARKER: &str = "BLOCK-LOOP-POINT";

/// For each ticket: note it (a journaled tool call), then draft a reply.
fn loop_plan() -> Plan {
    PlanBuilder::new("Answer each ticket")
        .step("List the tickets", Some("tickets_tool"), "$tickets")
        .args(json!({}))
        .block("Answer one ticket", "$answers", |b| {
            b.step("Note $item.id", Some("note_tool"), "$noted").args(json!({"id": "$item.id"})).step(
                "Answer ticket $item.id",
                None,
                "$answer",
            )
        })
        .for_each("$tickets")
        .build()
}

/// The child process: answers items 0 and 1, notes item 2, then hangs in item 2's
/// LLM call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the block durability test"]
async fn block_loop_child() {
    let Some(db) = std::env::var_os("BLOCK_DB") else { return };
    let storage = Arc::new(SqliteStorage::open(PathBuf::from(db)).unwrap());
    let llm = ScriptedLlm::new().text("A").text("B").respond_with(|_| common::print_marker_and_wait(MARKER));
    let note = Arc::new(MockTool::echo("note_tool"));
    let runner = Runner::builder(sequential()).tools(tools(note)).llm(Arc::new(llm)).storage(storage).build().unwrap();
    let id: WorkflowId = std::env::var("BLOCK_WORKFLOW").unwrap().parse().unwrap();
    let _ = runner.execute_workflow_by_id(id).await;
}

#[tokio::test]
async fn a_loop_over_a_block_killed_mid_way_resumes_at_its_first_unfinished_item() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("portia.db");
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&db).unwrap());
    let setup = Runner::builder(sequential()).tools(tools(Arc::new(MockTool::echo("note_tool"))));
    let setup = setup.llm(Arc::new(ScriptedLlm::new())).storage(storage).build().unwrap();
    let id = setup.create_workflow(&loop_plan()).await.unwrap().id();

    common::kill_child_test_at_marker(
        "blocks::block_loop_child",
        &[("BLOCK_DB", db.as_os_str()), ("BLOCK_WORKFLOW", id.to_string().as_ref())],
        MARKER,
    );

    let clock = ManualClock::new(chrono::Utc::now() + chrono::Duration::hours(1));
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open_with_clock(&db, Arc::new(clock)).unwrap());
    let (note, llm) = (Arc::new(MockTool::echo("note_tool")), Arc::new(ScriptedLlm::new().text("C")));
    let runner = Runner::builder(sequential()).tools(tools(note.clone())).llm(llm.clone()).storage(storage.clone());
    let workflow = runner.build().unwrap().execute_workflow_by_id(id).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(workflow.outputs().step_outputs.get("$answers").unwrap().value, json!(["A", "B", "C"]));
    assert!(note.calls().is_empty(), "item 2's note was journaled before the kill, items 0 and 1 are done");
    let requests = llm.requests();
    assert_eq!(requests.len(), 1, "only item 2's unfinished step asks the model");
    assert!(common::last_user_text(&requests[0]).contains("Answer ticket t3"));
    let all = storage.list_workflows(&WorkflowQuery::default()).await.unwrap();
    assert_eq!(all.count, 4, "the parent and one child per item: item 2's child was resumed, not started again");
}

/// A loop inside a looped block over each item's own list: its `for_each` names
/// the block's `$item`, and inside it `$item` is the inner item. Refused before as
/// a loop over something no earlier step outputs.
#[tokio::test]
async fn a_loop_in_a_looped_block_runs_over_each_items_list() {
    let cells = Arc::new(MockTool::echo("cell_tool"));
    let tools = InMemoryToolRegistry::from_tools([Arc::clone(&cells) as Arc<dyn portia::Tool>]).unwrap();
    let plan = PlanBuilder::new("Each cell")
        .plan_input("$grid", "rows of cells")
        .block("Each row", "$rows", |b| {
            b.step("Each cell", Some("cell_tool"), "$cells")
                .args(json!({"cell": "$item", "at": "$index"}))
                .for_each("$item")
        })
        .for_each("$grid")
        .build();
    assert_eq!(plan.problems(&tools), []);
    let h =
        common::harness_with(common::config(portia::config::ExecutionMode::Parallel, false), tools, ScriptedLlm::new());
    let grid = json!({"grid": [[1, 2], [3]]}).as_object().unwrap().clone();
    let created = h.runner.create_workflow(&plan).inputs(grid).await.unwrap();
    let workflow = h.runner.execute_workflow(created).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let rows = &workflow.outputs().step_outputs.get("$rows").unwrap().value;
    let expected = json!([[{"cell": 1, "at": 0}, {"cell": 2, "at": 1}], [{"cell": 3, "at": 0}]]);
    assert_eq!(**rows, expected);
}

/// A block whose steps only test a skipped output in their conditions runs, as a
/// step testing it would: only what is read as data skips a step.
#[tokio::test]
async fn a_block_whose_steps_only_test_a_skipped_output_runs() {
    let note = Arc::new(MockTool::echo("note_tool"));
    let tools = InMemoryToolRegistry::from_tools([Arc::clone(&note) as Arc<dyn portia::Tool>]).unwrap();
    let plan = PlanBuilder::new("Fallback")
        .step("Draft", None, "$draft")
        .condition("false")
        .block("Fall back", "$fallback", |b| {
            b.step("Note it", Some("note_tool"), "$noted").args(json!({"text": "no draft"})).condition("$draft == null")
        })
        .build();
    assert!(plan.reads(1).is_empty(), "{:?}", plan.reads(1));
    assert_eq!(plan.dependencies(1), ["$draft"]);
    let h = common::harness_with(sequential(), tools, ScriptedLlm::new());
    let workflow = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let fallback = workflow.outputs().step_outputs.get("$fallback").unwrap();
    assert_eq!((fallback.skipped.as_deref(), &*fallback.value), (None, &json!({"text": "no draft"})));
}

/// Read as fields, an empty `steps` or `tools` list is no list at all: the step
/// would quietly become an LLM step. A plan read strictly names each one.
#[test]
fn empty_steps_and_tools_lists_in_a_plans_json_are_refused_by_path() {
    let json = json!({
        "plan_context": {"query": "q", "tool_ids": []},
        "steps": [
            {"task": "Nothing inside", "output": "$a", "steps": []},
            {"task": "No tools", "output": "$b", "tools": []},
            {"task": "A block", "output": "$c", "steps": [
                {"task": "Empty inner block", "output": "$d", "steps": []},
                {"task": "Inner, no tools", "output": "$e", "tools": []}
            ]}
        ]
    });
    let Err(portia::Error::InvalidPlan(problems)) = Plan::from_value(json.clone()) else {
        panic!("an empty list was read as none")
    };
    let said: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        said,
        [
            "step 0's block: the plan has no steps",
            "step 1 has an invalid tool list: it is empty: list the tools the step may call, or leave `tools` out",
            "step 2, block step 0's block: the plan has no steps",
            "step 2, block step 1 has an invalid tool list: it is empty: list the tools the step may call, or leave `tools` out",
        ]
    );
    assert!(matches!(problems[0], PlanProblem::InBlock { step: 0, ref inner } if **inner == PlanProblem::NoSteps));
    let read = serde_json::from_value::<Plan>(json).expect("a lenient read still takes it");
    assert!(read.steps[0].steps.is_empty(), "which is what a strict read guards against");
}

/// A workflow set aside is put back only once its run can read all it needs: the
/// rows of the block children it started too, which `put_back` did not read.
#[tokio::test]
async fn putting_back_reads_the_rows_of_the_children_a_workflow_started() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&path).unwrap());
    let runner = Runner::builder(sequential())
        .llm(Arc::new(ScriptedLlm::new()))
        .tools(tools(Arc::new(MockTool::echo("note_tool"))))
        .storage(storage)
        .build()
        .unwrap();
    let plan = PlanBuilder::new("Confirm")
        .block("Confirm it", "$confirmed", |b| b.ask_user("Close the ticket?", AskUser::Confirm, "$ok"))
        .build();
    let parent = runner.run_plan(&plan).await.unwrap();
    assert_eq!(parent.state(), WorkflowState::NeedClarification);
    let child = portia::workflow::ParentLink::new(parent.id(), 0, None).child_id();
    let db = rusqlite::Connection::open(&path).unwrap();
    let body: String =
        db.query_row("SELECT body FROM workflows WHERE id = ?1", [child.to_string()], |row| row.get(0)).unwrap();
    db.execute("UPDATE workflows SET body = '{}' WHERE id = ?1", [child.to_string()]).unwrap();

    let refused = runner.put_back(parent.id()).await.unwrap_err();
    assert!(matches!(refused, portia::Error::Unreadable { .. }), "{refused:?}");
    assert!(refused.to_string().contains(&child.to_string()), "names the child's row: {refused}");

    db.execute("UPDATE workflows SET body = ?2 WHERE id = ?1", [child.to_string(), body]).unwrap();
    assert!(!runner.put_back(parent.id()).await.unwrap(), "readable again (and never set aside)");
}
