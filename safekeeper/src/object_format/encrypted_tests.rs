//! Encrypted objects: round trips, nothing in clear, the name bound, a missing or wrong key named
//! in the error, every flipped byte detected, rotation, and the committed golden encrypted
//! object still decrypting with its committed test key.

use bytes::Bytes;
use proptest::prelude::*;

use super::tests::walish;
use super::*;
use crate::encryption::{KEY_LEN, Key, KeyRing, Scheme};

const SCHEMES: [Scheme; 2] = [Scheme::Aes256GcmDerived, Scheme::XChaCha20Poly1305];

const NAME: &str = "main/wal/000000010000000000000003";

fn ring(ids: &[(&str, u8)]) -> KeyRing {
    let keys = ids
        .iter()
        .map(|(id, b)| Key::new(id, &[*b; KEY_LEN]).expect("key"))
        .collect();
    KeyRing::new(keys).expect("ring")
}

fn zstd() -> Compression {
    Compression::default()
}

fn none() -> Compression {
    Compression {
        codec: Codec::None,
        level: 0,
    }
}

/// The key id stored in an encrypted object's header.
fn key_id_of(obj: &[u8]) -> String {
    let len = usize::from(obj[HEADER_LEN]);
    String::from_utf8(obj[HEADER_LEN + 1..HEADER_LEN + 1 + len].to_vec()).expect("ascii id")
}

#[test]
fn round_trip_hides_content_and_keeps_the_fixed_header() {
    let r = ring(&[("a", 1)]);
    let mut data = walish(200_000);
    data[1000..1016].copy_from_slice(b"MARKER-IN-CLEAR!");
    for c in [zstd(), none()] {
        let obj = encode_with(&data, &c, NAME, Some(&r));
        assert_eq!(obj[10], 2, "new objects are sealed with AES-256-GCM");
        assert_eq!(key_id_of(&obj), "a");
        let hidden = |needle: &[u8]| !obj.windows(needle.len()).any(|w| w == needle);
        assert!(hidden(b"MARKER-IN-CLEAR!"), "{c}: marker in clear");
        assert!(hidden(&[0xD1; 8]), "{c}: WAL-ish bytes in clear");
        // The clear header holds no checksum of the plaintext; its length is still there.
        assert_eq!(&obj[32..36], &[0, 0, 0, 0]);
        assert_eq!(decoded_len(&obj[..HEADER_LEN]), Ok(Some(data.len() as u64)));
        let d = decode_with(obj.clone(), NAME, Some(&r)).expect("decode");
        assert_eq!(d.data, data);
        assert_eq!(d.crc32c, crc32c::crc32c(&data));
        // Compress, then encrypt: a compressible segment still shrinks.
        if c.codec == Codec::Zstd {
            assert!(obj.len() < data.len() / 4, "{} bytes", obj.len());
        }
    }
}

#[test]
fn nonces_and_salts_are_fresh() {
    let r = ring(&[("a", 1)]);
    for scheme in SCHEMES {
        let one = encode_sealed_with(b"same wal", &none(), NAME, Some((&r, scheme)));
        let two = encode_sealed_with(b"same wal", &none(), NAME, Some((&r, scheme)));
        assert_eq!(one[10], scheme.id());
        assert_ne!(one, two, "{scheme:?}");
    }
}

/// Both schemes round trip, hide the content and bind the name; an object of one scheme with
/// its byte changed to the other does not open.
#[test]
fn both_schemes_read_and_cannot_be_swapped() {
    let r = ring(&[("a", 1)]);
    let data = walish(70_000);
    for scheme in SCHEMES {
        let obj = encode_sealed_with(&data, &zstd(), NAME, Some((&r, scheme)));
        assert_eq!(
            decode_with(obj.clone(), NAME, Some(&r))
                .expect("decode")
                .data,
            data
        );
        assert!(decode_with(obj.clone(), "main/wal/other", Some(&r)).is_err());
        let mut other = obj.to_vec();
        other[10] = if scheme.id() == 1 { 2 } else { 1 };
        // The header checksum covers the scheme byte: refused before any key is used.
        assert_eq!(
            decode_with(Bytes::from(other), NAME, Some(&r)),
            Err(FormatError::HeaderChecksum)
        );
    }
}

