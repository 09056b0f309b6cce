//! DataFusion's Parquet scan over the encrypted files: every byte comes through the storage
//! backend, a selective filter prunes what is read by the file's statistics without changing
//! the answer, and a damaged file fails as the storage's fault, quoting no value.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_query::{Cell, QueryError, prepare, run};
use cleanroom_storage::{
    DatasetFiles, DatasetStore, FileRead, FileWrite, LocalFiles, StorageError, StoredFile,
};

use crate::*;

/// The local directory, counting the bytes read from its files.
#[derive(Debug)]
struct Counting {
    inner: LocalFiles,
    read: Arc<AtomicU64>,
}

struct CountingRead {
    inner: Arc<dyn FileRead>,
    read: Arc<AtomicU64>,
}

impl FileRead for CountingRead {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_range(&self, start: u64, len: usize) -> Result<Bytes, StorageError> {
        let b = self.inner.read_range(start, len)?;
        self.read.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }
}

impl DatasetFiles for Counting {
    fn begin_write(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
    ) -> Result<Box<dyn FileWrite>, StorageError> {
        self.inner.begin_write(collab, dataset)
    }

    fn open_read(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
    ) -> Result<Arc<dyn FileRead>, StorageError> {
        Ok(Arc::new(CountingRead {
            inner: self.inner.open_read(collab, dataset)?,
            read: Arc::clone(&self.read),
        }))
    }

    fn list(&self) -> Result<Vec<StoredFile>, StorageError> {
        self.inner.list()
    }

    fn remove(&self, collab: CollaborationId, dataset: DatasetId) -> Result<bool, StorageError> {
        self.inner.remove(collab, dataset)
    }

    fn remove_collaboration(&self, collab: CollaborationId) -> Result<usize, StorageError> {
        self.inner.remove_collaboration(collab)
    }

    fn remove_unfinished(&self) -> Result<usize, StorageError> {
        self.inner.remove_unfinished()
    }

