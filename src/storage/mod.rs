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
mod rows;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The time types of [`RowTx`], re-exported so that a store of one's own uses the
/// same chrono as this crate.
pub use chrono;
pub use clock::{Clock, ManualClock, SystemClock};
pub use import::{ImportReport, import_json_dir};
pub use journal::{ToolCallKey, ToolCallRecord, ToolCallStatus, UsageRecord};
pub use lease::{Lease, LeaseGrant, LeaseState, LeaseStatus, local_owner};
pub use memory::InMemoryStorage;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresSettings, PostgresStorage};
pub use rows::{Access, LeaseRow, RowError, RowStore, RowTx, Work};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStorage;

use crate::Result;
use crate::events::{StoredEvent, WorkflowEvent};
use crate::ids::{PlanId, WorkflowId};
use crate::plan::Plan;
use crate::workflow::{Workflow, WorkflowState};

/// How often [`Storage::wait_for_events`] looks, in a store that cannot hear of saves.
const DEFAULT_EVENT_POLL: Duration = Duration::from_millis(200);

/// Asks `look` every fifth of a second until it finds events (`true`) or `timeout`
/// has passed (`false`).
async fn poll_for_events<F, Fut>(timeout: Duration, mut look: F) -> Result<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    loop {
        if look().await? {
            return Ok(true);
        }
        let left = deadline.map_or(timeout, |deadline| deadline.saturating_duration_since(tokio::time::Instant::now()));
        if left.is_zero() {
            return Ok(false);
        }
        tokio::time::sleep(left.min(DEFAULT_EVENT_POLL)).await;
    }
}

