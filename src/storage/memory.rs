use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use foldhash::fast::RandomState;

use super::bells::Bells;
use super::rows::{Access, LeaseRow, RowError, RowStore, RowTx, Work};
use super::{
    Clock, LeaseState, SetAside, SystemClock, ToolCallKey, ToolCallRecord, UsageRecord, WorkflowPage, WorkflowQuery,
};
use crate::Result;
use crate::events::StoredEvent;
use crate::ids::{PlanId, WorkflowId};
use crate::plan::Plan;
use crate::workflow::Workflow;

/// Keeps everything in memory, for one process: the library's default.
///
/// It runs the same [`Storage`](super::Storage) protocol as the other stores
/// (versions, leases, the journal), so a program can move to
/// [`SqliteStorage`](super::SqliteStorage) without changing behaviour; it only
/// forgets everything when the process ends. Finished workflows stay until
/// [`Retention::prune_finished`](super::Retention::prune_finished) or a delete removes
/// them.
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
    // Every save looks its workflow up. The crate makes the ids, so no one can pick
    // keys that collide: a fast hasher will do. Rows and plans are boxed: a table
    // keeps a quarter or more of its slots empty, and an empty slot of a few hundred
    // bytes per finished workflow kept added up; growing the table also copied
    // every row while the old table was still held.
    plans: HashMap<PlanId, Box<Plan>, RandomState>,
    workflows: HashMap<WorkflowId, Box<Row>, RandomState>,
    /// Counts submissions, so that the longest-waiting queued workflow goes first.
    submitted: u64,
}

#[derive(Debug)]
struct Row {
    workflow: Workflow,
    lease: LeaseState,
    cancel_requested: Option<String>,
    updated_at: DateTime<Utc>,
    /// When the workflow was submitted for the workers, in submission order.
    queued: Option<u64>,
    /// Why no worker may claim it, if it was set aside.
    set_aside: Option<String>,
    events: Vec<StoredEvent>,
    /// Its journal, kept with it so that reading or deleting one workflow's records
    /// does not go through every other workflow's; the tool calls in key order (a
    /// workflow makes a few, and a map's node would hold room for eleven).
    tool_calls: Vec<ToolCallRecord>,
    usage: Vec<UsageRecord>,
}

impl Row {
    /// Whether a worker may claim it, once its lease is free.
    fn is_claimable(&self) -> bool {
        self.queued.is_some() && self.set_aside.is_none() && self.workflow.state().is_runnable()
    }
}

impl Row {
    /// Where the tool call `key` is in the journal, or where it would go.
    fn tool_call_at(&self, key: ToolCallKey) -> Result<usize, usize> {
        self.tool_calls.binary_search_by_key(&key, |r| r.key)
    }

    /// Stores `events`. The save that finishes a workflow stores its last ones: the
    /// room its lists keep for more is then given back, since a finished workflow
    /// gets no more events, calls or usage, and a store keeps many of them.
    fn add_events(&mut self, events: impl IntoIterator<Item = StoredEvent>) {
        self.events.extend(events);
        if self.workflow.state().is_terminal() {
            self.events.shrink_to_fit();
            self.tool_calls.shrink_to_fit();
            self.usage.shrink_to_fit();
        }
    }
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

impl RowStore for InMemoryStorage {
    /// Runs `work` under the store's lock. Changes are made in place: the protocol
    /// makes every refusal before its first write, and no row operation here fails.
    async fn transaction<T: Send + 'static>(&self, _: Access, work: Work<T>) -> std::result::Result<T, RowError> {
        let clock = self.clock.as_ref();
        work(&mut Rows { state: &mut self.state(), clock })
    }

    /// Wakes every waiting worker, and leaves a permit for one that is about to wait.
    fn runnable_changed(&self) {
        self.runnable.notify_waiters();
        self.runnable.notify_one();
    }

    fn workflow_saved(&self, workflow: &Workflow, events_stored: bool) {
        if let Some(newest) = self.keep_finished.filter(|_| workflow.state().is_terminal()) {
            self.state().keep_newest_finished(newest);
        }
        if events_stored {
            self.bells.ring(workflow.id());
        }
    }

