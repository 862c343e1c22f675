//! Retries, backoff and time limits for LLM calls: the one place they live.
//!
//! [`RetryPolicy::run`] is the loop; the [`Retry`] layer runs it around any
//! [`LlmClient`], and [`client`](super::client) stacks that layer around each
//! built-in provider, whose clients send every request exactly once. An attempt
//! that fails with a retryable [`LlmError`] (see [`LlmError::is_retryable`]) is sent
//! again after a wait: the provider's `Retry-After` when it gave one (capped), else
//! an exponential backoff shortened by a random jitter. Each attempt has its own
//! timeout, and the whole call an overall deadline after which nothing is retried.
//!
//! The loop runs on tokio's clock, so tests can drive it with a paused clock and a
//! fake operation, and set the jitter to zero to make every wait exact.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::layer::{LlmLayer, call_names};
use super::transport::millis;
use super::{LlmClient, LlmError, LlmRequest, LlmResponse, LlmSettings};

/// How failed LLM requests are retried, and how long a call may take.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    jitter: f64,
    max_retry_after: Duration,
    attempt_timeout: Option<Duration>,
    deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Three retries, backoff from 500 ms doubling up to 30 s with 20% jitter,
    /// `Retry-After` honoured up to 60 s, no timeouts.
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            jitter: 0.2,
            max_retry_after: Duration::from_secs(60),
            attempt_timeout: None,
            deadline: None,
        }
    }
}

impl RetryPolicy {
    /// How many times a failed attempt is retried.
    pub fn retries(&self) -> u32 {
        self.max_retries
    }

    /// The wait before retry number `retry` (0 for the first): what the service
    /// asked for (capped) when it did, else the backoff.
    pub fn wait(&self, retry: u32, asked: Option<Duration>) -> Duration {
        match asked {
            Some(asked) => asked.min(self.max_retry_after),
            None => self.backoff(retry),
        }
    }

    /// Sets how many times a failed attempt is retried (so at most `n + 1` attempts).
    #[must_use]
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the wait before the first retry; each later one doubles it.
    #[must_use]
    pub fn initial_backoff(mut self, wait: Duration) -> Self {
        self.initial_backoff = wait;
        self
    }

    /// Sets the longest backoff between two attempts.
    #[must_use]
    pub fn max_backoff(mut self, wait: Duration) -> Self {
        self.max_backoff = wait;
        self
    }

    /// Sets the jitter: each backoff is shortened by a random part of up to this
    /// fraction of it (clamped to 0..=1). Zero makes waits exact, for tests.
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() { fraction.clamp(0.0, 1.0) } else { 0.0 };
        self
    }

    /// Sets the longest wait a provider's `Retry-After` can impose.
    #[must_use]
    pub fn max_retry_after(mut self, wait: Duration) -> Self {
        self.max_retry_after = wait;
        self
    }

    /// Sets the time limit of one attempt (`None`: no limit).
    #[must_use]
    pub fn attempt_timeout(mut self, limit: Option<Duration>) -> Self {
        self.attempt_timeout = limit;
        self
    }

    /// Sets the time limit of the whole call, retries and waits included (`None`: no limit).
    #[must_use]
    pub fn deadline(mut self, limit: Option<Duration>) -> Self {
        self.deadline = limit;
        self
    }

    /// The backoff before retry number `retry` (0 for the first retry), jitter included.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.checked_pow(retry).unwrap_or(u32::MAX);
        let full = self.initial_backoff.saturating_mul(factor).min(self.max_backoff);
        // Jitter only shortens the wait, so `max_backoff` stays a true upper bound.
        full.mul_f64(1.0 - self.jitter * fastrand::f64())
    }

    /// How long to wait after `error` before retry number `retry`.
    fn wait_before(&self, retry: u32, error: &LlmError) -> Duration {
        self.wait(retry, error.retry_after())
    }

    /// Runs `operation` until it succeeds, fails with an error that is not retryable,
    /// runs out of retries, or the deadline passes. `operation` gets the attempt
    /// number (0 for the first). `provider` and `model` name the call in logs and in
    /// the [`LlmError::Timeout`] an exceeded time limit gives.
    ///
    /// # Errors
    /// The last attempt's error, or [`LlmError::Timeout`] when a time limit cut an attempt short.
    pub async fn run<T, F, Fut>(&self, provider: &str, model: &str, mut operation: F) -> Result<T, LlmError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, LlmError>>,
    {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let error = match self.attempt(provider, model, started, operation(attempt)).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !error.is_retryable() || attempt >= self.max_retries {
                return Err(error);
            }
            let wait = self.wait_before(attempt, &error);
            if self.deadline.is_some_and(|limit| started.elapsed() + wait >= limit) {
                tracing::warn!(provider, model, attempt, error = %error, "LLM call deadline reached; not retrying");
                return Err(error);
            }
            tracing::warn!(provider, model, attempt, wait_ms = millis(wait), error = %error, "retrying LLM call");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One attempt, cut short by whichever comes first of its timeout and the deadline.
    async fn attempt<T>(
        &self,
        provider: &str,
        model: &str,
        started: Instant,
        attempt: impl Future<Output = Result<T, LlmError>>,
    ) -> Result<T, LlmError> {
        let left = self.deadline.map(|limit| (limit.saturating_sub(started.elapsed()), limit));
        let (limit, reported) = match (self.attempt_timeout, left) {
            (Some(timeout), Some((left, deadline))) if left < timeout => (left, deadline),
            (Some(timeout), _) => (timeout, timeout),
            (None, Some((left, deadline))) => (left, deadline),
            (None, None) => return attempt.await,
        };
        tokio::time::timeout(limit, attempt).await.unwrap_or_else(|_| {
            Err(LlmError::Timeout { provider: provider.to_owned(), model: model.to_owned(), after: reported })
        })
    }
}

