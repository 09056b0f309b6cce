//! Encrypted Parquet datasets on disk.
//!
//! Layout under the data directory:
//! ```text
//! tmp/<random>.parquet.tmp               uploads in progress (ciphertext only)
//! datasets/<collaboration>/<dataset>.parquet   committed datasets (ciphertext only)
//! ```
//! Files use Parquet modular encryption (AES-GCM) with the dataset key as footer key and every
//! column encrypted, and the dataset id as AAD prefix so a file renamed to another dataset does
//! not open. Plaintext rows exist only in memory, one record batch (or one row group) at a time,
//! so neither a finished file nor one left behind by a crash holds plaintext.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_core::schema::DatasetSchema;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use parquet::basic::Compression;
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::properties::WriterProperties;

use crate::StorageError;
use crate::ingest::{BatchSink, arrow_schema};
use crate::keys::SecretKey;

/// Rows per Parquet row group: bounds the writer's memory (it buffers one row group).
pub const ROW_GROUP_ROWS: usize = 256 * 1024;
/// Flush a row group early once this many bytes are buffered (wide rows).
const FLUSH_BYTES: usize = 64 * 1024 * 1024;

/// The data directory's dataset files.
#[derive(Debug, Clone)]
pub struct DatasetStore {
    root: PathBuf,
}

/// What a committed dataset file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDataset {
    pub rows: u64,
    pub bytes: u64,
}

impl DatasetStore {
    /// Opens (creating if needed) the dataset area of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StorageError> {
        let store = DatasetStore {
            root: data_dir.to_path_buf(),
        };
        for d in [store.tmp_dir(), store.datasets_dir()] {
            std::fs::create_dir_all(&d)
                .map_err(StorageError::io(format!("creating {}", d.display())))?;
        }
        Ok(store)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn datasets_dir(&self) -> PathBuf {
        self.root.join("datasets")
    }

    fn collaboration_dir(&self, collab: CollaborationId) -> PathBuf {
        self.datasets_dir().join(collab.to_string())
    }

    /// Where a committed dataset lives. Ids are UUIDs, so the path cannot escape the store.
    pub fn dataset_path(&self, collab: CollaborationId, dataset: DatasetId) -> PathBuf {
        self.collaboration_dir(collab)
            .join(format!("{dataset}.parquet"))
    }

    /// Whether files can be written where uploads are written: creates, syncs and removes a
    /// small file in `tmp/`. For readiness checks.
    pub fn probe(&self) -> Result<(), StorageError> {
        use std::io::Write;
        let path = self
            .tmp_dir()
            .join(format!(".probe-{}", uuid::Uuid::new_v4()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(b"probe")?;
                f.sync_all()
            });
        let removed = std::fs::remove_file(&path);
        written.map_err(StorageError::io(
            "writing a probe file in the data directory",
        ))?;
        removed.map_err(StorageError::io(
            "removing a probe file from the data directory",
        ))
    }

