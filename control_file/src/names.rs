//! Names of WAL objects, locally and in remote storage (docs/architecture.md, "In object storage").
//!
//! Owns the exact spelling of:
//! - full segments: `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline, then `segno / (2^32 / seg_size)` and
//!   `segno % (2^32 / seg_size)`, 8 uppercase hex digits each), as in `pg_wal`;
//! - history files: `TTTTTTTT.history`;
//! - partial segment pieces (docs/architecture.md, "In object storage"), each holding the
//!   WAL `[START, COMMITLSN)` of one term of one safekeeper:
//!   - a *base* piece, `START` = segment start: `<SEGMENT>_<COMMITLSN>_<TERM>_sk<ID>.partial`;
//!   - an *increment* piece, `START` strictly inside the segment:
//!     `<SEGMENT>_<COMMITLSN>_<TERM>_sk<ID>_<START>.delta`;
//!
//!   `COMMITLSN`, `TERM` and `START` as 16 uppercase hex digits, `ID` in decimal. The *version*
//!   `[segment start, COMMITLSN)` that restore serves is always shown under the base spelling
//!   ([`PartialName::as_version`]), whichever pieces store it.
//!
//! Invariants: formatting and parsing are exact inverses, and parsing is strict (uppercase hex only, no
//! leading zeros in `ID`, no timeline/term/sk id 0, an increment never starts at the segment start),
//! so every object has exactly one name. A parsed piece name always has `commit_lsn` in
//! `(segment start, segment end]` and `start_lsn` in `[segment start, commit_lsn)`, so it holds 1 to
//! `seg_size` bytes. Parsing never panics; formatting expects a valid segment size.

use serde::{Deserialize, Serialize};

use crate::lsn::{Lsn, is_valid_segment_size};

/// A PostgreSQL timeline id (`TimeLineID`, starts at 1).
pub type TimelineId = u32;

