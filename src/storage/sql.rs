//! What the SQL stores (SQLite, Postgres) share beside their drivers: the
//! conversions of stored values, the page of a listing, and the journal's columns.

use std::fmt;

use chrono::{DateTime, Utc};

use super::rows::RowError;
use super::{ToolCallKey, ToolCallRecord, ToolCallStatus, WorkflowPage, WorkflowQuery};

/// `n` as the database's integer, or why it does not fit.
pub(super) fn to_int<T: TryInto<i64> + Copy + fmt::Display>(n: T) -> Result<i64, RowError> {
    n.try_into().map_err(|_| RowError::value(format!("{n} is too large to store")))
}

/// A stored integer as `T`, or why it is out of range.
pub(super) fn from_int<T: TryFrom<i64>>(n: i64) -> Result<T, RowError> {
    T::try_from(n).map_err(|_| RowError::value(format!("stored number {n} is out of range")))
}

/// `value` as the JSON text to store; `what` names it in the error.
pub(super) fn to_json<T: serde::Serialize>(value: &T, what: &str) -> Result<String, RowError> {
    serde_json::to_string(value).map_err(|e| RowError::value_source(format!("cannot encode {what}"), e))
}

/// Stored JSON text as a `T`; `what` names it in the error.
pub(super) fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, RowError> {
    serde_json::from_str(text).map_err(|e| RowError::value_source(format!("{what} is stored but cannot be read"), e))
}

/// The rows of `query`'s page: `(limit, offset)`.
pub(super) fn page_rows(query: &WorkflowQuery) -> (usize, usize) {
    let page_size = query.page_size.max(1);
    (page_size, (query.page.max(1) - 1).saturating_mul(page_size))
}

/// `query`'s page of the `count` workflows, from its `(id, body)` rows. A row that
/// does not parse is listed in `unreadable`: one bad row must not hide the others.
pub(super) fn workflow_page(
    rows: impl IntoIterator<Item = (String, String)>,
    count: i64,
    query: &WorkflowQuery,
) -> Result<WorkflowPage, RowError> {
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
    pub(super) fn decode(self) -> Result<ToolCallRecord, RowError> {
        let workflow_id = self
            .workflow_id
            .parse()
            .map_err(|e| RowError::value(format!("a tool call names workflow {:?}: {e}", self.workflow_id)))?;
        let key = ToolCallKey {
            workflow_id,
            step: from_int(self.step)?,
            attempt: from_int(self.attempt)?,
            seq: from_int(self.seq)?,
        };
        let status = ToolCallStatus::parse(&self.status)
            .ok_or_else(|| RowError::value(format!("tool call {key} has the unknown status {:?}", self.status)))?;
        let started_at = DateTime::parse_from_rfc3339(&self.started_at)
            .map_err(|e| RowError::value(format!("tool call {key} has the start time {:?}: {e}", self.started_at)))?
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
