//! The one path every tool call takes: the intent is journaled before the tool is
//! called and the outcome after it returns, so a resumed run replays finished calls
//! instead of repeating them, and never silently repeats a call whose outcome is
//! unknown. A read-only tool's call, which a resumed run would make again anyway
//! had only its intent been journaled, is journaled once, with its outcome (unless
//! hooks decide it, or an interrupted run journaled it).
//!
//! A call that fails on the service's side (a soft error with a
//! [`RetryHint`](crate::tool::RetryHint)) is sent again with the same arguments,
//! after a backoff, only when that cannot repeat a side effect: the tool is
//! idempotent, or the hint says the call did not take place. Each re-send is a new
//! journaled call.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agent::{PastCall, StepCalls};
use crate::clarification::{CallVerdict, Clarification, ClarificationKind};
use crate::events::{EventKind, RunEvents, ToolEvents};
use crate::hooks::{HookChain, ToolCallDecision, ToolCallRequest};
use crate::live::{LiveQuestions, StepQuestions};
use crate::llm::RetryPolicy;
use crate::storage::{Journal, Lease, ToolCallKey, ToolCallRecord, ToolCallStatus};
use crate::tool::{Tool, ToolError, ToolOutput, ToolRunContext, ToolSpec};

/// Why a run must stop before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Someone asked for it, with this reason.
    Cancelled(String),
    /// The lease expired or was taken over: the run may write nothing more.
    LeaseLost,
    /// The process running it is stopping (a worker's shutdown, an interrupt); the
    /// workflow is left to be resumed.
    Shutdown,
    /// The workflow spent its budget; the reason names the limit and the figure.
    Budget(String),
}

/// Tells a run, and the tools it is running, to stop.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopSignal {
    token: CancellationToken,
    reason: Arc<Mutex<Option<Stop>>>,
    /// The signal of the run this one is a sub-plan of: stopping it stops this one.
    parent: Option<Box<StopSignal>>,
}

impl StopSignal {
    /// Stops the run; the first reason given wins.
    pub(crate) fn stop(&self, why: Stop) {
        self.reason.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(why);
        self.token.cancel();
    }

    /// Why the run was told to stop, if it was: its own reason first, else its
    /// parent's. A parent that lost its lease leaves the child's lease intact, so
    /// the child stops as at a shutdown, to be resumed with its parent.
    pub(crate) fn reason(&self) -> Option<Stop> {
        let own = self.reason.lock().unwrap_or_else(PoisonError::into_inner).clone();
        own.or_else(|| match self.parent.as_ref()?.reason()? {
            Stop::LeaseLost => Some(Stop::Shutdown),
            other => Some(other),
        })
    }

    /// The signal of a child run (a sub-plan's workflow): it stops, for the same
    /// reason, when this one does, and can also be stopped on its own.
    pub(crate) fn child(&self) -> StopSignal {
        StopSignal { token: self.token.child_token(), reason: Arc::default(), parent: Some(Box::new(self.clone())) }
    }

    /// The token running tools watch.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// A step's journaled access to its tool calls.
#[derive(Debug, Clone)]
pub(crate) struct ToolCalls {
    journal: Arc<dyn Journal>,
    lease: Lease,
    signal: StopSignal,
    hooks: HookChain,
    events: RunEvents,
    retry: RetryPolicy,
    step: usize,
    attempt: u32,
    next_seq: Arc<AtomicU32>,
    /// The calls this attempt of the step journaled before (in an earlier, interrupted run).
    journaled: Arc<Vec<ToolCallRecord>>,
    /// The calls earlier attempts of the step made (before a question it asked).
    earlier: Arc<Vec<ToolCallRecord>>,
    /// The call whose tool asked the question that ended the step's last attempt,
    /// and the call of this attempt that makes it anew, once one does (see
    /// [`ToolCallRequest::remakes`]).
    remade: Arc<(Option<ToolCallRecord>, Mutex<Option<ToolCallKey>>)>,
    /// Where a running tool's question waits for a person's answer.
    live: LiveQuestions,
    /// What this step's tools asked a person while their calls were open.
    questions: StepQuestions,
}

/// What the run gives a step's tool calls.
#[derive(Debug, Clone)]
pub(crate) struct CallServices {
    /// Where the calls are journaled.
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) lease: Lease,
    pub(crate) signal: StopSignal,
    pub(crate) hooks: HookChain,
    pub(crate) events: RunEvents,
    /// How failed calls are sent again.
    pub(crate) retry: RetryPolicy,
    /// Where running tools' questions wait for a person.
    pub(crate) live: LiveQuestions,
}

