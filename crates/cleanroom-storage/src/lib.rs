//! Encrypted dataset storage: validating uploads, encrypting them as Parquet, keys, atomic
//! writes and crypto-shredding. Knows the file system; knows nothing of HTTP or SQL.

pub mod atomic;
pub mod dataset;
pub mod error;
pub mod ingest;
pub mod keys;

pub use dataset::{DatasetStore, EncryptedDataset, EncryptedWriter, StoredDataset};
pub use error::StorageError;
pub use keys::{MasterKeySource, SecretKey, load_master_key};
