//! The room's plan codecs: Ballista's own, plus what only this room's plans hold.
//!
//! - an encrypted dataset, as a table ([`RoomLogicalCodec`]: server → scheduler) and as a
//!   task's scan of some byte ranges of its file ([`RoomPhysicalCodec`]: scheduler →
//!   executors), carried as a [`ScanRef`] whose dataset key is wrapped under the cluster key;
//! - the checker's total `date_trunc_<unit>` functions ([`DateTrunc`]), rebuilt by name.
//!
//! Everything else goes to Ballista's codecs unchanged. Our bytes start with `0xff`, which no
//! protobuf message (what Ballista's codecs write) starts with.

use std::io::Cursor;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use cleanroom_query::provider::EncryptedTable;
use cleanroom_query::total::DateTrunc;
use datafusion::common::{DataFusionError, Result as DfResult, TableReference};
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::datasource::physical_plan::{FileScanConfig, FileSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use crate::key::ClusterKey;
use crate::scan::{ClusterTable, Readers, RoomScanSource, ScanRef, TaskScan};

const TABLE: &[u8] = b"\xffcleanroom-table/v1\n";
const SCAN: &[u8] = b"\xffcleanroom-scan/v1\n";
const UDF: &[u8] = b"\xffcleanroom-udf/v1";

/// A [`ScanRef`] as bytes.
#[derive(Serialize, Deserialize)]
struct ScanWire {
    collab: String,
    dataset: String,
    file_len: u64,
    wrapped_key: String,
}

impl From<&ScanRef> for ScanWire {
    fn from(s: &ScanRef) -> Self {
        ScanWire {
            collab: s.collab.to_string(),
            dataset: s.dataset.to_string(),
            file_len: s.file_len,
            wrapped_key: s.wrapped_key.clone(),
        }
    }
}

impl TryFrom<ScanWire> for ScanRef {
    type Error = DataFusionError;
    fn try_from(w: ScanWire) -> DfResult<ScanRef> {
        let bad = |what: &str| DataFusionError::Internal(format!("a scan names a bad {what}"));
        Ok(ScanRef {
            collab: cleanroom_core::ids::CollaborationId::parse(&w.collab)
                .map_err(|_| bad("collaboration"))?,
            dataset: cleanroom_core::ids::DatasetId::parse(&w.dataset)
                .map_err(|_| bad("dataset"))?,
            file_len: w.file_len,
            wrapped_key: w.wrapped_key,
        })
    }
}

/// A task's scan of an encrypted dataset as bytes (its table's schema follows, as an Arrow IPC
/// schema message).
#[derive(Serialize, Deserialize)]
struct ScanNode {
    scan: ScanWire,
    projection: Option<Vec<usize>>,
    limit: Option<usize>,
    /// Per partition, the byte ranges of the file it reads.
    groups: Vec<Vec<(u64, u64)>>,
}

fn internal(what: &str) -> impl Fn(Box<dyn std::error::Error + Send + Sync>) -> DataFusionError {
    let what = what.to_owned();
    move |e| DataFusionError::Internal(format!("{what}: {e}"))
}

fn encode_schema(schema: &SchemaRef) -> DfResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

fn decode_schema(bytes: &[u8]) -> DfResult<SchemaRef> {
    let r = arrow::ipc::reader::StreamReader::try_new(Cursor::new(bytes), None)?;
    Ok(r.schema())
}

/// The file scan configuration and source of a scan of an encrypted dataset.
fn room_scan(node: &Arc<dyn ExecutionPlan>) -> Option<(&FileScanConfig, &RoomScanSource)> {
    let exec = node.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    let source = config.file_source().downcast_ref::<RoomScanSource>()?;
    Some((config, source))
}

/// The room's functions by name, or what `otherwise` (Ballista's codec) decodes.
fn decode_udf(
    name: &str,
    otherwise: impl FnOnce() -> DfResult<Arc<ScalarUDF>>,
) -> DfResult<Arc<ScalarUDF>> {
    match DateTrunc::by_name(name) {
        Some(f) => Ok(f),
        None => otherwise(),
    }
}

/// Marks the room's functions (rebuilt by name); others go to `otherwise` (Ballista's codec).
fn encode_udf(
    node: &ScalarUDF,
    buf: &mut Vec<u8>,
    otherwise: impl FnOnce(&mut Vec<u8>) -> DfResult<()>,
) -> DfResult<()> {
    if node.inner().downcast_ref::<DateTrunc>().is_some() {
        buf.extend_from_slice(UDF);
        Ok(())
    } else {
        otherwise(buf)
    }
}

/// Ballista's logical codec, plus encrypted tables and the room's functions. On the server it
/// holds the cluster key, to wrap dataset keys; on the scheduler it holds none.
#[derive(Debug, Default)]
pub struct RoomLogicalCodec {
    inner: BallistaLogicalExtensionCodec,
    key: Option<ClusterKey>,
}

impl RoomLogicalCodec {
    /// The server's codec: wraps the keys of the datasets its plans read under `key`.
    pub fn wrapping_with(key: ClusterKey) -> Self {
        RoomLogicalCodec {
            inner: BallistaLogicalExtensionCodec::default(),
            key: Some(key),
        }
    }
}

impl LogicalExtensionCodec for RoomLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DfResult<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DfResult<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn TableProvider>> {
        match buf.strip_prefix(TABLE) {
            Some(rest) => {
                let wire: ScanWire =
                    serde_json::from_slice(rest).map_err(|e| internal("a table")(Box::new(e)))?;
                Ok(Arc::new(ClusterTable {
                    schema,
                    scan: wire.try_into()?,
                }))
            }
            None => self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        let scan = if let Some(t) = node.downcast_ref::<EncryptedTable>() {
            let key = self.key.as_ref().ok_or_else(|| {
                DataFusionError::Internal(
                    "a plan over an encrypted dataset was encoded without the cluster key".into(),
                )
            })?;
            ScanRef::new(t.data(), key)?
        } else if let Some(t) = node.downcast_ref::<ClusterTable>() {
            t.scan.clone()
        } else {
            return self.inner.try_encode_table_provider(table_ref, node, buf);
        };
        buf.extend_from_slice(TABLE);
        serde_json::to_writer(buf, &ScanWire::from(&scan))
            .map_err(|e| internal("a table")(Box::new(e)))
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> DfResult<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        decode_udf(name, || self.inner.try_decode_udf(name, buf))
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        encode_udf(node, buf, |buf| self.inner.try_encode_udf(node, buf))
    }
}

/// Ballista's physical codec, plus the scans of encrypted datasets and the room's functions.
/// On an executor it holds the [`Readers`] its scans read with; on the scheduler none.
#[derive(Debug, Default)]
pub struct RoomPhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
    readers: Option<Readers>,
}

