//! What only the SQLite store does: it notices when its file is deleted or replaced
//! under it, and refuses to go on writing where no other process would see it.

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
    assert!(matches!(&err, Error::Storage { path: Some(p), .. } if *p == path), "{err:?}");
    assert!(err.to_string().contains("deleted while this process had it open"), "{err}");
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
