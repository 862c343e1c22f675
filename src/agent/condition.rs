//! Conditions in plain words: one structured LLM call decides whether one holds.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{StepContext, StepOutcome};
use crate::llm::{LlmRequest, Message, ModelRole, OutputSchema, structured};

const SYSTEM: &str = "Decide from the context whether the condition holds. Reply with JSON: holds (true or false), \
reason (one short sentence).";

// The model's decision. (Plain comments: a doc comment would be sent as a description.)
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct Decision {
    holds: bool,
    reason: String,
}

/// `None` when the condition `words` holds for step `ctx`; otherwise why the step
/// is skipped, or how deciding failed.
pub(crate) async fn skip_unless_holds(ctx: &StepContext, words: &str) -> Option<StepOutcome> {
    let prompt = format!("Condition: {words}\n{}", ctx.prompt());
    let request = LlmRequest::new(ModelRole::Execution, vec![Message::system(SYSTEM), Message::user(prompt)])
        .with_output_schema(OutputSchema::of::<Decision>("decision"));
    match structured::<Decision>(ctx.llm.as_ref(), request).await {
        Ok((decision, _)) if decision.holds => None,
        Ok((decision, _)) => {
            Some(StepOutcome::Skipped(format!("its condition does not hold ({words}): {}", decision.reason)))
        }
        Err(e) => Some(StepOutcome::llm_failed(&e)),
    }
}
