//! The storage conformance suite: the cases every [`Storage`] must pass, shipped so
//! that a store of one's own can run them ([`storage_conformance`]). Each case is a
//! function below, listed in `CASES`; the crate's own stores run them in
//! `tests/it/storage_conformance.rs`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::ScriptedLlm;
use crate::config::ExecutionMode;
use crate::events::{EventKind, WorkflowEvent};
use crate::llm::Usage;
use crate::storage::{
    Clock, Lease, LeaseHolder, ManualClock, SetAside, Storage, ToolCallKey, ToolCallRecord, ToolCallStatus,
    UsageRecord, WorkflowQuery,
};
use crate::{
    Config, Error, InMemoryToolRegistry, Plan, PlanBuilder, PlanId, Runner, Tool, ToolError, ToolOutput,
    ToolRunContext, ToolSpec, Workflow, WorkflowId, WorkflowState,
};

/// Runs every conformance case against the stores `new_store` makes, and panics,
/// naming each failed case and what the store did, if any failed.
///
/// The cases are the protocol of [`Storage`] as the runner relies on it: saves that
/// compare and swap versions, leases that exclude, expire, renew and fence every
/// write of a run that lost its lease, cancellation, the tool-call journal, usage,
/// listing, claims by workers, events numbered with the save that stores them and
/// the waits for them, and deletes that take a workflow's journal and unused plan.
///
/// `new_store` is called once per case, with the [`ManualClock`] that case moves (so
/// lease expiry needs no real waiting), and makes a fresh, empty store that reads the
/// time from that clock: an `Arc<dyn Storage>`, or a [`ConformanceStore`] that also
/// opens second handles on the same data. Each case runs in a task of its own, so
/// call this from a tokio runtime (a `#[tokio::test]`); every case runs, and the panic
/// at the end has one line per failed case:
///
/// ```text
/// storage conformance: 1 of 21 cases failed
/// storage conformance: "stale_writers_are_fenced": update_workflow with a lost lease: expected LeaseLost, got Ok(())
/// ```
///
/// The case `a_submission_or_release_wakes_a_waiting_worker` waits half a second on
/// tokio's clock, which takes no time in a test started paused
/// (`#[tokio::test(start_paused = true)]`); [`StorageConformance`] runs some cases only.
///
/// ```no_run
/// use std::sync::Arc;
/// use portia::storage::{InMemoryStorage, Storage};
///
/// #[tokio::test]
/// async fn my_store_conforms() {
///     // Your store, reading the time from `clock`; here the in-memory one.
///     portia::testing::storage_conformance(|clock| async move {
///         Arc::new(InMemoryStorage::with_clock(Arc::new(clock))) as Arc<dyn Storage>
///     })
///     .await;
/// }
/// ```
pub async fn storage_conformance<F, Fut, S>(new_store: F)
where
    F: FnMut(ManualClock) -> Fut,
    Fut: Future<Output = S>,
    S: Into<ConformanceStore>,
{
    StorageConformance::new(new_store).run().await;
}

/// A store for one conformance case: the store itself, and how to open another
/// handle on the same data (by default, the store again).
///
/// A store that several processes share (a database file, a server) should give the
/// second handle with [`ConformanceStore::other_handles`]: the cases about saves,
/// claims and cancellations made by another process then go through it, and a
/// waiter on one handle must hear of a save made through the other.
#[derive(Clone)]
pub struct ConformanceStore {
    store: Arc<dyn Storage>,
    other: Option<OpenHandle>,
}

/// Opens another handle on a case's data.
type OpenHandle = Arc<dyn Fn() -> Arc<dyn Storage> + Send + Sync>;

impl ConformanceStore {
    /// `store`, whose other handle is `store` itself.
    #[must_use]
    pub fn new(store: Arc<dyn Storage>) -> Self {
        Self { store, other: None }
    }

    /// Opens each further handle on the same data (on the same clock) with `open`:
    /// a second connection to the file or the server, with connections of its own.
    #[must_use]
    pub fn other_handles(mut self, open: impl Fn() -> Arc<dyn Storage> + Send + Sync + 'static) -> Self {
        self.other = Some(Arc::new(open));
        self
    }
}

impl From<Arc<dyn Storage>> for ConformanceStore {
    fn from(store: Arc<dyn Storage>) -> Self {
        Self::new(store)
    }
}

impl fmt::Debug for ConformanceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConformanceStore")
            .field("store", &self.store)
            .field("other_handles", &self.other.is_some())
            .finish()
    }
}

/// The storage conformance suite, to run some of its cases: built on a store factory
/// as [`storage_conformance`] is, narrowed with [`only`](Self::only) or
/// [`skip`](Self::skip), and run with [`run`](Self::run).
///
/// ```
/// use std::sync::Arc;
/// use portia::storage::{InMemoryStorage, Storage};
/// use portia::testing::StorageConformance;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let suite = StorageConformance::new(|clock| async move {
///     Arc::new(InMemoryStorage::with_clock(Arc::new(clock))) as Arc<dyn Storage>
/// })
/// .only(&["compare_and_swap", "stale_writers_are_fenced"]);
/// assert_eq!(suite.cases().collect::<Vec<_>>(), ["compare_and_swap", "stale_writers_are_fenced"]);
/// suite.run().await;
/// # }
/// ```
pub struct StorageConformance<F> {
    new_store: F,
    selected: Vec<&'static Case>,
}

impl<F> fmt::Debug for StorageConformance<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageConformance").field("cases", &self.cases().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl<F, Fut, S> StorageConformance<F>
where
    F: FnMut(ManualClock) -> Fut,
    Fut: Future<Output = S>,
    S: Into<ConformanceStore>,
{
    /// Every case, each on a fresh store from `new_store` (see [`storage_conformance`]).
    pub fn new(new_store: F) -> Self {
        Self { new_store, selected: CASES.iter().collect() }
    }

    /// Runs only the named cases.
    ///
    /// # Panics
    /// If a name is not a case's; the message lists the cases.
    #[must_use]
    pub fn only(mut self, names: &[&str]) -> Self {
        check_names(names);
        self.selected.retain(|case| names.contains(&case.name));
        self
    }

    /// Leaves the named cases out.
    ///
    /// # Panics
    /// If a name is not a case's; the message lists the cases.
    #[must_use]
    pub fn skip(mut self, names: &[&str]) -> Self {
        check_names(names);
        self.selected.retain(|case| !names.contains(&case.name));
        self
    }

    /// Runs the cases in turn, each on a fresh store and clock, in a task of its own.
    ///
    /// # Panics
    /// Once all have run, if any failed: one line per failed case, with its name and
    /// its failure (`storage conformance: "stale_writers_are_fenced": update_workflow
    /// with a lost lease: expected LeaseLost, got Ok(())`).
    pub async fn run(mut self) {
        let mut failures = Vec::new();
        for case in &self.selected {
            let clock = ManualClock::default();
            let ConformanceStore { store, other } = (self.new_store)(clock.clone()).await.into();
            let other = other.unwrap_or_else(|| {
                let same = Arc::clone(&store);
                Arc::new(move || Arc::clone(&same))
            });
            let fixture = Fixture { store, clock, other };
            if let Err(err) = tokio::spawn((case.run)(fixture)).await {
                let why = match err.try_into_panic() {
                    Ok(payload) => payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "panicked".to_owned()),
                    Err(err) => err.to_string(),
                };
                failures.push(format!("storage conformance: {:?}: {why}", case.name));
            }
        }
        if !failures.is_empty() {
            let count = self.selected.len();
            panic!("storage conformance: {} of {count} cases failed\n{}", failures.len(), failures.join("\n"));
        }
    }
}

