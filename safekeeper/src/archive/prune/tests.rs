//! The superseded-partial rule on listings built in memory (every case an operator would ask
//! about, and a property over random listings), and the content check on a real `LocalFs`.

use std::collections::BTreeSet;
use std::time::SystemTime;

use bytes::Bytes;
use control_file::Lsn;
use control_file::names::{PartialName, segment_file_name};
use proptest::prelude::*;
use remote_storage::{LocalFs, ObjectMeta, PutOptions, RemoteStorage, RemoteStorageExt};
use tokio_util::sync::CancellationToken;

use super::*;

const SEG: u32 = 1 << 20;

fn meta(key: String, size: u64) -> ObjectMeta {
    ObjectMeta {
        key,
        size,
        crc32c: None,
        metadata: Default::default(),
        last_modified: Some(SystemTime::UNIX_EPOCH),
    }
}

/// Partial of segment `segno` (timeline 1) ending `off` bytes into it.
fn p(segno: u64, off: u64, term: u64, sk: u64) -> PartialName {
    PartialName::base(1, segno, Lsn::from_segment(segno, SEG) + off, term, sk, SEG)
}

fn key(n: &PartialName) -> String {
    format!("main/wal/{}", n.to_file_name(SEG))
}

fn full_key(segno: u64) -> String {
    format!("main/wal/{}", segment_file_name(1, segno, SEG))
}

fn archive(fulls: &[u64], partials: &[&PartialName]) -> Archive {
    let mut metas: Vec<ObjectMeta> = fulls
        .iter()
        .map(|&s| meta(full_key(s), SEG.into()))
        .collect();
    metas.extend(partials.iter().map(|n| meta(key(n), n.bytes())));
    Archive::from_listing("main", metas, Some(SEG))
}

fn superseded(c: &Classification) -> Vec<(String, SupersededBy)> {
    c.superseded
        .iter()
        .map(|s| (s.key.clone(), s.by.clone()))
        .collect()
}

fn kept_keys(c: &Classification) -> Vec<String> {
    c.kept.iter().map(|k| k.key.clone()).collect()
}

#[test]
fn a_full_segment_supersedes_every_partial_of_its_segment() {
    let (a, b, c) = (p(5, 100, 1, 1), p(5, 900, 1, 1), p(5, 500, 3, 2));
    let next = p(6, 10, 1, 1); // the segment being written: restore serves it
    let c1 = classify(&archive(&[4, 5], &[&a, &b, &c, &next]));
    let by = SupersededBy::FullSegment(full_key(5));
    let mut expected = vec![(key(&a), by.clone()), (key(&b), by.clone()), (key(&c), by)];
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(superseded(&c1), expected);
    assert!(c1.kept.is_empty(), "{:?}", c1.kept);
    assert_eq!(c1.superseded_bytes(), 100 + 900 + 500);
}

#[test]
fn older_versions_of_one_safekeeper_are_superseded_by_its_newest() {
    let (old1, old2, newest) = (p(5, 100, 1, 1), p(5, 200, 2, 1), p(5, 300, 2, 1));
    let c = classify(&archive(&[4], &[&old1, &old2, &newest]));
    let by = SupersededBy::NewerVersion(key(&newest));
    assert_eq!(
        superseded(&c),
        vec![(key(&old1), by.clone()), (key(&old2), by)]
    );
    assert!(c.kept.is_empty());
}

#[test]
fn another_safekeepers_version_is_kept_and_reported_never_superseded() {
    // sk2 is behind sk1 (or retired): its only version is not superseded by sk1's.
    let (sk1, sk2_old, sk2) = (p(5, 300, 1, 1), p(5, 100, 1, 2), p(5, 200, 1, 2));
    let c = classify(&archive(&[], &[&sk1, &sk2_old, &sk2]));
    assert_eq!(
        superseded(&c),
        vec![(key(&sk2_old), SupersededBy::NewerVersion(key(&sk2)))]
    );
    assert_eq!(kept_keys(&c), vec![key(&sk2)]);
    assert!(c.kept[0].reason.contains("not superseded"), "{:?}", c.kept);
    assert!(
        c.kept[0].reason.contains(&key(&sk1)),
        "names what restore serves"
    );
}

