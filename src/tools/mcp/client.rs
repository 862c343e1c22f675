//! The MCP client: one connection per configured server, its tools as [`Tool`]s.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

#[allow(deprecated)] // Sampling (SEP-2577): servers still send it; see sampling.rs.
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotification, CancelledNotificationParam, ClientCapabilities,
    ClientConfig, ClientRequest, CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams, ElicitResult,
    ElicitationAction, ElicitationCapability, ErrorData, Extensions, FormElicitationCapability, Implementation,
    InitializeRequestParams, ProgressNotificationParam, RequestId, RequestMetaObject, SamplingCapability, ServerResult,
    Tool as McpToolInfo, UrlElicitationCapability,
};
use rmcp::service::{
    ClientInitializeError, InboundStreamOrigin, NotificationContext, Peer, PeerRequestOptions, RequestContext,
    RequestHandle, RoleClient, RunningService, ServiceError,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Map, Value};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use super::call::ActiveCall;
use super::mapping::{check_arguments, output_from_result, spec_from_mcp};
use super::{McpConfig, McpError, McpServerConfig, McpTransport};
use crate::tool::{Tool, ToolError, ToolOutput, ToolRegistry, ToolRunContext, ToolSpec};

/// How many stderr lines of a stdio server are kept for error messages.
const STDERR_LINES: usize = 20;
/// How long to wait for a dead server's last stderr lines; bounded, since a
/// grandchild may hold the pipe open.
const STDERR_DRAIN: Duration = Duration::from_secs(2);
/// The `_meta` key carrying the call's idempotency key.
const IDEMPOTENCY_META_KEY: &str = "idempotencyKey";

/// The variables of this process a stdio server is started with: what a program needs
/// to find its tools, its home and its language. Nothing else (API keys, the database
/// URL) reaches a server unless its entry names it in `env`.
#[cfg(not(windows))]
const INHERITED: &[&str] = &["PATH", "HOME", "LANG"];
#[cfg(windows)]
const INHERITED: &[&str] = &["PATH", "HOME", "LANG", "SYSTEMROOT", "USERPROFILE", "TEMP", "TMP", "APPDATA"];

/// A stdio server's whole environment: [`INHERITED`] from `inherited` (this process's
/// variables), then `entry`'s own, which win.
fn server_environment(
    entry: &std::collections::BTreeMap<String, crate::secret::Secret>,
    inherited: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let own = INHERITED.iter().filter_map(|name| Some(((*name).into(), inherited(name)?)));
    own.chain(entry.iter().map(|(name, value)| (name.into(), value.expose().into()))).collect()
}

/// The tools of several MCP servers, as one [`ToolRegistry`].
///
/// Built with [`McpToolRegistry::connect`], which lists every server's tools once;
/// the list is then served from memory and refreshed when a server sends
/// `notifications/tools/list_changed`. A server whose process dies is started again
/// on the next call to one of its tools.
#[derive(Debug, Clone)]
pub struct McpToolRegistry {
    servers: Vec<Arc<Server>>,
    changes: watch::Receiver<u64>,
}

impl McpToolRegistry {
    /// Starts or reaches every server of `config` and lists its tools.
    ///
    /// # Errors
    /// [`McpError::Connect`] naming the first server that cannot be reached, with the
    /// tail of its stderr.
    pub async fn connect(config: &McpConfig) -> Result<Self, McpError> {
        let (changed, changes) = watch::channel(0);
        let changed = Arc::new(changed);
        let mut servers = Vec::new();
        for (name, server) in &config.servers {
            let server = Arc::new(Server::new(name, server.clone(), changed.clone()));
            server.connection().await?;
            servers.push(server);
        }
        Ok(Self { servers, changes })
    }

    /// The servers of the file `PORTIA_MCP_CONFIG` names; empty when it is unset.
    ///
    /// # Errors
    /// As [`McpConfig::from_file`] and [`McpToolRegistry::connect`].
    pub async fn from_env() -> Result<Self, McpError> {
        Self::connect(&McpConfig::from_env()?.unwrap_or_default()).await
    }

