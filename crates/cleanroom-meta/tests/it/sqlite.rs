//! The conformance suite on the embedded SQLite store, one fresh database per test.

use std::sync::Arc;

use cleanroom_meta::{MetaStore, SqliteStore};

use crate::conformance;

async fn store() -> (tempfile::TempDir, Arc<dyn MetaStore>) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).await.unwrap();
    (dir, Arc::new(s))
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (_dir, s) = store().await;
                conformance::$name(s).await;
            }
        )*
    };
}

every_conformance_test!(conformance_tests);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_of_a_gone_replica_is_orphaned_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = SqliteStore::open(dir.path()).await.unwrap();
    let b = SqliteStore::open(dir.path()).await.unwrap();
    conformance::work_of_a_gone_replica_is_orphaned_once(Arc::new(a), Arc::new(b)).await;
}

/// Runs raw SQL on the store's database file, as someone with write access to it would.
async fn tamper(dir: &std::path::Path, sql: &str) {
    let db = dir.join(cleanroom_meta::sqlite::DB_FILE);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// A chain with an entry past its head, or entries without a head, was changed outside the
/// store: appending to it is refused as `ChainBroken`, not as a sequence-number conflict.
#[tokio::test]
async fn a_chain_changed_behind_its_head_is_refused() {
    for forgery in [
        "INSERT INTO audit_entries (chain, seq, at, actor, action, target, outcome, detail, prev_hash, hash)
         SELECT chain, 4, at, actor, action, target, outcome, 'forged', hash, hash
         FROM audit_entries WHERE chain = 'guarded' AND seq = 3",
        "DELETE FROM audit_heads WHERE chain = 'guarded'",
    ] {
        let (dir, s) = store().await;
        for _ in 0..3 {
            s.append_audit(conformance_audit("guarded")).await.unwrap();
        }
        tamper(dir.path(), forgery).await;
        let e = s.append_audit(conformance_audit("guarded")).await.unwrap_err();
        assert!(matches!(e, cleanroom_meta::MetaError::ChainBroken(_)), "{e:?}");
        // Other chains are unaffected.
        s.append_audit(conformance_audit("other")).await.unwrap();
    }
}

/// The SQLite side of [`conformance::a_failed_append_changes_nothing`].
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_append_rolls_back_its_change() {
    let (dir, s) = store().await;
    s.append_audit(conformance_audit("broken")).await.unwrap();
    tamper(dir.path(), "DELETE FROM audit_heads WHERE chain = 'broken'").await;
    conformance::a_failed_append_changes_nothing(s, "broken").await;
}

fn conformance_audit(chain: &str) -> cleanroom_meta::NewAudit {
    cleanroom_meta::NewAudit {
        chain: chain.into(),
        actor: "test".into(),
        action: "x".into(),
        target: "-".into(),
        outcome: cleanroom_core::audit::Outcome::Allowed,
        detail: String::new(),
    }
}