    async fn watch_events(&self, id: WorkflowId, after: u64, timeout: Duration) -> Result<bool> {
        let look = || super::protocol::has_events_after(self, id, after);
        self.bells.bell(id).wait(timeout, look).await
    }

    async fn watch_runnable(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.runnable.notified()).await;
    }
}

impl State {
    /// Deletes a workflow with its journal and usage, and its plan once unused.
    fn delete(&mut self, id: WorkflowId) -> bool {
        let Some(row) = self.workflows.remove(&id) else { return false };
        let plan_id = row.workflow.plan_id();
        if !self.workflows.values().any(|r| r.workflow.plan_id() == plan_id) {
            self.plans.remove(&plan_id);
        }
        true
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

    fn ids_where(&self, selected: impl Fn(&Row) -> bool) -> Vec<String> {
        self.workflows.iter().filter(|(_, row)| selected(row)).map(|(id, _)| id.to_string()).collect()
    }
}

/// One transaction: the state, locked.
struct Rows<'a> {
    state: &'a mut State,
    clock: &'a dyn Clock,
}

type Done<T> = std::result::Result<T, RowError>;

impl Rows<'_> {
    fn row(&mut self, id: WorkflowId) -> Option<&mut Row> {
        self.state.workflows.get_mut(&id).map(Box::as_mut)
    }
}

