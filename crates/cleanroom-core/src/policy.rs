//! Analysis policies: the rules a data owner sets for one of its datasets.
//!
//! A policy says which columns may be used how (join keys, dimensions, metrics with their
//! aggregates and value bounds), how many people every output row must stand for, how much one
//! person may contribute, whether results carry differential-privacy noise, and which
//! organisations may analyse the data and receive results. Policies are versioned: setting one
//! creates a new version, and every analysis records the versions it ran under.
//!
//! The privacy *budget* is not part of a dataset's policy: it is the owner's ledger for the whole
//! collaboration (see the service's budget use cases), so analysts cannot escape it by touching
//! another dataset of the same owner.

use std::collections::BTreeSet;
use std::fmt;

use crate::CoreError;
use crate::names::{ColumnName, OrgName};
use crate::schema::{ColumnRole, ColumnType, DatasetSchema};

/// Default minimum number of distinct people of every dataset behind each output row.
pub const DEFAULT_MIN_GROUP_SIZE: u32 = 50;
/// Largest contribution bound an owner may set (rows per person, rows per key).
pub const MAX_CONTRIBUTION_BOUND: u32 = 1000;
/// Largest magnitude of a metric bound in fixed-point units (`|bound| × 10^precision`): keeps
/// every sum of clamped values far inside 64 bits, so no sum can overflow whatever the data.
pub const MAX_FIXED_POINT_BOUND: f64 = 1e9;
/// Most decimal digits a metric keeps.
pub const MAX_PRECISION: u8 = 6;
/// Default minimum number of distinct people of the source dataset behind an activated segment.
pub const DEFAULT_MIN_SEGMENT_SIZE: u32 = 1000;
/// Largest minimum segment size an owner may set.
pub const MAX_MIN_SEGMENT_SIZE: u32 = 100_000_000;

/// An aggregate function a metric may be used with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Aggregate {
    Count,
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
}

impl Aggregate {
    /// Allowed when a metric rule names none.
    pub const DEFAULT: [Aggregate; 4] = [
        Aggregate::Count,
        Aggregate::CountDistinct,
        Aggregate::Sum,
        Aggregate::Avg,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::CountDistinct => "count_distinct",
            Aggregate::Sum => "sum",
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
        }
    }

    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s
            .trim()
            .to_ascii_lowercase()
            .replace([' ', '-'], "_")
            .as_str()
        {
            "count" => Ok(Aggregate::Count),
            "count_distinct" => Ok(Aggregate::CountDistinct),
            "sum" => Ok(Aggregate::Sum),
            "avg" | "mean" => Ok(Aggregate::Avg),
            "min" => Ok(Aggregate::Min),
            "max" => Ok(Aggregate::Max),
            other => Err(CoreError::invalid(
                "aggregate",
                format!("{other:?} is not one of count, count_distinct, sum, avg, min, max"),
            )),
        }
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a metric column may be aggregated, and the bounds its values are clamped to.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRule {
    pub column: ColumnName,
    pub aggregates: BTreeSet<Aggregate>,
    /// Values below are raised to `lower` before aggregating.
    pub lower: f64,
    /// Values above are lowered to `upper` before aggregating.
    pub upper: f64,
    /// Decimal digits kept: sums are computed on integers of `value × 10^precision`.
    pub precision: u8,
}

impl MetricRule {
    /// `10^precision`.
    pub fn scale(&self) -> i64 {
        10i64.pow(u32::from(self.precision))
    }
    /// The bounds in fixed-point units, rounded outwards.
    pub fn fixed_point_bounds(&self) -> (i64, i64) {
        let s = self.scale() as f64;
        (
            (self.lower * s).floor() as i64,
            (self.upper * s).ceil() as i64,
        )
    }
}

/// The owner's list rule: which partners may receive a matched segment of this dataset as
/// their own record identifiers (an "activation"), how large it must be, and which dimensions
/// may narrow it. Each activation still needs the owner's approval and is delivered once.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationRule {
    /// Organisations (never the owner itself) that may ask for segments.
    pub partners: Vec<OrgName>,
    /// A segment must stand for at least this many distinct people of this dataset (its
    /// privacy unit); at least the policy's `min_group_size`.
    pub min_segment_size: u32,
    /// Dimensions of the policy a segment may be filtered by (each with one value).
    pub dimensions: Vec<ColumnName>,
}

impl ActivationRule {
    pub fn allows_partner(&self, org: &OrgName) -> bool {
        self.partners.contains(org)
    }

