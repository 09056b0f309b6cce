//! The prepare configuration: a small TOML file saying what each input column is. Columns it
//! does not name are dropped. See [`EXAMPLE_CONFIG`] for every option with comments.

use std::collections::HashSet;
use std::ops::Range;

use cleanroom_core::names::ColumnName;
use cleanroom_core::schema::{ColumnType, MAX_COLUMNS};
use serde::Deserialize;
use toml::Spanned;

use crate::IdentityError;
use crate::activation::Destination;
use crate::generalise::{AgeBands, DEFAULT_AGE_EDGES, DateGrain, Generalisation};
use crate::normalise::{IdKind, NormaliseOptions, region_is_known};
use crate::risk::{L_CAP, RiskAction, RiskLimits};
use crate::transform::Transforms;

/// A commented example, printed by `cleanroom prepare --example-config`.
pub const EXAMPLE_CONFIG: &str = include_str!("example-config.toml");

/// An identifier column, as the PSI and matching code sees it: the input column it is read
/// from, its kind, and its priority (1 = matched first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifierColumn {
    pub column: String,
    pub kind: IdKind,
    pub priority: u32,
}

/// One `[[identifier]]`: normalised, pseudonymised, optionally hashed for activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifierSpec {
    /// Input column (header name).
    pub column: String,
    pub kind: IdKind,
    pub priority: u32,
    /// Output column of the pseudonym (`<name>_hmac`).
    pub output: String,
    /// Plain hashes for activation: destination and output column (`<name>_sha256_<dest>`).
    pub activation: Vec<(Destination, String)>,
    /// Normalisation options for this column (the global ones, region possibly overridden).
    pub options: NormaliseOptions,
}

/// What happens to a row whose quasi-identifier is below the generalisation's minimum (an age
/// under the first band).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BelowMinimum {
    /// The value becomes NULL; the row is kept.
    Null,
    /// The row is dropped (counted in the report).
    DropRow,
}

/// One `[[quasi_identifier]]`: generalised, then part of the risk assessment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuasiSpec {
    pub column: String,
    pub output: String,
    pub generalisation: Generalisation,
    pub below_minimum: BelowMinimum,
}

/// One `[[dimension]]`: kept as written (trimmed), not a quasi-identifier; a `bool` dimension
/// is read as a boolean (`true`/`false`, `yes`/`no`, `1`/`0`, any case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimensionSpec {
    pub column: String,
    pub output: String,
    /// `String` (default) or `Bool`.
    pub ty: ColumnType,
}

/// One `[[metric]]`: a number, `int64` or `float64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSpec {
    pub column: String,
    pub output: String,
    pub ty: ColumnType,
}

/// The person each output row is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrivacyUnit {
    /// The pseudonym of the identifier at this index of [`PrepareConfig::identifier_specs`].
    Identifier(usize),
    /// An input column kept as written (trimmed), e.g. the owner's own customer number.
    Column { column: String, output: String },
}

