//! Child workflows' spending: a parent's usage counts what its sub-plan and block
//! children spent, each child once (also when a child asks a question and is
//! resumed), and one budget caps the parent and its children together.

use std::sync::Arc;

use portia::config::{Budget, ExecutionMode, Price, Prices};
use portia::llm::{LlmResponse, Usage};
use portia::plan::AskUser;
use portia::storage::{InMemoryStorage, Storage};
use portia::testing::{MockTool, ScriptedLlm};
use portia::workflow::{FailureKind, ParentLink, Workflow};
use portia::{Config, InMemoryToolRegistry, Plan, PlanBuilder, Runner, WorkflowState};
use serde_json::json;

fn runner(budget: Budget, llm: ScriptedLlm) -> (Runner, Arc<ScriptedLlm>, Arc<dyn Storage>) {
    let prices = Prices::none().with("gpt-4.1-mini", Price::new(1_000.0, 2_000.0));
    let config = Config::builder()
        .execution(ExecutionMode::Sequential)
        .summarize_final_output(false)
        .budget(budget)
        .prices(prices)
        .build()
        .unwrap();
    let tickets = MockTool::returning("tickets_tool", json!([{"id": "t1"}, {"id": "t2"}, {"id": "t3"}, {"id": "t4"}]));
    let tools = InMemoryToolRegistry::from_tools([Arc::new(tickets) as Arc<dyn portia::Tool>]).unwrap();
    let (llm, storage) = (Arc::new(llm), Arc::new(InMemoryStorage::new()) as Arc<dyn Storage>);
    let runner = Runner::builder(config).tools(tools).llm(llm.clone()).storage(storage.clone()).build().unwrap();
    (runner, llm, storage)
}

fn reply(prompt_tokens: u64, completion_tokens: u64) -> LlmResponse {
    LlmResponse { usage: Usage::call(prompt_tokens, completion_tokens), ..LlmResponse::text("thought") }
}

/// One call of the parent's own, then one call per ticket in a looped block; the
/// block asks before it ends for ticket `ask_on` (if any).
fn loop_plan(ask_on: Option<&str>) -> Plan {
    let condition = format!("$item.id == \"{}\"", ask_on.unwrap_or("none"));
    PlanBuilder::new("Reply to each ticket")
        .step("List the tickets", Some("tickets_tool"), "$tickets")
        .args(json!({}))
        .step("Pick a tone", None, "$tone")
        .block("Reply to one ticket", "$replies", |b| {
            b.step("Draft a reply to $item.id in a $tone tone", None, "$draft")
                .ask_user("Send the reply to $item.id?", AskUser::Confirm, "$send")
                .condition(&condition)
        })
        .for_each("$tickets")
        .build()
}

/// The parent's own call, then one per ticket, each of a size of its own.
fn four_tickets_llm() -> ScriptedLlm {
    ScriptedLlm::new()
        .respond(reply(1000, 100))
        .respond(reply(10, 1))
        .respond(reply(20, 2))
        .respond(reply(30, 3))
        .respond(reply(40, 4))
}

fn cost(prompt_tokens: u64, completion_tokens: u64) -> f64 {
    (prompt_tokens as f64 * 1_000.0 + completion_tokens as f64 * 2_000.0) / 1_000_000.0
}

fn assert_counts_every_call_once(parent: &Workflow, calls: u32, prompt_tokens: u64, completion_tokens: u64) {
    let usage = parent.usage();
    assert_eq!(
        (usage.total.llm_calls, usage.total.prompt_tokens, usage.total.completion_tokens),
        (calls, prompt_tokens, completion_tokens),
        "{usage:?}"
    );
    assert!((usage.cost_usd - cost(prompt_tokens, completion_tokens)).abs() < 1e-9, "{usage:?}");
    let children = usage.children_total().usage;
    let own = (usage.total.llm_calls - children.llm_calls, usage.total.prompt_tokens - children.prompt_tokens);
    assert_eq!(own, (1, 1000), "the parent's own call, told apart from its children's");
}

#[tokio::test]
async fn a_parent_counts_each_looped_block_childs_calls_once() {
    let (runner, llm, storage) = runner(Budget::default(), four_tickets_llm());

    let parent = runner.run_plan(&loop_plan(None)).await.unwrap();

    assert_eq!(parent.state(), WorkflowState::Complete, "{:?}", parent.failure());
    assert_eq!(llm.requests().len(), 5);
    assert_counts_every_call_once(&parent, 5, 1100, 110);
    let usage = parent.usage();
    assert_eq!(usage.children.len(), 4, "one record per item's child");
    for (item, (prompt, completion)) in [(10, 1), (20, 2), (30, 3), (40, 4)].into_iter().enumerate() {
        let child = ParentLink::new(parent.id(), 2, Some(item)).child_id();
        let record = &usage.children[&child];
        assert_eq!((record.step_output.as_str(), record.usage), ("$replies", Usage::call(prompt, completion)));
        assert_eq!(storage.get_workflow(child).await.unwrap().usage().total, record.usage);
    }
    let block_step = Usage::call(10, 1) + Usage::call(20, 2) + Usage::call(30, 3) + Usage::call(40, 4);
    assert_eq!(usage.steps["$replies"], block_step, "the block step's share");
    assert_eq!(storage.get_workflow(parent.id()).await.unwrap().usage(), usage, "as stored");
}

