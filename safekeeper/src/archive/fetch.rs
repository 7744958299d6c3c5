//! One WAL file for PostgreSQL's `restore_command`: a full segment, else the best partial of that
//! segment zero-padded to the segment size, or a timeline history file.
//!
//! Owns the lookup order and its race handling. A segment costs one GET when its full object
//! exists (the common case during replay); otherwise one LIST of the keys starting with the
//! segment name (which shows the full object too, should it have appeared meanwhile) and the GETs
//! of the chosen version's pieces (at most `chain::MAX_CHAIN`, concurrently). Without
//! `--wal-segment-size`, the size comes from the first page header of a base piece (the base of
//! the longest version, which is then usually read anyway). The safekeeper uploads the full
//! segment *before* it deletes that segment's pieces, and a merged piece before the pieces it
//! replaces, so when a piece vanishes between LIST and GET, or the full object shows up in the
//! LIST, the lookup starts over and finds the full segment or the new chain.
//!
//! Several safekeepers: the partial served is the one holding the most WAL across safekeepers
//! ([`super::ranked_candidates`]; terms order only one safekeeper's own versions). Only when
//! more than one safekeeper has a candidate for the segment, the best [`MAX_COMPARED`] (one per
//! safekeeper) are fetched *in parallel* and compared on their common bytes
//! ([`super::choose_agreed`]): a disagreement is a history that diverged inside one timeline and
//! is a fatal [`FetchError::Diverged`] naming both objects and the first differing LSN, unless
//! the caller prefers one safekeeper. Cost: nothing extra with one safekeeper or a full segment;
//! otherwise the runners-up's bytes (at most two more partials, fetched concurrently with the
//! best, so the latency is about one GET) and one `memcmp` over their common length.
//!
//! Invariants:
//! - "not found" (`Ok(None)`) is only returned when a listing showed neither the full segment nor
//!   any partial of it: a storage failure is an error, never "not found";
//! - what is returned was verified: crc32c and length by `remote_storage`, then decoded
//!   ([`crate::object_format::decode`]: header, lengths, crc32c of the WAL bytes; raw objects
//!   pass through), a decoded size that is the segment size (full) or exactly `[start, commit)`
//!   of each piece's name, and a WAL page header at the segment start whose address is that
//!   segment's; a bad object is [`FetchError::Corrupt`], never served and never retried.

use std::collections::HashMap;

use bytes::Bytes;
use control_file::Lsn;
use control_file::lsn::is_valid_segment_size;
use control_file::names::{
    PartialName, TimelineId, parse_history_file_name, parse_segment_file_name,
};
use futures::StreamExt;
use remote_storage::{ListOptions, ObjectMeta, RemoteStorage, RemoteStorageExt, StorageError};
use tokio_util::sync::CancellationToken;

use super::history::parse_history;
use super::{
    PartialObject, Piece, assemble, choose_agreed, looks_like_segment_name, pad_to_segment,
    ranked_candidates, versions_of,
};
use crate::object_format;
use crate::remote::wal_prefix;
use crate::wal::format::{Expect, PageHeader, check_page_header};

/// How often the lookup starts over when the archive changes under it.
const LOOKUP_ROUNDS: usize = 3;
/// Candidates of one segment (one per safekeeper, best first) compared before a partial is
/// served: the best and up to two runners-up.
pub(crate) const MAX_COMPARED: usize = 3;
/// Piece GETs in flight at once in one lookup.
const PIECE_READS: usize = 16;

/// A file name PostgreSQL may ask `restore_command` for (`%f`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WalFileName {
    /// 24 hex digits. The segment size is not needed to find it.
    Segment(String),
    History(TimelineId),
}

impl WalFileName {
    /// `None` for anything else (PostgreSQL asks for nothing else during recovery).
    pub(crate) fn parse(name: &str) -> Option<WalFileName> {
        if looks_like_segment_name(name) {
            Some(WalFileName::Segment(name.to_string()))
        } else {
            parse_history_file_name(name).ok().map(WalFileName::History)
        }
    }
}

