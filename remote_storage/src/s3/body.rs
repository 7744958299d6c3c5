//! Bodies in and out of the SDK.
//!
//! Owns the conversion of a [`PutPayload`] into an SDK request body and of an SDK response body
//! into a [`ByteStream`].
//!
//! Invariants: a streamed upload body is a [`VerifiedStream`] with the declared length as its exact
//! size hint, so a payload of the wrong length or crc32c fails before its last byte is sent and
//! S3 never completes the object; the first such failure is recorded in a `PayloadFailure` so
//! the put reports it instead of the SDK's generic transport error.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use futures::StreamExt;
use http_body::{Frame, SizeHint};

use crate::error::{ErrorKind, StorageError};
use crate::object::{ByteStream, PutPayload, StreamSource, VerifiedStream, Verifier};

/// The first error a payload stream produced during an upload attempt, as a kind and a message:
/// a length or crc32c mismatch keeps its kind, any other failure of the caller's source is
/// [`ErrorKind::InvalidInput`].
#[derive(Debug, Clone, Default)]
pub(crate) struct PayloadFailure(Arc<Mutex<Option<(ErrorKind, String)>>>);

impl PayloadFailure {
    fn record(&self, e: &io::Error) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            let kind = match VerifiedStream::mismatch(e) {
                Some(m) => m.kind(),
                None => match e.get_ref().and_then(|i| i.downcast_ref::<StorageError>()) {
                    Some(se) => se.kind(),
                    None => ErrorKind::InvalidInput,
                },
            };
            *slot = Some((kind, format!("payload stream failed: {e}")));
        }
    }

    /// Take the recorded failure, if any.
    pub(crate) fn take(&self) -> Option<(ErrorKind, String)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// An http-body over a verified payload stream. The stream sits in a `Mutex` only to make the body
/// `Sync` as the SDK requires; it is only ever accessed through `&mut`.
struct StreamingBody {
    stream: Mutex<VerifiedStream>,
    remaining: u64,
    failure: PayloadFailure,
}

impl http_body::Body for StreamingBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let stream = this
            .stream
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        match stream.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Ok(chunk))) => {
                this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failure.record(&e);
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The SDK body for `payload`, whose crc32c is `crc`. In-memory payloads are sent as they are
/// (already verified by the caller); streams are reopened for every SDK attempt and verified.
pub(crate) fn request_body(
    payload: &PutPayload,
    crc: u32,
    failure: &PayloadFailure,
) -> SdkByteStream {
    match payload {
        PutPayload::Bytes(b) => SdkByteStream::from(b.clone()),
        PutPayload::Stream { len, source } => {
            let (len, source, failure): (u64, StreamSource, PayloadFailure) =
                (*len, source.clone(), failure.clone());
            let body = SdkBody::retryable(move || {
                let verified = VerifiedStream::new(source(), Verifier::new(len, Some(crc)));
                SdkBody::from_body_1_x(StreamingBody {
                    stream: Mutex::new(verified),
                    remaining: len,
                    failure: failure.clone(),
                })
            });
            SdkByteStream::new(body)
        }
    }
}

/// An SDK response body as a stream of chunks; transport errors become `io::Error`s.
pub(crate) fn response_stream(body: SdkByteStream) -> ByteStream {
    futures::stream::unfold(body, |mut body| async move {
        body.next()
            .await
            .map(|item| (item.map_err(io::Error::other), body))
    })
    .boxed()
}
