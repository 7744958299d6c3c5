//! Golden fixtures: every released format version must keep loading and upgrading, and the frozen
//! encoders must keep producing exactly the committed bytes.
//!
//! Regenerate the fixture of the newest, unreleased version (and only that one: older fixtures are
//! frozen and never rewritten) with
//! `cargo test -p control_file --test fixtures -- --ignored regenerate_fixtures`.

mod common;

use std::fs;

use common::{
    SEG16, V4_DELTA_START, fixture_path, fixture_state, v1_fixture_upgraded, v1_fixture_wire,
    v2_fixture_state, v2_fixture_wire, v3_fixture_state, v3_fixture_wire, v4_fixture_state,
};
use control_file::format::{self, CURRENT_FORMAT_VERSION, current, v1, v2, v3, v4};
use control_file::{UpgradeOutcome, load, load_versioned, upgrade_in_place, with_suffix};

/// The v1 fixture, encoded by v1's frozen structs.
fn v1_bytes() -> Vec<u8> {
    let payload = format::encode_payload(&v1_fixture_wire()).expect("encode v1");
    format::frame(1, &payload)
}

/// The v2 fixture, encoded by v2's frozen structs.
fn v2_bytes() -> Vec<u8> {
    let payload = format::encode_payload(&v2_fixture_wire()).expect("encode v2");
    format::frame(2, &payload)
}

/// The v3 fixture, encoded by v3's frozen structs.
fn v3_bytes() -> Vec<u8> {
    let payload = format::encode_payload(&v3_fixture_wire()).expect("encode v3");
    format::frame(3, &payload)
}

/// The v4 fixture, encoded by the real save path (v4 is the newest format).
fn v4_bytes() -> Vec<u8> {
    format::encode_file(&v4_fixture_state()).expect("encode v4")
}

/// The bytes every fixture must hold.
fn fixture_bytes(version: u32) -> Vec<u8> {
    match version {
        1 => v1_bytes(),
        2 => v2_bytes(),
        3 => v3_bytes(),
        4 => v4_bytes(),
        _ => panic!("no fixture for format version {version}"),
    }
}

#[test]
#[ignore = "rewrites the committed golden fixture of the newest format"]
fn regenerate_fixtures() {
    let newest = CURRENT_FORMAT_VERSION;
    control_file::write_durably(&fixture_path(newest), &fixture_bytes(newest))
        .expect("write the newest fixture");
}

#[test]
fn every_version_has_a_fixture() {
    for version in 1..=CURRENT_FORMAT_VERSION {
        let path = fixture_path(version);
        let (state, found) = load_versioned(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found, version, "{}", path.display());
        assert_eq!(state, fixture_state(version), "{}", path.display());
        let on_disk = fs::read(&path).expect("read fixture");
        assert_eq!(
            on_disk,
            fixture_bytes(version),
            "the v{version} encoder no longer reproduces {}",
            path.display()
        );
    }
}

#[test]
fn v1_fixture_loads_and_upgrades() {
    let (state, version) = load_versioned(&fixture_path(1)).expect("load v1 fixture");
    assert_eq!(version, 1);
    assert_eq!(state, v1_fixture_upgraded());
    assert_eq!(state.wal_page_magic, 0, "v1 files have no WAL page magic");
}

#[test]
fn v1_encoding_is_frozen() {
    let on_disk = fs::read(fixture_path(1)).expect("read v1 fixture");
    assert_eq!(
        on_disk,
        v1_bytes(),
        "the v1 encoder no longer reproduces the v1 fixture"
    );
    let (_, payload) = format::unframe(&fixture_path(1), &on_disk).expect("frame");
    let decoded: v1::ClusterState = format::decode_payload(payload).expect("decode v1");
    assert_eq!(decoded, v1_fixture_wire());
}

#[test]
fn v2_fixture_loads_and_encoding_is_frozen() {
    let path = fixture_path(2);
    let (state, version) = load_versioned(&path).expect("load v2 fixture");
    assert_eq!(version, 2);
    assert_eq!(state, v2_fixture_state());
    assert_eq!(state.wal_page_magic, 0, "v2 files have no WAL page magic");
    let on_disk = fs::read(&path).expect("read v2 fixture");
    assert_eq!(
        on_disk,
        v2_bytes(),
        "the v2 encoder no longer reproduces the v2 fixture"
    );
    let (_, payload) = format::unframe(&path, &on_disk).expect("frame");
    let decoded: v2::ClusterState = format::decode_payload(payload).expect("decode v2");
    assert_eq!(decoded, v2_fixture_wire());
}

#[test]
fn v3_fixture_loads_and_encoding_is_frozen() {
    let path = fixture_path(3);
    let (state, version) = load_versioned(&path).expect("load v3 fixture");
    assert_eq!(version, 3);
    assert_eq!(state, v3_fixture_state());
    assert_eq!(state.wal_page_magic, 0xD110);
    let on_disk = fs::read(&path).expect("read v3 fixture");
    assert_eq!(
        on_disk,
        v3_bytes(),
        "the v3 encoder no longer reproduces the v3 fixture"
    );
    let (_, payload) = format::unframe(&path, &on_disk).expect("frame");
    let decoded: v3::ClusterState = format::decode_payload(payload).expect("decode v3");
    assert_eq!(decoded, v3_fixture_wire());
    // v3 = v2 plus a trailing u16: the payload is exactly two bytes longer than v2's.
    let v2_len = format::encode_payload(&v2_fixture_wire())
        .expect("encode v2")
        .len();
    let v2_as_v3 = format::encode_payload(&v2_fixture_wire().upgrade())
        .expect("encode v3")
        .len();
    assert_eq!(v2_as_v3, v2_len + 2);
}

