//! PSI with a designated output: the receiver learns which of its own rows match (and on which
//! identifier kind, first in priority order); the sender learns only the receiver's number of
//! distinct identifiers per kind.
//!
//! Two streams run at once, so that neither party idles while the other multiplies:
//!
//! - S → R: S's distinct identifiers per kind, `H_t(y)^s`, sorted (S's file order is hidden),
//!   then the end of that stream. R keeps the tags of `H_t(y)^{sr}` in one hash set per kind.
//! - R → S, batch by batch: R's distinct identifiers `H_t(x)^r` of one kind, then the end of
//!   R's queries. S answers each batch with the tags of `H_t(x)^{rs}` **in the same order**, so
//!   R can map each answer back to its own identifier (S learns nothing from R's order: it sees
//!   only blinded points and never the result).
//!
//! The two streams go in rounds ([`crate::stream::Rounds`]): S sends the answer to R's last
//! batch (if any) and its next set batch while R sends its next batch, then each re-blinds
//! what it received; so S's answers and R's re-blinding of S's set are computed at the same
//! time. R keeps the answers (16 bytes per distinct identifier) until S's set is complete, then
//! marks an identifier matched if its tag is in the set of that kind, and assigns each row the
//! first kind in priority order on which it matched; rows matched on a higher-priority kind are
//! not counted again.

use std::collections::VecDeque;

use crate::group::{Point, SessionKey, Tag};
use crate::input::{Data, PreparedInput};
use crate::stream::{Expect, Rounds, SetSink, SetStream, Want, unexpected};
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

/// Receiver: sending its queries while absorbing the sender's set and the answers.
pub struct ReceiverExchanging {
    session: Session,
    key: SessionKey,
    rows: Vec<Vec<(Point, u32)>>,
    n_rows: u64,
    /// The sender's set, re-blinded; complete once its end arrived.
    sink: SetSink,
    set_ended: bool,
    /// The next query: kind and position in that kind's sorted entries.
    kind: usize,
    pos: usize,
    sent: u64,
    end_sent: bool,
    /// Queries not answered yet, oldest first: (kind, distinct points).
    pending: VecDeque<(usize, usize)>,
    /// Answers per kind, one tag per distinct point in query order.
    answers: Vec<Vec<Tag>>,
    rounds: Rounds,
}

