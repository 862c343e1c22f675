//! The LLM client layers (`Retry`, `Offline`, the cassette `Recorder`) around
//! clients that are not the built-in providers, and what the runner stacks around
//! a client it is given. Scripted inner clients; tokio's clock is paused wherever
//! time passes, so every wait is exact and nothing really sleeps.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portia::llm::{
    LlmClient, LlmClientExt, LlmError, LlmProvider, LlmRequest, LlmResponse, LlmSettings, Message, ModelRole, Offline,
    Retry, RetryPolicy,
};
use portia::testing::{Recorder, ScriptedLlm};
use portia::workflow::FailureKind;
use portia::{Config, Plan, PlanBuilder, Runner, WorkflowState};
use tokio::time::Instant;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ask() -> LlmRequest {
    LlmRequest::new(ModelRole::Execution, vec![Message::user("hi")])
}

fn http(status: u16, retry_after: Option<Duration>) -> LlmError {
    LlmError::Http {
        provider: "mine".into(),
        model: "m".into(),
        status,
        message: format!("status {status}"),
        retry_after,
        key_var: None,
    }
}

/// Jitter off, so every wait is exact.
fn policy() -> RetryPolicy {
    RetryPolicy::default().max_retries(3).initial_backoff(secs(1)).jitter(0.0)
}

/// A scripted client that notes when (on tokio's clock) each request arrived.
fn timed(script: Vec<Result<LlmResponse, LlmError>>) -> (Arc<ScriptedLlm>, Arc<Mutex<Vec<Duration>>>) {
    let started = Instant::now();
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let mut llm = ScriptedLlm::new();
    for reply in script {
        let arrivals = Arc::clone(&arrivals);
        llm = llm.respond_with(move |_| {
            arrivals.lock().unwrap_or_else(PoisonError::into_inner).push(started.elapsed());
            reply.clone()
        });
    }
    (Arc::new(llm), arrivals)
}

