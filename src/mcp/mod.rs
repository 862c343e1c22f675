//! MCP: tools from [Model Context Protocol](https://modelcontextprotocol.io) servers,
//! and this SDK served as one (feature `mcp`).
//!
//! [`McpToolRegistry::connect`] starts or reaches every server of an [`McpConfig`],
//! lists their tools once and serves them as a [`ToolRegistry`](crate::tool::ToolRegistry),
//! refreshing a server's list when it sends `tools/list_changed`. Each MCP tool is a
//! [`Tool`](crate::tool::Tool) like any other, so its calls are journaled and its
//! [`ToolSpec`] flags come from the server's annotations:
//!
//! | MCP annotation | `ToolSpec` |
//! |---|---|
//! | `readOnlyHint: true` | read-only: idempotent, no side effects |
//! | `idempotentHint: true` | idempotent, with side effects |
//! | none, or anything else | not idempotent, with side effects: the journal never repeats it unasked |
//!
//! `destructiveHint: true` is added to the description, so the planner and a
//! reviewer of the plan see it. Tool ids are `server__tool`, kept within
//! `^[a-zA-Z0-9_-]{1,64}$` (what OpenAI and Anthropic accept): other characters become
//! `_` and a longer id is cut and ends in a stable hash of the full name.
//!
//! A server's elicitation during a call becomes a clarification of the step (see the
//! README's MCP section), asked at once with
//! [`ToolRunContext::ask`](crate::tool::ToolRunContext::ask) while the call stays open
//! for the server's [`elicitation_wait`](McpServerConfig::elicitation_wait): an answer
//! in time goes to the server. Past the wait (or after a restart) the question is
//! declined and the step waits in NEED_CLARIFICATION; when the workflow resumes, the
//! call is made again and the repeated question answered from the stored response.
//! The call's `timeoutSecs` counts only the server's silence: its progress reports
//! restart it, and it stops while a person answers or the step's LLM samples. Progress reports become
//! [`ToolProgress`](crate::events::EventKind::ToolProgress) events of the call.
//!
//! [`serve_stdio`] serves a [`Runner`](crate::Runner) to MCP clients such as Claude
//! Desktop: tools to plan and run queries, list and show workflows, and answer
//! clarifications.

mod call;
mod client;
mod config;
mod elicitation;
mod mapping;
mod sampling;
mod server;

pub use client::{McpTool, McpToolRegistry};
pub use config::{InProcessConnector, MCP_CONFIG_VAR, McpConfig, McpServerConfig, McpTransport};
pub use mapping::{check_arguments, output_from_result, spec_from_mcp, tool_id};
pub use server::{PortiaMcpServer, serve_stdio};

use std::fmt;

use crate::tool::{ToolError, ToolSpec};

/// What can go wrong talking to an MCP server. Each message names the server and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The configuration is not valid.
    #[error("MCP config {setting}: {message}")]
    Config {
        /// Where: the file, or `mcpServers.NAME`.
        setting: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The server could not be started or reached, or the handshake failed.
    #[error("MCP server {server}: cannot connect: {message}{}", tail(stderr))]
    Connect {
        /// The server's name.
        server: String,
        /// Why.
        message: String,
        /// The last lines it wrote to stderr (stdio servers).
        stderr: Vec<String>,
    },
    /// The server's process exited, or its connection closed, during a call. It is
    /// started again on the next call.
    #[error("MCP server {server} died during {tool}: {message}; it is restarted on the next call{}", tail(stderr))]
    ServerDied {
        /// The server's name.
        server: String,
        /// The tool being called.
        tool: String,
        /// What the transport said.
        message: String,
        /// The last lines it wrote to stderr (stdio servers).
        stderr: Vec<String>,
    },
    /// The server was silent during a call for longer than its `timeoutSecs` (neither
    /// answering nor reporting progress, nor waiting on a person); it was cancelled.
    #[error(
        "MCP server {server}: {tool} did not answer within {secs} s and was cancelled; raise `timeoutSecs` for it in the MCP config"
    )]
    Timeout {
        /// The server's name.
        server: String,
        /// The tool.
        tool: String,
        /// The timeout, in seconds.
        secs: u64,
    },
    /// The workflow was cancelled during the call; MCP cancellation was sent.
    #[error("MCP call {tool} on {server} was cancelled with its workflow")]
    Cancelled {
        /// The server's name.
        server: String,
        /// The tool.
        tool: String,
    },
    /// A client called one of this SDK's MCP tools with arguments that do not fit it.
    #[error("{tool}: the arguments do not fit its input schema: {message}")]
    Arguments {
        /// The tool.
        tool: String,
        /// What serde said.
        message: String,
    },
    /// The server answered with a JSON-RPC error or something that is not a tool result.
    #[error("MCP server {server}: {tool}: {message}")]
    Protocol {
        /// The server's name.
        server: String,
        /// The tool or request.
        tool: String,
        /// The server's message.
        message: String,
    },
}

impl McpError {
    pub(crate) fn config(setting: impl fmt::Display, message: impl fmt::Display) -> Self {
        Self::Config { setting: setting.to_string(), message: message.to_string() }
    }

    fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Self::Config { setting, message } => {
                Self::Config { setting: format!("{} ({setting})", path.display()), message }
            }
            other => other,
        }
    }
}

fn tail(stderr: &[String]) -> String {
    if stderr.is_empty() { String::new() } else { format!("; its stderr ended with:\n{}", stderr.join("\n")) }
}

impl McpError {
    /// As a tool error for a call to a tool described by `spec`: a protocol error is
    /// soft (the model may fix its arguments); a timeout is soft only for idempotent
    /// tools, since the outcome of any other call is unknown; the rest are hard.
    pub fn into_tool_error(self, spec: &ToolSpec) -> ToolError {
        match &self {
            Self::Protocol { .. } => ToolError::soft(self),
            Self::Timeout { .. } if spec.idempotent => ToolError::soft(self),
            _ => ToolError::hard(self),
        }
    }
}

#[cfg(test)]
mod tests;
