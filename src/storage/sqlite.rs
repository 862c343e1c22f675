use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
mod group;

use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};

use super::bells::{Bell, Bells};
use super::rows::{Access, LeaseRow, RowError, RowStore, RowTx, Work};
use super::sql::{self, REPLACE_TOOL_CALL, StoredToolCall, TOOL_CALL_COLUMNS, from_int, from_json, to_int, to_json};
use super::{
    Clock, LeaseState, SetAside, SystemClock, ToolCallKey, ToolCallRecord, UsageRecord, WorkflowPage, WorkflowQuery,
};
use crate::events::StoredEvent;
use crate::ids::{PlanId, WorkflowId};
use crate::plan::Plan;
use crate::usage::Usage;
use crate::workflow::{Workflow, WorkflowState};
use crate::{Error, Result};

/// How long a connection waits for another one's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a wait for events asks whether other connections changed the file:
/// they cannot ring this handle's bells.
const OTHERS_POLL: Duration = Duration::from_millis(100);

/// The schema, one script per version; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    include_str!("sqlite/0001_initial.sql"),
    include_str!("sqlite/0002_queue.sql"),
    include_str!("sqlite/0003_cost.sql"),
    include_str!("sqlite/0004_events.sql"),
    include_str!("sqlite/0005_cache_tokens.sql"),
    include_str!("sqlite/0006_end_user_listing.sql"),
    include_str!("sqlite/0007_set_aside.sql"),
];

/// Keeps everything in one SQLite database file, which several processes may share.
///
/// Every write is one `BEGIN IMMEDIATE` transaction, and the lease decision and the
/// fence check (the protocol all stores share) are made inside the transaction of
/// the write they guard, so two
/// processes sharing the file can never both hold a workflow's lease, and a run
/// that lost its lease writes nothing. The database is in WAL mode with
/// `synchronous=FULL`: a journaled tool-call intent is on disk before the tool is
/// called. The schema is created or upgraded when the file is opened; a file
/// written by a newer portia is refused with [`Error::SchemaTooNew`].
///
/// The blocking database work runs on one of Tokio's blocking threads at a time per
/// handle, which commits the transactions of concurrent callers together (group
/// commit: one synced commit for many runs' writes, each caller answered only once
/// it is on disk). Clones share the handle's connection.
///
/// [`WorkflowStore::wait_for_events`](super::WorkflowStore::wait_for_events) is woken at once by saves through this handle or its
/// clones; commits by other connections (other processes) it notices within a tenth
/// of a second, by asking SQLite's `PRAGMA data_version` rather than reading events.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// The file's identity when it was opened, where the platform tells it.
    file: Option<FileId>,
    clock: Arc<dyn Clock>,
    conn: Mutex<Connection>,
    /// Wakes this process's workers; other processes' workers poll.
    runnable: tokio::sync::Notify,
    /// Rung by this handle's saves that store events; others' are polled for.
    bells: Bells,
    /// Transactions waiting for the connection, to be committed together.
    queue: group::Queue,
}

