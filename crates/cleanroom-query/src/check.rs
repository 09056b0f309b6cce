//! The policy checker: walks the logical plan DataFusion makes of the analyst's SQL and either
//! refuses it, naming the rule and the column, or turns it into a [`Spec`].
//!
//! It accepts one shape only, the shape of an aggregate report:
//!
//! ```text
//! SELECT <dimension expressions>, <aggregates>
//! FROM a [JOIN b ON a.key = b.key [AND …]] …
//! [WHERE <predicates on dimensions>]
//! GROUP BY <dimension expressions>
//! [ORDER BY <output columns>] [LIMIT n [OFFSET m]]
//! ```
//!
//! Everything else — non-aggregate output, key or person columns in output, joins that are not
//! inner equality joins on declared keys, self joins, sub-queries, window functions, set
//! operations, HAVING, arithmetic or casts that could fail on some value, functions outside a
//! short list of total (never failing) ones — is refused here, from the plan, before any data
//! is read. The planner sees only schemas: the tables registered for checking are empty.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::datatypes::DataType;
use cleanroom_core::policy::Aggregate;
use cleanroom_core::schema::ColumnRole;
use datafusion::catalog::TableProvider;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::empty::EmptyTable;
use datafusion::logical_expr::expr::{AggregateFunction, InList, ScalarFunction};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Between, BinaryExpr, Case, Cast, Expr, ExprSchemable, FetchType, JoinType, Like, LogicalPlan,
    Operator, SkipType,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;

use crate::QueryError;
use crate::catalog::Catalog;
use crate::spec::{
    AggregateSpec, Clamped, GroupKey, JoinTree, Measure, OrderKey, OutputColumn, Source, Spec,
    TableUse, qualifier,
};
use crate::total::make_total;

/// Longest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 64 * 1024;
/// Most datasets one query may join.
pub const MAX_TABLES: usize = 4;
/// Most values in an `IN (…)` list.
const MAX_IN_LIST: usize = 1000;

const DATE_PARTS: &[&str] = &[
    "year", "quarter", "month", "week", "day", "dow", "doy", "isodow", "isoyear",
];
const DATE_TRUNC_UNITS: &[&str] = &["year", "quarter", "month", "week", "day"];

/// What the checker allows beyond the rules for analysts' own SQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Compare metrics with constants in filters (`WHERE purchases > 0`). Only templates that
    /// the owners approved use it: an owner's policy lets analysts filter on dimensions only.
    pub metric_filters: bool,
}

/// Checks `sql` against the datasets and policies in `catalog`.
pub async fn check(sql: &str, catalog: &Catalog) -> Result<Spec, QueryError> {
    check_with(sql, catalog, CheckOptions::default()).await
}

/// Deepest nesting of expressions and sub-queries accepted (parentheses, operator chains,
/// `CASE`, function calls, sub-queries all count): planning recurses once per level.
pub const MAX_NESTING: usize = 100;
/// Most expression nodes in one query.
pub const MAX_EXPRESSIONS: usize = 20_000;
/// Stack of the thread that parses, measures and plans a query. Parsing a 64 KiB operator
/// chain builds a tree about 32,000 levels deep before it can be measured (and dropping it
/// recurses as deep), which needs a few MiB in a debug build; planning a query within
/// [`MAX_NESTING`] needs far less. The pages are reserved, not committed, until touched.
const PLANNING_STACK: usize = 64 << 20;

/// Checks `sql` with `options`.
///
/// Parsing, the nesting bound, planning and the walk run on a thread of their own with a
/// [`PLANNING_STACK`] stack: no query text of at most [`MAX_SQL_BYTES`] can overflow it, and a
/// query nested deeper than [`MAX_NESTING`] is refused before DataFusion plans it.
pub async fn check_with(
    sql: &str,
    catalog: &Catalog,
    options: CheckOptions,
) -> Result<Spec, QueryError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(QueryError::Invalid(format!(
            "the query is longer than {MAX_SQL_BYTES} bytes"
        )));
    }
    let sql = sql.to_owned();
    let catalog = catalog.clone();
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cleanroom-check".into())
        .stack_size(PLANNING_STACK)
        .spawn(move || {
            let result = handle.block_on(check_here(&sql, &catalog, options));
            let _ = tx.send(result);
        })
        .map_err(|e| QueryError::Internal(format!("starting the planning thread: {e}")))?;
    rx.await
        .map_err(|_| QueryError::Internal("the planning thread stopped".into()))?
}

/// Counts nesting and nodes of a parsed statement, stopping at the first excess.
struct Nesting {
    depth: usize,
    nodes: usize,
}

impl Nesting {
    fn enter(&mut self) -> std::ops::ControlFlow<()> {
        self.depth += 1;
        self.nodes += 1;
        if self.depth > MAX_NESTING || self.nodes > MAX_EXPRESSIONS {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    }
    fn leave(&mut self) -> std::ops::ControlFlow<()> {
        self.depth -= 1;
        std::ops::ControlFlow::Continue(())
    }
}

impl datafusion::sql::sqlparser::ast::Visitor for Nesting {
    type Break = ();
    fn pre_visit_query(
        &mut self,
        _q: &datafusion::sql::sqlparser::ast::Query,
    ) -> std::ops::ControlFlow<()> {
        self.enter()
    }
    fn post_visit_query(
        &mut self,
        _q: &datafusion::sql::sqlparser::ast::Query,
    ) -> std::ops::ControlFlow<()> {
        self.leave()
    }
    fn pre_visit_expr(
        &mut self,
        _e: &datafusion::sql::sqlparser::ast::Expr,
    ) -> std::ops::ControlFlow<()> {
        self.enter()
    }
    fn post_visit_expr(
        &mut self,
        _e: &datafusion::sql::sqlparser::ast::Expr,
    ) -> std::ops::ControlFlow<()> {
        self.leave()
    }
}

fn too_deep() -> QueryError {
    QueryError::refused(
        "query_too_complex",
        None,
        format!(
            "the query nests expressions or sub-queries more than {MAX_NESTING} levels deep (parentheses, chains of              AND/OR or arithmetic, CASE, function calls) or has more than {MAX_EXPRESSIONS} expressions:              simplify it (a long OR of equalities is an IN list)"
        ),
    )
}

async fn check_here(
    sql: &str,
    catalog: &Catalog,
    options: CheckOptions,
) -> Result<Spec, QueryError> {
    use datafusion::sql::sqlparser::ast::Visit;
    let ctx = schema_only_session(catalog)?;
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(|e| match e {
        datafusion::error::DataFusionError::SQL(p, _)
            if matches!(
                *p,
                datafusion::sql::sqlparser::parser::ParserError::RecursionLimitExceeded
            ) =>
        {
            too_deep()
        }
        other => QueryError::Invalid(clean(&other.to_string())),
    })?;
    if let DfStatement::Statement(s) = &statement {
        let mut nesting = Nesting { depth: 0, nodes: 0 };
        if s.visit(&mut nesting).is_break() {
            return Err(too_deep());
        }
    }
    match &statement {
        DfStatement::Statement(s) if matches!(**s, sqlparser_query!()) => {}
        _ => {
            return Err(QueryError::refused(
                "statement_not_allowed",
                None,
                "only SELECT queries are accepted",
            ));
        }
    }
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(|e| QueryError::Invalid(clean(&e.to_string())))?;
    Checker::new(catalog, options).plan(&plan)
}

macro_rules! sqlparser_query {
    () => {
        datafusion::sql::sqlparser::ast::Statement::Query(_)
    };
}
use sqlparser_query;

/// DataFusion's messages start with the stage ("Error during planning: …"): keep the substance.
fn clean(msg: &str) -> String {
    let mut m = msg;
    for prefix in [
        "Error during planning: ",
        "SQL error: ",
        "This feature is not implemented: ",
        "Schema error: ",
    ] {
        if let Some(rest) = m.strip_prefix(prefix) {
            m = rest;
        }
    }
    m.to_owned()
}

fn schema_only_session(catalog: &Catalog) -> Result<SessionContext, QueryError> {
    let config = SessionConfig::new().with_information_schema(false);
    let ctx = SessionContext::new_with_config(config);
    for t in &catalog.tables {
        let table: Arc<dyn TableProvider> = Arc::new(EmptyTable::new(t.arrow_schema()));
        ctx.register_table(t.name.as_str(), table)
            .map_err(|e| QueryError::Internal(e.to_string()))?;
    }
    Ok(ctx)
}

/// The output columns of the nodes above the aggregate (name and source) and the aggregate.
type Above<'p> = (Vec<(String, Source)>, &'p LogicalPlan);

