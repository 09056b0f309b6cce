//! The conformance suite on PostgreSQL, each test in a fresh schema of the database named by
//! `CLEANROOM_TEST_POSTGRES` (a `postgres://` URL; `.ci/services` starts a server and prints
//! it), so tests run in parallel without seeing each other. The store gets a pool of several
//! connections and the tests a multi-threaded runtime, so the races are real.
//!
//! Without `CLEANROOM_TEST_POSTGRES` every test says loudly that it skipped; with it, a server
//! that cannot be reached fails the test.

use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use cleanroom_meta::{MetaError, MetaSpec, MetaStore, PgStore, PgUrl};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};

use crate::conformance;

const ENV: &str = "CLEANROOM_TEST_POSTGRES";

/// Connections in each test store's pool: enough for the races to run side by side.
const POOL: u32 = 8;

/// A fresh schema for one test, dropped when the test ends without panicking.
struct Schema {
    admin: PgPool,
    name: String,
}

impl Schema {
    /// Runs raw SQL in the schema, as someone with write access to the database would.
    async fn tamper(&self, sql: &str) {
        let mut conn = self.admin.acquire().await.unwrap();
        conn.execute(sqlx::AssertSqlSafe(format!(
            "SET search_path TO \"{}\"",
            self.name
        )))
        .await
        .unwrap();
        conn.execute(sqlx::AssertSqlSafe(sql.to_owned()))
            .await
            .unwrap();
        conn.execute("RESET search_path").await.unwrap();
    }

    async fn drop(self) {
        self.admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA \"{}\" CASCADE",
                self.name
            )))
            .await
            .unwrap();
        self.admin.close().await;
    }
}

/// The test database's URL, or `None` (after saying so on stderr) when it is not configured.
fn url() -> Option<String> {
    match std::env::var(ENV) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            // Straight to the process's stderr: the test harness captures `eprintln!` of
            // passing tests, and a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {ENV} not set — PostgreSQL conformance not run \
                 (run `eval \"$(bash .ci/services)\"` first)"
            );
            None
        }
    }
}

fn schema_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A store on a fresh schema, or `None` when PostgreSQL is not configured. Panics when it is
/// configured and cannot be reached.
async fn store() -> Option<(Schema, Arc<dyn MetaStore>)> {
    let url = url()?;
    let opts = PgConnectOptions::from_str(&url).expect("CLEANROOM_TEST_POSTGRES parses");
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts.clone())
        .await
        .unwrap_or_else(|e| panic!("{ENV} is set but PostgreSQL cannot be reached: {e}"));
    let name = schema_name();
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
        .await
        .unwrap();
    let s = PgStore::connect_with(opts.options([("search_path", name.as_str())]), POOL)
        .await
        .unwrap();
    Some((Schema { admin, name }, Arc::new(s)))
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some((schema, s)) = store().await else { return };
                conformance::$name(Arc::clone(&s)).await;
                s.close().await;
                schema.drop().await;
            }
        )*
    };
}

every_conformance_test!(conformance_tests);

/// Two replicas: a second store on the same schema, as a second server would connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_of_a_gone_replica_is_orphaned_once() {
    let Some((schema, a)) = store().await else {
        return;
    };
    let opts = PgConnectOptions::from_str(&url().unwrap()).unwrap();
    let b = PgStore::connect_with(opts.options([("search_path", schema.name.as_str())]), POOL)
        .await
        .unwrap();
    let b: Arc<dyn MetaStore> = Arc::new(b);
    conformance::work_of_a_gone_replica_is_orphaned_once(Arc::clone(&a), Arc::clone(&b)).await;
    a.close().await;
    b.close().await;
    schema.drop().await;
}

/// A chain with an entry past its head, or entries without a head, was changed outside the
/// store: appending to it is refused as `ChainBroken`, not as a sequence-number conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_changed_behind_its_head_is_refused() {
    for forgery in [
        "INSERT INTO audit_entries (chain, seq, at, actor, action, target, outcome, detail, prev_hash, hash)
         SELECT chain, 4, at, actor, action, target, outcome, 'forged', hash, hash
         FROM audit_entries WHERE chain = 'guarded' AND seq = 3",
        "DELETE FROM audit_heads WHERE chain = 'guarded'",
    ] {
        let Some((schema, s)) = store().await else {
            return;
        };
        for _ in 0..3 {
            s.append_audit(conformance::audit("guarded", "x"))
                .await
                .unwrap();
        }
        schema.tamper(forgery).await;
        let e = s
            .append_audit(conformance::audit("guarded", "x"))
            .await
            .unwrap_err();
        assert!(matches!(e, MetaError::ChainBroken(_)), "{e:?}");
        s.append_audit(conformance::audit("other", "x"))
            .await
            .unwrap();
        s.close().await;
        schema.drop().await;
    }
}

/// A change whose audit entry cannot be appended does not happen: the write and its entry
/// are one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_append_rolls_back_its_change() {
    let Some((schema, s)) = store().await else {
        return;
    };
    s.append_audit(conformance::audit("broken", "x"))
        .await
        .unwrap();
    schema
        .tamper("DELETE FROM audit_heads WHERE chain = 'broken'")
        .await;
    conformance::a_failed_append_changes_nothing(Arc::clone(&s), "broken").await;
    s.close().await;
    schema.drop().await;
}

/// `open` with a `postgres://` URL (its schema chosen in the URL, as an operator may) gives a
/// working store, and the spec never shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_takes_a_postgres_url() {
    let Some((schema, s)) = store().await else {
        return;
    };
    s.append_audit(conformance::audit("system", "x"))
        .await
        .unwrap();
    s.close().await;
    let url = url().unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}options[search_path]={}", schema.name);
    let spec = MetaSpec::resolve(Some(&url), std::path::Path::new("/nonexistent")).unwrap();
    let userinfo = url
        .split_once("://")
        .unwrap()
        .1
        .split_once('@')
        .map(|(u, _)| u);
    if let Some((_, password)) = userinfo.and_then(|u| u.split_once(':')) {
        // (The test role's password may equal the database's name, which is shown.)
        assert!(
            !format!("{spec:?}").contains(&format!(":{password}@")),
            "{spec:?}"
        );
    }
    let s = cleanroom_meta::open(&spec).await.unwrap();
    assert_eq!(s.audit_head("system").await.unwrap().unwrap().seq, 1);
    s.close().await;
    schema.drop().await;
}

/// A configured but unreachable server is an error, not a skip.
#[tokio::test]
async fn an_unreachable_server_is_an_error() {
    let url = PgUrl::parse("postgres://nobody:secret@127.0.0.1:1/none").unwrap();
    let e = match cleanroom_meta::open(&MetaSpec::Postgres(url.clone())).await {
        Ok(_) => panic!("connected to port 1"),
        Err(e) => e,
    };
    assert!(matches!(e, MetaError::Unavailable(_)), "{e:?}");
    assert!(!format!("{url:?}").contains("secret"), "{url:?}");
    assert!(PgUrl::parse("mysql://x@y/z").is_err());
}
