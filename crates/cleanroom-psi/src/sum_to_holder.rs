//! PSI-sum to the values holder (`--sum-to values-holder`), as in the paper of Google's Private
//! Join and Compute (Ion et al., EuroS&P 2020), with an identifier cascade. The receiver R holds records with values and an ElGamal key; the sender
//! S holds identifiers. R learns the number of its distinct records that match and the sum of
//! their values, per kind; S learns the counts. Neither learns which records match.
//!
//! 1. S → R: S's distinct identifiers per kind, `H_t(y)^s`, sorted.
//! 2. R → S: their re-blinding, as tags of `H_t(y)^{sr}`, sorted again (so S cannot tell which
//!    of its identifiers became which tag). S keeps them in one hash set per kind.
//! 3. R → S: R's public key, then its distinct records, sorted: `(H_1(x_1)^r, …, H_K(x_K)^r,
//!    Enc(v))` with absent slots random and `v` the sum of the record's clamped values.
//! 4. S re-blinds each slot, finds the first kind whose tag is in its set, and adds `Enc(v)` to
//!    that kind's encrypted sum. S → R: per-kind counts and sums, each sum plus `Enc(noise)`
//!    when asked for, and re-randomised in any case, so R cannot relate a sum to the
//!    ciphertexts it sent.
//! 5. R decrypts each sum by baby-step giant-step over `[−allowance, total of its values +
//!    allowance]`.

use crate::elgamal::{Ciphertext, Decryptor, SecretKey};
use crate::group::SessionKey;
use crate::input::{Data, PreparedInput};
use crate::stream::{
    Absorb, Emit, EncryptedRecords, KeyAwaiting, RecordsMatching, SetSending, SortedReturn,
    TagStream, TagsCollecting, unexpected,
};
use crate::wire::{Message, ProtocolKind, Role};
use crate::{MatchCounts, PsiError, Session, SumOutput};

fn check(session: &Session, input: &PreparedInput, role: Role) -> Result<(), PsiError> {
    if session.protocol != ProtocolKind::SumToValuesHolder || session.role != role {
        return Err(PsiError::InvalidParameter(
            "this session is not a sum session in this role".into(),
        ));
    }
    input.check_fits(session)
}

// ---------------------------------------------------------------- receiver

struct Records {
    stream: EncryptedRecords,
    total: u64,
}

/// Receiver, step 1: re-blinding the sender's set.
pub struct ReceiverReblinding {
    session: Session,
    key: SessionKey,
    records: Records,
    back: SortedReturn,
}

impl ReceiverReblinding {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Receiver)?;
        let total = input.value_total()?;
        let Data::Tuples { points, values } = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        // Fail before any work if the sum could not be decrypted.
        let allowance = session.sum_noise_allowance();
        range(total, allowance)?;
        Ok(ReceiverReblinding {
            back: SortedReturn::new(session.peer_items.clone()),
            key: input.key,
            records: Records {
                stream: EncryptedRecords::new(points, values, session.kinds.len(), session.batch),
                total,
            },
            session,
        })
    }

    pub fn absorb(mut self, msg: Message) -> Result<Absorb<Self, ReceiverReturning>, PsiError> {
        if self.back.absorb(&self.key, msg)? {
            Ok(Absorb::Next(ReceiverReturning {
                stream: self.back.into_stream(self.session.batch),
                session: self.session,
                records: self.records,
            }))
        } else {
            Ok(Absorb::More(self))
        }
    }
}

fn range(total: u64, allowance: u64) -> Result<(i64, i64), PsiError> {
    // Decryption searches [-allowance, total + allowance], a range of total + 2·allowance.
    let hi = total
        .checked_add(allowance)
        .filter(|h| h.saturating_add(allowance) <= crate::elgamal::MAX_RANGE)
        .ok_or_else(|| {
            PsiError::InvalidParameter(
                "the values (plus noise allowance) add up to more than 2^44; lower --max-value"
                    .into(),
            )
        })?;
    Ok((-(allowance as i64), hi as i64))
}

/// Receiver, step 2: returning the sender's set re-blinded, sorted.
pub struct ReceiverReturning {
    session: Session,
    records: Records,
    stream: TagStream,
}

