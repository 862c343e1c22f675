//! The conformance suite, `portia::testing::storage_conformance` (its cases are in
//! `src/testing/conformance.rs`), run against `InMemoryStorage`, a store of one's own
//! that keeps the trait's defaults, `SqliteStorage` and (with the `postgres` feature)
//! `PostgresStorage`; a store that saves with a lost lease, to see the suite fail it;
//! and the SQLite cases about the file itself.
//!
//! The Postgres run needs `PORTIA_TEST_PG_URL` (see `tests/it/pg.rs`); each case runs
//! in a fresh schema.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use portia::runner::WorkflowEvent;
use portia::storage::{
    InMemoryStorage, Journal, Lease, LeaseQueue, ManualClock, PlanStore, Retention, SqliteStorage, Storage,
    ToolCallRecord, UsageRecord, WorkflowQuery, WorkflowStore,
};
use portia::testing::{ConformanceStore, StorageConformance, storage_conformance};
use portia::{Error, Plan, PlanBuilder, Workflow, WorkflowId, WorkflowState};
use serde_json::json;

#[cfg(feature = "postgres")]
use crate::pg;

/// Waits on tokio's clock: paused, it takes no time, so it runs paused where it can.
const WAKE: &str = "a_submission_or_release_wakes_a_waiting_worker";

fn memory(clock: ManualClock) -> Arc<dyn Storage> {
    Arc::new(InMemoryStorage::with_clock(Arc::new(clock)))
}

#[tokio::test]
async fn memory_conforms() {
    StorageConformance::new(|clock| async move { memory(clock) }).skip(&[WAKE]).run().await;
}

#[tokio::test(start_paused = true)]
async fn memory_wakes_a_waiting_worker() {
    StorageConformance::new(|clock| async move { memory(clock) }).only(&[WAKE]).run().await;
}

/// Memory behind a store of one's own that keeps every default of [`Storage`] (the
/// default [`Storage::wait_for_events`] polls), run as a user would run theirs.
#[tokio::test]
async fn own_store_conforms() {
    storage_conformance(|clock| async move { Arc::new(OwnStore(memory_store(clock))) as Arc<dyn Storage> }).await;
}

fn memory_store(clock: ManualClock) -> InMemoryStorage {
    InMemoryStorage::with_clock(Arc::new(clock))
}

#[derive(Debug)]
struct OwnStore(InMemoryStorage);

/// Memory that reports a save made with a lost lease as done (and drops it).
#[derive(Debug)]
struct Unfenced(InMemoryStorage);

