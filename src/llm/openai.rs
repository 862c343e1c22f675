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

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::openai_stream::ChunkReader;
use super::rate_limit::Limiters;
use super::schema::{Portable, SentSchema, portable_shared};
use super::stream::Deltas;
use super::transport::{Account, Endpoint, Reply};
use super::{
    LlmError, LlmProvider, LlmRequest, LlmResponse, LlmSettings, Message, Role, ToolCall, ToolChoice, ToolDefinition,
    Usage,
};

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
    fn token_cap(&self, max_tokens: u32) -> TokenCap {
        match self.provider {
            LlmProvider::OpenAi | LlmProvider::AzureOpenAi => TokenCap::MaxCompletionTokens(max_tokens),
            _ => TokenCap::MaxTokens(max_tokens),
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
            if bearer {
                endpoint.add_key_header("authorization", &format!("Bearer {}", key.expose()))?;
            } else {
                endpoint.add_key_header("api-key", key.expose())?;
            }
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
        let cap = self.token_cap(max_tokens);
        let body =
            Body::new(endpoint.model, request, format, wanted.as_ref(), cap).map_err(|e| endpoint.not_sent(e))?;
        let Reply { body, status, latency } = match Deltas::current() {
            Some(deltas) => streamed(endpoint, body.streamed(), &deltas).await?,
            None => endpoint.post_as(body).await?,
        };
        let mut response = body.into_response().map_err(|e| endpoint.invalid(e))?;
        if let Some((_, sent)) = &wanted {
            response.text = response.text.map(|text| sent.unwrap_text(text));
        }
        endpoint.log_success(&Reply { body: (), status, latency }, response.usage);
        Ok(response)
    }
}

/// Sends `body` as a streamed request, handing the text to `deltas` as it comes,
/// and returns the reply an unstreamed request would have got (or got, from a
/// server that answers whole).
async fn streamed(endpoint: &Endpoint<'_>, body: Body<'_>, deltas: &Deltas) -> Result<Reply<WireReply>, LlmError> {
    deltas.begin_attempt();
    let mut reader = ChunkReader::default();
    let Reply { body, status, latency } = endpoint.post_events(body, |_, data| reader.read(data, deltas)).await?;
    let body = if body.is_null() { reader.into_reply() } else { body };
    Ok(Reply { body: endpoint.read(body)?, status, latency })
}

/// A 400 or 422 to a request carrying a response format. Servers word their
/// refusal of a schema in many ways (llama.cpp: "JSON schema error at ...: schema
/// must be an object"), so any such refusal is worth one try with `json_object`,
/// but for a prompt and cap too long for the context, which `json_object` would not
/// change (the router retries that with a smaller cap).
fn refuses_request(error: &LlmError) -> bool {
    matches!(error, LlmError::Http { status: 400 | 422, .. }) && !super::caps::is_context_overflow(error)
}

/// The Chat Completions body, written out straight from the request: no JSON tree
/// is built for it (a prompt may carry whole search results, and the schemas come
/// from memos). Only widely supported fields are sent, so compatible servers accept
/// it too (no `seed`, `store`, `temperature` or `parallel_tool_calls`).
#[derive(Debug, Serialize)]
struct Body<'a> {
    model: &'a str,
    #[serde(flatten)]
    cap: TokenCap,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
    messages: Vec<WireMessage<'a>>,
    /// Set for a streamed reply, with `stream_options` asking for the usage last.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

impl<'a> Body<'a> {
    /// The body for `request` to `model`. `wanted` is the output schema's name and the
    /// schema sent for it; `cap` the reply's token cap.
    fn new(
        model: &'a str,
        request: &'a LlmRequest,
        format: Format,
        wanted: Option<&'a (String, Arc<SentSchema>)>,
        cap: TokenCap,
    ) -> Result<Self, String> {
        let mut messages = request.messages.iter().map(WireMessage::new).collect::<Result<Vec<_>, _>>()?;
        let response_format = match (format, wanted) {
            (Format::JsonSchema, Some((name, sent))) => Some(ResponseFormat::JsonSchema {
                json_schema: JsonSchema { name, schema: &sent.json, strict: sent.strict },
            }),
            (Format::JsonObject, Some((name, sent))) => {
                add_schema_instruction(&mut messages, name, &sent.schema);
                Some(ResponseFormat::JsonObject)
            }
            _ => None,
        };
        Ok(Self {
            model,
            cap,
            tools: request.tools.iter().map(WireTool::new).collect(),
            tool_choice: (!request.tools.is_empty()).then(|| WireChoice::new(&request.tool_choice)),
            response_format,
            messages,
            stream: false,
            stream_options: None,
        })
    }

