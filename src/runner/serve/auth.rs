//! Bearer tokens: kept as SHA-256 digests, each possibly bound to one end user.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::errors::ApiError;
use super::router::AppState;
use crate::secret::Secret;
use crate::{Error, Result};

/// The cookie the web inspector keeps its token in.
pub(super) const TOKEN_COOKIE: &str = "portia_token";

/// One bearer token, optionally bound to an end user.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerToken {
    /// The token as a client sends it.
    pub token: Secret,
    /// The only end user whose workflows this token sees and starts, if bound.
    pub end_user_id: Option<String>,
}

impl ServerToken {
    /// A token that sees every workflow.
    pub fn new(token: impl Into<String>) -> Self {
        Self { token: Secret::new(token), end_user_id: None }
    }

    /// A token that sees, starts and answers the workflows of `end_user_id` only.
    pub fn for_end_user(token: impl Into<String>, end_user_id: impl Into<String>) -> Self {
        Self { token: Secret::new(token), end_user_id: Some(end_user_id.into()) }
    }
}

/// The tokens a server accepts, held as SHA-256 digests: the tokens themselves are
/// not kept in memory once given, and `Debug` shows how many there are, not them.
#[derive(Clone, Default)]
pub struct Tokens(Arc<HashMap<[u8; 32], Option<String>>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} set)", self.0.len())
    }
}

impl Tokens {
    /// Accepts these tokens.
    pub fn new(tokens: impl IntoIterator<Item = ServerToken>) -> Self {
        Self(Arc::new(tokens.into_iter().map(|t| (digest(t.token.expose()), t.end_user_id)).collect()))
    }

    /// Reads `TOKEN` or `END_USER:TOKEN` entries, comma-separated.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `PORTIA_SERVER_TOKENS` for an empty token or end user.
    pub fn parse(text: &str) -> Result<Self> {
        let mut tokens = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let token = match entry.split_once(':') {
                Some((user, token)) if !user.trim().is_empty() && !token.trim().is_empty() => {
                    ServerToken::for_end_user(token.trim(), user.trim())
                }
                Some(_) => {
                    return Err(Error::InvalidConfig {
                        setting: "PORTIA_SERVER_TOKENS".to_owned(),
                        message: "an entry END_USER:TOKEN has an empty end user or token".to_owned(),
                    });
                }
                None => ServerToken::new(entry),
            };
            tokens.push(token);
        }
        Ok(Self::new(tokens))
    }

    /// Whether no token is set (then none is asked for).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Who presents `token`: `None` for an unknown token.
    fn caller(&self, token: &str) -> Option<Caller> {
        self.0.get(&digest(token)).map(|end_user_id| Caller { end_user_id: end_user_id.clone() })
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Who makes a request: an end user, when the token is bound to one.
#[derive(Debug, Clone, Default)]
pub(super) struct Caller {
    pub(super) end_user_id: Option<String>,
}

impl Caller {
    /// Whether this caller may see a workflow of `end_user_id`.
    pub(super) fn sees(&self, end_user_id: Option<&str>) -> bool {
        self.end_user_id.as_deref().is_none_or(|mine| end_user_id == Some(mine))
    }
}

/// The token a request presents: `Authorization: Bearer`, else the inspector's cookie.
pub(super) fn presented(request: &Request) -> Option<String> {
    let headers = request.headers();
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        // The scheme's name is case-insensitive (RFC 7235).
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned());
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('=').map(str::to_owned))
}

/// Lets a request through with its [`Caller`] when no tokens are set or it presents
/// a known one; answers 401 otherwise (a page asking for the token, for a page).
pub(super) async fn require_token(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if state.tokens.is_empty() {
        request.extensions_mut().insert(Caller::default());
        return next.run(request).await;
    }
    let page = super::pages::is_page(request.uri().path());
    // A token in a page's address signs in (again, perhaps as someone else).
    if let Some(token) = query_token(&request).filter(|_| page) {
        return match state.tokens.caller(&token) {
            Some(_) => super::pages::signed_in(request.uri(), &token),
            None => super::pages::sign_in_page(),
        };
    }
    match presented(&request).and_then(|token| state.tokens.caller(&token)) {
        Some(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None if page => super::pages::sign_in_page(),
        None => ApiError::unauthorized().into_response(),
    }
}

/// A `token` in a page's query string: how a person signs in to the inspector.
fn query_token(request: &Request) -> Option<String> {
    let Query(mut pairs) = Query::<HashMap<String, String>>::try_from_uri(request.uri()).ok()?;
    pairs.remove("token")
}
