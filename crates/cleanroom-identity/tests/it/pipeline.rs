//! The prepare pipeline on small files: CSV and Parquet give the same output, refusals write
//! nothing, rows without a privacy unit are dropped, malformed input names line and column.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, Date32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use cleanroom_identity::IdentityError;
use cleanroom_identity::config::PrepareConfig;
use cleanroom_identity::normalise::IdKind;
use cleanroom_identity::prepare::{BATCH_ROWS, OutputPaths, prepare, prepare_with_threads};
use cleanroom_identity::pseudonym::PseudonymKey;
use cleanroom_identity::report::{InputFormat, PrepReport};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const CONFIG: &str = r#"
collaboration = "pipeline-test"
default_region = "GB"
gmail_rules = true
privacy_unit = "email"

[[identifier]]
column = "email"
kind = "email"

[[identifier]]
column = "phone"
kind = "phone"

[[quasi_identifier]]
column = "age"
generalise = "age_band"
below_minimum = "null"

[[quasi_identifier]]
column = "signup"
generalise = "day"

[[dimension]]
column = "segment"

[[metric]]
column = "orders"
type = "int64"
"#;

const CSV: &str = "email,phone,age,signup,segment,orders,secret_notes\n\
J.Doe+x@Gmail.com,07911 123456,34,2026-02-14,gold,3,do not copy\n\
anna@example.org,,17,2026-02-15T10:00:00Z,silver,,do not copy\n\
not-an-email,+44 7911 123457,40,2026-02-16,gold,1,do not copy\n\
bob@example.org,12345,70,yesterday,,2x,do not copy\n";

fn key() -> PseudonymKey {
    PseudonymKey::derive(b"pipeline-test-secret-0123456789", "pipeline-test").unwrap()
}

fn run(dir: &Path, config: &str, input: &Path) -> Result<PrepReport, IdentityError> {
    let cfg = PrepareConfig::from_toml(config).unwrap();
    let out = OutputPaths::next_to(&dir.join("out.parquet"));
    prepare(&cfg, &key(), input, &out, &mut |_| {})
}

fn read(path: &Path) -> RecordBatch {
    let f = std::fs::File::open(path).unwrap();
    let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let col = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let text = arrow::compute::cast(col, &DataType::Utf8).unwrap();
    let text = text.as_any().downcast_ref::<StringArray>().unwrap();
    text.iter().map(|v| v.map(str::to_owned)).collect()
}

