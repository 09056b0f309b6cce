//! Analyses under a memory limit spill to disk, and what they spill is ciphertext.
//!
//! Its own test binary: the memory limit is set once per process, before the first analysis,
//! and the other tests run without one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_core::names::OrgName;
use cleanroom_core::policy::{AnalysisPolicy, PolicyDraft};
use cleanroom_core::schema::{ColumnSpec, DatasetSchema};
use cleanroom_query::rewrite::{ExactValue, RunOptions, execute};
use cleanroom_query::spill::{spill_files, spilled_bytes};
use cleanroom_query::{Catalog, MemoryLimits, PrivacyRequest, QueryTable, SpillConfig};
use cleanroom_storage::ingest::ingest_csv;
use cleanroom_storage::{DatasetStore, SecretKey};

const PEOPLE: usize = 120_000;
const REGIONS: usize = 7;

fn schema() -> DatasetSchema {
    DatasetSchema::new(
        [
            "person:string:privacy_unit",
            "email:string:identifier",
            "region:string:dimension",
        ]
        .iter()
        .map(|c| ColumnSpec::parse_compact(c).unwrap())
        .collect(),
    )
    .unwrap()
}

fn email(i: usize) -> String {
    format!("secret.person.{i:07}@plaintext.example")
}

/// One party's people `range`, each with one row; region from the person.
fn table(
    store: &DatasetStore,
    collab: CollaborationId,
    name: &str,
    owner: &str,
    range: std::ops::Range<usize>,
) -> QueryTable {
    let schema = schema();
    let draft = PolicyDraft {
        join_keys: vec!["email".into()],
        dimensions: vec!["region".into()],
        ..Default::default()
    };
    let mut policy = AnalysisPolicy::validate(&draft, &schema).unwrap();
    policy.differential_privacy = false;
    policy.min_group_size = 1;
    let mut csv = String::from("person,email,region\n");
    for i in range {
        csv.push_str(&format!(
            "{owner}-{i},{},region-{}\n",
            email(i),
            i % REGIONS
        ));
    }
    let id = DatasetId::new();
    let key = SecretKey::generate().unwrap();
    let mut w = store.begin_write(collab, id, &schema, &key).unwrap();
    ingest_csv(csv.as_bytes(), &schema, &mut w, &mut |_| {}).unwrap();
    store.commit(w).unwrap();
    QueryTable {
        name: name.into(),
        dataset_id: id,
        owner: OrgName::parse(owner).unwrap(),
        schema,
        policy,
        has_policy: true,
        policy_version: 1,
        data: Some(store.open_dataset(collab, id, key).unwrap()),
        stats: None,
    }
}

/// Every file under `dir`, read while the analysis runs: the bytes seen, and whether any of
/// them held a plaintext value of the data.
fn watch(dir: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let needles: [&[u8]; 3] = [b"plaintext.example", b"secret.person", b"region-"];
        let mut seen = 0u64;
        let mut leaks = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for path in files(&dir) {
                let Ok(bytes) = std::fs::read(&path) else {
                    continue; // removed between listing and reading
                };
                seen += bytes.len() as u64;
                for n in needles {
                    if bytes.windows(n.len()).any(|w| w == n) {
                        leaks.push(format!(
                            "{} holds {:?}",
                            path.display(),
                            String::from_utf8_lossy(n)
                        ));
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        (seen, leaks)
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_overlap_that_does_not_fit_spills_ciphertext_and_answers_exactly() {
    let spill_root = tempfile::tempdir().unwrap();
    cleanroom_query::limit_memory(MemoryLimits {
        max_bytes: Some(128 << 20),
        spill: Some(SpillConfig {
            dir: spill_root.path().to_owned(),
            max_bytes: 4 << 30,
        }),
    })
    .unwrap();

    let data = tempfile::tempdir().unwrap();
    let store = DatasetStore::open(data.path()).unwrap();
    let collab = CollaborationId::new();
    // Overlap: people 40,000 … 119,999 of the brand are publisher readers too.
    let brand = table(&store, collab, "brand", "brand", 0..PEOPLE);
    let publisher = table(
        &store,
        collab,
        "publisher",
        "publisher",
        40_000..PEOPLE + 60_000,
    );
    let catalog = Catalog::new(vec![brand, publisher]);
    let analysis = cleanroom_query::prepare(
        "SELECT b.region, COUNT(DISTINCT b.person) AS people FROM brand b \
         JOIN publisher p ON b.email = p.email GROUP BY b.region",
        &catalog,
        PrivacyRequest {
            epsilon: 1.0,
            delta: 1e-7,
        },
    )
    .await
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(spill_root.path().to_owned(), Arc::clone(&stop));
    let groups = execute(
        &analysis.spec,
        &catalog,
        RunOptions {
            // Forced: the per-person and per-key bounding aggregations hold every row.
            bound_contributions: true,
            partitions: 2,
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (seen, leaks) = watcher.join().unwrap();
    let groups = groups.expect("the analysis fits once it may spill");

    assert!(spill_files() > 0, "nothing spilled: the limit did not bite");
    assert!(
        spilled_bytes() > 1 << 20,
        "only {} bytes spilled",
        spilled_bytes()
    );
    assert!(seen > 0, "no spill file was seen while the analysis ran");
    assert!(leaks.is_empty(), "plaintext on disk: {leaks:?}");

    let mut expected = BTreeMap::new();
    for i in 40_000..PEOPLE {
        *expected
            .entry(format!("region-{}", i % REGIONS))
            .or_insert(0i64) += 1;
    }
    let got: BTreeMap<String, i64> = groups
        .iter()
        .map(|g| {
            let n = match g.values[0] {
                ExactValue::Count(n) => n,
                ref other => panic!("{other:?}"),
            };
            (g.keys[0].to_string(), n)
        })
        .collect();
    assert_eq!(got, expected);

    // Every spill file is gone with the analysis; only the process's directory stays.
    let left = files(spill_root.path());
    assert!(
        left.is_empty(),
        "spill files outlived the analysis: {left:?}"
    );
}
