//! Crash safety without failpoints: a crash between writing the temp file and the rename leaves the
//! old file intact and loadable, and the leftover temp file breaks neither loads nor the next save.

mod common;

use std::fs;

use common::simple_state;
use control_file::{Lsn, format, load, save, temp_path};

#[test]
fn crash_before_rename_keeps_old_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("safekeeper.control");
    let old = simple_state(1);
    save(&path, &old).expect("save old");
    let old_bytes = fs::read(&path).expect("read");

    let mut new = old.clone();
    new.flush_lsn = Lsn(0x0200_0000);
    new.commit_lsn = Lsn(0x0200_0000);
    let new_bytes = format::encode_file(&new).expect("encode");
    let tmp = temp_path(&path);

    // Simulated crashes: the temp file complete, half written, or empty, never renamed.
    for leftover in [
        new_bytes.clone(),
        new_bytes[..new_bytes.len() / 2].to_vec(),
        Vec::new(),
    ] {
        fs::write(&path, &old_bytes).expect("restore old");
        fs::write(&tmp, &leftover).expect("write leftover temp file");
        assert_eq!(load(&path).expect("old file still loads"), old);

        save(&path, &new).expect("save over a leftover temp file");
        assert_eq!(load(&path).expect("new file loads"), new);
        assert!(!tmp.exists(), "temp file renamed away");
    }
}

#[test]
fn read_only_leftover_temp_file_does_not_block_save() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("safekeeper.control");
    let tmp = temp_path(&path);
    fs::write(&tmp, b"junk").expect("write");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o400)).expect("chmod");
    save(&path, &simple_state(1)).expect("save");
    assert_eq!(load(&path).expect("load"), simple_state(1));
}

#[test]
fn save_load_round_trip_and_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("safekeeper.control");
    let mut state = common::v4_fixture_state();
    save(&path, &state).expect("save");
    assert_eq!(
        control_file::load_versioned(&path).expect("load"),
        (state.clone(), format::CURRENT_FORMAT_VERSION)
    );
    state.start_term(3, Lsn(0x0734_5678));
    state.remote.add_full_segment(2, 7);
    save(&path, &state).expect("save again");
    assert_eq!(load(&path).expect("load"), state);
    // A relative path (parent directory "") works too.
    let name = format!("relative-{}.control.test", std::process::id());
    let cwd_file = std::path::Path::new(&name);
    let saved = save(cwd_file, &state);
    let loaded = load(cwd_file);
    let _ = fs::remove_file(cwd_file);
    saved.expect("save relative");
    assert_eq!(loaded.expect("load relative"), state);
}
