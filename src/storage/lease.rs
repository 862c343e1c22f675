//! Leases: a run's exclusive, expiring right to change one workflow.
//!
//! The protocol is the same in every store; the stores only keep its state. A run
//! acquires a lease (owner, a fresh epoch, an expiry on the store's clock) and renews
//! it while it runs; every write it makes names the lease, and the store refuses the
//! write unless that lease is still the current, unexpired one. A lease that expired
//! without being released means its run died: the workflow may be taken over, and
//! the takeover counts as an attempt.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::WorkflowId;
use crate::workflow::Workflow;
use crate::{Error, Result};

/// A run's hold on a workflow. Every write the run makes is fenced on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Lease {
    /// The workflow held.
    pub workflow_id: WorkflowId,
    /// Who holds it (one id per runner).
    pub owner: String,
    /// Grows by one with every acquisition; a write with an older epoch is refused.
    pub epoch: u64,
    /// When it lapses unless renewed, on the store's clock.
    pub expires_at: DateTime<Utc>,
}

/// What [`LeaseQueue::acquire_lease`](super::LeaseQueue::acquire_lease) grants.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LeaseGrant {
    /// The lease now held.
    pub lease: Lease,
    /// The workflow as stored when the lease was granted.
    pub workflow: Workflow,
    /// Whether an earlier run's lease had expired without being released (its run died).
    pub reclaimed: bool,
    /// How many times the workflow has been taken over from a run that died.
    pub attempts: u32,
    /// The reason of a cancellation someone requested, if any.
    pub cancel_requested: Option<String>,
}

impl LeaseGrant {
    /// The grant of `lease` on `workflow` as stored; `reclaimed` when a dead run's
    /// lease was taken over, `attempts` takeovers so far, and any cancellation
    /// someone requested.
    pub fn new(
        lease: Lease,
        workflow: Workflow,
        reclaimed: bool,
        attempts: u32,
        cancel_requested: Option<String>,
    ) -> Self {
        Self { lease, workflow, reclaimed, attempts, cancel_requested }
    }
}

/// What a renewal reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseStatus {
    /// The new expiry.
    pub expires_at: DateTime<Utc>,
    /// The reason of a cancellation someone requested, if any.
    pub cancel_requested: Option<String>,
}

impl LeaseStatus {
    /// A lease now lapsing at `expires_at`, and any cancellation someone requested.
    pub fn new(expires_at: DateTime<Utc>, cancel_requested: Option<String>) -> Self {
        Self { expires_at, cancel_requested }
    }
}

/// The run that holds a workflow's lease now: see
/// [`LeaseQueue::lease_holder`](super::LeaseQueue::lease_holder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LeaseHolder {
    /// Who holds it: `prefix@host:pidns:pid` for a run of this crate's runners.
    pub owner: String,
    /// When it lapses unless renewed, on the store's clock.
    pub until: DateTime<Utc>,
}

impl LeaseHolder {
    /// `owner`, holding the lease until `until`.
    pub fn new(owner: impl Into<String>, until: DateTime<Utc>) -> Self {
        Self { owner: owner.into(), until }
    }
}

/// A workflow no worker claims until it is put back, because its run, or a claim,
/// met a stored value it cannot read: see
/// [`LeaseQueue::set_aside`](super::LeaseQueue::set_aside).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SetAside {
    /// The workflow's id, as stored: a row whose body cannot be read may also have
    /// an id that does not parse.
    pub workflow_id: String,
    /// Why it was set aside: what could not be read, and the parser's error.
    pub reason: String,
    /// Whether it was submitted for the workers: put back, a worker takes it.
    pub queued: bool,
}

impl SetAside {
    /// Workflow `workflow_id`, set aside for `reason`, submitted for the workers if `queued`.
    pub fn new(workflow_id: impl Into<String>, reason: impl Into<String>, queued: bool) -> Self {
        Self { workflow_id: workflow_id.into(), reason: reason.into(), queued }
    }
}

/// The lease columns a store keeps beside each workflow, and the protocol's
/// decisions on them. A [`RowStore`](super::RowStore) only keeps these four values
/// (the shared protocol decides acquisitions, fences, renewals and releases with
/// these methods); a store that implements [`Storage`](super::Storage) itself
/// decides with them too, inside one transaction of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseState {
    /// Who holds, or last held, the lease; `None` once released (or never taken).
    pub owner: Option<String>,
    /// The epoch of the last lease granted; 0 before the first.
    pub epoch: u64,
    /// When the current lease lapses, on the store's clock.
    pub expires_at: Option<DateTime<Utc>>,
    /// How many times the workflow was taken over from a run that died.
    pub attempts: u32,
}

impl LeaseState {
    /// The lease columns as a store reads them back.
    pub fn new(owner: Option<String>, epoch: u64, expires_at: Option<DateTime<Utc>>, attempts: u32) -> Self {
        Self { owner, epoch, expires_at, attempts }
    }

