//! Postgres only: connecting, settings, migrations, damaged rows and racing processes.
//! The conformance suite (`storage_conformance.rs`) covers the protocol itself.
//!
//! Tests that need a server read `PORTIA_TEST_PG_URL` (see `tests/it/pg.rs`) and are
//! `#[ignore]`d; the ones about settings and unreachable servers need none.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use portia::llm::Usage;
use portia::storage::{
    Access, LeaseQueue, PlanStore, PostgresSettings, PostgresStorage, RowError, RowStore, UsageRecord, Work,
    WorkflowQuery, WorkflowStore,
};
use portia::{Config, Error, Plan, PlanBuilder, Workflow, WorkflowId, WorkflowState};
use serde_json::json;
use tokio_postgres::error::SqlState;

use crate::pg;

const TTL: Duration = Duration::from_secs(30);

fn plan() -> Plan {
    PlanBuilder::new("Which city is warmer?").step("Find the weather", Some("weather_tool"), "$weather").build()
}

fn workflow_of(plan: &Plan) -> Workflow {
    let value =
        json!({ "id": WorkflowId::new(), "plan_id": plan.id, "state": WorkflowState::NotStarted, "version": 1 });
    serde_json::from_value(value).expect("a workflow")
}

/// A free port on loopback, where nothing listens.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn settings(schema: &pg::Schema) -> PostgresSettings {
    PostgresSettings::new(schema.url.clone()).schema(schema.name.clone()).pool_size(4)
}

fn assert_names_the_url_setting(err: &Error) {
    assert!(matches!(err, Error::InvalidConfig { setting, .. } if setting == "PORTIA_DATABASE_URL"), "{err}");
}

#[tokio::test]
async fn a_bad_url_is_a_config_error_naming_the_setting() {
    for url in ["not a url at all", "postgres://u:hunter2@h/db?sslmode=sometimes", "postgres://u:hunter2@h:port/db"] {
        let err = PostgresStorage::connect(&PostgresSettings::new(url)).await.unwrap_err();
        assert_names_the_url_setting(&err);
        assert!(!err.to_string().contains("hunter2"), "the password stays out of errors: {err}");
    }
    let err = PostgresStorage::new(&PostgresSettings::new("postgres://h/db").schema("Robert'); DROP")).unwrap_err();
    assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == "PORTIA_DATABASE_SCHEMA"), "{err}");
    let err = PostgresStorage::new(&PostgresSettings::new("postgres://h/db").pool_size(0)).unwrap_err();
    assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == "PORTIA_DATABASE_POOL_SIZE"), "{err}");
}

#[test]
fn config_reads_the_postgres_settings_and_keeps_the_url_secret() {
    let vars = |name: &str| match name {
        "PORTIA_STORAGE" => Some("postgres".to_owned()),
        "PORTIA_DATABASE_URL" => Some("postgres://app:hunter2@db:5432/app".to_owned()),
        "PORTIA_DATABASE_SCHEMA" => Some("tenant_a".to_owned()),
        "PORTIA_DATABASE_POOL_SIZE" => Some("5".to_owned()),
        _ => None,
    };
    let config = Config::from_vars(vars).unwrap();
    let settings = PostgresSettings::from_config(&config).unwrap();
    assert_eq!((settings.schema.as_str(), settings.pool_size), ("tenant_a", 5));
    assert_eq!(settings.url.expose(), "postgres://app:hunter2@db:5432/app");
    for shown in [format!("{config:?}"), format!("{settings:?}"), config.to_json(), config.to_toml()] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    let store = PostgresStorage::new(&settings).unwrap();
    assert!(!format!("{store:?}").contains("hunter2"), "{store:?}");

    let err = Config::from_vars(|name| (name == "PORTIA_STORAGE").then(|| "postgres".to_owned())).unwrap_err();
    assert_names_the_url_setting(&err);
}

