//! The `otel` feature: a run's spans go out over OTLP/HTTP to a collector (here a
//! stand-in on loopback) with their GenAI names and attributes.

use std::sync::Arc;

use portia::config::{LogLevel, init_otlp};
use portia::testing::{MockTool, ScriptedLlm};
use portia::{Config, InMemoryToolRegistry, PlanBuilder, Runner, WorkflowState};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_the_collector() {
    let collector = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/traces"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&collector)
        .await;
    let guard = init_otlp(LogLevel::Info, Some(&format!("{}/v1/traces", collector.uri()))).unwrap();

    let llm = ScriptedLlm::new().tool_call("search_tool", json!({"query": "AMZN 2024"}));
    let tools = InMemoryToolRegistry::new().with(MockTool::returning("search_tool", json!("+44%"))).unwrap();
    let config = Config::builder().summarize_final_output(false).build().unwrap();
    let runner = Runner::builder(config).tools(tools).llm(Arc::new(llm)).build().unwrap();
    let plan = PlanBuilder::new("q").step("Find Amazon's growth", Some("search_tool"), "$amazon").build();
    assert_eq!(runner.run_plan(&plan).await.unwrap().state(), WorkflowState::Complete);
    // Dropping the guard sends what is left; the exporter blocks, so not on a runtime thread.
    tokio::task::spawn_blocking(move || drop(guard)).await.unwrap();

    let requests = collector.received_requests().await.unwrap();
    let body: Vec<u8> = requests.iter().flat_map(|r| r.body.clone()).collect();
    let text = String::from_utf8_lossy(&body);
    for expected in ["invoke_agent portia", "chat gpt-4.1-mini", "execute_tool search_tool", "gen_ai.request.model"] {
        assert!(text.contains(expected), "the export holds {expected:?}");
    }
}