    /// Starts writing an encrypted file for `dataset` into `tmp/`.
    pub fn begin_write(
        &self,
        dataset: DatasetId,
        schema: &DatasetSchema,
        key: &SecretKey,
    ) -> Result<EncryptedWriter, StorageError> {
        let tmp = self
            .tmp_dir()
            .join(format!("{}.parquet.tmp", uuid::Uuid::new_v4()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(StorageError::io("creating upload file"))?;
        let enc = FileEncryptionProperties::builder(key.expose().to_vec())
            .with_aad_prefix(aad(dataset))
            .build()?;
        let props = WriterProperties::builder()
            .with_file_encryption_properties(enc)
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(file, arrow_schema(schema), Some(props))?;
        Ok(EncryptedWriter {
            writer: Some(writer),
            tmp: Some(tmp),
        })
    }

    /// Finishes `writer` and moves its file into place durably. Until this returns, no file
    /// exists at the dataset's path.
    pub fn commit(
        &self,
        mut writer: EncryptedWriter,
        collab: CollaborationId,
        dataset: DatasetId,
    ) -> Result<StoredDataset, StorageError> {
        let w = writer.writer.take().expect("writer present until commit");
        let meta = w.close()?;
        let rows = meta.file_metadata().num_rows() as u64;
        let tmp = writer.tmp.take().expect("tmp present until commit");
        let guard = TmpGuard(Some(tmp.clone()));
        let f = File::open(&tmp).map_err(StorageError::io("reopening upload file"))?;
        f.sync_all()
            .map_err(StorageError::io("syncing upload file"))?;
        let bytes = f
            .metadata()
            .map_err(StorageError::io("reading upload file size"))?
            .len();
        let dest = self.dataset_path(collab, dataset);
        crate::atomic::rename_durably(&tmp, &dest)?;
        std::mem::forget(guard);
        Ok(StoredDataset { rows, bytes })
    }

    /// Opens a committed dataset for reading, decrypting with `key`.
    pub fn open_reader(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
        key: &SecretKey,
    ) -> Result<ParquetRecordBatchReader, StorageError> {
        let path = self.dataset_path(collab, dataset);
        let file = File::open(&path).map_err(StorageError::io("opening dataset"))?;
        let dec = FileDecryptionProperties::builder(key.expose().to_vec())
            .with_aad_prefix(aad(dataset))
            .build()?;
        let opts = ArrowReaderOptions::new().with_file_decryption_properties(dec);
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, opts)
            .map_err(|_| StorageError::Decrypt)?
            .build()?;
        Ok(reader)
    }

    /// Opens a committed dataset for analysis: checks the key against the file's footer and
    /// returns a handle that reads chosen row groups and columns, decrypting in memory.
    pub fn open_dataset(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
        key: SecretKey,
    ) -> Result<EncryptedDataset, StorageError> {
        let path = self.dataset_path(collab, dataset);
        let handle = EncryptedDataset {
            path,
            dataset,
            key,
            row_groups: 0,
            rows: 0,
        };
        let builder = handle.builder()?;
        let meta = builder.metadata().clone();
        Ok(EncryptedDataset {
            row_groups: meta.num_row_groups(),
            rows: meta.file_metadata().num_rows().max(0) as u64,
            ..handle
        })
    }

    /// Deletes every unfinished upload (called at start-up: a crash may leave some behind).
    pub fn remove_tmp_files(&self) -> Result<usize, StorageError> {
        let mut n = 0;
        for entry in std::fs::read_dir(self.tmp_dir()).map_err(StorageError::io("listing tmp"))? {
            let entry = entry.map_err(StorageError::io("listing tmp"))?;
            std::fs::remove_file(entry.path()).map_err(StorageError::io("removing tmp file"))?;
            n += 1;
        }
        Ok(n)
    }

    /// Deletes dataset files that the metadata store does not list as committed (a crash
    /// between the rename and the metadata commit leaves such a file).
    pub fn remove_orphans(
        &self,
        committed: &HashSet<(CollaborationId, DatasetId)>,
    ) -> Result<usize, StorageError> {
        let mut n = 0;
        let dir = self.datasets_dir();
        for c in std::fs::read_dir(&dir).map_err(StorageError::io("listing datasets"))? {
            let c = c.map_err(StorageError::io("listing datasets"))?;
            let Some(collab) = c
                .file_name()
                .to_str()
                .and_then(|s| CollaborationId::parse(s).ok())
            else {
                continue;
            };
            for f in std::fs::read_dir(c.path()).map_err(StorageError::io("listing datasets"))? {
                let f = f.map_err(StorageError::io("listing datasets"))?;
                let keep = f
                    .file_name()
                    .to_str()
                    .and_then(|s| s.strip_suffix(".parquet"))
                    .and_then(|s| DatasetId::parse(s).ok())
                    .is_some_and(|d| committed.contains(&(collab, d)));
                if !keep {
                    std::fs::remove_file(f.path())
                        .map_err(StorageError::io("removing orphan dataset"))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Deletes a collaboration's files. Called after its keys are destroyed: the files are
    /// already unreadable, this only frees the space.
    pub fn remove_collaboration_files(
        &self,
        collab: CollaborationId,
    ) -> Result<usize, StorageError> {
        let dir = self.collaboration_dir(collab);
        if !dir.exists() {
            return Ok(0);
        }
        let n = std::fs::read_dir(&dir)
            .map_err(StorageError::io("listing collaboration files"))?
            .count();
        std::fs::remove_dir_all(&dir).map_err(StorageError::io("removing collaboration files"))?;
        crate::atomic::sync_dir(&self.datasets_dir())?;
        Ok(n)
    }
}

/// A committed dataset opened for reading by the query engine. Holds the dataset key (zeroised
/// when dropped); plaintext exists only in the record batches it returns.
#[derive(Clone)]
pub struct EncryptedDataset {
    path: PathBuf,
    dataset: DatasetId,
    key: SecretKey,
    row_groups: usize,
    rows: u64,
}

impl std::fmt::Debug for EncryptedDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedDataset")
            .field("dataset", &self.dataset)
            .field("row_groups", &self.row_groups)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl EncryptedDataset {
    fn builder(&self) -> Result<ParquetRecordBatchReaderBuilder<File>, StorageError> {
        let file = File::open(&self.path).map_err(StorageError::io("opening dataset"))?;
        let dec = FileDecryptionProperties::builder(self.key.expose().to_vec())
            .with_aad_prefix(aad(self.dataset))
            .build()?;
        let opts = ArrowReaderOptions::new().with_file_decryption_properties(dec);
        ParquetRecordBatchReaderBuilder::try_new_with_options(file, opts)
            .map_err(|_| StorageError::Decrypt)
    }

    pub fn row_groups(&self) -> usize {
        self.row_groups
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Reads the given row groups, only the given columns (by index in the schema), in batches
    /// of at most `batch_rows` rows.
    pub fn read(
        &self,
        row_groups: Vec<usize>,
        columns: &[usize],
        batch_rows: usize,
    ) -> Result<ParquetRecordBatchReader, StorageError> {
        let builder = self.builder()?;
        let mask = parquet::arrow::ProjectionMask::roots(
            builder.parquet_schema(),
            columns.iter().copied(),
        );
        Ok(builder
            .with_row_groups(row_groups)
            .with_projection(mask)
            .with_batch_size(batch_rows.max(1))
            .build()?)
    }
}

fn aad(dataset: DatasetId) -> Vec<u8> {
    format!("cleanroom-dataset:{dataset}").into_bytes()
}

/// An upload being written. Dropping it without [`DatasetStore::commit`] deletes its file.
pub struct EncryptedWriter {
    writer: Option<ArrowWriter<File>>,
    tmp: Option<PathBuf>,
}

impl BatchSink for EncryptedWriter {
    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), StorageError> {
        let w = self.writer.as_mut().expect("writer present until commit");
        w.write(batch)?;
        if w.in_progress_size() > FLUSH_BYTES {
            w.flush()?;
        }
        Ok(())
    }
}

impl Drop for EncryptedWriter {
    fn drop(&mut self) {
        drop(self.writer.take());
        drop(TmpGuard(self.tmp.take()));
    }
}

struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::ingest_csv;
    use cleanroom_core::schema::ColumnSpec;

    fn schema() -> DatasetSchema {
        DatasetSchema::new(vec![
            ColumnSpec::parse_compact("pid:string:privacy_unit").unwrap(),
            ColumnSpec::parse_compact("city:string:dimension").unwrap(),
            ColumnSpec::parse_compact("n:int64:metric").unwrap(),
        ])
        .unwrap()
    }

    fn csv(rows: usize) -> String {
        let mut s = "pid,city,n\n".to_string();
        for i in 0..rows {
            s.push_str(&format!("person-secret-{i:06},Gotham,{i}\n"));
        }
        s
    }

    fn all_bytes_under(dir: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        for e in walk(dir) {
            out.extend(std::fs::read(e).unwrap());
        }
        out
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                v.extend(walk(&p));
            } else {
                v.push(p);
            }
        }
        v
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn write_commit_read_round_trip_without_plaintext_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(dir.path()).unwrap();
        let key = SecretKey::generate().unwrap();
        let (c, d) = (CollaborationId::new(), DatasetId::new());
        let mut w = store.begin_write(d, &schema(), &key).unwrap();
        let rows = ingest_csv(csv(1000).as_bytes(), &schema(), &mut w, &mut |_| {}).unwrap();
        let stored = store.commit(w, c, d).unwrap();
        assert_eq!((rows, stored.rows), (1000, 1000));
        assert!(stored.bytes > 0);

        let disk = all_bytes_under(dir.path());
        assert!(
            !contains(&disk, b"person-secret"),
            "plaintext identifier on disk"
        );
        assert!(!contains(&disk, b"Gotham"), "plaintext attribute on disk");

        let batches: Vec<RecordBatch> = store
            .open_reader(c, d, &key)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(total, 1000);

        let wrong = SecretKey::generate().unwrap();
        assert!(store.open_reader(c, d, &wrong).is_err());
        assert!(store.open_dataset(c, d, wrong).is_err());
        let ds = store.open_dataset(c, d, key.clone()).unwrap();
        assert_eq!((ds.rows(), ds.row_groups()), (1000, 1));
        let cols: Vec<RecordBatch> = ds
            .read(vec![0], &[2], 300)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(cols.len(), 4);
        assert_eq!(cols[0].num_columns(), 1);
        assert_eq!(cols[0].schema().field(0).name(), "n");
        // A file moved under another dataset's name does not open with that dataset's AAD.
        let other = DatasetId::new();
        std::fs::rename(store.dataset_path(c, d), store.dataset_path(c, other)).unwrap();
        assert!(store.open_reader(c, other, &key).is_err());
    }

    #[test]
    fn failed_and_dropped_uploads_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(dir.path()).unwrap();
        let key = SecretKey::generate().unwrap();
        let d = DatasetId::new();
        let mut w = store.begin_write(d, &schema(), &key).unwrap();
        let bad = format!("{}person-x,Gotham,notanumber\n", csv(10));
        assert!(ingest_csv(bad.as_bytes(), &schema(), &mut w, &mut |_| {}).is_err());
        drop(w);
        assert!(walk(dir.path()).is_empty(), "{:?}", walk(dir.path()));
    }

    #[test]
    fn start_up_cleanup_removes_tmp_and_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(dir.path()).unwrap();
        let key = SecretKey::generate().unwrap();
        let c = CollaborationId::new();
        let (keep, orphan) = (DatasetId::new(), DatasetId::new());
        for d in [keep, orphan] {
            let mut w = store.begin_write(d, &schema(), &key).unwrap();
            ingest_csv(csv(5).as_bytes(), &schema(), &mut w, &mut |_| {}).unwrap();
            store.commit(w, c, d).unwrap();
        }
        std::fs::write(dir.path().join("tmp/x.parquet.tmp"), b"junk").unwrap();
        assert_eq!(store.remove_tmp_files().unwrap(), 1);
        let committed = HashSet::from([(c, keep)]);
        assert_eq!(store.remove_orphans(&committed).unwrap(), 1);
        assert!(store.dataset_path(c, keep).exists());
        assert!(!store.dataset_path(c, orphan).exists());
        assert_eq!(store.remove_collaboration_files(c).unwrap(), 1);
        assert!(!store.dataset_path(c, keep).exists());
    }
}
