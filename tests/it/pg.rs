//! The database the Postgres tests use: `PORTIA_TEST_PG_URL`, each test in a fresh
//! schema that is dropped afterwards, so tests run in parallel.
#![allow(dead_code, unreachable_pub)]

use tokio_postgres::NoTls;

/// How to get a database for these tests.
pub const HOW_TO_RUN: &str = "run `bash .ci/run` (it starts a throwaway Postgres), or \
    `source .ci/postgres.sh && start_postgres && cargo test --all-features -- --include-ignored` in bash, or set \
    PORTIA_TEST_PG_URL to a database where you may create schemas (plain TCP, e.g. \
    postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable) and run the ignored tests";

/// The test database's URL. The tests that need one are `#[ignore]`d, so that a plain
/// `cargo test` reports them as not run; run on purpose (`--include-ignored`, as
/// `.ci/run` does) without a database, they fail here, saying how to get one.
pub fn test_url() -> String {
    match std::env::var("PORTIA_TEST_PG_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!("needs Postgres: PORTIA_TEST_PG_URL is not set; to run the Postgres tests, {HOW_TO_RUN}"),
    }
}

/// A schema no other test uses. [`Schema::remove`] drops it with everything in it;
/// a schema merely dropped (a test that panicked or returned early) is removed by a
/// thread of its own, which the end of the test process may cut short: the schemas
/// are named `test_*` for whoever cleans a shared database.
#[derive(Debug)]
pub struct Schema {
    pub url: String,
    pub name: String,
    removed: bool,
}

impl Schema {
    pub fn fresh(url: &str) -> Self {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        Self { url: url.to_owned(), name, removed: false }
    }

    /// Drops the schema, on this runtime, so that the connections of the stores the
    /// test used can still roll back what they were doing.
    pub async fn remove(mut self) {
        self.removed = true;
        let client = connect(&self.url).await;
        let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name)).await;
    }

    /// Runs `sql` (with `{S}` standing for the schema) on a connection of its own.
    pub async fn execute(&self, sql: &str) {
        let client = connect(&self.url).await;
        client.batch_execute(&sql.replace("{S}", &self.name)).await.expect("the statement runs");
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop is not async, and must not block the test's runtime: an idle store's
        // connection may hold a lock until that runtime lets it roll back. A thread
        // of its own runs the statement on a runtime of its own.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async {
                let client = connect(&url).await;
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")).await;
            });
        });
    }
}

/// A plain connection, driven on a task of its own.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.expect("the test database accepts plain connections");
    tokio::spawn(connection);
    client
}
