//! One module per subcommand of the `safekeeper` binary.

pub mod control_file;
pub mod run;
