//! The runs the server starts in tasks of its own (a workflow started in `run`
//! mode, a resume, an answer with `resume`, an AG-UI run), tracked so that shutdown
//! does not drop them: they go on for a grace period, then the rest are stopped as
//! a worker stops its runs, and each one left unfinished is named with how to
//! resume it. They were never queued, so no worker would take them over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};

use crate::Result;
use crate::ids::WorkflowId;
use crate::runner::Runner;
use crate::runner::calls::{Stop, StopSignal};
use crate::workflow::{Workflow, WorkflowState};

/// The server's runs in progress. Clones share them.
#[derive(Debug, Clone, Default)]
pub(super) struct BackgroundRuns(Arc<Mutex<Tracked>>);

/// The tasks, with the workflow each runs and the signal that stops it.
#[derive(Debug, Default)]
struct Tracked {
    tasks: JoinSet<Result<Workflow>>,
    running: HashMap<Id, (WorkflowId, StopSignal)>,
}

/// How a run the server started ended at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Finished, or waiting for a human: nothing to resume.
    AtRest,
    /// Stopped before it finished, or ended on an error: left to be resumed.
    LeftBehind,
}

impl BackgroundRuns {
    /// Takes workflow `id`'s lease now, so that the caller hears at once when it
    /// cannot run ([`Error::AlreadyRunning`](crate::Error::AlreadyRunning) while a
    /// run holds it, here or in any process), then runs it in a task of the
    /// server's. What goes wrong later is logged, and the stored workflow says how
    /// it ended.
    ///
    /// # Errors
    /// As [`LeaseQueue::acquire_lease`](crate::storage::LeaseQueue::acquire_lease).
    pub(super) async fn start(&self, runner: &Runner, id: WorkflowId) -> Result<()> {
        let ttl = runner.config().lease_ttl();
        let grant = runner.storage().acquire_lease(id, runner.owner(), ttl).await?;
        let signal = StopSignal::default();
        let (runner, run_signal) = (runner.clone(), signal.clone());
        let mut tracked = self.lock();
        // Finished tasks keep their result until joined: join them as new ones come.
        while let Some(ended) = tracked.tasks.try_join_next_with_id() {
            tracked.ended(ended);
        }
        let task = tracked.tasks.spawn(async move {
            let result = runner.run_granted(grant, run_signal).await;
            match &result {
                Ok(workflow) => tracing::debug!(workflow = %id, state = %workflow.state(), "run ended"),
                Err(e) => tracing::warn!(workflow = %id, error = %e, "run failed"),
            }
            result
        });
        tracked.running.insert(task.id(), (id, signal));
        Ok(())
    }

    /// Lets the runs go on for `grace`, then stops the rest with
    /// [`Stop::Shutdown`] (as [`Runner::interrupt`] does) and waits until each has
    /// saved and released its lease. Logs one line per workflow left unfinished,
    /// with how to resume it, and a summary. Returns the workflows left unfinished.
    pub(super) async fn shut_down(&self, grace: Duration) -> Vec<WorkflowId> {
        let mut tracked = std::mem::take(&mut *self.lock());
        let running = tracked.tasks.len();
        let deadline = tokio::time::Instant::now() + grace;
        let mut left = Vec::new();
        while let Ok(Some(ended)) = tokio::time::timeout_at(deadline, tracked.tasks.join_next_with_id()).await {
            tracked.ended(ended);
        }
        let stopped = tracked.tasks.len();
        for (_, signal) in tracked.running.values() {
            signal.stop(Stop::Shutdown);
        }
        while let Some(ended) = tracked.tasks.join_next_with_id().await {
            if let Some((id, Outcome::LeftBehind)) = tracked.ended(ended) {
                log_left_behind(id);
                left.push(id);
            }
        }
        if left.is_empty() {
            tracing::info!(running, stopped, "server stopped; every run it started is at rest");
        } else {
            tracing::warn!(
                running,
                stopped,
                left = left.len(),
                "server stopped; {} workflow(s) it was running are left unfinished: resume each as logged above",
                left.len()
            );
        }
        left
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Tracked {
    /// Forgets an ended task; returns its workflow and how it ended.
    fn ended(
        &mut self,
        ended: std::result::Result<(Id, Result<Workflow>), JoinError>,
    ) -> Option<(WorkflowId, Outcome)> {
        let task = match &ended {
            Ok((task, _)) => *task,
            Err(e) => e.id(),
        };
        let (id, _) = self.running.remove(&task)?;
        let outcome = match ended {
            Ok((_, Ok(workflow))) if at_rest(workflow.state()) => Outcome::AtRest,
            Ok(_) => Outcome::LeftBehind,
            Err(e) => {
                tracing::error!(workflow = %id, error = %e, "run panicked");
                Outcome::LeftBehind
            }
        };
        Some((id, outcome))
    }
}

/// Whether a workflow in `state` needs no run to go on: finished, or waiting for a human.
fn at_rest(state: WorkflowState) -> bool {
    state.is_terminal() || state == WorkflowState::NeedClarification
}

fn log_left_behind(id: WorkflowId) {
    tracing::warn!(
        workflow = %id,
        "workflow {id} was stopped at shutdown and is left unfinished: resume it with `portia resume {id}` \
         or POST /v1/workflows/{id}/resume"
    );
}
