//! `cleanroom prepare`: on-premises preparation of a CSV or Parquet file for upload. Runs
//! locally without a server or an async runtime; the work is in `cleanroom-identity`.
//!
//! Exit status: 0 prepared (warnings allowed), 1 error, 3 refused (a re-identification risk
//! limit breached or an anonymisation transform's target not met, with action `refuse`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use cleanroom_identity::IdentityError;
use cleanroom_identity::config::{EXAMPLE_CONFIG, PrepareConfig};
use cleanroom_identity::prepare::{
    OutputPaths, Progress, ProgressUnit, default_threads, prepare_with_threads,
};
use cleanroom_identity::pseudonym::{PseudonymKey, SECRET_ENV, read_secret_file, trim_secret};
use cleanroom_identity::report::{OutputFile, PrepReport};
use indicatif::{ProgressBar, ProgressStyle};
use zeroize::Zeroizing;

/// Exit status when a risk limit or a transform target (e.g. suppression `max_share`) is not
/// met and the action is `refuse`.
pub const EXIT_REFUSED: u8 = 3;

#[derive(Args, Clone, Debug)]
pub struct PrepareArgs {
    /// The prepare configuration (TOML): what each column is. See --example-config.
    #[arg(long, required_unless_present = "example_config")]
    pub config: Option<PathBuf>,
    /// The CSV (with a header line) or Parquet file to prepare.
    #[arg(long, required_unless_present = "example_config")]
    pub input: Option<PathBuf>,
    /// The Parquet file to write; its upload schema goes next to it as <stem>.schema.toml.
    #[arg(long, required_unless_present = "example_config")]
    pub output: Option<PathBuf>,
    /// Where to write the prep report (Markdown); default <stem>.report.md next to the output.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// File holding the collaboration's shared secret (at least 16 bytes). Without it the
    /// secret is read from the CLEANROOM_PREP_SECRET environment variable.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Worker threads preparing batches in parallel (default: all cores). The outputs are the
    /// same byte for byte whatever the number.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print a commented example configuration and exit.
    #[arg(long)]
    pub example_config: bool,
}

/// Runs `cleanroom prepare` and returns the process's exit status.
pub fn main(args: &PrepareArgs, json: bool) -> ExitCode {
    match run(args, json) {
        Ok(report) if report.refused => ExitCode::from(EXIT_REFUSED),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            crate::report(&e, json);
            ExitCode::FAILURE
        }
    }
}

fn run(args: &PrepareArgs, json: bool) -> Result<PrepReport> {
    if args.example_config {
        print!("{EXAMPLE_CONFIG}");
        return Ok(empty_report());
    }
    let (Some(config_path), Some(input), Some(output)) = (&args.config, &args.input, &args.output)
    else {
        bail!("--config, --input and --output are required");
    };
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config = PrepareConfig::from_toml(&text).map_err(|e| located(config_path, e))?;
    if !input.is_file() {
        bail!("{} does not exist or is not a file", input.display());
    }
    let secret = read_secret(args.secret_file.as_deref())?;
    let key = PseudonymKey::derive(&secret, config.collaboration())?;
    drop(secret);

    let paths = OutputPaths::next_to(output);
    if paths.upload == *input {
        bail!("--output must not be the input file");
    }
    let report_path = args.report.clone().unwrap_or_else(|| {
        let stem = output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "prepared".into());
        output.with_file_name(format!("{stem}.report.md"))
    });

    let bar = if args.quiet || json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    let mut on_progress = |p: Progress| match p {
        Progress::Start { total, unit } => {
            bar.set_length(total);
            let template = match unit {
                ProgressUnit::Bytes => {
                    "  preparing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
                }
                ProgressUnit::Rows => "  preparing [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
        }
        Progress::At(pos) => bar.set_position(pos),
    };
    let threads = args.threads.map_or_else(default_threads, usize::from);
    let report = prepare_with_threads(&config, &key, input, &paths, threads, &mut on_progress);
    bar.finish_and_clear();
    let report = report.map_err(anyhow::Error::from)?;

    std::fs::write(&report_path, report.to_markdown())
        .with_context(|| format!("cannot write the report {}", report_path.display()))?;

    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&report, &report_path))?
        );
    } else {
        print_summary(&report, &report_path);
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if report.refused {
        eprintln!(
            "error: refused: {}; nothing was written (see {})",
            refusal_cause(&report),
            report_path.display()
        );
    }
    Ok(report)
}

/// Why a refused report was refused: a risk limit, a transform target, or both.
fn refusal_cause(report: &PrepReport) -> String {
    let mut causes = Vec::new();
    if report.risk.as_ref().is_some_and(|r| r.refused()) {
        causes.push("a re-identification risk limit was breached");
    }
    if report
        .transforms
        .as_ref()
        .is_some_and(|t| !t.breaches().is_empty())
    {
        causes.push("an anonymisation transform's target was not met");
    }
    if causes.is_empty() {
        causes.push("the risk check refused the output");
    }
    causes.join(" and ")
}

