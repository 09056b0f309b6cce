//! Pieces the protocols share: sending a blinded set in batches, re-blinding a peer's set into
//! tags, streaming a values holder's encrypted records and adding up the matched ones (both
//! sums), and the generic shapes of a protocol step.

use rayon::prelude::*;

use crate::elgamal::{Ciphertext, PublicKey};
use crate::group::{Point, SessionKey, Tag, TagSet};
use crate::input::{Data, PreparedInput};
use crate::wire::Message;
use crate::{PsiError, Session};

/// The result of a sending step: another message and the same phase, or the phase's last
/// message and the next phase.
pub enum Emit<S, N> {
    More(Message, S),
    Last(Message, N),
}

/// The result of a receiving step: stay in the phase, or move on.
pub enum Absorb<S, N> {
    More(S),
    Next(N),
}

/// What a side of a two-way phase wants to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Send,
    Receive,
    Done,
}

/// Turn-taking for phases where both sides stream at once (ECDH cardinality and
/// intersection): each side sends its part of a round, then receives the peer's, so both
/// re-blind what they received at the same time instead of one idling while the other
/// multiplies. A side that has nothing left to send only receives; a side that expects nothing
/// more from its peer sends without waiting.
///
/// Deadlock-free: a side waits only while it expects the peer to send and either the peer has
/// a message for it in flight or it is the peer's turn. Bounded: while both sides still send
/// and receive, at most two rounds (up to four messages) per direction are in flight, and a
/// side that sends more at once (it expects nothing more) does so to a peer that only reads:
/// a transport needs only a small send queue to keep both sides busy, and a test drives the
/// protocols with room for a single message per direction.
#[derive(Debug, Default)]
pub(crate) struct Rounds {
    waiting: bool,
}

impl Rounds {
    /// `ready`: we have a message to send; `expecting`: the peer will send us something
    /// without waiting for more from us.
    pub(crate) fn want(&self, ready: bool, expecting: bool) -> Want {
        if ready && (!self.waiting || !expecting) {
            Want::Send
        } else if expecting {
            Want::Receive
        } else {
            Want::Done
        }
    }

    /// We sent the last message of our part of the round.
    pub(crate) fn sent(&mut self) {
        self.waiting = true;
    }

    /// We received a message; `round_over` if it was the last of the peer's part.
    pub(crate) fn received(&mut self, round_over: bool) {
        if round_over {
            self.waiting = false;
        }
    }
}

pub(crate) fn unexpected(expected: &'static str, got: &Message) -> PsiError {
    PsiError::Unexpected {
        expected,
        got: got.name(),
    }
}

/// Streams per-kind sets of singly-blinded points, kind by kind, in their sorted order.
pub(crate) struct SetStream {
    sets: Vec<Vec<Point>>,
    kind: usize,
    pos: usize,
    batch: usize,
    sent: u64,
}

impl SetStream {
    pub(crate) fn new(sets: Vec<Vec<Point>>, batch: usize) -> Self {
        SetStream {
            sets,
            kind: 0,
            pos: 0,
            batch,
            sent: 0,
        }
    }

    /// The next batch, or the end-of-stream message.
    pub(crate) fn next(&mut self) -> (Message, bool) {
        while self.kind < self.sets.len() {
            let set = &self.sets[self.kind];
            if self.pos < set.len() {
                let end = (self.pos + self.batch).min(set.len());
                let points = set[self.pos..end].to_vec();
                self.sent += (end - self.pos) as u64;
                self.pos = end;
                return (
                    Message::Points {
                        kind: self.kind as u8,
                        points,
                    },
                    false,
                );
            }
            // Free each kind once sent.
            self.sets[self.kind] = Vec::new();
            self.kind += 1;
            self.pos = 0;
        }
        (Message::End { count: self.sent }, true)
    }
}

/// Counts what a peer streams against what it announced.
pub(crate) struct Expect {
    announced: Vec<u64>,
    received: Vec<u64>,
}

impl Expect {
    pub(crate) fn new(announced: Vec<u64>) -> Self {
        let n = announced.len();
        Expect {
            announced,
            received: vec![0; n],
        }
    }