/// A validated prepare configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareConfig {
    collaboration: String,
    options: NormaliseOptions,
    delimiter: u8,
    privacy_unit: PrivacyUnit,
    identifiers: Vec<IdentifierSpec>,
    quasi: Vec<QuasiSpec>,
    dimensions: Vec<DimensionSpec>,
    metrics: Vec<MetricSpec>,
    risk: RiskLimits,
    transforms: Transforms,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    collaboration: Spanned<String>,
    default_region: Option<Spanned<String>>,
    #[serde(default)]
    gmail_rules: bool,
    privacy_unit: Spanned<String>,
    delimiter: Option<Spanned<String>>,
    #[serde(default)]
    identifier: Vec<RawIdentifier>,
    #[serde(default)]
    quasi_identifier: Vec<RawQuasi>,
    #[serde(default)]
    dimension: Vec<RawColumn>,
    #[serde(default)]
    metric: Vec<RawMetric>,
    risk: Option<RawRisk>,
    /// Anonymisation transforms, in order (see [`crate::transform`]).
    #[serde(default)]
    transform: Vec<crate::transform::parse::RawTransform>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentifier {
    column: Spanned<String>,
    kind: Spanned<String>,
    name: Option<Spanned<String>>,
    priority: Option<Spanned<u32>>,
    region: Option<Spanned<String>>,
    #[serde(default)]
    sha256: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuasi {
    column: Spanned<String>,
    name: Option<Spanned<String>>,
    generalise: Spanned<String>,
    age_edges: Option<Spanned<Vec<u32>>>,
    below_minimum: Option<Spanned<String>>,
    length: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    column: Spanned<String>,
    name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    ty: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    column: Spanned<String>,
    name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    ty: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRisk {
    k: Option<Spanned<u64>>,
    min_k: Option<Spanned<u64>>,
    max_unique_share: Option<Spanned<f64>>,
    max_below_k_share: Option<Spanned<f64>>,
    sensitive: Option<Spanned<String>>,
    min_l: Option<Spanned<u64>>,
    action: Option<Spanned<String>>,
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

struct Ctx<'a> {
    src: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> IdentityError {
        let (line, column) = line_col(self.src, span.start);
        IdentityError::Config {
            line: Some(line),
            column: Some(column),
            message: message.into(),
        }
    }

    /// The output column name: `name` if given, else the input column itself (plus `suffix`).
    fn output_name(
        &self,
        column: &Spanned<String>,
        name: Option<&Spanned<String>>,
        suffix: &str,
    ) -> Result<String, IdentityError> {
        let (base, span) = match name {
            Some(n) => (n.get_ref().as_str(), n.span()),
            None => (column.get_ref().as_str(), column.span()),
        };
        let full = format!("{base}{suffix}");
        ColumnName::parse(&full).map_err(|e| {
            let hint = if name.is_none() {
                "; give the output a name with name = \"...\""
            } else {
                ""
            };
            self.err(span, format!("{e}{hint}"))
        })?;
        Ok(full)
    }
}

fn non_empty(ctx: &Ctx<'_>, s: &Spanned<String>, what: &str) -> Result<String, IdentityError> {
    let v = s.get_ref().trim();
    if v.is_empty() {
        return Err(ctx.err(s.span(), format!("{what} must not be empty")));
    }
    Ok(v.to_owned())
}

impl PrepareConfig {
    /// Parses and validates a configuration; errors name the line and column.
    pub fn from_toml(src: &str) -> Result<Self, IdentityError> {
        let raw = parse_raw(src)?;
        let ctx = Ctx { src };

        let collaboration = non_empty(&ctx, &raw.collaboration, "collaboration")?;
        let options = NormaliseOptions {
            gmail_rules: raw.gmail_rules,
            default_region: default_region(&ctx, raw.default_region.as_ref())?,
        };
        let delimiter = delimiter(&ctx, raw.delimiter.as_ref())?;

        let mut outputs: Vec<(String, Range<usize>)> = Vec::new();

        let mut identifiers = Vec::new();
        let mut priorities = HashSet::new();
        for (i, r) in raw.identifier.iter().enumerate() {
            let spec = identifier(&ctx, i, r, &options, &mut priorities, &mut outputs)?;
            identifiers.push(spec);
        }
        let mut quasi = Vec::new();
        for r in &raw.quasi_identifier {
            quasi.push(quasi_identifier(&ctx, r, &options, &mut outputs)?);
        }
        let mut dimensions = Vec::new();
        for r in &raw.dimension {
            dimensions.push(dimension(&ctx, r, &mut outputs)?);
        }
        let mut metrics = Vec::new();
        for r in &raw.metric {
            metrics.push(metric(&ctx, r, &mut outputs)?);
        }

        let privacy_unit = privacy_unit(&ctx, &raw.privacy_unit, &identifiers, &mut outputs)?;
        check_outputs(&ctx, &identifiers, &outputs)?;

        let risk = match &raw.risk {
            None => RiskLimits::default(),
            Some(r) => risk_limits(&ctx, r, &quasi, &dimensions)?,
        };

        let transforms = transforms(&raw.transform, &quasi, &dimensions, &metrics, risk.k)
            .map_err(|(span, message)| ctx.err(span, message))?;

        Ok(PrepareConfig {
            collaboration,
            options,
            delimiter,
            privacy_unit,
            identifiers,
            quasi,
            dimensions,
            metrics,
            risk,
            transforms,
        })
    }

    /// The identifier columns in priority order (1 first).
    pub fn identifiers(&self) -> Vec<IdentifierColumn> {
        let mut v: Vec<IdentifierColumn> = self
            .identifiers
            .iter()
            .map(|s| IdentifierColumn {
                column: s.column.clone(),
                kind: s.kind,
                priority: s.priority,
            })
            .collect();
        v.sort_by_key(|c| c.priority);
        v
    }

    /// The identifiers as configured (file order), with output columns and options.
    pub fn identifier_specs(&self) -> &[IdentifierSpec] {
        &self.identifiers
    }

    /// The output column holding the pseudonym of an identifier's input column.
    pub fn pseudonym_column(&self, input_column: &str) -> Option<&str> {
        self.identifiers
            .iter()
            .find(|s| s.column == input_column)
            .map(|s| s.output.as_str())
    }

    /// The collaboration label mixed into key derivation.
    pub fn collaboration(&self) -> &str {
        &self.collaboration
    }

    pub fn options(&self) -> &NormaliseOptions {
        &self.options
    }

    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    pub fn privacy_unit(&self) -> &PrivacyUnit {
        &self.privacy_unit
    }

    /// The output column of the privacy unit.
    pub fn privacy_unit_output(&self) -> &str {
        match &self.privacy_unit {
            PrivacyUnit::Identifier(i) => self.identifiers[*i].output.as_str(),
            PrivacyUnit::Column { output, .. } => output,
        }
    }

    pub fn quasi_identifiers(&self) -> &[QuasiSpec] {
        &self.quasi
    }

    pub fn dimensions(&self) -> &[DimensionSpec] {
        &self.dimensions
    }

    pub fn metrics(&self) -> &[MetricSpec] {
        &self.metrics
    }

    pub fn risk(&self) -> &RiskLimits {
        &self.risk
    }

    /// The anonymisation transforms, in the order they run.
    pub fn transforms(&self) -> &Transforms {
        &self.transforms
    }

    /// True when any identifier asks for activation hashes.
    pub fn has_activation(&self) -> bool {
        self.identifiers.iter().any(|s| !s.activation.is_empty())
    }
}

/// The TOML as written; a syntax or shape error names the line and column when TOML knows it.
fn parse_raw(src: &str) -> Result<RawConfig, IdentityError> {
    toml::from_str(src).map_err(|e| {
        let (line, column) = match e.span() {
            Some(s) => {
                let (l, c) = line_col(src, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        IdentityError::Config {
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })
}

/// `default_region`: required, an ISO 3166-1 alpha-2 code with a numbering plan.
fn default_region(ctx: &Ctx<'_>, r: Option<&Spanned<String>>) -> Result<String, IdentityError> {
    match r {
        Some(r) => {
            let v = r.get_ref().trim().to_ascii_uppercase();
            if !region_is_known(&v) {
                return Err(ctx.err(
                    r.span(),
                    format!(
                        "default_region {:?} is not an ISO 3166-1 alpha-2 code with a numbering plan (e.g. \"GB\", \"US\", \"DE\")",
                        r.get_ref()
                    ),
                ));
            }
            Ok(v)
        }
        None => Err(IdentityError::config(
            "default_region is missing: name the ISO 3166-1 alpha-2 region of national phone numbers and postal codes (e.g. default_region = \"GB\")",
        )),
    }
}

/// `delimiter`: one ASCII character (`"\t"` written as an escape), `,` by default.
fn delimiter(ctx: &Ctx<'_>, d: Option<&Spanned<String>>) -> Result<u8, IdentityError> {
    match d {
        None => Ok(b','),
        Some(d) => {
            let v = d.get_ref();
            let v = if v == "\\t" { "\t" } else { v.as_str() };
            match v.as_bytes() {
                [b] if b.is_ascii() && *b != b'"' && *b != b'\n' && *b != b'\r' => Ok(*b),
                _ => Err(ctx.err(
                    d.span(),
                    "delimiter must be one ASCII character (e.g. \",\", \";\" or \"\\t\")",
                )),
            }
        }
    }
}

/// The `i`th `[[identifier]]`. `priorities` holds those already taken; the output column is
/// added to `outputs`.
fn identifier(
    ctx: &Ctx<'_>,
    i: usize,
    r: &RawIdentifier,
    options: &NormaliseOptions,
    priorities: &mut HashSet<u32>,
    outputs: &mut Vec<(String, Range<usize>)>,
) -> Result<IdentifierSpec, IdentityError> {
    let column = non_empty(ctx, &r.column, "column")?;
    let kind =
        IdKind::parse(r.kind.get_ref()).map_err(|e| ctx.err(r.kind.span(), e.to_string()))?;
    let priority = match &r.priority {
        Some(p) => {
            if *p.get_ref() == 0 {
                return Err(ctx.err(p.span(), "priority starts at 1 (matched first)"));
            }
            *p.get_ref()
        }
        None => u32::try_from(i + 1).unwrap_or(u32::MAX),
    };
    if !priorities.insert(priority) {
        let span = r.priority.as_ref().map_or(r.column.span(), Spanned::span);
        return Err(ctx.err(
            span,
            format!("priority {priority} is given to two identifiers"),
        ));
    }
    let mut opts = options.clone();
    if let Some(reg) = &r.region {
        let v = reg.get_ref().trim().to_ascii_uppercase();
        if !region_is_known(&v) {
            return Err(ctx.err(
                reg.span(),
                "region is not an ISO 3166-1 alpha-2 code with a numbering plan",
            ));
        }
        opts.default_region = v;
    }
    let output = ctx.output_name(&r.column, r.name.as_ref(), "_hmac")?;
    outputs.push((output.clone(), name_span(&r.column, r.name.as_ref())));
    let activation = activation(ctx, r, kind)?;
    Ok(IdentifierSpec {
        column,
        kind,
        priority,
        output,
        activation,
        options: opts,
    })
}

/// The activation-hash destinations of an identifier and their output columns.
fn activation(
    ctx: &Ctx<'_>,
    r: &RawIdentifier,
    kind: IdKind,
) -> Result<Vec<(Destination, String)>, IdentityError> {
    let mut activation = Vec::new();
    for d in &r.sha256 {
        let dest = Destination::parse(d.get_ref()).map_err(|e| ctx.err(d.span(), e.to_string()))?;
        if !dest.supports(kind) {
            return Err(ctx.err(
                d.span(),
                format!("activation hashes exist for email and phone identifiers, not {kind}"),
            ));
        }
        if activation.iter().any(|(x, _)| *x == dest) {
            return Err(ctx.err(d.span(), format!("destination {dest} is listed twice")));
        }
        let col = ctx.output_name(&r.column, r.name.as_ref(), &format!("_sha256_{dest}"))?;
        activation.push((dest, col));
    }
    Ok(activation)
}

/// One `[[quasi_identifier]]`; the output column is added to `outputs`.
fn quasi_identifier(
    ctx: &Ctx<'_>,
    r: &RawQuasi,
    options: &NormaliseOptions,
    outputs: &mut Vec<(String, Range<usize>)>,
) -> Result<QuasiSpec, IdentityError> {
    let column = non_empty(ctx, &r.column, "column")?;
    let generalisation = generalisation(ctx, r, options)?;
    if r.age_edges.is_some() && !matches!(generalisation, Generalisation::AgeBands(_)) {
        let span = r.age_edges.as_ref().map_or(r.column.span(), Spanned::span);
        return Err(ctx.err(span, "age_edges belongs to generalise = \"age_band\""));
    }
    if r.length.is_some() && !matches!(generalisation, Generalisation::PostcodePrefix { .. }) {
        let span = r.length.as_ref().map_or(r.column.span(), Spanned::span);
        return Err(ctx.err(span, "length belongs to generalise = \"postcode_prefix\""));
    }
    let below_minimum = match &r.below_minimum {
        None => BelowMinimum::DropRow,
        Some(b) => match b.get_ref().trim() {
            "null" => BelowMinimum::Null,
            "drop_row" => BelowMinimum::DropRow,
            _ => {
                return Err(ctx.err(b.span(), "below_minimum must be \"drop_row\" or \"null\""));
            }
        },
    };
    let output = ctx.output_name(&r.column, r.name.as_ref(), "")?;
    outputs.push((output.clone(), name_span(&r.column, r.name.as_ref())));
    Ok(QuasiSpec {
        column,
        output,
        generalisation,
        below_minimum,
    })
}

/// A quasi-identifier's `generalise` and the settings it takes.
fn generalisation(
    ctx: &Ctx<'_>,
    r: &RawQuasi,
    options: &NormaliseOptions,
) -> Result<Generalisation, IdentityError> {
    let how = r.generalise.get_ref().trim().to_ascii_lowercase();
    Ok(match how.as_str() {
        "none" => Generalisation::None,
        "age_band" | "age_bands" => {
            let edges = r
                .age_edges
                .as_ref()
                .map_or_else(|| DEFAULT_AGE_EDGES.to_vec(), |e| e.get_ref().clone());
            let bands = AgeBands::new(edges).map_err(|e| {
                let span = r
                    .age_edges
                    .as_ref()
                    .map_or(r.generalise.span(), Spanned::span);
                ctx.err(span, e.to_string())
            })?;
            Generalisation::AgeBands(bands)
        }
        "postcode_prefix" => {
            let Some(len) = &r.length else {
                return Err(ctx.err(
                    r.generalise.span(),
                    "postcode_prefix needs length = N (characters kept)",
                ));
            };
            if !(1..=10).contains(len.get_ref()) {
                return Err(ctx.err(len.span(), "length must be 1 to 10"));
            }
            Generalisation::PostcodePrefix {
                chars: *len.get_ref(),
            }
        }
        "postcode_outward" => {
            if !matches!(options.default_region.as_str(), "GB" | "GG" | "JE" | "IM") {
                return Err(ctx.err(r.generalise.span(), "postcode_outward is for UK postcodes: set default_region = \"GB\" or use postcode_prefix"));
            }
            Generalisation::PostcodeOutward
        }
        "day" => Generalisation::Date(DateGrain::Day),
        "week" => Generalisation::Date(DateGrain::Week),
        "month" => Generalisation::Date(DateGrain::Month),
        _ => {
            return Err(ctx.err(
                r.generalise.span(),
                "generalise must be one of none, age_band, postcode_prefix, postcode_outward, day, week, month",
            ));
        }
    })
}

/// One `[[dimension]]`; the output column is added to `outputs`.
fn dimension(
    ctx: &Ctx<'_>,
    r: &RawColumn,
    outputs: &mut Vec<(String, Range<usize>)>,
) -> Result<DimensionSpec, IdentityError> {
    let column = non_empty(ctx, &r.column, "column")?;
    let output = ctx.output_name(&r.column, r.name.as_ref(), "")?;
    let ty = match &r.ty {
        None => ColumnType::String,
        Some(t) => match t.get_ref().trim().to_ascii_lowercase().as_str() {
            "string" | "text" => ColumnType::String,
            "bool" | "boolean" => ColumnType::Bool,
            _ => return Err(ctx.err(t.span(), "a dimension's type is string or bool")),
        },
    };
    outputs.push((output.clone(), name_span(&r.column, r.name.as_ref())));
    Ok(DimensionSpec { column, output, ty })
}

/// One `[[metric]]`; the output column is added to `outputs`.
fn metric(
    ctx: &Ctx<'_>,
    r: &RawMetric,
    outputs: &mut Vec<(String, Range<usize>)>,
) -> Result<MetricSpec, IdentityError> {
    let column = non_empty(ctx, &r.column, "column")?;
    let ty = match r.ty.get_ref().trim().to_ascii_lowercase().as_str() {
        "int64" | "int" | "integer" => ColumnType::Int64,
        "float64" | "float" | "double" => ColumnType::Float64,
        _ => return Err(ctx.err(r.ty.span(), "a metric's type is int64 or float64")),
    };
    let output = ctx.output_name(&r.column, r.name.as_ref(), "")?;
    outputs.push((output.clone(), name_span(&r.column, r.name.as_ref())));
    Ok(MetricSpec { column, output, ty })
}

/// The privacy unit: an identifier (by input column or name) or another input column, whose
/// output is then added to `outputs`.
fn privacy_unit(
    ctx: &Ctx<'_>,
    raw: &Spanned<String>,
    identifiers: &[IdentifierSpec],
    outputs: &mut Vec<(String, Range<usize>)>,
) -> Result<PrivacyUnit, IdentityError> {
    let unit_name = non_empty(ctx, raw, "privacy_unit")?;
    Ok(
        match identifiers
            .iter()
            .position(|id| id.column == unit_name || id.output == format!("{unit_name}_hmac"))
        {
            Some(i) => PrivacyUnit::Identifier(i),
            None => {
                let output = ctx.output_name(raw, None, "")?;
                outputs.push((output.clone(), raw.span()));
                PrivacyUnit::Column {
                    column: unit_name,
                    output,
                }
            }
        },
    )
}

/// Output names are unique (case-insensitively, as the server's schemas are) and not too many.
fn check_outputs(
    ctx: &Ctx<'_>,
    identifiers: &[IdentifierSpec],
    outputs: &[(String, Range<usize>)],
) -> Result<(), IdentityError> {
    let mut seen = HashSet::new();
    for id in identifiers {
        for (_, col) in &id.activation {
            seen.insert(col.to_ascii_lowercase());
        }
    }
    for (name, span) in outputs {
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(ctx.err(
                span.clone(),
                format!("output column {name} would be written twice"),
            ));
        }
    }
    if outputs.len() > MAX_COLUMNS {
        return Err(IdentityError::config(format!(
            "at most {MAX_COLUMNS} output columns"
        )));
    }
    Ok(())
}

/// The `[[transform]]` list, checked against the configured output columns.
fn transforms(
    raw: &[crate::transform::parse::RawTransform],
    quasi: &[QuasiSpec],
    dimensions: &[DimensionSpec],
    metrics: &[MetricSpec],
    default_k: u64,
) -> Result<Transforms, crate::transform::parse::SpanError> {
    use crate::transform::parse::{ColumnInfo, Role};
    let columns: Vec<ColumnInfo> = quasi
        .iter()
        .map(|q| ColumnInfo {
            input: q.column.clone(),
            output: q.output.clone(),
            role: Role::Quasi,
            ty: q.generalisation.output_type(),
        })
        .chain(dimensions.iter().map(|d| ColumnInfo {
            input: d.column.clone(),
            output: d.output.clone(),
            role: Role::Dimension,
            ty: d.ty,
        }))
        .chain(metrics.iter().map(|m| ColumnInfo {
            input: m.column.clone(),
            output: m.output.clone(),
            role: Role::Metric,
            ty: m.ty,
        }))
        .collect();
    crate::transform::parse::transforms(raw, &columns, default_k)
}

fn name_span(column: &Spanned<String>, name: Option<&Spanned<String>>) -> Range<usize> {
    name.map_or(column.span(), Spanned::span)
}

fn share(ctx: &Ctx<'_>, v: Option<&Spanned<f64>>) -> Result<Option<f64>, IdentityError> {
    match v {
        None => Ok(None),
        Some(s) => {
            let x = *s.get_ref();
            if !(0.0..=1.0).contains(&x) {
                return Err(ctx.err(s.span(), "a share is between 0 and 1 (0.01 = 1 %)"));
            }
            Ok(Some(x))
        }
    }
}

fn risk_limits(
    ctx: &Ctx<'_>,
    r: &RawRisk,
    quasi: &[QuasiSpec],
    dimensions: &[DimensionSpec],
) -> Result<RiskLimits, IdentityError> {
    let mut limits = RiskLimits::default();
    if let Some(k) = &r.k {
        if *k.get_ref() < 2 {
            return Err(ctx.err(k.span(), "k must be at least 2"));
        }
        limits.k = *k.get_ref();
    }
    if let Some(m) = &r.min_k {
        if *m.get_ref() < 2 {
            return Err(ctx.err(m.span(), "min_k must be at least 2"));
        }
        limits.min_k = Some(*m.get_ref());
    }
    limits.max_unique_share = share(ctx, r.max_unique_share.as_ref())?;
    limits.max_below_k_share = share(ctx, r.max_below_k_share.as_ref())?;
    if let Some(s) = &r.sensitive {
        let name = s.get_ref().trim();
        if quasi.iter().any(|q| q.column == name || q.output == name) {
            return Err(ctx.err(
                s.span(),
                "the sensitive column cannot be a quasi-identifier (it would be part of every class)",
            ));
        }
        let Some(d) = dimensions
            .iter()
            .find(|d| d.column == name || d.output == name)
        else {
            return Err(ctx.err(s.span(), "sensitive must name a [[dimension]] column"));
        };
        limits.sensitive = Some(d.output.clone());
    }
    if let Some(l) = &r.min_l {
        if limits.sensitive.is_none() {
            return Err(ctx.err(l.span(), "min_l needs sensitive = \"<a dimension column>\""));
        }
        if *l.get_ref() < 1 || *l.get_ref() > L_CAP {
            return Err(ctx.err(l.span(), format!("min_l must be 1 to {L_CAP}")));
        }
        limits.min_l = Some(*l.get_ref());
    }
    if let Some(a) = &r.action {
        limits.action = match a.get_ref().trim() {
            "warn" => RiskAction::Warn,
            "refuse" => RiskAction::Refuse,
            _ => return Err(ctx.err(a.span(), "action must be \"warn\" or \"refuse\"")),
        };
    }
    if quasi.is_empty()
        && (limits.min_k.is_some()
            || limits.max_unique_share.is_some()
            || limits.max_below_k_share.is_some()
            || limits.min_l.is_some())
    {
        return Err(IdentityError::config(
            "risk limits need at least one [[quasi_identifier]] to assess",
        ));
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
collaboration = "spring"
default_region = "gb"
gmail_rules = true
privacy_unit = "email"

[[identifier]]
column = "email"
kind = "email"
sha256 = ["google", "meta"]

[[identifier]]
column = "Phone Number"
name = "phone"
kind = "phone"
priority = 2
"#;

    fn err(src: &str) -> (Option<usize>, Option<usize>, String) {
        match PrepareConfig::from_toml(src).unwrap_err() {
            IdentityError::Config {
                line,
                column,
                message,
            } => (line, column, message),
            other => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn the_example_parses() {
        let c = PrepareConfig::from_toml(EXAMPLE_CONFIG).unwrap();
        assert_eq!(c.collaboration(), "spring-campaign");
        assert!(!c.identifiers().is_empty());
        assert!(c.has_activation());
    }

    #[test]
    fn errors_point_at_the_line() {
        let (line, col, msg) = err(&GOOD.replace("priority = 2", "priority = 0"));
        assert_eq!((line, col), (Some(16), Some(12)), "{msg}");
        assert!(msg.contains("priority starts at 1"), "{msg}");

        let (line, _, msg) = err(&GOOD.replace("kind = \"phone\"", "kind = \"fax\""));
        assert_eq!(line, Some(15));
        assert!(msg.contains("unknown identifier kind"), "{msg}");

        let (line, _, msg) = err(&GOOD.replace("gmail_rules", "gmail_rulez"));
        assert_eq!(line, Some(4));
        assert!(msg.contains("gmail_rulez"), "{msg}");

        let (line, _, msg) = err(&GOOD.replace("\"meta\"", "\"myspace\""));
        assert_eq!(line, Some(10));
        assert!(msg.contains("unknown activation destination"), "{msg}");

        let (line, _, msg) = err(&GOOD.replace("name = \"phone\"\n", ""));
        assert_eq!(line, Some(13));
        assert!(msg.contains("name = "), "{msg}");

        let (line, _, _) = err(&GOOD.replace("\"gb\"", "\"UK\""));
        assert_eq!(line, Some(3));

        let (line, _, msg) =
            err("collaboration = \"x\"\ndefault_region = \"GB\"\nprivacy_unit = [1]\n");
        assert_eq!(line, Some(3), "{msg}");
    }

    #[test]
    fn identifiers_come_in_priority_order() {
        let c =
            PrepareConfig::from_toml(&GOOD.replace("priority = 2", "priority = 1\n")).unwrap_err();
        assert!(c.to_string().contains("priority 1 is given to two"), "{c}");
        let c = PrepareConfig::from_toml(GOOD).unwrap();
        let ids = c.identifiers();
        assert_eq!(ids[0].column, "email");
        assert_eq!(ids[1].kind, IdKind::Phone);
        let swapped = GOOD
            .replace("priority = 2", "priority = 1")
            .replace("sha256 = [", "priority = 2\nsha256 = [");
        let c = PrepareConfig::from_toml(&swapped).unwrap();
        assert_eq!(c.identifiers()[0].column, "Phone Number");
        assert_eq!(c.pseudonym_column("Phone Number"), Some("phone_hmac"));
        assert_eq!(c.privacy_unit_output(), "email_hmac");
        assert_eq!(c.identifier_specs()[0].activation[1].1, "email_sha256_meta");
    }

    #[test]
    fn output_names_must_be_unique_and_sensitive_must_be_a_dimension() {
        let base = GOOD;
        let dup = format!("{base}\n[[dimension]]\ncolumn = \"x\"\nname = \"email_hmac\"\n");
        assert!(err(&dup).2.contains("written twice"));
        let sens = format!(
            "{base}\n[[quasi_identifier]]\ncolumn = \"age\"\ngeneralise = \"age_band\"\n[risk]\nsensitive = \"age\"\n"
        );
        assert!(err(&sens).2.contains("cannot be a quasi-identifier"));
        let l = format!(
            "{base}\n[[quasi_identifier]]\ncolumn = \"age\"\ngeneralise = \"age_band\"\n[risk]\nmin_l = 2\n"
        );
        assert!(err(&l).2.contains("min_l needs sensitive"));
    }
}
