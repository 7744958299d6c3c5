//! Every error kind of load and save: the right variant, naming the path, on one line.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{simple_state, v4_fixture_state};
use control_file::format::{self, CURRENT_FORMAT_VERSION, current, v1};
use control_file::{ControlFileError, load, load_versioned, save, temp_path};

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("safekeeper.control");
    (dir, path)
}

/// Loads `bytes` from a file and checks the error's Display is one line naming the file.
fn load_bytes(path: &Path, bytes: &[u8]) -> ControlFileError {
    fs::write(path, bytes).expect("write test file");
    let err = load(path).expect_err("load must fail");
    check_message(&err, path);
    err
}

fn check_message(err: &ControlFileError, path: &Path) {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(!msg.contains('\n'), "{msg:?}");
    assert_eq!(err.path(), path);
}

/// A payload of the newest format.
fn current_payload() -> Vec<u8> {
    format::encode_payload(&current::to_wire(&v4_fixture_state())).expect("encode")
}

#[test]
fn not_found() {
    let (_dir, path) = setup();
    let err = load(&path).expect_err("missing");
    check_message(&err, &path);
    assert!(err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains("does not exist"));
}

#[test]
fn empty() {
    let (_dir, path) = setup();
    let err = load_bytes(&path, b"");
    assert!(matches!(err, ControlFileError::Empty { .. }), "{err:?}");
}

#[test]
fn truncated() {
    let (_dir, path) = setup();
    let good = format::encode_file(&simple_state(1)).expect("encode");
    for len in [1, 3, 4, 11, 12, 20, good.len() - 4, good.len() - 1] {
        let err = load_bytes(&path, &good[..len]);
        match err {
            ControlFileError::Truncated {
                expected, actual, ..
            } => {
                assert_eq!(actual, len as u64);
                assert!(expected > actual);
            }
            other => panic!("len {len}: {other:?}"),
        }
    }
}

