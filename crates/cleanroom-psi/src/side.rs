//! What one side may bring to a session of a given protocol: the values of a sum and their
//! bound, a file of matched records, and noise parameters. Checked before any input is read,
//! so a side that brings the wrong things is told so before it spends time blinding.

use crate::wire::{ProtocolKind, Role};

/// What one side brings, as the caller's options say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SideInputs {
    /// A column of values to sum.
    pub values: bool,
    /// The largest value counted (the bound a sum is decrypted within).
    pub max_value: Option<u64>,
    /// Where to write the matched records, or which column identifies them.
    pub matches_output: bool,
    /// Noise for the match counts.
    pub epsilon_count: Option<f64>,
    /// Noise for the sum.
    pub epsilon_sum: Option<f64>,
}

/// A rule of the protocol that a side's inputs break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideRule {
    /// This side holds the values of a sum but brings none.
    ValuesNeeded,
    /// This side holds the values of a sum but gives no bound for them.
    MaxValueNeeded,
    /// Values brought by the side of a sum that does not hold them.
    ValuesOnOtherSide,
    /// Values brought to a protocol that sums nothing.
    ValuesWithoutSum,
    /// A bound brought by a side that holds no values.
    MaxValueWithoutValues,
    /// Matched records asked of a side that does not receive an intersection.
    MatchesOnlyForIntersectionReceiver,
    /// Noise for a sum asked of a protocol that sums nothing.
    EpsilonSumWithoutSum,
    /// Noise for the counts of a sum to the party without values: that party finds the
    /// matches itself, so noise on the count could not protect the values holder.
    EpsilonCountInSum,
    /// Noise for a count asked of the intersection, which releases records, not a count.
    EpsilonCountInIntersection,
    /// An epsilon that is not a positive finite number.
    EpsilonNotPositive,
}

impl SideRule {
    /// A stable name for scripts and tests.
    pub fn as_str(&self) -> &'static str {
        match self {
            SideRule::ValuesNeeded => "values_needed",
            SideRule::MaxValueNeeded => "max_value_needed",
            SideRule::ValuesOnOtherSide => "values_on_other_side",
            SideRule::ValuesWithoutSum => "values_without_sum",
            SideRule::MaxValueWithoutValues => "max_value_without_values",
            SideRule::MatchesOnlyForIntersectionReceiver => {
                "matches_only_for_intersection_receiver"
            }
            SideRule::EpsilonSumWithoutSum => "epsilon_sum_without_sum",
            SideRule::EpsilonCountInSum => "epsilon_count_in_sum",
            SideRule::EpsilonCountInIntersection => "epsilon_count_in_intersection",
            SideRule::EpsilonNotPositive => "epsilon_not_positive",
        }
    }
}

