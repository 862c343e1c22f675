//! The search tool against an in-process Tavily double.

use std::time::Duration;

use portia::tools::SearchTool;
use portia::{Config, Tool, ToolError, ToolOutput, ToolRunContext, WorkflowId};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "tvly-test-key";

/// The tool's config against `base_url`, with room for a loaded machine: only the
/// timeout test asks for a short timeout.
fn config(base_url: &str) -> Config {
    config_timing_out(base_url, Duration::from_secs(10))
}

fn config_timing_out(base_url: &str, timeout: Duration) -> Config {
    Config::builder().tavily_api_key(KEY).tavily_base_url(base_url).request_timeout(timeout).build().unwrap()
}

async fn search(tool: &SearchTool, query: &str) -> Result<Value, ToolError> {
    let ctx = ToolRunContext::new(WorkflowId::new());
    match tool.run(&ctx, json!({ "search_query": query })).await? {
        ToolOutput::Value(value) => Ok(value.into_value()),
        other => panic!("expected a value, got {other:?}"),
    }
}

/// A reply shaped like Tavily's, with the fields the tool should drop.
fn tavily_reply() -> Value {
    json!({
        "query": "Amazon stock 2024",
        "follow_up_questions": null,
        "answer": "Amazon's stock rose about 44% in 2024.",
        "images": [],
        "results": [
            {"title": "AMZN 2024", "url": "https://example.com/amzn", "content": "Up 44%.", "score": 0.93, "raw_content": null},
            {"title": "Tech stocks", "url": "https://example.com/tech", "content": "A strong year.", "score": 0.81, "raw_content": "long page"}
        ],
        "response_time": 0.42
    })
}

async fn status_reply(status: u16, body: Value) -> ToolError {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/search"))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .expect(1)
        .mount(&server)
        .await;
    search(&SearchTool::from_config(&config(&server.uri())), "anything").await.unwrap_err()
}

#[tokio::test]
async fn search_posts_a_bounded_query_with_a_bearer_key_and_returns_compact_json() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/search"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({"query": "Amazon stock 2024", "include_answer": true, "max_results": 3})))
        .respond_with(ResponseTemplate::new(200).set_body_json(tavily_reply()))
        .expect(1)
        .mount(&server)
        .await;

    let value = search(&SearchTool::from_config(&config(&server.uri())), "  Amazon stock 2024 ").await.unwrap();

    assert_eq!(
        value,
        json!({
            "answer": "Amazon's stock rose about 44% in 2024.",
            "results": [
                {"title": "AMZN 2024", "url": "https://example.com/amzn", "content": "Up 44%."},
                {"title": "Tech stocks", "url": "https://example.com/tech", "content": "A strong year."}
            ]
        })
    );
    let requests = server.received_requests().await.unwrap();
    let body = String::from_utf8(requests[0].body.clone()).unwrap();
    assert!(!body.contains(KEY), "the key goes in the header only: {body}");
}

#[tokio::test]
async fn max_results_is_a_bounded_setting_of_the_tool() {
    assert_eq!(SearchTool::new(KEY).max_results(), SearchTool::DEFAULT_MAX_RESULTS);
    assert_eq!(SearchTool::new(KEY).with_max_results(50).max_results(), 20);
    assert_eq!(SearchTool::new(KEY).with_max_results(0).max_results(), 1);

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_json(json!({"query": "q", "include_answer": true, "max_results": 1})))
        .respond_with(ResponseTemplate::new(200).set_body_json(tavily_reply()))
        .expect(1)
        .mount(&server)
        .await;
    let value = search(&SearchTool::from_config(&config(&server.uri())).with_max_results(1), "q").await.unwrap();
    assert_eq!(value["results"].as_array().unwrap().len(), 1, "extra results are cut even if the API sends them");
}

#[tokio::test]
async fn missing_key_is_a_hard_error_naming_the_variable() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
    let config = Config::builder().tavily_base_url(server.uri()).build().unwrap();
    let err = search(&SearchTool::from_config(&config), "q").await.unwrap_err();
    assert!(matches!(&err, ToolError::Hard(m) if m.contains("TAVILY_API_KEY")), "{err:?}");
}

