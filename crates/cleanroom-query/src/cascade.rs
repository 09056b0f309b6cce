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
//! 1. Both datasets are scanned (unit, keys, dimension only) and **bounded**: at most `C`
//!    rows per person, chosen at random, as every other analysis does
//!    ([`crate::rewrite::bound_contributions`]); then, on the left only, each key is capped
//!    on its own: of the rows sharing one value of key `i`, at most `m` keep it and the others
//!    have key `i` set to null (they can still match on other keys). The bounded rows are kept
//!    in memory so the random choice is made once. The right side needs no key cap: only the
//!    *set* of its values per key matters, and a value repeated by many right people is in
//!    that set once.
//! 2. A left row's level is the first key `i` whose value occurs among the right dataset's
//!    bounded values of key `i`; a left person's level in a group is the least level of its
//!    rows in that group (none: not matched).
//! 3. Per cell (group, level): `n`, the distinct left people at that level, and `r`, the
//!    distinct right people behind them (right rows whose key `i` equals key `i` of a row of
//!    those people).
//! 4. Without differential privacy a cell is released when `n` and `r` reach the owners'
//!    exact minimum group sizes `k_L` and `k_R`. With it, a cell is released when `n` reaches
//!    the exact floor `F = max(k_L, C_R · m_L · k_R)` (which implies `r ≥ k_R`, below) and
//!    its noisy `n` clears the private group selection's threshold; the released value is that
//!    noisy `n` (discrete Laplace, one mechanism: OpenDP's `make_laplace_threshold`).
//!
//! ## Sensitivity
//!
//! Let `K` be the number of keys, `C_L`, `m_L` the left policy's `max_rows_per_unit` and
//! `max_rows_per_key`, `C_R` the right one's `max_rows_per_unit`. Couple the random choices
//! of two neighbouring datasets by giving every row the same random tag in both.
//!
//! Removing a **left** person removes its at most `C_L` rows; per key, each removed row that
//! kept its value lets at most one other row keep that value instead. So at most
//! `D_L = C_L · (1 + K)` bounded left rows change (their own, and one per row and key), each
//! moving one left person between two cells (or out of one).
//!
//! Removing a **right** person removes its at most `C_R` rows (the person stage is per
//! person: nobody else's rows change), hence at most `C_R` values from each key's set of
//! right values; each such value is kept by at most `m_L` left rows. So at most
//! `D_R = C_R · K · m_L` left rows change their match, each moving one left person between
//! two cells (or in or out of one).
//!
//! A left person is counted in exactly one cell per group it has rows in, so over all cells
//! the vector of `n` changes by `l∞ ≤ D_u`, `l1 ≤ 2 · D_u` and in `l0 ≤ 2 · D_u` cells: the
//! selection is calibrated on `(2·D, 2·D, D)` for the largest `D_u` of the datasets with
//! differential privacy on, and each owner is charged what OpenDP's map gives for its own
//! `D_u`. With the default bounds (`C = m = 1`) and three keys, `D_L = 4`, `D_R = 3`.
//!
//! *The right owner's minimum.* The released value counts left people, so the right owner's
//! rule "a cell stands for at least `k_R` of my people" is enforced through `n`: a bounded
//! right person has at most `C_R` rows, each of whose key values is kept by at most `m_L`
//! left rows, so at most `C_R · m_L` left people stand behind one right person and
//! `n ≤ C_R · m_L · r`. A cell with `n ≥ F` therefore has `r ≥ k_R`. Because the floor is on
//! the selected count itself, [`cleanroom_privacy::partition::GroupSelection`]'s argument
//! (noisy threshold raised by `F − 1`) covers it: no exact cut-off on a quantity the noise
//! does not see is made. (The explicit `r ≥ k_R` check is kept as a defence and never binds.)

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use cleanroom_privacy::budget::{Epsilon, PrivacyCost};
use cleanroom_privacy::noise::IntegerNoise;
use cleanroom_privacy::partition::{GroupSelection, SelectionBounds};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{Expr, ExprFunctionExt, LogicalPlanBuilder, col, lit, when};

use crate::calibrate::{GROUP_COUNT_SHARE, MAX_ROWS_CHANGED};
use crate::catalog::{Catalog, QueryTable};
use crate::error::internal;
use crate::release::{Cell, ColumnKind, LeftOut, Released, ReleasedColumn, cell_of, noise_sd};
use crate::rewrite::{ROW_NUMBER, RunOptions, bound_contributions, by_tag, scan, tagged};
use crate::{PrivacyRequest, QueryError};

