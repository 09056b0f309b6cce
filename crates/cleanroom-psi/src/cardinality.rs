//! PSI-cardinality: both parties learn how many of the receiver's distinct records match, per
//! identifier kind in the cascade, and nothing else but set sizes.
//!
//! 1. S → R: S's distinct identifiers per kind, `H_t(y)^s`, sorted. R keeps the tags of
//!    `H_t(y)^{sr}` in one hash set per kind.
//! 2. R → S: R's distinct records as tuples `(H_1(x_1)^r, …, H_K(x_K)^r)`, absent slots random.
//! 3. S → R: every tuple re-blinded to tags of `H(x)^{rs}`, in sorted order (not R's order),
//!    so R cannot tell which of its records a returned tuple is.
//! 4. R checks each returned tuple's slots in priority order against its hash sets (the first
//!    kind that matches counts), adds noise if asked, and sends the counts to S.
//!
//! Each step is a type that consumes itself, so steps cannot run out of order: a receiver that
//! has not absorbed the sender's set has no way to send its records.
//!
//! ```compile_fail
//! fn too_early(r: cleanroom_psi::cardinality::ReceiverCollecting) {
//!     let _ = r.emit(); // no such method before the sender's set is absorbed
//! }
//! ```

use rayon::prelude::*;

use crate::group::{Point, SessionKey, Tag, random_point};
use crate::input::{ABSENT, Data, PreparedInput};
use crate::stream::{Absorb, Emit, Expect, SetSink, SetStream, records_per_message, unexpected};
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

/// Receiver, step 1: absorbing the sender's blinded set.
pub struct ReceiverCollecting {
    session: Session,
    key: SessionKey,
    tuples: Vec<Point>,
    sink: SetSink,
}

impl ReceiverCollecting {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Receiver)?;
        let Data::Tuples { points, .. } = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        Ok(ReceiverCollecting {
            sink: SetSink::new(session.peer_items.clone()),
            session,
            key: input.key,
            tuples: points,
        })
    }

    pub fn absorb(mut self, msg: Message) -> Result<Absorb<Self, ReceiverSending>, PsiError> {
        if self.sink.absorb(&self.key, msg)? {
            let per_msg = records_per_message(self.session.batch, self.session.kinds.len());
            Ok(Absorb::Next(ReceiverSending {
                session: self.session,
                tuples: self.tuples,
                sets: self.sink,
                pos: 0,
                per_msg,
            }))
        } else {
            Ok(Absorb::More(self))
        }
    }
}

/// Receiver, step 2: sending its records.
pub struct ReceiverSending {
    session: Session,
    tuples: Vec<Point>,
    sets: SetSink,
    pos: usize,
    per_msg: usize,
}

impl ReceiverSending {
    pub fn emit(mut self) -> Result<Emit<Self, ReceiverAwaiting>, PsiError> {
        let w = self.session.kinds.len();
        let n = self.tuples.len() / w;
        if self.pos < n {
            let end = (self.pos + self.per_msg).min(n);
            let points = pad(&self.tuples[self.pos * w..end * w])?;
            self.pos = end;
            return Ok(Emit::More(
                Message::Tuples {
                    width: w as u8,
                    points,
                },
                self,
            ));
        }
        Ok(Emit::Last(
            Message::End { count: n as u64 },
            ReceiverAwaiting {
                expect: Expect::new(vec![n as u64]),
                counts: vec![0; w],
                session: self.session,
                sets: self.sets,
            },
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

/// Receiver, step 3: absorbing its records re-blinded by the sender, counting matches.
pub struct ReceiverAwaiting {
    session: Session,
    sets: SetSink,
    expect: Expect,
    counts: Vec<u64>,
}

impl ReceiverAwaiting {
    /// On the end of the stream: the message to send to the sender and this side's output.
    pub fn absorb(
        mut self,
        msg: Message,
    ) -> Result<Absorb<Self, (Message, MatchCounts)>, PsiError> {
        let w = self.session.kinds.len();
        match msg {
            Message::Tags { width, tags, .. } if width as usize == w => {
                self.expect.take(0, tags.len() / w)?;
                for t in tags.chunks_exact(w) {
                    if let Some(k) = (0..w).find(|k| self.sets.sets[*k].contains(&t[*k])) {
                        self.counts[k] += 1;
                    }
                }
                Ok(Absorb::More(self))
            }
            Message::End { count } => {
                self.expect.finish(count)?;
                let released = self.session.release_counts(&self.counts)?;
                Ok(Absorb::Next((
                    Message::CardinalityResult {
                        counts: released.clone(),
                    },
                    MatchCounts::new(released, self.session.count_noise.is_some()),
                )))
            }
            other => Err(unexpected("tuples of tags or end of stream", &other)),
        }
    }
}

// ---------------------------------------------------------------- sender

/// Sender, step 1: sending its blinded set.
pub struct SenderSending {
    session: Session,
    key: SessionKey,
    stream: SetStream,
}

impl SenderSending {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Sender)?;
        let Data::Set(sets) = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        Ok(SenderSending {
            stream: SetStream::new(sets, session.batch),
            session,
            key: input.key,
        })
    }

    pub fn emit(mut self) -> Result<Emit<Self, SenderCollecting>, PsiError> {
        let (msg, last) = self.stream.next();
        if !last {
            return Ok(Emit::More(msg, self));
        }
        let n = self.session.peer_items[0];
        Ok(Emit::Last(
            msg,
            SenderCollecting {
                expect: Expect::new(vec![n]),
                tags: Vec::with_capacity(crate::stream::prealloc(n) * self.session.kinds.len()),
                session: self.session,
                key: self.key,
            },
        ))
    }
}

/// Sender, step 2: re-blinding the receiver's records.
pub struct SenderCollecting {
    session: Session,
    key: SessionKey,
    expect: Expect,
    tags: Vec<Tag>,
}

impl SenderCollecting {
    pub fn absorb(mut self, msg: Message) -> Result<Absorb<Self, SenderReturning>, PsiError> {
        let w = self.session.kinds.len();
        match msg {
            Message::Tuples { width, points } if width as usize == w => {
                self.expect.take(0, points.len() / w)?;
                let tags = self.key.reblind_tags(&points)?;
                self.tags.extend(tags);
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

/// Sender, step 3: returning the receiver's records re-blinded, in sorted order.
pub struct SenderReturning {
    session: Session,
    tags: Vec<Tag>,
    order: Vec<u32>,
    pos: usize,
    per_msg: usize,
}

impl SenderReturning {
    pub fn emit(mut self) -> Result<Emit<Self, SenderAwaiting>, PsiError> {
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

/// Sender, step 4: waiting for the released counts.
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
