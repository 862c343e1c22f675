//! The Gemini provider against an in-process double of `generateContent`: the exact
//! request it sends (field by field), replies shaped as Google documents them,
//! usage, retries, errors and the key's travel.

use std::sync::Arc;

use portia::llm::{
    LlmClient, LlmError, LlmProvider, LlmRequest, Message, ModelRole, OutputSchema, ToolCall, ToolChoice,
    ToolDefinition, Usage, structured,
};
use portia::{Config, Error};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "AIza-test-0123456789";
const ROUTE: &str = "/v1beta/models/gemini-test:generateContent";

fn config(server: &MockServer) -> portia::config::ConfigBuilder {
    Config::builder()
        .llm_provider(LlmProvider::Gemini)
        .gemini_api_key(KEY)
        .gemini_base_url(server.uri())
        .default_model("gemini-test")
        .max_tokens(1000u32)
        .max_retries(2u32)
        .retry_backoff(std::time::Duration::from_millis(1))
}

fn client(config: portia::config::ConfigBuilder) -> Arc<dyn LlmClient> {
    config.build().expect("valid config").llm_client().expect("client builds")
}

fn ask(text: &str) -> LlmRequest {
    LlmRequest::new(ModelRole::Execution, vec![Message::user(text)])
}

/// A `GenerateContentResponse` as the API reference shows one.
fn generated(parts: Value) -> Value {
    json!({
        "candidates": [{
            "content": {"parts": parts, "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": {
            "promptTokenCount": 21,
            "candidatesTokenCount": 7,
            "thoughtsTokenCount": 3,
            "cachedContentTokenCount": 16,
            "totalTokenCount": 31,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 21}],
        },
        "modelVersion": "gemini-test",
        "responseId": "mIadaPyRHpqXz7IPlb7fmAw",
    })
}

fn reply(parts: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(generated(parts))
}

/// An error as Google's APIs send one (`google.rpc.Status`).
fn error_reply(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"error": {"code": status, "message": message, "status": code}}))
}

async fn mount(server: &MockServer, reply: ResponseTemplate, n: u64) {
    Mock::given(method("POST")).and(path(ROUTE)).respond_with(reply).up_to_n_times(n).expect(n).mount(server).await;
}

async fn bodies(server: &MockServer) -> Vec<Value> {
    let requests = server.received_requests().await.expect("recording is on");
    requests.iter().map(|r| serde_json::from_slice(&r.body).expect("JSON body")).collect()
}

#[tokio::test]
async fn request_carries_system_contents_function_declarations_and_config_exactly() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .and(header("x-goog-api-key", KEY))
        .and(header("content-type", "application/json"))
        .respond_with(reply(json!([{"text": "ok"}])))
        .expect(1)
        .mount(&server)
        .await;
    let calls = vec![
        ToolCall { id: "c1".into(), name: "search".into(), arguments: json!({"q": "Paris"}) },
        ToolCall { id: "c2".into(), name: "weather".into(), arguments: json!({"city": "Paris"}) },
    ];
    let search = ToolDefinition {
        name: "search".into(),
        description: "Searches the web".into(),
        parameters:
            json!({"type": "object", "properties": {"q": {"type": "string", "format": "uint32"}}, "required": ["q"]})
                .into(),
    };
    let clock = ToolDefinition { name: "clock".into(), description: "The time".into(), parameters: Value::Null.into() };
    let request = LlmRequest::new(
        ModelRole::Execution,
        vec![
            Message::system("Be brief."),
            Message::user("Weather in Paris?"),
            Message::assistant("Looking.", calls),
            Message::tool_result("c1", "Paris is in France"),
            Message::tool_result("c2", "sunny"),
        ],
    )
    .with_tools(vec![search, clock], ToolChoice::Tool("search".into()));

    client(config(&server)).chat(request).await.expect("reply");

    let requests = server.received_requests().await.unwrap();
    assert!(!requests[0].url.as_str().contains(KEY), "the key travels in a header, never in the URL");
    let body = &bodies(&server).await[0];
    assert_eq!(
        body,
        &json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
                {"role": "model", "parts": [
                    {"text": "Looking."},
                    {"functionCall": {"name": "search", "args": {"q": "Paris"}}},
                    {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "search", "response": {"result": "Paris is in France"}}},
                    {"functionResponse": {"name": "weather", "response": {"result": "sunny"}}},
                ]},
            ],
            "tools": [{"functionDeclarations": [
                {"name": "search", "description": "Searches the web", "parametersJsonSchema":
                    {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}},
                {"name": "clock", "description": "The time", "parametersJsonSchema": {"type": "object", "properties": {}}},
            ]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["search"]}},
            "generationConfig": {"maxOutputTokens": 1000},
        })
    );
}

