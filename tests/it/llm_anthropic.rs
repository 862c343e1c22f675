//! The Anthropic Messages provider against an in-process mock server: the exact
//! request it sends, how it reads replies, structured output through a forced
//! tool, retries and errors, and routing by `provider/model`.

use std::sync::Arc;
use std::time::Duration;

use portia::config::ConfigBuilder;
use portia::llm::{
    LlmClient, LlmError, LlmProvider, LlmRequest, Message, ModelRole, OutputSchema, ToolCall, ToolChoice,
    ToolDefinition, Usage, schema_value, structured,
};
use portia::{Config, Error};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk-ant-test-0123456789";
const ROUTE: &str = "/v1/messages";

fn config(server: &MockServer) -> ConfigBuilder {
    Config::builder()
        .llm_provider(LlmProvider::Anthropic)
        .anthropic_api_key(KEY)
        .anthropic_base_url(server.uri())
        .default_model("claude-test")
        .max_retries(2u32)
        .request_timeout_secs(5u64)
}

fn client(config: ConfigBuilder) -> Arc<dyn LlmClient> {
    config.build().expect("valid config").llm_client().expect("client builds")
}

fn ask(text: &str) -> LlmRequest {
    LlmRequest::new(ModelRole::Execution, vec![Message::user(text)])
}

fn message(content: Value) -> Value {
    json!({
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": content,
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 20, "output_tokens": 7},
    })
}

fn text_reply(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(message(json!([{"type": "text", "text": text}])))
}

fn error_reply(status: u16, kind: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"type": "error", "error": {"type": kind, "message": message}}))
}

/// The next `n` requests get `reply` (later mocks answer the ones after), and `n` must arrive.
async fn mount(server: &MockServer, reply: ResponseTemplate, n: u64) {
    Mock::given(method("POST")).and(path(ROUTE)).respond_with(reply).up_to_n_times(n).expect(n).mount(server).await;
}

/// Every request gets `reply`, and exactly `n` must arrive: a retry would show.
async fn mount_exactly(server: &MockServer, reply: ResponseTemplate, n: u64) {
    Mock::given(method("POST")).and(path(ROUTE)).respond_with(reply).expect(n).mount(server).await;
}

async fn bodies(server: &MockServer) -> Vec<Value> {
    let requests = server.received_requests().await.expect("recording is on");
    requests.iter().map(|r| serde_json::from_slice(&r.body).expect("JSON body")).collect()
}

#[derive(Debug, PartialEq, Deserialize, JsonSchema)]
struct Answer {
    city: String,
    #[serde(default)]
    population: Option<u64>,
}

