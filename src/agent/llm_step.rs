//! Steps without a tool: one LLM call over the step's context.
//!
//! A step with an output schema is answered as structured output and checked; a
//! reply that does not fit is shown to the model once with its problems. The step
//! that writes the workflow's final answer writes its summary in the same call, so
//! no separate summary call is needed.

use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use super::{StepContext, StepOutcome};
use crate::SharedValue;
use crate::llm::{LlmRequest, Message, ModelRole, OutputSchema};
use crate::schema_check::check_value;
use crate::text::strip_code_fence;
use crate::workflow::{FailureKind, Output};

const SYSTEM: &str = "You do one step of a plan: answer the task from the context given, concisely, inventing \
nothing. Reply with the answer only.";

/// For the step that answers the query: the answer, and a summary for the user.
const FINAL_SYSTEM: &str =
    "Do this last plan step from the context only. JSON: answer (the task's), summary (for the user, under 300 chars).";

/// How many times a reply that does not fit the schema is shown to the model.
const SCHEMA_RETRIES: usize = 1;

/// Answers the step with one LLM call (two when a typed reply must be fixed).
pub(super) async fn answer(ctx: &StepContext) -> StepOutcome {
    match (&ctx.step.output_schema, ctx.writes_final_answer) {
        (None, false) => answer_in_text(ctx).await,
        (None, true) => answer_with_summary(ctx).await,
        (Some(schema), summarize) => answer_typed(ctx, schema, summarize).await,
    }
}

async fn answer_in_text(ctx: &StepContext) -> StepOutcome {
    let request = LlmRequest::new(ModelRole::Execution, vec![Message::system(SYSTEM), Message::user(ctx.prompt())]);
    match ctx.llm.chat(request).await {
        Ok(response) => text_output(response.text.unwrap_or_default()),
        Err(e) => StepOutcome::llm_failed(&e),
    }
}

pub(super) fn text_output(text: String) -> StepOutcome {
    if text.trim().is_empty() {
        return StepOutcome::failed(FailureKind::Agent, "the model gave an empty answer");
    }
    StepOutcome::Output(Output::new(text))
}

/// The final answer in text with its summary, in one call. A model that ignores
/// the JSON format still answers: its text is the answer, and the runner
/// summarizes as it would have.
async fn answer_with_summary(ctx: &StepContext) -> StepOutcome {
    let request = final_request(ctx, text_and_summary());
    let text = match ctx.llm.chat(request).await {
        Ok(response) => response.text.unwrap_or_default(),
        Err(e) => return StepOutcome::llm_failed(&e),
    };
    match serde_json::from_str::<Value>(strip_code_fence(&text)) {
        Ok(Value::Object(mut reply)) => {
            let answer = match reply.remove("answer") {
                Some(Value::String(answer)) => answer,
                Some(other) if !other.is_null() => other.to_string(),
                _ => return text_output(text),
            };
            let output = Output::new(answer);
            match reply.remove("summary").as_ref().and_then(Value::as_str).map(str::trim) {
                Some(summary) if !summary.is_empty() => StepOutcome::Output(output.with_summary(summary)),
                _ => StepOutcome::Output(output),
            }
        }
        _ => text_output(text),
    }
}

/// A structured answer of `schema`, checked; with a summary when it is the final answer.
async fn answer_typed(ctx: &StepContext, schema: &Value, summarize: bool) -> StepOutcome {
    let wanted = if summarize { with_summary(schema) } else { schema.clone() };
    let request = if summarize {
        final_request(ctx, wanted.clone())
    } else {
        let messages = vec![Message::system(SYSTEM), Message::user(ctx.prompt())];
        LlmRequest::new(ModelRole::Execution, messages).with_output_schema(output_schema(wanted.clone()))
    };
    reply_typed(ctx, request, &wanted, summarize).await
}

