//! Re-identification risk over the generalised quasi-identifiers.
//!
//! Records with the same combination of quasi-identifier values form an *equivalence class*:
//! someone who knows those attributes of a person (age band, district, signup week) can narrow
//! them down to that class and no further. The metrics:
//!
//! - **k-anonymity**: the size of the smallest class. `k = 1` means some record is unique.
//! - **unique share**: the share of records alone in their class.
//! - **below-k share**: the share of records in classes smaller than the configured `k`.
//! - **l-diversity**: the fewest distinct values of a sensitive column within one class; with
//!   `l = 1` everyone in some class shares the sensitive value, so knowing the class reveals it.
//!
//! Streaming: one map entry per distinct class (not per row), each with a count and at most
//! [`L_CAP`] hashes of sensitive values. Counts are per record, not per person: a person with
//! several rows makes their class look larger than it is (see `docs/identity.md`).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash};

/// Distinct sensitive values tracked per class; l-diversity at or above this is reported as
/// "at least L_CAP".
pub const L_CAP: u64 = 64;

/// What a breached limit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RiskAction {
    /// Report the breach and write the output.
    Warn,
    /// Report the breach, write no output, exit non-zero.
    Refuse,
}

impl RiskAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            RiskAction::Warn => "warn",
            RiskAction::Refuse => "refuse",
        }
    }
}

/// The configured limits.
#[derive(Debug, Clone, PartialEq)]
pub struct RiskLimits {
    /// Classes of fewer than `k` records count as at risk (default 5).
    pub k: u64,
    /// Every class must have at least this many records.
    pub min_k: Option<u64>,
    /// At most this share of records may be unique.
    pub max_unique_share: Option<f64>,
    /// At most this share of records may be in classes smaller than `k`.
    pub max_below_k_share: Option<f64>,
    /// Output column whose l-diversity is assessed.
    pub sensitive: Option<String>,
    /// Every class must have at least this many distinct sensitive values.
    pub min_l: Option<u64>,
    pub action: RiskAction,
}

impl Default for RiskLimits {
    fn default() -> Self {
        RiskLimits {
            k: 5,
            min_k: None,
            max_unique_share: None,
            max_below_k_share: None,
            sensitive: None,
            min_l: None,
            action: RiskAction::Warn,
        }
    }
}

#[derive(Debug, Default)]
struct Class {
    count: u64,
    /// Hashes of distinct sensitive values (NULL included as its own value), at most L_CAP.
    sensitive: Vec<u64>,
}

/// The class key of one record being written: each quasi-identifier value, length-prefixed
/// and tagged (NULL, text, day), so no two different value lists give the same key.
pub struct ClassKey<'k>(&'k mut Vec<u8>);

