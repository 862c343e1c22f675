//! Which workflows a runner (and its clones) is executing: a workflow runs at most
//! once at a time, and a cancellation reaches the run in progress.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::ids::WorkflowId;

/// A run's cancellation flag. Its lock is held around every save of the run and
/// around a cancellation, so a cancelled run never saves over the FAILED state.
pub(super) type CancelFlag = Arc<tokio::sync::Mutex<bool>>;

#[derive(Debug, Default, Clone)]
pub(super) struct Claims(Arc<Mutex<HashMap<WorkflowId, CancelFlag>>>);

impl Claims {
    /// Claims `id` for a run; `None` when it is already running.
    pub(super) fn claim(&self, id: WorkflowId) -> Option<Claim> {
        let mut running = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if running.contains_key(&id) {
            return None;
        }
        let cancelled = CancelFlag::default();
        running.insert(id, Arc::clone(&cancelled));
        Some(Claim { id, cancelled, claims: self.clone() })
    }

    /// Claims `id`, or, when it is already running, returns that run's cancellation
    /// flag. Deciding both under one lock leaves no moment for a run to start unseen.
    pub(super) fn claim_or_running(&self, id: WorkflowId) -> Result<Claim, CancelFlag> {
        let mut running = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flag) = running.get(&id) {
            return Err(Arc::clone(flag));
        }
        let cancelled = CancelFlag::default();
        running.insert(id, Arc::clone(&cancelled));
        Ok(Claim { id, cancelled, claims: self.clone() })
    }
}

/// A workflow's claim; released when dropped, however the run ends.
#[derive(Debug)]
pub(super) struct Claim {
    id: WorkflowId,
    pub(super) cancelled: CancelFlag,
    claims: Claims,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}
