//! One WAL file for PostgreSQL's `restore_command`: a full segment, else the best partial of that
//! segment zero-padded to the segment size, or a timeline history file.
//!
//! Owns the lookup order and its race handling. A segment costs one GET when its full object
//! exists (the common case during replay); otherwise one LIST of the keys starting with the
//! segment name (which shows the full object too, should it have appeared meanwhile) and one GET
//! of the chosen partial. The safekeeper uploads the full segment *before* it deletes that
//! segment's partials, so when a partial vanishes between LIST and GET, or the full object shows
//! up in the LIST, the lookup starts over and finds the full segment.
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
//! - what is returned was verified: crc32c and length by `remote_storage`, a WAL page header at
//!   the segment start whose address is that segment's, a size that is the segment size (full) or
//!   exactly what the partial's name promises; a bad object is [`FetchError::Corrupt`], never
//!   served and never retried.

use bytes::Bytes;
use control_file::Lsn;
use control_file::lsn::is_valid_segment_size;
use control_file::names::{
    PartialName, TimelineId, parse_history_file_name, parse_segment_file_name,
};
use remote_storage::{ListOptions, RemoteStorage, RemoteStorageExt, StorageError};
use tokio_util::sync::CancellationToken;

use super::history::parse_history;
use super::{
    PartialObject, choose_agreed, looks_like_segment_name, pad_to_segment, ranked_candidates,
};
use crate::remote::wal_prefix;
use crate::wal::format::{Expect, PageHeader, check_page_header};

