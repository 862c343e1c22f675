//! Token streaming end to end: a runner whose model is an in-process double of
//! OpenAI's or Anthropic's API answering `stream: true` with Server-Sent Events
//! shaped as their documentation shows. The pieces reach subscribers as events, the
//! store keeps only the finished reply, usage is exact, and a stream that breaks is
//! retried with a restart event.

use std::sync::Arc;

use portia::llm::{LlmProvider, StreamMode};
use portia::runner::{EventKind, WorkflowEvent};
use portia::testing::MockTool;
use portia::{Config, InMemoryToolRegistry, Plan, PlanBuilder, Runner, SharedValue, Workflow, WorkflowState};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const OPENAI_ROUTE: &str = "/v1/chat/completions";
const ANTHROPIC_ROUTE: &str = "/v1/messages";
const GEMINI_ROUTE: &str = "/v1beta/models/model-test:streamGenerateContent";

fn config(server: &MockServer, provider: LlmProvider) -> portia::config::ConfigBuilder {
    let builder = Config::builder()
        .llm_provider(provider)
        .default_model("model-test")
        .execution(portia::config::ExecutionMode::Sequential)
        .summarize_final_output(false)
        .max_retries(2u32)
        .retry_backoff_ms(0u64)
        .request_timeout_secs(5u64);
    match provider {
        LlmProvider::Anthropic => builder.anthropic_api_key("sk-ant-test").anthropic_base_url(server.uri()),
        LlmProvider::Gemini => builder.gemini_api_key("AIza-test").gemini_base_url(server.uri()),
        _ => builder.openai_api_key("sk-test").openai_base_url(format!("{}/v1", server.uri())),
    }
}

fn runner(config: portia::config::ConfigBuilder) -> Runner {
    let tools = InMemoryToolRegistry::from_tools([Arc::new(MockTool::echo("echo_tool")) as Arc<dyn portia::Tool>]);
    Runner::builder(config.build().unwrap()).tools(tools.unwrap()).build().unwrap()
}

fn sse(events: &[(Option<&str>, Value)]) -> ResponseTemplate {
    let mut body = String::new();
    for (name, data) in events {
        if let Some(name) = name {
            body.push_str(&format!("event: {name}\n"));
        }
        body.push_str(&format!("data: {data}\n\n"));
    }
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

fn openai_chunk(delta: Value, finish: Option<&str>) -> (Option<&'static str>, Value) {
    let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "model-test",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    (None, chunk)
}

fn openai_usage(prompt: u64, completion: u64) -> (Option<&'static str>, Value) {
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                       "prompt_tokens_details": {"cached_tokens": prompt / 2}});
    (None, json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}))
}

fn done() -> String {
    "data: [DONE]\n\n".to_owned()
}

/// An OpenAI stream of `pieces` of text, then the usage and `[DONE]`.
fn openai_text(pieces: &[&str], complete: bool) -> ResponseTemplate {
    let mut events = vec![openai_chunk(json!({"role": "assistant", "content": ""}), None)];
    events.extend(pieces.iter().map(|p| openai_chunk(json!({"content": p}), None)));
    if !complete {
        return sse(&events);
    }
    events.push(openai_chunk(json!({}), Some("stop")));
    events.push(openai_usage(11, 4));
    with_done(&events)
}

/// An OpenAI stream of `events`, ended by `[DONE]`.
fn with_done(events: &[(Option<&str>, Value)]) -> ResponseTemplate {
    let mut body = String::new();
    for (_, data) in events {
        body.push_str(&format!("data: {data}\n\n"));
    }
    body.push_str(&done());
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

async fn mount_stream(server: &MockServer, route: &str, reply: ResponseTemplate, n: u64) {
    Mock::given(method("POST"))
        .and(path(route))
        .and(body_partial_json(json!({"stream": true})))
        .respond_with(reply)
        .up_to_n_times(n)
        .expect(n)
        .mount(server)
        .await;
}

fn one_step(task: &str, tool: Option<&str>) -> Plan {
    PlanBuilder::new("q").step(task, tool, "$out").build()
}

/// Runs `plan` while subscribed; returns the workflow and every event announced.
async fn run_watched(runner: &Runner, plan: &Plan) -> (Workflow, Vec<WorkflowEvent>) {
    let mut events = runner.subscribe();
    let workflow = runner.create_workflow(plan).await.unwrap();
    let done = runner.execute_workflow(workflow).await.unwrap();
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        let rest = event.kind.is_rest();
        seen.push(event);
        if rest {
            break;
        }
    }
    (done, seen)
}

