//! `safekeeper restore`: a data directory from the newest backup that can reach the target, with
//! the recovery settings that replay the WAL archive to it.
//!
//! Invariants:
//! - Every check that can fail without reading chunks (the target directory is new or empty,
//!   a usable backup exists, the target lies in the recoverable window, the backup has no
//!   tablespaces) runs before anything is written: such an error leaves the file system as it was.
//! - No file of the backup is used before every chunk passed its object checks (crc32c, lengths)
//!   and the record's size and crc32c, and the unpacked files matched the manifest (sizes and
//!   CRC32C checksums, and `pg_verifybackup` when one is found); a failure names the object or
//!   file and removes the directory this command created, so no server can start from it.
//! - Recovery settings are written last: `recovery.signal` exists only in a verified directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use remote_storage::RemoteStorage;
use std::io::IsTerminal;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::tar::Unpacker;
use super::window::Window;
use super::{BackupRecord, get_object, list_backups, manifest};
use crate::pg::format_lsn;

/// What to recover to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    /// The end of the archive's WAL on its newest timeline.
    Latest,
    /// Seconds since the Unix epoch, and the text PostgreSQL gets.
    Time(f64, String),
    Lsn(u64),
    Xid(u64),
}

/// What `restore` needs.
#[derive(Debug, Clone)]
pub(crate) struct RestoreOptions {
    pub cluster: String,
    pub wal_segment_size: Option<u32>,
    pub target_dir: PathBuf,
    pub target: Target,
    pub jobs: usize,
    /// Flags that reach the archive (`--remote ... --cluster ...`), for `restore_command`.
    pub archive_flags: Vec<String>,
    pub pg_bindir: Option<PathBuf>,
}

/// What was restored.
#[derive(Debug, Clone)]
pub(crate) struct Restored {
    pub backup: BackupRecord,
    pub files: usize,
    pub checksummed: usize,
    pub verifier: String,
}

/// Restores; see the module invariants.
pub(crate) async fn restore(
    storage: Arc<dyn RemoteStorage>,
    opts: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<Restored> {
    let dir = &opts.target_dir;
    let created = check_target_dir(dir)?;
    let backups = list_backups(&*storage, &opts.cluster, cancel).await?;
    let window = Window::load(
        &*storage,
        &opts.cluster,
        opts.wal_segment_size,
        &backups,
        cancel,
    )
    .await?;
    let backup = choose(&window, &opts.target)?;
    if let Some(a) = backup.archives.iter().find(|a| a.name != "base.tar") {
        bail!(
            "backup {} has the tablespace archive {}; restoring tablespaces is not supported yet",
            backup.id,
            a.name
        );
    }
    debug!(backup = %backup.id, end_lsn = %format_lsn(backup.end_lsn), "restoring");
    if created {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    set_mode(dir, 0o700)?;
    match unpack_and_verify(&storage, &backup, opts, cancel).await {
        Ok((files, checksummed, verifier)) => {
            write_recovery_settings(dir, opts)?;
            Ok(Restored {
                backup,
                files,
                checksummed,
                verifier,
            })
        }
        Err(e) => {
            let cleanup = if created {
                std::fs::remove_dir_all(dir)
            } else {
                clear_dir(dir)
            };
            let note = match cleanup {
                Ok(()) => format!("{} was removed again", dir.display()),
                Err(c) => format!("{} could not be cleaned up ({c}): delete it", dir.display()),
            };
            Err(e.context(format!("restore of backup {} failed; {note}", backup.id)))
        }
    }
}

/// `true` when the directory does not exist (restore creates it); an error unless it is empty.
fn check_target_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            ensure!(
                entries.next().is_none(),
                "--target-dir {} is not empty",
                dir.display()
            );
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(anyhow!("cannot read --target-dir {}: {e}", dir.display())),
    }
}

fn clear_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