impl<F> StorageConformance<F> {
    /// The names of the cases [`run`](Self::run) will run, in order.
    pub fn cases(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.selected.iter().map(|case| case.name)
    }
}

/// Panics unless every one of `names` is a case's.
fn check_names(names: &[&str]) {
    for name in names {
        assert!(
            CASES.iter().any(|case| case.name == *name),
            "storage conformance: no case is named {name:?}; the cases are: {}",
            CASES.iter().map(|case| case.name).collect::<Vec<_>>().join(", ")
        );
    }
}

/// A case's run, on its fixture.
type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One named case.
struct Case {
    name: &'static str,
    run: fn(Fixture) -> CaseFuture,
}

/// The cases, in the order they run.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        static CASES: &[Case] = &[$(Case { name: stringify!($case), run: |f| Box::pin($case(f)) }),*];
    };
}

cases!(
    create_then_get_round_trips,
    compare_and_swap,
    leases_exclude_expire_and_release,
    a_workflow_created_leased_is_stored_held_and_not_queued,
    finished_workflows_cannot_be_leased,
    renewal_extends_a_lease,
    stale_writers_are_fenced,
    cancellation_reaches_the_holder,
    the_journal_replays,
    usage_round_trips_in_order,
    listing_filters_orders_and_pages,
    listing_by_end_user_pages_only_theirs,
    delete_workflow_takes_its_journal_and_unused_plan,
    delete_end_user_takes_only_theirs,
    prune_takes_only_old_finished_workflows,
    claims_hand_out_queued_workflows_oldest_first,
    claims_skip_workflows_waiting_for_a_human_or_finished,
    queued_work_counts_only_what_a_worker_will_run,
    a_workflow_set_aside_is_claimed_no_more_but_can_be_resumed,
    a_workflow_set_aside_is_put_back_for_the_workers,
    a_workflow_not_queued_is_queued_behind_those_before,
    events_are_stored_with_the_save_in_order,
    racing_handles_for_one_lease_let_one_win,
    an_event_wait_finds_stored_events_and_otherwise_times_out,
    a_save_through_another_handle_wakes_an_event_waiter,
    a_runner_watches_a_workflow_another_runner_runs,
    a_submission_or_release_wakes_a_waiting_worker,
    a_last_save_gives_the_lease_up_in_the_same_write,
);

const TTL: Duration = Duration::from_secs(30);

/// A store under test and the clock it runs on.
struct Fixture {
    store: Arc<dyn Storage>,
    clock: ManualClock,
    /// Opens another handle on the same data: [`ConformanceStore::other_handles`], or the store again.
    other: OpenHandle,
}

impl Fixture {
    fn store(&self) -> &dyn Storage {
        self.store.as_ref()
    }

    /// Moves the clock past the end of every lease granted so far.
    fn expire_leases(&self) {
        self.clock.advance(TTL + Duration::from_secs(1));
    }
}

fn plan() -> Plan {
    PlanBuilder::new("Which city is warmer?").step("Find the weather", Some("weather_tool"), "$weather").build()
}

/// A NOT_STARTED workflow at version 1 for `plan`, run for `end_user`.
fn workflow_in(plan: &Plan, state: WorkflowState, end_user: Option<&str>) -> Workflow {
    let value = json!({
        "id": WorkflowId::new(),
        "plan_id": plan.id,
        "state": state,
        "version": 1,
        "execution_context": { "end_user_id": end_user },
    });
    serde_json::from_value(value).expect("a workflow")
}

/// The next version of `workflow`, one step further on.
fn next_version(workflow: &Workflow) -> Workflow {
    let mut value = serde_json::to_value(workflow).expect("a workflow serializes");
    value["version"] = (workflow.version() + 1).into();
    value["current_step_index"] = (workflow.current_step_index() + 1).into();
    value["state"] = json!(WorkflowState::InProgress);
    serde_json::from_value(value).expect("a workflow")
}

/// Saves a plan and a new workflow of it.
async fn stored(store: &dyn Storage) -> Workflow {
    let plan = plan();
    store.save_plan(&plan).await.expect("plan saved");
    let workflow = workflow_in(&plan, WorkflowState::NotStarted, None);
    store.create_workflow(&workflow).await.expect("workflow created");
    workflow
}

fn key(workflow: &Workflow, step: usize, attempt: u32, seq: u32) -> ToolCallKey {
    ToolCallKey { workflow_id: workflow.id(), step, attempt, seq }
}

fn intent(key: ToolCallKey, input: Value) -> ToolCallRecord {
    ToolCallRecord::intent(key, "weather_tool", Some("alice".to_owned()), input)
}

fn usage(workflow: &Workflow, step_output: Option<&str>, prompt_tokens: u64) -> UsageRecord {
    let step_output = step_output.map(str::to_owned);
    UsageRecord { workflow_id: workflow.id(), step_output, usage: Usage::call(prompt_tokens, 7), cost_usd: 0.25 }
}

async fn acquire(store: &dyn Storage, workflow: &Workflow, owner: &str) -> Lease {
    store.acquire_lease(workflow.id(), owner, TTL).await.expect("lease granted").lease
}

// ---- The cases every store must pass. ----

