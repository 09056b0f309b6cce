//! `cleanroom scheduler`, `cleanroom executor` and `serve --engine ballista://…` as an operator
//! runs them: separate processes on loopback, the server's analyses executed on the cluster.

use cleanroom_testkit::net::free_port;
use std::process::{Child, Stdio};

use crate::analysis::{upload_with_policy, write_people};
use crate::*;

const EXACT_POLICY: &str = r#"
join_keys = ["email_hmac"]
dimensions = ["city"]
analysts = ["publisher", "brand"]
receivers = ["publisher", "brand"]
differential_privacy = false
min_group_size = 2
[[metrics]]
column = "n"
lower = 0
upper = 10
"#;

/// A background process of the binary that is killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&std::ffi::OsStr]) -> Process {
    Process(
        Command::new(BIN)
            .args(args)
            .env("CLEANROOM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The exact per-city matches of the query below, and their total.
fn exact(out: &serde_json::Value) -> Vec<(String, i64)> {
    let rows = out["result"]["tables"][0]["rows"].as_array().unwrap();
    rows.iter()
        .map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_i64().unwrap()))
        .collect()
}

#[test]
fn a_server_runs_its_analyses_on_a_scheduler_and_two_executors() {
    analyses_on_a_cluster(None);
}

/// The same with the room's datasets in S3-compatible object storage: the executors read
/// them from the bucket (`executor --data-store`), the data directory holds none.
#[test]
fn executors_read_a_room_on_s3_from_the_bucket() {
    let Some(base) = env_or_skip("CLEANROOM_TEST_S3", "the cluster on a room in S3") else {
        return;
    };
    let prefix = format!("cl{}", &rand::random::<u64>().to_string()[..8]);
    analyses_on_a_cluster(Some(&format!("{}/{prefix}", base.trim_end_matches('/'))));
}

/// A room (on the data directory, or on `store`), a scheduler, two executors and a server
/// whose analyses run on them; a SQL analysis with differential privacy off must give the
/// exact per-city matches.
fn analyses_on_a_cluster(store: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = match store {
        None => init(tmp.path()),
        Some(store) => {
            let data = tmp.path().join("data");
            let out = run(Command::new(BIN)
                .args(["init", "--json", "--data-dir"])
                .arg(&data)
                .args(["--data-store", store])
                .env_remove("CLEANROOM_MASTER_KEY")
                .env_remove("CLEANROOM_METADATA"));
            (
                data.clone(),
                json(&out)["token"].as_str().unwrap().to_owned(),
            )
        }
    };
    let key = tmp.path().join("cluster.key");
    let made = ok(&run(Command::new(BIN).arg("cluster-key").arg(&key)));
    assert!(made.contains("wrote a new cluster key"), "{made}");
    // Never overwritten.
    let again = failed(&run(Command::new(BIN).arg("cluster-key").arg(&key)));
    assert!(again.contains("never overwritten"), "{again}");
    let cert = tmp.path().join("cluster.pem");
    let made = ok(&run(Command::new(BIN).arg("cluster-cert").arg(&cert)));
    assert!(made.contains("wrote a new cluster certificate"), "{made}");
    let again = failed(&run(Command::new(BIN).arg("cluster-cert").arg(&cert)));
    assert!(again.contains("never overwritten"), "{again}");

    let port = free_port();
    let _scheduler = spawn(&[
        "scheduler".as_ref(),
        "--listen".as_ref(),
        format!("127.0.0.1:{port}").as_ref(),
        "--cluster-cert".as_ref(),
        cert.as_os_str(),
    ]);
    let reads: [&std::ffi::OsStr; 2] = match store {
        None => ["--data-dir".as_ref(), data.as_os_str()],
        Some(store) => ["--data-store".as_ref(), store.as_ref()],
    };
    let executor = || {
        spawn(&[
            "executor".as_ref(),
            "--scheduler".as_ref(),
            format!("127.0.0.1:{port}").as_ref(),
            "--cluster-key".as_ref(),
            key.as_os_str(),
            "--cluster-cert".as_ref(),
            cert.as_os_str(),
            reads[0],
            reads[1],
            "--listen".as_ref(),
            format!("127.0.0.1:{}", free_port()).as_ref(),
            "--concurrent-tasks".as_ref(),
            "2".as_ref(),
        ])
    };
    let (e1, e2) = (executor(), executor());
    let engine = format!("ballista://127.0.0.1:{port}");
    let env: Vec<(&str, &str)> = store
        .map(|s| vec![("CLEANROOM_DATA_STORE", s)])
        .unwrap_or_default();
    let server = ServeProcess::try_start_full(
        &data,
        "127.0.0.1:0",
        &[
            "--engine".as_ref(),
            engine.as_ref(),
            "--cluster-key".as_ref(),
            key.as_os_str(),
            "--cluster-cert".as_ref(),
            cert.as_os_str(),
            "--cluster-deadline".as_ref(),
            "120".as_ref(),
        ],
        &env,
    )
    .unwrap();
    let url = server.url.clone();
    let (brand, publisher, id) = two_parties(&url, &op);
    let (crm, aud, pol) = (
        tmp.path().join("crm.csv"),
        tmp.path().join("aud.csv"),
        tmp.path().join("policy.toml"),
    );
    write_people(&crm, "c", 3000, 0);
    write_people(&aud, "u", 3000, 1000);
    std::fs::write(&pol, EXACT_POLICY).unwrap();
    for (token, name, file) in [(&brand, "crm", &crm), (&publisher, "aud", &aud)] {
        upload_with_policy(&url, token, &id, name, file, &pol);
    }
    let sql = "SELECT c.city, COUNT(DISTINCT c.pid) AS people FROM crm c JOIN aud a \
               ON c.email_hmac = a.email_hmac GROUP BY c.city ORDER BY c.city";
    let out = json(&cli(&url, &brand, &["--json", "query", &id, sql]));
    // crm's e1000..e2999 match: 2,000 people, city = i % 3.
    let truth: Vec<(String, i64)> = (0..3)
        .map(|c| {
            let n = (1000..3000).filter(|i| i % 3 == c).count() as i64;
            (format!("city{c}"), n)
        })
        .collect();
    assert_eq!(exact(&out), truth, "{out}");
    if store.is_some() {
        let local = files_under(&data.join("datasets"));
        assert!(local.is_empty(), "dataset files on local disk: {local:?}");
    }

    // Stopped with SIGTERM, an executor removes its work directory (shuffle files) itself.
    for e in [e1, e2] {
        let pid = e.0.id();
        let mine = || -> Vec<String> {
            std::fs::read_dir("/dev/shm")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|d| d.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("cleanroom-executor-{pid}-")))
                .collect()
        };
        assert_eq!(mine().len(), 1, "executor {pid} has no work directory");
        terminate(e);
        assert!(mine().is_empty(), "left behind: {:?}", mine());
    }
}