#[test]
fn trailing_bytes() {
    let (_dir, path) = setup();
    let mut bytes = format::encode_file(&simple_state(1)).expect("encode");
    bytes.push(0);
    let err = load_bytes(&path, &bytes);
    assert!(
        matches!(err, ControlFileError::TrailingBytes { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("1 trailing bytes"), "{err}");
}

#[test]
fn bad_magic() {
    let (_dir, path) = setup();
    for bytes in [
        &b"not a control file at all"[..],
        b"{\"term\": 1}",
        b"\x7fELF\x02\x01\x01\0\0\0\0\0",
    ] {
        let err = load_bytes(&path, bytes);
        match &err {
            ControlFileError::BadMagic {
                found, expected, ..
            } => {
                assert_eq!(
                    *found,
                    u32::from_le_bytes(bytes[..4].try_into().expect("4"))
                );
                assert_eq!(*expected, format::MAGIC);
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("not a safekeeper control file"), "{msg}");
        assert!(msg.contains("(expected 0x66634b53)"), "{msg}");
    }
}

#[test]
fn bad_checksum() {
    let (_dir, path) = setup();
    let mut bytes = format::encode_file(&simple_state(1)).expect("encode");
    bytes[20] ^= 0x40;
    let err = load_bytes(&path, &bytes);
    assert!(
        matches!(err, ControlFileError::BadChecksum { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("checksum mismatch"), "{err}");

    // The checksum covers the header: a corrupted version is corruption, not a "newer" file.
    let mut bytes = format::encode_file(&simple_state(1)).expect("encode");
    bytes[4] ^= 0x01; // version 4 -> 5
    let err = load_bytes(&path, &bytes);
    assert!(
        matches!(err, ControlFileError::BadChecksum { .. }),
        "{err:?}"
    );
}

#[test]
fn newer_format() {
    let (_dir, path) = setup();
    let newer = CURRENT_FORMAT_VERSION + 1;
    let err = load_bytes(&path, &format::frame(newer, &current_payload()));
    match &err {
        ControlFileError::NewerFormat {
            found, supported, ..
        } => assert_eq!((*found, *supported), (newer, CURRENT_FORMAT_VERSION)),
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains(&format!(
            "written by a newer safekeeper (format {newer} > {CURRENT_FORMAT_VERSION})"
        )),
        "{err}"
    );
    let err = load_bytes(&path, &format::frame(u32::MAX, b""));
    assert!(
        matches!(err, ControlFileError::NewerFormat { .. }),
        "{err:?}"
    );
}

#[test]
fn unknown_old_format() {
    let (_dir, path) = setup();
    let err = load_bytes(&path, &format::frame(0, &current_payload()));
    assert!(
        matches!(err, ControlFileError::UnknownFormat { found: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn decode_errors() {
    let (_dir, path) = setup();
    let payload = current_payload();
    let mut longer = payload.clone();
    longer.push(7);
    let v1_payload = format::encode_payload(&common::v1_fixture_wire()).expect("encode v1");
    let v2_payload = format::encode_payload(&common::v2_fixture_wire()).expect("encode v2");
    let mut bad_status = v1_payload.clone();
    // The last field of v1 is the history list; its status sits 16 bytes before the end
    // (u32 status, u64 size, u32 crc): make it variant 9.
    let at = bad_status.len() - 16;
    bad_status[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
    let v3_payload = format::encode_payload(&common::v3_fixture_wire()).expect("encode v3");
    let cases: Vec<(u32, Vec<u8>, &str)> = vec![
        (4, b"garbage".to_vec(), ""),
        (4, longer, "unused bytes"),
        (4, payload[..payload.len() - 1].to_vec(), ""), // half of the trailing u16
        (4, v3_payload.clone(), ""), // a v3 payload labelled v4 lacks 8 bytes per partial
        (4, v2_payload.clone(), ""), // a v2 payload labelled v4 is too short
        (3, b"garbage".to_vec(), ""),
        (3, v3_payload[..v3_payload.len() - 1].to_vec(), ""), // half of the trailing u16
        (3, payload.clone(), ""), // a v4 payload labelled v3: start_lsn read as a status
        (3, v2_payload.clone(), ""), // a v2 payload labelled v3 is 2 bytes too short
        (3, v1_payload.clone(), ""), // a v1 payload labelled v3 is too short
        (2, b"garbage".to_vec(), ""),
        (2, v2_payload[..v2_payload.len() - 3].to_vec(), ""),
        (2, v1_payload.clone(), ""), // a v1 payload labelled v2 is too short
        (2, v3_payload.clone(), "unused bytes"), // a v3 payload labelled v2 has 2 extra bytes
        (1, v2_payload.clone(), "unused bytes"), // a v2 payload labelled v1 has 16 extra bytes
        (1, v3_payload.clone(), "unused bytes"), // a v3 payload labelled v1 has 18 extra bytes
        (1, bad_status, ""),
    ];
    for (version, payload, needle) in cases {
        let err = load_bytes(&path, &format::frame(version, &payload));
        match &err {
            ControlFileError::Decode {
                version: v, reason, ..
            } => {
                assert_eq!(*v, version);
                assert!(reason.contains(needle), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Sanity: the untouched payloads decode under their own versions.
    for (version, payload) in [
        (1, &v1_payload),
        (2, &v2_payload),
        (3, &v3_payload),
        (4, &payload),
    ] {
        fs::write(&path, format::frame(version, payload)).expect("write");
        assert_eq!(load_versioned(&path).expect("loads").1, version);
    }
    let _: v1::ClusterState = format::decode_payload(&v1_payload).expect("decode");
}

#[test]
fn invalid_on_load() {
    let (_dir, path) = setup();
    let mut wire = current::to_wire(&simple_state(1));
    wire.commit_lsn = wire.flush_lsn + 1;
    let payload = format::encode_payload(&wire).expect("encode");
    let err = load_bytes(&path, &format::frame(CURRENT_FORMAT_VERSION, &payload));
    match &err {
        ControlFileError::Invalid { reason, .. } => {
            assert!(reason.contains("commit_lsn"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    let mut wire = current::to_wire(&simple_state(1));
    wire.wal_segment_size = 3 << 20;
    let payload = format::encode_payload(&wire).expect("encode");
    let err = load_bytes(&path, &format::frame(CURRENT_FORMAT_VERSION, &payload));
    assert!(matches!(err, ControlFileError::Invalid { .. }), "{err:?}");

    // An older format is upgraded first, then validated like any other.
    let mut v2 = common::v2_fixture_wire();
    v2.commit_lsn = v2.flush_lsn + 1;
    let payload = format::encode_payload(&v2).expect("encode v2");
    let err = load_bytes(&path, &format::frame(2, &payload));
    match &err {
        ControlFileError::Invalid { reason, .. } => {
            assert!(reason.contains("commit_lsn"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_on_save_leaves_file_untouched() {
    let (_dir, path) = setup();
    let good = simple_state(1);
    save(&path, &good).expect("save");
    let before = fs::read(&path).expect("read");
    let mut bad = good.clone();
    bad.term = 7; // history says 1
    let err = save(&path, &bad).expect_err("invalid state");
    check_message(&err, &path);
    assert!(matches!(err, ControlFileError::Invalid { .. }), "{err:?}");
    assert_eq!(fs::read(&path).expect("read"), before);
    assert!(!temp_path(&path).exists());
}

#[test]
fn io_errors() {
    let (dir, path) = setup();
    // A directory where the file should be.
    fs::create_dir(&path).expect("mkdir");
    let err = load(&path).expect_err("directory");
    check_message(&err, &path);
    assert!(
        matches!(err, ControlFileError::Io { op: "read", .. }),
        "{err:?}"
    );

    // Saving into a directory that does not exist.
    let missing = dir.path().join("no-such-dir").join("safekeeper.control");
    let err = save(&missing, &simple_state(1)).expect_err("no dir");
    assert!(matches!(err, ControlFileError::Io { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(!msg.contains('\n'));
}
