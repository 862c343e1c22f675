//! The OpenAI Chat Completions provider against an in-process mock server: the
//! exact request it sends, how it reads replies, retries, errors and the
//! json_schema → json_object fallback.

use std::sync::Arc;
use std::time::Duration;

use portia::llm::{
    LlmClient, LlmError, LlmProvider, LlmRequest, Message, ModelRole, OutputSchema, ToolCall, ToolChoice,
    ToolDefinition, Usage, schema_value, structured,
};
use portia::{Config, Error};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "sk-test-0123456789";
const ROUTE: &str = "/v1/chat/completions";

fn config(server: &MockServer) -> portia::config::ConfigBuilder {
    Config::builder()
        .openai_api_key(KEY)
        .openai_base_url(format!("{}/v1", server.uri()))
        .default_model("gpt-test")
        .max_retries(2u32)
        .request_timeout_secs(5u64)
}

fn client(config: portia::config::ConfigBuilder) -> Arc<dyn LlmClient> {
    config.build().expect("valid config").llm_client().expect("client builds")
}

fn ask(text: &str) -> LlmRequest {
    LlmRequest::new(ModelRole::Execution, vec![Message::user(text)])
}

fn completion(message: Value) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    })
}

fn text_reply(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(completion(json!({"role": "assistant", "content": text})))
}

fn error_reply(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
    )
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

/// Matches requests whose `response_format.type` is `kind`.
fn response_format(kind: &'static str) -> impl Fn(&Request) -> bool + Send + Sync + 'static {
    move |request: &Request| {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        body["response_format"]["type"] == kind
    }
}

#[derive(Debug, PartialEq, Deserialize, JsonSchema)]
struct Answer {
    city: String,
    #[serde(default)]
    population: Option<u64>,
}

#[tokio::test]
async fn request_body_carries_messages_tools_and_tool_choice_exactly() {
    let server = MockServer::start().await;
    mount(&server, text_reply("ok"), 1).await;
    let calls = vec![
        ToolCall { id: "call_1".into(), name: "search".into(), arguments: json!({"q": "Paris"}) },
        ToolCall { id: "call_2".into(), name: "weather".into(), arguments: json!({"city": "Paris"}) },
    ];
    let search = ToolDefinition {
        name: "search".into(),
        description: "Searches the web".into(),
        parameters: json!({"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}).into(),
    };
    let weather = ToolDefinition {
        name: "weather".into(),
        description: "Current weather".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}).into(),
    };
    let request = LlmRequest::new(
        ModelRole::Execution,
        vec![
            Message::system("Be brief."),
            Message::user("Weather in Paris?"),
            Message::assistant("Looking.", calls),
            Message::tool_result("call_1", "Paris is in France"),
            Message::tool_result("call_2", "sunny"),
        ],
    )
    .with_tools(vec![search, weather], ToolChoice::Tool("weather".into()));

    client(config(&server)).chat(request).await.expect("reply");

    let requests = server.received_requests().await.expect("recording is on");
    assert_eq!(requests.len(), 1);
    let auth = requests[0].headers.get("authorization").expect("authorization header");
    assert_eq!(auth.to_str().unwrap(), format!("Bearer {KEY}"));
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        body,
        json!({
            "model": "gpt-test",
            "max_completion_tokens": 8192,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Looking.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{\"q\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Paris is in France"},
                {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
            ],
            "tools": [
                {"type": "function", "function": {"name": "search", "description": "Searches the web",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}},
                {"type": "function", "function": {"name": "weather", "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
        })
    );
}

#[tokio::test]
async fn tool_choice_auto_and_required_are_sent_as_strings_and_omitted_without_tools() {
    let server = MockServer::start().await;
    mount(&server, text_reply("ok"), 3).await;
    let llm = client(config(&server));
    let tool =
        ToolDefinition { name: "t".into(), description: "d".into(), parameters: json!({"type": "object"}).into() };
    llm.chat(ask("a").with_tools(vec![tool.clone()], ToolChoice::Auto)).await.unwrap();
    llm.chat(ask("b").with_tools(vec![tool], ToolChoice::Required)).await.unwrap();
    llm.chat(ask("c")).await.unwrap();
    let bodies = bodies(&server).await;
    assert_eq!(bodies[0]["tool_choice"], "auto");
    assert_eq!(bodies[1]["tool_choice"], "required");
    let plain =
        json!({"model": "gpt-test", "max_completion_tokens": 8192, "messages": [{"role": "user", "content": "c"}]});
    assert_eq!(bodies[2], plain);
}

#[tokio::test]
async fn text_reply_and_usage_are_read() {
    let server = MockServer::start().await;
    mount(&server, text_reply("Paris is sunny."), 1).await;
    let response = client(config(&server)).chat(ask("Weather?")).await.unwrap();
    assert_eq!(response.text.as_deref(), Some("Paris is sunny."));
    assert!(response.tool_calls.is_empty());
    assert_eq!(response.usage, Usage::call(12, 5));
}

#[tokio::test]
async fn cached_prompt_tokens_are_read_apart_and_stay_in_the_prompt_count() {
    let server = MockServer::start().await;
    let mut reply = completion(json!({"role": "assistant", "content": "Again."}));
    reply["usage"] = json!({"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0}});
    mount(&server, ResponseTemplate::new(200).set_body_json(reply), 1).await;
    let response = client(config(&server)).chat(ask("Again?")).await.unwrap();
    assert_eq!(response.usage, Usage::call(2006, 300).with_cache(1920, 0));
    assert_eq!(response.usage.uncached_prompt_tokens(), 86);
}

#[tokio::test]
async fn several_tool_calls_in_one_reply_are_read() {
    let server = MockServer::start().await;
    let message = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "price", "arguments": "{\"ticker\":\"AMZN\"}"}},
        {"id": "call_b", "type": "function", "function": {"name": "price", "arguments": "{\"ticker\":\"GOOG\"}"}},
    ]});
    mount(&server, ResponseTemplate::new(200).set_body_json(completion(message)), 1).await;
    let response = client(config(&server)).chat(ask("Prices?")).await.unwrap();
    assert_eq!(response.text, None);
    assert_eq!(
        response.tool_calls,
        vec![
            ToolCall { id: "call_a".into(), name: "price".into(), arguments: json!({"ticker": "AMZN"}) },
            ToolCall { id: "call_b".into(), name: "price".into(), arguments: json!({"ticker": "GOOG"}) },
        ]
    );
    assert_eq!(response.usage.llm_calls, 1);
}