async fn create_then_get_round_trips(f: Fixture) {
    let store = f.store();
    let plan = plan();
    store.save_plan(&plan).await.unwrap();
    store.save_plan(&plan).await.expect("saving a stored plan again does nothing");
    assert_eq!(store.get_plan(plan.id).await.unwrap(), plan);
    let mut changed = plan.clone();
    changed.plan_context.query.push_str(", and why?");
    let refused = store.save_plan(&changed).await;
    assert!(matches!(refused, Err(Error::PlanIdTaken(id)) if id == plan.id), "{refused:?}");
    assert_eq!(store.get_plan(plan.id).await.unwrap(), plan, "the stored plan stays as it was");
    let workflow = workflow_in(&plan, WorkflowState::NotStarted, Some("alice"));
    store.create_workflow(&workflow).await.unwrap();
    let back = store.get_workflow(workflow.id()).await.unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&workflow).unwrap());
    assert_eq!(back.version(), 1);
    let again = store.create_workflow(&workflow).await.unwrap_err();
    assert!(matches!(again, Error::VersionConflict { expected: 0, found: 1, .. }), "{again}");
    let missing = WorkflowId::new();
    assert!(matches!(store.get_workflow(missing).await, Err(Error::WorkflowNotFound(id)) if id == missing));
    assert!(matches!(store.get_plan(PlanId::new()).await, Err(Error::PlanNotFound(_))));
}

async fn compare_and_swap(f: Fixture) {
    let store = f.store();
    let workflow = stored(store).await;
    let lease = acquire(store, &workflow, "runner-a").await;
    let changed = next_version(&workflow);
    let mut stale = serde_json::to_value(&changed).unwrap();
    stale["version"] = 1.into();
    let stale: Workflow = serde_json::from_value(stale).unwrap();
    let err = store.update_workflow(&stale, &lease, &[]).await.unwrap_err();
    assert!(matches!(err, Error::VersionConflict { expected: 0, found: 1, .. }), "{err}");
    assert_eq!(store.get_workflow(workflow.id()).await.unwrap(), workflow, "a refused save changes nothing");
    store.update_workflow(&changed, &lease, &[]).await.unwrap();
    let back = store.get_workflow(workflow.id()).await.unwrap();
    assert_eq!((back.version(), back.current_step_index()), (2, 1));
    let err = store.update_workflow(&changed, &lease, &[]).await.unwrap_err();
    assert!(matches!(err, Error::VersionConflict { expected: 1, found: 2, .. }), "{err}");
}

async fn leases_exclude_expire_and_release(f: Fixture) {
    let store = f.store();
    let workflow = stored(store).await;
    let holder = || async { store.lease_holder(workflow.id()).await.expect("the lease read") };
    assert_eq!(holder().await, None, "never taken");
    let first = store.acquire_lease(workflow.id(), "runner-a", TTL).await.unwrap();
    assert_eq!((first.lease.epoch, first.reclaimed, first.attempts), (1, false, 0));
    assert_eq!(first.workflow, workflow);
    assert_eq!(holder().await, Some(LeaseHolder::new("runner-a", first.lease.expires_at)));
    let busy = store.acquire_lease(workflow.id(), "runner-b", TTL).await.unwrap_err();
    assert!(matches!(&busy, Error::AlreadyRunning { owner, .. } if owner == "runner-a"), "{busy}");
    f.expire_leases();
    assert_eq!(holder().await, None, "lapsed");
    let taken = store.acquire_lease(workflow.id(), "runner-b", TTL).await.unwrap();
    assert!(taken.lease.epoch > first.lease.epoch);
    assert_eq!((taken.reclaimed, taken.attempts, taken.lease.owner.as_str()), (true, 1, "runner-b"));
    store.release_lease(&taken.lease).await.unwrap();
    assert_eq!(holder().await, None, "released");
    let next = store.acquire_lease(workflow.id(), "runner-c", TTL).await.unwrap();
    assert_eq!((next.reclaimed, next.attempts), (false, 1), "a released lease is no takeover");
    assert!(next.lease.epoch > taken.lease.epoch);
    let missing = store.acquire_lease(WorkflowId::new(), "runner-a", TTL).await.unwrap_err();
    assert!(matches!(missing, Error::WorkflowNotFound(_)), "{missing}");
    let missing = store.lease_holder(WorkflowId::new()).await.unwrap_err();
    assert!(matches!(missing, Error::WorkflowNotFound(_)), "{missing}");
}

async fn a_workflow_created_leased_is_stored_held_and_not_queued(f: Fixture) {
    let store = f.store();
    let plan = plan();
    store.save_plan(&plan).await.unwrap();
    let workflow = workflow_in(&plan, WorkflowState::NotStarted, None);
    let grant = store.create_leased(&workflow, "runner-a", TTL).await.unwrap();
    assert_eq!(
        (grant.lease.owner.as_str(), grant.lease.epoch, grant.reclaimed, grant.attempts),
        ("runner-a", 1, false, 0)
    );
    assert_eq!(grant.workflow, workflow);
    assert_eq!(store.get_workflow(workflow.id()).await.unwrap(), workflow);
    let busy = store.acquire_lease(workflow.id(), "runner-b", TTL).await.unwrap_err();
    assert!(matches!(&busy, Error::AlreadyRunning { owner, .. } if owner == "runner-a"), "{busy}");
    store.update_workflow(&next_version(&workflow), &grant.lease, &[]).await.expect("the lease writes");
    let again = store.create_leased(&workflow, "runner-b", TTL).await.unwrap_err();
    assert!(matches!(again, Error::VersionConflict { .. }), "{again}");
    store.release_lease(&grant.lease).await.unwrap();
    assert!(store.claim_runnable("worker", TTL).await.unwrap().is_none(), "a workflow run at once is not queued");
}

async fn finished_workflows_cannot_be_leased(f: Fixture) {
    let store = f.store();
    let workflow = workflow_in(&plan(), WorkflowState::Complete, None);
    store.create_workflow(&workflow).await.unwrap();
    let err = store.acquire_lease(workflow.id(), "runner-a", TTL).await.unwrap_err();
    assert!(matches!(err, Error::InvalidWorkflowState { state: WorkflowState::Complete, .. }), "{err}");
}

async fn renewal_extends_a_lease(f: Fixture) {
    let store = f.store();
    let workflow = stored(store).await;
    let lease = acquire(store, &workflow, "runner-a").await;
    f.clock.advance(TTL / 2);
    let status = store.renew_lease(&lease, TTL).await.unwrap();
    assert!(status.expires_at > lease.expires_at);
    assert_eq!(status.cancel_requested, None);
    f.clock.advance(TTL * 3 / 4);
    let busy = store.acquire_lease(workflow.id(), "runner-b", TTL).await.unwrap_err();
    assert!(matches!(busy, Error::AlreadyRunning { .. }), "the renewed lease is still live: {busy}");
    store.update_workflow(&next_version(&workflow), &lease, &[]).await.expect("the renewed lease still writes");
}

