"""Client-side encryption of the archive (issue 19), on a local directory and on S3 (moto).

What a user fears, and what the test shows does not happen:
- WAL readable by whoever can read the bucket: with a key file, no uploaded object holds a WAL
  page header or a string the test committed, in clear;
- an encrypted archive that cannot be recovered: PostgreSQL recovers every acknowledged commit
  through `safekeeper restore-wal --encryption-key-file`;
- recovery that silently ends early without the key (or with the wrong one) and promotes a server
  missing commits: restore-wal exits 255, so PostgreSQL stops, and the log names the key id;
- wrong bytes served from a damaged or renamed object: a flipped byte, or an object copied over
  another name, is an error;
- rotation that strands old objects: after a new key is appended, new objects use it and old
  ones still read.

Every uploaded object is also decrypted by fixtures/objects.py, written from the documented format
with its own XChaCha20 construction, so the format is checked independently of the Rust code.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from fixtures.archive import ArchiveWriter
from fixtures.objects import ObjectError, decode, hchacha20, is_encrypted, key_id, load_keys
from fixtures.restore import spool_files, recover, restore_from_backup, restore_wal_command, take_base_backup
from fixtures.s3 import S3Bucket
from fixtures.safekeeper import safekeeper_cli as sk
from fixtures.utils import chown_to_pg_user, wait_until
from fixtures.wal import is_segment_name, partial_versions

WAL = "main/wal/"
MARKER = "SK-ENCRYPTION-MARKER-7f3a"


def keygen(path: str, *flags: str) -> str:
    """Runs `safekeeper keygen`; returns the new key's id. The file belongs to PostgreSQL's OS user
    (restore-wal runs as that user; the safekeeper runs as root here)."""
    cp = sk("keygen", path, *flags)
    assert cp.returncode == 0, cp.stderr
    chown_to_pg_user(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    return cp.stdout.split()[2]


def page_header_re(segment: bytes) -> re.Pattern:
    """A WAL page header of this major: its xlp_magic, an xlp_info of a few flag bits, timeline 1
    (8 bytes: a chance match in ciphertext is ~2^-45 per position)."""
    magic = re.escape(segment[:2])
    return re.compile(magic + rb"[\x00-\x07]\x00\x01\x00\x00\x00")


def archived_to(remote, lsn: int) -> bool:
    """Whether the archive holds WAL up to `lsn` (a partial version reaching it)."""
    names = [k[len(WAL):] for k in remote.keys(WAL)]
    return any(end >= lsn for end in partial_versions(names).values())


def commit_rows(pg, committed: list[int], n: int, switch: bool) -> int:
    for _ in range(n):
        first = len(committed) + 1
        pg.sql("INSERT INTO t SELECT g, %s FROM generate_series(%s::int, %s::int) g", (MARKER, first, first + 199))
        committed.extend(range(first, first + 200))
    if switch:
        pg.switch_wal()
    return pg.current_lsn()


def check_objects(remote, keys: dict[str, bytes], header: re.Pattern) -> dict[str, str]:
    """Every object is encrypted, shows nothing in clear, and decrypts (independently) to bytes that
    do hold the marker or page headers somewhere (so the search would find them in clear).
    Returns the key id of each object."""
    ids, seen_marker, seen_header = {}, False, False
    for key in remote.keys(WAL):
        obj = remote.get(key)
        assert is_encrypted(obj), f"{key} is not encrypted"
        assert obj[10] == 2, f"{key}: sealed with scheme {obj[10]}, not AES-256-GCM (2)"
        assert MARKER.encode() not in obj and not header.search(obj), f"{key} holds WAL in clear"
        data = decode(obj, key, keys)
        seen_marker |= MARKER.encode() in data
        seen_header |= bool(header.search(data))
        ids[key] = key_id(obj)
    assert seen_marker and seen_header, "the clear-text search is not looking for the right bytes"
    return ids


def test_oracle_reads_the_rust_golden_encrypted_objects():
    """The independent decryptor: HChaCha20's published test vector (draft-irtf-cfrg-xchacha,
    2.2.1), then the golden encrypted objects the Rust side commits (scheme 1, XChaCha20-Poly1305,
    and scheme 2, AES-256-GCM with an HKDF-derived key), each under its name only."""
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert hchacha20(bytes(range(32)), nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")
    fixtures = os.path.join(os.path.dirname(__file__), "..", "safekeeper", "tests", "fixtures", "objects")
    keys = load_keys(os.path.join(fixtures, "test.key"))
    for name, scheme in (("v1_xchacha_zstd3.obj", 1), ("v1_aes256gcm_zstd3.obj", 2)):
        with open(os.path.join(fixtures, name), "rb") as f:
            obj = f.read()
        assert obj[10] == scheme, name
        data = decode(obj, "main/wal/000000010000000000000001", keys)
        assert data == bytes(0xD1 if i % 8192 < 24 else i % 251 for i in range(30_000)), name
        with pytest.raises(ObjectError, match="does not decrypt"):
            decode(obj, "main/wal/000000010000000000000002", keys)


def test_key_file_others_can_read_is_refused(workdir):
    keyfile = os.path.join(workdir, "loose.keys")
    keygen(keyfile)
    cp = sk("keygen", keyfile)
    assert cp.returncode == 1 and "never overwritten" in cp.stderr, "an existing key file is never overwritten"
    os.chmod(keyfile, 0o640)
    cp = sk("run", "--data-dir", os.path.join(workdir, "data"), "--encryption-key-file", keyfile, timeout=30)
    assert cp.returncode == 2 and "chmod 600" in cp.stderr and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    cp = sk("restore-wal", "--remote", f"file://{workdir}", "--encryption-key-file", keyfile,
            "000000010000000000000001", os.path.join(workdir, "x"))
    assert cp.returncode == 255 and "chmod 600" in cp.stderr, cp.stderr


def test_encrypted_archive(make_pg, safekeeper, remote, workdir, start_standby):
    keyfile = os.path.join(workdir, "archive.keys")
    first_id = keygen(keyfile, "--id", "key-a")
    primary = make_pg("primary")
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL)")
    backup = take_base_backup(primary, os.path.join(workdir, "basebackup"))
    sk_flags = ["--encryption-key-file", keyfile]
    start_standby(safekeeper, primary, remote=remote, partial_interval="200ms", extra=sk_flags)

    committed: list[int] = []
    commit_rows(primary, committed, 5, switch=True)
    lsn = commit_rows(primary, committed, 5, switch=False)
    wait_until("archive holds every commit", lambda: archived_to(remote, lsn), timeout=30)
    with open(os.path.join(primary.pg_wal, sorted(n for n in os.listdir(primary.pg_wal) if is_segment_name(n))[-1]), "rb") as f:
        header = page_header_re(f.read(2))

    # Rotation: a newer key appended; the safekeeper restarted with the same file.
    safekeeper.stop()
    second_id = keygen(keyfile, "--append", "--id", "key-b")
    start_standby(safekeeper, primary, remote=remote, partial_interval="200ms", extra=sk_flags)
    commit_rows(primary, committed, 5, switch=True)
    lsn = commit_rows(primary, committed, 3, switch=False)
    wait_until("archive holds every commit", lambda: archived_to(remote, lsn), timeout=30)
    primary.kill9()
    time.sleep(1)  # the last partial upload of the lost primary's WAL
    safekeeper.kill9()

    ids = check_objects(remote, load_keys(keyfile), header)
    fulls = sorted(k for k in ids if is_segment_name(k[len(WAL):]))
    assert {ids[k] for k in fulls} == {first_id, second_id}, ids
    newest = max(ids, key=lambda k: k[len(WAL):len(WAL) + 24])
    assert ids[newest] == second_id, "new objects use the newest key"

    # Without the key file, and with a file lacking the key: recovery stops, naming the key.
    args = remote.args() + ["--cluster", "main"]
    wrong = os.path.join(workdir, "wrong.keys")
    keygen(wrong, "--id", "unrelated")
    dest = os.path.join(workdir, "RECOVERYXLOG")
    for flags in ([], ["--encryption-key-file", wrong]):
        cp = sk("restore-wal", *args, *flags, fulls[0][len(WAL):], dest, env=remote.env())
        assert cp.returncode == 255, cp.stderr
        assert f"encrypted with key {first_id}" in cp.stderr and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    nokey = restore_from_backup(workdir, "nokey", backup, restore_wal_command(args, remote.env()))
    try:
        with pytest.raises(Exception):
            nokey.start(timeout=30)
        wait_until("recovery stopped", lambda: not nokey.is_running(), timeout=30)
        with open(nokey.logfile, errors="replace") as f:
            log = f.read()
        assert f"encrypted with key {first_id}" in log, log[-3000:]
        assert "promoted" not in log and "database system is ready to accept connections" not in log
    finally:
        nokey.destroy()

    # With the key file: every acknowledged commit.
    restored = recover(workdir, "restored", backup, restore_wal_command(args + sk_flags, remote.env()), timeout=60)
    try:
        have = {r[0] for r in restored.sql("SELECT id FROM t")}
    finally:
        restored.destroy()
    assert have == set(committed), f"{len(set(committed) - have)} acknowledged commits missing"

    # The prefetch worker gets the key file from restore-wal's flags and decrypts too.
    spool = os.path.join(workdir, "spool")
    cp = sk("restore-wal", *args, *sk_flags, "--prefetch", "2", "--spool-dir", spool, fulls[0][len(WAL):], dest,
            env=remote.env())
    assert cp.returncode == 0, cp.stderr
    name = fulls[1][len(WAL):]
    prefetched = wait_until("the next segment prefetched", lambda: spool_files(spool).get(name), timeout=30)
    with open(prefetched, "rb") as f:
        assert f.read() == decode(remote.get(fulls[1]), fulls[1], load_keys(keyfile))

    # The other readers: ls needs no key (headers only); verify and recover read with it.
    assert sk("remote", "ls", *args, env=remote.env()).returncode == 0
    cp = sk("remote", "verify", *args, *sk_flags, env=remote.env())
    assert cp.returncode == 0, cp.stdout + cp.stderr
    target = os.path.join(workdir, "recovered-wal")
    cp = sk("recover", *args, *sk_flags, "--target-dir", target, env=remote.env())
    assert cp.returncode == 0, cp.stderr
    for key in fulls:
        with open(os.path.join(target, key[len(WAL):]), "rb") as f:
            assert f.read() == decode(remote.get(key), key, load_keys(keyfile)), key

    # A flipped byte, and an object copied over another name: errors, never wrong bytes. Written
    # with a matching storage crc32c (as someone with write access to the bucket would), so only
    # the encryption can tell.
    writer = ArchiveWriter(bucket=remote) if isinstance(remote, S3Bucket) else ArchiveWriter(root_dir=remote.root)
    victim, other = fulls[0], fulls[1]
    obj = bytearray(remote.get(victim))
    writer.put(other[len(WAL):], bytes(obj))
    obj[len(obj) // 2] ^= 0x01
    writer.put(victim[len(WAL):], bytes(obj))
    for key in (victim, other):
        cp = sk("restore-wal", *args, *sk_flags, key[len(WAL):], dest, env=remote.env())
        assert cp.returncode == 255 and "does not decrypt" in cp.stderr, cp.stderr
    cp = sk("remote", "verify", *args, *sk_flags, env=remote.env())
    assert cp.returncode == 1 and "does not decrypt" in cp.stdout + cp.stderr, cp.stdout + cp.stderr


def test_encrypted_base_backup(make_pg, safekeeper, remote, workdir, start_standby):
    """A base backup taken with the key file (issue 18's `safekeeper backup`) is sealed like WAL:
    every object under basebackups/ is encrypted and holds no committed string in clear; `restore`
    without the key fails naming the key and writes nothing, and with it `restore --latest` gives
    every acknowledged commit (restore_command carrying the key file)."""
    from test_backup import start_restored  # the restored server's start, as issue 18's tests do it

    keyfile = os.path.join(workdir, "archive.keys")
    key = keygen(keyfile, "--id", "key-a")
    sk_flags = ["--encryption-key-file", keyfile]
    primary = make_pg("primary")
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL)")
    start_standby(safekeeper, primary, remote=remote, partial_interval="200ms", extra=sk_flags)
    committed: list[int] = []
    commit_rows(primary, committed, 5, switch=False)
    args = remote.args() + ["--cluster", "main"]
    cp = sk("backup", *args, *sk_flags, "--primary", primary.connstr(), env=remote.env(), timeout=180)
    assert cp.returncode == 0, cp.stderr[-3000:]
    lsn = commit_rows(primary, committed, 3, switch=False)
    wait_until("archive holds every commit", lambda: archived_to(remote, lsn), timeout=30)
    primary.kill9()
    safekeeper.kill9()

    keys = load_keys(keyfile)
    backup_keys = remote.keys("main/basebackups/")
    assert any("base.tar" in k for k in backup_keys), backup_keys
    seen_marker = False
    for k in backup_keys:
        obj = remote.get(k)
        assert is_encrypted(obj) and key_id(obj) == key, f"{k} is not sealed with {key}"
        assert MARKER.encode() not in obj, f"{k} holds table data in clear"
        seen_marker |= MARKER.encode() in decode(obj, k, keys)
    assert seen_marker, "the backup's chunks should hold the committed rows once decrypted"

    target = os.path.join(workdir, "restored", "data")  # where PgCluster(workdir, "restored") keeps it
    cp = sk("restore", *args, "--target-dir", target, "--latest", env=remote.env(), timeout=300)
    assert cp.returncode != 0 and f"key {key}" in cp.stderr, cp.stderr[-2000:]
    assert not os.path.exists(target) or not os.listdir(target), "nothing is written without the key"
    cp = sk("restore", *args, *sk_flags, "--target-dir", target, "--latest", env=remote.env(), timeout=300)
    assert cp.returncode == 0, cp.stderr[-3000:]
    with open(os.path.join(target, "postgresql.auto.conf")) as f:
        assert os.path.abspath(keyfile) in f.read(), "restore_command carries the key file"
    restored = start_restored(workdir, "restored", _KeyedRemote(remote, sk_flags), primary)
    try:
        have = {r[0] for r in restored.sql("SELECT id FROM t")}
    finally:
        restored.destroy()
    assert have == set(committed), f"{len(set(committed) - have)} acknowledged commits missing"


class _KeyedRemote:
    """`remote` whose archive flags include the key file (for the restored server's own
    restore_command when the remote needs credentials in its environment)."""

    def __init__(self, remote, flags: list[str]):
        self.remote, self.flags = remote, flags

    def args(self) -> list[str]:
        return self.remote.args() + self.flags

    def env(self) -> dict:
        return self.remote.env()
