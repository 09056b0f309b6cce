//! Encrypted dataset storage: validating uploads, encrypting them as Parquet, keys, atomic
//! writes and crypto-shredding. Dataset files go through the narrow [`DatasetFiles`] trait
//! (the local directory here; S3 in `cleanroom-objstore`). Knows nothing of HTTP or SQL.

pub mod atomic;
pub mod dataset;
pub mod error;
pub mod files;
pub mod ingest;
pub mod keys;
pub mod spool;

pub use dataset::{DatasetStore, EncryptedDataset, EncryptedWriter, StoredDataset};
pub use error::StorageError;
pub use files::{DatasetFiles, FileRead, FileWrite, LocalFiles, StoredFile};
pub use keys::{MasterKeySource, SecretKey, load_master_key};
pub use spool::SealedSpool;
