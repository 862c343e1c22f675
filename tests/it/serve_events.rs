//! `portia serve`'s event streams: a workflow's stored events as AG-UI 1.0 events
//! over Server-Sent Events (history, then live; `Last-Event-ID` resumes with no gap
//! or repeat), and the AG-UI endpoint that takes a `RunAgentInput`. With
//! `PORTIA_AGUI_CHECK` (set by `.ci/install-agui`), every event sent is parsed with
//! the protocol's published schemas.

use std::sync::Arc;

use portia::llm::{Deltas, LlmClient, LlmError, LlmRequest, LlmResponse};
use portia::runner::ApprovalGate;
use portia::runner::serve::ServeOptions;
use portia::storage::{InMemoryStorage, Storage};
use portia::testing::{MockTool, ScriptedLlm};
use portia::tool::ToolSpec;
use portia::{InMemoryToolRegistry, Runner, WorkflowState};
use serde_json::{Value, json};

use crate::serve::{Served, config, serve, tool_plan};
use crate::serve_browser::{PIECES, TwoPieces};

/// One Server-Sent Event: its `id` and `event` fields, if any, and its data as JSON.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sse {
    /// The number of the stored event the id names.
    pub(crate) id: Option<u64>,
    /// The id as sent, to send back as `Last-Event-ID`.
    pub(crate) raw_id: Option<String>,
    pub(crate) event: Option<String>,
    pub(crate) data: Value,
}

/// Reads Server-Sent Events from a response as they arrive.
pub(crate) struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    pub(crate) fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self { response, buffer: String::new() }
    }

    /// The next event with data; `None` when the server ends the stream.
    pub(crate) async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut raw_id, mut event, mut data) = (None::<String>, None, String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        raw_id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("event:") {
                        event = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if !data.is_empty() {
                    let id = raw_id.as_deref().map(|r| r.split('/').next().unwrap().parse().unwrap());
                    return Some(Sse { id, raw_id, event, data: serde_json::from_str(&data).unwrap() });
                }
                continue;
            }
            let chunk = self.response.chunk().await.unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events up to and including the first that `stop` matches.
    pub(crate) async fn until(&mut self, stop: impl Fn(&Value) -> bool) -> Vec<Sse> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            let done = stop(&event.data);
            events.push(event);
            if done {
                return events;
            }
        }
        panic!("the stream ended before the event looked for: {events:#?}");
    }

    /// Every event until the server ends the stream.
    pub(crate) async fn rest(&mut self) -> Vec<Sse> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

fn types(events: &[Sse]) -> Vec<&str> {
    events.iter().map(|e| e.data["type"].as_str().unwrap()).collect()
}

/// A runner whose `send_tool` (side effects) waits behind an approval gate.
pub(crate) fn gated_runner() -> Runner {
    let send = MockTool::echo("send_tool").with_spec(ToolSpec::new("send_tool", "Send Tool", "Sends a payment."));
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    Runner::builder(config())
        .tools(InMemoryToolRegistry::new().with(send).unwrap())
        .llm(Arc::new(ScriptedLlm::new()))
        .storage(storage)
        .hook(ApprovalGate::for_side_effects())
        .build()
        .unwrap()
}

async fn open(served: &Served, path: &str, last_id: Option<impl ToString>) -> SseReader {
    let mut request = served.http.get(served.url(path));
    if let Some(id) = last_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    SseReader::new(response)
}

fn is_run_end(event: &Value) -> bool {
    matches!(event["type"].as_str(), Some("RUN_FINISHED" | "RUN_ERROR"))
}

#[tokio::test]
async fn a_stream_gives_the_history_then_live_events_through_an_approval_to_the_end() {
    approval_stream().await;
}

