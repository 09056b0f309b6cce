//! Typed messages and their byte encoding. A transport frames each encoded message; decoding
//! checks every length exactly, so a malformed message is an error, never a panic or a large
//! allocation (`MAX_BATCH` bounds every vector).

use crate::PsiError;
use crate::group::{Point, Tag};

/// The first bytes of every session: "cleanroom PSI".
pub const MAGIC: [u8; 8] = *b"CLRMPSI\n";
pub use crate::PROTOCOL_VERSION;
/// The most entries one message may carry.
pub const MAX_BATCH: usize = 1 << 16;

/// What the session computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolKind {
    /// Both parties learn the number of matched records (per identifier kind).
    Cardinality,
    /// The receiver learns which of its own records match; the sender learns nothing.
    Intersection,
    /// The receiver, who has no values, learns the number of matched records and the sum of
    /// the sender's values over them; the sender, who holds the values, learns nothing but
    /// the receiver's set sizes (masked decryption, `sum.rs`).
    Sum,
    /// The receiver, who holds the values, learns the sum of its own values over matched
    /// records; both learn the number of matched records (Private Join and Compute's paper).
    SumToValuesHolder,
    /// The same outcome as `Intersection`, on oblivious transfer (KKRT16) rather than ECDH.
    IntersectionOt,
}

impl ProtocolKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProtocolKind::Cardinality => "cardinality",
            ProtocolKind::Intersection => "intersection",
            ProtocolKind::Sum => "sum",
            ProtocolKind::SumToValuesHolder => "sum-to-values-holder",
            ProtocolKind::IntersectionOt => "intersection-ot",
        }
    }

    /// Which role holds the values of a sum (and its ElGamal key).
    pub fn values_holder(&self) -> Option<Role> {
        match self {
            ProtocolKind::Sum => Some(Role::Sender),
            ProtocolKind::SumToValuesHolder => Some(Role::Receiver),
            ProtocolKind::Cardinality
            | ProtocolKind::Intersection
            | ProtocolKind::IntersectionOt => None,
        }
    }

    pub fn is_sum(&self) -> bool {
        self.values_holder().is_some()
    }

    pub fn parse(s: &str) -> Result<Self, PsiError> {
        match s {
            "cardinality" => Ok(ProtocolKind::Cardinality),
            "intersection" => Ok(ProtocolKind::Intersection),
            "sum" => Ok(ProtocolKind::Sum),
            "sum-to-values-holder" => Ok(ProtocolKind::SumToValuesHolder),
            "intersection-ot" => Ok(ProtocolKind::IntersectionOt),
            other => Err(PsiError::InvalidParameter(format!(
                "unknown protocol {other:?}: use cardinality, intersection, intersection-ot, sum or sum-to-values-holder"
            ))),
        }
    }

    fn code(self) -> u8 {
        match self {
            ProtocolKind::Cardinality => 1,
            ProtocolKind::Intersection => 2,
            ProtocolKind::SumToValuesHolder => 3,
            ProtocolKind::Sum => 4,
            ProtocolKind::IntersectionOt => 5,
        }
    }

    fn from_code(c: u8) -> Result<Self, PsiError> {
        match c {
            1 => Ok(ProtocolKind::Cardinality),
            2 => Ok(ProtocolKind::Intersection),
            3 => Ok(ProtocolKind::SumToValuesHolder),
            4 => Ok(ProtocolKind::Sum),
            5 => Ok(ProtocolKind::IntersectionOt),
            _ => Err(PsiError::Malformed(format!("unknown protocol code {c}"))),
        }
    }
}

/// The designated-output side is the receiver; the other is the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Receiver,
    Sender,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Receiver => "receiver",
            Role::Sender => "sender",
        }
    }
}

