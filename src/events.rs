//! Events: what happens in a run, as it happens.
//!
//! Each change is announced once, from the one place it is made: the run's saves
//! (state changes), the step loop (steps, clarifications raised), the tool-call path
//! (tool calls), the metered LLM (LLM calls), the runner's answer to a
//! clarification, and a running tool that asks a person and gets the answer while
//! its call stays open ([`ToolRunContext::ask`](crate::tool::ToolRunContext::ask)). Subscribe with [`Runner::subscribe`](crate::Runner::subscribe) or
//! run with [`Runner::execute_workflow_stream`](crate::Runner::execute_workflow_stream).
//!
//! A subscriber never slows a run: events go out on a bounded broadcast channel, and
//! one that falls behind is told how many it missed ([`Missed`]) and goes on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::SharedValue;
use crate::call::{ToolCallKey, ToolCallStatus};
use crate::clarification::Clarification;
use crate::ids::{ClarificationId, PlanId, WorkflowId};
use crate::usage::Usage;
use crate::workflow::StepOutcome;
use crate::workflow::WorkflowState;

/// How many events a subscriber may fall behind before it misses some, by default.
pub const DEFAULT_CAPACITY: usize = 4096;

/// One thing that happened to a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkflowEvent {
    /// The workflow it happened to.
    pub workflow_id: WorkflowId,
    /// When (on this process's clock).
    pub at: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl WorkflowEvent {
    /// `kind` happening to `workflow_id` now.
    pub fn new(workflow_id: WorkflowId, kind: EventKind) -> Self {
        Self { workflow_id, at: Utc::now(), kind }
    }
}

/// What happened, tagged in JSON by `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The workflow moved to another state (and that was saved).
    StateChanged {
        /// The state before.
        from: WorkflowState,
        /// The state now.
        to: WorkflowState,
    },
    /// A step started.
    StepStarted {
        /// Its index in the plan.
        step: usize,
        /// Its task.
        task: String,
        /// Its tool, if it has one.
        tool_id: Option<String>,
    },
    /// A step ended: with its output, with questions for a human, or failed.
    StepFinished {
        /// Its index in the plan.
        step: usize,
        /// How it ended.
        outcome: StepOutcome,
    },
    /// One item of a `for_each` step ended (the step itself finishes once every
    /// item has, with the list of their outputs).
    LoopItemFinished {
        /// The step's index in the plan.
        step: usize,
        /// The item's index in the list, from 0.
        item: usize,
        /// How it ended.
        outcome: StepOutcome,
    },
    /// A sub-plan or block step started its child workflow (a resumed step that
    /// finds its child already started announces nothing new). For a block,
    /// `plan_id` is its [`block_plan`](crate::Plan::block_plan)'s.
    SubPlanStarted {
        /// The step's index in the plan.
        step: usize,
        /// The item, when the step is a `for_each` loop.
        item: Option<usize>,
        /// The child workflow.
        child: WorkflowId,
        /// The plan the child runs.
        plan_id: PlanId,
    },
    /// A tool call is about to be made (its intent is journaled).
    ToolCallStarted {
        /// Which call.
        call: ToolCallKey,
        /// The tool.
        tool_id: String,
        /// The arguments (shared with the journal's record, not copied).
        arguments: SharedValue,
    },
    /// A tool call ended, or its recorded outcome was replayed from the journal.
    ToolCallFinished {
        /// Which call.
        call: ToolCallKey,
        /// The tool.
        tool_id: String,
        /// How it ended.
        status: ToolCallStatus,
        /// The value, the clarifications or the error message (shared with the
        /// journal's record and the step's output, not copied).
        output: SharedValue,
        /// How long the tool took, in milliseconds (0 for a replay).
        latency_ms: u64,
        /// Whether the outcome came from the journal instead of a call.
        replayed: bool,
    },
    /// A running tool reported how far it has got (see [`ToolEvents::progress`]).
    ToolProgress {
        /// Which call.
        call: ToolCallKey,
        /// The tool.
        tool_id: String,
        /// How much is done, in the tool's own unit.
        progress: f64,
        /// How much there is in all, when the tool knows.
        total: Option<f64>,
        /// What it is doing, if it said.
        message: Option<String>,
    },
    /// An LLM call returned.
    LlmCallFinished {
        /// The step it was made for; `None` for the run itself (the final summary).
        step_output: Option<String>,
        /// The model that served it: the one asked, or the fallback model that
        /// answered when it was unavailable.
        model: String,
        /// What it spent.
        usage: Usage,
        /// What it cost, in US dollars.
        cost_usd: f64,
        /// How long it took, in milliseconds, leaving out any wait for the
        /// client-side rate limit ([`LlmCallThrottled`](Self::LlmCallThrottled)).
        latency_ms: u64,
    },
    /// An LLM call waited for the client-side rate limit (see
    /// [`RateLimit`](crate::llm::RateLimit)) before it was sent: its model's
    /// requests or tokens per minute were spent, or the provider had asked for a
    /// pause. Told once the wait is over, for waits of 50 ms or more; the wait does
    /// not count against the call's time limits. Stored like the call itself: it
    /// says where a run's time went, which is stored nowhere else.
    LlmCallThrottled {
        /// The step it was made for, as in [`LlmCallFinished`](Self::LlmCallFinished).
        step_output: Option<String>,
        /// The model whose limit it waited for.
        model: String,
        /// How long it waited, in milliseconds.
        waited_ms: u64,
    },
    /// A piece of an LLM reply's text as it streams in (see
    /// [`StreamMode`](crate::llm::StreamMode)). Announced to subscribers only, never
    /// stored: the finished text is kept as today, in the step's output and the
    /// [`LlmCallFinished`](Self::LlmCallFinished) that ends the call.
    LlmTextDelta {
        /// The step it was made for, as in [`LlmCallFinished`](Self::LlmCallFinished).
        step_output: Option<String>,
        /// The call, numbered from 1 within this run of the workflow.
        call: u64,
        /// The new text.
        text: String,
    },
    /// A piece of the arguments of a tool call an LLM reply makes, as it streams in
    /// (see [`StreamMode`](crate::llm::StreamMode)). The first piece of each call
    /// may be empty: it names the call before its arguments come. Announced to
    /// subscribers only, never stored: the call itself is stored when it is made
    /// ([`ToolCallStarted`](Self::ToolCallStarted)).
    LlmToolCallDelta {
        /// The step it was made for, as in [`LlmCallFinished`](Self::LlmCallFinished).
        step_output: Option<String>,
        /// The LLM call, as in [`LlmTextDelta`](Self::LlmTextDelta).
        call: u64,
        /// Which of the reply's tool calls, as the provider numbers them: the same
        /// for every piece of one call (not always from 0).
        index: usize,
        /// The tool the model calls.
        tool_id: String,
        /// The next piece of the arguments' JSON text: the pieces of one call,
        /// joined, are its arguments.
        arguments: String,
    },
    /// A streamed LLM call starts over (an attempt broke and is retried, or a
    /// fallback model takes it): the text and tool-call arguments this call has
    /// streamed so far are void.
    /// Announced to subscribers only, never stored.
    LlmStreamRestarted {
        /// The step it was made for.
        step_output: Option<String>,
        /// The call, as in [`LlmTextDelta`](Self::LlmTextDelta).
        call: u64,
    },
    /// A step asked a human: when it ended, or, for a question a running tool asks
    /// while its call waits, at once (announced once either way).
    ClarificationRaised {
        /// The question, boxed: it is several times the size of any other event's
        /// fields, and every event stored or sent takes the size of the largest.
        clarification: Box<Clarification>,
    },
    /// A human answered.
    ClarificationResolved {
        /// The question answered.
        clarification_id: ClarificationId,
        /// The answer.
        response: Value,
    },
}

