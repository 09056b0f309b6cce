//! `cleanroom audit verify` detects any edited, removed or reordered entry.

use crate::*;

/// Sets up a collaboration with a few audited actions, stops the server, lets `tamper` edit the
/// metadata database directly, restarts, and returns what `audit verify` says.
fn verify_after(tamper: &str) -> (bool, String) {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let mut server = ServeProcess::start(&data);
    let (brand, _, id) = two_parties(&server.url, &op);
    for name in ["a", "b", "c"] {
        let mut args = vec!["dataset", "create", &id, name];
        args.extend(COLUMNS);
        ok(&cli(&server.url, &brand, &args));
    }
    server.stop();
    let db = data.join("meta.sqlite");
    let sql = tamper.replace("{chain}", &id);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
            sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned()))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    });
    let server = ServeProcess::start(&data);
    let out = cli(&server.url, &brand, &["audit", "verify", &id]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn an_untouched_chain_verifies() {
    let (okay, text) = verify_after("SELECT 1");
    assert!(okay, "{text}");
    assert!(text.contains("6 entries verified"), "{text}");
}

#[test]
fn an_edited_entry_is_detected() {
    let (okay, text) = verify_after(
        "UPDATE audit_entries SET detail = '1 column(s)' WHERE chain = '{chain}' AND seq = 4",
    );
    assert!(!okay, "{text}");
    assert!(
        text.contains("broken at entry 4") && text.contains("edited"),
        "{text}"
    );
}

#[test]
fn a_changed_actor_or_outcome_is_detected() {
    let (okay, text) = verify_after(
        "UPDATE audit_entries SET actor = 'publisher/admin' WHERE chain = '{chain}' AND seq = 5",
    );
    assert!(!okay && text.contains("broken at entry 5"), "{text}");
    let (okay, text) = verify_after(
        "UPDATE audit_entries SET outcome = 'denied' WHERE chain = '{chain}' AND seq = 2",
    );
    assert!(!okay && text.contains("broken at entry 2"), "{text}");
}

#[test]
fn a_removed_entry_is_detected() {
    let (okay, text) =
        verify_after("DELETE FROM audit_entries WHERE chain = '{chain}' AND seq = 3");
    assert!(!okay, "{text}");
    assert!(text.contains("removed or reordered"), "{text}");
}

#[test]
fn removed_and_renumbered_entries_are_detected() {
    let (okay, text) = verify_after(
        "DELETE FROM audit_entries WHERE chain = '{chain}' AND seq = 3; \
         UPDATE audit_entries SET seq = seq - 1 WHERE chain = '{chain}' AND seq > 3",
    );
    assert!(!okay, "{text}");
    assert!(text.contains("broken at entry 3"), "{text}");
}

#[test]
fn reordered_entries_are_detected() {
    let (okay, text) = verify_after(
        "UPDATE audit_entries SET seq = 100 WHERE chain = '{chain}' AND seq = 4; \
         UPDATE audit_entries SET seq = 4 WHERE chain = '{chain}' AND seq = 5; \
         UPDATE audit_entries SET seq = 5 WHERE chain = '{chain}' AND seq = 100",
    );
    assert!(!okay, "{text}");
    assert!(text.contains("broken at entry 4"), "{text}");
}

#[test]
fn entries_cut_off_the_end_are_detected() {
    let (okay, text) =
        verify_after("DELETE FROM audit_entries WHERE chain = '{chain}' AND seq = 6");
    assert!(!okay, "{text}");
    assert!(text.contains("cut off the end"), "{text}");
}

/// A rewrite that also forges the head record passes the chain check alone; a head pinned by a
/// member earlier catches it.
#[test]
fn a_pinned_head_detects_a_rewritten_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let mut server = ServeProcess::start(&data);
    let (brand, _, id) = two_parties(&server.url, &op);
    let mut args = vec!["dataset", "create", &id, "a"];
    args.extend(COLUMNS);
    ok(&cli(&server.url, &brand, &args));
    let v = json(&cli(
        &server.url,
        &brand,
        &["--json", "audit", "verify", &id],
    ));
    let pinned = v["head"].as_str().unwrap().to_owned();
    assert!(pinned.starts_with("4:"), "{pinned}");
    server.stop();
    // Forge: drop the last entry and point the head record at the one before.
    let db = data.join("meta.sqlite");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        sqlx::query("DELETE FROM audit_entries WHERE chain = ? AND seq = 4").bind(&id).execute(&pool).await.unwrap();
        sqlx::query(
            "UPDATE audit_heads SET seq = 3, hash = (SELECT hash FROM audit_entries WHERE chain = ?1 AND seq = 3) WHERE chain = ?1",
        )
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    });
    let server = ServeProcess::start(&data);
    ok(&cli(&server.url, &brand, &["audit", "verify", &id]));
    let err = failed(&cli(
        &server.url,
        &brand,
        &["audit", "verify", &id, "--expect-head", &pinned],
    ));
    assert!(err.contains("history was cut"), "{err}");
}
