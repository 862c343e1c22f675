//! AWS Bedrock against an in-process double of the Converse API: the request field
//! by field, its SigV4 signature recomputed from what the double received, replies
//! and errors shaped as AWS documents them, and credentials from the profile files.

use std::sync::Arc;
use std::time::SystemTime;

use portia::llm::{
    LlmClient, LlmError, LlmProvider, LlmRequest, Message, ModelRole, OutputSchema, ToolCall, ToolChoice,
    ToolDefinition, Usage, structured,
};
use portia::{Config, Error};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const MODEL: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
const ROUTE: &str = "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse";
const KEY_ID: &str = "AKIDEXAMPLE7BEDROCK";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const REGION: &str = "eu-central-1";

fn config(server: &MockServer) -> portia::config::ConfigBuilder {
    Config::builder()
        .llm_provider(LlmProvider::Bedrock)
        .aws_access_key_id(KEY_ID)
        .aws_secret_access_key(SECRET)
        .aws_region(REGION)
        .bedrock_endpoint(server.uri())
        .default_model(MODEL)
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

/// A `Converse` response as the API reference shows one.
fn conversed(content: Value, stop_reason: &str) -> Value {
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": {"inputTokens": 375, "outputTokens": 77, "totalTokens": 572,
                  "cacheReadInputTokens": 100, "cacheWriteInputTokens": 20},
        "metrics": {"latencyMs": 1380},
    })
}

fn reply(content: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(conversed(content, "end_turn"))
}

/// An error as AWS's JSON protocols send one: the type in a header, the words in the body.
fn error_reply(status: u16, kind: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("x-amzn-ErrorType", format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"))
        .set_body_json(json!({"message": message}))
}

async fn mount(server: &MockServer, reply: ResponseTemplate, n: u64) {
    Mock::given(method("POST")).respond_with(reply).up_to_n_times(n).expect(n).mount(server).await;
}

async fn bodies(server: &MockServer) -> Vec<Value> {
    let requests = server.received_requests().await.expect("recording is on");
    requests.iter().map(|r| serde_json::from_slice(&r.body).expect("JSON body")).collect()
}

/// Signs the request the double received again, with the credentials the test
/// knows, at the time its `x-amz-date` says, over the headers its `Authorization`
/// says were signed, and checks that the signatures agree.
pub(crate) fn assert_signed_by(
    request: &wiremock::Request,
    key_id: &str,
    secret: &str,
    token: Option<&str>,
    region: &str,
) {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let header = |name: &str| request.headers.get(name).map(|v| v.to_str().expect("ASCII header").to_owned());
    let authorization = header("authorization").expect("an Authorization header");
    let signed_names = authorization.split("SignedHeaders=").nth(1).and_then(|s| s.split(',').next()).unwrap();
    let signed: Vec<(String, String)> =
        signed_names.split(';').map(|name| (name.to_owned(), header(name).expect("a signed header is sent"))).collect();
    let date = header("x-amz-date").expect("x-amz-date");
    let time: SystemTime = chrono::NaiveDateTime::parse_from_str(&date, "%Y%m%dT%H%M%SZ").unwrap().and_utc().into();
    let credentials = aws_credential_types::Credentials::new(key_id, secret, token.map(str::to_owned), None, "test");
    let identity = credentials.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let url = format!("http://{}{}", header("host").unwrap(), request.url.path());
    let headers = signed.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    let signable = SignableRequest::new("POST", &url, headers, SignableBody::Bytes(&request.body)).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let expected = instructions.headers().find(|(name, _)| *name == "authorization").unwrap().1.to_owned();
    assert_eq!(authorization, expected);
    assert!(authorization.starts_with(&format!("AWS4-HMAC-SHA256 Credential={key_id}/")), "{authorization}");
    assert!(authorization.contains(&format!("/{region}/bedrock/aws4_request")), "{authorization}");
    for must in ["content-type", "host", "x-amz-date"] {
        assert!(signed_names.split(';').any(|n| n == must), "{must} is signed: {signed_names}");
    }
    assert_eq!(header("x-amz-security-token").as_deref(), token);
}

#[tokio::test]
async fn request_is_signed_and_carries_system_messages_tools_cache_point_and_config_exactly() {
    let server = MockServer::start().await;
    mount(&server, reply(json!([{"text": "ok"}])), 1).await;
    let calls = vec![
        ToolCall { id: "tooluse_1".into(), name: "search".into(), arguments: json!({"q": "Paris"}) },
        ToolCall { id: "tooluse_2".into(), name: "weather".into(), arguments: json!({"city": "Paris"}) },
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
            Message::tool_result("tooluse_1", "Paris is in France"),
            Message::tool_result("tooluse_2", "sunny"),
            Message::user("And now?"),
        ],
    )
    .with_tools(vec![search, clock], ToolChoice::Tool("search".into()));

    client(config(&server)).chat(request).await.expect("reply");

    let received = &server.received_requests().await.unwrap()[0];
    assert_eq!(received.url.path(), ROUTE, "the model id is one percent-encoded path segment");
    assert_signed_by(received, KEY_ID, SECRET, None, REGION);
    assert_eq!(received.headers.get("content-type").unwrap(), "application/json");
    assert_eq!(
        bodies(&server).await[0],
        json!({
            "system": [{"text": "Be brief."}, {"cachePoint": {"type": "default"}}],
            "messages": [
                {"role": "user", "content": [{"text": "Weather in Paris?"}]},
                {"role": "assistant", "content": [
                    {"text": "Looking."},
                    {"toolUse": {"toolUseId": "tooluse_1", "name": "search", "input": {"q": "Paris"}}},
                    {"toolUse": {"toolUseId": "tooluse_2", "name": "weather", "input": {"city": "Paris"}}},
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "Paris is in France"}]}},
                    {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "sunny"}]}},
                    {"text": "And now?"},
                ]},
            ],
            "inferenceConfig": {"maxTokens": 1000},
            "toolConfig": {
                "tools": [
                    {"toolSpec": {"name": "search", "description": "Searches the web", "inputSchema": {"json":
                        {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}},
                    {"toolSpec": {"name": "clock", "description": "The time", "inputSchema": {"json":
                        {"type": "object", "properties": {}}}}},
                ],
                "toolChoice": {"tool": {"name": "search"}},
            },
        })
    );
}

