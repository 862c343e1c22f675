//! One `tools/call` in flight: what the server's requests and notifications during
//! it reach (the step's LLM, a person, the workflow's events), and how long the
//! server may stay silent.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

#[allow(deprecated)] // Sampling: see sampling.rs.
use rmcp::model::{
    CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams, ElicitResult, ElicitationAction, ErrorData,
    ProgressNotificationParam, ProgressToken, RequestId,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::McpServerConfig;
use super::elicitation::{answer, question, stored_answer};
use crate::clarification::Clarification;
use crate::tool::ToolRunContext;

/// A call in flight, from before its request is sent until its result is in.
pub(crate) struct ActiveCall {
    ctx: ToolRunContext,
    elicitation_wait: Duration,
    quiet: Quiet,
    /// The request's id and progress token, once it is sent.
    sent: OnceLock<(RequestId, ProgressToken)>,
    /// Questions the server asked that nobody answered in time.
    asked: Mutex<Vec<Clarification>>,
}

impl ActiveCall {
    pub(crate) fn new(ctx: &ToolRunContext, config: &McpServerConfig) -> Self {
        Self {
            ctx: ctx.clone(),
            elicitation_wait: config.elicitation_wait,
            quiet: Quiet::new(config.timeout),
            sent: OnceLock::new(),
            asked: Mutex::default(),
        }
    }

    /// The context the tool runs in.
    pub(crate) fn ctx(&self) -> &ToolRunContext {
        &self.ctx
    }

    /// The step's LLM's answer to the server's sampling request.
    ///
    /// # Errors
    /// Without a step's LLM (a call made outside a run), or when it fails.
    #[allow(deprecated)] // Sampling: see sampling.rs.
    pub(crate) async fn sample(&self, params: &CreateMessageRequestParams) -> Result<CreateMessageResult, ErrorData> {
        let Some(llm) = &self.ctx.llm else {
            return Err(ErrorData::invalid_request(
                "sampling is answered only during a workflow step's tool call",
                None,
            ));
        };
        // The server waits on the LLM, so its silence meanwhile is no sign of trouble.
        let _paused = self.quiet.pause();
        super::sampling::answer(llm, params).await
    }

    /// Records that the request went out as `id` with `token`; the server's silence
    /// is counted from now.
    pub(crate) fn sent(&self, id: RequestId, token: ProgressToken) {
        let _ = self.sent.set((id, token));
        self.quiet.heard();
    }

    /// Whether this call's request is `id`.
    pub(crate) fn is_request(&self, id: &RequestId) -> bool {
        self.sent.get().is_some_and(|(sent, _)| sent == id)
    }

    /// Whether this call's progress reports carry `token`.
    pub(crate) fn reports_as(&self, token: &ProgressToken) -> bool {
        self.sent.get().is_some_and(|(_, sent)| sent == token)
    }

    /// A progress report of the server: an event of the workflow, and a sign of life.
    pub(crate) fn progress(&self, report: ProgressNotificationParam) {
        self.quiet.heard();
        self.ctx.events.progress(report.progress, report.total, report.message);
    }

    /// Resolves once the server has been silent for the call's timeout.
    pub(crate) async fn silent_too_long(&self) {
        self.quiet.expired().await;
    }

    /// The answer to the server's question: from the step's clarifications when a
    /// person answered it before (the call is being made again), else from a person
    /// asked now, for up to the server's `elicitationWaitSecs`. Unanswered, it is
    /// declined and kept for [`ActiveCall::asked`].
    pub(crate) async fn elicit(&self, server: &str, request: &ElicitRequestParams) -> ElicitResult {
        let question = question(server, self.ctx.workflow_id, request);
        if let Some(result) = stored_answer(&question, request, &self.ctx.clarifications) {
            return result;
        }
        let response = {
            // The server waits on the person, so its silence meanwhile is no sign of trouble.
            let _paused = self.quiet.pause();
            self.ctx.ask(question.clone(), self.elicitation_wait).await
        };
        match response {
            Some(response) => answer(&question, request, &response),
            None => {
                self.asked.lock().unwrap_or_else(PoisonError::into_inner).push(question);
                ElicitResult::new(ElicitationAction::Decline)
            }
        }
    }

    /// The questions left for a person.
    pub(crate) fn asked(&self) -> Vec<Clarification> {
        std::mem::take(&mut *self.asked.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// How long a server has been silent, for the call's timeout: the count restarts at
/// each sign of life and stops while a person answers the server's question.
struct Quiet {
    timeout: Duration,
    state: watch::Sender<Silence>,
}

#[derive(Debug, Clone, Copy)]
struct Silence {
    since: Instant,
    /// How many of the server's questions a person is answering now.
    paused: usize,
}

impl Quiet {
    fn new(timeout: Duration) -> Self {
        Self { timeout, state: watch::Sender::new(Silence { since: Instant::now(), paused: 0 }) }
    }

    fn heard(&self) {
        self.state.send_modify(|s| s.since = Instant::now());
    }

    fn pause(&self) -> Paused<'_> {
        self.state.send_modify(|s| s.paused += 1);
        Paused(self)
    }

    async fn expired(&self) {
        let mut changes = self.state.subscribe();
        loop {
            let silence = *changes.borrow_and_update();
            let deadline = silence.since + self.timeout;
            tokio::select! {
                () = tokio::time::sleep_until(deadline), if silence.paused == 0 => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The call is gone; its own end will be reported, not a timeout.
                        return std::future::pending().await;
                    }
                }
            }
        }
    }
}

/// Restarts the count when the person has answered (or the wait ended).
struct Paused<'a>(&'a Quiet);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.state.send_modify(|s| {
            s.paused = s.paused.saturating_sub(1);
            s.since = Instant::now();
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_expires_after_the_timeout_restarted_by_progress() {
        let quiet = Quiet::new(Duration::from_secs(10));
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        quiet.heard();
        quiet.expired().await;
        assert_eq!(started.elapsed(), Duration::from_secs(16));
    }

    #[tokio::test(start_paused = true)]
    async fn time_with_a_person_does_not_count() {
        let quiet = Arc::new(Quiet::new(Duration::from_secs(10)));
        let started = Instant::now();
        let paused = quiet.pause();
        let expiring = {
            let quiet = quiet.clone();
            tokio::spawn(async move { quiet.expired().await })
        };
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!expiring.is_finished(), "a person answering for 100 s is no timeout");
        drop(paused);
        expiring.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(110), "counted from the answer");
    }
}
