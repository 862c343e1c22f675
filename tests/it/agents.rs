//! Planner and agents end to end with the scripted LLM: the seed scenario, errors,
//! retries, clarifications and the context each step receives.

use std::sync::Arc;

use common::{config, harness, last_user_text};
use portia::config::{AgentKind, ExecutionMode};
use portia::llm::{LlmRequest, LlmResponse, ToolCall, ToolChoice};
use portia::testing::{MockBehavior, MockTool, ScriptedLlm};
use portia::tool::ToolRunContext;
use portia::{
    Config, Error, ExecutionContext, InMemoryToolRegistry, PlanBuilder, ToolError, ToolOutput, ToolSpec, TypedTool,
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

/// Answers like Tavily does for the two stocks of the seed scenario.
#[derive(Debug)]
struct FakeSearch;

#[async_trait::async_trait]
impl TypedTool for FakeSearch {
    type Args = SearchArgs;
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("search_tool", "Search Tool", "Searches the web and returns an answer with sources.").read_only()
    }
    async fn call(&self, _ctx: &ToolRunContext, args: SearchArgs) -> Result<ToolOutput, ToolError> {
        let (answer, title) = if args.search_query.to_lowercase().contains("amazon") {
            ("Amazon (AMZN) stock rose about 44.4% in 2024, from $151.94 to $219.39.", "AMZN 2024")
        } else {
            ("Alphabet (GOOGL) stock rose about 35.5% in 2024, from $139.69 to $189.30.", "GOOGL 2024")
        };
        Ok(ToolOutput::value(json!({
            "answer": answer,
            "results": [{"title": title, "url": "https://example.com/fake", "content": answer}]
        })))
    }
}

fn seed_plan_reply() -> Value {
    json!({"steps": [
        {"task": "Search for the stock price growth of Amazon (AMZN) in 2024.", "inputs": [],
         "tool_id": "search_tool", "output": "$amazon_stock_growth"},
        {"task": "Search for the stock price growth of Google (Alphabet, GOOGL) in 2024.", "inputs": [],
         "tool_id": "search_tool", "output": "$google_stock_growth"},
        {"task": "Compare the 2024 stock price growth of Amazon and Google and say which grew faster.",
         "inputs": [
            {"name": "$amazon_stock_growth", "description": "Amazon's 2024 growth."},
            {"name": "$google_stock_growth", "description": "Google's 2024 growth."}],
         "tool_id": null, "output": "$faster_growth"}
    ]})
}

/// Replies to each step from what its prompt asks, since parallel steps call in any order.
fn step_reply(request: &LlmRequest) -> Result<LlmResponse, portia::llm::LlmError> {
    let prompt = last_user_text(request);
    let call = |query: &str| LlmResponse {
        tool_calls: vec![ToolCall {
            id: "c1".into(),
            name: "search_tool".into(),
            arguments: json!({"search_query": query}),
        }],
        ..LlmResponse::default()
    };
    if prompt.starts_with("Task: Search for the stock price growth of Amazon") {
        Ok(call("Amazon stock price growth 2024"))
    } else if prompt.starts_with("Task: Search for the stock price growth of Google") {
        Ok(call("Google stock price growth 2024"))
    } else {
        Ok(LlmResponse::text("Amazon grew faster in 2024: +44.4% against +35.5% for Alphabet."))
    }
}

fn seed_llm() -> ScriptedLlm {
    ScriptedLlm::new()
        .json(seed_plan_reply())
        .respond_with(step_reply)
        .respond_with(step_reply)
        .respond_with(step_reply)
        .text("Amazon's stock grew faster in 2024 (+44.4%) than Alphabet's (+35.5%).")
}