    pub(crate) fn take(&mut self, section: usize, n: usize) -> Result<(), PsiError> {
        let slot = self
            .received
            .get_mut(section)
            .ok_or_else(|| PsiError::Malformed(format!("section {section} does not exist")))?;
        *slot += n as u64;
        if *slot > self.announced[section] {
            return Err(PsiError::CountMismatch(format!(
                "more entries of section {section} than the {} announced",
                self.announced[section]
            )));
        }
        Ok(())
    }

    pub(crate) fn finish(&self, count: u64) -> Result<(), PsiError> {
        let total: u64 = self.received.iter().sum();
        if self.received != self.announced || count != total {
            return Err(PsiError::CountMismatch(format!(
                "the stream ended after {total} entries; {} were announced",
                self.announced.iter().sum::<u64>()
            )));
        }
        Ok(())
    }

    pub(crate) fn total(&self) -> u64 {
        self.received.iter().sum()
    }
}

/// Receives a peer's per-kind blinded set and keeps the tags of its re-blinding in hash sets.
pub(crate) struct SetSink {
    pub(crate) sets: Vec<TagSet>,
    expect: Expect,
}

impl SetSink {
    pub(crate) fn new(announced: Vec<u64>) -> Self {
        let sets = announced
            .iter()
            .map(|n| TagSet::with_capacity_and_hasher(prealloc(*n), Default::default()))
            .collect();
        SetSink {
            sets,
            expect: Expect::new(announced),
        }
    }

    /// Absorbs one message; `true` once the stream has ended.
    pub(crate) fn absorb(&mut self, key: &SessionKey, msg: Message) -> Result<bool, PsiError> {
        match msg {
            Message::Points { kind, points } => {
                self.expect.take(kind as usize, points.len())?;
                let tags = key.reblind_tags(&points)?;
                self.sets[kind as usize].extend(tags);
                Ok(false)
            }
            Message::End { count } => {
                self.expect.finish(count)?;
                Ok(true)
            }
            other => Err(unexpected("blinded points or end of stream", &other)),
        }
    }
}

/// Receives tags of our own set re-blinded by the peer, one section per kind.
pub(crate) struct TagSink {
    pub(crate) sets: Vec<TagSet>,
    expect: Expect,
}

impl TagSink {
    pub(crate) fn new(announced: Vec<u64>) -> Self {
        let sets = announced
            .iter()
            .map(|n| TagSet::with_capacity_and_hasher(*n as usize, Default::default()))
            .collect();
        TagSink {
            sets,
            expect: Expect::new(announced),
        }
    }

    pub(crate) fn absorb(&mut self, msg: Message) -> Result<bool, PsiError> {
        match msg {
            Message::Tags {
                section,
                width: 1,
                tags,
            } => {
                self.expect.take(section as usize, tags.len())?;
                self.sets[section as usize].extend(tags);
                Ok(false)
            }
            Message::End { count } => {
                self.expect.finish(count)?;
                Ok(true)
            }
            other => Err(unexpected("tags or end of stream", &other)),
        }
    }
}

/// Re-blinds a peer's per-kind set and sends the tags back in sorted order, so the peer cannot
/// tell which of its points became which tag.
pub(crate) struct SortedReturn {
    per_kind: Vec<Vec<Tag>>,
    expect: Expect,
}

impl SortedReturn {
    pub(crate) fn new(announced: Vec<u64>) -> Self {
        SortedReturn {
            per_kind: announced
                .iter()
                .map(|n| Vec::with_capacity(prealloc(*n)))
                .collect(),
            expect: Expect::new(announced),
        }
    }

    pub(crate) fn absorb(&mut self, key: &SessionKey, msg: Message) -> Result<bool, PsiError> {
        match msg {
            Message::Points { kind, points } => {
                self.expect.take(kind as usize, points.len())?;
                let tags = key.reblind_tags(&points)?;
                self.per_kind[kind as usize].extend(tags);
                Ok(false)
            }
            Message::End { count } => {
                self.expect.finish(count)?;
                Ok(true)
            }
            other => Err(unexpected("blinded points or end of stream", &other)),
        }
    }

