//! `cleanroom`: the clean room's server and its command-line client in one binary.

mod activation;
mod analysis;
mod audit;
mod client;
mod cluster;
mod commands;
mod demo;
mod files;
mod memory;
mod output;
mod prepare;
mod psi;
mod synth;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A self-hostable data clean room: parties bring first-party data, only protected aggregates
/// leave, every action is authorised and audited.
#[derive(Parser)]
#[command(name = "cleanroom", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// URL of the clean-room server for client commands.
    #[arg(
        long,
        global = true,
        env = "CLEANROOM_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// API token for client commands (as printed by `init`, `org create`, `token create`).
    #[arg(long, global = true, env = "CLEANROOM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// PEM certificate(s) to trust for an https:// server besides the system's (a private CA,
    /// or a server's self-signed certificate).
    #[arg(long, global = true, env = "CLEANROOM_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct DataDir {
    /// Directory of the server's metadata, encrypted datasets and master key.
    #[arg(long, env = "CLEANROOM_DATA_DIR", default_value = "./cleanroom-data")]
    pub data_dir: PathBuf,
    /// Keep the metadata in PostgreSQL: a postgres:// URL (TLS per its sslmode, e.g.
    /// ?sslmode=verify-full). Prefer the environment variable: a password in the URL would
    /// show in the process list. Default: an embedded SQLite file in the data directory.
    #[arg(long, env = "CLEANROOM_METADATA", hide_env_values = true)]
    pub metadata: Option<String>,
    /// Keep the encrypted dataset files in S3-compatible object storage: s3://bucket/prefix
    /// (endpoint, region and credentials from AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, …). Only ciphertext reaches the bucket. Default: the data
    /// directory.
    #[arg(long, env = "CLEANROOM_DATA_STORE")]
    pub data_store: Option<String>,
    /// With --metadata postgres://… several servers may share the room: the seconds one may
    /// stay silent before another takes over the uploads and analyses it left unfinished
    /// (heartbeats go every third of it).
    #[arg(long, env = "CLEANROOM_REPLICA_LEASE", default_value_t = 15.0, value_parser = parse_lease)]
    pub replica_lease: f64,
}