#[tokio::test]
async fn seed_scenario_plans_searches_compares_and_summarizes_in_five_calls() {
    let tools = InMemoryToolRegistry::new().with(FakeSearch).unwrap();
    let h = harness(Config::default(), tools, seed_llm());

    let plan = h.runner.generate_plan(QUERY).await.unwrap();
    assert_eq!(plan.plan_context.query, QUERY);
    assert_eq!(plan.plan_context.tool_ids, ["search_tool"]);
    let outputs: Vec<&str> = plan.steps.iter().map(|s| s.output.as_str()).collect();
    assert_eq!(outputs, ["$amazon_stock_growth", "$google_stock_growth", "$faster_growth"]);
    assert_eq!(plan.steps[2].tool_id, None);

    let workflow = h.runner.create_workflow(&plan).await.unwrap();
    let workflow = h.runner.execute_workflow(workflow).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert_eq!(workflow.current_step_index(), 2);
    let amazon = &workflow.outputs().step_outputs.get("$amazon_stock_growth").unwrap().value;
    assert!(amazon["answer"].as_str().unwrap().contains("44.4%"), "tool values keep their JSON shape");
    let final_output = workflow.outputs().final_output.as_ref().unwrap();
    assert_eq!(final_output.value, json!("Amazon grew faster in 2024: +44.4% against +35.5% for Alphabet."));
    assert_eq!(
        final_output.summary.as_deref(),
        Some("Amazon's stock grew faster in 2024 (+44.4%) than Alphabet's (+35.5%).")
    );

    let requests = h.llm.requests();
    assert_eq!(requests.len(), 5, "planner 1, one per step, summary 1");
    let compare = requests.iter().find(|r| last_user_text(r).starts_with("Task: Compare")).unwrap();
    let context = last_user_text(compare);
    assert!(
        context.contains("- $amazon_stock_growth (Amazon's 2024 growth.): {\"answer\":\"Amazon (AMZN) stock rose"),
        "{context}"
    );
    assert!(context.contains("$google_stock_growth"), "{context}");
    assert!(compare.tools.is_empty(), "a step without a tool is one plain LLM call");
    assert_eq!(plan.usage.llm_calls, 1, "the plan records what it cost");
    assert_eq!(workflow.usage().planning, plan.usage, "a plan made apart is referenced");
    assert_eq!(workflow.usage().total.llm_calls, 4, "three steps and the summary");
    assert_eq!(workflow.usage().steps["$faster_growth"].llm_calls, 1);
}

#[tokio::test]
async fn seed_scenario_stays_within_the_prompt_token_budget() {
    let tools = InMemoryToolRegistry::new().with(FakeSearch).unwrap();
    let h = harness(Config::default(), tools, seed_llm());
    let workflow = h.runner.execute_query(QUERY).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    // The scripted LLM counts tokens as the simulated APIs do (4 characters each, over messages,
    // tools and schema). The Python SDK spends 10,734 prompt tokens on this query.
    let prompt_tokens = workflow.usage().total.prompt_tokens;
    assert!(prompt_tokens < 4_000, "{prompt_tokens} prompt tokens");
    assert_eq!(workflow.usage().planning.llm_calls, 1);
    assert_eq!(workflow.usage().total.llm_calls, 5);
}

#[tokio::test]
async fn planner_prompt_shows_tools_with_arguments_date_context_and_examples() {
    let tools = InMemoryToolRegistry::new().with(FakeSearch).unwrap();
    let example = PlanBuilder::new("Weather in Paris?").step("Get the weather", Some("weather_tool"), "$w").build();
    let llm = ScriptedLlm::new().json(seed_plan_reply());
    let h = harness(Config::default(), tools, llm);
    let context =
        ExecutionContext::for_end_user("dana").with_data("plan", "pro").with_planner_instruction("Prefer few steps.");
    h.runner.generate_plan(QUERY).examples(vec![example]).execution_context(context).await.unwrap();
    let request = &h.llm.requests()[0];
    let system = &request.messages[0].content;
    assert!(system.contains("- search_tool: Searches the web"), "{system}");
    assert!(system.contains("search_query (string, required): What to search the web for."), "{system}");
    assert!(system.contains("Query: Weather in Paris? -> {\"steps\""), "{system}");
    let prompt = last_user_text(request);
    assert!(prompt.contains("End user: dana") && prompt.contains("plan: pro"), "{prompt}");
    assert!(prompt.contains("Note: Prefer few steps."), "{prompt}");
    assert!(prompt.contains("Today: 2026-11-25"), "{prompt}");
    assert!(prompt.ends_with(&format!("Query: {QUERY}")), "{prompt}");
    assert_eq!(request.output_schema.as_ref().unwrap().name, "StepsOrError");
}

