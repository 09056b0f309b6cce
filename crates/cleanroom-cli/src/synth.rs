//! Deterministic synthetic first-party data for the demo and the benchmarks.
//!
//! One universe of people; the brand knows `people` of them as customers, the publisher
//! `1.25 × people` as users, and about 35 % of the brand's customers are also publisher users.
//! Each party has its own customer/user id (its privacy unit) and the same keyed pseudonym of
//! each person's normalised email (the join key), computed as `cleanroom prepare` will:
//! HMAC-SHA-256 under a secret the parties share and the server never receives. Brand purchases
//! are higher for people the publisher exposed to the campaign, so later analyses find a lift.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use hmac::{Hmac, KeyInit, Mac};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use sha2::Sha256;

/// The demo's shared pseudonymisation secret. Real parties agree on theirs out of band.
pub const DEMO_SECRET: &[u8] = b"demo-only shared secret: never use outside the demo";

const AGE_BANDS: [(&str, u32); 6] = [
    ("18-24", 12),
    ("25-34", 22),
    ("35-44", 21),
    ("45-54", 18),
    ("55-64", 15),
    ("65+", 12),
];
const REGIONS: [(&str, u32); 8] = [
    ("north", 14),
    ("north-east", 8),
    ("east", 12),
    ("south-east", 20),
    ("south", 12),
    ("south-west", 10),
    ("west", 11),
    ("london", 13),
];
const FIRST: [&str; 12] = [
    "alex", "sam", "jo", "maria", "li", "noah", "amira", "tom", "eva", "yusuf", "ines", "kai",
];
const DOMAINS: [&str; 5] = [
    "gmail.com",
    "outlook.com",
    "yahoo.co.uk",
    "proton.me",
    "example.org",
];

fn pick<'a>(rng: &mut Xoshiro256PlusPlus, table: &[(&'a str, u32)]) -> &'a str {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (v, w) in table {
        if x < *w {
            return v;
        }
        x -= w;
    }
    table[table.len() - 1].0
}

/// One person of the universe.
pub struct Person {
    pub email: String,
    pub age_band: &'static str,
    pub region: &'static str,
    pub exposed: bool,
}

/// How the universe splits between the parties.
#[derive(Debug, Clone, Copy)]
pub struct Universe {
    pub brand: u64,
    pub publisher: u64,
    pub overlap: u64,
}

impl Universe {
    pub fn new(people: u64) -> Self {
        let brand = people;
        let publisher = people + people / 4;
        let overlap = people * 35 / 100;
        Universe {
            brand,
            publisher,
            overlap,
        }
    }
    pub fn size(&self) -> u64 {
        self.brand + self.publisher - self.overlap
    }
    /// Brand customers are people `0..brand`; publisher users are `brand - overlap ..`.
    pub fn in_brand(&self, i: u64) -> bool {
        i < self.brand
    }
    pub fn in_publisher(&self, i: u64) -> bool {
        i >= self.brand - self.overlap && i < self.size()
    }
}

pub fn people(u: &Universe, seed: u64) -> Vec<Person> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..u.size())
        .map(|i| {
            let first = FIRST[rng.random_range(0..FIRST.len())];
            let domain = DOMAINS[rng.random_range(0..DOMAINS.len())];
            Person {
                email: format!("{first}.{i}@{domain}"),
                age_band: pick(&mut rng, &AGE_BANDS),
                region: pick(&mut rng, &REGIONS),
                exposed: rng.random_bool(0.4),
            }
        })
        .collect()
}

pub fn pseudonym(mac: &Hmac<Sha256>, email: &str) -> String {
    let mut m = mac.clone();
    m.update(email.trim().to_lowercase().as_bytes());
    hex::encode(m.finalize().into_bytes())
}

