//! Following the upstream across timelines: the end of a timeline announced by the server, and a
//! fork found in the server's history below the WAL this safekeeper holds.
//!
//! Owns the order of a switch, each step durable before the next, so a crash anywhere redoes it:
//! 1. the new timeline's `.history` file is stored locally (the manager uploads it before any WAL
//!    of that timeline);
//! 2. the old timeline's final partial is uploaded (best effort, bounded: a periodic one exists);
//! 3. the new timeline's first segment is created, holding the bytes it shares with its parent;
//! 4. the control file starts a new term at the switch point (docs/architecture.md: a switch of timeline or
//!    a truncation of local WAL both start a new term).
//!
//! Never silent: a fork below our end, or WAL the upstream removed before we had it, is logged,
//! counted and shown in the cluster status. The WAL held beyond a fork point stays where it is
//! (old timeline's local files and remote objects); after removed WAL the incomplete segment is
//! set aside (`.partial.gap`, its last partial uploaded) and following resumes at the upstream's
//! current segment in a new term, so the archive has a visible, explained hole, never a silent one.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use control_file::Lsn;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Follower, SessionError};
use crate::cluster::status::ClusterStatus;
use crate::pg::{IdentifySystem, ReplicationConnection};
use crate::wal::store::{WalIdentity, WalStore, write_history_file};

/// Bound on the final partial upload of an ending timeline.
const FINAL_PARTIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// One line of a timeline history file: `parent` ended at `switchpoint`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct HistoryEntry {
    pub parent: u32,
    pub switchpoint: Lsn,
}

/// Parses a history file (`<parent tli>\t<switchpoint X/Y>\t<reason>` per line; blank lines and
/// `#` comments ignored, as PostgreSQL does).
pub(super) fn parse_history(content: &[u8]) -> Result<Vec<HistoryEntry>> {
    let text = std::str::from_utf8(content).context("timeline history is not UTF-8")?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let bad = || anyhow!("timeline history line {}: {line:?}", n + 1);
        let parent = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let switchpoint = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        out.push(HistoryEntry {
            parent,
            switchpoint,
        });
    }
    Ok(out)
}

/// Where timeline `ours` ends in the history of `server_timeline`, and which timeline follows:
/// `None` when `ours` is not an ancestor of the server's timeline.
pub(super) fn end_of_timeline(
    history: &[HistoryEntry],
    server_timeline: u32,
    ours: u32,
) -> Option<(Lsn, u32)> {
    let i = history.iter().position(|e| e.parent == ours)?;
    let next = history
        .get(i + 1)
        .map(|e| e.parent)
        .unwrap_or(server_timeline);
    Some((history[i].switchpoint, next))
}

