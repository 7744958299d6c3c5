//! The values that cross the `RemoteStorage` interface, and checksum
//! verification of the bytes that flow through it.
//!
//! Owns [`PutPayload`], [`PutOptions`], [`ObjectMeta`], [`ListOptions`], [`GetResult`] and the
//! `Verifier` used on both upload and download.
//!
//! Invariants:
//! - a payload stream that turns out shorter, longer or with another crc32c than declared is
//!   failed *before* its last byte is handed on (`VerifiedStream` holds back the final chunk),
//!   so a backend never completes a write of wrong bytes;
//! - [`GetResult::bytes`] only returns bytes whose length matches the requested range and, for a
//!   whole-object read with a recorded crc32c, whose crc32c matches.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::error::{ErrorKind, Op, Result, StorageError};

/// A stream of body chunks.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Opens the payload stream afresh. Called once per attempt (so retries re-read the source) and,
/// on S3 when no crc32c was given, once more up front to compute it.
pub type StreamSource = Arc<dyn Fn() -> ByteStream + Send + Sync>;

/// The bytes of a `put`: in memory, or a stream of known length that can be reopened.
#[derive(Clone)]
pub enum PutPayload {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A stream that can be opened again for every attempt.
    Stream {
        /// The declared length; a stream of another length fails the put.
        len: u64,
        /// Opens the stream; every call must yield the same bytes.
        source: StreamSource,
    },
}

impl PutPayload {
    /// A payload of `len` bytes produced by `open()`; each call must yield the same bytes.
    pub fn from_stream_fn(len: u64, open: impl Fn() -> ByteStream + Send + Sync + 'static) -> Self {
        PutPayload::Stream {
            len,
            source: Arc::new(open),
        }
    }

    /// Length in bytes, as declared.
    pub fn len(&self) -> u64 {
        match self {
            PutPayload::Bytes(b) => b.len() as u64,
            PutPayload::Stream { len, .. } => *len,
        }
    }

    /// Whether the declared length is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Open a fresh stream over the payload.
    pub fn open(&self) -> ByteStream {
        match self {
            PutPayload::Bytes(b) => {
                futures::stream::once(futures::future::ready(Ok(b.clone()))).boxed()
            }
            PutPayload::Stream { source, .. } => source(),
        }
    }
}

impl std::fmt::Debug for PutPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutPayload::Bytes(b) => write!(f, "PutPayload::Bytes({} bytes)", b.len()),
            PutPayload::Stream { len, .. } => write!(f, "PutPayload::Stream({len} bytes)"),
        }
    }
}

impl From<Bytes> for PutPayload {
    fn from(b: Bytes) -> Self {
        PutPayload::Bytes(b)
    }
}

impl From<Vec<u8>> for PutPayload {
    fn from(v: Vec<u8>) -> Self {
        PutPayload::Bytes(Bytes::from(v))
    }
}

impl From<&'static [u8]> for PutPayload {
    fn from(v: &'static [u8]) -> Self {
        PutPayload::Bytes(Bytes::from_static(v))
    }
}

/// Everything stored with an object besides its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Object tags (S3 object tagging; kept in the sidecar locally). See
    /// [`validate_tags`](crate::key::validate_tags) for the rules.
    pub tags: Vec<(String, String)>,
    /// User metadata. See [`validate_metadata`](crate::key::validate_metadata).
    pub metadata: BTreeMap<String, String>,
    /// The crc32c of the payload if the caller knows it. It is then verified while uploading;
    /// if `None` it is computed. Either way it is stored with the object.
    pub crc32c: Option<u32>,
}

/// What `head`, `list` and `put` tell about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The key, relative to the backend's root.
    pub key: String,
    /// Size in bytes as recorded when the object was written.
    pub size: u64,
    /// The crc32c recorded at write time, if any (objects written by other tools may lack it;
    /// S3 `list` without [`ListOptions::with_metadata`] does not return it).
    pub crc32c: Option<u32>,
    /// User metadata, without the crate's own [`CRC32C_META_KEY`](crate::key::CRC32C_META_KEY).
    pub metadata: BTreeMap<String, String>,
    /// Last modification time where the backend reports one (`None` from `put` on S3).
    pub last_modified: Option<SystemTime>,
}

/// Options for `list`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Also return crc32c and user metadata. Free on the local backend (it always returns them);
    /// costs one HEAD per object on S3, whose listing carries neither.
    pub with_metadata: bool,
    /// Only keys strictly greater than this one (lexicographic byte order). Used to resume a list.
    pub start_after: Option<String>,
}

