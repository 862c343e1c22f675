//! The crate's stored events as AG-UI 1.0 events.
//!
//! A workflow is an AG-UI thread; each stretch of running (from IN_PROGRESS to a
//! rest) is a run. Every AG-UI event carries the stored event it comes from as
//! `rawEvent`, so a client that knows this crate loses nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::call::ToolCallKey;
use crate::clarification::{Clarification, ClarificationKind};
use crate::events::{EventKind, StoredEvent, WorkflowEvent};
use crate::ids::{ClarificationId, WorkflowId};
use crate::workflow::{FailureKind, Workflow, WorkflowState};

/// Turns one workflow's stored events, in order, into AG-UI events.
#[derive(Debug)]
pub(super) struct Translator {
    thread_id: String,
    /// The run id of an AG-UI request, used for its first run instead of one made up.
    asked_run_id: Option<String>,
    run_id: Option<String>,
    step_names: HashMap<usize, String>,
    open_questions: BTreeMap<ClarificationId, Clarification>,
    /// The number of the stored event being translated: a run's id is made of the
    /// one that opened it, so a stream read again names its runs as before.
    seq: u64,
    /// Tokens spent by model in the open run.
    usage: BTreeMap<String, (u64, u64)>,
    /// Streamed replies whose text message is open, by call number.
    streaming: BTreeMap<u64, OpenMessage>,
    /// How many text messages streamed replies have opened, to name each anew.
    messages: u64,
    /// Streamed replies whose text message a dropped stream left open, which the
    /// stream resuming it ended: the rest of their pieces is not sent, as the
    /// pieces sent in between are lost (the reply's whole text comes with its step).
    cut_texts: BTreeSet<u64>,
    /// Tool calls of streamed replies whose arguments are coming, by call number
    /// and the reply's index of the tool call.
    streaming_calls: BTreeMap<(u64, usize), StreamedCall>,
    /// Tool calls streamed whole and not yet seen made: the tool call the runner
    /// makes with the same tool and arguments is this one, under its id.
    streamed_calls: Vec<StreamedCall>,
    /// The tool calls of streamed replies that have ended, by call number and index.
    ended_calls: HashSet<(u64, usize)>,
    /// How many tool calls streamed replies have opened, to name each anew.
    tool_calls: u64,
    /// The AG-UI id of each tool call that was streamed before it was made.
    tool_call_ids: HashMap<ToolCallKey, String>,
    /// The tool calls of `tool_call_ids` with no result yet.
    unfinished: HashSet<ToolCallKey>,
    /// Streamed tool calls a resumed stream took over (see [`Self::resume`]):
    /// their arguments are unknown here, so the call made with their tool is theirs.
    restored: Vec<RestoredCall>,
    /// The steps of the open run that have started and not finished.
    open_steps: BTreeSet<usize>,
    /// The steps of the open run that have finished: a piece of theirs heard late
    /// starts nothing.
    finished_steps: BTreeSet<usize>,
    /// Steps whose `STEP_STARTED` went out before their start was stored (see
    /// [`Self::start_step_early`]); the stored start sends nothing.
    early_steps: BTreeSet<usize>,
}

/// A streamed tool call a stream dropped midway told its client of, carried over
/// to the stream that resumes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RestoredCall {
    id: String,
    call: u64,
    index: usize,
    tool_id: String,
    /// Whether its `TOOL_CALL_END` went out.
    ended: bool,
}

/// What a resumed stream must know to go on with the ids its client has seen:
/// the streamed tool calls are never stored, so a translator reading the store
/// again cannot know them. It travels in the events' SSE ids, so the client's
/// `Last-Event-ID` brings it back to whichever process serves the resumed stream.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Carried {
    /// How many tool calls streamed replies have opened.
    #[serde(rename = "n")]
    tool_calls: u64,
    /// The streamed tool calls not yet made.
    #[serde(rename = "s", default)]
    streamed: Vec<RestoredCall>,
    /// The calls made under a streamed call's id and not finished: step, attempt,
    /// sequence number, id.
    #[serde(rename = "m", default)]
    made: Vec<(usize, u32, u32, String)>,
    /// How many text messages streamed replies have opened.
    #[serde(rename = "k", default)]
    messages: u64,
    /// The streamed replies' open text messages: call number, message id.
    #[serde(rename = "t", default)]
    texts: Vec<(u64, String)>,
    /// The calls whose text was cut (see [`Translator::cut_texts`]).
    #[serde(rename = "c", default)]
    cut: Vec<u64>,
    /// The steps started early (see [`Translator::early_steps`]).
    #[serde(rename = "e", default)]
    early: Vec<usize>,
}

/// A tool call of a streamed reply.
#[derive(Debug)]
struct StreamedCall {
    /// Its LLM call's number and its index in the reply.
    key: (u64, usize),
    id: String,
    step_output: Option<String>,
    tool_id: String,
    /// The arguments' JSON text so far.
    arguments: String,
}

/// The text message a streamed reply's pieces go to.
#[derive(Debug)]
struct OpenMessage {
    id: String,
    step_output: Option<String>,
}

impl Translator {
    pub(super) fn new(thread_id: String) -> Self {
        Self {
            thread_id,
            asked_run_id: None,
            run_id: None,
            seq: 0,
            step_names: HashMap::new(),
            open_questions: BTreeMap::new(),
            usage: BTreeMap::new(),
            streaming: BTreeMap::new(),
            messages: 0,
            cut_texts: BTreeSet::new(),
            streaming_calls: BTreeMap::new(),
            streamed_calls: Vec::new(),
            ended_calls: HashSet::new(),
            tool_calls: 0,
            tool_call_ids: HashMap::new(),
            unfinished: HashSet::new(),
            restored: Vec::new(),
            open_steps: BTreeSet::new(),
            finished_steps: BTreeSet::new(),
            early_steps: BTreeSet::new(),
        }
    }

