//! Typed results: output schemas on plans and LLM steps, checked outputs, typed
//! reads of the final output, references inside outputs, and the seed in two calls.

use std::sync::Arc;

use common::{config, harness, last_user_text};
use portia::config::ExecutionMode;
use portia::plan::PlanProblem;
use portia::testing::{MockTool, ScriptedLlm};
use portia::{Config, Error, FailureKind, InMemoryToolRegistry, PlanBuilder, Runner, WorkflowState};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common;

#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
struct Verdict {
    faster: String,
    growth_pct: f64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[allow(dead_code)]
struct Ticket {
    urgent: bool,
    tags: Vec<String>,
}

fn echo_tools() -> InMemoryToolRegistry {
    InMemoryToolRegistry::new().with(MockTool::echo("echo_tool")).unwrap()
}

#[tokio::test]
async fn a_typed_last_step_answers_and_summarizes_in_one_structured_call() {
    let reply = json!({"answer": {"faster": "Amazon", "growth_pct": 44.4}, "summary": "Amazon grew faster."});
    let h = harness(Config::default(), InMemoryToolRegistry::new(), ScriptedLlm::new().json(reply));
    let plan = PlanBuilder::new("Which grew faster?").step("Say which grew faster", None, "$verdict").build();

    let run = h.runner.run_plan_as::<Verdict>(&plan).await.unwrap();

    assert_eq!(run.workflow.state(), WorkflowState::Complete);
    assert_eq!(run.workflow.usage().total.llm_calls, 1, "no separate summary call");
    let final_output = run.workflow.outputs().final_output.clone().unwrap();
    assert_eq!(final_output.summary.as_deref(), Some("Amazon grew faster."));
    let request = &h.llm.requests()[0];
    let schema = &request.output_schema.as_ref().unwrap().schema;
    assert_eq!(schema["properties"]["answer"]["required"], json!(["faster", "growth_pct"]), "{schema}");
    assert_eq!(run.into_output().unwrap(), Verdict { faster: "Amazon".into(), growth_pct: 44.4 });
}

#[tokio::test]
async fn a_typed_step_is_shown_its_problems_once_then_fails_with_schema_mismatch() {
    let llm = ScriptedLlm::new().json(json!({"urgent": "yes", "tags": []})).json(json!({"urgent": true}));
    let h = harness(config(ExecutionMode::Sequential, false), InMemoryToolRegistry::new(), llm);
    let plan = PlanBuilder::new("Triage").step("Classify the ticket", None, "$ticket").step_output::<Ticket>().build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Failed);
    let failure = workflow.failure().unwrap();
    assert_eq!((failure.kind, failure.step), (FailureKind::SchemaMismatch, Some(0)));
    assert!(failure.message.contains("`tags` is missing"), "{}", failure.message);
    let requests = h.llm.requests();
    assert_eq!(requests.len(), 2, "one retry, with the problems");
    let retry = last_user_text(&requests[1]);
    assert!(retry.contains("`urgent` must be of type boolean"), "{retry}");
}

#[tokio::test]
async fn a_typed_step_fixed_on_the_retry_stores_json_that_later_steps_reach_into() {
    let llm = ScriptedLlm::new().text("urgent, I think").json(json!({"urgent": true, "tags": ["billing", "refund"]}));
    let h = harness(config(ExecutionMode::Sequential, false), echo_tools(), llm);
    let plan = PlanBuilder::new("Triage")
        .step("Classify the ticket", None, "$ticket")
        .step_output::<Ticket>()
        .step("Route it", Some("echo_tool"), "$routed")
        .args(json!({"queue": "$ticket.tags[-1]", "urgent": "$ticket.urgent", "note": "first tag: $ticket.tags[0]"}))
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let outputs = &workflow.outputs().step_outputs;
    assert_eq!(outputs.get("$ticket").unwrap().value, json!({"urgent": true, "tags": ["billing", "refund"]}));
    assert_eq!(
        outputs.get("$routed").unwrap().value,
        json!({"queue": "refund", "urgent": true, "note": "first tag: billing"})
    );
    assert!(last_user_text(&h.llm.requests()[1]).contains("the reply is not JSON"));
}

#[tokio::test]
async fn inputs_reach_inside_outputs() {
    let llm = ScriptedLlm::new().json(json!({"urgent": false, "tags": ["a"]})).text("No reply needed.");
    let h = harness(config(ExecutionMode::Sequential, false), InMemoryToolRegistry::new(), llm);
    let plan = PlanBuilder::new("Triage")
        .step("Classify", None, "$ticket")
        .step_output::<Ticket>()
        .step("Decide", None, "$decision")
        .input("$ticket.urgent", "Whether it is urgent")
        .build();

    let workflow = h.runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete);
    let prompt = last_user_text(&h.llm.requests()[1]);
    assert!(prompt.contains("- $ticket.urgent (Whether it is urgent): false"), "{prompt}");
}

