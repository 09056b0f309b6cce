//! From a checked [`Spec`] to the plan that actually runs, and its execution.
//!
//! The plan is built here from the spec, never from the analyst's SQL:
//!
//! 1. each dataset is scanned (only the columns the query needs), filtered by its own row
//!    filters, then **bounded**: at most `max_rows_per_unit` rows per person, chosen at
//!    random (`ROW_NUMBER() OVER (PARTITION BY person ORDER BY random())`, or for a bound of
//!    one a hash aggregation keeping the row with the smallest random tag), then at most
//!    `max_rows_per_key` rows per (non-null) value of every join key it is joined on;
//! 2. the bounded tables are joined on their keys and filtered by cross-table filters;
//! 3. metrics are clamped into their bounds and read as fixed-point integers;
//! 4. per group: the number of distinct people of every dataset (for the owners' minimum
//!    group size and for private group selection) and the exact aggregates;
//! 5. groups below any dataset's exact minimum are emptied inside the engine: such a group
//!    leaves it as a row whose keys and values are all null, so that only the number of
//!    groups formed is known outside (and released only with noise, see
//!    [`crate::calibrate::Calibration::group_count`]).
//!
//! Because every table's contributions are bounded *before* the joins, the number of joined
//! rows one person can change is bounded whatever the uploaded data repeats (see
//! [`crate::calibrate`]). Nothing here returns rows: the output has one row per group.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type};
use datafusion::catalog::default_table_source::provider_as_source;
use datafusion::common::{Column, ScalarValue};
use datafusion::functions::expr_fn::{greatest, least, random, round};
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, first_value, max, min, sum};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::WindowFunctionDefinition;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Cast, Expr, ExprFunctionExt, JoinType, LogicalPlan, LogicalPlanBuilder, col, lit, when,
};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::QueryError;
use crate::catalog::Catalog;
use crate::error::internal;
use crate::provider::EncryptedTable;
use crate::spec::{Clamped, FREQUENCY_COLUMN, JoinTree, Measure, Spec, qualifier};

/// How to run a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Bound contributions (needed whenever any dataset touched has differential privacy on).
    pub bound_contributions: bool,
    /// Partitions DataFusion may use (usually the number of cores).
    pub partitions: usize,
}

/// One group of the exact result, before any noise.
#[derive(Debug, Clone, PartialEq)]
pub struct ExactGroup {
    pub keys: Vec<ScalarValue>,
    /// Distinct people of each table use in this group.
    pub units: Vec<i64>,
    /// One entry per aggregate of the spec.
    pub values: Vec<ExactValue>,
}

/// An exact aggregate value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExactValue {
    /// A count.
    Count(i64),
    /// A sum of fixed-point values.
    Sum(i128),
    /// A sum of fixed-point values and the number of values summed.
    Avg { sum: i128, count: i64 },
    /// An exact extreme (only without differential privacy), in the metric's units.
    Extreme(Option<f64>),
}

pub(crate) const ROW_NUMBER: &str = "__cleanroom_rn";
/// The random tag of a row in a bounding stage, and the second one null keys are grouped by
/// ([`tagged`]).
const TAG: &str = "__cleanroom_tag";
const TAG2: &str = "__cleanroom_tag2";
/// The extra groups of a null key in a keep-one stage (its tag: one group per row).
const NULL_GROUP: &str = "__cleanroom_null_group";
const NULL_GROUP2: &str = "__cleanroom_null_group2";
/// Prefix of the columns a keep-one stage keeps.
const KEPT: &str = "__cleanroom_kept_";