#[tokio::test]
async fn a_refused_connection_says_what_to_check_and_hides_the_password() {
    let url = format!("postgres://portia:hunter2@127.0.0.1:{}/portia?connect_timeout=5", closed_port());
    let err = PostgresStorage::connect(&PostgresSettings::new(url.clone())).await.unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("PORTIA_DATABASE_URL") && message.contains("127.0.0.1"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    // Built without connecting, the store reports the same on first use, and no panic.
    let lazy = PostgresStorage::new(&PostgresSettings::new(url)).expect("nothing is checked before use");
    let err = lazy.get_workflow(WorkflowId::new()).await.unwrap_err();
    assert!(err.to_string().contains("PORTIA_DATABASE_URL"), "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_the_login_is_reported_after_the_connect_timeout() {
    // Something listens and takes the connection, but never says a word: before,
    // only the TCP connect was bounded, and the store waited for the login forever.
    let (port, held) = crate::common::silent_port().await;
    let url = format!("postgres://portia:hunter2@127.0.0.1:{port}/portia?connect_timeout=1&sslmode=disable");
    let err = PostgresStorage::connect(&PostgresSettings::new(url)).await.unwrap_err();
    held.abort();
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("did not answer the login within 1 s"), "says what happened: {message}");
    assert!(message.contains("PORTIA_DATABASE_URL") && message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn a_missing_database_is_named() {
    let url = pg::test_url();
    let mut config: tokio_postgres::Config = url.parse().expect("the test URL parses");
    config.dbname("portia_no_such_database");
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the test database is reached over TCP, not {other:?}"),
    };
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let missing = format!("postgres://{user}@{host}:{}/portia_no_such_database?sslmode=disable", config.get_ports()[0]);
    let err = PostgresStorage::connect(&PostgresSettings::new(missing)).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("no such database") && message.contains("PORTIA_DATABASE_URL"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn processes_starting_at_once_take_turns_migrating() {
    let url = pg::test_url();
    let schema = pg::Schema::fresh(&url);
    let starting: Vec<_> = (0..6)
        .map(|_| {
            let settings = settings(&schema);
            tokio::spawn(async move { PostgresStorage::connect(&settings).await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starting {
        stores.push(start.await.unwrap().expect("every process starts"));
    }
    let client = pg::connect(&url).await;
    let sql = format!("SELECT version FROM \"{}\".schema_migrations ORDER BY version", schema.name);
    let versions: Vec<i32> = client.query(&sql, &[]).await.unwrap().iter().map(|row| row.get(0)).collect();
    let once_each: Vec<i32> = (1..=versions.len() as i32).collect();
    assert!(versions.len() >= 2 && versions == once_each, "each migration applied once: {versions:?}");
    let workflow = workflow_of(&plan());
    stores[0].create_workflow(&workflow).await.unwrap();
    assert_eq!(stores[5].get_workflow(workflow.id()).await.unwrap(), workflow);
    schema.remove().await;
}

#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn a_newer_schema_is_refused() {
    let url = pg::test_url();
    let schema = pg::Schema::fresh(&url);
    PostgresStorage::connect(&settings(&schema)).await.expect("a new schema is created");
    PostgresStorage::connect(&settings(&schema)).await.expect("an up-to-date schema opens again");
    schema.execute("INSERT INTO {S}.schema_migrations (version) VALUES (999)").await;
    let err = PostgresStorage::connect(&settings(&schema)).await.unwrap_err();
    assert!(matches!(&err, Error::SchemaTooNew { found: 999, supported, .. } if *supported < 999), "{err}");
    assert!(err.to_string().contains("999"), "{err}");
    schema.remove().await;
}

/// A schema at version 3 whose row lacks the end user its body names (as a tool of
/// one's own might have written it) is upgraded on connect: the row is listed for
/// that end user.
#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn the_upgrade_fills_the_end_user_column_from_the_body() {
    let url = pg::test_url();
    let schema = pg::Schema::fresh(&url);
    let store = PostgresStorage::connect(&settings(&schema)).await.unwrap();
    let plan = plan();
    store.save_plan(&plan).await.unwrap();
    let value = json!({ "id": WorkflowId::new(), "plan_id": plan.id, "state": "NOT_STARTED", "version": 1,
                        "execution_context": { "end_user_id": "ann" } });
    let workflow: Workflow = serde_json::from_value(value).unwrap();
    store.create_workflow(&workflow).await.unwrap();
    drop(store);
    schema
        .execute(
            "UPDATE {S}.workflows SET end_user_id = NULL; DELETE FROM {S}.schema_migrations WHERE version >= 4; \
             DROP INDEX {S}.workflows_set_aside; DROP INDEX {S}.workflows_runnable; \
             ALTER TABLE {S}.workflows DROP COLUMN set_aside; \
             CREATE INDEX workflows_runnable ON {S}.workflows (queued) \
             WHERE queued IS NOT NULL AND state IN ('NOT_STARTED', 'IN_PROGRESS', 'READY_TO_RESUME'); \
             DROP INDEX {S}.workflows_by_end_user; \
             CREATE INDEX workflows_by_end_user ON {S}.workflows (end_user_id) WHERE end_user_id IS NOT NULL",
        )
        .await;

    let store = PostgresStorage::connect(&settings(&schema)).await.expect("a version 3 schema opens");
    let page = store.list_workflows(&WorkflowQuery::default().end_user(Some("ann".into()))).await.unwrap();
    assert_eq!(page.results, [workflow]);
    schema.remove().await;
}

#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn a_corrupt_row_is_reported_by_id() {
    let url = pg::test_url();
    let schema = pg::Schema::fresh(&url);
    let store = PostgresStorage::connect(&settings(&schema)).await.unwrap();
    let plan = plan();
    let (good, bad) = (workflow_of(&plan), workflow_of(&plan));
    store.create_workflow(&good).await.unwrap();
    store.create_workflow(&bad).await.unwrap();
    schema.execute(&format!("UPDATE {{S}}.workflows SET body = '{{\"id\": 42' WHERE id = '{}'", bad.id())).await;
    let err = store.get_workflow(bad.id()).await.unwrap_err();
    assert!(matches!(err, Error::Unreadable { .. }), "{err}");
    assert!(err.to_string().contains(&bad.id().to_string()), "{err}");
    assert!(std::error::Error::source(&err).is_some(), "the parse error is kept");
    let page = store.list_workflows(&WorkflowQuery::default()).await.unwrap();
    assert_eq!(page.results, [good]);
    assert_eq!(page.unreadable.len(), 1);
    assert!(page.unreadable[0].contains(&bad.id().to_string()), "{:?}", page.unreadable);
    schema.remove().await;
}

/// A usage record of a workflow that is not stored: its row breaks a foreign key.
fn orphan_usage() -> UsageRecord {
    UsageRecord::new(WorkflowId::new(), None, Usage::call(1, 1), 0.0)
}

/// The Postgres error code of a failed transaction.
fn sql_state(error: &RowError) -> Option<SqlState> {
    match error {
        RowError::Store(source) => source.downcast_ref::<tokio_postgres::Error>()?.code().cloned(),
        _ => None,
    }
}

/// Writes whose answers are read later, with the next statement's (pipelined),
/// still fail their transaction: the error reported is the failing write's, not the
/// "transaction is aborted" of the statements after it; nothing of the transaction
/// is kept; and its connection, the pool's only one, is rolled back for the next.
#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn a_failed_pipelined_write_is_the_error_reported_and_nothing_of_it_is_kept() {
    let url = pg::test_url();
    let schema = pg::Schema::fresh(&url);
    let store = PostgresStorage::connect(&settings(&schema).pool_size(1)).await.unwrap();
    let unkept = plan();
    let (unkept_copy, orphan) = (unkept.clone(), orphan_usage());
    let work: Work<()> = Box::new(move |tx| {
        tx.insert_plan(unkept_copy)?;
        tx.insert_usage(orphan.clone())?;
        tx.last_event(orphan.workflow_id).map(drop)
    });
    let err = store.transaction(Access::Write, work).await.unwrap_err();
    assert_eq!(sql_state(&err), Some(SqlState::FOREIGN_KEY_VIOLATION), "{err:?}");
    let missing = store.get_plan(unkept.id).await.unwrap_err();
    assert!(matches!(missing, Error::PlanNotFound(_)), "{missing}");

    // A write sent without waiting is in place for the statements after it.
    let saved = plan();
    store.save_plan(&saved).await.unwrap();
    let stored = workflow_of(&saved);
    store.create_workflow(&stored).await.unwrap();
    let mut value = serde_json::to_value(&stored).unwrap();
    value["version"] = json!(2);
    let written: Workflow = serde_json::from_value(value).unwrap();
    let read = store.transaction(
        Access::Write,
        Box::new(move |tx| {
            let now = tx.now()?;
            tx.replace_workflow(written.clone(), now)?;
            tx.workflow(written.id())
        }),
    );
    let read = read.await.unwrap().expect("the workflow is stored");
    assert_eq!(read.version(), 2, "the workflow written is read back in its transaction");

    // Failing where no statement after it reads an answer: found at the commit.
    let orphan = orphan_usage();
    let err = store.transaction(Access::Write, Box::new(move |tx| tx.insert_usage(orphan))).await.unwrap_err();
    assert_eq!(sql_state(&err), Some(SqlState::FOREIGN_KEY_VIOLATION), "{err:?}");
    store.save_plan(&unkept).await.unwrap();
    assert_eq!(store.get_plan(unkept.id).await.unwrap(), unkept);
    schema.remove().await;
}

/// A fresh schema and its store, with three workflows of one plan submitted in
/// this order.
async fn three_queued() -> (pg::Schema, PostgresStorage, Vec<Workflow>) {
    let schema = pg::Schema::fresh(&pg::test_url());
    let store = PostgresStorage::connect(&settings(&schema)).await.unwrap();
    let plan = plan();
    store.save_plan(&plan).await.unwrap();
    let queued: Vec<Workflow> = (0..3).map(|_| workflow_of(&plan)).collect();
    for workflow in &queued {
        store.submit_workflow(workflow).await.unwrap();
    }
    (schema, store, queued)
}

/// One queued workflow that cannot be read does not stop the queue: the claim sets
/// it aside, with the reason, and hands out the next; the row stays, listed as
/// unreadable.
#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn an_unreadable_queued_workflow_is_set_aside_and_the_next_is_claimed() {
    let (schema, store, queued) = three_queued().await;
    schema.execute(&format!("UPDATE {{S}}.workflows SET body = '{{}}' WHERE id = '{}'", queued[0].id())).await;
    let ttl = Duration::from_secs(60);
    let first = store.claim_runnable("worker", ttl).await.unwrap().expect("a readable workflow");
    assert_eq!(first.workflow.id(), queued[1].id());
    let second = store.claim_runnable("worker", ttl).await.unwrap().expect("the next one");
    assert_eq!(second.workflow.id(), queued[2].id());
    assert!(store.claim_runnable("worker", ttl).await.unwrap().is_none());
    let page = store.list_workflows(&WorkflowQuery::default()).await.unwrap();
    assert!(page.unreadable.iter().any(|row| row.contains(&queued[0].id().to_string())), "{:?}", page.unreadable);
    crate::common::assert_set_aside_as_unreadable(&store, &queued[0]).await;
    schema.remove().await;
}

/// A queued row whose state column says it is runnable while its body says it is
/// finished or waiting for a human (edited by hand) is put right from its body by
/// the claim, which hands out the next instead of failing on it every time.
#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn a_queued_row_whose_state_disagrees_with_its_body_is_put_right_by_the_claim() {
    let (schema, store, queued) = three_queued().await;
    for (workflow, state) in queued.iter().zip(["COMPLETE", "NEED_CLARIFICATION"]) {
        let edit = format!(
            "UPDATE {{S}}.workflows SET body = jsonb_set(body::jsonb, '{{state}}', '\"{state}\"')::text WHERE id = '{}'",
            workflow.id()
        );
        schema.execute(&edit).await;
    }
    let ttl = Duration::from_secs(60);
    let claimed = store.claim_runnable("worker", ttl).await.unwrap().expect("the runnable one");
    assert_eq!(claimed.workflow.id(), queued[2].id());
    // The listing filters on the state column, which now agrees with the body.
    for (workflow, state) in queued.iter().zip([WorkflowState::Complete, WorkflowState::NeedClarification]) {
        let listed = store.list_workflows(&WorkflowQuery::in_state(state)).await.unwrap();
        assert_eq!(listed.results.iter().map(Workflow::id).collect::<Vec<_>>(), [workflow.id()]);
    }
    assert!(store.claim_runnable("worker", ttl).await.unwrap().is_none());
    schema.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn racing_claimers_from_several_pools_claim_each_workflow_once() {
    let url = pg::test_url();
    let schema = pg::Schema::fresh(&url);
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(Arc::new(PostgresStorage::connect(&settings(&schema)).await.unwrap()));
    }
    let plan = plan();
    stores[0].save_plan(&plan).await.unwrap();
    let mut submitted = HashSet::new();
    for _ in 0..30 {
        let workflow = workflow_of(&plan);
        stores[0].submit_workflow(&workflow).await.unwrap();
        submitted.insert(workflow.id());
    }
    // Four claimers per pool, each claiming until nothing is left.
    let claimers: Vec<_> = (0..12)
        .map(|i| {
            let store = Arc::clone(&stores[i % stores.len()]);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(grant) = store.claim_runnable(&format!("worker-{i}"), TTL).await.expect("a claim") {
                    assert!(!grant.reclaimed);
                    mine.push(grant.workflow.id());
                }
                mine
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(claimer.await.unwrap());
    }
    let distinct: HashSet<_> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), distinct.len(), "no workflow was claimed twice");
    assert_eq!(distinct, submitted, "every workflow was claimed");
    schema.remove().await;
}

#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn a_submission_from_another_process_wakes_a_waiting_worker() {
    let url = pg::test_url();
    let schema = pg::Schema::fresh(&url);
    let worker = Arc::new(PostgresStorage::connect(&settings(&schema)).await.unwrap());
    let submitter = PostgresStorage::connect(&settings(&schema)).await.unwrap();
    // Another schema's submissions are not this worker's business.
    let elsewhere = pg::Schema::fresh(&url);
    let neighbour = PostgresStorage::connect(&settings(&elsewhere)).await.unwrap();
    let plan = plan();
    neighbour.save_plan(&plan).await.unwrap();
    submitter.save_plan(&plan).await.unwrap();

    // An hour: the wait ends only if the submission's NOTIFY reaches the worker.
    let hour = Duration::from_secs(3600);
    let waiting = tokio::spawn({
        let worker = Arc::clone(&worker);
        async move { worker.wait_for_runnable(hour).await }
    });
    // A head start, without the clock: a round trip on the worker's pool and a yield.
    worker.get_plan(plan.id).await.unwrap();
    tokio::task::yield_now().await;
    neighbour.submit_workflow(&workflow_of(&plan)).await.unwrap();
    submitter.submit_workflow(&workflow_of(&plan)).await.unwrap();
    waiting.await.unwrap();
    assert!(worker.claim_runnable("w1", TTL).await.unwrap().is_some());
    assert!(worker.claim_runnable("w1", TTL).await.unwrap().is_none(), "another schema's workflow is not claimed");
    schema.remove().await;
    elsewhere.remove().await;
}

