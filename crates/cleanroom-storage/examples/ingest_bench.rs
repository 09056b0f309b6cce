//! Where an upload's time goes: parses a generated CSV shaped like the demo brand's CRM
//! (customer id, 64-hex-digit email pseudonym, age band, region, purchases, revenue, date)
//! with 1 and with all threads, once into memory only (parse and validate) and once into the
//! encrypted Parquet writer (what the server does), and prints MB/s for each.
//!
//!   cargo run --release -p cleanroom-storage --example ingest_bench -- [ROWS] [RUNS]
//!
//! `bench/upload.sh` measures the whole path through the server; this splits it.

use std::time::Instant;

mod brand;
use brand::{csv, schema};

use arrow::array::RecordBatch;
use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_storage::StorageError;
use cleanroom_storage::dataset::DatasetStore;
use cleanroom_storage::ingest::{BatchSink, default_ingest_threads, ingest_csv_threads};
use cleanroom_storage::keys::SecretKey;

/// Counts rows and drops the batches: the cost of parsing and validating alone.
struct Discard(usize);

impl BatchSink for Discard {
    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), StorageError> {
        self.0 += batch.num_rows();
        Ok(())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let data = csv(rows);
    let mb = data.len() as f64 / 1e6;
    let all = default_ingest_threads();
    let dir = tempfile::tempdir()?;
    let store = DatasetStore::open(dir.path())?;
    let key = SecretKey::generate()?;
    let schema = schema();
    println!("{rows} rows, {mb:.1} MB CSV, {runs} runs, medians; {all} cores");
    let mut threads = vec![1];
    if all > 1 {
        threads.push(all);
    }
    for &t in &threads {
        let mut parse = Vec::new();
        let mut write = Vec::new();
        for _ in 0..runs {
            let t0 = Instant::now();
            let mut sink = Discard(0);
            ingest_csv_threads(&data[..], &schema, &mut sink, &mut |_| {}, t)?;
            parse.push(t0.elapsed().as_secs_f64());
            assert_eq!(sink.0, rows);

            let t0 = Instant::now();
            let (collab, id) = (CollaborationId::new(), DatasetId::new());
            let mut w = store.begin_write(collab, id, &schema, &key)?;
            ingest_csv_threads(&data[..], &schema, &mut w, &mut |_| {}, t)?;
            store.commit(w)?;
            store.remove(collab, id)?;
            write.push(t0.elapsed().as_secs_f64());
        }
        let (p, w) = (median(parse), median(write));
        println!(
            "threads {t}: parse+validate {p:.3} s ({:.0} MB/s); + encrypted Parquet {w:.3} s ({:.0} MB/s)",
            mb / p,
            mb / w
        );
    }
    Ok(())
}
