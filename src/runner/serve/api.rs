//! The JSON API under `/v1`: plans, workflows, answers, tools, health.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::errors::{ApiError, Body, ErrorBody, OptionalBody, PathParams};
use super::router::AppState;
use crate::Error;
use crate::execution_context::ExecutionContext;
use crate::ids::{ClarificationId, PlanId, WorkflowId};
use crate::plan::Plan;
use crate::storage::WorkflowQuery;
use crate::workflow::{Workflow, WorkflowState};

type ApiResult<T> = Result<T, ApiError>;

/// A query to plan.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreatePlan {
    /// What to do, in words.
    query: String,
    /// Offer the planner only these tools (default: the server's planning tools).
    #[serde(default)]
    tools: Option<Vec<String>>,
    /// Who the plan is for (a token bound to an end user sets it).
    #[serde(default)]
    end_user_id: Option<String>,
}

/// A workflow to start: from exactly one of `query`, `plan` or `plan_id`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateWorkflow {
    /// A query to plan first.
    #[serde(default)]
    query: Option<String>,
    /// A plan, as `portia plan` prints it; a key no field takes is refused.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    plan: Option<Value>,
    /// A stored plan.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    plan_id: Option<PlanId>,
    /// For a query: offer the planner only these tools.
    #[serde(default)]
    tools: Option<Vec<String>>,
    /// Values for the plan's inputs, by name (`{"ticket": "..."}`); each input the
    /// plan declares without a default must be given.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    inputs: Option<serde_json::Map<String, serde_json::Value>>,
    /// Who the workflow runs for (a token bound to an end user sets it).
    #[serde(default)]
    end_user_id: Option<String>,
    /// `run` in the server now, or `queue` for the workers; by default the server
    /// queues when it has workers of its own and runs otherwise.
    #[serde(default)]
    mode: Option<StartMode>,
}

/// How a new workflow starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum StartMode {
    /// In a task of the server's, at once.
    Run,
    /// In the store's queue, for a worker (in this process or any other).
    Queue,
}

/// Which workflows to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Only workflows in this state (`complete`, `need_clarification`, ...; any case).
    state: Option<String>,
    /// Only the workflows of this end user.
    end_user_id: Option<String>,
    /// The page, from 1 (0 is refused).
    #[param(minimum = 1)]
    page: Option<usize>,
    /// Workflows per page, from 1 (0 is refused); more than 500 is 500; 50 by default.
    #[param(minimum = 1)]
    page_size: Option<usize>,
}

/// One page of workflows.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkflowList {
    results: Vec<WorkflowSummary>,
    /// How many workflows match in all.
    count: usize,
    total_pages: usize,
    current_page: usize,
    /// How many stored entries could not be read.
    unreadable: usize,
}

/// A workflow in a list.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkflowSummary {
    #[schema(value_type = String)]
    id: WorkflowId,
    #[schema(value_type = String)]
    state: WorkflowState,
    /// The plan's query.
    query: String,
    end_user_id: Option<String>,
    /// What it has cost so far, in US dollars.
    cost_usd: f64,
    /// When its first event was stored (RFC 3339), if it has one.
    started_at: Option<String>,
    /// How many clarifications wait for an answer.
    open_clarifications: usize,
}

/// An answer to a clarification.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Answer {
    /// The answer: any JSON value the clarification's kind accepts.
    response: Value,
    /// Run the workflow on once no clarification is left open.
    #[serde(default)]
    resume: bool,
}

/// Why a workflow is cancelled.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Cancel {
    /// Kept in the workflow's failure.
    #[serde(default)]
    reason: Option<String>,
}

/// How a workflow asked for as `asked` starts: by default, queued when the server
/// has workers of its own, else run in the server.
fn start_mode(state: &AppState, asked: Option<StartMode>) -> StartMode {
    asked.unwrap_or(if state.workers { StartMode::Queue } else { StartMode::Run })
}

/// How the retry of a failed workflow starts.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Retry {
    /// `run` in the server now, or `queue` for the workers; by default, as for a
    /// new workflow, the server queues when it has workers of its own and runs
    /// otherwise.
    #[serde(default)]
    mode: Option<StartMode>,
}

/// Plans a query and stores the plan.
#[utoipa::path(post, path = "/v1/plans", request_body = CreatePlan, tag = "plans",
    responses((status = 201, description = "The plan", body = Object), (status = "4XX", body = ErrorBody)))]
