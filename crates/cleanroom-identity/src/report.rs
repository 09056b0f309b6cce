//! The prep report: what was read, what became of each column, the risk assessment, what was
//! written. Aggregates only: it never contains a value from the data.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use cleanroom_core::schema::{ColumnRole, ColumnType};

use crate::normalise::Invalid;
use crate::risk::{RiskAssessment, display_l, percent};

/// The kind of input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Csv,
    Parquet,
}

impl InputFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            InputFormat::Csv => "CSV",
            InputFormat::Parquet => "Parquet",
        }
    }
}

/// What became of one configured input column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnReport {
    /// Input column (header).
    pub input: String,
    /// Output column.
    pub output: String,
    /// What was done (`email identifier → HMAC-SHA-256`, `age bands`, ...).
    pub treatment: String,
    /// Values that came through (over all rows read).
    pub valid: u64,
    /// Empty values.
    pub missing: u64,
    /// Values refused, by reason.
    pub invalid: BTreeMap<Invalid, u64>,
}

impl ColumnReport {
    pub fn invalid_total(&self) -> u64 {
        self.invalid.values().sum()
    }
}

/// Which file an output column is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFile {
    /// The Parquet for `cleanroom dataset upload`.
    Upload,
    /// The on-premises activation file (plain hashes).
    Activation,
}

/// One output column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputColumn {
    pub name: String,
    pub ty: ColumnType,
    pub role: ColumnRole,
    pub file: OutputFile,
}

/// Everything `cleanroom prepare` did.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepReport {
    pub input: PathBuf,
    pub input_format: InputFormat,
    pub collaboration: String,
    pub gmail_rules: bool,
    pub default_region: String,
    pub rows_read: u64,
    pub rows_written: u64,
    /// Rows not written, by reason.
    pub rows_dropped: BTreeMap<String, u64>,
    /// Input columns present in the file but not in the configuration (dropped).
    pub columns_dropped: Vec<String>,
    pub columns: Vec<ColumnReport>,
    pub outputs: Vec<OutputColumn>,
    /// The risk after the anonymisation transforms, when there are any (the one the limits
    /// judge); the risk before them is in `transforms`.
    pub risk: Option<RiskAssessment>,
    /// What the anonymisation transforms did, when configured.
    pub transforms: Option<crate::transform::stage::TransformReport>,
    pub warnings: Vec<String>,
    /// True when a risk limit with action `refuse` was breached: nothing was written.
    pub refused: bool,
    /// Files written (empty when refused).
    pub files: Vec<PathBuf>,
    pub elapsed: Duration,
}

