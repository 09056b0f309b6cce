//! A DataFusion table over an encrypted dataset, read by DataFusion's own Parquet scan.
//!
//! The scan is DataFusion's ([`ParquetSource`] in a [`DataSourceExec`]): it splits the file
//! across partitions by byte range, reads only the projected columns, prunes row groups and
//! pages with the filters' statistics, and fetches bytes asynchronously. Two hooks make it read
//! our files and nothing else:
//! - [`BackendReaders`]: the bytes come from the dataset's [`DatasetFiles`] backend (the local
//!   directory or S3) by byte ranges, never from a path DataFusion opens itself, and never
//!   through a local copy;
//! - [`DatasetDecryption`]: Parquet modular encryption's keys for this one file (the dataset
//!   key and the AAD prefix binding the file to its dataset), handed to the scan in memory.
//!
//! Plaintext exists only in the decoded batches, in memory. Decrypted footers are not cached
//! across analyses (no metadata cache is used). The provider is registered only in sessions
//! that execute a plan built by [`crate::rewrite`] from a checked query: no analyst SQL ever
//! runs against it.
//!
//! [`DatasetFiles`]: cleanroom_storage::DatasetFiles

use std::ops::Range;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use bytes::Bytes;
use cleanroom_core::ids::DatasetId;
use cleanroom_storage::EncryptedDataset;
use cleanroom_storage::files::ChunkSource;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, DataFusionError, Result as DfResult};
use datafusion::config::{EncryptionFactoryOptions, ParquetOptions, TableParquetOptions};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::FileGroup;
use datafusion::datasource::physical_plan::{
    FileScanConfigBuilder, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::parquet_encryption::EncryptionFactory;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::reader::ChunkReader;

/// An encrypted dataset as a table.
#[derive(Debug)]
pub struct EncryptedTable {
    schema: SchemaRef,
    data: EncryptedDataset,
}

impl EncryptedTable {
    pub fn new(schema: SchemaRef, data: EncryptedDataset) -> Self {
        EncryptedTable { schema, data }
    }

    /// The encrypted dataset this table reads.
    pub fn data(&self) -> &EncryptedDataset {
        &self.data
    }
}

#[async_trait]
impl TableProvider for EncryptedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters reach the scan for pruning only; the plan still applies every one of them
    /// (`Inexact`), so a row is never kept or dropped by statistics alone.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(predicate) => {
                let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
                Some(state.create_physical_expr(predicate, &df_schema)?)
            }
            None => None,
        };
        let options = state.config_options().execution.parquet.clone();
        scan_exec(
            Arc::clone(&self.schema),
            &self.data,
            ScanShape {
                projection: projection.cloned(),
                predicate,
                limit,
                groups: None,
                options,
            },
        )
    }
}

/// What a scan reads of its file, and how it splits it.
#[derive(Debug, Clone, Default)]
pub struct ScanShape {
    /// The columns, by index in the table's schema; `None`: all.
    pub projection: Option<Vec<usize>>,
    /// Used only to prune row groups and pages by their statistics: the plan above the scan
    /// applies every filter itself.
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
    pub limit: Option<usize>,
    /// `Some(groups)`: one partition per group, each reading these byte ranges of the file (a
    /// row group belongs to the range holding its middle), for a plan whose partitioning was
    /// decided elsewhere (a cluster's scheduler, which gives each task its own groups).
    /// `None`: the whole file, which DataFusion splits itself.
    pub groups: Option<Vec<Vec<Range<u64>>>>,
    pub options: ParquetOptions,
}

/// The object path a scan of `dataset` names: bookkeeping only, as no byte is read through
/// an object store.
pub fn scan_path(dataset: DatasetId) -> String {
    format!("cleanroom/{dataset}.parquet")
}

/// DataFusion's Parquet scan of `data`, reading through its backend and decrypting in memory.
pub fn scan_exec(
    schema: SchemaRef,
    data: &EncryptedDataset,
    shape: ScanShape,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let decryption = data
        .decryption()
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    encrypted_scan(schema, data.file(), decryption, data.dataset(), shape)
}