/// Every fenced write of a run whose lease is gone; each must be refused.
async fn assert_fenced(store: &dyn Storage, workflow: &Workflow, lease: &Lease, journaled: &ToolCallRecord) {
    let lost = |result: Result<(), Error>, what: &str| {
        assert!(
            matches!(result, Err(Error::LeaseLost { .. })),
            "{what} with a lost lease: expected LeaseLost, got {result:?}"
        );
    };
    lost(store.update_workflow(&next_version(workflow), lease, &[]).await, "update_workflow");
    lost(store.begin_tool_call(lease, &intent(key(workflow, 0, 0, 1), json!({}))).await.map(drop), "begin_tool_call");
    let outcome = journaled.clone().finished(&Ok(ToolOutput::Value(json!("sunny").into())), 0.1);
    lost(store.finish_tool_call(lease, &outcome).await, "finish_tool_call");
    lost(store.record_usage(lease, &usage(workflow, None, 5)).await, "record_usage");
    lost(store.renew_lease(lease, TTL).await.map(drop), "renew_lease");
}

async fn stale_writers_are_fenced(f: Fixture) {
    let store = f.store();
    let workflow = stored(store).await;
    let old = acquire(store, &workflow, "runner-a").await;
    let journaled = intent(key(&workflow, 0, 0, 0), json!({"city": "Paris"}));
    store.begin_tool_call(&old, &journaled).await.unwrap();
    f.expire_leases();
    // Expired but not yet taken over: refused all the same.
    assert_fenced(store, &workflow, &old, &journaled).await;
    let new = acquire(store, &workflow, "runner-b").await;
    assert_fenced(store, &workflow, &old, &journaled).await;
    assert_eq!(store.get_workflow(workflow.id()).await.unwrap(), workflow);
    assert_eq!(store.tool_calls(workflow.id()).await.unwrap(), [journaled]);
    assert!(store.usage_records(workflow.id()).await.unwrap().is_empty());
    // The new holder writes as usual.
    store.update_workflow(&next_version(&workflow), &new, &[]).await.unwrap();
    store.record_usage(&new, &usage(&workflow, None, 5)).await.unwrap();
}

async fn cancellation_reaches_the_holder(f: Fixture) {
    let store = f.store();
    let workflow = stored(store).await;
    let lease = acquire(store, &workflow, "runner-a").await;
    let other = stored(store).await;
    let asked = [workflow.id(), other.id(), WorkflowId::new()];
    assert_eq!(store.cancel_requests(&asked).await.unwrap(), Vec::new());
    (f.other)().request_cancel(workflow.id(), "the user gave up").await.unwrap();
    let requested = store.cancel_requests(&asked).await.unwrap();
    assert_eq!(requested, vec![(workflow.id(), "the user gave up".to_owned())], "only the one cancelled");
    let status = store.renew_lease(&lease, TTL).await.unwrap();
    assert_eq!(status.cancel_requested.as_deref(), Some("the user gave up"));
    store.release_lease(&lease).await.unwrap();
    let grant = store.acquire_lease(workflow.id(), "runner-b", TTL).await.unwrap();
    assert_eq!(grant.cancel_requested.as_deref(), Some("the user gave up"));
    let missing = store.request_cancel(WorkflowId::new(), "no reason").await.unwrap_err();
    assert!(matches!(missing, Error::WorkflowNotFound(_)), "{missing}");
}

async fn the_journal_replays(f: Fixture) {
    let store = f.store();
    let workflow = stored(store).await;
    let lease = acquire(store, &workflow, "runner-a").await;
    let first = intent(key(&workflow, 0, 0, 0), json!({"city": "Paris"}));
    assert_eq!(store.begin_tool_call(&lease, &first).await.unwrap(), None, "stored now");
    let retry = intent(key(&workflow, 0, 0, 0), json!({"city": "Rome"}));
    let replayed = store.begin_tool_call(&lease, &retry).await.unwrap();
    assert_eq!(replayed.as_ref(), Some(&first), "the first intent stands");
    let done = first.clone().finished(&Ok(ToolOutput::Value(json!({"temp": 21.5}).into())), 0.25);
    store.finish_tool_call(&lease, &done).await.unwrap();
    let replayed = store.begin_tool_call(&lease, &retry).await.unwrap().expect("the call is journaled");
    assert_eq!(replayed.status, ToolCallStatus::Success);
    assert_eq!(replayed, done);
    // A call journaled only once it is over is stored whole, outcome and all.
    let whole = intent(key(&workflow, 0, 0, 1), json!({"city": "Oslo"}));
    let whole = whole.finished(&Ok(ToolOutput::Value(json!({"temp": 3.0}).into())), 0.5);
    assert_eq!(store.begin_tool_call(&lease, &whole).await.unwrap(), None, "stored now");
    assert_eq!(store.tool_calls(workflow.id()).await.unwrap()[1], whole);
    for (step, attempt, seq) in [(1, 0, 0), (0, 1, 0), (0, 0, 2)] {
        store.begin_tool_call(&lease, &intent(key(&workflow, step, attempt, seq), json!(null))).await.unwrap();
    }
    let keys: Vec<_> = store.tool_calls(workflow.id()).await.unwrap().iter().map(|r| r.key).collect();
    let expected = [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (1, 0, 0)].map(|(s, a, q)| key(&workflow, s, a, q));
    assert_eq!(keys, expected);
    assert!(store.tool_calls(WorkflowId::new()).await.unwrap().is_empty());
}

async fn usage_round_trips_in_order(f: Fixture) {
    let store = f.store();
    let workflow = stored(store).await;
    let lease = acquire(store, &workflow, "runner-a").await;
    let mut cached = usage(&workflow, Some("$a"), 20);
    cached.usage = cached.usage.with_cache(12, 3);
    let records = [usage(&workflow, Some("$weather"), 30), usage(&workflow, None, 10), cached];
    for record in &records {
        store.record_usage(&lease, record).await.unwrap();
    }
    assert_eq!(store.usage_records(workflow.id()).await.unwrap(), records);
    assert!(store.usage_records(WorkflowId::new()).await.unwrap().is_empty());
}

