//! PSI with a designated output on oblivious transfer (KKRT16 with PSZ hashing), semi-honest:
//! the receiver learns which of its own rows match (first kind in priority order), the sender
//! learns only the receiver's announced numbers of distinct identifiers. Same outcome as
//! [`crate::intersection`], with symmetric-key work instead of four scalar multiplications per
//! pair. See [`crate::ot`] for the pieces and `docs/psi.md` for leakage and parameters.
//!
//! Items are `SHA-256(domain_kind ‖ identifier)` cut to 128 bits, so every kind of the cascade
//! runs in one instance and identical strings of different kinds never meet.
//!
//! 1. R → S [`Message::OtSetup`]: `A` of the 512 base OTs (R is their sender), R's coin-toss
//!    seed, and the key of R's cuckoo hash functions. R has placed each distinct item `x` in
//!    one of its 3 bins among `β = 1.27·n_R + 256` (rounded up to 128).
//! 2. S → R [`Message::OtChoices`]: the base-OT answers for S's random 512-bit secret `s`, and
//!    S's seed. Both now derive the pseudo-random code `C` from both seeds.
//! 3. R → S [`Message::OtColumns`], chunk by chunk: `u^j = G(k_j^0) ⊕ G(k_j^1) ⊕ d^j` for the
//!    512 columns, where row `b` of `d` is `C(x_b ‖ i_b)` (a random word for an empty bin).
//!    S computes `q_b = G(k_j^{s_j}) ⊕ s_j·u^j` = `t_b ⊕ (d_b ∧ s)`, and for each of its items
//!    `y` and hash `i`, in bin `b = h_i(y)`, the output `H(q_b ⊕ (C(y ‖ i) ∧ s))`. R knows
//!    `H(t_b)`, which is that output exactly when `y ‖ i = x_b ‖ i_b`.
//! 4. S → R [`Message::OtOutputs`]: for each hash `i`, the outputs of all its items, cut to
//!    `w` bytes and sorted (S's file order and the bins stay hidden).
//! 5. R → S [`Message::End`]: the number of outputs received. R marks matched items.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::group::{Point, TagHasher, fill_random};
use crate::input::{Data, PreparedInput};
use crate::intersection::UNMATCHED;
use crate::ot::base::{self, BaseSender};
use crate::ot::cuckoo::{self, EMPTY};
use crate::ot::matrix::{Prg, transpose, xor_into};
use crate::ot::{
    BIN_ALIGN, BinHash, Code, HASHES, MAX_CHUNK, ROW, WIDTH, bins_for, item_with_hash, mask_bytes,
    output,
};
use crate::stream::{Absorb, Emit, unexpected};
use crate::wire::{Message, ProtocolKind, Role};
use crate::{IntersectionOutput, MatchCounts, PsiError, Session};

/// Fresh cuckoo hash keys tried before giving up (each fails with probability ≤ 2^-40).
const CUCKOO_TRIES: usize = 8;

fn check(session: &Session, input: &PreparedInput, role: Role) -> Result<(), PsiError> {
    if session.protocol != ProtocolKind::IntersectionOt || session.role != role {
        return Err(PsiError::InvalidParameter(
            "this session is not an OT intersection session in this role".into(),
        ));
    }
    input.check_fits(session)
}

fn item_of(p: &Point) -> u128 {
    u128::from_le_bytes(p[..16].try_into().expect("16 bytes"))
}

fn random_seed() -> Result<[u8; 16], PsiError> {
    let mut s = [0u8; 16];
    fill_random(&mut s)?;
    Ok(s)
}

/// Bins per chunk for a session's batch size: a multiple of 128, at most [`MAX_CHUNK`].
fn chunk_bins(session: &Session) -> usize {
    (session.batch / BIN_ALIGN * BIN_ALIGN).clamp(BIN_ALIGN, MAX_CHUNK)
}

/// The total of what the peer announced: its distinct items over all kinds.
fn peer_total(session: &Session) -> u64 {
    session.peer_items.iter().sum()
}

/// Entries that cross the wire in a session (bins one way, outputs the other): the progress
/// bar's denominator.
pub(crate) fn expected_entries(receiver_items: u64, sender_items: u64) -> u64 {
    bins_for(receiver_items) + HASHES as u64 * sender_items
}

type MaskMap = HashMap<u128, (u32, u8), BuildHasherDefault<TagHasher>>;

// ---------------------------------------------------------------- receiver

