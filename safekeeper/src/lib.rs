//! The safekeeper service as a library: the binary in `main.rs` wires these modules together.
//!
//! Module map (each module's own doc comment states the invariants it keeps):
//! - `config`: flags, environment and TOML config, merged and validated.
//! - `service`: starting a cluster (follower thread + manager task) behind a `ClusterHandle`.
//! - `cluster_set`: the running clusters by name; adding/removing them at run time.
//! - `runtime_clusters`: `<data-dir>/clusters.toml`, the clusters added through the admin API.
//! - `http`: the admin API (axum) and its generated OpenAPI document.
//! - `telemetry`: Prometheus metrics (event recorder + scrape-time cluster state).
//! - `lag`: lag of each stage in bytes and seconds.
//! - `cluster`: the follower of one cluster (its own thread): connect, pin, resume, reconnect.
//! - `manager`: the per-cluster manager task: control file, uploads, partial protocol, GC.
//! - `offload`: the object-storage operations the manager uses.
//! - `control_client`: how the follower asks the manager for durable control-file changes.
//! - `ingest`: the receive loop of a replication session (group commit, acknowledgements).
//! - `control_store`: a cluster's control file in memory and when it is written back.
//! - `status`: what a cluster task publishes about itself.
//! - `remote`: remote storage URL/S3 options and the key layout of remote objects.
//! - `hints`: one line of advice for the misconfigurations a newcomer hits.
//! - `pg`: PostgreSQL replication protocol client (connection, auth, TLS, streaming).
//! - `wal_format`: WAL page/record layout and verification.
//! - `wal_storage`: the local WAL directory (segment files, group-commit writes, resume point).

pub mod archive;
pub mod cluster;
pub mod cluster_set;
pub mod config;
pub mod control_client;
pub mod control_store;
pub mod failpoint;
pub mod hints;
pub mod http;
pub mod ingest;
pub mod lag;
pub mod manager;
pub mod offload;
pub mod pg;
pub mod remote;
pub mod runtime_clusters;
pub mod service;
pub mod status;
pub mod telemetry;
pub mod wal_format;
pub mod wal_storage;