#[test]
fn versions_that_disagree_are_both_kept() {
    // sk1's WAL was truncated: term 2 ends below what term 1 had uploaded.
    let (t1_long, t2_short) = (p(5, 900, 1, 1), p(5, 400, 2, 1));
    let c = classify(&archive(&[], &[&t1_long, &t2_short]));
    assert!(c.superseded.is_empty(), "{:?}", c.superseded);
    let served = best_partial(&archive(&[], &[&t1_long, &t2_short]).timelines[&1].partials[&5])
        .map(|s| s.key.clone());
    // Whichever restore serves stays silently; the other is reported as disagreeing.
    let other: Vec<String> = [key(&t1_long), key(&t2_short)]
        .into_iter()
        .filter(|k| Some(k) != served.as_ref())
        .collect();
    assert_eq!(kept_keys(&c), other);
    assert!(c.kept[0].reason.contains("disagree"), "{:?}", c.kept);
}

#[test]
fn objects_that_are_not_wal_are_reported_not_deleted() {
    let metas = vec![meta("main/wal/notes.txt".into(), 3)];
    let c = classify(&Archive::from_listing("main", metas, Some(SEG)));
    assert!(c.superseded.is_empty());
    assert_eq!(kept_keys(&c), vec!["main/wal/notes.txt".to_string()]);
}

/// A base, or (half the time) an increment starting inside the segment at a multiple of 100
/// bytes, so that pieces often chain.
fn arb_partial() -> impl Strategy<Value = PartialName> {
    (3u64..6, 1u64..20, 1u64..3, 1u64..3, 0u64..40).prop_map(|(s, end, t, sk, start)| {
        let base = p(s, end * 100, t, sk);
        let start = start * 100;
        if start == 0 || start >= end * 100 || start % 200 == 0 {
            return base;
        }
        PartialName {
            start_lsn: Lsn::from_segment(s, SEG) + start,
            ..base
        }
    })
}

proptest! {
    /// Whatever the listing (bases and increments): no piece of the version restore serves, nor
    /// of any safekeeper's newest version, is superseded; every superseded piece has a superseder
    /// none of whose pieces is pruned (or the full segment), of the same safekeeper, timeline and
    /// segment, holding at least its term and WAL; every piece is classified.
    #[test]
    fn prune_never_removes_what_restore_needs(
        fulls in proptest::collection::btree_set(3u64..6, 0..3),
        partials in proptest::collection::vec(arb_partial(), 0..16),
    ) {
        let fulls: Vec<u64> = fulls.into_iter().collect();
        let mut partials = partials;
        partials.sort_by_key(key);
        partials.dedup_by_key(|n| key(n));
        let refs: Vec<&PartialName> = partials.iter().collect();
        let a = archive(&fulls, &refs);
        let c = classify(&a);
        let gone: BTreeSet<&str> = c.superseded.iter().map(|s| s.key.as_str()).collect();
        let empty = crate::archive::TimelineObjects::default();
        let t = a.timelines.get(&1).unwrap_or(&empty);
        for (segno, versions) in &t.partials {
            if fulls.contains(segno) {
                continue;
            }
            for v in crate::archive::ranked_candidates(versions) {
                for q in &v.pieces {
                    prop_assert!(!gone.contains(q.key.as_str()), "{} of {} pruned", q.key, v.key);
                }
            }
        }
        for (segno, pieces) in &t.pieces {
            let served = t.served_partial(*segno);
            for q in pieces {
                let classified = gone.contains(q.key.as_str())
                    || c.kept.iter().any(|k| k.key == q.key)
                    || served.is_some_and(|v| v.pieces.contains(q));
                prop_assert!(classified, "{} neither pruned, kept nor served", q.key);
            }
        }
        for s in &c.superseded {
            let victim = partials.iter().find(|n| key(n) == s.key).expect("a listed piece");
            match &s.by {
                SupersededBy::FullSegment(k) => {
                    prop_assert!(fulls.contains(&victim.segno));
                    prop_assert_eq!(k, &full_key(victim.segno));
                }
                SupersededBy::NewerVersion(k) | SupersededBy::Chain(k) => {
                    let versions = &t.partials[&victim.segno];
                    let q = versions.iter().find(|v| &v.key == k).expect("a listed superseder");
                    for piece in &q.pieces {
                        prop_assert!(!gone.contains(piece.key.as_str()), "{} superseded by {}, whose {} is pruned", s.key, k, piece.key);
                    }
                    prop_assert_eq!((q.name.timeline, q.name.segno, q.name.sk_id), (victim.timeline, victim.segno, victim.sk_id));
                    prop_assert!(q.name.term >= victim.term && q.name.commit_lsn >= victim.commit_lsn);
                }
            }
        }
    }
}

