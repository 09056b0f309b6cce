//! From exact groups to the released table: private group selection, noise, and
//! post-processing (rounding, clamping, ordering, limits) of the noisy values only.

use std::cmp::Ordering;
use std::collections::HashMap;

use datafusion::common::ScalarValue;

use cleanroom_privacy::noise::IntegerNoise;

use crate::QueryError;
use crate::calibrate::{Calibration, Mechanism};
use crate::rewrite::{ExactGroup, ExactValue};
use crate::spec::{Measure, Source, Spec};

/// A released value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// A group key value as a released cell.
pub(crate) fn cell_of(v: &ScalarValue) -> Cell {
    Cell::from_scalar(v)
}

impl Cell {
    fn from_scalar(v: &ScalarValue) -> Cell {
        if v.is_null() {
            return Cell::Null;
        }
        match v {
            ScalarValue::Boolean(Some(b)) => Cell::Bool(*b),
            ScalarValue::Int8(Some(x)) => Cell::Int(i64::from(*x)),
            ScalarValue::Int16(Some(x)) => Cell::Int(i64::from(*x)),
            ScalarValue::Int32(Some(x)) => Cell::Int(i64::from(*x)),
            ScalarValue::Int64(Some(x)) => Cell::Int(*x),
            ScalarValue::UInt8(Some(x)) => Cell::Int(i64::from(*x)),
            ScalarValue::UInt16(Some(x)) => Cell::Int(i64::from(*x)),
            ScalarValue::UInt32(Some(x)) => Cell::Int(i64::from(*x)),
            ScalarValue::Float32(Some(x)) => Cell::Float(f64::from(*x)),
            ScalarValue::Float64(Some(x)) => Cell::Float(*x),
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Cell::Text(s.clone()),
            other => Cell::Text(other.to_string()),
        }
    }

    fn cmp(&self, other: &Cell) -> Ordering {
        use Cell::*;
        match (self, other) {
            (Null, Null) => Ordering::Equal,
            (Null, _) => Ordering::Less,
            (_, Null) => Ordering::Greater,
            (Bool(a), Bool(b)) => a.cmp(b),
            (Int(a), Int(b)) => a.cmp(b),
            (Int(a), Float(b)) => (*a as f64).total_cmp(b),
            (Float(a), Int(b)) => a.total_cmp(&(*b as f64)),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Text(a), Text(b)) => a.cmp(b),
            (a, b) => format!("{a:?}").cmp(&format!("{b:?}")),
        }
    }
}

/// What a released column holds.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnKind {
    /// A group key (exact: it is a value of a dimension shared by enough people).
    Group,
    /// A noisy count; `noise_sd` is the standard deviation of the noise added.
    Count { noise_sd: Option<f64> },
    /// A noisy sum, in the metric's units.
    Sum { noise_sd: Option<f64> },
    /// A ratio of a noisy sum and a noisy count, clamped into the metric's bounds.
    Average,
    /// An exact extreme (datasets without differential privacy only).
    Extreme,
    /// A figure derived from released values (a rate, a lift): post-processing.
    Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReleasedColumn {
    pub name: String,
    pub kind: ColumnKind,
}

/// How many groups a table leaves out (below the owners' thresholds, or not privately
/// selected), as released: a noisy estimate under differential privacy, never an exact count
/// of groups that exist in the data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeftOut {
    /// The estimate, never below zero.
    pub groups: i64,
    /// Standard deviation of the noise in the estimate; `None` when the figure is derived from
    /// released values only (and is then exact).
    pub noise_sd: Option<f64>,
}

/// The released table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Released {
    pub columns: Vec<ReleasedColumn>,
    pub rows: Vec<Vec<Cell>>,
    /// How many groups were left out; `None` when not counted (ungrouped tables, and exact
    /// releases without differential privacy, where any count of the groups below the
    /// threshold would be an exact fact about them).
    pub left_out: Option<LeftOut>,
}

impl LeftOut {
    /// Releases how many of `formed` groups were left out when `shown` are shown: the noisy
    /// count of those formed (fresh noise, paid for in the calibration) less the number
    /// shown, itself a released figure.
    pub(crate) fn estimate(
        count: &IntegerNoise,
        formed: usize,
        shown: usize,
    ) -> Result<LeftOut, QueryError> {
        let formed = i64::try_from(formed).unwrap_or(i64::MAX);
        let shown = i64::try_from(shown).unwrap_or(i64::MAX);
        Ok(LeftOut {
            groups: count.release(formed)?.saturating_sub(shown).max(0),
            noise_sd: Some(noise_sd(count.scale())),
        })
    }
}