async fn listing_filters_orders_and_pages(f: Fixture) {
    let store = f.store();
    let plan = plan();
    let states = [WorkflowState::NotStarted, WorkflowState::Complete, WorkflowState::NotStarted, WorkflowState::Failed];
    let mut ids = Vec::new();
    for _ in 0..2 {
        for state in states {
            let workflow = workflow_in(&plan, state, None);
            store.create_workflow(&workflow).await.unwrap();
            ids.push((workflow.id(), state));
        }
    }
    let made = ids.clone();
    ids.sort_by_key(|(id, _)| *id);
    assert_eq!(ids, made, "new ids are time-ordered, so a listing in id order is in the order they were made");
    let page = store.list_workflows(&WorkflowQuery::default().page(2).page_size(3)).await.unwrap();
    assert_eq!((page.count, page.total_pages, page.current_page), (8, 3, 2));
    let listed: Vec<_> = page.results.iter().map(Workflow::id).collect();
    assert_eq!(listed, ids[3..6].iter().map(|(id, _)| *id).collect::<Vec<_>>());
    let waiting = store.list_workflows(&WorkflowQuery::in_state(WorkflowState::NotStarted)).await.unwrap();
    let expected: Vec<_> = ids.iter().filter(|(_, s)| *s == WorkflowState::NotStarted).map(|(id, _)| *id).collect();
    assert_eq!(waiting.results.iter().map(Workflow::id).collect::<Vec<_>>(), expected);
    assert_eq!((waiting.count, waiting.total_pages), (4, 1));
    assert!(waiting.unreadable.is_empty());
    let empty = store.list_workflows(&WorkflowQuery::in_state(WorkflowState::ReadyToResume)).await.unwrap();
    assert_eq!((empty.count, empty.total_pages, empty.results.len()), (0, 1, 0));
}

async fn listing_by_end_user_pages_only_theirs(f: Fixture) {
    let store = f.store();
    let plan = plan();
    let mut ann = Vec::new();
    for i in 0..7 {
        // Ann's workflows among others', in both states listed.
        let state = if i % 2 == 0 { WorkflowState::Complete } else { WorkflowState::NotStarted };
        let workflow = workflow_in(&plan, state, Some("ann"));
        store.create_workflow(&workflow).await.unwrap();
        ann.push((workflow.id(), state));
        for other in [Some("bob"), None] {
            store.create_workflow(&workflow_in(&plan, state, other)).await.unwrap();
        }
    }
    ann.sort_by_key(|(id, _)| *id);
    let query = WorkflowQuery::default().end_user(Some("ann".into())).page_size(3);
    let second = store.list_workflows(&query.clone().page(2)).await.unwrap();
    assert_eq!((second.count, second.total_pages, second.current_page), (7, 3, 2), "only Ann's are counted");
    let listed: Vec<_> = second.results.iter().map(Workflow::id).collect();
    assert_eq!(listed, ann[3..6].iter().map(|(id, _)| *id).collect::<Vec<_>>(), "page 2 of Ann's, in id order");
    let last = store.list_workflows(&query.clone().page(3)).await.unwrap();
    assert_eq!(last.results.iter().map(Workflow::id).collect::<Vec<_>>(), [ann[6].0]);
    let done = store.list_workflows(&query.state(Some(WorkflowState::Complete)).page(1)).await.unwrap();
    let expected: Vec<_> = ann.iter().filter(|(_, s)| *s == WorkflowState::Complete).map(|(id, _)| *id).collect();
    assert_eq!(done.count, 4, "both filters apply");
    assert_eq!(done.results.iter().map(Workflow::id).collect::<Vec<_>>(), expected[..3]);
    let nobody = store.list_workflows(&WorkflowQuery::default().end_user(Some("carol".into()))).await.unwrap();
    assert_eq!((nobody.count, nobody.total_pages, nobody.results.len()), (0, 1, 0));
}

async fn delete_workflow_takes_its_journal_and_unused_plan(f: Fixture) {
    let store = f.store();
    let (shared, own) = (plan(), plan());
    store.save_plan(&shared).await.unwrap();
    store.save_plan(&own).await.unwrap();
    let a = workflow_in(&shared, WorkflowState::NotStarted, None);
    let b = workflow_in(&shared, WorkflowState::NotStarted, None);
    let c = workflow_in(&own, WorkflowState::NotStarted, None);
    for workflow in [&a, &b, &c] {
        store.create_workflow(workflow).await.unwrap();
        let lease = acquire(store, workflow, "runner-a").await;
        store.begin_tool_call(&lease, &intent(key(workflow, 0, 0, 0), json!({}))).await.unwrap();
        store.record_usage(&lease, &usage(workflow, None, 1)).await.unwrap();
    }
    store.delete_workflow(c.id()).await.unwrap();
    assert!(matches!(store.get_workflow(c.id()).await, Err(Error::WorkflowNotFound(_))));
    assert!(store.tool_calls(c.id()).await.unwrap().is_empty());
    assert!(store.usage_records(c.id()).await.unwrap().is_empty());
    assert!(matches!(store.get_plan(own.id).await, Err(Error::PlanNotFound(_))), "its plan went with it");
    store.delete_workflow(a.id()).await.unwrap();
    assert_eq!(store.get_plan(shared.id).await.unwrap(), shared, "b still uses the plan");
    assert_eq!(store.tool_calls(b.id()).await.unwrap().len(), 1);
    store.delete_workflow(a.id()).await.expect("deleting a missing workflow does nothing");
}

async fn delete_end_user_takes_only_theirs(f: Fixture) {
    let store = f.store();
    let plan = plan();
    let theirs = [Some("alice"), Some("alice"), Some("bob"), None]
        .map(|user| workflow_in(&plan, WorkflowState::NotStarted, user));
    for workflow in &theirs {
        store.create_workflow(workflow).await.unwrap();
    }
    assert_eq!(store.delete_end_user("alice").await.unwrap(), 2);
    assert_eq!(store.delete_end_user("alice").await.unwrap(), 0);
    let left: Vec<_> = store.list_workflows(&WorkflowQuery::default()).await.unwrap().results;
    let mut expected = vec![theirs[2].id(), theirs[3].id()];
    expected.sort();
    assert_eq!(left.iter().map(Workflow::id).collect::<Vec<_>>(), expected);
}

async fn prune_takes_only_old_finished_workflows(f: Fixture) {
    let store = f.store();
    let plan = plan();
    let old = [WorkflowState::Complete, WorkflowState::Failed, WorkflowState::NotStarted]
        .map(|state| workflow_in(&plan, state, None));
    for workflow in &old {
        store.create_workflow(workflow).await.unwrap();
    }
    f.clock.advance(Duration::from_secs(3600));
    let cutoff: DateTime<Utc> = f.clock.now();
    f.clock.advance(Duration::from_secs(60));
    let recent = workflow_in(&plan, WorkflowState::Complete, None);
    store.create_workflow(&recent).await.unwrap();
    assert_eq!(store.prune_finished(cutoff).await.unwrap(), 2);
    let left: Vec<_> = store.list_workflows(&WorkflowQuery::default()).await.unwrap().results;
    let mut expected = vec![old[2].id(), recent.id()];
    expected.sort();
    assert_eq!(left.iter().map(Workflow::id).collect::<Vec<_>>(), expected);
}

