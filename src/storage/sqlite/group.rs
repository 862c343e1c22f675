//! Group commit: the transactions of concurrent callers share one synced commit.
//!
//! Each call queues its work; one blocking thread at a time runs the queue, started
//! by the call that found none running. It takes every job queued so far, runs each
//! in a savepoint of its own (a failing job undoes only its own writes) inside one
//! transaction, commits once, and only then hands each caller its outcome: no caller
//! acts on a write before it is on disk, and the cost of the sync is shared by all
//! the runs that wrote meanwhile. It stops once the queue is empty.
//!
//! A failure that ends the whole transaction (SQLite does so on a full disk or an
//! I/O error) fails only the job that caused it: the others are told they were
//! rolled back, and the protocol runs them again in another transaction.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, PoisonError};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{Clock, DbResult, Rows};
use crate::storage::rows::{Access, RowError, Work};

/// The most jobs one transaction takes, so that one commit does not keep the
/// first caller of a long queue waiting for all the others.
const MOST_PER_COMMIT: usize = 256;

/// Makes the error each caller of a failed shared transaction gets.
type ErrorFor<'a> = &'a dyn Fn() -> RowError;

/// A caller's transaction, waiting for the connection.
pub(super) trait Pending: Send {
    /// Whether it may write.
    fn writes(&self) -> bool;
    /// Runs it; its outcome is handed over later, by [`Ran::deliver`].
    fn run(self: Box<Self>, conn: &Connection, clock: &dyn Clock) -> Box<dyn Ran>;
    /// Hands its caller `error` without running it.
    fn fail(self: Box<Self>, error: RowError);
}

/// A job that ran, its outcome held until the shared commit is known.
pub(super) trait Ran: Send {
    /// Whether its work failed (and its writes were undone).
    fn failed(&self) -> bool;
    /// Hands its caller the outcome: its own, or, when its work succeeded but the
    /// transaction it shared did not commit, the error `commit` makes.
    fn deliver(self: Box<Self>, commit: Result<(), ErrorFor<'_>>);
}

/// `work`, and where its outcome goes.
pub(super) struct Job<T> {
    access: Access,
    work: Work<T>,
    reply: oneshot::Sender<DbResult<T>>,
}

impl<T: Send + 'static> Job<T> {
    /// A job of `work`, and where its caller receives the outcome.
    pub(super) fn queued(access: Access, work: Work<T>) -> (Box<dyn Pending>, oneshot::Receiver<DbResult<T>>) {
        let (reply, outcome) = oneshot::channel();
        (Box::new(Self { access, work, reply }), outcome)
    }
}

impl<T: Send + 'static> Pending for Job<T> {
    fn writes(&self) -> bool {
        self.access != Access::Read
    }

    fn run(self: Box<Self>, conn: &Connection, clock: &dyn Clock) -> Box<dyn Ran> {
        let Self { work, reply, .. } = *self;
        // A panicking job fails alone, not the thread that runs everyone's.
        let outcome = catch_unwind(AssertUnwindSafe(|| work(&mut Rows { tx: conn, clock })))
            .unwrap_or_else(|_| Err(RowError::store(std::io::Error::other("the storage work panicked"))));
        Box::new(Outcome { outcome, reply })
    }

    fn fail(self: Box<Self>, error: RowError) {
        // The caller may have stopped waiting; then nobody takes the outcome.
        let _ = self.reply.send(Err(error));
    }
}

/// A job's outcome, held until the commit.
struct Outcome<T> {
    outcome: DbResult<T>,
    reply: oneshot::Sender<DbResult<T>>,
}

impl<T: Send + 'static> Ran for Outcome<T> {
    fn failed(&self) -> bool {
        self.outcome.is_err()
    }

    fn deliver(self: Box<Self>, commit: Result<(), ErrorFor<'_>>) {
        let outcome = match (self.outcome, commit) {
            (Ok(_), Err(error)) => Err(error()),
            (outcome, _) => outcome,
        };
        let _ = self.reply.send(outcome);
    }
}

/// The jobs waiting for the connection, and whether a thread is running them.
#[derive(Default)]
pub(super) struct Queue(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    jobs: Vec<Box<dyn Pending>>,
    running: bool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Queue").field("jobs", &waiting.jobs.len()).field("running", &waiting.running).finish()
    }
}

impl Queue {
    /// Queues `job`. Returns `true` when no thread is running the queue: the caller
    /// must start one (with [`Queue::run`]); otherwise the running one takes it.
    pub(super) fn push(&self, job: Box<dyn Pending>) -> bool {
        let mut waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.jobs.push(job);
        !std::mem::replace(&mut waiting.running, true)
    }

