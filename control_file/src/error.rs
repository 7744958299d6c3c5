//! Errors of loading, verifying and saving a control file.
//!
//! Owns [`ControlFileError`] and the helpers that build it from I/O errors and foreign messages.
//!
//! Invariants: every variant names the file and displays as a single line, so the service and the CLI
//! can print it as is. This module is a leaf: it depends on no other module of the crate, so every
//! fact an error reports (such as the expected magic) is carried as a value by the variant.

use std::io;
use std::path::{Path, PathBuf};

/// A control file could not be read, trusted or written.
#[derive(Debug, thiserror::Error)]
pub enum ControlFileError {
    #[error("control file {path} does not exist")]
    NotFound { path: PathBuf },

    #[error("control file {path} is empty (0 bytes)")]
    Empty { path: PathBuf },

    #[error("control file {path} is truncated: {actual} bytes, the header needs {expected}")]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    #[error("control file {path} has {} trailing bytes: {actual} bytes, the header says {expected}", actual - expected)]
    TrailingBytes {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    #[error(
        "control file {path} is not a safekeeper control file: bad magic {found:#010x} (expected {expected:#010x})"
    )]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    #[error(
        "control file {path} is corrupt: checksum mismatch (stored crc32c {expected:#010x}, computed {actual:#010x})"
    )]
    BadChecksum {
        path: PathBuf,
        expected: u32,
        actual: u32,
    },

    #[error(
        "control file {path} was written by a newer safekeeper (format {found} > {supported}); refusing to read it"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error("control file {path} has format version {found}, which never existed (oldest is 1)")]
    UnknownFormat { path: PathBuf, found: u32 },

    #[error("control file {path} (format {version}) cannot be decoded: {reason}")]
    Decode {
        path: PathBuf,
        version: u32,
        reason: String,
    },

    #[error("control file {path} cannot be encoded: {reason}")]
    Encode { path: PathBuf, reason: String },

    #[error("control file {path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },

    #[error("control file {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl ControlFileError {
    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            ControlFileError::NotFound { path }
            | ControlFileError::Empty { path }
            | ControlFileError::Truncated { path, .. }
            | ControlFileError::TrailingBytes { path, .. }
            | ControlFileError::BadMagic { path, .. }
            | ControlFileError::BadChecksum { path, .. }
            | ControlFileError::NewerFormat { path, .. }
            | ControlFileError::UnknownFormat { path, .. }
            | ControlFileError::Decode { path, .. }
            | ControlFileError::Encode { path, .. }
            | ControlFileError::Io { path, .. }
            | ControlFileError::Invalid { path, .. } => path,
        }
    }

    /// True when the file simply does not exist (e.g. a cluster that was never started).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ControlFileError::NotFound { .. })
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> ControlFileError {
        if op == "open" && source.kind() == io::ErrorKind::NotFound {
            return ControlFileError::NotFound {
                path: path.to_owned(),
            };
        }
        ControlFileError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    }
}

/// Collapses any line breaks of a foreign message so errors stay on one line.
pub(crate) fn one_line(msg: impl std::fmt::Display) -> String {
    msg.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
