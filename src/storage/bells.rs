//! One bell per watched workflow: a store rings it when it hears that the workflow's
//! events were stored, and [`WorkflowStore::wait_for_events`](super::WorkflowStore::wait_for_events)
//! waits on it instead of polling.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Result;
use crate::ids::WorkflowId;

/// The bells of the workflows someone waits for; a workflow nobody waits for has none,
/// so ringing it costs a map lookup.
#[derive(Debug, Default)]
pub(crate) struct Bells {
    hung: Mutex<HashMap<WorkflowId, Arc<Notify>>>,
}

impl Bells {
    /// Wakes everyone waiting for workflow `id`'s events.
    pub(crate) fn ring(&self, id: WorkflowId) {
        if let Some(bell) = self.hung().get(&id) {
            bell.notify_waiters();
        }
    }

    /// Wakes every waiter, for when news may have been lost (a dropped connection).
    #[cfg(feature = "postgres")]
    pub(crate) fn ring_all(&self) {
        self.hung().values().for_each(|bell| bell.notify_waiters());
    }

    /// The bell of workflow `id`, hung until the last waiter lets go of it.
    pub(crate) fn bell(&self, id: WorkflowId) -> Bell<'_> {
        let notify = Arc::clone(self.hung().entry(id).or_default());
        Bell { bells: self, id, notify }
    }

    /// A poisoned lock only means a waiter panicked; the map is still whole.
    fn hung(&self) -> MutexGuard<'_, HashMap<WorkflowId, Arc<Notify>>> {
        self.hung.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A waiter's hold on one workflow's bell.
#[derive(Debug)]
pub(crate) struct Bell<'a> {
    bells: &'a Bells,
    id: WorkflowId,
    notify: Arc<Notify>,
}

impl Bell<'_> {
    /// Wakes everyone waiting on this bell: for a store's own reasons to look again.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn ring(&self) {
        self.notify.notify_waiters();
    }

    /// Looks with `look` at once, and again each time the bell rings, until it finds
    /// events (`true`) or `timeout` has passed (`false`).
    pub(crate) async fn wait<F, Fut>(&self, timeout: Duration, mut look: F) -> Result<bool>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        // A timeout too long for the clock waits for the bell alone.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            // Listening before looking: a ring between the look and the wait is not lost.
            let rung = self.notify.notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            if look().await? {
                return Ok(true);
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, rung).await.is_err() {
                        return Ok(false);
                    }
                }
                None => rung.await,
            }
        }
    }
}

impl Drop for Bell<'_> {
    fn drop(&mut self) {
        let mut hung = self.bells.hung();
        // Only the map and this hold it: the last waiter takes the bell down. Holds
        // are only taken under this lock, so the count cannot grow meanwhile.
        if Arc::strong_count(&self.notify) == 2 {
            hung.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bell_hangs_while_someone_holds_it() {
        let bells = Bells::default();
        let id = WorkflowId::new();
        let first = bells.bell(id);
        let second = bells.bell(id);
        drop(first);
        assert_eq!(bells.hung().len(), 1, "the second waiter still holds it");
        drop(second);
        assert!(bells.hung().is_empty(), "the last waiter took it down");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ring_makes_the_waiter_look_again() {
        let bells = Bells::default();
        let id = WorkflowId::new();
        let bell = bells.bell(id);
        let mut looks = 0;
        let look = || {
            looks += 1;
            std::future::ready(Ok(looks == 2))
        };
        let (found, ()) = tokio::join!(bell.wait(Duration::from_secs(3600), look), async { bells.ring(id) });
        assert!(found.unwrap(), "the second look, after the ring, finds events");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unrung_bell_times_out() {
        let bells = Bells::default();
        let bell = bells.bell(WorkflowId::new());
        let found = bell.wait(Duration::from_secs(1), || std::future::ready(Ok(false))).await;
        assert!(!found.unwrap(), "nothing found, and the wait ended");
    }
}
