//! What a valid key, prefix, tag and metadata entry is.
//!
//! Owns the rules every backend applies *before* touching storage, so that all backends accept and
//! reject exactly the same inputs (the conformance suite checks this).
//!
//! Invariants:
//! - a key is a relative path: non-empty `/`-separated components, none empty, `.` or `..`, no
//!   leading or trailing `/`, at most [`MAX_KEY_LEN`] bytes, characters from a conservative set
//!   that needs no escaping on any filesystem and survives S3 URLs;
//! - no key component starts with [`RESERVED_PREFIX`]: the local backend keeps its temp files and
//!   sidecars under that prefix, which is what keeps them out of `list`;
//! - user metadata never uses [`CRC32C_META_KEY`], which this crate owns.

use std::collections::BTreeMap;

/// Names beginning with this are internal to backends (temp files, sidecars) and never keys.
pub const RESERVED_PREFIX: &str = ".~";

/// User-metadata key under which the crc32c of an object is stored, as 8 lowercase hex digits.
pub const CRC32C_META_KEY: &str = "crc32c";

/// Longest accepted key in bytes (S3 allows 1024 including the backend's prefix).
pub const MAX_KEY_LEN: usize = 900;

/// S3 allows at most 10 tags per object.
pub const MAX_TAGS: usize = 10;

fn key_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '=' | '+' | ',' | '@' | ':')
}

/// Check a key; the error text says which rule it breaks.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("key is empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("key is longer than {MAX_KEY_LEN} bytes"));
    }
    for component in key.split('/') {
        validate_component(component)?;
    }
    Ok(())
}

fn validate_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err("key has an empty path component (leading, trailing or double '/')".into());
    }
    if component == "." || component == ".." {
        return Err(format!("key component {component:?} is not allowed"));
    }
    if component.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "key component {component:?} starts with the reserved prefix {RESERVED_PREFIX:?}"
        ));
    }
    if let Some(c) = component.chars().find(|c| !key_char_ok(*c)) {
        return Err(format!(
            "key contains the character {c:?}, outside [A-Za-z0-9._-=+,@:/]"
        ));
    }
    Ok(())
}

/// Check a list prefix: empty (everything), or a key-like string that may end with `/`
/// (a whole "directory") or in the middle of a component (`wal/0000` matches `wal/00000001…`).
/// Every complete component must be a valid key component; the trailing partial one only needs
/// valid characters.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    let (complete, partial) = match prefix.rsplit_once('/') {
        Some((complete, partial)) => (Some(complete), partial),
        None => (None, prefix),
    };
    if let Some(complete) = complete {
        if complete.is_empty() {
            return Err("prefix starts with '/'; keys are relative".into());
        }
        for component in complete.split('/') {
            validate_component(component)?;
        }
    }
    if let Some(c) = partial.chars().find(|c| !key_char_ok(*c)) {
        return Err(format!("prefix contains the character {c:?}"));
    }
    Ok(())
}

fn tag_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '.' | ':' | '/' | '=' | '+' | '-' | '@')
}

/// Check tags against S3's rules (at most 10, unique keys of 1..=128 chars, values of at most
/// 256 chars, letters, digits, spaces and `_.:/=+-@`).
pub fn validate_tags(tags: &[(String, String)]) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!(
            "{} tags given, at most {MAX_TAGS} allowed",
            tags.len()
        ));
    }
    for (i, (k, v)) in tags.iter().enumerate() {
        if k.is_empty() || k.len() > 128 {
            return Err(format!("tag key {k:?} must be 1 to 128 characters"));
        }
        if v.len() > 256 {
            return Err(format!("tag {k:?} has a value longer than 256 characters"));
        }
        if let Some(c) = k.chars().chain(v.chars()).find(|c| !tag_char_ok(*c)) {
            return Err(format!("tag {k:?} contains the character {c:?}"));
        }
        if tags[..i].iter().any(|(other, _)| other == k) {
            return Err(format!("tag key {k:?} given twice"));
        }
    }
    Ok(())
}

