//! The per-cluster manager task: owns the control file and all background work of one cluster —
//! full-segment uploads, partial uploads, history uploads, GC of superseded objects, local WAL
//! removal — and answers the follower's and the admin API's requests.
//!
//! It runs on the main runtime, apart from the follower's thread, so receiving WAL never waits
//! for an upload: the follower only publishes its LSNs on a `watch` channel.
//!
//! This file keeps the task loop, the requests, the published state and the shutdown sequence;
//! each kind of work lives in its own file with its state and its start and finish:
//! [`full`] (full segments, `backup_lsn`), [`partial`] (the partial protocol), [`history`]
//! (timeline history files), [`gc`] (deleting superseded objects), [`audit`] (listings that
//! find what the control file misses), [`local`] (local WAL removal). The decisions about
//! partial versions are pure functions in [`bookkeeping`].
//! Background work runs as tasks of one `JoinSet`; [`Manager::on_task_done`] only dispatches each
//! completion to its kind's `finish_*`.
//!
//! Invariants, and the file that keeps each:
//! - The control file lists every remote object this safekeeper may have created, also while
//!   a PUT, a retry or an abandoned request may still land. Partial and history objects are
//!   persisted `InProgress` *before* their PUT (`partial.rs`, `history.rs`). A full segment's
//!   object is a function of the WAL; before one is uploaded the recorded `flush_lsn` is
//!   advanced past it, so every full segment that may exist remotely is in the recorded ranges
//!   or in `[backup_lsn, flush_lsn)` of the current timeline (`full.rs`). Objects that show up
//!   anyway are found by audits and listed again (`audit.rs`).
//! - The archive's end never moves back, across restarts and term changes, and no partial is
//!   uploaded below what the archive holds: the rules are the pure functions of
//!   `bookkeeping.rs` (checked in every interleaving by its model test); partial uploads wait
//!   for the follower's checked local WAL end and for the first audit (`partial.rs`).
//! - `backup_lsn` only advances over segments whose upload finished, in order (or that lie in a
//!   reported gap below the current term's start and exist nowhere) (`full.rs`).
//! - A partial becomes deletable only when superseded by a higher version of the same segment
//!   and timeline that is `Uploaded`, or by that segment's full object. The final partial of an
//!   ended timeline and the last partial before a gap are the only copies of their WAL and are
//!   never superseded (`bookkeeping.rs`).
//! - A timeline's WAL is uploaded only after its history file (`history.rs`, checked by
//!   `full.rs` and `partial.rs`).
//! - GC never deletes a key a request may still write (`RequestLedger`), and entries leave the
//!   control file only after the delete succeeded, so a crash anywhere leaves a superset of what
//!   exists remotely (`gc.rs`).
//! - A local segment is removed only when it is below `backup_lsn` and outside the newest
//!   `local_retention` bytes, and never the newest completed segment (`local.rs`).
//! - The LSNs the manager works from never go back within a timeline; they restart only when the
//!   timeline changes (a newer one in the follower's status, or a switch recorded in the control
//!   file), and uploads counted for the old timeline are then forgotten (this file: `Progress`,
//!   `on_progress`, `on_state_changed`).

mod audit;
mod bookkeeping;
pub(crate) mod control_store;
mod full;
mod gc;
mod history;
mod local;
mod offloader;
mod pacing;
mod partial;
mod requests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use control_file::names::{PartialName, TimelineId};
use control_file::{ClusterState, Lsn};
use remote_storage::RemoteStorage;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::config::OffloadSettings;
use crate::cluster::control::ControlRequest;
use crate::cluster::manager::audit::{Audits, LATE_REQUEST_GRACE, SegmentId};
use crate::cluster::manager::bookkeeping::RequestLedger;
use crate::cluster::manager::control_store::ControlStore;
use crate::cluster::manager::full::FullUploads;
use crate::cluster::manager::gc::Gc;
use crate::cluster::manager::history::HistoryUploads;
use crate::cluster::manager::offloader::{Offloader, Uploaded};
use crate::cluster::manager::pacing::{
    PERSIST_INTERVAL, PROGRESS_SAMPLE, QUIET_PERSIST_INTERVAL, progress_changed,
};
use crate::cluster::manager::partial::PartialUploads;
use crate::cluster::status::{ClusterStatus, OffloadStatus};

