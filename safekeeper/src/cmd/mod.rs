//! One module per subcommand of the `safekeeper` binary.

pub mod archive_args;
pub mod control_file;
pub mod demo;
pub mod recover;
pub mod remote;
pub mod restore_wal;
pub mod run;
