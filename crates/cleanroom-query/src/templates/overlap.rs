//! `overlap` v1: how many of `left`'s people are also in `right`, by a dimension, and the
//! match rate.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;

use super::{
    Finish, Params, Planned, Releases, Template, TemplateInfo, TemplateOutput, column, key_pair,
    num, p, query, quoted, ratio, split, value_col,
};
use crate::catalog::Catalog;
use crate::check::CheckOptions;
use crate::release::{Cell, Released};
use crate::{PrivacyRequest, QueryError};

pub(super) struct Overlap;

pub(super) const INFO: TemplateInfo = TemplateInfo {
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
};

#[async_trait]
impl Template for Overlap {
    fn info(&self) -> &'static TemplateInfo {
        &INFO
    }

    fn datasets(&self, p: &Params<'_>, catalog: &Catalog) -> Result<BTreeSet<usize>, QueryError> {
        Ok(BTreeSet::from([
            p.dataset("left", catalog)?,
            p.dataset("right", catalog)?,
        ]))
    }

    async fn plan(
        &self,
        p: &Params<'_>,
        catalog: &Catalog,
        request: PrivacyRequest,
    ) -> Result<Planned, QueryError> {
        let opts = CheckOptions::default();
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
        Ok(Planned::new(
            parts,
            OverlapFinish {
                by: by.is_some(),
                audience,
            },
        ))
    }
}

#[derive(Debug)]
struct OverlapFinish {
    by: bool,
    audience: bool,
}

impl Finish for OverlapFinish {
    fn finish(&self, released: &mut Releases, output: &mut TemplateOutput) {
        let matched = released.take("matched");
        let audience = self.audience.then(|| released.take("audience"));
        output.tables.push((
            "overlap".into(),
            overlap_table(matched, audience, self.by),
            None,
        ));
        output.notes.push(
            "matched: people of the left dataset also in the right one; match_rate = matched / audience, both noisy".into(),
        );
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
    let formed = matched.rows.len();
    let rows: Vec<Vec<Cell>> = matched
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
    // A matched group whose audience was not released is left out too.
    let dropped = formed - rows.len();
    Released {
        columns,
        rows,
        left_out: matched.left_out,
    }
    .plus_left_out(dropped)
}
