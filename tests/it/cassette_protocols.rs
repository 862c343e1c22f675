//! Record and replay over the newer wire protocols: a short run (a structured plan,
//! a tool call the model writes, a text answer) is recorded against the Gemini,
//! Azure OpenAI and Bedrock doubles, the double is shut down, and the cassette,
//! read back from its file, replays the run with identical outputs and usage.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use portia::llm::LlmProvider;
use portia::testing::{Cassette, Recorder, Replayer};
use portia::tool::ToolRegistry;
use portia::{Config, Runner, Workflow, WorkflowState};
use serde_json::{Value, json};
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

const QUERY: &str = "What is 6 times 7, in words?";
const TODAY: &str = "2025-01-31";
const KEY: &str = "recorded-secret-key-0123";

/// One scripted turn of the model.
#[derive(Debug, Clone)]
enum Turn {
    /// A structured reply: this JSON.
    Json(Value),
    /// A plain text reply.
    Text(&'static str),
    /// A call of the tool `name` with these arguments.
    Call(&'static str, Value),
}

/// The run: a plan of a calculator step (arguments left to the model) and a step
/// that words its result, then each step's model turn.
fn script() -> Vec<Turn> {
    let plan = json!({"steps": [
        {"task": "Work out 6 times 7.", "tool_id": "calculator_tool", "inputs": [], "output": "$product"},
        {"task": "Write the product in words.", "inputs": [{"name": "$product", "description": "6 times 7"}],
         "output": "$answer"},
    ]});
    vec![
        Turn::Json(plan),
        Turn::Call("calculator_tool", json!({"math_question": "6 times 7"})),
        Turn::Text("forty-two"),
    ]
}

/// A provider's wire format, enough to answer the script.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Gemini,
    Azure,
    Bedrock,
}

impl Protocol {
    fn config(self, server: &MockServer) -> Config {
        let builder = Config::builder().summarize_final_output(false).max_retries(0u32);
        let builder = match self {
            Self::Gemini => builder
                .llm_provider(LlmProvider::Gemini)
                .gemini_api_key(KEY)
                .gemini_base_url(server.uri())
                .default_model("gemini-2.5-flash"),
            Self::Azure => builder
                .llm_provider(LlmProvider::AzureOpenAi)
                .azure_openai_api_key(KEY)
                .azure_openai_endpoint(server.uri())
                .default_model("my-gpt"),
            Self::Bedrock => builder
                .llm_provider(LlmProvider::Bedrock)
                .aws_access_key_id("AKIDRECORDED")
                .aws_secret_access_key(KEY)
                .aws_region("us-east-1")
                .bedrock_endpoint(server.uri())
                .default_model("anthropic.claude-3-5-haiku-20241022-v1:0"),
        };
        builder.build().unwrap()
    }

    /// The provider's reply for `turn`, made for `request` (Bedrock's structured
    /// reply is a call of the tool the request forces), using `n` tokens of prompt.
    fn reply(self, turn: &Turn, request: &Value, n: u64) -> Value {
        match (self, turn) {
            (Self::Gemini, turn) => {
                let part = match turn {
                    Turn::Json(value) => json!({"text": value.to_string()}),
                    Turn::Text(text) => json!({"text": text}),
                    Turn::Call(name, args) => json!({"functionCall": {"name": name, "args": args}}),
                };
                json!({
                    "candidates": [{"content": {"parts": [part], "role": "model"}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": n, "candidatesTokenCount": 11, "totalTokenCount": n + 11},
                })
            }
            (Self::Azure, turn) => {
                let message = match turn {
                    Turn::Json(value) => json!({"role": "assistant", "content": value.to_string()}),
                    Turn::Text(text) => json!({"role": "assistant", "content": text}),
                    Turn::Call(name, args) => json!({"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": name, "arguments": args.to_string()}}]}),
                };
                json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4.1-mini",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                    "usage": {"prompt_tokens": n, "completion_tokens": 11, "total_tokens": n + 11},
                })
            }
            (Self::Bedrock, turn) => {
                let block = match turn {
                    Turn::Json(value) => {
                        let name = &request["toolConfig"]["toolChoice"]["tool"]["name"];
                        json!({"toolUse": {"toolUseId": "tooluse_reply", "name": name, "input": value}})
                    }
                    Turn::Call(name, args) => {
                        json!({"toolUse": {"toolUseId": "tooluse_1", "name": name, "input": args}})
                    }
                    Turn::Text(text) => json!({"text": text}),
                };
                json!({
                    "output": {"message": {"role": "assistant", "content": [block]}},
                    "stopReason": "tool_use",
                    "usage": {"inputTokens": n, "outputTokens": 11, "totalTokens": n + 11},
                    "metrics": {"latencyMs": 120},
                })
            }
        }
    }
}

