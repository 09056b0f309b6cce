//! What both sides agree on before any identifier-derived data flows: the hellos are compared
//! and the session's parameters fixed.

use cleanroom_privacy::budget::Epsilon;
use cleanroom_privacy::noise::IntegerNoise;

use crate::PsiError;
use crate::group::Kinds;
use crate::input::{Layout, PreparedInput};
use crate::wire::{Hello, MAX_BATCH, PROTOCOL_VERSION, ProtocolKind, Role};

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
}

impl SessionConfig {
    pub fn new(protocol: ProtocolKind, role: Role) -> Self {
        SessionConfig {
            protocol,
            role,
            batch: 32_768,
            max_peer_items: 100_000_000,
            count_epsilon: None,
            sum_epsilon: None,
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
            return Err(PsiError::Incompatible(format!(
                "the peer runs {}, we run {}",
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
        if total > self.max_peer_items {
            return Err(PsiError::TooManyItems {
                announced: total,
                cap: self.max_peer_items,
            });
        }
        let batch = ours.batch.min(theirs.batch).clamp(1, MAX_BATCH as u32) as usize;
        let max_value = if ours.protocol == ProtocolKind::SumToValuesHolder {
            let mv = match ours.role {
                Role::Receiver => ours.max_value,
                Role::Sender => theirs.max_value,
            };
            if mv == 0 || mv > i64::MAX as u64 {
                return Err(PsiError::Incompatible(
                    "the sum's receiver announced no valid value bound".into(),
                ));
            }
            mv
        } else {
            0
        };
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
        let sum_noise = match (ours.protocol, sum_eps) {
            (ProtocolKind::SumToValuesHolder, Some(e)) => Some(NoiseSpec::calibrate(e, max_value as i64)?),
            _ => None,
        };
        Ok(Session {
            protocol: ours.protocol,
            role: ours.role,
            kinds,
            batch,
            peer_items: theirs.items.clone(),
            max_value,
            count_noise,
            sum_noise,
            count_epsilon: count_eps,
            sum_epsilon: if ours.protocol == ProtocolKind::SumToValuesHolder {
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
    /// Sum sessions: the receiver's bound on each value (the sum noise's sensitivity).
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
        match &self.sum_noise {
            Some(n) => (n.scale * 45.0).ceil() as u64,
            None => 0,
        }
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

    pub(crate) fn mechanism(&self) -> Result<IntegerNoise, PsiError> {
        Ok(IntegerNoise::calibrate(self.epsilon, self.sensitivity)?)
    }
}
