//! Configuration: which LLM to use, API keys, storage, logging and limits.
//!
//! Build a [`Config`] from the environment ([`Config::from_env`], which loads `.env`
//! first), from a TOML or JSON file ([`Config::from_file`]), or in code
//! ([`Config::builder`]). Every environment variable is listed in the
//! [configuration guide](crate::guide::configuration) and in
//! `.env.example`. API keys are [`Secret`]s: redacted in `Debug` and never written
//! out by [`Config::to_json`] or [`Config::to_toml`].
//!
//! The provider catalogue ([`LlmProvider`], [`ModelRole`], [`ModelRef`]) lives in
//! [`crate::llm`]; the log level and the subscriber set-up are [`LogLevel`] and [`init_logging`].

mod aws;
mod builder;
mod enums;
mod files;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::secret::Secret;
pub use builder::ConfigBuilder;
pub use enums::{AgentKind, ExecutionMode, StorageKind};
pub(crate) use files::field_names;
#[cfg(feature = "mcp")]
pub(crate) use files::{json_problem, toml_problem};

pub use crate::budget::{Budget, Price, Prices};
pub use crate::http::{OFFLINE_VAR, offline, set_offline};
pub use crate::llm::LlmProvider;
pub use crate::logging::{LogFormat, LogLevel, init_logging};
#[cfg(feature = "otel")]
pub use crate::logging::{OtlpGuard, init_otlp};

use crate::llm::{
    LlmClient, LlmSettings, ModelRef, ModelRole, RateLimit, RetryPolicy, StreamMode, provider_without_model,
    split_provider, unknown_provider,
};
use crate::{Error, Result};

/// Every setting of the SDK. Plain data: clone it, serialize it (keys are left out).
///
/// ```
/// use portia::Config;
///
/// // In code; `Config::from_env()?` reads the environment and `.env` instead, and
/// // `Config::from_file("portia.toml")?` a TOML or JSON file.
/// let config = Config::builder()
///     .default_model("anthropic/claude-sonnet-4-5")
///     .max_parallel_steps(2usize)
///     .summarize_final_output(false)
///     .build()?;
/// assert_eq!(config.max_parallel_steps, 2);
/// # Ok::<(), portia::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Config {
    /// The LLM provider (`PORTIA_LLM_PROVIDER`).
    pub llm_provider: LlmProvider,
    /// The default model (`PORTIA_LLM_MODEL`); `provider/model` also picks the provider.
    pub default_model: Option<String>,
    /// The model for planning (`PORTIA_PLANNING_MODEL`), else the default model.
    pub planning_model: Option<String>,
    /// The model for running steps (`PORTIA_EXECUTION_MODEL`), else the default model.
    pub execution_model: Option<String>,
    /// The model for summaries (`PORTIA_SUMMARY_MODEL`), else the default model.
    pub summary_model: Option<String>,
    /// Models (`provider/model`) to fall back on, in order, when the one a call goes
    /// to is down or overloaded after its retries (`PORTIA_LLM_FALLBACK`, comma-separated).
    pub llm_fallback: Vec<String>,
    /// Requests per minute each model may be sent, shared by every workflow of a
    /// runner (`PORTIA_LLM_RPM`); none by default.
    pub llm_rpm: Option<u32>,
    /// Prompt tokens per minute each model may be sent (`PORTIA_LLM_TPM`); none by default.
    pub llm_tpm: Option<u32>,
    /// Limits of particular models, by `provider/model` name, instead of the two
    /// above (config file only).
    pub llm_rate_limits: std::collections::BTreeMap<String, RateLimit>,
    /// Base URL for the provider (`PORTIA_LLM_BASE_URL`); overrides the ones below.
    pub llm_base_url: Option<String>,
    /// OpenAI API key (`OPENAI_API_KEY`); sent to OpenAI only.
    #[serde(skip_serializing)]
    pub openai_api_key: Option<Secret>,
    /// Optional key for an OpenAI-compatible server or Ollama (`PORTIA_LLM_API_KEY`).
    #[serde(skip_serializing)]
    pub llm_api_key: Option<Secret>,
    /// OpenAI base URL (`OPENAI_BASE_URL`).
    pub openai_base_url: Option<String>,
    /// Anthropic API key (`ANTHROPIC_API_KEY`).
    #[serde(skip_serializing)]
    pub anthropic_api_key: Option<Secret>,
    /// Anthropic base URL (`ANTHROPIC_BASE_URL`).
    pub anthropic_base_url: Option<String>,
    /// Mistral API key (`MISTRAL_API_KEY`).
    #[serde(skip_serializing)]
    pub mistral_api_key: Option<Secret>,
    /// Groq API key (`GROQ_API_KEY`).
    #[serde(skip_serializing)]
    pub groq_api_key: Option<Secret>,
    /// OpenRouter API key (`OPENROUTER_API_KEY`).
    #[serde(skip_serializing)]
    pub openrouter_api_key: Option<Secret>,
    /// Google Gemini API key (`GEMINI_API_KEY`).
    #[serde(skip_serializing)]
    pub gemini_api_key: Option<Secret>,
    /// Gemini API base URL (`GEMINI_BASE_URL`).
    pub gemini_base_url: Option<String>,
    /// Azure OpenAI resource key, sent as `api-key` (`AZURE_OPENAI_API_KEY`).
    #[serde(skip_serializing)]
    pub azure_openai_api_key: Option<Secret>,
    /// A Microsoft Entra ID token for Azure OpenAI, sent as a bearer token when no
    /// resource key is set (`AZURE_OPENAI_AD_TOKEN`).
    #[serde(skip_serializing)]
    pub azure_openai_ad_token: Option<Secret>,
    /// The Azure OpenAI resource's endpoint, such as `https://my-resource.openai.azure.com`
    /// (`AZURE_OPENAI_ENDPOINT`).
    pub azure_openai_endpoint: Option<String>,
    /// The Azure OpenAI `api-version` (`AZURE_OPENAI_API_VERSION`); default `2024-10-21`.
    pub azure_openai_api_version: Option<String>,
    /// AWS access key id for Bedrock (`AWS_ACCESS_KEY_ID`, else the AWS profile's).
    #[serde(skip_serializing)]
    pub aws_access_key_id: Option<Secret>,
    /// AWS secret access key for Bedrock (`AWS_SECRET_ACCESS_KEY`, else the AWS profile's).
    #[serde(skip_serializing)]
    pub aws_secret_access_key: Option<Secret>,
    /// AWS session token of temporary credentials (`AWS_SESSION_TOKEN`, else the AWS profile's).
    #[serde(skip_serializing)]
    pub aws_session_token: Option<Secret>,
    /// The AWS region Bedrock is called in (`AWS_REGION`, else `AWS_DEFAULT_REGION`,
    /// else the AWS profile's), such as `us-east-1`.
    pub aws_region: Option<String>,
    /// The Bedrock runtime endpoint (`AWS_ENDPOINT_URL_BEDROCK_RUNTIME`); default the region's.
    pub bedrock_endpoint: Option<String>,
    /// Tavily API key for the search tool (`TAVILY_API_KEY`).
    #[serde(skip_serializing)]
    pub tavily_api_key: Option<Secret>,
    /// Tavily base URL (`TAVILY_BASE_URL`).
    pub tavily_base_url: Option<String>,
    /// OpenWeatherMap API key for the weather tool (`OPENWEATHERMAP_API_KEY`).
    #[serde(skip_serializing)]
    pub openweathermap_api_key: Option<Secret>,
    /// OpenWeatherMap base URL (`OPENWEATHERMAP_BASE_URL`).
    pub openweathermap_base_url: Option<String>,
    /// Where plans and workflows are stored (`PORTIA_STORAGE`).
    pub storage: StorageKind,
    /// The directory for disk storage (`PORTIA_STORAGE_DIR`).
    pub storage_dir: PathBuf,
    /// The Postgres database for `storage = postgres` (`PORTIA_DATABASE_URL`), such as
    /// `postgres://user:password@host:5432/database?sslmode=verify-full`; a secret,
    /// since it may hold a password.
    #[serde(skip_serializing)]
    pub database_url: Option<Secret>,
    /// The Postgres schema holding portia's tables (`PORTIA_DATABASE_SCHEMA`).
    pub database_schema: String,
    /// The most Postgres connections one store opens at once (`PORTIA_DATABASE_POOL_SIZE`).
    pub database_pool_size: usize,
    /// The root directory the file tools may read and write (`PORTIA_FILES_ROOT`).
    pub files_root: PathBuf,
    /// The log level (`PORTIA_LOG_LEVEL`).
    pub log_level: LogLevel,
    /// How log lines are written: text, or JSON lines (`PORTIA_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// The execution agent (`PORTIA_AGENT`).
    pub agent: AgentKind,
    /// How steps are scheduled (`PORTIA_EXECUTION`).
    pub execution: ExecutionMode,
    /// How many steps may run at once in parallel mode (`PORTIA_MAX_PARALLEL_STEPS`).
    pub max_parallel_steps: usize,
    /// Timeout of one HTTP request, in seconds (`PORTIA_REQUEST_TIMEOUT_SECS`).
    pub request_timeout_secs: u64,
    /// Overall time allowed for one LLM call including retries, in seconds (`PORTIA_LLM_DEADLINE_SECS`).
    pub llm_deadline_secs: u64,
    /// When LLM replies are streamed to a run's subscribers (`PORTIA_LLM_STREAM`).
    pub llm_stream: StreamMode,
    /// Timeout of one HTTP request in milliseconds (`PORTIA_REQUEST_TIMEOUT_MS`); when
    /// set it wins over `request_timeout_secs`.
    pub request_timeout_ms: Option<u64>,
    /// The most idle connections each HTTP client (the LLM providers', each web
    /// tool's) keeps open per host for reuse (`PORTIA_HTTP_MAX_IDLE_PER_HOST`). Set it
    /// near the number of calls you keep in flight: a call that finds no idle
    /// connection opens a new one (and a TLS session), and every idle one holds a file
    /// descriptor until `http_idle_timeout_secs` passes. By default a sixteenth of the
    /// process's limit on open files (`ulimit -n`), at least 64 and at most 512.
    pub http_max_idle_per_host: usize,
    /// How long an idle HTTP connection is kept for reuse, in seconds
    /// (`PORTIA_HTTP_IDLE_TIMEOUT_SECS`).
    pub http_idle_timeout_secs: u64,
    /// How many times a failed LLM request, or a tool call that failed on the
    /// service's side and is safe to repeat, is sent again (`PORTIA_MAX_RETRIES`).
    pub max_retries: u32,
    /// The wait before the first re-send, in milliseconds; each later one doubles it,
    /// up to 30 s (`PORTIA_RETRY_BACKOFF_MS`).
    pub retry_backoff_ms: u64,
    /// Tool outputs longer than this many characters are stored whole but clipped,
    /// with a note saying so, in every prompt (`PORTIA_MAX_OUTPUT_CHARS`).
    pub max_output_chars: usize,
    /// The most tokens an LLM may write in one reply (`PORTIA_MAX_TOKENS`).
    pub max_tokens: u32,
    /// The reply cap of planning calls (`PORTIA_PLANNING_MAX_TOKENS`), else `max_tokens`.
    pub planning_max_tokens: Option<u32>,
    /// The reply cap of step calls (`PORTIA_EXECUTION_MAX_TOKENS`), else `max_tokens`.
    pub execution_max_tokens: Option<u32>,
    /// The reply cap of summaries (`PORTIA_SUMMARY_MAX_TOKENS`), else `max_tokens` up to 2,048.
    pub summary_max_tokens: Option<u32>,
    /// The context window of the models served, in tokens (`PORTIA_LLM_CONTEXT_TOKENS`),
    /// for a server whose window is not a well-known model's: reply caps are lowered
    /// so that prompt and reply fit it.
    pub llm_context_tokens: Option<u32>,
    /// How many times the planner may try to produce a valid plan (`PORTIA_PLANNER_ATTEMPTS`).
    pub planner_attempts: u32,
    /// Whether the final output gets an LLM summary (`PORTIA_SUMMARIZE`).
    pub summarize_final_output: bool,
    /// How long a run's lease on a workflow lasts without a heartbeat before another
    /// process may take the workflow over, in seconds (`PORTIA_LEASE_TTL_SECS`).
    pub lease_ttl_secs: u64,
    /// How many times a workflow whose run died (its lease expired) may be taken over
    /// before it ends `FAILED` (`PORTIA_MAX_RUN_ATTEMPTS`).
    pub max_run_attempts: u32,
    /// What one workflow may spend (`PORTIA_BUDGET_*`); no limit by default.
    pub budget: Budget,
    /// What each model costs, for `usage` and the cost budget (config file only).
    pub prices: Prices,
    /// A file listing MCP servers whose tools to add (`PORTIA_MCP_CONFIG`): an
    /// `mcpServers` object as Claude Desktop writes it, or a TOML file with an
    /// `[mcpServers.NAME]` table. Read by `tools::default_tool_registry_with_mcp`
    /// (feature `mcp`).
    pub mcp_config: Option<PathBuf>,
    /// The variables read from `.env` by [`Config::from_env`]: kept here, not put
    /// into the process environment. Never serialized; `Debug` shows names only.
    #[serde(skip)]
    dotenv: DotEnv,
}

