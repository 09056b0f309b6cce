//! The values transforms work on: one output cell, and a column-major table of the prepared
//! rows for the transforms that need a whole column (percentiles, swapping, microaggregation,
//! suppression to k).

use std::mem::size_of;

/// One output value of a prepared row (the upload file's cell).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    /// Days since 1970-01-01.
    Day(i32),
    Bool(bool),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as a number: integers, floats, days, and text that reads as a finite number
    /// (an age kept as written). `None` for NULL, booleans and other text.
    pub fn number(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            Value::Day(d) => Some(f64::from(*d)),
            Value::Text(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
            Value::Null | Value::Bool(_) => None,
        }
    }

    /// A value of the same kind holding `x`: integers and days are rounded to the nearest
    /// whole number, text is written with at most `decimals` decimals (none when whole).
    pub fn with_number(&self, x: f64, decimals: usize) -> Value {
        match self {
            Value::Int(_) => Value::Int(x.round() as i64),
            Value::Day(_) => Value::Day(x.round() as i32),
            Value::Float(_) => Value::Float(x),
            Value::Text(_) => Value::Text(format_number(x, decimals)),
            Value::Null | Value::Bool(_) => self.clone(),
        }
    }

    /// Bytes this value occupies in memory (its slot and any text it owns).
    pub fn memory(&self) -> usize {
        size_of::<Value>()
            + match self {
                Value::Text(s) => s.capacity(),
                _ => 0,
            }
    }

    /// Appends an unambiguous encoding of the value to `key` (for class and stratum keys).
    pub fn encode(&self, key: &mut Vec<u8>) {
        match self {
            Value::Null => key.push(0),
            Value::Text(s) => {
                key.push(1);
                key.extend_from_slice(&(s.len() as u64).to_le_bytes());
                key.extend_from_slice(s.as_bytes());
            }
            Value::Int(v) => {
                key.push(2);
                key.extend_from_slice(&v.to_le_bytes());
            }
            Value::Float(v) => {
                key.push(3);
                key.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            Value::Day(d) => {
                key.push(4);
                key.extend_from_slice(&d.to_le_bytes());
            }
            Value::Bool(b) => key.push(if *b { 6 } else { 5 }),
        }
    }

    /// The value as text for the risk assessment (NULL as `None`).
    pub fn as_text(&self) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match self {
            Value::Null => None,
            Value::Text(s) => Some(Cow::Borrowed(s.as_str())),
            Value::Int(v) => Some(Cow::Owned(v.to_string())),
            Value::Float(v) => Some(Cow::Owned(v.to_string())),
            Value::Day(d) => Some(Cow::Owned(d.to_string())),
            Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        }
    }
}

/// `x` with at most `decimals` decimals, trailing zeros removed.
pub fn format_number(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    if s == "-0" { "0".to_owned() } else { s }
}

/// The prepared rows, column by column, held in memory (never on disk) while whole-column
/// transforms run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    names: Vec<String>,
    columns: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(names: Vec<String>) -> Self {
        let columns = names.iter().map(|_| Vec::new()).collect();
        Table { names, columns }
    }

    /// A table from columns of equal length (tests and small inputs).
    pub fn from_columns(columns: Vec<(&str, Vec<Value>)>) -> Self {
        let names = columns.iter().map(|(n, _)| (*n).to_owned()).collect();
        let columns: Vec<Vec<Value>> = columns.into_iter().map(|(_, c)| c).collect();
        debug_assert!(columns.windows(2).all(|w| w[0].len() == w[1].len()));
        Table { names, columns }
    }

    /// Moves a row in (the cells are left NULL).
    pub fn push_row(&mut self, row: &mut [Value]) {
        for (col, cell) in self.columns.iter_mut().zip(row.iter_mut()) {
            col.push(std::mem::take(cell));
        }
    }

    pub fn rows(&self) -> usize {
        self.columns.first().map_or(0, Vec::len)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The index of an output column.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    pub fn column(&self, i: usize) -> &[Value] {
        &self.columns[i]
    }

    pub fn column_mut(&mut self, i: usize) -> &mut Vec<Value> {
        &mut self.columns[i]
    }

    /// Moves row `i` out into `row` (the table's cells are left NULL).
    pub fn take_row(&mut self, i: usize, row: &mut [Value]) {
        for (col, cell) in self.columns.iter_mut().zip(row.iter_mut()) {
            *cell = std::mem::take(&mut col[i]);
        }
    }

    /// Keeps the rows whose flag is true.
    pub fn retain_rows(&mut self, keep: &[bool]) {
        for col in &mut self.columns {
            let mut it = keep.iter();
            col.retain(|_| *it.next().unwrap_or(&true));
        }
    }

    /// Bytes held (values and their text).
    pub fn memory(&self) -> usize {
        self.columns
            .iter()
            .map(|c| {
                c.iter().map(Value::memory).sum::<usize>()
                    + c.capacity().saturating_sub(c.len()) * size_of::<Value>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_kind() {
        assert_eq!(Value::Text(" 42 ".into()).number(), Some(42.0));
        assert_eq!(Value::Text("65+".into()).number(), None);
        assert_eq!(Value::Text("NaN".into()).number(), None);
        assert_eq!(Value::Int(3).with_number(4.6, 2), Value::Int(5));
        assert_eq!(
            Value::Text("3".into()).with_number(4.0, 2),
            Value::Text("4".into())
        );
        assert_eq!(
            Value::Text("3".into()).with_number(4.126, 2),
            Value::Text("4.13".into())
        );
        assert_eq!(format_number(-0.001, 2), "0");
    }

    #[test]
    fn rows_move_in_and_out() {
        let mut t = Table::new(vec!["a".into(), "b".into()]);
        let mut row = vec![Value::Int(1), Value::Text("x".into())];
        t.push_row(&mut row);
        assert!(row.iter().all(Value::is_null));
        t.push_row(&mut [Value::Int(2), Value::Null]);
        t.retain_rows(&[false, true]);
        assert_eq!(t.rows(), 1);
        t.take_row(0, &mut row);
        assert_eq!(row, vec![Value::Int(2), Value::Null]);
        assert!(t.memory() > 0);
    }
}
