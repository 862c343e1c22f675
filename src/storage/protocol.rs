//! The storage protocol, written once for every [`RowStore`]: each method of
//! [`Storage`](super::Storage)'s roles is one transaction of row operations, and the decisions (the fence
//! on every write, compare-and-swap on versions, the lease rules of [`LeaseState`](super::LeaseState),
//! which queued workflow a claim takes, how events are numbered, what a delete
//! takes with it) are made here, never in a store.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::rows::{Access, LeaseRow, RowError, RowStore, RowTx};
use super::{
    Journal, Lease, LeaseGrant, LeaseHolder, LeaseQueue, LeaseStatus, PlanStore, Retention, SetAside, ToolCallRecord,
    UsageRecord, WorkflowPage, WorkflowQuery, WorkflowStore,
};
use crate::events::{StoredEvent, WorkflowEvent};
use crate::ids::{PlanId, WorkflowId};
use crate::plan::Plan;
use crate::workflow::Workflow;
use crate::{Error, Result};

type Rows<T> = std::result::Result<T, RowError>;

/// How often work undone by another caller's failure is run again.
const RERUNS: usize = 3;

/// Runs the work `make` makes in one transaction of `store`; `what` says, should it
/// fail, what was being done (worded only then). Work that succeeded but was undone
/// with a transaction it shared with a failing caller's is made again and run in
/// another. `make` is told whether this is the last run it makes work for: the
/// only one, for a store whose transactions stand alone.
async fn run<S, T, W>(
    store: &S,
    access: Access,
    what: impl FnOnce() -> String + Send,
    make: impl Fn(bool) -> W + Send,
) -> Result<T>
where
    S: RowStore + ?Sized,
    T: Send + 'static,
    W: FnOnce(&mut dyn RowTx) -> Rows<T> + Send + 'static,
{
    let mut reruns = if store.shares_transactions() { RERUNS } else { 0 };
    loop {
        match store.transaction(access, Box::new(make(reruns == 0))).await {
            Err(error) if reruns > 0 && error.is_rolled_back() => reruns -= 1,
            outcome => return outcome.map_err(|error| store.describe(&what(), error)),
        }
    }
}

/// Makes `work` for each run: a copy while another run may follow, then `work` itself.
fn again<T, W>(work: W) -> impl Fn(bool) -> W + Send
where
    W: FnOnce(&mut dyn RowTx) -> Rows<T> + Clone + Send,
{
    let kept = std::sync::Mutex::new(Some(work));
    move |last| {
        let mut kept = kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // `run` makes no work after the last.
        let work = if last { kept.take() } else { kept.clone() };
        work.expect("no work is made after the last run")
    }
}

/// Runs `work`, a read that needs no snapshot, as `store` reads cheapest
/// ([`RowStore::read`]); `what` as for [`run`].
async fn read<S, T>(
    store: &S,
    what: impl FnOnce() -> String + Send,
    work: impl FnOnce(&mut dyn RowTx) -> Rows<T> + Send + 'static,
) -> Result<T>
where
    S: RowStore + ?Sized,
    T: Send + 'static,
{
    store.read(Box::new(work)).await.map_err(|error| store.describe(&what(), error))
}

/// Whether workflow `id` has events numbered after `after`.
pub(super) async fn has_events_after<S: RowStore + ?Sized>(store: &S, id: WorkflowId, after: u64) -> Result<bool> {
    let what = || format!("cannot read the events of workflow {id}");
    read(store, what, move |tx| Ok(tx.has_events_after(id, after)?.ok_or(Error::WorkflowNotFound(id))?)).await
}

