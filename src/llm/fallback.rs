//! [`Fallback`]: further models to ask when the one a request goes to is unavailable.

use std::sync::Arc;

use super::{LlmClient, LlmError, LlmLayer, LlmRequest, LlmResponse};

/// The layer that sends a request to further models, in order, when the model it
/// went to is unavailable: the client inside gave up on an error that says the
/// provider is down or overloaded ([`LlmError::is_unavailable`]: a 5xx, a 429 with
/// no usable `Retry-After`, a refused or timed-out connection). Any other error of
/// the model first asked, a 400 above all, is returned as it is: the next model
/// would refuse the same request. When the fallbacks fail too (all unavailable, or
/// one refusing, which ends them), the error is [`LlmError::FellBack`], holding the
/// first model's error and the last one's.
///
/// Put it outside the [`Retry`](super::Retry) layer, so a model's retries are spent
/// before the next model is tried; [`client`](super::client) does so for the
/// fallback models [`LlmSettings::fallback`](super::LlmSettings::fallback) names
/// (`PORTIA_LLM_FALLBACK`). A fallback model is named `provider/model` and is sent
/// as the request's [`model`](LlmRequest::model), so the client inside must route by
/// it, as the built-in clients do. The reply of a fallback model says so in
/// [`LlmResponse::model`], and the runner names and prices the call by it.
///
/// ```
/// use std::sync::Arc;
/// use portia::llm::{Fallback, LlmClient, LlmClientExt, LlmError, LlmRequest, Message, ModelRole};
/// use portia::testing::ScriptedLlm;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let down = LlmError::Http {
///     provider: "openai".into(),
///     model: "gpt-4.1-mini".into(),
///     status: 503,
///     message: "overloaded".into(),
///     retry_after: None,
///     key_var: None,
/// };
/// let model = Arc::new(ScriptedLlm::new().error(down).text("Hello from Claude"));
/// let llm = model.clone().with(Fallback::new(["anthropic/claude-haiku-4-5"]));
/// let reply = llm.chat(LlmRequest::new(ModelRole::Execution, vec![Message::user("Hi")])).await.unwrap();
/// assert_eq!(reply.model.as_deref(), Some("anthropic/claude-haiku-4-5"));
/// assert_eq!(model.requests()[1].model.as_deref(), Some("anthropic/claude-haiku-4-5"));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    models: Vec<String>,
}

impl Fallback {
    /// Falls back on `models` (`provider/model`), in order. Blank names are dropped.
    pub fn new(models: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let models = models.into_iter().map(Into::into).map(|m: String| m.trim().to_owned());
        Self { models: models.filter(|m| !m.is_empty()).collect() }
    }

    /// The models fallen back on, in order.
    pub fn models(&self) -> &[String] {
        &self.models
    }
}

impl LlmLayer for Fallback {
    fn layer(&self, inner: Arc<dyn LlmClient>) -> Arc<dyn LlmClient> {
        if self.models.is_empty() {
            return inner;
        }
        Arc::new(FallingBack { inner, models: self.models.clone() })
    }
}

/// A client wrapped in [`Fallback`].
#[derive(Debug)]
struct FallingBack {
    inner: Arc<dyn LlmClient>,
    models: Vec<String>,
}

#[async_trait::async_trait]
impl LlmClient for FallingBack {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        self.chat_ref(&request).await
    }

    /// The request is copied only for a fallback model. When every model fails,
    /// the error keeps the first model's error and the last fallback's
    /// ([`LlmError::FellBack`]).
    async fn chat_ref(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let first = match self.inner.chat_ref(request).await {
            Err(error) if error.is_unavailable() => error,
            answered => return answered,
        };
        let asked = request.named_model().map(str::to_owned);
        let mut last: Option<(String, LlmError)> = None;
        for model in self.models.iter().filter(|m| asked.as_deref() != Some(m.as_str())) {
            let error = last.as_ref().map_or(&first, |(_, error)| error);
            tracing::warn!(fallback = %model, error = %error, "LLM unavailable; falling back on the next model");
            let mut attempt = request.clone();
            attempt.model = Some(model.clone());
            match self.inner.chat(attempt).await {
                Ok(mut response) => {
                    response.model = Some(model.clone());
                    return Ok(response);
                }
                Err(next) => {
                    let refused = !next.is_unavailable();
                    last = Some((model.clone(), next));
                    if refused {
                        break;
                    }
                }
            }
        }
        Err(match last {
            Some((model, last)) => LlmError::FellBack { first: Box::new(first), model, last: Box::new(last) },
            None => first,
        })
    }

    fn retries(&self) -> bool {
        self.inner.retries()
    }
}
