//! Record and replay: a run's LLM exchanges and tool calls kept in a JSON file (a
//! *cassette*) and played back with no key and no network.
//!
//! - [`Recorder`] wraps an [`LlmClient`] and a [`ToolRegistry`]: every LLM request
//!   with its reply, and every call of a read-only tool with its outcome, is kept;
//!   [`Recorder::save`] writes them with every API key of the config blanked out
//!   (requests carry no auth headers at this boundary: keys live in the transport).
//! - [`Replayer`] answers from a cassette. Requests are matched by content (purpose,
//!   model, messages, tools, tool choice and schema; a tool call by tool and
//!   arguments), not by order, since parallel steps and retries reorder them. The
//!   same request made twice gets the recorded replies in turn. A request that
//!   matches nothing fails with an error naming the nearest recorded one and where
//!   it differs.
//!
//! Tools with side effects are never recorded nor replayed: they always run, so a
//! replayed run still writes its files. Prompts hold today's date, so a cassette
//! keeps the date it was recorded with ([`Cassette::today`]); give it to
//! [`RunnerBuilder::today`](crate::runner::RunnerBuilder::today) when replaying.
//!
//! ```
//! use std::sync::Arc;
//! use portia::testing::{Recorder, Replayer};
//! use portia::testing::ScriptedLlm;
//! use portia::{Config, PlanBuilder, Runner, WorkflowState};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> portia::Result<()> {
//! let plan = PlanBuilder::new("Say hello").step("Say hello", None, "$hello").build();
//! let config = Config::builder().summarize_final_output(false).build()?;
//!
//! // Record once, against the real model (a scripted one here)...
//! let recorder = Recorder::new(&config).today("2025-01-31");
//! let llm = recorder.llm(Arc::new(ScriptedLlm::new().text("Hello!")));
//! let runner = Runner::builder(config.clone()).llm(llm).today("2025-01-31").build()?;
//! runner.run_plan(&plan).await?;
//! let cassette = recorder.cassette();
//!
//! // ...then replay it in every test run, with no key and no network.
//! let replayer = Replayer::new(cassette);
//! let runner = Runner::builder(config).llm(replayer.llm()).today(replayer.today().unwrap()).build()?;
//! let workflow = runner.run_plan(&plan).await?;
//! assert_eq!(workflow.state(), WorkflowState::Complete);
//! assert_eq!(workflow.outputs().final_output.as_ref().unwrap().value, "Hello!");
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::llm::{LlmClient, LlmError, LlmLayer, LlmRequest, LlmResponse};
use crate::tool::{RetryHint, Tool, ToolError, ToolOutput, ToolRegistry, ToolRunContext, ToolSpec};
use crate::{Error, Result};

/// The cassette format this crate writes and reads.
pub const FORMAT: u32 = 1;

/// What stands in for a secret in a saved cassette (and in an error or a log line).
pub use crate::secret::REDACTED;

/// A recording: LLM exchanges and tool calls, with what is needed to replay them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Cassette {
    /// The file format ([`FORMAT`]).
    pub format: u32,
    /// What was recorded, and how, for the people who read the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The date (`YYYY-MM-DD`) the prompts held when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub today: Option<String>,
    /// The tools offered to the planner when recorded; a replay offers the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_ids: Vec<String>,
    /// Every LLM request with its reply, in the order they were answered.
    #[serde(default)]
    pub llm: Vec<LlmExchange>,
    /// Every call of a read-only tool with its outcome, in the order they ended.
    #[serde(default)]
    pub tools: Vec<ToolExchange>,
}

/// One LLM request and its reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmExchange {
    /// What was asked.
    pub request: LlmRequest,
    /// What the model answered.
    pub response: LlmResponse,
}

/// One tool call and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolExchange {
    /// The tool called.
    pub tool_id: String,
    /// Its arguments.
    pub arguments: Value,
    /// How it ended.
    pub outcome: ToolOutcome,
}

