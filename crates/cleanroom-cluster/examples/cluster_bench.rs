//! The overlap of `bench/query.sh` through the privacy layer, executed in this process or on a
//! Ballista cluster of separate processes on this machine (a scheduler and N executors, mutual
//! TLS, shuffle files in `/dev/shm`), on the encrypted datasets `overlap_bench generate` writes.
//!
//!   cluster_bench run DIR in-process
//!   cluster_bench run DIR cluster EXECUTORS TASKS_PER_EXECUTOR
//!
//! Prints one JSON line: the first-analysis statistics' and the query's seconds, each
//! process's peak memory (`VmHWM`), and the bytes of shuffle files the executors wrote for
//! the statistics and for the query. `scheduler` and `executor` are the processes `run`
//! starts (this binary again).

use cleanroom_testkit::net::free_port;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cleanroom_cluster::{
    BallistaEngine, ClusterKey, ClusterTls, ExecutorOptions, Readers, SchedulerOptions,
    run_executor, run_scheduler,
};
use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_core::names::OrgName;
use cleanroom_core::policy::{AnalysisPolicy, PolicyDraft};
use cleanroom_core::schema::{ColumnSpec, DatasetSchema};
use cleanroom_query::{Catalog, Cluster, PrivacyRequest, QueryTable, on_engine};
use cleanroom_storage::{DatasetStore, SecretKey};

/// The schema `overlap_bench generate` writes.
fn schema() -> DatasetSchema {
    DatasetSchema::new(
        [
            "uid:string:privacy_unit",
            "email_hmac:string:identifier",
            "region:string:dimension",
            "visits:int64:metric",
        ]
        .iter()
        .map(|c| ColumnSpec::parse_compact(c).unwrap())
        .collect(),
    )
    .unwrap()
}

fn ids(dir: &Path) -> (CollaborationId, DatasetId, DatasetId, SecretKey) {
    let text = std::fs::read_to_string(dir.join("ids")).expect("run overlap_bench generate");
    let parts: Vec<&str> = text.split_whitespace().collect();
    (
        CollaborationId::parse(parts[0]).unwrap(),
        DatasetId::parse(parts[1]).unwrap(),
        DatasetId::parse(parts[2]).unwrap(),
        SecretKey::from_bytes(&hex::decode(parts[3]).unwrap()).unwrap(),
    )
}

const SQL: &str = "SELECT l.region, COUNT(DISTINCT l.uid) AS people \
                   FROM \"left\" l JOIN \"right\" r ON l.email_hmac = r.email_hmac GROUP BY l.region";

fn peak_rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Every file seen under the work directories, at its largest size.
#[derive(Default)]
struct Shuffle(Mutex<HashMap<PathBuf, u64>>);

impl Shuffle {
    fn sample(&self, dirs: &[PathBuf]) {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path(), out),
                    Ok(m) => out.push((e.path(), m.len())),
                    Err(_) => {}
                }
            }
        }
        let mut seen = Vec::new();
        for d in dirs {
            walk(d, &mut seen);
        }
        let mut all = self.0.lock().unwrap();
        for (p, len) in seen {
            let v = all.entry(p).or_default();
            *v = (*v).max(len);
        }
    }

    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
}

struct Running {
    engine: Arc<dyn Cluster>,
    scheduler: Child,
    executors: Vec<Child>,
    work: Vec<PathBuf>,
    _tmp: tempfile::TempDir,
}

fn start_cluster(dir: &Path, executors: usize, tasks: usize) -> Running {
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("cluster.key");
    let cert_file = tmp.path().join("cluster.pem");
    let key = ClusterKey::create_file(&key_file).unwrap();
    let tls = ClusterTls::create_file(&cert_file).unwrap();
    let me = std::env::current_exe().unwrap();
    let port = free_port();
    let scheduler = Command::new(&me)
        .args(["scheduler", &port.to_string()])
        .arg(&cert_file)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no scheduler");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut children = Vec::new();
    let mut work = Vec::new();
    for i in 0..executors {
        let w = PathBuf::from(format!(
            "/dev/shm/cleanroom-bench-{}-{i}",
            std::process::id()
        ));
        std::fs::create_dir(&w).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        children.push(
            Command::new(&me)
                .args([
                    "executor",
                    &port.to_string(),
                    &free_port().to_string(),
                    &tasks.to_string(),
                ])
                .args([dir, &key_file, &cert_file, &w])
                .spawn()
                .unwrap(),
        );
        work.push(w);
    }
    let engine = BallistaEngine::new(&format!("ballista://127.0.0.1:{port}"), key, tls)
        .unwrap()
        .with_deadline(Duration::from_secs(4 * 3600));
    Running {
        engine: Arc::new(engine),
        scheduler,
        executors: children,
        work,
        _tmp: tmp,
    }
}

