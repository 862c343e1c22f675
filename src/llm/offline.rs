//! [`Offline`]: the layer that refuses requests while offline mode is on.

use std::sync::Arc;

use super::layer::{LlmLayer, call_names};
use super::{LlmClient, LlmError, LlmRequest, LlmResponse, LlmSettings};
use crate::http::{OFFLINE_VAR, check_allowed, offline};

/// The layer that refuses requests while offline mode is on
/// ([`set_offline`](crate::config::set_offline) or `PORTIA_OFFLINE=1`), before the
/// client inside it sees them, with a [`LlmError::NotSent`] naming `PORTIA_OFFLINE`
/// (never retried). With offline mode off it only passes requests on.
///
/// Only the client knows where its requests go, so the layer is told:
/// - [`Offline::new`]: anywhere. Every request is refused while offline: for a
///   client of your own that calls a remote service.
/// - [`Offline::unless_loopback`]: to this URL. Requests are refused while offline
///   unless it points at a loopback host, the rule of every built-in provider
///   ([`client`](super::client) stacks one around each, at its base URL).
///
/// [`RunnerBuilder::llm`](crate::runner::RunnerBuilder::llm) adds no `Offline`
/// layer around a client you give it: test doubles such as
/// [`ScriptedLlm`](crate::testing::ScriptedLlm) and cassette replays are what
/// offline runs use, and they must keep answering. Add one yourself to a client
/// that reaches the network.
///
/// ```
/// use std::sync::Arc;
/// use portia::llm::{LlmClient, LlmClientExt, LlmError, LlmRequest, Message, ModelRole, Offline};
/// use portia::testing::ScriptedLlm;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// portia::config::set_offline(true);
/// let remote = Arc::new(ScriptedLlm::new()).with(Offline::new());
/// let err = remote.chat(LlmRequest::new(ModelRole::Execution, vec![Message::user("Hi")])).await.unwrap_err();
/// assert!(matches!(err, LlmError::NotSent { .. }) && err.to_string().contains("PORTIA_OFFLINE"));
///
/// let local = Arc::new(ScriptedLlm::new().text("Hello!")).with(Offline::unless_loopback("http://localhost:8080/v1"));
/// assert!(local.chat(LlmRequest::new(ModelRole::Execution, vec![Message::user("Hi")])).await.is_ok());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Offline {
    /// The URL requests go to, when known.
    url: Option<String>,
    settings: Option<Arc<LlmSettings>>,
}

impl Offline {
    /// Refuses every request while offline mode is on.
    pub fn new() -> Self {
        Self { url: None, settings: None }
    }

    /// Refuses requests while offline mode is on unless `url` points at a loopback
    /// host (`localhost`, `127.0.0.1`, `::1`).
    pub fn unless_loopback(url: impl Into<String>) -> Self {
        Self { url: Some(url.into()), settings: None }
    }

    /// Names refused calls by the provider and model `settings` resolve each
    /// request to (see [`LlmSettings::resolve`]); by default, by the request's model
    /// (or its purpose) and the provider `llm`.
    #[must_use]
    pub fn models(mut self, settings: LlmSettings) -> Self {
        self.settings = Some(Arc::new(settings));
        self
    }

    pub(crate) fn shared_models(mut self, settings: Arc<LlmSettings>) -> Self {
        self.settings = Some(settings);
        self
    }

    /// Why a request may not be sent now, if it may not.
    fn refusal(&self) -> Option<String> {
        if !offline() {
            return None;
        }
        match &self.url {
            Some(url) => check_allowed(url).err(),
            None => Some(format!("{OFFLINE_VAR} is set and this client may reach the network; refusing the request")),
        }
    }
}

impl Default for Offline {
    fn default() -> Self {
        Self::new()
    }
}

impl LlmLayer for Offline {
    fn layer(&self, inner: Arc<dyn LlmClient>) -> Arc<dyn LlmClient> {
        Arc::new(OfflineChecked { inner, offline: self.clone() })
    }
}

/// A client wrapped in [`Offline`].
#[derive(Debug)]
struct OfflineChecked {
    inner: Arc<dyn LlmClient>,
    offline: Offline,
}

impl OfflineChecked {
    /// Refuses a request offline mode does not allow.
    fn check(&self, request: &LlmRequest) -> Result<(), LlmError> {
        match self.offline.refusal() {
            Some(message) => {
                let (provider, model) = call_names(self.offline.settings.as_deref(), request);
                Err(LlmError::NotSent { provider, model, message })
            }
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl LlmClient for OfflineChecked {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        self.check(&request)?;
        self.inner.chat(request).await
    }

    async fn chat_ref(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        self.check(request)?;
        self.inner.chat_ref(request).await
    }

    fn retries(&self) -> bool {
        self.inner.retries()
    }
}
