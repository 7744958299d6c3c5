//! The PostgreSQL side of `safekeeper demo`: finding the server binaries, running them as the
//! right OS user, and one throwaway server (initdb, start, SQL, stop, kill -9).
//!
//! Invariants: every server lives in a data directory under the demo directory, listens on
//! 127.0.0.1 only and has no unix socket and no shared memory files outside its data directory,
//! so the demo never writes outside its directory. Every wait is bounded. A server is stopped
//! through the postmaster PID it recorded (pg_ctl or a signal), never by name.

use std::ffi::{CString, OsStr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::pg::{ConnInfo, ReplicationConnection, SessionKind};

/// Binaries the demo runs (`postgres` through pg_ctl).
const NEEDED: [&str; 4] = ["initdb", "pg_ctl", "pg_basebackup", "postgres"];

/// What to install when nothing is found.
pub(super) const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) not \
     found: install them (Debian/Ubuntu: sudo apt-get install postgresql) or set PG_BINDIR to \
     the directory that holds them";

/// Finds PostgreSQL's binary directory: `$PG_BINDIR` (when set, the answer or an error), the real
/// location of an `initdb` on PATH (symlinks resolved: /usr/local/bin may link only some
/// binaries), `pg_config --bindir`, then Debian's `/usr/lib/postgresql/<version>/bin`, newest
/// version first; the first candidate holding every binary of [`NEEDED`] wins.
///
/// This is the project's one search order, also in scripts/lib/find_pg.sh (`find_pg_bindir`) and
/// test_runner/fixtures/pg.py (`pg_bindir`, which runs the shell function): keep the three in step.
pub(super) fn find_bindir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if let Some(missing) = missing_binary(&dir) {
            bail!(
                "PG_BINDIR={} has no executable {missing}: point it at the directory holding \
                 initdb, pg_ctl and pg_basebackup",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let mut candidates = Vec::new();
    if let Some(initdb) = find_on_path("initdb")
        && let Ok(real) = std::fs::canonicalize(initdb)
        && let Some(dir) = real.parent()
    {
        candidates.push(dir.to_path_buf());
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let debian = Path::new("/usr/lib/postgresql");
    if let Ok(entries) = std::fs::read_dir(debian) {
        let versions: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        for v in newest_first(versions) {
            candidates.push(debian.join(v).join("bin"));
        }
    }
    candidates
        .into_iter()
        .find(|d| missing_binary(d).is_none())
        .with_context(|| INSTALL_HINT.to_string())
}

/// The first of [`NEEDED`] that `dir` lacks.
fn missing_binary(dir: &Path) -> Option<&'static str> {
    NEEDED.into_iter().find(|b| !is_executable(&dir.join(b)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Version directory names (`16`, `15`, `9.6`) ordered newest first; other names are dropped.
pub(super) fn newest_first(names: Vec<String>) -> Vec<String> {
    let mut versions: Vec<(Vec<u32>, String)> = names
        .into_iter()
        .filter_map(|n| {
            let parts: Option<Vec<u32>> = n.split('.').map(|p| p.parse().ok()).collect();
            parts.map(|p| (p, n))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, n)| n).collect()
}

/// The unprivileged OS user PostgreSQL runs as when the demo runs as root (initdb refuses root).
#[derive(Clone, Debug)]
pub(super) struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl OsUser {
    /// `None` when not root; the `postgres` user when root.
    pub(super) fn for_postgres() -> Result<Option<OsUser>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let name = "postgres";
        let cname = CString::new(name).expect("no NUL");
        // SAFETY: called before any other thread exists (no concurrent getpw* call); the result
        // is copied out at once.
        let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
        if pw.is_null() {
            bail!(
                "running as root, and PostgreSQL refuses to run as root: there is no `postgres` \
                 OS user to run it as. Create one (useradd --system postgres) or run the demo \
                 as a regular user"
            );
        }
        // SAFETY: pw is non-null and points to libc's static passwd record.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(Some(OsUser {
            name: name.to_string(),
            uid,
            gid,
        }))
    }
}

