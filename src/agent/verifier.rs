use std::collections::HashSet;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::tool_call::{ToolAttempt, finish, retries_exhausted, run_tool};
use super::{Agent, MAX_TOOL_RETRIES, Route, StepContext, StepOutcome, route};
use crate::clarification::{Clarification, latest_answer};
use crate::llm::{LlmError, LlmRequest, Message, ModelRole, OutputSchema, structured};
use crate::text::render_value;
use crate::tool::{Tool, ToolSpec};

const SYSTEM: &str = "You prepare the arguments of one tool call for a step of a plan. \
For every argument of the tool, give its value and where it comes from. Use only the task, the inputs, \
earlier outputs and the user's answers; when none of them supports a value, give null with source \"missing\" \
rather than a guess. A value may be reformatted to fit the schema.";

/// Where the model says an argument's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Source {
    Task,
    Input,
    Clarification,
    Context,
    Missing,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ProposedArgument {
    name: String,
    value: Value,
    source: Source,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ProposedArguments {
    arguments: Vec<ProposedArgument>,
}

/// Checks where each argument comes from before calling the tool.
///
/// One structured LLM call proposes every argument with its source. A required
/// argument that is missing, or that nothing in the context supports, becomes an
/// Input clarification instead of a made-up value; on resume the human's answers
/// fill those arguments. Soft tool errors re-ask for the arguments with the errors
/// shown, up to three times.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifierAgent;

#[async_trait::async_trait]
impl Agent for VerifierAgent {
    async fn execute(&self, ctx: &StepContext) -> StepOutcome {
        match route(ctx).await {
            Route::Done(result) => result,
            Route::ChooseArgs(tool, spec, notes) => verify_and_call(ctx, tool, &spec, &notes).await,
        }
    }
}

async fn verify_and_call(ctx: &StepContext, tool: Arc<dyn Tool>, spec: &ToolSpec, notes: &[String]) -> StepOutcome {
    let mut errors: Vec<String> = notes.to_vec();
    loop {
        let proposed = match propose(ctx, spec, &errors).await {
            Ok(proposed) => proposed,
            Err(e) => return StepOutcome::llm_failed(&e),
        };
        let (args, unsupported) = settle_arguments(ctx, &spec.args_schema, proposed);
        if !unsupported.is_empty() {
            let clarifications =
                unsupported.into_iter().map(|(name, why)| Clarification::input(ctx.workflow_id, name, why)).collect();
            return StepOutcome::Clarifications(clarifications);
        }
        match run_tool(ctx, tool.as_ref(), spec, Value::Object(args)).await {
            ToolAttempt::Finished(outcome) => return finish(ctx, spec, outcome).await,
            ToolAttempt::Retry(message) => {
                errors.push(message);
                if errors.len() > MAX_TOOL_RETRIES + notes.len() {
                    return retries_exhausted(&spec.id, &errors);
                }
            }
        }
    }
}

async fn propose(ctx: &StepContext, spec: &ToolSpec, errors: &[String]) -> Result<ProposedArguments, LlmError> {
    let mut prompt =
        format!("{}\nTool: {} ({})\nArguments schema: {}", ctx.prompt(), spec.id, spec.description, spec.args_schema);
    if !errors.is_empty() {
        prompt.push_str("\nEarlier attempts failed; do not repeat these mistakes:\n- ");
        prompt.push_str(&errors.join("\n- "));
    }
    let request = LlmRequest::new(ModelRole::Execution, vec![Message::system(SYSTEM), Message::user(prompt)])
        .with_output_schema(output_schema());
    structured(ctx.llm.as_ref(), request).await.map(|(proposed, _usage)| proposed)
}

/// The shape of the verifier's reply.
pub(crate) fn output_schema() -> OutputSchema {
    OutputSchema::of::<ProposedArguments>("ProposedArguments")
}

/// Applies the human's answers, and splits the proposal into the arguments to send
/// and the required ones nothing supports (`(name, guidance)`).
fn settle_arguments(
    ctx: &StepContext,
    schema: &Value,
    proposed: ProposedArguments,
) -> (Map<String, Value>, Vec<(String, String)>) {
    let properties = schema.get("properties").and_then(Value::as_object);
    let required: Vec<&str> =
        schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let context = words_of(&ctx.prompt());
    let mut args = Map::new();
    for argument in proposed.arguments {
        let Some(property) = properties.map_or(Some(&Value::Null), |p| p.get(&argument.name)) else { continue };
        let choices = property.get("enum").and_then(Value::as_array);
        if is_supported(&argument, &context, choices) {
            args.insert(argument.name, argument.value);
        } else {
            tracing::info!(argument = %argument.name, value = %argument.value, "argument not supported by the context");
        }
    }
    let mut unsupported = Vec::new();
    for name in properties.into_iter().flat_map(|p| p.keys()) {
        if let Some(value) = latest_answer(&ctx.clarifications, name) {
            args.insert(name.clone(), value.clone());
        } else if required.contains(&name.as_str()) && !args.contains_key(name) {
            let about = properties.and_then(|p| p[name].get("description")).and_then(Value::as_str).unwrap_or("");
            unsupported.push((name.clone(), format!("Please provide a value for `{name}`. {about}").trim().to_owned()));
        }
    }
    (args, unsupported)
}

/// The lower-cased words (runs of letters and digits) of `text`.
fn words_of(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// Whether the context backs a proposed value. The model's own label is not enough:
/// every number in the value, and most of its words, must be words of the context.
/// A value may be reformatted ("Paris" for "paris, france"), not made up. A yes/no
/// flag or one of the schema's listed choices is a decision, not a fact, so it needs
/// no backing.
fn is_supported(argument: &ProposedArgument, context: &HashSet<String>, choices: Option<&Vec<Value>>) -> bool {
    if argument.source == Source::Missing || argument.value.is_null() {
        return false;
    }
    if argument.value.is_boolean() || choices.is_some_and(|c| c.contains(&argument.value)) {
        return true;
    }
    let words = words_of(&render_value(&argument.value));
    let numbers_found = words.iter().filter(|w| w.chars().all(|c| c.is_ascii_digit())).all(|w| context.contains(w));
    let found = words.iter().filter(|w| context.contains(*w)).count();
    numbers_found && found * 2 >= words.len()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn proposed(value: Value, source: Source) -> ProposedArgument {
        ProposedArgument { name: "x".into(), value, source }
    }

    #[test]
    fn values_must_be_found_in_the_context() {
        let context = words_of("Task: Send 250 euros to Anna in Lisbon\nCompare the offers\nToday: 2026-11-25");
        let supported = |value: Value| is_supported(&proposed(value, Source::Task), &context, None);
        assert!(supported(json!("Lisbon")));
        assert!(supported(json!("Anna, Lisbon")));
        assert!(supported(json!(250)));
        assert!(supported(json!(true)), "a flag is a choice");
        assert!(!supported(json!(2500)), "an invented amount");
        assert!(!supported(json!(20)), "a number that is only part of the date");
        assert!(!supported(json!("anna@example.com")), "an invented email whose 'com' is only inside 'compare'");
        assert!(!supported(json!("Lisbon 2027")), "every number must be found");
        assert!(!is_supported(&proposed(json!("Lisbon"), Source::Missing), &context, None));
        assert!(!supported(Value::Null));
    }

    #[test]
    fn listed_choices_need_no_backing() {
        let context = words_of("Task: Book a table");
        let choices = vec![json!("indoor"), json!("outdoor")];
        assert!(is_supported(&proposed(json!("outdoor"), Source::Context), &context, Some(&choices)));
        assert!(!is_supported(&proposed(json!("rooftop"), Source::Context), &context, Some(&choices)));
    }
}