    pub fn allows_dimension(&self, column: &str) -> bool {
        self.dimensions.iter().any(|c| c.as_str() == column)
    }
}

/// The activation rule as written by its owner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActivationDraft {
    pub partners: Vec<String>,
    /// None: [`DEFAULT_MIN_SEGMENT_SIZE`] (or the policy's `min_group_size` if larger).
    pub min_segment_size: Option<u32>,
    pub dimensions: Vec<String>,
}

/// A validated analysis policy for one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisPolicy {
    /// Identifier columns usable only in equality joins (and counted), never output.
    pub join_keys: Vec<ColumnName>,
    /// Columns that may be grouped and filtered on.
    pub dimensions: Vec<ColumnName>,
    pub metrics: Vec<MetricRule>,
    /// Every output row must stand for at least this many distinct people of this dataset.
    pub min_group_size: u32,
    /// Rows one person may contribute; extra rows are dropped at random before aggregating.
    pub max_rows_per_unit: u32,
    /// Rows kept per join-key value; bounds how many rows one row can join with.
    pub max_rows_per_key: u32,
    /// Results touching this dataset carry calibrated noise and are charged to the owner's
    /// privacy budget (on by default; off leaves only the thresholds).
    pub differential_privacy: bool,
    /// Whether the analysts may send their own SQL (otherwise only approved templates run).
    pub allow_sql: bool,
    /// Organisations (besides the owner) that may run analyses touching this dataset.
    pub analysts: Vec<OrgName>,
    /// Organisations (besides the owner) that may receive results touching this dataset.
    pub receivers: Vec<OrgName>,
    /// Who may receive matched segments as their own identifiers (none without a rule).
    pub activation: Option<ActivationRule>,
}

/// A metric rule as written by its owner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricDraft {
    pub column: String,
    /// Empty: the defaults (count, count_distinct, sum, avg).
    pub aggregates: Vec<String>,
    pub lower: f64,
    pub upper: f64,
    /// None: 0 for integer columns, 2 for floats.
    pub precision: Option<u8>,
}

/// The policy as written by its owner, before validation against the dataset's schema.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyDraft {
    pub join_keys: Vec<String>,
    pub dimensions: Vec<String>,
    pub metrics: Vec<MetricDraft>,
    pub min_group_size: Option<u32>,
    pub max_rows_per_unit: Option<u32>,
    pub max_rows_per_key: Option<u32>,
    pub differential_privacy: Option<bool>,
    pub allow_sql: Option<bool>,
    pub analysts: Vec<String>,
    pub receivers: Vec<String>,
    pub activation: Option<ActivationDraft>,
}

fn column_with_role(
    schema: &DatasetSchema,
    name: &str,
    want: ColumnRole,
    what: &'static str,
) -> Result<(ColumnName, ColumnType), CoreError> {
    let col = schema
        .column(name)
        .ok_or_else(|| CoreError::invalid(what, format!("the dataset has no column {name:?}")))?;
    if col.role != want {
        return Err(CoreError::invalid(
            what,
            format!(
                "column {name} has role {} in the schema; only {} columns can be {what}s",
                col.role, want
            ),
        ));
    }
    Ok((col.name.clone(), col.ty))
}

fn unique<T: Ord + Clone + fmt::Display>(what: &'static str, v: &[T]) -> Result<(), CoreError> {
    let mut seen = BTreeSet::new();
    for x in v {
        if !seen.insert(x.clone()) {
            return Err(CoreError::invalid(what, format!("{x} is listed twice")));
        }
    }
    Ok(())
}

fn bound(what: &'static str, v: Option<u32>, default: u32) -> Result<u32, CoreError> {
    let v = v.unwrap_or(default);
    if v == 0 || v > MAX_CONTRIBUTION_BOUND {
        return Err(CoreError::invalid(
            "policy",
            format!("{what} must be between 1 and {MAX_CONTRIBUTION_BOUND}"),
        ));
    }
    Ok(v)
}