/// The PostgreSQL installation the demo uses.
#[derive(Clone, Debug)]
pub(super) struct PgTools {
    pub bindir: PathBuf,
    pub user: Option<OsUser>,
}

impl PgTools {
    /// A command running `bin` from the bindir (as the PostgreSQL OS user when root), with
    /// every `PG*` and `SAFEKEEPER_*` variable removed so the user's environment cannot redirect
    /// it.
    pub(super) fn command(&self, bin: &str) -> Command {
        let path = self.bindir.join(bin);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", &u.name, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        scrub_env(&mut cmd);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// Runs `cmd` to completion within `limit`; fails with `what` and the tail of its output.
    pub(super) async fn run(
        &self,
        mut cmd: Command,
        what: &str,
        limit: Duration,
    ) -> Result<String> {
        let out = tokio::time::timeout(limit, cmd.output())
            .await
            .with_context(|| format!("{what}: no answer within {}s", limit.as_secs()))?
            .with_context(|| format!("{what}: cannot start it"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("{what} failed ({}): {}", out.status, last_lines(&text, 6));
        }
        Ok(text)
    }

    /// `postgres --version`, e.g. `PostgreSQL 15.8`.
    pub(super) async fn version(&self) -> Result<String> {
        let mut cmd = Command::new(self.bindir.join("postgres"));
        cmd.arg("--version");
        let text = self
            .run(cmd, "postgres --version", Duration::from_secs(10))
            .await?;
        Ok(text
            .trim()
            .trim_start_matches("postgres (PostgreSQL) ")
            .to_string())
    }

    /// Hands `path` to the PostgreSQL OS user (no-op when not root).
    pub(super) fn give(&self, path: &Path) -> Result<()> {
        if let Some(u) = &self.user {
            std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
                .with_context(|| format!("cannot chown {} to {}", path.display(), u.name))?;
        }
        Ok(())
    }

    /// Whether the PostgreSQL OS user can run `program --version` (it runs restore_command).
    pub(super) async fn user_can_run(&self, program: &Path) -> bool {
        let Some(u) = &self.user else { return true };
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", &u.name, "--"])
            .arg(program)
            .arg("--version");
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        matches!(
            tokio::time::timeout(Duration::from_secs(20), cmd.status()).await,
            Ok(Ok(s)) if s.success()
        )
    }

    /// Whether the PostgreSQL OS user can enter `dir` (every parent must be searchable).
    pub(super) async fn user_can_enter(&self, dir: &Path) -> bool {
        let Some(u) = &self.user else { return true };
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", &u.name, "--", "test", "-x"]).arg(dir);
        matches!(
            tokio::time::timeout(Duration::from_secs(20), cmd.status()).await,
            Ok(Ok(s)) if s.success()
        )
    }
}

/// Removes `PG*` and `SAFEKEEPER_*` variables from a child's environment.
pub(super) fn scrub_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("PG") || n.starts_with("SAFEKEEPER_") {
            cmd.env_remove(&name);
        }
    }
}

/// The last `n` non-empty lines of `text`, joined with ` | `.
pub(super) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// One PostgreSQL server of the demo.
pub(super) struct Server {
    pub data: PathBuf,
    pub log: PathBuf,
    pub port: u16,
}

impl Server {
    pub(super) fn new(dir: &Path, port: u16) -> Server {
        Server {
            data: dir.join("data"),
            log: dir.join("server.log"),
            port,
        }
    }

