//! A DataFusion table over an encrypted dataset.
//!
//! Row groups are split across partitions; each partition decrypts its row groups on a
//! blocking thread and streams the projected columns as record batches. Plaintext exists only
//! in those batches, in memory. The provider is registered only in sessions that execute a
//! plan built by [`crate::rewrite`] from a checked query: no analyst SQL ever runs against it.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use cleanroom_storage::EncryptedDataset;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};

/// Rows per decoded batch.
const BATCH_ROWS: usize = 64 * 1024;

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
}

#[async_trait]
impl TableProvider for EncryptedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let projected = Arc::new(self.schema.project(&columns)?);
        // Parquet returns columns in file order: read them sorted, then put them in the order
        // the plan asked for.
        let mut sorted = columns.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let order: Vec<usize> = columns
            .iter()
            .map(|c| sorted.binary_search(c).unwrap_or_default())
            .collect();
        let groups = self.data.row_groups();
        let parts = state.config().target_partitions().max(1).min(groups.max(1));
        let partitions: Vec<Arc<dyn PartitionStream>> = (0..parts)
            .map(|p| {
                Arc::new(RowGroupStream {
                    data: self.data.clone(),
                    row_groups: (0..groups).filter(|g| g % parts == p).collect(),
                    columns: sorted.clone(),
                    order: order.clone(),
                    schema: Arc::clone(&projected),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(
            projected,
            partitions,
            None,
            [],
            false,
            None,
        )?))
    }
}

/// One partition: some row groups of the file, some columns.
#[derive(Debug)]
struct RowGroupStream {
    data: EncryptedDataset,
    row_groups: Vec<usize>,
    /// Columns to read, in file order.
    columns: Vec<usize>,
    /// For each output column, its position among `columns`.
    order: Vec<usize>,
    schema: SchemaRef,
}

/// Reading an encrypted file failed while streaming it (decryption or decoding): the outside
/// world's fault, reported as unavailable. Its text comes from the Parquet reader and names no
/// value.
#[derive(Debug, thiserror::Error)]
#[error("reading the encrypted data failed: {0}")]
pub(crate) struct ReadFailure(pub String);

impl PartitionStream for RowGroupStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder = RecordBatchReceiverStreamBuilder::new(Arc::clone(&self.schema), 2);
        let tx = builder.tx();
        let data = self.data.clone();
        let row_groups = self.row_groups.clone();
        let columns = self.columns.clone();
        let order = self.order.clone();
        let schema = Arc::clone(&self.schema);
        builder.spawn_blocking(move || {
            if row_groups.is_empty() {
                return Ok(());
            }
            let reader = data
                .read(row_groups, &columns, BATCH_ROWS)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            for batch in reader {
                // Decryption and decoding failures: the storage's, not the query's.
                let batch = batch
                    .map_err(|e| DataFusionError::External(Box::new(ReadFailure(e.to_string()))))?;
                let arrays = order.iter().map(|i| Arc::clone(batch.column(*i))).collect();
                let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)?;
                if tx.blocking_send(Ok(batch)).is_err() {
                    // The consumer went away (the query was cancelled): stop reading.
                    break;
                }
            }
            Ok(())
        });
        builder.build()
    }
}
