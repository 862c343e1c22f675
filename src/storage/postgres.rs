mod listen;
mod settings;

use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Transaction};
use tokio::sync::OnceCell;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use listen::Wakeups;
pub use settings::PostgresSettings;
use settings::{Target, URL_SETTING};

use super::bells::Bell;
use super::sql::{
    self, REPLACE_TOOL_CALL, StoredToolCall, TOOL_CALL_COLUMNS, from_int, from_json, parse_id, to_int, to_json,
};
use super::{
    Clock, Lease, LeaseGrant, LeaseState, LeaseStatus, Storage, ToolCallRecord, UsageRecord, WorkflowPage,
    WorkflowQuery,
};
use crate::events::{StoredEvent, WorkflowEvent};
use crate::ids::{PlanId, WorkflowId};
use crate::plan::Plan;
use crate::usage::Usage;
use crate::workflow::{Workflow, WorkflowState};
use crate::{Error, Result};

/// How often a wait for events looks while the LISTEN connection is down, so that it
/// cannot miss a notification lost meanwhile.
const UNHEARD_POLL: Duration = Duration::from_secs(1);

/// The schema, one script per version; `{S}` stands for the quoted schema name.
const MIGRATIONS: &[&str] =
    &[include_str!("postgres/0001_initial.sql"), include_str!("postgres/0002_cost_and_events.sql")];

/// Keeps everything in one Postgres database that processes on many machines share.
///
/// Every write is one transaction that locks the workflow's row (`SELECT ... FOR
/// UPDATE`) and then decides the lease or the fence, so two processes can never both
/// hold a workflow's lease and a run that lost its lease writes nothing. Lease times
/// are the database's clock (`clock_timestamp()`, read once the row is locked), never
/// a worker's, unless a [`Clock`] is given for tests. [`Storage::claim_runnable`]
/// takes the oldest queued runnable row with `FOR UPDATE SKIP LOCKED`, so claimers
/// never wait for one another; submissions and releases `NOTIFY portia_runnable`,
/// saves that store events `NOTIFY portia_events`, and one LISTEN connection per
/// store wakes [`Storage::wait_for_runnable`] and [`Storage::wait_for_events`].
///
/// The tables live in their own schema (default `portia`), created or upgraded on
/// first use in one transaction under an advisory lock, so processes starting at
/// once take turns; a schema written by a newer portia is refused with
/// [`Error::SchemaTooNew`]. TLS is rustls; `sslmode` in the URL means what it means
/// to libpq (see [`PostgresSettings`] and the [durability guide](crate::guide::durability)). Clones share one pool.
#[derive(Clone)]
pub struct PostgresStorage {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    pool: Pool,
    pool_size: usize,
    schema: String,
    /// `"schema"`, checked to be a plain identifier.
    quoted: String,
    /// `None`: the database's clock.
    clock: Option<Arc<dyn Clock>>,
    /// Set once the schema is up to date and the listener has started.
    ready: OnceCell<()>,
    wakeups: Arc<Wakeups>,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.lock().unwrap_or_else(PoisonError::into_inner).take() {
            listener.abort();
        }
    }
}

impl fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("PostgresStorage")
            .field("target", &inner.target.describe)
            .field("schema", &inner.schema)
            .field("pool_size", &inner.pool_size)
            .field("clock", &inner.clock.as_ref().map_or("database", |_| "injected"))
            .finish()
    }
}

impl PostgresStorage {
    /// Connects to the database `settings` name, creating or upgrading the schema
    /// now, so that a wrong URL or an unreachable server is reported at start-up.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `PORTIA_DATABASE_URL` (or the schema or pool
    /// setting) when a setting is not valid; [`Error::Storage`] saying what to check
    /// when the server cannot be reached, refuses the login, or has no such database;
    /// [`Error::SchemaTooNew`] for a schema written by a newer portia.
    pub async fn connect(settings: &PostgresSettings) -> Result<Self> {
        let store = Self::new(settings)?;
        store.ready().await?;
        Ok(store)
    }

    /// Connects as [`PostgresStorage::connect`] does, with leases on `clock` (a
    /// [`ManualClock`](super::ManualClock) in tests) instead of the database's.
    ///
    /// # Errors
    /// As [`PostgresStorage::connect`].
    pub async fn connect_with_clock(settings: &PostgresSettings, clock: Arc<dyn Clock>) -> Result<Self> {
        let store = Self::with_clock(settings, clock)?;
        store.ready().await?;
        Ok(store)
    }

    /// A store for the database `settings` name, without connecting: the pool
    /// connects, and the schema is created or upgraded, on first use. For code that
    /// cannot wait here, such as [`RunnerBuilder::build`](crate::runner::RunnerBuilder::build).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a setting is not valid; connection failures
    /// come from the first call that uses the store.
    pub fn new(settings: &PostgresSettings) -> Result<Self> {
        Self::build(settings, None)
    }

