//! Released results as the service stores and returns them, and their stored (JSON) form,
//! written by hand so the domain types need no serde.

use cleanroom_query::{Cell, ColumnKind, LeftOut, Released};
use serde::{Deserialize, Serialize};
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
    /// How many groups the table leaves out, when counted (a noisy estimate under
    /// differential privacy).
    pub left_out: Option<LeftOut>,
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
            left_out: r.left_out,
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

/// The stored form of a result. Fields are in alphabetical order, as the hand-built JSON of
/// earlier versions had them, so stored results keep their bytes (no migration).
#[derive(Serialize, Deserialize)]
struct StoredResult {
    notes: Vec<String>,
    tables: Vec<StoredTable>,
}

#[derive(Serialize, Deserialize)]
struct StoredTable {
    columns: Vec<StoredColumn>,
    /// Absent in results stored before groups left out were counted (and when not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    left_out: Option<StoredLeftOut>,
    name: String,
    rows: Vec<Vec<Value>>,
    visible_to: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredLeftOut {
    groups: i64,
    noise_sd: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct StoredColumn {
    kind: String,
    name: String,
    noise_sd: Option<f64>,
}

pub fn encode(r: &AnalysisResult) -> String {
    let stored = StoredResult {
        notes: r.notes.clone(),
        tables: r
            .tables
            .iter()
            .map(|t| StoredTable {
                columns: t
                    .columns
                    .iter()
                    .map(|c| StoredColumn {
                        kind: c.kind.clone(),
                        name: c.name.clone(),
                        noise_sd: c.noise_sd,
                    })
                    .collect(),
                name: t.name.clone(),
                rows: t
                    .rows
                    .iter()
                    .map(|row| row.iter().map(cell_json).collect())
                    .collect(),
                visible_to: t.visible_to.clone(),
                left_out: t.left_out.map(|l| StoredLeftOut {
                    groups: l.groups,
                    noise_sd: l.noise_sd,
                }),
            })
            .collect(),
    };
    serde_json::to_string(&stored).expect("a result serialises")
}

pub fn decode(s: &str) -> Result<AnalysisResult, String> {
    let stored: StoredResult = serde_json::from_str(s).map_err(|e| e.to_string())?;
    let tables = stored
        .tables
        .into_iter()
        .map(|t| {
            Ok(ResultTable {
                name: t.name,
                visible_to: t.visible_to,
                left_out: t.left_out.map(|l| LeftOut {
                    groups: l.groups,
                    noise_sd: l.noise_sd,
                }),
                columns: t
                    .columns
                    .into_iter()
                    .map(|c| ResultColumn {
                        name: c.name,
                        kind: c.kind,
                        noise_sd: c.noise_sd,
                    })
                    .collect(),
                rows: t
                    .rows
                    .iter()
                    .map(|r| {
                        r.iter()
                            .map(cell_from_json)
                            .collect::<Result<Vec<_>, String>>()
                    })
                    .collect::<Result<_, String>>()?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(AnalysisResult {
        tables,
        notes: stored.notes,
    })
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
                left_out: None,
            }],
            notes: vec!["groups under the threshold are not shown".into()],
        };
        assert_eq!(decode(&encode(&r)).unwrap(), r);
        let mut counted = r.clone();
        counted.tables[0].left_out = Some(LeftOut {
            groups: 7,
            noise_sd: Some(14.1),
        });
        let text = encode(&counted);
        assert!(
            text.contains(r#""left_out":{"groups":7,"noise_sd":14.1}"#),
            "{text}"
        );
        assert_eq!(decode(&text).unwrap(), counted);
        assert!(decode("{}").is_err());
        // The bytes earlier versions stored (hand-built JSON, keys in order) still decode,
        // and encoding gives them back unchanged.
        let old = r#"{"notes":["groups under the threshold are not shown"],"tables":[{"columns":[{"kind":"group","name":"region","noise_sd":null},{"kind":"count","name":"people","noise_sd":2.5}],"name":"overlap","rows":[["north",1200],[null,3.5],[true,-1]],"visible_to":"brand"}]}"#;
        assert_eq!(decode(old).unwrap(), r);
        assert_eq!(encode(&r), old);
    }
}
