//! `benchmark` v1: each party's own figure against the peers' aggregate, with enough peers.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use cleanroom_core::names::OrgName;
use cleanroom_privacy::budget::{Epsilon, PrivacyCost};
use cleanroom_privacy::noise::IntegerNoise;
use cleanroom_privacy::partition::{GroupSelection, SelectionBounds};
use datafusion::common::ScalarValue;

use super::{
    NothingMore, Params, Part, Planned, Template, TemplateInfo, TemplateOutput, column, dataset,
    num, p, quoted, value_col,
};
use crate::catalog::Catalog;
use crate::check::{CheckOptions, check_with};
use crate::release::{Cell, ColumnKind, LeftOut, Released, ReleasedColumn};
use crate::rewrite::{ExactValue, RunOptions, execute};
use crate::spec::Measure;
use crate::{Analysis, PrivacyRequest, QueryError, prepare_spec};

pub(super) struct BenchmarkTemplate;

pub(super) const INFO: TemplateInfo = TemplateInfo {
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
};

#[async_trait]
impl Template for BenchmarkTemplate {
    fn info(&self) -> &'static TemplateInfo {
        &INFO
    }

    fn datasets(&self, p: &Params<'_>, catalog: &Catalog) -> Result<BTreeSet<usize>, QueryError> {
        p.required("datasets")?
            .split(',')
            .map(|d| dataset(d.trim(), catalog))
            .collect()
    }

    async fn plan(
        &self,
        p: &Params<'_>,
        catalog: &Catalog,
        request: PrivacyRequest,
    ) -> Result<Planned, QueryError> {
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
        Ok(Planned::new(
            vec![Part::Benchmark(Box::new(b))],
            NothingMore,
        ))
    }
}

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
pub(super) struct Benchmark {
    parties: Vec<Party>,
    pub(super) min_parties: usize,
    by: Option<String>,
    sum: IntegerNoise,
    count: IntegerNoise,
    scale: i64,
    lower: f64,
    upper: f64,
    pub(super) costs: Vec<(usize, PrivacyCost)>,
}

impl Benchmark {
    /// How many parties take part.
    pub(super) fn party_count(&self) -> usize {
        self.parties.len()
    }

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

    pub(super) fn describe_for_fingerprint(&self, catalog: &Catalog) -> String {
        let mut s = format!("benchmark min {} by {:?};", self.min_parties, self.by);
        for p in &self.parties {
            s.push_str(&format!(
                "{} {};",
                catalog.tables[p.table].dataset_id, p.analysis.fingerprint
            ));
        }
        s
    }

    pub(super) async fn run(
        &self,
        catalog: &Catalog,
        partitions: usize,
    ) -> Result<TemplateOutput, QueryError> {
        let figures = self.exact_figures(catalog, partitions).await?;
        let totals = self.noisy_totals(&figures, catalog)?;
        let mut out = TemplateOutput::default();
        out.tables
            .push(("peers".into(), self.peers_table(&figures, &totals), None));
        // Each party's own figures against the peers without it, for that party only.
        for (pi, p) in self.parties.iter().enumerate() {
            let owner = catalog.tables[p.table].owner.clone();
            let mine = self.own_table(pi, &figures, &totals);
            out.tables
                .push((format!("yours: {owner}"), mine, Some(owner)));
        }
        out.notes.push(format!(
            "a group is shown when at least {} parties each have enough people in it (decided with noise); the peers' figures are noisy, yours are exact and shown to you only",
            self.min_parties
        ));
        if self.by.is_some() {
            out.notes.push(format!(
                "groups left out of the peers' table: those where at least one party, but fewer than {}, had enough people; a group too small at every party is not counted",
                self.min_parties
            ));
        }
        Ok(out)
    }

