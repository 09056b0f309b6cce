//! The datasets a query may name: their schemas, owners and policies, and (for execution
//! only) the encrypted data.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use cleanroom_core::ids::DatasetId;
use cleanroom_core::names::OrgName;
use cleanroom_core::policy::AnalysisPolicy;
use cleanroom_core::schema::{ColumnRole, ColumnSpec, DatasetSchema};
use cleanroom_storage::EncryptedDataset;
use cleanroom_storage::ingest::arrow_schema;

/// One dataset as the query engine sees it.
#[derive(Debug, Clone)]
pub struct QueryTable {
    /// The name analysts use in SQL (the dataset's name; quote it when it contains `-`).
    pub name: String,
    pub dataset_id: DatasetId,
    pub owner: OrgName,
    pub schema: DatasetSchema,
    /// The owner's policy (an empty, deny-everything policy when `has_policy` is false).
    pub policy: AnalysisPolicy,
    /// Whether the owner has set a policy: a dataset without one cannot be analysed.
    pub has_policy: bool,
    pub policy_version: u32,
    /// The data, when the query is to run (checking needs only schemas and policies).
    pub data: Option<EncryptedDataset>,
    /// Exact row multiplicities, when known: they let the rewrite skip bounding stages that
    /// provably change nothing (see [`TableStats`]).
    pub stats: Option<TableStats>,
}

/// The most rows any one person, and any one value of each identifier column, has in a
/// dataset. A bounding stage that keeps at most `k` rows per value is the identity on a table
/// whose multiplicities are all at most `k` (and on any filtered subset of it), so skipping it
/// changes no output and no privacy guarantee: it only saves a sort. Kept inside the server,
/// never shown to anyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableStats {
    pub max_rows_per_unit: u64,
    /// Over non-null values only (null keys never join).
    pub max_rows_per_key: BTreeMap<String, u64>,
}

impl QueryTable {
    pub fn arrow_schema(&self) -> SchemaRef {
        arrow_schema(&self.schema)
    }

    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.schema.column(name)
    }

    pub fn unit_column(&self) -> &str {
        self.schema.privacy_unit().name.as_str()
    }

    pub fn role(&self, name: &str) -> Option<ColumnRole> {
        self.column(name).map(|c| c.role)
    }
}

/// The datasets of one collaboration that a query may use.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tables: Vec<QueryTable>,
}

impl Catalog {
    pub fn new(tables: Vec<QueryTable>) -> Arc<Self> {
        Arc::new(Catalog { tables })
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.name == name)
    }
}
