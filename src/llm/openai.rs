//! OpenAI Chat Completions (`POST {base}/chat/completions`), also spoken by Mistral,
//! Groq, OpenRouter, Ollama and any OpenAI-compatible server.
//!
//! Structured replies ask for `response_format: json_schema`. Many compatible
//! servers (and older OpenAI models) refuse it with a 400; the call is then sent
//! again once with `json_object` and the schema in the system prompt, and the model
//! is remembered so later calls go straight to `json_object`. Both modes only
//! produce objects: other schemas are wrapped (see [`schema`](super::schema)).
//! The [`Retry`](super::Retry) layer around this client retries the call as a
//! whole: should the `json_object` request fail with a retryable error before the
//! model is remembered, the retry asks with `json_schema` first again.
//!
//! Inside a streaming scope ([`Deltas`]) the request asks for a stream, with the
//! usage in its last chunk (see [`openai_stream`](super::openai_stream)).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};

use serde_json::{Map, Value, json};

use super::openai_stream::ChunkReader;
use super::rate_limit::Limiters;
use super::schema::{SentSchema, portable};
use super::stream::Deltas;
use super::transport::{Account, Endpoint, Reply, secret_header};
use super::{LlmError, LlmProvider, LlmRequest, LlmResponse, LlmSettings, Message, Role, ToolCall, ToolChoice, Usage};

/// A client for one OpenAI-protocol provider.
#[derive(Debug)]
pub(crate) struct OpenAiClient {
    account: Account,
    provider: LlmProvider,
    /// For Azure OpenAI: the `api-version`, and whether the key is an Entra token.
    azure: Option<(String, bool)>,
    /// Models whose server refused `json_schema`: they get `json_object` from now on.
    json_object_models: Mutex<HashSet<String>>,
}

/// How a reply's shape is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// No output schema.
    Free,
    /// `response_format: json_schema`.
    JsonSchema,
    /// `response_format: json_object`, the schema in the system prompt.
    JsonObject,
}

impl OpenAiClient {
    /// A client for `provider` at its configured base URL, sharing `http`'s connection pool.
    pub(crate) fn new(
        http: reqwest::Client,
        settings: &LlmSettings,
        limiters: Arc<Limiters>,
        provider: LlmProvider,
    ) -> Self {
        Self {
            account: Account::new(http, settings, provider, limiters),
            provider,
            azure: (provider == LlmProvider::AzureOpenAi).then(|| {
                let (version, bearer) = settings.azure();
                (version.to_owned(), bearer)
            }),
            json_object_models: Mutex::new(HashSet::new()),
        }
    }

    /// Sends `request` to `model` with a reply of at most `max_tokens`: once, or
    /// twice when the server refuses `json_schema`. The [`Retry`](super::Retry)
    /// layer around this client retries.
    pub(crate) async fn chat(
        &self,
        model: &str,
        request: &LlmRequest,
        max_tokens: u32,
    ) -> Result<LlmResponse, LlmError> {
        let endpoint = self.endpoint(model)?;
        let format = self.format_for(model, request);
        match self.send(&endpoint, request, format, max_tokens).await {
            Err(error) if format == Format::JsonSchema && refuses_request(&error) => {
                tracing::warn!(provider = %self.provider, model, error = %error, "json_schema refused; trying json_object");
                let result = self.send(&endpoint, request, Format::JsonObject, max_tokens).await;
                // Remembered only when json_object is what made the difference.
                if result.is_ok() {
                    self.json_object_models.lock().unwrap_or_else(PoisonError::into_inner).insert(model.to_owned());
                }
                result
            }
            result => result,
        }
    }

    fn format_for(&self, model: &str, request: &LlmRequest) -> Format {
        if request.output_schema.is_none() {
            Format::Free
        } else if self.json_object_models.lock().unwrap_or_else(PoisonError::into_inner).contains(model) {
            Format::JsonObject
        } else {
            Format::JsonSchema
        }
    }

