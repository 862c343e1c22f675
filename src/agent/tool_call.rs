//! Calling a step's tool: the schema check, the journaled call, soft and hard
//! errors, replay after an interruption, and the step summary. Shared by every agent.

use serde_json::Value;

use super::{MAX_TOOL_RETRIES, StepContext, StepOutcome, summarize};
use crate::text::clip;
use crate::tool::{Tool, ToolError, ToolOutput, ToolSpec};
use crate::workflow::{FailureKind, Output};

/// What one tool call led to.
pub(super) enum ToolAttempt {
    /// The step is over: a value, clarifications, or a hard failure.
    Finished(StepOutcome),
    /// A soft error worth trying again (with other arguments, if a model chooses them).
    Retry(String),
}

/// Checks `args` against the schema in `spec` (the tool's, taken once by the caller),
/// then calls the tool through the journal.
pub(super) async fn run_tool(ctx: &StepContext, tool: &dyn Tool, spec: &ToolSpec, args: Value) -> ToolAttempt {
    if let Err(problem) = check_args(&spec.args_schema, &args) {
        return ToolAttempt::Retry(format!("the arguments do not fit the schema of {}: {problem}", spec.id));
    }
    attempt_of(spec, ctx.call_tool(tool, spec, args).await)
}

pub(super) fn attempt_of(spec: &ToolSpec, result: Result<ToolOutput, ToolError>) -> ToolAttempt {
    match result {
        Ok(ToolOutput::Value(value)) => ToolAttempt::Finished(StepOutcome::Output(Output::shared(value))),
        Ok(ToolOutput::Clarifications(list)) if !list.is_empty() => {
            ToolAttempt::Finished(StepOutcome::Clarifications(list))
        }
        Ok(ToolOutput::Clarifications(_)) => ToolAttempt::Finished(StepOutcome::failed(
            FailureKind::ToolError,
            format!("Tool {} failed: it asked for clarification without saying what it needs", spec.id),
        )),
        Err(ToolError::Soft(message) | ToolError::Transient { message, .. }) => ToolAttempt::Retry(message),
        Err(ToolError::Hard(message)) => ToolAttempt::Finished(StepOutcome::failed(
            FailureKind::ToolError,
            format!("Tool {} failed: {message}", spec.id),
        )),
        Err(ToolError::RetriesExhausted(message)) => ToolAttempt::Finished(StepOutcome::failed(
            FailureKind::ToolRetriesExhausted,
            format!("Tool {} failed: {message}", spec.id),
        )),
        Err(ToolError::Denied(reason)) => ToolAttempt::Finished(StepOutcome::failed(
            FailureKind::Denied,
            format!("The call of {} was denied: {reason}", spec.id),
        )),
        Err(other) => {
            ToolAttempt::Finished(StepOutcome::failed(FailureKind::Hook, format!("Tool {}: {other}", spec.id)))
        }
    }
}

/// Calls a tool with arguments that follow from the task ([`ToolSpec::direct_args`]),
/// trying again on soft errors up to [`MAX_TOOL_RETRIES`] times.
pub(super) async fn call_directly(ctx: &StepContext, tool: &dyn Tool, spec: &ToolSpec, args: Value) -> StepOutcome {
    let mut errors = Vec::new();
    loop {
        match run_tool(ctx, tool, spec, args.clone()).await {
            ToolAttempt::Finished(outcome) => return finish(ctx, spec, outcome).await,
            ToolAttempt::Retry(message) => {
                errors.push(message);
                if errors.len() > MAX_TOOL_RETRIES {
                    return retries_exhausted(&spec.id, &errors);
                }
            }
        }
    }
}

