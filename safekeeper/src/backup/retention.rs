//! Retention: which backups a policy keeps, and deleting the others with the WAL only they need.
//!
//! Policy: keep the newest `keep_last` complete backups and every complete backup that ended
//! within `keep_within` (either rule keeping a backup keeps it), and always the newest usable
//! one. The *oldest retained* backup sets the cut: complete backups older than it (by start LSN)
//! are deleted, and every WAL object (full segment, partial piece) of a segment below the one
//! holding its start LSN, on any timeline. History files, objects retention does not recognize,
//! and everything at or above the cut stay. Incomplete backups (no `backup.json`) are deleted
//! once their newest object is older than `incomplete_after`, longer than any backup runs.
//!
//! Invariants (crash safety, intent before action):
//! - A pass first stores its whole plan, the exact keys to delete, in
//!   `<cluster>/basebackups/retention.json`, then deletes every `backup.json` of the plan (so a
//!   doomed backup stops being restorable at once, never half-deleted but listed complete), then
//!   the rest, then the plan object. A pass that finds a plan object finishes it before planning
//!   anew, so a crash at any point leaves nothing the next pass does not delete.
//! - The plan never names a key that a retained backup or a restore to any point after the
//!   oldest retained backup's end needs: replay from a backup starts at its start LSN.
//! - One pass at a time per cluster: object storage offers no lock, so two concurrent passes are
//!   the operator's mistake to avoid (both only delete keys that one plan computed as safe).

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use control_file::Lsn;
use remote_storage::{ErrorKind, ListOptions, RemoteStorage, RemoteStorageExt};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::window::Window;
use super::{COMPLETION, backups_prefix, get_object, list_backups, put_object, unix_secs};
use crate::object_format::Compression;

/// Name of the plan object, directly under `<cluster>/basebackups/`.
pub(crate) const PLAN: &str = "retention.json";

/// The policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub keep_last: Option<usize>,
    pub keep_within: Option<Duration>,
    pub incomplete_after: Duration,
}

/// What a pass deletes, in deletion order within each list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// Backup IDs deleted, complete ones first.
    pub backups: Vec<String>,
    /// IDs kept, with the rule that keeps each.
    pub kept: Vec<(String, String)>,
    /// The first segment's start LSN that is kept; WAL below it is deleted.
    pub wal_cut: Option<u64>,
    /// `backup.json` keys of the deleted backups: deleted first.
    pub completions: Vec<String>,
    /// Every other key (backup objects, then WAL).
    pub keys: Vec<String>,
    pub wal_objects: usize,
    pub bytes: u64,
}

fn plan_key(cluster: &str) -> String {
    format!("{}{PLAN}", backups_prefix(cluster))
}

