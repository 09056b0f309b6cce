//! Encrypted spill files: what DataFusion's operators (sorts, aggregations, repartitions)
//! write to disk when an analysis does not fit in the memory limit.
//!
//! A spilled batch holds plaintext rows of the data owners (pseudonymous join keys, dimension
//! and metric values), so it never reaches disk in the clear. Each spill file gets its own
//! random AES-256-GCM key, made when the file is created and held only in this process's memory
//! (in the [`EncryptedSpillFile`] that DataFusion holds while it needs the file; zeroed when it
//! drops it). The file is a sequence of sealed chunks, `u32` little-endian length then
//! ciphertext with its tag; chunk `i` is sealed under nonce `i`, and a reader reads exactly the
//! chunks the writer sealed (their count lives in memory too), so a chunk that is changed,
//! swapped, replayed from another file or cut off fails to open instead of feeding the query.
//! A crash leaves files no key can open; the next start removes those of dead processes.
//!
//! The spill directory is private to the process (`cleanroom-spill-<pid>-…`, mode 0700) and
//! removed when it ends. A quota (`--max-spill`) bounds the bytes all live spill files hold.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};
use bytes::Bytes;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SpillFile, SpillWriter, TempFileFactory};
use futures_util::Stream;
use rand::TryRng;
use rand::rngs::SysRng;
use zeroize::Zeroizing;

/// Plaintext bytes sealed per chunk (the last chunk of a flush may be shorter).
const CHUNK: usize = 256 * 1024;
const TAG: usize = 16;
const HEADER: usize = 4;

/// Bytes spilled (ciphertext written) by every analysis of this process since it started.
static SPILLED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Spill files created by every analysis of this process since it started.
static SPILL_FILES: AtomicU64 = AtomicU64::new(0);

/// Bytes every analysis of this process has spilled (encrypted) since it started.
pub fn spilled_bytes() -> u64 {
    SPILLED_BYTES.load(Ordering::Relaxed)
}

/// Spill files every analysis of this process has created since it started.
pub fn spill_files() -> u64 {
    SPILL_FILES.load(Ordering::Relaxed)
}

/// Where spill files go and how many bytes they may hold together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpillConfig {
    /// The directory under which the process makes its private spill directory.
    pub dir: PathBuf,
    /// The most bytes all live spill files may hold at once; 0 turns spilling off.
    pub max_bytes: u64,
}

/// A spill quota ran out (or the disk filled): reported as the memory limit being too small.
pub(crate) fn is_spill_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
}

/// Makes encrypted spill files in a directory private to this process.
pub(crate) struct EncryptedSpill {
    dir: tempfile::TempDir,
    quota: Arc<Quota>,
}

struct Quota {
    used: AtomicU64,
    max: u64,
}

impl Quota {
    fn take(&self, n: u64) -> io::Result<()> {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.max {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "the analysis spill limit (--max-spill) is reached",
            ));
        }
        Ok(())
    }
}

impl EncryptedSpill {
    /// Creates this process's spill directory under `config.dir`, first removing those that
    /// processes no longer running left behind.
    pub(crate) fn new(config: &SpillConfig) -> io::Result<Self> {
        std::fs::create_dir_all(&config.dir)?;
        remove_abandoned(&config.dir);
        let dir = tempfile::Builder::new()
            .prefix(&format!("cleanroom-spill-{}-", std::process::id()))
            .tempdir_in(&config.dir)?;
        Ok(EncryptedSpill {
            dir,
            quota: Arc::new(Quota {
                used: AtomicU64::new(0),
                max: config.max_bytes,
            }),
        })
    }

    #[cfg(test)]
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl std::fmt::Debug for EncryptedSpill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedSpill")
            .field("dir", &self.dir.path())
            .field("max", &self.quota.max)
            .finish()
    }
}

/// Removes `cleanroom-spill-<pid>-…` directories under `dir` whose process is gone: their
/// files are ciphertext whose keys died with it. Best effort; only where `/proc` tells.
fn remove_abandoned(dir: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cleanroom-spill-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(pid, "removed the spill files of a process that ended"),
                Err(e) => {
                    tracing::warn!(pid, error = %e, "could not remove an abandoned spill directory")
                }
            }
        }
    }
}

