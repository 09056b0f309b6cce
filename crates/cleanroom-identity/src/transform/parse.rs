//! `[[transform]]` entries of the prepare configuration: the raw TOML shape and its
//! validation against the configured output columns. Errors carry the span they are about;
//! [`crate::config`] turns them into line and column.

use std::ops::Range;

use cleanroom_core::schema::ColumnType;
use serde::Deserialize;
use toml::Spanned;

use super::coding::{Coding, Tail, Threshold};
use super::mask::Mask;
use super::noise::{Distribution, Noise};
use super::suppress::{Policy, Suppression};
use super::swap::Swap;
use super::{Transform, Transforms};

/// A span in the configuration and what is wrong there.
pub type SpanError = (Range<usize>, String);

/// One `[[transform]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransform {
    #[serde(rename = "type")]
    ty: Spanned<String>,
    column: Option<Spanned<String>>,
    // mask
    keep: Option<Spanned<String>>,
    length: Option<Spanned<usize>>,
    // top_code, bottom_code
    at: Option<Spanned<f64>>,
    percentile: Option<Spanned<f64>>,
    label: Option<Spanned<String>>,
    // noise
    distribution: Option<Spanned<String>>,
    scale: Option<Spanned<f64>>,
    bound: Option<Spanned<f64>>,
    step: Option<Spanned<f64>>,
    // swap
    method: Option<Spanned<String>>,
    window: Option<Spanned<f64>>,
    rate: Option<Spanned<f64>>,
    within: Option<Spanned<Vec<String>>>,
    // microaggregate, suppress
    k: Option<Spanned<u64>>,
    // suppress
    policy: Option<Spanned<String>>,
    priority: Option<Spanned<Vec<String>>>,
    max_share: Option<Spanned<f64>>,
}

/// What a configured output column is, for checking a transform against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Quasi,
    Dimension,
    Metric,
}

/// A configured output column a transform may name.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub input: String,
    pub output: String,
    pub role: Role,
    pub ty: ColumnType,
}

/// Largest number of noise steps in a scale or bound (keeps the integer sampler exact).
const MAX_STEPS: f64 = 1e12;

impl RawTransform {
    /// The fields given, by name (to refuse those that do not belong to the type).
    fn given(&self) -> Vec<(&'static str, Range<usize>)> {
        let mut v = Vec::new();
        macro_rules! f {
            ($($name:ident),*) => {$(
                if let Some(x) = &self.$name { v.push((stringify!($name), x.span())); }
            )*};
        }
        f!(
            column,
            keep,
            length,
            at,
            percentile,
            label,
            distribution,
            scale,
            bound,
            step,
            method,
            window,
            rate,
            within,
            k,
            policy,
            priority,
            max_share
        );
        v
    }
}

/// Validates the `[[transform]]` list. `default_k` is the `[risk]` k.
pub fn transforms(
    raw: &[RawTransform],
    columns: &[ColumnInfo],
    default_k: u64,
) -> Result<Transforms, SpanError> {
    let mut steps = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    let quasi: Vec<&ColumnInfo> = columns.iter().filter(|c| c.role == Role::Quasi).collect();
    for r in raw {
        let ty = r.ty.get_ref().trim().to_ascii_lowercase();
        check_fields(r, &ty)?;
        let cx = Context {
            r,
            ty: &ty,
            columns,
            dropped: &dropped,
        };
        let step = match ty.as_str() {
            "mask" => mask(&cx)?,
            "top_code" | "bottom_code" => code(&cx)?,
            "noise" => noise(&cx)?,
            "swap" => swap(&cx)?,
            "microaggregate" => microaggregate(&cx, default_k)?,
            _ => suppress(&cx, &quasi, default_k)?,
        };
        if let Transform::Mask {
            column,
            mask: Mask::Drop,
        } = &step
        {
            dropped.push(column.clone());
        }
        steps.push(step);
    }
    Ok(Transforms::new(steps))
}

/// Refuses an unknown transform type and fields that do not belong to the type.
fn check_fields(r: &RawTransform, ty: &str) -> Result<(), SpanError> {
    let allowed: &[&str] = match ty {
        "mask" => &["column", "keep", "length"],
        "top_code" | "bottom_code" => &["column", "at", "percentile", "label"],
        "noise" => &["column", "distribution", "scale", "bound", "step"],
        "swap" => &["column", "method", "window", "rate", "within"],
        "microaggregate" => &["column", "k"],
        "suppress" => &["k", "policy", "priority", "max_share"],
        _ => {
            return Err((
                r.ty.span(),
                "unknown transform type: mask, top_code, bottom_code, noise, swap, microaggregate or suppress".into(),
            ));
        }
    };
    for (name, span) in r.given() {
        if !allowed.contains(&name) {
            return Err((span, format!("{name} does not belong to a {ty} transform")));
        }
    }
    Ok(())
}

