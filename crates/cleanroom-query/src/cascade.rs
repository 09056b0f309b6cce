//! Matching on several identifiers at once: the priority cascade of the `overlap_ids`
//! template.
//!
//! A person of the left dataset may be matched in the right dataset by email, by phone or by
//! device ID. The keys are given in priority order; each left person (within one group of the
//! optional dimension) is counted once, under the **highest-priority key it matches on**, and
//! not again under the others. So the per-key counts of a group add up to the number of its
//! people matched by any key: the total never counts a person twice.
//!
//! ## The computation (trusted internal plans, never analyst SQL)
//!
//! 1. Both datasets are scanned (unit, keys, dimension only) and **bounded** exactly as every
//!    other analysis is ([`crate::rewrite::bound_contributions`]): at most `C` rows per person,
//!    then at most `m` rows per non-null value of every key column used, rows chosen at random.
//!    The bounded rows are kept in memory so the random choice is made once.
//! 2. A left row's level is the first key `i` whose value occurs among the right dataset's
//!    bounded values of key `i`; a left person's level in a group is the least level of its
//!    rows in that group (none: not matched).
//! 3. Per cell (group, level): `n`, the distinct left people at that level, and `r`, the
//!    distinct right people behind them (right rows whose key `i` equals key `i` of a row of
//!    those people).
//! 4. A cell is released only when `n` and `r` reach the owners' exact minimum group sizes
//!    and, with differential privacy, when its noisy `min(n, r)` clears the private group
//!    selection's threshold; its released value is `n` plus discrete Laplace noise.
//!
//! ## Sensitivity
//!
//! Let `K` be the number of keys, `C_L`, `m_L` the left policy's `max_rows_per_unit` and
//! `max_rows_per_key`, `C_R`, `m_R` the right one's. As in [`crate::calibrate`], each of the
//! `K` key-bounding stages at most doubles a change, so one person changes at most
//! `S_L = C_L · 2^K` bounded left rows, or `S_R = C_R · 2^K` bounded right rows.
//!
//! *Released counts `n`.* A left person is counted in exactly one cell per group it has rows
//! in. Removing a **right** person changes which key values of the right dataset exist for at
//! most `S_R` rows × `K` keys, and each such value is held by at most `m_L` bounded left rows:
//! at most `D_R = S_R · K · m_L` left rows change their match, each moving one left person
//! between two cells (or in or out of one). Removing a **left** person changes at most
//! `D_L = S_L` bounded left rows, each moving one person likewise. So the vector of `n` over all
//! cells has `l∞ ≤ D_u` and `l1 ≤ 2 · D_u`; the noise is calibrated on `2 · max D_u` over the
//! datasets with differential privacy on.
//!
//! *Group selection on `min(n, r)`.* Both `n` and `r` of a cell are distinct counts over its
//! matched pairs (left row, right row), so each changes by at most the number of pairs that
//! change. A person whose level changes takes at most `C_L · m_R` pairs out of one cell and
//! into another. Hence the pairs changed by one person are at most
//! `J_R = S_R · K · m_L · (1 + 2 · C_L · m_R)` (right person: its own rows' pairs, and the moves
//! it causes) and `J_L = S_L · m_R · (1 + 2 · C_L)` (left person), which bound `l0`, `l1` and
//! `l∞` of the selection's counts. A cell's presence is decided as in
//! [`cleanroom_privacy::partition::GroupSelection`] (exact minimum, noisy threshold raised by
//! `k − 1`).
//!
//! The costs charged are what OpenDP's maps give for each dataset's own `(J_u, 2·D_u)`; the
//! part's epsilon is split evenly between selection and noise.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use cleanroom_core::schema::ColumnRole;
use cleanroom_privacy::budget::{Epsilon, PrivacyCost};
use cleanroom_privacy::noise::IntegerNoise;
use cleanroom_privacy::partition::{GroupSelection, SelectionBounds};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, lit};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::calibrate::MAX_ROWS_CHANGED;
use crate::catalog::{Catalog, QueryTable};
use crate::error::internal;
use crate::release::{Cell, ColumnKind, Released, ReleasedColumn, cell_of, noise_sd};
use crate::rewrite::{RunOptions, bound_contributions, scan};
use crate::{PrivacyRequest, QueryError};

