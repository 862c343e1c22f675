//! The built-in tools and ready-made registries of them.
//!
//! | id | tool | needs | flags |
//! |---|---|---|---|
//! | `calculator_tool` | [`CalculatorTool`]: arithmetic in words or symbols | - | read-only |
//! | `search_tool` | [`SearchTool`]: web search through Tavily | `TAVILY_API_KEY` | read-only |
//! | `weather_tool` | [`WeatherTool`]: current weather through OpenWeatherMap | `OPENWEATHERMAP_API_KEY` | read-only |
//! | `llm_tool` | [`LlmTool`]: one LLM call over the step's context | the runner's LLM | read-only, task argument |
//! | `file_reader_tool` | [`FileReaderTool`]: reads text, JSON, CSV and spreadsheets | a root directory | read-only |
//! | `file_writer_tool` | [`FileWriterTool`]: writes text files | a root directory | side effects, idempotent |
//!
//! Read-only means idempotent and without side effects (see [`ToolSpec`](crate::tool::ToolSpec)).
//!
//! Each tool takes its settings when it is made (`SearchTool::new(key)`, or
//! `SearchTool::from_config(&config)` for `TAVILY_API_KEY` and `TAVILY_BASE_URL`) and
//! keeps them to itself: the [`ToolRunContext`](crate::tool::ToolRunContext) a tool
//! runs with carries no configuration, so no tool, built-in or custom, can read a key
//! that is not its own. The registries below build every tool from one [`Config`].
//!
//! ```
//! use portia::tool::ToolRegistry;
//! use portia::tools::default_tool_registry;
//!
//! let config = portia::Config::builder().tavily_api_key("tvly-...").build().unwrap();
//! let ids: Vec<String> = default_tool_registry(&config).get_tools().iter().map(|t| t.spec().id).collect();
//! assert_eq!(ids, ["calculator_tool", "llm_tool", "file_writer_tool", "file_reader_tool", "search_tool"]);
//! ```

mod calculator;
mod files;
mod llm_tool;
#[cfg(feature = "mcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "mcp")))]
pub mod mcp;
mod root;
mod search;
mod weather;
mod web;

use std::sync::Arc;

use serde_json::Value;

pub use calculator::{CalculatorArgs, CalculatorTool};
pub use files::{FileReaderArgs, FileReaderTool, FileWriterArgs, FileWriterTool};
pub use llm_tool::{LLM_TOOL_ID, LlmTool, LlmToolArgs};
pub use search::{SearchArgs, SearchTool};
pub use weather::{WeatherArgs, WeatherTool};

use crate::config::Config;
use crate::secret::Secret;
use crate::tool::{InMemoryToolRegistry, Tool};

/// Calculator, weather and search, with their settings from `config`: the tools of
/// the examples. Weather and search are there even without their keys, and a call
/// without one fails naming the variable to set.
pub fn example_tool_registry(config: &Config) -> InMemoryToolRegistry {
    registry(vec![
        Arc::new(CalculatorTool),
        Arc::new(WeatherTool::from_config(config)),
        Arc::new(SearchTool::from_config(config)),
    ])
}

/// All six built-in tools, with their settings from `config`.
pub fn open_source_tool_registry(config: &Config) -> InMemoryToolRegistry {
    registry(vec![
        Arc::new(CalculatorTool),
        Arc::new(WeatherTool::from_config(config)),
        Arc::new(SearchTool::from_config(config)),
        Arc::new(LlmTool::new()),
        Arc::new(FileReaderTool::from_config(config)),
        Arc::new(FileWriterTool::from_config(config)),
    ])
}

/// The tools that work with `config`: calculator, LLM, file writer and file reader,
/// plus search when a Tavily key is set and weather when an OpenWeatherMap key is set.
pub fn default_tool_registry(config: &Config) -> InMemoryToolRegistry {
    let mut tools: Vec<Arc<dyn Tool>> = vec![
        Arc::new(CalculatorTool),
        Arc::new(LlmTool::new()),
        Arc::new(FileWriterTool::from_config(config)),
        Arc::new(FileReaderTool::from_config(config)),
    ];
    if has_key(config.tavily_api_key.as_ref()) {
        tools.push(Arc::new(SearchTool::from_config(config)));
    }
    if has_key(config.openweathermap_api_key.as_ref()) {
        tools.push(Arc::new(WeatherTool::from_config(config)));
    }
    registry(tools)
}

/// [`default_tool_registry`] and the tools of every MCP server in the file
/// [`Config::mcp_config`] names (`PORTIA_MCP_CONFIG`), as `server__tool`. Built-in
/// tools win an id clash. Feature `mcp`.
///
/// # Errors
/// [`Error::Mcp`](crate::Error::Mcp) when the file is invalid or a server cannot be
/// reached, naming the server and the fix.
#[cfg(feature = "mcp")]
pub async fn default_tool_registry_with_mcp(config: &Config) -> crate::Result<crate::tool::AggregatedToolRegistry> {
    let mcp = match &config.mcp_config {
        Some(path) => mcp::McpConfig::from_file_with(path, |var| config.var(var))?,
        None => mcp::McpConfig::new(),
    };
    let servers = mcp::McpToolRegistry::connect(&mcp).await?;
    Ok(crate::tool::AggregatedToolRegistry::new(vec![Arc::new(default_tool_registry(config)), Arc::new(servers)]))
}

fn registry(tools: Vec<Arc<dyn Tool>>) -> InMemoryToolRegistry {
    // The ids are constants of this module and distinct; the registry tests hold that.
    InMemoryToolRegistry::from_tools(tools).expect("built-in tool ids are distinct")
}

/// A blank key (an empty variable in `.env`) counts as no key.
fn has_key(key: Option<&Secret>) -> bool {
    key.is_some_and(|k| !k.expose().trim().is_empty())
}

/// A number as JSON, integral values without a fraction (`11`, not `11.0`) as long
/// as they are exact; NaN and infinities, which JSON cannot hold, become null.
fn json_number(x: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: beyond it not every integer is representable.
    if x.fract() == 0.0 && x.abs() < EXACT {
        // `as` is exact here: the value is integral and within i64's range.
        #[allow(clippy::cast_possible_truncation)]
        return Value::from(x as i64);
    }
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_drop_exact_fractions_only() {
        assert_eq!(json_number(11.0), Value::from(11));
        assert_eq!(json_number(-0.0), Value::from(0));
        assert_eq!(json_number(2.5), Value::from(2.5));
        assert_eq!(json_number(1e300), Value::from(1e300));
        assert_eq!(json_number(f64::NAN), Value::Null);
    }
}