/// A workflow of `plan()` submitted for the workers.
async fn submitted(store: &dyn Storage) -> Workflow {
    let plan = plan();
    store.save_plan(&plan).await.expect("plan saved");
    let workflow = workflow_in(&plan, WorkflowState::NotStarted, None);
    store.submit_workflow(&workflow).await.expect("workflow submitted");
    workflow
}

/// `workflow` saved under `lease` as the next version, in `state`.
async fn move_to(store: &dyn Storage, workflow: &Workflow, lease: &Lease, state: WorkflowState) -> Workflow {
    let mut value = serde_json::to_value(next_version(workflow)).expect("a workflow serializes");
    value["state"] = json!(state);
    let moved: Workflow = serde_json::from_value(value).expect("a workflow");
    store.update_workflow(&moved, lease, &[]).await.expect("saved");
    moved
}

async fn claims_hand_out_queued_workflows_oldest_first(f: Fixture) {
    let store = f.store();
    let kept = stored(store).await; // created to run in its own process: never handed out
    let (first, second) = (submitted(store).await, submitted(store).await);
    let claim = |owner: &'static str| async move { store.claim_runnable(owner, TTL).await.expect("claim") };
    let one = claim("w1").await.expect("the first submitted");
    assert_eq!((one.workflow.id(), one.reclaimed), (first.id(), false));
    assert_eq!(claim("w2").await.expect("the second").workflow.id(), second.id());
    assert!(claim("w3").await.is_none(), "both are leased and {} is not queued", kept.id());

    f.expire_leases();
    let again = claim("w4").await.expect("a dead run's workflow is handed out again");
    assert_eq!((again.workflow.id(), again.reclaimed, again.attempts), (first.id(), true, 1));
    // A claim is a lease like any other: the other handle cannot take it now.
    let err = (f.other)().acquire_lease(first.id(), "w5", TTL).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyRunning { .. }), "{err}");
}

async fn claims_skip_workflows_waiting_for_a_human_or_finished(f: Fixture) {
    let store = f.store();
    let waiting = submitted(store).await;
    let lease = store.claim_runnable("w1", TTL).await.unwrap().expect("claimed").lease;
    let waiting = move_to(store, &waiting, &lease, WorkflowState::NeedClarification).await;
    store.release_lease(&lease).await.unwrap();
    let done = submitted(store).await;
    let lease = store.claim_runnable("w2", TTL).await.unwrap().expect("claimed").lease;
    move_to(store, &done, &lease, WorkflowState::Complete).await;
    store.release_lease(&lease).await.unwrap();
    assert!(store.claim_runnable("w3", TTL).await.unwrap().is_none(), "nothing is runnable");

    // Answered, it is runnable again, and released now rather than expired.
    let lease = store.acquire_lease(waiting.id(), "answerer", TTL).await.unwrap().lease;
    move_to(store, &waiting, &lease, WorkflowState::ReadyToResume).await;
    store.release_lease(&lease).await.unwrap();
    let resumed = store.claim_runnable("w4", TTL).await.unwrap().expect("the answered workflow");
    assert_eq!((resumed.workflow.id(), resumed.reclaimed), (waiting.id(), false));
}

async fn queued_work_counts_only_what_a_worker_will_run(f: Fixture) {
    let store = f.store();
    let work = |what: &'static str| async move { store.has_queued_work().await.expect(what) };
    let outside = stored(store).await; // run in its own process, never queued
    assert!(!work("nothing queued").await, "{} is not queued", outside.id());

    let queued = submitted(store).await;
    assert!(work("one queued").await);
    let lease = store.claim_runnable("w1", TTL).await.unwrap().expect("claimed").lease;
    assert!(work("one running").await, "a running workflow is work left");
    let waiting = move_to(store, &queued, &lease, WorkflowState::NeedClarification).await;
    store.release_lease(&lease).await.unwrap();
    assert!(!work("one waiting for a human").await, "{} waits for a human", waiting.id());

    let lease = store.acquire_lease(waiting.id(), "answerer", TTL).await.unwrap().lease;
    let ready = move_to(store, &waiting, &lease, WorkflowState::ReadyToResume).await;
    store.release_lease(&lease).await.unwrap();
    assert!(work("one answered").await);
    let lease = store.claim_runnable("w2", TTL).await.unwrap().expect("claimed").lease;
    move_to(store, &ready, &lease, WorkflowState::Complete).await;
    assert!(!work("all finished").await);
}

async fn a_workflow_set_aside_is_claimed_no_more_but_can_be_resumed(f: Fixture) {
    let store = f.store();
    let (aside, next) = (submitted(store).await, submitted(store).await);
    assert_eq!(store.set_aside_workflows().await.unwrap(), Vec::new(), "none set aside yet");
    let lease = store.claim_runnable("w1", TTL).await.unwrap().expect("the first submitted").lease;
    store.set_aside(&lease, "plan p cannot be read").await.expect("set aside");
    assert_eq!(store.get_workflow(aside.id()).await.unwrap(), aside, "the workflow is kept as it was");
    let listed = vec![SetAside::new(aside.id().to_string(), "plan p cannot be read", true)];
    assert_eq!(store.set_aside_workflows().await.unwrap(), listed, "listed with the reason");
    let claimed = store.claim_runnable("w2", TTL).await.unwrap().expect("the next one");
    assert_eq!(claimed.workflow.id(), next.id());
    f.expire_leases();
    let again = store.claim_runnable("w3", TTL).await.unwrap().expect("a dead run's workflow is handed out again");
    assert_eq!(again.workflow.id(), next.id(), "{} is set aside", aside.id());
    store.set_aside(&claimed.lease, "lost").await.expect("a lost lease is left alone");
    assert_eq!(store.set_aside_workflows().await.unwrap(), listed, "a lost lease sets nothing aside");
    store.release_lease(&again.lease).await.unwrap();
    let kept = store.claim_runnable("w4", TTL).await.unwrap().expect("still queued: w2's lease was lost");
    assert_eq!(kept.workflow.id(), next.id());
    move_to(store, &kept.workflow, &kept.lease, WorkflowState::Complete).await;
    assert!(!store.has_queued_work().await.unwrap(), "a workflow set aside is no work for the workers");
    let later = submitted(store).await;

    // Once the row is fixed, `portia resume` takes it by id; its lease was given up.
    let resumed = store.acquire_lease(aside.id(), "resumer", TTL).await.expect("resumed by id");
    assert!(!resumed.reclaimed, "set aside, not left to expire");
    assert_eq!(store.set_aside_workflows().await.unwrap(), Vec::new(), "put back by the resume");
    store.release_lease(&resumed.lease).await.unwrap();
    let back = store.claim_runnable("w5", TTL).await.unwrap().expect("back on the queue");
    assert_eq!(back.workflow.id(), aside.id(), "in its place, before {} submitted later", later.id());
}

