//! [`LlmSettings`]: the part of the configuration the LLM clients read.

use std::collections::HashMap;
use std::time::Duration;

use super::{
    AwsCredentials, LlmError, LlmProvider, LlmRequest, ModelRef, ModelRole, RateLimit, RetryPolicy, StreamMode,
    split_provider,
};
use crate::secret::Secret;

/// What the LLM clients need to know: which provider serves a model name, each
/// provider's key and URL, and the limits of a call. Nothing else of the
/// configuration (other services' keys, the database) reaches them.
///
/// [`Config::llm_settings`](crate::Config::llm_settings) makes one from the
/// configuration; [`LlmSettings::new`] and its setters make one in code.
///
/// ```
/// use portia::llm::{LlmProvider, LlmSettings, ModelRole};
///
/// let settings = LlmSettings::new(LlmProvider::Anthropic)
///     .model(ModelRole::Planning, "openai/gpt-4.1")
///     .api_key(LlmProvider::Anthropic, "sk-ant-...");
/// assert_eq!(settings.model_for(ModelRole::Planning).provider, LlmProvider::OpenAi);
/// assert_eq!(settings.model_for(ModelRole::Execution).provider, LlmProvider::Anthropic);
/// assert!(!format!("{settings:?}").contains("sk-ant"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LlmSettings {
    provider: LlmProvider,
    models: HashMap<ModelRole, String>,
    keys: HashMap<LlmProvider, Secret>,
    base_urls: HashMap<LlmProvider, String>,
    max_tokens: u32,
    request_timeout: Duration,
    pool: crate::http::Pool,
    retry: RetryPolicy,
    fallback: Vec<String>,
    rate_limit: RateLimit,
    model_rate_limits: HashMap<ModelRef, RateLimit>,
    purpose_caps: HashMap<ModelRole, u32>,
    context_tokens: Option<u32>,
    azure_api_version: String,
    azure_bearer: bool,
    aws_credentials: Option<AwsCredentials>,
    aws_region: Option<String>,
    stream: StreamMode,
}

/// The Azure OpenAI API version sent unless another is set: the latest GA one.
const AZURE_API_VERSION: &str = "2024-10-21";

impl LlmSettings {
    /// Settings that send every call to `provider`'s default model, with no keys,
    /// the providers' public URLs, a 4,096-token completion cap, a 60 s request
    /// timeout and the default [`RetryPolicy`].
    pub fn new(provider: LlmProvider) -> Self {
        Self {
            provider,
            models: HashMap::new(),
            keys: HashMap::new(),
            base_urls: HashMap::new(),
            max_tokens: 4096,
            request_timeout: Duration::from_secs(60),
            pool: crate::http::Pool::default(),
            retry: RetryPolicy::default(),
            fallback: Vec::new(),
            rate_limit: RateLimit::default(),
            model_rate_limits: HashMap::new(),
            purpose_caps: HashMap::new(),
            context_tokens: None,
            azure_api_version: AZURE_API_VERSION.to_owned(),
            azure_bearer: false,
            aws_credentials: None,
            aws_region: None,
            stream: StreamMode::Auto,
        }
    }

    /// When a run's text replies are streamed to its subscribers (default
    /// [`StreamMode::Auto`]: while someone subscribes).
    #[must_use]
    pub fn stream(mut self, mode: StreamMode) -> Self {
        self.stream = mode;
        self
    }

    /// When a run's text replies are streamed.
    pub fn stream_mode(&self) -> StreamMode {
        self.stream
    }

    /// The `api-version` sent to Azure OpenAI (default `2024-10-21`).
    #[must_use]
    pub fn azure_api_version(mut self, version: impl Into<String>) -> Self {
        self.azure_api_version = version.into();
        self
    }

    /// Authenticates to Azure OpenAI with a Microsoft Entra ID token (sent as a
    /// bearer token) instead of the resource's `api-key`.
    #[must_use]
    pub fn azure_entra_token(mut self, token: impl Into<String>) -> Self {
        self.keys.insert(LlmProvider::AzureOpenAi, Secret::new(token));
        self.azure_bearer = true;
        self
    }

