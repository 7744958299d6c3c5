//! The safekeeper control file: the persisted state of one cluster.
//!
//! - [`lsn`]: typed WAL positions and segment arithmetic.
//! - [`names`]: names of segments, partial segments and history files (docs/architecture.md, "In object storage").
//! - [`ClusterState`] and the remote object list, with their invariants ([`ClusterState::validate`])
//!   (module `state`).
//! - [`ControlFileError`]: every way a load or save can fail (module `error`).
//! - [`format`](mod@format): the on-disk bytes (frame + versioned bincode payload) and the upgrade chain.
//! - [`load`] / [`save`]: verified reads and crash-safe writes (module `file`).
//!
//! A load verifies the magic, lengths, checksum, format version and invariants, and upgrades older
//! formats in memory; a save validates and always writes [`CURRENT_FORMAT_VERSION`].
//!
//! Module dependencies form a DAG, lowest first: `lsn` ← `names` ← `state` ← `format` ← `file`,
//! with `error` a leaf used by `format` and `file`. A module never names one above it, not even
//! in a doc link.

#![deny(
    rustdoc::broken_intra_doc_links,
    rustdoc::bare_urls,
    rust_2018_idioms,
    unreachable_pub
)]
#![warn(missing_debug_implementations)]

mod error;
mod file;
pub mod format;
pub mod lsn;
pub mod names;
mod state;

pub use error::ControlFileError;
pub use file::{
    UpgradeOutcome, load, load_versioned, save, temp_path, upgrade_in_place, with_suffix,
    write_durably,
};
pub use format::CURRENT_FORMAT_VERSION;
pub use lsn::Lsn;
pub use names::{PartialName, TimelineId};
pub use state::{
    ClusterState, HistoryObject, ObjectStatus, PartialObject, RemoteObjects, SegmentRange,
    TermSwitch,
};
