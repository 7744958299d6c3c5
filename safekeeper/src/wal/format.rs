//! PostgreSQL WAL on-disk format: page headers and record headers, enough to find where the valid
//! WAL in a segment ends.
//!
//! Owns: the byte layout of `XLogPageHeaderData`, `XLogLongPageHeaderData` and `XLogRecord`
//! (PostgreSQL `access/xlog_internal.h`, `access/xlogrecord.h`) and the rules that make a record
//! valid: every page it touches has a header with the cluster's page magic and the page's own address, the
//! continuation flag and remaining length agree with the record, `xl_prev` points at the previous
//! record, and the CRC-32C over payload-then-header matches `xl_crc`.
//!
//! Invariant kept by [`scan_segment`]: the returned `valid_end` never points past a byte that was
//! not checked, so resuming a stream there can only re-receive bytes, never skip any.

use std::fmt;

/// WAL page size (`XLOG_BLCKSZ`); PostgreSQL builds with another size are not supported.
pub(crate) const WAL_PAGE_SIZE: usize = 8192;
/// `SizeOfXLogShortPHD`: MAXALIGN(20).
pub(crate) const SHORT_PAGE_HEADER_SIZE: usize = 24;
/// `SizeOfXLogLongPHD`: MAXALIGN(36).
pub(crate) const LONG_PAGE_HEADER_SIZE: usize = 40;
/// `SizeOfXLogRecord`.
pub(crate) const RECORD_HEADER_SIZE: usize = 24;
/// Offset of `xl_crc` inside the record header; the CRC covers the header bytes before it.
const RECORD_CRC_OFFSET: usize = 20;

/// `xlp_info` flag: the page starts with the continuation of a record from an earlier page.
pub(crate) const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `xlp_info` flag: the page carries the long header (first page of a segment).
pub(crate) const XLP_LONG_HEADER: u16 = 0x0002;

/// Page magic (`XLOG_PAGE_MAGIC`) of the PostgreSQL majors we know, for messages only.
///
/// Validation never depends on this table: the magic changes with every major (whenever the
/// *record* format changes), while the page header layout this module checks has stayed the same
/// in every major this safekeeper supports (13 to 18). A cluster's magic is learned from the WAL its primary sends and recorded in its
/// control file; pages are then held to that magic. A major missing here therefore works as long
/// as its page header layout is unchanged (`wal::stream_check` refuses it, before storing any of
/// it, when it is not).
pub(crate) const KNOWN_PAGE_MAGICS: &[(u16, u32)] = &[
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// PostgreSQL major version for a page magic, if known.
pub(crate) fn pg_version_for_magic(magic: u16) -> Option<u32> {
    KNOWN_PAGE_MAGICS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, v)| *v)
}

/// A decoded WAL page header (short form, plus the long-form fields when present).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub page_addr: u64,
    pub rem_len: u32,
    /// Present only on a long header (first page of a segment).
    pub long: Option<LongPageFields>,
}

/// Fields that only the first page of a segment carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LongPageFields {
    pub system_identifier: u64,
    pub seg_size: u32,
    pub block_size: u32,
}

impl PageHeader {
    /// Decodes a header from the start of `page`; `None` when too short.
    pub(crate) fn decode(page: &[u8]) -> Option<PageHeader> {
        if page.len() < SHORT_PAGE_HEADER_SIZE {
            return None;
        }
        let info = u16_at(page, 2);
        let long = if info & XLP_LONG_HEADER != 0 {
            if page.len() < LONG_PAGE_HEADER_SIZE {
                return None;
            }
            Some(LongPageFields {
                system_identifier: u64_at(page, 24),
                seg_size: u32_at(page, 32),
                block_size: u32_at(page, 36),
            })
        } else {
            None
        };
        Some(PageHeader {
            magic: u16_at(page, 0),
            info,
            timeline: u32_at(page, 4),
            page_addr: u64_at(page, 8),
            rem_len: u32_at(page, 16),
            long,
        })
    }

    /// Size of this header on the page.
    pub(crate) fn size(&self) -> usize {
        if self.long.is_some() {
            LONG_PAGE_HEADER_SIZE
        } else {
            SHORT_PAGE_HEADER_SIZE
        }
    }

    pub(crate) fn is_continuation(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }
}

