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

/// A calibrated noisy-count-and-threshold release over groups numbered by `u64` keys.
#[derive(Clone)]
pub struct GroupSelection {
    measurement: Selection,
    scale: f64,
    threshold: i64,
    d_in: (u32, i64, i64),
    cost: PrivacyCost,
}

impl std::fmt::Debug for GroupSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSelection")
            .field("scale", &self.scale)
            .field("threshold", &self.threshold)
            .field("epsilon", &self.cost.epsilon.as_f64())
            .field("delta", &self.cost.delta.as_f64())
            .finish()
    }
}

impl GroupSelection {
    /// Calibrates for: each person in at most `max_groups` groups, adding at most
    /// `max_rows_per_group` to any one group's count; spend `epsilon` and at most `delta`;
    /// never show a group whose noisy count is below `min_group_size`.
    pub fn calibrate(
        epsilon: Epsilon,
        delta: f64,
        max_groups: u32,
        max_rows_per_group: u32,
        min_group_size: i64,
    ) -> Result<Self, PrivacyError> {
        if max_groups == 0 || max_rows_per_group == 0 {
            return Err(PrivacyError::InvalidParameter(
                "contribution bounds must be at least 1".into(),
            ));
        }
        if !(delta > 0.0 && delta < 1e-3) {
            return Err(PrivacyError::InvalidParameter(format!(
                "group selection needs 0 < delta < 0.001, got {delta}"
            )));
        }
        let linf = i64::from(max_rows_per_group);
        let l1 = linf
            .checked_mul(i64::from(max_groups))
            .ok_or_else(|| PrivacyError::Overflow("contribution bounds".into()))?;
        let d_in = (max_groups, l1, linf);
        let eps = epsilon.as_f64();
        if eps <= 0.0 {
            return Err(PrivacyError::InvalidParameter(
                "epsilon must be above zero".into(),
            ));
        }
        let mut scale = l1 as f64 / eps;
        // Exponential search then bisection for the least threshold meeting delta.
        let mut threshold = min_group_size.max(linf).max(1);
        for _ in 0..64 {
            let (e, d) = make(scale, threshold)?.map(&d_in)?;
            if e > eps {
                scale = scale.next_up();
                continue;
            }
            if d <= delta {
                break;
            }
            threshold = threshold
                .checked_mul(2)
                .ok_or_else(|| PrivacyError::Overflow("threshold".into()))?;
        }
        let (mut lo, mut hi) = (min_group_size.max(linf).max(1), threshold);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (_, d) = make(scale, mid)?.map(&d_in)?;
            if d <= delta {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let m = make(scale, hi)?;
        let (e, d) = m.map(&d_in)?;
        if e > eps || d > delta {
            return Err(PrivacyError::Mechanism(
                "could not calibrate group selection".into(),
            ));
        }
        Ok(GroupSelection {
            measurement: m,
            scale,
            threshold: hi,
            d_in,
            cost: PrivacyCost {
                epsilon: Epsilon::cost(e)?,
                delta: Delta::cost(d)?,
            },
        })
    }

    pub fn threshold(&self) -> i64 {
        self.threshold
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn cost(&self) -> PrivacyCost {
        self.cost
    }

    /// The bounds this selection was calibrated for: (groups, total rows, rows per group).
    pub fn contribution_bounds(&self) -> (u32, i64, i64) {
        self.d_in
    }

    /// Noisy counts of the groups that clear the threshold; the others are absent.
    pub fn release(&self, exact: &HashMap<u64, i64>) -> Result<HashMap<u64, i64>, PrivacyError> {
        Ok(self.measurement.invoke(exact)?)
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

    #[test]
    fn threshold_respects_the_minimum_and_the_delta() {
        let g = GroupSelection::calibrate(Epsilon::grant(1.0).unwrap(), 1e-8, 1, 1, 50).unwrap();
        assert!(g.threshold() >= 50, "{g:?}");
        assert!(g.cost().delta.as_f64() <= 1e-8);
        assert!(g.cost().epsilon.as_f64() <= 1.0);
        // A tiny minimum still gets a threshold high enough for delta: about b·ln(1/δ).
        let g = GroupSelection::calibrate(Epsilon::grant(1.0).unwrap(), 1e-8, 1, 1, 1).unwrap();
        assert!((15..=25).contains(&g.threshold()), "{g:?}");
        // More groups per person means more noise and a higher threshold.
        let g4 = GroupSelection::calibrate(Epsilon::grant(1.0).unwrap(), 1e-8, 4, 1, 1).unwrap();
        assert!(
            g4.scale() > g.scale() && g4.threshold() > g.threshold(),
            "{g4:?}"
        );
        assert!(GroupSelection::calibrate(Epsilon::grant(1.0).unwrap(), 0.0, 1, 1, 1).is_err());
    }

    #[test]
    fn big_groups_survive_small_groups_vanish() {
        let g = GroupSelection::calibrate(Epsilon::grant(1.0).unwrap(), 1e-8, 1, 1, 20).unwrap();
        let exact = HashMap::from([(1u64, 10_000i64), (2, 1), (3, 0)]);
        for _ in 0..200 {
            let out = g.release(&exact).unwrap();
            assert!(out.contains_key(&1));
            assert!(!out.contains_key(&2) && !out.contains_key(&3), "{out:?}");
        }
    }
}