#[tokio::test]
async fn a_child_resumed_after_its_question_replaces_its_record_instead_of_adding_one() {
    let (runner, llm, storage) = runner(Budget::default(), four_tickets_llm());

    let asking = runner.run_plan(&loop_plan(Some("t2"))).await.unwrap();

    assert_eq!(asking.state(), WorkflowState::NeedClarification, "{:?}", asking.failure());
    assert_counts_every_call_once(&asking, 3, 1030, 103);
    assert_eq!(asking.usage().children.len(), 2, "t1's child, and t2's that asks");
    let question = asking.outstanding_clarifications().next().unwrap().clone();
    runner.resolve_clarification(&question, true).await.unwrap();

    let done = runner.execute_workflow(asking).await.unwrap();

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(llm.requests().len(), 5, "t2's draft was not made again");
    assert_counts_every_call_once(&done, 5, 1100, 110);
    assert_eq!(done.usage().children.len(), 4);
    assert_eq!(storage.get_workflow(done.id()).await.unwrap().usage(), done.usage(), "as stored");
}

#[tokio::test]
async fn one_budget_caps_the_children_together_though_none_reaches_it_alone() {
    // Four calls allowed; each ticket's child makes two.
    let llm =
        ScriptedLlm::new().respond(reply(1000, 100)).respond(reply(10, 1)).respond(reply(10, 1)).respond(reply(20, 2));
    let (runner, llm, storage) = runner(Budget::default().llm_calls(4), llm);
    let plan = PlanBuilder::new("Reply to each ticket")
        .step("List the tickets", Some("tickets_tool"), "$tickets")
        .args(json!({}))
        .step("Pick a tone", None, "$tone")
        .block("Reply to one ticket", "$replies", |b| {
            b.step("Draft a reply to $item.id", None, "$draft").step("Shorten $draft in a $tone tone", None, "$short")
        })
        .for_each("$tickets")
        .build();

    let parent = runner.run_plan(&plan).await.unwrap();

    assert_eq!(parent.state(), WorkflowState::Failed);
    let failure = parent.failure().unwrap();
    assert_eq!(failure.kind, FailureKind::BudgetExceeded, "{failure}");
    assert!(failure.message.contains("LLM call budget of 4"), "{failure}");
    assert!(failure.message.contains(&format!("by workflow {} and its child workflows", parent.id())), "{failure}");
    assert_eq!(llm.requests().len(), 4, "t2's second call never reached the model");
    assert_eq!(parent.usage().total.llm_calls, 4);
    let second = storage.get_workflow(ParentLink::new(parent.id(), 2, Some(1)).child_id()).await.unwrap();
    assert_eq!(second.failure().map(|f| f.kind), Some(FailureKind::BudgetExceeded), "the child that ran out");
    let third = ParentLink::new(parent.id(), 2, Some(2)).child_id();
    assert!(storage.get_workflow(third).await.is_err(), "the run stopped before the third item");
}

#[tokio::test]
async fn a_grandchilds_calls_reach_the_top_through_its_parent() {
    let llm = ScriptedLlm::new().respond(reply(1000, 100)).respond(reply(20, 2)).respond(reply(10, 1));
    let (runner, _, storage) = runner(Budget::default(), llm);
    // The inner block is the child's step 0, the outer the top's step 1.
    let plan =
        PlanBuilder::new("Write a reply")
            .step("Pick a tone", None, "$tone")
            .block("Reply", "$reply", |b| {
                b.block("Outline", "$outline", |inner| inner.step("Outline a reply in a $tone tone", None, "$points"))
                    .step("Draft a reply from $outline", None, "$draft")
            })
            .build();

    let top = runner.run_plan(&plan).await.unwrap();

    assert_eq!(top.state(), WorkflowState::Complete, "{:?}", top.failure());
    assert_counts_every_call_once(&top, 3, 1030, 103);
    let child = ParentLink::new(top.id(), 1, None).child_id();
    let both = Usage::call(20, 2) + Usage::call(10, 1);
    assert_eq!(top.usage().children[&child].usage, both, "the child's, its own child's included");
    let child = storage.get_workflow(child).await.unwrap();
    assert_eq!(child.usage().children.len(), 1, "the grandchild, recorded in its own parent");
}
