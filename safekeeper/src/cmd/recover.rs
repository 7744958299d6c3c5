//! `safekeeper recover --target-dir DIR`: write the WAL of a timeline, up to the end of its best
//! partial (or `--until-lsn`), into a directory such as the `pg_wal` of a restored base backup.
//!
//! Owns the execution of a [`plan_recovery`] plan: the segments PostgreSQL would fetch through
//! `restore-wal`, one after the other along the timeline path, fetched in parallel, each written
//! atomically (temp file, fsync, rename) under its segment name, plus the history files of the
//! path (decoded, like every object read: `crate::object_format`). A progress bar on a
//! terminal, plain log lines otherwise. Prints the end LSN reached.
//!
//! Exit status: 0 when the end of the archive (or `--until-lsn`) was reached; 1 when the WAL
//! stops at a missing segment (what was written is kept and the end LSN reached is printed) or
//! nothing could be recovered, with an `error:` line on stderr.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use control_file::Lsn;
use control_file::names::TimelineId;
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use remote_storage::RemoteStorageExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive::fetch::{FetchOptions, Fetched, WalFileName, fetch_wal_file};
use crate::archive::history::parse_history;
use crate::archive::plan::{Stop, plan_recovery};
use crate::archive::spool::write_file_atomic;
use crate::archive::{Archive, human_bytes};

use super::archive_args::{ArchiveArgs, runtime};

#[derive(Args, Debug)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,

    /// Directory to write the segments and history files into (created if missing), e.g. the
    /// pg_wal directory of a restored base backup.
    #[arg(long, value_name = "DIR")]
    pub target_dir: PathBuf,

    /// Stop after the segment holding this LSN (default: the end of the best partial).
    #[arg(long, value_name = "X/Y")]
    pub until_lsn: Option<Lsn>,

    /// Start at the segment holding this LSN (default: the oldest segment in the archive).
    #[arg(long, value_name = "X/Y")]
    pub from_lsn: Option<Lsn>,

    /// Timeline to recover (default: the newest timeline holding WAL).
    #[arg(long, value_name = "TLI")]
    pub timeline: Option<TimelineId>,

    /// Replace files that already exist in the target directory.
    #[arg(long)]
    pub overwrite: bool,

    /// When the partials of a segment from several safekeepers disagree on their common bytes,
    /// take safekeeper ID's (or a longer one that agrees with it) instead of failing.
    #[arg(long, value_name = "ID")]
    pub prefer_safekeeper: Option<u64>,

    /// Segments fetched in parallel.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
}

