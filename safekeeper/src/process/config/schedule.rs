//! The scheduled-backup settings of `safekeeper run` (`--backup-interval`, `--backup-keep-last`,
//! `--backup-keep-within`, and the same keys in the config file), resolved by the usual rule
//! (flag or environment variable, then the file) and checked.
//!
//! Invariants: no interval means no scheduled backups, whatever else is set (a retention policy
//! without backups would only delete); an interval is at least a minute (a base backup of a
//! real database takes longer than that, and each one makes the primary checkpoint).

use std::time::Duration;

use anyhow::{Result, ensure};
use clap::Args;

use super::setting::Setting;
use crate::cluster::scheduled_backup::BackupSchedule;

/// The shortest `--backup-interval` accepted (builds with the `testing` feature accept shorter
/// ones, so the end-to-end test sees several scheduled backups in seconds).
const MIN_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Args, Debug, Clone, Default)]
pub struct BackupScheduleArgs {
    /// Take a base backup of every followed cluster this often (e.g. 1d), as `safekeeper backup`
    /// does, into the same remote; the first one shortly after start when the remote has none,
    /// then one interval after the newest (default: no scheduled backups; at least 1m).
    #[arg(long, env = "SAFEKEEPER_BACKUP_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub backup_interval: Option<Duration>,

    /// After each scheduled backup, keep the newest N backups and delete older ones with the WAL
    /// only they need (as `remote retention --keep-last N --delete`).
    #[arg(long, env = "SAFEKEEPER_BACKUP_KEEP_LAST", value_name = "N")]
    pub backup_keep_last: Option<usize>,

    /// After each scheduled backup, keep the backups that ended within this long (as `remote
    /// retention --keep-within D --delete`; with --backup-keep-last, either keeps a backup).
    #[arg(long, env = "SAFEKEEPER_BACKUP_KEEP_WITHIN", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub backup_keep_within: Option<Duration>,
}

/// The schedule from the flags and the file's `(backup_interval, backup_keep_last,
/// backup_keep_within)`.
pub(super) fn resolve(
    args: &BackupScheduleArgs,
    file: (Option<Duration>, Option<usize>, Option<Duration>),
) -> Result<Option<BackupSchedule>> {
    let interval = Setting::new(&args.backup_interval, &file.0).optional();
    let keep_last = Setting::new(&args.backup_keep_last, &file.1).optional();
    let keep_within = Setting::new(&args.backup_keep_within, &file.2).optional();
    let Some(interval) = interval else {
        ensure!(
            keep_last.is_none() && keep_within.is_none(),
            "--backup-keep-last and --backup-keep-within need --backup-interval"
        );
        return Ok(None);
    };
    ensure!(
        interval >= MIN_INTERVAL || cfg!(feature = "testing"),
        "--backup-interval must be at least 1m"
    );
    ensure!(
        keep_last != Some(0),
        "--backup-keep-last must be at least 1"
    );
    Ok(Some(BackupSchedule {
        interval,
        keep_last,
        keep_within,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(i: Option<u64>, last: Option<usize>) -> BackupScheduleArgs {
        BackupScheduleArgs {
            backup_interval: i.map(Duration::from_secs),
            backup_keep_last: last,
            backup_keep_within: None,
        }
    }

    #[test]
    fn off_by_default_and_policy_needs_an_interval() {
        assert_eq!(
            resolve(&args(None, None), (None, None, None)).unwrap(),
            None
        );
        assert!(resolve(&args(None, Some(2)), (None, None, None)).is_err());
        assert!(resolve(&args(Some(3600), Some(0)), (None, None, None)).is_err());
    }

    #[test]
    fn the_flag_beats_the_file() {
        let s = resolve(
            &args(Some(7200), None),
            (Some(Duration::from_secs(3600)), Some(3), None),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.interval, Duration::from_secs(7200));
        assert_eq!(s.keep_last, Some(3));
    }
}
