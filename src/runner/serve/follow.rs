//! Server-Sent Events: a workflow's stored events as AG-UI events, the history
//! first, then live from whichever process runs it; and the AG-UI endpoint that
//! starts (or resumes) a run from a `RunAgentInput`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::agui::Translator;
use super::auth::Caller;
use super::errors::{ApiError, Body, ErrorBody, PathParams};
use super::router::AppState;
use crate::Error;
use crate::events::{EventKind, EventStream, WorkflowEvent};
use crate::execution_context::ExecutionContext;
use crate::ids::WorkflowId;
use crate::workflow::{Workflow, WorkflowState};

/// The longest a stream waits before reading the store again though nothing woke it.
const RECHECK: Duration = Duration::from_secs(5);

/// Where a stream starts and when it ends.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventParams {
    /// Start after this event: the `id` of the last event received, as
    /// `Last-Event-ID` would give it (which takes precedence).
    after: Option<String>,
    /// `rest`: end once a run rests (waits for a human or ends), not only once the
    /// workflow is finished.
    until: Option<String>,
}

/// A workflow's events as AG-UI 1.0 events over Server-Sent Events; each event's
/// `id` starts with the number of the stored event it comes from, so `Last-Event-ID`
/// resumes a dropped stream with nothing missed or repeated (and, after a `/`,
/// carries over the streamed tool calls, so the resumed stream keeps their ids).
#[utoipa::path(get, path = "/v1/workflows/{id}/events", params(("id" = String, Path, description = "The workflow's id"), EventParams),
    tag = "workflows",
    responses((status = 200, description = "AG-UI events", content_type = "text/event-stream", body = String),
              (status = 400, description = "Not a workflow id, an event id this stream never sent, or an unknown `until`", body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(super) async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<String>,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let workflow = state.visible(&caller, &id).await?;
    let header = headers.get("last-event-id").map(|v| v.to_str().unwrap_or_default().to_owned());
    // An empty id is none: a client that has seen nothing yet may send one.
    let given = header.or(params.after).filter(|id| !id.trim().is_empty());
    let last_id = match given.as_deref().map(|text| (text, LastEventId::parse(text))) {
        None => None,
        Some((_, Some(last_id))) => Some(last_id),
        Some((text, None)) => {
            let message =
                format!("{text:?} is not an event id this stream sent; give the `id` of the last event received");
            return Err(ApiError::bad_request(message));
        }
    };
    let after = last_id.as_ref().map_or(0, |l| l.seq);
    let until_rest = match params.until.as_deref() {
        None | Some("end") => false,
        Some("rest") => true,
        Some(other) => return Err(ApiError::bad_request(format!("`until` is `rest` or `end`, not {other:?}"))),
    };
    let carried = last_id.map(|l| l.carried).unwrap_or_default();
    let translator = Translator::new(workflow.id().to_string());
    let follow = Follow::start(state, workflow.id(), (after, &carried), translator, None, until_rest).await?;
    Ok(sse(follow))
}

/// An event's SSE id: the number of the last stored event the client has, and,
/// after a `/`, what the stream carries over for a resumed one (see
/// [`Translator::carried`]).
#[derive(Debug)]
struct LastEventId {
    seq: u64,
    carried: String,
}

impl LastEventId {
    fn parse(text: &str) -> Option<Self> {
        let (seq, carried) = text.trim().split_once('/').unwrap_or((text.trim(), ""));
        Some(Self { seq: seq.parse().ok()?, carried: carried.to_owned() })
    }

    fn format(seq: u64, carried: &str) -> String {
        if carried.is_empty() { seq.to_string() } else { format!("{seq}/{carried}") }
    }
}

/// A request to run, as AG-UI clients send it (`RunAgentInput`); only the fields
/// read here are listed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RunAgentInput {
    thread_id: String,
    run_id: String,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    messages: Vec<Value>,
    /// Answers to the interrupts of a workflow (the thread) waiting for a human.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    resume: Option<Vec<ResumeEntry>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    forwarded_props: Option<Value>,
}

