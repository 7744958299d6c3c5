//! Corruption detection on real saved files: every single flipped bit, every truncation, and random
//! garbage are rejected (never accepted, never a panic).

mod common;

use std::fs;

use common::{fixture_path, v4_fixture_state};
use control_file::{ControlFileError, format, load, save};
use proptest::prelude::*;

#[test]
fn every_single_bit_flip_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = dir.path().join("safekeeper.control");
    save(&original, &v4_fixture_state()).expect("save");
    let bytes = fs::read(&original).expect("read");
    assert!(load(&original).is_ok());

    let corrupt = dir.path().join("corrupt.control");
    let mut checked = 0;
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        fs::write(&corrupt, &flipped).expect("write");
        match load(&corrupt) {
            Ok(state) => panic!("bit {bit} flipped and still accepted: {state:?}"),
            Err(
                ControlFileError::BadMagic { .. }
                | ControlFileError::BadChecksum { .. }
                | ControlFileError::Truncated { .. }
                | ControlFileError::TrailingBytes { .. },
            ) => checked += 1,
            Err(other) => panic!("bit {bit}: unexpected error kind {other:?}"),
        }
    }
    assert_eq!(checked, bytes.len() * 8);
}

#[test]
fn every_bit_flip_of_every_fixture_is_rejected() {
    for version in 1..=format::CURRENT_FORMAT_VERSION {
        let path = fixture_path(version);
        let bytes = fs::read(&path).expect("read fixture");
        assert!(format::decode_file(&path, &bytes).is_ok(), "v{version}");
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                format::decode_file(&path, &flipped).is_err(),
                "v{version}: bit {bit} accepted"
            );
        }
    }
}

#[test]
fn every_truncation_of_every_fixture_is_rejected() {
    for version in 1..=format::CURRENT_FORMAT_VERSION {
        let path = fixture_path(version);
        let bytes = fs::read(&path).expect("read fixture");
        for len in 0..bytes.len() {
            match format::decode_file(&path, &bytes[..len]) {
                Err(ControlFileError::Empty { .. }) => assert_eq!(len, 0),
                Err(ControlFileError::Truncated { actual, .. }) => assert_eq!(actual, len as u64),
                other => panic!("v{version} truncated to {len}: {other:?}"),
            }
        }
    }
}

#[test]
fn every_truncation_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("safekeeper.control");
    save(&path, &v4_fixture_state()).expect("save");
    let bytes = fs::read(&path).expect("read");
    for len in 0..bytes.len() {
        fs::write(&path, &bytes[..len]).expect("write");
        match load(&path) {
            Err(ControlFileError::Empty { .. }) => assert_eq!(len, 0),
            Err(ControlFileError::Truncated { actual, .. }) => assert_eq!(actual, len as u64),
            other => panic!("truncated to {len}: {other:?}"),
        }
    }
}

proptest! {
    #[test]
    fn garbage_never_loads(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let path = std::path::Path::new("garbage.control");
        prop_assert!(format::decode_file(path, &bytes).is_err());
    }

    /// Garbage behind a correct frame (valid magic, length and checksum) is rejected by the decoder
    /// or the invariants, never with a panic.
    #[test]
    fn framed_garbage_never_panics(
        version in 1u32..=format::CURRENT_FORMAT_VERSION,
        payload in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let path = std::path::Path::new("framed.control");
        if let Ok((state, v)) = format::decode_file(path, &format::frame(version, &payload)) {
            prop_assert_eq!(v, version);
            prop_assert!(state.validate().is_ok());
        }
    }

    /// Random byte overwrites of a real file (several bytes at once) are rejected, for the fixture
    /// of every format version.
    #[test]
    fn random_overwrites_are_rejected(
        version in 1u32..=format::CURRENT_FORMAT_VERSION,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
    ) {
        let path = fixture_path(version);
        let mut bytes = fs::read(&path).expect("read fixture");
        for (index, xor) in edits {
            let i = index.index(bytes.len());
            bytes[i] ^= xor;
        }
        // Several edits can cancel out exactly; only a changed file must be rejected.
        let original = fs::read(&path).expect("read fixture");
        if bytes != original {
            prop_assert!(format::decode_file(&path, &bytes).is_err());
        }
    }
}
