//! An encrypted dataset as it travels through a cluster.
//!
//! - On the **server**, a plan's table is the query layer's [`EncryptedTable`]: it holds the
//!   dataset key. The logical codec turns it into a [`ScanRef`]: the dataset's identity, its
//!   file's length, and its key wrapped under the cluster key ([`crate::key`]).
//! - On the **scheduler**, that reference becomes a [`ClusterTable`], whose scan is DataFusion's
//!   own file scan (a `DataSourceExec` over a `FileScanConfig`) of the whole file with a
//!   [`RoomScanSource`]: a Parquet source that cannot read (the scheduler holds no key) but lets
//!   DataFusion split the file into byte ranges and Ballista give each task its own ranges, as
//!   it does for any file scan.
//! - On an **executor**, the physical codec rebuilds that scan, with the task's ranges, as
//!   DataFusion's encrypted Parquet scan ([`encrypted_scan`]): the key unwrapped in memory, the
//!   bytes read through the executor's own view of the room's store (the same bucket or shared
//!   directory the server writes), opened at the first read.
//!
//! [`EncryptedTable`]: cleanroom_query::provider::EncryptedTable

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use bytes::Bytes;
use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_query::provider::{ScanShape, encrypted_scan, scan_path};
use cleanroom_storage::dataset::decryption_properties;
use cleanroom_storage::files::ChunkSource;
use cleanroom_storage::{DatasetFiles, DatasetStore, EncryptedDataset, FileRead, StorageError};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::config::ParquetOptions;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileOpener, FileScanConfig, FileScanConfigBuilder, FileSource, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use object_store::ObjectStore;

use crate::key::ClusterKey;

/// Which dataset a scan reads, and its key wrapped for the executors. Never holds a key in
/// the clear, so it may appear in a plan, a log line or the scheduler's state.
#[derive(Clone, PartialEq, Eq)]
pub struct ScanRef {
    pub collab: CollaborationId,
    pub dataset: DatasetId,
    /// The file's length in bytes: what the scheduler splits into byte ranges.
    pub file_len: u64,
    /// The dataset key under the cluster key ([`ClusterKey::wrap_for`]), hex.
    pub wrapped_key: String,
}

impl fmt::Debug for ScanRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanRef")
            .field("collab", &self.collab)
            .field("dataset", &self.dataset)
            .field("file_len", &self.file_len)
            .finish_non_exhaustive()
    }
}

impl ScanRef {
    /// The reference to `data`, its key wrapped under `key`.
    pub fn new(data: &EncryptedDataset, key: &ClusterKey) -> DfResult<ScanRef> {
        let wrapped = key
            .wrap_for(data)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(ScanRef {
            collab: data.collaboration(),
            dataset: data.dataset(),
            file_len: data.file().0.len(),
            wrapped_key: hex::encode(wrapped),
        })
    }
}

/// How an executor reaches the room's data: its dataset files and the cluster key.
#[derive(Clone)]
pub struct Readers {
    pub store: DatasetStore,
    pub key: ClusterKey,
}

impl fmt::Debug for Readers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readers")
            .field("store", &self.store.files().describe())
            .finish_non_exhaustive()
    }
}

impl Readers {
    /// Reading the datasets of a room's local data directory (shared with the server).
    pub fn local(data_dir: &std::path::Path, key: ClusterKey) -> Result<Self, StorageError> {
        Ok(Readers {
            store: DatasetStore::open(data_dir)?,
            key,
        })
    }

    /// Reading the datasets of a room's store on any backend (an S3 bucket).
    pub fn on(files: Arc<dyn DatasetFiles>, key: ClusterKey) -> Self {
        Readers {
            store: DatasetStore::new(files),
            key,
        }
    }
}

/// What a task's scan reads: the columns, the limit, and its byte ranges of the file.
#[derive(Debug, Clone)]
pub struct TaskScan {
    pub projection: Option<Vec<usize>>,
    pub limit: Option<usize>,
    pub groups: Vec<Vec<Range<u64>>>,
}

impl Readers {
    /// DataFusion's encrypted Parquet scan of `scan`'s ranges: the key unwrapped here, in
    /// memory; the file opened at its first read (on a blocking thread, as every read is).
    pub fn scan(
        &self,
        schema: SchemaRef,
        scan: &ScanRef,
        task: TaskScan,
        options: ParquetOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let external = |e: Box<dyn std::error::Error + Send + Sync>| DataFusionError::External(e);
        let wrapped = hex::decode(&scan.wrapped_key).map_err(|e| external(Box::new(e)))?;
        let key = self
            .key
            .unwrap_for(scan.collab, scan.dataset, &wrapped)
            .map_err(|e| external(Box::new(e)))?;
        let decryption =
            decryption_properties(scan.dataset, &key).map_err(|e| external(Box::new(e)))?;
        let file = ChunkSource(Arc::new(LazyFile {
            files: Arc::clone(self.store.files()),
            collab: scan.collab,
            dataset: scan.dataset,
            len: scan.file_len,
            open: OnceLock::new(),
        }));
        encrypted_scan(
            schema,
            file,
            decryption,
            scan.dataset,
            ScanShape {
                projection: task.projection,
                predicate: None,
                limit: task.limit,
                groups: Some(task.groups),
                options,
            },
        )
    }
}

