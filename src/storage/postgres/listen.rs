//! The store's one LISTEN connection: it wakes this process's waiting workers when
//! any process makes a workflow of the store's schema runnable.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio_postgres::AsyncMessage;

use super::settings::Target;

/// The channel every store notifies; the payload is the schema, so stores in other
/// schemas of the same database ignore it.
pub(super) const CHANNEL: &str = "portia_runnable";
/// The longest pause between attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Wakes every waiting worker, and leaves a permit for one about to wait.
pub(super) fn wake(runnable: &Notify) {
    runnable.notify_waiters();
    runnable.notify_one();
}

/// Listens until the task is aborted, reconnecting when the connection drops.
/// `started` is told once the first attempt has succeeded or failed, so a store
/// does not hand out work before it can hear of more.
pub(super) async fn listen(target: Target, schema: String, runnable: Arc<Notify>, started: oneshot::Sender<()>) {
    let mut started = Some(started);
    let mut backoff = Duration::from_millis(250);
    let mut connected_before = false;
    loop {
        let result = listen_once(&target, &schema, &runnable, &mut started, connected_before).await;
        if let Some(started) = started.take() {
            let _ = started.send(());
        }
        match result {
            // It was listening: what was sent while it reconnects is caught by the wake on reconnection.
            Ok(()) => {
                connected_before = true;
                backoff = Duration::from_millis(250);
                tracing::warn!(target = %target.describe, "the wake-up connection to Postgres closed; reconnecting");
            }
            Err(e) => {
                tracing::warn!(target = %target.describe, error = %e, "cannot listen for wake-ups from Postgres; workers poll until it reconnects");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Connects, listens, and passes notifications on until the connection ends.
async fn listen_once(
    target: &Target,
    schema: &str,
    runnable: &Notify,
    started: &mut Option<oneshot::Sender<()>>,
    reconnected: bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = target.config.connect(target.tls.clone()).await?;
    let statement = format!("LISTEN {CHANNEL}");
    let listening = client.batch_execute(&statement);
    tokio::pin!(listening);
    // The connection must be driven for the LISTEN to be answered.
    loop {
        tokio::select! {
            done = &mut listening => { done?; break; }
            message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(message)) => pass_on(&message, schema, runnable),
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
    if let Some(started) = started.take() {
        let _ = started.send(());
    }
    if reconnected {
        // Notifications sent while it was away are lost: let the workers look.
        wake(runnable);
    }
    // `client` lives to here: dropping it would close the connection.
    while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
        pass_on(&message?, schema, runnable);
    }
    Ok(())
}

fn pass_on(message: &AsyncMessage, schema: &str, runnable: &Notify) {
    if let AsyncMessage::Notification(note) = message
        && note.channel() == CHANNEL
        && note.payload() == schema
    {
        wake(runnable);
    }
}
