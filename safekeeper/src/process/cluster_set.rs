//! The clusters this process follows, as one set the `run` command and the admin API share:
//! lookup by name, adding and removing at run time, and the process's exit rule.
//!
//! Owns: the map of running clusters (behind a lock held only for lookups), one supervisor task
//! per cluster that turns its end into an [`Outcome`], one lag-tracker task per cluster (the only
//! writer of its lags, read here through a `watch` channel: see `cluster::lag`), and the writes of
//! `<data-dir>/clusters.toml` (see `clusters_toml` for the persistence design).
//!
//! Invariants:
//! - Membership changes (add, remove) are serialized by one async lock, and each is persisted
//!   before it is reported done; a cluster is removed from the file *before* it is stopped.
//! - A removed cluster has fully stopped (follower flushed, manager's final upload done or timed
//!   out) before `remove` returns, so re-adding the same name never runs two followers on one
//!   directory. Local data is deleted only on request, and never a directory holding the local
//!   remote storage root.
//! - A failed cluster stays in the set (its error visible through the API) until removed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use anyhow::{Context, anyhow};
use control_file::ClusterState;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::config::{ClusterConfig, validate_cluster};
use crate::cluster::lag::{self, LagSnapshot, Lags};
use crate::cluster::manager::ManagerCommand;
use crate::cluster::status::{ClusterStatus, OffloadStatus};
use crate::cluster::{ServiceContext, start_cluster};
use crate::pg::ConnInfo;
use crate::process::clusters_toml;

/// Upper bound on clusters in one process (each one is a thread and a task).
pub(crate) const MAX_CLUSTERS: usize = 128;

/// Where a cluster's entry comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The command line or the config file.
    Config,
    /// `POST /v1/clusters` (kept in `clusters.toml`).
    Api,
}

/// How a cluster's tasks ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Running,
    Stopped,
    Failed(String),
}

/// One followed cluster.
pub(crate) struct ClusterEntry {
    pub config: ClusterConfig,
    pub origin: Origin,
    pub status: watch::Receiver<ClusterStatus>,
    pub offload: watch::Receiver<OffloadStatus>,
    pub state: watch::Receiver<Option<ClusterState>>,
    pub commands: mpsc::Sender<ManagerCommand>,
    /// Published by the cluster's lag tracker (see `cluster::lag`), the only writer.
    lag: watch::Receiver<LagSnapshot>,
    cancel: CancellationToken,
    outcome: watch::Receiver<Outcome>,
}

impl ClusterEntry {
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    pub(crate) fn outcome(&self) -> Outcome {
        self.outcome.borrow().clone()
    }

    /// One consistent view: the follower's and the manager's status and the lags they imply.
    pub(crate) fn snapshot(&self) -> (ClusterStatus, OffloadStatus, Lags) {
        // The lags first: the positions read after them are at least as new.
        let published = *self.lag.borrow();
        let status = self.status.borrow().clone();
        let offload = self.offload.borrow().clone();
        let lags = published.read(&status, &offload, Instant::now());
        (status, offload, lags)
    }

    async fn stopped(&self) -> Outcome {
        let mut rx = self.outcome.clone();
        match rx.wait_for(|o| *o != Outcome::Running).await {
            Ok(o) => o.clone(),
            Err(_) => Outcome::Failed("the cluster's supervisor ended without a result".into()),
        }
    }
}

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetError {
    #[error("{0}")]
    Invalid(String),
    #[error("no cluster named {0:?}")]
    NotFound(String),
    #[error("a cluster named {0:?} is already followed")]
    Exists(String),
    #[error(
        "cluster {0:?} comes from the command line or the config file: remove it there and \
         restart the safekeeper"
    )]
    Configured(String),
    #[error("this safekeeper already follows {MAX_CLUSTERS} clusters")]
    TooMany,
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// Every cluster of this process.
pub(crate) struct ClusterSet {
    ctx: ServiceContext,
    parent: CancellationToken,
    /// The `file://` remote root, which no cluster directory may contain.
    local_remote: Option<PathBuf>,
    entries: RwLock<BTreeMap<String, Arc<ClusterEntry>>>,
    membership: tokio::sync::Mutex<()>,
    changed: watch::Sender<u64>,
}

