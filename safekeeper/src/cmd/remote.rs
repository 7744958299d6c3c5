//! `safekeeper remote ls|verify|prune`: what a cluster's archive holds, whether it can be
//! trusted, and removing the superseded partials crashes and retired safekeepers leave behind.
//!
//! Owns the rendering of [`Archive`] listings (with, in `ls`, the quorum view: per segment, how
//! much WAL each safekeeper's newest partial holds, so an operator sees that the archive holds
//! every commit any of them acknowledged), verification reports and prune plans as text and
//! JSON, and the exit status: `ls` exits 0, or 1 when the storage cannot be listed; `verify`
//! exits 0 when no error was found (warnings allowed), 1 when it found errors (every problem is
//! printed, naming its object), 2 when the check could not run (bad arguments, storage
//! unreachable), and with `--strict` 3 when it found warnings but no error, so a monitor can
//! tell "recovery at risk" (1) from "needs tidying" (3); `prune` exits 0 when it did what it
//! printed (or, in a dry run, could have), 1 otherwise.
//!
//! Warnings do not fail `verify` by default: a live archive always may hold a partial that was
//! superseded a moment ago and waits for its safekeeper's GC, and an alarm that fires on every
//! healthy archive teaches people to ignore it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use control_file::Lsn;
use remote_storage::RemoteStorage;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::archive::prune;
use crate::archive::verify::{Severity, VerifyOptions, verify_archive};
use crate::archive::{
    Archive, PartialObject, SegmentSizeSource, TimelineObjects, best_partial, human_bytes,
    ranked_candidates,
};

use super::archive_args::{ArchiveArgs, runtime};