/// Calls the tool with the plan's arguments, when they are complete and fit its
/// schema: no LLM call is made. `Err` holds a note for the agent that must choose
/// the arguments instead: why these could not be used.
pub(super) async fn call_with_plan_args(
    ctx: &StepContext,
    tool: &dyn Tool,
    spec: &ToolSpec,
    args: Value,
) -> Result<StepOutcome, String> {
    let shown = clip(&args.to_string(), ctx.max_output_chars, "…");
    if let Err(problem) = check_args(&spec.args_schema, &args) {
        tracing::info!(tool = %spec.id, %problem, "the plan's arguments do not fit the tool; the agent chooses them");
        return Err(format!("The plan suggested the arguments {shown}, but {problem}; keep what fits."));
    }
    match attempt_of(spec, ctx.call_tool(tool, spec, args).await) {
        ToolAttempt::Finished(outcome) => Ok(finish(ctx, spec, outcome).await),
        ToolAttempt::Retry(message) => Err(format!("The call with the plan's arguments {shown} failed: {message}")),
    }
}

/// Calls a function step's function with the plan's arguments (`{}` when it gives
/// none). A function step makes no LLM call, so arguments that do not fit, or a
/// soft error, fail the step rather than let a model choose other arguments.
pub(super) async fn call_function(ctx: &StepContext, tool: &dyn Tool, spec: &ToolSpec, args: Value) -> StepOutcome {
    if let Err(problem) = check_args(&spec.args_schema, &args) {
        let shown = clip(&args.to_string(), ctx.max_output_chars, "…");
        let message = format!("the arguments {shown} do not fit the function {}: {problem}", spec.id);
        return StepOutcome::failed(FailureKind::InvalidStep, message);
    }
    match attempt_of(spec, ctx.call_tool(tool, spec, args).await) {
        ToolAttempt::Finished(outcome) => finish(ctx, spec, outcome).await,
        ToolAttempt::Retry(message) => {
            StepOutcome::failed(FailureKind::ToolError, format!("The function {} failed: {message}", spec.id))
        }
    }
}

/// Makes again, in order, the calls an interrupted run of this step journaled,
/// without asking the model for their arguments. `None` when there were none, or
/// when all of them failed softly and the model must choose again.
pub(super) async fn replay(ctx: &StepContext, tool: &dyn Tool, spec: &ToolSpec) -> Option<StepOutcome> {
    while let Some(args) = ctx.calls.journaled_args() {
        if let ToolAttempt::Finished(outcome) = attempt_of(spec, ctx.call_tool(tool, spec, args).await) {
            return Some(finish(ctx, spec, outcome).await);
        }
    }
    None
}

pub(super) fn retries_exhausted(tool_id: &str, errors: &[String]) -> StepOutcome {
    let message = format!("Tool {tool_id} failed after {} attempts: {}", errors.len(), errors.join("; "));
    StepOutcome::failed(FailureKind::ToolRetriesExhausted, message)
}

/// Adds a summary to a value output when the tool's spec asks for one.
pub(super) async fn finish(ctx: &StepContext, spec: &ToolSpec, outcome: StepOutcome) -> StepOutcome {
    match outcome {
        StepOutcome::Output(mut output) if spec.summarize => {
            output.summary = summarize::step_summary(ctx, &output.value).await;
            StepOutcome::Output(output)
        }
        other => other,
    }
}

/// Checks the arguments against the tool's JSON schema in full (see
/// [`crate::schema_check`]): the message names each value that does not fit and what
/// it must be. The tool gets the arguments as they were written: a `null` the check
/// took for "not given" reaches it too, and is the tool's to read as such.
fn check_args(schema: &crate::SharedValue, args: &Value) -> Result<(), String> {
    crate::schema_check::check(schema, args).map(drop)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn schema_check_finds_missing_and_mistyped_arguments() {
        let schema = crate::SharedValue::from(json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": ["integer", "null"]}},
            "required": ["city"]
        }));
        assert!(check_args(&schema, &json!({"city": "Paris"})).is_ok());
        assert!(check_args(&schema, &json!({"city": "Paris", "days": null})).is_ok());
        assert!(check_args(&schema, &json!({})).unwrap_err().contains("`city` is missing"));
        assert!(check_args(&schema, &json!({"city": 3})).unwrap_err().contains("`city` must be of type string, got 3"));
        assert!(check_args(&schema, &json!({"city": "P", "days": 1.5})).is_err());
        assert!(check_args(&schema, &json!("Paris")).is_err());
    }
}
