//! Top- and bottom-coding: values beyond a threshold are replaced by the threshold (numbers)
//! or by a label (numbers written as text, e.g. an age kept as written becomes `90+`).
//!
//! The threshold is fixed (`at = 90`, streaming) or a percentile of the column (`percentile =
//! 99`: a second pass over the values held in memory). A percentile threshold is itself
//! computed from the data and is visible in the output as its largest (smallest) value; the
//! report names it.
//!
//! Risk: the extremes, which single people out (the one 104-year-old, the top spender), merge
//! into one value. Utility: totals and means of the column shrink by the mass cut off; the
//! report gives the mean absolute change.

use super::{Effect, Value, format_number};

/// Which tail is coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Values above the threshold (text: at or above it, so `90` and `91` both read `90+`).
    Top,
    /// Values below the threshold (text: at or below it).
    Bottom,
}

/// Where the threshold comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    At(f64),
    /// Percentile in (0, 100) of the column's numbers (nearest rank).
    Percentile(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Coding {
    pub tail: Tail,
    pub threshold: Threshold,
    /// The replacement for text values; `None` for the default `<at>+` / `<=<at>`.
    pub label: Option<String>,
}

/// A coding whose threshold is known.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedCoding<'a> {
    coding: &'a Coding,
    at: Option<f64>,
}

impl Coding {
    pub fn is_fixed(&self) -> bool {
        matches!(self.threshold, Threshold::At(_))
    }

    pub fn name(&self) -> &'static str {
        match self.tail {
            Tail::Top => "top-coding",
            Tail::Bottom => "bottom-coding",
        }
    }

    pub fn describe(&self) -> String {
        let side = match self.tail {
            Tail::Top => "above",
            Tail::Bottom => "below",
        };
        let at = match self.threshold {
            Threshold::At(x) => format_number(x, 6),
            Threshold::Percentile(p) => format!("the {} th percentile", format_number(p, 3)),
        };
        match &self.label {
            Some(l) => format!("values {side} {at} capped (text: \"{l}\")"),
            None => format!("values {side} {at} capped"),
        }
    }

    /// Fixes the threshold: a percentile is read off `column` (nearest rank over its numbers;
    /// no numbers, no threshold, nothing changes).
    pub fn resolve(&self, column: &[Value]) -> FixedCoding<'_> {
        let at = match self.threshold {
            Threshold::At(x) => Some(x),
            Threshold::Percentile(p) => percentile(column, p),
        };
        FixedCoding { coding: self, at }
    }
}

/// The nearest-rank percentile `p` (0 < p < 100) of the numbers in `column`.
pub fn percentile(column: &[Value], p: f64) -> Option<f64> {
    let mut xs: Vec<f64> = column.iter().filter_map(Value::number).collect();
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * xs.len() as f64).ceil() as usize;
    Some(xs[rank.clamp(1, xs.len()) - 1])
}

impl FixedCoding<'_> {
    pub fn threshold(&self) -> Option<f64> {
        self.at
    }

    pub fn apply(&self, v: &mut Value) -> Effect {
        let Some(at) = self.at else {
            return Effect {
                seen: !v.is_null(),
                ..Effect::default()
            };
        };
        let Some(x) = v.number() else {
            return Effect {
                seen: !v.is_null(),
                ..Effect::default()
            };
        };
        let top = self.coding.tail == Tail::Top;
        if let Value::Text(_) = v {
            let hit = if top { x >= at } else { x <= at };
            if !hit {
                return Effect {
                    seen: true,
                    abs_change: Some(0.0),
                    ..Effect::default()
                };
            }
            let label = self.coding.label.clone().unwrap_or_else(|| {
                let a = format_number(at, 6);
                if top {
                    format!("{a}+")
                } else {
                    format!("<={a}")
                }
            });
            *v = Value::Text(label);
            return Effect {
                seen: true,
                changed: true,
                suppressed: false,
                abs_change: Some((x - at).abs()),
            };
        }
        let hit = if top { x > at } else { x < at };
        if !hit {
            return Effect {
                seen: true,
                abs_change: Some(0.0),
                ..Effect::default()
            };
        }
        let before = v.clone();
        *v = v.with_number(at, 6);
        let after = v.number().unwrap_or(at);
        Effect {
            seen: true,
            changed: *v != before,
            suppressed: false,
            abs_change: Some((x - after).abs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn top(at: f64) -> Coding {
        Coding {
            tail: Tail::Top,
            threshold: Threshold::At(at),
            label: None,
        }
    }

    #[test]
    fn ages_above_90_read_90_plus() {
        let c = top(90.0);
        let f = c.resolve(&[]);
        for (age, out) in [("89", "89"), ("90", "90+"), ("104", "90+"), ("n/a", "n/a")] {
            let mut v = Value::Text(age.into());
            f.apply(&mut v);
            assert_eq!(v, Value::Text(out.into()), "{age}");
        }
        let b = Coding {
            tail: Tail::Bottom,
            threshold: Threshold::At(18.0),
            label: Some("under 19".into()),
        };
        let mut v = Value::Text("16".into());
        b.resolve(&[]).apply(&mut v);
        assert_eq!(v, Value::Text("under 19".into()));
    }

    #[test]
    fn revenue_is_capped_at_its_99th_percentile() {
        let col: Vec<Value> = (1..=1000).map(|i| Value::Float(f64::from(i))).collect();
        let c = Coding {
            tail: Tail::Top,
            threshold: Threshold::Percentile(99.0),
            label: None,
        };
        let f = c.resolve(&col);
        assert_eq!(f.threshold(), Some(990.0));
        let mut out = col.clone();
        let changed = out
            .iter_mut()
            .map(|v| f.apply(v))
            .filter(|e| e.changed)
            .count();
        assert_eq!(changed, 10);
        assert_eq!(
            out.iter().filter_map(Value::number).fold(0.0, f64::max),
            990.0
        );
    }

    proptest! {
        /// After top-coding at t no number exceeds t; after bottom-coding none is below;
        /// values inside the bounds are untouched.
        #[test]
        fn coding_bounds(xs in proptest::collection::vec(-1_000i64..1_000, 1..200), t in -500i64..500) {
            let at = t as f64;
            for tail in [Tail::Top, Tail::Bottom] {
                let c = Coding { tail, threshold: Threshold::At(at), label: None };
                let f = c.resolve(&[]);
                for x in &xs {
                    let mut v = Value::Int(*x);
                    f.apply(&mut v);
                    let y = v.number().unwrap();
                    match tail {
                        Tail::Top => prop_assert!(y <= at),
                        Tail::Bottom => prop_assert!(y >= at),
                    }
                    let inside = match tail { Tail::Top => *x as f64 <= at, Tail::Bottom => *x as f64 >= at };
                    if inside { prop_assert_eq!(y, *x as f64); } else { prop_assert_eq!(y, at); }
                }
            }
        }
    }
}
