//! AWS Bedrock through the Converse API (`POST {base}/model/{modelId}/converse`).
//!
//! Every request is signed with Signature Version 4 (see [`aws`](super::aws)).
//! Tools are `toolSpec`s with a JSON-schema `inputSchema`; calls and results travel
//! as `toolUse` and `toolResult` content blocks. Converse has no JSON-schema mode,
//! so a structured reply is asked for as a call to one forced tool whose input
//! schema is the wanted one (wrapped when it is not an object, see
//! [`schema`](super::schema)), and the call's input becomes the reply's text.
//! Usage is Converse's own count; cache reads and writes are prompt tokens too.
//! For the models that take them (see [`CachePoints`]), a `cachePoint` block ends
//! the stable prefix, as `cache_control` does for Anthropic's own API.
//! Inside a streaming scope ([`Deltas`]) the reply is streamed from
//! `converse-stream` (see [`bedrock_stream`](super::bedrock_stream)).

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::aws::AwsCredentials;
use super::bedrock_stream::FrameReader;
use super::rate_limit::Limiters;
use super::reply::{CallShape, Turns, system_text, usage_with_cache_apart};
use super::schema::{SentSchema, object_schema, portable_shared};
use super::stream::Deltas;
use super::transport::{Account, Endpoint, Reply};
use super::{
    LlmError, LlmProvider, LlmRequest, LlmResponse, LlmSettings, Message, OutputSchema, Role, ToolChoice, Usage,
};
use crate::SharedValue;

/// A client for Bedrock's Converse API.
#[derive(Debug)]
pub(crate) struct BedrockClient {
    account: Account,
    credentials: Option<AwsCredentials>,
    region: Option<String>,
}

/// The forced tool that carries a structured reply.
#[derive(Debug)]
struct ReplyTool {
    name: String,
    input: std::sync::Arc<SentSchema>,
}

impl BedrockClient {
    /// A client at the configured Bedrock endpoint, sharing `http`'s connection pool.
    pub(crate) fn new(http: reqwest::Client, settings: &LlmSettings, limiters: Arc<Limiters>) -> Self {
        let (credentials, region) = settings.aws();
        Self {
            account: Account::new(http, settings, LlmProvider::Bedrock, limiters),
            credentials: credentials.cloned(),
            region: region.map(str::to_owned),
        }
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
        let action = if deltas.is_some() { "converse-stream" } else { "converse" };
        let url = format!("{}/model/{}/{action}", self.account.base_url, path_segment(model));
        let mut endpoint = self.account.endpoint(LlmProvider::Bedrock, model, url);
        let reply_tool = request.output_schema.as_ref().map(ReplyTool::new);
        let cache = CachePoints::for_model(model);
        let body = request_body(max_tokens, request, reply_tool.as_ref(), cache).map_err(|e| endpoint.not_sent(e))?;
        self.sign(&mut endpoint, &body)?;
        let reply = match &deltas {
            Some(deltas) => streamed(&endpoint, &body, deltas).await?,
            None => endpoint.post(body).await?,
        };
        let response = parse_reply(&reply.body, reply_tool.as_ref()).map_err(|e| endpoint.invalid(e))?;
        endpoint.log_success(&reply, response.usage);
        Ok(response)
    }

    /// Adds the SigV4 headers for `body` (serialized as the transport will send it).
    fn sign(&self, endpoint: &mut Endpoint<'_>, body: &Value) -> Result<(), LlmError> {
        let Some(credentials) = &self.credentials else {
            return Err(LlmError::MissingApiKey {
                provider: LlmProvider::Bedrock.to_string(),
                env_var: super::aws::CREDENTIAL_VARS.to_owned(),
            });
        };
        let Some(region) = self.region.as_deref() else {
            return Err(endpoint.not_sent(super::aws::MISSING_REGION));
        };
        let bytes = serde_json::to_vec(body).map_err(|e| endpoint.not_sent(e.to_string()))?;
        let headers =
            credentials.sign(region, &endpoint.url, &bytes, SystemTime::now()).map_err(|e| endpoint.not_sent(e))?;
        endpoint
            .headers
            .insert(reqwest::header::CONTENT_TYPE, reqwest::header::HeaderValue::from_static("application/json"));
        endpoint.headers.extend(headers);
        Ok(())
    }
}

