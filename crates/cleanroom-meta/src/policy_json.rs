//! The stored form of a policy: JSON written and read by hand, so the domain types need no
//! serde and the stored format changes only here.

use cleanroom_core::policy::{ActivationDraft, MetricDraft, PolicyDraft};
use serde_json::{Value, json};

use crate::MetaError;

pub fn encode(d: &PolicyDraft) -> String {
    let mut v = json!({
        "join_keys": d.join_keys,
        "dimensions": d.dimensions,
        "metrics": d.metrics.iter().map(|m| json!({
            "column": m.column, "aggregates": m.aggregates,
            "lower": m.lower, "upper": m.upper, "precision": m.precision,
        })).collect::<Vec<_>>(),
        "min_group_size": d.min_group_size,
        "max_rows_per_unit": d.max_rows_per_unit,
        "max_rows_per_key": d.max_rows_per_key,
        "differential_privacy": d.differential_privacy,
        "allow_sql": d.allow_sql,
        "analysts": d.analysts,
        "receivers": d.receivers,
    });
    // Versions stored before activation rules existed have no such key: absent means none.
    if let Some(a) = &d.activation {
        v["activation"] = json!({
            "partners": a.partners,
            "min_segment_size": a.min_segment_size,
            "dimensions": a.dimensions,
        });
    }
    v.to_string()
}

fn corrupt(key: &str) -> MetaError {
    MetaError::Corrupt(format!("stored policy: bad {key}"))
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>, MetaError> {
    v[key]
        .as_array()
        .ok_or_else(|| corrupt(key))?
        .iter()
        .map(|x| x.as_str().map(str::to_owned).ok_or_else(|| corrupt(key)))
        .collect()
}

fn opt_u32(v: &Value, key: &str) -> Result<Option<u32>, MetaError> {
    match &v[key] {
        Value::Null => Ok(None),
        x => x
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| corrupt(key)),
    }
}

fn opt_bool(v: &Value, key: &str) -> Result<Option<bool>, MetaError> {
    match &v[key] {
        Value::Null => Ok(None),
        x => x.as_bool().map(Some).ok_or_else(|| corrupt(key)),
    }
}

fn f(v: &Value, key: &str) -> Result<f64, MetaError> {
    v[key].as_f64().ok_or_else(|| corrupt(key))
}

pub fn decode(s: &str) -> Result<PolicyDraft, MetaError> {
    let v: Value = serde_json::from_str(s).map_err(|_| corrupt("json"))?;
    let metrics = v["metrics"]
        .as_array()
        .ok_or_else(|| corrupt("metrics"))?
        .iter()
        .map(|m| {
            Ok(MetricDraft {
                column: m["column"]
                    .as_str()
                    .ok_or_else(|| corrupt("metric column"))?
                    .to_owned(),
                aggregates: strings(m, "aggregates")?,
                lower: f(m, "lower")?,
                upper: f(m, "upper")?,
                precision: opt_u32(m, "precision")?
                    .map(|p| u8::try_from(p).map_err(|_| corrupt("precision")))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, MetaError>>()?;
    Ok(PolicyDraft {
        join_keys: strings(&v, "join_keys")?,
        dimensions: strings(&v, "dimensions")?,
        metrics,
        min_group_size: opt_u32(&v, "min_group_size")?,
        max_rows_per_unit: opt_u32(&v, "max_rows_per_unit")?,
        max_rows_per_key: opt_u32(&v, "max_rows_per_key")?,
        differential_privacy: opt_bool(&v, "differential_privacy")?,
        allow_sql: opt_bool(&v, "allow_sql")?,
        analysts: strings(&v, "analysts")?,
        receivers: strings(&v, "receivers")?,
        activation: match &v["activation"] {
            Value::Null => None,
            a => Some(ActivationDraft {
                partners: strings(a, "partners")?,
                min_segment_size: opt_u32(a, "min_segment_size")?,
                dimensions: strings(a, "dimensions")?,
            }),
        },
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
    }
}