fn n(x: u64) -> String {
    let s = x.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl PrepReport {
    /// Rows dropped in total.
    pub fn rows_dropped_total(&self) -> u64 {
        self.rows_dropped.values().sum()
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        self.summary_markdown(&mut s);
        self.warnings_markdown(&mut s);
        self.columns_markdown(&mut s);
        let _ = writeln!(s, "\n## Re-identification risk\n");
        match &self.risk {
            None => {
                let _ = writeln!(
                    s,
                    "Not assessed: the configuration names no quasi-identifiers."
                );
            }
            Some(r) => risk_markdown(r, &mut s),
        }
        if let Some(t) = &self.transforms {
            t.to_markdown(self.risk.as_ref(), &mut s);
        }
        self.output_markdown(&mut s);
        s
    }

    /// The title, verdict and the run's facts.
    fn summary_markdown(&self, s: &mut String) {
        let _ = writeln!(s, "# Prep report\n");
        let verdict = if self.refused {
            "**REFUSED**: a re-identification risk limit was breached; no output was written."
        } else {
            "Prepared."
        };
        let _ = writeln!(s, "{verdict}\n");
        let _ = writeln!(
            s,
            "- input: `{}` ({})",
            self.input.display(),
            self.input_format.as_str()
        );
        let _ = writeln!(s, "- collaboration label: `{}`", self.collaboration);
        let _ = writeln!(
            s,
            "- normalisation: default region {}, Gmail rules {}",
            self.default_region,
            if self.gmail_rules { "on" } else { "off" }
        );
        let _ = writeln!(
            s,
            "- rows: {} read, {} written, {} dropped",
            n(self.rows_read),
            n(self.rows_written),
            n(self.rows_dropped_total())
        );
        for (why, count) in &self.rows_dropped {
            let _ = writeln!(s, "  - {}: {why}", n(*count));
        }
        let _ = writeln!(s, "- time: {:.2} s", self.elapsed.as_secs_f64());
        if !self.columns_dropped.is_empty() {
            let _ = writeln!(
                s,
                "- input columns dropped (not in the configuration): {}",
                self.columns_dropped
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }

    /// The warnings section, when there are any.
    fn warnings_markdown(&self, s: &mut String) {
        if !self.warnings.is_empty() {
            let _ = writeln!(s, "\n## Warnings\n");
            for w in &self.warnings {
                let _ = writeln!(s, "- {w}");
            }
        }
    }

    /// The per-column table of valid, missing and invalid values.
    fn columns_markdown(&self, s: &mut String) {
        let _ = writeln!(s, "\n## Columns\n");
        let _ = writeln!(
            s,
            "Counts are over all rows read. Invalid values are written as NULL and never match.\n"
        );
        let _ = writeln!(
            s,
            "| input | output | treatment | valid | missing | invalid | invalid by reason |"
        );
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|---|");
        for c in &self.columns {
            let reasons = c
                .invalid
                .iter()
                .map(|(why, k)| format!("{why}: {}", n(*k)))
                .collect::<Vec<_>>()
                .join("; ");
            let _ = writeln!(
                s,
                "| `{}` | `{}` | {} | {} | {} | {} | {} |",
                c.input.replace('|', "\\|"),
                c.output,
                c.treatment,
                n(c.valid),
                n(c.missing),
                n(c.invalid_total()),
                reasons
            );
        }
    }

    /// The files written and their columns, or that nothing was.
    fn output_markdown(&self, s: &mut String) {
        let _ = writeln!(s, "\n## Output\n");
        if self.refused {
            let _ = writeln!(s, "Nothing was written.");
        } else {
            for f in &self.files {
                let _ = writeln!(s, "- `{}`", f.display());
            }
            let _ = writeln!(s, "\n| column | type | role | file |");
            let _ = writeln!(s, "|---|---|---|---|");
            for c in &self.outputs {
                let file = match c.file {
                    OutputFile::Upload => "upload",
                    OutputFile::Activation => "activation (stays on premises)",
                };
                let _ = writeln!(s, "| `{}` | {} | {} | {file} |", c.name, c.ty, c.role);
            }
        }
    }
}

/// The body of the risk section for an assessment: metrics, class sizes and limits.
fn risk_markdown(r: &RiskAssessment, s: &mut String) {
    let _ = writeln!(
        s,
        "Over the generalised quasi-identifiers {} of the {} rows written (per record, not per person).\n",
        r.quasi_identifiers
            .iter()
            .map(|q| format!("`{q}`"))
            .collect::<Vec<_>>()
            .join(", "),
        n(r.records)
    );
    let _ = writeln!(s, "| metric | value |");
    let _ = writeln!(s, "|---|---:|");
    let _ = writeln!(s, "| equivalence classes | {} |", n(r.classes));
    let _ = writeln!(s, "| k-anonymity (smallest class) | {} |", n(r.k_anonymity));
    let _ = writeln!(
        s,
        "| unique records | {} ({}) |",
        n(r.unique_records),
        percent(r.unique_share)
    );
    let _ = writeln!(
        s,
        "| records in classes below k={} | {} ({}) |",
        r.k,
        n(r.below_k_records),
        percent(r.below_k_share)
    );
    if let (Some(l), Some(col)) = (r.l_diversity, &r.sensitive) {
        let _ = writeln!(s, "| l-diversity of `{col}` | {} |", display_l(l));
    }
    let _ = writeln!(s, "\n| class size | classes | records |");
    let _ = writeln!(s, "|---|---:|---:|");
    for b in &r.class_sizes {
        let _ = writeln!(s, "| {} | {} | {} |", b.sizes, n(b.classes), n(b.records));
    }
    if !r.findings.is_empty() {
        let _ = writeln!(s, "\n| limit | value | result |");
        let _ = writeln!(s, "|---|---:|---|");
        for f in &r.findings {
            let result = match (f.breached, r.action) {
                (false, _) => "ok",
                (true, crate::risk::RiskAction::Warn) => "**breached** (warn)",
                (true, crate::risk::RiskAction::Refuse) => "**breached** (refuse)",
            };
            let _ = writeln!(s, "| {} | {} | {result} |", f.limit, f.value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(n(0), "0");
        assert_eq!(n(999), "999");
        assert_eq!(n(1000), "1,000");
        assert_eq!(n(10_000_000), "10,000,000");
    }
}
