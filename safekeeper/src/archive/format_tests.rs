//! Archives written in the object format (compressed full segments, versions stored as chains of
//! compressed pieces) read back through every reader: the segment size from a header, restore of
//! full segments and assembled versions byte for byte, `remote verify`, and each kind of damage
//! refused with the object named. Raw (pre-format) archives are covered by `tests.rs`.

use bytes::Bytes;
use control_file::Lsn;
use control_file::names::{PartialName, segment_file_name};
use tokio_util::sync::CancellationToken;

use super::fetch::{FetchError, Fetched};
use super::tests::{MIB, SYSID, TestArchive, partial, wal_segment};
use super::verify::Severity;
use super::*;
use crate::object_format::{self, Compression};

impl TestArchive {
    /// Stores `data` in the object format (zstd) under `name`.
    async fn put_encoded(&self, name: &str, data: &[u8]) {
        let encoded = object_format::encode(data, &Compression::default());
        assert!(object_format::is_encoded(&encoded));
        self.put(name, encoded.to_vec()).await;
    }

    /// Stores piece `name` of `full` (the segment's WAL) in the object format.
    async fn put_piece(&self, full: &[u8], name: &PartialName) {
        let (s, e) = (
            name.start_offset(MIB) as usize,
            name.commit_offset(MIB) as usize,
        );
        self.put_encoded(&name.to_file_name(MIB), &full[s..e]).await;
    }
}

/// Piece `[start, end)` (offsets in segment `segno` of timeline 1) of safekeeper `sk`, term 1.
fn piece(segno: u64, start: u64, end: u64, sk: u64) -> PartialName {
    PartialName {
        start_lsn: Lsn::from_segment(segno, MIB) + start,
        ..partial(1, segno, end, 1, sk, MIB)
    }
}

/// Full segment 2 and, for segment 3, a chain base + 2 increments (sk1), all compressed.
async fn encoded_archive() -> (TestArchive, Vec<u8>, Vec<u8>, Vec<PartialName>) {
    let t = TestArchive::new();
    let seg2 = wal_segment(2, SYSID);
    t.put_encoded(&segment_file_name(1, 2, MIB), &seg2).await;
    let seg3 = wal_segment(3, SYSID);
    let chain = vec![
        piece(3, 0, 0x1_0000, 1),
        piece(3, 0x1_0000, 0x2_8000, 1),
        piece(3, 0x2_8000, 0x3_0123, 1),
    ];
    for p in &chain {
        t.put_piece(&seg3, p).await;
    }
    (t, seg2, seg3, chain)
}

#[tokio::test]
async fn an_encoded_archive_restores_byte_for_byte_and_verifies_clean() {
    let (t, seg2, seg3, chain) = encoded_archive().await;
    let cancel = CancellationToken::new();
    let a = Archive::load(&*t.storage, "main", None, &cancel)
        .await
        .expect("list");
    assert_eq!(
        (a.seg_size, a.seg_size_source),
        (MIB, SegmentSizeSource::Inferred),
        "from the header: the object's listed size is compressed"
    );
    let full_meta = &a.timelines[&1].segments[&2];
    assert!(full_meta.size < u64::from(MIB) / 2, "{}", full_meta.size);
    let v = a.timelines[&1].served_partial(3).expect("a version");
    assert_eq!(v.pieces.len(), 3);
    assert_eq!(v.name, chain[2].as_version(MIB));
    assert!(v.stored_bytes() < v.wal_bytes(MIB));

    match t.fetch(&segment_file_name(1, 2, MIB)).await {
        Ok(Some(Fetched::Full { data, seg_size, .. })) => {
            assert_eq!(seg_size, MIB);
            assert_eq!(&data[..], &seg2[..]);
        }
        other => panic!("expected the full segment, got {other:?}"),
    }
    // No --wal-segment-size: the base piece's page header tells it.
    match t.fetch(&segment_file_name(1, 3, MIB)).await {
        Ok(Some(Fetched::Partial { object, data, .. })) => {
            assert_eq!(object.pieces.len(), 3);
            assert_eq!(data.len(), MIB as usize);
            assert_eq!(&data[..0x3_0123], &seg3[..0x3_0123]);
            assert!(data[0x3_0123..].iter().all(|b| *b == 0));
        }
        other => panic!("expected the assembled version, got {other:?}"),
    }
    let report = t.verify().await;
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.objects_read, 4);
}