fn date(rng: &mut Xoshiro256PlusPlus) -> String {
    // 2024-01-01 .. 2026-10-31
    let day = rng.random_range(0..(365 + 365 + 304));
    let (mut y, mut d): (u32, u32) = (2024, day);
    loop {
        let len = if y.is_multiple_of(4) { 366 } else { 365 };
        if d < len {
            break;
        }
        d -= len;
        y += 1;
    }
    let months = [
        31,
        if y.is_multiple_of(4) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut m = 0;
    while d >= months[m] {
        d -= months[m];
        m += 1;
    }
    format!("{y:04}-{:02}-{:02}", m + 1, d + 1)
}

pub const BRAND_SCHEMA: &str = r#"# The brand's CRM extract. Roles tell the clean room what each column may be used for.
[[columns]]
name = "customer_id"
type = "string"
role = "privacy_unit"

[[columns]]
name = "email_hmac"
type = "string"
role = "identifier"

[[columns]]
name = "age_band"
type = "string"
role = "dimension"

[[columns]]
name = "region"
type = "string"
role = "dimension"

[[columns]]
name = "purchases"
type = "int64"
role = "metric"

[[columns]]
name = "revenue"
type = "float64"
role = "metric"

[[columns]]
name = "first_purchase"
type = "date"
role = "dimension"
"#;

pub const PUBLISHER_SCHEMA: &str = r#"# The publisher's logged-in audience.
[[columns]]
name = "user_id"
type = "string"
role = "privacy_unit"

[[columns]]
name = "email_hmac"
type = "string"
role = "identifier"

[[columns]]
name = "age_band"
type = "string"
role = "dimension"

[[columns]]
name = "region"
type = "string"
role = "dimension"

[[columns]]
name = "page_views"
type = "int64"
role = "metric"

[[columns]]
name = "exposed"
type = "bool"
role = "dimension"

[[columns]]
name = "last_visit"
type = "date"
role = "dimension"
"#;

/// Writes one party's CSV; returns the number of rows.
pub fn write_csv(
    party: &str,
    u: &Universe,
    people: &[Person],
    seed: u64,
    out: &mut dyn Write,
) -> Result<u64> {
    let mac = Hmac::<Sha256>::new_from_slice(DEMO_SECRET).expect("HMAC takes any key length");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x005e_ed0f_da7a);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut rows = 0;
    match party {
        "brand" => {
            writeln!(
                w,
                "customer_id,email_hmac,age_band,region,purchases,revenue,first_purchase"
            )?;
            for (i, p) in people
                .iter()
                .enumerate()
                .filter(|(i, _)| u.in_brand(*i as u64))
            {
                let lam = if p.exposed && u.in_publisher(i as u64) {
                    2.6
                } else {
                    2.0
                };
                let purchases = poisson(&mut rng, lam);
                let revenue = purchases as f64 * rng.random_range(18.0..72.0);
                writeln!(
                    w,
                    "B{:08},{},{},{},{},{:.2},{}",
                    i * 7 + 3,
                    pseudonym(&mac, &p.email),
                    p.age_band,
                    p.region,
                    purchases,
                    revenue,
                    date(&mut rng)
                )?;
                rows += 1;
            }
        }
        "publisher" => {
            writeln!(
                w,
                "user_id,email_hmac,age_band,region,page_views,exposed,last_visit"
            )?;
            for (i, p) in people
                .iter()
                .enumerate()
                .filter(|(i, _)| u.in_publisher(*i as u64))
            {
                writeln!(
                    w,
                    "U{:09},{},{},{},{},{},{}",
                    (i as u64) * 13 + 11,
                    pseudonym(&mac, &p.email),
                    p.age_band,
                    p.region,
                    rng.random_range(1..400),
                    p.exposed,
                    date(&mut rng)
                )?;
                rows += 1;
            }
        }
        other => bail!("--party must be brand or publisher, not {other:?}"),
    }
    w.flush()?;
    Ok(rows)
}

/// A person's raw identifiers and exact age, as the parties' own systems hold them (the demo
/// feeds these to `cleanroom prepare`; nothing raw is uploaded).
pub struct RawIds {
    /// UK mobile, national significant number (10 digits, 77… or 78…).
    pub mobile: u64,
    /// Mobile advertising id (lowercase UUID).
    pub maid: String,
    pub age: u32,
}

/// Raw identifiers of everyone in the universe, drawn from their own stream so they are the
/// same whichever party holds them.
pub fn raw_ids(people: &[Person], seed: u64) -> Vec<RawIds> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x01d5_0f7e_0b1e);
    people
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (lo, hi) = match p.age_band {
                "18-24" => (18, 24),
                "25-34" => (25, 34),
                "35-44" => (35, 44),
                "45-54" => (45, 54),
                "55-64" => (55, 64),
                _ => (65, 90),
            };
            let a: u128 = rng.random();
            let mut hex = format!("{a:032x}");
            hex.replace_range(12..13, "4"); // a version-4 UUID, as devices report
            RawIds {
                mobile: 7_700_000_000 + (i as u64 * 7_919) % 200_000_000,
                maid: format!(
                    "{}-{}-{}-{}-{}",
                    &hex[..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..]
                ),
                age: rng.random_range(lo..=hi),
            }
        })
        .collect()
}

/// Which identifiers each party collects, and how often: the brand's CRM has mostly emails,
/// the publisher's logins are often by app (device id) or phone.
pub struct Coverage {
    pub email: f64,
    pub phone: f64,
    pub maid: f64,
}

pub const BRAND_COVERAGE: Coverage = Coverage {
    email: 0.70,
    phone: 0.55,
    maid: 0.25,
};
pub const PUBLISHER_COVERAGE: Coverage = Coverage {
    email: 0.55,
    phone: 0.40,
    maid: 0.70,
};

