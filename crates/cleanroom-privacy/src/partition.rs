//! Private group selection: which groups appear in a result is itself a release.
//!
//! A fixed rule "show groups with at least k people" leaks: a crafted upload with one target in
//! its own group reveals the target by the group's presence or absence. Instead every group's
//! count gets discrete Laplace noise and only groups whose *noisy* count clears a threshold τ are
//! shown (Rogers 2023, as implemented by OpenDP's `make_laplace_threshold`). A group held up by
//! one person appears with probability at most δ; the threshold is chosen as the smallest value
//! at or above the owners' minimum group size k that achieves the requested δ.

use std::collections::HashMap;

use opendp::core::Measurement;
use opendp::domains::{AtomDomain, MapDomain};
use opendp::measurements::make_laplace_threshold;
use opendp::measures::{Approximate, MaxDivergence};
use opendp::metrics::{AbsoluteDistance, L0PInfDistance};

use crate::PrivacyError;
use crate::budget::{Delta, Epsilon, PrivacyCost};

type Selection = Measurement<
    MapDomain<AtomDomain<u64>, AtomDomain<i64>>,
    L0PInfDistance<1, AbsoluteDistance<i64>>,
    Approximate<MaxDivergence>,
    HashMap<u64, i64>,
>;

/// How much one person can change the per-group counts a selection sees: the number of groups
/// it touches (`l0`), the total change over all groups (`l1`) and the change in any one group
/// (`linf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectionBounds {
    l0: u32,
    l1: i64,
    linf: i64,
}

impl SelectionBounds {
    /// Bounds of any shape, validated: every bound at least 1, no group changing by more than
    /// the total (`linf ≤ l1`), and the total no more than every touched group changing by
    /// the most (`l1 ≤ l0 × linf`). The only way to build bounds besides [`Self::rows`].
    pub fn new(l0: u32, l1: i64, linf: i64) -> Result<Self, PrivacyError> {
        if l0 == 0 || l1 <= 0 || linf <= 0 {
            return Err(PrivacyError::InvalidParameter(
                "contribution bounds must be at least 1".into(),
            ));
        }
        if linf > l1 || l1 > i64::from(l0).saturating_mul(linf) {
            return Err(PrivacyError::InvalidParameter(format!(
                "inconsistent contribution bounds: l0 {l0}, l1 {l1}, linf {linf}"
            )));
        }
        Ok(SelectionBounds { l0, l1, linf })
    }

    /// Groups one person can touch.
    pub fn l0(self) -> u32 {
        self.l0
    }

    /// Total change one person can make over all groups.
    pub fn l1(self) -> i64 {
        self.l1
    }

    /// Change one person can make in any one group.
    pub fn linf(self) -> i64 {
        self.linf
    }

    /// A person who changes at most `rows` rows, each in one group and each moving that group's
    /// count by at most one: `(rows, rows, rows)`.
    pub fn rows(rows: i64) -> Result<Self, PrivacyError> {
        if rows <= 0 {
            return Err(PrivacyError::InvalidParameter(
                "contribution bounds must be at least 1".into(),
            ));
        }
        let l0 =
            u32::try_from(rows).map_err(|_| PrivacyError::Overflow("rows per person".into()))?;
        Ok(SelectionBounds {
            l0,
            l1: rows,
            linf: rows,
        })
    }

    fn d_in(self) -> (u32, i64, i64) {
        (self.l0, self.l1, self.linf)
    }
}

/// A calibrated noisy-count-and-threshold release over groups numbered by `u64` keys, combined
/// with the owners' exact minimum group size.
///
/// The owners' rule "every released group stands for at least k people" is applied exactly (a
/// group whose exact count is below `k` is never shown). An exact rule alone is not
/// differentially private: a group at exactly `k` appears, at `k − 1` it cannot. The noisy
/// threshold is therefore raised by `k − 1` above the threshold τ₀ that δ alone requires, so
/// that a group within one person of the exact cut-off clears the noisy threshold with
/// probability at most the tail beyond τ₀, which OpenDP's map bounds by δ/2 (over every group
/// one person can touch). The cost charged is the map's (ε, δ) at the final threshold plus
/// that δ/2: never less than the true loss.
///
/// It holds its parameters only (OpenDP's measurements are not `Send`); the measurement is
/// rebuilt from them for every map and every release.
#[derive(Clone)]
pub struct GroupSelection {
    scale: f64,
    threshold: i64,
    min_group_size: i64,
    bounds: SelectionBounds,
    exact_cutoff_delta: f64,
    cost: PrivacyCost,
}