struct Checker<'a> {
    catalog: &'a Catalog,
    options: CheckOptions,
    uses: Vec<TableUse>,
    /// Qualifier (alias or table name) → index into `uses`.
    aliases: HashMap<String, usize>,
}

fn refuse<T>(
    rule: &'static str,
    column: Option<&str>,
    msg: impl Into<String>,
) -> Result<T, QueryError> {
    Err(QueryError::refused(rule, column, msg))
}

fn unalias(e: &Expr) -> (&Expr, Option<&str>) {
    match e {
        Expr::Alias(a) => (unalias(&a.expr).0, Some(a.name.as_str())),
        other => (other, None),
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
}

fn is_integer(t: &DataType) -> bool {
    t.is_integer()
}

fn is_numeric(t: &DataType) -> bool {
    t.is_integer() || t.is_floating()
}

impl<'a> Checker<'a> {
    fn new(catalog: &'a Catalog, options: CheckOptions) -> Self {
        Checker {
            catalog,
            options,
            uses: Vec::new(),
            aliases: HashMap::new(),
        }
    }

    fn plan(mut self, plan: &LogicalPlan) -> Result<Spec, QueryError> {
        let mut order = Vec::new();
        let mut limit = None;
        let mut offset = 0;
        // Above the aggregate: projections of its outputs, sorts and limits (post-processing).
        let (outputs, aggregate) = match self.above(plan, &mut order, &mut limit, &mut offset) {
            Err(QueryError::Refused {
                rule: "non_aggregate_output",
                column: None,
                message,
            }) => {
                // Name the first row-level output column, so the analyst sees what to change.
                let column = first_output_column(plan);
                let message = match &column {
                    Some(c) => format!("{c} would be output row by row: {message}"),
                    None => message,
                };
                return Err(QueryError::Refused {
                    rule: "non_aggregate_output",
                    column,
                    message,
                });
            }
            other => other?,
        };
        let LogicalPlan::Aggregate(agg) = aggregate else {
            return refuse(
                "non_aggregate_output",
                None,
                "a query must aggregate (GROUP BY with COUNT, SUM, AVG …): rows are never returned",
            );
        };
        // Below the aggregate: filters, then the join tree.
        let mut input = agg.input.as_ref();
        let mut filters = Vec::new();
        loop {
            match input {
                LogicalPlan::Filter(f) => {
                    filters.push((f.predicate.clone(), f.input.schema().clone()));
                    input = f.input.as_ref();
                }
                LogicalPlan::Projection(_) => {
                    return refuse(
                        "subquery",
                        None,
                        "sub-queries and derived tables are not allowed: aggregate the datasets directly",
                    );
                }
                _ => break,
            }
        }
        let (tree, mut cross) = self.join_tree(input)?;
        if self.uses.is_empty() {
            return refuse("no_dataset", None, "the query reads no dataset");
        }
        for (pred, schema) in filters {
            for conjunct in split_conjunction(&pred) {
                let checked = self.predicate(conjunct, &schema)?;
                cross.push(checked);
            }
        }
        // Conjuncts over one table are applied before that table's contributions are bounded.
        let mut cross_filters = Vec::new();
        for f in cross {
            let tables: BTreeSet<usize> = f
                .column_refs()
                .iter()
                .filter_map(|c| {
                    c.relation
                        .as_ref()
                        .and_then(|r| r.table().strip_prefix('t'))
                        .and_then(|n| n.parse::<usize>().ok())
                })
                .collect();
            if tables.len() == 1 {
                let u = *tables.iter().next().expect("one table");
                self.uses[u].filters.push(f);
            } else {
                cross_filters.push(f);
            }
        }

        let in_schema = agg.input.schema().clone();
        let mut group_keys = Vec::new();
        for (i, g) in agg.group_expr.iter().enumerate() {
            if matches!(g, Expr::GroupingSet(_)) {
                return refuse(
                    "grouping_sets",
                    None,
                    "GROUPING SETS, ROLLUP and CUBE are not supported: run one query per grouping",
                );
            }
            let expr = self.dim_expr(g, &in_schema)?;
            let name = agg.schema.field(i).name().clone();
            group_keys.push(GroupKey { expr, name });
        }
        let mut aggregates = Vec::new();
        for (j, a) in agg.aggr_expr.iter().enumerate() {
            let measure = self.aggregate(a, &in_schema)?;
            let name = agg.schema.field(group_keys.len() + j).name().clone();
            aggregates.push(AggregateSpec { measure, name });
        }
        if aggregates.is_empty() {
            return refuse(
                "non_aggregate_output",
                None,
                "a query must compute at least one aggregate (COUNT, SUM, AVG …): a bare list of groups is not released",
            );
        }
        // Every table contributes its person column (for bounding and thresholds).
        for u in &mut self.uses {
            let t = &self.catalog.tables[u.table];
            u.columns.insert(t.unit_column().to_owned());
            u.columns.extend(u.keys.iter().cloned());
        }
        let outputs = outputs
            .into_iter()
            .map(|(name, source)| OutputColumn { name, source })
            .collect();
        totalise(
            Spec {
                uses: self.uses,
                tree,
                cross_filters,
                group_keys,
                aggregates,
                outputs,
                order_by: order,
                limit,
                offset,
                frequency: None,
            },
            self.catalog,
        )
    }

    /// Resolves the nodes above the aggregate into output columns (by their source among the
    /// aggregate's outputs), ordering and limit. Returns the aggregate node.
    fn above<'p>(
        &self,
        plan: &'p LogicalPlan,
        order: &mut Vec<OrderKey>,
        limit: &mut Option<usize>,
        offset: &mut usize,
    ) -> Result<Above<'p>, QueryError> {
        match plan {
            LogicalPlan::Aggregate(agg) => {
                let groups = agg.group_expr.len();
                let outs = agg
                    .schema
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let src = if i < groups {
                            Source::Group(i)
                        } else {
                            Source::Aggregate(i - groups)
                        };
                        (f.name().clone(), src)
                    })
                    .collect();
                Ok((outs, plan))
            }
            LogicalPlan::Projection(p) => {
                let (inner, agg) = self.above(&p.input, order, limit, offset)?;
                let mut outs = Vec::new();
                for (i, e) in p.expr.iter().enumerate() {
                    let (bare, _) = unalias(e);
                    let Expr::Column(c) = bare else {
                        return Err(self.output_refusal(bare));
                    };
                    let idx = p.input.schema().index_of_column(c).map_err(|_| {
                        QueryError::Internal(format!("output column {c} not found"))
                    })?;
                    outs.push((p.schema.field(i).name().clone(), inner[idx].1));
                }
                Ok((outs, agg))
            }
            LogicalPlan::Sort(s) => {
                let (inner, agg) = self.above(&s.input, order, limit, offset)?;
                let mut keys = Vec::new();
                for k in &s.expr {
                    let (bare, _) = unalias(&k.expr);
                    let Expr::Column(c) = bare else {
                        return refuse("order_by", None, "ORDER BY may name output columns only");
                    };
                    let idx =
                        s.input.schema().index_of_column(c).map_err(|_| {
                            QueryError::Internal(format!("sort column {c} not found"))
                        })?;
                    keys.push(OrderKey {
                        source: inner[idx].1,
                        ascending: k.asc,
                        nulls_first: k.nulls_first,
                    });
                }
                // An outer sort takes precedence over an inner one.
                if order.is_empty() {
                    *order = keys;
                }
                if let Some(f) = s.fetch {
                    *limit = Some(limit.map_or(f, |l| l.min(f)));
                }
                Ok((inner, agg))
            }
            LogicalPlan::Limit(l) => {
                let (inner, agg) = self.above(&l.input, order, limit, offset)?;
                match l.get_skip_type() {
                    Ok(SkipType::Literal(s)) => *offset += s,
                    _ => return refuse("limit", None, "OFFSET must be a constant"),
                }
                match l.get_fetch_type() {
                    Ok(FetchType::Literal(Some(f))) => *limit = Some(limit.map_or(f, |x| x.min(f))),
                    Ok(FetchType::Literal(None)) => {}
                    _ => return refuse("limit", None, "LIMIT must be a constant"),
                }
                Ok((inner, agg))
            }
            LogicalPlan::Filter(_) => refuse(
                "having",
                None,
                "HAVING is not supported: it would filter on exact aggregates; filter the released result instead",
            ),
            LogicalPlan::Distinct(d) if matches!(d.input().as_ref(), LogicalPlan::Union(_)) => {
                refuse(
                    "set_operation",
                    None,
                    "UNION, INTERSECT and EXCEPT are not allowed: run one query per part",
                )
            }
            LogicalPlan::Distinct(_) => refuse(
                "non_aggregate_output",
                None,
                "SELECT DISTINCT lists values rather than aggregating them: use GROUP BY with an aggregate",
            ),
            LogicalPlan::Window(_) => refuse(
                "window_function",
                None,
                "window functions are not allowed: they compute per-row values",
            ),
            LogicalPlan::Union(_) => refuse(
                "set_operation",
                None,
                "UNION, INTERSECT and EXCEPT are not allowed: run one query per part",
            ),
            LogicalPlan::SubqueryAlias(_) => refuse(
                "subquery",
                None,
                "sub-queries and derived tables are not allowed: aggregate the datasets directly",
            ),
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => refuse(
                "statement_not_allowed",
                None,
                "EXPLAIN is not available: use a dry run to see how a query would be checked",
            ),
            _ => refuse(
                "non_aggregate_output",
                None,
                "a query must aggregate (GROUP BY with COUNT, SUM, AVG …): rows are never returned",
            ),
        }
    }

    fn output_refusal(&self, e: &Expr) -> QueryError {
        match e {
            Expr::WindowFunction(_) => QueryError::refused(
                "window_function",
                None,
                "window functions are not allowed: they compute per-row values",
            ),
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => {
                QueryError::refused("subquery", None, "sub-queries are not allowed")
            }
            _ => QueryError::refused(
                "computed_output",
                None,
                format!(
                    "output columns must be group keys or aggregates as computed; compute {e} from the released values instead"
                ),
            ),
        }
    }

    // ------------------------------------------------------------------ joins and tables

    fn join_tree(&mut self, plan: &LogicalPlan) -> Result<(JoinTree, Vec<Expr>), QueryError> {
        match plan {
            LogicalPlan::SubqueryAlias(a) => match a.input.as_ref() {
                LogicalPlan::TableScan(_) => {
                    let idx = self.table(a.input.as_ref(), a.alias.table())?;
                    Ok((JoinTree::Table(idx), Vec::new()))
                }
                _ => refuse(
                    "subquery",
                    None,
                    "sub-queries and derived tables are not allowed: aggregate the datasets directly",
                ),
            },
            LogicalPlan::TableScan(s) => {
                let idx = self.table(plan, s.table_name.table())?;
                Ok((JoinTree::Table(idx), Vec::new()))
            }
            LogicalPlan::Join(j) => {
                if j.join_type != JoinType::Inner {
                    return refuse(
                        "join_type",
                        None,
                        format!(
                            "{} joins are not supported: use an inner JOIN … ON equality of join keys",
                            j.join_type
                        ),
                    );
                }
                if j.null_equality != datafusion::common::NullEquality::NullEqualsNothing {
                    return refuse(
                        "join_type",
                        None,
                        "joins that match NULL keys are not allowed",
                    );
                }
                let (left, mut cross_l) = self.join_tree(&j.left)?;
                let (right, cross_r) = self.join_tree(&j.right)?;
                cross_l.extend(cross_r);
                let left_tables = tables_of(&left);
                let schema = j.schema.clone();
                let mut on = Vec::new();
                let mut conditions: Vec<Expr> =
                    j.on.iter().map(|(l, r)| l.clone().eq(r.clone())).collect();
                if let Some(f) = &j.filter {
                    conditions.extend(split_conjunction(f).into_iter().cloned());
                }
                for c in conditions {
                    if let Some(pair) = self.key_pair(&c, &left_tables)? {
                        on.push(pair);
                    } else {
                        let checked = self.predicate(&c, &schema)?;
                        cross_l.push(checked);
                    }
                }
                if on.is_empty() {
                    return refuse(
                        "join_not_on_key",
                        None,
                        "every join needs an equality of join keys (JOIN b ON a.key = b.key); cross joins and joins on other columns are not allowed",
                    );
                }
                Ok((
                    JoinTree::Join {
                        left: Box::new(left),
                        right: Box::new(right),
                        on,
                    },
                    cross_l,
                ))
            }
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => refuse(
                "no_dataset",
                None,
                "the query must read datasets of the collaboration",
            ),
            LogicalPlan::Union(_) => refuse(
                "set_operation",
                None,
                "UNION, INTERSECT and EXCEPT are not allowed: run one query per part",
            ),
            LogicalPlan::Window(_) => refuse(
                "window_function",
                None,
                "window functions are not allowed: they compute per-row values",
            ),
            _ => refuse(
                "subquery",
                None,
                "sub-queries and derived tables are not allowed: aggregate the datasets directly",
            ),
        }
    }

    fn table(&mut self, scan: &LogicalPlan, alias: &str) -> Result<usize, QueryError> {
        let LogicalPlan::TableScan(s) = scan else {
            return Err(QueryError::Internal("not a table scan".into()));
        };
        let name = s.table_name.table();
        let Some(t) = self.catalog.find(name) else {
            return refuse(
                "unknown_dataset",
                None,
                format!("no dataset named {name} is available to this query"),
            );
        };
        if !self.catalog.tables[t].has_policy {
            return refuse(
                "no_policy",
                None,
                format!(
                    "dataset {name} has no analysis policy yet: its owner must set one before anyone can analyse it"
                ),
            );
        }
        if self.uses.iter().any(|u| u.table == t) {
            return refuse(
                "self_join",
                None,
                format!("dataset {name} appears twice: self joins would count a person twice"),
            );
        }
        if self.uses.len() == MAX_TABLES {
            return refuse(
                "too_many_datasets",
                None,
                format!("a query may join at most {MAX_TABLES} datasets"),
            );
        }
        if self.aliases.contains_key(alias) {
            return Err(QueryError::Invalid(format!(
                "the alias {alias} is used twice"
            )));
        }
        let idx = self.uses.len();
        self.uses.push(TableUse {
            table: t,
            filters: Vec::new(),
            keys: BTreeSet::new(),
            columns: BTreeSet::new(),
        });
        self.aliases.insert(alias.to_owned(), idx);
        Ok(idx)
    }

    /// `a.k = b.k` with both sides declared join keys on opposite sides of the join.
    fn key_pair(
        &mut self,
        cond: &Expr,
        left_tables: &BTreeSet<usize>,
    ) -> Result<Option<(Column, Column)>, QueryError> {
        let Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) = cond
        else {
            return Ok(None);
        };
        let (Expr::Column(a), Expr::Column(b)) = (unalias(left).0, unalias(right).0) else {
            return Ok(None);
        };
        let (ua, na) = self.resolve(a)?;
        let (ub, nb) = self.resolve(b)?;
        if left_tables.contains(&ua) == left_tables.contains(&ub) {
            return Ok(None);
        }
        let key_a = self.is_key(ua, &na);
        let key_b = self.is_key(ub, &nb);
        if !(key_a && key_b) {
            let role_a = self.role(ua, &na);
            let role_b = self.role(ub, &nb);
            // Equality of two dimensions across tables is a filter, not a join.
            if role_a == Some(ColumnRole::Dimension) && role_b == Some(ColumnRole::Dimension) {
                return Ok(None);
            }
            let bad = if key_a { &nb } else { &na };
            return refuse(
                "join_not_on_key",
                Some(bad),
                format!(
                    "column {bad} is not a join key in its owner's policy: joins must be on declared join keys"
                ),
            );
        }
        let ta = self.column_type(ua, &na);
        let tb = self.column_type(ub, &nb);
        if ta != tb {
            return refuse(
                "type_mismatch",
                Some(&na),
                format!("join keys {na} and {nb} have different types"),
            );
        }
        self.uses[ua].keys.insert(na.clone());
        self.uses[ub].keys.insert(nb.clone());
        let (l, r) = if left_tables.contains(&ua) {
            ((ua, na), (ub, nb))
        } else {
            ((ub, nb), (ua, na))
        };
        Ok(Some((
            Column::new(Some(qualifier(l.0)), l.1),
            Column::new(Some(qualifier(r.0)), r.1),
        )))
    }

    // ------------------------------------------------------------------ columns

    fn resolve(&self, c: &Column) -> Result<(usize, String), QueryError> {
        let found = match &c.relation {
            Some(r) => self.aliases.get(r.table()).copied(),
            None => {
                let hits: Vec<usize> = (0..self.uses.len())
                    .filter(|u| {
                        self.catalog.tables[self.uses[*u].table]
                            .column(&c.name)
                            .is_some()
                    })
                    .collect();
                if hits.len() > 1 {
                    return Err(QueryError::Invalid(format!(
                        "column {} is ambiguous: qualify it with its table",
                        c.name
                    )));
                }
                hits.first().copied()
            }
        };
        match found {
            Some(u)
                if self.catalog.tables[self.uses[u].table]
                    .column(&c.name)
                    .is_some() =>
            {
                Ok((u, c.name.clone()))
            }
            _ => refuse(
                "unknown_column",
                Some(&c.name),
                format!("column {c} is not a column of a dataset in the query"),
            ),
        }
    }

    fn role(&self, u: usize, name: &str) -> Option<ColumnRole> {
        self.catalog.tables[self.uses[u].table].role(name)
    }

    fn is_key(&self, u: usize, name: &str) -> bool {
        self.catalog.tables[self.uses[u].table]
            .policy
            .is_join_key(name)
    }

    fn column_type(&self, u: usize, name: &str) -> Option<cleanroom_core::schema::ColumnType> {
        self.catalog.tables[self.uses[u].table]
            .column(name)
            .map(|c| c.ty)
    }

    fn qualified(&mut self, u: usize, name: &str) -> Expr {
        self.uses[u].columns.insert(name.to_owned());
        Expr::Column(Column::new(Some(qualifier(u)), name))
    }

    /// A column used as a dimension (grouped on, filtered on).
    fn dimension(&mut self, c: &Column) -> Result<Expr, QueryError> {
        let (u, name) = self.resolve(c)?;
        self.catalog.tables[self.uses[u].table].may_group_on(&name)?;
        Ok(self.qualified(u, &name))
    }

    // ------------------------------------------------------------------ expressions

    /// A dimension expression: a dimension column, a literal, or a total function of them.
    fn dim_expr(&mut self, e: &Expr, schema: &DFSchema) -> Result<Expr, QueryError> {
        match e {
            Expr::Alias(a) => self.dim_expr(&a.expr, schema),
            Expr::Column(c) => self.dimension(c),
            Expr::Literal(..) => Ok(e.clone()),
            Expr::ScalarFunction(f) => self.function(f, schema),
            Expr::Case(c) => self.case(c, schema),
            Expr::Cast(Cast { expr, field }) => {
                if is_string(field.data_type()) {
                    let inner = self.dim_expr(expr, schema)?;
                    Ok(Expr::Cast(Cast::new(Box::new(inner), DataType::Utf8)))
                } else {
                    refuse(
                        "cast_not_allowed",
                        None,
                        format!(
                            "CAST to {} is not allowed: a cast that fails on some values would reveal them; only casts to text are allowed",
                            field.data_type()
                        ),
                    )
                }
            }
            Expr::TryCast(_) => refuse(
                "cast_not_allowed",
                None,
                "TRY_CAST is not allowed: its NULLs would reveal which values failed",
            ),
            Expr::BinaryExpr(b)
                if !is_comparison(b.op) && !matches!(b.op, Operator::And | Operator::Or) =>
            {
                refuse(
                    "arithmetic_not_allowed",
                    None,
                    format!(
                        "the operator {} is not allowed on dimensions: arithmetic can overflow or divide by zero on some values",
                        b.op
                    ),
                )
            }
            Expr::BinaryExpr(_)
            | Expr::Not(_)
            | Expr::IsNull(_)
            | Expr::IsNotNull(_)
            | Expr::Between(_)
            | Expr::InList(_)
            | Expr::Like(_) => self.predicate(e, schema),
            Expr::Negative(_) => refuse(
                "arithmetic_not_allowed",
                None,
                "arithmetic is not allowed on dimensions",
            ),
            Expr::AggregateFunction(_) => refuse(
                "nested_aggregate",
                None,
                "aggregates cannot be nested or grouped on",
            ),
            Expr::WindowFunction(_) => refuse(
                "window_function",
                None,
                "window functions are not allowed: they compute per-row values",
            ),
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => {
                refuse("subquery", None, "sub-queries are not allowed")
            }
            other => refuse(
                "expression_not_allowed",
                None,
                format!("the expression {other} is not allowed"),
            ),
        }
    }

    fn function(&mut self, f: &ScalarFunction, schema: &DFSchema) -> Result<Expr, QueryError> {
        let name = f.func.name().to_ascii_lowercase();
        let args = &f.args;
        let lit_str = |e: &Expr| match unalias(e).0 {
            Expr::Literal(ScalarValue::Utf8(Some(s)), _)
            | Expr::Literal(ScalarValue::Utf8View(Some(s)), _)
            | Expr::Literal(ScalarValue::LargeUtf8(Some(s)), _) => Some(s.to_ascii_lowercase()),
            _ => None,
        };
        let lit_int = |e: &Expr| match unalias(e).0 {
            Expr::Literal(v, _) if v.data_type().is_integer() && !v.is_null() => {
                v.to_string().parse::<i64>().ok()
            }
            _ => None,
        };
        let bad_args = |why: &str| -> Result<Expr, QueryError> {
            refuse("function_not_allowed", None, format!("{name}: {why}"))
        };
        let mut out = Vec::with_capacity(args.len());
        match name.as_str() {
            "lower" | "upper" | "btrim" | "ltrim" | "rtrim" | "trim" | "char_length"
            | "character_length" | "length" | "initcap" => {
                if args.is_empty() {
                    return bad_args("needs an argument");
                }
                out.push(self.dim_expr(&args[0], schema)?);
                for a in &args[1..] {
                    if lit_str(a).is_none() {
                        return bad_args("extra arguments must be text literals");
                    }
                    out.push(a.clone());
                }
            }
            "date_trunc" => {
                match args.first().and_then(lit_str) {
                    Some(u) if DATE_TRUNC_UNITS.contains(&u.as_str()) && args.len() == 2 => {}
                    _ => {
                        return bad_args(
                            "the first argument must be one of 'year', 'quarter', 'month', 'week', 'day'",
                        );
                    }
                }
                out.push(args[0].clone());
                out.push(self.dim_expr(&args[1], schema)?);
            }
            "date_part" => {
                match args.first().and_then(lit_str) {
                    Some(u) if DATE_PARTS.contains(&u.as_str()) && args.len() == 2 => {}
                    _ => {
                        return bad_args(
                            "the part must be one of year, quarter, month, week, day, dow, doy, isodow, isoyear",
                        );
                    }
                }
                out.push(args[0].clone());
                out.push(self.dim_expr(&args[1], schema)?);
            }
            "substr" | "substring" => {
                if !(2..=3).contains(&args.len())
                    || lit_int(&args[1]).is_none_or(|s| s < 1)
                    || args
                        .get(2)
                        .is_some_and(|n| lit_int(n).is_none_or(|n| n < 0))
                {
                    return bad_args(
                        "takes a dimension, a constant start ≥ 1 and an optional constant length ≥ 0",
                    );
                }
                out.push(self.dim_expr(&args[0], schema)?);
                out.extend(args[1..].iter().cloned());
            }
            "left" | "right" => {
                if args.len() != 2 || lit_int(&args[1]).is_none_or(|n| n < 0) {
                    return bad_args("takes a dimension and a constant length ≥ 0");
                }
                out.push(self.dim_expr(&args[0], schema)?);
                out.push(args[1].clone());
            }
            "coalesce" => {
                if args.len() < 2 {
                    return bad_args("needs at least two arguments");
                }
                let mut ty: Option<DataType> = None;
                for a in args {
                    let checked = self.dim_expr(a, schema)?;
                    let is_null = matches!(unalias(a).0, Expr::Literal(v, _) if v.is_null());
                    if !is_null {
                        let t = a
                            .get_type(schema)
                            .map_err(|e| QueryError::Invalid(e.to_string()))?;
                        match &ty {
                            None => ty = Some(t),
                            Some(prev) if *prev == t || (is_string(prev) && is_string(&t)) => {}
                            Some(prev) => {
                                return bad_args(&format!(
                                    "all arguments must have the same type ({prev} and {t} differ)"
                                ));
                            }
                        }
                    }
                    out.push(checked);
                }
            }
            "least" | "greatest" => {
                return refuse(
                    "function_not_allowed",
                    None,
                    format!("{name} is allowed only to clamp a metric inside SUM or AVG"),
                );
            }
            _ => {
                return refuse(
                    "function_not_allowed",
                    None,
                    format!(
                        "the function {name} is not allowed; allowed on dimensions: lower, upper, trim, length, substr, left, right, coalesce, date_trunc, date_part"
                    ),
                );
            }
        }
        Ok(Expr::ScalarFunction(ScalarFunction::new_udf(
            Arc::clone(&f.func),
            out,
        )))
    }

    fn case(&mut self, c: &Case, schema: &DFSchema) -> Result<Expr, QueryError> {
        let base = match &c.expr {
            Some(e) => Some(Box::new(self.dim_expr(e, schema)?)),
            None => None,
        };
        let mut when_then = Vec::new();
        for (w, t) in &c.when_then_expr {
            let w = if base.is_some() {
                self.operand(w, schema)?
            } else {
                self.predicate(w, schema)?
            };
            let t = self.operand(t, schema)?;
            when_then.push((Box::new(w), Box::new(t)));
        }
        let else_expr = match &c.else_expr {
            Some(e) => Some(Box::new(self.operand(e, schema)?)),
            None => None,
        };
        Ok(Expr::Case(Case::new(base, when_then, else_expr)))
    }

    fn operand(&mut self, e: &Expr, schema: &DFSchema) -> Result<Expr, QueryError> {
        match unalias(e).0 {
            Expr::Literal(..) => Ok(unalias(e).0.clone()),
            Expr::Column(c) if self.options.metric_filters => {
                let (u, name) = self.resolve(c)?;
                let t = &self.catalog.tables[self.uses[u].table];
                if t.role(&name) == Some(ColumnRole::Metric) && t.policy.metric(&name).is_some() {
                    Ok(self.qualified(u, &name))
                } else {
                    self.dim_expr(unalias(e).0, schema)
                }
            }
            other => self.dim_expr(other, schema),
        }
    }

    /// A row-level predicate over dimensions and literals.
    fn predicate(&mut self, e: &Expr, schema: &DFSchema) -> Result<Expr, QueryError> {
        match e {
            Expr::Alias(a) => self.predicate(&a.expr, schema),
            Expr::BinaryExpr(BinaryExpr { left, op, right })
                if matches!(op, Operator::And | Operator::Or) =>
            {
                let l = self.predicate(left, schema)?;
                let r = self.predicate(right, schema)?;
                Ok(Expr::BinaryExpr(BinaryExpr::new(
                    Box::new(l),
                    *op,
                    Box::new(r),
                )))
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) if is_comparison(*op) => {
                let l = self.operand(left, schema)?;
                let r = self.operand(right, schema)?;
                let (l, r) = self.comparable(left, l, right, r, schema)?;
                Ok(Expr::BinaryExpr(BinaryExpr::new(
                    Box::new(l),
                    *op,
                    Box::new(r),
                )))
            }
            Expr::BinaryExpr(b) => refuse(
                "arithmetic_not_allowed",
                None,
                format!(
                    "the operator {} is not allowed in filters: arithmetic can overflow or divide by zero on some values",
                    b.op
                ),
            ),
            Expr::Not(x) => Ok(Expr::Not(Box::new(self.predicate(x, schema)?))),
            Expr::IsNull(x) => Ok(Expr::IsNull(Box::new(self.dim_expr(x, schema)?))),
            Expr::IsNotNull(x) => Ok(Expr::IsNotNull(Box::new(self.dim_expr(x, schema)?))),
            Expr::IsTrue(x) => Ok(Expr::IsTrue(Box::new(self.predicate(x, schema)?))),
            Expr::IsFalse(x) => Ok(Expr::IsFalse(Box::new(self.predicate(x, schema)?))),
            Expr::IsNotTrue(x) => Ok(Expr::IsNotTrue(Box::new(self.predicate(x, schema)?))),
            Expr::IsNotFalse(x) => Ok(Expr::IsNotFalse(Box::new(self.predicate(x, schema)?))),
            Expr::IsUnknown(x) => Ok(Expr::IsUnknown(Box::new(self.predicate(x, schema)?))),
            Expr::IsNotUnknown(x) => Ok(Expr::IsNotUnknown(Box::new(self.predicate(x, schema)?))),
            Expr::Between(Between {
                expr,
                negated,
                low,
                high,
            }) => {
                let x = self.dim_expr(expr, schema)?;
                let (x, lo) = self.comparable(expr, x, low, self.literal(low)?, schema)?;
                let (x, hi) = self.comparable(expr, x, high, self.literal(high)?, schema)?;
                Ok(Expr::Between(Between::new(
                    Box::new(x),
                    *negated,
                    Box::new(lo),
                    Box::new(hi),
                )))
            }
            Expr::InList(InList {
                expr,
                list,
                negated,
            }) => {
                if list.len() > MAX_IN_LIST {
                    return refuse(
                        "in_list_too_long",
                        None,
                        format!("an IN list may hold at most {MAX_IN_LIST} values"),
                    );
                }
                let mut x = self.dim_expr(expr, schema)?;
                let mut vals = Vec::new();
                for v in list {
                    let (nx, nv) = self.comparable(expr, x, v, self.literal(v)?, schema)?;
                    x = nx;
                    vals.push(nv);
                }
                Ok(Expr::InList(InList::new(Box::new(x), vals, *negated)))
            }
            Expr::Like(Like {
                negated,
                expr,
                pattern,
                escape_char,
                case_insensitive,
            }) => {
                let x = self.dim_expr(expr, schema)?;
                let p = self.literal(pattern)?;
                let t = expr
                    .get_type(schema)
                    .map_err(|e| QueryError::Invalid(e.to_string()))?;
                if !is_string(&t) {
                    return refuse(
                        "type_mismatch",
                        None,
                        "LIKE applies to text dimensions only",
                    );
                }
                Ok(Expr::Like(Like::new(
                    *negated,
                    Box::new(x),
                    Box::new(p),
                    *escape_char,
                    *case_insensitive,
                )))
            }
            Expr::Literal(ScalarValue::Boolean(_), _) => Ok(e.clone()),
            Expr::Column(_) | Expr::Case(_) | Expr::ScalarFunction(_) => {
                let t = e
                    .get_type(schema)
                    .map_err(|err| QueryError::Invalid(err.to_string()))?;
                if t != DataType::Boolean {
                    return refuse(
                        "type_mismatch",
                        None,
                        format!("{e} is not a condition (it is {t})"),
                    );
                }
                self.dim_expr(e, schema)
            }
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => {
                refuse("subquery", None, "sub-queries are not allowed")
            }
            Expr::SimilarTo(_) => refuse(
                "function_not_allowed",
                None,
                "SIMILAR TO is not allowed: use LIKE",
            ),
            other => refuse(
                "expression_not_allowed",
                None,
                format!("the condition {other} is not allowed"),
            ),
        }
    }

    fn literal(&self, e: &Expr) -> Result<Expr, QueryError> {
        match unalias(e).0 {
            Expr::Literal(..) => Ok(unalias(e).0.clone()),
            other => refuse(
                "expression_not_allowed",
                None,
                format!("{other} must be a constant"),
            ),
        }
    }

    /// Checks that two operands compare without a cast that could fail on data, and turns a
    /// text literal compared with a date into a date literal.
    fn comparable(
        &self,
        orig_l: &Expr,
        l: Expr,
        orig_r: &Expr,
        r: Expr,
        schema: &DFSchema,
    ) -> Result<(Expr, Expr), QueryError> {
        let tl = orig_l
            .get_type(schema)
            .map_err(|e| QueryError::Invalid(e.to_string()))?;
        let tr = orig_r
            .get_type(schema)
            .map_err(|e| QueryError::Invalid(e.to_string()))?;
        let lit_l = matches!(l, Expr::Literal(..));
        let lit_r = matches!(r, Expr::Literal(..));
        if lit_l && lit_r {
            return Ok((l, r));
        }
        let null = |e: &Expr| matches!(e, Expr::Literal(v, _) if v.is_null());
        if null(&l) || null(&r) {
            return Ok((l, r));
        }
        let ok = tl == tr
            || (is_string(&tl) && is_string(&tr))
            || (is_numeric(&tl)
                && is_numeric(&tr)
                && (is_integer(&tl) == is_integer(&tr) || lit_l || lit_r));
        if ok {
            return Ok((l, r));
        }
        // A date compared with a 'YYYY-MM-DD' literal.
        let as_date = |e: &Expr| -> Option<Expr> {
            if let Expr::Literal(v, _) = e {
                let s = match v {
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::Utf8View(Some(s))
                    | ScalarValue::LargeUtf8(Some(s)) => s.clone(),
                    _ => return None,
                };
                let d = cleanroom_storage::ingest::parse_date(&s).ok()?;
                return Some(Expr::Literal(ScalarValue::Date32(Some(d)), None));
            }
            None
        };
        if tl == DataType::Date32 && is_string(&tr) && lit_r {
            if let Some(d) = as_date(&r) {
                return Ok((l, d));
            }
            return refuse(
                "type_mismatch",
                None,
                format!("{orig_r} is not a date (YYYY-MM-DD)"),
            );
        }
        if tr == DataType::Date32 && is_string(&tl) && lit_l {
            if let Some(d) = as_date(&l) {
                return Ok((d, r));
            }
            return refuse(
                "type_mismatch",
                None,
                format!("{orig_l} is not a date (YYYY-MM-DD)"),
            );
        }
        refuse(
            "type_mismatch",
            None,
            format!(
                "{orig_l} ({tl}) cannot be compared with {orig_r} ({tr}) without a cast that could fail on some values"
            ),
        )
    }

    // ------------------------------------------------------------------ aggregates

    fn aggregate(&mut self, e: &Expr, schema: &DFSchema) -> Result<Measure, QueryError> {
        let (bare, _) = unalias(e);
        let Expr::AggregateFunction(AggregateFunction { func, params }) = bare else {
            return refuse(
                "expression_not_allowed",
                None,
                format!("{bare} is not an aggregate"),
            );
        };
        let name = func.name().to_ascii_lowercase();
        if params.filter.is_some() {
            return refuse(
                "aggregate_filter",
                None,
                "aggregate FILTER clauses are not supported: use WHERE",
            );
        }
        if !params.order_by.is_empty() {
            return refuse(
                "aggregate_not_allowed",
                None,
                "ordered aggregates are not allowed",
            );
        }
        let args = &params.args;
        match name.as_str() {
            "count" => {
                if args.len() != 1 {
                    return refuse("aggregate_not_allowed", None, "COUNT takes one argument");
                }
                match unalias(&args[0]).0 {
                    Expr::Literal(v, _) if !v.is_null() => {
                        if params.distinct {
                            return refuse(
                                "aggregate_not_allowed",
                                None,
                                "COUNT(DISTINCT constant) is not meaningful",
                            );
                        }
                        Ok(Measure::Rows)
                    }
                    Expr::Column(c) => {
                        let (u, col) = self.resolve(c)?;
                        let t = &self.catalog.tables[self.uses[u].table];
                        let what = if params.distinct {
                            Aggregate::CountDistinct
                        } else {
                            Aggregate::Count
                        };
                        match t.role(&col) {
                            Some(ColumnRole::Metric) => {
                                let allowed = t
                                    .policy
                                    .metric(&col)
                                    .is_some_and(|m| m.aggregates.contains(&what));
                                if !allowed {
                                    return refuse(
                                        "aggregate_not_allowed",
                                        Some(&col),
                                        format!(
                                            "the policy of {} does not allow {what} of {col}",
                                            t.name
                                        ),
                                    );
                                }
                            }
                            Some(ColumnRole::Dimension) if !t.policy.is_dimension(&col) => {
                                return refuse(
                                    "column_not_allowed",
                                    Some(&col),
                                    format!("{col} is not a dimension in the policy of {}", t.name),
                                );
                            }
                            Some(ColumnRole::Identifier) if !t.policy.is_join_key(&col) => {
                                return refuse(
                                    "column_not_allowed",
                                    Some(&col),
                                    format!("{col} is not a join key in the policy of {}", t.name),
                                );
                            }
                            _ => {}
                        }
                        let q = self.qualified(u, &col);
                        let Expr::Column(qc) = q else { unreachable!() };
                        Ok(if params.distinct {
                            Measure::Distinct(qc)
                        } else {
                            Measure::NonNull(qc)
                        })
                    }
                    other => refuse(
                        "aggregate_not_allowed",
                        None,
                        format!("COUNT of {other} is not allowed: count a column or *"),
                    ),
                }
            }
            "sum" | "avg" | "min" | "max" => {
                if params.distinct {
                    return refuse(
                        "aggregate_not_allowed",
                        None,
                        format!("{} DISTINCT is not supported", name.to_uppercase()),
                    );
                }
                if args.len() != 1 {
                    return refuse(
                        "aggregate_not_allowed",
                        None,
                        format!("{name} takes one argument"),
                    );
                }
                let what = match name.as_str() {
                    "sum" => Aggregate::Sum,
                    "avg" => Aggregate::Avg,
                    "min" => Aggregate::Min,
                    _ => Aggregate::Max,
                };
                let clamped = self.clamped_metric(&args[0], what, schema)?;
                Ok(match what {
                    Aggregate::Sum => Measure::Sum(clamped),
                    Aggregate::Avg => Measure::Avg(clamped),
                    Aggregate::Min => Measure::Min(clamped),
                    _ => Measure::Max(clamped),
                })
            }
            other => refuse(
                "aggregate_not_allowed",
                None,
                format!(
                    "the aggregate {other} is not allowed; use COUNT, COUNT(DISTINCT), SUM or AVG"
                ),
            ),
        }
    }

    /// A metric column, optionally clamped tighter with `LEAST(GREATEST(col, lo), hi)`.
    fn clamped_metric(
        &mut self,
        e: &Expr,
        what: Aggregate,
        schema: &DFSchema,
    ) -> Result<Clamped, QueryError> {
        let (column, lo, hi) = clamp_pattern(unalias(e).0).ok_or_else(|| {
            QueryError::refused(
                "aggregate_not_allowed",
                None,
                format!(
                    "{what} takes a metric column, optionally clamped as LEAST(GREATEST(column, low), high); {e} is not allowed"
                ),
            )
        })?;
        let _ = schema;
        let (u, col) = self.resolve(&column)?;
        let t = &self.catalog.tables[self.uses[u].table];
        let Some(rule) = t.policy.metric(&col) else {
            return refuse(
                "metric_not_allowed",
                Some(&col),
                format!("{col} is not a metric in the policy of {}", t.name),
            );
        };
        if !rule.aggregates.contains(&what) {
            return refuse(
                "aggregate_not_allowed",
                Some(&col),
                format!("the policy of {} does not allow {what} of {col}", t.name),
            );
        }
        let lower = lo.map_or(rule.lower, |l| l.max(rule.lower));
        let upper = hi.map_or(rule.upper, |h| h.min(rule.upper));
        if lower > upper {
            return refuse(
                "aggregate_not_allowed",
                Some(&col),
                format!("the clamp [{lower}, {upper}] of {col} is empty"),
            );
        }
        let scale = rule.scale();
        let s = scale as f64;
        let q = self.qualified(u, &col);
        let Expr::Column(qc) = q else { unreachable!() };
        Ok(Clamped {
            column: qc,
            lower,
            upper,
            scale,
            lower_fp: (lower * s).floor() as i64,
            upper_fp: (upper * s).ceil() as i64,
        })
    }
}

