//! Helpers of `bench/prepare.sh`:
//!
//! - `prepare_bench gen ROWS OUT.csv`: writes a deterministic CSV of messy customer records
//!   (emails in mixed case with spaces, Gmail dots and tags, phone numbers in national and
//!   international formats, some invalid or missing values, ages, UK postcodes, dates, a
//!   segment, revenue, and a free-text column the configuration drops);
//! - `prepare_bench hmac SECONDS`: the raw HMAC-SHA-256 rate of this machine on one core, with
//!   the keyed state cloned per message exactly as `PseudonymKey` does, over 32-byte messages
//!   and over the normalised emails the generator produces;
//! - `prepare_bench prepare CONFIG INPUT OUTPUT THREADS`: the prepare pipeline itself (what
//!   `cleanroom prepare` runs, without building the whole CLI), printing rows and wall time;
//! - `prepare_bench profile INPUT ROWS`: where a row's time goes, stage by stage, on one core
//!   over the first ROWS rows of a generated CSV.

use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use cleanroom_identity::normalise::IdKind;
use cleanroom_identity::pseudonym::PseudonymKey;

/// A small deterministic generator (SplitMix64): no dependency, same file on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const FIRST: [&str; 12] = [
    "alex", "sam", "jo", "maria", "li", "noah", "amira", "tom", "eva", "yusuf", "ines", "kai",
];
const DOMAINS: [&str; 6] = [
    "gmail.com",
    "outlook.com",
    "yahoo.co.uk",
    "proton.me",
    "example.org",
    "googlemail.com",
];
const DISTRICTS: [&str; 12] = [
    "SW1A", "EC1A", "M1", "B33", "LS1", "G2", "CF10", "BS1", "NE1", "L1", "EH1", "OX1",
];
const SEGMENTS: [&str; 5] = ["new", "loyal", "lapsed", "vip", "trial"];

fn generate(rows: u64, path: &str) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(
        out,
        "customer_id,email,phone,age,postcode,signup,segment,revenue,notes"
    )?;
    let mut r = Rng(7);
    let mut line = String::with_capacity(256);
    for i in 0..rows {
        line.clear();
        let first = FIRST[r.below(12) as usize];
        let domain = DOMAINS[r.below(6) as usize];
        let email = match r.below(100) {
            0..=1 => format!("{first}{i}-at-{domain}"), // invalid: no @
            2..=11 => format!(
                "  {}.{i}+news@{}  ",
                first.to_uppercase(),
                domain.to_uppercase()
            ),
            12..=21 => format!("{first}.{}.{i}@{domain}", &first[..1]),
            _ => format!("{first}{i}@{domain}"),
        };
        let n = 100_000 + (i % 900_000);
        let phone = match r.below(100) {
            0..=4 => String::new(),
            5 => format!("0791 {n}"), // invalid: too short
            6..=40 => format!("07400 {n}"),
            41..=70 => format!("+44 7400 {n}"),
            71..=85 => format!("+44 (0)7400 {}-{:03}", n / 1000, n % 1000),
            _ => format!("00447400{n}"),
        };
        let age = 14 + r.below(80);
        let postcode = format!(
            "{} {}{}{}",
            DISTRICTS[r.below(12) as usize],
            r.below(10),
            (b'A' + r.below(26) as u8) as char,
            (b'A' + r.below(26) as u8) as char
        );
        let day = r.below(365);
        let (m, d) = (1 + day / 31, 1 + day % 28);
        let signup = format!("2025-{m:02}-{d:02}");
        let segment = SEGMENTS[r.below(5) as usize];
        let revenue = r.below(100_000) as f64 / 100.0;
        use std::fmt::Write as _;
        let _ = writeln!(
            line,
            "c{i:09},\"{email}\",{phone},{age},{postcode},{signup},{segment},{revenue},note {i}"
        );
        out.write_all(line.as_bytes())?;
    }
    out.flush()
}

