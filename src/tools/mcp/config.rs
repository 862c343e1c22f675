//! The `mcpServers` configuration, as Claude Desktop and Cursor write it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::McpError;
use crate::secret::Secret;

/// The variable naming an MCP configuration file.
pub const MCP_CONFIG_VAR: &str = "PORTIA_MCP_CONFIG";

/// How long a call may take by default before it is abandoned (and cancelled).
const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// How long a server's question waits for a person by default. Under a minute: a
/// server on the TypeScript SDK gives up on its own request after 60 s unless it sets
/// a longer timeout, and an answer it no longer waits for would be lost.
const DEFAULT_ELICITATION_WAIT_SECS: u64 = 50;

/// Every MCP server to take tools from, by name.
///
/// Read from a JSON object with an `mcpServers` member (`claude_desktop_config.json`,
/// `.cursor/mcp.json`), or from a TOML file with an `[mcpServers.NAME]` table (so the
/// crate's own config file can hold it):
///
/// ```
/// use portia::tools::mcp::McpConfig;
///
/// let json = r#"{"mcpServers": {
///     "time": {"command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "${MY_TZ}"}},
///     "docs": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ${DOCS_TOKEN}"}}
/// }}"#;
/// let config = McpConfig::from_json_with(json, |var| Some(format!("<{var}>"))).unwrap();
/// assert_eq!(config.servers.len(), 2);
/// // Secrets are redacted when logged.
/// assert!(!format!("{config:?}").contains("DOCS_TOKEN"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct McpConfig {
    /// The servers, by name; the name prefixes their tool ids (`name__tool`).
    pub servers: BTreeMap<String, McpServerConfig>,
}

/// One server: a command to spawn (stdio) or a URL (streamable HTTP).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct McpServerConfig {
    /// How to reach the server.
    pub transport: McpTransport,
    /// How long one call may take before it is cancelled: the time the server is
    /// silent, counted from the request or its last progress report, and not
    /// counting the time a person takes to answer its question.
    pub timeout: Duration,
    /// How long a question the server asks during a call (an elicitation) waits for
    /// a person, the call held open meanwhile; unanswered, it is declined and the
    /// workflow waits for the answer in NEED_CLARIFICATION. Zero declines at once.
    pub elicitation_wait: Duration,
}

/// How to reach a server.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum McpTransport {
    /// A command spawned as a child process, speaking MCP on its stdin and stdout.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Its environment besides `PATH`, `HOME` and `LANG`, which it gets from this
        /// process: nothing else of this process's environment (API keys, the
        /// database URL) reaches it. Values are secrets.
        env: BTreeMap<String, Secret>,
    },
    /// A streamable HTTP endpoint.
    Http {
        /// The endpoint URL.
        url: String,
        /// Headers sent with every request; values are secrets.
        headers: BTreeMap<String, Secret>,
        /// A bearer token, sent as `Authorization: Bearer ...`.
        bearer_token: Option<Secret>,
    },
    /// A server in this process, reached through an in-memory pipe: for tests, and
    /// for serving tools written with rmcp without a process of their own.
    InProcess(InProcessConnector),
}

/// Makes a new in-memory connection to an in-process server: it returns the
/// client's end of a [`tokio::io::duplex`] pipe after handing the other end to a
/// server (`rmcp::ServiceExt::serve`). Called again to reconnect.
#[derive(Clone)]
pub struct InProcessConnector(pub(crate) Arc<dyn Fn() -> tokio::io::DuplexStream + Send + Sync>);

impl InProcessConnector {
    /// A connector calling `connect` for each connection.
    pub fn new(connect: impl Fn() -> tokio::io::DuplexStream + Send + Sync + 'static) -> Self {
        Self(Arc::new(connect))
    }
}

impl PartialEq for InProcessConnector {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for InProcessConnector {}

impl fmt::Debug for InProcessConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InProcessConnector")
    }
}

impl McpServerConfig {
    /// A server spawned as `command args...`.
    pub fn stdio<S: Into<String>>(command: impl Into<String>, args: impl IntoIterator<Item = S>) -> Self {
        let args = args.into_iter().map(Into::into).collect();
        Self::with_transport(McpTransport::Stdio { command: command.into(), args, env: BTreeMap::new() })
    }

    /// A server at a streamable HTTP `url`.
    pub fn http(url: impl Into<String>) -> Self {
        Self::with_transport(McpTransport::Http { url: url.into(), headers: BTreeMap::new(), bearer_token: None })
    }

    /// A server in this process; see [`InProcessConnector`].
    pub fn in_process(connect: impl Fn() -> tokio::io::DuplexStream + Send + Sync + 'static) -> Self {
        Self::with_transport(McpTransport::InProcess(InProcessConnector::new(connect)))
    }

