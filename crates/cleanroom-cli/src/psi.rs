//! `cleanroom psi`: private set intersection directly between two parties' machines.
//!
//! One side listens (`serve`), the other connects (`connect`); either may be the designated
//! receiver. Inputs are CSV or Parquet files; identifiers are read from named columns, one
//! kind per column, in priority order, normalised exactly as `cleanroom prepare` does
//! (`cleanroom-identity`), blinded, and never leave this process.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cleanroom_identity::config::PrepareConfig;
use cleanroom_identity::normalise::{
    IdKind, Invalid, NormaliseOptions, normalise, region_is_known,
};
use cleanroom_psi::group::Kinds;
use cleanroom_psi::side::{SideInputs, SideRule, check_side};
use cleanroom_psi::{
    InputBuilder, Outcome, PreparedInput, ProtocolKind, Role, SessionConfig, SpillConfig,
};
use cleanroom_psi_net::{Identity, Limits, PeerPin, Progress, Report, TlsSetup};
use indicatif::{ProgressBar, ProgressStyle};

use crate::files::AtomicFile;
use serde_json::json;

#[derive(Subcommand)]
pub enum PsiCmd {
    /// Make this party's self-signed TLS certificate and key; prints the certificate's SHA-256,
    /// which the other party passes as --peer-cert-sha256.
    Keygen {
        /// Directory for psi-cert.pem and psi-key.pem (the key is written with mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Listen for the other party and run the protocol with it.
    Serve {
        /// Address to listen on (port 0 picks a free port; the address is printed on stderr).
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: String,
        #[command(flatten)]
        run: Box<RunArgs>,
    },
    /// Connect to the other party and run the protocol with it.
    Connect {
        /// The listening party's HOST:PORT.
        #[arg(long)]
        peer: String,
        /// Keep retrying a refused connection this long, in seconds, at most a week (the peer
        /// may still be reading its input).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(..=604_800))]
        connect_timeout: u64,
        #[command(flatten)]
        run: Box<RunArgs>,
    },
}

/// Who learns the sum of `--protocol sum`.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum SumTo {
    /// The receiver, who has no values, learns the number of matches and the sum of the
    /// sender's values over them; the sender (--value-column) learns nothing (the default).
    OtherParty,
    /// The receiver holds the values (--value-column) and learns the sum of its own values
    /// over matched records; both learn the number of matches (Private Join and Compute's
    /// paper).
    ValuesHolder,
}

