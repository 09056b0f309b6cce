//! Turning an upload into validated Arrow record batches of the declared schema.
//!
//! Three input forms, all streamed in bounded memory except Parquet:
//! - CSV with a header line (the common case): parsed record by record, every field checked
//!   against its column's type, errors naming the line and column;
//! - an Arrow IPC stream (what the CLI sends for a local Parquet file): batches checked and
//!   cast to the declared types;
//! - a Parquet file sent as is (must be read whole, since its footer is at the end; the
//!   server caps its size).
//!
//! Error messages never include the offending value: they go back to the uploader, but the
//! same text is also audited and logged.

use std::io::Read;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use cleanroom_core::schema::{ColumnRole, ColumnType, DatasetSchema};

use crate::StorageError;

/// Rows per record batch produced by the CSV reader.
pub const BATCH_ROWS: usize = 64 * 1024;
/// Longest field accepted, in bytes. Identifiers and attributes are short; a long field is
/// almost always a broken quote or a file of the wrong kind.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

/// The Arrow schema a dataset is stored with.
pub fn arrow_schema(schema: &DatasetSchema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .columns()
        .iter()
        .map(|c| {
            Field::new(
                c.name.as_str(),
                arrow_type(c.ty),
                c.role != ColumnRole::PrivacyUnit,
            )
        })
        .collect();
    Arc::new(Schema::new(fields))
}

pub fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::String => DataType::Utf8,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
    }
}

/// Receives validated batches (the encrypted writer in production, a vector in tests).
pub trait BatchSink {
    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), StorageError>;
}

impl BatchSink for Vec<RecordBatch> {
    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), StorageError> {
        self.push(batch.clone());
        Ok(())
    }
}

/// Calls `progress(rows_so_far)` after each batch.
pub type Progress<'a> = &'a mut dyn FnMut(u64);

fn io_to_storage(e: std::io::Error) -> StorageError {
    StorageError::UploadStream(e.to_string())
}

enum ColumnBuilder {
    String(StringBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
}

impl ColumnBuilder {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::String => ColumnBuilder::String(StringBuilder::new()),
            ColumnType::Int64 => ColumnBuilder::Int64(Int64Builder::with_capacity(BATCH_ROWS)),
            ColumnType::Float64 => {
                ColumnBuilder::Float64(Float64Builder::with_capacity(BATCH_ROWS))
            }
            ColumnType::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(BATCH_ROWS)),
            ColumnType::Date => ColumnBuilder::Date(Date32Builder::with_capacity(BATCH_ROWS)),
        }
    }

    fn append_null(&mut self) {
        match self {
            ColumnBuilder::String(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
        }
    }

    /// Appends a non-empty field; on failure returns what was expected.
    fn append(&mut self, s: &str) -> Result<(), &'static str> {
        match self {
            ColumnBuilder::String(b) => b.append_value(s),
            ColumnBuilder::Int64(b) => b.append_value(parse_int(s)?),
            ColumnBuilder::Float64(b) => b.append_value(parse_float(s)?),
            ColumnBuilder::Bool(b) => b.append_value(parse_bool(s)?),
            ColumnBuilder::Date(b) => b.append_value(parse_date(s)?),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::String(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
        }
    }
}

/// Parses a 64-bit integer (surrounding spaces allowed).
pub fn parse_int(s: &str) -> Result<i64, &'static str> {
    s.trim()
        .parse::<i64>()
        .map_err(|_| "expected an int64 (a whole number of at most 19 digits)")
}

/// Parses a finite 64-bit float.
pub fn parse_float(s: &str) -> Result<f64, &'static str> {
    const EXPECTED: &str = "expected a float64 (a finite decimal number such as 12.5)";
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(EXPECTED),
    }
}

/// Parses a boolean: true/false, 1/0, yes/no, t/f (any case).
pub fn parse_bool(s: &str) -> Result<bool, &'static str> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "f" | "n" => Ok(false),
        _ => Err("expected a bool (true or false)"),
    }
}

/// Parses an ISO date `YYYY-MM-DD` into days since 1970-01-01.
pub fn parse_date(s: &str) -> Result<i32, &'static str> {
    const EXPECTED: &str = "expected a date in the form YYYY-MM-DD";
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(s.trim(), &fmt).map_err(|_| EXPECTED)?;
    Ok(d.to_julian_day() - time::macros::date!(1970 - 01 - 01).to_julian_day())
}