impl SqliteStorage {
    /// Opens (or creates, with its parent directories) the database at `path`, with
    /// leases on the system clock.
    ///
    /// This blocks while the file is opened and its schema brought up to date; in
    /// async code, call it once at start-up or through `spawn_blocking`.
    ///
    /// # Errors
    /// [`Error::SchemaTooNew`] for a database written by a newer portia, and
    /// [`Error::Storage`] if the file cannot be created, opened or upgraded.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_clock(path, Arc::new(SystemClock))
    }

    /// Opens the database at `path` as [`SqliteStorage::open`] does, with leases on
    /// `clock` (a [`ManualClock`](super::ManualClock) in tests). Processes sharing a
    /// file must agree on the time.
    ///
    /// # Errors
    /// As [`SqliteStorage::open`].
    pub fn open_with_clock(path: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::storage_source(Some(dir.to_owned()), "cannot create the database's directory", e)
            })?;
        }
        let mut conn = Connection::open(&path).map_err(|e| db_error(&path, "cannot open the database", e))?;
        configure(&conn).map_err(|e| db_error(&path, "cannot configure the database", e))?;
        migrate(&mut conn, &path).map_err(|fail| describe(&path, "cannot create or upgrade the schema", fail))?;
        let runnable = tokio::sync::Notify::new();
        let file = FileId::of(&path);
        let (conn, bells, queue) = (Mutex::new(conn), Bells::default(), group::Queue::default());
        let inner = Inner { path, file, clock, conn, runnable, bells, queue };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// SQLite's count of commits by other connections, as this connection last saw it.
    async fn data_version(&self) -> Result<i64> {
        let inner = Arc::clone(&self.inner);
        let what = "cannot ask whether other connections changed the database";
        let task = tokio::task::spawn_blocking(move || {
            let conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            conn.pragma_query_value(None, "data_version", |row| row.get(0)).map_err(|e| db_error(&inner.path, what, e))
        });
        task.await.map_err(|e| self.stopped(e))?
    }

    /// Rings `bell` whenever another connection has committed since `seen`, until dropped.
    async fn hear_others(&self, bell: &Bell<'_>, mut seen: i64) -> Infallible {
        loop {
            tokio::time::sleep(OTHERS_POLL).await;
            match self.data_version().await {
                Ok(version) if version == seen => {}
                Ok(version) => {
                    seen = version;
                    bell.ring();
                }
                // The look it causes reports the error.
                Err(_) => bell.ring(),
            }
        }
    }

    /// The error of a blocking task that did not finish.
    fn stopped(&self, e: tokio::task::JoinError) -> Error {
        Error::storage_source(Some(self.inner.path.clone()), "the database task stopped before it finished", e)
    }
}

impl RowStore for SqliteStorage {
    /// Runs `work` on the connection on a blocking thread, in a transaction it may
    /// share with other callers' (group commit: one synced commit for all the runs
    /// that wrote meanwhile, each in a savepoint of its own; see `sqlite/group.rs`).
    /// A write is `BEGIN IMMEDIATE`, so it holds the write lock from its first read.
    /// Its outcome is handed over only once the commit holding its writes is on disk.
    async fn transaction<T: Send + 'static>(&self, access: Access, work: Work<T>) -> DbResult<T> {
        let (job, outcome) = group::Job::queued(access, work);
        if self.inner.queue.push(job) {
            let runner = QueueRunner { inner: Arc::clone(&self.inner), ran: false };
            // Not awaited: it runs until the queue is empty, this job among the first.
            drop(tokio::task::spawn_blocking(move || runner.run()));
        }
        outcome.await.map_err(|_| RowError::store(std::io::Error::other("the storage work was dropped unrun")))?
    }

    fn describe(&self, what: &str, error: RowError) -> Error {
        describe(&self.inner.path, what, error)
    }

    /// A write whose transaction another caller's failure ended is run again.
    fn shares_transactions(&self) -> bool {
        true
    }

    /// Wakes every waiting worker of this process, and leaves a permit for one about to wait.
    fn runnable_changed(&self) {
        self.inner.runnable.notify_waiters();
        self.inner.runnable.notify_one();
    }

    fn workflow_saved(&self, workflow: &Workflow, events_stored: bool) {
        if events_stored {
            self.inner.bells.ring(workflow.id());
        }
    }

    async fn watch_events(&self, id: WorkflowId, after: u64, timeout: Duration) -> Result<bool> {
        // Read before the first look, so that a commit after the look changes it.
        let seen = self.data_version().await?;
        let bell = self.inner.bells.bell(id);
        tokio::select! {
            found = bell.wait(timeout, || super::protocol::has_events_after(self, id, after)) => found,
            never = self.hear_others(&bell, seen) => match never {},
        }
    }

    /// Returns the pages the deleted rows freed to the file system. A file made by
    /// this version keeps `auto_vacuum = INCREMENTAL`, so that is quick; an older
    /// file is switched to it once, by a `VACUUM` that rewrites it.
    async fn reclaim_space(&self, _deleted: usize) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let what = "cannot give the space of the pruned workflows back";
        let task = tokio::task::spawn_blocking(move || {
            inner.check_file().map_err(|e| describe(&inner.path, what, e))?;
            let conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            reclaim(&conn).map_err(|e| db_error(&inner.path, what, e))
        });
        task.await.map_err(|e| self.stopped(e))?
    }

    async fn watch_runnable(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.inner.runnable.notified()).await;
    }
}

