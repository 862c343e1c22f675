use std::sync::Arc;

use serde_json::Value;

use super::{Agent, LLM_TOOL_ID, MAX_TOOL_RETRIES, StepContext, StepOutcome, StepResult, llm_step, summarize};
use crate::config::ModelRole;
use crate::llm::{LlmRequest, Message, ToolChoice, Usage};
use crate::tool::{Tool, ToolError, ToolOutput};
use crate::workflow::Output;

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
    async fn execute(&self, ctx: &StepContext) -> StepResult {
        match &ctx.tool {
            None => llm_step::answer(ctx).await,
            Some(tool) if tool.id() == LLM_TOOL_ID => llm_step::through_tool(ctx, tool).await,
            Some(tool) => call_tool_with_llm(ctx, Arc::clone(tool)).await,
        }
    }
}

async fn call_tool_with_llm(ctx: &StepContext, tool: Arc<dyn Tool>) -> StepResult {
    let mut usage = Usage::default();
    let mut messages = vec![Message::system(SYSTEM), Message::user(ctx.prompt())];
    let mut errors: Vec<String> = Vec::new();
    let mut reasked_for_call = false;
    loop {
        let request = LlmRequest::new(ModelRole::Execution, messages.clone())
            .with_tools(vec![tool.definition()], ToolChoice::Tool(tool.id().to_owned()));
        let response = match ctx.llm.chat(request).await {
            Ok(response) => response,
            Err(e) => return failed(format!("LLM call failed: {e}"), usage),
        };
        usage += response.usage;
        let Some(call) = response.tool_calls.into_iter().next() else {
            let text = response.text.unwrap_or_default();
            if reasked_for_call {
                return failed(
                    format!("the model answered in text instead of calling tool {}: {text}", tool.id()),
                    usage,
                );
            }
            reasked_for_call = true;
            messages.push(Message::assistant(text, Vec::new()));
            messages.push(Message::user(format!("Do not answer in text: call the tool {} now.", tool.id())));
            continue;
        };
        match run_tool(ctx, tool.as_ref(), call.arguments.clone()).await {
            ToolAttempt::Finished(outcome) => return finish(ctx, tool.as_ref(), outcome, usage).await,
            ToolAttempt::Retry(message) => {
                errors.push(message.clone());
                if errors.len() > MAX_TOOL_RETRIES {
                    return failed(retries_exhausted(tool.id(), &errors), usage);
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

/// What one tool call led to.
pub(super) enum ToolAttempt {
    /// The step is over: a value, clarifications, or a hard failure.
    Finished(StepOutcome),
    /// A soft error worth showing the model.
    Retry(String),
}

/// Checks `args` against the tool's schema, then runs the tool.
pub(super) async fn run_tool(ctx: &StepContext, tool: &dyn Tool, args: Value) -> ToolAttempt {
    if let Err(problem) = check_args(&tool.args_schema(), &args) {
        return ToolAttempt::Retry(format!("the arguments do not fit the schema of {}: {problem}", tool.id()));
    }
    match tool.run(&ctx.tool_run_context(), args).await {
        Ok(ToolOutput::Value(value)) => ToolAttempt::Finished(StepOutcome::Output(Output::new(value))),
        Ok(ToolOutput::Clarifications(list)) if !list.is_empty() => {
            ToolAttempt::Finished(StepOutcome::Clarifications(list))
        }
        Ok(ToolOutput::Clarifications(_)) => ToolAttempt::Finished(StepOutcome::Failed(format!(
            "Tool {} failed: it asked for clarification without saying what it needs",
            tool.id()
        ))),
        Err(ToolError::Soft(message)) => ToolAttempt::Retry(message),
        Err(ToolError::Hard(message)) => {
            ToolAttempt::Finished(StepOutcome::Failed(format!("Tool {} failed: {message}", tool.id())))
        }
    }
}

pub(super) fn retries_exhausted(tool_id: &str, errors: &[String]) -> String {
    format!("Tool {tool_id} failed after {} attempts: {}", errors.len(), errors.join("; "))
}

/// Adds a summary to a value output when the tool asks for one.
pub(super) async fn finish(ctx: &StepContext, tool: &dyn Tool, outcome: StepOutcome, mut usage: Usage) -> StepResult {
    let outcome = match outcome {
        StepOutcome::Output(mut output) if tool.should_summarize() => {
            let (summary, spent) = summarize::step_summary(ctx, &output.value).await;
            usage += spent;
            output.summary = summary;
            StepOutcome::Output(output)
        }
        other => other,
    };
    StepResult { outcome, usage }
}

pub(super) fn failed(message: String, usage: Usage) -> StepResult {
    StepResult { outcome: StepOutcome::Failed(message), usage }
}

/// A light check of the arguments against a JSON schema: an object, with every
/// required property present and each property of the declared basic type.
/// Tools with typed arguments check the rest when they parse them.
fn check_args(schema: &Value, args: &Value) -> Result<(), String> {
    let Some(object) = args.as_object() else {
        return Err(format!("expected an object of arguments, got {args}"));
    };
    let required = schema.get("required").and_then(Value::as_array).into_iter().flatten();
    for name in required.filter_map(Value::as_str) {
        if object.get(name).is_none_or(Value::is_null) {
            return Err(format!("the required argument `{name}` is missing"));
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    for (name, value) in object {
        let declared = properties.and_then(|p| p.get(name)).and_then(|p| p.get("type"));
        if let Some(declared) = declared {
            if !type_matches(declared, value) {
                return Err(format!("`{name}` should be of type {declared}, got {value}"));
            }
        }
    }
    Ok(())
}

fn type_matches(declared: &Value, value: &Value) -> bool {
    let one = |name: &str| match name {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    };
    match declared {
        Value::String(name) => one(name),
        Value::Array(names) => names.iter().filter_map(Value::as_str).any(one),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn schema_check_finds_missing_and_mistyped_arguments() {
        let schema = json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": ["integer", "null"]}},
            "required": ["city"]
        });
        assert!(check_args(&schema, &json!({"city": "Paris"})).is_ok());
        assert!(check_args(&schema, &json!({"city": "Paris", "days": null})).is_ok());
        assert!(check_args(&schema, &json!({})).unwrap_err().contains("`city` is missing"));
        assert!(check_args(&schema, &json!({"city": 3})).unwrap_err().contains("`city` should be of type"));
        assert!(check_args(&schema, &json!({"city": "P", "days": 1.5})).is_err());
        assert!(check_args(&schema, &json!("Paris")).is_err());
    }
}
