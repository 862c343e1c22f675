//! MCP elicitation as clarifications: a server's question as the clarification a
//! person answers, and the person's response as the server's result.
//!
//! A server asks inside an open `tools/call`, which cannot be held open for the days
//! a person may take: the call waits for a bounded time (see
//! [`ActiveCall::elicit`](super::call::ActiveCall::elicit)), after which the question
//! is declined and left to the workflow; when it resumes, the call is made again and
//! the server's repeated question is answered from the stored response.

use rmcp::model::{ElicitRequestParams, ElicitResult, ElicitationAction};
use serde_json::{Map, Value, json};

use crate::clarification::{Clarification, ClarificationKind};
use crate::ids::WorkflowId;

/// A response meaning the person declined to answer; `"cancel"` dismisses the question.
const DECLINE: &str = "decline";
const CANCEL: &str = "cancel";

/// The properties of a form's schema, as JSON.
fn properties(schema: &Value) -> Map<String, Value> {
    schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default()
}

/// A form with one property of options is a Multiple Choice, with one boolean a Value
/// Confirmation, anything else an Input answered with a JSON object of the fields
/// (or, for a single field, its value); a URL is an Action.
pub(super) fn question(server: &str, workflow_id: WorkflowId, request: &ElicitRequestParams) -> Clarification {
    match request {
        ElicitRequestParams::FormElicitationParams { message, requested_schema, .. } => {
            let schema = serde_json::to_value(requested_schema).unwrap_or_default();
            let name = argument_name(server, message, &schema);
            let properties = properties(&schema);
            let single = (properties.len() == 1).then(|| properties.values().next().cloned()).flatten();
            let options = single.as_ref().and_then(|p| p.get("enum").and_then(Value::as_array).cloned());
            let guidance = guidance(server, message, &properties);
            match (single.as_ref().and_then(|p| p.get("type")).and_then(Value::as_str), options) {
                (_, Some(options)) => Clarification::multiple_choice(workflow_id, name, options, guidance),
                (Some("boolean"), None) => {
                    let proposed = single.and_then(|p| p.get("default").cloned()).unwrap_or(Value::Bool(true));
                    Clarification::value_confirmation(workflow_id, name, proposed, guidance)
                }
                _ => Clarification::input(workflow_id, name, guidance),
            }
        }
        ElicitRequestParams::UrlElicitationParams { message, url, .. } => {
            Clarification::action(workflow_id, url.clone(), format!("{server} asks: {message}"))
        }
        _ => Clarification::input(workflow_id, format!("mcp:{server}"), format!("{server} asks a question")),
    }
}

/// Stable for the same question, so the repeated one finds the stored answer.
fn argument_name(server: &str, message: &str, schema: &Value) -> String {
    format!("mcp:{server}:{}", super::mapping::stable_hash(&format!("{message}\n{schema}")))
}

fn guidance(server: &str, message: &str, properties: &Map<String, Value>) -> String {
    let fields: Vec<String> = properties
        .iter()
        .map(|(name, p)| {
            let about = p.get("description").or_else(|| p.get("title")).and_then(Value::as_str).unwrap_or_default();
            format!("{name} ({}): {about}", p.get("type").and_then(Value::as_str).unwrap_or("any"))
        })
        .collect();
    let answer = if properties.len() > 1 { " Answer with a JSON object of these fields" } else { "" };
    format!("{server} asks: {message}{answer} {}", fields.join("; ")).trim().to_owned()
}

/// The result for `question` from a resolved clarification among `answered`, if any.
pub(super) fn stored_answer(
    question: &Clarification,
    request: &ElicitRequestParams,
    answered: &[Clarification],
) -> Option<ElicitResult> {
    let response = match &question.kind {
        ClarificationKind::Action { action_url } => {
            let done = answered.iter().rev().find(|c| {
                c.resolved && matches!(&c.kind, ClarificationKind::Action { action_url: url } if url == action_url)
            })?;
            done.response.clone().unwrap_or_default()
        }
        _ => crate::clarification::latest_answer(answered, question.argument_name()?)?.clone(),
    };
    Some(answer(question, request, &response))
}

/// The server's result for a person's `response` to `question`: `"decline"` and
/// `"cancel"` are MCP's; anything else accepts, a form with the response as content.
pub(super) fn answer(question: &Clarification, request: &ElicitRequestParams, response: &Value) -> ElicitResult {
    match response.as_str() {
        Some(DECLINE) => ElicitResult::new(ElicitationAction::Decline),
        Some(CANCEL) => ElicitResult::new(ElicitationAction::Cancel),
        _ if matches!(question.kind, ClarificationKind::Action { .. }) => ElicitResult::new(ElicitationAction::Accept),
        _ => ElicitResult::new(ElicitationAction::Accept).with_content(content(request, response)),
    }
}

/// The person's response as the form's content object: an object as it is, a single
/// field's value wrapped in its name, JSON text parsed.
fn content(request: &ElicitRequestParams, response: &Value) -> Value {
    let ElicitRequestParams::FormElicitationParams { requested_schema, .. } = request else { return json!({}) };
    let properties = properties(&serde_json::to_value(requested_schema).unwrap_or_default());
    let single = (properties.len() == 1).then(|| properties.keys().next().cloned()).flatten();
    match (response, single) {
        (Value::Object(object), Some(name)) if !object.contains_key(&name) => json!({ name: response }),
        (Value::Object(_), _) => response.clone(),
        (_, Some(name)) => json!({ name: response }),
        (Value::String(text), None) => serde_json::from_str(text).unwrap_or_else(|_| json!({})),
        (_, None) => json!({}),
    }
}
