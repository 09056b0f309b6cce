//! No accepted query can fail on the data (issue: data-dependent errors as an oracle).
//!
//! A query that fails on some rows and not on others tells whether those rows exist, and the
//! engine's message would quote them. The checker proves every expression total after
//! DataFusion's coercion (`cleanroom_query::total`); these tests attack that promise:
//! the exact queries that failed before, then thousands of queries generated from the grammar
//! the checker accepts, run over adversarial data (nulls, extreme numbers, dates at both ends
//! of the calendar, numbers and dates written as text, unicode), asserting that every query the
//! checker accepts runs.

use cleanroom_query::QueryError;
use cleanroom_query::check::check;
use cleanroom_query::rewrite::{RunOptions, execute};

use crate::*;

const CRM: &[&str] = &[
    "customer_id:string:privacy_unit",
    "email:string:identifier",
    "city:string:dimension",
    "tag:string:dimension",
    "code:int64:dimension",
    "score:float64:dimension",
    "flag:bool:dimension",
    "born:date:dimension",
    "spend:float64:metric",
    "visits:int64:metric",
];
const CRM_HEADER: &str = "customer_id,email,city,tag,code,score,flag,born,spend,visits";

const AUD: &[&str] = &[
    "user_id:string:privacy_unit",
    "email:string:identifier",
    "tag:string:dimension",
    "seen:date:dimension",
    "n:int64:dimension",
];
const AUD_HEADER: &str = "user_id,email,tag,seen,n";

const TEXTS: &[&str] = &[
    "madrid",
    "",
    "1",
    " 42 ",
    "9999-12-31",
    "2024-02-30",
    "NaN",
    "ünïcødé ✓",
    "-9223372036854775808",
    "true",
    "%_\\\\",
    "x'); --",
    "दिल्ली",
    "0x1F",
];
const INTS: &[&str] = &[
    "-9223372036854775808",
    "9223372036854775807",
    "0",
    "-1",
    "",
    "7",
];
const FLOATS: &[&str] = &[
    "-1.7976931348623157e308",
    "1.7976931348623157e308",
    "-0.0",
    "5e-324",
    "0.5",
    "",
];
const DATES: &[&str] = &[
    "0001-01-01",
    "9999-12-31",
    "1970-01-01",
    "2262-04-12",
    "1677-09-21",
    "",
    "2024-02-29",
];
const BOOLS: &[&str] = &["true", "false", ""];

fn quoted(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// 120 customers and 90 audience members over the adversarial values, sharing 60 emails.
fn adversarial() -> Fixture {
    let mut f = Fixture::new();
    let crm = (0..120).map(|i| {
        format!(
            "c{i},e{i},{},{},{},{},{},{},{},{}",
            quoted(TEXTS[i % TEXTS.len()]),
            quoted(TEXTS[(i / 3) % TEXTS.len()]),
            INTS[i % INTS.len()],
            FLOATS[i % FLOATS.len()],
            BOOLS[i % BOOLS.len()],
            DATES[i % DATES.len()],
            FLOATS[(i + 1) % FLOATS.len()],
            INTS[(i + 2) % INTS.len()],
        )
    });
    let aud = (0..90).map(|i| {
        format!(
            "u{i},e{},{},{},{}",
            i * 2,
            quoted(TEXTS[(i + 5) % TEXTS.len()]),
            DATES[(i + 3) % DATES.len()],
            INTS[(i + 1) % INTS.len()],
        )
    });
    let crm_policy = PolicyDraft {
        join_keys: vec!["email".into()],
        dimensions: ["city", "tag", "code", "score", "flag", "born"]
            .map(String::from)
            .to_vec(),
        metrics: vec![
            metric("spend", -1e6, 1e6),
            metric("visits", -1000.0, 1000.0),
        ],
        analysts: vec!["aud".into()],
        receivers: vec!["aud".into()],
        ..Default::default()
    };
    let aud_policy = PolicyDraft {
        join_keys: vec!["email".into()],
        dimensions: ["tag", "seen", "n"].map(String::from).to_vec(),
        analysts: vec!["crm".into()],
        receivers: vec!["crm".into()],
        ..Default::default()
    };
    f.add("crm", "crm", CRM, crm_policy, &csv(CRM_HEADER, crm));
    f.add("aud", "aud", AUD, aud_policy, &csv(AUD_HEADER, aud));
    f
}

async fn run_exact(
    sql: &str,
    catalog: &cleanroom_query::Catalog,
    bound: bool,
) -> Result<usize, QueryError> {
    let spec = check(sql, catalog).await?;
    let groups = execute(
        &spec,
        catalog,
        RunOptions {
            bound_contributions: bound,
            partitions: 2,
        },
    )
    .await
    .map_err(|e| QueryError::Internal(format!("ACCEPTED BUT FAILED: {e}")))?;
    Ok(groups.len())
}

fn rule_of(e: &QueryError) -> Option<&'static str> {
    e.rule()
}

