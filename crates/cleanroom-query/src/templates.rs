//! Ready-made analyses: parameterised queries that data owners approve once per version.
//!
//! Each template builds ordinary SQL from its parameters (identifiers validated, never
//! pasted), and that SQL goes through the same checker, calibration, bounding and release as an
//! analyst's own query. The query's epsilon and delta are split evenly between a template's
//! parts. Derived figures (match rates, conversion rates, lift, averages) are computed from the
//! released values only.
//!
//! | template | what it answers |
//! |---|---|
//! | `overlap` v1 | how many of `left`'s people are also in `right`, by a dimension, and the match rate |
//! | `reach` v1 | people reached and impressions, and how many people saw an ad 1, 2, … times |
//! | `lift` v1 | conversion rates of exposed and unexposed people and the lift between them |
//! | `benchmark` v1 | each party's own figure against the peers' aggregate, with enough peers |
//! | `overlap_ids` v1 | overlap matched on several identifiers in priority order (a cascade), per identifier and in total |

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cleanroom_core::names::{ColumnName, OrgName};
use cleanroom_core::schema::ColumnRole;
use cleanroom_privacy::budget::{Epsilon, PrivacyCost};
use cleanroom_privacy::noise::IntegerNoise;
use cleanroom_privacy::partition::{GroupSelection, SelectionBounds};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::Expr;
use sha2::{Digest, Sha256};

use crate::cascade::Cascade;
use crate::catalog::Catalog;
use crate::check::{CheckOptions, check_with};
use crate::release::{Cell, ColumnKind, Released, ReleasedColumn};
use crate::rewrite::{ExactValue, RunOptions, execute};
use crate::spec::{
    FREQUENCY_COLUMN, Frequency, GroupKey, Measure, OutputColumn, Source, qualifier,
};
use crate::{Analysis, PrivacyRequest, QueryError, prepare_spec};

/// A parameter of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamInfo {
    pub name: &'static str,
    pub required: bool,
    pub help: &'static str,
}

/// A template and its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateInfo {
    pub name: &'static str,
    pub version: u32,
    pub title: &'static str,
    pub description: &'static str,
    pub params: &'static [ParamInfo],
}

const fn p(name: &'static str, required: bool, help: &'static str) -> ParamInfo {
    ParamInfo {
        name,
        required,
        help,
    }
}

const TEMPLATES: &[TemplateInfo] = &[
    TemplateInfo {
        name: "overlap",
        version: 1,
        title: "Audience overlap",
        description: "How many people of `left` are also in `right` (matched on a join key), optionally by a dimension, with `left`'s audience size and the match rate.",
        params: &[
            p("left", true, "the dataset whose people are counted"),
            p("right", true, "the dataset matched against"),
            p(
                "key",
                true,
                "join key: `column` (same name on both sides) or `left_column:right_column`",
            ),
            p(
                "by",
                false,
                "a dimension to break down by: `column` of left, or `right.column`",
            ),
        ],
    },
    TemplateInfo {
        name: "overlap_ids",
        version: 1,
        title: "Audience overlap on several identifiers",
        description: "How many people of `left` are in `right`, matched on a priority cascade of identifiers (a person matched by a higher-priority one is not counted again): per identifier type and in total, optionally by a dimension of `left`, with `left`'s audience size and the match rates.",
        params: &[
            p("left", true, "the dataset whose people are counted"),
            p("right", true, "the dataset matched against"),
            p(
                "keys",
                true,
                "comma-separated join keys in priority order (1 to 5), each `column` or `left_column:right_column`",
            ),
            p("by", false, "a dimension of left to break down by"),
        ],
    },
    TemplateInfo {
        name: "reach",
        version: 1,
        title: "Reach and frequency",
        description: "People reached and impressions in an exposure log (one row per impression), optionally by a dimension and restricted to people matched in an audience dataset, and the distribution of impressions per person.",
        params: &[
            p(
                "exposures",
                true,
                "the exposure log (one row per impression)",
            ),
            p(
                "by",
                false,
                "a dimension of the exposure log to break reach down by",
            ),
            p(
                "max_frequency",
                false,
                "frequencies above this are grouped (default: the log's max_rows_per_unit, at most 20)",
            ),
            p(
                "audience",
                false,
                "a dataset to restrict reach to (matched people only)",
            ),
            p(
                "key",
                false,
                "join key with the audience: `column` or `exposures_column:audience_column`",
            ),
        ],
    },
    TemplateInfo {
        name: "lift",
        version: 1,
        title: "Conversion lift",
        description: "Conversion rates of exposed and unexposed people and the relative lift between them: people from the exposure dataset, conversions (a metric above zero) from the outcome dataset.",
        params: &[
            p(
                "exposure",
                true,
                "the dataset saying who was exposed (one row per person)",
            ),
            p("exposed", true, "its boolean dimension: exposed or not"),
            p("outcome", true, "the dataset with conversions"),
            p(
                "conversion",
                true,
                "its metric: a person converted when it is above zero",
            ),
            p(
                "key",
                true,
                "join key: `column` or `exposure_column:outcome_column`",
            ),
        ],
    },
    TemplateInfo {
        name: "benchmark",
        version: 1,
        title: "N-party benchmark",
        description: "Each party's own average of a metric against the average of its peers, optionally by a dimension; a group is shown only when enough parties contribute to it.",
        params: &[
            p(
                "datasets",
                true,
                "comma-separated datasets, one per party, each with the metric",
            ),
            p(
                "metric",
                true,
                "the metric column (same name in every dataset)",
            ),
            p("by", false, "a dimension present in every dataset"),
            p(
                "min_parties",
                false,
                "parties that must contribute to a group for it to be shown (default and minimum 3)",
            ),
        ],
    },
];

