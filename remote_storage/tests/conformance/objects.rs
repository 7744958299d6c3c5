//! Cases about single objects: round trips of bytes, streams, metadata and tags; ranges;
//! overwrite; copy; and what "missing" looks like.

use bytes::Bytes;
use futures::StreamExt;
use remote_storage::{ErrorKind, PutOptions, RemoteStorageExt};
use tokio_util::sync::CancellationToken;

use crate::common::{Fixture, data};
use crate::{assert_kind, chunked, opts_with};

pub(crate) async fn put_get_head_roundtrip(fx: &Fixture) {
    let c = CancellationToken::new();
    let bytes = data(100_000, 1);
    let opts = opts_with(
        &[("safekeeper-kind", "full")],
        &[("term", "7"), ("commit-lsn", "0/3A1B2C8")],
    );
    let key = "cluster/wal/000000010000000000000003";
    let put = fx
        .storage
        .put(key, bytes.clone().into(), &opts, &c)
        .await
        .expect("put");
    assert_eq!(put.size, bytes.len() as u64);
    assert_eq!(put.crc32c, Some(crc32c::crc32c(&bytes)));

    let head = fx.storage.head(key, &c).await.expect("head");
    assert_eq!(head.key, key);
    assert_eq!(head.size, bytes.len() as u64);
    assert_eq!(head.crc32c, Some(crc32c::crc32c(&bytes)));
    assert_eq!(head.metadata, opts.metadata);
    assert!(head.last_modified.is_some());

    let got = fx.storage.get(key, None, &c).await.expect("get");
    assert_eq!(got.meta.crc32c, head.crc32c);
    assert_eq!(got.range, 0..bytes.len() as u64);
    assert_eq!(got.bytes().await.expect("body"), bytes);
}

pub(crate) async fn put_stream_roundtrip(fx: &Fixture) {
    let c = CancellationToken::new();
    let bytes = data(300_001, 2);
    let key = "streamed/obj";
    let put = fx
        .storage
        .put(
            key,
            chunked(bytes.clone(), 64 * 1024),
            &PutOptions::default(),
            &c,
        )
        .await
        .expect("put");
    assert_eq!(put.crc32c, Some(crc32c::crc32c(&bytes)));
    assert_eq!(fx.storage.get_bytes(key, &c).await.expect("get"), bytes);

    // With the crc declared up front it is verified while streaming.
    let opts = PutOptions {
        crc32c: Some(crc32c::crc32c(&bytes)),
        ..PutOptions::default()
    };
    fx.storage
        .put(
            "streamed/declared",
            chunked(bytes.clone(), 10_000),
            &opts,
            &c,
        )
        .await
        .expect("put declared");
    let head = fx
        .storage
        .head("streamed/declared", &c)
        .await
        .expect("head");
    assert_eq!(head.crc32c, opts.crc32c);

    // A verified stream of the whole object.
    let got = fx
        .storage
        .get("streamed/declared", None, &c)
        .await
        .expect("get");
    let chunks: Vec<Bytes> = got
        .into_verified_stream()
        .map(|c| c.expect("chunk"))
        .collect()
        .await;
    assert_eq!(chunks.concat(), bytes);
}

pub(crate) async fn empty_object(fx: &Fixture) {
    let c = CancellationToken::new();
    fx.storage
        .put("empty", Bytes::new().into(), &PutOptions::default(), &c)
        .await
        .expect("put");
    let head = fx.storage.head("empty", &c).await.expect("head");
    assert_eq!((head.size, head.crc32c), (0, Some(0)));
    assert!(
        fx.storage
            .get_bytes("empty", &c)
            .await
            .expect("get")
            .is_empty()
    );
}

pub(crate) async fn missing_objects_are_not_found(fx: &Fixture) {
    let c = CancellationToken::new();
    let key = "nope/000000010000000000000009";
    let e = assert_kind(
        fx.storage.get(key, None, &c).await,
        ErrorKind::NotFound,
        "get",
    );
    assert!(
        e.to_string().contains(key) && e.to_string().contains(fx.storage.name()),
        "{e}"
    );
    assert_kind(
        fx.storage.get(key, Some(0..10), &c).await,
        ErrorKind::NotFound,
        "range get",
    );
    assert_kind(fx.storage.head(key, &c).await, ErrorKind::NotFound, "head");
    assert_kind(
        fx.storage.get_tags(key, &c).await,
        ErrorKind::NotFound,
        "get_tags",
    );
    assert_kind(
        fx.storage.copy(key, "elsewhere", &c).await,
        ErrorKind::NotFound,
        "copy",
    );
    fx.storage
        .delete(key, &c)
        .await
        .expect("deleting a missing key is fine");
}