impl ClusterSet {
    pub(crate) fn new(
        ctx: ServiceContext,
        parent: CancellationToken,
        local_remote: Option<PathBuf>,
    ) -> Arc<ClusterSet> {
        Arc::new(ClusterSet {
            ctx,
            parent,
            local_remote,
            entries: RwLock::new(BTreeMap::new()),
            membership: tokio::sync::Mutex::new(()),
            changed: watch::channel(0).0,
        })
    }

    /// Starts the clusters known at startup (configured and from `clusters.toml`).
    pub(crate) fn start_initial(
        &self,
        clusters: Vec<(ClusterConfig, Origin)>,
    ) -> anyhow::Result<()> {
        for (config, origin) in clusters {
            let name = config.name.clone();
            self.check_directory(&name).map_err(|e| anyhow!(e))?;
            self.start(config, origin)
                .with_context(|| format!("cannot start cluster {name}"))?;
        }
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<ClusterEntry>> {
        self.read().get(name).cloned()
    }

    /// Every cluster, by name.
    pub(crate) fn list(&self) -> Vec<Arc<ClusterEntry>> {
        self.read().values().cloned().collect()
    }

    /// Changes whenever a cluster is added, removed or stops.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The exit rule of `safekeeper run`: at least one configured cluster, and every cluster
    /// stopped on a permanent error. (Clusters added at run time alone never end the process.)
    pub(crate) fn all_failed(&self) -> bool {
        let entries = self.read();
        entries.values().any(|e| e.origin == Origin::Config)
            && entries
                .values()
                .all(|e| matches!(e.outcome(), Outcome::Failed(_)))
    }

    /// Waits until every cluster stopped (after the parent token fired); name and outcome each.
    pub(crate) async fn wait_all(&self) -> Vec<(String, Outcome)> {
        let mut out = Vec::new();
        for e in self.list() {
            out.push((e.name().to_string(), e.stopped().await));
        }
        out
    }

    /// Starts following a new cluster and records it in `clusters.toml`.
    pub(crate) async fn add(&self, config: ClusterConfig) -> Result<Arc<ClusterEntry>, SetError> {
        validate_cluster(&config).map_err(|e| SetError::Invalid(format!("{e:#}")))?;
        // libpq would take an empty string as "all defaults": never what an API caller meant.
        if config.primary.trim().is_empty() {
            return Err(SetError::Invalid(
                "the primary connection string is empty".into(),
            ));
        }
        ConnInfo::parse(&config.primary)
            .map_err(|e| SetError::Invalid(format!("invalid primary connection string: {e}")))?;
        self.check_directory(&config.name)?;
        let _guard = self.membership.lock().await;
        {
            let entries = self.read();
            if entries.contains_key(&config.name) {
                return Err(SetError::Exists(config.name));
            }
            if entries.len() >= MAX_CLUSTERS {
                return Err(SetError::TooMany);
            }
        }
        let entry = self
            .start(config, Origin::Api)
            .map_err(|e| SetError::Failed(e.context("cannot start the cluster")))?;
        if let Err(e) = self.persist() {
            self.write().remove(entry.name());
            entry.cancel.cancel();
            entry.stopped().await;
            self.notify();
            return Err(SetError::Failed(e));
        }
        info!(cluster = %entry.name(), "following a cluster added through the admin API");
        Ok(entry)
    }

    /// Stops following a runtime-added cluster; deletes its local directory when `purge_local`.
    pub(crate) async fn remove(&self, name: &str, purge_local: bool) -> Result<Outcome, SetError> {
        let _guard = self.membership.lock().await;
        let entry = self
            .get(name)
            .ok_or_else(|| SetError::NotFound(name.to_string()))?;
        if entry.origin == Origin::Config {
            return Err(SetError::Configured(name.to_string()));
        }
        self.write().remove(name);
        if let Err(e) = self.persist() {
            self.write().insert(name.to_string(), entry);
            return Err(SetError::Failed(e));
        }
        entry.cancel.cancel();
        let outcome = entry.stopped().await;
        self.notify();
        info!(cluster = %name, purge_local, "stopped following a cluster on request");
        if purge_local {
            let dir = self.ctx.data_dir.join(name);
            tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(anyhow!(e).context(format!("cannot delete {}", dir.display())))
                }
                _ => Ok(()),
            })
            .await
            .map_err(|e| SetError::Failed(anyhow!("the delete task failed: {e}")))?
            .map_err(SetError::Failed)?;
        }
        Ok(outcome)
    }

    /// Refuses a name whose directory would hold the local remote storage (e.g. `remote` with
    /// the default `file://<data-dir>/remote`): deleting it would delete the archive.
    fn check_directory(&self, name: &str) -> Result<(), SetError> {
        let dir = self.ctx.data_dir.join(name);
        match &self.local_remote {
            Some(root) if root.starts_with(&dir) || dir.starts_with(root) => {
                Err(SetError::Invalid(format!(
                    "cluster name {name:?} would put its directory {} over the remote storage \
                     directory {}",
                    dir.display(),
                    root.display()
                )))
            }
            _ => Ok(()),
        }
    }

    fn start(&self, config: ClusterConfig, origin: Origin) -> anyhow::Result<Arc<ClusterEntry>> {
        let handle = start_cluster(&self.ctx, config.clone(), &self.parent)?;
        let (lag_tx, lag_rx) = lag::channel();
        let (outcome_tx, outcome_rx) = watch::channel(Outcome::Running);
        let entry = Arc::new(ClusterEntry {
            config,
            origin,
            status: handle.status.clone(),
            offload: handle.offload.clone(),
            state: handle.state.clone(),
            commands: handle.commands.clone(),
            lag: lag_rx,
            cancel: handle.cancel.clone(),
            outcome: outcome_rx,
        });
        tokio::spawn(lag::track(
            lag_tx,
            handle.status.clone(),
            handle.offload.clone(),
            handle.cancel.clone(),
        ));
        let changed = self.changed.clone();
        tokio::spawn(async move {
            let outcome = match handle.wait().await {
                Ok(()) => Outcome::Stopped,
                Err(e) => Outcome::Failed(format!("{e:#}")),
            };
            outcome_tx.send_replace(outcome);
            changed.send_modify(|n| *n += 1);
        });
        self.write().insert(entry.name().to_string(), entry.clone());
        self.notify();
        Ok(entry)
    }

    /// Rewrites `clusters.toml` from the set (after startup dropped shadowed entries).
    pub(crate) fn save_runtime_list(&self) -> anyhow::Result<()> {
        self.persist()
    }

    /// Writes the runtime-added clusters to `clusters.toml`.
    fn persist(&self) -> anyhow::Result<()> {
        let entries = self.list();
        let runtime: Vec<&ClusterConfig> = entries
            .iter()
            .filter(|e| e.origin == Origin::Api)
            .map(|e| &e.config)
            .collect();
        clusters_toml::save(&self.ctx.data_dir, &runtime)
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<ClusterEntry>>> {
        // The lock only guards map operations that cannot panic midway: recover from poison.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<ClusterEntry>>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Logs the names the configuration shadowed in `clusters.toml` (see `clusters_toml`).
pub(crate) fn warn_shadowed(shadowed: &[String]) {
    for name in shadowed {
        warn!(cluster = %name, "cluster is both configured and in clusters.toml: following the \
               configured settings and dropping the clusters.toml entry");
    }
}
