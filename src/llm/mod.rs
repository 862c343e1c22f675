//! The LLM seam: one request/response shape for every provider.
//!
//! Planner, agents and summaries talk to an [`LlmClient`]: an [`LlmRequest`]
//! (messages, tools, tool choice, an optional output schema) goes in, an
//! [`LlmResponse`] (text and/or tool calls, token [`Usage`]) comes out. Providers
//! translate this to their wire format. In tests, drive it with
//! [`testing::ScriptedLlm`](crate::testing::ScriptedLlm).
//!
//! What is not a provider's business is a [layer](LlmLayer) stacked around any
//! client, so a client of your own gets it too: [`Retry`] (backoff, `Retry-After`,
//! time limits, per a [`RetryPolicy`]), [`Fallback`] (further models when one is
//! down), [`Offline`] (refusal in offline mode), the
//! cassette's [`Recorder`](crate::testing::Recorder), and, inside a run, the
//! runner's metering of usage and budgets. Stack them with [`LlmClientExt::with`].
//!
//! [`LlmProvider`] is the catalogue of providers (default models, base URLs, key
//! variables); [`ModelRole`] names what a call is for and [`ModelRef`] which model
//! serves it; [`LlmSettings::resolve`] decides which model a request goes to.
//!
//! [`client`] builds the HTTP client for the providers [`LlmSettings`] name
//! ([`Config::llm_client`](crate::Config::llm_client) does so from the configuration):
//! OpenAI Chat Completions (also used for Mistral, Groq, OpenRouter, Ollama and
//! other compatible servers), Anthropic Messages, Gemini `generateContent` and
//! Bedrock Converse (signed with [`AwsCredentials`]), each inside an [`Offline`] and
//! a [`Retry`] layer. Each streams a reply when the runner asks it to (see
//! [`StreamMode`]): the pieces go to the run's subscribers, and the reply is the
//! same [`LlmResponse`], usage included, as unstreamed.

mod anthropic;
mod anthropic_stream;
mod aws;
mod bedrock;
mod bedrock_stream;
mod caps;
mod fallback;
mod gemini;
mod gemini_stream;
mod layer;
mod offline;
mod openai;
mod openai_stream;
mod provider;
mod rate_limit;
mod reply;
mod retry;
mod router;
mod schema;
mod settings;
mod stream;
mod transport;

pub use schema::{portability_problems, portable};

use std::borrow::Cow;
use std::fmt;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::SharedValue;
pub use crate::error::LlmError;
pub use crate::usage::Usage;
pub use aws::AwsCredentials;
pub(crate) use aws::{
    CREDENTIAL_VARS as AWS_CREDENTIAL_VARS, MISSING_REGION as AWS_MISSING_REGION, bedrock_url,
    read_profile as read_aws_profile,
};
pub use fallback::Fallback;
pub use layer::{LlmClientExt, LlmLayer};
pub use offline::Offline;
pub use provider::{LlmProvider, ModelRef, ModelRole};
pub(crate) use provider::{provider_without_model, split_provider, unknown_provider};
pub(crate) use rate_limit::{LimiterWaits, NOTABLE_WAIT};
pub use rate_limit::{RateLimit, RateLimits};
pub use retry::{Retry, RetryPolicy};
pub use settings::LlmSettings;
pub(crate) use stream::Delta;
pub use stream::{Deltas, StreamMode};
pub(crate) use transport::retry_after;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// Instructions.
    System,
    /// The user's (or the SDK's) words.
    User,
    /// The model's reply.
    Assistant,
    /// A tool's result, answering one of the assistant's tool calls.
    Tool,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// The tool calls an assistant message made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message, the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    fn text(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::text(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::text(Role::User, content)
    }

    /// An assistant message, with the tool calls it made.
    pub fn assistant(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Self { tool_calls, ..Self::text(Role::Assistant, content) }
    }

    /// A tool's result for the call `tool_call_id`.
    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self { tool_call_id: Some(tool_call_id.into()), ..Self::text(Role::Tool, content) }
    }
}

