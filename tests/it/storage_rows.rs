//! A store of one's own, made from outside the crate of row operations over
//! `HashMap`s: it implements `RowStore` and `RowTx` only, gets `Storage` (the
//! protocol) with them, and passes the conformance suite.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use portia::runner::StoredEvent;
use portia::storage::{
    Access, Clock, LeaseRow, LeaseState, ManualClock, RowError, RowStore, RowTx, Storage, ToolCallKey, ToolCallRecord,
    UsageRecord, Work, WorkflowPage, WorkflowQuery,
};
use portia::testing::storage_conformance;
use portia::{Plan, PlanId, Workflow, WorkflowId};
use tokio::sync::Notify;

/// The store: its tables behind one lock, and a bell for this process's workers.
#[derive(Debug)]
struct MapStore {
    clock: ManualClock,
    tables: Mutex<Tables>,
    runnable: Notify,
}

#[derive(Debug, Default)]
struct Tables {
    plans: HashMap<PlanId, Plan>,
    workflows: HashMap<WorkflowId, WorkflowRow>,
    submissions: u64,
    tool_calls: BTreeMap<ToolCallKey, ToolCallRecord>,
    usage: Vec<UsageRecord>,
}

#[derive(Debug)]
struct WorkflowRow {
    workflow: Workflow,
    lease: LeaseState,
    cancel_requested: Option<String>,
    updated_at: DateTime<Utc>,
    queued: Option<u64>,
    events: Vec<StoredEvent>,
}

impl RowStore for MapStore {
    async fn transaction<T: Send + 'static>(&self, _: Access, work: Work<T>) -> Result<T, RowError> {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        // No rollback: these row operations never fail, and the protocol refuses
        // before its first write.
        work(&mut Tx { tables: &mut tables, now: self.clock.now() })
    }

    fn runnable_changed(&self) {
        self.runnable.notify_waiters();
        self.runnable.notify_one();
    }

    async fn watch_runnable(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.runnable.notified()).await;
    }
}

/// One transaction: the locked tables, and the time it started.
struct Tx<'a> {
    tables: &'a mut Tables,
    now: DateTime<Utc>,
}

type Done<T> = Result<T, RowError>;

impl Tx<'_> {
    fn row(&mut self, id: WorkflowId) -> Option<&mut WorkflowRow> {
        self.tables.workflows.get_mut(&id)
    }

    fn ids(&self, selected: impl Fn(&WorkflowRow) -> bool) -> Vec<String> {
        self.tables.workflows.iter().filter(|(_, row)| selected(row)).map(|(id, _)| id.to_string()).collect()
    }
}