/// How a party holds one identifier of a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Absent,
    Valid,
    /// A placeholder such as `n/a` that `prepare` must count as invalid and never match.
    Invalid,
}

/// How `party` holds each identifier of person `i`: [email, phone, device id]. Deterministic.
pub fn holds(party: &str, i: u64, seed: u64) -> [Held; 3] {
    let c = if party == "brand" {
        &BRAND_COVERAGE
    } else {
        &PUBLISHER_COVERAGE
    };
    let salt = if party == "brand" { 0xb7a4d } else { 0x9b115 };
    let mut rng =
        Xoshiro256PlusPlus::seed_from_u64(seed ^ salt ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut held = [c.email, c.phone, c.maid].map(|p| {
        if !rng.random_bool(p) {
            Held::Absent
        } else if rng.random_bool(0.01) {
            Held::Invalid
        } else {
            Held::Valid
        }
    });
    // Everyone is known by at least one identifier.
    if held.iter().all(|h| *h == Held::Absent) {
        held[0] = Held::Valid;
    }
    held
}

/// The identifier type a cascade (email, then phone, then device id) first matches person `i`
/// on: 0, 1, 2, or `None`. The demo's ground truth.
pub fn cascade_level(u: &Universe, i: u64, seed: u64) -> Option<usize> {
    if !(u.in_brand(i) && u.in_publisher(i)) {
        return None;
    }
    let b = holds("brand", i, seed);
    let p = holds("publisher", i, seed);
    (0..3).find(|k| b[*k] == Held::Valid && p[*k] == Held::Valid)
}

fn messy_email(rng: &mut Xoshiro256PlusPlus, email: &str) -> String {
    let mut e = email.to_owned();
    if rng.random_bool(0.3) {
        e = e.to_uppercase();
    } else if rng.random_bool(0.3) {
        let mut c = e.chars();
        e = c
            .next()
            .map(|f| f.to_uppercase().chain(c).collect())
            .unwrap_or_default();
    }
    if e.to_ascii_lowercase().ends_with("@gmail.com") && rng.random_bool(0.3) {
        // Gmail ignores dots and +tags: prepare's Gmail rules find the same person.
        let (local, domain) = e.split_once('@').unwrap_or((&e, ""));
        e = format!("{}+news@{domain}", local.replace('.', ""));
    }
    if rng.random_bool(0.2) {
        e = format!("  {e} ");
    }
    e
}

fn messy_phone(rng: &mut Xoshiro256PlusPlus, n: u64) -> String {
    let d = n.to_string();
    match rng.random_range(0..4) {
        0 => format!("0{} {}", &d[..4], &d[4..]),
        1 => format!("+44 {} {} {}", &d[..4], &d[4..7], &d[7..]),
        2 => format!("0044{d}"),
        _ => format!("(0{}) {}-{}", &d[..4], &d[4..7], &d[7..]),
    }
}

/// Writes one party's raw CSV (emails, phone numbers and device ids as its systems hold them,
/// messy, a few invalid; exact ages) for `cleanroom prepare`. Returns the number of rows.
pub fn write_raw_csv(
    party: &str,
    u: &Universe,
    people: &[Person],
    ids: &[RawIds],
    seed: u64,
    out: &mut dyn Write,
) -> Result<u64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x005e_ed0f_da7a);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut rows = 0;
    let brand = match party {
        "brand" => true,
        "publisher" => false,
        other => bail!("--party must be brand or publisher, not {other:?}"),
    };
    if brand {
        writeln!(
            w,
            "customer_id,email,mobile,device_id,age,region,purchases,revenue"
        )?;
    } else {
        writeln!(w, "user_id,email,phone,maid,age,region,page_views,exposed")?;
    }
    for (i, p) in people.iter().enumerate() {
        let i64_ = i as u64;
        if (brand && !u.in_brand(i64_)) || (!brand && !u.in_publisher(i64_)) {
            continue;
        }
        let held = holds(party, i64_, seed);
        let id = &ids[i];
        let email = match held[0] {
            Held::Absent => String::new(),
            Held::Invalid => "n/a".to_owned(),
            Held::Valid => messy_email(&mut rng, &p.email),
        };
        let phone = match held[1] {
            Held::Absent => String::new(),
            Held::Invalid => "unknown".to_owned(),
            Held::Valid => messy_phone(&mut rng, id.mobile),
        };
        let maid = match held[2] {
            Held::Absent => String::new(),
            Held::Invalid => "00000000-0000-0000-0000-000000000000".to_owned(), // opted out
            Held::Valid if brand && rng.random_bool(0.5) => id.maid.to_uppercase(), // iOS style
            Held::Valid => id.maid.clone(),
        };
        if brand {
            let lam = if p.exposed && u.in_publisher(i64_) {
                2.6
            } else {
                2.0
            };
            let purchases = poisson(&mut rng, lam);
            let revenue = purchases as f64 * rng.random_range(18.0..72.0);
            writeln!(
                w,
                "B{:08},{email},{phone},{maid},{},{},{purchases},{revenue:.2}",
                i * 7 + 3,
                id.age,
                p.region,
            )?;
        } else {
            writeln!(
                w,
                "U{:09},{email},{phone},{maid},{},{},{},{}",
                i64_ * 13 + 11,
                id.age,
                p.region,
                rng.random_range(1..400),
                if p.exposed { "yes" } else { "no" },
            )?;
        }
        rows += 1;
    }
    w.flush()?;
    Ok(rows)
}

