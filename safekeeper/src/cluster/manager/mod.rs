//! The per-cluster manager task: owns the control file and all background work of one cluster —
//! full-segment uploads, partial uploads, GC of superseded objects, local WAL removal — and
//! answers the follower's and the admin API's requests.
//!
//! It runs on the main runtime, apart from the follower's thread, so receiving WAL never waits
//! for an upload: the follower only publishes its LSNs on a `watch` channel.
//!
//! Invariants (DESIGN.md, "Partial upload protocol" and "Control file"):
//! - The control file lists every remote object this safekeeper may have created. Partial and
//!   history objects are persisted `InProgress` *before* their PUT. A full segment's object is a
//!   function of the WAL; before one is uploaded the recorded `flush_lsn` is advanced past it, so
//!   every full segment that may exist remotely is in the recorded ranges or in
//!   `[backup_lsn, flush_lsn)` of the current timeline.
//! - `backup_lsn` only advances over segments whose upload finished, in order (or that lie in a
//!   reported gap below the current term's start and exist nowhere).
//! - A partial becomes `Deleting` only when superseded by a newer version of the same segment and
//!   timeline, or by that segment's full object. The final partial of an ended timeline and the
//!   last partial before a gap are the only copies of their WAL and are never superseded.
//! - A timeline's WAL is uploaded only after its history file.
//! - GC deletes `Deleting` entries and `InProgress` entries with no upload in flight, and never
//!   an object whose name equals an `Uploaded` partial. Entries leave the control file only after
//!   the delete succeeded, so a crash anywhere leaves a superset of what exists remotely.
//! - A local segment is removed only when it is below `backup_lsn` and outside the newest
//!   `local_retention` bytes, and never the newest completed segment.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use control_file::names::{PartialName, TimelineId};
use control_file::{ClusterState, Lsn, ObjectStatus, PartialObject};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, interval, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::config::OffloadSettings;
use crate::cluster::control::ControlRequest;
use crate::cluster::manager::control_store::ControlStore;
use crate::cluster::manager::offloader::{Offloader, Uploaded};
use crate::cluster::status::{ClusterStatus, OffloadStatus};

/// How often the follower's published LSNs are read (uploads start at most this late).
const PROGRESS_SAMPLE: Duration = Duration::from_millis(50);
/// How often LSNs from the follower are written to the control file.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
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

enum TaskDone {
    Full {
        timeline: TimelineId,
        segno: u64,
        result: Result<Uploaded>,
    },
    Partial {
        name: PartialName,
        result: Result<()>,
    },
    History {
        timeline: TimelineId,
        result: Result<Uploaded>,
    },
    Gc {
        names: Vec<String>,
        result: Result<()>,
    },
}

pub(crate) struct Manager {
    settings: OffloadSettings,
    offloader: Option<Offloader>,
    storage: std::sync::Arc<dyn remote_storage::RemoteStorage>,
    cluster: String,
    sk_id: u64,
    wal_dir: std::path::PathBuf,
    control: Option<ControlStore>,
    io: ManagerIo,
    flush_lsn: Lsn,
    commit_lsn: Lsn,
    tasks: JoinSet<TaskDone>,
    full_in_flight: BTreeSet<u64>,
    full_done: BTreeSet<u64>,
    /// Segments below the current term's start that exist nowhere (a gap the upstream could not
    /// fill): `backup_lsn` passes them without recording an object.
    full_missing: BTreeSet<u64>,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    partial_in_flight: Option<PartialName>,
    partial_waiters: Vec<oneshot::Sender<Result<Option<String>>>>,
    history_in_flight: BTreeSet<TimelineId>,
    gc_in_flight: Option<Vec<String>>,
    gc_waiters: Vec<oneshot::Sender<Result<Vec<String>>>>,
    gc_wanted: bool,
    /// A partial upload was requested (answered through `partial_waiters`).
    kick_partial: bool,
    /// Look for local history files to upload: at start, after a timeline change and after a
    /// failed history upload (they only appear at a timeline switch).
    history_scan: bool,
    /// Timeline of the LSNs in `flush_lsn`/`commit_lsn`; they restart when it changes.
    progress_timeline: Option<TimelineId>,
    /// Cancels storage requests at the very end of shutdown.
    storage_cancel: CancellationToken,
}