async fn a_workflow_set_aside_is_put_back_for_the_workers(f: Fixture) {
    let store = f.store();
    let aside = submitted(store).await;
    let lease = store.claim_runnable("w1", TTL).await.unwrap().expect("queued").lease;
    store.set_aside(&lease, "journal j cannot be read").await.unwrap();
    let later = submitted(store).await;
    assert!(!store.put_back(later.id()).await.unwrap(), "{} was not set aside", later.id());
    assert!(matches!(store.put_back(WorkflowId::new()).await, Err(Error::WorkflowNotFound(_))));

    assert!(store.put_back(aside.id()).await.unwrap());
    assert_eq!(store.set_aside_workflows().await.unwrap(), Vec::new());
    assert!(!store.put_back(aside.id()).await.unwrap(), "put back once");
    let claimed = store.claim_runnable("w2", TTL).await.unwrap().expect("back on the queue");
    assert_eq!(claimed.workflow.id(), aside.id(), "in its place, before {}", later.id());
    assert!(!claimed.reclaimed, "setting it aside gave the lease up: no takeover");
}

async fn a_workflow_not_queued_is_queued_behind_those_before(f: Fixture) {
    let store = f.store();
    let kept = stored(store).await; // created to run in its own process
    let first = submitted(store).await;
    assert!(!store.queue(first.id()).await.unwrap(), "{} was queued when submitted", first.id());
    assert!(matches!(store.queue(WorkflowId::new()).await, Err(Error::WorkflowNotFound(_))));
    let done = stored(store).await;
    let lease = store.acquire_lease(done.id(), "w0", TTL).await.unwrap().lease;
    move_to(store, &done, &lease, WorkflowState::Complete).await;
    assert!(!store.queue(done.id()).await.unwrap(), "a finished workflow is not queued");

    assert!(store.queue(kept.id()).await.unwrap());
    assert!(!store.queue(kept.id()).await.unwrap(), "queued once");
    let claim = |owner: &'static str| async move { store.claim_runnable(owner, TTL).await.expect("claim") };
    assert_eq!(claim("w1").await.expect("the one submitted first").workflow.id(), first.id());
    assert_eq!(claim("w2").await.expect("the one queued now").workflow.id(), kept.id());
    assert!(claim("w3").await.is_none());
}

async fn a_submission_or_release_wakes_a_waiting_worker(f: Fixture) {
    let store = Arc::clone(&f.store);
    let hour = Duration::from_secs(3600);
    // A wait that is not woken takes its whole time: at once on tokio's paused clock
    // (the crate's own stores run this case paused), really otherwise.
    let started = tokio::time::Instant::now();
    let quiet = Duration::from_millis(500);
    store.wait_for_runnable(quiet).await;
    assert!(started.elapsed() >= quiet, "with nothing new, the wait times out (workers poll)");

    let started = tokio::time::Instant::now();
    submitted(store.as_ref()).await;
    store.wait_for_runnable(hour).await;
    assert!(started.elapsed() < hour, "a submission made before the wait is not missed");

    let lease = store.claim_runnable("w1", TTL).await.unwrap().expect("claimed").lease;
    let released = async { store.release_lease(&lease).await.unwrap() };
    assert!(ends_a_wait_for_runnable(&store, released).await, "a release wakes the waiting worker");

    let grant = store.claim_runnable("w2", TTL).await.unwrap().expect("claimed again");
    let saved = async { store.update_and_release(&next_version(&grant.workflow), &grant.lease, &[]).await.unwrap() };
    assert!(ends_a_wait_for_runnable(&store, saved).await, "a last save's release wakes the waiting worker");
}

/// Whether `wake`, done while a worker waits an hour for runnable work, ends that wait.
async fn ends_a_wait_for_runnable(store: &Arc<dyn Storage>, wake: impl Future<Output = ()>) -> bool {
    let hour = Duration::from_secs(3600);
    let started = tokio::time::Instant::now();
    let waiter = tokio::spawn({
        let store = Arc::clone(store);
        async move { store.wait_for_runnable(hour).await }
    });
    tokio::task::yield_now().await;
    wake.await;
    waiter.await.unwrap();
    started.elapsed() < hour
}

async fn a_last_save_gives_the_lease_up_in_the_same_write(f: Fixture) {
    let store = f.store();
    let workflow = submitted(store).await;
    let lease = store.claim_runnable("w1", TTL).await.unwrap().expect("claimed").lease;
    let saved = next_version(&workflow);
    let event = changed_to(&workflow, WorkflowState::InProgress);

    let refused =
        store.update_and_release(&next_version(&saved), &lease, std::slice::from_ref(&event)).await.unwrap_err();
    assert!(matches!(refused, Error::VersionConflict { .. }), "{refused}");
    assert!(store.claim_runnable("w2", TTL).await.unwrap().is_none(), "a refused save keeps the lease");
    assert!(store.events(workflow.id(), 0).await.unwrap().is_empty(), "a refused save stores no event");

    store.update_and_release(&saved, &lease, &[event]).await.unwrap();
    assert_eq!(store.get_workflow(workflow.id()).await.unwrap(), saved);
    assert_eq!(store.events(workflow.id(), 0).await.unwrap().len(), 1, "the event is stored with the save");

    let next =
        store.claim_runnable("w2", TTL).await.unwrap().expect("claimable at once, before the lease would expire");
    assert_eq!((&next.workflow, next.reclaimed, next.lease.owner.as_str()), (&saved, false, "w2"));
    let late = store.update_and_release(&next_version(&saved), &lease, &[]).await.unwrap_err();
    assert!(matches!(late, Error::LeaseLost { .. }), "the released lease writes no more: {late}");
}

