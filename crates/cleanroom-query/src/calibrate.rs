//! How much one person can change a query's result, and the noise that hides it.
//!
//! ## Contribution bounds after joins
//!
//! Let table `u` keep at most `C_u` rows per person, then at most `m_u` rows per value of each
//! of its `K_u` join keys (see [`crate::rewrite`]). Removing or adding one person of table `u`:
//!
//! * changes the person-bounded rows of `u` by at most `C_u` (only that person's rows), and
//! * each key-bounding stage at most doubles the change: a removed row that was kept lets at
//!   most one other row with the same key in, an added row pushes at most one out. So the
//!   bounded table `u` changes in at most `C_u · 2^K_u` rows.
//! * In an inner equality join on keys, one row of `u` meets at most `m_v` rows of every other
//!   table `v`, so at most `Δ_u = C_u · 2^K_u · Π_{v≠u} m_v` joined rows change.
//!
//! Every aggregate is computed from joined rows, each of which adds at most 1 to a count (of
//! rows, of non-null values or of distinct values) and at most `M = max(|lower|, |upper|)` to a
//! clamped sum, in one group. So for the vector of a measure over all groups the L1 sensitivity
//! is `Δ_u` (counts) or `Δ_u · M` (sums), whatever the data repeats: a crafted upload that
//! repeats a key a million times still changes at most `Δ_u` joined rows per person.
//!
//! The noise of each measure is calibrated for the largest sensitivity over the datasets with
//! differential privacy on; each dataset's owner is then charged what OpenDP's privacy map
//! says that noise costs *its* people (never more than the query's epsilon).

use cleanroom_privacy::budget::{Delta, Epsilon, PrivacyCost};
use cleanroom_privacy::noise::IntegerNoise;
use cleanroom_privacy::partition::{GroupSelection, SelectionBounds};

use crate::QueryError;
use crate::catalog::Catalog;
use crate::spec::{Measure, Spec};

/// The share of a grouped query's epsilon spent on counting how many groups exist (so that the
/// result can say how many were left out). The count only has to be roughly right, so it gets
/// a small share; the rest is split evenly between group selection and the measures.
pub const GROUP_COUNT_SHARE: f64 = 0.1;

/// Largest number of joined rows one person may change before a query is refused as too loose
/// to protect (the noise would drown any answer).
pub const MAX_ROWS_CHANGED: i64 = 1_000_000;

/// What the analyst asks to spend on one query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacyRequest {
    pub epsilon: f64,
    pub delta: f64,
}

/// The noise of one aggregate.
#[derive(Debug, Clone)]
pub enum Mechanism {
    /// No noise: every dataset touched has differential privacy off.
    Exact,
    /// A count or a sum.
    Noise(IntegerNoise),
    /// An average: a noisy sum over a noisy count.
    Average {
        sum: IntegerNoise,
        count: IntegerNoise,
    },
}

/// The calibrated privacy machinery of one query.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// Joined rows one person of each table use can change (`Δ_u`).
    pub rows_changed: Vec<i64>,
    /// Whether each table use is protected by differential privacy.
    pub protected: Vec<bool>,
    /// Private group selection (`None` without differential privacy).
    pub selection: Option<GroupSelection>,
    /// One per aggregate of the spec.
    pub mechanisms: Vec<Mechanism>,
    /// The noisy count of every group the query formed, before any threshold (grouped
    /// queries under differential privacy only): how many groups were left out is released
    /// from it. One person adds or removes at most `Δ_u` groups (each of its changed joined
    /// rows makes or unmakes at most one), so its sensitivity is that of a count.
    pub group_count: Option<IntegerNoise>,
    /// What the release costs the people of each table use (zero for unprotected ones).
    pub costs: Vec<PrivacyCost>,
    pub request: Option<PrivacyRequest>,
}

impl Calibration {
    /// Whether any noise is drawn.
    pub fn is_private(&self) -> bool {
        self.selection.is_some()
    }
}

/// `Δ_u` for every table use of `spec`.
pub fn rows_changed(spec: &Spec, catalog: &Catalog) -> Result<Vec<i64>, QueryError> {
    let too_loose = || {
        QueryError::refused(
            "contribution_bounds",
            None,
            format!(
                "the datasets' contribution bounds let one person change more than {MAX_ROWS_CHANGED} joined rows; lower max_rows_per_unit or max_rows_per_key"
            ),
        )
    };
    let mut out = Vec::with_capacity(spec.uses.len());
    for (u, use_) in spec.uses.iter().enumerate() {
        let p = &catalog.tables[use_.table].policy;
        let keys = u32::try_from(use_.keys.len()).map_err(|_| too_loose())?;
        let mut d = i64::from(p.max_rows_per_unit)
            .checked_mul(2i64.checked_pow(keys).ok_or_else(too_loose)?)
            .ok_or_else(too_loose)?;
        for (v, other) in spec.uses.iter().enumerate() {
            if v != u {
                let m = i64::from(catalog.tables[other.table].policy.max_rows_per_key);
                d = d.checked_mul(m).ok_or_else(too_loose)?;
            }
        }
        if spec.frequency.is_some() {
            // A changed row can move its person from one frequency group to another.
            d = d.checked_mul(2).ok_or_else(too_loose)?;
        }
        if d > MAX_ROWS_CHANGED {
            return Err(too_loose());
        }
        out.push(d);
    }
    Ok(out)
}