pub(super) async fn create_plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<CreatePlan>,
) -> ApiResult<(StatusCode, Json<Plan>)> {
    let context = context_for(&caller, request.end_user_id)?;
    let tools = request.tools.unwrap_or_else(|| state.plan_tools.to_vec());
    let plan = state.runner.generate_plan(request.query).tools(tools).execution_context(context).await?;
    Ok((StatusCode::CREATED, Json(plan)))
}

/// Starts a workflow: plans a query, or takes a plan or a stored plan's id; runs it
/// in the server or queues it for the workers.
#[utoipa::path(post, path = "/v1/workflows", request_body = CreateWorkflow, tag = "workflows",
    responses((status = 202, description = "The workflow, as stored when it started", body = Object),
              (status = "4XX", body = ErrorBody)))]
pub(super) async fn create_workflow(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<CreateWorkflow>,
) -> ApiResult<(StatusCode, Json<Workflow>)> {
    let context = context_for(&caller, request.end_user_id)?;
    let runner = &state.runner;
    // A plan written for this request is paid for by its workflow; a given one is not.
    let planned_here = request.query.is_some();
    let plan = match (request.query, request.plan, request.plan_id) {
        (Some(query), None, None) => {
            let tools = request.tools.unwrap_or_else(|| state.plan_tools.to_vec());
            runner.generate_plan(query).tools(tools).execution_context(context.clone()).await?
        }
        (None, Some(plan), None) => state.posted_plan(&caller, &context, read_plan(plan)?).await?,
        (None, None, Some(id)) => state.visible_plan(&caller, id).await?,
        _ => return Err(ApiError::bad_request("give exactly one of `query`, `plan` or `plan_id`")),
    };
    let mode = start_mode(&state, request.mode);
    let inputs = request.inputs.unwrap_or_default();
    let workflow = match mode {
        StartMode::Queue => {
            let submit = runner.submit_plan(&plan).execution_context(context).inputs(inputs);
            let id = if planned_here { submit.count_planning() } else { submit }.await?;
            runner.get_workflow(id).await?
        }
        StartMode::Run => {
            let create = runner.create_workflow(&plan).execution_context(context).inputs(inputs);
            let workflow = if planned_here { create.count_planning() } else { create }.await?;
            state.run_on(workflow.id()).await;
            workflow
        }
    };
    let _ = state.touched.send(workflow.id());
    Ok((StatusCode::ACCEPTED, Json(workflow)))
}

/// Lists workflows, filtered by state and end user, a page at a time.
#[utoipa::path(get, path = "/v1/workflows", params(ListParams), tag = "workflows",
    responses((status = 200, body = WorkflowList), (status = "4XX", body = ErrorBody)))]
pub(super) async fn list_workflows(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<WorkflowList>> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wanted = match (&caller.end_user_id, params.end_user_id) {
        (Some(mine), Some(asked)) if *mine != asked => return Err(forbidden(mine)),
        (Some(mine), _) => Some(mine.clone()),
        (None, asked) => asked,
    };
    let workflow_state = params.state.as_deref().map(parse_state).transpose()?;
    let page = params.page.unwrap_or(1);
    let page_size = params.page_size.unwrap_or(50).min(500);
    if page == 0 || page_size == 0 {
        return Err(ApiError::bad_request("`page` counts from 1, and `page_size` is at least 1"));
    }
    let query = WorkflowQuery::default().state(workflow_state).end_user(wanted).page(page).page_size(page_size);
    let listed = state.runner.list_workflows(&query).await?;
    let (workflows, count, unreadable) = (listed.results, listed.count, listed.unreadable.len());
    let mut results = Vec::with_capacity(workflows.len());
    for workflow in workflows {
        results.push(state.summary(workflow).await);
    }
    let total_pages = count.div_ceil(page_size).max(1);
    Ok(Json(WorkflowList { results, count, total_pages, current_page: page, unreadable }))
}