#[async_trait::async_trait]
impl<S: RowStore> PlanStore for S {
    async fn save_plan(&self, plan: &Plan) -> Result<()> {
        let id = plan.id;
        // Workflows run the stored plan, so a different plan under a stored id would
        // be ignored without a word.
        let work = |_| {
            let plan = plan.clone();
            move |tx: &mut dyn RowTx| match tx.insert_plan(plan)? {
                None => Ok(()),
                Some(plan) if tx.plan(plan.id)?.is_some_and(|stored| stored == plan) => Ok(()),
                Some(plan) => Err(RowError::Refused(Error::PlanIdTaken(plan.id))),
            }
        };
        run(self, Access::Write, || format!("cannot save plan {id}"), work).await
    }

    async fn get_plan(&self, id: PlanId) -> Result<Plan> {
        let what = || format!("cannot load plan {id}");
        read(self, what, move |tx| Ok(tx.plan(id)?.ok_or(Error::PlanNotFound(id))?)).await
    }
}

#[async_trait::async_trait]
impl<S: RowStore> WorkflowStore for S {
    async fn create_workflow(&self, workflow: &Workflow) -> Result<()> {
        let id = workflow.id();
        let work = |_| {
            let workflow = workflow.clone();
            move |tx: &mut dyn RowTx| insert(tx, workflow, false)
        };
        run(self, Access::Write, || format!("cannot create workflow {id}"), work).await
    }

    async fn submit_workflow(&self, workflow: &Workflow) -> Result<()> {
        let id = workflow.id();
        let work = |_| {
            let workflow = workflow.clone();
            move |tx: &mut dyn RowTx| insert(tx, workflow, true)
        };
        run(self, Access::Write, || format!("cannot submit workflow {id}"), work).await?;
        self.runnable_changed();
        Ok(())
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Workflow> {
        let what = || format!("cannot load workflow {id}");
        read(self, what, move |tx| Ok(tx.workflow(id)?.ok_or(Error::WorkflowNotFound(id))?)).await
    }

    async fn list_workflows(&self, query: &WorkflowQuery) -> Result<WorkflowPage> {
        let query = query.clone();
        run(self, Access::Read, || "cannot list workflows".to_owned(), again(move |tx| tx.list_workflows(&query))).await
    }

    async fn update_workflow(&self, workflow: &Workflow, lease: &Lease, events: &[WorkflowEvent]) -> Result<()> {
        save(self, workflow, lease, events, false).await
    }

    async fn events(&self, id: WorkflowId, after: u64) -> Result<Vec<StoredEvent>> {
        let what = || format!("cannot read the events of workflow {id}");
        read(self, what, move |tx| Ok(tx.events_after(id, after)?.ok_or(Error::WorkflowNotFound(id))?)).await
    }

    async fn wait_for_events(&self, id: WorkflowId, after: u64, timeout: Duration) -> Result<bool> {
        self.watch_events(id, after, timeout).await
    }
}

#[async_trait::async_trait]
impl<S: RowStore> LeaseQueue for S {
    async fn acquire_lease(&self, id: WorkflowId, owner: &str, ttl: Duration) -> Result<LeaseGrant> {
        let owner = owner.to_owned();
        let what = || format!("cannot take the lease of workflow {id}");
        run(self, Access::Write, what, again(move |tx| grant(tx, id, &owner, ttl))).await
    }