/// Implements the storage roles for a wrapper of [`InMemoryStorage`] by passing each
/// required method on, but `update_workflow`, which runs `$update` with `$inner` the
/// wrapped store.
macro_rules! pass_on {
    ($store:ident, update_workflow($inner:ident, $workflow:ident, $lease:ident, $events:ident) $update:block) => {
        pass_on!(@role $store, PlanStore {
            save_plan(plan: &Plan) -> portia::Result<()>;
            get_plan(id: portia::PlanId) -> portia::Result<Plan>;
        });
        pass_on!(@role $store, LeaseQueue {
            acquire_lease(id: WorkflowId, owner: &str, ttl: Duration) -> portia::Result<portia::storage::LeaseGrant>;
            renew_lease(lease: &Lease, ttl: Duration) -> portia::Result<portia::storage::LeaseStatus>;
            release_lease(lease: &Lease) -> portia::Result<()>;
            set_aside(lease: &Lease, reason: &str) -> portia::Result<()>;
            set_aside_workflows() -> portia::Result<Vec<portia::storage::SetAside>>;
            put_back(id: WorkflowId) -> portia::Result<bool>;
            queue(id: WorkflowId) -> portia::Result<bool>;
            lease_holder(id: WorkflowId) -> portia::Result<Option<portia::storage::LeaseHolder>>;
            claim_runnable(owner: &str, ttl: Duration) -> portia::Result<Option<portia::storage::LeaseGrant>>;
            wait_for_runnable(timeout: Duration) -> ();
            has_queued_work() -> portia::Result<bool>;
            cancel_requests(ids: &[WorkflowId]) -> portia::Result<Vec<(WorkflowId, String)>>;
            request_cancel(id: WorkflowId, reason: &str) -> portia::Result<()>;
        });
        pass_on!(@role $store, Journal {
            begin_tool_call(lease: &Lease, intent: &ToolCallRecord) -> portia::Result<Option<ToolCallRecord>>;
            finish_tool_call(lease: &Lease, record: &ToolCallRecord) -> portia::Result<()>;
            tool_calls(id: WorkflowId) -> portia::Result<Vec<ToolCallRecord>>;
            record_usage(lease: &Lease, record: &UsageRecord) -> portia::Result<()>;
            usage_records(id: WorkflowId) -> portia::Result<Vec<UsageRecord>>;
        });
        pass_on!(@role $store, Retention {
            delete_workflow(id: WorkflowId) -> portia::Result<()>;
            delete_end_user(end_user_id: &str) -> portia::Result<usize>;
            prune_finished(before: DateTime<Utc>) -> portia::Result<usize>;
        });
        pass_on!(@role $store, WorkflowStore {
            create_workflow(workflow: &Workflow) -> portia::Result<()>;
            submit_workflow(workflow: &Workflow) -> portia::Result<()>;
            get_workflow(id: WorkflowId) -> portia::Result<Workflow>;
            list_workflows(query: &WorkflowQuery) -> portia::Result<portia::storage::WorkflowPage>;
            events(id: WorkflowId, after: u64) -> portia::Result<Vec<portia::runner::StoredEvent>>;
        } {
            async fn update_workflow(
                &self,
                $workflow: &Workflow,
                $lease: &Lease,
                $events: &[WorkflowEvent],
            ) -> portia::Result<()> {
                let $inner = &self.0;
                $update
            }
        });
    };
    (@role $store:ident, $role:ident { $($method:ident($($arg:ident: $type:ty),*) -> $output:ty;)* } $({ $($own:tt)* })?) => {
        #[async_trait::async_trait]
        impl $role for $store {
            $(async fn $method(&self, $($arg: $type),*) -> $output { self.0.$method($($arg),*).await })*
            $($($own)*)?
        }
    };
}

pass_on!(OwnStore, update_workflow(inner, workflow, lease, events) {
    inner.update_workflow(workflow, lease, events).await
});

pass_on!(Unfenced, update_workflow(inner, workflow, lease, events) {
    match inner.update_workflow(workflow, lease, events).await {
        Err(Error::LeaseLost { .. }) => Ok(()),
        other => other,
    }
});

/// The suite fails a store that breaks the protocol, naming the case and what the
/// store did, after running the other cases (which it passes).
#[tokio::test]
async fn a_store_that_saves_with_a_lost_lease_fails_the_fencing_case() {
    let suite =
        StorageConformance::new(|clock| async move { Arc::new(Unfenced(memory_store(clock))) as Arc<dyn Storage> })
            .skip(&[WAKE, "a_last_save_gives_the_lease_up_in_the_same_write"]);
    let count = suite.cases().count();
    let failed = tokio::spawn(suite.run()).await.expect_err("the suite fails the store");
    let payload = failed.into_panic();
    let message = payload.downcast_ref::<String>().expect("a formatted panic message");
    let expected = format!(
        "storage conformance: 1 of {count} cases failed\n\
         storage conformance: \"stale_writers_are_fenced\": \
         update_workflow with a lost lease: expected LeaseLost, got Ok(())"
    );
    assert_eq!(message, &expected);
}

#[tokio::test]
#[should_panic(expected = "storage conformance: no case is named \"no_such_case\"; the cases are: ")]
async fn an_unknown_case_name_is_refused_with_the_list() {
    let suite = StorageConformance::new(|clock| async move { memory(clock) });
    assert_eq!(suite.cases().count(), 28);
    assert!(suite.cases().any(|case| case == WAKE));
    let _ = suite.only(&["no_such_case"]);
}