/// A dataset file opened at its first read, of the length the plan was made for.
struct LazyFile {
    files: Arc<dyn DatasetFiles>,
    collab: CollaborationId,
    dataset: DatasetId,
    len: u64,
    open: OnceLock<Arc<dyn FileRead>>,
}

impl FileRead for LazyFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_range(&self, start: u64, len: usize) -> Result<Bytes, StorageError> {
        let file = match self.open.get() {
            Some(f) => f,
            None => {
                let f = self.files.open_read(self.collab, self.dataset)?;
                if f.len() != self.len {
                    return Err(StorageError::Internal(format!(
                        "dataset {} changed since the analysis was planned ({} bytes, {} \
                         expected)",
                        self.dataset,
                        f.len(),
                        self.len
                    )));
                }
                self.open.get_or_init(|| f)
            }
        };
        file.read_range(start, len)
    }
}

/// An encrypted dataset on the scheduler: a schema and a [`ScanRef`], nothing to read with.
#[derive(Debug)]
pub struct ClusterTable {
    pub schema: SchemaRef,
    pub scan: ScanRef,
}

#[async_trait]
impl TableProvider for ClusterTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// As on the server: the plan applies every filter itself.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let source = RoomScanSource {
            inner: ParquetSource::new(Arc::clone(&self.schema)),
            scan: self.scan.clone(),
        };
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .with_file(PartitionedFile::new(
                    scan_path(self.scan.dataset),
                    self.scan.file_len,
                ))
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The file source of an encrypted dataset's scan on the scheduler: DataFusion plans and
/// splits it as a Parquet scan, Ballista restricts each task to its byte ranges, and the
/// physical codec carries it to the executors, which read it ([`Readers::scan`]). It cannot
/// read itself: the scheduler holds no key.
#[derive(Clone)]
pub struct RoomScanSource {
    inner: ParquetSource,
    pub scan: ScanRef,
}

impl fmt::Debug for RoomScanSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomScanSource")
            .field("scan", &self.scan)
            .finish_non_exhaustive()
    }
}

impl RoomScanSource {
    fn rewrap(&self, inner: Arc<dyn FileSource>) -> DfResult<Arc<dyn FileSource>> {
        let inner = inner
            .downcast_ref::<ParquetSource>()
            .cloned()
            .ok_or_else(|| DataFusionError::Internal("a Parquet source changed its kind".into()))?;
        Ok(Arc::new(RoomScanSource {
            inner,
            scan: self.scan.clone(),
        }))
    }

    /// The columns read, by index in the table's schema, when they are plain columns (the
    /// only projections this source takes).
    pub fn column_projection(&self) -> DfResult<Option<Vec<usize>>> {
        let Some(p) = self.inner.projection() else {
            return Ok(None);
        };
        p.iter()
            .map(|e| match e.expr.downcast_ref::<Column>() {
                Some(c) if c.name() == e.alias => Ok(c.index()),
                _ => Err(DataFusionError::Internal(
                    "an encrypted scan projects plain columns only".into(),
                )),
            })
            .collect::<DfResult<Vec<_>>>()
            .map(Some)
    }
}

impl FileSource for RoomScanSource {
    fn create_file_opener(
        &self,
        _object_store: Arc<dyn ObjectStore>,
        _base_config: &FileScanConfig,
        _partition: usize,
    ) -> DfResult<Arc<dyn FileOpener>> {
        Err(DataFusionError::Internal(
            "only an executor of the room's cluster reads datasets: this process holds no \
             cluster key"
                .into(),
        ))
    }

    fn table_schema(&self) -> &TableSchema {
        self.inner.table_schema()
    }

    fn with_batch_size(&self, batch_size: usize) -> Arc<dyn FileSource> {
        let inner = self.inner.with_batch_size(batch_size);
        self.rewrap(inner)
            .unwrap_or_else(|_| Arc::new(self.clone()) as Arc<dyn FileSource>)
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        self.inner.projection()
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        self.inner.metrics()
    }

    fn file_type(&self) -> &str {
        "parquet"
    }

    /// Plain columns only, so that what an executor reads is a list of columns.
    fn try_pushdown_projection(
        &self,
        projection: &ProjectionExprs,
    ) -> DfResult<Option<Arc<dyn FileSource>>> {
        let plain = projection.iter().all(|e| {
            e.expr
                .downcast_ref::<Column>()
                .is_some_and(|c| c.name() == e.alias)
        });
        if !plain {
            return Ok(None);
        }
        match self.inner.try_pushdown_projection(projection)? {
            Some(inner) => self.rewrap(inner).map(Some),
            None => Ok(None),
        }
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }
}
