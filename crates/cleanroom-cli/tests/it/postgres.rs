//! A room whose metadata lives in PostgreSQL (`--metadata` / `CLEANROOM_METADATA`): `init` and
//! `serve` on the database `CLEANROOM_TEST_POSTGRES` names, in a schema of their own. Without
//! that variable the test says loudly that it skipped; with it, an unreachable server fails.

use std::io::Write;

use sqlx::Executor;

use crate::*;

const ENV: &str = "CLEANROOM_TEST_POSTGRES";

/// Runs `sql` on the test database (a fresh runtime: the CLI tests are synchronous).
fn admin(url: &str, sql: String) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let pool = sqlx::PgPool::connect(url)
                .await
                .unwrap_or_else(|e| panic!("{ENV} is set but PostgreSQL cannot be reached: {e}"));
            pool.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
            pool.close().await;
        });
}

#[test]
fn a_room_on_postgres_inits_serves_and_keeps_its_metadata_there() {
    let Some(base) = std::env::var(ENV).ok().filter(|u| !u.is_empty()) else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {ENV} not set — the CLI's room on PostgreSQL not run \
             (run `eval \"$(bash .ci/services)\"` first)"
        );
        return;
    };
    let schema = format!("cli_{}_{}", std::process::id(), rand::random::<u32>());
    admin(&base, format!("CREATE SCHEMA \"{schema}\""));
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");

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
    server.stop();

    // The same data directory without --metadata has no room in it: refused, not started
    // empty; nor does a database that was never initialised start an empty room.
    let printed = ServeProcess::try_start(&data)
        .err()
        .expect("serve without --metadata must refuse");
    assert!(printed.contains("never initialised"), "{printed}");
    let empty = format!("{schema}_empty");
    admin(&base, format!("CREATE SCHEMA \"{empty}\""));
    let empty_url = format!("{base}{sep}options[search_path]={empty}");
    let printed =
        ServeProcess::try_start_env(&data, "127.0.0.1:0", &[("CLEANROOM_METADATA", &empty_url)])
            .err()
            .expect("serve on an empty database must refuse");
    assert!(printed.contains("never initialised"), "{printed}");
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
