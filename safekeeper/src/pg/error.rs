//! The error type of the replication client and its reconnect classification.
//!
//! Invariant: [`PgError::is_transient`] is `true` only for failures that a later attempt against
//! the same configuration can reasonably get past (network trouble, a server that is restarting
//! or overloaded, a slot still held by a dying walsender). Configuration, authentication and
//! protocol errors are permanent: retrying them in a loop would only hide the problem.

use std::io;

/// Any failure of a PostgreSQL connection or command.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Reading from or writing to the socket failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The server closed the connection or ended the stream without an error message
    /// (typically a shutdown).
    #[error("connection closed by server: {0}")]
    Closed(String),
    /// An `ErrorResponse` from the server.
    #[error("{}", format_server_error(.severity, .code, .message, .detail.as_deref()))]
    Server {
        /// Non-localized severity (`ERROR`, `FATAL`, `PANIC`).
        severity: String,
        /// SQLSTATE code, e.g. `28P01`.
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    /// The server sent something this client does not expect.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// TLS negotiation or certificate verification failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Authentication could not be performed on the client side.
    #[error("authentication: {0}")]
    Auth(String),
    /// The connection was not established within `connect_timeout`.
    #[error("timed out while connecting")]
    Timeout,
    /// The connection string or environment is invalid.
    #[error("invalid connection settings: {0}")]
    Config(String),
}

fn format_server_error(severity: &str, code: &str, message: &str, detail: Option<&str>) -> String {
    let mut s = format!("{severity} {code}: {message}");
    if let Some(detail) = detail {
        s.push_str(" (DETAIL: ");
        s.push_str(&detail.replace('\n', " "));
        s.push(')');
    }
    s
}

impl PgError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        PgError::Io {
            context: context.into(),
            source,
        }
    }

    /// The SQLSTATE of a server error, if this is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether retrying later (reconnecting) may succeed. See the module documentation.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Io { .. } | PgError::Closed(_) | PgError::Timeout => true,
            PgError::Server { code, .. } => is_transient_sqlstate(code),
            PgError::Protocol(_) | PgError::Tls(_) | PgError::Auth(_) | PgError::Config(_) => false,
        }
    }
}

/// SQLSTATEs worth a reconnect.
fn is_transient_sqlstate(code: &str) -> bool {
    // Class 08: connection exceptions, except 08P01 protocol_violation (a client bug or a
    // request the server rejects, e.g. an invalid start position). Class 53: insufficient resources
    // (too_many_connections, out_of_memory, disk_full). Class 57: operator intervention
    // (admin/crash shutdown, cannot_connect_now while starting up), except 57014 query_canceled
    // which is also transient. 55006 object_in_use: the slot is still active for an old walsender.
    // 40001/40P01 for completeness of the "try again" family.
    (code.starts_with("08") && code != "08P01")
        || code.starts_with("53")
        || code.starts_with("57")
        || matches!(code, "55006" | "40001" | "40P01" | "55P03")
}

/// Builds a [`PgError::Server`] from the `(field type, value)` pairs of an ErrorResponse.
pub(crate) fn server_error<'a>(fields: impl IntoIterator<Item = (u8, &'a str)>) -> PgError {
    let mut severity_localized = None;
    let mut severity = None;
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = None;
    let mut hint = None;
    for (ty, value) in fields {
        match ty {
            b'S' => severity_localized = Some(value.to_owned()),
            b'V' => severity = Some(value.to_owned()),
            b'C' => code = value.to_owned(),
            b'M' => message = value.to_owned(),
            b'D' => detail = Some(value.to_owned()),
            b'H' => hint = Some(value.to_owned()),
            _ => {}
        }
    }
    PgError::Server {
        severity: severity
            .or(severity_localized)
            .unwrap_or_else(|| "ERROR".to_owned()),
        code,
        message,
        detail,
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_display_and_class() {
        let e = server_error([
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28P01"),
            (b'M', "password authentication failed for user \"x\""),
        ]);
        assert_eq!(
            e.to_string(),
            "FATAL 28P01: password authentication failed for user \"x\""
        );
        assert_eq!(e.code(), Some("28P01"));
        assert!(!e.is_transient());

        let e = server_error([(b'S', "FATAL"), (b'C', "57P01"), (b'M', "bye")]);
        assert!(e.is_transient());
        let e = server_error([
            (b'S', "ERROR"),
            (b'C', "58P01"),
            (b'M', "requested WAL segment has already been removed"),
            (b'D', "line1\nline2"),
        ]);
        assert!(!e.is_transient());
        assert_eq!(
            e.to_string(),
            "ERROR 58P01: requested WAL segment has already been removed (DETAIL: line1 line2)"
        );
        for code in ["57P03", "53300", "08006", "55006"] {
            assert!(server_error([(b'C', code)]).is_transient(), "{code}");
        }
        for code in ["28000", "3D000", "42704", "42501"] {
            assert!(!server_error([(b'C', code)]).is_transient(), "{code}");
        }
        assert!(PgError::io("x", io::ErrorKind::ConnectionReset.into()).is_transient());
        assert!(!PgError::Auth("x".into()).is_transient());
    }
}
