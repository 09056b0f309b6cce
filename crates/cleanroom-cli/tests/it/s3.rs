//! A room whose dataset files live in S3-compatible object storage (`--data-store` /
//! `CLEANROOM_DATA_STORE`): `init` and `serve` on a fresh prefix of the bucket
//! `CLEANROOM_TEST_S3` names (`.ci/services` starts s3s-fs and prints the `AWS_*` variables).
//! Uploads land in the bucket as ciphertext only, analyses read them from there, closing the
//! collaboration deletes them, and the room refuses to start on another store. Without the
//! variable the test says loudly that it skipped.

use std::path::Path;

use crate::analysis::{POLICY, upload_with_policy, write_people};
use crate::*;

const ENV: &str = "CLEANROOM_TEST_S3";

#[test]
fn a_room_on_s3_keeps_only_ciphertext_in_the_bucket_and_analyses_from_there() {
    let Some(base) = env_or_skip(ENV, "the CLI's room on S3") else {
        return;
    };
    // A short prefix of our own (s3s-fs names metadata files after bucket and key).
    let prefix = format!("cli{}", &rand::random::<u64>().to_string()[..8]);
    let store = format!("{}/{prefix}", base.trim_end_matches('/'));
    let bucket_dir = std::env::var("CLEANROOM_TEST_S3_ROOT").ok().map(|root| {
        let key_prefix = store.trim_start_matches("s3://").split_once('/').unwrap().1;
        Path::new(&root).join(key_prefix)
    });

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = run(Command::new(BIN)
        .args(["init", "--json", "--data-dir"])
        .arg(&data)
        .args(["--data-store", &store])
        .env_remove("CLEANROOM_MASTER_KEY"));
    let op = json(&out)["token"].as_str().unwrap().to_owned();

    let mut server =
        ServeProcess::try_start_env(&data, "127.0.0.1:0", &[("CLEANROOM_DATA_STORE", &store)])
            .unwrap_or_else(|e| panic!("{e}"));
    let url = server.url.clone();
    let (brand, publisher, id) = two_parties(&url, &op);
    let (crm, aud, pol) = (
        tmp.path().join("crm.csv"),
        tmp.path().join("aud.csv"),
        tmp.path().join("policy.toml"),
    );
    write_people(&crm, "secretperson", 3000, 0);
    write_people(&aud, "secretreader", 3000, 1000);
    std::fs::write(&pol, POLICY).unwrap();
    for (token, name, file) in [(&brand, "crm", &crm), (&publisher, "aud", &aud)] {
        upload_with_policy(&url, token, &id, name, file, &pol);
        grant(&url, token, &id, "2", "1");
    }

    // Nothing of the datasets is in the data directory; the bucket holds two objects.
    let local: Vec<_> = files_under(&data.join("datasets"));
    assert!(local.is_empty(), "dataset files on local disk: {local:?}");
    if let Some(dir) = &bucket_dir {
        let objects: Vec<_> = files_under(dir)
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
            .collect();
        assert_eq!(objects.len(), 2, "{objects:?}");
        for f in files_under(dir) {
            let b = std::fs::read(&f).unwrap();
            for plain in [&b"secretperson"[..], b"secretreader", b"city1"] {
                assert!(
                    !contains(&b, plain),
                    "plaintext in the bucket: {}",
                    f.display()
                );
            }
        }
    }

    // An analysis reads the files from the bucket.
    let sql = "SELECT c.city, COUNT(DISTINCT c.pid) AS people FROM crm c JOIN aud a ON c.email_hmac = a.email_hmac GROUP BY c.city ORDER BY c.city";
    let v = json(&cli(
        &url,
        &brand,
        &["--json", "query", &id, sql, "--epsilon", "0.5"],
    ));
    let tables = v
        .pointer("/result/tables")
        .or_else(|| v.get("tables"))
        .and_then(|t| t.as_array())
        .unwrap_or_else(|| panic!("no result tables: {v}"));
    let rows = tables[0]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(rows.len(), 3, "one row per city: {v}");
    server.stop();

    // The room refuses to start on its data directory alone: its datasets are in the bucket.
    let printed = ServeProcess::try_start(&data)
        .err()
        .expect("serve without --data-store must refuse");
    assert!(
        printed.contains("keeps its datasets in") && printed.contains(&store),
        "{printed}"
    );

    // Closing the collaboration deletes its objects.
    let server =
        ServeProcess::try_start_env(&data, "127.0.0.1:0", &[("CLEANROOM_DATA_STORE", &store)])
            .unwrap_or_else(|e| panic!("{e}"));
    ok(&cli(
        &server.url,
        &brand,
        &["collab", "close", &id, "--yes"],
    ));
    if let Some(dir) = &bucket_dir {
        let left: Vec<_> = files_under(dir)
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
            .collect();
        assert!(left.is_empty(), "objects left after close: {left:?}");
    }
}

/// `init` against a store it cannot write stops before creating anything, with the store's
/// reason, and quickly (no minutes of retries).
fn init_is_refused(tmp: &Path, store: &str, env: &[(&str, &str)]) -> String {
    let data = tmp.join("data");
    let mut cmd = Command::new(BIN);
    cmd.args(["init", "--data-dir"])
        .arg(&data)
        .args(["--data-store", store])
        .env_remove("CLEANROOM_MASTER_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = std::time::Instant::now();
    let printed = failed(&run(&mut cmd));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        printed.contains(&format!("the data store {store} cannot be used")),
        "{printed}"
    );
    assert!(
        !data.join("master.key").exists() && !data.join("meta.sqlite").exists(),
        "a refused init left a room behind"
    );
    printed
}

#[test]
fn an_unreachable_store_stops_init_before_anything_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there.
    let printed = init_is_refused(
        tmp.path(),
        "s3://nowhere-bucket/room",
        &[
            ("AWS_ENDPOINT", "http://127.0.0.1:1"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "someone"),
            ("AWS_SECRET_ACCESS_KEY", "not-a-real-secret"),
        ],
    );
    assert!(
        !printed.contains("not-a-real-secret"),
        "secret in an error: {printed}"
    );
    // Not an S3 URL at all: said as such.
    let out = failed(&run(Command::new(BIN)
        .args(["init", "--data-dir"])
        .arg(tmp.path().join("d2"))
        .args(["--data-store", "/mnt/bucket"])));
    assert!(out.contains("not an S3 location"), "{out}");
}

#[test]
fn wrong_credentials_stop_init_with_the_stores_answer() {
    let Some(base) = env_or_skip(ENV, "the wrong-credentials check") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = format!("{}/wrongcreds", base.trim_end_matches('/'));
    let printed = init_is_refused(
        tmp.path(),
        &store,
        &[("AWS_SECRET_ACCESS_KEY", "a-wrong-secret-value")],
    );
    assert!(
        !printed.contains("a-wrong-secret-value"),
        "secret in an error: {printed}"
    );
}