impl ClassKey<'_> {
    /// A text value, or NULL.
    pub fn text(&mut self, v: Option<&str>) {
        match v {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
                self.0.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// A day (days since 1970-01-01).
    pub fn day(&mut self, d: i32) {
        self.0.push(2);
        self.0.extend_from_slice(&d.to_le_bytes());
    }
}

/// Collects equivalence classes one record at a time.
#[derive(Debug)]
pub struct RiskAccumulator {
    /// foldhash rather than SipHash: the keys are the owner's own generalised values on
    /// its own machine, and hashing them is on the hot path of every prepared row.
    classes: HashMap<Box<[u8]>, Class, foldhash::fast::RandomState>,
    records: u64,
    track_l: bool,
    key: Vec<u8>,
}

type FixedHasher = BuildHasherDefault<DefaultHasher>;

impl RiskAccumulator {
    /// `track_l`: whether a sensitive value comes with each record.
    pub fn new(track_l: bool) -> Self {
        RiskAccumulator {
            classes: HashMap::default(),
            records: 0,
            track_l,
            key: Vec::with_capacity(64),
        }
    }

    /// Adds one record: its generalised quasi-identifier values (NULL as `None`) and its
    /// sensitive value.
    pub fn add(&mut self, qi: &[Option<&str>], sensitive: Option<&str>) {
        self.add_with(
            |key| {
                for v in qi {
                    key.text(*v);
                }
            },
            sensitive,
        );
    }

    /// Adds one record whose class key `fill` writes value by value, in quasi-identifier
    /// order: the hot path of `prepare`, which allocates nothing per record this way.
    pub fn add_with(&mut self, fill: impl FnOnce(&mut ClassKey<'_>), sensitive: Option<&str>) {
        self.key.clear();
        fill(&mut ClassKey(&mut self.key));
        self.records += 1;
        let class = match self.classes.get_mut(self.key.as_slice()) {
            Some(c) => c,
            None => self
                .classes
                .entry(self.key.clone().into_boxed_slice())
                .or_default(),
        };
        class.count += 1;
        if self.track_l && (class.sensitive.len() as u64) < L_CAP {
            let h = fixed_hash(&sensitive);
            if !class.sensitive.contains(&h) {
                class.sensitive.push(h);
            }
        }
    }

    /// Adds the records of another accumulator (of a later batch). Class counts add up; the
    /// distinct sensitive values of a class are united up to the same cap, so the assessment
    /// is the one a single accumulator over all records would give, whatever the batching.
    pub fn merge(&mut self, other: RiskAccumulator) {
        self.records += other.records;
        for (key, c) in other.classes {
            let class = self.classes.entry(key).or_default();
            class.count += c.count;
            for h in c.sensitive {
                if (class.sensitive.len() as u64) >= L_CAP {
                    break;
                }
                if !class.sensitive.contains(&h) {
                    class.sensitive.push(h);
                }
            }
        }
    }

    /// Records added so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Distinct classes so far.
    pub fn classes(&self) -> usize {
        self.classes.len()
    }

    /// The metrics and the verdict of every configured limit.
    pub fn assess(&self, limits: &RiskLimits, quasi_identifiers: Vec<String>) -> RiskAssessment {
        let records = self.records;
        let mut k_min = u64::MAX;
        let mut unique = 0u64;
        let mut below_k = 0u64;
        let mut l_min = u64::MAX;
        let mut buckets = [(0u64, 0u64); 5];
        for c in self.classes.values() {
            k_min = k_min.min(c.count);
            if c.count == 1 {
                unique += 1;
            }
            if c.count < limits.k {
                below_k += c.count;
            }
            l_min = l_min.min(c.sensitive.len() as u64);
            let b = match c.count {
                1 => 0,
                2..=4 => 1,
                5..=9 => 2,
                10..=49 => 3,
                _ => 4,
            };
            buckets[b].0 += 1;
            buckets[b].1 += c.count;
        }
        if self.classes.is_empty() {
            k_min = 0;
            l_min = 0;
        }
        let share = |n: u64| {
            if records == 0 {
                0.0
            } else {
                n as f64 / records as f64
            }
        };
        let class_sizes = ["1", "2-4", "5-9", "10-49", "50+"]
            .iter()
            .zip(buckets)
            .map(|(label, (classes, recs))| ClassSizeBucket {
                sizes: label,
                classes,
                records: recs,
            })
            .collect();
        let mut a = RiskAssessment {
            quasi_identifiers,
            records,
            classes: self.classes.len() as u64,
            k_anonymity: k_min,
            unique_records: unique,
            unique_share: share(unique),
            k: limits.k,
            below_k_records: below_k,
            below_k_share: share(below_k),
            sensitive: if self.track_l {
                limits.sensitive.clone()
            } else {
                None
            },
            l_diversity: self.track_l.then_some(l_min),
            class_sizes,
            findings: Vec::new(),
            action: limits.action,
        };
        if let Some(min_k) = limits.min_k {
            a.findings.push(Finding {
                limit: format!("k-anonymity >= {min_k}"),
                value: a.k_anonymity.to_string(),
                breached: records > 0 && a.k_anonymity < min_k,
            });
        }
        if let Some(max) = limits.max_unique_share {
            a.findings.push(Finding {
                limit: format!("unique records <= {}", percent(max)),
                value: percent(a.unique_share),
                breached: a.unique_share > max,
            });
        }
        if let Some(max) = limits.max_below_k_share {
            a.findings.push(Finding {
                limit: format!(
                    "records in classes below k={} <= {}",
                    limits.k,
                    percent(max)
                ),
                value: percent(a.below_k_share),
                breached: a.below_k_share > max,
            });
        }
        if let (Some(min_l), Some(l)) = (limits.min_l, a.l_diversity) {
            a.findings.push(Finding {
                limit: format!("l-diversity >= {min_l}"),
                value: display_l(l),
                breached: records > 0 && l < min_l,
            });
        }
        a
    }
}

/// `0.0123` → `1.23 %`.
pub fn percent(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

/// l-diversity as text (`at least 64` when capped).
pub fn display_l(l: u64) -> String {
    if l >= L_CAP {
        format!("at least {L_CAP}")
    } else {
        l.to_string()
    }
}

/// Classes of a range of sizes and the records in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSizeBucket {
    pub sizes: &'static str,
    pub classes: u64,
    pub records: u64,
}

/// One configured limit and how the data fares against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub limit: String,
    pub value: String,
    pub breached: bool,
}

/// The risk metrics of a prepared dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct RiskAssessment {
    pub quasi_identifiers: Vec<String>,
    pub records: u64,
    pub classes: u64,
    /// Smallest class size (0 when there are no records).
    pub k_anonymity: u64,
    pub unique_records: u64,
    pub unique_share: f64,
    /// The `k` of the below-k share.
    pub k: u64,
    pub below_k_records: u64,
    pub below_k_share: f64,
    pub sensitive: Option<String>,
    /// Fewest distinct sensitive values in a class (capped at [`L_CAP`]).
    pub l_diversity: Option<u64>,
    pub class_sizes: Vec<ClassSizeBucket>,
    pub findings: Vec<Finding>,
    pub action: RiskAction,
}

impl RiskAssessment {
    /// True when some limit is breached.
    pub fn breached(&self) -> bool {
        self.findings.iter().any(|f| f.breached)
    }

