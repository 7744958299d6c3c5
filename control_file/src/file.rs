//! Reading and durably writing control files.
//!
//! Owns crash safety: a save writes `PATH.tmp`, fsyncs it, renames it over `PATH` and fsyncs the
//! directory, so after a crash at any point `PATH` holds either the old or the new contents, both
//! complete. A leftover `PATH.tmp` is ignored by loads and overwritten by the next save.
//! One writer per file: callers serialise saves of the same path (the service holds the cluster).
//!
//! Failpoints (feature `failpoints`): `control-file-after-write`, `control-file-before-rename`,
//! `control-file-before-dir-fsync`; the `return` action makes the save fail with an I/O error there.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::ControlFileError;
use crate::format::{self, CURRENT_FORMAT_VERSION, HEADER_LEN};
use crate::state::ClusterState;

/// `PATH` with `suffix` appended to its file name (`safekeeper.control` → `safekeeper.control.tmp`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The temporary file a save of `path` writes before renaming it into place.
pub fn temp_path(path: &Path) -> PathBuf {
    with_suffix(path, ".tmp")
}

/// Reads the bytes of a control file. Stops after the header when it already proves the file wrong
/// (bad magic, or a length that does not match the file size), so a huge stray file is not read.
/// The returned bytes are checked by [`format::decode_file`].
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, ControlFileError> {
    let mut file = File::open(path).map_err(|e| ControlFileError::io(path, "open", e))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    (&mut file)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| ControlFileError::io(path, "read", e))?;
    let Some(expected) = format::declared_len(&bytes) else {
        return Ok(bytes); // empty, short or bad magic: decode_file reports which
    };
    let size = file
        .metadata()
        .map_err(|e| ControlFileError::io(path, "stat", e))?
        .len();
    let path_buf = path.to_owned();
    if size < expected {
        return Err(ControlFileError::Truncated {
            path: path_buf,
            expected,
            actual: size,
        });
    }
    if size > expected {
        return Err(ControlFileError::TrailingBytes {
            path: path_buf,
            expected,
            actual: size,
        });
    }
    // Read one byte more than announced so a file growing under us is still caught as such.
    (&mut file)
        .take(expected + 1 - HEADER_LEN as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| ControlFileError::io(path, "read", e))?;
    Ok(bytes)
}

/// Loads, verifies and (in memory) upgrades the control file at `path`.
pub fn load(path: &Path) -> Result<ClusterState, ControlFileError> {
    load_versioned(path).map(|(state, _)| state)
}

/// Like [`load`], also returning the format version found on disk.
pub fn load_versioned(path: &Path) -> Result<(ClusterState, u32), ControlFileError> {
    let bytes = read_bytes(path)?;
    format::decode_file(path, &bytes)
}

/// Validates `state` and durably writes it to `path` in the newest format.
pub fn save(path: &Path, state: &ClusterState) -> Result<(), ControlFileError> {
    state
        .validate()
        .map_err(|reason| ControlFileError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
    let bytes = format::encode_file(state).map_err(|reason| ControlFileError::Encode {
        path: path.to_owned(),
        reason,
    })?;
    write_durably(path, &bytes)
}

#[cfg(feature = "failpoints")]
fn failpoint_error(path: &Path, name: &'static str) -> ControlFileError {
    ControlFileError::Io {
        path: path.to_owned(),
        op: name,
        source: std::io::Error::other("failpoint triggered"),
    }
}

/// Atomically replaces `path` with `bytes`: temp file, fsync, rename, directory fsync.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), ControlFileError> {
    let tmp = temp_path(path);
    let write_tmp = || -> Result<(), ControlFileError> {
        // A temp file left by a crash is stale: replace it (even if a crash left it read-only).
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| ControlFileError::io(&tmp, "create temp file", e))?;
        file.write_all(bytes)
            .map_err(|e| ControlFileError::io(&tmp, "write temp file", e))?;
        fail::fail_point!("control-file-after-write", |_| {
            Err(failpoint_error(&tmp, "control-file-after-write"))
        });
        file.sync_all()
            .map_err(|e| ControlFileError::io(&tmp, "fsync temp file", e))?;
        drop(file);
        fail::fail_point!("control-file-before-rename", |_| {
            Err(failpoint_error(&tmp, "control-file-before-rename"))
        });
        fs::rename(&tmp, path).map_err(|e| ControlFileError::io(path, "rename temp file over", e))
    };
    if let Err(e) = write_tmp() {
        // Best effort: a leftover temp file is harmless, but do not leave garbage when we can help it.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fail::fail_point!("control-file-before-dir-fsync", |_| {
        Err(failpoint_error(path, "control-file-before-dir-fsync"))
    });
    fsync_parent_dir(path)
}

fn fsync_parent_dir(path: &Path) -> Result<(), ControlFileError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ControlFileError::Io {
            path: dir.to_owned(),
            op: "fsync directory",
            source: e,
        })
}

/// What [`upgrade_in_place`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpgradeOutcome {
    /// The file already had the newest format; nothing was written.
    AlreadyCurrent { version: u32 },
    /// The file was rewritten in format `to`; `backup` holds the original bytes.
    Upgraded { from: u32, to: u32, backup: PathBuf },
}

/// Rewrites the control file at `path` in the newest format, first saving its original bytes
/// durably to `PATH.bak` (replacing an older backup). A no-op when it is already the newest.
pub fn upgrade_in_place(path: &Path) -> Result<UpgradeOutcome, ControlFileError> {
    let original = read_bytes(path)?;
    let (state, version) = format::decode_file(path, &original)?;
    if version == CURRENT_FORMAT_VERSION {
        return Ok(UpgradeOutcome::AlreadyCurrent { version });
    }
    let backup = with_suffix(path, ".bak");
    write_durably(&backup, &original)?;
    save(path, &state)?;
    Ok(UpgradeOutcome::Upgraded {
        from: version,
        to: CURRENT_FORMAT_VERSION,
        backup,
    })
}
