//! What `safekeeper remote ls` prints: an archive's timelines, segment ranges and gaps, every
//! partial version (its logical name, the pieces that store it, WAL and stored bytes), pieces on
//! no version's chain, the quorum view (per segment, how much WAL each safekeeper's newest
//! version holds, so an operator sees that the archive holds every commit any of them
//! acknowledged), history files and totals, as text or JSON; then the base backups (complete,
//! usable or not and why, incomplete) and the recoverable window.
//!
//! Owns only the rendering; every rule (which version is best, what a version is) is
//! `crate::archive`'s.

use std::fmt::Write as _;

use control_file::Lsn;
use serde_json::json;

use crate::archive::{
    Archive, PartialObject, SegmentSizeSource, TimelineObjects, best_partial, human_bytes,
    ranked_candidates,
};
use crate::backup::window::{Point, Window};
use crate::backup::{BackupList, BackupRecord};
use crate::pg::format_lsn;

fn size_source(s: SegmentSizeSource) -> &'static str {
    match s {
        SegmentSizeSource::Given => "from --wal-segment-size",
        SegmentSizeSource::Inferred => "inferred from the full segments",
        SegmentSizeSource::Default => "default: no full segment to infer it from",
    }
}

/// End of the WAL of a timeline: its best partial past the last full segment, else the end of
/// the last full segment.
fn end_of_wal(archive: &Archive, t: &TimelineObjects) -> Option<Lsn> {
    let last_full = t.segments.keys().next_back().copied();
    let tail = t
        .partials
        .keys()
        .rev()
        .find(|&&s| last_full.is_none_or(|l| s > l))
        .and_then(|&s| t.served_partial(s));
    match (tail, last_full) {
        (Some(p), _) => Some(p.name.commit_lsn),
        (None, Some(l)) => Some(Lsn::from_segment(l + 1, archive.seg_size)),
        (None, None) => None,
    }
}

pub(crate) fn ls_json(remote: &str, a: &Archive) -> serde_json::Value {
    let run = |tli, r: &std::ops::RangeInclusive<u64>| {
        json!({
            "first": a.segment_name(tli, *r.start()),
            "last": a.segment_name(tli, *r.end()),
            "count": r.end() - r.start() + 1,
        })
    };
    let timelines: Vec<_> = a
        .timelines
        .iter()
        .map(|(&tli, t)| {
            let mut partials = Vec::new();
            let mut leftovers = Vec::new();
            for (segno, versions) in &t.partials {
                let best = t.served_partial(*segno);
                for p in versions {
                    partials.push(json!({
                        "key": p.key,
                        "segment": a.segment_name(tli, *segno),
                        "term": p.name.term,
                        "commit_lsn": p.name.commit_lsn.to_string(),
                        "sk_id": p.name.sk_id,
                        "size": p.stored_bytes(),
                        "wal_bytes": p.wal_bytes(a.seg_size),
                        "stored_bytes": p.stored_bytes(),
                        "pieces": p.pieces.iter().map(|q| &q.key).collect::<Vec<_>>(),
                        "best": best == Some(p),
                        "superseded": t.segments.contains_key(segno),
                    }));
                }
            }
            for segno in t.pieces.keys() {
                for q in t.off_chain(*segno) {
                    leftovers.push(json!({
                        "key": q.key,
                        "segment": a.segment_name(tli, *segno),
                        "start_lsn": q.name.start_lsn.to_string(),
                        "commit_lsn": q.name.commit_lsn.to_string(),
                        "term": q.name.term,
                        "sk_id": q.name.sk_id,
                        "size": q.size,
                    }));
                }
            }
            json!({
                "timeline": tli,
                "full_segments": t.segments.len(),
                "full_segment_bytes": t.segments.values().map(|m| m.size).sum::<u64>(),
                "ranges": t.segment_ranges().iter().map(|r| run(tli, r)).collect::<Vec<_>>(),
                "gaps": t.gaps().iter().map(|r| run(tli, r)).collect::<Vec<_>>(),
                "partials": partials,
                "leftover_pieces": leftovers,
                "quorum": quorum_json(a, tli, t),
                "end_of_wal": end_of_wal(a, t).map(|l| l.to_string()),
            })
        })
        .collect();
    json!({
        "remote": remote,
        "cluster": a.cluster,
        "segment_size": a.seg_size,
        "segment_size_source": a.seg_size_source,
        "timelines": timelines,
        "history_files": a.histories.iter().map(|(tli, m)| json!({
            "timeline": tli, "key": m.key, "size": m.size,
        })).collect::<Vec<_>>(),
        "unrecognized": a.unrecognized.iter().map(|(m, reason)| json!({
            "key": m.key, "size": m.size, "reason": reason,
        })).collect::<Vec<_>>(),
        "objects": a.object_count(),
        "total_size": a.total_size(),
    })
}

