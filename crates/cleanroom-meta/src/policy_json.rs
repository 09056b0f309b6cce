//! The stored form of a policy: private serde structs, so the domain types need no serde and
//! the stored format changes only here. Fields are in alphabetical order, as the hand-built
//! JSON of earlier versions had them, so stored policies keep their bytes (no migration).

use cleanroom_core::policy::{ActivationDraft, MetricDraft, PolicyDraft};
use serde::{Deserialize, Serialize};

use crate::MetaError;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredPolicy {
    /// Versions stored before activation rules existed have no such key: absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    activation: Option<StoredActivation>,
    allow_sql: Option<bool>,
    analysts: Vec<String>,
    differential_privacy: Option<bool>,
    dimensions: Vec<String>,
    join_keys: Vec<String>,
    max_rows_per_key: Option<u32>,
    max_rows_per_unit: Option<u32>,
    metrics: Vec<StoredMetric>,
    min_group_size: Option<u32>,
    receivers: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredMetric {
    aggregates: Vec<String>,
    column: String,
    lower: f64,
    precision: Option<u8>,
    upper: f64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredActivation {
    dimensions: Vec<String>,
    min_segment_size: Option<u32>,
    partners: Vec<String>,
}

pub fn encode(d: &PolicyDraft) -> String {
    let stored = StoredPolicy {
        activation: d.activation.as_ref().map(|a| StoredActivation {
            dimensions: a.dimensions.clone(),
            min_segment_size: a.min_segment_size,
            partners: a.partners.clone(),
        }),
        allow_sql: d.allow_sql,
        analysts: d.analysts.clone(),
        differential_privacy: d.differential_privacy,
        dimensions: d.dimensions.clone(),
        join_keys: d.join_keys.clone(),
        max_rows_per_key: d.max_rows_per_key,
        max_rows_per_unit: d.max_rows_per_unit,
        metrics: d
            .metrics
            .iter()
            .map(|m| StoredMetric {
                aggregates: m.aggregates.clone(),
                column: m.column.clone(),
                lower: m.lower,
                precision: m.precision,
                upper: m.upper,
            })
            .collect(),
        min_group_size: d.min_group_size,
        receivers: d.receivers.clone(),
    };
    serde_json::to_string(&stored).expect("a policy serialises")
}

pub fn decode(s: &str) -> Result<PolicyDraft, MetaError> {
    let p: StoredPolicy =
        serde_json::from_str(s).map_err(|e| MetaError::Corrupt(format!("stored policy: {e}")))?;
    Ok(PolicyDraft {
        join_keys: p.join_keys,
        dimensions: p.dimensions,
        metrics: p
            .metrics
            .into_iter()
            .map(|m| MetricDraft {
                column: m.column,
                aggregates: m.aggregates,
                lower: m.lower,
                upper: m.upper,
                precision: m.precision,
            })
            .collect(),
        min_group_size: p.min_group_size,
        max_rows_per_unit: p.max_rows_per_unit,
        max_rows_per_key: p.max_rows_per_key,
        differential_privacy: p.differential_privacy,
        allow_sql: p.allow_sql,
        analysts: p.analysts,
        receivers: p.receivers,
        activation: p.activation.map(|a| ActivationDraft {
            partners: a.partners,
            min_segment_size: a.min_segment_size,
            dimensions: a.dimensions,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = PolicyDraft {
            join_keys: vec!["email_hmac".into()],
            dimensions: vec!["region".into(), "age_band".into()],
            metrics: vec![MetricDraft {
                column: "purchases".into(),
                aggregates: vec!["sum".into()],
                lower: 0.0,
                upper: 20.5,
                precision: Some(1),
            }],
            min_group_size: Some(100),
            max_rows_per_unit: Some(2),
            max_rows_per_key: None,
            differential_privacy: Some(true),
            allow_sql: None,
            analysts: vec!["brand".into()],
            receivers: vec![],
            activation: None,
        };
        assert_eq!(decode(&encode(&d)).unwrap(), d);
        let with_rule = PolicyDraft {
            activation: Some(ActivationDraft {
                partners: vec!["publisher".into()],
                min_segment_size: Some(2000),
                dimensions: vec!["region".into()],
            }),
            ..d.clone()
        };
        assert_eq!(decode(&encode(&with_rule)).unwrap(), with_rule);
        assert!(!encode(&d).contains("activation"));
        assert!(decode("{}").is_err());
        assert!(decode("not json").is_err());
        // The bytes the hand-built JSON of earlier versions stored decode, and encode back.
        let old = r#"{"allow_sql":null,"analysts":["brand"],"differential_privacy":true,"dimensions":["region","age_band"],"join_keys":["email_hmac"],"max_rows_per_key":null,"max_rows_per_unit":2,"metrics":[{"aggregates":["sum"],"column":"purchases","lower":0.0,"precision":1,"upper":20.5}],"min_group_size":100,"receivers":[]}"#;
        assert_eq!(decode(old).unwrap(), d);
        assert_eq!(encode(&d), old);
    }
}
