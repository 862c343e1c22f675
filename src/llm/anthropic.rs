//! Anthropic Messages (`POST {base}/v1/messages`).
//!
//! The API has no JSON mode, so a structured reply is asked for as a call to one
//! forced tool whose input schema is the wanted schema; the call's input becomes
//! the reply's text (see [`schema`](super::schema) for schemas that are not
//! objects). `max_tokens` is required and always sent from the config: a low
//! default cuts off large tool inputs. The system prompt (or, without one, the
//! last tool) carries a `cache_control` breakpoint, so the stable prefix is cached.
//! Inside a streaming scope ([`Deltas`]) the reply is streamed (see
//! [`anthropic_stream`](super::anthropic_stream)).

use std::sync::Arc;

use reqwest::header::HeaderValue;
use serde_json::{Map, Value, json};

use super::anthropic_stream::EventReader;
use super::rate_limit::Limiters;
use super::reply::{CallShape, system_text, usage_with_cache_apart};
use super::schema::{SentSchema, object_schema, portable_shared};
use super::stream::Deltas;
use super::transport::{Account, Endpoint, Reply};
use super::{
    LlmError, LlmProvider, LlmRequest, LlmResponse, LlmSettings, Message, OutputSchema, Role, ToolChoice, Usage,
};
use crate::SharedValue;

const API_VERSION: &str = "2023-06-01";

/// A client for Anthropic's Messages API.
#[derive(Debug)]
pub(crate) struct AnthropicClient {
    account: Account,
}

/// The forced tool that carries a structured reply.
#[derive(Debug)]
struct ReplyTool {
    name: String,
    input: std::sync::Arc<SentSchema>,
}

impl AnthropicClient {
    /// A client at the configured Anthropic base URL, sharing `http`'s connection pool.
    pub(crate) fn new(http: reqwest::Client, settings: &LlmSettings, limiters: Arc<Limiters>) -> Self {
        Self { account: Account::new(http, settings, LlmProvider::Anthropic, limiters) }
    }

    /// Sends `request` to `model` with a reply of at most `max_tokens`, once: the
    /// [`Retry`](super::Retry) layer around this client retries.
    pub(crate) async fn chat(
        &self,
        model: &str,
        request: &LlmRequest,
        max_tokens: u32,
    ) -> Result<LlmResponse, LlmError> {
        let endpoint = self.endpoint(model)?;
        let reply_tool = request.output_schema.as_ref().map(ReplyTool::new);
        let body = request_body(model, max_tokens, request, reply_tool.as_ref()).map_err(|e| endpoint.not_sent(e))?;
        let reply = match Deltas::current() {
            Some(deltas) => streamed(&endpoint, body, &deltas).await?,
            None => endpoint.post(body).await?,
        };
        let response = parse_reply(&reply.body, reply_tool.as_ref()).map_err(|e| endpoint.invalid(e))?;
        endpoint.log_success(&reply, response.usage);
        Ok(response)
    }

    fn endpoint<'a>(&'a self, model: &'a str) -> Result<Endpoint<'a>, LlmError> {
        let url = format!("{}/v1/messages", self.account.base_url);
        let mut endpoint = self.account.endpoint(LlmProvider::Anthropic, model, url);
        endpoint.headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        if let Some(key) = &self.account.key {
            endpoint.add_key_header("x-api-key", key.expose())?;
        }
        Ok(endpoint)
    }
}

/// Sends `body` as a streamed request, handing the text to `deltas` as it comes,
/// and returns the reply an unstreamed request would have got (or got, from a
/// server that answers whole).
async fn streamed(endpoint: &Endpoint<'_>, mut body: Value, deltas: &Deltas) -> Result<Reply, LlmError> {
    body["stream"] = json!(true);
    deltas.begin_attempt();
    let mut reader = EventReader::default();
    let mut reply = endpoint.post_events(body, |name, data| reader.read(name, data, deltas)).await?;
    if reply.body.is_null() {
        reply.body = reader.into_reply();
    }
    Ok(reply)
}

impl ReplyTool {
    fn new(schema: &OutputSchema) -> Self {
        Self { name: schema.wire_name(), input: SentSchema::new(&schema.schema) }
    }

    fn definition(&self) -> Value {
        json!({
            "name": self.name,
            "description": format!("Give your answer as the {} object. Always call this tool to reply.", self.name),
            "input_schema": self.input.schema,
        })
    }
}

/// Tool inputs must be object schemas; a tool without arguments may have none at all.
fn tool_input_schema(parameters: &SharedValue) -> Value {
    let parameters = &portable_shared(parameters).value;
    object_schema(parameters).unwrap_or_else(|| match parameters {
        Value::Object(node) if !node.is_empty() => parameters.clone(),
        _ => json!({"type": "object", "properties": {}}),
    })
}

fn request_body(
    model: &str,
    max_tokens: u32,
    request: &LlmRequest,
    reply_tool: Option<&ReplyTool>,
) -> Result<Value, String> {
    let (system, messages) = conversation(&request.messages)?;
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("max_tokens".into(), json!(max_tokens));
    body.insert("messages".into(), Value::Array(messages));
    let mut tools: Vec<Value> = request
        .tools
        .iter()
        .map(
            |t| json!({"name": t.name, "description": t.description, "input_schema": tool_input_schema(&t.parameters)}),
        )
        .collect();
    let choice = match reply_tool {
        Some(reply) => {
            tools.push(reply.definition());
            Some(json!({"type": "tool", "name": reply.name}))
        }
        None => (!tools.is_empty()).then(|| tool_choice(&request.tool_choice)),
    };
    mark_cached_prefix(&mut body, &system, &mut tools);
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = choice {
        body.insert("tool_choice".into(), choice);
    }
    Ok(Value::Object(body))
}