/// The thread that runs the queue. Dropped without having run (its runtime shut
/// down first), it fails the queued jobs so that none waits forever.
struct QueueRunner {
    inner: Arc<Inner>,
    ran: bool,
}

impl QueueRunner {
    fn run(mut self) {
        let inner = &self.inner;
        // A poisoned lock only means a task panicked; its transaction rolled back as
        // it unwound, so the connection is still sound.
        let conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
        inner.queue.run(&conn, inner.clock.as_ref(), || inner.check_file());
        drop(conn);
        self.ran = true;
    }
}

impl Drop for QueueRunner {
    fn drop(&mut self) {
        if !self.ran {
            self.inner.queue.abandon();
        }
    }
}

/// Which file a path named: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64);

impl FileId {
    #[cfg(unix)]
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(path).ok().map(|m| Self(m.dev(), m.ino()))
    }

    /// Elsewhere a file in use cannot be deleted or replaced, so there is nothing to check.
    #[cfg(not(unix))]
    fn of(_path: &Path) -> Option<Self> {
        None
    }
}

impl Inner {
    /// Refuses to go on once the file opened is no longer the one at the path: the
    /// connection would go on writing into a deleted file, which no other process
    /// sees and which is gone when this one ends. A stat per call is cheap next to
    /// the call's synced commit.
    fn check_file(&self) -> DbResult<()> {
        let Some(opened) = self.file else { return Ok(()) };
        let now = FileId::of(&self.path);
        if now == Some(opened) {
            return Ok(());
        }
        let what = if now.is_none() { "deleted" } else { "replaced by another file" };
        Err(RowError::Refused(Error::StoreFileChanged { path: self.path.clone(), what: what.to_owned() }))
    }
}

/// Prepared statements kept per connection: more than the store has.
const STATEMENTS_KEPT: usize = 64;

/// `PRAGMA auto_vacuum` once freed pages go back to the file system at each
/// `PRAGMA incremental_vacuum`.
const INCREMENTAL: i64 = 2;

/// Frees the database's unused pages (see [`SqliteStorage::reclaim_space`]).
fn reclaim(conn: &Connection) -> rusqlite::Result<()> {
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |row| row.get(0))?;
    if mode == INCREMENTAL {
        // Each row of the result is a page freed; step through them all.
        let mut statement = conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = statement.query([])?;
        while rows.next()?.is_some() {}
        Ok(())
    } else {
        conn.pragma_update(None, "auto_vacuum", INCREMENTAL)?;
        conn.execute_batch("VACUUM")
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // Every statement the store runs stays prepared: rusqlite keeps 16 by default,
    // fewer than a workflow's life uses, and preparing one again costs more than
    // running it.
    conn.set_prepared_statement_cache_capacity(STATEMENTS_KEPT);
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Takes effect only on a file with no tables yet; older files switch at their first prune.
    conn.pragma_update(None, "auto_vacuum", INCREMENTAL)?;
    use_wal(conn)?;
    // FULL syncs every commit, so a journaled intent is on disk before its tool runs.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")
}

/// WAL lets readers and one writer work at once, across processes. A file that cannot
/// use WAL (an in-memory database) keeps its mode; locking stays correct. Switching
/// needs the file to itself, and while another process opens the same new file SQLite
/// answers BUSY at once, without waiting on the busy timeout: so it is asked again,
/// for up to that timeout.
fn use_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            result => return result.map(drop),
        }
    }
}

