//! The LLM a run's steps and tools use: the runner's client inside a metering
//! layer. Every call is checked against the workflow's budget before it is made,
//! and its usage and cost are journaled as soon as it returns (so `usage` stays
//! exact across crashes) and counted in the run's tally. A stopped run makes no
//! new call. The layer sits outside any [`Retry`](crate::llm::Retry): a call is
//! checked once and journaled once, for the attempt that answered (failed attempts
//! return no usage to count).
//!
//! It also decides whether a call streams (see [`StreamMode`](crate::llm::StreamMode)),
//! and turns the pieces into events for subscribers only: the store keeps the
//! finished reply, as it does for an unstreamed one.
//!
//! A child workflow's run (a sub-plan or block step's) is metered under its
//! parent's meter: what it spends is reported up to its ancestors as each call
//! returns, and its budget check counts theirs, so one budget caps the whole tree
//! of runs, siblings running side by side included.
//!
//! A call that waits for the client-side rate limit (inside, below any fallback
//! and retries) is told here too, and becomes an [`EventKind::LlmCallThrottled`]
//! of the workflow.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::Runner;
use super::calls::{Stop, StopSignal, describe_stop};
use crate::config::Config;
use crate::events::{EventKind, RunEvents};
use crate::ids::WorkflowId;
use crate::llm::{
    Delta, Deltas, LimiterWaits, LlmClient, LlmError, LlmLayer, LlmRequest, LlmResponse, LlmSettings, NOTABLE_WAIT,
    forward,
};
use crate::storage::{Journal, Lease, UsageRecord};
use crate::workflow::{ChildUsage, WorkflowUsage};

/// The run's spending so far, shared by its metered clients.
#[derive(Debug, Clone)]
pub(super) struct Meter {
    journal: Arc<dyn Journal>,
    config: Arc<Config>,
    /// Where requests go: what prices and names each call.
    models: Arc<LlmSettings>,
    lease: Lease,
    signal: StopSignal,
    events: RunEvents,
    /// How many calls this run has made, to number streamed ones.
    calls: Arc<AtomicU64>,
    tally: Arc<Mutex<WorkflowUsage>>,
    /// When this run started (on tokio's clock, which tests can move), and how long
    /// earlier runs ran.
    started: Instant,
    ran_before: Duration,
    /// The meter of the run that started this one, for a child run.
    parent: Option<ParentMeter>,
}

/// The meter of a parent's run, as its child run sees it: where the child's
/// spending is reported, under the parent's step that ran it.
#[derive(Debug, Clone)]
pub(super) struct ParentMeter {
    meter: Box<Meter>,
    step_output: String,
}

impl ParentMeter {
    /// Records what `child` (the step's child workflow, as stored) has spent.
    pub(super) fn record(&self, child: &crate::workflow::Workflow) {
        self.meter.record_child(child.id(), ChildUsage::of(&self.step_output, child.usage()));
    }
}

impl Meter {
    pub(super) fn new(
        runner: &Runner,
        lease: Lease,
        signal: StopSignal,
        events: RunEvents,
        start: WorkflowUsage,
        parent: Option<ParentMeter>,
    ) -> Self {
        let ran_before = Duration::from_millis(start.running_ms);
        Self {
            journal: runner.storage().clone(),
            config: Arc::clone(&runner.inner.config),
            models: Arc::clone(&runner.inner.llm_settings),
            lease,
            signal,
            events,
            calls: Arc::default(),
            tally: Arc::new(Mutex::new(start)),
            started: Instant::now(),
            ran_before,
            parent,
        }
    }

    /// This meter as the parent of the child run of step `step_output`.
    pub(super) fn for_child(&self, step_output: &str) -> ParentMeter {
        ParentMeter { meter: Box::new(self.clone()), step_output: step_output.to_owned() }
    }

    /// Records what child workflow `child` has spent in all, replacing its earlier
    /// record, and tells this run's own parent.
    fn record_child(&self, child: WorkflowId, spent: ChildUsage) {
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        tally.record_child(child, spent);
        self.report_to_parent(&tally);
    }