    /// As [`PostgresStorage::new`], with leases on `clock` instead of the database's.
    /// Processes sharing a schema must agree on the time.
    ///
    /// # Errors
    /// As [`PostgresStorage::new`].
    pub fn with_clock(settings: &PostgresSettings, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::build(settings, Some(clock))
    }

    fn build(settings: &PostgresSettings, clock: Option<Arc<dyn Clock>>) -> Result<Self> {
        settings.validate()?;
        let target = Target::parse(&settings.url)?;
        let manager = Manager::from_config(
            target.config.clone(),
            target.tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .build()
            .map_err(|e| Error::storage_source(None, "cannot set up the connection pool", e))?;
        let inner = Inner {
            quoted: format!("\"{}\"", settings.schema),
            schema: settings.schema.clone(),
            target,
            pool,
            pool_size: settings.pool_size,
            clock,
            ready: OnceCell::new(),
            wakeups: Arc::default(),
            listener: Mutex::new(None),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Brings the schema up to date and starts the listener, once.
    async fn ready(&self) -> Result<()> {
        self.inner
            .ready
            .get_or_try_init(|| async {
                self.migrate().await.map_err(|fail| self.error("cannot create or upgrade the schema", fail))?;
                self.start_listener().await;
                Ok(())
            })
            .await
            .map(drop)
    }

    /// Applies the migrations the schema lacks in one transaction, under an advisory
    /// lock on the schema's name, so that processes starting at once take turns.
    async fn migrate(&self) -> DbResult<()> {
        let mut client = self.inner.pool.get().await?;
        let tx = client.transaction().await?;
        let lock = format!("portia-migrate:{}", self.inner.schema);
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&lock]).await?;
        // Only create the schema when missing: a role allowed to use a schema an
        // administrator made need not be allowed to create schemas.
        let exists = tx.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&self.inner.schema]).await?;
        if exists.is_none() {
            tx.batch_execute(&self.sql("CREATE SCHEMA {S}")).await?;
        }
        let tracked = "CREATE TABLE IF NOT EXISTS {S}.schema_migrations \
                       (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())";
        tx.batch_execute(&self.sql(tracked)).await?;
        let row = tx.query_one(&self.sql("SELECT COALESCE(MAX(version), 0) FROM {S}.schema_migrations"), &[]).await?;
        let found: i32 = row.try_get(0)?;
        let supported = u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX);
        let found = u32::try_from(found).map_err(|_| Fail::Corrupt(format!("schema version {found} is unknown")))?;
        if found > supported {
            return Err(Fail::TooNew { found, supported });
        }
        for (version, script) in (1..).zip(MIGRATIONS).skip(found as usize) {
            tx.batch_execute(&self.sql(script)).await?;
            tx.execute(&self.sql("INSERT INTO {S}.schema_migrations (version) VALUES ($1)"), &[&version]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Starts the LISTEN connection and waits for its first attempt, so that a
    /// claim made after start-up cannot miss a notification sent after it.
    async fn start_listener(&self) {
        let (started, first) = tokio::sync::oneshot::channel();
        let task = listen::listen(
            self.inner.target.clone(),
            self.inner.schema.clone(),
            Arc::clone(&self.inner.wakeups),
            started,
        );
        let handle = tokio::spawn(task);
        if let Some(old) = self.inner.listener.lock().unwrap_or_else(PoisonError::into_inner).replace(handle) {
            old.abort();
        }
        let _ = first.await;
    }

    /// `sql` with `{S}` replaced by the quoted schema.
    fn sql(&self, sql: &str) -> String {
        sql.replace("{S}", &self.inner.quoted)
    }

    /// A pooled connection, once the schema is ready.
    async fn client(&self) -> DbResult<Object> {
        self.ready().await?;
        Ok(self.inner.pool.get().await?)
    }

    /// The store's time to the microsecond, the precision Postgres keeps, so that a
    /// lease reads back exactly as it was granted.
    async fn now(&self, tx: &Transaction<'_>) -> DbResult<DateTime<Utc>> {
        match &self.inner.clock {
            Some(clock) => Ok(micros(clock.now())),
            None => Ok(tx.query_one("SELECT clock_timestamp()", &[]).await?.try_get(0)?),
        }
    }

    /// The caller's error for `fail`; `what` says what was being done.
    fn error(&self, what: impl fmt::Display, fail: Fail) -> Error {
        let (target, schema, what) = (&self.inner.target.describe, &self.inner.schema, what.to_string());
        fail.into_error(None, &what, |driver| match driver {
            Driver::Db(e) | Driver::Pool(deadpool_postgres::PoolError::Backend(e)) => {
                pg_error(target, schema, &what, e)
            }
            Driver::Pool(other) => Error::storage_source(None, format!("{what} ({target})"), other),
        })
    }

    fn done<T>(&self, what: impl fmt::Display, result: DbResult<T>) -> Result<T> {
        result.map_err(|fail| self.error(what, fail))
    }
}

/// What the driver reported: Postgres, or the pool before any connection was had.
enum Driver {
    /// Postgres refused, or could not be reached.
    Db(tokio_postgres::Error),
    /// No connection could be had from the pool.
    Pool(deadpool_postgres::PoolError),
}

type Fail = sql::Fail<Driver>;
type DbResult<T> = std::result::Result<T, Fail>;

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(Driver::Db(e))
    }
}

