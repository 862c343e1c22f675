//! Azure OpenAI against an in-process double: the deployment URL with its
//! `api-version`, the `api-key` header or an Entra bearer token, and the errors
//! that name what to set.

use portia::llm::{LlmError, LlmProvider, LlmRequest, Message, ModelRole};
use portia::{Config, Error};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ROUTE: &str = "/openai/deployments/my-gpt/chat/completions";

fn config(server: &MockServer) -> portia::config::ConfigBuilder {
    Config::builder()
        .llm_provider(LlmProvider::AzureOpenAi)
        .azure_openai_endpoint(server.uri())
        .default_model("my-gpt")
        .max_retries(0u32)
}

/// A chat completion as Azure's reference shows one.
fn completion() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-7R1nGnsXO8n4oi9UPz2f3UHdgAYMn",
        "object": "chat.completion",
        "model": "gpt-4.1-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello."}}],
        "usage": {"completion_tokens": 3, "prompt_tokens": 9, "total_tokens": 12},
    }))
}

fn ask() -> LlmRequest {
    LlmRequest::new(ModelRole::Execution, vec![Message::user("Hi")])
}

#[tokio::test]
async fn a_deployment_is_called_with_its_api_version_and_api_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .and(query_param("api-version", "2024-10-21"))
        .and(header("api-key", "azure-key-123"))
        .respond_with(completion())
        .expect(1)
        .mount(&server)
        .await;
    let llm = config(&server).azure_openai_api_key("azure-key-123").build().unwrap().llm_client().unwrap();

    let reply = llm.chat(ask()).await.unwrap();

    assert_eq!(reply.text.as_deref(), Some("Hello."));
    assert_eq!((reply.usage.prompt_tokens, reply.usage.completion_tokens), (9, 3));
    let request = &server.received_requests().await.unwrap()[0];
    assert!(request.headers.get("authorization").is_none(), "the key is not a bearer token");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["max_completion_tokens"], json!(8192));
}

#[tokio::test]
async fn an_entra_token_is_a_bearer_token_and_a_refusal_names_its_variable() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .and(query_param("api-version", "2025-04-01-preview"))
        .and(header("authorization", "Bearer entra-token-456"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint."}}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let config = config(&server)
        .azure_openai_ad_token("entra-token-456")
        .azure_openai_api_version("2025-04-01-preview")
        .build()
        .unwrap();

    let err = config.llm_client().unwrap().chat(ask()).await.unwrap_err();

    assert!(
        matches!(&err, LlmError::Http { status: 401, key_var: Some(var), .. } if var == "AZURE_OPENAI_AD_TOKEN"),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?} {config:?}").contains("entra-token-456"));
}

#[tokio::test]
async fn a_missing_endpoint_or_key_names_what_to_set() {
    let no_key = Config::builder().llm_provider(LlmProvider::AzureOpenAi).build().unwrap();
    let err = no_key.llm_client().unwrap_err();
    assert!(matches!(&err, Error::MissingApiKey { env_var, .. } if env_var == "AZURE_OPENAI_API_KEY"), "{err}");
    let no_endpoint =
        Config::builder().llm_provider(LlmProvider::AzureOpenAi).azure_openai_api_key("k").build().unwrap();
    let err = no_endpoint.llm_client().unwrap().chat(ask()).await.unwrap_err();
    assert!(matches!(&err, LlmError::NotSent { message, .. } if message.contains("AZURE_OPENAI_ENDPOINT")), "{err:?}");
}