impl AnalysisPolicy {
    /// Validates a draft against the dataset's schema. Join keys must be identifier columns,
    /// dimensions dimension columns, metrics metric columns with finite bounds `lower ≤ upper`
    /// whose fixed-point magnitude stays within [`MAX_FIXED_POINT_BOUND`]; the minimum group
    /// size is at least 2; contribution bounds are between 1 and [`MAX_CONTRIBUTION_BOUND`].
    pub fn validate(draft: &PolicyDraft, schema: &DatasetSchema) -> Result<Self, CoreError> {
        let join_keys = draft
            .join_keys
            .iter()
            .map(|c| column_with_role(schema, c, ColumnRole::Identifier, "join key").map(|x| x.0))
            .collect::<Result<Vec<_>, _>>()?;
        unique("join key", &join_keys)?;
        let dimensions = draft
            .dimensions
            .iter()
            .map(|c| column_with_role(schema, c, ColumnRole::Dimension, "dimension").map(|x| x.0))
            .collect::<Result<Vec<_>, _>>()?;
        unique("dimension", &dimensions)?;
        let mut metrics = Vec::new();
        for m in &draft.metrics {
            let (column, ty) = column_with_role(schema, &m.column, ColumnRole::Metric, "metric")?;
            if !matches!(ty, ColumnType::Int64 | ColumnType::Float64) {
                return Err(CoreError::invalid(
                    "metric",
                    format!("{column}: only int64 and float64 columns can be metrics"),
                ));
            }
            if !(m.lower.is_finite() && m.upper.is_finite() && m.lower <= m.upper) {
                return Err(CoreError::invalid(
                    "metric",
                    format!("{column}: bounds must be finite with lower ≤ upper"),
                ));
            }
            let precision = m.precision.unwrap_or(match ty {
                ColumnType::Float64 => 2,
                _ => 0,
            });
            if precision > MAX_PRECISION {
                return Err(CoreError::invalid(
                    "metric",
                    format!("{column}: precision is at most {MAX_PRECISION} decimal digits"),
                ));
            }
            let scale = 10f64.powi(i32::from(precision));
            if m.lower.abs() * scale > MAX_FIXED_POINT_BOUND
                || m.upper.abs() * scale > MAX_FIXED_POINT_BOUND
            {
                return Err(CoreError::invalid(
                    "metric",
                    format!(
                        "{column}: |bound| × 10^precision must be at most {MAX_FIXED_POINT_BOUND:e} \
                         (narrow the bounds or keep fewer decimal digits)"
                    ),
                ));
            }
            let aggregates: BTreeSet<Aggregate> = if m.aggregates.is_empty() {
                Aggregate::DEFAULT.into_iter().collect()
            } else {
                m.aggregates
                    .iter()
                    .map(|a| Aggregate::parse(a))
                    .collect::<Result<_, _>>()?
            };
            metrics.push(MetricRule {
                column,
                aggregates,
                lower: m.lower,
                upper: m.upper,
                precision,
            });
        }
        unique(
            "metric",
            &metrics.iter().map(|m| m.column.clone()).collect::<Vec<_>>(),
        )?;
        let min_group_size = draft.min_group_size.unwrap_or(DEFAULT_MIN_GROUP_SIZE);
        if !(2..=1_000_000).contains(&min_group_size) {
            return Err(CoreError::invalid(
                "policy",
                "min_group_size must be between 2 and 1000000",
            ));
        }
        let max_rows_per_unit = bound("max_rows_per_unit", draft.max_rows_per_unit, 1)?;
        let max_rows_per_key = bound("max_rows_per_key", draft.max_rows_per_key, 1)?;
        let orgs = |v: &[String]| -> Result<Vec<OrgName>, CoreError> {
            v.iter().map(|o| OrgName::parse(o)).collect()
        };
        let analysts = orgs(&draft.analysts)?;
        let receivers = orgs(&draft.receivers)?;
        unique("analyst", &analysts)?;
        unique("receiver", &receivers)?;
        let activation = draft
            .activation
            .as_ref()
            .map(|a| validate_activation(a, &dimensions, min_group_size))
            .transpose()?;
        Ok(AnalysisPolicy {
            join_keys,
            dimensions,
            metrics,
            min_group_size,
            max_rows_per_unit,
            max_rows_per_key,
            differential_privacy: draft.differential_privacy.unwrap_or(true),
            allow_sql: draft.allow_sql.unwrap_or(true),
            analysts,
            receivers,
            activation,
        })
    }

    /// The rule of a metric column, if it is one.
    pub fn metric(&self, column: &str) -> Option<&MetricRule> {
        self.metrics.iter().find(|m| m.column.as_str() == column)
    }

    pub fn is_join_key(&self, column: &str) -> bool {
        self.join_keys.iter().any(|c| c.as_str() == column)
    }

    pub fn is_dimension(&self, column: &str) -> bool {
        self.dimensions.iter().any(|c| c.as_str() == column)
    }

    /// May `org` run analyses on this dataset? (`owner` is the dataset's owner.)
    pub fn allows_analyst(&self, org: &OrgName, owner: &OrgName) -> bool {
        org == owner || self.analysts.contains(org)
    }

