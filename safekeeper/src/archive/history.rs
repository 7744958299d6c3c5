//! Timeline history files (`TTTTTTTT.history`) and the timeline path they describe.
//!
//! Owns the parsing of PostgreSQL's history file format: one line per ancestor timeline,
//! `parentTLI <tab> switchpoint X/Y <tab> reason`, `#` comments and blank lines allowed; and the
//! rule PostgreSQL uses to pick the timeline of a segment during recovery
//! (`XLogFileReadAnyTLI`): newest timeline first, among those whose span covers the segment.
//!
//! Invariant: a parsed history is strictly increasing in both timeline id and switch point and
//! names only ancestors older than the timeline it belongs to; anything else is an error, because
//! a recovery that follows a malformed history could replay WAL of the wrong timeline.

use anyhow::{Result, bail};
use control_file::Lsn;
use control_file::names::TimelineId;

/// One ancestor: timeline `tli` ended (and its child began) at `switch_lsn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct HistoryEntry {
    pub tli: TimelineId,
    #[serde(serialize_with = "lsn_text")]
    pub switch_lsn: Lsn,
}

fn lsn_text<S: serde::Serializer>(lsn: &Lsn, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(lsn)
}

/// Parses the history file of timeline `of`.
pub(crate) fn parse_history(of: TimelineId, text: &str) -> Result<Vec<HistoryEntry>> {
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
            bail!("line {}: expected 'parentTLI switchpoint reason'", n + 1);
        };
        let Ok(tli) = tli.parse::<TimelineId>() else {
            bail!("line {}: timeline {tli:?} is not a number", n + 1);
        };
        let switch_lsn: Lsn = lsn
            .parse()
            .map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?;
        if let Some(prev) = entries.last()
            && (tli <= prev.tli || switch_lsn < prev.switch_lsn)
        {
            bail!(
                "line {}: timeline {tli} at {switch_lsn} does not follow timeline {} at {}",
                n + 1,
                prev.tli,
                prev.switch_lsn
            );
        }
        if tli == 0 || tli >= of {
            bail!(
                "line {}: timeline {tli} cannot be an ancestor of timeline {of}",
                n + 1
            );
        }
        entries.push(HistoryEntry { tli, switch_lsn });
    }
    Ok(entries)
}

/// The stretch of WAL a timeline contributes to the path of the target timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimelineSpan {
    pub tli: TimelineId,
    /// Where this timeline's WAL starts on the path (0/0 for the first one).
    pub begin: Lsn,
    /// Where the next timeline takes over; `None` for the target timeline.
    pub end: Option<Lsn>,
}

impl TimelineSpan {
    /// Whether PostgreSQL may read segment `segno` from this timeline: its first segment is the
    /// one holding `begin`, its last the one holding the byte before `end`.
    pub(crate) fn covers(&self, segno: u64, seg_size: u32) -> bool {
        let first = self.begin.segment_number(seg_size);
        let last = self
            .end
            .map(|e| Lsn(e.0.saturating_sub(1)).segment_number(seg_size));
        segno >= first && last.is_none_or(|l| segno <= l)
    }
}

/// The timelines leading to `target`, oldest first, from its parsed history (empty for timeline 1
/// or when the history is unknown: then the target alone, from 0/0).
pub(crate) fn timeline_path(target: TimelineId, history: &[HistoryEntry]) -> Vec<TimelineSpan> {
    let mut path = Vec::with_capacity(history.len() + 1);
    let mut begin = Lsn::INVALID;
    for entry in history {
        path.push(TimelineSpan {
            tli: entry.tli,
            begin,
            end: Some(entry.switch_lsn),
        });
        begin = entry.switch_lsn;
    }
    path.push(TimelineSpan {
        tli: target,
        begin,
        end: None,
    });
    path
}

/// Timelines PostgreSQL would try for `segno`, in the order it tries them (newest first).
pub(crate) fn candidate_timelines(
    path: &[TimelineSpan],
    segno: u64,
    seg_size: u32,
) -> Vec<TimelineId> {
    path.iter()
        .rev()
        .filter(|span| span.covers(segno, seg_size))
        .map(|span| span.tli)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u32 = 16 << 20;

    #[test]
    fn parses_postgres_history_files() {
        let text = "1\t0/3000158\tno recovery target specified\n\n\
                    # comment\n2\t0/5000000\tat restore point \"x\"\n";
        let h = parse_history(3, text).expect("valid");
        assert_eq!(
            h,
            vec![
                HistoryEntry {
                    tli: 1,
                    switch_lsn: Lsn(0x300_0158)
                },
                HistoryEntry {
                    tli: 2,
                    switch_lsn: Lsn(0x500_0000)
                },
            ]
        );
        let path = timeline_path(3, &h);
        assert_eq!(path.len(), 3);
        // Segment 3 holds the first switch: timeline 2 first, then 1.
        assert_eq!(candidate_timelines(&path, 3, SEG), vec![2, 1]);
        assert_eq!(candidate_timelines(&path, 2, SEG), vec![1]);
        // The second switch is exactly at the start of segment 5: timeline 2 ends in segment 4.
        assert_eq!(candidate_timelines(&path, 4, SEG), vec![2]);
        assert_eq!(candidate_timelines(&path, 5, SEG), vec![3]);
        assert_eq!(candidate_timelines(&path, 9, SEG), vec![3]);
    }

    #[test]
    fn rejects_malformed_histories() {
        for bad in [
            "x\t0/3000000\tr",
            "1\tnope\tr",
            "2\t0/3000000\tr\n1\t0/4000000\tr",
            "1\t0/4000000\tr\n2\t0/3000000\tr",
            "3\t0/4000000\tr",
        ] {
            assert!(parse_history(3, bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_history(1, "").expect("empty"), vec![]);
    }
}