#[tokio::test]
async fn temporary_credentials_sign_with_their_session_token() {
    let server = MockServer::start().await;
    mount(&server, reply(json!([{"text": "ok"}])), 1).await;
    client(config(&server).aws_session_token("FwoGZXIvYXdzEXAMPLETOKEN")).chat(ask("hi")).await.unwrap();
    let received = &server.received_requests().await.unwrap()[0];
    assert_signed_by(received, KEY_ID, SECRET, Some("FwoGZXIvYXdzEXAMPLETOKEN"), REGION);
}

#[tokio::test]
async fn tool_choice_auto_and_required_map_to_converses_choices() {
    let server = MockServer::start().await;
    mount(&server, reply(json!([{"text": "ok"}])), 3).await;
    let tool =
        ToolDefinition { name: "f".into(), description: "d".into(), parameters: json!({"type": "object"}).into() };
    let llm = client(config(&server));
    llm.chat(ask("a").with_tools(vec![tool.clone()], ToolChoice::Auto)).await.unwrap();
    llm.chat(ask("b").with_tools(vec![tool], ToolChoice::Required)).await.unwrap();
    llm.chat(ask("c")).await.unwrap();
    let bodies = bodies(&server).await;
    assert_eq!(bodies[0]["toolConfig"]["toolChoice"], json!({"auto": {}}));
    assert_eq!(bodies[1]["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert_eq!(bodies[2].get("toolConfig"), None, "no tools, no toolConfig");
}

#[tokio::test]
async fn text_tool_uses_and_usage_with_cache_tokens_are_read() {
    let server = MockServer::start().await;
    let content = json!([
        {"reasoningContent": {"reasoningText": {"text": "The user wants a song."}}},
        {"text": "Let me look that up."},
        {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song", "input": {"sign": "WZPZ"}}},
    ]);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(conversed(content, "tool_use")))
        .mount(&server)
        .await;

    let response = client(config(&server)).chat(ask("Top song on WZPZ?")).await.unwrap();

    assert_eq!(response.text.as_deref(), Some("Let me look that up."));
    assert_eq!(
        response.tool_calls,
        vec![ToolCall {
            id: "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q".into(),
            name: "top_song".into(),
            arguments: json!({"sign": "WZPZ"}),
        }]
    );
    assert_eq!(
        response.usage,
        Usage::call(375 + 100 + 20, 77).with_cache(100, 20),
        "cache reads and writes are prompt tokens too, and counted apart"
    );
}

#[derive(Debug, PartialEq, Deserialize, JsonSchema)]
struct Answer {
    city: String,
    #[serde(default)]
    population: Option<u64>,
}

#[tokio::test]
async fn structured_output_forces_one_tool_and_takes_its_input() {
    let server = MockServer::start().await;
    let content = json!([{"toolUse": {"toolUseId": "tooluse_9", "name": "answer",
        "input": {"city": "Paris", "population": 2_100_000}}}]);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(conversed(content, "tool_use")))
        .mount(&server)
        .await;
    let request = ask("Biggest French city?").with_output_schema(OutputSchema::of::<Answer>("answer"));

    let (answer, usage): (Answer, _) = structured(client(config(&server)).as_ref(), request).await.unwrap();

    assert_eq!(answer, Answer { city: "Paris".into(), population: Some(2_100_000) });
    assert_eq!(usage.llm_calls, 1);
    let tool_config = &bodies(&server).await[0]["toolConfig"];
    assert_eq!(tool_config["toolChoice"], json!({"tool": {"name": "answer"}}));
    let spec = &tool_config["tools"][0]["toolSpec"];
    assert_eq!(spec["name"], "answer");
    let schema = &spec["inputSchema"]["json"];
    assert_eq!((&schema["type"], &schema["required"]), (&json!("object"), &json!(["city"])));
    assert!(portia::llm::portability_problems(schema).is_empty(), "{schema}");
}

#[tokio::test]
async fn throttling_and_unavailable_are_retried() {
    let server = MockServer::start().await;
    mount(&server, error_reply(429, "ThrottlingException", "Too many requests, please wait before trying again."), 1)
        .await;
    mount(&server, error_reply(503, "ServiceUnavailableException", "Bedrock is unable to process your request."), 1)
        .await;
    mount(&server, reply(json!([{"text": "third time"}])), 1).await;
    let response = client(config(&server)).chat(ask("hi")).await.unwrap();
    assert_eq!(response.text.as_deref(), Some("third time"));
}

#[tokio::test]
async fn throttling_after_the_retries_says_the_model_is_unavailable() {
    let server = MockServer::start().await;
    mount(&server, error_reply(429, "ThrottlingException", "Too many requests"), 1).await;
    let err = client(config(&server).max_retries(0u32)).chat(ask("hi")).await.unwrap_err();
    assert!(matches!(&err, LlmError::Http { status: 429, .. }), "{err:?}");
    assert!(err.is_retryable() && err.is_unavailable(), "a fallback model may take over: {err:?}");
}

#[tokio::test]
async fn a_validation_exception_is_not_retried_nor_a_reason_to_fall_back() {
    let server = MockServer::start().await;
    let words = "The model returned the following errors: messages: roles must alternate";
    mount(&server, error_reply(400, "ValidationException", words), 1).await;
    let err = client(config(&server)).chat(ask("hi")).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Http { status: 400, provider, message, .. } if provider == "bedrock" && message == words),
        "{err:?}"
    );
    assert!(!err.is_retryable() && !err.is_unavailable());
}