/// How often the lookup starts over when the archive changes under it.
const LOOKUP_ROUNDS: usize = 3;
/// Candidates of one segment (one per safekeeper, best first) compared before a partial is
/// served: the best and up to two runners-up.
pub(crate) const MAX_COMPARED: usize = 3;

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
    /// `data` is the partial's WAL zero-padded to `seg_size`.
    Partial {
        object: PartialObject,
        data: Vec<u8>,
        /// Every partial that was listed for the segment, the chosen one included.
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
                format!(
                    "partial {} (term {}, commit LSN {}, safekeeper {}; chosen among \
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

/// Only the full segment `segment`, never a partial: what the prefetcher may spool.
pub(crate) async fn fetch_full_segment(
    storage: &dyn RemoteStorage,
    cluster: &str,
    segment: &str,
    seg_size: u32,
    cancel: &CancellationToken,
) -> Result<Option<Fetched>, FetchError> {
    let key = format!("{}{segment}", wal_prefix(cluster));
    match storage.get_bytes(&key, cancel).await {
        Ok(data) => check_full(key, segment, data, Some(seg_size)).map(Some),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(object_error(e)),
    }
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
        let candidates: Vec<PartialObject> = listing
            .iter()
            .filter_map(|meta| {
                let file = meta.key.strip_prefix(wal_prefix(cluster).as_str())?;
                match parse_partial_any_size(file, opts.seg_size) {
                    Some(name) => Some(PartialObject {
                        name,
                        key: meta.key.clone(),
                        size: meta.size,
                    }),
                    None => {
                        tracing::warn!(key = %meta.key, "ignoring an object that is not a partial segment name");
                        None
                    }
                }
            })
            .collect();
        let ranked = ranked_candidates(&candidates);
        if ranked.is_empty() {
            return Ok(None);
        }
        for other in candidates.iter().filter(|c| !ranked.contains(c)) {
            tracing::debug!(key = %other.key, term = other.name.term, commit_lsn = %other.name.commit_lsn,
                "an older version of its safekeeper's partial: not a candidate");
        }
        let compared = compared_candidates(&ranked, opts.prefer_safekeeper);
        match fetch_candidates(storage, &compared, opts, cancel).await? {
            Some(fetched) => {
                return serve_agreed(fetched, opts.prefer_safekeeper, candidates.len()).map(Some);
            }
            // Removed since the listing: the full segment has been uploaded meanwhile.
            None => {
                tracing::info!(key = %full_key, round, "a partial vanished during lookup; looking again");
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

/// A verified candidate: the object (its name parsed at the segment size its header gives),
/// its bytes and the segment size.
struct Candidate {
    object: PartialObject,
    data: Bytes,
    seg_size: u32,
}

/// Reads `compared` concurrently and verifies each. `Ok(None)` when one vanished (the lookup
/// starts over). The best and the preferred candidate must be sound (a damaged one is fatal, as
/// with a single safekeeper); a damaged runner-up is only logged and left out of the comparison.
async fn fetch_candidates(
    storage: &dyn RemoteStorage,
    compared: &[&PartialObject],
    opts: FetchOptions,
    cancel: &CancellationToken,
) -> Result<Option<Vec<Candidate>>, FetchError> {
    let reads =
        futures::future::join_all(compared.iter().map(|p| storage.get_bytes(&p.key, cancel))).await;
    let mut out: Vec<Candidate> = Vec::with_capacity(compared.len());
    for (i, (object, read)) in compared.iter().zip(reads).enumerate() {
        let data = match read {
            Ok(data) => Ok(data),
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => Err(object_error(e)),
        };
        // Runners-up must have the best's segment size.
        let seg_size = out.first().map(|c| c.seg_size).or(opts.seg_size);
        let checked = data.and_then(|d| check_partial(object, d, seg_size));
        let essential = i == 0 || opts.prefer_safekeeper == Some(object.name.sk_id);
        match checked {
            Ok(c) => out.push(c),
            Err(e) if essential => return Err(e),
            Err(FetchError::Corrupt(e)) => {
                tracing::warn!(key = %object.key, "not compared with the best partial: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Some(out))
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

/// Parses a partial's file name when the segment size is not known yet. Term, commit LSN and
/// safekeeper id do not depend on the segment size; the name is parsed again once the object's
/// first page header tells the size. Only base pieces (whole versions) are candidates here:
/// increment pieces (`.delta`) are not assembled into versions yet.
fn parse_partial_any_size(file: &str, seg_size: Option<u32>) -> Option<PartialName> {
    let base = |s: u32| PartialName::parse(file, s).ok().filter(|p| p.is_base(s));
    match seg_size {
        Some(s) => base(s),
        None => (20..=30).find_map(|bits| base(1u32 << bits)),
    }
}

fn check_full(
    key: String,
    segment: &str,
    data: Bytes,
    seg_size: Option<u32>,
) -> Result<Fetched, FetchError> {
    let corrupt = |what: String| FetchError::Corrupt(format!("full segment {key}: {what}"));
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

fn check_partial(
    object: &PartialObject,
    data: Bytes,
    seg_size: Option<u32>,
) -> Result<Candidate, FetchError> {
    let key = object.key.clone();
    let corrupt = |what: String| FetchError::Corrupt(format!("partial segment {key}: {what}"));
    let header_size = PageHeader::decode(&data)
        .and_then(|h| h.long)
        .map(|l| l.seg_size)
        .filter(|s| is_valid_segment_size(*s));
    let size = match (seg_size, header_size) {
        (Some(given), Some(found)) if given != found => {
            return Err(corrupt(format!(
                "its page header says segment size {found}, but the segment size is {given}"
            )));
        }
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => {
            return Err(corrupt(
                "no valid long WAL page header at its start (cannot tell the segment size)".into(),
            ));
        }
    };
    let file = key.rsplit('/').next().unwrap_or(&key);
    let name = PartialName::parse(file, size).map_err(|e| corrupt(e.reason))?;
    let expected = name.bytes();
    if data.len() as u64 != expected {
        return Err(corrupt(format!(
            "{} bytes, but its name says [segment start, {}) = {expected} bytes",
            data.len(),
            name.commit_lsn
        )));
    }
    let start = Lsn::from_segment(name.segno, size);
    check_page_header(&data, start.0, size, Expect::default())
        .map_err(|p| corrupt(format!("first page header at {start}: {p}")))?;
    Ok(Candidate {
        object: PartialObject {
            name,
            ..object.clone()
        },
        data,
        seg_size: size,
    })
}
