//! PSI-cardinality: both parties learn how many of the receiver's distinct records match, per
//! identifier kind in the cascade, and nothing else but set sizes.
//!
//! 1. At once, in rounds ([`crate::stream::Rounds`]), so that both multiply at the same time:
//!    - S → R: S's distinct identifiers per kind, `H_t(y)^s`, sorted. R keeps the tags of
//!      `H_t(y)^{sr}` in one hash set per kind.
//!    - R → S: R's distinct records as tuples `(H_1(x_1)^r, …, H_K(x_K)^r)`, absent slots
//!      random. S re-blinds them to tags of `H(x)^{rs}`.
//! 2. S → R, once R's records have all arrived (and after the rest of S's set): every tuple
//!    of tags, in sorted order (not R's order), so R cannot tell which of its records a
//!    returned tuple is.
//! 3. R checks each returned tuple's slots in priority order against its hash sets (the first
//!    kind that matches counts), adds noise if asked, and sends the counts to S.
//!
//! Each step is a type that consumes itself, so steps cannot run out of order: a sender that
//! has not absorbed the end of the receiver's records has no way to return them.
//!
//! ```compile_fail
//! use cleanroom_psi::cardinality::{SenderExchanging, SenderReturning};
//! fn too_early(s: SenderExchanging) -> SenderReturning {
//!     s.into() // only absorbing the end of the receiver's records leads there
//! }
//! ```

use rayon::prelude::*;

use crate::group::{Point, SessionKey, Tag, random_point};
use crate::input::{ABSENT, Data, PreparedInput};
use crate::stream::{
    Absorb, Emit, Expect, Rounds, SetSink, SetStream, Want, records_per_message, unexpected,
};
use crate::wire::{Message, ProtocolKind, Role};
use crate::{MatchCounts, PsiError, Session};

fn check(session: &Session, input: &PreparedInput, role: Role) -> Result<(), PsiError> {
    if session.protocol != ProtocolKind::Cardinality || session.role != role {
        return Err(PsiError::InvalidParameter(
            "this session is not a cardinality session in this role".into(),
        ));
    }
    input.check_fits(session)
}

// ---------------------------------------------------------------- receiver

/// Receiver: sending its records while absorbing the sender's set, then absorbing its records
/// re-blinded and counting matches.
pub struct ReceiverExchanging {
    session: Session,
    key: SessionKey,
    tuples: Vec<Point>,
    sink: SetSink,
    set_ended: bool,
    pos: usize,
    per_msg: usize,
    end_sent: bool,
    returned: Expect,
    returned_ended: bool,
    counts: Vec<u64>,
    rounds: Rounds,
}

impl ReceiverExchanging {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Receiver)?;
        let Data::Tuples { points, .. } = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        let w = session.kinds.len();
        let n = (points.len() / w) as u64;
        let per_msg = records_per_message(session.batch, w);
        Ok(ReceiverExchanging {
            sink: SetSink::new(session.peer_items.clone(), session.batch),
            per_msg,
            set_ended: false,
            pos: 0,
            end_sent: false,
            returned: Expect::new(vec![n], per_msg),
            returned_ended: false,
            counts: vec![0; w],
            rounds: Rounds::default(),
            session,
            key: input.key,
            tuples: points,
        })
    }

    /// What to do next: `Done` once the sender's set and all our records re-blinded arrived.
    pub fn want(&self) -> Want {
        // The sender returns our records only after the end of them.
        let expecting = !self.set_ended || (self.end_sent && !self.returned_ended);
        self.rounds.want(!self.end_sent, expecting)
    }

    /// The next batch of records, or their end.
    pub fn emit(&mut self) -> Result<Message, PsiError> {
        self.rounds.sent();
        let w = self.session.kinds.len();
        let n = self.tuples.len() / w;
        if self.pos < n {
            let end = (self.pos + self.per_msg).min(n);
            let points = pad(&self.tuples[self.pos * w..end * w])?;
            self.pos = end;
            return Ok(Message::Tuples {
                width: w as u8,
                points,
            });
        }
        self.tuples = Vec::new();
        self.end_sent = true;
        Ok(Message::End { count: n as u64 })
    }

    /// A batch of the sender's set or its end; then our records re-blinded, or their end.
    pub fn absorb(&mut self, msg: Message) -> Result<(), PsiError> {
        let w = self.session.kinds.len();
        match msg {
            msg @ (Message::Points { .. } | Message::End { .. }) if !self.set_ended => {
                self.set_ended = self.sink.absorb(&self.key, msg)?;
            }
            // The return comes after the sender's whole set, and only once our records ended.
            Message::Tags { width, tags, .. }
                if width as usize == w
                    && self.set_ended
                    && self.end_sent
                    && !self.returned_ended =>
            {
                self.returned.take(0, tags.len() / w)?;
                for t in tags.chunks_exact(w) {
                    if let Some(k) = (0..w).find(|k| self.sink.sets[*k].contains(&t[*k])) {
                        self.counts[k] += 1;
                    }
                }
            }
            Message::End { count } if self.set_ended && self.end_sent && !self.returned_ended => {
                self.returned.finish(count)?;
                self.returned_ended = true;
            }
            other => {
                return Err(unexpected(
                    "the sender's set, or our records re-blinded",
                    &other,
                ));
            }
        }
        self.rounds.received(true);
        Ok(())
    }

    /// Once [`Self::want`] says `Done`: the message with the released counts for the sender,
    /// and this side's output.
    pub fn finish(self) -> Result<(Message, MatchCounts), PsiError> {
        let released = self.session.release_counts(&self.counts)?;
        Ok((
            Message::CardinalityResult {
                counts: released.clone(),
            },
            MatchCounts::new(released, self.session.count_noise.is_some()),
        ))
    }
}

