//! The space on the data directory's filesystem, read at scrape time for `/metrics`:
//! `safekeeper_data_dir_size_bytes` and `safekeeper_data_dir_free_bytes` (what this process may
//! still write, as `df` shows it), so "disk nearly full" can be alerted on before the WAL stops.
//!
//! Invariant: a filesystem that cannot be read is left out of the output (no sample), never
//! reported as empty or full.

use std::ffi::CString;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Size and space available to unprivileged users of the filesystem holding `path`, bytes.
pub(crate) fn space(path: &Path) -> Option<(u64, u64)> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into the zeroed struct we own and reads the NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    let unit = st.f_frsize as u64;
    Some((st.f_blocks as u64 * unit, st.f_bavail as u64 * unit))
}

/// The two families in Prometheus text format (HELP and TYPE even without a sample).
pub(crate) fn render(data_dir: &Path) -> String {
    let space = space(data_dir);
    let mut out = String::new();
    let families = [
        (
            "safekeeper_data_dir_size_bytes",
            "Size of the filesystem holding the data directory.",
            space.map(|s| s.0),
        ),
        (
            "safekeeper_data_dir_free_bytes",
            "Space this process may still write on the data directory's filesystem.",
            space.map(|s| s.1),
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        if let Some(v) = value {
            let _ = writeln!(out, "{name} {v}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_of_an_existing_directory_is_read_and_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let (size, free) = space(dir.path()).unwrap();
        assert!(size > 0 && free <= size);
        let text = render(dir.path());
        assert!(text.contains(&format!("\nsafekeeper_data_dir_size_bytes {size}\n")));
        assert!(text.contains("\nsafekeeper_data_dir_free_bytes "));
        let missing = render(Path::new("/nonexistent/safekeeper"));
        assert!(!missing.contains("\nsafekeeper_data_dir_free_bytes "));
        assert!(missing.contains("# TYPE safekeeper_data_dir_free_bytes gauge"));
    }
}
