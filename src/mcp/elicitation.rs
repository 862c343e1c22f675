//! MCP elicitation as clarifications.
//!
//! A server asks inside an open `tools/call`, which cannot be held open for the days
//! a person may take. So a question without a stored answer is declined at once and
//! becomes a clarification of the step; when the workflow resumes, the call is made
//! again and the server's repeated question is answered from the stored response.

use std::sync::{Mutex, PoisonError};

use rmcp::model::{ElicitRequestParams, ElicitResult, ElicitationAction};
use serde_json::{Map, Value, json};

use crate::clarification::{Clarification, ClarificationKind};
use crate::ids::WorkflowId;

/// A response meaning the person declined to answer; `"cancel"` dismisses the question.
const DECLINE: &str = "decline";
const CANCEL: &str = "cancel";

/// The questions asked during one tool call, and the answers its step already has.
pub(crate) struct ActiveCall {
    /// The step's LLM, which answers the server's sampling requests.
    pub(crate) llm: Option<std::sync::Arc<dyn crate::llm::LlmClient>>,
    workflow_id: WorkflowId,
    answered: Vec<Clarification>,
    asked: Mutex<Vec<Clarification>>,
}

impl ActiveCall {
    pub(crate) fn new(ctx: &crate::tool::ToolRunContext) -> Self {
        Self {
            llm: ctx.llm.clone(),
            workflow_id: ctx.workflow_id,
            answered: ctx.clarifications.clone(),
            asked: Mutex::default(),
        }
    }

    /// The answer to `request` from the step's clarifications, or a decline with the
    /// question kept for the person.
    pub(crate) fn elicit(&self, server: &str, request: &ElicitRequestParams) -> ElicitResult {
        let question = clarification(server, self.workflow_id, request);
        if let Some(result) = stored_answer(&question, request, &self.answered) {
            return result;
        }
        self.asked.lock().unwrap_or_else(PoisonError::into_inner).push(question);
        ElicitResult::new(ElicitationAction::Decline)
    }

    /// The questions left for a person.
    pub(crate) fn asked(&self) -> Vec<Clarification> {
        std::mem::take(&mut *self.asked.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The properties of a form's schema, as JSON.
fn properties(schema: &Value) -> Map<String, Value> {
    schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default()
}

/// A form with one property of options is a Multiple Choice, with one boolean a Value
/// Confirmation, anything else an Input answered with a JSON object of the fields
/// (or, for a single field, its value); a URL is an Action.
fn clarification(server: &str, workflow_id: WorkflowId, request: &ElicitRequestParams) -> Clarification {
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

fn stored_answer(
    question: &Clarification,
    request: &ElicitRequestParams,
    answered: &[Clarification],
) -> Option<ElicitResult> {
    if let ClarificationKind::Action { action_url } = &question.kind {
        let done = answered.iter().rev().find(|c| {
            c.resolved && matches!(&c.kind, ClarificationKind::Action { action_url: url } if url == action_url)
        })?;
        return Some(match done.response.as_ref().and_then(Value::as_str) {
            Some(DECLINE) => ElicitResult::new(ElicitationAction::Decline),
            Some(CANCEL) => ElicitResult::new(ElicitationAction::Cancel),
            _ => ElicitResult::new(ElicitationAction::Accept),
        });
    }
    let response = crate::clarification::latest_answer(answered, question.argument_name()?)?;
    Some(match response.as_str() {
        Some(DECLINE) => ElicitResult::new(ElicitationAction::Decline),
        Some(CANCEL) => ElicitResult::new(ElicitationAction::Cancel),
        _ => ElicitResult::new(ElicitationAction::Accept).with_content(content(request, response)),
    })
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