fn write_csv(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn csv_is_prepared_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_csv(tmp.path(), "in.csv", CSV);
    let r = run(tmp.path(), CONFIG, &input).unwrap();
    assert!(!r.refused);
    assert_eq!(r.input_format, InputFormat::Csv);
    assert_eq!((r.rows_read, r.rows_written), (4, 3));
    assert_eq!(
        r.rows_dropped.get("privacy unit missing or invalid"),
        Some(&1)
    );
    assert_eq!(r.columns_dropped, ["secret_notes"]);
    let by_output = |name: &str| r.columns.iter().find(|c| c.output == name).unwrap();
    assert_eq!(by_output("phone_hmac").valid, 2);
    assert_eq!(by_output("phone_hmac").missing, 1);
    assert_eq!(by_output("phone_hmac").invalid_total(), 1);
    assert_eq!(
        by_output("age").invalid_total(),
        1,
        "17 is below the first band"
    );
    assert_eq!(by_output("signup").invalid_total(), 1);
    assert_eq!(by_output("orders").invalid_total(), 1);
    assert_eq!(by_output("segment").missing, 1);

    let b = read(&tmp.path().join("out.parquet"));
    let names: Vec<String> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "email_hmac",
            "phone_hmac",
            "age",
            "signup",
            "segment",
            "orders"
        ]
    );
    assert!(
        !b.schema().field(0).is_nullable(),
        "the privacy unit is never NULL"
    );
    assert_eq!(b.schema().field(3).data_type(), &DataType::Date32);
    assert_eq!(b.schema().field(5).data_type(), &DataType::Int64);
    let k = key();
    assert_eq!(
        strings(&b, "email_hmac"),
        vec![
            Some(k.pseudonymise(IdKind::Email, "jdoe@gmail.com")),
            Some(k.pseudonymise(IdKind::Email, "anna@example.org")),
            Some(k.pseudonymise(IdKind::Email, "bob@example.org")),
        ]
    );
    assert_eq!(
        strings(&b, "phone_hmac"),
        vec![
            Some(k.pseudonymise(IdKind::Phone, "+447911123456")),
            None,
            None
        ]
    );
    assert_eq!(
        strings(&b, "age"),
        vec![Some("25-34".into()), None, Some("65+".into())]
    );
    let days = b.column(3).as_any().downcast_ref::<Date32Array>().unwrap();
    assert_eq!(days.value(1) - days.value(0), 1);
    assert!(days.is_null(2));
    let orders = b.column(5).as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!((orders.value(0), orders.null_count()), (3, 2));

    let schema = std::fs::read_to_string(tmp.path().join("out.schema.toml")).unwrap();
    assert!(
        schema.contains("name = \"signup\"\ntype = \"date\"\nrole = \"dimension\""),
        "{schema}"
    );
    assert!(!tmp.path().join("out.activation.parquet").exists());
    let md = r.to_markdown();
    assert!(md.contains("| `phone` | `phone_hmac` |"), "{md}");
    assert!(
        !md.contains("Doe") && !md.contains("anna"),
        "values in the report"
    );
}

#[test]
fn parquet_input_gives_the_same_output_as_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = write_csv(tmp.path(), "in.csv", CSV);
    run(tmp.path(), CONFIG, &csv).unwrap();
    let from_csv = read(&tmp.path().join("out.parquet"));

    // The same rows as typed Parquet: ages as integers, dates as Date32, orders as strings.
    let schema = Arc::new(Schema::new(vec![
        Field::new("email", DataType::Utf8, true),
        Field::new("phone", DataType::Utf8, true),
        Field::new("age", DataType::Int64, true),
        Field::new("signup", DataType::Utf8, true),
        Field::new("segment", DataType::Utf8, true),
        Field::new("orders", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![
                "J.Doe+x@Gmail.com",
                "anna@example.org",
                "not-an-email",
                "bob@example.org",
            ])),
            Arc::new(StringArray::from(vec![
                Some("07911 123456"),
                None,
                Some("+44 7911 123457"),
                Some("12345"),
            ])),
            Arc::new(Int64Array::from(vec![34, 17, 40, 70])),
            Arc::new(StringArray::from(vec![
                "2026-02-14",
                "2026-02-15T10:00:00Z",
                "2026-02-16",
                "yesterday",
            ])),
            Arc::new(StringArray::from(vec![
                Some("gold"),
                Some("silver"),
                Some("gold"),
                None,
            ])),
            Arc::new(StringArray::from(vec![
                Some("3"),
                None,
                Some("1"),
                Some("2x"),
            ])),
        ],
    )
    .unwrap();
    let pq = tmp.path().join("in.parquet");
    let mut w = ArrowWriter::try_new(std::fs::File::create(&pq).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let sub = tmp.path().join("pq");
    std::fs::create_dir(&sub).unwrap();
    let r = run(&sub, CONFIG, &pq).unwrap();
    assert_eq!(r.input_format, InputFormat::Parquet);
    assert_eq!(read(&sub.join("out.parquet")), from_csv);
}

#[test]
fn a_refusal_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_csv(tmp.path(), "in.csv", CSV);
    let config = format!("{CONFIG}\n[risk]\nmin_k = 2\naction = \"refuse\"\n");
    let r = run(tmp.path(), &config, &input).unwrap();
    assert!(r.refused && r.files.is_empty());
    assert!(r.to_markdown().contains("REFUSED"));
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["in.csv"], "only the input remains");
}