/// The statuses an AG-UI resume entry may have: its interrupt answered, or cancelled.
const RESUME_STATUSES: [&str; 2] = ["resolved", "cancelled"];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumeEntry {
    interrupt_id: String,
    status: String,
    #[serde(default)]
    payload: Option<Value>,
}

/// AG-UI: plans the last user message and runs it, or, with `resume` entries,
/// answers the interrupts of the workflow the thread names and runs it on; the
/// answer is the run's AG-UI events until it rests.
#[utoipa::path(post, path = "/v1/agui", request_body = RunAgentInput, tag = "ag-ui",
    responses((status = 200, description = "AG-UI events", content_type = "text/event-stream", body = String),
              (status = "4XX", body = ErrorBody)))]
pub(super) async fn run_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(input): Body<RunAgentInput>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let translator = Translator::new(input.thread_id.clone());
    let run_id = Some(input.run_id.clone());
    if let Some(entries) = input.resume.filter(|e| !e.is_empty()) {
        let workflow =
            resume_thread(&state, &caller, &input.thread_id, input.forwarded_props.as_ref(), entries).await?;
        let after = state.runner.storage().events(workflow.id(), 0).await?.last().map_or(0, |e| e.seq);
        // Listening before the run starts: its streamed pieces are heard from the first.
        let mut follow = Follow::start(state.clone(), workflow.id(), (after, ""), translator, run_id, true).await?;
        match workflow.state() {
            WorkflowState::ReadyToResume => state.run_on(workflow.id()).await,
            // Questions left open, or a cancel: no run starts, so the answer is a
            // run that rests at once, saying where the workflow stands. A run
            // under way elsewhere (a cancel it has not heard yet) is followed.
            WorkflowState::NeedClarification | WorkflowState::Failed | WorkflowState::Complete => {
                follow.end_at_rest(&workflow);
            }
            _ => {}
        }
        return Ok(sse(follow));
    }
    let query = last_user_text(&input.messages)
        .ok_or_else(|| ApiError::bad_request("the input has no user message with text to plan"))?;
    let context = caller.end_user_id.clone().map(ExecutionContext::for_end_user).unwrap_or_default();
    let plan =
        state.runner.generate_plan(query).tools(state.plan_tools.to_vec()).execution_context(context.clone()).await?;
    let workflow = state.runner.create_workflow(&plan).execution_context(context).count_planning().await?;
    let follow = Follow::start(state.clone(), workflow.id(), (0, ""), translator, run_id, true).await?;
    state.run_on(workflow.id()).await;
    Ok(sse(follow))
}

/// Answers a thread's interrupts: the thread is the workflow (its id, or
/// `forwardedProps.workflow_id`), each interrupt one of its clarifications.
async fn resume_thread(
    state: &AppState,
    caller: &Caller,
    thread_id: &str,
    forwarded: Option<&Value>,
    entries: Vec<ResumeEntry>,
) -> Result<Workflow, ApiError> {
    let id = forwarded.and_then(|p| p.get("workflow_id")).and_then(Value::as_str).unwrap_or(thread_id);
    let mut workflow = state.visible(caller, id).await?;
    if let Some(unknown) = entries.iter().find(|e| !RESUME_STATUSES.contains(&e.status.as_str())) {
        return Err(ApiError::bad_request(format!(
            "a resume entry's `status` is `resolved` or `cancelled`, not {:?}",
            unknown.status
        )));
    }
    for entry in entries {
        if entry.status == "cancelled" {
            return Ok(state.runner.cancel_workflow(workflow.id(), "the interrupt was cancelled").await?);
        }
        let clarification_id = entry.interrupt_id.parse().map_err(Error::from)?;
        let Some(clarification) = workflow.outputs().clarifications.iter().find(|c| c.id == clarification_id) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "clarification_not_found",
                format!("workflow {} has no clarification {clarification_id}", workflow.id()),
            ));
        };
        let clarification = clarification.clone();
        workflow = state.runner.resolve_clarification(&clarification, entry.payload.unwrap_or(Value::Null)).await?;
    }
    Ok(workflow)
}

/// The text of the last user message (a string, or its text parts).
fn last_user_text(messages: &[Value]) -> Option<String> {
    let message = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    let text = match message.get("content")? {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => return None,
    };
    (!text.trim().is_empty()).then_some(text)
}

