//! Where encrypted dataset files live: a narrow, blocking interface with two backends, the
//! local data directory ([`LocalFiles`], here) and S3-compatible object storage (the
//! `cleanroom-objstore` crate). Backends only ever see the bytes [`crate::DatasetStore`] hands
//! them, which are Parquet-encrypted already: no backend sees a plaintext row or a key.
//!
//! Contract (checked by the conformance suite, [`conformance`], on every backend):
//! - a write is invisible (not listed, not readable) until [`FileWrite::commit`], which makes
//!   all of it visible at once; dropping an uncommitted write leaves nothing visible;
//! - committing a second file for the same dataset replaces the first;
//! - `remove` of a missing file is `Ok(false)`; `remove_collaboration` touches only that
//!   collaboration's files.
//!
//! Calls block: from async code, call them through `tokio::task::spawn_blocking`.

use std::fmt::Debug;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use cleanroom_core::ids::{CollaborationId, DatasetId};

use crate::StorageError;

#[doc(hidden)]
pub mod conformance;

/// A backend for dataset files.
pub trait DatasetFiles: Send + Sync + Debug {
    /// Starts the file of `dataset`. Nothing is visible at its location until
    /// [`FileWrite::commit`].
    fn begin_write(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
    ) -> Result<Box<dyn FileWrite>, StorageError>;

    /// Opens a committed file for ranged reading.
    fn open_read(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
    ) -> Result<Arc<dyn FileRead>, StorageError>;

    /// Every committed file.
    fn list(&self) -> Result<Vec<StoredFile>, StorageError>;

    /// Removes a committed file; `Ok(false)` when there was none.
    fn remove(&self, collab: CollaborationId, dataset: DatasetId) -> Result<bool, StorageError>;

    /// Removes every file of `collab`; returns how many there were.
    fn remove_collaboration(&self, collab: CollaborationId) -> Result<usize, StorageError>;

    /// Removes what unfinished writes left behind (a crash), where the backend can see it;
    /// returns how many.
    fn remove_unfinished(&self) -> Result<usize, StorageError>;

    /// Writes and removes a small probe object: for readiness checks.
    fn probe(&self) -> Result<(), StorageError>;

    /// Where the files are, for messages (`/var/lib/cleanroom`, `s3://bucket/prefix`); never
    /// holds a credential.
    fn describe(&self) -> String;

    /// A local directory for sealed spool files ([`crate::spool::SealedSpool`]): the system's
    /// temporary directory unless the backend has a better place on the same disk.
    fn spool_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }

    /// What a room records at its first start to recognise this store at the next ones:
    /// `local` for the data directory (which may move), the URL for a bucket.
    fn identity(&self) -> String;
}

/// A file being written. Dropping it without [`FileWrite::commit`] aborts it.
pub trait FileWrite: Write + Send {
    /// Makes the whole file durable and visible at its dataset's location in one step;
    /// returns its size in bytes.
    fn commit(self: Box<Self>) -> Result<u64, StorageError>;
}

/// A committed file, read by byte ranges.
pub trait FileRead: Send + Sync {
    /// Its size in bytes.
    fn len(&self) -> u64;

    /// True for an empty file.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` bytes from `start` (fewer only at the end of the file).
    fn read_range(&self, start: u64, len: usize) -> Result<Bytes, StorageError>;
}

/// A committed file as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub collab: CollaborationId,
    pub dataset: DatasetId,
    pub bytes: u64,
    pub modified: SystemTime,
}

/// The object name of a dataset's file under a backend's root: `datasets/<c>/<d>.parquet`.
/// Ids are UUIDs, so the name cannot escape the root.
pub fn dataset_key(collab: CollaborationId, dataset: DatasetId) -> String {
    format!("datasets/{collab}/{dataset}.parquet")
}

/// The collaboration and dataset of an object name made by [`dataset_key`] (relative to the
/// backend's root); `None` for any other name.
pub fn parse_dataset_key(key: &str) -> Option<(CollaborationId, DatasetId)> {
    let rest = key.strip_prefix("datasets/")?;
    let (c, f) = rest.split_once('/')?;
    let d = f.strip_suffix(".parquet")?;
    Some((CollaborationId::parse(c).ok()?, DatasetId::parse(d).ok()?))
}

/// Reading a [`FileRead`] as Parquet does: the adapter behind every dataset reader, so the
/// same decrypting reader works on any backend without copying the file anywhere first.
#[derive(Clone)]
pub struct ChunkSource(pub Arc<dyn FileRead>);

impl parquet::file::reader::Length for ChunkSource {
    fn len(&self) -> u64 {
        self.0.len()
    }
}

impl parquet::file::reader::ChunkReader for ChunkSource {
    type T = RangeReader;

    fn get_read(&self, start: u64) -> parquet::errors::Result<RangeReader> {
        Ok(RangeReader {
            src: self.0.clone(),
            pos: start,
            buf: Bytes::new(),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let b = self
            .0
            .read_range(start, length)
            .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
        if b.len() != length {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "expected {length} bytes at {start}, the file has {}",
                b.len()
            )));
        }
        Ok(b)
    }
}

/// Bytes read ahead per request when Parquet reads a file sequentially.
const READ_AHEAD: usize = 1 << 20;

/// A sequential reader over a [`FileRead`] from some offset, fetching a range at a time.
pub struct RangeReader {
    src: Arc<dyn FileRead>,
    pos: u64,
    buf: Bytes,
}

impl Read for RangeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() {
            let left = self.src.len().saturating_sub(self.pos);
            if left == 0 || out.is_empty() {
                return Ok(0);
            }
            let want = READ_AHEAD.max(out.len()).min(left as usize);
            self.buf = self
                .src
                .read_range(self.pos, want)
                .map_err(std::io::Error::other)?;
            if self.buf.is_empty() {
                return Ok(0);
            }
            self.pos += self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}

