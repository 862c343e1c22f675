//! Plans a runner has read, kept by id: a stored plan never changes (saving one
//! again keeps the first), and a worker runs many workflows of one plan, so each
//! run need not read and parse it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::Result;
use crate::ids::PlanId;
use crate::plan::Plan;
use crate::storage::Storage;

/// Plans kept. Past it the cache starts afresh, so it holds a bounded number.
const MAX_KEPT: usize = 64;

/// The plans kept, shared by a runner's clones.
#[derive(Debug, Default)]
pub(super) struct KnownPlans(Mutex<HashMap<PlanId, Arc<Plan>>>);

impl KnownPlans {
    /// Plan `id`, from this cache or else read from `storage` (and kept).
    pub(super) async fn get(&self, id: PlanId, storage: &dyn Storage) -> Result<Arc<Plan>> {
        if let Some(plan) = self.lock().get(&id) {
            return Ok(Arc::clone(plan));
        }
        let plan = Arc::new(storage.get_plan(id).await?);
        let mut kept = self.lock();
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(id, Arc::clone(&plan));
        Ok(plan)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PlanId, Arc<Plan>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanBuilder;
    use crate::storage::{InMemoryStorage, PlanStore, Retention, WorkflowStore};
    use crate::workflow::Workflow;

    #[tokio::test]
    async fn a_plan_is_read_once_and_then_served_from_the_cache() {
        let storage = InMemoryStorage::new();
        let plan = PlanBuilder::new("Add").step("Add 1 and 2", Some("add_tool"), "$sum").build();
        storage.save_plan(&plan).await.unwrap();
        let workflow = Workflow::new(plan.id, crate::ExecutionContext::default());
        storage.create_workflow(&workflow).await.unwrap();
        let known = KnownPlans::default();
        assert_eq!(*known.get(plan.id, &storage).await.unwrap(), plan);
        // Deleting the plan's only workflow deletes the plan: only the cache has it now.
        storage.delete_workflow(workflow.id()).await.unwrap();
        assert!(storage.get_plan(plan.id).await.is_err());
        assert_eq!(*known.get(plan.id, &storage).await.unwrap(), plan);
    }
}
