//! The bytes of a control file: a version-independent frame around a versioned bincode payload.
//!
//! Owns the frame ([`frame`], [`unframe`]), the one bincode configuration ([`CONFIG`]), the frozen
//! payload structs of every released version ([`v1`], [`v2`], [`v3`], [`v4`]), the upgrade chain
//! between them, and the conversion of the newest one to and from [`ClusterState`] ([`current`]).
//!
//! ```text
//! offset  size  field
//! 0       4     magic            b"SKcf" (u32 LE 0x6663_4B53)
//! 4       4     format version   u32 LE, 1..=CURRENT_FORMAT_VERSION
//! 8       4     payload length   u32 LE, N
//! 12      N     payload          bincode 2 of `vN::ClusterState` with [`CONFIG`]
//! 12+N    4     crc32c           u32 LE, over bytes [0, 12+N)
//! ```
//!
//! Invariants:
//! - The frame itself is frozen forever; versions differ only in the payload. So a file from a newer
//!   safekeeper is still recognised (magic, lengths and checksum verify) and reported as
//!   [`ControlFileError::NewerFormat`] rather than as corruption.
//! - Checks run in a fixed order: empty, magic, header length, total length, checksum, version,
//!   payload decode (which must consume the payload exactly), upgrade, [`ClusterState::validate`].
//!   The checksum covers the header, so any single flipped bit anywhere is rejected.
//! - [`CONFIG`] is the one and only bincode configuration. Bincode stores neither field names nor
//!   types: the field ORDER and types of the frozen structs in [`v1`], [`v2`], [`v3`], ... are the format.
//!   Serde attributes that need self-describing formats (`flatten`, `untagged`, `skip_serializing_if`)
//!   must never be used in them.

pub mod current;
pub mod v1;
pub mod v2;
pub mod v3;
pub mod v4;

use std::path::Path;

use bincode::config::{Configuration, Fixint, Limit, LittleEndian};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ControlFileError, one_line};
use crate::state::ClusterState;
pub use current::CURRENT_FORMAT_VERSION;

/// First four bytes of every control file.
pub const MAGIC: u32 = u32::from_le_bytes(*b"SKcf");
/// Magic, version and payload length.
pub const HEADER_LEN: usize = 12;
/// The trailing crc32c.
pub const TRAILER_LEN: usize = 4;
/// Largest payload we write or accept (also bincode's allocation limit while decoding).
pub const MAX_PAYLOAD_LEN: usize = 64 << 20;

/// The bincode configuration of every payload: standard, little endian, fixed-width integers.
pub const CONFIG: Configuration<LittleEndian, Fixint, Limit<MAX_PAYLOAD_LEN>> =
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_PAYLOAD_LEN>();

