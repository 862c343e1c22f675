//! This SDK's MCP server driven by rmcp's client, as Claude Desktop would drive it.

use std::sync::Arc;

use portia::config::ExecutionMode;
use portia::testing::{MockBehavior, MockTool, ScriptedLlm};
use portia::tools::mcp::PortiaMcpServer;
use portia::{InMemoryToolRegistry, PlanBuilder, Runner};
use rmcp::model::{CallToolRequestParams, ProgressNotificationParam};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};

use crate::common;

/// Keeps the progress notifications it receives.
#[derive(Default)]
struct Client {
    progress: Arc<Progress>,
}

#[derive(Default)]
struct Progress {
    reports: std::sync::Mutex<Vec<ProgressNotificationParam>>,
    arrived: tokio::sync::Notify,
}

impl Progress {
    /// The reports, once there are at least `count`.
    async fn at_least(&self, count: usize) -> Vec<ProgressNotificationParam> {
        loop {
            let reports = self.reports.lock().unwrap().clone();
            if reports.len() >= count {
                return reports;
            }
            self.arrived.notified().await;
        }
    }
}

impl ClientHandler for Client {
    async fn on_progress(&self, params: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        self.progress.reports.lock().unwrap().push(params);
        self.progress.arrived.notify_one();
    }
}

type Connected = (RunningService<RoleClient, Client>, Arc<Progress>);

async fn serve(llm: ScriptedLlm, tools: InMemoryToolRegistry) -> Connected {
    serve_runner(common::harness(common::config(ExecutionMode::Sequential, false), tools, llm).runner).await
}

async fn serve_runner(runner: Runner) -> Connected {
    let runner = Arc::new(runner);
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let server = PortiaMcpServer::new(runner).serve(server_end).await.unwrap();
        let _ = server.waiting().await;
    });
    let client = Client::default();
    let progress = client.progress.clone();
    (client.serve(client_end).await.unwrap(), progress)
}

fn params(tool: &str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool.to_owned()).with_arguments(args.as_object().unwrap().clone())
}

async fn call(client: &RunningService<RoleClient, Client>, tool: &str, args: Value) -> Value {
    let result = client.call_tool(params(tool, args)).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{tool}: {result:?}");
    result.structured_content.unwrap()
}

fn plan(tool: &str) -> Value {
    json!({"steps": [{"task": "Do it.", "inputs": [], "tool_id": tool, "output": "$out"}]})
}

#[tokio::test]
async fn a_client_lists_the_tools_and_runs_a_query_with_progress() {
    let llm = ScriptedLlm::new().json(plan("echo_tool")).tool_call("echo_tool", json!({"text": "hi"}));
    let tools = InMemoryToolRegistry::new().with(MockTool::echo("echo_tool")).unwrap();
    let (client, progress) = serve(llm, tools).await;
    let names: Vec<String> = client.list_all_tools().await.unwrap().iter().map(|t| t.name.to_string()).collect();
    let expected = ["plan_query", "run_query", "run_plan", "list_workflows", "show_workflow", "resolve_clarification"];
    assert_eq!(names, expected);

    let workflow = call(&client, "run_query", json!({"query": "Echo hi"})).await;
    assert_eq!(workflow["state"], "COMPLETE", "{workflow}");
    assert_eq!(workflow["final_output"]["value"], json!({"text": "hi"}), "{workflow}");
    // One report as the run starts, one as its step ends.
    let mut reports = progress.at_least(2).await;
    reports.sort_by(|a, b| a.progress.total_cmp(&b.progress));
    let seen: Vec<(f64, Option<f64>, Option<&str>)> =
        reports.iter().map(|r| (r.progress, r.total, r.message.as_deref())).collect();
    assert_eq!(seen, [(0.0, Some(1.0), Some("started: 1 steps planned")), (1.0, Some(1.0), Some("step 1 of 1 done"))]);

    let listed = call(&client, "list_workflows", json!({"state": "complete"})).await;
    assert_eq!(listed["count"], 1, "{listed}");
    let shown = call(&client, "show_workflow", json!({"workflow_id": workflow["workflow_id"]})).await;
    assert_eq!(shown["id"], workflow["workflow_id"], "{shown}");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_client_plans_then_runs_and_answers_a_clarification() {
    let llm =
        ScriptedLlm::new().json(plan("ask_tool")).tool_call("ask_tool", json!({})).tool_call("ask_tool", json!({}));
    let ask = MockTool::new("ask_tool", MockBehavior::ClarifyInput("name".into()));
    let (client, _) = serve(llm, InMemoryToolRegistry::new().with(ask).unwrap()).await;
    let plan = call(&client, "plan_query", json!({"query": "Greet me"})).await;
    let waiting = call(&client, "run_plan", json!({"plan_id": plan["id"]})).await;
    assert_eq!(waiting["state"], "NEED_CLARIFICATION", "{waiting}");
    let question = &waiting["outstanding_clarifications"][0];
    let answer = json!({"workflow_id": waiting["workflow_id"], "clarification_id": question["clarification_id"],
        "response": "Ada"});
    let done = call(&client, "resolve_clarification", answer).await;
    assert_eq!(done["state"], "COMPLETE", "{done}");
    assert!(done["final_output"].to_string().contains("Ada"), "{done}");

    let error = client.call_tool(params("show_workflow", json!({"workflow_id": "nope"}))).await.unwrap();
    assert_eq!(error.is_error, Some(true), "a bad id is a tool error the client's model can read");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn run_plan_takes_the_plans_inputs_and_a_missing_one_is_an_error_naming_it() {
    let tools = InMemoryToolRegistry::new().with(MockTool::echo("echo_tool")).unwrap();
    let h = common::harness(common::config(ExecutionMode::Sequential, false), tools, ScriptedLlm::new());
    let plan = PlanBuilder::new("Echo a ticket")
        .plan_input("$ticket", "the ticket's text")
        .step("Echo the ticket", Some("echo_tool"), "$reply")
        .args(json!({"text": "$ticket"}))
        .build();
    h.runner.storage().save_plan(&plan).await.unwrap();
    let (client, _) = serve_runner(h.runner).await;

    let given = json!({"plan_id": plan.id, "inputs": {"ticket": "card charged twice"}});
    let done = call(&client, "run_plan", given).await;
    assert_eq!(done["state"], "COMPLETE", "{done}");
    assert_eq!(done["final_output"]["value"], json!({"text": "card charged twice"}), "{done}");

    let refused = client.call_tool(params("run_plan", json!({"plan_id": plan.id}))).await.unwrap();
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    let message = serde_json::to_string(&refused.content).unwrap();
    assert!(message.contains("needs the input `ticket`"), "{message}");
    client.cancel().await.unwrap();
}