/// Why a page header is not acceptable at a given position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PageProblem {
    /// All zero: never written (the normal end of WAL in a preallocated segment).
    Zeroed,
    /// Another magic than the cluster's (or than the first page of the same segment).
    WrongMagic {
        expected: u16,
        found: u16,
    },
    WrongAddress {
        expected: u64,
        found: u64,
    },
    /// The first page of a segment lacks the long header, or another page has it.
    WrongHeaderForm,
    WrongSegmentSize {
        expected: u32,
        found: u32,
    },
    WrongBlockSize(u32),
    WrongSystemIdentifier {
        expected: u64,
        found: u64,
    },
}

impl fmt::Display for PageProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageProblem::Zeroed => write!(f, "page is all zeros"),
            PageProblem::WrongMagic { expected, found } => write!(
                f,
                "WAL page magic {} where {} was expected",
                describe_magic(*found),
                describe_magic(*expected)
            ),
            PageProblem::WrongAddress { expected, found } => write!(
                f,
                "page address {:X}/{:X} where {:X}/{:X} was expected",
                found >> 32,
                *found as u32,
                expected >> 32,
                *expected as u32
            ),
            PageProblem::WrongHeaderForm => write!(f, "long/short page header in the wrong place"),
            PageProblem::WrongSegmentSize { expected, found } => {
                write!(
                    f,
                    "segment size {found} in page header, expected {expected}"
                )
            }
            PageProblem::WrongBlockSize(b) => write!(f, "WAL block size {b}, expected 8192"),
            PageProblem::WrongSystemIdentifier { expected, found } => {
                write!(
                    f,
                    "system identifier {found} in page header, expected {expected}"
                )
            }
        }
    }
}

/// `0xD118 (PostgreSQL 18)`, or `0xD11A (an unknown PostgreSQL version)`.
pub(crate) fn describe_magic(magic: u16) -> String {
    match pg_version_for_magic(magic) {
        Some(major) => format!("{magic:#06X} (PostgreSQL {major})"),
        None => format!("{magic:#06X} (an unknown PostgreSQL version)"),
    }
}

/// What every page header must match besides its own address and the segment size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Expect {
    /// The cluster's system identifier, checked on the long header of a segment's first page.
    pub system_identifier: Option<u64>,
    /// The cluster's page magic. `None`: not known yet, any magic is accepted and a scan holds
    /// the rest of the segment to the magic of its first page.
    pub magic: Option<u16>,
}

impl Expect {
    /// Pages of the cluster `system_identifier`, whose magic is learned from the first page.
    #[cfg(test)]
    pub(crate) fn system(system_identifier: u64) -> Expect {
        Expect {
            system_identifier: Some(system_identifier),
            magic: None,
        }
    }
}

/// Checks the page header at `page_lsn` (a multiple of the page size).
pub(crate) fn check_page_header(
    page: &[u8],
    page_lsn: u64,
    seg_size: u32,
    expect: Expect,
) -> Result<PageHeader, PageProblem> {
    let header_bytes = page.len().min(LONG_PAGE_HEADER_SIZE);
    if page[..header_bytes].iter().all(|b| *b == 0) {
        return Err(PageProblem::Zeroed);
    }
    let header = PageHeader::decode(page).ok_or(PageProblem::Zeroed)?;
    if let Some(expected) = expect.magic
        && header.magic != expected
    {
        return Err(PageProblem::WrongMagic {
            expected,
            found: header.magic,
        });
    }
    if header.page_addr != page_lsn {
        return Err(PageProblem::WrongAddress {
            expected: page_lsn,
            found: header.page_addr,
        });
    }
    let first_in_segment = page_lsn % u64::from(seg_size) == 0;
    match (&header.long, first_in_segment) {
        (Some(long), true) => {
            if long.seg_size != seg_size {
                return Err(PageProblem::WrongSegmentSize {
                    expected: seg_size,
                    found: long.seg_size,
                });
            }
            if long.block_size as usize != WAL_PAGE_SIZE {
                return Err(PageProblem::WrongBlockSize(long.block_size));
            }
            if let Some(expected) = expect.system_identifier {
                if long.system_identifier != expected {
                    return Err(PageProblem::WrongSystemIdentifier {
                        expected,
                        found: long.system_identifier,
                    });
                }
            }
        }
        (None, false) => {}
        _ => return Err(PageProblem::WrongHeaderForm),
    }
    Ok(header)
}

