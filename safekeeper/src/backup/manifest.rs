//! Checking an unpacked backup against PostgreSQL's backup manifest without PostgreSQL's tools:
//! every file the manifest lists must have been unpacked with its size and, for CRC32C
//! checksums (what `safekeeper backup` asks for), its checksum.
//!
//! Invariant: a file listed but not unpacked, of another size or with another checksum is an
//! error naming it; files the manifest does not list are not checked (the server never lists
//! `backup_manifest` itself, and restore adds its recovery settings after the check).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::tar::FileSum;

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "Files")]
    files: Vec<FileEntry>,
}

#[derive(Debug, Deserialize)]
struct FileEntry {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

/// What the check covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ManifestCheck {
    pub files: usize,
    pub checksummed: usize,
}

/// Checks `unpacked` (archive names of `base.tar`) against the manifest text.
pub(crate) fn check(
    manifest: &[u8],
    unpacked: &BTreeMap<String, FileSum>,
) -> Result<ManifestCheck> {
    let m: Manifest =
        serde_json::from_slice(manifest).context("the backup manifest is not valid")?;
    let mut checked = ManifestCheck {
        files: 0,
        checksummed: 0,
    };
    for f in &m.files {
        let path = match (&f.path, &f.encoded_path) {
            (Some(p), _) => p.clone(),
            (None, Some(hex)) => decode_hex(hex)
                .and_then(|b| String::from_utf8(b).ok())
                .with_context(|| format!("bad Encoded-Path {hex:?} in the manifest"))?,
            (None, None) => bail!("a manifest entry without a path"),
        };
        let Some(sum) = unpacked.get(&path) else {
            bail!("{path} is in the backup manifest but not in the backup");
        };
        if sum.size != f.size {
            bail!(
                "{path} has {} bytes, the backup manifest says {}",
                sum.size,
                f.size
            );
        }
        checked.files += 1;
        if f.algorithm.as_deref() == Some("CRC32C")
            && let Some(expected) = &f.checksum
        {
            // PostgreSQL writes the crc's bytes in memory order (little endian here) as hex.
            let found = hex(&sum.crc32c.to_le_bytes());
            if !found.eq_ignore_ascii_case(expected) {
                bail!("{path}: checksum {found} does not match the backup manifest's {expected}");
            }
            checked.checksummed += 1;
        }
    }
    Ok(checked)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_checksums_are_checked() {
        let crc = crc32c::crc32c(b"hello");
        let text = format!(
            r#"{{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [
            {{"Path": "a", "Size": 5, "Checksum-Algorithm": "CRC32C", "Checksum": "{}"}},
            {{"Encoded-Path": "62", "Size": 0}}]}}"#,
            hex(&crc.to_le_bytes())
        );
        let mut files = BTreeMap::new();
        files.insert(
            "a".to_string(),
            FileSum {
                size: 5,
                crc32c: crc,
            },
        );
        files.insert("b".to_string(), FileSum { size: 0, crc32c: 0 });
        let ok = check(text.as_bytes(), &files).unwrap();
        assert_eq!((ok.files, ok.checksummed), (2, 1));
        files.insert(
            "a".to_string(),
            FileSum {
                size: 5,
                crc32c: crc ^ 1,
            },
        );
        assert!(check(text.as_bytes(), &files).is_err());
        files.remove("a");
        assert!(check(text.as_bytes(), &files).is_err());
    }
}
