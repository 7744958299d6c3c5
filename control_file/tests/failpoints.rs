//! Crash safety with failpoints (`--features failpoints`). The failpoint registry is process-global,
//! so every scenario runs inside this single test.
#![cfg(feature = "failpoints")]

mod common;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};

use common::simple_state;
use control_file::{ClusterState, ControlFileError, Lsn, load, save, temp_path};

fn advanced(base: &ClusterState, lsn: u64) -> ClusterState {
    let mut s = base.clone();
    s.flush_lsn = Lsn(lsn);
    s.commit_lsn = Lsn(lsn);
    s
}

#[test]
fn failures_and_crashes_during_save() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("safekeeper.control");
    let tmp = temp_path(&path);
    let s1 = simple_state(1);
    save(&path, &s1).expect("save s1");

    // An error before the rename: the save fails, the old file stays, no temp file is left.
    for point in ["control-file-after-write", "control-file-before-rename"] {
        fail::cfg(point, "return").expect("cfg");
        let err = save(&path, &advanced(&s1, 0x0200_0000)).expect_err("failpoint");
        assert!(matches!(err, ControlFileError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(point), "{err}");
        fail::remove(point);
        assert_eq!(load(&path).expect("old file intact"), s1, "{point}");
        assert!(!tmp.exists(), "{point}");
    }

    // An error after the rename (directory fsync): the new contents are in place.
    let s2 = advanced(&s1, 0x0300_0000);
    fail::cfg("control-file-before-dir-fsync", "return").expect("cfg");
    assert!(save(&path, &s2).is_err());
    fail::remove("control-file-before-dir-fsync");
    assert_eq!(load(&path).expect("new file"), s2);

    // A crash (panic, no cleanup) between write and rename: old file intact, temp file left over.
    fail::cfg("control-file-before-rename", "panic").expect("cfg");
    let s3 = advanced(&s1, 0x0400_0000);
    let crashed = catch_unwind(AssertUnwindSafe(|| save(&path, &s3)));
    assert!(crashed.is_err(), "failpoint must panic");
    fail::remove("control-file-before-rename");
    assert!(tmp.exists(), "the crash leaves the temp file");
    assert_eq!(load(&path).expect("old file intact after crash"), s2);

    // The next save after the crash works and cleans up.
    let s4 = advanced(&s1, 0x0500_0000);
    save(&path, &s4).expect("save after crash");
    assert_eq!(load(&path).expect("load"), s4);
    assert!(!tmp.exists());
    assert!(fs::read_dir(dir.path()).expect("ls").count() == 1);

    scenario.teardown();
}