/// Processes of different builds must agree on it: the channel `portia_events`, the
/// payload the schema and the workflow id.
#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn a_save_with_events_notifies_every_process_naming_the_schema_and_workflow() {
    use tokio_postgres::AsyncMessage;

    let url = pg::test_url();
    let schema = pg::Schema::fresh(&url);
    let store = PostgresStorage::connect(&settings(&schema)).await.unwrap();
    let (client, mut connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    let (heard, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(note) = message {
                let _ = heard.send((note.channel().to_owned(), note.payload().to_owned()));
            }
        }
    });
    client.batch_execute("LISTEN portia_events").await.unwrap();

    let plan = plan();
    store.save_plan(&plan).await.unwrap();
    let workflow = workflow_of(&plan);
    store.create_workflow(&workflow).await.unwrap();
    let lease = store.acquire_lease(workflow.id(), "w1", TTL).await.unwrap().lease;
    let (next, event) = next_with_an_event(&workflow);
    store.update_workflow(&next, &lease, &[event]).await.unwrap();
    let (channel, payload) = notes.recv().await.expect("a notification");
    assert_eq!((channel.as_str(), payload), ("portia_events", format!("{} {}", schema.name, workflow.id())));
    schema.remove().await;
}

/// The waiter's LISTEN connection is killed before the save, so the notification is
/// sent while it reconnects (or to a dying connection); the waiter waits an hour, so
/// the test ends only if the reconnection makes it look again.
#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn an_event_waiter_hears_a_save_made_while_its_listener_reconnects() {
    let url = pg::test_url();
    let schema = pg::Schema::fresh(&url);
    let app = format!("portia_{}", uuid::Uuid::new_v4().simple());
    let waiting_settings =
        PostgresSettings::new(format!("{url}&application_name={app}")).schema(schema.name.clone()).pool_size(2);
    let waiting = Arc::new(PostgresStorage::connect(&waiting_settings).await.unwrap());
    let saving = PostgresStorage::connect(&settings(&schema)).await.unwrap();
    let plan = plan();
    saving.save_plan(&plan).await.unwrap();
    let workflow = workflow_of(&plan);
    saving.create_workflow(&workflow).await.unwrap();
    let id = workflow.id();
    let waiter = tokio::spawn({
        let waiting = Arc::clone(&waiting);
        async move { waiting.wait_for_events(id, 0, Duration::from_secs(3600)).await }
    });

    let admin = pg::connect(&url).await;
    let kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                WHERE application_name = $1 AND query LIKE 'LISTEN %'";
    assert_eq!(admin.query(kill, &[&app]).await.unwrap().len(), 1, "the waiting store's listener was killed");
    let lease = saving.acquire_lease(id, "w1", TTL).await.unwrap().lease;
    let (next, event) = next_with_an_event(&workflow);
    saving.update_workflow(&next, &lease, &[event]).await.unwrap();
    assert!(waiter.await.unwrap().unwrap(), "the waiter reports the event");
    schema.remove().await;
}

