//! Anonymisation transforms: the statistical disclosure control toolbox (as in ARX and
//! sdcMicro) applied to the prepared columns after generalisation, in the order the
//! configuration lists them (`[[transform]]`), before anything leaves the owner's premises.
//!
//! | transform | module | passes | what it does |
//! |---|---|---|---|
//! | masking | [`mask`] | streaming | drop a column, or keep a prefix or suffix of its text |
//! | top/bottom-coding | [`coding`] | streaming at a fixed threshold; two passes at a percentile | cap extremes (`90+`, revenue at its 99th percentile) |
//! | noise | [`noise`] | streaming | add bounded integer-grid noise from a CSPRNG (not differential privacy) |
//! | swapping | [`swap`] | in memory | rank swapping within a window, or swapping within a stratum |
//! | microaggregation | [`microaggregate`] | in memory | groups of at least k sorted values replaced by their mean |
//! | local suppression | [`suppress`] | in memory | blank the fewest quasi-identifier values (or drop the fewest rows) so every class has at least k |
//!
//! When every configured transform is streaming, rows pass through them one at a time and
//! memory stays flat. Otherwise the prepared rows are held in a [`Table`] in memory (the
//! report states how much) and nothing reaches the disk until the transforms have run: the
//! temporary output file only ever holds transformed rows.
//!
//! Randomness comes from ChaCha20 seeded by the operating system ([`os_rng`]); tests seed it
//! by hand. No transform here gives differential privacy; the report says so.

pub mod coding;
pub mod mask;
pub mod microaggregate;
pub mod noise;
pub mod parse;
pub mod stage;
pub mod suppress;
pub mod swap;
mod table;

use rand::SeedableRng;
use rand::rngs::{ChaCha20Rng, SysRng};

pub use table::{Table, Value, format_number};

use crate::IdentityError;
use coding::Coding;
use mask::Mask;
use noise::Noise;
use suppress::Suppression;
use swap::Swap;

/// The random source of every transform: ChaCha20, a CSPRNG.
pub type TransformRng = ChaCha20Rng;