/// Checks what one side brings against the protocol and the side's role; the first rule
/// broken, in the order a person would fix them (values, bound, output, noise).
pub fn check_side(protocol: ProtocolKind, role: Role, inputs: &SideInputs) -> Result<(), SideRule> {
    let holds_values = protocol.values_holder() == Some(role);
    match (holds_values, inputs.values) {
        (true, false) => return Err(SideRule::ValuesNeeded),
        (false, true) if protocol.is_sum() => return Err(SideRule::ValuesOnOtherSide),
        (false, true) => return Err(SideRule::ValuesWithoutSum),
        _ => {}
    }
    match (holds_values, inputs.max_value) {
        (false, Some(_)) => return Err(SideRule::MaxValueWithoutValues),
        (true, None) => return Err(SideRule::MaxValueNeeded),
        _ => {}
    }
    let intersection_receiver = matches!(
        protocol,
        ProtocolKind::Intersection | ProtocolKind::IntersectionOt
    ) && role == Role::Receiver;
    if inputs.matches_output && !intersection_receiver {
        return Err(SideRule::MatchesOnlyForIntersectionReceiver);
    }
    if inputs.epsilon_sum.is_some() && !protocol.is_sum() {
        return Err(SideRule::EpsilonSumWithoutSum);
    }
    if inputs.epsilon_count.is_some() {
        match protocol {
            ProtocolKind::Sum => return Err(SideRule::EpsilonCountInSum),
            ProtocolKind::Intersection | ProtocolKind::IntersectionOt => {
                return Err(SideRule::EpsilonCountInIntersection);
            }
            ProtocolKind::Cardinality | ProtocolKind::SumToValuesHolder => {}
        }
    }
    let positive = |e: f64| e.is_finite() && e > 0.0;
    if [inputs.epsilon_count, inputs.epsilon_sum]
        .into_iter()
        .flatten()
        .any(|e| !positive(e))
    {
        return Err(SideRule::EpsilonNotPositive);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ProtocolKind; 5] = [
        ProtocolKind::Cardinality,
        ProtocolKind::Intersection,
        ProtocolKind::IntersectionOt,
        ProtocolKind::Sum,
        ProtocolKind::SumToValuesHolder,
    ];

    fn holder_inputs() -> SideInputs {
        SideInputs {
            values: true,
            max_value: Some(1_000),
            ..SideInputs::default()
        }
    }

    #[test]
    fn the_values_holder_must_bring_values_and_their_bound_and_nobody_else_may() {
        for protocol in ALL {
            for role in [Role::Sender, Role::Receiver] {
                let holds = protocol.values_holder() == Some(role);
                let bare = check_side(protocol, role, &SideInputs::default());
                let with_values = check_side(protocol, role, &holder_inputs());
                if holds {
                    assert_eq!(bare, Err(SideRule::ValuesNeeded), "{protocol:?} {role:?}");
                    assert_eq!(with_values, Ok(()), "{protocol:?} {role:?}");
                    let unbounded = SideInputs {
                        max_value: None,
                        ..holder_inputs()
                    };
                    assert_eq!(
                        check_side(protocol, role, &unbounded),
                        Err(SideRule::MaxValueNeeded)
                    );
                } else {
                    assert_eq!(bare, Ok(()), "{protocol:?} {role:?}");
                    let expected = if protocol.is_sum() {
                        SideRule::ValuesOnOtherSide
                    } else {
                        SideRule::ValuesWithoutSum
                    };
                    assert_eq!(with_values, Err(expected), "{protocol:?} {role:?}");
                    let bound_only = SideInputs {
                        max_value: Some(5),
                        ..SideInputs::default()
                    };
                    assert_eq!(
                        check_side(protocol, role, &bound_only),
                        Err(SideRule::MaxValueWithoutValues)
                    );
                }
            }
        }
    }

    #[test]
    fn matched_records_go_only_to_the_receiver_of_an_intersection() {
        let output = SideInputs {
            matches_output: true,
            ..SideInputs::default()
        };
        for protocol in ALL {
            for role in [Role::Sender, Role::Receiver] {
                let mut inputs = output;
                if protocol.values_holder() == Some(role) {
                    inputs.values = true;
                    inputs.max_value = Some(1);
                }
                let allowed = matches!(
                    protocol,
                    ProtocolKind::Intersection | ProtocolKind::IntersectionOt
                ) && role == Role::Receiver;
                let got = check_side(protocol, role, &inputs);
                if allowed {
                    assert_eq!(got, Ok(()));
                } else {
                    assert_eq!(got, Err(SideRule::MatchesOnlyForIntersectionReceiver));
                }
            }
        }
    }

    #[test]
    fn noise_applies_only_where_it_can_protect_something() {
        let count = SideInputs {
            epsilon_count: Some(1.0),
            ..SideInputs::default()
        };
        let sum = SideInputs {
            epsilon_sum: Some(1.0),
            ..SideInputs::default()
        };
        let r = Role::Receiver;
        assert_eq!(check_side(ProtocolKind::Cardinality, r, &count), Ok(()));
        assert_eq!(
            check_side(ProtocolKind::SumToValuesHolder, Role::Sender, &count),
            Ok(())
        );
        assert_eq!(
            check_side(ProtocolKind::Sum, r, &count),
            Err(SideRule::EpsilonCountInSum)
        );
        assert_eq!(
            check_side(ProtocolKind::Intersection, r, &count),
            Err(SideRule::EpsilonCountInIntersection)
        );
        assert_eq!(check_side(ProtocolKind::Sum, r, &sum), Ok(()));
        assert_eq!(
            check_side(ProtocolKind::IntersectionOt, r, &count),
            Err(SideRule::EpsilonCountInIntersection)
        );
        for protocol in [
            ProtocolKind::Cardinality,
            ProtocolKind::Intersection,
            ProtocolKind::IntersectionOt,
        ] {
            assert_eq!(
                check_side(protocol, r, &sum),
                Err(SideRule::EpsilonSumWithoutSum)
            );
        }
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let inputs = SideInputs {
                epsilon_count: Some(bad),
                ..SideInputs::default()
            };
            assert_eq!(
                check_side(ProtocolKind::Cardinality, r, &inputs),
                Err(SideRule::EpsilonNotPositive),
                "{bad}"
            );
            let inputs = SideInputs {
                epsilon_sum: Some(bad),
                ..SideInputs::default()
            };
            assert_eq!(
                check_side(ProtocolKind::Sum, r, &inputs),
                Err(SideRule::EpsilonNotPositive),
                "{bad}"
            );
        }
    }
}