fn located(path: &Path, e: IdentityError) -> anyhow::Error {
    anyhow::anyhow!("{}: {e}", path.display())
}

fn read_secret(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(path) = file {
        return Ok(read_secret_file(path)?);
    }
    match std::env::var_os(SECRET_ENV) {
        Some(v) => {
            let raw = Zeroizing::new(v.into_encoded_bytes());
            Ok(trim_secret(&raw))
        }
        None => bail!(
            "no shared secret: pass --secret-file PATH or set {SECRET_ENV} (never on the command line)"
        ),
    }
}

fn empty_report() -> PrepReport {
    PrepReport {
        input: PathBuf::new(),
        input_format: cleanroom_identity::report::InputFormat::Csv,
        collaboration: String::new(),
        gmail_rules: false,
        default_region: String::new(),
        rows_read: 0,
        rows_written: 0,
        rows_dropped: Default::default(),
        columns_dropped: Vec::new(),
        columns: Vec::new(),
        outputs: Vec::new(),
        risk: None,
        transforms: None,
        warnings: Vec::new(),
        refused: false,
        files: Vec::new(),
        elapsed: std::time::Duration::ZERO,
    }
}

fn print_summary(r: &PrepReport, report_path: &Path) {
    let th = crate::output::thousands;
    println!(
        "Read {} rows ({}), wrote {}, dropped {} in {:.1} s.",
        th(r.rows_read),
        r.input_format.as_str(),
        th(r.rows_written),
        th(r.rows_dropped_total()),
        r.elapsed.as_secs_f64()
    );
    for c in &r.columns {
        println!(
            "  {:<24} valid {:>12}  missing {:>10}  invalid {:>10}",
            c.output,
            th(c.valid),
            th(c.missing),
            th(c.invalid_total())
        );
    }
    if let Some(risk) = &r.risk {
        println!(
            "Risk over {}: k-anonymity {}, unique {:.2} %, below k={} {:.2} %{}",
            risk.quasi_identifiers.join(", "),
            risk.k_anonymity,
            risk.unique_share * 100.0,
            risk.k,
            risk.below_k_share * 100.0,
            risk.l_diversity
                .map(|l| format!(", l-diversity {}", cleanroom_identity::risk::display_l(l)))
                .unwrap_or_default()
        );
    }
    for f in &r.files {
        println!("Wrote {}", f.display());
    }
    println!("Report: {}", report_path.display());
}

fn to_json(r: &PrepReport, report_path: &Path) -> serde_json::Value {
    use serde_json::json;
    let columns: Vec<_> = r
        .columns
        .iter()
        .map(|c| {
            let invalid: serde_json::Map<String, serde_json::Value> = c
                .invalid
                .iter()
                .map(|(why, n)| (why.to_string(), json!(n)))
                .collect();
            json!({
                "input": c.input,
                "output": c.output,
                "treatment": c.treatment,
                "valid": c.valid,
                "missing": c.missing,
                "invalid": c.invalid_total(),
                "invalid_by_reason": invalid,
            })
        })
        .collect();
    let risk = r.risk.as_ref().map(|k| {
        json!({
            "quasi_identifiers": k.quasi_identifiers,
            "records": k.records,
            "classes": k.classes,
            "k_anonymity": k.k_anonymity,
            "unique_records": k.unique_records,
            "unique_share": k.unique_share,
            "k": k.k,
            "below_k_records": k.below_k_records,
            "below_k_share": k.below_k_share,
            "sensitive": k.sensitive,
            "l_diversity": k.l_diversity,
            "findings": k.findings.iter().map(|f| json!({
                "limit": f.limit, "value": f.value, "breached": f.breached
            })).collect::<Vec<_>>(),
            "action": k.action.as_str(),
        })
    });
    json!({
        "refused": r.refused,
        "rows_read": r.rows_read,
        "rows_written": r.rows_written,
        "rows_dropped": r.rows_dropped,
        "columns_dropped": r.columns_dropped,
        "columns": columns,
        "risk": risk,
        "outputs": r.outputs.iter().map(|o| json!({
            "name": o.name,
            "type": o.ty.as_str(),
            "role": o.role.as_str(),
            "file": match o.file { OutputFile::Upload => "upload", OutputFile::Activation => "activation" },
        })).collect::<Vec<_>>(),
        "files": r.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "report": report_path.display().to_string(),
        "warnings": r.warnings,
        "elapsed_seconds": r.elapsed.as_secs_f64(),
    })
}
