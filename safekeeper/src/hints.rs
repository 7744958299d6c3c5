//! What to do about the errors a newcomer hits: one line per known cause, put in front of the
//! error itself, so a log line or an exit message says what to change before what went wrong.
//!
//! Owns the mapping from an error (a PostgreSQL server error by SQLSTATE and message, a network
//! or filesystem error, an object-storage error) to advice. Unknown errors get no hint: a wrong
//! hint is worse than none.

use std::io;

use remote_storage::{ErrorKind, StorageError};

use crate::pg::PgError;

/// The advice for `err`, if its cause is a known misconfiguration.
pub(crate) fn hint_for(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|cause| {
        if let Some(pg) = cause.downcast_ref::<PgError>() {
            return pg_hint(pg);
        }
        if let Some(s) = cause.downcast_ref::<StorageError>() {
            return storage_hint(s);
        }
        if let Some(e) = cause.downcast_ref::<io::Error>() {
            return io_hint(e);
        }
        None
    })
}

/// `err` with its hint in front, as one line.
pub(crate) fn with_hint(err: &anyhow::Error) -> String {
    match hint_for(err) {
        Some(h) => format!("{h} ({err:#})"),
        None => format!("{err:#}"),
    }
}

fn pg_hint(e: &PgError) -> Option<String> {
    match e {
        PgError::Server { code, message, .. } => {
            let m = message.as_str();
            let hint = match code.as_str() {
                "28P01" => {
                    "wrong password for the primary: fix the password in --primary, PGPASSWORD or ~/.pgpass"
                }
                "28000" if m.contains("pg_hba.conf") => {
                    "the primary's pg_hba.conf does not allow this replication connection: add a line like \
                     'host replication <user> <address>/32 scram-sha-256' and reload it"
                }
                "28000" | "42501" if m.contains("replication") || m.contains("permission") => {
                    "this user may not replicate: ALTER ROLE <user> REPLICATION on the primary"
                }
                // PostgreSQL says the same with max_wal_senders = 0 ("currently 0"): that case
                // is a configuration problem, the next arm.
                "53300"
                    if m.contains("exceeds max_wal_senders") && !m.contains("(currently 0)") =>
                {
                    "every WAL sender of the primary is in use: raise max_wal_senders (restart needed) \
                     or stop a replication client (pg_stat_replication)"
                }
                "53300" if m.contains("max_wal_senders") => {
                    "the primary does not accept replication connections: set wal_level = replica and \
                     max_wal_senders > 0 in its postgresql.conf and restart it"
                }
                "55000" if m.contains("wal_level") => {
                    "the primary's wal_level is too low: set wal_level = replica and restart it"
                }
                "55000" if m.contains("max_replication_slots") => {
                    "the primary has replication slots disabled: set max_replication_slots > 0 and restart it"
                }
                "53400" => {
                    "all replication slots of the primary are in use: raise max_replication_slots (restart \
                     needed) or drop unused slots (pg_replication_slots)"
                }
                "3D000" => {
                    "the database in --primary does not exist: fix dbname (replication needs none)"
                }
                "58P01" if m.contains("already been removed") => {
                    "the primary no longer has WAL this safekeeper needs (its slot was dropped or \
                     max_slot_wal_keep_size was exceeded): check the slot and that setting"
                }
                "57P03" => "the primary is starting up or shutting down; retrying",
                _ => return None,
            };
            Some(hint.to_string())
        }
        PgError::Io { source, .. } => io_hint(source),
        PgError::Timeout => Some(
            "the primary did not answer in time: check host/port in --primary and firewalls".into(),
        ),
        PgError::Auth(_) => Some(
            "the primary asks for a password: give it in --primary, PGPASSWORD or ~/.pgpass".into(),
        ),
        _ => None,
    }
}

fn io_hint(e: &io::Error) -> Option<String> {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Some(
            "nothing listens at the primary's address: is PostgreSQL running there, with that port \
             and listen_addresses?"
                .into(),
        ),
        io::ErrorKind::PermissionDenied => Some(
            "no permission: run as a user that may write the data directory, or pass another --data-dir"
                .into(),
        ),
        io::ErrorKind::StorageFull => {
            Some("the disk is full: free space or move --data-dir".into())
        }
        _ => None,
    }
}

fn storage_hint(e: &StorageError) -> Option<String> {
    let text = e.to_string();
    if text.contains("NoSuchBucket") {
        return Some("the bucket in --remote does not exist: create it or fix --remote".into());
    }
    match e.kind() {
        ErrorKind::Permanent if text.contains("AccessDenied") || text.contains("403") => Some(
            "object storage refused access: check the AWS credentials (environment, profile or \
             instance role) and the bucket policy"
                .into(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, message: &str) -> anyhow::Error {
        anyhow::Error::new(PgError::Server {
            severity: "FATAL".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        })
    }

    #[test]
    fn known_causes_get_one_line_of_advice() {
        let e =
            server("28P01", "password authentication failed for user \"x\"").context("connecting");
        let line = with_hint(&e);
        assert!(line.starts_with("wrong password"), "{line}");
        assert!(line.contains("28P01"));
        assert!(!line.contains('\n'));
        let e = server(
            "53300",
            "number of requested standby connections exceeds max_wal_senders (currently 0)",
        );
        assert!(with_hint(&e).contains("wal_level = replica"));
        let e = server(
            "53300",
            "number of requested standby connections exceeds max_wal_senders (currently 10)",
        );
        assert!(with_hint(&e).contains("every WAL sender of the primary is in use"));
        let e = server("53400", "all replication slots are in use");
        assert!(with_hint(&e).contains("max_replication_slots"));
        let refused = anyhow::Error::new(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(with_hint(&refused).contains("is PostgreSQL running"));
        assert_eq!(hint_for(&server("XX000", "internal error")), None);
    }
}