#[async_trait::async_trait]
impl StepCalls for ToolCalls {
    fn journaled_call(&self) -> Option<(String, Value)> {
        let seq = self.next_seq.load(Ordering::SeqCst);
        self.journaled.iter().find(|r| r.key.seq == seq).map(|r| (r.tool_id.clone(), Value::clone(&r.input)))
    }

    fn earlier_calls(&self) -> Vec<PastCall> {
        let finished = self.earlier.iter().filter_map(|r| Some((r, r.outcome()?)));
        finished
            .map(|(r, outcome)| PastCall { tool_id: r.tool_id.clone(), args: Value::clone(&r.input), outcome })
            .collect()
    }

    fn cancellation(&self) -> CancellationToken {
        self.signal.token().clone()
    }

    async fn call(
        &self,
        tool: &dyn Tool,
        spec: &ToolSpec,
        context: &ToolRunContext,
        args: Value,
    ) -> Result<ToolOutput, ToolError> {
        let policy = &self.retry;
        let mut retry = 0;
        loop {
            let result = self.call_once(tool, spec, context.clone(), args.clone()).await;
            let (message, hint) = match result {
                Err(ToolError::Transient { message, hint }) => (message, Some(hint)),
                Err(ToolError::Soft(message)) => (message, None),
                other => return other,
            };
            // An interrupted run that sent the same call again next is replayed as it went.
            let resent_before = self.journaled_args().as_ref() == Some(&args);
            let hint = hint.filter(|hint| spec.idempotent || hint.not_performed);
            if !resent_before {
                let Some(hint) = hint else { return Err(ToolError::Soft(message)) };
                if retry >= policy.retries() {
                    let tries = retry + 1;
                    return Err(ToolError::RetriesExhausted(format!(
                        "{message} (gave up after {tries} tries; PORTIA_MAX_RETRIES sets how many re-sends are made)"
                    )));
                }
                let wait = policy.wait(retry, hint.retry_after);
                tracing::warn!(tool = %spec.id, retry, wait_ms = wait.as_millis() as u64, error = %message, "sending the tool call again");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.signal.token().cancelled() => {}
                }
            }
            retry += 1;
        }
    }
}

/// What of a call the journal holds before its outcome is known.
#[derive(Debug, Clone, Copy)]
enum Journaled {
    /// Its intent.
    Intent,
    /// Nothing: the call is journaled once it is over.
    Nothing,
}

/// What to do with a call whose intent was journaled and whose outcome is not.
enum Unknown {
    Call,
    Done(Value),
    Ask(Box<Clarification>),
}

impl ToolCalls {
    /// The calls of attempt `attempt` of step `step`: `journaled` are its own calls
    /// from an interrupted run, `earlier` those of the step's earlier attempts.
    pub(crate) fn new(
        services: CallServices,
        (step, attempt): (usize, u32),
        journaled: Vec<ToolCallRecord>,
        earlier: Vec<ToolCallRecord>,
    ) -> Self {
        let CallServices { journal, lease, signal, hooks, events, retry, live } = services;
        let next_seq = Arc::new(AtomicU32::new(0));
        let asked = earlier.iter().filter(|r| r.status == ToolCallStatus::NeedClarification).max_by_key(|r| r.key);
        let remade = Arc::new((asked.cloned(), Mutex::new(None)));
        let (journaled, earlier) = (Arc::new(journaled), Arc::new(earlier));
        let questions = StepQuestions::default();
        Self {
            journal,
            lease,
            signal,
            hooks,
            events,
            retry,
            step,
            attempt,
            next_seq,
            journaled,
            earlier,
            remade,
            live,
            questions,
        }
    }