/// One transform being validated, with the columns it may name.
struct Context<'a> {
    r: &'a RawTransform,
    /// The transform type, trimmed and lowercased.
    ty: &'a str,
    columns: &'a [ColumnInfo],
    /// Outputs dropped by an earlier mask.
    dropped: &'a [String],
}

impl<'a> Context<'a> {
    /// The configured column named (output name first, then input name), unless dropped.
    fn find(&self, s: &Spanned<String>) -> Result<&'a ColumnInfo, SpanError> {
        let name = s.get_ref().trim();
        let columns = self.columns;
        let c = columns
            .iter()
            .find(|c| c.output == name)
            .or_else(|| columns.iter().find(|c| c.input == name))
            .ok_or_else(|| {
                (
                    s.span(),
                    format!(
                        "{name:?} is not a [[quasi_identifier]], [[dimension]] or [[metric]] output"
                    ),
                )
            })?;
        if self.dropped.contains(&c.output) {
            return Err((
                s.span(),
                format!("{} is dropped by an earlier mask", c.output),
            ));
        }
        Ok(c)
    }

    /// The required `column = "..."` and its span.
    fn column(&self) -> Result<(&'a ColumnInfo, Range<usize>), SpanError> {
        let s = self.r.column.as_ref().ok_or_else(|| {
            (
                self.r.ty.span(),
                format!("a {} transform needs column = \"...\"", self.ty),
            )
        })?;
        Ok((self.find(s)?, s.span()))
    }

    /// Refuses a column that does not hold numbers or dates.
    fn numeric(&self, c: &ColumnInfo, span: Range<usize>) -> Result<(), SpanError> {
        match (c.role, c.ty) {
            (Role::Metric, _) | (Role::Quasi, ColumnType::String | ColumnType::Date) => Ok(()),
            _ => Err((
                span,
                format!(
                    "{} needs a number: a [[metric]] or a [[quasi_identifier]] holding numbers or dates",
                    self.ty
                ),
            )),
        }
    }

    /// `k`, defaulting to the `[risk]` k; at least 2.
    fn k(&self, default_k: u64) -> Result<u64, SpanError> {
        match &self.r.k {
            None => Ok(default_k),
            Some(k) if *k.get_ref() >= 2 => Ok(*k.get_ref()),
            Some(k) => Err((k.span(), "k must be at least 2".into())),
        }
    }
}

/// An optional share in [0, 1], or in (0, 1] when `open_zero`.
fn share(s: &Option<Spanned<f64>>, what: &str, open_zero: bool) -> Result<Option<f64>, SpanError> {
    match s {
        None => Ok(None),
        Some(x) => {
            let v = *x.get_ref();
            let ok = if open_zero {
                v > 0.0 && v <= 1.0
            } else {
                (0.0..=1.0).contains(&v)
            };
            if ok {
                Ok(Some(v))
            } else {
                Err((x.span(), format!("{what} is a share between 0 and 1")))
            }
        }
    }
}

/// `type = "mask"`.
fn mask(cx: &Context<'_>) -> Result<Transform, SpanError> {
    let r = cx.r;
    let (c, span) = cx.column()?;
    let keep = r.keep.as_ref().ok_or_else(|| {
        (
            r.ty.span(),
            "mask needs keep = \"drop\", \"prefix\" or \"suffix\"".to_owned(),
        )
    })?;
    let mask = match keep.get_ref().trim() {
        "drop" => {
            if let Some(l) = &r.length {
                return Err((
                    l.span(),
                    "length belongs to keep = \"prefix\" or \"suffix\"".into(),
                ));
            }
            Mask::Drop
        }
        how @ ("prefix" | "suffix") => {
            if c.ty != ColumnType::String {
                return Err((span, format!("a {how} mask needs a text column")));
            }
            let l = r.length.as_ref().ok_or_else(|| {
                (
                    keep.span(),
                    format!("a {how} mask needs length = N (characters kept)"),
                )
            })?;
            if *l.get_ref() == 0 {
                return Err((
                    l.span(),
                    "length must be at least 1 (to remove the column, keep = \"drop\")".into(),
                ));
            }
            if how == "prefix" {
                Mask::Prefix(*l.get_ref())
            } else {
                Mask::Suffix(*l.get_ref())
            }
        }
        _ => {
            return Err((
                keep.span(),
                "keep must be \"drop\", \"prefix\" or \"suffix\"".into(),
            ));
        }
    };
    Ok(Transform::Mask {
        column: c.output.clone(),
        mask,
    })
}

