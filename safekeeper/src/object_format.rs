//! The bytes of every object the safekeeper uploads: a small self-describing header, then the WAL
//! (or history file) bytes, compressed with zstd or stored as they are.
//!
//! ```text
//! off len field
//! 0   8   magic            b"\x89SKWAL\r\n"
//! 8   1   format version   1
//! 9   1   codec            0 = none, 1 = zstd
//! 10  1   encryption       0 = none, 1 = XChaCha20-Poly1305, 2 = AES-256-GCM with a per-object
//!                          key (other values are refused)
//! 11  1   reserved         0
//! 12  4   header length    u32 LE, 40 in version 1 unencrypted; readers skip header bytes they
//!                          do not know
//! 16  8   WAL length       u64 LE, the bytes the object holds once decoded
//! 24  8   payload length   u64 LE, the bytes after the header
//! 32  4   crc32c           u32 LE, of the decoded bytes (0 when encrypted: see below)
//! 36  4   header crc32c    u32 LE, of bytes [0, 36)
//! ```
//!
//! An encrypted object (encryption 1 or 2, issue 19) extends the header after those 40 bytes,
//! which keep their meaning (so [`decoded_len`] still needs only a 40-byte ranged GET):
//!
//! ```text
//! 40    1   key id length L  1..=32
//! 41    L   key id           ASCII, the key's ID in the key file (`crate::encryption`)
//! 41+L  M   material         random, fresh for every object: scheme 2's 32-byte salt (the
//!                            object's key is derived from it), scheme 1's 24-byte nonce
//! ```
//!
//! and its payload is `seal(crc32c of the decoded bytes, u32 LE || stored payload)`: the stored
//! payload (zstd or plain, as the codec says: compress, then encrypt, since ciphertext does not
//! compress) with the checksum in front, encrypted, then the 16-byte tag (GHASH for scheme 2,
//! Poly1305 for scheme 1). New objects are written with scheme 2; scheme 1 objects (written
//! before it) are read. The
//! associated data is the whole header (all `header length` bytes) followed by the object's
//! *bound name* ([`bound_name`]: its key relative to the cluster's prefix, `wal/NAME`), so
//! neither a header field nor the name can change without the tag failing: an object copied
//! over another name (an old segment served as a newer one) is refused. The cluster name and
//! storage prefix are not bound, so a whole archive can be moved to another bucket, prefix or
//! cluster name and stay readable.
//!
//! The clear header of an encrypted object carries 0 as the crc32c: a checksum of the
//! plaintext in clear lets anyone holding the bucket confirm a guess of an object's content
//! (e.g. "this segment is all zeros", or a known table's pages). The tag already authenticates
//! the bytes; the checksum, sealed inside, still checks the decoded bytes end to end
//! (compression included), as for unencrypted objects.
//!
//! Owns the encoding and its checks; what an object holds (which WAL range) is in its name
//! (`control_file::names`), and which objects make a segment is `chain.rs`'s business; keys
//! and the cipher are `crate::encryption`'s.
//!
//! Invariants:
//! - `decode(encode(x)) == x` for every input and every codec; `decode` returns bytes only when
//!   the header checksum, both lengths and the crc32c of the decoded bytes all match: a damaged
//!   object is an error naming the problem, never wrong bytes. For an encrypted object a missing
//!   or wrong key is an error naming the key ID the object needs.
//! - Objects written before this format existed (*raw*: the bytes themselves) stay readable:
//!   anything that does not start with [`MAGIC`] is raw. No raw object can start with it: WAL
//!   pages start with `xlp_magic` (`0xD1xx`) and history files with a decimal digit.
//! - The header is frozen per format version; a newer version or an unknown codec or encryption
//!   is refused with a message saying so, so an old binary never misreads a newer object.
//! - The first 40 bytes are enough to know the decoded length ([`peek_header`]), so a reader can
//!   learn a full segment's size with a ranged GET.

use bytes::Bytes;
use thiserror::Error;

use crate::encryption::{self, KeyRing, MAX_KEY_ID_LEN, Scheme, TAG_LEN};