impl Follower<'_> {
    /// Before streaming our timeline from a server on a newer one: if the server's history left
    /// our timeline below the WAL we hold, switch to the server's history at the fork point.
    pub(super) async fn follow_fork(
        &mut self,
        conn: &mut ReplicationConnection,
        server_timeline: u32,
        status: &watch::Sender<ClusterStatus>,
    ) -> Result<(), SessionError> {
        let wal = self.open_wal()?;
        let ours = wal.identity().timeline;
        if server_timeline <= ours {
            return Ok(());
        }
        let held = wal.flush()?;
        let (_, content) = conn.timeline_history(server_timeline).await?;
        let history = parse_history(&content)?;
        let Some((end, next)) = end_of_timeline(&history, server_timeline, ours) else {
            let msg = format!(
                "the server's timeline {server_timeline} does not descend from timeline {ours} \
                 that this safekeeper holds: not following an unrelated history"
            );
            self.report_gap(status, &msg);
            return Err(SessionError::Permanent(anyhow!(msg)));
        };
        if held > end {
            let msg = format!(
                "the upstream's history left timeline {ours} at {end}, below the {held} held \
                 here: the WAL in [{end}, {held}) of timeline {ours} is kept but not part of the \
                 new history; following timeline {next} from {end} in a new term"
            );
            self.report_gap(status, &msg);
            self.switch_timeline(conn, next, end, status).await?;
        }
        Ok(())
    }

    /// The upstream no longer has the WAL that follows what we hold (removed: the slot was
    /// dropped or `max_slot_wal_keep_size` exceeded). Keep what is held, set the incomplete
    /// segment aside, and follow the upstream from its current segment in a new term.
    pub(super) async fn follow_after_removed_wal(
        &mut self,
        conn: &mut ReplicationConnection,
        cause: &str,
        server_timeline: &mut u32,
        status: &watch::Sender<ClusterStatus>,
    ) -> Result<(), SessionError> {
        let server = conn.identify_system().await?;
        *server_timeline = (*server_timeline).max(server.timeline);
        self.jump_past_gap(conn, cause, &server, status).await
    }

    async fn jump_past_gap(
        &mut self,
        conn: &mut ReplicationConnection,
        cause: &str,
        server: &IdentifySystem,
        status: &watch::Sender<ClusterStatus>,
    ) -> Result<(), SessionError> {
        let wal_dir = self.settings.cluster_dir.join("wal");
        let held = self.open_wal()?.flush()?;
        let parent = self.open_wal()?.identity();
        let jump = Lsn(server.xlogpos).segment_start(parent.seg_size);
        if jump <= held {
            // Nothing to jump over: the error has another cause; let the caller retry.
            return Err(SessionError::Transient(anyhow!("{cause}")));
        }
        let msg = format!(
            "the primary no longer has the WAL after {held} on timeline {} ({cause}): the WAL \
             held up to {held} is kept (and its last partial uploaded); WAL in [{held}, {jump}) \
             is missing; following from {jump} on timeline {} in a new term",
            parent.timeline, server.timeline
        );
        self.report_gap(status, &msg);
        match tokio::time::timeout(FINAL_PARTIAL_TIMEOUT, self.control.upload_partial_now()).await {
            Ok(Ok(name)) => info!(object = ?name, "last partial before the gap uploaded"),
            _ => warn!("last partial before the gap not uploaded now; a periodic one exists"),
        }
        if server.timeline != parent.timeline {
            let (_, content) = conn.timeline_history(server.timeline).await?;
            write_history_file(&wal_dir, server.timeline, &content)?;
        }
        self.open_wal()?.retire_open_segment()?;
        let store = WalStore::start_timeline(
            &wal_dir,
            WalIdentity {
                timeline: server.timeline,
                ..parent
            },
            jump,
            parent.timeline,
        )?;
        let timeline = server.timeline;
        self.control
            .update(Box::new(move |s| {
                s.start_term(timeline, jump);
                s.flush_lsn = jump;
                s.commit_lsn = jump;
            }))
            .await?;
        self.wal = Some(store.with_space(self.space_policy(timeline)));
        self.durable = jump;
        status.send_modify(|s| {
            s.timeline = Some(timeline);
            s.received_lsn = jump;
            s.flush_lsn = jump;
            s.commit_lsn = jump;
        });
        Ok(())
    }

    fn report_gap(&self, status: &watch::Sender<ClusterStatus>, msg: &str) {
        warn!(gap = %msg, "the upstream cannot continue the WAL held here: gap");
        status.send_modify(|s| {
            s.last_gap = Some(msg.to_string());
            s.gaps += 1;
        });
    }

    /// Switches to timeline `next`, which the upstream's history starts at `switch`.
    pub(super) async fn switch_timeline(
        &mut self,
        conn: &mut ReplicationConnection,
        next: u32,
        switch: Lsn,
        status: &watch::Sender<ClusterStatus>,
    ) -> Result<(), SessionError> {
        let wal_dir = self.settings.cluster_dir.join("wal");
        let (_, content) = conn.timeline_history(next).await?;
        write_history_file(&wal_dir, next, &content)?;

        match tokio::time::timeout(FINAL_PARTIAL_TIMEOUT, self.control.upload_partial_now()).await {
            Ok(Ok(name)) => info!(object = ?name, "final partial of the ending timeline uploaded"),
            Ok(Err(e)) => {
                warn!(error = %format!("{e:#}"), "final partial of the ending timeline not uploaded")
            }
            Err(_) => warn!("final partial of the ending timeline not uploaded in time"),
        }

        let old = self.open_wal()?;
        let flushed = old.flush()?;
        let parent = old.identity();
        // Bytes below `switch` we do not have yet are streamed on the new timeline, whose history
        // holds them too; bytes above it (a fork) stay behind on the parent timeline.
        let start = flushed.min(switch);
        let store = WalStore::start_timeline(
            &wal_dir,
            WalIdentity {
                timeline: next,
                ..parent
            },
            start,
            parent.timeline,
        )?;
        let seg_size = parent.seg_size;
        let mut term = 0;
        self.control
            .update(Box::new(move |s| {
                s.start_term(next, start);
                s.flush_lsn = s.flush_lsn.min(start);
                s.commit_lsn = s.commit_lsn.min(start);
                s.backup_lsn = s.backup_lsn.min(start.segment_start(seg_size));
            }))
            .await?;
        if let Some(st) = self.control.snapshot() {
            term = st.term;
        }
        self.wal = Some(store.with_space(self.space_policy(next)));
        self.durable = start;
        status.send_modify(|s| {
            s.timeline = Some(next);
            s.received_lsn = start;
            s.flush_lsn = start;
            s.commit_lsn = s.commit_lsn.min(start);
        });
        info!(from = parent.timeline, to = next, at = %start, switch = %switch, term, "switched timeline");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_parses_and_locates_our_end() {
        let content =
            b"1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2000-01-01\n";
        let h = parse_history(content).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(end_of_timeline(&h, 3, 1), Some((Lsn(0x300_0158), 2)));
        assert_eq!(end_of_timeline(&h, 3, 2), Some((Lsn(0x500_0000), 3)));
        assert_eq!(end_of_timeline(&h, 3, 7), None);
        assert!(parse_history(b"x\t0/1\n").is_err());
        assert!(parse_history(b"1\tnot-an-lsn\n").is_err());
    }
}