/// What was found, ready to be written to `%p`.
#[derive(Debug)]
pub(crate) enum Fetched {
    Full {
        key: String,
        seg_size: u32,
        data: Bytes,
    },
    /// `data` is the version's WAL zero-padded to `seg_size`.
    Partial {
        object: PartialObject,
        data: Vec<u8>,
        /// Every version listed for the segment, the chosen one included.
        candidates: usize,
        /// Other safekeepers' candidates whose bytes were compared with the one served.
        compared: usize,
    },
    History {
        key: String,
        data: Bytes,
    },
}

impl Fetched {
    /// The bytes for `%p`.
    pub(crate) fn data(&self) -> &[u8] {
        match self {
            Fetched::Full { data, .. } | Fetched::History { data, .. } => data,
            Fetched::Partial { data, .. } => data,
        }
    }

    /// One line for the log: what was served and from which object.
    pub(crate) fn describe(&self) -> String {
        match self {
            Fetched::Full { key, .. } => format!("full segment {key}"),
            Fetched::History { key, .. } => format!("history file {key}"),
            Fetched::Partial {
                object,
                candidates,
                compared,
                ..
            } => {
                let agreed = match compared {
                    0 => String::new(),
                    n => format!(", agreeing with {n} other safekeepers' partials"),
                };
                let pieces = match object.pieces.len() {
                    1 => "1 piece".to_string(),
                    n => format!("{n} pieces"),
                };
                format!(
                    "partial {} (term {}, commit LSN {}, safekeeper {}, {pieces}; chosen among \
                     {candidates}{agreed}), zero-padded: WAL ends at {}",
                    object.key,
                    object.name.term,
                    object.name.commit_lsn,
                    object.name.sk_id,
                    object.name.commit_lsn
                )
            }
        }
    }
}

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An object that must not be served: checksum, length or WAL header problems.
    #[error("{0}")]
    Corrupt(String),
    /// Candidates of one segment disagree on their common bytes and nothing says which to trust.
    #[error("{0}")]
    Diverged(Box<super::Divergence>),
}

impl FetchError {
    /// Whether trying again later may succeed (an outage, not a bad object).
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            FetchError::Storage(e) => e.kind().is_retryable(),
            FetchError::Corrupt(_) | FetchError::Diverged(_) => false,
        }
    }
}

/// Maps a storage error on a specific object: checksum and length mismatches mean the stored
/// object is bad.
fn object_error(e: StorageError) -> FetchError {
    use remote_storage::ErrorKind;
    match e.kind() {
        ErrorKind::ChecksumMismatch | ErrorKind::LengthMismatch => FetchError::Corrupt(format!(
            "{e} (the stored object is damaged; it is not served)"
        )),
        _ => FetchError::Storage(e),
    }
}

/// How a lookup reads the archive.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FetchOptions {
    /// The `--wal-segment-size` flag, if given; otherwise the size is taken from the object
    /// (full) or its first page header (partial).
    pub seg_size: Option<u32>,
    /// `--prefer-safekeeper`: which safekeeper's partial to trust when candidates disagree.
    pub prefer_safekeeper: Option<u64>,
}

/// Looks up `name` in `cluster`'s archive.
pub(crate) async fn fetch_wal_file(
    storage: &dyn RemoteStorage,
    cluster: &str,
    name: &WalFileName,
    opts: FetchOptions,
    cancel: &CancellationToken,
) -> Result<Option<Fetched>, FetchError> {
    match name {
        WalFileName::History(tli) => fetch_history(storage, cluster, *tli, cancel).await,
        WalFileName::Segment(seg) => fetch_segment(storage, cluster, seg, opts, cancel).await,
    }
}

/// Only the full segment `segment`, never a partial: what the prefetcher may spool. With the
/// metadata of the object read, so that a later `head` tells whether it was replaced.
pub(crate) async fn fetch_full_segment(
    storage: &dyn RemoteStorage,
    cluster: &str,
    segment: &str,
    seg_size: u32,
    cancel: &CancellationToken,
) -> Result<Option<(Fetched, ObjectMeta)>, FetchError> {
    let key = full_segment_key(cluster, segment);
    let got = match storage.get(&key, None, cancel).await {
        Ok(got) => got,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(object_error(e)),
    };
    let meta = got.meta.clone();
    let data = got.bytes().await.map_err(object_error)?;
    let fetched = check_full(key, segment, data, Some(seg_size))?;
    Ok(Some((fetched, meta)))
}

/// The key of full segment `segment` in `cluster`'s archive.
pub(crate) fn full_segment_key(cluster: &str, segment: &str) -> String {
    format!("{}{segment}", wal_prefix(cluster))
}