/// Encodes a payload struct of any version with [`CONFIG`].
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let bytes = bincode::serde::encode_to_vec(value, CONFIG).map_err(one_line)?;
    if bytes.len() > MAX_PAYLOAD_LEN {
        return Err(format!(
            "payload of {} bytes exceeds the {MAX_PAYLOAD_LEN} byte limit",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Decodes a payload struct with [`CONFIG`]; every byte of `payload` must be consumed.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    let (value, used) = bincode::serde::decode_from_slice(payload, CONFIG).map_err(one_line)?;
    if used != payload.len() {
        return Err(format!(
            "{} unused bytes after the payload",
            payload.len() - used
        ));
    }
    Ok(value)
}

/// Wraps a payload in the frame. The payload must be at most [`MAX_PAYLOAD_LEN`] bytes.
pub fn frame(version: u32, payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() <= MAX_PAYLOAD_LEN);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(b)
}

/// Total file length announced by a header, when `bytes` holds a full header with the right magic.
pub(crate) fn declared_len(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < HEADER_LEN || u32_at(bytes, 0) != MAGIC {
        return None;
    }
    Some((HEADER_LEN + TRAILER_LEN) as u64 + u64::from(u32_at(bytes, 8)))
}

/// Checks the frame (everything but the version) and returns `(version, payload)`.
pub fn unframe<'a>(path: &Path, bytes: &'a [u8]) -> Result<(u32, &'a [u8]), ControlFileError> {
    let path = path.to_owned();
    let actual = bytes.len() as u64;
    if bytes.is_empty() {
        return Err(ControlFileError::Empty { path });
    }
    if bytes.len() >= 4 && u32_at(bytes, 0) != MAGIC {
        return Err(ControlFileError::BadMagic {
            path,
            found: u32_at(bytes, 0),
            expected: MAGIC,
        });
    }
    let Some(expected) = declared_len(bytes) else {
        let expected = (HEADER_LEN + TRAILER_LEN) as u64;
        return Err(ControlFileError::Truncated {
            path,
            expected,
            actual,
        });
    };
    if actual < expected {
        return Err(ControlFileError::Truncated {
            path,
            expected,
            actual,
        });
    }
    if actual > expected {
        return Err(ControlFileError::TrailingBytes {
            path,
            expected,
            actual,
        });
    }
    let body_len = bytes.len() - TRAILER_LEN;
    let stored = u32_at(bytes, body_len);
    let computed = crc32c::crc32c(&bytes[..body_len]);
    if stored != computed {
        return Err(ControlFileError::BadChecksum {
            path,
            expected: stored,
            actual: computed,
        });
    }
    Ok((u32_at(bytes, 4), &bytes[HEADER_LEN..body_len]))
}

/// Decodes a payload of format `version` (1..=[`CURRENT_FORMAT_VERSION`]) and upgrades it step by
/// step to the newest wire struct.
fn decode_and_upgrade(version: u32, payload: &[u8]) -> Result<current::Wire, String> {
    debug_assert!((1..=CURRENT_FORMAT_VERSION).contains(&version));
    // The upgrade chain: each step takes the previous step's result, or decodes its own version.
    let v1 = match version {
        1 => Some(decode_payload::<v1::ClusterState>(payload)?),
        _ => None,
    };
    let v2 = match v1 {
        Some(s) => Some(s.upgrade()),
        None if version == 2 => Some(decode_payload::<v2::ClusterState>(payload)?),
        None => None,
    };
    let v3 = match v2 {
        Some(s) => Some(s.upgrade()),
        None if version == 3 => Some(decode_payload::<v3::ClusterState>(payload)?),
        None => None,
    };
    let v4 = match v3 {
        Some(s) => s.upgrade(),
        None => decode_payload::<v4::ClusterState>(payload)?,
    };
    Ok(v4)
}

/// Verifies and decodes a whole file: `(state in the newest format, version found on disk)`.
/// `path` is only used in errors.
pub fn decode_file(path: &Path, bytes: &[u8]) -> Result<(ClusterState, u32), ControlFileError> {
    let (version, payload) = unframe(path, bytes)?;
    if version == 0 {
        return Err(ControlFileError::UnknownFormat {
            path: path.to_owned(),
            found: version,
        });
    }
    if version > CURRENT_FORMAT_VERSION {
        return Err(ControlFileError::NewerFormat {
            path: path.to_owned(),
            found: version,
            supported: CURRENT_FORMAT_VERSION,
        });
    }
    let wire = decode_and_upgrade(version, payload).map_err(|reason| ControlFileError::Decode {
        path: path.to_owned(),
        version,
        reason,
    })?;
    let state = current::from_wire(wire);
    state
        .validate()
        .map_err(|reason| ControlFileError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
    Ok((state, version))
}

/// Encodes `state` as a whole file in the newest format (without validating it).
pub fn encode_file(state: &ClusterState) -> Result<Vec<u8>, String> {
    let payload = encode_payload(&current::to_wire(state))?;
    Ok(frame(CURRENT_FORMAT_VERSION, &payload))
}