    /// initdb plus a configuration that keeps everything on 127.0.0.1 and inside `data`.
    pub(super) async fn initdb(&self, pg: &PgTools) -> Result<()> {
        let mut cmd = pg.command("initdb");
        cmd.args(["--no-sync", "-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .arg("--no-locale")
            .arg("-D")
            .arg(&self.data);
        pg.run(cmd, "initdb", Duration::from_secs(120)).await?;
        self.append_conf(&format!(
            "# safekeeper demo\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = ''\n\
             dynamic_shared_memory_type = mmap\n\
             wal_level = replica\n\
             fsync = on\n\
             synchronous_commit = on\n",
            self.port
        ))
    }

    /// Appends settings to `postgresql.auto.conf` (later lines win).
    pub(super) fn append_conf(&self, text: &str) -> Result<()> {
        use std::io::Write;
        let path = self.data.join("postgresql.auto.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub(super) async fn start(&self, pg: &PgTools) -> Result<()> {
        let mut cmd = pg.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "start"]);
        pg.run(cmd, "pg_ctl start", Duration::from_secs(150))
            .await
            .with_context(|| format!("server log: {}", self.log.display()))?;
        Ok(())
    }

    /// pg_ctl stop (`fast`/`immediate`) when the postmaster is alive; bounded.
    pub(super) async fn stop(&self, pg: &PgTools, mode: &str) -> Result<()> {
        if self.postmaster_pid().is_none() {
            return Ok(());
        }
        let mut cmd = pg.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "30", "stop"]);
        let result = pg.run(cmd, "pg_ctl stop", Duration::from_secs(45)).await;
        if let Some(pid) = self.postmaster_pid() {
            // pg_ctl could not do it: end the postmaster by its PID.
            kill_and_wait(pid, Duration::from_secs(10)).await;
        }
        result.map(drop)
    }

    /// SIGKILL the postmaster and wait until it is gone; returns its PID.
    pub(super) async fn kill9(&self) -> Result<i32> {
        let pid = self
            .postmaster_pid()
            .context("the primary is not running")?;
        let shm_id = self.sysv_shm_id();
        if !kill_and_wait(pid, Duration::from_secs(20)).await {
            bail!("postmaster {pid} survived SIGKILL for 20 s");
        }
        // The postmaster's small System V segment would outlive the deleted data directory:
        // mark it for removal (the kernel frees it when the last backend has exited).
        if let Some(id) = shm_id {
            // SAFETY: IPC_RMID with a null buffer only marks the segment; an id that is not
            // (or no longer) ours fails harmlessly.
            unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        }
        Ok(pid)
    }

    /// The PID in `postmaster.pid` if that process is alive.
    pub(super) fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// The shared memory id on line 7 of `postmaster.pid` ("key id").
    fn sysv_shm_id(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().nth(6)?.split_whitespace().nth(1)?.parse().ok()
    }

    /// A plain SQL session as `postgres`.
    pub(super) async fn connect(&self) -> Result<ReplicationConnection> {
        let info = ConnInfo::parse_with_env(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable \
                 connect_timeout=10 application_name=safekeeper-demo",
                self.port
            ),
            &|_| None,
        )?;
        let conn = ReplicationConnection::connect_with(&info, 0, SessionKind::Regular)
            .await
            .with_context(|| format!("cannot connect to 127.0.0.1:{}", self.port))?;
        Ok(conn)
    }

    /// Runs one statement on a new session and returns its rows.
    pub(super) async fn sql(&self, query: &str) -> Result<Vec<Vec<Option<String>>>> {
        let mut conn = self.connect().await?;
        let rows = conn
            .simple_query(query)
            .await
            .with_context(|| format!("{query}: failed"))?;
        conn.close().await;
        Ok(rows)
    }

    /// The first column of the first row.
    pub(super) async fn sql_one(&self, query: &str) -> Result<String> {
        let rows = self.sql(query).await?;
        rows.into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .with_context(|| format!("{query}: no value"))
    }
}

/// Whether `pid` exists (a zombie counts as gone).
pub(super) fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// SIGKILL `pid` and wait up to `limit` for it to disappear.
pub(super) async fn kill_and_wait(pid: i32, limit: Duration) -> bool {
    // SAFETY: plain signal delivery to a PID we started (read from its own pid file).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// `text` as one shell word (single quotes).
pub(super) fn shell_quote(text: &OsStr) -> String {
    format!("'{}'", text.to_string_lossy().replace('\'', r"'\''"))
}

/// A port on 127.0.0.1 that is free right now.
pub(super) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_newest_first() {
        let names = ["9.6", "15", "16", "10", "README"]
            .map(String::from)
            .to_vec();
        assert_eq!(newest_first(names), ["16", "15", "10", "9.6"]);
    }

    #[test]
    fn restore_command_quoting() {
        assert_eq!(shell_quote(OsStr::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
