//! A scheduler and two executors on loopback, in this process, against in-process execution
//! over the same encrypted datasets: every template, a SQL analysis, the statistics, the
//! bounding and the activation segments must give the same exact aggregates on both engines.

use cleanroom_testkit::net::free_port;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cleanroom_cluster::{
    BallistaEngine, ClusterKey, ClusterTls, ExecutorOptions, Readers, SchedulerOptions,
    run_executor, run_scheduler,
};
use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_core::names::OrgName;
use cleanroom_core::policy::{AnalysisPolicy, MetricDraft, PolicyDraft};
use cleanroom_core::schema::{ColumnSpec, DatasetSchema};
use cleanroom_query::rewrite::{self, RunOptions};
use cleanroom_query::segment::{SegmentRequest, matched_people, segment_ids};
use cleanroom_query::templates::{self, TemplateOutput};
use cleanroom_query::{Catalog, Cluster, PrivacyRequest, QueryError, QueryTable, on_engine};
use cleanroom_storage::ingest::ingest_csv;
use cleanroom_storage::{DatasetStore, SecretKey};

const REQ: PrivacyRequest = PrivacyRequest {
    epsilon: 1.0,
    delta: 1e-7,
};

fn schema(cols: &[&str]) -> DatasetSchema {
    DatasetSchema::new(
        cols.iter()
            .map(|c| ColumnSpec::parse_compact(c).unwrap())
            .collect(),
    )
    .unwrap()
}

fn metric(col: &str, upper: f64) -> MetricDraft {
    MetricDraft {
        column: col.into(),
        lower: 0.0,
        upper,
        ..Default::default()
    }
}

struct Room {
    dir: tempfile::TempDir,
    store: DatasetStore,
    collab: CollaborationId,
    tables: Vec<QueryTable>,
}

impl Room {
    fn add(&mut self, name: &str, owner: &str, cols: &[&str], policy: PolicyDraft, csv: &str) {
        let schema = schema(cols);
        let policy = AnalysisPolicy::validate(&policy, &schema).unwrap();
        let id = DatasetId::new();
        let key = SecretKey::generate().unwrap();
        let mut w = self
            .store
            .begin_write(self.collab, id, &schema, &key)
            .unwrap();
        ingest_csv(csv.as_bytes(), &schema, &mut w, &mut |_| {}).unwrap();
        self.store.commit(w).unwrap();
        let data = self.store.open_dataset(self.collab, id, key).unwrap();
        self.tables.push(QueryTable {
            name: name.into(),
            dataset_id: id,
            owner: OrgName::parse(owner).unwrap(),
            schema,
            policy,
            has_policy: true,
            policy_version: 1,
            data: Some(data),
            stats: None,
        });
    }

    /// Differential privacy off and groups of one shown: releases are the exact aggregates.
    fn exact(&self) -> Arc<Catalog> {
        let mut tables = self.tables.clone();
        for t in &mut tables {
            t.policy.differential_privacy = false;
            t.policy.min_group_size = 1;
        }
        Catalog::new(tables)
    }

    fn private(&self) -> Arc<Catalog> {
        Catalog::new(self.tables.clone())
    }
}

const REGIONS: [&str; 5] = ["north", "south", "east", "west", "centre"];

/// A brand, a publisher and two more benchmark parties. Every person has one row, so the
/// bounding stages keep everything and both engines must agree exactly.
fn room() -> Room {
    room_of(3000)
}

