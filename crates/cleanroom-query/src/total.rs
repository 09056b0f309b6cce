//! Total expressions: the analyst's row expressions in the form that will execute, and the
//! proof, node by node, that none of them can fail on any value.
//!
//! Whether a query fails is an output: an expression that errors on some rows and not on others
//! (a cast of `'madrid'` to an integer inside a `CASE` branch that only one person reaches)
//! tells whether that person is there, and the engine's message would quote the value. The
//! checker ([`crate::check`]) works on the plan DataFusion makes of the SQL *before* its type
//! coercion, and coercion inserts casts of its own (`CASE text WHEN 1`, text and date branches
//! unified to a date, `date_trunc` on a date through nanosecond timestamps). So every
//! expression of a checked query is passed through here:
//!
//! 1. it is coerced by DataFusion's own [`TypeCoercionRewriter`], exactly as the analyzer will
//!    coerce it when the plan runs (the coerced form is what the spec keeps, so the analyzer
//!    has nothing left to change);
//! 2. every sub-expression without a column is evaluated now: a constant that cannot be
//!    evaluated (`CAST('abc' AS DATE)` in a branch) is refused before anything is charged,
//!    instead of failing later on the rows that reach it;
//! 3. what remains is walked: only node kinds that cannot fail are accepted — comparisons,
//!    `AND`/`OR`/`NOT`, null tests, `BETWEEN`, `IN`, `LIKE` with a pattern that compiled,
//!    `CASE`, a short list of string and date functions that are total on their input types,
//!    and casts from a type to one that holds every value of it ([`total_cast`]).
//!
//! `date_trunc` of a date is replaced before coercion by [`DateTrunc`], a date-to-date
//! truncation in integer arithmetic: DataFusion's goes through nanosecond timestamps, which
//! overflow after the year 2262 (a `9999-12-31` placeholder would fail).
//!
//! [`assert_total_plan`] is the last line: the plan that is about to run, after the analyzer,
//! is walked for casts once more, so that a cast this module did not prove (one of the
//! rewrite's own, or one a future DataFusion adds) stops the run before it reads a row.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Date32Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::{InList, ScalarFunction};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Between, BinaryExpr, Case, Cast, ColumnarValue, Expr, ExprSchemable, Like, LogicalPlan,
    Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion::physical_expr::create_physical_expr;

use crate::QueryError;

/// Functions that return a value for every input of the types they are called with (after
/// coercion). Anything else is refused.
const TOTAL_FUNCTIONS: &[&str] = &[
    "lower",
    "upper",
    "btrim",
    "ltrim",
    "rtrim",
    "trim",
    "character_length",
    "char_length",
    "length",
    "initcap",
    "substr",
    "substring",
    "left",
    "right",
    "coalesce",
    "date_part",
    "datepart",
];

/// The units [`DateTrunc`] truncates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TruncUnit {
    Year,
    Quarter,
    Month,
    /// The Monday of the ISO week.
    Week,
    Day,
}

impl TruncUnit {
    pub fn parse(s: &str) -> Option<TruncUnit> {
        Some(match s.to_ascii_lowercase().as_str() {
            "year" => TruncUnit::Year,
            "quarter" => TruncUnit::Quarter,
            "month" => TruncUnit::Month,
            "week" => TruncUnit::Week,
            "day" => TruncUnit::Day,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            TruncUnit::Year => "year",
            TruncUnit::Quarter => "quarter",
            TruncUnit::Month => "month",
            TruncUnit::Week => "week",
            TruncUnit::Day => "day",
        }
    }
}

/// `date_trunc(unit, date)` for dates: the first day of the date's year, quarter, month or ISO
/// week, as a date. Integer arithmetic on days (Howard Hinnant's civil-date algorithms), so it
/// is defined for every `Date32` value; a result outside `Date32` (only for inputs within a
/// year of its ends, which uploads refuse) is null rather than an error.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DateTrunc {
    unit: TruncUnit,
    name: String,
    signature: Signature,
}