/// Each case in a database of its own in one temporary directory (its parent
/// directories are created on opening); the other handle is a second connection.
fn sqlite_stores(dir: &Path) -> impl FnMut(ManualClock) -> std::future::Ready<ConformanceStore> + '_ {
    let mut cases = 0;
    move |clock| {
        cases += 1;
        let path = dir.join(format!("case-{cases}")).join("nested").join("portia.db");
        let store = Arc::new(open_sqlite(&path, &clock));
        std::future::ready(ConformanceStore::new(store).other_handles(move || Arc::new(open_sqlite(&path, &clock))))
    }
}

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    StorageConformance::new(sqlite_stores(dir.path())).skip(&[WAKE]).run().await;
}

#[tokio::test(start_paused = true)]
async fn sqlite_wakes_a_waiting_worker() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    StorageConformance::new(sqlite_stores(dir.path())).only(&[WAKE]).run().await;
}

/// Opens the database at `path` on `clock` (clones of a `ManualClock` share one time).
fn open_sqlite(path: &Path, clock: &ManualClock) -> SqliteStorage {
    SqliteStorage::open_with_clock(path, Arc::new(clock.clone())).expect("the database opens")
}

/// Each case in a fresh schema of the test database (this test is `#[ignore]`d, and
/// fails when run without one); the other handle is a second store with a pool of its
/// own. Postgres talks over the network, which tokio's paused clock would race: every
/// case runs in real time.
#[cfg(feature = "postgres")]
#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn postgres_conforms() {
    use portia::storage::{PostgresSettings, PostgresStorage};
    let url = pg::test_url();
    let mut schemas = Vec::new();
    let new_store = |clock: ManualClock| {
        let schema = pg::Schema::fresh(&url);
        let settings = PostgresSettings::new(url.clone()).schema(schema.name.clone()).pool_size(4);
        schemas.push(schema);
        let open = move || -> Arc<dyn Storage> {
            Arc::new(PostgresStorage::with_clock(&settings, Arc::new(clock.clone())).expect("the settings are valid"))
        };
        std::future::ready(ConformanceStore::new(open()).other_handles(open))
    };
    StorageConformance::new(new_store).run().await;
    for schema in schemas {
        schema.remove().await;
    }
}

// ---- SQLite only: the file itself. ----

fn plan() -> Plan {
    PlanBuilder::new("Which city is warmer?").step("Find the weather", Some("weather_tool"), "$weather").build()
}

/// Saves a plan and a new workflow of it (NOT_STARTED, at version 1).
async fn stored(store: &dyn Storage) -> Workflow {
    let plan = plan();
    store.save_plan(&plan).await.expect("plan saved");
    let value =
        json!({ "id": WorkflowId::new(), "plan_id": plan.id, "state": WorkflowState::NotStarted, "version": 1 });
    let workflow: Workflow = serde_json::from_value(value).expect("a workflow");
    store.create_workflow(&workflow).await.expect("workflow created");
    workflow
}

fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).expect("the database opens directly")
}

#[tokio::test]
async fn sqlite_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let workflow = stored(&SqliteStorage::open(&path).unwrap()).await;
    let reopened = SqliteStorage::open(&path).expect("an up-to-date file opens again");
    assert_eq!(reopened.get_workflow(workflow.id()).await.unwrap(), workflow);
    drop(reopened);
    raw(&path).pragma_update(None, "user_version", 999).unwrap();
    let err = SqliteStorage::open(&path).unwrap_err();
    assert!(matches!(&err, Error::SchemaTooNew { found: 999, supported, .. } if *supported < 999), "{err}");
    let Error::SchemaTooNew { supported, .. } = &err else { unreachable!() };
    let message = err.to_string();
    assert!(message.contains("999") && message.contains(&supported.to_string()), "{message}");
}

