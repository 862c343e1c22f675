//! Client-side rate limits per provider and model: requests and tokens per minute
//! from the settings, tightened by what the provider's own headers say.
//!
//! One [`Limiters`] registry belongs to each client [`client`](super::client)
//! builds, so every workflow of a runner (and of a worker, which runs on one) draws
//! from the same budget for a model. Its layer sits outside the retries and their
//! time limits: a request waits for the limiter first, and only then is its
//! attempt timed. The limits are GCRA cells from `governor` on tokio's clock, so a
//! paused test clock drives them. A provider that says it has no requests or tokens
//! left until some moment (`x-ratelimit-remaining-*` and `x-ratelimit-reset-*`,
//! `anthropic-ratelimit-*`) or answers 429 with a `Retry-After` pauses the model's
//! calls until then.
//!
//! A wait is logged, and told to whoever runs the call inside a
//! [`LimiterWaits::scope`]: the runner's metered client, which leaves it out of the
//! call's latency and makes one of [`NOTABLE_WAIT`] or more an event of the workflow.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use super::layer::LlmLayer;
use super::schema::{SentSchema, portable_shared};
use super::transport::millis;
use super::{LlmClient, LlmError, LlmProvider, LlmRequest, LlmResponse, LlmSettings, ModelRef};

/// How many requests and tokens one model may be sent per minute; `None` is no limit.
///
/// ```
/// use portia::llm::{LlmProvider, LlmSettings, RateLimit};
///
/// let settings = LlmSettings::new(LlmProvider::OpenAi)
///     .rate_limit(RateLimit::per_minute(500, 200_000))
///     .model_rate_limit("openai/gpt-4.1", RateLimit::requests_per_minute(60));
/// assert_eq!(settings.rate_limit_for("gpt-4.1").requests_per_minute, Some(60));
/// assert_eq!(settings.rate_limit_for("gpt-4.1-mini").tokens_per_minute, Some(200_000));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RateLimit {
    /// Requests per minute.
    pub requests_per_minute: Option<u32>,
    /// Prompt tokens per minute, as estimated before sending (four characters a token).
    pub tokens_per_minute: Option<u32>,
}

impl RateLimit {
    /// At most `requests` requests and `tokens` prompt tokens a minute.
    pub fn per_minute(requests: u32, tokens: u32) -> Self {
        Self { requests_per_minute: Some(requests), tokens_per_minute: Some(tokens) }
    }

    /// At most `requests` requests a minute, tokens unlimited.
    pub fn requests_per_minute(requests: u32) -> Self {
        Self { requests_per_minute: Some(requests), tokens_per_minute: None }
    }

    /// At most `tokens` prompt tokens a minute, requests unlimited.
    pub fn tokens_per_minute(tokens: u32) -> Self {
        Self { requests_per_minute: None, tokens_per_minute: Some(tokens) }
    }

    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_minute.is_none() && self.tokens_per_minute.is_none()
    }
}

/// governor's clock, read from tokio's, so a paused runtime moves it.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Cells = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// A GCRA limit: `per_minute` cells a minute, in bursts of at most `burst`.
#[derive(Debug)]
struct Limit {
    cells: Cells,
    burst: NonZeroU32,
    clock: TokioClock,
}

impl Limit {
    fn new(per_minute: u32, burst: u32, clock: &TokioClock) -> Option<Self> {
        let per_minute = NonZeroU32::new(per_minute)?;
        let burst = NonZeroU32::new(burst.clamp(1, per_minute.get())).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs(60) / per_minute.get();
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))?.allow_burst(burst);
        Some(Self { cells: RateLimiter::direct_with_clock(quota, clock.clone()), burst, clock: clock.clone() })
    }

    /// Waits until `n` cells (at most a burst) are free, and takes them.
    async fn take(&self, n: u32) {
        let n = NonZeroU32::new(n.min(self.burst.get())).unwrap_or(NonZeroU32::MIN);
        loop {
            match self.cells.check_n(n) {
                Ok(Ok(())) | Err(_) => return,
                Ok(Err(not_until)) => tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await,
            }
        }
    }
}

/// The limits of one model, shared by every call to it.
#[derive(Debug)]
pub(crate) struct ModelLimiter {
    requests: Option<Limit>,
    tokens: Option<Limit>,
    /// No call goes out before this moment: what the provider last asked for.
    paused_until: Mutex<Option<Instant>>,
}

