//! Encrypted Parquet datasets, on any [`DatasetFiles`] backend.
//!
//! Files use Parquet modular encryption (AES-GCM) with the dataset key as footer key and every
//! column encrypted, and the dataset id as AAD prefix so a file renamed to another dataset does
//! not open. Plaintext rows exist only in memory, one record batch (or one row group) at a time,
//! so neither a finished file nor one left behind by a crash holds plaintext, and a backend
//! (the local directory, an S3 bucket) only ever receives ciphertext.

use std::path::Path;
use std::sync::Arc;

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
use crate::files::{ChunkSource, DatasetFiles, FileWrite, LocalFiles};
use crate::ingest::{BatchSink, arrow_schema};
use crate::keys::SecretKey;

/// Rows per Parquet row group: bounds the writer's memory (it buffers one row group).
pub const ROW_GROUP_ROWS: usize = 256 * 1024;
/// Flush a row group early once this many bytes are buffered (wide rows).
const FLUSH_BYTES: usize = 64 * 1024 * 1024;

/// The room's dataset files: encryption over a [`DatasetFiles`] backend.
#[derive(Debug, Clone)]
pub struct DatasetStore {
    files: Arc<dyn DatasetFiles>,
}

/// What a committed dataset file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDataset {
    pub rows: u64,
    pub bytes: u64,
}

impl DatasetStore {
    /// The dataset area of a local data directory (created if needed).
    pub fn open(data_dir: &Path) -> Result<Self, StorageError> {
        Ok(Self::new(Arc::new(LocalFiles::open(data_dir)?)))
    }

    /// Dataset files on any backend.
    pub fn new(files: Arc<dyn DatasetFiles>) -> Self {
        DatasetStore { files }
    }

    /// The backend.
    pub fn files(&self) -> &Arc<dyn DatasetFiles> {
        &self.files
    }

    /// Where sealed spool files of uploads go (see [`crate::spool`]).
    pub fn spool_dir(&self) -> std::path::PathBuf {
        self.files.spool_dir()
    }

    /// Whether files can be written where uploads are written. For readiness checks.
    pub fn probe(&self) -> Result<(), StorageError> {
        self.files.probe()
    }

    /// Starts writing the encrypted file of `dataset`; nothing is visible until
    /// [`DatasetStore::commit`].
    pub fn begin_write(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
        schema: &DatasetSchema,
        key: &SecretKey,
    ) -> Result<EncryptedWriter, StorageError> {
        let out = self.files.begin_write(collab, dataset)?;
        let enc = FileEncryptionProperties::builder(key.expose().to_vec())
            .with_aad_prefix(aad(dataset))
            .build()?;
        let props = WriterProperties::builder()
            .with_file_encryption_properties(enc)
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(out, arrow_schema(schema), Some(props))?;
        Ok(EncryptedWriter {
            writer: Some(writer),
            rows: 0,
        })
    }

    /// Finishes `writer` and makes its file visible durably, in one step. Until this returns,
    /// no file exists at the dataset's location.
    pub fn commit(&self, mut writer: EncryptedWriter) -> Result<StoredDataset, StorageError> {
        let w = writer
            .writer
            .take()
            .ok_or_else(|| StorageError::Internal("commit of a finished writer".into()))?;
        // Writes the footer and hands back the backend's write, still uncommitted.
        let out = w.into_inner()?;
        let bytes = out.commit()?;
        Ok(StoredDataset {
            rows: writer.rows,
            bytes,
        })
    }