/// A stored workflow.
#[utoipa::path(get, path = "/v1/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id")),
    responses((status = 200, description = "The workflow", body = Object), (status = 400, description = "Not a workflow id (`invalid_id`)", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_workflow(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<Workflow>> {
    Ok(Json(state.visible(&caller, &id).await?))
}

/// The plan a workflow runs.
#[utoipa::path(get, path = "/v1/workflows/{id}/plan", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id")),
    responses((status = 200, description = "The plan", body = Object), (status = 400, description = "Not a workflow id (`invalid_id`)", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_workflow_plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<Plan>> {
    let workflow = state.visible(&caller, &id).await?;
    let plan = state.runner.get_plan(workflow.plan_id()).await?;
    // A plan stored before plans recorded their end user is shown through the
    // workflows the caller sees; one recorded for someone else is not.
    match &plan.plan_context.end_user_id {
        Some(owner) if !caller.sees(Some(owner)) => Err(Error::PlanNotFound(plan.id).into()),
        _ => Ok(Json(plan)),
    }
}

/// A workflow's journaled tool calls: arguments, outcome, latency, attempt.
#[utoipa::path(get, path = "/v1/workflows/{id}/tool-calls", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id")),
    responses((status = 200, description = "The calls, in key order", body = [Object]), (status = 400, description = "Not a workflow id (`invalid_id`)", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_tool_calls(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<Vec<crate::storage::ToolCallRecord>>> {
    let workflow = state.visible(&caller, &id).await?;
    Ok(Json(state.runner.tool_calls(workflow.id()).await?))
}

/// Answers a clarification, checked as `Runner::resolve_clarification` checks it;
/// with `resume`, runs the workflow on once nothing is left open.
#[utoipa::path(post, path = "/v1/workflows/{id}/clarifications/{clarification_id}", request_body = Answer, tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id"), ("clarification_id" = String, Path, description = "The clarification's id")),
    responses((status = 200, description = "The workflow", body = Object), (status = "4XX", body = ErrorBody)))]
pub(super) async fn answer(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams((id, clarification_id)): PathParams<(String, String)>,
    Body(request): Body<Answer>,
) -> ApiResult<Json<Workflow>> {
    let workflow = state.visible(&caller, &id).await?;
    let clarification_id: ClarificationId = clarification_id.parse().map_err(Error::from)?;
    let Some(clarification) = workflow.outputs().clarifications.iter().find(|c| c.id == clarification_id) else {
        // The command line's wording for the same mistake.
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "clarification_not_found",
            format!("workflow {} has no clarification {clarification_id}", workflow.id()),
        ));
    };
    let workflow = state.runner.resolve_clarification(clarification, request.response).await?;
    if request.resume && workflow.state() == WorkflowState::ReadyToResume {
        state.run_on(workflow.id()).await;
    }
    Ok(Json(workflow))
}

/// Cancels a workflow that is not finished.
#[utoipa::path(post, path = "/v1/workflows/{id}/cancel", request_body(content = Cancel, description = "Optional"), tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id")),
    responses((status = 200, description = "The workflow", body = Object), (status = "4XX", body = ErrorBody)))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<String>,
    // The body is optional: none, or `{"reason": ...}`.
    OptionalBody(cancel): OptionalBody<Cancel>,
) -> ApiResult<Json<Workflow>> {
    let workflow = state.visible(&caller, &id).await?;
    let reason = cancel.reason.unwrap_or_else(|| "cancelled from the web".to_owned());
    Ok(Json(state.runner.cancel_workflow(workflow.id(), &reason).await?))
}

/// Runs a workflow on: one READY_TO_RESUME, NOT_STARTED, or whose run died. Its
/// lease is taken before the answer, so a run already under way (here or in any
/// process) is 409 `already_running`, not accepted and dropped.
#[utoipa::path(post, path = "/v1/workflows/{id}/resume", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id")),
    responses((status = 202, description = "The workflow, as stored before it runs on", body = Object), (status = "4XX", body = ErrorBody)))]
pub(super) async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<String>,
) -> ApiResult<(StatusCode, Json<Workflow>)> {
    let workflow = state.visible(&caller, &id).await?;
    if workflow.state().is_terminal() {
        return Err(workflow.invalid_state("resume it").into());
    }
    let open = workflow.outstanding_clarifications().count();
    if open > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "clarifications_open",
            format!("workflow {} is waiting for {open} clarification(s); answer them first", workflow.id()),
        ));
    }
    state.start_run(workflow.id()).await?;
    Ok((StatusCode::ACCEPTED, Json(workflow)))
}

/// Takes a FAILED workflow up again as a new workflow, which keeps what the failed
/// one's finished steps did, and runs it or queues it for the workers (see
/// [`Runner::retry_workflow`](crate::Runner::retry_workflow)). Retried before,
/// the answer is that retry as stored: one that has ended is not run again, one
/// queued is not queued twice, and one made to run here whose run died is run on
/// (`run`) or queued (`queue`).
#[utoipa::path(post, path = "/v1/workflows/{id}/retry", request_body(content = Retry, description = "Optional"), tag = "workflows",
    params(("id" = String, Path, description = "The FAILED workflow's id")),
    responses((status = 202, description = "The new workflow, as stored before it runs", body = Object), (status = "4XX", body = ErrorBody)))]
