//! Local WAL of one cluster: `<data-dir>/<cluster>/wal/`, laid out like pg_wal and pg_receivewal.
//!
//! Owns the segment files. Completed segments carry their pg_wal name (`000000010000000000000003`),
//! the segment being written carries a `.partial` suffix, is preallocated with zeros (so that an
//! fdatasync flushes data only, as PostgreSQL's own WAL does) and is renamed when complete.
//!
//! Invariants:
//! - Bytes are written at strictly consecutive LSNs: a gap is an error, never a hole in a file.
//! - `flushed_lsn` only moves after an fdatasync covering every byte below it returned; a
//!   completed segment is fsynced before it is renamed, and the directory after the rename.
//! - Only one `.partial` file exists, and it is the newest segment.
//! - Creating a segment first makes room for it (`wal::space`: only uploaded segments are freed);
//!   a full disk is a `DiskFull` error that leaves no file behind and changes nothing in the
//!   store, so the same write can simply be retried.
//! - On open, the resume point is the end of the verified WAL in the newest file or the flush LSN
//!   the control file recorded, whichever is higher; local data that fails verification *below*
//!   the recorded flush LSN is corruption and refuses to open rather than be overwritten.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use control_file::Lsn;
use control_file::names::{parse_segment_file_name, segment_file_name};
use tracing::{debug, info, warn};

use crate::wal::format::{self, Expect, ScanStop};
use crate::wal::space::{self, PREALLOC_SUFFIX, SpacePolicy};
use crate::wal::spare::Spare;

/// Suffix of the segment being written.
pub(crate) const PARTIAL_SUFFIX: &str = ".partial";

/// Identity of the WAL a store holds; checked against every segment it opens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WalIdentity {
    pub system_identifier: u64,
    pub timeline: u32,
    pub seg_size: u32,
    /// The cluster's WAL page magic from its control file; `None` until learned (a scan then
    /// holds a segment to the magic of its first page).
    pub page_magic: Option<u16>,
}

/// The segment currently open for writing.
struct OpenSegment {
    segno: u64,
    file: File,
    path: PathBuf,
}

/// A completed local segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LocalSegment {
    pub timeline: u32,
    pub segno: u64,
    pub path: PathBuf,
}

/// Writer and catalogue of one cluster's local WAL directory.
pub(crate) struct WalStore {
    dir: PathBuf,
    id: WalIdentity,
    open: Option<OpenSegment>,
    /// End of the bytes handed to `write`.
    written_lsn: Lsn,
    /// End of the bytes known to be on disk.
    flushed_lsn: Lsn,
    /// How room for the next segment is measured and made (see `wal::space`).
    space: SpacePolicy,
    /// The next segment's file, prepared ahead when the space policy asks for it.
    spare: Option<Spare>,
}

