//! Tests of the choice among several safekeepers' partials of one segment (the most WAL wins;
//! terms order one safekeeper's own versions) and of the divergence check: golden cases, property
//! tests against a plainly written reference rule, and lookups and `verify` on a real `LocalFs`
//! archive with a history forked inside one timeline.

use control_file::Lsn;
use control_file::names::{PartialName, segment_file_name};
use proptest::prelude::*;

use super::fetch::{FetchError, Fetched};
use super::tests::{MIB, SYSID, TestArchive, arb_partial, listing, partial, wal_segment};
use super::*;
use crate::wal::format::testutil::WalBuilder;

/// The rule of docs/architecture.md, written out plainly: each safekeeper's newest version by its
/// own (term, commit LSN); among those, the highest commit LSN, then the lowest safekeeper id.
fn reference_best(names: &[PartialName]) -> PartialName {
    let mut newest: Vec<PartialName> = Vec::new();
    for n in names {
        match newest.iter_mut().find(|m| m.sk_id == n.sk_id) {
            Some(m) if (n.term, n.commit_lsn) > (m.term, m.commit_lsn) => *m = n.clone(),
            Some(_) => {}
            None => newest.push(n.clone()),
        }
    }
    newest
        .into_iter()
        .max_by(|a, b| a.commit_lsn.cmp(&b.commit_lsn).then(b.sk_id.cmp(&a.sk_id)))
        .expect("non-empty")
}

fn objects(names: &[PartialName]) -> Vec<PartialObject> {
    names
        .iter()
        .map(|n| PartialObject::single(n.clone(), n.to_file_name(MIB), n.bytes()))
        .collect()
}

proptest! {
    /// The best partial follows the reference rule whatever the listing order, and never loses
    /// WAL another safekeeper holds to a higher term.
    #[test]
    fn best_partial_holds_the_most_wal_across_safekeepers(names in prop::collection::vec(arb_partial(), 1..12)) {
        let objects = objects(&names);
        let best = best_partial(&objects).expect("non-empty");
        prop_assert_eq!(&best.name, &reference_best(&names));
        let ranked = ranked_candidates(&objects);
        // One candidate per safekeeper, ordered by the WAL held.
        let mut ids: Vec<u64> = ranked.iter().map(|p| p.name.sk_id).collect();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), ranked.len());
        prop_assert!(ranked.windows(2).all(|w| w[0].name.commit_lsn >= w[1].name.commit_lsn));
        let mut reversed = objects.clone();
        reversed.reverse();
        prop_assert_eq!(&best_partial(&reversed).expect("non-empty").name, &best.name);
    }

    /// Candidates cut from one history always agree; one flipped byte is found at its LSN, and
    /// `--prefer-safekeeper` picks the best candidate consistent with the preferred one.
    #[test]
    fn divergence_is_found_at_the_first_differing_byte(
        lens in prop::collection::vec(1usize..4096, 2..4),
        flip_in in 0usize..3,
        flip_at in 0usize..4096,
    ) {
        let history: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let names: Vec<PartialName> = lens.iter().enumerate()
            .map(|(i, &l)| partial(1, 5, l as u64, 1, i as u64 + 1, MIB)).collect();
        let objs = objects(&names);
        let ranked = ranked_candidates(&objs);
        let mut datas: Vec<Vec<u8>> = ranked.iter()
            .map(|p| history[..(p.name.commit_lsn.0 - Lsn::from_segment(5, MIB).0) as usize].to_vec())
            .collect();
        let start = Lsn::from_segment(5, MIB);
        fn views<'a>(r: &[&'a PartialObject], d: &'a [Vec<u8>]) -> Vec<(&'a PartialObject, &'a [u8])> {
            r.iter().copied().zip(d.iter().map(|v| &v[..])).collect()
        }
        prop_assert_eq!(choose_agreed(&views(&ranked, &datas), start, None), Ok(0));
        let victim = flip_in % datas.len();
        if flip_at < datas[victim].len() {
            datas[victim][flip_at] ^= 0x40;
            let shared_with_best = datas[victim].len().min(datas[0].len());
            let result = choose_agreed(&views(&ranked, &datas), start, None);
            if victim == 0 {
                // Every other candidate shorter than the flip agrees with the best.
                let expect_err = datas.iter().skip(1).any(|d| d.len() > flip_at);
                prop_assert_eq!(result.is_err(), expect_err);
            } else if flip_at < shared_with_best {
                let d = result.expect_err("a flipped byte inside the common bytes is a divergence");
                prop_assert_eq!(d.at, start + flip_at as u64);
                prop_assert_eq!(&d.best.key, &ranked[0].key);
                prop_assert_eq!(&d.other.key, &ranked[victim].key);
                // Preferring the victim's safekeeper serves a candidate consistent with it.
                let chosen = choose_agreed(&views(&ranked, &datas), start, Some(ranked[victim].name.sk_id))
                    .expect("the preferred safekeeper resolves it");
                prop_assert!(first_difference(&datas[chosen], &datas[victim]).is_none());
            }
        }
    }

    /// Gaps and ranges partition [first, last] exactly.
    #[test]
    fn gaps_and_ranges_cover_first_to_last(segnos in prop::collection::btree_set(0u64..200, 1..40)) {
        let full: Vec<(u32, u64)> = segnos.iter().map(|&s| (1, s)).collect();
        let a = Archive::from_listing("main", listing(MIB, &full, &[]), None);
        let t = &a.timelines[&1];
        let mut covered: Vec<u64> = t.segment_ranges().into_iter().flatten().collect();
        let missing: Vec<u64> = t.gaps().into_iter().flatten().collect();
        prop_assert!(missing.iter().all(|s| !segnos.contains(s)));
        covered.extend(&missing);
        covered.sort();
        let first = *segnos.iter().next().expect("non-empty");
        let last = *segnos.iter().next_back().expect("non-empty");
        prop_assert_eq!(covered, (first..=last).collect::<Vec<_>>());
    }
}

