//! Bedrock's ConverseStream end to end: a runner whose model is a double answering
//! `converse-stream` with event-stream frames encoded here as AWS's framing
//! documents them. Text reaches subscribers as it comes, tool input is assembled
//! from its fragments, usage comes from the `metadata` event, and an exception
//! frame is retried.

use std::sync::Arc;

use portia::llm::{LlmProvider, StreamMode};
use portia::runner::EventKind;
use portia::testing::MockTool;
use portia::{Config, InMemoryToolRegistry, PlanBuilder, Runner, SharedValue, Workflow, WorkflowState};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ROUTE: &str = "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream";

fn runner(server: &MockServer) -> Runner {
    let config = Config::builder()
        .llm_provider(LlmProvider::Bedrock)
        .aws_access_key_id("AKIDSTREAM")
        .aws_secret_access_key("stream-secret")
        .aws_region("us-west-2")
        .bedrock_endpoint(server.uri())
        .default_model("anthropic.claude-3-5-haiku-20241022-v1:0")
        .llm_stream(StreamMode::On)
        .summarize_final_output(false)
        .max_retries(2u32)
        .retry_backoff_ms(0u64)
        .build()
        .unwrap();
    let tools = InMemoryToolRegistry::from_tools([Arc::new(MockTool::echo("echo_tool")) as Arc<dyn portia::Tool>]);
    Runner::builder(config).tools(tools.unwrap()).build().unwrap()
}

/// One event-stream frame: prelude (total and header lengths, CRC32), string
/// headers, the JSON payload, and the CRC32 of all before it.
fn frame(headers: &[(&str, &str)], payload: &Value) -> Vec<u8> {
    let payload = payload.to_string().into_bytes();
    let mut encoded = Vec::new();
    for (name, value) in headers {
        encoded.push(u8::try_from(name.len()).unwrap());
        encoded.extend(name.as_bytes());
        encoded.push(7);
        encoded.extend(u16::try_from(value.len()).unwrap().to_be_bytes());
        encoded.extend(value.as_bytes());
    }
    let total = u32::try_from(12 + encoded.len() + payload.len() + 4).unwrap();
    let mut out = total.to_be_bytes().to_vec();
    out.extend(u32::try_from(encoded.len()).unwrap().to_be_bytes());
    out.extend(crc32(&out).to_be_bytes());
    out.extend(encoded);
    out.extend(payload);
    out.extend(crc32(&out).to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn event(kind: &str, payload: Value) -> Vec<u8> {
    frame(&[(":event-type", kind), (":content-type", "application/json"), (":message-type", "event")], &payload)
}

fn stream(frames: Vec<Vec<u8>>) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(frames.concat(), "application/vnd.amazon.eventstream")
}

fn finish(stop_reason: &str, input: u64, output: u64) -> [Vec<u8>; 2] {
    [
        event("messageStop", json!({"stopReason": stop_reason})),
        event(
            "metadata",
            json!({"usage": {"inputTokens": input, "outputTokens": output, "totalTokens": input + output},
                                 "metrics": {"latencyMs": 310}}),
        ),
    ]
}

fn text_stream(pieces: &[&str]) -> ResponseTemplate {
    let mut frames = vec![event("messageStart", json!({"role": "assistant"}))];
    frames.extend(
        pieces.iter().map(|p| event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": p}}))),
    );
    frames.push(event("contentBlockStop", json!({"contentBlockIndex": 0})));
    frames.extend(finish("end_turn", 12, 5));
    stream(frames)
}

/// Runs a one-step plan while subscribed; returns the workflow, the streamed text
/// and the streamed tool-call arguments, each joined.
async fn run_watched(runner: &Runner, task: &str, tool: Option<&str>) -> (Workflow, String, String) {
    let mut events = runner.subscribe();
    let plan = PlanBuilder::new("q").step(task, tool, "$out").build();
    let workflow = runner.create_workflow(&plan).await.unwrap();
    let done = runner.execute_workflow(workflow).await.unwrap();
    let (mut text, mut arguments) = (String::new(), String::new());
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        match &event.kind {
            EventKind::LlmTextDelta { text: piece, .. } => text.push_str(piece),
            EventKind::LlmToolCallDelta { arguments: piece, tool_id, .. } if tool_id == "echo_tool" => {
                arguments.push_str(piece);
            }
            _ => {}
        }
        if event.kind.is_rest() {
            break;
        }
    }
    (done, text, arguments)
}

#[tokio::test]
async fn text_streams_from_converse_stream_with_exact_usage() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .respond_with(text_stream(&["Hello", ", ", "world."]))
        .expect(1)
        .mount(&server)
        .await;
    let (done, streamed, _) = run_watched(&runner(&server), "Greet the world", None).await;

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(streamed, "Hello, world.");
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("Hello, world."));
    assert_eq!((done.usage().total.prompt_tokens, done.usage().total.completion_tokens), (12, 5));
    let received = &server.received_requests().await.unwrap()[0];
    super::llm_bedrock::assert_signed_by(received, "AKIDSTREAM", "stream-secret", None, "us-west-2");
}

#[tokio::test]
async fn tool_input_is_assembled_from_its_fragments_and_streamed() {
    let server = MockServer::start().await;
    let mut frames = vec![
        event("messageStart", json!({"role": "assistant"})),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "echo_tool"}}}),
        ),
        event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"text\":"}}})),
        event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": " \"hi\"}"}}})),
        event("contentBlockStop", json!({"contentBlockIndex": 0})),
    ];
    frames.extend(finish("tool_use", 20, 7));
    Mock::given(method("POST")).and(path(ROUTE)).respond_with(stream(frames)).mount(&server).await;
    let runner = runner(&server);
    let (done, _, streamed) = run_watched(&runner, "Echo hi", Some("echo_tool")).await;

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(streamed, "{\"text\": \"hi\"}", "the input streamed as it came");
    let stored = runner.storage().events(done.id(), 0).await.unwrap();
    let arguments = stored.iter().find_map(|e| match &e.event.kind {
        EventKind::ToolCallStarted { arguments, .. } => Some(arguments.clone()),
        _ => None,
    });
    assert_eq!(arguments.map(SharedValue::into_value), Some(json!({"text": "hi"})));
    assert_eq!((done.usage().total.prompt_tokens, done.usage().total.completion_tokens), (20, 7));
}

#[tokio::test]
async fn an_exception_frame_mid_stream_is_retried() {
    let server = MockServer::start().await;
    let throttled = stream(vec![
        event("messageStart", json!({"role": "assistant"})),
        event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}})),
        frame(
            &[
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            &json!({"message": "Too many tokens, please wait before trying again."}),
        ),
    ]);
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .respond_with(throttled)
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path(ROUTE)).respond_with(text_stream(&["Hello"])).expect(1).mount(&server).await;
    let runner = runner(&server);
    let mut events = runner.subscribe();
    let plan = PlanBuilder::new("q").step("Greet", None, "$out").build();
    let workflow = runner.create_workflow(&plan).await.unwrap();
    let done = runner.execute_workflow(workflow).await.unwrap();

    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("Hello"));
    let mut restarted = false;
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        restarted |= matches!(event.kind, EventKind::LlmStreamRestarted { .. });
        if event.kind.is_rest() {
            break;
        }
    }
    assert!(restarted, "subscribers are told to drop the text of the broken attempt");
}
