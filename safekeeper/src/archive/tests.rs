//! Tests of the archive model, selection rules, lookup, plan and verification, on listings built
//! in memory and on a real `LocalFs` archive of WAL laid out as PostgreSQL writes it.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use control_file::Lsn;
use control_file::names::{PartialName, segment_file_name};
use proptest::prelude::*;
use remote_storage::{
    ErrorKind, FaultConfig, FaultyStorage, LocalFs, ObjectMeta, Op, PutOptions, RemoteStorage,
};
use tokio_util::sync::CancellationToken;

use super::fetch::{FetchError, FetchOptions, Fetched, WalFileName, fetch_wal_file};
use super::history::HistoryEntry;
use super::plan::{Source, Stop, plan_recovery};
use super::verify::{Severity, VerifyOptions, verify_archive};
use super::*;
use crate::wal::format::testutil::WalBuilder;

pub(super) const MIB: u32 = 1 << 20;
pub(super) const SYSID: u64 = 7_300_000_000_000_000_001;

fn meta(key: &str, size: u64) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size,
        crc32c: None,
        metadata: Default::default(),
        last_modified: Some(SystemTime::UNIX_EPOCH),
    }
}

pub(super) fn partial(
    tli: u32,
    segno: u64,
    commit_off: u64,
    term: u64,
    sk: u64,
    seg: u32,
) -> PartialName {
    PartialName::base(
        tli,
        segno,
        Lsn::from_segment(segno, seg) + commit_off,
        term,
        sk,
        seg,
    )
}

pub(super) fn listing(seg: u32, full: &[(u32, u64)], partials: &[PartialName]) -> Vec<ObjectMeta> {
    let mut out: Vec<ObjectMeta> = full
        .iter()
        .map(|&(tli, s)| {
            meta(
                &format!("main/wal/{}", segment_file_name(tli, s, seg)),
                seg.into(),
            )
        })
        .collect();
    out.extend(
        partials
            .iter()
            .map(|p| meta(&format!("main/wal/{}", p.to_file_name(seg)), p.bytes())),
    );
    out
}

#[test]
fn listing_is_parsed_into_timelines_ranges_gaps_and_partials() {
    let seg = MIB;
    let mut metas = listing(
        seg,
        &[(1, 1), (1, 2), (1, 4), (1, 5), (1, 9), (2, 9)],
        &[partial(2, 10, 100, 2, 1, seg)],
    );
    metas.push(meta("main/wal/00000002.history", 40));
    metas.push(meta("main/wal/README", 3));
    let a = Archive::from_listing("main", metas, None);
    assert_eq!(a.seg_size, MIB, "inferred from the full segments");
    assert_eq!(a.seg_size_source, SegmentSizeSource::Inferred);
    let t1 = &a.timelines[&1];
    assert_eq!(t1.segment_ranges(), vec![1..=2, 4..=5, 9..=9]);
    assert_eq!(t1.gaps(), vec![3..=3, 6..=8]);
    assert_eq!(a.newest_timeline(), Some(2));
    assert_eq!(a.histories.len(), 1);
    assert_eq!(a.unrecognized.len(), 1);
    assert_eq!(a.object_count(), 9);
    assert_eq!(a.total_size(), 6 * u64::from(MIB) + 100 + 40 + 3);
    // No full segment: the default size.
    let a = Archive::from_listing("main", vec![], None);
    assert_eq!(
        (a.seg_size, a.seg_size_source),
        (DEFAULT_SEGMENT_SIZE, SegmentSizeSource::Default)
    );
}

#[test]
fn full_segment_beats_every_partial() {
    let seg = 16 * MIB;
    let metas = listing(seg, &[(1, 3)], &[partial(1, 3, 500, 9, 1, seg)]);
    let a = Archive::from_listing("main", metas, None);
    assert_eq!(a.timelines[&1].served_partial(3), None);
}

