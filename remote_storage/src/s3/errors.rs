//! Classifying S3 failures into [`ErrorKind`]s.
//!
//! Owns the one table that decides which S3 answers are retryable. Invariants: a missing bucket is
//! `Permanent` (never `NotFound`, which restore would read as "no such segment"); `NotFound` only
//! comes from reads of a key (`get`, `head`, `get_tags`, the source of `copy`); anything that
//! never reached a response (connection refused or reset, DNS) is `Transient`; messages carry the
//! status code, the service's error code and message, never credentials.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::error::{ErrorKind, Op, StorageError};

/// The kind for an S3 error response with this HTTP status and error code, for operation `op`.
pub(crate) fn kind_for_response(op: Op, status: Option<u16>, code: Option<&str>) -> ErrorKind {
    let by_code = match code {
        Some("NoSuchBucket" | "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
            Some(ErrorKind::Permanent)
        }
        Some("NoSuchKey" | "NotFound") => Some(ErrorKind::NotFound),
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeout"
            | "InternalError"
            | "ServiceUnavailable"
            | "RequestLimitExceeded"
            | "OperationAborted",
        ) => Some(ErrorKind::Transient),
        Some("InvalidRange") => Some(ErrorKind::InvalidInput),
        Some("BadDigest" | "InvalidDigest" | "XAmzContentChecksumMismatch" | "InvalidChecksum") => {
            Some(ErrorKind::ChecksumMismatch)
        }
        _ => None,
    };
    let kind = by_code.unwrap_or(match status {
        Some(404) => ErrorKind::NotFound,
        Some(416) => ErrorKind::InvalidInput,
        Some(408 | 429) => ErrorKind::Transient,
        Some(s) if s >= 500 => ErrorKind::Transient,
        Some(_) => ErrorKind::Permanent,
        None => ErrorKind::Transient,
    });
    // A put, list or delete cannot miss a *key*: a 404 there means the bucket is gone.
    match (kind, op) {
        (ErrorKind::NotFound, Op::Put | Op::List | Op::Delete | Op::Open) => ErrorKind::Permanent,
        (kind, _) => kind,
    }
}

/// Map an SDK error of operation `op` on `key` into a [`StorageError`].
pub(crate) fn map_sdk_error<E, R>(
    err: SdkError<E, R>,
    op: Op,
    backend: &str,
    key: &str,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus,
{
    let (kind, detail) = match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status_code();
            let code = service.err().code();
            let kind = kind_for_response(op, Some(status), code);
            let detail = format!(
                "HTTP {status}, code {}, message {}",
                code.unwrap_or("-"),
                service.err().message().unwrap_or("-")
            );
            (kind, detail)
        }
        SdkError::TimeoutError(_) => (ErrorKind::Timeout, DisplayErrorContext(&err).to_string()),
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            (ErrorKind::Timeout, DisplayErrorContext(&err).to_string())
        }
        SdkError::DispatchFailure(d) if d.is_user() => {
            (ErrorKind::Permanent, DisplayErrorContext(&err).to_string())
        }
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (ErrorKind::Transient, DisplayErrorContext(&err).to_string())
        }
        SdkError::ConstructionFailure(_) => {
            (ErrorKind::Permanent, DisplayErrorContext(&err).to_string())
        }
        _ => (ErrorKind::Transient, DisplayErrorContext(&err).to_string()),
    };
    StorageError::new(kind, op, backend, key, detail)
}

/// The HTTP status of a raw response type (abstracted so the mapping can be unit tested).
pub(crate) trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        use ErrorKind::*;
        let k = kind_for_response;
        assert_eq!(k(Op::Get, Some(404), Some("NoSuchKey")), NotFound);
        assert_eq!(k(Op::Head, Some(404), None), NotFound);
        assert_eq!(k(Op::Get, Some(404), Some("NoSuchBucket")), Permanent);
        assert_eq!(k(Op::Put, Some(404), None), Permanent);
        assert_eq!(k(Op::Get, Some(403), Some("AccessDenied")), Permanent);
        assert_eq!(k(Op::Put, Some(503), Some("SlowDown")), Transient);
        assert_eq!(k(Op::Put, Some(500), None), Transient);
        assert_eq!(k(Op::Put, Some(400), Some("RequestTimeout")), Transient);
        assert_eq!(k(Op::Put, Some(429), None), Transient);
        assert_eq!(k(Op::Get, Some(416), Some("InvalidRange")), InvalidInput);
        assert_eq!(k(Op::Put, Some(400), Some("BadDigest")), ChecksumMismatch);
        assert_eq!(k(Op::Put, Some(400), Some("InvalidArgument")), Permanent);
        assert_eq!(k(Op::Copy, Some(404), Some("NoSuchKey")), NotFound);
    }
}
