//! A moto S3 server for tests, run as a child process on 127.0.0.1 with a free port.
//!
//! Owns finding, starting and stopping the server. One server is shared by all tests of a test
//! binary (each test uses its own bucket).
//!
//! Invariants:
//! - the server is killed by PID when its [`MotoServer`] is dropped; the shared one is dropped by
//!   an `atexit` hook when the test binary exits, and as a last resort the kernel kills it
//!   (`PR_SET_PDEATHSIG`) if the test process dies without running exit hooks;
//! - readiness is awaited with a bound; a server that exits or never answers is an error that
//!   includes its log;
//! - with `CI=true` a missing server fails the test; otherwise the test is skipped loudly.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running moto server.
pub struct MotoServer {
    child: Child,
    pub endpoint: String,
    log: PathBuf,
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's PID; wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Where the moto server executable is: `$MOTO_SERVER_BIN`, else `moto_server` on `PATH`, else the
/// project venv next to this crate.
pub fn find_moto() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("MOTO_SERVER_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("MOTO_SERVER_BIN={} does not exist", bin.display()))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("moto_server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test_runner/.venv/bin/moto_server");
    if venv.is_file() {
        return Ok(venv);
    }
    Err(format!(
        "moto_server not found (set MOTO_SERVER_BIN, put it on PATH, or create {})",
        venv.display()
    ))
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Spawn the child from a thread that lives as long as the process, so that `PR_SET_PDEATHSIG`
/// (which fires when the *spawning thread* exits) only fires when the whole process dies.
fn spawn_detached(mut command: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("moto-keeper".into())
        .spawn(move || {
            let _ = tx.send(command.spawn());
            loop {
                std::thread::park();
            }
        })?;
    rx.recv()
        .map_err(|e| std::io::Error::other(format!("moto keeper thread died: {e}")))?
}

/// Whether an HTTP server answers on `port`.
fn answers(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 5];
    s.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

impl MotoServer {
    /// Start `bin` on a free port and wait until it answers.
    pub fn start(bin: &Path) -> Result<MotoServer, String> {
        let mut last_error = String::new();
        // The free port may be taken between probing and binding: try a few.
        for _ in 0..3 {
            let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
            let log = std::env::temp_dir().join(format!("moto-{}-{port}.log", std::process::id()));
            let log_file = std::fs::File::create(&log)
                .map_err(|e| format!("creating {}: {e}", log.display()))?;
            let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
            let mut command = Command::new(bin);
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(log_err);
            let child =
                spawn_detached(command).map_err(|e| format!("spawning {}: {e}", bin.display()))?;
            let mut server = MotoServer {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
                log,
            };
            let started = Instant::now();
            loop {
                if answers(port) {
                    eprintln!(
                        "moto server {} ready in {:?}",
                        server.endpoint,
                        started.elapsed()
                    );
                    return Ok(server);
                }
                let exited = server.child.try_wait().ok().flatten();
                if exited.is_some() || started.elapsed() > READY_TIMEOUT {
                    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                    last_error = format!(
                        "moto server on port {port} {} ; log:\n{log}",
                        match exited {
                            Some(status) => format!("exited with {status}"),
                            None => format!("did not answer within {READY_TIMEOUT:?}"),
                        }
                    );
                    break; // drop kills it
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err(last_error)
    }
}

static SHARED: Mutex<Option<MotoServer>> = Mutex::new(None);
static ENDPOINT: OnceLock<Result<String, (bool, String)>> = OnceLock::new();

extern "C" fn stop_shared() {
    let server = SHARED.lock().unwrap_or_else(PoisonError::into_inner).take();
    drop(server);
}

/// The endpoint of the shared server, starting it on first use. `None` means "skip this test"
/// (only outside CI, when moto is not installed); any other problem panics.
pub fn shared_endpoint() -> Option<String> {
    let result = ENDPOINT.get_or_init(|| {
        let bin = find_moto().map_err(|why| (true, why))?;
        let server = MotoServer::start(&bin).map_err(|why| (false, why))?;
        let endpoint = server.endpoint.clone();
        *SHARED.lock().unwrap_or_else(PoisonError::into_inner) = Some(server);
        // SAFETY: registering a plain extern "C" fn without captured state.
        unsafe {
            libc::atexit(stop_shared);
        }
        Ok(endpoint)
    });
    match result {
        Ok(endpoint) => Some(endpoint.clone()),
        Err((true, why)) if !in_ci() => {
            eprintln!(
                "\n!!!!!!!! SKIPPING S3 TEST: {why}\n!!!!!!!! (with CI=true this is a failure)\n"
            );
            None
        }
        Err((_, why)) => panic!("moto S3 server unavailable: {why}"),
    }
}