/// How `--protocol intersection` is computed. Both sides must pass the same.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// Elliptic-curve Diffie-Hellman on ristretto255: four scalar multiplications per pair,
    /// least traffic. Every protocol runs on it.
    #[default]
    Ecdh,
    /// Oblivious transfer (KKRT16): symmetric-key work, tens of times faster, about 100 bytes
    /// of traffic per item. Intersection only.
    Ot,
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// cardinality (both learn the number of matches), intersection (the receiver learns which
    /// of its rows match), or sum (the receiver learns the number of matches and the sum of the
    /// sender's --value-column over them; the sender learns nothing; see --sum-to).
    #[arg(long)]
    protocol: String,
    /// Sum: who learns the sum. Both sides must pass the same.
    #[arg(long, value_enum)]
    sum_to: Option<SumTo>,
    /// Intersection: ecdh (the default) or ot (oblivious transfer, much faster on large sets,
    /// more bytes on the wire; docs/psi.md compares them). Both sides must pass the same.
    #[arg(long, value_enum, default_value_t = Engine::Ecdh)]
    engine: Engine,
    /// This side is the designated receiver, the one that learns the result (exactly one side
    /// must be).
    #[arg(long)]
    receiver: bool,
    /// CSV (with a header line) or Parquet file.
    #[arg(long)]
    input: PathBuf,
    /// An identifier as KIND:COLUMN, repeated in priority order: a record matches on its first
    /// kind that matches. Kinds: email, phone, maid, name, postal_code, opaque (for columns
    /// already pseudonymised by both parties with the same secret). Both sides must give the
    /// same kinds in the same order.
    #[arg(long = "id", required_unless_present = "config")]
    ids: Vec<String>,
    /// Take the identifier columns, their kinds, priorities and normalisation options from the
    /// configuration file of `cleanroom prepare`.
    #[arg(long, conflicts_with = "ids")]
    config: Option<PathBuf>,
    /// Gmail rules for emails (dots and +tags removed), as in `cleanroom prepare`.
    #[arg(long, conflicts_with = "config")]
    gmail_rules: bool,
    /// Region for phone numbers without a country code and for postal codes (ISO 3166 alpha-2).
    #[arg(long, default_value = "GB", conflicts_with = "config")]
    default_region: String,
    /// Sum, the side that holds the values (the sender; the receiver with --sum-to
    /// values-holder): the integer column summed over matched records.
    #[arg(long)]
    value_column: Option<String>,
    /// Sum, the values holder: values are clamped into [0, MAX_VALUE], and so is each distinct
    /// record's total (the noise's sensitivity; with the default --sum-to, records × MAX_VALUE
    /// must stay below 2^44).
    #[arg(long)]
    max_value: Option<u64>,
    /// Intersection receiver: write the matched rows here (CSV: row, matched_on[, record id]).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Intersection receiver: a column of this side's own record ids to put in --output.
    #[arg(long)]
    record_id_column: Option<String>,
    /// This side's certificate (from `cleanroom psi keygen`).
    #[arg(long)]
    cert: PathBuf,
    /// This side's private key (from `cleanroom psi keygen`).
    #[arg(long)]
    key: PathBuf,
    /// SHA-256 of the other party's certificate, as its keygen printed it. Nothing else is
    /// accepted.
    #[arg(long)]
    peer_cert_sha256: String,
    /// Require discrete Laplace noise with this epsilon on released counts (off by default; the
    /// stricter of both sides' requests applies). Not with the default --protocol sum: there the
    /// receiver finds the matches itself and sees the count exactly, so noise could not
    /// protect the values holder, and it is refused rather than pretended.
    #[arg(long)]
    epsilon_count: Option<f64>,
    /// Sum: require discrete Laplace noise with this epsilon on the released sum (added by the
    /// values holder: in the default --sum-to when it decrypts the masked sum, with --sum-to
    /// values-holder by the other side under encryption).
    #[arg(long)]
    epsilon_sum: Option<f64>,
    /// Refuse a peer that announces more identifiers than this (bounds dictionary attacks;
    /// never more than 2^40 whatever is set).
    #[arg(long, default_value_t = 100_000_000)]
    max_peer_items: u64,
    /// Entries per message.
    #[arg(long, default_value_t = 32_768)]
    batch: u32,
    /// Threads for the elliptic-curve work (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// --engine ot: where the hashed identifiers wait once they pass 256 MiB, sealed with
    /// AES-256-GCM under a key that only this process holds, in files without a name that
    /// vanish when it ends (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    temp_dir: Option<PathBuf>,
    /// Give up when the peer sends nothing for this many seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    idle_timeout: u64,
    /// Give up when the session, from the connection on, takes longer than this many seconds
    /// (default a day; at most 30 days): a peer cannot hold it open by sending a little just
    /// before each idle timeout.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    session_timeout: u64,
    /// No progress reports on stderr.
    #[arg(long)]
    quiet: bool,
}

pub async fn run(cmd: PsiCmd, json_out: bool) -> Result<()> {
    match cmd {
        PsiCmd::Keygen { out, force } => keygen(&out, force, json_out),
        PsiCmd::Serve { listen, run } => {
            // The address is tried before the input is read (which may take minutes), so a
            // port in use is said at once; it is bound for good once the input is ready.
            drop(
                std::net::TcpListener::bind(&listen)
                    .with_context(|| format!("cannot listen on {listen}"))?,
            );
            let (plan, input) = prepare(&run)?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!(
                "cleanroom psi listening on {} ({} as the {})",
                listener.local_addr()?,
                plan.config.protocol.as_str(),
                plan.config.role.as_str()
            );
            let conn = cleanroom_psi_net::accept_peer(
                &listener,
                plan.tls.clone(),
                plan.limits,
                &mut |from, e| {
                    eprintln!("psi: refused a connection from {from}: {e}; still listening");
                },
            )
            .await?;
            drop(listener);
            finish(&plan, conn, input, json_out).await
        }
        PsiCmd::Connect {
            peer,
            connect_timeout,
            run,
        } => {
            let (plan, input) = prepare(&run)?;
            let conn = cleanroom_psi_net::connect(
                &peer,
                plan.tls.clone(),
                plan.limits,
                Duration::from_secs(connect_timeout),
            )
            .await?;
            finish(&plan, conn, input, json_out).await
        }
    }
}

