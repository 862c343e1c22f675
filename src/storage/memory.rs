use std::collections::HashMap;
use std::sync::Mutex;

use super::{Storage, ToolCallRecord, WorkflowPage, WorkflowQuery};
use crate::ids::{PlanId, WorkflowId};
use crate::plan::Plan;
use crate::workflow::Workflow;
use crate::{Error, Result};

/// Keeps everything in memory (copies, so a caller's later edits do not leak in).
#[derive(Debug, Default)]
pub struct InMemoryStorage {
    plans: Mutex<HashMap<PlanId, Plan>>,
    workflows: Mutex<HashMap<WorkflowId, Workflow>>,
    tool_calls: Mutex<Vec<ToolCallRecord>>,
}

impl InMemoryStorage {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every tool call recorded so far, oldest first.
    pub fn tool_calls(&self) -> Vec<ToolCallRecord> {
        lock(&self.tool_calls).clone()
    }
}

/// A poisoned lock only means another thread panicked mid-test; the data is still whole
/// because every critical section here is a single insert or clone.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait::async_trait]
impl Storage for InMemoryStorage {
    async fn save_plan(&self, plan: &Plan) -> Result<()> {
        lock(&self.plans).insert(plan.id, plan.clone());
        Ok(())
    }

    async fn get_plan(&self, id: PlanId) -> Result<Plan> {
        lock(&self.plans).get(&id).cloned().ok_or(Error::PlanNotFound(id))
    }

    async fn save_workflow(&self, workflow: &Workflow) -> Result<()> {
        lock(&self.workflows).insert(workflow.id, workflow.clone());
        Ok(())
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Workflow> {
        lock(&self.workflows).get(&id).cloned().ok_or(Error::WorkflowNotFound(id))
    }

    async fn list_workflows(&self, query: &WorkflowQuery) -> Result<WorkflowPage> {
        let all = lock(&self.workflows).values().cloned().collect();
        Ok(WorkflowPage::from_all(all, query, Vec::new()))
    }

    async fn save_tool_call(&self, record: &ToolCallRecord) -> Result<()> {
        lock(&self.tool_calls).push(record.clone());
        Ok(())
    }
}
