//! The key hierarchy.
//!
//! ```text
//! master key (env CLEANROOM_MASTER_KEY or <data-dir>/master.key, 0600)
//!   └─ collaboration key (random, stored wrapped by the master key)
//!        └─ dataset key (random, stored wrapped by the collaboration key; encrypts the Parquet file)
//! ```
//! Closing a collaboration deletes its wrapped collaboration key and every wrapped dataset key:
//! without them the encrypted files are noise, wherever copies of them went (crypto-shredding).
//!
//! Wrapping is AES-256-GCM with a random 96-bit nonce and the wrapped key's purpose as
//! associated data, so a wrapped key moved to another record does not unwrap.

use std::fmt;
use std::io::Write;
use std::path::Path;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use rand::TryRng;
use rand::rngs::SysRng;
use zeroize::Zeroizing;

use crate::StorageError;

/// Environment variable that may hold the master key as 64 hex digits.
pub const MASTER_KEY_ENV: &str = "CLEANROOM_MASTER_KEY";
/// File name of the master key inside the data directory when the environment gives none.
pub const MASTER_KEY_FILE: &str = "master.key";
/// The next master key during a rotation: written before the wrapped keys change, moved over
/// [`MASTER_KEY_FILE`] after they have (see `cleanroom-service`'s rotation).
pub const NEXT_MASTER_KEY_FILE: &str = "master.key.next";

const NONCE_LEN: usize = 12;

/// A 256-bit secret key. `Debug` never shows it; memory is wiped on drop.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, StorageError> {
        let mut k = Zeroizing::new([0u8; 32]);
        SysRng
            .try_fill_bytes(&mut k[..])
            .map_err(|e| StorageError::Internal(format!("OS random number generator: {e}")))?;
        Ok(SecretKey(k))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| StorageError::Decrypt)?;
        Ok(SecretKey(Zeroizing::new(arr)))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    fn from_hex(s: &str) -> Result<Self, StorageError> {
        let s = s.trim();
        let mut k = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(s, &mut k[..]).map_err(|_| {
            StorageError::MasterKey("expected exactly 64 hexadecimal digits (32 bytes)".into())
        })?;
        Ok(SecretKey(k))
    }

    fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(&self.0[..]))
    }

    /// Encrypts `key` under this key, bound to `purpose` (e.g. `collaboration:<id>`).
    pub fn wrap(&self, key: &SecretKey, purpose: &str) -> Result<Vec<u8>, StorageError> {
        let cipher = Aes256Gcm::new_from_slice(&self.0[..])
            .map_err(|_| StorageError::Internal("key length".into()))?;
        let mut nonce = [0u8; NONCE_LEN];
        SysRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| StorageError::Internal(format!("OS random number generator: {e}")))?;
        let n = Nonce::<Aes256Gcm>::from(nonce);
        let ct = cipher
            .encrypt(
                &n,
                Payload {
                    msg: &key.0[..],
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| StorageError::Internal("key wrapping failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Reverses [`SecretKey::wrap`]; fails if the key, the purpose or the bytes differ.
    pub fn unwrap_key(&self, wrapped: &[u8], purpose: &str) -> Result<SecretKey, StorageError> {
        if wrapped.len() != NONCE_LEN + 32 + 16 {
            return Err(StorageError::Decrypt);
        }
        let cipher = Aes256Gcm::new_from_slice(&self.0[..])
            .map_err(|_| StorageError::Internal("key length".into()))?;
        let n = Nonce::<Aes256Gcm>::try_from(&wrapped[..NONCE_LEN])
            .map_err(|_| StorageError::Decrypt)?;
        let pt = Zeroizing::new(
            cipher
                .decrypt(
                    &n,
                    Payload {
                        msg: &wrapped[NONCE_LEN..],
                        aad: purpose.as_bytes(),
                    },
                )
                .map_err(|_| StorageError::Decrypt)?,
        );
        SecretKey::from_bytes(&pt)
    }
}

/// Where the master key came from, for a start-up log line (never the key itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterKeySource {
    Environment,
    ExistingFile,
    CreatedFile,
}

/// Loads the master key: from `CLEANROOM_MASTER_KEY` when set, else from
/// `<data_dir>/master.key`, creating that file (owner read/write only) when `create` is true.
pub fn load_master_key(
    data_dir: &Path,
    env_value: Option<&str>,
    create: bool,
) -> Result<(SecretKey, MasterKeySource), StorageError> {
    if let Some(v) = env_value {
        return Ok((SecretKey::from_hex(v)?, MasterKeySource::Environment));
    }
    let path = data_dir.join(MASTER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            check_owner_only(&path)?;
            Ok((SecretKey::from_hex(&s)?, MasterKeySource::ExistingFile))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = SecretKey::generate()?;
            write_owner_only(&path, key.to_hex().as_bytes())?;
            Ok((key, MasterKeySource::CreatedFile))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(StorageError::MasterKey(format!(
                "no {MASTER_KEY_ENV} in the environment and no {} (run `cleanroom init` first)",
                path.display()
            )))
        }
        Err(e) => Err(StorageError::io(format!("reading {}", path.display()))(e)),
    }
}