impl RoomPhysicalCodec {
    /// An executor's codec: the scans it decodes read with `readers`.
    pub fn reading_with(readers: Readers) -> Self {
        RoomPhysicalCodec {
            inner: BallistaPhysicalExtensionCodec::default(),
            readers: Some(readers),
        }
    }
}

impl PhysicalExtensionCodec for RoomPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(rest) = buf.strip_prefix(SCAN) else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        let readers = self.readers.as_ref().ok_or_else(|| {
            DataFusionError::Internal(
                "only an executor of the room's cluster reads datasets: this process holds no \
                 cluster key"
                    .into(),
            )
        })?;
        let bad = || DataFusionError::Internal("a truncated scan node".into());
        let len = rest.get(..4).ok_or_else(bad)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let header = rest.get(4..4 + len).ok_or_else(bad)?;
        let node: ScanNode =
            serde_json::from_slice(header).map_err(|e| internal("a scan node")(Box::new(e)))?;
        let schema = decode_schema(&rest[4 + len..])?;
        let scan: ScanRef = node.scan.try_into()?;
        let groups = node
            .groups
            .into_iter()
            .map(|g| {
                g.into_iter()
                    .map(|(start, end)| {
                        if start <= end && end <= scan.file_len {
                            Ok(start..end)
                        } else {
                            Err(DataFusionError::Internal(
                                "a scan names a range outside its file".into(),
                            ))
                        }
                    })
                    .collect::<DfResult<Vec<_>>>()
            })
            .collect::<DfResult<Vec<_>>>()?;
        readers.scan(
            schema,
            &scan,
            TaskScan {
                projection: node.projection,
                limit: node.limit,
                groups,
            },
            ctx.session_config().options().execution.parquet.clone(),
        )
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let Some((config, source)) = room_scan(&node) else {
            return self.inner.try_encode(node, buf, proto_converter);
        };
        let groups = config
            .file_groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|f| match &f.range {
                        Some(r) => (r.start.max(0) as u64, r.end.max(0) as u64),
                        None => (0, source.scan.file_len),
                    })
                    .collect()
            })
            .collect();
        let header = serde_json::to_vec(&ScanNode {
            scan: ScanWire::from(&source.scan),
            projection: source.column_projection()?,
            limit: config.limit,
            groups,
        })
        .map_err(|e| internal("a scan node")(Box::new(e)))?;
        buf.extend_from_slice(SCAN);
        buf.extend_from_slice(&(header.len() as u32).to_le_bytes());
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&encode_schema(source.table_schema().file_schema())?);
        Ok(())
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        decode_udf(name, || self.inner.try_decode_udf(name, buf))
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        encode_udf(node, buf, |buf| self.inner.try_encode_udf(node, buf))
    }
}