#[tokio::test]
async fn unparseable_tool_arguments_are_an_invalid_response() {
    let server = MockServer::start().await;
    let message = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "price", "arguments": "{\"ticker\": AMZN"}},
    ]});
    mount(&server, ResponseTemplate::new(200).set_body_json(completion(message)), 1).await;
    let err = client(config(&server).max_retries(0u32)).chat(ask("Prices?")).await.unwrap_err();
    assert!(matches!(&err, LlmError::InvalidResponse { message, .. } if message.contains("price")), "{err:?}");
}

#[tokio::test]
async fn structured_output_asks_for_the_json_schema_and_parses_the_reply() {
    let server = MockServer::start().await;
    mount(&server, text_reply(r#"{"city": "Paris", "population": 2100000}"#), 1).await;
    let llm = client(config(&server));
    let request = ask("Capital of France?").with_output_schema(OutputSchema::of::<Answer>("Answer"));

    let (answer, usage) = structured::<Answer>(llm.as_ref(), request).await.unwrap();

    assert_eq!(answer, Answer { city: "Paris".into(), population: Some(2_100_000) });
    assert_eq!(usage, Usage::call(12, 5));
    let body = &bodies(&server).await[0];
    // `population` is optional, so the schema is not strict-ready and is sent as it is.
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "Answer", "schema": schema_value::<Answer>(), "strict": false}})
    );
    assert_eq!(body["messages"], json!([{"role": "user", "content": "Capital of France?"}]));
}

#[tokio::test]
async fn strict_is_sent_only_for_schemas_that_already_satisfy_it() {
    let server = MockServer::start().await;
    mount(&server, text_reply(r#"{"city": "Paris"}"#), 1).await;
    let closed = json!({
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": false,
    });
    let request =
        ask("Capital?").with_output_schema(OutputSchema { name: "City answer".into(), schema: closed.clone().into() });
    client(config(&server)).chat(request).await.unwrap();
    let body = &bodies(&server).await[0];
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "City_answer", "schema": closed, "strict": true}})
    );
}