/// A file whose usage journal has no cache columns, as 0.3 left it (schema version
/// 4), is upgraded on open: its records read with no cached tokens, new ones keep theirs.
#[tokio::test]
async fn sqlite_upgrades_a_usage_journal_from_0_3() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let store = SqliteStorage::open(&path).unwrap();
    let workflow = stored(&store).await;
    let lease = store.acquire_lease(workflow.id(), "runner-a", Duration::from_secs(60)).await.unwrap().lease;
    let old = UsageRecord::new(workflow.id(), Some("$weather".into()), portia::llm::Usage::call(900, 50), 0.01);
    store.record_usage(&lease, &old).await.unwrap();
    drop(store);
    let db = raw(&path);
    as_before_set_aside(&db);
    db.execute_batch(
        "ALTER TABLE usage DROP COLUMN cache_read_tokens; ALTER TABLE usage DROP COLUMN cache_write_tokens;",
    )
    .unwrap();
    db.pragma_update(None, "user_version", 4).unwrap();
    drop(db);

    let store = SqliteStorage::open(&path).expect("a 0.3 file opens");
    let cached = portia::llm::Usage::call(1000, 20).with_cache(800, 100);
    let new = UsageRecord::new(workflow.id(), None, cached, 0.002);
    store.record_usage(&lease, &new).await.unwrap();
    assert_eq!(store.usage_records(workflow.id()).await.unwrap(), [old, new]);
}

/// A 0.4 file (schema version 5) whose row lacks the end user its body names (as
/// a tool of one's own might have written it) is upgraded on open: the row is
/// listed for that end user.
#[tokio::test]
async fn sqlite_upgrade_backfills_the_end_user_column_from_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let store = SqliteStorage::open(&path).unwrap();
    let plan = plan();
    store.save_plan(&plan).await.unwrap();
    let value = json!({ "id": WorkflowId::new(), "plan_id": plan.id, "state": "NOT_STARTED", "version": 1,
                        "execution_context": { "end_user_id": "ann" } });
    let workflow: Workflow = serde_json::from_value(value).unwrap();
    store.create_workflow(&workflow).await.unwrap();
    drop(store);
    let db = raw(&path);
    as_before_set_aside(&db);
    db.execute_batch(
        "UPDATE workflows SET end_user_id = NULL; DROP INDEX workflows_by_end_user; \
         CREATE INDEX workflows_by_end_user ON workflows (end_user_id) WHERE end_user_id IS NOT NULL;",
    )
    .unwrap();
    db.pragma_update(None, "user_version", 5).unwrap();
    drop(db);

    let store = SqliteStorage::open(&path).expect("a 0.4 file opens");
    let page = store.list_workflows(&WorkflowQuery::default().end_user(Some("ann".into()))).await.unwrap();
    assert_eq!(page.results, [workflow]);
}

/// A 0.8 file (schema version 6) with a workflow queued is upgraded on open, and
/// the workflow is claimed from it as before.
#[tokio::test]
async fn sqlite_upgrade_keeps_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let store = SqliteStorage::open(&path).unwrap();
    let queued = submit_three(&store).await;
    drop(store);
    let db = raw(&path);
    as_before_set_aside(&db);
    db.pragma_update(None, "user_version", 6).unwrap();
    drop(db);

    let store = SqliteStorage::open(&path).expect("a 0.8 file opens");
    let claimed = store.claim_runnable("worker", Duration::from_secs(60)).await.unwrap().expect("still queued");
    assert_eq!(claimed.workflow.id(), queued[0].id());
    assert_eq!(store.set_aside_workflows().await.unwrap(), Vec::new());
}

/// Undoes schema version 7 of a file just made: the set-aside column and indexes.
fn as_before_set_aside(db: &rusqlite::Connection) {
    db.execute_batch(
        "DROP INDEX workflows_set_aside; DROP INDEX workflows_runnable; \
         ALTER TABLE workflows DROP COLUMN set_aside; \
         CREATE INDEX workflows_runnable ON workflows (queued) \
         WHERE queued IS NOT NULL AND state IN ('NOT_STARTED', 'IN_PROGRESS', 'READY_TO_RESUME');",
    )
    .unwrap();
}

#[tokio::test]
async fn sqlite_reports_a_corrupt_row_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let store = SqliteStorage::open(&path).unwrap();
    let (good, bad) = (stored(&store).await, stored(&store).await);
    raw(&path).execute("UPDATE workflows SET body = '{\"id\": 42' WHERE id = ?1", [bad.id().to_string()]).unwrap();
    let err = store.get_workflow(bad.id()).await.unwrap_err();
    assert!(matches!(err, Error::Unreadable { .. }), "{err}");
    assert!(err.to_string().contains(&bad.id().to_string()), "{err}");
    assert!(std::error::Error::source(&err).is_some(), "the parse error is kept");
    let page = store.list_workflows(&WorkflowQuery::default()).await.unwrap();
    assert_eq!(page.results, [good]);
    assert_eq!(page.unreadable.len(), 1);
    assert!(page.unreadable[0].contains(&bad.id().to_string()), "{:?}", page.unreadable);
}

