//! Summaries: of a long tool output, and of a finished workflow.

use std::fmt::Write;

use serde_json::Value;

use super::StepContext;
use crate::llm::{LlmClient, LlmRequest, Message, ModelRole};
use crate::plan::Plan;
use crate::text::clip;
use crate::text::prompt_value;
use crate::workflow::Workflow;

/// Earlier step outputs shown to the final summary are cut to this many characters;
/// the last step's output, which answers the query, is shown up to the configured limit.
const EARLIER_OUTPUT_LIMIT: usize = 300;

/// Summarizes a tool's output for the step's task; `None` (and a warning) on failure.
pub(super) async fn step_summary(ctx: &StepContext, value: &Value) -> Option<String> {
    let prompt = format!(
        "Summarize this tool output in at most 500 characters, keeping the facts the task needs.\nTask: {}\nOutput: {}",
        ctx.step.task,
        prompt_value(value, ctx.max_output_chars)
    );
    ask(ctx.llm.as_ref(), prompt).await
}

/// One LLM call that summarizes how the workflow's outputs answer the plan's query.
/// The answering output is shown up to `max_output_chars` characters (clipped with a
/// note beyond), earlier ones shorter still. Returns `None` (and logs a warning)
/// when the call fails or the reply is empty.
pub(crate) async fn summarize_final_output(
    llm: &dyn LlmClient,
    plan: &Plan,
    workflow: &Workflow,
    max_output_chars: usize,
) -> Option<String> {
    let mut prompt = format!(
        "Summarize in at most 500 characters how these results answer the query. Use only what is given.\nQuery: {}\n",
        plan.plan_context.query
    );
    let outputs: Vec<_> = workflow.outputs().step_outputs.iter().collect();
    for (i, (name, output)) in outputs.iter().enumerate() {
        let task = plan.step_producing(name).map_or("", |s| plan.steps[s].task.as_str());
        let value = match &output.summary {
            _ if i + 1 == outputs.len() => prompt_value(&output.value, max_output_chars),
            Some(summary) => clip(summary, EARLIER_OUTPUT_LIMIT, "…"),
            None => prompt_value(&output.value, EARLIER_OUTPUT_LIMIT.min(max_output_chars)),
        };
        let _ = writeln!(prompt, "{task} -> {value}");
    }
    ask(llm, prompt).await
}

async fn ask(llm: &dyn LlmClient, prompt: String) -> Option<String> {
    let request = LlmRequest::new(ModelRole::Summary, vec![Message::user(prompt)]);
    match llm.chat(request).await {
        Ok(response) => response.text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
        Err(e) => {
            tracing::warn!(error = %e, "summary failed; going on without it");
            None
        }
    }
}
