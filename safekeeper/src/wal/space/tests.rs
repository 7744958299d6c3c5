//! The space rules on a disk of a given capacity: a segment switch frees uploaded segments (and
//! only those), a full disk is a `DiskFull` that changes nothing, a preallocation that runs out
//! of room mid-way leaves nothing behind, and the store resumes once room appears.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::wal::store::{WalIdentity, WalStore};

const SEG: u32 = 1 << 20;

/// A disk of `capacity` bytes holding the files under `root` (plus `other`, a stranger's
/// files), enforcing the capacity on every write a preallocation makes.
struct VirtualDisk {
    root: PathBuf,
    capacity: u64,
    other: AtomicU64,
    /// Claims this much more than is really free (a writer racing us between check and write).
    optimism: AtomicU64,
}

impl VirtualDisk {
    fn new(root: &Path, capacity: u64) -> Arc<VirtualDisk> {
        Arc::new(VirtualDisk {
            root: root.to_path_buf(),
            capacity,
            other: AtomicU64::new(0),
            optimism: AtomicU64::new(0),
        })
    }

    fn used(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| match e.metadata() {
                            Ok(m) if m.is_dir() => walk(&e.path()),
                            Ok(m) => m.len(),
                            Err(_) => 0,
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.root) + self.other.load(Ordering::SeqCst)
    }

    fn really_free(&self) -> u64 {
        self.capacity.saturating_sub(self.used())
    }
}

impl SpaceProbe for VirtualDisk {
    fn available(&self, _dir: &Path) -> io::Result<u64> {
        Ok(self.really_free() + self.optimism.load(Ordering::SeqCst))
    }

    fn before_write(&self, _dir: &Path, bytes: u64) -> io::Result<()> {
        if bytes > self.really_free() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

fn identity() -> WalIdentity {
    WalIdentity {
        system_identifier: 1,
        timeline: 1,
        seg_size: SEG,
        page_magic: None,
    }
}

fn policy(disk: &Arc<VirtualDisk>, backup: &Arc<AtomicU64>, reserve: &Path) -> SpacePolicy {
    let backup = backup.clone();
    SpacePolicy {
        probe: disk.clone(),
        backup_lsn: Arc::new(move || match backup.load(Ordering::SeqCst) {
            0 => None,
            b => Some(Lsn(b)),
        }),
        reserve: Some(reserve.to_path_buf()),
        spare: false,
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// The scenario in small: room for two segments and the reserve. With nothing
/// uploaded the switch to a third segment is a `DiskFull` that writes nothing and leaves no
/// `.prealloc`; once the first segment is recorded as uploaded the same write frees it and
/// succeeds, and the WAL written is exactly the WAL received.
#[test]
fn a_segment_switch_frees_uploaded_segments_and_stalls_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let reserve = Reserve::new(dir.path());
    let disk = VirtualDisk::new(dir.path(), 2 * u64::from(SEG) + RESERVE_BYTES + 64 * 1024);
    assert!(reserve.ensure(&*disk, 0).unwrap());
    let backup = Arc::new(AtomicU64::new(0));
    let start = Lsn::from_segment(1, SEG);
    let mut store = WalStore::open(&wal, identity(), start)
        .unwrap()
        .with_space(policy(&disk, &backup, reserve.path()));
    let first = bytes(2 * SEG as usize, 1);
    store.write(start, &first).unwrap();
    store.flush().unwrap();
    let boundary = Lsn::from_segment(3, SEG);
    assert_eq!(store.flushed_lsn(), boundary);

    let more = bytes(1000, 2);
    let err = store.write(boundary, &more).unwrap_err();
    assert!(is_out_of_space(&err), "{err:#}");
    let full = err.downcast_ref::<DiskFull>().expect("a DiskFull");
    assert_eq!(full.needed, u64::from(SEG));
    assert!(full.available < u64::from(SEG));
    assert_eq!(
        store.written_lsn(),
        boundary,
        "nothing written past the boundary"
    );
    assert_eq!(store.flush().unwrap(), boundary);
    assert_eq!(
        names(&wal),
        ["000000010000000000000001", "000000010000000000000002"],
        "no .prealloc or .partial left behind"
    );

    // Segment 1 uploaded (durable backup_lsn at the start of segment 2): only it may go.
    backup.store(Lsn::from_segment(2, SEG).0, Ordering::SeqCst);
    store.write(boundary, &more).unwrap();
    assert_eq!(store.flush().unwrap(), boundary + more.len() as u64);
    assert_eq!(
        names(&wal),
        [
            "000000010000000000000002",
            "000000010000000000000003.partial"
        ]
    );
    assert_eq!(
        fs::read(wal.join("000000010000000000000002")).unwrap(),
        first[SEG as usize..]
    );
    let partial = fs::read(wal.join("000000010000000000000003.partial")).unwrap();
    assert_eq!(&partial[..more.len()], &more[..]);
    assert_eq!(
        reserve.held(),
        RESERVE_BYTES,
        "the store never touches the reserve"
    );
}

/// A preallocation that runs out of room half-way (another writer took the space after the
/// check) removes its temp file, reports `DiskFull`, and the store writes on once room appears.
#[test]
fn a_preallocation_that_hits_enospc_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let disk = VirtualDisk::new(dir.path(), u64::from(SEG) + SEG as u64 / 2 + RESERVE_BYTES);
    disk.optimism.store(u64::from(SEG), Ordering::SeqCst);
    let backup = Arc::new(AtomicU64::new(0));
    let reserve = dir.path().join(RESERVE_FILE_NAME);
    fs::write(&reserve, vec![0u8; RESERVE_BYTES as usize]).unwrap();
    let start = Lsn::from_segment(5, SEG);
    let mut store = WalStore::open(&wal, identity(), start)
        .unwrap()
        .with_space(policy(&disk, &backup, &reserve));
    store.write(start, b"x").unwrap(); // the first segment fits
    let boundary = Lsn::from_segment(6, SEG);
    let rest = bytes((boundary.0 - start.0) as usize - 1, 3);
    let err = store.write(start + 1, &[rest.as_slice(), b"next"].concat());
    let err = err.unwrap_err();
    assert!(is_out_of_space(&err), "{err:#}");
    assert_eq!(store.written_lsn(), boundary);
    assert_eq!(names(&wal), ["000000010000000000000005"]);

    disk.optimism.store(0, Ordering::SeqCst);
    backup.store(boundary.0, Ordering::SeqCst); // segment 5 uploaded
    store.write(boundary, b"next").unwrap();
    assert_eq!(store.flush().unwrap(), boundary + 4);
    assert_eq!(names(&wal), ["000000010000000000000006.partial"]);
}

/// Freeing never touches WAL that is not below the durable backup LSN, nor other timelines.
#[test]
fn only_uploaded_segments_of_the_timeline_are_removable() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000010000000000000003",
        "000000020000000000000001",
        "000000010000000000000004.partial",
    ] {
        fs::write(dir.path().join(name), b"").unwrap();
    }
    let segnos = |backup: Option<u64>| -> Vec<u64> {
        removable_segments(dir.path(), SEG, 1, backup)
            .unwrap()
            .iter()
            .map(|s| s.segno)
            .collect()
    };
    assert_eq!(segnos(None), Vec::<u64>::new());
    assert_eq!(segnos(Some(1)), Vec::<u64>::new());
    assert_eq!(segnos(Some(3)), vec![1, 2]);
    assert_eq!(segnos(Some(9)), vec![1, 2, 3]);
}