const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Bound on the final partial upload at shutdown.
const FINAL_UPLOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// Requests from the admin API.
pub(crate) enum ManagerCommand {
    /// Upload the partial segment now; answers with its object name (None: nothing to upload).
    UploadPartialNow(oneshot::Sender<Result<Option<String>>>),
    /// Run GC now; answers with the deleted object names.
    GcNow(oneshot::Sender<Result<Vec<String>>>),
    /// Start a new term at the current flush LSN; answers with it.
    TermBump(oneshot::Sender<Result<u64>>),
}

/// Everything the manager is wired to.
pub(crate) struct ManagerIo {
    pub requests: mpsc::Receiver<ControlRequest>,
    pub commands: mpsc::Receiver<ManagerCommand>,
    pub progress: watch::Receiver<ClusterStatus>,
    pub state_tx: watch::Sender<Option<ClusterState>>,
    pub offload_tx: watch::Sender<OffloadStatus>,
}

/// The result of one background task, handed to its kind's `finish_*`.
enum TaskDone {
    Full {
        timeline: TimelineId,
        segno: u64,
        result: Result<Uploaded>,
    },
    Partial {
        name: PartialName,
        /// Bytes sent.
        result: Result<u64>,
    },
    History {
        timeline: TimelineId,
        result: Result<Uploaded>,
    },
    Gc {
        names: Vec<String>,
        result: Result<()>,
    },
    Audit {
        segment: SegmentId,
        result: Result<Vec<(PartialName, u64)>>,
    },
}

/// What the manager was started with; never changes.
struct Wiring {
    /// Upload parallelism, partial interval, local retention (from the command line).
    settings: OffloadSettings,
    /// The process's storage, shared by every cluster.
    storage: Arc<dyn RemoteStorage>,
    /// The cluster's name: the prefix of its objects.
    cluster: String,
    /// This safekeeper's id, in the names of its partial objects.
    sk_id: u64,
    /// The cluster's local WAL directory; the control file is its sibling.
    wal_dir: PathBuf,
}

/// The follower's LSNs as the manager works from them (see [`Manager::on_progress`]).
struct Progress {
    /// Local WAL end: raised from the follower's status, reset at a timeline switch.
    flush_lsn: Lsn,
    /// Acknowledged end: raised from the follower's status, reset at a timeline switch.
    commit_lsn: Lsn,
    /// Timeline of the two LSNs; set from the follower's status or a recorded timeline switch.
    timeline: Option<TimelineId>,
    /// The follower published the local WAL end it checked in this process: until then the LSNs
    /// are the control file's recorded ones, which lag, and no partial is uploaded from them.
    live: bool,
    /// When `persist_lsns` last logged a failure (it logs at most once a minute).
    persist_warned: Option<Instant>,
    /// When a change of the follower's status was last sampled (see `Manager::quiet`).
    changed_at: Instant,
}

/// Back-off after a failure; no work is scheduled before `at`.
struct Retry {
    /// When scheduling may resume (None: now); set by `note_failure`, cleared by the task loop.
    at: Option<Instant>,
    /// The next back-off: doubled by `note_failure` up to `RETRY_MAX`, reset by `note_success`.
    delay: Duration,
}

/// One cluster's manager: the wiring, the control file, and one state struct per kind of work,
/// each defined in its kind's file (its field docs say what changes each field).
pub(crate) struct Manager {
    /// What it was started with (never changes).
    wiring: Wiring,
    /// Its channels: requests in, state and offload status out.
    io: ManagerIo,
    /// The cluster's control file: None until the follower first connects and creates it.
    control: Option<ControlStore>,
    /// How uploads reach the storage: rebuilt when the control file's segment size changes.
    offloader: Option<Offloader>,
    /// Every running upload and delete; each completion goes through [`Manager::on_task_done`].
    tasks: JoinSet<TaskDone>,
    /// Cancels storage requests at the very end of shutdown.
    storage_cancel: CancellationToken,
    /// The follower's LSNs as last taken in (this file).
    progress: Progress,
    /// Back-off after a failure of any kind of work (this file).
    retry: Retry,
    /// Full-segment uploads (`full.rs`).
    full: FullUploads,
    /// The partial upload and its waiters (`partial.rs`).
    partial: PartialUploads,
    /// History file uploads (`history.rs`).
    history: HistoryUploads,
    /// The GC pass (`gc.rs`).
    gc: Gc,
    /// Listings that learn what the archive holds beyond the control file (`audit.rs`).
    audit: Audits,
    /// Which keys a request may still write, so GC never races one (`bookkeeping.rs`).
    ledger: RequestLedger<Instant>,
}

