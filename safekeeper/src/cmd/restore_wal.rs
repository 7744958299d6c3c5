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
//! With `--prefetch N`, after a full segment is served a detached worker process
//! (`restore-wal-prefetch`, hidden) fetches the next N full segments in parallel into the spool
//! ([`crate::archive::spool`]), so sequential replay is not bound by request latency. A
//! prefetch failure never fails a restore: the foreground falls back to a normal fetch.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use control_file::names::{parse_segment_file_name, segment_file_name};
use futures::{StreamExt, TryStreamExt};
use remote_storage::{ListOptions, RemoteStorage};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive::fetch::{
    FetchError, FetchOptions, Fetched, WalFileName, fetch_full_segment, fetch_wal_file,
};
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

    /// After serving a full segment, fetch the next N full segments in the background so that
    /// PostgreSQL finds them locally (0: off). Partials are never prefetched.
    #[arg(long, default_value_t = 0, value_name = "N")]
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

/// Arguments of the hidden prefetch worker that `restore-wal --prefetch` starts.
#[derive(Args, Debug)]
pub struct PrefetchArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    #[arg(long, value_name = "DIR")]
    pub spool_dir: PathBuf,
    /// The segment just served; the worker fetches the ones after it.
    #[arg(long, value_name = "SEGMENT")]
    pub after: String,
    #[arg(long, value_name = "N")]
    pub count: usize,
    /// Size of the segment just served.
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes: u32,
}

enum Outcome {
    Restored,
    NotFound,
}

pub fn run(args: RestoreWalArgs) -> ExitCode {
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

async fn restore(args: &RestoreWalArgs) -> Result<Outcome> {
    let Some(name) = WalFileName::parse(&args.wal_file) else {
        warn!(file = %args.wal_file, "not a WAL segment or history file name: answering 'not found'");
        return Ok(Outcome::NotFound);
    };
    let spool = match (&name, args.prefetch) {
        (WalFileName::Segment(_), n) if n > 0 => open_spool(args),
        _ => None,
    };
    if let (Some(spool), WalFileName::Segment(segment)) = (&spool, &name) {
        let wait = args.retry_for.min(MAX_SPOOL_WAIT);
        match tokio::task::block_in_place(|| spool.take(segment, &args.destination, wait)) {
            Ok(true) => {
                info!(file = %segment, "restored from the prefetch spool");
                let size = std::fs::metadata(&args.destination)
                    .with_context(|| format!("cannot stat {}", args.destination.display()))?
                    .len();
                if let Ok(size) = u32::try_from(size) {
                    prefetch_after(args, spool, segment, size);
                }
                return Ok(Outcome::Restored);
            }
            Ok(false) => {}
            Err(e) => warn!("prefetch spool unusable, fetching directly: {e:#}"),
        }
    }
    let storage = args.archive.open().await?;
    let cancel = CancellationToken::new();
    let fetched = fetch_with_retries(&*storage, args, &name, &cancel).await?;
    let Some(fetched) = fetched else {
        ensure_archive_exists(&*storage, &args.archive.cluster, &cancel).await?;
        info!(file = %args.wal_file, "not in the archive");
        if let (Some(spool), WalFileName::Segment(segment)) = (&spool, &name) {
            forget_timeline(spool, segment);
        }
        return Ok(Outcome::NotFound);
    };
    write_file_atomic(&args.destination, fetched.data())?;
    info!(file = %args.wal_file, "restored {}", fetched.describe());
    if let (Some(spool), WalFileName::Segment(segment)) = (&spool, &name) {
        match &fetched {
            Fetched::Full { seg_size, .. } => prefetch_after(args, spool, segment, *seg_size),
            _ => forget_timeline(spool, segment),
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

fn open_spool(args: &RestoreWalArgs) -> Option<Spool> {
    let dir = args.spool_dir.clone().unwrap_or_else(|| {
        match args.destination.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
        .join(DEFAULT_SPOOL)
    });
    match Spool::open(&dir, &args.archive.remote, &args.archive.cluster) {
        Ok(spool) => Some(spool),
        Err(e) => {
            warn!("prefetch disabled: {e:#}");
            None
        }
    }
}

/// After `served` (a full segment of `seg_size` bytes): drop what PostgreSQL no longer needs from
/// the spool and start a worker for the next segments unless they are all there or claimed.
fn prefetch_after(args: &RestoreWalArgs, spool: &Spool, served: &str, seg_size: u32) {
    if let Err(e) = spool.mark_served(served) {
        warn!("cannot update the prefetch spool: {e:#}");
    }
    let Ok((tli, segno)) = parse_segment_file_name(served, seg_size) else {
        return;
    };
    let missing = (1..=args.prefetch as u64)
        .map(|i| segment_file_name(tli, segno + i, seg_size))
        .any(|s| !spool.has_or_claimed(&s));
    if !missing {
        return;
    }
    if let Err(e) = spawn_worker(args, spool.dir(), served, seg_size) {
        warn!("cannot start the prefetch worker: {e:#}");
    }
}

/// No WAL follows `segment` on its timeline (it was not found, or a partial was served).
fn forget_timeline(spool: &Spool, segment: &str) {
    if let Err(e) = spool.forget_timeline_of(segment) {
        warn!("cannot clean the prefetch spool: {e:#}");
    }
}

/// Starts the worker detached: its own process group, no stdin, output appended to
/// `prefetch.log` in the spool (never our stdout/stderr, so nobody waits on it).
fn spawn_worker(
    args: &RestoreWalArgs,
    spool_dir: &Path,
    served: &str,
    seg_size: u32,
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the safekeeper binary")?;
    let log_path = spool_dir.join("prefetch.log");
    if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 1 << 20) {
        let _ = std::fs::remove_file(&log_path);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    std::process::Command::new(exe)
        .arg("restore-wal-prefetch")
        .args(args.archive.to_flags())
        .arg("--spool-dir")
        .arg(spool_dir)
        .args(["--after", served])
        .args(["--count", &args.prefetch.to_string()])
        .args(["--segment-bytes", &seg_size.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot spawn the prefetch worker")?;
    Ok(())
}

/// The hidden `restore-wal-prefetch` command: fetch the full segments after `--after` into the
/// spool, in parallel, stopping at the first one that does not exist.
pub fn run_prefetch(args: PrefetchArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(prefetch(&args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("safekeeper restore-wal-prefetch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn prefetch(args: &PrefetchArgs) -> Result<()> {
    let spool = Spool::open(&args.spool_dir, &args.archive.remote, &args.archive.cluster)?;
    let (tli, segno) = parse_segment_file_name(&args.after, args.segment_bytes)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let storage = args.archive.open().await?;
    let cancel = CancellationToken::new();
    let names: Vec<String> = (1..=args.count as u64)
        .map(|i| segment_file_name(tli, segno + i, args.segment_bytes))
        .collect();
    let storage = &*storage;
    let (spool, cancel) = (&spool, &cancel);
    futures::stream::iter(names)
        .map(|name| async move {
            let Some(claim) = spool.claim(&name)? else {
                return Ok::<_, anyhow::Error>(());
            };
            let cluster = &args.archive.cluster;
            match fetch_full_segment(storage, cluster, &name, args.segment_bytes, cancel).await {
                Ok(Some(fetched)) => {
                    spool.store(&name, fetched.data(), claim)?;
                    info!(file = %name, "prefetched");
                }
                Ok(None) => info!(file = %name, "not in the archive (yet): not prefetched"),
                Err(e) => warn!(file = %name, "prefetch failed: {e}"),
            }
            Ok(())
        })
        .buffer_unordered(args.count.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