pub fn run(args: RecoverArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(recover(&args))) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns whether the end of the archive (or `--until-lsn`) was reached.
async fn recover(args: &RecoverArgs) -> Result<bool> {
    let cancel = CancellationToken::new();
    let storage = args.archive.open().await?;
    let cluster = &args.archive.cluster;
    let archive = Archive::load(&*storage, cluster, args.archive.wal_segment_size, &cancel).await?;
    let target = match args.timeline.or_else(|| archive.newest_timeline()) {
        Some(t) => t,
        None => bail!("no WAL for cluster {cluster} in {}", args.archive.remote),
    };
    let history = if target > 1 && archive.histories.contains_key(&target) {
        let key = crate::remote::history_key(cluster, target);
        let data = decoded(&*storage, &key, &cancel).await?;
        let text = std::str::from_utf8(&data).with_context(|| format!("{key} is not text"))?;
        parse_history(target, text).with_context(|| format!("malformed history file {key}"))?
    } else {
        if target > 1 {
            warn!("timeline {target} has no history file: recovering only its own segments");
        }
        Vec::new()
    };
    let plan = plan_recovery(&archive, target, &history, args.from_lsn, args.until_lsn);
    if plan.steps.is_empty() {
        bail!("no WAL of timeline {target} to recover in the requested range");
    }
    std::fs::create_dir_all(&args.target_dir)
        .with_context(|| format!("cannot create {}", args.target_dir.display()))?;
    let history_files: Vec<String> = plan
        .history_keys
        .iter()
        .map(|(_, k)| k.rsplit('/').next().unwrap_or(k).to_string())
        .collect();
    if !args.overwrite {
        let names = plan
            .steps
            .iter()
            .map(|s| &s.file_name)
            .chain(&history_files);
        if let Some(existing) = names.map(|n| args.target_dir.join(n)).find(|p| p.exists()) {
            bail!(
                "{} already exists (pass --overwrite to replace files in the target directory)",
                existing.display()
            );
        }
    }
    for ((_, key), name) in plan.history_keys.iter().zip(&history_files) {
        let data = decoded(&*storage, key, &cancel).await?;
        write_file_atomic(&args.target_dir.join(name), &data)?;
    }

    let progress = Progress::new(plan.steps.len() as u64);
    let seg_size = archive.seg_size;
    let (storage, cancel_ref, progress_ref) = (&*storage, &cancel, &progress);
    let ends: Vec<Lsn> = futures::stream::iter(plan.steps.iter())
        .map(|step| async move {
            let name = WalFileName::Segment(step.file_name.clone());
            let opts = FetchOptions {
                seg_size: Some(seg_size),
                prefer_safekeeper: args.prefer_safekeeper,
            };
            let fetched = fetch_wal_file(storage, cluster, &name, opts, cancel_ref)
                .await
                .with_context(|| format!("cannot fetch {}", step.file_name))?
                .with_context(|| format!("{} vanished from the archive", step.file_name))?;
            let end = match &fetched {
                Fetched::Partial { object, .. } => object.name.commit_lsn,
                _ => Lsn::from_segment(step.segno + 1, seg_size),
            };
            write_file_atomic(&args.target_dir.join(&step.file_name), fetched.data())?;
            progress_ref.segment_done(&step.file_name, fetched.data().len() as u64);
            Ok::<Lsn, anyhow::Error>(end)
        })
        .buffered(args.jobs.max(1))
        .try_collect()
        .await?;
    progress.finish();
    let end = ends.last().copied().unwrap_or(plan.end_lsn);
    let reached = match &plan.stop {
        Stop::EndOfArchive => "the end of the archive".to_string(),
        Stop::UntilLsn => "--until-lsn".to_string(),
        Stop::Gap { missing } => format!("a missing segment ({missing})"),
    };
    println!(
        "recovered timeline {target} up to {end} into {}: {} segments, {} history files; stopped at {reached}",
        args.target_dir.display(),
        plan.steps.len(),
        history_files.len()
    );
    if let Stop::Gap { missing } = &plan.stop {
        eprintln!("error: the WAL stops at {end}: segment {missing} is missing from the archive");
        return Ok(false);
    }
    Ok(true)
}

/// The decoded bytes of one object (a history file): checked by the object format, raw objects
/// as they are.
async fn decoded(
    storage: &dyn remote_storage::RemoteStorage,
    key: &str,
    cancel: &CancellationToken,
) -> Result<bytes::Bytes> {
    let object = storage.get_bytes(key, cancel).await?;
    let decoded = crate::object_format::decode(object, key).with_context(|| key.to_string())?;
    Ok(decoded.data)
}

/// A progress bar on a terminal, log lines (at most every 5 s, and at the end) otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: std::sync::Mutex<(u64, u64, Instant)>,
    started: Instant,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} segments ({per_sec}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            ProgressBar::new(total).with_style(style)
        });
        let now = Instant::now();
        Progress {
            bar,
            total,
            done: std::sync::Mutex::new((0, 0, now)),
            started: now,
        }
    }

    fn segment_done(&self, name: &str, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_message(name.to_string());
            bar.inc(1);
            return;
        }
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        done.0 += 1;
        done.1 += bytes;
        if done.2.elapsed() >= Duration::from_secs(5) || done.0 == self.total {
            done.2 = Instant::now();
            info!(
                "{}/{} segments ({}) written, last {name}",
                done.0,
                self.total,
                human_bytes(done.1)
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        info!(
            "{} segments in {secs:.1} s ({:.1} segments/s)",
            self.total,
            self.total as f64 / secs
        );
    }
}
