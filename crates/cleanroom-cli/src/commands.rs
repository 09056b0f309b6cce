//! What each subcommand does.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cleanroom_server::wire::*;
use cleanroom_service::{CleanRoom, Config, MasterKeyHex, MetadataUrl};
use serde::Deserialize;

use crate::client::{ApiFailure, Client, seg};
use crate::output::{self, opt, table};
use crate::{
    Cli, CollabCmd, Command, DataDir, DatasetCmd, Global, OrgCmd, SchemaArgs, TokenCmd, UserCmd,
};

pub async fn run(cli: Cli) -> Result<()> {
    let g = cli.global;
    match cli.command {
        Command::Serve {
            data,
            listen,
            tls_cert,
            tls_key,
            max_memory,
            max_spill,
            spill_dir,
            engine,
            cluster_key,
            cluster_cert,
            cluster_deadline,
        } => {
            crate::cluster::use_engine(crate::cluster::EngineArgs {
                engine: &engine,
                key: cluster_key.as_deref(),
                cert: cluster_cert.as_deref(),
                deadline: std::time::Duration::from_secs(cluster_deadline),
            })?;
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(cleanroom_server::tls::server_config(&cert, &key)?),
                _ => None,
            };
            let max_memory = max_memory.resolve();
            let spill = spill_config(max_spill, spill_dir);
            match (max_memory, &spill) {
                (Some(b), Some(s)) => tracing::info!(
                    max_memory_mib = b >> 20,
                    max_spill_mib = s.max_bytes >> 20,
                    spill_dir = %s.dir.display(),
                    "analyses share a memory limit and spill what does not fit, encrypted"
                ),
                (Some(b), None) => tracing::info!(
                    max_memory_mib = b >> 20,
                    "analyses share a memory limit; nothing spills to disk"
                ),
                (None, _) => {
                    tracing::info!("analyses have no memory limit; nothing spills to disk")
                }
            }
            cleanroom_service::limit_analysis_memory(cleanroom_service::MemoryLimits {
                max_bytes: max_memory,
                spill,
            })?;
            serve(&data, &listen, tls).await
        }
        Command::Scheduler {
            listen,
            executor_timeout,
            cluster_cert,
        } => crate::cluster::scheduler(&listen, executor_timeout, &cluster_cert).await,
        Command::Executor {
            scheduler,
            cluster_key,
            cluster_cert,
            data_dir,
            data_store,
            listen,
            external_host,
            work_dir,
            concurrent_tasks,
            max_memory,
            max_spill,
            spill_dir,
        } => {
            crate::cluster::executor(crate::cluster::ExecutorArgs {
                scheduler,
                cluster_key,
                cluster_cert,
                data_dir,
                data_store,
                listen,
                external_host,
                work_dir,
                concurrent_tasks,
                max_memory: max_memory.resolve(),
                spill: spill_config(max_spill, spill_dir),
            })
            .await
        }
        Command::ClusterKey { file } => crate::cluster::new_key(&file, g.json),
        Command::ClusterCert { file } => crate::cluster::new_cert(&file, g.json),
        Command::Init {
            data,
            org,
            user,
            quiet,
        } => init(&data, &org, &user, g.json, quiet).await,
        Command::Health { wait } => health(&g, wait).await,
        Command::Migrate { data_dir, to } => migrate(&data_dir, &to, g.json).await,
        Command::RotateMasterKey { data, new_key_out } => {
            rotate_master_key(&data, new_key_out.as_deref(), g.json).await
        }
        Command::Demo {
            people,
            seed,
            serve,
            listen,
        } => crate::demo::run(people, seed, serve, listen).await,
        Command::Synth {
            party,
            people,
            seed,
            out,
            schema_out,
            raw,
        } => crate::synth::write_party(&party, people, seed, &out, schema_out.as_deref(), raw),
        Command::Whoami => {
            let w: WhoAmI = client(&g)?.get("/whoami").await?;
            if g.json {
                return output::json(&w);
            }
            println!(
                "{} of {} ({}{}), token {}",
                w.user,
                w.org,
                w.role,
                if w.operator { ", operator" } else { "" },
                w.token_id
            );
            Ok(())
        }
        Command::Psi(c) => crate::psi::run(c, g.json).await,
        Command::Org(c) => org(&g, c).await,
        Command::User(c) => user(&g, c).await,
        Command::Token(c) => token(&g, c).await,
        Command::Collab(c) => collab(&g, c).await,
        Command::Dataset(c) => dataset(&g, c).await,
        Command::Audit(c) => crate::audit::run(&client(&g)?, g.json, c).await,
        Command::Policy(c) => match c {
            crate::analysis::PolicyCmd::Example { collab: None, .. } => {
                print!("{}", crate::analysis::EXAMPLE_POLICY);
                Ok(())
            }
            c => crate::analysis::policy(&client(&g)?, g.json, c).await,
        },
        Command::Budget(c) => crate::analysis::budget(&client(&g)?, g.json, c).await,
        Command::Query(a) => crate::analysis::query(&client(&g)?, g.json, a).await,
        Command::Analysis(c) => crate::analysis::analysis(&client(&g)?, g.json, c).await,
        Command::Template(c) => crate::analysis::template(&client(&g)?, g.json, c).await,
        Command::Activation(c) => crate::activation::activation(&client(&g)?, g.json, c).await,
        Command::Prepare(_) => bail!("prepare runs before the async runtime starts"),
    }
}

