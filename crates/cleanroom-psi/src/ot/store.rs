//! A side's OT items, split into [`PARTS`] parts by their low byte so that the protocol can
//! take them a bucket at a time (a bucket is a run of whole parts). They are kept in memory
//! until they pass a limit; beyond it every part is sealed with AES-256-GCM, under a key that
//! exists only in this process's memory, into an anonymous temporary file (`O_TMPFILE` where
//! the system has it: it has no name and vanishes when the process ends, however it ends).
//! What reaches the disk is ciphertext of hashed identifiers: a crash leaves nothing readable.
//!
//! A record is an item (the 128-bit hash of a kind and an identifier), the kind, and for the
//! receiver the input row it came from. [`ItemStore::finish`] sorts each part (one part in
//! memory at a time), removes duplicates, counts distinct items per kind and, when spilled,
//! seals the sorted part back.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::PsiError;
use crate::group::fill_random;

/// Parts of a store: buckets are runs of `PARTS / buckets` parts, so at most this many.
pub(crate) const PARTS: usize = 256;
/// Plaintext bytes sealed at a time (a part's buffer is flushed when it reaches this).
const CHUNK: usize = 64 * 1024;
/// Buffered records beyond which a store moves to sealed files, by default: 256 MiB, about
/// 12 million receiver records.
pub const DEFAULT_SPILL_ABOVE: usize = 256 << 20;

/// One item of a side's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rec {
    pub(crate) item: u128,
    /// The input row (the receiver's store only; 0 in the sender's).
    pub(crate) row: u32,
    pub(crate) kind: u8,
}

/// Where and when a store spills.
#[derive(Debug, Clone)]
pub struct SpillConfig {
    /// The directory of the sealed temporary files.
    pub dir: PathBuf,
    /// Bytes of buffered records above which the store spills.
    pub above: usize,
}

impl Default for SpillConfig {
    fn default() -> Self {
        SpillConfig {
            dir: std::env::temp_dir(),
            above: DEFAULT_SPILL_ABOVE,
        }
    }
}

/// Sealed chunks of one part on disk.
struct PartFile {
    file: File,
    /// (offset, sealed length, nonce index) of each chunk.
    chunks: Vec<(u64, u32, u64)>,
    len: u64,
}

struct Spill {
    cipher: Aes256Gcm,
    files: Vec<PartFile>,
    /// The next nonce: unique over the store's life, so a rewritten part never reuses one.
    nonce: u64,
    bytes: u64,
}

fn nonce(index: u64) -> Nonce<Aes256Gcm> {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_le_bytes());
    Nonce::<Aes256Gcm>::from(n)
}

fn io_error(dir: &Path, e: std::io::Error) -> PsiError {
    PsiError::Internal(format!(
        "sealed temporary files in {} (--temp-dir): {e}",
        dir.display()
    ))
}

impl Spill {
    fn new(dir: &Path) -> Result<Self, PsiError> {
        let mut key = Zeroizing::new([0u8; 32]);
        fill_random(&mut key[..])?;
        let cipher = Aes256Gcm::new_from_slice(&key[..])
            .map_err(|_| PsiError::Internal("spill key length".into()))?;
        let files = (0..PARTS)
            .map(|_| {
                Ok(PartFile {
                    file: tempfile::tempfile_in(dir).map_err(|e| io_error(dir, e))?,
                    chunks: Vec::new(),
                    len: 0,
                })
            })
            .collect::<Result<_, PsiError>>()?;
        Ok(Spill {
            cipher,
            files,
            nonce: 0,
            bytes: 0,
        })
    }

    /// Seals `plain` (emptied) as one more chunk of part `p`.
    fn seal(&mut self, dir: &Path, p: usize, plain: &mut Vec<u8>) -> Result<(), PsiError> {
        if plain.is_empty() {
            return Ok(());
        }
        let n = self.nonce;
        self.nonce += 1;
        let mut buf = Zeroizing::new(std::mem::take(plain));
        self.cipher
            .encrypt_in_place(&nonce(n), &[p as u8], &mut *buf)
            .map_err(|_| PsiError::Internal("sealing a temporary chunk failed".into()))?;
        let f = &mut self.files[p];
        f.file
            .write_all_at(&buf, f.len)
            .map_err(|e| io_error(dir, e))?;
        f.chunks.push((f.len, buf.len() as u32, n));
        f.len += buf.len() as u64;
        self.bytes += buf.len() as u64;
        // Give the allocation back for the next chunk.
        buf.clear();
        *plain = std::mem::take(&mut *buf);
        Ok(())
    }