#[test]
fn a_raw_privacy_unit_activation_file_bom_and_semicolons() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_csv(
        tmp.path(),
        "in.csv",
        "\u{feff}cust;Email;age\nc1;a@example.org;30\n;b@example.org;40\nc3;c@example.org;50\n",
    );
    let config = r#"
collaboration = "x"
default_region = "GB"
privacy_unit = "cust"
delimiter = ";"

[[identifier]]
column = "Email"
name = "email"
kind = "email"
sha256 = ["meta"]

[[quasi_identifier]]
column = "age"
generalise = "age_band"
"#;
    let r = run(tmp.path(), config, &input).unwrap();
    assert_eq!((r.rows_read, r.rows_written), (3, 2));
    assert!(
        r.warnings.iter().any(|w| w.contains("written as it is")),
        "{:?}",
        r.warnings
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("reversible by dictionary"))
    );
    let b = read(&tmp.path().join("out.parquet"));
    assert_eq!(
        strings(&b, "cust"),
        vec![Some("c1".into()), Some("c3".into())]
    );
    let a = read(&tmp.path().join("out.activation.parquet"));
    let names: Vec<String> = a
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["cust", "email_hmac", "email_sha256_meta"]);
    // printf a@example.org | sha256sum
    assert_eq!(
        strings(&a, "email_sha256_meta")[0].as_deref(),
        Some("e16bfe08be114c7b3737aa01ce504ebcb5d13fc44897c38c6cac63ddc7151463")
    );
}

#[test]
fn malformed_input_names_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = CSV.as_bytes().to_vec();
    bytes.extend_from_slice(b"x@example.org,07911 123456,30,2026-01-01,g\xff,1,n\n");
    let input = tmp.path().join("bad.csv");
    std::fs::write(&input, bytes).unwrap();
    let err = run(tmp.path(), CONFIG, &input).unwrap_err();
    assert_eq!(err.code(), "invalid_data");
    assert_eq!(
        err.to_string(),
        "line 6, column segment: not valid UTF-8 (save the file as UTF-8)"
    );

    let short = write_csv(tmp.path(), "short.csv", &format!("{CSV}a@b.com,1\n"));
    let err = run(tmp.path(), CONFIG, &short).unwrap_err();
    assert_eq!(err.to_string(), "line 6: 2 fields where the header has 7");

    let empty = write_csv(tmp.path(), "empty.csv", "");
    assert!(
        run(tmp.path(), CONFIG, &empty)
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n.starts_with("out"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_bool_dimension_is_read_as_a_boolean_and_bad_values_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
collaboration = "pipeline-test"
default_region = "GB"
privacy_unit = "user_id"

[[identifier]]
column = "email"
kind = "email"

[[dimension]]
column = "exposed"
type = "bool"
"#;
    let input = write_csv(
        dir.path(),
        "in.csv",
        "user_id,email,exposed\nU1,a@example.org,TRUE\nU2,b@example.org,no\nU3,c@example.org,maybe\nU4,d@example.org,1\n",
    );
    let report = run(dir.path(), config, &input).unwrap();
    let b = read(&dir.path().join("out.parquet"));
    assert_eq!(
        b.schema().field_with_name("exposed").unwrap().data_type(),
        &DataType::Boolean
    );
    let col = b
        .column_by_name("exposed")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::BooleanArray>()
        .unwrap()
        .iter()
        .collect::<Vec<_>>();
    assert_eq!(col, vec![Some(true), Some(false), None, Some(true)]);
    let text = format!("{report:?}");
    assert!(text.contains("not true or false"), "{text}");
    let schema = std::fs::read_to_string(dir.path().join("out.schema.toml")).unwrap();
    assert!(
        schema.contains("name = \"exposed\"\ntype = \"bool\"\nrole = \"dimension\""),
        "{schema}"
    );
    let err = PrepareConfig::from_toml(&config.replace("\"bool\"", "\"date\"")).unwrap_err();
    assert!(err.to_string().contains("string or bool"), "{err}");
}

#[test]
fn a_gmail_address_the_rules_refuse_still_gets_its_activation_hashes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_csv(tmp.path(), "in.csv", "cust,email\nc1,+promo@gmail.com\n");
    let config = r#"
collaboration = "x"
default_region = "GB"
gmail_rules = true
privacy_unit = "cust"

[[identifier]]
column = "email"
kind = "email"
sha256 = ["meta"]
"#;
    let r = run(tmp.path(), config, &input).unwrap();
    assert_eq!(r.rows_written, 1);
    let email = r.columns.iter().find(|c| c.input == "email").unwrap();
    assert_eq!(
        email.invalid_total(),
        1,
        "no matching form under the Gmail rules"
    );
    let a = read(&tmp.path().join("out.activation.parquet"));
    assert_eq!(strings(&a, "email_hmac"), vec![None]);
    // printf '+promo@gmail.com' | sha256sum: the base form, as docs/identity.md promises.
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(b"+promo@gmail.com"));
    assert_eq!(strings(&a, "email_sha256_meta"), vec![Some(want)]);
}

