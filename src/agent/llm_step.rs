//! Steps without a tool: one LLM call over the step's context.

use super::{StepContext, StepOutcome};
use crate::llm::{LlmRequest, Message, ModelRole};
use crate::workflow::{FailureKind, Output};

const SYSTEM: &str = "You do one step of a plan: answer the task from the context given, concisely, inventing \
nothing. Reply with the answer only.";

/// Answers the step with one LLM call.
pub(super) async fn answer(ctx: &StepContext) -> StepOutcome {
    let request = LlmRequest::new(ModelRole::Execution, vec![Message::system(SYSTEM), Message::user(ctx.prompt())]);
    match ctx.llm.chat(request).await {
        Ok(response) => {
            let text = response.text.unwrap_or_default();
            if text.trim().is_empty() {
                return StepOutcome::failed(FailureKind::Agent, "the model gave an empty answer");
            }
            StepOutcome::Output(Output::new(text))
        }
        Err(e) => StepOutcome::llm_failed(&e),
    }
}