    /// The call of an earlier attempt that call `key` (of `spec` with `args`) makes
    /// anew: the one whose tool asked the question that ended the last attempt, if
    /// it has the same tool and arguments and no other call of this attempt claimed
    /// it first (calls may run at once: the claim and the check are one step).
    fn remakes(&self, spec: &ToolSpec, args: &Value, key: ToolCallKey) -> Option<&ToolCallRecord> {
        let (asked, claimed_by) = &*self.remade;
        let asked = asked.as_ref().filter(|r| r.tool_id == spec.id && *r.input == *args)?;
        let mut claimed_by = claimed_by.lock().unwrap_or_else(PoisonError::into_inner);
        (*claimed_by.get_or_insert(key) == key).then_some(asked)
    }

    /// The questions this step's tools asked a person while their calls were open,
    /// for the runner to store with the step's outcome.
    pub(crate) fn questions(&self) -> StepQuestions {
        self.questions.clone()
    }

    /// Makes one journaled call of `tool` with `args`: replayed when its outcome is
    /// recorded, decided by the hooks when it is new or held, made, and recorded.
    async fn call_once(
        &self,
        tool: &dyn Tool,
        spec: &ToolSpec,
        run_ctx: ToolRunContext,
        args: Value,
    ) -> Result<ToolOutput, ToolError> {
        if let Some(stop) = self.signal.reason() {
            return Err(ToolError::hard(describe_stop(&stop)));
        }
        let key = ToolCallKey {
            workflow_id: self.lease.workflow_id,
            step: self.step,
            attempt: self.attempt,
            seq: self.next_seq.fetch_add(1, Ordering::SeqCst),
        };
        let end_user = run_ctx.execution_context.end_user_id.clone();
        let mut intent = ToolCallRecord::intent(key, &spec.id, end_user, args);
        if self.outcome_only(spec, key) {
            return self.make(tool, spec, run_ctx, intent, Journaled::Nothing).await;
        }
        if !self.hooks.is_empty() {
            // Undecided until the hooks have spoken: a crash meanwhile leaves a call
            // that was certainly not made.
            intent.status = ToolCallStatus::Held;
        }
        let earlier = self.journal.begin_tool_call(&self.lease, &intent).await.map_err(|e| self.unjournaled(e))?;
        let record = match earlier {
            None => intent,
            Some(earlier) if earlier.status == ToolCallStatus::Held => earlier,
            Some(earlier) => return self.resume(tool, spec, run_ctx, earlier).await,
        };
        if record.status == ToolCallStatus::Held {
            return self.decide(tool, spec, run_ctx, record).await;
        }
        self.make(tool, spec, run_ctx, record, Journaled::Intent).await
    }

    /// Whether call `key` of `spec`'s tool is journaled only once it is over: when
    /// the tool is read-only. A resumed run calls it again whether the journal holds
    /// its intent or nothing, so the intent's write is spared; what is given up is
    /// only the arguments of a call cut short, which the model then chooses again.
    /// A tool with side effects keeps its intent, so that an idempotent one is sent
    /// again with the very arguments its idempotency key was first sent with. Not
    /// either when hooks decide the call (their verdict is journaled), nor when an
    /// interrupted run journaled this call (it is resumed from that record).
    fn outcome_only(&self, spec: &ToolSpec, key: ToolCallKey) -> bool {
        let read_only = spec.idempotent && !spec.side_effects;
        read_only && self.hooks.is_empty() && !self.journaled.iter().any(|r| r.key.seq == key.seq)
    }