impl Manager {
    pub(crate) fn new(
        settings: OffloadSettings,
        storage: std::sync::Arc<dyn remote_storage::RemoteStorage>,
        cluster: &str,
        sk_id: u64,
        wal_dir: std::path::PathBuf,
        control: Option<ControlStore>,
        io: ManagerIo,
    ) -> Manager {
        let (flush_lsn, commit_lsn) = control
            .as_ref()
            .map(|c| (c.state().flush_lsn, c.state().commit_lsn))
            .unwrap_or_default();
        let progress_timeline = control.as_ref().map(|c| c.state().timeline);
        let mut m = Manager {
            settings,
            offloader: None,
            storage,
            cluster: cluster.to_string(),
            sk_id,
            wal_dir,
            control,
            io,
            flush_lsn,
            commit_lsn,
            tasks: JoinSet::new(),
            full_in_flight: BTreeSet::new(),
            full_done: BTreeSet::new(),
            full_missing: BTreeSet::new(),
            retry_at: None,
            retry_delay: RETRY_MIN,
            partial_in_flight: None,
            partial_waiters: Vec::new(),
            history_in_flight: BTreeSet::new(),
            gc_in_flight: None,
            gc_waiters: Vec::new(),
            gc_wanted: true,
            kick_partial: false,
            history_scan: true,
            progress_timeline,
            storage_cancel: CancellationToken::new(),
        };
        m.on_state_changed();
        m
    }