    fn with_transport(transport: McpTransport) -> Self {
        Self {
            transport,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            elicitation_wait: Duration::from_secs(DEFAULT_ELICITATION_WAIT_SECS),
        }
    }

    /// Adds a variable to a stdio server's environment (ignored for HTTP). A server
    /// starts with `PATH`, `HOME` and `LANG` from this process and the variables
    /// added here, nothing else.
    #[must_use]
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let McpTransport::Stdio { env, .. } = &mut self.transport {
            env.insert(name.into(), Secret::new(value.into()));
        }
        self
    }

    /// Adds a header to an HTTP server's requests (ignored for stdio).
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let McpTransport::Http { headers, .. } = &mut self.transport {
            headers.insert(name.into(), Secret::new(value.into()));
        }
        self
    }

    /// Sets how long one call may take.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how long the server's questions wait for a person (zero: declined at once).
    #[must_use]
    pub fn elicitation_wait(mut self, wait: Duration) -> Self {
        self.elicitation_wait = wait;
        self
    }
}

impl fmt::Debug for McpServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpServerConfig")
            .field("transport", &self.transport)
            .field("timeout", &self.timeout)
            .field("elicitation_wait", &self.elicitation_wait)
            .finish()
    }
}

impl McpTransport {
    /// What this transport was given that may be a secret, to scrub from the server's
    /// errors and stderr: the values of `env` and `headers` (a bearer header's token
    /// on its own too), the bearer token, and the user info and query values of the
    /// URL. Values under four characters (`1`, `yes`) are left: no key is that short,
    /// and blanking them would garble every message.
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = match self {
            Self::Stdio { env, .. } => env.values().map(|v| v.expose().to_owned()).collect(),
            Self::Http { url, headers, bearer_token } => {
                let header_values = headers.values().map(Secret::expose);
                let tokens = header_values.clone().filter_map(|v| v.strip_prefix("Bearer ")).map(str::trim);
                let mut secrets: Vec<String> = header_values
                    .chain(tokens)
                    .chain(bearer_token.as_ref().map(Secret::expose))
                    .map(str::to_owned)
                    .collect();
                secrets.extend(url_secrets(url));
                secrets
            }
            Self::InProcess(_) => Vec::new(),
        };
        secrets.retain(|s| s.chars().count() >= 4);
        // The longest first, so that a token is not left half blanked by a shorter one
        // inside it; equal ones side by side, so that each is kept once (a query value
        // is gathered both as written and decoded, mostly the same).
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        secrets
    }
}

/// The user name, password and query values of `url`, as written and decoded.
fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some((_, query)) = url.split_once('?') {
        let query = query.split_once('#').map_or(query, |(query, _)| query);
        secrets.extend(query.split('&').filter_map(|pair| pair.split_once('=')).map(|(_, value)| value.to_owned()));
    }
    if let Ok(parsed) = reqwest::Url::parse(url) {
        secrets.extend(parsed.query_pairs().map(|(_, value)| value.into_owned()));
        secrets.extend([parsed.username().to_owned()].into_iter().chain(parsed.password().map(str::to_owned)));
    }
    secrets
}

/// Names only: values of `env` and `headers` may hold keys, so they are never
/// printed, nor the user info and query values of the URL.
impl fmt::Debug for McpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdio { command, args, env } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", args)
                .field("env", &env.keys().map(|k| format!("{k}=[redacted]")).collect::<Vec<_>>())
                .finish(),
            Self::Http { url, headers, bearer_token } => f
                .debug_struct("Http")
                .field("url", &crate::http::shown_url(url))
                .field("headers", &headers.keys().map(|k| format!("{k}: [redacted]")).collect::<Vec<_>>())
                .field("bearer_token", &bearer_token.as_ref().map(|_| "[redacted]"))
                .finish(),
            Self::InProcess(connector) => connector.fmt(f),
        }
    }
}

/// The file as written: every field optional, checked when converted.
#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "mcpServers", default)]
    mcp_servers: BTreeMap<String, RawServer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServer {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    bearer_token: Option<String>,
    timeout_secs: Option<u64>,
    elicitation_wait_secs: Option<u64>,
    /// Cursor and others mark a server off without removing it.
    #[serde(default)]
    disabled: bool,
}

impl McpConfig {
    /// No servers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a server, builder style.
    #[must_use]
    pub fn server(mut self, name: impl Into<String>, server: McpServerConfig) -> Self {
        self.servers.insert(name.into(), server);
        self
    }

    /// The file `PORTIA_MCP_CONFIG` names, or `None` when it is unset or blank.
    ///
    /// # Errors
    /// As [`McpConfig::from_file`].
    pub fn from_env() -> Result<Option<Self>, McpError> {
        match std::env::var(MCP_CONFIG_VAR).ok().filter(|v| !v.trim().is_empty()) {
            Some(path) => Self::from_file(path.trim()).map(Some),
            None => Ok(None),
        }
    }

