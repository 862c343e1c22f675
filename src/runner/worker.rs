//! Workers: runners that take queued workflows from the store and run them.
//!
//! Any process may [`submit`](Runner::submit_plan) a workflow; a [`Worker`] in any
//! process sharing the store claims it, runs it under its lease, and goes on to the
//! next. A workflow waiting for a human holds no worker: once answered (from any
//! process) it is queued again. A worker that dies leaves leases that lapse, and the
//! workflows they held are taken over by the others.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};

use super::Runner;
use super::calls::{Stop, StopSignal};
use crate::Result;
use crate::ids::WorkflowId;
use crate::storage::LeaseGrant;
use crate::workflow::Workflow;

/// How a [`Worker`] runs. Start from [`WorkerOptions::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct WorkerOptions {
    concurrency: usize,
    poll_interval: Duration,
    shutdown_grace: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self { concurrency: 8, poll_interval: Duration::from_secs(1), shutdown_grace: Duration::from_secs(30) }
    }
}

impl WorkerOptions {
    /// Eight workflows at once, polling every second, 30 seconds' grace at shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many workflows the worker runs at once (at least one).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// How often to look for work when nothing wakes the worker: a store shared by
    /// other processes cannot always tell it (SQLite cannot; Postgres can).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long running workflows may go on after shutdown is asked before they are
    /// stopped and their leases released.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }
}

/// What a worker did, once it has shut down.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Runs that ended (finished, failed, or stopped to wait for a human).
    pub runs: usize,
    /// Runs that returned an error (a lost lease, a storage failure...).
    pub errors: usize,
    /// Runs stopped at shutdown, past the grace period, and left for another worker.
    pub handed_back: usize,
}

/// Claims queued workflows and runs them. Made by [`Runner::worker`].
#[derive(Debug)]
pub struct Worker {
    runner: Runner,
    options: WorkerOptions,
}

/// The runs in progress, with the workflow each runs and the signal that stops it.
#[derive(Default)]
struct Runs {
    tasks: JoinSet<Result<Workflow>>,
    running: HashMap<Id, (WorkflowId, StopSignal)>,
}

impl Runner {
    /// A worker that runs this runner's queued workflows: see [`Worker`].
    pub fn worker(&self, options: WorkerOptions) -> Worker {
        Worker { runner: self.clone(), options }
    }
}

impl Worker {
    /// Runs until the process receives SIGTERM or ctrl-c, then shuts down gracefully.
    pub async fn run(self) -> WorkerReport {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `shutdown` completes. Then it stops claiming, lets the running
    /// workflows go on for the grace period, stops those still running and releases
    /// their leases, so that another worker takes them over at once.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> WorkerReport {
        tokio::pin!(shutdown);
        let mut runs = Runs::default();
        let mut report = WorkerReport::default();
        tracing::info!(concurrency = self.options.concurrency, "worker started");
        loop {
            self.fill(&mut runs).await;
            let storage = self.runner.storage();
            tokio::select! {
                () = &mut shutdown => break,
                Some(ended) = runs.tasks.join_next_with_id(), if !runs.tasks.is_empty() => {
                    count(&mut report, &mut runs, ended);
                }
                () = storage.wait_for_runnable(self.options.poll_interval) => {}
            }
        }
        tracing::info!(running = runs.tasks.len(), "worker shutting down");
        self.drain(runs, &mut report).await;
        tracing::info!(runs = report.runs, errors = report.errors, handed_back = report.handed_back, "worker stopped");
        report
    }

    /// Claims workflows until the worker is full or nothing is runnable.
    async fn fill(&self, runs: &mut Runs) {
        let ttl = self.runner.config().lease_ttl();
        while runs.tasks.len() < self.options.concurrency {
            match self.runner.storage().claim_runnable(self.runner.owner(), ttl).await {
                Ok(Some(grant)) => self.start(runs, grant),
                Ok(None) => return,
                Err(e) => {
                    // The store may be back by the next poll.
                    tracing::warn!(error = %e, "could not claim a workflow");
                    return;
                }
            }
        }
    }

    fn start(&self, runs: &mut Runs, grant: LeaseGrant) {
        let id = grant.workflow.id();
        tracing::info!(workflow = %id, "worker claimed a workflow");
        let signal = StopSignal::default();
        let runner = self.runner.clone();
        let run_signal = signal.clone();
        let task = runs.tasks.spawn(async move { runner.run_granted(grant, run_signal).await });
        runs.running.insert(task.id(), (id, signal));
    }

    /// Waits for the running workflows for the grace period, then stops the rest.
    async fn drain(&self, mut runs: Runs, report: &mut WorkerReport) {
        let deadline = tokio::time::Instant::now() + self.options.shutdown_grace;
        while !runs.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, runs.tasks.join_next_with_id()).await {
                Ok(Some(ended)) => count(report, &mut runs, ended),
                Ok(None) => break,
                Err(_) => {
                    for (_, signal) in runs.running.values() {
                        signal.stop(Stop::Shutdown);
                    }
                    report.handed_back += runs.tasks.len();
                    while let Some(ended) = runs.tasks.join_next_with_id().await {
                        count(report, &mut runs, ended);
                    }
                }
            }
        }
    }
}

fn count(
    report: &mut WorkerReport,
    runs: &mut Runs,
    ended: std::result::Result<(Id, Result<Workflow>), tokio::task::JoinError>,
) {
    report.runs += 1;
    let task = match &ended {
        Ok((task, _)) => *task,
        Err(e) => e.id(),
    };
    // Every task is registered when spawned; an id is only missing if that changes.
    let id = runs.running.remove(&task).map_or_else(String::new, |(id, _)| id.to_string());
    match ended {
        Ok((_, Ok(workflow))) => match workflow.failure() {
            Some(failure) => {
                tracing::warn!(workflow = %id, kind = ?failure.kind, error = %failure.message, "workflow FAILED")
            }
            None => tracing::info!(workflow = %id, state = %workflow.state(), "worker run ended"),
        },
        Ok((_, Err(e))) => {
            report.errors += 1;
            tracing::warn!(workflow = %id, error = %e, "worker run stopped on an error");
        }
        Err(e) => {
            report.errors += 1;
            tracing::error!(workflow = %id, error = %e, "worker run panicked");
        }
    }
}

/// Completes when the process is asked to stop: on SIGTERM or ctrl-c (ctrl-c only
/// where there is no SIGTERM). [`Worker::run`] stops on it; pass it, or a future that
/// races it, to [`Worker::run_until`] to stop on something else as well.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops the worker"),
        }
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %e, "cannot listen for ctrl-c either; the worker runs until the process ends");
        std::future::pending::<()>().await;
    }
}
