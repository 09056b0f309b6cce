//! Masking: drop a column (every value blanked and the column left out of the upload file),
//! or keep only a prefix or a suffix of its text (the postcode district `SW1A` of `SW1A 1AA`,
//! the last four digits of an account number).
//!
//! Risk: a dropped quasi-identifier no longer splits classes; a shorter prefix merges them.
//! Utility: the masked detail is gone for every record, not only the risky ones.

use super::{Effect, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mask {
    /// Every value blanked; the column is not written.
    Drop,
    /// The first `n` characters (whitespace trimmed first).
    Prefix(usize),
    /// The last `n` characters.
    Suffix(usize),
}

impl Mask {
    pub fn describe(&self) -> String {
        match self {
            Mask::Drop => "column dropped".into(),
            Mask::Prefix(n) => format!("first {n} characters kept"),
            Mask::Suffix(n) => format!("last {n} characters kept"),
        }
    }

    pub fn apply(&self, v: &mut Value) -> Effect {
        let seen = !v.is_null();
        match (self, &*v) {
            (_, Value::Null) => Effect::default(),
            (Mask::Drop, _) => {
                *v = Value::Null;
                Effect {
                    seen,
                    changed: true,
                    suppressed: true,
                    abs_change: None,
                }
            }
            (Mask::Prefix(n), Value::Text(s)) => {
                let t = s.trim();
                let kept: String = t.chars().take(*n).collect();
                let changed = kept != *s;
                *v = Value::Text(kept);
                Effect {
                    seen,
                    changed,
                    ..Effect::default()
                }
            }
            (Mask::Suffix(n), Value::Text(s)) => {
                let t = s.trim();
                let len = t.chars().count();
                let kept: String = t.chars().skip(len.saturating_sub(*n)).collect();
                let changed = kept != *s;
                *v = Value::Text(kept);
                Effect {
                    seen,
                    changed,
                    ..Effect::default()
                }
            }
            // Configuration allows prefix and suffix on text columns only.
            _ => Effect {
                seen,
                ..Effect::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn prefix_suffix_and_drop() {
        let mut v = text("SW1A 1AA");
        let e = Mask::Prefix(4).apply(&mut v);
        assert_eq!(v, text("SW1A"));
        assert!(e.seen && e.changed && !e.suppressed);
        let mut v = text("12345678");
        Mask::Suffix(4).apply(&mut v);
        assert_eq!(v, text("5678"));
        let mut v = text("ab");
        assert!(!Mask::Suffix(4).apply(&mut v).changed);
        let mut v = text("αβγδ");
        Mask::Prefix(2).apply(&mut v);
        assert_eq!(v, text("αβ"));
        let mut v = Value::Int(3);
        let e = Mask::Drop.apply(&mut v);
        assert!(v.is_null() && e.suppressed);
        let mut v = Value::Null;
        assert_eq!(Mask::Drop.apply(&mut v), Effect::default());
    }
}
