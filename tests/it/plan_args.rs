//! Plan-time arguments (no LLM call for a tool step whose plan fixes its
//! arguments), plan validation, the step's own tool only, and clipped outputs.

use std::sync::Arc;

use common::{config, harness, last_user_text};
use portia::config::ExecutionMode;
use portia::llm::Role;
use portia::plan::PlanProblem;
use portia::testing::{MockTool, ScriptedLlm};
use portia::tool::ToolRunContext;
use portia::{
    Config, Error, InMemoryToolRegistry, Plan, PlanBuilder, ToolError, ToolOutput, ToolSpec, TypedTool, Variable,
    WorkflowState,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common;

const QUERY: &str = "Which stock price grew faster in 2024, Amazon or Google?";

#[derive(Deserialize, JsonSchema)]
struct SearchArgs {
    /// What to search the web for.
    search_query: String,
}

#[derive(Debug)]
struct FakeSearch;

#[async_trait::async_trait]
impl TypedTool for FakeSearch {
    type Args = SearchArgs;
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("search_tool", "Search Tool", "Searches the web.").read_only()
    }
    async fn call(&self, _ctx: &ToolRunContext, args: SearchArgs) -> Result<ToolOutput, ToolError> {
        let growth = if args.search_query.to_lowercase().contains("amazon") { "44.4%" } else { "35.5%" };
        Ok(ToolOutput::value(json!({"answer": format!("{} rose {growth} in 2024.", args.search_query)})))
    }
}

fn search_tools() -> InMemoryToolRegistry {
    InMemoryToolRegistry::new().with(FakeSearch).unwrap()
}

fn seed_plan_with_args() -> Value {
    json!({"steps": [
        {"task": "Search Amazon's 2024 stock growth.", "inputs": [], "tool_id": "search_tool",
         "output": "$amazon", "args": {"search_query": "Amazon stock price growth 2024"}},
        {"task": "Search Google's 2024 stock growth.", "inputs": [], "tool_id": "search_tool",
         "output": "$google", "args": {"search_query": "Google stock price growth 2024"}},
        {"task": "Say which grew faster.", "tool_id": null, "output": "$answer", "args": null,
         "inputs": [{"name": "$amazon", "description": "Amazon's growth"}, {"name": "$google", "description": "Google's growth"}]}
    ]})
}

#[tokio::test]
async fn seed_scenario_with_planned_arguments_takes_three_llm_calls_and_under_1200_prompt_tokens() {
    let llm = ScriptedLlm::new().json(seed_plan_with_args()).text("Amazon grew faster.").text("Amazon: +44.4%.");
    let h = harness(Config::default(), search_tools(), llm);
    let workflow = h.runner.execute_query(QUERY).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    let total = workflow.usage().total;
    assert_eq!(total.llm_calls, 3, "plan, comparison, summary: the searches need no LLM call");
    assert!(total.prompt_tokens <= 1200, "{total:?}");
    let searched: Vec<Value> =
        h.runner.tool_calls(workflow.id()).await.unwrap().into_iter().map(|c| c.input.into_value()).collect();
    assert!(searched.contains(&json!({"search_query": "Amazon stock price growth 2024"})), "{searched:?}");
    let planner = &h.llm.requests()[0];
    let schema = planner.output_schema.as_ref().unwrap().schema.to_string();
    assert!(schema.contains("\"args\""), "the planner may fill in arguments: {schema}");
}

#[tokio::test]
async fn a_hand_written_plan_with_fixed_arguments_runs_its_tool_steps_without_the_llm() {
    let plan = PlanBuilder::new(QUERY)
        .step("Search Amazon", Some("search_tool"), "$amazon")
        .args(json!({"search_query": "Amazon 2024"}))
        .step("Search Google", Some("search_tool"), "$google")
        .args(json!({"search_query": "Google 2024"}))
        .build();
    let h = harness(config(ExecutionMode::Parallel, false), search_tools(), ScriptedLlm::new());
    let workflow = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert!(h.llm.requests().is_empty(), "a deterministic plan makes no LLM call");
    assert_eq!(workflow.outputs().final_output.as_ref().unwrap().value["answer"], "Google 2024 rose 35.5% in 2024.");
}