/// Providers cache the longest prefix two prompts share (OpenAI and Gemini on their
/// own, Anthropic and Bedrock up to their marks at the end of the system prompt): the
/// instructions, the tool list and the examples are the system prompt, the same for
/// every query and user, and what varies is the user message after it.
#[tokio::test]
async fn planner_prompts_for_different_queries_and_users_share_their_system_prompt() {
    let tools = InMemoryToolRegistry::new().with(FakeSearch).unwrap();
    let example = PlanBuilder::new("Weather in Paris?").step("Get the weather", Some("weather_tool"), "$w").build();
    let llm = ScriptedLlm::new().json(seed_plan_reply()).json(seed_plan_reply());
    let h = harness(Config::default(), tools, llm);
    let dana = ExecutionContext::for_end_user("dana").with_data("plan", "pro");
    h.runner.generate_plan(QUERY).examples(vec![example.clone()]).execution_context(dana).await.unwrap();
    let query = "Which grew faster in 2024, Apple or Microsoft?";
    h.runner.generate_plan(query).examples(vec![example]).execution_context(ExecutionContext::default()).await.unwrap();

    let requests = h.llm.requests();
    assert_eq!(requests[0].messages[0], requests[1].messages[0], "the same system prompt");
    let system = &requests[0].messages[0].content;
    for stable in ["- search_tool:", "Query: Weather in Paris? ->"] {
        assert!(system.contains(stable), "{stable} is in the system prompt:\n{system}");
    }
    let first = last_user_text(&requests[0]);
    for varying in ["End user: dana", "Today:", &format!("Query: {QUERY}")] {
        assert!(first.contains(varying) && !system.contains(varying), "{varying} is in the user message:\n{first}");
    }
}

#[tokio::test]
async fn invalid_plan_is_reasked_with_its_problems_then_accepted() {
    let bad = json!({"steps": [{"task": "Compare", "inputs": [{"name": "$nope", "description": "?"}],
                                "tool_id": "stock_tool", "output": "$x"}]});
    let llm = ScriptedLlm::new().json(bad).json(seed_plan_reply());
    let h = harness(Config::default(), InMemoryToolRegistry::new().with(FakeSearch).unwrap(), llm);
    let plan = h.runner.generate_plan(QUERY).await.unwrap();
    assert_eq!(plan.steps.len(), 3);
    let retry = last_user_text(&h.llm.requests()[1]);
    assert!(retry.contains("step 0 reads $nope, which no earlier step outputs"), "{retry}");
    assert!(retry.contains("\"stock_tool\", which is not in the tool registry"), "{retry}");
}

#[tokio::test]
async fn planner_gives_up_after_the_configured_attempts() {
    let bad = json!({"steps": [{"task": "x", "inputs": [], "tool_id": "stock_tool", "output": "$x"}]});
    let llm = ScriptedLlm::new().json(bad.clone()).json(bad);
    let config = Config::builder().planner_attempts(2u32).build().unwrap();
    let h = harness(config, InMemoryToolRegistry::new(), llm);
    let err = h.runner.generate_plan(QUERY).await.unwrap_err();
    assert!(matches!(&err, Error::Planning { problems, .. } if !problems.is_empty()), "{err}");
    assert!(
        err.to_string().contains("no valid plan after 2 attempts") && err.to_string().contains("stock_tool"),
        "{err}"
    );
}