/// Builds the plan of `spec` over the encrypted data of `catalog`'s tables.
pub fn build_plan(
    spec: &Spec,
    catalog: &Catalog,
    opts: RunOptions,
) -> Result<LogicalPlan, QueryError> {
    let joined = join_plan(&spec.tree, spec, catalog, opts)?;
    let mut b = LogicalPlanBuilder::from(joined);
    if let Some(f) = conjunction(spec.cross_filters.clone()) {
        b = b.filter(f).map_err(internal)?;
    }
    let group_exprs: Vec<Expr> = spec
        .group_keys
        .iter()
        .enumerate()
        .map(|(i, g)| g.expr.clone().alias(format!("__g{i}")))
        .collect();
    let mut aggs = Vec::new();
    for (u, use_) in spec.uses.iter().enumerate() {
        let unit = catalog.tables[use_.table].unit_column();
        aggs.push(count_distinct(qcol(u, unit)).alias(format!("__u{u}")));
    }
    for (j, a) in spec.aggregates.iter().enumerate() {
        match &a.measure {
            Measure::Rows => aggs.push(count(lit(1i64)).alias(format!("__m{j}"))),
            Measure::NonNull(c) => {
                aggs.push(count(Expr::Column(c.clone())).alias(format!("__m{j}")))
            }
            Measure::Distinct(c) => {
                aggs.push(count_distinct(Expr::Column(c.clone())).alias(format!("__m{j}")))
            }
            Measure::Sum(c) => aggs.push(sum(fixed_point(c)).alias(format!("__m{j}"))),
            Measure::Avg(c) => {
                aggs.push(sum(fixed_point(c)).alias(format!("__m{j}")));
                aggs.push(count(Expr::Column(c.column.clone())).alias(format!("__n{j}")));
            }
            Measure::Min(c) => aggs.push(min(clamped_float(c)).alias(format!("__m{j}"))),
            Measure::Max(c) => aggs.push(max(clamped_float(c)).alias(format!("__m{j}"))),
        }
    }
    b = b.aggregate(group_exprs, aggs).map_err(internal)?;
    // The owners' exact minimum group size, per dataset, inside the engine: a group below it
    // leaves the engine as a row that says only that (every key and value nulled), so that
    // the number of groups formed can be counted (and released with noise) while nothing
    // else about such a group ever reaches the caller.
    let mins: Vec<Expr> = spec
        .uses
        .iter()
        .enumerate()
        .map(|(u, use_)| {
            let k = i64::from(catalog.tables[use_.table].policy.min_group_size);
            col(format!("__u{u}")).gt_eq(lit(k))
        })
        .collect();
    let kept = conjunction(mins).unwrap_or(lit(true));
    let mut projection: Vec<Expr> = Vec::new();
    for field in b.schema().fields() {
        let name = field.name();
        projection.push(
            when(kept.clone(), col(name.as_str()))
                .end()
                .map_err(internal)?
                .alias(name.as_str()),
        );
    }
    projection.push(kept.alias(KEPT_GROUP));
    b.project(projection)
        .map_err(internal)?
        .build()
        .map_err(internal)
}

/// The last column of [`build_plan`]'s output: whether the group reaches every owner's minimum.
const KEPT_GROUP: &str = "__cleanroom_kept_group";

fn qcol(u: usize, name: &str) -> Expr {
    Expr::Column(Column::new(Some(qualifier(u)), name))
}

/// The metric clamped into its bounds, as a float.
fn clamped_float(c: &Clamped) -> Expr {
    let x = Expr::Cast(Cast::new(
        Box::new(Expr::Column(c.column.clone())),
        DataType::Float64,
    ));
    least(vec![greatest(vec![x, lit(c.lower)]), lit(c.upper)])
}

/// The clamped metric as fixed-point integers (`round(value × 10^precision)`), widened to
/// 128-bit decimals so that no sum over any data can overflow.
fn fixed_point(c: &Clamped) -> Expr {
    let scaled = if c.scale == 1 {
        round(vec![clamped_float(c)])
    } else {
        round(vec![clamped_float(c) * lit(c.scale as f64)])
    };
    let int = Expr::Cast(Cast::new(Box::new(scaled), DataType::Int64));
    Expr::Cast(Cast::new(Box::new(int), DataType::Decimal128(38, 0)))
}