impl From<deadpool_postgres::PoolError> for Fail {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Db(Driver::Pool(e))
    }
}

/// A Postgres error as a storage error that says what to check. Neither the URL nor
/// the password is ever part of it.
fn pg_error(target: &str, schema: &str, what: &str, e: tokio_postgres::Error) -> Error {
    let advice = match e.code() {
        Some(code) if *code == SqlState::INVALID_CATALOG_NAME => {
            format!("{target}: no such database; create it, or fix the database name in {URL_SETTING}")
        }
        Some(code) if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            format!("{target}: the server refused the login; check the user and password in {URL_SETTING}")
        }
        Some(code) if *code == SqlState::INSUFFICIENT_PRIVILEGE => format!(
            "{target}: the database user lacks a privilege on schema {schema}; grant it, or set \
             PORTIA_DATABASE_SCHEMA to a schema the user owns"
        ),
        Some(code) if *code == SqlState::TOO_MANY_CONNECTIONS => format!(
            "{target}: the server has no connection to spare; lower PORTIA_DATABASE_POOL_SIZE or raise the \
             server's max_connections"
        ),
        Some(_) => target.to_owned(),
        None if e.to_string().contains("TLS") || e.to_string().contains("tls") => format!(
            "{target}: the TLS handshake failed; check sslmode and sslrootcert in {URL_SETTING} \
             (verify-full needs a certificate for the host name, from a known authority or sslrootcert)"
        ),
        None => format!(
            "cannot reach {target}; check the host and port in {URL_SETTING}, and that Postgres is running \
             and accepts TCP connections from here"
        ),
    };
    Error::storage_source(None, format!("{what} ({advice})"), e)
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// `before` to the microsecond, rounded up: a time stored in whole microseconds is
/// earlier than `before` exactly when it is earlier than this.
fn cutoff_micros(before: DateTime<Utc>) -> DateTime<Utc> {
    let fraction = !before.timestamp_subsec_nanos().is_multiple_of(1_000);
    let rounded = micros(before);
    if fraction { rounded.checked_add_signed(chrono::Duration::microseconds(1)).unwrap_or(rounded) } else { rounded }
}

/// A workflow's lease columns, cancellation request and version.
struct LeaseRow {
    lease: LeaseState,
    cancel_requested: Option<String>,
    version: u64,
}

const LOCK_ROW: &str = "SELECT lease_owner, lease_epoch, lease_expires_at, attempts, cancel_requested, version \
                        FROM {S}.workflows WHERE id = $1 FOR UPDATE";
const STORE_LEASE: &str = "UPDATE {S}.workflows SET lease_owner = $2, lease_epoch = $3, lease_expires_at = $4, \
                           attempts = $5 WHERE id = $1";
const INSERT_WORKFLOW: &str = "INSERT INTO {S}.workflows \
                               (id, plan_id, state, version, end_user_id, body, updated_at, queued) \
                               VALUES ($1, $2, $3, $4, $5, $6, $7, \
                               CASE WHEN $8::boolean THEN nextval('{S}.submissions') END) \
                               ON CONFLICT (id) DO NOTHING";
const UPDATE_WORKFLOW: &str = "UPDATE {S}.workflows SET plan_id = $2, state = $3, version = $4, end_user_id = $5, \
                               body = $6, updated_at = $7 WHERE id = $1";
const NEXT_RUNNABLE: &str = "SELECT id FROM {S}.workflows WHERE queued IS NOT NULL \
                             AND state IN ('NOT_STARTED', 'IN_PROGRESS', 'READY_TO_RESUME') \
                             AND (lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= $1) \
                             ORDER BY queued LIMIT 1 FOR UPDATE SKIP LOCKED";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

impl PostgresStorage {
    async fn query(&self, tx: &Transaction<'_>, sql: &str, args: &[&(dyn ToSql + Sync)]) -> DbResult<Vec<Row>> {
        let statement = tx.prepare_cached(&self.sql(sql)).await?;
        Ok(tx.query(&statement, args).await?)
    }

    async fn execute(&self, tx: &Transaction<'_>, sql: &str, args: &[&(dyn ToSql + Sync)]) -> DbResult<u64> {
        let statement = tx.prepare_cached(&self.sql(sql)).await?;
        Ok(tx.execute(&statement, args).await?)
    }

    /// Locks workflow `id`'s row for the rest of the transaction and reads its lease.
    async fn lock_row(&self, tx: &Transaction<'_>, id: WorkflowId) -> DbResult<Option<LeaseRow>> {
        let rows = self.query(tx, LOCK_ROW, &[&id.to_string()]).await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let lease = LeaseState {
            owner: row.try_get(0)?,
            epoch: from_int(row.try_get(1)?)?,
            expires_at: row.try_get(2)?,
            attempts: from_int(row.try_get(3)?)?,
        };
        Ok(Some(LeaseRow { lease, cancel_requested: row.try_get(4)?, version: from_int(row.try_get(5)?)? }))
    }

