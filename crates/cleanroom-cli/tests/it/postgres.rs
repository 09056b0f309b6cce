//! A room whose metadata lives in PostgreSQL (`--metadata` / `CLEANROOM_METADATA`): `init` and
//! `serve` on the database `CLEANROOM_TEST_POSTGRES` names, in a schema of their own. Without
//! that variable the test says loudly that it skipped; with it, an unreachable server fails.

use sqlx::Executor;

use crate::*;

const ENV: &str = "CLEANROOM_TEST_POSTGRES";

/// Runs `sql` on the test database, on a thread with a runtime of its own (so that async
/// tests may call it too).
pub fn admin(url: &str, sql: String) {
    let url = url.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let pool = sqlx::PgPool::connect(&url).await.unwrap_or_else(|e| {
                    panic!("{ENV} is set but PostgreSQL cannot be reached: {e}")
                });
                pool.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
                pool.close().await;
            })
    })
    .join()
    .unwrap();
}

#[test]
fn a_room_on_postgres_inits_serves_and_keeps_its_metadata_there() {
    let Some(base) = env_or_skip(ENV, "the CLI's room on PostgreSQL") else {
        return;
    };
    let (schema, url) = fresh_schema(&base, "cli");

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = run(Command::new(BIN)
        .args(["init", "--json", "--data-dir"])
        .arg(&data)
        .args(["--metadata", &url])
        .env_remove("CLEANROOM_MASTER_KEY"));
    let op = json(&out)["token"].as_str().unwrap().to_owned();
    assert!(
        !data.join("meta.sqlite").exists(),
        "with --metadata the data directory holds no SQLite database"
    );

    // `serve` reads the URL from the environment and finds the operator `init` created.
    let mut server =
        ServeProcess::try_start_env(&data, "127.0.0.1:0", &[("CLEANROOM_METADATA", &url)])
            .unwrap_or_else(|e| panic!("{e}"));
    let who = ok(&cli(&server.url, &op, &["whoami"]));
    assert!(who.contains("operator"), "{who}");
    let (brand, _publisher, collab) = two_parties(&server.url, &op);
    let verified = ok(&cli(&server.url, &brand, &["audit", "verify", &collab]));
    assert!(!verified.is_empty());
    // A second server on the same database but another local data directory could not read
    // the first one's datasets: refused while the first one beats.
    let elsewhere = tmp.path().join("elsewhere");
    let printed =
        ServeProcess::try_start_env(&elsewhere, "127.0.0.1:0", &[("CLEANROOM_METADATA", &url)])
            .err()
            .expect("a second replica on a local data directory must refuse");
    assert!(
        printed.contains("must share the data store too"),
        "{printed}"
    );
    server.stop();
    // Stopped cleanly, the first server retired at once: the directory serves again.
    let mut server =
        ServeProcess::try_start_env(&data, "127.0.0.1:0", &[("CLEANROOM_METADATA", &url)])
            .unwrap_or_else(|e| panic!("{e}"));
    server.stop();

    // The same data directory without --metadata has no room in it: refused, not started
    // empty; nor does a database that was never initialised start an empty room.
    let printed = ServeProcess::try_start(&data)
        .err()
        .expect("serve without --metadata must refuse");
    assert!(printed.contains("never initialised"), "{printed}");
    let (empty, empty_url) = fresh_schema(&base, "empty");
    let printed =
        ServeProcess::try_start_env(&data, "127.0.0.1:0", &[("CLEANROOM_METADATA", &empty_url)])
            .err()
            .expect("serve on an empty database must refuse");
    assert!(printed.contains("never initialised"), "{printed}");
    assert_eq!(
        tables_in(&base, &empty),
        0,
        "a refused serve leaves the database as it found it (no tables created)"
    );
    let userinfo = base
        .split_once("://")
        .unwrap()
        .1
        .split_once('@')
        .map(|(u, _)| u);
    if let Some((_, password)) = userinfo.and_then(|u| u.split_once(':')) {
        assert!(
            !printed.contains(&format!(":{password}@")),
            "no password in errors: {printed}"
        );
    }

    admin(&base, format!("DROP SCHEMA \"{schema}\" CASCADE"));
    admin(&base, format!("DROP SCHEMA \"{empty}\" CASCADE"));
}

/// A new, empty schema in the test database `base` names, and a URL to it (its `search_path`).
pub fn fresh_schema(base: &str, prefix: &str) -> (String, String) {
    let schema = format!("{prefix}_{}_{}", std::process::id(), rand::random::<u32>());
    admin(base, format!("CREATE SCHEMA \"{schema}\""));
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");
    (schema, url)
}

/// How many tables the schema `schema` of the test database holds.
fn tables_in(url: &str, schema: &str) -> i64 {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            )
            .bind(schema)
            .fetch_one(&pool)
            .await
            .unwrap();
            pool.close().await;
            n
        })
}

