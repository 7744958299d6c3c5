//! The demo's `safekeeper run` child process: started from this very executable, stopped by its
//! PID (SIGTERM, then SIGKILL after a bounded wait), and told to stop by the kernel if the demo
//! itself dies (`PR_SET_PDEATHSIG`), so it never outlives the demo.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use super::postgres::{last_lines, scrub_env};

pub(super) struct SafekeeperChild {
    child: Child,
    log: PathBuf,
}

impl SafekeeperChild {
    /// Starts `exe run ARGS`, its output appended to `log`.
    pub(super) fn spawn(exe: &Path, args: Vec<OsString>, log: &Path) -> Result<SafekeeperChild> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("run").args(args);
        scrub_env(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        // SAFETY: prctl is async-signal-safe. The runtime is single-threaded, so the parent
        // "thread" whose exit triggers the signal is the demo's main thread.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().context("cannot start `safekeeper run`")?;
        Ok(SafekeeperChild {
            child,
            log: log.to_path_buf(),
        })
    }

    /// An error with the tail of its log if the process has exited.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("the safekeeper exited ({status}): {}", last_lines(&log, 3));
        }
        Ok(())
    }

    /// SIGTERM (it uploads its final partial on the way out), SIGKILL after 15 s.
    pub(super) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child by its PID; it has not been reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
