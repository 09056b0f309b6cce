//! The streaming prepare pipeline: read CSV or Parquet in batches, normalise, pseudonymise and
//! generalise row by row, write Parquet in batches, assess risk, then move the outputs into
//! place atomically (or, when refused, write nothing).
//!
//! Batches are prepared by worker threads, each on its own forked `Plan`, and written in
//! input order by one writer thread on the main plan. The anonymisation transforms run there
//! too, on every row in input order: with transforms configured, a worker keeps its prepared
//! upload rows as cells (`BatchOut::held`) and the writer transforms them before they reach an
//! upload batch, so no untransformed row is written.
//!
//! Memory is bounded by the batches in flight, one output row group and the risk class map
//! (one entry per distinct quasi-identifier combination, not per row), unless a whole-column
//! transform holds the prepared rows.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, RecordBatch,
    StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use cleanroom_core::schema::{ColumnRole, ColumnSpec, ColumnType, DatasetSchema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tempfile::NamedTempFile;

use crate::IdentityError;
use crate::activation::{Destination, activation_hash, activation_input_from_base};
use crate::config::{BelowMinimum, PrepareConfig, PrivacyUnit};
use crate::generalise::Generalised;
use crate::normalise::{IdKind, Invalid, email_base, gmail_canonical, normalise, phone_e164};
use crate::pseudonym::PseudonymKey;
use crate::report::{ColumnReport, InputFormat, OutputColumn, OutputFile, PrepReport};
use crate::risk::RiskAccumulator;
use crate::transform::stage::Stage;

/// Rows per output record batch (and per progress report).
pub const BATCH_ROWS: usize = 64 * 1024;
/// Rows per Parquet row group (bounds the writer's buffer).
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Longest privacy unit value kept as written, in bytes.
pub const MAX_UNIT_BYTES: usize = 1024;

/// Where the outputs go, all next to each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPaths {
    /// The Parquet for `cleanroom dataset upload`.
    pub upload: PathBuf,
    /// Its upload schema (`<stem>.schema.toml`).
    pub schema: PathBuf,
    /// The on-premises activation file (`<stem>.activation.parquet`), when asked for.
    pub activation: PathBuf,
}

impl OutputPaths {
    /// `prepared.parquet` → `prepared.schema.toml`, `prepared.activation.parquet`.
    pub fn next_to(upload: &Path) -> Self {
        let stem = upload
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "prepared".into());
        let dir = upload.parent().unwrap_or(Path::new(""));
        OutputPaths {
            upload: upload.to_path_buf(),
            schema: dir.join(format!("{stem}.schema.toml")),
            activation: dir.join(format!("{stem}.activation.parquet")),
        }
    }
}

/// How far along the input the pipeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Sent once: the input's size in bytes (CSV) or rows (Parquet).
    Start { total: u64, unit: ProgressUnit },
    /// Position in the same unit.
    At(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressUnit {
    Bytes,
    Rows,
}

/// Parquet files start with these four bytes.
const PARQUET_MAGIC: &[u8; 4] = b"PAR1";

/// Parquet when the file starts with `PAR1`, CSV otherwise.
pub fn detect_format(path: &Path) -> Result<InputFormat, IdentityError> {
    let mut f =
        File::open(path).map_err(IdentityError::io(format!("cannot open {}", path.display())))?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let k = f
            .read(&mut magic[got..])
            .map_err(IdentityError::io(format!("cannot read {}", path.display())))?;
        if k == 0 {
            break;
        }
        got += k;
    }
    Ok(if got == 4 && &magic == PARQUET_MAGIC {
        InputFormat::Parquet
    } else {
        InputFormat::Csv
    })
}

/// Runs the whole preparation of `input` into `out` on all cores. On a refusal the report
/// says so (`refused`) and nothing is written; every other failure is an error.
pub fn prepare(
    config: &PrepareConfig,
    key: &PseudonymKey,
    input: &Path,
    out: &OutputPaths,
    progress: &mut dyn FnMut(Progress),
) -> Result<PrepReport, IdentityError> {
    prepare_with_threads(config, key, input, out, default_threads(), progress)
}

/// The number of cores this process may use (1 when it cannot be told).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// [`prepare`] with `threads` workers preparing batches in parallel (at least one). Batches
/// are cut at the same input rows and written in input order whatever the number of threads,
/// so the outputs and the report are the same byte for byte as with one thread.
pub fn prepare_with_threads(
    config: &PrepareConfig,
    key: &PseudonymKey,
    input: &Path,
    out: &OutputPaths,
    threads: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<PrepReport, IdentityError> {
    let threads = threads.max(1);
    let started = Instant::now();
    let format = detect_format(input)?;
    let dir = match out.upload.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(IdentityError::InvalidInput(format!(
            "the output directory {} does not exist",
            dir.display()
        )));
    }
    let mut plan = Plan::main(config, key)?;
    let mut sink = Sink::create(&plan, &dir)?;

    let header = match format {
        InputFormat::Csv => run_csv(config, key, input, &mut plan, &mut sink, threads, progress)?,
        InputFormat::Parquet => {
            run_parquet(config, key, input, &mut plan, &mut sink, threads, progress)?
        }
    };

    let qi_names: Vec<String> = config
        .quasi_identifiers()
        .iter()
        .map(|q| q.output.clone())
        .collect();
    let mut risk = plan
        .risk
        .as_ref()
        .map(|acc| acc.assess(config.risk(), qi_names.clone()));
    // ---- anonymisation transforms (crate::transform): the risk after them is the one judged.
    let mut transforms = None;
    if let Some(mut stage) = plan.transform.take() {
        if let Some(table) = stage.finish(config.transforms())? {
            plan.write_table(table, &mut sink)?;
        }
        let (report, after) = stage.report(risk.take(), config.risk(), qi_names);
        risk = after;
        transforms = Some(report);
    }
    let transform_breaches = transforms.as_ref().map_or(Vec::new(), |t| t.breaches());
    let refused = risk.as_ref().is_some_and(|r| r.refused())
        || (!transform_breaches.is_empty()
            && config.risk().action == crate::risk::RiskAction::Refuse);
    plan.drop_masked_outputs(config);

    let mut files = Vec::new();
    if !refused {
        let schema_toml = upload_schema_toml(&plan.outputs, &out.upload)?;
        sink.commit(&out.upload, &out.activation, &out.schema, &schema_toml)?;
        files.push(out.upload.clone());
        files.push(out.schema.clone());
        if plan.has_activation {
            files.push(out.activation.clone());
        }
    }
    // Dropping an uncommitted sink removes its temporary files.
    drop(sink);

    let mut warnings = plan.warnings(config);
    if let Some(r) = &risk {
        for f in r.findings.iter().filter(|f| f.breached) {
            warnings.push(format!(
                "risk limit breached: {} (value {}), action {}",
                f.limit,
                f.value,
                r.action.as_str()
            ));
        }
    } else {
        warnings
            .push("no quasi-identifiers configured: re-identification risk not assessed".into());
    }
    for b in transform_breaches {
        warnings.push(format!(
            "transform target not met: {b}, action {}",
            config.risk().action.as_str()
        ));
    }
    let configured: Vec<&str> = plan.inputs.iter().map(String::as_str).collect();
    let columns_dropped = header
        .into_iter()
        .filter(|h| !configured.contains(&h.as_str()))
        .collect();

    Ok(PrepReport {
        input: input.to_path_buf(),
        input_format: format,
        collaboration: config.collaboration().to_owned(),
        gmail_rules: config.options().gmail_rules,
        default_region: config.options().default_region.clone(),
        rows_read: plan.rows_read,
        rows_written: plan.rows_written,
        rows_dropped: plan.dropped.clone(),
        columns_dropped,
        columns: plan.stats.clone(),
        outputs: plan.outputs.clone(),
        risk,
        transforms,
        warnings,
        refused,
        files: if refused { Vec::new() } else { files },
        elapsed: started.elapsed(),
    })
}

