//! MCP both ways: run a query over the tools of the MCP servers in a config file, or
//! serve this SDK to an MCP client such as Claude Desktop.
//!
//! ```sh
//! # Servers as Claude Desktop lists them; the planner and agents use their tools.
//! PORTIA_MCP_CONFIG=claude_desktop_config.json \
//!     cargo run --example mcp --features mcp -- "What time is it in Tokyo?"
//! # Without PORTIA_MCP_CONFIG, the example spawns mcp-server-time (PyPI) with `uvx`.
//!
//! # This SDK as an MCP server over stdio (what Claude Desktop starts; see src/docs/mcp.md).
//! cargo run --example mcp --features mcp -- --serve
//! ```

use std::process::ExitCode;
use std::sync::Arc;

use portia::tool::AggregatedToolRegistry;
use portia::tools::default_tool_registry;
use portia::tools::mcp::{McpConfig, McpServerConfig, McpToolRegistry};
use portia::{Config, Runner};

#[tokio::main]
async fn main() -> ExitCode {
    let first = std::env::args().nth(1);
    let result = match first.as_deref() {
        Some("--serve") => serve().await,
        query => run(query.unwrap_or("What time is it in Tokyo, and in Lisbon?")).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcp: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The servers of `PORTIA_MCP_CONFIG`, or mcp-server-time through `uvx`.
fn servers() -> portia::Result<McpConfig> {
    Ok(McpConfig::from_env()?
        .unwrap_or_else(|| McpConfig::new().server("time", McpServerConfig::stdio("uvx", ["mcp-server-time"]))))
}

async fn run(query: &str) -> portia::Result<()> {
    let config = Config::from_env()?;
    config.init_logging();
    let mcp = McpToolRegistry::connect(&servers()?).await?;
    for tool in portia::ToolRegistry::get_tools(&mcp) {
        eprintln!("MCP tool: {}", tool.spec().id);
    }
    let tools = AggregatedToolRegistry::new(vec![Arc::new(default_tool_registry(&config)), Arc::new(mcp.clone())]);
    let workflow = Runner::new(config, tools)?.execute_query(query).await?;
    println!("{}", serde_json::to_string_pretty(&workflow).unwrap_or_default());
    mcp.close().await;
    Ok(())
}

async fn serve() -> portia::Result<()> {
    // Logs go to stderr: stdout carries the protocol.
    let config = Config::from_env()?;
    config.init_logging();
    let tools = portia::tools::default_tool_registry_with_mcp(&config).await?;
    portia::tools::mcp::serve_stdio(Arc::new(Runner::new(config, tools)?)).await
}
