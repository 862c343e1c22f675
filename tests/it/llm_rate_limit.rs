//! Client-side rate limits, on a paused tokio clock: calls are spaced as the limit
//! says, waiting does not count against an attempt's timeout, every workflow
//! of a runner draws from one allowance per model, and a wait is an event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portia::llm::{
    LlmClient, LlmClientExt, LlmProvider, LlmRequest, LlmResponse, LlmSettings, Message, ModelRole, RateLimit,
    RateLimits, Retry, RetryPolicy,
};
use portia::runner::EventKind;
use portia::testing::ScriptedLlm;
use portia::{Config, PlanBuilder, Runner, Workflow, WorkflowState};
use tokio::time::Instant;

/// A model that answers `calls` times, noting when each call reached it (seconds from `start`).
fn timed_model(calls: usize, start: Instant) -> (Arc<ScriptedLlm>, Arc<Mutex<Vec<u64>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let model = (0..calls).fold(ScriptedLlm::new(), |llm, _| {
        let seen = Arc::clone(&seen);
        llm.respond_with(move |_| {
            seen.lock().unwrap().push(start.elapsed().as_secs());
            Ok(LlmResponse::text("ok"))
        })
    });
    (Arc::new(model), seen)
}

fn ask() -> LlmRequest {
    LlmRequest::new(ModelRole::Execution, vec![Message::user("Hi")])
}

#[tokio::test(start_paused = true)]
async fn calls_are_spaced_by_the_limit_and_waiting_is_not_timed() {
    let start = Instant::now();
    let (model, seen) = timed_model(4, start);
    let settings = LlmSettings::new(LlmProvider::OpenAi).rate_limit(RateLimit::requests_per_minute(60));
    // Each attempt may take one second: the fourth call waits three for the limiter.
    let retry = Retry::new(RetryPolicy::default().max_retries(0).attempt_timeout(Some(Duration::from_secs(1))));
    let llm: Arc<dyn LlmClient> = model.with(retry).with(RateLimits::new(settings));

    let calls = (0..4).map(|_| llm.chat(ask()));
    let replies = join_all(calls.collect()).await;

    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn each_model_has_its_own_allowance() {
    let start = Instant::now();
    let (model, seen) = timed_model(4, start);
    let settings = LlmSettings::new(LlmProvider::OpenAi)
        .rate_limit(RateLimit::requests_per_minute(60))
        .model_rate_limit("openai/fast", RateLimit::requests_per_minute(6000));
    let llm: Arc<dyn LlmClient> = model.with(RateLimits::new(settings));
    let fast = || {
        let mut request = ask();
        request.model = Some("fast".into());
        request
    };

    let replies = join_all(vec![llm.chat(ask()), llm.chat(ask()), llm.chat(fast()), llm.chat(fast())]).await;

    assert!(replies.iter().all(Result::is_ok));
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, [0, 0, 0, 1], "only the default model's second call waits");
}

#[tokio::test(start_paused = true)]
async fn every_workflow_of_a_runner_shares_the_allowance() {
    let start = Instant::now();
    let (model, seen) = timed_model(3, start);
    let mut config = Config::builder().summarize_final_output(false).build().unwrap();
    config.llm_rpm = Some(60);
    let runner = Runner::builder(config).llm(model).build().unwrap();
    let plan = PlanBuilder::new("Say hi").step("Say hi", None, "$hi").build();

    let runs = (0..3).map(|_| runner.run_plan(&plan).into_future());
    let done = join_all(runs.collect()).await;

    assert!(done.iter().all(|w| w.as_ref().is_ok_and(|w| w.state() == WorkflowState::Complete)));
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_waits_for_the_limit_is_a_stored_event_and_its_wait_is_no_latency() {
    let start = Instant::now();
    let (model, _) = timed_model(2, start);
    let mut config = Config::builder().summarize_final_output(false).build().unwrap();
    config.llm_rpm = Some(60);
    let runner = Runner::builder(config).llm(model).build().unwrap();
    let plan = PlanBuilder::new("Say hi").step("Say hi", None, "$hi").build();

    let runs = (0..2).map(|_| runner.run_plan(&plan).into_future());
    let done: Vec<Workflow> = join_all(runs.collect()).await.into_iter().map(Result::unwrap).collect();

    let mut throttled = Vec::new();
    let mut latencies = Vec::new();
    for workflow in &done {
        for stored in runner.storage().events(workflow.id(), 0).await.unwrap() {
            match stored.event.kind {
                EventKind::LlmCallThrottled { step_output, model, waited_ms } => {
                    throttled.push((step_output, model, waited_ms));
                }
                EventKind::LlmCallFinished { model, latency_ms, .. } => latencies.push((model, latency_ms)),
                _ => {}
            }
        }
    }
    let model = latencies[0].0.clone();
    assert_eq!(throttled, [(Some("$hi".to_owned()), model, 1000)], "only the second call waited, a second");
    assert_eq!(latencies.iter().map(|(_, ms)| *ms).collect::<Vec<_>>(), [0, 0], "the model answered at once");
}

#[test]
fn limits_read_their_variables() {
    let config = Config::from_vars(|name| match name {
        "PORTIA_LLM_RPM" => Some("500".into()),
        "PORTIA_LLM_TPM" => Some("200000".into()),
        _ => None,
    })
    .unwrap();
    let limit = config.llm_settings().rate_limit_for("gpt-4.1-mini");
    assert_eq!((limit.requests_per_minute, limit.tokens_per_minute), (Some(500), Some(200_000)));
    let err = Config::from_vars(|name| (name == "PORTIA_LLM_RPM").then(|| "many".into())).unwrap_err();
    assert!(err.to_string().contains("PORTIA_LLM_RPM"), "{err}");
}

/// Runs futures at once on this task, in order of their outputs (no `futures` dependency needed).
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}