/// How a recorded tool call ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToolOutcome {
    /// It returned a value.
    Value {
        /// The value.
        value: Value,
    },
    /// It failed with a soft error (shown to the model).
    SoftError {
        /// The message.
        message: String,
    },
    /// It failed with a hard error (the step fails).
    HardError {
        /// The message.
        message: String,
    },
    /// The service failed ([`ToolError::Transient`]): replayed as it was, so the
    /// call path re-sends it (to the next recording) or shows it to the model.
    TransientError {
        /// The message.
        message: String,
        /// Whether the service certainly did not act on the call.
        #[serde(default)]
        not_performed: bool,
        /// The wait the service asked for, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl Cassette {
    /// Reads a cassette from JSON text.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `cassette` when the text is not a cassette of
    /// a format this crate reads.
    pub fn from_json(text: &str) -> Result<Self> {
        let cassette: Self = serde_json::from_str(text)
            .map_err(|e| Error::invalid_config("cassette", format!("not a portia cassette: {e}")))?;
        if cassette.format != FORMAT {
            let message = format!("format {} is not {FORMAT}; record it again with this version", cassette.format);
            return Err(Error::invalid_config("cassette", message));
        }
        Ok(cassette)
    }

    /// Reads a cassette file.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the file when it cannot be read or is not a cassette.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid_config("cassette", format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| Error::invalid_config("cassette", format!("{}: {e}", path.display())))
    }

    /// The cassette as pretty JSON, with each of `secrets` replaced by [`REDACTED`].
    pub fn to_json_scrubbed(&self, secrets: &[String]) -> String {
        let text = serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_owned());
        // Shorter ones are no real keys, and would blank out words of the exchanges.
        crate::secret::redact(&text, secrets.iter().map(String::as_str).filter(|s| s.len() >= 4))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every API key set in `config`, to blank out of what is saved.
fn secrets_of(config: &Config) -> Vec<String> {
    [
        &config.openai_api_key,
        &config.llm_api_key,
        &config.anthropic_api_key,
        &config.mistral_api_key,
        &config.groq_api_key,
        &config.openrouter_api_key,
        &config.gemini_api_key,
        &config.azure_openai_api_key,
        &config.azure_openai_ad_token,
        &config.aws_access_key_id,
        &config.aws_secret_access_key,
        &config.aws_session_token,
        &config.tavily_api_key,
        &config.openweathermap_api_key,
    ]
    .into_iter()
    .flatten()
    .map(|s| s.expose().trim().to_owned())
    .filter(|s| !s.is_empty())
    .collect()
}

/// Records a run. Clone it freely: clones share one cassette.
#[derive(Debug, Clone)]
pub struct Recorder {
    cassette: Arc<Mutex<Cassette>>,
    secrets: Arc<Vec<String>>,
}

impl Recorder {
    /// A recorder that will blank out every API key `config` holds.
    pub fn new(config: &Config) -> Self {
        let cassette = Cassette { format: FORMAT, ..Cassette::default() };
        Self { cassette: Arc::new(Mutex::new(cassette)), secrets: Arc::new(secrets_of(config)) }
    }

    /// Notes the date the prompts hold (give the runner the same one).
    #[must_use]
    pub fn today(self, date: impl Into<String>) -> Self {
        lock(&self.cassette).today = Some(date.into());
        self
    }

    /// Notes what the recording is, for its readers.
    #[must_use]
    pub fn note(self, note: impl Into<String>) -> Self {
        lock(&self.cassette).note = Some(note.into());
        self
    }

    /// Notes the tools offered to the planner.
    #[must_use]
    pub fn tool_ids<I: IntoIterator<Item = S>, S: Into<String>>(self, ids: I) -> Self {
        lock(&self.cassette).tool_ids = ids.into_iter().map(Into::into).collect();
        self
    }

    /// `inner`, recording each exchange it answers (the recorder is also an
    /// [`LlmLayer`]: `inner.with(recorder.clone())` does the same).
    pub fn llm(&self, inner: Arc<dyn LlmClient>) -> Arc<dyn LlmClient> {
        Arc::new(RecordingLlm { inner, recorder: self.clone() })
    }

    /// `inner`'s tools, each read-only one recording its calls.
    pub fn tools(&self, inner: Arc<dyn ToolRegistry>) -> CassetteTools {
        CassetteTools { inner, mode: Mode::Record(self.clone()) }
    }

    /// What has been recorded so far (secrets not yet blanked: see [`Recorder::save`]).
    pub fn cassette(&self) -> Cassette {
        lock(&self.cassette).clone()
    }

    /// Writes the cassette to `path` as pretty JSON, with every key blanked out.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_error(path, e))?;
        }
        let text = self.cassette().to_json_scrubbed(&self.secrets);
        std::fs::write(path, text + "\n").map_err(|e| io_error(path, e))
    }
}