fn show_time(t: f64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The newest usable backup that reaches `target`; an error naming the window when none does.
pub(crate) fn choose(w: &Window, target: &Target) -> Result<BackupRecord> {
    let (Some(earliest), Some(latest)) = (&w.earliest, &w.latest) else {
        let why = w
            .unusable
            .last()
            .map(|(b, why)| format!(": backup {} is not usable: {why}", b.id))
            .unwrap_or_default();
        bail!("the archive has no usable backup{why}");
    };
    let window = format!(
        "the recoverable window is {} ({}) to {} ({})",
        format_lsn(earliest.lsn),
        earliest.time.map_or("?".into(), show_time),
        format_lsn(latest.lsn),
        latest.time.map_or("?".into(), show_time),
    );
    let pick = |ok: &dyn Fn(&BackupRecord) -> bool| w.usable.iter().rev().find(|b| ok(b)).cloned();
    match target {
        Target::Latest => {
            pick(&|_| true).ok_or_else(|| anyhow!("the archive has no usable backup"))
        }
        Target::Time(t, text) => {
            ensure!(
                latest.time.is_none_or(|l| *t <= l),
                "target time {text} is after the end of the archive: {window}"
            );
            pick(&|b| b.end_unix < *t).ok_or_else(|| {
                anyhow!("target time {text} is before the earliest backup ended: {window}")
            })
        }
        Target::Lsn(l) => {
            let text = format_lsn(*l);
            ensure!(
                *l <= latest.lsn,
                "target LSN {text} is after the end of the archive: {window}"
            );
            pick(&|b| b.end_lsn <= *l).ok_or_else(|| {
                anyhow!("target LSN {text} is before the earliest backup's end: {window}")
            })
        }
        Target::Xid(x) => pick(&|b| b.next_xid.is_some_and(|n| n <= *x)).ok_or_else(|| {
            anyhow!(
                "no usable backup ended before transaction {x} started (or none recorded its \
                 next transaction ID): {window}"
            )
        }),
    }
}

/// Fetches the chunks (`jobs` at a time), unpacks them in order, checks the manifest.
async fn unpack_and_verify(
    storage: &Arc<dyn RemoteStorage>,
    backup: &BackupRecord,
    opts: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<(usize, usize, String)> {
    let dir = opts.target_dir.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let unpacker = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut u = Unpacker::new(&dir);
        while let Some(data) = rx.blocking_recv() {
            u.feed(&data)?;
        }
        u.finish()
    });
    let chunks = backup.archives.iter().flat_map(|a| &a.chunks);
    let mut fetched = futures::stream::iter(chunks)
        .map(|c| {
            let storage = Arc::clone(storage);
            async move {
                let data = get_object(&*storage, &c.key, cancel).await?;
                ensure!(
                    data.len() as u64 == c.bytes && crc32c::crc32c(&data) == c.crc32c,
                    "{} does not hold the bytes its backup record names (size or crc32c differ)",
                    c.key
                );
                Ok(data)
            }
        })
        .buffered(opts.jobs.max(1));
    let bar = progress(backup.tar_bytes());
    let mut fetch_error = None;
    while let Some(data) = fetched.next().await {
        match data {
            Ok(d) => {
                if let Some(bar) = &bar {
                    bar.inc(d.len() as u64);
                }
                if tx.send(d).await.is_err() {
                    break; // the unpacker failed; its error is reported below
                }
            }
            Err(e) => {
                fetch_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let unpacked = unpacker.await.context("unpack task failed")?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(e) = fetch_error {
        return Err(e);
    }
    let files = unpacked.context("the backup's tar stream is damaged")?;
    let manifest_bytes = get_object(&**storage, &backup.manifest.key, cancel).await?;
    let manifest_path = opts.target_dir.join("backup_manifest");
    std::fs::write(&manifest_path, &manifest_bytes)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    let checked = manifest::check(&manifest_bytes, &files)
        .with_context(|| format!("backup {} does not match its manifest", backup.id))?;
    let verifier = run_pg_verifybackup(&opts.target_dir, opts.pg_bindir.as_deref()).await?;
    Ok((checked.files, checked.checksummed, verifier))
}

/// A progress bar over the backup's tar bytes when stderr is a terminal.
fn progress(total: u64) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let style = ProgressStyle::with_template(
        "{spinner} restore {bytes}/{total_bytes} {bytes_per_sec} eta {eta} [{wide_bar}]",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    Some(ProgressBar::new(total).with_style(style))
}

/// Runs PostgreSQL's `pg_verifybackup` (of the backup's major, or from `--pg-bindir`) when one is
/// found; returns what verified the backup.
async fn run_pg_verifybackup(dir: &Path, bindir: Option<&Path>) -> Result<String> {
    let major = std::fs::read_to_string(dir.join("PG_VERSION"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let candidates = [
        bindir.map(|b| b.join("pg_verifybackup")),
        Some(PathBuf::from(format!(
            "/usr/lib/postgresql/{major}/bin/pg_verifybackup"
        ))),
    ];
    let Some(tool) = candidates.into_iter().flatten().find(|p| p.is_file()) else {
        return Ok("the manifest's sizes and CRC32C checksums (pg_verifybackup not found)".into());
    };
    let out = tokio::process::Command::new(&tool)
        .arg("--no-parse-wal")
        .arg("--quiet")
        .arg(dir)
        .output()
        .await
        .with_context(|| format!("cannot run {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            tool.display(),
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ")
        );
    }
    Ok(format!("the manifest, and {}", tool.display()))
}

/// Single-quotes a shell word when it needs it.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@,+%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A PostgreSQL configuration string literal.
fn conf_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `restore_command` for this archive. `%` in a word is doubled: PostgreSQL expands `%f`, `%p`
/// and `%%` in the command.
pub(crate) fn restore_command(archive_flags: &[String]) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find this binary's path")?;
    let word = |s: &str| shell_word(s).replace('%', "%%");
    let mut words = vec![word(&exe.to_string_lossy()), "restore-wal".to_string()];
    words.extend(archive_flags.iter().map(|f| word(f)));
    words.push("%f".into());
    words.push("%p".into());
    Ok(words.join(" "))
}

/// Appends the recovery settings to `postgresql.auto.conf` and creates `recovery.signal`.
fn write_recovery_settings(dir: &Path, opts: &RestoreOptions) -> Result<()> {
    let mut conf = String::from("\n# Added by safekeeper restore\n");
    conf += &format!(
        "restore_command = {}\n",
        conf_literal(&restore_command(&opts.archive_flags)?)
    );
    conf += "recovery_target_timeline = 'latest'\n";
    match &opts.target {
        Target::Latest => {}
        Target::Time(_, text) => {
            // PostgreSQL's timestamptz input wants a space and a numeric zone, not `T...Z`.
            let pg = text.replacen('T', " ", 1).replace('Z', "+00");
            conf += &format!("recovery_target_time = {}\n", conf_literal(&pg));
        }
        Target::Lsn(l) => conf += &format!("recovery_target_lsn = '{}'\n", format_lsn(*l)),
        Target::Xid(x) => conf += &format!("recovery_target_xid = '{x}'\n"),
    }
    if opts.target != Target::Latest {
        conf += "recovery_target_action = 'promote'\n";
    }
    let auto = dir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text += &conf;
    std::fs::write(&auto, text).with_context(|| format!("cannot write {}", auto.display()))?;
    let signal = dir.join("recovery.signal");
    std::fs::write(&signal, b"").with_context(|| format!("cannot write {}", signal.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_word("file:///a/b"), "file:///a/b");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(conf_literal("a 'b'"), "'a ''b'''");
    }
}