/// The same room with `n` brand customers (and the publisher's audience in proportion).
fn room_of(n: u32) -> Room {
    let dir = tempfile::tempdir().unwrap();
    let store = DatasetStore::open(dir.path()).unwrap();
    let mut room = Room {
        dir,
        store,
        collab: CollaborationId::new(),
        tables: Vec::new(),
    };
    let mut brand =
        String::from("customer_id,email,phone,region,purchases,revenue,first_purchase\n");
    for i in 0..n {
        let phone = if i % 3 == 0 {
            String::new()
        } else {
            format!("p{}", i % 2500)
        };
        brand.push_str(&format!(
            "c{i},e{i},{phone},{},{},{}.5,2024-{:02}-{:02}\n",
            REGIONS[(i % 5) as usize],
            i % 7,
            i % 300,
            1 + i % 12,
            1 + i % 28
        ));
    }
    room.add(
        "brand",
        "brand",
        &[
            "customer_id:string:privacy_unit",
            "email:string:identifier",
            "phone:string:identifier",
            "region:string:dimension",
            "purchases:int64:metric",
            "revenue:float64:metric",
            "first_purchase:date:dimension",
        ],
        PolicyDraft {
            join_keys: vec!["email".into(), "phone".into()],
            dimensions: vec!["region".into(), "first_purchase".into()],
            metrics: vec![metric("purchases", 100.0), metric("revenue", 1000.0)],
            analysts: vec!["publisher".into()],
            receivers: vec!["publisher".into()],
            ..Default::default()
        },
        &brand,
    );
    let mut publisher = String::from("user_id,email,phone,region,exposed,page_views\n");
    for i in n / 2..n / 2 + n * 4 / 3 {
        let phone = if i % 4 == 0 {
            String::new()
        } else {
            format!("p{}", i % 2500)
        };
        publisher.push_str(&format!(
            "u{i},e{i},{phone},{},{},{}\n",
            REGIONS[(i % 5) as usize],
            i % 3 == 0,
            i % 40
        ));
    }
    room.add(
        "publisher",
        "publisher",
        &[
            "user_id:string:privacy_unit",
            "email:string:identifier",
            "phone:string:identifier",
            "region:string:dimension",
            "exposed:bool:dimension",
            "page_views:int64:metric",
        ],
        PolicyDraft {
            join_keys: vec!["email".into(), "phone".into()],
            dimensions: vec!["region".into(), "exposed".into()],
            metrics: vec![metric("page_views", 50.0)],
            analysts: vec!["brand".into()],
            receivers: vec!["brand".into()],
            ..Default::default()
        },
        &publisher,
    );
    for (k, party) in ["farm-a", "farm-b", "farm-c"].iter().enumerate() {
        let mut csv = String::from("turbine,region,output\n");
        for i in 0..400u32 {
            csv.push_str(&format!(
                "t{k}-{i},{},{}\n",
                REGIONS[(i % 5) as usize],
                (i * (k as u32 + 3)) % 90
            ));
        }
        room.add(
            party,
            party,
            &[
                "turbine:string:privacy_unit",
                "region:string:dimension",
                "output:int64:metric",
            ],
            PolicyDraft {
                dimensions: vec!["region".into()],
                metrics: vec![metric("output", 100.0)],
                analysts: vec!["brand".into(), "farm-a".into()],
                receivers: vec!["brand".into(), "farm-a".into()],
                ..Default::default()
            },
            &csv,
        );
    }
    room
}

/// A scheduler and two executors on loopback, reading one store.
struct Started {
    scheduler: u16,
    flights: Vec<u16>,
    key: ClusterKey,
    tls: ClusterTls,
    /// The executors' work directories (shuffle files), removed at the end.
    work: Vec<tempfile::TempDir>,
}

impl Started {
    /// An engine that reaches the scheduler at `port` (the scheduler's, or a relay's).
    fn engine_at(&self, port: u16, tls: ClusterTls) -> Arc<dyn Cluster> {
        Arc::new(
            BallistaEngine::new(
                &format!("ballista://127.0.0.1:{port}"),
                self.key.clone(),
                tls,
            )
            .unwrap(),
        )
    }

    fn engine(&self) -> Arc<dyn Cluster> {
        self.engine_at(self.scheduler, self.tls.clone())
    }
}

