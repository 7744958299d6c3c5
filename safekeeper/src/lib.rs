//! The safekeeper service. `docs/architecture.md` (in the repository) maps the threads, tasks,
//! owners, channels and invariants to the modules below; each module's doc comment states what it
//! owns and which invariants it keeps.
//!
//! Layers, lowest first (a module imports only from the layers below it; `scripts/check_tree.py`
//! enforces that no top-level modules import each other in a cycle):
//! - [`wal`], [`pg`], [`telemetry`], [`failpoint`], [`hints`]: the WAL format and local store,
//!   the PostgreSQL replication client, metric names, crash injection, advice for errors.
//! - [`remote`]: the remote key layout and how to open object storage; [`object_format`]: the
//!   bytes of every uploaded object; [`encryption`]: the key file and the cipher that seals
//!   them; [`chain`]: partial versions as chains of pieces.
//! - [`archive`]: reading an archive back (the recovery tooling's core); [`backup`]: base
//!   backups in the remote, the recoverable window, restore.
//! - [`cluster`]: one followed cluster: its follower thread and its manager task.
//! - [`process`]: what exists once per `safekeeper run`: configuration, the cluster set, the
//!   shared storage stack.
//! - [`http`]: the admin API and `/metrics`, over the cluster set.
//! - [`cmd`]: the command line.

// A service crate: its documentation is its internals, read with `--document-private-items`
// (as `scripts/test.sh` builds it), where links to private items resolve.
#![deny(rustdoc::broken_intra_doc_links)]
#![allow(rustdoc::private_intra_doc_links)]
// Clap turns doc comments into `--help` text, where `<data-dir>` is meant literally.
#![allow(rustdoc::invalid_html_tags)]
#![deny(unreachable_pub)]
#![warn(missing_debug_implementations)]

pub(crate) mod archive;
pub(crate) mod backup;
pub(crate) mod chain;
pub(crate) mod cluster;
pub mod cmd;
pub mod encryption;
pub(crate) mod failpoint;
pub(crate) mod hints;
pub(crate) mod http;
pub mod object_format;
pub mod pg;
pub mod process;
pub(crate) mod remote;
pub(crate) mod telemetry;
pub(crate) mod wal;
