//! The WAL a primary streams, checked against the cluster's WAL format before any of it is
//! written: once per replication session, on the first page header the stream carries.
//!
//! Owns the rule that makes a new PostgreSQL major work without a code change when its page
//! format is unchanged, and refuses it with one clear line when it is not:
//! - The page magic is learned, not looked up: a cluster whose control file has no magic yet
//!   accepts any magic on a page header that otherwise checks out (its own address, header form,
//!   segment size, block size, system identifier), and the magic is then recorded by the manager.
//! - A page header that does not check out under the known layout is refused before it is
//!   written: "PostgreSQL N is not supported yet" when its magic is unknown (the format changed),
//!   a plain description of the problem otherwise. Either stops the cluster (retrying cannot
//!   help) — it is never reported as damaged local WAL.
//! - A magic other than the recorded one (a primary of another major) is refused the same way.
//!
//! After one page header checked out, later messages are not inspected: the hot path of
//! synchronous commit pays for this once per session.

use std::fmt;

use control_file::Lsn;

use crate::wal::format::{
    Expect, LONG_PAGE_HEADER_SIZE, PageProblem, SHORT_PAGE_HEADER_SIZE, WAL_PAGE_SIZE,
    check_page_header, describe_magic, pg_version_for_magic,
};

/// Streamed WAL this safekeeper must not store: the cluster stops with this line.
#[derive(Debug)]
pub(crate) struct WalRefused(String);

impl fmt::Display for WalRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalRefused {}

/// The per-session check of streamed page headers.
#[derive(Debug)]
pub(crate) struct StreamCheck {
    seg_size: u32,
    system_identifier: u64,
    /// The cluster's magic from its control file; `None` until learned.
    recorded_magic: Option<u16>,
    /// `server_version_num / 10000` of the primary, for the refusal message.
    server_major: u32,
    /// The magic of the first page header that checked out in this session.
    verified: Option<u16>,
}

impl StreamCheck {
    pub(crate) fn new(
        seg_size: u32,
        system_identifier: u64,
        recorded_magic: Option<u16>,
        server_major: u32,
    ) -> StreamCheck {
        StreamCheck {
            seg_size,
            system_identifier,
            recorded_magic,
            server_major,
            verified: None,
        }
    }

    /// The magic verified in this session, once a page header checked out.
    pub(crate) fn verified_magic(&self) -> Option<u16> {
        self.verified
    }

    /// Checks the first complete page header inside `data` (WAL streamed from `wal_start`), until
    /// one has checked out in this session. Messages without a whole page header pass unchecked.
    pub(crate) fn check(&mut self, wal_start: Lsn, data: &[u8]) -> Result<(), WalRefused> {
        if self.verified.is_some() {
            return Ok(());
        }
        let page = WAL_PAGE_SIZE as u64;
        let offset = ((page - wal_start.0 % page) % page) as usize;
        let page_lsn = wal_start.0 + offset as u64;
        let header_len = if page_lsn % u64::from(self.seg_size) == 0 {
            LONG_PAGE_HEADER_SIZE
        } else {
            SHORT_PAGE_HEADER_SIZE
        };
        if offset + header_len > data.len() {
            return Ok(());
        }
        let expect = Expect {
            system_identifier: Some(self.system_identifier),
            magic: self.recorded_magic,
        };
        match check_page_header(&data[offset..], page_lsn, self.seg_size, expect) {
            Ok(header) => {
                self.verified = Some(header.magic);
                Ok(())
            }
            // A primary never streams a zeroed page header; nothing to learn from it.
            Err(PageProblem::Zeroed) => Ok(()),
            Err(problem) => Err(self.refusal(&data[offset..], Lsn(page_lsn), problem)),
        }
    }