/// A call the model asks to make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call.
    pub id: String,
    /// The function (tool id) to call.
    pub name: String,
    /// The arguments, as JSON.
    pub arguments: Value,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// The function's name (the tool id).
    pub name: String,
    /// What it does.
    pub description: String,
    /// Its arguments' JSON schema, shared: the same tool's schema goes out with
    /// every call that offers it.
    pub parameters: SharedValue,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// The model must call some tool.
    Required,
    /// The model must call this tool.
    Tool(String),
}

/// The JSON shape a structured reply must have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSchema {
    /// A name for the shape (letters, digits, `_`).
    pub name: String,
    /// Its JSON schema, shared: the same schema goes out with every call that asks
    /// for this shape.
    pub schema: SharedValue,
}

impl OutputSchema {
    /// A shape named `name` with this JSON schema.
    pub fn new(name: impl Into<String>, schema: impl Into<SharedValue>) -> Self {
        Self { name: name.into(), schema: schema.into() }
    }

    /// The schema of a Rust type.
    pub fn of<T: JsonSchema>(name: impl Into<String>) -> Self {
        Self { name: name.into(), schema: schema_value::<T>() }
    }

    /// The name as providers accept it for a schema or tool: letters, digits, `_`
    /// and `-`, at most 64 characters.
    pub(crate) fn wire_name(&self) -> String {
        let name: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
            .take(64)
            .collect();
        if name.is_empty() { "output".to_owned() } else { name }
    }
}

/// The JSON schema of `T`, as a plain JSON value.
///
/// The root's `$schema` and `title` keys are dropped: the model does not need them,
/// and every byte of a schema is sent (and paid for) on every call. The schema is
/// [`portable`]: servers such as llama.cpp accept it.
///
/// Each type's schema is made once per process and shared after that: a tool's spec
/// (and so its schema) is asked for at every lookup, plan check and step.
pub fn schema_value<T: JsonSchema>() -> SharedValue {
    type Key = (&'static str, Cow<'static, str>);
    type Made = std::sync::Mutex<std::collections::HashMap<Key, SharedValue, foldhash::fast::RandomState>>;
    static MADE: std::sync::OnceLock<Made> = std::sync::OnceLock::new();
    let made = MADE.get_or_init(Default::default);
    // The type's path, and the id schemars tells schemas apart by (a hand-written
    // schema may share a path's name with another).
    let key = (std::any::type_name::<T>(), T::schema_id());
    if let Some(schema) = made.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key) {
        return schema.clone();
    }
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).expect("a JSON schema always serializes");
    if let Some(root) = schema.as_object_mut() {
        root.remove("$schema");
        root.remove("title");
    }
    let schema = SharedValue::new(portable(&schema));
    made.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, schema.clone());
    schema
}

/// One call to an LLM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmRequest {
    /// What the call is for; the config picks the model from it.
    pub purpose: ModelRole,
    /// A model that overrides the configured one (`provider/model` accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Functions the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDefinition>,
    /// Whether and which function it must call.
    #[serde(default)]
    pub tool_choice: ToolChoice,
    /// When set, the reply's text must be JSON of this shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<OutputSchema>,
}

impl LlmRequest {
    /// A request with these messages and nothing else.
    pub fn new(purpose: ModelRole, messages: Vec<Message>) -> Self {
        Self { purpose, model: None, messages, tools: Vec::new(), tool_choice: ToolChoice::Auto, output_schema: None }
    }

    /// The model this request names itself, if it names one (a blank name names none).
    pub(crate) fn named_model(&self) -> Option<&str> {
        self.model.as_deref().map(str::trim).filter(|m| !m.is_empty())
    }