/// Variables read from a dotenv file, as secrets.
#[derive(Clone, Default, PartialEq)]
struct DotEnv(std::sync::Arc<std::collections::BTreeMap<String, Secret>>);

impl fmt::Debug for DotEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            llm_provider: LlmProvider::OpenAi,
            default_model: None,
            planning_model: None,
            execution_model: None,
            summary_model: None,
            llm_fallback: Vec::new(),
            llm_rpm: None,
            llm_tpm: None,
            llm_rate_limits: std::collections::BTreeMap::new(),
            llm_base_url: None,
            openai_api_key: None,
            llm_api_key: None,
            openai_base_url: None,
            anthropic_api_key: None,
            anthropic_base_url: None,
            mistral_api_key: None,
            groq_api_key: None,
            openrouter_api_key: None,
            gemini_api_key: None,
            gemini_base_url: None,
            azure_openai_api_key: None,
            azure_openai_ad_token: None,
            aws_access_key_id: None,
            aws_secret_access_key: None,
            aws_session_token: None,
            aws_region: None,
            bedrock_endpoint: None,
            azure_openai_endpoint: None,
            azure_openai_api_version: None,
            tavily_api_key: None,
            tavily_base_url: None,
            openweathermap_api_key: None,
            openweathermap_base_url: None,
            storage: StorageKind::Memory,
            storage_dir: PathBuf::from(".portia"),
            database_url: None,
            database_schema: "portia".to_owned(),
            database_pool_size: 16,
            files_root: PathBuf::from("."),
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            agent: AgentKind::OneShot,
            execution: ExecutionMode::Parallel,
            max_parallel_steps: 4,
            request_timeout_secs: 60,
            llm_deadline_secs: 300,
            llm_stream: StreamMode::Auto,
            request_timeout_ms: None,
            http_max_idle_per_host: crate::http::default_max_idle_per_host(),
            http_idle_timeout_secs: crate::http::DEFAULT_IDLE_TIMEOUT.as_secs(),
            max_retries: DEFAULT_MAX_RETRIES,
            retry_backoff_ms: 500,
            max_output_chars: 20_000,
            max_tokens: 8192,
            planning_max_tokens: None,
            execution_max_tokens: None,
            summary_max_tokens: None,
            llm_context_tokens: None,
            planner_attempts: 3,
            summarize_final_output: true,
            lease_ttl_secs: 30,
            max_run_attempts: 3,
            budget: Budget::default(),
            prices: Prices::default(),
            mcp_config: None,
            dotenv: DotEnv::default(),
        }
    }
}

/// Re-sends of a failed call by default. Six (seven tries) because a provider or an
/// API failing 30% of calls in a bad hour leaves 0.3^7 ≈ 0.02% of calls failing
/// after seven tries, against 0.8% after four: a workflow of five calls then
/// completes 99.9% of the time instead of 96%.
pub const DEFAULT_MAX_RETRIES: u32 = 6;

/// The longest any duration setting may be: far beyond any sensible timeout, lease
/// or budget, and far short of what overflows a clock.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The reply cap of summaries unless configured: a summary is short, and a smaller
/// cap leaves more of a small context window to the prompt.
const DEFAULT_SUMMARY_MAX_TOKENS: u32 = 2048;

/// Reads a setting from a source of variables, treating empty values as unset.
struct Vars<F>(F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn secret(&self, name: &str) -> Option<Secret> {
        self.get(name).map(Secret::new)
    }

    fn parse<T: FromStr>(&self, name: &str) -> Result<Option<T>>
    where
        T::Err: fmt::Display,
    {
        self.get(name)
            .map(|v| v.parse::<T>().map_err(|e| Error::invalid_config(name, format!("{v:?}: {e}"))))
            .transpose()
    }
}