/// Applies the migrations the file lacks, in one IMMEDIATE transaction, so that
/// processes opening a new file at once take turns and each sees it whole.
fn migrate(conn: &mut Connection, path: &Path) -> DbResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let supported = u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX);
    let stored: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let found = u32::try_from(stored).map_err(|_| {
        RowError::value(format!("schema version {stored} is not one portia writes; is this a portia database?"))
    })?;
    if found > supported {
        return Err(Error::SchemaTooNew { path: Some(path.to_owned()), found, supported }.into());
    }
    for script in MIGRATIONS.iter().skip(found as usize) {
        tx.execute_batch(script)?;
    }
    if found < supported {
        tx.pragma_update(None, "user_version", supported)?;
    }
    tx.commit()?;
    Ok(())
}

type DbResult<T> = std::result::Result<T, RowError>;

impl From<rusqlite::Error> for RowError {
    fn from(e: rusqlite::Error) -> Self {
        Self::store(e)
    }
}

/// The caller's error for `error`; `what` says what was being done.
fn describe(path: &Path, what: &str, error: RowError) -> Error {
    match error {
        RowError::Store(source) => match source.downcast::<rusqlite::Error>() {
            Ok(e) => db_error(path, what, *e),
            Err(source) => {
                Error::Storage { path: Some(path.to_owned()), message: what.to_owned(), source: Some(source) }
            }
        },
        RowError::Value { message, source } => {
            Error::Unreadable { path: Some(path.to_owned()), message: format!("{what}: {message}"), source }
        }
        RowError::Refused(e) => e,
    }
}

/// A SQLite error as a storage error that says what to do about it.
fn db_error(path: &Path, what: &str, e: rusqlite::Error) -> Error {
    let advice = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Some(
            "another connection held the write lock for longer than the busy timeout; retry, \
             or have fewer processes write to this file at once",
        ),
        Some(ErrorCode::NotADatabase) => Some("the file is not a SQLite database; point the storage at another file"),
        Some(ErrorCode::DatabaseCorrupt) => Some("the database file is damaged; restore it from a backup"),
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            Some("check that the file and its directory are writable (WAL mode keeps -wal and -shm files beside it)")
        }
        Some(ErrorCode::DiskFull) => Some("the disk is full; free some space"),
        _ => None,
    };
    let message = match advice {
        Some(advice) => format!("{what} ({advice})"),
        None => what.to_owned(),
    };
    Error::storage_source(Some(path.to_owned()), message, e)
}

/// The store's time to the millisecond, the precision it keeps, so that a lease
/// reads back exactly as it was granted.
fn now_ms(clock: &dyn Clock) -> DateTime<Utc> {
    let now = clock.now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

fn from_ms(ms: i64) -> DbResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| RowError::value(format!("stored time {ms} ms is out of range")))
}

/// Reads every row of `rows` with `f`.
fn collect<T>(mut rows: rusqlite::Rows<'_>, f: impl Fn(&Row<'_>) -> DbResult<T>) -> DbResult<Vec<T>> {
    let mut items = Vec::new();
    while let Some(row) = rows.next()? {
        items.push(f(row)?);
    }
    Ok(items)
}

/// One transaction on the connection.
struct Rows<'a> {
    /// In a transaction (and a savepoint of this caller's).
    tx: &'a Connection,
    clock: &'a dyn Clock,
}