/// Most identifier types one cascade may match on.
pub const MAX_KEYS: usize = 5;

/// Contribution bounds of a cascade for one dataset (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CascadeBounds {
    /// `D_u`: left people whose cell one person of this dataset can change.
    pub moves: i64,
    /// `J_u`: matched pairs one person of this dataset can change.
    pub pairs: i64,
}

/// A planned cascade: validated keys, calibrated noise and selection, costs.
#[derive(Debug, Clone)]
pub struct Cascade {
    left: usize,
    right: usize,
    /// `(left column, right column)` in priority order.
    keys: Vec<(String, String)>,
    by: Option<String>,
    /// Left, right.
    bounds: [CascadeBounds; 2],
    protected: [bool; 2],
    selection: Option<GroupSelection>,
    noise: Option<IntegerNoise>,
    costs: Vec<(usize, PrivacyCost)>,
    request: Option<PrivacyRequest>,
}

/// One cell of the exact result, before any threshold or noise.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeCell {
    /// The dimension's value (`Int64(0)` without a dimension).
    pub group: ScalarValue,
    /// 0-based index of the key in priority order.
    pub level: usize,
    /// Distinct left people first matched by this key.
    pub left_people: i64,
    /// Distinct right people behind them.
    pub right_people: i64,
}

fn too_loose() -> QueryError {
    QueryError::refused(
        "contribution_bounds",
        None,
        format!(
            "the datasets' contribution bounds let one person change more than {MAX_ROWS_CHANGED} matches; lower max_rows_per_unit or max_rows_per_key"
        ),
    )
}

fn mul(a: i64, b: i64) -> Result<i64, QueryError> {
    a.checked_mul(b).ok_or_else(too_loose)
}

/// Refuses a key column that is not a declared join key of `t`.
fn check_key(t: &QueryTable, c: &str) -> Result<(), QueryError> {
    if t.column(c).is_none() {
        return Err(QueryError::refused(
            "unknown_column",
            Some(c),
            format!("{c} is not a column of {}", t.name),
        ));
    }
    if !t.policy.is_join_key(c) {
        return Err(QueryError::refused(
            "join_not_on_key",
            Some(c),
            format!(
                "column {c} is not a join key in the policy of {}: matching must be on declared join keys",
                t.name
            ),
        ));
    }
    Ok(())
}

/// Refuses a `by` column that is not an allowed dimension of `t`.
fn check_dimension(t: &QueryTable, c: &str) -> Result<(), QueryError> {
    let (rule, why) = match t.role(c) {
        None => ("unknown_column", "is not a column of"),
        Some(ColumnRole::Dimension) if t.policy.is_dimension(c) => return Ok(()),
        Some(ColumnRole::Dimension) => {
            ("column_not_allowed", "is not a dimension in the policy of")
        }
        Some(ColumnRole::Identifier) => (
            "identifier_not_allowed",
            "is an identifier (identifiers only match, they are never output) in",
        ),
        Some(ColumnRole::PrivacyUnit) => (
            "privacy_unit_not_allowed",
            "is the privacy unit (people are only counted) of",
        ),
        Some(ColumnRole::Metric) => ("metric_not_allowed", "is a metric (never grouped on) of"),
    };
    Err(QueryError::refused(
        rule,
        Some(c),
        format!("{c} {why} {}", t.name),
    ))
}

