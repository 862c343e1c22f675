//! Which sites a request may come from. A browser sends some requests to any server
//! without asking it first (a form's post, a `fetch` without headers), and a page
//! can have a name of its own resolve to 127.0.0.1 (DNS rebinding): without these
//! checks, any page a person opened could drive a server on their machine.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;

/// What [`guard`] lets through.
#[derive(Debug, Clone)]
pub(super) struct SiteRules {
    /// The origins allowed to call the server (`PORTIA_SERVER_CORS_ORIGINS`).
    pub(super) origins: Arc<[String]>,
    /// Whether the server has no tokens, so that anyone who reaches it may use it.
    pub(super) tokenless: bool,
}

/// Refuses, as 403, a request to a server without tokens under a name other than
/// a loopback one (`host_not_allowed`: a rebound name), and a request that changes
/// something (any method but GET, HEAD and OPTIONS) from a page of another origin
/// (`cross_origin`). The server's own origin is its `Host`, or the first
/// `X-Forwarded-Host` behind a proxy (a page cannot send that header without asking
/// first, which this server's CORS never allows). Requests without `Origin`
/// (command-line clients, other servers) pass the second check.
pub(super) async fn guard(State(rules): State<SiteRules>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = text(headers, HOST.as_str()).or_else(|| request.uri().authority().map(|a| a.as_str())).unwrap_or("");
    if rules.tokenless && !is_loopback(host) {
        let message = format!(
            "this server has no tokens, so it answers to loopback names only, not {host:?}: \
             set PORTIA_SERVER_TOKENS to serve it under other names"
        );
        return ApiError::new(StatusCode::FORBIDDEN, "host_not_allowed", message).into_response();
    }
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let forwarded = text(headers, "x-forwarded-host").and_then(|h| h.split(',').next()).unwrap_or("").trim();
    let origin = headers.get(ORIGIN).map(|v| v.to_str().unwrap_or("null"));
    match origin {
        Some(origin)
            if changes
                && !(same_origin(origin, host) || same_origin(origin, forwarded) || listed(origin, &rules.origins)) =>
        {
            let message = format!(
                "a page of {origin} may not change anything here: list its origin in \
                 PORTIA_SERVER_CORS_ORIGINS to let it"
            );
            ApiError::new(StatusCode::FORBIDDEN, "cross_origin", message).into_response()
        }
        _ => next.run(request).await,
    }
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether `authority` (`host[:port]`) names this machine: `localhost` or a
/// loopback address.
fn is_loopback(authority: &str) -> bool {
    let (name, _) = split_port(authority);
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `host[:port]` as its host (an IPv6 address without its brackets) and port.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (name, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (name, after.strip_prefix(':'));
    }
    match authority.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (authority, None),
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the host and port of
/// `authority`, a port left out being the origin's scheme's default.
fn same_origin(origin: &str, authority: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let ((name, port), (own_name, own_port)) = (split_port(rest), split_port(authority));
    !own_name.is_empty()
        && name.eq_ignore_ascii_case(own_name)
        && port.unwrap_or(default) == own_port.unwrap_or(default)
}

/// Whether `origin` is one of `origins`, as CORS compares them.
fn listed(origin: &str, origins: &[String]) -> bool {
    origins.iter().any(|listed| listed == origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_are_localhost_and_loopback_addresses_with_or_without_a_port() {
        for host in ["localhost", "LOCALHOST:8080", "127.0.0.1:3000", "127.1.2.3", "[::1]:8080", "[::1]"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["", "evil.example:8080", "localhost.evil.example", "10.0.0.1:80", "[::2]:80"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn an_origin_is_the_hosts_own_with_default_ports_filled_in() {
        assert!(same_origin("https://app.example", "app.example:443"));
        assert!(same_origin("http://App.Example:80", "app.example"));
        assert!(same_origin("http://[::1]:8080", "[::1]:8080"));
        assert!(!same_origin("https://app.example", "app.example:80"));
        assert!(!same_origin("http://127.0.0.1:8080", "127.0.0.1:8081"));
        assert!(!same_origin("null", "127.0.0.1:8080"));
        assert!(!same_origin("http://127.0.0.1:8080", ""));
    }
}
