//! Unpacking the tar stream `BASE_BACKUP` produces (ustar headers as PostgreSQL's `tarCreateHeader`
//! writes them: regular files, directories, symbolic links) into a directory, fed in pieces of
//! any size, computing the crc32c and size of every regular file as it is written.
//!
//! Invariants: no entry is written outside the target directory (absolute names and `..`
//! components are refused); a header with a bad checksum, an unknown type or a stream that ends
//! inside an entry or without the end-of-archive blocks is an error, never a silently short file.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

const BLOCK: usize = 512;

/// Size and crc32c of one unpacked regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileSum {
    pub size: u64,
    pub crc32c: u32,
}

/// An open regular file being written.
#[derive(Debug)]
struct Open {
    name: String,
    file: File,
    remaining: u64,
    size: u64,
    crc: u32,
}

/// A streaming unpacker: [`Unpacker::feed`] the archive bytes in order, then [`Unpacker::finish`].
#[derive(Debug)]
pub(crate) struct Unpacker {
    root: PathBuf,
    header: Vec<u8>,
    open: Option<Open>,
    /// Padding bytes to skip after the current file's data.
    skip: u64,
    zero_blocks: u32,
    ended: bool,
    /// Regular files written, by their name in the archive.
    pub files: BTreeMap<String, FileSum>,
}

impl Unpacker {
    pub(crate) fn new(root: &Path) -> Unpacker {
        Unpacker {
            root: root.to_path_buf(),
            header: Vec::with_capacity(BLOCK),
            open: None,
            skip: 0,
            zero_blocks: 0,
            ended: false,
            files: BTreeMap::new(),
        }
    }

    /// Consumes the next bytes of the archive.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if let Some(open) = &mut self.open {
                let n = (open.remaining as usize).min(data.len());
                open.file
                    .write_all(&data[..n])
                    .with_context(|| format!("cannot write {}", open.name))?;
                open.crc = crc32c::crc32c_append(open.crc, &data[..n]);
                open.remaining -= n as u64;
                data = &data[n..];
                if open.remaining == 0 {
                    self.close_file()?;
                }
                continue;
            }
            if self.skip > 0 {
                let n = (self.skip as usize).min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            if self.ended {
                // Trailing zero padding after the end-of-archive marker.
                ensure!(
                    data.iter().all(|&b| b == 0),
                    "data after the end of the archive"
                );
                return Ok(());
            }
            let n = (BLOCK - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() == BLOCK {
                let header = std::mem::take(&mut self.header);
                self.entry(&header)?;
            }
        }
        Ok(())
    }

    /// Checks that the archive ended where it should.
    pub(crate) fn finish(self) -> Result<BTreeMap<String, FileSum>> {
        ensure!(
            self.open.is_none() && self.skip == 0 && self.header.is_empty(),
            "the archive ends in the middle of an entry"
        );
        ensure!(
            self.ended,
            "the archive ends without its end-of-archive blocks"
        );
        Ok(self.files)
    }

    fn close_file(&mut self) -> Result<()> {
        let open = self.open.take().expect("a file is open");
        self.skip = padding(open.size);
        self.files.insert(
            open.name,
            FileSum {
                size: open.size,
                crc32c: open.crc,
            },
        );
        Ok(())
    }

    fn entry(&mut self, h: &[u8]) -> Result<()> {
        if h.iter().all(|&b| b == 0) {
            self.zero_blocks += 1;
            self.ended = self.zero_blocks >= 2;
            return Ok(());
        }
        ensure!(self.zero_blocks == 0, "an entry after an empty block");
        check_header_sum(h)?;
        let name = cstr(&h[0..100]);
        let name = name.trim_end_matches('/').to_string();
        let mode = octal(&h[100..108])? as u32 & 0o7777;
        let size = number(&h[124..136])?;
        let path = self.path_of(&name)?;
        match h[156] {
            b'0' | 0 => {
                let file = create_file(&path, mode)?;
                self.open = Some(Open {
                    name,
                    file,
                    remaining: size,
                    size,
                    crc: 0,
                });
                if size == 0 {
                    self.close_file()?;
                }
            }
            b'5' => {
                fs::create_dir_all(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode.max(0o700)))
                    .with_context(|| format!("cannot set the mode of {}", path.display()))?;
            }
            b'2' => {
                let target = cstr(&h[157..257]);
                std::os::unix::fs::symlink(&target, &path)
                    .with_context(|| format!("cannot create the link {}", path.display()))?;
            }
            t => bail!("{name}: unsupported tar entry type {:?}", t as char),
        }
        Ok(())
    }

    /// The path of an archive name under the root; refuses names that would leave it.
    fn path_of(&self, name: &str) -> Result<PathBuf> {
        let rel = Path::new(name);
        ensure!(
            !name.is_empty()
                && rel
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
            "unsafe name {name:?} in the archive"
        );
        Ok(self.root.join(rel))
    }
}

fn create_file(path: &Path, mode: u32) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if mode == 0 { 0o600 } else { mode })
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn octal(field: &[u8]) -> Result<u64> {
    let text = cstr(field);
    let t = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if t.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(t, 8).with_context(|| format!("bad octal number {t:?} in a tar header"))
}

/// A size field: octal, or base-256 when the high bit of the first byte is set (large files).
fn number(field: &[u8]) -> Result<u64> {
    if field[0] & 0x80 != 0 {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(b)))
                .context("tar size field overflows")?;
        }
        return Ok(n);
    }
    octal(field)
}

fn check_header_sum(h: &[u8]) -> Result<()> {
    let stored = octal(&h[148..156])?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    ensure!(sum == stored, "tar header checksum mismatch");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, typ: u8, size: u64) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000600");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = typ;
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn archive() -> Vec<u8> {
        let mut a = header("global", b'5', 0);
        a.extend(header("global/x", b'0', 5));
        a.extend(b"hello");
        a.extend(vec![0u8; BLOCK - 5]);
        a.extend(header("empty", b'0', 0));
        a.extend(vec![0u8; 2 * BLOCK]);
        a
    }

    #[test]
    fn unpacks_in_pieces_of_any_size() {
        for piece in [1, 7, 512, 100_000] {
            let dir = tempfile::tempdir().unwrap();
            let mut u = Unpacker::new(dir.path());
            for p in archive().chunks(piece) {
                u.feed(p).unwrap();
            }
            let files = u.finish().unwrap();
            assert_eq!(fs::read(dir.path().join("global/x")).unwrap(), b"hello");
            assert_eq!(files["global/x"].crc32c, crc32c::crc32c(b"hello"));
            assert_eq!(files["empty"].size, 0);
        }
    }

    #[test]
    fn truncated_or_unsafe_archives_fail() {
        let dir = tempfile::tempdir().unwrap();
        let a = archive();
        let mut u = Unpacker::new(dir.path());
        u.feed(&a[..BLOCK + 600]).unwrap();
        assert!(u.finish().is_err());
        let dir = tempfile::tempdir().unwrap();
        let mut u = Unpacker::new(dir.path());
        assert!(u.feed(&header("../evil", b'0', 0)).is_err());
        let mut bad = header("x", b'0', 0);
        bad[0] = b'y';
        let mut u = Unpacker::new(dir.path());
        assert!(u.feed(&bad).is_err());
    }
}
