//! On-disk layout of the local backend: where an object's data, sidecar and temp files live, and
//! the durable file operations on them.
//!
//! For key `a/b/name` under root `R`:
//! - data: `R/a/b/name` — exactly the object's bytes, so the files can be read by other tools;
//! - sidecar: `R/a/b/.~meta.name.json` — size, crc32c, tags and metadata ([`Sidecar`]);
//! - temp files: `R/a/b/.~tmp.name.<random>` while a put is in progress.
//!
//! Invariants:
//! - internal files start with [`RESERVED_PREFIX`], which no key component may, so they can never
//!   collide with a key and `list` can skip them by name;
//! - a file only ever appears under a data or sidecar name by `rename` of a complete, fsynced temp
//!   file, followed by an fsync of the directory ([`commit`]);
//! - a [`TempPath`] removes its file when dropped unless committed, so failed and cancelled puts
//!   clean up after themselves (a killed process leaves only invisible temp files behind).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::key::{RESERVED_PREFIX, crc_from_hex, crc_to_hex};

/// Version of the sidecar format written by this code.
pub(super) const SIDECAR_FORMAT: u32 = 1;

/// Everything about an object except its bytes, stored next to it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Sidecar {
    pub format: u32,
    /// Size of the data file as written; a data file of another size is corrupt.
    pub size: u64,
    /// crc32c of the data as 8 hex digits.
    pub crc32c: String,
    pub tags: Vec<(String, String)>,
    pub metadata: BTreeMap<String, String>,
}

impl Sidecar {
    pub(super) fn new(
        size: u64,
        crc: u32,
        tags: Vec<(String, String)>,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        Sidecar {
            format: SIDECAR_FORMAT,
            size,
            crc32c: crc_to_hex(crc),
            tags,
            metadata,
        }
    }

    pub(super) fn crc(&self) -> Option<u32> {
        crc_from_hex(&self.crc32c)
    }
}

/// Paths of one object.
#[derive(Debug, Clone)]
pub(super) struct ObjectPaths {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub sidecar: PathBuf,
    name: String,
}

impl ObjectPaths {
    /// `key` must already be validated (relative, no `..`).
    pub(super) fn new(root: &Path, key: &str) -> Self {
        let data = root.join(key);
        let (dir_part, name) = key.rsplit_once('/').unwrap_or(("", key));
        let dir = if dir_part.is_empty() {
            root.to_path_buf()
        } else {
            root.join(dir_part)
        };
        let sidecar = dir.join(format!("{RESERVED_PREFIX}meta.{name}.json"));
        ObjectPaths {
            dir,
            data,
            sidecar,
            name: name.to_string(),
        }
    }

    /// A fresh, unique temp path in the object's directory.
    pub(super) fn temp(&self, what: &str) -> TempPath {
        let nonce: u64 = rand::random();
        TempPath::new(self.dir.join(format!(
            "{RESERVED_PREFIX}tmp.{}.{what}.{nonce:016x}",
            self.name
        )))
    }
}

/// A temp file path that is removed on drop unless [`TempPath::disarm`]ed.
#[derive(Debug)]
pub(super) struct TempPath {
    path: PathBuf,
    armed: bool,
}

impl TempPath {
    fn new(path: PathBuf) -> Self {
        TempPath { path, armed: true }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The file was renamed away: nothing to remove any more.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: a leftover temp file is invisible to `list` and harmless.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// fsync a directory so that entries created, renamed or removed in it are durable.
pub(super) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create `dir` and its missing ancestors below `root`, fsyncing each parent after creating a
/// child so the new directories survive a crash.
pub(super) fn create_dirs_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.is_dir() {
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => continue,
            Err(e) => return Err(e),
        }
        if let Some(parent) = d.parent() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// Write a small file durably to a temp path (write, fsync).
pub(super) fn write_temp(temp: &TempPath, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(temp.path())?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Make a put visible: rename the sidecar into place, then the data, then fsync the directory.
///
/// The sidecar goes first so that a visible data file is never without its sidecar. If a crash
/// falls between the two renames while *overwriting* an object, the old data is left with the
/// new sidecar; `get` then reports a checksum or length mismatch instead of returning bytes as
/// verified, and putting the object again repairs it.
pub(super) fn commit(
    paths: &ObjectPaths,
    data_tmp: &mut TempPath,
    sidecar_tmp: &mut TempPath,
) -> io::Result<()> {
    fs::rename(sidecar_tmp.path(), &paths.sidecar)?;
    sidecar_tmp.disarm();
    fs::rename(data_tmp.path(), &paths.data)?;
    data_tmp.disarm();
    fsync_dir(&paths.dir)
}

/// Read a sidecar; `Ok(None)` if there is none (an object written by another tool).
pub(super) fn read_sidecar(path: &Path) -> io::Result<Option<Sidecar>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("corrupt sidecar {}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove a file; a missing file (or a directory in its place) counts as removed.
pub(super) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::IsADirectory
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Every key under `root` that starts with `prefix` and sorts after `start_after`, in ascending
/// order. Skips internal files and entries that are not valid keys.
pub(super) fn walk_keys(
    root: &Path,
    prefix: &str,
    start_after: Option<&str>,
) -> io::Result<Vec<String>> {
    // Start at the deepest directory the prefix fully names.
    let dir_key = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    let start_dir = if dir_key.is_empty() {
        root.to_path_buf()
    } else {
        root.join(dir_key)
    };
    let mut keys = Vec::new();
    if start_dir.is_dir() {
        walk_dir(&start_dir, dir_key, prefix, &mut keys)?;
    }
    keys.retain(|k| start_after.is_none_or(|after| k.as_str() > after));
    keys.sort_unstable();
    Ok(keys)
}

fn walk_dir(dir: &Path, dir_key: &str, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with(RESERVED_PREFIX) {
            continue;
        }
        let key = if dir_key.is_empty() {
            name
        } else {
            format!("{dir_key}/{name}")
        };
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            let as_dir = format!("{key}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                walk_dir(&entry.path(), &key, prefix, out)?;
            }
        } else if file_type.is_file() && key.starts_with(prefix) {
            if crate::key::validate_key(&key).is_ok() {
                out.push(key);
            } else {
                tracing::warn!(path = %entry.path().display(), "skipping a file whose name is not a valid key");
            }
        }
    }
    Ok(())
}
