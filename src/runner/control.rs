//! A run's control: its lease, the heartbeat that keeps it, and the stop signal
//! that a cancellation or a lost lease sends to the run and to its running tools.
//!
//! Correctness rests on the store's lease alone. The map of local runs is only a
//! shortcut: a cancellation made in this process reaches a run of it at once, and
//! the canceller can wait for that run to end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::calls::{Stop, StopSignal};
use crate::events::WorkflowEvent;
use crate::ids::WorkflowId;
use crate::storage::{Lease, LeaseQueue, Storage};
use crate::workflow::Workflow;
use crate::{Error, Result};

/// How often the store is asked whether someone cancelled one of this process's runs.
const CANCEL_POLL: Duration = Duration::from_secs(1);

/// The runs of this process, by workflow.
#[derive(Debug, Default, Clone)]
pub(super) struct LocalRuns(Arc<Mutex<Runs>>);

#[derive(Debug, Default)]
struct Runs {
    by_workflow: HashMap<WorkflowId, LocalRun>,
    /// Whether a task is watching the store for cancellations of these runs.
    watched: bool,
}

/// One local run: its stop signal, and a lock it holds until it ends.
#[derive(Debug, Clone)]
pub(super) struct LocalRun {
    pub(super) signal: StopSignal,
    pub(super) running: Arc<tokio::sync::Mutex<()>>,
}

impl LocalRuns {
    /// Registers a run that holds the lease of `id`; it is forgotten when the guard
    /// drops. While any run is registered, one task asks `storage` every second
    /// whether someone cancelled one of them, from any process.
    pub(super) fn register(&self, id: WorkflowId, signal: StopSignal, storage: &Arc<dyn Storage>) -> RegisteredRun {
        let running = Arc::new(tokio::sync::Mutex::new(()));
        let held = Arc::clone(&running).try_lock_owned().ok();
        let mut runs = self.lock();
        runs.by_workflow.insert(id, LocalRun { signal, running });
        if !runs.watched {
            runs.watched = true;
            tokio::spawn(self.clone().watch_cancellations(storage.clone()));
        }
        RegisteredRun { id, runs: self.clone(), _held: held }
    }

    /// The local run of `id`, if there is one.
    pub(super) fn get(&self, id: WorkflowId) -> Option<LocalRun> {
        self.lock().by_workflow.get(&id).cloned()
    }

    /// Stops each run someone cancelled, until no run is left. One read serves every
    /// run of the process; the heartbeat's renewal would see it too, but only every
    /// third of a lease.
    async fn watch_cancellations(self, storage: Arc<dyn LeaseQueue>) {
        loop {
            tokio::time::sleep(CANCEL_POLL).await;
            let ids: Vec<WorkflowId> = {
                let mut runs = self.lock();
                if runs.by_workflow.is_empty() {
                    runs.watched = false;
                    return;
                }
                runs.by_workflow.keys().copied().collect()
            };
            match storage.cancel_requests(&ids).await {
                Ok(requested) => {
                    for (id, reason) in requested {
                        if let Some(run) = self.get(id) {
                            run.signal.stop(Stop::Cancelled(reason));
                        }
                    }
                }
                // The heartbeat's renewal still carries cancellations.
                Err(e) => tracing::debug!(error = %e, "could not read cancellation requests"),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Runs> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps a run registered while it lives.
#[derive(Debug)]
pub(super) struct RegisteredRun {
    id: WorkflowId,
    runs: LocalRuns,
    _held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for RegisteredRun {
    fn drop(&mut self) {
        self.runs.lock().by_workflow.remove(&self.id);
    }
}

/// A run's hold on its lease: a heartbeat renews it every third of its ttl while
/// the run goes on, and the run's last save may give it up in the same write.
#[derive(Debug)]
pub(super) struct Tenure {
    storage: Arc<dyn LeaseQueue>,
    lease: Lease,
    /// Set when the last save begins: the heartbeat renews no more.
    closing: AtomicBool,
    /// Set once the last save gave the lease up.
    released: AtomicBool,
}

impl Tenure {
    /// A hold on `lease`, which [`Tenure::hold`] keeps renewed.
    pub(super) fn new(storage: Arc<dyn LeaseQueue>, lease: Lease) -> Arc<Self> {
        Arc::new(Self { storage, lease, closing: AtomicBool::new(false), released: AtomicBool::new(false) })
    }

    /// The lease held.
    pub(super) fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Runs `run` while renewing the lease every third of `ttl`. The heartbeat is
    /// polled in the run's own task rather than spawned: it cannot outlive a run
    /// whose future is dropped, and a run costs the scheduler one task fewer. A
    /// cancellation request seen in the store, or a lost lease, stops the run
    /// through `signal`.
    pub(super) async fn hold<T>(&self, ttl: Duration, signal: StopSignal, run: impl Future<Output = T>) -> T {
        let mut run = std::pin::pin!(run);
        tokio::select! {
            biased;
            outcome = &mut run => return outcome,
            () = self.renew(ttl, signal) => {}
        }
        run.await
    }

    /// Renews the lease until it is lost or the last save begins.
    async fn renew(&self, ttl: Duration, signal: StopSignal) {
        let period = (ttl / 3).max(Duration::from_millis(10));
        let workflow = self.lease.workflow_id;
        loop {
            tokio::time::sleep(period).await;
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            let renewed = self.storage.renew_lease(&self.lease, ttl).await;
            // A renewal that crossed the last save may find the lease given up.
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            match renewed {
                Ok(status) => {
                    if let Some(reason) = status.cancel_requested {
                        signal.stop(Stop::Cancelled(reason));
                    }
                }
                Err(crate::Error::LeaseLost { .. }) => {
                    tracing::warn!(%workflow, "the run lost its lease; stopping it");
                    signal.stop(Stop::LeaseLost);
                    return;
                }
                // A store that is briefly unreachable: the lease may still be renewed in time.
                Err(e) => tracing::warn!(%workflow, error = %e, "could not renew the lease"),
            }
        }
    }

    /// Saves `workflow` and gives the lease up in one write: the run's last save.
    pub(super) async fn save_and_release(&self, workflow: &Workflow, events: &[WorkflowEvent]) -> Result<()> {
        self.closing.store(true, Ordering::Release);
        self.storage.update_and_release(workflow, &self.lease, events).await?;
        self.released.store(true, Ordering::Release);
        Ok(())
    }

    /// Ends the hold: releases the lease unless the last save did. A release that
    /// fails is logged; the lease lapses on its own.
    pub(super) async fn end(&self) {
        if !self.released.load(Ordering::Acquire) {
            release(self.storage.as_ref(), &self.lease).await;
        }
    }

    /// Ends the hold of a run that met a stored row it cannot read: gives the lease
    /// up and sets the workflow aside with `reason`, as no run can go on until the row
    /// is fixed (see [`LeaseQueue::set_aside`]). A failure is logged: the lease
    /// lapses on its own.
    pub(super) async fn set_aside(&self, reason: &Error) {
        if self.released.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.storage.set_aside(&self.lease, &crate::error::with_causes(reason)).await {
            let workflow = self.lease.workflow_id;
            tracing::warn!(%workflow, error = %e, "could not set the workflow aside; its lease lapses on its own");
        }
    }
}

/// Releases `lease`; a release that fails is logged, as the lease lapses on its own.
pub(super) async fn release(storage: &dyn LeaseQueue, lease: &Lease) {
    if let Err(e) = storage.release_lease(lease).await {
        tracing::warn!(workflow = %lease.workflow_id, error = %e, "could not release the lease; it lapses on its own");
    }
}
