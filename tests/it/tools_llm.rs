//! The LLM tool with a scripted LLM: one call, the right prompt, the right errors.

use std::sync::Arc;

use portia::llm::{LlmError, ModelRole, Role};
use portia::testing::ScriptedLlm;
use portia::tools::LLM_TOOL_ID;
use portia::tools::{LlmTool, open_source_tool_registry};
use portia::{Config, PlanBuilder, Runner, Tool, ToolError, ToolOutput, ToolRunContext, WorkflowId, WorkflowState};
use serde_json::json;

fn ctx(llm: Option<Arc<ScriptedLlm>>, step_context: &str) -> ToolRunContext {
    let mut ctx = ToolRunContext::new(WorkflowId::new());
    ctx.llm = llm.map(|l| l as Arc<dyn portia::llm::LlmClient>);
    ctx.step_context = step_context.to_owned();
    ctx
}

#[tokio::test]
async fn one_execution_call_with_the_task_and_the_step_context() {
    let llm = Arc::new(ScriptedLlm::new().text("Amazon grew faster."));
    let context = "Earlier outputs:\n- $amazon: +44%\n- $google: +36%";
    let output = LlmTool::new()
        .run(&ctx(Some(llm.clone()), context), json!({"task": "Say which stock grew faster"}))
        .await
        .unwrap();

    assert_eq!(output, ToolOutput::value("Amazon grew faster."));
    let requests = llm.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.purpose, ModelRole::Execution);
    assert!(request.tools.is_empty() && request.output_schema.is_none());
    assert_eq!(request.messages.len(), 2);
    assert_eq!(request.messages[0].role, Role::System);
    assert_eq!(request.messages[0].content, LlmTool::new().system_prompt());
    assert_eq!(request.messages[1].role, Role::User);
    let prompt = &request.messages[1].content;
    assert!(prompt.contains("Say which stock grew faster"), "{prompt}");
    assert!(prompt.contains("$amazon: +44%") && prompt.contains("$google: +36%"), "{prompt}");
}

#[tokio::test]
async fn the_runners_context_already_holding_the_task_is_sent_once() {
    let llm = Arc::new(ScriptedLlm::new().text("ok"));
    let context = "Task: Summarise the results\nToday: 2025-02-25";
    LlmTool::new().run(&ctx(Some(llm.clone()), context), json!({"task": "Summarise the results"})).await.unwrap();
    assert_eq!(llm.requests()[0].messages[1].content, context);
}

#[tokio::test]
async fn without_context_the_prompt_is_the_task() {
    let llm = Arc::new(ScriptedLlm::new().text("Hello"));
    LlmTool::new().run(&ctx(Some(llm.clone()), ""), json!({"task": "Greet the user"})).await.unwrap();
    assert_eq!(llm.requests()[0].messages[1].content, "Greet the user");
}

#[tokio::test]
async fn a_custom_system_prompt_is_used() {
    let llm = Arc::new(ScriptedLlm::new().text("Ahoy"));
    let tool = LlmTool::new().with_system_prompt("Talk like a pirate.");
    tool.run(&ctx(Some(llm.clone()), ""), json!({"task": "Greet"})).await.unwrap();
    assert_eq!(llm.requests()[0].messages[0].content, "Talk like a pirate.");
}

#[tokio::test]
async fn no_llm_in_the_context_is_a_hard_error() {
    let err = LlmTool::new().run(&ctx(None, ""), json!({"task": "Anything"})).await.unwrap_err();
    assert!(matches!(&err, ToolError::Hard(m) if m.contains("needs an LLM")), "{err:?}");
}

#[tokio::test]
async fn llm_failures_are_hard_and_empty_answers_soft() {
    let llm = Arc::new(ScriptedLlm::new().error(LlmError::Other("model overloaded".into())).text("  "));
    let ctx = ctx(Some(llm.clone()), "");
    let err = LlmTool::new().run(&ctx, json!({"task": "Anything"})).await.unwrap_err();
    // The provider layer already retried; trying again here would only multiply the wait.
    assert!(matches!(&err, ToolError::Hard(m) if m.contains("model overloaded")), "{err:?}");
    let err = LlmTool::new().run(&ctx, json!({"task": "Anything"})).await.unwrap_err();
    assert!(matches!(&err, ToolError::Soft(m) if m.contains("empty answer")), "{err:?}");
}

#[tokio::test]
async fn a_plan_step_on_the_llm_tool_costs_exactly_one_llm_call() {
    let llm = Arc::new(ScriptedLlm::new().text("Amazon grew faster."));
    let config = Config::builder().summarize_final_output(false).build().unwrap();
    let runner =
        Runner::builder(config.clone()).tools(open_source_tool_registry(&config)).llm(llm.clone()).build().unwrap();
    let plan = PlanBuilder::new("Which grew faster?")
        .step("Say which stock grew faster", Some(LLM_TOOL_ID), "$answer")
        .build();

    let workflow = runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(workflow.outputs().step_outputs.get("$answer").unwrap().value, json!("Amazon grew faster."));
    let requests = llm.requests();
    assert_eq!(requests.len(), 1, "the agent calls the tool directly, without a tool-calling round trip");
    assert!(requests[0].messages[1].content.contains("Task: Say which stock grew faster"));
    assert_eq!(workflow.usage().steps["$answer"].llm_calls, 1, "the tool's own call is counted");
    assert_eq!(workflow.usage().total.llm_calls, 1);
    assert!(workflow.usage().total.prompt_tokens > 0);
}

#[tokio::test]
async fn a_soft_error_of_the_llm_tool_is_tried_again() {
    let llm = Arc::new(ScriptedLlm::new().text("  ").text("Amazon grew faster."));
    let config = Config::builder().summarize_final_output(false).build().unwrap();
    let runner =
        Runner::builder(config.clone()).tools(open_source_tool_registry(&config)).llm(llm.clone()).build().unwrap();
    let plan = PlanBuilder::new("q").step("Say which stock grew faster", Some(LLM_TOOL_ID), "$answer").build();
    let workflow = runner.run_plan(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(llm.requests().len(), 2);
}

#[test]
fn the_tool_has_its_id_takes_a_task_and_is_called_directly() {
    let spec = LlmTool::new().spec();
    assert_eq!((spec.id.as_str(), spec.name.as_str()), (LLM_TOOL_ID, "LLM Tool"));
    assert_eq!(spec.args_schema["required"], json!(["task"]));
    assert!(!spec.summarize);
    assert_eq!(spec.task_argument.as_deref(), Some("task"));
    assert_eq!(spec.direct_args("Sum up"), Some(json!({"task": "Sum up"})));
}
