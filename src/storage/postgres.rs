mod listen;
mod settings;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::runtime::Handle;
use tokio::sync::OnceCell;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use listen::Wakeups;
pub use settings::PostgresSettings;
use settings::{Target, URL_SETTING};

use super::bells::Bell;
use super::rows::{Access, LeaseRow, RowError, RowStore, RowTx, Work};
use super::sql::{self, REPLACE_TOOL_CALL, StoredToolCall, TOOL_CALL_COLUMNS, from_int, from_json, to_int, to_json};
use super::{Clock, LeaseState, SetAside, ToolCallKey, ToolCallRecord, UsageRecord, WorkflowPage, WorkflowQuery};
use crate::events::StoredEvent;
use crate::ids::{PlanId, WorkflowId};
use crate::plan::Plan;
use crate::usage::Usage;
use crate::workflow::{Workflow, WorkflowState};
use crate::{Error, Result};

/// How often a wait for events looks while the LISTEN connection is down, so that it
/// cannot miss a notification lost meanwhile.
const UNHEARD_POLL: Duration = Duration::from_secs(1);

/// The schema, one script per version; `{S}` stands for the quoted schema name.
const MIGRATIONS: &[&str] = &[
    include_str!("postgres/0001_initial.sql"),
    include_str!("postgres/0002_cost_and_events.sql"),
    include_str!("postgres/0003_cache_tokens.sql"),
    include_str!("postgres/0004_end_user_listing.sql"),
    include_str!("postgres/0005_set_aside.sql"),
];

/// Keeps everything in one Postgres database that processes on many machines share.
///
/// Every write is one transaction that locks the workflow's row (`SELECT ... FOR
/// UPDATE`) and then decides the lease or the fence (the protocol all stores share), so two processes can never both
/// hold a workflow's lease and a run that lost its lease writes nothing. Lease times
/// are the database's clock (`clock_timestamp()`, read once the row is locked), never
/// a worker's, unless a [`Clock`] is given for tests. [`LeaseQueue::claim_runnable`](super::LeaseQueue::claim_runnable)
/// takes the oldest queued runnable row with `FOR UPDATE SKIP LOCKED`, so claimers
/// never wait for one another; submissions and releases `NOTIFY portia_runnable`,
/// saves that store events `NOTIFY portia_events`, and one LISTEN connection per
/// store wakes [`LeaseQueue::wait_for_runnable`](super::LeaseQueue::wait_for_runnable) and [`WorkflowStore::wait_for_events`](super::WorkflowStore::wait_for_events).
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
        // tokio-postgres's `connect_timeout` covers the TCP connect only; the pool's
        // bounds the login as well, so a host that accepts and never answers fails.
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(target.config.get_connect_timeout().copied())
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
                self.migrate().await.map_err(|fail| self.describe("cannot create or upgrade the schema", fail))?;
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
        let found = u32::try_from(found).map_err(|_| RowError::value(format!("schema version {found} is unknown")))?;
        if found > supported {
            return Err(Error::SchemaTooNew { path: None, found, supported }.into());
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

    /// Rings `bell` every [`UNHEARD_POLL`] while the LISTEN connection is down, until dropped.
    async fn look_while_unheard(&self, bell: &Bell<'_>) -> Infallible {
        loop {
            tokio::time::sleep(UNHEARD_POLL).await;
            if !self.inner.wakeups.listening() {
                bell.ring();
            }
        }
    }
}

type DbResult<T> = std::result::Result<T, RowError>;

impl From<tokio_postgres::Error> for RowError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::store(e)
    }
}

impl From<deadpool_postgres::PoolError> for RowError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::store(e)
    }
}