/// `--max-spill` and `--spill-dir`: encrypted spill files under `dir` (default: the system's
/// temporary directory), or none for a quota of 0.
fn spill_config(
    max_spill: u64,
    spill_dir: Option<std::path::PathBuf>,
) -> Option<cleanroom_service::SpillConfig> {
    (max_spill > 0).then(|| cleanroom_service::SpillConfig {
        dir: spill_dir.unwrap_or_else(std::env::temp_dir),
        max_bytes: max_spill,
    })
}

fn client(g: &Global) -> Result<Client> {
    if g.token.is_none() {
        bail!(
            "no API token: pass --token or set CLEANROOM_TOKEN (the operator's token is printed by `cleanroom init`)"
        );
    }
    Client::new(&g.server, g.token.clone(), g.ca_cert.as_deref())
}

fn room_config(data_dir: &Path) -> Config {
    let mut cfg = Config::new(data_dir);
    cfg.master_key_hex = std::env::var(cleanroom_storage_env())
        .ok()
        .map(MasterKeyHex::new);
    cfg
}

fn cleanroom_storage_env() -> &'static str {
    "CLEANROOM_MASTER_KEY"
}

/// Opens the room of `data` (creating it when `create`): on the embedded SQLite file in the
/// data directory, or on the PostgreSQL database `--metadata` names.
async fn open_room(data: &DataDir, create: bool) -> Result<CleanRoom> {
    let data_dir = &data.data_dir;
    let mut config = room_config(data_dir);
    config.create = create;
    config.metadata = data
        .metadata
        .as_deref()
        .map(MetadataUrl::parse)
        .transpose()
        .context("--metadata (CLEANROOM_METADATA) is not a postgres:// URL")?;
    config.replica_lease = std::time::Duration::from_secs_f64(data.replica_lease);
    if let Some(url) = &data.data_store {
        let url = cleanroom_objstore::S3Url::parse(url)
            .map_err(anyhow::Error::msg)
            .context("--data-store (CLEANROOM_DATA_STORE)")?;
        let files = cleanroom_objstore::S3Files::from_env(&url, tokio::runtime::Handle::current())
            .with_context(|| format!("--data-store {url}"))?;
        config.data_store = Some(std::sync::Arc::new(files));
    }
    CleanRoom::open(config)
        .await
        .with_context(|| format!("opening the data directory {}", data_dir.display()))
}