#[tokio::test]
async fn damaged_pieces_and_segments_are_refused_and_named() {
    let (t, _seg2, seg3, chain) = encoded_archive().await;
    // The middle piece: its payload changed after encoding (the storage crc32c matches the new
    // bytes, so only the object format can tell).
    let mut encoded = object_format::encode(
        &seg3[0x1_0000..0x2_8000],
        &Compression {
            codec: object_format::Codec::None,
            level: 0,
        },
    )
    .to_vec();
    let last = encoded.len() - 1;
    encoded[last] ^= 0x40;
    t.put(&chain[1].to_file_name(MIB), encoded).await;
    let err = t
        .fetch(&segment_file_name(1, 3, MIB))
        .await
        .expect_err("damaged piece");
    assert!(matches!(err, FetchError::Corrupt(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&chain[1].to_file_name(MIB)) && msg.contains("checksum"),
        "{msg}"
    );
    // A piece that decodes to fewer bytes than its name says.
    t.put_encoded(&chain[1].to_file_name(MIB), &seg3[0x1_0000..0x2_0000])
        .await;
    let err = t
        .fetch(&segment_file_name(1, 3, MIB))
        .await
        .expect_err("short piece");
    assert!(err.to_string().contains("its name says"), "{err}");
    let report = t.verify().await;
    let errors: Vec<String> = report
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| format!("{}: {}", p.object, p.message))
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&chain[1].to_file_name(MIB)) && e.contains("its name says")),
        "{errors:#?}"
    );

    // A full segment that decodes to less than a segment.
    t.put_encoded(
        &segment_file_name(1, 2, MIB),
        &wal_segment(2, SYSID)[..4096],
    )
    .await;
    let err = t
        .fetch(&segment_file_name(1, 2, MIB))
        .await
        .expect_err("short segment");
    assert!(err.to_string().contains("not a WAL segment size"), "{err}");

    let report = t.verify().await;
    assert!(
        report.problems.iter().any(|p| p.severity == Severity::Error
            && p.object.ends_with(&segment_file_name(1, 2, MIB))
            && p.message.contains("full segment is")),
        "{:#?}",
        report.problems
    );
}

#[tokio::test]
async fn verify_warns_about_pieces_on_no_chain() {
    let (t, _seg2, seg3, _chain) = encoded_archive().await;
    // A leftover of a merge (its bytes are in the version) and an orphan past the chain's end.
    let leftover = piece(3, 0x1_0000, 0x2_0000, 1);
    let orphan = piece(3, 0x4_0000, 0x5_0000, 1);
    t.put_piece(&seg3, &leftover).await;
    t.put_piece(&seg3, &orphan).await;
    let report = t.verify().await;
    assert_eq!(report.errors(), 0, "{:#?}", report.problems);
    let warned = |n: &PartialName, what: &str| {
        report.problems.iter().any(|p| {
            p.severity == Severity::Warning
                && p.object.ends_with(&n.to_file_name(MIB))
                && p.message.contains(what)
        })
    };
    assert!(
        warned(&leftover, "`remote prune` deletes it"),
        "{:#?}",
        report.problems
    );
    assert!(warned(&orphan, "on no chain"), "{:#?}", report.problems);
    // Restore still serves the chain's end, not the orphan's.
    match t.fetch(&segment_file_name(1, 3, MIB)).await {
        Ok(Some(Fetched::Partial { object, .. })) => {
            assert_eq!(object.name.commit_lsn, Lsn::from_segment(3, MIB) + 0x3_0123);
        }
        other => panic!("expected the version, got {other:?}"),
    }
}

/// A history file in the object format is decoded before it is parsed.
#[tokio::test]
async fn encoded_history_files_are_decoded() {
    let t = TestArchive::new();
    let text = b"1\t0/3000000\tno recovery target specified\n";
    t.put_encoded("00000002.history", text).await;
    match t.fetch("00000002.history").await {
        Ok(Some(Fetched::History { data, .. })) => assert_eq!(data, Bytes::from_static(text)),
        other => panic!("expected the history file, got {other:?}"),
    }
}
