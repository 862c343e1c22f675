//! Logging: state changes at INFO with ids, outputs at DEBUG, and no secrets.

// A binary of its own, not a module of tests/it: see the note in tests/it/main.rs.
#[path = "it/common.rs"]
mod common;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/support/fake_apis.rs"]
mod fake_apis;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{config, harness};
use portia::config::ExecutionMode;
use portia::testing::ScriptedLlm;
use portia::{InMemoryToolRegistry, PlanBuilder};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture(level: tracing::Level) -> (Buffer, tracing::subscriber::DefaultGuard) {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber =
        tracing_subscriber::fmt().with_max_level(level).with_ansi(false).with_writer(move || writer.clone()).finish();
    (buffer.clone(), tracing::subscriber::set_default(subscriber))
}

#[tokio::test(flavor = "current_thread")]
async fn state_changes_are_logged_at_info_with_plan_and_workflow_ids() {
    let (buffer, _guard) = capture(tracing::Level::INFO);
    let h = harness(
        config(ExecutionMode::Sequential, false),
        InMemoryToolRegistry::new(),
        ScriptedLlm::new().text("secret-free answer"),
    );
    let plan = PlanBuilder::new("q").step("think", None, "$x").build();
    let done = h.runner.run_plan(&plan).await.unwrap();
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    for (from, to) in [("NOT_STARTED", "IN_PROGRESS"), ("IN_PROGRESS", "COMPLETE")] {
        let line = logs
            .lines()
            .find(|l| {
                l.contains("workflow state changed")
                    && l.contains(&format!("from={from}"))
                    && l.contains(&format!("to={to}"))
            })
            .unwrap_or_else(|| panic!("no {from} -> {to} line in:\n{logs}"));
        assert!(
            line.contains(" INFO ") && line.contains(&done.id().to_string()) && line.contains(&plan.id.to_string()),
            "{line}"
        );
    }
    assert!(!logs.contains("step output"), "step outputs are DEBUG only");
}

#[tokio::test(flavor = "current_thread")]
async fn step_outputs_are_logged_at_debug_and_keys_never() {
    let (buffer, _guard) = capture(tracing::Level::DEBUG);
    let server = fake_apis::start(std::time::Duration::ZERO, std::time::Duration::ZERO).await;
    // The real OpenAI provider and search tool, so their own logging is covered too.
    let config = portia::Config::builder()
        .openai_api_key("sk-live-do-not-log")
        .openai_base_url(format!("{}/v1", server.uri()))
        .tavily_api_key("tvly-live-do-not-log")
        .tavily_base_url(server.uri())
        .summarize_final_output(false)
        .build()
        .unwrap();
    let runner = portia::Runner::new(config.clone(), portia::tools::example_tool_registry(&config)).unwrap();
    let plan = PlanBuilder::new("q")
        .step("Search for the stock price growth of Amazon (AMZN) in 2024.", Some("search_tool"), "$amazon")
        .build();
    let done = runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.state(), portia::WorkflowState::Complete);
    tracing::debug!(config = ?runner.config(), workflow = ?done, "everything a careless caller might log");
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(logs.lines().any(|l| l.contains("DEBUG") && l.contains("step output") && l.contains("AMZN")), "{logs}");
    assert!(logs.contains("openai"), "the provider logged its call: {logs}");
    assert!(!logs.contains("sk-live-do-not-log") && !logs.contains("tvly-live-do-not-log"), "{logs}");
    assert!(logs.contains("openai_api_key: Some(Secret(\"**********\"))"), "{logs}");
}

/// Taking a cell from a limiter with room takes microseconds; every LLM call of a
/// worker logged it at INFO as a wait of 0 ms, doubling its log.
#[tokio::test(flavor = "current_thread")]
async fn a_call_the_rate_limiter_lets_straight_through_logs_no_wait() {
    use portia::llm::{LlmClientExt, LlmProvider, LlmRequest, LlmSettings, RateLimit, RateLimits};
    let (buffer, _guard) = capture(tracing::Level::INFO);
    let settings = LlmSettings::new(LlmProvider::OpenAi).rate_limit(RateLimit::requests_per_minute(6_000));
    let llm = Arc::new(ScriptedLlm::new().text("one").text("two")).with(RateLimits::new(settings));
    for _ in 0..2 {
        let request = LlmRequest::new(portia::llm::ModelRole::Execution, vec![portia::llm::Message::user("hi")]);
        llm.chat(request).await.unwrap();
    }
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.contains("waited for the client-side rate limit"), "{logs}");
}