    /// A call an interrupted run journaled: its outcome replayed, or, unknown, made
    /// again only where that is safe.
    async fn resume(
        &self,
        tool: &dyn Tool,
        spec: &ToolSpec,
        run_ctx: ToolRunContext,
        earlier: ToolCallRecord,
    ) -> Result<ToolOutput, ToolError> {
        if let Some(outcome) = earlier.outcome() {
            tracing::info!(tool = %spec.id, call = %earlier.key, "replaying a journaled tool call");
            self.announce_finished(&earlier, true);
            return outcome;
        }
        match unknown_outcome(spec, &earlier, &run_ctx.clarifications) {
            Unknown::Call => self.make(tool, spec, run_ctx, earlier, Journaled::Intent).await,
            Unknown::Done(value) => {
                self.finish(earlier, Ok(ToolOutput::Value(value.into())), 0.0, Journaled::Intent).await
            }
            Unknown::Ask(clarification) => Ok(ToolOutput::clarification(*clarification)),
        }
    }

    /// Lets the hooks decide a held call: make it (perhaps with other arguments),
    /// hold it for a human's answer, or refuse it.
    async fn decide(
        &self,
        tool: &dyn Tool,
        spec: &ToolSpec,
        run_ctx: ToolRunContext,
        mut record: ToolCallRecord,
    ) -> Result<ToolOutput, ToolError> {
        let remakes = self.remakes(spec, &record.input, record.key);
        let request = ToolCallRequest {
            spec,
            arguments: &record.input,
            call: record.key,
            clarifications: &run_ctx.clarifications,
            execution_context: &run_ctx.execution_context,
            remakes,
        };
        let decision = match self.hooks.before_tool_call(&request).await {
            Ok(decision) => decision,
            Err(e) => return self.finish(record, Err(ToolError::Hook(e.0)), 0.0, Journaled::Intent).await,
        };
        match decision {
            ToolCallDecision::Ask(mut question) => {
                question.tool_call = Some(record.key);
                return Ok(ToolOutput::clarification(*question));
            }
            ToolCallDecision::Deny(reason) => {
                return self.finish(record, Err(ToolError::Denied(reason)), 0.0, Journaled::Intent).await;
            }
            ToolCallDecision::ProceedWith(arguments) => record.input = arguments.into(),
            ToolCallDecision::Proceed => {}
        }
        // Decided: from now on a crash leaves a call that may have been made.
        record.status = ToolCallStatus::Started;
        self.journal.finish_tool_call(&self.lease, &record).await.map_err(|e| self.unjournaled(e))?;
        self.make(tool, spec, run_ctx, record, Journaled::Intent).await
    }

    /// Calls the tool and records the outcome; `journaled` says whether the call's
    /// record is stored yet.
    async fn make(
        &self,
        tool: &dyn Tool,
        spec: &ToolSpec,
        mut run_ctx: ToolRunContext,
        record: ToolCallRecord,
        journaled: Journaled,
    ) -> Result<ToolOutput, ToolError> {
        let key = record.key;
        self.events.emit(
            key.workflow_id,
            EventKind::ToolCallStarted { call: key, tool_id: spec.id.clone(), arguments: record.input.clone() },
        );
        run_ctx.idempotency_key = Some(key.to_string());
        run_ctx.cancellation = self.cancellation();
        run_ctx.events = ToolEvents::for_call(self.events.clone(), key, &spec.id);
        run_ctx.set_asker(self.live.asker(self.events.clone(), key, self.questions.clone()));
        let span = tracing::info_span!(
            "tool_call",
            otel.name = format!("execute_tool {}", spec.id),
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = %spec.id,
            gen_ai.tool.call.id = %key,
        );
        let started = Instant::now();
        let result = tool.run(&run_ctx, Value::clone(&record.input)).instrument(span).await;
        let arguments = record.input.clone();
        let outcome = self.finish(record, result, started.elapsed().as_secs_f64(), journaled).await;
        let request = ToolCallRequest {
            spec,
            arguments: &arguments,
            call: key,
            clarifications: &run_ctx.clarifications,
            execution_context: &run_ctx.execution_context,
            remakes: self.remakes(spec, &arguments, key),
        };
        // The call happened and is recorded whatever the hook says; only the step fails.
        match self.hooks.after_tool_call(&request, &outcome).await {
            Ok(()) => outcome,
            Err(e) => Err(ToolError::Hook(e.0)),
        }
    }

