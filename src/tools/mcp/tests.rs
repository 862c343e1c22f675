//! Unit tests of the client against an rmcp server in this process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ElicitRequestParams, ErrorData, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool as McpToolInfo,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ServerHandler, ServiceExt};
use serde_json::{Value, json};

use super::*;
use crate::tool::{ToolError, ToolOutput, ToolRegistry, ToolRunContext};

/// A server with one tool per mapping under test. Clones share their state.
#[derive(Clone, Default)]
struct Fixture {
    extra_tools: Arc<Mutex<Vec<McpToolInfo>>>,
    seen_meta: Arc<Mutex<Vec<Value>>>,
    cancelled: Arc<tokio::sync::Notify>,
    closed: Arc<tokio::sync::Notify>,
    /// Lets `progress` return once the test has seen its reports.
    release: Arc<tokio::sync::Notify>,
}

fn tool(value: Value) -> McpToolInfo {
    serde_json::from_value(value).unwrap()
}

fn result(value: Value) -> Result<CallToolResponse, ErrorData> {
    Ok(CallToolResponse::Complete(serde_json::from_value::<CallToolResult>(value).unwrap()))
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools = vec![
            tool(json!({"name": "add", "description": "Adds.", "annotations": {"readOnlyHint": true},
                "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                    "required": ["a", "b"]}})),
            tool(json!({"name": "send", "description": "Sends.", "inputSchema": {"type": "object"}})),
            tool(json!({"name": "fail", "inputSchema": {"type": "object"}})),
            tool(json!({"name": "picture", "inputSchema": {"type": "object"}})),
            tool(json!({"name": "slow", "inputSchema": {"type": "object"}, "annotations": {"idempotentHint": true}})),
            tool(json!({"name": "grow", "inputSchema": {"type": "object"}})),
            tool(json!({"name": "ask", "inputSchema": {"type": "object"}})),
            tool(json!({"name": "sample", "inputSchema": {"type": "object"}})),
            tool(json!({"name": "progress", "inputSchema": {"type": "object"}})),
        ];
        tools.extend(self.extra_tools.lock().unwrap().iter().cloned());
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.unwrap_or_default());
        match request.name.as_ref() {
            "add" => {
                let sum = args["a"].as_f64().unwrap() + args["b"].as_f64().unwrap();
                result(
                    json!({"content": [{"type": "text", "text": sum.to_string()}], "structuredContent": {"sum": sum}}),
                )
            }
            "send" => {
                self.seen_meta.lock().unwrap().push(Value::Object(context.meta.0.0.clone()));
                result(json!({"content": [{"type": "text", "text": "sent"}]}))
            }
            "fail" => result(json!({"content": [{"type": "text", "text": "no such city"}], "isError": true})),
            "picture" => result(json!({"content": [{"type": "text", "text": "a dot"},
                {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}]})),
            "slow" => {
                context.ct.cancelled().await;
                self.cancelled.notify_one();
                Err(ErrorData::internal_error("cancelled", None))
            }
            "grow" => {
                self.extra_tools
                    .lock()
                    .unwrap()
                    .push(tool(json!({"name": "new_tool", "inputSchema": {"type": "object"}})));
                context.peer.notify_tool_list_changed().await.unwrap();
                result(json!({"content": [{"type": "text", "text": "grown"}]}))
            }
            "ask" => {
                let request: ElicitRequestParams = serde_json::from_value(json!({"mode": "form",
                    "message": "What is your name?",
                    "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}))
                .unwrap();
                let answer = context.peer.create_elicitation(request).await.unwrap();
                result(json!({"content": [{"type": "text", "text": "answered"}], "structuredContent": answer}))
            }
            #[allow(deprecated)] // Sampling: see sampling.rs.
            "sample" => {
                let request = serde_json::from_value(json!({"maxTokens": 50, "systemPrompt": "Be brief.",
                    "messages": [{"role": "user", "content": {"type": "text", "text": "Name a colour."}}]}))
                .unwrap();
                let reply = context
                    .peer
                    .create_message(request)
                    .await
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                result(json!({"content": [{"type": "text", "text": "sampled"}], "structuredContent": reply}))
            }
            "progress" => {
                let token =
                    context.meta.get_progress_token().ok_or_else(|| ErrorData::invalid_request("no token", None))?;
                for done in 1..=3 {
                    let mut report = ProgressNotificationParam::new(token.clone(), f64::from(done)).with_total(3.0);
                    report.message = (done == 1).then(|| "started".to_owned());
                    context.peer.notify_progress(report).await.unwrap();
                }
                self.release.notified().await;
                result(json!({"content": [{"type": "text", "text": "done"}]}))
            }
            other => Err(ErrorData::invalid_params(format!("unknown tool {other}"), None)),
        }
    }
}

async fn registry(fixture: &Fixture, timeout: Duration) -> McpToolRegistry {
    connect(fixture, |server| server.timeout(timeout)).await
}

/// The fixture as server `fx`, configured by `configure`.
async fn connect(fixture: &Fixture, configure: impl FnOnce(McpServerConfig) -> McpServerConfig) -> McpToolRegistry {
    let served = fixture.clone();
    let server = McpServerConfig::in_process(move || {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let handler = served.clone();
        let closed = served.closed.clone();
        tokio::spawn(async move {
            if let Ok(running) = handler.serve(server).await {
                let _ = running.waiting().await;
            }
            closed.notify_one();
        });
        client
    });
    McpToolRegistry::connect(&McpConfig::new().server("fx", configure(server))).await.unwrap()
}

fn ctx() -> ToolRunContext {
    let mut ctx = ToolRunContext::new(crate::WorkflowId::new());
    ctx.idempotency_key = Some("wf-1/step-0/call-0".into());
    ctx
}

async fn call(registry: &McpToolRegistry, id: &str, args: Value) -> Result<ToolOutput, ToolError> {
    registry.get_tool(id).unwrap().run(&ctx(), args).await
}

#[tokio::test]
async fn lists_tools_with_namespaced_ids_and_annotation_flags() {
    let registry = registry(&Fixture::default(), Duration::from_secs(30)).await;
    let ids: Vec<String> = registry.get_tools().iter().map(|t| t.spec().id).collect();
    assert_eq!(
        ids,
        [
            "fx__add",
            "fx__send",
            "fx__fail",
            "fx__picture",
            "fx__slow",
            "fx__grow",
            "fx__ask",
            "fx__sample",
            "fx__progress"
        ]
    );
    let add = registry.get_tool("fx__add").unwrap().spec();
    assert!(add.idempotent && !add.side_effects);
    let send = registry.get_tool("fx__send").unwrap().spec();
    assert!(!send.idempotent && send.side_effects, "no annotations: never repeated silently");
}

#[tokio::test]
async fn calls_keep_result_types_and_is_error_is_soft() {
    let registry = registry(&Fixture::default(), Duration::from_secs(30)).await;
    assert_eq!(
        call(&registry, "fx__add", json!({"a": 2, "b": 3})).await.unwrap(),
        ToolOutput::value(json!({"sum": 5.0}))
    );
    assert_eq!(call(&registry, "fx__fail", json!({})).await, Err(ToolError::soft("no such city")));
    let ToolOutput::Value(value) = call(&registry, "fx__picture", json!({})).await.unwrap() else {
        panic!("content blocks")
    };
    let Value::Array(blocks) = &*value else { panic!("content blocks") };
    assert_eq!(blocks[0], json!({"type": "text", "text": "a dot"}));
    assert_eq!((blocks[1]["type"].as_str(), blocks[1]["mimeType"].as_str()), (Some("image"), Some("image/png")));
}

#[tokio::test]
async fn arguments_are_checked_before_sending() {
    let registry = registry(&Fixture::default(), Duration::from_secs(30)).await;
    let error = call(&registry, "fx__add", json!({"a": 2})).await.unwrap_err();
    assert!(error.is_soft() && error.to_string().contains("the required argument `b` is missing"), "{error}");
    let error = call(&registry, "fx__add", json!({"a": 2, "b": "three"})).await.unwrap_err();
    assert!(error.to_string().contains("type number"), "{error}");
}

#[tokio::test]
async fn the_idempotency_key_travels_in_meta() {
    let fixture = Fixture::default();
    let registry = registry(&fixture, Duration::from_secs(30)).await;
    call(&registry, "fx__send", json!({})).await.unwrap();
    let meta = fixture.seen_meta.lock().unwrap()[0].clone();
    assert_eq!(meta["idempotencyKey"], "wf-1/step-0/call-0", "{meta}");
}

#[tokio::test]
async fn list_changed_refreshes_the_cached_list() {
    let registry = registry(&Fixture::default(), Duration::from_secs(30)).await;
    let mut changes = registry.changes();
    changes.borrow_and_update();
    assert!(registry.get_tool("fx__new_tool").is_err());
    call(&registry, "fx__grow", json!({})).await.unwrap();
    changes.changed().await.unwrap();
    assert!(registry.get_tool("fx__new_tool").is_ok());
}

#[tokio::test]
async fn workflow_cancellation_cancels_the_mcp_request() {
    let fixture = Fixture::default();
    let registry = registry(&fixture, Duration::from_secs(3600)).await;
    let ctx = ctx();
    let token = ctx.cancellation.clone();
    let tool = registry.get_tool("fx__slow").unwrap();
    let running = tokio::spawn(async move { tool.run(&ctx, json!({})).await });
    token.cancel();
    let error = running.await.unwrap().unwrap_err();
    assert!(!error.is_soft() && error.to_string().contains("cancelled with its workflow"), "{error}");
    fixture.cancelled.notified().await; // the server saw notifications/cancelled
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_typed_and_soft_only_for_idempotent_tools() {
    let registry = registry(&Fixture::default(), Duration::from_secs(5)).await;
    // The clock is paused: the runtime jumps it forward when every task waits.
    let error = call(&registry, "fx__slow", json!({})).await.unwrap_err();
    assert!(error.is_soft(), "slow is idempotent: {error}");
    assert!(error.to_string().contains("did not answer within 5 s") && error.to_string().contains("timeoutSecs"));
}

#[tokio::test]
async fn an_elicitation_becomes_a_clarification_and_its_answer_is_sent_on_the_next_call() {
    let registry = registry(&Fixture::default(), Duration::from_secs(30)).await;
    let tool = registry.get_tool("fx__ask").unwrap();
    let mut ctx = ctx();
    let ToolOutput::Clarifications(asked) = tool.run(&ctx, json!({})).await.unwrap() else {
        panic!("an unanswered question waits for a person")
    };
    assert_eq!(asked.len(), 1);
    let question = &asked[0];
    assert!(matches!(question.kind, crate::ClarificationKind::Input { .. }), "{question:?}");
    assert!(question.user_guidance.contains("What is your name?"), "{}", question.user_guidance);

    // The person answers; the resumed step calls again and the repeated question is answered at once.
    let mut answered = question.clone();
    answered.resolve(json!("Ada")).unwrap();
    ctx.clarifications = vec![answered];
    let output = tool.run(&ctx, json!({})).await.unwrap();
    assert_eq!(output, ToolOutput::value(json!({"action": "accept", "content": {"name": "Ada"}})));

    let mut declined = question.clone();
    declined.resolve(json!("decline")).unwrap();
    ctx.clarifications = vec![declined];
    let output = tool.run(&ctx, json!({})).await.unwrap();
    assert_eq!(output, ToolOutput::value(json!({"action": "decline"})));
}

#[tokio::test]
async fn dropping_the_registry_and_its_tools_closes_the_connection() {
    let fixture = Fixture::default();
    let registry = registry(&fixture, Duration::from_secs(30)).await;
    let tools = registry.get_tools();
    drop(registry);
    drop(tools);
    fixture.closed.notified().await; // the server saw the client go: nothing keeps it alive
}

/// An LLM that answers "Teal" and keeps what it was asked.
#[derive(Debug, Default)]
struct Teal(Mutex<Vec<crate::llm::LlmRequest>>);

#[async_trait::async_trait]
impl crate::llm::LlmClient for Teal {
    async fn chat(&self, request: crate::llm::LlmRequest) -> Result<crate::llm::LlmResponse, crate::llm::LlmError> {
        self.0.lock().unwrap().push(request);
        Ok(crate::llm::LlmResponse::text("Teal"))
    }
}

#[tokio::test]
async fn sampling_is_answered_by_the_steps_llm() {
    let registry = registry(&Fixture::default(), Duration::from_secs(30)).await;
    let llm = Arc::new(Teal::default());
    let mut ctx = ctx();
    ctx.llm = Some(llm.clone());
    let output = registry.get_tool("fx__sample").unwrap().run(&ctx, json!({})).await.unwrap();
    let ToolOutput::Value(reply) = output else { panic!() };
    assert_eq!(reply["content"]["text"], "Teal", "{reply}");
    assert_eq!(reply["role"], "assistant");
    let asked: Vec<String> = llm.0.lock().unwrap()[0].messages.iter().map(|m| m.content.clone()).collect();
    assert_eq!(asked, ["Be brief.", "Name a colour."]);
    // Without a step's LLM the server is told no.
    let error = call(&registry, "fx__sample", json!({})).await.unwrap_err();
    assert!(error.to_string().contains("sampling is answered only"), "{error}");
}

#[tokio::test]
async fn a_reserved_or_invalid_header_is_a_config_error_naming_it() {
    for (name, value, expected) in
        [("Accept", "text/plain", "set by the MCP client itself"), ("Bad Header", "x", "not a header name")]
    {
        let server = McpServerConfig::http("http://127.0.0.1:9/mcp").header(name, value);
        let error = McpToolRegistry::connect(&McpConfig::new().server("web", server)).await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains("mcpServers.web.headers") && message.contains(expected), "{message}");
    }
}

/// Answers 401 quoting every header and the query it got, as a careless server may.
struct EchoRequest;

impl wiremock::Respond for EchoRequest {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        let headers: Vec<String> =
            request.headers.iter().map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or_default())).collect();
        let query = request.url.query().unwrap_or_default();
        wiremock::ResponseTemplate::new(401).set_body_string(format!("refused {query} with {}", headers.join("; ")))
    }
}

#[tokio::test]
async fn an_http_servers_error_shows_none_of_its_headers_tokens_or_query_values() {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any()).respond_with(EchoRequest).mount(&server).await;
    let bearer =
        json!({"mcpServers": {"remote": {"url": format!("{}/mcp", server.uri()), "bearerToken": "LEAK-bearer"}}});
    for config in [
        McpConfig::new().server(
            "remote",
            McpServerConfig::http(format!("{}/mcp?token=LEAK-query%2Fvalue", server.uri()))
                .header("Authorization", "Bearer LEAKCANARY-mcpsecret")
                .header("X-Api-Key", "LEAK-header"),
        ),
        McpConfig::from_json_with(&bearer.to_string(), |_| None).unwrap(),
    ] {
        let error = McpToolRegistry::connect(&config).await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains("MCP server remote: cannot connect") && message.contains("401"), "{message}");
        assert!(message.contains("[redacted]"), "the server echoed them: {message}");
        assert!(!message.contains("LEAK") && !message.contains("rmcp::"), "{message}");
        assert!(!format!("{error:?}").contains("LEAK"), "{error:?}");
    }
}

