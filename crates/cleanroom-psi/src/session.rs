//! What both sides agree on before any identifier-derived data flows: the hellos are compared
//! and the session's parameters fixed.

use cleanroom_privacy::budget::Epsilon;
use cleanroom_privacy::noise::IntegerNoise;

use crate::PsiError;
use crate::group::Kinds;
use crate::input::{Layout, PreparedInput};
use crate::wire::{Hello, MAX_BATCH, PROTOCOL_VERSION, ProtocolKind, Role};

const COUNT_NOISE_REFUSED: &str = "in a sum to the party without values, that party finds \
    the matches itself and sees the intersection size exactly, so noise on the count cannot \
    protect the values holder; --epsilon-count is refused rather than pretended (noise on the \
    sum, --epsilon-sum, is added by the values holder and does apply)";

/// This side's wishes for a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub protocol: ProtocolKind,
    pub role: Role,
    /// Entries per message (at most 65 536).
    pub batch: u32,
    /// Refuse a peer that announces more items than this in total (a privacy control: it
    /// bounds how large a dictionary the peer can test against our set).
    pub max_peer_items: u64,
    /// Require discrete Laplace noise on released counts (sensitivity 1 per record).
    pub count_epsilon: Option<f64>,
    /// Require discrete Laplace noise on released sums (sensitivity: the value bound).
    pub sum_epsilon: Option<f64>,
    /// OT intersection: the items a bucket should hold on average (the sides' memory follows
    /// it). The receiver splits the items accordingly; the sender refuses fewer buckets than
    /// this setting gives, and accepts more (a power of two up to 256).
    pub ot_bucket_items: u64,
}

/// The most items a peer may announce, whatever `max_peer_items` says.
pub const MAX_PEER_ITEMS: u64 = 1 << 40;

impl SessionConfig {
    pub fn new(protocol: ProtocolKind, role: Role) -> Self {
        SessionConfig {
            protocol,
            role,
            batch: 32_768,
            max_peer_items: 100_000_000,
            count_epsilon: None,
            sum_epsilon: None,
            ot_bucket_items: crate::ot::DEFAULT_BUCKET_ITEMS,
        }
    }

    /// This side's hello for a prepared input.
    pub fn hello(&self, input: &PreparedInput) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            protocol: self.protocol,
            role: self.role,
            kinds: input.kinds().labels().to_vec(),
            items: input.announced_items(),
            batch: self.batch,
            max_value: input.max_value().unwrap_or(0),
            count_epsilon: self.count_epsilon,
            sum_epsilon: self.sum_epsilon,
        }
    }

    /// Compares our hello with the peer's and fixes the session.
    pub fn agree(&self, ours: &Hello, theirs: &Hello) -> Result<Session, PsiError> {
        if theirs.version != ours.version {
            return Err(PsiError::VersionMismatch {
                ours: ours.version,
                theirs: theirs.version,
            });
        }
        if theirs.protocol != ours.protocol {
            let intersection = |p: ProtocolKind| {
                matches!(p, ProtocolKind::Intersection | ProtocolKind::IntersectionOt)
            };
            let hint = if theirs.protocol.is_sum() && ours.protocol.is_sum() {
                " (the sum goes to the party without values unless both sides pass \
                 --sum-to values-holder)"
            } else if intersection(theirs.protocol) && intersection(ours.protocol) {
                " (both sides must pass the same --engine)"
            } else {
                ""
            };
            return Err(PsiError::Incompatible(format!(
                "the peer runs {}, we run {}{hint}",
                theirs.protocol.as_str(),
                ours.protocol.as_str()
            )));
        }
        if theirs.role == ours.role {
            return Err(PsiError::Incompatible(format!(
                "both sides are the {}; exactly one side must be the receiver",
                ours.role.as_str()
            )));
        }
        if theirs.kinds != ours.kinds {
            return Err(PsiError::Incompatible(format!(
                "identifier kinds differ: the peer matches on [{}], we on [{}] (same kinds in the same priority order are needed)",
                theirs.kinds.join(", "),
                ours.kinds.join(", ")
            )));
        }
        let kinds = Kinds::new(&ours.kinds)?;
        let peer_layout = Layout::of(ours.protocol, theirs.role);
        let want = if peer_layout == Layout::Tuples {
            1
        } else {
            kinds.len()
        };
        if theirs.items.len() != want {
            return Err(PsiError::Malformed(
                "the hello announces the wrong number of item counts".into(),
            ));
        }
        let total = theirs
            .items
            .iter()
            .try_fold(0u64, |a, n| a.checked_add(*n))
            .ok_or_else(|| PsiError::Malformed("item counts overflow".into()))?;
        // Whatever the setting, no more than 2^40 (10^12) items: the sizes derived from the
        // announced counts (bins, outputs, ranges) stay far from overflowing.
        let cap = self.max_peer_items.min(MAX_PEER_ITEMS);
        if total > cap {
            return Err(PsiError::TooManyItems {
                announced: total,
                cap,
            });
        }
        let batch = ours.batch.min(theirs.batch).clamp(1, MAX_BATCH as u32) as usize;
        let holder = ours.protocol.values_holder();
        let max_value = match holder {
            Some(h) => {
                let mv = if h == ours.role {
                    ours.max_value
                } else {
                    theirs.max_value
                };
                if mv == 0 || mv > i64::MAX as u64 {
                    return Err(PsiError::Incompatible(
                        "the sum's values holder announced no valid value bound".into(),
                    ));
                }
                mv
            }
            None => 0,
        };
        if ours.protocol == ProtocolKind::Sum {
            // The party without values finds the matches itself, so it sees the intersection
            // size exactly: noise on that count could not protect the values holder.
            if ours.count_epsilon.is_some() {
                return Err(PsiError::InvalidParameter(COUNT_NOISE_REFUSED.into()));
            }
            if theirs.count_epsilon.is_some() {
                return Err(PsiError::Incompatible(format!(
                    "the peer asks for noise on the count: {COUNT_NOISE_REFUSED}"
                )));
            }
        }
        let strictest = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, None) | (None, x) => x,
        };
        let count_eps = strictest(ours.count_epsilon, theirs.count_epsilon);
        let sum_eps = strictest(ours.sum_epsilon, theirs.sum_epsilon);
        let count_noise = match count_eps {
            Some(e) => Some(NoiseSpec::calibrate(e, 1)?),
            None => None,
        };
        let sum_noise = match (holder, sum_eps) {
            (Some(_), Some(e)) => Some(NoiseSpec::calibrate(e, max_value as i64)?),
            _ => None,
        };
        if ours.protocol == ProtocolKind::Sum {
            // The party without values decrypts each per-kind sum by baby-step giant-step over
            // [-allowance, matched records × max_value + allowance]; at most every record of
            // the values holder matches. Refuse now rather than after all the work.
            let records = match ours.role {
                Role::Sender => ours.items.first(),
                Role::Receiver => theirs.items.first(),
            }
            .copied()
            .unwrap_or(0);
            let allowance = sum_noise.map_or(0, |n| n.allowance());
            let fits = u128::from(records) * u128::from(max_value) + 2 * u128::from(allowance)
                <= u128::from(crate::elgamal::MAX_RANGE);
            if !fits {
                return Err(PsiError::Incompatible(format!(
                    "{records} records of values up to {max_value} could add up to more than \
                     2^44, the largest sum this protocol decrypts; the values holder must lower \
                     --max-value"
                )));
            }
        }
        Ok(Session {
            protocol: ours.protocol,
            role: ours.role,
            kinds,
            batch,
            peer_items: theirs.items.clone(),
            ot_bucket_items: self.ot_bucket_items.max(1),
            max_value,
            count_noise,
            sum_noise,
            count_epsilon: count_eps,
            sum_epsilon: if ours.protocol.is_sum() {
                sum_eps
            } else {
                None
            },
        })
    }
}