fn join_plan(
    tree: &JoinTree,
    spec: &Spec,
    catalog: &Catalog,
    opts: RunOptions,
) -> Result<LogicalPlan, QueryError> {
    match tree {
        JoinTree::Table(u) => table_plan(*u, spec, catalog, opts),
        JoinTree::Join { left, right, on } => {
            let l = join_plan(left, spec, catalog, opts)?;
            let r = join_plan(right, spec, catalog, opts)?;
            let (lk, rk): (Vec<Column>, Vec<Column>) = on.iter().cloned().unzip();
            LogicalPlanBuilder::from(l)
                .join(r, JoinType::Inner, (lk, rk), None)
                .map_err(internal)?
                .build()
                .map_err(internal)
        }
    }
}

fn table_plan(
    u: usize,
    spec: &Spec,
    catalog: &Catalog,
    opts: RunOptions,
) -> Result<LogicalPlan, QueryError> {
    let use_ = &spec.uses[u];
    let t = &catalog.tables[use_.table];
    let name = qualifier(u);
    let mut b = scan(t, &name, &use_.columns)?;
    if let Some(f) = conjunction(use_.filters.clone()) {
        b = b.filter(f).map_err(internal)?;
    }
    if opts.bound_contributions {
        b = bound_contributions(b, &name, t, &use_.columns, &use_.keys)?;
    }
    if let Some(f) = spec.frequency.filter(|f| f.table == u) {
        // Rows per person after bounding and filtering: the person's frequency.
        let freq = Expr::WindowFunction(Box::new(WindowFunction::new(
            WindowFunctionDefinition::AggregateUDF(count_udaf()),
            vec![lit(1i64)],
        )))
        .partition_by(vec![qcol(u, t.unit_column())])
        .build()
        .map_err(internal)?
        .alias(FREQUENCY_COLUMN);
        let mut columns: Vec<Expr> = use_.columns.iter().map(|c| qcol(u, c)).collect();
        columns.push(
            least(vec![col(FREQUENCY_COLUMN), lit(i64::from(f.max))]).alias(FREQUENCY_COLUMN),
        );
        b = b
            .window(vec![freq])
            .map_err(internal)?
            .project(columns)
            .map_err(internal)?;
    }
    b.alias(name.as_str())
        .map_err(internal)?
        .build()
        .map_err(internal)
}

/// A scan of `table`'s encrypted data under the qualifier `name`, reading only `columns`.
pub(crate) fn scan(
    table: &crate::catalog::QueryTable,
    name: &str,
    columns: &BTreeSet<String>,
) -> Result<LogicalPlanBuilder, QueryError> {
    let data = table
        .data
        .clone()
        .ok_or_else(|| QueryError::Internal(format!("no data for {}", table.name)))?;
    let schema = table.arrow_schema();
    let projection: Vec<usize> = columns
        .iter()
        .map(|c| schema.index_of(c).map_err(internal))
        .collect::<Result<_, _>>()?;
    let provider = Arc::new(EncryptedTable::new(schema.clone(), data));
    LogicalPlanBuilder::scan(name, provider_as_source(provider), Some(projection)).map_err(internal)
}