#[test]
fn an_http_servers_debug_shows_no_query_value() {
    let config = McpServerConfig::http("https://mcp.example.com/mcp?key=LEAK-query");
    let shown = format!("{config:?}");
    assert!(shown.contains("key=***") && !shown.contains("LEAK"), "{shown}");
}

/// A runner whose plan calls the fixture's `tool` once per run (`runs` runs).
async fn workflow_calling(registry: McpToolRegistry, tool: &str, runs: usize) -> (crate::Runner, crate::Workflow) {
    let llm = (0..runs).fold(crate::testing::ScriptedLlm::new(), |llm, _| llm.tool_call(tool, json!({})));
    let config = crate::Config::builder()
        .execution(crate::config::ExecutionMode::Sequential)
        .summarize_final_output(false)
        .build()
        .unwrap();
    let runner = crate::Runner::builder(config).tools(registry).llm(Arc::new(llm)).build().unwrap();
    let plan = crate::PlanBuilder::new("call it").step("Call the tool", Some(tool), "$out").build();
    let workflow = runner.create_workflow(&plan).await.unwrap();
    (runner, workflow)
}

/// Runs `workflow` to rest, answering each question raised live with `answer` after
/// `delay` (on the paused clock, in the tests that pause it); returns the events.
async fn run_answering(
    runner: &crate::Runner,
    workflow: crate::Workflow,
    answer: Option<Value>,
    delay: Duration,
) -> (crate::Workflow, Vec<crate::events::EventKind>) {
    let (mut events, run) = runner.execute_workflow_stream(workflow);
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        let kind = event.unwrap().kind;
        if let (crate::events::EventKind::ClarificationRaised { clarification }, Some(answer)) = (&kind, &answer) {
            tokio::time::sleep(delay).await;
            let answered = runner.resolve_clarification(clarification, answer.clone()).await.unwrap();
            assert_eq!(answered.state(), crate::WorkflowState::InProgress, "answered live");
        }
        seen.push(kind);
    }
    (run.await.unwrap().unwrap(), seen)
}

