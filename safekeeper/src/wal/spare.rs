//! The spare segment of one WAL directory: a zero-filled, fsynced file of one segment's size,
//! prepared off the commit path once the current segment is half written (`WalStore::write`), so
//! that the segment switch is a rename instead of writing and fsyncing 16 MiB of zeros while the
//! primary waits (PostgreSQL recycles or preallocates its WAL segments ahead for the same
//! reason). A cluster whose WAL does not move never gets one: a hundred idle clusters cost no
//! disk for spares.
//!
//! Owns the file `next-segment.zeroed` in the WAL directory and the temporary files that become
//! it (`next-segment.zeroed.tmp.PID.N`).
//!
//! Invariants:
//! - The spare holds only zeros, its full length, durably: it is written under a temporary name
//!   unique to one preparation, fsynced, and only then renamed to `next-segment.zeroed` (and the
//!   directory fsynced). A preparation never writes to a file after that rename, and two
//!   preparations never share a file, so a spare taken into use is never written by anyone but
//!   the WAL store afterwards.
//! - Taking the spare is one rename to the segment's `.partial` name followed by a directory
//!   fsync: the new segment is durable zeros before the first WAL byte is written to it, exactly
//!   as a segment preallocated inline. A spare of another size (a leftover from a cluster with
//!   another segment size) is never used; it is removed.
//! - Preparing a spare never frees anything and never takes space a segment switch may need: it
//!   starts only when the filesystem has room for it plus [`SPARE_HEADROOM_SEGMENTS`] more
//!   segments and the control-file reserve; a failure (a full disk first of all) leaves nothing
//!   behind and only means the next switch preallocates inline, as without a spare.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tracing::{debug, warn};

use crate::wal::space::{RESERVE_BYTES, SpaceProbe};
use crate::wal::store::fsync_dir;

/// File name of the spare in the WAL directory.
pub(crate) const SPARE_FILE_NAME: &str = "next-segment.zeroed";
/// Prefix of a spare being written (never holds WAL; removed when the store opens).
pub(crate) const SPARE_TMP_PREFIX: &str = "next-segment.zeroed.tmp.";
/// Segments that must still fit on the filesystem besides the spare for one to be prepared.
pub(crate) const SPARE_HEADROOM_SEGMENTS: u64 = 2;
const ZERO_CHUNK: usize = 1 << 20;

/// Distinguishes the temporary files of successive preparations in one process.
static PREPARATION: AtomicU64 = AtomicU64::new(0);

/// The spare of one WAL directory and the preparation in flight, if any.
pub(crate) struct Spare {
    dir: PathBuf,
    seg_size: u32,
    probe: Arc<dyn SpaceProbe>,
    preparing: Option<JoinHandle<()>>,
}

impl Spare {
    pub(crate) fn new(dir: &Path, seg_size: u32, probe: Arc<dyn SpaceProbe>) -> Spare {
        Spare {
            dir: dir.to_path_buf(),
            seg_size,
            probe,
            preparing: None,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(SPARE_FILE_NAME)
    }

    /// Moves the spare to `dest` (the new segment's `.partial` name) and opens it for writing;
    /// `None` when there is no usable spare (none ready yet, or one of the wrong size, which is
    /// removed). Never waits for a preparation in flight.
    pub(crate) fn take(&mut self, dest: &Path) -> Result<Option<File>> {
        let src = self.path();
        let len = match fs::metadata(&src) {
            Ok(meta) => meta.len(),
            Err(_) => return Ok(None),
        };
        if len != u64::from(self.seg_size) {
            warn!(path = %src.display(), len, seg_size = self.seg_size,
                  "removing a spare segment of the wrong size");
            let _ = fs::remove_file(&src);
            return Ok(None);
        }
        fs::rename(&src, dest)
            .with_context(|| format!("cannot rename {} to {}", src.display(), dest.display()))?;
        fsync_dir(&self.dir)?;
        let file = OpenOptions::new()
            .write(true)
            .open(dest)
            .with_context(|| format!("cannot open {}", dest.display()))?;
        debug!(segment = %dest.display(), "spare segment taken");
        Ok(Some(file))
    }

    /// Starts preparing the next spare on a thread of its own, unless one exists, one is being
    /// prepared, or the filesystem is short of room (see the module invariants).
    pub(crate) fn prepare_next(&mut self) {
        if self.preparing.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some(done) = self.preparing.take() {
            let _ = done.join();
        }
        if self.path().exists() {
            return;
        }
        let seg = u64::from(self.seg_size);
        let needed = seg * (1 + SPARE_HEADROOM_SEGMENTS) + RESERVE_BYTES;
        match self.probe.available(&self.dir) {
            Ok(available) if available >= needed => {}
            Ok(available) => {
                debug!(
                    available,
                    needed, "no spare segment prepared: the disk is short of room"
                );
                return;
            }
            Err(e) => {
                debug!(error = %e, "no spare segment prepared: cannot read the free space");
                return;
            }
        }
        let (dir, probe) = (self.dir.clone(), self.probe.clone());
        let n = PREPARATION.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{SPARE_TMP_PREFIX}{}.{n}", std::process::id()));
        let spawned = std::thread::Builder::new()
            .name("sk-spare".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                match write_zeroed(&tmp, &dir.join(SPARE_FILE_NAME), seg, &*probe) {
                    Ok(()) => debug!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "spare segment prepared"
                    ),
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        debug!(error = %format!("{e:#}"), "cannot prepare a spare segment");
                    }
                }
            });
        match spawned {
            Ok(handle) => self.preparing = Some(handle),
            Err(e) => debug!(error = %e, "cannot start the spare segment's thread"),
        }
    }

    /// Waits for a preparation in flight (tests, and an orderly close).
    #[cfg(test)]
    pub(crate) fn wait(&mut self) {
        if let Some(h) = self.preparing.take() {
            let _ = h.join();
        }
    }
}

