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

/// Edits the metadata database of a stopped server.
fn edit_db(data: &Path, statements: &[(&str, &str)]) {
    let db = data.join("meta.sqlite");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        for (sql, bind) in statements {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .bind(bind.to_string())
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    });
}

/// Appends a correctly linked and hashed entry 5 to `chain` without moving its head record.
fn forge_entry_after_head(data: &Path, chain: &str) {
    let db = data.join("meta.sqlite");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let prev: Vec<u8> =
            sqlx::query_scalar("SELECT hash FROM audit_entries WHERE chain = ? AND seq = 4")
                .bind(chain)
                .fetch_one(&pool)
                .await
                .unwrap();
        let e = cleanroom_core::audit::AuditEntry::next(
            chain,
            5,
            "2026-12-03T00:00:00Z".into(),
            "operator/admin".into(),
            "dataset.delete".into(),
            "a".into(),
            cleanroom_core::audit::Outcome::Allowed,
            "forged".into(),
            prev.try_into().unwrap(),
        );
        sqlx::query(
            "INSERT INTO audit_entries (chain, seq, at, actor, action, target, outcome, detail, prev_hash, hash)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.chain)
        .bind(e.seq as i64)
        .bind(&e.at)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(e.outcome.as_str())
        .bind(&e.detail)
        .bind(&e.prev_hash[..])
        .bind(&e.hash[..])
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    });
}

/// An entry appended behind the head (or entries without a head record) used to pass
/// `verify` and `--expect-head`, and made the next audited write fail with 409. Now verify
/// covers every entry the server returns, and the server refuses to write to such a chain with
/// a clear error.
#[test]
fn entries_past_the_head_or_without_a_head_are_detected() {
    for forgery in ["append", "drop head"] {
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
        server.stop();
        match forgery {
            // A well-formed entry 5, linked to entry 4 and hashed as the server would, that the
            // server never wrote: the head record still says 4.
            "append" => forge_entry_after_head(&data, &id),
            _ => edit_db(&data, &[("DELETE FROM audit_heads WHERE chain = ?1", &id)]),
        }
        let server = ServeProcess::start(&data);
        for extra in [vec![], vec!["--expect-head", pinned.as_str()]] {
            let mut a = vec!["audit", "verify", id.as_str()];
            a.extend(extra);
            let err = failed(&cli(&server.url, &brand, &a));
            assert!(
                err.contains("past its recorded head") || err.contains("no head record"),
                "{forgery}: {err}"
            );
        }
        // The next audited write names the broken chain, not a conflict.
        let mut args = vec!["dataset", "create", &id, "b"];
        args.extend(COLUMNS);
        let err = failed(&cli(&server.url, &brand, &args));
        assert!(err.contains("audit_chain_broken"), "{forgery}: {err}");
    }
}

/// The CLI remembers the head it verified (per server and chain) and fails when the server
/// later presents a history that does not extend it — without any pin given by hand.
#[test]
fn a_remembered_head_catches_a_rewritten_history() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    let (data, op) = init(tmp.path());
    let mut server = ServeProcess::start(&data);
    let (brand, _, id) = two_parties(&server.url, &op);
    let mut args = vec!["dataset", "create", &id, "a"];
    args.extend(COLUMNS);
    ok(&cli(&server.url, &brand, &args));
    let first = ok(&cli_in(
        &config,
        &server.url,
        &brand,
        &["audit", "verify", &id],
    ));
    assert!(first.contains("4 entries verified"), "{first}");
    // More entries: the next verify extends the remembered head and says so.
    let mut args = vec!["dataset", "create", &id, "b"];
    args.extend(COLUMNS);
    ok(&cli(&server.url, &brand, &args));
    let second = ok(&cli_in(
        &config,
        &server.url,
        &brand,
        &["audit", "verify", &id],
    ));
    assert!(second.contains("extends the history"), "{second}");
    let url = server.url.clone();
    server.stop();
    // The operator rewrites the tail and forges the head record to match.
    edit_db(
        &data,
        &[
            (
                "DELETE FROM audit_entries WHERE chain = ?1 AND seq = 5",
                &id,
            ),
            (
                "UPDATE audit_heads SET seq = 4, hash = (SELECT hash FROM audit_entries WHERE chain = ?1 AND seq = 4) WHERE chain = ?1",
                &id,
            ),
        ],
    );
    let server = ServeProcess::start_at(&data, &url);
    let err = failed(&cli_in(
        &config,
        &server.url,
        &brand,
        &["audit", "verify", &id],
    ));
    assert!(
        err.contains("does not extend") && err.contains("history was cut"),
        "{err}"
    );
    // A malformed pin is a usage error, not a verdict on the history.
    let err = failed(&cli(
        &server.url,
        &brand,
        &["audit", "verify", &id, "--expect-head", "4:zz"],
    ));
    assert!(err.contains("SEQ:HASH"), "{err}");
}
