//! This SDK served as an MCP server: an MCP client (Claude Desktop, an IDE) plans and
//! runs workflows through a [`Runner`].

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken, ServerCapabilities, ServerConfig,
    Tool as McpToolInfo,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ServerHandler, ServiceExt};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::McpError;
use crate::events::{EventKind, EventStream, Missed, WorkflowEvent};
use crate::storage::WorkflowQuery;
use crate::workflow::StepOutcome;
use crate::{Error, Result, Runner, Workflow};

/// A [`Runner`] as an MCP server. Its tools:
///
/// | tool | does |
/// |---|---|
/// | `plan_query` | plans a query and stores the plan, without running it |
/// | `run_query` | plans and runs a query |
/// | `run_plan` | runs a stored plan |
/// | `list_workflows` | lists stored workflows, optionally in one state |
/// | `show_workflow` | one workflow in full: steps' outputs, clarifications, usage |
/// | `resolve_clarification` | answers a workflow's question and runs it on |
///
/// Runs report `notifications/progress` (steps done of steps planned) when the client
/// asks for progress: once at the start and as each step ends. A client's
/// `notifications/cancelled` cancels the workflow.
#[derive(Debug, Clone)]
pub struct PortiaMcpServer {
    runner: Arc<Runner>,
}

/// Serves `runner` over stdin and stdout until the client disconnects.
///
/// # Errors
/// [`Error::Mcp`] when the handshake fails.
pub async fn serve_stdio(runner: Arc<Runner>) -> Result<()> {
    let service = PortiaMcpServer::new(runner)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| McpError::Connect { server: "portia (stdio)".into(), message: e.to_string(), stderr: vec![] })?;
    let _ = service.waiting().await;
    Ok(())
}

#[derive(Deserialize, JsonSchema)]
struct QueryArgs {
    /// What to do, in plain words.
    query: String,
}

#[derive(Deserialize, JsonSchema)]
struct PlanArgs {
    /// The id of a stored plan (one `plan_query` returned, say).
    plan_id: String,
    /// Values for the plan's inputs, by name (`{"ticket": "..."}`); an input with a
    /// default may be left out.
    #[serde(default)]
    inputs: serde_json::Map<String, Value>,
}

#[derive(Deserialize, JsonSchema)]
struct WorkflowArgs {
    /// The workflow's id.
    workflow_id: String,
}

#[derive(Deserialize, JsonSchema)]
struct ListArgs {
    /// Only workflows in this state (`COMPLETE`, `NEED_CLARIFICATION`, `FAILED`, ...).
    state: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
struct ClarificationArgs {
    /// The workflow's id.
    workflow_id: String,
    /// The id of one of its outstanding clarifications.
    clarification_id: String,
    /// The answer: text, a chosen option, `true` to confirm, ...
    response: Value,
}

fn tool<T: JsonSchema>(name: &'static str, description: &'static str, read_only: bool) -> McpToolInfo {
    let schema = match &*crate::llm::schema_value::<T>() {
        Value::Object(schema) => schema.clone(),
        _ => serde_json::Map::new(),
    };
    let annotations = if read_only {
        json!({"readOnlyHint": true})
    } else {
        json!({"readOnlyHint": false, "destructiveHint": false, "idempotentHint": false})
    };
    serde_json::from_value(json!({"name": name, "description": description, "inputSchema": schema,
        "annotations": annotations}))
    .expect("a tool description is valid")
}

impl PortiaMcpServer {
    /// Serves `runner`'s planner, agents, tools and storage.
    pub fn new(runner: Arc<Runner>) -> Self {
        Self { runner }
    }

    fn tools() -> Vec<McpToolInfo> {
        vec![
            tool::<QueryArgs>(
                "plan_query",
                "Plans a query with the SDK's tools and stores the plan; returns it.",
                false,
            ),
            tool::<QueryArgs>(
                "run_query",
                "Plans and runs a query. Returns the workflow: its state, final output and any questions.",
                false,
            ),
            tool::<PlanArgs>("run_plan", "Runs a stored plan with values for its inputs. Returns the workflow.", false),
            tool::<ListArgs>("list_workflows", "Lists stored workflows, newest ids last.", true),
            tool::<WorkflowArgs>("show_workflow", "Shows one workflow in full.", true),
            tool::<ClarificationArgs>(
                "resolve_clarification",
                "Answers a question a workflow asked, then runs the workflow on. Returns the workflow.",
                false,
            ),
        ]
    }

