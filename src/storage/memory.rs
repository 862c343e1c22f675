use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::bells::Bells;
use super::{
    Clock, Lease, LeaseGrant, LeaseState, LeaseStatus, Storage, SystemClock, ToolCallKey, ToolCallRecord, UsageRecord,
    WorkflowPage, WorkflowQuery,
};
use crate::events::{StoredEvent, WorkflowEvent};
use crate::ids::{PlanId, WorkflowId};
use crate::plan::Plan;
use crate::workflow::Workflow;
use crate::{Error, Result};

/// Keeps everything in memory, for one process: the library's default.
///
/// It keeps the whole [`Storage`] protocol (versions, leases, the journal), so a
/// program can move to [`SqliteStorage`](super::SqliteStorage) without changing
/// behaviour; it only forgets everything when the process ends. Finished workflows
/// stay until [`Storage::prune_finished`] or a delete removes them.
#[derive(Debug)]
pub struct InMemoryStorage {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    runnable: tokio::sync::Notify,
    /// Rung by every save that stores events, for those waiting for them.
    bells: Bells,
    /// How many finished workflows to keep, if not all.
    keep_finished: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    plans: HashMap<PlanId, Plan>,
    workflows: HashMap<WorkflowId, Row>,
    /// Counts submissions, so that the longest-waiting queued workflow goes first.
    submitted: u64,
    tool_calls: BTreeMap<ToolCallKey, ToolCallRecord>,
    usage: Vec<UsageRecord>,
}

#[derive(Debug)]
struct Row {
    workflow: Workflow,
    lease: LeaseState,
    cancel_requested: Option<String>,
    updated_at: DateTime<Utc>,
    /// When the workflow was submitted for the workers, in submission order.
    queued: Option<u64>,
    events: Vec<StoredEvent>,
}

impl Default for InMemoryStorage {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl InMemoryStorage {
    /// Empty storage on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty storage whose leases run on `clock` (a [`ManualClock`](super::ManualClock) in tests).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            state: Mutex::new(State::default()),
            runnable: tokio::sync::Notify::new(),
            bells: Bells::default(),
            keep_finished: None,
        }
    }

    /// Keeps only the `newest` finished (COMPLETE or FAILED) workflows, deleting the
    /// oldest as others finish, so that a long-lived process does not grow without
    /// bound. Workflows not yet finished are always kept.
    #[must_use]
    pub fn keep_finished(mut self, newest: usize) -> Self {
        self.keep_finished = Some(newest);
        self
    }

    /// A poisoned lock only means another thread panicked; every critical section
    /// here checks before it changes anything, so the data is still whole.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl InMemoryStorage {
    fn insert(&self, workflow: &Workflow, queued: bool) -> Result<()> {
        let now = self.clock.now();
        let mut state = self.state();
        if let Some(row) = state.workflows.get(&workflow.id()) {
            let found = row.workflow.version();
            return Err(Error::VersionConflict { workflow_id: workflow.id(), expected: 0, found });
        }
        state.submitted += 1;
        let queued = queued.then_some(state.submitted);
        let row = Row {
            workflow: workflow.clone(),
            lease: LeaseState::default(),
            cancel_requested: None,
            updated_at: now,
            queued,
            events: Vec::new(),
        };
        state.workflows.insert(workflow.id(), row);
        Ok(())
    }

    /// Wakes every waiting worker, and leaves a permit for one that is about to wait.
    fn wake(&self) {
        self.runnable.notify_waiters();
        self.runnable.notify_one();
    }

    fn grant(row: &mut Row, owner: &str, ttl: Duration, now: DateTime<Utc>) -> Result<LeaseGrant> {
        let (next, lease, reclaimed) = row.lease.acquire(&row.workflow, owner, ttl, now)?;
        row.lease = next;
        Ok(LeaseGrant {
            lease,
            workflow: row.workflow.clone(),
            reclaimed,
            attempts: row.lease.attempts,
            cancel_requested: row.cancel_requested.clone(),
        })
    }
}

