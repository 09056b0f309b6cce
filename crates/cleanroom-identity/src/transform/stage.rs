//! The transforms' place in the prepare pipeline: rows stream through the transforms (or are
//! held in a [`Table`] until the input is read), the risk after the transforms is collected,
//! and a [`TransformReport`] says what each step bought and cost.

use std::fmt::Write as _;

use super::{Outcome, RowPipeline, Table, TransformRng, Transforms, Value, format_number, os_rng};
use crate::IdentityError;
use crate::risk::{RiskAccumulator, RiskAssessment, RiskLimits, display_l, percent};

enum Mode {
    Streaming(RowPipeline),
    Table(Table),
}

/// The transforms while the input is read.
pub struct Stage {
    mode: Mode,
    rng: TransformRng,
    quasi: Vec<usize>,
    sensitive: Option<usize>,
    risk_after: Option<RiskAccumulator>,
    /// Non-NULL quasi-identifier values before and after the transforms.
    qi_values_before: u64,
    qi_values_after: u64,
    rows_in: u64,
    rows_out: u64,
    memory: usize,
    outcomes: Vec<Outcome>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stage { .. }")
    }
}

impl Stage {
    /// `names`: the upload columns in output order; `quasi`, `sensitive`: their indices.
    pub fn new(
        transforms: &Transforms,
        names: Vec<String>,
        quasi: Vec<usize>,
        sensitive: Option<usize>,
        rng: Option<TransformRng>,
    ) -> Result<Self, IdentityError> {
        let mode = if transforms.is_streaming() {
            Mode::Streaming(transforms.streaming(&names)?)
        } else {
            Mode::Table(Table::new(names))
        };
        let rng = match rng {
            Some(r) => r,
            None => os_rng()?,
        };
        Ok(Stage {
            mode,
            rng,
            risk_after: (!quasi.is_empty()).then(|| RiskAccumulator::new(sensitive.is_some())),
            quasi,
            sensitive,
            qi_values_before: 0,
            qi_values_after: 0,
            rows_in: 0,
            rows_out: 0,
            memory: 0,
            outcomes: Vec::new(),
        })
    }

    fn qi_values(&self, row: &[Value]) -> u64 {
        self.quasi.iter().filter(|q| !row[**q].is_null()).count() as u64
    }

    fn after(&mut self, row: &[Value]) {
        self.rows_out += 1;
        self.qi_values_after += self.qi_values(row);
        if let Some(acc) = &mut self.risk_after {
            let texts: Vec<_> = self.quasi.iter().map(|q| row[*q].as_text()).collect();
            let qi: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
            let s = self.sensitive.and_then(|i| row[i].as_text());
            acc.add(&qi, s.as_deref());
        }
    }

    /// Takes one prepared row. True when it is transformed and ready to write now; false when
    /// it is held (and `row` left NULL) until [`finish`](Self::finish).
    pub fn row(&mut self, row: &mut [Value]) -> bool {
        self.rows_in += 1;
        self.qi_values_before += self.qi_values(row);
        match &mut self.mode {
            Mode::Streaming(p) => {
                p.row(row, &mut self.rng);
                self.after(row);
                true
            }
            Mode::Table(t) => {
                t.push_row(row);
                false
            }
        }
    }

    /// Runs the whole-table transforms; the rows to write, if they were held.
    pub fn finish(&mut self, transforms: &Transforms) -> Result<Option<Table>, IdentityError> {
        match std::mem::replace(&mut self.mode, Mode::Table(Table::default())) {
            Mode::Streaming(p) => {
                self.outcomes = p.into_outcomes();
                Ok(None)
            }
            Mode::Table(mut t) => {
                self.memory = t.memory();
                self.outcomes = transforms.run_table(&mut t, &mut self.rng)?;
                let width = t.names().len();
                let mut row = vec![Value::Null; width];
                for i in 0..t.rows() {
                    for (c, cell) in row.iter_mut().enumerate() {
                        *cell = t.column(c)[i].clone();
                    }
                    self.after(&row);
                }
                Ok(Some(t))
            }
        }
    }

    /// The report, given the risk before the transforms and the limits.
    pub fn report(
        self,
        before: Option<RiskAssessment>,
        limits: &RiskLimits,
        quasi_identifiers: Vec<String>,
    ) -> (TransformReport, Option<RiskAssessment>) {
        let after = self
            .risk_after
            .as_ref()
            .map(|acc| acc.assess(limits, quasi_identifiers));
        let streaming = matches!(self.mode, Mode::Streaming(_)) || self.memory == 0;
        (
            TransformReport {
                outcomes: self.outcomes,
                streaming,
                rows_held: if streaming { 0 } else { self.rows_in },
                memory_bytes: self.memory as u64,
                rows_in: self.rows_in,
                rows_out: self.rows_out,
                qi_values_before: self.qi_values_before,
                qi_values_after: self.qi_values_after,
                risk_before: before,
            },
            after,
        )
    }
}

