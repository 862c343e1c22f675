//! Fallback chains: OpenAI down (every call a 500) with a fallback on Anthropic,
//! both in-process doubles. The fallback serves once the primary's retries are
//! spent, a run names and prices the model that served, and a 400 never falls back.

use std::sync::Arc;

use portia::config::{Price, Prices};
use portia::llm::{LlmClient, LlmError, LlmRequest, Message, ModelRole};
use portia::runner::EventKind;
use portia::{Config, PlanBuilder, Runner, WorkflowState};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const FALLBACK: &str = "anthropic/claude-haiku-4-5";

/// OpenAI and Anthropic on one double, with two retries per model and `FALLBACK` named.
fn config(server: &MockServer) -> portia::config::ConfigBuilder {
    Config::builder()
        .openai_api_key("sk-test")
        .openai_base_url(format!("{}/v1", server.uri()))
        .anthropic_api_key("sk-ant-test")
        .anthropic_base_url(server.uri())
        .default_model("openai/gpt-4.1-mini")
        .llm_fallback([FALLBACK])
        .max_retries(2u32)
        .retry_backoff(std::time::Duration::from_millis(1))
        .summarize_final_output(false)
}

/// Every Chat Completions request gets `status`, and exactly `expected` must arrive.
fn openai_answers(status: u16, expected: u64) -> Mock {
    let body = json!({"error": {"message": format!("status {status}"), "type": "server_error"}});
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .expect(expected)
}

/// A Messages reply as Anthropic documents one; exactly `expected` requests must arrive.
fn anthropic_serves(expected: u64) -> Mock {
    let message = json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Served by Claude."}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 1000, "output_tokens": 200},
    });
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(message))
        .expect(expected)
}

fn ask() -> LlmRequest {
    LlmRequest::new(ModelRole::Execution, vec![Message::user("Hi")])
}

#[tokio::test]
async fn the_fallback_serves_once_the_primarys_retries_are_spent_on_500s() {
    let server = MockServer::start().await;
    openai_answers(500, 3).mount(&server).await;
    anthropic_serves(1).mount(&server).await;
    let llm: Arc<dyn LlmClient> = config(&server).build().unwrap().llm_client().unwrap();

    let reply = llm.chat(ask()).await.expect("the fallback answers");

    assert_eq!(reply.text.as_deref(), Some("Served by Claude."));
    assert_eq!(reply.model.as_deref(), Some(FALLBACK));
    let sent: Vec<String> = server.received_requests().await.unwrap().iter().map(|r| r.url.path().to_owned()).collect();
    assert_eq!(sent, ["/v1/chat/completions", "/v1/chat/completions", "/v1/chat/completions", "/v1/messages"]);
}

#[tokio::test]
async fn a_400_is_returned_as_it_is_and_never_falls_back() {
    let server = MockServer::start().await;
    openai_answers(400, 1).mount(&server).await;
    anthropic_serves(0).mount(&server).await;
    let llm = config(&server).build().unwrap().llm_client().unwrap();

    let err = llm.chat(ask()).await.unwrap_err();

    assert!(matches!(&err, LlmError::Http { status: 400, provider, .. } if provider == "openai"), "{err:?}");
}

#[tokio::test]
async fn when_every_model_fails_the_error_keeps_the_first_models_and_names_the_last() {
    let server = MockServer::start().await;
    openai_answers(503, 3).mount(&server).await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(
            ResponseTemplate::new(502).set_body_json(json!({"type": "error", "error": {"message": "bad gateway"}})),
        )
        .expect(3)
        .mount(&server)
        .await;
    let llm = config(&server).build().unwrap().llm_client().unwrap();

    let err = llm.chat(ask()).await.unwrap_err();

    let LlmError::FellBack { first, model, last } = &err else { panic!("{err:?}") };
    assert!(matches!(&**first, LlmError::Http { status: 503, provider, .. } if provider == "openai"), "{err:?}");
    assert_eq!(model, FALLBACK);
    assert!(matches!(&**last, LlmError::Http { status: 502, provider, .. } if provider == "anthropic"), "{err:?}");
    assert!(err.is_unavailable() && err.is_retryable(), "as its last error is");
    let shown = err.to_string();
    assert!(shown.starts_with("openai (gpt-4.1-mini) returned HTTP 503"), "{shown}");
    assert!(shown.contains("then the fallback anthropic/claude-haiku-4-5 failed too: anthropic"), "{shown}");
}

