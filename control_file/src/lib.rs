//! The safekeeper control file: the persisted state of one cluster.
//!
//! - [`lsn`]: typed WAL positions and segment arithmetic.
//! - [`names`]: names of segments, partial segments and history files (DESIGN.md "Remote layout").
//! - [`ClusterState`] and the remote object list, with their invariants ([`ClusterState::validate`]).
//! - [`format`](mod@format): the on-disk bytes (frame + versioned bincode payload) and the upgrade chain.
//! - [`load`] / [`save`]: verified reads and crash-safe writes.
//!
//! A load verifies the magic, lengths, checksum, format version and invariants, and upgrades older
//! formats in memory; a save validates and always writes [`CURRENT_FORMAT_VERSION`].

mod error;
mod file;
pub mod format;
pub mod lsn;
pub mod names;
mod state;

pub use error::ControlFileError;
pub use file::{
    UpgradeOutcome, load, load_versioned, read_bytes, save, temp_path, upgrade_in_place,
    with_suffix, write_durably,
};
pub use format::CURRENT_FORMAT_VERSION;
pub use lsn::Lsn;
pub use names::{PartialName, TimelineId};
pub use state::{
    ClusterState, HistoryObject, ObjectStatus, PartialObject, RemoteObjects, SegmentRange,
    TermSwitch,
};
