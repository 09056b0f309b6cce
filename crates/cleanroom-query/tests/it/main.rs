//! Integration tests of the query engine: the checker's rules, the engine's results against
//! exact computations, and the privacy promises tested as an attacker would.

mod attacks;
mod cascade;
mod checker;
mod engine;
mod scan;
mod totality;

use std::sync::Arc;

use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_core::names::OrgName;
use cleanroom_core::policy::{AnalysisPolicy, MetricDraft, PolicyDraft};
use cleanroom_core::schema::{ColumnSpec, DatasetSchema};
use cleanroom_query::{Catalog, QueryTable};
use cleanroom_storage::ingest::ingest_csv;
use cleanroom_storage::{DatasetStore, SecretKey};

pub const BRAND_SCHEMA: &[&str] = &[
    "customer_id:string:privacy_unit",
    "email:string:identifier",
    "region:string:dimension",
    "age_band:string:dimension",
    "purchases:int64:metric",
    "revenue:float64:metric",
    "first_purchase:date:dimension",
];

pub const PUBLISHER_SCHEMA: &[&str] = &[
    "user_id:string:privacy_unit",
    "email:string:identifier",
    "region:string:dimension",
    "exposed:bool:dimension",
    "page_views:int64:metric",
];

pub fn schema(cols: &[&str]) -> DatasetSchema {
    DatasetSchema::new(
        cols.iter()
            .map(|c| ColumnSpec::parse_compact(c).unwrap())
            .collect(),
    )
    .unwrap()
}

pub fn metric(col: &str, lower: f64, upper: f64) -> MetricDraft {
    MetricDraft {
        column: col.into(),
        lower,
        upper,
        ..Default::default()
    }
}

pub fn brand_policy() -> PolicyDraft {
    PolicyDraft {
        join_keys: vec!["email".into()],
        dimensions: vec!["region".into(), "age_band".into(), "first_purchase".into()],
        metrics: vec![
            metric("purchases", 0.0, 100.0),
            metric("revenue", 0.0, 1000.0),
        ],
        analysts: vec!["publisher".into()],
        receivers: vec!["publisher".into()],
        ..Default::default()
    }
}

pub fn publisher_policy() -> PolicyDraft {
    PolicyDraft {
        join_keys: vec!["email".into()],
        dimensions: vec!["region".into(), "exposed".into()],
        metrics: vec![metric("page_views", 0.0, 50.0)],
        analysts: vec!["brand".into()],
        receivers: vec!["brand".into()],
        ..Default::default()
    }
}

/// Datasets written encrypted into a temporary directory, as the server stores them.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: DatasetStore,
    pub collab: CollaborationId,
    pub tables: Vec<QueryTable>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(dir.path()).unwrap();
        Self::on(dir, store)
    }

    /// Datasets stored in `store` (a backend of the test's own), with `dir` kept alive.
    pub fn on(dir: tempfile::TempDir, store: DatasetStore) -> Self {
        Fixture {
            dir,
            store,
            collab: CollaborationId::new(),
            tables: Vec::new(),
        }
    }

    /// Adds a dataset from CSV text (with a header line).
    pub fn add(
        &mut self,
        name: &str,
        owner: &str,
        cols: &[&str],
        policy: PolicyDraft,
        csv: &str,
    ) -> &mut Self {
        let schema = schema(cols);
        let policy = AnalysisPolicy::validate(&policy, &schema).unwrap();
        let id = DatasetId::new();
        let key = SecretKey::generate().unwrap();
        let mut w = self
            .store
            .begin_write(self.collab, id, &schema, &key)
            .unwrap();
        ingest_csv(csv.as_bytes(), &schema, &mut w, &mut |_| {}).unwrap();
        self.store.commit(w).unwrap();
        let data = self.store.open_dataset(self.collab, id, key).unwrap();
        self.tables.push(QueryTable {
            name: name.into(),
            dataset_id: id,
            owner: OrgName::parse(owner).unwrap(),
            schema,
            policy,
            has_policy: true,
            policy_version: 1,
            data: Some(data),
            stats: None,
        });
        self
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        Catalog::new(self.tables.clone())
    }

    /// The same datasets with every policy relaxed for exact checks: differential privacy off,
    /// minimum group size 1.
    pub fn exact(&self) -> Arc<Catalog> {
        let mut tables = self.tables.clone();
        for t in &mut tables {
            t.policy.differential_privacy = false;
            t.policy.min_group_size = 1;
        }
        Catalog::new(tables)
    }

    /// The same datasets with a policy changed.
    pub fn with_policy(&self, name: &str, f: impl Fn(&mut PolicyDraft)) -> Arc<Catalog> {
        let mut tables = self.tables.clone();
        for t in &mut tables {
            if t.name == name {
                let mut d = t.policy.to_draft();
                f(&mut d);
                t.policy = AnalysisPolicy::validate(&d, &t.schema).unwrap();
                t.policy_version += 1;
            }
        }
        Catalog::new(tables)
    }
}

/// The privacy request of most tests.
pub const REQ: cleanroom_query::PrivacyRequest = cleanroom_query::PrivacyRequest {
    epsilon: 1.0,
    delta: 1e-7,
};

/// Builds CSV text from a header and rows.
pub fn csv(header: &str, rows: impl IntoIterator<Item = String>) -> String {
    let mut s = format!("{header}\n");
    for r in rows {
        s.push_str(&r);
        s.push('\n');
    }
    s
}

pub const BRAND_HEADER: &str = "customer_id,email,region,age_band,purchases,revenue,first_purchase";
pub const PUBLISHER_HEADER: &str = "user_id,email,region,exposed,page_views";
