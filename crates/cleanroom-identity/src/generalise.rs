//! Generalisation of quasi-identifiers: coarser values that many people share, so that a
//! combination of them points at a crowd rather than at one person.

use std::borrow::Cow;

use cleanroom_core::schema::ColumnType;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, Month, PrimitiveDateTime};

use crate::IdentityError;
use crate::normalise::{Invalid, NormaliseOptions, postal_code};

/// Oldest plausible age.
pub const MAX_AGE: u32 = 130;

/// The default age band edges: 18-24, 25-34, 35-44, 45-54, 55-64, 65+.
pub const DEFAULT_AGE_EDGES: [u32; 6] = [18, 25, 35, 45, 55, 65];

/// Age bands from increasing edges: `[18, 25, 35]` gives `18-24`, `25-34`, `35+`; ages below
/// the first edge are [`Invalid::BelowMinimum`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgeBands {
    edges: Vec<u32>,
    labels: Vec<String>,
}

impl AgeBands {
    pub fn new(edges: Vec<u32>) -> Result<Self, IdentityError> {
        if edges.is_empty() {
            return Err(IdentityError::InvalidInput(
                "age bands need at least one edge".into(),
            ));
        }
        if edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(IdentityError::InvalidInput(
                "age band edges must increase strictly".into(),
            ));
        }
        if edges.last().is_some_and(|e| *e > MAX_AGE) {
            return Err(IdentityError::InvalidInput(format!(
                "age band edges must be at most {MAX_AGE}"
            )));
        }
        let labels = band_labels(&edges);
        Ok(AgeBands { edges, labels })
    }

    pub fn edges(&self) -> &[u32] {
        &self.edges
    }

    /// The band of an age in whole years (a decimal is cut to its whole years).
    pub fn band(&self, raw: &str) -> Result<&str, Invalid> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(Invalid::Empty);
        }
        let age: f64 = s
            .parse()
            .map_err(|_| Invalid::Malformed("not an age in years"))?;
        if !age.is_finite() || age < 0.0 || age > f64::from(MAX_AGE) {
            return Err(Invalid::Malformed("not a plausible age"));
        }
        let years = age.floor() as u32;
        let i = self.edges.partition_point(|e| *e <= years);
        if i == 0 {
            return Err(Invalid::BelowMinimum);
        }
        Ok(&self.labels[i - 1])
    }
}

impl Default for AgeBands {
    fn default() -> Self {
        AgeBands {
            edges: DEFAULT_AGE_EDGES.to_vec(),
            labels: band_labels(&DEFAULT_AGE_EDGES),
        }
    }
}

fn band_labels(edges: &[u32]) -> Vec<String> {
    edges
        .iter()
        .enumerate()
        .map(|(i, e)| match edges.get(i + 1) {
            Some(next) if *next == e + 1 => format!("{e}"),
            Some(next) => format!("{e}-{}", next - 1),
            None => format!("{e}+"),
        })
        .collect()
}

/// The grain a date or timestamp is cut to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateGrain {
    /// The calendar day (a `date` column).
    Day,
    /// The ISO 8601 week, `2026-W07`.
    Week,
    /// The month, `2026-02`.
    Month,
}

/// How a quasi-identifier is generalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generalisation {
    /// Kept as written (trimmed).
    None,
    /// Ages to bands.
    AgeBands(AgeBands),
    /// The first `chars` characters of the normalised postal code.
    PostcodePrefix { chars: usize },
    /// The outward code (district) of a UK postcode: `SW1A 1AA` → `SW1A`.
    PostcodeOutward,
    /// A date or timestamp to a day, ISO week or month.
    Date(DateGrain),
}

/// A generalised value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generalised<'a> {
    /// Borrowed from the input or the configuration where it can be (no allocation).
    Text(Cow<'a, str>),
    /// Days since 1970-01-01.
    Day(i32),
}

impl Generalisation {
    /// The type of the output column.
    pub fn output_type(&self) -> ColumnType {
        match self {
            Generalisation::Date(DateGrain::Day) => ColumnType::Date,
            _ => ColumnType::String,
        }
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            Generalisation::None => "kept as is".into(),
            Generalisation::AgeBands(b) => format!(
                "age bands from edges {}",
                b.edges()
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Generalisation::PostcodePrefix { chars } => {
                format!("postcode, first {chars} characters")
            }
            Generalisation::PostcodeOutward => "postcode outward code".into(),
            Generalisation::Date(DateGrain::Day) => "date to the day".into(),
            Generalisation::Date(DateGrain::Week) => "date to the ISO week".into(),
            Generalisation::Date(DateGrain::Month) => "date to the month".into(),
        }
    }

    pub fn apply<'a>(
        &'a self,
        raw: &'a str,
        opts: &NormaliseOptions,
    ) -> Result<Generalised<'a>, Invalid> {
        match self {
            Generalisation::None => {
                let s = raw.trim();
                if s.is_empty() {
                    Err(Invalid::Empty)
                } else {
                    Ok(Generalised::Text(Cow::Borrowed(s)))
                }
            }
            Generalisation::AgeBands(b) => b.band(raw).map(|s| Generalised::Text(Cow::Borrowed(s))),
            Generalisation::PostcodePrefix { chars } => {
                let code = postal_code(raw, &opts.default_region)?;
                Ok(Generalised::Text(Cow::Owned(
                    code.chars().take(*chars).collect(),
                )))
            }
            Generalisation::PostcodeOutward => {
                let code = postal_code(raw, "GB")?;
                crate::normalise::gb_outward(&code)
                    .map(|o| Generalised::Text(Cow::Owned(o.to_owned())))
                    .ok_or(Invalid::Malformed("not a UK postcode"))
            }
            Generalisation::Date(grain) => {
                let d = parse_date(raw)?;
                Ok(match grain {
                    DateGrain::Day => Generalised::Day(days_since_epoch(d)),
                    DateGrain::Week => {
                        let (y, w, _) = d.to_iso_week_date();
                        Generalised::Text(Cow::Owned(format!("{y:04}-W{w:02}")))
                    }
                    DateGrain::Month => Generalised::Text(Cow::Owned(format!(
                        "{:04}-{:02}",
                        d.year(),
                        u8::from(d.month())
                    ))),
                })
            }
        }
    }
}