/// `workflow`'s next version, and the event of its change to IN_PROGRESS.
fn next_with_an_event(workflow: &Workflow) -> (Workflow, portia::runner::WorkflowEvent) {
    use portia::runner::{EventKind, WorkflowEvent};
    let mut next = serde_json::to_value(workflow).unwrap();
    next["version"] = (workflow.version() + 1).into();
    next["state"] = json!(WorkflowState::InProgress);
    let kind = EventKind::StateChanged { from: workflow.state(), to: WorkflowState::InProgress };
    let event = WorkflowEvent::new(workflow.id(), kind);
    (serde_json::from_value(next).unwrap(), event)
}

#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn leases_run_on_the_database_clock() {
    let url = pg::test_url();
    let schema = pg::Schema::fresh(&url);
    let store = PostgresStorage::connect(&settings(&schema)).await.unwrap();
    let workflow = workflow_of(&plan());
    store.create_workflow(&workflow).await.unwrap();
    let client = pg::connect(&url).await;
    let before: chrono::DateTime<chrono::Utc> = client.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let ttl = Duration::from_millis(500);
    let first = store.acquire_lease(workflow.id(), "runner-a", ttl).await.unwrap().lease;
    let lead = first.expires_at - before;
    assert!(lead >= chrono::Duration::milliseconds(500) && lead < chrono::Duration::seconds(10), "{lead}");
    let busy = store.acquire_lease(workflow.id(), "runner-b", ttl).await.unwrap_err();
    assert!(matches!(busy, Error::AlreadyRunning { .. }), "{busy}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let taken = store.acquire_lease(workflow.id(), "runner-b", ttl).await.expect("expired on the database's clock");
    assert!(taken.reclaimed);
    schema.remove().await;
}

