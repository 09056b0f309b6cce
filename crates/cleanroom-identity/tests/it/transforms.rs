//! The anonymisation transforms through `prepare`: the output meets k after suppression, a
//! dropped column is not written, noise stays within its bound, the report shows the risk
//! before and after, and a target that is not met refuses (nothing written).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use arrow::array::{Array, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use cleanroom_identity::config::PrepareConfig;
use cleanroom_identity::prepare::{BATCH_ROWS, OutputPaths, prepare, prepare_with_threads};
use cleanroom_identity::pseudonym::PseudonymKey;
use cleanroom_identity::report::PrepReport;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const BASE: &str = r#"
collaboration = "transform-test"
default_region = "GB"
privacy_unit = "email"

[[identifier]]
column = "email"
kind = "email"

[[quasi_identifier]]
column = "age"
generalise = "none"

[[quasi_identifier]]
column = "postcode"
name = "district"
generalise = "postcode_outward"

[[dimension]]
column = "segment"

[[dimension]]
column = "notes"

[[metric]]
column = "revenue"
type = "float64"

[risk]
k = 3
min_k = 3
"#;

const TRANSFORMS: &str = r#"
[[transform]]
type = "mask"
column = "notes"
keep = "drop"

[[transform]]
type = "top_code"
column = "age"
at = 90

[[transform]]
type = "noise"
column = "revenue"
scale = 2
bound = 5
step = 0.01

[[transform]]
type = "swap"
column = "segment"
method = "stratum"
within = ["district"]
rate = 0.2

[[transform]]
type = "suppress"
priority = ["district", "age"]
"#;

/// 200 people: ages 20-99, six districts, a few rare combinations.
fn csv() -> String {
    let mut s = String::from("email,age,postcode,segment,notes,revenue\n");
    let districts = [
        "SW1A 1AA", "M1 1AE", "B33 8TH", "CR2 6XH", "DN55 1PT", "W1A 0AX",
    ];
    for i in 0..200u32 {
        let age = 20 + (i * 7) % 80;
        let d = districts[(i % 6) as usize];
        let seg = ["gold", "silver", "bronze"][(i % 3) as usize];
        let _ = writeln!(
            s,
            "p{i}@example.org,{age},{d},{seg},free text {i},{}.50",
            i * 3
        );
    }
    s
}

fn run(dir: &Path, config: &str) -> PrepReport {
    let input = dir.join("in.csv");
    std::fs::write(&input, csv()).unwrap();
    let cfg = PrepareConfig::from_toml(config).unwrap();
    let key = PseudonymKey::derive(b"transform-test-secret-0123456789", "transform-test").unwrap();
    let out = OutputPaths::next_to(&dir.join("out.parquet"));
    prepare(&cfg, &key, &input, &out, &mut |_| {}).unwrap()
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
    let col = b.column_by_name(name).unwrap();
    let text = arrow::compute::cast(col, &DataType::Utf8).unwrap();
    let text = text.as_any().downcast_ref::<StringArray>().unwrap();
    text.iter().map(|v| v.map(str::to_owned)).collect()
}