/// Receiver, step 1: its items placed, the base OTs and the coin toss started.
pub struct ReceiverStarting {
    session: Session,
    rows: Vec<Vec<(Point, u32)>>,
    n_rows: u64,
    /// Distinct items over all kinds, and where their rows are: (kind, start, end).
    items: Vec<u128>,
    runs: Vec<(u8, u32, u32)>,
}

impl ReceiverStarting {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Receiver)?;
        let n_rows = input.rows;
        let Data::Rows(rows) = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        let mut items = Vec::new();
        let mut runs = Vec::new();
        for (k, entries) in rows.iter().enumerate() {
            let mut start = 0usize;
            for run in entries.chunk_by(|a, b| a.0 == b.0) {
                items.push(item_of(&run[0].0));
                runs.push((k as u8, start as u32, (start + run.len()) as u32));
                start += run.len();
            }
        }
        if items.len() > u32::MAX as usize - 1 {
            return Err(PsiError::InvalidParameter(
                "more than 2^32 distinct identifiers".into(),
            ));
        }
        Ok(ReceiverStarting {
            session,
            rows,
            n_rows,
            items,
            runs,
        })
    }

    /// Places the items and sends the setup.
    pub fn emit(self) -> Result<(Message, ReceiverAwaitingChoices), PsiError> {
        let bins = bins_for(self.items.len() as u64);
        let mut positions = Vec::new();
        let mut placed = None;
        for _ in 0..CUCKOO_TRIES {
            let hash_key = random_seed()?;
            BinHash::new(&hash_key, bins).bins_of(&self.items, &mut positions);
            let walk = u64::from_le_bytes(random_seed()?[..8].try_into().expect("8 bytes"));
            if let Some(t) = cuckoo::build(&positions, bins as usize, walk) {
                placed = Some((hash_key, t));
                break;
            }
        }
        let (hash_key, table) = placed.ok_or_else(|| {
            PsiError::Internal(format!(
                "cuckoo hashing failed with {CUCKOO_TRIES} fresh keys (each fails with \
                 probability below 2^-40): a bug"
            ))
        })?;
        drop(positions);
        let base = BaseSender::new()?;
        let seed = random_seed()?;
        let msg = Message::OtSetup {
            point: base.message(),
            seed,
            hash_key,
        };
        let sender_items = peer_total(&self.session);
        Ok((
            msg,
            ReceiverAwaitingChoices {
                width: mask_bytes(bins, sender_items),
                sender_items,
                bins: bins as usize,
                table,
                base,
                seed,
                start: self,
            },
        ))
    }
}

/// Receiver, step 2: waiting for the base-OT answers.
pub struct ReceiverAwaitingChoices {
    start: ReceiverStarting,
    table: cuckoo::Table,
    bins: usize,
    width: usize,
    sender_items: u64,
    base: BaseSender,
    seed: [u8; 16],
}

impl ReceiverAwaitingChoices {
    pub fn absorb(self, msg: Message) -> Result<ReceiverExtending, PsiError> {
        let Message::OtChoices { points, seed } = msg else {
            return Err(unexpected("the base-OT answers", &msg));
        };
        let keys = self.base.keys(&points)?;
        let prgs = keys
            .iter()
            .map(|[k0, k1]| [Prg::new(k0), Prg::new(k1)])
            .collect();
        let dummies = Xoshiro256PlusPlus::from_seed({
            let mut s = Zeroizing::new([0u8; 32]);
            fill_random(&mut s[..])?;
            *s
        });
        let chunk = chunk_bins(&self.start.session);
        Ok(ReceiverExtending {
            code: Code::new(&self.seed, &seed),
            prgs,
            dummies,
            chunk,
            next: 0,
            outputs: MaskMap::with_capacity_and_hasher(self.start.items.len(), Default::default()),
            s: self,
        })
    }
}

/// Receiver, step 3: sending the extension's columns, chunk by chunk, and keeping its own
/// outputs `H(t_b)` of the bins that hold an item.
pub struct ReceiverExtending {
    s: ReceiverAwaitingChoices,
    code: Code,
    prgs: Vec<[Prg; 2]>,
    dummies: Xoshiro256PlusPlus,
    chunk: usize,
    next: usize,
    outputs: MaskMap,
}

