//! `safekeeper restore-wal %f %p`: PostgreSQL's `restore_command`, served from the archive.
//!
//! Owns the contract with PostgreSQL (docs/architecture.md, "Restore semantics"), through the exit status:
//! - `0`: `%p` holds the file: the full segment, else the partial of that segment holding the
//!   most WAL across safekeepers, zero-padded to the segment size, or the history file;
//! - `1`: the archive has no such file; PostgreSQL carries on (tries another timeline, or ends
//!   recovery when the WAL is exhausted);
//! - `255` (fatal; any status above 125 makes PostgreSQL abort recovery instead of treating the
//!   file as missing): the storage stayed unreachable for `--retry-for`, access was denied, an
//!   object is damaged, several safekeepers' partials of the segment disagree on their common
//!   bytes (one line names both objects and the first differing LSN; `--prefer-safekeeper ID`
//!   says which to trust), `%p` could not be written, the archive of the cluster is empty (a
//!   wrong `--remote` or `--cluster`), or the command line is wrong. Answering "not found" in these
//!   cases would make PostgreSQL end recovery early and promote without WAL that exists, losing
//!   acknowledged commits; stopping recovery is recoverable, a premature promotion is not.
//!
//! `%p` is written to a temporary file next to it, fsynced and renamed: never half-written.
//!
//! Prefetch (on unless `--prefetch 0`): after a full segment is served, a detached worker process
//! ([`super::prefetch_worker`], one per spool for the whole recovery) keeps the next full
//! segments downloaded into the spool ([`crate::archive::spool`]), so sequential replay is not
//! bound by request latency. A call the spool can answer does no more than a rename and an
//! fsync: no async runtime, no storage client, no request. It serves only a segment the worker
//! confirmed in the archive lately (the spool's "fresh" rule): a replaced or removed object is
//! not served from the spool. A prefetch failure never fails a restore: the foreground falls
//! back to a normal fetch.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use remote_storage::{ListOptions, RemoteStorage};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive::fetch::{FetchError, FetchOptions, Fetched, WalFileName, fetch_wal_file};
use crate::archive::spool::{Spool, write_file_atomic};
use crate::remote::wal_prefix;

use super::archive_args::{ArchiveArgs, runtime};

/// `%f` is not in the archive.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Recovery must stop: see the module documentation.
pub const EXIT_FATAL: u8 = 255;

/// Default spool directory name, created next to `%p` (inside `pg_wal`).
const DEFAULT_SPOOL: &str = ".safekeeper-prefetch";
/// Longest wait for a segment a prefetch worker is downloading right now.
const MAX_SPOOL_WAIT: Duration = Duration::from_secs(60);

/// Arguments of `restore-wal`.
#[derive(Args, Debug)]
pub struct RestoreWalArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,

    /// Keep up to N full segments after the one served downloaded in the background (one worker
    /// process per recovery; the depth adapts to how fast replay consumes them, within N and
    /// 512 MiB), so PostgreSQL finds them locally. 0: off. Partials are never prefetched.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub prefetch: usize,

    /// Directory for prefetched segments (default: .safekeeper-prefetch next to DEST, i.e. in
    /// pg_wal, on the same filesystem).
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// How long to keep retrying while the storage fails before giving up with a fatal error
    /// (which stops PostgreSQL's recovery rather than ending it early).
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,

    /// When the partials of a segment from several safekeepers disagree on their common bytes
    /// (a history that diverged inside one timeline), serve safekeeper ID's (or a longer one that
    /// agrees with it) instead of stopping recovery. Without disagreement it changes nothing: the
    /// partial holding the most WAL is served.
    #[arg(long, value_name = "ID")]
    pub prefer_safekeeper: Option<u64>,

    /// The file PostgreSQL asks for (%f): a segment name or TLI.history.
    #[arg(value_name = "WAL_FILE")]
    pub wal_file: String,

    /// Where to write it (%p).
    #[arg(value_name = "DEST")]
    pub destination: PathBuf,
}

enum Outcome {
    Restored,
    NotFound,
}

