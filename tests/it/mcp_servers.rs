//! The MCP client against servers nobody here wrote, installed from npm and PyPI by
//! `.ci/install-mcp-servers` (which `.ci/run` calls): `server-everything` over stdio
//! and streamable HTTP, `mcp-server-time`, and a crash fixture on the official Python
//! SDK. These tests are `#[ignore]`d, so that a plain `cargo test` reports them as not
//! run; run on purpose (`--include-ignored`) without the servers, they fail.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use portia::runner::EventKind;
use portia::testing::ScriptedLlm;
use portia::tool::{ToolError, ToolOutput, ToolRegistry, ToolRunContext};
use portia::tools::mcp::{McpConfig, McpError, McpServerConfig, McpToolRegistry};
use portia::{Config, WorkflowId, WorkflowState};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::common;

/// The installed server a variable names. The tests that need one are `#[ignore]`d, so
/// that a plain `cargo test` reports them as not run; run on purpose
/// (`--include-ignored`, as `.ci/run` does) without it, they fail here, saying how to
/// install it.
fn installed(var: &str) -> PathBuf {
    match std::env::var_os(var).map(PathBuf::from).filter(|p| p.exists()) {
        Some(path) => path,
        None => panic!(
            "needs MCP test servers: {var} does not name an installed MCP server; run \
             `eval \"$(bash .ci/install-mcp-servers)\"` first (needs npm and python3)"
        ),
    }
}

fn ctx() -> ToolRunContext {
    ToolRunContext::new(WorkflowId::new())
}

async fn connect(name: &str, server: McpServerConfig) -> McpToolRegistry {
    McpToolRegistry::connect(&McpConfig::new().server(name, server)).await.unwrap()
}

async fn call(registry: &McpToolRegistry, id: &str, args: Value) -> Result<ToolOutput, ToolError> {
    registry.get_tool(id).unwrap().run(&ctx(), args).await
}

fn everything_stdio(bin: &std::path::Path) -> McpServerConfig {
    McpServerConfig::stdio(bin.display().to_string(), ["stdio"])
}

/// A stdio server starts with `PATH`, `HOME` and `LANG` and the variables its entry
/// names, and nothing else of this process's environment (here cargo's `CARGO_*`; in
/// an app, the API keys and the database URL). The "server" prints its environment
/// and exits, which the connection error carries as the server's last stderr lines.
#[tokio::test]
async fn a_stdio_server_sees_none_of_this_process_s_variables_but_path_home_and_lang() {
    let server = McpServerConfig::stdio("sh", ["-c", "env >&2; exit 1"]).env("SERVER_TOKEN", "t0k3n");
    let err = McpToolRegistry::connect(&McpConfig::new().server("envdump", server)).await.unwrap_err();
    let McpError::Connect { stderr, .. } = err else { panic!("expected a connection error, got {err:?}") };
    let names: Vec<&str> = stderr.iter().filter_map(|line| line.split_once('=').map(|(name, _)| name)).collect();
    assert!(names.contains(&"SERVER_TOKEN") && names.contains(&"PATH"), "{stderr:?}");
    // What its entry gave it is a secret to portia: blanked out of the stderr tail.
    assert!(stderr.contains(&"SERVER_TOKEN=[redacted]".to_owned()), "{stderr:?}");
    assert!(!stderr.iter().any(|line| line.contains("t0k3n")), "{stderr:?}");
    // The shell adds PWD, OLDPWD, SHLVL and _ itself.
    let allowed = ["PATH", "HOME", "LANG", "SERVER_TOKEN", "PWD", "OLDPWD", "SHLVL", "_"];
    assert!(names.iter().all(|name| allowed.contains(name)), "{stderr:?}");
}

#[tokio::test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_EVERYTHING)"]
async fn everything_over_stdio_echoes_and_sums_with_its_annotations() {
    let bin = installed("PORTIA_MCP_EVERYTHING");
    let registry = connect("everything", everything_stdio(&bin)).await;
    let ids: Vec<String> = registry.get_tools().iter().map(|t| t.spec().id).collect();
    for id in ["everything__echo", "everything__get-sum", "everything__trigger-long-running-operation"] {
        assert!(ids.iter().any(|i| i == id), "{id} missing from {ids:?}");
    }
    let sum = registry.get_tool("everything__get-sum").unwrap().spec();
    assert!(sum.idempotent && !sum.side_effects, "readOnlyHint: true");
    let echo = call(&registry, "everything__echo", json!({"message": "hello"})).await.unwrap();
    assert_eq!(echo, ToolOutput::value("Echo: hello"));
    let sum = call(&registry, "everything__get-sum", json!({"a": 2, "b": 40})).await.unwrap();
    let text = match &sum {
        ToolOutput::Value(value) => value.as_str().unwrap_or_else(|| panic!("{sum:?}")),
        other => panic!("{other:?}"),
    };
    assert!(text.contains("42"), "{text}");
    let bad = call(&registry, "everything__get-sum", json!({"a": 2})).await.unwrap_err();
    assert!(bad.is_soft() && bad.to_string().contains("the required argument `b` is missing"), "{bad}");
    registry.close().await;
}

