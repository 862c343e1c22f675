//! The store's one LISTEN connection: it wakes this process's waiting workers when
//! any process makes a workflow of the store's schema runnable, and those waiting for
//! a workflow's events when any process stores some.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio_postgres::AsyncMessage;

use super::settings::Target;
use crate::ids::WorkflowId;
use crate::storage::bells::Bells;

/// The channel every store notifies when a workflow may have become runnable; the
/// payload is the schema, so stores in other schemas of the same database ignore it.
pub(super) const CHANNEL: &str = "portia_runnable";
/// The channel every store notifies when it stored a workflow's events; the payload
/// is [`events_payload`].
pub(super) const EVENTS_CHANNEL: &str = "portia_events";
/// The longest pause between attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the LISTEN connection wakes, shared by a store and its listener.
#[derive(Debug, Default)]
pub(super) struct Wakeups {
    /// Waiting workers.
    pub(super) runnable: Notify,
    /// Those waiting for a workflow's events.
    pub(super) events: Bells,
    /// Whether notifications are heard now; while they are not, waiters must look for themselves.
    listening: AtomicBool,
}

impl Wakeups {
    /// Whether the LISTEN connection is up, so that a waiter hears of every change.
    pub(super) fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }
}

/// The payload of a notification on [`EVENTS_CHANNEL`]: the schema and the workflow,
/// at most 100 bytes, far below Postgres's limit of 8000.
pub(super) fn events_payload(schema: &str, id: WorkflowId) -> String {
    format!("{schema} {id}")
}

/// The workflow an [`EVENTS_CHANNEL`] payload names, if it is of `schema`.
fn events_of(payload: &str, schema: &str) -> Option<WorkflowId> {
    let (of, id) = payload.split_once(' ')?;
    if of == schema { id.parse().ok() } else { None }
}

/// Wakes every waiting worker, and leaves a permit for one about to wait.
pub(super) fn wake(runnable: &Notify) {
    runnable.notify_waiters();
    runnable.notify_one();
}

/// Listens until the task is aborted, reconnecting when the connection drops.
/// `started` is told once the first attempt has succeeded or failed, so a store
/// does not hand out work before it can hear of more.
pub(super) async fn listen(target: Target, schema: String, wakeups: Arc<Wakeups>, started: oneshot::Sender<()>) {
    let mut started = Some(started);
    let mut backoff = Duration::from_millis(250);
    let mut connected_before = false;
    loop {
        let result = listen_once(&target, &schema, &wakeups, &mut started, connected_before).await;
        let was_listening = wakeups.listening.swap(false, Ordering::AcqRel);
        if let Some(started) = started.take() {
            let _ = started.send(());
        }
        // However it ended (closed, or killed with an error), once it has listened, what
        // is sent while it reconnects is caught by the wake on reconnection.
        if was_listening || result.is_ok() {
            connected_before = true;
            backoff = Duration::from_millis(250);
        }
        match result {
            Ok(()) => {
                tracing::warn!(target = %target.describe, "the wake-up connection to Postgres closed; reconnecting");
            }
            Err(e) => {
                tracing::warn!(target = %target.describe, error = %e, "cannot listen for wake-ups from Postgres; workers and watchers poll until it reconnects");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Why the wake-up connection ended.
#[derive(Debug)]
enum ListenError {
    Postgres(tokio_postgres::Error),
    /// The server took the connection but did not finish the login within this.
    Silent(Duration),
}

impl From<tokio_postgres::Error> for ListenError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(e)
    }
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Postgres(e) => e.fmt(f),
            Self::Silent(wait) => write!(f, "the server did not answer the login within {} s", wait.as_secs()),
        }
    }
}

/// Connects, listens, and passes notifications on until the connection ends.
async fn listen_once(
    target: &Target,
    schema: &str,
    wakeups: &Wakeups,
    started: &mut Option<oneshot::Sender<()>>,
    reconnected: bool,
) -> Result<(), ListenError> {
    // As the pool does: `connect_timeout` alone does not bound the login.
    let wait = target.config.get_connect_timeout().copied().unwrap_or(Duration::MAX);
    let Ok(connected) = tokio::time::timeout(wait, target.config.connect(target.tls.clone())).await else {
        return Err(ListenError::Silent(wait));
    };
    let (client, mut connection) = connected?;
    let statement = format!("LISTEN {CHANNEL}; LISTEN {EVENTS_CHANNEL}");
    let listening = client.batch_execute(&statement);
    tokio::pin!(listening);
    // The connection must be driven for the LISTEN to be answered.
    loop {
        tokio::select! {
            done = &mut listening => { done?; break; }
            message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(message)) => pass_on(&message, schema, wakeups),
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
    wakeups.listening.store(true, Ordering::Release);
    if let Some(started) = started.take() {
        let _ = started.send(());
    }
    if reconnected {
        // Notifications sent while it was away are lost: let the workers and watchers look.
        wake(&wakeups.runnable);
        wakeups.events.ring_all();
    }
    // `client` lives to here: dropping it would close the connection.
    while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
        pass_on(&message?, schema, wakeups);
    }
    Ok(())
}

fn pass_on(message: &AsyncMessage, schema: &str, wakeups: &Wakeups) {
    let AsyncMessage::Notification(note) = message else { return };
    match note.channel() {
        CHANNEL if note.payload() == schema => wake(&wakeups.runnable),
        EVENTS_CHANNEL => {
            if let Some(id) = events_of(note.payload(), schema) {
                wakeups.events.ring(id);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_events_payload_is_heard_only_in_its_own_schema() {
        let id = WorkflowId::new();
        let payload = events_payload("portia", id);
        assert_eq!(events_of(&payload, "portia"), Some(id));
        assert_eq!(events_of(&payload, "other"), None);
        assert_eq!(events_of("portia not-an-id", "portia"), None, "a garbled payload wakes nobody");
    }
}
