//! Unit tests of the prefetch worker: depth policy, state machine, end of recovery.

use super::*;

const MIB: u32 = 1 << 20;

#[test]
fn depth_starts_small_and_doubles_while_replay_catches_up() {
    let mut p = DepthPolicy::new(16, 16 * MIB);
    assert_eq!(p.depth(), 4);
    p.on_served(2); // half ready: keeping up
    assert_eq!(p.depth(), 4);
    p.on_served(1);
    assert_eq!(p.depth(), 8);
    p.on_served(0);
    assert_eq!(p.depth(), 16);
    p.on_served(0);
    assert_eq!(p.depth(), 16, "bounded by --max-depth");
}

#[test]
fn depth_is_bounded_by_the_byte_budget_and_at_least_one() {
    assert_eq!(DepthPolicy::new(16, 1 << 30).depth(), 1);
    let mut big = DepthPolicy::new(64, 64 * MIB);
    for _ in 0..10 {
        big.on_served(0);
    }
    assert_eq!(big.depth(), 8, "512 MiB of 64 MiB segments");
    assert_eq!(DepthPolicy::new(0, MIB).depth(), 1);
    assert_eq!(DepthPolicy::new(2, MIB).depth(), 2);
}

fn seg(segno: u64) -> String {
    segment_file_name(1, segno, MIB)
}

fn version(crc: u32) -> ObjectVersion {
    ObjectVersion {
        size: u64::from(MIB),
        crc32c: Some(crc),
        modified: None,
    }
}

/// A worker and its spool, PostgreSQL having been served segment 1.
fn started() -> (tempfile::TempDir, Spool, Worker) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(&dir.path().join("spool"), "file:///a", "main").expect("open");
    let mut w = Worker::new(DepthPolicy::new(16, MIB));
    w.follow(&spool, MIB);
    assert!(w.wanted(&spool, MIB).is_empty(), "nothing asked yet");
    spool.mark_served(&seg(1)).expect("served");
    w.follow(&spool, MIB);
    (dir, spool, w)
}

/// Spools `segno` as a download of the worker would.
fn spool_one(spool: &Spool, w: &mut Worker, segno: u64, crc: u32) {
    let claim = spool.claim(&seg(segno)).expect("claim").expect("free");
    assert!(spool.store(&seg(segno), b"x", claim).expect("store"));
    w.finished(
        Done::Downloaded(seg(segno), Ok(Download::Spooled(version(crc)))),
        spool,
    );
}

#[test]
fn worker_wants_the_look_ahead_stops_at_a_missing_segment_and_backs_off_failures() {
    let (_dir, spool, mut w) = started();
    assert_eq!(w.wanted(&spool, MIB), (2..=5).map(seg).collect::<Vec<_>>());
    w.in_flight.extend([seg(2), seg(3), seg(4), seg(5)]);
    assert!(w.wanted(&spool, MIB).is_empty(), "all in flight");
    spool_one(&spool, &mut w, 2, 1);
    w.finished(
        Done::Downloaded(seg(3), Err(anyhow::anyhow!("damaged"))),
        &spool,
    );
    w.finished(Done::Downloaded(seg(4), Ok(Download::Missing)), &spool);
    w.finished(
        Done::Downloaded(seg(5), Ok(Download::Spooled(version(5)))),
        &spool,
    );
    assert!(w.in_flight.is_empty());
    assert!(
        w.wanted(&spool, MIB).is_empty(),
        "2 spooled, 3 failed just now, nothing from 4 (missing) on"
    );
    // A second later both are asked for again.
    let past = Instant::now().checked_sub(RECHECK_MISSING).expect("clock");
    w.failed.insert(seg(3), past);
    w.missing = Some((seg(4), past));
    assert_eq!(w.wanted(&spool, MIB), (3..=5).map(seg).collect::<Vec<_>>());
    // PostgreSQL moves on: what it passed is forgotten, the look-ahead moves, and deepens
    // (PostgreSQL found none of 4..7 ready).
    spool.mark_served(&seg(3)).expect("served");
    w.follow(&spool, MIB);
    assert!(!w.spooled.contains_key(&seg(2)) && w.failed.is_empty());
    assert_eq!(w.policy.depth(), 8);
    // A download PostgreSQL overtook (it fetched 3 itself) holds nothing up.
    w.finished(Done::Downloaded(seg(3), Ok(Download::Passed)), &spool);
    assert_eq!(w.wanted(&spool, MIB), (4..=11).map(seg).collect::<Vec<_>>());
}

#[test]
fn worker_confirms_spooled_segments_and_drops_replaced_or_removed_ones() {
    let (_dir, spool, mut w) = started();
    for segno in 2..=5 {
        spool_one(&spool, &mut w, segno, segno as u32);
    }
    assert!(w.due_confirmations(&spool).is_empty(), "just downloaded");
    let past = Instant::now().checked_sub(CONFIRM_AFTER).expect("clock");
    for s in w.spooled.values_mut() {
        s.confirmed = past;
    }
    // PostgreSQL took 2 meanwhile (without the worker having read SERVED yet).
    assert!(
        spool
            .take(&seg(2), &spool.dir().join("dest"), Duration::ZERO)
            .expect("take")
    );
    let mut due = w.due_confirmations(&spool);
    due.sort();
    assert_eq!(due, (3..=5).map(seg).collect::<Vec<_>>());
    assert!(w.due_confirmations(&spool).is_empty(), "being checked");
    assert!(!w.spooled.contains_key(&seg(2)), "taken: forgotten");

    w.finished(Done::Checked(seg(3), Ok(Some(version(3)))), &spool);
    w.finished(Done::Checked(seg(4), Ok(Some(version(40)))), &spool);
    w.finished(Done::Checked(seg(5), Ok(None)), &spool);
    let left: Vec<String> = (3..=5)
        .map(seg)
        .filter(|n| spool.dir().join(n).exists())
        .collect();
    assert_eq!(
        left,
        vec![seg(3)],
        "replaced (4) and removed (5) are dropped"
    );
    assert!(w.spooled[&seg(3)].confirmed > past && !w.spooled[&seg(3)].checking);
    assert!(
        w.due_confirmations(&spool).is_empty(),
        "3 confirmed just now"
    );
    // A confirmation that fails drops the segment too; it is downloaded again.
    w.spooled.get_mut(&seg(3)).expect("3").confirmed = past;
    assert_eq!(w.due_confirmations(&spool), vec![seg(3)]);
    w.finished(Done::Checked(seg(3), Err(anyhow::anyhow!("503"))), &spool);
    assert!(!spool.dir().join(seg(3)).exists() && w.spooled.is_empty());
    assert!(w.wanted(&spool, MIB).contains(&seg(3)));
}

#[test]
fn recovery_is_over_only_in_a_data_directory_without_signal_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let spool = data.join("pg_wal").join(".safekeeper-prefetch");
    std::fs::create_dir_all(&spool).expect("mkdir");
    assert!(
        !recovery_over(&spool),
        "no PG_VERSION: not a data directory"
    );
    std::fs::write(data.join("PG_VERSION"), "17\n").expect("w");
    std::fs::write(data.join("recovery.signal"), "").expect("w");
    assert!(!recovery_over(&spool));
    std::fs::remove_file(data.join("recovery.signal")).expect("rm");
    std::fs::write(data.join("standby.signal"), "").expect("w");
    assert!(!recovery_over(&spool));
    std::fs::remove_file(data.join("standby.signal")).expect("rm");
    assert!(recovery_over(&spool));
    assert!(!recovery_over(&dir.path().join("elsewhere").join("spool")));
}