    /// Counts the refreshes of any server's tool list: wait on it (`changed()`) to
    /// see a `tools/list_changed` take effect.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Lists every server's tools again now.
    ///
    /// # Errors
    /// As [`McpToolRegistry::connect`].
    pub async fn refresh(&self) -> Result<(), McpError> {
        for server in &self.servers {
            let connection = server.connection().await?;
            server.refresh(connection.service.peer()).await?;
        }
        Ok(())
    }

    /// Closes every connection, ending the servers' processes.
    pub async fn close(&self) {
        for server in &self.servers {
            let connection = server.connection.lock().await.take();
            if let Some(connection) = connection
                && let Ok(mut connection) = Arc::try_unwrap(connection)
            {
                let _ = connection.service.close().await;
            }
        }
    }
}

impl ToolRegistry for McpToolRegistry {
    fn get_tools(&self) -> Vec<Arc<dyn Tool>> {
        self.servers.iter().flat_map(Server::tools).collect()
    }
}

/// One configured server and its (re)connectable session.
struct Server {
    name: String,
    config: McpServerConfig,
    /// What the config gave the server that may be a secret, blanked out of its
    /// errors and stderr lines.
    secrets: Arc<[String]>,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// The listed tools. Descriptions, not `McpTool`s: a tool holds its server, and a
    /// server holding its tools would never be dropped, nor its process ended.
    tools: RwLock<Vec<McpToolInfo>>,
    changed: Arc<watch::Sender<u64>>,
    /// Calls in flight, newest last.
    active: Mutex<Vec<Arc<ActiveCall>>>,
    /// Held while a request is sent and until its call knows its progress token, so
    /// that the server's first progress report, however quick, finds the call.
    sending: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpServer").field("name", &self.name).field("config", &self.config).finish_non_exhaustive()
    }
}

struct Connection {
    service: RunningService<RoleClient, Handler>,
    stderr: Option<Arc<StderrTail>>,
}

impl Server {
    fn new(name: &str, config: McpServerConfig, changed: Arc<watch::Sender<u64>>) -> Self {
        Self {
            name: name.to_owned(),
            secrets: config.transport.secrets().into(),
            config,
            connection: tokio::sync::Mutex::default(),
            tools: RwLock::default(),
            changed,
            active: Mutex::default(),
            sending: tokio::sync::Mutex::default(),
        }
    }

    fn tools(self: &Arc<Self>) -> Vec<Arc<dyn Tool>> {
        let listed = self.tools.read().unwrap_or_else(PoisonError::into_inner);
        listed.iter().map(|info| Arc::new(McpTool::new(self.clone(), info.clone())) as Arc<dyn Tool>).collect()
    }

    /// The live connection, connecting (again, after a death) when there is none.
    async fn connection(self: &Arc<Self>) -> Result<Arc<Connection>, McpError> {
        self.connection_or_error().await.map_err(|e| e.redacted(&self.secrets))
    }