#[test]
fn golden_choices_between_safekeepers() {
    let best = |names: &[PartialName]| {
        best_partial(&objects(names))
            .expect("non-empty")
            .name
            .clone()
    };
    // The case: sk5 moved to term 2 and stopped; sk6 acknowledged on in term 1.
    let sk5 = partial(1, 3, 0x1_0000, 2, 5, MIB);
    let sk6 = partial(1, 3, 0x8_0000, 1, 6, MIB);
    assert_eq!(best(&[sk5.clone(), sk6.clone()]), sk6);
    // A safekeeper's own versions: its newest term is its truth, even if shorter.
    let old = partial(1, 3, 0x9_0000, 1, 5, MIB);
    assert_eq!(best(&[old.clone(), sk5.clone()]), sk5);
    assert_eq!(
        ranked_candidates(&objects(&[old, sk5.clone(), sk6.clone()]))
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>(),
        vec![sk6, sk5]
    );
    // Equal WAL: the lowest safekeeper id, whatever the terms.
    let a = partial(1, 3, 0x100, 7, 4, MIB);
    let b = partial(1, 3, 0x100, 1, 2, MIB);
    assert_eq!(best(&[a.clone(), b.clone()]), b);
    assert_eq!(best(&[b.clone(), a]), b);
}

#[test]
fn first_difference_spans_chunks() {
    let a = vec![3u8; 300_000];
    let mut b = a.clone();
    assert_eq!(first_difference(&a, &b), None);
    assert_eq!(first_difference(&a, &b[..1000]), None, "a prefix agrees");
    b[200_001] = 4;
    assert_eq!(first_difference(&a, &b), Some(200_001));
    assert_eq!(first_difference(&b[..200_001], &a), None);
    assert_eq!(first_difference(&[], &a), None);
}
/// [`wal_segment`]'s records up to `fork` bytes, then records of other sizes: valid WAL of a
/// history that forked from it inside the segment.
fn forked_segment(segno: u64, fork: usize) -> Vec<u8> {
    let mut b = WalBuilder::new(Lsn::from_segment(segno, MIB).0, MIB, SYSID, 0);
    while b.buf.len() < fork {
        b.record(200 + b.buf.len() % 3000);
    }
    while b.buf.len() + 3 * 8192 < MIB as usize {
        b.record(1000 + b.buf.len() % 500);
    }
    let mut buf = b.buf;
    buf.resize(MIB as usize, 0);
    buf
}

#[tokio::test]
async fn diverged_partials_are_refused_unless_a_safekeeper_is_preferred() {
    let t = TestArchive::new();
    t.put_segment(2).await; // tells `verify` the segment size
    let ours = wal_segment(3, SYSID);
    // The same records up to about 0x30000, then others: a fork inside timeline 1.
    let theirs = forked_segment(3, 0x3_0000);
    let first_diff = first_difference(&ours, &theirs).expect("they differ");
    let a = partial(1, 3, 0x8_0000, 1, 5, MIB);
    let b = partial(1, 3, 0x6_0000, 3, 6, MIB);
    t.put_partial(&ours, &a).await;
    t.put_partial(&theirs, &b).await;
    let name = segment_file_name(1, 3, MIB);
    match t.fetch(&name).await {
        Err(FetchError::Diverged(d)) => {
            assert_eq!(d.best.name, a);
            assert_eq!(d.other.name, b);
            assert_eq!(d.at, Lsn::from_segment(3, MIB) + first_diff as u64);
            let line = FetchError::Diverged(d).to_string();
            assert!(line.contains(&a.to_file_name(MIB)) && line.contains(&b.to_file_name(MIB)));
            assert!(!line.contains('\n'), "one line: {line}");
        }
        other => panic!("expected a divergence, got {other:?}"),
    }
    match t.fetch_preferring(&name, Some(6)).await {
        Ok(Some(Fetched::Partial { object, data, .. })) => {
            assert_eq!(object.name, b);
            assert_eq!(&data[..0x6_0000], &theirs[..0x6_0000]);
        }
        other => panic!("expected sk6's partial, got {other:?}"),
    }
    match t.fetch_preferring(&name, Some(5)).await {
        Ok(Some(Fetched::Partial { object, .. })) => assert_eq!(object.name, a),
        other => panic!("expected sk5's partial, got {other:?}"),
    }
    // Preferring a safekeeper without a partial here resolves nothing.
    assert!(matches!(
        t.fetch_preferring(&name, Some(9)).await,
        Err(FetchError::Diverged(_))
    ));
    // verify reports it on the runner-up, naming the best and the LSN.
    let report = t.verify().await;
    let found: Vec<_> = report
        .problems
        .iter()
        .filter(|p| p.message.contains("diverges"))
        .collect();
    assert_eq!(found.len(), 1, "{:?}", report.problems);
    assert!(found[0].object.ends_with(&b.to_file_name(MIB)));
    assert!(found[0].message.contains(&a.to_file_name(MIB)));
    let lsn = (Lsn::from_segment(3, MIB) + first_diff as u64).to_string();
    assert!(found[0].message.contains(&lsn), "{}", found[0].message);
    // A full segment ends the question (the partials are superseded).
    t.put(&name, ours.clone()).await;
    assert!(matches!(
        t.fetch(&name).await,
        Ok(Some(Fetched::Full { .. }))
    ));
    assert!(
        !t.verify()
            .await
            .problems
            .iter()
            .any(|p| p.message.contains("diverges"))
    );
}
