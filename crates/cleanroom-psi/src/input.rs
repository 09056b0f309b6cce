//! A party's input, blinded as it is read: normalised identifiers go in batch by batch, are
//! hashed to the group and raised to the session key in parallel, and only the blinded points
//! are kept. Nothing here ever leaves the process except through the protocol messages.
//!
//! Sorting the blinded points both removes duplicates and fixes an order that is a function of
//! the blinded values alone — which the peer sees anyway — so the order reveals nothing about
//! the order of the input file (it is as good as a random shuffle, without a second copy).

use rayon::prelude::*;

use crate::group::{Kinds, Point, SessionKey};
use crate::ot::store::{ItemStore, Rec, SpillConfig};
use crate::wire::{ProtocolKind, Role};
use crate::{PsiError, Session};

/// Placeholder for an absent identifier inside a record (the identity's encoding, which no
/// blinded identifier takes); replaced by a random point before it is sent.
pub(crate) const ABSENT: Point = [0u8; 32];

/// How a party's input is kept, which depends on its protocol and role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Distinct identifiers per kind (the sender of cardinality and intersection, and the
    /// side of a sum without values).
    Set,
    /// Distinct identifiers per kind with the rows they came from (the intersection receiver).
    Rows,
    /// Distinct records: one slot per kind, and a value for sums (the cardinality receiver and
    /// the values holder of a sum).
    Tuples,
}

impl Layout {
    pub fn of(protocol: ProtocolKind, role: Role) -> Layout {
        match (protocol, role) {
            (ProtocolKind::Intersection | ProtocolKind::IntersectionOt, Role::Receiver) => {
                Layout::Rows
            }
            (ProtocolKind::Cardinality, Role::Receiver) => Layout::Tuples,
            (p, r) if p.values_holder() == Some(r) => Layout::Tuples,
            _ => Layout::Set,
        }
    }
}

/// Rows are blinded this many at a time.
const FLUSH: usize = 8192;

struct Pending {
    row: u32,
    ids: Vec<Option<Vec<u8>>>,
    value: u64,
}

/// Collects and blinds a party's records.
pub struct InputBuilder {
    kinds: Kinds,
    key: SessionKey,
    layout: Layout,
    /// Items are hashed for the OT intersection rather than blinded.
    hashed: bool,
    max_value: Option<u64>,
    pending: Vec<Pending>,
    rows: u64,
    rows_without_id: u64,
    clamped: u64,
    sets: Vec<Vec<Point>>,
    /// The OT intersection's items (hashed, not blinded), by part.
    store: Option<ItemStore>,
    row_points: Vec<Vec<(Point, u32)>>,
    tuple_points: Vec<Point>,
    tuple_values: Vec<u64>,
}