/// What [`scan_segment`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScanResult {
    /// Offset into the segment just past the last byte known to be valid WAL: the end of the last
    /// complete record that checked out (or of the continuation data a segment starts with).
    pub valid_end: usize,
    /// Number of complete records verified.
    pub records: usize,
    /// Why the scan stopped before the end of the supplied bytes, if it did.
    pub stop: ScanStop,
    /// The first page's magic: what the rest of the segment was held to.
    pub magic: Option<u16>,
    /// PostgreSQL major version of that magic, when it is a known one.
    pub pg_version: Option<u32>,
}

/// Why a scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// Reached the end of the supplied bytes, possibly inside an incomplete record.
    EndOfData,
    /// Found zeros where the next record or page should be: the normal end of written WAL.
    EndOfWal,
    /// A page header did not check out.
    BadPage { offset: usize, problem: PageProblem },
    /// A record did not check out (length, back-link or CRC). `end` is where it would end: in a
    /// preallocated segment a record torn by a crash reads as complete (its tail is zeros) and
    /// fails its CRC, so only a bad record that ends below what was known to be durable proves
    /// damage.
    BadRecord {
        offset: usize,
        end: usize,
        reason: String,
    },
}

impl ScanStop {
    /// True when the scan ended on damage rather than on the natural end of the data.
    pub(crate) fn is_corruption(&self) -> bool {
        match self {
            ScanStop::EndOfData | ScanStop::EndOfWal => false,
            ScanStop::BadPage { problem, .. } => *problem != PageProblem::Zeroed,
            ScanStop::BadRecord { .. } => true,
        }
    }
}

/// Walks the WAL in `data`, which holds the first `data.len()` bytes of the segment starting at
/// `segment_lsn`, and returns where the verified WAL ends. See the module invariant.
pub(crate) fn scan_segment(
    data: &[u8],
    segment_lsn: u64,
    seg_size: u32,
    expect: Expect,
) -> ScanResult {
    let mut reader = PageReader {
        data,
        segment_lsn,
        seg_size,
        expect,
        pos: 0,
    };
    let mut result = ScanResult {
        valid_end: 0,
        records: 0,
        stop: ScanStop::EndOfData,
        magic: None,
        pg_version: None,
    };
    // The first page says whether the segment starts inside a record from the previous segment.
    let first = match reader.enter_page(None) {
        Ok(Some(header)) => header,
        Ok(None) => return result,
        Err(stop) => {
            result.stop = stop;
            return result;
        }
    };
    // Every later page of the segment must carry the same magic.
    reader.expect.magic = Some(first.magic);
    result.magic = Some(first.magic);
    result.pg_version = pg_version_for_magic(first.magic);
    if first.is_continuation() && first.rem_len > 0 {
        match reader.read_record_bytes(first.rem_len as usize, true) {
            Ok(Some(_)) => result.valid_end = reader.pos,
            Ok(None) => return result,
            Err(stop) => {
                result.stop = stop;
                return result;
            }
        }
    } else {
        result.valid_end = reader.pos;
    }
    let mut prev_record_lsn: Option<u64> = None;
    loop {
        reader.pos = maxalign(reader.pos);
        match reader.enter_page(Some(false)) {
            Ok(Some(_)) => {}
            Ok(None) => return result,
            Err(stop) => {
                result.stop = stop;
                return result;
            }
        }
        let record_offset = reader.pos;
        let record_lsn = segment_lsn + record_offset as u64;
        if reader.remaining() < 4 {
            return result;
        }
        let total_len = u32_at(data, record_offset) as usize;
        if total_len == 0 {
            result.stop = ScanStop::EndOfWal;
            return result;
        }
        if total_len < RECORD_HEADER_SIZE {
            result.stop = ScanStop::BadRecord {
                offset: record_offset,
                end: record_offset + 4,
                reason: format!("record length {total_len} is shorter than a record header"),
            };
            return result;
        }
        let record = match reader.read_record_bytes(total_len, false) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return result,
            Err(stop) => {
                result.stop = stop;
                return result;
            }
        };
        if let Err(reason) = check_record(&record, prev_record_lsn) {
            result.stop = ScanStop::BadRecord {
                offset: record_offset,
                end: reader.pos,
                reason,
            };
            return result;
        }
        prev_record_lsn = Some(record_lsn);
        result.records += 1;
        result.valid_end = reader.pos;
        if reader.pos >= seg_size as usize {
            return result;
        }
    }
}

