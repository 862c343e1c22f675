//! Re-sending a tool call that failed on the service's side: only when that cannot
//! repeat a side effect, after the wait the service asked for, each re-send a
//! journaled call. Runs on tokio's paused clock: nothing really waits.

use std::sync::Mutex;
use std::time::Duration;

use common::{config, harness};
use portia::config::ExecutionMode;
use portia::testing::ScriptedLlm;
use portia::tool::{RetryHint, Tool, ToolRunContext};
use portia::workflow::FailureKind;
use portia::{Config, InMemoryToolRegistry, PlanBuilder, ToolError, ToolOutput, ToolSpec, WorkflowState};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::common;

/// Fails `failures` times with `hint`, then returns "done"; counts its calls.
#[derive(Debug)]
struct Flaky {
    idempotent: bool,
    failures: usize,
    hint: RetryHint,
    calls: Mutex<Vec<Value>>,
}

impl Flaky {
    fn new(idempotent: bool, failures: usize, hint: RetryHint) -> Self {
        Self { idempotent, failures, hint, calls: Mutex::default() }
    }
}

#[async_trait::async_trait]
impl Tool for Flaky {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("flaky_tool", "Flaky Tool", "Sometimes busy.").idempotent(self.idempotent)
    }
    async fn run(&self, _ctx: &ToolRunContext, args: Value) -> Result<ToolOutput, ToolError> {
        let mut calls = self.calls.lock().unwrap();
        calls.push(args);
        if calls.len() <= self.failures {
            return Err(ToolError::transient(format!("busy #{}", calls.len()), self.hint));
        }
        Ok(ToolOutput::value("done"))
    }
}

fn plan() -> portia::Plan {
    PlanBuilder::new("q").step("Do it", Some("flaky_tool"), "$done").args(json!({"x": 1})).build()
}

fn tools(flaky: Flaky) -> (InMemoryToolRegistry, std::sync::Arc<Flaky>) {
    let flaky = std::sync::Arc::new(flaky);
    let mut tools = InMemoryToolRegistry::new();
    tools.register(flaky.clone()).unwrap();
    (tools, flaky)
}

#[tokio::test(start_paused = true)]
async fn an_idempotent_tool_is_sent_again_after_the_wait_the_service_asked_for() {
    let hint = RetryHint::unknown_outcome().retry_after(Some(Duration::from_secs(7)));
    let (tools, flaky) = tools(Flaky::new(true, 2, hint));
    let h = harness(config(ExecutionMode::Sequential, false), tools, ScriptedLlm::new());
    let started = Instant::now();
    let workflow = h.runner.run_plan(&plan()).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert_eq!(started.elapsed(), Duration::from_secs(14), "two waits of the asked 7 s, on the paused clock");
    assert_eq!(flaky.calls.lock().unwrap().len(), 3);
    let journal = h.runner.tool_calls(workflow.id()).await.unwrap();
    let seqs: Vec<u32> = journal.iter().map(|c| c.key.seq).collect();
    assert_eq!(seqs, [0, 1, 2], "each re-send is its own journaled call");
    assert!(h.llm.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_call_that_did_not_happen_is_sent_again_even_with_side_effects() {
    let (tools, flaky) = tools(Flaky::new(false, 1, RetryHint::not_performed()));
    let config = Config::builder().summarize_final_output(false).retry_backoff(Duration::from_millis(10)).build();
    let h = harness(config.unwrap(), tools, ScriptedLlm::new());
    let workflow = h.runner.run_plan(&plan()).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert_eq!(flaky.calls.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_call_with_side_effects_and_an_unknown_outcome_goes_to_the_model_instead() {
    let (tools, flaky) = tools(Flaky::new(false, 1, RetryHint::unknown_outcome()));
    // The model decides to call again (it could also decide not to).
    let llm = ScriptedLlm::new().tool_call("flaky_tool", json!({"x": 1}));
    let h = harness(config(ExecutionMode::Sequential, false), tools, llm);
    let workflow = h.runner.run_plan(&plan()).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert_eq!(flaky.calls.lock().unwrap().len(), 2);
    let prompt = common::last_user_text(&h.llm.requests()[0]);
    assert!(prompt.contains("busy #1"), "the model sees why: {prompt}");
}

#[tokio::test(start_paused = true)]
async fn re_sends_stop_at_max_retries_and_fail_the_step() {
    let (tools, flaky) = tools(Flaky::new(true, usize::MAX, RetryHint::unknown_outcome()));
    let config = Config::builder().summarize_final_output(false).max_retries(2u32).build().unwrap();
    let h = harness(config, tools, ScriptedLlm::new());
    let workflow = h.runner.run_plan(&plan()).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Failed);
    let failure = workflow.failure().unwrap();
    assert_eq!(failure.kind, FailureKind::ToolRetriesExhausted);
    assert!(
        failure.message.contains("gave up after 3 tries") && failure.message.contains("PORTIA_MAX_RETRIES"),
        "{}",
        failure.message
    );
    assert_eq!(flaky.calls.lock().unwrap().len(), 3);
}

#[test]
fn max_retries_and_backoff_come_from_the_environment() {
    let config = Config::from_vars(|name| match name {
        "PORTIA_MAX_RETRIES" => Some("10".into()),
        "PORTIA_RETRY_BACKOFF_MS" => Some("25".into()),
        "PORTIA_REQUEST_TIMEOUT_MS" => Some("1500".into()),
        _ => None,
    })
    .unwrap();
    let policy = config.tool_retry_policy();
    assert_eq!(policy.retries(), 10);
    let exact = policy.jitter(0.0);
    assert_eq!((exact.wait(0, None), exact.wait(1, None)), (Duration::from_millis(25), Duration::from_millis(50)));
    assert_eq!(exact.wait(3, Some(Duration::from_secs(2))), Duration::from_secs(2), "the service's wait wins");
    assert_eq!(config.request_timeout(), Duration::from_millis(1500));
    assert_eq!(Config::default().max_retries, 6);
}