/// Dataset files in a local directory:
/// ```text
/// tmp/<random>.parquet.tmp                      writes in progress
/// datasets/<collaboration>/<dataset>.parquet    committed files
/// ```
/// A commit fsyncs the file, renames it into place and fsyncs the directory.
#[derive(Debug, Clone)]
pub struct LocalFiles {
    root: PathBuf,
}

impl LocalFiles {
    /// Opens (creating if needed) the dataset area under `root`.
    pub fn open(root: &Path) -> Result<Self, StorageError> {
        let files = LocalFiles {
            root: root.to_path_buf(),
        };
        for d in [files.tmp_dir(), files.datasets_dir()] {
            std::fs::create_dir_all(&d)
                .map_err(StorageError::io(format!("creating {}", d.display())))?;
        }
        Ok(files)
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

    /// Where a committed dataset lives.
    pub fn path(&self, collab: CollaborationId, dataset: DatasetId) -> PathBuf {
        self.root.join(dataset_key(collab, dataset))
    }
}

impl DatasetFiles for LocalFiles {
    fn spool_dir(&self) -> PathBuf {
        self.tmp_dir()
    }

    fn begin_write(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
    ) -> Result<Box<dyn FileWrite>, StorageError> {
        let tmp = self
            .tmp_dir()
            .join(format!("{}.parquet.tmp", uuid::Uuid::new_v4()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(StorageError::io("creating upload file"))?;
        Ok(Box::new(LocalWrite {
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            tmp: Some(tmp),
            dest: self.path(collab, dataset),
        }))
    }

    fn open_read(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
    ) -> Result<Arc<dyn FileRead>, StorageError> {
        let file =
            File::open(self.path(collab, dataset)).map_err(StorageError::io("opening dataset"))?;
        let len = file
            .metadata()
            .map_err(StorageError::io("reading dataset size"))?
            .len();
        Ok(Arc::new(LocalRead { file, len }))
    }

    fn list(&self) -> Result<Vec<StoredFile>, StorageError> {
        let mut out = Vec::new();
        let dir = self.datasets_dir();
        for c in std::fs::read_dir(&dir).map_err(StorageError::io("listing datasets"))? {
            let c = c.map_err(StorageError::io("listing datasets"))?;
            let Some(cname) = c.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !c.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(c.path()).map_err(StorageError::io("listing datasets"))? {
                let f = f.map_err(StorageError::io("listing datasets"))?;
                let Some(fname) = f.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Some((collab, dataset)) =
                    parse_dataset_key(&format!("datasets/{cname}/{fname}"))
                else {
                    continue;
                };
                let meta = f.metadata().map_err(StorageError::io("listing datasets"))?;
                out.push(StoredFile {
                    collab,
                    dataset,
                    bytes: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(out)
    }

    fn remove(&self, collab: CollaborationId, dataset: DatasetId) -> Result<bool, StorageError> {
        match std::fs::remove_file(self.path(collab, dataset)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io("removing a dataset file")(e)),
        }
    }

    fn remove_collaboration(&self, collab: CollaborationId) -> Result<usize, StorageError> {
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

    fn remove_unfinished(&self) -> Result<usize, StorageError> {
        let mut n = 0;
        for entry in std::fs::read_dir(self.tmp_dir()).map_err(StorageError::io("listing tmp"))? {
            let entry = entry.map_err(StorageError::io("listing tmp"))?;
            std::fs::remove_file(entry.path()).map_err(StorageError::io("removing tmp file"))?;
            n += 1;
        }
        Ok(n)
    }

    fn probe(&self) -> Result<(), StorageError> {
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

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn identity(&self) -> String {
        "local".into()
    }
}

/// A local write in `tmp/`, renamed into place at commit; removed if dropped before.
struct LocalWrite {
    file: Option<std::io::BufWriter<File>>,
    tmp: Option<PathBuf>,
    dest: PathBuf,
}

impl Write for LocalWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("write after commit"))?
            .write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl FileWrite for LocalWrite {
    fn commit(mut self: Box<Self>) -> Result<u64, StorageError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| StorageError::Internal("commit without a file".into()))?
            .into_inner()
            .map_err(|e| StorageError::io("writing upload file")(e.into_error()))?;
        file.sync_all()
            .map_err(StorageError::io("syncing upload file"))?;
        let bytes = file
            .metadata()
            .map_err(StorageError::io("reading upload file size"))?
            .len();
        drop(file);
        let tmp = self
            .tmp
            .clone()
            .ok_or_else(|| StorageError::Internal("commit without a file".into()))?;
        crate::atomic::rename_durably(&tmp, &self.dest)?;
        // Renamed: nothing left for Drop to remove.
        self.tmp = None;
        Ok(bytes)
    }
}

impl Drop for LocalWrite {
    fn drop(&mut self) {
        drop(self.file.take());
        if let Some(p) = self.tmp.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A committed local file, read with positioned reads (no shared cursor).
struct LocalRead {
    file: File,
    len: u64,
}

impl FileRead for LocalRead {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_range(&self, start: u64, len: usize) -> Result<Bytes, StorageError> {
        let len = len.min(self.len.saturating_sub(start) as usize);
        let mut buf = vec![0u8; len];
        read_exact_at(&self.file, &mut buf, start).map_err(StorageError::io("reading dataset"))?;
        Ok(Bytes::from(buf))
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    // No positioned read: a clone shares the cursor, so serialise seek + read on it.
    use std::io::{Seek, SeekFrom};
    static CURSOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = CURSOR.lock().unwrap_or_else(|p| p.into_inner());
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}
