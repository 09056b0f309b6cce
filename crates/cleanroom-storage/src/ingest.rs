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

use std::io::{self, Read};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use cleanroom_core::schema::{ColumnRole, ColumnSpec, ColumnType, DatasetSchema};

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

/// Longest CSV record (one row, all its fields and separators) accepted, in bytes. Checked on
/// the raw bytes *before* the CSV reader buffers the record, so a missing closing quote cannot
/// make the server hold the rest of the file in memory. Far above any real row; fields are
/// held to the much smaller [`MAX_FIELD_BYTES`] once the record is parsed.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
/// Largest flatbuffer metadata of one Arrow IPC message. A schema or a batch header of a few
/// dozen columns takes a few KiB.
pub const MAX_IPC_METADATA_BYTES: usize = 1024 * 1024;
/// Largest body of one Arrow IPC message (one record batch or dictionary), in bytes. The reader
/// allocates a message's body whole, so this bounds the memory one Arrow upload can claim. The
/// CLI sends batches of 64 k rows: 256 MiB leaves 4 KiB per row at that size, far more than the
/// identifiers, dimensions and metrics a clean room holds.
pub const MAX_IPC_BODY_BYTES: u64 = 256 * 1024 * 1024;

/// Carries a [`StorageError`] through an `io::Error` (the only error a `Read` may return), so the
/// refusal of a guard below reaches the caller unchanged. See [`io_to_storage`].
fn refuse_io(e: StorageError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Turns a read error into a storage error: a refusal carried by [`refuse_io`] comes out as it
/// went in; anything else means the upload could not be read.
pub(crate) fn io_to_storage(e: io::Error) -> StorageError {
    if !e.get_ref().is_some_and(|inner| inner.is::<StorageError>()) {
        return StorageError::UploadStream(e.to_string());
    }
    match e.into_inner().map(|inner| inner.downcast::<StorageError>()) {
        Some(Ok(refusal)) => *refusal,
        _ => StorageError::Internal("an upload refusal was lost on its way out".into()),
    }
}

/// A reader that fails with [`StorageError::TooLarge`] once more than `limit` bytes have come
/// through: the size limit of an upload, enforced while it streams.
pub struct ByteLimit<R> {
    inner: R,
    seen: u64,
    limit: u64,
}

impl<R: Read> ByteLimit<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        ByteLimit {
            inner,
            seen: 0,
            limit,
        }
    }
}

impl<R: Read> Read for ByteLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        if self.seen > self.limit {
            return Err(refuse_io(StorageError::TooLarge(format!(
                "the upload exceeds the server's limit of {} bytes",
                self.limit
            ))));
        }
        Ok(n)
    }
}

/// Where a CSV byte stream is, in RFC 4180 terms (the dialect the `csv` crate reads by default:
/// a quote opens a quoted field only at the start of a field, `""` inside one is a quote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CsvState {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: it closes the field, or a second quote follows.
    QuoteInQuoted,
}

/// Sits before the CSV reader and refuses a record longer than `cap` bytes while it streams,
/// naming the line where the record began. The CSV reader keeps a whole record in memory, so
/// without this a missing closing quote would make it buffer the rest of the file.
struct RecordLengthGuard<R> {
    inner: R,
    state: CsvState,
    /// 1-based physical line of the next byte.
    line: u64,
    record_line: u64,
    record_len: usize,
    cap: usize,
}

impl<R: Read> RecordLengthGuard<R> {
    fn new(inner: R, cap: usize) -> Self {
        RecordLengthGuard {
            inner,
            state: CsvState::FieldStart,
            line: 1,
            record_line: 1,
            record_len: 0,
            cap,
        }
    }
}