    async fn connection_or_error(self: &Arc<Self>) -> Result<Arc<Connection>, McpError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.service.is_closed()) {
            return Ok(connection.clone());
        }
        let connection = Arc::new(self.connect().await?);
        self.refresh(connection.service.peer()).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn connect(self: &Arc<Self>) -> Result<Connection, McpError> {
        let handler = Handler { server: Arc::downgrade(self) };
        let connect_error =
            |message: String, stderr: Vec<String>| McpError::Connect { server: self.name.clone(), message, stderr };
        match &self.config.transport {
            McpTransport::Stdio { command, args, env } => {
                let mut cmd = tokio::process::Command::new(command);
                // A server sees none of this process's keys: only what a program needs to
                // run, and what its entry names.
                cmd.args(args).env_clear().envs(server_environment(env, |name| std::env::var_os(name)));
                let (transport, stderr) =
                    TokioChildProcess::builder(cmd).stderr(Stdio::piped()).spawn().map_err(|e| {
                        connect_error(format!("cannot start `{command}` ({e}); check `command` and PATH"), vec![])
                    })?;
                let stderr = stderr.map(|pipe| StderrTail::spawn(&self.name, pipe, self.secrets.clone()));
                match self.handshake(handler.serve(transport)).await {
                    Ok(service) => Ok(Connection { service, stderr }),
                    Err(message) => Err(connect_error(message, drain(stderr.as_ref()).await)),
                }
            }
            McpTransport::InProcess(connector) => {
                let service =
                    self.handshake(handler.serve((connector.0)())).await.map_err(|m| connect_error(m, vec![]))?;
                Ok(Connection { service, stderr: None })
            }
            McpTransport::Http { url, headers, bearer_token } => {
                let transport = StreamableHttpClientTransport::with_client(
                    crate::http::mcp_client(),
                    self.http_config(url, headers, bearer_token.as_ref())?,
                );
                let service = self.handshake(handler.serve(transport)).await.map_err(|m| connect_error(m, vec![]))?;
                Ok(Connection { service, stderr: None })
            }
        }
    }

    /// Waits for the initialize handshake, no longer than a call may take.
    async fn handshake(
        &self,
        serving: impl Future<Output = Result<RunningService<RoleClient, Handler>, ClientInitializeError>>,
    ) -> Result<RunningService<RoleClient, Handler>, String> {
        match tokio::time::timeout(self.config.timeout, serving).await {
            Ok(Ok(service)) => Ok(service),
            // rmcp's own words name the transport's Rust type; the transport's error says what happened.
            Ok(Err(ClientInitializeError::TransportError { error, context })) => {
                Err(format!("the MCP handshake failed ({context}): {}", error.error))
            }
            Ok(Err(e)) => Err(format!("the MCP handshake failed: {e}")),
            Err(_) => Err(format!("no answer to initialize within {} s", self.config.timeout.as_secs())),
        }
    }

    fn http_config(
        &self,
        url: &str,
        headers: &std::collections::BTreeMap<String, crate::secret::Secret>,
        bearer: Option<&crate::secret::Secret>,
    ) -> Result<StreamableHttpClientTransportConfig, McpError> {
        let setting = format!("mcpServers.{}.headers", self.name);
        let mut custom = HashMap::new();
        let mut auth = bearer.map(|t| t.expose().to_owned());
        for (name, value) in headers {
            // rmcp sends the bearer token itself; an `Authorization: Bearer` header is moved there.
            if name.eq_ignore_ascii_case("authorization")
                && let Some(token) = value.expose().strip_prefix("Bearer ")
            {
                auth = Some(token.trim().to_owned());
                continue;
            }
            // rmcp sets these itself and refuses a request that sets them too.
            if ["accept", "mcp-session-id", "last-event-id"].iter().any(|r| name.eq_ignore_ascii_case(r)) {
                return Err(McpError::config(&setting, format!("{name} is set by the MCP client itself; remove it")));
            }
            let header = reqwest::header::HeaderName::try_from(name.as_str())
                .map_err(|e| McpError::config(&setting, format!("{name:?} is not a header name: {e}")))?;
            let value = reqwest::header::HeaderValue::try_from(value.expose())
                .map_err(|_| McpError::config(&setting, format!("the value of {name} is not a valid header value")))?;
            custom.insert(header, value);
        }
        let mut config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(custom);
        if let Some(token) = auth {
            config = config.auth_header(token);
        }
        Ok(config)
    }

    /// Lists the tools and replaces the cached list.
    async fn refresh(&self, peer: &Peer<RoleClient>) -> Result<(), McpError> {
        let listed = peer.list_all_tools().await.map_err(|e| {
            let message = format!("tools/list failed: {}", service_error_words(&e));
            McpError::Connect { server: self.name.clone(), message, stderr: vec![] }.redacted(&self.secrets)
        })?;
        *self.tools.write().unwrap_or_else(PoisonError::into_inner) = listed;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn call(
        self: &Arc<Self>,
        tool: &str,
        args: Map<String, Value>,
        call: &ActiveCall,
    ) -> Result<rmcp::model::CallToolResult, McpError> {
        self.call_or_error(tool, args, call).await.map_err(|e| e.redacted(&self.secrets))
    }

    async fn call_or_error(
        self: &Arc<Self>,
        tool: &str,
        args: Map<String, Value>,
        call: &ActiveCall,
    ) -> Result<rmcp::model::CallToolResult, McpError> {
        let ctx = call.ctx();
        let mut meta = Map::new();
        if let Some(key) = &ctx.idempotency_key {
            meta.insert(IDEMPOTENCY_META_KEY.into(), Value::from(key.as_str()));
        }
        let meta = RequestMetaObject::from(meta);
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(
            CallToolRequestParams::new(tool.to_owned()).with_arguments(args),
        ));
        let (connection, handle) = self.send(tool, request, &meta, call).await?;
        let (peer, id) = (handle.peer.clone(), handle.id.clone());
        // The call's timeout is kept here, not by rmcp, so that it can stop while a
        // person answers the server's question.
        let response = tokio::select! {
            response = handle.await_response() => response,
            () = ctx.cancellation.cancelled() => {
                cancel(&peer, id, "the workflow was cancelled").await;
                return Err(McpError::Cancelled { server: self.name.clone(), tool: tool.to_owned() });
            }
            () = call.silent_too_long() => {
                cancel(&peer, id, "request timeout").await;
                let secs = self.config.timeout.as_secs();
                return Err(McpError::Timeout { server: self.name.clone(), tool: tool.to_owned(), secs });
            }
        };
        match response {
            Ok(ServerResult::CallToolResult(result)) => Ok(result),
            Ok(other) => Err(self.protocol(tool, format!("expected a tool result, got {other:?}"))),
            Err(e) => Err(self.failed(tool, e, &connection).await.await_tail().await),
        }
    }

    /// Sends a request. A connection found dead before the request left is replaced
    /// and the request sent once more: nothing reached the server, so nothing repeats.
    async fn send(
        self: &Arc<Self>,
        tool: &str,
        request: ClientRequest,
        meta: &RequestMetaObject,
        call: &ActiveCall,
    ) -> Result<(Arc<Connection>, RequestHandle<RoleClient>), McpError> {
        let connection = self.connection().await?;
        match self.send_on(&connection, request.clone(), meta, call).await {
            Ok(handle) => return Ok((connection, handle)),
            Err(ServiceError::McpError(e)) => return Err(self.protocol(tool, e.message.to_string())),
            Err(_) => self.forget(&connection).await,
        }
        let connection = self.connection().await?;
        match self.send_on(&connection, request, meta, call).await {
            Ok(handle) => Ok((connection, handle)),
            Err(e) => Err(self.failed(tool, e, &connection).await.await_tail().await),
        }
    }

    /// Sends a request of `call` on `connection`, and tells the call its id and token.
    async fn send_on(
        &self,
        connection: &Connection,
        request: ClientRequest,
        meta: &RequestMetaObject,
        call: &ActiveCall,
    ) -> Result<RequestHandle<RoleClient>, ServiceError> {
        let _sending = self.sending.lock().await;
        let options = PeerRequestOptions::no_options().with_meta(meta.clone());
        let handle = connection.service.peer().send_cancellable_request(request, options).await?;
        call.sent(handle.id.clone(), handle.progress_token.clone());
        Ok(handle)
    }

    /// The call a request of the server belongs to: the one whose HTTP response
    /// stream it came on, when the transport says; otherwise the newest.
    fn call_for(&self, extensions: &Extensions) -> Option<Arc<ActiveCall>> {
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let linked = match extensions.get::<InboundStreamOrigin>() {
            Some(InboundStreamOrigin::OutboundRequest(id)) => active.iter().rev().find(|c| c.is_request(id)),
            _ => None,
        };
        linked.or_else(|| active.last()).cloned()
    }

    /// Passes a progress report to the call it is about.
    async fn progress(&self, report: ProgressNotificationParam) {
        // A report sent as soon as the request arrived waits for the call to know its token.
        drop(self.sending.lock().await);
        let call = {
            let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
            active.iter().find(|c| c.reports_as(&report.progress_token)).cloned()
        };
        if let Some(call) = call {
            call.progress(report);
        }
    }

    /// Drops `connection` if it is still the current one, so the next use reconnects.
    async fn forget(&self, connection: &Arc<Connection>) {
        let mut slot = self.connection.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, connection)) {
            *slot = None;
        }
    }

    fn protocol(&self, tool: &str, message: String) -> McpError {
        McpError::Protocol { server: self.name.clone(), tool: tool.to_owned(), message }
    }

    /// Maps a failed request; a closed transport means the server is gone, and its
    /// connection is dropped so the next call starts it again.
    async fn failed(&self, tool: &str, error: ServiceError, connection: &Arc<Connection>) -> Failure {
        match error {
            ServiceError::McpError(e) => Failure::Ready(self.protocol(tool, e.message.to_string())),
            ServiceError::Timeout { timeout } => Failure::Ready(McpError::Timeout {
                server: self.name.clone(),
                tool: tool.to_owned(),
                secs: timeout.as_secs(),
            }),
            ServiceError::Cancelled { .. } => {
                Failure::Ready(McpError::Cancelled { server: self.name.clone(), tool: tool.to_owned() })
            }
            ServiceError::UnexpectedResponse | ServiceError::InputRequiredRoundsExceeded { .. } => {
                Failure::Ready(self.protocol(tool, error.to_string()))
            }
            other => {
                self.forget(connection).await;
                Failure::Died {
                    error: McpError::ServerDied {
                        server: self.name.clone(),
                        tool: tool.to_owned(),
                        message: service_error_words(&other),
                        stderr: vec![],
                    },
                    stderr: connection.stderr.clone(),
                }
            }
        }
    }
}