    /// Offers tools to the model.
    #[must_use]
    pub fn with_tools(mut self, tools: Vec<ToolDefinition>, choice: ToolChoice) -> Self {
        self.tools = tools;
        self.tool_choice = choice;
        self
    }

    /// Asks for a JSON reply of this shape.
    #[must_use]
    pub fn with_output_schema(mut self, schema: OutputSchema) -> Self {
        self.output_schema = Some(schema);
        self
    }
}

/// The model's reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmResponse {
    /// Its text, if any (the JSON, for a structured reply).
    #[serde(default)]
    pub text: Option<String>,
    /// The calls it asks to make.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// What the call cost.
    #[serde(default)]
    pub usage: Usage,
    /// The model that served the reply (`provider/model`) when it is not the one the
    /// request went to: set by the [`Fallback`] layer when a fallback model answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl LlmResponse {
    /// A text reply.
    pub fn text(text: impl Into<String>) -> Self {
        Self { text: Some(text.into()), ..Self::default() }
    }
}

/// A chat model. Implemented by the providers, by [`testing::ScriptedLlm`](crate::testing::ScriptedLlm),
/// by the [layers](LlmLayer), and by anything you bring.
#[async_trait::async_trait]
pub trait LlmClient: Send + Sync + fmt::Debug {
    /// Sends one request and returns the reply.
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError>;

    /// Sends a request the caller keeps: a retry sends the same request again, a
    /// structured call may re-ask with it. The default clones it for
    /// [`chat`](Self::chat). A client that only reads its request implements this
    /// as well, as every built-in client and layer does, so that no copy of a
    /// request (its messages, tool schemas and output schema) is made on its way
    /// to the provider.
    async fn chat_ref(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        self.chat(request.clone()).await
    }

    /// Whether this client retries failed requests itself: `true` for [`client`]'s
    /// and for anything inside a [`Retry`] layer, `false` by default.
    /// [`RunnerBuilder::llm`](crate::runner::RunnerBuilder::llm) adds a [`Retry`]
    /// layer around a client that says `false`, so none is retried twice over. A
    /// layer should report what the client inside it says, unless it retries itself.
    fn retries(&self) -> bool {
        false
    }
}

/// Asks for a reply of type `T` and parses it. A reply that does not parse is
/// re-asked once, with the parse error shown to the model, before it is an error.
///
/// The returned usage covers every call made.
///
/// # Errors
/// The client's [`LlmError`], or [`LlmError::Structured`] when both replies are unusable.
pub async fn structured<T: DeserializeOwned>(
    client: &dyn LlmClient,
    request: LlmRequest,
) -> Result<(T, Usage), LlmError> {
    structured_ref(client, &request).await
}

/// [`structured`] for a request the caller keeps: it is copied only to re-ask.
pub(crate) async fn structured_ref<T: DeserializeOwned>(
    client: &dyn LlmClient,
    request: &LlmRequest,
) -> Result<(T, Usage), LlmError> {
    let schema_name = request.output_schema.as_ref().map_or_else(|| "output".to_owned(), |s| s.name.clone());
    let mut request = Cow::Borrowed(request);
    let mut usage = Usage::default();
    let mut last_error = String::new();
    for attempt in 0..2 {
        let response = client.chat_ref(&request).await?;
        usage += response.usage;
        let text = response.text.unwrap_or_default();
        match serde_json::from_str::<T>(strip_code_fence(&text)) {
            Ok(value) => return Ok((value, usage)),
            Err(e) => {
                tracing::warn!(attempt, schema = %schema_name, error = %e, "structured reply did not parse");
                last_error = e.to_string();
                let request = request.to_mut();
                request.messages.push(Message::assistant(text, Vec::new()));
                request.messages.push(Message::user(format!(
                    "That reply is not valid JSON for the {schema_name} schema ({e}). Reply again with only the corrected JSON."
                )));
            }
        }
    }
    Err(LlmError::Structured { schema: schema_name, message: last_error })
}