/// A ChaCha20 generator seeded from the operating system.
pub fn os_rng() -> Result<TransformRng, IdentityError> {
    ChaCha20Rng::try_from_rng(&mut SysRng).map_err(|e| IdentityError::Io {
        context: "cannot read the operating system's random source".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// One configured transform of one output column (suppression: of the quasi-identifiers).
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    Mask { column: String, mask: Mask },
    Code { column: String, coding: Coding },
    Noise { column: String, noise: Noise },
    Swap { column: String, swap: Swap },
    Microaggregate { column: String, k: usize },
    Suppress(Suppression),
}

impl Transform {
    /// True when the transform sees one value at a time (no whole column needed).
    pub fn is_streaming(&self) -> bool {
        match self {
            Transform::Mask { .. } | Transform::Noise { .. } => true,
            Transform::Code { coding, .. } => coding.is_fixed(),
            Transform::Swap { .. } | Transform::Microaggregate { .. } | Transform::Suppress(_) => {
                false
            }
        }
    }

    /// The output column it changes (`None` for suppression, which spans the quasi-identifiers).
    pub fn column(&self) -> Option<&str> {
        match self {
            Transform::Mask { column, .. }
            | Transform::Code { column, .. }
            | Transform::Noise { column, .. }
            | Transform::Swap { column, .. }
            | Transform::Microaggregate { column, .. } => Some(column),
            Transform::Suppress(_) => None,
        }
    }

    fn name(&self) -> String {
        match self {
            Transform::Mask { column, .. } => format!("masking of `{column}`"),
            Transform::Code { column, coding } => format!("{} of `{column}`", coding.name()),
            Transform::Noise { column, .. } => format!("noise on `{column}`"),
            Transform::Swap { column, .. } => format!("swapping of `{column}`"),
            Transform::Microaggregate { column, .. } => {
                format!("microaggregation of `{column}`")
            }
            Transform::Suppress(_) => "local suppression to k".into(),
        }
    }

    fn parameters(&self) -> String {
        match self {
            Transform::Mask { mask, .. } => mask.describe(),
            Transform::Code { coding, .. } => coding.describe(),
            Transform::Noise { noise, .. } => noise.describe(),
            Transform::Swap { swap, .. } => swap.describe(),
            Transform::Microaggregate { k, .. } => {
                format!("sorted groups of at least {k} values replaced by their mean")
            }
            Transform::Suppress(s) => s.describe(),
        }
    }
}

/// The validated `[[transform]]` list, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transforms {
    steps: Vec<Transform>,
}

impl Transforms {
    pub fn new(steps: Vec<Transform>) -> Self {
        Transforms { steps }
    }

    pub fn steps(&self) -> &[Transform] {
        &self.steps
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// True when every transform sees one value at a time: rows stream through.
    pub fn is_streaming(&self) -> bool {
        self.steps.iter().all(Transform::is_streaming)
    }

    /// Output columns masked with `drop`: blanked and left out of the upload file.
    pub fn dropped_columns(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter_map(|t| match t {
                Transform::Mask {
                    column,
                    mask: Mask::Drop,
                } => Some(column.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Applies the transforms one row at a time (only when [`is_streaming`](Self::is_streaming)).
    pub fn streaming(&self, names: &[String]) -> Result<RowPipeline, IdentityError> {
        let mut steps = Vec::new();
        for t in &self.steps {
            let col = column_index(names, t)?;
            steps.push((col, t.clone()));
        }
        Ok(RowPipeline {
            outcomes: self.steps.iter().map(Outcome::new).collect(),
            steps,
        })
    }

    /// Applies every transform to the whole table, in order.
    pub fn run_table(
        &self,
        table: &mut Table,
        rng: &mut TransformRng,
    ) -> Result<Vec<Outcome>, IdentityError> {
        let mut outcomes = Vec::new();
        for t in &self.steps {
            let mut o = Outcome::new(t);
            match t {
                Transform::Mask { .. } | Transform::Noise { .. } => {
                    let col = column_index(table.names(), t)?;
                    for v in table.column_mut(col) {
                        let e = apply_value(t, v, rng);
                        o.add(e);
                    }
                }
                Transform::Code { column, coding } => {
                    let col = column_index(table.names(), t)?;
                    let fixed = coding.resolve(table.column(col));
                    if let Some(at) = fixed.threshold() {
                        o.parameters
                            .push_str(&format!("; threshold {}", format_number(at, 6)));
                    }
                    let _ = column;
                    for v in table.column_mut(col) {
                        o.add(fixed.apply(v));
                    }
                }
                Transform::Swap { swap, .. } => {
                    let col = column_index(table.names(), t)?;
                    swap.apply(table, col, rng, &mut o)?;
                }
                Transform::Microaggregate { k, .. } => {
                    let col = column_index(table.names(), t)?;
                    microaggregate::apply(table.column_mut(col), *k, &mut o);
                }
                Transform::Suppress(s) => s.apply(table, &mut o)?,
            }
            outcomes.push(o);
        }
        Ok(outcomes)
    }
}

fn column_index(names: &[String], t: &Transform) -> Result<usize, IdentityError> {
    let name = t.column().unwrap_or_default();
    names.iter().position(|n| n == name).ok_or_else(|| {
        IdentityError::Internal(format!("transform column {name} not in the output"))
    })
}

/// A streaming transform applied to one value.
fn apply_value(t: &Transform, v: &mut Value, rng: &mut TransformRng) -> Effect {
    match t {
        Transform::Mask { mask, .. } => mask.apply(v),
        Transform::Noise { noise, .. } => noise.apply(v, rng),
        Transform::Code { coding, .. } => coding.resolve(&[]).apply(v),
        _ => Effect::default(),
    }
}

/// The transforms applied to rows as they stream by.
#[derive(Debug)]
pub struct RowPipeline {
    steps: Vec<(usize, Transform)>,
    outcomes: Vec<Outcome>,
}

impl RowPipeline {
    /// Transforms one row in place (cells in output order).
    pub fn row(&mut self, row: &mut [Value], rng: &mut TransformRng) {
        for ((col, t), o) in self.steps.iter().zip(&mut self.outcomes) {
            let e = apply_value(t, &mut row[*col], rng);
            o.add(e);
        }
    }

    pub fn into_outcomes(self) -> Vec<Outcome> {
        self.outcomes
    }
}

/// What a transform did to one value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Effect {
    /// The value was not NULL before.
    pub seen: bool,
    /// The value is different now.
    pub changed: bool,
    /// The value was blanked.
    pub suppressed: bool,
    /// |new − old| for numbers.
    pub abs_change: Option<f64>,
}

/// What one transform did, for the report: counts only, never a value from the data.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `noise on `revenue``.
    pub transform: String,
    /// Its parameters, and for data-dependent ones the value they took.
    pub parameters: String,
    /// Non-NULL values it saw.
    pub values: u64,
    /// Values it changed.
    pub changed: u64,
    /// Values it blanked.
    pub suppressed: u64,
    /// Rows it removed.
    pub rows_dropped: u64,
    /// Sum of |change| over the numbers it changed, and how many numbers that was.
    pub abs_change_sum: f64,
    pub numbers: u64,
    /// Records chosen for swapping (the realised swap rate is this over `values`).
    pub swapped: u64,
    /// A limit of this transform that was not met (e.g. more suppression than `max_share`).
    pub breach: Option<String>,
    /// Remarks (`not differential privacy`, `fewer than k values`).
    pub notes: Vec<String>,
}

impl Outcome {
    fn new(t: &Transform) -> Self {
        let mut notes = Vec::new();
        if let Transform::Noise { .. } = t {
            notes.push("additive noise is not differential privacy: it blurs values but gives no bound on what a release reveals".into());
        }
        Outcome {
            transform: t.name(),
            parameters: t.parameters(),
            values: 0,
            changed: 0,
            suppressed: 0,
            rows_dropped: 0,
            abs_change_sum: 0.0,
            numbers: 0,
            swapped: 0,
            breach: None,
            notes,
        }
    }

    pub fn add(&mut self, e: Effect) {
        self.values += u64::from(e.seen);
        self.changed += u64::from(e.changed);
        self.suppressed += u64::from(e.suppressed);
        if let Some(d) = e.abs_change {
            self.abs_change_sum += d;
            self.numbers += 1;
        }
    }

    /// Mean |change| over the numeric values the transform saw.
    pub fn mean_abs_change(&self) -> Option<f64> {
        (self.numbers > 0).then(|| self.abs_change_sum / self.numbers as f64)
    }
}
