//! The real `safekeeper control-file ...` binary on real files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use control_file::{ClusterState, Lsn, save};

fn safekeeper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_safekeeper"))
        .args(args)
        .output()
        .expect("run safekeeper")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8 output")
}

fn v1_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../control_file/tests/fixtures/v1.control")
}

fn sample() -> ClusterState {
    let mut s = ClusterState::new(
        1,
        "main",
        7_301_234_567_890_123_456,
        16 << 20,
        15,
        1,
        Lsn(0x0100_0028),
    );
    s.flush_lsn = Lsn(0x0334_5678);
    s.commit_lsn = Lsn(0x0334_5000);
    s.remote.add_full_segment(1, 1);
    s.remote.add_full_segment(1, 2);
    s
}

fn saved_sample(dir: &Path) -> PathBuf {
    let path = dir.join("safekeeper.control");
    save(&path, &sample()).expect("save");
    path
}

/// Asserts a failure: non-zero exit, nothing on stdout, exactly one line on stderr containing `needle`.
fn assert_one_line_failure(out: &Output, needle: &str) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(out.stdout.is_empty());
}

#[test]
fn verify_ok() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = saved_sample(dir.path());
    let p = path.to_str().expect("utf-8 path");
    let out = safekeeper(&["control-file", "verify", p]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("ok: {p} format v4")),
        "{stdout}"
    );
    assert!(stdout.contains("flush 0/3345678"), "{stdout}");
}

#[test]
fn verify_rejects_corruption_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = saved_sample(dir.path());
    let p = path.to_str().expect("utf-8 path").to_owned();
    let good = fs::read(&path).expect("read");

    let mut flipped = good.clone();
    flipped[30] ^= 0x08;
    fs::write(&path, &flipped).expect("write");
    assert_one_line_failure(
        &safekeeper(&["control-file", "verify", &p]),
        "checksum mismatch",
    );

    fs::write(&path, &good[..good.len() - 5]).expect("write");
    assert_one_line_failure(&safekeeper(&["control-file", "verify", &p]), "truncated");

    fs::write(&path, b"").expect("write");
    assert_one_line_failure(&safekeeper(&["control-file", "verify", &p]), "empty");

    fs::write(&path, b"hello\nworld\n").expect("write");
    assert_one_line_failure(&safekeeper(&["control-file", "verify", &p]), "bad magic");

    let missing = dir.path().join("missing.control");
    let m = missing.to_str().expect("utf-8 path");
    assert_one_line_failure(
        &safekeeper(&["control-file", "verify", m]),
        "does not exist",
    );
    // The reason names the file.
    let out = safekeeper(&["control-file", "verify", &p]);
    assert!(text(&out.stderr).contains(&p));
}

#[test]
fn verify_rejects_newer_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("safekeeper.control");
    fs::write(&path, control_file::format::frame(99, b"whatever")).expect("write");
    let out = safekeeper(&["control-file", "verify", path.to_str().expect("utf-8")]);
    assert_one_line_failure(&out, "written by a newer safekeeper (format 99 > 4)");
}

#[test]
fn show_text_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = saved_sample(dir.path());
    let p = path.to_str().expect("utf-8 path");

    let out = safekeeper(&["control-file", "show", p]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("cluster:            main"), "{stdout}");
    assert!(
        stdout.contains("000000010000000000000001 .. 000000010000000000000002 (2 segment(s))"),
        "{stdout}"
    );

    let out = safekeeper(&["control-file", "show", p, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(doc["format_version"], 4);
    assert_eq!(doc["path"], p);
    assert_eq!(doc["lsns"]["flush"], "0/3345678");
    let state: ClusterState = serde_json::from_value(doc["state"].clone()).expect("state");
    assert_eq!(state, sample());

    fs::write(&path, b"").expect("write");
    assert_one_line_failure(&safekeeper(&["control-file", "show", p, "--json"]), "empty");
}

#[test]
fn upgrade_v1_fixture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("safekeeper.control");
    let original = fs::read(v1_fixture()).expect("read fixture");
    fs::write(&path, &original).expect("copy");
    let p = path.to_str().expect("utf-8 path");

    let out = safekeeper(&["control-file", "verify", p]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("ok: {p} format v1 (older")));

    let out = safekeeper(&["control-file", "upgrade", p]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("from format v1 to v4"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(fs::read(format!("{p}.bak")).expect("backup"), original);

    let out = safekeeper(&["control-file", "verify", p]);
    assert!(
        text(&out.stdout).starts_with(&format!("ok: {p} format v4,")),
        "{}",
        text(&out.stdout)
    );

    let out = safekeeper(&["control-file", "upgrade", p]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("nothing to do"),
        "{}",
        text(&out.stdout)
    );

    fs::write(&path, b"junk junk junk junk").expect("write");
    assert_one_line_failure(&safekeeper(&["control-file", "upgrade", p]), "bad magic");
}