/// Replaces absent slots by random points.
pub(crate) fn pad(points: &[Point]) -> Result<Vec<Point>, PsiError> {
    points
        .iter()
        .map(|p| if *p == ABSENT { random_point() } else { Ok(*p) })
        .collect()
}

// ---------------------------------------------------------------- sender

/// Sender: sending its blinded set while re-blinding the receiver's records.
pub struct SenderExchanging {
    session: Session,
    key: SessionKey,
    stream: SetStream,
    set_done: bool,
    expect: Expect,
    tags: Vec<Tag>,
    rounds: Rounds,
}

impl SenderExchanging {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Sender)?;
        let Data::Set(sets) = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        let n = session.peer_items[0];
        Ok(SenderExchanging {
            stream: SetStream::new(sets, session.batch),
            set_done: false,
            expect: Expect::new(
                vec![n],
                records_per_message(session.batch, session.kinds.len()),
            ),
            tags: Vec::with_capacity(crate::stream::prealloc(n) * session.kinds.len()),
            rounds: Rounds::default(),
            session,
            key: input.key,
        })
    }

    /// Send the next batch of the set, or receive the receiver's next records: never `Done`,
    /// the phase ends with the end of the receiver's records.
    pub fn want(&self) -> Want {
        self.rounds.want(!self.set_done, true)
    }

    /// The next batch of the set, or its end.
    pub fn emit(&mut self) -> Message {
        self.rounds.sent();
        let (m, last) = self.stream.next();
        self.set_done = last;
        m
    }

    /// The receiver's records, re-blinded as they arrive; at their end, the sorted return.
    pub fn absorb(mut self, msg: Message) -> Result<Absorb<Self, SenderReturning>, PsiError> {
        let w = self.session.kinds.len();
        match msg {
            Message::Tuples { width, points } if width as usize == w => {
                self.expect.take(0, points.len() / w)?;
                let tags = self.key.reblind_tags(&points)?;
                self.tags.extend(tags);
                self.rounds.received(true);
                Ok(Absorb::More(self))
            }
            Message::End { count } => {
                self.expect.finish(count)?;
                let n = self.tags.len() / w;
                let tags = &self.tags;
                let mut order: Vec<u32> = (0..n as u32).collect();
                // Sorted by value: an order the receiver cannot relate to its own.
                order.par_sort_unstable_by(|a, b| {
                    let (a, b) = (*a as usize, *b as usize);
                    tags[a * w..(a + 1) * w].cmp(&tags[b * w..(b + 1) * w])
                });
                Ok(Absorb::Next(SenderReturning {
                    set: (!self.set_done).then_some(self.stream),
                    per_msg: records_per_message(self.session.batch, w),
                    session: self.session,
                    tags: self.tags,
                    order,
                    pos: 0,
                }))
            }
            other => Err(unexpected(
                "tuples of blinded points or end of stream",
                &other,
            )),
        }
    }
}

/// Sender: sending the rest of its set, if any, then returning the receiver's records
/// re-blinded, in sorted order.
pub struct SenderReturning {
    set: Option<SetStream>,
    session: Session,
    tags: Vec<Tag>,
    order: Vec<u32>,
    pos: usize,
    per_msg: usize,
}

impl SenderReturning {
    pub fn emit(mut self) -> Result<Emit<Self, SenderAwaiting>, PsiError> {
        if let Some(set) = &mut self.set {
            let (m, last) = set.next();
            if last {
                self.set = None;
            }
            return Ok(Emit::More(m, self));
        }
        let w = self.session.kinds.len();
        if self.pos < self.order.len() {
            let end = (self.pos + self.per_msg).min(self.order.len());
            let mut out = Vec::with_capacity((end - self.pos) * w);
            for i in &self.order[self.pos..end] {
                let i = *i as usize;
                out.extend_from_slice(&self.tags[i * w..(i + 1) * w]);
            }
            self.pos = end;
            return Ok(Emit::More(
                Message::Tags {
                    section: 0,
                    width: w as u8,
                    tags: out,
                },
                self,
            ));
        }
        Ok(Emit::Last(
            Message::End {
                count: self.order.len() as u64,
            },
            SenderAwaiting {
                session: self.session,
            },
        ))
    }
}

/// Sender: waiting for the released counts.
pub struct SenderAwaiting {
    session: Session,
}

impl SenderAwaiting {
    pub fn absorb(self, msg: Message) -> Result<MatchCounts, PsiError> {
        match msg {
            Message::CardinalityResult { counts } if counts.len() == self.session.kinds.len() => {
                if counts.iter().any(|c| *c < 0) {
                    return Err(PsiError::Malformed("a negative count".into()));
                }
                Ok(MatchCounts::new(
                    counts,
                    self.session.count_epsilon().is_some(),
                ))
            }
            other => Err(unexpected("the cardinality result", &other)),
        }
    }
}
