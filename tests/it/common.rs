//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use portia::config::ExecutionMode;
use portia::runner::{StoredEvent, WorkflowEvent};
use portia::storage::{
    InMemoryStorage, Journal, Lease, LeaseGrant, LeaseQueue, LeaseStatus, PlanStore, Retention, Storage,
    ToolCallRecord, UsageRecord, WorkflowPage, WorkflowQuery, WorkflowStore,
};
use portia::testing::ScriptedLlm;
use portia::{Config, InMemoryToolRegistry, Plan, PlanId, Runner, Workflow, WorkflowId};

type SaveHook = Box<dyn Fn(&Workflow) + Send + Sync>;

/// Storage that keeps a copy of every workflow saved, in order, notes how each
/// lease was given up, and may run a hook before each save.
pub struct RecordingStorage {
    pub inner: Arc<dyn Storage>,
    pub saved: Mutex<Vec<Workflow>>,
    /// `"release"` for each lease released alone, `"save and release"` for each
    /// given up with a save.
    pub lease_ends: Mutex<Vec<&'static str>>,
    before_save: Option<SaveHook>,
}

impl std::fmt::Debug for RecordingStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingStorage").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl Default for RecordingStorage {
    fn default() -> Self {
        Self::wrapping(Arc::new(InMemoryStorage::new()), None)
    }
}

impl RecordingStorage {
    pub fn wrapping(inner: Arc<dyn Storage>, before_save: Option<SaveHook>) -> Self {
        Self { inner, saved: Mutex::default(), lease_ends: Mutex::default(), before_save }
    }

    pub fn snapshots(&self) -> Vec<Workflow> {
        self.saved.lock().unwrap().clone()
    }

    /// How each lease was given up so far, in order (then forgotten).
    pub fn take_lease_ends(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.lease_ends.lock().unwrap())
    }

    fn record_save(&self, workflow: &Workflow) {
        if let Some(hook) = &self.before_save {
            hook(workflow);
        }
        self.saved.lock().unwrap().push(workflow.clone());
    }
}

#[async_trait::async_trait]
impl PlanStore for RecordingStorage {
    async fn save_plan(&self, plan: &Plan) -> portia::Result<()> {
        self.inner.save_plan(plan).await
    }
    async fn get_plan(&self, id: PlanId) -> portia::Result<Plan> {
        self.inner.get_plan(id).await
    }
}

#[async_trait::async_trait]
impl WorkflowStore for RecordingStorage {
    async fn create_workflow(&self, workflow: &Workflow) -> portia::Result<()> {
        self.saved.lock().unwrap().push(workflow.clone());
        self.inner.create_workflow(workflow).await
    }
    async fn submit_workflow(&self, workflow: &Workflow) -> portia::Result<()> {
        self.saved.lock().unwrap().push(workflow.clone());
        self.inner.submit_workflow(workflow).await
    }
    async fn get_workflow(&self, id: WorkflowId) -> portia::Result<Workflow> {
        self.inner.get_workflow(id).await
    }
    async fn list_workflows(&self, query: &WorkflowQuery) -> portia::Result<WorkflowPage> {
        self.inner.list_workflows(query).await
    }
    async fn update_workflow(
        &self,
        workflow: &Workflow,
        lease: &Lease,
        events: &[WorkflowEvent],
    ) -> portia::Result<()> {
        self.record_save(workflow);
        self.inner.update_workflow(workflow, lease, events).await
    }
    async fn events(&self, id: WorkflowId, after: u64) -> portia::Result<Vec<StoredEvent>> {
        self.inner.events(id, after).await
    }
}

