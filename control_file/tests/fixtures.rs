//! Golden fixtures: every released format version must keep loading and upgrading, and the frozen
//! encoders must keep producing exactly the committed bytes.
//!
//! Regenerate (only ever needed for the newest, unreleased version) with
//! `cargo test -p control_file --test fixtures -- --ignored regenerate_fixtures`.

mod common;

use std::fs;

use common::{fixture_path, v1_fixture_upgraded, v1_fixture_wire, v2_fixture_state};
use control_file::format::{self, CURRENT_FORMAT_VERSION, v1};
use control_file::{UpgradeOutcome, load, load_versioned, upgrade_in_place, with_suffix};

fn v1_bytes() -> Vec<u8> {
    let payload = format::encode_payload(&v1_fixture_wire()).expect("encode v1");
    format::frame(1, &payload)
}

fn v2_bytes() -> Vec<u8> {
    format::encode_file(&v2_fixture_state()).expect("encode v2")
}

#[test]
#[ignore = "rewrites the committed golden fixtures"]
fn regenerate_fixtures() {
    control_file::write_durably(&fixture_path(1), &v1_bytes()).expect("write v1 fixture");
    control_file::write_durably(&fixture_path(2), &v2_bytes()).expect("write v2 fixture");
}

#[test]
fn every_version_has_a_fixture() {
    for version in 1..=CURRENT_FORMAT_VERSION {
        let path = fixture_path(version);
        let (_, found) = load_versioned(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found, version, "{}", path.display());
    }
}

#[test]
fn v1_fixture_loads_and_upgrades() {
    let (state, version) = load_versioned(&fixture_path(1)).expect("load v1 fixture");
    assert_eq!(version, 1);
    assert_eq!(state, v1_fixture_upgraded());
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
    let on_disk = fs::read(&path).expect("read v2 fixture");
    assert_eq!(
        on_disk,
        v2_bytes(),
        "the v2 encoder no longer reproduces the v2 fixture"
    );
}

#[test]
fn fixture_header_layout() {
    let bytes = fs::read(fixture_path(1)).expect("read v1 fixture");
    assert_eq!(&bytes[0..4], b"SKcf");
    assert_eq!(bytes[4..8], 1u32.to_le_bytes());
    let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    assert_eq!(bytes.len(), 12 + len + 4);
    let crc = u32::from_le_bytes(bytes[12 + len..].try_into().expect("4 bytes"));
    assert_eq!(crc, crc32c::crc32c(&bytes[..12 + len]));
    // Full segments are ranges: the whole file stays small.
    assert!(bytes.len() < 512, "{} bytes", bytes.len());
}

#[test]
fn upgrade_in_place_keeps_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("safekeeper.control");
    let original = fs::read(fixture_path(1)).expect("read v1 fixture");
    fs::write(&path, &original).expect("copy fixture");

    let outcome = upgrade_in_place(&path).expect("upgrade");
    let backup = with_suffix(&path, ".bak");
    assert_eq!(
        outcome,
        UpgradeOutcome::Upgraded {
            from: 1,
            to: CURRENT_FORMAT_VERSION,
            backup: backup.clone()
        }
    );
    assert_eq!(fs::read(&backup).expect("read backup"), original);
    let (state, version) = load_versioned(&path).expect("load upgraded");
    assert_eq!(version, CURRENT_FORMAT_VERSION);
    assert_eq!(state, v1_fixture_upgraded());
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
