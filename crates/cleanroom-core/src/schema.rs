//! Declared dataset schemas: a type and a role for every column.

use std::collections::HashSet;
use std::fmt;

use crate::CoreError;
use crate::names::ColumnName;

/// Most columns a dataset may declare.
pub const MAX_COLUMNS: usize = 256;

/// The value type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float (finite values only).
    Float64,
    /// `true`/`false` (also `1`/`0`, `yes`/`no` in CSV).
    Bool,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
}

impl ColumnType {
    /// Every type (the API document lists them).
    pub const ALL: &'static [ColumnType] = &[
        ColumnType::String,
        ColumnType::Int64,
        ColumnType::Float64,
        ColumnType::Bool,
        ColumnType::Date,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Bool => "bool",
            ColumnType::Date => "date",
        }
    }
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s.to_ascii_lowercase().as_str() {
            "string" | "text" | "utf8" => Ok(ColumnType::String),
            "int64" | "int" | "integer" | "bigint" => Ok(ColumnType::Int64),
            "float64" | "float" | "double" => Ok(ColumnType::Float64),
            "bool" | "boolean" => Ok(ColumnType::Bool),
            "date" => Ok(ColumnType::Date),
            other => Err(CoreError::invalid(
                "column type",
                format!("{other:?} is not one of string, int64, float64, bool, date"),
            )),
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a column means to the clean room; analysis policies build on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnRole {
    /// A (pseudonymised) identifier used to match records; never output.
    Identifier,
    /// An attribute that may be grouped and filtered on.
    Dimension,
    /// A numeric value that may be aggregated.
    Metric,
    /// The person a row is about: the unit of privacy protection.
    PrivacyUnit,
}

impl ColumnRole {
    /// Every role (the API document lists them).
    pub const ALL: &'static [ColumnRole] = &[
        ColumnRole::Identifier,
        ColumnRole::Dimension,
        ColumnRole::Metric,
        ColumnRole::PrivacyUnit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ColumnRole::Identifier => "identifier",
            ColumnRole::Dimension => "dimension",
            ColumnRole::Metric => "metric",
            ColumnRole::PrivacyUnit => "privacy_unit",
        }
    }
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "identifier" | "id" => Ok(ColumnRole::Identifier),
            "dimension" | "dim" => Ok(ColumnRole::Dimension),
            "metric" => Ok(ColumnRole::Metric),
            "privacy_unit" | "unit" => Ok(ColumnRole::PrivacyUnit),
            other => Err(CoreError::invalid(
                "column role",
                format!("{other:?} is not one of identifier, dimension, metric, privacy_unit"),
            )),
        }
    }
}

impl fmt::Display for ColumnRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One declared column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: ColumnName,
    pub ty: ColumnType,
    pub role: ColumnRole,
}

impl ColumnSpec {
    pub fn new(name: &str, ty: &str, role: &str) -> Result<Self, CoreError> {
        Ok(ColumnSpec {
            name: ColumnName::parse(name)?,
            ty: ColumnType::parse(ty)?,
            role: ColumnRole::parse(role)?,
        })
    }

    /// Parses the compact form `name:type:role` used on the command line.
    pub fn parse_compact(s: &str) -> Result<Self, CoreError> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            [name, ty, role] => ColumnSpec::new(name.trim(), ty.trim(), role.trim()),
            _ => Err(CoreError::invalid(
                "column",
                format!("{s:?} is not of the form name:type:role"),
            )),
        }
    }
}

/// A validated schema: names unique, types fit roles, exactly one privacy unit column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSchema {
    columns: Vec<ColumnSpec>,
}