#[tokio::test]
async fn tool_choice_auto_and_required_map_to_the_calling_modes() {
    let server = MockServer::start().await;
    mount(&server, reply(json!([{"text": "ok"}])), 2).await;
    let tool =
        ToolDefinition { name: "f".into(), description: "d".into(), parameters: json!({"type": "object"}).into() };
    let llm = client(config(&server));
    llm.chat(ask("a").with_tools(vec![tool.clone()], ToolChoice::Auto)).await.unwrap();
    llm.chat(ask("b").with_tools(vec![tool], ToolChoice::Required)).await.unwrap();
    let bodies = bodies(&server).await;
    assert_eq!(bodies[0]["toolConfig"], json!({"functionCallingConfig": {"mode": "AUTO"}}));
    assert_eq!(bodies[1]["toolConfig"], json!({"functionCallingConfig": {"mode": "ANY"}}));
}

#[tokio::test]
async fn text_function_calls_and_usage_are_read_and_thoughts_skipped() {
    let server = MockServer::start().await;
    let parts = json!([
        {"text": "Let me think about the weather", "thought": true},
        {"text": "Checking both."},
        {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
        {"functionCall": {"id": "fc-7", "name": "clock"}},
    ]);
    mount(&server, reply(parts), 1).await;

    let response = client(config(&server)).chat(ask("Weather?")).await.unwrap();

    assert_eq!(response.text.as_deref(), Some("Checking both."));
    assert_eq!(
        response.tool_calls,
        vec![
            ToolCall { id: "call_2".into(), name: "weather".into(), arguments: json!({"city": "Paris"}) },
            ToolCall { id: "fc-7".into(), name: "clock".into(), arguments: json!({}) },
        ]
    );
    assert_eq!(response.usage, Usage::call(21, 10).with_cache(16, 0), "thinking tokens are billed as output");
}

#[derive(Debug, PartialEq, Deserialize, JsonSchema)]
struct Answer {
    city: String,
    #[serde(default)]
    population: Option<u64>,
}

#[tokio::test]
async fn structured_output_asks_for_json_with_the_portable_schema() {
    let server = MockServer::start().await;
    mount(&server, reply(json!([{"text": "{\"city\": \"Paris\", \"population\": 2100000}"}])), 1).await;
    let request = ask("Biggest French city?").with_output_schema(OutputSchema::of::<Answer>("answer"));

    let (answer, usage): (Answer, _) = structured(client(config(&server)).as_ref(), request).await.unwrap();

    assert_eq!(answer, Answer { city: "Paris".into(), population: Some(2_100_000) });
    assert_eq!(usage.llm_calls, 1);
    let config = &bodies(&server).await[0]["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    let schema = &config["responseJsonSchema"];
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["required"], json!(["city"]));
    assert_eq!(schema["properties"]["population"].get("format"), None, "uint64 is not a portable format");
    assert!(portia::llm::portability_problems(schema).is_empty(), "{schema}");
}

#[tokio::test]
async fn resource_exhausted_and_unavailable_are_retried() {
    let server = MockServer::start().await;
    mount(&server, error_reply(429, "RESOURCE_EXHAUSTED", "Quota exceeded"), 1).await;
    mount(&server, error_reply(503, "UNAVAILABLE", "The model is overloaded."), 1).await;
    mount(&server, reply(json!([{"text": "third time"}])), 1).await;
    let response = client(config(&server)).chat(ask("hi")).await.unwrap();
    assert_eq!(response.text.as_deref(), Some("third time"));
}

#[tokio::test]
async fn invalid_argument_is_not_retried_and_keeps_googles_message() {
    let server = MockServer::start().await;
    mount(&server, error_reply(400, "INVALID_ARGUMENT", "Invalid JSON payload received."), 1).await;
    let err = client(config(&server)).chat(ask("hi")).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Http { status: 400, provider, message, .. } if provider == "gemini" && message == "Invalid JSON payload received."),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_refused_key_names_its_variable_and_never_the_key() {
    let server = MockServer::start().await;
    mount(&server, error_reply(403, "PERMISSION_DENIED", &format!("API key {KEY} not valid.")), 1).await;
    let err = client(config(&server)).chat(ask("hi")).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("GEMINI_API_KEY") && !shown.contains(KEY), "{shown}");
}

