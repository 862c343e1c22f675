//! [`LlmError`]: how an LLM call failed.

use std::time::Duration;

/// An LLM call that failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// The provider answered with an error status.
    #[error("{provider} ({model}) returned HTTP {status}: {message}{}", hint(.status, .key_var))]
    Http {
        /// The provider.
        provider: String,
        /// The model asked for.
        model: String,
        /// The HTTP status.
        status: u16,
        /// The provider's own message.
        message: String,
        /// How long the provider asked us to wait, if it did.
        retry_after: Option<Duration>,
        /// The environment variable holding the key, for authentication failures.
        key_var: Option<String>,
    },
    /// The request could not be sent or its answer not received.
    #[error("could not reach {provider} ({model}): {message}")]
    Connection {
        /// The provider.
        provider: String,
        /// The model asked for.
        model: String,
        /// What the HTTP client reported.
        message: String,
    },
    /// The request took longer than allowed.
    #[error("{provider} ({model}) did not answer within {after:?}")]
    Timeout {
        /// The provider.
        provider: String,
        /// The model asked for.
        model: String,
        /// The limit that was reached.
        after: Duration,
    },
    /// The provider's answer could not be understood.
    #[error("{provider} ({model}) sent a reply that could not be read: {message}")]
    InvalidResponse {
        /// The provider.
        provider: String,
        /// The model asked for.
        model: String,
        /// What was wrong with it.
        message: String,
    },
    /// A structured reply did not fit the wanted shape, even after one re-ask.
    #[error("the model's reply does not fit the {schema} schema: {message}")]
    Structured {
        /// The schema's name.
        schema: String,
        /// The parse error.
        message: String,
    },
    /// The provider needs an API key that is not set.
    #[error("missing API key for {provider}: set the environment variable {env_var}")]
    MissingApiKey {
        /// The provider.
        provider: String,
        /// The environment variable that provides the key.
        env_var: String,
    },
    /// The request was refused before it was sent: offline mode (`PORTIA_OFFLINE`),
    /// an invalid URL or key, or a conversation the provider's format cannot carry.
    #[error("the request to {provider} ({model}) was not sent: {message}")]
    NotSent {
        /// The provider.
        provider: String,
        /// The model asked for.
        model: String,
        /// Why it was not sent.
        message: String,
    },
    /// The model asked was unavailable, and so was every fallback model tried, or
    /// one refused the request (see [`Fallback`](crate::llm::Fallback)). Both ends
    /// are kept: the first model's error is usually the one to mend.
    #[error("{first}; then the fallback {model} failed too: {last}")]
    FellBack {
        /// The error of the model the request went to first.
        first: Box<LlmError>,
        /// The fallback model tried last, as `provider/model`.
        model: String,
        /// Its error, which decides whether the call may be retried.
        last: Box<LlmError>,
    },
    /// The client was misused (for example a test double called when nothing was scripted).
    #[error("{0}")]
    Other(String),
}

fn hint(status: &u16, key_var: &Option<String>) -> String {
    match (status, key_var) {
        (401 | 403, Some(var)) => format!(" (check the API key in {var})"),
        _ => String::new(),
    }
}

impl LlmError {
    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Http { status, .. } => matches!(status, 408 | 409 | 429 | 500 | 502 | 503 | 504 | 529),
            Self::Connection { .. } | Self::Timeout { .. } | Self::InvalidResponse { .. } => true,
            Self::Structured { .. } | Self::MissingApiKey { .. } | Self::NotSent { .. } | Self::Other(_) => false,
            Self::FellBack { last, .. } => last.is_retryable(),
        }
    }

    /// Whether the error says the provider or model is down or overloaded, so that
    /// another model may serve the request (see [`Fallback`](crate::llm::Fallback)):
    /// a 5xx, a 408, a 429 with no usable `Retry-After` (none, or more than a
    /// minute away), a connection that failed or timed out. A 400 and other refusals
    /// of the request itself are not: the next model would refuse it too.
    pub fn is_unavailable(&self) -> bool {
        const USABLE_WAIT: Duration = Duration::from_secs(60);
        match self {
            Self::Http { status: 429, retry_after, .. } => retry_after.is_none_or(|wait| wait > USABLE_WAIT),
            Self::Http { status, .. } => *status == 408 || (500..=599).contains(status),
            Self::Connection { .. } | Self::Timeout { .. } => true,
            Self::FellBack { last, .. } => last.is_unavailable(),
            _ => false,
        }
    }

    /// How long the provider asked us to wait before retrying, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Http { retry_after, .. } => *retry_after,
            Self::FellBack { last, .. } => last.retry_after(),
            _ => None,
        }
    }
}