pub(crate) fn ls_text(remote: &str, a: &Archive) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "cluster {} in {remote}: {} objects, {}; segment size {} ({})",
        a.cluster,
        a.object_count(),
        human_bytes(a.total_size()),
        human_bytes(u64::from(a.seg_size)),
        size_source(a.seg_size_source)
    );
    if a.timelines.is_empty() && a.histories.is_empty() {
        let _ = writeln!(s, "no WAL");
    }
    for (&tli, t) in &a.timelines {
        let _ = writeln!(s, "timeline {tli}:");
        // Runs of segments and the gaps between them, in WAL order.
        let mut runs: Vec<(u64, String)> = t
            .segment_ranges()
            .into_iter()
            .map(|r| {
                let n = r.end() - r.start() + 1;
                let line = format!(
                    "  segments {} .. {} ({n} full segment{})",
                    a.segment_name(tli, *r.start()),
                    a.segment_name(tli, *r.end()),
                    if n == 1 { "" } else { "s" }
                );
                (*r.start(), line)
            })
            .collect();
        runs.extend(t.gaps().into_iter().map(|g| {
            let line = format!(
                "  GAP      {} .. {} ({} missing)",
                a.segment_name(tli, *g.start()),
                a.segment_name(tli, *g.end()),
                g.end() - g.start() + 1
            );
            (*g.start(), line)
        }));
        runs.sort();
        for (_, line) in runs {
            let _ = writeln!(s, "{line}");
        }
        partials_text(&mut s, a, tli, t);
        quorum_text(&mut s, a, tli, t);
        if let Some(end) = end_of_wal(a, t) {
            let _ = writeln!(s, "  end of WAL {end}");
        }
    }
    for (tli, m) in &a.histories {
        let _ = writeln!(
            s,
            "history  {} (timeline {tli}, {})",
            m.key,
            human_bytes(m.size)
        );
    }
    for (m, reason) in &a.unrecognized {
        let _ = writeln!(s, "unrecognized {} ({reason})", m.key);
    }
    s
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The versions of every segment of one timeline (with how they are stored), then the pieces on
/// no version's chain.
fn partials_text(s: &mut String, a: &Archive, tli: u32, t: &TimelineObjects) {
    for (segno, versions) in &t.partials {
        let best = best_partial(versions);
        let superseded = t.segments.contains_key(segno);
        for p in versions {
            let note = if superseded {
                "superseded by the full segment"
            } else if best == Some(p) {
                "best"
            } else {
                "not chosen"
            };
            let _ = writeln!(
                s,
                "  partial  {}  term {}  commit {}  sk{}  {} of WAL, {} stored in {}  ({note})",
                a.segment_name(tli, *segno),
                p.name.term,
                p.name.commit_lsn,
                p.name.sk_id,
                human_bytes(p.wal_bytes(a.seg_size)),
                human_bytes(p.stored_bytes()),
                plural(p.pieces.len(), "piece")
            );
        }
    }
    for segno in t.pieces.keys() {
        for q in t.off_chain(*segno) {
            let _ = writeln!(
                s,
                "  piece    {}  [{}, {})  term {}  sk{}  {} stored  (on no version's chain)",
                q.key.rsplit('/').next().unwrap_or(&q.key),
                q.name.start_lsn,
                q.name.commit_lsn,
                q.name.term,
                q.name.sk_id,
                human_bytes(q.size)
            );
        }
    }
}

/// Per segment holding partials: each safekeeper's newest version (the candidates restore
/// chooses among, best first) and whether the full segment supersedes them.
fn quorum(t: &TimelineObjects) -> Vec<(u64, bool, Vec<&PartialObject>)> {
    t.partials
        .iter()
        .map(|(segno, versions)| {
            (
                *segno,
                t.segments.contains_key(segno),
                ranked_candidates(versions),
            )
        })
        .collect()
}

