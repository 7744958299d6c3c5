//! `safekeeper backup` and `safekeeper restore`: the command lines and output of base backups and
//! point-in-time restore. The work is `crate::backup`'s.
//!
//! Exit status: 0 done; 1 failed (one line on stderr saying why, naming the object or file when
//! one is at fault).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{ArgGroup, Args};
use std::io::IsTerminal;
use tokio_util::sync::CancellationToken;

use super::archive_args::{ArchiveArgs, runtime};
use crate::archive::human_bytes;
use crate::backup::restore::{RestoreOptions, Target, restore};
use crate::backup::take::{TakeOptions, take_backup};
use crate::object_format::Compression;
use crate::pg::{ConnInfo, format_lsn, parse_lsn};

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,

    /// Connection string of the primary (a user with the REPLICATION attribute).
    #[arg(long, env = "SAFEKEEPER_PRIMARY", value_name = "CONNSTR")]
    pub primary: String,

    /// Decoded bytes per stored chunk of the tar stream (e.g. 16MiB); also the memory bound per
    /// chunk in flight.
    #[arg(long, default_value = "16MiB", value_name = "SIZE", value_parser = parse_chunk_size)]
    pub chunk_size: usize,

    /// Compression of the chunks: zstd, zstd:LEVEL or none.
    #[arg(long, default_value = "zstd", value_name = "CODEC", value_parser = Compression::parse)]
    pub compression: Compression,

    /// Let the primary spread its checkpoint (default: an immediate checkpoint).
    #[arg(long)]
    pub spread_checkpoint: bool,

    /// How long to wait after the backup for the WAL archive to reach its end (the backup is
    /// restorable only then; a safekeeper must be following the cluster).
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub archive_timeout: Duration,

    /// Retention after a successful backup: keep the newest N backups and delete older ones and
    /// the WAL only they need (as `remote retention --keep-last N --delete`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_last: Option<u64>,

    /// Retention after a successful backup: keep the backups that ended within this long (as
    /// `remote retention --keep-within D --delete`; with --keep-last, either keeps a backup).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub keep_within: Option<Duration>,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("target").required(true).args(["time", "lsn", "xid", "latest"])))]
pub struct RestoreArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,

    /// The new data directory (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub target_dir: PathBuf,

    /// Recover to this time (RFC 3339, e.g. 2026-12-02T15:41:28Z; without a zone: UTC).
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,

    /// Recover to this LSN (X/Y).
    #[arg(long, value_name = "LSN")]
    pub lsn: Option<String>,

    /// Recover up to and including the commit of this transaction.
    #[arg(long, value_name = "XID")]
    pub xid: Option<u64>,

    /// Recover every commit the archive holds.
    #[arg(long)]
    pub latest: bool,

    /// Chunks fetched in parallel.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,

    /// Directory of PostgreSQL's binaries, for pg_verifybackup (default:
    /// /usr/lib/postgresql/<major>/bin when it exists).
    #[arg(long, value_name = "DIR")]
    pub pg_bindir: Option<PathBuf>,
}

fn parse_chunk_size(text: &str) -> Result<usize, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: usize = t[..split]
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 16MiB"))?;
    let mult = match t[split..].trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("{text:?}: unknown size unit {u:?}")),
    };
    n.checked_mul(mult)
        .filter(|s| (64 << 10..=1 << 30).contains(s))
        .ok_or_else(|| format!("{text:?}: a chunk size is from 64KiB to 1GiB"))
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

pub fn run_backup(args: BackupArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(backup(&args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn backup(args: &BackupArgs) -> Result<()> {
    let primary = ConnInfo::parse(&args.primary).context("invalid --primary")?;
    let storage = args.archive.open().await?;
    let opts = TakeOptions {
        cluster: args.archive.cluster.clone(),
        primary,
        chunk_size: args.chunk_size,
        compression: args.compression,
        fast_checkpoint: !args.spread_checkpoint,
        archive_timeout: args.archive_timeout,
        wal_segment_size: args.archive.wal_segment_size,
        progress_bar: std::io::stderr().is_terminal(),
    };
    let started = std::time::Instant::now();
    let cancel = CancellationToken::new();
    let b = take_backup(storage.clone(), &opts, &cancel).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "backup {} complete: LSN {} to {} on timeline {}, {} in {} chunks ({} stored) in {secs:.1}s",
        b.id,
        format_lsn(b.start_lsn),
        format_lsn(b.end_lsn),
        b.timeline,
        human_bytes(b.tar_bytes()),
        b.archives.iter().map(|a| a.chunks.len()).sum::<usize>(),
        human_bytes(b.stored_bytes()),
    );
    if args.keep_last.is_some() || args.keep_within.is_some() {
        use crate::backup::retention::{Policy, finish_pending, plan, run_plan};
        let policy = Policy {
            keep_last: args.keep_last.map(|n| n as usize),
            keep_within: args.keep_within,
            incomplete_after: Duration::from_secs(24 * 3600),
        };
        let cluster = &args.archive.cluster;
        finish_pending(&*storage, cluster, &cancel).await?;
        let p = plan(
            &*storage,
            cluster,
            args.archive.wal_segment_size,
            &policy,
            &cancel,
        )
        .await?;
        run_plan(&*storage, cluster, &p, &cancel).await?;
        println!(
            "retention: deleted {} backups and {} WAL objects ({}), kept {}",
            p.backups.len(),
            p.wal_objects,
            human_bytes(p.bytes),
            p.kept.len()
        );
    }
    Ok(())
}

pub fn run_restore(args: RestoreArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(restore_cmd(&args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn target(args: &RestoreArgs) -> Result<Target> {
    if let Some(t) = &args.time {
        let parsed = humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
            .map_err(|e| anyhow!("--time {t:?}: {e} (expected e.g. 2026-12-02T15:41:28Z)"))?;
        return Ok(Target::Time(
            crate::backup::unix_secs(parsed),
            crate::backup::rfc3339(parsed),
        ));
    }
    if let Some(l) = &args.lsn {
        return Ok(Target::Lsn(
            parse_lsn(l).map_err(|e| anyhow!("--lsn {l:?}: {e}"))?,
        ));
    }
    if let Some(x) = args.xid {
        return Ok(Target::Xid(x));
    }
    Ok(Target::Latest)
}

async fn restore_cmd(args: &RestoreArgs) -> Result<()> {
    let target = target(args)?;
    let storage = args.archive.open().await?;
    let opts = RestoreOptions {
        cluster: args.archive.cluster.clone(),
        wal_segment_size: args.archive.wal_segment_size,
        target_dir: args.target_dir.clone(),
        target,
        jobs: args.jobs,
        archive_flags: args.archive.to_flags(),
        pg_bindir: args.pg_bindir.clone(),
    };
    let started = std::time::Instant::now();
    let r = restore(storage, &opts, &CancellationToken::new()).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "restored backup {} (LSN {} to {}, {}) into {} in {secs:.1}s; verified {} files ({} by checksum) against {}",
        r.backup.id,
        format_lsn(r.backup.start_lsn),
        format_lsn(r.backup.end_lsn),
        human_bytes(r.backup.tar_bytes()),
        args.target_dir.display(),
        r.files,
        r.checksummed,
        r.verifier,
    );
    println!(
        "start it with: pg_ctl -D {} start   (as the owner of the directory; it replays the archive, then promotes)",
        args.target_dir.display()
    );
    Ok(())
}