impl ModelLimiter {
    fn new(limit: RateLimit, clock: &TokioClock) -> Self {
        // Requests come in bursts of at most a tenth of a second's worth, so a minute's
        // allowance is never spent in one go; tokens in one second's worth, so a long
        // prompt is not held back forever.
        let requests = limit.requests_per_minute.and_then(|rpm| Limit::new(rpm, rpm / 600, clock));
        let tokens = limit.tokens_per_minute.and_then(|tpm| Limit::new(tpm, tpm / 60, clock));
        Self { requests, tokens, paused_until: Mutex::new(None) }
    }

    /// Whether a call's tokens count against a limit.
    pub(crate) fn counts_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Waits until a request of about `tokens` prompt tokens may go out; returns how long it waited.
    pub(crate) async fn acquire(&self, tokens: u32) -> Duration {
        let started = Instant::now();
        self.wait_out_pause().await;
        if let Some(requests) = &self.requests {
            requests.take(1).await;
        }
        if let Some(limit) = &self.tokens {
            limit.take(tokens).await;
        }
        self.wait_out_pause().await;
        started.elapsed()
    }

    async fn wait_out_pause(&self) {
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(PoisonError::into_inner);
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    /// Pauses every call to the model for `wait` from now (a longer pause stays).
    pub(crate) fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait.min(MAX_PAUSE);
        let mut paused = self.paused_until.lock().unwrap_or_else(PoisonError::into_inner);
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    /// Reads what the provider said of its limits: the wait a 429 `asked` for, else
    /// an allowance its headers say is spent.
    pub(crate) fn observe(&self, asked: Option<Duration>, headers: &HeaderMap) {
        if let Some(wait) = asked.or_else(|| exhausted_for(headers)) {
            tracing::debug!(wait_ms = millis(wait), "the provider's rate limit pauses this model's calls");
            self.pause_for(wait);
        }
    }
}

/// The longest a provider's header can pause a model: a day's quota running out is
/// better met by a fallback model than by a workflow waiting until tomorrow.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// How long until the provider has requests or tokens again, when its headers say
/// it has none left: OpenAI-style `x-ratelimit-remaining-*` with a duration in
/// `x-ratelimit-reset-*` (`1s`, `6m0s`, `20ms`), or Anthropic's
/// `anthropic-ratelimit-*-remaining` with an RFC 3339 moment in `*-reset`.
fn exhausted_for(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let empty = |name: &str| text(name).and_then(|v| v.parse::<f64>().ok()).is_some_and(|left| left <= 0.0);
    // Each reply is read this way, so the names are written out rather than made.
    let openai = [
        ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ];
    let anthropic = [
        ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
        ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
        ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset"),
        ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset"),
    ];
    let reset = |pairs: &[(&str, &'static str)], parse: fn(&str) -> Option<Duration>| {
        pairs.iter().filter(|(left, _)| empty(left)).filter_map(|(_, reset)| text(reset).and_then(parse)).max()
    };
    reset(&openai, go_duration).max(reset(&anthropic, until_moment))
}

/// A Go-style duration as OpenAI writes it: `1s`, `6m0s`, `1h2m3.5s`, `20ms`.
fn go_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        total += number
            * match unit {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 0.001,
                _ => return None,
            };
        rest = next;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The time from now until an RFC 3339 moment (zero for one already past).
fn until_moment(text: &str) -> Option<Duration> {
    let moment = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let left = moment.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(left.to_std().unwrap_or(Duration::ZERO))
}

/// Every model's limiter of one client, created on first use.
#[derive(Debug)]
pub(crate) struct Limiters {
    settings: Arc<LlmSettings>,
    clock: TokioClock,
    by_model: Mutex<HashMap<ModelRef, Arc<ModelLimiter>, foldhash::fast::RandomState>>,
}

impl Limiters {
    pub(crate) fn new(settings: Arc<LlmSettings>) -> Self {
        Self { settings, clock: TokioClock { origin: Instant::now() }, by_model: Mutex::default() }
    }

    /// The limiter of `model` on `provider`.
    pub(crate) fn for_model(&self, provider: LlmProvider, model: &str) -> Arc<ModelLimiter> {
        let key = ModelRef { provider, model: model.to_owned() };
        let mut models = self.by_model.lock().unwrap_or_else(PoisonError::into_inner);
        let limit = || self.settings.rate_limit_for_ref(&key);
        Arc::clone(models.entry(key.clone()).or_insert_with(|| Arc::new(ModelLimiter::new(limit(), &self.clock))))
    }
}

/// The layer that holds each request until its model's client-side rate limit lets
/// it go: the requests and tokens per minute the settings give the model it
/// [resolves](LlmSettings::resolve) to, and the pauses its provider asked for.
///
/// Clones share one allowance per model, so give every client of a process a clone
/// of one `RateLimits`. [`client`](super::client) stacks one around each provider,
/// outside the [`Retry`](super::Retry) layer: time spent waiting here does not count
/// against an attempt's timeout or the call's deadline.
///
/// ```
/// use std::sync::Arc;
/// use portia::llm::{LlmClientExt, LlmProvider, LlmSettings, RateLimit, RateLimits};
/// use portia::testing::ScriptedLlm;
///
/// let settings = LlmSettings::new(LlmProvider::OpenAi).rate_limit(RateLimit::requests_per_minute(600));
/// let limits = RateLimits::new(settings);
/// let llm = Arc::new(ScriptedLlm::new()).with(limits.clone());
/// ```
#[derive(Debug, Clone)]
pub struct RateLimits {
    pub(crate) limiters: Arc<Limiters>,
}

impl RateLimits {
    /// Limits as `settings` say, per the model each request resolves to.
    pub fn new(settings: LlmSettings) -> Self {
        Self { limiters: Arc::new(Limiters::new(Arc::new(settings))) }
    }
}

impl LlmLayer for RateLimits {
    fn layer(&self, inner: Arc<dyn LlmClient>) -> Arc<dyn LlmClient> {
        Arc::new(LimitedClient { inner, limiters: Arc::clone(&self.limiters) })
    }
}

#[derive(Debug)]
struct LimitedClient {
    inner: Arc<dyn LlmClient>,
    limiters: Arc<Limiters>,
}

impl LimitedClient {
    /// Waits until the request's model's limiter lets it go, and says so when that
    /// took at least [`NOTABLE_WAIT`].
    async fn admit(&self, request: &LlmRequest) {
        let target = self.limiters.settings.resolve(request);
        let limiter = self.limiters.for_model(target.provider, &target.model);
        // Only a token limit needs the prompt's size.
        let tokens = if limiter.counts_tokens() { estimated_tokens(request) } else { 0 };
        let waited = limiter.acquire(tokens).await;
        // Taking a cell from a limiter with room costs microseconds: counted, not logged.
        if waited >= NOTABLE_WAIT {
            tracing::info!(
                provider = %target.provider,
                model = %target.model,
                waited_ms = millis(waited),
                "waited for the client-side rate limit"
            );
        }
        if !waited.is_zero() {
            LimiterWaits::report(&target, waited);
        }
    }
}

#[async_trait::async_trait]
impl LlmClient for LimitedClient {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        self.admit(&request).await;
        self.inner.chat(request).await
    }

    async fn chat_ref(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        self.admit(request).await;
        self.inner.chat_ref(request).await
    }

    fn retries(&self) -> bool {
        self.inner.retries()
    }
}

/// The shortest wait for the limiter worth telling anyone about: shorter ones are
/// small beside an LLM call's own latency, and come from the limiter spacing a
/// burst evenly rather than from a limit being reached.
pub(crate) const NOTABLE_WAIT: Duration = Duration::from_millis(50);

tokio::task_local! {
    static WAITS: LimiterWaits;
}

/// Where the limiter waits of the calls made inside [`LimiterWaits::scope`] are told: the model waited for, and how long. Like streamed pieces (see
/// [`Deltas`](super::stream::Deltas)), the scope travels with the task, so every
/// layer between the runner and the limiter passes it on untouched.
#[derive(Clone)]
pub(crate) struct LimiterWaits(Arc<TellWait>);

/// What a [`LimiterWaits`] does with a wait: the model waited for, and how long.
type TellWait = dyn Fn(&ModelRef, Duration) + Send + Sync;

impl fmt::Debug for LimiterWaits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimiterWaits").finish_non_exhaustive()
    }
}