/// DataFusion's Parquet scan of the encrypted file of `dataset`, its bytes read from `file` (by
/// ranges, on blocking threads) and decrypted in memory with `decryption`.
pub fn encrypted_scan(
    schema: SchemaRef,
    file: ChunkSource,
    decryption: Arc<FileDecryptionProperties>,
    dataset: DatasetId,
    shape: ScanShape,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let options = TableParquetOptions {
        global: shape.options,
        ..TableParquetOptions::default()
    };
    let len = file.0.len();
    let mut source = ParquetSource::new(Arc::clone(&schema))
        .with_table_parquet_options(options)
        .with_parquet_file_reader_factory(Arc::new(BackendReaders { file }))
        .with_encryption_factory(Arc::new(DatasetDecryption(decryption)));
    if let Some(predicate) = shape.predicate {
        source = source.with_predicate(predicate);
    }
    // The URL and path only name the file for DataFusion's bookkeeping: every byte is read
    // through `BackendReaders`, never through an object store.
    let path = scan_path(dataset);
    let builder = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
        .with_projection_indices(shape.projection)?
        .with_limit(shape.limit);
    let builder = match shape.groups {
        None => builder.with_file(PartitionedFile::new(path, len)),
        Some(groups) => builder.with_file_groups(
            groups
                .into_iter()
                .map(|ranges| {
                    FileGroup::new(
                        ranges
                            .into_iter()
                            .map(|r| {
                                PartitionedFile::new(path.clone(), len)
                                    .with_range(r.start as i64, r.end as i64)
                            })
                            .collect(),
                    )
                })
                .collect(),
        ),
    };
    Ok(DataSourceExec::from_data_source(builder.build()))
}

/// The decryption keys of the one file a scan reads. Never writes: the analysis engine
/// writes no Parquet.
struct DatasetDecryption(Arc<FileDecryptionProperties>);

impl std::fmt::Debug for DatasetDecryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatasetDecryption(<key withheld>)")
    }
}

#[async_trait]
impl EncryptionFactory for DatasetDecryption {
    async fn get_file_encryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _schema: &SchemaRef,
        _file_path: &object_store::path::Path,
    ) -> DfResult<Option<Arc<FileEncryptionProperties>>> {
        Err(DataFusionError::Internal(
            "the analysis engine does not write Parquet".into(),
        ))
    }

    async fn get_file_decryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _file_path: &object_store::path::Path,
    ) -> DfResult<Option<Arc<FileDecryptionProperties>>> {
        Ok(Some(Arc::clone(&self.0)))
    }
}

/// Readers of the dataset's file through its storage backend.
struct BackendReaders {
    file: ChunkSource,
}

impl std::fmt::Debug for BackendReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendReaders").finish_non_exhaustive()
    }
}

impl ParquetFileReaderFactory for BackendReaders {
    fn create_reader(
        &self,
        _partition_index: usize,
        _file: PartitionedFile,
        _metadata_size_hint: Option<usize>,
        _metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        Ok(Box::new(BackendReader {
            file: self.file.clone(),
        }))
    }
}

/// One partition's reader. Backends read synchronously (S3's blocks on its own runtime), so
/// every read runs on a blocking thread and the scan's tasks never stall the executor.
struct BackendReader {
    file: ChunkSource,
}

/// Runs a backend read on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> parquet::errors::Result<T> + Send + 'static,
) -> parquet::errors::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ParquetError::External(Box::new(e)))?
}

fn range_len(r: &Range<u64>) -> parquet::errors::Result<usize> {
    usize::try_from(r.end.saturating_sub(r.start))
        .map_err(|_| ParquetError::General("a byte range longer than memory".into()))
}

impl AsyncFileReader for BackendReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let file = self.file.clone();
        blocking(move || file.get_bytes(range.start, range_len(&range)?)).boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let file = self.file.clone();
        blocking(move || {
            ranges
                .iter()
                .map(|r| file.get_bytes(r.start, range_len(r)?))
                .collect()
        })
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let file = self.file.clone();
        let decryption = options
            .and_then(|o| o.file_decryption_properties())
            .cloned();
        let column_index = options.map_or(PageIndexPolicy::Skip, |o| o.column_index_policy());
        let offset_index = options.map_or(PageIndexPolicy::Skip, |o| o.offset_index_policy());
        blocking(move || {
            ParquetMetaDataReader::new()
                .with_column_index_policy(column_index)
                .with_offset_index_policy(offset_index)
                .with_decryption_properties(decryption)
                .parse_and_finish(&file)
                .map(Arc::new)
        })
        .boxed()
    }
}