impl Cascade {
    /// Validates a cascade of `keys` (in priority order) between the datasets `left` and
    /// `right` of `catalog`, optionally by a dimension of `left`, and calibrates it for
    /// `request`. Every refusal depends on the parameters, schemas and policies only.
    pub fn plan(
        catalog: &Catalog,
        left: usize,
        right: usize,
        keys: &[(String, String)],
        by: Option<&str>,
        request: PrivacyRequest,
    ) -> Result<Cascade, QueryError> {
        let (lt, rt) = (&catalog.tables[left], &catalog.tables[right]);
        if left == right {
            return Err(QueryError::refused(
                "self_join",
                None,
                format!(
                    "{} is matched against itself: a person would count twice",
                    lt.name
                ),
            ));
        }
        for t in [lt, rt] {
            if !t.has_policy {
                return Err(QueryError::refused(
                    "no_policy",
                    None,
                    format!(
                        "dataset {} has no analysis policy yet: its owner must set one before anyone can analyse it",
                        t.name
                    ),
                ));
            }
        }
        if keys.is_empty() {
            return Err(QueryError::Invalid(
                "overlap_ids needs at least one key".into(),
            ));
        }
        if keys.len() > MAX_KEYS {
            return Err(QueryError::refused(
                "too_many_keys",
                None,
                format!(
                    "a cascade matches on at most {MAX_KEYS} identifier types, {} given",
                    keys.len()
                ),
            ));
        }
        let mut seen_l = BTreeSet::new();
        let mut seen_r = BTreeSet::new();
        for (kl, kr) in keys {
            if !seen_l.insert(kl.as_str()) {
                return Err(QueryError::refused(
                    "duplicate_key",
                    Some(kl),
                    format!("{kl} of {} is named twice among the keys", lt.name),
                ));
            }
            if !seen_r.insert(kr.as_str()) {
                return Err(QueryError::refused(
                    "duplicate_key",
                    Some(kr),
                    format!("{kr} of {} is named twice among the keys", rt.name),
                ));
            }
            check_key(lt, kl)?;
            check_key(rt, kr)?;
            if lt.column(kl).map(|c| c.ty) != rt.column(kr).map(|c| c.ty) {
                return Err(QueryError::refused(
                    "type_mismatch",
                    Some(kl),
                    format!("join keys {kl} and {kr} have different types"),
                ));
            }
        }
        if let Some(b) = by {
            check_dimension(lt, b)?;
        }

        // Sensitivities (module documentation).
        let k = keys.len() as i64;
        let pow = 1i64 << keys.len();
        let (cl, ml) = (
            i64::from(lt.policy.max_rows_per_unit),
            i64::from(lt.policy.max_rows_per_key),
        );
        let (cr, mr) = (
            i64::from(rt.policy.max_rows_per_unit),
            i64::from(rt.policy.max_rows_per_key),
        );
        let s_l = mul(cl, pow)?;
        let s_r = mul(cr, pow)?;
        let left_bounds = CascadeBounds {
            moves: s_l,
            pairs: mul(mul(s_l, mr)?, 1 + 2 * cl)?,
        };
        let d_r = mul(mul(s_r, k)?, ml)?;
        let right_bounds = CascadeBounds {
            moves: d_r,
            pairs: mul(d_r, 1 + mul(2 * cl, mr)?)?,
        };
        let bounds = [left_bounds, right_bounds];
        if bounds.iter().any(|b| b.pairs > MAX_ROWS_CHANGED) {
            return Err(too_loose());
        }
        let protected = [
            lt.policy.differential_privacy,
            rt.policy.differential_privacy,
        ];
        let tables = [left, right];
        let mut cascade = Cascade {
            left,
            right,
            keys: keys.to_vec(),
            by: by.map(str::to_owned),
            bounds,
            protected,
            selection: None,
            noise: None,
            costs: tables.iter().map(|t| (*t, PrivacyCost::ZERO)).collect(),
            request: None,
        };
        if !protected.iter().any(|p| *p) {
            return Ok(cascade);
        }
        if !(request.epsilon.is_finite() && request.epsilon > 0.0) {
            return Err(QueryError::Privacy(
                cleanroom_privacy::PrivacyError::InvalidParameter(
                    "epsilon must be a positive number".into(),
                ),
            ));
        }
        let each = Epsilon::grant(request.epsilon / 2.0)?;
        let on = |f: fn(&CascadeBounds) -> i64| {
            bounds
                .iter()
                .zip(protected)
                .filter(|(_, p)| *p)
                .map(|(b, _)| f(b))
                .max()
                .unwrap_or(1)
        };
        let min_group = i64::from(lt.policy.min_group_size.max(rt.policy.min_group_size));
        let selection = GroupSelection::calibrate(
            each,
            request.delta,
            SelectionBounds::rows(on(|b| b.pairs))?,
            min_group,
        )?;
        let noise = IntegerNoise::calibrate(each, 2 * on(|b| b.moves))?;
        for (i, (t, cost)) in cascade.costs.iter_mut().enumerate() {
            debug_assert_eq!(*t, tables[i]);
            if protected[i] {
                *cost = selection
                    .cost_for(SelectionBounds::rows(bounds[i].pairs)?)?
                    .plus(noise.cost_for(2 * bounds[i].moves)?)?;
            }
        }
        cascade.selection = Some(selection);
        cascade.noise = Some(noise);
        cascade.request = Some(request);
        Ok(cascade)
    }