    /// The same body, asking for the reply as a stream of chunks with the usage last.
    fn streamed(self) -> Self {
        Self { stream: true, stream_options: Some(StreamOptions { include_usage: true }), ..self }
    }
}

/// The reply's token cap (so a looping model stops), in the field the provider takes.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum TokenCap {
    /// What compatible servers (and OpenAI's older models) know.
    MaxTokens(u32),
    /// What OpenAI's newer models take instead.
    MaxCompletionTokens(u32),
}

#[derive(Debug, Serialize)]
struct WireTool<'a> {
    r#type: &'static str,
    function: WireFunction<'a>,
}

#[derive(Debug, Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: Arc<Portable>,
}

impl<'a> WireTool<'a> {
    fn new(tool: &'a ToolDefinition) -> Self {
        let parameters = portable_shared(&tool.parameters);
        Self {
            r#type: "function",
            function: WireFunction { name: &tool.name, description: &tool.description, parameters },
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum WireChoice<'a> {
    Mode(&'static str),
    Tool { r#type: &'static str, function: Named<'a> },
}

impl<'a> WireChoice<'a> {
    fn new(choice: &'a ToolChoice) -> Self {
        match choice {
            ToolChoice::Auto => Self::Mode("auto"),
            ToolChoice::Required => Self::Mode("required"),
            ToolChoice::Tool(name) => Self::Tool { r#type: "function", function: Named { name } },
        }
    }
}

#[derive(Debug, Serialize)]
struct Named<'a> {
    name: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat<'a> {
    JsonSchema { json_schema: JsonSchema<'a> },
    JsonObject,
}

#[derive(Debug, Serialize)]
struct JsonSchema<'a> {
    name: &'a str,
    schema: &'a RawValue,
    strict: bool,
}

#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Debug, Serialize)]
struct WireMessage<'a> {
    role: Role,
    /// Borrowed from the request but where the schema instruction is added to it.
    content: Cow<'a, str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

impl<'a> WireMessage<'a> {
    fn new(message: &'a Message) -> Result<Self, String> {
        let tool_call_id = match message.role {
            Role::Tool => Some(message.tool_call_id.as_deref().ok_or("a tool message has no tool_call_id")?),
            _ => None,
        };
        let tool_calls = match message.role {
            Role::Assistant => message.tool_calls.iter().map(WireCall::new).collect(),
            _ => Vec::new(),
        };
        Ok(Self { role: message.role, content: Cow::Borrowed(&message.content), tool_calls, tool_call_id })
    }
}

#[derive(Debug, Serialize)]
struct WireCall<'a> {
    id: &'a str,
    r#type: &'static str,
    function: WireCallFunction<'a>,
}

#[derive(Debug, Serialize)]
struct WireCallFunction<'a> {
    name: &'a str,
    /// The arguments as JSON text, as the API takes them.
    arguments: String,
}

impl<'a> WireCall<'a> {
    fn new(call: &'a ToolCall) -> Self {
        let function = WireCallFunction { name: &call.name, arguments: call.arguments.to_string() };
        Self { id: &call.id, r#type: "function", function }
    }
}

/// `json_object` mode only promises JSON, so the shape goes in the prompt; the
/// prompt must also say "JSON" or OpenAI refuses the mode.
fn add_schema_instruction(messages: &mut Vec<WireMessage<'_>>, name: &str, schema: &Value) {
    let instruction = format!("Reply with only a JSON object that matches this JSON schema ({name}):\n{schema}");
    match messages.first_mut().filter(|m| m.role == Role::System) {
        Some(system) => system.content = Cow::Owned(format!("{}\n\n{instruction}", system.content)),
        None => messages.insert(
            0,
            WireMessage {
                role: Role::System,
                content: Cow::Owned(instruction),
                tool_calls: Vec::new(),
                tool_call_id: None,
            },
        ),
    }
}

/// What the client reads of a Chat Completions reply. The rest (ids, timestamps,
/// fingerprints, log probabilities) is skipped as the reply is read, not built
/// into a tree first.
#[derive(Debug, Deserialize)]
struct WireReply {
    #[serde(default)]
    choices: Vec<WireReplyChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct WireReplyChoice {
    #[serde(default)]
    message: Option<WireReplyMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireReplyMessage {
    /// A string, or (on some compatible servers) a list of text parts.
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<WireReplyCall>>,
}

#[derive(Debug, Deserialize)]
struct WireReplyCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireReplyFunction>,
}

#[derive(Debug, Deserialize)]
struct WireReplyFunction {
    #[serde(default)]
    name: Option<String>,
    /// A JSON string, or (on some compatible servers) an object.
    #[serde(default)]
    arguments: Option<Value>,
}

/// `prompt_tokens` includes the prefix OpenAI read from its prompt cache, which
/// `prompt_tokens_details.cached_tokens` counts apart (OpenAI bills no cache writes).
#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<WireTokenDetails>,
}

#[derive(Debug, Deserialize)]
struct WireTokenDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl WireReply {
    fn into_response(self) -> Result<LlmResponse, String> {
        let choice = self.choices.into_iter().next().ok_or("the reply has no choices")?;
        let message = choice.message.ok_or("the reply's first choice has no message")?;
        if choice.finish_reason.as_deref() == Some("length") {
            tracing::warn!("the LLM reply was cut off at its token limit");
        }
        let calls = message.tool_calls.unwrap_or_default().into_iter().enumerate();
        let tool_calls = calls.map(WireReplyCall::into_call).collect::<Result<_, _>>()?;
        Ok(LlmResponse {
            text: text(message.content),
            tool_calls,
            usage: self.usage.unwrap_or_default().into(),
            model: None,
        })
    }
}

impl From<WireUsage> for Usage {
    fn from(usage: WireUsage) -> Self {
        let cached = usage.prompt_tokens_details.and_then(|d| d.cached_tokens);
        Usage::call(usage.prompt_tokens.unwrap_or(0), usage.completion_tokens.unwrap_or(0))
            .with_cache(cached.unwrap_or(0), 0)
    }
}

/// The text of a reply's content: a string, or the text of its parts.
fn text(content: Option<Value>) -> Option<String> {
    let text = match content? {
        Value::String(text) => text,
        Value::Array(parts) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

impl WireReplyCall {
    fn into_call((index, call): (usize, Self)) -> Result<ToolCall, String> {
        let function = call.function.ok_or_else(|| format!("tool call {index} has no function"))?;
        let name = function.name.ok_or_else(|| format!("tool call {index} has no name"))?;
        let arguments = match function.arguments {
            // Some servers send an empty string for a call without arguments.
            Some(Value::String(text)) if text.trim().is_empty() => json!({}),
            Some(Value::String(text)) => serde_json::from_str(&text)
                .map_err(|e| format!("the arguments of tool call {index} ({name}) are not valid JSON: {e}"))?,
            // Some compatible servers send the arguments as an object.
            Some(object @ Value::Object(_)) => object,
            None | Some(Value::Null) => json!({}),
            Some(other) => {
                return Err(format!("the arguments of tool call {index} ({name}) are not a JSON string: {other}"));
            }
        };
        let id = call.id.unwrap_or_else(|| format!("call_{index}"));
        Ok(ToolCall { id, name, arguments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(messages: Vec<Message>) -> LlmRequest {
        LlmRequest::new(crate::llm::ModelRole::Planning, messages)
    }

    fn body_of(request: &LlmRequest, format: Format, wanted: Option<&(String, Arc<SentSchema>)>) -> Value {
        let body = Body::new("m", request, format, wanted, TokenCap::MaxTokens(64)).unwrap();
        serde_json::to_value(body).unwrap()
    }

    #[test]
    fn the_body_carries_every_part_of_the_request() {
        let call = ToolCall { id: "c1".into(), name: "add".into(), arguments: json!({"a": 1}) };
        let asked = Message::assistant("", vec![call]);
        let mut answered = Message::user("3");
        (answered.role, answered.tool_call_id) = (Role::Tool, Some("c1".into()));
        let mut request = request_with(vec![Message::system("Be brief."), Message::user("1+2?"), asked, answered]);
        request.tools = vec![ToolDefinition {
            name: "add".into(),
            description: "Adds.".into(),
            parameters: json!({"type": "object", "properties": {"a": true}}).into(),
        }];
        request.tool_choice = ToolChoice::Tool("add".into());
        let wanted = ("Sum".to_owned(), SentSchema::new(&json!({"type": "integer"}).into()));
        let body =
            Body::new("m", &request, Format::JsonSchema, Some(&wanted), TokenCap::MaxCompletionTokens(64)).unwrap();
        assert_eq!(
            serde_json::to_value(body.streamed()).unwrap(),
            json!({
                "model": "m",
                "max_completion_tokens": 64,
                "tools": [{"type": "function", "function": {
                    "name": "add", "description": "Adds.",
                    "parameters": {"type": "object", "properties": {"a": {}}},
                }}],
                "tool_choice": {"type": "function", "function": {"name": "add"}},
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "Sum", "schema": wanted.1.schema, "strict": true,
                }},
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "1+2?"},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1}"}},
                    ]},
                    {"role": "tool", "content": "3", "tool_call_id": "c1"},
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
    }

    #[test]
    fn a_plain_request_sends_no_tools_format_or_stream() {
        let body = body_of(&request_with(vec![Message::user("hi")]), Format::Free, None);
        assert_eq!(body, json!({"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}));
        let mut request = request_with(vec![Message::user("hi")]);
        request.tools =
            vec![ToolDefinition { name: "t".into(), description: String::new(), parameters: json!({}).into() }];
        for (choice, sent) in [(ToolChoice::Auto, json!("auto")), (ToolChoice::Required, json!("required"))] {
            request.tool_choice = choice;
            assert_eq!(body_of(&request, Format::Free, None)["tool_choice"], sent);
        }
    }

    #[test]
    fn a_tool_message_without_its_call_id_is_not_sent() {
        let mut answered = Message::user("3");
        answered.role = Role::Tool;
        let err =
            Body::new("m", &request_with(vec![answered]), Format::Free, None, TokenCap::MaxTokens(1)).unwrap_err();
        assert!(err.contains("tool_call_id"), "{err}");
    }

    #[test]
    fn json_object_instruction_joins_the_leading_system_message() {
        let wanted = ("Out".to_owned(), SentSchema::new(&json!({"type": "object"}).into()));
        let with_system = request_with(vec![Message::system("Be brief."), Message::user("hi")]);
        let body = body_of(&with_system, Format::JsonObject, Some(&wanted));
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        assert_eq!(body["messages"].as_array().unwrap().len(), 2);
        assert!(
            body["messages"][0]["content"].as_str().unwrap().starts_with("Be brief.\n\nReply with only a JSON object")
        );

        let body = body_of(&request_with(vec![Message::user("hi")]), Format::JsonObject, Some(&wanted));
        assert_eq!(body["messages"][0]["role"], "system");
        assert!(body["messages"][0]["content"].as_str().unwrap().contains("JSON schema (Out)"));
        assert_eq!(body["messages"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn tool_arguments_accept_empty_strings_and_objects_but_not_garbage() {
        let call = |arguments: Value| {
            let call = json!({"id": "c", "function": {"name": "f", "arguments": arguments}});
            WireReplyCall::into_call((0, serde_json::from_value(call).unwrap()))
        };
        assert_eq!(call(json!("")).unwrap().arguments, json!({}));
        assert_eq!(call(json!({"x": 1})).unwrap().arguments, json!({"x": 1}));
        assert!(call(json!("{oops")).unwrap_err().contains("not valid JSON"));
        assert!(call(json!(5)).is_err());
    }

    #[test]
    fn a_reply_is_read_for_its_text_calls_and_usage_and_nothing_else() {
        let reply = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "system_fingerprint": "fp",
            "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}}],
            }}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 8}},
        });
        let reply: WireReply = serde_json::from_slice(reply.to_string().as_bytes()).unwrap();
        let response = reply.into_response().unwrap();
        assert_eq!(response.text.as_deref(), Some("ab"));
        let call = &response.tool_calls[0];
        assert_eq!((call.id.as_str(), call.name.as_str(), &call.arguments), ("call_0", "add", &json!({"a": 1})));
        assert_eq!(response.usage, Usage::call(12, 3).with_cache(8, 0));

        let read = |reply: Value| serde_json::from_value::<WireReply>(reply).unwrap().into_response();
        assert_eq!(read(json!({"choices": []})).unwrap_err(), "the reply has no choices");
        assert_eq!(read(json!({})).unwrap_err(), "the reply has no choices");
        assert_eq!(read(json!({"choices": [{}]})).unwrap_err(), "the reply's first choice has no message");
        let bare = read(json!({"choices": [{"message": {"content": null, "tool_calls": null}}]})).unwrap();
        assert_eq!((bare.text, bare.tool_calls.len(), bare.usage), (None, 0, Usage::call(0, 0)));
    }
}