/// On the database's clock, a lease's time is read once its row is locked: a grant
/// that waited for another transaction's lock on the row runs from when it got it.
#[tokio::test]
#[ignore = "needs Postgres: .ci/run starts it (PORTIA_TEST_PG_URL)"]
async fn a_grant_that_waited_for_the_row_lock_runs_from_when_it_got_it() {
    let url = pg::test_url();
    let schema = pg::Schema::fresh(&url);
    let store = PostgresStorage::connect(&settings(&schema)).await.unwrap();
    let workflow = workflow_of(&plan());
    store.create_workflow(&workflow).await.unwrap();
    let mut holder = pg::connect(&url).await;
    let lock = format!("SELECT 1 FROM \"{}\".workflows WHERE id = $1 FOR UPDATE", schema.name);
    let held = holder.transaction().await.unwrap();
    held.execute(&lock, &[&workflow.id().to_string()]).await.unwrap();

    let ttl = Duration::from_secs(30);
    let grant = tokio::spawn({
        let (store, id) = (store.clone(), workflow.id());
        async move { store.acquire_lease(id, "runner-a", ttl).await }
    });
    let watcher = pg::connect(&url).await;
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()";
    while watcher.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        tokio::task::yield_now().await;
    }
    let unlocked_at: chrono::DateTime<chrono::Utc> =
        held.query_one("SELECT clock_timestamp()", &[]).await.unwrap().get(0);
    held.commit().await.unwrap();

    let lease = grant.await.unwrap().unwrap().lease;
    let from = lease.expires_at - chrono::Duration::from_std(ttl).unwrap();
    assert!(from >= unlocked_at, "the lease runs from {from}, before the lock was given up at {unlocked_at}");
    schema.remove().await;
}

