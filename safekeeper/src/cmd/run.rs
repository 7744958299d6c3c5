//! `safekeeper run`: follow the configured primaries until SIGTERM/SIGINT, serving the admin API.
//!
//! Owns process-level concerns: logging, the data-directory lock (two processes on one data
//! directory would corrupt each other's WAL), the HTTP listener (bound before anything starts),
//! merging configured clusters with `<data-dir>/clusters.toml`, signal handling through one
//! cancellation token that stops the clusters and the server, and the exit status (non-zero when
//! every cluster stopped on a permanent error and at least one of them was configured).

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cluster::ServiceContext;
use crate::cluster::config::IngestOptions;
use crate::http::{self, ApiState, Auth};
use crate::process::cluster_set::{ClusterSet, Origin, Outcome, warn_shadowed};
use crate::process::clusters_toml;
use crate::process::config::{LogFormat, RunArgs, ServiceConfig};
use crate::telemetry;

pub fn run(args: RunArgs) -> ExitCode {
    limit_malloc_footprint();
    let config = match ServiceConfig::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::log::init(config.log_format);
    // Before anything can upload: every object of this process is sealed with this ring.
    if let Err(e) = crate::encryption::install_from(config.encryption_key_file.as_deref()) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    // In JSON mode every line on stderr is a JSON object: the final words go through the logger.
    let plain_stderr = config.log_format == LogFormat::Text;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("safekeeper")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(code) => code,
        Err(e) => {
            let line = crate::hints::with_hint(&e);
            error!("{line}");
            if plain_stderr {
                eprintln!("error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// glibc's allocator defaults suit a few busy threads, not a thread per followed cluster: it
/// gives every thread that allocates an arena of its own (up to 8 per core, each keeping what it
/// freed), and after a large buffer (a 16 MiB segment read for an upload) is freed it raises its
/// mmap threshold so that later large buffers come from, and stay in, those arenas. Measured with
/// `bench/footprint.sh` (20 idle clusters: 135 MiB with the defaults); set before any thread
/// starts. `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` in the environment still win.
fn limit_malloc_footprint() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// Two arenas: the runtime's workers and the followers share them; contention is low
        /// because the commit path allocates almost nothing per batch.
        const ARENAS: libc::c_int = 2;
        /// Buffers from 256 KiB up are mapped and unmapped, so freeing one returns it.
        const MMAP_THRESHOLD: libc::c_int = 256 << 10;
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only changes allocator parameters; no thread has started yet.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) };
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above; a fixed threshold also turns off glibc's dynamic adjustment.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        }
    }
}

/// The service, from the data-directory lock to the exit status.
async fn serve(config: ServiceConfig) -> Result<ExitCode> {
    let _lock = claim_data_dir(&config.data_dir)?;
    let auth = match &config.http_auth_token_file {
        Some(path) => Auth::from_file(path, &config.http_public_routes)?,
        None => Auth::off(),
    };
    // Before anything starts: a busy port is a one-line error, not a half-started service.
    let listener = http::bind(config.http_addr).await?;
    info!(id = config.id, data_dir = %config.data_dir.display(), remote = %config.remote,
          http_addr = %config.http_addr, http_auth = auth.enabled(),
          version = env!("CARGO_PKG_VERSION"), "safekeeper starting");

    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone())?;
    let recorder = telemetry::install();
    if let Some(handle) = &recorder {
        telemetry::spawn_upkeep(handle.clone(), cancel.clone());
    }

    let set = start_clusters(&config, &cancel).await?;
    let state = ApiState::new(set.clone(), config.id, config.data_dir.clone(), recorder);
    state.observer.clone().spawn(set.clone(), cancel.clone());
    let (app, _) = http::app(state, auth);
    let server = tokio::spawn(http::serve(listener, app, cancel.clone()));
    info!(
        clusters = set.list().len(),
        "following; admin API at http://{}", config.http_addr
    );

    // Until shutdown, or until every cluster stopped on a permanent error.
    let mut changes = set.subscribe();
    while !set.all_failed() {
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = changes.changed() => if r.is_err() { break },
        }
    }
    cancel.cancel();
    shut_down(&set, server, config.log_format).await
}

