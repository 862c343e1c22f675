//! Budgets: each limit stops the next LLM call, the run ends FAILED naming the
//! limit and the figure reached, cost follows the price table, and running time
//! leaves out the time spent waiting for a human. Tokio's clock is paused.

use std::sync::Arc;
use std::time::Duration;

use portia::config::{Budget, Price, Prices};
use portia::llm::{LlmResponse, Usage};
use portia::testing::{MockBehavior, MockTool, ScriptedLlm};
use portia::workflow::FailureKind;
use portia::{Config, InMemoryToolRegistry, Plan, PlanBuilder, Runner, WorkflowState};
use serde_json::json;

fn runner(budget: Budget, llm: ScriptedLlm, tools: InMemoryToolRegistry) -> (Runner, Arc<ScriptedLlm>) {
    let prices = Prices::none().with("gpt-4.1-mini", Price::new(1_000.0, 2_000.0));
    let config = Config::builder().summarize_final_output(false).budget(budget).prices(prices).build().unwrap();
    let llm = Arc::new(llm);
    let runner = Runner::builder(config).tools(tools).llm(llm.clone()).build().unwrap();
    (runner, llm)
}

/// Three steps the model answers itself, one call each.
fn three_thoughts() -> Plan {
    PlanBuilder::new("think thrice").step("one", None, "$a").step("two", None, "$b").step("three", None, "$c").build()
}

fn reply(prompt_tokens: u64, completion_tokens: u64) -> LlmResponse {
    LlmResponse { usage: Usage::call(prompt_tokens, completion_tokens), ..LlmResponse::text("thought") }
}

#[tokio::test]
async fn the_call_budget_refuses_the_call_past_it() {
    let budget = Budget::default().llm_calls(2);
    let llm = ScriptedLlm::new().respond(reply(10, 1)).respond(reply(10, 1));
    let (runner, llm) = runner(budget, llm, InMemoryToolRegistry::new());
    let failed = runner.run_plan(&three_thoughts()).await.unwrap();
    assert_eq!(failed.state(), WorkflowState::Failed);
    let failure = failed.failure().unwrap();
    assert_eq!(failure.kind, FailureKind::BudgetExceeded);
    assert!(failure.message.contains("LLM call budget of 2") && failure.message.contains("2 calls made"), "{failure}");
    assert_eq!(failed.usage().total.llm_calls, 2);
    assert_eq!(llm.requests().len(), 2, "the third call never reached the model");
    assert_eq!(failed.outputs().step_outputs.len(), 2);
}

#[tokio::test]
async fn the_token_budget_lets_one_call_overshoot_and_refuses_the_next() {
    let budget = Budget::default().tokens(100);
    let llm = ScriptedLlm::new().respond(reply(400, 20));
    let (runner, _) = runner(budget, llm, InMemoryToolRegistry::new());
    let failed = runner.run_plan(&three_thoughts()).await.unwrap();
    let failure = failed.failure().unwrap();
    assert_eq!(failure.kind, FailureKind::BudgetExceeded);
    assert!(failure.message.contains("token budget of 100") && failure.message.contains("420 tokens"), "{failure}");
    assert_eq!(failure.step, None, "the budget, not a step, ended it");
}

#[tokio::test]
async fn cost_follows_the_price_table_and_caps_the_run() {
    // 1,000 prompt tokens at $1,000 per million: $1 a call.
    let budget = Budget::default().usd(1.5);
    let llm = ScriptedLlm::new().respond(reply(1_000, 0)).respond(reply(1_000, 0));
    let (runner, _) = runner(budget, llm, InMemoryToolRegistry::new());
    let failed = runner.run_plan(&three_thoughts()).await.unwrap();
    assert_eq!(failed.usage().cost_usd, 2.0);
    let failure = failed.failure().unwrap();
    assert!(failure.message.contains("cost budget of $1.5") && failure.message.contains("$2.0000"), "{failure}");
}