    /// OpenAI took `max_tokens` away from its newer models in favour of
    /// `max_completion_tokens`; compatible servers only know `max_tokens`.
    fn token_cap_field(&self) -> &'static str {
        match self.provider {
            LlmProvider::OpenAi | LlmProvider::AzureOpenAi => "max_completion_tokens",
            _ => "max_tokens",
        }
    }

    fn endpoint<'a>(&'a self, model: &'a str) -> Result<Endpoint<'a>, LlmError> {
        let url = format!("{}/chat/completions", self.account.base_url);
        let mut endpoint = self.account.endpoint(self.provider, model, url);
        // OpenAI-compatible servers and Ollama take their optional key from PORTIA_LLM_API_KEY.
        endpoint.key_var = endpoint.key_var.or(Some("PORTIA_LLM_API_KEY"));
        let bearer = match &self.azure {
            Some((version, bearer)) => {
                endpoint.url = self.azure_url(model, version).map_err(|e| endpoint.not_sent(e))?;
                if *bearer {
                    endpoint.key_var = Some("AZURE_OPENAI_AD_TOKEN");
                }
                *bearer
            }
            None => true,
        };
        if let Some(key) = &self.account.key {
            let header = if bearer {
                secret_header("authorization", &format!("Bearer {}", key.expose()))
            } else {
                secret_header("api-key", key.expose())
            };
            let (name, value) = header.map_err(|e| endpoint.not_sent(e))?;
            endpoint.headers.insert(name, value);
        }
        Ok(endpoint)
    }

    /// Azure's URL of a deployment's Chat Completions: the model names the deployment.
    /// (The router has checked that the resource's endpoint is set.)
    fn azure_url(&self, deployment: &str, version: &str) -> Result<String, String> {
        if deployment.contains(['/', '?', '#', '&']) {
            return Err(format!("{deployment:?} is not an Azure deployment name"));
        }
        Ok(format!("{}/openai/deployments/{deployment}/chat/completions?api-version={version}", self.account.base_url))
    }

    async fn send(
        &self,
        endpoint: &Endpoint<'_>,
        request: &LlmRequest,
        format: Format,
        max_tokens: u32,
    ) -> Result<LlmResponse, LlmError> {
        let wanted = request.output_schema.as_ref().map(|s| (s.wire_name(), SentSchema::new(&s.schema)));
        let cap = (self.token_cap_field(), max_tokens);
        let body =
            request_body(endpoint.model, request, format, wanted.as_ref(), cap).map_err(|e| endpoint.not_sent(e))?;
        let reply = match Deltas::current() {
            Some(deltas) => streamed(endpoint, body, &deltas).await?,
            None => endpoint.post(body).await?,
        };
        let mut response = parse_reply(&reply.body).map_err(|e| endpoint.invalid(e))?;
        if let Some((_, sent)) = &wanted {
            response.text = response.text.map(|text| sent.unwrap_text(text));
        }
        endpoint.log_success(&reply, response.usage);
        Ok(response)
    }
}

/// Sends `body` as a streamed request, handing the text to `deltas` as it comes,
/// and returns the reply an unstreamed request would have got (or got, from a
/// server that answers whole).
async fn streamed(endpoint: &Endpoint<'_>, mut body: Value, deltas: &Deltas) -> Result<Reply, LlmError> {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    deltas.begin_attempt();
    let mut reader = ChunkReader::default();
    let mut reply = endpoint.post_events(body, |_, data| reader.read(data, deltas)).await?;
    if reply.body.is_null() {
        reply.body = reader.into_reply();
    }
    Ok(reply)
}

/// A 400 or 422 to a request carrying a response format. Servers word their
/// refusal of a schema in many ways (llama.cpp: "JSON schema error at ...: schema
/// must be an object"), so any such refusal is worth one try with `json_object`,
/// but for a prompt and cap too long for the context, which `json_object` would not
/// change (the router retries that with a smaller cap).
fn refuses_request(error: &LlmError) -> bool {
    matches!(error, LlmError::Http { status: 400 | 422, .. }) && !super::caps::is_context_overflow(error)
}

/// The Chat Completions body. Only widely supported fields are sent, so compatible
/// servers accept it too (no `seed`, `store`, `temperature` or `parallel_tool_calls`).
/// `wanted` is the output schema's name and the schema sent for it; `cap` the field
/// that caps the reply's tokens, and the cap (so a looping model stops).
fn request_body(
    model: &str,
    request: &LlmRequest,
    format: Format,
    wanted: Option<&(String, std::sync::Arc<SentSchema>)>,
    cap: (&str, u32),
) -> Result<Value, String> {
    let mut messages = request.messages.iter().map(message).collect::<Result<Vec<_>, _>>()?;
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(cap.0.into(), json!(cap.1));
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": portable(&t.parameters)}}))
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        body.insert("tool_choice".into(), tool_choice(&request.tool_choice));
    }
    match (format, wanted) {
        (Format::JsonSchema, Some((name, sent))) => {
            body.insert("response_format".into(), json_schema_format(name, &sent.schema));
        }
        (Format::JsonObject, Some((name, sent))) => {
            add_schema_instruction(&mut messages, name, &sent.schema);
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        _ => {}
    }
    body.insert("messages".into(), Value::Array(messages));
    Ok(Value::Object(body))
}