impl DateTrunc {
    pub fn udf(unit: TruncUnit) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(DateTrunc {
            unit,
            name: format!("date_trunc_{}", unit.name()),
            signature: Signature::exact(vec![DataType::Date32], Volatility::Immutable),
        }))
    }

    /// The function named `date_trunc_<unit>` (as [`DateTrunc::udf`] names it), for plans
    /// decoded in another process; `None` for any other name.
    pub fn by_name(name: &str) -> Option<Arc<ScalarUDF>> {
        let unit = TruncUnit::parse(name.strip_prefix("date_trunc_")?)?;
        (unit.name() == &name["date_trunc_".len()..]).then(|| DateTrunc::udf(unit))
    }
}

impl ScalarUDFImpl for DateTrunc {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Date32)
    }
    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let unit = self.unit;
        match &args.args[0] {
            ColumnarValue::Scalar(ScalarValue::Date32(d)) => Ok(ColumnarValue::Scalar(
                ScalarValue::Date32(d.and_then(|d| trunc_days(d, unit))),
            )),
            ColumnarValue::Scalar(ScalarValue::Null) => {
                Ok(ColumnarValue::Scalar(ScalarValue::Date32(None)))
            }
            ColumnarValue::Array(a) => {
                let Some(dates) = a.as_any().downcast_ref::<Date32Array>() else {
                    return Err(datafusion::error::DataFusionError::Internal(
                        "date_trunc of a non-date".into(),
                    ));
                };
                let out: Date32Array = dates
                    .iter()
                    .map(|d| d.and_then(|d| trunc_days(d, unit)))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
            }
            _ => Err(datafusion::error::DataFusionError::Internal(
                "date_trunc of a non-date".into(),
            )),
        }
    }
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month 1–12, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn trunc_days(days: i32, unit: TruncUnit) -> Option<i32> {
    let z = i64::from(days);
    let out = match unit {
        TruncUnit::Day => z,
        // 1970-01-01 was a Thursday: (z + 3) mod 7 is the days since Monday.
        TruncUnit::Week => z - (z + 3).rem_euclid(7),
        TruncUnit::Month | TruncUnit::Quarter | TruncUnit::Year => {
            let (y, m, _) = civil_from_days(z);
            let m = match unit {
                TruncUnit::Month => m,
                TruncUnit::Quarter => (m - 1) / 3 * 3 + 1,
                _ => 1,
            };
            days_from_civil(y, m, 1)
        }
    };
    i32::try_from(out).ok()
}

fn invalid(e: impl std::fmt::Display) -> QueryError {
    QueryError::Invalid(e.to_string())
}

