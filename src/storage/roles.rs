//! What callers ask of a store, split by role: plans, workflows and their events,
//! the lease queue, the journal, and retention. [`Storage`] is all five at once.
//!
//! A part of the runner that needs one role takes only that one (the tool-call
//! journal takes a [`Journal`], the cancellation watcher a [`LeaseQueue`]), so what
//! each part can touch is written in its types. An `Arc<dyn Storage>` turns into
//! any of them by coercion.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{
    Lease, LeaseGrant, LeaseHolder, LeaseStatus, SetAside, ToolCallRecord, UsageRecord, WorkflowPage, WorkflowQuery,
};
use crate::Result;
use crate::events::{StoredEvent, WorkflowEvent};
use crate::ids::{PlanId, WorkflowId};
use crate::plan::Plan;
use crate::workflow::{Workflow, WorkflowState};

/// How often [`WorkflowStore::wait_for_events`] looks, in a store that cannot hear of saves.
const DEFAULT_EVENT_POLL: Duration = Duration::from_millis(200);

/// Asks `look` every fifth of a second until it finds events (`true`) or `timeout`
/// has passed (`false`).
pub(super) async fn poll_for_events<F, Fut>(timeout: Duration, mut look: F) -> Result<bool>
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

/// Keeps plans, workflows, leases, the tool-call journal and usage records: every
/// role at once, which is what a [`Runner`](crate::Runner) is given.
///
/// A type that implements the five roles ([`PlanStore`], [`WorkflowStore`],
/// [`LeaseQueue`], [`Journal`], [`Retention`]) is a `Storage`, and every
/// [`RowStore`](super::RowStore) implements them all: the built-in stores, and a
/// store of one's own made of row operations, run one copy of the protocol (see the
/// [durability guide](crate::storage#your-own-store)).
///
/// Every method that changes a workflow, its journal or its usage takes the
/// caller's [`Lease`] and fails with [`Error::LeaseLost`](crate::Error::LeaseLost)
/// unless it is the current, unexpired lease of that workflow.
///
/// The methods belong to the role traits, so bring those into scope to call them
/// (`use portia::storage::{PlanStore, WorkflowStore}`, or the
/// [prelude](crate::prelude), which brings all five).
///
/// ```
/// use std::sync::Arc;
/// use portia::storage::{InMemoryStorage, PlanStore, Storage, WorkflowStore};
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
///
/// // A part that only reads workflows can be handed just that role.
/// let workflows: Arc<dyn WorkflowStore> = storage;
/// assert!(!workflows.events(workflow.id(), 0).await?.is_empty());
/// # Ok(()) }
/// ```
pub trait Storage: PlanStore + WorkflowStore + LeaseQueue + Journal + Retention {}

impl<S: PlanStore + WorkflowStore + LeaseQueue + Journal + Retention> Storage for S {}

/// Plans: stored once, never changed.
#[async_trait::async_trait]
pub trait PlanStore: Send + Sync + fmt::Debug {
    /// Saves a plan. Plans never change, so saving one already stored does nothing,
    /// and another plan under a stored id is refused with
    /// [`Error::PlanIdTaken`](crate::Error::PlanIdTaken).
    async fn save_plan(&self, plan: &Plan) -> Result<()>;
    /// Loads a plan. [`Error::PlanNotFound`](crate::Error::PlanNotFound) if there is none.
    async fn get_plan(&self, id: PlanId) -> Result<Plan>;
}

/// Workflows and the events of their runs.
#[async_trait::async_trait]
pub trait WorkflowStore: Send + Sync + fmt::Debug {
    /// Stores a new workflow (its version is 1).
    /// [`Error::VersionConflict`](crate::Error::VersionConflict) if its id is taken.
    async fn create_workflow(&self, workflow: &Workflow) -> Result<()>;
    /// Stores a new workflow as [`WorkflowStore::create_workflow`] does, queued for
    /// the workers: [`LeaseQueue::claim_runnable`] hands it out, and wakes a worker
    /// waiting in [`LeaseQueue::wait_for_runnable`].
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
    /// This default asks [`WorkflowStore::events`] every fifth of a second; a store
    /// that can hear of saves (a bell in memory, `NOTIFY` in Postgres) overrides it
    /// to be woken instead.
    ///
    /// # Errors
    /// A storage error, or [`Error::WorkflowNotFound`](crate::Error::WorkflowNotFound).
    async fn wait_for_events(&self, id: WorkflowId, after: u64, timeout: Duration) -> Result<bool> {
        poll_for_events(timeout, || async move { Ok(!self.events(id, after).await?.is_empty()) }).await
    }
}

