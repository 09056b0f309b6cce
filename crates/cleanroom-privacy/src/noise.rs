//! Noise for integer aggregates: OpenDP's discrete Laplace (geometric) mechanism.
//!
//! Why the guarantee holds: an aggregate whose value changes by at most Δ when one person's
//! data is added or removed (its sensitivity) is released as `value + Z`, where `Z` follows the
//! discrete Laplace distribution with scale `b`: `P(Z = z) ∝ exp(-|z| / b)`. For neighbouring
//! inputs the probability of any output changes by at most a factor `exp(Δ / b)`, which is
//! `ε`-DP with `ε = Δ / b` (GRS12; CKS20 for exact sampling). OpenDP samples `Z` exactly over
//! the integers from OS randomness, so there is no floating-point porosity, and its privacy map
//! computes `ε` from `Δ` and `b`; we choose `b` and then *ask the map*, rather than trusting our
//! own arithmetic.

use opendp::core::Measurement;
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_laplace;
use opendp::measures::MaxDivergence;
use opendp::metrics::L1Distance;

use crate::PrivacyError;
use crate::budget::{Epsilon, PrivacyCost};

/// Discrete Laplace noise added independently to every element of a vector whose L1
/// sensitivity (the total change one person can cause over all its elements) is bounded.
type IntLaplace =
    Measurement<VectorDomain<AtomDomain<i64>>, L1Distance<i64>, MaxDivergence, Vec<i64>>;

/// How much one person may contribute to an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContributionBounds {
    /// Rows kept per privacy unit (after joins); extra rows are dropped before aggregating.
    pub max_rows_per_unit: u32,
    /// Values are clamped into `[lower, upper]` before summing.
    pub lower: i64,
    pub upper: i64,
}

impl ContributionBounds {
    pub fn new(max_rows_per_unit: u32, lower: i64, upper: i64) -> Result<Self, PrivacyError> {
        if max_rows_per_unit == 0 {
            return Err(PrivacyError::InvalidParameter(
                "max rows per privacy unit must be at least 1".into(),
            ));
        }
        if lower > upper {
            return Err(PrivacyError::InvalidParameter(format!(
                "lower bound {lower} is above upper bound {upper}"
            )));
        }
        Ok(ContributionBounds {
            max_rows_per_unit,
            lower,
            upper,
        })
    }

    /// Sensitivity of a COUNT of rows: each person adds at most `max_rows_per_unit`.
    pub fn count_sensitivity(&self) -> i64 {
        i64::from(self.max_rows_per_unit)
    }

    /// Sensitivity of a SUM of clamped values under adding or removing one person.
    pub fn sum_sensitivity(&self) -> Result<i64, PrivacyError> {
        let magnitude = self
            .lower
            .checked_abs()
            .and_then(|l| self.upper.checked_abs().map(|u| l.max(u)))
            .ok_or_else(|| PrivacyError::Overflow("value bounds too wide".into()))?;
        magnitude
            .checked_mul(i64::from(self.max_rows_per_unit))
            .ok_or_else(|| {
                PrivacyError::Overflow(
                    "value bounds times rows per unit exceed the 64-bit range".into(),
                )
            })
    }

    /// Clamps one value into the bounds.
    pub fn clamp(&self, v: i64) -> i64 {
        v.clamp(self.lower, self.upper)
    }
}

/// A calibrated discrete-Laplace mechanism for one integer aggregate over any number of groups:
/// `sensitivity` is the L1 sensitivity of the whole vector of per-group values.
///
/// It holds its parameters only (OpenDP's measurements are not `Send`); the measurement is
/// rebuilt from them, identically, for every map and every release.
#[derive(Clone)]
pub struct IntegerNoise {
    scale: f64,
    sensitivity: i64,
    cost: PrivacyCost,
}

impl std::fmt::Debug for IntegerNoise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegerNoise")
            .field("scale", &self.scale())
            .field("sensitivity", &self.sensitivity)
            .field("epsilon", &self.cost.epsilon.as_f64())
            .finish()
    }
}

impl IntegerNoise {
    /// The least noise that keeps an aggregate of sensitivity `sensitivity` within `epsilon`.
    pub fn calibrate(epsilon: Epsilon, sensitivity: i64) -> Result<Self, PrivacyError> {
        if sensitivity <= 0 {
            return Err(PrivacyError::InvalidParameter(
                "sensitivity must be positive".into(),
            ));
        }
        let target = epsilon.as_f64();
        if target <= 0.0 {
            return Err(PrivacyError::InvalidParameter(
                "epsilon must be above zero".into(),
            ));
        }
        let mut scale = sensitivity as f64 / target;
        // The map rounds against us; nudge the scale up until it agrees.
        for _ in 0..64 {
            let m = make(scale)?;
            let eps = m.map(&sensitivity)?;
            if eps <= target {
                return Ok(IntegerNoise {
                    scale,
                    sensitivity,
                    cost: PrivacyCost {
                        epsilon: Epsilon::cost(eps)?,
                        delta: crate::budget::Delta::ZERO,
                    },
                });
            }
            scale = scale.next_up();
        }
        Err(PrivacyError::Mechanism(
            "could not calibrate the noise scale".into(),
        ))
    }