/// An output value of one row (the transforms' value type).
use crate::transform::Value as Cell;

/// `true`/`false`, `yes`/`no`, `1`/`0`, `t`/`f`, `y`/`n`, in any case.
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

enum Builder {
    Text(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Day(Date32Builder),
    Bool(BooleanBuilder),
}

impl Builder {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::Int64 => Builder::Int(Int64Builder::with_capacity(BATCH_ROWS)),
            ColumnType::Float64 => Builder::Float(Float64Builder::with_capacity(BATCH_ROWS)),
            ColumnType::Date => Builder::Day(Date32Builder::with_capacity(BATCH_ROWS)),
            ColumnType::Bool => Builder::Bool(BooleanBuilder::with_capacity(BATCH_ROWS)),
            _ => Builder::Text(StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 64)),
        }
    }

    fn append(&mut self, cell: &Cell) {
        match (self, cell) {
            (Builder::Text(b), Cell::Text(s)) => b.append_value(s),
            (Builder::Int(b), Cell::Int(v)) => b.append_value(*v),
            (Builder::Float(b), Cell::Float(v)) => b.append_value(*v),
            (Builder::Day(b), Cell::Day(v)) => b.append_value(*v),
            (Builder::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (Builder::Text(b), _) => b.append_null(),
            (Builder::Int(b), _) => b.append_null(),
            (Builder::Float(b), _) => b.append_null(),
            (Builder::Day(b), _) => b.append_null(),
            (Builder::Bool(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Day(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// What to do with each configured column, resolved against the input's header.
enum Step {
    Identifier {
        kind: IdKind,
        opts: crate::normalise::NormaliseOptions,
        /// Output index of the pseudonym.
        out: usize,
        /// Activation destinations and their output indices (activation file).
        activation: Vec<(Destination, usize)>,
        /// Activation-file index of the pseudonym copy, when activation is on.
        activation_key: Option<usize>,
    },
    Unit {
        out: usize,
    },
    Quasi {
        index: usize,
        out: usize,
    },
    Dimension {
        ty: ColumnType,
        out: usize,
    },
    Metric {
        ty: ColumnType,
        out: usize,
    },
}

/// Activation-file outputs of one identifier: its pseudonym copy and its hashes.
type ActivationOuts = (Option<usize>, Vec<(Destination, usize)>);

/// The resolved plan and the running counts.
struct Plan<'a> {
    config: &'a PrepareConfig,
    key: &'a PseudonymKey,
    /// Input columns in the order of `steps` (several steps may read one column).
    inputs: Vec<String>,
    /// For each step, the index in `inputs` it reads.
    steps: Vec<(usize, Step)>,
    /// Upload columns then activation columns, in output order.
    outputs: Vec<OutputColumn>,
    upload_width: usize,
    has_activation: bool,
    /// Output index (upload file) of the privacy unit.
    unit_out: usize,
    /// Output index of the sensitive column, if any.
    sensitive_out: Option<usize>,
    quasi_outs: Vec<usize>,
    stats: Vec<ColumnReport>,
    risk: Option<RiskAccumulator>,
    rows_read: u64,
    rows_written: u64,
    dropped: BTreeMap<String, u64>,
    upload_cells: Vec<Cell>,
    activation_cells: Vec<Cell>,
    /// The strings of the previous row's cells, reused for the next row's.
    pool: TextPool,
    upload_builders: Vec<Builder>,
    activation_builders: Vec<Builder>,
    pending: usize,
    /// The anonymisation transforms, when configured: only on the main plan, whose writer
    /// thread runs them on every row in input order (one random stream, maybe all rows held).
    transform: Option<Stage>,
    /// True on a worker's fork when transforms are configured: prepared upload rows are kept
    /// in `held` for the writer's transforms instead of going to the upload builders, so no
    /// untransformed row can reach the upload file.
    hold_rows: bool,
    /// Upload rows prepared but not yet transformed (a fork with `hold_rows`).
    held: Vec<Vec<Cell>>,
    /// Upload columns left out of the file (masked with `drop`).
    masked_out: Vec<bool>,
}

/// Identifiers in output order: the unit's pseudonym first, then the others in file order.
fn identifier_order(config: &PrepareConfig, unit_identifier: Option<usize>) -> Vec<usize> {
    let mut id_order: Vec<usize> = (0..config.identifier_specs().len()).collect();
    if let Some(u) = unit_identifier {
        id_order.retain(|i| *i != u);
        id_order.insert(0, u);
    }
    id_order
}

/// One empty column builder per output column.
fn builders(outputs: &[OutputColumn]) -> Vec<Builder> {
    outputs.iter().map(|o| Builder::new(o.ty)).collect()
}

/// Output indices of the upload file: identifiers (the unit's pseudonym first), the raw
/// unit, quasi-identifiers, dimensions, metrics.
struct UploadLayout {
    /// Output index of the privacy unit.
    unit_out: usize,
    /// Output index of each identifier's pseudonym, by identifier.
    id_outs: HashMap<usize, usize>,
    quasi_outs: Vec<usize>,
    dim_outs: Vec<usize>,
    metric_outs: Vec<usize>,
}

/// Adds an upload-file output column; returns its index.
fn push_upload(
    outputs: &mut Vec<OutputColumn>,
    name: &str,
    ty: ColumnType,
    role: ColumnRole,
) -> usize {
    outputs.push(OutputColumn {
        name: name.to_owned(),
        ty,
        role,
        file: OutputFile::Upload,
    });
    outputs.len() - 1
}

impl UploadLayout {
    fn new(
        config: &PrepareConfig,
        id_order: &[usize],
        unit_identifier: Option<usize>,
        outputs: &mut Vec<OutputColumn>,
    ) -> Self {
        let mut unit_out = 0;
        if let PrivacyUnit::Column { output, .. } = config.privacy_unit() {
            unit_out = push_upload(outputs, output, ColumnType::String, ColumnRole::PrivacyUnit);
        }
        let mut id_outs = HashMap::new();
        for &i in id_order {
            let s = &config.identifier_specs()[i];
            let role = if Some(i) == unit_identifier {
                ColumnRole::PrivacyUnit
            } else {
                ColumnRole::Identifier
            };
            let out = push_upload(outputs, &s.output, ColumnType::String, role);
            if Some(i) == unit_identifier {
                unit_out = out;
            }
            id_outs.insert(i, out);
        }
        let quasi_outs = config
            .quasi_identifiers()
            .iter()
            .map(|q| {
                push_upload(
                    outputs,
                    &q.output,
                    q.generalisation.output_type(),
                    ColumnRole::Dimension,
                )
            })
            .collect();
        let dim_outs = config
            .dimensions()
            .iter()
            .map(|d| push_upload(outputs, &d.output, d.ty, ColumnRole::Dimension))
            .collect();
        let metric_outs = config
            .metrics()
            .iter()
            .map(|m| push_upload(outputs, &m.output, m.ty, ColumnRole::Metric))
            .collect();
        UploadLayout {
            unit_out,
            id_outs,
            quasi_outs,
            dim_outs,
            metric_outs,
        }
    }
}

/// Output indices of the activation file (counted from its first column): the privacy
/// unit, then per activated identifier its pseudonym and hashes.
#[derive(Default)]
struct ActivationLayout {
    width: usize,
    unit: Option<usize>,
    ids: HashMap<usize, ActivationOuts>,
}

impl ActivationLayout {
    fn new(
        config: &PrepareConfig,
        id_order: &[usize],
        unit_identifier: Option<usize>,
        outputs: &mut Vec<OutputColumn>,
    ) -> Self {
        let mut width = 0;
        let mut act = |outputs: &mut Vec<OutputColumn>, name: &str, role| {
            outputs.push(OutputColumn {
                name: name.to_owned(),
                ty: ColumnType::String,
                role,
                file: OutputFile::Activation,
            });
            width += 1;
            width - 1
        };
        let unit = Some(act(
            outputs,
            config.privacy_unit_output(),
            ColumnRole::PrivacyUnit,
        ));
        let mut ids: HashMap<usize, ActivationOuts> = HashMap::new();
        for &i in id_order {
            let s = &config.identifier_specs()[i];
            if s.activation.is_empty() {
                continue;
            }
            let key_col = if Some(i) == unit_identifier {
                None
            } else {
                Some(act(outputs, &s.output, ColumnRole::Identifier))
            };
            let cols = s
                .activation
                .iter()
                .map(|(d, name)| (*d, act(outputs, name, ColumnRole::Identifier)))
                .collect();
            ids.insert(i, (key_col, cols));
        }
        ActivationLayout { width, unit, ids }
    }
}

/// The steps being resolved, the input columns they read and their report rows.
#[derive(Default)]
struct StepList {
    inputs: Vec<String>,
    steps: Vec<(usize, Step)>,
    stats: Vec<ColumnReport>,
}

impl StepList {
    /// Adds a step reading input `column` (listed once however many steps read it).
    fn push(&mut self, column: &str, step: Step, output: &str, treatment: String) {
        let input = match self.inputs.iter().position(|c| c == column) {
            Some(i) => i,
            None => {
                self.inputs.push(column.to_owned());
                self.inputs.len() - 1
            }
        };
        self.steps.push((input, step));
        self.stats.push(ColumnReport {
            input: column.to_owned(),
            output: output.to_owned(),
            treatment,
            valid: 0,
            missing: 0,
            invalid: BTreeMap::new(),
        });
    }

    /// The identifier steps, in output order.
    fn push_identifiers(
        &mut self,
        config: &PrepareConfig,
        id_order: &[usize],
        unit_identifier: Option<usize>,
        id_outs: &HashMap<usize, usize>,
        mut activation: ActivationLayout,
    ) {
        for &i in id_order {
            let s = &config.identifier_specs()[i];
            let is_unit = Some(i) == unit_identifier;
            let (activation_key, act_cols) =
                activation.ids.remove(&i).unwrap_or((None, Vec::new()));
            let activation_key = if is_unit {
                activation.unit
            } else {
                activation_key
            };
            let step = Step::Identifier {
                kind: s.kind,
                opts: s.options.clone(),
                out: id_outs.get(&i).copied().unwrap_or_default(),
                activation: act_cols,
                activation_key,
            };
            self.push(&s.column, step, &s.output, identifier_treatment(s, is_unit));
        }
    }

    /// The quasi-identifier, dimension and metric steps.
    fn push_columns(&mut self, config: &PrepareConfig, upload: &UploadLayout) {
        for (qi, (q, &out)) in config
            .quasi_identifiers()
            .iter()
            .zip(&upload.quasi_outs)
            .enumerate()
        {
            let treatment = format!("quasi-identifier, {}", q.generalisation.describe());
            self.push(
                &q.column,
                Step::Quasi { index: qi, out },
                &q.output,
                treatment,
            );
        }
        for (d, &out) in config.dimensions().iter().zip(&upload.dim_outs) {
            let treatment = if d.ty == ColumnType::Bool {
                "dimension, read as a boolean".into()
            } else {
                "dimension, kept as written".into()
            };
            self.push(
                &d.column,
                Step::Dimension { ty: d.ty, out },
                &d.output,
                treatment,
            );
        }
        for (m, &out) in config.metrics().iter().zip(&upload.metric_outs) {
            let treatment = format!("metric, {}", m.ty);
            self.push(
                &m.column,
                Step::Metric { ty: m.ty, out },
                &m.output,
                treatment,
            );
        }
    }
}

/// The report's treatment line of an identifier.
fn identifier_treatment(s: &crate::config::IdentifierSpec, is_unit: bool) -> String {
    let mut treatment = format!("{} identifier → HMAC-SHA-256", s.kind);
    if is_unit {
        treatment.push_str(" (privacy unit)");
    }
    if !s.activation.is_empty() {
        treatment.push_str(&format!(
            "; SHA-256 for {}",
            s.activation
                .iter()
                .map(|(d, _)| d.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    treatment
}

const DROP_UNIT: &str = "privacy unit missing or invalid";

impl<'a> Plan<'a> {
    fn new(config: &'a PrepareConfig, key: &'a PseudonymKey) -> Result<Self, IdentityError> {
        let unit_identifier = match config.privacy_unit() {
            PrivacyUnit::Identifier(i) => Some(*i),
            PrivacyUnit::Column { .. } => None,
        };
        let id_order = identifier_order(config, unit_identifier);
        let mut outputs = Vec::new();
        let upload = UploadLayout::new(config, &id_order, unit_identifier, &mut outputs);
        let upload_width = outputs.len();
        let has_activation = config.has_activation();
        let activation = if has_activation {
            ActivationLayout::new(config, &id_order, unit_identifier, &mut outputs)
        } else {
            ActivationLayout::default()
        };
        let activation_width = activation.width;

        // Steps in the order outputs are computed.
        let mut steps = StepList::default();
        if let PrivacyUnit::Column { column, output } = config.privacy_unit() {
            steps.push(
                column,
                Step::Unit {
                    out: upload.unit_out,
                },
                output,
                "privacy unit, kept as written".into(),
            );
        }
        steps.push_identifiers(
            config,
            &id_order,
            unit_identifier,
            &upload.id_outs,
            activation,
        );
        steps.push_columns(config, &upload);

        let sensitive_out = config
            .risk()
            .sensitive
            .as_ref()
            .and_then(|name| outputs[..upload_width].iter().position(|o| &o.name == name));
        let risk = (!config.quasi_identifiers().is_empty())
            .then(|| RiskAccumulator::new(sensitive_out.is_some()));
        let upload_builders = builders(&outputs[..upload_width]);
        let activation_builders = builders(&outputs[upload_width..]);
        let dropped = config.transforms().dropped_columns();
        let masked_out = outputs[..upload_width]
            .iter()
            .map(|o| dropped.contains(&o.name.as_str()))
            .collect();
        Ok(Plan {
            transform: None,
            hold_rows: !config.transforms().is_empty(),
            held: Vec::new(),
            masked_out,
            config,
            key,
            inputs: steps.inputs,
            steps: steps.steps,
            upload_width,
            has_activation,
            unit_out: upload.unit_out,
            sensitive_out,
            quasi_outs: upload.quasi_outs,
            stats: steps.stats,
            risk,
            rows_read: 0,
            rows_written: 0,
            dropped: BTreeMap::new(),
            upload_cells: vec![Cell::Null; upload_width],
            activation_cells: vec![Cell::Null; activation_width],
            pool: TextPool::default(),
            upload_builders,
            activation_builders,
            pending: 0,
            outputs,
        })
    }

    /// The main plan: the one that absorbs the workers' batches and, when transforms are
    /// configured, runs them (see `transform`).
    fn main(config: &'a PrepareConfig, key: &'a PseudonymKey) -> Result<Self, IdentityError> {
        let mut plan = Plan::new(config, key)?;
        if !config.transforms().is_empty() {
            plan.transform = Some(Stage::new(
                config.transforms(),
                plan.outputs[..plan.upload_width]
                    .iter()
                    .map(|o| o.name.clone())
                    .collect(),
                plan.quasi_outs.clone(),
                plan.sensitive_out,
                None,
            )?);
        }
        Ok(plan)
    }

    fn upload_schema(&self) -> SchemaRef {
        let written: Vec<OutputColumn> = self.outputs[..self.upload_width]
            .iter()
            .zip(&self.masked_out)
            .filter(|(_, m)| !**m)
            .map(|(o, _)| o.clone())
            .collect();
        arrow_schema(&written)
    }

    /// Runs the transforms on a worker's held rows (in input order, on the main plan) and
    /// writes the rows they release.
    fn transform_held(
        &mut self,
        held: Vec<Vec<Cell>>,
        sink: &mut Sink,
    ) -> Result<(), IdentityError> {
        let Some(stage) = &mut self.transform else {
            return Err(IdentityError::Internal(
                "rows held for transforms but none configured".into(),
            ));
        };
        for mut row in held {
            if stage.row(&mut row) {
                for (b, c) in self.upload_builders.iter_mut().zip(&row) {
                    b.append(c);
                }
                self.rows_written += 1;
                self.pending += 1;
            }
        }
        sink.flush(self)
    }

    /// Writes the rows the transforms held, batch by batch.
    fn write_table(
        &mut self,
        mut table: crate::transform::Table,
        sink: &mut Sink,
    ) -> Result<(), IdentityError> {
        let mut row = vec![Cell::Null; self.upload_width];
        for i in 0..table.rows() {
            table.take_row(i, &mut row);
            for (b, c) in self.upload_builders.iter_mut().zip(&row) {
                b.append(c);
            }
            self.rows_written += 1;
            self.pending += 1;
            if self.pending == BATCH_ROWS {
                sink.flush(self)?;
            }
        }
        sink.flush(self)
    }

    /// Leaves the columns masked with `drop` out of the listed outputs.
    fn drop_masked_outputs(&mut self, config: &PrepareConfig) {
        let dropped = config.transforms().dropped_columns();
        if dropped.is_empty() {
            return;
        }
        let before = self.outputs.len();
        self.outputs
            .retain(|o| !(o.file == OutputFile::Upload && dropped.contains(&o.name.as_str())));
        self.upload_width -= before - self.outputs.len();
    }

    fn activation_schema(&self) -> SchemaRef {
        arrow_schema(&self.outputs[self.upload_width..])
    }

    /// Processes one input row (`fields` in the order of `inputs`, empty for NULL). Runs on
    /// workers' forks only.
    fn row(&mut self, fields: &[&str]) {
        self.rows_read += 1;
        self.pool.recycle(&mut self.upload_cells);
        self.pool.recycle(&mut self.activation_cells);
        let pool = &mut self.pool;
        let mut drop_reason: Option<String> = None;
        for (si, (input, step)) in self.steps.iter().enumerate() {
            let raw = fields[*input];
            let stats = &mut self.stats[si];
            let outcome: Result<(), Invalid> = match step {
                Step::Identifier {
                    kind,
                    opts,
                    out,
                    activation,
                    activation_key,
                } => {
                    let (matched, base) =
                        identifier_forms(*kind, raw, opts, !activation.is_empty());
                    if let Some(base) = &base {
                        for (dest, col) in activation {
                            if let Ok(v) = activation_input_from_base(*dest, *kind, base) {
                                self.activation_cells[*col] =
                                    Cell::Text(activation_hash(*dest, &v));
                            }
                        }
                    }
                    matched.map(|matched| {
                        let p = self.key.pseudonym_hex(*kind, &matched);
                        if let Some(k) = activation_key {
                            self.activation_cells[*k] = pool.text(p.as_str());
                        }
                        self.upload_cells[*out] = pool.text(p.as_str());
                    })
                }
                Step::Unit { out } => unit_value(raw).map(|v| {
                    self.upload_cells[*out] = pool.text(v);
                    if self.has_activation {
                        self.activation_cells[0] = pool.text(v);
                    }
                }),
                Step::Quasi { index, out } => {
                    let q = &self.config.quasi_identifiers()[*index];
                    let cell = quasi_cell(q, raw, self.config.options(), pool);
                    if matches!(cell, Err(Invalid::BelowMinimum))
                        && q.below_minimum == BelowMinimum::DropRow
                        && drop_reason.is_none()
                    {
                        drop_reason = Some(format!("{} below the minimum", q.column));
                    }
                    cell.map(|c| self.upload_cells[*out] = c)
                }
                Step::Dimension { ty, out } => {
                    dimension_cell(*ty, raw, pool).map(|c| self.upload_cells[*out] = c)
                }
                Step::Metric { ty, out } => {
                    metric_cell(*ty, raw).map(|c| self.upload_cells[*out] = c)
                }
            };
            match outcome {
                Ok(()) => stats.valid += 1,
                Err(Invalid::Empty) => stats.missing += 1,
                Err(e) => *stats.invalid.entry(e).or_default() += 1,
            }
        }
        if matches!(self.upload_cells[self.unit_out], Cell::Null) {
            drop_reason = Some(DROP_UNIT.to_owned());
        }
        if let Some(why) = drop_reason {
            *self.dropped.entry(why).or_default() += 1;
            return;
        }
        self.add_to_risk();
        self.append_row();
    }

    /// Adds the prepared row's quasi-identifiers (and sensitive value) to the risk count.
    fn add_to_risk(&mut self) {
        if let Some(acc) = &mut self.risk {
            let cells = &self.upload_cells;
            let sensitive = self.sensitive_out.and_then(|o| match &cells[o] {
                Cell::Text(s) => Some(s.as_str()),
                Cell::Bool(b) => Some(if *b { "true" } else { "false" }),
                _ => None,
            });
            acc.add_with(
                |key| {
                    for o in &self.quasi_outs {
                        match &cells[*o] {
                            Cell::Text(s) => key.text(Some(s)),
                            Cell::Day(d) => key.day(*d),
                            _ => key.text(None),
                        }
                    }
                },
                sensitive,
            );
        }
    }

    /// Appends the prepared row to the builders (the upload part held instead when
    /// transforms are configured).
    fn append_row(&mut self) {
        // With transforms the row waits for them (on the writer thread); it is counted as
        // written there, if the transforms keep it.
        if self.hold_rows {
            self.held.push(self.upload_cells.clone());
        } else {
            for (b, c) in self.upload_builders.iter_mut().zip(&self.upload_cells) {
                b.append(c);
            }
            self.rows_written += 1;
        }
        for (b, c) in self
            .activation_builders
            .iter_mut()
            .zip(&self.activation_cells)
        {
            b.append(c);
        }
        self.pending += 1;
    }

    fn take_batches(&mut self) -> Result<(RecordBatch, Option<RecordBatch>), IdentityError> {
        let upload = self.take_upload_batch()?;
        let activation = if self.has_activation {
            let cols: Vec<ArrayRef> = self
                .activation_builders
                .iter_mut()
                .map(Builder::finish)
                .collect();
            Some(RecordBatch::try_new(self.activation_schema(), cols)?)
        } else {
            None
        };
        self.pending = 0;
        Ok((upload, activation))
    }

    /// The upload rows appended so far (without the masked-out columns); resets `pending`.
    fn take_upload_batch(&mut self) -> Result<RecordBatch, IdentityError> {
        let cols: Vec<ArrayRef> = self
            .upload_builders
            .iter_mut()
            .zip(&self.masked_out)
            .map(|(b, masked)| (b.finish(), *masked))
            .filter(|(_, masked)| !*masked)
            .map(|(a, _)| a)
            .collect();
        self.pending = 0;
        Ok(RecordBatch::try_new(self.upload_schema(), cols)?)
    }

    /// Moves the running counts out (a worker's, after one batch), leaving them at zero.
    fn take_counts(&mut self) -> Counts {
        let track_l = self.sensitive_out.is_some();
        Counts {
            rows_read: std::mem::take(&mut self.rows_read),
            rows_written: std::mem::take(&mut self.rows_written),
            dropped: std::mem::take(&mut self.dropped),
            stats: self
                .stats
                .iter_mut()
                .map(|c| {
                    (
                        std::mem::take(&mut c.valid),
                        std::mem::take(&mut c.missing),
                        std::mem::take(&mut c.invalid),
                    )
                })
                .collect(),
            risk: self
                .risk
                .as_mut()
                .map(|r| std::mem::replace(r, RiskAccumulator::new(track_l))),
        }
    }

    /// Adds a batch's counts (in input order).
    fn absorb(&mut self, counts: Counts) {
        self.rows_read += counts.rows_read;
        self.rows_written += counts.rows_written;
        for (why, n) in counts.dropped {
            *self.dropped.entry(why).or_default() += n;
        }
        for (c, (valid, missing, invalid)) in self.stats.iter_mut().zip(counts.stats) {
            c.valid += valid;
            c.missing += missing;
            for (e, n) in invalid {
                *c.invalid.entry(e).or_default() += n;
            }
        }
        if let (Some(acc), Some(r)) = (&mut self.risk, counts.risk) {
            acc.merge(r);
        }
    }

    fn warnings(&self, config: &PrepareConfig) -> Vec<String> {
        let mut w = Vec::new();
        if let PrivacyUnit::Column { column, .. } = config.privacy_unit() {
            w.push(format!(
                "the privacy unit `{column}` is written as it is in the input: make it an identifier (kind = \"opaque\") to pseudonymise it"
            ));
        }
        for c in &self.stats {
            let total = c.valid + c.invalid_total();
            if total >= 20 && c.invalid_total() * 2 > total {
                w.push(format!(
                    "`{}`: {} of {} non-empty values are invalid: is the kind or the region right?",
                    c.input,
                    c.invalid_total(),
                    total
                ));
            }
        }
        if self.has_activation {
            w.push("the activation file holds plain SHA-256 hashes, reversible by dictionary: keep it on premises and do not upload it".into());
        }
        w
    }
}

/// Strings taken back from a row's text cells when the next row starts, so that preparing a
/// row does not allocate once the pool is warm (at most one string per output cell is kept).
#[derive(Default)]
struct TextPool(Vec<String>);

/// Strings kept at most: cells filled with strings made elsewhere (generalisations, hashes)
/// give more back than the row took, and the surplus is freed.
const TEXT_POOL_MAX: usize = 256;

impl TextPool {
    /// Empties the cells (all NULL), keeping their strings for reuse.
    fn recycle(&mut self, cells: &mut [Cell]) {
        for c in cells {
            if let Cell::Text(s) = std::mem::take(c)
                && self.0.len() < TEXT_POOL_MAX
            {
                self.0.push(s);
            }
        }
    }

    /// A text cell holding a copy of `s`, in a reused string when one is free.
    fn text(&mut self, s: &str) -> Cell {
        let mut t = self.0.pop().unwrap_or_default();
        t.clear();
        t.push_str(s);
        Cell::Text(t)
    }
}

/// A privacy unit kept as written: trimmed, not empty, at most [`MAX_UNIT_BYTES`].
fn unit_value(raw: &str) -> Result<&str, Invalid> {
    let v = raw.trim();
    if v.is_empty() {
        Err(Invalid::Empty)
    } else if v.len() > MAX_UNIT_BYTES {
        Err(Invalid::TooLong)
    } else {
        Ok(v)
    }
}

/// A quasi-identifier value, generalised.
fn quasi_cell(
    q: &crate::config::QuasiSpec,
    raw: &str,
    options: &crate::normalise::NormaliseOptions,
    pool: &mut TextPool,
) -> Result<Cell, Invalid> {
    match q.generalisation.apply(raw, options)? {
        Generalised::Text(Cow::Owned(s)) => Ok(Cell::Text(s)),
        Generalised::Text(Cow::Borrowed(s)) => Ok(pool.text(s)),
        Generalised::Day(d) => Ok(Cell::Day(d)),
    }
}

/// A dimension value: text kept as written (trimmed), or a boolean.
fn dimension_cell(ty: ColumnType, raw: &str, pool: &mut TextPool) -> Result<Cell, Invalid> {
    let v = raw.trim();
    if v.is_empty() {
        Err(Invalid::Empty)
    } else if ty == ColumnType::Bool {
        match parse_bool(v) {
            Some(b) => Ok(Cell::Bool(b)),
            None => Err(Invalid::Malformed("not true or false")),
        }
    } else {
        Ok(pool.text(v))
    }
}

/// A metric value: a whole number or a finite number.
fn metric_cell(ty: ColumnType, raw: &str) -> Result<Cell, Invalid> {
    let v = raw.trim();
    if v.is_empty() {
        Err(Invalid::Empty)
    } else if ty == ColumnType::Int64 {
        match v.parse::<i64>() {
            Ok(x) => Ok(Cell::Int(x)),
            Err(_) => Err(Invalid::Malformed("not a whole number")),
        }
    } else {
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Cell::Float(x)),
            _ => Err(Invalid::Malformed("not a finite number")),
        }
    }
}

/// The matching form (pseudonymised) and the base form (for activation hashes) of an
/// identifier. The base form stands on its own: an address the Gmail rules refuse (nothing
/// left of the user name) has no matching form but still has activation hashes.
fn identifier_forms(
    kind: IdKind,
    raw: &str,
    opts: &crate::normalise::NormaliseOptions,
    want_base: bool,
) -> (Result<String, Invalid>, Option<String>) {
    if !want_base {
        return (normalise(kind, raw, opts), None);
    }
    match kind {
        IdKind::Email => match email_base(raw) {
            Ok(base) => {
                let matched = if opts.gmail_rules {
                    gmail_canonical(&base)
                } else {
                    Ok(base.clone())
                };
                (matched, Some(base))
            }
            Err(e) => (Err(e), None),
        },
        IdKind::Phone => match phone_e164(raw, &opts.default_region) {
            Ok(e) => (Ok(e.clone()), Some(e)),
            Err(e) => (Err(e), None),
        },
        _ => (normalise(kind, raw, opts), None),
    }
}

fn arrow_schema(cols: &[OutputColumn]) -> SchemaRef {
    Arc::new(Schema::new(
        cols.iter()
            .map(|c| {
                let ty = match c.ty {
                    ColumnType::Int64 => DataType::Int64,
                    ColumnType::Float64 => DataType::Float64,
                    ColumnType::Date => DataType::Date32,
                    ColumnType::Bool => DataType::Boolean,
                    ColumnType::String => DataType::Utf8,
                };
                Field::new(&c.name, ty, c.role != ColumnRole::PrivacyUnit)
            })
            .collect::<Vec<_>>(),
    ))
}

/// The temporary output files and their writers.
struct Sink {
    upload: Option<(NamedTempFile, ArrowWriter<BufWriter<File>>)>,
    activation: Option<(NamedTempFile, ArrowWriter<BufWriter<File>>)>,
    dir: PathBuf,
}

fn temp_in(dir: &Path) -> Result<NamedTempFile, IdentityError> {
    tempfile::Builder::new()
        .prefix(".cleanroom-prepare-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(IdentityError::io(format!(
            "cannot create a temporary file in {}",
            dir.display()
        )))
}

fn writer_for(
    tmp: &NamedTempFile,
    schema: SchemaRef,
    plain: &[&str],
) -> Result<ArrowWriter<BufWriter<File>>, IdentityError> {
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(IdentityError::io("cannot open the temporary output"))?;
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by("cleanroom prepare".into());
    // Pseudonyms and hashes are all distinct: a dictionary only costs time, and min/max
    // statistics over them prune nothing (the server re-encodes the file on upload anyway).
    for name in plain {
        props = props
            .set_column_dictionary_enabled(ColumnPath::from(*name), false)
            .set_column_statistics_enabled(ColumnPath::from(*name), EnabledStatistics::None);
    }
    Ok(ArrowWriter::try_new(
        BufWriter::with_capacity(1 << 20, file),
        schema,
        Some(props.build()),
    )?)
}

impl Sink {
    fn create(plan: &Plan<'_>, dir: &Path) -> Result<Self, IdentityError> {
        let plain: Vec<&str> = plan
            .outputs
            .iter()
            .filter(|o| matches!(o.role, ColumnRole::Identifier | ColumnRole::PrivacyUnit))
            .map(|o| o.name.as_str())
            .collect();
        let tmp = temp_in(dir)?;
        let w = writer_for(&tmp, plan.upload_schema(), &plain)?;
        let activation = if plan.has_activation {
            let tmp = temp_in(dir)?;
            let w = writer_for(&tmp, plan.activation_schema(), &plain)?;
            Some((tmp, w))
        } else {
            None
        };
        Ok(Sink {
            upload: Some((tmp, w)),
            activation,
            dir: dir.to_path_buf(),
        })
    }

    fn write(&mut self, batch: &BatchOut) -> Result<(), IdentityError> {
        if batch.pending == 0 {
            return Ok(());
        }
        if let Some((_, w)) = &mut self.upload {
            w.write(&batch.upload)?;
        }
        self.write_activation(batch)
    }

    /// Writes a worker's activation rows (the transforms do not touch the activation file).
    fn write_activation(&mut self, batch: &BatchOut) -> Result<(), IdentityError> {
        if batch.pending == 0 {
            return Ok(());
        }
        if let (Some((_, w)), Some(a)) = (&mut self.activation, &batch.activation) {
            w.write(a)?;
        }
        Ok(())
    }

    /// Writes the main plan's transformed upload rows, if any. The main plan holds no
    /// activation rows: those come from the workers' batches.
    fn flush(&mut self, plan: &mut Plan<'_>) -> Result<(), IdentityError> {
        if plan.pending == 0 {
            return Ok(());
        }
        let u = plan.take_upload_batch()?;
        if let Some((_, w)) = &mut self.upload {
            w.write(&u)?;
        }
        Ok(())
    }

    /// Finishes the files, fsyncs them and renames them into place (schema and activation
    /// first, the upload file last), then fsyncs the directory.
    fn commit(
        &mut self,
        upload: &Path,
        activation: &Path,
        schema: &Path,
        schema_toml: &str,
    ) -> Result<(), IdentityError> {
        fn finish(
            (tmp, w): (NamedTempFile, ArrowWriter<BufWriter<File>>),
        ) -> Result<NamedTempFile, IdentityError> {
            let buf = w.into_inner()?;
            let file = buf.into_inner().map_err(|e| IdentityError::Io {
                context: "cannot write the output".into(),
                source: e.into_error(),
            })?;
            file.sync_all()
                .map_err(IdentityError::io("cannot sync the output"))?;
            Ok(tmp)
        }
        let mut schema_tmp = temp_in(&self.dir)?;
        schema_tmp
            .write_all(schema_toml.as_bytes())
            .and_then(|_| schema_tmp.as_file().sync_all())
            .map_err(IdentityError::io("cannot write the upload schema"))?;
        let persist = |tmp: NamedTempFile, to: &Path| -> Result<(), IdentityError> {
            tmp.persist(to).map_err(|e| IdentityError::Io {
                context: format!("cannot move the output into {}", to.display()),
                source: e.error,
            })?;
            Ok(())
        };
        if let Some(a) = self.activation.take() {
            persist(finish(a)?, activation)?;
        }
        persist(schema_tmp, schema)?;
        if let Some(u) = self.upload.take() {
            persist(finish(u)?, upload)?;
        }
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(IdentityError::io(format!("cannot sync {}", dir.display())))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The upload schema as `cleanroom dataset upload --schema` reads it, validated by
/// `cleanroom-core` first.
fn upload_schema_toml(outputs: &[OutputColumn], upload: &Path) -> Result<String, IdentityError> {
    let cols: Vec<&OutputColumn> = outputs
        .iter()
        .filter(|o| o.file == OutputFile::Upload)
        .collect();
    let specs = cols
        .iter()
        .map(|c| ColumnSpec::new(&c.name, c.ty.as_str(), c.role.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Internal(format!("upload schema: {e}")))?;
    DatasetSchema::new(specs)
        .map_err(|e| IdentityError::Internal(format!("upload schema: {e}")))?;
    let file = upload
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut s = format!(
        "# Upload schema of {file}, written by `cleanroom prepare`.\n# cleanroom dataset upload <collaboration> <dataset> --file {file} --schema <this file>\n"
    );
    for c in cols {
        s.push_str(&format!(
            "\n[[columns]]\nname = \"{}\"\ntype = \"{}\"\nrole = \"{}\"\n",
            c.name, c.ty, c.role
        ));
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// Readers

fn missing_columns(plan: &Plan<'_>, header: &[String]) -> Result<Vec<usize>, IdentityError> {
    let mut idx = Vec::with_capacity(plan.inputs.len());
    for name in &plan.inputs {
        match header.iter().position(|h| h == name) {
            Some(i) => idx.push(i),
            None => {
                let have = header
                    .iter()
                    .take(50)
                    .map(|h| format!("{h:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(IdentityError::data(
                    Some(1),
                    Some(name),
                    format!(
                        "the configuration names this column but the input has no such header (it has {have})"
                    ),
                ));
            }
        }
    }
    Ok(idx)
}

fn csv_error(e: csv::Error, header: &[String]) -> IdentityError {
    let line = e.position().map(|p| p.line());
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => IdentityError::data(
            line,
            header.get(err.field()).map(String::as_str),
            "not valid UTF-8 (save the file as UTF-8)",
        ),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => IdentityError::data(
            line,
            None,
            format!("{len} fields where the header has {expected_len}"),
        ),
        csv::ErrorKind::Io(_) => {
            IdentityError::data(line, None, format!("cannot read the input: {e}"))
        }
        _ => IdentityError::data(line, None, "not readable as CSV"),
    }
}

/// The running counts of a plan, moved from a worker to the writer after each batch.
struct Counts {
    rows_read: u64,
    rows_written: u64,
    dropped: BTreeMap<String, u64>,
    /// Per step: valid, missing, invalid by reason.
    stats: Vec<(u64, u64, BTreeMap<Invalid, u64>)>,
    risk: Option<RiskAccumulator>,
}

/// One batch of prepared rows.
struct BatchOut {
    upload: RecordBatch,
    activation: Option<RecordBatch>,
    /// Rows in the batch (kept rows of the input batch).
    pending: usize,
    /// With transforms: the kept rows' upload cells, untransformed (`upload` is then empty).
    held: Vec<Vec<Cell>>,
    counts: Counts,
}

/// One batch of input rows as read, reused from batch to batch.
enum InputRows {
    /// CSV records, the first `len` of them filled.
    Csv {
        records: Vec<csv::StringRecord>,
        len: usize,
    },
    /// Parquet columns cast to text, in the order of the plan's inputs.
    Parquet { columns: Vec<StringArray> },
}

impl InputRows {
    fn is_empty(&self) -> bool {
        match self {
            InputRows::Csv { len, .. } => *len == 0,
            InputRows::Parquet { columns } => columns.first().is_none_or(|c| c.is_empty()),
        }
    }
}

/// Prepares one batch on a worker's own plan: `idx` maps the plan's inputs to CSV fields.
fn prepare_batch(
    plan: &mut Plan<'_>,
    idx: &[usize],
    rows: &InputRows,
) -> Result<BatchOut, IdentityError> {
    let mut fields: Vec<&str> = Vec::with_capacity(plan.inputs.len());
    match rows {
        InputRows::Csv { records, len } => {
            for r in &records[..*len] {
                fields.clear();
                fields.extend(idx.iter().map(|i| r.get(*i).unwrap_or("")));
                plan.row(&fields);
            }
        }
        InputRows::Parquet { columns } => {
            let n = columns.first().map_or(0, |c| c.len());
            for i in 0..n {
                fields.clear();
                fields.extend(
                    columns
                        .iter()
                        .map(|a| if a.is_null(i) { "" } else { a.value(i) }),
                );
                plan.row(&fields);
            }
        }
    }
    let pending = plan.pending;
    let (upload, activation) = plan.take_batches()?;
    Ok(BatchOut {
        upload,
        activation,
        pending,
        held: std::mem::take(&mut plan.held),
        counts: plan.take_counts(),
    })
}

/// A prepared batch (or why it failed) with its input buffer, to be returned for reuse.
type Done = (u64, Result<BatchOut, IdentityError>, InputRows);

/// Reads batches on this thread (`read` fills one and says false at the end), prepares them
/// on `threads` workers and writes them in input order on a writer thread. At most
/// `threads + 2` batches are in flight, which bounds the memory.
#[allow(clippy::too_many_arguments)]
fn run_batches(
    config: &PrepareConfig,
    key: &PseudonymKey,
    plan: &mut Plan<'_>,
    sink: &mut Sink,
    threads: usize,
    idx: &[usize],
    empty: impl Fn() -> InputRows,
    mut read: impl FnMut(&mut InputRows) -> Result<bool, IdentityError>,
) -> Result<(), IdentityError> {
    use std::sync::Mutex;
    use std::sync::mpsc::{channel, sync_channel};

    let (work_tx, work_rx) = sync_channel::<(u64, InputRows)>(threads);
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = channel::<Done>();
    let (free_tx, free_rx) = channel::<InputRows>();
    for _ in 0..threads + 2 {
        let _ = free_tx.send(empty());
    }
    std::thread::scope(|s| {
        let writer = s.spawn(move || write_in_order(plan, sink, done_rx, free_tx));
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let work_rx = &work_rx;
            s.spawn(move || {
                let mut fork = Plan::new(config, key);
                loop {
                    let job = match work_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => break,
                    };
                    let Ok((seq, rows)) = job else { break };
                    let out = match &mut fork {
                        Ok(fork) => prepare_batch(fork, idx, &rows),
                        Err(e) => Err(IdentityError::Internal(format!("worker plan: {e}"))),
                    };
                    if done_tx.send((seq, out, rows)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut read_error = None;
        let mut seq = 0u64;
        // A closed free list means the writer stopped: its error is returned below.
        while let Ok(mut rows) = free_rx.recv() {
            match read(&mut rows) {
                Ok(more) => {
                    let last = !more;
                    if !rows.is_empty() {
                        if work_tx.send((seq, rows)).is_err() {
                            break;
                        }
                        seq += 1;
                    }
                    if last {
                        break;
                    }
                }
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
        }
        drop(work_tx);
        drop(free_rx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(IdentityError::Internal("the writer panicked".into())));
        match read_error {
            Some(e) => Err(e),
            None => written,
        }
    })
}

/// Writes prepared batches in input order and adds up their counts.
fn write_in_order(
    plan: &mut Plan<'_>,
    sink: &mut Sink,
    done: std::sync::mpsc::Receiver<Done>,
    free: std::sync::mpsc::Sender<InputRows>,
) -> Result<(), IdentityError> {
    let mut waiting: BTreeMap<u64, (Result<BatchOut, IdentityError>, InputRows)> = BTreeMap::new();
    let mut next = 0u64;
    for (seq, out, rows) in done {
        waiting.insert(seq, (out, rows));
        while let Some((out, rows)) = waiting.remove(&next) {
            let mut out = out?;
            if plan.transform.is_some() {
                plan.transform_held(std::mem::take(&mut out.held), sink)?;
                sink.write_activation(&out)?;
            } else {
                sink.write(&out)?;
            }
            plan.absorb(out.counts);
            // The reader may have stopped: then nobody needs the buffer back.
            let _ = free.send(rows);
            next += 1;
        }
    }
    Ok(())
}

fn run_csv(
    config: &PrepareConfig,
    key: &PseudonymKey,
    input: &Path,
    plan: &mut Plan<'_>,
    sink: &mut Sink,
    threads: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<String>, IdentityError> {
    let file = File::open(input).map_err(IdentityError::io(format!(
        "cannot open {}",
        input.display()
    )))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    progress(Progress::Start {
        total,
        unit: ProgressUnit::Bytes,
    });
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(config.delimiter())
        .has_headers(false)
        .flexible(false)
        .buffer_capacity(256 * 1024)
        .from_reader(BufReader::with_capacity(256 * 1024, file));
    let mut record = csv::StringRecord::new();
    let got = rdr
        .read_record(&mut record)
        .map_err(|e| csv_error(e, &[]))?;
    if !got {
        return Err(IdentityError::data(
            None,
            None,
            "the input is empty (a header line is needed)",
        ));
    }
    let header: Vec<String> = record
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = if i == 0 {
                h.trim_start_matches('\u{feff}')
            } else {
                h
            };
            h.trim().to_owned()
        })
        .collect();
    let idx = missing_columns(plan, &header)?;
    let empty = || InputRows::Csv {
        records: Vec::new(),
        len: 0,
    };
    let read = |rows: &mut InputRows| -> Result<bool, IdentityError> {
        let InputRows::Csv { records, len } = rows else {
            return Err(IdentityError::Internal("a Parquet buffer for CSV".into()));
        };
        *len = 0;
        while *len < BATCH_ROWS {
            if records.len() == *len {
                records.push(csv::StringRecord::new());
            }
            match rdr.read_record(&mut records[*len]) {
                Ok(true) => *len += 1,
                Ok(false) => {
                    progress(Progress::At(total));
                    return Ok(false);
                }
                Err(e) => return Err(csv_error(e, &header)),
            }
        }
        progress(Progress::At(rdr.position().byte()));
        Ok(true)
    };
    run_batches(config, key, plan, sink, threads, &idx, empty, read)?;
    Ok(header)
}

fn run_parquet(
    config: &PrepareConfig,
    key: &PseudonymKey,
    input: &Path,
    plan: &mut Plan<'_>,
    sink: &mut Sink,
    threads: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<String>, IdentityError> {
    let bad = |e: parquet::errors::ParquetError| {
        IdentityError::data(None, None, format!("not a readable Parquet file: {e}"))
    };
    let file = File::open(input).map_err(IdentityError::io(format!(
        "cannot open {}",
        input.display()
    )))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(bad)?;
    let total = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    progress(Progress::Start {
        total,
        unit: ProgressUnit::Rows,
    });
    let header: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let idx = missing_columns(plan, &header)?;
    let mut roots = idx.clone();
    roots.sort_unstable();
    roots.dedup();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let mut reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(bad)?;
    let inputs = plan.inputs.clone();
    let mut row_no = 0u64;
    let read = |rows: &mut InputRows| -> Result<bool, IdentityError> {
        let InputRows::Parquet { columns } = rows else {
            return Err(IdentityError::Internal("a CSV buffer for Parquet".into()));
        };
        columns.clear();
        let Some(batch) = reader.next() else {
            return Ok(false);
        };
        let batch = batch.map_err(|e| {
            IdentityError::data(
                Some(row_no + 1),
                None,
                format!("not a readable Parquet file: {e}"),
            )
        })?;
        for name in &inputs {
            let col = batch.column_by_name(name).ok_or_else(|| {
                IdentityError::Internal(format!("projected column {name} missing"))
            })?;
            let as_text = arrow::compute::cast(col, &DataType::Utf8).map_err(|_| {
                IdentityError::data(
                    None,
                    Some(name),
                    format!(
                        "a column of type {} cannot be read as text",
                        col.data_type()
                    ),
                )
            })?;
            let text = as_text
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| IdentityError::Internal("cast to Utf8 gave another type".into()))?
                .clone();
            columns.push(text);
        }
        row_no += batch.num_rows() as u64;
        progress(Progress::At(row_no));
        Ok(true)
    };
    let identity: Vec<usize> = (0..inputs.len()).collect();
    let empty = || InputRows::Parquet {
        columns: Vec::new(),
    };
    run_batches(config, key, plan, sink, threads, &identity, empty, read)?;
    Ok(header)
}
