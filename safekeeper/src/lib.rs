//! The safekeeper service as a library: the binary in `main.rs` wires these modules together.
//!
//! Module map (each module's own doc comment states the invariants it keeps):
//! - `config`: flags, environment and TOML config, merged and validated.
//! - `cluster`: one task per followed cluster: connect, pin, resume, reconnect.
//! - `ingest`: the receive loop of a replication session (group commit, acknowledgements).
//! - `control_store`: a cluster's control file in memory and when it is written back.
//! - `status`: what a cluster task publishes about itself.
//! - `pg`: PostgreSQL replication protocol client (connection, auth, TLS, streaming).
//! - `wal_format`: WAL page/record layout and verification.
//! - `wal_storage`: the local WAL directory (segment files, group-commit writes, resume point).

pub mod cluster;
pub mod config;
pub mod control_store;
pub mod ingest;
pub mod pg;
pub mod status;
pub mod wal_format;
pub mod wal_storage;