async fn serve(
    data: &DataDir,
    listen: &str,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> Result<()> {
    let data_dir = &data.data_dir;
    let room = open_room(data, false).await?;
    let (listener, addr) = cleanroom_server::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // The handlers are installed before the server says it listens: a supervisor's SIGTERM
    // that follows at once still gets a graceful stop (which retires this replica).
    #[cfg(unix)]
    let shutdown = {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        async move {
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            tracing::info!("shutting down");
        }
    };
    #[cfg(not(unix))]
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        %addr,
        data_dir = %data_dir.display(),
        master_key = ?room.master_key_source(),
        "cleanroom serving on {scheme}://{addr}"
    );
    eprintln!(
        "cleanroom listening on {scheme}://{addr} (data in {})",
        data_dir.display()
    );
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "serving plain HTTP beyond loopback: tokens and results cross the network unencrypted; \
             pass --tls-cert and --tls-key"
        );
    }
    let opts = cleanroom_server::ServeOptions {
        tls,
        ..Default::default()
    };
    cleanroom_server::serve_with(room.clone(), listener, opts, shutdown).await?;
    room.close().await;
    Ok(())
}

async fn rotate_master_key(data: &DataDir, new_key_out: Option<&Path>, json: bool) -> Result<()> {
    let room = open_room(data, false).await?;
    let done = room.rotate_master_key(&data.data_dir, new_key_out).await?;
    if json {
        return output::json(&serde_json::json!({
            "collaboration_keys": done.collaboration_keys,
            "new_key_at": done.new_key_at.display().to_string(),
        }));
    }
    println!(
        "Re-wrapped {} collaboration key(s) under a new master key, now in {}; no data file changed.",
        done.collaboration_keys,
        done.new_key_at.display()
    );
    if new_key_out.is_some() {
        println!("Set CLEANROOM_MASTER_KEY to its contents before starting the server.");
    }
    Ok(())
}

