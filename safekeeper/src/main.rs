//! The `safekeeper` binary: argument parsing, logging setup and dispatch to subcommands.

mod cmd;

use clap::{Parser, Subcommand};

/// Makes PostgreSQL WAL safe the moment it is committed: follows primaries as a synchronous
/// standby, keeps their WAL byte-identical on local disk and offloads it to object storage.
#[derive(Parser, Debug)]
#[command(name = "safekeeper", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Follow one or more primaries as a synchronous standby and keep their WAL.
    Run(safekeeper::config::RunArgs),
    /// Inspect, verify and upgrade a cluster's control file.
    #[command(subcommand)]
    ControlFile(cmd::control_file::ControlFileCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::ControlFile(c) => cmd::control_file::run(c),
    }
}

/// Logs go to stderr; RUST_LOG selects levels (default: info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
