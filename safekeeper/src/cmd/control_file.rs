//! `safekeeper control-file show|verify|upgrade PATH`: inspect, check and upgrade a control file.
//!
//! Exit status: 0 on success; 1 with a single `error: ...` line on stderr when the file is missing,
//! unreadable, corrupt, from a newer safekeeper or otherwise invalid (clap uses 2 for bad usage).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use control_file::names::{history_file_name, segment_file_name};
use control_file::{
    CURRENT_FORMAT_VERSION, ClusterState, ControlFileError, ObjectStatus, UpgradeOutcome,
};

#[derive(Subcommand, Debug)]
pub enum ControlFileCommand {
    /// Print the decoded state of a control file.
    Show {
        /// Path of the control file (e.g. <data-dir>/<cluster>/safekeeper.control).
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a control file: exit 0 when valid, non-zero with a one-line reason otherwise.
    Verify {
        /// Path of the control file.
        path: PathBuf,
    },
    /// Rewrite a control file in the newest format, keeping the original bytes in PATH.bak.
    Upgrade {
        /// Path of the control file.
        path: PathBuf,
    },
}

pub fn run(command: ControlFileCommand) -> ExitCode {
    let result = match command {
        ControlFileCommand::Show { path, json } => show(&path, json),
        ControlFileCommand::Verify { path } => verify(&path),
        ControlFileCommand::Upgrade { path } => upgrade(&path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // ControlFileError displays as one line naming the file.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn format_note(version: u32) -> &'static str {
    if version < CURRENT_FORMAT_VERSION {
        " (older than current; run `safekeeper control-file upgrade`)"
    } else {
        ""
    }
}

fn show(path: &Path, json: bool) -> Result<(), ControlFileError> {
    let (state, version) = control_file::load_versioned(path)?;
    if json {
        let doc = serde_json::json!({
            "path": path.display().to_string(),
            "format_version": version,
            "current_format_version": CURRENT_FORMAT_VERSION,
            // The state has LSNs as plain numbers; these are the same in PostgreSQL's notation.
            "lsns": {
                "flush": state.flush_lsn.to_string(),
                "commit": state.commit_lsn.to_string(),
                "backup": state.backup_lsn.to_string(),
            },
            "state": state,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| ControlFileError::Invalid {
            path: path.to_owned(),
            reason: format!("cannot render as JSON: {e}"),
        })?;
        emit(&format!("{text}\n"));
    } else {
        emit(&render_text(path, &state, version));
    }
    Ok(())
}

fn status(s: ObjectStatus) -> &'static str {
    match s {
        ObjectStatus::InProgress => "in-progress",
        ObjectStatus::Uploaded => "uploaded",
        ObjectStatus::Deleting => "deleting",
    }
}

fn render_text(path: &Path, s: &ClusterState, version: u32) -> String {
    let seg = s.wal_segment_size;
    let mut o = String::new();
    // Writing into a String cannot fail.
    let _ = writeln!(o, "path:               {}", path.display());
    let _ = writeln!(o, "format:             v{version}{}", format_note(version));
    let _ = writeln!(o, "safekeeper id:      {}", s.sk_id);
    let _ = writeln!(o, "cluster:            {}", s.cluster_name);
    let _ = writeln!(o, "system identifier:  {}", s.system_identifier);
    let _ = writeln!(o, "wal segment size:   {} ({} MiB)", seg, seg >> 20);
    let _ = writeln!(o, "postgres version:   {}", s.pg_major_version);
    let magic = match s.wal_page_magic {
        0 => "not learned yet".to_string(),
        m => format!("{m:#06X}"),
    };
    let _ = writeln!(o, "wal page magic:     {magic}");
    let _ = writeln!(o, "timeline:           {}", s.timeline);
    let _ = writeln!(o, "term:               {}", s.term);
    let _ = writeln!(o, "flush lsn:          {}", s.flush_lsn);
    let _ = writeln!(o, "commit lsn:         {}", s.commit_lsn);
    let _ = writeln!(o, "backup lsn:         {}", s.backup_lsn);
    let gc = match s.last_gc_at_unix_ms {
        0 => "never".to_owned(),
        ms => format!("{ms} ms since the Unix epoch"),
    };
    let _ = writeln!(o, "last gc:            {gc}");
    let interval = match s.partial_interval_ms {
        0 => "service default".to_owned(),
        ms => format!("{ms} ms"),
    };
    let _ = writeln!(o, "partial interval:   {interval}");
    let _ = writeln!(o, "term history:");
    for t in &s.term_history {
        let _ = writeln!(
            o,
            "  term {:<6} timeline {:<4} from {}",
            t.term, t.timeline, t.start_lsn
        );
    }
    let _ = writeln!(o, "remote full segments: {}", s.remote.full_segment_count());
    for r in &s.remote.full_segments {
        let _ = writeln!(
            o,
            "  {} .. {} ({} segment(s))",
            segment_file_name(r.timeline, r.start_segno, seg),
            segment_file_name(r.timeline, r.end_segno - 1, seg),
            r.end_segno - r.start_segno
        );
    }
    let _ = writeln!(o, "remote partial segments: {}", s.remote.partials.len());
    for p in &s.remote.partials {
        let _ = writeln!(
            o,
            "  {:<11} {} ({} bytes, crc32c {:08x})",
            status(p.status),
            p.name.to_file_name(seg),
            p.size,
            p.crc32c
        );
    }
    let _ = writeln!(o, "remote history files: {}", s.remote.history.len());
    for h in &s.remote.history {
        let _ = writeln!(
            o,
            "  {:<11} {} ({} bytes, crc32c {:08x})",
            status(h.status),
            history_file_name(h.timeline),
            h.size,
            h.crc32c
        );
    }
    o
}

fn verify(path: &Path) -> Result<(), ControlFileError> {
    let (s, version) = control_file::load_versioned(path)?;
    emit(&format!(
        "ok: {} format v{version}{}, cluster {}, sk{}, timeline {}, term {}, flush {}, commit {}, backup {}\n",
        path.display(),
        format_note(version),
        s.cluster_name,
        s.sk_id,
        s.timeline,
        s.term,
        s.flush_lsn,
        s.commit_lsn,
        s.backup_lsn
    ));
    Ok(())
}

fn upgrade(path: &Path) -> Result<(), ControlFileError> {
    match control_file::upgrade_in_place(path)? {
        UpgradeOutcome::AlreadyCurrent { version } => emit(&format!(
            "{} is already format v{version}, the newest; nothing to do\n",
            path.display()
        )),
        UpgradeOutcome::Upgraded { from, to, backup } => emit(&format!(
            "upgraded {} from format v{from} to v{to}; original kept in {}\n",
            path.display(),
            backup.display()
        )),
    }
    Ok(())
}
