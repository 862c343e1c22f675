//! [`LlmLayer`] and [`LlmClientExt`]: stacking behaviour around any [`LlmClient`].

use std::sync::Arc;

use super::LlmClient;

/// Behaviour stacked around any [`LlmClient`], in the manner of tower.
///
/// A layer takes a client and returns a client that does something before or after
/// handing each request on: [`Retry`](super::Retry) sends failed requests again,
/// [`Offline`](super::Offline) refuses requests in offline mode, the cassette's
/// [`Recorder`](crate::testing::Recorder) keeps every exchange. Because a layer only
/// needs the [`LlmClient`] trait, a client you write yourself gets the same
/// behaviour as the built-in providers.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use portia::llm::{LlmClient, LlmClientExt, LlmError, LlmRequest, Message, ModelRole, Offline, Retry, RetryPolicy};
/// use portia::testing::ScriptedLlm;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let overloaded = LlmError::Http {
///     provider: "mine".into(),
///     model: "m".into(),
///     status: 503,
///     message: "overloaded".into(),
///     retry_after: None,
///     key_var: None,
/// };
/// let model = Arc::new(ScriptedLlm::new().error(overloaded).text("Hello!"));
/// // The last layer is the outermost: a request meets the offline check (this model
/// // is served on this machine, so offline mode lets it through), then the retries.
/// let llm = model
///     .clone()
///     .with(Offline::unless_loopback("http://127.0.0.1:8080/v1"))
///     .with(Retry::new(RetryPolicy::default().initial_backoff(Duration::from_millis(10))));
/// let reply = llm.chat(LlmRequest::new(ModelRole::Execution, vec![Message::user("Hi")])).await.unwrap();
/// assert_eq!(reply.text.as_deref(), Some("Hello!"));
/// assert_eq!(model.requests().len(), 2, "the 503 was retried");
/// # }
/// ```
///
/// A layer of your own implements this trait and wraps the client in a type that
/// implements [`LlmClient`] by calling the inner one. It should pass
/// [`LlmClient::retries`] through, so the runner knows whether the stack retries,
/// and implement [`LlmClient::chat_ref`] by calling the inner one's, so that a
/// request a retry or a structured call keeps is not copied on its way.
///
/// Given the inner client, [`layer`](LlmLayer::layer) returns the client that
/// wraps it. Apply one with [`LlmClientExt::with`].
pub trait LlmLayer {
    /// `inner`, wrapped.
    fn layer(&self, inner: Arc<dyn LlmClient>) -> Arc<dyn LlmClient>;
}

impl<L: LlmLayer + ?Sized> LlmLayer for &L {
    fn layer(&self, inner: Arc<dyn LlmClient>) -> Arc<dyn LlmClient> {
        (**self).layer(inner)
    }
}

/// Stacks layers around a shared client: `client.with(a).with(b)` sends each
/// request through `b`, then `a`, then `client`.
pub trait LlmClientExt {
    /// This client wrapped in `layer`.
    #[must_use]
    fn with(self, layer: impl LlmLayer) -> Arc<dyn LlmClient>;
}

impl LlmClientExt for Arc<dyn LlmClient> {
    fn with(self, layer: impl LlmLayer) -> Arc<dyn LlmClient> {
        layer.layer(self)
    }
}

impl<C: LlmClient + 'static> LlmClientExt for Arc<C> {
    fn with(self, layer: impl LlmLayer) -> Arc<dyn LlmClient> {
        layer.layer(self)
    }
}

/// The provider and model a layer names a call by (in logs and errors): as
/// `settings` resolve the request when the layer has them, else `llm` and the
/// request's own model, or its purpose.
pub(super) fn call_names(settings: Option<&super::LlmSettings>, request: &super::LlmRequest) -> (String, String) {
    match settings {
        Some(settings) => {
            let target = settings.resolve(request);
            (target.provider.as_str().to_owned(), target.model)
        }
        None => {
            let purpose = || format!("{:?}", request.purpose).to_lowercase();
            ("llm".to_owned(), request.named_model().map_or_else(purpose, str::to_owned))
        }
    }
}
