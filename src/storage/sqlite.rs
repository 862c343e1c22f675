use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::bells::{Bell, Bells};
use super::sql::{
    self, REPLACE_TOOL_CALL, StoredToolCall, TOOL_CALL_COLUMNS, from_int, from_json, parse_id, to_int, to_json,
};
use super::{
    Clock, Lease, LeaseGrant, LeaseState, LeaseStatus, Storage, SystemClock, ToolCallRecord, UsageRecord, WorkflowPage,
    WorkflowQuery,
};
use crate::events::{StoredEvent, WorkflowEvent};
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
];

/// Keeps everything in one SQLite database file, which several processes may share.
///
/// Every write is one `BEGIN IMMEDIATE` transaction, and the lease decision and the
/// fence check are made inside the transaction of the write they guard, so two
/// processes sharing the file can never both hold a workflow's lease, and a run
/// that lost its lease writes nothing. The database is in WAL mode with
/// `synchronous=FULL`: a journaled tool-call intent is on disk before the tool is
/// called. The schema is created or upgraded when the file is opened; a file
/// written by a newer portia is refused with [`Error::SchemaTooNew`].
///
/// The blocking database work runs on Tokio's blocking threads, one call at a time
/// per handle. Clones share the handle's connection.
///
/// [`Storage::wait_for_events`] is woken at once by saves through this handle or its
/// clones; commits by other connections (other processes) it notices within a tenth
/// of a second, by asking SQLite's `PRAGMA data_version` rather than reading events.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    conn: Mutex<Connection>,
    /// Wakes this process's workers; other processes' workers poll.
    runnable: tokio::sync::Notify,
    /// Rung by this handle's saves that store events; others' are polled for.
    bells: Bells,
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
        migrate(&mut conn).map_err(|fail| into_error(fail, &path, "cannot create or upgrade the schema"))?;
        let runnable = tokio::sync::Notify::new();
        let inner = Inner { path, clock, conn: Mutex::new(conn), runnable, bells: Bells::default() };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the connection on a blocking thread; `what` describes a failure.
    async fn blocking<T, F>(&self, what: String, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &dyn Clock) -> DbResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let task = tokio::task::spawn_blocking(move || {
            // A poisoned lock only means a task panicked; its transaction rolled back
            // as it unwound, so the connection is still sound.
            let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn, inner.clock.as_ref()).map_err(|fail| into_error(fail, &inner.path, &what))
        });
        let path = || Some(self.inner.path.clone());
        task.await.map_err(|e| Error::storage_source(path(), "the database task stopped before it finished", e))?
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed only if `f` succeeds.
    /// `f` gets the store's time, read once the write lock is held so that a
    /// connection that waited for the lock does not act on a stale time.
    async fn write<T, F>(&self, what: String, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, DateTime<Utc>) -> DbResult<T> + Send + 'static,
    {
        self.blocking(what, move |conn, clock| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx, now_ms(clock))?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }

    async fn insert(&self, workflow: &Workflow, queued: bool) -> Result<()> {
        let workflow = workflow.clone();
        self.write(format!("cannot create workflow {}", workflow.id()), move |tx, now| {
            if let Some(found) = stored_version(tx, workflow.id())? {
                return Err(Error::VersionConflict { workflow_id: workflow.id(), expected: 0, found }.into());
            }
            put_workflow(tx, &workflow, now, INSERT_WORKFLOW)?;
            if queued {
                tx.prepare_cached(QUEUE_WORKFLOW)?.execute([workflow.id().to_string()])?;
            }
            Ok(())
        })
        .await
    }

    /// Wakes every waiting worker of this process, and leaves a permit for one about to wait.
    fn wake(&self) {
        self.inner.runnable.notify_waiters();
        self.inner.runnable.notify_one();
    }

    /// Runs `f` in one read transaction, so that its queries see one snapshot.
    async fn read<T, F>(&self, what: String, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> DbResult<T> + Send + 'static,
    {
        self.blocking(what, move |conn, _| {
            let tx = conn.transaction()?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }

    /// Whether workflow `id` has events numbered after `after`.
    async fn has_events_after(&self, id: WorkflowId, after: u64) -> Result<bool> {
        self.read(format!("cannot read the events of workflow {id}"), move |tx| {
            if stored_version(tx, id)?.is_none() {
                return Err(Error::WorkflowNotFound(id).into());
            }
            let sql = "SELECT EXISTS (SELECT 1 FROM events WHERE workflow_id = ?1 AND seq > ?2)";
            Ok(tx.prepare_cached(sql)?.query_row(params![id.to_string(), to_int(after)?], |row| row.get(0))?)
        })
        .await
    }

    /// SQLite's count of commits by other connections, as this connection last saw it.
    async fn data_version(&self) -> Result<i64> {
        self.blocking("cannot ask whether other connections changed the database".to_owned(), |conn, _| {
            Ok(conn.pragma_query_value(None, "data_version", |row| row.get(0))?)
        })
        .await
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
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
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
fn migrate(conn: &mut Connection) -> DbResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let supported = u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX);
    let stored: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let found = u32::try_from(stored).map_err(|_| {
        Fail::Corrupt(format!("schema version {stored} is not one portia writes; is this a portia database?"))
    })?;
    if found > supported {
        return Err(Fail::TooNew { found, supported });
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

type Fail = sql::Fail<rusqlite::Error>;
type DbResult<T> = std::result::Result<T, Fail>;

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Self::Db(e)
    }
}

/// The caller's error for `fail`; `what` says what was being done.
fn into_error(fail: Fail, path: &Path, what: &str) -> Error {
    fail.into_error(Some(path.to_owned()), what, |e| db_error(path, what, e))
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
    DateTime::from_timestamp_millis(ms).ok_or_else(|| Fail::Corrupt(format!("stored time {ms} ms is out of range")))
}

/// Reads every row of `rows` with `f`.
fn collect<T>(mut rows: rusqlite::Rows<'_>, f: impl Fn(&Row<'_>) -> DbResult<T>) -> DbResult<Vec<T>> {
    let mut items = Vec::new();
    while let Some(row) = rows.next()? {
        items.push(f(row)?);
    }
    Ok(items)
}

/// A workflow's lease columns and cancellation request.
struct LeaseRow {
    lease: LeaseState,
    cancel_requested: Option<String>,
}

fn lease_row(tx: &Transaction<'_>, id: WorkflowId) -> DbResult<Option<LeaseRow>> {
    let sql =
        "SELECT lease_owner, lease_epoch, lease_expires_at, attempts, cancel_requested FROM workflows WHERE id = ?1";
    let mut stmt = tx.prepare_cached(sql)?;
    let mut rows = collect(stmt.query([id.to_string()])?, |row| {
        let expires_at: Option<i64> = row.get(2)?;
        let lease = LeaseState {
            owner: row.get(0)?,
            epoch: from_int(row.get(1)?)?,
            expires_at: expires_at.map(from_ms).transpose()?,
            attempts: from_int(row.get(3)?)?,
        };
        Ok(LeaseRow { lease, cancel_requested: row.get(4)? })
    })?;
    Ok(rows.pop())
}

fn store_lease(tx: &Transaction<'_>, id: WorkflowId, lease: &LeaseState) -> DbResult<()> {
    tx.prepare_cached(
        "UPDATE workflows SET lease_owner = ?2, lease_epoch = ?3, lease_expires_at = ?4, attempts = ?5 WHERE id = ?1",
    )?
    .execute(params![
        id.to_string(),
        lease.owner,
        to_int(lease.epoch)?,
        lease.expires_at.map(|t| t.timestamp_millis()),
        i64::from(lease.attempts)
    ])?;
    Ok(())
}

/// Refuses a write to workflow `target` unless `lease` is its current lease.
fn fence(tx: &Transaction<'_>, lease: &Lease, target: WorkflowId, now: DateTime<Utc>) -> DbResult<()> {
    let lost = Error::LeaseLost { workflow_id: lease.workflow_id };
    // A lease covers its own workflow only.
    if target != lease.workflow_id {
        return Err(lost.into());
    }
    let row = lease_row(tx, target)?.ok_or(lost)?;
    row.lease.check_fence(lease, now)?;
    Ok(())
}

/// Takes the lease of workflow `id` for `owner`, by the protocol of [`LeaseState`].
fn grant(tx: &Transaction<'_>, id: WorkflowId, owner: &str, ttl: Duration, now: DateTime<Utc>) -> DbResult<LeaseGrant> {
    let row = lease_row(tx, id)?.ok_or(Error::WorkflowNotFound(id))?;
    let workflow = load_workflow(tx, id)?;
    let (next, lease, reclaimed) = row.lease.acquire(&workflow, owner, ttl, now)?;
    store_lease(tx, id, &next)?;
    let attempts = next.attempts;
    Ok(LeaseGrant { lease, workflow, reclaimed, attempts, cancel_requested: row.cancel_requested })
}

fn load_workflow(tx: &Transaction<'_>, id: WorkflowId) -> DbResult<Workflow> {
    let body: Option<String> = tx
        .prepare_cached("SELECT body FROM workflows WHERE id = ?1")?
        .query_row([id.to_string()], |row| row.get(0))
        .optional()?;
    let body = body.ok_or(Error::WorkflowNotFound(id))?;
    from_json(&body, &format!("workflow {id}"))
}

fn stored_version(tx: &Transaction<'_>, id: WorkflowId) -> DbResult<Option<u64>> {
    let version: Option<i64> = tx
        .prepare_cached("SELECT version FROM workflows WHERE id = ?1")?
        .query_row([id.to_string()], |row| row.get(0))
        .optional()?;
    version.map(from_int).transpose()
}

/// Writes a workflow's body and the columns copied from it, inserting or replacing.
fn put_workflow(tx: &Transaction<'_>, workflow: &Workflow, now: DateTime<Utc>, sql: &str) -> DbResult<()> {
    let body = to_json(workflow, &format!("workflow {}", workflow.id()))?;
    tx.prepare_cached(sql)?.execute(params![
        workflow.id().to_string(),
        workflow.plan_id().to_string(),
        workflow.state().as_str(),
        to_int(workflow.version())?,
        workflow.execution_context().end_user_id,
        body,
        now.timestamp_millis()
    ])?;
    Ok(())
}

const INSERT_WORKFLOW: &str = "INSERT INTO workflows (id, plan_id, state, version, end_user_id, body, updated_at) \
                               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const QUEUE_WORKFLOW: &str =
    "UPDATE workflows SET queued = (SELECT COALESCE(MAX(queued), 0) + 1 FROM workflows) WHERE id = ?1";
const NEXT_RUNNABLE: &str = "SELECT id FROM workflows WHERE queued IS NOT NULL \
                             AND state IN ('NOT_STARTED', 'IN_PROGRESS', 'READY_TO_RESUME') \
                             AND (lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= ?1) \
                             ORDER BY queued LIMIT 1";
const UPDATE_WORKFLOW: &str = "UPDATE workflows SET plan_id = ?2, state = ?3, version = ?4, end_user_id = ?5, \
                               body = ?6, updated_at = ?7 WHERE id = ?1";

/// Inserts a journal record; `on_conflict` says what to do when its key is stored.
/// Returns whether a row was written.
fn put_tool_call(tx: &Transaction<'_>, record: &ToolCallRecord, on_conflict: &str) -> DbResult<bool> {
    let key = record.key;
    let sql = format!(
        "INSERT INTO tool_calls ({TOOL_CALL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
         ON CONFLICT (workflow_id, step, attempt, seq) {on_conflict}"
    );
    let written = tx.prepare_cached(&sql)?.execute(params![
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
    ])?;
    Ok(written > 0)
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
    };
    Ok(UsageRecord { workflow_id, step_output: row.get(0)?, usage, cost_usd: row.get(4)? })
}