/// A version stored as a base and increments is listed under its logical name and served
/// assembled; a piece whose predecessor is missing serves nothing past the chain's end.
#[tokio::test]
async fn versions_are_assembled_from_chains_of_pieces() {
    let seg3 = wal_segment(3, SYSID);
    let base = partial(1, 3, 0x2_0000, 1, 1, MIB);
    let delta = PartialName {
        start_lsn: base.commit_lsn,
        ..partial(1, 3, 0x4_0000, 1, 1, MIB)
    };
    let orphan = PartialName {
        start_lsn: Lsn::from_segment(3, MIB) + 0x5_0000,
        ..partial(1, 3, 0x6_0000, 1, 1, MIB)
    };
    let listed = listing(MIB, &[], &[base.clone(), delta.clone(), orphan.clone()]);
    let a = Archive::from_listing("main", listed, Some(MIB));
    let t = &a.timelines[&1];
    let served = t.served_partial(3).expect("a version");
    assert_eq!(served.name, delta.as_version(MIB));
    assert_eq!(
        served.key,
        format!("main/wal/{}", delta.as_version(MIB).to_file_name(MIB))
    );
    assert_eq!(served.pieces.len(), 2);
    assert_eq!(served.wal_bytes(MIB), 0x4_0000);
    assert_eq!(t.off_chain(3).len(), 1);
    assert_eq!(a.object_count(), 3, "objects are pieces, not versions");

    let t = TestArchive::new();
    t.put_partial(&seg3, &base).await;
    t.put_partial(&seg3, &delta).await;
    t.put_partial(&seg3, &orphan).await;
    match t.fetch(&segment_file_name(1, 3, MIB)).await {
        Ok(Some(Fetched::Partial {
            object,
            data,
            candidates,
            ..
        })) => {
            assert_eq!((object.name, candidates), (delta.as_version(MIB), 1));
            assert_eq!(&data[..0x4_0000], &seg3[..0x4_0000]);
            assert!(data[0x4_0000..].iter().all(|b| *b == 0));
        }
        other => panic!("expected the assembled version, got {other:?}"),
    }
}

pub(super) fn arb_partial() -> impl Strategy<Value = PartialName> {
    (1u64..4, 1u64..1000, 1u64..4).prop_map(|(term, off, sk)| partial(1, 5, off, term, sk, MIB))
}

#[test]
fn padding_fills_the_segment_with_zeros() {
    let padded = pad_to_segment(b"abc", MIB).expect("fits");
    assert_eq!(padded.len(), MIB as usize);
    assert_eq!(&padded[..3], b"abc");
    assert!(padded[3..].iter().all(|b| *b == 0));
    assert!(pad_to_segment(&vec![1; MIB as usize + 1], MIB).is_err());
}