impl LimiterWaits {
    /// Waits handed to `tell`.
    pub(crate) fn new(tell: impl Fn(&ModelRef, Duration) + Send + Sync + 'static) -> Self {
        Self(Arc::new(tell))
    }

    /// Runs `call`, telling these the waits of its requests.
    pub(crate) async fn scope<F: Future>(self, call: F) -> F::Output {
        WAITS.scope(self, call).await
    }

    /// Tells the scope this task runs in, if any, that a request for `model` waited `waited`.
    fn report(model: &ModelRef, waited: Duration) {
        let _ = WAITS.try_with(|waits| (waits.0)(model, waited));
    }
}

/// The prompt's size in tokens, at four characters a token: messages, tools and schema
/// (the schemas as sent, whose text is kept rather than written out again).
pub(crate) fn estimated_tokens(request: &LlmRequest) -> u32 {
    let messages: usize = request
        .messages
        .iter()
        .map(|m| m.content.len() + m.tool_calls.iter().map(|c| c.name.len() + json_len(&c.arguments)).sum::<usize>())
        .sum();
    let tools: usize = request
        .tools
        .iter()
        .map(|t| t.name.len() + t.description.len() + portable_shared(&t.parameters).json.get().len())
        .sum();
    let schema = request.output_schema.as_ref().map_or(0, |s| SentSchema::new(&s.schema).json.get().len());
    u32::try_from((messages + tools + schema).div_ceil(4)).unwrap_or(u32::MAX)
}

