//! Moving a directory of the retired JSON-file store into a store of today.

use portia::storage::{InMemoryStorage, PlanStore, WorkflowStore, import_json_dir};
use portia::{Plan, Workflow};

const SEED_PLAN: &str = include_str!("../fixtures/seed_plan.json");
const SEED_WORKFLOW: &str = include_str!("../fixtures/seed_workflow.json");

#[tokio::test]
async fn a_json_file_directory_imports_once_and_reports_what_it_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let plan: Plan = serde_json::from_str(SEED_PLAN).unwrap();
    let workflow: Workflow = serde_json::from_str(SEED_WORKFLOW).unwrap();
    // The layout the file store wrote: one pretty JSON file per object.
    std::fs::write(dir.path().join(format!("{}.json", plan.id)), SEED_PLAN).unwrap();
    std::fs::write(dir.path().join(format!("{}.json", workflow.id())), SEED_WORKFLOW).unwrap();
    std::fs::write(dir.path().join("wkfl-broken.json"), "{ not json").unwrap();
    std::fs::write(dir.path().join("tool-calls.jsonl"), "{}\n").unwrap();

    let storage = InMemoryStorage::new();
    let report = import_json_dir(dir.path(), &storage).await.unwrap();
    assert_eq!((report.plans, report.workflows), (1, 1));
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert!(report.skipped[0].contains("wkfl-broken.json"), "{:?}", report.skipped);

    assert_eq!(storage.get_plan(plan.id).await.unwrap(), plan);
    let stored = storage.get_workflow(workflow.id()).await.unwrap();
    assert_eq!(stored.version(), 1, "a file-store workflow, which had no version, starts at 1");
    assert_eq!(stored.outputs(), workflow.outputs());
    assert_eq!(stored.state(), workflow.state());

    let again = import_json_dir(dir.path(), &storage).await.unwrap();
    assert_eq!((again.plans, again.workflows), (1, 0), "importing twice changes nothing");
    assert!(again.skipped.iter().any(|s| s.contains("already stored")), "{:?}", again.skipped);
}

#[tokio::test]
async fn a_missing_directory_is_an_error_that_names_it() {
    let err = import_json_dir("/no/such/portia/dir", &InMemoryStorage::new()).await.unwrap_err();
    assert!(err.to_string().contains("/no/such/portia/dir"), "{err}");
}