impl std::fmt::Debug for InputBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputBuilder")
            .field("layout", &self.layout)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl InputBuilder {
    /// A builder for `protocol` in `role`, with a fresh session key. `max_value` is required
    /// (and only allowed) for the values holder of a sum (the sender of `Sum`, the receiver of
    /// `SumToValuesHolder`): values are clamped into `[0, max_value]`.
    pub fn new(
        kinds: Kinds,
        protocol: ProtocolKind,
        role: Role,
        max_value: Option<u64>,
    ) -> Result<Self, PsiError> {
        let layout = Layout::of(protocol, role);
        let wants_values = protocol.values_holder() == Some(role);
        match (wants_values, max_value) {
            (true, None) | (true, Some(0)) => {
                return Err(PsiError::InvalidParameter(
                    "the values holder of a sum needs a positive bound on each value".into(),
                ));
            }
            (false, Some(_)) => {
                return Err(PsiError::InvalidParameter(
                    "values are only taken by the values holder of a sum".into(),
                ));
            }
            _ => {}
        }
        let k = kinds.len();
        Ok(InputBuilder {
            key: SessionKey::generate()?,
            layout,
            hashed: protocol == ProtocolKind::IntersectionOt,
            max_value,
            pending: Vec::with_capacity(FLUSH),
            rows: 0,
            rows_without_id: 0,
            clamped: 0,
            sets: vec![Vec::new(); k],
            store: (protocol == ProtocolKind::IntersectionOt)
                .then(|| ItemStore::new(k, layout == Layout::Rows, SpillConfig::default())),
            row_points: vec![Vec::new(); k],
            tuple_points: Vec::new(),
            tuple_values: Vec::new(),
            kinds,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Where and beyond how many buffered bytes the OT intersection's items go to sealed
    /// temporary files (other protocols keep their blinded input in memory). Call before the
    /// first [`InputBuilder::push`].
    pub fn spill(&mut self, config: SpillConfig) -> Result<(), PsiError> {
        if self.rows > 0 {
            return Err(PsiError::InvalidParameter(
                "the spill settings must come before the first record".into(),
            ));
        }
        if let Some(s) = &mut self.store {
            *s = ItemStore::new(self.kinds.len(), self.layout == Layout::Rows, config);
        }
        Ok(())
    }

    /// Adds one record: its normalised identifiers, one slot per kind in the session's order
    /// (`None` where the record has none), and its value for a sum. Row numbers count every
    /// call, from 0, so they match the rows of the input file.
    pub fn push(&mut self, ids: &[Option<&[u8]>], value: Option<i64>) -> Result<(), PsiError> {
        if ids.len() != self.kinds.len() {
            return Err(PsiError::InvalidParameter(format!(
                "a record has {} identifier slots; the session has {} kinds",
                ids.len(),
                self.kinds.len()
            )));
        }
        let row = u32::try_from(self.rows)
            .map_err(|_| PsiError::InvalidParameter("more than 2^32 rows".into()))?;
        self.rows += 1;
        if ids.iter().all(|i| i.is_none()) {
            self.rows_without_id += 1;
            return Ok(());
        }
        let value = match self.max_value {
            Some(max) => {
                let v = value
                    .ok_or_else(|| PsiError::InvalidParameter(format!("row {row} has no value")))?;
                let c = v.clamp(0, i64::try_from(max).unwrap_or(i64::MAX));
                if c != v {
                    self.clamped += 1;
                }
                c as u64
            }
            None => 0,
        };
        self.pending.push(Pending {
            row,
            ids: ids.iter().map(|i| i.map(<[u8]>::to_vec)).collect(),
            value,
        });
        if self.pending.len() >= FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PsiError> {
        let pending = std::mem::take(&mut self.pending);
        let (kinds, key, hashed) = (&self.kinds, &self.key, self.hashed);
        let blinded: Vec<Vec<Option<Point>>> = pending
            .par_iter()
            .map(|p| {
                p.ids
                    .iter()
                    .enumerate()
                    .map(|(k, id)| {
                        id.as_ref().map(|id| {
                            if hashed {
                                kinds.ot_item(k, id)
                            } else {
                                key.blind(kinds, k, id)
                            }
                        })
                    })
                    .collect()
            })
            .collect();
        for (p, b) in pending.iter().zip(blinded) {
            if let Some(store) = &mut self.store {
                for (k, pt) in b.into_iter().enumerate() {
                    if let Some(pt) = pt {
                        store.push(Rec {
                            item: u128::from_le_bytes(pt[..16].try_into().expect("16 bytes")),
                            row: p.row,
                            kind: k as u8,
                        })?;
                    }
                }
                continue;
            }
            match self.layout {
                Layout::Set => {
                    for (k, pt) in b.into_iter().enumerate() {
                        if let Some(pt) = pt {
                            self.sets[k].push(pt);
                        }
                    }
                }
                Layout::Rows => {
                    for (k, pt) in b.into_iter().enumerate() {
                        if let Some(pt) = pt {
                            self.row_points[k].push((pt, p.row));
                        }
                    }
                }
                Layout::Tuples => {
                    self.tuple_points
                        .extend(b.into_iter().map(|pt| pt.unwrap_or(ABSENT)));
                    self.tuple_values.push(p.value);
                }
            }
        }
        self.pending = pending;
        self.pending.clear();
        Ok(())
    }

    /// Blinds what is left, removes duplicates, and fixes the sending order.
    pub fn finish(mut self) -> Result<PreparedInput, PsiError> {
        self.flush()?;
        let width = self.kinds.len();
        let data = match (self.store.take(), self.layout) {
            (Some(mut store), _) => {
                store.finish()?;
                Data::Ot(Box::new(store))
            }
            (None, layout) => match layout {
                Layout::Set => {
                    for s in &mut self.sets {
                        s.par_sort_unstable();
                        s.dedup();
                    }
                    Data::Set(self.sets)
                }
                Layout::Rows => {
                    for r in &mut self.row_points {
                        r.par_sort_unstable();
                    }
                    Data::Rows(self.row_points)
                }
                Layout::Tuples => {
                    let n = self.tuple_values.len();
                    let pts = &self.tuple_points;
                    let mut idx: Vec<u32> = (0..n as u32).collect();
                    idx.par_sort_unstable_by(|a, b| {
                        let (a, b) = (*a as usize, *b as usize);
                        pts[a * width..(a + 1) * width].cmp(&pts[b * width..(b + 1) * width])
                    });
                    let mut points: Vec<Point> = Vec::with_capacity(pts.len());
                    let mut values: Vec<u64> = Vec::with_capacity(n);
                    for i in idx {
                        let i = i as usize;
                        let t = &pts[i * width..(i + 1) * width];
                        let v = self.tuple_values[i];
                        let last = points.len().checked_sub(width).map(|s| &points[s..]);
                        if last == Some(t) {
                            let l = values.len() - 1;
                            values[l] = values[l].saturating_add(v);
                        } else {
                            points.extend_from_slice(t);
                            values.push(v);
                        }
                    }
                    // A distinct record is what the protocol counts (and what the sum's noise
                    // protects): the values of its duplicate rows are added, and the record's
                    // total is clamped into [0, max_value] too, so one record never contributes
                    // more than the bound the peer was told (the noise's sensitivity, and the
                    // range the party without values decrypts over).
                    if let Some(max) = self.max_value {
                        for v in &mut values {
                            if *v > max {
                                *v = max;
                                self.clamped += 1;
                            }
                        }
                    }
                    Data::Tuples { points, values }
                }
            },
        };
        Ok(PreparedInput {
            kinds: self.kinds,
            key: self.key,
            layout: self.layout,
            max_value: self.max_value,
            data,
            rows: self.rows,
            rows_without_id: self.rows_without_id,
            clamped: self.clamped,
        })
    }
}

pub(crate) enum Data {
    Set(Vec<Vec<Point>>),
    /// Per kind, (point, row) sorted by point: runs of equal points are one identifier.
    Rows(Vec<Vec<(Point, u32)>>),
    /// Distinct records, `width` points each, sorted; values summed over duplicates.
    Tuples {
        points: Vec<Point>,
        values: Vec<u64>,
    },
    /// The OT intersection's items, by part (rows kept for the receiver).
    Ot(Box<ItemStore>),
}

/// A party's blinded input, ready for a session.
pub struct PreparedInput {
    pub(crate) kinds: Kinds,
    pub(crate) key: SessionKey,
    pub(crate) layout: Layout,
    pub(crate) max_value: Option<u64>,
    pub(crate) data: Data,
    pub(crate) rows: u64,
    rows_without_id: u64,
    clamped: u64,
}

impl std::fmt::Debug for PreparedInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedInput")
            .field("layout", &self.layout)
            .field("rows", &self.rows)
            .field("items", &self.announced_items())
            .finish_non_exhaustive()
    }
}

impl PreparedInput {
    pub fn kinds(&self) -> &Kinds {
        &self.kinds
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Rows pushed, with or without identifiers.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Rows that had no identifier of any kind (they cannot match and are not sent).
    pub fn rows_without_id(&self) -> u64 {
        self.rows_without_id
    }

    /// Values moved into `[0, max_value]`: rows, and then distinct records whose duplicate
    /// rows add up to more than `max_value`.
    pub fn values_clamped(&self) -> u64 {
        self.clamped
    }

    /// Bytes of the OT intersection's items sealed in temporary files (0 when they fit in
    /// memory, and for other protocols).
    pub fn spilled_bytes(&self) -> u64 {
        match &self.data {
            Data::Ot(store) => store.spilled_bytes(),
            _ => 0,
        }
    }

    pub fn max_value(&self) -> Option<u64> {
        self.max_value
    }

    /// What this side announces in its hello: distinct identifiers per kind, or distinct
    /// records for a side that sends records.
    pub fn announced_items(&self) -> Vec<u64> {
        match &self.data {
            Data::Set(s) => s.iter().map(|v| v.len() as u64).collect(),
            Data::Rows(r) => r.iter().map(|v| distinct_runs(v) as u64).collect(),
            Data::Tuples { values, .. } => vec![values.len() as u64],
            Data::Ot(store) => store.counts().to_vec(),
        }
    }

    /// Sum of all (clamped, merged) values: the largest possible intersection sum.
    pub(crate) fn value_total(&self) -> Result<u64, PsiError> {
        match &self.data {
            Data::Tuples { values, .. } => values.iter().try_fold(0u64, |a, v| {
                a.checked_add(*v)
                    .ok_or_else(|| PsiError::InvalidParameter("the values overflow 64 bits".into()))
            }),
            _ => Ok(0),
        }
    }

    pub(crate) fn check_fits(&self, session: &Session) -> Result<(), PsiError> {
        if self.kinds != session.kinds || self.layout != Layout::of(session.protocol, session.role)
        {
            return Err(PsiError::InvalidParameter(
                "the input was prepared for another session".into(),
            ));
        }
        Ok(())
    }
}

pub(crate) fn distinct_runs(v: &[(Point, u32)]) -> usize {
    v.chunk_by(|a, b| a.0 == b.0).count()
}