/// Bounds the contributions of the rows of `b` (a scan of `table` qualified as `name`, with
/// `columns`): at most `max_rows_per_unit` rows per person, then at most `max_rows_per_key`
/// rows per non-null value of every column of `keys`, each stage keeping rows chosen at random.
/// Rows whose key is null pass a key stage untouched: a null never joins, so it needs no
/// bound, and a person without (say) a phone number keeps its rows for its other keys.
pub(crate) fn bound_contributions(
    mut b: LogicalPlanBuilder,
    name: &str,
    table: &crate::catalog::QueryTable,
    columns: &BTreeSet<String>,
    keys: &BTreeSet<String>,
) -> Result<LogicalPlanBuilder, QueryError> {
    let t = table;
    let q = |c: &str| Expr::Column(Column::new(Some(name), c));
    let columns: Vec<Expr> = columns.iter().map(|c| q(c)).collect();
    let mut bounds = vec![(t.unit_column().to_owned(), t.policy.max_rows_per_unit)];
    bounds.extend(keys.iter().map(|k| (k.clone(), t.policy.max_rows_per_key)));
    for (column, keep) in bounds {
        let known = t.stats.as_ref().and_then(|s| {
            if column == t.unit_column() {
                Some(s.max_rows_per_unit)
            } else {
                s.max_rows_per_key.get(&column).copied()
            }
        });
        if known.is_some_and(|m| m <= u64::from(keep)) {
            // Every value already has at most `keep` rows: the stage is the identity.
            continue;
        }
        if keep == 1 {
            b = keep_one(b, name, &column, column != t.unit_column(), &columns)?;
            continue;
        }
        let rn = row_number()
            .partition_by(vec![q(&column)])
            .order_by(by_tag())
            .build()
            .map_err(internal)?
            .alias(ROW_NUMBER);
        let keep_row = col(ROW_NUMBER).lt_eq(lit(u64::from(keep)));
        let keep_row = if column == t.unit_column() {
            keep_row
        } else {
            keep_row.or(q(&column).is_null())
        };
        b = tagged(b, &columns, false)?
            .window(vec![rn])
            .map_err(internal)?
            .filter(keep_row)
            .map_err(internal)?
            .project(columns.clone())
            .map_err(internal)?;
    }
    Ok(b)
}

/// `columns` and a random tag per row, computed **once** in a projection (with `second`, a
/// second independent one). Ordering by the tag column, never by `random()` itself, matters:
/// DataFusion sorts large inputs in runs and merges them, and the merge evaluates the sort
/// expressions again, so `ORDER BY random()` would be compared on fresh values at the merge
/// and the kept rows would follow the batches instead of being uniform (test
/// `a_bound_above_one_keeps_rows_uniformly_across_batches`).
pub(crate) fn tagged(
    b: LogicalPlanBuilder,
    columns: &[Expr],
    second: bool,
) -> Result<LogicalPlanBuilder, QueryError> {
    let mut with_tag = columns.to_vec();
    with_tag.push(random().alias(TAG));
    if second {
        with_tag.push(random().alias(TAG2));
    }
    b.project(with_tag).map_err(internal)
}

/// Ascending by the tag of [`tagged`]. (Two rows of one person or key value share a tag, a
/// uniform double, with probability about 2^-53: the order between them is then arbitrary,
/// which changes no bound.)
pub(crate) fn by_tag() -> Vec<datafusion::logical_expr::SortExpr> {
    vec![col(TAG).sort(true, false)]
}

/// One stage of [`bound_contributions`] with a bound of one row, as a hash aggregation instead
/// of a sort: every row gets a random tag ([`tagged`]), and per value of `column` the row with
/// the smallest tag is kept (`first_value(c ORDER BY tag)` for every other column, all ordered
/// by the same tag, so the kept values come from one row): a uniformly random row, the same
/// choice as the window stage with a bound of one, without sorting the table. With
/// `nulls_pass`, every row whose `column` is null is a group of its own (grouped also by two
/// independent tags, 106 random bits: two of 10^9 null rows share them with probability below
/// 10^-14, where with one tag two of 10^8 would share it with probability about 40 % and be
/// merged), so all of them are kept.
fn keep_one(
    b: LogicalPlanBuilder,
    name: &str,
    column: &str,
    nulls_pass: bool,
    columns: &[Expr],
) -> Result<LogicalPlanBuilder, QueryError> {
    let q = |c: &str| Expr::Column(Column::new(Some(name), c));
    let mut groups = vec![q(column)];
    if nulls_pass {
        for (tag, group) in [(TAG, NULL_GROUP), (TAG2, NULL_GROUP2)] {
            groups.push(
                when(q(column).is_null(), col(tag))
                    .end()
                    .map_err(internal)?
                    .alias(group),
            );
        }
    }
    let mut aggregates = Vec::new();
    let mut projection = Vec::new();
    for c in columns {
        let Expr::Column(c) = c else {
            return Err(QueryError::Internal(
                "bounding expects plain columns".into(),
            ));
        };
        if c.name == column {
            projection.push(q(column));
        } else {
            let alias = format!("{KEPT}{}", c.name);
            aggregates.push(first_value(Expr::Column(c.clone()), by_tag()).alias(&alias));
            projection.push(col(alias).alias_qualified(Some(name), &c.name));
        }
    }
    tagged(b, columns, nulls_pass)?
        .aggregate(groups, aggregates)
        .map_err(internal)?
        .project(projection)
        .map_err(internal)
}

