//! The retry loop, driven by a scripted fake operation on tokio's paused clock:
//! every wait is measured exactly and nothing really sleeps.

use std::time::Duration;

use portia::llm::LlmError;
use portia::llm::RetryPolicy;
use tokio::time::Instant;

/// What one attempt of the fake operation does.
#[derive(Debug, Clone)]
enum Step {
    Fail(LlmError),
    /// Never finishes: only a time limit ends it.
    Hang,
    Succeed,
}

/// Jitter off, so every wait is exact.
fn policy() -> RetryPolicy {
    RetryPolicy::default()
        .max_retries(5)
        .initial_backoff(Duration::from_secs(1))
        .max_backoff(Duration::from_secs(30))
        .jitter(0.0)
}

fn http(status: u16, retry_after: Option<Duration>) -> LlmError {
    LlmError::Http {
        provider: "fake".into(),
        model: "m".into(),
        status,
        message: format!("status {status}"),
        retry_after,
        key_var: None,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Runs `policy` over the scripted steps (the last one repeats) and returns the
/// outcome (the number of the attempt that succeeded) and when each attempt started.
async fn run(policy: &RetryPolicy, script: &[Step]) -> (Result<u32, LlmError>, Vec<Duration>) {
    let started = Instant::now();
    let mut starts = Vec::new();
    let result = policy
        .run("fake", "m", |attempt| {
            starts.push(started.elapsed());
            let index = usize::try_from(attempt).unwrap().min(script.len() - 1);
            let step = script[index].clone();
            async move {
                match step {
                    Step::Fail(error) => Err(error),
                    Step::Hang => std::future::pending().await,
                    Step::Succeed => Ok(attempt),
                }
            }
        })
        .await;
    (result, starts)
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_exactly_instead_of_the_backoff() {
    let script = [Step::Fail(http(429, Some(secs(7)))), Step::Succeed];
    let (result, starts) = run(&policy(), &script).await;
    assert_eq!(result, Ok(1));
    assert_eq!(starts, [secs(0), secs(7)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_capped() {
    let script = [Step::Fail(http(503, Some(secs(3600)))), Step::Succeed];
    let (result, starts) = run(&policy().max_retry_after(secs(60)), &script).await;
    assert_eq!(result, Ok(1));
    assert_eq!(starts, [secs(0), secs(60)]);
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_between_attempts() {
    let script = [Step::Fail(http(500, None)), Step::Fail(http(502, None)), Step::Fail(http(504, None)), Step::Succeed];
    let (result, starts) = run(&policy(), &script).await;
    assert_eq!(result, Ok(3));
    assert_eq!(starts, [secs(0), secs(1), secs(3), secs(7)]);
}

#[tokio::test(start_paused = true)]
async fn backoff_stops_growing_at_max_backoff() {
    let script = [Step::Fail(http(500, None))];
    let (result, starts) = run(&policy().max_backoff(secs(3)), &script).await;
    assert!(matches!(result, Err(LlmError::Http { status: 500, .. })), "{result:?}");
    assert_eq!(starts, [secs(0), secs(1), secs(3), secs(6), secs(9), secs(12)]);
}

#[tokio::test(start_paused = true)]
async fn jitter_only_shortens_waits_and_within_its_fraction() {
    let jittery = policy().jitter(0.5);
    let waits: Vec<Duration> = (0..200).map(|_| jittery.backoff(2)).collect();
    assert!(waits.iter().all(|w| *w >= secs(2) && *w <= secs(4)), "{waits:?}");
    assert!(waits.iter().any(|w| *w != waits[0]), "jitter must vary the waits");

    let script = [Step::Fail(http(500, None)), Step::Succeed];
    let (result, starts) = run(&jittery, &script).await;
    assert_eq!(result, Ok(1));
    assert!(starts[1] >= Duration::from_millis(500) && starts[1] <= secs(1), "{starts:?}");
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_retries_with_the_last_error() {
    let script = [
        Step::Fail(http(500, None)),
        Step::Fail(http(502, None)),
        Step::Fail(http(503, None)),
        Step::Fail(http(429, None)),
        Step::Succeed,
    ];
    let (result, starts) = run(&policy().max_retries(3), &script).await;
    assert_eq!(starts.len(), 4, "one attempt and three retries");
    assert!(matches!(result, Err(LlmError::Http { status: 429, .. })), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn zero_retries_means_one_attempt() {
    let (result, starts) = run(&policy().max_retries(0), &[Step::Fail(http(503, None))]).await;
    assert_eq!(starts, [secs(0)]);
    assert!(result.is_err());
}

#[tokio::test(start_paused = true)]
async fn errors_that_cannot_succeed_later_are_returned_at_once() {
    let permanent = [
        http(400, None),
        http(401, None),
        http(403, None),
        http(404, None),
        http(422, Some(secs(1))),
        LlmError::MissingApiKey { provider: "fake".into(), env_var: "FAKE_API_KEY".into() },
        LlmError::NotSent { provider: "fake".into(), model: "m".into(), message: "offline".into() },
        LlmError::Structured { schema: "S".into(), message: "bad".into() },
    ];
    for error in permanent {
        let (result, starts) = run(&policy(), &[Step::Fail(error.clone()), Step::Succeed]).await;
        assert_eq!(result, Err(error.clone()));
        assert_eq!(starts, [secs(0)], "{error:?} was retried");
    }
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried() {
    let transient = [
        http(408, None),
        http(409, None),
        http(429, None),
        http(500, None),
        http(502, None),
        http(503, None),
        http(504, None),
        http(529, None),
        LlmError::Connection { provider: "fake".into(), model: "m".into(), message: "connection reset".into() },
        LlmError::Timeout { provider: "fake".into(), model: "m".into(), after: secs(1) },
        LlmError::InvalidResponse { provider: "fake".into(), model: "m".into(), message: "not JSON".into() },
    ];
    for error in transient {
        assert!(error.is_retryable(), "{error:?}");
        let (result, starts) = run(&policy(), &[Step::Fail(error.clone()), Step::Succeed]).await;
        assert_eq!(result, Ok(1), "{error:?}");
        assert_eq!(starts, [secs(0), secs(1)], "{error:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_hung_attempt_is_cut_off_by_the_attempt_timeout_and_retried() {
    let script = [Step::Hang, Step::Succeed];
    let (result, starts) = run(&policy().attempt_timeout(Some(secs(10))), &script).await;
    assert_eq!(result, Ok(1));
    // Ten seconds of timeout, then the first backoff.
    assert_eq!(starts, [secs(0), secs(11)]);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_is_reported_as_a_timeout_when_retries_run_out() {
    let (result, starts) = run(&policy().max_retries(0).attempt_timeout(Some(secs(10))), &[Step::Hang]).await;
    assert_eq!(starts, [secs(0)]);
    assert!(matches!(result, Err(LlmError::Timeout { after, .. }) if after == secs(10)), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_hung_call() {
    let started = Instant::now();
    let (result, starts) = run(&policy().deadline(Some(secs(30))), &[Step::Hang]).await;
    assert_eq!(starts, [secs(0)]);
    assert_eq!(started.elapsed(), secs(30));
    assert!(matches!(result, Err(LlmError::Timeout { after, .. }) if after == secs(30)), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_shortens_the_last_attempt() {
    let started = Instant::now();
    let limits = policy().attempt_timeout(Some(secs(10))).deadline(Some(secs(15)));
    let (result, starts) = run(&limits, &[Step::Hang]).await;
    // Attempt 0 times out at 10 s, waits 1 s, attempt 1 gets the 4 s left.
    assert_eq!(starts, [secs(0), secs(11)]);
    assert_eq!(started.elapsed(), secs(15));
    assert!(matches!(result, Err(LlmError::Timeout { after, .. }) if after == secs(15)), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_when_its_wait_would_pass_the_deadline() {
    let started = Instant::now();
    let script = [Step::Fail(http(429, Some(secs(20)))), Step::Succeed];
    let (result, starts) = run(&policy().deadline(Some(secs(10))), &script).await;
    assert_eq!(starts, [secs(0)]);
    assert_eq!(started.elapsed(), secs(0), "it must not sleep before giving up");
    assert!(matches!(result, Err(LlmError::Http { status: 429, .. })), "{result:?}");
}