impl ReceiverExtending {
    pub fn emit(mut self) -> Result<Emit<Self, ReceiverCollecting>, PsiError> {
        let (b0, c) = (self.next, self.chunk.min(self.s.bins - self.next));
        let table = &self.s.table;
        let items = &self.s.start.items;
        // Row b of d: the code word of the bin's item with its hash index, or of a random word.
        let words: Vec<u128> = (b0..b0 + c)
            .map(|b| match table.item[b] {
                EMPTY => self.dummies.random::<u128>(),
                i => item_with_hash(items[i as usize], usize::from(table.hash[b])),
            })
            .collect();
        let mut d_rows = vec![0u8; c * ROW];
        self.code.encode(&words, &mut d_rows);
        let mut d_cols = vec![0u8; c * ROW];
        transpose(&d_rows, c, WIDTH, &mut d_cols);
        let bytes = c / 8;
        let first_block = (b0 / BIN_ALIGN) as u64;
        let mut t_cols = vec![0u8; c * ROW];
        let mut columns = vec![0u8; c * ROW];
        columns
            .par_chunks_mut(bytes)
            .zip(t_cols.par_chunks_mut(bytes))
            .zip(d_cols.par_chunks(bytes))
            .zip(self.prgs.par_iter())
            .for_each(|(((u, t), d), [g0, g1])| {
                g0.fill(first_block, t);
                g1.fill(first_block, u);
                xor_into(u, t);
                xor_into(u, d);
            });
        transpose(&t_cols, WIDTH, c, &mut d_rows);
        let width = self.s.width;
        let own: Vec<(u128, usize)> = d_rows
            .par_chunks(ROW)
            .enumerate()
            .filter(|(i, _)| table.item[b0 + i] != EMPTY)
            .map(|(i, row)| (output(row, width), b0 + i))
            .collect();
        for (o, b) in own {
            self.outputs.insert(o, (table.item[b], table.hash[b]));
        }
        self.next += c;
        let msg = Message::OtColumns {
            bins: c as u32,
            columns,
        };
        if self.next < self.s.bins {
            return Ok(Emit::More(msg, self));
        }
        let start = self.s.start;
        Ok(Emit::Last(
            msg,
            ReceiverCollecting {
                matched: vec![false; start.items.len()],
                received: [0; HASHES],
                expected: self.s.sender_items,
                width,
                outputs: self.outputs,
                rows: start.rows,
                runs: start.runs,
                n_rows: start.n_rows,
                kinds: start.session.kinds.len(),
            },
        ))
    }
}

/// Receiver, step 4: comparing the sender's outputs with its own.
pub struct ReceiverCollecting {
    outputs: MaskMap,
    matched: Vec<bool>,
    received: [u64; HASHES],
    expected: u64,
    width: usize,
    rows: Vec<Vec<(Point, u32)>>,
    runs: Vec<(u8, u32, u32)>,
    n_rows: u64,
    kinds: usize,
}

impl ReceiverCollecting {
    /// Whether every output the sender announced has arrived.
    pub fn is_complete(&self) -> bool {
        self.received.iter().all(|r| *r == self.expected)
    }

    pub fn absorb(
        mut self,
        msg: Message,
    ) -> Result<Absorb<Self, (Message, IntersectionOutput)>, PsiError> {
        let Message::OtOutputs {
            hash,
            width,
            outputs,
        } = msg
        else {
            return Err(unexpected("OPRF outputs", &msg));
        };
        let (h, w) = (usize::from(hash), usize::from(width));
        if w != self.width {
            return Err(PsiError::Malformed(format!(
                "outputs of {w} bytes where the session uses {}",
                self.width
            )));
        }
        if outputs.is_empty() {
            // Nothing to count: a peer that sends empty batches would only keep us waiting.
            return Err(PsiError::Malformed("an empty batch of outputs".into()));
        }
        let n = (outputs.len() / w) as u64;
        if self.received[h] + n > self.expected {
            return Err(PsiError::CountMismatch(format!(
                "more than the announced {} outputs for hash function {h}",
                self.expected
            )));
        }
        self.received[h] += n;
        for o in outputs.chunks_exact(w) {
            let mut b = [0u8; 16];
            b[..w].copy_from_slice(o);
            if let Some((item, ih)) = self.outputs.get(&u128::from_le_bytes(b))
                && usize::from(*ih) == h
            {
                self.matched[*item as usize] = true;
            }
        }
        if !self.is_complete() {
            return Ok(Absorb::More(self));
        }
        Ok(Absorb::Next(self.finish()))
    }