#[tokio::test]
async fn the_casts_coercion_adds_are_refused_before_anything_runs() {
    let f = adversarial();
    let catalog = f.exact();
    // The query of the report: CASE text WHEN <int> casts every city to an integer, and only
    // the rows with tag 't' reach it.
    let sql = "SELECT COUNT(*) AS n FROM crm p JOIN aud a ON p.email = a.email \
               WHERE (CASE WHEN a.tag = 't' THEN CASE p.city WHEN 1 THEN 'x' END ELSE 'y' END) = 'y'";
    let e = check(sql, &catalog).await.unwrap_err();
    assert_eq!(rule_of(&e), Some("cast_not_allowed"), "{e}");
    assert!(e.to_string().contains("city"), "{e}");
    for sql in [
        // text and date branches unified to a date
        "SELECT CASE WHEN p.flag THEN p.born ELSE p.city END AS d, COUNT(*) AS n FROM crm p GROUP BY 1",
        // date_part and date_trunc of text
        "SELECT date_part('year', p.city) AS y, COUNT(*) AS n FROM crm p GROUP BY 1",
        "SELECT date_trunc('month', p.tag) AS m, COUNT(*) AS n FROM crm p GROUP BY 1",
        // a text column compared with a date inside a CASE
        "SELECT COUNT(*) AS n FROM crm p WHERE CASE WHEN p.flag THEN p.city END > p.born",
        // an integer dimension in a float context is fine, a text one in an integer IN list is not
        "SELECT COUNT(*) AS n FROM crm p WHERE p.city IN (1, 2)",
    ] {
        let e = check(sql, &catalog).await.unwrap_err();
        assert!(
            matches!(
                rule_of(&e),
                Some("cast_not_allowed" | "type_mismatch" | "function_not_allowed")
            ),
            "{sql}: {e}"
        );
    }
    // A constant that cannot be converted is refused now, not on the rows that reach it.
    let e = check(
        "SELECT COUNT(*) AS n FROM crm p WHERE CASE WHEN p.city = 'madrid' THEN p.born ELSE '2020-13-45' END > '2000-01-01'",
        &catalog,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, QueryError::Invalid(_) | QueryError::Refused { .. }),
        "{e}"
    );
    // LIKE … ESCAPE with an escape DataFusion does not run: refused, not charged and failed.
    let e = check(
        "SELECT COUNT(*) AS n FROM crm p WHERE p.city LIKE 'a$%' ESCAPE '$'",
        &catalog,
    )
    .await
    .unwrap_err();
    assert_eq!(rule_of(&e), Some("like_escape_not_allowed"), "{e}");
}