#[tokio::test]
async fn refused_credentials_name_the_variables_and_never_the_secret() {
    let server = MockServer::start().await;
    mount(
        &server,
        error_reply(403, "UnrecognizedClientException", "The security token included in the request is invalid."),
        1,
    )
    .await;
    let err = client(config(&server)).chat(ask("hi")).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("AWS_ACCESS_KEY_ID") && !shown.contains(SECRET), "{shown}");
}

/// Answers 403 quoting the request's headers, as a misbehaving proxy may.
struct EchoHeaders;

impl wiremock::Respond for EchoHeaders {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let headers: Vec<String> =
            request.headers.iter().map(|(n, v)| format!("{n}: {}", v.to_str().unwrap())).collect();
        error_reply(403, "AccessDeniedException", &format!("denied; you sent {}", headers.join("; ")))
    }
}

#[tokio::test]
async fn an_error_echoing_the_signed_headers_shows_no_credential() {
    let server = MockServer::start().await;
    let token = "FwoGZXIvYXdzLEAKCANARYTOKEN";
    Mock::given(method("POST")).respond_with(EchoHeaders).mount(&server).await;
    let err = client(config(&server).aws_session_token(token)).chat(ask("hi")).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("x-amz-security-token: [redacted]"), "the double echoed the headers: {shown}");
    for credential in [KEY_ID, SECRET, token] {
        assert!(!shown.contains(credential), "{credential} in {shown}");
    }
}