fn step_output(workflow: &crate::Workflow) -> Value {
    workflow.outputs().step_outputs.get("$out").map(|o| o.value.clone()).unwrap_or_default().into()
}

#[tokio::test]
async fn an_elicitation_answered_live_is_accepted_and_stored_resolved() {
    let registry = connect(&Fixture::default(), |s| s.elicitation_wait(Duration::from_secs(3600))).await;
    let (runner, workflow) = workflow_calling(registry, "fx__ask", 1).await;
    let (done, events) = run_answering(&runner, workflow, Some(json!("Ada")), Duration::ZERO).await;
    assert_eq!(done.state(), crate::WorkflowState::Complete, "{done:?}");
    assert_eq!(step_output(&done), json!({"action": "accept", "content": {"name": "Ada"}}));
    let stored = &done.outputs().clarifications;
    assert!(stored.len() == 1 && stored[0].resolved && stored[0].response == Some(json!("Ada")), "{stored:?}");
    use crate::events::EventKind as E;
    let raised = events.iter().position(|e| matches!(e, E::ClarificationRaised { .. })).unwrap();
    let resolved = events.iter().position(|e| matches!(e, E::ClarificationResolved { .. })).unwrap();
    assert!(raised < resolved, "{events:?}");
    let paused = events
        .iter()
        .any(|e| matches!(e, E::StateChanged { to, .. } if *to == crate::WorkflowState::NeedClarification));
    assert!(!paused, "never NEED_CLARIFICATION: {events:?}");
}