pub(crate) use crate::text::strip_code_fence;

/// Passes a request on as a layer got it: owned to [`LlmClient::chat`], borrowed to
/// [`LlmClient::chat_ref`], so that a layer copies nothing.
pub(crate) async fn forward(client: &dyn LlmClient, request: Cow<'_, LlmRequest>) -> Result<LlmResponse, LlmError> {
    match request {
        Cow::Owned(request) => client.chat(request).await,
        Cow::Borrowed(request) => client.chat_ref(request).await,
    }
}

/// The LLM client `settings` describe.
///
/// Each request goes to the provider and model its [`LlmRequest::model`] names
/// (`provider/model` accepted), else to the model set for its purpose (see
/// [`LlmSettings::resolve`]). All providers share one HTTP connection pool. Keys
/// are checked per request: a request for a provider whose key is missing fails
/// with [`LlmError::MissingApiKey`]. Each provider's client sends a request once,
/// inside an [`Offline`] layer at the provider's base URL (offline mode allows only
/// loopback hosts) and a [`Retry`] layer with the settings' [`RetryPolicy`]; the
/// client returned [`retries`](LlmClient::retries). The settings'
/// [fallback models](LlmSettings::fallback) are a [`Fallback`] layer around it all.
pub fn client(settings: LlmSettings) -> std::sync::Arc<dyn LlmClient> {
    let fallback = Fallback::new(settings.fallback_models().iter().cloned());
    std::sync::Arc::new(router::Router::new(settings)).with(fallback)
}

/// The LLM client `settings` describe, built when it is first called rather than now.
///
/// For programs that may not need a model at all (listing or answering stored
/// workflows, resuming one whose remaining steps need no model call): they run
/// without any key, and only an actual call fails, with
/// [`LlmError::MissingApiKey`] naming the variable to set.
pub fn client_on_first_use(settings: LlmSettings) -> std::sync::Arc<dyn LlmClient> {
    std::sync::Arc::new(OnFirstUse { settings, client: std::sync::OnceLock::new() })
}

#[derive(Debug)]
struct OnFirstUse {
    settings: LlmSettings,
    client: std::sync::OnceLock<Result<std::sync::Arc<dyn LlmClient>, LlmError>>,
}

impl OnFirstUse {
    /// The client, built on the first call; the error of building it, on every call.
    fn client(&self) -> Result<&dyn LlmClient, LlmError> {
        let built = self.client.get_or_init(|| {
            self.settings.require_api_key(self.settings.provider())?;
            Ok(client(self.settings.clone()))
        });
        built.as_deref().map_err(Clone::clone)
    }
}

#[async_trait::async_trait]
impl LlmClient for OnFirstUse {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        forward(self.client()?, Cow::Owned(request)).await
    }

    async fn chat_ref(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        forward(self.client()?, Cow::Borrowed(request)).await
    }

    fn retries(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_key_is_an_error_only_when_called() {
        let client = client_on_first_use(LlmSettings::new(LlmProvider::OpenAi));
        let err = client.chat(LlmRequest::new(ModelRole::Planning, vec![Message::user("hi")])).await.unwrap_err();
        assert!(matches!(&err, LlmError::MissingApiKey { env_var, .. } if env_var == "OPENAI_API_KEY"), "{err:?}");
    }

    #[test]
    fn code_fences_are_stripped() {
        assert_eq!(strip_code_fence("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(strip_code_fence(" {\"a\":1} "), "{\"a\":1}");
    }

    #[test]
    fn auth_errors_name_the_key_variable() {
        let err = LlmError::Http {
            provider: "openai".into(),
            model: "gpt".into(),
            status: 401,
            message: "bad key".into(),
            retry_after: None,
            key_var: Some("OPENAI_API_KEY".into()),
        };
        assert!(err.to_string().ends_with("(check the API key in OPENAI_API_KEY)"), "{err}");
        assert!(!err.is_retryable());
    }
}