impl<R: Read> Read for RecordLengthGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use CsvState::*;
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.line += 1;
            }
            self.record_len += 1;
            self.state = match (self.state, b) {
                (Quoted, b'"') => QuoteInQuoted,
                (Quoted, _) => Quoted,
                (FieldStart | QuoteInQuoted, b'"') => Quoted,
                (_, b',') => FieldStart,
                (_, b'\n' | b'\r') => {
                    self.record_len = 0;
                    self.record_line = self.line;
                    FieldStart
                }
                _ => Unquoted,
            };
            if self.record_len > self.cap {
                return Err(refuse_io(StorageError::invalid(
                    Some(self.record_line),
                    None,
                    format!(
                        "a record is longer than {} MiB — is a closing quote missing?",
                        self.cap / (1024 * 1024)
                    ),
                )));
            }
        }
        Ok(n)
    }
}

/// Sits before the Arrow IPC stream reader, which allocates whatever metadata and body length a
/// message header claims. Parses the stream's framing (an optional continuation marker
/// `0xFFFFFFFF`, an int32 metadata length, the flatbuffer `Message` with its `bodyLength`, then
/// the body) and refuses oversized messages before anything is allocated for them; bytes pass
/// through unchanged otherwise. Malformed metadata is left to the reader to report.
struct IpcFrameGuard<R> {
    inner: R,
    /// Header bytes already read and checked, not yet handed on.
    pending: Vec<u8>,
    pos: usize,
    /// Body bytes of the current message still to hand on.
    body_left: u64,
    /// After the end-of-stream marker or a premature end: hand on whatever comes.
    passthrough: bool,
}

impl<R: Read> IpcFrameGuard<R> {
    fn new(inner: R) -> Self {
        IpcFrameGuard {
            inner,
            pending: Vec::new(),
            pos: 0,
            body_left: 0,
            passthrough: false,
        }
    }

    /// Reads into `pending[from..]` until it is full or the input ends; returns where the read
    /// bytes end.
    fn fill(&mut self, from: usize) -> io::Result<usize> {
        let mut got = from;
        while got < self.pending.len() {
            match self.inner.read(&mut self.pending[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// Reads the next message's framing and metadata into `pending` and checks them.
    fn next_header(&mut self) -> io::Result<()> {
        self.pos = 0;
        self.pending.clear();
        self.pending.resize(4, 0);
        let got = self.fill(0)?;
        if got < 4 {
            // The input ends here (cleanly or not): let the reader see it.
            self.pending.truncate(got);
            self.passthrough = true;
            return Ok(());
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.pending[..4]);
        if len == [0xFF; 4] {
            self.pending.resize(8, 0);
            let got = self.fill(4)?;
            if got < 8 {
                self.pending.truncate(got);
                self.passthrough = true;
                return Ok(());
            }
            len.copy_from_slice(&self.pending[4..8]);
        }
        let len = i32::from_le_bytes(len);
        if len == 0 {
            self.passthrough = true; // end-of-stream marker
            return Ok(());
        }
        let Ok(len) = usize::try_from(len) else {
            return Err(refuse_io(StorageError::invalid(
                None,
                None,
                "the Arrow IPC stream is malformed (a negative metadata length)",
            )));
        };
        if len > MAX_IPC_METADATA_BYTES {
            return Err(refuse_io(StorageError::invalid(
                None,
                None,
                format!(
                    "an Arrow IPC message declares {len} bytes of metadata; the limit is {MAX_IPC_METADATA_BYTES}"
                ),
            )));
        }
        let start = self.pending.len();
        self.pending.resize(start + len, 0);
        let got = self.fill(start)?;
        if got < start + len {
            self.pending.truncate(got);
            self.passthrough = true;
            return Ok(());
        }
        let Ok(message) = arrow::ipc::root_as_message(&self.pending[start..]) else {
            return Err(refuse_io(StorageError::invalid(
                None,
                None,
                "the Arrow IPC stream is malformed (unreadable message metadata)",
            )));
        };
        let Ok(body) = u64::try_from(message.bodyLength()) else {
            return Err(refuse_io(StorageError::invalid(
                None,
                None,
                "the Arrow IPC stream is malformed (a negative body length)",
            )));
        };
        if body > MAX_IPC_BODY_BYTES {
            return Err(refuse_io(StorageError::TooLarge(format!(
                "an Arrow IPC message of {body} bytes exceeds the limit of {} MiB per message; \
                 send smaller record batches (the CLI sends 64 k rows at a time)",
                MAX_IPC_BODY_BYTES / (1024 * 1024)
            ))));
        }
        self.body_left = body;
        Ok(())
    }
}

impl<R: Read> Read for IpcFrameGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.pos);
                buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.body_left > 0 {
                let max = buf
                    .len()
                    .min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..max])?;
                self.body_left -= n as u64;
                return Ok(n);
            }
            if self.passthrough {
                return self.inner.read(buf);
            }
            self.next_header()?;
        }
    }
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

