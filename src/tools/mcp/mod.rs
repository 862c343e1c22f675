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
//! [MCP guide](crate::guide::mcp)), asked at once with
//! [`ToolRunContext::ask`](crate::tool::ToolRunContext::ask) while the call stays open
//! for the server's [`elicitation_wait`](McpServerConfig::elicitation_wait): an answer
//! in time goes to the server. Past the wait (or after a restart) the question is
//! declined and the step waits in NEED_CLARIFICATION; when the workflow resumes, the
//! call is made again and the repeated question answered from the stored response.
//! The call's `timeoutSecs` counts only the server's silence: its progress reports
//! restart it, and it stops while a person answers or the step's LLM samples. Progress reports become
//! [`ToolProgress`](crate::runner::EventKind::ToolProgress) events of the call.
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
pub use server::{PortiaMcpServer, serve_stdio};

use std::fmt;

pub use crate::error::McpError;

use crate::tool::{ToolError, ToolSpec};

impl McpError {
    pub(crate) fn config(setting: impl fmt::Display, message: impl fmt::Display) -> Self {
        Self::Config { setting: setting.to_string(), message: message.to_string() }
    }

    /// This error with each of `secrets` (see `McpTransport::secrets`) blanked out of
    /// its message and stderr lines: a server may echo a header it was sent, or print
    /// the variables it was started with.
    pub(crate) fn redacted(self, secrets: &[String]) -> Self {
        if secrets.is_empty() {
            return self;
        }
        let scrub = |text: String| crate::secret::redact(&text, secrets.iter().map(String::as_str));
        let scrub_all = |lines: Vec<String>| lines.into_iter().map(scrub).collect();
        match self {
            Self::Connect { server, message, stderr } => {
                Self::Connect { server, message: scrub(message), stderr: scrub_all(stderr) }
            }
            Self::ServerDied { server, tool, message, stderr } => {
                Self::ServerDied { server, tool, message: scrub(message), stderr: scrub_all(stderr) }
            }
            Self::Protocol { server, tool, message } => Self::Protocol { server, tool, message: scrub(message) },
            Self::Config { setting, message } => Self::Config { setting, message: scrub(message) },
            other => other,
        }
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