fn poisson(rng: &mut Xoshiro256PlusPlus, lambda: f64) -> u32 {
    // Knuth's method: fine for the small means used here.
    let l = (-lambda).exp();
    let (mut k, mut p) = (0, 1.0);
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

pub fn write_party(
    party: &str,
    n: u64,
    seed: u64,
    out: &Path,
    schema_out: Option<&Path>,
    raw: bool,
) -> Result<()> {
    if n < 10 {
        bail!("--people must be at least 10");
    }
    let u = Universe::new(n);
    let ps = people(&u, seed);
    let mut f =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let rows = if raw {
        write_raw_csv(party, &u, &ps, &raw_ids(&ps, seed), seed, &mut f)?
    } else {
        write_csv(party, &u, &ps, seed, &mut f)?
    };
    if let Some(s) = schema_out {
        let text = match (party == "brand", raw) {
            (true, false) => BRAND_SCHEMA,
            (false, false) => PUBLISHER_SCHEMA,
            (true, true) => BRAND_PREP,
            (false, true) => PUBLISHER_PREP,
        };
        std::fs::write(s, text).with_context(|| format!("cannot write {}", s.display()))?;
    }
    eprintln!(
        "wrote {rows} {}{party} rows to {}",
        if raw { "raw " } else { "" },
        out.display()
    );
    Ok(())
}

/// The brand's `cleanroom prepare` configuration: what each column of its CRM extract is.
pub const BRAND_PREP: &str = r#"
collaboration = "spring-campaign"
default_region = "GB"
gmail_rules = true
privacy_unit = "customer_id"        # the brand's own customer number, kept as written

[[identifier]]
column = "email"
kind = "email"
priority = 1

[[identifier]]
column = "mobile"
name = "phone"                      # -> phone_hmac, as the publisher names it
kind = "phone"
priority = 2

[[identifier]]
column = "device_id"
name = "maid"
kind = "maid"
priority = 3

[[quasi_identifier]]
column = "age"
name = "age_band"
generalise = "age_band"

[[quasi_identifier]]
column = "region"
generalise = "none"

[[metric]]
column = "purchases"
type = "int64"

[[metric]]
column = "revenue"
type = "float64"

[risk]
k = 10
max_unique_share = 0.01
action = "refuse"
"#;

/// The publisher's `cleanroom prepare` configuration.
pub const PUBLISHER_PREP: &str = r#"
collaboration = "spring-campaign"
default_region = "GB"
gmail_rules = true
privacy_unit = "user_id"

[[identifier]]
column = "email"
kind = "email"
priority = 1

[[identifier]]
column = "phone"
kind = "phone"
priority = 2

[[identifier]]
column = "maid"
kind = "maid"
priority = 3

[[quasi_identifier]]
column = "age"
name = "age_band"
generalise = "age_band"

[[quasi_identifier]]
column = "region"
generalise = "none"

[[dimension]]
column = "exposed"
type = "bool"

[[metric]]
column = "page_views"
type = "int64"

[risk]
k = 10
max_unique_share = 0.01
action = "refuse"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn universe_overlap_is_as_designed_and_data_deterministic() {
        let u = Universe::new(1000);
        let both = (0..u.size())
            .filter(|i| u.in_brand(*i) && u.in_publisher(*i))
            .count();
        assert_eq!(both as u64, u.overlap);
        assert_eq!(
            (0..u.size()).filter(|i| u.in_publisher(*i)).count() as u64,
            u.publisher
        );
        let ps = people(&u, 1);
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_csv("brand", &u, &ps, 1, &mut a).unwrap();
        write_csv("brand", &u, &people(&u, 1), 1, &mut b).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a).unwrap();
        assert_eq!(text.lines().count(), 1001);
        assert!(
            !text.contains('@'),
            "raw emails must not appear in the prepared data"
        );
    }

    #[test]
    fn dates_are_valid() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        for _ in 0..2000 {
            let d = date(&mut rng);
            assert!(
                d.as_str() >= "2024-01-01" && d.as_str() <= "2026-10-31",
                "{d}"
            );
        }
    }
}