async fn start(store: &DatasetStore) -> Started {
    let key = ClusterKey::generate().unwrap();
    let tls = ClusterTls::generate().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(run_scheduler(
        listener,
        SchedulerOptions {
            executor_timeout: Duration::from_secs(6),
            shuffle_cleanup: Duration::from_secs(3),
            ..SchedulerOptions::default()
        },
        tls.clone(),
    ));
    let mut flights = Vec::new();
    let mut work = Vec::new();
    for _ in 0..2 {
        let flight_port = free_port();
        flights.push(flight_port);
        let dir = tempfile::Builder::new()
            .prefix("cleanroom-test-work-")
            .tempdir_in("/dev/shm")
            .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let opts = ExecutorOptions {
            scheduler: ("127.0.0.1".into(), port),
            bind_host: "127.0.0.1".into(),
            external_host: "127.0.0.1".into(),
            flight_port,
            work_dir: Some(dir.path().to_owned()),
            vcores: 2,
            max_memory: None,
            spill: None,
            heartbeat: Duration::from_secs(1),
            tls: tls.clone(),
        };
        work.push(dir);
        let readers = Readers {
            store: store.clone(),
            key: key.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = run_executor(opts, readers).await {
                panic!("executor: {e}");
            }
        });
    }
    Started {
        scheduler: port,
        flights,
        key,
        tls,
        work,
    }
}

/// A scheduler and two executors reading `store`; the engine that uses them.
async fn cluster(store: &DatasetStore) -> (Arc<dyn Cluster>, Started) {
    let started = start(store).await;
    (started.engine(), started)
}

/// The files under the executors' work directories.
fn shuffle_files(started: &Started) -> usize {
    fn count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
    }
    started.work.iter().map(|d| count(d.path())).sum()
}

fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn template(
    name: &str,
    kv: &[(&str, &str)],
    catalog: &Catalog,
    engine: Option<Arc<dyn Cluster>>,
) -> Result<TemplateOutput, QueryError> {
    let info = templates::find(name, Some(1))?;
    let plan = templates::plan(&info, &params(kv), catalog, REQ).await?;
    on_engine(engine, templates::run(&plan, catalog, 3)).await
}