async fn fetch_history(
    storage: &dyn RemoteStorage,
    cluster: &str,
    tli: TimelineId,
    cancel: &CancellationToken,
) -> Result<Option<Fetched>, FetchError> {
    let key = crate::remote::history_key(cluster, tli);
    let data = match storage.get_bytes(&key, cancel).await {
        Ok(data) => data,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(object_error(e)),
    };
    let data = object_format::decode(data, &key)
        .map_err(|e| FetchError::Corrupt(format!("history file {key}: {e}")))?
        .data;
    let text = std::str::from_utf8(&data)
        .map_err(|_| FetchError::Corrupt(format!("history file {key} is not text")))?;
    parse_history(tli, text)
        .map_err(|e| FetchError::Corrupt(format!("history file {key} is malformed: {e:#}")))?;
    Ok(Some(Fetched::History { key, data }))
}

async fn fetch_segment(
    storage: &dyn RemoteStorage,
    cluster: &str,
    segment: &str,
    opts: FetchOptions,
    cancel: &CancellationToken,
) -> Result<Option<Fetched>, FetchError> {
    let full_key = format!("{}{segment}", wal_prefix(cluster));
    for round in 1..=LOOKUP_ROUNDS {
        match storage.get_bytes(&full_key, cancel).await {
            Ok(data) => return check_full(full_key, segment, data, opts.seg_size).map(Some),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(object_error(e)),
        }
        // The full key itself sorts first under this prefix, followed by the partials.
        let listing = storage
            .list_all(&full_key, ListOptions::default(), cancel)
            .await?;
        if listing.iter().any(|m| m.key == full_key) {
            tracing::info!(key = %full_key, round, "full segment appeared during lookup");
            continue;
        }
        let mut cache = HashMap::new();
        let seg_size = match segment_size(storage, &listing, opts.seg_size, &mut cache, cancel)
            .await?
        {
            Probe::Size(s) => s,
            Probe::NoBase => return Ok(None),
            Probe::Vanished => {
                tracing::info!(key = %full_key, round, "a base piece vanished during lookup; looking again");
                continue;
            }
        };
        let prefix = wal_prefix(cluster);
        let pieces = parse_pieces(&listing, &prefix, seg_size);
        let versions = versions_of(&pieces, &prefix, seg_size);
        let ranked = ranked_candidates(&versions);
        if ranked.is_empty() {
            if !pieces.is_empty() {
                tracing::warn!(
                    segment,
                    "pieces listed, but none chains from the segment start"
                );
            }
            return Ok(None);
        }
        for other in versions.iter().filter(|c| !ranked.contains(c)) {
            tracing::debug!(key = %other.key, term = other.name.term, commit_lsn = %other.name.commit_lsn,
                "an older version of its safekeeper's partial: not a candidate");
        }
        let compared = compared_candidates(&ranked, opts.prefer_safekeeper);
        match fetch_candidates(storage, &compared, seg_size, opts, cache, cancel).await? {
            Some(fetched) => {
                return serve_agreed(fetched, opts.prefer_safekeeper, versions.len()).map(Some);
            }
            // Removed since the listing: the full segment or a merged piece replaced it.
            None => {
                tracing::info!(key = %full_key, round, "a piece vanished during lookup; looking again");
            }
        }
    }
    Err(FetchError::Storage(StorageError::new(
        remote_storage::ErrorKind::Transient,
        remote_storage::Op::Get,
        storage.name(),
        full_key,
        format!("the archive changed under {LOOKUP_ROUNDS} lookups in a row"),
    )))
}

/// The candidates whose bytes are read: the best [`MAX_COMPARED`] of `ranked` (one per
/// safekeeper), plus the preferred safekeeper's if it ranks lower.
fn compared_candidates<'a>(
    ranked: &[&'a PartialObject],
    prefer: Option<u64>,
) -> Vec<&'a PartialObject> {
    let mut out: Vec<&PartialObject> = ranked.iter().copied().take(MAX_COMPARED).collect();
    if let Some(p) = prefer.and_then(|id| ranked.iter().find(|p| p.name.sk_id == id))
        && !out.contains(p)
    {
        out.push(p);
    }
    out
}