/// `len` zeros in a new file `tmp`, fsynced, renamed to `dest`, directory fsynced.
fn write_zeroed(tmp: &Path, dest: &Path, len: u64, probe: &dyn SpaceProbe) -> Result<()> {
    use std::io::Write;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(ZERO_CHUNK);
        probe.before_write(dir, n as u64)?;
        file.write_all(&zeros[..n])
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        left -= n;
    }
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", tmp.display()))?;
    drop(file);
    fs::rename(tmp, dest)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
    fsync_dir(dir)
}

/// Whether `name` is a spare being written (a leftover once no preparation runs).
pub(crate) fn is_spare_temp(name: &str) -> bool {
    name.starts_with(SPARE_TMP_PREFIX)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const SEG: u32 = 1 << 20;

    /// A filesystem with a fixed amount of free space.
    struct Free(u64);

    impl SpaceProbe for Free {
        fn available(&self, _dir: &Path) -> io::Result<u64> {
            Ok(self.0)
        }
    }

    fn plenty() -> Arc<dyn SpaceProbe> {
        Arc::new(Free(u64::MAX))
    }

    #[test]
    fn a_prepared_spare_is_zeros_of_the_segment_size_and_becomes_the_segment_by_rename() {
        let dir = tempfile::tempdir().unwrap();
        let mut spare = Spare::new(dir.path(), SEG, plenty());
        spare.prepare_next();
        spare.wait();
        let path = dir.path().join(SPARE_FILE_NAME);
        let content = fs::read(&path).unwrap();
        assert_eq!(content.len(), SEG as usize);
        assert!(content.iter().all(|b| *b == 0));
        let inode = fs::metadata(&path).unwrap().ino();

        let dest = dir.path().join("000000010000000000000002.partial");
        let file = spare.take(&dest).unwrap().expect("a spare is ready");
        drop(file);
        assert_eq!(
            fs::metadata(&dest).unwrap().ino(),
            inode,
            "taken by rename, not copied"
        );
        assert!(!path.exists());
        // Nothing left but the segment: no temporary file of the preparation.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(
            spare.take(&dir.path().join("x")).unwrap().is_none(),
            "no second spare yet"
        );
    }

    #[test]
    fn a_spare_is_prepared_only_with_room_for_it_and_two_more_segments() {
        let dir = tempfile::tempdir().unwrap();
        let tight = u64::from(SEG) * (1 + SPARE_HEADROOM_SEGMENTS) + RESERVE_BYTES - 1;
        let mut spare = Spare::new(dir.path(), SEG, Arc::new(Free(tight)));
        spare.prepare_next();
        spare.wait();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        let enough = Arc::new(Free(tight + 1));
        let mut spare = Spare::new(dir.path(), SEG, enough);
        spare.prepare_next();
        spare.wait();
        assert!(dir.path().join(SPARE_FILE_NAME).exists());
    }

    #[test]
    fn a_spare_of_another_size_is_removed_not_used() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SPARE_FILE_NAME), vec![0u8; 4096]).unwrap();
        let mut spare = Spare::new(dir.path(), SEG, plenty());
        let dest = dir.path().join("seg.partial");
        assert!(spare.take(&dest).unwrap().is_none());
        assert!(!dest.exists());
        assert!(!dir.path().join(SPARE_FILE_NAME).exists());
    }

    #[test]
    fn a_failed_preparation_leaves_nothing() {
        /// Room is reported, but every write fails as on a full disk.
        struct Full;
        impl SpaceProbe for Full {
            fn available(&self, _dir: &Path) -> io::Result<u64> {
                Ok(u64::MAX)
            }
            fn before_write(&self, _dir: &Path, _bytes: u64) -> io::Result<()> {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut spare = Spare::new(dir.path(), SEG, Arc::new(Full));
        spare.prepare_next();
        spare.wait();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn leftover_temporary_files_are_recognised() {
        assert!(is_spare_temp(&format!("{SPARE_TMP_PREFIX}123.4")));
        assert!(!is_spare_temp(SPARE_FILE_NAME));
        assert!(!is_spare_temp("000000010000000000000002.partial"));
    }
}