impl RowTx for Rows<'_> {
    fn now(&mut self) -> Done<DateTime<Utc>> {
        Ok(self.clock.now())
    }

    fn insert_plan(&mut self, plan: Plan) -> Done<Option<Plan>> {
        match self.state.plans.entry(plan.id) {
            Entry::Vacant(vacant) => {
                vacant.insert(Box::new(plan));
                Ok(None)
            }
            Entry::Occupied(_) => Ok(Some(plan)),
        }
    }

    fn plan(&mut self, id: PlanId) -> Done<Option<Plan>> {
        Ok(self.state.plans.get(&id).map(|plan| Plan::clone(plan)))
    }

    fn insert_workflow(&mut self, workflow: Workflow, now: DateTime<Utc>, queued: bool) -> Done<bool> {
        let state = &mut *self.state;
        if state.workflows.contains_key(&workflow.id()) {
            return Ok(false);
        }
        state.submitted += 1;
        let queued = queued.then_some(state.submitted);
        let row = Row {
            workflow,
            lease: LeaseState::default(),
            cancel_requested: None,
            updated_at: now,
            queued,
            set_aside: None,
            events: Vec::new(),
            tool_calls: Vec::new(),
            usage: Vec::new(),
        };
        state.workflows.insert(row.workflow.id(), Box::new(row));
        Ok(true)
    }

    fn workflow(&mut self, id: WorkflowId) -> Done<Option<Workflow>> {
        Ok(self.row(id).map(|row| row.workflow.clone()))
    }

    fn replace_workflow(&mut self, workflow: Workflow, now: DateTime<Utc>) -> Done<()> {
        if let Some(row) = self.row(workflow.id()) {
            row.workflow = workflow;
            row.updated_at = now;
        }
        Ok(())
    }

    fn list_workflows(&mut self, query: &WorkflowQuery) -> Done<WorkflowPage> {
        let all = self.state.workflows.values().map(|row| row.workflow.clone()).collect();
        Ok(WorkflowPage::from_all(all, query, Vec::new()))
    }

    fn lease(&mut self, id: WorkflowId) -> Done<Option<LeaseRow>> {
        Ok(self.row(id).map(|row| {
            LeaseRow::new(row.lease.clone(), row.cancel_requested.clone(), row.workflow.version())
                .set_aside(row.set_aside.is_some())
        }))
    }

    fn store_lease(&mut self, id: WorkflowId, lease: &LeaseState) -> Done<()> {
        if let Some(row) = self.row(id) {
            row.lease = lease.clone();
        }
        Ok(())
    }

    fn cancel_requested(&mut self, id: WorkflowId) -> Done<Option<String>> {
        // Every local run is asked about each second: no copy of its lease for that.
        Ok(self.row(id).and_then(|row| row.cancel_requested.clone()))
    }

    fn request_cancel(&mut self, id: WorkflowId, reason: &str) -> Done<bool> {
        Ok(self.row(id).map(|row| row.cancel_requested = Some(reason.to_owned())).is_some())
    }

    fn next_runnable(&mut self, now: DateTime<Utc>) -> Done<Option<String>> {
        let next = self
            .state
            .workflows
            .values()
            .filter(|row| row.is_claimable() && row.lease.is_free(now))
            .min_by_key(|row| row.queued);
        Ok(next.map(|row| row.workflow.id().to_string()))
    }

    fn has_queued_work(&mut self) -> Done<bool> {
        Ok(self.state.workflows.values().any(|row| row.is_claimable()))
    }

    fn set_aside(&mut self, id: &str, reason: &str) -> Done<()> {
        if let Some(row) = id.parse().ok().and_then(|id| self.row(id)) {
            row.set_aside = Some(reason.to_owned());
        }
        Ok(())
    }

    fn put_back(&mut self, id: WorkflowId) -> Done<()> {
        if let Some(row) = self.row(id) {
            row.set_aside = None;
        }
        Ok(())
    }

    fn queue(&mut self, id: WorkflowId) -> Done<bool> {
        let state = &mut *self.state;
        let waiting = |row: &&mut Box<Row>| row.queued.is_none() && !row.workflow.state().is_terminal();
        let Some(row) = state.workflows.get_mut(&id).filter(waiting) else { return Ok(false) };
        state.submitted += 1;
        row.queued = Some(state.submitted);
        Ok(true)
    }

    fn set_aside_rows(&mut self) -> Done<Vec<SetAside>> {
        let rows = self.state.workflows.values();
        let mut aside: Vec<_> = rows
            .filter_map(|row| {
                Some(SetAside::new(row.workflow.id().to_string(), row.set_aside.clone()?, row.queued.is_some()))
            })
            .collect();
        aside.sort_by(|a, b| a.workflow_id.cmp(&b.workflow_id));
        Ok(aside)
    }

    fn last_event(&mut self, id: WorkflowId) -> Done<u64> {
        Ok(self.row(id).and_then(|row| row.events.last()).map_or(0, |event| event.seq))
    }

    fn insert_event(&mut self, id: WorkflowId, event: StoredEvent) -> Done<()> {
        if let Some(row) = self.row(id) {
            row.add_events([event]);
        }
        Ok(())
    }

    fn insert_events(&mut self, id: WorkflowId, events: Vec<StoredEvent>) -> Done<()> {
        if let Some(row) = self.row(id) {
            row.add_events(events);
        }
        Ok(())
    }

    fn events_after(&mut self, id: WorkflowId, after: u64) -> Done<Option<Vec<StoredEvent>>> {
        Ok(self.row(id).map(|row| row.events.iter().filter(|e| e.seq > after).cloned().collect()))
    }

    fn has_events_after(&mut self, id: WorkflowId, after: u64) -> Done<Option<bool>> {
        Ok(self.row(id).map(|row| row.events.last().is_some_and(|event| event.seq > after)))
    }

    /// The protocol fences every journal write first, so the workflow's row is there.
    fn insert_tool_call(&mut self, record: ToolCallRecord) -> Done<bool> {
        let Some(row) = self.row(record.key.workflow_id) else { return Ok(false) };
        match row.tool_call_at(record.key) {
            Ok(_) => Ok(false),
            Err(at) => {
                row.tool_calls.insert(at, record);
                Ok(true)
            }
        }
    }

    fn put_tool_call(&mut self, record: ToolCallRecord) -> Done<()> {
        if let Some(row) = self.row(record.key.workflow_id) {
            match row.tool_call_at(record.key) {
                Ok(at) => row.tool_calls[at] = record,
                Err(at) => row.tool_calls.insert(at, record),
            }
        }
        Ok(())
    }

    fn tool_call(&mut self, key: ToolCallKey) -> Done<Option<ToolCallRecord>> {
        let row = self.row(key.workflow_id);
        Ok(row.and_then(|row| row.tool_call_at(key).ok().map(|at| row.tool_calls[at].clone())))
    }

    fn tool_calls(&mut self, id: WorkflowId) -> Done<Vec<ToolCallRecord>> {
        Ok(self.row(id).map(|row| row.tool_calls.clone()).unwrap_or_default())
    }

    fn insert_usage(&mut self, record: UsageRecord) -> Done<()> {
        if let Some(row) = self.row(record.workflow_id) {
            row.usage.push(record);
        }
        Ok(())
    }

    fn usage(&mut self, id: WorkflowId) -> Done<Vec<UsageRecord>> {
        Ok(self.row(id).map(|row| row.usage.clone()).unwrap_or_default())
    }

    fn workflows_of_end_user(&mut self, end_user_id: &str) -> Done<Vec<String>> {
        Ok(self.state.ids_where(|row| row.workflow.execution_context().end_user_id.as_deref() == Some(end_user_id)))
    }

    fn finished_before(&mut self, before: DateTime<Utc>) -> Done<Vec<String>> {
        Ok(self.state.ids_where(|row| row.workflow.state().is_terminal() && row.updated_at < before))
    }

    fn delete_workflow(&mut self, id: &str) -> Done<bool> {
        Ok(id.parse().is_ok_and(|id| self.state.delete(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventKind, WorkflowEvent};
    use crate::plan::PlanBuilder;
    use crate::state::WorkflowState;
    use crate::storage::{
        Journal, Lease, LeaseQueue, PlanStore, ToolCallKey, ToolCallRecord, UsageRecord, WorkflowStore,
    };

    /// Saves the next version of `workflow`, in `state`, with one event per version.
    async fn save(store: &InMemoryStorage, workflow: &mut Workflow, lease: &Lease, to: WorkflowState) {
        let from = workflow.state();
        workflow.transition_to(to).expect("a legal move");
        workflow.bump_version();
        let event = WorkflowEvent::new(workflow.id(), EventKind::StateChanged { from, to });
        store.update_workflow(workflow, lease, &[event.clone(), event.clone(), event]).await.expect("saved");
    }

    #[tokio::test]
    async fn a_finished_workflow_keeps_no_room_for_more_events_calls_or_usage() {
        let store = InMemoryStorage::new();
        let plan = PlanBuilder::new("q").step("a", None, "$a").build();
        store.save_plan(&plan).await.expect("plan saved");
        let mut workflow = Workflow::new(plan.id, crate::ExecutionContext::default());
        let lease = store.create_leased(&workflow, "me", Duration::from_secs(60)).await.expect("leased").lease;
        save(&store, &mut workflow, &lease, WorkflowState::InProgress).await;
        let id = workflow.id();
        for seq in 0..3 {
            let key = ToolCallKey { workflow_id: id, step: 0, attempt: 0, seq };
            store
                .begin_tool_call(&lease, &ToolCallRecord::intent(key, "t", None, serde_json::Value::Null))
                .await
                .expect("journaled");
            let usage = UsageRecord::new(id, None, crate::usage::Usage::default(), 0.0);
            store.record_usage(&lease, &usage).await.expect("recorded");
        }
        // (stored, room) of the events, the journal and the usage.
        let room = |store: &InMemoryStorage| {
            let row = &store.state().workflows[&id];
            [
                (row.events.len(), row.events.capacity()),
                (row.tool_calls.len(), row.tool_calls.capacity()),
                (row.usage.len(), row.usage.capacity()),
            ]
        };
        assert!(room(&store).iter().all(|(stored, room)| room > stored), "room to grow: {:?}", room(&store));

        save(&store, &mut workflow, &lease, WorkflowState::Complete).await;
        assert_eq!(room(&store), [(6, 6), (3, 3), (3, 3)]);
    }
}
