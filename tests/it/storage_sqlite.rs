//! What only the SQLite store does: it notices when its file is deleted or replaced
//! under it, and refuses to go on writing where no other process would see it; and
//! it commits concurrent transactions together, each undone alone when it fails.

use portia::storage::{PlanStore as _, Retention as _, SqliteStorage};
use portia::{Error, PlanBuilder};

fn plan() -> portia::Plan {
    PlanBuilder::new("q").step("Say hello", None, "$hello").build()
}

#[tokio::test]
async fn a_deleted_database_file_is_refused_rather_than_written_unseen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let storage = SqliteStorage::open(&path).unwrap();
    storage.save_plan(&plan()).await.unwrap();

    std::fs::remove_file(&path).unwrap();
    let err = storage.save_plan(&plan()).await.unwrap_err();
    assert!(matches!(&err, Error::StoreFileChanged { path: p, what } if *p == path && what == "deleted"), "{err:?}");
    assert!(err.to_string().contains("deleted while this process had it open"), "{err}");
}

/// A worker whose database file is deleted cannot do anything useful any more: it
/// stops of its own accord, saying why, so that its supervisor restarts it on the
/// file now at the path (before, it backed off and claimed again forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_database_file_is_deleted_stops_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let storage = std::sync::Arc::new(SqliteStorage::open(&path).unwrap());
    let config = portia::Config::builder().summarize_final_output(false).build().unwrap();
    let runner = portia::Runner::builder(config)
        .llm(std::sync::Arc::new(portia::testing::ScriptedLlm::new()))
        .storage(storage)
        .build()
        .unwrap();
    std::fs::remove_file(&path).unwrap();

    let report = runner.worker(portia::runner::WorkerOptions::new()).run_until(std::future::pending()).await;
    let reason = report.stopped_on.expect("the worker says why it stopped");
    assert!(reason.contains("deleted while this process had it open") && reason.contains("restart"), "{reason}");
}

#[tokio::test]
async fn a_replaced_database_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let storage = SqliteStorage::open(&path).unwrap();
    let other = dir.path().join("other.db");
    let kept = plan();
    SqliteStorage::open(&other).unwrap().save_plan(&kept).await.unwrap();

    std::fs::rename(&other, &path).unwrap();
    let err = storage.get_plan(kept.id).await.unwrap_err();
    assert!(err.to_string().contains("replaced by another file"), "{err}");
    let err = storage.save_plan(&plan()).await.unwrap_err();
    assert!(err.to_string().contains("replaced by another file"), "writes are refused too: {err}");
}

/// The database's size in bytes as SQLite counts it (its pages, the WAL's included).
fn database_bytes(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    let pages: i64 = conn.pragma_query_value(None, "page_count", |row| row.get(0)).unwrap();
    let size: i64 = conn.pragma_query_value(None, "page_size", |row| row.get(0)).unwrap();
    pages * size
}

#[tokio::test]
async fn pruning_gives_the_space_of_the_deleted_workflows_back() {
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let storage = Arc::new(SqliteStorage::open(&path).unwrap());
    let runs = 60;
    let answer = "An answer long enough to take pages of its own. ".repeat(400);
    let llm = (0..runs).fold(portia::testing::ScriptedLlm::new(), |llm, _| llm.text(&answer));
    let config = portia::Config::builder().summarize_final_output(false).build().unwrap();
    let runner = portia::Runner::builder(config).storage(storage.clone()).llm(Arc::new(llm)).build().unwrap();
    for _ in 0..runs {
        assert_eq!(runner.run_plan(&plan()).await.unwrap().state(), portia::WorkflowState::Complete);
    }
    let full = database_bytes(&path);

    let pruned = storage.prune_finished(chrono::Utc::now() + chrono::Duration::days(1)).await.unwrap();
    assert_eq!(pruned, runs);
    let after = database_bytes(&path);
    assert!(after * 5 < full, "{after} bytes left of {full}");
}

/// Many writers at once share commits (group commit), yet each transaction stands
/// alone: one that fails after writing leaves nothing, and the others' writes stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_commit_together_and_fail_alone() {
    use portia::storage::{Access, RowError, RowStore};
    let dir = tempfile::tempdir().unwrap();
    let storage = std::sync::Arc::new(SqliteStorage::open(dir.path().join("portia.db")).unwrap());
    let plans: Vec<portia::Plan> = (0..64).map(|_| plan()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, kept) in plans.iter().cloned().enumerate() {
        let storage = std::sync::Arc::clone(&storage);
        tasks.spawn(async move {
            let work = Box::new(move |tx: &mut dyn portia::storage::RowTx| {
                tx.insert_plan(kept)?;
                if i % 2 == 1 { Err(RowError::value("refused after writing")) } else { Ok(i) }
            });
            (i, storage.transaction(Access::Write, work).await)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (i, outcome) = joined.unwrap();
        assert_eq!(outcome.is_ok(), i % 2 == 0, "transaction {i}: its own outcome");
    }
    for (i, plan) in plans.iter().enumerate() {
        let stored = storage.get_plan(plan.id).await;
        assert_eq!(stored.is_ok(), i % 2 == 0, "plan {i} is stored exactly when its transaction succeeded");
    }
}