async fn put(storage: &dyn RemoteStorage, key: &str, data: &[u8]) {
    storage
        .put(
            key,
            Bytes::copy_from_slice(data).into(),
            &PutOptions::default(),
            &CancellationToken::new(),
        )
        .await
        .expect("put");
}

#[tokio::test]
async fn only_a_prefix_of_its_superseder_is_confirmed_for_deletion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LocalFs::new(dir.path()).expect("local storage");
    let cancel = CancellationToken::new();
    let wal: Vec<u8> = (0..SEG).map(|i| (i % 251) as u8).collect();
    let (same, diverged, gone) = (p(5, 100, 1, 1), p(5, 200, 1, 2), p(5, 300, 1, 3));
    put(&storage, &full_key(5), &wal).await;
    put(&storage, &key(&same), &wal[..100]).await;
    let mut other = wal[..200].to_vec();
    other[150] ^= 0xff;
    put(&storage, &key(&diverged), &other).await;
    let listing = archive(&[5], &[&same, &diverged, &gone]);
    let classes = classify(&listing);
    assert_eq!(classes.superseded.len(), 3);
    // `gone` is listed but deleted before the check (e.g. by its safekeeper's GC).
    let plan = confirm(&storage, classes, SEG, &cancel)
        .await
        .expect("confirm");
    assert_eq!(
        superseded(&plan),
        vec![(key(&same), SupersededBy::FullSegment(full_key(5)))]
    );
    assert_eq!(kept_keys(&plan), vec![key(&diverged)]);
    assert!(
        plan.kept[0].reason.contains("differs from it at 0/500096"),
        "{:?}",
        plan.kept
    );
    assert!(storage.get_bytes(&key(&diverged), &cancel).await.is_ok());
}

/// Listing sizes say nothing about encoded objects: a truncated full segment and a piece that
/// holds less than its name says are caught when their bytes are read, and supersede nothing.
#[tokio::test]
async fn a_truncated_full_segment_or_a_short_piece_supersedes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LocalFs::new(dir.path()).expect("local storage");
    let cancel = CancellationToken::new();
    let wal: Vec<u8> = (0..SEG).map(|i| (i % 251) as u8).collect();
    let (a, b) = (p(5, 100, 1, 1), p(5, 200, 1, 1));
    put(&storage, &full_key(5), &wal[..wal.len() - 1]).await;
    put(&storage, &key(&a), &wal[..100]).await;
    put(&storage, &key(&b), &wal[..7]).await; // b's object holds 7 bytes, its name says 200
    let c = classify(&archive(&[5], &[&a, &b]));
    assert_eq!(c.superseded.len(), 2, "{:?}", c.superseded);
    let plan = confirm(&storage, c, SEG, &cancel).await.expect("confirm");
    assert!(plan.superseded.is_empty(), "{:?}", plan.superseded);
    assert!(
        plan.kept.iter().all(|k| k.reason.contains("not a segment")),
        "{:?}",
        plan.kept
    );
    // Without the full segment, b is served; a (an older version) is superseded by b by name,
    // but b's bytes are short, so a stays.
    let c = classify(&archive(&[], &[&a, &b]));
    assert_eq!(
        superseded(&c),
        vec![(key(&a), SupersededBy::NewerVersion(key(&b)))]
    );
    let plan = confirm(&storage, c, SEG, &cancel).await.expect("confirm");
    assert!(plan.superseded.is_empty(), "{:?}", plan.superseded);
    assert_eq!(kept_keys(&plan), vec![key(&a)]);
    assert!(
        plan.kept[0].reason.contains("its name says"),
        "{:?}",
        plan.kept
    );
}