#[tokio::test(start_paused = true)]
async fn the_call_timeout_does_not_count_the_time_a_person_takes_to_answer() {
    let registry =
        connect(&Fixture::default(), |s| s.timeout(Duration::from_secs(5)).elicitation_wait(Duration::from_secs(600)))
            .await;
    let (runner, workflow) = workflow_calling(registry, "fx__ask", 1).await;
    // The person answers after 100 s of the paused clock: twenty timeouts' worth.
    let (done, _) = run_answering(&runner, workflow, Some(json!("Ada")), Duration::from_secs(100)).await;
    assert_eq!(done.state(), crate::WorkflowState::Complete, "{done:?}");
    assert_eq!(step_output(&done), json!({"action": "accept", "content": {"name": "Ada"}}));
}

#[tokio::test(start_paused = true)]
async fn an_elicitation_unanswered_within_the_wait_is_declined_then_answered_from_storage_on_resume() {
    // Paused clock: once every task waits, the runtime moves it to the end of the wait.
    let registry = connect(&Fixture::default(), |s| s.elicitation_wait(Duration::from_secs(30))).await;
    let (runner, workflow) = workflow_calling(registry, "fx__ask", 2).await;
    let (waiting, _) = run_answering(&runner, workflow, None, Duration::ZERO).await;
    assert_eq!(waiting.state(), crate::WorkflowState::NeedClarification, "{waiting:?}");
    let calls = runner.tool_calls(waiting.id()).await.unwrap();
    assert!(format!("{:?}", calls[0].output).contains("What is your name?"), "declined, left to the workflow");

    let question = waiting.outstanding_clarifications().next().unwrap().clone();
    let ready = runner.resolve_clarification(&question, "Ada").await.unwrap();
    assert_eq!(ready.state(), crate::WorkflowState::ReadyToResume);
    let (done, events) = run_answering(&runner, ready, None, Duration::ZERO).await;
    assert_eq!(done.state(), crate::WorkflowState::Complete, "{done:?}");
    assert_eq!(step_output(&done), json!({"action": "accept", "content": {"name": "Ada"}}));
    let asked_again = events.iter().any(|e| matches!(e, crate::events::EventKind::ClarificationRaised { .. }));
    assert!(!asked_again, "the repeated question was answered from the stored response: {events:?}");
}