async fn migrate(data_dir: &Path, to: &str, json: bool) -> Result<()> {
    let url =
        MetadataUrl::parse(to).context("--to (CLEANROOM_METADATA) is not a postgres:// URL")?;
    let done = cleanroom_service::migrate_metadata(room_config(data_dir), &url)
        .await
        .with_context(|| format!("migrating the metadata of {}", data_dir.display()))?;
    let entries = done
        .rows
        .iter()
        .find(|(t, _)| t == "audit_entries")
        .map_or(0, |(_, n)| *n);
    if json {
        return output::json(&serde_json::json!({
            "rows": done.rows.iter().map(|(t, n)| (t.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
            "chains": done.chains.iter().map(|(c, h)| (c.clone(), h.seq)).collect::<std::collections::BTreeMap<_, _>>(),
            "sqlite_set_aside_as": done.set_aside.display().to_string(),
        }));
    }
    let total: u64 = done.rows.iter().map(|(_, n)| n).sum();
    println!(
        "Moved {total} rows in {} tables to PostgreSQL; {} audit chain(s) with {entries} entries verify there.",
        done.rows.len(),
        done.chains.len()
    );
    println!(
        "The SQLite file is kept as {}. Start the server with --metadata (CLEANROOM_METADATA) set to the same URL.",
        done.set_aside.display()
    );
    Ok(())
}

async fn health(g: &Global, wait: f64) -> Result<()> {
    let (server, json) = (&g.server, g.json);
    let cl = Client::new(server, None, g.ca_cert.as_deref())?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(wait.max(0.0));
    loop {
        match cl.get::<Health>("/health").await {
            Ok(h) => {
                if json {
                    return output::json(&h);
                }
                println!("{server}: {} (version {})", h.status, h.version);
                return Ok(());
            }
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

async fn init(data: &DataDir, org: &str, user: &str, json: bool, quiet: bool) -> Result<()> {
    let data_dir = &data.data_dir;
    let room = open_room(data, true).await?;
    let (o, u, token) = room.init_operator(org, user).await?;
    room.close().await;
    if quiet {
        println!("{}", token.expose());
        return Ok(());
    }
    if json {
        return output::json(&serde_json::json!({
            "data_dir": data_dir.display().to_string(),
            "org": o.name.to_string(),
            "user": u.name.to_string(),
            "token": token.expose(),
        }));
    }
    println!(
        "Initialised {} (master key: {:?}).",
        data_dir.display(),
        room.master_key_source()
    );
    println!(
        "Operator {} / admin {} token (shown once, keep it safe):",
        o.name, u.name
    );
    println!();
    println!("  {}", token.expose());
    println!();
    println!(
        "Next: cleanroom serve --data-dir {}{}",
        data_dir.display(),
        match (data.metadata.is_some(), data.data_store.is_some()) {
            (false, false) => "",
            (true, false) => " (with the same --metadata or CLEANROOM_METADATA)",
            (false, true) => " (with the same --data-store or CLEANROOM_DATA_STORE)",
            (true, true) => " (with the same --metadata and --data-store)",
        }
    );
    println!("      export CLEANROOM_TOKEN=<the token above>; cleanroom org create <name>");
    Ok(())
}

async fn org(g: &Global, c: OrgCmd) -> Result<()> {
    let cl = client(g)?;
    match c {
        OrgCmd::Create { name, admin, quiet } => {
            let r: CreatedOrg = cl.post("/orgs", &CreateOrgRequest { name, admin }).await?;
            if quiet {
                println!("{}", r.token);
                return Ok(());
            }
            if g.json {
                return output::json(&r);
            }
            println!(
                "Created organisation {} with admin {}.",
                r.org.name, r.admin.name
            );
            println!(
                "Admin token (shown once, hand it over securely):\n\n  {}\n",
                r.token
            );
        }
        OrgCmd::List => {
            let r: Vec<OrgOut> = cl.get("/orgs").await?;
            if g.json {
                return output::json(&r);
            }
            println!(
                "{}",
                table(
                    &["organisation", "operator", "created"],
                    r.iter()
                        .map(|o| vec![o.name.clone(), o.operator.to_string(), o.created_at.clone()])
                        .collect()
                )
            );
        }
    }
    Ok(())
}

async fn user(g: &Global, c: UserCmd) -> Result<()> {
    let cl = client(g)?;
    match c {
        UserCmd::Create { name, role, quiet } => {
            let r: CreatedUser = cl
                .post(
                    "/users",
                    &CreateUserRequest {
                        name,
                        role: Some(role),
                    },
                )
                .await?;
            if quiet {
                println!("{}", r.token);
                return Ok(());
            }
            if g.json {
                return output::json(&r);
            }
            println!("Created user {} ({}).", r.user.name, r.user.role);
            println!("Token (shown once):\n\n  {}\n", r.token);
        }
        UserCmd::List => {
            let r: Vec<UserOut> = cl.get("/users").await?;
            if g.json {
                return output::json(&r);
            }
            println!(
                "{}",
                table(
                    &["user", "role", "created"],
                    r.iter()
                        .map(|u| vec![u.name.clone(), u.role.clone(), u.created_at.clone()])
                        .collect()
                )
            );
        }
    }
    Ok(())
}

async fn token(g: &Global, c: TokenCmd) -> Result<()> {
    let cl = client(g)?;
    match c {
        TokenCmd::Create { label, quiet } => {
            let r: CreatedToken = cl.post("/tokens", &CreateTokenRequest { label }).await?;
            if quiet {
                println!("{}", r.token);
                return Ok(());
            }
            if g.json {
                return output::json(&r);
            }
            println!("Token {} (shown once):\n\n  {}\n", r.id, r.token);
        }
        TokenCmd::List => {
            let r: Vec<TokenOut> = cl.get("/tokens").await?;
            if g.json {
                return output::json(&r);
            }
            println!(
                "{}",
                table(
                    &["id", "user", "label", "created", "revoked"],
                    r.iter()
                        .map(|t| vec![
                            t.id.clone(),
                            t.user.clone(),
                            t.label.clone(),
                            t.created_at.clone(),
                            opt(&t.revoked_at)
                        ])
                        .collect()
                )
            );
        }
        TokenCmd::Revoke { id } => {
            cl.delete(&format!("/tokens/{}", seg(&id)?)).await?;
            if g.json {
                return output::json(&serde_json::json!({ "revoked": id }));
            }
            println!("Revoked token {id}.");
        }
    }
    Ok(())
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_owned())
        .filter(|x| !x.is_empty())
        .collect()
}

async fn collab(g: &Global, c: CollabCmd) -> Result<()> {
    let cl = client(g)?;
    match c {
        CollabCmd::Create {
            name,
            description,
            abilities,
        } => {
            let r: CollaborationDetail = cl
                .post(
                    "/collaborations",
                    &CreateCollaborationRequest {
                        name,
                        description,
                        abilities: Some(split_list(&abilities)),
                    },
                )
                .await?;
            if g.json {
                return output::json(&r);
            }
            println!(
                "Created collaboration {} with id {}",
                r.collaboration.name, r.collaboration.id
            );
            println!(
                "Invite partners with: cleanroom collab invite {} <org> --abilities contribute",
                r.collaboration.id
            );
        }
        CollabCmd::List => {
            let r: Vec<CollaborationOut> = cl.get("/collaborations").await?;
            if g.json {
                return output::json(&r);
            }
            println!(
                "{}",
                table(
                    &["id", "name", "status", "you", "your abilities"],
                    r.iter()
                        .map(|c| vec![
                            c.id.clone(),
                            c.name.clone(),
                            c.status.clone(),
                            c.your_status.clone(),
                            c.your_abilities.join(",")
                        ])
                        .collect()
                )
            );
        }
        CollabCmd::Show { collab } => {
            let r: CollaborationDetail = cl
                .get(&format!("/collaborations/{}", seg(&collab)?))
                .await?;
            if g.json {
                return output::json(&r);
            }
            show_collab(&r);
        }
        CollabCmd::Invite {
            collab,
            org,
            abilities,
        } => {
            let r: MemberOut = cl
                .post(
                    &format!("/collaborations/{}/invitations", seg(&collab)?),
                    &InviteRequest {
                        org,
                        abilities: split_list(&abilities),
                    },
                )
                .await?;
            if g.json {
                return output::json(&r);
            }
            println!(
                "Invited {} with abilities {}; it sees nothing until it accepts.",
                r.org,
                r.abilities.join(",")
            );
        }
        CollabCmd::Accept { collab } => {
            let r: CollaborationDetail = cl
                .post(
                    &format!("/collaborations/{}/accept", seg(&collab)?),
                    &serde_json::json!({}),
                )
                .await?;
            if g.json {
                return output::json(&r);
            }
            println!("Joined {}.", r.collaboration.name);
            show_collab(&r);
        }
        CollabCmd::Decline { collab } => {
            cl.send_post_empty(&format!("/collaborations/{}/decline", seg(&collab)?))
                .await?;
            if g.json {
                return output::json(&serde_json::json!({ "declined": collab }));
            }
            println!("Declined.");
        }
        CollabCmd::Close { collab, yes } => {
            if !yes {
                bail!(
                    "closing destroys the collaboration's keys and with them all its data; repeat with --yes to confirm"
                );
            }
            let r: Closed = cl
                .post(
                    &format!("/collaborations/{}/close", seg(&collab)?),
                    &serde_json::json!({}),
                )
                .await?;
            if g.json {
                return output::json(&r);
            }
            println!(
                "Closed. The collaboration key and {} dataset key(s) were destroyed; the data can no longer be decrypted.",
                r.destroyed_dataset_keys
            );
        }
    }
    Ok(())
}

pub fn show_collab(r: &CollaborationDetail) {
    let c = &r.collaboration;
    println!(
        "{} ({}) — {}, created by {}",
        c.name, c.id, c.status, r.creator
    );
    if !c.description.is_empty() {
        println!("{}", c.description);
    }
    println!("{}", output::members(&r.members));
}

/// A schema file: `[[columns]]` with `name`, `type`, `role` (TOML), or the same in JSON.
#[derive(Debug, Deserialize)]
struct SchemaFile {
    columns: Vec<ColumnOut>,
}

fn read_schema(args: &SchemaArgs) -> Result<Option<Vec<ColumnOut>>> {
    if let Some(path) = &args.schema {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let parsed: SchemaFile = if path.extension().and_then(|e| e.to_str()) == Some("json") {
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid schema (JSON)", path.display()))?
        } else {
            toml::from_str(&text)
                .with_context(|| format!("{} is not a valid schema (TOML)", path.display()))?
        };
        return Ok(Some(parsed.columns));
    }
    if args.column.is_empty() {
        return Ok(None);
    }
    args.column
        .iter()
        .map(|c| {
            let spec = cleanroom_core::schema::ColumnSpec::parse_compact(c)?;
            Ok(ColumnOut::from(&spec))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

async fn dataset(g: &Global, c: DatasetCmd) -> Result<()> {
    let cl = client(g)?;
    match c {
        DatasetCmd::Create {
            collab,
            name,
            schema,
        } => {
            let Some(columns) = read_schema(&schema)? else {
                bail!("declare the schema with --schema FILE or --column name:type:role (repeat)");
            };
            let r: DatasetOut = cl
                .post(
                    &format!("/collaborations/{}/datasets", seg(&collab)?),
                    &CreateDatasetRequest { name, columns },
                )
                .await?;
            if g.json {
                return output::json(&r);
            }
            println!(
                "Declared dataset {}; upload with: cleanroom dataset upload {collab} {} --file data.csv",
                r.name, r.name
            );
        }
        DatasetCmd::Upload {
            collab,
            name,
            file,
            schema,
            quiet,
        } => {
            if !file.is_file() {
                bail!("{} does not exist or is not a file", file.display());
            }
            if let Some(columns) = read_schema(&schema)? {
                declare_for_upload(&cl, &collab, &name, columns).await?;
            }
            let r = cl.upload(&collab, &name, &file, quiet || g.json).await?;
            if g.json {
                return output::json(&r);
            }
            println!(
                "Uploaded {}: {} rows, encrypted at rest ({} bytes).",
                r.name,
                output::num(r.row_count),
                output::num(r.encrypted_bytes)
            );
        }
        DatasetCmd::List { collab } => {
            let r: Vec<DatasetOut> = cl
                .get(&format!("/collaborations/{}/datasets", seg(&collab)?))
                .await?;
            if g.json {
                return output::json(&r);
            }
            println!("{}", output::datasets(&r));
        }
        DatasetCmd::Show { collab, name } => {
            let r: DatasetOut = cl
                .get(&format!(
                    "/collaborations/{}/datasets/{}",
                    seg(&collab)?,
                    seg(&name)?
                ))
                .await?;
            if g.json {
                return output::json(&r);
            }
            println!("{}", output::datasets(std::slice::from_ref(&r)));
        }
    }
    Ok(())
}

/// `name:type:role, …` for messages.
fn describe_columns(columns: &[ColumnOut]) -> String {
    columns
        .iter()
        .map(|c| format!("{}:{}:{}", c.name, c.r#type, c.role))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Declares a dataset before its upload. When the name is taken by the caller's own dataset that
/// is still pending with the same schema (an earlier upload failed, say on a bad line), the
/// declaration is reused so that re-running the same command works; any other clash is
/// explained.
async fn declare_for_upload(
    cl: &Client,
    collab: &str,
    name: &str,
    columns: Vec<ColumnOut>,
) -> Result<()> {
    let path = format!("/collaborations/{}/datasets", seg(collab)?);
    let request = CreateDatasetRequest {
        name: name.to_owned(),
        columns: columns.clone(),
    };
    let clash = match cl.post::<_, DatasetOut>(&path, &request).await {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let name_taken = clash
        .downcast_ref::<ApiFailure>()
        .is_some_and(|f| f.status == reqwest::StatusCode::CONFLICT);
    if !name_taken {
        return Err(clash);
    }
    // Only the owner sees a pending dataset, so a visible pending one is the caller's own.
    let Ok(existing) = cl
        .get::<DatasetOut>(&format!("{path}/{}", seg(name)?))
        .await
    else {
        return Err(clash);
    };
    let me: WhoAmI = cl.get("/whoami").await?;
    if existing.owner != me.org {
        return Err(clash);
    }
    match existing.status.as_str() {
        "pending" => {}
        "ready" => {
            bail!("dataset {name} has data already (datasets are immutable); choose another name")
        }
        "uploading" => bail!("an upload into dataset {name} is in progress; wait for it to finish"),
        other => bail!("dataset {name} is {other}; choose another name"),
    }
    let wanted: Vec<ColumnOut> = columns
        .iter()
        .map(|c| c.to_spec().map(|spec| ColumnOut::from(&spec)))
        .collect::<std::result::Result<_, _>>()?;
    if existing.columns != wanted {
        bail!(
            "dataset {name} was declared already with a different schema ({}), not ({}); \
             upload without --schema/--column to use the declared one, or choose another name",
            describe_columns(&existing.columns),
            describe_columns(&wanted)
        );
    }
    Ok(())
}