    /// How many jobs are waiting.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).jobs.len()
    }

    /// Up to [`MOST_PER_COMMIT`] jobs, oldest first; none (and the queue marked as
    /// not running, under the same lock) when it is empty.
    fn take(&self) -> Vec<Box<dyn Pending>> {
        let mut waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.jobs.is_empty() {
            waiting.running = false;
        }
        let taken = waiting.jobs.len().min(MOST_PER_COMMIT);
        let rest = waiting.jobs.split_off(taken);
        std::mem::replace(&mut waiting.jobs, rest)
    }

    /// Fails every queued job and marks the queue as not running: for a thread that
    /// was to run it but never did (its runtime shut down first).
    pub(super) fn abandon(&self) {
        let jobs = {
            let mut waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            waiting.running = false;
            std::mem::take(&mut waiting.jobs)
        };
        fail_all(jobs, &|| RowError::store(std::io::Error::other("the storage thread stopped before it ran this")));
    }

    /// Runs the queued jobs on `conn` (held by the caller) in shared transactions,
    /// until the queue is empty. `usable` says first whether the file may be used,
    /// and makes the error of each job when not.
    pub(super) fn run(&self, conn: &Connection, clock: &dyn Clock, usable: impl Fn() -> DbResult<()>) {
        loop {
            let jobs = self.take();
            if jobs.is_empty() {
                return;
            }
            if usable().is_err() {
                jobs.into_iter().for_each(|job| job.fail(usable().err().unwrap_or_else(aborted)));
                continue;
            }
            commit_together(conn, clock, jobs);
        }
    }
}

fn fail_all(jobs: Vec<Box<dyn Pending>>, error: ErrorFor<'_>) {
    for job in jobs {
        job.fail(error());
    }
}

/// Why a shared transaction cannot commit.
enum Broken {
    /// A statement of the batch itself failed.
    Sql(rusqlite::Error),
    /// A job's failure ended the transaction (SQLite does so on a full disk or an
    /// I/O error).
    Ended,
}

/// Runs `jobs` in one transaction, each in a savepoint, commits, and delivers.
fn commit_together(conn: &Connection, clock: &dyn Clock, jobs: Vec<Box<dyn Pending>>) {
    let begin = if jobs.iter().any(|job| job.writes()) { "BEGIN IMMEDIATE" } else { "BEGIN DEFERRED" };
    if let Err(e) = conn.execute_batch(begin) {
        return fail_all(jobs, &|| copy(&e));
    }
    let mut ran: Vec<Box<dyn Ran>> = Vec::with_capacity(jobs.len());
    let mut broken = None;
    for job in jobs {
        if broken.is_some() {
            // Not run: its caller runs it again, in another transaction.
            job.fail(RowError::rolled_back());
            continue;
        }
        if let Err(e) = statement(conn, "SAVEPOINT job") {
            broken = Some(Broken::Sql(e));
            job.fail(aborted());
            continue;
        }
        let done = job.run(conn, clock);
        // Some errors (a full disk, an I/O error) end the whole transaction in SQLite.
        broken = if conn.is_autocommit() {
            Some(Broken::Ended)
        } else {
            let undo = if done.failed() { statement(conn, "ROLLBACK TO job") } else { Ok(()) };
            undo.and_then(|()| statement(conn, "RELEASE job")).err().map(Broken::Sql)
        };
        ran.push(done);
    }
    let committed = match broken {
        Some(broken) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(broken)
        }
        None => conn.execute_batch("COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            Broken::Sql(e)
        }),
    };
    match &committed {
        Ok(()) => ran.into_iter().for_each(|done| done.deliver(Ok(()))),
        Err(Broken::Sql(e)) => ran.into_iter().for_each(|done| done.deliver(Err(&|| copy(e)))),
        // The job that ended it keeps its own error; the others' callers run them again.
        Err(Broken::Ended) => ran.into_iter().for_each(|done| done.deliver(Err(&RowError::rolled_back))),
    }
}

