//! `scheduler`, `executor`, `cluster-key`, `cluster-cert` and `serve --engine`: analyses on a
//! Ballista cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cleanroom_cluster::{
    BallistaEngine, ClusterKey, ClusterTls, ExecutorOptions, Readers, SchedulerOptions,
    run_executor, run_scheduler,
};

/// `serve --engine …` and its cluster settings.
pub struct EngineArgs<'a> {
    pub engine: &'a str,
    pub key: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub deadline: Duration,
}

/// `serve --engine`: in this process (nothing to do), or on the cluster at a ballista:// URL.
pub fn use_engine(a: EngineArgs<'_>) -> Result<()> {
    let engine = a.engine.trim();
    if engine == "in-process" {
        if a.key.is_some() || a.cert.is_some() {
            tracing::warn!(
                "--cluster-key and --cluster-cert are ignored: analyses run in this process \
                 (--engine in-process)"
            );
        }
        tracing::info!("analyses run in this process");
        return Ok(());
    }
    let engine_help = "--engine (CLEANROOM_ENGINE) is `in-process` or ballista://HOST:PORT";
    cleanroom_cluster::engine::parse_url(engine).context(engine_help)?;
    let Some(key) = a.key else {
        bail!(
            "--engine {engine} needs --cluster-key FILE (CLEANROOM_CLUSTER_KEY): the key every \
             executor of the cluster holds too; make one with `cleanroom cluster-key FILE`"
        );
    };
    let Some(cert) = a.cert else {
        bail!(
            "--engine {engine} needs --cluster-cert FILE (CLEANROOM_CLUSTER_CERT): the \
             certificate the scheduler and every executor hold too; make one with `cleanroom \
             cluster-cert FILE`"
        );
    };
    let key = ClusterKey::read_file(key)?;
    let tls = ClusterTls::read_file(cert)?;
    let cluster = BallistaEngine::new(engine, key, tls)
        .context(engine_help)?
        .with_deadline(a.deadline);
    tracing::info!(
        cluster = %engine,
        deadline_s = a.deadline.as_secs(),
        "analyses run on the cluster; checking, charging, noise and releases stay in this server"
    );
    cleanroom_service::use_analysis_cluster(Arc::new(cluster))?;
    Ok(())
}

/// `cleanroom cluster-key FILE`.
pub fn new_key(file: &Path, json: bool) -> Result<()> {
    ClusterKey::create_file(file)?;
    if json {
        crate::output::json(&serde_json::json!({ "cluster_key": file }))
    } else {
        println!(
            "wrote a new cluster key to {} (readable by its owner only); give the same file to \
             `serve --cluster-key` and to every `executor --cluster-key`",
            file.display()
        );
        Ok(())
    }
}

/// `cleanroom cluster-cert FILE`.
pub fn new_cert(file: &Path, json: bool) -> Result<()> {
    let tls = ClusterTls::create_file(file)?;
    if json {
        crate::output::json(&serde_json::json!({
            "cluster_cert": file,
            "sha256": tls.fingerprint(),
        }))
    } else {
        println!(
            "wrote a new cluster certificate and its key to {} (readable by its owner only; \
             sha256 {}); give the same file to `serve --cluster-cert`, `scheduler \
             --cluster-cert` and every `executor --cluster-cert`",
            file.display(),
            tls.fingerprint()
        );
        Ok(())
    }
}

/// `cleanroom scheduler`.
pub async fn scheduler(listen: &str, executor_timeout: u64, cert: &Path) -> Result<()> {
    let tls = ClusterTls::read_file(cert)?;
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen} is not an address such as 127.0.0.1:50050"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let opts = SchedulerOptions {
        executor_timeout: Duration::from_secs(executor_timeout),
        ..SchedulerOptions::default()
    };
    tokio::select! {
        r = run_scheduler(listener, opts, tls) => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("scheduler stopping"),
    }
    Ok(())
}

pub struct ExecutorArgs {
    pub scheduler: String,
    pub cluster_key: PathBuf,
    pub cluster_cert: PathBuf,
    pub data_dir: PathBuf,
    pub data_store: Option<String>,
    pub listen: String,
    pub external_host: Option<String>,
    pub work_dir: Option<PathBuf>,
    pub concurrent_tasks: usize,
    pub max_memory: Option<usize>,
    pub spill: Option<cleanroom_service::SpillConfig>,
}

/// `cleanroom executor`.
pub async fn executor(a: ExecutorArgs) -> Result<()> {
    let url = if a.scheduler.starts_with("ballista://") {
        a.scheduler.clone()
    } else {
        format!("ballista://{}", a.scheduler)
    };
    let scheduler = cleanroom_cluster::engine::parse_url(&url)
        .with_context(|| "--scheduler (CLEANROOM_SCHEDULER) is HOST:PORT")?;
    let listen: SocketAddr = a.listen.parse().with_context(|| {
        format!(
            "--listen {} is not an address such as 127.0.0.1:50051",
            a.listen
        )
    })?;
    let key = ClusterKey::read_file(&a.cluster_key)?;
    let tls = ClusterTls::read_file(&a.cluster_cert)?;
    let readers = match &a.data_store {
        Some(url) => {
            let url = cleanroom_objstore::S3Url::parse(url)
                .map_err(anyhow::Error::msg)
                .context("--data-store (CLEANROOM_DATA_STORE)")?;
            let files =
                cleanroom_objstore::S3Files::from_env(&url, tokio::runtime::Handle::current())
                    .with_context(|| format!("--data-store {url}"))?;
            Readers::on(Arc::new(files), key)
        }
        None => {
            if !a.data_dir.is_dir() {
                bail!(
                    "--data-dir {} is not a directory: give the room's data directory (shared \
                     with the server), or --data-store s3://… when its datasets are in a bucket",
                    a.data_dir.display()
                );
            }
            Readers::local(&a.data_dir, key)
                .with_context(|| format!("opening the datasets of {}", a.data_dir.display()))?
        }
    };
    let opts = ExecutorOptions {
        scheduler,
        bind_host: listen.ip().to_string(),
        external_host: a.external_host.unwrap_or_else(|| listen.ip().to_string()),
        flight_port: listen.port(),
        work_dir: a.work_dir,
        vcores: a.concurrent_tasks,
        max_memory: a.max_memory.map(|b| b as u64),
        spill: a.spill,
        heartbeat: Duration::from_secs(5),
        tls,
    };
    // Ballista handles SIGINT and SIGTERM itself: it tells the scheduler, lets its tasks
    // drain and removes its shuffle files before this returns.
    run_executor(opts, readers).await?;
    Ok(())
}