impl State {
    fn row(&mut self, id: WorkflowId) -> Result<&mut Row> {
        self.workflows.get_mut(&id).ok_or(Error::WorkflowNotFound(id))
    }

    /// The row of workflow `id`, when `lease` is its current lease.
    fn fenced(&mut self, lease: &Lease, id: WorkflowId, now: DateTime<Utc>) -> Result<&mut Row> {
        let lost = Error::LeaseLost { workflow_id: id };
        if lease.workflow_id != id {
            return Err(lost);
        }
        let row = self.row(id).map_err(|_| lost)?;
        row.lease.check_fence(lease, now)?;
        Ok(row)
    }

    fn delete(&mut self, id: WorkflowId) {
        let Some(row) = self.workflows.remove(&id) else { return };
        self.tool_calls.retain(|key, _| key.workflow_id != id);
        self.usage.retain(|record| record.workflow_id != id);
        let plan_id = row.workflow.plan_id();
        if !self.workflows.values().any(|r| r.workflow.plan_id() == plan_id) {
            self.plans.remove(&plan_id);
        }
    }

    /// Deletes the finished workflows but the `newest` last changed.
    fn keep_newest_finished(&mut self, newest: usize) {
        let mut finished: Vec<(DateTime<Utc>, WorkflowId)> = self
            .workflows
            .iter()
            .filter(|(_, row)| row.workflow.state().is_terminal())
            .map(|(id, row)| (row.updated_at, *id))
            .collect();
        if finished.len() <= newest {
            return;
        }
        finished.sort();
        let excess = finished.len() - newest;
        for (_, id) in finished.into_iter().take(excess) {
            self.delete(id);
        }
    }

    fn delete_where(&mut self, doomed: impl Fn(&Row) -> bool) -> usize {
        let ids: Vec<WorkflowId> = self.workflows.iter().filter(|(_, row)| doomed(row)).map(|(id, _)| *id).collect();
        for id in &ids {
            self.delete(*id);
        }
        ids.len()
    }
}

#[async_trait::async_trait]
impl Storage for InMemoryStorage {
    async fn save_plan(&self, plan: &Plan) -> Result<()> {
        self.state().plans.entry(plan.id).or_insert_with(|| plan.clone());
        Ok(())
    }

    async fn get_plan(&self, id: PlanId) -> Result<Plan> {
        self.state().plans.get(&id).cloned().ok_or(Error::PlanNotFound(id))
    }

    async fn create_workflow(&self, workflow: &Workflow) -> Result<()> {
        self.insert(workflow, false)
    }