    fn refusal(&self, page: &[u8], page_lsn: Lsn, problem: PageProblem) -> WalRefused {
        let magic = u16::from_le_bytes([page[0], page[1]]);
        let major = self.server_major;
        if let PageProblem::WrongMagic { expected, .. } = problem {
            return WalRefused(format!(
                "the primary (PostgreSQL {major}) streams WAL with page magic {} but this \
                 cluster's WAL has page magic {}: WAL of another PostgreSQL major cannot continue \
                 the same archive; follow the upgraded primary under a new --cluster name",
                describe_magic(magic),
                describe_magic(expected)
            ));
        }
        if pg_version_for_magic(magic).is_none() {
            return WalRefused(format!(
                "PostgreSQL {major} is not supported yet: its WAL page header at {page_lsn} \
                 (page magic {magic:#06X}) does not have the layout this safekeeper knows \
                 ({problem}); nothing of it was stored"
            ));
        }
        WalRefused(format!(
            "the primary's WAL page header at {page_lsn} does not check out: {problem}; \
             nothing of it was stored"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::format::testutil::WalBuilder;

    const SEG: u32 = 1 << 20;
    const SYSID: u64 = 7_300_000_000_000_000_001;
    const SEG_LSN: u64 = 0x0300_0000;

    fn image(magic: u16) -> Vec<u8> {
        let mut b = WalBuilder::new(SEG_LSN, SEG, SYSID, 0);
        for len in [100, 9000, 20000, 64] {
            b.record(len);
        }
        let mut buf = b.buf;
        for page in buf.chunks_mut(WAL_PAGE_SIZE) {
            page[..2].copy_from_slice(&magic.to_le_bytes());
        }
        buf
    }

    #[test]
    fn learns_an_unknown_magic_when_the_layout_is_unchanged() {
        let wal = image(0xD1F0);
        let mut check = StreamCheck::new(SEG, SYSID, None, 19);
        check.check(Lsn(SEG_LSN), &wal).unwrap();
        assert_eq!(check.verified_magic(), Some(0xD1F0));
    }

    #[test]
    fn postgres_18_is_accepted_with_or_without_a_recorded_magic() {
        let wal = image(0xD118);
        for recorded in [None, Some(0xD118)] {
            let mut check = StreamCheck::new(SEG, SYSID, recorded, 18);
            check.check(Lsn(SEG_LSN), &wal).unwrap();
            assert_eq!(check.verified_magic(), Some(0xD118));
        }
    }

    #[test]
    fn checks_the_next_page_boundary_of_a_stream_that_starts_mid_page() {
        let wal = image(0xD116);
        let start = 5000;
        let mut check = StreamCheck::new(SEG, SYSID, Some(0xD116), 17);
        // Too short to reach the next page header: nothing verified yet, nothing refused.
        check
            .check(Lsn(SEG_LSN + start as u64), &wal[start..WAL_PAGE_SIZE + 10])
            .unwrap();
        assert_eq!(check.verified_magic(), None);
        check
            .check(Lsn(SEG_LSN + start as u64), &wal[start..])
            .unwrap();
        assert_eq!(check.verified_magic(), Some(0xD116));
    }

    #[test]
    fn a_changed_page_layout_is_refused_as_not_supported_yet() {
        let mut wal = image(0xD1F0);
        // A future layout: the page address is no longer where it used to be.
        wal[8..16].copy_from_slice(&0xDEAD_BEEFu64.to_le_bytes());
        let mut check = StreamCheck::new(SEG, SYSID, None, 19);
        let err = check.check(Lsn(SEG_LSN), &wal).unwrap_err().to_string();
        assert!(
            err.starts_with("PostgreSQL 19 is not supported yet") && err.contains("0xD1F0"),
            "{err}"
        );
        assert!(!err.contains('\n') && !err.contains("damaged"), "{err}");
        assert_eq!(check.verified_magic(), None);
    }

    #[test]
    fn another_major_than_the_recorded_one_is_refused() {
        let wal = image(0xD118);
        let mut check = StreamCheck::new(SEG, SYSID, Some(0xD116), 18);
        let err = check.check(Lsn(SEG_LSN), &wal).unwrap_err().to_string();
        assert!(err.contains("0xD118 (PostgreSQL 18)"), "{err}");
        assert!(err.contains("0xD116 (PostgreSQL 17)"), "{err}");
    }

    #[test]
    fn another_system_identifier_is_refused_without_calling_it_unsupported() {
        let wal = image(0xD110);
        let mut check = StreamCheck::new(SEG, SYSID + 1, None, 15);
        let err = check.check(Lsn(SEG_LSN), &wal).unwrap_err().to_string();
        assert!(err.contains("system identifier"), "{err}");
        assert!(!err.contains("not supported"), "{err}");
    }
}