    /// Tells the parent's meter (and through it every ancestor's) what this run has
    /// spent in all, `tally`, so that their usage and budget checks count it at
    /// once. Called under the lock of `tally`, so that two calls of this run
    /// finishing together report in the order they were counted (locks are only
    /// ever taken from child to parent).
    fn report_to_parent(&self, tally: &WorkflowUsage) {
        if let Some(parent) = &self.parent {
            parent.meter.record_child(self.lease.workflow_id, ChildUsage::of(&parent.step_output, tally));
        }
    }

    /// The layer that meters a client's calls and bills them to `step_output`
    /// (or, with `None`, to the run itself).
    pub(super) fn billing(&self, step_output: Option<&str>) -> Metering {
        Metering { meter: self.clone(), step_output: step_output.map(str::to_owned) }
    }

    /// Everything spent so far, planning and earlier runs included.
    pub(super) fn usage(&self) -> WorkflowUsage {
        let mut usage = self.tally.lock().unwrap_or_else(PoisonError::into_inner).clone();
        usage.running_ms = u64::try_from(self.running().as_millis()).unwrap_or(u64::MAX);
        usage
    }

    fn running(&self) -> Duration {
        self.ran_before + self.started.elapsed()
    }

    /// Stops the run when its budget is spent, or the budget of a run it is a
    /// child of (whose spending includes this one's); `true` if it is.
    pub(super) fn check_budget(&self) -> bool {
        let mut meter = Some(self);
        while let Some(current) = meter {
            if let Some(reason) = current.exceeded() {
                let reason = match current.lease.workflow_id {
                    id if id == self.lease.workflow_id => reason,
                    ancestor => format!("{reason} by workflow {ancestor} and its child workflows"),
                };
                self.signal.stop(Stop::Budget(reason));
                return true;
            }
            meter = current.parent.as_ref().map(|parent| &*parent.meter);
        }
        false
    }

    /// The first limit of the budget this run's spending (its children's included)
    /// has reached.
    fn exceeded(&self) -> Option<String> {
        // Read under the lock rather than copying the per-step usage on every call.
        let (total, cost_usd) = {
            let tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
            (tally.total, tally.cost_usd)
        };
        self.config.budget.exceeded(&total, cost_usd, self.running())
    }

    /// Whether `request` streams: a text reply (a structured one is JSON for the
    /// SDK, not words for a person) when the stream mode and the subscribers say so.
    fn streams(&self, request: &LlmRequest) -> bool {
        request.output_schema.is_none() && self.models.stream_mode().streams(self.events.watched())
    }

    /// Where the pieces of the next call go: out to subscribers as events, never
    /// into the store.
    fn deltas(&self, step_output: Option<&str>) -> Deltas {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let (events, workflow_id, step_output) =
            (self.events.clone(), self.lease.workflow_id, step_output.map(str::to_owned));
        Deltas::new(move |delta| {
            let step_output = step_output.clone();
            let kind = match delta {
                Delta::Text(text) => EventKind::LlmTextDelta { step_output, call, text },
                Delta::ToolArguments { index, tool, arguments } => {
                    EventKind::LlmToolCallDelta { step_output, call, index, tool_id: tool, arguments }
                }
                Delta::Restarted => EventKind::LlmStreamRestarted { step_output, call },
            };
            events.announce_only(workflow_id, kind);
        })
    }

    /// Where the call's waits for the rate limiter go: added up in `waited` (they
    /// are no part of the call's latency) and, when notable, into the workflow's events.
    fn waits(&self, step_output: Option<&str>, waited: Arc<Mutex<Duration>>) -> LimiterWaits {
        let (events, workflow_id, step_output) =
            (self.events.clone(), self.lease.workflow_id, step_output.map(str::to_owned));
        LimiterWaits::new(move |model, wait| {
            *waited.lock().unwrap_or_else(PoisonError::into_inner) += wait;
            if wait >= NOTABLE_WAIT {
                let waited_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                let model = model.model.clone();
                events.emit(
                    workflow_id,
                    EventKind::LlmCallThrottled { step_output: step_output.clone(), model, waited_ms },
                );
            }
        })
    }