    /// Whether any noise is drawn.
    pub fn is_private(&self) -> bool {
        self.selection.is_some()
    }

    /// What a run costs the people of each dataset (catalog index).
    pub fn costs(&self) -> &[(usize, PrivacyCost)] {
        &self.costs
    }

    /// The contribution bounds of the left and the right dataset.
    pub fn bounds(&self) -> [CascadeBounds; 2] {
        self.bounds
    }

    /// The keys' labels in priority order: `column`, or `left:right` when the names differ.
    pub fn labels(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|(l, r)| {
                if l == r {
                    l.clone()
                } else {
                    format!("{l}:{r}")
                }
            })
            .collect()
    }

    /// A canonical text of the run for fingerprints: datasets with policy versions, keys,
    /// dimension and privacy parameters.
    pub(crate) fn canonical(&self, catalog: &Catalog) -> String {
        let (lt, rt) = (&catalog.tables[self.left], &catalog.tables[self.right]);
        format!(
            "cascade v1 left {} v{} right {} v{} keys {:?} by {:?} {}",
            lt.dataset_id,
            lt.policy_version,
            rt.dataset_id,
            rt.policy_version,
            self.keys,
            self.by,
            match self.request {
                Some(r) => format!("epsilon={:e};delta={:e}", r.epsilon, r.delta),
                None => "exact".to_owned(),
            }
        )
    }

    /// How the run protects the data, in words (for dry runs).
    pub(crate) fn describe(&self, catalog: &Catalog) -> Vec<String> {
        let mut out = Vec::new();
        for (i, t) in [self.left, self.right].into_iter().enumerate() {
            let t = &catalog.tables[t];
            let cost = self.costs[i].1;
            out.push(format!(
                "cascade: {} (owner {}, policy v{}): one person moves at most {} matched people between cells and changes at most {} matches; minimum group size {}; {}",
                t.name,
                t.owner,
                t.policy_version,
                self.bounds[i].moves,
                self.bounds[i].pairs,
                t.policy.min_group_size,
                if self.protected[i] {
                    format!(
                        "differential privacy: costs epsilon {:.6}, delta {:e}",
                        cost.epsilon.as_f64(),
                        cost.delta.as_f64()
                    )
                } else {
                    "differential privacy off (thresholds only)".to_owned()
                }
            ));
        }
        if let Some(sel) = &self.selection {
            out.push(format!(
                "cascade: a cell is shown only if at least {} people of each dataset are in it and its noisy count reaches {}",
                sel.min_group_size(),
                sel.threshold()
            ));
        }
        out
    }

    /// The bounded rows of one side, materialised once (the random choice of rows is made
    /// once and shared by every later step), with internal column names.
    async fn bounded(
        &self,
        table: &QueryTable,
        prefix: &str,
        keys: &[&str],
        by: Option<&str>,
        opts: RunOptions,
    ) -> Result<MemTable, QueryError> {
        let name = format!("{prefix}t");
        let unit = table.unit_column();
        let mut columns: BTreeSet<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        columns.insert(unit.to_owned());
        if let Some(b) = by {
            columns.insert(b.to_owned());
        }
        let key_set: BTreeSet<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        let mut b = scan(table, &name, &columns)?;
        if opts.bound_contributions {
            b = bound_contributions(b, &name, table, &columns, &key_set)?;
        }
        let q = |c: &str| Expr::Column(Column::new(Some(name.as_str()), c));
        let mut projection = vec![q(unit).alias(format!("{prefix}u"))];
        projection.push(match by {
            Some(c) => q(c).alias(format!("{prefix}g")),
            None => lit(0i64).alias(format!("{prefix}g")),
        });
        for (i, k) in keys.iter().enumerate() {
            projection.push(q(k).alias(format!("{prefix}k{i}")));
        }
        let plan = b
            .project(projection)
            .map_err(internal)?
            .build()
            .map_err(internal)?;
        let ctx = session(opts);
        let df = ctx.execute_logical_plan(plan).await.map_err(internal)?;
        let planned = Arc::clone(df.schema().inner());
        let batches: Vec<RecordBatch> = df.collect().await.map_err(|e| match e {
            datafusion::error::DataFusionError::External(inner) => {
                QueryError::Unavailable(inner.to_string())
            }
            other => QueryError::Internal(other.to_string()),
        })?;
        let schema = batches.first().map_or(planned, |b| b.schema());
        MemTable::try_new(schema, vec![batches]).map_err(internal)
    }

    /// The exact cells (before thresholds and noise) over the data in `catalog`, bounded when
    /// `opts.bound_contributions`. Internal: never released as such.
    pub async fn execute(
        &self,
        catalog: &Catalog,
        opts: RunOptions,
    ) -> Result<Vec<CascadeCell>, QueryError> {
        let (lt, rt) = (&catalog.tables[self.left], &catalog.tables[self.right]);
        let lkeys: Vec<&str> = self.keys.iter().map(|(l, _)| l.as_str()).collect();
        let rkeys: Vec<&str> = self.keys.iter().map(|(_, r)| r.as_str()).collect();
        let l = self
            .bounded(lt, "l", &lkeys, self.by.as_deref(), opts)
            .await?;
        let r = self.bounded(rt, "r", &rkeys, None, opts).await?;
        let ctx = session(opts);
        ctx.register_table("cascade_l", Arc::new(l))
            .map_err(internal)?;
        ctx.register_table("cascade_r", Arc::new(r))
            .map_err(internal)?;
        let df = ctx
            .sql(&cascade_sql(self.keys.len()))
            .await
            .map_err(internal)?;
        let batches = df.collect().await.map_err(internal)?;
        let mut out = Vec::new();
        for batch in batches {
            for row in 0..batch.num_rows() {
                let group = ScalarValue::try_from_array(batch.column(0), row).map_err(internal)?;
                let level = scalar_int(batch.column(1).as_ref(), row)?;
                let left_people = scalar_int(batch.column(2).as_ref(), row)?;
                let right_people = scalar_int(batch.column(3).as_ref(), row)?;
                out.push(CascadeCell {
                    group,
                    level: usize::try_from(level).map_err(internal)?,
                    left_people,
                    right_people,
                });
            }
        }
        Ok(out)
    }

    /// Runs the cascade and releases its cells: the exact minima, private selection of cells
    /// and noise. Columns: the dimension (if any), `priority` (1 = first key), `id_type`,
    /// `matched`. Draws fresh noise: charge first.
    pub async fn run(&self, catalog: &Catalog, partitions: usize) -> Result<Released, QueryError> {
        let cells = self
            .execute(
                catalog,
                RunOptions {
                    bound_contributions: self.is_private(),
                    partitions,
                },
            )
            .await?;
        let kl = i64::from(catalog.tables[self.left].policy.min_group_size);
        let kr = i64::from(catalog.tables[self.right].policy.min_group_size);
        // The owners' exact minima, on each dataset's own distinct people.
        let eligible: Vec<&CascadeCell> = cells
            .iter()
            .filter(|c| c.left_people >= kl && c.right_people >= kr)
            .collect();
        let (shown, values): (Vec<&CascadeCell>, Vec<i64>) = match (&self.selection, &self.noise) {
            (Some(sel), Some(noise)) => {
                let counts: HashMap<u64, i64> = eligible
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (i as u64, c.left_people.min(c.right_people)))
                    .collect();
                let mut kept: Vec<usize> =
                    sel.release(&counts)?.keys().map(|k| *k as usize).collect();
                kept.sort_unstable();
                let shown: Vec<&CascadeCell> = kept.iter().map(|i| eligible[*i]).collect();
                let exact: Vec<i64> = shown.iter().map(|c| c.left_people).collect();
                let noisy = noise.release_all(&exact)?;
                (shown, noisy.into_iter().map(|v| v.max(0)).collect())
            }
            _ => {
                let values = eligible.iter().map(|c| c.left_people).collect();
                (eligible, values)
            }
        };
        let labels = self.labels();
        let mut columns = Vec::new();
        if let Some(b) = &self.by {
            columns.push(ReleasedColumn {
                name: b.clone(),
                kind: ColumnKind::Group,
            });
        }
        columns.push(ReleasedColumn {
            name: "priority".into(),
            kind: ColumnKind::Group,
        });
        columns.push(ReleasedColumn {
            name: "id_type".into(),
            kind: ColumnKind::Group,
        });
        columns.push(ReleasedColumn {
            name: "matched".into(),
            kind: ColumnKind::Count {
                noise_sd: self.noise.as_ref().map(|n| noise_sd(n.scale())),
            },
        });
        let mut rows: Vec<(Cell, usize, i64)> = shown
            .iter()
            .zip(values)
            .map(|(c, v)| (cell_of(&c.group), c.level, v))
            .collect();
        rows.sort_by(|a, b| {
            format!("{:?}", a.0)
                .cmp(&format!("{:?}", b.0))
                .then(a.1.cmp(&b.1))
        });
        let rows = rows
            .into_iter()
            .map(|(g, level, v)| {
                let mut row = Vec::new();
                if self.by.is_some() {
                    row.push(g);
                }
                row.push(Cell::Int(level as i64 + 1));
                row.push(Cell::Text(labels[level].clone()));
                row.push(Cell::Int(v));
                row
            })
            .collect();
        Ok(Released { columns, rows })
    }
}