#[async_trait::async_trait]
impl LeaseQueue for RecordingStorage {
    async fn acquire_lease(&self, id: WorkflowId, owner: &str, ttl: Duration) -> portia::Result<LeaseGrant> {
        self.inner.acquire_lease(id, owner, ttl).await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> portia::Result<LeaseStatus> {
        self.inner.renew_lease(lease, ttl).await
    }
    async fn release_lease(&self, lease: &Lease) -> portia::Result<()> {
        self.lease_ends.lock().unwrap().push("release");
        self.inner.release_lease(lease).await
    }
    async fn lease_holder(&self, id: WorkflowId) -> portia::Result<Option<portia::storage::LeaseHolder>> {
        self.inner.lease_holder(id).await
    }
    async fn queue(&self, id: WorkflowId) -> portia::Result<bool> {
        self.inner.queue(id).await
    }
    async fn set_aside(&self, lease: &Lease, reason: &str) -> portia::Result<()> {
        self.lease_ends.lock().unwrap().push("set aside");
        self.inner.set_aside(lease, reason).await
    }
    async fn put_back(&self, id: WorkflowId) -> portia::Result<bool> {
        self.inner.put_back(id).await
    }
    async fn set_aside_workflows(&self) -> portia::Result<Vec<portia::storage::SetAside>> {
        self.inner.set_aside_workflows().await
    }
    async fn update_and_release(
        &self,
        workflow: &Workflow,
        lease: &Lease,
        events: &[WorkflowEvent],
    ) -> portia::Result<()> {
        self.record_save(workflow);
        self.lease_ends.lock().unwrap().push("save and release");
        self.inner.update_and_release(workflow, lease, events).await
    }
    async fn claim_runnable(&self, owner: &str, ttl: Duration) -> portia::Result<Option<LeaseGrant>> {
        self.inner.claim_runnable(owner, ttl).await
    }
    async fn wait_for_runnable(&self, timeout: Duration) {
        self.inner.wait_for_runnable(timeout).await
    }
    async fn has_queued_work(&self) -> portia::Result<bool> {
        self.inner.has_queued_work().await
    }
    async fn cancel_requests(&self, ids: &[WorkflowId]) -> portia::Result<Vec<(WorkflowId, String)>> {
        self.inner.cancel_requests(ids).await
    }
    async fn request_cancel(&self, id: WorkflowId, reason: &str) -> portia::Result<()> {
        self.inner.request_cancel(id, reason).await
    }
}

#[async_trait::async_trait]
impl Journal for RecordingStorage {
    async fn begin_tool_call(&self, lease: &Lease, intent: &ToolCallRecord) -> portia::Result<Option<ToolCallRecord>> {
        self.inner.begin_tool_call(lease, intent).await
    }
    async fn finish_tool_call(&self, lease: &Lease, record: &ToolCallRecord) -> portia::Result<()> {
        self.inner.finish_tool_call(lease, record).await
    }
    async fn tool_calls(&self, id: WorkflowId) -> portia::Result<Vec<ToolCallRecord>> {
        self.inner.tool_calls(id).await
    }
    async fn record_usage(&self, lease: &Lease, record: &UsageRecord) -> portia::Result<()> {
        self.inner.record_usage(lease, record).await
    }
    async fn usage_records(&self, id: WorkflowId) -> portia::Result<Vec<UsageRecord>> {
        self.inner.usage_records(id).await
    }
}

#[async_trait::async_trait]
impl Retention for RecordingStorage {
    async fn delete_workflow(&self, id: WorkflowId) -> portia::Result<()> {
        self.inner.delete_workflow(id).await
    }
    async fn delete_end_user(&self, end_user_id: &str) -> portia::Result<usize> {
        self.inner.delete_end_user(end_user_id).await
    }
    async fn prune_finished(&self, before: DateTime<Utc>) -> portia::Result<usize> {
        self.inner.prune_finished(before).await
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
    harness_with(config, tools, llm)
}

/// [`harness`] over any registry (an MCP one, say).
pub fn harness_with(config: Config, tools: impl portia::tool::ToolRegistry + 'static, llm: ScriptedLlm) -> Harness {
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

/// A child process that is killed when its test ends, whether the test passed or
/// panicked, so that no child outlives the test binary.
#[derive(Debug)]
pub struct ChildGuard(pub std::process::Child);

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl ChildGuard {
    /// Waits for the child to end and collects its piped stdout and stderr, as
    /// `Child::wait_with_output` does.
    pub fn output(&mut self) -> std::process::Output {
        use std::io::Read;
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    pipe.read_to_end(&mut bytes).unwrap();
                }
                bytes
            })
        };
        let stdout = read(self.0.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let stderr = read(self.0.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let status = self.0.wait().unwrap();
        std::process::Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Once the child was waited for, std sends no signal: a reused pid is safe.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// In a child test that [`kill_child_test_at_marker`] runs: prints `marker`, so that
/// the parent kills the process here, and waits for that.
pub fn print_marker_and_wait(marker: &str) -> ! {
    println!("{marker}");
    loop {
        std::thread::park();
    }
}

/// Runs `test`, an ignored test of this binary, as a child process with `env`,
/// reads its output until it prints a line starting with `marker`, and SIGKILLs it
/// there: the crash the durability tests resume from.
pub fn kill_child_test_at_marker(test: &str, env: &[(&str, &std::ffi::OsStr)], marker: &str) {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--ignored", "--nocapture", "--test-threads=1", "--quiet"])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stdout = child.stdout.take().unwrap();
    let reached = std::io::BufRead::lines(std::io::BufReader::new(stdout)).any(|l| l.unwrap().starts_with(marker));
    assert!(reached, "the child process {test} ended before the point it was to be killed at");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// A port on loopback that takes connections and never says a word, as a host whose
/// server hangs; it listens until the returned task is aborted.
pub async fn silent_port() -> (u16, tokio::task::JoinHandle<()>) {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    (port, held)
}

/// Asserts that `workflow`, queued with a body that cannot be read, is the one
/// workflow the store lists as set aside, for a reason that names it.
pub async fn assert_set_aside_as_unreadable(store: &dyn portia::storage::Storage, workflow: &Workflow) {
    let aside = store.set_aside_workflows().await.unwrap();
    let [only] = aside.as_slice() else { panic!("one workflow set aside, not {aside:?}") };
    assert_eq!(only.workflow_id, workflow.id().to_string());
    assert!(only.reason.contains(&format!("workflow {}", workflow.id())), "{}", only.reason);
}