#[tokio::test]
async fn cached_prompt_tokens_are_priced_at_their_rate_and_still_count_as_tokens() {
    // 1,000 prompt tokens a call, 800 of them read from the provider's cache at a
    // tenth of the input rate: 200 x $1,000 + 800 x $100 per million = $0.28 a call.
    let prices = Prices::none().with("gpt-4.1-mini", Price::new(1_000.0, 2_000.0).cache_read(100.0));
    let config = Config::builder()
        .summarize_final_output(false)
        .budget(Budget::default().usd(0.5).tokens(5_000))
        .prices(prices)
        .build()
        .unwrap();
    let cached = || LlmResponse { usage: Usage::call(1_000, 0).with_cache(800, 0), ..LlmResponse::text("thought") };
    let llm = ScriptedLlm::new().respond(cached()).respond(cached());
    let runner = Runner::builder(config).llm(Arc::new(llm)).build().unwrap();
    let failed = runner.run_plan(&three_thoughts()).await.unwrap();
    assert!((failed.usage().cost_usd - 0.56).abs() < 1e-9, "{}", failed.usage().cost_usd);
    assert_eq!((failed.usage().total.prompt_tokens, failed.usage().total.cache_read_tokens), (2_000, 1_600));
    assert_eq!(failed.usage().steps["$a"].cache_read_tokens, 800);
    let failure = failed.failure().unwrap();
    assert!(failure.message.contains("cost budget of $0.5") && failure.message.contains("$0.5600"), "{failure}");
}

#[tokio::test(start_paused = true)]
async fn running_time_counts_only_while_running() {
    let budget = Budget::default().seconds(60);
    let tools = InMemoryToolRegistry::new().with(MockTool::new("ask_tool", MockBehavior::ClarifyInput("city".into())));
    let llm = ScriptedLlm::new().tool_call("ask_tool", json!({})).tool_call("ask_tool", json!({}));
    let (runner, _) = runner(budget, llm, tools.unwrap());
    let plan = PlanBuilder::new("ask").step("ask for the city", Some("ask_tool"), "$city").build();
    let waiting = runner.run_plan(&plan).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);

    // A day passes while the workflow waits for its human.
    tokio::time::advance(Duration::from_secs(24 * 3600)).await;
    let question = waiting.outstanding_clarifications().next().unwrap().clone();
    runner.resolve_clarification(&question, "Oslo").await.unwrap();
    let done = runner.execute_workflow(waiting).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert!(done.usage().running_ms < 60_000, "ran {} ms", done.usage().running_ms);
}

/// A step that takes two minutes, with no model call.
#[derive(Debug)]
struct SlowTool;

#[async_trait::async_trait]
impl portia::Tool for SlowTool {
    fn spec(&self) -> portia::tool::ToolSpec {
        portia::tool::ToolSpec::new("slow_tool", "Slow Tool", "Takes its time.").task_argument("task").read_only()
    }

    async fn run(
        &self,
        _ctx: &portia::ToolRunContext,
        _args: serde_json::Value,
    ) -> Result<portia::ToolOutput, portia::ToolError> {
        tokio::time::sleep(Duration::from_secs(120)).await;
        Ok(portia::ToolOutput::value("done"))
    }
}

#[tokio::test(start_paused = true)]
async fn the_time_budget_stops_a_long_run_before_its_next_step() {
    let budget = Budget::default().seconds(60);
    let (runner, llm) = runner(budget, ScriptedLlm::new(), InMemoryToolRegistry::new().with(SlowTool).unwrap());
    let plan = PlanBuilder::new("q")
        .step("wait", Some("slow_tool"), "$a")
        .step("think", None, "$b")
        .input("$a", "waited")
        .build();
    let failed = runner.run_plan(&plan).await.unwrap();
    let failure = failed.failure().unwrap();
    assert_eq!(failure.kind, FailureKind::BudgetExceeded);
    assert!(failure.message.contains("time budget of 60 s") && failure.message.contains("120.0 s"), "{failure}");
    assert_eq!(failed.outputs().step_outputs.len(), 1, "the slow step finished; the next never started");
    assert!(llm.requests().is_empty());
}

/// A planner reply for [`three_thoughts`]' steps, costing `reply`'s usage.
fn plan_reply(prompt_tokens: u64) -> LlmResponse {
    let steps = json!({"steps": [
        {"task": "one", "inputs": [], "tool_id": null, "output": "$a"},
        {"task": "two", "inputs": [], "tool_id": null, "output": "$b"},
        {"task": "three", "inputs": [], "tool_id": null, "output": "$c"}
    ]});
    LlmResponse { usage: Usage::call(prompt_tokens, 100), ..LlmResponse::text(steps.to_string()) }
}