/// `type = "top_code"` or `"bottom_code"`.
fn code(cx: &Context<'_>) -> Result<Transform, SpanError> {
    let r = cx.r;
    let ty = cx.ty;
    let (c, span) = cx.column()?;
    cx.numeric(c, span)?;
    let threshold = match (&r.at, &r.percentile) {
        (Some(a), None) => {
            if !a.get_ref().is_finite() {
                return Err((a.span(), "at must be a finite number".into()));
            }
            Threshold::At(*a.get_ref())
        }
        (None, Some(p)) => {
            let v = *p.get_ref();
            if !(v > 0.0 && v < 100.0) {
                return Err((
                    p.span(),
                    "percentile is between 0 and 100 (99 = the 99th percentile)".into(),
                ));
            }
            Threshold::Percentile(v)
        }
        _ => {
            return Err((
                r.ty.span(),
                format!("{ty} needs either at = <number> or percentile = <0..100>"),
            ));
        }
    };
    if let Some(l) = &r.label
        && l.get_ref().trim().is_empty()
    {
        return Err((l.span(), "label must not be empty".into()));
    }
    Ok(Transform::Code {
        column: c.output.clone(),
        coding: Coding {
            tail: if ty == "top_code" {
                Tail::Top
            } else {
                Tail::Bottom
            },
            threshold,
            label: r.label.as_ref().map(|l| l.get_ref().trim().to_owned()),
        },
    })
}

/// `type = "noise"`.
fn noise(cx: &Context<'_>) -> Result<Transform, SpanError> {
    let r = cx.r;
    let (c, span) = cx.column()?;
    cx.numeric(c, span)?;
    let whole = matches!(c.ty, ColumnType::Int64 | ColumnType::Date);
    let step = noise_step(r, whole)?;
    let bound = r.bound.as_ref().ok_or_else(|| {
        (
            r.ty.span(),
            "noise needs bound = <largest change>: the noise is bounded".to_owned(),
        )
    })?;
    let bound_steps = noise_steps(bound, "bound", step)?;
    let dist = r
        .distribution
        .as_ref()
        .map_or("discrete_laplace", |d| d.get_ref().trim());
    let distribution = match dist {
        "discrete_laplace" | "laplace" => {
            let scale = r.scale.as_ref().ok_or_else(|| {
                (
                    r.ty.span(),
                    "discrete_laplace noise needs scale = <number>".to_owned(),
                )
            })?;
            Distribution::DiscreteLaplace {
                scale_steps: noise_steps(scale, "scale", step)?,
            }
        }
        "uniform" => {
            if let Some(s) = &r.scale {
                return Err((
                    s.span(),
                    "uniform noise has no scale: it is uniform on ±bound".into(),
                ));
            }
            Distribution::Uniform
        }
        _ => {
            let span = r.distribution.as_ref().map_or(r.ty.span(), Spanned::span);
            return Err((
                span,
                "distribution must be \"discrete_laplace\" or \"uniform\"".into(),
            ));
        }
    };
    Ok(Transform::Noise {
        column: c.output.clone(),
        noise: Noise {
            distribution,
            step,
            bound_steps,
        },
    })
}

/// The noise `step` (default 1); whole for integer and date columns.
fn noise_step(r: &RawTransform, whole: bool) -> Result<f64, SpanError> {
    match &r.step {
        None => Ok(1.0),
        Some(s) => {
            let v = *s.get_ref();
            if !(v.is_finite() && v > 0.0) {
                return Err((s.span(), "step must be a positive number".into()));
            }
            if whole && v.fract() != 0.0 {
                return Err((
                    s.span(),
                    "an integer or date column needs a whole-number step".into(),
                ));
            }
            Ok(v)
        }
    }
}

/// A noise scale or bound as a whole number of steps.
fn noise_steps(x: &Spanned<f64>, what: &str, step: f64) -> Result<u64, SpanError> {
    let v = *x.get_ref() / step;
    if !(v.is_finite() && (1.0..=MAX_STEPS).contains(&v)) || (v - v.round()).abs() > 1e-6 {
        return Err((
            x.span(),
            format!(
                "{what} must be a positive whole number of steps (step = {})",
                super::format_number(step, 9)
            ),
        ));
    }
    Ok(v.round() as u64)
}