#[tokio::test]
async fn date_functions_are_total_over_the_whole_calendar() {
    let f = adversarial();
    let catalog = f.exact();
    // 9999-12-31 and 0001-01-01 are beyond DataFusion's nanosecond timestamps: truncation of a
    // date runs in days, and returns dates.
    for unit in ["year", "quarter", "month", "week", "day"] {
        let sql = format!(
            "SELECT date_trunc('{unit}', p.born) AS d, COUNT(*) AS n FROM crm p GROUP BY 1"
        );
        let groups = run_exact(&sql, &catalog, false).await.unwrap();
        assert!(groups >= 6, "{unit}: {groups} groups");
    }
    for part in [
        "year", "quarter", "month", "week", "day", "dow", "doy", "isodow", "isoyear",
    ] {
        let sql =
            format!("SELECT date_part('{part}', a.seen) AS d, COUNT(*) AS n FROM aud a GROUP BY 1");
        run_exact(&sql, &catalog, true).await.unwrap();
    }
    // The truncated value is right at the far end of the calendar.
    let spec = check(
        "SELECT date_trunc('quarter', p.born) AS d, COUNT(*) AS n FROM crm p WHERE p.born > '9000-01-01' GROUP BY 1",
        &catalog,
    )
    .await
    .unwrap();
    let groups = execute(
        &spec,
        &catalog,
        RunOptions {
            bound_contributions: false,
            partitions: 1,
        },
    )
    .await
    .unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        groups[0].keys[0].to_string(),
        "9999-10-01",
        "{:?}",
        groups[0].keys
    );
}

/// SplitMix64: a fixed-seed generator, so a failing query can be reproduced from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const CRM_DIMS: &[&str] = &["p.city", "p.tag", "p.code", "p.score", "p.flag", "p.born"];
const AUD_DIMS: &[&str] = &["a.tag", "a.seen", "a.n"];
const LITERALS: &[&str] = &[
    "'madrid'",
    "''",
    "'1'",
    "'9999-12-31'",
    "'2024-02-30'",
    "'ünïcødé ✓'",
    "1",
    "-1",
    "0",
    "9223372036854775807",
    "1.5",
    "-0.0",
    "1e308",
    "true",
    "false",
    "NULL",
    "DATE '2020-01-01'",
    "'2020-01-01'",
];
const TEXT_FUNCTIONS: &[&str] = &[
    "lower",
    "upper",
    "trim",
    "ltrim",
    "rtrim",
    "length",
    "initcap",
    "char_length",
];
const PARTS: &[&str] = &[
    "year", "quarter", "month", "week", "day", "dow", "doy", "isodow", "isoyear",
];
const UNITS: &[&str] = &["year", "quarter", "month", "week", "day"];
const CMP: &[&str] = &[
    "=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "IS DISTINCT FROM",
    "IS NOT DISTINCT FROM",
];
const PATTERNS: &[&str] = &["'%a%'", "'m_d%'", "''", "'\\%'", "'%'", "'100\\_%'", "'_'"];

struct Gen<'r> {
    rng: &'r mut Rng,
    join: bool,
}