#[test]
fn a_reference_to_a_field_the_schema_lacks_is_a_plan_problem() {
    let plan = PlanBuilder::new("Triage")
        .step("Classify", None, "$ticket")
        .step_output::<Ticket>()
        .step("Route", Some("echo_tool"), "$routed")
        .args(json!({"queue": "$ticket.queue"}))
        .step("Decide", None, "$decision")
        .input("$ticket.tags[0].name", "A tag")
        .build();

    let problems = plan.problems(&echo_tools());

    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        matches!(&problems[0], PlanProblem::UnknownField { step: 1, reference, .. } if reference == "$ticket.queue")
    );
    assert!(problems[0].to_string().contains("its fields are"), "{}", problems[0]);
    assert!(matches!(&problems[1], PlanProblem::UnknownField { step: 2, .. }), "{problems:?}");
    let fine = PlanBuilder::new("q").step("a", None, "$a").step_output::<Ticket>().step("b", None, "$b");
    assert!(fine.input("$a.tags[-1]", "last tag").build().problems(&echo_tools()).is_empty());
}

#[tokio::test]
async fn a_final_output_that_does_not_fit_the_plans_schema_fails_the_workflow() {
    let tools = InMemoryToolRegistry::new().with(MockTool::returning("quote_tool", json!({"price": "n/a"}))).unwrap();
    let h = harness(config(ExecutionMode::Sequential, false), tools, ScriptedLlm::new());
    let plan = PlanBuilder::new("Price?")
        .step("Get the quote", Some("quote_tool"), "$quote")
        .args(json!({}))
        .output_schema(json!({"type": "object", "properties": {"price": {"type": "number"}}}))
        .build();

    let run = h.runner.run_plan_as::<Value>(&plan).await.unwrap();

    let failure = run.workflow.failure().unwrap().clone();
    assert_eq!(failure.kind, FailureKind::SchemaMismatch);
    assert!(failure.message.contains("`price` must be of type number"), "{}", failure.message);
    assert!(run.output.is_none());
    let err = run.into_output().unwrap_err();
    assert!(matches!(err, Error::TypedOutput { .. }), "{err}");
    assert!(err.to_string().contains("FAILED"), "{err}");
}

#[tokio::test]
async fn execute_query_as_tells_the_planner_the_schema_and_keeps_it_on_the_plan() {
    let plan = json!({"steps": [{"task": "Say which grew faster", "inputs": [], "tool_id": null, "output": "$v"}]});
    let answer = json!({"answer": {"faster": "Google", "growth_pct": 35.5}, "summary": "Google."});
    let llm = ScriptedLlm::new().json(plan).json(answer);
    let h = harness(Config::default(), InMemoryToolRegistry::new(), llm);

    let run = h.runner.execute_query_as::<Verdict>("Which grew faster?").await.unwrap();

    let planning = last_user_text(&h.llm.requests()[0]);
    assert!(planning.contains("JSON of this schema") && planning.contains("growth_pct"), "{planning}");
    let stored = h.runner.storage().get_plan(run.workflow.plan_id()).await.unwrap();
    assert!(stored.output_schema.is_some());
    assert_eq!(run.output, Some(Verdict { faster: "Google".into(), growth_pct: 35.5 }));
}

#[tokio::test]
async fn the_seed_takes_two_llm_calls_and_under_950_prompt_tokens() {
    let plan = json!({"steps": [
        {"task": "Search Amazon's 2024 stock growth.", "tool_id": "search_tool", "output": "$amazon",
         "args": {"search_query": "Amazon stock price growth 2024"}},
        {"task": "Search Google's 2024 stock growth.", "tool_id": "search_tool", "output": "$google",
         "args": {"search_query": "Google stock price growth 2024"}},
        {"task": "Say which grew faster.", "tool_id": null, "output": "$answer",
         "inputs": [{"name": "$amazon", "description": "Amazon's growth"}, {"name": "$google", "description": "Google's growth"}]}
    ]});
    let answer = json!({"answer": "Amazon grew faster (+44.4% against +35.5%).", "summary": "Amazon grew faster."});
    let search = MockTool::returning("search_tool", json!({"answer": "AMZN rose 44.4% in 2024; GOOGL rose 35.5%."}))
        .with_schema(
            json!({"type": "object", "properties": {"search_query": {"type": "string"}}, "required": ["search_query"]}),
        );
    let tools = InMemoryToolRegistry::new().with(search).unwrap();
    let h = harness(Config::default(), tools, ScriptedLlm::new().json(plan).json(answer));

    let workflow = h.runner.execute_query("Which stock price grew faster in 2024, Amazon or Google?").await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete);
    let total = workflow.usage().total;
    assert_eq!(total.llm_calls, 2, "the plan, then the answer with its summary");
    assert!(total.prompt_tokens <= 950, "{total:?}");
    let final_output = workflow.outputs().final_output.clone().unwrap();
    assert_eq!(final_output.value, json!("Amazon grew faster (+44.4% against +35.5%)."));
    assert_eq!(final_output.summary.as_deref(), Some("Amazon grew faster."));
}

#[tokio::test]
async fn a_plan_ending_on_a_tool_step_keeps_the_separate_summary_call() {
    let tools = InMemoryToolRegistry::new().with(MockTool::returning("quote_tool", json!({"price": 3}))).unwrap();
    let llm = Arc::new(ScriptedLlm::new().text("The price is 3."));
    let runner = Runner::builder(Config::default()).tools(tools).llm(llm.clone()).build().unwrap();
    let plan = PlanBuilder::new("Price?").step("Get the quote", Some("quote_tool"), "$quote").args(json!({})).build();

    let workflow = runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.outputs().final_output.as_ref().unwrap().summary.as_deref(), Some("The price is 3."));
    assert!(last_user_text(&llm.requests()[0]).starts_with("Summarize"));
}
