//! The workflows set aside (their runs met a stored row that cannot be read): listed
//! with why, and put back to the workers once the row is fixed. See
//! [`LeaseQueue::set_aside`](crate::storage::LeaseQueue::set_aside).

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::auth::Caller;
use super::errors::{ApiError, ErrorBody, PathParams};
use super::router::AppState;
use crate::storage::SetAside;
use crate::workflow::Workflow;

/// The workflows set aside that the caller may see, with why, in id order. A caller
/// bound to an end user sees only that user's, and none whose row cannot be read.
#[utoipa::path(get, path = "/v1/set-aside", tag = "workflows",
    responses((status = 200, description = "`[{\"workflow_id\", \"reason\", \"queued\"}]`", body = [Object]),
              (status = "4XX", body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<SetAside>>, ApiError> {
    let mut seen = Vec::new();
    for entry in state.runner.storage().set_aside_workflows().await? {
        if caller.end_user_id.is_none() || state.visible(&caller, &entry.workflow_id).await.is_ok() {
            seen.push(entry);
        }
    }
    Ok(Json(seen))
}

/// Puts a workflow set aside back without running it: a worker takes it, in its
/// place, if it was queued. 409 `not_set_aside` for one that is not; 500
/// `unreadable` for one whose rows still cannot be read (it stays aside).
#[utoipa::path(post, path = "/v1/workflows/{id}/put-back", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id")),
    responses((status = 200, description = "The workflow", body = Object), (status = "4XX", body = ErrorBody),
              (status = 500, description = "Its rows still cannot be read (`unreadable`); it stays aside", body = ErrorBody)))]
pub(super) async fn put_back(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParams(id): PathParams<String>,
) -> Result<Json<Workflow>, ApiError> {
    let workflow = state.visible(&caller, &id).await?;
    if !state.runner.put_back(workflow.id()).await? {
        let message = format!("workflow {} is not set aside (`GET /v1/set-aside` lists those that are)", workflow.id());
        return Err(ApiError::new(StatusCode::CONFLICT, "not_set_aside", message));
    }
    let _ = state.touched.send(workflow.id());
    Ok(Json(workflow))
}