/// The first bytes of every encoded object (PNG-style: a high bit, then text, then CR LF, so a
/// transfer that mangles line ends or strips the high bit is caught at once).
pub(crate) const MAGIC: [u8; 8] = *b"\x89SKWAL\r\n";
/// The only format version written so far.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// Length of a version 1 header.
pub(crate) const HEADER_LEN: usize = 40;
/// zstd level used when nothing else is configured. Level 1 because compression sits between a
/// completed segment and the archive (and takes CPU from PostgreSQL on a small host): measured on
/// this project's 2-core machine, a 16 MiB pgbench segment compresses to 11.7% at level 1 in
/// 40 ms and to 9.3% at level 3 in 87 ms; the upload-cost bench's half-compressible payload to
/// 50.0% in 49 ms at level 1 and 52.0% in 181 ms at level 3 (small inputs likewise).
pub(crate) const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// How the payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// The bytes as they are (compression off).
    None,
    /// One zstd frame.
    Zstd,
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
        }
    }

    fn from_id(id: u8) -> Option<Codec> {
        match id {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// What `encode` does: the codec and, for zstd, its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    pub codec: Codec,
    pub level: i32,
}

impl Default for Compression {
    fn default() -> Compression {
        Compression {
            codec: Codec::Zstd,
            level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

impl Compression {
    /// Parses the `--compression` value: `none`, `zstd` (level 1) or `zstd:LEVEL` (1..=22).
    pub fn parse(s: &str) -> Result<Compression, String> {
        let (codec, level) = match s.split_once(':') {
            Some((c, l)) => (c, Some(l)),
            None => (s, None),
        };
        match (codec, level) {
            ("none", None) => Ok(Compression {
                codec: Codec::None,
                level: 0,
            }),
            ("zstd", None) => Ok(Compression::default()),
            ("zstd", Some(l)) => match l.parse::<i32>() {
                Ok(level) if (1..=22).contains(&level) => Ok(Compression {
                    codec: Codec::Zstd,
                    level,
                }),
                _ => Err(format!("zstd level {l:?} is not a number from 1 to 22")),
            },
            _ => Err(format!(
                "unknown compression {s:?}: expected none, zstd or zstd:LEVEL"
            )),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.codec {
            Codec::None => write!(f, "none"),
            Codec::Zstd => write!(f, "zstd:{}", self.level),
        }
    }
}

/// Why an object could not be decoded. The text is one line for the user.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum FormatError {
    #[error("object header is cut off ({0} bytes, a header has {HEADER_LEN})")]
    ShortHeader(usize),
    #[error("object header checksum mismatch (damaged header)")]
    HeaderChecksum,
    #[error(
        "object format version {0} is newer than this safekeeper reads ({FORMAT_VERSION}): upgrade it"
    )]
    NewerVersion(u8),
    #[error("object uses codec {0}, unknown to this safekeeper")]
    UnknownCodec(u8),
    #[error("object is encrypted with scheme {0}, unknown to this safekeeper")]
    Encrypted(u8),
    #[error("object header's encryption fields are invalid")]
    EncryptionHeader,
    #[error(
        "object is encrypted with key {0}: give the key file holding it (--encryption-key-file)"
    )]
    NoKeyFile(String),
    #[error("object is encrypted with key {id}, which the key file does not hold (it has {have})")]
    UnknownKey { id: String, have: String },
    #[error(
        "object does not decrypt with key {0}: damaged, stored under another name, or a different key with that id"
    )]
    Decrypt(String),
    #[error("object header length {0} is invalid")]
    HeaderLength(u32),
    #[error("object payload has {found} bytes, its header says {expected} (truncated or damaged)")]
    PayloadLength { expected: u64, found: u64 },
    #[error("object does not decompress: {0}")]
    Decompress(String),
    #[error("object decodes to {found} bytes, its header says {expected}")]
    WalLength { expected: u64, found: u64 },
    #[error("object content checksum mismatch (crc32c {found:08x}, header says {expected:08x})")]
    Checksum { expected: u32, found: u32 },
}

/// The parsed fixed part of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub codec: Codec,
    /// Encryption scheme, 0 for none.
    pub encryption: u8,
    pub header_len: usize,
    pub wal_len: u64,
    pub payload_len: u64,
    pub crc32c: u32,
}

/// How an object was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Written before this format: the object's bytes are the WAL.
    Raw,
    /// This format, with the codec it names.
    Encoded(Codec),
}

/// The decoded content of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub data: Bytes,
    pub stored: Stored,
    /// crc32c of `data` (from the header, verified; computed for raw objects).
    pub crc32c: u32,
}

/// True when `object` starts with the magic of this format (it is not a raw object).
pub(crate) fn is_encoded(object: &[u8]) -> bool {
    object.starts_with(&MAGIC)
}

/// The name an encrypted object is bound to (part of its associated data): its key relative to
/// the cluster's prefix, i.e. `<cluster>/wal/NAME` without `<cluster>/` (keys are relative to the
/// storage root already, so the bucket and prefix are never part of it). See the module doc.
pub(crate) fn bound_name(key: &str) -> &str {
    key.split_once('/').map_or(key, |(_, rest)| rest)
}

/// Encodes `data` with `compression`, unencrypted (what [`encode_object`] does with no key ring).
#[cfg(test)]
pub(crate) fn encode(data: &[u8], compression: &Compression) -> Bytes {
    encode_with(data, compression, "", None)
}

