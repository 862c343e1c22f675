//! Sending one JSON request to a provider and turning every failure into a typed
//! [`LlmError`]. Provider modules build bodies and read replies; this module owns
//! the HTTP exchange, error messages and key redaction.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{LlmError, LlmProvider, Usage};
use crate::error::with_causes;
use crate::secret::Secret;

/// How much of a body that is not a provider error message is kept in an error.
const BODY_EXCERPT_CHARS: usize = 300;

/// What a provider's client keeps for every call: the shared HTTP client, the base
/// URL, the key, the request timeout and the rate limiters of its models.
#[derive(Debug)]
pub(crate) struct Account {
    pub(crate) http: reqwest::Client,
    pub(crate) base_url: String,
    pub(crate) key: Option<Secret>,
    /// Every credential of the account (the key; for Bedrock, the AWS keys and
    /// session token), kept to scrub from anything the provider echoes back.
    credentials: Vec<Secret>,
    pub(crate) timeout: Duration,
    limiters: std::sync::Arc<super::rate_limit::Limiters>,
    urls: crate::http::UrlMemo,
    /// The length of the latest request body written, to size the next one's buffer.
    body_len: AtomicUsize,
}

impl Account {
    /// `provider`'s account as the settings give it, on `http`'s connection pool.
    pub(crate) fn new(
        http: reqwest::Client,
        settings: &super::LlmSettings,
        provider: LlmProvider,
        limiters: std::sync::Arc<super::rate_limit::Limiters>,
    ) -> Self {
        let key = settings.key(provider);
        let mut credentials: Vec<Secret> = key.iter().cloned().collect();
        if let (LlmProvider::Bedrock, (Some(aws), _)) = (provider, settings.aws()) {
            let (id, secret, token) = aws.clone().into_parts();
            credentials.extend([id, secret].into_iter().chain(token));
        }
        Self {
            http,
            base_url: settings.url(provider),
            key,
            credentials,
            timeout: settings.timeout(),
            limiters,
            urls: crate::http::UrlMemo::default(),
            body_len: AtomicUsize::new(0),
        }
    }

    /// A call to `model` of `provider` at `url`, with no headers yet; a refused key
    /// is said to be `provider`'s variable.
    pub(crate) fn endpoint<'a>(&'a self, provider: LlmProvider, model: &'a str, url: String) -> Endpoint<'a> {
        Endpoint {
            http: &self.http,
            urls: &self.urls,
            body_len: &self.body_len,
            provider,
            model,
            url,
            headers: HeaderMap::new(),
            credentials: &self.credentials,
            key_var: provider.api_key_var(),
            timeout: self.timeout,
            limiter: Some(self.limiters.for_model(provider, model)),
        }
    }
}

/// Where and how one provider call is sent.
#[derive(Debug)]
pub(crate) struct Endpoint<'a> {
    pub(crate) http: &'a reqwest::Client,
    urls: &'a crate::http::UrlMemo,
    body_len: &'a AtomicUsize,
    pub(crate) provider: LlmProvider,
    pub(crate) model: &'a str,
    pub(crate) url: String,
    /// Authentication and version headers (values are marked sensitive).
    pub(crate) headers: HeaderMap,
    /// The account's credentials, kept only to scrub them from anything the provider echoes back.
    credentials: &'a [Secret],
    /// The variable to name when the provider refuses the key.
    pub(crate) key_var: Option<&'static str>,
    /// The HTTP client's per-request timeout, to report when it fires.
    pub(crate) timeout: Duration,
    /// The model's client-side rate limiter, told what the provider's headers say.
    pub(crate) limiter: Option<std::sync::Arc<super::rate_limit::ModelLimiter>>,
}

/// Whether a streamed reply goes on after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// More events are to come.
    More,
    /// The reply is complete.
    Done,
}

