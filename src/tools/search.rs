//! `search_tool`: web search through Tavily.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::web::{self, Api};
use crate::config::Config;
use crate::secret::Secret;
use crate::tool::{ToolError, ToolOutput, ToolRunContext, ToolSpec, TypedTool};

const SERVICE: &str = "Tavily";
const KEY_VAR: &str = "TAVILY_API_KEY";
const DEFAULT_BASE_URL: &str = "https://api.tavily.com";
/// Tavily serves at most this many results per search.
const RESULTS_LIMIT: u32 = 20;

/// Searches the web with Tavily and returns its answer and top sources.
///
/// The key, base URL and timeout are the tool's own, given when it is made; the key
/// is sent as a bearer token, never in the body or the URL.
///
/// ```
/// use portia::tools::SearchTool;
///
/// let search = SearchTool::new("tvly-...").base_url("https://tavily.example.com").with_max_results(5);
/// assert_eq!(search.max_results(), 5);
/// // Or from the config (`TAVILY_API_KEY`, `TAVILY_BASE_URL`, `PORTIA_REQUEST_TIMEOUT_SECS`):
/// let search = SearchTool::from_config(&portia::Config::default());
/// ```
#[derive(Debug, Clone)]
pub struct SearchTool {
    api: Api,
    max_results: u32,
}

/// The arguments of [`SearchTool`].
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct SearchArgs {
    /// What to search the web for: a focused query, such as "Amazon stock price change in 2024".
    pub search_query: String,
}

/// One source of a search, as returned to the agent.
#[derive(Debug, Deserialize)]
struct SearchResult {
    #[serde(default)]
    title: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    content: String,
}

impl SearchResult {
    /// The result as the tool's output holds it, its text moved rather than copied.
    fn into_value(self) -> Value {
        let mut fields = Map::new();
        for (name, text) in [("title", self.title), ("url", self.url), ("content", self.content)] {
            fields.insert(name.to_owned(), Value::String(text));
        }
        Value::Object(fields)
    }
}

/// The part of Tavily's reply the tool keeps; scores and raw pages only cost tokens.
#[derive(Debug, Deserialize)]
struct TavilyReply {
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    results: Vec<SearchResult>,
}

impl SearchTool {
    /// How many results a search returns unless [`SearchTool::with_max_results`] says otherwise.
    pub const DEFAULT_MAX_RESULTS: u32 = 3;

    /// A search tool with this Tavily key, returning [`SearchTool::DEFAULT_MAX_RESULTS`] results.
    pub fn new(api_key: impl Into<String>) -> Self {
        let mut api = Self::api();
        api.set_key(Some(Secret::new(api_key)));
        Self { api, max_results: Self::DEFAULT_MAX_RESULTS }
    }

    /// The search tool `config` describes: its Tavily key and base URL, and its
    /// request timeout. Without a key every call fails, naming `TAVILY_API_KEY`.
    pub fn from_config(config: &Config) -> Self {
        let api = Self::api().configured(config.tavily_api_key.clone(), config.tavily_base_url.as_ref(), config);
        Self { api, max_results: Self::DEFAULT_MAX_RESULTS }
    }

    fn api() -> Api {
        Api::new(SERVICE, KEY_VAR, DEFAULT_BASE_URL)
    }

    /// Sends searches to `url` instead of Tavily's own service (a proxy, a test server).
    #[must_use]
    pub fn base_url(mut self, url: impl AsRef<str>) -> Self {
        self.api.set_base_url(url.as_ref());
        self
    }

    /// Gives each search `timeout` to answer.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.api.set_timeout(timeout);
        self
    }

    /// Returns up to `max_results` results per search (1 to 20; values outside are clamped).
    #[must_use]
    pub fn with_max_results(mut self, max_results: u32) -> Self {
        self.max_results = max_results.clamp(1, RESULTS_LIMIT);
        self
    }

    /// How many results a search returns at most.
    pub fn max_results(&self) -> u32 {
        self.max_results
    }
}

#[async_trait::async_trait]
impl TypedTool for SearchTool {
    type Args = SearchArgs;

    fn spec(&self) -> ToolSpec {
        ToolSpec::new(
            "search_tool",
            "Search Tool",
            "Searches the web and returns a short answer with its top sources. Use for current or factual information not in the context.",
        )
        .output_description("JSON {answer, results: [{title, url, content}]}.")
        .read_only()
    }

    async fn call(&self, _ctx: &ToolRunContext, args: SearchArgs) -> Result<ToolOutput, ToolError> {
        let query = args.search_query.trim();
        if query.is_empty() {
            return Err(ToolError::soft("search_query is empty; give the words to search for"));
        }
        let key = self.api.key()?;
        let url = self.api.url("/search")?;
        let body = json!({ "query": query, "include_answer": true, "max_results": self.max_results });
        let request = self.api.request(reqwest::Method::POST, &url).bearer_auth(key).json(&body);
        let answer = self.api.exchange(request).await?;
        if !answer.status.is_success() {
            let message = web::api_message(&answer.text, key);
            return Err(web::status_error(&self.api, &answer, &message, &[]));
        }
        self.output(query, &answer.text)
    }
}

impl SearchTool {
    fn output(&self, query: &str, text: &str) -> Result<ToolOutput, ToolError> {
        let reply: TavilyReply = serde_json::from_str(text).map_err(|e| web::garbled(SERVICE, &e))?;
        let answer = reply.answer.filter(|a| !a.trim().is_empty());
        if answer.is_none() && reply.results.is_empty() {
            return Err(ToolError::soft(format!("{SERVICE} found nothing for {query:?}; try a broader query")));
        }
        let limit = usize::try_from(self.max_results).unwrap_or(usize::MAX);
        let results = reply.results.into_iter().take(limit).map(SearchResult::into_value).collect();
        // Built in place: `json!` would write every result out into a copy.
        let mut output = Map::new();
        output.insert("answer".to_owned(), answer.map_or(Value::Null, Value::String));
        output.insert("results".to_owned(), Value::Array(results));
        Ok(ToolOutput::value(Value::Object(output)))
    }
}
