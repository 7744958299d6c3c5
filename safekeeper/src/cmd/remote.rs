//! `safekeeper remote ls|verify|prune`: what a cluster's archive holds, whether it can be
//! trusted, and removing the superseded partials crashes and retired safekeepers leave behind.
//!
//! Owns the commands' arguments, the rendering of verification reports and prune plans as text
//! and JSON (`ls` is rendered by `remote_ls`, `cat` is `remote_cat`), and the exit status: `ls`
//! exits 0, or 1 when the storage cannot be listed; `verify` exits 0 when no error was found (warnings allowed), 1 when it found errors (every problem is
//! printed, naming its object), 2 when the check could not run (bad arguments, storage
//! unreachable), and with `--strict` 3 when it found warnings but no error, so a monitor can
//! tell "recovery at risk" (1) from "needs tidying" (3); `prune` exits 0 when it did what it
//! printed (or, in a dry run, could have), 1 otherwise; `retention` likewise (it is
//! `cmd/retention.rs`).
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
use remote_storage::RemoteStorage;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::archive::prune;
use crate::archive::verify::{Severity, VerifyOptions, verify_archive};
use crate::archive::{Archive, human_bytes};

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
    /// Delete base backups a policy no longer keeps, and the WAL only they need.
    ///
    /// Keeps the newest --keep-last backups and those that ended within --keep-within (and always
    /// the newest usable one); deletes older complete backups, incomplete ones older than
    /// --incomplete-after, and every WAL object of a segment below the oldest kept backup's start.
    /// Dry run by default; --delete stores the plan first, so a pass that crashes is finished by
    /// the next one.
    Retention(RetentionArgs),
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

#[derive(Args, Debug)]
pub struct RetentionArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Keep the newest N complete backups.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_last: Option<u64>,
    /// Keep every backup that ended within this long, e.g. 7d.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Delete incomplete backups (crashed) whose newest object is older than this.
    #[arg(long, default_value = "24h", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub incomplete_after: std::time::Duration,
    /// Delete (default: only print the plan).
    #[arg(long)]
    pub delete: bool,
    /// Print the plan as JSON.
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
        RemoteCommand::Retention(args) => {
            match runtime().and_then(|rt| rt.block_on(super::retention::run(&args, &cancel))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
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

/// The storage and the archive listed from it (`verify` and `prune` read objects afterwards).
async fn open_and_load(
    args: &ArchiveArgs,
    cancel: &CancellationToken,
) -> Result<(Arc<dyn RemoteStorage>, Archive)> {
    let storage = args.open().await?;
    let archive = Archive::load(&*storage, &args.cluster, args.wal_segment_size, cancel).await?;
    Ok((storage, archive))
}

async fn ls(args: &LsArgs, cancel: &CancellationToken) -> Result<()> {
    let (storage, archive) = open_and_load(&args.archive, cancel).await?;
    let backups = crate::backup::list_backups(&*storage, &args.archive.cluster, cancel).await?;
    let window = crate::backup::window::Window::load(
        &*storage,
        &args.archive.cluster,
        args.archive.wal_segment_size,
        &backups,
        cancel,
    )
    .await?;
    let text = if args.json {
        let mut v = super::remote_ls::ls_json(&args.archive.remote, &archive);
        v["backups"] = super::remote_ls::backups_json(&backups, &window);
        serde_json::to_string_pretty(&v)? + "\n"
    } else {
        super::remote_ls::ls_text(&args.archive.remote, &archive)
            + &super::remote_ls::backups_text(&backups, &window)
    };
    emit(&text);
    Ok(())
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