#[tokio::test]
async fn references_in_arguments_become_earlier_outputs_and_the_step_waits_for_them() {
    let echo = Arc::new(MockTool::echo("echo_tool"));
    let mut tools = InMemoryToolRegistry::new().with(MockTool::returning("count_tool", json!({"n": 2}))).unwrap();
    tools.register(echo.clone()).unwrap();
    // The echo step comes first and declares no input: only its arguments make it wait.
    let plan = PlanBuilder::new("q")
        .step("Echo the count", Some("echo_tool"), "$echoed")
        .args(json!({"data": "$count", "note": "got $count", "price": "$5"}))
        .step("Count", Some("count_tool"), "$count")
        .args(json!({}))
        .build();
    assert!(plan.problems(&tools).contains(&PlanProblem::UnknownArgReference { step: 0, reference: "$count".into() }));
    let plan = PlanBuilder::new("q")
        .step("Count", Some("count_tool"), "$count")
        .args(json!({}))
        .step("Echo the count", Some("echo_tool"), "$echoed")
        .args(json!({"data": "$count", "note": "got $count", "price": "$5"}))
        .build();
    let h = harness(config(ExecutionMode::Parallel, false), tools, ScriptedLlm::new());
    let workflow = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    let expected = json!({"data": {"n": 2}, "note": "got {\"n\":2}", "price": "$5"});
    assert_eq!(echo.calls()[0].args, expected, "a whole-string reference keeps its JSON type");
}

/// A reference into an output along a path it lacks (`$list[10]` of a three-item
/// list) used to reach the tool as that literal text.
#[tokio::test]
async fn an_argument_reaching_past_an_output_fails_the_step_before_its_tool_runs() {
    let echo = Arc::new(MockTool::echo("echo_tool"));
    let mut tools = InMemoryToolRegistry::new().with(MockTool::returning("list_tool", json!(["a", "b", "c"]))).unwrap();
    tools.register(echo.clone()).unwrap();
    let plan = |reference: &str| {
        PlanBuilder::new("q")
            .step("List", Some("list_tool"), "$list")
            .args(json!({}))
            .step("Echo an item", Some("echo_tool"), "$echoed")
            .args(json!({"item": reference, "note": "the last is $list[-1]"}))
            .build()
    };
    let h = harness(config(ExecutionMode::Parallel, false), tools, ScriptedLlm::new());
    let workflow = h.runner.run_plan(&plan("$list[10]")).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Failed);
    let failure = workflow.failure().unwrap();
    assert_eq!(failure.kind, portia::FailureKind::InvalidStep);
    assert_eq!(failure.step, Some(1));
    assert!(failure.message.contains("`$list[10]` leads nowhere: $list is a list of 3 items"), "{}", failure.message);
    assert!(echo.calls().is_empty(), "the tool never saw the literal reference");

    let workflow = h.runner.run_plan(&plan("$list[2]")).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert_eq!(echo.calls()[0].args, json!({"item": "c", "note": "the last is c"}));
}