    async fn store_lease(&self, tx: &Transaction<'_>, id: WorkflowId, lease: &LeaseState) -> DbResult<()> {
        let args: [&(dyn ToSql + Sync); 5] =
            [&id.to_string(), &lease.owner, &to_int(lease.epoch)?, &lease.expires_at, &i64::from(lease.attempts)];
        self.execute(tx, STORE_LEASE, &args).await?;
        Ok(())
    }

    /// Locks workflow `target` and refuses unless `lease` is its current lease.
    /// Returns the row and the time read once it was locked.
    async fn fence(
        &self,
        tx: &Transaction<'_>,
        lease: &Lease,
        target: WorkflowId,
    ) -> DbResult<(LeaseRow, DateTime<Utc>)> {
        let lost = Error::LeaseLost { workflow_id: lease.workflow_id };
        // A lease covers its own workflow only.
        if target != lease.workflow_id {
            return Err(lost.into());
        }
        let row = self.lock_row(tx, target).await?.ok_or(lost)?;
        let now = self.now(tx).await?;
        row.lease.check_fence(lease, now)?;
        Ok((row, now))
    }

    /// Takes the lease of workflow `id` for `owner`, by the protocol of [`LeaseState`].
    async fn grant(
        &self,
        tx: &Transaction<'_>,
        id: WorkflowId,
        owner: &str,
        ttl: Duration,
        now: Option<DateTime<Utc>>,
    ) -> DbResult<LeaseGrant> {
        let row = self.lock_row(tx, id).await?.ok_or(Error::WorkflowNotFound(id))?;
        let now = match now {
            Some(now) => now,
            None => self.now(tx).await?,
        };
        let workflow = self.load_workflow(tx, id).await?;
        let (next, lease, reclaimed) = row.lease.acquire(&workflow, owner, ttl, now)?;
        self.store_lease(tx, id, &next).await?;
        let attempts = next.attempts;
        Ok(LeaseGrant { lease, workflow, reclaimed, attempts, cancel_requested: row.cancel_requested })
    }

    async fn load_workflow(&self, tx: &Transaction<'_>, id: WorkflowId) -> DbResult<Workflow> {
        let rows = self.query(tx, "SELECT body FROM {S}.workflows WHERE id = $1", &[&id.to_string()]).await?;
        let row = rows.first().ok_or(Error::WorkflowNotFound(id))?;
        from_json(&row.try_get::<_, String>(0)?, &format!("workflow {id}"))
    }

    async fn notify(&self, tx: &Transaction<'_>) -> DbResult<()> {
        self.query(tx, NOTIFY, &[&listen::CHANNEL, &self.inner.schema]).await.map(drop)
    }

    /// Tells every store listening, once `tx` commits, that workflow `id` has new events.
    async fn notify_events(&self, tx: &Transaction<'_>, id: WorkflowId) -> DbResult<()> {
        let payload = listen::events_payload(&self.inner.schema, id);
        self.query(tx, NOTIFY, &[&listen::EVENTS_CHANNEL, &payload]).await.map(drop)
    }

    async fn try_insert(&self, workflow: &Workflow, queued: bool) -> DbResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = self.now(&tx).await?;
        let id = workflow.id().to_string();
        let body = to_json(workflow, &format!("workflow {id}"))?;
        let args: [&(dyn ToSql + Sync); 8] = [
            &id,
            &workflow.plan_id().to_string(),
            &workflow.state().as_str(),
            &to_int(workflow.version())?,
            &workflow.execution_context().end_user_id,
            &body,
            &now,
            &queued,
        ];
        if self.execute(&tx, INSERT_WORKFLOW, &args).await? == 0 {
            let rows = self.query(&tx, "SELECT version FROM {S}.workflows WHERE id = $1", &[&id]).await?;
            let found = rows.first().map(|row| row.try_get::<_, i64>(0)).transpose()?.unwrap_or(0);
            return Err(
                Error::VersionConflict { workflow_id: workflow.id(), expected: 0, found: from_int(found)? }.into()
            );
        }
        if queued {
            self.notify(&tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn try_save_plan(&self, plan: &Plan) -> DbResult<()> {
        let body = to_json(plan, "the plan")?;
        let client = self.client().await?;
        // Plans never change, so a stored one is kept as it is.
        let sql = self.sql("INSERT INTO {S}.plans (id, body) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING");
        let statement = client.prepare_cached(&sql).await?;
        client.execute(&statement, &[&plan.id.to_string(), &body]).await?;
        Ok(())
    }

    async fn try_get_plan(&self, id: PlanId) -> DbResult<Plan> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&self.sql("SELECT body FROM {S}.plans WHERE id = $1")).await?;
        let row = client.query_opt(&statement, &[&id.to_string()]).await?.ok_or(Error::PlanNotFound(id))?;
        from_json(&row.try_get::<_, String>(0)?, &format!("plan {id}"))
    }