impl Manager {
    pub(crate) fn new(
        settings: OffloadSettings,
        storage: Arc<dyn RemoteStorage>,
        cluster: &str,
        sk_id: u64,
        wal_dir: PathBuf,
        control: Option<ControlStore>,
        io: ManagerIo,
    ) -> Manager {
        let (flush_lsn, commit_lsn) = control
            .as_ref()
            .map(|c| (c.state().flush_lsn, c.state().commit_lsn))
            .unwrap_or_default();
        let timeline = control.as_ref().map(|c| c.state().timeline);
        let now = Instant::now();
        let audit = control
            .as_ref()
            .map(|c| Audits::at_start(c.state(), now))
            .unwrap_or_default();
        // The PUTs a previous process left running may land for a while after this one started.
        let ledger = RequestLedger::new(
            control.as_ref().map(|c| c.state()),
            now + LATE_REQUEST_GRACE,
        );
        let mut m = Manager {
            wiring: Wiring {
                settings,
                storage,
                cluster: cluster.to_string(),
                sk_id,
                wal_dir,
            },
            io,
            control,
            offloader: None,
            tasks: JoinSet::new(),
            storage_cancel: CancellationToken::new(),
            progress: Progress {
                flush_lsn,
                commit_lsn,
                timeline,
                live: false,
                persist_warned: None,
                changed_at: Instant::now(),
            },
            retry: Retry {
                at: None,
                delay: RETRY_MIN,
            },
            full: FullUploads::default(),
            partial: PartialUploads::default(),
            history: HistoryUploads {
                in_flight: Default::default(),
                scan: true,
            },
            gc: Gc {
                in_flight: None,
                last_started: None,
                waiters: Vec::new(),
                wanted: true,
            },
            audit,
            ledger,
        };
        m.on_state_changed();
        m
    }

    /// Runs until the follower has stopped (its status channel closes) after `cancel`.
    pub(crate) async fn run(mut self, cancel: CancellationToken) -> Result<()> {
        let mut next_persist = Instant::now() + PERSIST_INTERVAL;
        // The follower's LSNs are sampled at most every PROGRESS_SAMPLE, and only when they
        // changed (or a partial upload waits to become due): an idle cluster's manager sleeps.
        let mut sampled_at = Instant::now() - PROGRESS_SAMPLE;
        let mut follower_running = true;
        self.schedule();
        while follower_running {
            let retry_at = self.retry.at.unwrap_or_else(|| Instant::now() + RETRY_MAX);
            tokio::select! {
                req = self.io.requests.recv() => match req {
                    Some(req) => self.handle_request(req),
                    None => follower_running = false,
                },
                // Sampled, not woken per change: the follower publishes after every fsync batch
                // (hundreds a second under sync load), and nothing here needs that cadence.
                changed = progress_changed(&mut self.io.progress, sampled_at + PROGRESS_SAMPLE) => {
                    sampled_at = Instant::now();
                    match changed {
                        Ok(()) => {
                            self.on_progress();
                            self.progress.changed_at = sampled_at;
                            next_persist = next_persist.min(sampled_at + PERSIST_INTERVAL);
                        }
                        Err(_) => follower_running = false,
                    }
                }
                // A partial upload becomes due with time alone, after the WAL stopped coming.
                _ = sleep_until((sampled_at + PROGRESS_SAMPLE).into()),
                    if self.partial.pending_since.is_some() => sampled_at = Instant::now(),
                cmd = self.io.commands.recv(), if !cancel.is_cancelled() => match cmd {
                    Some(cmd) => self.handle_command(cmd).await,
                    None => {}
                },
                Some(done) = self.tasks.join_next() => self.on_task_done(done),
                _ = sleep_until(next_persist.into()) => {
                    self.persist_lsns();
                    // Superseded versions wait for their keys to be quiet (`gc.rs`): look again.
                    self.gc.wanted = true;
                    let now = Instant::now();
                    next_persist = now + if self.quiet(now) { QUIET_PERSIST_INTERVAL } else { PERSIST_INTERVAL };
                }
                _ = sleep_until(retry_at.into()), if self.retry.at.is_some() => {
                    self.retry.at = None;
                }
            }
            // The follower asked, or waiters were held back until uploads could start.
            let held = !self.partial.waiters.is_empty()
                && self.partial.in_flight.is_none()
                && self.partial_uploads_ready();
            let due = !cancel.is_cancelled() && self.partial_due(Instant::now());
            if std::mem::take(&mut self.partial.kick) || held || due {
                self.start_partial().await;
                self.answer_idle_partial_waiters();
            }
            if !cancel.is_cancelled() {
                self.schedule();
            }
        }
        self.shutdown().await
    }