fn arrivals(times: &Mutex<Vec<Duration>>) -> Vec<Duration> {
    times.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// A client that never answers: only a time limit ends its calls.
#[derive(Debug)]
struct Silent;

#[async_trait::async_trait]
impl LlmClient for Silent {
    async fn chat(&self, _: LlmRequest) -> Result<LlmResponse, LlmError> {
        std::future::pending().await
    }
}

/// A client that says it retries by itself.
#[derive(Debug)]
struct RetriesItself(Arc<ScriptedLlm>);

#[async_trait::async_trait]
impl LlmClient for RetriesItself {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        self.0.chat(request).await
    }

    fn retries(&self) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn retry_backs_off_and_honours_retry_after_around_any_client() {
    let script = vec![Err(http(503, None)), Err(http(429, Some(secs(7)))), Ok(LlmResponse::text("hello"))];
    let (llm, times) = timed(script);
    let client = llm.clone().with(Retry::new(policy()));
    assert!(client.retries() && !llm.retries());
    let response = client.chat(ask()).await.unwrap();
    assert_eq!(response.text.as_deref(), Some("hello"));
    assert_eq!(arrivals(&times), [secs(0), secs(1), secs(8)]);
}

#[tokio::test(start_paused = true)]
async fn retry_returns_an_error_no_retry_can_fix_at_once_and_the_last_error_when_out_of_retries() {
    let (llm, times) = timed(vec![Err(http(400, None))]);
    let err = llm.clone().with(Retry::new(policy())).chat(ask()).await.unwrap_err();
    assert_eq!(err, http(400, None));
    assert_eq!(arrivals(&times), [secs(0)]);

    let script = vec![Err(http(500, None)), Err(http(502, None)), Err(http(504, None))];
    let (llm, times) = timed(script);
    let err = llm.clone().with(Retry::new(policy().max_retries(2))).chat(ask()).await.unwrap_err();
    assert_eq!(err, http(504, None));
    assert_eq!(arrivals(&times), [secs(0), secs(1), secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn retry_cuts_attempts_at_their_timeout_and_the_call_at_its_deadline() {
    let started = Instant::now();
    let limited = policy().attempt_timeout(Some(secs(10))).deadline(Some(secs(25)));
    let err = Arc::new(Silent).with(Retry::new(limited)).chat(ask()).await.unwrap_err();
    // Attempts at 0 s (cut at 10), 11 s (cut at 21), 23 s (cut by the deadline at 25).
    assert_eq!(err, LlmError::Timeout { provider: "llm".into(), model: "execution".into(), after: secs(25) });
    assert_eq!(started.elapsed(), secs(25));

    // Given the settings, the layer names the call by the model the request goes to.
    let settings = LlmSettings::new(LlmProvider::Anthropic).model(ModelRole::Execution, "openai/gpt-test");
    let retry = Retry::new(policy().max_retries(0).attempt_timeout(Some(secs(5)))).models(settings);
    let err = Arc::new(Silent).with(retry).chat(ask()).await.unwrap_err();
    assert_eq!(err, LlmError::Timeout { provider: "openai".into(), model: "gpt-test".into(), after: secs(5) });
}

#[tokio::test]
async fn offline_refuses_a_client_that_may_reach_the_network_but_not_one_on_loopback() {
    // Offline mode is process-wide; tests here only ever switch it on.
    portia::config::set_offline(true);
    let remote = Arc::new(ScriptedLlm::new());
    let err = remote.clone().with(Offline::new()).with(Retry::new(policy())).chat(ask()).await.unwrap_err();
    assert!(matches!(&err, LlmError::NotSent { provider, model, .. } if provider == "llm" && model == "execution"));
    assert!(err.to_string().contains("PORTIA_OFFLINE") && !err.is_retryable(), "{err}");
    assert!(remote.requests().is_empty(), "the refused request never reached the client");

    let elsewhere = Arc::new(ScriptedLlm::new()).with(Offline::unless_loopback("https://llm.example.com/v1"));
    let err = elsewhere.chat(ask()).await.unwrap_err();
    assert!(err.to_string().contains("llm.example.com"), "{err}");

    let local = Arc::new(ScriptedLlm::new().text("hello"));
    let answered = local.clone().with(Offline::unless_loopback("http://127.0.0.1:8080/v1")).chat(ask()).await;
    assert_eq!(answered.unwrap().text.as_deref(), Some("hello"));
}

#[tokio::test]
async fn the_recorder_is_a_layer_and_passes_on_whether_its_client_retries() {
    let recorder = Recorder::new(&Config::default());
    let llm = Arc::new(ScriptedLlm::new().text("hello"));
    let recorded = llm.clone().with(&recorder);
    assert!(!recorded.retries());
    recorded.chat(ask()).await.unwrap();
    assert_eq!(recorder.cassette().llm.len(), 1);
    assert_eq!(recorder.cassette().llm[0].request, ask());

    let retrying = Arc::new(ScriptedLlm::new()).with(Retry::new(policy())).with(&recorder);
    assert!(retrying.retries());
}

#[test]
fn a_blank_model_falls_back_to_the_one_for_the_purpose() {
    let settings = LlmSettings::new(LlmProvider::OpenAi).model(ModelRole::Planning, "anthropic/claude-test");
    let mut request = LlmRequest::new(ModelRole::Planning, vec![Message::user("plan")]);
    request.model = Some("  ".into());
    let target = settings.resolve(&request);
    assert_eq!((target.provider, target.model.as_str()), (LlmProvider::Anthropic, "claude-test"));
    request.model = Some("gpt-test".into());
    assert_eq!(settings.resolve(&request).provider, LlmProvider::OpenAi);
}

fn say_hello() -> Plan {
    PlanBuilder::new("Say hello").step("Say hello", None, "$hello").build()
}

fn config() -> Config {
    Config::builder().summarize_final_output(false).max_retries(3u32).retry_backoff_ms(1000u64).build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_runner_retries_a_users_own_client_and_counts_the_call_that_answered() {
    let connection = LlmError::Connection { provider: "mine".into(), model: "m".into(), message: "reset".into() };
    let script = vec![Err(http(503, None)), Err(connection), Ok(LlmResponse::text("Hello!"))];
    let (llm, times) = timed(script);
    let runner = Runner::builder(config()).llm(llm.clone()).build().unwrap();
    let workflow = runner.run_plan(&say_hello()).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(workflow.outputs().final_output.as_ref().unwrap().value, "Hello!");
    let waits: Vec<Duration> = arrivals(&times).windows(2).map(|pair| pair[1] - pair[0]).collect();
    // The configured backoff, doubling; the configured policy's jitter shortens each wait by up to 20%.
    assert_eq!(waits.len(), 2);
    assert!(waits[0] >= Duration::from_millis(800) && waits[0] <= secs(1), "{waits:?}");
    assert!(waits[1] >= Duration::from_millis(1600) && waits[1] <= secs(2), "{waits:?}");
    // The failed attempts returned no usage: one call is counted and journaled, as for the built-in clients.
    assert_eq!(workflow.usage().total.llm_calls, 1);
    let journaled = runner.storage().usage_records(workflow.id()).await.unwrap();
    assert_eq!(journaled.iter().map(|r| r.usage.llm_calls).sum::<u32>(), 1);
}

#[tokio::test(start_paused = true)]
async fn llm_as_is_adds_no_retries_and_a_client_that_retries_itself_is_not_retried_again() {
    let runner = |llm: Arc<dyn LlmClient>, as_is: bool| {
        let builder = Runner::builder(config());
        if as_is { builder.llm_as_is(llm) } else { builder.llm(llm) }.build().unwrap()
    };
    for (client, as_is) in [(false, true), (true, false)] {
        let llm = Arc::new(ScriptedLlm::new().error(http(503, None)));
        let given: Arc<dyn LlmClient> = if client { Arc::new(RetriesItself(llm.clone())) } else { llm.clone() };
        let workflow = runner(given, as_is).run_plan(&say_hello()).await.unwrap();
        assert_eq!(workflow.state(), WorkflowState::Failed);
        assert_eq!(workflow.failure().unwrap().kind, FailureKind::Llm);
        assert_eq!(llm.requests().len(), 1, "the 503 was sent once");
        assert_eq!(workflow.usage().total.llm_calls, 0);
    }
}
