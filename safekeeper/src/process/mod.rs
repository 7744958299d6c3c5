//! What exists once per `safekeeper run`: the resolved configuration, the set of followed
//! clusters (with the run-time list in `<data-dir>/clusters.toml`), and the one object-storage
//! stack all clusters share; the observer that keeps the upload-lag history and logs state
//! changes. See `docs/architecture.md` for how these own the clusters.

pub(crate) mod cluster_set;
pub(crate) mod clusters_toml;
pub mod config;
pub(crate) mod observer;
pub(crate) mod storage;
pub(crate) mod sync_standby;
