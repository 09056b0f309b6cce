//! The stored JSON of an analysis's charges and of dataset statistics: private serde structs
//! with the bytes of earlier versions (no migration).

use std::collections::BTreeMap;

use cleanroom_core::names::OrgName;
use cleanroom_query::catalog::TableStats;

use super::ChargeView;
use crate::ServiceError;

/// Stored dataset statistics (keys in alphabetical order, as stored before).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredStats {
    max_rows_per_key: BTreeMap<String, u64>,
    max_rows_per_unit: u64,
}

pub(super) fn encode_stats(s: &TableStats) -> String {
    serde_json::to_string(&StoredStats {
        max_rows_per_key: s
            .max_rows_per_key
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        max_rows_per_unit: s.max_rows_per_unit,
    })
    .expect("statistics serialise")
}

pub(super) fn decode_stats(text: &str) -> Result<TableStats, ()> {
    let s: StoredStats = serde_json::from_str(text).map_err(|_| ())?;
    Ok(TableStats {
        max_rows_per_unit: s.max_rows_per_unit,
        max_rows_per_key: s.max_rows_per_key.into_iter().collect(),
    })
}

/// A stored charge (keys in alphabetical order, as stored before).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredCharge {
    delta: f64,
    epsilon: f64,
    org: String,
}

pub(super) fn charges_json(c: &[ChargeView]) -> String {
    let stored: Vec<StoredCharge> = c
        .iter()
        .map(|c| StoredCharge {
            delta: c.delta,
            epsilon: c.epsilon,
            org: c.org.to_string(),
        })
        .collect();
    serde_json::to_string(&stored).expect("charges serialise")
}

pub(super) fn parse_charges(s: &str) -> Result<Vec<ChargeView>, ServiceError> {
    let bad = || ServiceError::Internal("stored charges".into());
    let stored: Vec<StoredCharge> = serde_json::from_str(s).map_err(|_| bad())?;
    stored
        .into_iter()
        .map(|c| {
            Ok(ChargeView {
                org: OrgName::parse(&c.org).map_err(|_| bad())?,
                epsilon: c.epsilon,
                delta: c.delta,
            })
        })
        .collect()
}

#[cfg(test)]
mod stored_json {
    use super::*;

    /// Charges and statistics are stored as serde structs now, with the very bytes the
    /// hand-built JSON of earlier versions had (no migration).
    #[test]
    fn stored_bytes_are_unchanged() {
        let charges = vec![ChargeView {
            org: OrgName::parse("brand").unwrap(),
            epsilon: 0.5,
            delta: 1e-7,
        }];
        let text = charges_json(&charges);
        assert_eq!(text, r#"[{"delta":1e-7,"epsilon":0.5,"org":"brand"}]"#);
        assert_eq!(parse_charges(&text).unwrap(), charges);
        let stats = TableStats {
            max_rows_per_unit: 3,
            max_rows_per_key: [("email".to_owned(), 2)].into_iter().collect(),
        };
        let text = encode_stats(&stats);
        assert_eq!(
            text,
            r#"{"max_rows_per_key":{"email":2},"max_rows_per_unit":3}"#
        );
        assert_eq!(decode_stats(&text).unwrap(), stats);
    }
}