    /// May `org` receive results touching this dataset?
    pub fn allows_receiver(&self, org: &OrgName, owner: &OrgName) -> bool {
        org == owner || self.receivers.contains(org)
    }

    /// Back to a draft (for storage and display).
    pub fn to_draft(&self) -> PolicyDraft {
        PolicyDraft {
            join_keys: self.join_keys.iter().map(|c| c.to_string()).collect(),
            dimensions: self.dimensions.iter().map(|c| c.to_string()).collect(),
            metrics: self
                .metrics
                .iter()
                .map(|m| MetricDraft {
                    column: m.column.to_string(),
                    aggregates: m.aggregates.iter().map(|a| a.as_str().to_owned()).collect(),
                    lower: m.lower,
                    upper: m.upper,
                    precision: Some(m.precision),
                })
                .collect(),
            min_group_size: Some(self.min_group_size),
            max_rows_per_unit: Some(self.max_rows_per_unit),
            max_rows_per_key: Some(self.max_rows_per_key),
            differential_privacy: Some(self.differential_privacy),
            allow_sql: Some(self.allow_sql),
            analysts: self.analysts.iter().map(|o| o.to_string()).collect(),
            receivers: self.receivers.iter().map(|o| o.to_string()).collect(),
            activation: self.activation.as_ref().map(|a| ActivationDraft {
                partners: a.partners.iter().map(|o| o.to_string()).collect(),
                min_segment_size: Some(a.min_segment_size),
                dimensions: a.dimensions.iter().map(|c| c.to_string()).collect(),
            }),
        }
    }
}

