//! Errors as JSON: `{"error": {"code", "message"}}`, worded as the command line words them.

use axum::Json;
use axum::extract::FromRequest;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::Error;
use crate::error::with_causes;

/// An error answer.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ErrorDetail {
    /// A stable, machine-readable name, such as `workflow_not_found`.
    code: &'static str,
    /// One line saying what was wrong and how to fix it, as `portia` prints it.
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The request's path is not one the route takes (not UTF-8, say).
    pub(super) fn invalid_path(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_id", message)
    }

    pub(super) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs a bearer token: send `Authorization: Bearer TOKEN` with one of PORTIA_SERVER_TOKENS",
        )
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let (status, code) = match &error {
            Error::WorkflowNotFound(_) => (StatusCode::NOT_FOUND, "workflow_not_found"),
            Error::PlanNotFound(_) => (StatusCode::NOT_FOUND, "plan_not_found"),
            Error::PlanIdTaken(_) => (StatusCode::CONFLICT, "plan_id_taken"),
            Error::ClarificationNotFound { .. } => (StatusCode::NOT_FOUND, "clarification_not_found"),
            Error::InvalidPlan(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_plan"),
            Error::Planning { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "planning_failed"),
            Error::InvalidClarificationResponse { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_clarification_response")
            }
            Error::ToolNotFound(_) => (StatusCode::UNPROCESSABLE_ENTITY, "tool_not_found"),
            Error::InvalidId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
            Error::EmptyQuery => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::PlanInputs { .. } => (StatusCode::BAD_REQUEST, "invalid_inputs"),
            Error::InvalidWorkflowState { .. } => (StatusCode::CONFLICT, "invalid_workflow_state"),
            Error::AlreadyRunning { .. } => (StatusCode::CONFLICT, "already_running"),
            Error::MissingApiKey { .. } | Error::InvalidConfig { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "not_configured")
            }
            Error::Llm(_) => (StatusCode::BAD_GATEWAY, "llm_failed"),
            Error::StoreFileChanged { .. } => (StatusCode::SERVICE_UNAVAILABLE, "store_file_changed"),
            Error::Unreadable { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "unreadable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, with_causes(&error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, error = %self.message, "request failed");
        }
        let challenge = self.status == StatusCode::UNAUTHORIZED;
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if challenge {
            // How to authenticate (RFC 7235): a bearer token.
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Path parameters, refused in the same shape as every other error: one that
/// cannot be read (not UTF-8, say) is 400 `invalid_id`.
#[derive(Debug)]
pub(super) struct PathParams<T>(pub(super) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(params)) => Ok(Self(params)),
            Err(rejection) => Err(ApiError::invalid_path(format!("the path is not valid: {}", rejection.body_text()))),
        }
    }
}

/// A JSON object body, refused in the same shape as every other error: not JSON
/// (`Content-Type`) 415 `unsupported_media_type`, too large 413 `body_too_large`,
/// not valid JSON, not an object or not of the request's shape 400 `bad_request`,
/// worded in JSON's terms.
#[derive(Debug)]
pub(super) struct Body<T>(pub(super) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(not_json());
        }
        let bytes = read_bytes(request, state).await?;
        parse_object(&bytes).map(Self)
    }
}

/// A JSON object body that may be left out (empty, only whitespace, or `null`):
/// then the request's defaults. With no `Content-Type`, as clients often send an
/// empty body, it is read as JSON; any other than JSON is refused as [`Body`]
/// refuses it, empty or not (a form or text a web page posts is not JSON).
#[derive(Debug)]
pub(super) struct OptionalBody<T>(pub(super) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Default> axum::extract::FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if request.headers().contains_key(axum::http::header::CONTENT_TYPE) && !is_json(request.headers()) {
            return Err(not_json());
        }
        let bytes = read_bytes(request, state).await?;
        let text = bytes.trim_ascii();
        if text.is_empty() || text == b"null" {
            return Ok(Self(T::default()));
        }
        parse_object(&bytes).map(Self)
    }
}

/// 415 `unsupported_media_type`: a body that does not say it is JSON.
fn not_json() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "the body must be JSON: send `Content-Type: application/json`",
    )
}

/// Whether the request says its body is JSON (`application/json`, or `+json`).
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The body's bytes, within the server's body limit (413 `body_too_large` past it).
async fn read_bytes<S: Send + Sync>(request: axum::extract::Request, state: &S) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(request, state).await.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "bad_request" };
        ApiError::new(status, code, rejection.body_text())
    })
}

/// The body read as `T`: it must be valid JSON and an object (an array is not
/// read field by field in order), with the fields `T` takes.
fn parse_object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let not_json = |e: serde_json::Error| ApiError::bad_request(format!("the body is not valid JSON: {e}"));
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // Not an object: read whole only to say what it is. An object, the request
        // of every call, is read once, straight into `T`.
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(not_json)?;
        return Err(ApiError::bad_request(format!("the body must be a JSON object, not {}", json_kind(&value))));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::bad_request(format!("the body does not fit the request: {}", in_json_terms(&e.to_string())))
        }
        _ => not_json(e),
    })
}

/// What kind of JSON value `value` is, with its article.
fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A serde message with the Rust names of what was expected put in JSON's terms:
/// `expected struct Plan` is `expected an object`, a `map` an object, a `sequence`
/// an array.
pub(super) fn in_json_terms(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    // `struct NAME` names a Rust type: the whole of it is an object.
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        out.push_str("an object");
        let after = &rest[at + "struct ".len()..];
        rest = after.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
    }
    out.push_str(rest);
    out.replace("a map", "an object")
        .replace("a sequence", "an array")
        .replace("type: map", "type: object")
        .replace("type: sequence", "type: array")
}