    async fn create_leased(&self, workflow: &Workflow, owner: &str, ttl: Duration) -> Result<LeaseGrant> {
        let id = workflow.id();
        let work = |_| {
            let (workflow, owner) = (workflow.clone(), owner.to_owned());
            move |tx: &mut dyn RowTx| {
                insert(tx, workflow.clone(), false)?;
                let row = tx.lease(id)?.ok_or(Error::WorkflowNotFound(id))?;
                let now = tx.now()?;
                lease_for(tx, row, workflow, &owner, ttl, now)
            }
        };
        run(self, Access::Write, || format!("cannot create workflow {id}"), work).await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<LeaseStatus> {
        let (id, lease) = (lease.workflow_id, lease.clone());
        let what = || format!("cannot renew the lease of workflow {id}");
        run(
            self,
            Access::Write,
            what,
            again(move |tx| {
                let row = tx.lease(id)?.ok_or(Error::LeaseLost { workflow_id: id })?;
                let now = tx.now()?;
                let next = row.lease.renew(&lease, ttl, now)?;
                tx.store_lease(id, &next)?;
                Ok(LeaseStatus { expires_at: next.expires_at.unwrap_or(now), cancel_requested: row.cancel_requested })
            }),
        )
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let (id, lease) = (lease.workflow_id, lease.clone());
        let what = || format!("cannot release the lease of workflow {id}");
        run(
            self,
            Access::Write,
            what,
            again(move |tx| {
                // A lease already lost is left alone; releasing it changes nothing.
                if let Some(row) = tx.lease(id)? {
                    tx.store_lease(id, &row.lease.release(&lease))?;
                    tx.announce_runnable()?;
                }
                Ok(())
            }),
        )
        .await?;
        self.runnable_changed();
        Ok(())
    }

    async fn update_and_release(&self, workflow: &Workflow, lease: &Lease, events: &[WorkflowEvent]) -> Result<()> {
        save(self, workflow, lease, events, true).await
    }

    async fn lease_holder(&self, id: WorkflowId) -> Result<Option<LeaseHolder>> {
        let what = || format!("cannot read the lease of workflow {id}");
        read(self, what, move |tx| {
            let row = tx.lease(id)?.ok_or(Error::WorkflowNotFound(id))?;
            Ok(row.lease.holder(tx.now()?))
        })
        .await
    }

    async fn set_aside(&self, lease: &Lease, reason: &str) -> Result<()> {
        let (id, lease, reason) = (lease.workflow_id, lease.clone(), reason.to_owned());
        let what = || format!("cannot set workflow {id} aside");
        run(
            self,
            Access::Write,
            what,
            again(move |tx| {
                // A lease already lost is left alone: its new holder decides.
                if let Some(row) = tx.lease(id)?
                    && row.lease.was_granted(&lease)
                {
                    tx.store_lease(id, &row.lease.release(&lease))?;
                    tx.set_aside(&id.to_string(), &reason)?;
                }
                Ok(())
            }),
        )
        .await
    }

    async fn put_back(&self, id: WorkflowId) -> Result<bool> {
        let what = || format!("cannot put workflow {id} back");
        let put = run(
            self,
            Access::Write,
            what,
            again(move |tx| {
                let row = tx.lease(id)?.ok_or(Error::WorkflowNotFound(id))?;
                if row.set_aside {
                    tx.put_back(id)?;
                    tx.announce_runnable()?;
                }
                Ok(row.set_aside)
            }),
        )
        .await?;
        if put {
            self.runnable_changed();
        }
        Ok(put)
    }

    async fn queue(&self, id: WorkflowId) -> Result<bool> {
        let queue = again(move |tx| {
            let row = tx.lease(id)?.ok_or(Error::WorkflowNotFound(id))?;
            let queued = tx.queue(id)?;
            // One set aside is not for the workers until it is put back.
            let claimable = queued && !row.set_aside;
            if claimable {
                tx.announce_runnable()?;
            }
            Ok((queued, claimable))
        });
        let (queued, claimable) = run(self, Access::Write, || format!("cannot queue workflow {id}"), queue).await?;
        if claimable {
            self.runnable_changed();
        }
        Ok(queued)
    }

    async fn set_aside_workflows(&self) -> Result<Vec<SetAside>> {
        read(self, || "cannot list the workflows set aside".to_owned(), |tx| tx.set_aside_rows()).await
    }

    async fn claim_runnable(&self, owner: &str, ttl: Duration) -> Result<Option<LeaseGrant>> {
        let owner = owner.to_owned();
        run(
            self,
            Access::Write,
            || "cannot claim a runnable workflow".to_owned(),
            again(move |tx| claim(tx, &owner, ttl)),
        )
        .await
    }

    async fn wait_for_runnable(&self, timeout: Duration) {
        self.watch_runnable(timeout).await;
    }

    async fn cancel_requests(&self, ids: &[WorkflowId]) -> Result<Vec<(WorkflowId, String)>> {
        let ids = ids.to_vec();
        read(
            self,
            || "cannot read cancellation requests".to_owned(),
            move |tx| {
                let mut requested = Vec::new();
                for id in ids {
                    if let Some(reason) = tx.cancel_requested(id)? {
                        requested.push((id, reason));
                    }
                }
                Ok(requested)
            },
        )
        .await
    }

    async fn has_queued_work(&self) -> Result<bool> {
        read(self, || "cannot look at the queue".to_owned(), |tx| tx.has_queued_work()).await
    }

    async fn request_cancel(&self, id: WorkflowId, reason: &str) -> Result<()> {
        let reason = reason.to_owned();
        let what = || format!("cannot request the cancellation of workflow {id}");
        run(
            self,
            Access::Write,
            what,
            again(
                move |tx| {
                    if tx.request_cancel(id, &reason)? { Ok(()) } else { Err(Error::WorkflowNotFound(id).into()) }
                },
            ),
        )
        .await
    }
}

#[async_trait::async_trait]
impl<S: RowStore> Journal for S {
    async fn begin_tool_call(&self, lease: &Lease, intent: &ToolCallRecord) -> Result<Option<ToolCallRecord>> {
        let key = intent.key;
        let work = |_| {
            let (lease, intent) = (lease.clone(), intent.clone());
            move |tx: &mut dyn RowTx| {
                fence(tx, &lease, key.workflow_id)?;
                if tx.insert_tool_call(intent)? {
                    return Ok(None);
                }
                let earlier = tx.tool_call(key)?;
                earlier
                    .map(Some)
                    .ok_or_else(|| RowError::value(format!("tool call {key} is journaled but cannot be read")))
            }
        };
        run(self, Access::Write, || format!("cannot journal tool call {key}"), work).await
    }