    /// Runs until the follower has stopped (its status channel closes) after `cancel`.
    pub(crate) async fn run(mut self, cancel: CancellationToken) -> Result<()> {
        let mut persist = interval(PERSIST_INTERVAL);
        persist.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut progress_tick = interval(PROGRESS_SAMPLE);
        progress_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut partial_tick = interval(self.settings.partial_interval);
        partial_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut follower_running = true;
        self.schedule();
        while follower_running {
            let retry_at = self.retry_at.unwrap_or_else(|| Instant::now() + RETRY_MAX);
            tokio::select! {
                req = self.io.requests.recv() => match req {
                    Some(req) => self.handle_request(req),
                    None => follower_running = false,
                },
                // Sampled, not woken per change: the follower publishes after every fsync batch
                // (hundreds a second under sync load), and nothing here needs that cadence.
                _ = progress_tick.tick() => match self.io.progress.has_changed() {
                    Ok(true) => self.on_progress(),
                    Ok(false) => {}
                    Err(_) => follower_running = false,
                },
                cmd = self.io.commands.recv(), if !cancel.is_cancelled() => match cmd {
                    Some(cmd) => self.handle_command(cmd).await,
                    None => {}
                },
                Some(done) = self.tasks.join_next() => self.on_task_done(done),
                _ = persist.tick() => self.persist_lsns(),
                _ = partial_tick.tick(), if !cancel.is_cancelled() => self.start_partial().await,
                _ = sleep_until(retry_at.into()), if self.retry_at.is_some() => {
                    self.retry_at = None;
                }
            }
            if std::mem::take(&mut self.kick_partial) {
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
        if self.retry_at.is_some_and(|t| t > Instant::now()) {
            return;
        }
        if std::mem::take(&mut self.history_scan) {
            self.schedule_history_uploads();
        }
        self.schedule_full_uploads();
        if self.gc_wanted {
            self.start_gc();
        }
    }

    /// Waiters for a partial upload when none is running: nothing needed uploading, so the answer
    /// is the newest existing one.
    fn answer_idle_partial_waiters(&mut self) {
        if self.partial_in_flight.is_none() && !self.partial_waiters.is_empty() {
            let newest = self.newest_uploaded_partial();
            for w in self.partial_waiters.drain(..) {
                let _ = w.send(Ok(newest.clone()));
            }
        }
    }

    fn on_progress(&mut self) {
        let p = self.io.progress.borrow_and_update();
        if p.timeline.is_some() && p.timeline != self.progress_timeline {
            // A new timeline may start below the old end (a fork): take its LSNs as they are.
            if p.timeline > self.progress_timeline {
                self.progress_timeline = p.timeline;
                self.flush_lsn = p.flush_lsn;
                self.commit_lsn = p.commit_lsn;
            }
            return;
        }
        self.flush_lsn = self.flush_lsn.max(p.flush_lsn);
        self.commit_lsn = self.commit_lsn.max(p.commit_lsn);
    }

    fn handle_request(&mut self, req: ControlRequest) {
        match req {
            ControlRequest::Create { state, reply } => {
                let path = self
                    .wal_dir
                    .with_file_name(crate::cluster::follower::CONTROL_FILE_NAME);
                let result = if self.control.is_some() {
                    Err(anyhow!("internal error: control file created twice"))
                } else {
                    ControlStore::create(&path, *state).map(|c| {
                        self.flush_lsn = c.state().flush_lsn;
                        self.commit_lsn = c.state().commit_lsn;
                        self.control = Some(c);
                    })
                };
                self.on_state_changed();
                let _ = reply.send(result);
            }
            ControlRequest::Update { change, reply } => {
                let result = self.update(change);
                let _ = reply.send(result);
            }
            ControlRequest::UploadPartial { reply } => {
                self.on_progress();
                self.partial_waiters.push(reply);
                self.kick_partial = true;
            }
        }
    }

    async fn handle_command(&mut self, cmd: ManagerCommand) {
        match cmd {
            ManagerCommand::UploadPartialNow(reply) => {
                self.on_progress();
                self.partial_waiters.push(reply);
                self.start_partial().await;
                self.answer_idle_partial_waiters();
            }
            ManagerCommand::GcNow(reply) => {
                self.gc_waiters.push(reply);
                self.start_gc();
            }
            ManagerCommand::TermBump(reply) => {
                let flush = self.flush_lsn;
                let result = self
                    .update(Box::new(move |s| {
                        let timeline = s.timeline;
                        s.start_term(timeline, flush.max(s.flush_lsn));
                    }))
                    .and_then(|()| self.state().map(|s| s.term));
                if let Ok(term) = &result {
                    info!(term, at = %flush, "started a new term on request");
                }
                let _ = reply.send(result);
            }
        }
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
            if self.progress_timeline != Some(st.timeline) {
                // A timeline switch was recorded: LSNs restart from the switch point, and uploads
                // counted for the old timeline's numbering no longer apply.
                self.progress_timeline = Some(st.timeline);
                self.flush_lsn = st.flush_lsn;
                self.commit_lsn = st.commit_lsn;
                self.full_done.clear();
                self.history_scan = true;
            }
        }
        if let Some(st) = &snapshot {
            if self
                .offloader
                .as_ref()
                .is_none_or(|o| o.seg_size != st.wal_segment_size)
            {
                self.offloader = Some(Offloader {
                    storage: self.storage.clone(),
                    cluster: self.cluster.clone(),
                    wal_dir: self.wal_dir.clone(),
                    seg_size: st.wal_segment_size,
                });
            }
        }
        self.publish(snapshot.as_ref());
        self.io.state_tx.send_replace(snapshot);
    }

    fn publish(&self, st: Option<&ClusterState>) {
        let newest = self.newest_uploaded_partial_entry();
        let backup_lsn = st.map(|s| s.backup_lsn).unwrap_or_default();
        let partial_lsn = newest.map(|p| p.name.commit_lsn).unwrap_or_default();
        self.io.offload_tx.send_modify(|o| {
            o.backup_lsn = backup_lsn;
            o.remote_lsn = backup_lsn.max(partial_lsn);
            o.newest_partial =
                st.and_then(|s| newest.map(|p| p.name.to_file_name(s.wal_segment_size)));
            o.uploads_in_flight =
                self.full_in_flight.len() + usize::from(self.partial_in_flight.is_some());
            o.listed_objects = st
                .map(|s| s.remote.partials.len() + s.remote.history.len())
                .unwrap_or(0);
        });
    }

    /// The newest uploaded partial of the history being followed (highest term, then LSN).
    fn newest_uploaded_partial_entry(&self) -> Option<&PartialObject> {
        self.control.as_ref().and_then(|c| {
            c.state()
                .remote
                .partials
                .iter()
                .filter(|p| p.status == ObjectStatus::Uploaded)
                .max_by_key(|p| (p.name.term, p.name.commit_lsn))
        })
    }

    fn newest_uploaded_partial(&self) -> Option<String> {
        let seg = self.state().ok()?.wal_segment_size;
        self.newest_uploaded_partial_entry()
            .map(|p| p.name.to_file_name(seg))
    }

    fn persist_lsns(&mut self) {
        let (flush, commit) = (self.flush_lsn, self.commit_lsn);
        if let Some(c) = self.control.as_mut() {
            if let Err(e) = c.record_lsns(flush, commit) {
                warn!(error = %format!("{e:#}"), "cannot record LSNs in the control file");
            }
        }
    }

    fn note_failure(&mut self, what: &str, e: &anyhow::Error) {
        warn!(error = %format!("{e:#}"), retry_in_ms = self.retry_delay.as_millis() as u64, "{what} failed");
        self.retry_at = Some(Instant::now() + self.retry_delay);
        self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
        let msg = format!("{what}: {e:#}");
        self.io.offload_tx.send_modify(|o| {
            o.last_error = Some(msg);
            o.upload_failures += 1;
        });
    }

    fn note_success(&mut self) {
        self.retry_delay = RETRY_MIN;
    }
}

pub(crate) mod control_store;
mod offloader;
mod work;
