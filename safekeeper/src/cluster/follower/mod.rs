//! One followed cluster: its task connects to the primary, runs replication sessions and
//! reconnects with backoff until shutdown or a permanent error.
//!
//! Owns (single owner, no sharing): the cluster's [`WalStore`] and the `watch` sender of its
//! [`ClusterStatus`]. The control file belongs to the cluster's manager task (`cluster::manager`); the
//! follower changes it only through a [`ControlClient`] request that returns once it is durable.
//!
//! Threading: each cluster's follower runs on its own OS thread with a current-thread runtime
//! ([`spawn_follower_thread`]). Its disk I/O (WAL writes, fdatasync, control-file saves) is done
//! inline on that thread: it is the critical path of every synchronous commit, a hand-off to
//! another thread costs a wake-up each way, and a slow disk or a stuck cluster then blocks only
//! its own thread, never another cluster's.
//!
//! Invariants:
//! - The system identifier is pinned in the control file, which is durably created before the
//!   first WAL byte is written; a server with another identifier is refused before anything is
//!   written locally or on the server (no slot is created there).
//! - Streaming resumes exactly at the durable local end of WAL (see `wal::store`); after a local
//!   I/O error the store is reopened from disk, never trusted from memory.
//! - Errors a retry may cure (network, server restarting) back off and retry; errors it cannot
//!   (another system identifier, bad configuration, damaged local WAL) stop this cluster only, and
//!   are reported in its status. A full disk while streaming does not end the session at all
//!   (`ingest.rs`); the store frees uploaded segments itself, only those below the durable
//!   `backup_lsn` ([`Follower::space_policy`], `wal::space`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use control_file::{ClusterState, Lsn};
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use self::ingest::SessionEnd;
use crate::cluster::config::ClusterConfig;
use crate::cluster::config::IngestOptions;
use crate::cluster::control::ControlClient;
use crate::cluster::status::{ClusterStatus, ConnectionState};
use crate::hints::with_hint;
use crate::pg::{ConnInfo, IdentifySystem, PgError, ReplicationConnection};
use crate::wal::space::{Reserve, SpacePolicy, Statvfs, capacity_warning, statvfs};
use crate::wal::store::{WalIdentity, WalStore};
use crate::wal::stream_check::{StreamCheck, WalRefused};

/// File name of a cluster's control file inside its directory.
pub(crate) const CONTROL_FILE_NAME: &str = "safekeeper.control";

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Everything a cluster task needs from the service configuration.
#[derive(Clone, Debug)]
pub(crate) struct ClusterSettings {
    pub sk_id: u64,
    pub cluster: ClusterConfig,
    pub cluster_dir: PathBuf,
    pub ingest: IngestOptions,
    /// `--local-retention`, for the start-up check of the data directory's size.
    pub local_retention: u64,
}

/// An error classified for the retry decision.
#[derive(Debug)]
enum SessionError {
    /// Retrying may help.
    Transient(anyhow::Error),
    /// Retrying cannot help; the cluster stops.
    Permanent(anyhow::Error),
}

impl From<anyhow::Error> for SessionError {
    /// Errors from the PostgreSQL client are classified by their own rules; anything else
    /// (local I/O included) is worth a retry after the store has been reopened.
    fn from(e: anyhow::Error) -> Self {
        if e.downcast_ref::<WalRefused>().is_some() {
            return SessionError::Permanent(e);
        }
        match e.downcast_ref::<PgError>() {
            Some(pg) if !pg.is_transient() => SessionError::Permanent(e),
            _ => SessionError::Transient(e),
        }
    }
}

impl From<PgError> for SessionError {
    fn from(e: PgError) -> Self {
        SessionError::from(anyhow::Error::new(e))
    }
}

/// Runs the cluster until `cancel` fires (Ok) or a permanent error (Err).
pub(crate) async fn run_follower(
    settings: ClusterSettings,
    control: ControlClient,
    status: watch::Sender<ClusterStatus>,
    cancel: CancellationToken,
) -> Result<()> {
    let span = info_span!("cluster", cluster = %settings.cluster.name);
    async move {
        let result = follow(&settings, control, &status, &cancel).await;
        match &result {
            Ok(()) => {
                status.send_modify(|s| s.connection = ConnectionState::Stopped);
                info!("stopped");
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "cluster stopped after a permanent error");
                status.send_modify(|s| {
                    s.connection = ConnectionState::Failed;
                    s.last_error = Some(format!("{e:#}"));
                });
            }
        }
        result
    }
    .instrument(span)
    .await
}

pub(crate) mod ingest;
mod switch;

