//! Datasets written through the encrypting store onto S3: they read back whole, and no byte
//! the bucket holds carries a plaintext value or the key.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, StringArray};
use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_core::schema::{ColumnSpec, DatasetSchema};
use cleanroom_objstore::S3Files;
use cleanroom_storage::ingest::ingest_csv;
use cleanroom_storage::{DatasetFiles, DatasetStore, SecretKey};
use futures_util::TryStreamExt;
use object_store::ObjectStoreExt;

fn schema() -> DatasetSchema {
    DatasetSchema::new(vec![
        ColumnSpec::parse_compact("pid:string:privacy_unit").unwrap(),
        ColumnSpec::parse_compact("city:string:dimension").unwrap(),
        ColumnSpec::parse_compact("n:int64:metric").unwrap(),
    ])
    .unwrap()
}

/// Enough rows for several row groups and several multipart parts.
fn csv(rows: usize) -> String {
    let mut s = String::from("pid,city,n\n");
    for i in 0..rows {
        s.push_str(&format!("person-secret-{i:07},Gotham-{},{i}\n", i % 50));
    }
    s
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn round_trip(files: S3Files, rt: &tokio::runtime::Runtime) {
    let backend: Arc<dyn DatasetFiles> = Arc::new(files.clone());
    let store = DatasetStore::new(backend);
    let key = SecretKey::generate().unwrap();
    let (c, d) = (CollaborationId::new(), DatasetId::new());
    let rows = 600_000;
    let mut w = store.begin_write(c, d, &schema(), &key).unwrap();
    ingest_csv(csv(rows).as_bytes(), &schema(), &mut w, &mut |_| {}).unwrap();
    // Not visible before the commit.
    assert!(files.list().unwrap().is_empty());
    let stored = store.commit(w).unwrap();
    assert_eq!(stored.rows, rows as u64);

    // Every byte the bucket holds under the prefix: ciphertext only.
    let objects = files.object_store();
    let bytes: Vec<u8> = rt.block_on(async {
        let metas: Vec<_> = objects.list(None).try_collect().await.unwrap();
        assert_eq!(metas.len(), 1, "one object per dataset, nothing else");
        assert_eq!(metas[0].size, stored.bytes);
        let mut all = Vec::new();
        for m in metas {
            all.extend_from_slice(
                &objects
                    .get(&m.location)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap(),
            );
        }
        all
    });
    assert!(
        !contains(&bytes, b"person-secret"),
        "plaintext identifier in the bucket"
    );
    assert!(
        !contains(&bytes, b"Gotham"),
        "plaintext attribute in the bucket"
    );
    assert!(
        !contains(&bytes, key.expose()),
        "the dataset key in the bucket"
    );

    // Read back through the decrypting reader, by ranges, without a local copy.
    let ds = store.open_dataset(c, d, key.clone()).unwrap();
    assert_eq!(ds.rows(), rows as u64);
    assert!(ds.row_groups() > 1);
    let mut seen = 0usize;
    let mut sum = 0i64;
    for b in ds
        .read((0..ds.row_groups()).collect(), &[0, 2], 8192)
        .unwrap()
    {
        let b = b.unwrap();
        let pid = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(pid.value(0), format!("person-secret-{:07}", n.value(0)));
        sum += n.iter().flatten().sum::<i64>();
        seen += b.num_rows();
    }
    assert_eq!(seen, rows);
    assert_eq!(sum, (rows as i64 - 1) * rows as i64 / 2);
    assert!(
        store
            .open_reader(c, d, &SecretKey::generate().unwrap())
            .is_err(),
        "opened with another key"
    );

    // Closing the collaboration deletes its objects.
    assert_eq!(store.remove_collaboration_files(c).unwrap(), 1);
    assert!(files.list().unwrap().is_empty());
}

#[test]
fn encrypted_datasets_round_trip_on_an_in_memory_bucket() {
    let rt = super::runtime();
    round_trip(super::in_memory(&rt), &rt);
}

#[test]
fn encrypted_datasets_round_trip_on_a_real_s3_server_with_no_plaintext_in_the_bucket() {
    let rt = super::runtime();
    let Some(files) = super::real_s3("the encrypted round trip", &rt) else {
        return;
    };
    round_trip(files, &rt);
    // The server keeps objects as files: nothing under its root holds a plaintext value.
    if let Ok(root) = std::env::var("CLEANROOM_TEST_S3_ROOT") {
        let mut stack = vec![std::path::PathBuf::from(root)];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if let Ok(b) = std::fs::read(&p) {
                assert!(
                    !contains(&b, b"person-secret"),
                    "plaintext in {}",
                    p.display()
                );
            }
        }
    }
}
