//! [`McpError`]: what can go wrong talking to an MCP server (feature `mcp`).

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

fn tail(stderr: &[String]) -> String {
    if stderr.is_empty() { String::new() } else { format!("; its stderr ended with:\n{}", stderr.join("\n")) }
}