/// Runs the plan of `spec` and reads its groups that reach every owner's minimum.
pub async fn execute(
    spec: &Spec,
    catalog: &Catalog,
    opts: RunOptions,
) -> Result<Vec<ExactGroup>, QueryError> {
    Ok(execute_counted(spec, catalog, opts).await?.0)
}

/// Runs the plan of `spec`: its groups that reach every owner's minimum, and the number of
/// groups formed before that minimum (internal: released only with noise).
pub async fn execute_counted(
    spec: &Spec,
    catalog: &Catalog,
    opts: RunOptions,
) -> Result<(Vec<ExactGroup>, usize), QueryError> {
    let plan = build_plan(spec, catalog, opts)?;
    let mut out = Vec::new();
    let mut formed = 0usize;
    // Batch by batch: the emptied groups below the minimum are counted and never kept.
    crate::engine::for_each_batch(plan, opts.partitions, |batch| {
        formed += batch.num_rows();
        read_kept_groups(spec, &batch, &mut out)
    })
    .await?;
    Ok((out, formed))
}

/// Reads the groups of one output batch of [`build_plan`] that reach every owner's minimum.
fn read_kept_groups(
    spec: &Spec,
    batch: &RecordBatch,
    out: &mut Vec<ExactGroup>,
) -> Result<(), QueryError> {
    let groups = spec.group_keys.len();
    let tables = spec.uses.len();
    let kept = batch
        .column(batch.num_columns() - 1)
        .as_boolean_opt()
        .ok_or_else(|| QueryError::Internal("the kept flag is not boolean".into()))?
        .clone();
    for row in 0..batch.num_rows() {
        if kept.is_null(row) || !kept.value(row) {
            continue;
        }
        let mut keys = Vec::with_capacity(groups);
        for g in 0..groups {
            keys.push(ScalarValue::try_from_array(batch.column(g), row).map_err(internal)?);
        }
        let mut units = Vec::with_capacity(tables);
        for u in 0..tables {
            units.push(int_at(batch.column(groups + u).as_ref(), row)?);
        }
        let mut col = groups + tables;
        let mut values = Vec::with_capacity(spec.aggregates.len());
        for a in &spec.aggregates {
            let v = match &a.measure {
                Measure::Rows | Measure::NonNull(_) | Measure::Distinct(_) => {
                    ExactValue::Count(int_at(batch.column(col).as_ref(), row)?)
                }
                Measure::Sum(_) => ExactValue::Sum(decimal_at(batch.column(col).as_ref(), row)?),
                Measure::Avg(_) => {
                    let sum = decimal_at(batch.column(col).as_ref(), row)?;
                    col += 1;
                    let count = int_at(batch.column(col).as_ref(), row)?;
                    ExactValue::Avg { sum, count }
                }
                Measure::Min(_) | Measure::Max(_) => {
                    ExactValue::Extreme(float_at(batch.column(col).as_ref(), row)?)
                }
            };
            col += 1;
            values.push(v);
        }
        out.push(ExactGroup {
            keys,
            units,
            values,
        });
    }
    Ok(())
}

