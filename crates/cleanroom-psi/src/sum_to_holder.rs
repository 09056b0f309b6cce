//! PSI-sum to the values holder (`--sum-to values-holder`), as in the paper of Google's Private
//! Join and Compute (Ion et al., EuroS&P 2020), with an identifier cascade. The receiver R holds records with values and an ElGamal key; the sender
//! S holds identifiers. R learns the number of its distinct records that match and the sum of
//! their values, per kind; S learns the counts. Neither learns which records match.
//!
//! 1. At once, in rounds ([`crate::stream::Rounds`]), so that both multiply at the same time:
//!    - S → R: S's distinct identifiers per kind, `H_t(y)^s`, sorted. R re-blinds them.
//!    - R → S: R's public key, then its distinct records, sorted: `(H_1(x_1)^r, …,
//!      H_K(x_K)^r, Enc(v))` with absent slots random and `v` the sum of the record's clamped
//!      values. S re-blinds each slot as they arrive.
//! 2. R → S, as soon as S's set has ended (before the rest of its records): S's set
//!    re-blinded, as tags of `H_t(y)^{sr}`, sorted again (so S cannot tell which of its
//!    identifiers became which tag). S keeps them in one hash set per kind.
//! 3. For each record (those that arrived before step 2 waited), S finds the first kind whose
//!    tag is in its set, and adds `Enc(v)` to that kind's encrypted sum. At the end of R's
//!    records, S → R: per-kind counts and sums, each sum plus `Enc(noise)` when asked for,
//!    and re-randomised in any case, so R cannot relate a sum to the ciphertexts it sent.
//! 4. R decrypts each sum by baby-step giant-step over `[−allowance, total of its values +
//!    allowance]`.

use crate::elgamal::{Ciphertext, Decryptor, SecretKey};
use crate::input::PreparedInput;
use crate::stream::{HolderExchanging, IdentifiersExchanging, Want, unexpected};
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

/// Receiver, steps 1–2: sending its public key and encrypted records while re-blinding the
/// sender's set, and returning that set sorted once it has ended.
pub struct ReceiverExchanging {
    exchange: HolderExchanging,
    total: u64,
}

impl ReceiverExchanging {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Receiver)?;
        let total = input.value_total()?;
        // Fail before any work if the sum could not be decrypted.
        range(total, session.sum_noise_allowance())?;
        Ok(ReceiverExchanging {
            exchange: HolderExchanging::new(session, input)?,
            total,
        })
    }

    /// What to do next; `Done` once the sender's set is returned and our records have ended.
    pub fn want(&self) -> Want {
        self.exchange.want()
    }

    pub fn emit(&mut self) -> Result<Message, PsiError> {
        self.exchange.emit()
    }

    pub fn absorb(&mut self, msg: Message) -> Result<(), PsiError> {
        self.exchange.absorb(msg)
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

/// Receiver, step 4: waiting for the encrypted sums.
pub struct ReceiverAwaiting {
    session: Session,
    secret: SecretKey,
    range: (i64, i64),
}

impl ReceiverAwaiting {
    /// Once [`ReceiverExchanging::want`] says `Done`.
    pub fn new(exchange: ReceiverExchanging) -> Result<Self, PsiError> {
        let total = exchange.total;
        let (session, secret, _) = exchange.exchange.finish()?;
        Ok(ReceiverAwaiting {
            range: range(total, session.sum_noise_allowance())?,
            session,
            secret,
        })
    }

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

/// Sender, steps 1–3: sending its blinded set while re-blinding the receiver's records, then
/// matching them and adding up their ciphertexts.
pub type SenderExchanging = IdentifiersExchanging;

/// Sender, step 1, for a session of this protocol in the sender's role.
pub fn sender(session: Session, input: PreparedInput) -> Result<SenderExchanging, PsiError> {
    check(&session, &input, Role::Sender)?;
    IdentifiersExchanging::new(session, input)
}

/// Sender, end of step 3, once [`IdentifiersExchanging::want`] says `Done`: the result message
/// for the receiver and this side's counts.
pub fn result(exchange: SenderExchanging) -> Result<(Message, MatchCounts), PsiError> {
    let m = exchange.finish()?;
    let counts = m.session.release_counts(m.sums.counts())?;
    let mut sums = Vec::with_capacity(counts.len());
    for s in m.sums.sums() {
        let noisy = match &m.session.sum_noise {
            Some(n) => s.add(&m.pk.encrypt(n.mechanism()?.release(0)?)?),
            None => *s,
        };
        sums.push(m.pk.rerandomise(&noisy)?.to_bytes());
    }
    Ok((
        Message::SumResult {
            counts: counts.clone(),
            sums,
        },
        MatchCounts::new(counts, m.session.count_noise.is_some()),
    ))
}
