//! `reach` v1: people reached and impressions, and how many people saw an ad 1, 2, … times.

use std::collections::BTreeSet;

use async_trait::async_trait;
use datafusion::common::Column;
use datafusion::logical_expr::Expr;

use super::{
    Finish, Params, Part, Planned, Releases, Template, TemplateInfo, TemplateOutput, column,
    key_pair, num, p, query, quoted, split, value_col,
};
use crate::catalog::Catalog;
use crate::check::{CheckOptions, check_with};
use crate::release::{Cell, Released};
use crate::spec::{FREQUENCY_COLUMN, Frequency, GroupKey, OutputColumn, Source, qualifier};
use crate::{PrivacyRequest, QueryError, prepare_spec};

pub(super) struct Reach;

pub(super) const INFO: TemplateInfo = TemplateInfo {
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
};

#[async_trait]
impl Template for Reach {
    fn info(&self) -> &'static TemplateInfo {
        &INFO
    }

    fn datasets(&self, p: &Params<'_>, catalog: &Catalog) -> Result<BTreeSet<usize>, QueryError> {
        let mut out = BTreeSet::from([p.dataset("exposures", catalog)?]);
        if p.get("audience").is_some() {
            out.insert(p.dataset("audience", catalog)?);
        }
        Ok(out)
    }

    async fn plan(
        &self,
        p: &Params<'_>,
        catalog: &Catalog,
        request: PrivacyRequest,
    ) -> Result<Planned, QueryError> {
        let opts = CheckOptions::default();
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
        Ok(Planned::new(
            vec![reach, frequency],
            ReachFinish {
                by: by.is_some(),
                max,
            },
        ))
    }
}

#[derive(Debug)]
struct ReachFinish {
    by: bool,
    max: u32,
}

impl Finish for ReachFinish {
    fn finish(&self, released: &mut Releases, output: &mut TemplateOutput) {
        let reach = released.take("reach");
        output
            .tables
            .push(("reach".into(), reach_table(reach, self.by), None));
        output
            .tables
            .push(("frequency".into(), released.take("frequency"), None));
        output.notes.push(format!(
            "frequency {max} stands for {max} or more impressions per person",
            max = self.max
        ));
    }
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
