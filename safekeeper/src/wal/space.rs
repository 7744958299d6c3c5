//! Disk space of one cluster's directory, managed as a resource.
//!
//! What the cluster needs next is known: one segment (the next preallocation) and a control-file
//! save (a few KiB). What it may free is known too: completed segments below the durable
//! `backup_lsn` (they are in remote storage), spare `.prealloc` files and temp files of a write
//! that did not finish. This module answers "how much is available", frees in an order that
//! never loses data, and keeps the reserve that lets a control-file save succeed on a full disk.
//!
//! Invariants:
//! - Only completed segments of the store's timeline wholly below a `backup_lsn` read from the
//!   *durable* control file are ever freed here, oldest first: freeing never removes WAL that is
//!   not in remote storage, and a crash right after leaves a control file that still agrees.
//! - A preallocation either completes (fsynced, renamed into place) or leaves nothing behind.
//! - The reserve file (`space.reserve`, [`RESERVE_BYTES`]) is given back, a slice at a time, only
//!   to a control-file save that records uploads on a full disk, and filled again only when that
//!   much is free beyond the next segment; so a save that records uploads never needs the space
//!   those uploads would free, and a segment never takes the reserve's room.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use control_file::Lsn;
use tracing::{info, warn};

use crate::wal::store::{LocalSegment, fsync_dir, list_completed_segments};

/// File name of the reserve, in the cluster directory next to the control file.
pub(crate) const RESERVE_FILE_NAME: &str = "space.reserve";
/// Size of the reserve: room for many control-file saves (a control file is a few KiB).
pub(crate) const RESERVE_BYTES: u64 = 1 << 20;
/// Suffix of a file being preallocated or written before its rename; never holds WAL.
pub(crate) const PREALLOC_SUFFIX: &str = ".prealloc";
const ZERO_CHUNK: usize = 1 << 20;

/// The disk cannot hold what the cluster needs next and nothing more can be freed.
#[derive(Debug, thiserror::Error)]
#[error(
    "disk full: {needed} bytes needed in {} but {available} available and nothing uploaded \
     left to free",
    dir.display()
)]
pub(crate) struct DiskFull {
    pub dir: PathBuf,
    pub needed: u64,
    pub available: u64,
}

/// Where the free space of a directory is read from: the filesystem, or (in tests) a disk of a
/// given capacity.
pub(crate) trait SpaceProbe: Send + Sync {
    /// Bytes an unprivileged writer can still allocate on the filesystem of `dir`.
    fn available(&self, dir: &Path) -> io::Result<u64>;

    /// Called before `bytes` more are allocated in `dir`; the real filesystem answers with the
    /// write itself (ENOSPC), a test disk answers here.
    fn before_write(&self, _dir: &Path, _bytes: u64) -> io::Result<()> {
        Ok(())
    }
}

/// The real filesystem, through `statvfs`.
pub(crate) struct Statvfs;

impl SpaceProbe for Statvfs {
    fn available(&self, dir: &Path) -> io::Result<u64> {
        statvfs(dir).map(|s| s.available)
    }
}

/// Capacity and free space of a filesystem.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FsSpace {
    pub total: u64,
    pub available: u64,
}