#[tokio::test]
async fn request_body_and_headers_are_exact() {
    let server = MockServer::start().await;
    mount(&server, text_reply("ok"), 1).await;
    let calls = vec![
        ToolCall { id: "toolu_1".into(), name: "price".into(), arguments: json!({"ticker": "AMZN"}) },
        ToolCall { id: "toolu_2".into(), name: "price".into(), arguments: json!({"ticker": "GOOG"}) },
    ];
    let price = ToolDefinition {
        name: "price".into(),
        description: "Stock price".into(),
        parameters: json!({"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]})
            .into(),
    };
    let request = LlmRequest::new(
        ModelRole::Execution,
        vec![
            Message::system("You compare stocks."),
            Message::user("Which grew faster?"),
            Message::system("Be brief."),
            Message::assistant("Fetching both.", calls),
            Message::tool_result("toolu_1", "AMZN +44%"),
            Message::tool_result("toolu_2", "GOOG +36%"),
            Message::assistant("Amazon.", Vec::new()),
            Message::user("Why?"),
        ],
    )
    .with_tools(vec![price], ToolChoice::Required);

    client(config(&server)).chat(request).await.unwrap();

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let header = |name: &str| requests[0].headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("x-api-key").as_deref(), Some(KEY));
    assert_eq!(header("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(header("authorization"), None);
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        body,
        json!({
            "model": "claude-test",
            "max_tokens": 8192,
            "system": [{"type": "text", "text": "You compare stocks.\n\nBe brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Which grew faster?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Fetching both."},
                    {"type": "tool_use", "id": "toolu_1", "name": "price", "input": {"ticker": "AMZN"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "price", "input": {"ticker": "GOOG"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "AMZN +44%"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "GOOG +36%"},
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": "Amazon."}]},
                {"role": "user", "content": [{"type": "text", "text": "Why?"}]},
            ],
            "tools": [{"name": "price", "description": "Stock price",
                "input_schema": {"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]}}],
            "tool_choice": {"type": "any"},
        })
    );
}

#[tokio::test]
async fn max_tokens_comes_from_the_config_and_tool_choice_maps_auto_and_tool() {
    let server = MockServer::start().await;
    mount(&server, text_reply("ok"), 3).await;
    let llm = client(config(&server).max_tokens(1234u32));
    let tool =
        ToolDefinition { name: "t".into(), description: "d".into(), parameters: json!({"type": "object"}).into() };
    llm.chat(ask("a").with_tools(vec![tool.clone()], ToolChoice::Auto)).await.unwrap();
    llm.chat(ask("b").with_tools(vec![tool], ToolChoice::Tool("t".into()))).await.unwrap();
    llm.chat(ask("c")).await.unwrap();
    let bodies = bodies(&server).await;
    assert!(bodies.iter().all(|b| b["max_tokens"] == 1234), "{bodies:?}");
    assert_eq!(bodies[0]["tool_choice"], json!({"type": "auto"}));
    assert_eq!(bodies[1]["tool_choice"], json!({"type": "tool", "name": "t"}));
    assert_eq!(
        bodies[2],
        json!({"model": "claude-test", "max_tokens": 1234, "messages": [{"role": "user", "content": [{"type": "text", "text": "c"}]}]})
    );
}

#[tokio::test]
async fn text_several_tool_calls_and_usage_are_read() {
    let server = MockServer::start().await;
    let content = json!([
        {"type": "text", "text": "Let me check both."},
        {"type": "tool_use", "id": "toolu_a", "name": "price", "input": {"ticker": "AMZN"}},
        {"type": "tool_use", "id": "toolu_b", "name": "price", "input": {"ticker": "GOOG"}},
    ]);
    let mut reply = message(content);
    reply["stop_reason"] = json!("tool_use");
    // Anthropic's input_tokens leaves the cached tokens out: the prompt is 20 + 5 + 3.
    reply["usage"] =
        json!({"input_tokens": 20, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 3, "output_tokens": 7});
    mount(&server, ResponseTemplate::new(200).set_body_json(reply), 1).await;

    let response = client(config(&server)).chat(ask("Prices?")).await.unwrap();

    assert_eq!(response.text.as_deref(), Some("Let me check both."));
    assert_eq!(
        response.tool_calls,
        vec![
            ToolCall { id: "toolu_a".into(), name: "price".into(), arguments: json!({"ticker": "AMZN"}) },
            ToolCall { id: "toolu_b".into(), name: "price".into(), arguments: json!({"ticker": "GOOG"}) },
        ]
    );
    assert_eq!(response.usage, Usage::call(28, 7).with_cache(5, 3));
}

#[tokio::test]
async fn structured_output_forces_a_reply_tool_and_returns_its_input() {
    let server = MockServer::start().await;
    let content = json!([{"type": "tool_use", "id": "toolu_r", "name": "Answer", "input": {"city": "Paris"}}]);
    mount(&server, ResponseTemplate::new(200).set_body_json(message(content)), 1).await;
    let request = ask("Capital of France?").with_output_schema(OutputSchema::of::<Answer>("Answer"));

    let (answer, usage) = structured::<Answer>(client(config(&server)).as_ref(), request).await.unwrap();

    assert_eq!(answer, Answer { city: "Paris".into(), population: None });
    assert_eq!(usage, Usage::call(20, 7));
    let body = &bodies(&server).await[0];
    assert_eq!(body["tool_choice"], json!({"type": "tool", "name": "Answer"}));
    let tools = body["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["name"], "Answer");
    assert_eq!(tools[0]["input_schema"], schema_value::<Answer>());
}

#[tokio::test]
async fn structured_reply_tool_call_is_not_reported_as_a_tool_call() {
    let server = MockServer::start().await;
    let content = json!([
        {"type": "text", "text": "Here it is."},
        {"type": "tool_use", "id": "toolu_r", "name": "Answer", "input": {"city": "Paris", "population": 2}},
    ]);
    mount(&server, ResponseTemplate::new(200).set_body_json(message(content)), 1).await;
    let request = ask("Capital?").with_output_schema(OutputSchema::of::<Answer>("Answer"));
    let response = client(config(&server)).chat(request).await.unwrap();
    assert!(response.tool_calls.is_empty(), "{:?}", response.tool_calls);
    let text: Value = serde_json::from_str(response.text.as_deref().unwrap()).unwrap();
    assert_eq!(text, json!({"city": "Paris", "population": 2}));
}

#[tokio::test]
async fn non_object_schema_is_wrapped_and_unwrapped() {
    let server = MockServer::start().await;
    let content =
        json!([{"type": "tool_use", "id": "toolu_r", "name": "Cities", "input": {"value": ["Paris", "Lyon"]}}]);
    mount(&server, ResponseTemplate::new(200).set_body_json(message(content)), 1).await;
    let request = ask("Two cities?").with_output_schema(OutputSchema::of::<Vec<String>>("Cities"));
    let (cities, _) = structured::<Vec<String>>(client(config(&server)).as_ref(), request).await.unwrap();
    assert_eq!(cities, ["Paris", "Lyon"]);
    let schema = &bodies(&server).await[0]["tools"][0]["input_schema"];
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["required"], json!(["value"]));
    assert_eq!(schema["properties"]["value"]["type"], "array");
}

#[tokio::test]
async fn rate_limit_is_retried_after_retry_after() {
    let server = MockServer::start().await;
    mount(&server, error_reply(429, "rate_limit_error", "Slow down").insert_header("retry-after", "0"), 1).await;
    mount(&server, text_reply("ok"), 1).await;
    // An hour's backoff against a two-second deadline: only the server's wait allows a retry.
    let patient = config(&server).retry_backoff(Duration::from_secs(3600)).llm_deadline_secs(2u64);
    let response = client(patient).chat(ask("hi")).await.unwrap();
    assert_eq!(response.text.as_deref(), Some("ok"));
}

#[tokio::test]
async fn overloaded_529_is_retried() {
    let server = MockServer::start().await;
    mount(&server, error_reply(529, "overloaded_error", "Overloaded"), 1).await;
    mount(&server, text_reply("ok"), 1).await;
    let response = client(config(&server)).chat(ask("hi")).await.unwrap();
    assert_eq!(response.text.as_deref(), Some("ok"));
}

#[tokio::test]
async fn malformed_success_body_is_retried() {
    let server = MockServer::start().await;
    mount(&server, ResponseTemplate::new(200).set_body_string("<html>proxy error</html>"), 1).await;
    mount(&server, text_reply("ok"), 1).await;
    let response = client(config(&server)).chat(ask("hi")).await.unwrap();
    assert_eq!(response.text.as_deref(), Some("ok"));
}

#[tokio::test]
async fn bad_request_is_not_retried_and_keeps_the_providers_message() {
    let server = MockServer::start().await;
    mount_exactly(&server, error_reply(400, "invalid_request_error", "messages: Field required"), 1).await;
    let err = client(config(&server).max_retries(3u32)).chat(ask("hi")).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Http { status: 400, message, provider, .. } if message == "messages: Field required" && provider == "anthropic"),
        "{err:?}"
    );
}

#[tokio::test]
async fn unauthorized_names_the_key_variable_and_never_the_key() {
    let server = MockServer::start().await;
    mount_exactly(&server, error_reply(401, "authentication_error", &format!("invalid x-api-key {KEY}")), 1).await;
    let err = client(config(&server)).chat(ask("hi")).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Http { status: 401, key_var: Some(var), .. } if var == "ANTHROPIC_API_KEY"),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(shown.contains("ANTHROPIC_API_KEY"), "{shown}");
    assert!(!shown.contains(KEY) && !format!("{err:?}").contains(KEY), "{shown}");
}

#[tokio::test]
async fn a_key_cut_by_the_excerpt_of_a_long_body_is_not_shown_in_part() {
    // Not JSON, so the error keeps an excerpt of the body; the cut falls inside the key.
    let body = format!("{}{KEY}", "x".repeat(295));
    let server = MockServer::start().await;
    mount_exactly(&server, ResponseTemplate::new(401).set_body_string(body), 1).await;
    let err = client(config(&server)).chat(ask("hi")).await.unwrap_err();
    let shown = err.to_string();
    assert!(!shown.contains(&KEY[..5]), "{shown}");
}

#[tokio::test]
async fn slow_server_times_out_after_the_request_timeout() {
    let server = MockServer::start().await;
    mount_exactly(&server, text_reply("late").set_delay(Duration::from_secs(5)), 1).await;
    let timeout = Duration::from_millis(40);
    let err = client(config(&server).request_timeout(timeout).max_retries(0u32)).chat(ask("hi")).await.unwrap_err();
    assert!(matches!(&err, LlmError::Timeout { after, .. } if *after == timeout), "{err:?}");
}

#[tokio::test]
async fn retries_stop_after_max_retries() {
    let server = MockServer::start().await;
    mount_exactly(&server, error_reply(529, "overloaded_error", "Overloaded").insert_header("retry-after", "0"), 2)
        .await;
    let err = client(config(&server).max_retries(1u32)).chat(ask("hi")).await.unwrap_err();
    assert!(matches!(&err, LlmError::Http { status: 529, .. }), "{err:?}");
}

#[tokio::test]
async fn missing_anthropic_key_fails_at_build() {
    let config = Config::builder().llm_provider(LlmProvider::Anthropic).openai_api_key("sk-other").build().unwrap();
    let err = config.llm_client().unwrap_err();
    assert!(matches!(&err, Error::MissingApiKey { env_var, .. } if env_var == "ANTHROPIC_API_KEY"), "{err}");
}

#[tokio::test]
async fn provider_prefix_and_purpose_route_to_the_right_provider() {
    let openai = MockServer::start().await;
    let anthropic = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"role": "assistant", "content": "from openai"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        })))
        .expect(1)
        .mount(&openai)
        .await;
    mount_exactly(&anthropic, text_reply("from anthropic"), 2).await;
    let config = Config::builder()
        .openai_api_key("sk-openai")
        .openai_base_url(format!("{}/v1", openai.uri()))
        .anthropic_api_key(KEY)
        .anthropic_base_url(anthropic.uri())
        .planning_model("anthropic/claude-planner");
    let llm = client(config);

    let mut overridden = ask("hi");
    overridden.model = Some("anthropic/claude-haiku-test".into());
    assert_eq!(llm.chat(overridden).await.unwrap().text.as_deref(), Some("from anthropic"));
    let planning = LlmRequest::new(ModelRole::Planning, vec![Message::user("plan")]);
    assert_eq!(llm.chat(planning).await.unwrap().text.as_deref(), Some("from anthropic"));
    assert_eq!(llm.chat(ask("hi")).await.unwrap().text.as_deref(), Some("from openai"));

    let models: Vec<Value> = bodies(&anthropic).await.iter().map(|b| b["model"].clone()).collect();
    assert_eq!(models, [json!("claude-haiku-test"), json!("claude-planner")]);
    assert_eq!(bodies(&openai).await[0]["model"], LlmProvider::OpenAi.default_model());
}
