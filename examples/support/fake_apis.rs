//! In-process stand-ins for the OpenAI Chat Completions and Tavily search APIs that
//! answer the stock_compare scenario the way a model would, after a set latency,
//! and optionally fail a share of the calls in every way a real service does.
//! Shared by the benchmark and the end-to-end test (`#[path]`-included by both).
//!
//! It is a small HTTP/1.1 server on a raw socket rather than a mock library, so
//! that it can drop a connection without answering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Which share of calls fail, and the seed that decides which ones and how.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// Between 0 and 1.
    pub(crate) rate: f64,
    /// The same seed fails the same calls (by arrival order) in the same ways.
    pub(crate) seed: u64,
    /// LLM calls per second the server takes (a bucket of one second's worth); the
    /// ones above are answered 429, as a provider's rate limit would.
    pub(crate) llm_rps: Option<u32>,
    /// Whether those 429s also say, in `Retry-After`, when to come back (else only
    /// the `x-ratelimit-*` headers do).
    pub(crate) retry_after: bool,
}

/// How one call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    RateLimited,
    ServerError,
    Malformed,
    Dropped,
    Slow,
}

const FAULTS: [Fault; 5] = [Fault::RateLimited, Fault::ServerError, Fault::Malformed, Fault::Dropped, Fault::Slow];

/// One request the server received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) path: String,
    /// Header names in lower case.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The running server; it stops when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    address: std::net::SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub(crate) fn uri(&self) -> String {
        format!("http://{}", self.address)
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct Shared {
    llm_latency: Duration,
    tool_latency: Duration,
    faults: Faults,
    count: AtomicU64,
    received: Arc<Mutex<Vec<Received>>>,
    /// The rate limit's bucket: requests left, and when it was last filled.
    bucket: Mutex<(f64, std::time::Instant)>,
    /// LLM calls answered 429 for going over the rate limit.
    rate_limited: AtomicU64,
}

/// Starts a server answering `POST /v1/chat/completions` after `llm_latency` and
/// `POST /search` after `tool_latency`, never failing.
pub(crate) async fn start(llm_latency: Duration, tool_latency: Duration) -> Server {
    start_with_faults(llm_latency, tool_latency, Faults::default()).await
}

/// Like [`start`], failing `faults.rate` of the calls: with a 429 (and a
/// `Retry-After`), a 500, a body that is not JSON, a dropped connection, or a
/// correct answer a second late, in equal shares.
pub(crate) async fn start_with_faults(llm_latency: Duration, tool_latency: Duration, faults: Faults) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let address = listener.local_addr().expect("an address");
    let received = Arc::new(Mutex::new(Vec::new()));
    let bucket = Mutex::new((f64::from(faults.llm_rps.unwrap_or(0)), std::time::Instant::now()));
    let shared = Arc::new(Shared {
        llm_latency,
        tool_latency,
        faults,
        count: AtomicU64::new(0),
        received: received.clone(),
        bucket,
        rate_limited: AtomicU64::new(0),
    });
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(stream, shared.clone()));
        }
    });
    Server { address, received, task }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut stream = BufReader::new(stream);
    while let Some(request) = read_request(&mut stream).await {
        shared.received.lock().unwrap().push(request.clone());
        let fault = shared.fault_for(shared.count.fetch_add(1, Ordering::SeqCst));
        let Some(reply) = shared.reply(&request, fault).await else { return };
        if stream.get_mut().write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Reads one request; `None` at the end of the connection or on garbage.
async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Received> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
    let path = line.split_whitespace().nth(1)?.split('?').next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
        let Some((name, value)) = line.trim_end().split_once(':') else { break };
        headers.push((name.trim().to_lowercase(), value.trim().to_owned()));
    }
    let length = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Received { path, headers, body })
}

impl Shared {
    /// The fault of call number `n`, if it fails: decided by the seed and `n` alone.
    fn fault_for(&self, n: u64) -> Option<Fault> {
        if self.faults.rate <= 0.0 {
            return None;
        }
        let mut rng = fastrand::Rng::with_seed(self.faults.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n);
        (rng.f64() < self.faults.rate).then(|| FAULTS[rng.usize(..FAULTS.len())])
    }

