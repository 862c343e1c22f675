//! The web inspector: static pages built into the binary.

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};

use super::router::AppState;

/// The inspector's routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
}

/// Whether `path` is a page (a person's browser), rather than the API.
pub(super) fn is_page(path: &str) -> bool {
    !path.starts_with("/v1/") && path != "/metrics"
}

/// The token was right: keep it in a cookie for this site only, and show the page
/// without it in the address.
pub(super) fn signed_in(uri: &Uri, token: &str) -> Response {
    let cookie = format!("{}={token}; Path=/; HttpOnly; SameSite=Strict", super::auth::TOKEN_COOKIE);
    (StatusCode::SEE_OTHER, [(header::LOCATION, uri.path().to_owned()), (header::SET_COOKIE, cookie)]).into_response()
}

/// A page asking for the token.
pub(super) fn sign_in_page() -> Response {
    (StatusCode::UNAUTHORIZED, Html(include_str!("assets/sign-in.html"))).into_response()
}