#[tokio::test]
async fn arguments_that_do_not_fit_the_schema_fall_back_to_the_agent() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let tool = Arc::new(MockTool::echo("weather_tool").with_schema(schema));
    let mut tools = InMemoryToolRegistry::new();
    tools.register(tool.clone()).unwrap();
    let plan =
        PlanBuilder::new("q").step("Weather in Oslo", Some("weather_tool"), "$w").args(json!({"city": 47})).build();
    let llm = ScriptedLlm::new().tool_call("weather_tool", json!({"city": "Oslo"}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let workflow = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert_eq!(tool.calls().len(), 1, "the ill-fitting arguments were never sent");
    assert_eq!(tool.calls()[0].args, json!({"city": "Oslo"}));
    let prompt = last_user_text(&h.llm.requests()[0]);
    assert!(prompt.contains("The plan suggested the arguments {\"city\":47}") && prompt.contains("`city`"), "{prompt}");
}

#[test]
fn plans_without_arguments_load_and_serialize_as_before() {
    let text = std::fs::read_to_string("tests/fixtures/seed_plan.json").unwrap();
    let plan: Plan = serde_json::from_str(&text).unwrap();
    assert!(plan.steps.iter().all(|s| s.args.is_none()));
    let written = serde_json::to_value(&plan).unwrap();
    assert!(written["steps"].as_array().unwrap().iter().all(|s| s.get("args").is_none()), "{written}");
    let with_args = PlanBuilder::new("q").step("t", Some("x"), "$x").args(json!({"a": 1})).build();
    let back: Plan = serde_json::from_value(serde_json::to_value(&with_args).unwrap()).unwrap();
    assert_eq!(back, with_args);
}

#[tokio::test]
async fn an_empty_plan_is_refused() {
    let h = harness(config(ExecutionMode::Parallel, false), search_tools(), ScriptedLlm::new());
    let err = h.runner.run_plan(&PlanBuilder::new("q").build()).await.unwrap_err();
    assert!(matches!(&err, Error::InvalidPlan(problems) if problems == &[PlanProblem::NoSteps]), "{err:?}");
}

#[test]
fn output_names_are_a_dollar_and_an_identifier() {
    let tools = search_tools();
    let plan = PlanBuilder::new("q").step("a", None, "").step("b", None, "plain").step("c", None, "$ok_1").build();
    let problems = plan.problems(&tools);
    assert_eq!(
        problems,
        [
            PlanProblem::InvalidOutputName { step: 0, output: String::new() },
            PlanProblem::InvalidOutputName { step: 1, output: "plain".into() },
        ]
    );
    assert!(problems[1].to_string().contains("$ followed by"), "{}", problems[1]);
}

#[test]
fn a_constant_naming_an_earlier_output_must_be_declared_as_a_reference() {
    let mut plan = PlanBuilder::new("q").step("one", None, "$step_one").step("two", None, "$step_two").build();
    // Portia's own test writes `Variable(name="a", value="$step_one")`.
    plan.steps[1].inputs.push(Variable::constant("a", "$step_one", "the first result"));
    let problems = plan.problems(&search_tools());
    let expected = PlanProblem::ConstantNamesOutput { step: 1, input: "a".into(), output: "$step_one".into() };
    assert_eq!(problems, std::slice::from_ref(&expected));
    assert!(expected.to_string().contains("declare it as a reference"), "{expected}");
    plan.steps[1].inputs[0] = Variable::reference("$step_one", "the first result");
    assert!(plan.problems(&search_tools()).is_empty());
}

#[test]
fn arguments_must_be_an_object_on_a_step_with_a_tool() {
    let plan = PlanBuilder::new("q")
        .step("a", Some("search_tool"), "$a")
        .args(json!("Amazon"))
        .step("b", None, "$b")
        .args(json!({"x": 1}))
        .build();
    let problems = plan.problems(&search_tools());
    assert!(matches!(
        &problems[..],
        [PlanProblem::InvalidArgs { step: 0, .. }, PlanProblem::InvalidArgs { step: 1, .. }]
    ));
}

#[tokio::test]
async fn a_call_to_another_tool_is_not_run_and_is_shown_to_the_model() {
    let calculator = Arc::new(MockTool::echo("calculator_tool"));
    let rm_rf = Arc::new(MockTool::echo("rm_rf_tool"));
    let mut tools = InMemoryToolRegistry::new();
    tools.register(calculator.clone()).unwrap();
    tools.register(rm_rf.clone()).unwrap();
    let plan = PlanBuilder::new("q").step("Add 2 and 3", Some("calculator_tool"), "$sum").build();
    let llm = ScriptedLlm::new()
        .tool_call("rm_rf_tool", json!({"path": "/"}))
        .tool_call("calculator_tool", json!({"expression": "2 + 3"}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let workflow = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert!(rm_rf.calls().is_empty());
    let sent: Vec<Value> = calculator.calls().into_iter().map(|c| c.args).collect();
    assert_eq!(sent, [json!({"expression": "2 + 3"})], "never the other tool's arguments");
    let second = &h.llm.requests()[1];
    let shown = second.messages.iter().find(|m| m.role == Role::Tool).unwrap();
    assert!(shown.content.contains("can only call calculator_tool, not rm_rf_tool"), "{}", shown.content);
}

#[tokio::test]
async fn a_huge_output_is_stored_whole_but_clipped_in_every_prompt() {
    let huge = "x".repeat(50_000);
    let tools = InMemoryToolRegistry::new().with(MockTool::returning("fetch_tool", json!(huge))).unwrap();
    let plan = PlanBuilder::new("q")
        .step("Fetch the page", Some("fetch_tool"), "$page")
        .args(json!({}))
        .step("Say what it holds", None, "$gist")
        .input("$page", "the page")
        .build();
    let llm = ScriptedLlm::new().text("Many x.").text("It is all x.");
    let config = Config::builder().max_output_chars(2_000usize).build().unwrap();
    let h = harness(config, tools, llm);
    let workflow = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert_eq!(workflow.outputs().step_outputs.get("$page").unwrap().value, json!(huge), "stored whole");
    let requests = h.llm.requests();
    assert_eq!(requests.len(), 2, "the step that reads the page, and the final summary");
    for request in requests {
        let prompt = last_user_text(&request);
        assert!(prompt.len() < 3_000, "{} characters", prompt.len());
        assert!(prompt.contains(" of 50000 characters are shown]"), "{prompt}");
    }
    let step_prompt = last_user_text(&h.llm.requests()[0]);
    assert!(step_prompt.contains("…[clipped: only the first 2000 of 50000 characters are shown]"), "{step_prompt}");
}
