//! The stories, step by step, in the model of `model.rs`.

use super::*;

/// Writes that fill one segment.
const PER_SEGMENT: u64 = SEG as u64 / STEP;

/// Issue 13, case 1: the full segment is recorded while a partial PUT of that segment is slow;
/// GC must not delete its key until the PUT ended, and then it is collected.
#[test]
fn gc_waits_for_a_slow_put_superseded_by_the_full_segment() {
    let mut w = World::new();
    for a in [Action::Write, Action::Follow, Action::StartPartial] {
        w.step(&a);
    }
    let put = w.p.partial.expect("a partial upload started");
    // The rest of segment 1.
    for _ in 1..PER_SEGMENT {
        w.step(&Action::Write);
    }
    w.step(&Action::Follow);
    w.step(&Action::FullUpload);
    w.step(&Action::FullRecord);
    w.step(&Action::Tick(GRACE + 1));
    w.step(&Action::StartGc);
    assert!(
        w.p.gc.is_none(),
        "GC started a delete of a key whose PUT is in flight"
    );
    w.land(put);
    w.respond(put, true);
    w.step(&Action::StartGc);
    let gc =
        w.p.gc
            .expect("GC deletes the superseded version once its PUT ended");
    w.respond(gc, true);
    w.check();
    assert!(!w.remote.keys().any(|k| matches!(k, Key::Partial(1, ..))));
}

/// Issue 13, case 2: after a crash the recorded commit LSN lags the newest uploaded version;
/// the new process must neither upload below it nor delete it.
#[test]
fn a_restart_never_uploads_below_the_archive() {
    let mut w = World::new();
    for a in [
        Action::Write,
        Action::Follow,
        Action::Persist,
        Action::Write,
        Action::Follow,
    ] {
        w.step(&a);
    }
    w.step(&Action::StartPartial);
    let put = w.p.partial.expect("upload started");
    w.respond(put, true);
    let newest = w.end().0;
    w.step(&Action::Crash);
    assert!(
        w.p.commit < newest,
        "the recorded commit LSN lags the archive"
    );
    // Without the follower's checked position nothing is uploaded; with a stale one, nothing
    // below the archive either.
    w.step(&Action::StartPartial);
    assert!(w.p.partial.is_none());
    w.p.live = true;
    w.step(&Action::AuditList);
    w.step(&Action::AuditFinish);
    w.step(&Action::StartPartial);
    assert!(
        w.p.partial.is_none(),
        "a version below the archive's end was uploaded"
    );
    assert_eq!(w.end().0, newest);
}

/// Issue 13, kill -9: a PUT of the killed process lands after the next process superseded and
/// collected its version; the key must not be deleted before that PUT can no longer land.
#[test]
fn a_put_of_a_killed_process_landing_late_is_never_orphaned() {
    let mut w = World::new();
    for a in [Action::Write, Action::Follow, Action::StartPartial] {
        w.step(&a);
    }
    let late = w.p.partial.expect("upload started");
    w.step(&Action::Crash);
    for a in [
        Action::Write,
        Action::Follow,
        Action::AuditList,
        Action::AuditFinish,
        Action::StartPartial,
    ] {
        w.step(&a);
    }
    let put = w.p.partial.expect("the next version is uploaded");
    w.respond(put, true);
    w.check();
    w.step(&Action::StartGc);
    assert!(
        w.p.gc.is_none(),
        "GC deleted a key a killed process may still write"
    );
    w.land(late);
    w.check();
    w.step(&Action::Tick(GRACE + 1));
    w.step(&Action::StartGc);
    let gc =
        w.p.gc
            .expect("collected once the late PUT can no longer land");
    w.respond(gc, true);
    w.check();
}

/// The archive's contiguous end: a partial of the next segment does not count while the segment
/// before it is not up in full; once it is, the partial does.
#[test]
fn remote_end_never_jumps_over_a_segment_not_yet_up() {
    let mut w = World::new();
    for a in [Action::Write, Action::Follow, Action::StartPartial] {
        w.step(&a);
    }
    let first = w.p.partial.expect("upload of segment 1's partial");
    w.respond(first, true);
    let in_seg1 = w.end().0;
    assert_eq!(remote_end(&w.st), in_seg1);
    // Into segment 2.
    for _ in 0..PER_SEGMENT {
        w.step(&Action::Write);
    }
    w.step(&Action::Follow);
    w.step(&Action::StartPartial);
    let second = w.p.partial.expect("upload of segment 2's partial");
    w.respond(second, true);
    assert_eq!(
        remote_end(&w.st),
        in_seg1,
        "segment 1's tail is in no object yet"
    );
    w.step(&Action::FullUpload);
    w.step(&Action::FullRecord);
    assert_eq!(
        remote_end(&w.st),
        w.end().0,
        "segment 1 is up in full: segment 2's partial counts"
    );
}