/// The first day a stored date may be: 0001-01-01, in days since 1970-01-01.
pub const MIN_DATE_DAYS: i32 = -719_162;
/// The last day a stored date may be: 9999-12-31, in days since 1970-01-01.
pub const MAX_DATE_DAYS: i32 = 2_932_896;
const DATE_RANGE: &str = "dates must lie between 0001-01-01 and 9999-12-31";

/// Parses an ISO date `YYYY-MM-DD` (years 0001 to 9999) into days since 1970-01-01.
pub fn parse_date(s: &str) -> Result<i32, &'static str> {
    const EXPECTED: &str = "expected a date in the form YYYY-MM-DD";
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(s.trim(), &fmt).map_err(|_| EXPECTED)?;
    let days = d.to_julian_day() - time::macros::date!(1970 - 01 - 01).to_julian_day();
    if !(MIN_DATE_DAYS..=MAX_DATE_DAYS).contains(&days) {
        return Err(DATE_RANGE);
    }
    Ok(days)
}

/// How many threads validate CSV records by default: every core the process may use.
pub fn default_ingest_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Reads CSV (comma-separated, header line first, RFC 4180 quoting) and writes validated
/// batches into `sink`, using every core (see [`ingest_csv_threads`]). Returns the number of
/// data rows.
pub fn ingest_csv<R: Read + Send>(
    input: R,
    schema: &DatasetSchema,
    sink: &mut dyn BatchSink,
    progress: Progress<'_>,
) -> Result<u64, StorageError> {
    ingest_csv_threads(input, schema, sink, progress, default_ingest_threads())
}

/// Parses a CSV upload with `threads` validating threads.
///
/// One thread splits the input into records (the CSV grammar is sequential: a quote may hide a
/// newline), `threads` workers turn chunks of [`BATCH_ROWS`] records into typed Arrow batches,
/// and the calling thread hands them to `sink` in input order. The batches, the error reported
/// (always the first in file order, with its line and column) and the row count are exactly
/// those of the single-threaded run (`threads <= 1`, which spawns nothing). Memory is bounded:
/// at most `2 × threads + 1` chunks exist at once, raw or converted.
pub fn ingest_csv_threads<R: Read + Send>(
    input: R,
    schema: &DatasetSchema,
    sink: &mut dyn BatchSink,
    progress: Progress<'_>,
    threads: usize,
) -> Result<u64, StorageError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(256 * 1024)
        .from_reader(RecordLengthGuard::new(input, MAX_RECORD_BYTES));
    let layout = CsvLayout::read_header(&mut rdr, schema)?;
    let mut out = Collector {
        sink,
        progress,
        rows: 0,
    };
    if threads <= 1 {
        let mut chunk = RawChunk::default();
        let mut seen = 0u64;
        loop {
            let read = chunk.fill(&mut rdr, &mut seen);
            out.take(layout.convert(&chunk))?;
            match read {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(e),
            }
        }
    } else {
        ingest_parallel(rdr, &layout, &mut out, threads)?;
    }
    out.finish()
}

/// Which declared column each CSV field holds, and the Arrow schema the batches get.
struct CsvLayout<'s> {
    cols: &'s [ColumnSpec],
    arrow: SchemaRef,
    /// For each CSV field position, the index of the declared column.
    field_to_col: Vec<usize>,
}