/// Check user metadata: lowercase keys of `[a-z0-9_-]` (S3 lowercases them anyway), printable
/// ASCII values, [`CRC32C_META_KEY`] reserved, at most 2 KiB in total (S3's limit).
pub fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), String> {
    let mut total = 0;
    for (k, v) in metadata {
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(format!("metadata key {k:?} must be non-empty [a-z0-9_-]"));
        }
        if k == CRC32C_META_KEY {
            return Err(format!(
                "metadata key {k:?} is reserved for the object's checksum"
            ));
        }
        if !v.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            return Err(format!(
                "metadata {k:?} has a value with non-printable or non-ASCII characters"
            ));
        }
        total += k.len() + v.len();
    }
    if total > 2048 {
        return Err(format!("metadata is {total} bytes, at most 2048 allowed"));
    }
    Ok(())
}

/// Percent-encode for URLs and the `x-amz-tagging` query string: unreserved characters stay,
/// `/` stays when `keep_slash`, everything else becomes `%XX`.
pub(crate) fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
        if unreserved || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encode tags as the `x-amz-tagging` header expects: `k1=v1&k2=v2`, URL-encoded.
pub(crate) fn encode_tagging(tags: &[(String, String)]) -> String {
    tags.iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k, false), percent_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Format a crc32c the way it is stored in metadata.
pub(crate) fn crc_to_hex(crc: u32) -> String {
    format!("{crc:08x}")
}

/// Parse a crc32c stored by [`crc_to_hex`]; `None` if absent or malformed.
pub(crate) fn crc_from_hex(s: &str) -> Option<u32> {
    if s.len() != 8 {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in [
            "a",
            "cluster/wal/000000010000000000000003",
            "c/wal/000000010000000000000003_0000000003A1B2C8_0000000000000001_sk1.partial",
            "c/wal/00000002.history",
            "x.y/.z",
        ] {
            assert_eq!(validate_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "..",
            ".",
            "a/./b",
            ".~tmp.x",
            "a/.~meta.b",
            "a b",
            "a\\b",
            "ä",
            "a\0",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_key(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn prefixes() {
        for ok in ["", "a", "a/", "a/b", "c/wal/0000", "c/wal/"] {
            assert_eq!(validate_prefix(ok), Ok(()), "{ok}");
        }
        for bad in ["/", "/a", "a//", "../a", "a/../", ".~x/", "a b", "a/b c"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tags_and_metadata() {
        let t = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert!(validate_tags(&[t("safekeeper-kind", "partial")]).is_ok());
        assert!(validate_tags(&[t("", "x")]).is_err());
        assert!(validate_tags(&[t("a", "x"), t("a", "y")]).is_err());
        assert!(validate_tags(&[t("a", "x&y")]).is_err());
        let many: Vec<_> = (0..11).map(|i| t(&format!("k{i}"), "v")).collect();
        assert!(validate_tags(&many).is_err());

        let mut m = BTreeMap::new();
        m.insert("term".to_string(), "1".to_string());
        assert!(validate_metadata(&m).is_ok());
        m.insert("crc32c".to_string(), "0".to_string());
        assert!(validate_metadata(&m).is_err());
        let mut m = BTreeMap::new();
        m.insert("Upper".to_string(), "1".to_string());
        assert!(validate_metadata(&m).is_err());
    }

    #[test]
    fn encoding() {
        assert_eq!(percent_encode("a b/c&", false), "a%20b%2Fc%26");
        assert_eq!(percent_encode("a b/c", true), "a%20b/c");
        let tags = vec![
            ("k".to_string(), "a=b".to_string()),
            ("x y".to_string(), String::new()),
        ];
        assert_eq!(encode_tagging(&tags), "k=a%3Db&x%20y=");
        assert_eq!(crc_from_hex(&crc_to_hex(0xE3069283)), Some(0xE3069283));
        assert_eq!(crc_from_hex("xyz"), None);
    }
}