/// A verified candidate: the version, its WAL bytes and the segment size.
struct Candidate {
    object: PartialObject,
    data: Bytes,
    seg_size: u32,
}

/// The listed pieces (names parsed at `seg_size`; anything else is logged and skipped).
fn parse_pieces(listing: &[ObjectMeta], prefix: &str, seg_size: u32) -> Vec<Piece> {
    listing
        .iter()
        .filter_map(|meta| {
            let file = meta.key.strip_prefix(prefix)?;
            match PartialName::parse(file, seg_size) {
                Ok(name) => Some(Piece {
                    name,
                    key: meta.key.clone(),
                    size: meta.size,
                }),
                Err(e) => {
                    tracing::warn!(key = %meta.key, "ignoring an object that is not a partial piece: {}", e.reason);
                    None
                }
            }
        })
        .collect()
}

/// The segment size: `given`, else what the first page header of a base piece says (the base
/// with the highest commit LSN: usually the served version's, so its bytes, kept in `cache`, are
/// read once).
async fn segment_size(
    storage: &dyn RemoteStorage,
    listing: &[ObjectMeta],
    given: Option<u32>,
    cache: &mut HashMap<String, Bytes>,
    cancel: &CancellationToken,
) -> Result<Probe, FetchError> {
    if let Some(s) = given {
        return Ok(Probe::Size(s));
    }
    let base = listing
        .iter()
        .filter_map(|m| {
            let file = m.key.rsplit('/').next()?;
            Some((parse_base_any_size(file)?, m))
        })
        .max_by(|(a, ma), (b, mb)| a.commit_lsn.cmp(&b.commit_lsn).then(mb.key.cmp(&ma.key)));
    let Some((_, meta)) = base else {
        return Ok(Probe::NoBase);
    };
    let object = match storage.get_bytes(&meta.key, cancel).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(Probe::Vanished),
        Err(e) => return Err(object_error(e)),
    };
    let corrupt =
        |what: String| FetchError::Corrupt(format!("partial segment {}: {what}", meta.key));
    let data = object_format::decode(object.clone(), &meta.key)
        .map_err(|e| corrupt(e.to_string()))?
        .data;
    let size = PageHeader::decode(&data)
        .and_then(|h| h.long)
        .map(|l| l.seg_size)
        .filter(|s| is_valid_segment_size(*s))
        .ok_or_else(|| {
            corrupt(
                "no valid long WAL page header at its start (cannot tell the segment size)".into(),
            )
        })?;
    cache.insert(meta.key.clone(), object);
    Ok(Probe::Size(size))
}

/// What [`segment_size`] found.
enum Probe {
    Size(u32),
    /// No base piece is listed: no version of the segment exists.
    NoBase,
    /// The base piece was deleted between LIST and GET: the lookup starts over.
    Vanished,
}

/// A base piece's name (`.partial`) parsed at the first segment size that accepts it. Term,
/// commit LSN and safekeeper id do not depend on the segment size.
fn parse_base_any_size(file: &str) -> Option<PartialName> {
    (20..=30).find_map(|bits| {
        let size = 1u32 << bits;
        PartialName::parse(file, size)
            .ok()
            .filter(|p| p.is_base(size))
    })
}