async fn events_are_stored_with_the_save_in_order(f: Fixture) {
    let store = f.store();
    let workflow = stored(store).await;
    let lease = acquire(store, &workflow, "w1").await;
    let event = |to: WorkflowState| changed_to(&workflow, to);
    let first = next_version(&workflow);
    store.update_workflow(&first, &lease, &[event(WorkflowState::InProgress)]).await.unwrap();
    let second = next_version(&first);
    store
        .update_workflow(&second, &lease, &[event(WorkflowState::Complete), event(WorkflowState::Failed)])
        .await
        .unwrap();
    let all = store.events(workflow.id(), 0).await.unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!((all[1].event.workflow_id, &all[1].event.kind), (workflow.id(), &event(WorkflowState::Complete).kind));
    assert_eq!(store.events(workflow.id(), 2).await.unwrap().len(), 1, "only those after 2");

    // A refused save stores no event.
    let stale = next_version(&first);
    assert!(store.update_workflow(&stale, &lease, &[event(WorkflowState::Failed)]).await.is_err());
    assert_eq!(store.events(workflow.id(), 0).await.unwrap().len(), 3);
    store.delete_workflow(workflow.id()).await.unwrap();
    assert!(store.events(workflow.id(), 0).await.is_err(), "the events went with the workflow");
}

/// An event of `workflow` saying it went to `to`.
fn changed_to(workflow: &Workflow, to: WorkflowState) -> WorkflowEvent {
    WorkflowEvent {
        workflow_id: workflow.id(),
        at: Utc::now(),
        kind: EventKind::StateChanged { from: WorkflowState::NotStarted, to },
    }
}

async fn an_event_wait_finds_stored_events_and_otherwise_times_out(f: Fixture) {
    let store = f.store();
    let workflow = stored(store).await;
    let lease = acquire(store, &workflow, "w1").await;
    let hour = Duration::from_secs(3600);
    assert!(!store.wait_for_events(workflow.id(), 0, Duration::from_millis(10)).await.unwrap(), "none yet");
    let moved = next_version(&workflow);
    store.update_workflow(&moved, &lease, &[changed_to(&workflow, WorkflowState::InProgress)]).await.unwrap();
    assert!(store.wait_for_events(workflow.id(), 0, hour).await.unwrap(), "an event stored before the wait is found");
    // A save without events is not news: the wait still times out.
    store.update_workflow(&next_version(&moved), &lease, &[]).await.unwrap();
    let quiet = store.wait_for_events(workflow.id(), 1, Duration::from_millis(10)).await.unwrap();
    assert!(!quiet, "with nothing after event 1, the wait returns once its timeout passed, saying so");
    let err = store.wait_for_events(WorkflowId::new(), 0, hour).await.unwrap_err();
    assert!(matches!(err, Error::WorkflowNotFound(_)), "{err}");
}

/// The waiter's handle hears of the save only from the store (Postgres: by NOTIFY on
/// the LISTEN connection of a store with a pool of its own; SQLite: from the file's
/// data version), and it waits an hour: the case ends only if it is woken.
async fn a_save_through_another_handle_wakes_an_event_waiter(f: Fixture) {
    let waiting = Arc::clone(&f.store);
    let saving = (f.other)();
    let workflow = stored(waiting.as_ref()).await;
    let id = workflow.id();
    let waiter = tokio::spawn(async move { waiting.wait_for_events(id, 0, Duration::from_secs(3600)).await });
    // The lease is a round trip or two, which lets the waiter look (and find nothing) first.
    let lease = acquire(saving.as_ref(), &workflow, "w1").await;
    tokio::task::yield_now().await;
    let event = changed_to(&workflow, WorkflowState::InProgress);
    saving.update_workflow(&next_version(&workflow), &lease, &[event]).await.unwrap();
    assert!(waiter.await.unwrap().unwrap(), "the waiter reports the event the other handle stored");
}

async fn racing_handles_for_one_lease_let_one_win(f: Fixture) {
    let handles: Vec<Arc<dyn Storage>> = (0..3).map(|_| (f.other)()).collect();
    let id = stored(f.store()).await.id();
    let racers: Vec<_> = (0..9)
        .map(|i| {
            let store = Arc::clone(&handles[i % handles.len()]);
            tokio::spawn(async move { store.acquire_lease(id, &format!("runner-{i}"), TTL).await })
        })
        .collect();
    let mut winners = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(_) => winners += 1,
            Err(Error::AlreadyRunning { .. }) => {}
            Err(other) => panic!("a racer failed: {other}"),
        }
    }
    assert_eq!(winners, 1);
}

/// A runner on `store` with the gate tool, which needs no model.
fn runner_on(store: Arc<dyn Storage>, gate: Arc<tokio::sync::Notify>) -> Runner {
    let config = Config::builder()
        .execution(ExecutionMode::Sequential)
        .summarize_final_output(false)
        .build()
        .expect("a valid config");
    let tools = InMemoryToolRegistry::from_tools([Arc::new(GateTool(gate)) as Arc<dyn Tool>]).expect("one tool");
    let llm = Arc::new(ScriptedLlm::new());
    Runner::builder(config).tools(tools).llm(llm).storage(store).build().expect("a runner")
}

/// Waits at a gate, called with its step's task.
#[derive(Debug)]
struct GateTool(Arc<tokio::sync::Notify>);

#[async_trait::async_trait]
impl Tool for GateTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("gate_tool", "Gate", "Waits.").task_argument("task").read_only()
    }

    async fn run(&self, _ctx: &ToolRunContext, _args: Value) -> Result<ToolOutput, ToolError> {
        self.0.notified().await;
        Ok(ToolOutput::value("opened"))
    }
}

/// The watching runner shares no events with the running one, only the store (through
/// a handle of its own where the store has them), so each event reaches it from the store.
async fn a_runner_watches_a_workflow_another_runner_runs(f: Fixture) {
    let gate = Arc::new(tokio::sync::Notify::new());
    let running = runner_on(Arc::clone(&f.store), Arc::clone(&gate));
    let watching = runner_on((f.other)(), Arc::new(tokio::sync::Notify::new()));
    let plan = PlanBuilder::new("wait").step("wait", Some("gate_tool"), "$waited").build();
    let workflow = running.create_workflow(&plan).await.unwrap();
    let mut watch = watching.watch(workflow.id());
    let run = tokio::spawn(async move { running.execute_workflow(workflow).await });
    let first = watch.next().await.expect("an event").unwrap();
    assert!(matches!(first.event.kind, EventKind::StateChanged { to: WorkflowState::InProgress, .. }), "{first:?}");
    // The run waits at the gate until the watcher has followed it this far.
    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(event) = watch.next().await {
        rest.push(event.unwrap());
    }
    let seqs: Vec<u64> = rest.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (2..=rest.len() as u64 + 1).collect::<Vec<_>>(), "every event once, in order");
    let last = &rest.last().expect("events after the gate").event.kind;
    assert!(matches!(last, EventKind::StateChanged { to: WorkflowState::Complete, .. }), "{last:?}");
    assert_eq!(run.await.unwrap().unwrap().state(), WorkflowState::Complete);
}
