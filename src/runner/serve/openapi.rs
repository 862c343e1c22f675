//! The OpenAPI 3.1 document at `/v1/openapi.json`, derived from the handlers.

use axum::Json;
use utoipa::OpenApi;

use super::errors::{ErrorBody, ErrorDetail};
use super::{api, aside, changes, follow, metrics};

#[derive(OpenApi)]
#[openapi(
    info(title = "portia", description = "Plan-then-execute LLM agents over HTTP: plans, workflows, answers, events."),
    paths(
        api::create_plan,
        api::create_workflow,
        api::list_workflows,
        changes::events,
        api::get_workflow,
        api::get_workflow_plan,
        api::get_tool_calls,
        follow::events,
        follow::run_agent,
        api::answer,
        api::cancel,
        api::resume,
        api::retry,
        aside::list,
        aside::put_back,
        api::delete_workflow,
        api::tools,
        api::healthz,
        api::readyz,
        metrics::metrics,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Says that every operation takes a bearer token when the server has tokens.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, built once per request (it is small and cheap).
pub(super) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