impl Gen<'_> {
    fn column(&mut self) -> String {
        if self.join && self.rng.chance(35) {
            self.rng.pick(AUD_DIMS).to_owned()
        } else {
            self.rng.pick(CRM_DIMS).to_owned()
        }
    }

    fn value(&mut self, depth: usize) -> String {
        if depth == 0 {
            return if self.rng.chance(70) {
                self.column()
            } else {
                self.rng.pick(LITERALS).to_owned()
            };
        }
        let d = depth - 1;
        match self.rng.below(13) {
            0 | 1 => self.column(),
            2 => self.rng.pick(LITERALS).to_owned(),
            3 => format!("{}({})", self.rng.pick(TEXT_FUNCTIONS), self.value(d)),
            4 => {
                let start = self.rng.below(5) + 1;
                if self.rng.chance(50) {
                    format!("substr({}, {start}, {})", self.value(d), self.rng.below(4))
                } else {
                    format!("substr({}, {start})", self.value(d))
                }
            }
            5 => format!(
                "{}({}, {})",
                self.rng.pick(&["left", "right"]),
                self.value(d),
                self.rng.below(4)
            ),
            6 => format!("coalesce({}, {})", self.value(d), self.value(d)),
            7 => format!("date_part('{}', {})", self.rng.pick(PARTS), self.value(d)),
            8 => format!("date_trunc('{}', {})", self.rng.pick(UNITS), self.value(d)),
            9 => format!(
                "CASE WHEN {} THEN {} ELSE {} END",
                self.predicate(d),
                self.value(d),
                self.value(d)
            ),
            10 => {
                let base = self.value(d);
                let when = self.rng.pick(LITERALS);
                if self.rng.chance(50) {
                    format!("CASE {base} WHEN {when} THEN {} END", self.value(d))
                } else {
                    format!(
                        "CASE {base} WHEN {when} THEN {} ELSE {} END",
                        self.value(d),
                        self.value(d)
                    )
                }
            }
            11 => format!(
                "CAST({} AS {})",
                self.value(d),
                self.rng.pick(&[
                    "VARCHAR", "VARCHAR", "TEXT", "INT", "BIGINT", "DATE", "DOUBLE"
                ])
            ),
            _ => format!("({})", self.value(d)),
        }
    }

    fn predicate(&mut self, depth: usize) -> String {
        let d = depth.saturating_sub(1);
        match self.rng.below(11) {
            0..=2 => format!("{} {} {}", self.value(d), self.rng.pick(CMP), self.value(d)),
            3 => format!(
                "{} IS {}NULL",
                self.value(d),
                if self.rng.chance(50) { "NOT " } else { "" }
            ),
            4 => format!(
                "{} {}BETWEEN {} AND {}",
                self.value(d),
                if self.rng.chance(30) { "NOT " } else { "" },
                self.rng.pick(LITERALS),
                self.rng.pick(LITERALS)
            ),
            5 => format!(
                "{} {}IN ({}, {})",
                self.value(d),
                if self.rng.chance(30) { "NOT " } else { "" },
                self.rng.pick(LITERALS),
                self.rng.pick(LITERALS)
            ),
            6 => {
                let escape = match self.rng.below(6) {
                    0 => " ESCAPE '\\'",
                    1 => " ESCAPE '$'",
                    _ => "",
                };
                format!(
                    "{} {}{}LIKE {}{escape}",
                    self.value(d),
                    if self.rng.chance(20) { "NOT " } else { "" },
                    if self.rng.chance(20) { "I" } else { "" },
                    self.rng.pick(PATTERNS)
                )
            }
            7 if depth > 0 => format!("NOT ({})", self.predicate(d)),
            8 if depth > 0 => format!(
                "({}) {} ({})",
                self.predicate(d),
                self.rng.pick(&["AND", "OR"]),
                self.predicate(d)
            ),
            9 => "p.flag".into(),
            _ => format!("{} = {}", self.column(), self.rng.pick(LITERALS)),
        }
    }

    fn query(&mut self) -> String {
        let depth = self.rng.below(4);
        let group = self.value(depth);
        let agg = self.rng.pick(&[
            "COUNT(*)",
            "COUNT(DISTINCT p.customer_id)",
            "SUM(p.spend)",
            "AVG(p.visits)",
            "COUNT(p.visits)",
        ]);
        let from = if self.join {
            "crm p JOIN aud a ON p.email = a.email"
        } else {
            "crm p"
        };
        let filter = if self.rng.chance(80) {
            let depth = self.rng.below(4);
            format!(" WHERE {}", self.predicate(depth))
        } else {
            String::new()
        };
        format!("SELECT {group} AS g, {agg} AS m FROM {from}{filter} GROUP BY 1")
    }
}