pub(crate) struct Follower<'a> {
    settings: &'a ClusterSettings,
    conninfo: ConnInfo,
    control: ControlClient,
    wal: Option<WalStore>,
    /// Highest flush LSN reported durable in this process; survives store reopenings.
    durable: Lsn,
    /// Whether the data directory's size was checked against the segment size (once per start).
    capacity_checked: bool,
}

async fn follow(
    settings: &ClusterSettings,
    control: ControlClient,
    status: &watch::Sender<ClusterStatus>,
    cancel: &CancellationToken,
) -> Result<()> {
    std::fs::create_dir_all(&settings.cluster_dir).with_context(|| {
        format!(
            "cannot create the cluster directory {}",
            settings.cluster_dir.display()
        )
    })?;
    let mut conninfo = ConnInfo::parse(&settings.cluster.primary)
        .with_context(|| format!("invalid --primary for cluster {}", settings.cluster.name))?;
    conninfo.application_name = Some(settings.cluster.application_name.clone());
    if conninfo.hosts.len() > 1 && !settings.cluster.primary.contains("target_session_attrs") {
        conninfo.target_session_attrs = crate::pg::TargetSessionAttrs::ReadWrite;
    }
    let snapshot = control.snapshot();
    let mut follower = Follower {
        settings,
        conninfo,
        durable: snapshot.as_ref().map(|c| c.flush_lsn).unwrap_or_default(),
        control,
        wal: None,
        capacity_checked: false,
    };
    if let Some(st) = &snapshot {
        status.send_modify(|s| {
            s.system_identifier = Some(st.system_identifier);
            s.timeline = Some(st.timeline);
            s.flush_lsn = st.flush_lsn;
            s.commit_lsn = st.commit_lsn;
            s.received_lsn = st.flush_lsn;
        });
        // Check the local WAL now, so damage is reported even while the primary is down.
        let local_end = follower.open_wal()?.flushed_lsn();
        publish_checked_local_end(status, local_end);
    }
    let mut backoff = BACKOFF_MIN;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        status.send_modify(|s| s.connection = ConnectionState::Connecting);
        match follower.session(status, cancel).await {
            Ok(SessionEnd::Cancelled) => break,
            // A session follows timeline switches itself; should one end here anyway, the next
            // session starts again from what is durable.
            Ok(SessionEnd::EndOfTimeline { .. }) => continue,
            Err(SessionError::Permanent(e)) => {
                let line = with_hint(&e);
                let removed = e.chain().any(
                    |c| matches!(c.downcast_ref::<PgError>(), Some(p) if p.code() == Some("58P01")),
                );
                if removed {
                    // WAL we need next is gone upstream: a gap, reported as one, never skipped.
                    warn!(gap = %line, "upstream WAL needed to continue was removed");
                    status.send_modify(|s| {
                        s.last_gap = Some(line.clone());
                        s.gaps += 1;
                    });
                }
                return Err(anyhow!(line));
            }
            Err(SessionError::Transient(e)) => {
                // Whatever happened, the next session starts from what is on disk.
                if let Some(wal) = follower.wal.take() {
                    follower.durable = follower.durable.max(wal.flushed_lsn());
                }
                if status.borrow().connection == ConnectionState::Streaming {
                    backoff = BACKOFF_MIN;
                }
                let delay = jitter(backoff);
                let line = with_hint(&e);
                warn!(error = %line, retry_in_ms = delay.as_millis() as u64,
                      "replication session failed; retrying");
                status.send_modify(|s| {
                    s.connection = ConnectionState::Retrying;
                    s.last_error = Some(line);
                    s.reconnects += 1;
                });
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
    }
    // The final LSNs are in the status channel; the manager records them when this ends.
    Ok(())
}

impl Follower<'_> {
    fn open_wal(&mut self) -> Result<&mut WalStore> {
        if self.wal.is_none() {
            let st = self
                .control
                .snapshot()
                .context("internal error: WAL opened before the control file")?;
            let recorded = st.flush_lsn.max(self.durable);
            let floor = st
                .term_history
                .last()
                .map(|t| t.start_lsn)
                .unwrap_or_default();
            let store = WalStore::open_from(
                &self.settings.cluster_dir.join("wal"),
                WalIdentity {
                    system_identifier: st.system_identifier,
                    timeline: st.timeline,
                    seg_size: st.wal_segment_size,
                    page_magic: recorded_magic(&st),
                },
                recorded,
                floor,
            )?
            .with_space(self.space_policy(st.timeline));
            if !std::mem::replace(&mut self.capacity_checked, true) {
                warn_if_disk_too_small(
                    &self.settings.cluster_dir,
                    st.wal_segment_size,
                    self.settings.local_retention,
                );
            }
            self.wal = Some(store);
        }
        self.wal
            .as_mut()
            .context("internal error: WAL store missing")
    }

    /// How the store of `timeline` makes room for a new segment: it may free its completed
    /// segments below the `backup_lsn` of the durable control file (only while that file is on
    /// the same timeline), and keeps the reserve's room free while the reserve is released.
    pub(crate) fn space_policy(&self, timeline: u32) -> SpacePolicy {
        let control = self.control.clone();
        SpacePolicy {
            probe: Arc::new(Statvfs),
            backup_lsn: Arc::new(move || {
                control
                    .snapshot()
                    .filter(|s| s.timeline == timeline)
                    .map(|s| s.backup_lsn)
            }),
            reserve: Some(
                Reserve::new(&self.settings.cluster_dir)
                    .path()
                    .to_path_buf(),
            ),
            spare: true,
        }
    }

    /// Connects like libpq: hosts in order; with several hosts and no explicit
    /// `target_session_attrs`, only to one that is not in recovery (the primary), so that after a
    /// failover the follower finds the promoted server by itself.
    async fn connect(&self) -> Result<ReplicationConnection, SessionError> {
        let (conn, index) = ReplicationConnection::connect_any(&self.conninfo).await?;
        if self.conninfo.hosts.len() > 1 {
            let (host, port) = &self.conninfo.hosts[index];
            info!(host = %host, port, "connected");
        }
        Ok(conn)
    }

    /// One connection: handshake, pinning checks, slot, then streaming until it ends.
    async fn session(
        &mut self,
        status: &watch::Sender<ClusterStatus>,
        cancel: &CancellationToken,
    ) -> Result<SessionEnd, SessionError> {
        let mut conn = tokio::select! {
            _ = cancel.cancelled() => return Ok(SessionEnd::Cancelled),
            c = self.connect() => c?,
        };
        let (ident, server_major) = self.pin(&mut conn).await?;
        let slot = self.settings.cluster.slot.clone();
        if conn.create_physical_slot_if_missing(&slot).await? {
            info!(slot = %slot, "created physical replication slot");
        }
        self.stream(conn, &ident, server_major, &slot, status, cancel)
            .await
    }

    /// Checks the server against the pinned identity in the control file (system identifier,
    /// segment size, timeline not behind), or, for a new cluster, pins it: the control file is
    /// durably created before anything else happens. Returns the identity and the server's
    /// PostgreSQL major version.
    async fn pin(
        &mut self,
        conn: &mut ReplicationConnection,
    ) -> Result<(IdentifySystem, u32), SessionError> {
        let ident = conn.identify_system().await?;
        let seg_size = conn.wal_segment_size().await?;
        let pg_version = conn.server_version_num().await? / 10000;
        let cluster_name = &self.settings.cluster.name;
        match self.control.snapshot() {
            Some(st) => {
                if st.system_identifier != ident.system_identifier {
                    return Err(SessionError::Permanent(anyhow!(
                        "the primary has system identifier {} but cluster {cluster_name:?} is \
                         pinned to {} (control file {}): refusing to follow a different \
                         PostgreSQL cluster; use another --cluster name or data directory",
                        ident.system_identifier,
                        st.system_identifier,
                        self.settings.cluster_dir.join(CONTROL_FILE_NAME).display()
                    )));
                }
                if st.wal_segment_size != seg_size {
                    return Err(SessionError::Permanent(anyhow!(
                        "the primary's wal_segment_size is {seg_size} but the control file says {}",
                        st.wal_segment_size
                    )));
                }
                if ident.timeline < st.timeline {
                    return Err(SessionError::Transient(anyhow!(
                        "the server is on timeline {} but this safekeeper already follows \
                         timeline {}: is it an old primary?",
                        ident.timeline,
                        st.timeline
                    )));
                }
            }
            None => {
                let start = Lsn(ident.xlogpos).segment_start(seg_size);
                let state = ClusterState::new(
                    self.settings.sk_id,
                    cluster_name,
                    ident.system_identifier,
                    seg_size,
                    pg_version,
                    ident.timeline,
                    start,
                );
                self.control.create(state).await?;
                info!(system_identifier = ident.system_identifier, timeline = ident.timeline,
                      start_lsn = %start, "following a new cluster");
            }
        }
        Ok((ident, pg_version))
    }

    /// Streams from the durable local end of WAL, across timeline switches and past WAL the
    /// server removed (reported as a gap), until cancelled or an error.
    async fn stream(
        &mut self,
        mut conn: ReplicationConnection,
        ident: &IdentifySystem,
        server_major: u32,
        slot: &str,
        status: &watch::Sender<ClusterStatus>,
        cancel: &CancellationToken,
    ) -> Result<SessionEnd, SessionError> {
        let options = self.settings.ingest;
        let mut server_timeline = ident.timeline;
        loop {
            self.follow_fork(&mut conn, server_timeline, status).await?;
            let wal = self.open_wal()?;
            let resume = wal.flush()?;
            let timeline = wal.identity().timeline;
            let started = conn.start_replication(Some(slot), resume.0, timeline).await;
            let mut stream = match started {
                Ok(stream) => stream,
                Err(e) if e.code() == Some("58P01") => {
                    conn = self.connect().await?;
                    self.follow_after_removed_wal(
                        &mut conn,
                        &e.to_string(),
                        &mut server_timeline,
                        status,
                    )
                    .await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            info!(start_lsn = %resume, timeline, slot = %slot, "streaming");
            status.send_modify(|s| {
                s.connection = ConnectionState::Streaming;
                s.system_identifier = Some(ident.system_identifier);
                s.timeline = Some(timeline);
                s.last_error = None;
            });
            let wal = self
                .wal
                .as_mut()
                .context("internal error: WAL store missing")?;
            let check = StreamCheck::new(
                wal.identity().seg_size,
                ident.system_identifier,
                self.control.snapshot().and_then(|st| recorded_magic(&st)),
                server_major,
            );
            let received = ingest::receive_wal(&mut stream, wal, status, check, options, cancel);
            let end = match received.await {
                Ok(end) => end,
                // The server reports removed WAL once it tries to read it, inside the stream.
                Err(e) if removed_wal(&e) => {
                    drop(stream);
                    conn = self.connect().await?;
                    self.follow_after_removed_wal(
                        &mut conn,
                        &format!("{e:#}"),
                        &mut server_timeline,
                        status,
                    )
                    .await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            self.durable = self.durable.max(wal.flushed_lsn());
            match end {
                SessionEnd::Cancelled => return Ok(SessionEnd::Cancelled),
                SessionEnd::EndOfTimeline {
                    next_timeline,
                    start,
                } => {
                    conn = stream.into_connection().await?;
                    self.switch_timeline(&mut conn, next_timeline, start, status)
                        .await?;
                    server_timeline = server_timeline.max(next_timeline);
                }
            }
        }
    }
}

/// Runs [`run_follower`] on a dedicated thread with its own current-thread runtime; the returned
/// receiver yields the cluster's result when the thread ends.
pub(crate) fn spawn_follower_thread(
    settings: ClusterSettings,
    control: ControlClient,
    status: watch::Sender<ClusterStatus>,
    cancel: CancellationToken,
) -> Result<tokio::sync::oneshot::Receiver<Result<()>>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let name = format!("sk-{}", settings.cluster.name);
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the cluster's runtime")
                .and_then(|rt| rt.block_on(run_follower(settings, control, status, cancel)));
            // The receiver may be gone during shutdown; nothing to report to then.
            let _ = done_tx.send(result);
        })
        .with_context(|| format!("cannot start thread {name}"))?;
    Ok(done_rx)
}

/// True when `e` is the server saying the WAL requested was already removed (SQLSTATE 58P01).
fn removed_wal(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref::<PgError>(), Some(p) if p.code() == Some("58P01")))
}

