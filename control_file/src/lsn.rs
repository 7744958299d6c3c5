//! Typed WAL positions ([`Lsn`]) and WAL segment arithmetic.
//!
//! Owns: the textual form of an LSN (`X/X`, uppercase hex, as PostgreSQL prints it), its parsing, and
//! the mapping between LSNs and segment numbers for a given `wal_segment_size`.
//!
//! Invariants: every function taking a `seg_size` expects a valid segment size
//! ([`is_valid_segment_size`]: a power of two from 1 MiB to 1 GiB); callers validate sizes that come
//! from outside (the server, a control file) before doing segment math. Parsing never panics.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// WAL page size of PostgreSQL builds we follow.
pub const XLOG_BLCKSZ: u64 = 8192;

/// Smallest WAL segment size PostgreSQL accepts (`initdb --wal-segsize=1`).
pub const MIN_SEGMENT_SIZE: u32 = 1 << 20;
/// Largest WAL segment size PostgreSQL accepts (`initdb --wal-segsize=1024`).
pub const MAX_SEGMENT_SIZE: u32 = 1 << 30;

/// True when `seg_size` is a power of two between 1 MiB and 1 GiB inclusive.
pub fn is_valid_segment_size(seg_size: u32) -> bool {
    seg_size.is_power_of_two() && (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&seg_size)
}

/// A position in the WAL stream: a byte offset from the start of WAL history.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`, which PostgreSQL uses for "no position".
    pub const INVALID: Lsn = Lsn(0);
    /// The largest representable position.
    pub const MAX: Lsn = Lsn(u64::MAX);

    /// Number of the segment holding the byte at this LSN.
    pub fn segment_number(self, seg_size: u32) -> u64 {
        debug_assert!(
            is_valid_segment_size(seg_size),
            "bad segment size {seg_size}"
        );
        self.0 / u64::from(seg_size)
    }

    /// Bytes from the start of its segment to this LSN.
    pub fn segment_offset(self, seg_size: u32) -> u64 {
        debug_assert!(
            is_valid_segment_size(seg_size),
            "bad segment size {seg_size}"
        );
        self.0 % u64::from(seg_size)
    }

    /// Start of the segment holding this LSN (the LSN rounded down to a segment boundary).
    pub fn segment_start(self, seg_size: u32) -> Lsn {
        Lsn(self.0 - self.segment_offset(seg_size))
    }

    /// True when this LSN is exactly the first byte of a segment (a segment boundary).
    pub fn is_segment_start(self, seg_size: u32) -> bool {
        self.segment_offset(seg_size) == 0
    }

    /// Bytes from the start of its WAL page to this LSN.
    pub fn block_offset(self) -> u64 {
        self.0 % XLOG_BLCKSZ
    }

    /// Start LSN of segment `segno`, or `None` when it is not representable.
    pub fn checked_from_segment(segno: u64, seg_size: u32) -> Option<Lsn> {
        debug_assert!(
            is_valid_segment_size(seg_size),
            "bad segment size {seg_size}"
        );
        segno.checked_mul(u64::from(seg_size)).map(Lsn)
    }

    /// Start LSN of segment `segno`.
    ///
    /// # Panics
    /// When `segno * seg_size` overflows `u64` (no such segment exists); use
    /// [`Lsn::checked_from_segment`] for untrusted numbers.
    pub fn from_segment(segno: u64, seg_size: u32) -> Lsn {
        match Lsn::checked_from_segment(segno, seg_size) {
            Some(lsn) => lsn,
            None => panic!("segment {segno} of size {seg_size} is beyond the end of the WAL space"),
        }
    }

    /// `self - other` in bytes, or `None` when `other` is ahead of `self`.
    pub fn checked_sub(self, other: Lsn) -> Option<u64> {
        self.0.checked_sub(other.0)
    }

    /// `self + bytes`, or `None` on overflow.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid LSN {input:?}: expected two hexadecimal numbers of 1 to 8 digits separated by '/', like 16/B374D848"
)]
pub struct LsnParseError {
    /// The rejected input.
    pub input: String,
}

/// Parses 1..=8 ASCII hex digits (no sign, no prefix, no whitespace).
fn parse_hex_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Accepts `HI/LO` in either case, each part 1 to 8 hex digits, as printed by PostgreSQL.
    fn from_str(s: &str) -> Result<Lsn, LsnParseError> {
        let err = || LsnParseError {
            input: s.to_owned(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = parse_hex_u32(hi).ok_or_else(err)?;
        let lo = parse_hex_u32(lo).ok_or_else(err)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl std::ops::Add<u64> for Lsn {
    type Output = Lsn;

    /// # Panics
    /// On overflow past [`Lsn::MAX`], in every build profile.
    fn add(self, bytes: u64) -> Lsn {
        match self.checked_add(bytes) {
            Some(lsn) => lsn,
            None => panic!("LSN overflow: {self} + {bytes}"),
        }
    }
}

impl std::ops::AddAssign<u64> for Lsn {
    fn add_assign(&mut self, bytes: u64) {
        *self = *self + bytes;
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Lsn {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> u64 {
        lsn.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn::MAX.to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parse_accepts_and_rejects() {
        assert_eq!("16/b374d848".parse(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("0/0".parse(), Ok(Lsn(0)));
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "1/2/3",
            "+1/0",
            "1/-0",
            " 1/0",
            "123456789/0",
            "g/0",
            "1.0",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert!(err.to_string().contains("invalid LSN"), "{bad}: {err}");
        }
    }

    #[test]
    fn segment_sizes() {
        assert!(is_valid_segment_size(16 << 20));
        assert!(is_valid_segment_size(1 << 20));
        assert!(is_valid_segment_size(1 << 30));
        assert!(!is_valid_segment_size(1 << 19));
        assert!(!is_valid_segment_size(1 << 31));
        assert!(!is_valid_segment_size(0));
        assert!(!is_valid_segment_size(3 << 20));
    }
}