/// What a failed request's error says, without the Rust type name rmcp puts in a
/// transport's error.
fn service_error_words(error: &ServiceError) -> String {
    match error {
        ServiceError::TransportSend(e) => format!("sending failed: {}", e.error),
        other => other.to_string(),
    }
}

/// Tells the server to stop request `id`; its answer, if one comes, is dropped.
async fn cancel(peer: &Peer<RoleClient>, id: RequestId, reason: &str) {
    let cancel = CancelledNotificationParam::new(Some(id), Some(reason.to_owned()));
    let _ = peer.send_notification(CancelledNotification::new(cancel).into()).await;
}

/// A mapped error, or a death whose stderr tail is still to be read.
enum Failure {
    Ready(McpError),
    Died { error: McpError, stderr: Option<Arc<StderrTail>> },
}

impl Failure {
    async fn await_tail(self) -> McpError {
        match self {
            Self::Ready(error) => error,
            Self::Died { error: McpError::ServerDied { server, tool, message, .. }, stderr } => {
                McpError::ServerDied { server, tool, message, stderr: drain(stderr.as_ref()).await }
            }
            Self::Died { error, .. } => error,
        }
    }
}

impl From<Failure> for McpError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Ready(error) | Failure::Died { error, .. } => error,
        }
    }
}