/// Marks the end of the stable prefix (the tools, then the system prompt: the
/// order Anthropic caches in) for the prompt cache, so calls that share it are
/// billed a tenth for it. A prefix under the model's minimum (1,024 tokens for
/// most) is simply not cached.
fn mark_cached_prefix(body: &mut Map<String, Value>, system: &str, tools: &mut [Value]) {
    let ephemeral = json!({"type": "ephemeral"});
    if !system.is_empty() {
        body.insert("system".into(), json!([{"type": "text", "text": system, "cache_control": ephemeral}]));
    } else if let Some(Value::Object(last)) = tools.last_mut() {
        last.insert("cache_control".into(), ephemeral);
    }
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
    }
}

/// One turn of the Anthropic conversation, built up block by block.
#[derive(Debug)]
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

impl Turn {
    fn only_tool_results(&self) -> bool {
        self.role == "user" && self.blocks.iter().all(|b| b["type"] == "tool_result")
    }
}

/// Splits off the system prompt and maps the rest to turns. Tool results travel in
/// user turns, consecutive ones together, and a user's words that follow them join
/// that turn after them, as the API wants results first.
fn conversation(messages: &[Message]) -> Result<(String, Vec<Value>), String> {
    let mut system: Vec<&str> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for message in messages {
        match message.role {
            Role::System => system.push(&message.content),
            Role::User => {
                let block = text_block(&message.content);
                match turns.last_mut() {
                    Some(last) if last.role == "user" => last.blocks.extend(block),
                    _ => turns.push(Turn { role: "user", blocks: block.into_iter().collect() }),
                }
            }
            Role::Assistant => {
                let mut blocks: Vec<Value> = text_block(&message.content).into_iter().collect();
                blocks.extend(message.tool_calls.iter().map(
                    |call| json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}),
                ));
                turns.push(Turn { role: "assistant", blocks });
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().ok_or("a tool message has no tool_call_id")?;
                let block = json!({"type": "tool_result", "tool_use_id": id, "content": message.content});
                match turns.last_mut() {
                    Some(last) if last.only_tool_results() && !last.blocks.is_empty() => last.blocks.push(block),
                    _ => turns.push(Turn { role: "user", blocks: vec![block] }),
                }
            }
        }
    }
    let system = system_text(&system);
    // The API refuses empty content, and an empty turn carries nothing.
    let turns = turns
        .into_iter()
        .filter(|t| !t.blocks.is_empty())
        .map(|t| json!({"role": t.role, "content": t.blocks}))
        .collect();
    Ok((system, turns))
}

fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

fn parse_reply(body: &Value, reply_tool: Option<&ReplyTool>) -> Result<LlmResponse, String> {
    let blocks = body.get("content").and_then(Value::as_array).ok_or("the reply has no content list")?;
    if body.get("stop_reason").and_then(Value::as_str) == Some("max_tokens") {
        tracing::warn!("the LLM reply was cut off at max_tokens; raise PORTIA_MAX_TOKENS if this recurs");
    }
    let mut texts = Vec::new();
    let mut tool_calls = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => texts.extend(block.get("text").and_then(Value::as_str)),
            Some("tool_use") => tool_calls.push(TOOL_USE.read(index, block)?),
            // Thinking and other block kinds carry nothing the caller asked for.
            _ => {}
        }
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

const TOOL_USE: CallShape = CallShape { block: "tool_use block", arguments: "input", id: "id", id_prefix: "toolu" };

/// Anthropic's `input_tokens` leaves out the tokens read from and written to the
/// prompt cache.
fn usage(usage: Option<&Value>) -> Usage {
    usage_with_cache_apart(
        usage,
        ["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolCall;

    #[test]
    fn without_a_system_prompt_the_last_tool_ends_the_cached_prefix() {
        let tool = |name: &str| super::super::ToolDefinition {
            name: name.into(),
            description: "d".into(),
            parameters: json!({"type": "object"}).into(),
        };
        let request = LlmRequest::new(super::super::ModelRole::Execution, vec![Message::user("hi")])
            .with_tools(vec![tool("a"), tool("b")], ToolChoice::Auto);
        let body = request_body("m", 100, &request, None).unwrap();
        assert_eq!(body.get("system"), None);
        assert_eq!(body["tools"][0].get("cache_control"), None);
        assert_eq!(body["tools"][1]["cache_control"], json!({"type": "ephemeral"}));
    }

    #[test]
    fn tools_without_an_object_schema_get_an_empty_one() {
        assert_eq!(tool_input_schema(&Value::Null.into()), json!({"type": "object", "properties": {}}));
        assert_eq!(tool_input_schema(&json!({"properties": {}}).into()), json!({"type": "object", "properties": {}}));
    }

    #[test]
    fn user_words_after_tool_results_join_their_turn_after_them() {
        let messages = [
            Message::user("go"),
            Message::assistant("", vec![ToolCall { id: "t1".into(), name: "f".into(), arguments: json!({}) }]),
            Message::tool_result("t1", "done"),
            Message::user("now answer"),
        ];
        let (_, turns) = conversation(&messages).unwrap();
        assert_eq!(turns.len(), 3);
        assert_eq!(
            turns[2]["content"],
            json!([{"type": "tool_result", "tool_use_id": "t1", "content": "done"}, {"type": "text", "text": "now answer"}])
        );
        assert_eq!(turns[1]["content"], json!([{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]));
    }
}