    fn probe(&self) -> Result<(), StorageError> {
        self.inner.probe()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn identity(&self) -> String {
        self.inner.identity()
    }
}

const N: usize = 300_000;
const REGIONS: [&str; 4] = ["north", "south", "east", "west"];

/// `N` brand customers whose first purchase is month 1 + 9·i/N: sorted by date, as a CRM
/// export often is, so each month is a contiguous run of pages.
fn brand_rows() -> String {
    csv(
        BRAND_HEADER,
        (0..N).map(|i| {
            format!(
                "c{i},e{i},{},25-34,{},{}.5,2025-0{}-01",
                REGIONS[i % 4],
                i % 5,
                i % 100,
                1 + i * 9 / N
            )
        }),
    )
}

async fn counts(cat: &Arc<cleanroom_query::Catalog>, sql: &str) -> Vec<(String, i64)> {
    let a = prepare(sql, cat, REQ).await.unwrap();
    let r = run(&a, cat, 2).await.unwrap();
    let mut out: Vec<(String, i64)> = r
        .rows
        .iter()
        .map(|row| match (&row[0], &row[1]) {
            (Cell::Text(t), Cell::Int(n)) => (t.clone(), *n),
            other => panic!("{other:?}"),
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_selective_filter_reads_less_of_the_file_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let read = Arc::new(AtomicU64::new(0));
    let files = Counting {
        inner: LocalFiles::open(dir.path()).unwrap(),
        read: Arc::clone(&read),
    };
    let mut f = Fixture::on(dir, DatasetStore::new(Arc::new(files)));
    f.add(
        "brand",
        "brand",
        BRAND_SCHEMA,
        brand_policy(),
        &brand_rows(),
    );
    let cat = f.exact();

    read.store(0, Ordering::Relaxed);
    let all = counts(
        &cat,
        "SELECT region, COUNT(*) AS n FROM brand GROUP BY region",
    )
    .await;
    let whole = read.load(Ordering::Relaxed);
    assert_eq!(all.iter().map(|(_, n)| n).sum::<i64>(), N as i64);

    read.store(0, Ordering::Relaxed);
    let sql = "SELECT region, COUNT(*) AS n FROM brand \
               WHERE first_purchase >= '2025-09-01' GROUP BY region";
    let september = counts(&cat, sql).await;
    let pruned = read.load(Ordering::Relaxed);
    // Exact: customers with 1 + 9i/N = 9, that is i ≥ 8N/9, by region i % 4.
    let mut want: Vec<(String, i64)> = REGIONS
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let n = (0..N).filter(|i| 1 + i * 9 / N == 9 && i % 4 == k).count();
            (r.to_string(), n as i64)
        })
        .collect();
    want.sort();
    assert_eq!(september, want);
    assert!(whole > 0 && pruned > 0, "{whole} {pruned}");
    // The month is a ninth of the rows; its pages, the footer and the page index are read.
    assert!(
        pruned * 3 < whole,
        "the filter should prune most of the file: read {pruned} of {whole} bytes"
    );
}

#[tokio::test]
async fn a_damaged_file_fails_as_unavailable_and_quotes_no_value() {
    let mut f = Fixture::new();
    let rows = csv(
        BRAND_HEADER,
        (0..5000).map(|i| format!("c{i},secret{i}@x.example,north,25-34,1,2.5,2025-01-01")),
    );
    f.add("brand", "brand", BRAND_SCHEMA, brand_policy(), &rows);
    let cat = f.exact();
    let a = prepare(
        "SELECT region, COUNT(*) AS n FROM brand GROUP BY region",
        &cat,
        REQ,
    )
    .await
    .unwrap();
    // Flip bytes in the middle of the file: inside a column chunk's ciphertext.
    let path = LocalFiles::open(f.dir.path())
        .unwrap()
        .path(f.collab, f.tables[0].dataset_id);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 3;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();

    let err = run(&a, &cat, 2).await.unwrap_err();
    let QueryError::Unavailable(msg) = &err else {
        panic!("a damaged file is the storage's fault: {err:?}");
    };
    assert!(!msg.contains("secret") && !msg.contains("c1"), "{msg}");
}

/// A scan whose partitioning was fixed elsewhere (a cluster's scheduler) reads one byte range
/// of the file per plan: every row is read by exactly one of them, whatever their number, each
/// range run as a plan of its own (as each task of a cluster builds its own).
#[tokio::test]
async fn a_scan_in_byte_ranges_reads_every_row_once() {
    use cleanroom_query::provider::{ScanShape, scan_exec};
    use datafusion::physical_plan::ExecutionPlanProperties;
    use datafusion::prelude::SessionContext;
    let mut f = Fixture::new();
    let rows = (0..3000).map(|i| format!("u{i},e{i},r{},{i}", i % 4));
    f.add(
        "t",
        "brand",
        &[
            "uid:string:privacy_unit",
            "email:string:identifier",
            "region:string:dimension",
            "n:int64:metric",
        ],
        PolicyDraft::default(),
        &csv("uid,email,region,n", rows),
    );
    let t = &f.tables[0];
    let ctx = SessionContext::new();
    for ranges in [1u64, 2, 3, 6, 17] {
        let mut total = 0;
        let mut sum = 0i64;
        let len = t.data.as_ref().unwrap().file().0.len();
        for i in 0..ranges {
            let exec = scan_exec(
                t.arrow_schema(),
                t.data.as_ref().unwrap(),
                ScanShape {
                    projection: Some(vec![3]),
                    groups: Some(vec![vec![len * i / ranges..len * (i + 1) / ranges]]),
                    ..ScanShape::default()
                },
            )
            .unwrap();
            assert_eq!(exec.output_partitioning().partition_count(), 1);
            let stream = exec.execute(0, ctx.task_ctx()).unwrap();
            for b in datafusion::physical_plan::common::collect(stream)
                .await
                .unwrap()
            {
                total += b.num_rows();
                let a = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap();
                sum += a.iter().flatten().sum::<i64>();
            }
        }
        assert_eq!((total, sum), (3000, 3000 * 2999 / 2), "{ranges} ranges");
    }
}