fn has_columns(e: &Expr) -> bool {
    let mut found = false;
    let _ = e.apply(|n| {
        if matches!(n, Expr::Column(_)) {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Evaluates an expression without columns once, now.
fn evaluate_constant(e: &Expr) -> datafusion::error::Result<ScalarValue> {
    let empty = DFSchema::empty();
    let physical = create_physical_expr(
        e,
        &empty,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )?;
    let batch = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    match physical.evaluate(&batch)? {
        ColumnarValue::Scalar(s) => Ok(s),
        ColumnarValue::Array(a) => ScalarValue::try_from_array(&a, 0),
    }
}

/// True when every value of `from` converts to a value of `to` without error.
pub fn total_cast(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to {
        return true;
    }
    let text = |t: &DataType| matches!(t, Utf8 | Utf8View | LargeUtf8);
    match (from, to) {
        (Null, _) => true,
        // Numbers, booleans and (the upload-checked years 0001–9999 of) dates print as text.
        (f, t) if text(t) => {
            text(f) || f.is_integer() || f.is_floating() || matches!(f, Boolean | Date32 | Date64)
        }
        (Int8, Int16 | Int32 | Int64)
        | (Int16, Int32 | Int64)
        | (Int32, Int64)
        | (UInt8, Int16 | Int32 | Int64 | UInt16 | UInt32 | UInt64)
        | (UInt16, Int32 | Int64 | UInt32 | UInt64)
        | (UInt32, Int64 | UInt64) => true,
        (f, Float32 | Float64) if f.is_integer() => true,
        (Float16 | Float32, Float64) => true,
        (Date32, Date64) => true,
        // Days × 86,400 (× 1,000) fits in 64 bits for every 32-bit day count.
        (Date32, Timestamp(TimeUnit::Second | TimeUnit::Millisecond, None)) => true,
        _ => false,
    }
}

fn is_comparison(op: Operator) -> bool {
    matches!(
        op,
        Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom
    )
}

/// Replaces `date_trunc(unit, <date>)` by [`DateTrunc`]; refuses `date_trunc` of anything but
/// a date.
fn replace_date_trunc(e: Expr, schema: &DFSchema) -> Result<Expr, QueryError> {
    e.transform_up(|n| {
        let Expr::ScalarFunction(f) = &n else {
            return Ok(datafusion::common::tree_node::Transformed::no(n));
        };
        let name = f.func.name().to_ascii_lowercase();
        if name != "date_trunc" && name != "datetrunc" {
            return Ok(datafusion::common::tree_node::Transformed::no(n));
        }
        let unit = match f.args.first() {
            Some(Expr::Literal(
                ScalarValue::Utf8(Some(u))
                | ScalarValue::Utf8View(Some(u))
                | ScalarValue::LargeUtf8(Some(u)),
                _,
            )) => TruncUnit::parse(u),
            _ => None,
        };
        let arg = f.args.get(1).cloned();
        let ty = arg.as_ref().map(|a| a.get_type(schema)).transpose()?;
        match (unit, arg, ty) {
            (Some(unit), Some(arg), Some(DataType::Date32 | DataType::Null)) => Ok(
                datafusion::common::tree_node::Transformed::yes(Expr::ScalarFunction(
                    ScalarFunction::new_udf(DateTrunc::udf(unit), vec![arg]),
                )),
            ),
            _ => Err(datafusion::error::DataFusionError::Plan(
                "__cleanroom_date_trunc".into(),
            )),
        }
    })
    .map(|t| t.data)
    .map_err(|e| match e {
        datafusion::error::DataFusionError::Plan(m) if m == "__cleanroom_date_trunc" => {
            QueryError::refused(
                "function_not_allowed",
                None,
                "date_trunc takes a unit ('year', 'quarter', 'month', 'week' or 'day') and a date dimension: \
                 text would have to be parsed, which fails on some values",
            )
        }
        other => invalid(other),
    })
}

/// Coerces `expr` (checked, columns qualified) over `schema` as the analyzer will, and proves
/// that the result cannot fail on any row. Returns the expression to run.
pub fn make_total(expr: Expr, schema: &DFSchema) -> Result<Expr, QueryError> {
    let expr = replace_date_trunc(expr, schema)?;
    let mut coercion = TypeCoercionRewriter::new(schema);
    let coerced = expr.rewrite(&mut coercion).map_err(invalid)?.data;
    Prover { schema }.prove(coerced)
}

struct Prover<'a> {
    schema: &'a DFSchema,
}

fn refuse<T>(rule: &'static str, column: Option<&str>, msg: String) -> Result<T, QueryError> {
    Err(QueryError::refused(rule, column, msg))
}

fn column_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Column(c) => Some(c.name.clone()),
        Expr::Alias(a) => column_name(&a.expr),
        Expr::Cast(c) => column_name(&c.expr),
        _ => None,
    }
}

impl Prover<'_> {
    fn ty(&self, e: &Expr) -> Result<DataType, QueryError> {
        e.get_type(self.schema).map_err(invalid)
    }

    fn boxed(&self, e: Expr) -> Result<Box<Expr>, QueryError> {
        Ok(Box::new(self.prove(e)?))
    }

    fn prove(&self, e: Expr) -> Result<Expr, QueryError> {
        if !has_columns(&e) && !matches!(e, Expr::Literal(..)) {
            return self.fold(e);
        }
        match e {
            Expr::Literal(..) | Expr::Column(_) => Ok(e),
            Expr::Alias(a) => {
                let inner = self.prove(*a.expr)?;
                Ok(inner.alias_qualified(a.relation, a.name))
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right })
                if is_comparison(op) || matches!(op, Operator::And | Operator::Or) =>
            {
                Ok(Expr::BinaryExpr(BinaryExpr::new(
                    self.boxed(*left)?,
                    op,
                    self.boxed(*right)?,
                )))
            }
            Expr::BinaryExpr(b) => refuse(
                "arithmetic_not_allowed",
                None,
                format!(
                    "the operator {} is not allowed: arithmetic can overflow or divide by zero on some values",
                    b.op
                ),
            ),
            Expr::Not(x) => Ok(Expr::Not(self.boxed(*x)?)),
            Expr::IsNull(x) => Ok(Expr::IsNull(self.boxed(*x)?)),
            Expr::IsNotNull(x) => Ok(Expr::IsNotNull(self.boxed(*x)?)),
            Expr::IsTrue(x) => Ok(Expr::IsTrue(self.boxed(*x)?)),
            Expr::IsFalse(x) => Ok(Expr::IsFalse(self.boxed(*x)?)),
            Expr::IsNotTrue(x) => Ok(Expr::IsNotTrue(self.boxed(*x)?)),
            Expr::IsNotFalse(x) => Ok(Expr::IsNotFalse(self.boxed(*x)?)),
            Expr::IsUnknown(x) => Ok(Expr::IsUnknown(self.boxed(*x)?)),
            Expr::IsNotUnknown(x) => Ok(Expr::IsNotUnknown(self.boxed(*x)?)),
            Expr::Between(Between {
                expr,
                negated,
                low,
                high,
            }) => Ok(Expr::Between(Between::new(
                self.boxed(*expr)?,
                negated,
                self.boxed(*low)?,
                self.boxed(*high)?,
            ))),
            Expr::InList(InList {
                expr,
                list,
                negated,
            }) => {
                let list = list
                    .into_iter()
                    .map(|v| self.prove(v))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Expr::InList(InList::new(self.boxed(*expr)?, list, negated)))
            }
            Expr::Like(l) => self.like(l),
            Expr::Case(c) => {
                let base = c.expr.map(|b| self.boxed(*b)).transpose()?;
                let when_then = c
                    .when_then_expr
                    .into_iter()
                    .map(|(w, t)| Ok((self.boxed(*w)?, self.boxed(*t)?)))
                    .collect::<Result<Vec<_>, QueryError>>()?;
                let else_expr = c.else_expr.map(|x| self.boxed(*x)).transpose()?;
                Ok(Expr::Case(Case::new(base, when_then, else_expr)))
            }
            Expr::Cast(Cast { expr, field }) => {
                let inner = self.prove(*expr)?;
                let from = self.ty(&inner)?;
                let to = field.data_type().clone();
                if total_cast(&from, &to) {
                    return Ok(Expr::Cast(Cast::new_from_field(Box::new(inner), field)));
                }
                let col = column_name(&inner);
                let what = match &col {
                    Some(c) => format!("the column {c}"),
                    None => format!("{inner}"),
                };
                refuse(
                    "cast_not_allowed",
                    col.as_deref(),
                    format!(
                        "this query needs {what} converted from {from} to {to} (an explicit CAST, or one implied by \
                         comparing or combining values of different types, e.g. CASE text WHEN 1, or a text and a \
                         date in one CASE); that conversion fails on some values, which would reveal them: compare \
                         values of the same type"
                    ),
                )
            }
            Expr::TryCast(_) => refuse(
                "cast_not_allowed",
                None,
                "TRY_CAST is not allowed: its NULLs would reveal which values failed".into(),
            ),
            Expr::ScalarFunction(f) => {
                let name = f.func.name().to_ascii_lowercase();
                let inner: &dyn Any = f.func.inner().as_ref();
                let is_trunc = inner.downcast_ref::<DateTrunc>().is_some();
                if !is_trunc && !TOTAL_FUNCTIONS.contains(&name.as_str()) {
                    return refuse(
                        "function_not_allowed",
                        None,
                        format!("the function {name} is not allowed here"),
                    );
                }
                let args = f
                    .args
                    .into_iter()
                    .map(|a| self.prove(a))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Expr::ScalarFunction(ScalarFunction::new_udf(f.func, args)))
            }
            other => refuse(
                "expression_not_allowed",
                None,
                format!("the expression {other} is not allowed"),
            ),
        }
    }

    fn like(&self, l: Like) -> Result<Expr, QueryError> {
        if l.escape_char.is_some_and(|c| c != '\\') {
            return refuse(
                "like_escape_not_allowed",
                None,
                "LIKE … ESCAPE supports only the backslash as escape character (it is the default: write \\% or \\_)"
                    .into(),
            );
        }
        let pattern = self.prove(*l.pattern)?;
        if has_columns(&pattern) {
            return refuse(
                "expression_not_allowed",
                None,
                "a LIKE pattern must be a constant".into(),
            );
        }
        // The pattern compiles once for every row: check that it does, on a constant.
        let probe = Expr::Like(Like::new(
            l.negated,
            Box::new(Expr::Literal(ScalarValue::Utf8(Some(String::new())), None)),
            Box::new(pattern.clone()),
            l.escape_char,
            l.case_insensitive,
        ));
        if let Err(e) = evaluate_constant(&probe) {
            return Err(QueryError::Invalid(format!(
                "the LIKE pattern {pattern} is not usable: {}",
                clean(&e.to_string())
            )));
        }
        Ok(Expr::Like(Like::new(
            l.negated,
            self.boxed(*l.expr)?,
            Box::new(pattern),
            l.escape_char,
            l.case_insensitive,
        )))
    }

    fn fold(&self, e: Expr) -> Result<Expr, QueryError> {
        match evaluate_constant(&e) {
            Ok(v) => Ok(Expr::Literal(v, None)),
            Err(err) => Err(QueryError::Invalid(format!(
                "the constant expression {e} cannot be evaluated: {}",
                clean(&err.to_string())
            ))),
        }
    }
}

