//! Storage: where plans, workflows, leases and the tool-call journal are kept.
//!
#![doc = include_str!("../docs/durability.md")]

mod bells;
mod clock;
mod import;
mod journal;
mod lease;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod protocol;
mod roles;
mod rows;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

use serde::{Deserialize, Serialize};

/// The time types of [`RowTx`], re-exported so that a store of one's own uses the
/// same chrono as this crate.
pub use chrono;
pub use clock::{Clock, ManualClock, SystemClock};
pub use import::{ImportReport, import_json_dir};
pub use journal::{ToolCallKey, ToolCallRecord, ToolCallStatus, UsageRecord};
pub use lease::{Lease, LeaseGrant, LeaseHolder, LeaseState, LeaseStatus, SetAside, local_owner};
pub use memory::InMemoryStorage;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresSettings, PostgresStorage};
pub use roles::{Journal, LeaseQueue, PlanStore, Retention, Storage, WorkflowStore};
pub use rows::{Access, LeaseRow, RowError, RowStore, RowTx, Work};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStorage;

use crate::workflow::{Workflow, WorkflowState};

/// Which workflows to list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkflowQuery {
    /// Only workflows in this state, if set.
    pub state: Option<WorkflowState>,
    /// Only workflows run for this end user (their execution context's
    /// `end_user_id`), if set.
    #[serde(default)]
    pub end_user: Option<String>,
    /// The page, from 1.
    pub page: usize,
    /// Workflows per page.
    pub page_size: usize,
}

impl Default for WorkflowQuery {
    fn default() -> Self {
        Self { state: None, end_user: None, page: 1, page_size: 50 }
    }
}

impl WorkflowQuery {
    /// Only workflows in `state`.
    #[must_use]
    pub fn in_state(state: WorkflowState) -> Self {
        Self { state: Some(state), ..Self::default() }
    }

    /// Only workflows in `state`, or in any state for `None`.
    #[must_use]
    pub fn state(mut self, state: Option<WorkflowState>) -> Self {
        self.state = state;
        self
    }

    /// Only workflows run for `end_user`, or for anyone (or no one) with `None`.
    #[must_use]
    pub fn end_user(mut self, end_user: Option<String>) -> Self {
        self.end_user = end_user;
        self
    }

    /// Whether `workflow` is one this query lists (on any page).
    #[must_use]
    pub fn matches(&self, workflow: &Workflow) -> bool {
        self.state.is_none_or(|s| workflow.state() == s)
            && self.end_user.as_ref().is_none_or(|u| workflow.execution_context().end_user_id.as_ref() == Some(u))
    }

    /// This page, from 1.
    #[must_use]
    pub fn page(mut self, page: usize) -> Self {
        self.page = page;
        self
    }

    /// This many workflows per page.
    #[must_use]
    pub fn page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size;
        self
    }
}

/// One page of workflows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkflowPage {
    /// The workflows on this page, ordered by id.
    pub results: Vec<Workflow>,
    /// How many workflows match in all.
    pub count: usize,
    /// How many pages there are.
    pub total_pages: usize,
    /// This page's number, from 1.
    pub current_page: usize,
    /// Stored entries that could not be read, with the reason; they were skipped.
    pub unreadable: Vec<String>,
}

impl WorkflowPage {
    /// `query`'s page of `workflows`: filtered by state and end user, ordered by id and paged.
    /// `unreadable` lists the stored entries that could not be read, with the reason.
    pub fn from_all(mut workflows: Vec<Workflow>, query: &WorkflowQuery, unreadable: Vec<String>) -> Self {
        workflows.retain(|w| query.matches(w));
        workflows.sort_by_key(Workflow::id);
        let page_size = query.page_size.max(1);
        let count = workflows.len();
        let total_pages = count.div_ceil(page_size).max(1);
        let current_page = query.page.max(1);
        let skipped = (current_page - 1).saturating_mul(page_size);
        let results = workflows.into_iter().skip(skipped).take(page_size).collect();
        Self { results, count, total_pages, current_page, unreadable }
    }
}
