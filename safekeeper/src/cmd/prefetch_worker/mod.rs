//! The prefetch worker behind `restore-wal` (hidden command `restore-wal-prefetch`): one
//! long-lived process per spool that keeps the full segments PostgreSQL will ask for next
//! downloaded, verified and fsynced in the spool ([`crate::archive::spool`]).
//!
//! Owns the look-ahead of one recovery: it follows the spool's `SERVED` file (which every
//! `restore-wal` call updates), keeps up to `depth` segments after it spooled or in flight, and
//! keeps its storage client (connection pool, credentials) across calls. The depth adapts
//! ([`DepthPolicy`]): it starts small and doubles, up to `--max-depth` and a byte budget,
//! whenever PostgreSQL reaches the look-ahead's front with fewer than half of it ready, i.e.
//! whenever replay consumes segments faster than the store delivers them at the current depth.
//!
//! Invariants:
//! - At most one worker per spool: the `WORKER` lock; a second one exits at once.
//! - Only full segments are spooled, each checked by `fetch_full_segment` (object format
//!   checksums, segment length) before it is written; partials, history files and anything that
//!   fails a check are never spooled (the foreground fetches those itself and reports damage).
//! - It exits, removing the spool directory, when PostgreSQL stopped asking (`--idle-exit`
//!   without a new `SERVED`) or when recovery is over (the spool sits in a data directory's
//!   `pg_wal` whose `recovery.signal` and `standby.signal` are both gone), never with a download
//!   in flight, and never losing a request that arrived meanwhile ([`Spool::close`]).
//! - Behind a segment that is not in the archive it fetches nothing until it asks again
//!   ([`RECHECK_MISSING`] later): a recovery at the end of the archive does not poll the store
//!   in a tight loop; a segment whose download failed (storage error, damaged object) is not
//!   asked for again before that either.
//! - What it spooled stays what the archive holds: every spooled segment not confirmed for
//!   [`CONFIRM_AFTER`] is confirmed with a HEAD (same size, crc32c and modification time as the
//!   object read) and dropped when the object was replaced or removed, or when it cannot be
//!   confirmed; the foreground serves only segments confirmed within
//!   [`crate::archive::spool::MAX_UNCHECKED_AGE`]. Segments left by an earlier worker (killed)
//!   are dropped at start: nobody knows which object they came from.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use clap::Args;
use control_file::names::{parse_segment_file_name, segment_file_name};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use remote_storage::{ObjectMeta, RemoteStorage};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive::fetch::{fetch_full_segment, full_segment_key};
use crate::archive::spool::{Claim, Spool};

use super::archive_args::{ArchiveArgs, runtime};

/// How often the worker looks at `SERVED` and the recovery's state.
const POLL: Duration = Duration::from_millis(20);
/// How long a segment found missing is not asked for again.
const RECHECK_MISSING: Duration = Duration::from_secs(1);
/// Depth the look-ahead starts with (or `--max-depth` when smaller).
const INITIAL_DEPTH: usize = 4;
/// Most bytes the spool may hold ahead of PostgreSQL (with 1 GiB segments: 1 segment).
const BYTE_BUDGET: u64 = 512 << 20;
/// Longest a download may take: a hung request must not keep the worker (and its spool in
/// `pg_wal`) alive after recovery; the foreground fetches what the worker gave up on.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// A spooled segment not confirmed in the archive for this long is confirmed again (well within
/// the foreground's `MAX_UNCHECKED_AGE`, so a healthy worker's segments stay servable). Replay
/// usually takes a segment within a second of its download, so this costs no request then; a
/// slow replay costs at most one HEAD per spooled segment per interval.
const CONFIRM_AFTER: Duration = Duration::from_secs(2);
/// Longest a confirmation may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments of the hidden worker that `restore-wal` starts.
#[derive(Args, Debug)]
pub struct PrefetchArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    #[arg(long, value_name = "DIR")]
    pub spool_dir: PathBuf,
    /// Most segments kept ahead of the last one served.
    #[arg(long, value_name = "N")]
    pub max_depth: usize,
    /// Segment size of the archive (of the segment served when the worker was started).
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes: u32,
    /// Exit after this long without a request.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub idle_exit: Duration,
}