#[test]
fn the_name_is_bound_but_not_the_cluster_or_prefix() {
    let r = ring(&[("a", 1)]);
    let obj = encode_with(&walish(5000), &zstd(), NAME, Some(&r));
    let other = "main/wal/000000010000000000000004";
    assert_eq!(
        decode_with(obj.clone(), other, Some(&r)),
        Err(FormatError::Decrypt("a".into()))
    );
    // Another cluster name (an archive moved or restored under a new name) reads.
    let moved = "restored/wal/000000010000000000000003";
    assert!(decode_with(obj, moved, Some(&r)).is_ok());
    assert_eq!(bound_name(NAME), "wal/000000010000000000000003");
}

#[test]
fn missing_or_wrong_key_is_an_error_naming_the_key_id() {
    let obj = encode_with(b"wal bytes", &none(), NAME, Some(&ring(&[("k2026", 1)])));
    let no_ring = decode_with(obj.clone(), NAME, None).expect_err("no key file");
    assert_eq!(no_ring, FormatError::NoKeyFile("k2026".into()));
    assert!(no_ring.to_string().contains("k2026"), "{no_ring}");
    let other = decode_with(obj.clone(), NAME, Some(&ring(&[("other", 1)]))).expect_err("no key");
    assert!(other.to_string().contains("k2026") && other.to_string().contains("other"));
    // Same id, different key bytes.
    let wrong = decode_with(obj, NAME, Some(&ring(&[("k2026", 2)]))).expect_err("wrong key");
    assert_eq!(wrong, FormatError::Decrypt("k2026".into()));
    assert!(!wrong.to_string().contains('\n'));
}

#[test]
fn rotation_keeps_old_objects_readable_and_writes_with_the_newest() {
    let old_ring = ring(&[("a", 1)]);
    let old = encode_with(b"old wal", &zstd(), NAME, Some(&old_ring));
    let rotated = ring(&[("a", 1), ("b", 2)]);
    let new = encode_with(b"new wal", &zstd(), NAME, Some(&rotated));
    assert_eq!(key_id_of(&old), "a");
    assert_eq!(key_id_of(&new), "b");
    assert_eq!(
        &decode_with(old, NAME, Some(&rotated)).expect("old").data[..],
        b"old wal"
    );
    assert_eq!(
        &decode_with(new, NAME, Some(&rotated)).expect("new").data[..],
        b"new wal"
    );
}

/// Never wrong bytes: every flipped byte of an encrypted object is an error (or, in the magic,
/// turns the object raw, which callers catch by its length, as for unencrypted objects).
#[test]
fn every_flipped_byte_is_detected() {
    let r = ring(&[("a", 1)]);
    let data = walish(6_000);
    for (c, scheme) in [zstd(), none()]
        .into_iter()
        .flat_map(|c| SCHEMES.map(|s| (c, s)))
    {
        let obj = encode_sealed_with(&data, &c, NAME, Some((&r, scheme))).to_vec();
        for i in 0..obj.len() {
            let mut bad = obj.clone();
            bad[i] ^= 0x01;
            match decode_with(Bytes::from(bad), NAME, Some(&r)) {
                Ok(d) if i < MAGIC.len() => assert_eq!(d.stored, Stored::Raw),
                Ok(_) => panic!("{c} {scheme:?}: flipped byte {i} of {} decoded", obj.len()),
                Err(_) => {}
            }
        }
    }
}

#[test]
fn truncation_is_detected() {
    let r = ring(&[("a", 1)]);
    for scheme in SCHEMES {
        let obj = encode_sealed_with(&walish(50_000), &zstd(), NAME, Some((&r, scheme)));
        for cut in [
            obj.len() - 1,
            obj.len() - 16,
            obj.len() / 2,
            70,
            HEADER_LEN + 1,
            HEADER_LEN,
        ] {
            assert!(
                decode_with(obj.slice(..cut), NAME, Some(&r)).is_err(),
                "{scheme:?}: cut at {cut}"
            );
        }
    }
}