impl std::fmt::Debug for GroupSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSelection")
            .field("scale", &self.scale)
            .field("threshold", &self.threshold)
            .field("min_group_size", &self.min_group_size)
            .field("epsilon", &self.cost.epsilon.as_f64())
            .field("delta", &self.cost.delta.as_f64())
            .finish()
    }
}

impl GroupSelection {
    /// Calibrates for a person bounded by `bounds`; spends at most `epsilon` and `delta`; never
    /// shows a group whose exact count is below `min_group_size`.
    pub fn calibrate(
        epsilon: Epsilon,
        delta: f64,
        bounds: SelectionBounds,
        min_group_size: i64,
    ) -> Result<Self, PrivacyError> {
        if bounds.l0 == 0 || bounds.l1 <= 0 || bounds.linf <= 0 {
            return Err(PrivacyError::InvalidParameter(
                "contribution bounds must be at least 1".into(),
            ));
        }
        if !(delta > 0.0 && delta < 1e-3) {
            return Err(PrivacyError::InvalidParameter(format!(
                "group selection needs 0 < delta < 0.001, got {delta}"
            )));
        }
        let min_group_size = min_group_size.max(1);
        let eps = epsilon.as_f64();
        if eps <= 0.0 {
            return Err(PrivacyError::InvalidParameter(
                "epsilon must be above zero".into(),
            ));
        }
        let d_in = bounds.d_in();
        let half = delta / 2.0;
        // The scale: the least that meets epsilon (the map rounds against us: nudge upwards).
        let mut scale = bounds.l1.min(i64::from(bounds.l0) * bounds.linf) as f64 / eps;
        let probe = bounds.linf.max(1);
        for _ in 0..64 {
            let (e, _) = make(scale, probe)?.map(&d_in)?;
            if e <= eps {
                break;
            }
            scale = scale.next_up();
        }
        // τ₀: the least threshold whose tail one step lower is within δ/2.
        let tail = |t: i64| -> Result<f64, PrivacyError> {
            Ok(make(scale, (t - 1).max(bounds.linf))?.map(&d_in)?.1)
        };
        let mut hi = bounds.linf.max(1) + 1;
        while tail(hi)? > half {
            hi = hi
                .checked_mul(2)
                .ok_or_else(|| PrivacyError::Overflow("threshold".into()))?;
        }
        let mut lo = bounds.linf.max(1) + 1;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if tail(mid)? <= half {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let tau0 = hi;
        let exact_cutoff_delta = tail(tau0)?;
        let threshold = tau0
            .checked_add(min_group_size - 1)
            .ok_or_else(|| PrivacyError::Overflow("threshold".into()))?;
        let m = make(scale, threshold)?;
        let (e, d) = m.map(&d_in)?;
        if e > eps || d + exact_cutoff_delta > delta {
            return Err(PrivacyError::Mechanism(
                "could not calibrate group selection".into(),
            ));
        }
        Ok(GroupSelection {
            scale,
            threshold,
            min_group_size,
            bounds,
            exact_cutoff_delta,
            cost: PrivacyCost {
                epsilon: Epsilon::cost(e)?,
                delta: Delta::cost(d + exact_cutoff_delta)?,
            },
        })
    }

    /// The noisy count a group must reach to be shown.
    pub fn threshold(&self) -> i64 {
        self.threshold
    }

    /// The exact count a group must reach to be shown.
    pub fn min_group_size(&self) -> i64 {
        self.min_group_size
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// What the release costs a person bounded as calibrated.
    pub fn cost(&self) -> PrivacyCost {
        self.cost
    }

    /// What the release costs a person with other (smaller or equal) bounds, from the map.
    pub fn cost_for(&self, bounds: SelectionBounds) -> Result<PrivacyCost, PrivacyError> {
        if bounds.l0 > self.bounds.l0
            || bounds.l1 > self.bounds.l1
            || bounds.linf > self.bounds.linf
        {
            return Err(PrivacyError::InvalidParameter(
                "bounds exceed those the selection was calibrated for".into(),
            ));
        }
        let (e, d) = make(self.scale, self.threshold)?.map(&bounds.d_in())?;
        Ok(PrivacyCost {
            epsilon: Epsilon::cost(e)?,
            delta: Delta::cost(d + self.exact_cutoff_delta)?,
        })
    }

    /// The bounds this selection was calibrated for.
    pub fn contribution_bounds(&self) -> SelectionBounds {
        self.bounds
    }

    /// Noisy counts of the groups that clear both the exact minimum and the noisy threshold;
    /// the others are absent.
    pub fn release(&self, exact: &HashMap<u64, i64>) -> Result<HashMap<u64, i64>, PrivacyError> {
        let eligible: HashMap<u64, i64> = exact
            .iter()
            .filter(|(_, c)| **c >= self.min_group_size)
            .map(|(k, c)| (*k, *c))
            .collect();
        Ok(make(self.scale, self.threshold)?.invoke(&eligible)?)
    }
}

fn make(scale: f64, threshold: i64) -> Result<Selection, PrivacyError> {
    Ok(make_laplace_threshold::<_, _, Approximate<MaxDivergence>>(
        MapDomain::new(AtomDomain::<u64>::default(), AtomDomain::<i64>::default()),
        L0PInfDistance(AbsoluteDistance::<i64>::default()),
        scale,
        threshold,
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one() -> SelectionBounds {
        SelectionBounds::rows(1).unwrap()
    }

    #[test]
    fn inconsistent_bounds_are_refused() {
        assert!(SelectionBounds::new(0, 1, 1).is_err());
        assert!(SelectionBounds::new(2, 1, 2).is_err(), "linf above l1");
        assert!(SelectionBounds::new(2, 5, 2).is_err(), "l1 above l0 x linf");
        let b = SelectionBounds::new(4, 4, 2).unwrap();
        assert_eq!((b.l0(), b.l1(), b.linf()), (4, 4, 2));
    }

    #[test]
    fn threshold_respects_the_minimum_and_the_delta() {
        let g = GroupSelection::calibrate(Epsilon::grant(1.0).unwrap(), 1e-8, one(), 50).unwrap();
        assert!(g.threshold() >= 50 + 15, "{g:?}");
        assert!(g.cost().delta.as_f64() <= 1e-8);
        assert!(g.cost().epsilon.as_f64() <= 1.0);
        // Without a minimum the threshold is about b·ln(1/δ).
        let g1 = GroupSelection::calibrate(Epsilon::grant(1.0).unwrap(), 1e-8, one(), 1).unwrap();
        assert!((15..=25).contains(&g1.threshold()), "{g1:?}");
        assert_eq!(g.threshold() - g1.threshold(), 49);
        // A person touching more rows means more noise and a higher threshold.
        let g4 = GroupSelection::calibrate(
            Epsilon::grant(1.0).unwrap(),
            1e-8,
            SelectionBounds::rows(4).unwrap(),
            1,
        )
        .unwrap();
        assert!(
            g4.scale() > g1.scale() && g4.threshold() > g1.threshold(),
            "{g4:?}"
        );
        assert!(g4.cost_for(one()).unwrap().epsilon < g4.cost().epsilon);
        assert!(g1.cost_for(SelectionBounds::rows(4).unwrap()).is_err());
        assert!(GroupSelection::calibrate(Epsilon::grant(1.0).unwrap(), 0.0, one(), 1).is_err());
    }

    #[test]
    fn big_groups_survive_small_groups_vanish() {
        let g = GroupSelection::calibrate(Epsilon::grant(1.0).unwrap(), 1e-8, one(), 20).unwrap();
        let exact = HashMap::from([(1u64, 10_000i64), (2, 1), (3, 0), (4, 19)]);
        for _ in 0..200 {
            let out = g.release(&exact).unwrap();
            assert!(out.contains_key(&1));
            assert_eq!(out.len(), 1, "{out:?}");
        }
        // The exact minimum holds even when the noisy threshold would let a group through.
        let lenient =
            GroupSelection::calibrate(Epsilon::grant(50.0).unwrap(), 1e-4, one(), 30).unwrap();
        let exact = HashMap::from([(1u64, 29i64), (2, 10_000)]);
        for _ in 0..200 {
            assert!(!lenient.release(&exact).unwrap().contains_key(&1));
        }
    }
}
