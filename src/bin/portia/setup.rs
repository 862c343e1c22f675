//! Building the runner a command needs from the settings and the global options.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use portia::config::{LogLevel, StorageKind};
use portia::testing::{Cassette, Recorder, Replayer};
use portia::tool::ToolRegistry;
use portia::tools::{default_tool_registry, open_source_tool_registry};
use portia::{Config, Runner};

use crate::Failure;
use crate::cli::Cli;

/// A runner, the tools the planner is offered, and the recorder to save, if recording.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) runner: Runner,
    pub(crate) plan_tools: Vec<String>,
    recording: Option<(Recorder, PathBuf)>,
}

impl Setup {
    /// Saves the recording, if this run records one.
    pub(crate) fn finish(&self) -> Result<(), Failure> {
        if let Some((recorder, path)) = &self.recording {
            recorder.save(path)?;
            eprintln!("portia: recorded {}", path.display());
        }
        Ok(())
    }
}

/// The settings: from the environment and `.env`, with `--config FILE` over them. The
/// store is SQLite in `.portia/` unless the settings name one, so that commands
/// in different shells see the same workflows.
pub(crate) fn config(cli: &Cli) -> Result<Config, Failure> {
    let (mut config, names_storage) = match &cli.config {
        Some(path) => (Config::from_env_under_file(path)?, file_names_storage(path)),
        None => (Config::from_env()?, false),
    };
    // The environment's PORTIA_STORAGE, or `.env`'s.
    if !names_storage && config.var("PORTIA_STORAGE").is_none_or(|v| v.trim().is_empty()) {
        config.storage = StorageKind::Sqlite;
    }
    Ok(config)
}

/// Logs from the settings as the library does, on stderr. Unless the settings name
/// a level, a command logs only warnings (its own output says what happened), and a
/// worker state changes too, since its log is all it says while it runs.
pub(crate) fn logging(config: &Config, worker: bool) {
    let named = config.var("PORTIA_LOG_LEVEL").is_some_and(|v| !v.trim().is_empty())
        || config.log_level != Config::default().log_level;
    let level = match (named, worker) {
        (true, _) => config.log_level,
        (false, true) => LogLevel::Info,
        (false, false) => LogLevel::Warn,
    };
    portia::config::init_logging(level, config.log_format);
}

/// Whether a config file sets `storage` (TOML or JSON).
fn file_names_storage(path: &Path) -> bool {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&text) {
        return map.contains_key("storage");
    }
    text.parse::<toml::Table>().is_ok_and(|table| table.contains_key("storage"))
}

/// The runner for `cli`'s settings. Its LLM client is built on first use, so
/// commands that need no model need no key; `--cassette` replays one instead and
/// `--record` records what the real one says.
pub(crate) async fn runner(cli: &Cli, config: Config) -> Result<Setup, Failure> {
    let (tools, mut plan_tools) = tools(&config).await?;
    let builder = Runner::builder(config.clone());
    if let Some(path) = &cli.cassette {
        let cassette = Cassette::load(path)?;
        if !cassette.tool_ids.is_empty() {
            plan_tools.clone_from(&cassette.tool_ids);
        }
        return replaying(builder, Replayer::new(cassette), tools, plan_tools);
    }
    let llm = portia::llm::client_on_first_use(config.llm_settings());
    let Some(path) = &cli.record else {
        let runner = builder.shared_tools(tools).llm(llm).build()?;
        return Ok(Setup { runner, plan_tools, recording: None });
    };
    let today = chrono::Utc::now().date_naive().to_string();
    let recorder = Recorder::new(&config).today(&today).tool_ids(plan_tools.clone());
    let runner = builder.shared_tools(Arc::new(recorder.tools(tools))).llm(recorder.llm(llm)).today(today).build()?;
    Ok(Setup { runner, plan_tools, recording: Some((recorder, path.clone())) })
}

/// Every built-in tool (a step of a hand-written plan may use any), and the ids the
/// planner is offered: those that work with the settings, and, with the `mcp`
/// feature, the tools of the MCP servers `PORTIA_MCP_CONFIG` lists.
async fn tools(config: &portia::Config) -> Result<(Arc<dyn ToolRegistry>, Vec<String>), Failure> {
    let ids = |registry: &dyn ToolRegistry| registry.get_tools().iter().map(|t| t.spec().id).collect::<Vec<_>>();
    let builtin: Arc<dyn ToolRegistry> = Arc::new(open_source_tool_registry(config));
    #[cfg(feature = "mcp")]
    if let Some(path) = &config.mcp_config {
        let servers = portia::tools::mcp::McpConfig::from_file_with(path, |var| config.var(var))?;
        let mcp: Arc<dyn ToolRegistry> = Arc::new(portia::tools::mcp::McpToolRegistry::connect(&servers).await?);
        let plan_tools = [ids(&default_tool_registry(config)), ids(mcp.as_ref())].concat();
        let all = portia::tool::AggregatedToolRegistry::new(vec![builtin, mcp]);
        return Ok((Arc::new(all), plan_tools));
    }
    Ok((builtin, ids(&default_tool_registry(config))))
}

/// A runner answering from `replayer`, offline, with the recording's date in its prompts.
pub(crate) fn replaying(
    builder: portia::runner::RunnerBuilder,
    replayer: Replayer,
    tools: Arc<dyn ToolRegistry>,
    plan_tools: Vec<String>,
) -> Result<Setup, Failure> {
    portia::config::set_offline(true);
    let mut builder = builder.shared_tools(Arc::new(replayer.tools(tools))).llm(replayer.llm());
    if let Some(today) = replayer.today() {
        builder = builder.today(today);
    }
    Ok(Setup { runner: builder.build()?, plan_tools, recording: None })
}
