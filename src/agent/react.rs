//! ReAct steps: the model calls any of the step's tools, one result at a time, as
//! often as it needs up to the step's limit, and then answers.
//!
//! Every call goes through [`StepContext::call_tool`], so it is journaled and hooked
//! like any other. A resumed run rebuilds the conversation from the journal: the
//! calls an interrupted run made are replayed in order (finished ones are not made
//! again), the calls of attempts before a question the step asked are shown as they
//! went, and only then is the model asked for its next move.

use std::sync::Arc;

use serde_json::Value;

use super::llm_step::{output_schema, reply_typed, text_output};
use super::tool_call::{ToolAttempt, attempt_of, run_tool};
use super::{PastCall, StepContext, StepOutcome};
use crate::llm::{LlmRequest, Message, ModelRole, ToolCall, ToolChoice, ToolDefinition};
use crate::schema_check::check_value;
use crate::text::{prompt_value, strip_code_fence};
use crate::tool::{Tool, ToolError, ToolOutput, ToolSpec};
use crate::workflow::{FailureKind, Output};

/// How many tool calls a ReAct step makes when its plan sets no limit.
pub(crate) const DEFAULT_MAX_TOOL_CALLS: u32 = 25;

const SYSTEM: &str = "You carry out one step of a plan with the tools given. Call them as you need, then reply \
with the step's answer only. Take argument values from the task, the context and tool results; never invent them.";

/// A ReAct step's conversation and its tally of calls.
struct Loop<'a> {
    ctx: &'a StepContext,
    tools: Vec<(Arc<dyn Tool>, ToolSpec)>,
    messages: Vec<Message>,
    made: u32,
    limit: u32,
}

/// Runs a ReAct step to its answer, a question for a person, or a failure.
pub(super) async fn run(ctx: &StepContext) -> StepOutcome {
    let tools: Vec<_> = ctx.tools.iter().map(|tool| (Arc::clone(tool), tool.spec())).collect();
    let definitions: Vec<ToolDefinition> = tools.iter().map(|(_, spec)| spec.definition()).collect();
    let messages = vec![Message::system(SYSTEM), Message::user(ctx.prompt())];
    let limit = ctx.step.max_tool_calls.unwrap_or(DEFAULT_MAX_TOOL_CALLS);
    let mut run = Loop { ctx, tools, messages, made: 0, limit };
    for past in ctx.calls.earlier_calls() {
        run.show_past(past);
    }
    if let Some(outcome) = run.replay().await {
        return outcome;
    }
    loop {
        let request = LlmRequest::new(ModelRole::Execution, run.messages.clone())
            .with_tools(definitions.clone(), ToolChoice::Auto);
        let response = match ctx.llm.chat(request).await {
            Ok(response) => response,
            Err(e) => return StepOutcome::llm_failed(&e),
        };
        let text = response.text.unwrap_or_default();
        if response.tool_calls.is_empty() {
            return run.answer(text).await;
        }
        run.messages.push(Message::assistant(text, response.tool_calls.clone()));
        for call in response.tool_calls {
            if let Some(outcome) = run.call(call).await {
                return outcome;
            }
        }
    }
}

impl Loop<'_> {
    fn find(&self, tool_id: &str) -> Option<(Arc<dyn Tool>, ToolSpec)> {
        self.tools.iter().find(|(_, spec)| spec.id == tool_id).map(|(tool, spec)| (Arc::clone(tool), spec.clone()))
    }

    /// Shows the model a call an earlier attempt made, as it went.
    fn show_past(&mut self, past: PastCall) {
        self.made += 1;
        let result = match past.outcome {
            Ok(ToolOutput::Value(value)) => prompt_value(&value, self.ctx.max_output_chars),
            Ok(_) => "The tool asked the user; their answers are in the step's context.".to_owned(),
            Err(ToolError::Soft(message) | ToolError::Transient { message, .. }) => format!("Error: {message}"),
            Err(other) => format!("Error: {other}"),
        };
        self.push_call(past.tool_id, past.args, result);
    }

    /// Makes again, in order, the calls an interrupted run of this attempt
    /// journaled (a finished one is replayed from the journal, not made). `Some`
    /// when one of them ends the step.
    async fn replay(&mut self) -> Option<StepOutcome> {
        while let Some((tool_id, args)) = self.ctx.calls.journaled_call() {
            let Some((tool, spec)) = self.find(&tool_id) else {
                let message = format!("the journal holds a call of {tool_id}, which this step does not list");
                return Some(StepOutcome::failed(FailureKind::InvalidStep, message));
            };
            self.made += 1;
            match self.result_text(attempt_of(&spec, self.ctx.call_tool(tool.as_ref(), &spec, args.clone()).await)) {
                Ok(result) => self.push_call(tool_id, args, result),
                Err(outcome) => return Some(outcome),
            }
        }
        None
    }

    /// Makes a call the model asked for and shows it the result. `Some` when the
    /// call ends the step: the limit is reached, a person must answer, or a hard error.
    async fn call(&mut self, call: ToolCall) -> Option<StepOutcome> {
        if self.made >= self.limit {
            let message = format!(
                "the step made {} tool calls, its limit, without answering; raise its max_tool_calls or narrow its task",
                self.made
            );
            return Some(StepOutcome::failed(FailureKind::ToolCallLimit, message));
        }
        self.made += 1;
        let result = match self.find(&call.name) {
            None => {
                let listed: Vec<&str> = self.tools.iter().map(|(_, spec)| spec.id.as_str()).collect();
                format!("Error: this step has no tool {}; it can call {}", call.name, listed.join(", "))
            }
            Some((tool, spec)) => {
                match self.result_text(run_tool(self.ctx, tool.as_ref(), &spec, call.arguments).await) {
                    Ok(result) => result,
                    Err(outcome) => return Some(outcome),
                }
            }
        };
        self.messages.push(Message::tool_result(call.id, result));
        None
    }

    /// What a call's result shows the model, or the outcome that ends the step.
    fn result_text(&self, attempt: ToolAttempt) -> Result<String, StepOutcome> {
        match attempt {
            ToolAttempt::Finished(StepOutcome::Output(output)) => {
                Ok(prompt_value(&output.value, self.ctx.max_output_chars))
            }
            ToolAttempt::Finished(other) => Err(other),
            ToolAttempt::Retry(message) => Ok(format!("Error: {message}")),
        }
    }

    /// Adds a call that was not asked for in this conversation (replayed from the
    /// journal), with its result.
    fn push_call(&mut self, tool_id: String, args: Value, result: String) {
        let id = format!("call_{}", self.made);
        let call = ToolCall { id: id.clone(), name: tool_id, arguments: args };
        self.messages.push(Message::assistant("", vec![call]));
        self.messages.push(Message::tool_result(id, result));
    }

    /// The step's output from the model's final reply: its text, or for a typed
    /// step, JSON of its schema (asked for again, once, when the reply does not fit).
    async fn answer(&self, text: String) -> StepOutcome {
        let Some(schema) = &self.ctx.step.output_schema else { return text_output(text) };
        let parsed = serde_json::from_str::<Value>(strip_code_fence(&text)).ok();
        if let Some(value) = parsed.filter(|value| check_value(schema, value).is_ok()) {
            return StepOutcome::Output(Output::new(value));
        }
        let mut messages = self.messages.clone();
        messages.push(Message::assistant(text, Vec::new()));
        messages.push(Message::user("Give that answer as JSON of the required shape, and nothing else."));
        let request = LlmRequest::new(ModelRole::Execution, messages).with_output_schema(output_schema(schema.clone()));
        reply_typed(self.ctx, request, schema, false).await
    }
}