impl RowStore for PostgresStorage {
    /// Runs `work` on a pooled connection in one transaction, on a blocking thread
    /// that drives each statement with the runtime's `Handle::block_on` (see
    /// [`RowStore`] for why). A read is a read-only REPEATABLE READ
    /// transaction, so that its queries see one snapshot.
    ///
    /// Statements whose results the work does not read (`BEGIN`, the writes that
    /// return nothing, notifications, `COMMIT`) are sent without waiting for their
    /// answers, which come back with the next statement's: tokio-postgres pipelines
    /// requests on a connection. A save is three round trips instead of eight
    /// (with the clock read behind the row lock, see `Rows::lock_row`).
    async fn transaction<T: Send + 'static>(&self, access: Access, work: Work<T>) -> DbResult<T> {
        self.ready().await?;
        let client = Open(Some(self.inner.pool.get().await?));
        let (inner, runtime) = (Arc::clone(&self.inner), Handle::current());
        let task = tokio::task::spawn_blocking(move || {
            let mut rows = Rows::new(client.connection(), &runtime, &inner);
            let outcome = rows.send_static(begin_sql(access)).and_then(|()| {
                let value = work(&mut rows)?;
                rows.send_static("COMMIT")?;
                rows.confirm()?;
                Ok(value)
            });
            // A connection whose transaction could not be ended goes, rather than back to the pool.
            let ended = outcome.is_ok() || rows.roll_back();
            drop(rows);
            if ended {
                client.release();
            }
            outcome
        });
        finished(task.await)
    }

    /// Runs `work` on a pooled connection without a transaction (each statement
    /// commits on its own), sparing the `BEGIN` and `COMMIT` round trips of a read
    /// that needs no snapshot.
    async fn read<T: Send + 'static>(&self, work: Work<T>) -> DbResult<T> {
        self.ready().await?;
        let client = self.inner.pool.get().await?;
        let (inner, runtime) = (Arc::clone(&self.inner), Handle::current());
        let task = tokio::task::spawn_blocking(move || {
            let mut rows = Rows::new(&client, &runtime, &inner);
            let value = work(&mut rows)?;
            rows.confirm()?;
            Ok(value)
        });
        finished(task.await)
    }

    fn describe(&self, what: &str, error: RowError) -> Error {
        let (target, schema) = (&self.inner.target.describe, &self.inner.schema);
        match error {
            RowError::Store(source) => match source.downcast::<tokio_postgres::Error>() {
                Ok(e) => pg_error(target, schema, what, *e),
                Err(source) => match source.downcast::<deadpool_postgres::PoolError>() {
                    Ok(e) => match *e {
                        deadpool_postgres::PoolError::Backend(e) => pg_error(target, schema, what, e),
                        deadpool_postgres::PoolError::Timeout(_) => silent_server(&self.inner.target, what),
                        other => Error::storage_source(None, format!("{what} ({target})"), other),
                    },
                    Err(source) => Error::Storage { path: None, message: what.to_owned(), source: Some(source) },
                },
            },
            RowError::Value { message, source } => {
                Error::Unreadable { path: None, message: format!("{what}: {message}"), source }
            }
            RowError::Refused(e) => e,
        }
    }

    fn runnable_changed(&self) {
        // This process's waiting workers need not wait for the notification's round trip.
        listen::wake(&self.inner.wakeups.runnable);
    }

    fn workflow_saved(&self, workflow: &Workflow, events_stored: bool) {
        if events_stored {
            // This process's watchers need not wait for the notification's round trip.
            self.inner.wakeups.events.ring(workflow.id());
        }
    }

    async fn watch_events(&self, id: WorkflowId, after: u64, timeout: Duration) -> Result<bool> {
        let bell = self.inner.wakeups.events.bell(id);
        tokio::select! {
            found = bell.wait(timeout, || super::protocol::has_events_after(self, id, after)) => found,
            never = self.look_while_unheard(&bell) => match never {},
        }
    }

    async fn watch_runnable(&self, timeout: Duration) {
        // Without a listener (the database unreachable), the wait is a plain poll interval.
        if let Err(e) = self.ready().await {
            tracing::debug!(error = %e, "waiting without a listener");
        }
        let _ = tokio::time::timeout(timeout, self.inner.wakeups.runnable.notified()).await;
    }
}

/// The outcome of a blocking database task, or why it did not finish.
fn finished<T>(joined: std::result::Result<DbResult<T>, tokio::task::JoinError>) -> DbResult<T> {
    let stopped = |e| Error::storage_source(None, "the database task stopped before it finished", e);
    joined.map_err(|e| RowError::Refused(stopped(e)))?
}

/// The statement that begins a transaction of the kind `access` needs.
fn begin_sql(access: Access) -> &'static str {
    match access {
        Access::Read => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        _ => "BEGIN",
    }
}

/// A pooled connection a transaction runs on. Unless [`Open::release`]d once the
/// transaction has ended, it is taken out of the pool when dropped (the work
/// panicked), so that no one is handed a connection in the middle of a transaction.
struct Open(Option<Object>);

impl Open {
    fn connection(&self) -> &Object {
        self.0.as_ref().expect("a connection until released")
    }

