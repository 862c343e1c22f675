//! Completion caps that fit: a cap per purpose, lowered to fit a configured context
//! window, and a context-length 400 (as vLLM words it) sent once more with a cap
//! that fits, without falling back to `json_object`.

use portia::Config;
use portia::llm::{LlmProvider, LlmRequest, Message, ModelRole, OutputSchema};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ROUTE: &str = "/v1/chat/completions";

fn config(server: &MockServer) -> portia::config::ConfigBuilder {
    Config::builder()
        .llm_provider(LlmProvider::OpenAiCompatible)
        .llm_base_url(format!("{}/v1", server.uri()))
        .default_model("local-model")
        .max_retries(0u32)
}

fn ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\"a\": 1}"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 565, "completion_tokens": 5},
    }))
}

async fn sent_caps(server: &MockServer) -> Vec<Value> {
    let requests = server.received_requests().await.unwrap();
    requests.iter().map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["max_tokens"].clone()).collect()
}

fn ask(purpose: ModelRole) -> LlmRequest {
    LlmRequest::new(purpose, vec![Message::user("x".repeat(2000))])
}

#[tokio::test]
async fn each_purpose_has_its_cap_and_a_configured_context_lowers_it() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(ROUTE)).respond_with(ok()).expect(4).mount(&server).await;
    let llm = config(&server).planning_max_tokens(6000).build().unwrap().llm_client().unwrap();
    for purpose in [ModelRole::Planning, ModelRole::Execution, ModelRole::Summary] {
        llm.chat(ask(purpose)).await.unwrap();
    }
    let small = config(&server).llm_context_tokens(4096).build().unwrap().llm_client().unwrap();
    small.chat(ask(ModelRole::Execution)).await.unwrap();

    // 2,000 characters are about 500 tokens; a quarter more and 64 spare come off the window.
    assert_eq!(sent_caps(&server).await, [json!(6000), json!(8192), json!(2048), json!(4096 - 625 - 64)]);
}

#[tokio::test]
async fn a_context_length_refusal_is_sent_once_more_with_a_cap_that_fits() {
    let server = MockServer::start().await;
    let refusal = json!({"object": "error", "type": "BadRequestError", "code": 400, "message":
        "This model's maximum context length is 8192 tokens. However, you requested 8757 tokens \
         (565 in the messages, 8192 in the completion). Please reduce the length of the messages or completion."});
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .respond_with(ResponseTemplate::new(400).set_body_json(refusal))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path(ROUTE)).respond_with(ok()).expect(1).mount(&server).await;
    let llm = config(&server).build().unwrap().llm_client().unwrap();
    let request = ask(ModelRole::Execution).with_output_schema(OutputSchema {
        name: "a".into(),
        schema: json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}).into(),
    });

    let reply = llm.chat(request).await.expect("the second try fits");

    assert_eq!(reply.text.as_deref(), Some("{\"a\": 1}"));
    assert_eq!(sent_caps(&server).await, [json!(8192), json!(8192 - 565 - 16)]);
    let requests = server.received_requests().await.unwrap();
    let format =
        |i: usize| serde_json::from_slice::<Value>(&requests[i].body).unwrap()["response_format"]["type"].clone();
    assert_eq!((format(0), format(1)), (json!("json_schema"), json!("json_schema")), "no json_object fallback");
}

#[tokio::test]
async fn the_caps_read_their_variables() {
    let config = Config::from_vars(|name| match name {
        "PORTIA_SUMMARY_MAX_TOKENS" => Some("300".into()),
        "PORTIA_LLM_CONTEXT_TOKENS" => Some("8192".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!((config.summary_max_tokens, config.llm_context_tokens), (Some(300), Some(8192)));
    let request = LlmRequest::new(ModelRole::Summary, vec![Message::user("short")]);
    assert_eq!(config.llm_settings().completion_cap_for(&request, "any"), 300);
}
