//! The row operations a store is made of. A store implements [`RowStore`] (how it
//! runs a transaction) and [`RowTx`] (small reads and writes inside one), and gets
//! [`Storage`](super::Storage) for free: the protocol (fences, compare-and-swap
//! saves, lease grants and takeovers, claims, event numbering, cascade deletes) is
//! written once, in `protocol.rs`, and every store, the built-in ones included, runs
//! that one copy. Why the row operations are synchronous (and Postgres runs them on a
//! blocking thread) is said, and measured, in [`RowStore`]'s documentation.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{LeaseState, SetAside, ToolCallKey, ToolCallRecord, UsageRecord, WorkflowPage, WorkflowQuery};
use crate::Error;
use crate::events::StoredEvent;
use crate::ids::{PlanId, WorkflowId};
use crate::plan::Plan;
use crate::workflow::Workflow;

/// The work of one transaction, run by [`RowStore::transaction`].
pub type Work<T> = Box<dyn FnOnce(&mut dyn RowTx) -> Result<T, RowError> + Send>;

/// What a transaction does: only read, or also write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Reads only; its reads should see one snapshot.
    Read,
    /// Reads and writes; it should take the store's write lock (or the rows' locks)
    /// before its first read, so that two writers take turns.
    Write,
}

/// A workflow's lease columns, its cancellation request and its version, as a store
/// keeps them beside the workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseRow {
    /// The lease columns.
    pub lease: LeaseState,
    /// The reason of a cancellation someone requested, if any.
    pub cancel_requested: Option<String>,
    /// The stored workflow's version.
    pub version: u64,
    /// Whether the workflow is [set aside](RowTx::set_aside): taking its lease puts
    /// it back.
    pub set_aside: bool,
}

impl LeaseRow {
    /// The row of a workflow at `version`, with `lease` and any cancellation
    /// request, not set aside.
    pub fn new(lease: LeaseState, cancel_requested: Option<String>, version: u64) -> Self {
        Self { lease, cancel_requested, version, set_aside: false }
    }

    /// This row, set aside if `set_aside`.
    #[must_use]
    pub fn set_aside(mut self, set_aside: bool) -> Self {
        self.set_aside = set_aside;
        self
    }
}

/// Why a row operation or a transaction failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RowError {
    /// The store failed (its driver's error); [`RowStore::describe`] words it.
    Store(Box<dyn std::error::Error + Send + Sync>),
    /// A stored value cannot be read, or a value cannot be encoded to be stored:
    /// `message` says which. The caller gets [`Error::Unreadable`]. A queued
    /// workflow that cannot be read this way is set aside by a claim, so that it
    /// does not block the others.
    Value {
        /// Which value, and why.
        message: String,
        /// The parser's error, if there is one.
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The protocol refused (a lost lease, a version conflict, a missing workflow
    /// ...) or the store already worded its error: passed on to the caller as is.
    Refused(Error),
}

impl RowError {
    /// The store's own failure.
    pub fn store(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Store(Box::new(error))
    }

    /// A value that cannot be read or encoded, with why.
    pub fn value(message: impl Into<String>) -> Self {
        Self::Value { message: message.into(), source: None }
    }

    /// A value that cannot be read or encoded, as `source` (a parser's error) says.
    pub fn value_source(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Value { message: message.into(), source: Some(Box::new(source)) }
    }

    /// Why a stored row cannot be read, when that is the failure.
    pub(crate) fn unreadable(&self) -> Option<String> {
        match self {
            Self::Value { message, source: Some(source) } => Some(format!("{message}: {source}")),
            Self::Value { message, source: None } => Some(message.clone()),
            _ => None,
        }
    }
}

/// Why a caller's work was undone although it succeeded: the transaction it shared
/// with others was ended by another's failure. Nothing of it was kept, so the
/// protocol runs it again (see [`RowStore::shares_transactions`]).
#[derive(Debug)]
pub(crate) struct RolledBack;

impl fmt::Display for RolledBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the transaction shared with another write was rolled back by that write's failure; retry")
    }
}

impl std::error::Error for RolledBack {}