/// The agreed parameters of one session.
#[derive(Debug, Clone)]
pub struct Session {
    pub(crate) protocol: ProtocolKind,
    pub(crate) role: Role,
    pub(crate) kinds: Kinds,
    pub(crate) batch: usize,
    pub(crate) peer_items: Vec<u64>,
    pub(crate) ot_bucket_items: u64,
    pub(crate) max_value: u64,
    pub(crate) count_noise: Option<NoiseSpec>,
    pub(crate) sum_noise: Option<NoiseSpec>,
    count_epsilon: Option<f64>,
    sum_epsilon: Option<f64>,
}

impl Session {
    pub fn protocol(&self) -> ProtocolKind {
        self.protocol
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn kinds(&self) -> &Kinds {
        &self.kinds
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// What the peer announced: distinct identifiers per kind, or distinct records.
    pub fn peer_items(&self) -> &[u64] {
        &self.peer_items
    }
    /// Sum sessions: the values holder's bound on each value (the sum noise's sensitivity).
    pub fn max_value(&self) -> u64 {
        self.max_value
    }
    /// The epsilon of the noise on released counts, if any.
    pub fn count_epsilon(&self) -> Option<f64> {
        self.count_epsilon
    }
    /// The epsilon of the noise on released sums, if any.
    pub fn sum_epsilon(&self) -> Option<f64> {
        self.sum_epsilon
    }

    /// Releases per-kind counts, with noise if the session asks for it (negative noisy
    /// counts are clamped to zero, which is post-processing).
    pub(crate) fn release_counts(&self, exact: &[u64]) -> Result<Vec<i64>, PsiError> {
        exact
            .iter()
            .map(|c| {
                let c = i64::try_from(*c).map_err(|_| PsiError::Internal("count".into()))?;
                Ok(match &self.count_noise {
                    Some(n) => n.mechanism()?.release(c)?.max(0),
                    None => c,
                })
            })
            .collect()
    }

    /// How far sum noise may push a sum below zero or above its bound before decryption gives
    /// up: 45 noise scales (the discrete Laplace tail beyond that is below 3·10^-20).
    pub(crate) fn sum_noise_allowance(&self) -> u64 {
        self.sum_noise.map_or(0, |n| n.allowance())
    }
}

/// A calibrated discrete Laplace mechanism, kept as its parameters: OpenDP's measurements are
/// not `Send`, and a session crosses threads in an async transport. The mechanism is rebuilt
/// (same epsilon, same sensitivity, hence the same scale) at the moment of release.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoiseSpec {
    epsilon: Epsilon,
    sensitivity: i64,
    pub(crate) scale: f64,
}

impl NoiseSpec {
    fn calibrate(epsilon: f64, sensitivity: i64) -> Result<Self, PsiError> {
        let epsilon = Epsilon::grant(epsilon)?;
        let m = IntegerNoise::calibrate(epsilon, sensitivity)?;
        Ok(NoiseSpec {
            epsilon,
            sensitivity,
            scale: m.scale(),
        })
    }

    /// 45 noise scales: the discrete Laplace tail beyond that is below 3·10^-20.
    pub(crate) fn allowance(&self) -> u64 {
        (self.scale * 45.0).ceil() as u64
    }

    pub(crate) fn mechanism(&self) -> Result<IntegerNoise, PsiError> {
        Ok(IntegerNoise::calibrate(self.epsilon, self.sensitivity)?)
    }
}
