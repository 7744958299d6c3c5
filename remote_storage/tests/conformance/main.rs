//! The conformance suite: the contract of `RemoteStorage`, run unchanged against every backend
//! and through every wrapper, the way object_store runs its integration tests against every
//! store.
//!
//! Every case is an `async fn(&Fixture)` in [`objects`], [`listing`] or [`failures`]; every stack
//! is a backend plus a [`stacks`] function wrapping it. The invocation at the end instantiates
//! each case once per stack, as `<case>::<stack>`; adding a stack is one line there.

#[path = "../common/mod.rs"]
mod common;
mod failures;
mod listing;
mod objects;
mod stacks;

use std::io;

use bytes::Bytes;
use common::Fixture;
use futures::StreamExt;
use remote_storage::{
    ErrorKind, ListOptions, PutOptions, PutPayload, RemoteStorageExt, StorageError,
};
use tokio_util::sync::CancellationToken;

pub(crate) fn opts_with(tags: &[(&str, &str)], meta: &[(&str, &str)]) -> PutOptions {
    PutOptions {
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        crc32c: None,
    }
}

/// A payload streamed in chunks of `chunk` bytes.
pub(crate) fn chunked(bytes: Bytes, chunk: usize) -> PutPayload {
    let len = bytes.len() as u64;
    PutPayload::from_stream_fn(len, move || {
        let parts: Vec<io::Result<Bytes>> = bytes
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(parts).boxed()
    })
}

/// A payload that declares `declared` bytes but yields `chunks` and then, if `fail`, an error.
pub(crate) fn bad_stream(declared: u64, chunks: Vec<Bytes>, fail: bool) -> PutPayload {
    PutPayload::from_stream_fn(declared, move || {
        let mut items: Vec<io::Result<Bytes>> = chunks.iter().cloned().map(Ok).collect();
        if fail {
            items.push(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "source died midway",
            )));
        }
        futures::stream::iter(items).boxed()
    })
}

pub(crate) fn assert_kind<T: std::fmt::Debug>(
    r: Result<T, StorageError>,
    kind: ErrorKind,
    what: &str,
) -> StorageError {
    match r {
        Ok(v) => panic!("{what}: expected {kind}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{what}: {e}");
            e
        }
    }
}

pub(crate) async fn assert_absent(fx: &Fixture, key: &str, what: &str) {
    let c = CancellationToken::new();
    assert_kind(fx.storage.head(key, &c).await, ErrorKind::NotFound, what);
    let listed = fx
        .storage
        .list_all("", ListOptions::default(), &c)
        .await
        .expect("list");
    assert!(
        listed.iter().all(|m| m.key != key),
        "{what}: {key} is listed"
    );
    assert!(
        fx.temp_files().is_empty(),
        "{what}: temp files left: {:?}",
        fx.temp_files()
    );
}

/// `conformance_suite! { stacks { name => fixture, ... } cases { module::case, ... } }`: one
/// module per case, one test per stack in each, named `<case>::<stack>` (so `cargo test ::s3` runs
/// every case on S3, `cargo test range_get` one case on every stack). A fixture expression
/// evaluates to `Option<Fixture>` (`None` skips the test, e.g. without moto).
///
/// Case-major naming also keeps the suite fast: libtest starts tests in name order, so the slow
/// bulk case starts first on every stack, and the disk-bound local run overlaps the S3 one.
macro_rules! conformance_suite {
    (stacks $stacks:tt cases { $($module:ident :: $case:ident),* $(,)? }) => {
        $( conformance_case!($module, $case, $stacks); )*
    };
}

/// One case on every stack (a separate macro because the stacks and the cases repeat
/// independently).
macro_rules! conformance_case {
    ($module:ident, $case:ident, { $($stack:ident => $fixture:expr),+ $(,)? }) => {
        mod $case {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $stack() {
                    let Some(fx) = $fixture.await else { return };
                    crate::$module::$case(&fx).await;
                }
            )+
        }
    };
}

conformance_suite! {
    stacks {
        local => Fixture::local(stacks::bare),
        local_service => Fixture::local_in_ram(stacks::service),
        local_faulty => Fixture::local_in_ram(stacks::faulty_retry),
        s3 => Fixture::s3(stacks::from_url),
    }
    cases {
        objects::put_get_head_roundtrip,
        objects::put_stream_roundtrip,
        objects::empty_object,
        objects::missing_objects_are_not_found,
        objects::range_get,
        objects::tags_roundtrip,
        objects::overwrite_replaces_object,
        objects::copy_preserves_bytes_metadata_and_tags,
        objects::unusual_key_characters,
        failures::failed_stream_put_leaves_nothing,
        failures::wrong_length_or_crc_put_leaves_nothing,
        failures::corrupted_object_fails_get,
        failures::invalid_input_is_rejected,
        failures::cancelled_token_returns_cancelled,
        listing::bulk_list_paginates_and_delete_many,
        listing::list_prefix_semantics,
    }
}
