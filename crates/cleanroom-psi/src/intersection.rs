//! PSI with a designated output: the receiver learns which of its own rows match (and on which
//! identifier kind, first in priority order); the sender learns only the receiver's number of
//! distinct identifiers per kind.
//!
//! 1. S → R: S's distinct identifiers per kind, `H_t(y)^s`, sorted (S's file order is hidden).
//!    R keeps the tags of `H_t(y)^{sr}` in one hash set per kind.
//! 2. R → S, batch by batch: R's distinct identifiers `H_t(x)^r` of one kind.
//! 3. S → R: the tags of `H_t(x)^{rs}` **in the same order**, so R can map each answer back to
//!    its own identifier (S learns nothing from R's order: it sees only blinded points and never
//!    the result). R marks the identifier matched if its tag is in the set of that kind.
//! 4. R → S: end of stream. R assigns each row the first kind in priority order on which it
//!    matched; rows matched on a higher-priority kind are not counted again.

use crate::group::{Point, SessionKey};
use crate::input::{Data, PreparedInput};
use crate::stream::{Absorb, Emit, Expect, SetSink, SetStream, unexpected};
use crate::wire::{Message, ProtocolKind, Role};
use crate::{MatchCounts, PsiError, Session};

/// A row was not matched.
pub const UNMATCHED: u8 = u8::MAX;

/// What the receiver learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntersectionOutput {
    /// For every input row, the index of the kind it matched on, or [`UNMATCHED`].
    pub row_kinds: Vec<u8>,
    /// Matched rows per kind in the cascade, and in total.
    pub counts: MatchCounts,
}

impl IntersectionOutput {
    /// Indices of matched rows, ascending, with the kind each matched on.
    pub fn matched_rows(&self) -> impl Iterator<Item = (u64, u8)> + '_ {
        self.row_kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| **k != UNMATCHED)
            .map(|(i, k)| (i as u64, *k))
    }
}

fn check(session: &Session, input: &PreparedInput, role: Role) -> Result<(), PsiError> {
    if session.protocol != ProtocolKind::Intersection || session.role != role {
        return Err(PsiError::InvalidParameter(
            "this session is not an intersection session in this role".into(),
        ));
    }
    input.check_fits(session)
}

// ---------------------------------------------------------------- receiver

/// Receiver, step 1: absorbing the sender's blinded set.
pub struct ReceiverCollecting {
    session: Session,
    rows: Vec<Vec<(Point, u32)>>,
    n_rows: u64,
    sink: SetSink,
    key: SessionKey,
}

impl ReceiverCollecting {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Receiver)?;
        let n_rows = input.rows;
        let Data::Rows(rows) = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        Ok(ReceiverCollecting {
            sink: SetSink::new(session.peer_items.clone()),
            session,
            rows,
            n_rows,
            key: input.key,
        })
    }

    pub fn absorb(mut self, msg: Message) -> Result<Absorb<Self, ReceiverQuerying>, PsiError> {
        if self.sink.absorb(&self.key, msg)? {
            Ok(Absorb::Next(ReceiverQuerying {
                row_kinds: vec![UNMATCHED; self.n_rows as usize],
                session: self.session,
                rows: self.rows,
                sets: self.sink,
                kind: 0,
                pos: 0,
                sent: 0,
            }))
        } else {
            Ok(Absorb::More(self))
        }
    }
}

/// Receiver, step 2: sending the next batch of its blinded identifiers.
pub struct ReceiverQuerying {
    session: Session,
    rows: Vec<Vec<(Point, u32)>>,
    sets: SetSink,
    row_kinds: Vec<u8>,
    kind: usize,
    pos: usize,
    sent: u64,
}

