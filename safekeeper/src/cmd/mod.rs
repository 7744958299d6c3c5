//! The `safekeeper` command line: argument parsing, logging setup, and one module per
//! subcommand. `main.rs` only calls [`main`].

pub mod archive_args;
pub mod backup;
pub mod control_file;
pub mod demo;
pub mod keygen;
pub mod prefetch_worker;
pub mod recover;
pub mod remote;
pub mod remote_cat;
mod remote_ls;
pub mod restore_wal;
mod retention;
pub mod run;

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
    /// Follow primaries as their synchronous standby; keep their WAL on disk and in remote storage.
    Run(crate::process::config::RunArgs),
    /// Inspect, verify and upgrade a cluster's control file.
    #[command(subcommand)]
    ControlFile(control_file::ControlFileCommand),
    /// PostgreSQL's restore_command: fetch one WAL file (%f) from the archive into %p.
    ///
    /// The full segment if it exists, else the partial of that segment holding the most WAL
    /// across safekeepers (highest commit LSN; terms order only one safekeeper's own versions)
    /// zero-padded to the segment size; or a history file. Use as:
    /// restore_command = 'safekeeper restore-wal --remote URL --cluster NAME %f %p'.
    ///
    /// Exit status: 0 restored; 1 not in the archive (PostgreSQL carries on); 255 fatal, which
    /// stops PostgreSQL's recovery: storage unreachable for --retry-for, access denied, a damaged
    /// object, partials of several safekeepers that disagree on their common bytes (unless
    /// --prefer-safekeeper), an empty archive (wrong --remote/--cluster), a bad command line.
    RestoreWal(restore_wal::RestoreWalArgs),
    /// Background worker of `restore-wal --prefetch` (internal).
    #[command(hide = true)]
    RestoreWalPrefetch(prefetch_worker::PrefetchArgs),
    /// List or verify a cluster's archive in remote storage.
    #[command(subcommand)]
    Remote(remote::RemoteCommand),
    /// Write the WAL of a timeline from the archive into a directory (e.g. a new pg_wal).
    ///
    /// Every segment of the newest timeline (and its ancestors, following its history file) up
    /// to the end of the best partial, or --until-lsn; prints the end LSN reached.
    Recover(recover::RecoverArgs),
    /// Take a base backup of a cluster's primary into the remote storage, beside its WAL archive.
    ///
    /// BASE_BACKUP over a replication connection (PostgreSQL 15+), streamed into chunks under
    /// <cluster>/basebackups/<ID>/ with the server's backup manifest; complete once the WAL
    /// archive reaches the backup's end (a safekeeper must be following the cluster).
    Backup(backup::BackupArgs),
    /// Make a data directory from the newest backup that reaches a target, ready to recover.
    ///
    /// Checks that the target is in the recoverable window before writing anything, fetches and
    /// unpacks the chunks in parallel, verifies them against the manifest (and pg_verifybackup
    /// when found), writes recovery.signal and the recovery settings (restore_command =
    /// safekeeper restore-wal with the same archive flags) and prints the command to start it.
    Restore(backup::RestoreArgs),
    /// Try it here: commit on a throwaway primary, destroy it, recover every row from the archive.
    ///
    /// A throwaway primary, the safekeeper as its synchronous standby archiving to a local
    /// directory, a base backup with `safekeeper backup`, a short write load, then the primary is
    /// destroyed (kill -9, data deleted) and a new one is made by `safekeeper restore --latest`
    /// from the backup and the archive alone.
    ///
    /// Needs PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup), taken from PG_BINDIR,
    /// `pg_config --bindir`, an initdb on PATH or /usr/lib/postgresql/<version>/bin. Writes only
    /// under --dir, listens on 127.0.0.1 only, and removes everything at the end unless --keep
    /// (or a step failed). Exit status 0 only when the recovered row count equals the number of
    /// acknowledged commits.
    Demo(demo::DemoArgs),
    /// Write a new encryption key file (mode 0600), or append a new key to one (rotation).
    ///
    /// The file is what --encryption-key-file takes: `ID BASE64KEY` lines; the last key seals new
    /// objects, every key reads. Losing it makes the archive unreadable: keep a copy, away from
    /// the bucket.
    Keygen(keygen::KeygenArgs),
}

/// The whole `safekeeper` binary: parse, set up logging and failpoints, dispatch.
pub fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // `run` sets up logging itself once its configuration says which format (`--log-format`).
    if !matches!(cli.command, Command::Run(_)) {
        crate::telemetry::log::init(crate::telemetry::log::LogFormat::Text);
    }
    // Failpoints from the FAILPOINTS environment variable (only with the `testing` feature).
    let _failpoints = fail::FailScenario::setup();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::ControlFile(c) => control_file::run(c),
        Command::RestoreWal(args) => restore_wal::run(args),
        Command::RestoreWalPrefetch(args) => prefetch_worker::run_prefetch(args),
        Command::Remote(c) => remote::run(c),
        Command::Recover(args) => recover::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Backup(args) => backup::run_backup(args),
        Command::Restore(args) => backup::run_restore(args),
    }
}

/// Prints clap's message. A malformed `restore-wal` command line is fatal for PostgreSQL (exit
/// 255), not clap's usual 2, which PostgreSQL would read as "file not found" and end recovery.
fn usage_error(e: clap::Error) -> std::process::ExitCode {
    let _ = e.print();
    let is_restore = std::env::args().nth(1).as_deref() == Some("restore-wal");
    let informational = matches!(
        e.kind(),
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
    );
    if is_restore && !informational {
        return std::process::ExitCode::from(restore_wal::EXIT_FATAL);
    }
    std::process::ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}