#[test]
fn v4_fixture_loads_and_encoding_is_frozen() {
    let path = fixture_path(4);
    let (state, version) = load_versioned(&path).expect("load v4 fixture");
    assert_eq!(version, 4);
    assert_eq!(state, v4_fixture_state());
    let delta = &state.remote.partials[2].name;
    assert!(!delta.is_base(SEG16), "the v4 fixture holds an increment");
    assert_eq!(delta.start_lsn.0, V4_DELTA_START);
    let on_disk = fs::read(&path).expect("read v4 fixture");
    assert_eq!(
        on_disk,
        v4_bytes(),
        "the v4 encoder no longer reproduces the v4 fixture"
    );
    let (_, payload) = format::unframe(&path, &on_disk).expect("frame");
    let decoded: v4::ClusterState = format::decode_payload(payload).expect("decode v4");
    assert_eq!(decoded, current::to_wire(&v4_fixture_state()));
    // v4 = v3 plus a trailing u64 in each partial's name and a trailing u8 (the merge level) in
    // each partial: 9 bytes longer per partial object.
    let v3 = v3_fixture_wire();
    let partials = v3.remote.partials.len();
    let v3_len = format::encode_payload(&v3).expect("encode v3").len();
    let v3_as_v4 = format::encode_payload(&v3.upgrade())
        .expect("encode v4")
        .len();
    assert_eq!(v3_as_v4, v3_len + 9 * partials);
}

#[test]
fn upgrade_chain_steps() {
    // Each step keeps every field and defaults only the new ones.
    let v2 = v1_fixture_wire().upgrade();
    assert_eq!((v2.last_gc_at_unix_ms, v2.partial_interval_ms), (0, 0));
    let v3 = v2.upgrade();
    assert_eq!(v3.wal_page_magic, 0);
    assert_eq!(current::from_wire(v3.upgrade()), v1_fixture_upgraded());

    let v3 = v2_fixture_wire().upgrade();
    assert_eq!(v3.wal_page_magic, 0);
    assert_eq!(v3.last_gc_at_unix_ms, 1_767_225_600_000);
    assert_eq!(v3.partial_interval_ms, 500);
    assert_eq!(current::from_wire(v3.upgrade()), v2_fixture_state());

    // v3 -> v4: every v3 partial is a base piece, starting at its segment's start.
    let v4 = v3_fixture_wire().upgrade();
    assert_eq!(v4.wal_page_magic, 0xD110);
    for p in &v4.remote.partials {
        assert_eq!(p.name.start_lsn, p.name.segno * u64::from(SEG16));
    }
    let state = current::from_wire(v4);
    assert!(state.remote.partials.iter().all(|p| p.name.is_base(SEG16)));
    assert_eq!(state, v3_fixture_state());

    // The newest wire struct round-trips the in-memory state exactly.
    let s = v4_fixture_state();
    assert_eq!(current::from_wire(current::to_wire(&s)), s);
}

#[test]
fn fixture_header_layout() {
    for version in 1..=CURRENT_FORMAT_VERSION {
        let bytes = fs::read(fixture_path(version)).expect("read fixture");
        assert_eq!(&bytes[0..4], b"SKcf");
        assert_eq!(bytes[4..8], version.to_le_bytes());
        let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        assert_eq!(bytes.len(), 12 + len + 4);
        let crc = u32::from_le_bytes(bytes[12 + len..].try_into().expect("4 bytes"));
        assert_eq!(crc, crc32c::crc32c(&bytes[..12 + len]));
        // Full segments are ranges: the whole file stays small.
        assert!(bytes.len() < 512, "v{version}: {} bytes", bytes.len());
    }
}

#[test]
fn upgrade_in_place_keeps_backup() {
    for from in 1..CURRENT_FORMAT_VERSION {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("safekeeper.control");
        let original = fs::read(fixture_path(from)).expect("read fixture");
        fs::write(&path, &original).expect("copy fixture");

        let outcome = upgrade_in_place(&path).expect("upgrade");
        let backup = with_suffix(&path, ".bak");
        assert_eq!(
            outcome,
            UpgradeOutcome::Upgraded {
                from,
                to: CURRENT_FORMAT_VERSION,
                backup: backup.clone()
            }
        );
        assert_eq!(fs::read(&backup).expect("read backup"), original);
        let (state, version) = load_versioned(&path).expect("load upgraded");
        assert_eq!(version, CURRENT_FORMAT_VERSION);
        assert_eq!(state, fixture_state(from));
        assert_eq!(load(&backup).expect("backup still loads"), state);

        let again = upgrade_in_place(&path).expect("second upgrade");
        assert_eq!(
            again,
            UpgradeOutcome::AlreadyCurrent {
                version: CURRENT_FORMAT_VERSION
            }
        );
        assert!(!control_file::temp_path(&path).exists());
    }
}

#[test]
fn current_fixture_needs_no_upgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("safekeeper.control");
    let original = fs::read(fixture_path(CURRENT_FORMAT_VERSION)).expect("read fixture");
    fs::write(&path, &original).expect("copy fixture");
    assert_eq!(
        upgrade_in_place(&path).expect("upgrade"),
        UpgradeOutcome::AlreadyCurrent {
            version: CURRENT_FORMAT_VERSION
        }
    );
    assert_eq!(fs::read(&path).expect("read"), original, "not rewritten");
    assert!(!with_suffix(&path, ".bak").exists());
}