impl RowTx for Tx<'_> {
    fn now(&mut self) -> Done<DateTime<Utc>> {
        Ok(self.now)
    }

    fn insert_plan(&mut self, plan: Plan) -> Done<()> {
        self.tables.plans.entry(plan.id).or_insert(plan);
        Ok(())
    }

    fn plan(&mut self, id: PlanId) -> Done<Option<Plan>> {
        Ok(self.tables.plans.get(&id).cloned())
    }

    fn insert_workflow(&mut self, workflow: Workflow, now: DateTime<Utc>, queued: bool) -> Done<bool> {
        if self.tables.workflows.contains_key(&workflow.id()) {
            return Ok(false);
        }
        self.tables.submissions += 1;
        let queued = queued.then_some(self.tables.submissions);
        let (lease, cancel_requested, events) = (LeaseState::default(), None, Vec::new());
        let row = WorkflowRow { workflow, lease, cancel_requested, updated_at: now, queued, events };
        self.tables.workflows.insert(row.workflow.id(), row);
        Ok(true)
    }

    fn workflow(&mut self, id: WorkflowId) -> Done<Option<Workflow>> {
        Ok(self.row(id).map(|row| row.workflow.clone()))
    }

    fn replace_workflow(&mut self, workflow: Workflow, now: DateTime<Utc>) -> Done<()> {
        let row = self.row(workflow.id()).expect("the protocol replaces stored workflows only");
        (row.workflow, row.updated_at) = (workflow, now);
        Ok(())
    }

    fn list_workflows(&mut self, query: &WorkflowQuery) -> Done<WorkflowPage> {
        let all = self.tables.workflows.values().map(|row| row.workflow.clone()).collect();
        Ok(WorkflowPage::from_all(all, query, Vec::new()))
    }

    fn lease(&mut self, id: WorkflowId) -> Done<Option<LeaseRow>> {
        let row = self.row(id);
        Ok(row.map(|row| LeaseRow::new(row.lease.clone(), row.cancel_requested.clone(), row.workflow.version())))
    }

    fn store_lease(&mut self, id: WorkflowId, lease: &LeaseState) -> Done<()> {
        self.row(id).expect("the protocol leases stored workflows only").lease = lease.clone();
        Ok(())
    }

    fn request_cancel(&mut self, id: WorkflowId, reason: &str) -> Done<bool> {
        Ok(self.row(id).map(|row| row.cancel_requested = Some(reason.to_owned())).is_some())
    }

    fn next_runnable(&mut self, now: DateTime<Utc>) -> Done<Option<String>> {
        let runnable =
            |row: &&WorkflowRow| row.queued.is_some() && row.workflow.state().is_runnable() && row.lease.is_free(now);
        let next = self.tables.workflows.values().filter(runnable).min_by_key(|row| row.queued);
        Ok(next.map(|row| row.workflow.id().to_string()))
    }

    fn dequeue(&mut self, id: &str) -> Done<()> {
        if let Some(row) = id.parse().ok().and_then(|id| self.row(id)) {
            row.queued = None;
        }
        Ok(())
    }

    fn last_event(&mut self, id: WorkflowId) -> Done<u64> {
        Ok(self.row(id).and_then(|row| row.events.last()).map_or(0, |event| event.seq))
    }

    fn insert_event(&mut self, id: WorkflowId, event: StoredEvent) -> Done<()> {
        self.row(id).expect("the protocol stores events of stored workflows only").events.push(event);
        Ok(())
    }

    fn events_after(&mut self, id: WorkflowId, after: u64) -> Done<Option<Vec<StoredEvent>>> {
        Ok(self.row(id).map(|row| row.events.iter().filter(|event| event.seq > after).cloned().collect()))
    }

    fn insert_tool_call(&mut self, record: ToolCallRecord) -> Done<bool> {
        if self.tables.tool_calls.contains_key(&record.key) {
            return Ok(false);
        }
        self.tables.tool_calls.insert(record.key, record);
        Ok(true)
    }

    fn put_tool_call(&mut self, record: ToolCallRecord) -> Done<()> {
        self.tables.tool_calls.insert(record.key, record);
        Ok(())
    }

    fn tool_call(&mut self, key: ToolCallKey) -> Done<Option<ToolCallRecord>> {
        Ok(self.tables.tool_calls.get(&key).cloned())
    }

    fn tool_calls(&mut self, id: WorkflowId) -> Done<Vec<ToolCallRecord>> {
        Ok(self.tables.tool_calls.values().filter(|record| record.key.workflow_id == id).cloned().collect())
    }

    fn insert_usage(&mut self, record: UsageRecord) -> Done<()> {
        self.tables.usage.push(record);
        Ok(())
    }

    fn usage(&mut self, id: WorkflowId) -> Done<Vec<UsageRecord>> {
        Ok(self.tables.usage.iter().filter(|record| record.workflow_id == id).cloned().collect())
    }

    fn workflows_of_end_user(&mut self, end_user_id: &str) -> Done<Vec<String>> {
        Ok(self.ids(|row| row.workflow.execution_context().end_user_id.as_deref() == Some(end_user_id)))
    }

    fn finished_before(&mut self, before: DateTime<Utc>) -> Done<Vec<String>> {
        Ok(self.ids(|row| row.workflow.state().is_terminal() && row.updated_at < before))
    }

    fn delete_workflow(&mut self, id: &str) -> Done<bool> {
        let Some(row) = id.parse().ok().and_then(|id| self.tables.workflows.remove(&id)) else { return Ok(false) };
        let id = row.workflow.id();
        self.tables.tool_calls.retain(|key, _| key.workflow_id != id);
        self.tables.usage.retain(|record| record.workflow_id != id);
        let plan_id = row.workflow.plan_id();
        if !self.tables.workflows.values().any(|other| other.workflow.plan_id() == plan_id) {
            self.tables.plans.remove(&plan_id);
        }
        Ok(true)
    }
}

/// Paused, so that the case waiting for a worker's wake-up takes no real time.
#[tokio::test(start_paused = true)]
async fn a_store_of_row_operations_from_outside_the_crate_conforms() {
    storage_conformance(|clock| async move {
        let store = MapStore { clock, tables: Mutex::default(), runnable: Notify::new() };
        Arc::new(store) as Arc<dyn Storage>
    })
    .await;
}
