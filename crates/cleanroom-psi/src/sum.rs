//! PSI-sum to the party without values (`--protocol sum`, the default), with an identifier
//! cascade. The *learner* L (the receiver) holds identifiers only; the *values holder* H (the
//! sender) holds records with values and an ElGamal key pair. L learns how many of H's distinct
//! records match, and the sum of their values, per kind; H learns nothing but L's number of
//! distinct identifiers per kind.
//!
//! 1. L → H: L's distinct identifiers per kind, `H_t(y)^l`, sorted.
//! 2. H → L: their re-blinding, as tags of `H_t(y)^{lh}`, sorted again (so L cannot tell which
//!    of its identifiers became which tag). L keeps them in one hash set per kind.
//! 3. H → L: H's public key `X`, then its distinct records, sorted:
//!    `(H_1(x_1)^h, …, H_K(x_K)^h, Enc_X(v))`, absent slots random, `v` the record's clamped
//!    (and, for duplicate records, added) value.
//! 4. L re-blinds each slot, finds the first kind whose tag is in its set, and adds `Enc_X(v)`
//!    to that kind's encrypted sum `C_k = Enc_X(S_k)`. L draws a uniformly random scalar `r_k`
//!    per kind and sends `C_k + Enc_X(r_k)` with fresh randomness (masked and re-randomised).
//! 5. H decrypts each only as far as the group element `M_k = (S_k + r_k + z_k)·G`, with
//!    discrete Laplace noise `z_k` when the session requires noise on the sum, and sends the
//!    `M_k` back. For a uniform `r_k`, `M_k` is a uniform group element: H learns nothing about
//!    `S_k`. The fresh randomness of step 4 stops H from relating `C_k` to its own ciphertexts.
//! 6. L computes `M_k − r_k·G = (S_k + z_k)·G` and finds `S_k + z_k` by baby-step giant-step
//!    over `[−allowance, matched_k × max_value + allowance]`; the session refused at the start
//!    any values holder whose records could add up past that range (`elgamal::MAX_RANGE`).
//!
//! L finds the matches itself, so it sees the counts exactly: noise on them could not protect
//! H, and a session asking for it is refused. Semi-honest security only: a learner that sends
//! one record's ciphertext instead of a sum learns that value (see `docs/psi.md`).
//!
//! Each step is a type that consumes itself, so steps cannot run out of order: the values
//! holder cannot decrypt anything before it has sent all its records.
//!
//! ```compile_fail
//! fn too_early(h: cleanroom_psi::sum::HolderSending, m: cleanroom_psi::Message) {
//!     let _ = h.absorb(m); // no such method while the holder is still sending
//! }
//! ```

use zeroize::Zeroizing;

use crate::elgamal::{Ciphertext, Decryptor, Mask, SecretKey};
use crate::group::SessionKey;
use crate::input::{Data, PreparedInput};
use crate::stream::{
    Absorb, Emit, EncryptedRecords, KeyAwaiting, RecordsMatching, SetSending, SortedReturn,
    TagStream, TagsCollecting, unexpected,
};
use crate::wire::{Message, ProtocolKind, Role};
use crate::{MatchCounts, PsiError, Session, SumOutput};

fn check(session: &Session, input: &PreparedInput, role: Role) -> Result<(), PsiError> {
    if session.protocol != ProtocolKind::Sum || session.role != role {
        return Err(PsiError::InvalidParameter(
            "this session is not a sum to the party without values in this role".into(),
        ));
    }
    input.check_fits(session)
}

// ---------------------------------------------------------------- learner (receiver)

/// Learner, step 1: sending its blinded set (shared with the other sum's sender).
pub type LearnerSending = SetSending;
/// Learner, step 2: keeping its own set, re-blinded by the values holder and sorted.
pub type LearnerCollecting = TagsCollecting;
/// Learner, step 3: waiting for the values holder's public key.
pub type LearnerAwaitingKey = KeyAwaiting;

/// Learner, step 1, for a session of this protocol in the receiver's role.
pub fn learner(session: Session, input: PreparedInput) -> Result<LearnerSending, PsiError> {
    check(&session, &input, Role::Receiver)?;
    SetSending::new(session, input)
}

/// Learner, step 4: matching the values holder's records and adding up their ciphertexts;
/// at the end, masking each sum.
pub struct LearnerMatching(RecordsMatching);

impl From<RecordsMatching> for LearnerMatching {
    fn from(m: RecordsMatching) -> Self {
        LearnerMatching(m)
    }
}

impl LearnerMatching {
    /// On the end of the stream: the masked sums for the values holder, and the next step.
    pub fn absorb(
        mut self,
        msg: Message,
    ) -> Result<Absorb<Self, (Message, LearnerUnmasking)>, PsiError> {
        if !self.0.absorb(msg)? {
            return Ok(Absorb::More(self));
        }
        let m = self.0;
        let mut masks = Vec::with_capacity(m.sums.sums().len());
        let mut masked = Vec::with_capacity(masks.capacity());
        for c in m.sums.sums() {
            let mask = Mask::generate()?;
            masked.push(m.pk.mask(c, &mask)?.to_bytes());
            masks.push(mask);
        }
        Ok(Absorb::Next((
            Message::MaskedSums { sums: masked },
            LearnerUnmasking {
                counts: m.sums.counts().to_vec(),
                session: m.session,
                masks,
            },
        )))
    }
}