    async fn finish_tool_call(&self, lease: &Lease, record: &ToolCallRecord) -> Result<()> {
        let key = record.key;
        let what = || format!("cannot journal the outcome of tool call {key}");
        let work = |_| {
            let (lease, record) = (lease.clone(), record.clone());
            move |tx: &mut dyn RowTx| {
                fence(tx, &lease, key.workflow_id)?;
                tx.put_tool_call(record)
            }
        };
        run(self, Access::Write, what, work).await
    }

    async fn tool_calls(&self, id: WorkflowId) -> Result<Vec<ToolCallRecord>> {
        let what = || format!("cannot read the tool calls of workflow {id}");
        read(self, what, move |tx| tx.tool_calls(id)).await
    }

    async fn record_usage(&self, lease: &Lease, record: &UsageRecord) -> Result<()> {
        let id = record.workflow_id;
        let work = |_| {
            let (lease, record) = (lease.clone(), record.clone());
            move |tx: &mut dyn RowTx| {
                fence(tx, &lease, id)?;
                tx.insert_usage(record)
            }
        };
        run(self, Access::Write, || format!("cannot journal the usage of workflow {id}"), work).await
    }

    async fn usage_records(&self, id: WorkflowId) -> Result<Vec<UsageRecord>> {
        let what = || format!("cannot read the usage of workflow {id}");
        read(self, what, move |tx| tx.usage(id)).await
    }
}

#[async_trait::async_trait]
impl<S: RowStore> Retention for S {
    async fn delete_workflow(&self, id: WorkflowId) -> Result<()> {
        let what = || format!("cannot delete workflow {id}");
        run(self, Access::Write, what, again(move |tx| tx.delete_workflow(&id.to_string()).map(drop))).await
    }