/// Which workflows to list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
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

    /// Only workflows in `state`, or in any state for `None`.
    #[must_use]
    pub fn state(mut self, state: Option<WorkflowState>) -> Self {
        self.state = state;
        self
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
    /// `query`'s page of `workflows`: filtered by state, ordered by id and paged.
    /// `unreadable` lists the stored entries that could not be read, with the reason.
    pub fn from_all(mut workflows: Vec<Workflow>, query: &WorkflowQuery, unreadable: Vec<String>) -> Self {
        workflows.retain(|w| query.state.is_none_or(|s| w.state() == s));
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

/// Keeps plans, workflows, leases, the tool-call journal and usage records.
///
/// Every method that changes a workflow, its journal or its usage takes the
/// caller's [`Lease`] and fails with [`Error::LeaseLost`](crate::Error::LeaseLost)
/// unless it is the current, unexpired lease of that workflow.
///
/// Every [`RowStore`] is a `Storage`: the built-in stores, and a store of one's own
/// made of row operations, run one copy of this protocol (see the
/// [durability guide](crate::storage#your-own-store)).
///
/// ```
/// use std::sync::Arc;
/// use portia::storage::{InMemoryStorage, Storage};
/// use portia::testing::ScriptedLlm;
/// use portia::{Config, PlanBuilder, Runner};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> portia::Result<()> {
/// // Or `SqliteStorage::open(".portia/portia.db")?` to share it between processes.
/// let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
/// let config = Config::builder().summarize_final_output(false).build()?;
/// let runner = Runner::builder(config)
///     .storage(storage.clone())
///     .llm(Arc::new(ScriptedLlm::new().text("Hello!")))
///     .build()?;
/// let plan = PlanBuilder::new("Say hello").step("Say hello", None, "$hello").build();
/// let workflow = runner.run_plan(&plan).await?;
///
/// // Every change was saved as it happened: any runner on the same store sees it.
/// let stored = storage.get_workflow(workflow.id()).await?;
/// assert_eq!(stored.state(), workflow.state());
/// assert_eq!(storage.get_plan(workflow.plan_id()).await?.steps.len(), 1);
/// # Ok(()) }
/// ```
#[async_trait::async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Saves a plan. Plans never change, so saving one already stored does nothing.
    async fn save_plan(&self, plan: &Plan) -> Result<()>;
    /// Loads a plan. [`Error::PlanNotFound`](crate::Error::PlanNotFound) if there is none.
    async fn get_plan(&self, id: PlanId) -> Result<Plan>;

    /// Stores a new workflow (its version is 1).
    /// [`Error::VersionConflict`](crate::Error::VersionConflict) if its id is taken.
    async fn create_workflow(&self, workflow: &Workflow) -> Result<()>;
    /// Stores a new workflow as [`Storage::create_workflow`] does, queued for the
    /// workers: [`Storage::claim_runnable`] hands it out, and wakes a worker waiting
    /// in [`Storage::wait_for_runnable`].
    async fn submit_workflow(&self, workflow: &Workflow) -> Result<()>;
    /// Loads a workflow. [`Error::WorkflowNotFound`](crate::Error::WorkflowNotFound) if there is none.
    async fn get_workflow(&self, id: WorkflowId) -> Result<Workflow>;
    /// Lists workflows, filtered and paged; unreadable ones are reported, not fatal.
    async fn list_workflows(&self, query: &WorkflowQuery) -> Result<WorkflowPage>;
    /// Replaces a workflow whose stored version is one less than `workflow`'s, and
    /// stores `events` after its earlier ones, in one write.
    /// [`Error::VersionConflict`](crate::Error::VersionConflict) otherwise, and
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) unless `lease` is current.
    async fn update_workflow(&self, workflow: &Workflow, lease: &Lease, events: &[WorkflowEvent]) -> Result<()>;
    /// A workflow's stored events numbered after `after` (0 for all), in order.
    async fn events(&self, id: WorkflowId, after: u64) -> Result<Vec<StoredEvent>>;
    /// Returns `true` as soon as workflow `id` has events numbered after `after`
    /// stored, by any process, and `false` once `timeout` has passed without. The
    /// runner stores every change of a workflow's state with an event, so a waiter
    /// hears of those too.
    ///
    /// This default asks [`Storage::events`] every fifth of a second; a store that can
    /// hear of saves (a bell in memory, `NOTIFY` in Postgres) overrides it to be woken
    /// instead.
    ///
    /// # Errors
    /// A storage error, or [`Error::WorkflowNotFound`](crate::Error::WorkflowNotFound).
    async fn wait_for_events(&self, id: WorkflowId, after: u64, timeout: Duration) -> Result<bool> {
        poll_for_events(timeout, || async move { Ok(!self.events(id, after).await?.is_empty()) }).await
    }

    /// Takes the lease on a workflow for `owner`, for `ttl` on the store's clock.
    /// [`Error::AlreadyRunning`](crate::Error::AlreadyRunning) while another live
    /// lease is held, [`Error::InvalidWorkflowState`](crate::Error::InvalidWorkflowState)
    /// for a finished workflow.
    async fn acquire_lease(&self, id: WorkflowId, owner: &str, ttl: std::time::Duration) -> Result<LeaseGrant>;
    /// Extends a current lease by `ttl` from now, and reports any cancellation request.
    async fn renew_lease(&self, lease: &Lease, ttl: std::time::Duration) -> Result<LeaseStatus>;
    /// Gives a lease up; the next run does not count as a takeover. A lost lease is left alone.
    /// A queued workflow that can run on is then runnable again, and a waiting worker is woken.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;
    /// Takes, for `owner`, the lease of the queued workflow that has waited longest
    /// among those a worker may run: NOT_STARTED, READY_TO_RESUME, or IN_PROGRESS
    /// whose run died (its lease expired) or gave it up. `None` when there is none.
    /// Workflows waiting for a human are never handed out.
    async fn claim_runnable(&self, owner: &str, ttl: std::time::Duration) -> Result<Option<LeaseGrant>>;
    /// Returns when a queued workflow may have become runnable (submitted, answered,
    /// or released) or when `timeout` has passed, whichever is first. A store that
    /// cannot hear of changes made by other processes just waits: workers poll.
    async fn wait_for_runnable(&self, timeout: std::time::Duration);
    /// Asks whoever runs the workflow to stop; the lease holder sees it when it next
    /// renews or finishes a step.
    async fn request_cancel(&self, id: WorkflowId, reason: &str) -> Result<()>;

    /// Stores a call's intent unless one with its key is stored. Returns `None` when
    /// the intent was stored now, and the earlier record (with its outcome, if known)
    /// when one was there already; the earlier one is then kept unchanged.
    async fn begin_tool_call(&self, lease: &Lease, intent: &ToolCallRecord) -> Result<Option<ToolCallRecord>>;
    /// Stores the outcome of a call whose intent is stored.
    async fn finish_tool_call(&self, lease: &Lease, record: &ToolCallRecord) -> Result<()>;
    /// Every journaled call of a workflow, in key order.
    async fn tool_calls(&self, id: WorkflowId) -> Result<Vec<ToolCallRecord>>;

    /// Journals LLM usage as it is spent.
    async fn record_usage(&self, lease: &Lease, record: &UsageRecord) -> Result<()>;
    /// Every usage record of a workflow, oldest first.
    async fn usage_records(&self, id: WorkflowId) -> Result<Vec<UsageRecord>>;

    /// Deletes a workflow with its journal and usage, and its plan when no other
    /// workflow uses it. Deleting a workflow that is not stored does nothing.
    async fn delete_workflow(&self, id: WorkflowId) -> Result<()>;
    /// Deletes every workflow run for `end_user_id`, as [`Storage::delete_workflow`]
    /// does; returns how many were deleted.
    async fn delete_end_user(&self, end_user_id: &str) -> Result<usize>;
    /// Deletes finished (COMPLETE or FAILED) workflows last changed before `before`;
    /// returns how many were deleted.
    async fn prune_finished(&self, before: DateTime<Utc>) -> Result<usize>;
}