fn hmac_rate(seconds: f64) {
    let key = match PseudonymKey::derive(b"benchmark-secret-0123456789abcdef", "bench") {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let budget = Duration::from_secs_f64(seconds / 2.0);
    // 32-byte messages (the figure REFERENCES.md quotes), then ~25-byte normalised emails.
    let fixed: Vec<String> = (0..1024).map(|i| format!("{i:032}")).collect();
    let emails: Vec<String> = (0..1024)
        .map(|i| format!("{}{i}@{}", FIRST[i % 12], DOMAINS[i % 6]))
        .collect();
    for (label, msgs) in [("32-byte messages", &fixed), ("normalised emails", &emails)] {
        let mut n = 0u64;
        let mut sink = 0u8;
        let start = Instant::now();
        while start.elapsed() < budget {
            for m in msgs.iter() {
                sink ^= key.pseudonym_bytes(IdKind::Email, m)[0];
            }
            n += msgs.len() as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "hmac {label}: {:.0} per second on one core ({:.3} us each) [{sink}]",
            n as f64 / secs,
            secs * 1e6 / n as f64
        );
    }
}

fn prepare_run(config: &str, input: &str, output: &str, threads: usize) {
    use cleanroom_identity::config::PrepareConfig;
    use cleanroom_identity::prepare::{OutputPaths, prepare_with_threads};
    let text = std::fs::read_to_string(config).unwrap_or_else(|e| fail(&e));
    let cfg = PrepareConfig::from_toml(&text).unwrap_or_else(|e| fail(&e));
    let key = PseudonymKey::derive(b"benchmark-secret-0123456789abcdef", cfg.collaboration())
        .unwrap_or_else(|e| fail(&e));
    let out = OutputPaths::next_to(std::path::Path::new(output));
    let start = Instant::now();
    let r = prepare_with_threads(&cfg, &key, input.as_ref(), &out, threads, &mut |_| {})
        .unwrap_or_else(|e| fail(&e));
    println!(
        "prepare: {} rows read, {} written, {threads} threads, {:.3} s wall",
        r.rows_read,
        r.rows_written,
        start.elapsed().as_secs_f64()
    );
}

/// Times each stage of a row separately over the same values, one core.
fn profile(input: &str, rows: usize) {
    use cleanroom_identity::normalise::{NormaliseOptions, normalise};
    let time = |label: &str, n: usize, f: &mut dyn FnMut() -> usize| {
        let start = Instant::now();
        let sink = f();
        let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("{label:<44} {us:>8.3} us per row [{sink}]");
    };
    let bytes = std::fs::read(input).unwrap_or_else(|e| fail(&e));
    let mut rdr = csv::ReaderBuilder::new().from_reader(&bytes[..]);
    let mut rec = csv::StringRecord::new();
    let mut records = Vec::new();
    while records.len() < rows && rdr.read_record(&mut rec).unwrap_or(false) {
        records.push(rec.clone());
    }
    let n = records.len();
    time("csv: read and split into fields (UTF-8)", n, &mut || {
        let mut rdr = csv::ReaderBuilder::new().from_reader(&bytes[..]);
        let mut rec = csv::StringRecord::new();
        let mut k = 0;
        while k < n && rdr.read_record(&mut rec).unwrap_or(false) {
            k += rec.len();
        }
        k
    });
    let opts = NormaliseOptions {
        gmail_rules: true,
        default_region: "GB".into(),
    };
    let key = PseudonymKey::derive(b"benchmark-secret-0123456789abcdef", "bench")
        .unwrap_or_else(|e| fail(&e));
    let emails: Vec<String> = records
        .iter()
        .filter_map(|r| normalise(IdKind::Email, &r[1], &opts).ok())
        .collect();
    let phones: Vec<String> = records
        .iter()
        .filter_map(|r| normalise(IdKind::Phone, &r[2], &opts).ok())
        .collect();
    time("email: normalise (base form + Gmail rules)", n, &mut || {
        records
            .iter()
            .map(|r| normalise(IdKind::Email, &r[1], &opts).map_or(0, |v| v.len()))
            .sum()
    });
    time("email: HMAC-SHA-256 + hex", n, &mut || {
        emails
            .iter()
            .map(|e| key.pseudonymise(IdKind::Email, e).len())
            .sum()
    });
    time("phone: parse, validate, E.164", n, &mut || {
        records
            .iter()
            .map(|r| normalise(IdKind::Phone, &r[2], &opts).map_or(0, |v| v.len()))
            .sum()
    });
    time("phone: HMAC-SHA-256 + hex", n, &mut || {
        phones
            .iter()
            .map(|e| key.pseudonymise(IdKind::Phone, e).len())
            .sum()
    });
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("{e}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") if args.len() == 4 => {
            let rows = args[2].parse().unwrap_or_else(|_| usage());
            if let Err(e) = generate(rows, &args[3]) {
                eprintln!("cannot write {}: {e}", args[3]);
                std::process::exit(1);
            }
        }
        Some("hmac") if args.len() == 3 => hmac_rate(args[2].parse().unwrap_or_else(|_| usage())),
        Some("prepare") if args.len() == 6 => prepare_run(
            &args[2],
            &args[3],
            &args[4],
            args[5].parse().unwrap_or_else(|_| usage()),
        ),
        Some("profile") if args.len() == 4 => {
            profile(&args[2], args[3].parse().unwrap_or_else(|_| usage()))
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: prepare_bench gen ROWS OUT.csv | hmac SECONDS | prepare CONFIG INPUT OUTPUT THREADS | profile INPUT ROWS"
    );
    std::process::exit(2)
}