#[tokio::test]
async fn planner_error_is_reported_in_its_own_words() {
    // With an empty list of steps, and with the error alone.
    for reply in
        [json!({"steps": [], "error": "No tool can book flights."}), json!({"error": "No tool can book flights."})]
    {
        let h = harness(Config::default(), InMemoryToolRegistry::new(), ScriptedLlm::new().json(reply));
        let err = h.runner.generate_plan("Book me a flight").await.unwrap_err();
        assert!(
            matches!(&err, Error::Planning { message, .. } if message.contains("No tool can book flights.")),
            "{err}"
        );
        assert_eq!(h.llm.requests().len(), 1, "an error is not re-asked");
    }
}

#[tokio::test]
async fn malformed_planner_json_is_reasked_once_with_the_parse_error() {
    let llm = ScriptedLlm::new().text("Here is your plan: steps...").json(seed_plan_reply());
    let h = harness(Config::default(), InMemoryToolRegistry::new().with(FakeSearch).unwrap(), llm);
    let plan = h.runner.generate_plan(QUERY).await.unwrap();
    assert_eq!(plan.steps.len(), 3);
    assert!(last_user_text(&h.llm.requests()[1]).contains("not valid JSON for the StepsOrError schema"));
}

fn one_step(tool: MockTool) -> (InMemoryToolRegistry, portia::Plan) {
    let id = portia::Tool::spec(&tool).id;
    let plan = PlanBuilder::new("q").step("Look up the weather in Paris", Some(&id), "$out").build();
    (InMemoryToolRegistry::new().with(tool).unwrap(), plan)
}

#[tokio::test]
async fn the_step_tool_is_forced_and_its_value_is_the_output() {
    let (tools, plan) = one_step(MockTool::returning("weather_tool", json!({"temp": 21})));
    let h = harness(
        config(ExecutionMode::Sequential, false),
        tools,
        ScriptedLlm::new().tool_call("weather_tool", json!({})),
    );
    let done = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!({"temp": 21}));
    let request = &h.llm.requests()[0];
    assert_eq!(request.tool_choice, ToolChoice::Tool("weather_tool".into()));
    assert_eq!(request.tools.len(), 1);
}

#[tokio::test]
async fn text_instead_of_a_tool_call_is_reasked_once() {
    let (tools, plan) = one_step(MockTool::returning("weather_tool", json!("sunny")));
    let llm = ScriptedLlm::new().text("It is probably sunny.").tool_call("weather_tool", json!({}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let done = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert!(last_user_text(&h.llm.requests()[1]).contains("call the tool weather_tool now"));
}

#[tokio::test]
async fn text_twice_instead_of_a_tool_call_fails_the_step_clearly() {
    let (tools, plan) = one_step(MockTool::returning("weather_tool", json!("sunny")));
    let llm = ScriptedLlm::new().text("Sunny.").text("Still sunny.");
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let done = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Failed);
    let message = done.failure().unwrap().message.clone();
    assert!(message.contains("answered in text instead of calling tool weather_tool: Still sunny."), "{message}");
    assert_eq!(done.failure().unwrap().kind, portia::workflow::FailureKind::Agent);
}

#[tokio::test]
async fn a_soft_error_is_shown_to_the_model_and_retried() {
    let (tools, plan) = one_step(MockTool::new("weather_tool", MockBehavior::SoftErrorsThen(1, json!("sunny"))));
    let llm = ScriptedLlm::new()
        .tool_call("weather_tool", json!({"city": "Pari"}))
        .tool_call("weather_tool", json!({"city": "Paris"}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let done = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("sunny"));
    let retry = &h.llm.requests()[1];
    let tool_message = retry.messages.last().unwrap();
    assert_eq!(tool_message.role, portia::llm::Role::Tool);
    assert!(tool_message.content.starts_with("Error: transient failure #1"), "{}", tool_message.content);
}

#[tokio::test]
async fn soft_errors_fail_the_step_after_three_retries_with_every_message() {
    let (tools, plan) = one_step(MockTool::new("weather_tool", MockBehavior::AlwaysSoft("rate limited".into())));
    let llm = (0..4).fold(ScriptedLlm::new(), |llm, _| llm.tool_call("weather_tool", json!({})));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let done = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Failed);
    let message = done.failure().unwrap().message.clone();
    assert!(message.starts_with("Tool weather_tool failed after 4 attempts: rate limited #1;"), "{message}");
    assert!(message.contains("rate limited #4"), "{message}");
    assert_eq!(done.failure().unwrap().kind, portia::workflow::FailureKind::ToolRetriesExhausted);
}

#[tokio::test]
async fn a_hard_error_fails_at_once() {
    let (tools, plan) = one_step(MockTool::new("weather_tool", MockBehavior::Hard("API key revoked".into())));
    let h = harness(
        config(ExecutionMode::Sequential, false),
        tools,
        ScriptedLlm::new().tool_call("weather_tool", json!({})),
    );
    let done = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Failed);
    assert_eq!(done.failure().unwrap().message, "Tool weather_tool failed: API key revoked");
    assert_eq!(done.failure().unwrap().kind, portia::workflow::FailureKind::ToolError);
    assert_eq!(done.outputs().final_output, None);
    assert!(done.outputs().step_outputs.is_empty(), "an error never becomes an output");
}