    async fn record(&self, step_output: Option<&str>, model: String, response: &LlmResponse, took: Duration) {
        let cost_usd = self.config.prices.cost(&model, &response.usage);
        let step_output = step_output.map(str::to_owned);
        let finished = EventKind::LlmCallFinished {
            step_output: step_output.clone(),
            model,
            usage: response.usage,
            cost_usd,
            latency_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        };
        self.events.emit(self.lease.workflow_id, finished);
        let record = UsageRecord { workflow_id: self.lease.workflow_id, step_output, usage: response.usage, cost_usd };
        {
            let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
            tally.add(record.step_output.as_deref(), record.usage, cost_usd);
            self.report_to_parent(&tally);
        }
        match self.journal.record_usage(&self.lease, &record).await {
            Ok(()) => {}
            Err(crate::Error::LeaseLost { .. }) => self.signal.stop(Stop::LeaseLost),
            Err(e) => tracing::warn!(workflow = %self.lease.workflow_id, error = %e, "could not journal LLM usage"),
        }
    }
}

/// The metering layer: budget check before each call, usage journaled after.
#[derive(Debug, Clone)]
pub(super) struct Metering {
    meter: Meter,
    step_output: Option<String>,
}

impl LlmLayer for Metering {
    fn layer(&self, inner: Arc<dyn LlmClient>) -> Arc<dyn LlmClient> {
        Arc::new(MeteredLlm { inner, meter: self.meter.clone(), step_output: self.step_output.clone() })
    }
}

#[derive(Debug)]
struct MeteredLlm {
    inner: Arc<dyn LlmClient>,
    meter: Meter,
    step_output: Option<String>,
}

#[async_trait::async_trait]
impl LlmClient for MeteredLlm {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        self.metered(Cow::Owned(request)).await
    }

    async fn chat_ref(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        self.metered(Cow::Borrowed(request)).await
    }

    fn retries(&self) -> bool {
        self.inner.retries()
    }
}

impl MeteredLlm {
    /// Sends the request inside its span, and records what it cost once it is answered.
    async fn metered(&self, request: Cow<'_, LlmRequest>) -> Result<LlmResponse, LlmError> {
        self.meter.check_budget();
        if let Some(stop) = self.meter.signal.reason() {
            return Err(LlmError::Other(describe_stop(&stop)));
        }
        let model = self.meter.models.resolve(&request);
        let span = tracing::info_span!(
            "llm_call",
            otel.name = format!("chat {}", model.model),
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = %model.provider,
            gen_ai.request.model = %model.model,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
        );
        let started = Instant::now();
        let waited = Arc::new(Mutex::new(Duration::ZERO));
        let waits = self.meter.waits(self.step_output.as_deref(), Arc::clone(&waited));
        let call = if self.meter.streams(&request) {
            let deltas = self.meter.deltas(self.step_output.as_deref());
            waits.scope(deltas.scope(forward(self.inner.as_ref(), request).instrument(span.clone()))).await
        } else {
            waits.scope(forward(self.inner.as_ref(), request).instrument(span.clone())).await
        };
        let response = call?;
        span.record("gen_ai.usage.input_tokens", response.usage.prompt_tokens);
        span.record("gen_ai.usage.output_tokens", response.usage.completion_tokens);
        // A fallback model may have served the call: it is the one named and priced.
        let served = response.model.as_deref().map_or(model.model, |name| self.meter.models.model_ref(name).model);
        let waited = *waited.lock().unwrap_or_else(PoisonError::into_inner);
        self.meter
            .record(self.step_output.as_deref(), served, &response, started.elapsed().saturating_sub(waited))
            .await;
        Ok(response)
    }
}
