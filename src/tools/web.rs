//! What the web API tools share: keys, base URLs, the HTTP client, and turning
//! HTTP failures into soft errors (worth retrying) or hard ones (not).

use std::time::Duration;

use reqwest::StatusCode;

use crate::config::Config;
use crate::error::with_causes;
use crate::secret::Secret;
use crate::tool::{RetryHint, ToolError};

/// API messages are cut to this many characters: enough to act on, not a whole HTML page.
const MESSAGE_LIMIT: usize = 300;

/// A web API as one tool sees it: which service, its key, where it is served and how
/// long a request may take, all fixed when the tool is made.
#[derive(Debug, Clone)]
pub(super) struct Api {
    /// The service's name, for messages.
    pub(super) service: &'static str,
    /// The variable that provides the key, for messages on how to fix a missing or bad one.
    pub(super) key_var: &'static str,
    key: Option<Secret>,
    base_url: String,
    timeout: Duration,
    client: reqwest::Client,
    /// How long `client` waits for a connection, to report when that runs out.
    connect_timeout: Duration,
    urls: crate::http::UrlMemo,
}

impl Api {
    /// `service` at `default_base_url`, with no key and the default request timeout.
    pub(super) fn new(service: &'static str, key_var: &'static str, default_base_url: &str) -> Self {
        let timeout = Config::default().request_timeout();
        let client = crate::http::client(timeout, crate::http::Pool::default());
        let (base_url, connect_timeout) = (default_base_url.to_owned(), crate::http::connect_timeout(timeout));
        let urls = crate::http::UrlMemo::default();
        Self { service, key_var, key: None, base_url, timeout, client, connect_timeout, urls }
    }

    /// This API with `key`, and the base URL (when given) and request timeout of `config`.
    pub(super) fn configured(mut self, key: Option<Secret>, base_url: Option<&String>, config: &Config) -> Self {
        self.set_key(key);
        self.set_base_url(base_url.map_or("", String::as_str));
        self.set_timeout(config.request_timeout());
        let pool = crate::http::Pool {
            max_idle_per_host: config.http_max_idle_per_host,
            idle_timeout: config.http_idle_timeout(),
        };
        if pool != crate::http::Pool::default() {
            self.client = crate::http::client(self.timeout, pool);
            self.connect_timeout = crate::http::connect_timeout(self.timeout);
        }
        self
    }

    /// Sets the key; a blank one counts as none.
    pub(super) fn set_key(&mut self, key: Option<Secret>) {
        self.key = key.filter(|k| !k.expose().trim().is_empty());
    }

    /// Serves from `url` (a trailing slash is dropped) unless it is blank.
    pub(super) fn set_base_url(&mut self, url: &str) {
        let url = url.trim().trim_end_matches('/');
        if !url.is_empty() {
            url.clone_into(&mut self.base_url);
        }
    }

    /// Gives each request `timeout` to answer.
    pub(super) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The key, or a hard error naming the variable that provides it.
    pub(super) fn key(&self) -> Result<&str, ToolError> {
        self.key.as_ref().map(|k| k.expose().trim()).ok_or_else(|| {
            ToolError::hard(format!("{} needs an API key: set the environment variable {}", self.service, self.key_var))
        })
    }

    /// The URL of `path` (which starts with `/`), if offline mode allows it.
    pub(super) fn url(&self, path: &str) -> Result<String, ToolError> {
        let url = format!("{}{path}", self.base_url);
        crate::http::check_allowed(&url).map_err(ToolError::hard)?;
        Ok(url)
    }

    /// A request to `url`.
    pub(super) fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.urls.request(&self.client, method, url)
    }

    /// Sends `request` and reads the answer. A request that gets no answer is a soft
    /// error the service caused (see [`RetryHint`]).
    pub(super) async fn exchange(&self, request: reqwest::RequestBuilder) -> Result<Answer, ToolError> {
        let limits = (self.timeout, self.connect_timeout);
        let (service, timeout) = (self.service, self.timeout);
        let response = request.timeout(timeout).send().await.map_err(|e| send_error(service, e, limits))?;
        let status = response.status();
        let retry_after = crate::llm::retry_after(response.headers());
        let text = response.text().await.map_err(|e| send_error(service, e, limits))?;
        Ok(Answer { status, text, retry_after })
    }
}

/// An HTTP answer: its status, its text, and the wait its `Retry-After` asked for.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) text: String,
    pub(super) retry_after: Option<Duration>,
}

/// A request that got no HTTP answer: worth sending again. Only a refused
/// connection certainly did not reach the service. The URL is dropped from the
/// message because it may carry a key in its query. `limits` are the request's
/// timeout and the client's connect timeout.
fn send_error(service: &str, error: reqwest::Error, (timeout, connect_timeout): (Duration, Duration)) -> ToolError {
    if error.is_timeout() && error.is_connect() {
        let message = format!("could not connect to {service} within {connect_timeout:?} (TCP and TLS); try again");
        return ToolError::transient(message, RetryHint::not_performed());
    }
    if error.is_timeout() {
        let message = format!("{service} did not answer within {timeout:?}; try again");
        return ToolError::transient(message, RetryHint::unknown_outcome());
    }
    let (kind, hint) = if error.is_connect() {
        ("could not connect to", RetryHint::not_performed())
    } else {
        ("lost the connection to", RetryHint::unknown_outcome())
    };
    ToolError::transient(format!("{kind} {service}: {}", with_causes(&error.without_url())), hint)
}