impl Rows<'_> {
    /// The one value `sql` selects, if a row matches.
    fn one<T: rusqlite::types::FromSql>(&self, sql: &str, args: impl rusqlite::Params) -> DbResult<Option<T>> {
        Ok(self.tx.prepare_cached(sql)?.query_row(args, |row| row.get(0)).optional()?)
    }

    /// Runs `sql`; returns how many rows it changed.
    fn run(&self, sql: &str, args: impl rusqlite::Params) -> DbResult<usize> {
        Ok(self.tx.prepare_cached(sql)?.execute(args)?)
    }

    /// Every row `sql` selects, read with `f`.
    fn all<T>(&self, sql: &str, args: impl rusqlite::Params, f: impl Fn(&Row<'_>) -> DbResult<T>) -> DbResult<Vec<T>> {
        collect(self.tx.prepare_cached(sql)?.query(args)?, f)
    }

    fn exists(&self, id: WorkflowId) -> DbResult<bool> {
        Ok(self.one::<i64>("SELECT 1 FROM workflows WHERE id = ?1", [id.to_string()])?.is_some())
    }

    /// Writes a journal record; `on_conflict` says what to do when its key is stored.
    /// Returns whether a row was written.
    fn write_tool_call(&self, record: &ToolCallRecord, on_conflict: &str) -> DbResult<bool> {
        let key = record.key;
        let sql = format!(
            "INSERT INTO tool_calls ({TOOL_CALL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (workflow_id, step, attempt, seq) {on_conflict}"
        );
        let written = self.run(
            &sql,
            params![
                key.workflow_id.to_string(),
                to_int(key.step)?,
                i64::from(key.attempt),
                i64::from(key.seq),
                record.tool_id,
                record.end_user_id,
                to_json(&record.input, &format!("the input of tool call {key}"))?,
                record.status.as_str(),
                to_json(&record.output, &format!("the output of tool call {key}"))?,
                record.started_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                record.latency_seconds
            ],
        )?;
        Ok(written > 0)
    }
}

/// The columns of a workflow's row copied from its body, and the body, as `?1`...`?7`.
fn workflow_args(workflow: &Workflow, now: DateTime<Utc>) -> DbResult<[rusqlite::types::Value; 7]> {
    use rusqlite::types::Value;
    let body = to_json(workflow, &format!("workflow {}", workflow.id()))?;
    let end_user = workflow.execution_context().end_user_id.clone().map_or(Value::Null, Value::Text);
    Ok([
        Value::Text(workflow.id().to_string()),
        Value::Text(workflow.plan_id().to_string()),
        Value::Text(workflow.state().as_str().to_owned()),
        Value::Integer(to_int(workflow.version())?),
        end_user,
        Value::Text(body),
        Value::Integer(now.timestamp_millis()),
    ])
}

const INSERT_WORKFLOW: &str = "INSERT INTO workflows (id, plan_id, state, version, end_user_id, body, updated_at) \
                               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING";
const QUEUE_WORKFLOW: &str = "UPDATE workflows SET queued = (SELECT COALESCE(MAX(queued), 0) + 1 FROM workflows) \
                              WHERE id = ?1 AND queued IS NULL AND state NOT IN ('COMPLETE', 'FAILED')";
const NEXT_RUNNABLE: &str = "SELECT id FROM workflows WHERE queued IS NOT NULL AND set_aside IS NULL \
                             AND state IN ('NOT_STARTED', 'IN_PROGRESS', 'READY_TO_RESUME') \
                             AND (lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= ?1) \
                             ORDER BY queued LIMIT 1";
const QUEUED_WORK: &str = "SELECT 1 FROM workflows WHERE queued IS NOT NULL AND set_aside IS NULL \
                           AND state IN ('NOT_STARTED', 'IN_PROGRESS', 'READY_TO_RESUME') LIMIT 1";
const UPDATE_WORKFLOW: &str = "UPDATE workflows SET plan_id = ?2, state = ?3, version = ?4, end_user_id = ?5, \
                               body = ?6, updated_at = ?7 WHERE id = ?1";
const LEASE_ROW: &str = "SELECT lease_owner, lease_epoch, lease_expires_at, attempts, cancel_requested, version, \
                         set_aside IS NOT NULL FROM workflows WHERE id = ?1";
const STORE_LEASE: &str =
    "UPDATE workflows SET lease_owner = ?2, lease_epoch = ?3, lease_expires_at = ?4, attempts = ?5 WHERE id = ?1";