    pub(crate) fn into_stream(mut self, batch: usize) -> TagStream {
        for t in &mut self.per_kind {
            t.par_sort_unstable();
        }
        TagStream {
            per_kind: self.per_kind,
            kind: 0,
            pos: 0,
            batch,
            sent: 0,
        }
    }
}

pub(crate) struct TagStream {
    per_kind: Vec<Vec<Tag>>,
    kind: usize,
    pos: usize,
    batch: usize,
    sent: u64,
}

impl TagStream {
    pub(crate) fn next(&mut self) -> (Message, bool) {
        while self.kind < self.per_kind.len() {
            let tags = &self.per_kind[self.kind];
            if self.pos < tags.len() {
                let end = (self.pos + self.batch).min(tags.len());
                let out = tags[self.pos..end].to_vec();
                self.sent += (end - self.pos) as u64;
                self.pos = end;
                return (
                    Message::Tags {
                        section: self.kind as u8,
                        width: 1,
                        tags: out,
                    },
                    false,
                );
            }
            self.per_kind[self.kind] = Vec::new();
            self.kind += 1;
            self.pos = 0;
        }
        (Message::End { count: self.sent }, true)
    }
}

/// A values holder's distinct records, streamed as blinded slots (absent ones replaced by random
/// points) with each value encrypted under the holder's own key, in their sorted order.
pub(crate) struct EncryptedRecords {
    points: Vec<Point>,
    values: Vec<u64>,
    width: usize,
    pos: usize,
    per_msg: usize,
}

impl EncryptedRecords {
    pub(crate) fn new(points: Vec<Point>, values: Vec<u64>, width: usize, batch: usize) -> Self {
        EncryptedRecords {
            points,
            values,
            width,
            pos: 0,
            per_msg: records_per_message(batch, width),
        }
    }

    /// The next batch, or the end-of-stream message (`true`).
    pub(crate) fn next(&mut self, pk: &PublicKey) -> Result<(Message, bool), PsiError> {
        let (w, n) = (self.width, self.values.len());
        if self.pos < n {
            let end = (self.pos + self.per_msg).min(n);
            let points = crate::cardinality::pad(&self.points[self.pos * w..end * w])?;
            let ciphertexts = self.values[self.pos..end]
                .par_iter()
                .map(|v| {
                    let v = i64::try_from(*v)
                        .map_err(|_| PsiError::InvalidParameter("a value exceeds 2^63".into()))?;
                    Ok(pk.encrypt(v)?.to_bytes())
                })
                .collect::<Result<Vec<_>, PsiError>>()?;
            self.pos = end;
            return Ok((
                Message::SumRecords {
                    width: w as u8,
                    points,
                    ciphertexts,
                },
                false,
            ));
        }
        self.points = Vec::new();
        self.values = Vec::new();
        Ok((Message::End { count: n as u64 }, true))
    }
}

/// Re-blinds a values holder's encrypted records, finds for each the first kind (priority
/// order) whose tag is in our re-blinded set of that kind, and adds its ciphertext to that
/// kind's encrypted sum. Only counts and `width` ciphertexts are kept, whatever the input size.
pub(crate) struct EncryptedSums {
    width: usize,
    expect: Expect,
    counts: Vec<u64>,
    sums: Vec<Ciphertext>,
}

impl EncryptedSums {
    pub(crate) fn new(records: u64, width: usize) -> Self {
        EncryptedSums {
            width,
            expect: Expect::new(vec![records]),
            counts: vec![0; width],
            sums: vec![Ciphertext::zero(); width],
        }
    }

    /// Absorbs one message of the stream; `true` once it has ended.
    pub(crate) fn absorb(
        &mut self,
        key: &SessionKey,
        sets: &[TagSet],
        msg: Message,
    ) -> Result<bool, PsiError> {
        let w = self.width;
        match msg {
            Message::SumRecords {
                width,
                points,
                ciphertexts,
            } if width as usize == w => {
                self.expect.take(0, ciphertexts.len())?;
                let tags = key.reblind_tags(&points)?;
                for (t, c) in tags.chunks_exact(w).zip(&ciphertexts) {
                    if let Some(k) = (0..w).find(|k| sets[*k].contains(&t[*k])) {
                        self.counts[k] += 1;
                        self.sums[k] = self.sums[k].add(&Ciphertext::from_bytes(c)?);
                    }
                }
                Ok(false)
            }
            Message::End { count } => {
                self.expect.finish(count)?;
                Ok(true)
            }
            other => Err(unexpected("encrypted records or end of stream", &other)),
        }
    }