    /// Gives the connection back to the pool.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
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

/// The error for a server that took the connection but did not finish the login in
/// time: something listens there, but it is not a Postgres that answers.
fn silent_server(target: &Target, what: &str) -> Error {
    let waited = target.config.get_connect_timeout().map_or(0, Duration::as_secs);
    Error::Storage {
        path: None,
        message: format!(
            "{what} ({}: the server took the connection but did not answer the login within {waited} s; \
             check the host and port in {URL_SETTING}, and that Postgres listens there (connect_timeout in \
             the URL sets the wait)",
            target.describe
        ),
        source: None,
    }
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

const LOCK_ROW: &str = "SELECT lease_owner, lease_epoch, lease_expires_at, attempts, cancel_requested, version, \
                        set_aside IS NOT NULL FROM {S}.workflows WHERE id = $1 FOR UPDATE";
const STORE_LEASE: &str = "UPDATE {S}.workflows SET lease_owner = $2, lease_epoch = $3, lease_expires_at = $4, \
                           attempts = $5 WHERE id = $1";
const INSERT_WORKFLOW: &str = "INSERT INTO {S}.workflows \
                               (id, plan_id, state, version, end_user_id, body, updated_at, queued) \
                               VALUES ($1, $2, $3, $4, $5, $6, $7, \
                               CASE WHEN $8::boolean THEN nextval('{S}.submissions') END) \
                               ON CONFLICT (id) DO NOTHING";
const UPDATE_WORKFLOW: &str = "UPDATE {S}.workflows SET plan_id = $2, state = $3, version = $4, end_user_id = $5, \
                               body = $6, updated_at = $7 WHERE id = $1";
const NEXT_RUNNABLE: &str = "SELECT id FROM {S}.workflows WHERE queued IS NOT NULL AND set_aside IS NULL \
                             AND state IN ('NOT_STARTED', 'IN_PROGRESS', 'READY_TO_RESUME') \
                             AND (lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= $1) \
                             ORDER BY queued LIMIT 1 FOR UPDATE SKIP LOCKED";
const QUEUED_WORK: &str = "SELECT 1 FROM {S}.workflows WHERE queued IS NOT NULL AND set_aside IS NULL \
                           AND state IN ('NOT_STARTED', 'IN_PROGRESS', 'READY_TO_RESUME') LIMIT 1";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// A statement argument owned by the statement, so that it can be sent now and its
/// answer read later.
type Arg = Box<dyn ToSql + Sync + Send>;

/// A statement's answer (how many rows it changed, for a write), or why it failed.
type Answer<T = u64> = std::result::Result<T, tokio_postgres::Error>;

/// A statement sent whose answer is yet to be read.
type Pending<'a, T = u64> = Pin<Box<dyn Future<Output = Answer<T>> + 'a>>;

/// A statement sent, and its answer once it came.
enum Sent<'a, T = u64> {
    Waiting(Pending<'a, T>),
    Answered(Answer<T>),
}

/// The statement that reads the database's clock.
const CLOCK: &str = "SELECT clock_timestamp()";

/// Row operations on a pooled connection (in a transaction, or not for a plain
/// read), on a blocking thread.
struct Rows<'a, C> {
    conn: &'a C,
    runtime: &'a Handle,
    inner: &'a Inner,
    /// Statements sent whose answers the work has not read, in the order sent.
    sent: Vec<Sent<'a>>,
    /// The database's clock, read right after the last row lock was taken, until
    /// [`RowTx::now`] takes it.
    clock: Option<Sent<'a, DateTime<Utc>>>,
}

impl<'a, C: GenericClient> Rows<'a, C> {
    fn new(conn: &'a C, runtime: &'a Handle, inner: &'a Inner) -> Self {
        Self { conn, runtime, inner, sent: Vec::new(), clock: None }
    }

    /// Waits for `future` on this blocking thread, taking in the answers of the
    /// statements sent before it meanwhile: the connection stops reading while an
    /// answer waits to be taken, so an answer left untaken could stall it.
    fn wait<T>(&mut self, future: impl Future<Output = T>) -> T {
        let (sent, clock) = (&mut self.sent, &mut self.clock);
        self.runtime.block_on(async {
            let mut future = std::pin::pin!(future);
            std::future::poll_fn(|cx| {
                take_answers(sent, cx);
                take_answers(clock.as_mut_slice(), cx);
                future.as_mut().poll(cx)
            })
            .await
        })
    }

