//! The one error type of this crate.
//!
//! Owns [`StorageError`], [`ErrorKind`] and [`Op`].
//!
//! Invariants:
//! - every error names the operation, the backend (`file:///…` or `s3://bucket/prefix`) and the key,
//!   so a single log line says what failed where;
//! - the [`ErrorKind`] alone tells a caller what to do next: retry ([`ErrorKind::is_retryable`]),
//!   treat the object as absent ([`ErrorKind::NotFound`]), or give up;
//! - messages never contain credentials: backends only put keys, sizes, status codes and the
//!   service's own error text into them.

use std::fmt;

/// What went wrong, at the granularity callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object (or, for `copy`, its source) does not exist. Restore relies on this being
    /// distinct from every other failure.
    NotFound,
    /// Retrying cannot help: access denied, missing bucket, malformed request, disk errors.
    Permanent,
    /// A failure that may go away: 5xx, throttling, connection reset, truncated response.
    Transient,
    /// A request did not finish within its per-request timeout. Retryable.
    Timeout,
    /// The caller's [`CancellationToken`](tokio_util::sync::CancellationToken) fired.
    Cancelled,
    /// The bytes do not match the crc32c recorded for them (or declared by the caller on put).
    ChecksumMismatch,
    /// The bytes are not as long as recorded (or as declared by the caller on put).
    LengthMismatch,
    /// The request itself is wrong: an invalid key, range, tag or metadata entry, or a payload
    /// stream that failed on the caller's side.
    InvalidInput,
}

impl ErrorKind {
    /// Whether repeating the same request may succeed. Checksum and length mismatches are not
    /// retryable: TCP, TLS and content-length framing make corruption in transit very unlikely, so
    /// a mismatch means the stored object is bad and reading it again returns the same bytes.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient | ErrorKind::Timeout)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Permanent => "permanent error",
            ErrorKind::Transient => "transient error",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::ChecksumMismatch => "checksum mismatch",
            ErrorKind::LengthMismatch => "length mismatch",
            ErrorKind::InvalidInput => "invalid input",
        };
        f.write_str(s)
    }
}

/// The storage operation an error (or an injected fault) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `put`.
    Put,
    /// `get`, including reading the body.
    Get,
    /// `head`.
    Head,
    /// `get_tags`.
    GetTags,
    /// `list`, one page or the whole listing.
    List,
    /// `delete_many` (and the `delete` convenience).
    Delete,
    /// `copy`.
    Copy,
    /// Building a backend from a URL and options.
    Open,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Head => "head",
            Op::GetTags => "get_tags",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Copy => "copy",
            Op::Open => "open",
        };
        f.write_str(s)
    }
}

/// An error from a `RemoteStorage` operation.
///
/// It is `Clone` and carries its cause as text (rendered with the full source chain where it was
/// created), so wrappers can keep, copy and re-raise errors freely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} {key:?} on {backend}: {kind}: {message}")]
pub struct StorageError {
    kind: ErrorKind,
    op: Op,
    backend: String,
    key: String,
    message: String,
}

impl StorageError {
    /// An error of `kind` while doing `op` on `key` of `backend` (the storage's `name()`).
    pub fn new(
        kind: ErrorKind,
        op: Op,
        backend: impl Into<String>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        StorageError {
            kind,
            op,
            backend: backend.into(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A [`ErrorKind::Cancelled`] error.
    pub fn cancelled(op: Op, backend: &str, key: &str) -> Self {
        Self::new(
            ErrorKind::Cancelled,
            op,
            backend,
            key,
            "operation cancelled",
        )
    }

    /// What went wrong, as callers branch on it.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The backend the error happened on, as `file:///…` or `s3://bucket/prefix`.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The key (for `list`, the prefix; for `delete_many`, the first failing key).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The details, without the kind, operation, backend and key (see `Display` for all of it).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the kind is [`ErrorKind::NotFound`].
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// Prefix the message with more context, keeping kind, op, backend and key.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// Same error with another kind (e.g. a wrapper deciding a failure is final).
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }
}

/// The result type of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Map an I/O error from the local filesystem to a kind. Missing files are `NotFound`; the few
/// errors a retry can fix are `Transient`; anything else (EIO, ENOSPC, EACCES, EROFS, ...) is
/// `Permanent`, since a disk rarely heals within a retry budget.
pub(crate) fn io_kind(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => ErrorKind::NotFound,
        K::Interrupted | K::WouldBlock | K::TimedOut => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_op_key_backend_and_kind() {
        let e = StorageError::new(
            ErrorKind::NotFound,
            Op::Get,
            "s3://b/p",
            "wal/000000010000000000000001",
            "NoSuchKey",
        );
        let s = e.to_string();
        assert!(s.contains("get"), "{s}");
        assert!(s.contains("s3://b/p"), "{s}");
        assert!(s.contains("wal/000000010000000000000001"), "{s}");
        assert!(s.contains("not found"), "{s}");
        assert!(e.is_not_found());
        assert!(!e.kind().is_retryable());
        assert!(ErrorKind::Timeout.is_retryable());
    }
}