/// Every template.
pub fn all() -> Vec<TemplateInfo> {
    TEMPLATES.to_vec()
}

/// A template by name, at `version` (default: the latest).
pub fn find(name: &str, version: Option<u32>) -> Result<TemplateInfo, QueryError> {
    let candidates: Vec<&TemplateInfo> = TEMPLATES.iter().filter(|t| t.name == name).collect();
    if candidates.is_empty() {
        return Err(QueryError::Invalid(format!(
            "no template named {name:?}; available: {}",
            TEMPLATES
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    match version {
        None => Ok(**candidates
            .iter()
            .max_by_key(|t| t.version)
            .expect("non-empty")),
        Some(v) => candidates
            .into_iter()
            .find(|t| t.version == v)
            .copied()
            .ok_or_else(|| QueryError::Invalid(format!("template {name} has no version {v}"))),
    }
}

struct Params<'a> {
    info: &'a TemplateInfo,
    values: &'a BTreeMap<String, String>,
}

impl<'a> Params<'a> {
    fn new(
        info: &'a TemplateInfo,
        values: &'a BTreeMap<String, String>,
    ) -> Result<Self, QueryError> {
        for k in values.keys() {
            if !info.params.iter().any(|p| p.name == k) {
                return Err(QueryError::Invalid(format!(
                    "{} has no parameter {k:?}; its parameters: {}",
                    info.name,
                    info.params
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        for p in info.params {
            if p.required && !values.contains_key(p.name) {
                return Err(QueryError::Invalid(format!(
                    "{} needs the parameter {} ({})",
                    info.name, p.name, p.help
                )));
            }
        }
        Ok(Params { info, values })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    fn required(&self, name: &str) -> Result<&str, QueryError> {
        self.get(name).ok_or_else(|| {
            QueryError::Invalid(format!("{} needs the parameter {name}", self.info.name))
        })
    }

    fn dataset(&self, name: &str, catalog: &Catalog) -> Result<usize, QueryError> {
        let v = self.required(name)?;
        dataset(v, catalog)
    }
}

fn dataset(v: &str, catalog: &Catalog) -> Result<usize, QueryError> {
    catalog.find(v).ok_or_else(|| {
        QueryError::Invalid(format!(
            "no ready dataset named {v:?} in this collaboration"
        ))
    })
}

fn column(v: &str) -> Result<String, QueryError> {
    ColumnName::parse(v)
        .map(|c| c.to_string())
        .map_err(|e| QueryError::Invalid(e.to_string()))
}

/// `col` or `left:right`.
fn key_pair(v: &str) -> Result<(String, String), QueryError> {
    match v.split_once(':') {
        Some((l, r)) => Ok((column(l.trim())?, column(r.trim())?)),
        None => {
            let c = column(v)?;
            Ok((c.clone(), c))
        }
    }
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The datasets a template run would touch.
pub fn datasets(
    info: &TemplateInfo,
    params: &BTreeMap<String, String>,
    catalog: &Catalog,
) -> Result<BTreeSet<usize>, QueryError> {
    let p = Params::new(info, params)?;
    let mut out = BTreeSet::new();
    match info.name {
        "overlap" | "overlap_ids" => {
            out.insert(p.dataset("left", catalog)?);
            out.insert(p.dataset("right", catalog)?);
        }
        "reach" => {
            out.insert(p.dataset("exposures", catalog)?);
            if p.get("audience").is_some() {
                out.insert(p.dataset("audience", catalog)?);
            }
        }
        "lift" => {
            out.insert(p.dataset("exposure", catalog)?);
            out.insert(p.dataset("outcome", catalog)?);
        }
        "benchmark" => {
            for d in p.required("datasets")?.split(',') {
                out.insert(dataset(d.trim(), catalog)?);
            }
        }
        other => return Err(QueryError::Invalid(format!("unknown template {other}"))),
    }
    Ok(out)
}

/// One part of a plan.
#[derive(Debug, Clone)]
enum Part {
    Query {
        name: String,
        analysis: Box<Analysis>,
    },
    Benchmark(Box<Benchmark>),
    /// The identifier cascade of `overlap_ids`: a released table named `matched`.
    Cascade(Box<Cascade>),
}

/// How the parts' releases become the template's tables.
#[derive(Debug, Clone)]
enum Finish {
    /// One query, its table as is.
    Single,
    Overlap {
        by: bool,
        audience: bool,
    },
    Reach {
        by: bool,
        max: u32,
    },
    Lift,
    Benchmark,
    Cascade {
        by: bool,
        labels: Vec<String>,
    },
}

/// A planned template run (or a single SQL query): checked, calibrated, not yet run.
#[derive(Debug, Clone)]
pub struct TemplatePlan {
    label: String,
    parts: Vec<Part>,
    finish: Finish,
    request: Option<PrivacyRequest>,
}

/// The released tables of a run: (name, table, the one organisation allowed to see it).
#[derive(Debug, Clone, Default)]
pub struct TemplateOutput {
    pub tables: Vec<(String, Released, Option<OrgName>)>,
    pub notes: Vec<String>,
}

impl TemplatePlan {
    /// A plan of one analyst query.
    pub fn single(name: &str, analysis: Analysis) -> Self {
        let request = analysis.calibration.request;
        TemplatePlan {
            label: "sql".into(),
            parts: vec![Part::Query {
                name: name.into(),
                analysis: Box::new(analysis),
            }],
            finish: Finish::Single,
            request,
        }
    }

    /// The privacy parameters of the whole run (`None` when nothing is noisy).
    pub fn request(&self) -> Option<PrivacyRequest> {
        self.request
    }

    /// What the run costs the people of each dataset (catalog index), summed over parts.
    pub fn costs(&self) -> Vec<(usize, PrivacyCost)> {
        let mut out: Vec<(usize, PrivacyCost)> = Vec::new();
        for part in &self.parts {
            match part {
                Part::Query { analysis, .. } => {
                    for (u, c) in analysis.calibration.costs.iter().enumerate() {
                        out.push((analysis.spec.uses[u].table, *c));
                    }
                }
                Part::Benchmark(b) => out.extend(b.costs.iter().copied()),
                Part::Cascade(c) => out.extend(c.costs().iter().copied()),
            }
        }
        out
    }

    /// Identifies the run: two runs with the same fingerprint may share one release.
    pub fn fingerprint(&self, catalog: &Catalog) -> String {
        let mut h = Sha256::new();
        h.update(self.label.as_bytes());
        for part in &self.parts {
            h.update(b"\0part\0");
            match part {
                Part::Query { name, analysis } => {
                    h.update(name.as_bytes());
                    h.update(analysis.fingerprint.as_bytes());
                }
                Part::Benchmark(b) => {
                    h.update(b.describe_for_fingerprint(catalog).as_bytes());
                }
                Part::Cascade(c) => {
                    h.update(c.canonical(catalog).as_bytes());
                }
            }
        }
        hex::encode(h.finalize())
    }

    /// How the run protects the data, in words (for dry runs).
    pub fn describe(&self, catalog: &Catalog) -> Vec<String> {
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Query { name, analysis } => {
                    let c = &analysis.calibration;
                    for (u, use_) in analysis.spec.uses.iter().enumerate() {
                        let t = &catalog.tables[use_.table];
                        out.push(format!(
                            "{name}: {} (owner {}, policy v{}): one person changes at most {} joined row(s); minimum group size {}; {}",
                            t.name,
                            t.owner,
                            t.policy_version,
                            c.rows_changed[u],
                            t.policy.min_group_size,
                            if c.protected[u] {
                                format!(
                                    "differential privacy: costs epsilon {:.6}, delta {:e}",
                                    c.costs[u].epsilon.as_f64(),
                                    c.costs[u].delta.as_f64()
                                )
                            } else {
                                "differential privacy off (thresholds only)".to_owned()
                            }
                        ));
                    }
                    if let Some(sel) = &c.selection {
                        out.push(format!(
                            "{name}: a group is shown only if at least {} people of every dataset are in it and its noisy count reaches {}",
                            sel.min_group_size(),
                            sel.threshold()
                        ));
                    }
                }
                Part::Benchmark(b) => out.push(format!(
                    "benchmark over {} parties; a group needs {} contributing parties",
                    b.parties.len(),
                    b.min_parties
                )),
                Part::Cascade(c) => out.extend(c.describe(catalog)),
            }
        }
        out
    }
}

fn split(request: PrivacyRequest, parts: usize) -> PrivacyRequest {
    PrivacyRequest {
        epsilon: request.epsilon / parts as f64,
        delta: request.delta / parts as f64,
    }
}

async fn query(
    name: &str,
    sql: &str,
    catalog: &Catalog,
    request: PrivacyRequest,
    options: CheckOptions,
) -> Result<Part, QueryError> {
    let spec = check_with(sql, catalog, options).await?;
    Ok(Part::Query {
        name: name.to_owned(),
        analysis: Box::new(prepare_spec(spec, catalog, request)?),
    })
}

/// Checks and calibrates a template run.
pub async fn plan(
    info: &TemplateInfo,
    params: &BTreeMap<String, String>,
    catalog: &Catalog,
    request: PrivacyRequest,
) -> Result<TemplatePlan, QueryError> {
    let p = Params::new(info, params)?;
    let label = format!("{}@{}", info.name, info.version);
    let opts = CheckOptions::default();
    let (parts, finish) = match info.name {
        "overlap" => {
            let l = p.dataset("left", catalog)?;
            let r = p.dataset("right", catalog)?;
            let (kl, kr) = key_pair(p.required("key")?)?;
            let (lt, rt) = (&catalog.tables[l], &catalog.tables[r]);
            let unit = quoted(lt.unit_column());
            let by = match p.get("by") {
                None => None,
                Some(b) => Some(match b.strip_prefix("right.") {
                    Some(c) => ("r", column(c)?),
                    None => ("l", column(b.strip_prefix("left.").unwrap_or(b))?),
                }),
            };
            let (select, group) = match &by {
                Some((side, c)) => (
                    format!("{side}.{} AS {}, ", quoted(c), quoted(c)),
                    format!(" GROUP BY {side}.{}", quoted(c)),
                ),
                None => (String::new(), String::new()),
            };
            let audience = by.as_ref().is_none_or(|(s, _)| *s == "l");
            let n = if audience { 2 } else { 1 };
            let req = split(request, n);
            let mut parts = vec![
                query(
                    "matched",
                    &format!(
                        "SELECT {select}COUNT(DISTINCT l.{unit}) AS matched FROM {} l JOIN {} r ON l.{} = r.{}{group}",
                        quoted(&lt.name),
                        quoted(&rt.name),
                        quoted(&kl),
                        quoted(&kr)
                    ),
                    catalog,
                    req,
                    opts,
                )
                .await?,
            ];
            if audience {
                parts.push(
                    query(
                        "audience",
                        &format!(
                            "SELECT {select}COUNT(DISTINCT l.{unit}) AS audience FROM {} l{group}",
                            quoted(&lt.name)
                        ),
                        catalog,
                        req,
                        opts,
                    )
                    .await?,
                );
            }
            (
                parts,
                Finish::Overlap {
                    by: by.is_some(),
                    audience,
                },
            )
        }
        "overlap_ids" => {
            let l = p.dataset("left", catalog)?;
            let r = p.dataset("right", catalog)?;
            let keys = p
                .required("keys")?
                .split(',')
                .map(|k| key_pair(k.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            let by = p.get("by").map(column).transpose()?;
            let req = split(request, 2);
            let cascade = Cascade::plan(catalog, l, r, &keys, by.as_deref(), req)?;
            let lt = &catalog.tables[l];
            let (select, group) = match &by {
                Some(c) => (
                    format!("l.{} AS {}, ", quoted(c), quoted(c)),
                    format!(" GROUP BY l.{}", quoted(c)),
                ),
                None => (String::new(), String::new()),
            };
            let audience = query(
                "audience",
                &format!(
                    "SELECT {select}COUNT(DISTINCT l.{}) AS audience FROM {} l{group}",
                    quoted(lt.unit_column()),
                    quoted(&lt.name)
                ),
                catalog,
                req,
                opts,
            )
            .await?;
            let labels = cascade.labels();
            (
                vec![Part::Cascade(Box::new(cascade)), audience],
                Finish::Cascade {
                    by: by.is_some(),
                    labels,
                },
            )
        }
        "reach" => {
            let e = p.dataset("exposures", catalog)?;
            let et = &catalog.tables[e];
            let unit = quoted(et.unit_column());
            let max = match p.get("max_frequency") {
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|v| (1..=100).contains(v))
                    .ok_or_else(|| {
                        QueryError::Invalid(
                            "max_frequency must be a whole number between 1 and 100".into(),
                        )
                    })?,
                None => et.policy.max_rows_per_unit.min(20),
            };
            if max > et.policy.max_rows_per_unit {
                return Err(QueryError::refused(
                    "contribution_bounds",
                    None,
                    format!(
                        "{} keeps at most {} rows per person (max_rows_per_unit): frequencies above it cannot be measured",
                        et.name, et.policy.max_rows_per_unit
                    ),
                ));
            }
            let join = match p.get("audience") {
                Some(_) => {
                    let a = p.dataset("audience", catalog)?;
                    let (ke, ka) = key_pair(p.get("key").ok_or_else(|| {
                        QueryError::Invalid("reach with an audience needs the parameter key".into())
                    })?)?;
                    format!(
                        " JOIN {} a ON e.{} = a.{}",
                        quoted(&catalog.tables[a].name),
                        quoted(&ke),
                        quoted(&ka)
                    )
                }
                None => String::new(),
            };
            let by = p.get("by").map(column).transpose()?;
            let (select, group) = match &by {
                Some(c) => (
                    format!("e.{} AS {}, ", quoted(c), quoted(c)),
                    format!(" GROUP BY e.{}", quoted(c)),
                ),
                None => (String::new(), String::new()),
            };
            let req = split(request, 2);
            let reach = query(
                "reach",
                &format!(
                    "SELECT {select}COUNT(DISTINCT e.{unit}) AS reach, COUNT(*) AS impressions FROM {} e{join}{group}",
                    quoted(&et.name)
                ),
                catalog,
                req,
                opts,
            )
            .await?;
            let mut spec = check_with(
                &format!(
                    "SELECT COUNT(DISTINCT e.{unit}) AS people FROM {} e{join}",
                    quoted(&et.name)
                ),
                catalog,
                opts,
            )
            .await?;
            let u = spec
                .uses
                .iter()
                .position(|x| x.table == e)
                .ok_or_else(|| QueryError::Internal("exposures not in the spec".into()))?;
            spec.frequency = Some(Frequency { table: u, max });
            spec.group_keys.insert(
                0,
                GroupKey {
                    expr: Expr::Column(Column::new(Some(qualifier(u)), FREQUENCY_COLUMN)),
                    name: "frequency".into(),
                },
            );
            for o in &mut spec.outputs {
                if let Source::Group(i) = &mut o.source {
                    *i += 1;
                }
            }
            spec.outputs.insert(
                0,
                OutputColumn {
                    name: "frequency".into(),
                    source: Source::Group(0),
                },
            );
            let frequency = Part::Query {
                name: "frequency".into(),
                analysis: Box::new(prepare_spec(spec, catalog, req)?),
            };
            (
                vec![reach, frequency],
                Finish::Reach {
                    by: by.is_some(),
                    max,
                },
            )
        }
        "lift" => {
            let e = p.dataset("exposure", catalog)?;
            let o = p.dataset("outcome", catalog)?;
            let (ke, ko) = key_pair(p.required("key")?)?;
            let exposed = column(p.required("exposed")?)?;
            let conversion = column(p.required("conversion")?)?;
            let (et, ot) = (&catalog.tables[e], &catalog.tables[o]);
            match et.column(&exposed) {
                Some(c) if c.ty == cleanroom_core::schema::ColumnType::Bool => {}
                _ => {
                    return Err(QueryError::Invalid(format!(
                        "{exposed} must be a boolean column of {}",
                        et.name
                    )));
                }
            }
            if ot.role(&conversion) != Some(ColumnRole::Metric)
                || ot.policy.metric(&conversion).is_none()
            {
                return Err(QueryError::refused(
                    "metric_not_allowed",
                    Some(&conversion),
                    format!("{conversion} is not a metric in the policy of {}", ot.name),
                ));
            }
            let unit = quoted(et.unit_column());
            let req = split(request, 2);
            let people = query(
                "people",
                &format!(
                    "SELECT e.{x} AS exposed, COUNT(DISTINCT e.{unit}) AS people FROM {} e GROUP BY e.{x}",
                    quoted(&et.name),
                    x = quoted(&exposed)
                ),
                catalog,
                req,
                opts,
            )
            .await?;
            let converters = query(
                "converters",
                &format!(
                    "SELECT e.{x} AS exposed, COUNT(DISTINCT e.{unit}) AS converters FROM {} e JOIN {} o ON e.{} = o.{} WHERE o.{} > 0 GROUP BY e.{x}",
                    quoted(&et.name),
                    quoted(&ot.name),
                    quoted(&ke),
                    quoted(&ko),
                    quoted(&conversion),
                    x = quoted(&exposed)
                ),
                catalog,
                req,
                CheckOptions {
                    metric_filters: true,
                },
            )
            .await?;
            (vec![people, converters], Finish::Lift)
        }
        "benchmark" => {
            let metric = column(p.required("metric")?)?;
            let by = p.get("by").map(column).transpose()?;
            let min_parties = match p.get("min_parties") {
                Some(v) => v.parse::<usize>().ok().filter(|v| *v >= 3).ok_or_else(|| {
                    QueryError::Invalid("min_parties must be a whole number of at least 3".into())
                })?,
                None => 3,
            };
            let mut tables = Vec::new();
            for d in p.required("datasets")?.split(',') {
                tables.push(dataset(d.trim(), catalog)?);
            }
            let b = Benchmark::plan(
                &tables,
                &metric,
                by.as_deref(),
                min_parties,
                catalog,
                request,
            )
            .await?;
            (vec![Part::Benchmark(Box::new(b))], Finish::Benchmark)
        }
        other => return Err(QueryError::Invalid(format!("unknown template {other}"))),
    };
    let private = parts.iter().any(|p| match p {
        Part::Query { analysis, .. } => analysis.calibration.is_private(),
        Part::Benchmark(_) => true,
        Part::Cascade(c) => c.is_private(),
    });
    Ok(TemplatePlan {
        label,
        parts,
        finish,
        request: private.then_some(request),
    })
}

/// Runs a plan over the data in `catalog`. Draws fresh noise: charge first.
pub async fn run(
    plan: &TemplatePlan,
    catalog: &Catalog,
    partitions: usize,
) -> Result<TemplateOutput, QueryError> {
    let mut released: Vec<(String, Released)> = Vec::new();
    let mut output = TemplateOutput::default();
    for part in &plan.parts {
        match part {
            Part::Query { name, analysis } => {
                released.push((
                    name.clone(),
                    crate::run(analysis, catalog, partitions).await?,
                ));
            }
            Part::Benchmark(b) => {
                let out = b.run(catalog, partitions).await?;
                output.tables.extend(out.tables);
                output.notes.extend(out.notes);
            }
            Part::Cascade(c) => {
                released.push(("matched".into(), c.run(catalog, partitions).await?));
            }
        }
    }
    let mut take = |name: &str| -> Released {
        released
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| released.remove(i).1)
            .unwrap_or_default()
    };
    match &plan.finish {
        Finish::Single => {
            output.tables.push(("result".into(), take("result"), None));
            output.notes.push(
                "groups with too few people, or whose noisy count fell below the threshold, are not shown".into(),
            );
        }
        Finish::Overlap { by, audience } => {
            let matched = take("matched");
            let aud = if *audience {
                Some(take("audience"))
            } else {
                None
            };
            output
                .tables
                .push(("overlap".into(), overlap_table(matched, aud, *by), None));
            output.notes.push(
                "matched: people of the left dataset also in the right one; match_rate = matched / audience, both noisy".into(),
            );
        }
        Finish::Reach { by, max } => {
            let reach = take("reach");
            output
                .tables
                .push(("reach".into(), reach_table(reach, *by), None));
            output
                .tables
                .push(("frequency".into(), take("frequency"), None));
            output.notes.push(format!(
                "frequency {max} stands for {max} or more impressions per person"
            ));
        }
        Finish::Lift => {
            let (conv, lift, notes) = lift_tables(take("people"), take("converters"));
            output.tables.push(("conversion".into(), conv, None));
            output.tables.push(("lift".into(), lift, None));
            output.notes.extend(notes);
        }
        Finish::Benchmark => {}
        Finish::Cascade { by, labels } => {
            let matched = take("matched");
            let audience = take("audience");
            output.tables.push((
                "overlap_ids".into(),
                cascade_table(matched, audience, *by),
                None,
            ));
            output.notes.push(format!(
                "each person is counted once, under the first identifier it matches on, in this order: {}; total = the sum of the identifier types shown (a type with too few people to show is left out of it); match_rate = matched / audience, all noisy",
                labels.join(", ")
            ));
        }
    }
    Ok(output)
}

fn value_col(name: &str) -> ReleasedColumn {
    ReleasedColumn {
        name: name.into(),
        kind: ColumnKind::Value,
    }
}

fn num(c: &Cell) -> Option<f64> {
    match c {
        Cell::Int(i) => Some(*i as f64),
        Cell::Float(f) => Some(*f),
        _ => None,
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Cell {
    match (a, b) {
        (Some(a), Some(b)) if b >= 1.0 => {
            Cell::Float(((a / b).clamp(0.0, 1.0) * 10_000.0).round() / 10_000.0)
        }
        _ => Cell::Null,
    }
}

fn overlap_table(matched: Released, audience: Option<Released>, by: bool) -> Released {
    let g = usize::from(by);
    let mut columns = matched.columns.clone();
    let Some(aud) = audience else {
        return matched;
    };
    columns.push(aud.columns[g].clone());
    columns.push(value_col("match_rate"));
    let index: HashMap<Vec<String>, &Vec<Cell>> = aud
        .rows
        .iter()
        .map(|r| (r[..g].iter().map(|c| format!("{c:?}")).collect(), r))
        .collect();
    let rows = matched
        .rows
        .into_iter()
        .filter_map(|r| {
            let key: Vec<String> = r[..g].iter().map(|c| format!("{c:?}")).collect();
            let a = index.get(&key)?;
            let mut row = r.clone();
            row.push(a[g].clone());
            row.push(ratio(num(&r[g]), num(&a[g])));
            Some(row)
        })
        .collect();
    Released { columns, rows }
}

/// The cascade's table: per group, one row per identifier type shown and a total row, each
/// with the group's audience and the match rate (post-processing of released values only).
fn cascade_table(matched: Released, audience: Released, by: bool) -> Released {
    let g = usize::from(by);
    let mut columns = matched.columns.clone();
    columns.push(
        audience
            .columns
            .get(g)
            .cloned()
            .unwrap_or_else(|| value_col("audience")),
    );
    columns.push(value_col("match_rate"));
    let key = |r: &[Cell]| -> String { r[..g].iter().map(|c| format!("{c:?}")).collect() };
    let audiences: HashMap<String, Cell> = audience
        .rows
        .iter()
        .map(|r| (key(r), r[g].clone()))
        .collect();
    let mut rows: Vec<Vec<Cell>> = Vec::new();
    let mut i = 0;
    while i < matched.rows.len() {
        let k = key(&matched.rows[i]);
        let aud = audiences.get(&k).cloned().unwrap_or(Cell::Null);
        let mut total = 0i64;
        while i < matched.rows.len() && key(&matched.rows[i]) == k {
            let r = &matched.rows[i];
            let m = num(&r[g + 2]);
            total += m.unwrap_or(0.0) as i64;
            let mut row = r.clone();
            row.push(aud.clone());
            row.push(ratio(m, num(&aud)));
            rows.push(row);
            i += 1;
        }
        let mut row: Vec<Cell> = matched.rows[i - 1][..g].to_vec();
        row.push(Cell::Null);
        row.push(Cell::Text("total".into()));
        row.push(Cell::Int(total));
        row.push(aud.clone());
        row.push(ratio(Some(total as f64), num(&aud)));
        rows.push(row);
    }
    Released { columns, rows }
}

fn reach_table(mut reach: Released, by: bool) -> Released {
    let g = usize::from(by);
    reach.columns.push(value_col("average_frequency"));
    for row in &mut reach.rows {
        let f = match (num(&row[g + 1]), num(&row[g])) {
            (Some(i), Some(r)) if r >= 1.0 => Cell::Float(((i / r) * 100.0).round() / 100.0),
            _ => Cell::Null,
        };
        row.push(f);
    }
    reach
}

fn lift_tables(people: Released, converters: Released) -> (Released, Released, Vec<String>) {
    let mut notes = Vec::new();
    let conv_of = |exposed: &Cell| -> Option<f64> {
        converters
            .rows
            .iter()
            .find(|r| &r[0] == exposed)
            .and_then(|r| num(&r[1]))
    };
    let columns = vec![
        people.columns[0].clone(),
        people.columns[1].clone(),
        converters
            .columns
            .get(1)
            .cloned()
            .unwrap_or_else(|| value_col("converters")),
        value_col("conversion_rate"),
    ];
    let mut rows = Vec::new();
    let mut rate = HashMap::new();
    for r in &people.rows {
        let c = conv_of(&r[0]);
        let cell = ratio(c, num(&r[1]));
        if let (Cell::Bool(b), Cell::Float(x)) = (&r[0], &cell) {
            rate.insert(*b, *x);
        }
        rows.push(vec![
            r[0].clone(),
            r[1].clone(),
            c.map_or(Cell::Null, |v| Cell::Int(v as i64)),
            cell,
        ]);
    }
    let lift_cols = vec![
        value_col("exposed_rate"),
        value_col("unexposed_rate"),
        value_col("absolute_lift"),
        value_col("relative_lift"),
    ];
    let lift_rows = match (rate.get(&true), rate.get(&false)) {
        (Some(e), Some(u)) => {
            let rel = if *u > 0.0 {
                Cell::Float(((e / u - 1.0) * 10_000.0).round() / 10_000.0)
            } else {
                notes.push(
                    "the unexposed conversion rate is zero: relative lift is undefined".into(),
                );
                Cell::Null
            };
            vec![vec![
                Cell::Float(*e),
                Cell::Float(*u),
                Cell::Float(((e - u) * 10_000.0).round() / 10_000.0),
                rel,
            ]]
        }
        _ => {
            notes.push(
                "exposed or unexposed people were too few to release (or their conversions were): no lift is computed".into(),
            );
            Vec::new()
        }
    };
    notes.push(
        "conversion_rate = converters / people, both noisy; relative_lift = exposed_rate / unexposed_rate - 1".into(),
    );
    (
        Released { columns, rows },
        Released {
            columns: lift_cols,
            rows: lift_rows,
        },
        notes,
    )
}

// ---------------------------------------------------------------------------- benchmark

/// One party of a benchmark.
#[derive(Debug, Clone)]
struct Party {
    table: usize,
    analysis: Analysis,
    selection: Option<GroupSelection>,
    /// Multiply the party's fixed-point sums by this to reach the common scale.
    rescale: i64,
    /// Its people's bound in the common scale: rows per person × largest |value|.
    rows: i64,
    magnitude: i64,
}

/// An N-party benchmark: per-party exact figures for their owners, a noisy peers' aggregate
/// over the parties that privately qualify for each group.
#[derive(Debug, Clone)]
struct Benchmark {
    parties: Vec<Party>,
    min_parties: usize,
    by: Option<String>,
    sum: IntegerNoise,
    count: IntegerNoise,
    scale: i64,
    lower: f64,
    upper: f64,
    costs: Vec<(usize, PrivacyCost)>,
}

impl Benchmark {
    async fn plan(
        tables: &[usize],
        metric: &str,
        by: Option<&str>,
        min_parties: usize,
        catalog: &Catalog,
        request: PrivacyRequest,
    ) -> Result<Benchmark, QueryError> {
        let owners: BTreeSet<&OrgName> = tables.iter().map(|t| &catalog.tables[*t].owner).collect();
        if owners.len() != tables.len() {
            return Err(QueryError::Invalid(
                "a benchmark takes one dataset per party: two datasets have the same owner".into(),
            ));
        }
        if tables.len() < min_parties {
            return Err(QueryError::refused(
                "too_few_parties",
                None,
                format!(
                    "a benchmark needs at least {min_parties} parties, {} given",
                    tables.len()
                ),
            ));
        }
        // Every party's own query: sums and counts of the metric, by the dimension.
        let (select, group) = match by {
            Some(c) => (
                format!("{} AS {}, ", quoted(c), quoted(c)),
                format!(" GROUP BY {}", quoted(c)),
            ),
            None => (String::new(), String::new()),
        };
        let mut specs = Vec::new();
        for &t in tables {
            let sql = format!(
                "SELECT {select}SUM({m}) AS total, COUNT({m}) AS n FROM {}{group}",
                quoted(&catalog.tables[t].name),
                m = quoted(metric)
            );
            specs.push((t, check_with(&sql, catalog, CheckOptions::default()).await?));
        }
        // A common fixed-point scale and the bounds of every party.
        let mut scale = 1i64;
        let mut lower = f64::INFINITY;
        let mut upper = f64::NEG_INFINITY;
        for (_, spec) in &specs {
            if let Measure::Sum(c) = &spec.aggregates[0].measure {
                scale = scale.max(c.scale);
                lower = lower.min(c.lower);
                upper = upper.max(c.upper);
            }
        }
        let eps_each = Epsilon::grant(request.epsilon / 3.0)?;
        let mut parties = Vec::new();
        for (t, spec) in specs {
            let table = &catalog.tables[t];
            let Measure::Sum(c) = &spec.aggregates[0].measure else {
                return Err(QueryError::Internal("benchmark sum".into()));
            };
            let rescale = scale / c.scale;
            let rows = i64::from(table.policy.max_rows_per_unit);
            let magnitude = c.magnitude() * rescale;
            // The party's own figures go to the party only: exact.
            let analysis = prepare_spec(spec, &exact_catalog(catalog, t), request)?;
            let selection = if table.policy.differential_privacy {
                Some(GroupSelection::calibrate(
                    eps_each,
                    request.delta / 2.0,
                    SelectionBounds::rows(rows)?,
                    i64::from(table.policy.min_group_size),
                )?)
            } else {
                None
            };
            parties.push(Party {
                table: t,
                analysis,
                selection,
                rescale,
                rows,
                magnitude,
            });
        }
        let max_sum = parties
            .iter()
            .map(|p| p.rows * p.magnitude)
            .max()
            .unwrap_or(1);
        let max_rows = parties.iter().map(|p| p.rows).max().unwrap_or(1);
        let sum = IntegerNoise::calibrate(eps_each, max_sum)?;
        let count = IntegerNoise::calibrate(eps_each, max_rows)?;
        let mut costs = Vec::new();
        for p in &parties {
            let cost = match &p.selection {
                Some(sel) => sel
                    .cost()
                    .plus(sum.cost_for(p.rows * p.magnitude)?)?
                    .plus(count.cost_for(p.rows)?)?,
                None => PrivacyCost::ZERO,
            };
            costs.push((p.table, cost));
        }
        Ok(Benchmark {
            parties,
            min_parties,
            by: by.map(str::to_owned),
            sum,
            count,
            scale,
            lower,
            upper,
            costs,
        })
    }

    fn describe_for_fingerprint(&self, catalog: &Catalog) -> String {
        let mut s = format!("benchmark min {} by {:?};", self.min_parties, self.by);
        for p in &self.parties {
            s.push_str(&format!(
                "{} {};",
                catalog.tables[p.table].dataset_id, p.analysis.fingerprint
            ));
        }
        s
    }

    async fn run(
        &self,
        catalog: &Catalog,
        partitions: usize,
    ) -> Result<TemplateOutput, QueryError> {
        // Exact groups of every party (bounded by its policy).
        let mut per_party = Vec::new();
        for p in &self.parties {
            let groups = execute(
                &p.analysis.spec,
                catalog,
                RunOptions {
                    bound_contributions: true,
                    partitions,
                },
            )
            .await?;
            per_party.push(groups);
        }
        // A common numbering of group keys.
        let mut keys: Vec<Vec<ScalarValue>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut figures: Vec<HashMap<usize, (i64, i128, i64)>> = Vec::new();
        for groups in &per_party {
            let mut mine = HashMap::new();
            for g in groups {
                let k = format!("{:?}", g.keys);
                let i = *index.entry(k).or_insert_with(|| {
                    keys.push(g.keys.clone());
                    keys.len() - 1
                });
                let (ExactValue::Sum(s), ExactValue::Count(n)) = (g.values[0], g.values[1]) else {
                    return Err(QueryError::Internal("benchmark values".into()));
                };
                mine.insert(i, (g.units[0], s, n));
            }
            figures.push(mine);
        }
        // Which parties privately qualify for each group.
        let mut contributors: Vec<Vec<usize>> = vec![Vec::new(); keys.len()];
        for (pi, p) in self.parties.iter().enumerate() {
            let counts: HashMap<u64, i64> = figures[pi]
                .iter()
                .map(|(g, (units, _, _))| (*g as u64, *units))
                .collect();
            let kept: BTreeSet<usize> = match &p.selection {
                Some(sel) => sel.release(&counts)?.keys().map(|k| *k as usize).collect(),
                None => {
                    let k = i64::from(catalog.tables[p.table].policy.min_group_size);
                    counts
                        .iter()
                        .filter(|(_, c)| **c >= k)
                        .map(|(g, _)| *g as usize)
                        .collect()
                }
            };
            for g in kept {
                contributors[g].push(pi);
            }
        }
        let shown: Vec<usize> = (0..keys.len())
            .filter(|g| contributors[*g].len() >= self.min_parties)
            .collect();
        // Noisy totals over the qualifying parties of the shown groups.
        let mut sums = Vec::new();
        let mut counts = Vec::new();
        for &g in &shown {
            let mut s: i128 = 0;
            let mut n: i64 = 0;
            for &pi in &contributors[g] {
                if let Some((_, ps, pn)) = figures[pi].get(&g) {
                    s += *ps * i128::from(self.parties[pi].rescale);
                    n += *pn;
                }
            }
            sums.push(i64::try_from(s).unwrap_or(if s < 0 { i64::MIN } else { i64::MAX }));
            counts.push(n);
        }
        let noisy_sums = self.sum.release_all(&sums)?;
        let noisy_counts = self.count.release_all(&counts)?;
        let scale = self.scale as f64;
        let average = |s: f64, n: f64| -> Cell {
            if n < 1.0 {
                return Cell::Null;
            }
            let v = (s / scale / n).clamp(self.lower, self.upper);
            Cell::Float((v * 100.0).round() / 100.0)
        };
        let group_col = self.by.as_ref().map(|b| ReleasedColumn {
            name: b.clone(),
            kind: ColumnKind::Group,
        });
        let key_cells = |g: usize| -> Vec<Cell> {
            if self.by.is_some() {
                vec![crate::release::cell_of(&keys[g][0])]
            } else {
                Vec::new()
            }
        };
        let mut peers = Released {
            columns: group_col
                .iter()
                .cloned()
                .chain([
                    value_col("parties"),
                    ReleasedColumn {
                        name: "values".into(),
                        kind: ColumnKind::Count {
                            noise_sd: Some(crate::release::noise_sd(self.count.scale())),
                        },
                    },
                    ReleasedColumn {
                        name: "average".into(),
                        kind: ColumnKind::Average,
                    },
                ])
                .collect(),
            rows: Vec::new(),
        };
        for (i, &g) in shown.iter().enumerate() {
            let mut row = key_cells(g);
            row.push(Cell::Int(contributors[g].len() as i64));
            row.push(Cell::Int(noisy_counts[i].max(0)));
            row.push(average(noisy_sums[i] as f64, noisy_counts[i] as f64));
            peers.rows.push(row);
        }
        peers
            .rows
            .sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        let mut out = TemplateOutput::default();
        out.tables.push(("peers".into(), peers, None));
        // Each party's own figures against the peers without it, for that party only.
        for (pi, p) in self.parties.iter().enumerate() {
            let owner = catalog.tables[p.table].owner.clone();
            let mut mine = Released {
                columns: group_col
                    .iter()
                    .cloned()
                    .chain([
                        value_col("your_values"),
                        value_col("your_average"),
                        value_col("peers_average"),
                        value_col("difference"),
                    ])
                    .collect(),
                rows: Vec::new(),
            };
            for (i, &g) in shown.iter().enumerate() {
                let Some((_, ps, pn)) = figures[pi].get(&g) else {
                    continue;
                };
                let own_sum = (*ps * i128::from(p.rescale)) as f64;
                let own_n = *pn as f64;
                let (peer_sum, peer_n) = if contributors[g].contains(&pi) {
                    (
                        noisy_sums[i] as f64 - own_sum,
                        noisy_counts[i] as f64 - own_n,
                    )
                } else {
                    (noisy_sums[i] as f64, noisy_counts[i] as f64)
                };
                let yours = average(own_sum, own_n);
                let peers_avg = average(peer_sum, peer_n);
                let diff = match (num(&yours), num(&peers_avg)) {
                    (Some(a), Some(b)) => Cell::Float(((a - b) * 100.0).round() / 100.0),
                    _ => Cell::Null,
                };
                let mut row = key_cells(g);
                row.extend([Cell::Int(*pn), yours, peers_avg, diff]);
                mine.rows.push(row);
            }
            mine.rows
                .sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            out.tables
                .push((format!("yours: {owner}"), mine, Some(owner)));
        }
        out.notes.push(format!(
            "a group is shown when at least {} parties each have enough people in it (decided with noise); the peers' figures are noisy, yours are exact and shown to you only",
            self.min_parties
        ));
        Ok(out)
    }
}

/// The catalog with one table's differential privacy off (its owner's own exact figures).
fn exact_catalog(catalog: &Catalog, table: usize) -> Catalog {
    let mut c = catalog.clone();
    c.tables[table].policy.differential_privacy = false;
    c
}
