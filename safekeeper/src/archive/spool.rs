//! The prefetch spool of `restore-wal --prefetch N`: full segments fetched ahead of PostgreSQL's
//! requests, kept in a local directory until PostgreSQL asks for them.
//!
//! Layout of the spool directory (by default `.safekeeper-prefetch` next to `%p`, i.e. inside
//! `pg_wal`, on the same filesystem so serving a file is a rename): one subdirectory per archive,
//! named by a hash of the remote URL and cluster, so segments fetched from one archive can never
//! be served for another's request of the same name, even while a worker of the first is still
//! storing (checking a shared `SOURCE` file before each store would leave a window). In it:
//! - `SEGMENT`: a complete, verified, fsynced full segment (written as `.SEGMENT.tmp.PID`, renamed);
//!   its modification time is when the worker last confirmed that the archive still holds the
//!   very object it was read from (see "fresh" below);
//! - `SEGMENT.claim`: a prefetch worker (its pid inside) is downloading SEGMENT;
//! - `SOURCE`: the remote URL and cluster the spooled files came from;
//! - `SERVED`: the last segment served to PostgreSQL; workers skip it and everything before it;
//! - `WORKER`: locked (`flock`, exclusive) by the one prefetch worker serving this spool, for as
//!   long as it runs; its pid inside, for people;
//! - `prefetch.log`: the worker's log.
//!
//! The spool lives as long as its worker: the worker removes the whole directory when it exits
//! (PostgreSQL stopped asking, or recovery ended), so nothing stays behind in `pg_wal`. It does so
//! by renaming the directory away first ([`Spool::close`]) and then checking that no request
//! reached it in between: a request that did is kept (the directory is put back), and a
//! `restore-wal` that finds the directory gone simply fetches directly and starts a new worker.
//!
//! Invariants:
//! - only full segments are ever spooled (their content is fixed by their name within one cluster's
//!   archive), never partials, which change as the safekeeper uploads newer versions;
//! - segments of another remote or cluster are never served: they live in another subdirectory
//!   (and a subdirectory whose `SOURCE` does not match, a hash collision, is emptied first);
//! - serving a segment removes it from the spool, and every spooled segment of another timeline
//!   or at or below the one served is removed, so a timeline switch invalidates what was
//!   prefetched on the old timeline and the spool holds at most about N segments; a worker never
//!   stores a segment at or below the last one served, or of another timeline than it
//!   (PostgreSQL has moved past it);
//! - when a timeline's WAL ends (a partial was served, or a segment is not in the archive) its
//!   spooled segments are removed: sequential replay on it cannot reach them;
//! - a spooled segment is served only while *fresh*: confirmed at most [`MAX_UNCHECKED_AGE`] ago
//!   (its mtime). The worker confirms every spooled segment older than a couple of seconds with a
//!   HEAD (same size, crc32c and modification time as the object it read) and drops it when the
//!   object was replaced or removed; one it could not confirm (a worker killed, the storage
//!   failing) goes stale and the foreground fetches directly. So a segment replaced or removed
//!   in the archive after it was spooled is not served once that is seen (normally within
//!   seconds) and never after [`MAX_UNCHECKED_AGE`];
//! - a claim whose process is gone is stale and ignored, so a killed worker never blocks anyone;
//!   so is a `WORKER` file nobody holds locked (the kernel drops a dead process's locks);
//! - a file vanishing under a reader (the worker closing the spool) is a miss, never an error.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::looks_like_segment_name;
use crate::wal::store::fsync_dir;

const SOURCE_FILE: &str = "SOURCE";
const SERVED_FILE: &str = "SERVED";
const CLAIM_SUFFIX: &str = ".claim";
const WORKER_FILE: &str = "WORKER";
/// Longest a spooled segment is served after its object was last confirmed in the archive.
pub(crate) const MAX_UNCHECKED_AGE: Duration = Duration::from_secs(10);