#[tokio::test]
async fn decline_or_cancel_answered_live_are_mcps_decline_and_cancel() {
    for action in ["decline", "cancel"] {
        let registry = connect(&Fixture::default(), |s| s.elicitation_wait(Duration::from_secs(3600))).await;
        let (runner, workflow) = workflow_calling(registry, "fx__ask", 1).await;
        let (done, _) = run_answering(&runner, workflow, Some(json!(action)), Duration::ZERO).await;
        assert_eq!(done.state(), crate::WorkflowState::Complete, "{done:?}");
        assert_eq!(step_output(&done), json!({"action": action}));
    }
}

#[tokio::test]
async fn a_zero_wait_declines_at_once_and_leaves_the_question_to_the_workflow() {
    let registry = connect(&Fixture::default(), |s| s.elicitation_wait(Duration::ZERO)).await;
    let (runner, workflow) = workflow_calling(registry, "fx__ask", 1).await;
    let (waiting, events) = run_answering(&runner, workflow, None, Duration::ZERO).await;
    assert_eq!(waiting.state(), crate::WorkflowState::NeedClarification);
    let raised = events.iter().filter(|e| matches!(e, crate::events::EventKind::ClarificationRaised { .. })).count();
    assert_eq!(raised, 1, "raised once, when the step ended: {events:?}");
}