fn streamed_text(events: &[WorkflowEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::LlmTextDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// The arguments streamed for calls of `tool`, joined.
fn streamed_arguments(events: &[WorkflowEvent], tool: &str) -> String {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::LlmToolCallDelta { tool_id, arguments, .. } if tool_id == tool => Some(arguments.as_str()),
            _ => None,
        })
        .collect()
}

fn is_stream_event(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::LlmTextDelta { .. } | EventKind::LlmToolCallDelta { .. } | EventKind::LlmStreamRestarted { .. }
    )
}

#[tokio::test]
async fn openai_text_streams_to_subscribers_and_only_the_whole_reply_is_stored() {
    let server = MockServer::start().await;
    mount_stream(&server, OPENAI_ROUTE, openai_text(&["Hello", ", ", "world."], true), 1).await;
    let runner = runner(config(&server, LlmProvider::OpenAi));
    let (done, seen) = run_watched(&runner, &one_step("Greet the world", None)).await;

    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(streamed_text(&seen), "Hello, world.");
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("Hello, world."));
    let finished = seen.iter().find_map(|e| match &e.kind {
        EventKind::LlmCallFinished { usage, .. } => Some(*usage),
        _ => None,
    });
    let usage = finished.expect("the call is announced");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (11, 4), "usage comes from the last chunk");
    assert_eq!(usage.cache_read_tokens, 5, "with the cached tokens it counts");

    let stored = runner.storage().events(done.id(), 0).await.unwrap();
    assert!(stored.iter().any(|e| matches!(e.event.kind, EventKind::LlmCallFinished { .. })));
    assert!(!stored.iter().any(|e| is_stream_event(&e.event.kind)), "pieces are never stored");
    let sent = server.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn openai_tool_call_arguments_are_assembled_from_their_pieces_and_streamed() {
    let server = MockServer::start().await;
    let call = |args: &str, first: bool| {
        let mut piece = json!({"index": 0, "function": {"arguments": args}});
        if first {
            piece = json!({"index": 0, "id": "call_1", "type": "function", "function": {"name": "echo_tool", "arguments": args}});
        }
        openai_chunk(json!({"tool_calls": [piece]}), None)
    };
    let events = [
        openai_chunk(json!({"role": "assistant", "content": null}), None),
        call("", true),
        call("{\"text\":", false),
        call(" \"hi\"}", false),
        openai_chunk(json!({}), Some("tool_calls")),
        openai_usage(20, 7),
    ];
    mount_stream(&server, OPENAI_ROUTE, with_done(&events), 1).await;
    let runner = runner(config(&server, LlmProvider::OpenAi));
    let (done, seen) = run_watched(&runner, &one_step("Echo hi", Some("echo_tool"))).await;

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(streamed_arguments(&seen, "echo_tool"), "{\"text\": \"hi\"}");
    let first = seen.iter().find(|e| matches!(e.kind, EventKind::LlmToolCallDelta { .. })).unwrap();
    assert!(
        matches!(&first.kind, EventKind::LlmToolCallDelta { arguments, index: 0, .. } if arguments.is_empty()),
        "the call is named before its arguments come: {first:?}"
    );
    let stored = runner.storage().events(done.id(), 0).await.unwrap();
    assert!(!stored.iter().any(|e| is_stream_event(&e.event.kind)), "the pieces are not stored");
    let arguments = stored.iter().find_map(|e| match &e.event.kind {
        EventKind::ToolCallStarted { arguments, .. } => Some(arguments.clone()),
        _ => None,
    });
    assert_eq!(arguments.map(SharedValue::into_value), Some(json!({"text": "hi"})));
    assert_eq!((done.usage().total.prompt_tokens, done.usage().total.completion_tokens), (20, 7));
}

fn anthropic_event(name: &'static str, data: Value) -> (Option<&'static str>, Value) {
    (Some(name), data)
}