fn keygen(dir: &Path, force: bool, json_out: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cert = dir.join("psi-cert.pem");
    let key = dir.join("psi-key.pem");
    if !force && (cert.exists() || key.exists()) {
        bail!(
            "{} already holds a PSI key; pass --force to replace it",
            dir.display()
        );
    }
    let (cert_pem, key_pem) = Identity::generate_pem()?;
    // Each file appears whole or not at all (the key owner-only); without --force neither
    // replaces a file that appeared since the check above.
    let mut k = AtomicFile::beside(&key)?;
    k.file()
        .write_all(key_pem.as_bytes())
        .with_context(|| format!("cannot write {}", key.display()))?;
    k.commit(force)?;
    let mut c = AtomicFile::beside(&cert)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        c.file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    c.file()
        .write_all(cert_pem.as_bytes())
        .with_context(|| format!("cannot write {}", cert.display()))?;
    c.commit(force)?;
    let fp = Identity::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?.fingerprint();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "cert": cert, "key": key, "cert_sha256": fp
            }))?
        );
    } else {
        println!("certificate: {}", cert.display());
        println!("private key: {} (keep it secret)", key.display());
        println!("certificate SHA-256 (give it to the other party): {fp}");
    }
    Ok(())
}

/// Everything decided before the connection.
struct Plan {
    config: SessionConfig,
    tls: Arc<TlsSetup>,
    limits: Limits,
    kinds: Kinds,
    output: Option<PathBuf>,
    record_ids: Option<Vec<String>>,
    quiet: bool,
    read: ReadStats,
}

#[derive(Default)]
struct ReadStats {
    rows: u64,
    valid: Vec<u64>,
    invalid: Vec<u64>,
    /// Rows whose value cell was empty (counted as 0).
    empty_values: u64,
    seconds: f64,
}

/// Parses the flags, loads the credentials, and reads and blinds the input.
fn prepare(run: &RunArgs) -> Result<(Plan, PreparedInput)> {
    let flags = check_flags(run)?;
    if let Some(path) = &run.output {
        check_output(path)?;
    }
    if let Some(t) = run.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global()
            .context("cannot start the worker threads")?;
    }
    let identity = Identity::load(&run.cert, &run.key)?;
    let pin = PeerPin::parse(&run.peer_cert_sha256)?;
    let tls = Arc::new(TlsSetup::new(identity, pin)?);
    let mut config = SessionConfig::new(flags.protocol, flags.role);
    config.batch = run.batch;
    config.max_peer_items = run.max_peer_items;
    config.count_epsilon = run.epsilon_count;
    config.sum_epsilon = run.epsilon_sum;
    let limits = Limits {
        idle_timeout: Duration::from_secs(run.idle_timeout),
        session_timeout: Duration::from_secs(run.session_timeout),
        ..Limits::default()
    };
    let (input, record_ids, read) = read_input(run, &flags)?;
    report_read(run, &flags, &read, &input);
    // A column in which nothing is valid is a wrong column or a wrong region, not data: it
    // could never match, and a session would only say "0 matches".
    for (i, label) in flags.labels.iter().enumerate() {
        if read.valid[i] == 0 && read.invalid[i] > 0 {
            let region = if flags.id_kinds[i] == IdKind::Phone {
                " and the default region of national numbers"
            } else {
                ""
            };
            bail!(
                "none of the {} values of column {:?} is a valid {label}: check that the column \
                 holds {label}s{region}",
                read.invalid[i],
                flags.columns[i]
            );
        }
    }
    Ok((
        Plan {
            config,
            tls,
            limits,
            kinds: flags.kinds,
            output: run.output.clone(),
            record_ids,
            quiet: run.quiet,
            read,
        },
        input,
    ))
}

/// What the flags ask for, once checked against each other.
struct Flags {
    protocol: ProtocolKind,
    role: Role,
    id_kinds: Vec<IdKind>,
    columns: Vec<String>,
    options: Vec<NormaliseOptions>,
    labels: Vec<String>,
    kinds: Kinds,
    max_value: Option<u64>,
}

