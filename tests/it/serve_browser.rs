//! The web inspector in a real headless Chromium over WebDriver: an approval and an
//! Input clarification answered in the page, the list updating without a reload,
//! and a token bound to another end user seeing nothing. Each test starts its own
//! chromedriver on a free port; screenshots go to `target/inspector-*.png`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use fantoccini::{Client, ClientBuilder, Locator};
use portia::WorkflowState;
use portia::llm::{Deltas, LlmClient, LlmError, LlmRequest, LlmResponse};
use portia::runner::serve::{ServeOptions, ServerToken, Tokens};
use portia::testing::{MockBehavior, MockTool, ScriptedLlm};
use serde_json::{Value, json};

use crate::serve::{Served, runner_with, serve, tool_plan};
use crate::serve_events::{GatedToolCall, gated_runner, streaming_runner};

/// Chromium under chromedriver, both ended when dropped.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver_path = std::env::var("PORTIA_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let mut driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("needs chromium: cannot start {driver_path}: {e} (apt-get install chromium chromium-driver)")
            });
        // Ready once it says so.
        let stdout = BufReader::new(driver.stdout.take().unwrap());
        for line in stdout.lines() {
            if line.unwrap().contains("started successfully") {
                break;
            }
        }
        let profile = tempfile::tempdir().unwrap();
        let chromium = std::env::var("PORTIA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), json!({"binary": chromium, "args": args}));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        Self { client, driver, _profile: profile }
    }

    /// Waits (on the page, not the clock) until `css` matches an element.
    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.client.wait().forever().for_element(Locator::Css(css)).await.unwrap()
    }

    /// The text of the element `css` matches (which must be there), its own text
    /// nodes only (not a tooltip's), read in one script: the pages redraw parts as
    /// events come, which would leave an element handle stale.
    async fn text_of(&self, css: &str) -> String {
        let script = "const node = document.querySelector(arguments[0]);\
            return [...node.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE || n.tagName !== 'title')\
            .map((n) => n.textContent).join('');";
        let text = self.client.execute(script, vec![json!(css)]).await.unwrap();
        text.as_str().expect("the element is there").to_owned()
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("inspector-{name}.png")), png).unwrap();
    }
}

async fn start_waiting(served: &Served, plan: Value) -> String {
    let (_, created) = served.post("/v1/workflows", json!({"plan": plan})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(served.rest(&id).await.state(), WorkflowState::NeedClarification);
    id
}

#[tokio::test]
#[ignore = "needs chromium: Debian's chromium and chromium-driver (.ci/run installs them)"]
async fn an_approval_given_in_the_page_runs_the_call_and_the_workflow_completes() {
    let served = serve(gated_runner(), ServeOptions::new()).await;
    let id = start_waiting(&served, tool_plan("Pay Ann", "send_tool")).await;
    let browser = Browser::start().await;
    browser.client.goto(&served.url(&format!("/workflows/{id}"))).await.unwrap();
    let approve =
        browser.wait_for("form.question[data-category='Value Confirmation'] button[data-action='approve']").await;
    browser.wait_for("#timeline li[data-event='clarification_raised']").await;
    browser.screenshot("approval").await;
    approve.click().await.unwrap();
    browser.wait_for("#state .state-COMPLETE").await;
    browser.wait_for("#timeline li[data-event='tool_call_finished']").await;
    browser.screenshot("workflow").await;
    let done = served.runner.get_workflow(id.parse().unwrap()).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!({"city": "Oslo"}));
    browser.client.clone().close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs chromium: Debian's chromium and chromium-driver (.ci/run installs them)"]
async fn an_input_clarification_is_answered_in_the_page() {
    let asker = MockTool::new("ask_tool", MockBehavior::ClarifyInput("city".into()));
    let served = serve(runner_with(vec![asker], ScriptedLlm::new()), ServeOptions::new()).await;
    let id = start_waiting(&served, tool_plan("Where to?", "ask_tool")).await;
    let browser = Browser::start().await;
    browser.client.goto(&served.url(&format!("/workflows/{id}"))).await.unwrap();
    let form = browser.wait_for("form.question[data-category='Input']").await;
    form.find(Locator::Css("input[type='text']")).await.unwrap().send_keys("Bergen").await.unwrap();
    form.find(Locator::Css("button[data-action='answer']")).await.unwrap().click().await.unwrap();
    browser.screenshot("input").await;
    browser.wait_for("#state .state-COMPLETE").await;
    let done = served.runner.get_workflow(id.parse().unwrap()).await.unwrap();
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!({"city": "Bergen"}));
    browser.client.clone().close().await.unwrap();
}

