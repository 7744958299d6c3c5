//! The demo directory: the only place the demo writes. It is reused only if an earlier demo made
//! it (a marker file says so) and no server of that demo still runs; it must be reachable by the
//! PostgreSQL OS user, which also needs an executable it can run as `restore_command`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::postgres::{PgTools, Server};

/// Marks a directory as made by the demo, so a later run may remove and reuse it.
pub(super) const MARKER: &str = ".safekeeper-demo";

/// Creates `dir` (replacing one an earlier demo made) and returns the executable to use in
/// `restore_command`: `exe`, or a copy inside `dir` when the PostgreSQL user cannot run `exe`.
pub(super) async fn create(
    dir: &Path,
    pg: &PgTools,
    servers: [&Server; 2],
    exe: &Path,
) -> Result<PathBuf> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
        if !empty && !dir.join(MARKER).exists() {
            bail!(
                "{} exists and was not made by `safekeeper demo`: pass another --dir",
                dir.display()
            );
        }
        for server in servers {
            if let Some(pid) = server.postmaster_pid() {
                bail!(
                    "a server of an earlier demo still runs in {} (pid {pid}): stop it with \
                     `pg_ctl -D {} stop`, then run the demo again",
                    dir.display(),
                    server.data.display()
                );
            }
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot remove the earlier {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by `safekeeper demo`; safe to delete\n",
    )?;
    set_mode(dir, 0o755)?;
    if !pg.user_can_enter(dir).await {
        let _ = std::fs::remove_dir_all(dir);
        bail!(
            "PostgreSQL runs as the `postgres` user, which cannot enter {} (a parent directory \
             is not searchable, e.g. /root is mode 700): run the demo from a directory it can \
             reach, or pass --dir",
            dir.display()
        );
    }
    if pg.user_can_run(exe).await {
        return Ok(exe.to_path_buf());
    }
    let bin = dir.join("bin");
    let copy = bin.join("safekeeper");
    std::fs::create_dir_all(&bin)?;
    set_mode(&bin, 0o755)?;
    std::fs::copy(exe, &copy)
        .with_context(|| format!("cannot copy the executable to {}", copy.display()))?;
    set_mode(&copy, 0o755)?;
    Ok(copy)
}

/// A directory for one server, owned by the PostgreSQL user.
pub(super) fn server_dir(pg: &PgTools, path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    set_mode(path, 0o755)?;
    pg.give(path)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}