/// Records the exchanges of the client it wraps: the layer form of [`Recorder::llm`].
/// Failed requests are not recorded, so where it sits among the other layers
/// changes nothing in the cassette.
impl LlmLayer for Recorder {
    fn layer(&self, inner: Arc<dyn LlmClient>) -> Arc<dyn LlmClient> {
        self.llm(inner)
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io { action: "write the recording", path: path.to_owned(), source }
}

#[derive(Debug)]
struct RecordingLlm {
    inner: Arc<dyn LlmClient>,
    recorder: Recorder,
}

#[async_trait::async_trait]
impl LlmClient for RecordingLlm {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        let response = self.inner.chat(request.clone()).await?;
        let exchange = LlmExchange { request, response: response.clone() };
        lock(&self.recorder.cassette).llm.push(exchange);
        Ok(response)
    }

    fn retries(&self) -> bool {
        self.inner.retries()
    }
}

/// Replays a cassette. Clone it freely: clones share which replies were used.
#[derive(Debug, Clone)]
pub struct Replayer {
    state: Arc<ReplayState>,
}

#[derive(Debug)]
struct ReplayState {
    cassette: Cassette,
    /// How many times each recorded request (by its matching key) was answered.
    used: Mutex<HashMap<String, usize>>,
}

impl Replayer {
    /// A replayer of `cassette`.
    pub fn new(cassette: Cassette) -> Self {
        Self { state: Arc::new(ReplayState { cassette, used: Mutex::new(HashMap::new()) }) }
    }

    /// The cassette replayed.
    pub fn cassette(&self) -> &Cassette {
        &self.state.cassette
    }

    /// The date the recording's prompts held.
    pub fn today(&self) -> Option<String> {
        self.state.cassette.today.clone()
    }

    /// An LLM client answering from the cassette.
    pub fn llm(&self) -> Arc<dyn LlmClient> {
        Arc::new(ReplayLlm { replayer: self.clone() })
    }

    /// `inner`'s tools, each read-only one answering from the cassette instead of running.
    pub fn tools(&self, inner: Arc<dyn ToolRegistry>) -> CassetteTools {
        CassetteTools { inner, mode: Mode::Replay(self.clone()) }
    }

    /// The `n`-th use of the recordings whose key is `key`: the next one in turn,
    /// the last one again once all were used.
    fn take<'a, T>(&self, key: String, matches: &[&'a T]) -> &'a T {
        let mut used = lock(&self.state.used);
        let count = used.entry(key).or_default();
        let chosen = matches[(*count).min(matches.len() - 1)];
        *count += 1;
        chosen
    }
}

#[derive(Debug)]
struct ReplayLlm {
    replayer: Replayer,
}

#[async_trait::async_trait]
impl LlmClient for ReplayLlm {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        let wanted = serde_json::to_value(&request).unwrap_or_default();
        let recorded = &self.replayer.state.cassette.llm;
        let matches: Vec<&LlmExchange> =
            recorded.iter().filter(|e| serde_json::to_value(&e.request).unwrap_or_default() == wanted).collect();
        if matches.is_empty() {
            let candidates: Vec<Value> =
                recorded.iter().map(|e| serde_json::to_value(&e.request).unwrap_or_default()).collect();
            let message = no_match("LLM request", &wanted, &candidates);
            return Err(LlmError::NotSent { provider: "cassette".into(), model: model_of(&request), message });
        }
        Ok(self.replayer.take(format!("llm:{wanted}"), &matches).response.clone())
    }
}

fn model_of(request: &LlmRequest) -> String {
    request.model.clone().unwrap_or_else(|| format!("{:?}", request.purpose).to_lowercase())
}

/// A registry whose read-only tools record or replay their calls. Made by
/// [`Recorder::tools`] or [`Replayer::tools`].
#[derive(Debug, Clone)]
pub struct CassetteTools {
    inner: Arc<dyn ToolRegistry>,
    mode: Mode,
}

#[derive(Debug, Clone)]
enum Mode {
    Record(Recorder),
    Replay(Replayer),
}

impl CassetteTools {
    fn wrap(&self, tool: Arc<dyn Tool>) -> Arc<dyn Tool> {
        if tool.spec().side_effects {
            return tool;
        }
        Arc::new(CassetteTool { inner: tool, mode: self.mode.clone() })
    }
}

impl ToolRegistry for CassetteTools {
    fn get_tools(&self) -> Vec<Arc<dyn Tool>> {
        self.inner.get_tools().into_iter().map(|t| self.wrap(t)).collect()
    }