/// Sends `request` (which asks for JSON of `wanted`) and checks the reply, showing
/// the model its problems once; with `summarize`, the reply holds the answer and a summary.
pub(super) async fn reply_typed(
    ctx: &StepContext,
    mut request: LlmRequest,
    wanted: &Value,
    summarize: bool,
) -> StepOutcome {
    let mut problems = String::new();
    for attempt in 0..=SCHEMA_RETRIES {
        let text = match ctx.llm.chat(request.clone()).await {
            Ok(response) => response.text.unwrap_or_default(),
            Err(e) => return StepOutcome::llm_failed(&e),
        };
        let checked = serde_json::from_str::<Value>(strip_code_fence(&text))
            .map_err(|e| format!("the reply is not JSON ({e})"))
            .and_then(|value| check_value(wanted, &value).map(|()| value));
        match checked {
            Ok(value) if summarize => return StepOutcome::Output(split_summary(value)),
            Ok(value) => return StepOutcome::Output(Output::new(value)),
            Err(found) => problems = found,
        }
        tracing::warn!(step = ctx.step_index, attempt, %problems, "the typed answer does not fit its schema");
        request.messages.push(Message::assistant(text, Vec::new()));
        request.messages.push(Message::user(format!(
            "That reply does not fit the schema: {problems}. Reply again with only the corrected JSON."
        )));
    }
    let message = format!("the model's answer does not fit the step's output schema: {problems}");
    StepOutcome::failed(FailureKind::SchemaMismatch, message)
}

/// The schema of a final answer in text with its summary: one value shared by every
/// such step, so that the memos of what is sent find it by its address.
fn text_and_summary() -> SharedValue {
    static MADE: LazyLock<SharedValue> = LazyLock::new(|| with_summary(&json!({"type": "string"})).into());
    MADE.clone()
}

fn final_request(ctx: &StepContext, schema: impl Into<SharedValue>) -> LlmRequest {
    LlmRequest::new(ModelRole::Execution, vec![Message::system(FINAL_SYSTEM), Message::user(ctx.prompt())])
        .with_output_schema(output_schema(schema))
}

pub(super) fn output_schema(schema: impl Into<SharedValue>) -> OutputSchema {
    OutputSchema::new("answer", schema)
}

/// `{answer: schema, summary: string}`, with the answer's definitions lifted to the
/// root so that its `#/$defs/...` references still resolve.
fn with_summary(schema: &Value) -> Value {
    let mut answer = schema.clone();
    let mut root = Map::new();
    if let Some(node) = answer.as_object_mut() {
        for key in ["$defs", "definitions"] {
            if let Some(defs) = node.remove(key) {
                root.insert(key.to_owned(), defs);
            }
        }
    }
    root.insert("type".to_owned(), json!("object"));
    root.insert("properties".to_owned(), json!({"answer": answer, "summary": {"type": "string"}}));
    root.insert("required".to_owned(), json!(["answer", "summary"]));
    root.insert("additionalProperties".to_owned(), json!(false));
    Value::Object(root)
}

fn split_summary(mut value: Value) -> Output {
    let summary = value.get("summary").and_then(Value::as_str).map(str::trim).unwrap_or_default().to_owned();
    let output = Output::new(value.get_mut("answer").map(Value::take).unwrap_or_default());
    if summary.is_empty() { output } else { output.with_summary(summary) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_wraps_the_answer_and_keeps_its_definitions_resolvable() {
        let schema =
            json!({"$ref": "#/$defs/R", "$defs": {"R": {"type": "object", "properties": {"n": {"type": "integer"}}}}});
        let wrapped = with_summary(&schema);
        assert_eq!(wrapped["properties"]["answer"], json!({"$ref": "#/$defs/R"}));
        assert!(wrapped["$defs"]["R"].is_object());
        assert_eq!(check_value(&wrapped, &json!({"answer": {"n": 1}, "summary": "s"})), Ok(()));
        assert!(check_value(&wrapped, &json!({"answer": {"n": "x"}, "summary": "s"})).is_err());
        let output = split_summary(json!({"answer": {"n": 1}, "summary": " s "}));
        assert_eq!(output.value, json!({"n": 1}));
        assert_eq!(output.summary.as_deref(), Some("s"));
    }

    #[test]
    fn every_final_text_answer_asks_with_one_shared_schema() {
        let (first, second) = (text_and_summary(), text_and_summary());
        assert!(std::sync::Arc::ptr_eq(first.as_arc(), second.as_arc()));
        assert_eq!(first, with_summary(&json!({"type": "string"})));
    }
}