    async fn finish(
        &self,
        record: ToolCallRecord,
        result: Result<ToolOutput, ToolError>,
        latency: f64,
        journaled: Journaled,
    ) -> Result<ToolOutput, ToolError> {
        let record = record.finished(&result, latency);
        tracing::debug!(tool = %record.tool_id, call = %record.key, status = ?record.status, "tool called");
        let written = match journaled {
            Journaled::Intent => self.journal.finish_tool_call(&self.lease, &record).await,
            // Stored whole: no record has this key (see `outcome_only`).
            Journaled::Nothing => match self.journal.begin_tool_call(&self.lease, &record).await {
                Ok(Some(_)) => {
                    tracing::warn!(call = %record.key, "a record of this call was journaled meanwhile; it is kept");
                    Ok(())
                }
                written => written.map(drop),
            },
        };
        written.map_err(|e| self.unjournaled(e))?;
        self.announce_finished(&record, false);
        result
    }

    fn announce_finished(&self, record: &ToolCallRecord, replayed: bool) {
        let latency_ms = record.latency_seconds.map_or(0, |s| (s * 1000.0).round() as u64);
        let kind = EventKind::ToolCallFinished {
            call: record.key,
            tool_id: record.tool_id.clone(),
            status: record.status,
            output: record.output.clone(),
            latency_ms: if replayed { 0 } else { latency_ms },
            replayed,
        };
        self.events.emit(record.key.workflow_id, kind);
    }

    /// A journal write failed: the call must not go ahead (or its outcome is not
    /// kept), so the step fails; a lost lease stops the whole run.
    fn unjournaled(&self, error: crate::Error) -> ToolError {
        if matches!(error, crate::Error::LeaseLost { .. }) {
            self.signal.stop(Stop::LeaseLost);
        }
        ToolError::hard(format!("the tool call could not be journaled: {error}"))
    }
}

/// A call that may have been made already is made again only when the tool says
/// that is safe, or when a person has said so; otherwise a person is asked.
fn unknown_outcome(spec: &ToolSpec, record: &ToolCallRecord, clarifications: &[Clarification]) -> Unknown {
    if spec.idempotent {
        tracing::info!(tool = %spec.id, call = %record.key, "calling an idempotent tool again after an interruption");
        return Unknown::Call;
    }
    let asked = clarifications
        .iter()
        .rev()
        .find(|c| matches!(&c.kind, ClarificationKind::ToolCallOutcome { call, .. } if *call == record.key));
    match asked.and_then(Clarification::call_verdict) {
        Some(CallVerdict::Retry) => Unknown::Call,
        Some(CallVerdict::Done(value)) => {
            Unknown::Done(value.unwrap_or_else(|| Value::from("A person confirmed that this call took effect.")))
        }
        None => Unknown::Ask(Box::new(Clarification::tool_call_outcome(
            record.key,
            &record.tool_id,
            Value::clone(&record.input),
        ))),
    }
}

/// What a stopped run tells the tool call it will not make.
pub(crate) fn describe_stop(stop: &Stop) -> String {
    match stop {
        Stop::Cancelled(reason) => format!("the workflow was cancelled: {reason}"),
        Stop::LeaseLost => "the run lost its lease on the workflow".to_owned(),
        Stop::Shutdown => "the process running the workflow is stopping; it can be resumed".to_owned(),
        Stop::Budget(reason) => format!("the workflow's budget is spent: {reason}"),
    }
}
