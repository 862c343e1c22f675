//! [`ConfigBuilder`]: a [`Config`] written in code.

use std::path::PathBuf;
use std::time::Duration;

use super::{AgentKind, Config, ExecutionMode, Secret, StorageKind};
use crate::Result;
use crate::llm::{LlmProvider, StreamMode};
use crate::logging::{LogFormat, LogLevel};

/// Builds a [`Config`] in code. Start with [`Config::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    config: Config,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty;)+) => {$(
        $(#[$doc])*
        pub fn $field(mut self, value: impl Into<$ty>) -> Self {
            self.config.$field = value.into();
            self
        }
    )+};
}

macro_rules! optional_setters {
    ($($(#[$doc:meta])* $field:ident;)+) => {$(
        $(#[$doc])*
        pub fn $field(mut self, value: impl Into<String>) -> Self {
            self.config.$field = Some(value.into());
            self
        }
    )+};
}

macro_rules! secret_setters {
    ($($(#[$doc:meta])* $field:ident;)+) => {$(
        $(#[$doc])*
        pub fn $field(mut self, value: impl Into<String>) -> Self {
            self.config.$field = Some(Secret::new(value));
            self
        }
    )+};
}

impl ConfigBuilder {
    /// A builder holding the default config.
    pub(super) fn new() -> Self {
        Self { config: Config::default() }
    }

    setters! {
        /// Sets the LLM provider.
        llm_provider: LlmProvider;
        /// Sets the storage kind.
        storage: StorageKind;
        /// Sets the disk storage directory.
        storage_dir: PathBuf;
        /// Sets the Postgres schema holding portia's tables.
        database_schema: String;
        /// Sets the most Postgres connections one store opens at once.
        database_pool_size: usize;
        /// Sets the root directory of the file tools.
        files_root: PathBuf;
        /// Sets the log level.
        log_level: LogLevel;
        /// Sets how log lines are written (text or JSON lines).
        log_format: LogFormat;
        /// Sets the execution agent.
        agent: AgentKind;
        /// Sets how steps are scheduled.
        execution: ExecutionMode;
        /// Sets how many steps may run at once.
        max_parallel_steps: usize;
        /// Sets the HTTP request timeout in seconds.
        request_timeout_secs: u64;
        /// Sets the most idle connections each HTTP client keeps open per host.
        http_max_idle_per_host: usize;
        /// Sets how long an idle HTTP connection is kept for reuse, in seconds.
        http_idle_timeout_secs: u64;
        /// Sets the overall time allowed for one LLM call, retries included, in seconds.
        llm_deadline_secs: u64;
        /// Sets when LLM replies are streamed to a run's subscribers.
        llm_stream: StreamMode;
        /// Sets how many times a failed LLM request, or a tool call safe to repeat, is sent again.
        max_retries: u32;
        /// Sets the wait before the first re-send, in milliseconds.
        retry_backoff_ms: u64;
        /// Sets how many characters of a tool output a prompt shows.
        max_output_chars: usize;
        /// Sets the most tokens an LLM may write in one reply.
        max_tokens: u32;
        /// Sets how many times the planner may try.
        planner_attempts: u32;
        /// Sets whether the final output gets an LLM summary.
        summarize_final_output: bool;
        /// Sets how long a run's lease on a workflow lasts without a heartbeat, in seconds.
        lease_ttl_secs: u64;
        /// Sets how many times a workflow whose run died may be taken over before it ends FAILED.
        max_run_attempts: u32;
        /// Sets what one workflow may spend.
        budget: crate::budget::Budget;
        /// Sets the price table used for cost and the cost budget.
        prices: crate::budget::Prices;
    }

    optional_setters! {
        /// Sets the default model (`provider/model` is accepted).
        default_model;
        /// Sets the planning model.
        planning_model;
        /// Sets the execution model.
        execution_model;
        /// Sets the summary model.
        summary_model;
        /// Sets the provider's base URL.
        llm_base_url;
        /// Sets the OpenAI base URL.
        openai_base_url;
        /// Sets the Anthropic base URL.
        anthropic_base_url;
        /// Sets the Gemini API base URL.
        gemini_base_url;
        /// Sets the Azure OpenAI resource's endpoint.
        azure_openai_endpoint;
        /// Sets the Azure OpenAI `api-version`.
        azure_openai_api_version;
        /// Sets the AWS region Bedrock is called in, such as `us-east-1`.
        aws_region;
        /// Sets the Bedrock runtime endpoint instead of the region's.
        bedrock_endpoint;
        /// Sets the Tavily base URL.
        tavily_base_url;
        /// Sets the OpenWeatherMap base URL.
        openweathermap_base_url;
    }

    secret_setters! {
        /// Sets the OpenAI API key.
        openai_api_key;
        /// Sets the key of an OpenAI-compatible server or Ollama.
        llm_api_key;
        /// Sets the Anthropic API key.
        anthropic_api_key;
        /// Sets the Mistral API key.
        mistral_api_key;
        /// Sets the Groq API key.
        groq_api_key;
        /// Sets the OpenRouter API key.
        openrouter_api_key;
        /// Sets the Gemini API key.
        gemini_api_key;
        /// Sets the Azure OpenAI resource key (sent as `api-key`).
        azure_openai_api_key;
        /// Sets a Microsoft Entra ID token for Azure OpenAI (sent as a bearer token when no key is set).
        azure_openai_ad_token;
        /// Sets the AWS access key id Bedrock requests are signed with.
        aws_access_key_id;
        /// Sets the AWS secret access key Bedrock requests are signed with.
        aws_secret_access_key;
        /// Sets the session token of temporary AWS credentials.
        aws_session_token;
        /// Sets the Tavily API key.
        tavily_api_key;
        /// Sets the OpenWeatherMap API key.
        openweathermap_api_key;
        /// Sets the Postgres URL (it may hold a password, so it is kept as a secret).
        database_url;
    }

    /// Sets the timeout of one HTTP request (at least 1 ms); it wins over `request_timeout_secs`.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        self.config.request_timeout_ms = Some(ms);
        self
    }

    /// Sets the wait before the first re-send of a failed call.
    pub fn retry_backoff(mut self, wait: Duration) -> Self {
        self.config.retry_backoff_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Sets the models (`provider/model`) to fall back on, in order, when the one a
    /// call goes to is down or overloaded after its retries (`PORTIA_LLM_FALLBACK`).
    pub fn llm_fallback(mut self, models: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.config.llm_fallback = crate::llm::Fallback::new(models).models().to_vec();
        self
    }

    /// Sets the reply cap of planning calls (`PORTIA_PLANNING_MAX_TOKENS`).
    pub fn planning_max_tokens(mut self, tokens: u32) -> Self {
        self.config.planning_max_tokens = Some(tokens);
        self
    }

    /// Sets the reply cap of step calls (`PORTIA_EXECUTION_MAX_TOKENS`).
    pub fn execution_max_tokens(mut self, tokens: u32) -> Self {
        self.config.execution_max_tokens = Some(tokens);
        self
    }

    /// Sets the reply cap of summaries (`PORTIA_SUMMARY_MAX_TOKENS`).
    pub fn summary_max_tokens(mut self, tokens: u32) -> Self {
        self.config.summary_max_tokens = Some(tokens);
        self
    }

    /// Sets the context window of the models served, in tokens (`PORTIA_LLM_CONTEXT_TOKENS`).
    pub fn llm_context_tokens(mut self, tokens: u32) -> Self {
        self.config.llm_context_tokens = Some(tokens);
        self
    }

    /// Sets the requests per minute each model may be sent (`PORTIA_LLM_RPM`).
    pub fn llm_rpm(mut self, requests: u32) -> Self {
        self.config.llm_rpm = Some(requests);
        self
    }

    /// Sets the prompt tokens per minute each model may be sent (`PORTIA_LLM_TPM`).
    pub fn llm_tpm(mut self, tokens: u32) -> Self {
        self.config.llm_tpm = Some(tokens);
        self
    }

    /// Sets the file listing MCP servers whose tools to add (`PORTIA_MCP_CONFIG`).
    pub fn mcp_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.mcp_config = Some(path.into());
        self
    }

    /// Checks and returns the config.
    ///
    /// # Errors
    /// As [`Config::validate`].
    pub fn build(self) -> Result<Config> {
        self.config.validate()?;
        Ok(self.config)
    }
}