/// A room that ran on SQLite moves to PostgreSQL with `cleanroom migrate`: every audit chain
/// still verifies (through the server, as a member checks it), the datasets still open with
/// their keys, the old SQLite file is set aside so the directory cannot be served without
/// `--metadata`, and a database that already holds a room is refused.
#[test]
fn migrate_moves_a_sqlite_room_to_postgres_without_losing_an_audit_entry() {
    let Some(base) = env_or_skip(ENV, "cleanroom migrate to PostgreSQL") else {
        return;
    };
    let (schema, url) = fresh_schema(&base, "mig");

    // A room with history on SQLite: parties, a collaboration, uploads, policies, a query.
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let mut server = ServeProcess::start(&data);
    let (brand, publisher, id) = two_parties(&server.url, &op);
    let (crm, aud, pol) = (
        tmp.path().join("crm.csv"),
        tmp.path().join("aud.csv"),
        tmp.path().join("policy.toml"),
    );
    crate::analysis::write_people(&crm, "c", 2000, 0);
    crate::analysis::write_people(&aud, "u", 2000, 500);
    std::fs::write(&pol, crate::analysis::POLICY).unwrap();
    for (token, name, file) in [(&brand, "crm", &crm), (&publisher, "aud", &aud)] {
        crate::analysis::upload_with_policy(&server.url, token, &id, name, file, &pol);
        grant(&server.url, token, &id, "3", "1");
    }
    let sql = "SELECT COUNT(DISTINCT c.pid) AS people FROM crm c JOIN aud a ON c.email_hmac = a.email_hmac";
    ok(&cli(
        &server.url,
        &brand,
        &["query", &id, sql, "--epsilon", "0.5"],
    ));
    let before = json(&cli(
        &server.url,
        &brand,
        &["--json", "audit", "verify", &id],
    ));
    // The data directory is locked while a server runs on it.
    let busy = failed(&run(Command::new(BIN)
        .args(["migrate", "--data-dir"])
        .arg(&data)
        .env("CLEANROOM_METADATA", &url)));
    assert!(
        busy.contains("in use by another cleanroom process"),
        "{busy}"
    );
    server.stop();

    // A wrong master key moves nothing.
    let wrong = failed(&run(Command::new(BIN)
        .args(["migrate", "--data-dir"])
        .arg(&data)
        .env("CLEANROOM_METADATA", &url)
        .env("CLEANROOM_MASTER_KEY", "11".repeat(32))));
    assert!(wrong.contains("master key does not match"), "{wrong}");

    let moved = json(&run(Command::new(BIN)
        .args(["--json", "migrate", "--data-dir"])
        .arg(&data)
        .env("CLEANROOM_METADATA", &url)
        .env_remove("CLEANROOM_MASTER_KEY")));
    assert!(
        moved["rows"]["audit_entries"].as_u64().unwrap() > 10,
        "{moved}"
    );
    assert_eq!(moved["rows"]["datasets"].as_u64(), Some(2), "{moved}");
    assert!(moved["chains"][&id].as_u64().is_some(), "{moved}");
    assert!(!data.join("meta.sqlite").exists() && data.join("meta.sqlite.migrated").exists());

    // Without --metadata the directory is refused; with it, the room goes on where it was.
    let printed = ServeProcess::try_start(&data)
        .err()
        .expect("serve must refuse");
    assert!(printed.contains("never initialised"), "{printed}");
    let server = ServeProcess::try_start_env(&data, "127.0.0.1:0", &[("CLEANROOM_METADATA", &url)])
        .unwrap_or_else(|e| panic!("{e}"));
    // The chain verifies on PostgreSQL and extends the head verified on SQLite: not an entry
    // lost or changed.
    let head = before["head"].as_str().unwrap().to_owned();
    ok(&cli(
        &server.url,
        &brand,
        &["audit", "verify", &id, "--expect-head", &head],
    ));
    // The datasets' keys came along: a new analysis reads the encrypted files.
    let v = json(&cli(
        &server.url,
        &brand,
        &[
            "--json",
            "query",
            &id,
            "SELECT COUNT(*) AS n FROM aud",
            "--epsilon",
            "0.5",
        ],
    ));
    assert!(v.to_string().contains("\"n\""), "{v}");
    // The system chain records the migration.
    let sys = ok(&cli(&server.url, &op, &["audit", "list", "system"]));
    assert!(sys.contains("metadata.migrate"), "{sys}");
    drop(server);

    // A second room into the same database: refused, nothing written.
    let other = tempfile::tempdir().unwrap();
    let (data2, _) = init(other.path());
    let refused = failed(&run(Command::new(BIN)
        .args(["migrate", "--data-dir"])
        .arg(&data2)
        .env("CLEANROOM_METADATA", &url)
        .env_remove("CLEANROOM_MASTER_KEY")));
    assert!(refused.contains("already holds a room"), "{refused}");
    assert!(
        data2.join("meta.sqlite").exists(),
        "a refused migration set the file aside"
    );

    admin(&base, format!("DROP SCHEMA \"{schema}\" CASCADE"));
}
