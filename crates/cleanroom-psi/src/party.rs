//! One side of a session behind a uniform interface for transports: ask what to do next
//! (send this message, or receive one), hand over what arrives. Inside, each step is one of the
//! protocol's typed states, which consume themselves; a step that fails poisons the party.

use crate::stream::{Absorb, Emit, Want};
use crate::wire::{Message, ProtocolKind, Role};
use crate::{
    IntersectionOutput, MatchCounts, PreparedInput, PsiError, Session, SumOutput, cardinality,
    intersection, ot_intersection as ot, sum, sum_to_holder,
};

/// What a transport should do next.
#[derive(Debug)]
pub enum Action {
    Send(Message),
    Receive,
    Finished,
}

/// What a party learns at the end of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Cardinality, either side.
    Cardinality(MatchCounts),
    /// Intersection, receiver.
    Intersection(IntersectionOutput),
    /// Intersection, sender: how many of the receiver's identifiers it answered for.
    Answered { identifiers: u64 },
    /// Either sum, receiver: the counts and the sums.
    Sum(SumOutput),
    /// Sum to the values holder, sender: the released counts.
    SumCounts(MatchCounts),
    /// Sum to the party without values, the values holder (sender): it sent this many
    /// encrypted records and decrypted masked sums; it learns nothing about the result.
    SumAnswered { records: u64 },
}

enum State {
    CardRExchange(cardinality::ReceiverExchanging),
    CardSExchange(cardinality::SenderExchanging),
    CardSReturn(cardinality::SenderReturning),
    CardSAwait(cardinality::SenderAwaiting),
    PsiRExchange(intersection::ReceiverExchanging),
    PsiSExchange(intersection::SenderExchanging),
    OtRStart(ot::ReceiverStarting),
    OtRChoices(ot::ReceiverAwaitingChoices),
    OtRExtend(ot::ReceiverExtending),
    OtRCollect(ot::ReceiverCollecting),
    OtSStart(ot::SenderStarting),
    OtSBucket(ot::SenderAwaitingBucket),
    OtSExtend(ot::SenderExtending),
    OtSSend(ot::SenderSending),
    OtSAwait(ot::SenderAwaitingEnd),
    SumRExchange(sum_to_holder::ReceiverExchanging),
    SumRAwait(sum_to_holder::ReceiverAwaiting),
    SumSExchange(sum_to_holder::SenderExchanging),
    SumLExchange(sum::LearnerExchanging),
    SumLUnmask(sum::LearnerUnmasking),
    SumHExchange(sum::HolderExchanging),
    SumHDecrypt(sum::HolderDecrypting),
    Finished(Outcome),
    Failed,
}

/// The OT sender's state after a bucket's columns or outputs.
fn ot_sender_state(next: ot::SenderNext) -> State {
    match next {
        ot::SenderNext::Send(n) => State::OtSSend(n),
        ot::SenderNext::Bucket(n) => State::OtSBucket(n),
        ot::SenderNext::Await(n) => State::OtSAwait(n),
    }
}

/// One side of a session.
pub struct Party {
    state: State,
    outbox: Option<Message>,
    expected_entries: u64,
}

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Party(..)")
    }
}

impl Party {
    pub fn new(session: Session, input: PreparedInput) -> Result<Party, PsiError> {
        let own: u64 = input.announced_items().iter().sum();
        let peer: u64 = session.peer_items().iter().sum();
        let per_bucket = session.ot_bucket_items;
        let (state, expected_entries) = match (session.protocol(), session.role()) {
            (ProtocolKind::Cardinality, Role::Receiver) => (
                State::CardRExchange(cardinality::ReceiverExchanging::new(session, input)?),
                peer + 2 * own,
            ),
            (ProtocolKind::Cardinality, Role::Sender) => (
                State::CardSExchange(cardinality::SenderExchanging::new(session, input)?),
                own + 2 * peer,
            ),
            (ProtocolKind::Intersection, Role::Receiver) => (
                State::PsiRExchange(intersection::ReceiverExchanging::new(session, input)?),
                peer + 2 * own,
            ),
            (ProtocolKind::Intersection, Role::Sender) => (
                State::PsiSExchange(intersection::SenderExchanging::new(session, input)?),
                own + 2 * peer,
            ),
            (ProtocolKind::IntersectionOt, Role::Receiver) => (
                State::OtRStart(ot::ReceiverStarting::new(session, input)?),
                ot::expected_entries(own, peer, per_bucket),
            ),
            (ProtocolKind::IntersectionOt, Role::Sender) => (
                State::OtSStart(ot::SenderStarting::new(session, input)?),
                ot::expected_entries(peer, own, per_bucket),
            ),
            (ProtocolKind::SumToValuesHolder, Role::Receiver) => (
                State::SumRExchange(sum_to_holder::ReceiverExchanging::new(session, input)?),
                2 * peer + own,
            ),
            (ProtocolKind::SumToValuesHolder, Role::Sender) => (
                State::SumSExchange(sum_to_holder::sender(session, input)?),
                2 * own + peer,
            ),
            (ProtocolKind::Sum, Role::Receiver) => (
                State::SumLExchange(sum::learner(session, input)?),
                2 * own + peer,
            ),
            (ProtocolKind::Sum, Role::Sender) => (
                State::SumHExchange(sum::holder(session, input)?),
                2 * peer + own,
            ),
        };
        Ok(Party {
            state,
            outbox: None,
            expected_entries,
        })
    }