    /// A mechanism with an explicit scale, for tests and reports; its cost comes from the map.
    pub fn with_scale(scale: f64, sensitivity: i64) -> Result<Self, PrivacyError> {
        let m = make(scale)?;
        let eps = m.map(&sensitivity)?;
        Ok(IntegerNoise {
            scale,
            sensitivity,
            cost: PrivacyCost {
                epsilon: Epsilon::cost(eps)?,
                delta: crate::budget::Delta::ZERO,
            },
        })
    }

    /// The noise scale `b` (standard deviation ≈ `b·√2`).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    fn measurement(&self) -> Result<IntLaplace, PrivacyError> {
        make(self.scale)
    }

    pub fn sensitivity(&self) -> i64 {
        self.sensitivity
    }

    /// What one release costs.
    pub fn cost(&self) -> PrivacyCost {
        self.cost
    }

    /// What a release costs a person whose L1 contribution is `sensitivity` (at most the
    /// calibrated one), asked of the map.
    pub fn cost_for(&self, sensitivity: i64) -> Result<PrivacyCost, PrivacyError> {
        if sensitivity > self.sensitivity || sensitivity < 0 {
            return Err(PrivacyError::InvalidParameter(
                "sensitivity exceeds the one the noise was calibrated for".into(),
            ));
        }
        Ok(PrivacyCost {
            epsilon: Epsilon::cost(self.measurement()?.map(&sensitivity)?)?,
            delta: crate::budget::Delta::ZERO,
        })
    }

    /// Releases `exact + Z`. Every call draws fresh noise and must be paid for.
    pub fn release(&self, exact: i64) -> Result<i64, PrivacyError> {
        let out = self.measurement()?.invoke(&vec![exact])?;
        out.into_iter()
            .next()
            .ok_or_else(|| PrivacyError::Mechanism("empty release".into()))
    }

    /// Releases every element plus independent noise: one release of the whole vector, paid
    /// for once (the calibration is for the vector's L1 sensitivity).
    pub fn release_all(&self, exact: &[i64]) -> Result<Vec<i64>, PrivacyError> {
        Ok(self.measurement()?.invoke(&exact.to_vec())?)
    }
}

fn make(scale: f64) -> Result<IntLaplace, PrivacyError> {
    Ok(make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L1Distance::<i64>::default(),
        scale,
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_matches_epsilon_over_sensitivity() {
        let n = IntegerNoise::calibrate(Epsilon::grant(0.5).unwrap(), 1).unwrap();
        assert!((n.scale() - 2.0).abs() < 1e-6, "{n:?}");
        assert!(n.cost().epsilon <= Epsilon::cost(0.5).unwrap());
        let s = IntegerNoise::calibrate(Epsilon::grant(1.0).unwrap(), 200).unwrap();
        assert!((s.scale() - 200.0).abs() < 1e-3, "{s:?}");
        assert!(IntegerNoise::calibrate(Epsilon::grant(1.0).unwrap(), 0).is_err());
        assert!(IntegerNoise::calibrate(Epsilon::grant(0.0).unwrap(), 1).is_err());
    }

    #[test]
    fn bounds_give_sensitivities_and_refuse_overflow() {
        let b = ContributionBounds::new(3, -5, 100).unwrap();
        assert_eq!(b.count_sensitivity(), 3);
        assert_eq!(b.sum_sensitivity().unwrap(), 300);
        assert_eq!(b.clamp(1000), 100);
        assert_eq!(b.clamp(-9), -5);
        assert!(
            ContributionBounds::new(2, i64::MIN, 0)
                .unwrap()
                .sum_sensitivity()
                .is_err()
        );
        assert!(
            ContributionBounds::new(2, 0, i64::MAX)
                .unwrap()
                .sum_sensitivity()
                .is_err()
        );
        assert!(ContributionBounds::new(0, 0, 1).is_err());
        assert!(ContributionBounds::new(1, 2, 1).is_err());
    }

    #[test]
    fn noise_is_centred_with_the_right_spread() {
        // Discrete Laplace with scale b = 2: mean 0, variance 2·e^(-1/b)/(1-e^(-1/b))² ≈ 7.83.
        let n = IntegerNoise::calibrate(Epsilon::grant(0.5).unwrap(), 1).unwrap();
        let runs = 20_000;
        let xs: Vec<f64> = (0..runs)
            .map(|_| (n.release(1000).unwrap() - 1000) as f64)
            .collect();
        let mean = xs.iter().sum::<f64>() / runs as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / runs as f64;
        let q = (-0.5f64).exp();
        let want = 2.0 * q / (1.0 - q).powi(2);
        // Standard error of the mean ≈ sqrt(7.83/20000) ≈ 0.02: 0.15 is > 7 standard errors.
        assert!(mean.abs() < 0.15, "mean {mean}");
        assert!((var - want).abs() / want < 0.1, "variance {var} vs {want}");
    }
}
