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
) -> Result<()> {
    if n < 10 {
        bail!("--people must be at least 10");
    }
    let u = Universe::new(n);
    let ps = people(&u, seed);
    let mut f =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let rows = write_csv(party, &u, &ps, seed, &mut f)?;
    if let Some(s) = schema_out {
        let text = if party == "brand" {
            BRAND_SCHEMA
        } else {
            PUBLISHER_SCHEMA
        };
        std::fs::write(s, text).with_context(|| format!("cannot write {}", s.display()))?;
    }
    eprintln!("wrote {rows} {party} rows to {}", out.display());
    Ok(())
}

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
