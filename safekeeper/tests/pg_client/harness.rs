//! Throw-away PostgreSQL servers for integration tests.
//!
//! Finds the binaries (`PG_BINDIR`, `pg_config --bindir`, newest `/usr/lib/postgresql/*/bin`),
//! runs them as the `postgres` OS user when the tests run as root (initdb refuses root), listens
//! on 127.0.0.1 with a free port and a private unix socket directory, and stops the server with
//! `pg_ctl stop -m immediate` when the guard is dropped. Without binaries a test is skipped
//! loudly, or fails when `CI=true`.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, Weak};

use safekeeper::pg::ConnInfo;
use tempfile::TempDir;

/// Locates the PostgreSQL server binaries.
pub fn find_bindir() -> Option<PathBuf> {
    let has_initdb = |p: &Path| p.join("initdb").is_file();
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return Some(PathBuf::from(dir)).filter(|p| has_initdb(p));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| has_initdb(p))
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, p)| p)
}

/// The binaries, or `None` after printing a loud skip message (panics when `CI=true`).
pub fn bindir_or_skip(test: &str) -> Option<PathBuf> {
    let dir = find_bindir();
    if dir.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: PostgreSQL binaries not found (set PG_BINDIR) and CI=true");
        }
        eprintln!(
            "\n*** SKIPPING {test}: PostgreSQL binaries not found (set PG_BINDIR or install \
             postgresql) ***\n"
        );
    }
    dir
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL data directory and (once started) server.
pub struct PgServer {
    pub bindir: PathBuf,
    /// Holds everything: data directory, socket, log, certificates.
    pub root: TempDir,
    pub datadir: PathBuf,
    pub port: u16,
    started: bool,
}

impl PgServer {
    /// A new empty directory tree owned by the user the server will run as.
    fn new_dirs(bindir: &Path) -> PgServer {
        let root = tempfile::Builder::new().prefix("pgtest").tempdir().unwrap();
        if is_root() {
            run_ok(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(root.path()),
            );
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        PgServer {
            bindir: bindir.to_owned(),
            datadir: root.path().join("data"),
            root,
            port,
            started: false,
        }
    }

    /// `initdb` with superuser `postgres` and trust authentication.
    pub fn init(bindir: &Path) -> PgServer {
        let pg = Self::new_dirs(bindir);
        let mut cmd = pg.command("initdb");
        cmd.args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .arg("-D")
            .arg(&pg.datadir);
        run_ok(&mut cmd);
        pg
    }

    /// A standby cloned from `primary` with `pg_basebackup -R`.
    pub fn basebackup_from(primary: &PgServer) -> PgServer {
        let pg = Self::new_dirs(&primary.bindir);
        let mut cmd = pg.command("pg_basebackup");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-X",
            "stream",
            "-R",
            "--no-sync",
        ])
        .args(["-p", &primary.port.to_string()])
        .arg("-D")
        .arg(&pg.datadir);
        run_ok(&mut cmd);
        pg
    }

    /// A command running `bin` from the binary directory as the server's OS user.
    pub fn command(&self, bin: &str) -> Command {
        let path = self.bindir.join(bin);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Appends settings for port, sockets, replication and logging, plus `extra`.
    pub fn configure(&self, extra: &str) {
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             fsync = off\nshared_buffers = 16MB\nmax_connections = 30\n\
             log_min_messages = info\nlog_connections = on\n{extra}\n",
            self.port,
            self.root.path().display()
        );
        self.append("postgresql.conf", &conf);
    }

    /// Replaces pg_hba.conf.
    pub fn write_hba(&self, hba: &str) {
        self.write_file("pg_hba.conf", hba, 0o600);
    }

    /// Appends to a file in the data directory.
    pub fn append(&self, name: &str, text: &str) {
        let path = self.datadir.join(name);
        let mut content = std::fs::read_to_string(&path).unwrap_or_default();
        content.push_str(text);
        self.write_file(name, &content, 0o600);
    }

    /// Writes a file in the data directory owned by the server user.
    pub fn write_file(&self, name: &str, content: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.datadir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if is_root() {
            run_ok(Command::new("chown").arg("postgres:postgres").arg(&path));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&mut self) {
        let mut cmd = self.command("pg_ctl");
        cmd.args(["-w", "-t", "60", "-D"])
            .arg(&self.datadir)
            .arg("-l")
            .arg(self.log_path())
            .arg("start");
        self.started = true;
        let out = cmd.output().unwrap();
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\n--- server log ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
        }
    }

    /// `pg_ctl stop -m <mode>`, waiting for the shutdown to complete.
    pub fn stop(&mut self, mode: &str) {
        let mut cmd = self.command("pg_ctl");
        cmd.args(["-w", "-t", "60", "-D"])
            .arg(&self.datadir)
            .args(["-m", mode, "stop"]);
        run_ok(&mut cmd);
        self.started = false;
    }

    /// `pg_ctl promote -w`.
    pub fn promote(&self) {
        let mut cmd = self.command("pg_ctl");
        cmd.args(["-w", "-t", "60", "-D"])
            .arg(&self.datadir)
            .arg("promote");
        run_ok(&mut cmd);
    }

    /// A connection string for TCP to this server; `extra` is appended (later keys win).
    pub fn conninfo(&self, extra: &str) -> ConnInfo {
        let s = format!(
            "host=127.0.0.1 port={} user=postgres sslmode=disable passfile=/nonexistent {extra}",
            self.port
        );
        ConnInfo::parse(&s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// The unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        self.root.path()
    }

    /// Contents of a WAL segment file in pg_wal.
    pub fn read_wal_segment(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.datadir.join("pg_wal").join(name)).unwrap()
    }

    /// Creates a CA and a server certificate signed by it (SAN `DNS:localhost` only) in the
    /// data directory, and a second unrelated CA; returns (ca.crt, other_ca.crt) paths.
    pub fn make_certificates(&self) -> (PathBuf, PathBuf) {
        let d = self.root.path().join("certs");
        std::fs::create_dir(&d).unwrap();
        let p = |n: &str| d.join(n).to_str().unwrap().to_owned();
        for ca in ["ca", "otherca"] {
            run_ok(Command::new("openssl").args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=test {ca}"),
                "-keyout",
                &p(&format!("{ca}.key")),
                "-out",
                &p(&format!("{ca}.crt")),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]));
        }
        run_ok(Command::new("openssl").args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ]));
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run_ok(Command::new("openssl").args([
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &p("server.crt"),
            "-extfile",
            &p("ext.cnf"),
        ]));
        let read = |n: &str| std::fs::read_to_string(d.join(n)).unwrap();
        self.write_file("server.crt", &read("server.crt"), 0o644);
        self.write_file("server.key", &read("server.key"), 0o600);
        (d.join("ca.crt"), d.join("otherca.crt"))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if !self.started {
            return;
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ---", self.log_path().display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self
            .command("pg_ctl")
            .args(["-D"])
            .arg(&self.datadir)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A server (or a struct holding one) shared by the tests of one binary that run at the same
/// time; it is stopped when the last user drops it.
pub fn shared<T>(slot: &'static Mutex<Weak<T>>, make: impl FnOnce() -> T) -> Arc<T> {
    let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pg) = guard.upgrade() {
        return pg;
    }
    let pg = Arc::new(make());
    *guard = Arc::downgrade(&pg);
    pg
}