impl Config {
    /// Starts a config in code from the defaults. It reads no environment: keys
    /// come from its setters ([`ConfigBuilder::openai_api_key`] and the like), so a
    /// [`Error::MissingApiKey`] naming a variable that is set means the key was not
    /// given here; [`Config::from_env`] reads the variables.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::new()
    }

    /// Reads the process environment, and `.env` in the working directory if there is
    /// one, for what the environment does not set. See [`Config::from_env_and_file`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the variable when a value is not valid, or when
    /// `.env` cannot be parsed.
    pub fn from_env() -> Result<Self> {
        Self::from_env_and_file(".env")
    }

    /// Reads the process environment, and the dotenv file at `path` (if it exists)
    /// for the variables the environment does not set.
    ///
    /// The file's values go into the configuration only: they are not put into the
    /// process environment, where any code of the process could read them. An
    /// in-process tool can still read the real environment, so keep keys out of it
    /// (in `.env`, or in a config file) rather than exporting them. [`Config::var`]
    /// reads a variable the same way, for the settings that are read elsewhere (an
    /// MCP config's `${VAR}`); `PORTIA_OFFLINE` in the file turns offline mode on.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the variable when a value is not valid, or the
    /// file when it cannot be parsed.
    pub fn from_env_and_file(path: impl AsRef<Path>) -> Result<Self> {
        let file = files::read_dotenv(path.as_ref())?;
        let lookup = |name: &str| std::env::var(name).ok().or_else(|| file.get(name).map(|v| v.expose().to_owned()));
        let mut config = Self::from_vars(lookup)?;
        if std::env::var_os(crate::http::OFFLINE_VAR).is_none()
            && file.get(crate::http::OFFLINE_VAR).is_some_and(|v| !matches!(v.expose().trim(), "" | "0"))
        {
            crate::http::set_offline(true);
        }
        config.dotenv = DotEnv(std::sync::Arc::new(file));
        Ok(config)
    }

    /// The variable `name` as this configuration was read: the process environment's
    /// value, else the one `.env` gave [`Config::from_env`].
    pub fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().or_else(|| self.dotenv.0.get(name).map(|v| v.expose().to_owned()))
    }

    /// Like [`Config::from_env`], but reads variables from `lookup` instead of the
    /// process environment (and does not load `.env`). Handy in tests.
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut config = Config::default();
        config.apply_vars(&Vars(lookup))?;
        config.validate()?;
        Ok(config)
    }

    fn apply_vars<F: Fn(&str) -> Option<String>>(&mut self, vars: &Vars<F>) -> Result<()> {
        self.fill_secrets(vars);
        let urls = [
            ("PORTIA_LLM_BASE_URL", &mut self.llm_base_url),
            ("OPENAI_BASE_URL", &mut self.openai_base_url),
            ("ANTHROPIC_BASE_URL", &mut self.anthropic_base_url),
            ("GEMINI_BASE_URL", &mut self.gemini_base_url),
            ("AZURE_OPENAI_ENDPOINT", &mut self.azure_openai_endpoint),
            ("AZURE_OPENAI_API_VERSION", &mut self.azure_openai_api_version),
            ("TAVILY_BASE_URL", &mut self.tavily_base_url),
            ("OPENWEATHERMAP_BASE_URL", &mut self.openweathermap_base_url),
            ("PORTIA_LLM_MODEL", &mut self.default_model),
            ("PORTIA_PLANNING_MODEL", &mut self.planning_model),
            ("PORTIA_EXECUTION_MODEL", &mut self.execution_model),
            ("PORTIA_SUMMARY_MODEL", &mut self.summary_model),
        ];
        for (name, field) in urls {
            if let Some(value) = vars.get(name) {
                *field = Some(value);
            }
        }
        if let Some(list) = vars.get("PORTIA_LLM_FALLBACK") {
            self.llm_fallback = list.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect();
        }
        self.llm_provider = match vars.parse("PORTIA_LLM_PROVIDER")? {
            Some(provider) => provider,
            None => self.inferred_provider(),
        };
        self.fill_aws(&|name| vars.get(name))?;
        if vars.get("PORTIA_STORAGE").is_some_and(|v| ["disk", "file"].contains(&v.trim().to_lowercase().as_str())) {
            return Err(Error::invalid_config(
                "PORTIA_STORAGE",
                "the JSON-file store was retired (it could not keep two processes from running one workflow): \
                 set PORTIA_STORAGE=sqlite, and move old files over once with portia::storage::import_json_dir",
            ));
        }
        set(&mut self.storage, vars.parse("PORTIA_STORAGE")?);
        set(&mut self.storage_dir, vars.get("PORTIA_STORAGE_DIR").map(PathBuf::from));
        set(&mut self.database_schema, vars.get("PORTIA_DATABASE_SCHEMA"));
        set(&mut self.database_pool_size, vars.parse("PORTIA_DATABASE_POOL_SIZE")?);
        set(&mut self.files_root, vars.get("PORTIA_FILES_ROOT").map(PathBuf::from));
        set(&mut self.log_level, vars.parse("PORTIA_LOG_LEVEL")?);
        set(&mut self.log_format, vars.parse("PORTIA_LOG_FORMAT")?);
        set(&mut self.agent, vars.parse("PORTIA_AGENT")?);
        set(&mut self.execution, vars.parse("PORTIA_EXECUTION")?);
        set(&mut self.max_parallel_steps, vars.parse("PORTIA_MAX_PARALLEL_STEPS")?);
        set(&mut self.request_timeout_secs, vars.parse("PORTIA_REQUEST_TIMEOUT_SECS")?);
        set(&mut self.llm_deadline_secs, vars.parse("PORTIA_LLM_DEADLINE_SECS")?);
        set(&mut self.llm_stream, vars.parse("PORTIA_LLM_STREAM")?);
        set(&mut self.max_retries, vars.parse("PORTIA_MAX_RETRIES")?);
        self.request_timeout_ms = vars.parse("PORTIA_REQUEST_TIMEOUT_MS")?.or(self.request_timeout_ms);
        set(&mut self.http_max_idle_per_host, vars.parse("PORTIA_HTTP_MAX_IDLE_PER_HOST")?);
        set(&mut self.http_idle_timeout_secs, vars.parse("PORTIA_HTTP_IDLE_TIMEOUT_SECS")?);
        set(&mut self.retry_backoff_ms, vars.parse("PORTIA_RETRY_BACKOFF_MS")?);
        set(&mut self.max_output_chars, vars.parse("PORTIA_MAX_OUTPUT_CHARS")?);
        set(&mut self.max_tokens, vars.parse("PORTIA_MAX_TOKENS")?);
        self.planning_max_tokens = vars.parse("PORTIA_PLANNING_MAX_TOKENS")?.or(self.planning_max_tokens);
        self.execution_max_tokens = vars.parse("PORTIA_EXECUTION_MAX_TOKENS")?.or(self.execution_max_tokens);
        self.summary_max_tokens = vars.parse("PORTIA_SUMMARY_MAX_TOKENS")?.or(self.summary_max_tokens);
        self.llm_context_tokens = vars.parse("PORTIA_LLM_CONTEXT_TOKENS")?.or(self.llm_context_tokens);
        self.llm_rpm = vars.parse("PORTIA_LLM_RPM")?.or(self.llm_rpm);
        self.llm_tpm = vars.parse("PORTIA_LLM_TPM")?.or(self.llm_tpm);
        set(&mut self.planner_attempts, vars.parse("PORTIA_PLANNER_ATTEMPTS")?);
        set(&mut self.summarize_final_output, vars.parse("PORTIA_SUMMARIZE")?);
        set(&mut self.lease_ttl_secs, vars.parse("PORTIA_LEASE_TTL_SECS")?);
        set(&mut self.max_run_attempts, vars.parse("PORTIA_MAX_RUN_ATTEMPTS")?);
        self.budget.llm_calls = vars.parse("PORTIA_BUDGET_LLM_CALLS")?.or(self.budget.llm_calls);
        self.budget.tokens = vars.parse("PORTIA_BUDGET_TOKENS")?.or(self.budget.tokens);
        self.budget.seconds = vars.parse("PORTIA_BUDGET_SECONDS")?.or(self.budget.seconds);
        self.budget.usd = vars.parse("PORTIA_BUDGET_USD")?.or(self.budget.usd);
        if let Some(path) = vars.get("PORTIA_MCP_CONFIG") {
            self.mcp_config = Some(PathBuf::from(path));
        }
        Ok(())
    }

    /// Fills every API key the config does not have yet from `vars`.
    fn fill_secrets<F: Fn(&str) -> Option<String>>(&mut self, vars: &Vars<F>) {
        let secrets = [
            ("OPENAI_API_KEY", &mut self.openai_api_key),
            ("PORTIA_LLM_API_KEY", &mut self.llm_api_key),
            ("ANTHROPIC_API_KEY", &mut self.anthropic_api_key),
            ("MISTRAL_API_KEY", &mut self.mistral_api_key),
            ("GROQ_API_KEY", &mut self.groq_api_key),
            ("OPENROUTER_API_KEY", &mut self.openrouter_api_key),
            ("GEMINI_API_KEY", &mut self.gemini_api_key),
            ("AZURE_OPENAI_API_KEY", &mut self.azure_openai_api_key),
            ("AZURE_OPENAI_AD_TOKEN", &mut self.azure_openai_ad_token),
            ("AWS_ACCESS_KEY_ID", &mut self.aws_access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &mut self.aws_secret_access_key),
            ("AWS_SESSION_TOKEN", &mut self.aws_session_token),
            ("TAVILY_API_KEY", &mut self.tavily_api_key),
            ("OPENWEATHERMAP_API_KEY", &mut self.openweathermap_api_key),
            ("PORTIA_DATABASE_URL", &mut self.database_url),
        ];
        for (name, field) in secrets {
            if field.is_none() {
                *field = vars.secret(name);
            }
        }
    }

    /// The provider when none is set: the one a `provider/model` default model names,
    /// else the first whose key is present (OpenAI, Anthropic, Mistral, Gemini), else OpenAI.
    fn inferred_provider(&self) -> LlmProvider {
        if let Some(provider) = self.default_model.as_deref().and_then(|m| split_provider(m).0) {
            return provider;
        }
        [LlmProvider::OpenAi, LlmProvider::Anthropic, LlmProvider::Mistral, LlmProvider::Gemini]
            .into_iter()
            .find(|p| self.api_key(*p).is_some())
            .unwrap_or(LlmProvider::OpenAi)
    }

    /// Reads a config file: TOML if the name ends in `.toml`, otherwise JSON.
    ///
    /// Settings missing from the file keep their defaults; API keys missing from the
    /// file are read from the environment, since [`Config::to_json`] never writes them.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the file when it cannot be read or parsed, or
    /// when it has a key that no setting takes (a misspelt one, say): each such key
    /// is named, nested ones by their path (`budget.llm_call`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let setting = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::invalid_config(&setting, e.to_string()))?;
        let mut config: Config =
            files::read_settings(&text, is_toml(path)).map_err(|problem| Error::invalid_config(&setting, problem))?;
        let env = Vars(|name: &str| std::env::var(name).ok());
        config.fill_secrets(&env);
        config.fill_aws(&|name| env.get(name))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the environment and `.env` as [`Config::from_env`] does, then the
    /// settings file at `path` (as [`Config::from_file`] reads it) over them: what
    /// the file sets wins, setting by setting (a table such as `[budget]` or
    /// `[prices]` entry by entry, each entry whole), and what it leaves out comes
    /// from the environment. This is how the `portia` command line reads
    /// `--config FILE`.
    ///
    /// # Errors
    /// As [`Config::from_env`] and [`Config::from_file`].
    pub fn from_env_under_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_env()?.under_file(path.as_ref())
    }

    /// This configuration with the settings file at `path` over it.
    fn under_file(self, path: &Path) -> Result<Self> {
        let setting = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::invalid_config(&setting, e.to_string()))?;
        // Read as settings first, for its errors (a misspelt key is named, not
        // ignored); then as JSON, for what it names and nothing it leaves out.
        let _: Config = files::read_settings(&text, is_toml(path)).map_err(|p| Error::invalid_config(&setting, p))?;
        let named: Value =
            files::read_settings(&text, is_toml(path)).map_err(|p| Error::invalid_config(&setting, p))?;
        let env = self;
        let mut merged = serde_json::to_value(&env).expect("a Config always serializes");
        overlay(&mut merged, named);
        let mut config: Config =
            serde_json::from_value(merged).map_err(|e| Error::invalid_config(&setting, e.to_string()))?;
        // Keys are never serialized: those the file leaves out come from where `env` read them.
        let vars = Vars(|name: &str| env.var(name));
        config.fill_secrets(&vars);
        config.fill_aws(&|name| vars.get(name))?;
        config.dotenv = env.dotenv;
        config.validate()?;
        Ok(config)
    }

    /// Writes the config as pretty JSON. API keys are left out.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a Config always serializes")
    }

    /// Writes the config as TOML. API keys are left out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serializes")
    }

    /// Writes the config to `path` (TOML if it ends in `.toml`, otherwise JSON), so
    /// that [`Config::from_file`] reads it back.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the file when it cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = if is_toml(path) { self.to_toml() } else { self.to_json() };
        std::fs::write(path, text).map_err(|e| Error::invalid_config(path.display().to_string(), e.to_string()))
    }

    /// Checks the settings that do not depend on what will be used.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting and the fix.
    pub fn validate(&self) -> Result<()> {
        if self.max_parallel_steps == 0 {
            return Err(Error::invalid_config("max_parallel_steps", "must be at least 1 (PORTIA_MAX_PARALLEL_STEPS)"));
        }
        if self.request_timeout_secs == 0 {
            return Err(Error::invalid_config("request_timeout_secs", "must be at least 1 second"));
        }
        if self.planner_attempts == 0 {
            return Err(Error::invalid_config("planner_attempts", "must be at least 1"));
        }
        if self.lease_ttl_secs == 0 {
            return Err(Error::invalid_config(
                "lease_ttl_secs",
                "must be at least 1 second: set PORTIA_LEASE_TTL_SECS to 1 or more (default 30)",
            ));
        }
        if self.max_run_attempts == 0 {
            return Err(Error::invalid_config(
                "max_run_attempts",
                "must be at least 1: set PORTIA_MAX_RUN_ATTEMPTS to 1 or more (default 3)",
            ));
        }
        if self.storage == StorageKind::Sqlite && self.storage_dir.as_os_str().is_empty() {
            return Err(Error::invalid_config(
                "storage_dir",
                "SQLite storage needs a directory: set PORTIA_STORAGE_DIR",
            ));
        }
        self.validate_postgres()?;
        self.validate_durations()?;
        self.validate_budget()?;
        self.validate_rate_limits()?;
        self.validate_secrets()?;
        self.validate_urls()?;
        let models = [&self.default_model, &self.planning_model, &self.execution_model, &self.summary_model];
        if models.iter().any(|m| m.as_deref().is_some_and(|m| split_provider(m).1.trim().is_empty())) {
            return Err(Error::invalid_config("model", "a model name is empty; give a name such as gpt-4.1-mini"));
        }
        self.validate_model_names()
    }

    /// Checks that no duration is beyond [`MAX_DURATION`]: a timer that far off
    /// overflows the clock (a panic in a runtime worker) rather than waiting.
    fn validate_durations(&self) -> Result<()> {
        let max_secs = MAX_DURATION.as_secs();
        let seconds = [
            ("PORTIA_REQUEST_TIMEOUT_SECS", Some(self.request_timeout_secs)),
            ("PORTIA_LLM_DEADLINE_SECS", Some(self.llm_deadline_secs)),
            ("PORTIA_HTTP_IDLE_TIMEOUT_SECS", Some(self.http_idle_timeout_secs)),
            ("PORTIA_LEASE_TTL_SECS", Some(self.lease_ttl_secs)),
            ("PORTIA_BUDGET_SECONDS", self.budget.seconds),
        ];
        let millis = [
            ("PORTIA_REQUEST_TIMEOUT_MS", self.request_timeout_ms),
            ("PORTIA_RETRY_BACKOFF_MS", Some(self.retry_backoff_ms)),
        ];
        let too_long = seconds
            .into_iter()
            .filter_map(|(var, secs)| Some((var, secs?, max_secs, "seconds")))
            .chain(millis.into_iter().filter_map(|(var, ms)| Some((var, ms?, max_secs * 1000, "milliseconds"))))
            .find(|(_, value, max, _)| value > max);
        match too_long {
            Some((var, value, max, unit)) => Err(Error::invalid_config(
                var,
                format!("{value} {unit} is more than the {max} (7 days) a duration may be: set {var} lower"),
            )),
            None => Ok(()),
        }
    }

    /// Checks that a cost budget is a number of dollars above zero, and that no
    /// other limit is zero: many tools read 0 as "no limit", where here it would
    /// stop every workflow at once.
    fn validate_budget(&self) -> Result<()> {
        if let Some(usd) = self.budget.usd.filter(|usd| !(usd.is_finite() && *usd > 0.0)) {
            return Err(Error::invalid_config(
                "PORTIA_BUDGET_USD",
                format!(
                    "{usd} is no cost budget: give a number of US dollars above 0, such as 0.50, or leave it unset"
                ),
            ));
        }
        let limits = [
            ("PORTIA_BUDGET_LLM_CALLS", self.budget.llm_calls.map(u64::from)),
            ("PORTIA_BUDGET_TOKENS", self.budget.tokens),
            ("PORTIA_BUDGET_SECONDS", self.budget.seconds),
        ];
        match limits.into_iter().find(|(_, limit)| *limit == Some(0)) {
            Some((setting, _)) => Err(Error::invalid_config(
                setting,
                "0 would stop every workflow before it starts: give a limit above 0, or leave it unset for no limit",
            )),
            None => Ok(()),
        }
    }

    /// Checks that no rate limit is zero: the limiter reads 0 as no limit, where
    /// "none a minute" would stop every call.
    fn validate_rate_limits(&self) -> Result<()> {
        let global = [("PORTIA_LLM_RPM", self.llm_rpm), ("PORTIA_LLM_TPM", self.llm_tpm)];
        let zero = global.into_iter().find(|(_, limit)| *limit == Some(0)).map(|(var, _)| var.to_owned());
        let zero = zero.or_else(|| {
            self.llm_rate_limits.iter().find_map(|(model, limit)| {
                let zero = limit.requests_per_minute == Some(0) || limit.tokens_per_minute == Some(0);
                zero.then(|| format!("llm_rate_limits.{model:?}"))
            })
        });
        match zero {
            Some(setting) => Err(Error::invalid_config(
                setting,
                "0 a minute would stop every LLM call: give a limit above 0, or leave it unset for no limit",
            )),
            None => Ok(()),
        }
    }

    /// Checks that no key holds a control character (a newline, a `\x01`): HTTP
    /// headers cannot carry one, and the error would come at the first call, naming
    /// a header rather than the variable. The value is never shown.
    fn validate_secrets(&self) -> Result<()> {
        let bad = self
            .secrets()
            .into_iter()
            .find(|(_, secret)| secret.is_some_and(|s| s.expose().contains(char::is_control)));
        match bad {
            Some((var, _)) => Err(Error::invalid_config(
                var,
                "the value holds a control character (such as a newline or \\x01), which HTTP cannot carry: \
                 set it again without it (the value is not shown)",
            )),
            None => Ok(()),
        }
    }

    /// Every secret with the variable that gives it.
    fn secrets(&self) -> [(&'static str, Option<&Secret>); 15] {
        [
            ("OPENAI_API_KEY", self.openai_api_key.as_ref()),
            ("PORTIA_LLM_API_KEY", self.llm_api_key.as_ref()),
            ("ANTHROPIC_API_KEY", self.anthropic_api_key.as_ref()),
            ("MISTRAL_API_KEY", self.mistral_api_key.as_ref()),
            ("GROQ_API_KEY", self.groq_api_key.as_ref()),
            ("OPENROUTER_API_KEY", self.openrouter_api_key.as_ref()),
            ("GEMINI_API_KEY", self.gemini_api_key.as_ref()),
            ("AZURE_OPENAI_API_KEY", self.azure_openai_api_key.as_ref()),
            ("AZURE_OPENAI_AD_TOKEN", self.azure_openai_ad_token.as_ref()),
            ("AWS_ACCESS_KEY_ID", self.aws_access_key_id.as_ref()),
            ("AWS_SECRET_ACCESS_KEY", self.aws_secret_access_key.as_ref()),
            ("AWS_SESSION_TOKEN", self.aws_session_token.as_ref()),
            ("TAVILY_API_KEY", self.tavily_api_key.as_ref()),
            ("OPENWEATHERMAP_API_KEY", self.openweathermap_api_key.as_ref()),
            ("PORTIA_DATABASE_URL", self.database_url.as_ref()),
        ]
    }

    /// Checks that every model name's `provider/` prefix names a known provider, and
    /// that none is a provider's name alone, unless `PORTIA_LLM_BASE_URL` points
    /// at a server (a proxy, say) whose model names are its own.
    fn validate_model_names(&self) -> Result<()> {
        let named = [
            ("PORTIA_LLM_MODEL", &self.default_model),
            ("PORTIA_PLANNING_MODEL", &self.planning_model),
            ("PORTIA_EXECUTION_MODEL", &self.execution_model),
            ("PORTIA_SUMMARY_MODEL", &self.summary_model),
        ];
        let fallbacks = self.llm_fallback.iter().map(|name| ("PORTIA_LLM_FALLBACK", Some(name)));
        let names = named.into_iter().map(|(var, name)| (var, name.as_ref())).chain(fallbacks);
        for (var, name) in names.filter_map(|(var, name)| Some((var, name?))) {
            let bare = || provider_without_model(self.llm_provider, name).filter(|_| self.llm_base_url.is_none());
            if let Some(problem) = unknown_provider(self.llm_provider, name).or_else(bare) {
                return Err(Error::invalid_config(var, problem));
            }
        }
        for name in &self.llm_fallback {
            if split_provider(name).1.trim().is_empty() {
                return Err(Error::invalid_config(
                    "PORTIA_LLM_FALLBACK",
                    format!("{name:?} names no model; write provider/model, such as anthropic/claude-haiku-4-5"),
                ));
            }
        }
        Ok(())
    }

    /// Checks that every base URL set is an absolute `http` or `https` URL without a
    /// query or fragment (paths are added after it), naming the variable of one that
    /// is not (rather than the HTTP client's words at call time). The URL is shown
    /// masked ([`crate::http::shown_url`]): it may hold a password or a key.
    fn validate_urls(&self) -> Result<()> {
        let urls = [
            ("PORTIA_LLM_BASE_URL", &self.llm_base_url),
            ("OPENAI_BASE_URL", &self.openai_base_url),
            ("ANTHROPIC_BASE_URL", &self.anthropic_base_url),
            ("GEMINI_BASE_URL", &self.gemini_base_url),
            ("AZURE_OPENAI_ENDPOINT", &self.azure_openai_endpoint),
            ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", &self.bedrock_endpoint),
            ("TAVILY_BASE_URL", &self.tavily_base_url),
            ("OPENWEATHERMAP_BASE_URL", &self.openweathermap_base_url),
        ];
        for (var, url) in urls {
            let Some(url) = url else { continue };
            let shown = crate::http::shown_url(url);
            let fix = "give one such as https://host/v1";
            let problem = match reqwest::Url::parse(url) {
                Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => {
                    format!("{shown:?} is not an http or https URL: {fix}")
                }
                Ok(parsed) if parsed.host_str().is_none() => format!("{shown:?} names no host: {fix}"),
                Ok(parsed) if parsed.query().is_some() || parsed.fragment().is_some() => format!(
                    "{shown:?} has a query string or fragment, which a base URL cannot take (paths are added \
                     after it): remove what follows `?` or `#`"
                ),
                Ok(_) => continue,
                Err(e) => format!("{shown:?} is not a URL ({e}): {fix}"),
            };
            return Err(Error::invalid_config(var, problem));
        }
        Ok(())
    }

    /// Checks the Postgres settings when Postgres is chosen.
    fn validate_postgres(&self) -> Result<()> {
        if self.storage != StorageKind::Postgres {
            return Ok(());
        }
        if self.database_url.is_none() {
            return Err(Error::invalid_config(
                "PORTIA_DATABASE_URL",
                "PORTIA_STORAGE=postgres needs a database: set PORTIA_DATABASE_URL=postgres://user:password@host:5432/database",
            ));
        }
        if self.database_pool_size == 0 {
            return Err(Error::invalid_config(
                "PORTIA_DATABASE_POOL_SIZE",
                "must be at least 1: set PORTIA_DATABASE_POOL_SIZE to 1 or more (default 16)",
            ));
        }
        Ok(())
    }

    /// The API key configured for `provider`, if any (none for Bedrock, whose
    /// requests are signed with the `aws_*` credentials instead).
    pub fn api_key(&self, provider: LlmProvider) -> Option<&Secret> {
        match provider {
            LlmProvider::OpenAi => self.openai_api_key.as_ref(),
            // Never OpenAI's key: it must not travel to another server.
            LlmProvider::OpenAiCompatible | LlmProvider::Ollama => self.llm_api_key.as_ref(),
            LlmProvider::Anthropic => self.anthropic_api_key.as_ref(),
            LlmProvider::Mistral => self.mistral_api_key.as_ref(),
            LlmProvider::Groq => self.groq_api_key.as_ref(),
            LlmProvider::OpenRouter => self.openrouter_api_key.as_ref(),
            LlmProvider::Gemini => self.gemini_api_key.as_ref(),
            LlmProvider::AzureOpenAi => self.azure_openai_api_key.as_ref().or(self.azure_openai_ad_token.as_ref()),
            LlmProvider::Bedrock => None,
        }
    }

    /// The API key `provider` needs.
    ///
    /// # Errors
    /// [`Error::MissingApiKey`] naming the environment variable to set.
    pub fn require_api_key(&self, provider: LlmProvider) -> Result<Option<&Secret>> {
        if provider == LlmProvider::Bedrock {
            return self.require_aws().map(|()| None);
        }
        match (provider.api_key_var(), self.api_key(provider)) {
            (Some(var), None) => Err(Error::MissingApiKey { service: provider.to_string(), env_var: var.to_owned() }),
            (_, key) => Ok(key),
        }
    }

    /// The base URL to call `provider` at.
    pub fn base_url(&self, provider: LlmProvider) -> String {
        let configured = match provider {
            LlmProvider::OpenAi | LlmProvider::OpenAiCompatible => self.openai_base_url.as_ref(),
            LlmProvider::Anthropic => self.anthropic_base_url.as_ref(),
            LlmProvider::Gemini => self.gemini_base_url.as_ref(),
            LlmProvider::AzureOpenAi => self.azure_openai_endpoint.as_ref(),
            LlmProvider::Bedrock => self.bedrock_endpoint.as_ref(),
            _ => None,
        };
        let url = if provider == self.llm_provider { self.llm_base_url.as_ref().or(configured) } else { configured };
        match url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            // Bedrock's public endpoint is its region's.
            None if provider == LlmProvider::Bedrock => {
                self.aws_region.as_deref().map(crate::llm::bedrock_url).unwrap_or_default()
            }
            None => provider.default_base_url().to_owned(),
        }
    }

    /// The provider and model to use for `role`, as [`Config::llm_settings`] resolves it.
    pub fn model_for(&self, role: ModelRole) -> ModelRef {
        // Only the names are needed, not every key and URL that llm_settings copies.
        let settings = LlmSettings::new(self.llm_provider);
        match self.model_name(role) {
            Some(name) => settings.model_ref(name),
            None => settings.model_for(role),
        }
    }

    /// The model name configured for `role`: its own setting, else `default_model`.
    fn model_name(&self, role: ModelRole) -> Option<&str> {
        let specific = match role {
            ModelRole::Planning => &self.planning_model,
            ModelRole::Execution => &self.execution_model,
            ModelRole::Summary => &self.summary_model,
        };
        specific.as_deref().or(self.default_model.as_deref())
    }

    /// What the LLM clients need of this configuration: the models, each provider's
    /// key and URL, the fallback models, the completion cap, the timeouts and the retry policy.
    pub fn llm_settings(&self) -> LlmSettings {
        let mut settings = LlmSettings::new(self.llm_provider)
            .fallback(self.llm_fallback.iter().cloned())
            .rate_limit(RateLimit { requests_per_minute: self.llm_rpm, tokens_per_minute: self.llm_tpm })
            .max_tokens(self.max_tokens)
            .request_timeout(self.request_timeout())
            .connection_pool(self.http_max_idle_per_host, self.http_idle_timeout())
            .retry(self.llm_retry_policy())
            .stream(self.llm_stream);
        for role in [ModelRole::Planning, ModelRole::Execution, ModelRole::Summary] {
            if let Some(name) = self.model_name(role) {
                settings = settings.model(role, name);
            }
        }
        let summary_cap = self.summary_max_tokens.unwrap_or(self.max_tokens.min(DEFAULT_SUMMARY_MAX_TOKENS));
        let caps = [
            (ModelRole::Planning, self.planning_max_tokens),
            (ModelRole::Execution, self.execution_max_tokens),
            (ModelRole::Summary, Some(summary_cap)),
        ];
        for (role, cap) in caps {
            if let Some(cap) = cap {
                settings = settings.max_tokens_for(role, cap);
            }
        }
        if let Some(tokens) = self.llm_context_tokens {
            settings = settings.context_tokens(tokens);
        }
        for (name, limit) in &self.llm_rate_limits {
            settings = settings.model_rate_limit(name, *limit);
        }
        for &provider in LlmProvider::ALL {
            settings = settings.base_url(provider, self.base_url(provider));
            if let Some(key) = self.api_key(provider) {
                settings = settings.api_key(provider, key.expose());
            }
        }
        if let Some(version) = &self.azure_openai_api_version {
            settings = settings.azure_api_version(version);
        }
        if let (None, Some(token)) = (&self.azure_openai_api_key, &self.azure_openai_ad_token) {
            settings = settings.azure_entra_token(token.expose());
        }
        self.aws_settings(settings)
    }

    /// The LLM client this configuration names (see [`crate::llm::client`]).
    ///
    /// # Errors
    /// [`Error::MissingApiKey`] naming the variable to set when the key of the
    /// configured provider, or of a provider a model or fallback names
    /// (`anthropic/...`), is missing; [`Error::InvalidConfig`] for an invalid config.
    pub fn llm_client(&self) -> Result<std::sync::Arc<dyn LlmClient>> {
        self.validate()?;
        self.require_api_key(self.llm_provider)?;
        // A fallback without its key would fail only once the first model is down,
        // and then hide that model's error behind its own.
        let models = [&self.default_model, &self.planning_model, &self.execution_model, &self.summary_model];
        let named = models.into_iter().flatten().chain(&self.llm_fallback);
        for provider in named.filter_map(|name| split_provider(name).0) {
            self.require_api_key(provider)?;
        }
        if self.llm_provider == LlmProvider::Bedrock && self.aws_region.is_none() {
            return Err(Error::invalid_config("AWS_REGION", crate::llm::AWS_MISSING_REGION));
        }
        Ok(crate::llm::client(self.llm_settings()))
    }

    /// How failed LLM calls are retried: the retry count and first backoff, the
    /// request timeout per attempt and the overall deadline (`llm_deadline_secs = 0`
    /// means none).
    pub fn llm_retry_policy(&self) -> RetryPolicy {
        let deadline = (self.llm_deadline_secs > 0).then(|| Duration::from_secs(self.llm_deadline_secs));
        self.tool_retry_policy().attempt_timeout(Some(self.request_timeout())).deadline(deadline)
    }

    /// How a tool call that failed on the service's side is sent again: the retry
    /// count and first backoff, no time limits of its own (each tool sets its
    /// request timeout).
    pub fn tool_retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default().max_retries(self.max_retries).initial_backoff(self.retry_backoff())
    }

    /// The timeout of one HTTP request.
    pub fn request_timeout(&self) -> Duration {
        match self.request_timeout_ms.filter(|ms| *ms > 0) {
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs(self.request_timeout_secs),
        }
    }

    /// The wait before the first re-send of a failed call.
    pub fn retry_backoff(&self) -> Duration {
        Duration::from_millis(self.retry_backoff_ms)
    }

    /// How long an idle HTTP connection is kept for reuse.
    pub fn http_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.http_idle_timeout_secs)
    }

    /// How long a run's lease on a workflow lasts without a heartbeat.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }

    /// Installs a `tracing` subscriber that logs to stderr at the configured level
    /// and format (`RUST_LOG`, if set, wins over the level). Stdout stays free for
    /// your program's output. Does nothing if a subscriber is already installed.
    /// See [`init_logging`].
    pub fn init_logging(&self) {
        crate::logging::init_logging(self.log_level, self.log_format);
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// Sets in `base` (a configuration as JSON) every setting `over` has; a table
/// (`budget`, `prices`, ...) entry by entry, each entry whole: a file's price of a
/// model is that price, with none of the default's rates for it left over.
fn overlay(base: &mut Value, over: Value) {
    let (Value::Object(base), Value::Object(over)) = (base, over) else { return };
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Object(table)), Value::Object(entries)) => table.extend(entries),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn is_toml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn dotenv_values_reach_the_config_but_not_the_process_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        let text = "OPENWEATHERMAP_BASE_URL=http://127.0.0.1:9/from-dotenv\n\
                    PORTIA_DOTENV_PROBE=yes\n\
                    TAVILY_API_KEY=tvly-dotenv-secret\n";
        std::fs::write(&path, text).unwrap();
        let config = Config::from_env_and_file(&path).unwrap();
        assert_eq!(config.openweathermap_base_url.as_deref(), Some("http://127.0.0.1:9/from-dotenv"));
        assert_eq!(config.var("PORTIA_DOTENV_PROBE").as_deref(), Some("yes"));
        assert!(std::env::var_os("PORTIA_DOTENV_PROBE").is_none(), "the file is not exported");
        assert!(std::env::var_os("OPENWEATHERMAP_BASE_URL").is_none(), "the file is not exported");
        for shown in [format!("{config:?}"), config.to_json(), config.to_toml()] {
            assert!(!shown.contains("tvly-dotenv-secret"), "{shown}");
        }
        let missing = Config::from_env_and_file(dir.path().join("none.env")).unwrap();
        assert_eq!(missing.var("PORTIA_DOTENV_PROBE"), None);
        std::fs::write(&path, "NOT A LINE\n").unwrap();
        let err = Config::from_env_and_file(&path).unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting.ends_with(".env")), "{err}");
        std::fs::write(&path, "PORTIA_AGENT=verifier\n\nOPENAI_API_KEY=sk-LEAKCANARY dotenv\n").unwrap();
        let message = Config::from_env_and_file(&path).unwrap_err().to_string();
        assert!(message.contains("line 3 (OPENAI_API_KEY) cannot be parsed"), "{message}");
        assert!(message.contains("the value is not shown") && !message.contains("LEAKCANARY"), "{message}");
    }

    #[test]
    fn a_malformed_base_url_is_refused_naming_its_variable() {
        for (var, url, says) in [
            ("OPENAI_BASE_URL", "localhost:8080/v1", "not an http or https URL"),
            ("TAVILY_BASE_URL", "api.tavily.com", "not a URL"),
            ("PORTIA_LLM_BASE_URL", "file:///tmp/x", "not an http or https URL"),
        ] {
            let err = Config::from_vars(|name| (name == var).then(|| url.to_owned())).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, Error::InvalidConfig { ref setting, .. } if setting == var), "{message}");
            assert!(message.contains(url) && message.contains(says), "{message}");
        }
        let fine = Config::from_vars(|name| (name == "OPENAI_BASE_URL").then(|| "http://127.0.0.1:8080/v1".into()));
        assert!(fine.is_ok());
    }

    #[test]
    fn a_refused_base_url_is_shown_without_its_credentials() {
        let err = Config::from_vars(vars(&[("OPENAI_BASE_URL", "ftp://user:LEAKCANARYPW@host/v1")])).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("ftp://***@host/v1") && !message.contains("LEAKCANARY"), "{message}");
    }

    #[test]
    fn a_base_url_with_a_query_or_fragment_is_refused_naming_its_variable() {
        for (var, url) in [
            ("OPENAI_BASE_URL", "http://127.0.0.1:1/v1?key=LEAKCANARY"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:1/v1?"),
            ("TAVILY_BASE_URL", "http://127.0.0.1:1#frag"),
            ("AZURE_OPENAI_ENDPOINT", "https://r.openai.azure.com/?api-version=1"),
        ] {
            let err = Config::from_vars(vars(&[(var, url)])).unwrap_err();
            let message = err.to_string();
            assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == var), "{message}");
            assert!(message.contains("query string or fragment") && !message.contains("LEAKCANARY"), "{message}");
        }
    }

    #[test]
    fn defaults_are_documented_ones() {
        let config = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(config.llm_provider, LlmProvider::OpenAi);
        assert_eq!(config.storage, StorageKind::Memory);
        assert_eq!(config.storage_dir, PathBuf::from(".portia"));
        assert_eq!(config.agent, AgentKind::OneShot);
        assert_eq!(config.model_for(ModelRole::Planning).model, "gpt-4.1-mini");
    }

    #[test]
    fn provider_is_the_first_whose_key_is_present() {
        let config = Config::from_vars(vars(&[("MISTRAL_API_KEY", "m"), ("ANTHROPIC_API_KEY", "a")])).unwrap();
        assert_eq!(config.llm_provider, LlmProvider::Anthropic);
        assert_eq!(config.model_for(ModelRole::Execution).model, "claude-sonnet-4-5");
    }

    #[test]
    fn enum_values_parse_case_insensitively() {
        let config = Config::from_vars(vars(&[
            ("PORTIA_LLM_PROVIDER", "OpenAI-Compatible"),
            ("PORTIA_AGENT", "VERIFIER"),
            ("PORTIA_STORAGE", "SQLite"),
            ("PORTIA_LOG_LEVEL", "DEBUG"),
            ("PORTIA_EXECUTION", "Sequential"),
        ]))
        .unwrap();
        assert_eq!(config.llm_provider, LlmProvider::OpenAiCompatible);
        assert_eq!(config.agent, AgentKind::Verifier);
        assert_eq!(config.storage, StorageKind::Sqlite);
        assert_eq!(config.log_level, LogLevel::Debug);
        assert_eq!(config.execution, ExecutionMode::Sequential);
    }

    #[test]
    fn budgets_read_their_variables_and_name_a_bad_one() {
        let config =
            Config::from_vars(vars(&[("PORTIA_BUDGET_LLM_CALLS", "20"), ("PORTIA_BUDGET_USD", "0.5")])).unwrap();
        assert_eq!((config.budget.llm_calls, config.budget.usd, config.budget.tokens), (Some(20), Some(0.5), None));
        let err = Config::from_vars(vars(&[("PORTIA_BUDGET_TOKENS", "lots")])).unwrap_err();
        assert!(err.to_string().contains("PORTIA_BUDGET_TOKENS"), "{err}");
    }

    #[test]
    fn a_duration_beyond_seven_days_is_refused_naming_its_variable() {
        for (var, too_long) in [
            ("PORTIA_HTTP_IDLE_TIMEOUT_SECS", "18446744073709551615"),
            ("PORTIA_REQUEST_TIMEOUT_SECS", "604801"),
            ("PORTIA_REQUEST_TIMEOUT_MS", "604800001"),
            ("PORTIA_LLM_DEADLINE_SECS", "99999999999"),
            ("PORTIA_RETRY_BACKOFF_MS", "18446744073709551615"),
            ("PORTIA_LEASE_TTL_SECS", "604801"),
            ("PORTIA_BUDGET_SECONDS", "18446744073709551615"),
        ] {
            let err = Config::from_vars(vars(&[(var, too_long)])).unwrap_err();
            assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == var), "{err}");
            assert!(
                err.to_string().contains("7 days") && err.to_string().contains(&format!("set {var} lower")),
                "{err}"
            );
        }
        assert!(Config::from_vars(vars(&[("PORTIA_HTTP_IDLE_TIMEOUT_SECS", "604800")])).is_ok());
        let err = Config::builder().request_timeout(Duration::MAX).build().unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig { .. }), "{err}");
    }

    #[test]
    fn a_cost_budget_must_be_a_number_of_dollars_above_zero() {
        for usd in ["NaN", "-1", "0", "inf"] {
            let err = Config::from_vars(vars(&[("PORTIA_BUDGET_USD", usd)])).unwrap_err();
            assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == "PORTIA_BUDGET_USD"), "{err}");
            assert!(err.to_string().contains("above 0"), "{err}");
        }
        let err = Config::builder().budget(Budget::default().usd(f64::NAN)).build().unwrap_err();
        assert!(err.to_string().contains("PORTIA_BUDGET_USD"), "{err}");
    }

    #[test]
    fn a_limit_of_zero_is_refused_naming_its_variable() {
        let limits = ["PORTIA_BUDGET_LLM_CALLS", "PORTIA_BUDGET_TOKENS", "PORTIA_BUDGET_SECONDS"];
        for var in limits.into_iter().chain(["PORTIA_LLM_RPM", "PORTIA_LLM_TPM"]) {
            let err = Config::from_vars(vars(&[(var, "0")])).unwrap_err();
            assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == var), "{err}");
            assert!(err.to_string().contains("leave it unset for no limit"), "{err}");
            assert!(Config::from_vars(vars(&[(var, "1")])).is_ok());
        }
        let err = Config::builder().budget(Budget::default().seconds(0)).build().unwrap_err();
        assert!(err.to_string().contains("PORTIA_BUDGET_SECONDS"), "{err}");
        let mut config = Config::default();
        config.llm_rate_limits.insert("openai/gpt-4.1".into(), RateLimit::requests_per_minute(0));
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains(r#"llm_rate_limits."openai/gpt-4.1""#), "{err}");
    }

    #[test]
    fn a_fallback_naming_a_provider_without_a_model_is_refused() {
        let err = Config::from_vars(vars(&[("PORTIA_LLM_FALLBACK", "anthropic")])).unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == "PORTIA_LLM_FALLBACK"), "{err}");
        assert!(err.to_string().contains("names the provider anthropic but no model"), "{err}");
        assert!(Config::from_vars(vars(&[("PORTIA_LLM_FALLBACK", "anthropic/claude-haiku-4-5")])).is_ok());
        // A proxy's own names: a LiteLLM alias may well be `anthropic`.
        let proxied = [("PORTIA_LLM_FALLBACK", "anthropic"), ("PORTIA_LLM_BASE_URL", "http://127.0.0.1:4000/v1")];
        assert!(Config::from_vars(vars(&proxied)).is_ok());
    }

    #[test]
    fn a_key_with_a_control_character_is_refused_naming_its_variable_not_its_value() {
        for var in ["OPENAI_API_KEY", "OPENWEATHERMAP_API_KEY", "AWS_SESSION_TOKEN"] {
            let err = Config::from_vars(vars(&[(var, "sk-LEAKCANARY\x01x")])).unwrap_err();
            assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == var), "{err}");
            assert!(!err.to_string().contains("LEAKCANARY"), "{err}");
        }
        let err = Config::builder().anthropic_api_key("a\nb").build().unwrap_err();
        assert!(err.to_string().contains("ANTHROPIC_API_KEY"), "{err}");
    }

    #[test]
    fn the_retired_file_store_points_to_sqlite_and_the_import() {
        let err = Config::from_vars(vars(&[("PORTIA_STORAGE", "disk")])).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("PORTIA_STORAGE=sqlite") && message.contains("import_json_dir"), "{message}");
    }

    #[test]
    fn unknown_value_names_the_variable_and_lists_valid_ones() {
        let err = Config::from_vars(vars(&[("PORTIA_AGENT", "genius")])).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("PORTIA_AGENT"), "{message}");
        assert!(message.contains("one_shot, verifier"), "{message}");
    }

    #[test]
    fn bad_number_names_the_variable() {
        let err = Config::from_vars(vars(&[("PORTIA_MAX_RETRIES", "lots")])).unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == "PORTIA_MAX_RETRIES"), "{err}");
    }

    #[test]
    fn missing_key_names_its_variable() {
        let config = Config::builder().llm_provider(LlmProvider::Anthropic).build().unwrap();
        let err = config.require_api_key(LlmProvider::Anthropic).unwrap_err();
        assert!(err.to_string().contains("ANTHROPIC_API_KEY"), "{err}");
        assert!(config.require_api_key(LlmProvider::Ollama).unwrap().is_none());
    }

    #[test]
    fn openai_key_is_never_the_key_of_another_server() {
        let config =
            Config::from_vars(vars(&[("OPENAI_API_KEY", "sk-openai"), ("PORTIA_LLM_PROVIDER", "ollama")])).unwrap();
        assert!(config.api_key(LlmProvider::Ollama).is_none());
        assert!(config.api_key(LlmProvider::OpenAiCompatible).is_none());
        let config =
            Config::from_vars(vars(&[("OPENAI_API_KEY", "sk-openai"), ("PORTIA_LLM_API_KEY", "vllm-key")])).unwrap();
        assert_eq!(config.api_key(LlmProvider::OpenAiCompatible).map(Secret::expose), Some("vllm-key"));
        assert_eq!(config.api_key(LlmProvider::OpenAi).map(Secret::expose), Some("sk-openai"));
    }

    #[test]
    fn provider_slash_model_selects_both() {
        let config = Config::from_vars(vars(&[("PORTIA_LLM_MODEL", "anthropic/claude-haiku-4-5")])).unwrap();
        assert_eq!(config.llm_provider, LlmProvider::Anthropic);
        let planning = Config::builder().planning_model("openai/o4-mini").build().unwrap();
        let model = planning.model_for(ModelRole::Planning);
        assert_eq!((model.provider, model.model.as_str()), (LlmProvider::OpenAi, "o4-mini"));
        let router =
            Config::builder().llm_provider(LlmProvider::OpenRouter).default_model("meta/llama-4").build().unwrap();
        assert_eq!(router.model_for(ModelRole::Summary).model, "meta/llama-4");
    }

    #[test]
    fn keys_are_redacted_in_debug_and_absent_from_files() {
        let config = Config::builder().openai_api_key("sk-very-secret").tavily_api_key("tvly-secret").build().unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("very-secret") && !debug.contains("tvly-secret"), "{debug}");
        assert!(!config.to_json().contains("secret"));
        assert!(!config.to_toml().contains("secret"));
    }

    #[test]
    fn written_config_reads_back_equal_in_json_and_toml() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::builder()
            .llm_provider(LlmProvider::Anthropic)
            .planning_model("claude-opus-4-1")
            .storage(StorageKind::Sqlite)
            .storage_dir(dir.path().join("store"))
            .max_parallel_steps(2usize)
            .summarize_final_output(false)
            .build()
            .unwrap();
        for name in ["config.json", "config.toml"] {
            let path = dir.path().join(name);
            config.save(&path).unwrap();
            let mut back = Config::from_file(&path).unwrap();
            back.strip_secrets_for_test();
            assert_eq!(back, config, "{name}");
        }
    }

    #[test]
    fn a_file_over_the_environment_sets_what_it_names_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portia.toml");
        let file =
            "max_retries = 2\n[budget]\nllm_calls = 7\n[prices.gpt-4o]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n";
        std::fs::write(&path, file).unwrap();
        let vars = |name: &str| match name {
            "PORTIA_MAX_RETRIES" => Some("5".to_owned()),
            "PORTIA_BUDGET_USD" => Some("1.5".to_owned()),
            "OPENAI_BASE_URL" => Some("http://127.0.0.1:9/v1".to_owned()),
            _ => None,
        };
        let config = Config::from_vars(vars).unwrap().under_file(&path).unwrap();
        assert_eq!(config.max_retries, 2, "the file wins");
        assert_eq!((config.budget.llm_calls, config.budget.usd), (Some(7), Some(1.5)), "table keys merge one by one");
        assert_eq!(config.openai_base_url.as_deref(), Some("http://127.0.0.1:9/v1"), "the rest is the environment's");
        assert_eq!(config.prices.get("gpt-4o"), Some(Price::new(1.0, 2.0)), "an entry is taken whole");
        assert_eq!(config.prices.get("gpt-4.1-mini"), Prices::default().get("gpt-4.1-mini"), "others are kept");
        std::fs::write(&path, "max_retires = 2\n").unwrap();
        let err = Config::from_vars(vars).unwrap().under_file(&path).unwrap_err().to_string();
        assert!(err.contains("did you mean `max_retries`"), "{err}");
    }

    #[test]
    fn a_config_file_that_does_not_parse_is_located_but_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text, at) in [
            ("c3.toml", "max_retries = 2\nopenai_api_key = sk-LEAKCANARY-file\n", "line 2, column 18"),
            ("c3.json", "{\n  \"openai_api_key\": sk-LEAKCANARY-file\n}", "line 2, column 21"),
            ("c4.json", "{\"openai_api_key\": \"sk-LEAKCANARY-file", "line 1, column 38"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let err = Config::from_file(&path).unwrap_err();
            let message = err.to_string();
            assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting.ends_with(name)), "{message}");
            assert!(message.contains(at) && !message.contains("LEAKCANARY") && !message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn unreadable_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "{ not json").unwrap();
        let err = Config::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("bad.json"), "{err}");
        let err = Config::from_file(dir.path().join("missing.toml")).unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn zero_parallelism_is_refused_with_the_fix() {
        let err = Config::builder().max_parallel_steps(0usize).build().unwrap_err();
        assert!(err.to_string().contains("PORTIA_MAX_PARALLEL_STEPS"), "{err}");
    }

    #[test]
    fn the_http_pool_settings_read_their_variables_and_reach_the_llm_settings() {
        let config = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(config.llm_settings().pool(), crate::http::Pool::default());
        let set = [("PORTIA_HTTP_MAX_IDLE_PER_HOST", "2"), ("PORTIA_HTTP_IDLE_TIMEOUT_SECS", "5")];
        let config = Config::from_vars(vars(&set)).unwrap();
        let pool = crate::http::Pool { max_idle_per_host: 2, idle_timeout: Duration::from_secs(5) };
        assert_eq!(config.llm_settings().pool(), pool);
        let err = Config::from_vars(vars(&[("PORTIA_HTTP_MAX_IDLE_PER_HOST", "many")])).unwrap_err();
        assert!(err.to_string().contains("PORTIA_HTTP_MAX_IDLE_PER_HOST"), "{err}");
    }

    #[test]
    fn lease_ttl_reads_its_variable_and_refuses_zero_with_the_fix() {
        let config = Config::from_vars(vars(&[])).unwrap();
        assert_eq!((config.lease_ttl_secs, config.lease_ttl()), (30, Duration::from_secs(30)));
        let config = Config::from_vars(vars(&[("PORTIA_LEASE_TTL_SECS", "5")])).unwrap();
        assert_eq!(config.lease_ttl(), Duration::from_secs(5));
        let err = Config::from_vars(vars(&[("PORTIA_LEASE_TTL_SECS", "0")])).unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == "lease_ttl_secs"), "{err}");
        assert!(err.to_string().contains("set PORTIA_LEASE_TTL_SECS to 1 or more"), "{err}");
        let err = Config::builder().lease_ttl_secs(0u64).build().unwrap_err();
        assert!(err.to_string().contains("PORTIA_LEASE_TTL_SECS"), "{err}");
    }

    #[test]
    fn max_run_attempts_reads_its_variable_and_refuses_zero_with_the_fix() {
        assert_eq!(Config::from_vars(vars(&[])).unwrap().max_run_attempts, 3);
        let config = Config::from_vars(vars(&[("PORTIA_MAX_RUN_ATTEMPTS", "1")])).unwrap();
        assert_eq!(config.max_run_attempts, 1);
        let err = Config::from_vars(vars(&[("PORTIA_MAX_RUN_ATTEMPTS", "0")])).unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == "max_run_attempts"), "{err}");
        assert!(err.to_string().contains("set PORTIA_MAX_RUN_ATTEMPTS to 1 or more"), "{err}");
        let err = Config::builder().max_run_attempts(0u32).build().unwrap_err();
        assert!(err.to_string().contains("PORTIA_MAX_RUN_ATTEMPTS"), "{err}");
    }

    impl Config {
        /// Keys from the test machine's environment must not decide a comparison.
        fn strip_secrets_for_test(&mut self) {
            for key in [
                &mut self.openai_api_key,
                &mut self.llm_api_key,
                &mut self.anthropic_api_key,
                &mut self.mistral_api_key,
                &mut self.groq_api_key,
                &mut self.openrouter_api_key,
                &mut self.gemini_api_key,
                &mut self.azure_openai_api_key,
                &mut self.azure_openai_ad_token,
                &mut self.aws_access_key_id,
                &mut self.aws_secret_access_key,
                &mut self.aws_session_token,
                &mut self.tavily_api_key,
                &mut self.openweathermap_api_key,
            ] {
                *key = None;
            }
        }
    }
}
