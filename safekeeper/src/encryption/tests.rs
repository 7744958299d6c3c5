//! The key file: its format, its checks (mode, IDs, lengths) and that no key byte ever appears
//! in an error or in `Debug` output.

use std::os::unix::fs::PermissionsExt;

use super::*;

const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K2: &str = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=";

#[test]
fn the_last_key_writes_and_every_key_reads() {
    let text = format!("# comment\n\nold {K1}\n  new {K2}  \n");
    let ring = KeyRing::parse(&text).expect("parses");
    assert_eq!(ring.ids(), vec!["old", "new"]);
    assert_eq!(ring.writing().id(), "new");
    assert!(ring.get("old").is_some());
    assert!(ring.get("missing").is_none());
}

#[test]
fn bad_key_files_are_refused_without_echoing_keys() {
    let short = "c2hvcnQ="; // base64 of "short"
    for (text, expect) in [
        (String::new(), "no key"),
        ("# only a comment\n".to_string(), "no key"),
        (format!("a {K1}\na {K2}\n"), "twice"),
        (format!("a {short}\n"), "line 1"),
        (format!("a {K1}\nb not-base64!\n"), "line 2"),
        (format!("bad/id {K1}\n"), "key id"),
        (format!("a {K1} extra\n"), "ID BASE64KEY"),
        (format!("{K1}\n"), "ID BASE64KEY"),
    ] {
        let e = format!("{:#}", KeyRing::parse(&text).expect_err(&text));
        assert!(e.contains(expect), "{text:?}: {e}");
        for secret in [K1, K2, short, "not-base64!"] {
            assert!(
                !e.contains(secret),
                "{text:?}: error shows key material: {e}"
            );
        }
    }
}

#[test]
fn debug_shows_ids_only() {
    let ring = KeyRing::parse(&format!("a {K1}\n")).expect("parses");
    let shown = format!("{ring:?}");
    assert!(shown.contains("\"a\""), "{shown}");
    // The key bytes 0..32 in any common rendering.
    assert!(!shown.contains(K1) && !shown.contains("[0, 1, 2") && !shown.contains("000102"));
}

#[test]
fn key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys");
    std::fs::write(&path, format!("a {K1}\n")).expect("write");
    for mode in [0o644, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let e = KeyRing::load(&path).expect_err("refused").to_string();
        assert!(e.contains("chmod 600") && !e.contains('\n'), "{e}");
    }
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        assert_eq!(KeyRing::load(&path).expect("accepted").ids(), vec!["a"]);
    }
    let missing = KeyRing::load(&dir.path().join("nope")).expect_err("missing");
    assert!(missing.to_string().contains("cannot read key file"));
}

#[test]
fn new_keys_parse_and_differ() {
    let (a, b) = (new_key_base64(), new_key_base64());
    assert_ne!(a, b);
    let ring = KeyRing::parse(&format!("x {a}\ny {b}\n")).expect("generated keys parse");
    assert_eq!(ring.writing().id(), "y");
    for scheme in [Scheme::XChaCha20Poly1305, Scheme::Aes256GcmDerived] {
        let (a, b) = (scheme.new_material(), scheme.new_material());
        assert_eq!(a.len(), scheme.material_len());
        assert_ne!(a, b);
    }
}