    /// Matched records per kind, exact.
    pub(crate) fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// The encrypted sums per kind, not yet re-randomised: never send them as they are.
    pub(crate) fn sums(&self) -> &[Ciphertext] {
        &self.sums
    }
}

// ------------------------------------------- the identifiers-only side of both sums, steps 1–4

/// Both sums, identifiers-only side, step 1: sending its blinded set. Built by
/// [`crate::sum::learner`] or [`crate::sum_to_holder::sender`], which check the session first.
pub struct SetSending {
    session: Session,
    key: SessionKey,
    stream: SetStream,
    own: Vec<u64>,
}

impl SetSending {
    /// For a session already checked for its protocol and this party's role.
    pub(crate) fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        let own = input.announced_items();
        let Data::Set(sets) = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        Ok(SetSending {
            stream: SetStream::new(sets, session.batch),
            session,
            key: input.key,
            own,
        })
    }

    pub fn emit(mut self) -> Result<Emit<Self, TagsCollecting>, PsiError> {
        let (msg, last) = self.stream.next();
        if !last {
            return Ok(Emit::More(msg, self));
        }
        Ok(Emit::Last(
            msg,
            TagsCollecting {
                sink: TagSink::new(self.own),
                session: self.session,
                key: self.key,
            },
        ))
    }
}

/// Both sums, identifiers-only side, step 2: keeping its own set, re-blinded by the values
/// holder and sorted.
pub struct TagsCollecting {
    session: Session,
    key: SessionKey,
    sink: TagSink,
}

impl TagsCollecting {
    pub fn absorb(mut self, msg: Message) -> Result<Absorb<Self, KeyAwaiting>, PsiError> {
        if self.sink.absorb(msg)? {
            Ok(Absorb::Next(KeyAwaiting {
                session: self.session,
                key: self.key,
                sink: self.sink,
            }))
        } else {
            Ok(Absorb::More(self))
        }
    }
}

/// Both sums, identifiers-only side, step 3: waiting for the values holder's public key.
pub struct KeyAwaiting {
    session: Session,
    key: SessionKey,
    sink: TagSink,
}

impl KeyAwaiting {
    pub fn absorb(self, msg: Message) -> Result<RecordsMatching, PsiError> {
        match msg {
            Message::PublicKey(b) => Ok(RecordsMatching {
                pk: PublicKey::from_bytes(&b)?,
                sums: EncryptedSums::new(self.session.peer_items[0], self.session.kinds.len()),
                session: self.session,
                key: self.key,
                sink: self.sink,
            }),
            other => Err(unexpected("the values holder's public key", &other)),
        }
    }
}

/// Both sums, identifiers-only side, step 4: matching the values holder's records and adding
/// up their ciphertexts. What happens to the sums at the end is each protocol's own.
pub struct RecordsMatching {
    pub(crate) session: Session,
    key: SessionKey,
    sink: TagSink,
    pub(crate) pk: PublicKey,
    pub(crate) sums: EncryptedSums,
}

impl RecordsMatching {
    /// Absorbs one message of the records; `true` once they have all arrived.
    pub(crate) fn absorb(&mut self, msg: Message) -> Result<bool, PsiError> {
        self.sums.absorb(&self.key, &self.sink.sets, msg)
    }
}

/// Records per message so that one message stays within `MAX_BATCH` entries.
pub(crate) fn records_per_message(batch: usize, width: usize) -> usize {
    (batch / width.max(1)).clamp(1, crate::wire::MAX_BATCH / width.max(1))
}

/// Capacity reserved up front from a peer's announcement: never more than 2^20 entries, so an
/// announcement alone (checked against `--max-peer-items`, but possibly a lie) cannot make us
/// allocate much; the collections grow as entries really arrive.
pub(crate) fn prealloc(announced: u64) -> usize {
    announced.min(1 << 20) as usize
}
