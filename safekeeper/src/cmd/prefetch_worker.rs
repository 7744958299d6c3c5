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
//!   in a tight loop.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use control_file::names::{parse_segment_file_name, segment_file_name};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use remote_storage::RemoteStorage;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive::fetch::fetch_full_segment;
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

/// One download's result: the segment and whether it is now spooled.
type Done = (String, Result<bool>);

async fn prefetch(args: &PrefetchArgs) -> Result<()> {
    let spool = Spool::open(&args.spool_dir, &args.archive.remote, &args.archive.cluster)?;
    let Some(_lock) = spool.try_lock_worker()? else {
        info!("another prefetch worker serves {}", spool.dir().display());
        return Ok(());
    };
    let storage = args.archive.open().await?;
    let cancel = CancellationToken::new();
    let mut state = Worker {
        policy: DepthPolicy::new(args.max_depth, args.segment_bytes),
        seen: None,
        last_request: Instant::now(),
        in_flight: HashSet::new(),
        missing: None,
    };
    let mut downloads = FuturesUnordered::new();
    loop {
        state.follow(&spool, args.segment_bytes);
        for name in state.wanted(&spool, args.segment_bytes) {
            let Some(claim) = spool.claim(&name)? else {
                continue;
            };
            state.in_flight.insert(name.clone());
            let (storage, spool, cancel) = (Arc::clone(&storage), spool.clone(), cancel.clone());
            let (cluster, bytes) = (args.archive.cluster.clone(), args.segment_bytes);
            downloads.push(tokio::spawn(async move {
                let result = tokio::time::timeout(
                    DOWNLOAD_TIMEOUT,
                    download(&*storage, spool, &cluster, &name, bytes, claim, &cancel),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {DOWNLOAD_TIMEOUT:?}")));
                (name, result)
            }));
        }
        tokio::select! {
            Some(joined) = downloads.next(), if !downloads.is_empty() => match joined {
                Ok(done) => state.finished(done),
                Err(e) => warn!("prefetch download task failed: {e}"),
            },
            _ = tokio::time::sleep(POLL) => {}
        }
        if !downloads.is_empty() {
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

/// Downloads `name` and spools it (checked, fsynced); false when it is not in the archive.
async fn download(
    storage: &dyn RemoteStorage,
    spool: Spool,
    cluster: &str,
    name: &str,
    bytes: u32,
    claim: Claim,
    cancel: &CancellationToken,
) -> Result<bool> {
    let Some(fetched) = fetch_full_segment(storage, cluster, name, bytes, cancel).await? else {
        return Ok(false);
    };
    let segment = name.to_string();
    tokio::task::spawn_blocking(move || spool.store(&segment, fetched.data(), claim)).await??;
    Ok(true)
}

/// The worker's view of the recovery.
struct Worker {
    policy: DepthPolicy,
    /// `SERVED` as last read.
    seen: Option<String>,
    last_request: Instant,
    in_flight: HashSet<String>,
    /// The first segment found missing, and when.
    missing: Option<(String, Instant)>,
}

impl Worker {
    /// Reads `SERVED`; on a new request, adapts the depth.
    fn follow(&mut self, spool: &Spool, segment_bytes: u32) {
        let served = spool.served();
        if served == self.seen {
            return;
        }
        self.last_request = Instant::now();
        if let Some(s) = &served {
            let ready = self
                .ahead(s, segment_bytes)
                .iter()
                .filter(|n| spool.dir().join(n).exists())
                .count();
            self.policy.on_served(ready);
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

    /// Segments of the look-ahead to download now: not spooled, claimed or in flight, and
    /// before the first one known missing.
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
        self.ahead(&served, segment_bytes)
            .into_iter()
            .take_while(|n| self.missing.as_ref().is_none_or(|(m, _)| n < m))
            .filter(|n| !self.in_flight.contains(n) && !spool.has_or_claimed(n))
            .collect()
    }

    fn finished(&mut self, (name, result): Done) {
        self.in_flight.remove(&name);
        match result {
            Ok(true) => info!(file = %name, "prefetched"),
            Ok(false) => {
                info!(file = %name, "not in the archive (yet): not prefetched");
                if self.missing.as_ref().is_none_or(|(m, _)| name < *m) {
                    self.missing = Some((name, Instant::now()));
                }
            }
            // Never spooled; the foreground fetches it itself and reports what is wrong.
            Err(e) => warn!(file = %name, "prefetch failed: {e:#}"),
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
mod tests {
    use super::*;

    const MIB: u32 = 1 << 20;

    #[test]
    fn depth_starts_small_and_doubles_while_replay_catches_up() {
        let mut p = DepthPolicy::new(16, 16 * MIB);
        assert_eq!(p.depth(), 4);
        p.on_served(2); // half ready: keeping up
        assert_eq!(p.depth(), 4);
        p.on_served(1);
        assert_eq!(p.depth(), 8);
        p.on_served(0);
        assert_eq!(p.depth(), 16);
        p.on_served(0);
        assert_eq!(p.depth(), 16, "bounded by --max-depth");
    }

    #[test]
    fn depth_is_bounded_by_the_byte_budget_and_at_least_one() {
        assert_eq!(DepthPolicy::new(16, 1 << 30).depth(), 1);
        let mut big = DepthPolicy::new(64, 64 * MIB);
        for _ in 0..10 {
            big.on_served(0);
        }
        assert_eq!(big.depth(), 8, "512 MiB of 64 MiB segments");
        assert_eq!(DepthPolicy::new(0, MIB).depth(), 1);
        assert_eq!(DepthPolicy::new(2, MIB).depth(), 2);
    }

    #[test]
    fn recovery_is_over_only_in_a_data_directory_without_signal_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let spool = data.join("pg_wal").join(".safekeeper-prefetch");
        std::fs::create_dir_all(&spool).expect("mkdir");
        assert!(
            !recovery_over(&spool),
            "no PG_VERSION: not a data directory"
        );
        std::fs::write(data.join("PG_VERSION"), "17\n").expect("w");
        std::fs::write(data.join("recovery.signal"), "").expect("w");
        assert!(!recovery_over(&spool));
        std::fs::remove_file(data.join("recovery.signal")).expect("rm");
        std::fs::write(data.join("standby.signal"), "").expect("w");
        assert!(!recovery_over(&spool));
        std::fs::remove_file(data.join("standby.signal")).expect("rm");
        assert!(recovery_over(&spool));
        assert!(!recovery_over(&dir.path().join("elsewhere").join("spool")));
    }
}