fn days_since_epoch(d: Date) -> i32 {
    d.to_julian_day() - 2_440_588
}

/// Reads `YYYY-MM-DD`, an RFC 3339 timestamp (`2026-02-14T09:30:00+01:00`: converted to UTC
/// first), or a timestamp without offset (`2026-02-14 09:30:00`, `2026-02-14T09:30:00.5`:
/// taken as written).
pub fn parse_date(raw: &str) -> Result<Date, Invalid> {
    const WHY: &str = "not a date (YYYY-MM-DD) or ISO 8601 timestamp";
    let s = raw.trim();
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if s.len() > 40 || !s.is_ascii() {
        return Err(Invalid::Malformed(WHY));
    }
    if s.len() == 10 {
        return date_part(s).ok_or(Invalid::Malformed(WHY));
    }
    if s.len() < 16 || !matches!(s.as_bytes()[10], b'T' | b't' | b' ') {
        return Err(Invalid::Malformed(WHY));
    }
    let t = s.replacen(' ', "T", 1).to_ascii_uppercase();
    if let Ok(odt) = time::OffsetDateTime::parse(&t, &Rfc3339) {
        return Ok(odt.to_offset(time::UtcOffset::UTC).date());
    }
    let naive = format_description!(
        version = 2,
        "[year]-[month]-[day]T[hour]:[minute][optional [:[second][optional [.[subsecond]]]]]"
    );
    PrimitiveDateTime::parse(&t, &naive)
        .map(|p| p.date())
        .map_err(|_| Invalid::Malformed(WHY))
}

fn date_part(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let day = u8::try_from(num(8..10)?).ok()?;
    Date::from_calendar_date(year, month, day).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply<'a>(g: &'a Generalisation, s: &'a str) -> Result<Generalised<'a>, Invalid> {
        g.apply(s, &NormaliseOptions::default())
    }
    fn text(s: &str) -> Result<Generalised<'_>, Invalid> {
        Ok(Generalised::Text(Cow::Borrowed(s)))
    }

    #[test]
    fn age_bands() {
        let b = AgeBands::default();
        for (age, band) in [
            ("18", "18-24"),
            ("24", "18-24"),
            (" 25 ", "25-34"),
            ("34.9", "25-34"),
            ("64", "55-64"),
            ("65", "65+"),
            ("101", "65+"),
        ] {
            assert_eq!(b.band(age).unwrap(), band, "{age}");
        }
        assert_eq!(b.band("17"), Err(Invalid::BelowMinimum));
        assert_eq!(b.band("-1").unwrap_err().category(), "malformed");
        assert_eq!(b.band("200").unwrap_err().category(), "malformed");
        assert_eq!(b.band("forty").unwrap_err().category(), "malformed");
        assert_eq!(b.band("NaN").unwrap_err().category(), "malformed");
        assert_eq!(b.band(""), Err(Invalid::Empty));
        let custom = AgeBands::new(vec![0, 16, 17, 30]).unwrap();
        assert_eq!(custom.band("16").unwrap(), "16");
        assert_eq!(custom.band("3").unwrap(), "0-15");
        assert!(AgeBands::new(vec![30, 20]).is_err());
        assert!(AgeBands::new(vec![]).is_err());
    }

    #[test]
    fn postcodes() {
        let p = Generalisation::PostcodePrefix { chars: 3 };
        assert_eq!(apply(&p, "sw1a 1aa"), text("SW1"));
        let o = Generalisation::PostcodeOutward;
        assert_eq!(apply(&o, "sw1a 1aa"), text("SW1A"));
        assert_eq!(apply(&o, "M1 1AE"), text("M1"));
        assert!(apply(&o, "nonsense").is_err());
    }

    #[test]
    fn dates() {
        let day = Generalisation::Date(DateGrain::Day);
        assert_eq!(apply(&day, "1970-01-02"), Ok(Generalised::Day(1)));
        assert_eq!(
            apply(&day, "2026-02-14T23:30:00-05:00"),
            apply(&day, "2026-02-15")
        );
        assert_eq!(
            apply(&day, "2026-02-14 23:30:00"),
            apply(&day, "2026-02-14")
        );
        assert_eq!(apply(&day, "2026-02-14T23:30"), apply(&day, "2026-02-14"));
        assert_eq!(
            apply(&day, "2026-02-14T23:30:00.123Z"),
            apply(&day, "2026-02-14")
        );
        let week = Generalisation::Date(DateGrain::Week);
        assert_eq!(apply(&week, "2026-01-01"), text("2026-W01"));
        assert_eq!(apply(&week, "2027-01-01"), text("2026-W53"));
        assert_eq!(apply(&week, "2024-12-30"), text("2025-W01"));
        let month = Generalisation::Date(DateGrain::Month);
        assert_eq!(apply(&month, "2026-02-14T10:00:00Z"), text("2026-02"));
        for bad in [
            "2026-02-30",
            "14/02/2026",
            "2026-2-14",
            "yesterday",
            "2026-02-14X10",
        ] {
            assert_eq!(
                apply(&day, bad).unwrap_err().category(),
                "malformed",
                "{bad}"
            );
        }
    }
}
