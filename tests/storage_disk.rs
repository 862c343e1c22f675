//! Disk storage: file layout, atomic writes, corrupt files, listing.

use portia::storage::{DiskStorage, Storage, ToolCallRecord, ToolCallStatus, WorkflowQuery};
use portia::{Error, ExecutionContext, Output, PlanBuilder, Workflow, WorkflowState};
use serde_json::json;

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn plans_and_workflows_are_one_pretty_json_file_each() {
    let dir = tempfile::tempdir().unwrap();
    let storage = DiskStorage::new(dir.path().join("store"));
    let plan = PlanBuilder::new("q").step("a", None, "$a").build();
    let mut workflow = Workflow::new(plan.id, ExecutionContext::default());
    workflow.record_step_output(&plan, 0, Output::new(json!({"typed": 1})));
    storage.save_plan(&plan).await.unwrap();
    storage.save_workflow(&workflow).await.unwrap();

    let mut expected = vec![format!("{}.json", plan.id), format!("{}.json", workflow.id)];
    expected.sort();
    assert_eq!(names_in(&dir.path().join("store")), expected, "no temporary file is left behind");
    let text = std::fs::read_to_string(dir.path().join("store").join(format!("{}.json", workflow.id))).unwrap();
    assert!(text.contains("\n  \"plan_id\""), "pretty printed: {text}");
    assert_eq!(storage.get_plan(plan.id).await.unwrap(), plan);
    assert_eq!(storage.get_workflow(workflow.id).await.unwrap(), workflow, "values keep their type on disk");
}

#[tokio::test]
async fn saving_again_replaces_the_file_and_ignores_stale_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let storage = DiskStorage::new(dir.path());
    let mut workflow = Workflow::new(portia::PlanId::new(), ExecutionContext::default());
    storage.save_workflow(&workflow).await.unwrap();
    // A stale temporary file from a crashed writer must not be mistaken for a workflow.
    std::fs::write(dir.path().join(format!(".{}.json.0000.tmp", workflow.id)), "{ half").unwrap();
    workflow.transition_to(WorkflowState::InProgress).unwrap();
    storage.save_workflow(&workflow).await.unwrap();
    assert_eq!(storage.get_workflow(workflow.id).await.unwrap().state(), WorkflowState::InProgress);
    let page = storage.list_workflows(&WorkflowQuery::default()).await.unwrap();
    assert_eq!((page.count, page.unreadable.len()), (1, 0));
}

#[tokio::test]
async fn concurrent_saves_of_one_workflow_leave_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let storage = std::sync::Arc::new(DiskStorage::new(dir.path()));
    let workflow = Workflow::new(portia::PlanId::new(), ExecutionContext::default());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let storage = storage.clone();
        let mut copy = workflow.clone();
        copy.current_step_index = i;
        tasks.spawn(async move { storage.save_workflow(&copy).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let stored = storage.get_workflow(workflow.id).await.unwrap();
    assert!(stored.current_step_index < 16);
    assert_eq!(names_in(dir.path()), [format!("{}.json", workflow.id)]);
}

#[tokio::test]
async fn a_corrupt_file_names_itself_and_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let storage = DiskStorage::new(dir.path());
    let good = Workflow::new(portia::PlanId::new(), ExecutionContext::default());
    storage.save_workflow(&good).await.unwrap();
    let bad_id = portia::WorkflowId::new();
    let bad_path = dir.path().join(format!("{bad_id}.json"));
    std::fs::write(&bad_path, "{\"id\": \"not even close\"").unwrap();
    std::fs::write(dir.path().join("wkfl-foreign.json"), "[1, 2, 3]").unwrap();

    let err = storage.get_workflow(bad_id).await.unwrap_err();
    assert!(matches!(&err, Error::Storage { path: Some(p), .. } if *p == bad_path), "{err}");
    assert!(err.to_string().contains(&bad_id.to_string()), "{err}");

    let page = storage.list_workflows(&WorkflowQuery::default()).await.unwrap();
    assert_eq!(page.results, [good]);
    assert_eq!(page.unreadable.len(), 2);
    assert!(page.unreadable.iter().any(|u| u.contains("wkfl-foreign.json")), "{:?}", page.unreadable);
}

#[tokio::test]
async fn missing_objects_are_not_found_errors() {
    let dir = tempfile::tempdir().unwrap();
    let storage = DiskStorage::new(dir.path().join("never-created"));
    let id = portia::WorkflowId::new();
    assert!(matches!(storage.get_workflow(id).await, Err(Error::WorkflowNotFound(found)) if found == id));
    assert_eq!(storage.list_workflows(&WorkflowQuery::default()).await.unwrap().count, 0);
}

#[tokio::test]
async fn tool_calls_are_appended_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let storage = DiskStorage::new(dir.path());
    let record = ToolCallRecord {
        workflow_id: portia::WorkflowId::new(),
        step: 1,
        tool_id: "search_tool".into(),
        end_user_id: None,
        input: json!({"q": "x"}),
        output: json!("y"),
        status: ToolCallStatus::Success,
        latency_seconds: 0.25,
    };
    storage.save_tool_call(&record).await.unwrap();
    storage.save_tool_call(&record).await.unwrap();
    let text = std::fs::read_to_string(dir.path().join("tool-calls.jsonl")).unwrap();
    let lines: Vec<ToolCallRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, [record.clone(), record]);
}

#[tokio::test]
async fn a_runner_configured_for_disk_writes_there() {
    let dir = tempfile::tempdir().unwrap();
    let config = portia::Config::builder()
        .storage(portia::config::StorageKind::Disk)
        .storage_dir(dir.path().to_path_buf())
        .summarize_final_output(false)
        .build()
        .unwrap();
    let llm = std::sync::Arc::new(portia::testing::ScriptedLlm::new().text("ok"));
    let runner = portia::Runner::builder(config).llm(llm).build().unwrap();
    let plan = PlanBuilder::new("q").step("think", None, "$x").build();
    let done = runner.run_plan(&plan).await.unwrap();
    let reread = DiskStorage::new(dir.path()).get_workflow(done.id).await.unwrap();
    assert_eq!(reread, done);
}

#[tokio::test]
async fn absurd_page_numbers_give_an_empty_page_not_a_panic() {
    let storage = portia::storage::InMemoryStorage::new();
    storage.save_workflow(&Workflow::new(portia::PlanId::new(), ExecutionContext::default())).await.unwrap();
    let query = WorkflowQuery { state: None, page: usize::MAX, page_size: usize::MAX };
    let page = storage.list_workflows(&query).await.unwrap();
    assert_eq!((page.count, page.results.len(), page.total_pages), (1, 0, 1));
}