impl ReceiverQuerying {
    /// The next query and the state that waits for its answer, or the end of the session.
    pub fn emit(mut self) -> Result<Emit<ReceiverAwaiting, IntersectionOutput>, PsiError> {
        while self.kind < self.rows.len() {
            let entries = &self.rows[self.kind];
            if self.pos < entries.len() {
                // The next `batch` distinct points, with the run of rows behind each.
                let mut runs = Vec::with_capacity(self.session.batch);
                let mut points = Vec::with_capacity(self.session.batch);
                let mut i = self.pos;
                while i < entries.len() && points.len() < self.session.batch {
                    let start = i;
                    while i < entries.len() && entries[i].0 == entries[start].0 {
                        i += 1;
                    }
                    points.push(entries[start].0);
                    runs.push((start as u32, i as u32));
                }
                self.pos = i;
                self.sent += points.len() as u64;
                let kind = self.kind as u8;
                return Ok(Emit::More(
                    Message::Points { kind, points },
                    ReceiverAwaiting {
                        state: self,
                        kind: kind as usize,
                        runs,
                    },
                ));
            }
            self.rows[self.kind] = Vec::new();
            self.kind += 1;
            self.pos = 0;
        }
        let k = self.session.kinds.len();
        let mut counts = vec![0u64; k];
        for rk in &self.row_kinds {
            if *rk != UNMATCHED {
                counts[*rk as usize] += 1;
            }
        }
        let counts = counts.into_iter().map(|c| c as i64).collect();
        Ok(Emit::Last(
            Message::End { count: self.sent },
            IntersectionOutput {
                row_kinds: self.row_kinds,
                counts: MatchCounts::new(counts, false),
            },
        ))
    }
}

/// Receiver, step 3: waiting for the answer to one query.
pub struct ReceiverAwaiting {
    state: ReceiverQuerying,
    kind: usize,
    runs: Vec<(u32, u32)>,
}

impl ReceiverAwaiting {
    pub fn absorb(self, msg: Message) -> Result<ReceiverQuerying, PsiError> {
        let ReceiverAwaiting {
            mut state,
            kind,
            runs,
        } = self;
        match msg {
            Message::Tags {
                section,
                width: 1,
                tags,
            } if section as usize == kind && tags.len() == runs.len() => {
                let set = &state.sets.sets[kind];
                let entries = &state.rows[kind];
                for (tag, (start, end)) in tags.iter().zip(runs) {
                    if set.contains(tag) {
                        for (_, row) in &entries[start as usize..end as usize] {
                            let slot = &mut state.row_kinds[*row as usize];
                            // Kinds are queried in priority order: the first match stays.
                            if *slot == UNMATCHED {
                                *slot = kind as u8;
                            }
                        }
                    }
                }
                Ok(state)
            }
            other => Err(unexpected("the answer to our last batch", &other)),
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

    pub fn emit(mut self) -> Result<Emit<Self, SenderAnswering>, PsiError> {
        let (msg, last) = self.stream.next();
        if !last {
            return Ok(Emit::More(msg, self));
        }
        Ok(Emit::Last(
            msg,
            SenderAnswering {
                expect: Expect::new(self.session.peer_items.clone()),
                key: self.key,
            },
        ))
    }
}

/// Sender, step 2: answering each query with the re-blinded tags, in the query's order.
pub struct SenderAnswering {
    key: SessionKey,
    expect: Expect,
}

/// What the sender does with a query.
pub enum Answer {
    Reply(Message, SenderAnswering),
    /// The receiver is done; the number of identifiers answered.
    Done(u64),
}

impl SenderAnswering {
    pub fn absorb(mut self, msg: Message) -> Result<Answer, PsiError> {
        match msg {
            Message::Points { kind, points } => {
                self.expect.take(kind as usize, points.len())?;
                let tags = self.key.reblind_tags(&points)?;
                Ok(Answer::Reply(
                    Message::Tags {
                        section: kind,
                        width: 1,
                        tags,
                    },
                    self,
                ))
            }
            Message::End { count } => {
                self.expect.finish(count)?;
                Ok(Answer::Done(self.expect.total()))
            }
            other => Err(unexpected("blinded points or end of stream", &other)),
        }
    }
}
