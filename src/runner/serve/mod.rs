//! `portia serve`: the runner over HTTP.
//!
#![doc = include_str!("../../docs/serve.md")]

mod agui;
mod api;
mod aside;
mod auth;
mod changes;
mod errors;
mod follow;
mod metrics;
mod openapi;
mod pages;
mod router;
mod runs;
mod site;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use auth::{ServerToken, Tokens};

use super::{Runner, WorkerOptions};
use crate::config::Config;
use crate::{Error, Result};

/// The largest request body the server reads, by default (1 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// How long runs may go on after shutdown is asked, by default: as long as a
/// [`Worker`](super::Worker)'s.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How a [`Server`] serves. Start from [`ServeOptions::new`] or
/// [`ServeOptions::from_config`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ServeOptions {
    tokens: Tokens,
    cors_origins: Vec<String>,
    body_limit: usize,
    workers: usize,
    plan_tools: Option<Vec<String>>,
    shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tokens: Tokens::default(),
            cors_origins: Vec::new(),
            body_limit: DEFAULT_BODY_LIMIT,
            workers: 0,
            plan_tools: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl ServeOptions {
    /// No tokens (loopback only), no CORS, 1 MiB bodies, no in-process workers (each
    /// new workflow runs in a task of the server's own), 30 seconds' grace at shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Options from the settings: bearer tokens from `PORTIA_SERVER_TOKENS`
    /// (comma-separated, each `TOKEN` or `END_USER:TOKEN`) and allowed browser
    /// origins from `PORTIA_SERVER_CORS_ORIGINS` (comma-separated).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty token or end user.
    pub fn from_config(config: &Config) -> Result<Self> {
        let mut options = Self::new();
        if let Some(text) = config.var("PORTIA_SERVER_TOKENS") {
            options.tokens = Tokens::parse(&text)?;
        }
        if let Some(text) = config.var("PORTIA_SERVER_CORS_ORIGINS") {
            options.cors_origins =
                text.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned).collect();
        }
        Ok(options)
    }

    /// The bearer tokens every route but the health checks requires; none means no
    /// token is asked for, which is allowed on loopback only.
    pub fn tokens(mut self, tokens: Tokens) -> Self {
        self.tokens = tokens;
        self
    }

    /// Browser origins allowed to call the API from another site (none by default:
    /// no CORS headers at all).
    pub fn cors_origins<I: IntoIterator<Item = S>, S: Into<String>>(mut self, origins: I) -> Self {
        self.cors_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// The largest request body read, in bytes; a larger one is refused with 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Runs this many queued workflows at once in the server's process, with a
    /// [`Worker`](super::Worker). With workers, new workflows are queued by default;
    /// without, they run in a task of the server's own.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How long the runs in progress may go on once shutdown is asked (30 seconds
    /// by default), the server's own and its workers' alike. Those still running
    /// then are stopped as a worker stops its runs: their leases released, each left
    /// to be resumed, and named in the log with how to resume it.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The tools the planner is offered when a request names none (default: every
    /// tool of the runner's registry).
    pub fn plan_tools<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.plan_tools = Some(ids.into_iter().map(Into::into).collect());
        self
    }
}

/// The HTTP server: the JSON API under `/v1`, AG-UI event streams, `/metrics`, and
/// the web inspector at `/`. See the [module docs](self).
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    runner: Runner,
    options: ServeOptions,
}

impl Server {
    /// Binds `addr`. Any address but a loopback one needs tokens.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `PORTIA_SERVER_TOKENS` for a non-loopback
    /// address without tokens, or `--listen` when the address cannot be bound.
    pub async fn bind(runner: Runner, addr: SocketAddr, options: ServeOptions) -> Result<Self> {
        if !addr.ip().is_loopback() && options.tokens.is_empty() {
            return Err(Error::InvalidConfig {
                setting: "PORTIA_SERVER_TOKENS".to_owned(),
                message: format!(
                    "listening on {addr}, beyond this machine, needs bearer tokens: set PORTIA_SERVER_TOKENS \
                     (comma-separated, each TOKEN or END_USER:TOKEN), or listen on 127.0.0.1"
                ),
            });
        }
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::InvalidConfig {
            setting: "--listen".to_owned(),
            message: format!("cannot listen on {addr}: {e}"),
        })?;
        Ok(Self { listener, runner, options })
    }

    /// The address it listens on (with the port picked, for port 0).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the socket cannot say.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|e| Error::InvalidConfig {
            setting: "--listen".to_owned(),
            message: format!("the socket has no address: {e}"),
        })
    }

    /// Serves until the process receives SIGTERM or ctrl-c, then shuts down as
    /// [`Server::run_until`] does.
    ///
    /// # Errors
    /// As [`Server::run_until`].
    pub async fn run(self) -> Result<()> {
        self.run_until(super::worker::shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, with the in-process workers, if any; then
    /// stops accepting and lets open requests end. The runs in progress, the
    /// server's own and its workers', go on for the
    /// [grace period](ServeOptions::shutdown_grace); those still running then are
    /// stopped, each saved with its lease released, and the ones the server started
    /// are logged with how to resume them (no worker takes them over: they were
    /// never queued).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when serving fails.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let grace = self.options.shutdown_grace;
        let workers = (self.options.workers > 0).then(|| {
            let options = WorkerOptions::new().concurrency(self.options.workers).shutdown_grace(grace);
            let worker = self.runner.worker(options);
            let mut stop = stop_rx.clone();
            tokio::spawn(worker.run_until(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            }))
        });
        let runs = runs::BackgroundRuns::default();
        // Event streams end when the server stops, or graceful shutdown would wait on them.
        let app = router::build(self.runner, &self.options, stop_rx, runs.clone());
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            })
            .await;
        // No request is left to start a run: what runs now is all there is to wait for.
        let workers_stopped = async {
            if let Some(workers) = workers {
                let _ = workers.await;
            }
        };
        tokio::join!(runs.shut_down(grace), workers_stopped);
        served.map_err(|e| Error::InvalidConfig {
            setting: "--listen".to_owned(),
            message: format!("serving failed: {e}"),
        })
    }
}
