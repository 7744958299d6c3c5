//! Crash injection for tests: `fail_point!` sites (compiled in with the `testing` feature and
//! armed through the `FAILPOINTS` environment variable, e.g. `FAILPOINTS=partial-after-put=return`)
//! call [`crash`], which stops the process as abruptly as `kill -9`: no unwinding, no cleanup,
//! no final flush. The crash tests then check what a real crash at that point leaves behind.

/// Aborts the process at failpoint `name`.
pub(crate) fn crash(name: &str) -> ! {
    eprintln!("failpoint {name}: crashing the process");
    std::process::abort()
}
