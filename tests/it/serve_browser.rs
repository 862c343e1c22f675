//! The web inspector in a real headless Chromium over WebDriver: an approval and an
//! Input clarification answered in the page, the list updating without a reload,
//! and a token bound to another end user seeing nothing. Each test starts its own
//! chromedriver on a free port; screenshots go to `target/inspector-*.png`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use fantoccini::{Client, ClientBuilder, Locator};
use portia::WorkflowState;
use portia::runner::serve::{ServeOptions, ServerToken, Tokens};
use portia::testing::{MockBehavior, MockTool, ScriptedLlm};
use serde_json::{Value, json};

use crate::serve::{Served, runner_with, serve, tool_plan};
use crate::serve_events::gated_runner;

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

#[tokio::test]
#[ignore = "needs chromium: Debian's chromium and chromium-driver (.ci/run installs them)"]
async fn the_list_updates_without_a_reload() {
    let weather = MockTool::returning("weather_tool", json!("-3°C"));
    let served = serve(runner_with(vec![weather], ScriptedLlm::new()), ServeOptions::new()).await;
    let browser = Browser::start().await;
    browser.client.goto(&served.url("/")).await.unwrap();
    browser.wait_for("#count").await;
    // Marks the page: a reload would lose the mark.
    browser.client.execute("window.notReloaded = true", vec![]).await.unwrap();
    let (_, created) =
        served.post("/v1/workflows", json!({"plan": tool_plan("Weather in Oslo?", "weather_tool")})).await;
    let id = created["id"].as_str().unwrap();
    browser.wait_for(&format!("tr[data-id='{id}'][data-state='COMPLETE']")).await;
    assert_eq!(browser.client.execute("return window.notReloaded === true", vec![]).await.unwrap(), json!(true));
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
