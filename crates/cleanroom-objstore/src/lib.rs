//! Dataset files in S3-compatible object storage: the [`DatasetFiles`] backend behind
//! `--data-store s3://bucket/prefix`, through the `object_store` crate (the one DataFusion
//! reads from).
//!
//! What the bucket sees: objects `<prefix>/datasets/<collaboration>/<dataset>.parquet` whose
//! bytes are Parquet files encrypted with per-dataset keys before they leave the process (the
//! bucket's own encryption is no substitute and is not relied on), and short-lived
//! `<prefix>/tmp/.probe-*` objects. No key, no plaintext row, no name of a party or dataset.
//!
//! Writes stream as multipart uploads straight to the final key: an uploaded part is not an
//! object, so nothing is visible (listed or readable) until `CompleteMultipartUpload`, which is
//! the commit. A write dropped before its commit is aborted; one cut off by a crash leaves
//! parts that are not an object either, which the bucket's `AbortIncompleteMultipartUpload`
//! lifecycle rule reclaims (object_store cannot list pending uploads, so this backend cannot).
//!
//! Endpoint, region and credentials come from the usual environment variables
//! (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP` for a plain-HTTP endpoint on a private network, …),
//! read by `AmazonS3Builder::from_env`.
//!
//! The interface is blocking, as [`DatasetFiles`] is: each call runs on the tokio runtime given
//! at construction and must be made from a thread that may block (a `spawn_blocking` task or a
//! plain thread), never from async code.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_storage::files::{FileRead, FileWrite, StoredFile, dataset_key, parse_dataset_key};
use cleanroom_storage::{DatasetFiles, StorageError};
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart,
};
use tokio::runtime::Handle;

/// Bytes per multipart part (S3 wants at least 5 MiB for every part but the last).
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploaded at once per write: bounds a write's memory to about this many parts.
const PARTS_IN_FLIGHT: usize = 4;

/// `s3://bucket/prefix` as given to `--data-store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl S3Url {
    /// Reads `s3://bucket` or `s3://bucket/some/prefix`.
    pub fn parse(url: &str) -> Result<S3Url, String> {
        let rest = url.trim().strip_prefix("s3://").ok_or_else(|| {
            format!("`{url}` is not an S3 location: write it as s3://bucket/prefix")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid_bucket {
            return Err(format!(
                "`{bucket}` is not a valid bucket name (3 to 63 lowercase letters, digits, '-' and '.')"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|seg| seg == ".." || seg == "." || (seg.is_empty() && !prefix.is_empty()))
        {
            return Err(format!(
                "`{prefix}` is not a usable prefix: no empty, `.` or `..` segments"
            ));
        }
        Ok(S3Url {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Dataset files under one prefix of one bucket.
#[derive(Clone)]
pub struct S3Files {
    store: Arc<dyn ObjectStore>,
    url: S3Url,
    rt: Handle,
}

impl std::fmt::Debug for S3Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The store's own Debug would show its configuration; the URL says enough.
        f.debug_struct("S3Files")
            .field("url", &self.url.to_string())
            .finish_non_exhaustive()
    }
}

fn remote(context: &str) -> impl FnOnce(object_store::Error) -> StorageError + '_ {
    move |e| StorageError::Remote {
        context: context.to_owned(),
        message: e.to_string(),
    }
}

impl S3Files {
    /// The bucket and prefix of `url`, with endpoint, region and credentials from the
    /// environment; calls run on `rt`.
    pub fn from_env(url: &S3Url, rt: Handle) -> Result<S3Files, StorageError> {
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(&url.bucket)
            // Fail within seconds, not minutes, when the store is down or unreachable: a
            // readiness probe or a start-up must say so while the operator is watching.
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "5s",
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
            })
            .build()
            .map_err(remote("configuring the S3 client"))?;
        Ok(Self::with_store(Arc::new(s3), url.clone(), rt))
    }

    /// Any object store (a bucket's root) holding the files under `url.prefix`.
    pub fn with_store(root: Arc<dyn ObjectStore>, url: S3Url, rt: Handle) -> S3Files {
        let store: Arc<dyn ObjectStore> = if url.prefix.is_empty() {
            root
        } else {
            Arc::new(PrefixStore::new(root, url.prefix.as_str()))
        };
        S3Files { store, url, rt }
    }

    /// The store the files are in (relative to the prefix), e.g. for a query engine.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

fn key(collab: CollaborationId, dataset: DatasetId) -> Path {
    Path::from(dataset_key(collab, dataset))
}

impl DatasetFiles for S3Files {
    fn begin_write(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
    ) -> Result<Box<dyn FileWrite>, StorageError> {
        let upload = self
            .block_on(self.store.put_multipart(&key(collab, dataset)))
            .map_err(remote("starting a multipart upload"))?;
        Ok(Box::new(S3Write {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_BYTES)),
            rt: self.rt.clone(),
            bytes: 0,
            since_check: 0,
        }))
    }

    fn open_read(
        &self,
        collab: CollaborationId,
        dataset: DatasetId,
    ) -> Result<Arc<dyn FileRead>, StorageError> {
        let path = key(collab, dataset);
        let meta = self
            .block_on(self.store.head(&path))
            .map_err(remote("opening a dataset object"))?;
        Ok(Arc::new(S3Read {
            store: self.store.clone(),
            path,
            len: meta.size,
            rt: self.rt.clone(),
        }))
    }

    fn list(&self) -> Result<Vec<StoredFile>, StorageError> {
        let metas: Vec<object_store::ObjectMeta> = self
            .block_on(self.store.list(Some(&Path::from("datasets"))).try_collect())
            .map_err(remote("listing dataset objects"))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let (collab, dataset) = parse_dataset_key(m.location.as_ref())?;
                Some(StoredFile {
                    collab,
                    dataset,
                    bytes: m.size,
                    modified: m.last_modified.into(),
                })
            })
            .collect())
    }

    fn remove(&self, collab: CollaborationId, dataset: DatasetId) -> Result<bool, StorageError> {
        let path = key(collab, dataset);
        // S3 deletes a missing key without complaint: ask first, to say whether there was one.
        match self.block_on(self.store.head(&path)) {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(remote("looking up a dataset object")(e)),
        }
        self.block_on(self.store.delete(&path))
            .map_err(remote("deleting a dataset object"))?;
        Ok(true)
    }

    fn remove_collaboration(&self, collab: CollaborationId) -> Result<usize, StorageError> {
        let prefix = Path::from(format!("datasets/{collab}"));
        let store = self.store.clone();
        self.block_on(async move {
            let metas: Vec<object_store::ObjectMeta> = store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(remote("listing a collaboration's objects"))?;
            for m in &metas {
                store
                    .delete(&m.location)
                    .await
                    .map_err(remote("deleting a collaboration's objects"))?;
            }
            Ok(metas.len())
        })
    }

    fn remove_unfinished(&self) -> Result<usize, StorageError> {
        // Pending multipart uploads are not objects and object_store cannot list them: the
        // bucket's AbortIncompleteMultipartUpload lifecycle rule reclaims them (README).
        Ok(0)
    }

    fn probe(&self) -> Result<(), StorageError> {
        let path = Path::from(format!("tmp/.probe-{}", uuid::Uuid::new_v4()));
        let store = self.store.clone();
        self.block_on(async move {
            store
                .put(&path, Bytes::from_static(b"probe").into())
                .await
                .map_err(remote("writing a probe object"))?;
            store
                .delete(&path)
                .await
                .map_err(remote("removing a probe object"))?;
            Ok(())
        })
    }

    fn describe(&self) -> String {
        self.url.to_string()
    }

    fn identity(&self) -> String {
        self.url.to_string()
    }
}