    fn match_tools(&self, query: &str) -> Vec<Arc<dyn Tool>> {
        self.inner.match_tools(query).into_iter().map(|t| self.wrap(t)).collect()
    }
}

#[derive(Debug)]
struct CassetteTool {
    inner: Arc<dyn Tool>,
    mode: Mode,
}

#[async_trait::async_trait]
impl Tool for CassetteTool {
    fn spec(&self) -> ToolSpec {
        self.inner.spec()
    }

    async fn ready(&self, ctx: &ToolRunContext) -> Result<bool, ToolError> {
        self.inner.ready(ctx).await
    }

    async fn run(&self, ctx: &ToolRunContext, args: Value) -> Result<ToolOutput, ToolError> {
        let tool_id = self.inner.spec().id;
        match &self.mode {
            Mode::Record(recorder) => {
                let result = self.inner.run(ctx, args.clone()).await;
                let outcome = match &result {
                    Ok(ToolOutput::Value(value)) => Some(ToolOutcome::Value { value: value.clone().into() }),
                    Err(ToolError::Soft(message)) => Some(ToolOutcome::SoftError { message: message.clone() }),
                    Err(ToolError::Hard(message)) => Some(ToolOutcome::HardError { message: message.clone() }),
                    Err(ToolError::Transient { message, hint }) => Some(ToolOutcome::TransientError {
                        message: message.clone(),
                        not_performed: hint.not_performed,
                        retry_after_ms: hint
                            .retry_after
                            .map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
                    }),
                    // Questions name this run's workflow, so they are asked again on replay.
                    _ => None,
                };
                if let Some(outcome) = outcome {
                    lock(&recorder.cassette).tools.push(ToolExchange { tool_id, arguments: args, outcome });
                }
                result
            }
            Mode::Replay(replayer) => replay_tool(replayer, &tool_id, &args),
        }
    }
}

fn replay_tool(replayer: &Replayer, tool_id: &str, args: &Value) -> Result<ToolOutput, ToolError> {
    let recorded = &replayer.state.cassette.tools;
    let same_tool: Vec<&ToolExchange> = recorded.iter().filter(|e| e.tool_id == tool_id).collect();
    let matches: Vec<&ToolExchange> = same_tool.iter().copied().filter(|e| &e.arguments == args).collect();
    if matches.is_empty() {
        let candidates: Vec<Value> = same_tool.iter().map(|e| e.arguments.clone()).collect();
        return Err(ToolError::hard(no_match(&format!("call of {tool_id}"), args, &candidates)));
    }
    match &replayer.take(format!("tool:{tool_id}:{args}"), &matches).outcome {
        ToolOutcome::Value { value } => Ok(ToolOutput::Value(value.clone().into())),
        ToolOutcome::SoftError { message } => Err(ToolError::Soft(message.clone())),
        ToolOutcome::HardError { message } => Err(ToolError::Hard(message.clone())),
        ToolOutcome::TransientError { message, not_performed, retry_after_ms } => {
            let hint = if *not_performed { RetryHint::not_performed() } else { RetryHint::unknown_outcome() };
            let hint = hint.retry_after(retry_after_ms.map(std::time::Duration::from_millis));
            Err(ToolError::transient(message, hint))
        }
    }
}

/// The error for a request that matches no recording: the nearest recording (the
/// fewest differing fields) and up to three of its differences.
fn no_match(what: &str, wanted: &Value, candidates: &[Value]) -> String {
    let wanted_leaves = leaves(wanted);
    let nearest = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (i, differences(&leaves(c), &wanted_leaves)))
        .min_by_key(|(_, diffs)| diffs.len());
    let Some((index, diffs)) = nearest else {
        return format!("the cassette holds no {what} like this one (it holds none at all); record it again");
    };
    let shown: Vec<String> = diffs.iter().take(3).map(ToString::to_string).collect();
    let more = diffs.len().saturating_sub(3);
    let more = if more > 0 { format!(" (and {more} more)") } else { String::new() };
    format!(
        "no recorded {what} matches; the nearest, #{index} of {}, differs at {}{more}; record the cassette again if the run changed",
        candidates.len(),
        shown.join("; ")
    )
}