/// Reads the pieces of `compared` concurrently (those in `cache` are read already), assembles
/// and verifies each version. `Ok(None)` when a piece vanished (the lookup starts over). The best
/// and the preferred candidate must be sound (a damaged one is fatal, as with a single
/// safekeeper); a damaged runner-up is only logged and left out of the comparison.
async fn fetch_candidates(
    storage: &dyn RemoteStorage,
    compared: &[&PartialObject],
    seg_size: u32,
    opts: FetchOptions,
    mut cache: HashMap<String, Bytes>,
    cancel: &CancellationToken,
) -> Result<Option<Vec<Candidate>>, FetchError> {
    let mut keys: Vec<&str> = compared
        .iter()
        .flat_map(|v| v.pieces.iter().map(|p| p.key.as_str()))
        .filter(|k| !cache.contains_key(*k))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut reads = futures::stream::iter(keys)
        .map(|key| async move { (key, storage.get_bytes(key, cancel).await) })
        .buffer_unordered(PIECE_READS);
    let mut failed: HashMap<String, StorageError> = HashMap::new();
    while let Some((key, read)) = reads.next().await {
        match read {
            Ok(b) => {
                cache.insert(key.to_string(), b);
            }
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => {
                failed.insert(key.to_string(), e);
            }
        }
    }
    let mut out: Vec<Candidate> = Vec::with_capacity(compared.len());
    for (i, version) in compared.iter().enumerate() {
        let checked = check_version(version, &cache, &mut failed, seg_size);
        let essential = i == 0 || opts.prefer_safekeeper == Some(version.name.sk_id);
        match checked {
            Ok(c) => out.push(c),
            Err(e) if essential => return Err(e),
            Err(FetchError::Corrupt(e)) => {
                tracing::warn!(key = %version.key, "not compared with the best partial: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Some(out))
}

/// One version from its pieces' bytes: decoded, lengths as named, assembled, and a WAL page header
/// at the segment start.
fn check_version(
    version: &PartialObject,
    cache: &HashMap<String, Bytes>,
    failed: &mut HashMap<String, StorageError>,
    seg_size: u32,
) -> Result<Candidate, FetchError> {
    let corrupt =
        |what: String| FetchError::Corrupt(format!("partial segment {}: {what}", version.key));
    let mut objects = Vec::with_capacity(version.pieces.len());
    for p in &version.pieces {
        if let Some(e) = failed.remove(&p.key) {
            return Err(object_error(e));
        }
        match cache.get(&p.key) {
            Some(b) => objects.push(b.clone()),
            None => return Err(corrupt(format!("piece {} was not read", p.key))),
        }
    }
    let data = assemble(version, objects).map_err(corrupt)?;
    let start = version.name.segment_start(seg_size);
    check_page_header(&data, start.0, seg_size, Expect::default())
        .map_err(|p| corrupt(format!("first page header at {start}: {p}")))?;
    Ok(Candidate {
        object: version.clone(),
        data,
        seg_size,
    })
}

/// Serves the candidate [`choose_agreed`] picks, zero-padded.
fn serve_agreed(
    fetched: Vec<Candidate>,
    prefer: Option<u64>,
    listed: usize,
) -> Result<Fetched, FetchError> {
    let Some(first) = fetched.first() else {
        return Err(FetchError::Corrupt(
            "no candidate partial could be read".into(),
        ));
    };
    let seg_start = Lsn::from_segment(first.object.name.segno, first.seg_size);
    let views: Vec<(&PartialObject, &[u8])> =
        fetched.iter().map(|c| (&c.object, &c.data[..])).collect();
    let chosen = choose_agreed(&views, seg_start, prefer).map_err(FetchError::Diverged)?;
    let c = &fetched[chosen];
    if chosen != 0 {
        tracing::warn!(served = %c.object.key, best = %first.object.key,
            "partials of this segment disagree; serving the one --prefer-safekeeper trusts");
    }
    let padded = pad_to_segment(&c.data, c.seg_size)
        .map_err(|e| FetchError::Corrupt(format!("partial segment {}: {e:#}", c.object.key)))?;
    Ok(Fetched::Partial {
        object: c.object.clone(),
        data: padded,
        candidates: listed,
        compared: fetched.len() - 1,
    })
}

fn check_full(
    key: String,
    segment: &str,
    data: Bytes,
    seg_size: Option<u32>,
) -> Result<Fetched, FetchError> {
    let corrupt = |what: String| FetchError::Corrupt(format!("full segment {key}: {what}"));
    let data = object_format::decode(data, &key)
        .map_err(|e| corrupt(e.to_string()))?
        .data;
    let size = u32::try_from(data.len())
        .ok()
        .filter(|s| is_valid_segment_size(*s))
        .ok_or_else(|| {
            corrupt(format!(
                "{} bytes is not a WAL segment size (truncated?)",
                data.len()
            ))
        })?;
    if let Some(expected) = seg_size
        && size != expected
    {
        return Err(corrupt(format!(
            "{size} bytes, but --wal-segment-size is {expected}"
        )));
    }
    let (_, segno) = parse_segment_file_name(segment, size).map_err(|e| corrupt(e.reason))?;
    let start = Lsn::from_segment(segno, size);
    check_page_header(&data, start.0, size, Expect::default())
        .map_err(|p| corrupt(format!("first page header at {start}: {p}")))?;
    Ok(Fetched::Full {
        key,
        seg_size: size,
        data,
    })
}