    async fn dispatch(&self, name: &str, args: Value, ctx: &RequestContext<RoleServer>) -> Result<Value> {
        match name {
            "plan_query" => {
                let plan = self.runner.generate_plan(&parse::<QueryArgs>(name, args)?.query).await?;
                Ok(serde_json::to_value(&plan).unwrap_or_default())
            }
            "run_query" => {
                let plan = self.runner.generate_plan(&parse::<QueryArgs>(name, args)?.query).await?;
                let workflow = self.runner.create_workflow(&plan).await?;
                Ok(summary(&self.run(workflow, plan.steps.len(), ctx).await?))
            }
            "run_plan" => {
                let args = parse::<PlanArgs>(name, args)?;
                let plan = self.runner.get_plan(parse_id(&args.plan_id)?).await?;
                let workflow = self.runner.create_workflow(&plan).inputs(args.inputs).await?;
                Ok(summary(&self.run(workflow, plan.steps.len(), ctx).await?))
            }
            "list_workflows" => self.list(parse(name, args)?).await,
            "show_workflow" => {
                let workflow =
                    self.runner.get_workflow(parse_id(&parse::<WorkflowArgs>(name, args)?.workflow_id)?).await?;
                Ok(serde_json::to_value(&workflow).unwrap_or_default())
            }
            "resolve_clarification" => self.resolve(parse(name, args)?, ctx).await,
            other => Err(Error::ToolNotFound(other.to_owned())),
        }
    }

    async fn list(&self, args: ListArgs) -> Result<Value> {
        let query =
            match args.state {
                Some(state) => WorkflowQuery::in_state(
                    serde_json::from_value(Value::String(state.to_uppercase())).map_err(|e| McpError::Arguments {
                        tool: "list_workflows".into(),
                        message: format!("{e}; give a state such as COMPLETE or NEED_CLARIFICATION"),
                    })?,
                ),
                None => WorkflowQuery::default(),
            };
        let page = self.runner.list_workflows(&query).await?;
        Ok(json!({"count": page.count, "workflows": page.results.iter().map(summary).collect::<Vec<_>>()}))
    }

    async fn resolve(&self, args: ClarificationArgs, ctx: &RequestContext<RoleServer>) -> Result<Value> {
        let workflow_id = parse_id(&args.workflow_id)?;
        let clarification_id = parse_id(&args.clarification_id)?;
        let workflow = self.runner.get_workflow(workflow_id).await?;
        let clarification = workflow
            .outstanding_clarifications()
            .find(|c| c.id == clarification_id)
            .cloned()
            .ok_or(Error::ClarificationNotFound { workflow_id, clarification_id })?;
        let workflow = self.runner.resolve_clarification(&clarification, args.response).await?;
        if workflow.outstanding_clarifications().next().is_some() {
            return Ok(summary(&workflow));
        }
        let steps = self.runner.get_plan(workflow.plan_id()).await?.steps.len();
        Ok(summary(&self.run(workflow, steps, ctx).await?))
    }