/// A JSON value as its leaves, by path (`messages[1].content`).
fn leaves(value: &Value) -> BTreeMap<String, Value> {
    fn walk(value: &Value, path: String, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    let next = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    walk(child, next, out);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, format!("{path}[{i}]"), out);
                }
            }
            leaf => {
                out.insert(if path.is_empty() { "(root)".to_owned() } else { path }, leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(value, String::new(), &mut out);
    out
}

/// One field where a recording and a request differ.
#[derive(Debug)]
struct Difference {
    path: String,
    recorded: Option<Value>,
    sent: Option<Value>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (recorded, sent) = match (&self.recorded, &self.sent) {
            (Some(Value::String(a)), Some(Value::String(b))) => around_first_difference(a, b),
            (a, b) => (show(a.as_ref()), show(b.as_ref())),
        };
        write!(f, "{}: recorded {recorded}, sent {sent}", self.path)
    }
}

fn differences(recorded: &BTreeMap<String, Value>, sent: &BTreeMap<String, Value>) -> Vec<Difference> {
    let mut paths: Vec<&String> = recorded.keys().chain(sent.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| recorded.get(*p) != sent.get(*p))
        .map(|p| Difference { path: p.clone(), recorded: recorded.get(p).cloned(), sent: sent.get(p).cloned() })
        .collect()
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "nothing".to_owned(), |v| crate::text::clip(&v.to_string(), 80, "…"))
}

/// Two long strings shown around where they first differ, so the change is visible.
fn around_first_difference(a: &str, b: &str) -> (String, String) {
    let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let cut = |s: &str| {
        let start = common.saturating_sub(30);
        let part: String = s.chars().skip(start).take(70).collect();
        let prefix = if start > 0 { "…" } else { "" };
        let suffix = if s.chars().count() > start + 70 { "…" } else { "" };
        format!("{:?}", format!("{prefix}{part}{suffix}"))
    };
    (cut(a), cut(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_nearest_recording_and_its_differences_are_named() {
        let recorded = vec![json!({"messages": [{"content": "Find Amazon's growth"}]}), json!({"tools": []})];
        let message = no_match("LLM request", &json!({"messages": [{"content": "Find Google's growth"}]}), &recorded);
        assert!(message.contains("#0 of 2"), "{message}");
        assert!(
            message.contains("messages[0].content: recorded \"Find Amazon's growth\", sent \"Find Google's growth\""),
            "{message}"
        );
    }

    #[test]
    fn secrets_are_blanked_out() {
        let mut cassette = Cassette { format: FORMAT, ..Cassette::default() };
        cassette.note = Some("made with sk-secret-123".into());
        let text = cassette.to_json_scrubbed(&["sk-secret-123".to_owned()]);
        assert!(!text.contains("sk-secret-123") && text.contains(REDACTED), "{text}");
    }

    /// Fails once as the service's fault, then answers.
    #[derive(Debug, Default)]
    struct Busy(std::sync::atomic::AtomicBool);

    #[async_trait::async_trait]
    impl Tool for Busy {
        fn spec(&self) -> ToolSpec {
            ToolSpec::new("busy_tool", "Busy Tool", "Busy once.").read_only()
        }
        async fn run(&self, _ctx: &ToolRunContext, _args: Value) -> Result<ToolOutput, ToolError> {
            if self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Ok(ToolOutput::value("done"));
            }
            let hint = RetryHint::not_performed().retry_after(Some(std::time::Duration::from_millis(1500)));
            Err(ToolError::transient("rate limited", hint))
        }
    }

    #[tokio::test]
    async fn a_transient_tool_error_is_recorded_and_replayed_with_its_hint() {
        let registry = Arc::new(crate::tool::InMemoryToolRegistry::new().with(Busy::default()).unwrap());
        let recorder = Recorder::new(&Config::default());
        let ctx = ToolRunContext::new(crate::ids::WorkflowId::new());
        let recording = recorder.tools(registry.clone()).get_tool("busy_tool").unwrap();
        let first = recording.run(&ctx, json!({})).await;
        assert!(recording.run(&ctx, json!({})).await.is_ok());

        let replaying = Replayer::new(recorder.cassette()).tools(registry).get_tool("busy_tool").unwrap();
        let replayed = replaying.run(&ctx, json!({})).await;
        assert_eq!(replayed, first);
        let Err(ToolError::Transient { hint, .. }) = replayed else { panic!("{replayed:?}") };
        assert_eq!((hint.not_performed, hint.retry_after), (true, Some(std::time::Duration::from_millis(1500))));
        assert_eq!(replaying.run(&ctx, json!({})).await, Ok(ToolOutput::value("done")));
    }
}