/// The substance of a DataFusion message about a constant of the query (it quotes the query's
/// own constants, never data).
fn clean(msg: &str) -> String {
    let mut m = msg;
    for prefix in [
        "Arrow error: ",
        "Cast error: ",
        "Execution error: ",
        "Error during planning: ",
        "Optimizer rule 'simplify_expressions' failed\ncaused by\n",
    ] {
        while let Some(rest) = m.strip_prefix(prefix) {
            m = rest;
        }
    }
    m.to_owned()
}

/// Checks the plan about to run (after the analyzer): every cast in it is total, one of the
/// rewrite's own fixed-point conversions of clamped values, or a constant. A failure here stops
/// the run before any row is read, the same for every dataset.
pub fn assert_total_plan(plan: &LogicalPlan) -> Result<(), QueryError> {
    let mut bad: Option<String> = None;
    plan.apply(|node| {
        for e in node.expressions() {
            e.apply(|x| {
                if let Expr::Cast(Cast { expr, field }) = x {
                    let ok = !has_columns(expr)
                        || fixed_point_cast(expr, field.data_type())
                        || expr
                            .get_type(node_schema(node).as_ref())
                            .is_ok_and(|from| total_cast(&from, field.data_type()));
                    if !ok && bad.is_none() {
                        bad = Some(format!("{x}"));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                if let Expr::TryCast(_) = x {
                    bad = Some(format!("{x}"));
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(if bad.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })
    .map_err(|e| QueryError::Internal(e.to_string()))?;
    match bad {
        None => Ok(()),
        Some(cast) => {
            tracing::error!(%cast, "a plan about to run holds a cast not proven total; refused");
            Err(QueryError::Internal(
                "the plan holds a conversion that could fail on some values; it was not run".into(),
            ))
        }
    }
}

/// The schema a node's expressions are evaluated against (its input's, merged for joins).
fn node_schema(node: &LogicalPlan) -> Arc<DFSchema> {
    let inputs = node.inputs();
    match inputs.as_slice() {
        [one] => Arc::clone(one.schema()),
        [l, r] => match l.schema().as_ref().clone().join(r.schema()) {
            Ok(s) => Arc::new(s),
            Err(_) => Arc::clone(node.schema()),
        },
        _ => Arc::clone(node.schema()),
    }
}

/// The rewrite's `CAST(round(least(greatest(x, lo), hi) [* scale]) AS Int64)`, whose argument is
/// clamped to constant bounds that fit (the policy checks `|bound| × scale`), and its widening
/// of such an integer to a decimal.
fn fixed_point_cast(inner: &Expr, to: &DataType) -> bool {
    match to {
        DataType::Int64 => match inner {
            Expr::ScalarFunction(f) if f.func.name() == "round" => {
                f.args.first().is_some_and(clamped_expr)
            }
            _ => false,
        },
        DataType::Decimal128(38, 0) => {
            matches!(inner, Expr::Cast(c) if c.field.data_type() == &DataType::Int64 && fixed_point_cast(&c.expr, &DataType::Int64))
        }
        _ => false,
    }
}

fn clamped_expr(e: &Expr) -> bool {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Multiply,
            right,
        }) => clamped_expr(left) && matches!(right.as_ref(), Expr::Literal(..)),
        Expr::ScalarFunction(f) if f.func.name() == "least" => {
            f.args.len() == 2
                && matches!(f.args[1], Expr::Literal(..))
                && matches!(&f.args[0], Expr::ScalarFunction(g) if g.func.name() == "greatest"
                    && g.args.len() == 2 && matches!(g.args[1], Expr::Literal(..)))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_trunc_is_found_by_its_own_name_only() {
        for unit in ["year", "quarter", "month", "week", "day"] {
            let f = DateTrunc::by_name(&format!("date_trunc_{unit}")).unwrap();
            assert_eq!(f.name(), format!("date_trunc_{unit}"));
        }
        for other in [
            "date_trunc_Month",
            "date_trunc_",
            "date_trunc",
            "upper",
            "x_date_trunc_day",
        ] {
            assert!(DateTrunc::by_name(other).is_none(), "{other}");
        }
    }

    #[test]
    fn truncation_matches_the_calendar() {
        let epoch = time::macros::date!(1970 - 01 - 01);
        for days in (-719_162i32..2_932_896).step_by(997) {
            let d = epoch + time::Duration::days(i64::from(days));
            let month = time::Date::from_calendar_date(d.year(), d.month(), 1).unwrap();
            let q = (u8::from(d.month()) - 1) / 3 * 3 + 1;
            let quarter =
                time::Date::from_calendar_date(d.year(), time::Month::try_from(q).unwrap(), 1)
                    .unwrap();
            let year = time::Date::from_calendar_date(d.year(), time::Month::January, 1).unwrap();
            let week = d - time::Duration::days(i64::from(d.weekday().number_days_from_monday()));
            let back = |x: time::Date| (x - epoch).whole_days() as i32;
            assert_eq!(trunc_days(days, TruncUnit::Day), Some(days));
            assert_eq!(trunc_days(days, TruncUnit::Month), Some(back(month)), "{d}");
            assert_eq!(
                trunc_days(days, TruncUnit::Quarter),
                Some(back(quarter)),
                "{d}"
            );
            assert_eq!(trunc_days(days, TruncUnit::Year), Some(back(year)), "{d}");
            assert_eq!(trunc_days(days, TruncUnit::Week), Some(back(week)), "{d}");
        }
    }

    #[test]
    fn truncation_is_total_on_every_day_count() {
        for days in [i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX] {
            for unit in [
                TruncUnit::Year,
                TruncUnit::Quarter,
                TruncUnit::Month,
                TruncUnit::Week,
                TruncUnit::Day,
            ] {
                let _ = trunc_days(days, unit);
            }
        }
    }

    #[test]
    fn casts_that_can_fail_are_not_total() {
        use DataType::*;
        assert!(total_cast(&Int64, &Utf8));
        assert!(total_cast(&Date32, &Utf8));
        assert!(total_cast(&Int32, &Int64));
        assert!(total_cast(&Int64, &Float64));
        assert!(!total_cast(&Utf8, &Int64));
        assert!(!total_cast(&Utf8, &Date32));
        assert!(!total_cast(&Float64, &Int64));
        assert!(!total_cast(&Int64, &Int32));
        assert!(!total_cast(&Date32, &Timestamp(TimeUnit::Nanosecond, None)));
        assert!(!total_cast(&Utf8, &Timestamp(TimeUnit::Nanosecond, None)));
    }
}