/// A stream opened before a run stops at an approval gate, followed to the end.
async fn approval_stream() -> Vec<Sse> {
    let served = serve(gated_runner(), ServeOptions::new()).await;
    let (_, created) = served.post("/v1/workflows", json!({"plan": tool_plan("Pay Ann", "send_tool")})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut stream = open(&served, &format!("/v1/workflows/{id}/events"), None::<u64>).await;

    let first = stream.until(is_run_end).await;
    assert_eq!(first[0].data["type"], "RUN_STARTED");
    assert_eq!(first[0].data["threadId"], id.as_str());
    let approval = first.iter().find(|e| e.data["name"] == "portia.approval").expect("the approval as CUSTOM");
    assert_eq!(approval.data["value"]["response"], json!({"city": "Oslo"}), "it shows the arguments");
    let finished = &first.last().unwrap().data;
    assert_eq!(finished["outcome"]["type"], "interrupt", "{finished}");
    let interrupt = &finished["outcome"]["interrupts"][0];
    assert_eq!(interrupt["reason"], "approval");
    assert!(types(&first).contains(&"STEP_STARTED"));
    assert!(types(&first).contains(&"STATE_SNAPSHOT"));

    // Approved from elsewhere: the same stream goes on live to the end.
    let question = interrupt["id"].as_str().unwrap();
    let path = format!("/v1/workflows/{id}/clarifications/{question}");
    let (status, _) = served.post(&path, json!({"response": true, "resume": true})).await;
    assert_eq!(status, 200);
    let second = stream.rest().await;
    let kinds = types(&second);
    for kind in ["RUN_STARTED", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let answer = ["TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END", "STATE_SNAPSHOT", "RUN_FINISHED"];
    assert_eq!(kinds[kinds.len() - 5..], answer, "the answer, then the end: {kinds:?}");
    let last = &second.last().unwrap().data;
    assert_eq!(last["type"], "RUN_FINISHED");
    assert_eq!(last["outcome"]["type"], "success");
    assert_eq!(served.rest(&id).await.state(), WorkflowState::Complete);
    first.into_iter().chain(second).collect()
}

#[tokio::test]
async fn last_event_id_resumes_a_dropped_stream_with_no_gap_or_repeat() {
    let served = serve(gated_runner(), ServeOptions::new()).await;
    let (_, created) = served.post("/v1/workflows", json!({"plan": tool_plan("Pay Ann", "send_tool")})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let waiting = served.rest(&id).await;
    let question = waiting.outstanding_clarifications().next().unwrap().id;
    served
        .post(&format!("/v1/workflows/{id}/clarifications/{question}"), json!({"response": true, "resume": true}))
        .await;
    assert_eq!(served.rest(&id).await.state(), WorkflowState::Complete);

    let path = format!("/v1/workflows/{id}/events");
    let whole = open(&served, &path, None::<u64>).await.rest().await;
    let ids: Vec<u64> = whole.iter().filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids rise: {ids:?}");
    assert_eq!(whole.last().unwrap().id, ids.last().copied(), "the last event carries its number");
    for cut in [ids[0], ids[ids.len() / 2], ids[ids.len() - 2]] {
        let after_cut = whole.iter().position(|e| e.id == Some(cut)).unwrap() + 1;
        let resumed = open(&served, &path, Some(cut)).await.rest().await;
        assert_eq!(resumed, whole[after_cut..], "resumed after event {cut}");
    }
}

/// A page streaming with `fetch` across origins cannot set `Last-Event-ID` unless
/// CORS lets it, and may give the id as `?after=` instead; an id the server never
/// sent replayed the whole stream.
#[tokio::test]
async fn a_stream_resumes_after_an_id_given_in_the_query_and_refuses_one_it_never_sent() {
    let served = serve(gated_runner(), ServeOptions::new().cors_origins(["https://app.example"])).await;
    let (_, created) = served.post("/v1/workflows", json!({"plan": tool_plan("Pay Ann", "send_tool")})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/workflows/{id}/events");
    let whole = open(&served, &format!("{path}?until=rest"), None::<u64>).await.rest().await;
    let first = whole[0].id.expect("an id");
    let resumed = open(&served, &format!("{path}?until=rest&after={first}"), None::<u64>).await.rest().await;
    assert_eq!(resumed, whole[1..]);
    let from_start = open(&served, &format!("{path}?until=rest"), Some("")).await.rest().await;
    assert_eq!(from_start, whole, "an empty Last-Event-ID is none");

    // "99999" reads as an id but names no event: the stream would start mid-run.
    for bad in ["abc", "-1", "99999"] {
        let response = served.http.get(served.url(&path)).header("Last-Event-ID", bad).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("not an event id"), "{body}");
    }

    let preflight = served
        .http
        .request(reqwest::Method::OPTIONS, served.url(&path))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization,last-event-id")
        .send()
        .await
        .unwrap();
    let allowed = preflight.headers()["access-control-allow-headers"].to_str().unwrap().to_lowercase();
    assert!(allowed.contains("last-event-id") && allowed.contains("authorization"), "{allowed}");
}

#[tokio::test]
async fn an_ag_ui_run_agent_input_plans_runs_and_streams_until_the_run_rests() {
    ag_ui_run().await;
}

/// A run started by a `RunAgentInput`, with the input and the events it streamed.
async fn ag_ui_run() -> (Value, Vec<Sse>) {
    let plan_reply = json!({"steps": [{"task": "Say hello", "inputs": [], "output": "$hello"}]});
    let runner = crate::serve::runner_with(vec![], ScriptedLlm::new().json(plan_reply).text("Hello!"));
    let served = serve(runner, ServeOptions::new()).await;
    let input = json!({
        "threadId": "thread-1", "runId": "run-1", "state": {}, "tools": [], "context": [],
        "forwardedProps": {},
        "messages": [{"id": "m1", "role": "user", "content": "Say hello"}]
    });
    let response = served.http.post(served.url("/v1/agui")).json(&input).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let events = SseReader::new(response).rest().await;
    assert_eq!(events[0].data["type"], "RUN_STARTED");
    assert_eq!(
        (events[0].data["threadId"].as_str(), events[0].data["runId"].as_str()),
        (Some("thread-1"), Some("run-1"))
    );
    let text: Vec<&Value> =
        events.iter().filter(|e| e.data["type"] == "TEXT_MESSAGE_CONTENT").map(|e| &e.data).collect();
    assert_eq!(text.len(), 1);
    assert_eq!(text[0]["delta"], "Hello!");
    let last = &events.last().unwrap().data;
    assert_eq!((last["type"].as_str(), last["runId"].as_str()), (Some("RUN_FINISHED"), Some("run-1")));
    assert!(last["usage"].as_array().is_some_and(|u| !u.is_empty()), "tokens by model: {last}");
    (input, events)
}

#[tokio::test]
async fn an_ag_ui_resume_answers_the_interrupt_and_streams_the_run_on() {
    let served = serve(gated_runner(), ServeOptions::new()).await;
    let (_, created) = served.post("/v1/workflows", json!({"plan": tool_plan("Pay Ann", "send_tool")})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let question = served.rest(&id).await.outstanding_clarifications().next().unwrap().id.to_string();
    let input = json!({"threadId": id, "runId": "run-2", "messages": [],
                       "resume": [{"interruptId": question, "status": "resolved", "payload": true}]});
    let response = served.http.post(served.url("/v1/agui")).json(&input).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let events = SseReader::new(response).rest().await;
    assert_eq!(events[0].data["type"], "RUN_STARTED", "{:?}", types(&events));
    assert_eq!(events[0].data["runId"], "run-2", "the run the client named");
    assert_eq!(events.last().unwrap().data["outcome"]["type"], "success");
    assert_eq!(served.rest(&id).await.state(), WorkflowState::Complete);
}

/// Answers that leave a question open, or a cancel, start no run: the answer is a
/// run that rests at once, so an AG-UI client is not left waiting on a stream
/// that never sends anything.
#[tokio::test]
async fn an_ag_ui_resume_that_starts_no_run_streams_a_run_that_rests_at_once() {
    let config = portia::Config::builder().summarize_final_output(false).build().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let runner = Runner::builder(config).llm(Arc::new(ScriptedLlm::new())).storage(storage).build().unwrap();
    let served = serve(runner, ServeOptions::new()).await;
    let plan = json!({"plan_context": {"query": "Where, and are you sure?", "tool_ids": []}, "steps": [
        {"task": "Which city?", "inputs": [], "output": "$city", "ask_user": {"kind": "input"}},
        {"task": "Are you sure?", "inputs": [], "output": "$sure", "ask_user": {"kind": "confirm"}},
    ]});
    let (_, created) = served.post("/v1/workflows", json!({"plan": plan})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let open: Vec<String> = served.rest(&id).await.outstanding_clarifications().map(|c| c.id.to_string()).collect();
    assert_eq!(open.len(), 2, "both questions are asked at once");
    let resume = |entry: Value| json!({"threadId": id, "runId": "run-2", "messages": [], "resume": [entry]});

    let input = resume(json!({"interruptId": open[0], "status": "resolved", "payload": "Oslo"}));
    let response = served.http.post(served.url("/v1/agui")).json(&input).send().await.unwrap();
    let events = SseReader::new(response).rest().await;
    assert_eq!(types(&events).first(), Some(&"RUN_STARTED"), "{:?}", types(&events));
    let last = &events.last().unwrap().data;
    assert_eq!((last["type"].as_str(), last["runId"].as_str()), (Some("RUN_FINISHED"), Some("run-2")));
    assert_eq!(last["outcome"]["type"], "interrupt", "{last}");
    let left: Vec<&str> =
        last["outcome"]["interrupts"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(left, [open[1].as_str()], "only the question still open");
    assert_eq!(served.rest(&id).await.state(), WorkflowState::NeedClarification);

    let input = resume(json!({"interruptId": open[1], "status": "cancelled"}));
    let response = served.http.post(served.url("/v1/agui")).json(&input).send().await.unwrap();
    let events = SseReader::new(response).rest().await;
    assert_eq!(types(&events).first(), Some(&"RUN_STARTED"), "{:?}", types(&events));
    assert_eq!(events.last().unwrap().data["outcome"]["type"], "cancelled", "{:?}", types(&events));
}

#[tokio::test]
#[ignore = "needs @ag-ui/core: PORTIA_AGUI_CHECK (set by .ci/install-agui)"]
async fn every_event_sent_parses_with_the_published_ag_ui_schemas() {
    let check = std::env::var("PORTIA_AGUI_CHECK").expect("PORTIA_AGUI_CHECK: run `eval \"$(bash .ci/install-agui)\"`");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, events: &[Sse]| {
        let lines: Vec<String> = events.iter().map(|e| e.data.to_string()).collect();
        std::fs::write(dir.path().join(name), lines.join("\n")).unwrap();
        dir.path().join(name)
    };
    let approval = write("approval.jsonl", &approval_stream().await);
    let (input, events) = ag_ui_run().await;
    let run = write("agui.jsonl", &events);
    std::fs::write(dir.path().join("input.json"), input.to_string()).unwrap();
    for (events, input) in [(approval, None), (run, Some(dir.path().join("input.json")))] {
        let mut node = std::process::Command::new("node");
        node.arg(&check).arg(&events);
        if let Some(input) = input {
            node.arg(input);
        }
        let output = node.output().unwrap();
        assert!(
            output.status.success(),
            "{}: {}{}",
            events.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test]
async fn a_token_bound_to_another_end_user_gets_404_on_the_event_stream() {
    use portia::runner::serve::{ServerToken, Tokens};
    let tokens =
        Tokens::new([ServerToken::for_end_user("ann-token", "ann"), ServerToken::for_end_user("bob-token", "bob")]);
    let served = serve(gated_runner(), ServeOptions::new().tokens(tokens)).await;
    let (_, created) =
        served.post_as("ann-token", "/v1/workflows", json!({"plan": tool_plan("Pay", "send_tool")})).await;
    let path = format!("/v1/workflows/{}/events", created["id"].as_str().unwrap());
    let bobs = served.http.get(served.url(&path)).bearer_auth("bob-token").send().await.unwrap();
    assert_eq!(bobs.status(), 404);
    let anns =
        served.http.get(served.url(&format!("{path}?until=rest"))).bearer_auth("ann-token").send().await.unwrap();
    assert_eq!(anns.status(), 200);
    let events = SseReader::new(anns).rest().await;
    assert_eq!(events.last().unwrap().data["outcome"]["type"], "interrupt");
}

/// Starts a run of `query` through `POST /v1/agui` with the protocol's own HTTP
/// client (`@ag-ui/client`) and returns the events it read, in order.
async fn run_agui_client(served: &Served, query: &str) -> Vec<Value> {
    let check = std::env::var("PORTIA_AGUI_CHECK").expect("PORTIA_AGUI_CHECK: run `eval \"$(bash .ci/install-agui)\"`");
    let script = std::path::Path::new(&check).with_file_name("run-agent.js");
    let output =
        tokio::process::Command::new("node").arg(script).arg(served.url("/v1/agui")).arg(query).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[tokio::test]
#[ignore = "needs @ag-ui/client: PORTIA_AGUI_CHECK (set by .ci/install-agui)"]
async fn the_ag_ui_http_client_starts_a_run_and_reads_it_to_the_end() {
    let plan_reply = json!({"steps": [{"task": "Say hello", "inputs": [], "output": "$hello"}]});
    let runner = crate::serve::runner_with(vec![], ScriptedLlm::new().json(plan_reply).text("Hello from portia"));
    let served = serve(runner, ServeOptions::new()).await;
    let events = run_agui_client(&served, "Say hello").await;
    assert_eq!(events[0]["type"], "RUN_STARTED");
    assert_eq!(
        (events[0]["threadId"].as_str(), events[0]["runId"].as_str()),
        (Some("client-thread"), Some("client-run"))
    );
    let text: Vec<&str> =
        events.iter().filter(|e| e["type"] == "TEXT_MESSAGE_CONTENT").filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(text, ["Hello from portia"]);
    assert_eq!(events.last().unwrap()["type"], "RUN_FINISHED");
}

/// A model of the test's own: a plan for a structured request; for a tool-calling
/// one, a call of `echo_tool` whose arguments it streams in pieces when asked to
/// stream; text otherwise.
#[derive(Debug)]
struct StreamsAToolCall;

const ARGUMENT_PIECES: [&str; 3] = ["{\"text\"", ": \"hi", "\"}"];

#[portia::async_trait]
impl portia::llm::LlmClient for StreamsAToolCall {
    async fn chat(&self, request: portia::llm::LlmRequest) -> Result<portia::llm::LlmResponse, portia::llm::LlmError> {
        use portia::llm::{Deltas, LlmResponse, ToolCall};
        if request.output_schema.is_some() {
            let plan = json!({"steps": [{"task": "Echo hi", "inputs": [], "tool_id": "echo_tool", "output": "$out"}]});
            return Ok(LlmResponse::text(plan.to_string()));
        }
        if request.tools.is_empty() {
            return Ok(LlmResponse::text("Echoed."));
        }
        if let Some(stream) = Deltas::current() {
            stream.begin_attempt();
            stream.tool_arguments(0, "echo_tool", "");
            for piece in ARGUMENT_PIECES {
                stream.tool_arguments(0, "echo_tool", piece);
            }
        }
        let mut reply = LlmResponse::text("");
        reply.text = None;
        let arguments = serde_json::from_str(&ARGUMENT_PIECES.concat()).unwrap();
        reply.tool_calls = vec![ToolCall { id: "call_1".into(), name: "echo_tool".into(), arguments }];
        Ok(reply)
    }
}

/// The AG-UI client reads a tool call whose arguments stream as a sequence it
/// accepts (it checks each event's schema and their order): start, the pieces,
/// end, then the result, under one id.
#[tokio::test]
#[ignore = "needs @ag-ui/client: PORTIA_AGUI_CHECK (set by .ci/install-agui)"]
async fn the_ag_ui_http_client_accepts_a_streamed_tool_call() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let runner = Runner::builder(config())
        .tools(InMemoryToolRegistry::new().with(MockTool::echo("echo_tool")).unwrap())
        .llm(Arc::new(StreamsAToolCall))
        .storage(storage)
        .build()
        .unwrap();
    let served = serve(runner, ServeOptions::new()).await;
    let events = run_agui_client(&served, "Echo hi").await;
    let calls: Vec<&Value> = events.iter().filter(|e| e["type"].as_str().unwrap().starts_with("TOOL_CALL")).collect();
    let shape: Vec<&str> = calls.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        shape,
        ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_ARGS", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"]
    );
    assert!(calls.iter().all(|e| e["toolCallId"] == calls[0]["toolCallId"]), "one call: {calls:#?}");
    let arguments: Vec<&str> = calls.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(arguments, ARGUMENT_PIECES);
}

/// An LLM that calls `echo_tool`, streaming the call's arguments in two pieces,
/// each let out by the test; its calls without tools answer at once.
#[derive(Debug, Default)]
pub(crate) struct GatedToolCall {
    pub(crate) gates: [tokio::sync::Notify; 2],
}

/// The pieces of the arguments [`GatedToolCall`] streams.
pub(crate) const GATED_PIECES: [&str; 2] = ["{\"text\": \"Amazon", " grew\"}"];

#[portia::async_trait]
impl LlmClient for GatedToolCall {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        if request.tools.is_empty() {
            return Ok(LlmResponse::text("Echoed."));
        }
        let stream = Deltas::current();
        if let Some(stream) = &stream {
            stream.begin_attempt();
        }
        for (i, (gate, piece)) in self.gates.iter().zip(GATED_PIECES).enumerate() {
            gate.notified().await;
            if let Some(stream) = &stream {
                // The call is named once the test's stream listens: one that joins
                // after a call's start leaves the call's pieces out.
                if i == 0 {
                    stream.tool_arguments(0, "echo_tool", "");
                }
                stream.tool_arguments(0, "echo_tool", piece);
            }
        }
        let arguments = serde_json::from_str(&GATED_PIECES.concat()).unwrap();
        let call = portia::llm::ToolCall { id: "call_1".into(), name: "echo_tool".into(), arguments };
        Ok(LlmResponse { tool_calls: vec![call], ..LlmResponse::default() })
    }
}

/// A runner streaming replies from `llm`, with `echo_tool`.
pub(crate) fn streaming_runner(llm: Arc<dyn portia::llm::LlmClient>) -> Runner {
    let config = portia::Config::builder()
        .summarize_final_output(false)
        .llm_stream(portia::llm::StreamMode::On)
        .build()
        .unwrap();
    Runner::builder(config)
        .llm(llm)
        .tools(InMemoryToolRegistry::new().with(MockTool::echo("echo_tool")).unwrap())
        .storage(Arc::new(InMemoryStorage::new()))
        .build()
        .unwrap()
}

/// A stream dropped while a tool call's arguments stream in, and resumed with
/// `Last-Event-ID` once the call is made and finished: the client's two streams
/// together show the call under one id, started once, ended, with its result.
#[tokio::test]
async fn a_stream_resumed_between_a_streamed_call_and_its_result_keeps_the_calls_id() {
    let llm = Arc::new(GatedToolCall::default());
    let served = serve(streaming_runner(llm.clone()), ServeOptions::new()).await;
    let plan = json!({
        "plan_context": {"query": "Echo how Amazon did", "tool_ids": ["echo_tool"]},
        "steps": [{"task": "Echo how Amazon did", "inputs": [], "tool_id": "echo_tool", "output": "$out"}]
    });
    let first_piece = |e: &Value| e["type"] == "TOOL_CALL_ARGS" && e["delta"] != "";
    let (id, path, seen) = drop_stream_at_first_piece(&served, plan, &llm.gates[0], first_piece).await;

    llm.gates[1].notify_one();
    assert_eq!(served.rest(&id).await.state(), WorkflowState::Complete);
    let last_id = seen.iter().rev().find_map(|e| e.raw_id.clone()).unwrap();
    assert!(last_id.contains('/'), "the id carries the streamed call: {last_id}");
    let resumed = open(&served, &path, Some(&last_id)).await.rest().await;
    // The same id given in the query, for a client that cannot set the header.
    let via_query = open(&served, &format!("{path}?after={last_id}"), None::<u64>).await.rest().await;
    let shape = |events: &[Sse]| -> Vec<(Value, Value)> {
        events.iter().map(|e| (e.data["type"].clone(), e.data["toolCallId"].clone())).collect()
    };
    assert_eq!(shape(&via_query), shape(&resumed));

    let all: Vec<&Value> = seen.iter().chain(&resumed).map(|e| &e.data).collect();
    let of = |kind: &str| -> Vec<String> {
        all.iter().filter(|e| e["type"] == kind).map(|e| e["toolCallId"].as_str().unwrap().to_owned()).collect()
    };
    let (starts, ends, results) = (of("TOOL_CALL_START"), of("TOOL_CALL_END"), of("TOOL_CALL_RESULT"));
    assert_eq!(results.len(), 1, "{all:#?}");
    for result in &results {
        assert_eq!(starts.iter().filter(|s| *s == result).count(), 1, "started once: {all:#?}");
        assert_eq!(ends.iter().filter(|s| *s == result).count(), 1, "ended once: {all:#?}");
    }
    assert_eq!(starts, results, "no call is left without its result: {all:#?}");
    // The pieces streamed while no one listened are gone; the call as made, with
    // its whole arguments, comes as the raw event of its end.
    let end = resumed.iter().find(|e| e.data["type"] == "TOOL_CALL_END").unwrap();
    assert_eq!(end.data["rawEvent"]["event"], "tool_call_started");
    assert_eq!(end.data["rawEvent"]["arguments"], json!({"text": "Amazon grew"}));
    assert_eq!(resumed.last().unwrap().data["type"], "RUN_FINISHED");
}

fn echo_plan() -> Value {
    json!({
        "plan_context": {"query": "Echo how Amazon did", "tool_ids": ["echo_tool"]},
        "steps": [{"task": "Echo how Amazon did", "inputs": [], "tool_id": "echo_tool", "output": "$out"}]
    })
}

/// A step's start is stored with the step's outcome, after the reply it streams:
/// its `STEP_STARTED` came after the pieces of the tool call it streamed, which a
/// client showed outside any step. It now comes first, and once.
#[tokio::test]
async fn a_streamed_tool_call_comes_after_its_steps_start_which_comes_once() {
    let llm = Arc::new(GatedToolCall::default());
    let served = serve(streaming_runner(llm.clone()), ServeOptions::new()).await;
    let (_, created) = served.post("/v1/workflows", json!({"plan": echo_plan()})).await;
    let path = format!("/v1/workflows/{}/events", created["id"].as_str().unwrap());
    let mut stream = open(&served, &path, None::<u64>).await;
    let mut seen = stream.until(|e| e["type"] == "RUN_STARTED").await;
    llm.gates[0].notify_one();
    seen.extend(stream.until(|e| e["type"] == "TOOL_CALL_ARGS" && e["delta"] != "").await);
    llm.gates[1].notify_one();
    seen.extend(stream.rest().await);

    let kinds = types(&seen);
    let step_started = kinds.iter().position(|k| *k == "STEP_STARTED").unwrap_or_else(|| panic!("{kinds:?}"));
    let call_started = kinds.iter().position(|k| *k == "TOOL_CALL_START").unwrap();
    assert!(step_started < call_started, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "STEP_STARTED").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "STEP_FINISHED").count(), 1, "{kinds:?}");
    assert_eq!(seen[step_started].data["stepName"], "1. Echo how Amazon did");
    assert_eq!(kinds.last(), Some(&"RUN_FINISHED"));
}

/// A stream that saw a step start early (see above) and dropped before the start
/// was stored does not see it start again when it resumes.
#[tokio::test]
async fn a_stream_resumed_after_a_step_started_early_does_not_start_it_again() {
    let llm = Arc::new(GatedToolCall::default());
    let served = serve(streaming_runner(llm.clone()), ServeOptions::new()).await;
    let first_piece = |e: &Value| e["type"] == "TOOL_CALL_ARGS" && e["delta"] != "";
    let (id, path, seen) = drop_stream_at_first_piece(&served, echo_plan(), &llm.gates[0], first_piece).await;
    assert!(types(&seen).contains(&"STEP_STARTED"), "{:?}", types(&seen));
    llm.gates[1].notify_one();
    assert_eq!(served.rest(&id).await.state(), WorkflowState::Complete);

    let last_id = seen.iter().rev().find_map(|e| e.raw_id.clone()).unwrap();
    let resumed = types(&open(&served, &path, Some(&last_id)).await.rest().await).join(" ");
    assert!(!resumed.contains("STEP_STARTED"), "{resumed}");
    assert!(resumed.contains("STEP_FINISHED") && resumed.ends_with("RUN_FINISHED"), "{resumed}");
}

/// A stream dropped in the middle of a streamed text and resumed with
/// `Last-Event-ID` once the run is over: the resumed stream first ends the message
/// its client has open and names it cut, sends no piece of it that the client
/// would join to the wrong text, and the whole text comes with the run's result.
#[tokio::test]
async fn a_stream_resumed_in_the_middle_of_a_text_ends_the_open_message_and_says_it_was_cut() {
    let llm = Arc::new(TwoPieces::default());
    let served = serve(streaming_runner(llm.clone()), ServeOptions::new()).await;
    let plan = json!({
        "plan_context": {"query": "Say how Amazon did", "tool_ids": []},
        "steps": [{"task": "Say how Amazon did", "inputs": [], "output": "$out"}]
    });
    let first_piece = |e: &Value| e["type"] == "TEXT_MESSAGE_CONTENT";
    let (id, path, seen) = drop_stream_at_first_piece(&served, plan, &llm.gates[0], first_piece).await;

    llm.gates[1].notify_one();
    assert_eq!(served.rest(&id).await.state(), WorkflowState::Complete);
    let opened = seen.iter().find(|e| e.data["type"] == "TEXT_MESSAGE_START").unwrap().data["messageId"].clone();
    let last_id = seen.iter().rev().find_map(|e| e.raw_id.clone()).unwrap();
    let resumed = open(&served, &path, Some(last_id)).await.rest().await;

    assert_eq!(resumed[0].data["type"], "TEXT_MESSAGE_END", "{resumed:#?}");
    assert_eq!(resumed[0].data["messageId"], opened);
    assert_eq!(resumed[1].data["name"], "portia.stream_resumed");
    assert_eq!(resumed[1].data["value"]["messageIds"], json!([opened]));
    let of_opened = resumed.iter().filter(|e| e.data["messageId"] == opened).count();
    assert_eq!(of_opened, 1, "only its end: {resumed:#?}");
    let finished = resumed.last().unwrap();
    assert_eq!(finished.data["type"], "RUN_FINISHED");
    assert_eq!(finished.data["result"], json!(PIECES.concat()));
}

/// Creates a workflow of `plan` and follows its events until the run starts, lets the
/// LLM's first piece out through `gate`, reads on until `first_piece`, and drops the
/// stream there: the workflow's id, its events' path, and what the client saw.
async fn drop_stream_at_first_piece(
    served: &Served,
    plan: Value,
    gate: &tokio::sync::Notify,
    first_piece: impl Fn(&Value) -> bool,
) -> (String, String, Vec<Sse>) {
    let (_, created) = served.post("/v1/workflows", json!({"plan": plan})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/workflows/{id}/events");
    let mut stream = open(served, &path, None::<u64>).await;
    let mut seen = stream.until(|e| e["type"] == "RUN_STARTED").await;
    gate.notify_one();
    seen.extend(stream.until(first_piece).await);
    (id, path, seen)
}
