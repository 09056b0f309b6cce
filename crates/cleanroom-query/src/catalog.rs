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

    /// Whether `name` may be grouped or filtered on: the one answer to that question, used by
    /// the SQL checker and every template. Refused, naming the rule and the column, unless it
    /// is a dimension its owner's policy lists.
    pub fn may_group_on(&self, name: &str) -> Result<(), crate::QueryError> {
        use crate::QueryError;
        let (rule, message) = match self.role(name) {
            Some(ColumnRole::Dimension) if self.policy.is_dimension(name) => return Ok(()),
            Some(ColumnRole::Dimension) => (
                "column_not_allowed",
                format!(
                    "{name} is not a dimension in the policy of {}: its owner has not allowed grouping or filtering on it",
                    self.name
                ),
            ),
            Some(ColumnRole::Identifier) => (
                "identifier_not_allowed",
                format!(
                    "{name} is an identifier: it may only be used in JOIN … ON equalities and COUNT(DISTINCT …), never output, grouped or filtered on"
                ),
            ),
            Some(ColumnRole::PrivacyUnit) => (
                "privacy_unit_not_allowed",
                format!(
                    "{name} identifies the person: it may only be counted (COUNT(DISTINCT {name})), never output, grouped or filtered on"
                ),
            ),
            Some(ColumnRole::Metric) => (
                "metric_not_allowed",
                format!(
                    "{name} is a metric: it may only be aggregated (SUM, AVG, COUNT), not grouped or filtered on"
                ),
            ),
            None => (
                "unknown_column",
                format!("{name} is not a column of {}", self.name),
            ),
        };
        Err(QueryError::refused(rule, Some(name), message))
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
