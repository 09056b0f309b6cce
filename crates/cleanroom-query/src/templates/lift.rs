//! `lift` v1: conversion rates of exposed and unexposed people and the lift between them.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use cleanroom_core::schema::{ColumnRole, ColumnType};

use super::{
    Finish, Params, Planned, Releases, Template, TemplateInfo, TemplateOutput, column, key_pair,
    num, p, query, quoted, ratio, split, value_col,
};
use crate::catalog::Catalog;
use crate::check::CheckOptions;
use crate::release::{Cell, Released};
use crate::{PrivacyRequest, QueryError};

pub(super) struct Lift;

pub(super) const INFO: TemplateInfo = TemplateInfo {
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
};

#[async_trait]
impl Template for Lift {
    fn info(&self) -> &'static TemplateInfo {
        &INFO
    }

    fn datasets(&self, p: &Params<'_>, catalog: &Catalog) -> Result<BTreeSet<usize>, QueryError> {
        Ok(BTreeSet::from([
            p.dataset("exposure", catalog)?,
            p.dataset("outcome", catalog)?,
        ]))
    }

    async fn plan(
        &self,
        p: &Params<'_>,
        catalog: &Catalog,
        request: PrivacyRequest,
    ) -> Result<Planned, QueryError> {
        let opts = CheckOptions::default();
        let e = p.dataset("exposure", catalog)?;
        let o = p.dataset("outcome", catalog)?;
        let (ke, ko) = key_pair(p.required("key")?)?;
        let exposed = column(p.required("exposed")?)?;
        let conversion = column(p.required("conversion")?)?;
        let (et, ot) = (&catalog.tables[e], &catalog.tables[o]);
        match et.column(&exposed) {
            Some(c) if c.ty == ColumnType::Bool => {}
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
        Ok(Planned::new(vec![people, converters], LiftFinish))
    }
}

#[derive(Debug)]
struct LiftFinish;

impl Finish for LiftFinish {
    fn finish(&self, released: &mut Releases, output: &mut TemplateOutput) {
        let (conv, lift, notes) = lift_tables(released.take("people"), released.take("converters"));
        output.tables.push(("conversion".into(), conv, None));
        output.tables.push(("lift".into(), lift, None));
        output.notes.extend(notes);
    }
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
        Released {
            columns,
            rows,
            left_out: people.left_out,
        },
        Released {
            columns: lift_cols,
            rows: lift_rows,
            left_out: None,
        },
        notes,
    )
}
