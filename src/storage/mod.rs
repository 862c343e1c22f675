//! Storage: where plans, workflows and tool-call records are kept.
//!
//! The runner saves a workflow after every change of state and every step output,
//! so a crash loses at most the step that was running. [`InMemoryStorage`] is the
//! default; [`DiskStorage`] keeps one JSON file per plan and workflow.

mod disk;
mod memory;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use disk::DiskStorage;
pub use memory::InMemoryStorage;

use crate::Result;
use crate::ids::{PlanId, WorkflowId};
use crate::plan::Plan;
use crate::workflow::{Workflow, WorkflowState};

/// How one tool call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ToolCallStatus {
    /// The tool returned a value.
    Success,
    /// The tool asked for clarifications.
    NeedClarification,
    /// The tool failed.
    Failed,
}

/// A record of one tool call, for auditing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// The workflow that made the call.
    pub workflow_id: WorkflowId,
    /// The step that made it.
    pub step: usize,
    /// The tool called.
    pub tool_id: String,
    /// The end user the workflow runs for.
    pub end_user_id: Option<String>,
    /// The arguments.
    pub input: Value,
    /// The value, clarifications or error message returned.
    pub output: Value,
    /// How it ended.
    pub status: ToolCallStatus,
    /// How long the tool took, in seconds.
    pub latency_seconds: f64,
}

/// Which workflows to list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowQuery {
    /// Only workflows in this state, if set.
    pub state: Option<WorkflowState>,
    /// The page, from 1.
    pub page: usize,
    /// Workflows per page.
    pub page_size: usize,
}

impl Default for WorkflowQuery {
    fn default() -> Self {
        Self { state: None, page: 1, page_size: 50 }
    }
}

impl WorkflowQuery {
    /// Only workflows in `state`.
    #[must_use]
    pub fn in_state(state: WorkflowState) -> Self {
        Self { state: Some(state), ..Self::default() }
    }
}

/// One page of workflows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Filters, orders and pages `workflows` by `query`.
    pub(crate) fn from_all(mut workflows: Vec<Workflow>, query: &WorkflowQuery, unreadable: Vec<String>) -> Self {
        workflows.retain(|w| query.state.is_none_or(|s| w.state() == s));
        workflows.sort_by_key(|w| w.id);
        let page_size = query.page_size.max(1);
        let count = workflows.len();
        let total_pages = count.div_ceil(page_size).max(1);
        let current_page = query.page.max(1);
        let skipped = (current_page - 1).saturating_mul(page_size);
        let results = workflows.into_iter().skip(skipped).take(page_size).collect();
        Self { results, count, total_pages, current_page, unreadable }
    }
}

/// Keeps plans, workflows and tool-call records.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Saves a plan, replacing one with the same id.
    async fn save_plan(&self, plan: &Plan) -> Result<()>;
    /// Loads a plan. [`Error::PlanNotFound`](crate::Error::PlanNotFound) if there is none.
    async fn get_plan(&self, id: PlanId) -> Result<Plan>;
    /// Saves a workflow, replacing one with the same id.
    async fn save_workflow(&self, workflow: &Workflow) -> Result<()>;
    /// Loads a workflow. [`Error::WorkflowNotFound`](crate::Error::WorkflowNotFound) if there is none.
    async fn get_workflow(&self, id: WorkflowId) -> Result<Workflow>;
    /// Lists workflows, filtered and paged.
    async fn list_workflows(&self, query: &WorkflowQuery) -> Result<WorkflowPage>;
    /// Records a tool call.
    async fn save_tool_call(&self, record: &ToolCallRecord) -> Result<()>;
}