    /// The end of the session: the acknowledgement for the sender, and what we learnt.
    pub fn finish(self) -> (Message, IntersectionOutput) {
        let mut row_kinds = vec![UNMATCHED; self.n_rows as usize];
        for (i, (kind, start, end)) in self.runs.iter().enumerate() {
            if !self.matched[i] {
                continue;
            }
            for (_, row) in &self.rows[*kind as usize][*start as usize..*end as usize] {
                // Kinds are numbered in priority order: the first match wins.
                let slot = &mut row_kinds[*row as usize];
                *slot = (*slot).min(*kind);
            }
        }
        let mut counts = vec![0i64; self.kinds];
        for rk in &row_kinds {
            if *rk != UNMATCHED {
                counts[*rk as usize] += 1;
            }
        }
        (
            Message::End {
                count: self.received.iter().sum(),
            },
            IntersectionOutput {
                row_kinds,
                counts: MatchCounts::new(counts, false),
            },
        )
    }
}

// ---------------------------------------------------------------- sender

/// Sender, step 1: waiting for the receiver's setup.
pub struct SenderStarting {
    session: Session,
    items: Vec<u128>,
}

impl SenderStarting {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Sender)?;
        let Data::Set(sets) = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        let items: Vec<u128> = sets.iter().flatten().map(item_of).collect();
        if items.len() > u32::MAX as usize {
            return Err(PsiError::InvalidParameter(
                "more than 2^32 distinct identifiers".into(),
            ));
        }
        Ok(SenderStarting { session, items })
    }

    /// Answers the base OTs with a fresh secret `s`, and lays out where its items fall.
    pub fn absorb(self, msg: Message) -> Result<(Message, SenderExtending), PsiError> {
        let Message::OtSetup {
            point,
            seed,
            hash_key,
        } = msg
        else {
            return Err(unexpected("the OT setup", &msg));
        };
        let mut s = Zeroizing::new([0u8; ROW]);
        fill_random(&mut s[..])?;
        let (points, keys) = base::receive(&point, &s)?;
        let prgs = keys.iter().map(Prg::new).collect();
        let own_seed = random_seed()?;
        let bins = bins_for(peer_total(&self.session));
        let mut positions = Vec::new();
        BinHash::new(&hash_key, bins).bins_of(&self.items, &mut positions);
        // (bin, item, hash) for every item and hash, in bin order: chunks arrive in bin order.
        let mut pairs: Vec<(u32, u32, u8)> = positions
            .iter()
            .enumerate()
            .map(|(k, b)| (*b, (k / HASHES) as u32, (k % HASHES) as u8))
            .collect();
        drop(positions);
        pairs.par_sort_unstable_by_key(|p| p.0);
        let width = mask_bytes(bins, self.items.len() as u64);
        Ok((
            Message::OtChoices {
                points,
                seed: own_seed,
            },
            SenderExtending {
                code: Code::new(&seed, &own_seed),
                prgs,
                s,
                bins: bins as usize,
                next: 0,
                pairs,
                pos: 0,
                width,
                outputs: Default::default(),
                start: self,
            },
        ))
    }
}

/// Sender, step 2: receiving the columns and computing its outputs, chunk by chunk.
pub struct SenderExtending {
    start: SenderStarting,
    code: Code,
    prgs: Vec<Prg>,
    s: Zeroizing<[u8; ROW]>,
    bins: usize,
    next: usize,
    pairs: Vec<(u32, u32, u8)>,
    pos: usize,
    width: usize,
    outputs: [Vec<u128>; HASHES],
}

