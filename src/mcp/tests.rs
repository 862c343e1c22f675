//! Unit tests of the client against an rmcp server in this process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ElicitRequestParams, ErrorData, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool as McpToolInfo,
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
            other => Err(ErrorData::invalid_params(format!("unknown tool {other}"), None)),
        }
    }
}

async fn registry(fixture: &Fixture, timeout: Duration) -> McpToolRegistry {
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
    })
    .timeout(timeout);
    McpToolRegistry::connect(&McpConfig::new().server("fx", server)).await.unwrap()
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
        ["fx__add", "fx__send", "fx__fail", "fx__picture", "fx__slow", "fx__grow", "fx__ask", "fx__sample"]
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
    let ToolOutput::Value(Value::Array(blocks)) = call(&registry, "fx__picture", json!({})).await.unwrap() else {
        panic!("content blocks")
    };
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