/// A spool directory bound to one remote and cluster.
#[derive(Debug, Clone)]
pub(crate) struct Spool {
    /// The directory given (`.safekeeper-prefetch` or `--spool-dir`).
    base: PathBuf,
    /// This archive's subdirectory of `base`.
    dir: PathBuf,
}

impl Spool {
    /// Where the spool of `remote`/`cluster` in `base` is (nothing created).
    fn locate(base: &Path, remote: &str, cluster: &str) -> Spool {
        let digest =
            ring::digest::digest(&ring::digest::SHA256, source(remote, cluster).as_bytes());
        let id: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Spool {
            base: base.to_path_buf(),
            dir: base.join(id),
        }
    }

    /// The spool of `remote`/`cluster` in `base` if it exists (a worker runs or ran for it):
    /// looking creates nothing, so a call that starts no worker leaves nothing behind.
    pub(crate) fn open_existing(base: &Path, remote: &str, cluster: &str) -> Result<Option<Spool>> {
        if !Spool::locate(base, remote, cluster).dir.is_dir() {
            return Ok(None);
        }
        Spool::open(base, remote, cluster).map(Some)
    }

    /// Opens (creating it if needed) the spool of `remote`/`cluster` in `base`, emptying it if it
    /// was filled from elsewhere (see the module documentation).
    pub(crate) fn open(base: &Path, remote: &str, cluster: &str) -> Result<Spool> {
        let spool = Spool::locate(base, remote, cluster);
        fs::create_dir_all(&spool.dir).with_context(|| {
            format!("cannot create the spool directory {}", spool.dir.display())
        })?;
        let source = source(remote, cluster);
        let path = spool.dir.join(SOURCE_FILE);
        match fs::read_to_string(&path) {
            Ok(s) if s == source => {}
            Ok(_) | Err(_) => {
                spool.remove_segments(|_| true)?;
                fs::write(&path, source)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        Ok(spool)
    }

    /// This archive's directory (where segments, claims and `SERVED` are).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The spool directory given, holding one directory per archive.
    pub(crate) fn base(&self) -> &Path {
        &self.base
    }

    fn path(&self, segment: &str) -> PathBuf {
        self.dir.join(segment)
    }

    /// Takes the worker lock: `None` when a live worker holds it.
    pub(crate) fn try_lock_worker(&self) -> Result<Option<WorkerLock>> {
        let path = self.dir.join(WORKER_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        // For people only: the lock is what counts.
        let _ = file
            .set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()));
        Ok(Some(WorkerLock { _file: file }))
    }

    /// Whether a worker runs for this spool (holds the `WORKER` lock).
    pub(crate) fn worker_running(&self) -> bool {
        let Ok(file) = File::open(self.dir.join(WORKER_FILE)) else {
            return false;
        };
        matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
    }

    /// The last segment served to PostgreSQL, if any.
    pub(crate) fn served(&self) -> Option<String> {
        fs::read_to_string(self.dir.join(SERVED_FILE))
            .ok()
            .filter(|s| looks_like_segment_name(s))
    }

    /// Removes the spool directory, unless a request came in since the worker last read
    /// `SERVED` (`seen`): then it stays and this returns false. Called by the worker holding
    /// the lock, with no download in flight. See the module documentation.
    pub(crate) fn close(&self, seen: Option<&str>) -> Result<bool> {
        let Some(name) = self.dir.file_name().and_then(|n| n.to_str()) else {
            anyhow::bail!("spool {} has no directory name", self.dir.display());
        };
        let closing = self
            .dir
            .with_file_name(format!(".{name}.closing.{}", std::process::id()));
        fs::rename(&self.dir, &closing).with_context(|| {
            format!(
                "cannot move {} to {}",
                self.dir.display(),
                closing.display()
            )
        })?;
        let served = fs::read_to_string(closing.join(SERVED_FILE)).ok();
        if served.as_deref() != seen && fs::rename(&closing, &self.dir).is_ok() {
            return Ok(false);
        }
        // Either nothing new, or a `restore-wal` already made a new spool directory (it then
        // starts its own worker: this one holds the lock of the old directory only).
        fs::remove_dir_all(&closing)
            .with_context(|| format!("cannot remove {}", closing.display()))?;
        // The base goes too unless another archive's spool (or a new one of ours) is in it.
        let _ = fs::remove_dir(&self.base);
        Ok(true)
    }

    /// Removes the spool (when no worker could be started for it).
    pub(crate) fn discard(&self) {
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir(&self.base);
    }

    /// Whether `segment` is spooled or being fetched by a live worker.
    pub(crate) fn has_or_claimed(&self, segment: &str) -> bool {
        self.path(segment).exists() || self.live_claim(segment)
    }

    /// Moves `segment` to `dest` if it is spooled, waiting up to `wait` for a worker that is
    /// fetching it right now. Returns whether `dest` now holds it.
    pub(crate) fn take(&self, segment: &str, dest: &Path, wait: Duration) -> Result<bool> {
        let deadline = Instant::now() + wait;
        let src = self.path(segment);
        loop {
            if let Ok(meta) = fs::metadata(&src) {
                if !is_fresh(&meta) {
                    // Not confirmed lately (see the module documentation): fetch directly.
                    return Ok(false);
                }
                match move_into_place(&src, dest) {
                    Ok(()) => return Ok(true),
                    // The worker closed the spool under us: a miss.
                    Err(e) if is_not_found(&e) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            if !self.live_claim(segment) || Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Marks spooled `segment` as confirmed in the archive just now (fresh again); false when it
    /// is not spooled any more.
    pub(crate) fn confirm(&self, segment: &str) -> Result<bool> {
        let path = self.path(segment);
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        file.set_modified(std::time::SystemTime::now())
            .with_context(|| format!("cannot set the time of {}", path.display()))?;
        Ok(true)
    }

    /// Removes spooled `segment` (its object changed in the archive, or cannot be confirmed).
    pub(crate) fn drop_segment(&self, segment: &str) -> Result<()> {
        self.remove_segments(|name| name == segment)
    }

    /// Removes every spooled segment (left by a worker that is gone: nobody can confirm them).
    pub(crate) fn drop_all_segments(&self) -> Result<()> {
        self.remove_segments(|_| true)
    }

    /// Records that full segment `served` went to PostgreSQL and removes what it will not ask
    /// for any more: spooled segments of other timelines and those at or below `served`.
    pub(crate) fn mark_served(&self, served: &str) -> Result<()> {
        let path = self.dir.join(SERVED_FILE);
        fs::write(&path, served).with_context(|| format!("cannot write {}", path.display()))?;
        let timeline = timeline_of(served);
        self.remove_segments(|name| timeline_of(name) != timeline || name <= served)
    }

    /// The WAL of `segment`'s timeline ends at or before `segment`: drop that timeline's spool.
    pub(crate) fn forget_timeline_of(&self, segment: &str) -> Result<()> {
        let timeline = timeline_of(segment);
        self.remove_segments(|name| timeline_of(name) == timeline)
    }

    /// Whether PostgreSQL has already moved past `segment`: it was served a later segment of
    /// that timeline, or a segment of another timeline.
    fn is_behind(&self, segment: &str) -> bool {
        match fs::read_to_string(self.dir.join(SERVED_FILE)) {
            Ok(served) => {
                timeline_of(&served) != timeline_of(segment) || segment <= served.as_str()
            }
            Err(_) => false,
        }
    }

    /// Claims `segment` for download; `None` when it is spooled, claimed by a live process, or
    /// already behind PostgreSQL.
    pub(crate) fn claim(&self, segment: &str) -> Result<Option<Claim>> {
        if self.path(segment).exists() || self.is_behind(segment) {
            return Ok(None);
        }
        let path = self.dir.join(format!("{segment}{CLAIM_SUFFIX}"));
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(Some(Claim { path }));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if self.live_claim(segment) {
                        return Ok(None);
                    }
                    let _ = fs::remove_file(&path);
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
        }
        Ok(None)
    }

    /// Stores a downloaded segment durably under its name (unless PostgreSQL moved past it
    /// meanwhile) and releases the claim. Returns whether it was stored.
    pub(crate) fn store(&self, segment: &str, data: &[u8], claim: Claim) -> Result<bool> {
        let wanted = !self.is_behind(segment);
        if wanted {
            write_file_atomic(&self.path(segment), data)?;
        }
        drop(claim);
        Ok(wanted)
    }

    /// Whether a claim file for `segment` names a live process.
    fn live_claim(&self, segment: &str) -> bool {
        let path = self.dir.join(format!("{segment}{CLAIM_SUFFIX}"));
        let Ok(text) = fs::read_to_string(&path) else {
            return false;
        };
        match text.trim().parse::<i32>() {
            Ok(pid) if pid > 0 => process_alive(pid),
            // Being written right now by its creator.
            _ => path
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(5)),
        }
    }

    /// Removes spooled segment files (not claims, not temp files) whose name matches.
    fn remove_segments(&self, matches: impl Fn(&str) -> bool) -> Result<()> {
        let entries = fs::read_dir(&self.dir)
            .with_context(|| format!("cannot read the spool {}", self.dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", self.dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if looks_like_segment_name(name) && matches(name) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("cannot remove {}", entry.path().display()));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The worker lock ([`Spool::try_lock_worker`]): held until dropped (or the process ends).
#[derive(Debug)]
pub(crate) struct WorkerLock {
    _file: File,
}

/// Whether a spooled file was confirmed in the archive at most [`MAX_UNCHECKED_AGE`] ago. A
/// time in the future (the clock stepped back) is not fresh: a miss is only slower.
fn is_fresh(meta: &fs::Metadata) -> bool {
    meta.modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age <= MAX_UNCHECKED_AGE)
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::NotFound)
    })
}

/// A download in progress; removing the claim file when dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    path: PathBuf,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What `SOURCE` holds: the archive a spool is filled from.
fn source(remote: &str, cluster: &str) -> String {
    format!("remote={remote}\ncluster={cluster}\n")
}

/// The 8 hex digits of a segment name's timeline.
fn timeline_of(segment: &str) -> &str {
    segment.get(..8).unwrap_or(segment)
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Writes `data` to `path` so that `path` is either absent/unchanged or complete: a temp file in
/// the same directory, fsynced, renamed over `path`, then the directory fsynced.
pub(crate) fn write_file_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    fsync_dir(&dir)
}

/// Moves a complete file into place: a rename when on the same filesystem, else a durable copy.
fn move_into_place(src: &Path, dest: &Path) -> Result<()> {
    match fs::rename(src, dest) {
        Ok(()) => fsync_dir(&parent_dir(dest)),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let data = fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
            write_file_atomic(dest, &data)?;
            let _ = fs::remove_file(src);
            Ok(())
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot move {} to {}", src.display(), dest.display()))
        }
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &str = "000000010000000000000001";
    const S2: &str = "000000010000000000000002";
    const S3: &str = "000000010000000000000003";
    const T2: &str = "000000020000000000000003";

    fn names(spool: &Spool) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(spool.dir())
            .expect("read spool")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| looks_like_segment_name(n))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn claims_store_take_and_invalidate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(&dir.path().join("spool"), "file:///a", "main").expect("open");
        for s in [S2, S3, T2] {
            let claim = spool.claim(s).expect("claim").expect("free");
            assert!(
                spool.claim(s).expect("claim").is_none(),
                "claimed by a live process"
            );
            spool.store(s, s.as_bytes(), claim).expect("store");
            assert!(spool.claim(s).expect("claim").is_none(), "already spooled");
        }
        // A claim left by a dead process is stale.
        fs::write(
            dir.path().join("spool").join(format!("{S1}.claim")),
            "2147483647",
        )
        .expect("w");
        assert!(spool.claim(S1).expect("claim").is_some());

        let dest = dir.path().join("RECOVERYXLOG");
        assert!(spool.take(S2, &dest, Duration::ZERO).expect("take"));
        assert_eq!(fs::read(&dest).expect("read"), S2.as_bytes());
        spool.mark_served(S2).expect("served");
        // Segment 3 of timeline 1 stays; timeline 2's is dropped; nothing at or below 2 is
        // stored any more.
        assert_eq!(names(&spool), vec![S3.to_string()]);
        let claim = spool.claim(S1);
        assert!(claim.expect("claim").is_none(), "behind PostgreSQL");

        spool.forget_timeline_of(S3).expect("forget");
        assert!(names(&spool).is_empty());
        assert!(!spool.take(S3, &dest, Duration::ZERO).expect("take"));
    }

    #[test]
    fn only_fresh_segments_are_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(&dir.path().join("spool"), "file:///a", "main").expect("open");
        let dest = dir.path().join("RECOVERYXLOG");
        for s in [S2, S3] {
            let claim = spool.claim(s).expect("claim").expect("free");
            assert!(spool.store(s, s.as_bytes(), claim).expect("store"));
        }
        let long_ago = std::time::SystemTime::now() - MAX_UNCHECKED_AGE - Duration::from_secs(1);
        for s in [S2, S3] {
            let f = OpenOptions::new()
                .write(true)
                .open(spool.path(s))
                .expect("open");
            f.set_modified(long_ago).expect("set time");
        }
        assert!(
            !spool.take(S2, &dest, Duration::ZERO).expect("take"),
            "not confirmed lately"
        );
        assert!(!dest.exists());
        assert!(spool.confirm(S2).expect("confirm"));
        assert!(spool.take(S2, &dest, Duration::ZERO).expect("take"));
        assert!(
            !spool.confirm(S2).expect("confirm"),
            "taken: nothing to confirm"
        );
        spool.drop_segment(S3).expect("drop");
        assert!(names(&spool).is_empty());
    }