impl WalStore {
    /// Opens (creating if needed) the WAL directory and works out where streaming must resume.
    /// `recorded_flush_lsn` is the flush LSN from the control file, a lower bound of what is durable.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path, id: WalIdentity, recorded_flush_lsn: Lsn) -> Result<WalStore> {
        Self::open_from(dir, id, recorded_flush_lsn, Lsn::INVALID)
    }

    /// Like [`WalStore::open`], for WAL that starts at `floor` (the current term's start): files
    /// below it (before a gap the upstream could not fill) are kept but do not decide the resume
    /// point.
    pub(crate) fn open_from(
        dir: &Path,
        id: WalIdentity,
        recorded_flush_lsn: Lsn,
        floor: Lsn,
    ) -> Result<WalStore> {
        ensure!(
            control_file::lsn::is_valid_segment_size(id.seg_size),
            "invalid WAL segment size {}",
            id.seg_size
        );
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create WAL directory {}", dir.display()))?;
        space::remove_leftover_temp_files(dir)?;
        let mut store = WalStore {
            dir: dir.to_path_buf(),
            id,
            open: None,
            written_lsn: recorded_flush_lsn,
            flushed_lsn: recorded_flush_lsn,
            space: SpacePolicy::none(),
            spare: None,
        };
        let resume = store.find_resume_point(recorded_flush_lsn, floor)?;
        store.written_lsn = resume;
        store.flushed_lsn = resume;
        info!(
            wal_dir = %dir.display(),
            %resume,
            %recorded_flush_lsn,
            "local WAL opened"
        );
        Ok(store)
    }

    /// Starts the WAL of a new timeline at `start`. The segment holding `start` begins with the
    /// bytes the new timeline shares with its parent (`[segment start, start)`), which are copied
    /// from `parent_timeline`'s file of that segment, fsynced, before anything is streamed into it.
    pub(crate) fn start_timeline(
        dir: &Path,
        id: WalIdentity,
        start: Lsn,
        parent_timeline: u32,
    ) -> Result<WalStore> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create WAL directory {}", dir.display()))?;
        let mut store = WalStore {
            dir: dir.to_path_buf(),
            id,
            open: None,
            written_lsn: start,
            flushed_lsn: start,
            space: SpacePolicy::none(),
            spare: None,
        };
        if !start.is_segment_start(id.seg_size) {
            let segno = start.segment_number(id.seg_size);
            let shared = start.segment_offset(id.seg_size) as usize;
            let prefix = read_segment_prefix(dir, parent_timeline, segno, id.seg_size, shared)
                .with_context(|| {
                    format!(
                        "cannot copy the start of timeline {} from its parent",
                        id.timeline
                    )
                })?;
            let file = store.create_preallocated(segno)?;
            file.write_all_at(&prefix, 0)
                .and_then(|_| file.sync_data())
                .with_context(|| {
                    format!("cannot seed the first segment of timeline {}", id.timeline)
                })?;
            let path = store.partial_path(segno);
            store.open = Some(OpenSegment { segno, file, path });
        }
        info!(timeline = id.timeline, %start, parent_timeline, "started local WAL of a new timeline");
        Ok(store)
    }

    /// Sets how room for new segments is made (by default nothing may be freed).
    pub(crate) fn with_space(mut self, space: SpacePolicy) -> WalStore {
        self.spare = space
            .spare
            .then(|| Spare::new(&self.dir, self.id.seg_size, space.probe.clone()));
        self.space = space;
        self
    }

    /// Waits for the spare being prepared, if any (tests).
    #[cfg(test)]
    pub(crate) fn wait_for_spare(&mut self) {
        if let Some(spare) = &mut self.spare {
            spare.wait();
        }
    }

    pub(crate) fn identity(&self) -> WalIdentity {
        self.id
    }

    /// End of the bytes accepted by [`WalStore::write`].
    pub(crate) fn written_lsn(&self) -> Lsn {
        self.written_lsn
    }

    /// End of the bytes on disk.
    pub(crate) fn flushed_lsn(&self) -> Lsn {
        self.flushed_lsn
    }

    /// Sets the segment being written aside as `<name>.partial.gap`, after flushing it: the WAL
    /// that follows it is not available upstream, so it will never be completed. Its bytes stay
    /// for inspection and for the partial already uploaded from them.
    pub(crate) fn retire_open_segment(&mut self) -> Result<()> {
        self.flush()?;
        if let Some(segment) = self.open.take() {
            let mut retired = segment.path.clone().into_os_string();
            retired.push(".gap");
            fs::rename(&segment.path, &retired)
                .with_context(|| format!("cannot set {} aside", segment.path.display()))?;
            fsync_dir(&self.dir)?;
            warn!(segment = %segment.path.display(), "incomplete segment set aside before a gap");
        }
        Ok(())
    }

    /// Path of a completed segment of the store's timeline.
    pub(crate) fn segment_path(&self, segno: u64) -> PathBuf {
        self.dir
            .join(segment_file_name(self.id.timeline, segno, self.id.seg_size))
    }

    fn partial_path(&self, segno: u64) -> PathBuf {
        let mut name = segment_file_name(self.id.timeline, segno, self.id.seg_size);
        name.push_str(PARTIAL_SUFFIX);
        self.dir.join(name)
    }

    /// Appends WAL that starts at `lsn`. Bytes below `written_lsn` (a server re-sending what we
    /// have) are skipped; a start above it would leave a gap and is refused.
    pub(crate) fn write(&mut self, lsn: Lsn, mut data: &[u8]) -> Result<()> {
        let mut lsn = lsn;
        if lsn < self.written_lsn {
            let overlap = (self.written_lsn.0 - lsn.0).min(data.len() as u64) as usize;
            data = &data[overlap..];
            lsn = lsn + overlap as u64;
        }
        if data.is_empty() {
            return Ok(());
        }
        ensure!(
            lsn == self.written_lsn,
            "WAL gap: received data at {lsn} but local WAL ends at {}",
            self.written_lsn
        );
        let seg_size = self.id.seg_size;
        while !data.is_empty() {
            let segno = lsn.segment_number(seg_size);
            let offset = lsn.segment_offset(seg_size);
            let room = u64::from(seg_size) - offset;
            let n = (data.len() as u64).min(room) as usize;
            let segment = self.segment_for_write(segno)?;
            segment
                .file
                .write_all_at(&data[..n], offset)
                .with_context(|| format!("cannot write WAL to {}", segment.path.display()))?;
            lsn = lsn + n as u64;
            self.written_lsn = lsn;
            data = &data[n..];
            // Half way through a segment, the next one's file is prepared (`wal::spare`): early
            // enough to be ready at the switch, and never for a cluster whose WAL does not move.
            let half = u64::from(seg_size) / 2;
            if offset < half && offset + n as u64 >= half {
                if let Some(spare) = &mut self.spare {
                    spare.prepare_next();
                }
            }
            if lsn.is_segment_start(seg_size) {
                self.complete_segment()?;
            }
        }
        Ok(())
    }

    /// Makes every written byte durable (one fdatasync) and returns the new flush LSN.
    pub(crate) fn flush(&mut self) -> Result<Lsn> {
        if self.flushed_lsn < self.written_lsn {
            if let Some(segment) = &self.open {
                segment
                    .file
                    .sync_data()
                    .with_context(|| format!("cannot fdatasync {}", segment.path.display()))?;
            }
            self.flushed_lsn = self.written_lsn;
        }
        Ok(self.flushed_lsn)
    }

    /// The open segment for `segno`, opening or creating it when needed.
    fn segment_for_write(&mut self, segno: u64) -> Result<&mut OpenSegment> {
        if self.open.as_ref().map(|s| s.segno) != Some(segno) {
            ensure!(
                self.open.is_none(),
                "internal error: segment switch without completing the open segment"
            );
            let path = self.partial_path(segno);
            let file = if path.exists() {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?
            } else {
                self.create_preallocated(segno)?
            };
            self.open = Some(OpenSegment { segno, file, path });
        }
        self.open
            .as_mut()
            .context("internal error: no open segment")
    }

    /// Creates `SEGMENT.partial` full of zeros, durably: the spare prepared ahead when there is
    /// one (a rename, see `wal::spare`), else written to a temporary name, fsynced, renamed, with
    /// room made first (uploaded segments freed, see `wal::space`); a full disk is a
    /// [`space::DiskFull`] error that leaves nothing behind and changes nothing in the store.
    fn create_preallocated(&mut self, segno: u64) -> Result<File> {
        let final_path = self.partial_path(segno);
        if let Some(spare) = &mut self.spare {
            if let Some(file) = spare.take(&final_path)? {
                return Ok(file);
            }
        }
        let seg_size = self.id.seg_size;
        self.space
            .make_room(&self.dir, seg_size, self.id.timeline, u64::from(seg_size))?;
        let mut tmp_name = segment_file_name(self.id.timeline, segno, seg_size);
        tmp_name.push_str(PREALLOC_SUFFIX);
        let started = std::time::Instant::now();
        let file = space::preallocate(
            &self.dir.join(tmp_name),
            &final_path,
            seg_size.into(),
            &*self.space.probe,
        )?;
        debug!(segment = %final_path.display(), elapsed_ms = started.elapsed().as_millis() as u64, "segment preallocated");
        Ok(file)
    }

    /// The open segment is full: fsync it, rename it to its final name, fsync the directory.
    fn complete_segment(&mut self) -> Result<()> {
        let Some(segment) = self.open.take() else {
            return Ok(());
        };
        segment
            .file
            .sync_data()
            .with_context(|| format!("cannot fdatasync {}", segment.path.display()))?;
        let final_path = self.segment_path(segment.segno);
        fs::rename(&segment.path, &final_path).with_context(|| {
            format!(
                "cannot rename {} to {}",
                segment.path.display(),
                final_path.display()
            )
        })?;
        fsync_dir(&self.dir)?;
        self.flushed_lsn = self
            .flushed_lsn
            .max(Lsn::from_segment(segment.segno + 1, self.id.seg_size));
        debug!(segment = %final_path.display(), "segment completed");
        Ok(())
    }

    /// Completed segments in the WAL directory (every timeline), oldest first.
    pub(crate) fn list_segments(&self) -> Result<Vec<LocalSegment>> {
        list_completed_segments(&self.dir, self.id.seg_size)
    }

    /// The `.partial` segments present (normally at most one), as segment numbers.
    fn list_partials(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)
            .with_context(|| format!("cannot list {}", self.dir.display()))?
        {
            let entry = entry.with_context(|| format!("cannot list {}", self.dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(PARTIAL_SUFFIX) else {
                continue;
            };
            if let Ok((timeline, segno)) = parse_segment_file_name(stem, self.id.seg_size) {
                if timeline == self.id.timeline {
                    out.push(segno);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Works out the LSN to resume streaming at (see the module invariants).
    fn find_resume_point(&mut self, recorded: Lsn, floor: Lsn) -> Result<Lsn> {
        let seg_size = self.id.seg_size;
        let floor_segno = floor.segment_number(seg_size);
        let full_end = self
            .list_segments()?
            .iter()
            .filter(|s| s.timeline == self.id.timeline && s.segno >= floor_segno)
            .map(|s| s.segno + 1)
            .max();
        let mut partials = self.list_partials()?;
        partials.retain(|p| *p >= floor_segno);
        // A partial at or below a completed segment is a leftover: the full file wins.
        if let Some(end) = full_end {
            for segno in partials.iter().filter(|p| **p < end) {
                let path = self.partial_path(*segno);
                warn!(path = %path.display(), "removing .partial superseded by a completed segment");
                fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
            partials.retain(|p| *p >= end);
        }
        if partials.len() > 1 {
            bail!(
                "local WAL in {} has {} .partial segments; expected at most one",
                self.dir.display(),
                partials.len()
            );
        }
        let local_end = match partials.first() {
            Some(&segno) => {
                if let Some(end) = full_end {
                    ensure!(
                        segno == end,
                        "local WAL in {} has a gap: completed segments end at segment {end:X} \
                         but the .partial is segment {segno:X}",
                        self.dir.display()
                    );
                }
                let valid = self.scan_partial(segno, recorded)?;
                Lsn::from_segment(segno, seg_size) + valid as u64
            }
            None => match full_end {
                Some(end) => Lsn::from_segment(end, seg_size),
                None => recorded.segment_start(seg_size).max(Lsn::INVALID),
            },
        };
        if recorded > local_end {
            // The recorded flush LSN may be inside an incomplete trailing record, which the scan
            // cannot verify; those bytes are on disk (they were fsynced before being recorded).
            let recorded_segno = recorded.segment_number(seg_size);
            let has_file = partials.first() == Some(&recorded_segno)
                || (recorded.is_segment_start(seg_size) && full_end == Some(recorded_segno));
            ensure!(
                has_file,
                "local WAL in {} ends at {local_end} but the control file records WAL flushed up \
                 to {recorded}: local WAL files are missing",
                self.dir.display()
            );
            return Ok(recorded);
        }
        Ok(local_end)
    }

    /// Scans `SEGMENT.partial`; returns the verified length. Damage below `recorded` is an error.
    fn scan_partial(&self, segno: u64, recorded: Lsn) -> Result<usize> {
        let path = self.partial_path(segno);
        let mut data = Vec::with_capacity(self.id.seg_size as usize);
        File::open(&path)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(0))?;
                f.read_to_end(&mut data)
            })
            .with_context(|| format!("cannot read {}", path.display()))?;
        data.truncate(self.id.seg_size as usize);
        let segment_lsn = Lsn::from_segment(segno, self.id.seg_size);
        let scan = format::scan_segment(
            &data,
            segment_lsn.0,
            self.id.seg_size,
            Expect {
                system_identifier: Some(self.id.system_identifier),
                magic: self.id.page_magic,
            },
        );
        let valid_end_lsn = segment_lsn + scan.valid_end as u64;
        // Where the evidence of damage ends: only damage wholly below the recorded flush LSN
        // proves that acknowledged WAL is bad (a torn tail reads as a bad record otherwise).
        let damage = match &scan.stop {
            ScanStop::BadPage { offset, .. } => Some((*offset, *offset + 1)),
            ScanStop::BadRecord { offset, end, .. } => Some((*offset, *end)),
            ScanStop::EndOfData | ScanStop::EndOfWal => None,
        };
        if let Some((start, end)) = damage {
            let damage_at = segment_lsn + start as u64;
            ensure!(
                segment_lsn + end as u64 > recorded,
                "local WAL {} is damaged at {damage_at} ({:?}), below the flush LSN {recorded} \
                 acknowledged earlier; refusing to overwrite it",
                path.display(),
                scan.stop
            );
            debug!(path = %path.display(), at = %damage_at, stop = ?scan.stop,
                   "unverified WAL after the recorded flush LSN will be re-streamed");
        }
        // Zero out whatever follows the verified end so that re-streamed bytes land on a clean
        // tail and a later scan cannot mistake stale bytes for WAL.
        let keep_from = valid_end_lsn.max(recorded).segment_offset(self.id.seg_size) as usize;
        if data[keep_from.min(data.len())..].iter().any(|b| *b != 0)
            || data.len() < self.id.seg_size as usize
        {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let zeros = vec![0u8; self.id.seg_size as usize - keep_from];
            file.write_all_at(&zeros, keep_from as u64)
                .and_then(|_| file.sync_data())
                .with_context(|| format!("cannot clear the tail of {}", path.display()))?;
        }
        Ok(scan.valid_end)
    }
}

/// Completed segments in a WAL directory (every timeline), ordered by (timeline, segno).
pub(crate) fn list_completed_segments(dir: &Path, seg_size: u32) -> Result<Vec<LocalSegment>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Ok((timeline, segno)) = parse_segment_file_name(name, seg_size) {
            out.push(LocalSegment {
                timeline,
                segno,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| (s.timeline, s.segno));
    Ok(out)
}

/// Reads the first `len` bytes of local segment `segno` (see [`read_segment_range`]).
pub(crate) fn read_segment_prefix(
    dir: &Path,
    timeline: u32,
    segno: u64,
    seg_size: u32,
    len: usize,
) -> Result<Vec<u8>> {
    read_segment_range(dir, timeline, segno, seg_size, 0, len)
}

/// Reads `len` bytes at byte `offset` of local segment `segno` (the `.partial` file while it is
/// being written, else the completed one): the content of a partial piece or a full segment.
pub(crate) fn read_segment_range(
    dir: &Path,
    timeline: u32,
    segno: u64,
    seg_size: u32,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let name = segment_file_name(timeline, segno, seg_size);
    let full = dir.join(&name);
    let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
    // The .partial may be renamed to the full name between the two attempts: try full last too.
    let file = File::open(&partial)
        .or_else(|_| File::open(&full))
        .with_context(|| format!("cannot open local WAL segment {name} in {}", dir.display()))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).with_context(|| {
        format!("cannot read {len} bytes at offset {offset} of local WAL segment {name}")
    })?;
    Ok(buf)
}

/// Writes a timeline history file durably (temp file, fsync, rename, directory fsync).
pub(crate) fn write_history_file(dir: &Path, timeline: u32, content: &[u8]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = control_file::names::history_file_name(timeline);
    let tmp = dir.join(format!("{name}{PREALLOC_SUFFIX}"));
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(content)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(&name))
        .with_context(|| format!("cannot rename {} into place", tmp.display()))?;
    fsync_dir(dir)
}

/// fsyncs a directory so that renames and creations in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))
}

#[cfg(test)]
mod tests;
