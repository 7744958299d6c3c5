//! Cases about listing and bulk deletion: pagination past 1000 keys, order, prefixes,
//! `start_after`, metadata on request, and `delete_many` with missing keys.

use bytes::Bytes;
use futures::StreamExt;
use remote_storage::{ListOptions, PutOptions, RemoteStorageExt};
use tokio_util::sync::CancellationToken;

use crate::common::Fixture;

/// Put 1100 keys `bulk/NNNN` (16 at a time, key `i` with `i % 7` bytes) and three keys that
/// share a string prefix with `bulk` but are not under `bulk/`; returns the 1100 keys.
async fn put_bulk_keys(fx: &Fixture, c: &CancellationToken) -> Vec<String> {
    let keys: Vec<String> = (0..1100).map(|i| format!("bulk/{i:04}")).collect();
    let results: Vec<_> = futures::stream::iter(keys.iter().enumerate())
        .map(|(i, k)| {
            let s = &fx.storage;
            async move {
                s.put(
                    k,
                    Bytes::from(vec![b'x'; i % 7]).into(),
                    &PutOptions::default(),
                    c,
                )
                .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        results.iter().all(Result::is_ok),
        "a put failed: {:?}",
        results.iter().find(|r| r.is_err())
    );
    for other in ["bulka/x", "other/y", "bulk-x"] {
        fx.storage
            .put(
                other,
                Bytes::from_static(b"o").into(),
                &PutOptions::default(),
                c,
            )
            .await
            .expect("put other");
    }
    keys
}

pub(crate) async fn bulk_list_paginates_and_delete_many(fx: &Fixture) {
    let c = CancellationToken::new();
    let keys = put_bulk_keys(fx, &c).await;

    let listed = fx
        .storage
        .list_all("bulk/", ListOptions::default(), &c)
        .await
        .expect("list");
    let listed_keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(
        listed_keys,
        keys.iter().map(String::as_str).collect::<Vec<_>>(),
        "sorted, complete, once each"
    );
    assert!(
        listed
            .iter()
            .enumerate()
            .all(|(i, m)| m.size == (i % 7) as u64),
        "sizes"
    );
    assert_eq!(
        fx.storage
            .list_all("bulk", ListOptions::default(), &c)
            .await
            .expect("list")
            .len(),
        1102
    );

    let after = ListOptions {
        start_after: Some("bulk/1049".into()),
        ..ListOptions::default()
    };
    let tail = fx
        .storage
        .list_all("bulk/", after, &c)
        .await
        .expect("list after");
    assert_eq!((tail.len(), tail[0].key.as_str()), (50, "bulk/1050"));

    let with_meta = ListOptions {
        with_metadata: true,
        ..ListOptions::default()
    };
    let few = fx
        .storage
        .list_all("bulk/000", with_meta, &c)
        .await
        .expect("list with metadata");
    assert_eq!(few.len(), 10);
    assert!(
        few.iter().all(|m| m.crc32c.is_some()),
        "crc missing: {few:?}"
    );

    let mut to_delete = keys.clone();
    to_delete.extend((0..30).map(|i| format!("bulk/missing-{i}")));
    fx.storage
        .delete_many(&to_delete, &c)
        .await
        .expect("delete_many");
    assert!(
        fx.storage
            .list_all("bulk/", ListOptions::default(), &c)
            .await
            .expect("list")
            .is_empty()
    );
    let rest = fx
        .storage
        .list_all("", ListOptions::default(), &c)
        .await
        .expect("list all");
    let rest: Vec<&str> = rest.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(rest, ["bulk-x", "bulka/x", "other/y"]);
}

pub(crate) async fn list_prefix_semantics(fx: &Fixture) {
    let c = CancellationToken::new();
    for key in ["dir/a", "dir/sub/b", "dirx", "di/r"] {
        fx.storage
            .put(
                key,
                Bytes::from_static(b"1").into(),
                &PutOptions::default(),
                &c,
            )
            .await
            .expect("put");
    }
    let keys = |prefix: &'static str| {
        let (s, c) = (&fx.storage, &c);
        async move {
            let all = s
                .list_all(prefix, ListOptions::default(), c)
                .await
                .expect("list");
            all.into_iter().map(|m| m.key).collect::<Vec<_>>()
        }
    };
    assert_eq!(keys("dir/").await, ["dir/a", "dir/sub/b"]);
    assert_eq!(keys("dir").await, ["dir/a", "dir/sub/b", "dirx"]);
    assert_eq!(keys("dir/s").await, ["dir/sub/b"]);
    assert_eq!(keys("").await, ["di/r", "dir/a", "dir/sub/b", "dirx"]);
    assert!(keys("nothing/").await.is_empty());
}
