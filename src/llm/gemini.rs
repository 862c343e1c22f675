//! Google Gemini (`POST {base}/v1beta/models/{model}:generateContent`, or
//! `:streamGenerateContent?alt=sse` when the caller wants the reply streamed).
//!
//! Tools are function declarations with a JSON-schema `parametersJsonSchema`;
//! structured replies ask for `responseMimeType: application/json` with the
//! portable schema as `responseJsonSchema` (Gemini takes any root, so nothing is
//! wrapped). Usage comes from `usageMetadata`: thinking tokens are billed as output,
//! so they count as completion tokens. The key travels in the `x-goog-api-key`
//! header, never in the URL, so it cannot reach a log line that prints one.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::gemini_stream::ChunkReader;
use super::rate_limit::Limiters;
use super::reply::{CallShape, Turns, system_text};
use super::schema::{object_schema, portable};
use super::stream::Deltas;
use super::transport::{Account, Endpoint, Reply};
use super::{LlmError, LlmProvider, LlmRequest, LlmResponse, LlmSettings, Message, Role, ToolChoice, Usage};

/// A client for the Gemini API.
#[derive(Debug)]
pub(crate) struct GeminiClient {
    account: Account,
}

impl GeminiClient {
    /// A client at the configured Gemini base URL, sharing `http`'s connection pool.
    pub(crate) fn new(http: reqwest::Client, settings: &LlmSettings, limiters: Arc<Limiters>) -> Self {
        Self { account: Account::new(http, settings, LlmProvider::Gemini, limiters) }
    }

    /// Sends `request` to `model` with a reply of at most `max_tokens`, once: the
    /// [`Retry`](super::Retry) layer around this client retries.
    pub(crate) async fn chat(
        &self,
        model: &str,
        request: &LlmRequest,
        max_tokens: u32,
    ) -> Result<LlmResponse, LlmError> {
        let deltas = Deltas::current();
        let endpoint = self.endpoint(model, deltas.is_some())?;
        let body = request_body(request, max_tokens).map_err(|e| endpoint.not_sent(e))?;
        let reply = match deltas {
            Some(deltas) => streamed(&endpoint, body, &deltas).await?,
            None => endpoint.post(body).await?,
        };
        let response = parse_reply(&reply.body).map_err(|e| endpoint.invalid(e))?;
        endpoint.log_success(&reply, response.usage);
        Ok(response)
    }

    fn endpoint<'a>(&'a self, model: &'a str, stream: bool) -> Result<Endpoint<'a>, LlmError> {
        let method = if stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
        let url = format!("{}/v1beta/models/{model}:{method}", self.account.base_url);
        let mut endpoint = self.account.endpoint(LlmProvider::Gemini, model, url);
        if model.contains(['/', '?', '#', ':']) {
            return Err(endpoint.not_sent(format!("{model:?} is not a Gemini model name (such as gemini-2.5-flash)")));
        }
        if let Some(key) = &self.account.key {
            endpoint.add_key_header("x-goog-api-key", key.expose())?;
        }
        Ok(endpoint)
    }
}

/// Sends `body` as a streamed request, handing the text to `deltas` as it comes,
/// and returns the reply an unstreamed request would have got.
async fn streamed(endpoint: &Endpoint<'_>, body: Value, deltas: &Deltas) -> Result<Reply, LlmError> {
    deltas.begin_attempt();
    let mut reader = ChunkReader::default();
    let mut reply = endpoint.post_events(body, |_, data| reader.read(data, deltas)).await?;
    if reply.body.is_null() {
        reply.body = reader.into_reply();
    }
    Ok(reply)
}

/// The `generateContent` body (the same for `streamGenerateContent`).
fn request_body(request: &LlmRequest, max_tokens: u32) -> Result<Value, String> {
    let (system, contents) = conversation(&request.messages)?;
    let mut body = Map::new();
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": [{"text": system}]}));
    }
    body.insert("contents".into(), Value::Array(contents));
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "parametersJsonSchema": parameters(&t.parameters)}))
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
        body.insert("toolConfig".into(), json!({"functionCallingConfig": function_calling(&request.tool_choice)}));
    }
    let mut generation = Map::new();
    generation.insert("maxOutputTokens".into(), json!(max_tokens));
    if let Some(schema) = &request.output_schema {
        generation.insert("responseMimeType".into(), json!("application/json"));
        generation.insert("responseJsonSchema".into(), portable(&schema.schema));
    }
    body.insert("generationConfig".into(), Value::Object(generation));
    Ok(Value::Object(body))
}