#[tokio::test]
async fn anthropic_text_and_tool_input_stream_with_exact_usage() {
    let server = MockServer::start().await;
    let start = anthropic_event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
               "model": "model-test", "stop_reason": null, "usage": {"input_tokens": 30, "cache_read_input_tokens": 2, "output_tokens": 1}}}),
    );
    let delta = |index: u64, delta: Value| {
        anthropic_event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": delta}))
    };
    let stop =
        |index: u64| anthropic_event("content_block_stop", json!({"type": "content_block_stop", "index": index}));
    let events = [
        start,
        anthropic_event("ping", json!({"type": "ping"})),
        anthropic_event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        delta(0, json!({"type": "text_delta", "text": "Echoing "})),
        delta(0, json!({"type": "text_delta", "text": "now."})),
        stop(0),
        anthropic_event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "echo_tool", "input": {}}}),
        ),
        delta(1, json!({"type": "input_json_delta", "partial_json": ""})),
        delta(1, json!({"type": "input_json_delta", "partial_json": "{\"text\": \"h"})),
        delta(1, json!({"type": "input_json_delta", "partial_json": "i\"}"})),
        stop(1),
        anthropic_event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 12}}),
        ),
        anthropic_event("message_stop", json!({"type": "message_stop"})),
    ];
    mount_stream(&server, ANTHROPIC_ROUTE, sse(&events), 1).await;
    let runner = runner(config(&server, LlmProvider::Anthropic));
    let (done, seen) = run_watched(&runner, &one_step("Echo hi", Some("echo_tool"))).await;

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(streamed_text(&seen), "Echoing now.");
    assert_eq!(streamed_arguments(&seen, "echo_tool"), "{\"text\": \"hi\"}");
    let arguments = seen.iter().find_map(|e| match &e.kind {
        EventKind::ToolCallStarted { arguments, .. } => Some(arguments.clone()),
        _ => None,
    });
    assert_eq!(arguments.map(SharedValue::into_value), Some(json!({"text": "hi"})));
    assert_eq!((done.usage().total.prompt_tokens, done.usage().total.completion_tokens), (32, 12));
    assert_eq!(done.usage().total.cache_read_tokens, 2, "the cached input is counted apart");
}

#[tokio::test]
async fn a_stream_that_breaks_is_retried_and_subscribers_are_told_to_start_over() {
    let server = MockServer::start().await;
    mount_stream(&server, OPENAI_ROUTE, openai_text(&["Hel"], false), 1).await;
    mount_stream(&server, OPENAI_ROUTE, openai_text(&["Hello", "!"], true), 1).await;
    let runner = runner(config(&server, LlmProvider::OpenAi));
    let (done, seen) = run_watched(&runner, &one_step("Greet", None)).await;

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("Hello!"));
    let stream: Vec<String> = seen
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::LlmTextDelta { text, .. } => Some(text.clone()),
            EventKind::LlmStreamRestarted { .. } => Some("<restart>".to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(stream, ["Hel", "<restart>", "Hello", "!"]);
    let usage = done.usage().total;
    assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.llm_calls), (11, 4, 1));
}

/// A plain Chat Completions reply, saying `Plain.`, mounted for one request.
async fn mount_plain(server: &MockServer) {
    let reply = json!({"id": "c", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Plain."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
    Mock::given(method("POST"))
        .and(path(OPENAI_ROUTE))
        .respond_with(ResponseTemplate::new(200).set_body_json(reply))
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_server_that_ignores_stream_true_is_read_whole() {
    let server = MockServer::start().await;
    mount_plain(&server).await;
    let runner = runner(config(&server, LlmProvider::OpenAi).llm_stream(StreamMode::On));
    let workflow = runner.create_workflow(&one_step("Say it", None)).await.unwrap();
    let done = runner.execute_workflow(workflow).await.unwrap();

    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("Plain."));
    let sent: Value = serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(sent["stream"], true);
}

/// A proxy in front of llama.cpp's server was seen passing its stream on labelled
/// `application/json`: the events are read all the same.
#[tokio::test]
async fn a_stream_labelled_as_json_is_read_as_events() {
    let server = MockServer::start().await;
    let mut body = String::new();
    for piece in ["Hel", "lo."] {
        body.push_str(&format!("data: {}\n\n", openai_chunk(json!({"content": piece}), None).1));
    }
    body.push_str(&format!("data: {}\n\n", openai_chunk(json!({}), Some("stop")).1));
    body.push_str(&format!("data: {}\n\n{}", openai_usage(11, 4).1, done()));
    mount_stream(&server, OPENAI_ROUTE, ResponseTemplate::new(200).set_body_raw(body, "application/json"), 1).await;
    let runner = runner(config(&server, LlmProvider::OpenAi));
    let (done, seen) = run_watched(&runner, &one_step("Say hello", None)).await;

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("Hello."));
    assert_eq!(streamed_text(&seen), "Hello.");
}

#[tokio::test]
async fn an_unwatched_run_sends_the_plain_request_by_default() {
    let server = MockServer::start().await;
    mount_plain(&server).await;
    let runner = runner(config(&server, LlmProvider::OpenAi));
    let workflow = runner.create_workflow(&one_step("Say it", None)).await.unwrap();
    let done = runner.execute_workflow(workflow).await.unwrap();

    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("Plain."));
    let sent: Value = serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(sent.get("stream"), None);
}