async fn run(dir: &Path, mode: &str, executors: usize, tasks: usize) {
    let (collab, left, right, key) = ids(dir);
    let store = DatasetStore::open(dir).unwrap();
    let schema = schema();
    let policy = AnalysisPolicy::validate(
        &PolicyDraft {
            join_keys: vec!["email_hmac".into()],
            dimensions: vec!["region".into()],
            ..Default::default()
        },
        &schema,
    )
    .unwrap();
    let table = |name: &str, id: DatasetId, owner: &str| QueryTable {
        name: name.into(),
        dataset_id: id,
        owner: OrgName::parse(owner).unwrap(),
        schema: schema.clone(),
        policy: policy.clone(),
        has_policy: true,
        policy_version: 1,
        data: Some(store.open_dataset(collab, id, key.clone()).unwrap()),
        stats: None,
    };
    let mut tables = vec![
        table("left", left, "brand"),
        table("right", right, "publisher"),
    ];
    let (cluster, partitions) = match mode {
        "in-process" => (
            None,
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        ),
        "cluster" => (
            Some(start_cluster(dir, executors, tasks)),
            executors * tasks,
        ),
        other => panic!("mode is in-process or cluster, not {other}"),
    };
    let engine = cluster.as_ref().map(|c| Arc::clone(&c.engine));
    let work: Vec<PathBuf> = cluster.as_ref().map(|c| c.work.clone()).unwrap_or_default();
    let shuffle = Arc::new(Shuffle::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (shuffle, stop, work) = (Arc::clone(&shuffle), Arc::clone(&stop), work.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                shuffle.sample(&work);
                std::thread::sleep(Duration::from_millis(50));
            }
            shuffle.sample(&work);
        })
    };

    let t0 = Instant::now();
    for t in &mut tables {
        t.stats = Some(
            on_engine(
                engine.clone(),
                cleanroom_query::rewrite::table_stats(t, partitions),
            )
            .await
            .unwrap(),
        );
    }
    let stats_secs = t0.elapsed().as_secs_f64();
    shuffle.sample(&work);
    let stats_bytes = shuffle.total();
    let catalog = Catalog::new(tables);
    let t0 = Instant::now();
    let req = PrivacyRequest {
        epsilon: 1.0,
        delta: 1e-7,
    };
    let groups = on_engine(engine.clone(), async {
        let a = cleanroom_query::prepare(SQL, &catalog, req).await?;
        cleanroom_query::run(&a, &catalog, partitions).await
    })
    .await
    .unwrap()
    .rows
    .len();
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let query_bytes = shuffle.total() - stats_bytes;

    let server = peak_rss_mib("self");
    let (scheduler, execs) = match cluster {
        Some(mut c) => {
            let s = peak_rss_mib(&c.scheduler.id().to_string());
            let e: Vec<String> = c
                .executors
                .iter()
                .map(|x| format!("{:.0}", peak_rss_mib(&x.id().to_string())))
                .collect();
            for child in c.executors.iter_mut().chain([&mut c.scheduler]) {
                let _ = child.kill();
                let _ = child.wait();
            }
            for w in &c.work {
                let _ = std::fs::remove_dir_all(w);
            }
            (s, e)
        }
        None => (0.0, Vec::new()),
    };
    println!(
        "{{\"mode\":\"{mode}\",\"executors\":{executors},\"tasks\":{tasks},\"seconds\":{secs:.3},\
         \"stats_seconds\":{stats_secs:.3},\"groups\":{groups},\"server_rss_mib\":{server:.0},\
         \"scheduler_rss_mib\":{scheduler:.0},\"executor_rss_mib\":[{}],\
         \"shuffle_bytes_query\":{query_bytes},\"shuffle_bytes_stats\":{stats_bytes}}}",
        execs.join(",")
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    match args.get(1).map(String::as_str) {
        Some("run") => {
            let n = |i: usize| args.get(i).map_or(1, |v| v.parse().unwrap());
            rt().block_on(run(Path::new(&args[2]), &args[3], n(4), n(5)))
        }
        Some("scheduler") => {
            let port: u16 = args[2].parse().unwrap();
            let tls = ClusterTls::read_file(Path::new(&args[3])).unwrap();
            rt().block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                run_scheduler(listener, SchedulerOptions::default(), tls)
                    .await
                    .unwrap()
            })
        }
        Some("executor") => {
            let (sched, flight, tasks): (u16, u16, usize) = (
                args[2].parse().unwrap(),
                args[3].parse().unwrap(),
                args[4].parse().unwrap(),
            );
            let (dir, key, cert, work) = (&args[5], &args[6], &args[7], &args[8]);
            rt().block_on(async move {
                let readers = Readers {
                    store: DatasetStore::open(Path::new(dir)).unwrap(),
                    key: ClusterKey::read_file(Path::new(key)).unwrap(),
                };
                let opts = ExecutorOptions {
                    scheduler: ("127.0.0.1".into(), sched),
                    bind_host: "127.0.0.1".into(),
                    external_host: "127.0.0.1".into(),
                    flight_port: flight,
                    work_dir: Some(PathBuf::from(work)),
                    vcores: tasks,
                    max_memory: None,
                    spill: None,
                    heartbeat: Duration::from_secs(5),
                    tls: ClusterTls::read_file(Path::new(cert)).unwrap(),
                };
                run_executor(opts, readers).await.unwrap()
            })
        }
        _ => eprintln!(
            "usage: cluster_bench run DIR in-process | run DIR cluster EXECUTORS TASKS \
             (scheduler and executor are started by run)"
        ),
    }
}