/// Reads CSV (comma-separated, header line first, RFC 4180 quoting) and writes validated
/// batches into `sink`. Returns the number of data rows.
pub fn ingest_csv<R: Read>(
    input: R,
    schema: &DatasetSchema,
    sink: &mut dyn BatchSink,
    progress: Progress<'_>,
) -> Result<u64, StorageError> {
    let arrow = arrow_schema(schema);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(256 * 1024)
        .from_reader(input);

    // Header line.
    let mut header = csv::ByteRecord::new();
    let got = rdr
        .read_byte_record(&mut header)
        .map_err(|e| csv_error(e, None))?;
    if !got {
        return Err(StorageError::invalid(
            None,
            None,
            "the file is empty: expected a header line naming the columns",
        ));
    }
    // position in file -> for each declared column, which CSV field holds it
    let mut names = Vec::with_capacity(header.len());
    for (i, raw) in header.iter().enumerate() {
        let name = std::str::from_utf8(raw).map_err(|_| {
            StorageError::invalid(
                Some(1),
                Some(format!("{}", i + 1)),
                "header is not valid UTF-8",
            )
        })?;
        let name = name.trim().trim_start_matches('\u{feff}').trim();
        names.push(name.to_owned());
    }
    let declared: Vec<&str> = schema.columns().iter().map(|c| c.name.as_str()).collect();
    let missing: Vec<&str> = declared
        .iter()
        .copied()
        .filter(|d| !names.iter().any(|n| n == d))
        .collect();
    let extra: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !declared.contains(n))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!(
                "missing declared column(s): {}",
                missing.join(", ")
            ));
        }
        if !extra.is_empty() {
            parts.push(format!(
                "undeclared column(s): {} (declare them or drop them before upload)",
                extra.join(", ")
            ));
        }
        return Err(StorageError::invalid(Some(1), None, parts.join("; ")));
    }
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(StorageError::invalid(
                Some(1),
                Some(n.clone()),
                "column appears twice in the header",
            ));
        }
    }
    // For each CSV field position, the index of the declared column.
    let field_to_col: Vec<usize> = names
        .iter()
        .map(|n| declared.iter().position(|d| d == n).expect("checked above"))
        .collect();

    let cols = schema.columns();
    let mut builders: Vec<ColumnBuilder> = cols.iter().map(|c| ColumnBuilder::new(c.ty)).collect();
    let mut record = csv::ByteRecord::new();
    let mut rows: u64 = 0;
    let mut in_batch = 0usize;
    loop {
        let more = rdr
            .read_byte_record(&mut record)
            .map_err(|e| csv_error(e, Some(rows + 2)))?;
        if !more {
            break;
        }
        let line = record.position().map(|p| p.line()).unwrap_or(rows + 2);
        if record.len() == 1 && record.get(0).is_some_and(|f| f.is_empty()) && cols.len() > 1 {
            // A blank line: skip, as spreadsheets often leave one at the end.
            continue;
        }
        if record.len() != names.len() {
            let hint = if record.iter().any(|f| f.contains(&b'\n')) {
                " (a quoted field may be missing its closing quote)"
            } else {
                ""
            };
            return Err(StorageError::invalid(
                Some(line),
                None,
                format!(
                    "expected {} fields, found {}{hint}",
                    names.len(),
                    record.len()
                ),
            ));
        }
        for (pos, raw) in record.iter().enumerate() {
            let ci = field_to_col[pos];
            let spec = &cols[ci];
            let colname = || Some(format!("{} ({})", pos + 1, spec.name));
            if raw.len() > MAX_FIELD_BYTES {
                return Err(StorageError::invalid(
                    Some(line),
                    colname(),
                    format!(
                        "field is {} bytes long; the limit is {} bytes",
                        raw.len(),
                        MAX_FIELD_BYTES
                    ),
                ));
            }
            let s = std::str::from_utf8(raw).map_err(|e| {
                StorageError::invalid(
                    Some(line),
                    colname(),
                    format!(
                        "not valid UTF-8 (bad byte at offset {} of the field); re-export the file as UTF-8",
                        e.valid_up_to()
                    ),
                )
            })?;
            if s.trim().is_empty() {
                if spec.role == ColumnRole::PrivacyUnit {
                    return Err(StorageError::invalid(
                        Some(line),
                        colname(),
                        "the privacy_unit column must not be empty: every row must say whose it is",
                    ));
                }
                builders[ci].append_null();
                continue;
            }
            builders[ci].append(s).map_err(|expected| {
                StorageError::invalid(Some(line), colname(), expected.to_owned())
            })?;
        }
        rows += 1;
        in_batch += 1;
        if in_batch == BATCH_ROWS {
            flush(&arrow, &mut builders, sink)?;
            in_batch = 0;
            progress(rows);
        }
    }
    if in_batch > 0 {
        flush(&arrow, &mut builders, sink)?;
        progress(rows);
    }
    if rows == 0 {
        return Err(StorageError::invalid(
            None,
            None,
            "the file has a header but no data rows",
        ));
    }
    Ok(rows)
}