    /// Whether an LLM call fits the rate limit (and takes its slot).
    fn take_llm_slot(&self) -> bool {
        let Some(rps) = self.faults.llm_rps else { return true };
        let mut bucket = self.bucket.lock().unwrap();
        let now = std::time::Instant::now();
        let refill = now.duration_since(bucket.1).as_secs_f64() * f64::from(rps);
        *bucket = ((bucket.0 + refill).min(f64::from(rps)), now);
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// The bytes to answer with; `None` to drop the connection instead.
    async fn reply(&self, request: &Received, fault: Option<Fault>) -> Option<Vec<u8>> {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        if request.path == "/stats" {
            let stats = json!({"rate_limited": self.rate_limited.load(Ordering::SeqCst)});
            return Some(response(200, &stats.to_string(), &[]));
        }
        if request.path == "/v1/chat/completions" && !self.take_llm_slot() {
            self.rate_limited.fetch_add(1, Ordering::SeqCst);
            let body = json!({"error": {"message": "Rate limit reached for requests", "type": "requests"}});
            // As OpenAI does: no requests left, and when the next one is.
            let reset = format!("{}ms", 1000 / self.faults.llm_rps.unwrap_or(1).max(1));
            let mut headers =
                vec![("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", reset.as_str())];
            if self.faults.retry_after {
                headers.push(("retry-after", "1"));
            }
            return Some(response(429, &body.to_string(), &headers));
        }
        let (latency, answer, retry_after) = match request.path.as_str() {
            "/v1/chat/completions" => (self.llm_latency, llm_reply(&body), ("retry-after-ms", "100")),
            "/search" => (self.tool_latency, search_reply(&body), ("retry-after", "1")),
            _ => return Some(response(404, &json!({"error": "not found"}).to_string(), &[])),
        };
        let slow = if fault == Some(Fault::Slow) { Duration::from_secs(1) } else { Duration::ZERO };
        tokio::time::sleep(latency + slow).await;
        Some(match fault {
            None | Some(Fault::Slow) if body["stream"] == true => event_stream(&stream_events(&answer)),
            None | Some(Fault::Slow) => response(200, &answer.to_string(), &[]),
            Some(Fault::RateLimited) => {
                response(429, &json!({"error": {"message": "Rate limit reached"}}).to_string(), &[retry_after])
            }
            Some(Fault::ServerError) => {
                response(500, &json!({"error": {"message": "internal error"}}).to_string(), &[])
            }
            Some(Fault::Malformed) => response(200, "{\"choices\": [{\"mess", &[]),
            Some(Fault::Dropped) => return None,
        })
    }
}

fn response(status: u16, body: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        429 => "Too Many Requests",
        _ => "Internal Server Error",
    };
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A `text/event-stream` reply carrying `body`.
fn event_stream(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// A Chat Completions reply as OpenAI streams it: the text in pieces of a few
/// words, each tool call's id and name then its arguments in pieces, the usage in a
/// last chunk without choices, then `[DONE]`.
fn stream_events(reply: &Value) -> String {
    const PIECE: usize = 16;
    let chunk = |delta: Value, finish: Value| {
        json!({"id": reply["id"], "object": "chat.completion.chunk", "model": reply["model"],
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let pieces = |text: &str| -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(PIECE).map(|c| c.iter().collect()).collect()
    };
    let message = &reply["choices"][0]["message"];
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    if let Some(text) = message["content"].as_str() {
        chunks.extend(pieces(text).into_iter().map(|p| chunk(json!({"content": p}), Value::Null)));
    }
    for (index, call) in message["tool_calls"].as_array().into_iter().flatten().enumerate() {
        let opening = json!({"index": index, "id": call["id"], "type": "function",
                             "function": {"name": call["function"]["name"], "arguments": ""}});
        chunks.push(chunk(json!({"tool_calls": [opening]}), Value::Null));
        for piece in pieces(call["function"]["arguments"].as_str().unwrap_or_default()) {
            let more = json!({"index": index, "function": {"arguments": piece}});
            chunks.push(chunk(json!({"tool_calls": [more]}), Value::Null));
        }
    }
    chunks.push(chunk(json!({}), reply["choices"][0]["finish_reason"].clone()));
    chunks.push(json!({"id": reply["id"], "object": "chat.completion.chunk", "choices": [], "usage": reply["usage"]}));
    let mut body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    body
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

const COMPARISON: &str =
    "Amazon grew faster in 2024 (+44.4%, $151.94 to $219.39) than Google (+35.5%, $139.69 to $189.30).";
const SUMMARY: &str = "Amazon's stock grew faster in 2024: about +44.4% against +35.5% for Alphabet.";

/// A reply like a model's, with usage counted as `portia::testing` does (one token per four
/// characters of messages, tools and schema).
fn llm_reply(body: &Value) -> Value {
    let prompt = format!(
        "{}{}{}",
        body["messages"],
        body.get("tools").unwrap_or(&Value::Null),
        body.get("response_format").unwrap_or(&Value::Null)
    );
    let user = last_user_text(body);
    let mut message = json!({"role": "assistant", "content": null});
    let completion = if let Some(format) = body.get("response_format").filter(|f| f["json_schema"]["name"] == "answer")
    {
        // The last step writes the answer and its summary in one structured call.
        let schema = &format["json_schema"]["schema"]["properties"];
        let text = if schema["answer"]["type"] == "string" {
            json!({"answer": COMPARISON, "summary": SUMMARY}).to_string()
        } else {
            json!({"answer": {"faster": "Amazon", "amazon_pct": 44.4, "google_pct": 35.5}, "summary": SUMMARY})
                .to_string()
        };
        message["content"] = json!(text);
        text
    } else if let Some(format) = body.get("response_format") {
        // A planner that is offered `args` fills them in, as the prompt asks.
        let text = plan_reply(format.to_string().contains("\"args\"")).to_string();
        message["content"] = json!(text);
        text
    } else if let Some(name) = body["tool_choice"]["function"]["name"].as_str() {
        let arguments = json!({"search_query": task_line(&user)}).to_string();
        message["tool_calls"] =
            json!([{"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}]);
        arguments
    } else {
        let text = if user.starts_with("Summarize") { SUMMARY } else { COMPARISON };
        message["content"] = json!(text);
        text.to_owned()
    };
    let usage = json!({"prompt_tokens": tokens(&prompt), "completion_tokens": tokens(&completion)});
    json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage,
    })
}

fn plan_reply(with_args: bool) -> Value {
    let args = |query: &str| if with_args { json!({"search_query": query}) } else { Value::Null };
    let mut plan = json!({"steps": [
        {"task": "Search for the stock price growth of Amazon (AMZN) in 2024.", "inputs": [], "tool_id": "search_tool",
         "output": "$amazon_stock_growth", "args": args("Amazon AMZN stock price growth 2024")},
        {"task": "Search for the stock price growth of Google (Alphabet, GOOGL) in 2024.", "inputs": [], "tool_id": "search_tool",
         "output": "$google_stock_growth", "args": args("Google GOOGL stock price growth 2024")},
        {"task": "Compare the 2024 stock price growth of Amazon and Google and say which grew faster.",
         "inputs": [{"name": "$amazon_stock_growth", "description": "Amazon's 2024 growth."},
                    {"name": "$google_stock_growth", "description": "Google's 2024 growth."}],
         "tool_id": null, "output": "$faster_growth"}
    ]});
    if !with_args {
        for step in plan["steps"].as_array_mut().into_iter().flatten() {
            step.as_object_mut().map(|s| s.remove("args"));
        }
    }
    plan
}

fn search_reply(body: &Value) -> Value {
    let query = body["query"].as_str().unwrap_or("").to_lowercase();
    let (ticker, growth) = if query.contains("amazon") { ("AMZN", "44.4%") } else { ("GOOGL", "35.5%") };
    let answer = format!("{ticker} stock rose about {growth} in 2024.");
    let results: Vec<Value> = (1..=3)
        .map(|i| json!({"title": format!("{ticker} 2024 performance #{i}"), "url": format!("https://example.com/{ticker}/{i}"),
                         "content": format!("{ticker} closed 2024 up {growth} (benchmark data {i}).")}))
        .collect();
    json!({"query": body["query"], "answer": answer, "results": results, "response_time": 0.01})
}