impl TempFileFactory for EncryptedSpill {
    fn create_temp_file(&self, _description: &str) -> Result<Arc<dyn SpillFile>> {
        let file = tempfile::Builder::new()
            .prefix("spill-")
            .tempfile_in(self.dir.path())
            .map_err(DataFusionError::IoError)?;
        let mut key = Zeroizing::new([0u8; 32]);
        SysRng
            .try_fill_bytes(&mut key[..])
            .map_err(|e| DataFusionError::Execution(format!("OS random number generator: {e}")))?;
        let cipher = Aes256Gcm::new_from_slice(&key[..])
            .map_err(|_| DataFusionError::Internal("spill key length".into()))?;
        SPILL_FILES.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(EncryptedSpillFile {
            file,
            cipher: Arc::new(cipher),
            state: Arc::new(Mutex::new(Sealed::default())),
            quota: Arc::clone(&self.quota),
        }))
    }
}

/// What has been sealed into a spill file so far.
#[derive(Debug, Default)]
struct Sealed {
    /// Chunks written (the next chunk's nonce).
    chunks: u64,
    /// Bytes written (the next chunk's offset).
    len: u64,
}

/// One spill file: ciphertext on disk, its key in memory. Removing the last reference deletes
/// the file and returns its bytes to the quota.
pub(crate) struct EncryptedSpillFile {
    file: tempfile::NamedTempFile,
    cipher: Arc<Aes256Gcm>,
    state: Arc<Mutex<Sealed>>,
    quota: Arc<Quota>,
}

impl Drop for EncryptedSpillFile {
    fn drop(&mut self) {
        let len = self.state.lock().map(|s| s.len).unwrap_or(0);
        self.quota.used.fetch_sub(len, Ordering::Relaxed);
    }
}

fn nonce(index: u64) -> Nonce<Aes256Gcm> {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_le_bytes());
    Nonce::<Aes256Gcm>::from(n)
}

fn corrupt(what: &str) -> DataFusionError {
    DataFusionError::Execution(format!("a spill file failed to decrypt ({what})"))
}

impl SpillFile for EncryptedSpillFile {
    fn size(&self) -> Option<u64> {
        self.state.lock().ok().map(|s| s.len)
    }

    /// The chunks sealed so far, decrypted in order. A file still being written (a
    /// repartition reads while it writes) yields what has been flushed.
    fn read_stream(&self) -> Result<Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>> {
        let file = self.file.reopen().map_err(DataFusionError::IoError)?;
        let reader = ChunkReader {
            file,
            cipher: Arc::clone(&self.cipher),
            state: Arc::clone(&self.state),
            next: 0,
            offset: 0,
        };
        Ok(Box::pin(futures_util::stream::iter(reader)))
    }

    fn open_writer(&self) -> Result<Box<dyn SpillWriter>> {
        let file = self
            .file
            .as_file()
            .try_clone()
            .map_err(DataFusionError::IoError)?;
        Ok(Box::new(ChunkWriter {
            file,
            cipher: Arc::clone(&self.cipher),
            state: Arc::clone(&self.state),
            quota: Arc::clone(&self.quota),
            buf: Zeroizing::new(Vec::with_capacity(CHUNK + TAG)),
        }))
    }
}

/// Buffers plaintext and seals it a chunk at a time; `flush` seals what is buffered.
struct ChunkWriter {
    file: File,
    cipher: Arc<Aes256Gcm>,
    state: Arc<Mutex<Sealed>>,
    quota: Arc<Quota>,
    buf: Zeroizing<Vec<u8>>,
}