    async fn delete_end_user(&self, end_user_id: &str) -> Result<usize> {
        let user = end_user_id.to_owned();
        let what = || format!("cannot delete the workflows of end user {end_user_id:?}");
        run(
            self,
            Access::Write,
            what,
            again(move |tx| {
                let ids = tx.workflows_of_end_user(&user)?;
                delete_all(tx, &ids)
            }),
        )
        .await
    }

    async fn prune_finished(&self, before: DateTime<Utc>) -> Result<usize> {
        let what = || format!("cannot prune workflows finished before {before}");
        let deleted = run(
            self,
            Access::Write,
            what,
            again(move |tx| {
                let ids = tx.finished_before(before)?;
                delete_all(tx, &ids)
            }),
        )
        .await?;
        if deleted > 0 {
            self.reclaim_space(deleted).await?;
        }
        Ok(deleted)
    }
}

/// Saves `workflow` under `lease` with `events` in one transaction, and gives the
/// lease up in it too when `release`.
async fn save<S: RowStore + ?Sized>(
    store: &S,
    workflow: &Workflow,
    lease: &Lease,
    events: &[WorkflowEvent],
    release: bool,
) -> Result<()> {
    let id = workflow.id();
    let work = |_| {
        let (new, lease, stored) = (workflow.clone(), lease.clone(), events.to_vec());
        move |tx: &mut dyn RowTx| {
            let fenced = update(tx, new, &lease, stored)?;
            if release {
                tx.store_lease(id, &fenced.lease.release(&lease))?;
                tx.announce_runnable()?;
            }
            Ok(())
        }
    };
    run(store, Access::Write, || format!("cannot save workflow {id}"), work).await?;
    store.workflow_saved(workflow, !events.is_empty());
    if release {
        store.runnable_changed();
    }
    Ok(())
}

/// Stores a new workflow (at the back of the queue when `queued`), unless its id is taken.
fn insert(tx: &mut dyn RowTx, workflow: Workflow, queued: bool) -> Rows<()> {
    let id = workflow.id();
    let now = tx.now()?;
    if !tx.insert_workflow(workflow, now, queued)? {
        let found = tx.lease(id)?.map_or(0, |row| row.version);
        return Err(Error::VersionConflict { workflow_id: id, expected: 0, found }.into());
    }
    if queued {
        tx.announce_runnable()?;
    }
    Ok(())
}

/// Replaces a workflow whose stored version is one less, fenced on `lease`, and
/// stores `events` numbered after its earlier ones. Returns the row as fenced.
fn update(tx: &mut dyn RowTx, workflow: Workflow, lease: &Lease, events: Vec<WorkflowEvent>) -> Rows<LeaseRow> {
    let id = workflow.id();
    let (row, now) = fence(tx, lease, lease.workflow_id)?;
    let expected = workflow.version().saturating_sub(1);
    if lease.workflow_id != id || row.version != expected {
        return Err(Error::VersionConflict { workflow_id: id, expected, found: row.version }.into());
    }
    tx.replace_workflow(workflow, now)?;
    if !events.is_empty() {
        let last = tx.last_event(id)?;
        let numbered = (last + 1..).zip(events).map(|(seq, event)| StoredEvent { seq, event }).collect();
        tx.insert_events(id, numbered)?;
        tx.announce_events(id)?;
    }
    Ok(row)
}

/// Refuses a write to workflow `target` unless `lease` is its current lease. Returns
/// its row and the store's time, read once the row was (locked and) read.
fn fence(tx: &mut dyn RowTx, lease: &Lease, target: WorkflowId) -> Rows<(LeaseRow, DateTime<Utc>)> {
    let lost = || Error::LeaseLost { workflow_id: lease.workflow_id };
    // A lease covers its own workflow only.
    if target != lease.workflow_id {
        return Err(lost().into());
    }
    let row = tx.lease(target)?.ok_or_else(lost)?;
    let now = tx.now()?;
    row.lease.check_fence(lease, now)?;
    Ok((row, now))
}

/// Takes the lease of workflow `id` for `owner` by the rules of [`LeaseState`](super::LeaseState),
/// at the store's time once the row is read.
fn grant(tx: &mut dyn RowTx, id: WorkflowId, owner: &str, ttl: Duration) -> Rows<LeaseGrant> {
    let row = tx.lease(id)?.ok_or(Error::WorkflowNotFound(id))?;
    let now = tx.now()?;
    let workflow = tx.workflow(id)?.ok_or(Error::WorkflowNotFound(id))?;
    let set_aside = row.set_aside;
    let grant = lease_for(tx, row, workflow, owner, ttl, now)?;
    if set_aside {
        tx.put_back(id)?;
    }
    Ok(grant)
}

/// Takes the lease of `workflow`, stored with `row`, for `owner` at `now`.
fn lease_for(
    tx: &mut dyn RowTx,
    row: LeaseRow,
    workflow: Workflow,
    owner: &str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Rows<LeaseGrant> {
    let (next, lease, reclaimed) = row.lease.acquire(&workflow, owner, ttl, now)?;
    tx.store_lease(workflow.id(), &next)?;
    Ok(LeaseGrant { lease, workflow, reclaimed, attempts: next.attempts, cancel_requested: row.cancel_requested })
}

/// Takes the lease of the queued runnable workflow that has waited longest. A row
/// that cannot be read is set aside, so it never blocks the others.
fn claim(tx: &mut dyn RowTx, owner: &str, ttl: Duration) -> Rows<Option<LeaseGrant>> {
    // One time for the whole claim: the candidates are chosen by it.
    let now = tx.now()?;
    while let Some(raw) = tx.next_runnable(now)? {
        match claim_queued(tx, &raw, owner, ttl, now) {
            Ok(Some(grant)) => return Ok(Some(grant)),
            Ok(None) => {}
            Err(fail) => {
                let why = fail.unreadable().ok_or(fail)?.replace('\n', " ");
                tx.set_aside(&raw, &why)?;
                log_set_aside(&raw, &why);
            }
        }
    }
    Ok(None)
}

/// Takes the lease of queued workflow `raw` at `now`. `None` when its body says it
/// is finished or waiting for a human although its row was chosen as runnable (its
/// state column was edited): the row is written again from its body, which puts
/// the column right, so that no claim chooses it again.
fn claim_queued(
    tx: &mut dyn RowTx,
    raw: &str,
    owner: &str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Rows<Option<LeaseGrant>> {
    let id = raw.parse::<WorkflowId>().map_err(|e| RowError::value(format!("workflow id {raw:?}: {e}")))?;
    let row = tx.lease(id)?.ok_or(Error::WorkflowNotFound(id))?;
    let workflow = tx.workflow(id)?.ok_or(Error::WorkflowNotFound(id))?;
    if !workflow.state().is_runnable() {
        tracing::warn!(
            workflow = %id,
            state = %workflow.state(),
            "a queued workflow's stored state disagreed with its body; its row is written again from the body"
        );
        tx.replace_workflow(workflow, now)?;
        return Ok(None);
    }
    lease_for(tx, row, workflow, owner, ttl, now).map(Some)
}

/// Deletes each workflow of `ids` with what belongs to it; returns how many there were.
fn delete_all(tx: &mut dyn RowTx, ids: &[String]) -> Rows<usize> {
    for id in ids {
        tx.delete_workflow(id)?;
    }
    Ok(ids.len())
}

/// Says, once per row, that a queued workflow that cannot be read was set aside, so
/// that the workers go on with the others.
fn log_set_aside(id: &str, why: &str) {
    tracing::warn!(
        workflow = %id,
        error = %why,
        "a queued workflow cannot be read and was set aside; `portia list` shows it, `portia put-back` hands it back \
         once fixed, `portia delete` removes it"
    );
}