    #[test]
    fn archives_have_separate_spools() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool");
        let spool = Spool::open(&path, "file:///a", "main").expect("open");
        let claim = spool.claim(S2).expect("claim").expect("free");
        spool.store(S2, b"x", claim).expect("store");
        assert_eq!(
            names(&Spool::open(&path, "file:///a", "main").expect("reopen")).len(),
            1
        );
        let other = Spool::open(&path, "file:///b", "main").expect("other remote");
        assert!(names(&other).is_empty());
        assert!(
            names(&Spool::open(&path, "file:///a", "other").expect("other cluster")).is_empty()
        );
        let dest = dir.path().join("RECOVERYXLOG");
        assert!(!other.take(S2, &dest, Duration::ZERO).expect("take"));
        assert_eq!(
            names(&spool),
            vec![S2.to_string()],
            "the first archive's spool is untouched"
        );
        // A subdirectory whose SOURCE names another archive is emptied before use.
        fs::write(spool.dir().join(SOURCE_FILE), "remote=x\ncluster=y\n").expect("w");
        assert!(names(&Spool::open(&path, "file:///a", "main").expect("reopen")).is_empty());
    }

    #[test]
    fn close_removes_everything_unless_a_request_came_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("spool");
        let spool = Spool::open(&base, "file:///a", "main").expect("open");
        spool.mark_served(S1).expect("served");
        let _lock = spool.try_lock_worker().expect("lock").expect("free");
        assert!(spool.worker_running());
        // A request after the worker last looked: the spool stays.
        assert!(!spool.close(None).expect("close"));
        assert_eq!(spool.served().as_deref(), Some(S1));
        assert!(spool.close(Some(S1)).expect("close"));
        assert!(
            !base.exists(),
            "nothing left: {:?}",
            fs::read_dir(dir.path()).map(|d| d.count())
        );
    }
}
