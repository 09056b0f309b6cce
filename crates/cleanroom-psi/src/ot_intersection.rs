//! PSI with a designated output on oblivious transfer (KKRT16 with PSZ hashing), semi-honest:
//! the receiver learns which of its own rows match (first kind in priority order), the sender
//! learns only the receiver's announced numbers of distinct identifiers. Same outcome as
//! [`crate::intersection`], with symmetric-key work instead of four scalar multiplications per
//! pair. See [`crate::ot`] for the pieces and `docs/psi.md` for leakage and parameters.
//!
//! Items are `SHA-256(domain_kind ‖ identifier)` cut to 128 bits, so every kind of the cascade
//! runs in one instance and identical strings of different kinds never meet.
//!
//! Items are split into `B` buckets by their low byte (`B` a power of two, chosen by R from
//! both announced counts so that a bucket holds about 2^21 items; one bucket up to that; S
//! refuses fewer buckets than its own setting gives, which would make it hold more), and
//! the extension runs over the buckets one after the other, so each side holds one bucket's
//! working state at a time; the items themselves wait in an [`ItemStore`], in memory or in
//! sealed temporary files. Every bucket is padded to the same size on both sides
//! ([`crate::ot::bucket_capacity`], overflow ≤ 2^-40): R sends as many columns for each
//! bucket, and S as many outputs (real ones and random ones), whatever the items are.
//!
//! 1. R → S [`Message::OtSetup`]: `A` of the 512 base OTs (R is their sender), R's coin-toss
//!    seed, and the number of buckets `B`.
//! 2. S → R [`Message::OtChoices`]: the base-OT answers for S's random 512-bit secret `s`, and
//!    S's seed. Both now derive the pseudo-random code `C` from both seeds.
//!
//! Then for each bucket, with `m` the padded size of R's buckets and `β = 1.27·m + 256`
//! (rounded up to 128) its bins, which continue the previous bucket's in the extension:
//!
//! 3. R → S [`Message::OtBucket`]: the key of the bucket's cuckoo hash functions, with which R
//!    has placed each distinct item `x` of the bucket in one of its 3 bins (a fresh key if a
//!    placement fails, which happens with probability ≤ 2^-40).
//! 4. R → S [`Message::OtColumns`], chunk by chunk: `u^j = G(k_j^0) ⊕ G(k_j^1) ⊕ d^j` for the
//!    512 columns, where row `b` of `d` is `C(x_b ‖ i_b)` (a random word for an empty bin).
//!    S computes `q_b = G(k_j^{s_j}) ⊕ s_j·u^j` = `t_b ⊕ (d_b ∧ s)`, and for each of its items
//!    `y` and hash `i`, in bin `b = h_i(y)`, the output `H(q_b ⊕ (C(y ‖ i) ∧ s))`. R knows
//!    `H(t_b)`, which is that output exactly when `y ‖ i = x_b ‖ i_b`.
//! 5. S → R [`Message::OtOutputs`]: for each hash `i`, the outputs of the bucket's items and
//!    random outputs up to S's padded size, cut to `w` bytes and sorted (S's file order, the
//!    bins and which outputs are padding stay hidden). R marks the matched items' rows.
//!
//! 6. R → S [`Message::End`]: the number of outputs received.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::group::{TagHasher, fill_random};
use crate::input::{Data, PreparedInput};
use crate::intersection::UNMATCHED;
use crate::ot::base::{self, BaseSender};
use crate::ot::cuckoo::{self, EMPTY};
use crate::ot::matrix::{Prg, transpose, xor_into};
use crate::ot::store::{ItemStore, Rec};
use crate::ot::{
    BIN_ALIGN, BinHash, Code, HASHES, MAX_CHUNK, ROW, WIDTH, bins_for, bucket_capacity,
    buckets_for, item_with_hash, mask_bytes, output,
};
use crate::stream::{Absorb, Emit, unexpected};
use crate::wire::{Message, ProtocolKind, Role};
use crate::{IntersectionOutput, MatchCounts, PsiError, Session};

/// Fresh cuckoo hash keys tried per bucket before giving up (each fails with probability
/// ≤ 2^-40).
const CUCKOO_TRIES: usize = 8;

fn check(session: &Session, input: &PreparedInput, role: Role) -> Result<(), PsiError> {
    if session.protocol != ProtocolKind::IntersectionOt || session.role != role {
        return Err(PsiError::InvalidParameter(
            "this session is not an OT intersection session in this role".into(),
        ));
    }
    input.check_fits(session)
}

