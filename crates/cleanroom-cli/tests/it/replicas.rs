//! Two replicas of one room — two `cleanroom serve` processes with their own data directories
//! (the same master key) on one PostgreSQL schema and one bucket prefix: uploads through one,
//! analyses through the other, 50 concurrent analyses against budgets that pay for 10 answered
//! at most 10 times across both, and a replica killed (SIGKILL) in the middle of an upload
//! whose work the other takes over once its lease runs out: no partial dataset, the chain
//! intact. Needs `CLEANROOM_TEST_POSTGRES` and `CLEANROOM_TEST_S3`; says SKIPPED otherwise.

use std::time::{Duration, Instant};

use crate::postgres::{admin, fresh_schema};
use crate::*;

fn show_status(url: &str, token: &str, id: &str, name: &str) -> String {
    let v = json(&cli(url, token, &["--json", "dataset", "show", id, name]));
    v["status"].as_str().unwrap_or_default().to_owned()
}

fn wait_for_status(url: &str, token: &str, id: &str, name: &str, want: &str, within: Duration) {
    let start = Instant::now();
    loop {
        let got = show_status(url, token, id, name);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < within,
            "dataset {name} stayed {got}, not {want}, for {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_a_room_and_take_over_a_killed_ones_work() {
    let pg = env_or_skip("CLEANROOM_TEST_POSTGRES", "two replicas");
    let s3 = env_or_skip("CLEANROOM_TEST_S3", "two replicas");
    let (Some(pg), Some(s3)) = (pg, s3) else {
        return;
    };
    let (schema, metadata) = fresh_schema(&pg, "rep");
    let store = format!(
        "{}/rep{}",
        s3.trim_end_matches('/'),
        &rand::random::<u64>().to_string()[..8]
    );
    let key = hex::encode(rand::random::<[u8; 32]>());
    let env = [
        ("CLEANROOM_METADATA", metadata.as_str()),
        ("CLEANROOM_DATA_STORE", store.as_str()),
        ("CLEANROOM_MASTER_KEY", key.as_str()),
        ("CLEANROOM_REPLICA_LEASE", "1"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&b_dir).unwrap();
    let out = run(Command::new(BIN)
        .args(["init", "--json", "--data-dir"])
        .arg(&a_dir)
        .envs(env));
    let op = json(&out)["token"].as_str().unwrap().to_owned();
    let mut a =
        ServeProcess::try_start_env(&a_dir, "127.0.0.1:0", &env).unwrap_or_else(|e| panic!("{e}"));
    let b =
        ServeProcess::try_start_env(&b_dir, "127.0.0.1:0", &env).unwrap_or_else(|e| panic!("{e}"));
    let (brand, publisher, id) = two_parties(&a.url, &op);

    // Uploads and policies through A; budgets through B.
    let (crm, aud, pol) = (
        tmp.path().join("crm.csv"),
        tmp.path().join("aud.csv"),
        tmp.path().join("policy.toml"),
    );
    crate::analysis::write_people(&crm, "c", 3000, 0);
    crate::analysis::write_people(&aud, "u", 3000, 1000);
    std::fs::write(&pol, crate::analysis::POLICY).unwrap();
    for (token, name, file) in [(&brand, "crm", &crm), (&publisher, "aud", &aud)] {
        crate::analysis::upload_with_policy(&a.url, token, &id, name, file, &pol);
        // 5.5 = one first analysis at 0.5, then exactly ten more.
        grant(&b.url, token, &id, "5.5", "1");
    }
    // B analyses what A uploaded.
    let sql = |i: usize| {
        format!(
            "SELECT c.city, COUNT(DISTINCT c.pid) AS people_{i} FROM crm c JOIN aud a \
             ON c.email_hmac = a.email_hmac GROUP BY c.city"
        )
    };
    ok(&cli(
        &b.url,
        &brand,
        &["query", &id, &sql(0), "--epsilon", "0.5"],
    ));

    // 50 different analyses at once, half through each replica: the budgets pay for 10.
    let outcomes: Vec<Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..=50)
            .map(|i| {
                let url = if i % 2 == 0 {
                    a.url.clone()
                } else {
                    b.url.clone()
                };
                let (brand, id, q) = (brand.clone(), id.clone(), sql(i));
                scope.spawn(move || cli(&url, &brand, &["query", &id, &q, "--epsilon", "0.5"]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let answered = outcomes.iter().filter(|o| o.status.success()).count();
    for o in outcomes.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("budget"),
            "a refusal that is not about the budget: {err}"
        );
    }
    assert_eq!(
        answered, 10,
        "budgets for 10 answered {answered} of 50 across two replicas"
    );
    let budgets = json(&cli(&b.url, &brand, &["--json", "budget", "show", &id]));
    for ledger in budgets.as_array().unwrap() {
        let left = ledger["epsilon_left"].as_f64().unwrap();
        assert!(left.abs() < 1e-6, "every ledger spent exactly: {budgets}");
    }

    // A is killed in the middle of an analysis; B records it as failed once A's lease ends,
    // and the charge, taken before any data was read, stays (taken once).
    let (big_c, big_a) = (tmp.path().join("big_c.csv"), tmp.path().join("big_a.csv"));
    crate::analysis::write_people(&big_c, "bc", 2_000_000, 0);
    crate::analysis::write_people(&big_a, "ba", 2_000_000, 500_000);
    for (token, name, file) in [(&brand, "big_c", &big_c), (&publisher, "big_a", &big_a)] {
        crate::analysis::upload_with_policy(&b.url, token, &id, name, file, &pol);
        ok(&cli(
            &b.url,
            token,
            &[
                "budget",
                "grant",
                &id,
                "--epsilon",
                "1",
                "--delta",
                "0.000001",
            ],
        ));
    }
    let spent = |who: &str| -> f64 {
        let v = json(&cli(&b.url, &brand, &["--json", "budget", "show", &id]));
        v.as_array()
            .unwrap()
            .iter()
            .find(|l| l["org"] == who)
            .unwrap()["epsilon_spent"]
            .as_f64()
            .unwrap_or_else(|| panic!("{v}"))
    };
    let before = spent("brand");
    let running = std::thread::scope(|scope| {
        let (url, who, collab) = (a.url.clone(), brand.clone(), id.clone());
        let heavy = scope.spawn(move || {
            cli(
                &url,
                &who,
                &[
                    "query",
                    &collab,
                    "SELECT c.city, COUNT(DISTINCT c.pid) AS people FROM big_c c JOIN big_a a \
                     ON c.email_hmac = a.email_hmac GROUP BY c.city",
                    "--epsilon",
                    "0.5",
                ],
            )
        });
        // Seen from B: the analysis is running (charged, reading the data) on A.
        let start = Instant::now();
        let running = loop {
            let list = json(&cli(&b.url, &brand, &["--json", "analysis", "list", &id]));
            if let Some(r) = list
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["status"] == "running")
            {
                break r["id"].as_str().unwrap().to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60) && !heavy.is_finished(),
                "the analysis on A was never seen running: {list}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        a.kill();
        assert!(
            !heavy.join().unwrap().status.success(),
            "the killed replica answered"
        );
        running
    });
    let start = Instant::now();
    loop {
        let v = json(&cli(
            &b.url,
            &brand,
            &["--json", "analysis", "show", &id, &running],
        ));
        if v["status"] == "failed" {
            break;
        }
        assert!(v["status"] == "running", "{v}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never taken over: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        (spent("brand") - before - 0.5).abs() < 1e-6,
        "the interrupted analysis is charged once"
    );
    let mut a =
        ServeProcess::try_start_env(&a_dir, "127.0.0.1:0", &env).unwrap_or_else(|e| panic!("{e}"));

    // A is killed in the middle of an upload; B takes the upload back once A's lease ends.
    let mut args = vec!["dataset", "create", &id, "late"];
    args.extend(COLUMNS);
    ok(&cli(&a.url, &brand, &args));
    let upload = stalled_upload(&a.url, &brand, &id, "late", 100_000);
    wait_for_status(
        &b.url,
        &brand,
        &id,
        "late",
        "uploading",
        Duration::from_secs(30),
    );
    a.kill();
    let _ = tokio::time::timeout(PROCESS_TIMEOUT, upload)
        .await
        .expect("the upload did not end after its server was killed");
    // Not at once: A's lease (1 s) must run out first; then B's next heartbeat takes it over.
    wait_for_status(
        &b.url,
        &brand,
        &id,
        "late",
        "pending",
        Duration::from_secs(20),
    );
    let log = json(&cli(&b.url, &brand, &["--json", "audit", "list", &id]));
    let discarded = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["actor"] == "server" && e["action"] == "dataset.upload" && e["target"] == "late"
        })
        .count();
    assert_eq!(discarded, 1, "taken over exactly once: {log:#}");
    if let Ok(root) = std::env::var("CLEANROOM_TEST_S3_ROOT") {
        // The bucket's directory under s3s-fs's root, then the key prefix under it.
        let prefix = store.trim_start_matches("s3://").split_once('/').unwrap().1;
        let objects = files_under(&Path::new(&root).join(prefix))
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .count();
        assert_eq!(objects, 4, "only the four finished datasets are objects");
    }
    // The dataset can be uploaded again, through B, and the chain is intact.
    let file = tmp.path().join("late.csv");
    write_csv(&file, 500);
    let v = json(&cli(
        &b.url,
        &brand,
        &[
            "--json",
            "dataset",
            "upload",
            &id,
            "late",
            "--file",
            file.to_str().unwrap(),
        ],
    ));
    assert_eq!(v["status"], "ready", "{v}");
    let verified = ok(&cli(&b.url, &brand, &["audit", "verify", &id]));
    assert!(verified.contains("intact"), "{verified}");
    drop(b);
    admin(&pg, format!("DROP SCHEMA \"{schema}\" CASCADE"));
}