/// A FAILED workflow's page offers Retry: it opens the retry's page, which names the
/// failed workflow, and the retry runs to COMPLETE.
#[tokio::test]
#[ignore = "needs chromium: Debian's chromium and chromium-driver (.ci/run installs them)"]
async fn a_failed_workflow_is_retried_from_its_page() {
    let weather = MockTool::returning("weather_tool", json!("-3°C"));
    let served = serve(runner_with(vec![weather], ScriptedLlm::new()), ServeOptions::new().workers(0)).await;
    let queued = json!({"plan": tool_plan("Weather?", "weather_tool"), "mode": "queue"});
    let (_, queued) = served.post("/v1/workflows", queued).await;
    let id = queued["id"].as_str().unwrap().to_owned();
    let (status, _) = served.post(&format!("/v1/workflows/{id}/cancel"), json!({"reason": "too soon"})).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let browser = Browser::start().await;
    browser.client.goto(&served.url(&format!("/workflows/{id}"))).await.unwrap();
    browser.wait_for("#state .state-FAILED").await;
    browser.wait_for("#retry:not([disabled])").await.click().await.unwrap();
    browser.wait_for("#retry-of:not([hidden])").await;
    browser.wait_for("#state .state-COMPLETE").await;
    assert_eq!(browser.text_of("#retry-of-link").await, id);
    let retry: portia::WorkflowId = browser.text_of("#workflow-id").await.parse().unwrap();
    assert_eq!(served.runner.get_workflow(retry).await.unwrap().retry_of(), Some(id.parse().unwrap()));
    browser.screenshot("retry").await;
    browser.client.clone().close().await.unwrap();
}