impl RowError {
    /// The error of work undone by another's failure (see [`RolledBack`]); only
    /// SQLite's group commit undoes work that way.
    #[cfg(feature = "sqlite")]
    pub(crate) fn rolled_back() -> Self {
        Self::store(RolledBack)
    }

    /// Whether the work failed only because another's failure undid it.
    pub(crate) fn is_rolled_back(&self) -> bool {
        matches!(self, Self::Store(source) if source.is::<RolledBack>())
    }
}

impl From<Error> for RowError {
    fn from(error: Error) -> Self {
        Self::Refused(error)
    }
}

/// A store made of row operations: how it runs a transaction, what it does once one
/// committed, and how it waits. Implement it (with [`RowTx`]) and the store is a
/// [`Storage`](super::Storage): the protocol comes with it.
///
/// [`Storage`](super::Storage) is what callers use; [`RowStore::transaction`] is for
/// the protocol, and work run through it directly is not fenced.
///
/// See the [durability guide](crate::storage#your-own-store) for a store
/// of one's own, and `tests/it/storage_rows.rs` in the repository for a complete one
/// over `HashMap`s.
///
/// # Why the row operations are synchronous
///
/// A transaction is a synchronous closure over `&mut dyn RowTx`, which
/// [`RowStore::transaction`] runs however the store needs: the in-memory store under
/// its mutex, SQLite on one of Tokio's blocking threads (as rusqlite must run), and
/// Postgres on a blocking thread too, each statement driven by the runtime's
/// `Handle::block_on`. The alternative, row operations as async methods, would have
/// made the two synchronous stores (and any store kept in memory) either hold a lock
/// across `.await`s or hop to a blocking thread per statement; written this way the
/// memory and SQLite stores do exactly the work they did before the protocol was
/// shared, and only Postgres pays, one hop to a blocking thread per transaction,
/// which is small beside its network round trips. A store of your own over an async
/// client does as the Postgres store does.
///
/// Measured with `cargo run --release --example bench -- --n 200 --concurrency 50
/// --storage sqlite`, three runs each, interleaved, on a busy two-core machine:
/// 54.1 workflows/s and 4.8 ms of CPU per workflow with each store's own copy of the
/// protocol, 55.7 workflows/s and 4.6 ms with the shared one. On Postgres (`--n 200
/// --workers 2 --database-url ...`, with the `postgres` feature, two runs each) the
/// throughput stays (35.9 workflows/s before, 35.7 after) while a worker's CPU per
/// workflow grows from 4.8 to 8.8 ms: the price of the blocking threads, and of a
/// transaction for each call. Since then single reads skip the transaction
/// ([`RowStore::read`]) and a save's events go in one statement
/// ([`RowTx::insert_events`]): with the benchmark in-process on Postgres (`--n 200
/// --concurrency 50 --storage postgres --database-url ...`, two runs each) the
/// CPU per workflow went from 7.2 and 6.7 ms to 6.6 and 5.5 ms.
pub trait RowStore: Send + Sync + fmt::Debug {
    /// Runs `work` in one transaction, committed only when it returns `Ok`.
    ///
    /// A store that changes its rows in place (in memory) may skip the rollback when
    /// its row operations cannot fail: the protocol makes every refusal before its
    /// first write.
    fn transaction<T: Send + 'static>(
        &self,
        access: Access,
        work: Work<T>,
    ) -> impl Future<Output = Result<T, RowError>> + Send;

    /// Runs `work`, which only reads and needs no snapshot across its statements
    /// (one workflow, its events, its journal), however is cheapest. This default
    /// runs it as an [`Access::Read`] transaction; the Postgres store runs it on a
    /// pooled connection without one, sparing the `BEGIN` and `COMMIT` round trips.
    fn read<T: Send + 'static>(&self, work: Work<T>) -> impl Future<Output = Result<T, RowError>> + Send {
        self.transaction(Access::Read, work)
    }

    /// Whether a transaction may be undone through no fault of its own: its work ran
    /// and succeeded, but the transaction it shared with other callers' (group
    /// commit) was ended by another's failure. The protocol then keeps a copy of each
    /// transaction's work (a copy of the workflow, for a save) to run it again. The
    /// SQLite store says `true`; a store whose transactions each stand alone keeps
    /// the default, `false`, and pays for no copy.
    fn shares_transactions(&self) -> bool {
        false
    }

    /// The caller's error for `error`, raised while doing `what` ("cannot save
    /// workflow ..."). A store words its driver's errors here, saying what to do.
    fn describe(&self, what: &str, error: RowError) -> Error {
        match error {
            RowError::Store(source) => Error::Storage { path: None, message: what.to_owned(), source: Some(source) },
            RowError::Value { message, source } => {
                Error::Unreadable { path: None, message: format!("{what}: {message}"), source }
            }
            RowError::Refused(error) => error,
        }
    }

    /// Called after a commit that may have made a queued workflow runnable (a
    /// submission, a release): wake this process's waiting workers here.
    fn runnable_changed(&self) {}

    /// Called after a save of `workflow` committed; `events_stored` says whether the
    /// save stored events: ring this process's waiters for them here.
    fn workflow_saved(&self, workflow: &Workflow, events_stored: bool) {
        let _ = (workflow, events_stored);
    }

    /// [`WorkflowStore::wait_for_events`](super::WorkflowStore::wait_for_events) of this store.
    /// This default looks every fifth of a second.
    fn watch_events(
        &self,
        id: WorkflowId,
        after: u64,
        timeout: Duration,
    ) -> impl Future<Output = crate::Result<bool>> + Send {
        super::roles::poll_for_events(timeout, move || super::protocol::has_events_after(self, id, after))
    }

    /// [`LeaseQueue::wait_for_runnable`](super::LeaseQueue::wait_for_runnable) of this
    /// store. This default just waits `timeout`: workers poll.
    fn watch_runnable(&self, timeout: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(timeout)
    }

    /// Called after [`Retention::prune_finished`](super::Retention::prune_finished)
    /// deleted `deleted` workflows: give the space they took back here (a file that
    /// only grows would keep it). This default does nothing.
    fn reclaim_space(&self, deleted: usize) -> impl Future<Output = crate::Result<()>> + Send {
        let _ = deleted;
        std::future::ready(Ok(()))
    }
}

