//! A sealed spool: an upload that must be read out of order (Parquet keeps its footer at the
//! end) is written to an anonymous temporary file, encrypted, and read back by ranges, so it
//! is never held in memory whole and never lies on disk in plaintext.
//!
//! - The file is created with `tempfile::tempfile_in`: on Linux it has no name at all
//!   (`O_TMPFILE`), elsewhere it is unlinked at once, so a crash or kill leaves nothing behind
//!   to clean up.
//! - Its content is cut into chunks of [`CHUNK`] bytes, each sealed with AES-256-GCM under a
//!   key drawn for this spool alone and kept only in memory (wiped on drop); the nonce is the
//!   chunk's index, unique under a key used once, and the additional data binds the index and
//!   whether the chunk is the last, so chunks cannot be reordered or the file cut short
//!   unnoticed.
//! - Reading decrypts the chunks a range touches; the last chunk decrypted is kept, because
//!   Parquet reads a column chunk in many small pieces.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use bytes::Bytes;
use zeroize::Zeroizing;

use crate::StorageError;
use crate::files::{ChunkSource, FileRead};
use crate::keys::SecretKey;

/// Plaintext bytes per sealed chunk.
pub const CHUNK: usize = 1 << 20;
/// What sealing adds to a chunk (the GCM tag).
const TAG: usize = 16;

/// A decrypted chunk, wiped when the last holder drops it.
type Plain = Arc<Zeroizing<Vec<u8>>>;

/// An upload spooled to an encrypted anonymous temporary file; see the module docs.
pub struct SealedSpool {
    file: Mutex<File>,
    cipher: Aes256Gcm,
    len: u64,
    /// The last chunk decrypted; plaintext is wiped when it is dropped.
    last: Mutex<Option<(u64, Plain)>>,
}

impl std::fmt::Debug for SealedSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSpool")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

fn aad(index: u64, last: bool) -> [u8; 25] {
    let mut a = [0u8; 25];
    a[..16].copy_from_slice(b"cleanroom-spool1");
    a[16..24].copy_from_slice(&index.to_be_bytes());
    a[24] = u8::from(last);
    a
}

fn nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

/// Fills `buf` from `r` as far as it goes; returns how many bytes it holds (short only at the
/// end of the input).
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl SealedSpool {
    /// Reads `input` to its end into a sealed temporary file in `dir`. A read error (a size
    /// limit, a stalled body) comes back as the error it carried; the file is gone with it.
    pub fn write(input: &mut dyn Read, dir: &Path) -> Result<Self, StorageError> {
        let key = SecretKey::generate()?;
        let cipher = Aes256Gcm::new_from_slice(key.expose())
            .map_err(|_| StorageError::Internal("a spool key has the wrong length".into()))?;
        let file = tempfile::tempfile_in(dir).map_err(StorageError::io(format!(
            "creating a spool file in {}",
            dir.display()
        )))?;
        let mut out = io::BufWriter::with_capacity(CHUNK + TAG, file);
        // Read one chunk ahead, to know which chunk is the last when it is sealed. The plaintext
        // buffers are wiped when dropped, on every path out.
        let mut cur = Zeroizing::new(vec![0u8; CHUNK]);
        let mut next = Zeroizing::new(vec![0u8; CHUNK]);
        let mut cur_len = fill(input, &mut cur).map_err(crate::ingest::io_to_storage)?;
        let mut index = 0u64;
        let mut len = 0u64;
        loop {
            let next_len = if cur_len == CHUNK {
                fill(input, &mut next).map_err(crate::ingest::io_to_storage)?
            } else {
                0
            };
            let last = next_len == 0;
            let sealed = cipher
                .encrypt(
                    &Nonce::<Aes256Gcm>::from(nonce(index)),
                    Payload {
                        msg: &cur[..cur_len],
                        aad: &aad(index, last),
                    },
                )
                .map_err(|_| StorageError::Internal("sealing a spool chunk failed".into()))?;
            out.write_all(&sealed)
                .map_err(StorageError::io("writing a spool file"))?;
            len += cur_len as u64;
            if last {
                break;
            }
            std::mem::swap(&mut cur, &mut next);
            cur_len = next_len;
            index += 1;
        }
        let file = out
            .into_inner()
            .map_err(|e| StorageError::io("writing a spool file")(e.into_error()))?;
        Ok(SealedSpool {
            file: Mutex::new(file),
            cipher,
            len,
            last: Mutex::new(None),
        })
    }

    /// The number of chunks (an empty input is one empty chunk).
    fn chunks(&self) -> u64 {
        self.len.div_ceil(CHUNK as u64).max(1)
    }

    /// The plaintext of chunk `index`.
    fn chunk(&self, index: u64) -> Result<Plain, StorageError> {
        if let Some((i, c)) = self.last.lock().expect("spool cache").as_ref()
            && *i == index
        {
            return Ok(c.clone());
        }
        let chunks = self.chunks();
        let last = index + 1 == chunks;
        let plain_len = if last {
            (self.len - index * CHUNK as u64) as usize
        } else {
            CHUNK
        };
        let mut sealed = vec![0u8; plain_len + TAG];
        {
            let mut f = self.file.lock().expect("spool file");
            f.seek(SeekFrom::Start(index * (CHUNK + TAG) as u64))
                .map_err(StorageError::io("reading a spool file"))?;
            f.read_exact(&mut sealed)
                .map_err(StorageError::io("reading a spool file"))?;
        }
        let plain = self
            .cipher
            .decrypt(
                &Nonce::<Aes256Gcm>::from(nonce(index)),
                Payload {
                    msg: &sealed,
                    aad: &aad(index, last),
                },
            )
            .map_err(|_| {
                StorageError::Internal("a spool chunk failed its integrity check".into())
            })?;
        let plain = Arc::new(Zeroizing::new(plain));
        *self.last.lock().expect("spool cache") = Some((index, plain.clone()));
        Ok(plain)
    }

    /// This spool as a Parquet chunk reader.
    pub fn into_chunk_source(self) -> ChunkSource {
        ChunkSource(Arc::new(self))
    }
}

