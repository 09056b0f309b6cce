//! Master-key rotation: a new master key re-wraps every collaboration key (and the key check),
//! in one metadata transaction with its audit entry. No data file is touched: dataset keys are
//! wrapped by collaboration keys, which do not change.
//!
//! The room is opened for it (the server stopped: the data directory's lock is held), and the
//! order makes a crash at any point recoverable:
//! 1. the new key is written, synced, to `master.key.next` (or, when the key comes from the
//!    environment, to the file the operator names);
//! 2. the wrapped keys are replaced and the rotation audited, in one transaction;
//! 3. `master.key.next` is moved over `master.key`.
//!
//! Opening a room with a `master.key.next` beside `master.key` finishes or undoes a rotation a
//! crash interrupted ([`settle_rotation`]): if the current key still opens the key check, the
//! transaction never committed and the next key is removed; if only the next key opens it, the
//! transaction committed and the next key is moved into place.

use std::path::{Path, PathBuf};

use cleanroom_core::audit::{Action, Outcome};
use cleanroom_meta::MetaStore;
use cleanroom_storage::keys::{
    MASTER_KEY_FILE, NEXT_MASTER_KEY_FILE, install_next_master_key, read_key_file, write_key_file,
};
use cleanroom_storage::{MasterKeySource, SecretKey};

use super::{AuditCtx, CleanRoom, collab_purpose};
use crate::ServiceError;

/// The setting holding a key wrapped by the master key, to tell the right master key.
use super::MASTER_KEY_CHECK as KEY_CHECK;

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// Collaboration keys re-wrapped under the new master key.
    pub collaboration_keys: usize,
    /// Where the new master key is now.
    pub new_key_at: PathBuf,
}

fn invalid(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::InvalidInput(e.to_string())
}

impl CleanRoom {
    /// Rotates the master key and closes the room. With a key file in the data directory the
    /// new key replaces it; with a key from the environment (`CLEANROOM_MASTER_KEY`) the new
    /// key is written to `new_key_out` (required, a new file), and the operator puts it where
    /// the environment gets it from.
    pub async fn rotate_master_key(
        self,
        data_dir: &Path,
        new_key_out: Option<&Path>,
    ) -> Result<Rotated, ServiceError> {
        let result = self.rotate(data_dir, new_key_out).await;
        self.close().await;
        result
    }

    async fn rotate(
        &self,
        data_dir: &Path,
        new_key_out: Option<&Path>,
    ) -> Result<Rotated, ServiceError> {
        let staged = match (self.master_key_source, new_key_out) {
            (MasterKeySource::Environment, None) => {
                return Err(invalid(
                    "the master key comes from CLEANROOM_MASTER_KEY: pass --new-key-out FILE for the new \
                     key, then put it where CLEANROOM_MASTER_KEY comes from",
                ));
            }
            (MasterKeySource::Environment, Some(out)) => out.to_owned(),
            (_, Some(_)) => {
                return Err(invalid(
                    "the master key is the data directory's master.key, which the rotation replaces; \
                     --new-key-out is for a key from CLEANROOM_MASTER_KEY",
                ));
            }
            (_, None) => data_dir.join(NEXT_MASTER_KEY_FILE),
        };
        let next = SecretKey::generate()?;
        let mut collaborations = Vec::new();
        for (id, wrapped) in self.meta.collaboration_keys().await? {
            let purpose = collab_purpose(id);
            let key = self.master.unwrap_key(&wrapped, &purpose)?;
            collaborations.push((id, next.wrap(&key, &purpose)?));
        }
        let check = self
            .meta
            .get_setting(KEY_CHECK)
            .await?
            .ok_or_else(|| ServiceError::Internal("the master key check is missing".into()))?;
        let check = next.wrap(&self.master.unwrap_key(&check, KEY_CHECK)?, KEY_CHECK)?;
        write_key_file(&staged, &next).map_err(|e| {
            invalid(format!(
                "cannot write the new master key (nothing was changed): {e}"
            ))
        })?;
        let ctx = AuditCtx::system("operator", Action::MasterKeyRotate, "master key");
        let audit = ctx.entry(
            Outcome::Allowed,
            format!(
                "re-wrapped {} collaboration key(s) under a new master key; no data file changed",
                collaborations.len()
            ),
        );
        if let Err(e) = self
            .meta
            .rewrap_keys(&collaborations, &[(KEY_CHECK, check)], audit)
            .await
        {
            if self.master_key_source != MasterKeySource::Environment {
                // Not committed: the current key stays; the next one goes.
                let _ = std::fs::remove_file(&staged);
            }
            return Err(e.into());
        }
        let new_key_at = if self.master_key_source == MasterKeySource::Environment {
            staged
        } else {
            install_next_master_key(data_dir)?;
            data_dir.join(MASTER_KEY_FILE)
        };
        Ok(Rotated {
            collaboration_keys: collaborations.len(),
            new_key_at,
        })
    }
}

/// Finishes or undoes a rotation a crash interrupted (see the module's documentation), and
/// returns the master key to open the room with.
pub(super) async fn settle_rotation(
    data_dir: &Path,
    meta: &dyn MetaStore,
    current: SecretKey,
    source: MasterKeySource,
) -> Result<SecretKey, ServiceError> {
    let next_file = data_dir.join(NEXT_MASTER_KEY_FILE);
    if source == MasterKeySource::Environment || !next_file.exists() {
        return Ok(current);
    }
    let Some(check) = meta.get_setting(KEY_CHECK).await? else {
        std::fs::remove_file(&next_file).map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        return Ok(current);
    };
    if current.unwrap_key(&check, KEY_CHECK).is_ok() {
        tracing::warn!("a master-key rotation was interrupted before it changed anything; undone");
        std::fs::remove_file(&next_file).map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        return Ok(current);
    }
    let next = read_key_file(&next_file).map_err(invalid)?;
    if next.unwrap_key(&check, KEY_CHECK).is_err() {
        return Err(invalid(
            "neither master.key nor master.key.next opens this data directory's keys",
        ));
    }
    tracing::warn!("a master-key rotation was interrupted after it re-wrapped the keys; finished");
    install_next_master_key(data_dir)?;
    Ok(next)
}