fn sse(follow: Follow) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold(follow, |mut follow| async move {
        follow.next().await.map(|event| (Ok(event), follow))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// One stream's progress through a workflow's events.
struct Follow {
    state: AppState,
    id: WorkflowId,
    seen: u64,
    translator: Translator,
    ready: VecDeque<Event>,
    until_rest: bool,
    /// Whether a run ended (rested) within this stream.
    run_ended: bool,
    done: bool,
    /// Events of runs in this process, heard at once; `None` once that stream ended.
    local: Option<EventStream>,
    /// Whether the store may hold events not read yet. A streamed reply's pieces,
    /// heard live, go out at once and leave the store unread.
    stale: bool,
    /// The index and task of each step of the workflow's plan, by output name:
    /// read when the first streamed piece comes, to start its step.
    steps: Option<HashMap<String, (usize, String)>>,
}

/// What woke a stream waiting for events.
enum Woken {
    /// A piece of a streamed reply, announced and never stored.
    Live(Box<crate::events::WorkflowEvent>),
    /// Something that may have been stored.
    Store,
    /// The runner's announcements ended.
    LocalEnded,
}

impl Follow {
    /// A stream of workflow `id`'s events after number `after`. The events up to it
    /// go through the translator unsent, then what the dropped stream carried over,
    /// so that the stream goes on as it was; the first run opened after them is
    /// named `run_id`, if given.
    async fn start(
        state: AppState,
        id: WorkflowId,
        (after, carried): (u64, &str),
        mut translator: Translator,
        run_id: Option<String>,
        until_rest: bool,
    ) -> Result<Self, ApiError> {
        let local = Some(state.runner.subscribe_to(id));
        let mut ready = VecDeque::new();
        if after > 0 {
            let workflow = state.runner.get_workflow(id).await?;
            let stored = state.runner.storage().events(id, 0).await?;
            // Every id a stream sends names a stored event; one past them would
            // start the stream in the middle of a run it never opened.
            if !stored.iter().any(|e| e.seq == after) {
                let message = format!(
                    "{after} is not an event id this stream sent: workflow {id} has no event {after}; \
                     give the `id` of the last event received"
                );
                return Err(ApiError::bad_request(message));
            }
            for stored in stored.iter().take_while(|e| e.seq <= after) {
                translator.translate(stored, &workflow);
            }
            let resumed = translator.resume(carried, id);
            let sse_id = LastEventId::format(after, &translator.carried());
            let now = chrono::Utc::now().timestamp_millis();
            ready.extend(resumed.into_iter().map(|mut event| {
                event["timestamp"] = now.into();
                Event::default().data(event.to_string()).id(sse_id.clone())
            }));
        }
        if let Some(run_id) = run_id {
            translator.name_next_run(run_id);
        }
        let run_ended = false;
        let (done, stale, steps) = (false, true, None);
        Ok(Self { state, id, seen: after, translator, ready, until_rest, run_ended, done, local, stale, steps })
    }

    /// Ends the stream with a run of the workflow as it rests now (see
    /// [`Translator::run_at_rest`]).
    fn end_at_rest(&mut self, workflow: &Workflow) {
        let now = chrono::Utc::now().timestamp_millis();
        let events = self.translator.run_at_rest(workflow);
        let last = events.len().saturating_sub(1);
        for (i, mut event) in events.into_iter().enumerate() {
            event["timestamp"] = now.into();
            let mut sse = Event::default().data(event.to_string());
            // As for a stored event's: a stream dropped midway is sent the rest again.
            if i == last {
                sse = sse.id(LastEventId::format(self.seen, &self.translator.carried()));
            }
            self.ready.push_back(sse);
        }
        self.done = true;
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if self.done || *self.state.stopping.borrow() {
                return None;
            }
            if std::mem::take(&mut self.stale)
                && let Err(e) = self.read().await
            {
                tracing::debug!(workflow = %self.id, error = %e, "event stream ended");
                return None;
            }
            if self.ready.is_empty() && !self.done {
                self.wait().await;
            }
        }
    }

    /// Reads the events stored since the last read, then the workflow, which is
    /// then as new as every event read: a COMPLETE or FAILED event is translated
    /// with the answer or failure it announces (read the other way round, a run
    /// finishing between the reads was announced without its answer). Once the
    /// workflow is final, the events stored between the two reads are read too.
    async fn read(&mut self) -> crate::Result<()> {
        let storage = self.state.runner.storage();
        let mut events = storage.events(self.id, self.seen).await?;
        let workflow = self.state.runner.get_workflow(self.id).await?;
        if workflow.state().is_terminal() {
            let last = events.last().map_or(self.seen, |e| e.seq);
            events.extend(storage.events(self.id, last).await?);
        }
        for stored in events {
            let was_in_run = self.translator.in_run();
            let events = self.translator.translate(&stored, &workflow);
            self.run_ended |= was_in_run && !self.translator.in_run();
            let last = events.len().saturating_sub(1);
            for (i, event) in events.into_iter().enumerate() {
                let mut sse = Event::default().data(event.to_string());
                // The id goes on a stored event's last AG-UI event only: a stream
                // dropped midway resumes with the rest of it.
                if i == last {
                    sse = sse.id(LastEventId::format(stored.seq, &self.translator.carried()));
                }
                self.ready.push_back(sse);
            }
            self.seen = stored.seq;
        }
        self.done = workflow.state().is_terminal() || (self.until_rest && self.run_ended);
        Ok(())
    }

    /// The index and task of the top-level step whose reply `piece` is a streamed
    /// piece of, if any (a block's steps stream in their own workflows). The plan is
    /// read once.
    async fn step_of(&mut self, piece: &WorkflowEvent) -> Option<(usize, String)> {
        let (EventKind::LlmTextDelta { step_output, .. } | EventKind::LlmToolCallDelta { step_output, .. }) =
            &piece.kind
        else {
            return None;
        };
        let output = step_output.as_deref()?;
        if self.steps.is_none() {
            // Read again at the next piece if it fails now.
            let runner = &self.state.runner;
            let plan = runner.get_plan(runner.get_workflow(self.id).await.ok()?.plan_id()).await.ok()?;
            self.steps =
                Some(plan.steps.iter().enumerate().map(|(i, s)| (s.output.clone(), (i, s.task.clone()))).collect());
        }
        self.steps.as_ref()?.get(output).cloned()
    }

    /// Waits until new events may be stored: announced by a run in this process,
    /// heard of by the store, the server stopping, or [`RECHECK`] passed.
    async fn wait(&mut self) {
        let storage = self.state.runner.storage().clone();
        let stored = storage.wait_for_events(self.id, self.seen, RECHECK);
        let mut stopping = self.state.stopping.clone();
        let woken = match &mut self.local {
            // Announcements first: pieces queued behind a slow client go out
            // before a store read that would end their step.
            Some(local) => tokio::select! {
                biased;
                announced = local.next() => match announced {
                    Some(Ok(event)) if event.kind.is_live_only() => Woken::Live(Box::new(event)),
                    Some(_) => Woken::Store,
                    None => Woken::LocalEnded,
                },
                _ = stored => Woken::Store,
                _ = stopping.changed() => Woken::Store,
            },
            None => {
                tokio::select! {
                    _ = stored => {}
                    _ = stopping.changed() => {}
                }
                Woken::Store
            }
        };
        match woken {
            // Live pieces carry no number of their own: a stream resumed later
            // starts from the store, which holds the finished reply. Those of tool
            // calls carry the calls over, so the resumed stream goes on under their ids.
            Woken::Live(event) => {
                let mut events = match self.step_of(&event).await {
                    Some((step, task)) => self.translator.start_step_early(step, &task, &event),
                    None => Vec::new(),
                };
                events.extend(self.translator.live(&event));
                let carried = self.translator.carried();
                self.ready.extend(events.into_iter().map(|e| {
                    let sse = Event::default().data(e.to_string());
                    if carried.is_empty() { sse } else { sse.id(LastEventId::format(self.seen, &carried)) }
                }));
            }
            Woken::Store => self.stale = true,
            Woken::LocalEnded => {
                self.local = None;
                self.stale = true;
            }
        }
    }
}