impl ChunkWriter {
    fn seal(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut state = self
            .state
            .lock()
            .map_err(|_| io::Error::other("spill file state poisoned"))?;
        let plain = self.buf.len();
        let total = (HEADER + plain + TAG) as u64;
        self.quota.take(total)?;
        let sealed = self
            .cipher
            .encrypt_in_place(&nonce(state.chunks), b"", &mut *self.buf);
        if sealed.is_err() {
            self.quota.used.fetch_sub(total, Ordering::Relaxed);
            return Err(io::Error::other("sealing a spill chunk failed"));
        }
        let mut out = Vec::with_capacity(total as usize);
        out.extend_from_slice(&((plain + TAG) as u32).to_le_bytes());
        out.extend_from_slice(&self.buf);
        self.buf.clear();
        if let Err(e) = self.file.write_all_at(&out, state.len) {
            self.quota.used.fetch_sub(total, Ordering::Relaxed);
            return Err(e);
        }
        state.chunks += 1;
        state.len += total;
        SPILLED_BYTES.fetch_add(total, Ordering::Relaxed);
        Ok(())
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.seal()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.seal()
    }
}

impl SpillWriter for ChunkWriter {
    fn finish(&mut self) -> Result<()> {
        self.seal().map_err(DataFusionError::IoError)
    }
}

/// Reads and opens chunks `next..` while the writer has sealed them.
struct ChunkReader {
    file: File,
    cipher: Arc<Aes256Gcm>,
    state: Arc<Mutex<Sealed>>,
    next: u64,
    offset: u64,
}

impl Iterator for ChunkReader {
    type Item = Result<Bytes>;

    fn next(&mut self) -> Option<Result<Bytes>> {
        let sealed = match self.state.lock() {
            Ok(s) => s.chunks,
            Err(_) => return Some(Err(corrupt("state poisoned"))),
        };
        if self.next >= sealed {
            return None;
        }
        Some(self.read_chunk())
    }
}