/// Number of noisy measurements a spec needs besides group selection.
fn measurements(spec: &Spec) -> usize {
    spec.aggregates
        .iter()
        .map(|a| match a.measure {
            Measure::Avg(_) => 2,
            _ => 1,
        })
        .sum()
}

/// Calibrates the noise of `spec`. Without any dataset under differential privacy the result
/// is exact (thresholds only) and `request` is ignored.
pub fn calibrate(
    spec: &Spec,
    catalog: &Catalog,
    request: PrivacyRequest,
) -> Result<Calibration, QueryError> {
    let rows = rows_changed(spec, catalog)?;
    let protected: Vec<bool> = spec
        .uses
        .iter()
        .map(|u| catalog.tables[u.table].policy.differential_privacy)
        .collect();
    let n = spec.uses.len();
    if !protected.iter().any(|p| *p) {
        return Ok(Calibration {
            rows_changed: rows,
            protected,
            selection: None,
            mechanisms: vec![Mechanism::Exact; spec.aggregates.len()],
            group_count: None,
            costs: vec![PrivacyCost::ZERO; n],
            request: None,
        });
    }
    for a in &spec.aggregates {
        if let Measure::Min(c) | Measure::Max(c) = &a.measure {
            return Err(QueryError::refused(
                "aggregate_not_allowed",
                Some(&c.column.name),
                "MIN and MAX are available only on datasets whose owners turned differential privacy off (a differentially private extreme is not supported yet); use AVG or a clamped SUM",
            ));
        }
    }
    if !(request.epsilon.is_finite() && request.epsilon > 0.0) {
        return Err(QueryError::Privacy(
            cleanroom_privacy::PrivacyError::InvalidParameter(
                "epsilon must be a positive number".into(),
            ),
        ));
    }
    let parts = 1 + measurements(spec);
    let grouped = !spec.group_keys.is_empty();
    let rest = if grouped {
        request.epsilon * (1.0 - GROUP_COUNT_SHARE)
    } else {
        request.epsilon
    };
    let each = Epsilon::grant(rest / parts as f64)?;
    let max_rows = rows
        .iter()
        .zip(&protected)
        .filter(|(_, p)| **p)
        .map(|(r, _)| *r)
        .max()
        .unwrap_or(1);
    let k = spec
        .uses
        .iter()
        .map(|u| i64::from(catalog.tables[u.table].policy.min_group_size))
        .max()
        .unwrap_or(1);
    let selection =
        GroupSelection::calibrate(each, request.delta, SelectionBounds::rows(max_rows)?, k)?;
    let mut costs: Vec<PrivacyCost> = Vec::with_capacity(n);
    for u in 0..n {
        costs.push(if protected[u] {
            selection.cost_for(SelectionBounds::rows(rows[u])?)?
        } else {
            PrivacyCost::ZERO
        });
    }
    let noise = |weight: i64| -> Result<IntegerNoise, QueryError> {
        let s = max_rows.checked_mul(weight).ok_or_else(|| {
            QueryError::refused(
                "contribution_bounds",
                None,
                "the metric bounds times the contribution bounds overflow",
            )
        })?;
        Ok(IntegerNoise::calibrate(each, s)?)
    };
    let mut mechanisms = Vec::with_capacity(spec.aggregates.len());
    for a in &spec.aggregates {
        let (m, weights): (Mechanism, Vec<(usize, i64)>) = match &a.measure {
            Measure::Rows | Measure::NonNull(_) | Measure::Distinct(_) => {
                let m = noise(1)?;
                (Mechanism::Noise(m), vec![(0, 1)])
            }
            Measure::Sum(c) => {
                let m = noise(c.magnitude())?;
                (Mechanism::Noise(m), vec![(0, c.magnitude())])
            }
            Measure::Avg(c) => {
                let sum = noise(c.magnitude())?;
                let count = noise(1)?;
                (
                    Mechanism::Average { sum, count },
                    vec![(0, c.magnitude()), (1, 1)],
                )
            }
            Measure::Min(_) | Measure::Max(_) => unreachable!("refused above"),
        };
        for (u, cost) in costs.iter_mut().enumerate() {
            if !protected[u] {
                continue;
            }
            for (part, weight) in &weights {
                let noise = match (&m, part) {
                    (Mechanism::Noise(x), _) => x,
                    (Mechanism::Average { sum, .. }, 0) => sum,
                    (Mechanism::Average { count, .. }, _) => count,
                    (Mechanism::Exact, _) => continue,
                };
                *cost = cost.plus(noise.cost_for(rows[u] * weight)?)?;
            }
        }
        mechanisms.push(m);
    }
    let group_count = if grouped {
        let m = IntegerNoise::calibrate(
            Epsilon::grant(request.epsilon * GROUP_COUNT_SHARE)?,
            max_rows,
        )?;
        for (u, cost) in costs.iter_mut().enumerate() {
            if protected[u] {
                *cost = cost.plus(m.cost_for(rows[u])?)?;
            }
        }
        Some(m)
    } else {
        None
    };
    Ok(Calibration {
        rows_changed: rows,
        protected,
        selection: Some(selection),
        mechanisms,
        group_count,
        costs,
        request: Some(request),
    })
}

/// The cost of the whole query for the people of the most exposed dataset: what a per-query
/// cap must allow.
pub fn max_cost(c: &Calibration) -> PrivacyCost {
    c.costs
        .iter()
        .copied()
        .fold(PrivacyCost::ZERO, |a, b| PrivacyCost {
            epsilon: a.epsilon.max(b.epsilon),
            delta: Delta::from_units(a.delta.units().max(b.delta.units())),
        })
}
