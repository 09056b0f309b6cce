//! Pieces the protocols share: sending a blinded set in batches, re-blinding a peer's set into
//! tags, the turn-taking of two-way phases ([`Rounds`]), both sides of the two sums' exchange
//! (the values holder's encrypted records against the identifiers-only side's set, with the
//! matched ones added up), and the generic shapes of a protocol step.

use rayon::prelude::*;

use crate::elgamal::{Ciphertext, PublicKey, SecretKey};
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

/// Turn-taking for phases where both sides stream at once (ECDH cardinality, intersection and
/// both sums): each side sends its part of a round, then receives the peer's, so both
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

/// Counts what a peer streams against what it announced, and holds each of its messages to
/// what an honest peer sends: at least one entry (an empty batch would only keep a session
/// alive past its idle timeout) and at most `per_message` (the session's batch, or the records
/// that fit in one), so that what a party keeps per message received is bounded.
pub(crate) struct Expect {
    announced: Vec<u64>,
    received: Vec<u64>,
    per_message: usize,
}

impl Expect {
    pub(crate) fn new(announced: Vec<u64>, per_message: usize) -> Self {
        let n = announced.len();
        Expect {
            announced,
            received: vec![0; n],
            per_message,
        }
    }

    pub(crate) fn take(&mut self, section: usize, n: usize) -> Result<(), PsiError> {
        if n == 0 || n > self.per_message {
            return Err(PsiError::Malformed(format!(
                "a message of {n} entries; the session's messages hold 1 to {}",
                self.per_message
            )));
        }
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
    pub(crate) fn new(announced: Vec<u64>, batch: usize) -> Self {
        let sets = announced
            .iter()
            .map(|n| TagSet::with_capacity_and_hasher(prealloc(*n), Default::default()))
            .collect();
        SetSink {
            sets,
            expect: Expect::new(announced, batch),
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
    pub(crate) fn new(announced: Vec<u64>, batch: usize) -> Self {
        let sets = announced
            .iter()
            .map(|n| TagSet::with_capacity_and_hasher(*n as usize, Default::default()))
            .collect();
        TagSink {
            sets,
            expect: Expect::new(announced, batch),
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
    pub(crate) fn new(announced: Vec<u64>, batch: usize) -> Self {
        SortedReturn {
            per_kind: announced
                .iter()
                .map(|n| Vec::with_capacity(prealloc(*n)))
                .collect(),
            expect: Expect::new(announced, batch),
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
    count: usize,
    per_msg: usize,
}

impl EncryptedRecords {
    pub(crate) fn new(points: Vec<Point>, values: Vec<u64>, width: usize, batch: usize) -> Self {
        EncryptedRecords {
            count: values.len(),
            points,
            values,
            width,
            pos: 0,
            per_msg: records_per_message(batch, width),
        }
    }

    /// Whether records are left to send (the end of the stream is not one).
    pub(crate) fn remaining(&self) -> bool {
        self.pos < self.count
    }

    /// How many records the stream holds.
    pub(crate) fn count(&self) -> u64 {
        self.count as u64
    }

    /// The next batch, or the end-of-stream message (`true`).
    pub(crate) fn next(&mut self, key: &SecretKey) -> Result<(Message, bool), PsiError> {
        let (w, n) = (self.width, self.count);
        if self.pos < n {
            let end = (self.pos + self.per_msg).min(n);
            let points = crate::cardinality::pad(&self.points[self.pos * w..end * w])?;
            let ciphertexts = self.values[self.pos..end]
                .par_iter()
                .map(|v| {
                    let v = i64::try_from(*v)
                        .map_err(|_| PsiError::InvalidParameter("a value exceeds 2^63".into()))?;
                    Ok(key.encrypt(v)?.to_bytes())
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

/// Re-blinds a values holder's encrypted records and, once our own set re-blinded is complete,
/// finds for each record the first kind (priority order) whose tag is in our set of that kind
/// and adds its ciphertext to that kind's encrypted sum. Records that arrive before our set is
/// complete wait, as their tags and ciphertext; after that only counts and `width`
/// ciphertexts are kept, whatever the input size.
pub(crate) struct EncryptedSums {
    width: usize,
    expect: Expect,
    counts: Vec<u64>,
    sums: Vec<Ciphertext>,
    waiting_tags: Vec<Tag>,
    waiting: Vec<[u8; 64]>,
}

impl EncryptedSums {
    pub(crate) fn new(records: u64, width: usize, batch: usize) -> Self {
        EncryptedSums {
            width,
            expect: Expect::new(vec![records], records_per_message(batch, width)),
            counts: vec![0; width],
            sums: vec![Ciphertext::zero(); width],
            waiting_tags: Vec::new(),
            waiting: Vec::new(),
        }
    }

    /// Re-blinds one message's records; matches them at once if `sets` is complete, or keeps
    /// them until [`Self::release`].
    pub(crate) fn absorb(
        &mut self,
        key: &SessionKey,
        sets: Option<&[TagSet]>,
        width: u8,
        points: &[Point],
        ciphertexts: Vec<[u8; 64]>,
    ) -> Result<(), PsiError> {
        let w = self.width;
        if width as usize != w || points.len() != ciphertexts.len() * w {
            return Err(PsiError::Malformed(format!(
                "encrypted records of width {width} with {} points for {} ciphertexts; the \
                 session has {w} kinds",
                points.len(),
                ciphertexts.len()
            )));
        }
        self.expect.take(0, ciphertexts.len())?;
        let tags = key.reblind_tags(points)?;
        match sets {
            Some(sets) => self.add(sets, &tags, &ciphertexts),
            None => {
                self.waiting_tags.extend(tags);
                self.waiting.extend(ciphertexts);
                Ok(())
            }
        }
    }

    /// Matches the records that waited for our set, now complete.
    pub(crate) fn release(&mut self, sets: &[TagSet]) -> Result<(), PsiError> {
        let tags = std::mem::take(&mut self.waiting_tags);
        let ciphertexts = std::mem::take(&mut self.waiting);
        self.add(sets, &tags, &ciphertexts)
    }

    fn add(
        &mut self,
        sets: &[TagSet],
        tags: &[Tag],
        ciphertexts: &[[u8; 64]],
    ) -> Result<(), PsiError> {
        let w = self.width;
        for (t, c) in tags.chunks_exact(w).zip(ciphertexts) {
            if let Some(k) = (0..w).find(|k| sets[*k].contains(&t[*k])) {
                self.counts[k] += 1;
                self.sums[k] = self.sums[k].add(&Ciphertext::from_bytes(c)?);
            }
        }
        Ok(())
    }

    /// The end of the records, with the count the peer gives for them.
    pub(crate) fn finish(&self, count: u64) -> Result<(), PsiError> {
        self.expect.finish(count)
    }

    /// Records received so far.
    pub(crate) fn received(&self) -> u64 {
        self.expect.total()
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

// ------------------------------------------------------- both sums, both sides at once
//
// The identifiers-only side I (the learner of the default sum, the sender of the sum to the
// values holder) streams its blinded set; the values holder V re-blinds it and, once it has
// ended, returns it sorted. At the same time, in rounds ([`Rounds`]), V streams its public
// key and its encrypted records, which I re-blinds as they arrive: I's re-blinding of V's
// records and V's re-blinding of I's set run together. I can match a record only against its
// own set re-blinded, so the records that arrive before that wait (their tags and ciphertext).
// V sends the return as soon as I's set has ended, before any further record, and the end of
// its records only after the return: V's messages are its key, records, the return (tags,
// end), more records, the end of its records. So I keeps only the records V sent while I's
// set was still streaming, one of V's messages per one of I's (I refuses more, and more
// records in a message than the batch allows): at most batch·(16 + 64/K) bytes per message of
// I's set for K kinds, about (16 + 64/K) bytes per identifier of I's own set when its kinds
// fill their batches (a kind's last batch may be partial), plus a few batches in flight.

/// Both sums, identifiers-only side: sending its blinded set while re-blinding the values
/// holder's records; then matching them and adding up their ciphertexts. What happens to the
/// sums at the end is each protocol's own ([`Self::finish`]).
pub struct IdentifiersExchanging {
    session: Session,
    key: SessionKey,
    stream: SetStream,
    set_sent: bool,
    /// Messages of our set sent, and messages of records received before its return: an
    /// honest holder sends one of the second per one of the first at most.
    set_messages: u64,
    records_waiting: u64,
    pk: Option<PublicKey>,
    own: TagSink,
    own_complete: bool,
    sums: EncryptedSums,
    records_ended: bool,
    rounds: Rounds,
}

/// The identifiers-only side's result: the values holder's key, and the encrypted sums and
/// exact counts of its matched records per kind.
pub(crate) struct MatchedSums {
    pub(crate) session: Session,
    pub(crate) pk: PublicKey,
    pub(crate) sums: EncryptedSums,
}

impl IdentifiersExchanging {
    /// For a session already checked for its protocol and this party's role (by
    /// [`crate::sum::LearnerExchanging::new`] or [`crate::sum_to_holder::sender`]).
    pub(crate) fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        let own = input.announced_items();
        let Data::Set(sets) = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        Ok(IdentifiersExchanging {
            stream: SetStream::new(sets, session.batch),
            set_sent: false,
            set_messages: 0,
            records_waiting: 0,
            pk: None,
            own: TagSink::new(own, session.batch),
            own_complete: false,
            sums: EncryptedSums::new(session.peer_items[0], session.kinds.len(), session.batch),
            records_ended: false,
            rounds: Rounds::default(),
            session,
            key: input.key,
        })
    }

    /// `Done` once our set is sent and the values holder's records have ended (after the
    /// return of our set).
    pub fn want(&self) -> Want {
        // Until our set has ended the holder sends its key and then a batch of records per
        // round; once all its records are here it has nothing for us before the end of our set.
        let before_return = self.pk.is_none() || self.sums.received() < self.session.peer_items[0];
        let expecting = !self.records_ended && (before_return || self.set_sent);
        self.rounds.want(!self.set_sent, expecting)
    }

    /// The next batch of our set, or its end.
    pub fn emit(&mut self) -> Message {
        self.rounds.sent();
        self.set_messages += 1;
        let (m, last) = self.stream.next();
        self.set_sent = last;
        m
    }

    /// The values holder's key (first), its records, our set re-blinded and their ends.
    pub fn absorb(&mut self, msg: Message) -> Result<(), PsiError> {
        match msg {
            Message::PublicKey(b) if self.pk.is_none() => {
                self.pk = Some(PublicKey::from_bytes(&b)?);
            }
            ref other if self.pk.is_none() => {
                return Err(unexpected("the values holder's public key", other));
            }
            Message::SumRecords {
                width,
                points,
                ciphertexts,
            } if !self.records_ended => {
                if !self.own_complete {
                    // These wait for our set: no more of them than messages of our set, or a
                    // holder could hold back the return and make us keep all its records.
                    self.records_waiting += 1;
                    if self.records_waiting > self.set_messages {
                        return Err(PsiError::Unexpected {
                            expected: "our set re-blinded, returned as soon as it has ended",
                            got: "more encrypted records",
                        });
                    }
                }
                let sets = self.own_complete.then_some(&self.own.sets[..]);
                self.sums
                    .absorb(&self.key, sets, width, &points, ciphertexts)?;
            }
            // The return of our set comes after its end and ends before the values holder's
            // records do.
            msg @ (Message::Tags { .. } | Message::End { .. })
                if self.set_sent && !self.own_complete =>
            {
                if self.own.absorb(msg)? {
                    self.own_complete = true;
                    self.sums.release(&self.own.sets)?;
                }
            }
            Message::End { count } if self.own_complete && !self.records_ended => {
                self.sums.finish(count)?;
                self.records_ended = true;
            }
            other => {
                return Err(unexpected(
                    "encrypted records, or our set re-blinded",
                    &other,
                ));
            }
        }
        self.rounds.received(true);
        Ok(())
    }

    /// Once [`Self::want`] says `Done`.
    pub(crate) fn finish(self) -> Result<MatchedSums, PsiError> {
        match self.pk {
            Some(pk) if self.records_ended && self.own_complete && self.set_sent => {
                Ok(MatchedSums {
                    session: self.session,
                    pk,
                    sums: self.sums,
                })
            }
            _ => Err(PsiError::Internal(
                "the sum's exchange finished before its end".into(),
            )),
        }
    }
}

/// Both sums, values holder's side: sending its public key and its encrypted records while
/// re-blinding the identifiers-only side's set; once that set has ended, returning it sorted
/// (before the rest of the records and their end).
pub struct HolderExchanging {
    session: Session,
    key: SessionKey,
    secret: SecretKey,
    pk_sent: bool,
    records: EncryptedRecords,
    set: Option<SortedReturn>,
    back: Option<TagStream>,
    returned: bool,
    ended: bool,
    rounds: Rounds,
}

impl HolderExchanging {
    /// For a session and input already checked (values within bounds, the range decryptable)
    /// by [`crate::sum::HolderExchanging::new`] or [`crate::sum_to_holder::ReceiverExchanging::new`].
    pub(crate) fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        let Data::Tuples { points, values } = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        Ok(HolderExchanging {
            secret: SecretKey::generate()?,
            pk_sent: false,
            records: EncryptedRecords::new(points, values, session.kinds.len(), session.batch),
            set: Some(SortedReturn::new(session.peer_items.clone(), session.batch)),
            back: None,
            returned: false,
            ended: false,
            rounds: Rounds::default(),
            session,
            key: input.key,
        })
    }

    /// `Done` once the peer's set is returned and our records have ended.
    pub fn want(&self) -> Want {
        let ready = !self.pk_sent
            || self.back.is_some()
            || self.records.remaining()
            || (self.returned && !self.ended);
        self.rounds.want(ready, self.set.is_some())
    }

    /// Our key first; then the return of the peer's set as soon as it is ready, else our next
    /// records; the end of our records last.
    pub fn emit(&mut self) -> Result<Message, PsiError> {
        self.rounds.sent();
        if !self.pk_sent {
            self.pk_sent = true;
            return Ok(Message::PublicKey(self.secret.public().to_bytes()));
        }
        if let Some(back) = &mut self.back {
            let (m, last) = back.next();
            if last {
                self.back = None;
                self.returned = true;
            }
            return Ok(m);
        }
        if !self.records.remaining() && !self.returned {
            return Err(PsiError::Internal(
                "the end of the records before the return of the peer's set".into(),
            ));
        }
        let (m, last) = self.records.next(&self.secret)?;
        self.ended = last;
        Ok(m)
    }

    /// A batch of the peer's set, re-blinded as it arrives, or its end.
    pub fn absorb(&mut self, msg: Message) -> Result<(), PsiError> {
        let Some(set) = &mut self.set else {
            return Err(unexpected("nothing (the peer's set has ended)", &msg));
        };
        if set.absorb(&self.key, msg)?
            && let Some(set) = self.set.take()
        {
            self.back = Some(set.into_stream(self.session.batch));
        }
        self.rounds.received(true);
        Ok(())
    }

    /// Once [`Self::want`] says `Done`: the session, our secret key and how many records we
    /// sent.
    pub(crate) fn finish(self) -> Result<(Session, SecretKey, u64), PsiError> {
        if !(self.ended && self.returned) {
            return Err(PsiError::Internal(
                "the sum's exchange finished before its end".into(),
            ));
        }
        let records = self.records.count();
        Ok((self.session, self.secret, records))
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