/// Checks which flags apply to the protocol and to this side of it.
fn check_flags(run: &RunArgs) -> Result<Flags> {
    let protocol = match (ProtocolKind::parse(&run.protocol)?, run.sum_to) {
        (ProtocolKind::Sum, Some(SumTo::ValuesHolder)) => ProtocolKind::SumToValuesHolder,
        (p, None) | (p @ ProtocolKind::Sum, Some(SumTo::OtherParty)) => p,
        _ => bail!("--sum-to only applies to --protocol sum"),
    };
    let protocol = match (protocol, run.engine) {
        (ProtocolKind::Intersection, Engine::Ot) => ProtocolKind::IntersectionOt,
        (p, Engine::Ecdh) => p,
        (p, Engine::Ot) => bail!(
            "--engine ot runs --protocol intersection only; {} runs on ECDH (drop --engine)",
            p.as_str()
        ),
    };
    if let Some(dir) = &run.temp_dir {
        if protocol != ProtocolKind::IntersectionOt {
            bail!(
                "--temp-dir is for --engine ot; the ECDH protocols keep their blinded input in \
                 memory"
            );
        }
        if !dir.is_dir() {
            bail!("--temp-dir {}: not a directory", dir.display());
        }
    }
    let role = if run.receiver {
        Role::Receiver
    } else {
        Role::Sender
    };
    let (id_kinds, columns, options) = identifier_columns(run)?;
    let labels: Vec<String> = id_kinds.iter().map(|k| k.as_str().to_owned()).collect();
    let kinds = Kinds::new(&labels)?;
    let values_holder = protocol.values_holder() == Some(role);
    let side = SideInputs {
        values: run.value_column.is_some(),
        max_value: run.max_value,
        matches_output: run.output.is_some() || run.record_id_column.is_some(),
        epsilon_count: run.epsilon_count,
        epsilon_sum: run.epsilon_sum,
    };
    if let Err(rule) = check_side(protocol, role, &side) {
        bail!("{}", side_rule_message(rule, protocol));
    }
    if let Some(m) = run.max_value
        && i64::try_from(m).is_err()
    {
        bail!(
            "--max-value {m} is too large: at most {} (a value is a signed 64-bit integer)",
            i64::MAX
        );
    }
    let max_value = if values_holder { run.max_value } else { None };
    Ok(Flags {
        protocol,
        role,
        id_kinds,
        columns,
        options,
        labels,
        kinds,
        max_value,
    })
}

/// A protocol rule a side's flags break, in the flags' words.
fn side_rule_message(rule: SideRule, protocol: ProtocolKind) -> String {
    let holder_is = match protocol {
        ProtocolKind::SumToValuesHolder => "the receiver, with --sum-to values-holder",
        _ => "the sender (the side without --receiver); the receiver learns the sum",
    };
    match rule {
        SideRule::ValuesNeeded => format!(
            "the side of a sum that holds the values ({holder_is}) needs --value-column \
             (and --max-value)"
        ),
        SideRule::MaxValueNeeded => {
            "the side of a sum that holds the values needs --max-value, the largest value counted"
                .into()
        }
        SideRule::ValuesOnOtherSide => {
            format!("--value-column is for the side of a sum that holds the values: {holder_is}")
        }
        SideRule::ValuesWithoutSum => "--value-column is only for --protocol sum".into(),
        SideRule::MaxValueWithoutValues => {
            "--max-value is only for the side of a sum that holds the values".into()
        }
        SideRule::MatchesOnlyForIntersectionReceiver => {
            "--output and --record-id-column are only for the receiver of an intersection".into()
        }
        SideRule::EpsilonSumWithoutSum => "--epsilon-sum only applies to --protocol sum".into(),
        SideRule::EpsilonCountInSum => "--epsilon-count does not apply to --protocol sum: the \
             receiver finds the matches itself and sees the number of matches exactly, so noise \
             on it could not protect the values holder (--epsilon-sum does apply; with --sum-to \
             values-holder the counts can be noised)"
            .into(),
        SideRule::EpsilonCountInIntersection => "the intersection protocol releases rows, not a \
             count: --epsilon-count does not apply"
            .into(),
        SideRule::EpsilonNotPositive => "epsilon must be a positive number".into(),
    }
}