fn message(message: &Message) -> Result<Value, String> {
    Ok(match message.role {
        Role::System => json!({"role": "system", "content": message.content}),
        Role::User => json!({"role": "user", "content": message.content}),
        Role::Assistant if message.tool_calls.is_empty() => json!({"role": "assistant", "content": message.content}),
        Role::Assistant => {
            let calls: Vec<Value> = message
                .tool_calls
                .iter()
                .map(|call| {
                    json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments.to_string()}})
                })
                .collect();
            json!({"role": "assistant", "content": message.content, "tool_calls": calls})
        }
        Role::Tool => {
            let id = message.tool_call_id.as_deref().ok_or("a tool message has no tool_call_id")?;
            json!({"role": "tool", "tool_call_id": id, "content": message.content})
        }
    })
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

fn json_schema_format(name: &str, schema: &Value) -> Value {
    json!({
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema, "strict": is_strict(schema)},
    })
}

/// `json_object` mode only promises JSON, so the shape goes in the prompt; the
/// prompt must also say "JSON" or OpenAI refuses the mode.
fn add_schema_instruction(messages: &mut Vec<Value>, name: &str, schema: &Value) {
    let instruction = format!("Reply with only a JSON object that matches this JSON schema ({name}):\n{schema}");
    let leading_system = messages.first_mut().filter(|m| m["role"] == "system");
    match leading_system.and_then(|m| m.get_mut("content")) {
        Some(Value::String(content)) => {
            content.push_str("\n\n");
            content.push_str(&instruction);
        }
        _ => messages.insert(0, json!({"role": "system", "content": instruction})),
    }
}

/// Whether OpenAI's strict mode would accept `schema` as it is: the root and every
/// object in it close their properties (`additionalProperties: false`) and require
/// all of them. Schemas with optional fields are sent non-strict rather than
/// rewritten, since the types they come from rely on serde defaults.
pub(crate) fn is_strict(schema: &Value) -> bool {
    schema.as_object().is_some_and(is_object_schema) && all_objects_closed(schema)
}

fn all_objects_closed(schema: &Value) -> bool {
    let Some(node) = schema.as_object() else { return true };
    if is_object_schema(node) && !closes_all_properties(node) {
        return false;
    }
    subschemas(node).all(all_objects_closed)
}

fn is_object_schema(node: &Map<String, Value>) -> bool {
    let typed_object = match node.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(types)) => types.iter().any(|t| t == "object"),
        _ => false,
    };
    typed_object || node.contains_key("properties")
}

fn closes_all_properties(node: &Map<String, Value>) -> bool {
    let required: HashSet<&str> =
        node.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let properties = node.get("properties").and_then(Value::as_object);
    node.get("additionalProperties") == Some(&Value::Bool(false))
        && properties.into_iter().flat_map(Map::keys).all(|name| required.contains(name.as_str()))
}

/// The schemas nested in `node`, found by keyword so that a property that happens
/// to be called `items` or `type` is not mistaken for one.
fn subschemas(node: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    const NAMED: [&str; 4] = ["properties", "$defs", "definitions", "patternProperties"];
    const DIRECT: [&str; 10] =
        ["items", "prefixItems", "additionalProperties", "anyOf", "oneOf", "allOf", "not", "if", "then", "else"];
    let named = NAMED.iter().filter_map(|k| node.get(*k)).filter_map(Value::as_object).flat_map(Map::values);
    let direct = DIRECT.iter().filter_map(|k| node.get(*k)).flat_map(|v| match v {
        Value::Array(items) => items.iter().collect::<Vec<_>>(),
        other => vec![other],
    });
    named.chain(direct)
}

