//! `scheduler`, `executor`, `cluster-key` and `serve --engine`: analyses on a Ballista cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cleanroom_cluster::{
    BallistaEngine, ClusterKey, ExecutorOptions, Readers, SchedulerOptions, run_executor,
    run_scheduler,
};

/// `serve --engine`: in this process (nothing to do), or on the cluster at a ballista:// URL.
pub fn use_engine(engine: &str, cluster_key: Option<&Path>) -> Result<()> {
    let engine = engine.trim();
    if engine == "in-process" {
        if cluster_key.is_some() {
            tracing::warn!(
                "--cluster-key is ignored: analyses run in this process (--engine in-process)"
            );
        }
        tracing::info!("analyses run in this process");
        return Ok(());
    }
    let Some(path) = cluster_key else {
        bail!(
            "--engine {engine} needs --cluster-key FILE (CLEANROOM_CLUSTER_KEY): the key every \
             executor of the cluster holds too; make one with `cleanroom cluster-key FILE`"
        );
    };
    let key = ClusterKey::read_file(path)?;
    let cluster = BallistaEngine::new(engine, key)
        .with_context(|| "--engine (CLEANROOM_ENGINE) is `in-process` or ballista://HOST:PORT")?;
    tracing::info!(
        cluster = %engine,
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

/// `cleanroom scheduler`.
pub async fn scheduler(listen: &str, executor_timeout: u64) -> Result<()> {
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
        r = run_scheduler(listener, opts) => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("scheduler stopping"),
    }
    Ok(())
}

pub struct ExecutorArgs {
    pub scheduler: String,
    pub cluster_key: PathBuf,
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
    };
    tokio::select! {
        r = run_executor(opts, readers) => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("executor stopping"),
    }
    Ok(())
}
