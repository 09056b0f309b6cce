//! The corpus in `testdata/identifiers/corpus.tsv`: messy real-world-shaped identifiers and the
//! normalised value (or the invalid category) each must give. One data-driven test reads it
//! all and reports every mismatch at once.

use cleanroom_identity::normalise::{IdKind, NormaliseOptions, normalise};

const CORPUS: &str = include_str!("../../../../testdata/identifiers/corpus.tsv");

/// Decodes `\t`, `\n`, `\\`, `\"` and `\u{HEX}`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('u') => {
                assert_eq!(chars.next(), Some('{'), "bad escape in {s:?}");
                let hex: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let code = u32::from_str_radix(&hex, 16).expect("hex escape");
                out.push(char::from_u32(code).expect("a Unicode scalar"));
            }
            other => panic!("unknown escape \\{other:?} in {s:?}"),
        }
    }
    out
}

#[test]
fn the_corpus_normalises_as_expected() {
    let mut rows = 0;
    let mut kinds = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for (i, line) in CORPUS.lines().enumerate() {
        if line.starts_with('#') || line.starts_with("kind\t") || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 6, "line {}: six tab-separated fields", i + 1);
        let kind = IdKind::parse(f[0]).expect("a kind");
        let opts = NormaliseOptions {
            gmail_rules: f[2] == "1",
            default_region: f[1].to_owned(),
        };
        let input = unescape(f[3]);
        let got = match normalise(kind, &input, &opts) {
            Ok(v) => v,
            Err(e) => format!("!{}", e.category()),
        };
        let want = unescape(f[4]);
        if got != want {
            failures.push(format!(
                "line {}: {} {:?} ({}) gave {:?}, expected {:?}",
                i + 1,
                f[0],
                input,
                f[5],
                got,
                want
            ));
        }
        // Whatever normalises is a fixed point.
        if !got.starts_with('!') {
            assert_eq!(normalise(kind, &got, &opts).as_deref(), Ok(got.as_str()));
        }
        rows += 1;
        *kinds.entry(kind).or_insert(0) += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {rows} rows differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(rows >= 60, "the corpus has {rows} rows");
    assert_eq!(
        kinds.len(),
        IdKind::ALL.len(),
        "every kind is in the corpus"
    );
}