/// The last lines a stdio server wrote to stderr.
struct StderrTail {
    lines: Mutex<VecDeque<String>>,
    closed: watch::Sender<bool>,
}

impl StderrTail {
    /// Reads `pipe`, blanking `secrets` (the values the server was started with,
    /// which it may print) out of each line before it is logged or kept.
    fn spawn(server: &str, pipe: tokio::process::ChildStderr, secrets: Arc<[String]>) -> Arc<Self> {
        let tail = Arc::new(Self { lines: Mutex::default(), closed: watch::channel(false).0 });
        let (writer, server) = (tail.clone(), server.to_owned());
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = crate::secret::redact(&line, secrets.iter().map(String::as_str));
                tracing::debug!(server = %server, "mcp server stderr: {line}");
                let mut kept = writer.lines.lock().unwrap_or_else(PoisonError::into_inner);
                if kept.len() == STDERR_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
            writer.closed.send_replace(true);
        });
        tail
    }
}

/// The stderr tail once the pipe has closed (or [`STDERR_DRAIN`] has passed).
async fn drain(tail: Option<&Arc<StderrTail>>) -> Vec<String> {
    let Some(tail) = tail else { return vec![] };
    let mut closed = tail.closed.subscribe();
    let _ = tokio::time::timeout(STDERR_DRAIN, closed.wait_for(|c| *c)).await;
    tail.lines.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
}

