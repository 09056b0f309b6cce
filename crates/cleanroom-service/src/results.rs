//! Released results as the service stores and returns them, and their stored (JSON) form,
//! written by hand so the domain types need no serde.

use cleanroom_query::{Cell, ColumnKind, Released};
use serde_json::{Value, json};

/// One column of a result table.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultColumn {
    pub name: String,
    /// `group`, `count`, `sum`, `average`, `extreme` or `value` (a derived figure).
    pub kind: String,
    /// Standard deviation of the noise added (counts and sums under differential privacy).
    pub noise_sd: Option<f64>,
}

/// A released table.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultTable {
    pub name: String,
    pub columns: Vec<ResultColumn>,
    pub rows: Vec<Vec<Cell>>,
    /// Set when only this organisation may see the table (its own benchmark figures).
    pub visible_to: Option<String>,
}

impl ResultTable {
    pub fn from_released(name: String, r: Released, visible_to: Option<String>) -> Self {
        ResultTable {
            name,
            columns: r
                .columns
                .into_iter()
                .map(|c| {
                    let (kind, noise_sd) = match c.kind {
                        ColumnKind::Group => ("group", None),
                        ColumnKind::Count { noise_sd } => ("count", noise_sd),
                        ColumnKind::Sum { noise_sd } => ("sum", noise_sd),
                        ColumnKind::Average => ("average", None),
                        ColumnKind::Extreme => ("extreme", None),
                        ColumnKind::Value => ("value", None),
                    };
                    ResultColumn {
                        name: c.name,
                        kind: kind.to_owned(),
                        noise_sd,
                    }
                })
                .collect(),
            rows: r.rows,
            visible_to,
        }
    }
}

/// The whole result of an analysis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnalysisResult {
    pub tables: Vec<ResultTable>,
    /// Human-readable notes: what was suppressed by design, how to read the figures.
    pub notes: Vec<String>,
}

pub fn cell_json(c: &Cell) -> Value {
    match c {
        Cell::Null => Value::Null,
        Cell::Bool(b) => json!(b),
        Cell::Int(i) => json!(i),
        Cell::Float(f) => json!(f),
        Cell::Text(s) => json!(s),
    }
}

pub fn cell_from_json(v: &Value) -> Result<Cell, String> {
    Ok(match v {
        Value::Null => Cell::Null,
        Value::Bool(b) => Cell::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cell::Int(i),
            None => Cell::Float(n.as_f64().ok_or("bad number")?),
        },
        Value::String(s) => Cell::Text(s.clone()),
        _ => return Err("bad cell".into()),
    })
}

pub fn encode(r: &AnalysisResult) -> String {
    json!({
        "tables": r.tables.iter().map(|t| json!({
            "name": t.name,
            "visible_to": t.visible_to,
            "columns": t.columns.iter().map(|c| json!({
                "name": c.name, "kind": c.kind, "noise_sd": c.noise_sd,
            })).collect::<Vec<_>>(),
            "rows": t.rows.iter().map(|row| row.iter().map(cell_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "notes": r.notes,
    })
    .to_string()
}

pub fn decode(s: &str) -> Result<AnalysisResult, String> {
    let v: Value = serde_json::from_str(s).map_err(|e| e.to_string())?;
    let str_of = |v: &Value, k: &str| -> Result<String, String> {
        v[k].as_str().map(str::to_owned).ok_or(format!("bad {k}"))
    };
    let tables = v["tables"]
        .as_array()
        .ok_or("bad tables")?
        .iter()
        .map(|t| {
            Ok(ResultTable {
                name: str_of(t, "name")?,
                visible_to: t["visible_to"].as_str().map(str::to_owned),
                columns: t["columns"]
                    .as_array()
                    .ok_or("bad columns")?
                    .iter()
                    .map(|c| {
                        Ok(ResultColumn {
                            name: str_of(c, "name")?,
                            kind: str_of(c, "kind")?,
                            noise_sd: c["noise_sd"].as_f64(),
                        })
                    })
                    .collect::<Result<_, String>>()?,
                rows: t["rows"]
                    .as_array()
                    .ok_or("bad rows")?
                    .iter()
                    .map(|r| {
                        r.as_array()
                            .ok_or("bad row")?
                            .iter()
                            .map(cell_from_json)
                            .collect::<Result<Vec<_>, String>>()
                    })
                    .collect::<Result<_, String>>()?,
            })
        })
        .collect::<Result<_, String>>()?;
    let notes = v["notes"]
        .as_array()
        .ok_or("bad notes")?
        .iter()
        .map(|n| n.as_str().map(str::to_owned).ok_or("bad note".to_owned()))
        .collect::<Result<_, String>>()?;
    Ok(AnalysisResult { tables, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip() {
        let r = AnalysisResult {
            tables: vec![ResultTable {
                name: "overlap".into(),
                columns: vec![
                    ResultColumn {
                        name: "region".into(),
                        kind: "group".into(),
                        noise_sd: None,
                    },
                    ResultColumn {
                        name: "people".into(),
                        kind: "count".into(),
                        noise_sd: Some(2.5),
                    },
                ],
                rows: vec![
                    vec![Cell::Text("north".into()), Cell::Int(1200)],
                    vec![Cell::Null, Cell::Float(3.5)],
                    vec![Cell::Bool(true), Cell::Int(-1)],
                ],
                visible_to: Some("brand".into()),
            }],
            notes: vec!["groups under the threshold are not shown".into()],
        };
        assert_eq!(decode(&encode(&r)).unwrap(), r);
        assert!(decode("{}").is_err());
    }
}