/// Stores `events` after the workflow's earlier ones.
fn append_events(tx: &Transaction<'_>, id: WorkflowId, events: &[WorkflowEvent]) -> DbResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let id = id.to_string();
    let last: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events WHERE workflow_id = ?1")?
        .query_row([&id], |row| row.get(0))?;
    let mut insert = tx.prepare_cached("INSERT INTO events (workflow_id, seq, body) VALUES (?1, ?2, ?3)")?;
    for (seq, event) in (last + 1..).zip(events) {
        insert.execute(params![id, seq, to_json(event, &format!("an event of workflow {id}"))?])?;
    }
    Ok(())
}

/// Deletes a workflow with its journal and usage, and its plan once unused.
/// Returns whether the workflow was stored.
fn delete_one(tx: &Transaction<'_>, id: &str) -> DbResult<bool> {
    let plan_id: Option<String> = tx
        .prepare_cached("SELECT plan_id FROM workflows WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    let Some(plan_id) = plan_id else { return Ok(false) };
    tx.prepare_cached("DELETE FROM tool_calls WHERE workflow_id = ?1")?.execute([id])?;
    tx.prepare_cached("DELETE FROM usage WHERE workflow_id = ?1")?.execute([id])?;
    tx.prepare_cached("DELETE FROM events WHERE workflow_id = ?1")?.execute([id])?;
    tx.prepare_cached("DELETE FROM workflows WHERE id = ?1")?.execute([id])?;
    tx.prepare_cached("DELETE FROM plans WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM workflows WHERE plan_id = ?1)")?
        .execute([&plan_id])?;
    Ok(true)
}

/// Deletes every workflow whose id `select` (a query with parameters `args`) returns.
fn delete_selected(tx: &Transaction<'_>, select: &str, args: impl rusqlite::Params) -> DbResult<usize> {
    let ids = collect(tx.prepare_cached(select)?.query(args)?, |row| Ok(row.get::<_, String>(0)?))?;
    for id in &ids {
        delete_one(tx, id)?;
    }
    Ok(ids.len())
}

/// `before` in milliseconds, rounded up: a time stored in whole milliseconds is
/// earlier than `before` exactly when it is earlier than this.
fn cutoff_ms(before: DateTime<Utc>) -> i64 {
    let fraction = !before.timestamp_subsec_nanos().is_multiple_of(1_000_000);
    before.timestamp_millis().saturating_add(i64::from(fraction))
}

#[async_trait::async_trait]
impl Storage for SqliteStorage {
    async fn save_plan(&self, plan: &Plan) -> Result<()> {
        let (id, body) = (plan.id.to_string(), serde_json::to_string(plan));
        let body =
            body.map_err(|e| Error::storage_source(Some(self.inner.path.clone()), "cannot encode the plan", e))?;
        self.write(format!("cannot save plan {id}"), move |tx, _| {
            // Plans never change, so a stored one is kept as it is.
            tx.prepare_cached("INSERT INTO plans (id, body) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING")?
                .execute([id, body])?;
            Ok(())
        })
        .await
    }

    async fn get_plan(&self, id: PlanId) -> Result<Plan> {
        self.read(format!("cannot load plan {id}"), move |tx| {
            let body: Option<String> = tx
                .prepare_cached("SELECT body FROM plans WHERE id = ?1")?
                .query_row([id.to_string()], |row| row.get(0))
                .optional()?;
            let body = body.ok_or(Error::PlanNotFound(id))?;
            from_json(&body, &format!("plan {id}"))
        })
        .await
    }

    async fn create_workflow(&self, workflow: &Workflow) -> Result<()> {
        self.insert(workflow, false).await
    }

    async fn submit_workflow(&self, workflow: &Workflow) -> Result<()> {
        self.insert(workflow, true).await?;
        self.wake();
        Ok(())
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Workflow> {
        self.read(format!("cannot load workflow {id}"), move |tx| load_workflow(tx, id)).await
    }

    async fn list_workflows(&self, query: &WorkflowQuery) -> Result<WorkflowPage> {
        let query = query.clone();
        self.read("cannot list workflows".to_owned(), move |tx| {
            let (filter, args) = match query.state {
                Some(state) => ("WHERE state = ?1", vec![state.as_str()]),
                None => ("", Vec::new()),
            };
            let count: i64 = tx
                .prepare_cached(&format!("SELECT COUNT(*) FROM workflows {filter}"))?
                .query_row(rusqlite::params_from_iter(&args), |row| row.get(0))?;
            let (limit, offset) = sql::page_rows(&query);
            let (limit, offset) = (to_int(limit)?, to_int(offset)?);
            let sql = format!("SELECT id, body FROM workflows {filter} ORDER BY id LIMIT {limit} OFFSET {offset}");
            let rows = collect(tx.prepare_cached(&sql)?.query(rusqlite::params_from_iter(&args))?, |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?;
            sql::workflow_page(rows, count, &query)
        })
        .await
    }

    async fn update_workflow(&self, workflow: &Workflow, lease: &Lease, events: &[WorkflowEvent]) -> Result<()> {
        let (id, stored_events) = (workflow.id(), !events.is_empty());
        let (workflow, lease, events) = (workflow.clone(), lease.clone(), events.to_vec());
        self.write(format!("cannot save workflow {}", workflow.id()), move |tx, now| {
            fence(tx, &lease, lease.workflow_id, now)?;
            let found = stored_version(tx, lease.workflow_id)?.unwrap_or(0);
            let expected = workflow.version().saturating_sub(1);
            if lease.workflow_id != workflow.id() || found != expected {
                return Err(Error::VersionConflict { workflow_id: workflow.id(), expected, found }.into());
            }
            put_workflow(tx, &workflow, now, UPDATE_WORKFLOW)?;
            append_events(tx, workflow.id(), &events)
        })
        .await?;
        if stored_events {
            self.inner.bells.ring(id);
        }
        Ok(())
    }

    async fn events(&self, id: WorkflowId, after: u64) -> Result<Vec<StoredEvent>> {
        self.read(format!("cannot read the events of workflow {id}"), move |tx| {
            if stored_version(tx, id)?.is_none() {
                return Err(Error::WorkflowNotFound(id).into());
            }
            let sql = "SELECT seq, body FROM events WHERE workflow_id = ?1 AND seq > ?2 ORDER BY seq";
            let mut statement = tx.prepare_cached(sql)?;
            let rows = statement.query(params![id.to_string(), to_int(after)?])?;
            collect(rows, |row| {
                let seq: u64 = from_int(row.get(0)?)?;
                let body: String = row.get(1)?;
                Ok(StoredEvent { seq, event: from_json(&body, &format!("event {seq} of workflow {id}"))? })
            })
        })
        .await
    }

    async fn wait_for_events(&self, id: WorkflowId, after: u64, timeout: Duration) -> Result<bool> {
        // Read before the first look, so that a commit after the look changes it.
        let seen = self.data_version().await?;
        let bell = self.inner.bells.bell(id);
        tokio::select! {
            found = bell.wait(timeout, || self.has_events_after(id, after)) => found,
            never = self.hear_others(&bell, seen) => match never {},
        }
    }

    async fn acquire_lease(&self, id: WorkflowId, owner: &str, ttl: Duration) -> Result<LeaseGrant> {
        let owner = owner.to_owned();
        self.write(format!("cannot take the lease of workflow {id}"), move |tx, now| grant(tx, id, &owner, ttl, now))
            .await
    }

    async fn claim_runnable(&self, owner: &str, ttl: Duration) -> Result<Option<LeaseGrant>> {
        let owner = owner.to_owned();
        self.write("cannot claim a runnable workflow".to_owned(), move |tx, now| {
            // A row that cannot be read is taken off the queue, so it never blocks the others.
            loop {
                let next: Option<String> = tx
                    .prepare_cached(NEXT_RUNNABLE)?
                    .query_row([now.timestamp_millis()], |row| row.get(0))
                    .optional()?;
                let Some(raw) = next else { return Ok(None) };
                match parse_id(&raw).and_then(|id| grant(tx, id, &owner, ttl, now)) {
                    Ok(grant) => return Ok(Some(grant)),
                    Err(fail) => {
                        let why = fail.unreadable().ok_or(fail)?;
                        tx.prepare_cached("UPDATE workflows SET queued = NULL WHERE id = ?1")?.execute([&raw])?;
                        sql::log_dequeued(&raw, &why);
                    }
                }
            }
        })
        .await
    }

    async fn wait_for_runnable(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.inner.runnable.notified()).await;
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<LeaseStatus> {
        let lease = lease.clone();
        self.write(format!("cannot renew the lease of workflow {}", lease.workflow_id), move |tx, now| {
            let id = lease.workflow_id;
            let row = lease_row(tx, id)?.ok_or(Error::LeaseLost { workflow_id: id })?;
            let next = row.lease.renew(&lease, ttl, now)?;
            store_lease(tx, id, &next)?;
            Ok(LeaseStatus { expires_at: next.expires_at.unwrap_or(now), cancel_requested: row.cancel_requested })
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        self.write(format!("cannot release the lease of workflow {}", lease.workflow_id), move |tx, _| {
            if let Some(row) = lease_row(tx, lease.workflow_id)? {
                store_lease(tx, lease.workflow_id, &row.lease.release(&lease))?;
            }
            Ok(())
        })
        .await?;
        self.wake();
        Ok(())
    }

    async fn request_cancel(&self, id: WorkflowId, reason: &str) -> Result<()> {
        let reason = reason.to_owned();
        self.write(format!("cannot request the cancellation of workflow {id}"), move |tx, _| {
            let changed = tx
                .prepare_cached("UPDATE workflows SET cancel_requested = ?2 WHERE id = ?1")?
                .execute(params![id.to_string(), reason])?;
            if changed == 0 {
                return Err(Error::WorkflowNotFound(id).into());
            }
            Ok(())
        })
        .await
    }

    async fn begin_tool_call(&self, lease: &Lease, intent: &ToolCallRecord) -> Result<Option<ToolCallRecord>> {
        let (lease, intent) = (lease.clone(), intent.clone());
        self.write(format!("cannot journal tool call {}", intent.key), move |tx, now| {
            let key = intent.key;
            fence(tx, &lease, key.workflow_id, now)?;
            if put_tool_call(tx, &intent, "DO NOTHING")? {
                return Ok(None);
            }
            let sql = format!(
                "SELECT {TOOL_CALL_COLUMNS} FROM tool_calls \
                 WHERE workflow_id = ?1 AND step = ?2 AND attempt = ?3 AND seq = ?4"
            );
            let key_args = params![key.workflow_id.to_string(), to_int(key.step)?, key.attempt, key.seq];
            let mut earlier = collect(tx.prepare_cached(&sql)?.query(key_args)?, read_tool_call)?;
            earlier
                .pop()
                .map(Some)
                .ok_or_else(|| Fail::Corrupt(format!("tool call {key} is journaled but cannot be read")))
        })
        .await
    }

    async fn finish_tool_call(&self, lease: &Lease, record: &ToolCallRecord) -> Result<()> {
        let (lease, record) = (lease.clone(), record.clone());
        self.write(format!("cannot journal the outcome of tool call {}", record.key), move |tx, now| {
            fence(tx, &lease, record.key.workflow_id, now)?;
            put_tool_call(tx, &record, REPLACE_TOOL_CALL).map(drop)
        })
        .await
    }

    async fn tool_calls(&self, id: WorkflowId) -> Result<Vec<ToolCallRecord>> {
        self.read(format!("cannot read the tool calls of workflow {id}"), move |tx| {
            let sql = format!(
                "SELECT {TOOL_CALL_COLUMNS} FROM tool_calls WHERE workflow_id = ?1 ORDER BY step, attempt, seq"
            );
            collect(tx.prepare_cached(&sql)?.query([id.to_string()])?, read_tool_call)
        })
        .await
    }

    async fn record_usage(&self, lease: &Lease, record: &UsageRecord) -> Result<()> {
        let (lease, record) = (lease.clone(), record.clone());
        self.write(format!("cannot journal the usage of workflow {}", record.workflow_id), move |tx, now| {
            fence(tx, &lease, record.workflow_id, now)?;
            let usage = record.usage;
            tx.prepare_cached(
                "INSERT INTO usage (workflow_id, step_output, llm_calls, prompt_tokens, completion_tokens, cost_usd) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                record.workflow_id.to_string(),
                record.step_output,
                usage.llm_calls,
                to_int(usage.prompt_tokens)?,
                to_int(usage.completion_tokens)?,
                record.cost_usd
            ])?;
            Ok(())
        })
        .await
    }

    async fn usage_records(&self, id: WorkflowId) -> Result<Vec<UsageRecord>> {
        self.read(format!("cannot read the usage of workflow {id}"), move |tx| {
            let sql = "SELECT step_output, llm_calls, prompt_tokens, completion_tokens, cost_usd FROM usage \
                       WHERE workflow_id = ?1 ORDER BY seq";
            collect(tx.prepare_cached(sql)?.query([id.to_string()])?, |row| read_usage(row, id))
        })
        .await
    }

    async fn delete_workflow(&self, id: WorkflowId) -> Result<()> {
        self.write(format!("cannot delete workflow {id}"), move |tx, _| delete_one(tx, &id.to_string()).map(drop)).await
    }

    async fn delete_end_user(&self, end_user_id: &str) -> Result<usize> {
        let end_user_id = end_user_id.to_owned();
        self.write(format!("cannot delete the workflows of end user {end_user_id:?}"), move |tx, _| {
            delete_selected(tx, "SELECT id FROM workflows WHERE end_user_id = ?1", [end_user_id])
        })
        .await
    }

    async fn prune_finished(&self, before: DateTime<Utc>) -> Result<usize> {
        self.write(format!("cannot prune workflows finished before {before}"), move |tx, _| {
            let select = "SELECT id FROM workflows WHERE state IN (?1, ?2) AND updated_at < ?3";
            let finished = [WorkflowState::Complete.as_str(), WorkflowState::Failed.as_str()];
            delete_selected(tx, select, params![finished[0], finished[1], cutoff_ms(before)])
        })
        .await
    }
}