fn session(opts: RunOptions) -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(opts.partitions.max(1))
        .with_information_schema(false);
    SessionContext::new_with_config(config)
}

fn scalar_int(a: &dyn arrow::array::Array, row: usize) -> Result<i64, QueryError> {
    let v = ScalarValue::try_from_array(a, row).map_err(internal)?;
    match v {
        ScalarValue::Int64(Some(x)) => Ok(x),
        ScalarValue::Int32(Some(x)) => Ok(i64::from(x)),
        ScalarValue::UInt64(Some(x)) => i64::try_from(x).map_err(internal),
        other => Err(QueryError::Internal(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}

/// The internal query over the two materialised, bounded tables `cascade_l` (`lu`, `lg`,
/// `lk0`…) and `cascade_r` (`ru`, `rg`, `rk0`…). Built from fixed names only.
fn cascade_sql(keys: usize) -> String {
    let mut s = String::from("WITH ");
    for i in 0..keys {
        s.push_str(&format!(
            "m{i} AS (SELECT DISTINCT rk{i} AS v FROM cascade_r WHERE rk{i} IS NOT NULL), "
        ));
    }
    // Each left row's level: the first key whose value the right side has.
    let whens: String = (0..keys)
        .map(|i| format!("WHEN m{i}.v IS NOT NULL THEN CAST({i} AS BIGINT) "))
        .collect();
    let lk: String = (0..keys).map(|i| format!(", l.lk{i}")).collect();
    let joins: String = (0..keys)
        .map(|i| format!(" LEFT JOIN m{i} ON l.lk{i} = m{i}.v"))
        .collect();
    s.push_str(&format!(
        "lv AS (SELECT l.lu, l.lg{lk}, CASE {whens}END AS lvl FROM cascade_l l{joins}), "
    ));
    // A person's level in a group: its best row's.
    let lk2: String = (0..keys).map(|i| format!(", lk{i}")).collect();
    s.push_str(&format!(
        "lp AS (SELECT lu, lg{lk2}, MIN(lvl) OVER (PARTITION BY lu, lg) AS plvl FROM lv), "
    ));
    // The matched pairs of each cell: rows of people at level i with the right rows sharing
    // key i.
    let pairs: Vec<String> = (0..keys)
        .map(|i| {
            format!(
                "SELECT lp.lg AS g, CAST({i} AS BIGINT) AS lvl, lp.lu AS lu, r.ru AS ru FROM lp JOIN cascade_r r ON lp.lk{i} = r.rk{i} WHERE lp.plvl = {i}"
            )
        })
        .collect();
    s.push_str(&format!("p AS ({}) ", pairs.join(" UNION ALL ")));
    s.push_str(
        "SELECT g, lvl, COUNT(DISTINCT lu) AS left_people, COUNT(DISTINCT ru) AS right_people FROM p GROUP BY g, lvl",
    );
    s
}