impl ChunkReader {
    fn read_chunk(&mut self) -> Result<Bytes> {
        let mut header = [0u8; HEADER];
        self.file
            .read_exact_at(&mut header, self.offset)
            .map_err(DataFusionError::IoError)?;
        let len = u32::from_le_bytes(header) as usize;
        if !(TAG..=CHUNK + TAG).contains(&len) {
            return Err(corrupt("chunk length"));
        }
        let mut chunk = vec![0u8; len];
        self.file
            .read_exact_at(&mut chunk, self.offset + HEADER as u64)
            .map_err(DataFusionError::IoError)?;
        self.cipher
            .decrypt_in_place(&nonce(self.next), b"", &mut chunk)
            .map_err(|_| corrupt("authentication"))?;
        self.next += 1;
        self.offset += (HEADER + len) as u64;
        Ok(Bytes::from(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn spill(max: u64) -> (tempfile::TempDir, EncryptedSpill) {
        let root = tempfile::tempdir().unwrap();
        let s = EncryptedSpill::new(&SpillConfig {
            dir: root.path().to_owned(),
            max_bytes: max,
        })
        .unwrap();
        (root, s)
    }

    async fn read_all(f: &Arc<dyn SpillFile>) -> Result<Vec<u8>> {
        let mut out = vec![];
        let mut s = f.read_stream()?;
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b?);
        }
        Ok(out)
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    #[tokio::test]
    async fn what_is_written_reads_back_and_is_not_on_disk_in_the_clear() {
        let (_root, s) = spill(u64::MAX);
        let f = s.create_temp_file("test").unwrap();
        let marker = b"alice@example.com|madrid|1234.5;";
        let plain: Vec<u8> = marker.iter().copied().cycle().take(700_000).collect();
        let mut w = f.open_writer().unwrap();
        // Odd-sized writes and a flush in the middle, as the IPC writer does.
        for piece in plain[..300_001].chunks(4099) {
            w.write_all(piece).unwrap();
        }
        w.flush().unwrap();
        for piece in plain[300_001..].chunks(65_537) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(read_all(&f).await.unwrap(), plain);

        let on_disk = files_in(s.path());
        assert_eq!(on_disk.len(), 1);
        let bytes = std::fs::read(&on_disk[0]).unwrap();
        assert_eq!(bytes.len() as u64, f.size().unwrap());
        assert!(bytes.len() >= plain.len());
        for needle in [&b"alice@example.com"[..], b"madrid", b"1234.5"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "plaintext {:?} found in a spill file",
                String::from_utf8_lossy(needle)
            );
        }
        drop(w);
        drop(f);
        assert!(
            files_in(s.path()).is_empty(),
            "the file outlived its last reference"
        );
        assert_eq!(s.quota.used.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_reader_sees_what_was_flushed_while_the_writer_goes_on() {
        let (_root, s) = spill(u64::MAX);
        let f = s.create_temp_file("test").unwrap();
        let mut w = f.open_writer().unwrap();
        w.write_all(b"first batch").unwrap();
        w.flush().unwrap();
        assert_eq!(read_all(&f).await.unwrap(), b"first batch");
        w.write_all(b", second").unwrap();
        w.finish().unwrap();
        assert_eq!(read_all(&f).await.unwrap(), b"first batch, second");
    }

    #[tokio::test]
    async fn a_changed_or_swapped_chunk_fails_to_open() {
        let (_root, s) = spill(u64::MAX);
        let f = s.create_temp_file("test").unwrap();
        let mut w = f.open_writer().unwrap();
        w.write_all(b"chunk zero").unwrap();
        w.flush().unwrap();
        w.write_all(b"chunk one!").unwrap();
        w.finish().unwrap();
        let path = files_in(s.path()).remove(0);
        let good = std::fs::read(&path).unwrap();

        // One flipped bit in the ciphertext.
        let mut bad = good.clone();
        bad[HEADER + 3] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(read_all(&f).await.is_err());

        // The two chunks (same length) in the other order.
        let half = good.len() / 2;
        let swapped = [&good[half..], &good[..half]].concat();
        std::fs::write(&path, &swapped).unwrap();
        assert!(read_all(&f).await.is_err());

        // Another file's chunk, written under its own key.
        let g = s.create_temp_file("other").unwrap();
        let mut gw = g.open_writer().unwrap();
        gw.write_all(b"chunk zero").unwrap();
        gw.finish().unwrap();
        let other =
            std::fs::read(files_in(s.path()).into_iter().find(|p| p != &path).unwrap()).unwrap();
        std::fs::write(&path, [&other[..], &good[half..]].concat()).unwrap();
        assert!(read_all(&f).await.is_err());

        std::fs::write(&path, &good).unwrap();
        assert_eq!(read_all(&f).await.unwrap(), b"chunk zerochunk one!");
    }

    #[tokio::test]
    async fn the_quota_refuses_and_gives_back() {
        let (_root, s) = spill(2 * (CHUNK as u64 + 20) + 10);
        let f = s.create_temp_file("test").unwrap();
        let mut w = f.open_writer().unwrap();
        let block = vec![7u8; CHUNK];
        w.write_all(&block).unwrap();
        w.write_all(&block).unwrap();
        let e = w.write_all(&block).unwrap_err();
        assert!(is_spill_full(&e), "{e}");
        drop(w);
        drop(f);
        assert_eq!(s.quota.used.load(Ordering::Relaxed), 0);
        let g = s.create_temp_file("again").unwrap();
        let mut w = g.open_writer().unwrap();
        w.write_all(&block).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn directories_of_ended_processes_are_removed_and_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        // No process has this pid (above the kernel's pid_max).
        let dead = root.path().join("cleanroom-spill-4194305-abc");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("spill-x"), b"ciphertext").unwrap();
        let alive = root.path().join("cleanroom-spill-1-abc");
        std::fs::create_dir(&alive).unwrap();
        let other = root.path().join("not-ours");
        std::fs::create_dir(&other).unwrap();
        let s = EncryptedSpill::new(&SpillConfig {
            dir: root.path().to_owned(),
            max_bytes: 1,
        })
        .unwrap();
        assert!(!dead.exists());
        assert!(alive.exists());
        assert!(other.exists());
        let mine = s.path().to_owned();
        assert!(mine.exists());
        drop(s);
        assert!(!mine.exists());
    }
}