/// Leases, the queue the workers claim from, and cancellations: who may run a
/// workflow now.
#[async_trait::async_trait]
pub trait LeaseQueue: WorkflowStore {
    /// Takes the lease on a workflow for `owner`, for `ttl` on the store's clock.
    /// [`Error::AlreadyRunning`](crate::Error::AlreadyRunning) while another live
    /// lease is held, [`Error::InvalidWorkflowState`](crate::Error::InvalidWorkflowState)
    /// for a finished workflow. A workflow [set aside](LeaseQueue::set_aside) is
    /// put back by whatever takes its lease (a resume, an answer, a cancel): its
    /// mark is cleared and, if it was queued, the workers may claim it again.
    async fn acquire_lease(&self, id: WorkflowId, owner: &str, ttl: Duration) -> Result<LeaseGrant>;
    /// Stores a new workflow, not queued, with its lease taken for `owner` for `ttl`:
    /// [`create_workflow`](WorkflowStore::create_workflow) then
    /// [`acquire_lease`](LeaseQueue::acquire_lease), which this default does. Every
    /// [`RowStore`](super::RowStore) does both in one write, without reading the
    /// workflow back: what a run started at once needs.
    ///
    /// # Errors
    /// As `create_workflow` and `acquire_lease`.
    async fn create_leased(&self, workflow: &Workflow, owner: &str, ttl: Duration) -> Result<LeaseGrant> {
        self.create_workflow(workflow).await?;
        self.acquire_lease(workflow.id(), owner, ttl).await
    }
    /// Extends a current lease by `ttl` from now, and reports any cancellation request.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<LeaseStatus>;
    /// Gives a lease up; the next run does not count as a takeover. A lost lease is left alone.
    /// A queued workflow that can run on is then runnable again, and a waiting worker is woken.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;
    /// The run holding workflow `id`'s lease now, on the store's clock: `None` when
    /// no run does (it was never started, its run ended, or its run died and the
    /// lease lapsed, or its holder was a process of this machine that is gone). What
    /// tells a watcher that nothing is running a workflow that is not at rest.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`](crate::Error::WorkflowNotFound), or the store's.
    async fn lease_holder(&self, id: WorkflowId) -> Result<Option<LeaseHolder>>;
    /// Gives a lease up as [`LeaseQueue::release_lease`] does and sets the workflow
    /// aside, marked with `reason`: its run cannot go on until someone fixes what it
    /// needs (a stored row that cannot be read, [`Error::Unreadable`](crate::Error::Unreadable)),
    /// and a worker that claimed it again would only meet the same row, so no worker
    /// claims it. [`LeaseQueue::set_aside_workflows`] lists it with the reason
    /// (`portia list`, and a gauge of `portia serve`'s metrics). The workflow stays
    /// stored as it was; [`LeaseQueue::acquire_lease`] (`portia resume`) runs it
    /// once the row is fixed, and puts it back. A lost lease is left alone. Every
    /// [`RowStore`](super::RowStore) does both in one write.
    ///
    /// # Errors
    /// As `release_lease`.
    async fn set_aside(&self, lease: &Lease, reason: &str) -> Result<()>;
    /// Clears the mark of a workflow [set aside](LeaseQueue::set_aside) without
    /// running it: once what it needs is fixed, a worker takes it if it was queued
    /// ([`SetAside::queued`]), in its place. Whether it was set aside.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`](crate::Error::WorkflowNotFound), or the store's.
    async fn put_back(&self, id: WorkflowId) -> Result<bool>;
    /// Queues a stored workflow for the workers, at the back, unless it is queued
    /// already or finished: one created to run in its own process
    /// ([`WorkflowStore::create_workflow`]) whose run died, say. Whether it was put
    /// on the queue now. A claim takes it only while it is runnable and its lease
    /// is free, as any queued workflow; one [set aside](LeaseQueue::set_aside)
    /// stays aside until it is put back.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`](crate::Error::WorkflowNotFound), or the store's.
    async fn queue(&self, id: WorkflowId) -> Result<bool>;
    /// The workflows set aside, by a run ([`LeaseQueue::set_aside`]) or by a claim
    /// that could not read a queued row, with the reasons, in id order.
    ///
    /// # Errors
    /// A storage error.
    async fn set_aside_workflows(&self) -> Result<Vec<SetAside>>;
    /// Saves a workflow as [`WorkflowStore::update_workflow`] does and gives the lease
    /// up as [`LeaseQueue::release_lease`] does: a run's last save, which leaves the
    /// workflow at rest for anyone to resume.
    ///
    /// This default saves, then releases; should the release fail after the save, it
    /// logs that and returns `Ok`, as the save stands and the lease lapses on its
    /// own. Every [`RowStore`](super::RowStore) does both in one write, so a run
    /// ends with one write instead of two.
    ///
    /// # Errors
    /// As `update_workflow`, and the lease is then kept.
    async fn update_and_release(&self, workflow: &Workflow, lease: &Lease, events: &[WorkflowEvent]) -> Result<()> {
        self.update_workflow(workflow, lease, events).await?;
        if let Err(e) = self.release_lease(lease).await {
            tracing::warn!(workflow = %lease.workflow_id, error = %e, "could not release the lease; it lapses on its own");
        }
        Ok(())
    }
    /// Takes, for `owner`, the lease of the queued workflow that has waited longest
    /// among those a worker may run: NOT_STARTED, READY_TO_RESUME, or IN_PROGRESS
    /// whose run died (its lease expired) or gave it up. `None` when there is none.
    /// Workflows waiting for a human are never handed out.
    async fn claim_runnable(&self, owner: &str, ttl: Duration) -> Result<Option<LeaseGrant>>;
    /// Returns when a queued workflow may have become runnable (submitted, answered,
    /// or released) or when `timeout` has passed, whichever is first. A store that
    /// cannot hear of changes made by other processes just waits: workers poll.
    async fn wait_for_runnable(&self, timeout: Duration);
    /// Whether a queued workflow is yet to finish: waiting to be claimed, running on a
    /// worker, or left by a run that died (its lease lapses, and a worker takes it
    /// over). A queued workflow waiting for a human, and one created and run outside
    /// the queue, do not count: no worker will run them. A worker that should stop
    /// when its work is done stops once this is `false`.
    ///
    /// This default, for a store written against the roles themselves, reads the
    /// listing and counts any readable workflow not yet finished or waiting, queued
    /// or not; the built-in stores and every [`RowStore`](super::RowStore) know the queue.
    ///
    /// # Errors
    /// A storage error.
    async fn has_queued_work(&self) -> Result<bool> {
        for state in [WorkflowState::NotStarted, WorkflowState::ReadyToResume, WorkflowState::InProgress] {
            let mut query = WorkflowQuery::in_state(state).page_size(1);
            loop {
                let page = self.list_workflows(&query).await?;
                if !page.results.is_empty() {
                    return Ok(true);
                }
                if page.current_page >= page.total_pages {
                    break;
                }
                query = query.page(page.current_page + 1);
            }
        }
        Ok(false)
    }
    /// Asks whoever runs the workflow to stop; the lease holder sees it when it next
    /// renews or finishes a step, or at once through [`LeaseQueue::cancel_requests`].
    async fn request_cancel(&self, id: WorkflowId, reason: &str) -> Result<()>;
    /// The cancellations requested of the workflows `ids`, with their reasons: one
    /// read, which a runner makes every second for all the runs of its process, so
    /// that a cancellation from another process reaches a run within a second rather
    /// than at its next lease renewal. Workflows that are not stored are left out.
    ///
    /// This default, for a store written against the roles themselves, reports
    /// none: runs then see cancellations when they renew their leases.
    ///
    /// # Errors
    /// A storage error.
    async fn cancel_requests(&self, ids: &[WorkflowId]) -> Result<Vec<(WorkflowId, String)>> {
        let _ = ids;
        Ok(Vec::new())
    }
}