/// Three workflows of one plan, submitted in this order.
async fn submit_three(store: &dyn Storage) -> Vec<Workflow> {
    let plan = plan();
    store.save_plan(&plan).await.unwrap();
    let mut queued = Vec::new();
    for _ in 0..3 {
        let value = json!({ "id": WorkflowId::new(), "plan_id": plan.id, "state": "NOT_STARTED", "version": 1 });
        let workflow: Workflow = serde_json::from_value(value).unwrap();
        store.submit_workflow(&workflow).await.unwrap();
        queued.push(workflow);
    }
    queued
}

/// One queued workflow that cannot be read does not stop the queue: the claim sets
/// it aside, with the reason, and hands out the next; the row stays, listed as
/// unreadable.
#[tokio::test]
async fn sqlite_sets_aside_an_unreadable_queued_workflow_and_claims_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let store = SqliteStorage::open(&path).unwrap();
    let queued = submit_three(&store).await;
    raw(&path).execute("UPDATE workflows SET body = '{}' WHERE id = ?1", [queued[0].id().to_string()]).unwrap();
    let ttl = Duration::from_secs(60);
    let first = store.claim_runnable("worker", ttl).await.unwrap().expect("a readable workflow");
    assert_eq!(first.workflow.id(), queued[1].id());
    let second = store.claim_runnable("worker", ttl).await.unwrap().expect("the next one");
    assert_eq!(second.workflow.id(), queued[2].id());
    assert!(store.claim_runnable("worker", ttl).await.unwrap().is_none());
    let page = store.list_workflows(&WorkflowQuery::default()).await.unwrap();
    assert!(page.unreadable.iter().any(|row| row.contains(&queued[0].id().to_string())), "{:?}", page.unreadable);
    crate::common::assert_set_aside_as_unreadable(&store, &queued[0]).await;
}

/// A queued row whose state column says it is runnable while its body says it is
/// finished or waiting for a human (edited by hand) is put right from its body by
/// the claim, which hands out the next instead of failing on it every time.
#[tokio::test]
async fn sqlite_puts_right_a_queued_row_whose_state_disagrees_with_its_body() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let store = SqliteStorage::open(&path).unwrap();
    let queued = submit_three(&store).await;
    let edit = "UPDATE workflows SET body = json_set(body, '$.state', ?2) WHERE id = ?1";
    raw(&path).execute(edit, [queued[0].id().to_string(), "COMPLETE".into()]).unwrap();
    raw(&path).execute(edit, [queued[1].id().to_string(), "NEED_CLARIFICATION".into()]).unwrap();
    let ttl = Duration::from_secs(60);
    let claimed = store.claim_runnable("worker", ttl).await.unwrap().expect("the runnable one");
    assert_eq!(claimed.workflow.id(), queued[2].id());
    let column = |id: WorkflowId| -> String {
        raw(&path).query_row("SELECT state FROM workflows WHERE id = ?1", [id.to_string()], |r| r.get(0)).unwrap()
    };
    assert_eq!((column(queued[0].id()), column(queued[1].id())), ("COMPLETE".into(), "NEED_CLARIFICATION".into()));
    assert!(store.claim_runnable("worker", ttl).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_handles_opening_a_new_file_at_once_take_turns_creating_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let opening: Vec<_> = (0..3)
        .map(|_| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || SqliteStorage::open(path))
        })
        .collect();
    let mut handles = Vec::new();
    for open in opening {
        handles.push(open.await.unwrap().expect("every handle opens"));
    }
    let workflow = stored(&handles[0]).await;
    assert_eq!(handles[2].get_workflow(workflow.id()).await.unwrap(), workflow, "one schema, shared");
}
