//! Activation segments: the trusted internal join behind an approved activation.
//!
//! A partner receives the values of one identifier column of *its own* dataset for the rows
//! whose key matches a row of the owner's dataset (optionally narrowed by dimension values of
//! the owner's dataset). The plan is built here from checked column names, never from SQL:
//!
//! ```text
//! source: scan → key IS NOT NULL [AND dim = value …] → (key as text, person)
//! target: scan → key IS NOT NULL AND output IS NOT NULL → (key as text, output as text)
//! inner join on the keys
//!   → COUNT(DISTINCT source person)          (the segment's size, checked against the minimum)
//!   → DISTINCT output ORDER BY output        (what is delivered)
//! ```
//!
//! Nothing of the source but the match itself reaches the output: its keys, persons and
//! dimension values stay inside the plan. The size is counted in people of the *source*, so
//! a partner cannot pass the minimum by giving one matched person many identifiers.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::catalog::default_table_source::provider_as_source;
use datafusion::functions_aggregate::expr_fn::count_distinct;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Cast, Expr, JoinType, LogicalPlan, LogicalPlanBuilder, col, lit};

use crate::QueryError;
use crate::catalog::QueryTable;
use crate::error::internal;
use crate::provider::EncryptedTable;

const SOURCE_KEY: &str = "__source_key";
const TARGET_KEY: &str = "__target_key";
const PERSON: &str = "__person";
const OUTPUT: &str = "__output";

/// What to match. Column names must exist in their tables (the service has checked them
/// against the policies); the tables must carry their data.
#[derive(Debug, Clone, Copy)]
pub struct SegmentRequest<'a> {
    pub source: &'a QueryTable,
    pub source_key: &'a str,
    /// `dimension = value` conditions on the source, compared as text.
    pub filters: &'a [(String, String)],
    pub target: &'a QueryTable,
    pub target_key: &'a str,
    /// The target's identifier column whose values are delivered.
    pub output: &'a str,
}

fn text(e: Expr) -> Expr {
    Expr::Cast(Cast::new(Box::new(e), DataType::Utf8))
}

fn scan(table: &QueryTable, alias: &str) -> Result<LogicalPlanBuilder, QueryError> {
    let data = table
        .data
        .clone()
        .ok_or_else(|| QueryError::Internal(format!("no data for {}", table.name)))?;
    let provider = provider_as_source(Arc::new(EncryptedTable::new(table.arrow_schema(), data)));
    LogicalPlanBuilder::scan(alias, provider, None).map_err(internal)
}

/// The matched rows as `(person of the source, output value)`.
fn matched(req: &SegmentRequest<'_>) -> Result<LogicalPlanBuilder, QueryError> {
    let mut conditions = vec![col(req.source_key).is_not_null()];
    for (dim, value) in req.filters {
        conditions.push(text(col(dim.as_str())).eq(lit(value.clone())));
    }
    let source = scan(req.source, "s")?
        .filter(conjunction(conditions).unwrap_or_else(|| lit(true)))
        .map_err(internal)?
        .project(vec![
            text(col(req.source_key)).alias(SOURCE_KEY),
            text(col(req.source.unit_column())).alias(PERSON),
        ])
        .map_err(internal)?
        .build()
        .map_err(internal)?;
    scan(req.target, "t")?
        .filter(
            col(req.target_key)
                .is_not_null()
                .and(col(req.output).is_not_null()),
        )
        .map_err(internal)?
        .project(vec![
            text(col(req.target_key)).alias(TARGET_KEY),
            text(col(req.output)).alias(OUTPUT),
        ])
        .map_err(internal)?
        .join(
            source,
            JoinType::Inner,
            (vec![TARGET_KEY], vec![SOURCE_KEY]),
            None,
        )
        .map_err(internal)
}

async fn collect(
    plan: LogicalPlan,
    partitions: usize,
) -> Result<Vec<arrow::array::RecordBatch>, QueryError> {
    crate::engine::collect(plan, partitions).await
}

/// How many distinct people of the source the segment stands for.
pub async fn matched_people(
    req: &SegmentRequest<'_>,
    partitions: usize,
) -> Result<u64, QueryError> {
    let plan = matched(req)?
        .aggregate(
            Vec::<Expr>::new(),
            vec![count_distinct(col(PERSON)).alias("n")],
        )
        .map_err(internal)?
        .build()
        .map_err(internal)?;
    let batches = collect(plan, partitions).await?;
    let n = match batches.iter().find(|b| b.num_rows() > 0) {
        Some(b) => {
            let a = b.column(0);
            match a.data_type() {
                DataType::Int64 if !a.is_null(0) => a.as_primitive::<Int64Type>().value(0),
                DataType::Int64 => 0,
                other => {
                    return Err(QueryError::Internal(format!(
                        "expected a count, got {other}"
                    )));
                }
            }
        }
        None => 0,
    };
    Ok(n.max(0) as u64)
}

/// The distinct output values of the matched target rows, in ascending order (the order of
/// the target's rows is not revealed).
pub async fn segment_ids(
    req: &SegmentRequest<'_>,
    partitions: usize,
) -> Result<Vec<String>, QueryError> {
    let plan = matched(req)?
        .project(vec![col(OUTPUT)])
        .map_err(internal)?
        .distinct()
        .map_err(internal)?
        .sort(vec![col(OUTPUT).sort(true, false)])
        .map_err(internal)?
        .build()
        .map_err(internal)?;
    let mut out = Vec::new();
    for b in collect(plan, partitions).await? {
        let a = arrow::compute::cast(b.column(0), &DataType::Utf8).map_err(internal)?;
        let s = a.as_string::<i32>();
        out.extend(
            (0..s.len())
                .filter(|&i| !s.is_null(i))
                .map(|i| s.value(i).to_owned()),
        );
    }
    Ok(out)
}
