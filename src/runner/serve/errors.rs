//! Errors as JSON: `{"error": {"code", "message"}}`, worded as the command line words them.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::Error;

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
            Error::ClarificationNotFound { .. } => (StatusCode::NOT_FOUND, "clarification_not_found"),
            Error::InvalidPlan(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_plan"),
            Error::Planning { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "planning_failed"),
            Error::InvalidClarificationResponse { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_clarification_response")
            }
            Error::ToolNotFound(_) => (StatusCode::UNPROCESSABLE_ENTITY, "tool_not_found"),
            Error::InvalidId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
            Error::PlanInputs { .. } => (StatusCode::BAD_REQUEST, "invalid_inputs"),
            Error::InvalidWorkflowState { .. } => (StatusCode::CONFLICT, "invalid_workflow_state"),
            Error::AlreadyRunning { .. } => (StatusCode::CONFLICT, "already_running"),
            Error::MissingApiKey { .. } | Error::InvalidConfig { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "not_configured")
            }
            Error::Llm(_) => (StatusCode::BAD_GATEWAY, "llm_failed"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, with_causes(&error))
    }
}

/// The error and each of its causes, as `error: cause: cause`, as the command line prints it.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line.replace('\n', " ")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

/// A JSON body, refused in the same shape as every other error (too large: 413).
#[derive(Debug)]
pub(super) struct Body<T>(pub(super) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => {
                let status = rejection.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "bad_request" };
                Err(ApiError::new(status, code, rejection.body_text()))
            }
        }
    }
}
