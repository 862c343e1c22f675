//! What only the SQLite store does: it notices when its file is deleted or replaced
//! under it, and refuses to go on writing where no other process would see it.

use portia::storage::{SqliteStorage, Storage as _};
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
