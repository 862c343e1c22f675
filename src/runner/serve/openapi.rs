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

/// Says that every operation but the health checks takes a bearer token when the
/// server has tokens, and may answer 401 without one: generated clients send it;
/// and that those that change something answer 403 to a page of another origin.
struct BearerAuth;

/// The operations open to anyone, tokens or not.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
        let unauthorized = ResponseBuilder::new()
            .description("No token, or not one of the server's (`unauthorized`)")
            .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))))
            .build();
        let cross_origin = ResponseBuilder::new()
            .description("Asked by a web page of an origin neither this server's nor listed for CORS (`cross_origin`)")
            .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))))
            .build();
        for (path, item) in &mut openapi.paths.paths {
            if OPEN_PATHS.contains(&path.as_str()) {
                for operation in [&mut item.get, &mut item.post, &mut item.delete].into_iter().flatten() {
                    // An empty requirement: no token needed.
                    operation.security = Some(vec![SecurityRequirement::default()]);
                }
                continue;
            }
            for operation in [&mut item.get, &mut item.post, &mut item.delete].into_iter().flatten() {
                operation.responses.responses.entry("401".to_owned()).or_insert_with(|| unauthorized.clone().into());
            }
            for operation in [&mut item.post, &mut item.delete].into_iter().flatten() {
                operation.responses.responses.entry("403".to_owned()).or_insert_with(|| cross_origin.clone().into());
            }
        }
    }
}

/// The document, built once per request (it is small and cheap).
pub(super) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