fn flush(
    arrow: &SchemaRef,
    builders: &mut [ColumnBuilder],
    sink: &mut dyn BatchSink,
) -> Result<(), StorageError> {
    let arrays: Vec<ArrayRef> = builders.iter_mut().map(ColumnBuilder::finish).collect();
    let batch = RecordBatch::try_new(arrow.clone(), arrays)?;
    sink.write_batch(&batch)
}

fn csv_error(e: csv::Error, fallback_line: Option<u64>) -> StorageError {
    let line = e.position().map(|p| p.line()).or(fallback_line);
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io_to_storage(io),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => StorageError::invalid(
            line,
            None,
            format!("expected {expected_len} fields, found {len}"),
        ),
        _ => StorageError::invalid(line, None, "malformed CSV (check quoting)"),
    }
}

/// Checks one batch from an Arrow or Parquet upload against the declared schema and casts it to
/// the stored types. `first_row` is the 1-based number of the batch's first row, for messages.
fn conform_batch(
    batch: &RecordBatch,
    schema: &DatasetSchema,
    target: &SchemaRef,
    first_row: u64,
) -> Result<RecordBatch, StorageError> {
    let mut arrays = Vec::with_capacity(schema.columns().len());
    for (spec, field) in schema.columns().iter().zip(target.fields()) {
        let Some(col) = batch.column_by_name(spec.name.as_str()) else {
            return Err(StorageError::invalid(
                None,
                Some(spec.name.to_string()),
                "declared column is missing from the file",
            ));
        };
        let want = field.data_type();
        let casted = if col.data_type() == want {
            col.clone()
        } else if castable(col.data_type(), want) {
            let opts = arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            };
            arrow::compute::cast_with_options(col, want, &opts).map_err(|_| {
                StorageError::invalid(
                    None,
                    Some(spec.name.to_string()),
                    format!(
                        "values of type {} in rows {}..{} do not all convert to {}",
                        col.data_type(),
                        first_row,
                        first_row + batch.num_rows() as u64 - 1,
                        spec.ty
                    ),
                )
            })?
        } else {
            return Err(StorageError::invalid(
                None,
                Some(spec.name.to_string()),
                format!(
                    "has type {} in the file but is declared {}",
                    col.data_type(),
                    spec.ty
                ),
            ));
        };
        if spec.role == ColumnRole::PrivacyUnit && casted.null_count() > 0 {
            return Err(StorageError::invalid(
                None,
                Some(spec.name.to_string()),
                format!(
                    "the privacy_unit column has {} empty value(s) in rows {}..{}",
                    casted.null_count(),
                    first_row,
                    first_row + batch.num_rows() as u64 - 1
                ),
            ));
        }
        if let Some(f) = casted.as_any().downcast_ref::<arrow::array::Float64Array>()
            && f.iter().flatten().any(|v| !v.is_finite())
        {
            return Err(StorageError::invalid(
                None,
                Some(spec.name.to_string()),
                "contains NaN or infinite values",
            ));
        }
        arrays.push(casted);
    }
    let extra: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| schema.column(n).is_none())
        .collect();
    if !extra.is_empty() {
        return Err(StorageError::invalid(
            None,
            None,
            format!(
                "undeclared column(s): {} (declare them or drop them before upload)",
                extra.join(", ")
            ),
        ));
    }
    Ok(RecordBatch::try_new(target.clone(), arrays)?)
}

fn castable(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    matches!(
        (from, to),
        (LargeUtf8 | Utf8View | Dictionary(_, _), Utf8)
            | (
                Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32 | UInt64,
                Int64
            )
            | (
                Float16 | Float32 | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32,
                Float64
            )
            | (Date64 | Timestamp(_, _), Date32)
    )
}

fn ingest_batches<I>(
    batches: I,
    schema: &DatasetSchema,
    sink: &mut dyn BatchSink,
    progress: Progress<'_>,
) -> Result<u64, StorageError>
where
    I: Iterator<Item = Result<RecordBatch, StorageError>>,
{
    let target = arrow_schema(schema);
    let mut rows = 0u64;
    for batch in batches {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let conformed = conform_batch(&batch, schema, &target, rows + 1)?;
        sink.write_batch(&conformed)?;
        rows += batch.num_rows() as u64;
        progress(rows);
    }
    if rows == 0 {
        return Err(StorageError::invalid(
            None,
            None,
            "the file has no data rows",
        ));
    }
    Ok(rows)
}