#[tokio::test]
async fn workflows_of_one_plan_report_only_the_calls_they_made() {
    let mut llm = ScriptedLlm::new().respond(plan_reply(1_000));
    for _ in 0..6 * 3 {
        llm = llm.respond(reply(10, 1));
    }
    let (runner, llm) = runner(Budget::default(), llm, InMemoryToolRegistry::new());
    let plan = runner.generate_plan("think thrice").await.unwrap();
    assert_eq!(plan.usage.llm_calls, 1);
    let mut calls = 0;
    for _ in 0..6 {
        let workflow = runner.run_plan(&plan).await.unwrap();
        assert_eq!(workflow.state(), WorkflowState::Complete);
        let usage = workflow.usage();
        assert_eq!(usage.total.llm_calls, 3, "its three steps, not the shared planning");
        assert_eq!(usage.total.prompt_tokens, 30);
        assert!((usage.cost_usd - 3.0 * (10.0 * 1_000.0 + 2_000.0) / 1e6).abs() < 1e-9, "{}", usage.cost_usd);
        assert_eq!(usage.planning, plan.usage, "the plan's calls stay visible as a reference");
        assert!(!usage.planning_counted);
        calls += usage.total.llm_calls;
    }
    assert_eq!(calls as usize, llm.requests().len() - 1, "every call made, planning aside, counted once");
}

#[tokio::test]
async fn a_query_s_workflow_counts_its_own_planning() {
    let llm =
        ScriptedLlm::new().respond(plan_reply(1_000)).respond(reply(10, 1)).respond(reply(10, 1)).respond(reply(10, 1));
    let (runner, llm) = runner(Budget::default(), llm, InMemoryToolRegistry::new());
    let workflow = runner.execute_query("think thrice").await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    let usage = workflow.usage();
    assert!(usage.planning_counted);
    assert_eq!(usage.planning.llm_calls, 1);
    assert_eq!(usage.total.llm_calls, 4, "the planning and three steps");
    assert_eq!(usage.total.llm_calls as usize, llm.requests().len());
    assert_eq!(usage.total.prompt_tokens, 1_030);
}

#[tokio::test]
async fn only_a_plan_written_for_the_workflow_counts_against_its_budget() {
    let mut llm = ScriptedLlm::new().respond(plan_reply(1_000));
    for _ in 0..3 + 2 {
        llm = llm.respond(reply(10, 1));
    }
    // Three calls is the limit: the shared plan's three steps spend it exactly.
    let (runner, _) = runner(Budget::default().llm_calls(3), llm, InMemoryToolRegistry::new());
    let plan = runner.generate_plan("think thrice").await.unwrap();
    let shared = runner.run_plan(&plan).await.unwrap();
    assert_eq!(shared.state(), WorkflowState::Complete, "{:?}", shared.failure());
    let own = runner.run_plan(&plan).count_planning().await.unwrap();
    assert_eq!(own.state(), WorkflowState::Failed);
    assert_eq!(own.failure().unwrap().kind, FailureKind::BudgetExceeded);
    assert_eq!(own.usage().total.llm_calls, 3, "the planning and two steps; the third step's call was refused");
}

#[tokio::test]
async fn a_run_whose_last_call_spends_the_budget_exactly_completes_with_its_answer() {
    let two_thoughts = PlanBuilder::new("think twice").step("one", None, "$a").step("two", None, "$b").build();
    for budget in [Budget::default().llm_calls(2), Budget::default().tokens(22), Budget::default().tokens(15)] {
        let llm = ScriptedLlm::new().respond(reply(10, 1)).respond(reply(10, 1));
        let (runner, _) = runner(budget.clone(), llm, InMemoryToolRegistry::new());
        let done = runner.run_plan(&two_thoughts).await.unwrap();
        assert_eq!(done.state(), WorkflowState::Complete, "{budget:?}: {:?}", done.failure());
        let answer = done.outputs().final_output.as_ref().map(|o| o.value.to_string());
        assert_eq!(answer.as_deref(), Some("\"thought\""), "{budget:?}");
        assert_eq!(done.usage().total.llm_calls, 2);
    }
    // Ending on a loop: the loop is finished (its output recorded) after its last
    // item's call spent the budget; that is no work to refuse.
    let items = MockTool::returning("items_tool", json!(["a", "b"]));
    let looped = PlanBuilder::new("think per item")
        .step("List", Some("items_tool"), "$items")
        .args(json!({}))
        .step("Think about $item", None, "$thoughts")
        .for_each("$items")
        .build();
    let llm = ScriptedLlm::new().respond(reply(10, 1)).respond(reply(10, 1));
    let (runner, _) = runner(Budget::default().llm_calls(2), llm, InMemoryToolRegistry::new().with(items).unwrap());
    let done = runner.run_plan(&looped).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(*done.outputs().step_outputs.get("$thoughts").unwrap().value, json!(["thought", "thought"]));
}
