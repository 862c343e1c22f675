//! Watching a workflow from any process: its stored events, then new ones as they
//! are stored, until it is at rest.

use std::collections::VecDeque;
use std::time::Duration;

use super::Runner;
use crate::Result;
use crate::events::{EventStream, StoredEvent};
use crate::ids::WorkflowId;
use crate::workflow::WorkflowState;

/// How often a watch looks for events stored by other processes.
const POLL: Duration = Duration::from_millis(200);

/// A workflow's events from its first, as stored by whichever process ran it. Made by
/// [`Runner::watch`].
#[derive(Debug)]
pub struct Watch {
    runner: Runner,
    id: WorkflowId,
    seen: u64,
    ready: VecDeque<StoredEvent>,
    /// Events of runs in this process, heard at once; others are polled for.
    local: EventStream,
    done: bool,
}

impl Runner {
    /// Watches workflow `id`: every event stored so far, then each new one as it is
    /// stored (heard at once from runs in this process, within a fifth of a second
    /// from runs elsewhere). The watch ends once the workflow is at rest (finished,
    /// or waiting for a human) and every event up to then has been given.
    pub fn watch(&self, id: WorkflowId) -> Watch {
        let local = self.inner.events.subscribe(Some(id));
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
            if self.ready.is_empty() && !self.done {
                tokio::select! {
                    _ = self.local.next() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        }
    }
}
