//! The `safekeeper` binary. Everything, the command line included, lives in the library
//! (`safekeeper::cmd`), so that its items can be crate-private and dead code is found.

fn main() -> std::process::ExitCode {
    safekeeper::cmd::main()
}
