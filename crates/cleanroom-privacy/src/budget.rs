//! Privacy budgets and their ledger.
//!
//! Amounts are kept as integers (epsilon in units of 10⁻⁹, delta in units of 10⁻¹⁸) so that
//! adding up many small costs never drifts. Rounding is always against the analyst: a cost is
//! rounded up, a grant is rounded down, and every addition is checked for overflow.

use crate::PrivacyError;

const EPS_UNIT: f64 = 1e9;
const DELTA_UNIT: f64 = 1e18;
/// Largest epsilon the room accepts for a grant or a single release.
pub const MAX_EPSILON: f64 = 100.0;

/// An amount of epsilon (pure or the epsilon part of approximate DP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epsilon(u64);

/// An amount of delta, in [0, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Delta(u64);

fn check_finite(what: &str, v: f64) -> Result<(), PrivacyError> {
    if !v.is_finite() || v < 0.0 {
        return Err(PrivacyError::InvalidParameter(format!(
            "{what} must be a finite number ≥ 0, got {v}"
        )));
    }
    Ok(())
}

impl Epsilon {
    /// An amount to grant or allow: rounded down.
    pub fn grant(eps: f64) -> Result<Self, PrivacyError> {
        check_finite("epsilon", eps)?;
        if eps > MAX_EPSILON {
            return Err(PrivacyError::InvalidParameter(format!(
                "epsilon {eps} is above the maximum of {MAX_EPSILON}"
            )));
        }
        Ok(Epsilon((eps * EPS_UNIT).floor() as u64))
    }

    /// An amount spent: rounded up, so the ledger never under-counts.
    pub fn cost(eps: f64) -> Result<Self, PrivacyError> {
        check_finite("epsilon", eps)?;
        if eps > MAX_EPSILON {
            return Err(PrivacyError::InvalidParameter(format!(
                "a release may cost at most epsilon {MAX_EPSILON}, this one costs {eps}"
            )));
        }
        Ok(Epsilon((eps * EPS_UNIT).ceil() as u64))
    }

    pub fn from_units(units: u64) -> Self {
        Epsilon(units)
    }

    pub fn units(self) -> u64 {
        self.0
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / EPS_UNIT
    }
}

impl Delta {
    pub const ZERO: Delta = Delta(0);

    pub fn grant(delta: f64) -> Result<Self, PrivacyError> {
        Self::check(delta)?;
        Ok(Delta((delta * DELTA_UNIT).floor() as u64))
    }

    pub fn cost(delta: f64) -> Result<Self, PrivacyError> {
        Self::check(delta)?;
        Ok(Delta((delta * DELTA_UNIT).ceil() as u64))
    }

    fn check(delta: f64) -> Result<(), PrivacyError> {
        check_finite("delta", delta)?;
        if delta >= 1e-3 {
            return Err(PrivacyError::InvalidParameter(format!(
                "delta must be below 0.001 (it bounds the chance of a catastrophic leak), got {delta}"
            )));
        }
        Ok(())
    }

    pub fn from_units(units: u64) -> Self {
        Delta(units)
    }

    pub fn units(self) -> u64 {
        self.0
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / DELTA_UNIT
    }
}

/// What a release costs, or what is granted or left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PrivacyCost {
    pub epsilon: Epsilon,
    pub delta: Delta,
}

impl PrivacyCost {
    pub const ZERO: PrivacyCost = PrivacyCost {
        epsilon: Epsilon(0),
        delta: Delta(0),
    };

    /// The cost of a release: both parts rounded up.
    pub fn of(epsilon: f64, delta: f64) -> Result<Self, PrivacyError> {
        Ok(PrivacyCost {
            epsilon: Epsilon::cost(epsilon)?,
            delta: Delta::cost(delta)?,
        })
    }

    /// An amount granted: both parts rounded down.
    pub fn granted(epsilon: f64, delta: f64) -> Result<Self, PrivacyError> {
        Ok(PrivacyCost {
            epsilon: Epsilon::grant(epsilon)?,
            delta: Delta::grant(delta)?,
        })
    }

