//! Logging: state changes at INFO with ids, outputs at DEBUG, and no secrets.

mod common;

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
            line.contains(" INFO ") && line.contains(&done.id.to_string()) && line.contains(&plan.id.to_string()),
            "{line}"
        );
    }
    assert!(!logs.contains("step output"), "step outputs are DEBUG only");
}

#[tokio::test(flavor = "current_thread")]
async fn step_outputs_are_logged_at_debug_and_keys_never() {
    let (buffer, _guard) = capture(tracing::Level::DEBUG);
    let config = portia::Config::builder()
        .openai_api_key("sk-live-do-not-log")
        .execution(ExecutionMode::Sequential)
        .summarize_final_output(false)
        .build()
        .unwrap();
    let h = harness(config, InMemoryToolRegistry::new(), ScriptedLlm::new().text("forty-two"));
    let plan = PlanBuilder::new("q").step("think", None, "$x").build();
    h.runner.run_plan(&plan).await.unwrap();
    tracing::debug!(config = ?h.runner.config(), "config");
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.lines().any(|l| l.contains("DEBUG") && l.contains("step output") && l.contains("forty-two")),
        "{logs}"
    );
    assert!(!logs.contains("sk-live-do-not-log"), "{logs}");
    assert!(logs.contains("openai_api_key: Some(Secret(\"**********\"))"), "{logs}");
}
