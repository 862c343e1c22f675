//! What a provider call logs. Alone in its own test binary: `tracing` caches per
//! call site whether anyone listens, and a test on another thread that reaches the
//! same call site with no subscriber could make this one miss its lines.

use std::io::Write;
use std::sync::{Arc, Mutex};

use portia::Config;
use portia::llm::{LlmRequest, Message, ModelRole};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk-test-0123456789";

/// A `tracing` writer that keeps what it is given.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_call_is_logged_at_debug_without_the_key_or_the_conversation() {
    let server = MockServer::start().await;
    let reply = json!({
        "choices": [{"message": {"role": "assistant", "content": "classified answer"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5},
    });
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(reply))
        .expect(1)
        .mount(&server)
        .await;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let config = Config::builder()
        .openai_api_key(KEY)
        .openai_base_url(format!("{}/v1", server.uri()))
        .default_model("gpt-test")
        .build()
        .unwrap();
    let request = LlmRequest::new(ModelRole::Execution, vec![Message::user("classified question")]);
    config.llm_client().unwrap().chat(request).await.unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = logs.lines().find(|l| l.contains("LLM call")).unwrap_or_else(|| panic!("no call logged in:\n{logs}"));
    assert!(line.contains("DEBUG"), "{line}");
    for field in [
        "provider=openai",
        "model=\"gpt-test\"",
        "status=200",
        "latency_ms=",
        "prompt_tokens=12",
        "completion_tokens=5",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    assert!(!logs.contains(KEY) && !logs.contains("classified"), "{logs}");
}