/// Computes the plan from the current listing; nothing is written.
pub(crate) async fn plan(
    storage: &dyn RemoteStorage,
    cluster: &str,
    seg_size: Option<u32>,
    policy: &Policy,
    cancel: &CancellationToken,
) -> Result<Plan> {
    if policy.keep_last.is_none() && policy.keep_within.is_none() {
        bail!("a retention policy needs --keep-last or --keep-within");
    }
    let list = list_backups(storage, cluster, cancel).await?;
    let window = Window::load(storage, cluster, seg_size, &list, cancel).await?;
    let Some(newest_usable) = window.usable.last() else {
        bail!("the archive has no usable backup; retention deletes nothing without one");
    };
    let now = unix_secs(SystemTime::now());
    let mut p = Plan::default();
    let n = list.complete.len();
    let mut oldest_kept = None;
    for (i, b) in list.complete.iter().enumerate() {
        let rule = if policy.keep_last.is_some_and(|k| n - i <= k) {
            Some("one of the newest --keep-last")
        } else if policy
            .keep_within
            .is_some_and(|w| now - b.end_unix <= w.as_secs_f64())
        {
            Some("ended within --keep-within")
        } else if b.id == newest_usable.id {
            Some("the newest usable backup")
        } else if oldest_kept.is_some() {
            Some("newer than a kept backup")
        } else {
            None
        };
        if let Some(rule) = rule {
            p.kept.push((b.id.clone(), rule.to_string()));
            oldest_kept = oldest_kept.or(Some(b));
        }
    }
    let oldest = oldest_kept.context("no backup kept")?;
    let metas = storage
        .list_all(&backups_prefix(cluster), ListOptions::default(), cancel)
        .await?;
    let prefix = backups_prefix(cluster);
    for b in list
        .complete
        .iter()
        .filter(|b| b.start_lsn < oldest.start_lsn)
    {
        p.backups.push(b.id.clone());
    }
    let cutoff = SystemTime::now()
        .checked_sub(policy.incomplete_after)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    for id in &list.incomplete {
        let dir = format!("{prefix}{id}/");
        let newest = metas
            .iter()
            .filter(|m| m.key.starts_with(&dir))
            .filter_map(|m| m.last_modified)
            .max();
        if newest.is_some_and(|t| t < cutoff) {
            p.backups.push(id.clone());
        }
    }
    for id in &p.backups {
        let dir = format!("{prefix}{id}/");
        for m in metas.iter().filter(|m| m.key.starts_with(&dir)) {
            p.bytes += m.size;
            if m.key.ends_with(&format!("/{COMPLETION}")) {
                p.completions.push(m.key.clone());
            } else {
                p.keys.push(m.key.clone());
            }
        }
    }
    let a = &window.archive;
    let cut = Lsn(oldest.start_lsn).segment_number(a.seg_size);
    p.wal_cut = Some(Lsn::from_segment(cut, a.seg_size).0);
    for t in a.timelines.values() {
        for (_, m) in t.segments.range(..cut) {
            p.keys.push(m.key.clone());
            p.bytes += m.size;
            p.wal_objects += 1;
        }
        for (_, pieces) in t.pieces.range(..cut) {
            for piece in pieces {
                p.keys.push(piece.key.clone());
                p.bytes += piece.size;
                p.wal_objects += 1;
            }
        }
    }
    Ok(p)
}

/// Finishes an interrupted pass, if its plan object exists; returns the keys it deleted.
pub(crate) async fn finish_pending(
    storage: &dyn RemoteStorage,
    cluster: &str,
    cancel: &CancellationToken,
) -> Result<Option<Plan>> {
    let Some(p) = pending(storage, cluster, cancel).await? else {
        return Ok(None);
    };
    info!(
        keys = p.completions.len() + p.keys.len(),
        "finishing an interrupted retention pass"
    );
    execute(storage, cluster, &p, cancel).await?;
    Ok(Some(p))
}

/// The plan of an interrupted pass.
pub(crate) async fn pending(
    storage: &dyn RemoteStorage,
    cluster: &str,
    cancel: &CancellationToken,
) -> Result<Option<Plan>> {
    let key = plan_key(cluster);
    match get_object(storage, &key, cancel).await {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("{key} is not a plan"))?,
        )),
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<remote_storage::StorageError>()
                    .is_some_and(|s| s.kind() == ErrorKind::NotFound)
            }) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Stores the plan, then deletes what it names (see the module invariants).
pub(crate) async fn run_plan(
    storage: &dyn RemoteStorage,
    cluster: &str,
    p: &Plan,
    cancel: &CancellationToken,
) -> Result<()> {
    if p.completions.is_empty() && p.keys.is_empty() {
        return Ok(());
    }
    let body = Bytes::from(serde_json::to_vec(p)?);
    put_object(
        storage,
        &plan_key(cluster),
        body,
        &Compression::parse("zstd").map_err(anyhow::Error::msg)?,
        cancel,
    )
    .await?;
    fail::fail_point!("retention-after-plan", |_| crate::failpoint::crash(
        "retention-after-plan"
    ));
    execute(storage, cluster, p, cancel).await
}

async fn execute(
    storage: &dyn RemoteStorage,
    cluster: &str,
    p: &Plan,
    cancel: &CancellationToken,
) -> Result<()> {
    storage
        .delete_many(&p.completions, cancel)
        .await
        .context("cannot delete completion records")?;
    fail::fail_point!("retention-mid-delete", |_| crate::failpoint::crash(
        "retention-mid-delete"
    ));
    storage
        .delete_many(&p.keys, cancel)
        .await
        .context("cannot delete backup and WAL objects")?;
    storage
        .delete(&plan_key(cluster), cancel)
        .await
        .context("cannot delete the retention plan")?;
    Ok(())
}