    async fn try_get_workflow(&self, id: WorkflowId) -> DbResult<Workflow> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let workflow = self.load_workflow(&tx, id).await?;
        tx.commit().await?;
        Ok(workflow)
    }

    async fn try_list(&self, query: &WorkflowQuery) -> DbResult<WorkflowPage> {
        let mut client = self.client().await?;
        // One snapshot for the count and the page.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let state = query.state.map(WorkflowState::as_str);
        let filter = "($1::text IS NULL OR state = $1)";
        let count: i64 =
            self.query(&tx, &format!("SELECT COUNT(*) FROM {{S}}.workflows WHERE {filter}"), &[&state]).await?[0]
                .try_get(0)?;
        let (limit, offset) = sql::page_rows(query);
        let sql = format!("SELECT id, body FROM {{S}}.workflows WHERE {filter} ORDER BY id LIMIT $2 OFFSET $3");
        let rows = self.query(&tx, &sql, &[&state, &to_int(limit)?, &to_int(offset)?]).await?;
        tx.commit().await?;
        let rows = rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect::<DbResult<Vec<_>>>()?;
        sql::workflow_page(rows, count, query)
    }

    async fn try_update(&self, workflow: &Workflow, lease: &Lease, events: &[WorkflowEvent]) -> DbResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (row, now) = self.fence(&tx, lease, lease.workflow_id).await?;
        let expected = workflow.version().saturating_sub(1);
        if lease.workflow_id != workflow.id() || row.version != expected {
            let found = row.version;
            return Err(Error::VersionConflict { workflow_id: workflow.id(), expected, found }.into());
        }
        let id = workflow.id().to_string();
        let body = to_json(workflow, &format!("workflow {id}"))?;
        let args: [&(dyn ToSql + Sync); 7] = [
            &id,
            &workflow.plan_id().to_string(),
            &workflow.state().as_str(),
            &to_int(workflow.version())?,
            &workflow.execution_context().end_user_id,
            &body,
            &now,
        ];
        self.execute(&tx, UPDATE_WORKFLOW, &args).await?;
        if !events.is_empty() {
            self.append_events(&tx, &id, events).await?;
            self.notify_events(&tx, workflow.id()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores `events` after the workflow's earlier ones (its row is locked by the fence).
    async fn append_events(&self, tx: &Transaction<'_>, id: &str, events: &[WorkflowEvent]) -> DbResult<()> {
        let last =
            self.query(tx, "SELECT COALESCE(MAX(seq), 0) FROM {S}.events WHERE workflow_id = $1", &[&id]).await?;
        let last: i64 = last.first().map(|row| row.try_get(0)).transpose()?.unwrap_or(0);
        for (seq, event) in (last + 1..).zip(events) {
            let body = to_json(event, &format!("an event of workflow {id}"))?;
            let sql = "INSERT INTO {S}.events (workflow_id, seq, body) VALUES ($1, $2, $3)";
            self.execute(tx, sql, &[&id, &seq, &body]).await?;
        }
        Ok(())
    }

    async fn try_events(&self, id: WorkflowId, after: u64) -> DbResult<Vec<StoredEvent>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let exists = self.query(&tx, "SELECT 1 FROM {S}.workflows WHERE id = $1", &[&id.to_string()]).await?;
        if exists.is_empty() {
            return Err(Error::WorkflowNotFound(id).into());
        }
        let sql = "SELECT seq, body FROM {S}.events WHERE workflow_id = $1 AND seq > $2 ORDER BY seq";
        let rows = self.query(&tx, sql, &[&id.to_string(), &to_int(after)?]).await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get(0)?;
                let body: String = row.try_get(1)?;
                let event = from_json(&body, &format!("event {seq} of workflow {id}"))?;
                Ok(StoredEvent { seq: from_int(seq)?, event })
            })
            .collect()
    }

    /// Whether workflow `id` has events numbered after `after`, in one statement.
    async fn try_has_events_after(&self, id: WorkflowId, after: u64) -> DbResult<bool> {
        let client = self.client().await?;
        let sql = self.sql(
            "SELECT EXISTS (SELECT 1 FROM {S}.workflows WHERE id = $1), \
             EXISTS (SELECT 1 FROM {S}.events WHERE workflow_id = $1 AND seq > $2)",
        );
        let statement = client.prepare_cached(&sql).await?;
        let row = client.query_one(&statement, &[&id.to_string(), &to_int(after)?]).await?;
        if !row.try_get::<_, bool>(0)? {
            return Err(Error::WorkflowNotFound(id).into());
        }
        Ok(row.try_get(1)?)
    }

    /// Rings `bell` every [`UNHEARD_POLL`] while the LISTEN connection is down, until dropped.
    async fn look_while_unheard(&self, bell: &Bell<'_>) -> Infallible {
        loop {
            tokio::time::sleep(UNHEARD_POLL).await;
            if !self.inner.wakeups.listening() {
                bell.ring();
            }
        }
    }

    async fn try_acquire(&self, id: WorkflowId, owner: &str, ttl: Duration) -> DbResult<LeaseGrant> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let grant = self.grant(&tx, id, owner, ttl, None).await?;
        tx.commit().await?;
        Ok(grant)
    }

    async fn try_claim(&self, owner: &str, ttl: Duration) -> DbResult<Option<LeaseGrant>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Read before the claim query: it skips locked rows instead of waiting, so the
        // time cannot go stale, and the lease decision below uses the same time.
        let now = self.now(&tx).await?;
        // A row that cannot be read is taken off the queue, so it never blocks the others.
        loop {
            let rows = self.query(&tx, NEXT_RUNNABLE, &[&now]).await?;
            let Some(row) = rows.first() else {
                tx.commit().await?;
                return Ok(None);
            };
            let raw: String = row.try_get(0)?;
            let granted = match parse_id(&raw) {
                Ok(id) => self.grant(&tx, id, owner, ttl, Some(now)).await,
                Err(fail) => Err(fail),
            };
            match granted {
                Ok(grant) => {
                    tx.commit().await?;
                    return Ok(Some(grant));
                }
                Err(fail) => {
                    let why = fail.unreadable().ok_or(fail)?;
                    self.execute(&tx, "UPDATE {S}.workflows SET queued = NULL WHERE id = $1", &[&raw]).await?;
                    sql::log_dequeued(&raw, &why);
                }
            }
        }
    }

    async fn try_renew(&self, lease: &Lease, ttl: Duration) -> DbResult<LeaseStatus> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = lease.workflow_id;
        let row = self.lock_row(&tx, id).await?.ok_or(Error::LeaseLost { workflow_id: id })?;
        let now = self.now(&tx).await?;
        let next = row.lease.renew(lease, ttl, now)?;
        self.store_lease(&tx, id, &next).await?;
        tx.commit().await?;
        Ok(LeaseStatus { expires_at: next.expires_at.unwrap_or(now), cancel_requested: row.cancel_requested })
    }

    async fn try_release(&self, lease: &Lease) -> DbResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(row) = self.lock_row(&tx, lease.workflow_id).await? {
            self.store_lease(&tx, lease.workflow_id, &row.lease.release(lease)).await?;
            self.notify(&tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn try_cancel(&self, id: WorkflowId, reason: &str) -> DbResult<()> {
        let client = self.client().await?;
        let sql = self.sql("UPDATE {S}.workflows SET cancel_requested = $2 WHERE id = $1");
        let statement = client.prepare_cached(&sql).await?;
        if client.execute(&statement, &[&id.to_string(), &reason]).await? == 0 {
            return Err(Error::WorkflowNotFound(id).into());
        }
        Ok(())
    }

    /// Inserts a journal record; `on_conflict` says what to do when its key is stored.
    /// Returns whether a row was written.
    async fn put_tool_call(&self, tx: &Transaction<'_>, record: &ToolCallRecord, on_conflict: &str) -> DbResult<bool> {
        let key = record.key;
        let sql = format!(
            "INSERT INTO {{S}}.tool_calls ({TOOL_CALL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (workflow_id, step, attempt, seq) {on_conflict}"
        );
        let args: [&(dyn ToSql + Sync); 11] = [
            &key.workflow_id.to_string(),
            &to_int(key.step)?,
            &i64::from(key.attempt),
            &i64::from(key.seq),
            &record.tool_id,
            &record.end_user_id,
            &to_json(&record.input, &format!("the input of tool call {key}"))?,
            &record.status.as_str(),
            &to_json(&record.output, &format!("the output of tool call {key}"))?,
            &record.started_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            &record.latency_seconds,
        ];
        Ok(self.execute(tx, &sql, &args).await? > 0)
    }

    async fn try_begin_tool_call(&self, lease: &Lease, intent: &ToolCallRecord) -> DbResult<Option<ToolCallRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let key = intent.key;
        self.fence(&tx, lease, key.workflow_id).await?;
        if self.put_tool_call(&tx, intent, "DO NOTHING").await? {
            tx.commit().await?;
            return Ok(None);
        }
        let sql = format!(
            "SELECT {TOOL_CALL_COLUMNS} FROM {{S}}.tool_calls \
             WHERE workflow_id = $1 AND step = $2 AND attempt = $3 AND seq = $4"
        );
        let args: [&(dyn ToSql + Sync); 4] =
            [&key.workflow_id.to_string(), &to_int(key.step)?, &i64::from(key.attempt), &i64::from(key.seq)];
        let rows = self.query(&tx, &sql, &args).await?;
        tx.commit().await?;
        let row =
            rows.first().ok_or_else(|| Fail::Corrupt(format!("tool call {key} is journaled but cannot be read")))?;
        read_tool_call(row).map(Some)
    }

    async fn try_finish_tool_call(&self, lease: &Lease, record: &ToolCallRecord) -> DbResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        self.fence(&tx, lease, record.key.workflow_id).await?;
        self.put_tool_call(&tx, record, REPLACE_TOOL_CALL).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn try_tool_calls(&self, id: WorkflowId) -> DbResult<Vec<ToolCallRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let sql = format!(
            "SELECT {TOOL_CALL_COLUMNS} FROM {{S}}.tool_calls WHERE workflow_id = $1 ORDER BY step, attempt, seq"
        );
        let rows = self.query(&tx, &sql, &[&id.to_string()]).await?;
        tx.commit().await?;
        rows.iter().map(read_tool_call).collect()
    }

    async fn try_record_usage(&self, lease: &Lease, record: &UsageRecord) -> DbResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        self.fence(&tx, lease, record.workflow_id).await?;
        let usage = record.usage;
        let sql = "INSERT INTO {S}.usage (workflow_id, step_output, llm_calls, prompt_tokens, completion_tokens, \
                   cost_usd) VALUES ($1, $2, $3, $4, $5, $6)";
        let args: [&(dyn ToSql + Sync); 6] = [
            &record.workflow_id.to_string(),
            &record.step_output,
            &i64::from(usage.llm_calls),
            &to_int(usage.prompt_tokens)?,
            &to_int(usage.completion_tokens)?,
            &record.cost_usd,
        ];
        self.execute(&tx, sql, &args).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn try_usage_records(&self, id: WorkflowId) -> DbResult<Vec<UsageRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let sql = "SELECT step_output, llm_calls, prompt_tokens, completion_tokens, cost_usd FROM {S}.usage \
                   WHERE workflow_id = $1 ORDER BY seq";
        let rows = self.query(&tx, sql, &[&id.to_string()]).await?;
        tx.commit().await?;
        rows.iter().map(|row| read_usage(row, id)).collect()
    }

    /// Deletes a workflow with its journal and usage (by cascade), and its plan once
    /// unused. Returns whether the workflow was stored.
    async fn delete_one(&self, tx: &Transaction<'_>, id: &str) -> DbResult<bool> {
        let rows = self.query(tx, "SELECT plan_id FROM {S}.workflows WHERE id = $1", &[&id]).await?;
        let Some(row) = rows.first() else { return Ok(false) };
        let plan_id: String = row.try_get(0)?;
        // Deletions of two workflows of one plan take turns on the plan's row, so the
        // second sees the first gone and deletes the plan.
        self.query(tx, "SELECT 1 FROM {S}.plans WHERE id = $1 FOR UPDATE", &[&plan_id]).await?;
        self.execute(tx, "DELETE FROM {S}.workflows WHERE id = $1", &[&id]).await?;
        let unused =
            "DELETE FROM {S}.plans WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM {S}.workflows WHERE plan_id = $1)";
        self.execute(tx, unused, &[&plan_id]).await?;
        Ok(true)
    }

    /// Deletes every workflow whose id `select` (a query with parameters `args`) returns.
    async fn delete_selected(&self, select: &str, args: &[&(dyn ToSql + Sync)]) -> DbResult<usize> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let ids = self.query(&tx, select, args).await?;
        for row in &ids {
            self.delete_one(&tx, &row.try_get::<_, String>(0)?).await?;
        }
        tx.commit().await?;
        Ok(ids.len())
    }
}

