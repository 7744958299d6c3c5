//! Client-side encryption keys (issue 19): the key file, the key ring it holds, and sealing and
//! opening an object's payload. Where the sealed payload sits in an object, and what is bound to
//! it, is `object_format`'s business.
//!
//! **Schemes** (the object header's encryption byte says which one sealed an object; both read):
//! - `2`, **AES-256-GCM with a per-object key** (`ring`'s, already built in for TLS: its
//!   assembly uses AES-NI/VAES and CLMUL where the CPU has them, several times the speed of a
//!   portable implementation): new objects are written with it. The header carries 32 random bytes of *salt*; the object's key is
//!   HKDF-SHA256(file key, salt, info = [`AES_GCM_INFO`]) and its nonce is 12 zero bytes. GCM's
//!   96-bit nonce is too short to pick at random for every object a key ever seals (2^32 objects
//!   is the safe bound, and safekeepers sharing a key share no counter), so the randomness moves
//!   into the key: each key seals one object, and two objects share a key only if two 256-bit
//!   random salts collide.
//! - `1`, **XChaCha20-Poly1305** (`chacha20poly1305`, 24-byte random nonce in the header): what
//!   objects were written with before scheme 2; still read, never written.
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
//! - Every seal uses fresh random material from the OS generator (a 256-bit salt for scheme 2,
//!   a 192-bit nonce for scheme 1). At those sizes random values do not collide for any number
//!   of objects one key will ever seal, so no counter has to survive restarts or be shared
//!   between safekeepers writing with the same key.
//! - Opening either returns the exact bytes that were sealed, with the same key, scheme, salt or
//!   nonce and associated data, or an error: the tag (Poly1305 or GHASH) covers the ciphertext
//!   and the associated data.
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
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{AeadInPlace, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use ring::hkdf;

/// An encryption scheme: the object header's encryption byte (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// 1: XChaCha20-Poly1305, 24-byte random nonce in the header. Read only.
    XChaCha20Poly1305,
    /// 2: AES-256-GCM under a key derived from the file key and a 32-byte random salt in the
    /// header. Written.
    Aes256GcmDerived,
}

impl Scheme {
    /// The scheme new objects are sealed with.
    pub(crate) const WRITING: Scheme = Scheme::Aes256GcmDerived;

    pub(crate) fn id(self) -> u8 {
        match self {
            Scheme::XChaCha20Poly1305 => 1,
            Scheme::Aes256GcmDerived => 2,
        }
    }

    pub(crate) fn from_id(id: u8) -> Option<Scheme> {
        match id {
            1 => Some(Scheme::XChaCha20Poly1305),
            2 => Some(Scheme::Aes256GcmDerived),
            _ => None,
        }
    }

    /// Bytes of the per-object random material the header carries: the nonce of scheme 1, the
    /// salt of scheme 2.
    pub(crate) fn material_len(self) -> usize {
        match self {
            Scheme::XChaCha20Poly1305 => XNONCE_LEN,
            Scheme::Aes256GcmDerived => SALT_LEN,
        }
    }

    /// Fresh random material for one object (see the invariants).
    pub(crate) fn new_material(self) -> Vec<u8> {
        let mut material = vec![0u8; self.material_len()];
        OsRng.fill_bytes(&mut material);
        material
    }
}

/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Bytes of scheme 1's nonce.
const XNONCE_LEN: usize = 24;
/// Bytes of scheme 2's salt.
const SALT_LEN: usize = 32;
/// HKDF's `info` for scheme 2's per-object key: names the use, so a key derived for anything
/// else from the same file key (none today) could never equal an object key.
pub(crate) const AES_GCM_INFO: &[u8] = b"safekeeper object v1 aes-256-gcm";
/// Bytes of the authentication tag after the ciphertext (both schemes).
pub(crate) const TAG_LEN: usize = 16;
/// Longest key ID.
pub(crate) const MAX_KEY_ID_LEN: usize = 32;

/// One key: its ID, its bytes (scheme 2 derives each object's key from them) and the scheme 1
/// cipher keyed with it.
pub struct Key {
    id: String,
    secret: [u8; KEY_LEN],
    xchacha: XChaCha20Poly1305,
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
            secret: *bytes,
            xchacha: XChaCha20Poly1305::new(bytes.into()),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `buf` in place with `scheme` and its per-object `material` (from
    /// [`Scheme::new_material`], never reused); returns the tag that follows the ciphertext. In
    /// place because objects are up to a segment (16 MiB or more): a copy of that size costs a
    /// good part of what the cipher does.
    pub(crate) fn seal_in_place(
        &self,
        scheme: Scheme,
        material: &[u8],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        match scheme {
            Scheme::XChaCha20Poly1305 => self
                .xchacha
                .encrypt_in_place_detached(XNonce::from_slice(material), aad, buf)
                // Only fails for inputs beyond 256 GiB, far above any object (1 GiB segments).
                .expect("XChaCha20-Poly1305 seals any object size")
                .into(),
            Scheme::Aes256GcmDerived => {
                let tag = self
                    .object_key(material)
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key([0; 12]),
                        Aad::from(aad),
                        buf,
                    )
                    // Only fails for inputs beyond 64 GiB, far above any object (1 GiB segments).
                    .expect("AES-256-GCM seals any object size");
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                out
            }
        }
    }

    /// Opens `buf` (the ciphertext) in place; false, with `buf` garbage, when the tag does not
    /// match (wrong key, damaged bytes, or different associated data). `material` must be
    /// [`Scheme::material_len`] bytes.
    pub(crate) fn open_in_place(
        &self,
        scheme: Scheme,
        material: &[u8],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        match scheme {
            Scheme::XChaCha20Poly1305 => self
                .xchacha
                .decrypt_in_place_detached(XNonce::from_slice(material), aad, buf, tag.into())
                .is_ok(),
            Scheme::Aes256GcmDerived => self
                .object_key(material)
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key([0; 12]),
                    Aad::from(aad),
                    Tag::from(*tag),
                    buf,
                    0..,
                )
                .is_ok(),
        }
    }

    /// Scheme 2's key for the object whose header carries `salt`: AES-256-GCM keyed with
    /// HKDF-SHA256(this key, salt, [`AES_GCM_INFO`]); its nonce is all zeros (the key seals that
    /// one object only).
    fn object_key(&self, salt: &[u8]) -> LessSafeKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&self.secret);
        let info = [AES_GCM_INFO];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            // 32 bytes are far below HKDF-SHA256's 8160-byte limit.
            .expect("HKDF-SHA256 expands to 32 bytes");
        LessSafeKey::new(UnboundKey::from(okm))
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

/// A new random key, base64-encoded as the key file stores it.
pub fn new_key_base64() -> String {
    BASE64.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
}

#[cfg(test)]
mod tests;