/// The answer to `get`: the object's metadata, the byte range the body covers and the body.
pub struct GetResult {
    /// Metadata of the whole object (not of the range).
    pub meta: ObjectMeta,
    /// The byte range of the object that `body` holds.
    pub range: Range<u64>,
    body: ByteStream,
    backend: Arc<str>,
}

impl std::fmt::Debug for GetResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetResult")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl GetResult {
    /// `backend` names the storage in verification errors.
    pub fn new(backend: &str, meta: ObjectMeta, range: Range<u64>, body: ByteStream) -> Self {
        GetResult {
            meta,
            range,
            body,
            backend: Arc::from(backend),
        }
    }

    /// Take the result apart: metadata, range and the raw, unverified body.
    pub fn into_parts(self) -> (ObjectMeta, Range<u64>, ByteStream) {
        (self.meta, self.range, self.body)
    }

    /// Whether this result covers the whole object, so that its crc32c can be checked.
    pub fn is_whole_object(&self) -> bool {
        self.range.start == 0 && self.range.end == self.meta.size
    }

    fn verifier(&self) -> Verifier {
        let crc = if self.is_whole_object() {
            self.meta.crc32c
        } else {
            None
        };
        Verifier::new(self.range.end - self.range.start, crc)
    }

    /// The body as a stream that fails at its end (or as soon as it is too long) if the bytes do
    /// not match the expected length and crc32c. The last chunk is held back until verified.
    pub fn into_verified_stream(self) -> ByteStream {
        let verifier = self.verifier();
        let key = self.meta.key.clone();
        let backend = self.backend.clone();
        VerifiedStream::new(self.body, verifier)
            .map(move |r| r.map_err(|e| io::Error::other(body_error(e, Op::Get, &backend, &key))))
            .boxed()
    }

    /// Read the whole body into memory and verify it. Body read errors are `Transient`.
    pub async fn bytes(mut self) -> Result<Bytes> {
        let mut verifier = self.verifier();
        let mut buf = BytesMut::with_capacity(verifier.expected_len.min(64 << 20) as usize);
        let key = self.meta.key.clone();
        let err = |kind: ErrorKind, msg: String| {
            StorageError::new(kind, Op::Get, &*self.backend, &key, msg)
        };
        while let Some(chunk) = self.body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Err(body_error(e, Op::Get, &self.backend, &key)),
            };
            verifier
                .update(&chunk)
                .map_err(|m| err(m.kind(), m.to_string()))?;
            buf.extend_from_slice(&chunk);
        }
        verifier
            .finish()
            .map_err(|m| err(m.kind(), m.to_string()))?;
        Ok(buf.freeze())
    }
}

/// A body stream that ends with `on_cancel` (as an `io::Error`) as soon as `cancel` fires, so a
/// reader blocked on a hung connection is released.
pub(crate) fn cancellable_body(
    body: ByteStream,
    cancel: CancellationToken,
    on_cancel: StorageError,
) -> ByteStream {
    futures::stream::unfold(Some((body, cancel, on_cancel)), |state| async move {
        let (mut body, cancel, on_cancel) = state?;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Some((Err(io::Error::other(on_cancel)), None)),
            item = body.next() => item.map(|item| (item, Some((body, cancel, on_cancel)))),
        }
    })
    .boxed()
}

/// Turn an error read from a body stream back into a [`StorageError`]: a [`StorageError`] that
/// travelled through `io::Error` comes out unchanged, a [`VerifiedStream`] mismatch becomes a
/// checksum or length error, and anything else is a transient transport failure.
pub(crate) fn body_error(e: io::Error, op: Op, backend: &str, key: &str) -> StorageError {
    if let Some(se) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<StorageError>())
    {
        return se.clone();
    }
    if let Some(m) = VerifiedStream::mismatch(&e) {
        return StorageError::new(m.kind(), op, backend, key, m.to_string());
    }
    StorageError::new(
        ErrorKind::Transient,
        op,
        backend,
        key,
        format!("reading body: {e}"),
    )
}

/// A mismatch found by a [`Verifier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mismatch {
    TooLong { expected: u64 },
    TooShort { expected: u64, actual: u64 },
    Crc { expected: u32, actual: u32 },
}

impl Mismatch {
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            Mismatch::Crc { .. } => ErrorKind::ChecksumMismatch,
            _ => ErrorKind::LengthMismatch,
        }
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::TooLong { expected } => write!(f, "more than the expected {expected} bytes"),
            Mismatch::TooShort { expected, actual } => {
                write!(f, "{actual} bytes instead of the expected {expected}")
            }
            Mismatch::Crc { expected, actual } => {
                write!(
                    f,
                    "crc32c {actual:08x} instead of the expected {expected:08x}"
                )
            }
        }
    }
}