fn int_at(a: &dyn Array, row: usize) -> Result<i64, QueryError> {
    if a.is_null(row) {
        return Ok(0);
    }
    match a.data_type() {
        DataType::Int64 => Ok(a.as_primitive::<Int64Type>().value(row)),
        other => Err(QueryError::Internal(format!(
            "expected a count, got {other}"
        ))),
    }
}

fn decimal_at(a: &dyn Array, row: usize) -> Result<i128, QueryError> {
    if a.is_null(row) {
        return Ok(0);
    }
    match a.data_type() {
        DataType::Decimal128(_, 0) => Ok(a.as_primitive::<Decimal128Type>().value(row)),
        other => Err(QueryError::Internal(format!(
            "expected a decimal sum, got {other}"
        ))),
    }
}

fn float_at(a: &dyn Array, row: usize) -> Result<Option<f64>, QueryError> {
    if a.is_null(row) {
        return Ok(None);
    }
    match a.data_type() {
        DataType::Float64 => Ok(Some(a.as_primitive::<Float64Type>().value(row))),
        other => Err(QueryError::Internal(format!(
            "expected a float, got {other}"
        ))),
    }
}

/// The exact multiplicities of a dataset's privacy unit and identifier columns (see
/// [`crate::catalog::TableStats`]). Internal: the result stays in the server.
pub async fn table_stats(
    table: &crate::catalog::QueryTable,
    partitions: usize,
) -> Result<crate::catalog::TableStats, QueryError> {
    use cleanroom_core::schema::ColumnRole;
    let data = table
        .data
        .clone()
        .ok_or_else(|| QueryError::Internal(format!("no data for {}", table.name)))?;
    let schema = table.arrow_schema();
    let provider = provider_as_source(Arc::new(EncryptedTable::new(schema.clone(), data)));
    let ctx = crate::engine::session(partitions)?;
    let mut stats = crate::catalog::TableStats::default();
    for c in table.schema.columns() {
        if !matches!(c.role, ColumnRole::PrivacyUnit | ColumnRole::Identifier) {
            continue;
        }
        let name = c.name.as_str();
        let idx = schema.index_of(name).map_err(internal)?;
        let plan = LogicalPlanBuilder::scan("t", Arc::clone(&provider), Some(vec![idx]))
            .map_err(internal)?
            .filter(col(name).is_not_null())
            .map_err(internal)?
            .aggregate(vec![col(name)], vec![count(lit(1i64)).alias("n")])
            .map_err(internal)?
            .aggregate(Vec::<Expr>::new(), vec![max(col("n")).alias("m")])
            .map_err(internal)?
            .build()
            .map_err(internal)?;
        let batches = crate::engine::collect_in(&ctx, plan).await?;
        let m = batches
            .first()
            .filter(|b| b.num_rows() > 0)
            .map(|b| int_at(b.column(0).as_ref(), 0))
            .transpose()?
            .unwrap_or(0)
            .max(0) as u64;
        if c.role == ColumnRole::PrivacyUnit {
            stats.max_rows_per_unit = m;
        } else {
            stats.max_rows_per_key.insert(name.to_owned(), m);
        }
    }
    Ok(stats)
}

/// The plain aggregate the analyst wrote, over the same data without any privacy layer: for
/// benchmarks that measure the privacy layer's overhead. Never used to answer a query.
pub async fn execute_unprotected(
    sql: &str,
    catalog: &Catalog,
    partitions: usize,
) -> Result<usize, QueryError> {
    let config = SessionConfig::new().with_target_partitions(partitions.max(1));
    let ctx = SessionContext::new_with_config(config);
    for t in &catalog.tables {
        let data = t
            .data
            .clone()
            .ok_or_else(|| QueryError::Internal(format!("no data for {}", t.name)))?;
        ctx.register_table(
            t.name.as_str(),
            Arc::new(EncryptedTable::new(t.arrow_schema(), data)),
        )
        .map_err(internal)?;
    }
    let batches = ctx
        .sql(sql)
        .await
        .map_err(internal)?
        .collect()
        .await
        .map_err(internal)?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}