/// The layer that retries failed requests of the client inside it, as its
/// [`RetryPolicy`] says: backoff, `Retry-After`, a time limit per attempt and an
/// overall deadline, all on tokio's clock.
///
/// [`client`](super::client) puts one around each built-in provider, and
/// [`RunnerBuilder::llm`](crate::runner::RunnerBuilder::llm) puts one (with the
/// configured policy) around a client that does not retry by itself. The wrapped
/// client reports [`LlmClient::retries`] as `true`.
///
/// ```
/// use std::sync::Arc;
/// use portia::llm::{LlmClient, LlmClientExt, Retry, RetryPolicy};
/// use portia::testing::ScriptedLlm;
///
/// let llm = Arc::new(ScriptedLlm::new()).with(Retry::new(RetryPolicy::default().max_retries(2)));
/// assert!(llm.retries());
/// ```
#[derive(Debug, Clone)]
pub struct Retry {
    policy: RetryPolicy,
    settings: Option<Arc<LlmSettings>>,
}

impl Retry {
    /// Retries as `policy` says. Calls are named in logs and timeout errors by the
    /// request's model (or its purpose) and the provider `llm`; see [`Retry::models`].
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy, settings: None }
    }

    /// Names calls by the provider and model `settings` resolve each request to
    /// (see [`LlmSettings::resolve`]).
    #[must_use]
    pub fn models(mut self, settings: LlmSettings) -> Self {
        self.settings = Some(Arc::new(settings));
        self
    }

    pub(crate) fn shared_models(mut self, settings: Arc<LlmSettings>) -> Self {
        self.settings = Some(settings);
        self
    }
}

impl LlmLayer for Retry {
    fn layer(&self, inner: Arc<dyn LlmClient>) -> Arc<dyn LlmClient> {
        Arc::new(Retrying { inner, retry: self.clone() })
    }
}

/// A client wrapped in [`Retry`].
#[derive(Debug)]
struct Retrying {
    inner: Arc<dyn LlmClient>,
    retry: Retry,
}

#[async_trait::async_trait]
impl LlmClient for Retrying {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        self.chat_ref(&request).await
    }

    /// Every attempt sends the one request, borrowed.
    async fn chat_ref(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let (provider, model) = call_names(self.retry.settings.as_deref(), request);
        let inner = &self.inner;
        self.retry.policy.run(&provider, &model, |_| inner.chat_ref(request)).await
    }

    fn retries(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::default()
            .initial_backoff(Duration::from_secs(1))
            .max_backoff(Duration::from_secs(5))
            .jitter(0.0);
        let waits: Vec<u64> = (0..5).map(|n| policy.backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn config_sets_retries_and_time_limits() {
        let config = crate::Config::builder().max_retries(7u32).request_timeout_secs(9u64).llm_deadline_secs(0u64);
        let policy = config.build().unwrap().llm_retry_policy();
        assert_eq!(policy.max_retries, 7);
        assert_eq!(policy.attempt_timeout, Some(Duration::from_secs(9)));
        assert_eq!(policy.deadline, None);
    }

    /// Counts how it is called; its first borrowed call fails with a 503.
    #[derive(Debug, Default)]
    struct Counting {
        owned: std::sync::atomic::AtomicUsize,
        borrowed: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl LlmClient for Counting {
        async fn chat(&self, _request: LlmRequest) -> Result<LlmResponse, LlmError> {
            self.owned.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(LlmResponse::text("by value"))
        }

        async fn chat_ref(&self, _request: &LlmRequest) -> Result<LlmResponse, LlmError> {
            if self.borrowed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                let message = "overloaded".into();
                let (provider, model) = ("p".into(), "m".into());
                return Err(LlmError::Http { provider, model, status: 503, message, retry_after: None, key_var: None });
            }
            Ok(LlmResponse::text("borrowed"))
        }
    }

    /// Every attempt, the retried one too, reaches the client inside as the one
    /// request borrowed, through the offline check: none is copied on its way.
    #[tokio::test(start_paused = true)]
    async fn the_retry_and_offline_layers_pass_the_request_on_borrowed() {
        use super::super::{LlmClientExt, Message, ModelRole, Offline};
        let inner = Arc::new(Counting::default());
        let policy = RetryPolicy::default().initial_backoff(Duration::from_millis(10)).jitter(0.0);
        let llm = inner.clone().with(Offline::unless_loopback("http://127.0.0.1:1/v1")).with(Retry::new(policy));
        let reply = llm.chat(LlmRequest::new(ModelRole::Execution, vec![Message::user("Hi")])).await.unwrap();
        assert_eq!(reply.text.as_deref(), Some("borrowed"));
        let calls = |n: &std::sync::atomic::AtomicUsize| n.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!((calls(&inner.owned), calls(&inner.borrowed)), (0, 2));
    }
}