/// The test server's user and port, and the certificate `.ci/postgres.sh` made for
/// `localhost`; a server without TLS fails the test, saying how to get one.
fn tls_server() -> (String, u16, String) {
    let url = pg::test_url();
    let Some(ca) = std::env::var("PORTIA_TEST_PG_CA").ok().filter(|ca| !ca.is_empty()) else {
        panic!(
            "needs Postgres with TLS: PORTIA_TEST_PG_CA is not set; .ci/postgres.sh starts the server with TLS and sets it"
        )
    };
    let config: tokio_postgres::Config = url.parse().expect("the test URL parses");
    let user = config.get_user().unwrap_or("postgres").to_owned();
    (user, config.get_ports()[0], ca)
}

/// Whether every connection named `application` is encrypted (and there is one).
async fn all_encrypted(application: &str) -> bool {
    let client = pg::connect(&pg::test_url()).await;
    let sql = "SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_ssl s \
               JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1";
    let row = client.query_one(sql, &[&application]).await.unwrap();
    row.get::<_, i64>(0) > 0 && row.get::<_, bool>(1)
}

#[tokio::test]
#[ignore = "needs Postgres with TLS: .ci/run starts it (PORTIA_TEST_PG_URL, PORTIA_TEST_PG_CA)"]
async fn sslmode_require_encrypts_and_verify_full_checks_the_certificate() {
    let (user, port, ca) = tls_server();
    let schema = pg::Schema::fresh(&pg::test_url());
    let app = format!("tls_{}", &schema.name[5..17]);
    let url =
        |host: &str, params: &str| format!("postgres://{user}@{host}:{port}/postgres?application_name={app}&{params}");
    let open = |url: String| {
        let settings = PostgresSettings::new(url).schema(schema.name.clone());
        async move { PostgresStorage::connect(&settings).await }
    };

    let store = open(url("127.0.0.1", "sslmode=require")).await.expect("require takes a self-signed certificate");
    store.list_workflows(&WorkflowQuery::default()).await.unwrap();
    assert!(all_encrypted(&app).await, "sslmode=require encrypts");
    drop(store);

    let checked = open(url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}"))).await;
    checked.expect("verify-full takes the server's certificate when sslrootcert vouches for it");

    let unknown = open(url("localhost", "sslmode=verify-full")).await.unwrap_err();
    assert!(matches!(unknown, Error::Storage { .. }), "{unknown}");
    assert!(
        unknown.to_string().contains("sslrootcert"),
        "an unknown authority is refused, saying what to check: {unknown}"
    );
    let wrong_name = open(url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}"))).await.unwrap_err();
    assert!(wrong_name.to_string().contains("TLS"), "the certificate names localhost only: {wrong_name}");
    open(url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"))).await.expect("verify-ca skips the name");
    schema.remove().await;
}