#[tokio::test]
async fn missing_credentials_or_region_are_errors_naming_what_to_set() {
    let no_keys = Config::builder().llm_provider(LlmProvider::Bedrock).aws_region("us-east-1").build().unwrap();
    let err = no_keys.llm_client().unwrap_err();
    assert!(
        matches!(&err, Error::MissingApiKey { env_var, .. } if env_var.contains("AWS_ACCESS_KEY_ID") && env_var.contains("AWS_SECRET_ACCESS_KEY")),
        "{err}"
    );
    let no_region =
        Config::builder().llm_provider(LlmProvider::Bedrock).aws_access_key_id("a").aws_secret_access_key("b");
    let err = no_region.build().unwrap().llm_client().unwrap_err();
    assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == "AWS_REGION"), "{err}");
    assert!(err.to_string().contains("AWS_DEFAULT_REGION"), "{err}");

    // A fallback to Bedrock from another provider: refused per call, naming the same.
    let openai = Config::builder().openai_api_key("sk-x").build().unwrap().llm_client().unwrap();
    let mut request = ask("hi");
    request.model = Some(format!("bedrock/{MODEL}"));
    let err = openai.chat(request).await.unwrap_err();
    assert!(matches!(&err, LlmError::MissingApiKey { env_var, .. } if env_var.contains("AWS_ACCESS_KEY_ID")), "{err}");
}

#[tokio::test]
async fn bedrock_models_are_named_with_their_prefix_and_priced() {
    let config = Config::from_vars(|name| (name == "PORTIA_LLM_MODEL").then(|| format!("bedrock/{MODEL}"))).unwrap();
    assert_eq!(config.llm_provider, LlmProvider::Bedrock);
    let target = config.model_for(ModelRole::Planning);
    assert_eq!((target.provider, target.model.as_str()), (LlmProvider::Bedrock, MODEL));
    assert!(config.prices.get(MODEL).is_some() && config.prices.get("amazon.nova-lite-v1:0").is_some());
    let config = Config::builder().aws_region("ap-southeast-2").build().unwrap();
    assert_eq!(config.base_url(LlmProvider::Bedrock), "https://bedrock-runtime.ap-southeast-2.amazonaws.com");
}

/// Variables as a map, for `Config::from_vars`: nothing of the process environment.
fn vars(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    let map: std::collections::HashMap<&str, String> = pairs.into_iter().collect();
    move |name| map.get(name).cloned()
}

