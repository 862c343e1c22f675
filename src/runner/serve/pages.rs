//! The web inspector: static pages built into the binary.

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};

use super::auth::Caller;
use super::router::AppState;

/// The inspector's routes: two pages and their assets.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Html(include_str!("assets/index.html")) }))
        .route("/workflows/{id}", get(workflow_page))
        .route("/assets/app.css", get(|| async { asset("text/css", include_str!("assets/app.css")) }))
        .route("/assets/app.js", get(|| async { asset("text/javascript", include_str!("assets/app.js")) }))
        .route("/assets/index.js", get(|| async { asset("text/javascript", include_str!("assets/index.js")) }))
        .route("/assets/workflow.js", get(|| async { asset("text/javascript", include_str!("assets/workflow.js")) }))
        .route("/assets/graph.js", get(|| async { asset("text/javascript", include_str!("assets/graph.js")) }))
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], text).into_response()
}

/// A workflow's page, or 404 when the caller may not see it (or it is not there).
async fn workflow_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match state.visible(&caller, &id).await {
        Ok(_) => Html(include_str!("assets/workflow.html")).into_response(),
        Err(_) => (StatusCode::NOT_FOUND, Html(include_str!("assets/not-found.html"))).into_response(),
    }
}

/// Whether `path` is a page (a person's browser), rather than the API.
pub(super) fn is_page(path: &str) -> bool {
    path == "/" || path.starts_with("/workflows/")
}

/// The token was right: keep it in a cookie for this site only, and show the page
/// without it in the address.
pub(super) fn signed_in(uri: &Uri, token: &str) -> Response {
    let cookie = format!("{}={token}; Path=/; HttpOnly; SameSite=Strict", super::auth::TOKEN_COOKIE);
    (StatusCode::SEE_OTHER, [(header::LOCATION, uri.path().to_owned()), (header::SET_COOKIE, cookie)]).into_response()
}

/// A page asking for the token.
pub(super) fn sign_in_page() -> Response {
    let challenge = [(axum::http::header::WWW_AUTHENTICATE, "Bearer")];
    (StatusCode::UNAUTHORIZED, challenge, Html(include_str!("assets/sign-in.html"))).into_response()
}