impl RowTx for Rows<'_> {
    fn now(&mut self) -> DbResult<DateTime<Utc>> {
        Ok(now_ms(self.clock))
    }

    fn insert_plan(&mut self, plan: Plan) -> DbResult<Option<Plan>> {
        let body = to_json(&plan, &format!("plan {}", plan.id))?;
        let sql = "INSERT INTO plans (id, body) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING";
        Ok((self.run(sql, [plan.id.to_string(), body])? == 0).then_some(plan))
    }

    fn plan(&mut self, id: PlanId) -> DbResult<Option<Plan>> {
        let body: Option<String> = self.one("SELECT body FROM plans WHERE id = ?1", [id.to_string()])?;
        body.map(|body| from_json(&body, &format!("plan {id}"))).transpose()
    }

    fn insert_workflow(&mut self, workflow: Workflow, now: DateTime<Utc>, queued: bool) -> DbResult<bool> {
        if self.run(INSERT_WORKFLOW, workflow_args(&workflow, now)?)? == 0 {
            return Ok(false);
        }
        if queued {
            self.run(QUEUE_WORKFLOW, [workflow.id().to_string()])?;
        }
        Ok(true)
    }

    fn workflow(&mut self, id: WorkflowId) -> DbResult<Option<Workflow>> {
        let body: Option<String> = self.one("SELECT body FROM workflows WHERE id = ?1", [id.to_string()])?;
        body.map(|body| from_json(&body, &format!("workflow {id}"))).transpose()
    }

    fn replace_workflow(&mut self, workflow: Workflow, now: DateTime<Utc>) -> DbResult<()> {
        self.run(UPDATE_WORKFLOW, workflow_args(&workflow, now)?).map(drop)
    }

    fn list_workflows(&mut self, query: &WorkflowQuery) -> DbResult<WorkflowPage> {
        let mut conditions = Vec::new();
        let mut args = Vec::new();
        if let Some(state) = query.state {
            args.push(state.as_str());
            conditions.push(format!("state = ?{}", args.len()));
        }
        if let Some(end_user) = &query.end_user {
            args.push(end_user.as_str());
            conditions.push(format!("end_user_id = ?{}", args.len()));
        }
        let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let count: i64 = self
            .tx
            .prepare_cached(&format!("SELECT COUNT(*) FROM workflows {filter}"))?
            .query_row(rusqlite::params_from_iter(&args), |row| row.get(0))?;
        let (limit, offset) = sql::page_rows(query);
        let (limit, offset) = (to_int(limit)?, to_int(offset)?);
        let sql = format!("SELECT id, body FROM workflows {filter} ORDER BY id LIMIT {limit} OFFSET {offset}");
        let rows = self.all(&sql, rusqlite::params_from_iter(&args), |row| Ok((row.get(0)?, row.get(1)?)))?;
        sql::workflow_page(rows, count, query)
    }

    fn lease(&mut self, id: WorkflowId) -> DbResult<Option<LeaseRow>> {
        let mut rows = self.all(LEASE_ROW, [id.to_string()], |row| {
            let expires_at: Option<i64> = row.get(2)?;
            let lease = LeaseState {
                owner: row.get(0)?,
                epoch: from_int(row.get(1)?)?,
                expires_at: expires_at.map(from_ms).transpose()?,
                attempts: from_int(row.get(3)?)?,
            };
            Ok(LeaseRow::new(lease, row.get(4)?, from_int(row.get(5)?)?).set_aside(row.get(6)?))
        })?;
        Ok(rows.pop())
    }

    fn store_lease(&mut self, id: WorkflowId, lease: &LeaseState) -> DbResult<()> {
        let expires_at = lease.expires_at.map(|t| t.timestamp_millis());
        let args = params![id.to_string(), lease.owner, to_int(lease.epoch)?, expires_at, i64::from(lease.attempts)];
        self.run(STORE_LEASE, args).map(drop)
    }

    fn request_cancel(&mut self, id: WorkflowId, reason: &str) -> DbResult<bool> {
        let changed =
            self.run("UPDATE workflows SET cancel_requested = ?2 WHERE id = ?1", params![id.to_string(), reason])?;
        Ok(changed > 0)
    }

    fn next_runnable(&mut self, now: DateTime<Utc>) -> DbResult<Option<String>> {
        self.one(NEXT_RUNNABLE, [now.timestamp_millis()])
    }

    fn has_queued_work(&mut self) -> DbResult<bool> {
        let found: Option<i64> = self.one(QUEUED_WORK, [])?;
        Ok(found.is_some())
    }

    fn set_aside(&mut self, id: &str, reason: &str) -> DbResult<()> {
        self.run("UPDATE workflows SET set_aside = ?2 WHERE id = ?1", [id, reason]).map(drop)
    }

    fn put_back(&mut self, id: WorkflowId) -> DbResult<()> {
        self.run("UPDATE workflows SET set_aside = NULL WHERE id = ?1", [id.to_string()]).map(drop)
    }

    fn queue(&mut self, id: WorkflowId) -> DbResult<bool> {
        Ok(self.run(QUEUE_WORKFLOW, [id.to_string()])? > 0)
    }

    fn set_aside_rows(&mut self) -> DbResult<Vec<SetAside>> {
        let sql = "SELECT id, set_aside, queued IS NOT NULL FROM workflows WHERE set_aside IS NOT NULL ORDER BY id";
        self.all(sql, [], |row| Ok(SetAside::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get(2)?)))
    }

    fn last_event(&mut self, id: WorkflowId) -> DbResult<u64> {
        let last: Option<i64> =
            self.one("SELECT COALESCE(MAX(seq), 0) FROM events WHERE workflow_id = ?1", [id.to_string()])?;
        from_int(last.unwrap_or(0))
    }

    fn insert_event(&mut self, id: WorkflowId, event: StoredEvent) -> DbResult<()> {
        let body = to_json(&event.event, &format!("an event of workflow {id}"))?;
        let sql = "INSERT INTO events (workflow_id, seq, body) VALUES (?1, ?2, ?3)";
        self.run(sql, params![id.to_string(), to_int(event.seq)?, body]).map(drop)
    }

    fn events_after(&mut self, id: WorkflowId, after: u64) -> DbResult<Option<Vec<StoredEvent>>> {
        if !self.exists(id)? {
            return Ok(None);
        }
        let sql = "SELECT seq, body FROM events WHERE workflow_id = ?1 AND seq > ?2 ORDER BY seq";
        let events = self.all(sql, params![id.to_string(), to_int(after)?], |row| {
            let seq: u64 = from_int(row.get(0)?)?;
            let body: String = row.get(1)?;
            Ok(StoredEvent { seq, event: from_json(&body, &format!("event {seq} of workflow {id}"))? })
        })?;
        Ok(Some(events))
    }

    fn has_events_after(&mut self, id: WorkflowId, after: u64) -> DbResult<Option<bool>> {
        if !self.exists(id)? {
            return Ok(None);
        }
        let sql = "SELECT EXISTS (SELECT 1 FROM events WHERE workflow_id = ?1 AND seq > ?2)";
        self.one(sql, params![id.to_string(), to_int(after)?])
    }

    fn insert_tool_call(&mut self, record: ToolCallRecord) -> DbResult<bool> {
        self.write_tool_call(&record, "DO NOTHING")
    }

    fn put_tool_call(&mut self, record: ToolCallRecord) -> DbResult<()> {
        self.write_tool_call(&record, REPLACE_TOOL_CALL).map(drop)
    }

    fn tool_call(&mut self, key: ToolCallKey) -> DbResult<Option<ToolCallRecord>> {
        let sql = format!(
            "SELECT {TOOL_CALL_COLUMNS} FROM tool_calls WHERE workflow_id = ?1 AND step = ?2 AND attempt = ?3 AND seq = ?4"
        );
        let args = params![key.workflow_id.to_string(), to_int(key.step)?, key.attempt, key.seq];
        Ok(self.all(&sql, args, read_tool_call)?.pop())
    }

    fn tool_calls(&mut self, id: WorkflowId) -> DbResult<Vec<ToolCallRecord>> {
        let sql =
            format!("SELECT {TOOL_CALL_COLUMNS} FROM tool_calls WHERE workflow_id = ?1 ORDER BY step, attempt, seq");
        self.all(&sql, [id.to_string()], read_tool_call)
    }

    fn insert_usage(&mut self, record: UsageRecord) -> DbResult<()> {
        let usage = record.usage;
        let sql = "INSERT INTO usage (workflow_id, step_output, llm_calls, prompt_tokens, completion_tokens, cost_usd, \
                   cache_read_tokens, cache_write_tokens) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
        let args = params![
            record.workflow_id.to_string(),
            record.step_output,
            usage.llm_calls,
            to_int(usage.prompt_tokens)?,
            to_int(usage.completion_tokens)?,
            record.cost_usd,
            to_int(usage.cache_read_tokens)?,
            to_int(usage.cache_write_tokens)?,
        ];
        self.run(sql, args).map(drop)
    }

    fn usage(&mut self, id: WorkflowId) -> DbResult<Vec<UsageRecord>> {
        let sql = "SELECT step_output, llm_calls, prompt_tokens, completion_tokens, cost_usd, cache_read_tokens, \
                   cache_write_tokens FROM usage WHERE workflow_id = ?1 ORDER BY seq";
        self.all(sql, [id.to_string()], |row| read_usage(row, id))
    }

    fn workflows_of_end_user(&mut self, end_user_id: &str) -> DbResult<Vec<String>> {
        self.all("SELECT id FROM workflows WHERE end_user_id = ?1", [end_user_id], |row| Ok(row.get(0)?))
    }

    fn finished_before(&mut self, before: DateTime<Utc>) -> DbResult<Vec<String>> {
        let sql = "SELECT id FROM workflows WHERE state IN (?1, ?2) AND updated_at < ?3";
        let finished = [WorkflowState::Complete.as_str(), WorkflowState::Failed.as_str()];
        self.all(sql, params![finished[0], finished[1], cutoff_ms(before)], |row| Ok(row.get(0)?))
    }

    fn delete_workflow(&mut self, id: &str) -> DbResult<bool> {
        let plan_id: Option<String> = self.one("SELECT plan_id FROM workflows WHERE id = ?1", [id])?;
        let Some(plan_id) = plan_id else { return Ok(false) };
        self.run("DELETE FROM tool_calls WHERE workflow_id = ?1", [id])?;
        self.run("DELETE FROM usage WHERE workflow_id = ?1", [id])?;
        self.run("DELETE FROM events WHERE workflow_id = ?1", [id])?;
        self.run("DELETE FROM workflows WHERE id = ?1", [id])?;
        self.run(
            "DELETE FROM plans WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM workflows WHERE plan_id = ?1)",
            [&plan_id],
        )?;
        Ok(true)
    }
}

