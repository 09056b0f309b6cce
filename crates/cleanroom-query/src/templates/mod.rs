//! Ready-made analyses: parameterised queries that data owners approve once per version.
//!
//! Each template builds ordinary SQL from its parameters (identifiers validated, never
//! pasted), and that SQL goes through the same checker, calibration, bounding and release as an
//! analyst's own query. The query's epsilon and delta are split evenly between a template's
//! parts. Derived figures (match rates, conversion rates, lift, averages) are computed from the
//! released values only.
//!
//! Each template is one file implementing [`Template`], listed once in [`REGISTRY`].
//!
//! | template | what it answers |
//! |---|---|
//! | `overlap` v1 | how many of `left`'s people are also in `right`, by a dimension, and the match rate |
//! | `reach` v1 | people reached and impressions, and how many people saw an ad 1, 2, … times |
//! | `lift` v1 | conversion rates of exposed and unexposed people and the lift between them |
//! | `benchmark` v1 | each party's own figure against the peers' aggregate, with enough peers |
//! | `overlap_ids` v1 | overlap matched on several identifiers in priority order (a cascade), per identifier and in total |

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use cleanroom_core::names::{ColumnName, OrgName};
use cleanroom_privacy::budget::PrivacyCost;
use sha2::{Digest, Sha256};

use crate::cascade::Cascade;
use crate::catalog::Catalog;
use crate::check::{CheckOptions, check_with};
use crate::release::{Cell, ColumnKind, Released, ReleasedColumn};
use crate::{Analysis, PrivacyRequest, QueryError, prepare_spec};

mod benchmark;
mod lift;
mod overlap;
mod overlap_ids;
mod reach;

use benchmark::Benchmark;

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

/// Every template, in the order they are listed. Adding a template: one file implementing
/// [`Template`] and one line here.
const REGISTRY: &[&dyn Template] = &[
    &overlap::Overlap,
    &overlap_ids::OverlapIds,
    &reach::Reach,
    &lift::Lift,
    &benchmark::BenchmarkTemplate,
];

/// A ready-made analysis at one version.
#[async_trait]
trait Template: Send + Sync {
    /// Its name, version, description and parameters.
    fn info(&self) -> &'static TemplateInfo;
    /// The datasets (catalog indexes) a run would touch.
    fn datasets(&self, p: &Params<'_>, catalog: &Catalog) -> Result<BTreeSet<usize>, QueryError>;
    /// Checks and calibrates its parts; the privacy request is the whole run's.
    async fn plan(
        &self,
        p: &Params<'_>,
        catalog: &Catalog,
        request: PrivacyRequest,
    ) -> Result<Planned, QueryError>;
}

/// The parts of a planned template and how their releases become its tables.
struct Planned {
    parts: Vec<Part>,
    finish: Arc<dyn Finish>,
}

impl Planned {
    fn new(parts: Vec<Part>, finish: impl Finish + 'static) -> Self {
        Planned {
            parts,
            finish: Arc::new(finish),
        }
    }
}

/// Turns the released tables of a run's parts into the template's output: post-processing of
/// released values only.
trait Finish: Debug + Send + Sync {
    fn finish(&self, released: &mut Releases, output: &mut TemplateOutput);
}

/// The released tables of a run's parts, by name.
#[derive(Default)]
struct Releases(Vec<(String, Released)>);

impl Releases {
    /// Takes the table a part released under `name` (empty if it released none).
    fn take(&mut self, name: &str) -> Released {
        self.0
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| self.0.remove(i).1)
            .unwrap_or_default()
    }
}

/// One analyst query: its table as is.
#[derive(Debug)]
struct Single;

impl Finish for Single {
    fn finish(&self, released: &mut Releases, output: &mut TemplateOutput) {
        output
            .tables
            .push(("result".into(), released.take("result"), None));
        output.notes.push(
            "groups with too few people, or whose noisy count fell below the threshold, are not shown".into(),
        );
    }
}

/// Parts whose tables went to the output as they ran (the benchmark's).
#[derive(Debug)]
struct NothingMore;

impl Finish for NothingMore {
    fn finish(&self, _: &mut Releases, _: &mut TemplateOutput) {}
}

/// Every template.
pub fn all() -> Vec<TemplateInfo> {
    REGISTRY.iter().map(|t| *t.info()).collect()
}

/// A template by name, at `version` (default: the latest).
pub fn find(name: &str, version: Option<u32>) -> Result<TemplateInfo, QueryError> {
    let candidates: Vec<&TemplateInfo> = REGISTRY
        .iter()
        .map(|t| t.info())
        .filter(|t| t.name == name)
        .collect();
    if candidates.is_empty() {
        return Err(QueryError::Invalid(format!(
            "no template named {name:?}; available: {}",
            REGISTRY
                .iter()
                .map(|t| t.info().name)
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

/// The implementation of a template version.
fn implementation(info: &TemplateInfo) -> Result<&'static dyn Template, QueryError> {
    REGISTRY
        .iter()
        .copied()
        .find(|t| t.info().name == info.name && t.info().version == info.version)
        .ok_or_else(|| {
            QueryError::Invalid(format!(
                "unknown template {} version {}",
                info.name, info.version
            ))
        })
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
    let template = implementation(info)?;
    template.datasets(&Params::new(info, params)?, catalog)
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

/// A planned template run (or a single SQL query): checked, calibrated, not yet run.
#[derive(Debug, Clone)]
pub struct TemplatePlan {
    label: String,
    parts: Vec<Part>,
    finish: Arc<dyn Finish>,
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
            finish: Arc::new(Single),
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
                    if let Some(m) = &c.group_count {
                        out.push(format!(
                            "{name}: how many groups are left out is estimated from a noisy count of the groups formed ({:.0} % of the epsilon; noise standard deviation {:.1} groups)",
                            crate::calibrate::GROUP_COUNT_SHARE * 100.0,
                            crate::release::noise_sd(m.scale())
                        ));
                    }
                }
                Part::Benchmark(b) => out.push(format!(
                    "benchmark over {} parties; a group needs {} contributing parties",
                    b.party_count(),
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
    let template = implementation(info)?;
    let p = Params::new(info, params)?;
    let Planned { parts, finish } = template.plan(&p, catalog, request).await?;
    let private = parts.iter().any(|p| match p {
        Part::Query { analysis, .. } => analysis.calibration.is_private(),
        Part::Benchmark(_) => true,
        Part::Cascade(c) => c.is_private(),
    });
    Ok(TemplatePlan {
        label: format!("{}@{}", info.name, info.version),
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
    let mut released = Releases::default();
    let mut output = TemplateOutput::default();
    for part in &plan.parts {
        match part {
            Part::Query { name, analysis } => {
                released.0.push((
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
                released
                    .0
                    .push(("matched".into(), c.run(catalog, partitions).await?));
            }
        }
    }
    plan.finish.finish(&mut released, &mut output);
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