/// The reads and writes of one transaction. Each is small and decides nothing: the
/// protocol decides, from what they read, what to write.
///
/// Ids of workflows are passed as text where a stored row's id may not parse (the
/// queue and deletions), so that such a row can still be set aside or deleted.
pub trait RowTx {
    /// The store's time, to the precision it keeps times (so that a lease reads back
    /// exactly as it was granted). Asked once the workflow's lease row was read in a
    /// write.
    ///
    /// # Errors
    /// The store's.
    fn now(&mut self) -> Result<DateTime<Utc>, RowError>;

    /// Stores `plan` unless a plan with its id is stored (plans never change).
    /// Returns `None` once stored, or the plan back, storing nothing, when its id
    /// is taken: the protocol then reads the stored plan to tell the same plan
    /// saved again from another.
    ///
    /// # Errors
    /// The store's.
    fn insert_plan(&mut self, plan: Plan) -> Result<Option<Plan>, RowError>;
    /// The plan `id`, if stored.
    ///
    /// # Errors
    /// The store's, or [`RowError::Value`] when it cannot be read.
    fn plan(&mut self, id: PlanId) -> Result<Option<Plan>, RowError>;

    /// Stores a new workflow, changed at `now`, with a free lease and no events;
    /// `queued` puts it at the back of the workers' queue. Returns `false`, storing
    /// nothing, when its id is taken.
    ///
    /// # Errors
    /// The store's.
    fn insert_workflow(&mut self, workflow: Workflow, now: DateTime<Utc>, queued: bool) -> Result<bool, RowError>;
    /// The workflow `id`, if stored.
    ///
    /// # Errors
    /// The store's, or [`RowError::Value`] when it cannot be read.
    fn workflow(&mut self, id: WorkflowId) -> Result<Option<Workflow>, RowError>;
    /// Replaces the stored workflow of `workflow`'s id, now changed at `now`. Its
    /// lease, queue place and events stay.
    ///
    /// # Errors
    /// The store's.
    fn replace_workflow(&mut self, workflow: Workflow, now: DateTime<Utc>) -> Result<(), RowError>;
    /// `query`'s page of workflows, ordered by id; a stored workflow that cannot be
    /// read is listed in [`WorkflowPage::unreadable`], not returned as an error.
    ///
    /// # Errors
    /// The store's.
    fn list_workflows(&mut self, query: &WorkflowQuery) -> Result<WorkflowPage, RowError>;