pub fn run(args: RestoreWalArgs) -> ExitCode {
    // The cheap path first: a segment the prefetch worker already spooled.
    if serve_from_spool(&args) {
        return ExitCode::SUCCESS;
    }
    let result = runtime().and_then(|rt| rt.block_on(restore(&args)));
    match result {
        Ok(Outcome::Restored) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound) => ExitCode::from(EXIT_NOT_FOUND),
        Err(e) => {
            eprintln!(
                "safekeeper restore-wal: FATAL: cannot restore {}: {e:#}",
                args.wal_file
            );
            ExitCode::from(EXIT_FATAL)
        }
    }
}

/// Serves the segment from the prefetch spool if it is there (waiting a little for one being
/// downloaded right now), keeping the worker going. Synchronous: a hit needs no runtime.
fn serve_from_spool(args: &RestoreWalArgs) -> bool {
    let Some(WalFileName::Segment(segment)) = WalFileName::parse(&args.wal_file) else {
        return false;
    };
    let Some(spool) = open_spool(args, false) else {
        return false;
    };
    let wait = args.retry_for.min(MAX_SPOOL_WAIT);
    match spool.take(&segment, &args.destination, wait) {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            warn!("prefetch spool unusable, fetching directly: {e:#}");
            return false;
        }
    }
    info!(file = %segment, "restored from the prefetch spool");
    match std::fs::metadata(&args.destination).map(|m| u32::try_from(m.len())) {
        Ok(Ok(size)) => prefetch_after(args, &spool, &segment, size),
        _ => warn!(
            "cannot stat {}: prefetch not continued",
            args.destination.display()
        ),
    }
    true
}

async fn restore(args: &RestoreWalArgs) -> Result<Outcome> {
    let Some(name) = WalFileName::parse(&args.wal_file) else {
        warn!(file = %args.wal_file, "not a WAL segment or history file name: answering 'not found'");
        return Ok(Outcome::NotFound);
    };
    let storage = args.archive.open().await?;
    let cancel = CancellationToken::new();
    let fetched = fetch_with_retries(&*storage, args, &name, &cancel).await?;
    let Some(fetched) = fetched else {
        ensure_archive_exists(&*storage, &args.archive.cluster, &cancel).await?;
        info!(file = %args.wal_file, "not in the archive");
        if let WalFileName::Segment(segment) = &name {
            forget_timeline(args, segment);
        }
        return Ok(Outcome::NotFound);
    };
    write_file_atomic(&args.destination, fetched.data())?;
    info!(file = %args.wal_file, "restored {}", fetched.describe());
    if let WalFileName::Segment(segment) = &name {
        match &fetched {
            Fetched::Full { seg_size, .. } => {
                if let Some(spool) = open_spool(args, true) {
                    prefetch_after(args, &spool, segment, *seg_size);
                }
            }
            _ => forget_timeline(args, segment),
        }
    }
    Ok(Outcome::Restored)
}

