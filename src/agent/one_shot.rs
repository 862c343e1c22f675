use std::sync::Arc;

use super::tool_call::{ToolAttempt, finish, retries_exhausted, run_tool};
use super::{Agent, MAX_TOOL_RETRIES, Route, StepContext, StepOutcome, route};
use crate::llm::{LlmRequest, Message, ModelRole, ToolChoice};
use crate::tool::{Tool, ToolSpec};
use crate::workflow::FailureKind;

const SYSTEM: &str = "You carry out one step of a plan by calling the tool you are given. \
Take argument values from the task and context only; never invent them. Arguments must fit the tool's schema.";

/// Runs a step with one tool-calling LLM call (more only to recover from errors).
///
/// The model is made to call the step's tool. A text reply instead of a call is
/// re-asked once; a soft tool error is shown to the model and retried up to
/// [`MAX_TOOL_RETRIES`] times; a hard error fails the step at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct OneShotAgent;

#[async_trait::async_trait]
impl Agent for OneShotAgent {
    async fn execute(&self, ctx: &StepContext) -> StepOutcome {
        match route(ctx).await {
            Route::Done(result) => result,
            Route::ChooseArgs(tool, spec) => call_tool_with_llm(ctx, tool, &spec).await,
        }
    }
}

async fn call_tool_with_llm(ctx: &StepContext, tool: Arc<dyn Tool>, spec: &ToolSpec) -> StepOutcome {
    let definition = spec.definition();
    let mut messages = vec![Message::system(SYSTEM), Message::user(ctx.prompt())];
    let mut errors: Vec<String> = Vec::new();
    let mut reasked_for_call = false;
    loop {
        let request = LlmRequest::new(ModelRole::Execution, messages.clone())
            .with_tools(vec![definition.clone()], ToolChoice::Tool(spec.id.clone()));
        let response = match ctx.llm.chat(request).await {
            Ok(response) => response,
            Err(e) => return StepOutcome::llm_failed(&e),
        };
        let Some(call) = response.tool_calls.into_iter().next() else {
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
        };
        match run_tool(ctx, tool.as_ref(), spec, call.arguments.clone()).await {
            ToolAttempt::Finished(outcome) => return finish(ctx, spec, outcome).await,
            ToolAttempt::Retry(message) => {
                errors.push(message.clone());
                if errors.len() > MAX_TOOL_RETRIES {
                    return retries_exhausted(&spec.id, &errors);
                }
                messages.push(Message::assistant("", vec![call.clone()]));
                messages.push(Message::tool_result(
                    call.id,
                    format!("Error: {message}\nFix the arguments and call the tool again."),
                ));
            }
        }
    }
}
