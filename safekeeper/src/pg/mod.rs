//! PostgreSQL physical replication client.
//!
//! This module owns everything the safekeeper says to an upstream PostgreSQL server: parsing the
//! libpq-style connection string ([`ConnInfo`]), opening a replication session over TCP or a unix
//! socket with optional TLS and password/MD5/SCRAM authentication ([`ReplicationConnection`]),
//! replication commands (`IDENTIFY_SYSTEM`, `SHOW`, `TIMELINE_HISTORY`, `CREATE_REPLICATION_SLOT`,
//! `START_REPLICATION`) and the CopyBoth stream of WAL and keepalives ([`ReplicationStream`]), and
//! `BASE_BACKUP` ([`basebackup`]).
//!
//! Invariants shared by the submodules:
//! - The client never buffers bytes it has not yet interpreted outside one read buffer, so a
//!   message is either fully decoded or left untouched (receiving is cancel-safe).
//! - Every wire-level failure is a [`PgError`]; after any error other than [`PgError::Server`]
//!   returned by a query-style method the connection must be dropped, not reused.
//! - LSNs are plain `u64` byte positions; [`format_lsn`]/[`parse_lsn`] convert the `X/Y` text form.

pub mod basebackup;
mod connect;
mod connection;
pub mod conninfo;
mod error;
mod stream;
mod text;
mod tls;
mod wire;

pub use connection::{IdentifySystem, ReplicationConnection, ReplicationSlotInfo, SessionKind};
pub use conninfo::{ConnInfo, SslMode, TargetSessionAttrs};
pub use error::PgError;
pub use stream::{ReplicationMessage, ReplicationStream, pg_timestamp_now};
pub use text::{format_lsn, parse_lsn};