pub(super) async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<String>,
    OptionalBody(request): OptionalBody<Retry>,
) -> ApiResult<(StatusCode, Json<Workflow>)> {
    let failed = state.visible(&caller, &id).await?;
    let retry = match start_mode(&state, request.mode) {
        StartMode::Queue => state.runner.submit_retry(failed.id()).await?,
        StartMode::Run => {
            let retry = state.runner.retry_workflow(failed.id()).await?;
            // Retried before, that retry may have ended: it is the answer, and nothing runs.
            if !retry.state().is_terminal() {
                state.run_on(retry.id()).await;
            }
            retry
        }
    };
    let _ = state.touched.send(retry.id());
    Ok((StatusCode::ACCEPTED, Json(retry)))
}

/// A posted plan, read strictly: JSON of the wrong shape is a 400 like any body's;
/// a key no field takes, or a step's empty `steps` or `tools` list, a 422
/// `invalid_plan` naming it.
fn read_plan(plan: Value) -> ApiResult<Plan> {
    Plan::from_value(plan).map_err(|e| match e {
        crate::Error::InvalidPlan(problems) => match &problems[..] {
            [crate::plan::PlanProblem::NotAPlan { reason }] => {
                ApiError::bad_request(format!("`plan`: {}", super::errors::in_json_terms(reason)))
            }
            _ => crate::Error::InvalidPlan(problems).into(),
        },
        other => other.into(),
    })
}

/// Deletes a workflow with its journal, whatever its state, unless a run holds it:
/// deleted under a run, the run would die at its next write, and its event streams
/// would end with the run still open. Cancel it first, or wait for it to rest.
#[utoipa::path(delete, path = "/v1/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id")),
    responses((status = 204, description = "Deleted"), (status = 400, description = "Not a workflow id (`invalid_id`)", body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "A run holds it (`already_running`)", body = ErrorBody)))]
pub(super) async fn delete_workflow(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<String>,
) -> ApiResult<StatusCode> {
    let workflow = state.visible(&caller, &id).await?;
    if let Some(holder) = state.runner.storage().lease_holder(workflow.id()).await? {
        let (owner, until) = (holder.owner, holder.until);
        return Err(crate::Error::AlreadyRunning { workflow_id: workflow.id(), owner, until }.into());
    }
    state.runner.delete_workflow(workflow.id()).await?;
    let _ = state.touched.send(workflow.id());
    Ok(StatusCode::NO_CONTENT)
}

/// The tools: ids, descriptions, argument schemas and flags.
#[utoipa::path(get, path = "/v1/tools", tag = "tools",
    responses((status = 200, description = "The tool specs", body = [Object])))]
pub(super) async fn tools(State(state): State<AppState>) -> Json<Vec<crate::tool::ToolSpec>> {
    Json(state.runner.tools().get_tools().iter().map(|tool| tool.spec()).collect())
}

/// Whether the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Up")))]
pub(super) async fn healthz() -> Json<Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Whether the store answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready"), (status = 503, description = "The store does not answer", body = ErrorBody)))]
pub(super) async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let query = WorkflowQuery::default().page_size(1);
    state.runner.list_workflows(&query).await.map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("the store does not answer: {e}"))
    })?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

/// The execution context of something a caller starts: a bound token's end user.
fn context_for(caller: &Caller, asked: Option<String>) -> ApiResult<ExecutionContext> {
    let user = match (&caller.end_user_id, asked) {
        (Some(mine), Some(asked)) if *mine != asked => return Err(forbidden(mine)),
        (Some(mine), _) => Some(mine.clone()),
        (None, asked) => asked,
    };
    Ok(user.map(ExecutionContext::for_end_user).unwrap_or_default())
}

/// A bound token's refusal to act for another end user.
fn forbidden(end_user: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("this token is bound to end user {end_user:?} and acts for no other"),
    )
}

/// A state in any case, with `-` or `_`, as the command line reads it.
fn parse_state(text: &str) -> ApiResult<WorkflowState> {
    let name = text.trim().to_uppercase().replace('-', "_");
    serde_json::from_value(Value::String(name)).map_err(|_| {
        ApiError::bad_request(
            "valid states: not_started, in_progress, need_clarification, ready_to_resume, complete, failed",
        )
    })
}

