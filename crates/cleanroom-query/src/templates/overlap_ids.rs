//! `overlap_ids` v1: overlap matched on several identifiers in priority order (a cascade), per
//! identifier and in total.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;

use super::{
    Finish, Params, Part, Planned, Releases, Template, TemplateInfo, TemplateOutput, column,
    key_pair, num, p, query, quoted, ratio, split, value_col,
};
use crate::cascade::Cascade;
use crate::catalog::Catalog;
use crate::check::CheckOptions;
use crate::release::{Cell, Released};
use crate::{PrivacyRequest, QueryError};

pub(super) struct OverlapIds;

pub(super) const INFO: TemplateInfo = TemplateInfo {
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
};

#[async_trait]
impl Template for OverlapIds {
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
        Ok(Planned::new(
            vec![Part::Cascade(Box::new(cascade)), audience],
            CascadeFinish {
                by: by.is_some(),
                labels,
            },
        ))
    }
}

#[derive(Debug)]
struct CascadeFinish {
    by: bool,
    labels: Vec<String>,
}

impl Finish for CascadeFinish {
    fn finish(&self, released: &mut Releases, output: &mut TemplateOutput) {
        let matched = released.take("matched");
        let audience = released.take("audience");
        output.tables.push((
            "overlap_ids".into(),
            cascade_table(matched, audience, self.by),
            None,
        ));
        output.notes.push(format!(
            "each person is counted once, under the first identifier it matches on, in this order: {}; total = the sum of the identifier types shown (a type with too few people to show is left out of it); match_rate = matched / audience, all noisy",
            self.labels.join(", ")
        ));
    }
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
    Released {
        columns,
        rows,
        left_out: matched.left_out,
    }
}
