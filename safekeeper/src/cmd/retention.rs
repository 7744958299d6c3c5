//! `safekeeper remote retention`: prints the plan of a retention pass and, with `--delete`, runs
//! it (first finishing a pass that was interrupted). The rules and the crash safety are
//! `crate::backup::retention`'s; this module owns the arguments' meaning and the output.

use std::fmt::Write as _;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::remote::RetentionArgs;
use crate::archive::human_bytes;
use crate::backup::retention::{Plan, Policy, finish_pending, pending, plan, run_plan};
use crate::pg::format_lsn;

pub(crate) async fn run(args: &RetentionArgs, cancel: &CancellationToken) -> Result<()> {
    let storage = args.archive.open().await?;
    let cluster = &args.archive.cluster;
    let policy = Policy {
        keep_last: args.keep_last.map(|n| n as usize),
        keep_within: args.keep_within,
        incomplete_after: args.incomplete_after,
    };
    let mut out = String::new();
    let interrupted = if args.delete {
        finish_pending(&*storage, cluster, cancel).await?
    } else {
        pending(&*storage, cluster, cancel).await?
    };
    if let Some(p) = &interrupted {
        let verb = if args.delete {
            "finished"
        } else {
            "will finish"
        };
        let _ = writeln!(
            out,
            "an interrupted retention pass: {verb} deleting {} objects ({} backups)",
            p.completions.len() + p.keys.len(),
            p.backups.len()
        );
    }
    let p = plan(
        &*storage,
        cluster,
        args.archive.wal_segment_size,
        &policy,
        cancel,
    )
    .await?;
    if args.delete {
        run_plan(&*storage, cluster, &p, cancel).await?;
    }
    if args.json {
        let v = serde_json::json!({
            "deleted": args.delete,
            "interrupted_pass": interrupted.as_ref().map(|p| p.completions.len() + p.keys.len()),
            "delete_backups": p.backups,
            "kept": p.kept,
            "wal_cut": p.wal_cut.map(format_lsn),
            "wal_objects": p.wal_objects,
            "objects": p.completions.len() + p.keys.len(),
            "bytes": p.bytes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{out}{}", text(&p, args.delete));
    }
    Ok(())
}

fn text(p: &Plan, deleted: bool) -> String {
    let mut s = String::new();
    let verb = if deleted { "deleted" } else { "would delete" };
    for (id, why) in &p.kept {
        let _ = writeln!(s, "keep    {id}  ({why})");
    }
    for id in &p.backups {
        let _ = writeln!(s, "{verb:<7} {id}");
    }
    let _ = writeln!(
        s,
        "{verb}: {} backups, {} WAL objects below {}, {} objects in all, {}{}",
        p.backups.len(),
        p.wal_objects,
        p.wal_cut.map_or("-".into(), format_lsn),
        p.completions.len() + p.keys.len(),
        human_bytes(p.bytes),
        if deleted {
            ""
        } else {
            " (dry run: add --delete)"
        }
    );
    s
}