#[tokio::test]
async fn rejected_key_is_a_hard_error_that_does_not_show_the_key() {
    for status in [401, 403] {
        let err = status_reply(status, json!({"detail": {"error": "Unauthorized: missing or invalid API key."}})).await;
        let ToolError::Hard(message) = &err else { panic!("{status}: expected hard, got {err:?}") };
        assert!(message.contains("TAVILY_API_KEY") && message.contains("invalid API key"), "{message}");
        assert!(message.contains(&format!("HTTP {status}")), "{message}");
        assert!(!message.contains(KEY), "{message}");
    }
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_transient_and_only_a_429_was_not_performed() {
    for status in [429, 500, 502, 503] {
        let err = status_reply(status, json!({"detail": {"error": "fake fault"}})).await;
        let ToolError::Transient { message, hint } = &err else { panic!("{status}: expected transient, got {err:?}") };
        assert!(message.contains("fake fault"), "{status}: {message}");
        assert_eq!(hint.not_performed, status == 429, "{status}: {hint:?}");
        assert!(err.is_soft());
    }
}

#[tokio::test]
async fn other_client_errors_are_hard_with_the_api_message() {
    let err = status_reply(400, json!({"detail": {"error": "Invalid request: 'query' is required"}})).await;
    assert!(
        matches!(&err, ToolError::Hard(m) if m.contains("HTTP 400") && m.contains("'query' is required")),
        "{err:?}"
    );
}

#[tokio::test]
async fn timeout_is_a_transient_error_of_unknown_outcome() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tavily_reply()).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let err = search(&SearchTool::from_config(&config_timing_out(&server.uri(), Duration::from_millis(40))), "q")
        .await
        .unwrap_err();
    let ToolError::Transient { message, hint } = &err else { panic!("expected transient, got {err:?}") };
    assert!(message.contains("did not answer within 40ms") && !hint.not_performed, "{err:?}");
}

#[tokio::test]
async fn connection_error_is_a_transient_error_that_was_not_performed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let err = search(&SearchTool::from_config(&config(&format!("http://{address}"))), "q").await.unwrap_err();
    let ToolError::Transient { message, hint } = &err else { panic!("expected transient, got {err:?}") };
    assert!(message.starts_with("could not connect to Tavily") && hint.not_performed, "{err:?}");
}

#[tokio::test]
async fn an_unreadable_reply_is_transient_and_an_empty_one_soft() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"query\": \""))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"answer": null, "results": []})))
        .mount(&server)
        .await;
    let err = search(&SearchTool::from_config(&config(&server.uri())), "q").await.unwrap_err();
    assert!(matches!(&err, ToolError::Transient { message, .. } if message.contains("could not be read")), "{err:?}");
    let err = search(&SearchTool::from_config(&config(&server.uri())), "q").await.unwrap_err();
    assert!(matches!(&err, ToolError::Soft(m) if m.contains("found nothing")), "{err:?}");
}

#[tokio::test]
async fn empty_query_is_a_soft_error_and_sends_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
    let err = search(&SearchTool::from_config(&config(&server.uri())), "  ").await.unwrap_err();
    assert!(matches!(&err, ToolError::Soft(m) if m.contains("search_query is empty")), "{err:?}");
}

#[tokio::test]
async fn offline_mode_refuses_the_real_api() {
    // Offline mode is switched on explicitly, so the default base URL is refused.
    portia::config::set_offline(true);
    let config = Config::builder().tavily_api_key(KEY).build().unwrap();
    let err = search(&SearchTool::from_config(&config), "q").await.unwrap_err();
    assert!(
        matches!(&err, ToolError::Hard(m) if m.contains("PORTIA_OFFLINE") && m.contains("api.tavily.com")),
        "{err:?}"
    );
}

#[test]
fn search_is_not_summarized_and_describes_its_argument() {
    let spec = SearchTool::new(KEY).spec();
    assert_eq!((spec.id.as_str(), spec.name.as_str()), ("search_tool", "Search Tool"));
    assert!(!spec.summarize, "a summary would cost an LLM call the seed scenario cannot afford");
    assert_eq!(spec.args_schema["required"], json!(["search_query"]));
}