/// Running length and crc32c of a byte sequence, checked against expectations.
#[derive(Debug, Clone)]
pub(crate) struct Verifier {
    expected_len: u64,
    expected_crc: Option<u32>,
    seen: u64,
    crc: u32,
}

impl Verifier {
    pub(crate) fn new(expected_len: u64, expected_crc: Option<u32>) -> Self {
        Verifier {
            expected_len,
            expected_crc,
            seen: 0,
            crc: 0,
        }
    }

    /// Feed the next bytes; fails as soon as there are more than expected.
    pub(crate) fn update(&mut self, data: &[u8]) -> Result<(), Mismatch> {
        self.seen += data.len() as u64;
        if self.seen > self.expected_len {
            return Err(Mismatch::TooLong {
                expected: self.expected_len,
            });
        }
        self.crc = crc32c::crc32c_append(self.crc, data);
        Ok(())
    }

    /// Check the totals; returns the crc32c of everything fed.
    pub(crate) fn finish(&self) -> Result<u32, Mismatch> {
        if self.seen != self.expected_len {
            return Err(Mismatch::TooShort {
                expected: self.expected_len,
                actual: self.seen,
            });
        }
        match self.expected_crc {
            Some(expected) if expected != self.crc => Err(Mismatch::Crc {
                expected,
                actual: self.crc,
            }),
            _ => Ok(self.crc),
        }
    }
}

/// A stream adapter that verifies length and crc32c and holds back the last chunk until the
/// inner stream has ended and everything matched. A mismatch becomes an `io::Error` wrapping a
/// [`Mismatch`] (see [`VerifiedStream::mismatch`]), so a consumer that writes chunk by chunk never
/// receives the complete (wrong) content.
pub(crate) struct VerifiedStream {
    inner: ByteStream,
    verifier: Verifier,
    held: Option<Bytes>,
    done: bool,
}

impl VerifiedStream {
    pub(crate) fn new(inner: ByteStream, verifier: Verifier) -> Self {
        VerifiedStream {
            inner,
            verifier,
            held: None,
            done: false,
        }
    }

    /// The [`Mismatch`] inside an error produced by this stream, if it is one.
    pub(crate) fn mismatch(e: &io::Error) -> Option<&Mismatch> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<MismatchError>())
            .map(|m| &m.0)
    }
}

/// `Mismatch` as a `std::error::Error`, to travel inside `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct MismatchError(Mismatch);

impl Stream for VerifiedStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    if let Err(m) = this.verifier.update(&chunk) {
                        this.done = true;
                        return Poll::Ready(Some(Err(io::Error::other(MismatchError(m)))));
                    }
                    if let Some(prev) = this.held.replace(chunk) {
                        return Poll::Ready(Some(Ok(prev)));
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return match this.verifier.finish() {
                        Ok(_) => Poll::Ready(this.held.take().map(Ok)),
                        Err(m) => Poll::Ready(Some(Err(io::Error::other(MismatchError(m))))),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        let parts: Vec<io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        futures::stream::iter(parts).boxed()
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE3069283);
    }

    #[tokio::test]
    async fn verified_stream_passes_good_bytes() {
        let crc = crc32c::crc32c(b"hello world");
        let s = VerifiedStream::new(
            chunks(&[b"hello", b" ", b"world"]),
            Verifier::new(11, Some(crc)),
        );
        let got: Vec<Bytes> = s.try_collect().await.expect("good stream");
        assert_eq!(got.concat(), b"hello world");
    }

    #[tokio::test]
    async fn verified_stream_withholds_last_chunk_on_mismatch() {
        for (verifier, kind) in [
            (Verifier::new(11, Some(1)), ErrorKind::ChecksumMismatch),
            (Verifier::new(12, None), ErrorKind::LengthMismatch),
            (Verifier::new(10, None), ErrorKind::LengthMismatch),
        ] {
            let mut s = VerifiedStream::new(chunks(&[b"hello", b" ", b"world"]), verifier);
            let mut delivered = 0;
            let err = loop {
                match s.next().await {
                    Some(Ok(c)) => delivered += c.len(),
                    Some(Err(e)) => break e,
                    None => panic!("stream ended without error"),
                }
            };
            assert!(delivered < 11, "all bytes were delivered despite mismatch");
            assert_eq!(
                VerifiedStream::mismatch(&err).map(Mismatch::kind),
                Some(kind)
            );
        }
    }
}