/// Learner, step 5: removing the masks from the decrypted elements and taking the discrete
/// logarithm of each sum.
pub struct LearnerUnmasking {
    session: Session,
    counts: Vec<u64>,
    masks: Vec<Mask>,
}

impl LearnerUnmasking {
    pub fn absorb(self, msg: Message) -> Result<SumOutput, PsiError> {
        let k = self.session.kinds.len();
        match msg {
            Message::DecryptedMaskedSums { elements } if elements.len() == k => {
                let allowance = self.session.sum_noise_allowance();
                let most = self.counts.iter().copied().max().unwrap_or(0);
                // Checked when the session was agreed (records × max_value + 2·allowance ≤
                // 2^44); checked again here because a wrong range would be a silent error.
                let hi = most
                    .checked_mul(self.session.max_value)
                    .and_then(|h| h.checked_add(allowance))
                    .and_then(|h| i64::try_from(h).ok())
                    .ok_or_else(|| PsiError::Internal("sum range overflows".into()))?;
                let lo = i64::try_from(allowance)
                    .map_err(|_| PsiError::Internal("noise allowance overflows".into()))?;
                let dec = Decryptor::new(-lo, hi)?;
                let sums = elements
                    .iter()
                    .zip(&self.masks)
                    .map(|(e, m)| dec.log(m.unmask(e)?))
                    .collect::<Result<Vec<i64>, PsiError>>()?;
                let counts = self
                    .counts
                    .iter()
                    .map(|c| i64::try_from(*c).map_err(|_| PsiError::Internal("count".into())))
                    .collect::<Result<Vec<i64>, PsiError>>()?;
                Ok(SumOutput {
                    counts: MatchCounts::new(counts, false),
                    total_sum: sums.iter().sum(),
                    sums,
                    noisy: self.session.sum_epsilon().is_some(),
                })
            }
            other => Err(unexpected("the decrypted masked sums", &other)),
        }
    }
}

// ---------------------------------------------------------------- values holder (sender)

/// Values holder, step 1: re-blinding the learner's set.
pub struct HolderReblinding {
    session: Session,
    key: SessionKey,
    records: EncryptedRecords,
    back: SortedReturn,
}

impl HolderReblinding {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Sender)?;
        // Refuses values that overflow before any work.
        input.value_total()?;
        let Data::Tuples { points, values } = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        Ok(HolderReblinding {
            back: SortedReturn::new(session.peer_items.clone()),
            key: input.key,
            records: EncryptedRecords::new(points, values, session.kinds.len(), session.batch),
            session,
        })
    }

    pub fn absorb(mut self, msg: Message) -> Result<Absorb<Self, HolderReturning>, PsiError> {
        if self.back.absorb(&self.key, msg)? {
            Ok(Absorb::Next(HolderReturning {
                stream: self.back.into_stream(self.session.batch),
                session: self.session,
                records: self.records,
            }))
        } else {
            Ok(Absorb::More(self))
        }
    }
}

/// Values holder, step 2: returning the learner's set re-blinded, sorted.
pub struct HolderReturning {
    session: Session,
    records: EncryptedRecords,
    stream: TagStream,
}

impl HolderReturning {
    pub fn emit(mut self) -> Result<Emit<Self, HolderSending>, PsiError> {
        let (msg, last) = self.stream.next();
        if !last {
            return Ok(Emit::More(msg, self));
        }
        Ok(Emit::Last(
            msg,
            HolderSending {
                session: self.session,
                records: self.records,
                secret: None,
            },
        ))
    }
}

/// Values holder, step 3: sending its public key and its encrypted records.
pub struct HolderSending {
    session: Session,
    records: EncryptedRecords,
    secret: Option<SecretKey>,
}

impl HolderSending {
    pub fn emit(mut self) -> Result<Emit<Self, HolderDecrypting>, PsiError> {
        let Some(secret) = &self.secret else {
            let sk = SecretKey::generate()?;
            let msg = Message::PublicKey(sk.public().to_bytes());
            self.secret = Some(sk);
            return Ok(Emit::More(msg, self));
        };
        let (msg, last) = self.records.next(secret.public())?;
        if !last {
            return Ok(Emit::More(msg, self));
        }
        let records = match &msg {
            Message::End { count } => *count,
            _ => 0,
        };
        let secret = self
            .secret
            .take()
            .ok_or_else(|| PsiError::Internal("no key".into()))?;
        Ok(Emit::Last(
            msg,
            HolderDecrypting {
                session: self.session,
                secret,
                records,
            },
        ))
    }
}

/// Values holder, step 4: decrypting the masked sums to group elements, with noise if the
/// session requires it. What the holder sees is uniformly random.
pub struct HolderDecrypting {
    session: Session,
    secret: SecretKey,
    records: u64,
}

impl HolderDecrypting {
    /// The reply for the learner, and the number of encrypted records this side sent.
    pub fn absorb(self, msg: Message) -> Result<(Message, u64), PsiError> {
        let k = self.session.kinds.len();
        match msg {
            Message::MaskedSums { sums } if sums.len() == k => {
                let mut elements = Vec::with_capacity(k);
                for c in &sums {
                    let c = Ciphertext::from_bytes(c)?;
                    let noise = Zeroizing::new(match &self.session.sum_noise {
                        Some(n) => n.mechanism()?.release(0)?,
                        None => 0,
                    });
                    elements.push(self.secret.decrypt_to_element(&c, *noise));
                }
                Ok((Message::DecryptedMaskedSums { elements }, self.records))
            }
            other => Err(unexpected("the masked sums", &other)),
        }
    }
}