/// How many generated queries to run; `CLEANROOM_TOTALITY_QUERIES` asks for more.
fn query_count() -> usize {
    std::env::var("CLEANROOM_TOTALITY_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_query_the_checker_accepts_fails_on_adversarial_data() {
    let f = adversarial();
    let catalog = f.exact();
    let mut rng = Rng(0x5EED_CAFE_D00D_0011);
    let (mut accepted, mut refused) = (0usize, 0usize);
    let mut accepted_kinds = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    let n = query_count();
    for i in 0..n {
        let join = rng.chance(50);
        let sql = Gen {
            rng: &mut rng,
            join,
        }
        .query();
        match check(&sql, &catalog).await {
            Err(_) => refused += 1,
            Ok(spec) => {
                accepted += 1;
                for kind in [
                    "CASE",
                    "date_trunc",
                    "date_part",
                    "substr",
                    "coalesce",
                    "LIKE",
                    "CAST",
                    "IN (",
                    "BETWEEN",
                ] {
                    if sql.contains(kind) {
                        accepted_kinds.insert(kind);
                    }
                }
                let run = execute(
                    &spec,
                    &catalog,
                    RunOptions {
                        bound_contributions: i % 4 == 0,
                        partitions: 2,
                    },
                )
                .await;
                if let Err(e) = run {
                    failures.push(format!("{sql}\n    -> {e}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {accepted} accepted queries failed at run time:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The test means something only if the checker accepted a good share of rich queries.
    assert!(
        accepted * 5 >= n,
        "only {accepted} of {n} generated queries were accepted ({refused} refused)"
    );
    assert_eq!(
        accepted_kinds.len(),
        9,
        "every construct should appear in accepted queries: {accepted_kinds:?}"
    );
}

/// Deep input is measured before DataFusion plans it: every way SQL nests, up to the size
/// limit, is refused as `query_too_complex` (or as invalid SQL), never a stack overflow; a
/// query within the bound still plans and runs.
#[tokio::test]
async fn nesting_is_bounded_before_planning() {
    let f = adversarial();
    let catalog = f.exact();
    let limit = cleanroom_query::check::MAX_SQL_BYTES - 200;
    let wrap = |unit: &str, open: &str, close: &str| -> String {
        let n = limit / (open.len() + close.len());
        format!("{}{}{}", open.repeat(n), unit, close.repeat(n))
    };
    let chain = |sep: &str, unit: &str| -> String {
        let n = limit / (sep.len() + unit.len());
        vec![unit; n].join(sep)
    };
    let base = "SELECT p.city AS c, COUNT(*) AS n FROM crm p WHERE";
    let cases = [
        format!("{base} p.code = {} GROUP BY 1", chain("+", "1")),
        format!("{base} {} GROUP BY 1", chain(" AND ", "p.flag")),
        format!("{base} {} GROUP BY 1", chain(" OR ", "p.city = 'a'")),
        format!("{base} p.code = {} GROUP BY 1", wrap("1", "(", ")")),
        format!(
            "{base} p.city = {} GROUP BY 1",
            wrap("'x'", "CASE WHEN p.flag THEN ", " END")
        ),
        format!("{base} p.city = {} GROUP BY 1", wrap("'x'", "lower(", ")")),
        format!("{base} p.code IN {} GROUP BY 1", wrap("1", "(SELECT ", ")")),
        format!("{base} {} GROUP BY 1", wrap("p.flag", "NOT ", "")),
        format!(
            "{base} p.code = 1{} GROUP BY 1",
            "::bigint".repeat(limit / 8)
        ),
        format!("{base} p.code = {}1 GROUP BY 1", "- ".repeat(limit / 2)),
        format!(
            "{base} p.city IS NULL{} GROUP BY 1",
            " IS NULL".repeat(limit / 8)
        ),
    ];
    for sql in &cases {
        assert!(sql.len() <= cleanroom_query::check::MAX_SQL_BYTES);
        let e = check(sql, &catalog).await.unwrap_err();
        assert!(
            rule_of(&e) == Some("query_too_complex") || matches!(e, QueryError::Invalid(_)),
            "{}…: {e}",
            &sql[..80]
        );
    }
    // 80 conditions in a chain stay within the bound and run.
    let ok = format!(
        "{base} {} GROUP BY 1",
        (0..80)
            .map(|i| format!("p.city = 'c{i}'"))
            .collect::<Vec<_>>()
            .join(" OR ")
    );
    run_exact(&ok, &catalog, true).await.unwrap();
}