fn parse_lease(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a number of seconds between 0.1 and 3600"
        )),
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        data: DataDir,
        /// Address to listen on.
        #[arg(long, env = "CLEANROOM_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
        #[arg(long, env = "CLEANROOM_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, env = "CLEANROOM_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Memory all analyses may hold together (`4G`, `512M`, `unlimited`; default: half of
        /// this machine's memory). Sorts, aggregations and repartitions that do not fit spill
        /// to disk, encrypted under keys held only in memory; an analysis that still does not
        /// fit fails.
        #[arg(long, env = "CLEANROOM_MAX_MEMORY", default_value = "auto", value_parser = memory::parse_limit)]
        max_memory: memory::Limit,
        /// Disk all analyses may fill with encrypted spill files together (`100G`, `0` or
        /// `off`: never spill).
        #[arg(long, env = "CLEANROOM_MAX_SPILL", default_value = "100G", value_parser = memory::parse_spill)]
        max_spill: u64,
        /// Where spill files go (default: the system's temporary directory); each server
        /// makes its own private directory there.
        #[arg(long, env = "CLEANROOM_SPILL_DIR")]
        spill_dir: Option<PathBuf>,
        /// Where analyses run: `in-process` (default), or `ballista://HOST:PORT`, the scheduler
        /// of an analysis cluster (`cleanroom scheduler`, `cleanroom executor`). Everything
        /// that decides privacy stays in this server; the cluster runs the exact plan only.
        #[arg(long, env = "CLEANROOM_ENGINE", default_value = "in-process")]
        engine: String,
        /// The cluster key (with --engine ballista://…): the file `cleanroom cluster-key`
        /// wrote, the same one every executor is given.
        #[arg(long, env = "CLEANROOM_CLUSTER_KEY")]
        cluster_key: Option<PathBuf>,
        /// The cluster certificate (with --engine ballista://…): the file `cleanroom
        /// cluster-cert` wrote, the same one the scheduler and every executor are given; every
        /// connection to them is mutual TLS with it.
        #[arg(long, env = "CLEANROOM_CLUSTER_CERT")]
        cluster_cert: Option<PathBuf>,
        /// Seconds an analysis may run on the cluster before it is given up as a cluster
        /// failure (its charge stays).
        #[arg(long, env = "CLEANROOM_CLUSTER_DEADLINE", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
        cluster_deadline: u64,
    },
    /// Run the scheduler of an analysis cluster: servers (`serve --engine ballista://…`) hand
    /// it exact-aggregate plans, executors poll it for tasks. It holds no key and reads no
    /// dataset itself, but it sees the wrapped keys plans carry: run it in the operator's
    /// trust domain, like the executors.
    Scheduler {
        /// Address to listen on (servers and executors connect here).
        #[arg(
            long,
            env = "CLEANROOM_SCHEDULER_LISTEN",
            default_value = "127.0.0.1:50050"
        )]
        listen: String,
        /// Seconds an executor may stay silent before its tasks are given to others.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=3600))]
        executor_timeout: u64,
        /// The cluster certificate (`cleanroom cluster-cert`): the scheduler presents it and
        /// accepts only callers that present it too.
        #[arg(long, env = "CLEANROOM_CLUSTER_CERT")]
        cluster_cert: PathBuf,
    },
    /// Run an executor of an analysis cluster: it reads the room's encrypted datasets from the
    /// room's store, decrypts them in memory with keys that reach it wrapped for the query that
    /// needs them, and writes no plaintext to disk (shuffle files in a memory-backed directory,
    /// spills encrypted).
    Executor {
        /// The scheduler: HOST:PORT or ballista://HOST:PORT.
        #[arg(long, env = "CLEANROOM_SCHEDULER")]
        scheduler: String,
        /// The cluster key file (the server's --cluster-key).
        #[arg(long, env = "CLEANROOM_CLUSTER_KEY")]
        cluster_key: PathBuf,
        /// The cluster certificate file (the server's and the scheduler's --cluster-cert).
        #[arg(long, env = "CLEANROOM_CLUSTER_CERT")]
        cluster_cert: PathBuf,
        /// The room's data directory, when its datasets are local files (a shared directory).
        #[arg(long, env = "CLEANROOM_DATA_DIR", default_value = "./cleanroom-data")]
        data_dir: PathBuf,
        /// The room's data store, when its datasets are in S3-compatible object storage:
        /// s3://bucket/prefix (endpoint and credentials from AWS_* as for `serve`).
        #[arg(long, env = "CLEANROOM_DATA_STORE")]
        data_store: Option<String>,
        /// Address its Arrow Flight service listens on (shuffle data and results).
        #[arg(
            long,
            env = "CLEANROOM_EXECUTOR_LISTEN",
            default_value = "127.0.0.1:50051"
        )]
        listen: String,
        /// The host other executors and the server reach it at (default: --listen's).
        #[arg(long)]
        external_host: Option<String>,
        /// A memory-backed directory (tmpfs) for shuffle files; default: a private directory
        /// under /dev/shm. A directory on disk is refused.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Tasks run at once (default: one per core).
        #[arg(long, default_value_t = 0)]
        concurrent_tasks: usize,
        /// Memory its tasks may hold together (`4G`, `unlimited`; default: half this machine's).
        #[arg(long, default_value = "auto", value_parser = memory::parse_limit)]
        max_memory: memory::Limit,
        /// Disk its tasks may fill with encrypted spill files (`0` or `off`: never spill).
        #[arg(long, default_value = "100G", value_parser = memory::parse_spill)]
        max_spill: u64,
        /// Where encrypted spill files go (default: the system's temporary directory).
        #[arg(long)]
        spill_dir: Option<PathBuf>,
    },
    /// Write a new cluster key to FILE (readable by its owner only): give the same file to
    /// `serve --cluster-key` and to every `executor --cluster-key`.
    ClusterKey {
        /// Where to write it; an existing file is never overwritten.
        file: PathBuf,
    },
    /// Write a new cluster certificate and its private key to FILE (readable by its owner
    /// only): give the same file to `serve --cluster-cert`, `scheduler --cluster-cert` and
    /// every `executor --cluster-cert`. The cluster's connections are mutual TLS pinned to it.
    ClusterCert {
        /// Where to write it; an existing file is never overwritten.
        file: PathBuf,
    },
    /// Create the data directory, its master key and the operator account; prints the
    /// operator's token once.
    Init {
        #[command(flatten)]
        data: DataDir,
        /// Name of the operator organisation.
        #[arg(long, default_value = "operator")]
        org: String,
        /// Name of the operator's first admin user.
        #[arg(long, default_value = "admin")]
        user: String,
        /// Print only the operator's token (for scripts: `TOKEN=$(cleanroom init -q)`).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Replace the master key: every collaboration key is re-wrapped under a new one, in one
    /// audited transaction, without touching data files. Stop the server first.
    RotateMasterKey {
        #[command(flatten)]
        data: DataDir,
        /// Where to write the new key when the current one comes from CLEANROOM_MASTER_KEY
        /// (a new file, readable by its owner only).
        #[arg(long)]
        new_key_out: Option<PathBuf>,
    },
    /// Move the room's metadata from the data directory's SQLite file into an empty
    /// PostgreSQL database: every row and audit entry, every chain verified there afterwards.
    /// Stop the server first; then serve with --metadata (CLEANROOM_METADATA) set to the same
    /// URL. The SQLite file is kept, set aside as meta.sqlite.migrated.
    Migrate {
        /// Directory of the room (its master key and meta.sqlite).
        #[arg(long, env = "CLEANROOM_DATA_DIR", default_value = "./cleanroom-data")]
        data_dir: PathBuf,
        /// The PostgreSQL database to move to: a postgres:// URL. Prefer the environment
        /// variable: a password in the URL would show in the process list.
        #[arg(long, env = "CLEANROOM_METADATA", hide_env_values = true)]
        to: String,
    },
    /// Whether the server answers (no token needed).
    Health {
        /// Keep asking for up to this many seconds until it answers.
        #[arg(long, default_value_t = 0.0)]
        wait: f64,
    },
    /// Run the end-to-end demo: a brand and a publisher set up a collaboration on a temporary
    /// in-process server with embedded defaults.
    Demo {
        /// Brand customers to generate (the publisher gets 1.25x as many users).
        #[arg(long, default_value_t = 40_000)]
        people: u64,
        /// Seed of the synthetic data.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// After the demo, keep the server up with the web console on the demo's data, print
        /// its URL and a sign-in token for each party, and stop on Ctrl-C.
        #[arg(long)]
        serve: bool,
        /// Address the demo's server listens on (default: a free port on 127.0.0.1, or
        /// 127.0.0.1:8080 with --serve).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Write a deterministic synthetic first-party dataset (CSV) as used by the demo.
    Synth {
        /// `brand` or `publisher`.
        #[arg(long)]
        party: String,
        /// Brand customers in the shared universe (the publisher gets 1.25x as many users).
        #[arg(long, default_value_t = 40_000)]
        people: u64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Output CSV file.
        #[arg(long)]
        out: PathBuf,
        /// Also write the schema (TOML) to this file; with --raw, the `cleanroom prepare`
        /// configuration for the file instead.
        #[arg(long)]
        schema_out: Option<PathBuf>,
        /// Write raw first-party data (messy emails, phone numbers and device ids, exact ages)
        /// for `cleanroom prepare`, instead of data already prepared for upload.
        #[arg(long)]
        raw: bool,
    },
    /// Who the token belongs to.
    Whoami,
    /// Organisations (the operator creates them).
    #[command(subcommand)]
    Org(OrgCmd),
    /// Users of your organisation.
    #[command(subcommand)]
    User(UserCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Collaborations between organisations.
    #[command(subcommand, alias = "collaboration")]
    Collab(CollabCmd),
    /// Datasets: declared schemas and encrypted uploads.
    #[command(subcommand)]
    Dataset(DatasetCmd),
    /// Audit logs.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Analysis policies of your datasets.
    #[command(subcommand)]
    Policy(analysis::PolicyCmd),
    /// Privacy budgets: grant, show.
    #[command(subcommand)]
    Budget(analysis::BudgetCmd),
    /// Run a SQL analysis (only thresholded, differentially private aggregates come back).
    Query(analysis::QueryArgs),
    /// Analyses and their results.
    #[command(subcommand, alias = "analyses")]
    Analysis(analysis::AnalysisCmd),
    /// Ready-made analyses: list, approve, run.
    #[command(subcommand)]
    Template(analysis::TemplateCmd),
    /// Activations: a partner receives a matched segment as its own identifiers, once per
    /// approval by the data owner.
    #[command(subcommand, alias = "activations")]
    Activation(activation::ActivationCmd),
    /// Prepare a CSV or Parquet file on premises: normalise and pseudonymise identifiers,
    /// generalise quasi-identifiers, assess re-identification risk. Needs no server.
    Prepare(prepare::PrepareArgs),
    /// Private set intersection directly with another party's machine (no server involved).
    #[command(subcommand)]
    Psi(psi::PsiCmd),
}

#[derive(Subcommand)]
pub enum OrgCmd {
    /// Create an organisation and its first admin (operator only); prints the admin's token.
    Create {
        name: String,
        #[arg(long, default_value = "admin")]
        admin: String,
        /// Print only the admin's token (for scripts).
        #[arg(long, short)]
        quiet: bool,
    },
    /// List organisations.
    List,
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user to your organisation (admins only); prints its token.
    Create {
        name: String,
        /// `admin` or `member`.
        #[arg(long, default_value = "member")]
        role: String,
        /// Print only the user's token (for scripts).
        #[arg(long, short)]
        quiet: bool,
    },
    /// List your organisation's users.
    List,
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Issue yourself another token.
    Create {
        #[arg(long, default_value = "")]
        label: String,
        /// Print only the token (for scripts).
        #[arg(long, short)]
        quiet: bool,
    },
    /// List tokens (all of your organisation's if you are an admin).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum CollabCmd {
    /// Create a collaboration; your organisation joins with the given abilities.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Comma-separated: contribute, analyse, receive.
        #[arg(long, default_value = "contribute,analyse,receive")]
        abilities: String,
    },
    /// Collaborations you are in or invited to.
    List,
    /// A collaboration and its members.
    Show { collab: String },
    /// Invite an organisation (creator only).
    Invite {
        collab: String,
        org: String,
        /// Comma-separated: contribute, analyse, receive.
        #[arg(long)]
        abilities: String,
    },
    /// Accept your organisation's invitation.
    Accept { collab: String },
    /// Decline your organisation's invitation.
    Decline { collab: String },
    /// Close the collaboration and destroy its data (creator's admins only).
    Close {
        collab: String,
        /// Confirm that the data is to be destroyed.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args, Clone)]
pub struct SchemaArgs {
    /// Schema file (TOML or JSON) with `[[columns]]` entries of name, type and role.
    #[arg(long, conflicts_with = "column")]
    pub schema: Option<PathBuf>,
    /// A column as name:type:role (repeat). Types: string, int64, float64, bool, date. Roles:
    /// identifier, dimension, metric, privacy_unit.
    #[arg(long = "column", short = 'c')]
    pub column: Vec<String>,
}

#[derive(Subcommand)]
pub enum DatasetCmd {
    /// Declare a dataset's name and schema.
    Create {
        collab: String,
        name: String,
        #[command(flatten)]
        schema: SchemaArgs,
    },
    /// Upload a CSV or Parquet file into a dataset (declaring it first when a schema is given).
    Upload {
        collab: String,
        name: String,
        /// The CSV (with a header line) or Parquet file.
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        schema: SchemaArgs,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Datasets of a collaboration (metadata only).
    List { collab: String },
    /// One dataset's schema and size.
    Show { collab: String, name: String },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Show an audit chain (a collaboration id, or `system`).
    List {
        chain: String,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Download a whole chain and verify every link on this machine.
    Verify {
        chain: String,
        /// A head recorded earlier (`SEQ:HASH`), to detect a rewritten history.
        #[arg(long)]
        expect_head: Option<String>,
    },
}

/// Parses the command line; flags that only client commands read are refused on `serve`,
/// where they would be silently ignored.
fn parse() -> Cli {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(("serve", sub)) = matches.subcommand() {
        for flag in ["server", "token", "json", "ca_cert"] {
            if sub.value_source(flag) == Some(ValueSource::CommandLine) {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        format!(
                            "--{} is for client commands; `serve` does not take it (the server's \
                             settings are --data-dir, --listen, --tls-cert and --tls-key)",
                            flag.replace('_', "-")
                        ),
                    )
                    .exit();
            }
        }
    }
    cli
}

/// Prints an error to stderr: a sentence, or with `--json` a problem-details object (the
/// server's own when the server refused).
pub(crate) fn report(e: &anyhow::Error, json: bool) {
    if !json {
        eprintln!("error: {e:#}");
        return;
    }
    let problem = match e.downcast_ref::<client::ApiFailure>() {
        Some(client::ApiFailure {
            problem: Some(p), ..
        }) => serde_json::to_value(p).unwrap_or_default(),
        Some(f) => serde_json::json!({
            "type": "urn:cleanroom:problem:server_error",
            "title": f.status.canonical_reason().unwrap_or("Error"),
            "status": f.status.as_u16(),
            "code": "server_error",
            "detail": f.to_string(),
        }),
        None => serde_json::json!({
            "type": "urn:cleanroom:problem:cli_error",
            "title": "Command failed",
            "code": "cli_error",
            "detail": format!("{e:#}"),
        }),
    };
    eprintln!("{problem}");
}

fn main() -> std::process::ExitCode {
    let cli = parse();
    if let Command::Prepare(args) = &cli.command {
        return prepare::main(args, cli.global.json);
    }
    let json = cli.global.json;
    let serving = matches!(
        cli.command,
        Command::Serve { .. } | Command::Scheduler { .. } | Command::Executor { .. }
    );
    // The certificate verifier logs its refusals itself; the client says the same, with what
    // to do about it, once.
    let default_level = if serving {
        "info"
    } else {
        "warn,rustls_platform_verifier=off"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLEANROOM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            report(&e, json);
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