/// Sends `body` to `converse-stream`, handing the text to `deltas` as it comes, and
/// returns the reply `converse` would have given (or gave, from a server that
/// answers whole).
async fn streamed(endpoint: &Endpoint<'_>, body: &Value, deltas: &Deltas) -> Result<Reply, LlmError> {
    deltas.begin_attempt();
    let mut reader = FrameReader::default();
    let mut reply = endpoint.post_frames(body, |bytes| reader.read(bytes, deltas)).await?;
    if reply.body.is_null() {
        reply.body = reader.into_reply().map_err(|e| endpoint.invalid(e))?;
    }
    Ok(reply)
}

/// A model id (or an inference profile's ARN, with its `:` and `/`) as one path
/// segment: everything but unreserved characters percent-encoded, as the AWS SDKs send it.
fn path_segment(model: &str) -> String {
    let mut encoded = String::with_capacity(model.len());
    for byte in model.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

impl ReplyTool {
    fn new(schema: &OutputSchema) -> Self {
        Self { name: schema.wire_name(), input: SentSchema::new(&schema.schema) }
    }

    fn spec(&self) -> Value {
        tool_spec(
            &self.name,
            &format!("Give your answer as the {} object. Always call this tool to reply.", self.name),
            self.input.schema.clone(),
        )
    }
}

fn tool_spec(name: &str, description: &str, schema: Value) -> Value {
    json!({"toolSpec": {"name": name, "description": description, "inputSchema": {"json": schema}}})
}

/// Tool inputs must be object schemas; a tool without arguments gets an empty one.
fn input_schema(parameters: &SharedValue) -> Value {
    let parameters = &portable_shared(parameters).value;
    object_schema(parameters).unwrap_or_else(|| match parameters {
        Value::Object(node) if !node.is_empty() => parameters.clone(),
        _ => json!({"type": "object", "properties": {}}),
    })
}

/// Where a model takes Converse's prompt-cache points. Claude (from 3.5 Haiku and
/// 3.7 Sonnet on) caches the tools and the system prompt; Nova caches the system
/// prompt but not tools; every other model refuses a request that has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CachePoints {
    system: bool,
    tools: bool,
}

impl CachePoints {
    /// Claude models older than these have no prompt cache on Bedrock.
    const UNCACHED_CLAUDE: [&str; 6] =
        ["claude-instant", "claude-v2", "claude-3-haiku", "claude-3-sonnet", "claude-3-opus", "claude-3-5-sonnet"];

    /// From the model id or inference profile (`us.anthropic.claude-…`). An ARN names
    /// no family, so it gets none: a missed cache costs less than a refused request.
    fn for_model(model: &str) -> Self {
        let claude = model.split_once("anthropic.claude").map(|(_, rest)| format!("claude{rest}"));
        match claude {
            Some(claude) if !Self::UNCACHED_CLAUDE.iter().any(|old| claude.starts_with(old)) => {
                Self { system: true, tools: true }
            }
            Some(_) => Self::default(),
            None if model.contains("amazon.nova") => Self { system: true, tools: false },
            None => Self::default(),
        }
    }

    /// The block that ends a cached prefix.
    fn block() -> Value {
        json!({"cachePoint": {"type": "default"}})
    }
}