/// Encodes `data`, to be stored under `key`, with `compression` and the process's key ring
/// (`crate::encryption::installed`): encrypted with its writing key when there is one.
pub(crate) fn encode_object(data: &[u8], compression: &Compression, key: &str) -> Bytes {
    encode_with(data, compression, key, encryption::installed())
}

/// Encodes `data` with `compression`, encrypted with `ring`'s writing key and bound to `key`
/// when a ring is given. A zstd payload larger than the data itself (incompressible input) is
/// stored with codec none instead, so an object never costs more than its bytes plus the header
/// (and the tag).
pub(crate) fn encode_with(
    data: &[u8],
    compression: &Compression,
    key: &str,
    ring: Option<&KeyRing>,
) -> Bytes {
    encode_sealed_with(data, compression, key, ring.map(|r| (r, Scheme::WRITING)))
}

/// [`encode_with`] sealing with a given scheme (tests write the read-only scheme 1 with it).
pub(crate) fn encode_sealed_with(
    data: &[u8],
    compression: &Compression,
    key: &str,
    sealing: Option<(&KeyRing, Scheme)>,
) -> Bytes {
    let crc = crc32c::crc32c(data);
    let compressed = match compression.codec {
        Codec::Zstd => zstd::bulk::compress(data, compression.level)
            .ok()
            .filter(|c| c.len() < data.len()),
        Codec::None => None,
    };
    let (codec, payload): (Codec, &[u8]) = match &compressed {
        Some(c) => (Codec::Zstd, c),
        None => (Codec::None, data),
    };
    let Some((ring, scheme)) = sealing else {
        let mut out = header(codec, 0, data.len(), payload.len(), crc, &[]);
        out.extend_from_slice(payload);
        return Bytes::from(out);
    };
    seal(data.len(), crc, codec, payload, key, ring, scheme)
}

/// An encrypted object: the header with the extension for `scheme`, then the sealed payload
/// (see the module documentation).
fn seal(
    wal_len: usize,
    crc: u32,
    codec: Codec,
    payload: &[u8],
    key: &str,
    ring: &KeyRing,
    scheme: Scheme,
) -> Bytes {
    let sealing = ring.writing();
    let id = sealing.id().as_bytes();
    let material = scheme.new_material();
    let mut ext = Vec::with_capacity(1 + id.len() + material.len());
    ext.push(id.len() as u8);
    ext.extend_from_slice(id);
    ext.extend_from_slice(&material);
    let sealed_len = 4 + payload.len() + TAG_LEN;
    let mut out = header(codec, scheme.id(), wal_len, sealed_len, 0, &ext);
    let header_len = out.len();
    let aad = [&out[..], bound_name(key).as_bytes()].concat();
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    let tag = sealing.seal_in_place(scheme, &material, &aad, &mut out[header_len..]);
    out.extend_from_slice(&tag);
    Bytes::from(out)
}