/// Reads the input, normalises its identifiers as `cleanroom prepare` does, and blinds them.
fn read_input(
    run: &RunArgs,
    flags: &Flags,
) -> Result<(PreparedInput, Option<Vec<String>>, ReadStats)> {
    let (protocol, role, max_value) = (flags.protocol, flags.role, flags.max_value);
    let (id_kinds, columns, options) = (&flags.id_kinds, &flags.columns, &flags.options);
    let (labels, kinds) = (&flags.labels, &flags.kinds);
    let t0 = Instant::now();
    let mut builder = InputBuilder::new(kinds.clone(), protocol, role, max_value)?;
    if let Some(dir) = &run.temp_dir {
        builder.spill(SpillConfig {
            dir: dir.clone(),
            ..SpillConfig::default()
        })?;
    }
    let mut read = ReadStats {
        valid: vec![0; labels.len()],
        invalid: vec![0; labels.len()],
        ..ReadStats::default()
    };
    let mut record_ids = run.record_id_column.as_ref().map(|_| Vec::new());
    let mut wanted = columns.clone();
    if let Some(v) = &run.value_column {
        wanted.push(v.clone());
    }
    if let Some(r) = &run.record_id_column {
        wanted.push(r.clone());
    }
    let k = labels.len();
    tokio::task::block_in_place(|| {
        table::read(&run.input, &wanted, &mut |row: &[Option<&str>]| {
            let mut ids: Vec<Option<String>> = Vec::with_capacity(k);
            for (i, raw) in row[..k].iter().enumerate() {
                ids.push(match raw {
                    // The same normalisers as `cleanroom prepare`; an invalid value is counted
                    // and treated as absent (it could never match).
                    Some(raw) => match normalise(id_kinds[i], raw, &options[i]) {
                        Ok(n) => {
                            read.valid[i] += 1;
                            Some(n)
                        }
                        Err(Invalid::Empty) => None,
                        Err(_) => {
                            read.invalid[i] += 1;
                            None
                        }
                    },
                    None => None,
                });
            }
            let value = match &run.value_column {
                Some(col) => match row[k] {
                    Some(v) => Some(v.trim().parse::<i64>().with_context(|| {
                        format!("row {}: column {col} is not an integer", read.rows + 1)
                    })?),
                    None => {
                        read.empty_values += 1;
                        Some(0)
                    }
                },
                None => None,
            };
            if let Some(ids) = &mut record_ids {
                ids.push(row[row.len() - 1].unwrap_or("").to_owned());
            }
            let slots: Vec<Option<&[u8]>> = ids
                .iter()
                .map(|i| i.as_deref().map(str::as_bytes))
                .collect();
            builder.push(&slots, value)?;
            read.rows += 1;
            Ok(())
        })
    })?;
    let input = tokio::task::block_in_place(|| builder.finish())?;
    read.seconds = t0.elapsed().as_secs_f64();
    Ok((input, record_ids, read))
}

/// Tells what reading found (on stderr).
fn report_read(run: &RunArgs, flags: &Flags, read: &ReadStats, input: &PreparedInput) {
    let (labels, max_value) = (&flags.labels, flags.max_value);
    let how = match flags.protocol {
        ProtocolKind::IntersectionOt => "hashed",
        _ => "blinded",
    };
    // Progress-like lines follow --quiet; what is wrong with the data is always said.
    if !run.quiet {
        eprintln!(
            "psi: read {} rows from {} and {how} them in {:.1} s",
            read.rows,
            run.input.display(),
            read.seconds
        );
    }
    for (label, n) in labels.iter().zip(&read.invalid) {
        if *n > 0 {
            eprintln!("psi: {n} {label} values are not valid {label}s and are treated as absent");
        }
    }
    if input.spilled_bytes() > 0 && !run.quiet {
        eprintln!(
            "psi: the hashed identifiers take {:.1} MB, sealed in temporary files (memory stays \
             at one bucket's worth)",
            input.spilled_bytes() as f64 / 1e6
        );
    }
    if input.rows_without_id() > 0 {
        eprintln!(
            "psi: {} rows have no identifier and cannot match",
            input.rows_without_id()
        );
    }
    if read.empty_values > 0 {
        eprintln!(
            "psi: {} rows have an empty value, counted as 0",
            read.empty_values
        );
    }
    if input.values_clamped() > 0 {
        eprintln!(
            "psi: {} values were clamped into [0, {}]",
            input.values_clamped(),
            max_value.unwrap_or(0)
        );
    }
}

/// Runs the session and reports.
async fn finish(
    plan: &Plan,
    conn: cleanroom_psi_net::Connection,
    input: PreparedInput,
    json_out: bool,
) -> Result<()> {
    let own_items = input.announced_items();
    let rows_without_id = input.rows_without_id();
    let mut reporter = Reporter::new(plan.quiet);
    let report = conn
        .run(&plan.config, input, &mut |p| reporter.update(p))
        .await;
    reporter.done();
    let report = report?;
    // The counts are shown even if the matches cannot be written (the session is over).
    let written = match (&report.outcome, &plan.output) {
        (Outcome::Intersection(out), Some(path)) => {
            write_matches(path, out, &plan.kinds, plan.record_ids.as_deref())
        }
        _ => Ok(()),
    };
    print_report(plan, &report, &own_items, rows_without_id, json_out)?;
    written
}

