//! Steps without a tool: one LLM call over the step's context.

use serde_json::json;

use super::one_shot::{ToolAttempt, failed, finish, run_tool};
use super::{StepContext, StepOutcome, StepResult};
use crate::config::ModelRole;
use crate::llm::{LlmRequest, Message};
use crate::tool::Tool;
use crate::workflow::Output;

const SYSTEM: &str = "You carry out one step of a plan. Answer the task from the context given, \
concisely and without inventing facts. Reply with the answer only.";

/// Answers the step with one LLM call.
pub(super) async fn answer(ctx: &StepContext) -> StepResult {
    let request = LlmRequest::new(ModelRole::Execution, vec![Message::system(SYSTEM), Message::user(ctx.prompt())]);
    match ctx.llm.chat(request).await {
        Ok(response) => {
            let text = response.text.unwrap_or_default();
            if text.trim().is_empty() {
                return failed("the model gave an empty answer".to_owned(), response.usage);
            }
            StepResult { outcome: StepOutcome::Output(Output::new(text)), usage: response.usage }
        }
        Err(e) => failed(format!("LLM call failed: {e}"), Default::default()),
    }
}

/// Runs a step assigned to the LLM tool by calling the tool directly with the task:
/// the tool reads the step's context itself, so no tool-calling round trip is needed.
pub(super) async fn through_tool(ctx: &StepContext, tool: &std::sync::Arc<dyn Tool>) -> StepResult {
    match run_tool(ctx, tool.as_ref(), json!({ "task": ctx.step.task })).await {
        ToolAttempt::Finished(outcome) => finish(ctx, tool.as_ref(), outcome, Default::default()).await,
        ToolAttempt::Retry(message) => failed(format!("Tool {} failed: {message}", tool.id()), Default::default()),
    }
}