    /// True when a limit is breached and the configured action is to refuse.
    pub fn refused(&self) -> bool {
        self.breached() && self.action == RiskAction::Refuse
    }
}

/// Hashes a value with a fixed (unkeyed) hasher; used only to count distinct values.
pub(crate) fn fixed_hash<T: Hash + ?Sized>(v: &T) -> u64 {
    FixedHasher::default().hash_one(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dataset small enough to compute by hand:
    ///
    /// | age   | district | segment |
    /// |-------|----------|---------|
    /// | 25-34 | SW1A     | a       |
    /// | 25-34 | SW1A     | b       |
    /// | 25-34 | SW1A     | a       |   class 1: 3 records, l = 2
    /// | 35-44 | SW1A     | a       |
    /// | 35-44 | SW1A     | a       |   class 2: 2 records, l = 1
    /// | 35-44 | M1       | c       |   class 3: 1 record (unique), l = 1
    /// | NULL  | M1       | a       |
    /// | NULL  | M1       | b       |
    /// | NULL  | M1       | NULL    |
    /// | NULL  | M1       | c       |   class 4: 4 records, l = 4
    ///
    /// k-anonymity = 1; unique share = 1/10; with k = 3, classes 2 and 3 are below k:
    /// 3/10 records; l-diversity = 1.
    fn hand_computed() -> RiskAccumulator {
        let mut acc = RiskAccumulator::new(true);
        let rows: [(Option<&str>, &str, Option<&str>); 10] = [
            (Some("25-34"), "SW1A", Some("a")),
            (Some("25-34"), "SW1A", Some("b")),
            (Some("25-34"), "SW1A", Some("a")),
            (Some("35-44"), "SW1A", Some("a")),
            (Some("35-44"), "SW1A", Some("a")),
            (Some("35-44"), "M1", Some("c")),
            (None, "M1", Some("a")),
            (None, "M1", Some("b")),
            (None, "M1", None),
            (None, "M1", Some("c")),
        ];
        for (age, d, s) in rows {
            acc.add(&[age, Some(d)], s);
        }
        acc
    }

    #[test]
    fn metrics_match_the_hand_computation() {
        let acc = hand_computed();
        let limits = RiskLimits {
            k: 3,
            min_k: Some(2),
            max_unique_share: Some(0.05),
            max_below_k_share: Some(0.5),
            sensitive: Some("segment".into()),
            min_l: Some(2),
            action: RiskAction::Refuse,
        };
        let a = acc.assess(&limits, vec!["age".into(), "district".into()]);
        assert_eq!(a.records, 10);
        assert_eq!(a.classes, 4);
        assert_eq!(a.k_anonymity, 1);
        assert_eq!(a.unique_records, 1);
        assert!((a.unique_share - 0.1).abs() < 1e-12);
        assert_eq!(a.below_k_records, 3);
        assert!((a.below_k_share - 0.3).abs() < 1e-12);
        assert_eq!(a.l_diversity, Some(1));
        let breached: Vec<bool> = a.findings.iter().map(|f| f.breached).collect();
        assert_eq!(breached, vec![true, true, false, true]);
        assert!(a.refused());
        let sizes: Vec<(u64, u64)> = a
            .class_sizes
            .iter()
            .map(|b| (b.classes, b.records))
            .collect();
        assert_eq!(sizes, vec![(1, 1), (3, 9), (0, 0), (0, 0), (0, 0)]);
    }

    #[test]
    fn nulls_and_separators_do_not_merge_classes() {
        let mut acc = RiskAccumulator::new(false);
        acc.add(&[Some("a"), None], None);
        acc.add(&[None, Some("a")], None);
        acc.add(&[Some("a\u{1f}"), Some("")], None);
        acc.add(&[Some("a"), Some("\u{1f}")], None);
        assert_eq!(acc.classes(), 4);
    }

    #[test]
    fn warn_does_not_refuse_and_empty_data_breaches_nothing() {
        let acc = hand_computed();
        let limits = RiskLimits {
            min_k: Some(5),
            ..RiskLimits::default()
        };
        let a = acc.assess(&limits, vec![]);
        assert!(a.breached() && !a.refused());
        let empty = RiskAccumulator::new(true).assess(
            &RiskLimits {
                min_k: Some(5),
                min_l: Some(2),
                action: RiskAction::Refuse,
                ..RiskLimits::default()
            },
            vec![],
        );
        assert!(!empty.refused());
        assert_eq!(empty.k_anonymity, 0);
    }

    #[test]
    fn l_is_capped() {
        let mut acc = RiskAccumulator::new(true);
        for i in 0..200 {
            acc.add(&[Some("x")], Some(&i.to_string()));
        }
        let a = acc.assess(&RiskLimits::default(), vec![]);
        assert_eq!(a.l_diversity, Some(L_CAP));
        assert_eq!(display_l(L_CAP), "at least 64");
        assert_ne!(fixed_hash("a"), fixed_hash("b"));
    }
}