/// Starts server-everything's streamable HTTP transport on a free loopback port and
/// waits (on its output, not the clock) until it listens.
async fn everything_http(bin: &std::path::Path) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = tokio::process::Command::new(bin)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.contains("listening on port") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://127.0.0.1:{port}/mcp"))
}

#[tokio::test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_EVERYTHING)"]
async fn everything_over_streamable_http_answers_calls() {
    let bin = installed("PORTIA_MCP_EVERYTHING");
    let (_server, url) = everything_http(&bin).await;
    let registry = connect("web", McpServerConfig::http(url).header("X-Test", "yes")).await;
    let echo = call(&registry, "web__echo", json!({"message": "over http"})).await.unwrap();
    assert_eq!(echo, ToolOutput::value("Echo: over http"));
    let sum = call(&registry, "web__get-sum", json!({"a": 1, "b": 2})).await.unwrap();
    assert!(format!("{sum:?}").contains('3'), "{sum:?}");
    registry.close().await;
}

#[tokio::test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_EVERYTHING)"]
async fn cancelling_the_workflow_stops_a_long_running_operation() {
    let bin = installed("PORTIA_MCP_EVERYTHING");
    let registry = connect("everything", everything_stdio(&bin)).await;
    let tool = registry.get_tool("everything__trigger-long-running-operation").unwrap();
    let ctx = ctx();
    let token = ctx.cancellation.clone();
    // An hour-long operation: only cancellation can end this call.
    let running = tokio::spawn(async move { tool.run(&ctx, json!({"duration": 3600, "steps": 3600})).await });
    token.cancel();
    let error = running.await.unwrap().unwrap_err();
    assert!(error.to_string().contains("cancelled with its workflow"), "{error}");
    // The server is still usable after the cancellation.
    let echo = call(&registry, "everything__echo", json!({"message": "still here"})).await.unwrap();
    assert_eq!(echo, ToolOutput::value("Echo: still here"));
    registry.close().await;
}

