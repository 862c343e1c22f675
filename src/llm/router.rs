//! The client [`client`](super::client) returns: it picks the provider and model of
//! each request and hands it to that provider's client.

use std::collections::HashMap;

use super::anthropic::AnthropicClient;
use super::openai::OpenAiClient;
use super::{LlmClient, LlmError, LlmProvider, LlmRequest, LlmResponse, LlmSettings, ModelRef};

/// Routes each request to the client of the provider its model belongs to.
#[derive(Debug)]
pub(crate) struct Router {
    settings: LlmSettings,
    clients: HashMap<LlmProvider, ProviderClient>,
}

#[derive(Debug)]
enum ProviderClient {
    OpenAi(OpenAiClient),
    Anthropic(AnthropicClient),
}

impl Router {
    /// One client per provider, all on one HTTP client so they share its connection
    /// pool. Keys are checked per request: only the providers actually used need one.
    pub(crate) fn new(settings: LlmSettings) -> Self {
        let http = crate::http::client(settings.timeout());
        let clients = LlmProvider::ALL
            .iter()
            .map(|&provider| {
                let client = if provider.is_openai_protocol() {
                    ProviderClient::OpenAi(OpenAiClient::new(http.clone(), &settings, provider))
                } else {
                    ProviderClient::Anthropic(AnthropicClient::new(http.clone(), &settings))
                };
                (provider, client)
            })
            .collect();
        Self { settings, clients }
    }

    /// The request's own model (`provider/model` accepted) or the one configured for its purpose.
    fn target(&self, request: &LlmRequest) -> ModelRef {
        match request.model.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
            Some(name) => self.settings.model_ref(name),
            None => self.settings.model_for(request.purpose),
        }
    }
}

#[async_trait::async_trait]
impl LlmClient for Router {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        let ModelRef { provider, model } = self.target(&request);
        if model.trim().is_empty() {
            return Err(LlmError::NotSent {
                provider: provider.to_string(),
                model,
                message: "the model name is empty; give one such as gpt-4.1-mini".into(),
            });
        }
        self.settings.require_api_key(provider)?;
        match self.clients.get(&provider) {
            Some(ProviderClient::OpenAi(client)) => client.chat(&model, &request).await,
            Some(ProviderClient::Anthropic(client)) => client.chat(&model, &request).await,
            None => Err(LlmError::Other(format!("no client is built in for the provider {provider}"))),
        }
    }
}