/// The committed golden encrypted objects (scheme 1, written before scheme 2 existed, and
/// scheme 2) and their (test-only) key file: every future version must keep decrypting them to
/// the same bytes under their name.
#[test]
fn golden_encrypted_objects_decode() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/objects");
    let text = std::fs::read_to_string(dir.join("test.key")).expect("test key file");
    let r = KeyRing::parse(&text).expect("test key file parses");
    for (file, scheme) in [("v1_xchacha_zstd3.obj", 1), ("v1_aes256gcm_zstd3.obj", 2)] {
        let obj = std::fs::read(dir.join(file)).expect("fixture");
        assert_eq!(obj[10], scheme, "{file}");
        let d = decode_with(Bytes::from(obj.clone()), GOLDEN_NAME, Some(&r)).expect(file);
        assert_eq!(d.data, walish(30_000), "{file}");
        assert_eq!(key_id_of(&obj), "golden-2");
        // Bound to its name: under another name it does not decrypt.
        assert!(decode_with(Bytes::from(obj), "c/wal/other", Some(&r)).is_err());
    }
}

/// Name the golden encrypted object was written under (its bound name is `wal/...`).
const GOLDEN_NAME: &str = "main/wal/000000010000000000000001";

/// Writes the golden encrypted object of the writing scheme (only when a scheme is added: the
/// old ones stay as they were written).
#[test]
#[ignore = "rewrites the committed golden encrypted object"]
fn regenerate_golden_encrypted_object() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/objects");
    let text = std::fs::read_to_string(dir.join("test.key")).expect("test key file");
    let r = KeyRing::parse(&text).expect("test key file parses");
    let zstd3 = Compression {
        codec: Codec::Zstd,
        level: 3,
    };
    let obj = encode_with(&walish(30_000), &zstd3, GOLDEN_NAME, Some(&r));
    assert_eq!(
        Scheme::WRITING,
        Scheme::Aes256GcmDerived,
        "name the new scheme's file"
    );
    std::fs::write(dir.join("v1_aes256gcm_zstd3.obj"), obj).expect("write");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]
    #[test]
    fn any_bytes_round_trip_encrypted(data in proptest::collection::vec(any::<u8>(), 0..5000), plain: bool) {
        let r = ring(&[("p", 7)]);
        let c = if plain { none() } else { zstd() };
        let d = decode_with(encode_with(&data, &c, NAME, Some(&r)), NAME, Some(&r)).expect("decode");
        prop_assert_eq!(d.data.to_vec(), data);
    }
}

/// Encode (compress, then encrypt) and decode (decrypt, then decompress) throughput with
/// encryption off and on, interleaved and repeated, on three kinds of 16 MiB segments: WAL-like
/// (very compressible), half-compressible text and incompressible bytes (stored plain, so every
/// byte is encrypted: the worst case). Run by `bench/encryption_bench.sh` in a release build;
/// prints medians in MiB/s of WAL, asserts only that the bytes come back.
#[test]
#[ignore = "benchmark: bench/encryption_bench.sh runs it in a release build"]
fn encode_throughput_bench() {
    let reps: usize = std::env::var("ENC_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = 16 << 20;
    let random: Vec<u8> = (0..len).map(|_| (next() >> 32) as u8).collect();
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let hex: Vec<u8> = random[..len / 2]
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .collect();
    let inputs = [
        ("wal-like", walish(len)),
        ("hex text", hex),
        ("random", random),
    ];
    let r = ring(&[("bench", 9)]);
    println!("MiB/s of WAL, 16 MiB segments, zstd level 1, median of {reps} interleaved rounds");
    for (label, data) in &inputs {
        // [encode off, encode on, decode off, decode on]
        let mut runs: [Vec<f64>; 4] = Default::default();
        let mut stored = 0;
        for _ in 0..reps {
            for (i, ring) in [None, Some(&r)].into_iter().enumerate() {
                let started = std::time::Instant::now();
                let obj = encode_with(data, &zstd(), NAME, ring);
                runs[i].push(16.0 / started.elapsed().as_secs_f64());
                stored = obj.len();
                let started = std::time::Instant::now();
                let back = decode_with(obj, NAME, ring).expect("decodes");
                runs[2 + i].push(16.0 / started.elapsed().as_secs_f64());
                assert_eq!(back.data.len(), data.len());
            }
        }
        let m: Vec<f64> = runs
            .iter_mut()
            .map(|v| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            })
            .collect();
        println!(
            "{label:>9} ({:5.1}% stored): encode off {:7.1} on {:7.1} (on/off {:.3}); decode off {:7.1} on {:7.1} (on/off {:.3})",
            100.0 * stored as f64 / data.len() as f64,
            m[0],
            m[1],
            m[1] / m[0],
            m[2],
            m[3],
            m[3] / m[2]
        );
    }
}