/// Partners must be named, at least one; the minimum segment size is at least the policy's
/// minimum group size; dimensions must be dimensions of the policy. Whether a partner is a
/// member with the receive ability is checked when it asks (membership changes over time).
fn validate_activation(
    a: &ActivationDraft,
    policy_dimensions: &[ColumnName],
    min_group_size: u32,
) -> Result<ActivationRule, CoreError> {
    let partners = a
        .partners
        .iter()
        .map(|o| OrgName::parse(o))
        .collect::<Result<Vec<_>, _>>()?;
    if partners.is_empty() {
        return Err(CoreError::invalid(
            "activation",
            "name at least one partner (or leave the activation rule out)",
        ));
    }
    unique("activation partner", &partners)?;
    let min_segment_size = a
        .min_segment_size
        .unwrap_or(DEFAULT_MIN_SEGMENT_SIZE.max(min_group_size));
    if min_segment_size < min_group_size || min_segment_size > MAX_MIN_SEGMENT_SIZE {
        return Err(CoreError::invalid(
            "activation",
            format!(
                "min_segment_size must be between the policy's min_group_size ({min_group_size}) and {MAX_MIN_SEGMENT_SIZE}"
            ),
        ));
    }
    let dimensions = a
        .dimensions
        .iter()
        .map(|d| {
            policy_dimensions
                .iter()
                .find(|c| c.as_str() == d)
                .cloned()
                .ok_or_else(|| {
                    CoreError::invalid(
                        "activation",
                        format!("{d:?} is not a dimension of this policy"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    unique("activation dimension", &dimensions)?;
    Ok(ActivationRule {
        partners,
        min_segment_size,
        dimensions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnSpec;

    fn schema() -> DatasetSchema {
        DatasetSchema::new(
            [
                "pid:string:privacy_unit",
                "email_hmac:string:identifier",
                "region:string:dimension",
                "purchases:int64:metric",
                "revenue:float64:metric",
            ]
            .iter()
            .map(|s| ColumnSpec::parse_compact(s).unwrap())
            .collect(),
        )
        .unwrap()
    }

    fn metric(col: &str, lower: f64, upper: f64) -> MetricDraft {
        MetricDraft {
            column: col.into(),
            lower,
            upper,
            ..Default::default()
        }
    }

    fn draft() -> PolicyDraft {
        PolicyDraft {
            join_keys: vec!["email_hmac".into()],
            dimensions: vec!["region".into()],
            metrics: vec![
                metric("purchases", 0.0, 20.0),
                metric("revenue", 0.0, 500.0),
            ],
            analysts: vec!["publisher".into()],
            receivers: vec!["brand".into(), "publisher".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_good_policy_gets_defaults_and_round_trips() {
        let p = AnalysisPolicy::validate(&draft(), &schema()).unwrap();
        assert_eq!(p.min_group_size, 50);
        assert_eq!((p.max_rows_per_unit, p.max_rows_per_key), (1, 1));
        assert!(p.differential_privacy && p.allow_sql);
        let purchases = p.metric("purchases").unwrap();
        assert!(purchases.aggregates.contains(&Aggregate::Sum));
        assert!(!purchases.aggregates.contains(&Aggregate::Max));
        assert_eq!(purchases.precision, 0);
        let revenue = p.metric("revenue").unwrap();
        assert_eq!(revenue.precision, 2);
        assert_eq!(revenue.fixed_point_bounds(), (0, 50_000));
        assert_eq!(
            AnalysisPolicy::validate(&p.to_draft(), &schema()).unwrap(),
            p
        );
        let owner = OrgName::parse("brand").unwrap();
        assert!(p.allows_analyst(&owner, &owner));
        assert!(p.allows_analyst(&OrgName::parse("publisher").unwrap(), &owner));
        assert!(!p.allows_analyst(&OrgName::parse("stranger").unwrap(), &owner));
    }

    #[test]
    fn roles_bounds_and_limits_are_checked() {
        let bad = |f: &dyn Fn(&mut PolicyDraft)| {
            let mut d = draft();
            f(&mut d);
            AnalysisPolicy::validate(&d, &schema())
                .unwrap_err()
                .to_string()
        };
        assert!(bad(&|d| d.join_keys = vec!["region".into()]).contains("only identifier columns"));
        assert!(bad(&|d| d.join_keys = vec!["pid".into()]).contains("role privacy_unit"));
        assert!(bad(&|d| d.dimensions = vec!["email_hmac".into()]).contains("only dimension"));
        assert!(bad(&|d| d.dimensions = vec!["nope".into()]).contains("no column"));
        assert!(
            bad(&|d| d.metrics = vec![metric("purchases", 5.0, 1.0)]).contains("lower ≤ upper")
        );
        assert!(
            bad(&|d| d.metrics = vec![metric("purchases", 0.0, f64::INFINITY)]).contains("finite")
        );
        assert!(bad(&|d| d.metrics = vec![metric("purchases", 0.0, 1e10)]).contains("at most"));
        assert!(
            bad(&|d| d.metrics = vec![MetricDraft {
                aggregates: vec!["median".into()],
                ..metric("purchases", 0.0, 1.0)
            }])
            .contains("median")
        );
        assert!(bad(&|d| d.min_group_size = Some(1)).contains("between 2"));
        assert!(bad(&|d| d.max_rows_per_unit = Some(0)).contains("between 1"));
        assert!(bad(&|d| d.max_rows_per_key = Some(5000)).contains("between 1"));
        assert!(bad(&|d| d.receivers = vec!["../x".into()]).contains("organisation name"));
        assert!(bad(&|d| d.dimensions = vec!["region".into(), "region".into()]).contains("twice"));
    }

    #[test]
    fn activation_rules_are_checked_against_the_policy() {
        let with = |a: ActivationDraft| {
            AnalysisPolicy::validate(
                &PolicyDraft {
                    activation: Some(a),
                    ..draft()
                },
                &schema(),
            )
        };
        let ok = with(ActivationDraft {
            partners: vec!["publisher".into()],
            dimensions: vec!["region".into()],
            ..Default::default()
        })
        .unwrap();
        let rule = ok.activation.clone().unwrap();
        assert_eq!(rule.min_segment_size, DEFAULT_MIN_SEGMENT_SIZE);
        assert!(rule.allows_partner(&OrgName::parse("publisher").unwrap()));
        assert!(rule.allows_dimension("region") && !rule.allows_dimension("purchases"));
        assert_eq!(
            AnalysisPolicy::validate(&ok.to_draft(), &schema()).unwrap(),
            ok
        );
        let err = |a: ActivationDraft| with(a).unwrap_err().to_string();
        assert!(err(ActivationDraft::default()).contains("at least one partner"));
        assert!(
            err(ActivationDraft {
                partners: vec!["publisher".into()],
                min_segment_size: Some(10),
                ..Default::default()
            })
            .contains("min_group_size (50)")
        );
        assert!(
            err(ActivationDraft {
                partners: vec!["publisher".into()],
                dimensions: vec!["purchases".into()],
                ..Default::default()
            })
            .contains("not a dimension")
        );
        assert!(
            err(ActivationDraft {
                partners: vec!["publisher".into(), "publisher".into()],
                ..Default::default()
            })
            .contains("twice")
        );
        // Without a rule, nobody may activate.
        assert!(
            AnalysisPolicy::validate(&draft(), &schema())
                .unwrap()
                .activation
                .is_none()
        );
    }
}