#[tokio::test]
async fn arguments_failing_the_schema_never_reach_the_tool_or_become_an_output() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let tool = Arc::new(MockTool::echo("weather_tool").with_schema(schema));
    let tools = InMemoryToolRegistry::from_tools([tool.clone() as Arc<dyn portia::Tool>]).unwrap();
    let plan = PlanBuilder::new("q").step("Weather in Paris", Some("weather_tool"), "$w").build();
    let llm = ScriptedLlm::new()
        .tool_call("weather_tool", json!({"town": "Paris"}))
        .tool_call("weather_tool", json!({"city": "Paris"}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let done = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!({"city": "Paris"}));
    assert_eq!(tool.calls().len(), 1, "the invalid arguments were never sent to the tool");
    let requests = h.llm.requests();
    let feedback = &requests[1].messages.last().unwrap().content;
    assert!(feedback.contains("the required argument `city` is missing"), "{feedback}");
}

#[tokio::test]
async fn a_tools_multiple_choice_clarification_pauses_and_resumes() {
    let options = vec![json!("report-2023.csv"), json!("report-2024.csv")];
    let (tools, plan) = one_step(MockTool::new("file_tool", MockBehavior::ClarifyChoice("filename".into(), options)));
    let llm = ScriptedLlm::new().tool_call("file_tool", json!({})).tool_call("file_tool", json!({}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let waiting = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    let clarification = waiting.outputs().clarifications[0].clone();
    assert_eq!(clarification.category(), "Multiple Choice");
    let ready = h.runner.resolve_clarification(&clarification, "report-2024.csv").await.unwrap();
    let done = h.runner.execute_workflow(ready).await.unwrap();
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("report-2024.csv"));
}

fn verifier_config() -> Config {
    Config::builder()
        .agent(AgentKind::Verifier)
        .execution(portia::config::ExecutionMode::Sequential)
        .summarize_final_output(false)
        .build()
        .unwrap()
}

#[tokio::test]
async fn verifier_asks_for_a_missing_argument_instead_of_inventing_it() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string", "description": "The city."}}, "required": ["city"]});
    let tool = Arc::new(MockTool::echo("weather_tool").with_schema(schema));
    let tools = InMemoryToolRegistry::from_tools([tool.clone() as Arc<dyn portia::Tool>]).unwrap();
    let plan = PlanBuilder::new("q").step("Get the weather where the user lives", Some("weather_tool"), "$w").build();
    let missing = json!({"arguments": [{"name": "city", "value": null, "source": "missing"}]});
    let llm = ScriptedLlm::new().json(missing.clone()).json(missing);
    let h = harness(verifier_config(), tools, llm);

    let waiting = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    assert!(tool.calls().is_empty(), "the tool is not called with a made-up value");
    let clarification = waiting.outputs().clarifications[0].clone();
    assert_eq!((clarification.category(), clarification.argument_name()), ("Input", Some("city")));
    assert_eq!(clarification.user_guidance, "Please provide a value for `city`. The city.");

    let ready = h.runner.resolve_clarification(&clarification, "Porto").await.unwrap();
    let done = h.runner.execute_workflow(ready).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(tool.calls()[0].args, json!({"city": "Porto"}));
    assert!(last_user_text(&h.llm.requests()[1]).contains("- city: Porto"), "the verifier saw the answer on resume");
}

