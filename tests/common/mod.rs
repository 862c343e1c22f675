//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use portia::config::ExecutionMode;
use portia::storage::{InMemoryStorage, Storage, ToolCallRecord, WorkflowPage, WorkflowQuery};
use portia::testing::ScriptedLlm;
use portia::{Config, InMemoryToolRegistry, Plan, PlanId, Runner, Workflow, WorkflowId};

/// Storage that keeps a copy of every workflow saved, in order.
#[derive(Debug, Default)]
pub struct RecordingStorage {
    pub inner: InMemoryStorage,
    pub saved: Mutex<Vec<Workflow>>,
}

impl RecordingStorage {
    pub fn snapshots(&self) -> Vec<Workflow> {
        self.saved.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Storage for RecordingStorage {
    async fn save_plan(&self, plan: &Plan) -> portia::Result<()> {
        self.inner.save_plan(plan).await
    }
    async fn get_plan(&self, id: PlanId) -> portia::Result<Plan> {
        self.inner.get_plan(id).await
    }
    async fn save_workflow(&self, workflow: &Workflow) -> portia::Result<()> {
        self.saved.lock().unwrap().push(workflow.clone());
        self.inner.save_workflow(workflow).await
    }
    async fn get_workflow(&self, id: WorkflowId) -> portia::Result<Workflow> {
        self.inner.get_workflow(id).await
    }
    async fn list_workflows(&self, query: &WorkflowQuery) -> portia::Result<WorkflowPage> {
        self.inner.list_workflows(query).await
    }
    async fn save_tool_call(&self, record: &ToolCallRecord) -> portia::Result<()> {
        self.inner.save_tool_call(record).await
    }
}

/// A config for tests: no final summary unless asked, fixed mode.
pub fn config(execution: ExecutionMode, summarize: bool) -> Config {
    Config::builder().execution(execution).summarize_final_output(summarize).build().unwrap()
}

pub struct Harness {
    pub runner: Runner,
    pub llm: Arc<ScriptedLlm>,
    pub storage: Arc<RecordingStorage>,
}

pub fn harness(config: Config, tools: InMemoryToolRegistry, llm: ScriptedLlm) -> Harness {
    let llm = Arc::new(llm);
    let storage = Arc::new(RecordingStorage::default());
    let runner = Runner::builder(config)
        .tools(tools)
        .llm(llm.clone())
        .storage(storage.clone())
        .today("2026-11-25")
        .build()
        .unwrap();
    Harness { runner, llm, storage }
}

/// The text of the last user message of a request.
pub fn last_user_text(request: &portia::llm::LlmRequest) -> String {
    request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == portia::llm::Role::User)
        .map(|m| m.content.clone())
        .unwrap_or_default()
}
