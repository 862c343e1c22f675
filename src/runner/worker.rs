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
use tokio::time::Instant;

use super::Runner;
use super::calls::{Stop, StopSignal};
use crate::error::with_causes;
use crate::ids::WorkflowId;
use crate::storage::LeaseGrant;
use crate::workflow::Workflow;
use crate::{Error, Result};

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
    /// Runs that left their workflow FAILED (each is also logged, with its id).
    #[serde(default)]
    pub failed: usize,
    /// Runs that returned an error (a lost lease, a storage failure...).
    pub errors: usize,
    /// Runs stopped at shutdown, past the grace period, and left for another worker.
    pub handed_back: usize,
    /// Why the worker stopped of its own accord, when it did: its store can no
    /// longer be used by this process (its database file was deleted or replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_on: Option<String>,
}

/// The first wait after the store fails, doubled for each failure in a row.
const STORE_BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// The longest wait after the store fails: the worker tries again at least this often.
const STORE_BACKOFF_MOST: Duration = Duration::from_secs(30);

/// Claims queued workflows and runs them. Made by [`Runner::worker`].
///
/// When the store fails (a full disk, a lost database connection), the run it
/// failed releases its lease at once and the failure is logged with the workflow's
/// id; the worker then claims nothing for a while, half a second after the first
/// failure and twice as long after each further one in a row, at most 30 seconds,
/// so that it neither spins on a failing store nor gives up on it. A run that ends
/// without a store error ends the backing off.
///
/// A stored row that cannot be read ([`Error::Unreadable`]) is not a failing store:
/// it fails the same way however often it is tried. A queued workflow that cannot
/// be read is set aside by the claim; one whose plan or journal cannot be read is
/// set aside by its run, which logs what to do. Either way the worker goes on with
/// the others without backing off, and `portia list` shows the workflow set aside
/// with the reason.
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
        let mut backoff = Backoff::default();
        tracing::info!(concurrency = self.options.concurrency, "worker started");
        loop {
            if !backoff.waiting() {
                self.fill(&mut runs, &mut backoff, &mut report).await;
            }
            if let Some(reason) = &report.stopped_on {
                tracing::error!(error = %reason, "the worker stops: its store cannot be used by this process any more");
                break;
            }
            let storage = self.runner.storage();
            tokio::select! {
                // A run's end first: a failed run's release also wakes the wait below,
                // and the worker must count the failure before it claims again.
                biased;
                () = &mut shutdown => break,
                Some(ended) = runs.tasks.join_next_with_id(), if !runs.tasks.is_empty() => {
                    match count(&mut report, &mut runs, ended) {
                        Ended::Ok => backoff.reset(),
                        Ended::StoreFailed => backoff.failed(),
                        Ended::OtherError => {}
                    }
                }
                () = backoff.wait_or(storage.wait_for_runnable(self.options.poll_interval)) => {}
            }
        }
        tracing::info!(running = runs.tasks.len(), "worker shutting down");
        self.drain(runs, &mut report).await;
        tracing::info!(
            runs = report.runs,
            failed = report.failed,
            errors = report.errors,
            handed_back = report.handed_back,
            "worker stopped"
        );
        report
    }

    /// Claims workflows until the worker is full or nothing is runnable.
    async fn fill(&self, runs: &mut Runs, backoff: &mut Backoff, report: &mut WorkerReport) {
        let ttl = self.runner.config().lease_ttl();
        while runs.tasks.len() < self.options.concurrency {
            match self.runner.storage().claim_runnable(self.runner.owner(), ttl).await {
                Ok(Some(grant)) => self.start(runs, grant),
                Ok(None) => return,
                Err(e @ Error::StoreFileChanged { .. }) => {
                    report.stopped_on = Some(e.to_string());
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %with_causes(&e), "could not claim a workflow");
                    backoff.failed();
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
                Ok(Some(ended)) => {
                    count(report, &mut runs, ended);
                }
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

/// How a run ended, for the worker's backing off.
enum Ended {
    /// At rest, failed or not: the store works.
    Ok,
    /// On a store error.
    StoreFailed,
    /// On another error (a lost lease, a panic).
    OtherError,
}

/// The worker's wait after store failures: see [`Worker`].
#[derive(Debug, Default)]
struct Backoff {
    /// Store failures in a row.
    failures: u32,
    /// No claims before this.
    until: Option<Instant>,
}

impl Backoff {
    fn failed(&mut self) {
        let delay = STORE_BACKOFF_FIRST.saturating_mul(1 << self.failures.min(16)).min(STORE_BACKOFF_MOST);
        self.failures = self.failures.saturating_add(1);
        self.until = Some(Instant::now() + delay);
        tracing::warn!(
            failures = self.failures,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "the store failed; the worker claims nothing until it retries"
        );
    }

    fn reset(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "the store works again; the worker claims as usual");
        }
        *self = Self::default();
    }

    /// Whether the worker is waiting before it claims again.
    fn waiting(&self) -> bool {
        self.until.is_some_and(|until| Instant::now() < until)
    }

    /// Waits out the backing off if there is one, else `otherwise`.
    async fn wait_or(&self, otherwise: impl Future<Output = ()>) {
        match self.until.filter(|_| self.waiting()) {
            Some(until) => tokio::time::sleep_until(until).await,
            None => otherwise.await,
        }
    }
}

fn count(
    report: &mut WorkerReport,
    runs: &mut Runs,
    ended: std::result::Result<(Id, Result<Workflow>), tokio::task::JoinError>,
) -> Ended {
    report.runs += 1;
    let task = match &ended {
        Ok((task, _)) => *task,
        Err(e) => e.id(),
    };
    // Every task is registered when spawned; an id is only missing if that changes.
    let id = runs.running.remove(&task).map_or_else(String::new, |(id, _)| id.to_string());
    match ended {
        Ok((_, Ok(workflow))) => {
            match workflow.failure() {
                Some(failure) => {
                    report.failed += 1;
                    tracing::warn!(workflow = %id, kind = ?failure.kind, error = %failure.message, "workflow FAILED");
                }
                None => tracing::info!(workflow = %id, state = %workflow.state(), "worker run ended"),
            }
            Ended::Ok
        }
        Ok((_, Err(e))) => {
            report.errors += 1;
            if matches!(e, Error::StoreFileChanged { .. }) {
                report.stopped_on = Some(e.to_string());
            }
            match e {
                Error::Unreadable { .. } => tracing::error!(
                    workflow = %id,
                    error = %with_causes(&e),
                    "a row the workflow needs cannot be read, so it is set aside; fix or restore the row \
                     and `portia put-back` or `portia resume` it, or `portia delete` it"
                ),
                // Whether the run could release its lease is logged by the run: a
                // store that failed may have refused the release too.
                _ => tracing::warn!(workflow = %id, error = %with_causes(&e), "worker run stopped on an error"),
            }
            if matches!(e, Error::Storage { .. }) { Ended::StoreFailed } else { Ended::OtherError }
        }
        Err(e) => {
            report.errors += 1;
            tracing::error!(workflow = %id, error = %e, "worker run panicked");
            Ended::OtherError
        }
    }
}

/// Completes when the process is asked to stop: on SIGTERM or ctrl-c (ctrl-c only
/// where there is no SIGTERM). [`Worker::run`] stops on it; pass it, or a future that
/// races it, to [`Worker::run_until`] to stop on something else as well.
///
/// SIGTERM is listened for from the moment this is called, not from when the future
/// is first polled, so a process that says it is ready once it has called this is
/// never ended by a SIGTERM's default action (call it within a tokio runtime).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        #[cfg(unix)]
        match terminate {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops the worker"),
        }
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c either; the worker runs until the process ends");
            std::future::pending::<()>().await;
        }
    }
}