/// Looks the file up, retrying storage failures that may pass, for at most `--retry-for` in
/// total (a hung request is abandoned at that deadline too).
async fn fetch_with_retries(
    storage: &dyn RemoteStorage,
    args: &RestoreWalArgs,
    name: &WalFileName,
    cancel: &CancellationToken,
) -> Result<Option<Fetched>> {
    let started = Instant::now();
    let give_up = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "{e}; the storage kept failing for {}: stopping recovery instead of reporting the \
             file as missing, which would end recovery early",
            humantime::format_duration(round_secs(started.elapsed()))
        )
    };
    let mut delay = Duration::from_millis(500);
    let mut last_error: Option<String> = None;
    loop {
        let opts = FetchOptions {
            seg_size: args.archive.wal_segment_size,
            prefer_safekeeper: args.prefer_safekeeper,
        };
        let remaining = args.retry_for.saturating_sub(started.elapsed());
        let attempt = fetch_wal_file(storage, &args.archive.cluster, name, opts, cancel);
        let Ok(result) = tokio::time::timeout(remaining, attempt).await else {
            let e = match &last_error {
                Some(e) => format!("no answer from the storage (last error: {e})"),
                None => "no answer from the storage".to_string(),
            };
            return Err(give_up(&e));
        };
        match result {
            Ok(found) => return Ok(found),
            Err(e @ FetchError::Storage(_)) if e.is_retryable() => {
                if started.elapsed() + delay > args.retry_for {
                    return Err(give_up(&e));
                }
                warn!("storage failure, retrying in {delay:?}: {e}");
                last_error = Some(e.to_string());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// A "not found" is only trusted when the cluster has WAL in this archive at all: an empty
/// prefix means a wrong `--remote` or `--cluster`, and answering "not found" to everything would
/// end the recovery at the base backup.
async fn ensure_archive_exists(
    storage: &dyn RemoteStorage,
    cluster: &str,
    cancel: &CancellationToken,
) -> Result<()> {
    let prefix = wal_prefix(cluster);
    let first = storage
        .list(&prefix, ListOptions::default(), cancel)
        .take(1)
        .try_collect::<Vec<_>>()
        .await?;
    if first.is_empty() {
        bail!(
            "there is no WAL at all under {prefix} in {}: wrong --remote or --cluster?",
            storage.name()
        );
    }
    Ok(())
}

/// The spool of this archive (created when `create`; else `None` when it does not exist), or
/// `None` with prefetch off or the spool unusable (a warning: prefetch is an optimization).
fn open_spool(args: &RestoreWalArgs, create: bool) -> Option<Spool> {
    if args.prefetch == 0 {
        return None;
    }
    let dir = args.spool_dir.clone().unwrap_or_else(|| {
        match args.destination.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
        .join(DEFAULT_SPOOL)
    });
    let (remote, cluster) = (&args.archive.remote, &args.archive.cluster);
    let opened = if create {
        Spool::open(&dir, remote, cluster).map(Some)
    } else {
        Spool::open_existing(&dir, remote, cluster)
    };
    match opened {
        Ok(spool) => spool,
        Err(e) => {
            warn!("prefetch disabled: {e:#}");
            None
        }
    }
}

/// After `served` (a full segment of `seg_size` bytes): record it for the worker (which drops
/// what PostgreSQL no longer needs and fetches what follows) and start a worker unless one runs.
fn prefetch_after(args: &RestoreWalArgs, spool: &Spool, served: &str, seg_size: u32) {
    if let Err(e) = spool.mark_served(served) {
        // The worker closed the spool just now (it had been idle): start afresh.
        warn!("cannot update the prefetch spool ({e:#}): opening it again");
        match Spool::open(spool.base(), &args.archive.remote, &args.archive.cluster)
            .and_then(|s| s.mark_served(served))
        {
            Ok(()) => {}
            Err(e) => return warn!("prefetch not continued: {e:#}"),
        }
    }
    if spool.worker_running() {
        return;
    }
    if let Err(e) = spawn_worker(args, spool, seg_size) {
        warn!("cannot start the prefetch worker: {e:#}");
        // Nobody would remove it.
        spool.discard();
    }
}

/// No WAL follows `segment` on its timeline (it was not found, or a partial was served).
fn forget_timeline(args: &RestoreWalArgs, segment: &str) {
    let Some(spool) = open_spool(args, false) else {
        return;
    };
    if let Err(e) = spool.forget_timeline_of(segment) {
        warn!("cannot clean the prefetch spool: {e:#}");
    }
}

/// Starts the worker detached: its own process group, no stdin, output appended to
/// `prefetch.log` in the spool (never our stdout/stderr, so nobody waits on it).
fn spawn_worker(args: &RestoreWalArgs, spool: &Spool, seg_size: u32) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the safekeeper binary")?;
    // In the archive's own directory, which the worker removes when it is done.
    let log_path = spool.dir().join("prefetch.log");
    if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 1 << 20) {
        let _ = std::fs::remove_file(&log_path);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    // Absolute, so the worker's command line names the spool wherever it runs from.
    let spool_dir = std::fs::canonicalize(spool.base())
        .with_context(|| format!("cannot resolve {}", spool.base().display()))?;
    std::process::Command::new(exe)
        .arg("restore-wal-prefetch")
        .args(args.archive.to_flags())
        .arg("--spool-dir")
        .arg(&spool_dir)
        .args(["--max-depth", &args.prefetch.to_string()])
        .args(["--segment-bytes", &seg_size.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot spawn the prefetch worker")?;
    Ok(())
}