fn random_seed() -> Result<[u8; 16], PsiError> {
    let mut s = [0u8; 16];
    fill_random(&mut s)?;
    Ok(s)
}

/// Bins per chunk for a session's batch size: a multiple of 128, at most [`MAX_CHUNK`].
fn chunk_bins(batch: usize) -> usize {
    (batch / BIN_ALIGN * BIN_ALIGN).clamp(BIN_ALIGN, MAX_CHUNK)
}

/// The total of what the peer announced: its distinct items over all kinds.
fn peer_total(session: &Session) -> u64 {
    session.peer_items.iter().sum()
}

/// What both sides derive from the announced counts and the number of buckets.
#[derive(Debug, Clone, Copy)]
struct Shape {
    buckets: usize,
    /// Every receiver bucket's bins (a multiple of [`BIN_ALIGN`]).
    bins: usize,
    /// Items every bucket is padded to, on each side.
    receiver_cap: u64,
    sender_cap: u64,
    width: usize,
}

impl Shape {
    fn new(receiver_items: u64, sender_items: u64, buckets: u64) -> Self {
        let receiver_cap = bucket_capacity(receiver_items, buckets);
        let sender_cap = bucket_capacity(sender_items, buckets);
        let bins = bins_for(receiver_cap);
        Shape {
            buckets: buckets as usize,
            bins: bins as usize,
            receiver_cap,
            sender_cap,
            // Every receiver output meets every sender output of its bucket: at most this
            // many comparisons over the whole session.
            width: mask_bytes(bins * buckets, sender_cap * buckets),
        }
    }
}

/// Entries that cross the wire in a session (bins one way, outputs the other) when the
/// receiver aims at `per_bucket` items a bucket: the progress bar's denominator.
pub(crate) fn expected_entries(receiver_items: u64, sender_items: u64, per_bucket: u64) -> u64 {
    let shape = Shape::new(
        receiver_items,
        sender_items,
        buckets_for(receiver_items, sender_items, per_bucket),
    );
    shape.buckets as u64 * (shape.bins as u64 + HASHES as u64 * shape.sender_cap)
}

/// Our own input put more items in a bucket than every bucket is padded to.
fn overflow(count: usize, cap: u64, buckets: usize) -> PsiError {
    PsiError::InvalidParameter(format!(
        "{count} distinct identifiers fall into one of the {buckets} buckets, more than the \
         {cap} every bucket is padded to; identifiers spread evenly overflow with probability \
         below 2^-40, so these were chosen to collide"
    ))
}

type MaskMap = HashMap<u128, (u32, u8), BuildHasherDefault<TagHasher>>;

// ---------------------------------------------------------------- receiver

/// Receiver, step 1: its items counted, the base OTs and the coin toss about to start.
pub struct ReceiverStarting {
    session: Session,
    store: Box<ItemStore>,
    n_rows: u64,
}