/// The queries of plans already read: plans never change.
pub(super) type PlanQueries = std::sync::Arc<std::sync::Mutex<HashMap<PlanId, String>>>;

/// When each workflow listed so far started.
pub(super) type StartTimes = std::sync::Arc<std::sync::Mutex<HashMap<WorkflowId, String>>>;

impl AppState {
    /// Workflow `id` if the caller may see it; not found otherwise, as if it were not there.
    pub(super) async fn visible(&self, caller: &Caller, id: &str) -> ApiResult<Workflow> {
        let id: WorkflowId = id.parse().map_err(Error::from)?;
        let workflow = self.runner.get_workflow(id).await?;
        if caller.sees(workflow.execution_context().end_user_id.as_deref()) {
            Ok(workflow)
        } else {
            Err(Error::WorkflowNotFound(id).into())
        }
    }

    /// Stored plan `id` if the caller may see it (the rule for workflows: a token
    /// bound to an end user sees that user's plans only); not found otherwise.
    pub(super) async fn visible_plan(&self, caller: &Caller, id: PlanId) -> ApiResult<Plan> {
        let plan = self.runner.get_plan(id).await?;
        if caller.sees(plan.plan_context.end_user_id.as_deref()) {
            Ok(plan)
        } else {
            Err(Error::PlanNotFound(id).into())
        }
    }

    /// A plan posted whole, made the caller's: it records the workflow's end user
    /// and, from a bound token, may name no other. A stored plan keeps its first
    /// version, so one posted under a stored plan's id runs the stored one: that is
    /// a use by id, allowed only if the caller may see the stored plan.
    async fn posted_plan(&self, caller: &Caller, context: &ExecutionContext, mut plan: Plan) -> ApiResult<Plan> {
        if let (Some(mine), Some(named)) = (&caller.end_user_id, &plan.plan_context.end_user_id)
            && mine != named
        {
            return Err(forbidden(mine));
        }
        if plan.plan_context.end_user_id.is_none() {
            plan.plan_context.end_user_id.clone_from(&context.end_user_id);
        }
        match self.runner.get_plan(plan.id).await {
            Ok(stored) if !caller.sees(stored.plan_context.end_user_id.as_deref()) => {
                Err(Error::PlanNotFound(plan.id).into())
            }
            Ok(_) | Err(Error::PlanNotFound(_)) => Ok(plan),
            Err(e) => Err(e.into()),
        }
    }

    /// Every readable workflow in `state` (or any), with how many could not be read.
    pub(super) async fn all_workflows(&self, state: Option<WorkflowState>) -> crate::Result<(Vec<Workflow>, usize)> {
        let (mut all, mut unreadable) = (Vec::new(), 0);
        let mut page = 1;
        loop {
            let listed =
                self.runner.list_workflows(&WorkflowQuery::default().state(state).page(page).page_size(500)).await?;
            all.extend(listed.results);
            unreadable += listed.unreadable.len();
            if listed.current_page >= listed.total_pages {
                return Ok((all, unreadable));
            }
            page += 1;
        }
    }

    /// How a list shows `workflow`.
    pub(super) async fn summary(&self, workflow: Workflow) -> WorkflowSummary {
        let query = self.plan_query(workflow.plan_id()).await;
        let started_at = self.started_at(workflow.id()).await;
        WorkflowSummary {
            id: workflow.id(),
            state: workflow.state(),
            query,
            end_user_id: workflow.execution_context().end_user_id.clone(),
            cost_usd: workflow.usage().cost_usd,
            started_at,
            open_clarifications: workflow.outstanding_clarifications().count(),
        }
    }

    /// When a workflow's first event was stored: read once, as it never changes.
    async fn started_at(&self, id: WorkflowId) -> Option<String> {
        if let Some(at) = self.started.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id) {
            return Some(at.clone());
        }
        let events = self.runner.storage().events(id, 0).await.ok()?;
        let at = events.first()?.event.at.to_rfc3339();
        self.started.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, at.clone());
        Some(at)
    }

    async fn plan_query(&self, id: PlanId) -> String {
        if let Some(query) = self.plan_queries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id) {
            return query.clone();
        }
        let Ok(plan) = self.runner.get_plan(id).await else { return String::new() };
        let query = plan.plan_context.query;
        self.plan_queries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, query.clone());
        query
    }
}