#[test]
fn a_model_or_fallback_whose_provider_has_no_key_is_refused_when_the_client_is_made() {
    let base = || Config::builder().openai_api_key("sk-test").default_model("openai/gpt-4.1-mini");

    let err = base().llm_fallback(["gemini/gemini-2.5-flash"]).build().unwrap().llm_client().unwrap_err();
    assert!(matches!(&err, portia::Error::MissingApiKey { env_var, .. } if env_var == "GEMINI_API_KEY"), "{err}");

    let mut config = base().build().unwrap();
    config.planning_model = Some("anthropic/claude-sonnet-4-5".into());
    let err = config.llm_client().unwrap_err();
    assert!(matches!(&err, portia::Error::MissingApiKey { env_var, .. } if env_var == "ANTHROPIC_API_KEY"), "{err}");

    assert!(base().llm_fallback(["openai/gpt-4.1"]).build().unwrap().llm_client().is_ok());
}

#[tokio::test]
async fn a_run_names_and_prices_the_model_that_served_each_call() {
    let server = MockServer::start().await;
    openai_answers(503, 3).mount(&server).await;
    anthropic_serves(1).mount(&server).await;
    let prices =
        Prices::none().with("gpt-4.1-mini", Price::new(1000.0, 1000.0)).with("claude-haiku-4-5", Price::new(1.0, 5.0));
    let mut config = config(&server).build().unwrap();
    config.prices = prices;
    let runner = Runner::builder(config).build().unwrap();
    let plan = PlanBuilder::new("Say hi").step("Say hi", None, "$hi").build();
    let workflow = runner.create_workflow(&plan).await.unwrap();

    let (mut events, run) = runner.execute_workflow_stream(workflow);
    let mut served = Vec::new();
    while let Some(event) = events.next().await {
        if let EventKind::LlmCallFinished { model, cost_usd, .. } = event.unwrap().kind {
            served.push((model, cost_usd));
        }
    }
    let done = run.await.unwrap().unwrap();

    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].0, "claude-haiku-4-5");
    let expected = (1000.0 * 1.0 + 200.0 * 5.0) / 1e6;
    assert!((served[0].1 - expected).abs() < 1e-12, "{served:?}");
    assert!((done.usage().cost_usd - expected).abs() < 1e-12);
    assert_eq!((done.usage().total.prompt_tokens, done.usage().total.completion_tokens), (1000, 200));
}

#[test]
fn the_fallback_list_reads_its_variable_and_refuses_an_unknown_provider() {
    let config = Config::from_vars(|name| {
        (name == "PORTIA_LLM_FALLBACK").then(|| " anthropic/claude-haiku-4-5, gemini/gemini-2.5-flash ,".into())
    })
    .unwrap();
    assert_eq!(config.llm_fallback, ["anthropic/claude-haiku-4-5", "gemini/gemini-2.5-flash"]);
    assert_eq!(config.llm_settings().fallback_models(), config.llm_fallback.as_slice());
    let err = Config::from_vars(|name| (name == "PORTIA_LLM_FALLBACK").then(|| "antropic/claude".into())).unwrap_err();
    assert!(err.to_string().contains("PORTIA_LLM_FALLBACK") && err.to_string().contains("\"antropic\""), "{err}");
}

#[test]
fn only_errors_that_say_down_or_overloaded_are_unavailable() {
    let http = |status, retry_after| LlmError::Http {
        provider: "p".into(),
        model: "m".into(),
        status,
        message: String::new(),
        retry_after,
        key_var: None,
    };
    let secs = |s| Some(std::time::Duration::from_secs(s));
    for (error, unavailable) in [
        (http(500, None), true),
        (http(503, secs(1)), true),
        (http(529, None), true),
        (http(429, None), true),
        (http(429, secs(3600)), true),
        (http(429, secs(2)), false),
        (http(400, None), false),
        (http(401, None), false),
        (http(404, None), false),
        (http(422, None), false),
        (LlmError::Connection { provider: "p".into(), model: "m".into(), message: "refused".into() }, true),
        (LlmError::Timeout { provider: "p".into(), model: "m".into(), after: std::time::Duration::from_secs(1) }, true),
    ] {
        assert_eq!(error.is_unavailable(), unavailable, "{error:?}");
    }
}
