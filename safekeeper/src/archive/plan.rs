//! Which objects rebuild a `pg_wal` for a timeline: the plan `safekeeper recover` executes.
//!
//! Owns the walk along a timeline path, segment by segment, making exactly the choice PostgreSQL
//! would make through `restore-wal`: for each segment the timelines that cover it newest first
//! ([`candidate_timelines`]), and on each the full segment, else its best partial.
//!
//! Invariants: the planned segments are consecutive (the walk stops at the first segment no
//! timeline has); a partial is always the last step, because no WAL can follow the end of a
//! partial on the path; with `until`, no segment starting at or after `until` is planned.

use control_file::Lsn;
use control_file::names::{TimelineId, segment_file_name};

use super::history::{HistoryEntry, TimelineSpan, candidate_timelines, timeline_path};
use super::{Archive, PartialObject};

/// Where one planned segment comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Full { key: String, size: u64 },
    Partial(PartialObject),
}

/// One segment file to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    pub segno: u64,
    pub timeline: TimelineId,
    /// File name in the target directory (the segment's name on `timeline`).
    pub file_name: String,
    pub source: Source,
}

/// Why the walk stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The best partial (or the last full segment) of the path was reached.
    EndOfArchive,
    /// The next segment starts at or after `--until-lsn`.
    UntilLsn,
    /// No timeline has this segment although later WAL exists.
    Gap { missing: String },
}

/// What `recover` will write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub target: TimelineId,
    pub path: Vec<TimelineSpan>,
    pub steps: Vec<Step>,
    /// Keys of the history files to write (the target's and its ancestors' that exist).
    pub history_keys: Vec<(TimelineId, String)>,
    /// End of the WAL the written files hold.
    pub end_lsn: Lsn,
    pub stop: Stop,
}

/// Plans the segments of `target` (whose parsed history is `history`) from `from` (default: the
/// oldest segment on the path) up to the end of the archive or `until`.
pub(crate) fn plan_recovery(
    archive: &Archive,
    target: TimelineId,
    history: &[HistoryEntry],
    from: Option<Lsn>,
    until: Option<Lsn>,
) -> Plan {
    let seg_size = archive.seg_size;
    let path = timeline_path(target, history);
    let on_path = |segno: u64, tli: TimelineId| {
        path.iter()
            .any(|span| span.tli == tli && span.covers(segno, seg_size))
    };
    // Every segment number that some timeline of the path could serve.
    let available: Vec<u64> = path
        .iter()
        .filter_map(|span| archive.timelines.get(&span.tli).map(|t| (span.tli, t)))
        .flat_map(|(tli, t)| {
            t.segments
                .keys()
                .chain(t.partials.keys())
                .copied()
                .filter(move |&s| on_path(s, tli))
        })
        .collect();
    let first = match from {
        Some(lsn) => Some(lsn.segment_number(seg_size)),
        None => available.iter().copied().min(),
    };
    let last_available = available.iter().copied().max();
    let history_keys = path
        .iter()
        .filter(|span| archive.histories.contains_key(&span.tli))
        .map(|span| {
            (
                span.tli,
                crate::remote::history_key(&archive.cluster, span.tli),
            )
        })
        .collect();
    let mut plan = Plan {
        target,
        path: path.clone(),
        steps: Vec::new(),
        history_keys,
        end_lsn: first.map_or(Lsn::INVALID, |s| Lsn::from_segment(s, seg_size)),
        stop: Stop::EndOfArchive,
    };
    let Some(mut segno) = first else {
        return plan;
    };
    loop {
        let start = Lsn::from_segment(segno, seg_size);
        if until.is_some_and(|u| start >= u) {
            plan.stop = Stop::UntilLsn;
            return plan;
        }
        let Some(step) = choose(archive, &path, segno) else {
            if last_available.is_some_and(|l| l > segno) {
                // Named on the timeline PostgreSQL would ask for first.
                let tli = candidate_timelines(&path, segno, seg_size)
                    .first()
                    .copied()
                    .unwrap_or(target);
                plan.stop = Stop::Gap {
                    missing: segment_file_name(tli, segno, seg_size),
                };
            }
            return plan;
        };
        let is_partial = matches!(step.source, Source::Partial(_));
        plan.end_lsn = match &step.source {
            Source::Partial(p) => p.name.commit_lsn,
            Source::Full { .. } => start + u64::from(seg_size),
        };
        plan.steps.push(step);
        if is_partial {
            return plan;
        }
        segno += 1;
    }
}

/// The object PostgreSQL would get for `segno`: newest covering timeline first, full segment
/// before partial.
fn choose(archive: &Archive, path: &[TimelineSpan], segno: u64) -> Option<Step> {
    for tli in candidate_timelines(path, segno, archive.seg_size) {
        let Some(objects) = archive.timelines.get(&tli) else {
            continue;
        };
        let source = if let Some(meta) = objects.segments.get(&segno) {
            Source::Full {
                key: meta.key.clone(),
                size: meta.size,
            }
        } else if let Some(p) = objects.served_partial(segno) {
            Source::Partial(p.clone())
        } else {
            continue;
        };
        return Some(Step {
            segno,
            timeline: tli,
            file_name: archive.segment_name(tli, segno),
            source,
        });
    }
    None
}