/// Reads an Arrow IPC stream and writes validated batches into `sink`.
pub fn ingest_arrow_stream<R: Read>(
    input: R,
    schema: &DatasetSchema,
    sink: &mut dyn BatchSink,
    progress: Progress<'_>,
) -> Result<u64, StorageError> {
    let reader = arrow::ipc::reader::StreamReader::try_new(input, None)
        .map_err(|e| upload_arrow_error(e, "the body is not an Arrow IPC stream"))?;
    ingest_batches(
        reader.map(|b| b.map_err(|e| upload_arrow_error(e, "the Arrow IPC stream is malformed"))),
        schema,
        sink,
        progress,
    )
}

fn upload_arrow_error(e: arrow::error::ArrowError, what: &str) -> StorageError {
    match e {
        arrow::error::ArrowError::IoError(_, io)
            if io.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            StorageError::invalid(None, None, format!("{what} (it ends too early)"))
        }
        arrow::error::ArrowError::IoError(msg, _) => StorageError::UploadStream(msg),
        _ => StorageError::invalid(None, None, what),
    }
}

/// Reads a whole Parquet file held in memory and writes validated batches into `sink`.
pub fn ingest_parquet(
    input: bytes::Bytes,
    schema: &DatasetSchema,
    sink: &mut dyn BatchSink,
    progress: Progress<'_>,
) -> Result<u64, StorageError> {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(input)
        .map_err(|_| {
            StorageError::invalid(None, None, "the body is not a readable Parquet file")
        })?;
    let reader = builder.with_batch_size(BATCH_ROWS).build().map_err(|_| {
        StorageError::invalid(None, None, "the body is not a readable Parquet file")
    })?;
    ingest_batches(
        reader.map(|b| {
            b.map_err(|_| StorageError::invalid(None, None, "the Parquet file is corrupt"))
        }),
        schema,
        sink,
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Date32Array, Int64Array, StringArray};
    use cleanroom_core::schema::ColumnSpec;
    use proptest::prelude::*;

    fn schema() -> DatasetSchema {
        DatasetSchema::new(
            [
                "pid:string:privacy_unit",
                "age_band:string:dimension",
                "purchases:int64:metric",
                "seen:date:dimension",
                "spend:float64:metric",
                "vip:bool:dimension",
            ]
            .iter()
            .map(|s| ColumnSpec::parse_compact(s).unwrap())
            .collect(),
        )
        .unwrap()
    }

    fn run(csv: &[u8]) -> Result<(u64, Vec<RecordBatch>), StorageError> {
        let mut out: Vec<RecordBatch> = Vec::new();
        let rows = ingest_csv(csv, &schema(), &mut out, &mut |_| {})?;
        Ok((rows, out))
    }

    fn err(csv: &[u8]) -> String {
        run(csv).unwrap_err().to_string()
    }

    const HEADER: &str = "pid,age_band,purchases,seen,spend,vip\n";

    #[test]
    fn good_csv_in_any_column_order() {
        let csv =
            "purchases,pid,age_band,seen,spend,vip\n3,p1,25-34,2026-01-31,12.5,true\n,p2,,,,\n";
        let (rows, batches) = run(csv.as_bytes()).unwrap();
        assert_eq!(rows, 2);
        let b = &batches[0];
        let pid = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(pid.value(1), "p2");
        let p = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(p.value(0), 3);
        assert!(p.is_null(1));
        let d = b.column(3).as_any().downcast_ref::<Date32Array>().unwrap();
        assert_eq!(d.value(0), 20484);
    }

    #[test]
    fn errors_name_line_column_and_expectation() {
        let e = err(
            format!("{HEADER}p1,a,1,2026-01-01,1,true\np2,a,lots,2026-01-01,1,true\n").as_bytes(),
        );
        assert_eq!(
            e,
            "line 3, column 3 (purchases): expected an int64 (a whole number of at most 19 digits)"
        );
        assert!(!e.contains("lots"), "error must not echo the value");
        let e = err(format!("{HEADER}p1,a,1,2026-02-30,1,true\n").as_bytes());
        assert!(
            e.starts_with("line 2, column 4 (seen): expected a date"),
            "{e}"
        );
        let e = err(format!("{HEADER}p1,a,1,2026-02-03,NaN,true\n").as_bytes());
        assert!(
            e.starts_with("line 2, column 5 (spend): expected a float64"),
            "{e}"
        );
        let e = err(format!("{HEADER}p1,a,1,2026-02-03,1\n").as_bytes());
        assert_eq!(e, "line 2: expected 6 fields, found 5");
        let e = err(format!("{HEADER},a,1,2026-02-03,1,true\n").as_bytes());
        assert!(
            e.starts_with("line 2, column 1 (pid): the privacy_unit column must not be empty"),
            "{e}"
        );
    }

    #[test]
    fn header_problems() {
        assert!(err(b"").contains("the file is empty"));
        assert!(err(HEADER.as_bytes()).contains("no data rows"));
        let e = err(b"pid,age_band,purchases,seen,spend\np,a,1,2026-01-01,1\n");
        assert_eq!(e, "line 1: missing declared column(s): vip");
        let e = err(b"pid,age_band,purchases,seen,spend,vip,email\n");
        assert!(e.contains("undeclared column(s): email"), "{e}");
        let e = err(b"pid,pid,age_band,purchases,seen,spend,vip\n");
        assert!(e.contains("twice") || e.contains("undeclared"), "{e}");
    }

    #[test]
    fn invalid_utf8_and_huge_fields() {
        let mut bad = HEADER.as_bytes().to_vec();
        bad.extend_from_slice(b"p1,\xff\xfe,1,2026-01-01,1,true\n");
        let e = err(&bad);
        assert!(
            e.starts_with("line 2, column 2 (age_band): not valid UTF-8"),
            "{e}"
        );

        let mut huge = HEADER.as_bytes().to_vec();
        huge.extend_from_slice(b"p1,");
        huge.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
        huge.extend_from_slice(b",1,2026-01-01,1,true\n");
        let e = err(&huge);
        assert!(
            e.starts_with("line 2, column 2 (age_band): field is 10485760 bytes long"),
            "{e}"
        );
    }

    #[test]
    fn quoted_fields_with_newlines_count_lines_right() {
        let csv = format!("{HEADER}p1,\"a\nb\",1,2026-01-01,1,true\np2,a,x,2026-01-01,1,true\n");
        let e = err(csv.as_bytes());
        assert!(e.starts_with("line 4, column 3"), "{e}");
    }

    #[test]
    fn batches_split_at_batch_rows() {
        let mut csv = HEADER.to_string();
        for i in 0..(BATCH_ROWS + 10) {
            csv.push_str(&format!("p{i},a,1,2026-01-01,1.5,no\n"));
        }
        let (rows, batches) = run(csv.as_bytes()).unwrap();
        assert_eq!(rows as usize, BATCH_ROWS + 10);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].num_rows(), 10);
    }

    #[test]
    fn arrow_stream_is_cast_and_checked() {
        use arrow::array::Int32Array;
        let schema = DatasetSchema::new(vec![
            ColumnSpec::parse_compact("pid:string:privacy_unit").unwrap(),
            ColumnSpec::parse_compact("n:int64:metric").unwrap(),
        ])
        .unwrap();
        let src = Arc::new(Schema::new(vec![
            Field::new("pid", DataType::Utf8, true),
            Field::new("n", DataType::Int32, true),
        ]));
        let batch = RecordBatch::try_new(
            src.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int32Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let mut buf = Vec::new();
        {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &src).unwrap();
            w.write(&batch).unwrap();
            w.finish().unwrap();
        }
        let mut out: Vec<RecordBatch> = Vec::new();
        let rows = ingest_arrow_stream(&buf[..], &schema, &mut out, &mut |_| {}).unwrap();
        assert_eq!(rows, 2);
        assert_eq!(out[0].column(1).data_type(), &DataType::Int64);

        let e = ingest_arrow_stream(&b"garbage"[..], &schema, &mut Vec::new(), &mut |_| {})
            .unwrap_err();
        assert!(e.is_caller_fault(), "{e}");
    }

    proptest! {
        #[test]
        fn int_parser_agrees_with_std(n in any::<i64>()) {
            prop_assert_eq!(parse_int(&n.to_string()), Ok(n));
            prop_assert_eq!(parse_int(&format!(" {n} ")), Ok(n));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut input = HEADER.as_bytes().to_vec();
            input.extend_from_slice(&data);
            let _ = run(&input);
        }

        #[test]
        fn dates_round_trip(days in -100_000i32..100_000) {
            let d = time::macros::date!(1970 - 01 - 01) + time::Duration::days(days as i64);
            let s = format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day());
            prop_assert_eq!(parse_date(&s), Ok(days));
        }
    }
}