    /// The Azure `api-version`, and whether its key is an Entra bearer token.
    pub(crate) fn azure(&self) -> (&str, bool) {
        (&self.azure_api_version, self.azure_bearer)
    }

    /// The AWS credentials Bedrock requests are signed with.
    #[must_use]
    pub fn aws_credentials(mut self, credentials: AwsCredentials) -> Self {
        self.aws_credentials = Some(credentials);
        self
    }

    /// The AWS region whose Bedrock endpoint is called and signed for, such as `us-east-1`.
    #[must_use]
    pub fn aws_region(mut self, region: impl Into<String>) -> Self {
        self.aws_region = Some(region.into()).filter(|r| !r.trim().is_empty());
        self
    }

    /// The AWS credentials and region, for Bedrock.
    pub(crate) fn aws(&self) -> (Option<&AwsCredentials>, Option<&str>) {
        (self.aws_credentials.as_ref(), self.aws_region.as_deref())
    }

    /// The most tokens a reply for `role` may have, instead of [`max_tokens`](Self::max_tokens).
    #[must_use]
    pub fn max_tokens_for(mut self, role: ModelRole, max_tokens: u32) -> Self {
        self.purpose_caps.insert(role, max_tokens);
        self
    }

    /// The context window of every model, in tokens, for servers whose window is
    /// not a well-known model's (a llama.cpp or vLLM server started with its own).
    #[must_use]
    pub fn context_tokens(mut self, tokens: u32) -> Self {
        self.context_tokens = Some(tokens);
        self
    }

    /// The context window of `model`: the configured one, else a well-known model's.
    pub(crate) fn context_of(&self, model: &str) -> Option<u32> {
        self.context_tokens.or_else(|| super::caps::known_context(model))
    }

    /// The reply cap of `request` on `model`: its purpose's cap, lowered so that the
    /// estimated prompt and the reply fit the model's context window when it is known.
    pub fn completion_cap_for(&self, request: &LlmRequest, model: &str) -> u32 {
        let cap = self.purpose_caps.get(&request.purpose).copied().unwrap_or(self.max_tokens);
        let prompt = super::rate_limit::estimated_tokens(request);
        super::caps::fit(cap, self.context_of(model), prompt)
    }