#[tokio::test]
async fn a_blocked_prompt_is_an_invalid_response_saying_why() {
    let server = MockServer::start().await;
    let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}});
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .respond_with(ResponseTemplate::new(200).set_body_json(blocked))
        .mount(&server)
        .await;
    let err = client(config(&server).max_retries(0u32)).chat(ask("hi")).await.unwrap_err();
    assert!(matches!(&err, LlmError::InvalidResponse { message, .. } if message.contains("SAFETY")), "{err:?}");
}

#[tokio::test]
async fn gemini_is_chosen_by_its_key_prefix_or_variable_and_needs_its_key() {
    let config = Config::from_vars(|name| (name == "GEMINI_API_KEY").then(|| "k".to_owned())).unwrap();
    assert_eq!(config.llm_provider, LlmProvider::Gemini);
    assert_eq!(config.model_for(ModelRole::Planning).model, "gemini-2.5-flash");
    let prefixed = Config::builder().default_model("gemini/gemini-2.5-pro").build().unwrap();
    assert_eq!(prefixed.model_for(ModelRole::Execution).provider, LlmProvider::Gemini);
    assert!(Config::default().prices.get("gemini-2.5-flash").is_some());
    let err = Config::builder().llm_provider(LlmProvider::Gemini).build().unwrap().llm_client().unwrap_err();
    assert!(matches!(&err, Error::MissingApiKey { env_var, .. } if env_var == "GEMINI_API_KEY"), "{err}");
}

#[tokio::test]
async fn an_unknown_provider_prefix_is_refused_listing_the_known_ones() {
    let err = Config::from_vars(|name| (name == "PORTIA_PLANNING_MODEL").then(|| "gemnii/gemini-2.5-flash".into()))
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == "PORTIA_PLANNING_MODEL"), "{message}");
    assert!(message.contains("\"gemnii\"") && message.contains("openai, anthropic") && message.contains("gemini"));

    let server = MockServer::start().await;
    let mut request = ask("hi");
    request.model = Some("antropic/claude-haiku-4-5".into());
    let err = client(config(&server)).chat(request).await.unwrap_err();
    assert!(matches!(&err, LlmError::NotSent { message, .. } if message.contains("\"antropic\"")), "{err:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_retry_delay_google_puts_in_the_body_is_the_retry_after() {
    let server = MockServer::start().await;
    let body = json!({"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}});
    mount(&server, ResponseTemplate::new(429).set_body_json(body), 1).await;
    let err = client(config(&server).max_retries(0u32)).chat(ask("hi")).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(std::time::Duration::from_secs(37)), "{err:?}");
    assert!(!err.is_unavailable(), "a usable wait says rate-limited, not down");
}