    /// Every party's exact groups (bounded by its policy), on a common numbering of group keys.
    async fn exact_figures(
        &self,
        catalog: &Catalog,
        partitions: usize,
    ) -> Result<Figures, QueryError> {
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
        let mut keys: Vec<Vec<ScalarValue>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut parties = Vec::new();
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
            parties.push(mine);
        }
        Ok(Figures { keys, parties })
    }

    /// Which parties privately qualify for each group, the groups shown (enough qualifying
    /// parties) and their noisy totals over the qualifying parties.
    fn noisy_totals(&self, figures: &Figures, catalog: &Catalog) -> Result<Totals, QueryError> {
        let mut contributors: Vec<Vec<usize>> = vec![Vec::new(); figures.keys.len()];
        for (pi, p) in self.parties.iter().enumerate() {
            let counts: HashMap<u64, i64> = figures.parties[pi]
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
        let shown: Vec<usize> = (0..figures.keys.len())
            .filter(|g| contributors[*g].len() >= self.min_parties)
            .collect();
        let mut sums = Vec::new();
        let mut counts = Vec::new();
        for &g in &shown {
            let mut s: i128 = 0;
            let mut n: i64 = 0;
            for &pi in &contributors[g] {
                if let Some((_, ps, pn)) = figures.parties[pi].get(&g) {
                    s += *ps * i128::from(self.parties[pi].rescale);
                    n += *pn;
                }
            }
            sums.push(i64::try_from(s).unwrap_or(if s < 0 { i64::MIN } else { i64::MAX }));
            counts.push(n);
        }
        Ok(Totals {
            noisy_sums: self.sum.release_all(&sums)?,
            noisy_counts: self.count.release_all(&counts)?,
            shown,
            contributors,
        })
    }

    /// An average in the metric's unit, clamped to its bounds; `Null` below one value.
    fn average(&self, s: f64, n: f64) -> Cell {
        if n < 1.0 {
            return Cell::Null;
        }
        let v = (s / self.scale as f64 / n).clamp(self.lower, self.upper);
        Cell::Float((v * 100.0).round() / 100.0)
    }

    fn group_column(&self) -> Option<ReleasedColumn> {
        self.by.as_ref().map(|b| ReleasedColumn {
            name: b.clone(),
            kind: ColumnKind::Group,
        })
    }

    fn key_cells(&self, figures: &Figures, g: usize) -> Vec<Cell> {
        if self.by.is_some() {
            vec![crate::release::cell_of(&figures.keys[g][0])]
        } else {
            Vec::new()
        }
    }

    /// The peers' table: per shown group, the parties, the noisy count and average.
    fn peers_table(&self, figures: &Figures, totals: &Totals) -> Released {
        let mut peers = Released {
            columns: self
                .group_column()
                .into_iter()
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
            // Groups at least one party privately qualified for, but too few parties did: a
            // function of the parties' released selections. Groups too small at every party
            // are not counted (that would need its own noisy count).
            left_out: self.by.as_ref().map(|_| LeftOut {
                groups: totals
                    .contributors
                    .iter()
                    .filter(|c| !c.is_empty() && c.len() < self.min_parties)
                    .count() as i64,
                noise_sd: None,
            }),
        };
        for (i, &g) in totals.shown.iter().enumerate() {
            let mut row = self.key_cells(figures, g);
            row.push(Cell::Int(totals.contributors[g].len() as i64));
            row.push(Cell::Int(totals.noisy_counts[i].max(0)));
            row.push(self.average(totals.noisy_sums[i] as f64, totals.noisy_counts[i] as f64));
            peers.rows.push(row);
        }
        peers
            .rows
            .sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        peers
    }

    /// Party `pi`'s exact figures against the peers' (without its own contribution).
    fn own_table(&self, pi: usize, figures: &Figures, totals: &Totals) -> Released {
        let p = &self.parties[pi];
        let mut mine = Released {
            columns: self
                .group_column()
                .into_iter()
                .chain([
                    value_col("your_values"),
                    value_col("your_average"),
                    value_col("peers_average"),
                    value_col("difference"),
                ])
                .collect(),
            rows: Vec::new(),
            left_out: None,
        };
        for (i, &g) in totals.shown.iter().enumerate() {
            let Some((_, ps, pn)) = figures.parties[pi].get(&g) else {
                continue;
            };
            let own_sum = (*ps * i128::from(p.rescale)) as f64;
            let own_n = *pn as f64;
            let (noisy_sum, noisy_n) = (totals.noisy_sums[i] as f64, totals.noisy_counts[i] as f64);
            let (peer_sum, peer_n) = if totals.contributors[g].contains(&pi) {
                (noisy_sum - own_sum, noisy_n - own_n)
            } else {
                (noisy_sum, noisy_n)
            };
            let yours = self.average(own_sum, own_n);
            let peers_avg = self.average(peer_sum, peer_n);
            let diff = match (num(&yours), num(&peers_avg)) {
                (Some(a), Some(b)) => Cell::Float(((a - b) * 100.0).round() / 100.0),
                _ => Cell::Null,
            };
            let mut row = self.key_cells(figures, g);
            row.extend([Cell::Int(*pn), yours, peers_avg, diff]);
            mine.rows.push(row);
        }
        mine.rows
            .sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        mine
    }
}

/// Every party's exact figures per group: (people, fixed-point sum, values), keyed by the
/// group's number in `keys`.
struct Figures {
    keys: Vec<Vec<ScalarValue>>,
    parties: Vec<HashMap<usize, (i64, i128, i64)>>,
}

/// The shown groups, who qualifies for each group, and the noisy totals of the shown groups.
struct Totals {
    shown: Vec<usize>,
    contributors: Vec<Vec<usize>>,
    noisy_sums: Vec<i64>,
    noisy_counts: Vec<i64>,
}

/// The catalog with one table's differential privacy off (its owner's own exact figures).
fn exact_catalog(catalog: &Catalog, table: usize) -> Catalog {
    let mut c = catalog.clone();
    c.tables[table].policy.differential_privacy = false;
    c
}