    /// What a stream resumed after the events sent so far must carry over (see
    /// [`Carried`]), as hex text fit for an SSE id; empty when there is nothing.
    pub(super) fn carried(&self) -> String {
        let own = |c: &StreamedCall, ended| RestoredCall {
            id: c.id.clone(),
            call: c.key.0,
            index: c.key.1,
            tool_id: c.tool_id.clone(),
            ended,
        };
        let mut streamed: Vec<RestoredCall> = self.streaming_calls.values().map(|c| own(c, false)).collect();
        streamed.extend(self.streamed_calls.iter().map(|c| own(c, true)));
        streamed.extend(self.restored.iter().cloned());
        let made: Vec<(usize, u32, u32, String)> = self
            .unfinished
            .iter()
            .filter_map(|k| self.tool_call_ids.get(k).map(|id| (k.step, k.attempt, k.seq, id.clone())))
            .collect();
        let texts: Vec<(u64, String)> = self.streaming.iter().map(|(call, m)| (*call, m.id.clone())).collect();
        let cut: Vec<u64> = self.cut_texts.iter().copied().collect();
        let early: Vec<usize> = self.early_steps.iter().copied().collect();
        if streamed.is_empty() && made.is_empty() && self.messages == 0 && cut.is_empty() && early.is_empty() {
            return String::new();
        }
        let (tool_calls, messages) = (self.tool_calls, self.messages);
        let carried = Carried { tool_calls, streamed, made, messages, texts, cut, early };
        serde_json::to_vec(&carried).unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Takes over what a dropped stream carried (from [`Self::carried`]), after
    /// the stored events up to its last one went through. Text that is not such
    /// is ignored: the stream then goes on under the stored calls' own ids.
    ///
    /// Returns the events the resumed stream starts with: the end of each text
    /// message its client has open, as the pieces streamed while it was away are
    /// not kept, and a `CUSTOM` `portia.stream_resumed` event naming them, so a
    /// client can mark them cut; the whole text comes with the step's result.
    pub(super) fn resume(&mut self, carried: &str, workflow_id: WorkflowId) -> Vec<Value> {
        let bytes: Option<Vec<u8>> = (0..carried.len())
            .step_by(2)
            .map(|i| carried.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect();
        let Some(carried) = bytes.and_then(|b| serde_json::from_slice::<Carried>(&b).ok()) else { return Vec::new() };
        self.tool_calls = self.tool_calls.max(carried.tool_calls);
        self.messages = self.messages.max(carried.messages);
        self.cut_texts.extend(carried.cut);
        self.early_steps.extend(&carried.early);
        self.open_steps.extend(carried.early);
        self.restored = carried.streamed;
        for (step, attempt, seq, id) in carried.made {
            let key = ToolCallKey::new(workflow_id, step, attempt, seq);
            self.tool_call_ids.insert(key, id);
            self.unfinished.insert(key);
        }
        let mut out = Vec::new();
        for (call, id) in &carried.texts {
            self.cut_texts.insert(*call);
            out.push(json!({"type": "TEXT_MESSAGE_END", "messageId": id}));
        }
        if !carried.texts.is_empty() {
            let ids: Vec<&String> = carried.texts.iter().map(|(_, id)| id).collect();
            out.push(json!({"type": "CUSTOM", "name": "portia.stream_resumed", "value": {"messageIds": ids}}));
        }
        out
    }

    /// Names the next run that opens `run_id`: the run an AG-UI request asked for.
    pub(super) fn name_next_run(&mut self, run_id: String) {
        self.asked_run_id = Some(run_id);
    }

    /// The AG-UI events of `stored`; `workflow` is the workflow as stored now (read
    /// for a finished workflow's answer and failure, which no longer change).
    pub(super) fn translate(&mut self, stored: &StoredEvent, workflow: &Workflow) -> Vec<Value> {
        let mut out = Vec::new();
        self.seq = stored.seq;
        match &stored.event.kind {
            EventKind::StateChanged { to, .. } => self.state_changed(*to, workflow, &mut out),
            EventKind::StepStarted { step, task, .. } => {
                let name = self.name_step(*step, task);
                if !self.early_steps.remove(step) {
                    self.open_run(&mut out);
                    self.open_steps.insert(*step);
                    out.push(json!({"type": "STEP_STARTED", "stepName": name}));
                }
            }
            EventKind::StepFinished { step, .. } => {
                self.open_steps.remove(step);
                self.finished_steps.insert(*step);
                self.open_run(&mut out);
                let name = self.step_names.get(step).cloned().unwrap_or_else(|| format!("{}", step + 1));
                out.push(json!({"type": "STEP_FINISHED", "stepName": name}));
            }
            EventKind::ToolCallStarted { call, tool_id, arguments } => {
                self.open_run(&mut out);
                if !self.made_as_streamed(*call, tool_id, arguments, &mut out) {
                    let id = self.tool_call_id(*call);
                    out.push(json!({"type": "TOOL_CALL_START", "toolCallId": id, "toolCallName": tool_id}));
                    out.push(json!({"type": "TOOL_CALL_ARGS", "toolCallId": id, "delta": arguments.to_string()}));
                    out.push(json!({"type": "TOOL_CALL_END", "toolCallId": id}));
                }
            }
            EventKind::ToolCallFinished { call, output, .. } => {
                self.open_run(&mut out);
                self.unfinished.remove(call);
                let content = match &**output {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                out.push(json!({"type": "TOOL_CALL_RESULT", "messageId": format!("{call}:result"),
                                "toolCallId": self.tool_call_id(*call), "content": content, "role": "tool"}));
            }
            EventKind::ToolProgress { .. } => custom(&mut out, "portia.tool_progress", stored),
            // AG-UI has no event for waiting: a client may show it as a note on the run.
            EventKind::LlmCallThrottled { .. } => custom(&mut out, "portia.llm_throttled", stored),
            EventKind::LlmCallFinished { model, usage, step_output, .. } => {
                self.end_messages(Some(step_output), &mut out);
                self.end_tool_calls(Some(step_output), &mut out);
                let spent = self.usage.entry(model.clone()).or_default();
                spent.0 += usage.prompt_tokens;
                spent.1 += usage.completion_tokens;
                custom(&mut out, "portia.llm_call", stored);
            }
            EventKind::ClarificationRaised { clarification } => {
                self.open_questions.insert(clarification.id, Clarification::clone(clarification));
                let name = if is_approval(clarification) { "portia.approval" } else { "portia.clarification" };
                out.push(json!({"type": "CUSTOM", "name": name, "value": clarification}));
            }
            EventKind::ClarificationResolved { clarification_id, .. } => {
                self.open_questions.remove(clarification_id);
                custom(&mut out, "portia.clarification_resolved", stored);
            }
            // Kinds added later reach a client as they are stored.
            #[allow(unreachable_patterns)]
            _ => custom(&mut out, "portia.event", stored),
        }
        let timestamp = stored.event.at.timestamp_millis();
        let raw = serde_json::to_value(stored).unwrap_or(Value::Null);
        for event in &mut out {
            event["timestamp"] = json!(timestamp);
            event["rawEvent"] = raw.clone();
        }
        out
    }

    /// `STEP_STARTED` for step `step` (its task `task`), ahead of `event`, a
    /// streamed piece of the step's reply, unless the step is open. A step's start
    /// is stored with its end, so read from the store it would come after the
    /// pieces, outside its step; the stored start then sends nothing. Only within
    /// an open run, whose id the stored events name.
    pub(super) fn start_step_early(&mut self, step: usize, task: &str, event: &WorkflowEvent) -> Vec<Value> {
        if !self.in_run() || self.finished_steps.contains(&step) || !self.open_steps.insert(step) {
            return Vec::new();
        }
        self.early_steps.insert(step);
        let name = self.name_step(step, task);
        vec![stamped(json!({"type": "STEP_STARTED", "stepName": name}), event)]
    }

    /// Names step `step`, with task `task`, as its AG-UI events do, and keeps the name.
    fn name_step(&mut self, step: usize, task: &str) -> String {
        let name = format!("{}. {task}", step + 1);
        self.step_names.insert(step, name.clone());
        name
    }

    /// The AG-UI events of an event announced and never stored (see
    /// [`EventKind::is_live_only`]): a streamed reply's text as
    /// `TEXT_MESSAGE_START`/`CONTENT`, and its tool calls as
    /// `TOOL_CALL_START`/`ARGS`, ended by its [`EventKind::LlmCallFinished`] or the
    /// run's end. The call the runner then makes with that tool and those arguments
    /// is shown under the streamed call's id, its result too, and not again. A
    /// restart ends the message and the tool calls and says so in a `CUSTOM` event,
    /// so a client can drop them; the next attempt opens new ones.
    pub(super) fn live(&mut self, event: &WorkflowEvent) -> Vec<Value> {
        let mut out = Vec::new();
        match &event.kind {
            EventKind::LlmTextDelta { call, .. } if self.cut_texts.contains(call) => {}
            EventKind::LlmTextDelta { step_output, call, text } => {
                let id = self.message_for(*call, step_output, &mut out);
                out.push(json!({"type": "TEXT_MESSAGE_CONTENT", "messageId": id, "delta": text}));
            }
            // A piece of a call that has ended is none of a new one.
            EventKind::LlmToolCallDelta { call, index, .. } if self.ended_calls.contains(&(*call, *index)) => {}
            // A piece of a call streamed before the stream resumed goes on under its id.
            EventKind::LlmToolCallDelta { call, index, arguments, .. }
                if self.restored.iter().any(|c| (c.call, c.index) == (*call, *index)) =>
            {
                let restored = self.restored.iter().find(|c| (c.call, c.index) == (*call, *index));
                if let Some(restored) = restored.filter(|c| !c.ended && !arguments.is_empty()) {
                    out.push(json!({"type": "TOOL_CALL_ARGS", "toolCallId": restored.id, "delta": arguments}));
                }
            }
            // A call's first piece is empty (it is announced as soon as it is named):
            // a first piece with arguments means this stream joined mid-call, its
            // start gone before. Its pieces are left out; the call shows whole once made.
            EventKind::LlmToolCallDelta { call, index, arguments, .. }
                if !arguments.is_empty() && !self.streaming_calls.contains_key(&(*call, *index)) =>
            {
                self.ended_calls.insert((*call, *index));
            }
            EventKind::LlmToolCallDelta { step_output, call, index, tool_id, arguments } => {
                let id = self.tool_call_for(*call, *index, step_output, tool_id, &mut out);
                if !arguments.is_empty() {
                    if let Some(streamed) = self.streaming_calls.get_mut(&(*call, *index)) {
                        streamed.arguments.push_str(arguments);
                    }
                    out.push(json!({"type": "TOOL_CALL_ARGS", "toolCallId": id, "delta": arguments}));
                }
            }
            EventKind::LlmStreamRestarted { call, .. } => self.restart(*call, &mut out),
            _ => {}
        }
        out.into_iter().map(|out| stamped(out, event)).collect()
    }

    /// Ends what streamed call `call` has opened, and says in a `CUSTOM` event
    /// that its text message and tool calls are void.
    fn restart(&mut self, call: u64, out: &mut Vec<Value>) {
        let mut value = json!({});
        if let Some(message) = self.streaming.remove(&call) {
            out.push(json!({"type": "TEXT_MESSAGE_END", "messageId": message.id}));
            value["messageId"] = json!(message.id);
        }
        let calls: Vec<(u64, usize)> =
            self.streaming_calls.range((call, 0)..=(call, usize::MAX)).map(|(k, _)| *k).collect();
        let mut void = Vec::new();
        for key in calls {
            if let Some(streamed) = self.streaming_calls.remove(&key) {
                out.push(json!({"type": "TOOL_CALL_END", "toolCallId": streamed.id}));
                void.push(streamed.id);
            }
        }
        for restored in self.restored.iter().filter(|c| c.call == call) {
            if !restored.ended {
                out.push(json!({"type": "TOOL_CALL_END", "toolCallId": restored.id}));
            }
            void.push(restored.id.clone());
        }
        self.restored.retain(|c| c.call != call);
        // The next attempt streams its text from the start.
        self.cut_texts.remove(&call);
        // The next attempt numbers its tool calls afresh.
        self.ended_calls.retain(|(of, _)| *of != call);
        self.streamed_calls.retain(|c| c.key.0 != call);
        if !void.is_empty() {
            value["toolCallIds"] = json!(void);
        }
        if value.as_object().is_some_and(|v| !v.is_empty()) {
            out.push(json!({"type": "CUSTOM", "name": "portia.stream_restarted", "value": value}));
        }
    }

    /// The id of the text message open for streamed call `call`, opened now if none is.
    fn message_for(&mut self, call: u64, step_output: &Option<String>, out: &mut Vec<Value>) -> String {
        if let Some(message) = self.streaming.get(&call) {
            return message.id.clone();
        }
        self.open_run(out);
        self.messages += 1;
        let id = format!("{}:text-{}", self.run_id.as_deref().unwrap_or(&self.thread_id), self.messages);
        out.push(json!({"type": "TEXT_MESSAGE_START", "messageId": id, "role": "assistant"}));
        self.streaming.insert(call, OpenMessage { id: id.clone(), step_output: step_output.clone() });
        id
    }

    /// Ends the streamed messages of `step_output`'s calls, or all with `None`.
    fn end_messages(&mut self, step_output: Option<&Option<String>>, out: &mut Vec<Value>) {
        let ended: Vec<u64> = self
            .streaming
            .iter()
            .filter(|(_, m)| step_output.is_none_or(|s| *s == m.step_output))
            .map(|(call, _)| *call)
            .collect();
        for call in ended {
            if let Some(message) = self.streaming.remove(&call) {
                out.push(json!({"type": "TEXT_MESSAGE_END", "messageId": message.id}));
            }
        }
    }

    /// Whether a run is open: events after a rest and before the next run are
    /// answers and snapshots.
    pub(super) fn in_run(&self) -> bool {
        self.run_id.is_some()
    }

    /// A run that opens and rests at once in `workflow`'s state, one at rest
    /// (waiting for a human, COMPLETE or FAILED): for a request that starts no run
    /// (answers that leave questions open, or a cancel), so that its client still
    /// gets a run that ends, with the questions left as interrupts.
    pub(super) fn run_at_rest(&mut self, workflow: &Workflow) -> Vec<Value> {
        let mut out = Vec::new();
        self.state_changed(workflow.state(), workflow, &mut out);
        out
    }

    fn state_changed(&mut self, to: WorkflowState, workflow: &Workflow, out: &mut Vec<Value>) {
        match to {
            WorkflowState::InProgress => self.open_run(out),
            WorkflowState::Complete => {
                self.open_run(out);
                self.answer(workflow, out);
                self.snapshot(to, workflow, out);
                let result = workflow.outputs().final_output.as_ref().map(|o| (*o.value).clone());
                self.finish(out, json!({"type": "success"}), result);
            }
            WorkflowState::Failed => {
                self.open_run(out);
                self.snapshot(to, workflow, out);
                match workflow.failure() {
                    Some(failure) if failure.kind == FailureKind::Cancelled => {
                        self.finish(out, json!({"type": "cancelled"}), None);
                    }
                    failure => {
                        let message = failure.map_or_else(|| "the workflow failed".to_owned(), |f| f.message.clone());
                        let code = failure
                            .and_then(|f| serde_json::to_value(f.kind).ok())
                            .and_then(|k| k.as_str().map(str::to_owned))
                            .unwrap_or_else(|| "FAILED".to_owned());
                        self.end_messages(None, out);
                        self.end_tool_calls(None, out);
                        out.push(json!({"type": "RUN_ERROR", "message": message, "code": code, "usage": self.usage()}));
                        self.close_run();
                    }
                }
            }
            WorkflowState::NeedClarification => {
                self.open_run(out);
                self.snapshot(to, workflow, out);
                let interrupts: Vec<Value> = self.open_questions.values().map(|c| self.interrupt(c)).collect();
                if interrupts.is_empty() {
                    self.finish(out, json!({"type": "success"}), Some(json!({"state": to})));
                } else {
                    self.finish(out, json!({"type": "interrupt", "interrupts": interrupts}), None);
                }
            }
            _ => self.snapshot(to, workflow, out),
        }
    }

    fn open_run(&mut self, out: &mut Vec<Value>) {
        if self.run_id.is_some() {
            return;
        }
        let run_id = self.asked_run_id.take().unwrap_or_else(|| format!("{}:run-{}", self.thread_id, self.seq));
        out.push(json!({"type": "RUN_STARTED", "threadId": self.thread_id, "runId": run_id}));
        self.run_id = Some(run_id);
    }

    fn close_run(&mut self) {
        self.streaming.clear();
        self.cut_texts.clear();
        self.streaming_calls.clear();
        self.streamed_calls.clear();
        self.ended_calls.clear();
        self.restored.clear();
        self.open_steps.clear();
        self.finished_steps.clear();
        self.early_steps.clear();
        self.run_id = None;
        self.usage.clear();
    }

    fn finish(&mut self, out: &mut Vec<Value>, outcome: Value, result: Option<Value>) {
        self.end_messages(None, out);
        self.end_tool_calls(None, out);
        let mut event = json!({"type": "RUN_FINISHED", "threadId": self.thread_id,
                               "runId": self.run_id.clone().unwrap_or_default(),
                               "outcome": outcome, "usage": self.usage()});
        if let Some(result) = result.filter(|r| !r.is_null()) {
            event["result"] = result;
        }
        out.push(event);
        self.close_run();
    }

    /// The final answer as one text message: the store keeps no pieces, so a
    /// stream read from history gets it in one chunk.
    fn answer(&self, workflow: &Workflow, out: &mut Vec<Value>) {
        let Some(output) = &workflow.outputs().final_output else { return };
        let text = match (&output.summary, &*output.value) {
            (Some(summary), _) => summary.clone(),
            (None, Value::String(text)) => text.clone(),
            (None, value) => value.to_string(),
        };
        if text.is_empty() {
            return;
        }
        let id = format!("{}:answer", workflow.id());
        out.push(json!({"type": "TEXT_MESSAGE_START", "messageId": id, "role": "assistant"}));
        out.push(json!({"type": "TEXT_MESSAGE_CONTENT", "messageId": id, "delta": text}));
        out.push(json!({"type": "TEXT_MESSAGE_END", "messageId": id}));
    }

    fn snapshot(&self, to: WorkflowState, workflow: &Workflow, out: &mut Vec<Value>) {
        let open: Vec<&Clarification> = self.open_questions.values().collect();
        out.push(json!({"type": "STATE_SNAPSHOT", "snapshot": {
            "workflow_id": workflow.id(), "state": to, "open_clarifications": open,
        }}));
    }

    fn interrupt(&self, clarification: &Clarification) -> Value {
        let reason = if is_approval(clarification) { "approval" } else { "input" };
        let mut value = json!({"id": clarification.id, "reason": reason, "message": clarification.user_guidance,
                               "metadata": {"portia": clarification}});
        if let Some(call) = clarification.tool_call {
            value["toolCallId"] = json!(self.tool_call_id(call));
        }
        value
    }

    /// The AG-UI id of tool call `call`: the id it streamed under, if it did.
    fn tool_call_id(&self, call: ToolCallKey) -> String {
        self.tool_call_ids.get(&call).cloned().unwrap_or_else(|| call.to_string())
    }

    /// Whether tool call `call` is one a streamed reply showed already (the same
    /// tool with the same arguments): it is then known by that id, and shown once.
    fn made_as_streamed(&mut self, call: ToolCallKey, tool_id: &str, arguments: &Value, out: &mut Vec<Value>) -> bool {
        if self.tool_call_ids.contains_key(&call) {
            return false;
        }
        let same = |streamed: &StreamedCall| {
            streamed.tool_id == tool_id
                && serde_json::from_str::<Value>(&streamed.arguments).is_ok_and(|a| a == *arguments)
        };
        // The reply may still be open here: its end is stored after this event is heard.
        let open = self.streaming_calls.iter().find(|(_, c)| same(c)).map(|(key, _)| *key);
        let streamed = if let Some(key) = open {
            let streamed = self.streaming_calls.remove(&key);
            if let Some(streamed) = &streamed {
                out.push(json!({"type": "TOOL_CALL_END", "toolCallId": streamed.id}));
                self.ended_calls.insert(key);
            }
            streamed
        } else {
            self.streamed_calls.iter().position(same).map(|i| self.streamed_calls.remove(i))
        };
        let id = match streamed {
            Some(streamed) => streamed.id,
            None => {
                // Streamed before the stream resumed: its arguments are unknown here.
                let Some(i) = self.restored.iter().position(|c| c.tool_id == tool_id) else { return false };
                let restored = self.restored.remove(i);
                if !restored.ended {
                    out.push(json!({"type": "TOOL_CALL_END", "toolCallId": restored.id}));
                }
                restored.id
            }
        };
        self.tool_call_ids.insert(call, id);
        self.unfinished.insert(call);
        true
    }

    /// The AG-UI id of the tool call `index` of streamed call `call`, opened now
    /// (with `TOOL_CALL_START`) if it is not open.
    fn tool_call_for(
        &mut self,
        call: u64,
        index: usize,
        step_output: &Option<String>,
        tool_id: &str,
        out: &mut Vec<Value>,
    ) -> String {
        if let Some(open) = self.streaming_calls.get(&(call, index)) {
            return open.id.clone();
        }
        self.open_run(out);
        self.tool_calls += 1;
        let id = format!("{}:tool-call-{}", self.run_id.as_deref().unwrap_or(&self.thread_id), self.tool_calls);
        out.push(json!({"type": "TOOL_CALL_START", "toolCallId": id, "toolCallName": tool_id}));
        let streamed = StreamedCall {
            key: (call, index),
            id: id.clone(),
            step_output: step_output.clone(),
            tool_id: tool_id.to_owned(),
            arguments: String::new(),
        };
        self.streaming_calls.insert((call, index), streamed);
        id
    }

    /// Ends the streamed tool calls of `step_output`'s calls, or all with `None`:
    /// their arguments are whole. They wait to be seen made.
    ///
    /// An LLM call's end is stored, and so heard, later than the pieces of the
    /// next call are: of `step_output`'s calls only those whose arguments are
    /// whole JSON end, so that a call still streaming is not cut off.
    fn end_tool_calls(&mut self, step_output: Option<&Option<String>>, out: &mut Vec<Value>) {
        let ended: Vec<(u64, usize)> = self
            .streaming_calls
            .iter()
            .filter(|(_, c)| {
                step_output.is_none_or(|s| *s == c.step_output && serde_json::from_str::<Value>(&c.arguments).is_ok())
            })
            .map(|(key, _)| *key)
            .collect();
        for key in ended {
            if let Some(streamed) = self.streaming_calls.remove(&key) {
                out.push(json!({"type": "TOOL_CALL_END", "toolCallId": streamed.id}));
                self.ended_calls.insert(key);
                self.streamed_calls.push(streamed);
            }
        }
        if step_output.is_none() {
            for restored in self.restored.iter_mut().filter(|c| !c.ended) {
                out.push(json!({"type": "TOOL_CALL_END", "toolCallId": restored.id}));
                restored.ended = true;
            }
        }
    }

    /// Tokens by model in AG-UI's accounting.
    fn usage(&self) -> Vec<Value> {
        self.usage
            .iter()
            .map(|(model, (input, output))| {
                json!({"model": model, "inputTokens": input, "outputTokens": output, "totalTokens": input + output})
            })
            .collect()
    }
}

/// `out` with the time and the raw event of `event`, which it comes from.
fn stamped(mut out: Value, event: &WorkflowEvent) -> Value {
    out["timestamp"] = json!(event.at.timestamp_millis());
    out["rawEvent"] = serde_json::to_value(event).unwrap_or(Value::Null);
    out
}

fn custom(out: &mut Vec<Value>, name: &str, stored: &StoredEvent) {
    let value = serde_json::to_value(&stored.event.kind).unwrap_or(Value::Null);
    out.push(json!({"type": "CUSTOM", "name": name, "value": value}));
}

/// An approval: the value confirmation an approval gate asks before a tool call.
fn is_approval(clarification: &Clarification) -> bool {
    clarification.tool_call.is_some() && matches!(clarification.kind, ClarificationKind::ValueConfirmation { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::WorkflowId;

    fn workflow() -> Workflow {
        Workflow::new(crate::ids::PlanId::new(), crate::execution_context::ExecutionContext::default())
    }

    /// A piece of the arguments of the first tool call (to `echo`) streamed in LLM call 1.
    fn echo_piece(step_output: Option<&str>, arguments: &str) -> EventKind {
        echo_piece_of_call(1, step_output, arguments)
    }

    /// The AG-UI events of the pieces of `echo`'s arguments streamed for step `$out`.
    fn stream_echo(translator: &mut Translator, workflow_id: WorkflowId, pieces: &[&str]) -> Vec<Value> {
        let piece = |arguments| WorkflowEvent::new(workflow_id, echo_piece(Some("$out"), arguments));
        pieces.iter().flat_map(|arguments| translator.live(&piece(arguments))).collect()
    }

    /// A piece of the arguments of the first tool call (to `echo`) streamed in LLM call `call`.
    fn echo_piece_of_call(call: u64, step_output: Option<&str>, arguments: &str) -> EventKind {
        EventKind::LlmToolCallDelta {
            step_output: step_output.map(str::to_owned),
            call,
            index: 0,
            tool_id: "echo".into(),
            arguments: arguments.into(),
        }
    }

    /// The end of an LLM call of the step that outputs `$out`.
    fn llm_call_finished() -> EventKind {
        EventKind::LlmCallFinished {
            step_output: Some("$out".into()),
            model: "m".into(),
            usage: crate::usage::Usage::default(),
            cost_usd: 0.0,
            latency_ms: 1,
        }
    }

    /// The stored start and finish of the call `key` to `echo` with `{"text": "hi"}`.
    fn echo_made(key: ToolCallKey) -> [EventKind; 2] {
        [
            EventKind::ToolCallStarted { call: key, tool_id: "echo".into(), arguments: json!({"text": "hi"}).into() },
            EventKind::ToolCallFinished {
                call: key,
                tool_id: "echo".into(),
                status: crate::call::ToolCallStatus::Success,
                output: json!("hi").into(),
                latency_ms: 1,
                replayed: false,
            },
        ]
    }

    /// What `translator` sends for `kinds` read from the store, numbered from 1.
    fn translate_stored(translator: &mut Translator, workflow: &Workflow, kinds: Vec<EventKind>) -> Vec<Value> {
        let mut out = Vec::new();
        for (seq, kind) in kinds.into_iter().enumerate() {
            let stored = StoredEvent::new(seq as u64 + 1, WorkflowEvent::new(workflow.id(), kind));
            out.extend(translator.translate(&stored, workflow));
        }
        out
    }

    #[test]
    fn a_step_starts_early_once_only_in_a_run_and_never_after_it_finished() {
        let workflow = workflow();
        let mut translator = Translator::new("thread".into());
        let piece = WorkflowEvent::new(workflow.id(), echo_piece(Some("$out"), ""));
        assert!(translator.start_step_early(0, "Echo", &piece).is_empty(), "no run is open");
        let started = |step: usize| EventKind::StepStarted { step, task: "Echo".into(), tool_id: None };
        let finished =
            |step: usize| EventKind::StepFinished { step, outcome: crate::workflow::StepOutcome::Skipped("no".into()) };
        let running = EventKind::StateChanged { from: WorkflowState::NotStarted, to: WorkflowState::InProgress };
        translate_stored(&mut translator, &workflow, vec![running, started(0), finished(0)]);
        assert!(translator.start_step_early(0, "Echo", &piece).is_empty(), "a late piece of a finished step");

        let early = translator.start_step_early(1, "Echo", &piece);
        assert_eq!(early.len(), 1);
        assert_eq!((&early[0]["type"], &early[0]["stepName"]), (&json!("STEP_STARTED"), &json!("2. Echo")));
        assert!(translator.start_step_early(1, "Echo", &piece).is_empty(), "started once");
        assert!(translate_stored(&mut translator, &workflow, vec![started(1)]).is_empty(), "the stored start is quiet");
        let out = translate_stored(&mut translator, &workflow, vec![finished(1)]);
        assert_eq!(out[0]["type"], "STEP_FINISHED");
    }

    #[test]
    fn a_restart_ends_the_streamed_message_and_the_next_attempt_opens_a_new_one() {
        let workflow_id = WorkflowId::new();
        let mut translator = Translator::new(workflow_id.to_string());
        let live = |kind| WorkflowEvent::new(workflow_id, kind);
        let delta = |text: &str| EventKind::LlmTextDelta { step_output: None, call: 1, text: text.into() };
        let mut out = translator.live(&live(delta("Hel")));
        out.extend(translator.live(&live(EventKind::LlmStreamRestarted { step_output: None, call: 1 })));
        out.extend(translator.live(&live(delta("Hello"))));

        let shape: Vec<(&str, &str)> = out
            .iter()
            .map(|e| (e["type"].as_str().unwrap(), e["delta"].as_str().or(e["name"].as_str()).unwrap_or_default()))
            .collect();
        assert_eq!(
            shape,
            [
                ("RUN_STARTED", ""),
                ("TEXT_MESSAGE_START", ""),
                ("TEXT_MESSAGE_CONTENT", "Hel"),
                ("TEXT_MESSAGE_END", ""),
                ("CUSTOM", "portia.stream_restarted"),
                ("TEXT_MESSAGE_START", ""),
                ("TEXT_MESSAGE_CONTENT", "Hello"),
            ]
        );
        assert_eq!(out[4]["value"]["messageId"], out[1]["messageId"], "the restart names the message to drop");
        assert_ne!(out[5]["messageId"], out[1]["messageId"], "the new attempt is a new message");
    }

    #[test]
    fn a_streamed_tool_call_is_shown_once_and_its_result_goes_to_it() {
        let workflow = workflow();
        let workflow_id = workflow.id();
        let mut translator = Translator::new(workflow_id.to_string());
        let mut out = stream_echo(&mut translator, workflow_id, &["", "{\"text\": ", "\"hi\"}"]);
        let finished = llm_call_finished();
        let stored = [finished].into_iter().chain(echo_made(ToolCallKey::new(workflow_id, 0, 0, 0))).collect();
        out.extend(translate_stored(&mut translator, &workflow, stored));

        let calls: Vec<&Value> = out.iter().filter(|e| e["type"].as_str().unwrap().starts_with("TOOL_CALL")).collect();
        let shape: Vec<&str> = calls.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(shape, ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"]);
        assert!(calls.iter().all(|e| e["toolCallId"] == calls[0]["toolCallId"]), "one call: {calls:#?}");
        assert_eq!(calls[0]["toolCallName"], "echo");
        let arguments: String = calls.iter().filter_map(|e| e["delta"].as_str()).collect();
        assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), json!({"text": "hi"}));
    }

    #[test]
    fn a_restart_voids_the_streamed_tool_calls_and_the_next_attempt_opens_new_ones() {
        let workflow_id = WorkflowId::new();
        let mut translator = Translator::new(workflow_id.to_string());
        let piece = |arguments: &str| WorkflowEvent::new(workflow_id, echo_piece(None, arguments));
        let mut out = translator.live(&piece(""));
        out.extend(translator.live(&piece("{\"a\"")));
        let restarted = EventKind::LlmStreamRestarted { step_output: None, call: 1 };
        out.extend(translator.live(&WorkflowEvent::new(workflow_id, restarted)));
        out.extend(translator.live(&piece("")));
        out.extend(translator.live(&piece("{}")));

        let types: Vec<&str> = out.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "RUN_STARTED",
                "TOOL_CALL_START",
                "TOOL_CALL_ARGS",
                "TOOL_CALL_END",
                "CUSTOM",
                "TOOL_CALL_START",
                "TOOL_CALL_ARGS"
            ]
        );
        assert_eq!(out[4]["value"]["toolCallIds"], json!([out[1]["toolCallId"]]), "the restart names the void call");
        assert_ne!(out[5]["toolCallId"], out[1]["toolCallId"], "the new attempt is a new call");
    }

    /// The end of LLM call 1 is heard after call 2 of the same step started
    /// streaming: call 1's tool call ends, call 2's goes on under its id.
    #[test]
    fn an_llm_calls_end_heard_late_ends_only_the_tool_calls_that_are_whole() {
        let workflow = workflow();
        let workflow_id = workflow.id();
        let mut translator = Translator::new(workflow_id.to_string());
        let piece = |call: u64, arguments: &str| {
            WorkflowEvent::new(workflow_id, echo_piece_of_call(call, Some("$out"), arguments))
        };
        let mut out = translator.live(&piece(1, ""));
        out.extend(translator.live(&piece(1, "{}")));
        out.extend(translator.live(&piece(2, "")));
        out.extend(translator.live(&piece(2, "{\"a\":")));
        let finished = llm_call_finished();
        out.extend(translator.translate(&StoredEvent::new(1, WorkflowEvent::new(workflow_id, finished)), &workflow));
        out.extend(translator.live(&piece(2, " 1}")));
        out.extend(translator.live(&piece(1, "")));

        let shape: Vec<(&str, &str)> = out
            .iter()
            .filter(|e| e["type"].as_str().unwrap().starts_with("TOOL_CALL"))
            .map(|e| (e["type"].as_str().unwrap(), e["toolCallId"].as_str().unwrap().rsplit(':').next().unwrap()))
            .collect();
        assert_eq!(
            shape,
            [
                ("TOOL_CALL_START", "tool-call-1"),
                ("TOOL_CALL_ARGS", "tool-call-1"),
                ("TOOL_CALL_START", "tool-call-2"),
                ("TOOL_CALL_ARGS", "tool-call-2"),
                ("TOOL_CALL_END", "tool-call-1"),
                ("TOOL_CALL_ARGS", "tool-call-2"),
            ]
        );
    }

    #[test]
    fn a_tool_call_made_with_other_arguments_than_streamed_is_a_call_of_its_own() {
        let workflow = workflow();
        let workflow_id = workflow.id();
        let mut translator = Translator::new(workflow_id.to_string());
        let mut out = translator.live(&WorkflowEvent::new(workflow_id, echo_piece(None, "")));
        out.extend(translator.live(&WorkflowEvent::new(workflow_id, echo_piece(None, "{}"))));
        let key = ToolCallKey::new(workflow_id, 0, 0, 0);
        let started =
            EventKind::ToolCallStarted { call: key, tool_id: "echo".into(), arguments: json!({"a": 1}).into() };
        out.extend(translator.translate(&StoredEvent::new(1, WorkflowEvent::new(workflow_id, started)), &workflow));
        let starts: Vec<&Value> = out.iter().filter(|e| e["type"] == "TOOL_CALL_START").collect();
        assert_eq!(starts.len(), 2);
        assert_eq!(starts[1]["toolCallId"], key.to_string());
    }

    /// A stream that joins while a call's arguments stream (its first, empty piece
    /// gone before) leaves that call's pieces out, rather than sending half its
    /// arguments under a call that is then made, and shown, again; the call shows
    /// whole, once, when it is made.
    #[test]
    fn a_stream_joining_in_the_middle_of_a_call_shows_it_once_and_whole_when_made() {
        let workflow = workflow();
        let workflow_id = workflow.id();
        let mut translator = Translator::new(workflow_id.to_string());
        let mut out = stream_echo(&mut translator, workflow_id, &["\"hi\"", "}"]);
        assert!(out.iter().all(|e| !e["type"].as_str().unwrap().starts_with("TOOL_CALL")), "{out:#?}");
        let key = ToolCallKey::new(workflow_id, 0, 0, 0);
        let stored = [llm_call_finished()].into_iter().chain(echo_made(key)).collect();
        out.extend(translate_stored(&mut translator, &workflow, stored));

        let calls: Vec<&Value> = out.iter().filter(|e| e["type"].as_str().unwrap().starts_with("TOOL_CALL")).collect();
        let shape: Vec<&str> = calls.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(shape, ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"]);
        assert!(calls.iter().all(|e| e["toolCallId"] == key.to_string()), "under the call's own id: {calls:#?}");
        let arguments: String = calls.iter().filter_map(|e| e["delta"].as_str()).collect();
        assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), json!({"text": "hi"}));
    }

    /// A stream dropped midway carries its streamed call over to the one that
    /// resumes it: the call's next pieces, its end and its result keep the id.
    #[test]
    fn a_resumed_translator_goes_on_under_the_carried_calls_id() {
        let workflow = workflow();
        let workflow_id = workflow.id();
        let piece = |arguments: &str| WorkflowEvent::new(workflow_id, echo_piece(None, arguments));
        let mut dropped = Translator::new(workflow_id.to_string());
        let mut seen = dropped.live(&piece(""));
        seen.extend(dropped.live(&piece("{\"text\": ")));
        assert!(Translator::new(workflow_id.to_string()).carried().is_empty(), "nothing to carry at first");

        let mut resumed = Translator::new(workflow_id.to_string());
        resumed.resume(&dropped.carried(), workflow_id);
        let mut out = resumed.live(&piece("\"hi\"}"));
        let stored = echo_made(ToolCallKey::new(workflow_id, 0, 0, 0)).into();
        out.extend(translate_stored(&mut resumed, &workflow, stored));

        let started = seen.iter().find(|e| e["type"] == "TOOL_CALL_START").unwrap()["toolCallId"].clone();
        let shape: Vec<(&str, bool)> = out
            .iter()
            .filter(|e| e["type"].as_str().unwrap().starts_with("TOOL_CALL"))
            .map(|e| (e["type"].as_str().unwrap(), e["toolCallId"] == started))
            .collect();
        assert_eq!(shape, [("TOOL_CALL_ARGS", true), ("TOOL_CALL_END", true), ("TOOL_CALL_RESULT", true)], "{out:#?}");
        assert!(resumed.carried().is_empty(), "nothing left to carry once the call finished");
    }

    /// A stream dropped in the middle of a streamed text: the resumed stream ends
    /// the message its client has open and says it was cut, sends none of the
    /// reply's later pieces (those in between are lost), and a restarted attempt
    /// streams anew under a new id.
    #[test]
    fn a_resumed_stream_ends_the_text_its_client_has_open_and_sends_no_more_of_it() {
        let workflow_id = WorkflowId::new();
        let delta = |text: &str| {
            WorkflowEvent::new(workflow_id, EventKind::LlmTextDelta { step_output: None, call: 1, text: text.into() })
        };
        let mut dropped = Translator::new(workflow_id.to_string());
        let seen = dropped.live(&delta("Hel"));
        let opened = seen.iter().find(|e| e["type"] == "TEXT_MESSAGE_START").unwrap()["messageId"].clone();

        let mut resumed = Translator::new(workflow_id.to_string());
        let mut out = resumed.resume(&dropped.carried(), workflow_id);
        out.extend(resumed.live(&delta("ld")));
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!((&out[0]["type"], &out[0]["messageId"]), (&json!("TEXT_MESSAGE_END"), &opened));
        assert_eq!(out[1]["name"], "portia.stream_resumed");
        assert_eq!(out[1]["value"]["messageIds"], json!([opened]));

        let mut again = Translator::new(workflow_id.to_string());
        assert!(again.resume(&resumed.carried(), workflow_id).is_empty(), "ended once, not at every resume");
        assert!(again.live(&delta("more")).is_empty(), "the cut reply stays cut after another drop");
        let restarted = EventKind::LlmStreamRestarted { step_output: None, call: 1 };
        again.live(&WorkflowEvent::new(workflow_id, restarted));
        let anew = again.live(&delta("Hello"));
        let start = anew.iter().find(|e| e["type"] == "TEXT_MESSAGE_START").expect("the new attempt streams");
        assert_ne!(start["messageId"], opened, "under a new id");
    }
}