    /// Runs a workflow, reporting progress as its steps end when the client asked for
    /// it, and cancelling it when the client cancels the request.
    async fn run(&self, workflow: Workflow, steps: usize, ctx: &RequestContext<RoleServer>) -> Result<Workflow> {
        let id = workflow.id();
        let mut done = workflow.outputs().step_outputs.len();
        let token = ctx.meta.get_progress_token();
        // Opened before the run starts, so that no step's end is missed.
        let mut events = token.is_some().then(|| self.runner.subscribe_to(id));
        let runner = self.runner.clone();
        let mut run = tokio::spawn(async move { runner.execute_workflow(workflow).await });
        if let Some(token) = &token {
            let _ = ctx
                .peer
                .notify_progress(progress(token.clone(), done, steps, format!("started: {steps} steps planned")))
                .await;
        }
        let mut cancelled = false;
        loop {
            tokio::select! {
                // Events first: a run that ended has sent all of its events, and each
                // step's report goes out before the run's end is returned.
                biased;
                event = next_event(&mut events) => {
                    let (Some(token), Some(Ok(event))) = (&token, event) else {
                        events = None; // at rest, or the runner is gone: the run's end says the rest
                        continue;
                    };
                    if let EventKind::StepFinished { step, outcome } = event.kind {
                        done += usize::from(matches!(outcome, StepOutcome::Output(_) | StepOutcome::Skipped(_)));
                        let message = step_message(step, &outcome, steps);
                        let _ = ctx.peer.notify_progress(progress(token.clone(), done, steps, message)).await;
                    }
                }
                ended = &mut run => return ended.map_err(|e| McpError::Protocol {
                    server: "portia".into(),
                    tool: "run".into(),
                    message: format!("the run ended abnormally: {e}"),
                })?,
                () = ctx.ct.cancelled(), if !cancelled => {
                    cancelled = true;
                    let _ = self.runner.cancel_workflow(id, "the MCP client cancelled the request").await;
                }
            }
        }
    }
}

/// The next event of `events`, or never when there is no stream (any more).
async fn next_event(events: &mut Option<EventStream>) -> Option<std::result::Result<WorkflowEvent, Missed>> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// How step `step` (from 0) of `steps` ended, in words.
fn step_message(step: usize, outcome: &StepOutcome, steps: usize) -> String {
    let step = step + 1;
    match outcome {
        StepOutcome::Output(_) => format!("step {step} of {steps} done"),
        StepOutcome::Clarifications(_) => format!("step {step} of {steps} waits for a person's answer"),
        StepOutcome::Failed(failure) => format!("step {step} of {steps} failed: {}", failure.message),
        StepOutcome::Skipped(reason) => format!("step {step} of {steps} skipped: {reason}"),
    }
}

/// `done` steps of `steps`, with `message`.
fn progress(token: ProgressToken, done: usize, steps: usize, message: String) -> ProgressNotificationParam {
    let mut progress = ProgressNotificationParam::new(token, done as f64);
    progress.total = Some(steps as f64);
    progress.message = Some(message);
    progress
}

fn parse<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T> {
    serde_json::from_value(args)
        .map_err(|e| McpError::Arguments { tool: tool.to_owned(), message: e.to_string() }.into())
}

fn parse_id<T: std::str::FromStr<Err = crate::ids::IdParseError>>(text: &str) -> Result<T> {
    Ok(text.parse()?)
}

/// What a client needs to go on: state, final output, and the questions to answer.
fn summary(workflow: &Workflow) -> Value {
    let questions: Vec<Value> = workflow
        .outstanding_clarifications()
        .map(|c| json!({"clarification_id": c.id.to_string(), "kind": c.kind, "question": c.user_guidance}))
        .collect();
    json!({
        "workflow_id": workflow.id().to_string(),
        "plan_id": workflow.plan_id().to_string(),
        "state": workflow.state().as_str(),
        "final_output": workflow.outputs().final_output,
        "outstanding_clarifications": questions,
        "failure": workflow.failure(),
    })
}

impl ServerHandler for PortiaMcpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("portia", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Plan and run multi-step tasks: run_query does both; when a workflow asks a question \
                 (state NEED_CLARIFICATION), answer it with resolve_clarification.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> std::result::Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(Self::tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> std::result::Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.unwrap_or_default());
        let result = match self.dispatch(&request.name, args, &context).await {
            Ok(value) => {
                let mut result = CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
                result.structured_content = Some(value);
                result
            }
            // An SDK error is a tool error the client's model can read and act on.
            Err(e) => {
                let mut result = CallToolResult::success(vec![ContentBlock::text(e.to_string())]);
                result.is_error = Some(true);
                result
            }
        };
        Ok(CallToolResponse::Complete(result))
    }
}
