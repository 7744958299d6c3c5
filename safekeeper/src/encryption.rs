//! Client-side encryption keys (issue 19): the key file, the key ring it holds, and sealing and
//! opening an object's payload with XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`). Where
//! the sealed payload sits in an object, and what is bound to it, is `object_format`'s business.
//!
//! **Key file.** Text, one key a line: `ID BASE64KEY` (32 random bytes, standard base64);
//! blank lines and lines starting with `#` are ignored. The *last* key is the writing key (new
//! objects are sealed with it); every key reads. Rotation therefore appends a line
//! (`safekeeper keygen --append`), and an old key stays as long as objects sealed with it may
//! be read. IDs are 1-32 characters of letters, digits, `.`, `_`, `-`, unique in the file; an
//! object names the ID of its key in its header, so a missing key is an error naming it.
//!
//! Invariants:
//! - A key file readable by group or others is refused (one line saying how to fix it): the key
//!   is the archive's only protection, and a file others can read protects nothing.
//! - Key bytes never reach a log, an error or `Debug` output: [`Key`]'s `Debug` prints its ID
//!   only, and parse errors name the line, never its content.
//! - Every seal uses a fresh random 192-bit nonce from the OS generator. At that size random
//!   nonces do not collide for any number of objects one key will ever seal, so no counter has to
//!   survive restarts or be shared between safekeepers writing with the same key.
//! - Opening either returns the exact bytes that were sealed, with the same key, nonce and
//!   associated data, or an error: the Poly1305 tag covers the ciphertext and the associated data.
//!
//! **One ring per process.** The key file is an option of every command that writes or reads the
//! archive, and every reader of objects needs the ring (restore, verify, prune, recover, cat, the
//! offloader): rather than thread it through each of them, the command installs it once
//! ([`install`]) before it opens the storage, and `object_format` reads it ([`installed`]). Unit
//! tests never install one: they pass rings explicitly to `object_format`'s `*_with` functions.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{AeadCore, AeadInPlace, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Scheme id in the object header's encryption byte: XChaCha20-Poly1305, 24-byte nonce, 16-byte
/// tag appended to the ciphertext.
pub(crate) const SCHEME_XCHACHA20_POLY1305: u8 = 1;
/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Bytes of a nonce.
pub(crate) const NONCE_LEN: usize = 24;
/// Bytes of the authentication tag after the ciphertext.
pub(crate) const TAG_LEN: usize = 16;
/// Longest key ID.
pub(crate) const MAX_KEY_ID_LEN: usize = 32;

/// One key: its ID and the cipher keyed with it.
pub struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key from its raw bytes.
    pub fn new(id: &str, bytes: &[u8; KEY_LEN]) -> Result<Key> {
        check_id(id)?;
        Ok(Key {
            id: id.to_string(),
            cipher: XChaCha20Poly1305::new(bytes.into()),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `buf` in place under `nonce` (from [`new_nonce`], never reused); returns the tag
    /// that follows the ciphertext. In place because objects are up to a segment (16 MiB or
    /// more): a copy of that size costs as much as the cipher.
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        self.cipher
            .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, buf)
            // Only fails for inputs beyond 256 GiB, far above any object (1 GiB segments).
            .expect("XChaCha20-Poly1305 seals any object size")
            .into()
    }

    /// Opens `buf` (the ciphertext) in place; false, with `buf` garbage, when the tag does not
    /// match (wrong key, damaged bytes, or different associated data).
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        self.cipher
            .decrypt_in_place_detached(XNonce::from_slice(nonce), aad, buf, tag.into())
            .is_ok()
    }
}

/// The keys of a key file, in file order; the last one writes.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    /// A ring of `keys` (the last writes). At least one key, IDs unique.
    pub fn new(keys: Vec<Key>) -> Result<KeyRing> {
        if keys.is_empty() {
            bail!("no key");
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                bail!("key id {:?} appears twice", k.id);
            }
        }
        Ok(KeyRing { keys })
    }

    /// Parses the text of a key file (see the module documentation).
    pub fn parse(text: &str) -> Result<KeyRing> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = n + 1;
            let mut fields = line.split_whitespace();
            let (Some(id), Some(b64), None) = (fields.next(), fields.next(), fields.next()) else {
                bail!("line {n}: expected `ID BASE64KEY`");
            };
            let bytes = BASE64
                .decode(b64)
                .ok()
                .and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok());
            let Some(bytes) = bytes else {
                bail!("line {n}: the key is not {KEY_LEN} bytes of base64");
            };
            keys.push(Key::new(id, &bytes).with_context(|| format!("line {n}"))?);
        }
        KeyRing::new(keys)
    }

    /// Reads and parses the key file at `path`, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<KeyRing> {
        let shown = path.display();
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read key file {shown}"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "key file {shown} is readable or writable by group or others (mode {mode:03o}): chmod 600 {shown}"
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read key file {shown}"))?;
        KeyRing::parse(&text).with_context(|| format!("key file {shown}"))
    }

    /// The key new objects are sealed with: the last of the file.
    pub fn writing(&self) -> &Key {
        // `new` guarantees at least one key.
        &self.keys[self.keys.len() - 1]
    }

    /// The key of ID `id`, if the ring has it.
    pub fn get(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The IDs, in file order.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }
}

/// A key ID: 1-32 characters of letters, digits, `.`, `_`, `-` (it is printed in errors and
/// stored in headers, so nothing that needs quoting).
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        bail!("key id {id:?} must be 1-{MAX_KEY_ID_LEN} letters, digits, '.', '_' or '-'");
    }
    Ok(())
}

static INSTALLED: OnceLock<KeyRing> = OnceLock::new();

/// Makes `ring` the process's key ring (see the module documentation). Once per process.
pub fn install(ring: KeyRing) -> Result<()> {
    INSTALLED
        .set(ring)
        .map_err(|_| anyhow::anyhow!("a key ring is already installed"))
}

/// Loads the key file at `path`, if given, and installs it; logs the key IDs (never the keys).
/// A process takes its key file from one option, so when a ring is already installed (a
/// command that opens the archive twice) this does nothing.
pub fn install_from(path: Option<&Path>) -> Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let ring = KeyRing::load(path)?;
    tracing::debug!(key_file = %path.display(), keys = ?ring.ids(), writing = ring.writing().id(), "encryption keys loaded");
    install(ring)
}

/// The process's key ring, if one was installed.
pub(crate) fn installed() -> Option<&'static KeyRing> {
    INSTALLED.get()
}

/// A fresh random nonce from the OS generator (see the invariants: random 192-bit nonces do not
/// collide).
pub(crate) fn new_nonce() -> [u8; NONCE_LEN] {
    XChaCha20Poly1305::generate_nonce(&mut OsRng).into()
}

/// A new random key, base64-encoded as the key file stores it.
pub fn new_key_base64() -> String {
    BASE64.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
}

#[cfg(test)]
mod tests;