#[tokio::test]
async fn verifier_calls_the_tool_directly_when_every_argument_is_supported() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let tool = Arc::new(MockTool::echo("weather_tool").with_schema(schema));
    let tools = InMemoryToolRegistry::from_tools([tool.clone() as Arc<dyn portia::Tool>]).unwrap();
    let plan = PlanBuilder::new("q").step("Weather in Paris", Some("weather_tool"), "$w").build();
    let llm = ScriptedLlm::new().json(json!({"arguments": [{"name": "city", "value": "Paris", "source": "task"}]}));
    let h = harness(verifier_config(), tools, llm);
    let done = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!({"city": "Paris"}));
    assert_eq!(h.llm.requests().len(), 1, "one LLM call for a verified step");
}

#[derive(Deserialize, JsonSchema)]
struct NoArgs {}

#[derive(Debug)]
struct LongReport;

#[async_trait::async_trait]
impl TypedTool for LongReport {
    type Args = NoArgs;
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("report_tool", "Report Tool", "Returns a long report.").summarize(true)
    }
    async fn call(&self, _ctx: &ToolRunContext, _args: NoArgs) -> Result<ToolOutput, ToolError> {
        Ok(ToolOutput::value("a very long report ".repeat(50)))
    }
}

#[tokio::test]
async fn tools_that_ask_for_it_get_a_step_summary() {
    let tools = InMemoryToolRegistry::new().with(LongReport).unwrap();
    let plan = PlanBuilder::new("q").step("Get the report", Some("report_tool"), "$r").build();
    let llm = ScriptedLlm::new().tool_call("report_tool", json!({})).text("A short summary.");
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let done = h.runner.run_plan(&plan).await.unwrap();
    let output = done.outputs().step_outputs.get("$r").unwrap();
    assert_eq!(output.summary.as_deref(), Some("A short summary."));
    assert!(output.value.as_str().unwrap().starts_with("a very long report"));
    assert_eq!(done.usage().steps["$r"].llm_calls, 2);
}

