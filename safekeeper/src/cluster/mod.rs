//! Starting and stopping followed clusters: each is a follower thread (WAL in, acknowledgements
//! out) plus a manager task (control file, uploads, GC), tied together by channels, and, with
//! `--backup-interval`, a task taking base backups on a schedule (`scheduled_backup`).
//!
//! Owns the wiring only. A [`ClusterHandle`] is how the rest of the process (the `run` command,
//! the admin API) sees a cluster: read-only `watch` receivers of its state, a command channel to
//! its manager, and its cancellation token.

pub(crate) mod config;
pub(crate) mod control;
pub(crate) mod follower;
pub(crate) mod lag;
pub(crate) mod manager;
pub(crate) mod scheduled_backup;
pub(crate) mod status;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use control_file::ClusterState;
use remote_storage::RemoteStorage;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::cluster::config::ClusterConfig;
use crate::cluster::config::IngestOptions;
use crate::cluster::config::OffloadSettings;
use crate::cluster::control::ControlClient;
use crate::cluster::follower::{CONTROL_FILE_NAME, ClusterSettings, spawn_follower_thread};
use crate::cluster::manager::control_store::ControlStore;
use crate::cluster::manager::{Manager, ManagerCommand, ManagerIo};
use crate::cluster::status::{ClusterStatus, OffloadStatus};

/// Process-wide settings every cluster shares.
#[derive(Clone, Debug)]
pub(crate) struct ServiceContext {
    pub sk_id: u64,
    pub data_dir: PathBuf,
    /// One storage for all clusters, so its concurrency limit is shared fairly among them.
    pub storage: Arc<dyn RemoteStorage>,
    pub offload: OffloadSettings,
    pub ingest: IngestOptions,
    /// `--backup-interval` and its retention policy; `None`: no scheduled backups.
    pub backup: Option<scheduled_backup::BackupSchedule>,
}

/// A running cluster as the rest of the process sees it.
pub(crate) struct ClusterHandle {
    pub status: watch::Receiver<ClusterStatus>,
    pub offload: watch::Receiver<OffloadStatus>,
    pub state: watch::Receiver<Option<ClusterState>>,
    pub commands: mpsc::Sender<ManagerCommand>,
    pub cancel: CancellationToken,
    follower: oneshot::Receiver<Result<()>>,
    manager: JoinHandle<Result<()>>,
    backups: Option<JoinHandle<()>>,
}

/// Starts following one cluster. Fails (without starting anything) when its control file cannot
/// be read: a damaged control file is never guessed around.
pub(crate) fn start_cluster(
    ctx: &ServiceContext,
    config: ClusterConfig,
    parent: &CancellationToken,
) -> Result<ClusterHandle> {
    let cluster_dir = ctx.data_dir.join(&config.name);
    std::fs::create_dir_all(&cluster_dir).with_context(|| {
        format!(
            "cannot create the cluster directory {} (check permissions on --data-dir)",
            cluster_dir.display()
        )
    })?;
    let control = ControlStore::load(&cluster_dir.join(CONTROL_FILE_NAME))?;
    let cancel = parent.child_token();
    let (status_tx, status_rx) = watch::channel(ClusterStatus::new(&config.name));
    let (offload_tx, offload_rx) = watch::channel(OffloadStatus::default());
    let (state_tx, state_rx) = watch::channel(control.as_ref().map(|c| c.state().clone()));
    let (request_tx, request_rx) = mpsc::channel(16);
    let (command_tx, command_rx) = mpsc::channel(16);

    let manager = Manager::new(
        ctx.offload,
        ctx.storage.clone(),
        &config.name,
        ctx.sk_id,
        cluster_dir.join("wal"),
        control,
        ManagerIo {
            requests: request_rx,
            commands: command_rx,
            progress: status_tx.subscribe(),
            state_tx,
            offload_tx,
        },
    );
    let span = info_span!("cluster", cluster = %config.name);
    let backups = ctx.backup.map(|schedule| {
        let task = scheduled_backup::run_schedule(
            ctx.storage.clone(),
            config.clone(),
            ctx.offload.compression,
            schedule,
            cancel.clone(),
        );
        tokio::spawn(task.instrument(span.clone()))
    });
    let manager = tokio::spawn(manager.run(cancel.clone()).instrument(span));
    let follower = spawn_follower_thread(
        ClusterSettings {
            sk_id: ctx.sk_id,
            cluster: config.clone(),
            cluster_dir,
            ingest: ctx.ingest,
            local_retention: ctx.offload.local_retention,
        },
        ControlClient::new(request_tx, state_rx.clone()),
        status_tx,
        cancel.clone(),
    )?;
    Ok(ClusterHandle {
        status: status_rx,
        offload: offload_rx,
        state: state_rx,
        commands: command_tx,
        cancel,
        follower,
        manager,
        backups,
    })
}

impl ClusterHandle {
    /// Waits until both halves stopped; the follower's error (if any) is the cluster's result.
    pub(crate) async fn wait(self) -> Result<()> {
        let follower = self.follower.await.unwrap_or_else(|_| {
            Err(anyhow!(
                "the follower thread ended without a result (panic)"
            ))
        });
        let manager = self
            .manager
            .await
            .unwrap_or_else(|e| Err(anyhow!("the manager task panicked: {e}")));
        if let Some(backups) = self.backups {
            // Ends with the cluster's token; a panic there is logged, not the cluster's error.
            if let Err(e) = backups.await {
                tracing::error!(error = %e, "the scheduled backup task panicked");
            }
        }
        follower.and(manager)
    }
}