impl Released {
    /// The same table with `more` groups left out on top of the released estimate (rows a
    /// template dropped when combining released tables).
    pub(crate) fn plus_left_out(mut self, more: usize) -> Released {
        if let Some(l) = &mut self.left_out {
            l.groups = l
                .groups
                .saturating_add(i64::try_from(more).unwrap_or(i64::MAX));
        }
        self
    }
}

/// The standard deviation of discrete Laplace noise of scale `scale`.
pub(crate) fn noise_sd(scale: f64) -> f64 {
    // Discrete Laplace with scale b has variance 2q/(1-q)^2, q = e^(-1/b) (≈ 2b² for large b).
    let q = (-1.0 / scale).exp();
    (2.0 * q).sqrt() / (1.0 - q)
}

/// Releases the groups of an executed spec under its calibration.
///
/// `formed` is the number of groups the engine formed before any threshold; only its noisy
/// count is released (as the number of groups left out), and only for grouped queries under
/// differential privacy.
pub fn release(
    spec: &Spec,
    calibration: &Calibration,
    groups: Vec<ExactGroup>,
    formed: usize,
) -> Result<Released, QueryError> {
    // 1. Which groups appear: privately selected (the exact minimum was applied in the engine,
    //    and again here).
    let selected: Vec<ExactGroup> = match &calibration.selection {
        Some(sel) => {
            let counts: HashMap<u64, i64> = groups
                .iter()
                .enumerate()
                .map(|(i, g)| (i as u64, g.units.iter().copied().min().unwrap_or(0)))
                .collect();
            let kept = sel.release(&counts)?;
            let mut keep: Vec<usize> = kept.keys().map(|k| *k as usize).collect();
            keep.sort_unstable();
            let mut groups: Vec<Option<ExactGroup>> = groups.into_iter().map(Some).collect();
            keep.into_iter()
                .filter_map(|i| groups.get_mut(i).and_then(Option::take))
                .collect()
        }
        None => groups,
    };

    // 2. How many groups were left out: the noisy number formed, less the number selected
    //    (a released figure), before the analyst's LIMIT.
    let left_out = calibration
        .group_count
        .as_ref()
        .map(|m| LeftOut::estimate(m, formed, selected.len()))
        .transpose()?;

    // 3. Noise on every measure of the selected groups (one vector release per measure).
    let n = selected.len();
    let mut values: Vec<Vec<Cell>> = vec![Vec::with_capacity(spec.aggregates.len()); n];
    let mut kinds = Vec::with_capacity(spec.aggregates.len());
    for (j, (a, m)) in spec
        .aggregates
        .iter()
        .zip(&calibration.mechanisms)
        .enumerate()
    {
        let exact: Vec<ExactValue> = selected.iter().map(|g| g.values[j]).collect();
        let (cells, kind) = release_measure(&a.measure, m, &exact)?;
        for (row, c) in values.iter_mut().zip(cells) {
            row.push(c);
        }
        kinds.push(kind);
    }

    // 4. Rows of group keys and aggregates, ordered and limited on released values.
    let mut rows: Vec<(Vec<Cell>, Vec<Cell>)> = selected
        .iter()
        .zip(values)
        .map(|(g, v)| (g.keys.iter().map(Cell::from_scalar).collect(), v))
        .collect();
    if !spec.order_by.is_empty() {
        rows.sort_by(|a, b| {
            for k in &spec.order_by {
                let (x, y) = match k.source {
                    Source::Group(i) => (&a.0[i], &b.0[i]),
                    Source::Aggregate(i) => (&a.1[i], &b.1[i]),
                };
                let mut o = match (x, y) {
                    (Cell::Null, Cell::Null) => Ordering::Equal,
                    (Cell::Null, _) => {
                        if k.nulls_first {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        }
                    }
                    (_, Cell::Null) => {
                        if k.nulls_first {
                            Ordering::Greater
                        } else {
                            Ordering::Less
                        }
                    }
                    _ => x.cmp(y),
                };
                if !k.ascending && !matches!((x, y), (Cell::Null, _) | (_, Cell::Null)) {
                    o = o.reverse();
                }
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    } else {
        // A stable, data-independent order: by group keys.
        rows.sort_by(|a, b| {
            a.0.iter()
                .zip(&b.0)
                .map(|(x, y)| x.cmp(y))
                .find(|o| *o != Ordering::Equal)
                .unwrap_or(Ordering::Equal)
        });
    }
    let rows = rows
        .into_iter()
        .skip(spec.offset)
        .take(spec.limit.unwrap_or(usize::MAX));
    let columns: Vec<ReleasedColumn> = spec
        .outputs
        .iter()
        .map(|o| ReleasedColumn {
            name: o.name.clone(),
            kind: match o.source {
                Source::Group(_) => ColumnKind::Group,
                Source::Aggregate(i) => kinds[i].clone(),
            },
        })
        .collect();
    let rows = rows
        .map(|(g, v)| {
            spec.outputs
                .iter()
                .map(|o| match o.source {
                    Source::Group(i) => g[i].clone(),
                    Source::Aggregate(i) => v[i].clone(),
                })
                .collect()
        })
        .collect();
    Ok(Released {
        columns,
        rows,
        left_out,
    })
}

fn release_measure(
    measure: &Measure,
    mechanism: &Mechanism,
    exact: &[ExactValue],
) -> Result<(Vec<Cell>, ColumnKind), QueryError> {
    let counts = |v: &[ExactValue]| -> Vec<i64> {
        v.iter()
            .map(|x| match x {
                ExactValue::Count(c) => *c,
                ExactValue::Avg { count, .. } => *count,
                _ => 0,
            })
            .collect()
    };
    let sums = |v: &[ExactValue]| -> Vec<i64> {
        v.iter()
            .map(|x| match x {
                ExactValue::Sum(s) | ExactValue::Avg { sum: s, .. } => {
                    // Sums of bounded values over fewer than 9·10⁹ rows fit; beyond, saturate.
                    i64::try_from(*s).unwrap_or(if *s < 0 { i64::MIN } else { i64::MAX })
                }
                _ => 0,
            })
            .collect()
    };
    match (measure, mechanism) {
        (Measure::Rows | Measure::NonNull(_) | Measure::Distinct(_), Mechanism::Noise(m)) => {
            let noisy = m.release_all(&counts(exact))?;
            Ok((
                noisy.into_iter().map(|c| Cell::Int(c.max(0))).collect(),
                ColumnKind::Count {
                    noise_sd: Some(noise_sd(m.scale())),
                },
            ))
        }
        (Measure::Rows | Measure::NonNull(_) | Measure::Distinct(_), Mechanism::Exact) => Ok((
            counts(exact).into_iter().map(Cell::Int).collect(),
            ColumnKind::Count { noise_sd: None },
        )),
        (Measure::Sum(c), m) => {
            let (noisy, noise_sd) = match m {
                Mechanism::Noise(n) => (
                    n.release_all(&sums(exact))?,
                    Some(noise_sd(n.scale()) / c.scale as f64),
                ),
                _ => (sums(exact), None),
            };
            Ok((
                noisy.into_iter().map(|s| fixed(s, c.scale)).collect(),
                ColumnKind::Sum { noise_sd },
            ))
        }
        (Measure::Avg(c), m) => {
            let (s, n) = match m {
                Mechanism::Average { sum, count } => (
                    sum.release_all(&sums(exact))?,
                    count.release_all(&counts(exact))?,
                ),
                _ => (sums(exact), counts(exact)),
            };
            let cells = s
                .into_iter()
                .zip(n)
                .map(|(s, n)| {
                    // Post-processing of released values: a count below one is read as one.
                    let avg = (s as f64 / c.scale as f64) / (n.max(1) as f64);
                    let avg = avg.clamp(c.lower, c.upper);
                    Cell::Float(round_to(avg, c.scale))
                })
                .collect();
            Ok((cells, ColumnKind::Average))
        }
        (Measure::Min(c) | Measure::Max(c), Mechanism::Exact) => Ok((
            exact
                .iter()
                .map(|x| match x {
                    ExactValue::Extreme(Some(v)) => Cell::Float(round_to(*v, c.scale)),
                    _ => Cell::Null,
                })
                .collect(),
            ColumnKind::Extreme,
        )),
        _ => Err(QueryError::Internal(
            "a measure and its mechanism do not match".into(),
        )),
    }
}

fn fixed(v: i64, scale: i64) -> Cell {
    if scale == 1 {
        Cell::Int(v)
    } else {
        Cell::Float(v as f64 / scale as f64)
    }
}

fn round_to(v: f64, scale: i64) -> f64 {
    let s = scale.max(1) as f64;
    (v * s).round() / s
}