#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// List a cluster's archive: timelines, segment ranges and gaps, every partial (term, commit
    /// LSN, safekeeper id), the quorum view (per segment, how much WAL each safekeeper holds),
    /// history files and the total size.
    Ls(LsArgs),
    /// Check a cluster's archive: continuity, checksums, WAL page headers and records, system
    /// identifier, partials against the full segments that supersede them; superseded partials
    /// still present are warnings. Exit 0: no error (warnings allowed); 1: errors (recovery at
    /// risk); 2: the check could not run; with --strict, 3: warnings but no error.
    Verify(VerifyArgs),
    /// Delete superseded partials: those whose segment's full object exists, and older versions
    /// of the same safekeeper's partial of a segment (leftovers of crashes and of retired
    /// safekeepers). Dry run by default: prints what it would delete and the bytes; --delete
    /// deletes. Never deletes the partial restore serves, anything not superseded, or a partial
    /// whose bytes differ from what supersedes it; those, and every other object restore does
    /// not use, are listed as kept with the reason.
    Prune(PruneArgs),
    /// Print the decoded bytes of one object (or of a partial version assembled from its pieces).
    #[command(hide = true)]
    Cat(super::remote_cat::CatArgs),
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Objects read in parallel.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
    /// The system identifier every segment must carry (default: the most common one).
    #[arg(long, value_name = "ID")]
    pub system_identifier: Option<u64>,
    /// Exit 3 when warnings (e.g. superseded partials, objects without a crc32c) but no errors
    /// were found, instead of 0.
    #[arg(long)]
    pub strict: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Delete the superseded partials (default: only print what would be deleted).
    #[arg(long)]
    pub delete: bool,
    /// Print the plan (and what was deleted) as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: RemoteCommand) -> ExitCode {
    let cancel = CancellationToken::new();
    match command {
        RemoteCommand::Ls(args) => match runtime().and_then(|rt| rt.block_on(ls(&args, &cancel))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        RemoteCommand::Verify(args) => {
            match runtime().and_then(|rt| rt.block_on(verify(&args, &cancel))) {
                Ok(Verdict::Clean) => ExitCode::SUCCESS,
                Ok(Verdict::Errors) => ExitCode::FAILURE,
                Ok(Verdict::Warnings) if args.strict => ExitCode::from(3),
                Ok(Verdict::Warnings) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: the check could not run: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        RemoteCommand::Cat(args) => super::remote_cat::run(args),
        RemoteCommand::Prune(args) => {
            match runtime().and_then(|rt| rt.block_on(prune(&args, &cancel))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// What `verify` found, worst first.
enum Verdict {
    Errors,
    Warnings,
    Clean,
}

/// Writes to stdout; a closed pipe (`| head`) is not worth a panic.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

async fn load(args: &ArchiveArgs, cancel: &CancellationToken) -> Result<Archive> {
    Ok(open_and_load(args, cancel).await?.1)
}

/// The storage and the archive listed from it (`verify` and `prune` read objects afterwards).
async fn open_and_load(
    args: &ArchiveArgs,
    cancel: &CancellationToken,
) -> Result<(Arc<dyn RemoteStorage>, Archive)> {
    let storage = args.open().await?;
    let archive = Archive::load(&*storage, &args.cluster, args.wal_segment_size, cancel).await?;
    Ok((storage, archive))
}

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

async fn ls(args: &LsArgs, cancel: &CancellationToken) -> Result<()> {
    let archive = load(&args.archive, cancel).await?;
    let text = if args.json {
        serde_json::to_string_pretty(&ls_json(&args.archive.remote, &archive))? + "\n"
    } else {
        ls_text(&args.archive.remote, &archive)
    };
    emit(&text);
    Ok(())
}

fn ls_json(remote: &str, a: &Archive) -> serde_json::Value {
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

fn ls_text(remote: &str, a: &Archive) -> String {
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
                    match p.pieces.len() {
                        1 => "1 piece".to_string(),
                        n => format!("{n} pieces"),
                    }
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

async fn verify(args: &VerifyArgs, cancel: &CancellationToken) -> Result<Verdict> {
    let (storage, archive) = open_and_load(&args.archive, cancel).await?;
    let opts = VerifyOptions {
        jobs: args.jobs,
        system_identifier: args.system_identifier,
    };
    let report = verify_archive(&*storage, &archive, &opts, cancel).await?;
    let clean = report.errors() == 0;
    let verdict = match (report.errors(), report.warnings()) {
        (0, 0) => Verdict::Clean,
        (0, _) => Verdict::Warnings,
        _ => Verdict::Errors,
    };
    if args.json {
        let doc = json!({
            "remote": args.archive.remote,
            "cluster": archive.cluster,
            "segment_size": archive.seg_size,
            "clean": clean,
            "errors": report.errors(),
            "warnings": report.warnings(),
            "report": report,
        });
        emit(&(serde_json::to_string_pretty(&doc)? + "\n"));
        return Ok(verdict);
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "verified cluster {} in {}: {} objects read ({}), segment size {}, system identifier {}",
        archive.cluster,
        args.archive.remote,
        report.objects_read,
        human_bytes(report.bytes_read),
        human_bytes(u64::from(archive.seg_size)),
        report
            .system_identifier
            .map_or("unknown".to_string(), |id| id.to_string())
    );
    for p in &report.problems {
        let tag = match p.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "WARN ",
        };
        let _ = writeln!(s, "{tag} {}: {}", p.object, p.message);
    }
    let _ = writeln!(
        s,
        "{}: {} errors, {} warnings",
        if clean { "clean" } else { "PROBLEMS FOUND" },
        report.errors(),
        report.warnings()
    );
    emit(&s);
    Ok(verdict)
}

/// `remote prune`: classify, confirm by content, print, and with `--delete` delete.
async fn prune(args: &PruneArgs, cancel: &CancellationToken) -> Result<()> {
    let (storage, archive) = open_and_load(&args.archive, cancel).await?;
    let plan = prune::confirm(
        &*storage,
        prune::classify(&archive),
        archive.seg_size,
        cancel,
    )
    .await?;
    let keys: Vec<String> = plan.superseded.iter().map(|s| s.key.clone()).collect();
    let bytes = plan.superseded_bytes();
    if !args.json {
        emit(&prune_text(
            &args.archive.remote,
            &archive,
            &plan,
            args.delete,
        ));
    }
    if args.delete && !keys.is_empty() {
        storage
            .delete_many(&keys, cancel)
            .await
            .with_context(|| format!("deleting {} superseded partials", keys.len()))?;
    }
    if args.json {
        let doc = json!({
            "remote": args.archive.remote,
            "cluster": archive.cluster,
            "dry_run": !args.delete,
            "deleted": if args.delete { keys.len() } else { 0 },
            "bytes": bytes,
            "superseded": plan.superseded,
            "kept": plan.kept,
        });
        emit(&(serde_json::to_string_pretty(&doc)? + "\n"));
    } else if args.delete {
        emit(&format!(
            "deleted {} superseded partials, {bytes} bytes ({})\n",
            keys.len(),
            human_bytes(bytes)
        ));
    }
    Ok(())
}

fn prune_text(remote: &str, a: &Archive, plan: &prune::Classification, delete: bool) -> String {
    let mut s = String::new();
    let verb = if delete { "delete" } else { "would delete" };
    let _ = writeln!(
        s,
        "prune cluster {} in {remote}{}",
        a.cluster,
        if delete {
            ""
        } else {
            ": dry run, nothing is deleted (--delete deletes)"
        }
    );
    for p in &plan.superseded {
        let _ = writeln!(
            s,
            "{verb} {} ({} bytes): {}",
            p.key,
            p.size,
            p.by.describe()
        );
    }
    for k in &plan.kept {
        let _ = writeln!(s, "keep {} ({} bytes): {}", k.key, k.size, k.reason);
    }
    let bytes = plan.superseded_bytes();
    let _ = writeln!(
        s,
        "{verb}: {} superseded partials, {bytes} bytes ({}); {} other objects kept",
        plan.superseded.len(),
        human_bytes(bytes),
        plan.kept.len()
    );
    s
}