/// Checks a complete record: back-link (when the previous record is known) and CRC.
fn check_record(record: &[u8], prev_record_lsn: Option<u64>) -> Result<(), String> {
    let xl_prev = u64_at(record, 8);
    if let Some(prev) = prev_record_lsn {
        if xl_prev != prev {
            return Err(format!(
                "xl_prev {:X}/{:X} does not point at the previous record {:X}/{:X}",
                xl_prev >> 32,
                xl_prev as u32,
                prev >> 32,
                prev as u32
            ));
        }
    }
    let stored = u32_at(record, RECORD_CRC_OFFSET);
    let computed = crc32c::crc32c_append(
        crc32c::crc32c(&record[RECORD_HEADER_SIZE..]),
        &record[..RECORD_CRC_OFFSET],
    );
    if stored != computed {
        return Err(format!(
            "record CRC {computed:#010X} does not match stored {stored:#010X}"
        ));
    }
    Ok(())
}

/// Reads logical WAL bytes out of a segment image, stepping over (and checking) page headers.
struct PageReader<'a> {
    data: &'a [u8],
    segment_lsn: u64,
    seg_size: u32,
    expect: Expect,
    pos: usize,
}

impl PageReader<'_> {
    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// When `pos` is at a page boundary, checks that page's header and steps over it.
    /// `expect_continuation`: `Some(flag)` requires the continuation flag to equal `flag`.
    /// Returns `Ok(None)` when the data ends before the header is complete.
    fn enter_page(
        &mut self,
        expect_continuation: Option<bool>,
    ) -> Result<Option<PageHeader>, ScanStop> {
        if self.pos % WAL_PAGE_SIZE != 0 {
            return Ok(Some(PageHeader {
                magic: 0,
                info: 0,
                timeline: 0,
                page_addr: 0,
                rem_len: 0,
                long: None,
            }));
        }
        if self.pos >= self.seg_size as usize {
            return Ok(None);
        }
        let header_len = if self.pos == 0 {
            LONG_PAGE_HEADER_SIZE
        } else {
            SHORT_PAGE_HEADER_SIZE
        };
        if self.remaining() < header_len {
            return Ok(None);
        }
        let page_lsn = self.segment_lsn + self.pos as u64;
        let header =
            check_page_header(&self.data[self.pos..], page_lsn, self.seg_size, self.expect)
                .map_err(|problem| {
                    if problem == PageProblem::Zeroed {
                        ScanStop::EndOfWal
                    } else {
                        ScanStop::BadPage {
                            offset: self.pos,
                            problem,
                        }
                    }
                })?;
        if let Some(flag) = expect_continuation {
            if header.is_continuation() != flag {
                return Err(ScanStop::BadPage {
                    offset: self.pos,
                    problem: PageProblem::WrongHeaderForm,
                });
            }
        }
        self.pos += header.size();
        Ok(Some(header))
    }

    /// Collects `len` bytes of one record, which may span pages. `already_in_page` is true when
    /// the caller already stepped over the current page's header. Returns `Ok(None)` when the data
    /// ends first.
    fn read_record_bytes(
        &mut self,
        len: usize,
        already_in_page: bool,
    ) -> Result<Option<Vec<u8>>, ScanStop> {
        let mut out = Vec::with_capacity(len);
        let mut first = true;
        while out.len() < len {
            if !(first && already_in_page) && self.pos % WAL_PAGE_SIZE == 0 {
                let page_offset = self.pos;
                let header = match self.enter_page(Some(!first))? {
                    Some(h) => h,
                    None => return Ok(None),
                };
                if !first && header.rem_len as usize != len - out.len() {
                    return Err(ScanStop::BadPage {
                        offset: page_offset,
                        problem: PageProblem::WrongHeaderForm,
                    });
                }
            }
            first = false;
            let page_end = (self.pos / WAL_PAGE_SIZE + 1) * WAL_PAGE_SIZE;
            let want = (len - out.len()).min(page_end - self.pos);
            let available = want.min(self.remaining());
            out.extend_from_slice(&self.data[self.pos..self.pos + available]);
            self.pos += available;
            if available < want {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }
}

/// Rounds up to PostgreSQL's MAXALIGN (8 bytes on every supported platform).
pub(crate) fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