    /// Reads a file: TOML if its name ends in `.toml`, otherwise JSON. `${VAR}` is
    /// replaced by the environment variable `VAR`.
    ///
    /// # Errors
    /// [`McpError::Config`] naming the file, the server and the fix.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, McpError> {
        Self::from_file_with(path, |var| std::env::var(var).ok())
    }

    /// Reads a file as [`McpConfig::from_file`] does, replacing `${VAR}` from `lookup`
    /// ([`Config::var`](crate::Config::var), say, which sees `.env` too).
    ///
    /// # Errors
    /// As [`McpConfig::from_file`].
    pub fn from_file_with(path: impl AsRef<Path>, lookup: impl Fn(&str) -> Option<String>) -> Result<Self, McpError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| McpError::config(path.display(), format!("cannot read it ({e}); check {MCP_CONFIG_VAR}")))?;
        // The parsers' own messages quote the line at fault, which may hold a header's token.
        let raw = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml")) {
            toml::from_str(&text)
                .map_err(|e| McpError::config(path.display(), crate::config::toml_problem(&text, &e)))?
        } else {
            serde_json::from_str(&text)
                .map_err(|e| McpError::config(path.display(), crate::config::json_problem(&e)))?
        };
        Self::from_raw(raw, &lookup).map_err(|e| e.in_file(path))
    }

    /// Parses JSON text, reading `${VAR}` from the process environment.
    ///
    /// # Errors
    /// [`McpError::Config`] naming the server and the fix.
    pub fn from_json(json: &str) -> Result<Self, McpError> {
        Self::from_json_with(json, |var| std::env::var(var).ok())
    }

    /// Parses JSON text, reading `${VAR}` from `lookup`.
    ///
    /// # Errors
    /// [`McpError::Config`] naming the server and the fix.
    pub fn from_json_with(json: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Self, McpError> {
        let raw: RawFile =
            serde_json::from_str(json).map_err(|e| McpError::config("mcpServers", crate::config::json_problem(&e)))?;
        Self::from_raw(raw, &lookup)
    }

    fn from_raw(raw: RawFile, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, McpError> {
        let mut servers = BTreeMap::new();
        for (name, server) in raw.mcp_servers {
            if server.disabled {
                continue;
            }
            let server = convert(&name, server, lookup)?;
            servers.insert(name, server);
        }
        Ok(Self { servers })
    }
}

fn convert(name: &str, raw: RawServer, lookup: &dyn Fn(&str) -> Option<String>) -> Result<McpServerConfig, McpError> {
    let setting = format!("mcpServers.{name}");
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(McpError::config(&setting, "a server name may only hold letters, digits, '_' and '-'"));
    }
    let sub = |text: &str| substitute(text, lookup).map_err(|e| McpError::config(&setting, e));
    let secrets = |map: BTreeMap<String, String>| -> Result<BTreeMap<String, Secret>, McpError> {
        map.into_iter().map(|(k, v)| Ok((k, Secret::new(sub(&v)?)))).collect()
    };
    let transport = match (raw.command, raw.url) {
        (Some(command), None) => McpTransport::Stdio {
            command: sub(&command)?,
            args: raw.args.iter().map(|a| sub(a)).collect::<Result<_, _>>()?,
            env: secrets(raw.env)?,
        },
        (None, Some(url)) => McpTransport::Http {
            url: sub(&url)?,
            headers: secrets(raw.headers)?,
            bearer_token: raw.bearer_token.map(|t| sub(&t).map(Secret::new)).transpose()?,
        },
        (Some(_), Some(_)) => {
            return Err(McpError::config(&setting, "give either `command` (stdio) or `url` (HTTP), not both"));
        }
        (None, None) => {
            return Err(McpError::config(&setting, "give `command` to spawn a server or `url` to reach one"));
        }
    };
    let timeout = Duration::from_secs(raw.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS));
    if timeout.is_zero() {
        return Err(McpError::config(&setting, "`timeoutSecs` must be at least 1"));
    }
    let elicitation_wait = Duration::from_secs(raw.elicitation_wait_secs.unwrap_or(DEFAULT_ELICITATION_WAIT_SECS));
    // A timer further off than this overflows the clock rather than waiting.
    let max = crate::config::MAX_DURATION.as_secs();
    for (field, wait) in [("timeoutSecs", timeout), ("elicitationWaitSecs", elicitation_wait)] {
        if wait.as_secs() > max {
            return Err(McpError::config(&setting, format!("`{field}` must be at most {max} (7 days)")));
        }
    }
    Ok(McpServerConfig { transport, timeout, elicitation_wait })
}