/// A successful exchange: the parsed body and how long it took.
#[derive(Debug)]
pub(crate) struct Reply<T = Value> {
    pub(crate) body: T,
    pub(crate) status: u16,
    pub(crate) latency: Duration,
}

impl Endpoint<'_> {
    fn provider_name(&self) -> String {
        self.provider.as_str().to_owned()
    }

    pub(crate) fn not_sent(&self, message: impl Into<String>) -> LlmError {
        LlmError::NotSent { provider: self.provider_name(), model: self.model.to_owned(), message: message.into() }
    }

    pub(crate) fn invalid(&self, message: impl Into<String>) -> LlmError {
        LlmError::InvalidResponse {
            provider: self.provider_name(),
            model: self.model.to_owned(),
            message: self.redact(&message.into()),
        }
    }

    /// Posts `body` once. Never retries, nor checks offline mode: those are the
    /// [`Retry`](super::Retry) and [`Offline`](super::Offline) layers' jobs.
    pub(crate) async fn post(&self, body: impl Serialize) -> Result<Reply, LlmError> {
        self.post_as(body).await
    }

    /// [`post`](Self::post), with the reply read straight into a `T` rather than a
    /// JSON tree: the fields `T` leaves out are skipped as they are read.
    pub(crate) async fn post_as<T: DeserializeOwned>(&self, body: impl Serialize) -> Result<Reply<T>, LlmError> {
        let started = Instant::now();
        let sent = self.request(body)?.send().await;
        let mut response = sent.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        // Taken, not copied: reading the body needs none of them.
        let headers = std::mem::take(response.headers_mut());
        let bytes = response.bytes().await.map_err(|e| self.transport_error(&e))?;
        self.observe_limits(status.as_u16(), &headers, &bytes);
        let latency = started.elapsed();
        if !status.is_success() {
            tracing::debug!(provider = %self.provider, model = self.model, status = status.as_u16(), latency_ms = millis(latency), "LLM call failed");
            return Err(self.http_error(status.as_u16(), &headers, &bytes));
        }
        let body = self.parse(&bytes)?;
        Ok(Reply { body, status: status.as_u16(), latency })
    }

    /// Posts `body`, which asks for a streamed reply, once, and hands each
    /// server-sent event (its name, if it has one, and its data) to `on_event` until
    /// that says the reply is complete; the reply's body is then `null`, for the
    /// caller to fill in from what it read. A stream that breaks or ends before then
    /// is a [`LlmError::Connection`], which the [`Retry`](super::Retry) layer
    /// retries. A server that answers with plain JSON instead gets it read as
    /// [`post`](Self::post) would, into the reply's body.
    pub(crate) async fn post_events(
        &self,
        body: impl Serialize,
        on_event: impl FnMut(Option<&str>, &str) -> Result<Flow, String>,
    ) -> Result<Reply, LlmError> {
        let started = Instant::now();
        let sent = self.request(body)?.send().await;
        let mut response = sent.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        // Taken, not copied: reading the body needs none of them.
        let headers = std::mem::take(response.headers_mut());
        if !status.is_success() {
            let bytes = response.bytes().await.map_err(|e| self.transport_error(&e))?;
            self.observe_limits(status.as_u16(), &headers, &bytes);
            return Err(self.http_error(status.as_u16(), &headers, &bytes));
        }
        let status = status.as_u16();
        if !is_event_stream(&headers) {
            let bytes = response.bytes().await.map_err(|e| self.transport_error(&e))?;
            self.observe_limits(status, &headers, &bytes);
            if !looks_like_events(&bytes) {
                // A compatible server that ignores `stream: true` answers whole.
                let body = self.parse(&bytes)?;
                return Ok(Reply { body, status, latency: started.elapsed() });
            }
            // A server, or a proxy before it, that streams under another content type.
            let whole = futures_util::stream::once(async move { Ok::<_, reqwest::Error>(bytes) });
            return self.read_events(whole, status, started, on_event).await;
        }
        self.observe_limits(status, &headers, &[]);
        let chunks = futures_util::stream::unfold(response, |mut response| async move {
            let chunk = response.chunk().await.transpose()?;
            Some((chunk, response))
        });
        self.read_events(chunks, status, started, on_event).await
    }

    /// Hands each Server-Sent Event in `chunks` to `on_event` until it says the
    /// reply is complete.
    async fn read_events(
        &self,
        chunks: impl futures_util::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send,
        status: u16,
        started: Instant,
        mut on_event: impl FnMut(Option<&str>, &str) -> Result<Flow, String>,
    ) -> Result<Reply, LlmError> {
        let mut events = std::pin::pin!(sse_stream::SseStream::from_bytes_stream(chunks));
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| self.broken(&e.to_string()))?;
            let Some(data) = event.data.as_deref() else { continue };
            if on_event(event.event.as_deref(), data).map_err(|e| self.invalid(e))? == Flow::Done {
                return Ok(Reply { body: Value::Null, status, latency: started.elapsed() });
            }
        }
        Err(self.broken("the reply stream ended before the reply was complete"))
    }

    /// Posts `body`, which asks for a reply in AWS's binary event-stream framing
    /// (`application/vnd.amazon.eventstream`), once, and hands each piece of the body
    /// to `on_bytes` until that says the reply is complete; the reply's body is then
    /// `null`, for the caller to fill in. As for [`post_events`](Self::post_events),
    /// a stream that ends early is a [`LlmError::Connection`], and a plain JSON answer
    /// is read whole.
    pub(crate) async fn post_frames(
        &self,
        body: &Value,
        mut on_bytes: impl FnMut(&[u8]) -> Result<Flow, String>,
    ) -> Result<Reply, LlmError> {
        let started = Instant::now();
        let sent = self.post_to_url().headers(self.headers.clone()).json(body).send().await;
        let mut response = sent.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        // Taken, not copied: reading the body needs none of them.
        let headers = std::mem::take(response.headers_mut());
        let content_type = headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !status.is_success() || !content_type.contains("amazon.eventstream") {
            let bytes = response.bytes().await.map_err(|e| self.transport_error(&e))?;
            self.observe_limits(status.as_u16(), &headers, &bytes);
            if !status.is_success() {
                return Err(self.http_error(status.as_u16(), &headers, &bytes));
            }
            let body = self.parse(&bytes)?;
            return Ok(Reply { body, status: status.as_u16(), latency: started.elapsed() });
        }
        self.observe_limits(status.as_u16(), &headers, &[]);
        while let Some(chunk) = response.chunk().await.map_err(|e| self.broken(&with_causes(&e)))? {
            if on_bytes(&chunk).map_err(|e| self.invalid(e))? == Flow::Done {
                return Ok(Reply { body: Value::Null, status: status.as_u16(), latency: started.elapsed() });
            }
        }
        Err(self.broken("the reply stream ended before the reply was complete"))
    }

    /// The POST of `body`, as JSON text: `body` is dropped before the request is sent,
    /// so that only the text is held while the reply is awaited.
    ///
    /// The buffer starts a quarter larger than the account's latest body: the bodies
    /// of one client are alike in size (a few KB of prompt), and writing into
    /// serde_json's default 128 bytes grew it by doubling, copying it each time.
    fn request(&self, body: impl Serialize) -> Result<reqwest::RequestBuilder, LlmError> {
        let latest = self.body_len.load(Ordering::Relaxed);
        let mut text = Vec::with_capacity(latest + latest / 4);
        serde_json::to_writer(&mut text, &body).map_err(|e| self.not_sent(e.to_string()))?;
        drop(body);
        self.body_len.store(text.len(), Ordering::Relaxed);
        // The text is held until the reply: give the spare room back (shrinking in
        // place, without a copy), as it would be held by every call in flight.
        text.shrink_to_fit();
        let json = reqwest::header::HeaderValue::from_static("application/json");
        Ok(self.post_to_url().headers(self.headers.clone()).header(reqwest::header::CONTENT_TYPE, json).body(text))
    }

    fn post_to_url(&self) -> reqwest::RequestBuilder {
        self.urls.request(self.http, reqwest::Method::POST, &self.url)
    }

    /// `bytes` read as a `T`. A body that is not JSON is shown in part; JSON of
    /// another shape is named by what did not fit.
    fn parse<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, LlmError> {
        serde_json::from_slice(bytes).map_err(|e| {
            if e.is_data() {
                self.unexpected_shape(&e)
            } else {
                let start = excerpt(self.scrubbed(bytes).as_bytes());
                self.invalid(format!("the body is not valid JSON ({e}); it starts with: {start}"))
            }
        })
    }

    /// A reply already read as JSON (a stream's pieces put together), read as a `T`.
    pub(crate) fn read<T: DeserializeOwned>(&self, body: Value) -> Result<T, LlmError> {
        serde_json::from_value(body).map_err(|e| self.unexpected_shape(&e))
    }

    fn unexpected_shape(&self, error: &serde_json::Error) -> LlmError {
        self.invalid(format!("the reply is not in the expected shape: {error}"))
    }

    fn broken(&self, message: &str) -> LlmError {
        LlmError::Connection {
            provider: self.provider_name(),
            model: self.model.to_owned(),
            message: self.redact(&format!("the reply stream broke: {message}")),
        }
    }

    /// Tells the model's rate limiter what the provider's headers (and, for a 429,
    /// its body) say.
    fn observe_limits(&self, status: u16, headers: &HeaderMap, body: &[u8]) {
        if let Some(limiter) = &self.limiter {
            let asked = (status == 429).then(|| retry_after(headers).or_else(|| retry_delay(body))).flatten();
            limiter.observe(asked, headers);
        }
    }

    /// The one DEBUG line per successful call: who, how fast, how much. Never a body.
    pub(crate) fn log_success<T>(&self, reply: &Reply<T>, usage: Usage) {
        tracing::debug!(
            provider = %self.provider,
            model = self.model,
            status = reply.status,
            latency_ms = millis(reply.latency),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            "LLM call"
        );
    }

    fn transport_error(&self, error: &reqwest::Error) -> LlmError {
        // A connection that timed out is a timeout too, but of the shorter connect limit.
        if error.is_timeout() && error.is_connect() {
            let waited = crate::http::connect_timeout(self.timeout);
            return LlmError::Connection {
                provider: self.provider_name(),
                model: self.model.to_owned(),
                message: format!("no connection (TCP and TLS) within {waited:?}: {}", self.redact(&with_causes(error))),
            };
        }
        if error.is_timeout() {
            return LlmError::Timeout {
                provider: self.provider_name(),
                model: self.model.to_owned(),
                after: self.timeout,
            };
        }
        LlmError::Connection {
            provider: self.provider_name(),
            model: self.model.to_owned(),
            message: self.redact(&with_causes(error)),
        }
    }

    fn http_error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> LlmError {
        LlmError::Http {
            provider: self.provider_name(),
            model: self.model.to_owned(),
            status,
            message: error_message(self.scrubbed(body).as_bytes()),
            retry_after: retry_after(headers).or_else(|| retry_delay(body)),
            key_var: matches!(status, 401 | 403).then(|| self.key_var.map(str::to_owned)).flatten(),
        }
    }

    /// Adds a header that carries the key, marked sensitive so `Debug` output hides it.
    /// A key HTTP cannot carry is named by its variable (never shown).
    pub(crate) fn add_key_header(&mut self, name: &'static str, value: &str) -> Result<(), LlmError> {
        let mut value = HeaderValue::from_str(value).map_err(|_| {
            let key = self.key_var.map_or_else(|| "the API key".to_owned(), |var| format!("the key in {var}"));
            self.not_sent(format!(
                "{key} holds characters an HTTP header cannot carry (a control character, such as a \
                 newline): set it again without them"
            ))
        })?;
        value.set_sensitive(true);
        self.headers.insert(HeaderName::from_static(name), value);
        Ok(())
    }

    /// Providers sometimes quote the key or the signed headers they were sent; no
    /// credential may reach an error.
    fn redact(&self, text: &str) -> String {
        crate::secret::redact(text, self.credentials.iter().map(Secret::expose))
    }

    /// `body` as text with the credentials scrubbed, before any of it is cut to an
    /// excerpt: a cut through a key would leave part of it that no longer matches.
    fn scrubbed(&self, body: &[u8]) -> String {
        self.redact(&String::from_utf8_lossy(body))
    }
}

