//! The recoverable window: which backups the WAL archive can carry forward, and the earliest and
//! latest point a restore can reach.
//!
//! Rules: a complete backup is *usable* when its timeline lies on the path of the archive's
//! newest timeline (its history file) and every segment from the one holding its start LSN to
//! the end of the archive's WAL is in the archive, on a timeline PostgreSQL would read it from
//! (a full segment, or the best partial for the last one). The earliest point is the oldest
//! usable backup's end (LSN and time); the latest is the end of the WAL on the newest timeline,
//! with the time the newest WAL object was stored (an upper bound of the last commit's time), or
//! the newest usable backup's end time if that is later.

use std::time::SystemTime;

use anyhow::{Context, Result};
use control_file::Lsn;
use remote_storage::{ListOptions, RemoteStorage, RemoteStorageExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{BackupList, BackupRecord, get_object, unix_secs};
use crate::archive::Archive;
use crate::archive::history::{TimelineSpan, candidate_timelines, parse_history, timeline_path};
use crate::remote::{history_key, wal_prefix};

/// End of the WAL of `timeline` in the archive: its best partial past the last full segment,
/// else the end of the last full segment.
pub(crate) fn wal_end(archive: &Archive, timeline: u32) -> Option<u64> {
    let t = archive.timelines.get(&timeline)?;
    let last_full = t.segments.keys().next_back().copied();
    let tail = t
        .partials
        .keys()
        .rev()
        .find(|&&s| last_full.is_none_or(|l| s > l))
        .and_then(|&s| t.served_partial(s));
    match (tail, last_full) {
        (Some(p), _) => Some(p.name.commit_lsn.0),
        (None, Some(l)) => Some(Lsn::from_segment(l + 1, archive.seg_size).0),
        (None, None) => None,
    }
}

/// A point a restore can reach.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    pub lsn: u64,
    pub timeline: u32,
    /// Seconds since the Unix epoch.
    pub time: Option<f64>,
    /// The backup a restore to this point starts from (earliest point only).
    pub backup: Option<String>,
}

/// Everything restore and `remote ls` need to know about the archive's reach.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub archive: Archive,
    pub path: Vec<TimelineSpan>,
    /// Complete backups the WAL carries to the end, oldest first.
    pub usable: Vec<BackupRecord>,
    /// Complete backups that are not usable, with the reason.
    pub unusable: Vec<(BackupRecord, String)>,
    pub earliest: Option<Point>,
    pub latest: Option<Point>,
}

impl Window {
    /// Reads the WAL archive (and the newest timeline's history) and judges `backups`.
    pub(crate) async fn load(
        storage: &dyn RemoteStorage,
        cluster: &str,
        seg_size: Option<u32>,
        backups: &BackupList,
        cancel: &CancellationToken,
    ) -> Result<Window> {
        let archive = Archive::load(storage, cluster, seg_size, cancel)
            .await
            .context("cannot list the WAL archive")?;
        let newest = archive.newest_timeline();
        let mut path = Vec::new();
        if let Some(tli) = newest {
            let history = if tli > 1 && archive.histories.contains_key(&tli) {
                let text = get_object(storage, &history_key(cluster, tli), cancel).await?;
                parse_history(tli, &String::from_utf8_lossy(&text))?
            } else {
                Vec::new()
            };
            path = timeline_path(tli, &history);
        }
        let latest_time = newest_object_time(storage, cluster, cancel).await?;
        let mut w = Window {
            latest: newest.and_then(|tli| {
                Some(Point {
                    lsn: wal_end(&archive, tli)?,
                    timeline: tli,
                    time: latest_time,
                    backup: None,
                })
            }),
            archive,
            path,
            usable: Vec::new(),
            unusable: Vec::new(),
            earliest: None,
        };
        for b in &backups.complete {
            match w.check(b) {
                Ok(()) => w.usable.push(b.clone()),
                Err(why) => w.unusable.push((b.clone(), why)),
            }
        }
        // The newest backup's end is reachable too: the segment switch at its end is often
        // stored before the backup process noted its end time.
        if let (Some(latest), Some(b)) = (&mut w.latest, w.usable.last()) {
            latest.time = latest.time.map(|t| t.max(b.end_unix));
        }
        w.earliest = w.usable.first().map(|b| Point {
            lsn: b.end_lsn,
            timeline: b.end_timeline,
            time: Some(b.end_unix),
            backup: Some(b.id.clone()),
        });
        Ok(w)
    }

    /// Whether the WAL archive carries `b` to the end of the WAL; the reason when not.
    fn check(&self, b: &BackupRecord) -> Result<(), String> {
        let Some(latest) = &self.latest else {
            return Err("the WAL archive is empty".into());
        };
        let seg = self.archive.seg_size;
        let start_seg = Lsn(b.start_lsn).segment_number(seg);
        let on_path = self
            .path
            .iter()
            .any(|s| s.tli == b.timeline && s.covers(start_seg, seg));
        if !on_path {
            return Err(format!(
                "its timeline {} is not on the history of the newest timeline {}",
                b.timeline, latest.timeline
            ));
        }
        if latest.lsn < b.end_lsn {
            return Err("the WAL archive ends before the backup's end".into());
        }
        let end_seg = Lsn(latest.lsn.saturating_sub(1)).segment_number(seg);
        for segno in start_seg..=end_seg {
            let found = candidate_timelines(&self.path, segno, seg)
                .iter()
                .any(|tli| {
                    self.archive.timelines.get(tli).is_some_and(|t| {
                        t.segments.contains_key(&segno)
                            || (segno == end_seg && t.served_partial(segno).is_some())
                    })
                });
            if !found {
                return Err(format!(
                    "segment {} is missing from the WAL archive",
                    self.archive.segment_name(b.timeline, segno)
                ));
            }
        }
        Ok(())
    }
}

/// When the newest object under `<cluster>/wal/` was stored.
async fn newest_object_time(
    storage: &dyn RemoteStorage,
    cluster: &str,
    cancel: &CancellationToken,
) -> Result<Option<f64>> {
    let metas = storage
        .list_all(&wal_prefix(cluster), ListOptions::default(), cancel)
        .await?;
    Ok(metas
        .iter()
        .filter_map(|m| m.last_modified)
        .max()
        .map(|t: SystemTime| unix_secs(t)))
}