#[tokio::test]
async fn progress_notifications_become_tool_progress_events_of_the_call() {
    use crate::events::EventKind as E;
    let fixture = Fixture::default();
    let registry = registry(&fixture, Duration::from_secs(30)).await;
    let (runner, workflow) = workflow_calling(registry, "fx__progress", 1).await;
    let (mut events, run) = runner.execute_workflow_stream(workflow);
    let (mut call, mut reports) = (None, Vec::new());
    while let Some(event) = events.next().await {
        match event.unwrap().kind {
            E::ToolCallStarted { call: started, .. } => call = Some(started),
            E::ToolProgress { call: of, tool_id, progress, total, message } => {
                assert_eq!((Some(of), tool_id.as_str()), (call, "fx__progress"));
                reports.push((progress, total, message));
                if reports.len() == 3 {
                    fixture.release.notify_one(); // seen while the call is open
                }
            }
            _ => {}
        }
    }
    assert_eq!(run.await.unwrap().unwrap().state(), crate::WorkflowState::Complete);
    assert_eq!(reports, [(1.0, Some(3.0), Some("started".to_owned())), (2.0, Some(3.0), None), (3.0, Some(3.0), None)]);
}

/// An LLM that takes 100 s (of the paused clock) to answer.
#[derive(Debug)]
struct Slow;

#[async_trait::async_trait]
impl crate::llm::LlmClient for Slow {
    async fn chat(&self, _request: crate::llm::LlmRequest) -> Result<crate::llm::LlmResponse, crate::llm::LlmError> {
        tokio::time::sleep(Duration::from_secs(100)).await;
        Ok(crate::llm::LlmResponse::text("Slate"))
    }
}

#[tokio::test(start_paused = true)]
async fn the_call_timeout_does_not_count_the_time_the_steps_llm_takes_to_answer_sampling() {
    let registry = registry(&Fixture::default(), Duration::from_secs(5)).await;
    let mut ctx = ctx();
    ctx.llm = Some(Arc::new(Slow));
    let output = registry.get_tool("fx__sample").unwrap().run(&ctx, json!({})).await.unwrap();
    let ToolOutput::Value(reply) = output else { panic!() };
    assert_eq!(reply["content"]["text"], "Slate", "{reply}");
}