/// `portia serve`'s AG-UI stream, opened while a run waits at an approval gate:
/// once approved, the next step's streamed reply arrives as one text message in
/// pieces, ended when the call is, before the answer and the run's end.
#[cfg(feature = "server")]
#[tokio::test]
async fn serve_streams_the_pieces_as_one_ag_ui_text_message() {
    use crate::serve::serve;
    use crate::serve_events::{Sse, SseReader};
    use portia::runner::ApprovalGate;
    use portia::runner::serve::ServeOptions;
    use portia::tool::ToolSpec;

    let server = MockServer::start().await;
    mount_stream(&server, OPENAI_ROUTE, openai_text(&["Paid ", "Ann."], true), 1).await;
    let send = MockTool::echo("send_tool").with_spec(ToolSpec::new("send_tool", "Send Tool", "Sends a payment."));
    let runner = Runner::builder(config(&server, LlmProvider::OpenAi).build().unwrap())
        .tools(InMemoryToolRegistry::new().with(send).unwrap())
        .hook(ApprovalGate::for_side_effects())
        .build()
        .unwrap();
    let served = serve(runner, ServeOptions::new()).await;
    let plan = json!({
        "plan_context": {"query": "Pay Ann", "tool_ids": ["send_tool"]},
        "steps": [
            {"task": "Pay Ann", "inputs": [], "tool_id": "send_tool", "output": "$paid", "args": {"to": "Ann"}},
            {"task": "Say it is done", "inputs": [], "tool_id": null, "output": "$said"},
        ]
    });
    let (_, created) = served.post("/v1/workflows", json!({"plan": plan})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let response = served.http.get(served.url(&format!("/v1/workflows/{id}/events"))).send().await.unwrap();
    let mut stream = SseReader::new(response);
    let first = stream.until(|e| e["type"] == "RUN_FINISHED").await;
    let question = first.last().unwrap().data["outcome"]["interrupts"][0]["id"].as_str().unwrap().to_owned();

    let path = format!("/v1/workflows/{id}/clarifications/{question}");
    let (status, _) = served.post(&path, json!({"response": true, "resume": true})).await;
    assert_eq!(status, 200);
    let second = stream.rest().await;
    let texts: Vec<&Value> =
        second.iter().map(|e| &e.data).filter(|e| e["type"].as_str().unwrap().starts_with("TEXT_MESSAGE")).collect();
    let streamed = texts[0]["messageId"].clone();
    let shape: Vec<(&str, Value)> =
        texts.iter().map(|e| (e["type"].as_str().unwrap(), e.get("delta").cloned().unwrap_or(Value::Null))).collect();
    assert_eq!(
        shape[..4],
        [
            ("TEXT_MESSAGE_START", Value::Null),
            ("TEXT_MESSAGE_CONTENT", json!("Paid ")),
            ("TEXT_MESSAGE_CONTENT", json!("Ann.")),
            ("TEXT_MESSAGE_END", Value::Null),
        ]
    );
    assert!(texts[..4].iter().all(|e| e["messageId"] == streamed), "one message: {texts:#?}");
    // The pieces are not stored: each one's id names the last stored event sent
    // before it, so that a stream resumed from it repeats nothing, and carries the
    // open message over, so that the resumed stream can end it.
    let before = second.iter().take_while(|e| e.data["messageId"] != streamed).filter_map(|e| e.id).last();
    let pieces: Vec<&Sse> = second.iter().filter(|e| e.data["messageId"] == streamed).collect();
    assert_eq!(pieces.len(), 4);
    let live = &pieces[..3];
    assert!(live.iter().all(|e| e.id == before && e.raw_id.as_deref().is_some_and(|id| id.contains('/'))), "{live:#?}");
    assert_eq!(second.last().unwrap().data["type"], "RUN_FINISHED");
}

/// A tool call whose arguments stream in pieces reaches an AG-UI client as
/// `TOOL_CALL_START`, its pieces as `TOOL_CALL_ARGS`, `TOOL_CALL_END`, then the
/// call's `TOOL_CALL_RESULT`, all under one id, shown once; the pieces join into
/// the arguments the tool was called with.
#[cfg(feature = "server")]
#[tokio::test]
async fn serve_streams_a_tool_calls_arguments_as_ag_ui_tool_call_args() {
    use crate::serve::serve;
    use crate::serve_events::SseReader;
    use portia::runner::serve::ServeOptions;

    let server = MockServer::start().await;
    let call = |piece: Value| openai_chunk(json!({"tool_calls": [piece]}), None);
    let events = [
        openai_chunk(json!({"role": "assistant", "content": null}), None),
        call(
            json!({"index": 0, "id": "call_1", "type": "function", "function": {"name": "echo_tool", "arguments": ""}}),
        ),
        call(json!({"index": 0, "function": {"arguments": "{\"text\":"}})),
        call(json!({"index": 0, "function": {"arguments": " \"hi\"}"}})),
        openai_chunk(json!({}), Some("tool_calls")),
        openai_usage(20, 7),
    ];
    mount_stream(&server, OPENAI_ROUTE, with_done(&events), 1).await;
    let served = serve(runner(config(&server, LlmProvider::OpenAi)), ServeOptions::new()).await;
    let plan = json!({
        "plan_context": {"query": "Echo hi", "tool_ids": ["echo_tool"]},
        "steps": [{"task": "Echo hi", "inputs": [], "tool_id": "echo_tool", "output": "$out"}]
    });
    // Queued, so that the stream listens before the model is asked.
    let (_, created) = served.post("/v1/workflows", json!({"plan": plan, "mode": "queue"})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let response = served.http.get(served.url(&format!("/v1/workflows/{id}/events"))).send().await.unwrap();
    let mut stream = SseReader::new(response);
    let (status, _) = served.post(&format!("/v1/workflows/{id}/resume"), json!({})).await;
    assert_eq!(status, 202);
    let events = stream.rest().await;

    let calls: Vec<&Value> =
        events.iter().map(|e| &e.data).filter(|e| e["type"].as_str().unwrap().starts_with("TOOL_CALL")).collect();
    let shape: Vec<&str> = calls.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(shape, ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"]);
    assert!(calls.iter().all(|e| e["toolCallId"] == calls[0]["toolCallId"]), "one call: {calls:#?}");
    assert_eq!(calls[0]["toolCallName"], "echo_tool");
    let arguments: String = calls.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), json!({"text": "hi"}));
    assert_eq!(events.last().unwrap().data["type"], "RUN_FINISHED");
}

/// A Gemini stream chunk (a whole `GenerateContentResponse`) with `parts`, the last
/// one carrying the finish reason and the usage so far.
fn gemini_chunk(parts: Value, finish: Option<&str>) -> (Option<&'static str>, Value) {
    let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
    let mut usage = json!({"promptTokenCount": 13});
    if let Some(finish) = finish {
        candidate["finishReason"] = json!(finish);
        usage = json!({"promptTokenCount": 13, "candidatesTokenCount": 5, "totalTokenCount": 18});
    }
    (None, json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "model-test"}))
}