impl ReceiverReturning {
    pub fn emit(mut self) -> Result<Emit<Self, ReceiverSending>, PsiError> {
        let (msg, last) = self.stream.next();
        if !last {
            return Ok(Emit::More(msg, self));
        }
        Ok(Emit::Last(
            msg,
            ReceiverSending {
                session: self.session,
                records: self.records,
                secret: None,
            },
        ))
    }
}

/// Receiver, step 3: sending its public key and its encrypted records.
pub struct ReceiverSending {
    session: Session,
    records: Records,
    secret: Option<SecretKey>,
}

impl ReceiverSending {
    pub fn emit(mut self) -> Result<Emit<Self, ReceiverAwaiting>, PsiError> {
        let Some(secret) = &self.secret else {
            let sk = SecretKey::generate()?;
            let msg = Message::PublicKey(sk.public().to_bytes());
            self.secret = Some(sk);
            return Ok(Emit::More(msg, self));
        };
        let (msg, last) = self.records.stream.next(secret.public())?;
        if !last {
            return Ok(Emit::More(msg, self));
        }
        let secret = self
            .secret
            .take()
            .ok_or_else(|| PsiError::Internal("no key".into()))?;
        Ok(Emit::Last(
            msg,
            ReceiverAwaiting {
                range: range(self.records.total, self.session.sum_noise_allowance())?,
                session: self.session,
                secret,
            },
        ))
    }
}

/// Receiver, step 4: waiting for the encrypted sums.
pub struct ReceiverAwaiting {
    session: Session,
    secret: SecretKey,
    range: (i64, i64),
}

impl ReceiverAwaiting {
    pub fn absorb(self, msg: Message) -> Result<SumOutput, PsiError> {
        let k = self.session.kinds.len();
        match msg {
            Message::SumResult { counts, sums } if counts.len() == k && sums.len() == k => {
                if counts.iter().any(|c| *c < 0) {
                    return Err(PsiError::Malformed("a negative count".into()));
                }
                let dec = Decryptor::new(self.range.0, self.range.1)?;
                let sums = sums
                    .iter()
                    .map(|s| dec.decrypt(&self.secret, &Ciphertext::from_bytes(s)?))
                    .collect::<Result<Vec<i64>, PsiError>>()?;
                let total_sum = sums.iter().sum();
                Ok(SumOutput {
                    counts: MatchCounts::new(counts, self.session.count_epsilon().is_some()),
                    sums,
                    total_sum,
                    noisy: self.session.sum_epsilon().is_some(),
                })
            }
            other => Err(unexpected("the sum result", &other)),
        }
    }
}

// ---------------------------------------------------------------- sender

/// Sender, step 1: sending its blinded set (shared with the other sum's learner).
pub type SenderSending = SetSending;
/// Sender, step 2: keeping its own set, re-blinded by the receiver.
pub type SenderCollecting = TagsCollecting;
/// Sender, step 3: waiting for the receiver's (the values holder's) public key.
pub type SenderAwaitingKey = KeyAwaiting;

/// Sender, step 1, for a session of this protocol in the sender's role.
pub fn sender(session: Session, input: PreparedInput) -> Result<SenderSending, PsiError> {
    check(&session, &input, Role::Sender)?;
    SetSending::new(session, input)
}

/// Sender, step 4: matching the receiver's records and adding up their ciphertexts.
pub struct SenderMatching(RecordsMatching);

impl From<RecordsMatching> for SenderMatching {
    fn from(m: RecordsMatching) -> Self {
        SenderMatching(m)
    }
}

impl SenderMatching {
    /// On the end of the stream: the result message for the receiver and this side's counts.
    pub fn absorb(
        mut self,
        msg: Message,
    ) -> Result<Absorb<Self, (Message, MatchCounts)>, PsiError> {
        if !self.0.absorb(msg)? {
            return Ok(Absorb::More(self));
        }
        let m = self.0;
        let counts = m.session.release_counts(m.sums.counts())?;
        let mut sums = Vec::with_capacity(counts.len());
        for s in m.sums.sums() {
            let noisy = match &m.session.sum_noise {
                Some(n) => s.add(&m.pk.encrypt(n.mechanism()?.release(0)?)?),
                None => *s,
            };
            sums.push(m.pk.rerandomise(&noisy)?.to_bytes());
        }
        Ok(Absorb::Next((
            Message::SumResult {
                counts: counts.clone(),
                sums,
            },
            MatchCounts::new(counts, m.session.count_noise.is_some()),
        )))
    }
}