/// Creates the data directory and takes its lock, held as long as the returned file is.
fn claim_data_dir(data_dir: &Path) -> Result<File> {
    std::fs::create_dir_all(data_dir).with_context(|| {
        format!(
            "cannot create the data directory {} (check that this user may write there, or pass \
             --data-dir)",
            data_dir.display()
        )
    })?;
    lock_data_dir(data_dir)
}

/// Opens the remote storage and starts the configured clusters merged with
/// `<data-dir>/clusters.toml`. On a failed start every cluster already started is stopped.
async fn start_clusters(
    config: &ServiceConfig,
    cancel: &CancellationToken,
) -> Result<Arc<ClusterSet>> {
    let local_remote = config.remote.strip_prefix("file://").map(PathBuf::from);
    if let Some(local) = &local_remote {
        std::fs::create_dir_all(local)
            .with_context(|| format!("cannot create the remote directory {}", local.display()))?;
    }
    let storage = crate::process::storage::open_shared(&config.remote, &config.s3).await?;
    crate::remote::check_remote(storage.as_ref()).await?;
    let ctx = ServiceContext {
        sk_id: config.id,
        data_dir: config.data_dir.clone(),
        storage,
        offload: config.offload,
        ingest: IngestOptions {
            status_interval: config.status_interval,
            receive_timeout: config.receive_timeout,
        },
        backup: config.backup,
    };
    let runtime = clusters_toml::load(&config.data_dir)?;
    let (clusters, shadowed) = clusters_toml::merge(config.clusters.clone(), runtime);
    warn_shadowed(&shadowed);
    let set = ClusterSet::new(ctx, cancel.clone(), local_remote);
    let initial = clusters
        .into_iter()
        .map(|(c, runtime)| (c, if runtime { Origin::Api } else { Origin::Config }))
        .collect();
    let started = set.start_initial(initial).and_then(|()| {
        if shadowed.is_empty() {
            Ok(())
        } else {
            set.save_runtime_list()
        }
    });
    if let Err(e) = started {
        cancel.cancel();
        set.wait_all().await;
        return Err(e);
    }
    if set.list().is_empty() {
        warn!("no cluster to follow yet: add one with POST /v1/clusters or configure --primary");
    }
    Ok(set)
}

/// After cancellation: waits for every cluster and the HTTP server, and picks the exit status
/// (failure when every cluster stopped on a permanent error and there was at least one).
async fn shut_down(
    set: &ClusterSet,
    server: JoinHandle<Result<()>>,
    log_format: LogFormat,
) -> Result<ExitCode> {
    let outcomes = set.wait_all().await;
    let mut failed = 0;
    for (name, outcome) in &outcomes {
        if let Outcome::Failed(e) = outcome {
            failed += 1;
            match log_format {
                LogFormat::Text => eprintln!("error: cluster {name}: {e}"),
                LogFormat::Json => {
                    error!(cluster = %name, error = %e, "cluster stopped on an error")
                }
            }
        }
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!("{e:#}"),
        Err(e) => error!("the HTTP server task failed: {e}"),
    }
    if failed > 0 && failed == outcomes.len() {
        return Ok(ExitCode::FAILURE);
    }
    info!("safekeeper stopped");
    Ok(ExitCode::SUCCESS)
}

/// Cancels `cancel` on the first SIGTERM or SIGINT.
fn spawn_signal_handler(cancel: CancellationToken) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            signal = which,
            "shutting down: flushing WAL and saving control files"
        );
        cancel.cancel();
    });
    Ok(())
}

/// Takes an exclusive `flock` on `<data-dir>/safekeeper.lock`, held for the process lifetime.
fn lock_data_dir(dir: &Path) -> Result<File> {
    let path = dir.join("safekeeper.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is shared with the kernel.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "data directory {} is in use by another safekeeper process (lock {} is held)",
            dir.display(),
            path.display()
        );
    }
    Ok(file)
}