fn request_body(
    max_tokens: u32,
    request: &LlmRequest,
    reply_tool: Option<&ReplyTool>,
    cache: CachePoints,
) -> Result<Value, String> {
    let (system, messages) = conversation(&request.messages)?;
    let mut body = Map::new();
    body.insert("messages".into(), Value::Array(messages));
    // Like Anthropic's own API, the cache covers the tools and then the system
    // prompt: one point after the system prompt caches both.
    let system_cached = cache.system && !system.is_empty();
    if !system.is_empty() {
        let mut blocks = vec![json!({"text": system})];
        blocks.extend(system_cached.then(CachePoints::block));
        body.insert("system".into(), Value::Array(blocks));
    }
    body.insert("inferenceConfig".into(), json!({"maxTokens": max_tokens}));
    let mut tools: Vec<Value> =
        request.tools.iter().map(|t| tool_spec(&t.name, &t.description, input_schema(&t.parameters))).collect();
    let choice = match reply_tool {
        Some(reply) => {
            tools.push(reply.spec());
            Some(json!({"tool": {"name": reply.name}}))
        }
        None => (!tools.is_empty()).then(|| tool_choice(&request.tool_choice)),
    };
    if cache.tools && !system_cached && !tools.is_empty() {
        tools.push(CachePoints::block());
    }
    if let Some(choice) = choice {
        body.insert("toolConfig".into(), json!({"tools": tools, "toolChoice": choice}));
    }
    Ok(Value::Object(body))
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!({"auto": {}}),
        ToolChoice::Required => json!({"any": {}}),
        ToolChoice::Tool(name) => json!({"tool": {"name": name}}),
    }
}