impl ReceiverStarting {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Receiver)?;
        let n_rows = input.rows;
        let Data::Ot(store) = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        if store.total() > u64::from(u32::MAX - 1) {
            return Err(PsiError::InvalidParameter(
                "more than 2^32 distinct identifiers".into(),
            ));
        }
        Ok(ReceiverStarting {
            session,
            store,
            n_rows,
        })
    }

    /// Picks the number of buckets and sends the setup.
    pub fn emit(self) -> Result<(Message, ReceiverAwaitingChoices), PsiError> {
        let sender_items = peer_total(&self.session);
        let buckets = buckets_for(
            self.store.total(),
            sender_items,
            self.session.ot_bucket_items,
        );
        let shape = Shape::new(self.store.total(), sender_items, buckets);
        let base = BaseSender::new()?;
        let seed = random_seed()?;
        let msg = Message::OtSetup {
            point: base.message(),
            seed,
            buckets: buckets as u16,
        };
        Ok((
            msg,
            ReceiverAwaitingChoices {
                shape,
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
    shape: Shape,
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
        let start = self.start;
        Ok(ReceiverExtending {
            code: Code::new(&self.seed, &seed),
            prgs,
            dummies,
            batch: start.session.batch,
            shape: self.shape,
            bucket: 0,
            loaded: None,
            next: 0,
            outputs: MaskMap::default(),
            row_kinds: vec![UNMATCHED; start.n_rows as usize],
            received: 0,
            kinds: start.session.kinds.len(),
            store: start.store,
        })
    }
}

/// One bucket of the receiver's items, placed.
struct RBucket {
    /// The bucket's records, sorted: runs of equal items.
    recs: Vec<Rec>,
    /// Distinct items, and where each one's run of records starts (one more at the end).
    items: Vec<u128>,
    starts: Vec<u32>,
    table: cuckoo::Table,
}

impl RBucket {
    fn load(store: &ItemStore, j: usize, shape: &Shape) -> Result<(Self, [u8; 16]), PsiError> {
        let recs = store.bucket(j, shape.buckets)?;
        let mut items = Vec::new();
        let mut starts = Vec::new();
        let mut at = 0u32;
        for run in recs.chunk_by(|a, b| a.item == b.item) {
            items.push(run[0].item);
            starts.push(at);
            at += run.len() as u32;
        }
        starts.push(at);
        if items.len() as u64 > shape.receiver_cap {
            return Err(overflow(items.len(), shape.receiver_cap, shape.buckets));
        }
        let mut positions = Vec::new();
        for _ in 0..CUCKOO_TRIES {
            let hash_key = random_seed()?;
            BinHash::new(&hash_key, shape.bins as u64).bins_of(&items, &mut positions);
            let walk = u64::from_le_bytes(random_seed()?[..8].try_into().expect("8 bytes"));
            if let Some(table) = cuckoo::build(&positions, shape.bins, walk) {
                return Ok((
                    RBucket {
                        recs,
                        items,
                        starts,
                        table,
                    },
                    hash_key,
                ));
            }
        }
        Err(PsiError::Internal(format!(
            "cuckoo hashing failed with {CUCKOO_TRIES} fresh keys (each fails with \
             probability below 2^-40): a bug"
        )))
    }
}

/// Receiver, step 3: for each bucket, its hash key and then the extension's columns, chunk
/// by chunk, keeping its own outputs `H(t_b)` of the bins that hold an item.
pub struct ReceiverExtending {
    store: Box<ItemStore>,
    shape: Shape,
    code: Code,
    prgs: Vec<[Prg; 2]>,
    dummies: Xoshiro256PlusPlus,
    /// The session's batch: bins per chunk of columns ([`chunk_bins`]), and outputs per
    /// message at most (the sender sends a batch at a time).
    batch: usize,
    bucket: usize,
    loaded: Option<RBucket>,
    /// The next bin of the bucket.
    next: usize,
    outputs: MaskMap,
    row_kinds: Vec<u8>,
    /// Outputs received over the session.
    received: u64,
    kinds: usize,
}

impl ReceiverExtending {
    pub fn emit(mut self) -> Result<Emit<Self, ReceiverCollecting>, PsiError> {
        let Some(bucket) = &self.loaded else {
            let (b, hash_key) = RBucket::load(&self.store, self.bucket, &self.shape)?;
            self.outputs.clear();
            self.outputs.reserve(b.items.len());
            self.loaded = Some(b);
            self.next = 0;
            return Ok(Emit::More(Message::OtBucket { hash_key }, self));
        };
        let bins = self.shape.bins;
        let (b0, c) = (self.next, chunk_bins(self.batch).min(bins - self.next));
        let (table, items) = (&bucket.table, &bucket.items);
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
        // The extension runs on across buckets: bucket j's bins follow bucket j-1's.
        let first_block = ((self.bucket * bins + b0) / BIN_ALIGN) as u64;
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
        let width = self.shape.width;
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
        if self.next < bins {
            return Ok(Emit::More(msg, self));
        }
        Ok(Emit::Last(
            msg,
            ReceiverCollecting {
                received: [0; HASHES],
                matched: vec![false; bucket.items.len()],
                ext: self,
            },
        ))
    }
}

/// What follows a bucket's outputs: the next bucket, or the end.
pub enum ReceiverNext {
    Extend(Box<ReceiverExtending>),
    Done(Message, IntersectionOutput),
}

/// Receiver, step 4: comparing the sender's outputs for the bucket with its own.
pub struct ReceiverCollecting {
    ext: ReceiverExtending,
    matched: Vec<bool>,
    received: [u64; HASHES],
}

impl ReceiverCollecting {
    /// Whether every output the sender owes for this bucket has arrived.
    pub fn is_complete(&self) -> bool {
        self.received
            .iter()
            .all(|r| *r == self.ext.shape.sender_cap)
    }

    pub fn absorb(mut self, msg: Message) -> Result<Absorb<Self, ReceiverNext>, PsiError> {
        let Message::OtOutputs {
            hash,
            width,
            outputs,
        } = msg
        else {
            return Err(unexpected("OPRF outputs", &msg));
        };
        let (h, w) = (usize::from(hash), usize::from(width));
        if w != self.ext.shape.width {
            return Err(PsiError::Malformed(format!(
                "outputs of {w} bytes where the session uses {}",
                self.ext.shape.width
            )));
        }
        if outputs.is_empty() || outputs.len() / w > self.ext.batch {
            // An empty batch would only keep us waiting; a larger one than agreed, more to hold.
            return Err(PsiError::Malformed(format!(
                "a batch of {} outputs; the session's hold 1 to {}",
                outputs.len() / w,
                self.ext.batch
            )));
        }
        let cap = self.ext.shape.sender_cap;
        // Hash functions come in order, each complete before the next.
        let current = self
            .received
            .iter()
            .position(|r| *r < cap)
            .unwrap_or(HASHES);
        if h != current {
            return Err(PsiError::CountMismatch(format!(
                "outputs for hash function {h} where those of hash function {current} were due \
                 ({cap} per hash function and bucket)"
            )));
        }
        let n = (outputs.len() / w) as u64;
        if self.received[h] + n > cap {
            return Err(PsiError::CountMismatch(format!(
                "more than the {cap} outputs due for hash function {h} in this bucket"
            )));
        }
        self.received[h] += n;
        self.ext.received += n;
        for o in outputs.chunks_exact(w) {
            let mut b = [0u8; 16];
            b[..w].copy_from_slice(o);
            if let Some((item, ih)) = self.ext.outputs.get(&u128::from_le_bytes(b))
                && usize::from(*ih) == h
            {
                self.matched[*item as usize] = true;
            }
        }
        if !self.is_complete() {
            return Ok(Absorb::More(self));
        }
        Ok(Absorb::Next(self.advance()))
    }

    /// Marks the bucket's matched rows and moves to the next bucket, or ends the session.
    pub fn advance(self) -> ReceiverNext {
        let mut ext = self.ext;
        let bucket = ext
            .loaded
            .take()
            .expect("a bucket is loaded while collecting");
        for (i, m) in self.matched.iter().enumerate() {
            if !m {
                continue;
            }
            let (s, e) = (bucket.starts[i] as usize, bucket.starts[i + 1] as usize);
            for r in &bucket.recs[s..e] {
                // Kinds are numbered in priority order: the first match wins.
                let slot = &mut ext.row_kinds[r.row as usize];
                *slot = (*slot).min(r.kind);
            }
        }
        drop(bucket);
        ext.bucket += 1;
        if ext.bucket < ext.shape.buckets {
            return ReceiverNext::Extend(Box::new(ext));
        }
        let mut counts = vec![0i64; ext.kinds];
        for rk in &ext.row_kinds {
            if *rk != UNMATCHED {
                counts[*rk as usize] += 1;
            }
        }
        ReceiverNext::Done(
            Message::End {
                count: ext.received,
            },
            IntersectionOutput {
                row_kinds: ext.row_kinds,
                counts: MatchCounts::new(counts, false),
            },
        )
    }
}

// ---------------------------------------------------------------- sender

/// Sender, step 1: waiting for the receiver's setup.
pub struct SenderStarting {
    session: Session,
    store: Box<ItemStore>,
}

impl SenderStarting {
    pub fn new(session: Session, input: PreparedInput) -> Result<Self, PsiError> {
        check(&session, &input, Role::Sender)?;
        let Data::Ot(store) = input.data else {
            return Err(PsiError::InvalidParameter("input layout".into()));
        };
        if store.total() > u64::from(u32::MAX) {
            return Err(PsiError::InvalidParameter(
                "more than 2^32 distinct identifiers".into(),
            ));
        }
        Ok(SenderStarting { session, store })
    }

    /// Answers the base OTs with a fresh secret `s`.
    pub fn absorb(self, msg: Message) -> Result<(Message, SenderAwaitingBucket), PsiError> {
        let Message::OtSetup {
            point,
            seed,
            buckets,
        } = msg
        else {
            return Err(unexpected("the OT setup", &msg));
        };
        let mut s = Zeroizing::new([0u8; ROW]);
        fill_random(&mut s[..])?;
        let (points, keys) = base::receive(&point, &s)?;
        let prgs = keys.iter().map(Prg::new).collect();
        let own_seed = random_seed()?;
        let receiver_items = peer_total(&self.session);
        // The wire allows only powers of two up to 256 buckets. Fewer than our own setting
        // needs would make one bucket hold more of our items than we hold at a time (one
        // bucket would hold them all): refused.
        let fewest = buckets_for(
            receiver_items,
            self.store.total(),
            self.session.ot_bucket_items,
        );
        if u64::from(buckets) < fewest {
            return Err(PsiError::Incompatible(format!(
                "the receiver splits the items into {buckets} buckets; with {receiver_items} of \
                 its items and {} of ours, this side holds one bucket at a time and needs at \
                 least {fewest}",
                self.store.total()
            )));
        }
        let shape = Shape::new(receiver_items, self.store.total(), u64::from(buckets));
        Ok((
            Message::OtChoices {
                points,
                seed: own_seed,
            },
            SenderAwaitingBucket {
                ctx: Box::new(SenderContext {
                    code: Code::new(&seed, &own_seed),
                    prgs,
                    s,
                    shape,
                    bucket: 0,
                    sent: 0,
                    receiver_items,
                    batch: self.session.batch,
                    store: self.store,
                }),
            },
        ))
    }
}

/// What the sender keeps for the whole session.
struct SenderContext {
    store: Box<ItemStore>,
    code: Code,
    prgs: Vec<Prg>,
    s: Zeroizing<[u8; ROW]>,
    shape: Shape,
    bucket: usize,
    /// Outputs sent so far.
    sent: u64,
    receiver_items: u64,
    batch: usize,
}

impl SenderContext {
    /// After a bucket's outputs (or straight after its columns when it has none to send).
    fn after_bucket(mut self: Box<Self>) -> SenderNext {
        self.bucket += 1;
        if self.bucket < self.shape.buckets {
            SenderNext::Bucket(SenderAwaitingBucket { ctx: self })
        } else {
            SenderNext::Await(SenderAwaitingEnd {
                expected: self.sent,
                receiver_items: self.receiver_items,
            })
        }
    }
}

/// Where the sender goes next.
pub enum SenderNext {
    /// Send the bucket's outputs.
    Send(SenderSending),
    /// Wait for the next bucket's key.
    Bucket(SenderAwaitingBucket),
    /// Wait for the receiver's acknowledgement.
    Await(SenderAwaitingEnd),
}

/// Sender, step 2: waiting for a bucket's hash key.
pub struct SenderAwaitingBucket {
    ctx: Box<SenderContext>,
}

impl SenderAwaitingBucket {
    /// Lays out where the bucket's items fall.
    pub fn absorb(self, msg: Message) -> Result<SenderExtending, PsiError> {
        let Message::OtBucket { hash_key } = msg else {
            return Err(unexpected("a bucket's hash key", &msg));
        };
        let ctx = self.ctx;
        let items: Vec<u128> = ctx
            .store
            .bucket(ctx.bucket, ctx.shape.buckets)?
            .into_iter()
            .map(|r| r.item)
            .collect();
        if items.len() as u64 > ctx.shape.sender_cap {
            // Our own input: refuse rather than send more outputs than announced.
            return Err(overflow(
                items.len(),
                ctx.shape.sender_cap,
                ctx.shape.buckets,
            ));
        }
        let mut positions = Vec::new();
        BinHash::new(&hash_key, ctx.shape.bins as u64).bins_of(&items, &mut positions);
        // (bin, item, hash) for every item and hash, in bin order: chunks arrive in bin order.
        let mut pairs: Vec<(u32, u32, u8)> = positions
            .iter()
            .enumerate()
            .map(|(k, b)| (*b, (k / HASHES) as u32, (k % HASHES) as u8))
            .collect();
        drop(positions);
        pairs.par_sort_unstable_by_key(|p| p.0);
        Ok(SenderExtending {
            ctx,
            items,
            pairs,
            pos: 0,
            next: 0,
            outputs: Default::default(),
        })
    }
}

/// Sender, step 3: receiving a bucket's columns and computing its outputs, chunk by chunk.
pub struct SenderExtending {
    ctx: Box<SenderContext>,
    items: Vec<u128>,
    pairs: Vec<(u32, u32, u8)>,
    pos: usize,
    next: usize,
    outputs: [Vec<u128>; HASHES],
}

impl SenderExtending {
    pub fn absorb(mut self, msg: Message) -> Result<Absorb<Self, SenderNext>, PsiError> {
        let Message::OtColumns { bins: c, columns } = msg else {
            return Err(unexpected("the extension's columns", &msg));
        };
        let bins = self.ctx.shape.bins;
        let (b0, c) = (self.next, c as usize);
        if b0 + c > bins {
            return Err(PsiError::CountMismatch(format!(
                "columns for more than the {bins} bins of a bucket"
            )));
        }
        // The receiver sends the bucket's bins in chunks of the session's size (the last one
        // shorter): a chunk of another size would only be another amount to hold.
        let chunk = chunk_bins(self.ctx.batch).min(bins - b0);
        if c != chunk {
            return Err(PsiError::Malformed(format!(
                "columns for {c} bins where the next chunk has {chunk}"
            )));
        }
        let bytes = c / 8;
        let first_block = ((self.ctx.bucket * bins + b0) / BIN_ALIGN) as u64;
        let s = &self.ctx.s;
        let mut q_cols = vec![0u8; c * ROW];
        q_cols
            .par_chunks_mut(bytes)
            .zip(columns.par_chunks(bytes))
            .zip(self.ctx.prgs.par_iter())
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
        let (items, code, width) = (&self.items, &self.ctx.code, self.ctx.shape.width);
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
        if self.next < bins {
            return Ok(Absorb::More(self));
        }
        let cap = self.ctx.shape.sender_cap as usize;
        if cap == 0 {
            return Ok(Absorb::Next(self.ctx.after_bucket()));
        }
        let mut outputs = self.outputs;
        // Random outputs up to the padded size, from the operating system's generator: to the
        // receiver they look like the outputs of items it does not hold.
        let keep = if width >= 16 {
            u128::MAX
        } else {
            (1u128 << (8 * width)) - 1
        };
        for list in &mut outputs {
            let missing = cap - list.len();
            let mut random = Zeroizing::new(vec![0u8; missing * 16]);
            fill_random(&mut random)?;
            list.extend(
                random
                    .chunks_exact(16)
                    .map(|b| u128::from_le_bytes(b.try_into().expect("16 bytes")) & keep),
            );
        }
        // Sorted: the order is a function of the outputs alone, which R sees anyway, so it
        // says nothing of S's file order, of the bins, or of which outputs are padding.
        outputs.par_iter_mut().for_each(|o| o.par_sort_unstable());
        Ok(Absorb::Next(SenderNext::Send(SenderSending {
            outputs,
            hash: 0,
            pos: 0,
            ctx: self.ctx,
        })))
    }
}

/// Sender, step 4: sending a bucket's outputs, hash function by hash function.
pub struct SenderSending {
    ctx: Box<SenderContext>,
    outputs: [Vec<u128>; HASHES],
    hash: usize,
    pos: usize,
}

impl SenderSending {
    pub fn emit(mut self) -> Result<Emit<Self, SenderNext>, PsiError> {
        while self.hash < HASHES && self.pos >= self.outputs[self.hash].len() {
            self.hash += 1;
            self.pos = 0;
        }
        if self.hash >= HASHES {
            return Err(PsiError::Internal("no outputs left to send".into()));
        }
        let width = self.ctx.shape.width;
        let list = &self.outputs[self.hash];
        let end = (self.pos + self.ctx.batch).min(list.len());
        let mut bytes = Vec::with_capacity((end - self.pos) * width);
        for o in &list[self.pos..end] {
            bytes.extend_from_slice(&o.to_le_bytes()[..width]);
        }
        self.ctx.sent += (end - self.pos) as u64;
        let msg = Message::OtOutputs {
            hash: self.hash as u8,
            width: width as u8,
            outputs: bytes,
        };
        self.pos = end;
        let last = self.hash == HASHES - 1 && self.pos >= list.len();
        if last {
            Ok(Emit::Last(msg, self.ctx.after_bucket()))
        } else {
            Ok(Emit::More(msg, self))
        }
    }
}

/// Sender, step 5: waiting for the receiver's acknowledgement.
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
