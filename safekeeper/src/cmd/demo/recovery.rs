//! Rebuilding a primary from a base backup and the archive alone: the base backup taken before
//! the load (`safekeeper backup`, into the archive), its restore (`safekeeper restore --latest`),
//! the `restore_command` line, and starting the new server until recovery has ended.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use super::postgres::{PgTools, Server, shell_quote};
use crate::backup::BackupRecord;
use crate::backup::restore::{RestoreOptions, Target, restore};
use crate::backup::take::{TakeOptions, take_backup};
use crate::object_format::Compression;
use crate::pg::ConnInfo;
use crate::remote::{S3Args, open_remote};

/// `safekeeper backup` of `primary` into the archive at `remote_url` (in this process).
pub(super) async fn base_backup(remote_url: &str, primary: &Server) -> Result<BackupRecord> {
    let storage = open_remote(remote_url, &S3Args::default()).await?;
    let opts = TakeOptions {
        cluster: "main".into(),
        primary: ConnInfo::parse(&format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            primary.port
        ))?,
        chunk_size: 16 << 20,
        compression: Compression::parse("zstd").map_err(anyhow::Error::msg)?,
        fast_checkpoint: true,
        archive_timeout: Duration::from_secs(60),
        wal_segment_size: None,
        progress_bar: false,
    };
    take_backup(storage, &opts, &CancellationToken::new()).await
}

/// `safekeeper restore --latest` from the archive at `remote_url` into `target`'s data directory
/// (in this process), handed to the PostgreSQL user.
pub(super) async fn restore_latest(pg: &PgTools, remote_url: &str, target: &Server) -> Result<()> {
    let storage = open_remote(remote_url, &S3Args::default()).await?;
    let opts = RestoreOptions {
        cluster: "main".into(),
        wal_segment_size: None,
        target_dir: target.data.clone(),
        target: Target::Latest,
        jobs: 4,
        archive_flags: vec![
            "--remote".into(),
            remote_url.into(),
            "--cluster".into(),
            "main".into(),
        ],
        pg_bindir: Some(pg.bindir.clone()),
    };
    restore(storage, &opts, &CancellationToken::new()).await?;
    give_tree(pg, &target.data)
}

/// Hands `dir` and everything below it to the PostgreSQL user.
fn give_tree(pg: &PgTools, dir: &Path) -> Result<()> {
    pg.give(dir)?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            give_tree(pg, &path)?;
        } else {
            pg.give(&path)?;
        }
    }
    Ok(())
}

/// `restore_command` serving the archive at `remote_url` through `exe restore-wal`.
pub(super) fn restore_command(exe: &Path, remote_url: &str) -> String {
    format!(
        "{} restore-wal --remote {} --cluster main %f %p",
        cmd_word(exe.as_os_str()),
        cmd_word(OsStr::new(remote_url))
    )
}

/// Configures `server` (a restored base backup) to recover through `command` to the end of the
/// archive, starts it, and waits until it has left recovery.
pub(super) async fn recover(pg: &PgTools, server: &Server, command: &str) -> Result<()> {
    server.append_conf(&format!(
        "# safekeeper demo: recovery from the archive\n\
         port = {}\n\
         synchronous_standby_names = ''\n\
         restore_command = '{}'\n\
         recovery_target_timeline = 'latest'\n",
        server.port,
        command.replace('\'', "''")
    ))?;
    let signal = server.data.join("recovery.signal");
    std::fs::write(&signal, "")?;
    pg.give(&signal)?;
    server.start(pg).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let in_recovery = server.sql_one("SELECT pg_is_in_recovery()").await.ok();
        if in_recovery.as_deref() == Some("f") {
            return Ok(());
        }
        if Instant::now() >= deadline || server.postmaster_pid().is_none() {
            bail!(
                "the new primary did not finish recovery: see {}",
                server.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One word of restore_command: quoted for the shell only when needed, `%` doubled (PostgreSQL
/// expands `%f`, `%p` and `%%`).
fn cmd_word(text: &OsStr) -> String {
    let s = text.to_string_lossy();
    let plain = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+,:=@".contains(c));
    let word = if plain {
        s.into_owned()
    } else {
        shell_quote(text)
    };
    word.replace('%', "%%")
}

/// The distinct files the server log says were restored from the archive, in order.
pub(super) fn restored_files(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    for rest in text.split("restored log file \"").skip(1) {
        if let Some(name) = rest.split('"').next()
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_command_words() {
        assert_eq!(
            restore_command(
                Path::new("/usr/bin/safekeeper"),
                "file:///tmp/x/.demo/remote"
            ),
            "/usr/bin/safekeeper restore-wal --remote file:///tmp/x/.demo/remote --cluster main %f %p"
        );
        assert_eq!(cmd_word(OsStr::new("/a b/100%")), "'/a b/100%%'");
    }
}