/// Before a session that may take hours: the matches file can be created where asked.
fn check_output(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("--output {}: a directory, not a file", path.display());
    }
    AtomicFile::beside(path).with_context(|| format!("--output {}", path.display()))?;
    Ok(())
}

fn write_matches(
    path: &Path,
    out: &cleanroom_psi::IntersectionOutput,
    kinds: &Kinds,
    record_ids: Option<&[String]>,
) -> Result<()> {
    let mut file = AtomicFile::beside(path)?;
    let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file.file()));
    let written = (|| -> Result<()> {
        match record_ids {
            Some(_) => w.write_record(["row", "matched_on", "record_id"])?,
            None => w.write_record(["row", "matched_on"])?,
        }
        for (row, kind) in out.matched_rows() {
            let r = row.to_string();
            let k = kinds.label(kind as usize);
            match record_ids {
                Some(ids) => w.write_record([r.as_str(), k, ids[row as usize].as_str()])?,
                None => w.write_record([r.as_str(), k])?,
            }
        }
        w.flush()?;
        Ok(())
    })();
    drop(w);
    written.with_context(|| format!("cannot write {}", path.display()))?;
    file.commit(true)
}

fn print_report(
    plan: &Plan,
    report: &Report,
    own_items: &[u64],
    rows_without_id: u64,
    json_out: bool,
) -> Result<()> {
    let labels = plan.kinds.labels();
    let per_kind = |v: &[i64]| {
        labels
            .iter()
            .zip(v)
            .map(|(l, c)| (l.clone(), json!(c)))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut j = serde_json::Map::new();
    j.insert("protocol".into(), json!(plan.config.protocol.as_str()));
    j.insert("role".into(), json!(plan.config.role.as_str()));
    j.insert("rows".into(), json!(plan.read.rows));
    j.insert("rows_without_id".into(), json!(rows_without_id));
    j.insert(
        "invalid_ids".into(),
        json!(per_kind(
            &plan
                .read
                .invalid
                .iter()
                .map(|x| *x as i64)
                .collect::<Vec<_>>()
        )),
    );
    j.insert("items_sent".into(), json!(own_items));
    j.insert("peer_items".into(), json!(report.peer_items));
    let mut lines = Vec::new();
    let counts = match &report.outcome {
        Outcome::SumAnswered { records } => {
            j.insert("records_sent".into(), json!(records));
            lines.push(format!(
                "sent {records} encrypted records and decrypted the receiver's masked sums; it learns the number of matches and the sum, this side learns nothing more"
            ));
            None
        }
        Outcome::Cardinality(c) | Outcome::SumCounts(c) => Some(c.clone()),
        Outcome::Intersection(o) => Some(o.counts.clone()),
        Outcome::Sum(s) => Some(s.counts.clone()),
        Outcome::Answered { identifiers } => {
            j.insert("identifiers_answered".into(), json!(identifiers));
            let how = match plan.config.protocol {
                ProtocolKind::IntersectionOt => "identifiers through oblivious transfers",
                _ => "blinded identifiers",
            };
            lines.push(format!(
                "answered the receiver's {identifiers} {how}; it learns which of its rows match, this side learns nothing more"
            ));
            None
        }
    };
    if let Some(c) = &counts {
        j.insert("matched".into(), json!(per_kind(&c.per_kind)));
        j.insert("matched_total".into(), json!(c.total));
        j.insert("counts_noisy".into(), json!(c.noisy));
        let what = match plan.config.protocol {
            ProtocolKind::Intersection | ProtocolKind::IntersectionOt => "matched rows",
            _ => "matched records",
        };
        lines.push(format!(
            "{what}: {}{}",
            c.total,
            if c.noisy { " (with DP noise)" } else { "" }
        ));
        for (l, n) in labels.iter().zip(&c.per_kind) {
            lines.push(format!("  on {l}: {n}"));
        }
    }
    if let Outcome::Sum(s) = &report.outcome {
        j.insert("sum".into(), json!(s.total_sum));
        j.insert("sum_per_kind".into(), json!(per_kind(&s.sums)));
        j.insert("sum_noisy".into(), json!(s.noisy));
        lines.push(format!(
            "sum of values over matched records: {}{}",
            s.total_sum,
            if s.noisy { " (with DP noise)" } else { "" }
        ));
    }
    if let (Outcome::Intersection(_), Some(p)) = (&report.outcome, &plan.output) {
        j.insert("output".into(), json!(p));
        lines.push(format!("matched rows written to {}", p.display()));
    }
    j.insert("epsilon_count".into(), json!(report.count_epsilon));
    j.insert("epsilon_sum".into(), json!(report.sum_epsilon));
    j.insert("bytes_sent".into(), json!(report.bytes_sent));
    j.insert("bytes_received".into(), json!(report.bytes_received));
    j.insert("read_seconds".into(), json!(plan.read.seconds));
    j.insert(
        "protocol_seconds".into(),
        json!(report.elapsed.as_secs_f64()),
    );
    if json_out {
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        for l in lines {
            println!("{l}");
        }
        println!(
            "sent {} bytes, received {} bytes in {:.1} s (input read in {:.1} s)",
            report.bytes_sent,
            report.bytes_received,
            report.elapsed.as_secs_f64(),
            plan.read.seconds
        );
    }
    Ok(())
}

/// A progress bar on a terminal, or a line every half second otherwise (for logs and tests).
struct Reporter {
    bar: Option<ProgressBar>,
    lines: bool,
    last: Instant,
    start: Instant,
}

impl Reporter {
    fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = (!quiet && tty).then(|| {
            let pb = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template(
                "  psi [{bar:30}] {pos}/{len} entries {per_sec} eta {eta} {msg}",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb
        });
        Reporter {
            bar,
            lines: !quiet && !tty,
            last: Instant::now() - Duration::from_secs(1),
            start: Instant::now(),
        }
    }

    fn update(&mut self, p: Progress) {
        if let Some(b) = &self.bar {
            b.set_length(p.entries_total);
            b.set_position(p.entries_done);
            b.set_message(format!(
                "{} MB out, {} MB in",
                p.bytes_sent / 1_000_000,
                p.bytes_received / 1_000_000
            ));
        } else if self.lines && self.last.elapsed() >= Duration::from_millis(500) {
            self.last = Instant::now();
            eprintln!(
                "psi progress: {}/{} entries, {} bytes sent, {} bytes received{}",
                p.entries_done,
                p.entries_total,
                p.bytes_sent,
                p.bytes_received,
                eta(self.start.elapsed(), p.entries_done, p.entries_total)
            );
        }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// ", eta 12 s": the time left at the average rate so far, once there is a rate to go by.
fn eta(elapsed: Duration, done: u64, total: u64) -> String {
    if done == 0 || done >= total || elapsed < Duration::from_millis(200) {
        return String::new();
    }
    let left = elapsed.as_secs_f64() * (total - done) as f64 / done as f64;
    format!(", eta {left:.0} s")
}

/// The identifier columns in priority order, their kinds and their normalisation options: from
/// `--id KIND:COLUMN` flags, or from a `cleanroom prepare` configuration file (whose
/// identifiers may override the region per column).
fn identifier_columns(run: &RunArgs) -> Result<(Vec<IdKind>, Vec<String>, Vec<NormaliseOptions>)> {
    let (kinds, columns, options) = match &run.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let cfg = PrepareConfig::from_toml(&text).with_context(|| {
                format!("{} is not a valid prepare configuration", path.display())
            })?;
            let mut specs = cfg.identifier_specs().to_vec();
            specs.sort_by_key(|s| s.priority);
            if specs.is_empty() {
                bail!("{} declares no identifier columns", path.display());
            }
            (
                specs.iter().map(|c| c.kind).collect::<Vec<_>>(),
                specs.iter().map(|c| c.column.clone()).collect::<Vec<_>>(),
                specs.into_iter().map(|c| c.options).collect::<Vec<_>>(),
            )
        }
        None => {
            let mut kinds = Vec::new();
            let mut columns = Vec::new();
            for spec in &run.ids {
                let (kind, column) = spec
                    .split_once(':')
                    .with_context(|| format!("--id {spec:?}: expected KIND:COLUMN"))?;
                kinds.push(IdKind::parse(kind)?);
                columns.push(column.to_owned());
            }
            // Checked as `cleanroom prepare` checks its configuration's.
            let region = run.default_region.trim().to_ascii_uppercase();
            if !region_is_known(&region) {
                bail!(
                    "--default-region {:?} is not an ISO 3166-1 alpha-2 code with a numbering \
                     plan (e.g. GB, US, DE)",
                    run.default_region
                );
            }
            let options = NormaliseOptions {
                gmail_rules: run.gmail_rules,
                default_region: region,
            };
            let n = kinds.len();
            (kinds, columns, vec![options; n])
        }
    };
    for (i, k) in kinds.iter().enumerate() {
        if kinds[..i].contains(k) {
            bail!(
                "two identifier columns of kind {k}: PSI matches one column per kind (pick the one to use)"
            );
        }
    }
    Ok((kinds, columns, options))
}

/// Reading CSV or Parquet files column by column, a row at a time, without holding them.
mod table {
    use std::fs::File;
    use std::path::Path;

    use anyhow::{Context, Result, bail};
    use arrow::array::{Array, StringArray};
    use arrow::compute::cast;
    use arrow::datatypes::DataType;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// Calls `row` with the wanted columns of every row (`None` for empty or null cells).
    pub fn read(
        path: &Path,
        wanted: &[String],
        row: &mut dyn FnMut(&[Option<&str>]) -> Result<()>,
    ) -> Result<()> {
        let is_parquet = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
        if is_parquet {
            parquet_rows(path, wanted, row)
        } else {
            csv_rows(path, wanted, row)
        }
    }

    fn find(header: &[String], name: &str, path: &Path) -> Result<usize> {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{} has no column {name:?}", path.display()))
    }

    fn csv_rows(
        path: &Path,
        wanted: &[String],
        row: &mut dyn FnMut(&[Option<&str>]) -> Result<()>,
    ) -> Result<()> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut r = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(std::io::BufReader::with_capacity(1 << 20, file));
        let header: Vec<String> = r
            .headers()
            .with_context(|| format!("{}: cannot read the header line", path.display()))?
            .iter()
            .map(str::to_owned)
            .collect();
        let idx = wanted
            .iter()
            .map(|w| find(&header, w, path))
            .collect::<Result<Vec<_>>>()?;
        let mut rec = csv::StringRecord::new();
        loop {
            // Where the next record starts (a quoted cell may span lines).
            let line = r.position().line();
            let more = r
                .read_record(&mut rec)
                .with_context(|| format!("{}: line {line} is not valid CSV", path.display()))?;
            if !more {
                break;
            }
            let cells: Vec<Option<&str>> = idx
                .iter()
                .map(|i| rec.get(*i).filter(|s| !s.is_empty()))
                .collect();
            row(&cells)?;
        }
        Ok(())
    }

    fn parquet_rows(
        path: &Path,
        wanted: &[String],
        row: &mut dyn FnMut(&[Option<&str>]) -> Result<()>,
    ) -> Result<()> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
        // The columns are checked before any row, as a CSV's header is (a file without rows
        // and a mistyped column would otherwise pass as an empty input).
        let header: Vec<String> = builder
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for w in wanted {
            find(&header, w, path)?;
        }
        let reader = builder.with_batch_size(8192).build()?;
        for batch in reader {
            let batch = batch.with_context(|| format!("reading {}", path.display()))?;
            let schema = batch.schema();
            let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let mut cols = Vec::with_capacity(wanted.len());
            for w in wanted {
                let c = batch.column(find(&header, w, path)?);
                let s = cast(c, &DataType::Utf8)
                    .with_context(|| format!("column {w} cannot be read as text"))?;
                cols.push(s);
            }
            let strs: Vec<&StringArray> = cols
                .iter()
                .map(|c| c.as_any().downcast_ref::<StringArray>())
                .collect::<Option<Vec<_>>>()
                .context("cast to text failed")?;
            let mut cells: Vec<Option<&str>> = Vec::with_capacity(strs.len());
            for i in 0..batch.num_rows() {
                cells.clear();
                cells.extend(strs.iter().map(|a| {
                    if a.is_null(i) {
                        None
                    } else {
                        Some(a.value(i)).filter(|s| !s.is_empty())
                    }
                }));
                row(&cells)?;
            }
        }
        if wanted.is_empty() {
            bail!("no columns requested");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_extrapolates_the_rate_so_far_and_stays_quiet_without_one() {
        assert_eq!(eta(Duration::from_secs(10), 250, 1000), ", eta 30 s");
        assert_eq!(eta(Duration::from_secs(10), 0, 1000), "");
        assert_eq!(eta(Duration::from_secs(10), 1000, 1000), "");
        assert_eq!(eta(Duration::from_millis(50), 10, 1000), "");
    }
}