#[cfg(unix)]
fn check_owner_only(path: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(StorageError::io("reading master key metadata"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(StorageError::MasterKey(format!(
            "{} is readable by other users; run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_path: &Path) -> Result<(), StorageError> {
    Ok(())
}

/// Writes `key` as hex to a new file readable by its owner only, synced with its directory.
/// Refuses to overwrite an existing file.
pub fn write_key_file(path: &Path, key: &SecretKey) -> Result<(), StorageError> {
    write_owner_only(path, key.to_hex().as_bytes())
}

/// Reads a key file written by [`write_key_file`] (or `init`), refusing one others may read.
pub fn read_key_file(path: &Path) -> Result<SecretKey, StorageError> {
    let s = std::fs::read_to_string(path)
        .map_err(StorageError::io(format!("reading {}", path.display())))?;
    check_owner_only(path)?;
    SecretKey::from_hex(&s)
}

/// Reads a secret file written by [`write_owner_only`], refusing one others may read.
pub fn read_owner_only(path: &Path) -> Result<Vec<u8>, StorageError> {
    let bytes =
        std::fs::read(path).map_err(StorageError::io(format!("reading {}", path.display())))?;
    check_owner_only(path)?;
    Ok(bytes)
}

/// Moves the next master key over the current one (atomically, synced).
pub fn install_next_master_key(data_dir: &Path) -> Result<(), StorageError> {
    let next = data_dir.join(NEXT_MASTER_KEY_FILE);
    let current = data_dir.join(MASTER_KEY_FILE);
    std::fs::rename(&next, &current).map_err(StorageError::io(format!(
        "moving {} over {}",
        next.display(),
        current.display()
    )))?;
    crate::atomic::sync_dir(data_dir)
}

/// Writes `contents` to a new file readable by its owner only, synced with its directory.
/// Refuses to overwrite an existing file.
pub fn write_owner_only(path: &Path, contents: &[u8]) -> Result<(), StorageError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(StorageError::io(format!("creating {}", path.display())))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(StorageError::io(format!("writing {}", path.display())))?;
    crate::atomic::sync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trips_and_binds_purpose() {
        let kek = SecretKey::generate().unwrap();
        let dek = SecretKey::generate().unwrap();
        let w = kek.wrap(&dek, "dataset:1").unwrap();
        assert_eq!(
            kek.unwrap_key(&w, "dataset:1").unwrap().expose(),
            dek.expose()
        );
        assert!(kek.unwrap_key(&w, "dataset:2").is_err());
        let other = SecretKey::generate().unwrap();
        assert!(other.unwrap_key(&w, "dataset:1").is_err());
        let mut tampered = w.clone();
        tampered[20] ^= 1;
        assert!(kek.unwrap_key(&tampered, "dataset:1").is_err());
        assert_eq!(format!("{dek:?}"), "SecretKey([redacted])");
    }

    #[test]
    fn master_key_file_is_created_owner_only_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, s1) = load_master_key(dir.path(), None, true).unwrap();
        assert_eq!(s1, MasterKeySource::CreatedFile);
        let (k2, s2) = load_master_key(dir.path(), None, false).unwrap();
        assert_eq!(s2, MasterKeySource::ExistingFile);
        assert_eq!(k1.expose(), k2.expose());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(
                dir.path().join(MASTER_KEY_FILE),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            assert!(load_master_key(dir.path(), None, false).is_err());
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(load_master_key(empty.path(), None, false).is_err());
        let (k3, s3) = load_master_key(empty.path(), Some(&"ab".repeat(32)), false).unwrap();
        assert_eq!(s3, MasterKeySource::Environment);
        assert_eq!(k3.expose(), &[0xab; 32]);
        assert!(load_master_key(empty.path(), Some("short"), false).is_err());
    }
}