/// The journal: tool calls decided before they are made, and LLM usage as it is spent.
#[async_trait::async_trait]
pub trait Journal: Send + Sync + fmt::Debug {
    /// Stores a call's intent unless one with its key is stored. Returns `None` when
    /// the intent was stored now, and the earlier record (with its outcome, if known)
    /// when one was there already; the earlier one is then kept unchanged.
    ///
    /// The record is stored as given: a call journaled only once it is over (an
    /// idempotent tool's) comes here whole, with its outcome.
    async fn begin_tool_call(&self, lease: &Lease, intent: &ToolCallRecord) -> Result<Option<ToolCallRecord>>;
    /// Stores the outcome of a call whose intent is stored.
    async fn finish_tool_call(&self, lease: &Lease, record: &ToolCallRecord) -> Result<()>;
    /// Every journaled call of a workflow, in key order.
    async fn tool_calls(&self, id: WorkflowId) -> Result<Vec<ToolCallRecord>>;
    /// Journals LLM usage as it is spent.
    async fn record_usage(&self, lease: &Lease, record: &UsageRecord) -> Result<()>;
    /// Every usage record of a workflow, oldest first.
    async fn usage_records(&self, id: WorkflowId) -> Result<Vec<UsageRecord>>;
}

/// Deleting: one workflow, all of an end user's, or the finished ones past an age.
#[async_trait::async_trait]
pub trait Retention: Send + Sync + fmt::Debug {
    /// Deletes a workflow with its journal and usage, and its plan when no other
    /// workflow uses it. Deleting a workflow that is not stored does nothing.
    async fn delete_workflow(&self, id: WorkflowId) -> Result<()>;
    /// Deletes every workflow run for `end_user_id`, as [`Retention::delete_workflow`]
    /// does; returns how many were deleted.
    async fn delete_end_user(&self, end_user_id: &str) -> Result<usize>;
    /// Deletes finished (COMPLETE or FAILED) workflows last changed before `before`;
    /// returns how many were deleted.
    async fn prune_finished(&self, before: DateTime<Utc>) -> Result<usize>;
}