/// A reply that could not be read: usually a transient proxy or server fault.
pub(super) fn garbled(service: &str, error: &serde_json::Error) -> ToolError {
    let message = format!("{service} sent a reply that could not be read ({error}); try again");
    ToolError::transient(message, RetryHint::unknown_outcome())
}

/// An error status as a soft or hard error, with the service's `Retry-After`
/// passed on for a rate limit or a server error.
pub(super) fn status_error(api: &Api, answer: &Answer, message: &str, soft_client: &[u16]) -> ToolError {
    classify(api.service, answer.status, message, api.key_var, soft_client, answer.retry_after)
}

/// Authentication failures are hard (a new attempt sends the same key), rate limits
/// and server errors are soft and the service's doing (a 429 was not acted on), and
/// other client errors are hard unless `soft_client` lists them (statuses that mean
/// the arguments were wrong, which the agent can fix).
fn classify(
    service: &str,
    status: StatusCode,
    message: &str,
    key_var: &str,
    soft_client: &[u16],
    retry_after: Option<Duration>,
) -> ToolError {
    let code = status.as_u16();
    match code {
        401 | 403 => ToolError::hard(format!(
            "{service} refused the API key (HTTP {code}: {message}); check the environment variable {key_var}"
        )),
        408 | 429 => {
            let hint = if code == 429 { RetryHint::not_performed() } else { RetryHint::unknown_outcome() };
            let busy = format!("{service} is busy (HTTP {code}: {message}); try again shortly");
            ToolError::transient(busy, hint.retry_after(retry_after))
        }
        _ if status.is_server_error() => ToolError::transient(
            format!("{service} had a server error (HTTP {code}: {message}); try again"),
            RetryHint::unknown_outcome().retry_after(retry_after),
        ),
        _ if soft_client.contains(&code) => {
            ToolError::soft(format!("{service} could not answer (HTTP {code}: {message})"))
        }
        _ => ToolError::hard(format!("{service} refused the request (HTTP {code}: {message})")),
    }
}

/// The human-readable message of an API error body, with `key` blanked out in case
/// the API echoed it.
pub(super) fn api_message(body: &str, key: &str) -> String {
    let message = crate::text::api_error_message(body.as_bytes()).unwrap_or_else(|| body.trim().to_owned());
    let message = crate::secret::redact(&message, [key]);
    if message.is_empty() { "no details given".to_owned() } else { crate::text::clip(&message, MESSAGE_LIMIT, "…") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_configured_idle_bound_reaches_the_tools_client() {
        let config = Config::builder().http_max_idle_per_host(2usize).build().unwrap();
        let api = Api::new("Test", "TEST_API_KEY", "http://127.0.0.1:1").configured(None, None, &config);
        assert_eq!(crate::http::tests::closed_after_burst(&api.client, 6, 4).await, 4);
    }

    #[test]
    fn messages_are_found_in_common_shapes_and_keys_blanked() {
        assert_eq!(api_message(r#"{"cod":"404","message":"city not found"}"#, "k"), "city not found");
        assert_eq!(api_message(r#"{"detail":{"error":"Unauthorized"}}"#, "k"), "Unauthorized");
        assert_eq!(api_message(r#"{"error":{"message":"bad"}}"#, "k"), "bad");
        assert_eq!(api_message("plain text with sk-123", "sk-123"), "plain text with [redacted]");
        assert_eq!(api_message("", "k"), "no details given");
        assert_eq!(api_message(&"x".repeat(400), "k").chars().count(), MESSAGE_LIMIT + 1);
    }

    #[test]
    fn statuses_split_into_transient_soft_and_hard() {
        let wait = Some(Duration::from_secs(3));
        let error =
            |code: u16, soft: &[u16]| classify("Api", StatusCode::from_u16(code).unwrap(), "m", "API_KEY", soft, wait);
        assert!(matches!(error(401, &[]), ToolError::Hard(m) if m.contains("API_KEY")));
        assert!(
            matches!(error(429, &[]), ToolError::Transient { hint, .. } if hint.not_performed && hint.retry_after == wait)
        );
        assert!(matches!(error(503, &[]), ToolError::Transient { hint, .. } if !hint.not_performed));
        assert!(!error(404, &[]).is_soft());
        assert!(matches!(error(404, &[404]), ToolError::Soft(_)), "the arguments were wrong: for the model");
    }

    #[test]
    fn blank_keys_are_missing() {
        let mut api = Api::new("Tavily", "TAVILY_API_KEY", "https://api.tavily.com");
        api.set_key(Some(Secret::new("  ")));
        let err = api.key().unwrap_err();
        assert!(matches!(err, ToolError::Hard(m) if m.contains("TAVILY_API_KEY")));
    }

    #[test]
    fn base_urls_lose_their_trailing_slash_and_blank_ones_are_ignored() {
        // Loopback, which offline mode (set by other tests of this process) allows.
        let mut api = Api::new("Tavily", "TAVILY_API_KEY", "http://127.0.0.1:9");
        api.set_base_url("  ");
        assert_eq!(api.url("/search").unwrap(), "http://127.0.0.1:9/search");
        api.set_base_url("http://127.0.0.1:9/v1/");
        assert_eq!(api.url("/search").unwrap(), "http://127.0.0.1:9/v1/search");
    }
}
