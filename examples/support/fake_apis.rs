//! In-process stand-ins for the OpenAI Chat Completions and Tavily search APIs that
//! answer the stock_compare scenario the way a model would, after a set latency.
//! Shared by the benchmark and the end-to-end test (`#[path]`-included by both).

use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Starts a server answering `POST /v1/chat/completions` after `llm_latency` and
/// `POST /search` after `tool_latency`.
pub(crate) async fn start(llm_latency: Duration, tool_latency: Duration) -> MockServer {
    let server = MockServer::builder().body_print_limit(wiremock::BodyPrintLimit::Limited(0)).start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(FakeOpenAi { latency: llm_latency })
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/search"))
        .respond_with(FakeTavily { latency: tool_latency })
        .mount(&server)
        .await;
    server
}

struct FakeOpenAi {
    latency: Duration,
}

struct FakeTavily {
    latency: Duration,
}

fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

fn last_user_text(body: &Value) -> String {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    messages.iter().rev().find(|m| m["role"] == "user").and_then(|m| m["content"].as_str()).unwrap_or("").to_owned()
}

fn task_line(text: &str) -> String {
    text.lines().find_map(|l| l.strip_prefix("Task: ")).unwrap_or(text).to_owned()
}

impl Respond for FakeOpenAi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let prompt = format!(
            "{}{}{}",
            body["messages"],
            body.get("tools").unwrap_or(&Value::Null),
            body.get("response_format").unwrap_or(&Value::Null)
        );
        let user = last_user_text(&body);
        let mut message = json!({"role": "assistant", "content": null});
        let completion = if body.get("response_format").is_some() {
            let text = plan_reply().to_string();
            message["content"] = json!(text);
            text
        } else if let Some(name) = body["tool_choice"]["function"]["name"].as_str() {
            let arguments = json!({"search_query": task_line(&user)}).to_string();
            message["tool_calls"] =
                json!([{"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}]);
            arguments
        } else {
            let text = if user.starts_with("Summarize") {
                "Amazon's stock grew faster in 2024: about +44.4% against +35.5% for Alphabet."
            } else {
                "Amazon grew faster in 2024 (+44.4%, $151.94 to $219.39) than Google (+35.5%, $139.69 to $189.30)."
            };
            message["content"] = json!(text);
            text.to_owned()
        };
        let usage = json!({"prompt_tokens": tokens(&prompt), "completion_tokens": tokens(&completion)});
        let reply = json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        });
        ResponseTemplate::new(200).set_body_json(reply).set_delay(self.latency)
    }
}

fn plan_reply() -> Value {
    json!({"steps": [
        {"task": "Search for the stock price growth of Amazon (AMZN) in 2024.", "inputs": [], "tool_id": "search_tool", "output": "$amazon_stock_growth"},
        {"task": "Search for the stock price growth of Google (Alphabet, GOOGL) in 2024.", "inputs": [], "tool_id": "search_tool", "output": "$google_stock_growth"},
        {"task": "Compare the 2024 stock price growth of Amazon and Google and say which grew faster.",
         "inputs": [{"name": "$amazon_stock_growth", "description": "Amazon's 2024 growth."},
                    {"name": "$google_stock_growth", "description": "Google's 2024 growth."}],
         "tool_id": null, "output": "$faster_growth"}
    ]})
}

impl Respond for FakeTavily {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let query = body["query"].as_str().unwrap_or("").to_lowercase();
        let (ticker, growth) = if query.contains("amazon") { ("AMZN", "44.4%") } else { ("GOOGL", "35.5%") };
        let answer = format!("{ticker} stock rose about {growth} in 2024.");
        let results: Vec<Value> = (1..=3)
            .map(|i| json!({"title": format!("{ticker} 2024 performance #{i}"), "url": format!("https://example.com/{ticker}/{i}"),
                             "content": format!("{ticker} closed 2024 up {growth} (benchmark data {i}).")}))
            .collect();
        let reply = json!({"query": body["query"], "answer": answer, "results": results, "response_time": 0.01});
        ResponseTemplate::new(200).set_body_json(reply).set_delay(self.latency)
    }
}
