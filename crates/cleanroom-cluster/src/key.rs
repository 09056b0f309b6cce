//! The cluster key: how a dataset key travels from the server to the executors that read the
//! dataset for one query, and to nothing else.
//!
//! The server and every executor of the room's cluster hold the same 32-byte cluster key, from
//! a file only their operator can read (`cleanroom cluster-key FILE` makes one). When a plan
//! names an encrypted dataset, the server puts the dataset key into it wrapped under the
//! cluster key with AES-256-GCM, a fresh nonce, and the dataset's identity as associated data
//! ([`SecretKey::wrap`]). The scheduler, which plans and forwards but does not read data, never
//! holds the cluster key: a plan's text, its logs and the scheduler's state carry only the
//! wrapped form. An executor unwraps the key in memory when a task reads the dataset, and
//! keeps it no longer than that task.

use std::path::Path;

use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_storage::keys::{SecretKey, read_key_file, write_key_file};
use cleanroom_storage::{EncryptedDataset, StorageError};

use crate::ClusterError;

/// The key shared by the server and the executors of a room's cluster.
#[derive(Clone)]
pub struct ClusterKey(std::sync::Arc<SecretKey>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<withheld>)")
    }
}

/// What a dataset key is bound to when wrapped: the dataset and its collaboration.
fn purpose(collab: CollaborationId, dataset: DatasetId) -> String {
    format!("cleanroom-cluster/v1/dataset-key/{collab}/{dataset}")
}

impl ClusterKey {
    /// A fresh key from the operating system's generator.
    pub fn generate() -> Result<Self, ClusterError> {
        Ok(ClusterKey(std::sync::Arc::new(SecretKey::generate()?)))
    }

    /// Writes a new key to `path`, which must not exist (created readable by its owner only).
    pub fn create_file(path: &Path) -> Result<Self, ClusterError> {
        if path.exists() {
            return Err(ClusterError::Config(format!(
                "{} exists already: a cluster key is never overwritten (every executor and the \
                 server must hold the same one)",
                path.display()
            )));
        }
        let key = SecretKey::generate()?;
        write_key_file(path, &key).map_err(|e| {
            ClusterError::Config(format!("writing the cluster key {}: {e}", path.display()))
        })?;
        Ok(ClusterKey(std::sync::Arc::new(key)))
    }

    /// Reads the key file made by [`ClusterKey::create_file`].
    pub fn read_file(path: &Path) -> Result<Self, ClusterError> {
        let key = read_key_file(path).map_err(|e| {
            ClusterError::Config(format!(
                "reading the cluster key {}: {e} (make one with `cleanroom cluster-key FILE`)",
                path.display()
            ))
        })?;
        Ok(ClusterKey(std::sync::Arc::new(key)))
    }

    /// `data`'s key, wrapped for the executors.
    pub fn wrap_for(&self, data: &EncryptedDataset) -> Result<Vec<u8>, StorageError> {
        data.wrapped_key(&self.0, &purpose(data.collaboration(), data.dataset()))
    }

    /// Reverses [`ClusterKey::wrap_for`]; fails when the key was wrapped under another
    /// cluster key or for another dataset.
    pub fn unwrap_for(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
        wrapped: &[u8],
    ) -> Result<SecretKey, ClusterError> {
        self.0
            .unwrap_key(wrapped, &purpose(collab, dataset))
            .map_err(|_| {
                ClusterError::Config(format!(
                    "the key of dataset {dataset} was not wrapped under this executor's cluster \
                     key: the server and every executor must be given the same --cluster-key"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let made = ClusterKey::create_file(&path).unwrap();
        let read = ClusterKey::read_file(&path).unwrap();
        assert_eq!(made.0.expose(), read.0.expose());
        let again = ClusterKey::create_file(&path).unwrap_err().to_string();
        assert!(again.contains("never overwritten"), "{again}");
        assert!(format!("{made:?}").contains("withheld"));
        let missing = ClusterKey::read_file(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cleanroom cluster-key"), "{missing}");
    }
}
