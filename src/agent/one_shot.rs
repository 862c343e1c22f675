use std::sync::Arc;

use super::tool_call::{ToolAttempt, finish, retries_exhausted, run_tool};
use super::{Agent, MAX_TOOL_RETRIES, Route, StepContext, StepOutcome, route};
use crate::llm::{LlmRequest, Message, ModelRole, ToolCall, ToolChoice};
use crate::tool::{Tool, ToolSpec};
use crate::workflow::FailureKind;

const SYSTEM: &str = "You carry out one step of a plan by calling the tool you are given. \
Take argument values from the task and context only; never invent them. Arguments must fit the tool's schema.";

/// Runs a step with one tool-calling LLM call (more only to recover from errors).
///
/// The model is made to call the step's tool. A text reply instead of a call is
/// re-asked once; a call to any tool other than the step's is not run but shown to
/// the model as a soft error; a soft tool error is shown to the model and retried
/// up to three times; a hard error fails the step at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct OneShotAgent;

#[async_trait::async_trait]
impl Agent for OneShotAgent {
    async fn execute(&self, ctx: &StepContext) -> StepOutcome {
        match route(ctx).await {
            Route::Done(result) => result,
            Route::ChooseArgs(tool, spec, notes) => call_tool_with_llm(ctx, tool, &spec, &notes).await,
        }
    }
}

async fn call_tool_with_llm(ctx: &StepContext, tool: Arc<dyn Tool>, spec: &ToolSpec, notes: &[String]) -> StepOutcome {
    let definition = spec.definition();
    let mut messages = vec![Message::system(SYSTEM), Message::user(with_notes(ctx.prompt(), notes))];
    let mut errors: Vec<String> = Vec::new();
    let mut reasked_for_call = false;
    loop {
        let request = LlmRequest::new(ModelRole::Execution, messages.clone())
            .with_tools(vec![definition.clone()], ToolChoice::Tool(spec.id.clone()));
        let response = match ctx.llm.chat(request).await {
            Ok(response) => response,
            Err(e) => return StepOutcome::llm_failed(&e),
        };
        if response.tool_calls.is_empty() {
            let text = response.text.unwrap_or_default();
            if reasked_for_call {
                return StepOutcome::failed(
                    FailureKind::Agent,
                    format!("the model answered in text instead of calling tool {}: {text}", spec.id),
                );
            }
            reasked_for_call = true;
            messages.push(Message::assistant(text, Vec::new()));
            messages.push(Message::user(format!("Do not answer in text: call the tool {} now.", spec.id)));
            continue;
        }
        let calls = response.tool_calls;
        let attempt = match calls.iter().find(|c| c.name == spec.id) {
            Some(call) => run_tool(ctx, tool.as_ref(), spec, call.arguments.clone()).await,
            None => ToolAttempt::Retry(wrong_tool(spec, &calls)),
        };
        match attempt {
            ToolAttempt::Finished(outcome) => return finish(ctx, spec, outcome).await,
            ToolAttempt::Retry(message) => {
                errors.push(message.clone());
                if errors.len() > MAX_TOOL_RETRIES {
                    return retries_exhausted(&spec.id, &errors);
                }
                answer_calls(&mut messages, calls, &message);
            }
        }
    }
}

/// The step's prompt, with the notes on why the plan's arguments were not used.
pub(super) fn with_notes(prompt: String, notes: &[String]) -> String {
    notes.iter().fold(prompt, |mut prompt, note| {
        prompt.push('\n');
        prompt.push_str(note);
        prompt
    })
}

/// A call to a tool other than the step's is never run: the model is told which
/// tool this step has.
fn wrong_tool(spec: &ToolSpec, calls: &[ToolCall]) -> String {
    let named: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
    tracing::warn!(tool = %spec.id, called = ?named, "the model called another tool; not running it");
    format!("this step can only call {}, not {}", spec.id, named.join(", "))
}

/// Shows the model its calls and the error, one tool message per call (providers
/// require an answer to each).
fn answer_calls(messages: &mut Vec<Message>, calls: Vec<ToolCall>, message: &str) {
    let ids: Vec<String> = calls.iter().map(|c| c.id.clone()).collect();
    messages.push(Message::assistant("", calls));
    for id in ids {
        messages
            .push(Message::tool_result(id, format!("Error: {message}\nFix the arguments and call the tool again.")));
    }
}