pub(crate) async fn range_get(fx: &Fixture) {
    let c = CancellationToken::new();
    let bytes = data(1000, 3);
    fx.storage
        .put("r", bytes.clone().into(), &PutOptions::default(), &c)
        .await
        .expect("put");
    let mid = fx.storage.get("r", Some(100..200), &c).await.expect("get");
    assert_eq!((mid.range.clone(), mid.meta.size), (100..200, 1000));
    assert_eq!(mid.bytes().await.expect("body"), bytes.slice(100..200));
    // Past the end is clamped, as S3 does.
    assert_eq!(
        fx.storage
            .get_range_bytes("r", 900..5000, &c)
            .await
            .expect("tail"),
        bytes.slice(900..)
    );
    assert_eq!(
        fx.storage
            .get_range_bytes("r", 0..1000, &c)
            .await
            .expect("all"),
        bytes
    );
    assert_kind(
        fx.storage.get("r", Some(1000..1010), &c).await,
        ErrorKind::InvalidInput,
        "start at end",
    );
    assert_kind(
        fx.storage.get("r", Some(5..5), &c).await,
        ErrorKind::InvalidInput,
        "empty range",
    );
}

pub(crate) async fn tags_roundtrip(fx: &Fixture) {
    let c = CancellationToken::new();
    let opts = opts_with(&[("safekeeper-kind", "partial"), ("a", "b c/d:e")], &[]);
    fx.storage
        .put("t/partial", data(10, 4).into(), &opts, &c)
        .await
        .expect("put");
    let mut expected = opts.tags.clone();
    expected.sort();
    assert_eq!(
        fx.storage
            .get_tags("t/partial", &c)
            .await
            .expect("get_tags"),
        expected
    );
    assert_eq!(
        fx.raw_tags("t/partial").await,
        expected,
        "tags as stored by the backend"
    );

    fx.storage
        .put("t/untagged", data(10, 4).into(), &PutOptions::default(), &c)
        .await
        .expect("put");
    assert!(
        fx.storage
            .get_tags("t/untagged", &c)
            .await
            .expect("get_tags")
            .is_empty()
    );
}

pub(crate) async fn overwrite_replaces_object(fx: &Fixture) {
    let c = CancellationToken::new();
    let (v1, v2) = (data(5000, 5), data(3000, 6));
    fx.storage
        .put("o", v1.into(), &opts_with(&[("v", "1")], &[("v", "1")]), &c)
        .await
        .expect("put 1");
    fx.storage
        .put(
            "o",
            v2.clone().into(),
            &opts_with(&[("v", "2")], &[("v", "2")]),
            &c,
        )
        .await
        .expect("put 2");
    assert_eq!(fx.storage.get_bytes("o", &c).await.expect("get"), v2);
    let head = fx.storage.head("o", &c).await.expect("head");
    assert_eq!(
        (head.size, head.metadata.get("v").map(String::as_str)),
        (3000, Some("2"))
    );
    assert_eq!(
        fx.storage.get_tags("o", &c).await.expect("tags"),
        vec![("v".into(), "2".into())]
    );
}

pub(crate) async fn copy_preserves_bytes_metadata_and_tags(fx: &Fixture) {
    let c = CancellationToken::new();
    let bytes = data(20_000, 7);
    let opts = opts_with(&[("safekeeper-kind", "full")], &[("term", "3")]);
    fx.storage
        .put("src/a", bytes.clone().into(), &opts, &c)
        .await
        .expect("put");
    fx.storage.copy("src/a", "dst/b", &c).await.expect("copy");
    assert_eq!(
        fx.storage.get_bytes("dst/b", &c).await.expect("get copy"),
        bytes
    );
    let head = fx.storage.head("dst/b", &c).await.expect("head copy");
    assert_eq!(
        (head.crc32c, head.metadata),
        (Some(crc32c::crc32c(&bytes)), opts.metadata)
    );
    assert_eq!(
        fx.storage.get_tags("dst/b", &c).await.expect("tags"),
        opts.tags
    );
    assert_eq!(
        fx.storage
            .get_bytes("src/a", &c)
            .await
            .expect("source stays"),
        bytes
    );
}

pub(crate) async fn unusual_key_characters(fx: &Fixture) {
    let c = CancellationToken::new();
    let key = "odd/k=v+x,y@z:w.partial";
    let bytes = data(777, 12);
    let none = PutOptions::default();
    fx.storage
        .put(key, bytes.clone().into(), &none, &c)
        .await
        .expect("put");
    assert_eq!(fx.storage.get_bytes(key, &c).await.expect("get"), bytes);
    fx.storage
        .copy(key, "odd/copy=+,@:", &c)
        .await
        .expect("copy");
    assert_eq!(
        fx.storage
            .get_bytes("odd/copy=+,@:", &c)
            .await
            .expect("get copy"),
        bytes
    );
    let listed = fx
        .storage
        .list_all("odd/", Default::default(), &c)
        .await
        .expect("list");
    let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["odd/copy=+,@:", key]);
    let all = [key.to_string(), "odd/copy=+,@:".to_string()];
    fx.storage.delete_many(&all, &c).await.expect("delete");
    assert_kind(
        fx.storage.head(key, &c).await,
        ErrorKind::NotFound,
        "deleted",
    );
}