    /// `sql`, prepared on this connection (a round trip only the first time).
    fn prepared(&mut self, sql: &str) -> DbResult<tokio_postgres::Statement> {
        let sql = sql.replace("{S}", &self.inner.quoted);
        let conn = self.conn;
        let statement = self.wait(conn.prepare_cached(&sql));
        self.answered(statement)
    }

    fn query(&mut self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> DbResult<Vec<Row>> {
        let statement = self.prepared(sql)?;
        let conn = self.conn;
        let rows = self.wait(conn.query(&statement, args));
        self.answered(rows)
    }

    fn execute(&mut self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> DbResult<u64> {
        let statement = self.prepared(sql)?;
        let conn = self.conn;
        let changed = self.wait(conn.execute(&statement, args));
        self.answered(changed)
    }

    /// A statement's answer. Should it be an error, a statement sent before it may
    /// have failed first (and this one only because the transaction had): that
    /// earlier error is the one to report.
    fn answered<T>(&mut self, answer: std::result::Result<T, tokio_postgres::Error>) -> DbResult<T> {
        match answer {
            Ok(value) => Ok(value),
            Err(e) => {
                self.confirm()?;
                Err(e.into())
            }
        }
    }

    /// Sends `sql` with `args` now and reads its answer later, with the next
    /// statement's (or [`Rows::confirm`]).
    fn send(&mut self, sql: &str, args: Vec<Arg>) -> DbResult<()> {
        let (statement, conn) = (self.prepared(sql)?, self.conn);
        self.push(Box::pin(async move { conn.execute(&statement, &params(&args)).await }))
    }

    /// Sends a statement without arguments (`BEGIN`, `COMMIT`) as [`Rows::send`] does.
    fn send_static(&mut self, sql: &'static str) -> DbResult<()> {
        let conn = self.conn;
        self.push(Box::pin(async move { conn.batch_execute(sql).await.map(|()| 0) }))
    }

    /// Sends `statement` ([`sent_now`]) and keeps it to read its answer later.
    fn push(&mut self, statement: Pending<'a>) -> DbResult<()> {
        match sent_now(statement) {
            Sent::Answered(answer) => drop(self.answered(answer)?),
            waiting => self.sent.push(waiting),
        }
        Ok(())
    }

    /// Reads the answers of every statement sent: the first error, if any.
    fn confirm(&mut self) -> DbResult<()> {
        let (sent, clock) = (&mut self.sent, &mut self.clock);
        self.runtime.block_on(std::future::poll_fn(|cx| {
            take_answers(sent, cx);
            take_answers(clock.as_mut_slice(), cx);
            if sent.iter().all(|statement| matches!(statement, Sent::Answered(_))) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        let mut first = Ok(());
        for statement in std::mem::take(&mut self.sent) {
            if let (Ok(()), Sent::Answered(Err(e))) = (&first, statement) {
                first = Err(e.into());
            }
        }
        first
    }

    /// Locks workflow `id`'s row and reads it. On the database's clock, a read of the
    /// clock goes right behind the lock: the database answers it once the row is
    /// locked, in the same round trip, and [`RowTx::now`] takes that answer.
    fn lock_row(&mut self, id: String) -> DbResult<Vec<Row>> {
        let lock = self.prepared(LOCK_ROW)?;
        let clock = if self.inner.clock.is_none() { Some(self.prepared(CLOCK)?) } else { None };
        let (conn, args): (_, [&(dyn ToSql + Sync); 1]) = (self.conn, [&id]);
        let mut rows = std::pin::pin!(conn.query(&lock, &args));
        let sent = rows.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        if let Some(clock) = clock {
            let read: Pending<'a, DateTime<Utc>> =
                Box::pin(async move { conn.query_one(&clock, &[]).await?.try_get(0) });
            self.clock = Some(sent_now(read));
        }
        let rows = match sent {
            Poll::Ready(rows) => rows,
            Poll::Pending => self.wait(rows),
        };
        self.answered(rows)
    }

    /// Ends a failed transaction: the answers still owed are dropped, and the
    /// transaction is rolled back. Whether that worked.
    fn roll_back(&mut self) -> bool {
        self.sent.clear();
        self.clock = None;
        match self.runtime.block_on(self.conn.batch_execute("ROLLBACK")) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "could not roll back a failed transaction; closing its connection");
                false
            }
        }
    }

    /// The first column of each row `sql` selects.
    fn column<T: for<'r> tokio_postgres::types::FromSql<'r>>(
        &mut self,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> DbResult<Vec<T>> {
        self.query(sql, args)?.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    /// The body of the row `sql` selects, as a `T`; `what` names it.
    fn body<T: serde::de::DeserializeOwned>(&mut self, sql: &str, id: String, what: &str) -> DbResult<Option<T>> {
        let body: Option<String> = self.column(sql, &[&id])?.pop();
        body.map(|body| from_json(&body, what)).transpose()
    }

    /// The arguments `$1`...`$7` of `workflow`'s row, changed at `now`.
    fn workflow_args(workflow: &Workflow, now: DateTime<Utc>) -> DbResult<Vec<Arg>> {
        let id = workflow.id().to_string();
        let body = to_json(workflow, &format!("workflow {id}"))?;
        Ok(vec![
            Box::new(id),
            Box::new(workflow.plan_id().to_string()),
            Box::new(workflow.state().as_str()),
            Box::new(to_int(workflow.version())?),
            Box::new(workflow.execution_context().end_user_id.clone()),
            Box::new(body),
            Box::new(now),
        ])
    }

    /// The arguments of a journal record's row.
    fn tool_call_args(record: &ToolCallRecord) -> DbResult<Vec<Arg>> {
        let key = record.key;
        Ok(vec![
            Box::new(key.workflow_id.to_string()),
            Box::new(to_int(key.step)?),
            Box::new(i64::from(key.attempt)),
            Box::new(i64::from(key.seq)),
            Box::new(record.tool_id.clone()),
            Box::new(record.end_user_id.clone()),
            Box::new(to_json(&record.input, &format!("the input of tool call {key}"))?),
            Box::new(record.status.as_str()),
            Box::new(to_json(&record.output, &format!("the output of tool call {key}"))?),
            Box::new(record.started_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            Box::new(record.latency_seconds),
        ])
    }

    fn notify(&mut self, channel: &'static str, payload: String) -> DbResult<()> {
        self.send(NOTIFY, vec![Box::new(channel), Box::new(payload)])
    }
}

/// Polls `statement` once, which sends it (tokio-postgres queues a request as it is
/// first polled), with a waker that does nothing: its answer wakes no one until it
/// is awaited.
fn sent_now<T>(mut statement: Pending<'_, T>) -> Sent<'_, T> {
    match statement.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(answer) => Sent::Answered(answer),
        Poll::Pending => Sent::Waiting(statement),
    }
}

/// Takes in the answers that have come of the statements `sent`, so that the
/// connection never waits for one to be taken.
fn take_answers<T>(sent: &mut [Sent<'_, T>], cx: &mut Context<'_>) {
    for statement in sent {
        if let Sent::Waiting(pending) = statement
            && let Poll::Ready(answer) = pending.as_mut().poll(cx)
        {
            *statement = Sent::Answered(answer);
        }
    }
}

/// The statement that writes a journal record; `on_conflict` says what to do when
/// its key is stored.
fn tool_call_sql(on_conflict: &str) -> String {
    format!(
        "INSERT INTO {{S}}.tool_calls ({TOOL_CALL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (workflow_id, step, attempt, seq) {on_conflict}"
    )
}

/// `args` as the references a statement takes.
fn params(args: &[Arg]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|arg| &**arg as &(dyn ToSql + Sync)).collect()
}

impl<C: GenericClient> RowTx for Rows<'_, C> {
    /// The store's time to the microsecond, the precision Postgres keeps, so that a
    /// lease reads back exactly as it was granted. Right after a row lock, it is the
    /// clock read sent behind the lock ([`Rows::lock_row`]); otherwise a read of its
    /// own, by a prepared statement (given as text, it would be prepared anew each
    /// time, a round trip more).
    fn now(&mut self) -> DbResult<DateTime<Utc>> {
        if let Some(clock) = &self.inner.clock {
            return Ok(micros(clock.now()));
        }
        let read = match self.clock.take() {
            Some(Sent::Answered(answer)) => answer,
            Some(Sent::Waiting(pending)) => self.wait(pending),
            None => {
                let read = self.column(CLOCK, &[])?.pop();
                return read.ok_or_else(|| RowError::value("the database's clock returned no time"));
            }
        };
        self.answered(read)
    }

    fn insert_plan(&mut self, plan: Plan) -> DbResult<Option<Plan>> {
        let body = to_json(&plan, &format!("plan {}", plan.id))?;
        let sql = "INSERT INTO {S}.plans (id, body) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";
        Ok((self.execute(sql, &[&plan.id.to_string(), &body])? == 0).then_some(plan))
    }

    fn plan(&mut self, id: PlanId) -> DbResult<Option<Plan>> {
        self.body("SELECT body FROM {S}.plans WHERE id = $1", id.to_string(), &format!("plan {id}"))
    }

    fn insert_workflow(&mut self, workflow: Workflow, now: DateTime<Utc>, queued: bool) -> DbResult<bool> {
        let mut args = Self::workflow_args(&workflow, now)?;
        args.push(Box::new(queued));
        Ok(self.execute(INSERT_WORKFLOW, &params(&args))? > 0)
    }

    fn workflow(&mut self, id: WorkflowId) -> DbResult<Option<Workflow>> {
        self.body("SELECT body FROM {S}.workflows WHERE id = $1", id.to_string(), &format!("workflow {id}"))
    }

    fn replace_workflow(&mut self, workflow: Workflow, now: DateTime<Utc>) -> DbResult<()> {
        self.send(UPDATE_WORKFLOW, Self::workflow_args(&workflow, now)?)
    }

    fn list_workflows(&mut self, query: &WorkflowQuery) -> DbResult<WorkflowPage> {
        let (state, end_user) = (query.state.map(WorkflowState::as_str), query.end_user.as_deref());
        let filter = "($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR end_user_id = $2)";
        let count: i64 = self
            .column(&format!("SELECT COUNT(*) FROM {{S}}.workflows WHERE {filter}"), &[&state, &end_user])?
            .pop()
            .unwrap_or(0);
        let (limit, offset) = sql::page_rows(query);
        let sql = format!("SELECT id, body FROM {{S}}.workflows WHERE {filter} ORDER BY id LIMIT $3 OFFSET $4");
        let rows = self.query(&sql, &[&state, &end_user, &to_int(limit)?, &to_int(offset)?])?;
        let rows = rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect::<DbResult<Vec<_>>>()?;
        sql::workflow_page(rows, count, query)
    }

    /// Locks workflow `id`'s row for the rest of the transaction and reads its lease.
    fn lease(&mut self, id: WorkflowId) -> DbResult<Option<LeaseRow>> {
        let rows = self.lock_row(id.to_string())?;
        let Some(row) = rows.first() else { return Ok(None) };
        let lease = LeaseState {
            owner: row.try_get(0)?,
            epoch: from_int(row.try_get(1)?)?,
            expires_at: row.try_get(2)?,
            attempts: from_int(row.try_get(3)?)?,
        };
        let version = from_int(row.try_get(5)?)?;
        Ok(Some(LeaseRow::new(lease, row.try_get(4)?, version).set_aside(row.try_get(6)?)))
    }

    fn store_lease(&mut self, id: WorkflowId, lease: &LeaseState) -> DbResult<()> {
        let args: Vec<Arg> = vec![
            Box::new(id.to_string()),
            Box::new(lease.owner.clone()),
            Box::new(to_int(lease.epoch)?),
            Box::new(lease.expires_at),
            Box::new(i64::from(lease.attempts)),
        ];
        self.send(STORE_LEASE, args)
    }

    fn request_cancel(&mut self, id: WorkflowId, reason: &str) -> DbResult<bool> {
        let sql = "UPDATE {S}.workflows SET cancel_requested = $2 WHERE id = $1";
        Ok(self.execute(sql, &[&id.to_string(), &reason])? > 0)
    }

    /// Locks the row it finds, skipping rows others have locked: claimers never wait
    /// for one another.
    fn next_runnable(&mut self, now: DateTime<Utc>) -> DbResult<Option<String>> {
        Ok(self.column(NEXT_RUNNABLE, &[&now])?.pop())
    }

    /// A plain read: [`RowTx::lease`] here locks the row, which a read-only transaction may not.
    fn cancel_requested(&mut self, id: WorkflowId) -> DbResult<Option<String>> {
        let sql = "SELECT cancel_requested FROM {S}.workflows WHERE id = $1";
        Ok(self.column::<Option<String>>(sql, &[&id.to_string()])?.pop().flatten())
    }

    fn has_queued_work(&mut self) -> DbResult<bool> {
        Ok(!self.column::<i32>(QUEUED_WORK, &[])?.is_empty())
    }

    fn set_aside(&mut self, id: &str, reason: &str) -> DbResult<()> {
        let args: Vec<Arg> = vec![Box::new(id.to_owned()), Box::new(reason.to_owned())];
        self.send("UPDATE {S}.workflows SET set_aside = $2 WHERE id = $1", args)
    }

    fn put_back(&mut self, id: WorkflowId) -> DbResult<()> {
        self.send("UPDATE {S}.workflows SET set_aside = NULL WHERE id = $1", vec![Box::new(id.to_string())])
    }

    fn queue(&mut self, id: WorkflowId) -> DbResult<bool> {
        let sql = "UPDATE {S}.workflows SET queued = nextval('{S}.submissions') \
                   WHERE id = $1 AND queued IS NULL AND state NOT IN ('COMPLETE', 'FAILED')";
        Ok(self.execute(sql, &[&id.to_string()])? > 0)
    }

    fn set_aside_rows(&mut self) -> DbResult<Vec<SetAside>> {
        let sql = "SELECT id, set_aside, queued IS NOT NULL FROM {S}.workflows WHERE set_aside IS NOT NULL ORDER BY id";
        let rows = self.query(sql, &[])?;
        let aside =
            |row: &Row| Ok(SetAside::new(row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?, row.try_get(2)?));
        rows.iter().map(aside).collect()
    }

    /// The workflow's row is locked (by the fence), so no other save numbers events meanwhile.
    fn last_event(&mut self, id: WorkflowId) -> DbResult<u64> {
        let sql = "SELECT COALESCE(MAX(seq), 0) FROM {S}.events WHERE workflow_id = $1";
        from_int(self.column::<i64>(sql, &[&id.to_string()])?.pop().unwrap_or(0))
    }

    fn insert_event(&mut self, id: WorkflowId, event: StoredEvent) -> DbResult<()> {
        let body = to_json(&event.event, &format!("an event of workflow {id}"))?;
        let sql = "INSERT INTO {S}.events (workflow_id, seq, body) VALUES ($1, $2, $3)";
        self.send(sql, vec![Box::new(id.to_string()), Box::new(to_int(event.seq)?), Box::new(body)])
    }

    /// In one statement, however many there are.
    fn insert_events(&mut self, id: WorkflowId, events: Vec<StoredEvent>) -> DbResult<()> {
        let (mut seqs, mut bodies) = (Vec::with_capacity(events.len()), Vec::with_capacity(events.len()));
        for event in &events {
            seqs.push(to_int(event.seq)?);
            bodies.push(to_json(&event.event, &format!("an event of workflow {id}"))?);
        }
        let sql = "INSERT INTO {S}.events (workflow_id, seq, body) \
                   SELECT $1, seq, body FROM UNNEST($2::bigint[], $3::text[]) AS e (seq, body)";
        self.send(sql, vec![Box::new(id.to_string()), Box::new(seqs), Box::new(bodies)])
    }

    fn events_after(&mut self, id: WorkflowId, after: u64) -> DbResult<Option<Vec<StoredEvent>>> {
        if self.query("SELECT 1 FROM {S}.workflows WHERE id = $1", &[&id.to_string()])?.is_empty() {
            return Ok(None);
        }
        let sql = "SELECT seq, body FROM {S}.events WHERE workflow_id = $1 AND seq > $2 ORDER BY seq";
        let rows = self.query(sql, &[&id.to_string(), &to_int(after)?])?;
        let events = rows.iter().map(|row| {
            let seq: i64 = row.try_get(0)?;
            let body: String = row.try_get(1)?;
            let event = from_json(&body, &format!("event {seq} of workflow {id}"))?;
            Ok(StoredEvent { seq: from_int(seq)?, event })
        });
        events.collect::<DbResult<Vec<_>>>().map(Some)
    }

    /// In one statement.
    fn has_events_after(&mut self, id: WorkflowId, after: u64) -> DbResult<Option<bool>> {
        let sql = "SELECT EXISTS (SELECT 1 FROM {S}.workflows WHERE id = $1), \
                   EXISTS (SELECT 1 FROM {S}.events WHERE workflow_id = $1 AND seq > $2)";
        let rows = self.query(sql, &[&id.to_string(), &to_int(after)?])?;
        let Some(row) = rows.first() else { return Ok(None) };
        Ok(if row.try_get::<_, bool>(0)? { Some(row.try_get(1)?) } else { None })
    }

    fn insert_tool_call(&mut self, record: ToolCallRecord) -> DbResult<bool> {
        let args = Self::tool_call_args(&record)?;
        Ok(self.execute(&tool_call_sql("DO NOTHING"), &params(&args))? > 0)
    }

    fn put_tool_call(&mut self, record: ToolCallRecord) -> DbResult<()> {
        self.send(&tool_call_sql(REPLACE_TOOL_CALL), Self::tool_call_args(&record)?)
    }

    fn tool_call(&mut self, key: ToolCallKey) -> DbResult<Option<ToolCallRecord>> {
        let sql = format!(
            "SELECT {TOOL_CALL_COLUMNS} FROM {{S}}.tool_calls \
             WHERE workflow_id = $1 AND step = $2 AND attempt = $3 AND seq = $4"
        );
        let args: [&(dyn ToSql + Sync); 4] =
            [&key.workflow_id.to_string(), &to_int(key.step)?, &i64::from(key.attempt), &i64::from(key.seq)];
        self.query(&sql, &args)?.first().map(read_tool_call).transpose()
    }

    fn tool_calls(&mut self, id: WorkflowId) -> DbResult<Vec<ToolCallRecord>> {
        let sql = format!(
            "SELECT {TOOL_CALL_COLUMNS} FROM {{S}}.tool_calls WHERE workflow_id = $1 ORDER BY step, attempt, seq"
        );
        self.query(&sql, &[&id.to_string()])?.iter().map(read_tool_call).collect()
    }

    fn insert_usage(&mut self, record: UsageRecord) -> DbResult<()> {
        let usage = record.usage;
        let sql = "INSERT INTO {S}.usage (workflow_id, step_output, llm_calls, prompt_tokens, completion_tokens, \
                   cost_usd, cache_read_tokens, cache_write_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        let args: Vec<Arg> = vec![
            Box::new(record.workflow_id.to_string()),
            Box::new(record.step_output),
            Box::new(i64::from(usage.llm_calls)),
            Box::new(to_int(usage.prompt_tokens)?),
            Box::new(to_int(usage.completion_tokens)?),
            Box::new(record.cost_usd),
            Box::new(to_int(usage.cache_read_tokens)?),
            Box::new(to_int(usage.cache_write_tokens)?),
        ];
        self.send(sql, args)
    }

    fn usage(&mut self, id: WorkflowId) -> DbResult<Vec<UsageRecord>> {
        let sql = "SELECT step_output, llm_calls, prompt_tokens, completion_tokens, cost_usd, cache_read_tokens, \
                   cache_write_tokens FROM {S}.usage WHERE workflow_id = $1 ORDER BY seq";
        self.query(sql, &[&id.to_string()])?.iter().map(|row| read_usage(row, id)).collect()
    }

    /// In id order, so that two deletions lock rows in one order.
    fn workflows_of_end_user(&mut self, end_user_id: &str) -> DbResult<Vec<String>> {
        self.column("SELECT id FROM {S}.workflows WHERE end_user_id = $1 ORDER BY id", &[&end_user_id])
    }

    /// In id order, so that two deletions lock rows in one order.
    fn finished_before(&mut self, before: DateTime<Utc>) -> DbResult<Vec<String>> {
        let sql = "SELECT id FROM {S}.workflows WHERE state IN ('COMPLETE', 'FAILED') AND updated_at < $1 ORDER BY id";
        self.column(sql, &[&cutoff_micros(before)])
    }

    /// The journal, usage and events go by cascade.
    fn delete_workflow(&mut self, id: &str) -> DbResult<bool> {
        let Some(plan_id) = self.column::<String>("SELECT plan_id FROM {S}.workflows WHERE id = $1", &[&id])?.pop()
        else {
            return Ok(false);
        };
        // Deletions of two workflows of one plan take turns on the plan's row, so the
        // second sees the first gone and deletes the plan.
        self.query("SELECT 1 FROM {S}.plans WHERE id = $1 FOR UPDATE", &[&plan_id])?;
        self.execute("DELETE FROM {S}.workflows WHERE id = $1", &[&id])?;
        let unused =
            "DELETE FROM {S}.plans WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM {S}.workflows WHERE plan_id = $1)";
        self.execute(unused, &[&plan_id])?;
        Ok(true)
    }

    fn announce_runnable(&mut self) -> DbResult<()> {
        self.notify(listen::CHANNEL, self.inner.schema.clone())
    }

    fn announce_events(&mut self, id: WorkflowId) -> DbResult<()> {
        self.notify(listen::EVENTS_CHANNEL, listen::events_payload(&self.inner.schema, id))
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
        cache_read_tokens: from_int(row.try_get(5)?)?,
        cache_write_tokens: from_int(row.try_get(6)?)?,
    };
    Ok(UsageRecord { workflow_id, step_output: row.try_get(0)?, usage, cost_usd: row.try_get(4)? })
}