    /// Part `p`'s plaintext, appended to `out`.
    fn open(&self, dir: &Path, p: usize, out: &mut Vec<u8>) -> Result<(), PsiError> {
        let f = &self.files[p];
        let mut buf = Zeroizing::new(Vec::new());
        for (offset, len, n) in &f.chunks {
            buf.resize(*len as usize, 0);
            f.file
                .read_exact_at(&mut buf, *offset)
                .map_err(|e| io_error(dir, e))?;
            self.cipher
                .decrypt_in_place(&nonce(*n), &[p as u8], &mut *buf)
                .map_err(|_| {
                    PsiError::Internal(
                        "a sealed temporary file failed to decrypt (changed on disk?)".into(),
                    )
                })?;
            out.extend_from_slice(&buf);
        }
        Ok(())
    }

    fn truncate(&mut self, dir: &Path, p: usize) -> Result<(), PsiError> {
        let f = &mut self.files[p];
        f.file.set_len(0).map_err(|e| io_error(dir, e))?;
        f.chunks.clear();
        f.len = 0;
        Ok(())
    }
}

fn encode(rows: bool, r: &Rec, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.item.to_le_bytes());
    if rows {
        out.extend_from_slice(&r.row.to_le_bytes());
    }
    out.push(r.kind);
}

/// A side's items, by part; see the module's text.
pub struct ItemStore {
    /// Whether records carry their row (the receiver's).
    rows: bool,
    kinds: usize,
    parts: Vec<Vec<u8>>,
    buffered: usize,
    config: SpillConfig,
    spill: Option<Spill>,
    /// Distinct items per kind, once finished.
    counts: Vec<u64>,
    finished: bool,
}

impl std::fmt::Debug for ItemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemStore")
            .field("rows", &self.rows)
            .field("spilled", &self.spill.is_some())
            .finish_non_exhaustive()
    }
}

impl ItemStore {
    pub(crate) fn new(kinds: usize, rows: bool, config: SpillConfig) -> Self {
        ItemStore {
            rows,
            kinds,
            parts: vec![Vec::new(); PARTS],
            buffered: 0,
            config,
            spill: None,
            counts: vec![0; kinds],
            finished: false,
        }
    }

    fn record_len(&self) -> usize {
        if self.rows { 21 } else { 17 }
    }

    fn decode(&self, bytes: &[u8], out: &mut Vec<Rec>) {
        let len = self.record_len();
        out.reserve(bytes.len() / len);
        out.extend(bytes.chunks_exact(len).map(|b| Rec {
            item: u128::from_le_bytes(b[..16].try_into().expect("16 bytes")),
            row: if self.rows {
                u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"))
            } else {
                0
            },
            kind: b[len - 1],
        }));
    }

    /// The part of an item: its low byte.
    pub(crate) fn part_of(item: u128) -> usize {
        (item & 0xff) as usize
    }

    /// Whether the records went to sealed files.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// Bytes sealed to disk so far.
    pub fn spilled_bytes(&self) -> u64 {
        self.spill.as_ref().map_or(0, |s| s.bytes)
    }

    pub(crate) fn push(&mut self, r: Rec) -> Result<(), PsiError> {
        debug_assert!(!self.finished);
        let p = Self::part_of(r.item);
        let mut buf = std::mem::take(&mut self.parts[p]);
        encode(self.rows, &r, &mut buf);
        self.buffered += self.record_len();
        let result = if let Some(spill) = &mut self.spill {
            if buf.len() >= CHUNK {
                self.buffered -= buf.len();
                spill.seal(&self.config.dir, p, &mut buf)
            } else {
                Ok(())
            }
        } else {
            Ok(())
        };
        self.parts[p] = buf;
        result?;
        if self.spill.is_none() && self.buffered > self.config.above {
            let mut spill = Spill::new(&self.config.dir)?;
            for (p, buf) in self.parts.iter_mut().enumerate() {
                spill.seal(&self.config.dir, p, buf)?;
                buf.shrink_to(CHUNK);
            }
            self.buffered = 0;
            self.spill = Some(spill);
        }
        Ok(())
    }

    /// Part `p`'s records, in the order they are stored.
    fn load(&self, p: usize, out: &mut Vec<Rec>) -> Result<(), PsiError> {
        if let Some(spill) = &self.spill {
            let mut plain = Zeroizing::new(Vec::new());
            spill.open(&self.config.dir, p, &mut plain)?;
            self.decode(&plain, out);
        }
        self.decode(&self.parts[p], out);
        Ok(())
    }

    /// Sorts every part, removes duplicate records (and, in the sender's store, duplicate
    /// items), and counts the distinct items of each kind.
    pub(crate) fn finish(&mut self) -> Result<(), PsiError> {
        if self.finished {
            return Ok(());
        }
        let mut recs = Vec::new();
        for p in 0..PARTS {
            recs.clear();
            self.load(p, &mut recs)?;
            recs.par_sort_unstable();
            if self.rows {
                recs.dedup();
            } else {
                recs.dedup_by_key(|r| r.item);
            }
            for run in recs.chunk_by(|a, b| a.item == b.item) {
                let k = usize::from(run[0].kind);
                if k >= self.kinds {
                    return Err(PsiError::Internal("a record of an unknown kind".into()));
                }
                self.counts[k] += 1;
            }
            let mut buf = Vec::new();
            let (rows, len) = (self.rows, self.record_len());
            if let Some(spill) = &mut self.spill {
                spill.truncate(&self.config.dir, p)?;
                for chunk in recs.chunks(CHUNK / len) {
                    for r in chunk {
                        encode(rows, r, &mut buf);
                    }
                    spill.seal(&self.config.dir, p, &mut buf)?;
                }
                self.parts[p] = Vec::new();
            } else {
                buf.reserve_exact(recs.len() * len);
                for r in &recs {
                    encode(rows, r, &mut buf);
                }
                self.parts[p] = buf;
            }
        }
        self.buffered = 0;
        self.finished = true;
        Ok(())
    }