impl<'s> CsvLayout<'s> {
    /// Reads and checks the header line.
    fn read_header<R: Read>(
        rdr: &mut csv::Reader<R>,
        schema: &'s DatasetSchema,
    ) -> Result<Self, StorageError> {
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
        let field_to_col = names
            .iter()
            .map(|n| declared.iter().position(|d| d == n).expect("checked above"))
            .collect();
        Ok(CsvLayout {
            cols: schema.columns(),
            arrow: arrow_schema(schema),
            field_to_col,
        })
    }

    /// Validates a chunk of records into one batch (`None` when it held only blank lines).
    /// Stops at the chunk's first bad field.
    fn convert(&self, chunk: &RawChunk) -> Result<Option<RecordBatch>, StorageError> {
        let cols = self.cols;
        let width = self.field_to_col.len();
        let mut builders: Vec<ColumnBuilder> =
            cols.iter().map(|c| ColumnBuilder::new(c.ty)).collect();
        let mut rows = 0usize;
        for record in &chunk.records[..chunk.len] {
            let line = record.position().map_or(0, |p| p.line());
            if record.len() == 1 && record.get(0).is_some_and(|f| f.is_empty()) && cols.len() > 1 {
                // A blank line: skip, as spreadsheets often leave one at the end.
                continue;
            }
            if record.len() != width {
                let hint = if record.iter().any(|f| f.contains(&b'\n')) {
                    " (a quoted field may be missing its closing quote)"
                } else {
                    ""
                };
                return Err(StorageError::invalid(
                    Some(line),
                    None,
                    format!("expected {width} fields, found {}{hint}", record.len()),
                ));
            }
            for (pos, raw) in record.iter().enumerate() {
                let ci = self.field_to_col[pos];
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
        }
        if rows == 0 {
            return Ok(None);
        }
        let arrays: Vec<ArrayRef> = builders.iter_mut().map(ColumnBuilder::finish).collect();
        Ok(Some(RecordBatch::try_new(self.arrow.clone(), arrays)?))
    }
}

/// Up to [`BATCH_ROWS`] raw records, their buffers reused from chunk to chunk.
#[derive(Default)]
struct RawChunk {
    records: Vec<csv::ByteRecord>,
    len: usize,
}

impl RawChunk {
    /// Refills the chunk from `rdr`. `Ok(true)`: full, more may follow; `Ok(false)`: the input
    /// ended. On `Err` the chunk holds the records read before the error, which come first in
    /// file order and must still be checked (one of them may hold an earlier error).
    fn fill<R: Read>(
        &mut self,
        rdr: &mut csv::Reader<R>,
        seen: &mut u64,
    ) -> Result<bool, StorageError> {
        self.len = 0;
        while self.len < BATCH_ROWS {
            if self.records.len() == self.len {
                self.records.push(csv::ByteRecord::new());
            }
            let more = rdr
                .read_byte_record(&mut self.records[self.len])
                .map_err(|e| csv_error(e, Some(*seen + 2)))?;
            if !more {
                return Ok(false);
            }
            self.len += 1;
            *seen += 1;
        }
        Ok(true)
    }
}

/// Hands batches to the sink in order and counts rows.
struct Collector<'a, 'p> {
    sink: &'a mut dyn BatchSink,
    progress: Progress<'p>,
    rows: u64,
}

impl Collector<'_, '_> {
    fn take(
        &mut self,
        batch: Result<Option<RecordBatch>, StorageError>,
    ) -> Result<(), StorageError> {
        if let Some(batch) = batch? {
            self.sink.write_batch(&batch)?;
            self.rows += batch.num_rows() as u64;
            (self.progress)(self.rows);
        }
        Ok(())
    }