/// A function's parameters: an object schema (one without arguments gets an empty one).
fn parameters(schema: &Value) -> Value {
    let schema = &portable(schema);
    object_schema(schema).unwrap_or_else(|| match schema {
        Value::Object(node) if !node.is_empty() => schema.clone(),
        _ => json!({"type": "object", "properties": {}}),
    })
}

fn function_calling(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!({"mode": "AUTO"}),
        ToolChoice::Required => json!({"mode": "ANY"}),
        ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
    }
}

/// Splits off the system instruction and maps the rest to `contents`. A function's
/// response must name the function, which a tool message only knows by call id: the
/// name comes from the assistant message that made the call. Consecutive parts of
/// one role share a turn, as the API wants turns to alternate.
fn conversation(messages: &[Message]) -> Result<(String, Vec<Value>), String> {
    let mut system: Vec<&str> = Vec::new();
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut turns = Turns::default();
    for message in messages {
        let (role, parts) = match message.role {
            Role::System => {
                system.push(&message.content);
                continue;
            }
            Role::User => ("user", text_part(&message.content).into_iter().collect()),
            Role::Assistant => {
                let mut parts: Vec<Value> = text_part(&message.content).into_iter().collect();
                for call in &message.tool_calls {
                    names.insert(&call.id, &call.name);
                    parts.push(json!({"functionCall": {"name": call.name, "args": call.arguments}}));
                }
                ("model", parts)
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().ok_or("a tool message has no tool_call_id")?;
                let name = names.get(id).ok_or_else(|| format!("the tool result {id} answers no earlier tool call"))?;
                ("user", vec![json!({"functionResponse": {"name": name, "response": {"result": message.content}}})])
            }
        };
        turns.push(role, parts);
    }
    Ok((system_text(&system), turns.into_json("parts")))
}

fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"text": text}))
}

fn parse_reply(body: &Value) -> Result<LlmResponse, String> {
    let Some(candidate) = body.get("candidates").and_then(|c| c.get(0)) else {
        let reason = body.pointer("/promptFeedback/blockReason").and_then(Value::as_str);
        return Err(match reason {
            Some(reason) => format!("the prompt was blocked ({reason})"),
            None => "the reply has no candidates".to_owned(),
        });
    };
    match candidate.get("finishReason").and_then(Value::as_str) {
        Some("MAX_TOKENS") => tracing::warn!("the LLM reply was cut off at its token limit"),
        Some(reason @ ("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII")) => {
            return Err(format!("the reply was withheld ({reason})"));
        }
        _ => {}
    }
    let parts = candidate.pointer("/content/parts").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let mut texts = Vec::new();
    let mut tool_calls = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        // Thought summaries are the model's reasoning, not its answer.
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            texts.push(text);
        } else if let Some(call) = part.get("functionCall") {
            tool_calls.push(FUNCTION_CALL.read(index, call)?);
        }
    }
    let text = (!texts.is_empty()).then(|| texts.concat());
    Ok(LlmResponse { text, tool_calls, usage: usage(body.get("usageMetadata")), model: None })
}

// Older models give no id; the conversation pairs results with calls by it.
const FUNCTION_CALL: CallShape = CallShape { block: "function call", arguments: "args", id: "id", id_prefix: "call" };

/// Thinking tokens are billed as output; cached prompt tokens are part of the
/// prompt count, and `cachedContentTokenCount` counts them apart.
fn usage(metadata: Option<&Value>) -> Usage {
    let count = |field: &str| metadata.and_then(|u| u.get(field)).and_then(Value::as_u64).unwrap_or(0);
    Usage::call(count("promptTokenCount"), count("candidatesTokenCount") + count("thoughtsTokenCount"))
        .with_cache(count("cachedContentTokenCount"), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolCall;

    #[test]
    fn a_tool_result_takes_the_name_of_the_call_it_answers() {
        let messages = [
            Message::system("Be brief."),
            Message::user("go"),
            Message::assistant("", vec![ToolCall { id: "c1".into(), name: "search".into(), arguments: json!({}) }]),
            Message::tool_result("c1", "found"),
            Message::user("now answer"),
        ];
        let (system, contents) = conversation(&messages).unwrap();
        assert_eq!(system, "Be brief.");
        assert_eq!(contents.len(), 3);
        assert_eq!(
            contents[2],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "search", "response": {"result": "found"}}},
                {"text": "now answer"},
            ]})
        );
        let orphan = [Message::tool_result("c9", "x")];
        assert!(conversation(&orphan).unwrap_err().contains("c9"));
    }

    #[test]
    fn a_blocked_prompt_says_why() {
        let err = parse_reply(&json!({"promptFeedback": {"blockReason": "SAFETY"}})).unwrap_err();
        assert!(err.contains("SAFETY"), "{err}");
    }
}
