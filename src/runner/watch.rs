//! Watching a workflow from any process: its stored events, then new ones as they
//! are stored, until it is at rest.

use std::collections::VecDeque;
use std::time::Duration;

use super::Runner;
use crate::Result;
use crate::events::{EventStream, StoredEvent};
use crate::ids::WorkflowId;
use crate::workflow::WorkflowState;

/// The longest a watch waits before reading the store again though nothing woke it:
/// a bound for a store that misses a wake-up, or a change stored without an event.
const RECHECK: Duration = Duration::from_secs(5);

/// A workflow's events from its first, as stored by whichever process ran it. Made by
/// [`Runner::watch`].
#[derive(Debug)]
pub struct Watch {
    runner: Runner,
    id: WorkflowId,
    seen: u64,
    ready: VecDeque<StoredEvent>,
    /// Events of runs in this process, heard at once; `None` once that stream ended.
    local: Option<EventStream>,
    done: bool,
}

impl Runner {
    /// Watches workflow `id`: every event stored so far, then each new one as it is
    /// stored. Runs in this process are heard at once; runs elsewhere as soon as the
    /// store hears of their saves (see [`WorkflowStore::wait_for_events`](crate::storage::WorkflowStore::wait_for_events)):
    /// by `NOTIFY` on Postgres, within a tenth of a second on SQLite, within a fifth
    /// for a store that keeps the default. The store is read again at least every
    /// five seconds whatever happens. The watch ends once the workflow is at rest
    /// (finished, or waiting for a human) and every event up to then has been given.
    pub fn watch(&self, id: WorkflowId) -> Watch {
        let local = Some(self.inner.events.subscribe(Some(id)));
        Watch { runner: self.clone(), id, seen: 0, ready: VecDeque::new(), local, done: false }
    }
}

impl Watch {
    /// The next event; `None` once the workflow is at rest and all its events were given.
    ///
    /// # Errors
    /// A storage error, or [`Error::WorkflowNotFound`](crate::Error::WorkflowNotFound).
    pub async fn next(&mut self) -> Option<Result<StoredEvent>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                self.seen = event.seq;
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            // Read the state first: events are stored with the state they lead to, so
            // once it is at rest, the read below holds every event up to it.
            let state = match self.runner.storage().get_workflow(self.id).await {
                Ok(workflow) => workflow.state(),
                Err(e) => return Some(Err(e)),
            };
            match self.runner.storage().events(self.id, self.seen).await {
                Ok(events) => self.ready.extend(events),
                Err(e) => return Some(Err(e)),
            }
            self.done = state.is_terminal() || state == WorkflowState::NeedClarification;
            if self.ready.is_empty()
                && !self.done
                && let Err(e) = self.wait().await
            {
                return Some(Err(e));
            }
        }
    }

    /// Waits until events after the last one read may be stored: announced by a run
    /// in this process, heard of by the store, or [`RECHECK`] passed.
    async fn wait(&mut self) -> Result<()> {
        let stored = self.runner.storage().wait_for_events(self.id, self.seen, RECHECK);
        let Some(local) = &mut self.local else { return stored.await.map(drop) };
        let ended = tokio::select! {
            announced = local.next() => announced.is_none(),
            found = stored => found.map(|_| false)?,
        };
        // The stream ends once the workflow rested in this process: from then on, the store alone tells.
        if ended {
            self.local = None;
        }
        Ok(())
    }
}