fn read_tool_call(row: &Row) -> DbResult<ToolCallRecord> {
    StoredToolCall {
        workflow_id: row.try_get(0)?,
        step: row.try_get(1)?,
        attempt: row.try_get(2)?,
        seq: row.try_get(3)?,
        tool_id: row.try_get(4)?,
        end_user_id: row.try_get(5)?,
        input: row.try_get(6)?,
        status: row.try_get(7)?,
        output: row.try_get(8)?,
        started_at: row.try_get(9)?,
        latency_seconds: row.try_get(10)?,
    }
    .decode()
}

fn read_usage(row: &Row, workflow_id: WorkflowId) -> DbResult<UsageRecord> {
    let usage = Usage {
        llm_calls: from_int(row.try_get(1)?)?,
        prompt_tokens: from_int(row.try_get(2)?)?,
        completion_tokens: from_int(row.try_get(3)?)?,
    };
    Ok(UsageRecord { workflow_id, step_output: row.try_get(0)?, usage, cost_usd: row.try_get(4)? })
}

#[async_trait::async_trait]
impl Storage for PostgresStorage {
    async fn save_plan(&self, plan: &Plan) -> Result<()> {
        self.done(format!("cannot save plan {}", plan.id), self.try_save_plan(plan).await)
    }

    async fn get_plan(&self, id: PlanId) -> Result<Plan> {
        self.done(format!("cannot load plan {id}"), self.try_get_plan(id).await)
    }