    /// Workflow `id`'s lease row, if the workflow is stored. A store that locks rows
    /// (Postgres) locks it here for the rest of a write.
    ///
    /// # Errors
    /// The store's, or [`RowError::Value`] when it cannot be read.
    fn lease(&mut self, id: WorkflowId) -> Result<Option<LeaseRow>, RowError>;
    /// Stores workflow `id`'s lease columns.
    ///
    /// # Errors
    /// The store's.
    fn store_lease(&mut self, id: WorkflowId, lease: &LeaseState) -> Result<(), RowError>;
    /// Stores a request to cancel workflow `id`; `false` when it is not stored.
    ///
    /// # Errors
    /// The store's.
    fn request_cancel(&mut self, id: WorkflowId, reason: &str) -> Result<bool, RowError>;

    /// The id of the queued workflow that has waited longest among those not set
    /// aside and in a runnable state (NOT_STARTED, IN_PROGRESS, READY_TO_RESUME) whose lease is free
    /// at `now` (never taken, released, or expired). A store that locks rows takes
    /// the row's lock here, skipping rows locked by others.
    ///
    /// # Errors
    /// The store's.
    fn next_runnable(&mut self, now: DateTime<Utc>) -> Result<Option<String>, RowError>;
    /// Marks workflow `id` set aside for `reason`: no claim chooses it (neither
    /// [`RowTx::next_runnable`] nor [`RowTx::has_queued_work`] counts it) until
    /// [`RowTx::put_back`], and [`RowTx::lease`] says so ([`LeaseRow::set_aside`]).
    /// It stays stored, and queued if it was.
    ///
    /// # Errors
    /// The store's.
    fn set_aside(&mut self, id: &str, reason: &str) -> Result<(), RowError>;
    /// Clears workflow `id`'s set-aside mark (asked only of a row whose
    /// [`LeaseRow::set_aside`] is set).
    ///
    /// # Errors
    /// The store's.
    fn put_back(&mut self, id: WorkflowId) -> Result<(), RowError>;
    /// Every workflow set aside, with its reason, in id order.
    ///
    /// # Errors
    /// The store's.
    fn set_aside_rows(&mut self) -> Result<Vec<SetAside>, RowError>;
    /// Puts stored workflow `id` at the back of the queue, as if submitted now,
    /// unless it is queued already or finished (COMPLETE or FAILED); whether it was
    /// put there.
    ///
    /// # Errors
    /// The store's.
    fn queue(&mut self, id: WorkflowId) -> Result<bool, RowError>;
    /// The reason of a cancellation requested of workflow `id`, if one was, read by
    /// [`RowStore::read`] (outside a write). This default reads [`RowTx::lease`]; a store whose
    /// `lease` locks the row for a write overrides it with a plain read.
    ///
    /// # Errors
    /// The store's.
    fn cancel_requested(&mut self, id: WorkflowId) -> Result<Option<String>, RowError> {
        Ok(self.lease(id)?.and_then(|row| row.cancel_requested))
    }
    /// Whether a queued workflow not set aside is NOT_STARTED, IN_PROGRESS or
    /// READY_TO_RESUME, whatever its lease.
    ///
    /// # Errors
    /// The store's.
    fn has_queued_work(&mut self) -> Result<bool, RowError>;