/// Whether a reply is a stream of Server-Sent Events.
/// Whether a body labelled otherwise is Server-Sent Events all the same: it starts
/// with an SSE field rather than JSON.
fn looks_like_events(body: &[u8]) -> bool {
    let body = body.trim_ascii_start();
    [&b"data:"[..], b"event:", b"id:", b":"].iter().any(|field| body.starts_with(field))
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    let content_type = headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    content_type.is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

/// The provider's own message, else the start of the raw body.
fn error_message(body: &[u8]) -> String {
    crate::text::api_error_message(body).unwrap_or_else(|| excerpt(body))
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    crate::text::clip(text, BODY_EXCERPT_CHARS, "…")
}

/// `retry-after-ms` (more precise, sent by OpenAI) or `Retry-After` in seconds.
/// The HTTP-date form of `Retry-After` is ignored: the backoff applies instead.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        let text = headers.get(name)?.to_str().ok()?;
        text.trim().parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0)
    };
    let from_ms = number("retry-after-ms").and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok());
    from_ms.or_else(|| number("retry-after").and_then(|s| Duration::try_from_secs_f64(s).ok()))
}

/// The wait Google's APIs ask for in the body rather than a header: a
/// `google.rpc.RetryInfo` detail's `retryDelay`, such as `"37s"` or `"0.5s"`.
fn retry_delay(body: &[u8]) -> Option<Duration> {
    let error: Value = serde_json::from_slice(body).ok()?;
    let details = error.pointer("/error/details")?.as_array()?;
    let delay = details.iter().find_map(|d| d.get("retryDelay").and_then(Value::as_str))?;
    let seconds: f64 = delay.trim().strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_prefers_the_providers_own_words() {
        assert_eq!(error_message(br#"{"error": {"message": "bad model", "type": "x"}}"#), "bad model");
        assert_eq!(error_message(br#"{"type":"error","error":{"type":"x","message":"overloaded"}}"#), "overloaded");
        assert_eq!(error_message(br#"{"error": "plain"}"#), "plain");
        assert_eq!(error_message(br#"{"detail": "nope"}"#), "nope");
        assert_eq!(error_message(b"<html>502</html>"), "<html>502</html>");
        assert_eq!(error_message(b""), "(empty body)");
        let long = "é".repeat(1000);
        assert_eq!(error_message(long.as_bytes()).chars().count(), BODY_EXCERPT_CHARS + 1);
    }

    #[test]
    fn googles_retry_delay_is_read_from_the_body() {
        let body = br#"{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}}"#;
        assert_eq!(retry_delay(body), Some(Duration::from_secs(37)));
        assert_eq!(
            retry_delay(br#"{"error": {"details": [{"retryDelay": "0.5s"}]}}"#),
            Some(Duration::from_millis(500))
        );
        assert_eq!(retry_delay(br#"{"error": {"message": "x"}}"#), None);
        assert_eq!(retry_delay(b"not json"), None);
    }

    #[test]
    fn retry_after_reads_both_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        headers.insert("retry-after-ms", HeaderValue::from_static("-1"));
        headers.insert("retry-after", HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("1e300"));
        assert_eq!(retry_after(&headers), None);
    }
}