/// `type = "swap"`.
fn swap(cx: &Context<'_>) -> Result<Transform, SpanError> {
    let r = cx.r;
    let (c, span) = cx.column()?;
    let rate = share(&r.rate, "rate", true)?.ok_or_else(|| {
        (
            r.ty.span(),
            "swap needs rate = <share of records, e.g. 0.05>".to_owned(),
        )
    })?;
    let method = r.method.as_ref().map_or("rank", |m| m.get_ref().trim());
    let swap = match method {
        "rank" => {
            cx.numeric(c, span)?;
            if let Some(w) = &r.within {
                return Err((w.span(), "within belongs to method = \"stratum\"".into()));
            }
            let window = share(&r.window, "window", true)?.ok_or_else(|| {
                (
                    r.ty.span(),
                    "rank swapping needs window = <share of the ranks, e.g. 0.05>".to_owned(),
                )
            })?;
            Swap::Rank { window, rate }
        }
        "stratum" => Swap::Stratum {
            within: swap_within(cx, c)?,
            rate,
        },
        _ => {
            let span = r.method.as_ref().map_or(r.ty.span(), Spanned::span);
            return Err((span, "method must be \"rank\" or \"stratum\"".into()));
        }
    };
    Ok(Transform::Swap {
        column: c.output.clone(),
        swap,
    })
}

/// The `within` columns of a stratum swap of `c`.
fn swap_within(cx: &Context<'_>, c: &ColumnInfo) -> Result<Vec<String>, SpanError> {
    let r = cx.r;
    if let Some(w) = &r.window {
        return Err((w.span(), "window belongs to method = \"rank\"".into()));
    }
    let w = r.within.as_ref().ok_or_else(|| {
        (
            r.ty.span(),
            "stratum swapping needs within = [\"<column>\", ...]".to_owned(),
        )
    })?;
    if w.get_ref().is_empty() {
        return Err((w.span(), "within names at least one column".into()));
    }
    let mut within = Vec::new();
    for name in w.get_ref() {
        let s = Spanned::new(w.span(), name.clone());
        let wc = cx.find(&s)?;
        if wc.output == c.output {
            return Err((w.span(), "a column cannot be its own stratum".into()));
        }
        within.push(wc.output.clone());
    }
    Ok(within)
}

/// `type = "microaggregate"`.
fn microaggregate(cx: &Context<'_>, default_k: u64) -> Result<Transform, SpanError> {
    let (c, span) = cx.column()?;
    cx.numeric(c, span)?;
    let k = cx.k(default_k)?;
    Ok(Transform::Microaggregate {
        column: c.output.clone(),
        k: usize::try_from(k).unwrap_or(usize::MAX),
    })
}

/// `type = "suppress"`.
fn suppress(
    cx: &Context<'_>,
    quasi: &[&ColumnInfo],
    default_k: u64,
) -> Result<Transform, SpanError> {
    let r = cx.r;
    if quasi.is_empty() {
        return Err((
            r.ty.span(),
            "suppress needs at least one [[quasi_identifier]]".into(),
        ));
    }
    let k = cx.k(default_k)?;
    let policy = match r.policy.as_ref().map_or("blank", |p| p.get_ref().trim()) {
        "blank" => Policy::Blank,
        "drop_rows" => Policy::DropRows,
        _ => {
            let span = r.policy.as_ref().map_or(r.ty.span(), Spanned::span);
            return Err((span, "policy must be \"blank\" or \"drop_rows\"".into()));
        }
    };
    let priority = match &r.priority {
        None => quasi.iter().map(|q| q.output.clone()).collect(),
        Some(p) => suppress_priority(cx, p, quasi)?,
    };
    let max_share = share(&r.max_share, "max_share", false)?;
    Ok(Transform::Suppress(Suppression {
        k,
        policy,
        priority,
        max_share,
    }))
}

/// The `priority` of a suppression: every quasi-identifier once, most important first.
fn suppress_priority(
    cx: &Context<'_>,
    p: &Spanned<Vec<String>>,
    quasi: &[&ColumnInfo],
) -> Result<Vec<String>, SpanError> {
    let mut v: Vec<String> = Vec::new();
    for name in p.get_ref() {
        let s = Spanned::new(p.span(), name.clone());
        let c = cx.find(&s)?;
        if c.role != Role::Quasi {
            return Err((p.span(), format!("{} is not a quasi-identifier", c.output)));
        }
        if v.contains(&c.output) {
            return Err((p.span(), format!("{} is listed twice", c.output)));
        }
        v.push(c.output.clone());
    }
    if v.len() != quasi.len() {
        return Err((
            p.span(),
            "priority lists every quasi-identifier, most important first".into(),
        ));
    }
    Ok(v)
}