#[test]
fn the_pipeline_reaches_k_and_reports_before_and_after() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(tmp.path(), &format!("{BASE}{TRANSFORMS}"));
    assert!(!r.refused, "{}", r.to_markdown());
    let t = r.transforms.as_ref().unwrap();
    let before = t.risk_before.as_ref().unwrap();
    let after = r.risk.as_ref().unwrap();
    assert!(before.k_anonymity < 3, "the raw ages make records unique");
    assert!(after.k_anonymity >= 3, "{}", r.to_markdown());
    assert!(!t.streaming && t.rows_held == 200);

    let b = read(tmp.path().join("out.parquet").as_path());
    assert!(
        b.column_by_name("notes").is_none(),
        "the dropped column is not written"
    );
    assert!(!r.outputs.iter().any(|o| o.name == "notes"));
    let schema = std::fs::read_to_string(tmp.path().join("out.schema.toml")).unwrap();
    assert!(!schema.contains("\"notes\""));
    // k over the written quasi-identifiers, counted from the file.
    let ages = strings(&b, "age");
    let districts = strings(&b, "district");
    let mut classes: HashMap<(Option<String>, Option<String>), usize> = HashMap::new();
    for (a, d) in ages.iter().zip(&districts) {
        *classes.entry((a.clone(), d.clone())).or_default() += 1;
    }
    assert!(classes.values().all(|c| *c >= 3), "{classes:?}");
    // Top-coding: no age above 90 survives as a number.
    assert!(
        ages.iter()
            .flatten()
            .all(|a| a == "90+" || a.parse::<u32>().unwrap() < 90)
    );
    // Noise: every revenue within ±5 of the truth (row order is kept).
    let rev = b
        .column_by_name("revenue")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    for i in 0..rev.len() {
        let truth = f64::from(i as u32 * 3) + 0.5;
        assert!((rev.value(i) - truth).abs() <= 5.0 + 1e-9);
    }
    let md = r.to_markdown();

    for needle in [
        "## Anonymisation transforms",
        "before | after",
        "not differential privacy",
        "local suppression to k",
        "mean absolute change, noise on `revenue`",
        "records swapped",
    ] {
        assert!(md.contains(needle), "{needle} missing from\n{md}");
    }
}

#[test]
fn a_suppression_target_that_is_not_met_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}{TRANSFORMS}max_share = 0.001\n",
        BASE.replace("min_k = 3", "min_k = 3\naction = \"refuse\"")
    );
    let r = run(tmp.path(), &cfg);
    assert!(r.refused);
    assert!(r.files.is_empty());
    assert!(!tmp.path().join("out.parquet").exists());
    assert!(
        r.warnings.iter().any(|w| w.contains("max_share")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn streaming_transforms_hold_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{BASE}\n[[transform]]\ntype = \"mask\"\ncolumn = \"district\"\nkeep = \"prefix\"\nlength = 1\n"
    );
    let r = run(tmp.path(), &cfg);
    let t = r.transforms.as_ref().unwrap();
    assert!(t.streaming && t.rows_held == 0);
    let b = read(tmp.path().join("out.parquet").as_path());
    assert!(
        strings(&b, "district")
            .iter()
            .flatten()
            .all(|d| d.chars().count() == 1)
    );
    assert_eq!(r.rows_written, 200);
}

#[test]
fn transform_configuration_errors_point_at_the_line() {
    for (bad, needle) in [
        ("[[transform]]\ntype = \"blur\"\n", "unknown transform type"),
        (
            "[[transform]]\ntype = \"mask\"\ncolumn = \"nope\"\nkeep = \"drop\"\n",
            "is not a",
        ),
        (
            "[[transform]]\ntype = \"noise\"\ncolumn = \"revenue\"\nscale = 1\n",
            "bound",
        ),
        (
            "[[transform]]\ntype = \"noise\"\ncolumn = \"segment\"\nscale = 1\nbound = 2\n",
            "needs a number",
        ),
        (
            "[[transform]]\ntype = \"suppress\"\nwindow = 0.1\n",
            "does not belong",
        ),
        (
            "[[transform]]\ntype = \"swap\"\ncolumn = \"revenue\"\nrate = 0.1\n",
            "window",
        ),
        (
            "[[transform]]\ntype = \"suppress\"\npriority = [\"age\"]\n",
            "every quasi-identifier",
        ),
        (
            "[[transform]]\ntype = \"mask\"\ncolumn = \"notes\"\nkeep = \"drop\"\n[[transform]]\ntype = \"mask\"\ncolumn = \"notes\"\nkeep = \"drop\"\n",
            "dropped by an earlier",
        ),
    ] {
        let e = PrepareConfig::from_toml(&format!("{BASE}{bad}")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(needle), "{bad}: {msg}");
        assert!(msg.contains("line"), "{bad}: {msg}");
    }
}