#[tokio::test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_TIME)"]
async fn time_server_from_pypi_is_read_only_and_answers() {
    let bin = installed("PORTIA_MCP_TIME");
    let registry =
        connect("time", McpServerConfig::stdio(bin.display().to_string(), ["--local-timezone", "UTC"])).await;
    let tool = registry.get_tool("time__get_current_time").unwrap();
    assert!(tool.spec().idempotent && !tool.spec().side_effects);
    let now = call(&registry, "time__get_current_time", json!({"timezone": "Europe/Paris"})).await.unwrap();
    assert!(format!("{now:?}").contains("Europe/Paris"), "{now:?}");
    let converted = call(
        &registry,
        "time__convert_time",
        json!({"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}),
    )
    .await
    .unwrap();
    assert!(format!("{converted:?}").contains("21:00"), "{converted:?}");
    let bad = call(&registry, "time__get_current_time", json!({"timezone": "Mars/Olympus"})).await.unwrap_err();
    assert!(bad.is_soft(), "an isError or JSON-RPC error the model can fix: {bad}");
    registry.close().await;
}

/// Every input schema these servers publish compiles: a tool with required arguments
/// refuses empty ones before sending (a schema that did not compile would let them by,
/// and the server's own refusal does not say "is missing").
#[tokio::test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_EVERYTHING, PORTIA_MCP_TIME)"]
async fn every_input_schema_of_the_real_servers_is_checked() {
    let (everything, time) = (installed("PORTIA_MCP_EVERYTHING"), installed("PORTIA_MCP_TIME"));
    let config = McpConfig::new()
        .server("everything", everything_stdio(&everything))
        .server("time", McpServerConfig::stdio(time.display().to_string(), ["--local-timezone", "UTC"]));
    let registry = McpToolRegistry::connect(&config).await.unwrap();
    let mut checked = 0;
    for spec in registry.get_tools().iter().map(|tool| tool.spec()) {
        let Value::Object(schema) = &*spec.args_schema else { panic!("{}: {}", spec.id, spec.args_schema) };
        if schema.get("required").and_then(Value::as_array).is_some_and(|required| !required.is_empty()) {
            let error = call(&registry, &spec.id, json!({})).await.unwrap_err();
            assert!(error.to_string().contains("is missing"), "{}: {error}", spec.id);
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} tools with required arguments");
    registry.close().await;
}

#[tokio::test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_PYTHON)"]
async fn a_dead_server_is_a_hard_error_with_its_stderr_and_restarts_on_next_use() {
    let python = installed("PORTIA_MCP_PYTHON");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_crash_server.py");
    let registry = connect("crashy", McpServerConfig::stdio(python.display().to_string(), [script])).await;
    let error = call(&registry, "crashy__crash", json!({})).await.unwrap_err();
    assert!(!error.is_soft(), "{error}");
    let message = error.to_string();
    assert!(message.contains("died") && message.contains("the disk is on fire"), "{message}");
    // The Python SDK wraps a returned string as structured content.
    let pong = call(&registry, "crashy__ping", json!({})).await.unwrap();
    assert_eq!(pong, ToolOutput::value(json!({"result": "pong"})), "started again");
    registry.close().await;
}

#[tokio::test]
async fn a_server_that_cannot_start_names_itself_and_shows_its_stderr() {
    let server = McpServerConfig::stdio("sh", ["-c", "echo 'no licence key' >&2; exit 2"]);
    let error = McpToolRegistry::connect(&McpConfig::new().server("broken", server)).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("MCP server broken") && message.contains("no licence key"), "{message}");
}

#[tokio::test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_EVERYTHING)"]
async fn a_workflow_plans_and_runs_over_a_real_server() {
    let bin = installed("PORTIA_MCP_EVERYTHING");
    let registry = connect("everything", everything_stdio(&bin)).await;
    let plan = json!({"steps": [
        {"task": "Add 19 and 23.", "inputs": [], "tool_id": "everything__get-sum", "output": "$sum"}
    ]});
    let llm = ScriptedLlm::new().json(plan).tool_call("everything__get-sum", json!({"a": 19, "b": 23}));
    let h =
        common::harness_with(common::config(portia::config::ExecutionMode::Sequential, false), registry.clone(), llm);
    let workflow = h.runner.execute_query("What is 19 + 23?").await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete, "{workflow:?}");
    let output = &workflow.outputs().step_outputs.get("$sum").unwrap().value;
    assert!(output.to_string().contains("42"), "{output}");
    let calls = h.runner.tool_calls(workflow.id()).await.unwrap();
    assert_eq!(calls.len(), 1, "one journaled call: {calls:?}");
    h.llm.assert_done();
    registry.close().await;
}

#[tokio::test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_EVERYTHING)"]
async fn the_default_registry_adds_the_servers_of_the_mcp_config_file() {
    installed("PORTIA_MCP_EVERYTHING");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claude_desktop_config.json");
    // `${VAR}` is read from the environment, where the install script put the server's path.
    let file = json!({"mcpServers": {"everything": {"command": "${PORTIA_MCP_EVERYTHING}", "args": ["stdio"]}}});
    std::fs::write(&path, file.to_string()).unwrap();
    let vars = |name: &str| (name == "PORTIA_MCP_CONFIG").then(|| path.display().to_string());
    let config = Config::from_vars(vars).unwrap();
    let registry = portia::tools::default_tool_registry_with_mcp(&config).await.unwrap();
    let ids: Vec<String> = registry.get_tools().iter().map(|t| t.spec().id).collect();
    assert!(ids.contains(&"calculator_tool".to_owned()) && ids.contains(&"everything__echo".to_owned()), "{ids:?}");
}

#[tokio::test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_EVERYTHING)"]
async fn an_elicitation_from_server_everything_is_answered_from_the_stored_response() {
    let bin = installed("PORTIA_MCP_EVERYTHING");
    let registry = connect("everything", everything_stdio(&bin)).await;
    let tool = registry.get_tool("everything__trigger-elicitation-request").unwrap();
    let mut ctx = ctx();
    let ToolOutput::Clarifications(asked) = tool.run(&ctx, json!({})).await.unwrap() else {
        panic!("the form waits for a person")
    };
    let question = &asked[0];
    assert!(matches!(question.kind, portia::ClarificationKind::Input { .. }), "{question:?}");
    assert!(question.user_guidance.contains("JSON object"), "{}", question.user_guidance);

    let mut answered = question.clone();
    answered.resolve(json!({"name": "Ada Lovelace", "check": true})).unwrap();
    ctx.clarifications = vec![answered];
    let output = tool.run(&ctx, json!({})).await.unwrap();
    let text = format!("{output:?}");
    assert!(text.contains("provided the requested information") && text.contains("Ada Lovelace"), "{text}");
    registry.close().await;
}

#[tokio::test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_EVERYTHING)"]
async fn a_sampling_request_from_server_everything_is_answered_by_the_steps_llm() {
    let bin = installed("PORTIA_MCP_EVERYTHING");
    let registry = connect("everything", everything_stdio(&bin)).await;
    let llm = Arc::new(ScriptedLlm::new().text("Teal, a calm blue-green."));
    let mut ctx = ctx();
    ctx.llm = Some(llm.clone());
    let tool = registry.get_tool("everything__trigger-sampling-request").unwrap();
    let output = tool.run(&ctx, json!({"prompt": "Name a colour.", "maxTokens": 20})).await.unwrap();
    assert!(format!("{output:?}").contains("Teal, a calm blue-green."), "{output:?}");
    let asked = &llm.requests()[0];
    assert!(asked.messages.iter().any(|m| m.content.contains("Name a colour.")), "{asked:?}");
    llm.assert_done();
    registry.close().await;
}

/// Runs one step calling `tool` with `args` on server-everything, answering each
/// question raised live with `answer`; returns the workflow and its events.
async fn run_everything_step(
    bin: &std::path::Path,
    tool: &str,
    args: Value,
    answer: Option<Value>,
) -> (portia::Workflow, Vec<EventKind>) {
    let registry = connect("everything", everything_stdio(bin)).await;
    let llm = ScriptedLlm::new().tool_call(tool, args);
    let h =
        common::harness_with(common::config(portia::config::ExecutionMode::Sequential, false), registry.clone(), llm);
    let plan = portia::PlanBuilder::new("call it").step("Call the tool", Some(tool), "$out").build();
    let workflow = h.runner.create_workflow(&plan).await.unwrap();
    let (mut events, run) = h.runner.execute_workflow_stream(workflow);
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        let kind = event.unwrap().kind;
        if let (EventKind::ClarificationRaised { clarification }, Some(answer)) = (&kind, &answer) {
            let answered = h.runner.resolve_clarification(clarification, answer.clone()).await.unwrap();
            assert_eq!(answered.state(), WorkflowState::InProgress, "answered while the call waits");
        }
        seen.push(kind);
    }
    let done = run.await.unwrap().unwrap();
    registry.close().await;
    (done, seen)
}