    async fn submit_workflow(&self, workflow: &Workflow) -> Result<()> {
        self.insert(workflow, true)?;
        self.wake();
        Ok(())
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Workflow> {
        self.state().row(id).map(|row| row.workflow.clone())
    }

    async fn list_workflows(&self, query: &WorkflowQuery) -> Result<WorkflowPage> {
        let all = self.state().workflows.values().map(|row| row.workflow.clone()).collect();
        Ok(WorkflowPage::from_all(all, query, Vec::new()))
    }

    async fn update_workflow(&self, workflow: &Workflow, lease: &Lease, events: &[WorkflowEvent]) -> Result<()> {
        let now = self.clock.now();
        let mut state = self.state();
        let row = state.fenced(lease, workflow.id(), now)?;
        let found = row.workflow.version();
        let expected = workflow.version().saturating_sub(1);
        if found != expected {
            return Err(Error::VersionConflict { workflow_id: workflow.id(), expected, found });
        }
        row.workflow = workflow.clone();
        row.updated_at = now;
        for event in events {
            let seq = row.events.len() as u64 + 1;
            row.events.push(StoredEvent { seq, event: event.clone() });
        }
        if let Some(newest) = self.keep_finished.filter(|_| workflow.state().is_terminal()) {
            state.keep_newest_finished(newest);
        }
        drop(state);
        if !events.is_empty() {
            self.bells.ring(workflow.id());
        }
        Ok(())
    }

    async fn events(&self, id: WorkflowId, after: u64) -> Result<Vec<StoredEvent>> {
        let mut state = self.state();
        let row = state.row(id)?;
        Ok(row.events.iter().filter(|e| e.seq > after).cloned().collect())
    }

    async fn wait_for_events(&self, id: WorkflowId, after: u64, timeout: Duration) -> Result<bool> {
        let look = || std::future::ready(self.state().row(id).map(|row| row.events.len() as u64 > after));
        self.bells.bell(id).wait(timeout, look).await
    }

    async fn acquire_lease(&self, id: WorkflowId, owner: &str, ttl: Duration) -> Result<LeaseGrant> {
        let now = self.clock.now();
        Self::grant(self.state().row(id)?, owner, ttl, now)
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<LeaseStatus> {
        let now = self.clock.now();
        let mut state = self.state();
        let row = state.row(lease.workflow_id).map_err(|_| Error::LeaseLost { workflow_id: lease.workflow_id })?;
        row.lease = row.lease.renew(lease, ttl, now)?;
        let expires_at = row.lease.expires_at.unwrap_or(now);
        Ok(LeaseStatus { expires_at, cancel_requested: row.cancel_requested.clone() })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        if let Some(row) = self.state().workflows.get_mut(&lease.workflow_id) {
            row.lease = row.lease.release(lease);
        }
        self.wake();
        Ok(())
    }

    async fn claim_runnable(&self, owner: &str, ttl: Duration) -> Result<Option<LeaseGrant>> {
        let now = self.clock.now();
        let mut state = self.state();
        let next = state
            .workflows
            .values_mut()
            .filter(|row| row.queued.is_some() && row.workflow.state().is_runnable() && row.lease.is_free(now))
            .min_by_key(|row| row.queued);
        next.map(|row| Self::grant(row, owner, ttl, now)).transpose()
    }

    async fn wait_for_runnable(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.runnable.notified()).await;
    }

    async fn request_cancel(&self, id: WorkflowId, reason: &str) -> Result<()> {
        self.state().row(id)?.cancel_requested = Some(reason.to_owned());
        Ok(())
    }

    async fn begin_tool_call(&self, lease: &Lease, intent: &ToolCallRecord) -> Result<Option<ToolCallRecord>> {
        let now = self.clock.now();
        let mut state = self.state();
        state.fenced(lease, intent.key.workflow_id, now)?;
        match state.tool_calls.get(&intent.key) {
            Some(earlier) => Ok(Some(earlier.clone())),
            None => {
                state.tool_calls.insert(intent.key, intent.clone());
                Ok(None)
            }
        }
    }

    async fn finish_tool_call(&self, lease: &Lease, record: &ToolCallRecord) -> Result<()> {
        let now = self.clock.now();
        let mut state = self.state();
        state.fenced(lease, record.key.workflow_id, now)?;
        state.tool_calls.insert(record.key, record.clone());
        Ok(())
    }

    async fn tool_calls(&self, id: WorkflowId) -> Result<Vec<ToolCallRecord>> {
        Ok(self.state().tool_calls.values().filter(|r| r.key.workflow_id == id).cloned().collect())
    }

    async fn record_usage(&self, lease: &Lease, record: &UsageRecord) -> Result<()> {
        let now = self.clock.now();
        let mut state = self.state();
        state.fenced(lease, record.workflow_id, now)?;
        state.usage.push(record.clone());
        Ok(())
    }

    async fn usage_records(&self, id: WorkflowId) -> Result<Vec<UsageRecord>> {
        Ok(self.state().usage.iter().filter(|r| r.workflow_id == id).cloned().collect())
    }

    async fn delete_workflow(&self, id: WorkflowId) -> Result<()> {
        self.state().delete(id);
        Ok(())
    }

    async fn delete_end_user(&self, end_user_id: &str) -> Result<usize> {
        let of_user = |row: &Row| row.workflow.execution_context().end_user_id.as_deref() == Some(end_user_id);
        Ok(self.state().delete_where(of_user))
    }

    async fn prune_finished(&self, before: DateTime<Utc>) -> Result<usize> {
        Ok(self.state().delete_where(|row| row.workflow.state().is_terminal() && row.updated_at < before))
    }
}