#[tokio::test]
async fn credentials_and_region_come_from_the_named_profile_and_sign_requests() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = default-secret\n\n\
         [dev]\naws_access_key_id = AKIDDEV\naws_secret_access_key = dev-secret-key\naws_session_token = dev-token\n",
    )
    .unwrap();
    std::fs::write(
        home.path().join(".aws/config"),
        "[default]\nregion = us-east-1\n[profile dev]\nregion = eu-west-3\n",
    )
    .unwrap();
    let server = MockServer::start().await;
    mount(&server, reply(json!([{"text": "from the profile"}])), 1).await;
    let config = Config::from_vars(vars(vec![
        ("HOME", home.path().display().to_string()),
        ("AWS_PROFILE", "dev".into()),
        ("PORTIA_LLM_MODEL", format!("bedrock/{MODEL}")),
        ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.uri()),
    ]))
    .unwrap();
    assert_eq!(config.aws_region.as_deref(), Some("eu-west-3"));
    for shown in [format!("{config:?}"), config.to_json(), config.to_toml()] {
        assert!(!shown.contains("dev-secret-key") && !shown.contains("dev-token"), "{shown}");
    }

    let response = config.llm_client().unwrap().chat(ask("hi")).await.unwrap();

    assert_eq!(response.text.as_deref(), Some("from the profile"));
    let received = &server.received_requests().await.unwrap()[0];
    assert_signed_by(received, "AKIDDEV", "dev-secret-key", Some("dev-token"), "eu-west-3");
}

#[test]
fn variables_win_over_the_profile_and_the_files_can_be_moved() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("creds.ini");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = file-secret\nregion = us-west-2\n",
    )
    .unwrap();
    let base = |extra: Vec<(&'static str, String)>| {
        let mut pairs = vec![
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.display().to_string()),
            ("AWS_CONFIG_FILE", dir.path().join("none").display().to_string()),
            ("PORTIA_LLM_PROVIDER", "bedrock".to_owned()),
        ];
        pairs.extend(extra);
        Config::from_vars(vars(pairs)).unwrap()
    };
    let from_file = base(vec![]);
    assert_eq!(from_file.aws_access_key_id.as_ref().map(|s| s.expose()), Some("AKIDFILE"));
    assert_eq!(from_file.aws_region.as_deref(), Some("us-west-2"));
    let from_vars = base(vec![
        ("AWS_ACCESS_KEY_ID", "AKIDVAR".into()),
        ("AWS_SECRET_ACCESS_KEY", "var-secret".into()),
        ("AWS_DEFAULT_REGION", "eu-north-1".into()),
    ]);
    assert_eq!(from_vars.aws_access_key_id.as_ref().map(|s| s.expose()), Some("AKIDVAR"));
    assert_eq!(from_vars.aws_region.as_deref(), Some("eu-north-1"));
    let region_wins = base(vec![("AWS_REGION", "sa-east-1".into()), ("AWS_DEFAULT_REGION", "eu-north-1".into())]);
    assert_eq!(region_wins.aws_region.as_deref(), Some("sa-east-1"));
    // Without Bedrock in use, the files are not read at all.
    let unused = Config::from_vars(vars(vec![("AWS_SHARED_CREDENTIALS_FILE", credentials.display().to_string())]));
    assert!(unused.unwrap().aws_access_key_id.is_none());
}

#[test]
fn a_missing_or_unsupported_profile_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("config");
    std::fs::write(&config_file, "[profile sso]\nsso_session = corp\nregion = us-east-1\n").unwrap();
    let read = |profile: &str| {
        Config::from_vars(vars(vec![
            ("AWS_CONFIG_FILE", config_file.display().to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none").display().to_string()),
            ("AWS_PROFILE", profile.to_owned()),
            ("PORTIA_LLM_PROVIDER", "bedrock".to_owned()),
        ]))
        .unwrap_err()
    };
    let err = read("prod");
    assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == "AWS_PROFILE"), "{err}");
    assert!(err.to_string().contains("no profile \"prod\""), "{err}");
    let err = read("sso").to_string();
    assert!(err.contains("sso_session") && err.contains("aws configure export-credentials --profile sso"), "{err}");
}