#[tokio::test]
async fn non_object_schema_is_asked_for_inside_an_object_and_unwrapped() {
    let server = MockServer::start().await;
    mount(&server, text_reply(r#"{"value": ["Paris", "Lyon"]}"#), 1).await;
    let request = ask("Two cities?").with_output_schema(OutputSchema::of::<Vec<String>>("Cities"));
    let (cities, _) = structured::<Vec<String>>(client(config(&server)).as_ref(), request).await.unwrap();
    assert_eq!(cities, ["Paris", "Lyon"]);
    let format = &bodies(&server).await[0]["response_format"]["json_schema"];
    assert_eq!(format["schema"]["type"], "object");
    assert_eq!(format["schema"]["required"], json!(["value"]));
    assert_eq!(format["schema"]["properties"]["value"]["type"], "array");
}

/// The server refuses `json_schema` with a 400 saying `refusal`, exactly `refused`
/// times, and answers `json_object` requests with `{"city": "Paris"}`, exactly `answered` times.
async fn refuse_json_schema(server: &MockServer, refusal: &str, refused: u64, answered: u64) {
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .and(response_format("json_schema"))
        .respond_with(error_reply(400, refusal))
        .expect(refused)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .and(response_format("json_object"))
        .respond_with(text_reply(r#"{"city": "Paris"}"#))
        .expect(answered)
        .mount(server)
        .await;
}

#[tokio::test]
async fn refused_json_schema_falls_back_to_json_object_and_is_remembered_for_the_model() {
    let server = MockServer::start().await;
    let refusal = "Invalid parameter: 'response_format' of type 'json_schema' is not supported.";
    // Refused once for gpt-test (then remembered), once for the other model.
    refuse_json_schema(&server, refusal, 2, 3).await;
    let llm = client(config(&server));
    let request = LlmRequest::new(ModelRole::Planning, vec![Message::system("You answer."), Message::user("Capital?")])
        .with_output_schema(OutputSchema::of::<Answer>("Answer"));

    let (first, usage) = structured::<Answer>(llm.as_ref(), request.clone()).await.unwrap();
    let (second, _) = structured::<Answer>(llm.as_ref(), request.clone()).await.unwrap();
    let mut other_model = request;
    other_model.model = Some("openai/gpt-other".into());
    structured::<Answer>(llm.as_ref(), other_model).await.unwrap();

    assert_eq!(first, Answer { city: "Paris".into(), population: None });
    assert_eq!(second, first);
    assert_eq!(usage.llm_calls, 1, "the refused attempt cost nothing");
    let bodies = bodies(&server).await;
    let kinds: Vec<(&str, &str)> =
        bodies.iter().map(|b| (b["model"].as_str().unwrap(), b["response_format"]["type"].as_str().unwrap())).collect();
    assert_eq!(
        kinds,
        [
            ("gpt-test", "json_schema"),
            ("gpt-test", "json_object"),
            ("gpt-test", "json_object"),
            ("gpt-other", "json_schema"),
            ("gpt-other", "json_object"),
        ]
    );
    let fallback = &bodies[1];
    assert_eq!(fallback["response_format"], json!({"type": "json_object"}));
    let system = fallback["messages"][0]["content"].as_str().unwrap();
    assert_eq!(fallback["messages"][0]["role"], "system");
    assert!(system.starts_with("You answer.\n\n"), "{system}");
    assert!(system.contains(&schema_value::<Answer>().to_string()), "{system}");
    assert_eq!(fallback["messages"][1], json!({"role": "user", "content": "Capital?"}));
}

/// A client whose own backoff (an hour) would outlast its deadline (two seconds):
/// a retry that ignored the server's wait would not be made at all.
fn client_that_only_retries_when_asked(server: &MockServer) -> Arc<dyn LlmClient> {
    client(config(server).retry_backoff(Duration::from_secs(3600)).llm_deadline_secs(2u64))
}

#[tokio::test]
async fn rate_limit_is_retried_after_the_retry_after_ms_the_server_asked_for() {
    let server = MockServer::start().await;
    let limited = error_reply(429, "Rate limit reached").insert_header("retry-after-ms", "20");
    mount(&server, limited, 1).await;
    mount(&server, text_reply("ok"), 1).await;
    let response = client_that_only_retries_when_asked(&server).chat(ask("hi")).await.unwrap();
    assert_eq!(response.text.as_deref(), Some("ok"));
}

#[tokio::test]
async fn rate_limit_with_retry_after_zero_is_retried_at_once() {
    let server = MockServer::start().await;
    mount(&server, error_reply(429, "Rate limit reached").insert_header("retry-after", "0"), 1).await;
    mount(&server, text_reply("ok"), 1).await;
    let response = client_that_only_retries_when_asked(&server).chat(ask("hi")).await.unwrap();
    assert_eq!(response.text.as_deref(), Some("ok"));
    assert_eq!(response.usage.llm_calls, 1);
}

#[tokio::test]
async fn server_error_is_retried() {
    let server = MockServer::start().await;
    mount(&server, error_reply(500, "The server had an error"), 1).await;
    mount(&server, text_reply("ok"), 1).await;
    let response = client(config(&server)).chat(ask("hi")).await.unwrap();
    assert_eq!(response.text.as_deref(), Some("ok"));
}

#[tokio::test]
async fn malformed_success_body_is_retried() {
    let server = MockServer::start().await;
    mount(&server, ResponseTemplate::new(200).set_body_string("{\"choices\": [trunc"), 1).await;
    mount(&server, text_reply("ok"), 1).await;
    let response = client(config(&server)).chat(ask("hi")).await.unwrap();
    assert_eq!(response.text.as_deref(), Some("ok"));
}

#[tokio::test]
async fn bad_request_is_not_retried_and_keeps_the_providers_message() {
    let server = MockServer::start().await;
    mount_exactly(&server, error_reply(400, "Unknown parameter: 'foo'."), 1).await;
    let err = client(config(&server).max_retries(3u32)).chat(ask("hi")).await.unwrap_err();
    match &err {
        LlmError::Http { provider, model, status, message, key_var, .. } => {
            assert_eq!((provider.as_str(), model.as_str(), *status), ("openai", "gpt-test", 400));
            assert_eq!(message, "Unknown parameter: 'foo'.");
            assert_eq!(key_var, &None);
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

#[tokio::test]
async fn unauthorized_names_the_key_variable_and_never_the_key() {
    let server = MockServer::start().await;
    mount_exactly(&server, error_reply(401, &format!("Incorrect API key provided: {KEY}.")), 1).await;
    let err = client(config(&server)).chat(ask("hi")).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Http { status: 401, key_var: Some(var), .. } if var == "OPENAI_API_KEY"),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(shown.contains("OPENAI_API_KEY"), "{shown}");
    assert!(!shown.contains(KEY) && !format!("{err:?}").contains(KEY), "{shown}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn slow_server_times_out_after_the_request_timeout() {
    let server = MockServer::start().await;
    mount_exactly(&server, text_reply("late").set_delay(Duration::from_secs(5)), 1).await;
    let timeout = Duration::from_millis(40);
    let err = client(config(&server).request_timeout(timeout).max_retries(0u32)).chat(ask("hi")).await.unwrap_err();
    assert!(matches!(&err, LlmError::Timeout { after, .. } if *after == timeout), "{err:?}");
}

// The clock is paused, and moves on to the next timer whenever everything waits.
#[tokio::test(start_paused = true)]
async fn a_connection_that_never_completes_is_reported_as_one_with_the_connect_limit() {
    // TLS to a port that takes the connection and never speaks: the handshake hangs
    // until the connect timeout (10 s), which used to be reported as the request's
    // timeout (60 s) running out.
    let (port, held) = crate::common::silent_port().await;
    let config = Config::builder()
        .openai_api_key(KEY)
        .openai_base_url(format!("https://127.0.0.1:{port}/v1"))
        .default_model("gpt-test")
        .max_retries(0u32)
        .request_timeout_secs(60u64);
    let err = client(config).chat(ask("hi")).await.unwrap_err();
    held.abort();
    assert!(matches!(&err, LlmError::Connection { .. }), "{err:?}");
    assert!(err.to_string().contains("no connection (TCP and TLS) within 10s"), "{err}");
}

#[tokio::test]
async fn retries_stop_after_max_retries() {
    let server = MockServer::start().await;
    // max_retries = 2: one attempt and two retries.
    mount_exactly(&server, error_reply(503, "Overloaded").insert_header("retry-after-ms", "1"), 3).await;
    let err = client(config(&server).max_retries(2u32)).chat(ask("hi")).await.unwrap_err();
    assert!(matches!(&err, LlmError::Http { status: 503, message, .. } if message == "Overloaded"), "{err:?}");
}

#[tokio::test]
async fn keyless_compatible_server_gets_no_authorization_header() {
    let server = MockServer::start().await;
    mount(&server, text_reply("ok"), 1).await;
    let config = Config::builder()
        .llm_provider(LlmProvider::Ollama)
        .llm_base_url(format!("{}/v1", server.uri()))
        .default_model("llama3.1");
    client(config).chat(ask("hi")).await.unwrap();
    let requests = server.received_requests().await.unwrap();
    assert!(requests[0].headers.get("authorization").is_none());
    assert_eq!(bodies(&server).await[0]["model"], "llama3.1");
}

#[tokio::test]
async fn compatible_server_refusing_its_key_names_portia_llm_api_key_and_never_sees_openais() {
    let server = MockServer::start().await;
    mount_exactly(&server, error_reply(401, "bad key"), 1).await;
    let config = Config::builder()
        .llm_provider(LlmProvider::OpenAiCompatible)
        .llm_base_url(format!("{}/v1", server.uri()))
        .openai_api_key(KEY)
        .llm_api_key("vllm-key")
        .default_model("local-model");
    let err = client(config).chat(ask("hi")).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Http { status: 401, key_var: Some(var), .. } if var == "PORTIA_LLM_API_KEY"),
        "{err:?}"
    );
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests[0].headers.get("authorization").unwrap(), "Bearer vllm-key");
}

#[tokio::test]
async fn compatible_provider_sends_its_own_key_to_its_base_url() {
    let server = MockServer::start().await;
    mount(&server, text_reply("ok"), 1).await;
    let config = Config::builder()
        .llm_provider(LlmProvider::Groq)
        .groq_api_key("gsk-groq")
        .openai_api_key(KEY)
        .llm_base_url(format!("{}/v1/", server.uri()));
    client(config).chat(ask("hi")).await.unwrap();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests[0].headers.get("authorization").unwrap().to_str().unwrap(), "Bearer gsk-groq");
    assert_eq!(bodies(&server).await[0]["model"], LlmProvider::Groq.default_model());
}

#[tokio::test]
async fn missing_key_of_the_configured_provider_fails_at_build() {
    let err = Config::builder().build().unwrap().llm_client().unwrap_err();
    assert!(matches!(&err, Error::MissingApiKey { env_var, .. } if env_var == "OPENAI_API_KEY"), "{err}");
}

#[tokio::test]
async fn request_for_a_provider_without_a_key_names_its_variable() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(text_reply("unused")).expect(0).mount(&server).await;
    let llm = client(config(&server));
    let mut request = ask("hi");
    request.model = Some("anthropic/claude-test".into());
    let err = llm.chat(request).await.unwrap_err();
    assert!(matches!(&err, LlmError::MissingApiKey { env_var, .. } if env_var == "ANTHROPIC_API_KEY"), "{err:?}");
    assert!(err.to_string().contains("ANTHROPIC_API_KEY"));
}

#[tokio::test]
async fn client_debug_output_hides_every_key() {
    let config = Config::builder().openai_api_key(KEY).anthropic_api_key("sk-ant-hidden").groq_api_key("gsk-hidden");
    let shown = format!("{:?}", client(config));
    assert!(shown.contains("Router"), "{shown}");
    assert!(!shown.contains(KEY) && !shown.contains("hidden"), "{shown}");
}

#[tokio::test]
async fn default_base_url_is_refused_offline_without_a_panic() {
    // Offline mode is an explicit setting; this test switches it on for its process.
    portia::config::set_offline(true);
    let config = Config::builder().openai_api_key(KEY).max_retries(3u32).build().unwrap();
    let err = config.llm_client().unwrap().chat(ask("hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::NotSent { .. }), "{err:?}");
    assert!(!err.is_retryable(), "a refused request is not retried");
    let shown = err.to_string();
    assert!(shown.contains("PORTIA_OFFLINE") && shown.contains("api.openai.com"), "{shown}");
}

/// llama.cpp's refusal of a schema it cannot turn into a grammar.
const LLAMA_REFUSAL: &str = "JSON schema error at #/$defs/PlannedInput/properties/value: schema must be an object";

#[tokio::test]
async fn any_refusal_of_a_response_format_falls_back_to_json_object() {
    let server = MockServer::start().await;
    refuse_json_schema(&server, LLAMA_REFUSAL, 1, 2).await;
    let llm = client(config(&server));
    let request = LlmRequest::new(ModelRole::Planning, vec![Message::user("Capital?")])
        .with_output_schema(OutputSchema::of::<Answer>("Answer"));
    let (answer, _) = structured::<Answer>(llm.as_ref(), request.clone()).await.unwrap();
    assert_eq!(answer.city, "Paris");
    structured::<Answer>(llm.as_ref(), request).await.unwrap();
}

#[tokio::test]
async fn a_fallback_that_fails_too_is_not_remembered() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .respond_with(error_reply(400, "the request was refused"))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    mount(&server, text_reply(r#"{"city": "Oslo"}"#), 1).await;
    let llm = client(config(&server));
    let request = LlmRequest::new(ModelRole::Planning, vec![Message::user("Capital?")])
        .with_output_schema(OutputSchema::of::<Answer>("Answer"));
    let err = llm.chat(request.clone()).await.unwrap_err();
    assert!(matches!(err, LlmError::Http { status: 400, .. }), "{err:?}");
    llm.chat(request).await.unwrap();
    let kinds: Vec<String> =
        bodies(&server).await.iter().map(|b| b["response_format"]["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds, ["json_schema", "json_object", "json_schema"], "json_schema is tried again next time");
}

#[tokio::test]
async fn compatible_servers_get_max_tokens_and_portable_schemas() {
    let server = MockServer::start().await;
    mount(&server, text_reply("{}"), 1).await;
    let config = Config::builder()
        .llm_provider(LlmProvider::OpenAiCompatible)
        .llm_base_url(format!("{}/v1", server.uri()))
        .default_model("local")
        .max_tokens(512u32);
    let any_value = json!({"type": "object", "properties": {"value": true}, "required": ["value"]});
    let tool = ToolDefinition { name: "t".into(), description: "d".into(), parameters: any_value.clone().into() };
    let request = ask("hi")
        .with_tools(vec![tool], ToolChoice::Auto)
        .with_output_schema(OutputSchema { name: "Out".into(), schema: any_value.into() });
    client(config).chat(request).await.unwrap();
    let body = &bodies(&server).await[0];
    assert_eq!(body["max_tokens"], 512);
    assert!(body.get("max_completion_tokens").is_none(), "{body}");
    let sent = [&body["tools"][0]["function"]["parameters"], &body["response_format"]["json_schema"]["schema"]];
    for schema in sent {
        assert!(portia::llm::portability_problems(schema).is_empty(), "{schema}");
        assert_eq!(schema["properties"]["value"], json!({}));
    }
}

#[tokio::test]
async fn a_key_http_cannot_carry_is_named_by_its_variable() {
    let server = MockServer::start().await;
    let config = Config::builder().openai_api_key("sk-x\u{1}").openai_base_url(format!("{}/v1", server.uri()));
    let err = config.clone().build().unwrap_err();
    assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == "OPENAI_API_KEY"), "{err}");
    // Settings made in code are not checked until the call, which names the variable too.
    let settings = portia::llm::LlmSettings::new(LlmProvider::OpenAi)
        .api_key(LlmProvider::OpenAi, "sk-x\u{1}")
        .base_url(LlmProvider::OpenAi, format!("{}/v1", server.uri()));
    let err = portia::llm::client(settings).chat(ask("hi")).await.unwrap_err();
    assert!(matches!(&err, LlmError::NotSent { .. }) && err.to_string().contains("OPENAI_API_KEY"), "{err}");
    assert!(server.received_requests().await.unwrap().is_empty());
}
