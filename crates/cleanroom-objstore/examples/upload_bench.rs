//! An upload's storage path on S3-compatible object storage against the local data directory:
//! the same generated CSV (the demo brand's CRM shape) parsed, validated, encrypted as Parquet
//! and committed, once into `LocalFiles` (temp file, fsync, rename) and once into `S3Files`
//! (multipart upload), alternating, `RUNS` times each; prints each run, the medians and the
//! ratio. The S3 side needs `CLEANROOM_TEST_S3=s3://bucket/prefix` and the `AWS_*` variables
//! (`bench/upload-s3.sh` starts a server and sets them).
//!
//!   cargo run --release -p cleanroom-objstore --example upload_bench -- [ROWS] [RUNS]

use std::sync::Arc;
use std::time::Instant;

use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_objstore::{S3Files, S3Url};
use cleanroom_storage::ingest::{default_ingest_threads, ingest_csv_threads};
use cleanroom_storage::{DatasetFiles, DatasetStore, LocalFiles, SecretKey};

#[path = "../../cleanroom-storage/examples/brand/mod.rs"]
mod brand;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds to ingest `data` into `files` and commit it; removes the file afterwards.
fn upload(files: Arc<dyn DatasetFiles>, data: &[u8], threads: usize) -> (f64, u64) {
    let store = DatasetStore::new(files);
    let schema = brand::schema();
    let key = SecretKey::generate().expect("key");
    let (c, d) = (CollaborationId::new(), DatasetId::new());
    let t0 = Instant::now();
    let mut w = store.begin_write(c, d, &schema, &key).expect("begin");
    ingest_csv_threads(data, &schema, &mut w, &mut |_| {}, threads).expect("ingest");
    let stored = store.commit(w).expect("commit");
    let secs = t0.elapsed().as_secs_f64();
    store.remove(c, d).expect("remove");
    (secs, stored.bytes)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(1_000_000, |a| a.parse().expect("ROWS"));
    let runs: usize = args.next().map_or(3, |a| a.parse().expect("RUNS"));
    let url = std::env::var("CLEANROOM_TEST_S3").expect("CLEANROOM_TEST_S3=s3://bucket/prefix");
    let url = S3Url::parse(&url).expect("an s3:// URL");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let s3: Arc<dyn DatasetFiles> =
        Arc::new(S3Files::from_env(&url, rt.handle().clone()).expect("S3 client"));
    let dir = std::env::var_os("BENCH_LOCAL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("upload-bench-{}", std::process::id()));
    let local: Arc<dyn DatasetFiles> = Arc::new(LocalFiles::open(&dir).expect("local dir"));
    let data = brand::csv(rows);
    let mb = data.len() as f64 / 1e6;
    let threads = default_ingest_threads();
    println!(
        "{rows} rows, {mb:.1} MB CSV, {threads} ingest threads, {runs} runs each, alternating"
    );
    let (mut l, mut s) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for run in 1..=runs {
        let (tl, b) = upload(local.clone(), &data, threads);
        let (ts, _) = upload(s3.clone(), &data, threads);
        bytes = b;
        println!(
            "run {run}: local {tl:.2} s ({:.0} MB/s), S3 {ts:.2} s ({:.0} MB/s)",
            mb / tl,
            mb / ts
        );
        l.push(tl);
        s.push(ts);
    }
    let (ml, ms) = (median(l), median(s));
    println!(
        "medians: local {ml:.2} s ({:.0} MB/s of CSV), S3 {ms:.2} s ({:.0} MB/s); S3 / local time {:.2}; encrypted file {:.1} MB",
        mb / ml,
        mb / ms,
        ms / ml,
        bytes as f64 / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
}