/// Most identifier types one cascade may match on.
pub const MAX_KEYS: usize = 5;

/// Contribution bounds of a cascade for one dataset (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CascadeBounds {
    /// `D_u`: left people whose cell one person of this dataset can change.
    pub moves: i64,
}

impl CascadeBounds {
    /// What one person can change in the cells' counts `n`: `D` cells down by one and `D`
    /// up by one.
    fn selection(self) -> Result<SelectionBounds, QueryError> {
        let cells = self.moves.checked_mul(2).ok_or_else(too_loose)?;
        Ok(SelectionBounds::new(
            u32::try_from(cells).map_err(|_| too_loose())?,
            cells,
            self.moves,
        )?)
    }
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
    /// The noisy count of cells formed, with a dimension under differential privacy (how
    /// many cells were left out is released from it). A moved person unmakes at most one cell
    /// and makes at most one, and at most `2·D` cells change at all, so its sensitivity is
    /// `2·D`; it gets [`GROUP_COUNT_SHARE`] of the epsilon.
    cell_count: Option<IntegerNoise>,
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
            "the datasets' contribution bounds let one person move more than {MAX_ROWS_CHANGED} matched people; lower max_rows_per_unit or max_rows_per_key"
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
            lt.may_group_on(b)?;
        }

        // Sensitivities (module documentation).
        let k = keys.len() as i64;
        let (cl, ml) = (
            i64::from(lt.policy.max_rows_per_unit),
            i64::from(lt.policy.max_rows_per_key),
        );
        let cr = i64::from(rt.policy.max_rows_per_unit);
        let bounds = [
            CascadeBounds {
                moves: mul(cl, 1 + k)?,
            },
            CascadeBounds {
                moves: mul(mul(cr, k)?, ml)?,
            },
        ];
        if bounds.iter().any(|b| b.moves > MAX_ROWS_CHANGED) {
            return Err(too_loose());
        }
        // The exact floor on `n` that also guarantees the right owner's minimum.
        let floor = i64::from(lt.policy.min_group_size)
            .max(mul(mul(cr, ml)?, i64::from(rt.policy.min_group_size))?);
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
            cell_count: None,
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
        let widest = bounds
            .iter()
            .zip(protected)
            .filter(|(_, p)| *p)
            .map(|(b, _)| *b)
            .max_by_key(|b| b.moves)
            .unwrap_or(CascadeBounds { moves: 1 });
        let share = if by.is_some() { GROUP_COUNT_SHARE } else { 0.0 };
        let selection = GroupSelection::calibrate(
            Epsilon::grant(request.epsilon * (1.0 - share))?,
            request.delta,
            widest.selection()?,
            floor,
        )?;
        let cell_count = match by {
            Some(_) => Some(IntegerNoise::calibrate(
                Epsilon::grant(request.epsilon * share)?,
                mul(2, widest.moves)?,
            )?),
            None => None,
        };
        for (i, (t, cost)) in cascade.costs.iter_mut().enumerate() {
            debug_assert_eq!(*t, tables[i]);
            if protected[i] {
                *cost = selection.cost_for(bounds[i].selection()?)?;
                if let Some(m) = &cell_count {
                    *cost = cost.plus(m.cost_for(mul(2, bounds[i].moves)?)?)?;
                }
            }
        }
        cascade.selection = Some(selection);
        cascade.cell_count = cell_count;
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
                "cascade: {} (owner {}, policy v{}): one person moves at most {} matched people between cells; minimum group size {}; {}",
                t.name,
                t.owner,
                t.policy_version,
                self.bounds[i].moves,
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
                "cascade: a cell is shown only if at least {} matched people of {} (and so at least {} of {}) are in it and its noisy count reaches {}",
                sel.min_group_size(),
                catalog.tables[self.left].name,
                catalog.tables[self.right].policy.min_group_size,
                catalog.tables[self.right].name,
                sel.threshold()
            ));
        }
        out
    }

    /// The bounded rows of one side, materialised once (the random choice of rows is made
    /// once and shared by every later step), with internal column names: at most `C` rows
    /// per person and, with `cap_keys`, each key's values capped (see [`cap_key_values`]).
    async fn bounded(
        &self,
        table: &QueryTable,
        prefix: &str,
        keys: &[&str],
        by: Option<&str>,
        cap_keys: bool,
        opts: RunOptions,
    ) -> Result<MemTable, QueryError> {
        let name = format!("{prefix}t");
        let unit = table.unit_column();
        let mut columns: BTreeSet<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        columns.insert(unit.to_owned());
        if let Some(b) = by {
            columns.insert(b.to_owned());
        }
        let mut b = scan(table, &name, &columns)?;
        if opts.bound_contributions {
            // The person stage only: keys are capped per key, not by dropping rows.
            b = bound_contributions(b, &name, table, &columns, &BTreeSet::new())?;
            if cap_keys {
                b = cap_key_values(b, &name, table, &columns, keys)?;
            }
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
        let planned = Arc::new(plan.schema().as_arrow().clone());
        let batches: Vec<RecordBatch> = crate::engine::collect(plan, opts.partitions).await?;
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
            .bounded(lt, "l", &lkeys, self.by.as_deref(), true, opts)
            .await?;
        let r = self.bounded(rt, "r", &rkeys, None, false, opts).await?;
        // The bounded tables are in this process's memory: the join of the cascade runs here
        // on any engine (their bounding ran where the engine is).
        let ctx = crate::engine::local_session(opts.partitions);
        ctx.register_table("cascade_l", Arc::new(l))
            .map_err(internal)?;
        ctx.register_table("cascade_r", Arc::new(r))
            .map_err(internal)?;
        let plan = ctx
            .state()
            .create_logical_plan(&cascade_sql(self.keys.len()))
            .await
            .map_err(internal)?;
        let batches = crate::engine::collect_local(&ctx, plan).await?;
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
        let (shown, values): (Vec<&CascadeCell>, Vec<i64>) = match &self.selection {
            Some(sel) => {
                // Selection and noise in one: the noisy `n` of every cell that clears the
                // floor and the threshold (module documentation).
                let counts: HashMap<u64, i64> = eligible
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (i as u64, c.left_people))
                    .collect();
                let mut kept: Vec<(usize, i64)> = sel
                    .release(&counts)?
                    .into_iter()
                    .map(|(k, v)| (k as usize, v.max(0)))
                    .collect();
                kept.sort_unstable();
                kept.into_iter().map(|(i, v)| (eligible[i], v)).unzip()
            }
            None => {
                let values = eligible.iter().map(|c| c.left_people).collect();
                (eligible, values)
            }
        };
        // Cells left out: with a dimension, the noisy number of cells formed less those shown;
        // without one, the identifier types not shown (a function of the release alone).
        let left_out = match (&self.cell_count, &self.by) {
            (Some(m), Some(_)) => Some(LeftOut::estimate(m, cells.len(), shown.len())?),
            (_, None) => Some(LeftOut {
                groups: (self.keys.len() - shown.len()) as i64,
                noise_sd: None,
            }),
            _ => None,
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
                noise_sd: self.selection.as_ref().map(|s| noise_sd(s.scale())),
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
        Ok(Released {
            columns,
            rows,
            left_out,
        })
    }
}

