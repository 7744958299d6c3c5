//! The safekeeper service as a library: the binary in `main.rs` wires these modules together.
//!
//! Module map (each module's own doc comment states the invariants it keeps):
//! - `config`: flags, environment and TOML config, merged and validated.
//! - `service`: starting a cluster (follower thread + manager task) behind a `ClusterHandle`.
//! - `cluster`: the follower of one cluster (its own thread): connect, pin, resume, reconnect.
//! - `manager`: the per-cluster manager task: control file, uploads, partial protocol, GC.
//! - `offload`: the object-storage operations the manager uses.
//! - `control_client`: how the follower asks the manager for durable control-file changes.
//! - `ingest`: the receive loop of a replication session (group commit, acknowledgements).
//! - `control_store`: a cluster's control file in memory and when it is written back.
//! - `status`: what a cluster task publishes about itself.
//! - `remote`: remote storage URL/S3 options and the key layout of remote objects.
//! - `pg`: PostgreSQL replication protocol client (connection, auth, TLS, streaming).
//! - `wal_format`: WAL page/record layout and verification.
//! - `wal_storage`: the local WAL directory (segment files, group-commit writes, resume point).

pub mod archive;
pub mod cluster;
pub mod config;
pub mod control_client;
pub mod control_store;
pub mod failpoint;
pub mod ingest;
pub mod manager;
pub mod offload;
pub mod pg;
pub mod remote;
pub mod service;
pub mod status;
pub mod wal_format;
pub mod wal_storage;