impl DatasetSchema {
    pub fn new(columns: Vec<ColumnSpec>) -> Result<Self, CoreError> {
        const WHAT: &str = "schema";
        if columns.is_empty() {
            return Err(CoreError::invalid(WHAT, "declare at least one column"));
        }
        if columns.len() > MAX_COLUMNS {
            return Err(CoreError::invalid(
                WHAT,
                format!("at most {MAX_COLUMNS} columns"),
            ));
        }
        let mut seen = HashSet::new();
        for c in &columns {
            if !seen.insert(c.name.as_str().to_ascii_lowercase()) {
                return Err(CoreError::invalid(
                    WHAT,
                    format!("column {} is declared twice", c.name),
                ));
            }
            let fits = match c.role {
                ColumnRole::Identifier | ColumnRole::PrivacyUnit => {
                    matches!(c.ty, ColumnType::String | ColumnType::Int64)
                }
                ColumnRole::Metric => matches!(c.ty, ColumnType::Int64 | ColumnType::Float64),
                ColumnRole::Dimension => true,
            };
            if !fits {
                return Err(CoreError::invalid(
                    WHAT,
                    format!(
                        "column {} has role {} which needs type {}, not {}",
                        c.name,
                        c.role,
                        match c.role {
                            ColumnRole::Metric => "int64 or float64",
                            _ => "string or int64",
                        },
                        c.ty
                    ),
                ));
            }
        }
        let units = columns
            .iter()
            .filter(|c| c.role == ColumnRole::PrivacyUnit)
            .count();
        if units != 1 {
            return Err(CoreError::invalid(
                WHAT,
                format!(
                    "declare exactly one privacy_unit column (the person each row is about); found {units}"
                ),
            ));
        }
        Ok(DatasetSchema { columns })
    }

    pub fn columns(&self) -> &[ColumnSpec] {
        &self.columns
    }

    pub fn privacy_unit(&self) -> &ColumnSpec {
        self.columns
            .iter()
            .find(|c| c.role == ColumnRole::PrivacyUnit)
            .expect("validated: exactly one privacy unit")
    }

    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name.as_str() == name)
    }
}

impl DatasetSchema {
    /// One `name:type:role` line per column: the form the metadata store keeps.
    pub fn to_compact(&self) -> String {
        self.columns
            .iter()
            .map(|c| format!("{}:{}:{}", c.name, c.ty, c.role))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn from_compact(s: &str) -> Result<Self, CoreError> {
        DatasetSchema::new(
            s.lines()
                .filter(|l| !l.trim().is_empty())
                .map(ColumnSpec::parse_compact)
                .collect::<Result<_, _>>()?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> ColumnSpec {
        ColumnSpec::parse_compact(s).unwrap()
    }

    #[test]
    fn a_good_schema_is_accepted() {
        let s = DatasetSchema::new(vec![
            spec("person_id:string:privacy_unit"),
            spec("email_hmac:string:identifier"),
            spec("age_band:string:dimension"),
            spec("purchases:int64:metric"),
            spec("revenue:float64:metric"),
            spec("first_seen:date:dimension"),
        ])
        .unwrap();
        assert_eq!(s.privacy_unit().name.as_str(), "person_id");
        assert_eq!(s.columns().len(), 6);
    }

    #[test]
    fn bad_schemas_say_why() {
        let err = |cols: Vec<ColumnSpec>| DatasetSchema::new(cols).unwrap_err().to_string();
        assert!(err(vec![]).contains("at least one column"));
        assert!(err(vec![spec("a:string:dimension")]).contains("exactly one privacy_unit"));
        assert!(
            err(vec![
                spec("a:string:privacy_unit"),
                spec("A:string:dimension")
            ])
            .contains("declared twice")
        );
        assert!(
            err(vec![spec("a:string:privacy_unit"), spec("m:string:metric")])
                .contains("needs type int64 or float64")
        );
        assert!(err(vec![spec("a:float64:privacy_unit")]).contains("string or int64"));
        assert!(ColumnSpec::parse_compact("a:string").is_err());
        assert!(ColumnSpec::parse_compact("a:blob:metric").is_err());
        assert!(ColumnSpec::parse_compact("../a:string:metric").is_err());
    }
}