/// Warns once at start when the data directory's filesystem cannot hold two segments plus the
/// space reserve (ingest would stall at the next segment switch), or not the retention on top.
fn warn_if_disk_too_small(dir: &Path, seg_size: u32, local_retention: u64) {
    match statvfs(dir) {
        Ok(fs) => {
            if let Some(line) = capacity_warning(fs.total, seg_size.into(), local_retention) {
                warn!(dir = %dir.display(), "{line}");
            }
        }
        Err(e) => warn!(dir = %dir.display(), error = %e, "cannot read the filesystem size"),
    }
}

/// The page magic in a control file (0 there: not learned yet).
fn recorded_magic(st: &ClusterState) -> Option<u16> {
    (st.wal_page_magic != 0).then_some(st.wal_page_magic)
}

/// Full jitter in [d/2, d].
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::thread_rng().r#gen::<f64>())
}

/// The previous process may have acknowledged every byte it fsynced, and the recorded LSNs lag
/// what it did: publish the local end checked on disk, so the manager uploads from there and
/// never from the recorded (older) position (see `cluster::manager`).
fn publish_checked_local_end(status: &watch::Sender<ClusterStatus>, local_end: Lsn) {
    status.send_modify(|s| {
        s.flush_lsn = s.flush_lsn.max(local_end);
        s.commit_lsn = s.commit_lsn.max(local_end);
        s.received_lsn = s.received_lsn.max(local_end);
        s.local_end_checked = true;
    });
}