    fn finish(self) -> Result<u64, StorageError> {
        if self.rows == 0 {
            return Err(StorageError::invalid(
                None,
                None,
                "the file has a header but no data rows",
            ));
        }
        Ok(self.rows)
    }
}

/// What the splitting thread sends the workers: a chunk to convert, or the error that ended the
/// input (numbered after the chunks before it).
enum Work {
    Chunk(u64, RawChunk),
    Failed(u64, StorageError),
}

/// A converted chunk (with its buffers, to be reused once the batch is written).
type Converted = (
    u64,
    Result<Option<RecordBatch>, StorageError>,
    Option<RawChunk>,
);

fn ingest_parallel<R: Read + Send>(
    mut rdr: csv::Reader<R>,
    layout: &CsvLayout<'_>,
    out: &mut Collector<'_, '_>,
    threads: usize,
) -> Result<(), StorageError> {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, sync_channel};

    let in_flight = 2 * threads + 1;
    // Free chunk buffers: the splitter takes one per chunk, the collector returns it after the
    // chunk's batch is written, so at most `in_flight` chunks exist at once.
    let (free_tx, free_rx) = sync_channel::<RawChunk>(in_flight);
    for _ in 0..in_flight {
        free_tx.send(RawChunk::default()).expect("receiver alive");
    }
    let (work_tx, work_rx) = sync_channel::<Work>(in_flight);
    let (done_tx, done_rx) = sync_channel::<Converted>(in_flight);
    let work_rx: Arc<Mutex<Receiver<Work>>> = Arc::new(Mutex::new(work_rx));

