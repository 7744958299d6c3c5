//! `safekeeper run`: follow the configured primaries until SIGTERM/SIGINT.
//!
//! Owns process-level concerns: logging, the data-directory lock (two processes on one data
//! directory would corrupt each other's WAL), signal handling through one cancellation token, and
//! the exit status (non-zero when every cluster stopped on a permanent error).

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use safekeeper::config::{RunArgs, ServiceConfig};
use safekeeper::ingest::IngestOptions;
use safekeeper::remote::open_remote;
use safekeeper::service::{ServiceContext, start_cluster};

pub fn run(args: RunArgs) -> ExitCode {
    let config = match ServiceConfig::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
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
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: ServiceConfig) -> Result<ExitCode> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {} (check that this user may write there, or pass \
             --data-dir)",
            config.data_dir.display()
        )
    })?;
    let _lock = lock_data_dir(&config.data_dir)?;
    info!(id = config.id, data_dir = %config.data_dir.display(), remote = %config.remote,
          clusters = config.clusters.len(), version = env!("CARGO_PKG_VERSION"), "safekeeper starting");

    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone())?;

    if let Some(local) = config.remote.strip_prefix("file://") {
        std::fs::create_dir_all(local)
            .with_context(|| format!("cannot create the remote directory {local}"))?;
    }
    let storage = open_remote(&config.remote, &config.s3).await?;
    let ctx = ServiceContext {
        sk_id: config.id,
        data_dir: config.data_dir.clone(),
        storage,
        offload: config.offload,
        ingest: IngestOptions {
            status_interval: config.status_interval,
        },
    };
    let mut handles = Vec::new();
    for cluster in &config.clusters {
        handles.push(
            start_cluster(&ctx, cluster.clone(), &cancel)
                .with_context(|| format!("cannot start cluster {}", cluster.name))?,
        );
    }

    let total = handles.len();
    let mut failed = 0;
    for handle in handles {
        let name = handle.name.clone();
        if let Err(e) = handle.wait().await {
            failed += 1;
            eprintln!("error: cluster {name}: {e:#}");
        }
    }
    if failed == total {
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
