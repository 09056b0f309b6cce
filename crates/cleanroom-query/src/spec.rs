//! A checked query: what the analyst asked for, in a form the rewrite can build a safe plan
//! from. Every expression in it has passed the checker, and every column reference is
//! qualified as `t<i>` where `i` indexes [`Spec::uses`].

use std::collections::BTreeSet;
use std::fmt::Write;

use datafusion::common::Column;
use datafusion::logical_expr::Expr;
use sha2::{Digest, Sha256};

use crate::catalog::Catalog;

/// The qualifier of the `i`-th table of a query.
pub fn qualifier(i: usize) -> String {
    format!("t{i}")
}

/// A dataset used by a query.
#[derive(Debug, Clone)]
pub struct TableUse {
    /// Index into the catalog.
    pub table: usize,
    /// Row filters on this table alone, applied before contributions are bounded.
    pub filters: Vec<Expr>,
    /// Join-key columns of this table used in equality joins.
    pub keys: BTreeSet<String>,
    /// Every column of the table the query needs (the privacy unit always).
    pub columns: BTreeSet<String>,
}

/// How the tables are joined (inner equality joins on key columns only).
#[derive(Debug, Clone)]
pub enum JoinTree {
    Table(usize),
    Join {
        left: Box<JoinTree>,
        right: Box<JoinTree>,
        /// `(left column, right column)` pairs, qualified.
        on: Vec<(Column, Column)>,
    },
}

/// A metric column clamped into bounds and read as fixed-point integers.
#[derive(Debug, Clone, PartialEq)]
pub struct Clamped {
    pub column: Column,
    pub lower: f64,
    pub upper: f64,
    /// `10^precision`.
    pub scale: i64,
    pub lower_fp: i64,
    pub upper_fp: i64,
}

impl Clamped {
    /// The largest magnitude one row can add, in fixed-point units.
    pub fn magnitude(&self) -> i64 {
        self.lower_fp.abs().max(self.upper_fp.abs()).max(1)
    }
}

/// What an aggregate measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// `COUNT(*)`: rows (after joins and bounding).
    Rows,
    /// `COUNT(col)`: rows where `col` is not null.
    NonNull(Column),
    /// `COUNT(DISTINCT col)`.
    Distinct(Column),
    /// `SUM(col)` of clamped values.
    Sum(Clamped),
    /// `AVG(col)` of clamped values: a noisy sum over a noisy count.
    Avg(Clamped),
    /// `MIN(col)` / `MAX(col)`: only when every dataset touched has differential privacy off
    /// and allows it (exact, thresholded).
    Min(Clamped),
    Max(Clamped),
}

impl Measure {
    pub fn describe(&self) -> String {
        match self {
            Measure::Rows => "count(*)".into(),
            Measure::NonNull(c) => format!("count({c})"),
            Measure::Distinct(c) => format!("count(distinct {c})"),
            Measure::Sum(c) => format!("sum({} clamped to [{}, {}])", c.column, c.lower, c.upper),
            Measure::Avg(c) => format!("avg({} clamped to [{}, {}])", c.column, c.lower, c.upper),
            Measure::Min(c) => format!("min({})", c.column),
            Measure::Max(c) => format!("max({})", c.column),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GroupKey {
    pub expr: Expr,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct AggregateSpec {
    pub measure: Measure,
    pub name: String,
}

/// Where an output column comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Group(usize),
    Aggregate(usize),
}

#[derive(Debug, Clone)]
pub struct OutputColumn {
    pub name: String,
    pub source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderKey {
    pub source: Source,
    pub ascending: bool,
    pub nulls_first: bool,
}

/// A group key computed per person: how many (bounded, filtered) rows a person of one table
/// has, capped at `max` — the frequency of reach-and-frequency reports. Only templates add it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frequency {
    /// The table use whose people are counted.
    pub table: usize,
    pub max: u32,
}

/// The column the rewrite adds for [`Frequency`].
pub const FREQUENCY_COLUMN: &str = "__cleanroom_frequency";

/// A checked aggregate query.
#[derive(Debug, Clone)]
pub struct Spec {
    pub uses: Vec<TableUse>,
    pub tree: JoinTree,
    /// Row filters over several tables, applied after the joins.
    pub cross_filters: Vec<Expr>,
    pub group_keys: Vec<GroupKey>,
    pub aggregates: Vec<AggregateSpec>,
    pub outputs: Vec<OutputColumn>,
    /// Applied to released (noisy) values: post-processing.
    pub order_by: Vec<OrderKey>,
    pub limit: Option<usize>,
    pub offset: usize,
    /// A per-person frequency group key (templates only): a person moves between groups when
    /// its row count changes, so sensitivities double.
    pub frequency: Option<Frequency>,
}

impl Spec {
    /// A canonical text of the query: the datasets (with their policy versions), the joins,
    /// filters, groups and aggregates. Two queries with the same text compute the same thing.
    pub fn canonical(&self, catalog: &Catalog) -> String {
        let mut s = String::new();
        for (i, u) in self.uses.iter().enumerate() {
            let t = &catalog.tables[u.table];
            let _ = write!(
                s,
                "use {i} {} v{} filters [{}];",
                t.dataset_id,
                t.policy_version,
                join_exprs(&u.filters)
            );
        }
        let _ = write!(s, "tree {};", tree_text(&self.tree));
        let _ = write!(s, "where [{}];", join_exprs(&self.cross_filters));
        for g in &self.group_keys {
            let _ = write!(s, "group {} as {:?};", g.expr, g.name);
        }
        for a in &self.aggregates {
            let _ = write!(s, "agg {} as {:?};", a.measure.describe(), a.name);
        }
        for o in &self.outputs {
            let _ = write!(s, "out {:?} {:?};", o.name, o.source);
        }
        for o in &self.order_by {
            let _ = write!(s, "order {o:?};");
        }
        let _ = write!(
            s,
            "limit {:?} offset {} frequency {:?};",
            self.limit, self.offset, self.frequency
        );
        s
    }

    /// SHA-256 of [`Spec::canonical`] and the privacy parameters, hex.
    pub fn fingerprint(&self, catalog: &Catalog, params: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.canonical(catalog).as_bytes());
        h.update(b"\0");
        h.update(params.as_bytes());
        hex::encode(h.finalize())
    }
}

fn join_exprs(v: &[Expr]) -> String {
    v.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn tree_text(t: &JoinTree) -> String {
    match t {
        JoinTree::Table(i) => format!("t{i}"),
        JoinTree::Join { left, right, on } => format!(
            "({} join {} on {})",
            tree_text(left),
            tree_text(right),
            on.iter()
                .map(|(l, r)| format!("{l} = {r}"))
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    }
}