    /// Takes the lease for `owner` unless a live lease is held, counting a takeover
    /// from a run that died. A lease whose holder was a process of this machine that
    /// is gone (killed, say) counts as lapsed at once: see [`local_owner`]. The caller stores the returned state and grants the
    /// lease; the `bool` says whether a dead run's lease was taken over.
    ///
    /// # Errors
    /// [`Error::InvalidWorkflowState`] for a finished workflow,
    /// [`Error::AlreadyRunning`] while a live lease is held.
    pub fn acquire(
        &self,
        workflow: &Workflow,
        owner: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<(LeaseState, Lease, bool)> {
        if workflow.state().is_terminal() {
            return Err(workflow.invalid_state("execute it"));
        }
        if let Some(LeaseHolder { owner: holder, until }) = self.holder(now) {
            return Err(Error::AlreadyRunning { workflow_id: workflow.id(), owner: holder, until });
        }
        let reclaimed = self.owner.is_some();
        let expires_at = later(now, ttl);
        let next = LeaseState {
            owner: Some(owner.to_owned()),
            epoch: self.epoch + 1,
            expires_at: Some(expires_at),
            attempts: self.attempts + u32::from(reclaimed),
        };
        let lease = Lease { workflow_id: workflow.id(), owner: owner.to_owned(), epoch: next.epoch, expires_at };
        Ok((next, lease, reclaimed))
    }

    /// The live lease's holder at `now`: `None` when no live lease is held, or when
    /// its holder was a process of this machine that is gone (see [`local_owner`]).
    pub fn holder(&self, now: DateTime<Utc>) -> Option<LeaseHolder> {
        match (self.is_free(now), &self.owner, self.expires_at) {
            (false, Some(owner), Some(until)) if !holder_is_gone(owner) => Some(LeaseHolder::new(owner, until)),
            _ => None,
        }
    }

    /// Whether no live lease is held: never taken, released, or expired.
    pub fn is_free(&self, now: DateTime<Utc>) -> bool {
        self.owner.is_none() || self.expires_at.is_none_or(|until| until <= now)
    }

    /// Refuses a write unless `lease` is the current, unexpired one.
    ///
    /// # Errors
    /// [`Error::LeaseLost`].
    pub fn check_fence(&self, lease: &Lease, now: DateTime<Utc>) -> Result<()> {
        if self.was_granted(lease) && self.expires_at.is_some_and(|until| until > now) {
            Ok(())
        } else {
            Err(Error::LeaseLost { workflow_id: lease.workflow_id })
        }
    }

    /// Extends a current lease by `ttl` from `now`.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] unless `lease` is current.
    pub fn renew(&self, lease: &Lease, ttl: Duration, now: DateTime<Utc>) -> Result<LeaseState> {
        self.check_fence(lease, now)?;
        Ok(LeaseState { expires_at: Some(later(now, ttl)), ..self.clone() })
    }

    /// Gives a current lease up, so the workflow can be taken at once and the next
    /// run does not count as a takeover. Releasing a lease already lost does nothing.
    pub fn release(&self, lease: &Lease) -> LeaseState {
        if self.was_granted(lease) {
            LeaseState { owner: None, expires_at: None, ..self.clone() }
        } else {
            self.clone()
        }
    }

    /// Whether this is the state `lease` was granted in and no one has taken it
    /// since (it may have expired).
    pub(crate) fn was_granted(&self, lease: &Lease) -> bool {
        self.owner.as_deref() == Some(lease.owner.as_str()) && self.epoch == lease.epoch
    }
}

fn later(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(ttl).ok().and_then(|ttl| now.checked_add_signed(ttl)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A lease owner name for a run of this process: `prefix@host:pidns:pid` (just
/// `prefix` where the system does not say which host and process namespace this is).
/// A lease it holds is taken over at once, rather than when it expires, by a run on
/// the same host and in the same process namespace that finds this process gone
/// (Linux; worker claims still wait for the expiry).
pub fn local_owner(prefix: &str) -> String {
    match process_space() {
        Some(space) => format!("{prefix}@{space}:{}", std::process::id()),
        None => prefix.to_owned(),
    }
}

/// Whether `owner` (as [`local_owner`] names it) was a process of this host and
/// process namespace that no longer runs. A holder elsewhere (another host, another
/// container), this process, or a name of another form, is never judged gone.
fn holder_is_gone(owner: &str) -> bool {
    let Some((space, pid)) = owner.rsplit_once(':') else { return false };
    let (Some((_, space)), Ok(pid)) = (space.split_once('@'), pid.parse::<u32>()) else { return false };
    Some(space) == process_space().as_deref()
        && pid != std::process::id()
        && !std::path::Path::new("/proc").join(pid.to_string()).exists()
}

/// Where this process's pids are meaningful: its host and its pid namespace (two
/// containers may share a host name, never a pid namespace), as `host:namespace`.
fn process_space() -> Option<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let host = host.trim();
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let namespace = namespace.to_str()?.trim_start_matches("pid:[").trim_end_matches(']');
    let clean = |part: &str| !part.is_empty() && !part.contains([':', '@']);
    (clean(host) && clean(namespace)).then(|| format!("{host}:{namespace}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_holder_is_gone_only_when_it_was_a_process_of_this_host_that_ended() {
        let space = process_space().expect("Linux names its host and pid namespace in /proc");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(holder_is_gone(&format!("runner-1@{space}:{pid}")));
        assert!(!holder_is_gone(&local_owner("runner-2")), "this process runs");
        assert!(!holder_is_gone(&format!("runner-3@another-{space}:{pid}")), "another host is never judged");
        let (host, _) = space.split_once(':').unwrap();
        assert!(!holder_is_gone(&format!("runner-3@{host}:1:{pid}")), "another pid namespace is never judged");
        assert!(!holder_is_gone("runner-4"));
        assert!(!holder_is_gone("runner-4:12"));
    }
}