/// A piece `[start, commit)` of sk `sk`, term `term`, segment 5: a base when `start` is 0.
fn piece(start: u64, end: u64, term: u64, sk: u64) -> PartialName {
    PartialName {
        start_lsn: Lsn::from_segment(5, SEG) + start,
        ..p(5, end, term, sk)
    }
}

/// Chains of pieces: the served chain and every safekeeper's newest chain stay; a piece left
/// over from a merge is superseded by the version holding its bytes and deleted only after its
/// decoded bytes matched; a piece whose predecessor is missing is kept.
#[tokio::test]
async fn leftover_pieces_are_superseded_by_the_chain_that_holds_their_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LocalFs::new(dir.path()).expect("local storage");
    let cancel = CancellationToken::new();
    let wal: Vec<u8> = (0..SEG).map(|i| (i % 251) as u8).collect();
    let zstd = crate::object_format::Compression::default();
    let (base, merged, old1, old2) = (
        piece(0, 100, 1, 1),
        piece(100, 300, 1, 1),
        piece(100, 200, 1, 1),
        piece(200, 300, 1, 1),
    );
    let orphan = piece(400, 500, 1, 1);
    let other_sk = [piece(0, 50, 1, 2), piece(50, 150, 1, 2)];
    for n in [
        &base,
        &merged,
        &old1,
        &old2,
        &orphan,
        &other_sk[0],
        &other_sk[1],
    ] {
        let (s, e) = (n.start_offset(SEG) as usize, n.commit_offset(SEG) as usize);
        let encoded = crate::object_format::encode(&wal[s..e], &zstd);
        put(&storage, &key(n), &encoded).await;
    }
    let listing = archive(
        &[],
        &[
            &base,
            &merged,
            &old1,
            &old2,
            &orphan,
            &other_sk[0],
            &other_sk[1],
        ],
    );
    let t = &listing.timelines[&1];
    let served = t.served_partial(5).expect("a version");
    assert_eq!(served.name, p(5, 300, 1, 1));
    assert_eq!(
        served
            .pieces
            .iter()
            .map(|q| q.key.clone())
            .collect::<Vec<_>>(),
        vec![key(&base), key(&merged)],
        "the chain with the fewest pieces"
    );
    let c = classify(&listing);
    let version = format!("main/wal/{}", p(5, 300, 1, 1).to_file_name(SEG));
    assert_eq!(
        superseded(&c),
        vec![
            (key(&old1), SupersededBy::Chain(version.clone())),
            (key(&old2), SupersededBy::Chain(version.clone())),
        ]
    );
    let kept = kept_keys(&c);
    assert!(kept.contains(&key(&orphan)), "{kept:?}");
    assert!(
        kept.contains(&key(&other_sk[0])) && kept.contains(&key(&other_sk[1])),
        "{kept:?}"
    );
    // old2 was damaged after upload: it no longer matches the chain and stays.
    let mut bad = wal[200..300].to_vec();
    bad[10] ^= 1;
    put(
        &storage,
        &key(&old2),
        &crate::object_format::encode(&bad, &zstd),
    )
    .await;
    let plan = confirm(&storage, c, SEG, &cancel).await.expect("confirm");
    assert_eq!(
        superseded(&plan),
        vec![(key(&old1), SupersededBy::Chain(version))]
    );
    let old2_kept = plan
        .kept
        .iter()
        .find(|k| k.key == key(&old2))
        .expect("old2 kept");
    assert!(
        old2_kept.reason.contains("differs from it at 0/5000D2"),
        "{old2_kept:?}"
    );
}