    /// Entries (identifiers, records or tags) that will cross the wire in both directions:
    /// the denominator of a progress bar fed with [`Message::entries`].
    pub fn expected_entries(&self) -> u64 {
        self.expected_entries
    }

    /// The next thing to do. Sending states do their work here.
    pub fn next_action(&mut self) -> Result<Action, PsiError> {
        if let Some(m) = self.outbox.take() {
            return Ok(Action::Send(m));
        }
        let state = std::mem::replace(&mut self.state, State::Failed);
        let (state, action) = match state {
            State::CardRExchange(mut s) => match s.want() {
                Want::Send => {
                    let m = s.emit()?;
                    (State::CardRExchange(s), Action::Send(m))
                }
                Want::Receive => (State::CardRExchange(s), Action::Receive),
                Want::Done => {
                    let (m, out) = s.finish()?;
                    (State::Finished(Outcome::Cardinality(out)), Action::Send(m))
                }
            },
            State::CardSExchange(mut s) => match s.want() {
                Want::Send => {
                    let m = s.emit();
                    (State::CardSExchange(s), Action::Send(m))
                }
                _ => (State::CardSExchange(s), Action::Receive),
            },
            State::CardSReturn(s) => match s.emit()? {
                Emit::More(m, s) => (State::CardSReturn(s), Action::Send(m)),
                Emit::Last(m, n) => (State::CardSAwait(n), Action::Send(m)),
            },
            State::PsiRExchange(mut s) => match s.want() {
                Want::Send => {
                    let m = s.emit();
                    (State::PsiRExchange(s), Action::Send(m))
                }
                Want::Receive => (State::PsiRExchange(s), Action::Receive),
                Want::Done => (
                    State::Finished(Outcome::Intersection(s.finish()?)),
                    Action::Finished,
                ),
            },
            State::PsiSExchange(mut s) => match s.want() {
                Want::Send => {
                    let m = s.emit();
                    (State::PsiSExchange(s), Action::Send(m))
                }
                Want::Receive => (State::PsiSExchange(s), Action::Receive),
                Want::Done => (
                    State::Finished(Outcome::Answered {
                        identifiers: s.answered(),
                    }),
                    Action::Finished,
                ),
            },
            State::OtRStart(s) => {
                let (m, n) = s.emit()?;
                (State::OtRChoices(n), Action::Send(m))
            }
            State::OtRExtend(s) => match s.emit()? {
                Emit::More(m, s) => (State::OtRExtend(s), Action::Send(m)),
                Emit::Last(m, n) => (State::OtRCollect(n), Action::Send(m)),
            },
            // The sender has no items: nothing to wait for.
            State::OtRCollect(s) if s.is_complete() => match s.advance() {
                ot::ReceiverNext::Extend(n) => {
                    self.state = State::OtRExtend(*n);
                    return self.next_action();
                }
                ot::ReceiverNext::Done(m, out) => {
                    (State::Finished(Outcome::Intersection(out)), Action::Send(m))
                }
            },
            State::OtSSend(s) => match s.emit()? {
                Emit::More(m, s) => (State::OtSSend(s), Action::Send(m)),
                Emit::Last(m, n) => (ot_sender_state(n), Action::Send(m)),
            },
            State::SumRExchange(mut s) => match s.want() {
                Want::Send => {
                    let m = s.emit()?;
                    (State::SumRExchange(s), Action::Send(m))
                }
                Want::Receive => (State::SumRExchange(s), Action::Receive),
                Want::Done => (
                    State::SumRAwait(sum_to_holder::ReceiverAwaiting::new(s)?),
                    Action::Receive,
                ),
            },
            State::SumSExchange(mut s) => match s.want() {
                Want::Send => {
                    let m = s.emit();
                    (State::SumSExchange(s), Action::Send(m))
                }
                Want::Receive => (State::SumSExchange(s), Action::Receive),
                Want::Done => {
                    let (m, out) = sum_to_holder::result(s)?;
                    (State::Finished(Outcome::SumCounts(out)), Action::Send(m))
                }
            },
            State::SumLExchange(mut s) => match s.want() {
                Want::Send => {
                    let m = s.emit();
                    (State::SumLExchange(s), Action::Send(m))
                }
                Want::Receive => (State::SumLExchange(s), Action::Receive),
                Want::Done => {
                    let (m, n) = sum::mask(s)?;
                    (State::SumLUnmask(n), Action::Send(m))
                }
            },
            State::SumHExchange(mut s) => match s.want() {
                Want::Send => {
                    let m = s.emit()?;
                    (State::SumHExchange(s), Action::Send(m))
                }
                Want::Receive => (State::SumHExchange(s), Action::Receive),
                Want::Done => (
                    State::SumHDecrypt(sum::HolderDecrypting::new(s)?),
                    Action::Receive,
                ),
            },
            State::Finished(o) => (State::Finished(o), Action::Finished),
            State::Failed => {
                return Err(PsiError::Internal(
                    "the session failed earlier and cannot go on".into(),
                ));
            }
            receiving => (receiving, Action::Receive),
        };
        self.state = state;
        Ok(action)
    }

