//! The client [`client`](super::client) returns: it picks the provider and model of
//! each request and hands it to that provider's stack: the client-side rate limit,
//! then the [`Retry`] and [`Offline`] layers around a client that sends each request once.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::anthropic::AnthropicClient;
use super::bedrock::BedrockClient;
use super::caps;
use super::gemini::GeminiClient;
use super::openai::OpenAiClient;
use super::rate_limit::{self, Limiters, RateLimits};
use super::{
    LlmClient, LlmClientExt, LlmError, LlmProvider, LlmRequest, LlmResponse, LlmSettings, ModelRef, Offline, Retry,
    unknown_provider,
};

/// Routes each request to the stack of the provider its model belongs to.
#[derive(Debug)]
pub(crate) struct Router {
    settings: Arc<LlmSettings>,
    clients: HashMap<LlmProvider, Arc<dyn LlmClient>>,
}

impl Router {
    /// One stack per provider, all on one HTTP client so they share its connection
    /// pool. Keys are checked per request: only the providers actually used need one.
    pub(crate) fn new(settings: LlmSettings) -> Self {
        let http = crate::http::client(settings.timeout(), settings.pool());
        let settings = Arc::new(settings);
        // One registry for every provider: a model's limits hold across all its callers.
        let limiters = Arc::new(Limiters::new(Arc::clone(&settings)));
        let clients = LlmProvider::ALL
            .iter()
            .map(|&provider| {
                let client = match provider {
                    LlmProvider::Anthropic => {
                        ProviderClient::Anthropic(AnthropicClient::new(http.clone(), &settings, Arc::clone(&limiters)))
                    }
                    LlmProvider::Gemini => {
                        ProviderClient::Gemini(GeminiClient::new(http.clone(), &settings, Arc::clone(&limiters)))
                    }
                    LlmProvider::Bedrock => {
                        ProviderClient::Bedrock(BedrockClient::new(http.clone(), &settings, Arc::clone(&limiters)))
                    }
                    _ => ProviderClient::OpenAi(OpenAiClient::new(
                        http.clone(),
                        &settings,
                        Arc::clone(&limiters),
                        provider,
                    )),
                };
                let once = Arc::new(SendOnce { settings: Arc::clone(&settings), client });
                let stack = once
                    .with(Offline::unless_loopback(settings.url(provider)).shared_models(Arc::clone(&settings)))
                    .with(Retry::new(settings.retry_policy().clone()).shared_models(Arc::clone(&settings)))
                    .with(RateLimits { limiters: Arc::clone(&limiters) });
                (provider, stack)
            })
            .collect();
        Self { settings, clients }
    }
}

impl Router {
    /// Checks the request's provider and model, then sends it to that provider's client.
    async fn route(&self, request: Cow<'_, LlmRequest>) -> Result<LlmResponse, LlmError> {
        let ModelRef { provider, model } = self.settings.resolve(&request);
        if let Some(problem) = request.named_model().and_then(|name| unknown_provider(self.settings.provider(), name)) {
            return Err(LlmError::NotSent { provider: provider.to_string(), model, message: problem });
        }
        if model.trim().is_empty() {
            return Err(LlmError::NotSent {
                provider: provider.to_string(),
                model,
                message: "the model name is empty; give one such as gpt-4.1-mini".into(),
            });
        }
        self.settings.require_api_key(provider)?;
        if self.settings.url(provider).is_empty() {
            // Azure and Bedrock have no one public address: a resource's, a region's.
            let message = match provider {
                LlmProvider::Bedrock => super::AWS_MISSING_REGION,
                _ => {
                    "Azure OpenAI needs its resource's endpoint: set AZURE_OPENAI_ENDPOINT, \
                      such as https://my-resource.openai.azure.com"
                }
            };
            return Err(LlmError::NotSent { provider: provider.to_string(), model, message: message.into() });
        }
        match self.clients.get(&provider) {
            Some(client) => super::forward(client.as_ref(), request).await,
            None => Err(LlmError::Other(format!("no client is built in for the provider {provider}"))),
        }
    }
}

#[async_trait::async_trait]
impl LlmClient for Router {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        self.route(Cow::Owned(request)).await
    }

    async fn chat_ref(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        self.route(Cow::Borrowed(request)).await
    }

    fn retries(&self) -> bool {
        true
    }
}

/// One provider's client: sends each request once, to the model the settings resolve it to.
#[derive(Debug)]
struct SendOnce {
    settings: Arc<LlmSettings>,
    client: ProviderClient,
}

#[derive(Debug)]
enum ProviderClient {
    OpenAi(OpenAiClient),
    Anthropic(AnthropicClient),
    Gemini(GeminiClient),
    Bedrock(BedrockClient),
}

#[async_trait::async_trait]
impl LlmClient for SendOnce {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        self.chat_ref(&request).await
    }

    /// Sends with the cap that fits the request's purpose and the model's context;
    /// a refusal for context length is sent once more with a cap that fits.
    async fn chat_ref(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let target = self.settings.resolve(request);
        let cap = self.settings.completion_cap_for(request, &target.model);
        let error = match self.send(&target.model, request, cap).await {
            Err(error) if caps::is_context_overflow(&error) => error,
            result => return result,
        };
        let prompt = rate_limit::estimated_tokens(request);
        let Some(smaller) = caps::after_refusal(&error, cap, self.settings.context_of(&target.model), prompt) else {
            return Err(error);
        };
        tracing::warn!(
            provider = %target.provider,
            model = %target.model,
            sent_cap = cap,
            retry_cap = smaller,
            error = %error,
            "the prompt and reply cap exceed the model's context; sending once more with a smaller cap"
        );
        self.send(&target.model, request, smaller).await
    }
}

impl SendOnce {
    async fn send(&self, model: &str, request: &LlmRequest, cap: u32) -> Result<LlmResponse, LlmError> {
        match &self.client {
            ProviderClient::OpenAi(client) => client.chat(model, request, cap).await,
            ProviderClient::Anthropic(client) => client.chat(model, request, cap).await,
            ProviderClient::Gemini(client) => client.chat(model, request, cap).await,
            ProviderClient::Bedrock(client) => client.chat(model, request, cap).await,
        }
    }
}