    /// Sequential composition: the sum of both parts, checked.
    pub fn plus(self, other: PrivacyCost) -> Result<PrivacyCost, PrivacyError> {
        let overflow = || PrivacyError::Overflow("privacy cost addition".into());
        Ok(PrivacyCost {
            epsilon: Epsilon(
                self.epsilon
                    .0
                    .checked_add(other.epsilon.0)
                    .ok_or_else(overflow)?,
            ),
            delta: Delta(
                self.delta
                    .0
                    .checked_add(other.delta.0)
                    .ok_or_else(overflow)?,
            ),
        })
    }

    fn fits_within(self, limit: PrivacyCost) -> bool {
        self.epsilon <= limit.epsilon && self.delta <= limit.delta
    }
}

/// A data owner's grant for one collaboration: the total it may spend and the most one query
/// may spend. There is no automatic refresh: more budget is an explicit new grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    total: PrivacyCost,
    per_query: PrivacyCost,
}

impl Budget {
    pub fn new(total: PrivacyCost, per_query: PrivacyCost) -> Result<Self, PrivacyError> {
        if !per_query.fits_within(total) {
            return Err(PrivacyError::InvalidParameter(
                "the per-query cap cannot exceed the total budget".into(),
            ));
        }
        if per_query.epsilon.0 == 0 {
            return Err(PrivacyError::InvalidParameter(
                "the per-query epsilon cap must be above zero".into(),
            ));
        }
        Ok(Budget { total, per_query })
    }

    pub fn total(&self) -> PrivacyCost {
        self.total
    }

    pub fn per_query(&self) -> PrivacyCost {
        self.per_query
    }
}

/// What has been spent against a budget. Pure value: the service stores it and replaces it in
/// the same transaction that releases a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ledger {
    budget: Budget,
    spent: PrivacyCost,
}

impl Ledger {
    pub fn new(budget: Budget) -> Self {
        Ledger {
            budget,
            spent: PrivacyCost::ZERO,
        }
    }

