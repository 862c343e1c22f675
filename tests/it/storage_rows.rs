//! A store of one's own, made from outside the crate of row operations over
//! `HashMap`s: it implements `RowStore` and `RowTx` only, gets `Storage` (the
//! protocol) with them, and passes the conformance suite. Made to fail its saves
//! (as a full disk does), it shows what a worker does when its store fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use portia::runner::StoredEvent;
use portia::runner::WorkerOptions;
use portia::storage::{
    Access, Clock, LeaseRow, LeaseState, ManualClock, RowError, RowStore, RowTx, SetAside, Storage, ToolCallKey,
    ToolCallRecord, UsageRecord, Work, WorkflowPage, WorkflowQuery,
};
use portia::testing::{ScriptedLlm, storage_conformance};
use portia::{Config, Plan, PlanBuilder, PlanId, Runner, Workflow, WorkflowId, WorkflowState};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The store: its tables behind one lock, a bell for this process's workers, and
/// the faults a test makes it have.
#[derive(Debug)]
struct MapStore {
    clock: ManualClock,
    tables: Mutex<Tables>,
    runnable: Notify,
    faults: Faults,
}

/// Saves of workflows fail while `full`, as they do on a full disk (small writes in
/// place, such as a lease's, still work); each failed save is noted and rung.
#[derive(Debug, Default)]
struct Faults {
    full: AtomicBool,
    failed_saves: Mutex<Vec<Instant>>,
    failed: Notify,
}

impl MapStore {
    fn new(clock: ManualClock) -> Self {
        Self { clock, tables: Mutex::default(), runnable: Notify::new(), faults: Faults::default() }
    }
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
    set_aside: Option<String>,
    events: Vec<StoredEvent>,
}

impl WorkflowRow {
    fn is_claimable(&self) -> bool {
        self.queued.is_some() && self.set_aside.is_none() && self.workflow.state().is_runnable()
    }
}

impl RowStore for MapStore {
    async fn transaction<T: Send + 'static>(&self, _: Access, work: Work<T>) -> Result<T, RowError> {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        // No rollback: these row operations never fail, and the protocol refuses
        // before its first write.
        work(&mut Tx { tables: &mut tables, now: self.clock.now(), faults: &self.faults })
    }

    fn runnable_changed(&self) {
        self.runnable.notify_waiters();
        self.runnable.notify_one();
    }

    async fn watch_runnable(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.runnable.notified()).await;
    }
}

/// One transaction: the locked tables, the time it started, and the faults to have.
struct Tx<'a> {
    tables: &'a mut Tables,
    now: DateTime<Utc>,
    faults: &'a Faults,
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

    fn insert_plan(&mut self, plan: Plan) -> Done<Option<Plan>> {
        if self.tables.plans.contains_key(&plan.id) {
            return Ok(Some(plan));
        }
        self.tables.plans.insert(plan.id, plan);
        Ok(None)
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
        let row = WorkflowRow { workflow, lease, cancel_requested, updated_at: now, queued, set_aside: None, events };
        self.tables.workflows.insert(row.workflow.id(), row);
        Ok(true)
    }

    fn workflow(&mut self, id: WorkflowId) -> Done<Option<Workflow>> {
        Ok(self.row(id).map(|row| row.workflow.clone()))
    }

    fn replace_workflow(&mut self, workflow: Workflow, now: DateTime<Utc>) -> Done<()> {
        if self.faults.full.load(Ordering::SeqCst) {
            self.faults.failed_saves.lock().unwrap_or_else(PoisonError::into_inner).push(Instant::now());
            self.faults.failed.notify_one();
            return Err(RowError::store(std::io::Error::other("database or disk is full")));
        }
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
        Ok(row.map(|row| {
            LeaseRow::new(row.lease.clone(), row.cancel_requested.clone(), row.workflow.version())
                .set_aside(row.set_aside.is_some())
        }))
    }

    fn store_lease(&mut self, id: WorkflowId, lease: &LeaseState) -> Done<()> {
        self.row(id).expect("the protocol leases stored workflows only").lease = lease.clone();
        Ok(())
    }

    fn request_cancel(&mut self, id: WorkflowId, reason: &str) -> Done<bool> {
        Ok(self.row(id).map(|row| row.cancel_requested = Some(reason.to_owned())).is_some())
    }

    fn has_queued_work(&mut self) -> Done<bool> {
        Ok(self.tables.workflows.values().any(WorkflowRow::is_claimable))
    }

    fn next_runnable(&mut self, now: DateTime<Utc>) -> Done<Option<String>> {
        let runnable = |row: &&WorkflowRow| row.is_claimable() && row.lease.is_free(now);
        let next = self.tables.workflows.values().filter(runnable).min_by_key(|row| row.queued);
        Ok(next.map(|row| row.workflow.id().to_string()))
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
        let tables = &mut *self.tables;
        let waiting = |row: &&mut WorkflowRow| row.queued.is_none() && !row.workflow.state().is_terminal();
        let Some(row) = tables.workflows.get_mut(&id).filter(waiting) else { return Ok(false) };
        tables.submissions += 1;
        row.queued = Some(tables.submissions);
        Ok(true)
    }

    fn set_aside_rows(&mut self) -> Done<Vec<SetAside>> {
        let rows = self.tables.workflows.values();
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
    storage_conformance(|clock| async move { Arc::new(MapStore::new(clock)) as Arc<dyn Storage> }).await;
}

/// A store whose saves fail: each run releases its lease at once (the manual clock
/// never lets a lease lapse, so only a release frees the workflow for the next try),
/// the worker waits longer after each failure, up to 30 s, and once the store works
/// again the workflow completes. Tokio's clock is paused.
#[tokio::test(start_paused = true)]
async fn a_worker_backs_off_a_failing_store_releasing_each_run_s_lease() {
    let store = Arc::new(MapStore::new(ManualClock::new(Utc::now())));
    store.faults.full.store(true, Ordering::SeqCst);
    let config = Config::builder().summarize_final_output(false).build().unwrap();
    let llm = Arc::new(ScriptedLlm::new().text("done"));
    let runner = Runner::builder(config).llm(llm).storage(store.clone()).build().unwrap();
    let id = runner.submit_plan(&PlanBuilder::new("say done").step("say done", None, "$done").build()).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(runner.worker(WorkerOptions::new()).run_until(async move {
        let _ = stopped.await;
    }));

    for _ in 0..9 {
        let failed = store.faults.failed.notified();
        tokio::time::timeout(Duration::from_secs(60), failed).await.expect("the worker tried the workflow again");
    }
    let tries = store.faults.failed_saves.lock().unwrap().clone();
    let waits: Vec<u64> = tries.windows(2).map(|w| (w[1] - w[0]).as_millis() as u64).collect();
    let expected = [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000];
    for (wait, least) in waits.iter().zip(expected) {
        assert!((least..least + 1_000).contains(wait), "waits doubling from 0.5 s up to 30 s: {waits:?}");
    }

    store.faults.full.store(false, Ordering::SeqCst);
    let done = runner.wait_for_completion(id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    let _ = stop.send(());
    let report = worker.await.unwrap();
    assert_eq!(report.errors, 9, "each failed run counted: {report:?}");
}
