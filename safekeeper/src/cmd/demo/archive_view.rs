//! What the demo shows of the archive: whether it already holds a given LSN, and a short listing
//! of its objects for a newcomer (full segments as ranges, every partial with its commit LSN).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio_util::sync::CancellationToken;

use crate::archive::{Archive, human_bytes};
use crate::pg::format_lsn;
use crate::remote::{S3Args, open_remote};

/// The object that holds WAL up to at least `lsn`: a full segment ending at or after it, or a
/// partial whose commit LSN is at or after it.
pub(super) fn covering(archive: &Archive, lsn: u64) -> Option<String> {
    let seg = u64::from(archive.seg_size);
    for (tli, t) in &archive.timelines {
        if let Some((segno, _)) = t.segments.iter().find(|(s, _)| (*s + 1) * seg >= lsn) {
            return Some(archive.segment_name(*tli, *segno));
        }
        if let Some(p) = t
            .partials
            .values()
            .flatten()
            .find(|p| p.name.commit_lsn.0 >= lsn)
        {
            return Some(p.key.rsplit('/').next().unwrap_or(&p.key).to_string());
        }
    }
    None
}

/// Polls the archive of cluster `main` until an object covers `lsn`; returns the listing.
pub(super) async fn wait_until_covered(url: &str, lsn: u64, limit: Duration) -> Result<Archive> {
    let storage = open_remote(url, &S3Args::default()).await?;
    let cancel = CancellationToken::new();
    let deadline = Instant::now() + limit;
    loop {
        let archive = Archive::load(&*storage, "main", None, &cancel).await?;
        if covering(&archive, lsn).is_some() {
            return Ok(archive);
        }
        if Instant::now() >= deadline {
            bail!(
                "the archive holds no WAL up to {} after {} s",
                format_lsn(lsn),
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One line per full-segment range, partial and history file; `last_commit` marks the partial
/// (or segment) that holds it.
pub(super) fn render(archive: &Archive, last_commit: u64) -> Vec<String> {
    let marked = covering(archive, last_commit);
    let mark = |name: &str| {
        if marked.as_deref() == Some(name) {
            "  <- holds the last commit"
        } else {
            ""
        }
    };
    let mut lines = Vec::new();
    for (tli, t) in &archive.timelines {
        for range in t.segment_ranges() {
            let first = archive.segment_name(*tli, *range.start());
            let count = range.end() - range.start() + 1;
            let size = human_bytes(u64::from(archive.seg_size));
            if count == 1 {
                lines.push(format!("{first}  full segment, {size}{}", mark(&first)));
            } else {
                let last = archive.segment_name(*tli, *range.end());
                lines.push(format!(
                    "{first} .. {last}  {count} full segments, {size} each{}",
                    mark(&last)
                ));
            }
        }
        for p in t.partials.values().flatten() {
            let name = p.key.rsplit('/').next().unwrap_or(&p.key);
            lines.push(format!(
                "{name}  partial, {}: WAL up to {} (term {}, from safekeeper {}){}",
                human_bytes(p.wal_bytes(archive.seg_size)),
                format_lsn(p.name.commit_lsn.0),
                p.name.term,
                p.name.sk_id,
                mark(name)
            ));
        }
    }
    for (tli, meta) in &archive.histories {
        lines.push(format!(
            "{tli:08X}.history  timeline history, {}",
            human_bytes(meta.size)
        ));
    }
    lines
}