/// What the transforms did, for the prep report: counts and parameters, never a value.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformReport {
    pub outcomes: Vec<Outcome>,
    /// True when rows streamed through (nothing held in memory).
    pub streaming: bool,
    pub rows_held: u64,
    /// Bytes of the rows held in memory (approximate: values and their text).
    pub memory_bytes: u64,
    pub rows_in: u64,
    pub rows_out: u64,
    pub qi_values_before: u64,
    pub qi_values_after: u64,
    /// The risk over the generalised quasi-identifiers before any transform.
    pub risk_before: Option<RiskAssessment>,
}

impl TransformReport {
    /// Limits of the transforms themselves that were not met.
    pub fn breaches(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter_map(|o| o.breach.clone())
            .collect()
    }

    /// Share of non-NULL quasi-identifier values blanked (or lost with dropped rows).
    pub fn qi_suppressed_share(&self) -> f64 {
        if self.qi_values_before == 0 {
            0.0
        } else {
            1.0 - self.qi_values_after as f64 / self.qi_values_before as f64
        }
    }

    /// The report's section, Markdown.
    pub fn to_markdown(&self, after: Option<&RiskAssessment>, s: &mut String) {
        let _ = writeln!(s, "\n## Anonymisation transforms\n");
        let _ = writeln!(
            s,
            "Applied in this order after generalisation. None of them is differential privacy.\n"
        );
        if self.streaming {
            let _ = writeln!(
                s,
                "Rows streamed through the transforms: nothing was held in memory.\n"
            );
        } else {
            let _ = writeln!(
                s,
                "Whole-column transforms held the {} prepared rows in memory (about {} MiB); no untransformed row was written to disk.\n",
                self.rows_held,
                format_number(self.memory_bytes as f64 / (1024.0 * 1024.0), 1)
            );
        }
        let _ = writeln!(
            s,
            "| # | transform | parameters | values | changed | blanked | rows dropped | mean abs. change | notes |"
        );
        let _ = writeln!(s, "|---:|---|---|---:|---:|---:|---:|---:|---|");
        for (i, o) in self.outcomes.iter().enumerate() {
            let mut notes = o.notes.clone();
            if let Some(b) = &o.breach {
                notes.push(format!("**target not met**: {b}"));
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                o.transform,
                o.parameters,
                o.values,
                o.changed,
                o.suppressed,
                o.rows_dropped,
                o.mean_abs_change()
                    .map_or("-".to_owned(), |m| format_number(m, 4)),
                notes.join("; ")
            );
        }
        let _ = writeln!(
            s,
            "\n### Risk and utility, before and after the transforms\n"
        );
        let _ = writeln!(s, "| | before | after |");
        let _ = writeln!(s, "|---|---:|---:|");
        let _ = writeln!(s, "| rows | {} | {} |", self.rows_in, self.rows_out);
        if let (Some(b), Some(a)) = (&self.risk_before, after) {
            let _ = writeln!(s, "| equivalence classes | {} | {} |", b.classes, a.classes);
            let _ = writeln!(s, "| k-anonymity | {} | {} |", b.k_anonymity, a.k_anonymity);
            let _ = writeln!(
                s,
                "| unique records | {} | {} |",
                percent(b.unique_share),
                percent(a.unique_share)
            );
            let _ = writeln!(
                s,
                "| records in classes below k={} | {} | {} |",
                a.k,
                percent(b.below_k_share),
                percent(a.below_k_share)
            );
            if let (Some(lb), Some(la), Some(col)) = (b.l_diversity, a.l_diversity, &a.sensitive) {
                let _ = writeln!(
                    s,
                    "| l-diversity of `{col}` | {} | {} |",
                    display_l(lb),
                    display_l(la)
                );
            }
        }
        let _ = writeln!(
            s,
            "| quasi-identifier values present | {} | {} ({} suppressed) |",
            self.qi_values_before,
            self.qi_values_after,
            percent(self.qi_suppressed_share())
        );
        for o in self
            .outcomes
            .iter()
            .filter(|o| o.transform.starts_with("noise"))
        {
            let _ = writeln!(
                s,
                "| mean absolute change, {} | 0 | {} |",
                o.transform,
                o.mean_abs_change()
                    .map_or("-".to_owned(), |m| format_number(m, 4))
            );
        }
    }
}