/// Caps every key independently: of the rows sharing one value of key `k`, at most the
/// policy's `max_rows_per_key` (chosen at random) keep the value; the others have `k` set to
/// null, so they can still match on the other keys. Unlike dropping rows, this does not let a
/// change in one key's rows ripple into the next key's choice: removing one row changes, per
/// key, only which one other row keeps that value.
fn cap_key_values(
    mut b: LogicalPlanBuilder,
    name: &str,
    table: &QueryTable,
    columns: &BTreeSet<String>,
    keys: &[&str],
) -> Result<LogicalPlanBuilder, QueryError> {
    let q = |c: &str| Expr::Column(Column::new(Some(name), c));
    let keep = u64::from(table.policy.max_rows_per_key);
    for k in keys {
        let known = table
            .stats
            .as_ref()
            .and_then(|s| s.max_rows_per_key.get(*k).copied());
        if known.is_some_and(|m| m <= keep) {
            // Every value already has at most `keep` rows: the stage is the identity.
            continue;
        }
        let rn = row_number()
            .partition_by(vec![q(k)])
            .order_by(by_tag())
            .build()
            .map_err(internal)?
            .alias(ROW_NUMBER);
        let capped = when(col(ROW_NUMBER).lt_eq(lit(keep)), q(k))
            .end()
            .map_err(internal)?
            .alias_qualified(Some(name), *k);
        let projection: Vec<Expr> = columns
            .iter()
            .map(|c| if c == k { capped.clone() } else { q(c) })
            .collect();
        let plain: Vec<Expr> = columns.iter().map(|c| q(c)).collect();
        b = tagged(b, &plain, false)?
            .window(vec![rn])
            .map_err(internal)?
            .project(projection)
            .map_err(internal)?;
    }
    Ok(b)
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