#[tokio::test]
async fn each_step_receives_inputs_earlier_outputs_answers_metadata_and_date() {
    let long = "x".repeat(1500);
    let tool = Arc::new(MockTool::new("ask_tool", MockBehavior::ClarifyInput("tone".into())));
    let tools = InMemoryToolRegistry::new()
        .with(MockTool::returning("long_tool", json!(long)))
        .unwrap()
        .with(MockTool::returning("short_tool", json!("<b>Tom & Jerry's</b>")))
        .unwrap();
    let mut tools = tools;
    tools.register(tool.clone()).unwrap();
    let plan = PlanBuilder::new("q")
        .step("Fetch the long text", Some("long_tool"), "$long")
        .step("Fetch the name", Some("short_tool"), "$name")
        .step("Write a greeting", Some("ask_tool"), "$greeting")
        .input("$name", "who to greet")
        .constant("language", "French", "the language")
        .build();
    let llm = ScriptedLlm::new()
        .tool_call("long_tool", json!({}))
        .tool_call("short_tool", json!({}))
        .tool_call("ask_tool", json!({}))
        .tool_call("ask_tool", json!({}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let context =
        ExecutionContext::for_end_user("u-7").with_data("locale", "fr-FR").with_agent_instruction("Be brief.");
    let workflow = h.runner.create_workflow(&plan).execution_context(context).await.unwrap();
    let waiting = h.runner.execute_workflow(workflow).await.unwrap();
    let clarification = waiting.outputs().clarifications[0].clone();
    let ready = h.runner.resolve_clarification(&clarification, "warm").await.unwrap();
    h.runner.execute_workflow(ready).await.unwrap();

    let prompt = last_user_text(&h.llm.requests()[3]);
    let expected_start = "Task: Write a greeting\nInputs:\n- $name (who to greet): <b>Tom & Jerry's</b>\n- language (the language): French\nEarlier outputs:\n- $long: ";
    assert!(prompt.starts_with(expected_start), "inputs in full, nothing escaped:\n{prompt}");
    let clipped = format!("{} …[clipped: only the first 1000 of 1500 characters are shown]", "x".repeat(1000));
    assert!(prompt.contains(&clipped), "other outputs are clipped, with a note:\n{prompt}");
    assert!(!prompt.contains(&"x".repeat(1001)));
    assert!(prompt.contains("The user's answers (these override anything else):\n- tone: warm"), "{prompt}");
    assert!(prompt.contains("End user: id u-7; locale: fr-FR"), "{prompt}");
    assert!(prompt.contains("Note: Be brief."), "{prompt}");
    assert!(prompt.ends_with("Today: 2026-11-25"), "{prompt}");
    let first = last_user_text(&h.llm.requests()[0]);
    assert!(first.contains("End user: id u-7"), "metadata reaches the first step too: {first}");
}

#[tokio::test]
async fn a_step_without_a_tool_is_one_llm_call_with_the_context() {
    let plan = PlanBuilder::new("q").step("Say hello in French", None, "$hello").constant("name", "Ana", "who").build();
    let h = harness(
        config(ExecutionMode::Sequential, false),
        InMemoryToolRegistry::new(),
        ScriptedLlm::new().text("Bonjour Ana"),
    );
    let done = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("Bonjour Ana"));
    let request = &h.llm.requests()[0];
    assert!(request.tools.is_empty());
    assert!(last_user_text(request).contains("- name (who): Ana"));
}

#[tokio::test]
async fn an_llm_failure_fails_the_step_with_the_providers_words() {
    let plan = PlanBuilder::new("q").step("Say hello", None, "$hello").build();
    let llm = ScriptedLlm::new().error(portia::llm::LlmError::Other("quota exceeded".into()));
    let h = harness(config(ExecutionMode::Sequential, false), InMemoryToolRegistry::new(), llm);
    let done = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Failed);
    assert_eq!(done.failure().unwrap().message, "LLM call failed: quota exceeded");
    assert_eq!(done.failure().unwrap().kind, portia::workflow::FailureKind::Llm);
}

#[tokio::test]
async fn verifier_does_not_trust_a_value_the_context_does_not_contain() {
    let schema = json!({"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]});
    let tool = Arc::new(MockTool::echo("mail_tool").with_schema(schema));
    let tools = InMemoryToolRegistry::from_tools([tool.clone() as Arc<dyn portia::Tool>]).unwrap();
    let plan = PlanBuilder::new("q").step("Email the report to Anna", Some("mail_tool"), "$sent").build();
    // The model claims the address comes from the task, but the task has none.
    let invented = json!({"arguments": [{"name": "email", "value": "anna@example.com", "source": "task"}]});
    let h = harness(verifier_config(), tools, ScriptedLlm::new().json(invented));
    let waiting = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    assert_eq!(waiting.outputs().clarifications[0].argument_name(), Some("email"));
    assert!(tool.calls().is_empty());
}