    /// Starts whatever work is due: full uploads, history uploads, GC.
    fn schedule(&mut self) {
        if self.retry.at.is_some_and(|t| t > Instant::now()) {
            return;
        }
        if std::mem::take(&mut self.history.scan) {
            self.schedule_history_uploads();
        }
        self.schedule_full_uploads();
        self.start_audit();
        if self.gc.wanted {
            self.start_gc();
        }
    }

    /// Hands a finished task to its kind, then republishes the offload status.
    fn on_task_done(&mut self, done: Result<TaskDone, tokio::task::JoinError>) {
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "a background task panicked");
                return;
            }
        };
        match done {
            TaskDone::Full {
                timeline,
                segno,
                result,
            } => self.finish_full(timeline, segno, result),
            TaskDone::Partial { name, result } => self.finish_partial(name, result),
            TaskDone::History { timeline, result } => self.finish_history(timeline, result),
            TaskDone::Gc { names, result } => self.finish_gc(names, result),
            TaskDone::Audit { segment, result } => self.finish_audit(segment, result),
        }
        self.publish(self.control.as_ref().map(|c| c.state()));
    }

    /// Takes in the follower's newest LSNs: they only rise within a timeline, and a newer
    /// timeline's are taken as they are.
    fn on_progress(&mut self) {
        let magic = self.io.progress.borrow().wal_page_magic;
        if let Some(magic) = magic {
            self.record_page_magic(magic);
        }
        let p = self.io.progress.borrow_and_update();
        let progress = &mut self.progress;
        let was_live = progress.live;
        progress.live |= p.local_end_checked;
        if p.timeline.is_some() && p.timeline != progress.timeline {
            // A new timeline may start below the old end (a fork): take its LSNs as they are.
            if p.timeline > progress.timeline {
                progress.timeline = p.timeline;
                progress.flush_lsn = p.flush_lsn;
                progress.commit_lsn = p.commit_lsn;
            }
            return;
        }
        let wrote = p.flush_lsn.0.saturating_sub(progress.flush_lsn.0);
        progress.flush_lsn = progress.flush_lsn.max(p.flush_lsn);
        progress.commit_lsn = progress.commit_lsn.max(p.commit_lsn);
        drop(p);
        if wrote > 0 && was_live {
            self.io.offload_tx.send_modify(|o| o.wal_bytes += wrote);
        }
        let commit = self.progress.commit_lsn.min(self.progress.flush_lsn);
        let seg_size = self.state().map(|s| s.wal_segment_size).unwrap_or(0);
        self.note_commit_progress(commit, seg_size, Instant::now());
    }

    fn state(&self) -> Result<&ClusterState> {
        self.control
            .as_ref()
            .map(|c| c.state())
            .context("the cluster has no control file yet (never connected to its primary)")
    }

    /// Applies a change durably and republishes the state.
    fn update(&mut self, change: Box<dyn FnOnce(&mut ClusterState) + Send>) -> Result<()> {
        let control = self
            .control
            .as_mut()
            .context("the cluster has no control file yet")?;
        let result = control.update(change);
        self.on_state_changed();
        result
    }

    fn on_state_changed(&mut self) {
        let snapshot = self.control.as_ref().map(|c| c.state().clone());
        if let Some(st) = &snapshot {
            if self.progress.timeline != Some(st.timeline) {
                // A timeline switch was recorded: LSNs restart from the switch point, and uploads
                // counted for the old timeline's numbering no longer apply.
                self.progress.timeline = Some(st.timeline);
                self.progress.flush_lsn = st.flush_lsn;
                self.progress.commit_lsn = st.commit_lsn;
                self.full.done.clear();
                self.history.scan = true;
            }
        }
        if let Some(st) = &snapshot {
            if self
                .offloader
                .as_ref()
                .is_none_or(|o| o.seg_size != st.wal_segment_size)
            {
                self.offloader = Some(Offloader {
                    storage: self.wiring.storage.clone(),
                    cluster: self.wiring.cluster.clone(),
                    wal_dir: self.wiring.wal_dir.clone(),
                    seg_size: st.wal_segment_size,
                    compression: self.wiring.settings.compression,
                    head_below: st.flush_lsn.segment_number(st.wal_segment_size) + 1,
                });
            }
        }
        self.publish(snapshot.as_ref());
        self.io.state_tx.send_replace(snapshot);
    }

    fn publish(&self, st: Option<&ClusterState>) {
        let newest = self.newest_uploaded_partial_entry();
        let backup_lsn = st.map(|s| s.backup_lsn).unwrap_or_default();
        let remote_lsn = st.map(bookkeeping::remote_end).unwrap_or_default();
        let newest_partial =
            st.and_then(|s| newest.map(|p| p.name.to_file_name(s.wal_segment_size)));
        let uploads_in_flight =
            self.full.in_flight.len() + usize::from(self.partial.in_flight.is_some());
        let listed_objects = st
            .map(|s| s.remote.partials.len() + s.remote.history.len())
            .unwrap_or(0);
        // Watchers (the lag tracker, the API) are woken only by a change: an idle cluster's
        // control-file saves republish the same values.
        self.io.offload_tx.send_if_modified(|o| {
            let changed = o.backup_lsn != backup_lsn
                || o.remote_lsn != remote_lsn
                || o.newest_partial != newest_partial
                || o.uploads_in_flight != uploads_in_flight
                || o.listed_objects != listed_objects;
            o.backup_lsn = backup_lsn;
            o.remote_lsn = remote_lsn;
            o.newest_partial = newest_partial;
            o.uploads_in_flight = uploads_in_flight;
            o.listed_objects = listed_objects;
            changed
        });
    }

    /// Records the WAL page magic the follower verified on the stream, once: a control file that
    /// has none yet (a new cluster, or one upgraded from format v2) learns it here, and from then
    /// on local WAL is held to it (see `wal::stream_check`). A failure is retried on the next
    /// progress sample; until it succeeds, local WAL is checked by learning from its first page.
    fn record_page_magic(&mut self, magic: u16) {
        let recorded = self.control.as_ref().map(|c| c.state().wal_page_magic);
        if recorded != Some(0) {
            return;
        }
        match self.update(Box::new(move |s| s.wal_page_magic = magic)) {
            Ok(()) => info!(
                magic = %crate::wal::format::describe_magic(magic),
                "recorded the WAL page magic of this cluster"
            ),
            Err(e) => warn!(error = %format!("{e:#}"), "cannot record the WAL page magic"),
        }
    }

    fn persist_lsns(&mut self) {
        let (flush, commit) = (self.progress.flush_lsn, self.progress.commit_lsn);
        if let Some(c) = self.control.as_mut() {
            if let Err(e) = c.record_lsns(flush, commit) {
                // At most once a minute: on a full disk this fails every second until freed.
                let p = &mut self.progress;
                if p.persist_warned
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    warn!(error = %format!("{e:#}"), "cannot record LSNs in the control file");
                    p.persist_warned = Some(Instant::now());
                }
            }
        }
    }

    fn note_failure(&mut self, what: &str, e: &anyhow::Error) {
        warn!(error = %format!("{e:#}"), retry_in_ms = self.retry.delay.as_millis() as u64, "{what} failed");
        self.retry.at = Some(Instant::now() + self.retry.delay);
        self.retry.delay = (self.retry.delay * 2).min(RETRY_MAX);
        let msg = format!("{what}: {e:#}");
        self.io.offload_tx.send_modify(|o| {
            o.last_error = Some(msg);
            o.upload_failures += 1;
        });
    }

    fn note_success(&mut self) {
        self.retry.delay = RETRY_MIN;
    }

    /// After the follower stopped: record its final LSNs, upload the final partial (bounded),
    /// stop everything else.
    async fn shutdown(mut self) -> Result<()> {
        self.on_progress();
        self.persist_lsns();
        let final_upload = async {
            // Let an upload already running finish, then make sure the newest one is up.
            while let Some(done) = self.tasks.join_next().await {
                self.on_task_done(done);
            }
            // Stopped before the startup audit finished: run it now, or the tail of the WAL
            // (acknowledged by this process) would not be uploaded before it exits.
            self.run_gating_audit().await;
            self.start_partial().await;
            while let Some(done) = self.tasks.join_next().await {
                self.on_task_done(done);
            }
            // Leave no superseded version behind on a clean stop.
            if self.gc.wanted {
                self.gc.last_started = None;
                self.start_gc();
                while let Some(done) = self.tasks.join_next().await {
                    self.on_task_done(done);
                }
            }
        };
        if timeout(FINAL_UPLOAD_TIMEOUT, final_upload).await.is_err() {
            warn!("final uploads did not finish in time; the next start resumes them");
        }
        self.storage_cancel.cancel();
        while let Some(done) = self.tasks.join_next().await {
            self.on_task_done(done);
        }
        self.persist_lsns();
        info!(newest_partial = ?self.newest_uploaded_partial(), "manager stopped");
        Ok(())
    }
}