impl EventKind {
    /// Whether this event is only announced, never stored: the pieces of a
    /// streamed reply ([`LlmTextDelta`](Self::LlmTextDelta),
    /// [`LlmToolCallDelta`](Self::LlmToolCallDelta),
    /// [`LlmStreamRestarted`](Self::LlmStreamRestarted)), whose whole is stored by
    /// the events that follow them.
    pub fn is_live_only(&self) -> bool {
        matches!(self, Self::LlmTextDelta { .. } | Self::LlmToolCallDelta { .. } | Self::LlmStreamRestarted { .. })
    }

    /// Whether this event leaves the workflow at rest: finished, or waiting for a human.
    pub fn is_rest(&self) -> bool {
        matches!(self, Self::StateChanged { to, .. } if to.is_terminal() || *to == WorkflowState::NeedClarification)
    }
}

/// An event as kept in the store, numbered in the order it happened to its workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredEvent {
    /// Its place among the workflow's events, from 1.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: WorkflowEvent,
}

impl StoredEvent {
    /// `event`, stored as the workflow's `seq`th.
    pub fn new(seq: u64, event: WorkflowEvent) -> Self {
        Self { seq, event }
    }
}

/// A subscriber fell behind and `0` events were dropped for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} events were missed: the subscriber fell behind")]
pub struct Missed(pub u64);

/// Where a runner's events go out.
#[derive(Debug, Clone)]
pub(crate) struct EventSink {
    sender: broadcast::Sender<WorkflowEvent>,
    /// How many subscribers hear events without watching the runs: they want
    /// to know that something changed, not to see replies stream.
    unwatching: Arc<AtomicUsize>,
}

impl EventSink {
    /// A sink whose subscribers may fall `capacity` events behind.
    pub(crate) fn new(capacity: usize) -> Self {
        Self { sender: broadcast::channel(capacity.max(1)).0, unwatching: Arc::default() }
    }

    /// A stream of every event from now on, or of one workflow's.
    pub(crate) fn subscribe(&self, only: Option<WorkflowId>) -> EventStream {
        EventStream { rx: self.sender.subscribe(), only, rested: false, _unwatching: None }
    }

