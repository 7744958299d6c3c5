//! Test support: builds WAL laid out exactly as PostgreSQL lays it out (long header on the first
//! page, short headers after, records MAXALIGNed and split across pages with continuation headers,
//! CRC-32C over payload then header), so tests can exercise the scanner and the store on real
//! structure without a server.

use super::*;

const MAGIC: u16 = 0xD110;

/// Builds the WAL image of one segment from record sizes.
pub(crate) struct WalBuilder {
    segment_lsn: u64,
    seg_size: u32,
    system_identifier: u64,
    pub buf: Vec<u8>,
    pub prev_record: u64,
    pub record_starts: Vec<usize>,
    pub record_ends: Vec<usize>,
}

impl WalBuilder {
    pub(crate) fn new(
        segment_lsn: u64,
        seg_size: u32,
        system_identifier: u64,
        continuation: usize,
    ) -> WalBuilder {
        let mut b = WalBuilder {
            segment_lsn,
            seg_size,
            system_identifier,
            buf: Vec::new(),
            prev_record: 0,
            record_starts: Vec::new(),
            record_ends: Vec::new(),
        };
        b.page_header(continuation);
        let mut left = continuation;
        while left > 0 {
            let room = WAL_PAGE_SIZE - b.buf.len() % WAL_PAGE_SIZE;
            let n = left.min(room);
            b.buf.extend(std::iter::repeat_n(0xAB, n));
            left -= n;
            if left > 0 {
                b.page_header(left);
            }
        }
        b
    }

    fn page_header(&mut self, rem_len: usize) {
        let at = self.buf.len();
        assert_eq!(at % WAL_PAGE_SIZE, 0);
        let long = at == 0;
        let mut info = if rem_len > 0 {
            XLP_FIRST_IS_CONTRECORD
        } else {
            0
        };
        if long {
            info |= XLP_LONG_HEADER;
        }
        self.buf.extend_from_slice(&MAGIC.to_le_bytes());
        self.buf.extend_from_slice(&info.to_le_bytes());
        self.buf.extend_from_slice(&1u32.to_le_bytes());
        self.buf
            .extend_from_slice(&(self.segment_lsn + at as u64).to_le_bytes());
        self.buf.extend_from_slice(&(rem_len as u32).to_le_bytes());
        self.buf.extend_from_slice(&[0u8; 4]);
        if long {
            self.buf
                .extend_from_slice(&self.system_identifier.to_le_bytes());
            self.buf.extend_from_slice(&self.seg_size.to_le_bytes());
            self.buf
                .extend_from_slice(&(WAL_PAGE_SIZE as u32).to_le_bytes());
        }
    }

    fn align(&mut self) {
        let target = maxalign(self.buf.len());
        self.buf.resize(target, 0);
        if self.buf.len() % WAL_PAGE_SIZE == 0 {
            self.page_header(0);
        }
    }

    pub(crate) fn record(&mut self, total_len: usize) {
        self.align();
        let start = self.buf.len();
        let lsn = self.segment_lsn + start as u64;
        let payload: Vec<u8> = (0..total_len - RECORD_HEADER_SIZE)
            .map(|i| (i * 31 + total_len) as u8)
            .collect();
        let mut header = Vec::with_capacity(RECORD_HEADER_SIZE);
        header.extend_from_slice(&(total_len as u32).to_le_bytes());
        header.extend_from_slice(&42u32.to_le_bytes());
        header.extend_from_slice(&self.prev_record.to_le_bytes());
        header.extend_from_slice(&[0u8, 0, 0, 0]);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&payload), &header[..RECORD_CRC_OFFSET]);
        header.extend_from_slice(&crc.to_le_bytes());
        let mut record = header;
        record.extend_from_slice(&payload);
        let mut written = 0;
        while written < record.len() {
            if self.buf.len() % WAL_PAGE_SIZE == 0 {
                self.page_header(record.len() - written);
            }
            let room = WAL_PAGE_SIZE - self.buf.len() % WAL_PAGE_SIZE;
            let n = room.min(record.len() - written);
            self.buf.extend_from_slice(&record[written..written + n]);
            written += n;
        }
        self.prev_record = lsn;
        self.record_starts.push(start);
        self.record_ends.push(self.buf.len());
    }
}