/// Why a file name is not the name of a WAL object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL object name {name:?}: {reason}")]
pub struct NameError {
    /// The rejected name.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

fn name_error(name: &str, reason: impl Into<String>) -> NameError {
    NameError {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

const SEGMENT_NAME_LEN: usize = 24;
const HISTORY_SUFFIX: &str = ".history";
const PARTIAL_SUFFIX: &str = ".partial";
const DELTA_SUFFIX: &str = ".delta";

/// Segments per 4 GiB "xlogid" for this segment size (`XLogSegmentsPerXLogId`).
fn segments_per_xlog_id(seg_size: u32) -> u64 {
    assert!(
        is_valid_segment_size(seg_size),
        "invalid WAL segment size {seg_size}"
    );
    0x1_0000_0000 / u64::from(seg_size)
}

/// The largest segment number that exists for this segment size.
pub fn max_segno(seg_size: u32) -> u64 {
    assert!(
        is_valid_segment_size(seg_size),
        "invalid WAL segment size {seg_size}"
    );
    u64::MAX / u64::from(seg_size)
}

/// Parses exactly `s.len()` uppercase hex digits; `None` for anything else.
fn parse_upper_hex(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn parse_timeline(name: &str, s: &str) -> Result<TimelineId, NameError> {
    match parse_upper_hex(s).map(u32::try_from) {
        Some(Ok(0)) => Err(name_error(name, "timeline 0 does not exist")),
        Some(Ok(tli)) if s.len() == 8 => Ok(tli),
        _ => Err(name_error(name, "timeline must be 8 uppercase hex digits")),
    }
}

fn check_seg_size(name: &str, seg_size: u32) -> Result<(), NameError> {
    if is_valid_segment_size(seg_size) {
        Ok(())
    } else {
        Err(name_error(
            name,
            format!("cannot parse with invalid WAL segment size {seg_size}"),
        ))
    }
}

/// Name of full segment `segno` of `timeline`, e.g. `000000010000000000000003`.
///
/// # Panics
/// When `seg_size` is not a valid segment size. `segno` must be at most [`max_segno`].
pub fn segment_file_name(timeline: TimelineId, segno: u64, seg_size: u32) -> String {
    let per = segments_per_xlog_id(seg_size);
    debug_assert!(
        segno <= max_segno(seg_size),
        "segment {segno} does not exist"
    );
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// Inverse of [`segment_file_name`]: `(timeline, segno)`.
pub fn parse_segment_file_name(name: &str, seg_size: u32) -> Result<(TimelineId, u64), NameError> {
    check_seg_size(name, seg_size)?;
    if name.len() != SEGMENT_NAME_LEN || !name.is_ascii() {
        return Err(name_error(
            name,
            "a segment name is 24 uppercase hex digits",
        ));
    }
    let timeline = parse_timeline(name, &name[0..8])?;
    let (Some(hi), Some(lo)) = (
        parse_upper_hex(&name[8..16]),
        parse_upper_hex(&name[16..24]),
    ) else {
        return Err(name_error(
            name,
            "a segment name is 24 uppercase hex digits",
        ));
    };
    let per = segments_per_xlog_id(seg_size);
    if lo >= per {
        return Err(name_error(
            name,
            format!(
                "segment part {lo:08X} is not below {per:X} (segments per 4 GiB at segment size {seg_size})"
            ),
        ));
    }
    Ok((timeline, hi * per + lo))
}

/// Name of the history file of `timeline`, e.g. `00000002.history`.
pub fn history_file_name(timeline: TimelineId) -> String {
    format!("{timeline:08X}{HISTORY_SUFFIX}")
}

/// Inverse of [`history_file_name`].
pub fn parse_history_file_name(name: &str) -> Result<TimelineId, NameError> {
    let Some(tli) = name.strip_suffix(HISTORY_SUFFIX) else {
        return Err(name_error(name, "a history file name ends in .history"));
    };
    parse_timeline(name, tli)
}

/// The identity of one partial segment piece: WAL `[start_lsn, commit_lsn)` of `timeline`, whose
/// last byte belongs to `term`, uploaded by safekeeper `sk_id`. A *base* piece starts at the
/// segment start (and is itself a whole version); an *increment* starts inside the segment and
/// extends a chain of pieces of the same (timeline, segno, term, sk_id).
///
/// Versions of one safekeeper's segment are ordered by `(term, commit_lsn)`; `start_lsn` only says
/// which bytes one object holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartialName {
    pub timeline: TimelineId,
    pub segno: u64,
    pub commit_lsn: Lsn,
    pub term: u64,
    pub sk_id: u64,
    /// First LSN held: the segment start for a base piece, inside the segment for an increment.
    pub start_lsn: Lsn,
}

impl PartialName {
    /// The base piece (= the version) `[segment start, commit_lsn)` of segment `segno`.
    ///
    /// # Panics
    /// When `seg_size` is not a valid segment size or `segno` is above [`max_segno`].
    pub fn base(
        timeline: TimelineId,
        segno: u64,
        commit_lsn: Lsn,
        term: u64,
        sk_id: u64,
        seg_size: u32,
    ) -> PartialName {
        PartialName {
            timeline,
            segno,
            commit_lsn,
            term,
            sk_id,
            start_lsn: Lsn::from_segment(segno, seg_size),
        }
    }

    /// The same name with `start_lsn` at the segment start: the logical version
    /// `[segment start, commit_lsn)` this piece ends, as listings and restore name it.
    ///
    /// # Panics
    /// When `seg_size` is not a valid segment size or `segno` is above [`max_segno`].
    pub fn as_version(&self, seg_size: u32) -> PartialName {
        PartialName {
            start_lsn: Lsn::from_segment(self.segno, seg_size),
            ..self.clone()
        }
    }

    /// First LSN of this piece's segment (`Lsn::MAX` for a segment number that does not exist).
    pub fn segment_start(&self, seg_size: u32) -> Lsn {
        Lsn::checked_from_segment(self.segno, seg_size).unwrap_or(Lsn::MAX)
    }

    /// True for a base piece: it starts at the segment start, so it is a whole version on its own.
    pub fn is_base(&self, seg_size: u32) -> bool {
        self.start_lsn == self.segment_start(seg_size)
    }

    /// WAL bytes this object holds: `commit_lsn - start_lsn` (0 if `commit_lsn` is below it).
    pub fn bytes(&self) -> u64 {
        self.commit_lsn.checked_sub(self.start_lsn).unwrap_or(0)
    }

    /// Offset of `commit_lsn` in its segment, `commit_lsn - segment start` (0 if below it): the
    /// length of the version this piece ends, whatever the piece itself holds ([`Self::bytes`]).
    pub fn commit_offset(&self, seg_size: u32) -> u64 {
        self.commit_lsn
            .checked_sub(self.segment_start(seg_size))
            .unwrap_or(0)
    }

    /// Offset of `start_lsn` in its segment (0 for a base, and if below the segment start).
    pub fn start_offset(&self, seg_size: u32) -> u64 {
        self.start_lsn
            .checked_sub(self.segment_start(seg_size))
            .unwrap_or(0)
    }

    /// A base piece: `SEGMENT_COMMITLSN_TERM_skID.partial`, e.g.
    /// `000000010000000000000003_0000000003A1B2C8_0000000000000001_sk1.partial`; an increment:
    /// `SEGMENT_COMMITLSN_TERM_skID_START.delta`, e.g.
    /// `000000010000000000000003_0000000003A1B2C8_0000000000000001_sk1_0000000003400000.delta`.
    ///
    /// # Panics
    /// When `seg_size` is not a valid segment size.
    pub fn to_file_name(&self, seg_size: u32) -> String {
        let stem = format!(
            "{}_{:016X}_{:016X}_sk{}",
            segment_file_name(self.timeline, self.segno, seg_size),
            self.commit_lsn.0,
            self.term,
            self.sk_id
        );
        if self.is_base(seg_size) {
            format!("{stem}{PARTIAL_SUFFIX}")
        } else {
            format!("{stem}_{:016X}{DELTA_SUFFIX}", self.start_lsn.0)
        }
    }

    /// Inverse of [`PartialName::to_file_name`], for both spellings. Rejects a `commit_lsn` outside
    /// `(segment start, segment end]`, an increment start outside `(segment start, commit_lsn)`,
    /// term 0 and sk id 0.
    pub fn parse(name: &str, seg_size: u32) -> Result<PartialName, NameError> {
        check_seg_size(name, seg_size)?;
        let (stem, is_delta) = if let Some(stem) = name.strip_suffix(PARTIAL_SUFFIX) {
            (stem, false)
        } else if let Some(stem) = name.strip_suffix(DELTA_SUFFIX) {
            (stem, true)
        } else {
            return Err(name_error(
                name,
                "a partial segment piece name ends in .partial or .delta",
            ));
        };
        let parts: Vec<&str> = stem.split('_').collect();
        let (segment, commit, term, sk, start) = match (parts.as_slice(), is_delta) {
            (&[segment, commit, term, sk], false) => (segment, commit, term, sk, None),
            (&[segment, commit, term, sk, start], true) => (segment, commit, term, sk, Some(start)),
            (_, false) => {
                return Err(name_error(
                    name,
                    "expected SEGMENT_COMMITLSN_TERM_skID.partial",
                ));
            }
            (_, true) => {
                return Err(name_error(
                    name,
                    "expected SEGMENT_COMMITLSN_TERM_skID_STARTLSN.delta",
                ));
            }
        };
        let (timeline, segno) =
            parse_segment_file_name(segment, seg_size).map_err(|e| name_error(name, e.reason))?;
        let hex16 = |s: &str, what: &str| match parse_upper_hex(s) {
            Some(v) if s.len() == 16 => Ok(v),
            _ => Err(name_error(
                name,
                format!("{what} must be 16 uppercase hex digits"),
            )),
        };
        let commit_lsn = Lsn(hex16(commit, "commit LSN")?);
        let term = hex16(term, "term")?;
        if term == 0 {
            return Err(name_error(name, "term 0 does not exist"));
        }
        let sk_id = parse_sk_id(sk).ok_or_else(|| {
            name_error(
                name,
                "safekeeper id must be 'sk' and a positive decimal number without leading zeros",
            )
        })?;
        let seg_start = Lsn::from_segment(segno, seg_size);
        let start_lsn = match start {
            Some(s) => Lsn(hex16(s, "start LSN")?),
            None => seg_start,
        };
        let partial = PartialName {
            timeline,
            segno,
            commit_lsn,
            term,
            sk_id,
            start_lsn,
        };
        let size = commit_lsn.checked_sub(seg_start);
        if !matches!(size, Some(s) if s >= 1 && s <= u64::from(seg_size)) {
            return Err(name_error(
                name,
                format!(
                    "commit LSN {commit_lsn} is not inside segment {segment} (start exclusive, end inclusive)"
                ),
            ));
        }
        if is_delta && !(seg_start < start_lsn && start_lsn < commit_lsn) {
            return Err(name_error(
                name,
                format!(
                    "start LSN {start_lsn} of an increment must be after the start of segment \
                     {segment} ({seg_start}; a piece starting there is a .partial) and before its \
                     commit LSN {commit_lsn}"
                ),
            ));
        }
        Ok(partial)
    }

    /// Name of the full segment this partial belongs to.
    pub fn segment_file_name(&self, seg_size: u32) -> String {
        segment_file_name(self.timeline, self.segno, seg_size)
    }
}

/// `sk` followed by a positive decimal number without leading zeros.
fn parse_sk_id(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("sk")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Any WAL object name found under `<root>/<cluster>/wal/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WalObjectName {
    Segment {
        timeline: TimelineId,
        segno: u64,
    },
    /// A partial segment piece: a base (`.partial`) or an increment (`.delta`).
    Partial(PartialName),
    History(TimelineId),
}

impl WalObjectName {
    /// Classifies and parses `name` (a file name, without directories).
    pub fn parse(name: &str, seg_size: u32) -> Result<WalObjectName, NameError> {
        if name.ends_with(PARTIAL_SUFFIX) || name.ends_with(DELTA_SUFFIX) {
            PartialName::parse(name, seg_size).map(WalObjectName::Partial)
        } else if name.ends_with(HISTORY_SUFFIX) {
            parse_history_file_name(name).map(WalObjectName::History)
        } else {
            parse_segment_file_name(name, seg_size)
                .map(|(timeline, segno)| WalObjectName::Segment { timeline, segno })
        }
    }

    /// The file name of this object.
    pub fn to_file_name(&self, seg_size: u32) -> String {
        match self {
            WalObjectName::Segment { timeline, segno } => {
                segment_file_name(*timeline, *segno, seg_size)
            }
            WalObjectName::Partial(p) => p.to_file_name(seg_size),
            WalObjectName::History(tli) => history_file_name(*tli),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG16: u32 = 16 << 20;

    #[test]
    fn examples_from_design() {
        assert_eq!(segment_file_name(1, 3, SEG16), "000000010000000000000003");
        assert_eq!(segment_file_name(1, 256, SEG16), "000000010000000100000000");
        assert_eq!(history_file_name(2), "00000002.history");
        let name = "000000010000000000000003_0000000003A1B2C8_0000000000000001_sk1.partial";
        let p = PartialName::parse(name, SEG16).unwrap();
        assert_eq!(
            p,
            PartialName {
                timeline: 1,
                segno: 3,
                commit_lsn: Lsn(0x03A1_B2C8),
                term: 1,
                sk_id: 1,
                start_lsn: Lsn(0x0300_0000),
            }
        );
        assert_eq!(p, PartialName::base(1, 3, Lsn(0x03A1_B2C8), 1, 1, SEG16));
        assert_eq!(p.to_file_name(SEG16), name);
        assert!(p.is_base(SEG16));
        assert_eq!(p.commit_offset(SEG16), 0x03A1_B2C8 - 3 * u64::from(SEG16));
        assert_eq!(p.bytes(), p.commit_offset(SEG16));
        assert_eq!(p.as_version(SEG16), p);

        let name =
            "000000010000000000000003_0000000003A1B2C8_0000000000000001_sk1_0000000003400000.delta";
        let d = PartialName::parse(name, SEG16).unwrap();
        assert_eq!(
            d,
            PartialName {
                start_lsn: Lsn(0x0340_0000),
                ..p.clone()
            }
        );
        assert_eq!(d.to_file_name(SEG16), name);
        assert!(!d.is_base(SEG16));
        assert_eq!(d.bytes(), 0x03A1_B2C8 - 0x0340_0000);
        assert_eq!(d.start_offset(SEG16), 0x40_0000);
        assert_eq!(d.commit_offset(SEG16), p.commit_offset(SEG16));
        assert_eq!(d.as_version(SEG16), p);
        assert_eq!(
            WalObjectName::parse(name, SEG16),
            Ok(WalObjectName::Partial(d))
        );
    }

    #[test]
    fn strictness() {
        for bad in [
            "00000001000000000000000",
            "0000000100000000000000030",
            "0000000100000000000000a0",
            "000000000000000000000003",
            "000000010000000000000100", // low part 0x100 >= 256 segments per xlogid
            "+00000010000000000000003",
        ] {
            assert!(parse_segment_file_name(bad, SEG16).is_err(), "{bad}");
        }
        assert!(parse_segment_file_name("000000010000000000000003", 12345).is_err());
        for bad in [
            "00000000.history",
            "1.history",
            "0000000a.history",
            "00000001.histor",
        ] {
            assert!(parse_history_file_name(bad).is_err(), "{bad}");
        }
        let seg = "000000010000000000000003";
        for bad in [
            format!("{seg}_0000000003000000_0000000000000001_sk1.partial"), // at segment start
            format!("{seg}_0000000004000001_0000000000000001_sk1.partial"), // past segment end
            format!("{seg}_0000000003A1B2C8_0000000000000000_sk1.partial"), // term 0
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk0.partial"),
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk01.partial"),
            format!("{seg}_0000000003A1B2C8_0000000000000001_1.partial"),
            format!("{seg}_0000000003a1b2c8_0000000000000001_sk1.partial"),
            format!("{seg}_3A1B2C8_0000000000000001_sk1.partial"),
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk1_x.partial"),
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk1"),
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk1_0000000003400000.partial"),
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk1.delta"), // no start
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk1_0000000003000000.delta"), // at segment start
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk1_0000000002FFFFFF.delta"), // before it
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk1_0000000003A1B2C8.delta"), // = commit
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk1_0000000003A1B2C9.delta"), // > commit
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk1_0000000003a00000.delta"),
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk1_3400000.delta"),
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk1_0000000003400000_x.delta"),
            format!("{seg}_0000000004000001_0000000000000001_sk1_0000000003400000.delta"),
            format!("{seg}_0000000003A1B2C8_0000000000000001_sk1_0000000003400000"),
        ] {
            assert!(PartialName::parse(&bad, SEG16).is_err(), "{bad}");
        }
        let end = format!("{seg}_0000000004000000_0000000000000001_sk1.partial");
        assert_eq!(
            PartialName::parse(&end, SEG16)
                .unwrap()
                .commit_offset(SEG16),
            u64::from(SEG16)
        );
        let last = format!("{seg}_0000000004000000_0000000000000001_sk1_0000000003FFFFFF.delta");
        assert_eq!(PartialName::parse(&last, SEG16).unwrap().bytes(), 1);
        let err = PartialName::parse(
            &format!("{seg}_0000000003A1B2C8_0000000000000001_sk1_0000000003000000.delta"),
            SEG16,
        )
        .unwrap_err();
        assert!(
            err.reason.contains("a piece starting there is a .partial"),
            "{err}"
        );
    }

    #[test]
    fn classify() {
        let n = WalObjectName::parse("00000002.history", SEG16).unwrap();
        assert_eq!(n, WalObjectName::History(2));
        let n = WalObjectName::parse("000000020000000000000001", SEG16).unwrap();
        assert_eq!(
            n,
            WalObjectName::Segment {
                timeline: 2,
                segno: 1
            }
        );
        assert!(WalObjectName::parse("README", SEG16).is_err());
    }
}