impl SenderExtending {
    pub fn absorb(mut self, msg: Message) -> Result<Absorb<Self, SenderSending>, PsiError> {
        let Message::OtColumns { bins: c, columns } = msg else {
            return Err(unexpected("the extension's columns", &msg));
        };
        let (b0, c) = (self.next, c as usize);
        if b0 + c > self.bins {
            return Err(PsiError::CountMismatch(format!(
                "columns for more than the {} bins of the session",
                self.bins
            )));
        }
        let bytes = c / 8;
        let first_block = (b0 / BIN_ALIGN) as u64;
        let s = &self.s;
        let mut q_cols = vec![0u8; c * ROW];
        q_cols
            .par_chunks_mut(bytes)
            .zip(columns.par_chunks(bytes))
            .zip(self.prgs.par_iter())
            .enumerate()
            .for_each(|(j, ((q, u), g))| {
                g.fill(first_block, q);
                if (s[j / 8] >> (j % 8)) & 1 == 1 {
                    xor_into(q, u);
                }
            });
        drop(columns);
        let mut q_rows = vec![0u8; c * ROW];
        transpose(&q_cols, WIDTH, c, &mut q_rows);
        drop(q_cols);
        let end = self.pos + self.pairs[self.pos..].partition_point(|p| (p.0 as usize) < b0 + c);
        let (items, code, width) = (&self.start.items, &self.code, self.width);
        let computed: Vec<(u8, u128)> = self.pairs[self.pos..end]
            .par_chunks(1024)
            .flat_map_iter(|pairs| {
                let words: Vec<u128> = pairs
                    .iter()
                    .map(|(_, i, h)| item_with_hash(items[*i as usize], usize::from(*h)))
                    .collect();
                let mut rows = vec![0u8; pairs.len() * ROW];
                code.encode(&words, &mut rows);
                for ((bin, _, _), row) in pairs.iter().zip(rows.chunks_exact_mut(ROW)) {
                    // q_b ⊕ (C(y ‖ i) ∧ s)
                    for (k, r) in row.iter_mut().enumerate() {
                        *r &= s[k];
                    }
                    let q = (*bin as usize - b0) * ROW;
                    xor_into(row, &q_rows[q..q + ROW]);
                }
                pairs
                    .iter()
                    .zip(rows.chunks_exact(ROW))
                    .map(|((_, _, h), row)| (*h, output(row, width)))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (h, o) in computed {
            self.outputs[usize::from(h)].push(o);
        }
        self.pos = end;
        self.next += c;
        if self.next < self.bins {
            return Ok(Absorb::More(self));
        }
        let mut outputs = self.outputs;
        // Sorted: the order is a function of the outputs alone, which R sees anyway, so it
        // says nothing of S's file order or of the bins (a shuffle without a second copy).
        outputs.par_iter_mut().for_each(|o| o.par_sort_unstable());
        Ok(Absorb::Next(SenderSending {
            outputs,
            hash: 0,
            pos: 0,
            batch: self.start.session.batch,
            width: self.width,
            receiver_items: peer_total(&self.start.session),
        }))
    }
}

/// Sender, step 3: sending its outputs, hash function by hash function.
pub struct SenderSending {
    outputs: [Vec<u128>; HASHES],
    hash: usize,
    pos: usize,
    batch: usize,
    width: usize,
    receiver_items: u64,
}

impl SenderSending {
    /// Whether there is nothing to send (the sender has no items).
    pub fn is_empty(&self) -> bool {
        self.outputs.iter().all(Vec::is_empty)
    }

    pub fn emit(mut self) -> Result<Emit<Self, SenderAwaitingEnd>, PsiError> {
        while self.hash < HASHES && self.pos >= self.outputs[self.hash].len() {
            self.hash += 1;
            self.pos = 0;
        }
        if self.hash >= HASHES {
            return Err(PsiError::Internal("no outputs left to send".into()));
        }
        let list = &self.outputs[self.hash];
        let end = (self.pos + self.batch).min(list.len());
        let mut bytes = Vec::with_capacity((end - self.pos) * self.width);
        for o in &list[self.pos..end] {
            bytes.extend_from_slice(&o.to_le_bytes()[..self.width]);
        }
        let msg = Message::OtOutputs {
            hash: self.hash as u8,
            width: self.width as u8,
            outputs: bytes,
        };
        self.pos = end;
        let last = self.hash == HASHES - 1 && self.pos >= list.len();
        if last {
            Ok(Emit::Last(msg, self.await_end()))
        } else {
            Ok(Emit::More(msg, self))
        }
    }

    /// The state after the last output (or straight away, when there is none).
    pub fn await_end(&self) -> SenderAwaitingEnd {
        SenderAwaitingEnd {
            expected: self.outputs.iter().map(|o| o.len() as u64).sum(),
            receiver_items: self.receiver_items,
        }
    }
}

/// Sender, step 4: waiting for the receiver's acknowledgement.
pub struct SenderAwaitingEnd {
    expected: u64,
    receiver_items: u64,
}

impl SenderAwaitingEnd {
    /// The receiver's announced number of distinct identifiers, once it confirms it received
    /// every output.
    pub fn absorb(self, msg: Message) -> Result<u64, PsiError> {
        match msg {
            Message::End { count } if count == self.expected => Ok(self.receiver_items),
            Message::End { count } => Err(PsiError::CountMismatch(format!(
                "the receiver acknowledges {count} outputs; we sent {}",
                self.expected
            ))),
            other => Err(unexpected("end of stream", &other)),
        }
    }
}