#[tokio::test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_EVERYTHING)"]
async fn an_elicitation_from_server_everything_is_answered_live() {
    let bin = installed("PORTIA_MCP_EVERYTHING");
    let answer = json!({"name": "Ada Lovelace", "check": true});
    let (done, events) =
        run_everything_step(&bin, "everything__trigger-elicitation-request", json!({}), Some(answer.clone())).await;
    assert_eq!(done.state(), WorkflowState::Complete, "{done:?}");
    let output = done.outputs().step_outputs.get("$out").unwrap().value.to_string();
    assert!(output.contains("provided the requested information") && output.contains("Ada Lovelace"), "{output}");
    let stored = &done.outputs().clarifications;
    assert!(stored.len() == 1 && stored[0].resolved && stored[0].response == Some(answer), "{stored:?}");
    let resolved = events.iter().filter(|e| matches!(e, EventKind::ClarificationResolved { .. })).count();
    assert_eq!(resolved, 1, "{events:?}");
}

#[tokio::test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_EVERYTHING)"]
async fn progress_from_server_everything_arrives_as_tool_progress_events_of_the_call() {
    let bin = installed("PORTIA_MCP_EVERYTHING");
    // Four reports, a quarter of a second apart, then the result.
    let args = json!({"duration": 1, "steps": 4});
    let (done, events) = run_everything_step(&bin, "everything__trigger-long-running-operation", args, None).await;
    assert_eq!(done.state(), WorkflowState::Complete, "{done:?}");
    let call = events.iter().find_map(|e| match e {
        EventKind::ToolCallStarted { call, .. } => Some(*call),
        _ => None,
    });
    let reports: Vec<(f64, Option<f64>)> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::ToolProgress { call: of, progress, total, .. } => {
                assert_eq!(Some(*of), call, "reported as progress of the call made");
                Some((*progress, *total))
            }
            _ => None,
        })
        .collect();
    assert!(!reports.is_empty(), "no progress arrived: {events:?}");
    assert!(reports.iter().all(|(p, total)| (1.0..=4.0).contains(p) && *total == Some(4.0)), "{reports:?}");
}