/// The first message of each side, compared before anything else flows.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    pub version: u16,
    pub protocol: ProtocolKind,
    pub role: Role,
    /// Identifier kinds in priority order.
    pub kinds: Vec<String>,
    /// How many entries this side will send for each kind (distinct identifiers), or, for a
    /// side that sends records as tuples, one number: its distinct records.
    pub items: Vec<u64>,
    /// Entries per message this side would like; the session uses the smaller of the two.
    pub batch: u32,
    /// Sum sessions: the values holder's clamp bound on each value (`0` otherwise).
    pub max_value: u64,
    /// Noise this side requires on released counts and sums (`None`: no requirement).
    pub count_epsilon: Option<f64>,
    pub sum_epsilon: Option<f64>,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.version.to_be_bytes());
        b.push(self.protocol.code());
        b.push(match self.role {
            Role::Receiver => 1,
            Role::Sender => 2,
        });
        b.push(self.kinds.len() as u8);
        for k in &self.kinds {
            b.push(k.len() as u8);
            b.extend_from_slice(k.as_bytes());
        }
        b.push(self.items.len() as u8);
        for n in &self.items {
            b.extend_from_slice(&n.to_be_bytes());
        }
        b.extend_from_slice(&self.batch.to_be_bytes());
        b.extend_from_slice(&self.max_value.to_be_bytes());
        for e in [self.count_epsilon, self.sum_epsilon] {
            b.extend_from_slice(&e.unwrap_or(0.0).to_bits().to_be_bytes());
        }
        b
    }

    /// Decodes a peer's hello. The magic and the version are checked first, so a peer of another
    /// version gets a version error rather than a parse error.
    pub fn decode(b: &[u8]) -> Result<Self, PsiError> {
        if b.len() < 10 || b[..8] != MAGIC {
            return Err(PsiError::NotPsi);
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != PROTOCOL_VERSION {
            return Err(PsiError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        let mut r = Reader { b, pos: 10 };
        let protocol = ProtocolKind::from_code(r.u8()?)?;
        let role = match r.u8()? {
            1 => Role::Receiver,
            2 => Role::Sender,
            c => return Err(PsiError::Malformed(format!("unknown role code {c}"))),
        };
        let nk = r.u8()? as usize;
        let mut kinds = Vec::with_capacity(nk);
        for _ in 0..nk {
            let l = r.u8()? as usize;
            let s = std::str::from_utf8(r.take(l)?)
                .map_err(|_| PsiError::Malformed("identifier kind is not UTF-8".into()))?;
            kinds.push(s.to_owned());
        }
        let ni = r.u8()? as usize;
        let mut items = Vec::with_capacity(ni);
        for _ in 0..ni {
            items.push(r.u64()?);
        }
        let batch = r.u32()?;
        let max_value = r.u64()?;
        let eps = |bits: u64| {
            let e = f64::from_bits(bits);
            if e == 0.0 { None } else { Some(e) }
        };
        let count_epsilon = eps(r.u64()?);
        let sum_epsilon = eps(r.u64()?);
        r.end()?;
        Ok(Hello {
            version,
            protocol,
            role,
            kinds,
            items,
            batch,
            max_value,
            count_epsilon,
            sum_epsilon,
        })
    }
}

/// The messages of the protocols after the hello.
#[derive(Clone, PartialEq)]
pub enum Message {
    /// Singly-blinded identifiers of one kind (index into the session's kinds).
    Points { kind: u8, points: Vec<Point> },
    /// Singly-blinded records: `width` points per record, one per kind (absent ones random).
    Tuples { width: u8, points: Vec<Point> },
    /// Double-blinded tags: `width` per entry; `section` is the kind for per-kind streams.
    Tags {
        section: u8,
        width: u8,
        tags: Vec<Tag>,
    },
    /// Singly-blinded records with an encrypted value each.
    SumRecords {
        width: u8,
        points: Vec<Point>,
        ciphertexts: Vec<[u8; 64]>,
    },
    /// The receiver's ElGamal public key (sum).
    PublicKey([u8; 32]),
    /// The end of a stream, with the number of entries it held.
    End { count: u64 },
    /// Released counts, one per kind (cascade order).
    CardinalityResult { counts: Vec<i64> },
    /// Released counts and encrypted, re-randomised sums, one per kind.
    SumResult {
        counts: Vec<i64>,
        sums: Vec<[u8; 64]>,
    },
    /// The receiver has what it needs; the session is over.
    Done,
    /// Sum to the party without values: its encrypted sums, one per kind, each masked with a
    /// uniformly random `Enc(r)` and re-randomised, for the values holder to decrypt.
    MaskedSums { sums: Vec<[u8; 64]> },
    /// Sum to the party without values: the values holder's decryptions of the masked sums as
    /// group elements `(S + r + noise)·G`, one per kind, in the same order.
    DecryptedMaskedSums { elements: Vec<Point> },
    /// OT intersection, receiver → sender: `A` of the base OTs, the receiver's share of the
    /// coin toss for the code, and the number of buckets the items are split into (a power
    /// of two, at most 256).
    OtSetup {
        point: Point,
        seed: [u8; 16],
        buckets: u16,
    },
    /// OT intersection, receiver → sender, before each bucket's columns: the key of the
    /// bucket's cuckoo hash functions.
    OtBucket { hash_key: [u8; 16] },
    /// OT intersection, sender → receiver: the 512 base-OT answers and its coin-toss share.
    OtChoices { points: Vec<Point>, seed: [u8; 16] },
    /// OT intersection, receiver → sender: the extension's 512 columns for the next `bins`
    /// bins (a multiple of 128), `bins / 8` bytes each, column after column.
    OtColumns { bins: u32, columns: Vec<u8> },
    /// OT intersection, sender → receiver: OPRF outputs of its items under hash function
    /// `hash`, `width` bytes each, sorted.
    OtOutputs {
        hash: u8,
        width: u8,
        outputs: Vec<u8>,
    },
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Message::{}", self.name())
    }
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Points { .. } => "points",
            Message::Tuples { .. } => "tuples",
            Message::Tags { .. } => "tags",
            Message::SumRecords { .. } => "sum records",
            Message::PublicKey(_) => "public key",
            Message::End { .. } => "end of stream",
            Message::CardinalityResult { .. } => "cardinality result",
            Message::SumResult { .. } => "sum result",
            Message::Done => "done",
            Message::MaskedSums { .. } => "masked sums",
            Message::DecryptedMaskedSums { .. } => "decrypted masked sums",
            Message::OtSetup { .. } => "OT setup",
            Message::OtBucket { .. } => "OT bucket key",
            Message::OtChoices { .. } => "base-OT answers",
            Message::OtColumns { .. } => "OT extension columns",
            Message::OtOutputs { .. } => "OPRF outputs",
        }
    }

    /// How many entries the message carries (for progress reports).
    pub fn entries(&self) -> usize {
        match self {
            Message::Points { points, .. } => points.len(),
            Message::Tuples { width, points } => points.len() / (*width).max(1) as usize,
            Message::Tags { width, tags, .. } => tags.len() / (*width).max(1) as usize,
            Message::SumRecords { ciphertexts, .. } => ciphertexts.len(),
            Message::OtColumns { bins, .. } => *bins as usize,
            Message::OtOutputs { width, outputs, .. } => outputs.len() / (*width).max(1) as usize,
            _ => 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Message::Points { kind, points } => {
                b.reserve(6 + 32 * points.len());
                b.push(1);
                b.push(*kind);
                b.extend_from_slice(&(points.len() as u32).to_be_bytes());
                points.iter().for_each(|p| b.extend_from_slice(p));
            }
            Message::Tuples { width, points } => {
                b.reserve(6 + 32 * points.len());
                b.push(2);
                b.push(*width);
                let n = points.len() / (*width).max(1) as usize;
                b.extend_from_slice(&(n as u32).to_be_bytes());
                points.iter().for_each(|p| b.extend_from_slice(p));
            }
            Message::Tags {
                section,
                width,
                tags,
            } => {
                b.reserve(7 + 16 * tags.len());
                b.push(3);
                b.push(*section);
                b.push(*width);
                let n = tags.len() / (*width).max(1) as usize;
                b.extend_from_slice(&(n as u32).to_be_bytes());
                tags.iter().for_each(|t| b.extend_from_slice(t));
            }
            Message::SumRecords {
                width,
                points,
                ciphertexts,
            } => {
                b.reserve(6 + 32 * points.len() + 64 * ciphertexts.len());
                b.push(4);
                b.push(*width);
                b.extend_from_slice(&(ciphertexts.len() as u32).to_be_bytes());
                points.iter().for_each(|p| b.extend_from_slice(p));
                ciphertexts.iter().for_each(|c| b.extend_from_slice(c));
            }
            Message::PublicKey(k) => {
                b.push(5);
                b.extend_from_slice(k);
            }
            Message::End { count } => {
                b.push(6);
                b.extend_from_slice(&count.to_be_bytes());
            }
            Message::CardinalityResult { counts } => {
                b.push(7);
                b.push(counts.len() as u8);
                counts
                    .iter()
                    .for_each(|c| b.extend_from_slice(&c.to_be_bytes()));
            }
            Message::SumResult { counts, sums } => {
                b.push(8);
                b.push(counts.len() as u8);
                counts
                    .iter()
                    .for_each(|c| b.extend_from_slice(&c.to_be_bytes()));
                sums.iter().for_each(|s| b.extend_from_slice(s));
            }
            Message::Done => b.push(9),
            Message::MaskedSums { sums } => {
                b.reserve(2 + 64 * sums.len());
                b.push(10);
                b.push(sums.len() as u8);
                sums.iter().for_each(|s| b.extend_from_slice(s));
            }
            Message::DecryptedMaskedSums { elements } => {
                b.reserve(2 + 32 * elements.len());
                b.push(11);
                b.push(elements.len() as u8);
                elements.iter().for_each(|e| b.extend_from_slice(e));
            }
            Message::OtSetup {
                point,
                seed,
                buckets,
            } => {
                b.push(12);
                b.extend_from_slice(point);
                b.extend_from_slice(seed);
                b.extend_from_slice(&buckets.to_be_bytes());
            }
            Message::OtBucket { hash_key } => {
                b.push(16);
                b.extend_from_slice(hash_key);
            }
            Message::OtChoices { points, seed } => {
                b.reserve(21 + 32 * points.len());
                b.push(13);
                b.extend_from_slice(&(points.len() as u32).to_be_bytes());
                points.iter().for_each(|p| b.extend_from_slice(p));
                b.extend_from_slice(seed);
            }
            Message::OtColumns { bins, columns } => {
                b.reserve(5 + columns.len());
                b.push(14);
                b.extend_from_slice(&bins.to_be_bytes());
                b.extend_from_slice(columns);
            }
            Message::OtOutputs {
                hash,
                width,
                outputs,
            } => {
                b.reserve(7 + outputs.len());
                b.push(15);
                b.push(*hash);
                b.push(*width);
                let n = outputs.len() / (*width).max(1) as usize;
                b.extend_from_slice(&(n as u32).to_be_bytes());
                b.extend_from_slice(outputs);
            }
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, PsiError> {
        let mut r = Reader { b, pos: 0 };
        let msg = match r.u8()? {
            1 => {
                let kind = r.u8()?;
                let n = r.count()?;
                Message::Points {
                    kind,
                    points: r.arrays(n)?,
                }
            }
            2 => {
                let width = r.width()?;
                let n = r.count()?;
                Message::Tuples {
                    width,
                    points: r.arrays(n * width as usize)?,
                }
            }
            3 => {
                let section = r.u8()?;
                let width = r.width()?;
                let n = r.count()?;
                Message::Tags {
                    section,
                    width,
                    tags: r.arrays(n * width as usize)?,
                }
            }
            4 => {
                let width = r.width()?;
                let n = r.count()?;
                Message::SumRecords {
                    width,
                    points: r.arrays(n * width as usize)?,
                    ciphertexts: r.arrays(n)?,
                }
            }
            5 => Message::PublicKey(r.array()?),
            6 => Message::End { count: r.u64()? },
            7 => {
                let n = r.width()? as usize;
                let mut counts = Vec::with_capacity(n);
                for _ in 0..n {
                    counts.push(r.u64()? as i64);
                }
                Message::CardinalityResult { counts }
            }
            8 => {
                let n = r.width()? as usize;
                let mut counts = Vec::with_capacity(n);
                for _ in 0..n {
                    counts.push(r.u64()? as i64);
                }
                Message::SumResult {
                    counts,
                    sums: r.arrays(n)?,
                }
            }
            9 => Message::Done,
            10 => {
                let n = r.width()? as usize;
                Message::MaskedSums { sums: r.arrays(n)? }
            }
            11 => {
                let n = r.width()? as usize;
                Message::DecryptedMaskedSums {
                    elements: r.arrays(n)?,
                }
            }
            12 => {
                let (point, seed) = (r.array()?, r.array()?);
                let buckets = u16::from_be_bytes(r.array()?);
                let max = crate::ot::store::PARTS as u16;
                if !buckets.is_power_of_two() || buckets > max {
                    return Err(PsiError::Malformed(format!(
                        "{buckets} buckets; a power of two up to {max} is allowed"
                    )));
                }
                Message::OtSetup {
                    point,
                    seed,
                    buckets,
                }
            }
            16 => Message::OtBucket {
                hash_key: r.array()?,
            },
            13 => {
                let n = r.count()?;
                // Exactly one answer per base OT: refused before the points are read.
                if n != crate::ot::WIDTH {
                    return Err(PsiError::CountMismatch(format!(
                        "{n} base-OT answers; the extension uses {}",
                        crate::ot::WIDTH
                    )));
                }
                Message::OtChoices {
                    points: r.arrays(n)?,
                    seed: r.array()?,
                }
            }
            14 => {
                let bins = r.u32()?;
                let ok = bins > 0
                    && (bins as usize).is_multiple_of(crate::ot::BIN_ALIGN)
                    && bins as usize <= crate::ot::MAX_CHUNK;
                if !ok {
                    return Err(PsiError::Malformed(format!(
                        "{bins} bins in one chunk; a positive multiple of {} up to {} is allowed",
                        crate::ot::BIN_ALIGN,
                        crate::ot::MAX_CHUNK
                    )));
                }
                Message::OtColumns {
                    bins,
                    columns: r.take(bins as usize * crate::ot::ROW)?.to_vec(),
                }
            }
            15 => {
                let hash = r.u8()?;
                if hash as usize >= crate::ot::HASHES {
                    return Err(PsiError::Malformed(format!("hash function {hash}")));
                }
                let width = r.u8()?;
                if !(8..=16).contains(&width) {
                    return Err(PsiError::Malformed(format!("outputs of {width} bytes")));
                }
                let n = r.count()?;
                Message::OtOutputs {
                    hash,
                    width,
                    outputs: r.take(n * width as usize)?.to_vec(),
                }
            }
            t => return Err(PsiError::Malformed(format!("unknown message type {t}"))),
        };
        r.end()?;
        Ok(msg)
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PsiError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| PsiError::Malformed("message is truncated".into()))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PsiError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, PsiError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, PsiError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn width(&mut self) -> Result<u8, PsiError> {
        let w = self.u8()?;
        if w == 0 || w as usize > crate::group::MAX_KINDS {
            return Err(PsiError::Malformed(format!("width {w} out of range")));
        }
        Ok(w)
    }
    fn count(&mut self) -> Result<usize, PsiError> {
        let n = self.u32()? as usize;
        if n > MAX_BATCH {
            return Err(PsiError::Malformed(format!(
                "{n} entries in one message; at most {MAX_BATCH} are allowed"
            )));
        }
        Ok(n)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PsiError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn arrays<const N: usize>(&mut self, n: usize) -> Result<Vec<[u8; N]>, PsiError> {
        // Check the length before allocating.
        let bytes = self.take(
            n.checked_mul(N)
                .ok_or_else(|| PsiError::Malformed("length overflow".into()))?,
        )?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                a
            })
            .collect())
    }
    fn end(&self) -> Result<(), PsiError> {
        if self.pos != self.b.len() {
            return Err(PsiError::Malformed(format!(
                "{} trailing bytes",
                self.b.len() - self.pos
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let msgs = vec![
            Message::Points {
                kind: 1,
                points: vec![[7; 32], [8; 32]],
            },
            Message::Tuples {
                width: 2,
                points: vec![[1; 32]; 4],
            },
            Message::Tags {
                section: 0,
                width: 1,
                tags: vec![[3; 16]; 3],
            },
            Message::SumRecords {
                width: 1,
                points: vec![[1; 32]; 2],
                ciphertexts: vec![[2; 64]; 2],
            },
            Message::PublicKey([9; 32]),
            Message::End { count: 42 },
            Message::CardinalityResult {
                counts: vec![3, -1],
            },
            Message::SumResult {
                counts: vec![1],
                sums: vec![[4; 64]],
            },
            Message::Done,
            Message::MaskedSums {
                sums: vec![[5; 64], [6; 64]],
            },
            Message::DecryptedMaskedSums {
                elements: vec![[7; 32]],
            },
            Message::OtSetup {
                point: [1; 32],
                seed: [2; 16],
                buckets: 64,
            },
            Message::OtBucket { hash_key: [3; 16] },
            Message::OtChoices {
                points: vec![[4; 32]; crate::ot::WIDTH],
                seed: [5; 16],
            },
            Message::OtColumns {
                bins: 128,
                columns: vec![6; 128 * 64],
            },
            Message::OtOutputs {
                hash: 2,
                width: 11,
                outputs: vec![7; 33],
            },
        ];
        for m in msgs {
            let b = m.encode();
            assert_eq!(Message::decode(&b).unwrap(), m);
            assert!(Message::decode(&b[..b.len() - 1]).is_err() || b.len() == 1);
            let mut longer = b.clone();
            longer.push(0);
            assert!(Message::decode(&longer).is_err());
        }
        assert!(Message::decode(&[]).is_err());
        assert!(Message::decode(&[0x42, 1, 2, 3]).is_err());
        // A huge announced count is refused before allocating.
        assert!(Message::decode(&[1, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Chunks of bins that are not a positive multiple of 128, or too large; a fourth hash
        // function; outputs narrower than 8 bytes.
        for bins in [0u32, 100, 1 << 15] {
            let mut m = vec![14];
            m.extend_from_slice(&bins.to_be_bytes());
            assert!(Message::decode(&m).is_err(), "{bins}");
        }
        assert!(Message::decode(&[15, 3, 10, 0, 0, 0, 0]).is_err());
        // Buckets that are not a power of two up to 256.
        for buckets in [0u16, 3, 512] {
            let mut m = vec![12];
            m.extend_from_slice(&[1; 48]);
            m.extend_from_slice(&buckets.to_be_bytes());
            assert!(Message::decode(&m).is_err(), "{buckets}");
        }
        assert!(Message::decode(&[15, 0, 4, 0, 0, 0, 0]).is_err());
        // Base-OT answers other than one per base OT, refused from their count alone.
        for n in [0u32, 511, 513, 65_536] {
            let mut m = vec![13];
            m.extend_from_slice(&n.to_be_bytes());
            assert_eq!(
                Message::decode(&m).unwrap_err().code(),
                "count_mismatch",
                "{n}"
            );
        }
    }

    #[test]
    fn hello_checks_magic_then_version() {
        let h = Hello {
            version: PROTOCOL_VERSION,
            protocol: ProtocolKind::SumToValuesHolder,
            role: Role::Receiver,
            kinds: vec!["email".into(), "phone".into()],
            items: vec![10, 20],
            batch: 1024,
            max_value: 100,
            count_epsilon: Some(0.5),
            sum_epsilon: None,
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        let mut other = h.encode();
        other[8..10].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
        assert_eq!(
            Hello::decode(&other).unwrap_err().to_string(),
            format!(
                "peer speaks PSI protocol v{}, we speak v{PROTOCOL_VERSION}",
                PROTOCOL_VERSION + 1
            )
        );
        assert_eq!(Hello::decode(b"GET / HTTP/1.1\r\n"), Err(PsiError::NotPsi));
    }
}