/// `statvfs(2)` of the filesystem holding `dir`.
pub(crate) fn statvfs(dir: &Path) -> io::Result<FsSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` points to writable memory of
    // the right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so the struct is initialised.
    let st = unsafe { st.assume_init() };
    // The field types differ between libc targets (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    let (frsize, blocks, bavail) = (st.f_frsize as u64, st.f_blocks as u64, st.f_bavail as u64);
    Ok(FsSpace {
        total: blocks.saturating_mul(frsize),
        available: bavail.saturating_mul(frsize),
    })
}

/// True when an error (anywhere in its chain) is the filesystem being out of space or quota.
pub(crate) fn is_out_of_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<DiskFull>().is_some()
            || c.downcast_ref::<io::Error>()
                .is_some_and(|io| matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
    })
}

/// True when the error is a [`DiskFull`]: room for a new segment could not be made, and nothing
/// was written or changed, so the same write may simply be retried. A raw ENOSPC from a write
/// or an fsync is not: after a failed fsync the store must be reopened from disk, never retried.
pub(crate) fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<DiskFull>().is_some())
}

fn is_enospc(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// What a WAL store may free when it needs room, and how it measures room: read from the
/// follower's copy of the durable control file.
#[derive(Clone)]
pub(crate) struct SpacePolicy {
    pub probe: Arc<dyn SpaceProbe>,
    /// The durable `backup_lsn` (every full segment below it is in remote storage), or None when
    /// nothing may be freed (no control file yet).
    pub backup_lsn: Arc<dyn Fn() -> Option<Lsn> + Send + Sync>,
    /// The reserve file: whatever it misses of its full size must stay free for refilling it.
    pub reserve: Option<PathBuf>,
    /// Prepare the next segment's file ahead, off the commit path (`wal::spare`). Off for tools
    /// and for tests that count the files of a directory.
    pub spare: bool,
}

impl SpacePolicy {
    /// Nothing may be freed; space read from the filesystem. For stores opened outside a
    /// running cluster (tools, tests).
    pub(crate) fn none() -> SpacePolicy {
        SpacePolicy {
            probe: Arc::new(Statvfs),
            backup_lsn: Arc::new(|| None),
            reserve: None,
            spare: false,
        }
    }

    /// Bytes that must stay free besides `bytes` for the reserve to be filled again.
    fn headroom(&self) -> u64 {
        match &self.reserve {
            Some(path) => Reserve {
                path: path.to_path_buf(),
            }
            .missing(),
            None => 0,
        }
    }

    /// Makes room for `bytes` more in `dir`: when short, frees uploaded segments of `timeline`
    /// (oldest first, keeping those at or above `keep_from_segno`) until enough is available.
    /// Returns [`DiskFull`] when even that is not enough.
    pub(crate) fn make_room(
        &self,
        dir: &Path,
        seg_size: u32,
        timeline: u32,
        bytes: u64,
    ) -> Result<()> {
        let needed = bytes + self.headroom();
        let mut available = self
            .probe
            .available(dir)
            .with_context(|| format!("cannot read the free space of {}", dir.display()))?;
        if available >= needed {
            return Ok(());
        }
        let backup_segno = (self.backup_lsn)().map(|l| l.segment_number(seg_size));
        for seg in removable_segments(dir, seg_size, timeline, backup_segno)? {
            if available >= needed {
                break;
            }
            remove_segment(&seg)?;
            available = self.probe.available(dir)?;
        }
        if available >= needed {
            return Ok(());
        }
        Err(DiskFull {
            dir: dir.to_path_buf(),
            needed,
            available,
        }
        .into())
    }
}

/// Completed segments of `timeline` wholly below `backup_segno` (in remote storage by the
/// durable control file), oldest first. None: nothing is known to be uploaded.
pub(crate) fn removable_segments(
    dir: &Path,
    seg_size: u32,
    timeline: u32,
    backup_segno: Option<u64>,
) -> Result<Vec<LocalSegment>> {
    let Some(backup_segno) = backup_segno else {
        return Ok(Vec::new());
    };
    let mut segments = list_completed_segments(dir, seg_size)?;
    segments.retain(|s| s.timeline == timeline && s.segno < backup_segno);
    Ok(segments)
}

/// Removes one uploaded local segment; one already gone (the manager removed it) is fine.
pub(crate) fn remove_segment(seg: &LocalSegment) -> Result<()> {
    match fs::remove_file(&seg.path) {
        Ok(()) => {
            info!(segment = %seg.path.display(), "removed uploaded local segment to free space");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", seg.path.display())),
    }
}

/// Writes `len` zero bytes to `tmp`, fsyncs it and renames it to `dest`, then fsyncs the
/// directory. On any failure the temp file is removed, so a failed preallocation (a full disk
/// first of all) leaves nothing behind.
pub(crate) fn preallocate(
    tmp: &Path,
    dest: &Path,
    len: u64,
    probe: &dyn SpaceProbe,
) -> Result<File> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let result = (|| -> io::Result<File> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(tmp)?;
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(ZERO_CHUNK);
            probe.before_write(dir, n as u64)?;
            file.write_all(&zeros[..n])?;
            left -= n;
        }
        file.sync_all()?;
        fs::rename(tmp, dest)?;
        Ok(file)
    })();
    match result {
        Ok(file) => {
            fsync_dir(dir)?;
            Ok(file)
        }
        Err(e) => {
            match fs::remove_file(tmp) {
                Err(rm) if rm.kind() != io::ErrorKind::NotFound => {
                    warn!(path = %tmp.display(), error = %rm, "cannot remove a failed preallocation");
                }
                _ => {}
            }
            if is_enospc(&e) {
                return Err(anyhow::Error::new(DiskFull {
                    dir: dir.to_path_buf(),
                    needed: len,
                    available: probe.available(dir).unwrap_or(0),
                }))
                .with_context(|| format!("cannot preallocate {}", dest.display()));
            }
            Err(e).with_context(|| format!("cannot preallocate {}", dest.display()))
        }
    }
}

/// Removes `.prealloc` files left by a crash during a preallocation or a history-file write;
/// they never hold WAL.
pub(crate) fn remove_leftover_temp_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(PREALLOC_SUFFIX) || crate::wal::spare::is_spare_temp(&name) {
            fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            info!(path = %entry.path().display(), "removed the temp file of an unfinished write");
        }
    }
    Ok(())
}

/// The reserve file of one cluster: [`RESERVE_BYTES`] kept allocated so that control-file saves
/// that record uploads can still succeed when everything else is full. It is given back in
/// slices (the file is shortened), one per save that needs room, so a whole run of such saves
/// fits, and the room is never handed to the filesystem before the save that needs it.
#[derive(Clone, Debug)]
pub(crate) struct Reserve {
    path: PathBuf,
}

impl Reserve {
    pub(crate) fn new(cluster_dir: &Path) -> Reserve {
        Reserve {
            path: cluster_dir.join(RESERVE_FILE_NAME),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the reserve holds now (0 when its file is missing).
    pub(crate) fn held(&self) -> u64 {
        fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Bytes missing from a full reserve: room a new segment must leave free.
    pub(crate) fn missing(&self) -> u64 {
        RESERVE_BYTES.saturating_sub(self.held())
    }

    /// Gives `bytes` of the reserve back to the filesystem (shortening its file). True when it
    /// held anything to give.
    pub(crate) fn release(&self, bytes: u64) -> Result<bool> {
        let held = self.held();
        if held == 0 {
            return Ok(false);
        }
        let keep = held.saturating_sub(bytes);
        OpenOptions::new()
            .write(true)
            .open(&self.path)
            .and_then(|f| f.set_len(keep))
            .with_context(|| format!("cannot shorten {}", self.path.display()))?;
        warn!(path = %self.path.display(), released = held - keep, left = keep,
              "disk full: gave part of the space reserve to a control-file save");
        Ok(true)
    }

    /// Fills the reserve up to [`RESERVE_BYTES`] when `spare` bytes beyond what is missing are
    /// free (the room the next segment needs, so the reserve never takes what ingest needs
    /// first). True when full afterwards; a fill that runs out of room is undone.
    pub(crate) fn ensure(&self, probe: &dyn SpaceProbe, spare: u64) -> Result<bool> {
        let held = self.held();
        let missing = RESERVE_BYTES.saturating_sub(held);
        if missing == 0 {
            return Ok(true);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let available = probe
            .available(dir)
            .with_context(|| format!("cannot read the free space of {}", dir.display()))?;
        if available < missing + spare {
            return Ok(false);
        }
        let grow = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            probe.before_write(dir, missing)?;
            f.write_all(&vec![0u8; missing as usize])?;
            f.sync_all()
        };
        match grow() {
            Ok(()) => {
                fsync_dir(dir)?;
                info!(path = %self.path.display(), bytes = RESERVE_BYTES, "space reserve in place");
                Ok(true)
            }
            Err(e) => {
                // Undo a partial fill; what was held before stays held.
                let _ = OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .and_then(|f| f.set_len(held));
                if is_enospc(&e) {
                    return Ok(false);
                }
                Err(e).with_context(|| format!("cannot fill {}", self.path.display()))
            }
        }
    }
}

/// The warning for a data directory too small to rotate segments: it must hold the segment
/// being written, the next one, and the reserve. None when it is large enough.
pub(crate) fn capacity_warning(total: u64, seg_size: u64, local_retention: u64) -> Option<String> {
    let minimum = 2 * seg_size + RESERVE_BYTES;
    if total < minimum {
        return Some(format!(
            "the data directory's filesystem holds {total} bytes, less than two WAL segments \
             plus the space reserve ({minimum} bytes): the safekeeper will stop acknowledging \
             WAL at the next segment switch"
        ));
    }
    let wanted = local_retention.saturating_add(minimum);
    if total < wanted {
        return Some(format!(
            "--local-retention {local_retention} plus two segments and the reserve ({wanted} \
             bytes) exceeds the data directory's filesystem ({total} bytes): uploaded segments \
             inside the retention will be removed when space runs short"
        ));
    }
    None
}

#[cfg(test)]
mod tests;
