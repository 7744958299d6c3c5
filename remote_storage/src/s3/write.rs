//! The writing half of the S3 backend: `put`, `delete_many` and `copy`.
//!
//! Invariants: a put sends the object's crc32c both as `x-amz-checksum-crc32c` and as user
//! metadata `crc32c`, computed (or verified, if declared) before the last payload byte leaves; a
//! payload failure is reported as such, not as the transport error it provokes; deletes go out in
//! batches of at most 1000 keys and treat missing keys as deleted.

use std::collections::HashMap;
use std::time::Instant;

use aws_sdk_s3::types::{ChecksumAlgorithm, Delete, ObjectIdentifier};
use futures::stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::errors::kind_for_response;
use super::{S3Storage, body};
use crate::error::{ErrorKind, Op, Result, StorageError};
use crate::key::{
    CRC32C_META_KEY, crc_to_hex, encode_tagging, percent_encode, validate_key, validate_metadata,
    validate_tags,
};
use crate::object::{ObjectMeta, PutOptions, PutPayload, Verifier, body_error};
use crate::storage::DELETE_BATCH;

impl S3Storage {
    pub(super) async fn put_impl(
        &self,
        key: &str,
        payload: PutPayload,
        opts: &PutOptions,
        cancel: &CancellationToken,
    ) -> Result<ObjectMeta> {
        let started = Instant::now();
        let invalid = |m: String| self.err(ErrorKind::InvalidInput, Op::Put, key, m);
        validate_key(key).map_err(invalid)?;
        validate_tags(&opts.tags).map_err(invalid)?;
        validate_metadata(&opts.metadata).map_err(invalid)?;
        let len = payload.len();
        let crc = self.payload_crc(key, &payload, opts.crc32c, cancel).await?;

        let mut metadata: HashMap<String, String> = opts
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        metadata.insert(CRC32C_META_KEY.to_string(), crc_to_hex(crc));
        let failure = body::PayloadFailure::default();
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .body(body::request_body(&payload, crc, &failure))
            .content_length(len as i64)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .checksum_crc32_c(aws_smithy_types::base64::encode(crc.to_be_bytes()))
            .set_metadata(Some(metadata));
        if !opts.tags.is_empty() {
            request = request.tagging(encode_tagging(&opts.tags));
        }
        let result = self.request(Op::Put, key, cancel, request.send()).await;
        if let Err(e) = result {
            // If our payload stream failed, that is the story, not the transport error it caused.
            return Err(match failure.take() {
                Some((kind, msg)) if e.kind() != ErrorKind::Cancelled => {
                    self.err(kind, Op::Put, key, msg)
                }
                _ => e,
            });
        }
        tracing::debug!(backend = %self.name, key, size = len, crc32c = format_args!("{crc:08x}"),
            elapsed_ms = started.elapsed().as_millis() as u64, "put");
        Ok(ObjectMeta {
            key: key.to_string(),
            size: len,
            crc32c: Some(crc),
            metadata: opts.metadata.clone(),
            last_modified: None,
        })
    }

    /// The crc32c to send: verified against `declared` for in-memory payloads; for streams either
    /// the declared one (verified while streaming) or computed by reading the stream once.
    async fn payload_crc(
        &self,
        key: &str,
        payload: &PutPayload,
        declared: Option<u32>,
        cancel: &CancellationToken,
    ) -> Result<u32> {
        let mismatch =
            |m: crate::object::Mismatch| self.err(m.kind(), Op::Put, key, format!("payload: {m}"));
        match (payload, declared) {
            (PutPayload::Bytes(b), declared) => {
                let mut v = Verifier::new(b.len() as u64, declared);
                v.update(b).map_err(mismatch)?;
                v.finish().map_err(mismatch)
            }
            (PutPayload::Stream { .. }, Some(crc)) => Ok(crc),
            (PutPayload::Stream { len, .. }, None) => {
                let mut v = Verifier::new(*len, None);
                let mut stream = payload.open();
                loop {
                    let chunk = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return Err(StorageError::cancelled(Op::Put, &self.name, key)),
                        c = stream.next() => c,
                    };
                    match chunk {
                        None => break,
                        Some(Ok(c)) => v.update(&c).map_err(mismatch)?,
                        Some(Err(e)) => {
                            let e = body_error(e, Op::Put, &self.name, key);
                            return Err(e
                                .with_kind(ErrorKind::InvalidInput)
                                .context("payload stream failed"));
                        }
                    }
                }
                v.finish().map_err(mismatch)
            }
        }
    }

    pub(super) async fn delete_impl(
        &self,
        keys: &[String],
        cancel: &CancellationToken,
    ) -> Result<()> {
        for key in keys {
            validate_key(key).map_err(|m| self.err(ErrorKind::InvalidInput, Op::Delete, key, m))?;
        }
        for batch in keys.chunks(DELETE_BATCH) {
            let first = batch.first().map(String::as_str).unwrap_or_default();
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.full_key(k)).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| self.err(ErrorKind::InvalidInput, Op::Delete, first, e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| self.err(ErrorKind::InvalidInput, Op::Delete, first, e.to_string()))?;
            let request = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete);
            let out = self
                .request(Op::Delete, first, cancel, request.send())
                .await?;
            // Per-key failures come back inside a 200 response.
            if let Some(failed) = out.errors().iter().find(|e| e.code() != Some("NoSuchKey")) {
                let key = failed.key().unwrap_or(first);
                let kind = kind_for_response(Op::Delete, None, failed.code());
                let kind = if kind == ErrorKind::Permanent && failed.code().is_none() {
                    ErrorKind::Transient
                } else {
                    kind
                };
                let msg = format!(
                    "{} of {} keys failed; first: code {}, message {}",
                    out.errors().len(),
                    batch.len(),
                    failed.code().unwrap_or("-"),
                    failed.message().unwrap_or("-")
                );
                return Err(self.err(kind, Op::Delete, key, msg));
            }
            tracing::debug!(backend = %self.name, count = batch.len(), "delete batch");
        }
        Ok(())
    }

    pub(super) async fn copy_impl(
        &self,
        from: &str,
        to: &str,
        cancel: &CancellationToken,
    ) -> Result<()> {
        for key in [from, to] {
            validate_key(key).map_err(|m| self.err(ErrorKind::InvalidInput, Op::Copy, key, m))?;
        }
        let source = percent_encode(&format!("{}/{}", self.bucket, self.full_key(from)), true);
        let request = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(self.full_key(to))
            .copy_source(source);
        self.request(Op::Copy, from, cancel, request.send())
            .await
            .map_err(|e| e.context(format!("copy to {to:?}")))?;
        tracing::debug!(backend = %self.name, from, to, "copy");
        Ok(())
    }
}