    /// The number of workflow `id`'s last stored event; 0 if it has none.
    ///
    /// # Errors
    /// The store's.
    fn last_event(&mut self, id: WorkflowId) -> Result<u64, RowError>;
    /// Stores `event` of workflow `id` (numbered by the protocol).
    ///
    /// # Errors
    /// The store's.
    fn insert_event(&mut self, id: WorkflowId, event: StoredEvent) -> Result<(), RowError>;
    /// Stores `events` of workflow `id` (numbered by the protocol, in order). This
    /// default stores each with [`RowTx::insert_event`]; a store with round trips
    /// writes them in one statement.
    ///
    /// # Errors
    /// The store's.
    fn insert_events(&mut self, id: WorkflowId, events: Vec<StoredEvent>) -> Result<(), RowError> {
        events.into_iter().try_for_each(|event| self.insert_event(id, event))
    }
    /// Workflow `id`'s events numbered after `after`, in order; `None` when the
    /// workflow is not stored.
    ///
    /// # Errors
    /// The store's, or [`RowError::Value`] when one cannot be read.
    fn events_after(&mut self, id: WorkflowId, after: u64) -> Result<Option<Vec<StoredEvent>>, RowError>;
    /// Whether workflow `id` has events numbered after `after`; `None` when the
    /// workflow is not stored. The default reads them with [`RowTx::events_after`].
    ///
    /// # Errors
    /// The store's.
    fn has_events_after(&mut self, id: WorkflowId, after: u64) -> Result<Option<bool>, RowError> {
        Ok(self.events_after(id, after)?.map(|events| !events.is_empty()))
    }

    /// Stores a journal record unless one with its key is stored; `false` when one was.
    ///
    /// # Errors
    /// The store's.
    fn insert_tool_call(&mut self, record: ToolCallRecord) -> Result<bool, RowError>;
    /// Stores a journal record, replacing the one with its key.
    ///
    /// # Errors
    /// The store's.
    fn put_tool_call(&mut self, record: ToolCallRecord) -> Result<(), RowError>;
    /// The journal record of `key`, if stored.
    ///
    /// # Errors
    /// The store's, or [`RowError::Value`] when it cannot be read.
    fn tool_call(&mut self, key: ToolCallKey) -> Result<Option<ToolCallRecord>, RowError>;
    /// Every journal record of workflow `id`, in key order.
    ///
    /// # Errors
    /// The store's, or [`RowError::Value`] when one cannot be read.
    fn tool_calls(&mut self, id: WorkflowId) -> Result<Vec<ToolCallRecord>, RowError>;

    /// Stores a usage record after the workflow's earlier ones.
    ///
    /// # Errors
    /// The store's.
    fn insert_usage(&mut self, record: UsageRecord) -> Result<(), RowError>;
    /// Every usage record of workflow `id`, oldest first.
    ///
    /// # Errors
    /// The store's, or [`RowError::Value`] when one cannot be read.
    fn usage(&mut self, id: WorkflowId) -> Result<Vec<UsageRecord>, RowError>;

    /// The ids of the workflows run for `end_user_id`.
    ///
    /// # Errors
    /// The store's.
    fn workflows_of_end_user(&mut self, end_user_id: &str) -> Result<Vec<String>, RowError>;
    /// The ids of the finished (COMPLETE or FAILED) workflows last changed before `before`.
    ///
    /// # Errors
    /// The store's.
    fn finished_before(&mut self, before: DateTime<Utc>) -> Result<Vec<String>, RowError>;
    /// Deletes workflow `id` with its events, journal and usage, and its plan when no
    /// other workflow uses it; `false` when it was not stored.
    ///
    /// # Errors
    /// The store's.
    fn delete_workflow(&mut self, id: &str) -> Result<bool, RowError>;

    /// Tells other processes, once this transaction commits, that a queued workflow
    /// may have become runnable. The default does nothing (their workers poll).
    ///
    /// # Errors
    /// The store's.
    fn announce_runnable(&mut self) -> Result<(), RowError> {
        Ok(())
    }
    /// Tells other processes, once this transaction commits, that workflow `id` has
    /// new events. The default does nothing (their waiters poll).
    ///
    /// # Errors
    /// The store's.
    fn announce_events(&mut self, id: WorkflowId) -> Result<(), RowError> {
        let _ = id;
        Ok(())
    }
}