#[test]
fn plan_follows_the_timeline_path_and_ends_at_the_best_partial() {
    let seg = MIB;
    // Timeline 1: segments 1..=4 (it went on past the switch); timeline 2 from segment 3.
    let metas = listing(
        seg,
        &[(1, 1), (1, 2), (1, 3), (1, 4), (2, 3), (2, 4)],
        &[
            partial(2, 5, 0x1000, 2, 1, seg),
            partial(2, 5, 0x2000, 2, 2, seg),
            partial(2, 5, 0x9000, 1, 3, seg),
        ],
    );
    let a = Archive::from_listing("main", metas, None);
    let history = [HistoryEntry {
        tli: 1,
        switch_lsn: Lsn::from_segment(3, seg) + 0x100,
    }];
    let plan = plan_recovery(&a, 2, &history, None, None);
    let chosen: Vec<(u64, u32)> = plan.steps.iter().map(|s| (s.segno, s.timeline)).collect();
    assert_eq!(chosen, vec![(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]);
    let Source::Partial(p) = &plan.steps[4].source else {
        panic!("the last step is the partial");
    };
    // Safekeeper 3 holds the most WAL; its term 1 is not comparable with the others' term 2.
    assert_eq!((p.name.sk_id, p.name.term), (3, 1));
    assert_eq!(plan.end_lsn, Lsn::from_segment(5, seg) + 0x9000);
    assert_eq!(plan.stop, Stop::EndOfArchive);

    let plan = plan_recovery(&a, 2, &history, None, Some(Lsn::from_segment(3, seg) + 1));
    assert_eq!(plan.steps.len(), 3);
    assert_eq!(plan.stop, Stop::UntilLsn);
}

#[test]
fn plan_stops_at_a_gap() {
    let metas = listing(MIB, &[(1, 1), (1, 3)], &[]);
    let a = Archive::from_listing("main", metas, None);
    let plan = plan_recovery(&a, 1, &[], None, None);
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(
        plan.stop,
        Stop::Gap {
            missing: segment_file_name(1, 2, MIB)
        }
    );
    assert_eq!(plan.end_lsn, Lsn::from_segment(2, MIB));
}

/// A 1 MiB segment of valid WAL records, zero-padded after the last one.
pub(super) fn wal_segment(segno: u64, sysid: u64) -> Vec<u8> {
    let mut b = WalBuilder::new(Lsn::from_segment(segno, MIB).0, MIB, sysid, 0);
    while b.buf.len() + 3 * 8192 < MIB as usize {
        b.record(200 + b.buf.len() % 3000);
    }
    let mut buf = b.buf;
    buf.resize(MIB as usize, 0);
    buf
}

pub(super) struct TestArchive {
    _dir: tempfile::TempDir,
    local: LocalFs,
    pub(super) storage: Arc<dyn RemoteStorage>,
}

impl TestArchive {
    pub(super) fn new() -> TestArchive {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = LocalFs::new(dir.path()).expect("local storage");
        let storage: Arc<dyn RemoteStorage> = Arc::new(local.clone());
        TestArchive {
            _dir: dir,
            local,
            storage,
        }
    }

    pub(super) async fn put(&self, name: &str, data: Vec<u8>) {
        let key = format!("main/wal/{name}");
        self.storage
            .put(
                &key,
                Bytes::from(data).into(),
                &PutOptions::default(),
                &CancellationToken::new(),
            )
            .await
            .expect("put");
    }

    pub(super) async fn put_segment(&self, segno: u64) -> Vec<u8> {
        let data = wal_segment(segno, SYSID);
        self.put(&segment_file_name(1, segno, MIB), data.clone())
            .await;
        data
    }

    pub(super) async fn put_partial(&self, full: &[u8], name: &PartialName) {
        let (start, end) = (
            name.start_offset(MIB) as usize,
            name.commit_offset(MIB) as usize,
        );
        self.put(&name.to_file_name(MIB), full[start..end].to_vec())
            .await;
    }

    pub(super) async fn fetch(&self, name: &str) -> Result<Option<Fetched>, FetchError> {
        self.fetch_preferring(name, None).await
    }

    pub(super) async fn fetch_preferring(
        &self,
        name: &str,
        prefer: Option<u64>,
    ) -> Result<Option<Fetched>, FetchError> {
        let name = WalFileName::parse(name).expect("a WAL file name");
        let opts = FetchOptions {
            seg_size: None,
            prefer_safekeeper: prefer,
        };
        fetch_wal_file(
            &*self.storage,
            "main",
            &name,
            opts,
            &CancellationToken::new(),
        )
        .await
    }

    pub(super) async fn verify(&self) -> super::verify::Report {
        let cancel = CancellationToken::new();
        let archive = Archive::load(&*self.storage, "main", None, &cancel)
            .await
            .expect("list");
        let opts = VerifyOptions {
            jobs: 2,
            system_identifier: None,
        };
        verify_archive(&*self.storage, &archive, &opts, &cancel)
            .await
            .expect("verify runs")
    }
}

#[tokio::test]
async fn fetch_serves_full_segment_else_best_partial_padded() {
    let t = TestArchive::new();
    let seg2 = t.put_segment(2).await;
    let seg3 = wal_segment(3, SYSID);
    // sk1 and sk2 in term 2; sk3 still in term 1 but further ahead on the same history: the
    // most WAL wins, terms of different safekeepers are not compared.
    t.put_partial(&seg3, &partial(1, 3, 0x2_0000, 2, 1, MIB))
        .await;
    t.put_partial(&seg3, &partial(1, 3, 0x4_0000, 2, 2, MIB))
        .await;
    // sk2's older version is not a candidate.
    t.put_partial(&seg3, &partial(1, 3, 0x1_0000, 1, 2, MIB))
        .await;
    let best = partial(1, 3, 0x8_0000, 1, 3, MIB);
    t.put_partial(&seg3, &best).await;
    // A bogus partial of segment 2, whose full segment exists.
    let bogus = partial(1, 2, 0x100, 9, 9, MIB);
    t.put(&bogus.to_file_name(MIB), vec![0xFF; 0x100]).await;

    match t.fetch(&segment_file_name(1, 2, MIB)).await {
        Ok(Some(Fetched::Full { data, .. })) => assert_eq!(&data[..], &seg2[..]),
        other => panic!("expected the full segment, got {other:?}"),
    }
    match t.fetch(&segment_file_name(1, 3, MIB)).await {
        Ok(Some(Fetched::Partial {
            object,
            data,
            candidates,
            compared,
        })) => {
            assert_eq!(object.name, best);
            assert_eq!((candidates, compared), (4, 2));
            assert_eq!(data.len(), MIB as usize);
            assert_eq!(&data[..0x8_0000], &seg3[..0x8_0000]);
            assert!(data[0x8_0000..].iter().all(|b| *b == 0));
        }
        other => panic!("expected the best partial, got {other:?}"),
    }
    assert!(matches!(
        t.fetch(&segment_file_name(1, 4, MIB)).await,
        Ok(None)
    ));
    assert!(matches!(t.fetch("00000002.history").await, Ok(None)));
}

#[tokio::test]
async fn fetch_refuses_damaged_objects_and_reports_outages_as_errors() {
    let t = TestArchive::new();
    t.put_segment(1).await;
    // Flip a byte on disk behind the sidecar's back.
    let path = t
        .local
        .data_path(&format!("main/wal/{}", segment_file_name(1, 1, MIB)));
    let mut data = std::fs::read(&path).expect("read");
    data[5000] ^= 0xFF;
    std::fs::write(&path, data).expect("write");
    let err = t
        .fetch(&segment_file_name(1, 1, MIB))
        .await
        .expect_err("damaged");
    assert!(matches!(err, FetchError::Corrupt(_)), "{err}");
    assert!(!err.is_retryable());

    // A segment whose first page is not a WAL page header of that segment.
    t.put(&segment_file_name(1, 2, MIB), wal_segment(7, SYSID))
        .await;
    let err = t
        .fetch(&segment_file_name(1, 2, MIB))
        .await
        .expect_err("wrong segment");
    assert!(err.to_string().contains("page address"), "{err}");

    // An outage is an error, never "not found".
    let faulty = FaultyStorage::new(
        t.storage.clone(),
        FaultConfig {
            ops: vec![Op::Get, Op::List],
            fail_probability: 1.0,
            failure: ErrorKind::Transient,
            ..FaultConfig::default()
        },
    );
    let name = WalFileName::parse(&segment_file_name(1, 9, MIB)).expect("name");
    let err = fetch_wal_file(
        &faulty,
        "main",
        &name,
        FetchOptions::default(),
        &CancellationToken::new(),
    )
    .await
    .expect_err("outage");
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn verify_passes_a_clean_archive_and_names_each_damage() {
    let t = TestArchive::new();
    let mut segs = Vec::new();
    for segno in 1..=5 {
        segs.push(t.put_segment(segno).await);
    }
    let seg6 = wal_segment(6, SYSID);
    t.put_partial(&seg6, &partial(1, 6, 0x3_0000, 1, 1, MIB))
        .await;
    // A leftover partial of segment 5 that agrees with the full segment.
    t.put_partial(&segs[4], &partial(1, 5, 0x1_0000, 1, 1, MIB))
        .await;
    let report = t.verify().await;
    assert_eq!(report.errors(), 0, "{:#?}", report.problems);
    assert_eq!(report.system_identifier, Some(SYSID));

    // Missing in the middle, a flipped byte, a segment of another system, a diverged partial.
    let key = |segno| format!("main/wal/{}", segment_file_name(1, segno, MIB));
    t.storage
        .delete(&key(2), &CancellationToken::new())
        .await
        .expect("delete");
    let path = t.local.data_path(&key(3));
    let mut data = std::fs::read(&path).expect("read");
    data[100_000] ^= 0x01;
    std::fs::write(&path, data).expect("write");
    t.put(&segment_file_name(1, 4, MIB), wal_segment(4, SYSID + 7))
        .await;
    t.put_partial(
        &wal_segment(5, SYSID + 7),
        &partial(1, 5, 0x2_0000, 1, 2, MIB),
    )
    .await;
    let report = t.verify().await;
    let errors: Vec<(&str, &str)> = report
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| (p.object.as_str(), p.message.as_str()))
        .collect();
    let has = |k: &str, what: &str| errors.iter().any(|(o, m)| *o == k && m.contains(what));
    assert!(has(&key(2), "missing"), "{errors:#?}");
    assert!(has(&key(3), "damaged"), "{errors:#?}");
    assert!(has(&key(4), "system identifier"), "{errors:#?}");
    let diverged = format!(
        "main/wal/{}",
        partial(1, 5, 0x2_0000, 1, 2, MIB).to_file_name(MIB)
    );
    assert!(
        has(&diverged, "differs from the full segment"),
        "{errors:#?}"
    );
    assert!(has(&diverged, "system identifier"), "{errors:#?}");
    assert_eq!(errors.len(), 5, "{errors:#?}");
}

#[tokio::test]
async fn verify_checks_records_and_sizes() {
    let t = TestArchive::new();
    let mut seg = wal_segment(1, SYSID);
    // Corrupt a record payload in the middle of the second page (page headers stay intact).
    seg[8192 + 500] ^= 0x55;
    t.put(&segment_file_name(1, 1, MIB), seg).await;
    // A partial whose object is shorter than its name says.
    let p = partial(1, 2, 0x1_0000, 1, 1, MIB);
    t.put(
        &p.to_file_name(MIB),
        wal_segment(2, SYSID)[..0x8000].to_vec(),
    )
    .await;
    let report = t.verify().await;
    let msgs: Vec<String> = report
        .problems
        .iter()
        .map(|p| format!("{}: {}", p.object, p.message))
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("WAL record") && m.contains("CRC")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains(".partial") && m.contains("name says")),
        "{msgs:#?}"
    );
}
