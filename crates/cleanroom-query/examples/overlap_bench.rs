//! Benchmark of an overlap-by-dimension query on two encrypted datasets, through the privacy
//! layer (check, bounding, thresholds, noise) or as the same aggregate on plain DataFusion over
//! the same encrypted tables. Driven by `bench/query.sh`; each run is its own process so that
//! peak memory is the run's own.
//!
//!   overlap_bench generate <dir> <rows>      two datasets of <rows> people, 35 % shared
//!   overlap_bench run <dir> MODE             one run; prints a JSON line
//!
//! `MAX_MEMORY=<bytes>` runs under that memory limit, spilling (encrypted) into `SPILL_DIR`
//! (default: the system's temporary directory); the JSON line then counts the bytes spilled.
//!
//! Modes: `private` (the privacy layer as the server runs it: the datasets' multiplicity
//! statistics, computed once per dataset, let it skip bounding that cannot remove a row),
//! `bounded` (the privacy layer without statistics: per-person and per-key bounding windows
//! always run, the worst case) and `plain` (the same aggregate on plain DataFusion).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_core::names::OrgName;
use cleanroom_core::policy::{AnalysisPolicy, PolicyDraft};
use cleanroom_core::schema::{ColumnSpec, DatasetSchema};
use cleanroom_query::{Catalog, PrivacyRequest, QueryTable};
use cleanroom_storage::ingest::{BatchSink, arrow_schema};
use cleanroom_storage::{DatasetStore, SecretKey};
use sha2::{Digest, Sha256};

const REGIONS: [&str; 8] = [
    "north",
    "north-east",
    "east",
    "south-east",
    "south",
    "south-west",
    "west",
    "london",
];
const BATCH: usize = 64 * 1024;

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
    let text = std::fs::read_to_string(dir.join("ids")).expect("run generate first");
    let parts: Vec<&str> = text.split_whitespace().collect();
    (
        CollaborationId::parse(parts[0]).unwrap(),
        DatasetId::parse(parts[1]).unwrap(),
        DatasetId::parse(parts[2]).unwrap(),
        SecretKey::from_bytes(&hex::decode(parts[3]).unwrap()).unwrap(),
    )
}

fn generate(dir: &Path, rows: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let store = DatasetStore::open(dir).unwrap();
    let collab = CollaborationId::new();
    let (left, right) = (DatasetId::new(), DatasetId::new());
    let key = SecretKey::generate().unwrap();
    let schema = schema();
    let overlap = rows * 35 / 100;
    for (d, offset, prefix) in [(left, 0usize, "L"), (right, rows - overlap, "R")] {
        let mut w = store.begin_write(collab, d, &schema, &key).unwrap();
        let mut start = 0;
        while start < rows {
            let end = (start + BATCH).min(rows);
            let person = |i: usize| i + offset;
            let uid: StringArray = (start..end)
                .map(|i| Some(format!("{prefix}{i:09}")))
                .collect();
            let email: StringArray = (start..end)
                .map(|i| Some(hex::encode(Sha256::digest(person(i).to_le_bytes()))))
                .collect();
            let region: StringArray = (start..end)
                .map(|i| Some(REGIONS[(person(i) * 7919) % REGIONS.len()]))
                .collect();
            let visits: Int64Array = (start..end).map(|i| Some((i % 50) as i64)).collect();
            let batch = RecordBatch::try_new(
                arrow_schema(&schema),
                vec![
                    Arc::new(uid),
                    Arc::new(email),
                    Arc::new(region),
                    Arc::new(visits),
                ],
            )
            .unwrap();
            w.write_batch(&batch).unwrap();
            start = end;
        }
        store.commit(w).unwrap();
    }
    std::fs::write(
        dir.join("ids"),
        format!("{collab} {left} {right} {}", hex::encode(key.expose())),
    )
    .unwrap();
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

const SQL: &str = "SELECT l.region, COUNT(DISTINCT l.uid) AS people \
                   FROM \"left\" l JOIN \"right\" r ON l.email_hmac = r.email_hmac GROUP BY l.region";

async fn run(dir: &Path, mode: &str) {
    if let Ok(max) = std::env::var("MAX_MEMORY") {
        let dir = std::env::var_os("SPILL_DIR").map_or_else(std::env::temp_dir, Into::into);
        cleanroom_query::limit_memory(cleanroom_query::MemoryLimits {
            max_bytes: Some(max.parse().expect("MAX_MEMORY in bytes")),
            spill: Some(cleanroom_query::SpillConfig {
                dir,
                max_bytes: 1 << 40,
            }),
        })
        .unwrap();
    }
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
    let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut tables = vec![
        table("left", left, "brand"),
        table("right", right, "publisher"),
    ];
    // The server computes these once per dataset, at its first analysis, and keeps them.
    let t0 = Instant::now();
    if mode == "private" {
        for t in &mut tables {
            t.stats = Some(
                cleanroom_query::rewrite::table_stats(t, partitions)
                    .await
                    .unwrap(),
            );
        }
    }
    let stats_secs = t0.elapsed().as_secs_f64();
    let catalog = Catalog::new(tables);
    let t0 = Instant::now();
    let groups = match mode {
        "private" | "bounded" => {
            let a = cleanroom_query::prepare(
                SQL,
                &catalog,
                PrivacyRequest {
                    epsilon: 1.0,
                    delta: 1e-7,
                },
            )
            .await
            .unwrap();
            cleanroom_query::run(&a, &catalog, partitions)
                .await
                .unwrap()
                .rows
                .len()
        }
        "plain" => cleanroom_query::rewrite::execute_unprotected(SQL, &catalog, partitions)
            .await
            .unwrap(),
        other => panic!("mode must be private, bounded or plain, not {other}"),
    };
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"{mode}\",\"seconds\":{secs:.3},\"stats_seconds\":{stats_secs:.3},\"groups\":{groups},\"peak_rss_mib\":{:.0},\"spilled_bytes\":{},\"spill_files\":{}}}",
        peak_rss_mib(),
        cleanroom_query::spill::spilled_bytes(),
        cleanroom_query::spill::spill_files(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("generate") => generate(Path::new(&args[2]), args[3].parse().unwrap()),
        Some("run") => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(Path::new(&args[2]), &args[3])),
        _ => eprintln!(
            "usage: overlap_bench generate <dir> <rows> | run <dir> private|bounded|plain"
        ),
    }
}