/// Runs `sql`, prepared once per connection: two of these run for every job.
fn statement(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// The error of the callers of a transaction another job's failure ended.
fn aborted() -> RowError {
    RowError::store(std::io::Error::other("the transaction shared with another write was rolled back; retry"))
}

/// `e` again, for one more caller: SQLite's code is kept, so that its advice (a full
/// disk, a busy file) still reaches each.
fn copy(e: &rusqlite::Error) -> RowError {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            RowError::store(rusqlite::Error::SqliteFailure(*code, message.clone()))
        }
        other => RowError::store(std::io::Error::other(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::PoisonError;

    use tokio::sync::oneshot;

    use super::{Pending, Ran, RowError};
    use crate::plan::{Plan, PlanContext};
    use crate::storage::rows::{Access, RowStore};
    use crate::storage::{Clock, PlanStore, SqliteStorage};

    /// A job that ends the transaction it runs in, as SQLite does on an I/O error.
    struct EndsTheTransaction(oneshot::Sender<()>);

    impl Pending for EndsTheTransaction {
        fn writes(&self) -> bool {
            true
        }

        fn run(self: Box<Self>, conn: &rusqlite::Connection, _: &dyn Clock) -> Box<dyn Ran> {
            conn.execute_batch("ROLLBACK").expect("a transaction to end");
            self
        }

        fn fail(self: Box<Self>, _: RowError) {
            let _ = self.0.send(());
        }
    }

    impl Ran for EndsTheTransaction {
        fn failed(&self) -> bool {
            true
        }

        fn deliver(self: Box<Self>, _: Result<(), super::ErrorFor<'_>>) {
            let _ = self.0.send(());
        }
    }

    fn plan(query: &str) -> Plan {
        Plan::new(PlanContext::new(query, Vec::<String>::new()), Vec::new())
    }

    /// Runs `start` while the connection is held, so that every job it queues (as
    /// many as `jobs`) waits for it and then all run in one shared transaction.
    // Holding the connection while the jobs queue is the point: the runner waits on it.
    #[allow(clippy::await_holding_lock)]
    async fn in_one_batch(storage: &SqliteStorage, jobs: usize, start: impl FnOnce()) {
        let held = storage.inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
        start();
        while storage.inner.queue.len() < jobs {
            tokio::task::yield_now().await;
        }
        drop(held);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_job_undoes_only_its_own_writes_and_the_others_commit() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("portia.db");
        let storage = SqliteStorage::open(&path).expect("a database");
        let (first, failing, last) = (plan("first"), plan("failing"), plan("last"));
        let mut tasks = tokio::task::JoinSet::new();
        in_one_batch(&storage, 3, || {
            let (s, p) = (storage.clone(), first.clone());
            tasks.spawn(async move { s.save_plan(&p).await.map_err(|e| e.to_string()) });
            let (s, p) = (storage.clone(), failing.clone());
            tasks.spawn(async move {
                let work = move |tx: &mut dyn crate::storage::RowTx| {
                    tx.insert_plan(p)?;
                    Err(RowError::value("this job fails after its write"))
                };
                s.transaction(Access::Write, Box::new(work)).await.map_err(|e| format!("{e:?}"))
            });
            let (s, p) = (storage.clone(), last.clone());
            tasks.spawn(async move { s.save_plan(&p).await.map_err(|e| e.to_string()) });
        })
        .await;
        let outcomes = tasks.join_all().await;
        assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 2, "{outcomes:?}");
        assert!(outcomes.iter().any(|o| o.as_ref().is_err_and(|e| e.contains("fails after its write"))));
        let reopened = SqliteStorage::open(&path).expect("the database again");
        assert!(reopened.get_plan(first.id).await.is_ok());
        assert!(reopened.get_plan(last.id).await.is_ok());
        assert!(reopened.get_plan(failing.id).await.is_err(), "the failing job's write was kept");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_undone_by_another_job_ending_the_transaction_is_run_again() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("portia.db");
        let storage = SqliteStorage::open(&path).expect("a database");
        let saved = plan("saved");
        let (ended, told) = oneshot::channel();
        let mut saving = None;
        in_one_batch(&storage, 2, || {
            let (s, p) = (storage.clone(), saved.clone());
            saving = Some(tokio::spawn(async move { s.save_plan(&p).await }));
            // Queued after the save, so the save has run when the transaction ends.
            let (s, job) = (storage.clone(), Box::new(EndsTheTransaction(ended)));
            tokio::spawn(async move {
                while s.inner.queue.len() < 1 {
                    tokio::task::yield_now().await;
                }
                assert!(!s.inner.queue.push(job), "the queue is already running");
            });
        })
        .await;
        told.await.expect("the ending job to be told");
        let outcome = saving.expect("the save started").await.expect("the save to finish");
        assert!(outcome.is_ok(), "{outcome:?}");
        let reopened = SqliteStorage::open(&path).expect("the database again");
        assert!(reopened.get_plan(saved.id).await.is_ok(), "the save is not on disk");
    }
}