    /// A stream of every event from now on that does not count as watching: no
    /// reply is streamed for its sake (see [`StreamMode`](crate::llm::StreamMode)).
    #[cfg(feature = "server")]
    pub(crate) fn subscribe_unwatching(&self) -> EventStream {
        self.unwatching.fetch_add(1, Ordering::Relaxed);
        let guard = Unwatching(Arc::clone(&self.unwatching));
        EventStream { rx: self.sender.subscribe(), only: None, rested: false, _unwatching: Some(guard) }
    }

    fn send(&self, event: WorkflowEvent) {
        let _ = self.sender.send(event);
    }

    /// A sink for one run: it also keeps what it announces until the run's next
    /// save stores it.
    pub(crate) fn for_run(&self) -> RunEvents {
        RunEvents { sink: self.clone(), pending: Arc::default() }
    }
}

/// A run's events: announced at once, stored with the run's next save.
#[derive(Debug, Clone)]
pub(crate) struct RunEvents {
    sink: EventSink,
    pending: Arc<Mutex<Vec<WorkflowEvent>>>,
}

impl RunEvents {
    /// Announces `kind` now and keeps it for the next save.
    pub(crate) fn emit(&self, workflow_id: WorkflowId, kind: EventKind) {
        let event = WorkflowEvent::new(workflow_id, kind);
        // A copy only for subscribers: a tool call's event carries its whole output.
        if self.sink.sender.receiver_count() > 0 {
            self.sink.send(event.clone());
        }
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).push(event);
    }

    /// Announces `kind` now without keeping it: for streamed pieces whose whole is
    /// stored by other events.
    pub(crate) fn announce_only(&self, workflow_id: WorkflowId, kind: EventKind) {
        self.sink.send(WorkflowEvent::new(workflow_id, kind));
    }

    /// Whether anyone subscribes to the runner's events now.
    pub(crate) fn watched(&self) -> bool {
        self.sink.sender.receiver_count() > self.sink.unwatching.load(Ordering::Relaxed)
    }

    /// Keeps `kind` for the next save, to announce once that save succeeded.
    pub(crate) fn stage(&self, workflow_id: WorkflowId, kind: EventKind) -> WorkflowEvent {
        let event = WorkflowEvent::new(workflow_id, kind);
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).push(event.clone());
        event
    }

    /// Announces an event that was staged and is now stored.
    pub(crate) fn announce(&self, event: WorkflowEvent) {
        self.sink.send(event);
    }

    /// The events kept since the last save, to store now.
    pub(crate) fn take(&self) -> Vec<WorkflowEvent> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Where a running tool reports its progress: given to it as
/// [`ToolRunContext::events`](crate::tool::ToolRunContext::events).
///
/// Each report is a [`EventKind::ToolProgress`] event of the workflow, announced at
/// once and stored with the run's next save, so report milestones rather than every
/// byte. A context made outside a run (in a unit test, say) reports nowhere.
#[derive(Debug, Clone, Default)]
pub struct ToolEvents(Option<ToolCallEvents>);

#[derive(Debug, Clone)]
struct ToolCallEvents {
    run: RunEvents,
    call: ToolCallKey,
    tool_id: String,
}

impl ToolEvents {
    /// The events of call `call` of `tool_id`, going out through `run`.
    pub(crate) fn for_call(run: RunEvents, call: ToolCallKey, tool_id: &str) -> Self {
        Self(Some(ToolCallEvents { run, call, tool_id: tool_id.to_owned() }))
    }

    /// Reports that `progress` of `total` (when known) is done, with what the tool is
    /// doing, as MCP's progress notifications do.
    pub fn progress(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        let Some(call) = &self.0 else { return };
        let kind = EventKind::ToolProgress { call: call.call, tool_id: call.tool_id.clone(), progress, total, message };
        call.run.emit(call.call.workflow_id, kind);
    }
}

/// Events as they happen. Made by [`Runner::subscribe`](crate::Runner::subscribe).
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<WorkflowEvent>,
    only: Option<WorkflowId>,
    rested: bool,
    _unwatching: Option<Unwatching>,
}

/// An unwatching subscriber's place in the count, given up when it is dropped.
#[derive(Debug)]
struct Unwatching(Arc<AtomicUsize>);

impl Drop for Unwatching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EventStream {
    /// The next event. `Some(Err(Missed(n)))` when this subscriber fell behind and
    /// `n` events were dropped; it goes on with the next one. `None` when the runner
    /// is gone, or, for one workflow's stream, once that workflow is at rest
    /// (finished, or waiting for a human).
    pub async fn next(&mut self) -> Option<Result<WorkflowEvent, Missed>> {
        if self.rested {
            return None;
        }
        loop {
            match self.rx.recv().await {
                Ok(event) if self.only.is_some_and(|id| id != event.workflow_id) => {}
                Ok(event) => {
                    self.rested = self.only.is_some() && event.kind.is_rest();
                    return Some(Ok(event));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Err(Missed(n))),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_event_takes_no_more_room_than_its_usual_kinds() {
        // Every event takes the size of the largest kind, and a store keeps every
        // event of every workflow it keeps; a clarification held inline doubled it.
        let size = std::mem::size_of::<StoredEvent>();
        assert!(size <= 160, "a stored event takes {size} bytes");
    }
}