fn quorum_json(a: &Archive, tli: u32, t: &TimelineObjects) -> Vec<serde_json::Value> {
    quorum(t)
        .into_iter()
        .map(|(segno, full, ranked)| {
            let sks: Vec<_> = ranked
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    json!({
                        "sk_id": p.name.sk_id,
                        "commit_lsn": p.name.commit_lsn.to_string(),
                        "term": p.name.term,
                        "bytes": p.wal_bytes(a.seg_size),
                        "stored_bytes": p.stored_bytes(),
                        "pieces": p.pieces.len(),
                        "key": p.key,
                        "best": i == 0 && !full,
                    })
                })
                .collect();
            json!({
                "segment": a.segment_name(tli, segno),
                "full_segment": full,
                "safekeepers": sks,
            })
        })
        .collect()
}

fn quorum_text(s: &mut String, a: &Archive, tli: u32, t: &TimelineObjects) {
    let rows = quorum(t);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "  quorum view (per segment, the WAL each safekeeper's newest partial holds; most first):"
    );
    for (segno, full, ranked) in rows {
        let held: Vec<String> = ranked
            .iter()
            .map(|p| {
                format!(
                    "sk{} up to {} ({}, term {})",
                    p.name.sk_id,
                    p.name.commit_lsn,
                    human_bytes(p.wal_bytes(a.seg_size)),
                    p.name.term
                )
            })
            .collect();
        let verdict = match (full, ranked.first()) {
            (true, _) => "superseded by the full segment".to_string(),
            (false, Some(best)) => format!("restore serves sk{}'s", best.name.sk_id),
            (false, None) => String::new(),
        };
        let _ = writeln!(
            s,
            "    {}  {}  [{verdict}]",
            a.segment_name(tli, segno),
            held.join(", ")
        );
    }
}

/// The backups section of `remote ls --json`: every backup and the recoverable window.
pub(crate) fn backups_json(list: &BackupList, w: &Window) -> serde_json::Value {
    let backup = |b: &BackupRecord, usable: bool, why: Option<&str>| {
        json!({
            "id": b.id,
            "timeline": b.timeline,
            "start_lsn": format_lsn(b.start_lsn),
            "end_lsn": format_lsn(b.end_lsn),
            "start_time": b.start_time,
            "end_time": b.end_time,
            "bytes": b.tar_bytes(),
            "stored_bytes": b.stored_bytes(),
            "chunks": b.archives.iter().map(|a| a.chunks.len()).sum::<usize>(),
            "usable": usable,
            "unusable_reason": why,
        })
    };
    let point = |p: &Option<Point>| {
        p.as_ref().map(|p| {
            json!({
                "lsn": format_lsn(p.lsn),
                "timeline": p.timeline,
                "time": p.time.map(show_time),
                "backup": p.backup,
            })
        })
    };
    let mut complete: Vec<_> = w.usable.iter().map(|b| backup(b, true, None)).collect();
    complete.extend(
        w.unusable
            .iter()
            .map(|(b, why)| backup(b, false, Some(why))),
    );
    json!({
        "complete": complete,
        "incomplete": list.incomplete,
        "window": {"earliest": point(&w.earliest), "latest": point(&w.latest)},
    })
}

/// The backups section of `remote ls`.
pub(crate) fn backups_text(list: &BackupList, w: &Window) -> String {
    let mut s = String::from("\nBase backups:\n");
    if list.complete.is_empty() && list.incomplete.is_empty() {
        s += "  none\n";
    }
    let line = |s: &mut String, b: &BackupRecord, note: &str| {
        let _ = writeln!(
            s,
            "  {}  timeline {}  LSN {} to {}  ended {}  {} ({} stored){note}",
            b.id,
            b.timeline,
            format_lsn(b.start_lsn),
            format_lsn(b.end_lsn),
            b.end_time,
            human_bytes(b.tar_bytes()),
            human_bytes(b.stored_bytes()),
        );
    };
    for b in &w.usable {
        line(&mut s, b, "");
    }
    for (b, why) in &w.unusable {
        line(&mut s, b, &format!("  NOT USABLE: {why}"));
    }
    for id in &list.incomplete {
        let _ = writeln!(s, "  {id}  incomplete (running, or left by a crash)");
    }
    let point = |p: &Point| {
        format!(
            "{} on timeline {} ({})",
            format_lsn(p.lsn),
            p.timeline,
            p.time.map_or("time unknown".into(), show_time)
        )
    };
    match (&w.earliest, &w.latest) {
        (Some(e), Some(l)) => {
            let _ = writeln!(
                s,
                "Recoverable window: earliest {} (end of backup {}), latest {}",
                point(e),
                e.backup.as_deref().unwrap_or("?"),
                point(l)
            );
        }
        _ => s += "Recoverable window: none (no usable backup)\n",
    }
    s
}

fn show_time(t: f64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
    humantime::format_rfc3339_millis(t).to_string()
}