/// A multipart upload in progress; aborted if dropped before [`FileWrite::commit`].
struct S3Write {
    upload: Option<WriteMultipart>,
    rt: Handle,
    bytes: u64,
    /// Bytes handed over since the last wait for upload capacity.
    since_check: usize,
}

impl Write for S3Write {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| std::io::Error::other("write after commit"))?;
        {
            // Full parts are uploaded by tasks spawned on the runtime.
            let _in_runtime = self.rt.enter();
            upload.write(buf);
        }
        self.bytes += buf.len() as u64;
        self.since_check += buf.len();
        if self.since_check >= PART_BYTES {
            self.since_check = 0;
            // Back-pressure, and the first failed part surfaces here rather than at commit.
            self.rt
                .block_on(upload.wait_for_capacity(PARTS_IN_FLIGHT))
                .map_err(std::io::Error::other)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl FileWrite for S3Write {
    fn commit(mut self: Box<Self>) -> Result<u64, StorageError> {
        let upload = self
            .upload
            .take()
            .ok_or_else(|| StorageError::Internal("commit of a finished upload".into()))?;
        // Uploads the last part and completes the upload: the object appears, whole, now.
        // On failure `finish` aborts the upload itself.
        self.rt
            .block_on(upload.finish())
            .map_err(remote("completing a multipart upload"))?;
        Ok(self.bytes)
    }
}

impl Drop for S3Write {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            // Not committed: abort, so the parts do not linger (nothing was ever visible).
            self.rt.spawn(async move {
                if let Err(e) = upload.abort().await {
                    tracing::warn!(error = %e, "could not abort an unfinished multipart upload; the bucket's lifecycle rule will");
                }
            });
        }
    }
}

/// A committed object, read by ranged GETs.
struct S3Read {
    store: Arc<dyn ObjectStore>,
    path: Path,
    len: u64,
    rt: Handle,
}

impl FileRead for S3Read {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_range(&self, start: u64, len: usize) -> Result<Bytes, StorageError> {
        let end = start.saturating_add(len as u64).min(self.len);
        if start >= end {
            return Ok(Bytes::new());
        }
        self.rt
            .block_on(self.store.get_range(&self.path, start..end))
            .map_err(remote("reading a dataset object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print_back() {
        let u = S3Url::parse("s3://my-bucket/rooms/prod/").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.prefix.as_str()),
            ("my-bucket", "rooms/prod")
        );
        assert_eq!(u.to_string(), "s3://my-bucket/rooms/prod");
        assert_eq!(S3Url::parse("s3://abc").unwrap().to_string(), "s3://abc");
        for bad in [
            "http://bucket/x",
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://-bucket",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "s3://bucket/./a",
            "/var/lib/cleanroom",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