    /// Rebuilds a ledger from stored amounts; refuses one that is already overspent.
    pub fn restore(budget: Budget, spent: PrivacyCost) -> Result<Self, PrivacyError> {
        if !spent.fits_within(budget.total) {
            return Err(PrivacyError::InvalidParameter(
                "stored spending exceeds the budget".into(),
            ));
        }
        Ok(Ledger { budget, spent })
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    pub fn spent(&self) -> PrivacyCost {
        self.spent
    }

    pub fn remaining(&self) -> PrivacyCost {
        PrivacyCost {
            epsilon: Epsilon(self.budget.total.epsilon.0 - self.spent.epsilon.0),
            delta: Delta(self.budget.total.delta.0 - self.spent.delta.0),
        }
    }

    /// The ledger after paying `cost`, or why it cannot be paid.
    pub fn charge(&self, cost: PrivacyCost) -> Result<Ledger, PrivacyError> {
        if !cost.fits_within(self.budget.per_query) {
            return Err(PrivacyError::PerQueryCap {
                cost_epsilon: cost.epsilon.as_f64(),
                cost_delta: cost.delta.as_f64(),
                cap_epsilon: self.budget.per_query.epsilon.as_f64(),
                cap_delta: self.budget.per_query.delta.as_f64(),
            });
        }
        let after = self.spent.plus(cost)?;
        if !after.fits_within(self.budget.total) {
            let left = self.remaining();
            return Err(PrivacyError::BudgetExhausted {
                cost_epsilon: cost.epsilon.as_f64(),
                cost_delta: cost.delta.as_f64(),
                left_epsilon: left.epsilon.as_f64(),
                left_delta: left.delta.as_f64(),
            });
        }
        Ok(Ledger {
            budget: self.budget,
            spent: after,
        })
    }

    /// The ledger after the owner grants `more` (an explicit, audited act of the owner).
    pub fn grant(&self, more: PrivacyCost) -> Result<Ledger, PrivacyError> {
        Ok(Ledger {
            budget: Budget {
                total: self.budget.total.plus(more)?,
                per_query: self.budget.per_query,
            },
            spent: self.spent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total: f64, cap: f64) -> Budget {
        Budget::new(
            PrivacyCost::granted(total, 1e-6).unwrap(),
            PrivacyCost::granted(cap, 1e-7).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn rounding_is_against_the_analyst() {
        let tiny = 1.0000000001;
        assert!(Epsilon::cost(tiny).unwrap() > Epsilon::grant(tiny).unwrap());
        assert_eq!(Epsilon::cost(0.5).unwrap(), Epsilon::grant(0.5).unwrap());
        assert!(Epsilon::grant(f64::NAN).is_err());
        assert!(Epsilon::grant(-1.0).is_err());
        assert!(Epsilon::cost(f64::INFINITY).is_err());
        assert!(Delta::grant(0.5).is_err());
    }

    #[test]
    fn many_small_costs_cannot_sneak_past_the_budget() {
        // 0.1 is not exact in binary; ten costs of 0.1 must still exhaust a budget of 1.0 and an
        // eleventh must be refused.
        let mut l = Ledger::new(budget(1.0, 0.5));
        let c = PrivacyCost::of(0.1, 0.0).unwrap();
        for _ in 0..10 {
            l = l.charge(c).unwrap();
        }
        let e = l.charge(c).unwrap_err();
        assert!(matches!(e, PrivacyError::BudgetExhausted { .. }), "{e}");
        assert!(
            e.to_string().contains("budget's epsilon is exhausted"),
            "{e}"
        );
        assert_eq!(l.remaining().epsilon.units(), 0);
    }

    #[test]
    fn a_refusal_names_delta_when_delta_ran_out() {
        let b = Budget::new(
            PrivacyCost::granted(5.0, 1e-6).unwrap(),
            PrivacyCost::granted(1.0, 1e-6).unwrap(),
        )
        .unwrap();
        let mut l = Ledger::new(b);
        let c = PrivacyCost::of(0.1, 4e-7).unwrap();
        l = l.charge(c).unwrap();
        l = l.charge(c).unwrap();
        let e = l.charge(c).unwrap_err();
        assert!(e.to_string().contains("budget's delta is exhausted"), "{e}");
    }

    #[test]
    fn per_query_cap_and_delta_are_enforced_and_grants_are_explicit() {
        let l = Ledger::new(budget(2.0, 0.5));
        let e = l.charge(PrivacyCost::of(0.6, 0.0).unwrap()).unwrap_err();
        assert!(matches!(e, PrivacyError::PerQueryCap { .. }), "{e}");
        assert!(e.to_string().contains("at most epsilon"), "{e}");
        let e = l.charge(PrivacyCost::of(0.1, 2e-7).unwrap()).unwrap_err();
        assert!(matches!(e, PrivacyError::PerQueryCap { .. }), "{e}");
        assert!(e.to_string().contains("at most delta"), "{e}");
        let mut l = l;
        for _ in 0..4 {
            l = l.charge(PrivacyCost::of(0.5, 0.0).unwrap()).unwrap();
        }
        assert!(l.charge(PrivacyCost::of(0.01, 0.0).unwrap()).is_err());
        let l = l.grant(PrivacyCost::granted(1.0, 0.0).unwrap()).unwrap();
        assert!(l.charge(PrivacyCost::of(0.5, 0.0).unwrap()).is_ok());
        assert!(
            Budget::new(
                PrivacyCost::granted(1.0, 0.0).unwrap(),
                PrivacyCost::granted(2.0, 0.0).unwrap()
            )
            .is_err()
        );
        assert!(Ledger::restore(budget(1.0, 0.5), PrivacyCost::of(1.5, 0.0).unwrap()).is_err());
    }
}
