//! The routes, the state every handler shares, and the layers around them.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method};
use axum::middleware;
use axum::routing::{get, post};
use tower_http::cors::CorsLayer;

use super::ServeOptions;
use super::api::{self, PlanQueries, StartTimes};
use super::auth::{self, Tokens};
use super::runs::BackgroundRuns;
use super::{aside, changes, follow, metrics, openapi, pages, site};
use crate::ids::WorkflowId;
use crate::runner::Runner;

/// What every handler shares.
#[derive(Debug, Clone)]
pub(super) struct AppState {
    pub(super) runner: Runner,
    pub(super) tokens: Tokens,
    /// Whether the server runs workers of its own (then new workflows are queued).
    pub(super) workers: bool,
    /// The tools the planner is offered when a request names none.
    pub(super) plan_tools: Arc<[String]>,
    pub(super) plan_queries: PlanQueries,
    pub(super) started: StartTimes,
    pub(super) metrics: metrics::MetricsCache,
    /// Where requests tell the streams of workflow changes what they created or deleted.
    pub(super) touched: changes::Touched,
    /// Turns `true` when the server stops: event streams end then.
    pub(super) stopping: tokio::sync::watch::Receiver<bool>,
    /// The runs started in the server's own tasks, which shutdown waits for or stops.
    pub(super) runs: BackgroundRuns,
}

impl AppState {
    /// Runs workflow `id` in a task of the server's, tracked for shutdown; its
    /// lease is taken first, so a run already under way is refused at once.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`](crate::Error::AlreadyRunning) while a run holds
    /// the workflow's lease, here or in any process; a storage error.
    pub(super) async fn start_run(&self, id: WorkflowId) -> crate::Result<()> {
        self.runs.start(&self.runner, id).await
    }

    /// Runs workflow `id` on, as [`Self::start_run`] does, after a request that
    /// succeeded anyway (an answer, a new workflow): what keeps it from running is
    /// logged, not answered, and the stored workflow says where it stands.
    pub(super) async fn run_on(&self, id: WorkflowId) {
        match self.start_run(id).await {
            Ok(()) => {}
            // A worker or another request got to it first: it runs there.
            Err(crate::Error::AlreadyRunning { .. }) => tracing::debug!(workflow = %id, "already running"),
            Err(e) => tracing::warn!(workflow = %id, error = %e, "cannot run it"),
        }
    }
}

/// Every route, behind the token check (but the health checks), with the body limit
/// and, when configured, CORS.
pub(super) fn build(
    runner: Runner,
    options: &ServeOptions,
    stopping: tokio::sync::watch::Receiver<bool>,
    runs: BackgroundRuns,
) -> Router {
    let plan_tools: Arc<[String]> = match &options.plan_tools {
        Some(ids) => ids.clone().into(),
        None => runner.tools().get_tools().iter().map(|t| t.spec().id).collect(),
    };
    let state = AppState {
        runner,
        tokens: options.tokens.clone(),
        workers: options.workers > 0,
        plan_tools,
        plan_queries: PlanQueries::default(),
        started: StartTimes::default(),
        metrics: metrics::MetricsCache::default(),
        touched: changes::touched(),
        stopping,
        runs,
    };
    let site_rules =
        site::SiteRules { origins: options.cors_origins.clone().into(), tokenless: options.tokens.is_empty() };
    let guarded = Router::new()
        .route("/v1/plans", post(api::create_plan))
        .route("/v1/workflows", post(api::create_workflow).get(api::list_workflows))
        .route("/v1/events", get(changes::events))
        .route("/v1/workflows/{id}", get(api::get_workflow).delete(api::delete_workflow))
        .route("/v1/workflows/{id}/plan", get(api::get_workflow_plan))
        .route("/v1/workflows/{id}/tool-calls", get(api::get_tool_calls))
        .route("/v1/workflows/{id}/events", get(follow::events))
        .route("/v1/agui", post(follow::run_agent))
        .route("/v1/workflows/{id}/clarifications/{clarification_id}", post(api::answer))
        .route("/v1/workflows/{id}/cancel", post(api::cancel))
        .route("/v1/workflows/{id}/resume", post(api::resume))
        .route("/v1/workflows/{id}/retry", post(api::retry))
        .route("/v1/workflows/{id}/put-back", post(aside::put_back))
        .route("/v1/set-aside", get(aside::list))
        .route("/v1/tools", get(api::tools))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::metrics))
        .merge(pages::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token))
        .route_layer(middleware::from_fn_with_state(site_rules, site::guard));
    let app = Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .method_not_allowed_fallback(method_not_allowed)
        .merge(guarded)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(options.body_limit))
        .with_state(state);
    match cors(&options.cors_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

async fn not_found() -> super::errors::ApiError {
    super::errors::ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// A route asked with a method it does not take; the router adds the `Allow` header.
async fn method_not_allowed() -> super::errors::ApiError {
    super::errors::ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method: the `Allow` header lists those it takes",
    )
}

/// CORS for the configured origins only; none configured, no CORS header is sent.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            // Last-Event-ID: a page streaming with `fetch` (EventSource cannot send a
            // token) resumes a dropped stream with it.
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderName::from_static("last-event-id"),
            ]),
    )
}