/// The released rows of every table, sorted (partitions may order groups differently). With
/// differential privacy off every figure is exact but the benchmark's figures of the peers,
/// which are always noisy: of its tables only the group, the number of parties and each
/// party's own exact figures are kept.
fn tables(out: &TemplateOutput) -> Vec<(String, Vec<String>)> {
    out.tables
        .iter()
        .map(|(name, t, _)| {
            let keep = match name.as_str() {
                "peers" => 2,
                n if n.starts_with("yours: ") => 3,
                _ => usize::MAX,
            };
            let mut rows: Vec<String> = t
                .rows
                .iter()
                .map(|r| format!("{:?}", &r[..keep.min(r.len())]))
                .collect();
            rows.sort();
            (name.clone(), rows)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_gives_the_exact_aggregates_of_in_process_execution() {
    let room = room();
    let (engine, started) = cluster(&room.store).await;
    let exact = room.exact();

    let runs: &[(&str, &[(&str, &str)])] = &[
        (
            "overlap",
            &[
                ("left", "brand"),
                ("right", "publisher"),
                ("key", "email"),
                ("by", "region"),
            ],
        ),
        (
            "overlap_ids",
            &[
                ("left", "brand"),
                ("right", "publisher"),
                ("keys", "email,phone"),
            ],
        ),
        (
            "overlap_ids",
            &[
                ("left", "brand"),
                ("right", "publisher"),
                ("keys", "email,phone"),
                ("by", "region"),
            ],
        ),
        (
            "lift",
            &[
                ("exposure", "publisher"),
                ("exposed", "exposed"),
                ("outcome", "brand"),
                ("conversion", "purchases"),
                ("key", "email"),
            ],
        ),
        ("reach", &[("exposures", "publisher"), ("by", "region")]),
        (
            "reach",
            &[
                ("exposures", "publisher"),
                ("audience", "brand"),
                ("key", "email"),
            ],
        ),
        (
            "benchmark",
            &[
                ("datasets", "farm-a,farm-b,farm-c"),
                ("metric", "output"),
                ("by", "region"),
            ],
        ),
    ];
    for (name, kv) in runs {
        let local = template(name, kv, &exact, None).await.unwrap();
        let remote = template(name, kv, &exact, Some(Arc::clone(&engine)))
            .await
            .unwrap_or_else(|e| panic!("{name} on the cluster: {e}"));
        let (l, r) = (tables(&local), tables(&remote));
        assert!(
            l.iter().any(|(_, rows)| !rows.is_empty()),
            "{name}: nothing to compare"
        );
        assert_eq!(l, r, "{name} {kv:?}");
    }

    // A SQL analysis, bounded as under differential privacy: its exact groups before noise.
    // It groups by the checker's own total date_trunc, which the executors rebuild by name.
    let private = room.private();
    let sql = "SELECT date_trunc('quarter', b.first_purchase) AS q, \
               COUNT(DISTINCT b.customer_id) AS people, SUM(b.revenue) AS revenue, \
               AVG(p.page_views) AS views FROM brand b JOIN publisher p ON b.email = p.email \
               WHERE p.exposed = true GROUP BY date_trunc('quarter', b.first_purchase)";
    let analysis = cleanroom_query::prepare(sql, &private, REQ).await.unwrap();
    let opts = RunOptions {
        bound_contributions: true,
        partitions: 3,
    };
    let exact_groups = |engine: Option<Arc<dyn Cluster>>| {
        let (spec, catalog) = (analysis.spec.clone(), Arc::clone(&private));
        async move {
            let mut g = on_engine(engine, rewrite::execute_counted(&spec, &catalog, opts))
                .await
                .unwrap();
            g.0.sort_by_key(|g| format!("{:?}", g.keys));
            g
        }
    };
    let (local, remote) = (
        exact_groups(None).await,
        exact_groups(Some(Arc::clone(&engine))).await,
    );
    assert_eq!(local.0.len(), 4, "{local:?}");
    assert_eq!(local, remote);

    // The statistics that let the rewrite skip bounding.
    for t in &room.tables {
        let local = on_engine(None, rewrite::table_stats(t, 3)).await.unwrap();
        let remote = on_engine(Some(Arc::clone(&engine)), rewrite::table_stats(t, 3))
            .await
            .unwrap();
        assert_eq!(local, remote, "{}", t.name);
        assert_eq!(remote.max_rows_per_unit, 1);
    }

    // An activation segment: the publisher's ids of the brand's matched people in the north.
    let filters = vec![("region".to_owned(), "north".to_owned())];
    let req = SegmentRequest {
        source: &room.tables[0],
        source_key: "email",
        filters: &filters,
        target: &room.tables[1],
        target_key: "email",
        output: "user_id",
    };
    let local = (
        on_engine(None, matched_people(&req, 3)).await.unwrap(),
        on_engine(None, segment_ids(&req, 3)).await.unwrap(),
    );
    let remote = (
        on_engine(Some(Arc::clone(&engine)), matched_people(&req, 3))
            .await
            .unwrap(),
        on_engine(Some(Arc::clone(&engine)), segment_ids(&req, 3))
            .await
            .unwrap(),
    );
    assert_eq!(local.0, 300, "1,500 matched emails, a fifth in the north");
    assert_eq!(local, remote);

    // The jobs' shuffle files (rows in the clear) are gone soon after the jobs end.
    assert!(
        shuffle_files(&started) > 0,
        "no shuffle file was ever written"
    );
    let t0 = std::time::Instant::now();
    while shuffle_files(&started) > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} shuffle files still in the executors' work directories",
            shuffle_files(&started)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "shuffle files removed {:?} after the last job",
        t0.elapsed()
    );
}

#[tokio::test]
async fn an_unreachable_cluster_is_a_clear_error_not_a_hang() {
    let room = room();
    let port = free_port();
    let engine: Arc<dyn Cluster> = Arc::new(
        BallistaEngine::new(
            &format!("ballista://127.0.0.1:{port}"),
            ClusterKey::generate().unwrap(),
            ClusterTls::generate().unwrap(),
        )
        .unwrap(),
    );
    let t = &room.tables[0];
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        on_engine(Some(engine), rewrite::table_stats(t, 2)),
    )
    .await
    .expect("an unreachable cluster must fail, not hang")
    .unwrap_err();
    let QueryError::Cluster { at, .. } = &err else {
        panic!("not a cluster error: {err:?}");
    };
    assert_eq!(at, &format!("ballista://127.0.0.1:{port}"));
    assert!(err.to_string().contains("cluster"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// Runs as an executor process when the test binary is started by
/// [`an_executor_killed_mid_query_is_survived_or_a_clean_failure`]; passes at once otherwise.
#[test]
fn executor_process() {
    let Ok(spec) = std::env::var("CLEANROOM_TEST_EXECUTOR") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (scheduler_port, flight_port, data_dir, key_file, cert_file) = (
        parts[0].parse().unwrap(),
        parts[1].parse().unwrap(),
        std::path::PathBuf::from(parts[2]),
        std::path::PathBuf::from(parts[3]),
        std::path::PathBuf::from(parts[4]),
    );
    let readers = Readers {
        store: DatasetStore::open(&data_dir).unwrap(),
        key: ClusterKey::read_file(&key_file).unwrap(),
    };
    let opts = ExecutorOptions {
        scheduler: ("127.0.0.1".into(), scheduler_port),
        bind_host: "127.0.0.1".into(),
        external_host: "127.0.0.1".into(),
        flight_port,
        work_dir: None,
        vcores: 2,
        max_memory: None,
        spill: None,
        heartbeat: Duration::from_secs(1),
        tls: ClusterTls::read_file(&cert_file).unwrap(),
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run_executor(opts, readers))
        .unwrap();
}

/// An executor process killed while an analysis runs: the analysis either still gives the
/// exact answer (its tasks rerun on the other executor) or fails as a cluster failure, in
/// bounded time; never a wrong answer, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_executor_killed_mid_query_is_survived_or_a_clean_failure() {
    let room = room_of(150_000);
    let key_file = room.dir.path().join("cluster.key");
    let key = ClusterKey::create_file(&key_file).unwrap();
    let cert_file = room.dir.path().join("cluster.pem");
    let tls = ClusterTls::create_file(&cert_file).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(run_scheduler(
        listener,
        SchedulerOptions {
            executor_timeout: Duration::from_secs(4),
            ..SchedulerOptions::default()
        },
        tls.clone(),
    ));
    let spawn = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "executor_process",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(
                "CLEANROOM_TEST_EXECUTOR",
                format!(
                    "{port}|{}|{}|{}|{}",
                    free_port(),
                    room.dir.path().display(),
                    key_file.display(),
                    cert_file.display()
                ),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut victim = spawn();
    let mut survivor = spawn();
    let deadline = Duration::from_secs(25);
    let engine: Arc<dyn Cluster> = Arc::new(
        BallistaEngine::new(&format!("ballista://127.0.0.1:{port}"), key, tls)
            .unwrap()
            .with_deadline(deadline),
    );
    let exact = room.exact();
    let kv = [
        ("left", "brand"),
        ("right", "publisher"),
        ("key", "email"),
        ("by", "region"),
    ];
    let expected = tables(&template("overlap", &kv, &exact, None).await.unwrap());

    // Once on both executors, to know the cluster is up.
    let warm = template("overlap", &kv, &exact, Some(Arc::clone(&engine)))
        .await
        .unwrap();
    assert_eq!(tables(&warm), expected);

    let run = {
        let (engine, exact) = (Arc::clone(&engine), Arc::clone(&exact));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let out = template("overlap", &kv, &exact, Some(engine)).await;
            (out, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim.kill().unwrap();
    victim.wait().unwrap();
    let (out, took) = tokio::time::timeout(deadline + Duration::from_secs(30), run)
        .await
        .expect("an analysis on a cluster that lost an executor must end, not hang")
        .unwrap();
    eprintln!(
        "after the kill: {}",
        if out.is_ok() { "answered" } else { "failed" }
    );
    match out {
        Ok(out) => assert_eq!(
            tables(&out),
            expected,
            "a wrong answer after a lost executor"
        ),
        Err(QueryError::Cluster { .. }) => assert!(took < deadline + Duration::from_secs(5)),
        Err(other) => panic!("not a cluster failure: {other:?}"),
    }
    eprintln!("the analysis ended in {took:?} after the kill");

    // The cluster still answers on the survivor.
    let after = template("overlap", &kv, &exact, Some(engine))
        .await
        .unwrap();
    assert_eq!(tables(&after), expected);
    survivor.kill().unwrap();
    survivor.wait().unwrap();
}

/// Copies `from` into `into`, keeping every byte in `kept`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut into: tokio::net::tcp::OwnedWriteHalf,
    kept: Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        kept.lock().unwrap().extend_from_slice(&buf[..n]);
        if into.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = into.shutdown().await;
}

/// Relays `127.0.0.1:<returned port>` to `to`, keeping every byte either way.
async fn recording_relay(to: u16) -> (u16, Arc<std::sync::Mutex<Vec<u8>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let kept = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let outbound = tokio::net::TcpStream::connect(("127.0.0.1", to))
                .await
                .unwrap();
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::spawn(pump(ir, ow, Arc::clone(&kept)));
            tokio::spawn(pump(or, iw, Arc::clone(&kept)));
        }
    });
    (port, seen)
}

/// Every connection of the cluster is mutual TLS pinned to the cluster certificate: the plan
/// (column names, dataset ids, wrapped keys) is not readable on the wire, and a caller without
/// the certificate reaches neither the scheduler nor an executor's shuffle service.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_speaks_only_mutual_tls_with_its_certificate() {
    use arrow_flight::Criteria;
    use arrow_flight::flight_service_client::FlightServiceClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    let room = room();
    let started = start(&room.store).await;
    let t = &room.tables[0];

    // Through a relay that records the server's side of the conversation with the scheduler.
    let (relay, seen) = recording_relay(started.scheduler).await;
    let stats = on_engine(
        Some(started.engine_at(relay, started.tls.clone())),
        rewrite::table_stats(t, 2),
    )
    .await
    .unwrap();
    assert!(!stats.max_rows_per_key.is_empty());
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 1000, "the relay saw {} bytes", seen.len());
    assert_eq!(
        seen[0], 0x16,
        "the first byte is not a TLS handshake record"
    );
    let id = t.dataset_id.to_string();
    for clear in [id.as_str(), "region", "email", "RoomScan", "ballista"] {
        assert!(
            !seen.windows(clear.len()).any(|w| w == clear.as_bytes()),
            "`{clear}` crossed the wire in the clear"
        );
    }

    // A server holding another certificate is refused at the handshake.
    let stranger = ClusterTls::generate().unwrap();
    let err = on_engine(
        Some(started.engine_at(started.scheduler, stranger.clone())),
        rewrite::table_stats(t, 2),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, QueryError::Cluster { .. }), "{err:?}");

    // An executor's Flight service (shuffle partitions): with the certificate, the service
    // answers (list_flights is not one it offers); without it, nothing gets through.
    let flight = started.flights[0];
    let call = |endpoint: Endpoint| async move {
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return Err(format!("connect: {e}")),
        };
        match FlightServiceClient::new(channel)
            .list_flights(Criteria::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(()),
            Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
        }
    };
    let https = || Endpoint::from_shared(format!("https://127.0.0.1:{flight}")).unwrap();
    call(https().tls_config(started.tls.client()).unwrap())
        .await
        .expect("a cluster member reaches the executor");
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{flight}")).unwrap();
    assert!(call(plain).await.is_err(), "plaintext reached an executor");
    assert!(
        call(https().tls_config(stranger.client()).unwrap())
            .await
            .is_err(),
        "another certificate reached an executor"
    );
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(started.tls.certificate_pem()))
        .domain_name(cleanroom_cluster::tls::CLUSTER_NAME);
    assert!(
        call(https().tls_config(anonymous).unwrap()).await.is_err(),
        "a caller without a client certificate reached an executor"
    );
    // The scheduler refuses plaintext too.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", started.scheduler)).unwrap();
    assert!(
        call(plain).await.is_err(),
        "plaintext reached the scheduler"
    );
}