/// Splits off the system prompt and maps the rest to messages whose roles
/// alternate, as Converse wants: consecutive blocks of one role share a message,
/// and tool results travel in user messages, before any words of the user that follow.
fn conversation(messages: &[Message]) -> Result<(String, Vec<Value>), String> {
    let mut system: Vec<&str> = Vec::new();
    let mut turns = Turns::default();
    for message in messages {
        let (role, blocks) = match message.role {
            Role::System => {
                system.push(&message.content);
                continue;
            }
            Role::User => ("user", text_block(&message.content).into_iter().collect()),
            Role::Assistant => {
                let mut blocks: Vec<Value> = text_block(&message.content).into_iter().collect();
                blocks.extend(message.tool_calls.iter().map(
                    |call| json!({"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.arguments}}),
                ));
                ("assistant", blocks)
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().ok_or("a tool message has no tool_call_id")?;
                // A blank text block is refused, and a result must say something.
                let text = if message.content.is_empty() { "(no output)" } else { message.content.as_str() };
                ("user", vec![json!({"toolResult": {"toolUseId": id, "content": [{"text": text}]}})])
            }
        };
        turns.push(role, blocks);
    }
    Ok((system_text(&system), turns.into_json("content")))
}

fn text_block(text: &str) -> Option<Value> {
    (!text.trim().is_empty()).then(|| json!({"text": text}))
}

fn parse_reply(body: &Value, reply_tool: Option<&ReplyTool>) -> Result<LlmResponse, String> {
    let blocks =
        body.pointer("/output/message/content").and_then(Value::as_array).ok_or("the reply has no output message")?;
    match body.get("stopReason").and_then(Value::as_str) {
        Some("max_tokens") => {
            tracing::warn!("the LLM reply was cut off at maxTokens; raise PORTIA_MAX_TOKENS if this recurs");
        }
        Some(reason @ ("guardrail_intervened" | "content_filtered")) => {
            return Err(format!("the reply was withheld ({reason})"));
        }
        _ => {}
    }
    let mut texts = Vec::new();
    let mut tool_calls = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        if let Some(text) = block.get("text").and_then(Value::as_str) {
            texts.push(text);
        } else if let Some(call) = block.get("toolUse") {
            tool_calls.push(TOOL_USE.read(index, call)?);
        }
        // Reasoning and other blocks carry nothing the caller asked for.
    }
    let mut text = (!texts.is_empty()).then(|| texts.join("\n"));
    if let Some(reply) = reply_tool
        && let Some(position) = tool_calls.iter().position(|call| call.name == reply.name)
    {
        let call = tool_calls.remove(position);
        text = Some(reply.input.unwrap(&call.arguments).to_string());
    }
    Ok(LlmResponse { text, tool_calls, usage: usage(body.get("usage")), model: None })
}

const TOOL_USE: CallShape =
    CallShape { block: "toolUse block", arguments: "input", id: "toolUseId", id_prefix: "tooluse" };

/// `inputTokens` leaves out the tokens read from or written to the prompt cache.
fn usage(usage: Option<&Value>) -> Usage {
    usage_with_cache_apart(usage, ["inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolCall;

    #[test]
    fn model_ids_and_arns_are_one_encoded_path_segment() {
        assert_eq!(
            path_segment("anthropic.claude-3-5-haiku-20241022-v1:0"),
            "anthropic.claude-3-5-haiku-20241022-v1%3A0"
        );
        assert_eq!(
            path_segment("arn:aws:bedrock:us-east-1:123:inference-profile/us.amazon.nova-lite-v1:0"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fus.amazon.nova-lite-v1%3A0"
        );
    }

    #[test]
    fn tool_results_open_the_user_turn_and_words_follow_them() {
        let messages = [
            Message::user("go"),
            Message::assistant("", vec![ToolCall { id: "t1".into(), name: "f".into(), arguments: json!({}) }]),
            Message::tool_result("t1", ""),
            Message::user("now answer"),
        ];
        let (_, turns) = conversation(&messages).unwrap();
        assert_eq!(turns.len(), 3);
        assert_eq!(
            turns[2]["content"],
            json!([{"toolResult": {"toolUseId": "t1", "content": [{"text": "(no output)"}]}}, {"text": "now answer"}])
        );
    }

    #[test]
    fn cache_points_go_only_to_the_models_that_take_them() {
        let both = CachePoints { system: true, tools: true };
        assert_eq!(CachePoints::for_model("anthropic.claude-3-5-haiku-20241022-v1:0"), both);
        assert_eq!(CachePoints::for_model("us.anthropic.claude-sonnet-4-5-20250929-v1:0"), both);
        assert_eq!(CachePoints::for_model("anthropic.claude-3-5-sonnet-20241022-v2:0"), CachePoints::default());
        assert_eq!(CachePoints::for_model("anthropic.claude-3-haiku-20240307-v1:0"), CachePoints::default());
        assert_eq!(CachePoints::for_model("us.amazon.nova-lite-v1:0"), CachePoints { system: true, tools: false });
        assert_eq!(CachePoints::for_model("meta.llama3-70b-instruct-v1:0"), CachePoints::default());
        let arn = "arn:aws:bedrock:us-east-1:123:inference-profile/x";
        assert_eq!(CachePoints::for_model(arn), CachePoints::default());
    }

    #[test]
    fn without_a_system_prompt_the_cache_point_follows_the_tools() {
        let clock = crate::llm::ToolDefinition {
            name: "clock".into(),
            description: "The time".into(),
            parameters: Value::Null.into(),
        };
        let request = LlmRequest::new(crate::llm::ModelRole::Execution, vec![Message::user("time?")])
            .with_tools(vec![clock], ToolChoice::Auto);
        let claude = CachePoints { system: true, tools: true };
        let body = request_body(100, &request, None, claude).unwrap();
        assert_eq!(body.get("system"), None);
        assert_eq!(body["toolConfig"]["tools"][1], CachePoints::block());
        let nova = CachePoints { system: true, tools: false };
        let body = request_body(100, &request, None, nova).unwrap();
        assert_eq!(body["toolConfig"]["tools"].as_array().unwrap().len(), 1, "Nova caches no tools");
    }

    #[test]
    fn a_guardrail_intervention_is_an_error_saying_so() {
        let body =
            json!({"output": {"message": {"role": "assistant", "content": []}}, "stopReason": "guardrail_intervened"});
        assert!(parse_reply(&body, None).unwrap_err().contains("guardrail_intervened"));
    }
}