/// A workflow set aside is marked in the list, with why on hover, says why on its
/// page, and is put back from it: then a worker claims it.
#[tokio::test]
#[ignore = "needs chromium: Debian's chromium and chromium-driver (.ci/run installs them)"]
async fn a_workflow_set_aside_is_marked_in_the_list_and_put_back_from_its_page() {
    let weather = MockTool::returning("weather_tool", json!("-3°C"));
    let served = serve(runner_with(vec![weather], ScriptedLlm::new()), ServeOptions::new().workers(0)).await;
    let queued = json!({"plan": tool_plan("Weather?", "weather_tool"), "mode": "queue"});
    let (_, queued) = served.post("/v1/workflows", queued).await;
    let id = queued["id"].as_str().unwrap().to_owned();
    let storage = served.runner.storage();
    let ttl = std::time::Duration::from_secs(60);
    let claimed = storage.claim_runnable("worker", ttl).await.unwrap().expect("queued");
    storage.set_aside(&claimed.lease, "plan p cannot be read").await.unwrap();
    let browser = Browser::start().await;
    browser.client.goto(&served.url("/")).await.unwrap();
    let marked = format!("tr[data-id='{id}'][data-aside='plan p cannot be read']");
    browser.wait_for(&format!("{marked} .aside")).await;
    assert_eq!(browser.text_of(&format!("{marked} .aside")).await, "set aside");
    let hover = browser
        .client
        .execute("return document.querySelector(arguments[0]).title", vec![json!(format!("{marked} .aside"))]);
    assert_eq!(hover.await.unwrap(), json!("plan p cannot be read"));
    browser.client.goto(&served.url(&format!("/workflows/{id}"))).await.unwrap();
    browser.wait_for("#set-aside:not([hidden])").await;
    assert_eq!(browser.text_of("#set-aside-reason").await, "plan p cannot be read");
    browser.screenshot("set-aside").await;
    browser.wait_for("#put-back:not([hidden])").await.click().await.unwrap();
    browser.wait_for("#set-aside[hidden]").await;
    assert!(storage.set_aside_workflows().await.unwrap().is_empty());
    let back = storage.claim_runnable("worker", ttl).await.unwrap().expect("back on the queue");
    assert_eq!(back.workflow.id().to_string(), id);
    browser.client.clone().close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs chromium: Debian's chromium and chromium-driver (.ci/run installs them)"]
async fn the_list_updates_without_a_reload() {
    let weather = MockTool::returning("weather_tool", json!("-3°C"));
    let served = serve(runner_with(vec![weather], ScriptedLlm::new()), ServeOptions::new()).await;
    let browser = Browser::start().await;
    browser.client.goto(&served.url("/")).await.unwrap();
    // The page follows the stream of workflow changes, and has read the list once.
    browser.wait_for("table#workflows[data-live='stream']").await;
    browser
        .client
        .wait()
        .forever()
        .for_element(Locator::XPath("//caption[@id='count'][normalize-space()!='']"))
        .await
        .unwrap();
    // Marks the page: a reload would lose the mark.
    browser.client.execute("window.notReloaded = true", vec![]).await.unwrap();
    let list_reads = "return performance.getEntriesByType('resource')\
                      .filter((e) => new URL(e.name).pathname === '/v1/workflows').length";
    let read_before = browser.client.execute(list_reads, vec![]).await.unwrap();
    assert_eq!(read_before, json!(1), "the list is read once, when the stream is ready");
    let (_, created) =
        served.post("/v1/workflows", json!({"plan": tool_plan("Weather in Oslo?", "weather_tool")})).await;
    let id = created["id"].as_str().unwrap();
    browser.wait_for(&format!("tr[data-id='{id}'][data-state='COMPLETE']")).await;
    assert_eq!(browser.client.execute("return window.notReloaded === true", vec![]).await.unwrap(), json!(true));
    assert_eq!(
        browser.client.execute(list_reads, vec![]).await.unwrap(),
        read_before,
        "the new workflow came by the stream: the list was not read again"
    );
    assert_eq!(browser.text_of("#count").await, "1 workflow(s)");
    browser.screenshot("list").await;
    browser.client.clone().close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs chromium: Debian's chromium and chromium-driver (.ci/run installs them)"]
async fn a_token_bound_to_another_end_user_sees_nothing_in_the_pages() {
    let tokens =
        Tokens::new([ServerToken::for_end_user("ann-token", "ann"), ServerToken::for_end_user("bob-token", "bob")]);
    let weather = MockTool::returning("weather_tool", json!("-3°C"));
    let served = serve(runner_with(vec![weather], ScriptedLlm::new()), ServeOptions::new().tokens(tokens)).await;
    let (_, anns) =
        served.post_as("ann-token", "/v1/workflows", json!({"plan": tool_plan("Ann's weather", "weather_tool")})).await;
    let ann_id = anns["id"].as_str().unwrap();
    served.rest(ann_id).await;

    let browser = Browser::start().await;
    // Without a token: the sign-in page, no data.
    browser.client.goto(&served.url("/")).await.unwrap();
    browser.wait_for("form input#token").await;
    // Bob signs in (the token leaves the address) and sees none of Ann's.
    browser.client.goto(&served.url("/?token=bob-token")).await.unwrap();
    browser.wait_for("#count").await;
    let count = browser
        .client
        .wait()
        .forever()
        .for_element(Locator::XPath("//caption[@id='count'][normalize-space()!='']"))
        .await
        .unwrap();
    assert_eq!(count.text().await.unwrap(), "0 workflow(s)");
    assert!(!browser.client.current_url().await.unwrap().as_str().contains("token"));
    assert!(browser.client.find_all(Locator::Css("#workflows tbody tr")).await.unwrap().is_empty());
    browser.client.goto(&served.url(&format!("/workflows/{ann_id}"))).await.unwrap();
    let heading = browser.wait_for("h1").await;
    assert_eq!(heading.text().await.unwrap(), "Not found");
    browser.screenshot("other-user").await;

    // Ann, in the same browser, sees hers.
    browser.client.goto(&served.url("/?token=ann-token")).await.unwrap();
    browser.wait_for(&format!("tr[data-id='{ann_id}']")).await;
    browser.client.clone().close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs chromium: Debian's chromium and chromium-driver (.ci/run installs them)"]
async fn the_plan_graph_shows_each_step_with_how_far_the_workflow_got() {
    let tickets = MockTool::returning("tickets_tool", json!([{"id": "t1"}, {"id": "t2"}]));
    let tools = vec![tickets, MockTool::echo("send_tool"), MockTool::returning("weather_tool", json!("-3°C"))];
    let served = serve(runner_with(tools, ScriptedLlm::new()), ServeOptions::new()).await;
    let plan = json!({
        "plan_context": {"query": "Acknowledge the tickets", "tool_ids": ["tickets_tool", "send_tool", "weather_tool"]},
        "steps": [
            {"task": "List the tickets", "inputs": [], "tool_id": "tickets_tool", "output": "$tickets", "args": {}},
            {"task": "Acknowledge each ticket", "inputs": [], "tool_id": "send_tool", "output": "$acks",
             "for_each": "$tickets", "args": {"id": "$item.id"}},
            {"task": "Escalate", "inputs": [], "tool_id": "send_tool", "output": "$escalated",
             "condition": "$tickets[0].id == \"t9\"", "args": {"id": "t9"}},
            {"task": "Report the weather", "inputs": [{"name": "$tickets", "description": "the tickets"}],
             "tool_id": "weather_tool", "output": "$weather", "args": {"city": "Oslo"}}
        ]
    });
    let (_, created) = served.post("/v1/workflows", json!({"plan": plan})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(served.rest(&id).await.state(), WorkflowState::Complete);

    let browser = Browser::start().await;
    browser.client.goto(&served.url(&format!("/workflows/{id}"))).await.unwrap();
    browser.wait_for("svg.plan-graph g.step[data-step='3'][data-status='done']").await;
    let statuses = browser
        .client
        .execute("return [...document.querySelectorAll('svg.plan-graph g.step')].map((g) => g.dataset.status)", vec![])
        .await
        .unwrap();
    assert_eq!(statuses, json!(["done", "done", "skipped", "done"]));
    assert_eq!(browser.text_of("svg.plan-graph g.step[data-step='1'] text.loop").await, "↻ for each $tickets");
    assert_eq!(browser.text_of("svg.plan-graph text.condition").await, "if $tickets[0].id == \"t9\"");
    // Steps 3 (its condition) and 4 (an input) read step 1's output from further
    // down than the next step: one data arc each.
    let arcs = browser
        .client
        .execute(
            "return [...document.querySelectorAll('svg.plan-graph path.data-edge title')].map((t) => t.textContent)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(arcs, json!(["Step 3 reads $tickets", "Step 4 reads $tickets"]));
    browser.wait_for("#timeline li[data-event='step_finished']").await;
    let skipped = browser
        .client
        .find(Locator::XPath("//ol[@id='timeline']/li[contains(., 'Step 3 skipped')]"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(skipped.contains("its condition is false"), "{skipped}");
    browser.screenshot("plan-graph").await;
    browser.client.clone().close().await.unwrap();
}

/// An LLM of the test's own that writes its answer in two pieces, each let out by
/// the test, streaming them when the runner asks for a stream.
#[derive(Debug, Default)]
pub(crate) struct TwoPieces {
    pub(crate) gates: [tokio::sync::Notify; 2],
}

/// The pieces [`TwoPieces`] writes.
pub(crate) const PIECES: [&str; 2] = ["Amazon grew ", "faster in 2024."];

#[portia::async_trait]
impl LlmClient for TwoPieces {
    async fn chat(&self, _request: LlmRequest) -> Result<LlmResponse, LlmError> {
        let stream = Deltas::current();
        if let Some(stream) = &stream {
            stream.begin_attempt();
        }
        for (gate, piece) in self.gates.iter().zip(PIECES) {
            gate.notified().await;
            if let Some(stream) = &stream {
                stream.text(piece);
            }
        }
        Ok(LlmResponse::text(PIECES.concat()))
    }
}

/// Starts `plan`, whose LLM calls wait for the test, and opens its page once the page
/// follows the run live: it shows the run starting, stored before the first call.
async fn watch_gated_run(served: &Served, plan: Value) -> (String, Browser) {
    let (_, created) = served.post("/v1/workflows", json!({"plan": plan})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let browser = Browser::start().await;
    browser.client.goto(&served.url(&format!("/workflows/{id}"))).await.unwrap();
    browser.wait_for("#timeline li[data-event='state_changed']").await;
    (id, browser)
}

#[tokio::test]
#[ignore = "needs chromium: Debian's chromium and chromium-driver (.ci/run installs them)"]
async fn the_answer_streams_into_the_page_as_it_is_written() {
    let llm = Arc::new(TwoPieces::default());
    let served = serve(streaming_runner(llm.clone()), ServeOptions::new()).await;
    let plan = json!({
        "plan_context": {"query": "Which stock grew faster?", "tool_ids": []},
        "steps": [{"task": "Say which stock grew faster", "inputs": [], "output": "$answer"}]
    });
    let (id, browser) = watch_gated_run(&served, plan).await;
    llm.gates[0].notify_one();
    let partial = browser.wait_for("#answer.streaming").await;
    browser.client.wait().forever().for_element(Locator::XPath("//pre[@id='answer'][.='Amazon grew ']")).await.unwrap();
    assert_eq!(partial.text().await.unwrap(), "Amazon grew ");
    let timeline = browser.text_of("#timeline").await;
    assert!(!timeline.contains("llm_text_delta"), "streamed pieces stay out of the timeline: {timeline}");
    browser.screenshot("streaming").await;
    assert_eq!(served.runner.get_workflow(id.parse().unwrap()).await.unwrap().state(), WorkflowState::InProgress);

    llm.gates[1].notify_one();
    browser.wait_for("#state .state-COMPLETE").await;
    let answer = browser
        .client
        .wait()
        .forever()
        .for_element(Locator::XPath(
            "//pre[@id='answer'][not(contains(@class, 'streaming'))][.='Amazon grew faster in 2024.']",
        ))
        .await
        .unwrap();
    assert_eq!(answer.text().await.unwrap(), "Amazon grew faster in 2024.");
    browser.client.clone().close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs chromium: Debian's chromium and chromium-driver (.ci/run installs them)"]
async fn a_tool_calls_arguments_stream_into_the_timeline_until_the_call_is_made() {
    let llm = Arc::new(GatedToolCall::default());
    let runner = streaming_runner(llm.clone());
    let served = serve(runner, ServeOptions::new()).await;
    let plan = json!({
        "plan_context": {"query": "Echo how Amazon did", "tool_ids": ["echo_tool"]},
        "steps": [{"task": "Echo how Amazon did", "inputs": [], "tool_id": "echo_tool", "output": "$out"}]
    });
    let (_, browser) = watch_gated_run(&served, plan).await;
    // The call shows once its first piece is out, its arguments growing with each.
    llm.gates[0].notify_one();
    let partial = "//li[@data-tool-call][@aria-busy='true']/pre[@class='arguments'][.='{\"text\": \"Amazon']";
    browser.client.wait().forever().for_element(Locator::XPath(partial)).await.unwrap();
    let streaming = browser.text_of("#timeline li.streaming").await;
    assert!(streaming.contains("echo_tool"), "the call names its tool: {streaming}");
    assert!(
        browser.client.find(Locator::Css("#timeline li[data-event='tool_call_started']")).await.is_err(),
        "the call is not made before its arguments are whole"
    );
    browser.screenshot("tool-call-streaming").await;

    llm.gates[1].notify_one();
    browser.wait_for("#state .state-COMPLETE").await;
    browser.wait_for("#timeline li[data-event='tool_call_finished']").await;
    let streamed_left = browser.client.find_all(Locator::Css("#timeline li[data-tool-call]")).await.unwrap();
    assert!(streamed_left.is_empty(), "the made call takes the streamed one's place");
    let made = browser.client.find_all(Locator::Css("#timeline li[data-event='tool_call_started'] pre")).await.unwrap();
    assert_eq!(made.len(), 1, "the call shows once");
    let arguments: Value = serde_json::from_str(&made[0].text().await.unwrap()).unwrap();
    assert_eq!(arguments, json!({"text": "Amazon grew"}));
    browser.client.clone().close().await.unwrap();
}