impl ReceiverExchanging {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Receiver)?;
        let n_rows = input.rows;
        let Data::Rows(rows) = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        Ok(ReceiverExchanging {
            sink: SetSink::new(session.peer_items.clone(), session.batch),
            answers: rows.iter().map(|_| Vec::new()).collect(),
            session,
            rows,
            n_rows,
            key: input.key,
            set_ended: false,
            kind: 0,
            pos: 0,
            sent: 0,
            end_sent: false,
            pending: VecDeque::new(),
            rounds: Rounds::default(),
        })
    }

    /// What to do next. `Done` once the queries are sent, the set is complete and every query
    /// is answered.
    pub fn want(&self) -> Want {
        // The sender sends only its set and answers to our queries: nothing else to wait for.
        let expecting = !self.set_ended || !self.pending.is_empty();
        self.rounds.want(!self.end_sent, expecting)
    }

    /// The next batch of queries, or the end of them.
    pub fn emit(&mut self) -> Message {
        self.rounds.sent();
        while self.kind < self.rows.len() {
            let entries = &self.rows[self.kind];
            if self.pos < entries.len() {
                // The next `batch` distinct points (rows are sorted by point).
                let mut points = Vec::with_capacity(self.session.batch);
                let mut i = self.pos;
                while i < entries.len() && points.len() < self.session.batch {
                    let p = entries[i].0;
                    while i < entries.len() && entries[i].0 == p {
                        i += 1;
                    }
                    points.push(p);
                }
                self.pos = i;
                self.sent += points.len() as u64;
                self.pending.push_back((self.kind, points.len()));
                return Message::Points {
                    kind: self.kind as u8,
                    points,
                };
            }
            self.kind += 1;
            self.pos = 0;
        }
        self.end_sent = true;
        Message::End { count: self.sent }
    }

    /// A batch of the sender's set, its end, or the answer to our oldest open query.
    pub fn absorb(&mut self, msg: Message) -> Result<(), PsiError> {
        match msg {
            Message::Tags {
                section,
                width: 1,
                tags,
            } => {
                let Some((kind, n)) = self.pending.front().copied() else {
                    return Err(PsiError::Unexpected {
                        expected: "the sender's set (no query is open)",
                        got: "tags",
                    });
                };
                if section as usize != kind || tags.len() != n {
                    return Err(PsiError::Malformed(format!(
                        "an answer of {} tags for kind {section}; the open query has {n} \
                         points of kind {kind}",
                        tags.len()
                    )));
                }
                self.pending.pop_front();
                self.answers[kind].extend(tags);
                // Within a round the sender sends the answer before its set batch.
                self.rounds.received(self.set_ended);
                Ok(())
            }
            msg @ (Message::Points { .. } | Message::End { .. }) if !self.set_ended => {
                self.set_ended = self.sink.absorb(&self.key, msg)?;
                self.rounds.received(true);
                Ok(())
            }
            other => Err(unexpected("the sender's set or an answer", &other)),
        }
    }

    /// The output, once [`Self::want`] says `Done`.
    pub fn finish(self) -> Result<IntersectionOutput, PsiError> {
        let mut row_kinds = vec![UNMATCHED; self.n_rows as usize];
        for (kind, entries) in self.rows.iter().enumerate() {
            let set = &self.sink.sets[kind];
            let answers = &self.answers[kind];
            let (mut i, mut j) = (0, 0);
            while i < entries.len() {
                let start = i;
                while i < entries.len() && entries[i].0 == entries[start].0 {
                    i += 1;
                }
                let answer = answers.get(j).ok_or_else(|| {
                    PsiError::Internal(format!("no answer for identifier {j} of kind {kind}"))
                })?;
                if set.contains(answer) {
                    for (_, row) in &entries[start..i] {
                        let slot = &mut row_kinds[*row as usize];
                        // Kinds go in priority order: the first match stays.
                        if *slot == UNMATCHED {
                            *slot = kind as u8;
                        }
                    }
                }
                j += 1;
            }
            if j != answers.len() {
                return Err(PsiError::Internal(format!(
                    "{} answers for {j} identifiers of kind {kind}",
                    answers.len()
                )));
            }
        }
        let mut counts = vec![0i64; self.session.kinds.len()];
        for rk in &row_kinds {
            if *rk != UNMATCHED {
                counts[*rk as usize] += 1;
            }
        }
        Ok(IntersectionOutput {
            row_kinds,
            counts: MatchCounts::new(counts, false),
        })
    }
}

// ---------------------------------------------------------------- sender

/// Sender: sending its blinded set while answering the receiver's queries.
pub struct SenderExchanging {
    key: SessionKey,
    stream: SetStream,
    set_done: bool,
    expect: Expect,
    queries_ended: bool,
    answers: VecDeque<Message>,
    rounds: Rounds,
}

impl SenderExchanging {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Sender)?;
        let Data::Set(sets) = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        Ok(SenderExchanging {
            stream: SetStream::new(sets, session.batch),
            set_done: false,
            expect: Expect::new(session.peer_items.clone(), session.batch),
            queries_ended: false,
            answers: VecDeque::new(),
            rounds: Rounds::default(),
            key: input.key,
        })
    }

    /// What to do next. `Done` once the receiver's queries ended and everything is sent.
    pub fn want(&self) -> Want {
        let ready = !self.set_done || !self.answers.is_empty();
        self.rounds.want(ready, !self.queries_ended)
    }

    /// The answer to the oldest query if there is one, else the next batch of the set. A round
    /// ends with a batch of the set (or the answer, once the set is sent).
    pub fn emit(&mut self) -> Message {
        if let Some(m) = self.answers.pop_front() {
            if self.set_done {
                self.rounds.sent();
            }
            return m;
        }
        self.rounds.sent();
        let (m, last) = self.stream.next();
        self.set_done = last;
        m
    }

    /// A query (answered at once, sent at our next turn) or the end of the queries.
    pub fn absorb(&mut self, msg: Message) -> Result<(), PsiError> {
        match msg {
            Message::Points { kind, points } if !self.queries_ended => {
                self.expect.take(kind as usize, points.len())?;
                let tags = self.key.reblind_tags(&points)?;
                self.answers.push_back(Message::Tags {
                    section: kind,
                    width: 1,
                    tags,
                });
            }
            Message::End { count } if !self.queries_ended => {
                self.expect.finish(count)?;
                self.queries_ended = true;
            }
            other => return Err(unexpected("blinded points or end of stream", &other)),
        }
        self.rounds.received(true);
        Ok(())
    }

    /// How many of the receiver's identifiers were answered, once [`Self::want`] says `Done`.
    pub fn answered(&self) -> u64 {
        self.expect.total()
    }
}