async fn mount_gemini(server: &MockServer, reply: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(GEMINI_ROUTE))
        .and(query_param("alt", "sse"))
        .respond_with(reply)
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn gemini_text_streams_from_stream_generate_content_with_exact_usage() {
    let server = MockServer::start().await;
    let chunks = [
        gemini_chunk(json!([{"text": "thinking it over", "thought": true}]), None),
        gemini_chunk(json!([{"text": "Hello"}]), None),
        gemini_chunk(json!([{"text": ", world."}]), Some("STOP")),
    ];
    mount_gemini(&server, sse(&chunks)).await;
    let runner = runner(config(&server, LlmProvider::Gemini));
    let (done, seen) = run_watched(&runner, &one_step("Greet the world", None)).await;

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(streamed_text(&seen), "Hello, world.", "thoughts are not streamed");
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("Hello, world."));
    let usage = seen.iter().find_map(|e| match &e.kind {
        EventKind::LlmCallFinished { usage, .. } => Some(*usage),
        _ => None,
    });
    let usage = usage.expect("the call is announced");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (13, 5), "usage comes from the last chunk");
}

#[tokio::test]
async fn gemini_function_calls_in_a_stream_are_called() {
    let server = MockServer::start().await;
    let call = json!([{"functionCall": {"name": "echo_tool", "args": {"text": "hi"}}}]);
    mount_gemini(&server, sse(&[gemini_chunk(call, Some("STOP"))])).await;
    let runner = runner(config(&server, LlmProvider::Gemini));
    let (done, seen) = run_watched(&runner, &one_step("Echo hi", Some("echo_tool"))).await;

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!({"text": "hi"}));
    assert!(streamed_text(&seen).is_empty(), "a call is no text");
    let arguments: Value = serde_json::from_str(&streamed_arguments(&seen, "echo_tool")).unwrap();
    assert_eq!(arguments, json!({"text": "hi"}), "a call comes whole, as one piece");
}