/// The look-ahead depth (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DepthPolicy {
    depth: usize,
    max: usize,
}

impl DepthPolicy {
    pub(crate) fn new(max_depth: usize, segment_bytes: u32) -> DepthPolicy {
        let budget = usize::try_from(BYTE_BUDGET / u64::from(segment_bytes.max(1))).unwrap_or(1);
        let max = max_depth.min(budget).max(1);
        DepthPolicy {
            depth: INITIAL_DEPTH.min(max),
            max,
        }
    }

    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// PostgreSQL was served a new segment; `ready` of the `depth` segments after it were
    /// already spooled. Fewer than half ready: replay is catching up with the look-ahead.
    pub(crate) fn on_served(&mut self, ready: usize) {
        if ready * 2 < self.depth {
            self.depth = (self.depth * 2).min(self.max);
        }
    }
}

/// The hidden `restore-wal-prefetch` command.
pub fn run_prefetch(args: PrefetchArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(prefetch(&args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("safekeeper restore-wal-prefetch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What identifies the version of an object that was read: a replaced object differs in size,
/// crc32c or modification time, a removed one is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectVersion {
    size: u64,
    crc32c: Option<u32>,
    modified: Option<SystemTime>,
}

impl From<&ObjectMeta> for ObjectVersion {
    fn from(m: &ObjectMeta) -> Self {
        ObjectVersion {
            size: m.size,
            crc32c: m.crc32c,
            modified: m.last_modified,
        }
    }
}

/// What a download did.
#[derive(Debug)]
pub(crate) enum Download {
    /// Spooled, read from this version of the object.
    Spooled(ObjectVersion),
    /// Not in the archive.
    Missing,
    /// PostgreSQL moved past it meanwhile: not spooled.
    Passed,
}

/// A finished background job.
#[derive(Debug)]
pub(crate) enum Done {
    Downloaded(String, Result<Download>),
    /// A confirmation: what the archive holds under the segment's key now (`None`: nothing).
    Checked(String, Result<Option<ObjectVersion>>),
}

async fn prefetch(args: &PrefetchArgs) -> Result<()> {
    let spool = Spool::open(&args.spool_dir, &args.archive.remote, &args.archive.cluster)?;
    let Some(_lock) = spool.try_lock_worker()? else {
        info!("another prefetch worker serves {}", spool.dir().display());
        return Ok(());
    };
    // Left by a worker that is gone: nobody knows which objects they came from.
    spool.drop_all_segments()?;
    let storage = args.archive.open().await?;
    let cancel = CancellationToken::new();
    let mut state = Worker::new(DepthPolicy::new(args.max_depth, args.segment_bytes));
    let mut jobs = FuturesUnordered::new();
    let cluster = args.archive.cluster.clone();
    loop {
        state.follow(&spool, args.segment_bytes);
        for name in state.wanted(&spool, args.segment_bytes) {
            let Some(claim) = spool.claim(&name)? else {
                continue;
            };
            state.in_flight.insert(name.clone());
            let (storage, spool, cancel) = (Arc::clone(&storage), spool.clone(), cancel.clone());
            let (cluster, bytes) = (cluster.clone(), args.segment_bytes);
            jobs.push(tokio::spawn(async move {
                let result = tokio::time::timeout(
                    DOWNLOAD_TIMEOUT,
                    download(&*storage, spool, &cluster, &name, bytes, claim, &cancel),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {DOWNLOAD_TIMEOUT:?}")));
                Done::Downloaded(name, result)
            }));
        }
        // Not while winding down: an idle worker closes as soon as nothing is in flight.
        if state.last_request.elapsed() < args.idle_exit {
            for name in state.due_confirmations(&spool) {
                let (storage, cancel) = (Arc::clone(&storage), cancel.clone());
                let key = full_segment_key(&cluster, &name);
                jobs.push(tokio::spawn(async move {
                    let result =
                        tokio::time::timeout(CONFIRM_TIMEOUT, head(&*storage, &key, &cancel))
                            .await
                            .unwrap_or_else(|_| {
                                Err(anyhow::anyhow!("no answer within {CONFIRM_TIMEOUT:?}"))
                            });
                    Done::Checked(name, result)
                }));
            }
        }
        tokio::select! {
            Some(joined) = jobs.next(), if !jobs.is_empty() => match joined {
                Ok(done) => state.finished(done, &spool),
                Err(e) => warn!("prefetch task failed: {e}"),
            },
            _ = tokio::time::sleep(POLL) => {}
        }
        if !jobs.is_empty() {
            continue;
        }
        state.in_flight.clear();
        let idle = state.last_request.elapsed() >= args.idle_exit;
        if (idle || recovery_over(spool.base())) && spool.close(state.seen.as_deref())? {
            info!(idle, "prefetch worker done: spool removed");
            return Ok(());
        }
    }
}

/// Downloads `name` and spools it (checked, fsynced).
async fn download(
    storage: &dyn RemoteStorage,
    spool: Spool,
    cluster: &str,
    name: &str,
    bytes: u32,
    claim: Claim,
    cancel: &CancellationToken,
) -> Result<Download> {
    let Some((fetched, meta)) = fetch_full_segment(storage, cluster, name, bytes, cancel).await?
    else {
        return Ok(Download::Missing);
    };
    let segment = name.to_string();
    let stored =
        tokio::task::spawn_blocking(move || spool.store(&segment, fetched.data(), claim)).await??;
    Ok(match stored {
        true => Download::Spooled(ObjectVersion::from(&meta)),
        false => Download::Passed,
    })
}

/// What the archive holds under `key` now.
async fn head(
    storage: &dyn RemoteStorage,
    key: &str,
    cancel: &CancellationToken,
) -> Result<Option<ObjectVersion>> {
    match storage.head(key, cancel).await {
        Ok(meta) => Ok(Some(ObjectVersion::from(&meta))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A spooled segment: the object it came from, and when that was last confirmed.
#[derive(Debug)]
struct Spooled {
    version: ObjectVersion,
    confirmed: Instant,
    checking: bool,
}

/// The worker's view of the recovery.
pub(crate) struct Worker {
    policy: DepthPolicy,
    /// `SERVED` as last read.
    seen: Option<String>,
    last_request: Instant,
    in_flight: HashSet<String>,
    /// The first segment found missing, and when.
    missing: Option<(String, Instant)>,
    /// Segments whose download failed, and when.
    failed: HashMap<String, Instant>,
    /// What this worker spooled and PostgreSQL has not taken (as far as it knows).
    spooled: HashMap<String, Spooled>,
}

impl Worker {
    pub(crate) fn new(policy: DepthPolicy) -> Worker {
        Worker {
            policy,
            seen: None,
            last_request: Instant::now(),
            in_flight: HashSet::new(),
            missing: None,
            failed: HashMap::new(),
            spooled: HashMap::new(),
        }
    }

    /// Reads `SERVED`; on a new request, adapts the depth.
    fn follow(&mut self, spool: &Spool, segment_bytes: u32) {
        let served = spool.served();
        if served == self.seen {
            return;
        }
        self.last_request = Instant::now();
        if let Some(s) = &served {
            // Only once there was a look-ahead to reach (not at the worker's first request).
            if self.seen.is_some() {
                let ready = self
                    .ahead(s, segment_bytes)
                    .iter()
                    .filter(|n| spool.dir().join(n).exists())
                    .count();
                self.policy.on_served(ready);
            }
            // The spool dropped these (`Spool::mark_served`); forget them too.
            let tli = &s[..8];
            let passed = |n: &String| !n.starts_with(tli) || n.as_str() <= s.as_str();
            self.spooled.retain(|n, _| !passed(n));
            self.failed.retain(|n, _| !passed(n));
        }
        self.seen = served;
    }

    /// The `depth` segment names after `served` on its timeline.
    fn ahead(&self, served: &str, segment_bytes: u32) -> Vec<String> {
        let Ok((tli, segno)) = parse_segment_file_name(served, segment_bytes) else {
            return Vec::new();
        };
        (1..=self.policy.depth() as u64)
            .map(|i| segment_file_name(tli, segno + i, segment_bytes))
            .collect()
    }

    /// Segments of the look-ahead to download now: not spooled, claimed, in flight or recently
    /// failed, and before the first one known missing.
    fn wanted(&mut self, spool: &Spool, segment_bytes: u32) -> Vec<String> {
        let Some(served) = self.seen.clone() else {
            return Vec::new();
        };
        if self
            .missing
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= RECHECK_MISSING)
        {
            self.missing = None;
        }
        self.failed.retain(|_, at| at.elapsed() < RECHECK_MISSING);
        self.ahead(&served, segment_bytes)
            .into_iter()
            .take_while(|n| self.missing.as_ref().is_none_or(|(m, _)| n < m))
            .filter(|n| {
                !self.in_flight.contains(n)
                    && !self.failed.contains_key(n)
                    && !spool.has_or_claimed(n)
            })
            .collect()
    }

    /// Spooled segments to confirm now (marked as being checked); forgets those PostgreSQL took.
    fn due_confirmations(&mut self, spool: &Spool) -> Vec<String> {
        let mut due = Vec::new();
        self.spooled.retain(|name, s| {
            if s.checking || s.confirmed.elapsed() < CONFIRM_AFTER {
                return true;
            }
            if !spool.dir().join(name).exists() {
                return false;
            }
            s.checking = true;
            due.push(name.clone());
            true
        });
        due
    }

    fn finished(&mut self, done: Done, spool: &Spool) {
        match done {
            Done::Downloaded(name, result) => self.downloaded(name, result),
            Done::Checked(name, result) => self.checked(name, result, spool),
        }
    }

    fn downloaded(&mut self, name: String, result: Result<Download>) {
        self.in_flight.remove(&name);
        match result {
            Ok(Download::Spooled(version)) => {
                info!(file = %name, "prefetched");
                let confirmed = Instant::now();
                let checking = false;
                self.spooled.insert(
                    name,
                    Spooled {
                        version,
                        confirmed,
                        checking,
                    },
                );
            }
            Ok(Download::Passed) => info!(file = %name, "served before its download finished"),
            Ok(Download::Missing) => {
                info!(file = %name, "not in the archive (yet): not prefetched");
                if self.missing.as_ref().is_none_or(|(m, _)| name < *m) {
                    self.missing = Some((name, Instant::now()));
                }
            }
            // Never spooled; the foreground fetches it itself and reports what is wrong.
            Err(e) => {
                warn!(file = %name, "prefetch failed: {e:#}");
                self.failed.insert(name, Instant::now());
            }
        }
    }

    /// A confirmation came back: keep the segment (fresh again) only if the archive still holds
    /// the object it was read from.
    fn checked(&mut self, name: String, result: Result<Option<ObjectVersion>>, spool: &Spool) {
        let Some(entry) = self.spooled.get_mut(&name) else {
            return;
        };
        let why = match result {
            Ok(Some(now)) if now == entry.version => match spool.confirm(&name) {
                Ok(true) => {
                    entry.checking = false;
                    entry.confirmed = Instant::now();
                    return;
                }
                Ok(false) => {
                    self.spooled.remove(&name);
                    return;
                }
                Err(e) => format!("cannot mark it confirmed: {e:#}"),
            },
            Ok(Some(_)) => "the object was replaced in the archive".to_string(),
            Ok(None) => "the object was removed from the archive".to_string(),
            Err(e) => format!("cannot confirm it in the archive: {e:#}"),
        };
        warn!(file = %name, "spooled segment dropped: {why}");
        self.spooled.remove(&name);
        if let Err(e) = spool.drop_segment(&name) {
            warn!(file = %name, "cannot drop it: {e:#}");
        }
    }
}

/// Whether the spool is in the `pg_wal` of a data directory that is no longer recovering.
fn recovery_over(spool_dir: &Path) -> bool {
    let Some(pg_wal) = spool_dir.parent() else {
        return false;
    };
    let Some(data_dir) = pg_wal.parent() else {
        return false;
    };
    pg_wal.file_name().is_some_and(|n| n == "pg_wal")
        && data_dir.join("PG_VERSION").exists()
        && !data_dir.join("recovery.signal").exists()
        && !data_dir.join("standby.signal").exists()
}

#[cfg(test)]
mod tests;