/// Every row expression of `spec` in the coerced form that will run, proven total
/// ([`crate::total`]): a query whose run could fail on some value is refused here, before it
/// is priced or charged.
fn totalise(mut spec: Spec, catalog: &Catalog) -> Result<Spec, QueryError> {
    let mut schema = DFSchema::empty();
    for (u, use_) in spec.uses.iter().enumerate() {
        let arrow = catalog.tables[use_.table].arrow_schema();
        let qualified = DFSchema::try_from_qualified_schema(qualifier(u), arrow.as_ref())
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        schema = schema
            .join(&qualified)
            .map_err(|e| QueryError::Internal(e.to_string()))?;
    }
    let total = |e: Expr| make_total(e, &schema);
    for use_ in &mut spec.uses {
        use_.filters = std::mem::take(&mut use_.filters)
            .into_iter()
            .map(total)
            .collect::<Result<_, _>>()?;
    }
    spec.cross_filters = std::mem::take(&mut spec.cross_filters)
        .into_iter()
        .map(total)
        .collect::<Result<_, _>>()?;
    for g in &mut spec.group_keys {
        g.expr = total(g.expr.clone())?;
    }
    Ok(spec)
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

fn number(e: &Expr) -> Option<f64> {
    match unalias(e).0 {
        Expr::Literal(v, _)
            if !v.is_null() && (v.data_type().is_integer() || v.data_type().is_floating()) =>
        {
            v.to_string().parse::<f64>().ok().filter(|x| x.is_finite())
        }
        Expr::Negative(x) => number(x).map(|v| -v),
        _ => None,
    }
}

/// `col`, `LEAST(GREATEST(col, lo), hi)`, `GREATEST(LEAST(col, hi), lo)`, `LEAST(col, hi)` or
/// `GREATEST(col, lo)`, with constant bounds.
fn clamp_pattern(e: &Expr) -> Option<(Column, Option<f64>, Option<f64>)> {
    match e {
        Expr::Column(c) => Some((c.clone(), None, None)),
        Expr::ScalarFunction(f) if f.args.len() == 2 => {
            let name = f.func.name().to_ascii_lowercase();
            let (inner, bound) = match (number(&f.args[0]), number(&f.args[1])) {
                (None, Some(b)) => (&f.args[0], b),
                (Some(b), None) => (&f.args[1], b),
                _ => return None,
            };
            let (c, lo, hi) = clamp_pattern(unalias(inner).0)?;
            match name.as_str() {
                "least" => Some((c, lo, Some(hi.map_or(bound, |h| h.min(bound))))),
                "greatest" => Some((c, Some(lo.map_or(bound, |l| l.max(bound))), hi)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The first output column of a plan that does not aggregate (`SELECT email FROM …`).
fn first_output_column(plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::Projection(p) => p.expr.iter().find_map(|e| match unalias(e).0 {
            Expr::Column(c) => Some(c.name.clone()),
            _ => None,
        }),
        LogicalPlan::Sort(s) => first_output_column(&s.input),
        LogicalPlan::Limit(l) => first_output_column(&l.input),
        LogicalPlan::Distinct(d) => first_output_column(d.input()),
        _ => None,
    }
}

fn tables_of(t: &JoinTree) -> BTreeSet<usize> {
    match t {
        JoinTree::Table(i) => BTreeSet::from([*i]),
        JoinTree::Join { left, right, .. } => {
            let mut s = tables_of(left);
            s.extend(tables_of(right));
            s
        }
    }
}