    std::thread::scope(|s| {
        s.spawn(move || {
            let mut seen = 0u64;
            let mut seq = 0u64;
            // Ends when the input does, or when the collector has stopped (a send fails).
            while let Ok(mut chunk) = free_rx.recv() {
                let read = chunk.fill(&mut rdr, &mut seen);
                if chunk.len > 0 && work_tx.send(Work::Chunk(seq, chunk)).is_err() {
                    return;
                }
                seq += 1;
                match read {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        let _ = work_tx.send(Work::Failed(seq, e));
                        return;
                    }
                }
            }
        });
        for _ in 0..threads {
            let work_rx = Arc::clone(&work_rx);
            let done_tx = done_tx.clone();
            s.spawn(move || {
                loop {
                    let next = work_rx.lock().map(|rx| rx.recv());
                    let converted = match next {
                        Ok(Ok(Work::Chunk(seq, chunk))) => {
                            (seq, layout.convert(&chunk), Some(chunk))
                        }
                        Ok(Ok(Work::Failed(seq, e))) => (seq, Err(e), None),
                        _ => return,
                    };
                    if done_tx.send(converted).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);

        // Collect in input order; the first error in that order is the one to report. Returning
        // drops `done_rx` and `free_tx`, which stops the other threads within one chunk.
        let mut pending: BTreeMap<u64, Converted> = BTreeMap::new();
        let mut next = 0u64;
        for converted in done_rx {
            pending.insert(converted.0, converted);
            while let Some((_, batch, chunk)) = pending.remove(&next) {
                out.take(batch)?;
                if let Some(chunk) = chunk {
                    let _ = free_tx.send(chunk);
                }
                next += 1;
            }
        }
        Ok(())
    })
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
        // Every stored date is one the query engine's date functions (and its text output)
        // handle: an Arrow or Parquet upload can carry any 32-bit day count.
        if let Some(d) = casted.as_any().downcast_ref::<arrow::array::Date32Array>()
            && d.iter()
                .flatten()
                .any(|v| !(MIN_DATE_DAYS..=MAX_DATE_DAYS).contains(&v))
        {
            return Err(StorageError::invalid(
                None,
                Some(spec.name.to_string()),
                format!(
                    "{DATE_RANGE} (rows {}..{})",
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
    let reader = arrow::ipc::reader::StreamReader::try_new(IpcFrameGuard::new(input), None)
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
        arrow::error::ArrowError::IoError(_, io) => io_to_storage(io),
        _ => StorageError::invalid(None, None, what),
    }
}

/// Reads a Parquet file (held in memory as `Bytes`, or spooled: [`crate::spool::SealedSpool`])
/// and writes validated batches into `sink`.
pub fn ingest_parquet<T: parquet::file::reader::ChunkReader + 'static>(
    input: T,
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

    /// A file of `rows` rows across several chunks, with blank lines sprinkled in.
    fn big_csv(rows: usize) -> String {
        let mut csv = String::from(HEADER);
        for i in 0..rows {
            csv.push_str(&format!(
                "p{i},{},{},2026-01-{:02},{}.5,{}\n",
                ["18-24", "25-34", ""][i % 3],
                i % 97,
                1 + i % 28,
                i % 13,
                i % 2 == 0
            ));
            if i % 50_000 == 7 {
                csv.push('\n');
            }
        }
        csv
    }

    fn run_threads(csv: &str, threads: usize) -> Result<(u64, Vec<RecordBatch>, Vec<u64>), String> {
        let mut out: Vec<RecordBatch> = Vec::new();
        let mut seen = Vec::new();
        let rows = ingest_csv_threads(
            csv.as_bytes(),
            &schema(),
            &mut out,
            &mut |n| seen.push(n),
            threads,
        )
        .map_err(|e| e.to_string())?;
        Ok((rows, out, seen))
    }

    /// Replaces the text of data row `row` (0-based) with `with`.
    fn spoil(csv: &str, row: usize, with: &str) -> String {
        let target = format!("p{row},");
        let start = csv.find(&format!("\n{target}")).unwrap() + 1;
        let end = start + csv[start..].find('\n').unwrap();
        format!("{}{with}{}", &csv[..start], &csv[end..])
    }

    #[test]
    fn parallel_ingest_matches_the_single_threaded_run_batch_for_batch_and_error_for_error() {
        let rows = 3 * BATCH_ROWS + 1234;
        let good = big_csv(rows);
        let one = run_threads(&good, 1).unwrap();
        assert_eq!(one.0, rows as u64);
        assert!(one.1.len() >= 4, "several chunks");
        for threads in [2, 3, 8] {
            assert_eq!(
                run_threads(&good, threads).unwrap(),
                one,
                "{threads} threads"
            );
        }
        // Errors: the first in file order wins, whichever chunk a worker finishes first.
        let late = 2 * BATCH_ROWS + 10;
        let cases = [
            spoil(&good, late, "px,18-24,notanumber,2026-01-01,1,true"),
            // an early bad field and a later malformed record: the early one is reported
            spoil(
                &spoil(&good, 5, "p5,18-24,1,2026-13-01,1,true"),
                late,
                "p,\"unterminated",
            ),
            // a later field error after a wrong field count in the first chunk
            spoil(
                &spoil(&good, 70_000, "p,a,b"),
                late,
                "px,18-24,x,2026-01-01,1,true",
            ),
            // the error sits in the last, partial chunk
            spoil(&good, rows - 1, "p,18-24,1,2026-01-01,1,maybe"),
            // the privacy unit is empty in the middle chunk
            spoil(&good, BATCH_ROWS + 3, ",18-24,1,2026-01-01,1,true"),
        ];
        for (i, csv) in cases.iter().enumerate() {
            let want = run_threads(csv, 1).unwrap_err();
            for threads in [2, 3, 8] {
                assert_eq!(
                    run_threads(csv, threads).unwrap_err(),
                    want,
                    "case {i}, {threads} threads"
                );
            }
        }
        assert!(
            run_threads(&cases[1], 1).unwrap_err().contains("line 7"),
            "{}",
            run_threads(&cases[1], 1).unwrap_err()
        );
    }

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

    /// Counts the bytes read through it.
    struct Counting<R> {
        inner: R,
        read: Arc<std::sync::atomic::AtomicU64>,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(n)
        }
    }

    #[test]
    fn an_unterminated_quote_is_refused_before_the_record_is_buffered() {
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut start = HEADER.as_bytes().to_vec();
        start.extend_from_slice(b"p1,a,1,2026-01-01,1,true\np2,\"");
        let input = Counting {
            inner: (&start[..]).chain(io::repeat(b'x').take(50 * 1024 * 1024)),
            read: read.clone(),
        };
        let e = ingest_csv(input, &schema(), &mut Vec::new(), &mut |_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3: a record is longer than 16 MiB — is a closing quote missing?"
        );
        assert!(matches!(e, StorageError::InvalidData { line: Some(3), .. }));
        // The reader stopped within one buffer (256 KiB) of the cap, not at the end of the input.
        let limit = (start.len() + MAX_RECORD_BYTES + 512 * 1024) as u64;
        let read = read.load(std::sync::atomic::Ordering::Relaxed);
        assert!(read <= limit, "read {read} bytes");
    }

    #[test]
    fn long_records_with_quotes_and_newlines_are_counted_per_record() {
        // Quoted newlines and doubled quotes belong to their record; quotes inside an unquoted
        // field are data. Many records summing far above the cap are fine.
        let mut csv = HEADER.to_string();
        let row = "p1,\"a \"\"b\"\"\nc\",1,2026-01-01,1,true\np2,5\" screen,2,2026-01-02,1,no\r\n";
        while csv.len() < 2 * 1024 * 1024 {
            csv.push_str(row);
        }
        let mut guarded = RecordLengthGuard::new(csv.as_bytes(), 1024);
        let mut sink = Vec::new();
        guarded.read_to_end(&mut sink).unwrap();
        assert_eq!(sink, csv.as_bytes());
        // The same quote rules find the record where a quote is left open.
        let mut bad = HEADER.to_string();
        bad.push_str(row);
        bad.push_str("p3,\"open,1\n");
        bad.push_str(&"more,rows,1\n".repeat(200));
        let mut guarded = RecordLengthGuard::new(bad.as_bytes(), 1024);
        let e = io_to_storage(guarded.read_to_end(&mut Vec::new()).unwrap_err());
        assert!(
            e.to_string().starts_with("line 5: a record is longer than"),
            "{e}"
        );
    }

    #[test]
    fn byte_limit_refuses_as_too_large() {
        let mut input = ByteLimit::new(&[0u8; 100][..], 99);
        let e = io_to_storage(input.read_to_end(&mut Vec::new()).unwrap_err());
        assert!(matches!(e, StorageError::TooLarge(_)), "{e}");
        let csv = format!("{HEADER}p1,a,1,2026-01-01,1,true\n");
        let e = ingest_csv(
            ByteLimit::new(csv.as_bytes(), 10),
            &schema(),
            &mut Vec::new(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, StorageError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("limit of 10 bytes"), "{e}");
    }

    fn two_column_schema() -> DatasetSchema {
        DatasetSchema::new(vec![
            ColumnSpec::parse_compact("pid:string:privacy_unit").unwrap(),
            ColumnSpec::parse_compact("n:int64:metric").unwrap(),
        ])
        .unwrap()
    }

    /// An Arrow IPC stream of one batch: the schema message, the batch message, end of stream.
    /// Returns the stream and the offset of the batch message.
    fn ipc_stream() -> (Vec<u8>, usize) {
        let src = Arc::new(Schema::new(vec![
            Field::new("pid", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            src.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "bb", "ccc"])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let mut schema_only = Vec::new();
        arrow::ipc::writer::StreamWriter::try_new(&mut schema_only, &src).unwrap();
        let mut buf = Vec::new();
        {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &src).unwrap();
            w.write(&batch).unwrap();
            w.finish().unwrap();
        }
        assert_eq!(buf[..schema_only.len()], schema_only[..]);
        (buf, schema_only.len())
    }

    fn ingest_ipc(bytes: &[u8]) -> Result<u64, StorageError> {
        ingest_arrow_stream(bytes, &two_column_schema(), &mut Vec::new(), &mut |_| {})
    }

    #[test]
    fn arrow_stream_claiming_a_huge_body_is_refused_without_allocating_it() {
        let (good, at) = ipc_stream();
        assert_eq!(ingest_ipc(&good).unwrap(), 3);
        // Patch the batch message's bodyLength (an i64 in its flatbuffer) to 2^50.
        let meta_len = i32::from_le_bytes(good[at + 4..at + 8].try_into().unwrap()) as usize;
        let meta = &good[at + 8..at + 8 + meta_len];
        let body = arrow::ipc::root_as_message(meta).unwrap().bodyLength();
        let needle = body.to_le_bytes();
        let hits: Vec<usize> = (0..meta.len() - 8)
            .filter(|&i| meta[i..i + 8] == needle)
            .collect();
        let mut evil = good[..at + 8 + meta_len].to_vec();
        let mut patched = false;
        for i in hits {
            let mut candidate = evil.clone();
            candidate[at + 8 + i..at + 16 + i].copy_from_slice(&(1i64 << 50).to_le_bytes());
            let m = arrow::ipc::root_as_message(&candidate[at + 8..]).unwrap();
            if m.bodyLength() == 1 << 50 {
                evil = candidate;
                patched = true;
                break;
            }
        }
        assert!(patched, "could not find bodyLength in the message");
        evil.extend_from_slice(&[0u8; 16]);
        assert!(evil.len() < 1024, "{} bytes", evil.len());
        let e = ingest_ipc(&evil).unwrap_err();
        assert!(matches!(e, StorageError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("1125899906842624 bytes"), "{e}");
    }

    #[test]
    fn arrow_stream_claiming_huge_or_negative_metadata_is_refused() {
        let (good, at) = ipc_stream();
        for prefix in [
            // continuation marker, then 2 GiB - 1 of metadata
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F].to_vec(),
            // the legacy framing: no marker
            [0x00, 0x00, 0x20, 0x00].to_vec(),
            // negative
            [0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x80].to_vec(),
        ] {
            // As the first message and after a good schema message.
            for head in [&[][..], &good[..at]] {
                let mut evil = head.to_vec();
                evil.extend_from_slice(&prefix);
                evil.extend_from_slice(&[0u8; 64]);
                let e = ingest_ipc(&evil).unwrap_err();
                assert!(
                    matches!(e, StorageError::InvalidData { .. }),
                    "{prefix:?}: {e}"
                );
                assert!(e.is_caller_fault());
            }
        }
        let mut evil = good[..at].to_vec();
        evil.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x20, 0x00]);
        let e = ingest_ipc(&evil).unwrap_err();
        assert!(
            e.to_string()
                .contains("declares 2097152 bytes of metadata; the limit is 1048576"),
            "{e}"
        );
    }

    #[test]
    fn truncated_arrow_streams_are_refused_and_good_ones_pass_through_unchanged() {
        let (good, at) = ipc_stream();
        let mut through = Vec::new();
        IpcFrameGuard::new(&good[..])
            .read_to_end(&mut through)
            .unwrap();
        assert_eq!(through, good);
        for cut in [at + 3, at + 6, at + 20, good.len() - 12] {
            let e = ingest_ipc(&good[..cut]).unwrap_err();
            assert!(e.is_caller_fault(), "cut at {cut}: {e}");
        }
        // Two batches, read with tiny reads, still arrive whole.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(3);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let rows = ingest_arrow_stream(
            Trickle(&good),
            &two_column_schema(),
            &mut Vec::new(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(rows, 3);
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
        fn dates_outside_years_1_to_9999_are_refused(y in -9999i32..=0) {
            let s = format!("{y:05}-01-01");
            prop_assert!(parse_date(&s).is_err());
        }

        #[test]
        fn dates_round_trip(days in MIN_DATE_DAYS..=MAX_DATE_DAYS) {
            let d = time::macros::date!(1970 - 01 - 01) + time::Duration::days(days as i64);
            let s = format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day());
            prop_assert_eq!(parse_date(&s), Ok(days));
        }
    }
}