    async fn create_workflow(&self, workflow: &Workflow) -> Result<()> {
        self.done(format!("cannot create workflow {}", workflow.id()), self.try_insert(workflow, false).await)
    }

    async fn submit_workflow(&self, workflow: &Workflow) -> Result<()> {
        self.done(format!("cannot submit workflow {}", workflow.id()), self.try_insert(workflow, true).await)?;
        // This process's waiting workers need not wait for the notification's round trip.
        listen::wake(&self.inner.wakeups.runnable);
        Ok(())
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Workflow> {
        self.done(format!("cannot load workflow {id}"), self.try_get_workflow(id).await)
    }

    async fn list_workflows(&self, query: &WorkflowQuery) -> Result<WorkflowPage> {
        self.done("cannot list workflows", self.try_list(query).await)
    }

    async fn update_workflow(&self, workflow: &Workflow, lease: &Lease, events: &[WorkflowEvent]) -> Result<()> {
        self.done(format!("cannot save workflow {}", workflow.id()), self.try_update(workflow, lease, events).await)?;
        if !events.is_empty() {
            // This process's watchers need not wait for the notification's round trip.
            self.inner.wakeups.events.ring(workflow.id());
        }
        Ok(())
    }

    async fn events(&self, id: WorkflowId, after: u64) -> Result<Vec<StoredEvent>> {
        self.done(format!("cannot read the events of workflow {id}"), self.try_events(id, after).await)
    }

    async fn wait_for_events(&self, id: WorkflowId, after: u64, timeout: Duration) -> Result<bool> {
        let bell = self.inner.wakeups.events.bell(id);
        let look = || async {
            self.done(format!("cannot read the events of workflow {id}"), self.try_has_events_after(id, after).await)
        };
        tokio::select! {
            found = bell.wait(timeout, look) => found,
            never = self.look_while_unheard(&bell) => match never {},
        }
    }

    async fn acquire_lease(&self, id: WorkflowId, owner: &str, ttl: Duration) -> Result<LeaseGrant> {
        self.done(format!("cannot take the lease of workflow {id}"), self.try_acquire(id, owner, ttl).await)
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<LeaseStatus> {
        let what = format!("cannot renew the lease of workflow {}", lease.workflow_id);
        self.done(what, self.try_renew(lease, ttl).await)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let what = format!("cannot release the lease of workflow {}", lease.workflow_id);
        self.done(what, self.try_release(lease).await)?;
        listen::wake(&self.inner.wakeups.runnable);
        Ok(())
    }

    async fn claim_runnable(&self, owner: &str, ttl: Duration) -> Result<Option<LeaseGrant>> {
        self.done("cannot claim a runnable workflow", self.try_claim(owner, ttl).await)
    }

    async fn wait_for_runnable(&self, timeout: Duration) {
        // Without a listener (the database unreachable), the wait is a plain poll interval.
        if let Err(e) = self.ready().await {
            tracing::debug!(error = %e, "waiting without a listener");
        }
        let _ = tokio::time::timeout(timeout, self.inner.wakeups.runnable.notified()).await;
    }

    async fn request_cancel(&self, id: WorkflowId, reason: &str) -> Result<()> {
        self.done(format!("cannot request the cancellation of workflow {id}"), self.try_cancel(id, reason).await)
    }

    async fn begin_tool_call(&self, lease: &Lease, intent: &ToolCallRecord) -> Result<Option<ToolCallRecord>> {
        self.done(format!("cannot journal tool call {}", intent.key), self.try_begin_tool_call(lease, intent).await)
    }

    async fn finish_tool_call(&self, lease: &Lease, record: &ToolCallRecord) -> Result<()> {
        let what = format!("cannot journal the outcome of tool call {}", record.key);
        self.done(what, self.try_finish_tool_call(lease, record).await)
    }

    async fn tool_calls(&self, id: WorkflowId) -> Result<Vec<ToolCallRecord>> {
        self.done(format!("cannot read the tool calls of workflow {id}"), self.try_tool_calls(id).await)
    }

    async fn record_usage(&self, lease: &Lease, record: &UsageRecord) -> Result<()> {
        let what = format!("cannot journal the usage of workflow {}", record.workflow_id);
        self.done(what, self.try_record_usage(lease, record).await)
    }

    async fn usage_records(&self, id: WorkflowId) -> Result<Vec<UsageRecord>> {
        self.done(format!("cannot read the usage of workflow {id}"), self.try_usage_records(id).await)
    }

    async fn delete_workflow(&self, id: WorkflowId) -> Result<()> {
        let select = "SELECT id FROM {S}.workflows WHERE id = $1";
        self.done(format!("cannot delete workflow {id}"), self.delete_selected(select, &[&id.to_string()]).await)
            .map(drop)
    }

    async fn delete_end_user(&self, end_user_id: &str) -> Result<usize> {
        let select = "SELECT id FROM {S}.workflows WHERE end_user_id = $1 ORDER BY id";
        let what = format!("cannot delete the workflows of end user {end_user_id:?}");
        self.done(what, self.delete_selected(select, &[&end_user_id]).await)
    }

    async fn prune_finished(&self, before: DateTime<Utc>) -> Result<usize> {
        let select = "SELECT id FROM {S}.workflows WHERE state IN ('COMPLETE', 'FAILED') AND updated_at < $1 \
                      ORDER BY id";
        let what = format!("cannot prune workflows finished before {before}");
        self.done(what, self.delete_selected(select, &[&cutoff_micros(before)]).await)
    }
}