/// Outputs of a run as bytes, and the report without its timing line.
fn outputs_of(threads: usize, input: &Path, config: &str) -> Vec<Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = PrepareConfig::from_toml(config).unwrap();
    let out = OutputPaths::next_to(&tmp.path().join("out.parquet"));
    let r = prepare_with_threads(&cfg, &key(), input, &out, threads, &mut |_| {}).unwrap();
    let report: String = r
        .to_markdown()
        .lines()
        .filter(|l| !l.starts_with("- time:"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(&tmp.path().display().to_string(), "<out>");
    let mut v = vec![report.into_bytes()];
    for p in [&out.upload, &out.schema, &out.activation] {
        v.push(std::fs::read(p).unwrap());
    }
    v
}

#[test]
fn parallel_output_is_identical_to_single_threaded() {
    let tmp = tempfile::tempdir().unwrap();
    // Three batches and a bit, with invalid values, dropped rows and a sensitive column.
    let rows = 2 * BATCH_ROWS + 1234;
    let mut csv = String::from("email,phone,age,segment,orders\n");
    for i in 0..rows {
        let email = if i % 97 == 0 {
            "not-an-email".to_owned()
        } else {
            format!("User.{i}@Example.com")
        };
        let phone = if i % 16 == 0 {
            format!("07911 {:06}", i % 1_000_000)
        } else {
            String::new()
        };
        let unit_missing = i % 1013 == 0;
        csv.push_str(&format!(
            "{},{phone},{},{},{}\n",
            if unit_missing { "" } else { email.as_str() },
            17 + i % 70,
            ["gold", "silver", "bronze"][i % 3],
            i % 7
        ));
    }
    let input = write_csv(tmp.path(), "in.csv", &csv);
    let config = r#"
collaboration = "parallel"
default_region = "GB"
gmail_rules = true
privacy_unit = "email"

[[identifier]]
column = "email"
kind = "email"
sha256 = ["meta", "google"]

[[identifier]]
column = "phone"
kind = "phone"
sha256 = ["uid2"]

[[quasi_identifier]]
column = "age"
generalise = "age_band"
below_minimum = "null"

[[dimension]]
column = "segment"

[[metric]]
column = "orders"
type = "int64"

[risk]
sensitive = "segment"
"#;
    let one = outputs_of(1, &input, config);
    for threads in [2, 3] {
        let many = outputs_of(threads, &input, config);
        assert_eq!(
            String::from_utf8_lossy(&one[0]),
            String::from_utf8_lossy(&many[0]),
            "the report differs with {threads} threads"
        );
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            assert!(a == b, "output {i} differs with {threads} threads");
        }
    }
}