impl FileRead for SealedSpool {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_range(&self, start: u64, len: usize) -> Result<Bytes, StorageError> {
        let end = start.saturating_add(len as u64).min(self.len);
        if start >= end {
            return Ok(Bytes::new());
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut pos = start;
        while pos < end {
            let index = pos / CHUNK as u64;
            let chunk = self.chunk(index)?;
            let from = (pos - index * CHUNK as u64) as usize;
            let to = ((end - index * CHUNK as u64) as usize).min(chunk.len());
            out.extend_from_slice(&chunk[from..to]);
            pos += (to - from) as u64;
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spool(data: &[u8]) -> SealedSpool {
        let dir = tempfile::tempdir().unwrap();
        SealedSpool::write(&mut &data[..], dir.path()).unwrap()
    }

    #[test]
    fn reads_back_every_range_across_chunk_edges() {
        let data: Vec<u8> = (0..(2 * CHUNK + 123))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let s = spool(&data);
        assert_eq!(s.len(), data.len() as u64);
        for (start, len) in [
            (0, 10),
            (CHUNK - 5, 10),
            (CHUNK, CHUNK),
            (0, data.len()),
            (2 * CHUNK + 100, 1000),
            (data.len(), 5),
        ] {
            let got = s.read_range(start as u64, len).unwrap();
            let end = (start + len).min(data.len());
            assert_eq!(&got[..], &data[start.min(end)..end], "range {start}+{len}");
        }
    }

    #[test]
    fn empty_and_exact_multiple_inputs() {
        let s = spool(b"");
        assert_eq!(s.len(), 0);
        assert!(s.read_range(0, 10).unwrap().is_empty());
        let data = vec![9u8; CHUNK];
        let s = spool(&data);
        assert_eq!(&s.read_range(CHUNK as u64 - 1, 5).unwrap()[..], &[9]);
    }

    #[test]
    fn no_plaintext_reaches_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let marker = b"alice@example.com,1990-01-01,secret-row;";
        let data: Vec<u8> = marker.iter().copied().cycle().take(3 * CHUNK).collect();
        // Spool to a named place we can inspect: write the same stream through a spool and
        // look at every byte the filesystem holds for it via /proc (Linux) or the directory.
        let s = SealedSpool::write(&mut &data[..], dir.path()).unwrap();
        let mut raw = Vec::new();
        {
            let mut f = s.file.lock().unwrap();
            f.seek(SeekFrom::Start(0)).unwrap();
            f.read_to_end(&mut raw).unwrap();
        }
        assert_eq!(raw.len(), 3 * (CHUNK + TAG));
        assert!(
            !raw.windows(marker.len()).any(|w| w == marker),
            "plaintext found in the spool file"
        );
        // The file has no name in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(&s.read_range(0, marker.len()).unwrap()[..], marker);
    }

    #[test]
    fn a_tampered_chunk_is_refused() {
        let data = vec![1u8; CHUNK + 10];
        let s = spool(&data);
        {
            let mut f = s.file.lock().unwrap();
            f.seek(SeekFrom::Start(5)).unwrap();
            f.write_all(&[0xff]).unwrap();
        }
        assert!(s.read_range(0, 10).is_err());
        assert_eq!(&s.read_range(CHUNK as u64, 10).unwrap()[..], &[1u8; 10]);
    }

    #[test]
    fn a_read_error_comes_back_as_its_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![0u8; 5000];
        let mut limited = crate::ingest::ByteLimit::new(&data[..], 4000);
        let e = SealedSpool::write(&mut limited, dir.path()).unwrap_err();
        assert!(matches!(e, StorageError::TooLarge(_)), "{e:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn any_range_reads_back(len in 0usize..(CHUNK * 2 + 50), start in 0usize..(CHUNK * 2 + 60), n in 0usize..(CHUNK + 40)) {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let s = spool(&data);
            let got = s.read_range(start as u64, n).unwrap();
            let end = (start + n).min(len);
            let want = if start >= end { &[][..] } else { &data[start..end] };
            prop_assert_eq!(&got[..], want);
        }
    }
}