/// Answers the script's turns in order, in `protocol`'s format.
#[derive(Debug)]
struct Scripted {
    protocol: Protocol,
    turns: Vec<Turn>,
    next: AtomicUsize,
}

impl Respond for Scripted {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let index = self.next.fetch_add(1, Ordering::SeqCst);
        let Some(turn) = self.turns.get(index) else {
            return ResponseTemplate::new(500).set_body_string("the script is over");
        };
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let prompt_tokens = 100 * (index as u64 + 1);
        ResponseTemplate::new(200).set_body_json(self.protocol.reply(turn, &body, prompt_tokens))
    }
}

fn tools(config: &Config) -> Arc<dyn ToolRegistry> {
    Arc::new(portia::tools::example_tool_registry(config))
}

async fn run(runner: &Runner) -> Workflow {
    let workflow = runner.execute_query(QUERY).await.expect("the run ends");
    assert_eq!(workflow.state(), WorkflowState::Complete, "{workflow:?}");
    workflow
}

async fn record_then_replay(protocol: Protocol) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.cassette.json");
    let server = MockServer::start().await;
    let responder = Scripted { protocol, turns: script(), next: AtomicUsize::new(0) };
    wiremock::Mock::given(wiremock::matchers::method("POST")).respond_with(responder).mount(&server).await;
    let config = protocol.config(&server);
    let recorder = Recorder::new(&config).today(TODAY);
    let runner = Runner::builder(config.clone())
        .llm(recorder.llm(config.llm_client().unwrap()))
        .shared_tools(Arc::new(recorder.tools(tools(&config))))
        .today(TODAY)
        .build()
        .unwrap();
    let recorded = run(&runner).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 3, "plan, tool call, answer");
    recorder.save(&file).unwrap();
    drop(server);

    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(KEY), "keys are blanked out of the cassette");
    let replayer = Replayer::new(Cassette::load(&file).unwrap());
    let offline = Config::builder().summarize_final_output(false).max_retries(0u32).build().unwrap();
    let runner = Runner::builder(offline.clone())
        .llm(replayer.llm())
        .shared_tools(Arc::new(replayer.tools(tools(&offline))))
        .today(TODAY)
        .build()
        .unwrap();
    let replayed = run(&runner).await;

    assert_eq!(recorded.outputs().final_output.as_ref().unwrap().value, json!("forty-two"));
    assert_eq!(recorded.outputs().step_outputs.get("$product").unwrap().value, json!(42));
    assert_eq!(replayed.outputs(), recorded.outputs());
    let (recorded, replayed) = (recorded.usage(), replayed.usage());
    assert_eq!(recorded.total.llm_calls, 3);
    assert_eq!(recorded.total.prompt_tokens, 100 + 200 + 300, "the double's own counts");
    assert_eq!(
        (replayed.total, replayed.planning, &replayed.steps),
        (recorded.total, recorded.planning, &recorded.steps)
    );
}

#[tokio::test]
async fn a_gemini_run_replays_from_its_cassette() {
    record_then_replay(Protocol::Gemini).await;
}

#[tokio::test]
async fn an_azure_openai_run_replays_from_its_cassette() {
    record_then_replay(Protocol::Azure).await;
}

#[tokio::test]
async fn a_bedrock_run_replays_from_its_cassette() {
    record_then_replay(Protocol::Bedrock).await;
}