/// Stops a process with SIGTERM and waits for it (killing it after 30 s).
fn terminate(mut p: Process) {
    let pid = p.0.id().to_string();
    ok(&run(Command::new("kill").args(["-TERM", &pid])));
    let t0 = std::time::Instant::now();
    while p.0.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "{pid} ignored SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn cluster_settings_are_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _op) = init(tmp.path());
    let err = ServeProcess::try_start_with(
        &data,
        "127.0.0.1:0",
        &["--engine".as_ref(), "ballista://127.0.0.1:1".as_ref()],
    )
    .err()
    .unwrap();
    assert!(err.contains("needs --cluster-key"), "{err}");
    let key = tmp.path().join("k");
    ok(&run(Command::new(BIN).arg("cluster-key").arg(&key)));
    let err = ServeProcess::try_start_with(
        &data,
        "127.0.0.1:0",
        &[
            "--engine".as_ref(),
            "spark://x".as_ref(),
            "--cluster-key".as_ref(),
            key.as_os_str(),
        ],
    )
    .err()
    .unwrap();
    assert!(err.contains("ballista://HOST:PORT"), "{err}");
    let err = ServeProcess::try_start_with(
        &data,
        "127.0.0.1:0",
        &[
            "--engine".as_ref(),
            "ballista://127.0.0.1:1".as_ref(),
            "--cluster-key".as_ref(),
            key.as_os_str(),
        ],
    )
    .err()
    .unwrap();
    assert!(err.contains("needs --cluster-cert"), "{err}");
    let cert = tmp.path().join("c.pem");
    ok(&run(Command::new(BIN).arg("cluster-cert").arg(&cert)));
    // A certificate others may read is refused (it holds the private key).
    let loose = tmp.path().join("loose.pem");
    std::fs::copy(&cert, &loose).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let err = failed(&run(Command::new(BIN)
        .args(["scheduler", "--listen", "127.0.0.1:0", "--cluster-cert"])
        .arg(&loose)));
    assert!(err.contains("readable by other users"), "{err}");
    let err = failed(&run(Command::new(BIN)
        .args(["scheduler", "--listen", "127.0.0.1:0", "--cluster-cert"])
        .arg(&key)));
    assert!(err.contains("no PEM certificate"), "{err}");
    let on_disk = tmp.path().join("work");
    let err = failed(&run(Command::new(BIN)
        .args(["executor", "--scheduler", "127.0.0.1:1", "--cluster-key"])
        .arg(&key)
        .arg("--cluster-cert")
        .arg(&cert)
        .arg("--data-dir")
        .arg(&data)
        .arg("--work-dir")
        .arg(&on_disk)));
    assert!(err.contains("not memory-backed"), "{err}");
    let err = failed(&run(Command::new(BIN)
        .args(["executor", "--scheduler", "127.0.0.1:1", "--cluster-key"])
        .arg(tmp.path().join("missing.key"))
        .arg("--cluster-cert")
        .arg(&cert)
        .arg("--data-dir")
        .arg(&data)));
    assert!(err.contains("cleanroom cluster-key"), "{err}");
}
