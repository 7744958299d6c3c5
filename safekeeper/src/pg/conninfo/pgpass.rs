//! The libpq password file (`~/.pgpass`, `PGPASSFILE`) and OS account look-ups.
//!
//! Invariants, as in libpq: a file that is not a regular file or that grants any permission to
//! group or others is ignored (with a warning) rather than read; the first matching line wins;
//! `*` matches any value in the first four fields. A unix socket directory matches an entry for
//! that directory or for `localhost` (libpq does the latter only for its default directory).

use std::ffi::CStr;
use std::path::{Path, PathBuf};

/// Returns the password of the first entry of `file` matching the connection parameters.
pub fn lookup_pgpass(
    file: &Path,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        tracing::warn!("password file \"{}\" is not a plain file", file.display());
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                file.display()
            );
            return None;
        }
    }
    let content = match std::fs::read_to_string(file) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("could not read password file \"{}\": {e}", file.display());
            return None;
        }
    };
    let port = port.to_string();
    find_password(&content, [host, &port, dbname, user])
}

/// Matches `wanted` (host, port, dbname, user) against the lines of a password file.
pub(super) fn find_password(content: &str, wanted: [&str; 4]) -> Option<String> {
    let socket = wanted[0].is_empty() || super::is_unix_socket_dir(wanted[0]);
    content.lines().find_map(|line| {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let fields = split_fields(line);
        if fields.len() < 5 {
            return None;
        }
        let matches =
            fields[..4]
                .iter()
                .zip(wanted)
                .enumerate()
                .all(|(i, ((raw, value), want))| {
                    raw == "*" || value == want || (i == 0 && socket && value == "localhost")
                });
        matches.then(|| fields[4].1.clone())
    })
}

/// Splits a line at unescaped `:` into `(raw text, unescaped value)` pairs; the raw text lets a
/// literal `\*` be told apart from the wildcard. Text after a fifth separator is ignored, as in
/// libpq.
fn split_fields(line: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let (mut raw, mut value) = (String::new(), String::new());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => fields.push((std::mem::take(&mut raw), std::mem::take(&mut value))),
            '\\' => {
                raw.push('\\');
                if let Some(next) = chars.next() {
                    raw.push(next);
                    value.push(next);
                }
            }
            c => {
                raw.push(c);
                value.push(c);
            }
        }
    }
    fields.push((raw, value));
    fields
}

/// The effective user's login name, as libpq uses for the default `user`.
pub(super) fn os_user_name() -> Option<String> {
    with_passwd(|pw| {
        // SAFETY: `pw_name` of an entry returned by getpwuid_r is a valid C string that lives
        // in `buf`, which outlives this closure.
        unsafe { CStr::from_ptr(pw.pw_name) }
            .to_str()
            .ok()
            .map(str::to_owned)
    })
}

/// The effective user's home directory from the password database.
pub(super) fn os_home_dir() -> Option<PathBuf> {
    with_passwd(|pw| {
        // SAFETY: as in `os_user_name`.
        unsafe { CStr::from_ptr(pw.pw_dir) }
            .to_str()
            .ok()
            .map(PathBuf::from)
    })
}

fn with_passwd<T>(f: impl FnOnce(&libc::passwd) -> Option<T>) -> Option<T> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero `passwd` is a valid value of this plain C struct.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized memory owned by this frame;
    // getpwuid_r writes the strings of the entry into `buf`.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    f(&pw)
}