/// While part of the reserve is given away, that room counts as needed, so a segment never
/// takes it; the reserve is filled again only with a segment's room to spare.
#[test]
fn a_shortened_reserve_keeps_its_room() {
    let dir = tempfile::tempdir().unwrap();
    let disk = VirtualDisk::new(
        dir.path(),
        u64::from(SEG) + RESERVE_BYTES + RESERVE_BYTES / 2,
    );
    let backup = Arc::new(AtomicU64::new(0));
    let reserve = Reserve::new(dir.path());
    assert!(reserve.ensure(&*disk, 0).unwrap());
    assert_eq!(reserve.held(), RESERVE_BYTES);
    let p = policy(&disk, &backup, reserve.path());
    p.make_room(dir.path(), SEG, 1, u64::from(SEG)).unwrap();

    assert!(reserve.release(RESERVE_BYTES / 4).unwrap());
    assert_eq!(reserve.missing(), RESERVE_BYTES / 4);
    disk.other
        .store(RESERVE_BYTES / 2 + RESERVE_BYTES / 8, Ordering::SeqCst);
    let err = p.make_room(dir.path(), SEG, 1, u64::from(SEG)).unwrap_err();
    assert_eq!(
        err.downcast_ref::<DiskFull>().unwrap().needed,
        u64::from(SEG) + RESERVE_BYTES / 4
    );
    // Room for the missing part but not a segment besides: not refilled.
    assert!(!reserve.ensure(&*disk, u64::from(SEG)).unwrap());
    assert_eq!(reserve.held(), RESERVE_BYTES * 3 / 4);
    disk.other.store(0, Ordering::SeqCst);
    assert!(reserve.ensure(&*disk, u64::from(SEG)).unwrap());
    assert_eq!(reserve.held(), RESERVE_BYTES);
    // Used up completely, then nothing more to give.
    assert!(reserve.release(2 * RESERVE_BYTES).unwrap());
    assert!(!reserve.release(1).unwrap());
}

#[test]
fn leftover_temp_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("000000010000000000000007.prealloc"), b"z").unwrap();
    fs::write(dir.path().join("00000002.history.prealloc"), b"z").unwrap();
    fs::write(dir.path().join("000000010000000000000006"), b"w").unwrap();
    remove_leftover_temp_files(dir.path()).unwrap();
    assert_eq!(names(dir.path()), ["000000010000000000000006"]);
}

#[test]
fn capacity_warning_names_the_numbers() {
    let seg = 16u64 << 20;
    let w = capacity_warning(30 << 20, seg, 0).unwrap();
    assert!(w.contains("less than two WAL segments"), "{w}");
    assert!(capacity_warning(40 << 20, seg, 0).is_none());
    let w = capacity_warning(40 << 20, seg, 1 << 30).unwrap();
    assert!(w.contains("--local-retention"), "{w}");
}

#[test]
fn statvfs_reads_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let fs = statvfs(dir.path()).unwrap();
    assert!(fs.total > 0 && fs.available <= fs.total);
    assert!(statvfs(&dir.path().join("missing")).is_err());
}

/// Only a `DiskFull` (nothing written) may be waited out and retried; a raw ENOSPC from a write
/// or an fsync ends the session so the store is reopened from disk.
#[test]
fn only_disk_full_is_retried_in_place() {
    let full = anyhow::Error::new(DiskFull {
        dir: PathBuf::from("/x"),
        needed: 2,
        available: 1,
    })
    .context("cannot preallocate");
    let raw = anyhow::Error::new(io::Error::from_raw_os_error(libc::ENOSPC)).context("fdatasync");
    assert!(is_disk_full(&full) && is_out_of_space(&full));
    assert!(!is_disk_full(&raw) && is_out_of_space(&raw));
    let other = anyhow::Error::new(io::Error::from_raw_os_error(libc::EIO));
    assert!(!is_disk_full(&other) && !is_out_of_space(&other));
}