/// The outputs (upload, schema, activation) and the report (without its timing and paths) of
/// a prepare of `csv` with `threads` workers.
fn outputs_with_threads(csv: &str, config: &str, threads: usize) -> (PrepReport, Vec<Vec<u8>>) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, csv).unwrap();
    let cfg = PrepareConfig::from_toml(config).unwrap();
    let key = PseudonymKey::derive(b"transform-test-secret-0123456789", "transform-test").unwrap();
    let out = OutputPaths::next_to(&tmp.path().join("out.parquet"));
    let r = prepare_with_threads(&cfg, &key, &input, &out, threads, &mut |_| {}).unwrap();
    let report: String = r
        .to_markdown()
        .lines()
        .filter(|l| !l.starts_with("- time:"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(&tmp.path().display().to_string(), "<out>");
    let mut files = vec![report.into_bytes()];
    for p in [&out.upload, &out.schema, &out.activation] {
        files.push(std::fs::read(p).unwrap());
    }
    (r, files)
}

/// The transforms run on the writer thread in input order, so a streaming list and a
/// whole-table list (suppression, microaggregation) give the same files with 1 and 3 workers.
/// Only deterministic transforms: noise and swapping draw from the OS.
#[test]
fn transformed_output_is_the_same_whatever_the_thread_count() {
    // Three input batches and a bit, with dropped rows and rare districts to suppress.
    let rows = 2 * BATCH_ROWS + 777;
    let mut csv = String::from("email,age,postcode,segment,notes,revenue\n");
    let districts = [
        "SW1A 1AA", "M1 1AE", "B33 8TH", "CR2 6XH", "DN55 1PT", "W1A 0AX",
    ];
    for i in 0..rows {
        let email = if i % 1013 == 0 {
            String::new()
        } else {
            format!("p{i}@example.org")
        };
        let age = 18 + (i * 7919) % 90;
        let d = if i % 4999 == 0 {
            format!("E{} 1AA", 1 + i / 4999)
        } else {
            districts[i % 6].to_owned()
        };
        let seg = ["gold", "silver", "bronze"][i % 3];
        let _ = writeln!(csv, "{email},{age},{d},{seg},free text {i},{}.25", i % 500);
    }
    let base = BASE.replace(
        "[[identifier]]\ncolumn = \"email\"\nkind = \"email\"\n",
        "[[identifier]]\ncolumn = \"email\"\nkind = \"email\"\nsha256 = [\"meta\"]\n",
    );
    assert_ne!(base, BASE, "the activation file is part of the comparison");
    let streaming = format!(
        "{base}
[[transform]]
type = \"mask\"
column = \"notes\"
keep = \"drop\"

[[transform]]
type = \"top_code\"
column = \"age\"
at = 90

[[transform]]
type = \"mask\"
column = \"segment\"
keep = \"prefix\"
length = 1
"
    );
    let table = format!(
        "{streaming}
[[transform]]
type = \"microaggregate\"
column = \"revenue\"
k = 5

[[transform]]
type = \"suppress\"
priority = [\"age\", \"district\"]
"
    );
    for (name, config, held) in [("streaming", &streaming, false), ("table", &table, true)] {
        let (r1, one) = outputs_with_threads(&csv, config, 1);
        let t = r1.transforms.as_ref().unwrap();
        assert_eq!(t.streaming, !held, "{name}");
        assert_eq!(r1.rows_written, t.rows_out, "{name}");
        assert!(r1.rows_written > 2 * BATCH_ROWS as u64, "{name}");
        assert!(
            r1.rows_written < rows as u64,
            "{name}: rows without a unit are dropped"
        );
        if held {
            assert!(
                t.outcomes.iter().any(|o| o.suppressed > 0),
                "the rare districts are suppressed"
            );
        }
        let (_, three) = outputs_with_threads(&csv, config, 3);
        assert_eq!(
            String::from_utf8_lossy(&one[0]),
            String::from_utf8_lossy(&three[0]),
            "{name}: the report differs with 3 threads"
        );
        for (i, (a, b)) in one.iter().zip(&three).enumerate() {
            assert!(a == b, "{name}: output {i} differs with 3 threads");
        }
    }
}