    /// Hands over a message from the peer. Only valid after [`Action::Receive`].
    pub fn receive(&mut self, msg: Message) -> Result<(), PsiError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        self.state = match state {
            State::CardRExchange(mut s) if s.want() == Want::Receive => {
                s.absorb(msg)?;
                State::CardRExchange(s)
            }
            State::CardSExchange(s) if s.want() == Want::Receive => match s.absorb(msg)? {
                Absorb::More(s) => State::CardSExchange(s),
                Absorb::Next(n) => State::CardSReturn(n),
            },
            State::CardSAwait(s) => State::Finished(Outcome::Cardinality(s.absorb(msg)?)),
            State::PsiRExchange(mut s) if s.want() == Want::Receive => {
                s.absorb(msg)?;
                State::PsiRExchange(s)
            }
            State::PsiSExchange(mut s) if s.want() == Want::Receive => {
                s.absorb(msg)?;
                State::PsiSExchange(s)
            }
            State::OtRChoices(s) => State::OtRExtend(s.absorb(msg)?),
            State::OtRCollect(s) => match s.absorb(msg)? {
                Absorb::More(s) => State::OtRCollect(s),
                Absorb::Next(ot::ReceiverNext::Extend(n)) => State::OtRExtend(*n),
                Absorb::Next(ot::ReceiverNext::Done(m, out)) => {
                    self.outbox = Some(m);
                    State::Finished(Outcome::Intersection(out))
                }
            },
            State::OtSStart(s) => {
                let (m, n) = s.absorb(msg)?;
                self.outbox = Some(m);
                State::OtSBucket(n)
            }
            State::OtSBucket(s) => State::OtSExtend(s.absorb(msg)?),
            State::OtSExtend(s) => match s.absorb(msg)? {
                Absorb::More(s) => State::OtSExtend(s),
                // Without items there is nothing to send: the next bucket, or the end.
                Absorb::Next(n) => ot_sender_state(n),
            },
            State::OtSAwait(s) => State::Finished(Outcome::Answered {
                identifiers: s.absorb(msg)?,
            }),
            State::SumRExchange(mut s) if s.want() == Want::Receive => {
                s.absorb(msg)?;
                State::SumRExchange(s)
            }
            State::SumRAwait(s) => State::Finished(Outcome::Sum(s.absorb(msg)?)),
            State::SumSExchange(mut s) if s.want() == Want::Receive => {
                s.absorb(msg)?;
                State::SumSExchange(s)
            }
            State::SumLExchange(mut s) if s.want() == Want::Receive => {
                s.absorb(msg)?;
                State::SumLExchange(s)
            }
            State::SumLUnmask(s) => State::Finished(Outcome::Sum(s.absorb(msg)?)),
            State::SumHExchange(mut s) if s.want() == Want::Receive => {
                s.absorb(msg)?;
                State::SumHExchange(s)
            }
            State::SumHDecrypt(s) => {
                let (m, records) = s.absorb(msg)?;
                self.outbox = Some(m);
                State::Finished(Outcome::SumAnswered { records })
            }
            other => {
                self.state = other;
                return Err(PsiError::Unexpected {
                    expected: "nothing (it is our turn to send)",
                    got: msg.name(),
                });
            }
        };
        Ok(())
    }

    /// The outcome, once [`Action::Finished`] was returned.
    pub fn outcome(self) -> Option<Outcome> {
        match self.state {
            State::Finished(o) if self.outbox.is_none() => Some(o),
            _ => None,
        }
    }
}