    /// Distinct items of each kind (after [`ItemStore::finish`]).
    pub(crate) fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Distinct items over all kinds (kinds never share an item).
    pub(crate) fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The records of bucket `j` of `buckets` (a power of two up to [`PARTS`]): parts
    /// `j·PARTS/buckets ..`, each sorted, so equal items are adjacent.
    pub(crate) fn bucket(&self, j: usize, buckets: usize) -> Result<Vec<Rec>, PsiError> {
        let per = PARTS / buckets;
        let mut recs = Vec::new();
        for p in j * per..(j + 1) * per {
            self.load(p, &mut recs)?;
        }
        Ok(recs)
    }

    /// The bucket of an item among `buckets`: the bucket that holds its part.
    #[cfg(test)]
    pub(crate) fn bucket_of(item: u128, buckets: usize) -> usize {
        Self::part_of(item) / (PARTS / buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> Rec {
        // Spread over the parts, with duplicates every 7th.
        let item = u128::from(i % 1000).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        Rec {
            item,
            row: i as u32,
            kind: (i % 2) as u8,
        }
    }

    fn all(store: &ItemStore) -> Vec<Rec> {
        (0..PARTS)
            .flat_map(|p| {
                let mut v = Vec::new();
                store.load(p, &mut v).unwrap();
                v
            })
            .collect()
    }

    #[test]
    fn a_spilled_store_holds_the_same_records_as_one_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut mem = ItemStore::new(2, true, SpillConfig::default());
        let mut disk = ItemStore::new(
            2,
            true,
            SpillConfig {
                dir: dir.path().into(),
                above: 4096,
            },
        );
        for i in 0..20_000 {
            mem.push(rec(i)).unwrap();
            disk.push(rec(i)).unwrap();
        }
        assert!(!mem.spilled());
        assert!(disk.spilled());
        mem.finish().unwrap();
        disk.finish().unwrap();
        assert_eq!(all(&mem), all(&disk));
        assert_eq!(mem.counts(), disk.counts());
        // 1,000 distinct items (each of one kind: i % 1000 keeps the parity of i).
        assert_eq!(mem.total(), 1000);
        assert_eq!(mem.counts(), &[500, 500]);
        assert_eq!(all(&mem).len(), 20_000);
        // Buckets partition the records, each sorted.
        for buckets in [1, 2, 64, 256] {
            let mut n = 0;
            for j in 0..buckets {
                let b = disk.bucket(j, buckets).unwrap();
                assert!(b.iter().all(|r| ItemStore::bucket_of(r.item, buckets) == j));
                n += b.len();
            }
            assert_eq!(n, 20_000);
        }
    }

    #[test]
    fn the_sender_store_keeps_each_item_once() {
        let mut s = ItemStore::new(2, false, SpillConfig::default());
        for i in 0..5000 {
            s.push(Rec { row: 0, ..rec(i) }).unwrap();
        }
        s.finish().unwrap();
        assert_eq!(all(&s).len(), 1000);
        assert_eq!(s.total(), 1000);
    }

    #[test]
    fn nothing_readable_reaches_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ItemStore::new(
            1,
            true,
            SpillConfig {
                dir: dir.path().into(),
                above: 0,
            },
        );
        let marker = u128::from_le_bytes(*b"\x07identifier-hash");
        for row in 0..10_000 {
            s.push(Rec {
                item: marker,
                row,
                kind: 0,
            })
            .unwrap();
        }
        s.finish().unwrap();
        let spill = s.spill.as_ref().unwrap();
        let mut raw = Vec::new();
        for f in &spill.files {
            let mut b = vec![0u8; f.len as usize];
            f.file.read_exact_at(&mut b, 0).unwrap();
            raw.extend_from_slice(&b);
        }
        assert!(raw.len() > 10_000 * 21);
        assert!(!raw.windows(15).any(|w| w == b"identifier-hash"));
        // The files have no name in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A changed byte is detected, not read as other records.
        let f = &spill.files[7];
        f.file.write_all_at(&[0xAA], 3).unwrap();
        let mut v = Vec::new();
        assert!(matches!(s.load(7, &mut v), Err(PsiError::Internal(_))));
    }
}