/// The length of `value` as compact JSON, counted as it is written out, into nothing:
/// every call is estimated, and a call's arguments are not worth allocating to measure.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a sink that takes everything cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn a_value_is_measured_at_the_length_of_its_json_text() {
        let value = serde_json::json!({"q": "caf\u{e9} \"quoted\"\n", "n": [1, 2.5, null, true], "o": {}});
        assert_eq!(json_len(&value), value.to_string().len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_429s_wait_and_an_exhausted_allowance_pause_the_model() {
        let limiters = Limiters::new(Arc::new(LlmSettings::new(LlmProvider::OpenAi)));
        let limiter = limiters.for_model(LlmProvider::OpenAi, "m");
        assert_eq!(limiter.acquire(10).await, Duration::ZERO, "no limit configured, nothing said");
        limiter.observe(None, &HeaderMap::new());
        assert_eq!(limiter.acquire(10).await, Duration::ZERO, "nothing asked, nothing spent");
        limiter.observe(Some(Duration::from_secs(5)), &HeaderMap::new());
        assert_eq!(limiters.for_model(LlmProvider::OpenAi, "m").acquire(10).await, Duration::from_secs(5));
        assert_eq!(limiters.for_model(LlmProvider::OpenAi, "other").acquire(10).await, Duration::ZERO);
        let mut exhausted = HeaderMap::new();
        exhausted.insert("x-ratelimit-remaining-tokens", HeaderValue::from_static("0"));
        exhausted.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("1m30s"));
        limiter.observe(None, &exhausted);
        assert_eq!(limiter.acquire(10).await, MAX_PAUSE, "a pause is capped at a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_per_minute_hold_large_prompts_back() {
        let settings = LlmSettings::new(LlmProvider::OpenAi).rate_limit(RateLimit::tokens_per_minute(6000));
        let limiter = Limiters::new(Arc::new(settings)).for_model(LlmProvider::OpenAi, "m");
        // 100 tokens a second, in bursts of one second's worth.
        assert_eq!(limiter.acquire(100).await, Duration::ZERO);
        assert_eq!(limiter.acquire(50).await, Duration::from_millis(500));
        assert_eq!(limiter.acquire(1000).await, Duration::from_secs(1), "a prompt over the burst waits for a burst");
    }

    #[test]
    fn go_durations_and_exhausted_headers_are_read() {
        assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(go_duration("1h2m3.5s"), Some(Duration::from_secs_f64(3723.5)));
        assert_eq!(go_duration("soon"), None);
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("3"));
        headers.insert("x-ratelimit-reset-requests", HeaderValue::from_static("2s"));
        assert_eq!(exhausted_for(&headers), None, "requests are left");
        headers.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("0"));
        assert_eq!(exhausted_for(&headers), Some(Duration::from_secs(2)));
        let mut anthropic = HeaderMap::new();
        let reset = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc3339();
        anthropic.insert("anthropic-ratelimit-tokens-remaining", HeaderValue::from_static("0"));
        anthropic.insert("anthropic-ratelimit-tokens-reset", HeaderValue::from_str(&reset).unwrap());
        let wait = exhausted_for(&anthropic).unwrap();
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(30), "{wait:?}");
    }
}