/// The header bytes: the 40 fixed ones, then `ext`.
fn header(
    codec: Codec,
    encryption: u8,
    wal_len: usize,
    payload_len: usize,
    crc: u32,
    ext: &[u8],
) -> Vec<u8> {
    let header_len = HEADER_LEN + ext.len();
    let mut out = Vec::with_capacity(header_len + payload_len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[FORMAT_VERSION, codec.id(), encryption, 0]);
    out.extend_from_slice(&(header_len as u32).to_le_bytes());
    out.extend_from_slice(&(wal_len as u64).to_le_bytes());
    out.extend_from_slice(&(payload_len as u64).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[..36]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(ext);
    out
}

/// Parses the header at the start of `object`; `Ok(None)` for a raw object. Needs only the first
/// [`HEADER_LEN`] bytes.
pub(crate) fn peek_header(object: &[u8]) -> Result<Option<Header>, FormatError> {
    if !is_encoded(object) {
        return Ok(None);
    }
    if object.len() < HEADER_LEN {
        return Err(FormatError::ShortHeader(object.len()));
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([object[o], object[o + 1], object[o + 2], object[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    if crc32c::crc32c(&object[..36]) != u32_at(36) {
        return Err(FormatError::HeaderChecksum);
    }
    if object[8] != FORMAT_VERSION {
        return Err(FormatError::NewerVersion(object[8]));
    }
    if object[10] != 0 && Scheme::from_id(object[10]).is_none() {
        return Err(FormatError::Encrypted(object[10]));
    }
    let codec = Codec::from_id(object[9]).ok_or(FormatError::UnknownCodec(object[9]))?;
    let header_len = u32_at(12);
    if (header_len as usize) < HEADER_LEN || header_len > 4096 {
        return Err(FormatError::HeaderLength(header_len));
    }
    Ok(Some(Header {
        codec,
        encryption: object[10],
        header_len: header_len as usize,
        wal_len: u64_at(16),
        payload_len: u64_at(24),
        crc32c: u32_at(32),
    }))
}

/// The decoded length of an object whose first bytes are `prefix` (a ranged GET of
/// [`HEADER_LEN`] bytes is enough); `None` for a raw object, whose length is its size.
pub(crate) fn decoded_len(prefix: &[u8]) -> Result<Option<u64>, FormatError> {
    Ok(peek_header(prefix)?.map(|h| h.wal_len))
}

/// Decodes the object stored under `key` with the process's key ring
/// (`crate::encryption::installed`): see [`decode_with`].
pub(crate) fn decode(object: Bytes, key: &str) -> Result<Decoded, FormatError> {
    decode_with(object, key, encryption::installed())
}

/// Decodes an object stored under `key`: its WAL bytes, checked against the header (see the
/// module invariants), decrypted with the key of `ring` its header names. Raw objects are
/// returned as they are.
pub(crate) fn decode_with(
    object: Bytes,
    key: &str,
    ring: Option<&KeyRing>,
) -> Result<Decoded, FormatError> {
    let Some(h) = peek_header(&object)? else {
        let crc32c = crc32c::crc32c(&object);
        return Ok(Decoded {
            data: object,
            stored: Stored::Raw,
            crc32c,
        });
    };
    if object.len() < h.header_len {
        return Err(FormatError::ShortHeader(object.len()));
    }
    let found = (object.len() - h.header_len) as u64;
    if found != h.payload_len {
        return Err(FormatError::PayloadLength {
            expected: h.payload_len,
            found,
        });
    }
    let (payload, expected_crc) = if h.encryption == 0 {
        (object.slice(h.header_len..), h.crc32c)
    } else {
        open_payload(object, &h, key, ring)?
    };
    let data = match h.codec {
        Codec::None => payload,
        Codec::Zstd => {
            // The header bounds the allocation; a lying header fails the length check below.
            let capacity = usize::try_from(h.wal_len)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            let out = zstd::bulk::decompress(&payload, capacity)
                .map_err(|e| FormatError::Decompress(e.to_string()))?;
            Bytes::from(out)
        }
    };
    if data.len() as u64 != h.wal_len {
        return Err(FormatError::WalLength {
            expected: h.wal_len,
            found: data.len() as u64,
        });
    }
    let found = crc32c::crc32c(&data);
    if found != expected_crc {
        return Err(FormatError::Checksum {
            expected: expected_crc,
            found,
        });
    }
    Ok(Decoded {
        data,
        stored: Stored::Encoded(h.codec),
        crc32c: found,
    })
}

/// The stored payload of an encrypted object and the crc32c sealed with it: the header
/// extension parsed, the key it names found in `ring`, the tag checked against the whole header
/// and the bound name of `key`. Decrypts in place (the object is usually the only reference to
/// its download; otherwise it is copied once).
fn open_payload(
    object: Bytes,
    h: &Header,
    key: &str,
    ring: Option<&KeyRing>,
) -> Result<(Bytes, u32), FormatError> {
    let scheme = Scheme::from_id(h.encryption).ok_or(FormatError::Encrypted(h.encryption))?;
    let ext = &object[HEADER_LEN..h.header_len];
    let id_len = usize::from(*ext.first().ok_or(FormatError::EncryptionHeader)?);
    let material_len = scheme.material_len();
    if id_len == 0 || id_len > MAX_KEY_ID_LEN || ext.len() < 1 + id_len + material_len {
        return Err(FormatError::EncryptionHeader);
    }
    let id = std::str::from_utf8(&ext[1..1 + id_len])
        .ok()
        .filter(|id| encryption::check_id(id).is_ok())
        .ok_or(FormatError::EncryptionHeader)?
        .to_string();
    let material = ext[1 + id_len..1 + id_len + material_len].to_vec();
    let ring = ring.ok_or_else(|| FormatError::NoKeyFile(id.clone()))?;
    let sealing = ring.get(&id).ok_or_else(|| FormatError::UnknownKey {
        id: id.clone(),
        have: ring.ids().join(", "),
    })?;
    // The sealed part holds at least the crc32c and the tag.
    let sealed_end = object
        .len()
        .checked_sub(TAG_LEN)
        .filter(|end| *end >= h.header_len + 4)
        .ok_or_else(|| FormatError::Decrypt(id.clone()))?;
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&object[sealed_end..]);
    let aad = [&object[..h.header_len], bound_name(key).as_bytes()].concat();
    let mut buf = object
        .try_into_mut()
        .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]));
    if !sealing.open_in_place(
        scheme,
        &material,
        &aad,
        &mut buf[h.header_len..sealed_end],
        &tag,
    ) {
        return Err(FormatError::Decrypt(id));
    }
    let at = h.header_len;
    let crc = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    Ok((buf.freeze().slice(at + 4..sealed_end), crc))
}

#[cfg(test)]
mod encrypted_tests;
#[cfg(test)]
mod tests;