    /// Limits every model to `limit` (each model has its own allowance), unless
    /// [`model_rate_limit`](Self::model_rate_limit) sets its own.
    #[must_use]
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = limit;
        self
    }

    /// Limits the model `name` (`provider/model` accepted) to `limit`.
    #[must_use]
    pub fn model_rate_limit(mut self, name: &str, limit: RateLimit) -> Self {
        let target = self.model_ref(name);
        self.model_rate_limits.insert(target, limit);
        self
    }

    /// The rate limit of the model `name` (`provider/model` accepted).
    pub fn rate_limit_for(&self, name: &str) -> RateLimit {
        self.rate_limit_for_ref(&self.model_ref(name))
    }

    pub(crate) fn rate_limit_for_ref(&self, target: &ModelRef) -> RateLimit {
        self.model_rate_limits.get(target).copied().unwrap_or(self.rate_limit)
    }

    /// Falls back on `models` (`provider/model`), in order, when the model a request
    /// goes to is unavailable after its retries (see [`Fallback`](super::Fallback)).
    #[must_use]
    pub fn fallback(mut self, models: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.fallback = super::Fallback::new(models).models().to_vec();
        self
    }

    /// The models fallen back on, in order.
    pub fn fallback_models(&self) -> &[String] {
        &self.fallback
    }

    /// Uses `name` (`provider/model` accepted) for calls made for `role`.
    #[must_use]
    pub fn model(mut self, role: ModelRole, name: impl Into<String>) -> Self {
        self.models.insert(role, name.into());
        self
    }

    /// The key sent to `provider`.
    #[must_use]
    pub fn api_key(mut self, provider: LlmProvider, key: impl Into<String>) -> Self {
        self.keys.insert(provider, Secret::new(key));
        self
    }

    /// Calls `provider` at `url` instead of its public address.
    #[must_use]
    pub fn base_url(mut self, provider: LlmProvider, url: impl Into<String>) -> Self {
        self.base_urls.insert(provider, url.into().trim_end_matches('/').to_owned());
        self
    }

    /// The most tokens a reply may have.
    #[must_use]
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    /// How long one HTTP request may take.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How many idle connections the HTTP client keeps per host (64 unless set), and
    /// for how long (30 s unless set).
    #[must_use]
    pub fn connection_pool(mut self, max_idle_per_host: usize, idle_timeout: Duration) -> Self {
        self.pool = crate::http::Pool { max_idle_per_host, idle_timeout };
        self
    }

    /// How failed calls are retried, and how long one may take in all.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The provider that serves model names without a `provider/` prefix.
    pub fn provider(&self) -> LlmProvider {
        self.provider
    }

    /// The provider and model `request` goes to: its own [`model`](LlmRequest::model)
    /// when set and not blank (`provider/model` accepted), else the one set for its
    /// purpose. The one place a request's model is decided: the built-in clients
    /// route by it and the runner prices and reports calls by it.
    ///
    /// ```
    /// use portia::llm::{LlmProvider, LlmRequest, LlmSettings, Message, ModelRole};
    ///
    /// let settings = LlmSettings::new(LlmProvider::OpenAi).model(ModelRole::Summary, "gpt-4.1-nano");
    /// let mut request = LlmRequest::new(ModelRole::Summary, vec![Message::user("Sum up")]);
    /// assert_eq!(settings.resolve(&request).model, "gpt-4.1-nano");
    /// request.model = Some("anthropic/claude-haiku-4-5".into());
    /// let target = settings.resolve(&request);
    /// assert_eq!((target.provider, target.model.as_str()), (LlmProvider::Anthropic, "claude-haiku-4-5"));
    /// ```
    pub fn resolve(&self, request: &LlmRequest) -> ModelRef {
        match request.named_model() {
            Some(name) => self.model_ref(name),
            None => self.model_for(request.purpose),
        }
    }

    /// The provider and model that serve calls made for `role`.
    pub fn model_for(&self, role: ModelRole) -> ModelRef {
        match self.models.get(&role) {
            Some(name) => self.model_ref(name),
            None => ModelRef { provider: self.provider, model: self.provider.default_model().to_owned() },
        }
    }

    /// Reads a model name: a `provider/` prefix picks the provider, otherwise the
    /// default provider serves it.
    pub fn model_ref(&self, name: &str) -> ModelRef {
        let (provider, model) = split_provider(name);
        ModelRef { provider: provider.unwrap_or(self.provider), model: model.to_owned() }
    }

    /// The key `provider` needs, or `None` for a provider that needs none.
    ///
    /// # Errors
    /// [`LlmError::MissingApiKey`] naming the environment variable to set.
    pub fn require_api_key(&self, provider: LlmProvider) -> Result<Option<&Secret>, LlmError> {
        if provider == LlmProvider::Bedrock {
            // Bedrock signs with AWS credentials rather than sending a key.
            return match self.aws_credentials {
                Some(_) => Ok(None),
                None => Err(LlmError::MissingApiKey {
                    provider: provider.to_string(),
                    env_var: super::AWS_CREDENTIAL_VARS.to_owned(),
                }),
            };
        }
        match (provider.api_key_var(), self.keys.get(&provider)) {
            (Some(var), None) => {
                Err(LlmError::MissingApiKey { provider: provider.to_string(), env_var: var.to_owned() })
            }
            (_, key) => Ok(key),
        }
    }

    pub(crate) fn key(&self, provider: LlmProvider) -> Option<Secret> {
        self.keys.get(&provider).cloned()
    }

    /// The base URL of `provider`: the configured one, else its public one (for
    /// Bedrock, its region's; none without a region).
    pub(crate) fn url(&self, provider: LlmProvider) -> String {
        match self.base_urls.get(&provider).filter(|url| !url.is_empty()) {
            Some(url) => url.clone(),
            None if provider == LlmProvider::Bedrock => {
                self.aws_region.as_deref().map(super::bedrock_url).unwrap_or_default()
            }
            None => provider.default_base_url().to_owned(),
        }
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.request_timeout
    }

    pub(crate) fn pool(&self) -> crate::http::Pool {
        self.pool
    }
}