/// Busy once, then done; safe to send again.
#[derive(Debug, Default)]
struct BusyOnce(std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl portia::Tool for BusyOnce {
    fn spec(&self) -> portia::tool::ToolSpec {
        portia::tool::ToolSpec::new("busy_tool", "Busy Tool", "Busy at first.").idempotent(true)
    }
    async fn run(
        &self,
        _ctx: &portia::ToolRunContext,
        _args: serde_json::Value,
    ) -> Result<portia::ToolOutput, portia::ToolError> {
        if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(portia::ToolError::transient("busy", portia::tool::RetryHint::default()));
        }
        Ok(portia::ToolOutput::value("done"))
    }
}

/// At the command line's default level (warnings only), a retry's line named no
/// workflow: several `portia run` processes sharing a log could not be told apart.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_warning_inside_a_run_names_its_workflow_at_the_warn_level() {
    let (buffer, _guard) = capture(tracing::Level::WARN);
    let mut tools = InMemoryToolRegistry::new();
    tools.register(Arc::new(BusyOnce::default())).unwrap();
    let h = harness(config(ExecutionMode::Sequential, false), tools, ScriptedLlm::new());
    let plan = PlanBuilder::new("q").step("Do it", Some("busy_tool"), "$done").args(serde_json::json!({})).build();
    let done = h.runner.run_plan(&plan).await.unwrap();
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let line = logs.lines().find(|l| l.contains("sending the tool call again")).unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains(&done.id().to_string()), "{line}");
}

/// Deletes the database file under the run that calls it.
#[derive(Debug)]
struct DeletesTheDatabase(std::path::PathBuf);

#[async_trait::async_trait]
impl portia::Tool for DeletesTheDatabase {
    fn spec(&self) -> portia::tool::ToolSpec {
        portia::tool::ToolSpec::new("delete_tool", "Delete Tool", "Deletes the database.")
    }
    async fn run(
        &self,
        _ctx: &portia::ToolRunContext,
        _args: serde_json::Value,
    ) -> Result<portia::ToolOutput, portia::ToolError> {
        std::fs::remove_file(&self.0).map_err(portia::ToolError::hard)?;
        Ok(portia::ToolOutput::value("deleted"))
    }
}

/// With its database deleted mid-run, a worker's run can neither save nor release
/// its lease. The worker said both that the lease was released and that it could
/// not be: now only what happened, and why the worker stops.
#[tokio::test(flavor = "current_thread")]
async fn a_worker_whose_database_goes_mid_run_logs_no_release_that_did_not_happen() {
    let (buffer, _guard) = capture(tracing::Level::WARN);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let storage = Arc::new(portia::storage::SqliteStorage::open(&path).unwrap());
    let mut tools = InMemoryToolRegistry::new();
    tools.register(Arc::new(DeletesTheDatabase(path.clone()))).unwrap();
    let config = portia::Config::builder().summarize_final_output(false).build().unwrap();
    let runner = portia::Runner::builder(config)
        .llm(Arc::new(ScriptedLlm::new()))
        .tools(tools)
        .storage(storage)
        .build()
        .unwrap();
    let plan = PlanBuilder::new("q").step("Delete", Some("delete_tool"), "$gone").args(serde_json::json!({})).build();
    let id = runner.submit_plan(&plan).await.unwrap();

    let report = runner.worker(portia::runner::WorkerOptions::new()).run_until(std::future::pending()).await;
    assert!(report.stopped_on.is_some_and(|why| why.contains("deleted")));
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let about_the_run: Vec<&str> = logs.lines().filter(|l| l.contains(&id.to_string())).collect();
    assert!(about_the_run.iter().any(|l| l.contains("could not release the lease")), "{logs}");
    assert!(!logs.contains("lease is released"), "a release that failed is not reported done: {logs}");
    let stopped = about_the_run.iter().find(|l| l.contains("worker run stopped")).unwrap_or_else(|| panic!("{logs}"));
    assert!(stopped.contains("deleted while this process had it open"), "{stopped}");
}