fn parse_reply(body: &Value) -> Result<LlmResponse, String> {
    let choice = body.get("choices").and_then(|c| c.get(0)).ok_or("the reply has no choices")?;
    let message = choice.get("message").ok_or("the reply's first choice has no message")?;
    if choice.get("finish_reason").and_then(Value::as_str) == Some("length") {
        tracing::warn!("the LLM reply was cut off at its token limit");
    }
    let tool_calls = match message.get("tool_calls") {
        Some(Value::Array(calls)) => calls.iter().enumerate().map(tool_call).collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    Ok(LlmResponse { text: text(message.get("content")), tool_calls, usage: usage(body.get("usage")), model: None })
}

/// Content is a string, or (on some compatible servers) a list of text parts.
fn text(content: Option<&Value>) -> Option<String> {
    let text = match content? {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

fn tool_call((index, call): (usize, &Value)) -> Result<ToolCall, String> {
    let function = call.get("function").ok_or_else(|| format!("tool call {index} has no function"))?;
    let name = function.get("name").and_then(Value::as_str).ok_or_else(|| format!("tool call {index} has no name"))?;
    let arguments = match function.get("arguments") {
        // Some servers send an empty string for a call without arguments.
        Some(Value::String(text)) if text.trim().is_empty() => json!({}),
        Some(Value::String(text)) => serde_json::from_str(text)
            .map_err(|e| format!("the arguments of tool call {index} ({name}) are not valid JSON: {e}"))?,
        // Some compatible servers send the arguments as an object.
        Some(object @ Value::Object(_)) => object.clone(),
        None | Some(Value::Null) => json!({}),
        Some(other) => {
            return Err(format!("the arguments of tool call {index} ({name}) are not a JSON string: {other}"));
        }
    };
    let id = call.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{index}"), str::to_owned);
    Ok(ToolCall { id, name: name.to_owned(), arguments })
}

/// `prompt_tokens` includes the prefix OpenAI read from its prompt cache, which
/// `prompt_tokens_details.cached_tokens` counts apart (OpenAI bills no cache writes).
fn usage(usage: Option<&Value>) -> Usage {
    let count = |path: &str| usage.and_then(|u| u.pointer(path)).and_then(Value::as_u64).unwrap_or(0);
    Usage::call(count("/prompt_tokens"), count("/completion_tokens"))
        .with_cache(count("/prompt_tokens_details/cached_tokens"), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_needs_every_object_closed_and_fully_required() {
        let closed = json!({
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"$ref": "#/$defs/B"}},
            "required": ["a", "b"],
            "additionalProperties": false,
            "$defs": {"B": {"type": "object", "properties": {"c": {"type": "integer"}}, "required": ["c"], "additionalProperties": false}},
        });
        assert!(is_strict(&closed));

        let mut optional = closed.clone();
        optional["required"] = json!(["a"]);
        assert!(!is_strict(&optional));

        let mut open_def = closed.clone();
        open_def["$defs"]["B"]["additionalProperties"] = json!(true);
        assert!(!is_strict(&open_def));

        let mut open_in_array = closed.clone();
        open_in_array["properties"]["list"] = json!({"type": "array", "items": {"type": "object", "properties": {}}});
        open_in_array["required"] = json!(["a", "b", "list"]);
        assert!(!is_strict(&open_in_array));

        let mut open_in_any_of = closed;
        open_in_any_of["properties"]["b"] = json!({"anyOf": [{"type": "null"}, {"type": ["object", "null"]}]});
        assert!(!is_strict(&open_in_any_of));

        assert!(!is_strict(&json!({"type": "array", "items": {"type": "string"}})), "the root must be an object");
    }

    #[test]
    fn a_property_named_like_a_keyword_is_not_a_schema() {
        let schema = json!({
            "type": "object",
            "properties": {"items": {"type": "string"}, "properties": {"type": "string"}},
            "required": ["items", "properties"],
            "additionalProperties": false,
        });
        assert!(is_strict(&schema));
    }

    #[test]
    fn json_object_instruction_joins_the_leading_system_message() {
        let schema = json!({"type": "object"});
        let mut with_system =
            vec![json!({"role": "system", "content": "Be brief."}), json!({"role": "user", "content": "hi"})];
        add_schema_instruction(&mut with_system, "Out", &schema);
        assert_eq!(with_system.len(), 2);
        assert!(with_system[0]["content"].as_str().unwrap().starts_with("Be brief.\n\nReply with only a JSON object"));

        let mut without = vec![json!({"role": "user", "content": "hi"})];
        add_schema_instruction(&mut without, "Out", &schema);
        assert_eq!(without[0]["role"], "system");
        assert_eq!(without.len(), 2);
    }

    #[test]
    fn tool_arguments_accept_empty_strings_and_objects_but_not_garbage() {
        let call = |arguments: Value| json!({"id": "c", "function": {"name": "f", "arguments": arguments}});
        assert_eq!(tool_call((0, &call(json!("")))).unwrap().arguments, json!({}));
        assert_eq!(tool_call((0, &call(json!({"x": 1})))).unwrap().arguments, json!({"x": 1}));
        assert!(tool_call((0, &call(json!("{oops")))).unwrap_err().contains("not valid JSON"));
        assert!(tool_call((0, &call(json!(5)))).is_err());
    }
}
