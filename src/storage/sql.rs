//! What the SQL stores (SQLite, Postgres) share beside their drivers: why a call
//! failed and how that reads to the caller, the conversions of stored values, and
//! the journal's columns.

use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};

use super::{ToolCallKey, ToolCallRecord, ToolCallStatus, WorkflowPage, WorkflowQuery};
use crate::Error;
use crate::ids::WorkflowId;

/// Why a database call failed, before it is described for the caller; `E` is what
/// the driver reports.
pub(super) enum Fail<E> {
    /// The database refused, or could not be reached.
    Db(E),
    /// A stored JSON value does not parse (or a value to store does not serialize).
    Json(String, serde_json::Error),
    /// A stored value is not one this store writes.
    Corrupt(String),
    /// The schema is newer than this build knows.
    TooNew { found: u32, supported: u32 },
    /// A refusal of the protocol (a lost lease, a version conflict ...), passed on as is.
    Protocol(Error),
}

impl<E> From<Error> for Fail<E> {
    fn from(e: Error) -> Self {
        Self::Protocol(e)
    }
}

impl<E> Fail<E> {
    /// Why a stored row cannot be read, when that is the failure: the row is there
    /// but is not one this store can use (its JSON or a value does not parse).
    pub(super) fn unreadable(&self) -> Option<String> {
        match self {
            Self::Json(message, e) => Some(format!("{message}: {e}")),
            Self::Corrupt(message) => Some(message.clone()),
            _ => None,
        }
    }

    /// The caller's error: `what` says what was being done, `path` is the database
    /// file if there is one, and `db` describes what the driver reported.
    pub(super) fn into_error(self, path: Option<PathBuf>, what: &str, db: impl FnOnce(E) -> Error) -> Error {
        match self {
            Self::Db(e) => db(e),
            Self::Json(message, e) => Error::storage_source(path, format!("{what}: {message}"), e),
            Self::Corrupt(message) => Error::storage(path, format!("{what}: {message}")),
            Self::TooNew { found, supported } => Error::SchemaTooNew { path, found, supported },
            Self::Protocol(e) => e,
        }
    }
}

/// `n` as the database's integer, or why it does not fit.
pub(super) fn to_int<T: TryInto<i64> + Copy + fmt::Display, E>(n: T) -> Result<i64, Fail<E>> {
    n.try_into().map_err(|_| Fail::Corrupt(format!("{n} is too large to store")))
}

/// A stored integer as `T`, or why it is out of range.
pub(super) fn from_int<T: TryFrom<i64>, E>(n: i64) -> Result<T, Fail<E>> {
    T::try_from(n).map_err(|_| Fail::Corrupt(format!("stored number {n} is out of range")))
}

/// `value` as the JSON text to store; `what` names it in the error.
pub(super) fn to_json<T: serde::Serialize, E>(value: &T, what: &str) -> Result<String, Fail<E>> {
    serde_json::to_string(value).map_err(|e| Fail::Json(format!("cannot encode {what}"), e))
}

/// Stored JSON text as a `T`; `what` names it in the error.
pub(super) fn from_json<T: serde::de::DeserializeOwned, E>(text: &str, what: &str) -> Result<T, Fail<E>> {
    serde_json::from_str(text).map_err(|e| Fail::Json(format!("{what} is stored but cannot be read"), e))
}

/// A stored workflow id.
pub(super) fn parse_id<E>(id: &str) -> Result<WorkflowId, Fail<E>> {
    id.parse().map_err(|e| Fail::Corrupt(format!("workflow id {id:?}: {e}")))
}

/// The rows of `query`'s page: `(limit, offset)`.
pub(super) fn page_rows(query: &WorkflowQuery) -> (usize, usize) {
    let page_size = query.page_size.max(1);
    (page_size, (query.page.max(1) - 1).saturating_mul(page_size))
}

/// `query`'s page of the `count` workflows, from its `(id, body)` rows. A row that
/// does not parse is listed in `unreadable`: one bad row must not hide the others.
pub(super) fn workflow_page<E>(
    rows: impl IntoIterator<Item = (String, String)>,
    count: i64,
    query: &WorkflowQuery,
) -> Result<WorkflowPage, Fail<E>> {
    let (mut results, mut unreadable) = (Vec::new(), Vec::new());
    for (id, body) in rows {
        match serde_json::from_str(&body) {
            Ok(workflow) => results.push(workflow),
            Err(e) => unreadable.push(format!("workflow {id}: {e}")),
        }
    }
    let count: usize = from_int(count)?;
    let total_pages = count.div_ceil(query.page_size.max(1)).max(1);
    Ok(WorkflowPage { results, count, total_pages, current_page: query.page.max(1), unreadable })
}

/// The journal's columns, in the order [`StoredToolCall`] reads them.
pub(super) const TOOL_CALL_COLUMNS: &str =
    "workflow_id, step, attempt, seq, tool_id, end_user_id, input, status, output, started_at, latency_seconds";

/// The conflict clause that replaces a journaled call with its outcome.
pub(super) const REPLACE_TOOL_CALL: &str = "DO UPDATE SET tool_id = excluded.tool_id, \
     end_user_id = excluded.end_user_id, input = excluded.input, status = excluded.status, \
     output = excluded.output, started_at = excluded.started_at, latency_seconds = excluded.latency_seconds";

/// A journal row as the driver read it, [`TOOL_CALL_COLUMNS`] in order.
pub(super) struct StoredToolCall {
    pub(super) workflow_id: String,
    pub(super) step: i64,
    pub(super) attempt: i64,
    pub(super) seq: i64,
    pub(super) tool_id: String,
    pub(super) end_user_id: Option<String>,
    pub(super) input: String,
    pub(super) status: String,
    pub(super) output: String,
    pub(super) started_at: String,
    pub(super) latency_seconds: Option<f64>,
}

impl StoredToolCall {
    /// The record, or which of its stored values is not one the store writes.
    pub(super) fn decode<E>(self) -> Result<ToolCallRecord, Fail<E>> {
        let workflow_id = self
            .workflow_id
            .parse()
            .map_err(|e| Fail::Corrupt(format!("a tool call names workflow {:?}: {e}", self.workflow_id)))?;
        let key = ToolCallKey {
            workflow_id,
            step: from_int(self.step)?,
            attempt: from_int(self.attempt)?,
            seq: from_int(self.seq)?,
        };
        let status = ToolCallStatus::parse(&self.status)
            .ok_or_else(|| Fail::Corrupt(format!("tool call {key} has the unknown status {:?}", self.status)))?;
        let started_at = DateTime::parse_from_rfc3339(&self.started_at)
            .map_err(|e| Fail::Corrupt(format!("tool call {key} has the start time {:?}: {e}", self.started_at)))?
            .with_timezone(&Utc);
        Ok(ToolCallRecord {
            key,
            tool_id: self.tool_id,
            end_user_id: self.end_user_id,
            input: from_json(&self.input, &format!("the input of tool call {key}"))?,
            status,
            output: from_json(&self.output, &format!("the output of tool call {key}"))?,
            started_at,
            latency_seconds: self.latency_seconds,
        })
    }
}

/// Says, once per row, that a queued workflow that cannot be read was taken off the
/// queue, so that the workers go on with the others.
pub(super) fn log_dequeued(id: &str, why: &str) {
    tracing::warn!(
        workflow = %id,
        error = %why,
        "a queued workflow cannot be read and was taken off the queue; `portia list` shows it, `portia delete` removes it"
    );
}
