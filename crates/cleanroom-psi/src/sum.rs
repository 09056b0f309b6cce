//! PSI-sum to the party without values (`--protocol sum`, the default), with an identifier
//! cascade. The *learner* L (the receiver) holds identifiers only; the *values holder* H (the
//! sender) holds records with values and an ElGamal key pair. L learns how many of H's distinct
//! records match, and the sum of their values, per kind; H learns nothing but L's number of
//! distinct identifiers per kind.
//!
//! 1. At once, in rounds ([`crate::stream::Rounds`]), so that both multiply at the same time:
//!    - L → H: L's distinct identifiers per kind, `H_t(y)^l`, sorted. H re-blinds them.
//!    - H → L: H's public key `X`, then its distinct records, sorted:
//!      `(H_1(x_1)^h, …, H_K(x_K)^h, Enc_X(v))`, absent slots random, `v` the record's clamped
//!      (and, for duplicate records, added) value. L re-blinds each slot as they arrive.
//! 2. H → L, as soon as L's set has ended (before the rest of its records): L's set
//!    re-blinded, as tags of `H_t(y)^{lh}`, sorted again (so L cannot tell which of its
//!    identifiers became which tag). L keeps them in one hash set per kind.
//! 3. For each record (those that arrived before step 2 waited), L finds the first kind whose
//!    tag is in its set and adds `Enc_X(v)` to that kind's encrypted sum `C_k = Enc_X(S_k)`.
//!    At the end of H's records, L draws a uniformly random scalar `r_k` per kind and sends
//!    `C_k + Enc_X(r_k)` with fresh randomness (masked and re-randomised).
//! 4. H decrypts each only as far as the group element `M_k = (S_k + r_k + z_k)·G`, with
//!    discrete Laplace noise `z_k` when the session requires noise on the sum, and sends the
//!    `M_k` back. For a uniform `r_k`, `M_k` is a uniform group element: H learns nothing about
//!    `S_k`. The fresh randomness of step 3 stops H from relating `C_k` to its own ciphertexts.
//! 5. L computes `M_k − r_k·G = (S_k + z_k)·G` and finds `S_k + z_k` by baby-step giant-step
//!    over `[−allowance, matched_k × max_value + allowance]`; the session refused at the start
//!    any values holder whose records could add up past that range (`elgamal::MAX_RANGE`).
//!
//! L finds the matches itself, so it sees the counts exactly: noise on them could not protect
//! H, and a session asking for it is refused. Semi-honest security only: a learner that sends
//! one record's ciphertext instead of a sum learns that value (see `docs/psi.md`).
//!
//! Each phase is a type that consumes itself into the next, so phases cannot run out of order:
//! the values holder cannot decrypt anything before it has sent all its records. Within the
//! exchange, where both sides send and receive in rounds, the order of messages is checked at
//! run time (`stream.rs`): a message out of turn is refused.
//!
//! ```compile_fail
//! use cleanroom_psi::sum::{HolderDecrypting, HolderExchanging};
//! fn too_early(h: HolderExchanging) -> HolderDecrypting {
//!     h.into() // only the end of the exchange leads there
//! }
//! ```

use zeroize::Zeroizing;

use crate::elgamal::{Ciphertext, Decryptor, Mask, SecretKey};
use crate::input::PreparedInput;
use crate::stream::{IdentifiersExchanging, unexpected};
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

/// Learner, steps 1–3: sending its blinded set while re-blinding the values holder's records,
/// then matching them and adding up their ciphertexts.
pub type LearnerExchanging = IdentifiersExchanging;

/// Learner, step 1, for a session of this protocol in the receiver's role.
pub fn learner(session: Session, input: PreparedInput) -> Result<LearnerExchanging, PsiError> {
    check(&session, &input, Role::Receiver)?;
    IdentifiersExchanging::new(session, input)
}

/// Learner, end of step 3, once [`IdentifiersExchanging::want`] says `Done`: each sum masked
/// and re-randomised for the values holder, and the next step.
pub fn mask(exchange: LearnerExchanging) -> Result<(Message, LearnerUnmasking), PsiError> {
    let m = exchange.finish()?;
    let mut masks = Vec::with_capacity(m.sums.sums().len());
    let mut masked = Vec::with_capacity(masks.capacity());
    for c in m.sums.sums() {
        let mask = Mask::generate()?;
        masked.push(m.pk.mask(c, &mask)?.to_bytes());
        masks.push(mask);
    }
    Ok((
        Message::MaskedSums { sums: masked },
        LearnerUnmasking {
            counts: m.sums.counts().to_vec(),
            session: m.session,
            masks,
        },
    ))
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

/// Values holder, steps 1–2: sending its public key and encrypted records while re-blinding
/// the learner's set, and returning that set sorted once it has ended.
pub type HolderExchanging = crate::stream::HolderExchanging;

/// Values holder, step 1, for a session of this protocol in the sender's role.
pub fn holder(session: Session, input: PreparedInput) -> Result<HolderExchanging, PsiError> {
    check(&session, &input, Role::Sender)?;
    // Refuses values that overflow before any work.
    input.value_total()?;
    crate::stream::HolderExchanging::new(session, input)
}

/// Values holder, step 4: decrypting the masked sums to group elements, with noise if the
/// session requires it. What the holder sees is uniformly random.
pub struct HolderDecrypting {
    session: Session,
    secret: SecretKey,
    records: u64,
}

impl HolderDecrypting {
    /// Once [`HolderExchanging::want`] says `Done`.
    pub fn new(exchange: HolderExchanging) -> Result<Self, PsiError> {
        let (session, secret, records) = exchange.finish()?;
        Ok(HolderDecrypting {
            session,
            secret,
            records,
        })
    }

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