    /// Opens a committed dataset for reading, decrypting with `key`.
    pub fn open_reader(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
        key: &SecretKey,
    ) -> Result<ParquetRecordBatchReader, StorageError> {
        let source = ChunkSource(self.files.open_read(collab, dataset)?);
        let dec = FileDecryptionProperties::builder(key.expose().to_vec())
            .with_aad_prefix(aad(dataset))
            .build()?;
        let opts = ArrowReaderOptions::new().with_file_decryption_properties(dec);
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(source, opts)
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
        let handle = EncryptedDataset {
            source: ChunkSource(self.files.open_read(collab, dataset)?),
            collab,
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

    /// Removes one dataset's file; `Ok(false)` when there was none.
    pub fn remove(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
    ) -> Result<bool, StorageError> {
        self.files.remove(collab, dataset)
    }

    /// Deletes every unfinished upload (called at start-up: a crash may leave some behind).
    pub fn remove_tmp_files(&self) -> Result<usize, StorageError> {
        self.files.remove_unfinished()
    }

    /// Deletes a collaboration's files. Called after its keys are destroyed: the files are
    /// already unreadable, this only frees the space.
    pub fn remove_collaboration_files(
        &self,
        collab: CollaborationId,
    ) -> Result<usize, StorageError> {
        self.files.remove_collaboration(collab)
    }
}

/// A committed dataset opened for reading by the query engine. Holds the dataset key (zeroised
/// when dropped); plaintext exists only in the record batches it returns.
#[derive(Clone)]
pub struct EncryptedDataset {
    source: ChunkSource,
    collab: CollaborationId,
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
    fn builder(&self) -> Result<ParquetRecordBatchReaderBuilder<ChunkSource>, StorageError> {
        let opts = ArrowReaderOptions::new().with_file_decryption_properties(self.decryption()?);
        ParquetRecordBatchReaderBuilder::try_new_with_options(self.source.clone(), opts)
            .map_err(|_| StorageError::Decrypt)
    }

    pub fn row_groups(&self) -> usize {
        self.row_groups
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The dataset this file holds.
    pub fn dataset(&self) -> DatasetId {
        self.dataset
    }

    /// The collaboration the dataset belongs to.
    pub fn collaboration(&self) -> CollaborationId {
        self.collab
    }

    /// The dataset key, encrypted under `wrapping` and bound to `purpose` (see
    /// [`SecretKey::wrap`]): how the key travels to another process of the operator's (an
    /// analysis executor) without ever being in the clear outside memory.
    pub fn wrapped_key(
        &self,
        wrapping: &SecretKey,
        purpose: &str,
    ) -> Result<Vec<u8>, StorageError> {
        wrapping.wrap(&self.key, purpose)
    }

    /// The encrypted file, read by byte ranges from its backend (for a Parquet reader other
    /// than [`EncryptedDataset::read`], such as DataFusion's scan). Only ciphertext.
    pub fn file(&self) -> ChunkSource {
        self.source.clone()
    }

    /// What decrypts the file: the dataset key, and the AAD prefix that binds the file to
    /// this dataset (a file moved under another dataset's name fails to decrypt). Hand it
    /// only to a reader that keeps it in memory.
    pub fn decryption(&self) -> Result<Arc<FileDecryptionProperties>, StorageError> {
        decryption_properties(self.dataset, &self.key)
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

/// What decrypts the file of `dataset` under `key` (see [`EncryptedDataset::decryption`]), for
/// a reader that opens the file itself.
pub fn decryption_properties(
    dataset: DatasetId,
    key: &SecretKey,
) -> Result<Arc<FileDecryptionProperties>, StorageError> {
    Ok(FileDecryptionProperties::builder(key.expose().to_vec())
        .with_aad_prefix(aad(dataset))
        .build()?)
}

fn aad(dataset: DatasetId) -> Vec<u8> {
    format!("cleanroom-dataset:{dataset}").into_bytes()
}

/// An upload being written. Dropping it without [`DatasetStore::commit`] aborts the backend's
/// write, so nothing becomes visible.
pub struct EncryptedWriter {
    writer: Option<ArrowWriter<Box<dyn FileWrite>>>,
    rows: u64,
}

impl BatchSink for EncryptedWriter {
    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), StorageError> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| StorageError::Internal("write after commit".into()))?;
        w.write(batch)?;
        self.rows += batch.num_rows() as u64;
        if w.in_progress_size() > FLUSH_BYTES {
            w.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::ingest_csv;
    use cleanroom_core::schema::ColumnSpec;
    use std::collections::HashSet;

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

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
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

    fn path_of(root: &Path, c: CollaborationId, d: DatasetId) -> std::path::PathBuf {
        root.join(crate::files::dataset_key(c, d))
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
        let mut w = store.begin_write(c, d, &schema(), &key).unwrap();
        let rows = ingest_csv(csv(1000).as_bytes(), &schema(), &mut w, &mut |_| {}).unwrap();
        let stored = store.commit(w).unwrap();
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
        std::fs::rename(path_of(dir.path(), c, d), path_of(dir.path(), c, other)).unwrap();
        assert!(store.open_reader(c, other, &key).is_err());
    }

    #[test]
    fn failed_and_dropped_uploads_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(dir.path()).unwrap();
        let key = SecretKey::generate().unwrap();
        let d = DatasetId::new();
        let mut w = store
            .begin_write(CollaborationId::new(), d, &schema(), &key)
            .unwrap();
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
            let mut w = store.begin_write(c, d, &schema(), &key).unwrap();
            ingest_csv(csv(5).as_bytes(), &schema(), &mut w, &mut |_| {}).unwrap();
            store.commit(w).unwrap();
        }
        std::fs::write(dir.path().join("tmp/x.parquet.tmp"), b"junk").unwrap();
        assert_eq!(store.remove_tmp_files().unwrap(), 1);
        // What start-up does: list the files, remove those the metadata does not keep.
        let committed = HashSet::from([(c, keep)]);
        let mut removed = 0;
        for f in store.files().list().unwrap() {
            if !committed.contains(&(f.collab, f.dataset))
                && store.remove(f.collab, f.dataset).unwrap()
            {
                removed += 1;
            }
        }
        assert_eq!(removed, 1);
        assert!(path_of(dir.path(), c, keep).exists());
        assert!(!path_of(dir.path(), c, orphan).exists());
        assert_eq!(store.remove_collaboration_files(c).unwrap(), 1);
        assert!(!path_of(dir.path(), c, keep).exists());
    }
}