/// Receives what a server sends unasked.
struct Handler {
    server: Weak<Server>,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        let implementation = Implementation::new("portia", env!("CARGO_PKG_VERSION"));
        let mut capabilities = ClientCapabilities::default();
        capabilities.elicitation = Some(
            ElicitationCapability::new()
                .with_form(FormElicitationCapability::new())
                .with_url(UrlElicitationCapability::new()),
        );
        capabilities.sampling = Some(SamplingCapability::default());
        InitializeRequestParams::new(capabilities, implementation)
    }

    #[allow(deprecated)] // See sampling.rs.
    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        match self.server.upgrade().and_then(|s| s.call_for(&context.extensions)) {
            Some(call) => call.sample(&params).await,
            None => {
                Err(ErrorData::invalid_request("sampling is answered only during a workflow step's tool call", None))
            }
        }
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let Some(server) = self.server.upgrade() else { return Ok(ElicitResult::new(ElicitationAction::Decline)) };
        Ok(match server.call_for(&context.extensions) {
            Some(call) => call.elicit(&server.name, &request).await,
            // Not during a call of ours (a server asking unprompted): nobody to ask.
            None => ElicitResult::new(ElicitationAction::Decline),
        })
    }

    async fn on_progress(&self, report: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        if let Some(server) = self.server.upgrade() {
            server.progress(report).await;
        }
    }

    async fn on_tool_list_changed(&self, context: NotificationContext<RoleClient>) {
        let Some(server) = self.server.upgrade() else { return };
        // Listing is a request: made from its own task, so this handler returns first.
        tokio::spawn(async move {
            if let Err(e) = server.refresh(&context.peer).await {
                tracing::warn!(server = %server.name, "could not refresh the tool list: {e}");
            }
        });
    }
}

/// A call among its server's active ones until it ends, or until its step is
/// dropped mid-call (a cancelled workflow), so that no request of the server goes
/// to a call nobody awaits.
struct InFlight<'a>(Arc<ActiveCall>, &'a Server);

impl<'a> InFlight<'a> {
    fn start(server: &'a Server, call: ActiveCall) -> Self {
        let call = Arc::new(call);
        server.active.lock().unwrap_or_else(PoisonError::into_inner).push(call.clone());
        Self(call, server)
    }

    /// The call, no longer active.
    fn end(self) -> Arc<ActiveCall> {
        self.0.clone()
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.1.active.lock().unwrap_or_else(PoisonError::into_inner).retain(|c| !Arc::ptr_eq(c, &self.0));
    }
}

/// One tool of an MCP server.
#[derive(Debug)]
pub struct McpTool {
    server: Arc<Server>,
    info: McpToolInfo,
    spec: ToolSpec,
}

impl McpTool {
    fn new(server: Arc<Server>, info: McpToolInfo) -> Self {
        let spec = spec_from_mcp(&server.name, &info);
        Self { server, info, spec }
    }

    /// The server's name for the tool (the id is `server__name`).
    pub fn mcp_name(&self) -> &str {
        &self.info.name
    }
}

#[async_trait::async_trait]
impl Tool for McpTool {
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    async fn run(&self, ctx: &ToolRunContext, args: Value) -> Result<ToolOutput, ToolError> {
        let args = check_arguments(&self.spec.args_schema, &args)?;
        let call = InFlight::start(&self.server, ActiveCall::new(ctx, &self.server.config));
        let result = self.server.call(&self.info.name, args, &call.0).await;
        let call = call.end();
        // Questions the server asked and nobody has answered yet: the step waits for a
        // person, and the call is made again when the workflow resumes.
        let asked = call.asked();
        if !asked.is_empty() {
            return Ok(ToolOutput::Clarifications(asked));
        }
        output_from_result(result.map_err(|e| e.into_tool_error(&self.spec))?)
    }
}

#[cfg(test)]
mod environment_tests {
    use std::collections::BTreeMap;
    use std::ffi::OsString;

    use super::*;
    use crate::secret::Secret;

    #[test]
    fn a_server_gets_path_home_lang_and_its_entrys_variables_only() {
        let ours = |name: &str| {
            ["PATH", "HOME", "LANG", "OPENAI_API_KEY", "PORTIA_DATABASE_URL"]
                .contains(&name)
                .then(|| OsString::from(format!("our-{name}")))
        };
        let entry = BTreeMap::from([
            ("GITHUB_TOKEN".to_owned(), Secret::new("ghp")),
            ("LANG".to_owned(), Secret::new("C.UTF-8")),
        ]);
        let env: BTreeMap<OsString, OsString> = server_environment(&entry, ours).into_iter().collect();
        let names: Vec<&str> = env.keys().map(|k| k.to_str().unwrap()).collect();
        assert!(["GITHUB_TOKEN", "HOME", "LANG", "PATH"].iter().all(|n| names.contains(n)), "{names:?}");
        assert!(!names.contains(&"OPENAI_API_KEY") && !names.contains(&"PORTIA_DATABASE_URL"), "{names:?}");
        assert_eq!(env[&OsString::from("LANG")], "C.UTF-8", "the entry's own value wins");
    }
}