fn read_tool_call(row: &Row<'_>) -> DbResult<ToolCallRecord> {
    StoredToolCall {
        workflow_id: row.get(0)?,
        step: row.get(1)?,
        attempt: row.get(2)?,
        seq: row.get(3)?,
        tool_id: row.get(4)?,
        end_user_id: row.get(5)?,
        input: row.get(6)?,
        status: row.get(7)?,
        output: row.get(8)?,
        started_at: row.get(9)?,
        latency_seconds: row.get(10)?,
    }
    .decode()
}

fn read_usage(row: &Row<'_>, workflow_id: WorkflowId) -> DbResult<UsageRecord> {
    let usage = Usage {
        llm_calls: from_int(row.get(1)?)?,
        prompt_tokens: from_int(row.get(2)?)?,
        completion_tokens: from_int(row.get(3)?)?,
        cache_read_tokens: from_int(row.get(5)?)?,
        cache_write_tokens: from_int(row.get(6)?)?,
    };
    Ok(UsageRecord { workflow_id, step_output: row.get(0)?, usage, cost_usd: row.get(4)? })
}

/// `before` in milliseconds, rounded up: a time stored in whole milliseconds is
/// earlier than `before` exactly when it is earlier than this.
fn cutoff_ms(before: DateTime<Utc>) -> i64 {
    let fraction = !before.timestamp_subsec_nanos().is_multiple_of(1_000_000);
    before.timestamp_millis().saturating_add(i64::from(fraction))
}
