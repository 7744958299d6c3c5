//! What one followed cluster is configured with: its identity upstream and the knobs of its
//! follower and manager. Resolved and validated by `process::config` (command line, environment,
//! config file) or by the admin API, then handed to [`super::start_cluster`]; read-only after.

use std::time::Duration;

use anyhow::{Result, ensure};

/// One upstream cluster to follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    pub primary: String,
    pub slot: String,
    pub application_name: String,
}

/// Knobs of the background work.
#[derive(Clone, Copy, Debug)]
pub struct OffloadSettings {
    pub upload_parallelism: usize,
    pub partial_interval: Duration,
    pub local_retention: u64,
    /// How uploaded objects are compressed.
    pub compression: crate::object_format::Compression,
}

/// Knobs of the receive loop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IngestOptions {
    /// Send a status update at least this often even when no WAL arrives.
    pub status_interval: Duration,
    /// End the session when nothing at all arrived for this long (a primary that vanished
    /// without closing the connection); like PostgreSQL's `wal_receiver_timeout`.
    pub receive_timeout: Duration,
}

/// Checks the names of one cluster entry (from the command line, the config file or the admin
/// API): the cluster name becomes a directory name, the slot an SQL identifier, and the
/// application name goes into the startup packet (PostgreSQL keeps 63 bytes of it).
pub(crate) fn validate_cluster(c: &ClusterConfig) -> Result<()> {
    validate_name("cluster name", &c.name)?;
    validate_name("slot name", &c.slot)?;
    ensure!(
        !c.application_name.is_empty()
            && c.application_name.len() <= 63
            && c.application_name
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b)),
        "application name {:?} must be 1-63 printable ASCII characters",
        c.application_name
    );
    Ok(())
}

/// Cluster and slot names become directory names and SQL identifiers: keep them plain.
fn validate_name(what: &str, name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !name.starts_with('-'),
        "{what} {name:?} must be 1-63 characters of letters, digits, '_' or '-'"
    );
    if what == "slot name" {
        ensure!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "slot name {name:?} may contain only lower-case letters, digits and '_' (a PostgreSQL rule)"
        );
    }
    Ok(())
}