/// Replaces each `${VAR}` with the variable's value. An unset variable is an error
/// (naming it, never its value) rather than an empty string that would fail later.
fn substitute(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("`${{` without a closing `}}` in {text:?}"))?;
        let var = &after[..end];
        let value = lookup(var).ok_or_else(|| format!("the variable {var} is not set; set it or remove ${{{var}}}"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(var: &str) -> Option<String> {
        match var {
            "TOKEN" => Some("s3cret-token".into()),
            "KEY" => Some("s3cret-key".into()),
            _ => None,
        }
    }

    #[test]
    fn reads_claude_desktop_json_with_substitution() {
        let json = r#"{"mcpServers": {
            "fs": {"command": "npx", "args": ["-y", "server", "${KEY}"], "env": {"API_KEY": "${KEY}"}},
            "web": {"url": "http://127.0.0.1:1/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}, "timeoutSecs": 5},
            "off": {"command": "x", "disabled": true}
        }}"#;
        let config = McpConfig::from_json_with(json, vars).unwrap();
        assert_eq!(config.servers.keys().collect::<Vec<_>>(), ["fs", "web"]);
        let McpTransport::Stdio { args, env, .. } = &config.servers["fs"].transport else { panic!() };
        assert_eq!(args[2], "s3cret-key");
        assert_eq!(env["API_KEY"].expose(), "s3cret-key");
        let McpTransport::Http { headers, .. } = &config.servers["web"].transport else { panic!() };
        assert_eq!(headers["Authorization"].expose(), "Bearer s3cret-token");
        assert_eq!(config.servers["web"].timeout, Duration::from_secs(5));
        assert_eq!(config.servers["web"].elicitation_wait, Duration::from_secs(DEFAULT_ELICITATION_WAIT_SECS));
    }

    #[test]
    fn elicitation_wait_is_read_in_seconds_and_zero_is_allowed() {
        let json = r#"{"mcpServers": {
            "ask": {"command": "x", "elicitationWaitSecs": 120},
            "never": {"command": "x", "elicitationWaitSecs": 0}
        }}"#;
        let config = McpConfig::from_json_with(json, vars).unwrap();
        assert_eq!(config.servers["ask"].elicitation_wait, Duration::from_secs(120));
        assert_eq!(config.servers["never"].elicitation_wait, Duration::ZERO);
        let built = McpServerConfig::stdio("x", ["y"]).elicitation_wait(Duration::from_secs(7));
        assert_eq!(built.elicitation_wait, Duration::from_secs(7));
    }

    #[test]
    fn debug_never_shows_env_or_header_values() {
        let json = r#"{"mcpServers": {
            "fs": {"command": "npx", "env": {"API_KEY": "${KEY}"}},
            "web": {"url": "http://127.0.0.1:1/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}, "bearerToken": "${TOKEN}"}
        }}"#;
        let debug = format!("{:?}", McpConfig::from_json_with(json, vars).unwrap());
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("API_KEY") && debug.contains("Authorization"), "{debug}");
    }

    #[test]
    fn errors_name_the_server_and_the_fix() {
        let missing = McpConfig::from_json_with(r#"{"mcpServers": {"a": {"command": "${NOPE}"}}}"#, vars);
        let message = missing.unwrap_err().to_string();
        assert!(message.contains("mcpServers.a") && message.contains("NOPE is not set"), "{message}");
        let neither = McpConfig::from_json_with(r#"{"mcpServers": {"a": {}}}"#, vars).unwrap_err().to_string();
        assert!(neither.contains("`command`") && neither.contains("`url`"), "{neither}");
        let both =
            McpConfig::from_json_with(r#"{"mcpServers": {"a": {"command": "x", "url": "y"}}}"#, vars).unwrap_err();
        assert!(both.to_string().contains("not both"));
        let name = McpConfig::from_json_with(r#"{"mcpServers": {"a b": {"command": "x"}}}"#, vars).unwrap_err();
        assert!(name.to_string().contains("letters, digits"));
    }

    #[test]
    fn reads_the_same_servers_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portia.toml");
        std::fs::write(
            &path,
            "llm_provider = \"openai\"\n[mcpServers.time]\ncommand = \"uvx\"\nargs = [\"mcp-server-time\"]\n\
             elicitationWaitSecs = 90\n",
        )
        .unwrap();
        let config = McpConfig::from_file(&path).unwrap();
        let McpTransport::Stdio { command, args, .. } = &config.servers["time"].transport else { panic!() };
        assert_eq!((command.as_str(), args.as_slice()), ("uvx", ["mcp-server-time".to_owned()].as_slice()));
        assert_eq!(config.servers["time"].elicitation_wait, Duration::from_secs(90));
    }
}
