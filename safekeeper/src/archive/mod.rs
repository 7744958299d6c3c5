//! A cluster's archive in remote storage as recovery sees it: what a listing of
//! `<cluster>/wal/` means (timelines, contiguous segment ranges, gaps, partial versions and the
//! pieces that store them, history files) and the selection rules of docs/architecture.md,
//! "Restore semantics".
//!
//! Owns:
//! - [`Archive`]: a parsed listing, built by a pure function ([`Archive::from_listing`]) so every
//!   rule can be unit-tested without storage;
//! - the partial *versions* of a listing ([`versions_of`]): per (timeline, segment, safekeeper,
//!   term), the version ending at the highest end that pieces chain to from the segment start,
//!   with that chain (`crate::chain::best_chain`); a version is always named by its logical
//!   `SEGMENT_COMMITLSN_TERM_skID.partial` name, whichever pieces store it;
//! - the choice of the segment size when no flag gives it ([`Archive::load`]): the WAL length in
//!   the header of the newest full segment object (one ranged GET), else, for raw objects written
//!   before the object format, the most common size among full segment objects (a raw full
//!   segment is exactly `wal_segment_size` bytes), else 16 MiB;
//! - the choice among partials of one segment ([`ranked_candidates`], [`best_partial`]): a term
//!   is local to one safekeeper, so it orders only that safekeeper's own versions (its newest is
//!   the highest term, then the highest commit LSN); across safekeepers the candidate holding the
//!   most WAL wins (highest commit LSN; ties: the lowest safekeeper id, so the choice does not
//!   depend on listing order);
//! - [`first_difference`]: where two candidates of one segment disagree on their common bytes
//!   (a history that diverged inside one timeline), which `restore-wal` and `remote verify` report;
//! - [`pad_to_segment`]: a partial zero-padded to the size PostgreSQL requires.
//!
//! Invariants: a full segment always wins over any partial of the same segment; nothing here ever
//! offers a partial for a segment whose full object is listed; a version is offered only when its
//! pieces chain from the segment start to its end, each piece holding exactly `[start, commit)`
//! of its name (checked when the pieces are read, [`assemble`]).
//!
//! Submodules: `versions` (versions from pieces, and their bytes), [`history`] (timeline
//! history files and which timeline holds which segment),
//! [`fetch`] (one WAL file for `restore_command`), [`verify`] (the archive check), [`prune`]
//! (superseded partials), [`plan`] (which objects rebuild a `pg_wal`), [`spool`] (the prefetch
//! spool of `restore-wal`).

pub(crate) mod fetch;
pub(crate) mod history;
pub(crate) mod plan;
pub(crate) mod prune;
pub(crate) mod spool;
pub(crate) mod verify;
mod versions;

#[cfg(test)]
mod choice_tests;
#[cfg(test)]
mod format_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use control_file::Lsn;
use control_file::lsn::is_valid_segment_size;
use control_file::names::{PartialName, TimelineId, WalObjectName, segment_file_name};
use remote_storage::{ListOptions, ObjectMeta, RemoteStorage, RemoteStorageExt, StorageError};
use tokio_util::sync::CancellationToken;

use crate::object_format::{self, HEADER_LEN};
use crate::remote::wal_prefix;
pub(crate) use versions::{assemble, decode_piece, versions_of};

/// PostgreSQL's default `wal_segment_size`, used when nothing tells the size.
pub(crate) const DEFAULT_SEGMENT_SIZE: u32 = 16 << 20;

/// Where the segment size used to read a listing came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SegmentSizeSource {
    /// `--wal-segment-size`.
    Given,
    /// The full segment objects: the WAL length in one's header, or raw objects' sizes.
    Inferred,
    /// No full segment and no flag: PostgreSQL's default.
    Default,
}

/// One stored piece of a partial version: a base (`.partial`) or an increment (`.delta`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub name: PartialName,
    pub key: String,
    /// Stored bytes as listed (the encoded object; raw pieces: their WAL bytes).
    pub size: u64,
}

/// One partial segment version in the archive: WAL `[segment start, commit LSN)` of one
/// safekeeper's term, stored as a chain of pieces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartialObject {
    /// The version's name: `start_lsn` is the segment start.
    pub name: PartialName,
    /// The version's logical key, `<cluster>/wal/SEGMENT_COMMITLSN_TERM_skID.partial`: an object
    /// of that key exists only when the version is stored as a single base piece.
    pub key: String,
    /// The pieces holding it, in WAL order, from the segment start to its commit LSN (the chain
    /// with the fewest pieces).
    pub pieces: Vec<Piece>,
}

impl PartialObject {
    /// WAL bytes of the version, `commit LSN - segment start`.
    pub(crate) fn wal_bytes(&self, seg_size: u32) -> u64 {
        self.name.commit_offset(seg_size)
    }

    /// Stored bytes of its pieces, as listed.
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.size).sum()
    }

    /// The version served from one object of its own name, as listed before pieces existed
    /// (tests and single-base archives).
    #[cfg(test)]
    pub(crate) fn single(name: PartialName, key: String, size: u64) -> PartialObject {
        PartialObject {
            pieces: vec![Piece {
                name: name.clone(),
                key: key.clone(),
                size,
            }],
            name,
            key,
        }
    }
}

/// The objects of one timeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TimelineObjects {
    /// Full segments by segment number.
    pub segments: BTreeMap<u64, ObjectMeta>,
    /// Partial versions by segment number ([`versions_of`] its pieces), in key order.
    pub partials: BTreeMap<u64, Vec<PartialObject>>,
    /// Every listed piece by segment number, in key order.
    pub pieces: BTreeMap<u64, Vec<Piece>>,
}

impl TimelineObjects {
    /// Maximal runs of consecutive full segments, ascending.
    pub(crate) fn segment_ranges(&self) -> Vec<RangeInclusive<u64>> {
        let mut ranges: Vec<RangeInclusive<u64>> = Vec::new();
        for &segno in self.segments.keys() {
            match ranges.last_mut() {
                Some(r) if r.end().checked_add(1) == Some(segno) => *r = *r.start()..=segno,
                _ => ranges.push(segno..=segno),
            }
        }
        ranges
    }

    /// Runs of missing full segments between the first and the last one present.
    pub(crate) fn gaps(&self) -> Vec<RangeInclusive<u64>> {
        self.segment_ranges()
            .windows(2)
            .map(|w| (w[0].end() + 1)..=(w[1].start() - 1))
            .collect()
    }

    /// The partial PostgreSQL should get for `segno`, unless the full segment exists.
    pub(crate) fn served_partial(&self, segno: u64) -> Option<&PartialObject> {
        if self.segments.contains_key(&segno) {
            return None;
        }
        best_partial(self.partials.get(&segno)?)
    }

    /// Pieces of `segno` on no version's chain: left over from merges and crashes, or orphans
    /// whose chain from the segment start is broken.
    pub(crate) fn off_chain(&self, segno: u64) -> Vec<&Piece> {
        let versions = self.partials.get(&segno).map(Vec::as_slice).unwrap_or(&[]);
        self.pieces
            .get(&segno)
            .into_iter()
            .flatten()
            .filter(|p| !versions.iter().any(|v| v.pieces.contains(p)))
            .collect()
    }
}

/// A parsed listing of `<cluster>/wal/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Archive {
    pub cluster: String,
    pub seg_size: u32,
    pub seg_size_source: SegmentSizeSource,
    pub timelines: BTreeMap<TimelineId, TimelineObjects>,
    /// History files by timeline.
    pub histories: BTreeMap<TimelineId, ObjectMeta>,
    /// Objects under the prefix whose name is not a WAL object name (with the reason).
    pub unrecognized: Vec<(ObjectMeta, String)>,
}

impl Archive {
    /// Lists `<cluster>/wal/` and parses it. `seg_size`: the `--wal-segment-size` flag, if given;
    /// without it, the header of the newest full segment object tells the size (one ranged GET).
    pub(crate) async fn load(
        storage: &dyn RemoteStorage,
        cluster: &str,
        seg_size: Option<u32>,
        cancel: &CancellationToken,
    ) -> Result<Archive, StorageError> {
        let prefix = wal_prefix(cluster);
        let metas = storage
            .list_all(&prefix, ListOptions::default(), cancel)
            .await?;
        let (seg_size, source) = match seg_size {
            Some(s) => (Some(s), SegmentSizeSource::Given),
            None => (
                probe_segment_size(storage, &metas, &prefix, cancel).await?,
                SegmentSizeSource::Inferred,
            ),
        };
        let mut archive = Archive::from_listing(cluster, metas, seg_size);
        if seg_size.is_some() {
            archive.seg_size_source = source;
        }
        Ok(archive)
    }

    /// Parses a listing (keys relative to the storage root, all under `<cluster>/wal/`).
    pub(crate) fn from_listing(
        cluster: &str,
        metas: Vec<ObjectMeta>,
        seg_size: Option<u32>,
    ) -> Archive {
        let prefix = wal_prefix(cluster);
        let (seg_size, seg_size_source) = match seg_size {
            Some(s) => (s, SegmentSizeSource::Given),
            None => match infer_segment_size(&metas, &prefix) {
                Some(s) => (s, SegmentSizeSource::Inferred),
                None => (DEFAULT_SEGMENT_SIZE, SegmentSizeSource::Default),
            },
        };
        let mut archive = Archive {
            cluster: cluster.to_string(),
            seg_size,
            seg_size_source,
            timelines: BTreeMap::new(),
            histories: BTreeMap::new(),
            unrecognized: Vec::new(),
        };
        for meta in metas {
            let Some(name) = meta.key.strip_prefix(&prefix) else {
                archive
                    .unrecognized
                    .push((meta, "outside the cluster's wal/ prefix".into()));
                continue;
            };
            match WalObjectName::parse(name, seg_size) {
                Ok(WalObjectName::Segment { timeline, segno }) => {
                    archive
                        .timelines
                        .entry(timeline)
                        .or_default()
                        .segments
                        .insert(segno, meta);
                }
                Ok(WalObjectName::Partial(name)) => {
                    let piece = Piece {
                        size: meta.size,
                        key: meta.key.clone(),
                        name,
                    };
                    archive
                        .timelines
                        .entry(piece.name.timeline)
                        .or_default()
                        .pieces
                        .entry(piece.name.segno)
                        .or_default()
                        .push(piece);
                }
                Ok(WalObjectName::History(tli)) => {
                    archive.histories.insert(tli, meta);
                }
                Err(e) => {
                    let reason = e.reason.clone();
                    archive.unrecognized.push((meta, reason));
                }
            }
        }
        for t in archive.timelines.values_mut() {
            for (segno, pieces) in &t.pieces {
                let versions = versions_of(pieces, &prefix, seg_size);
                if !versions.is_empty() {
                    t.partials.insert(*segno, versions);
                }
            }
        }
        archive
    }

    /// Name of segment `segno` of `timeline` at this archive's segment size.
    pub(crate) fn segment_name(&self, timeline: TimelineId, segno: u64) -> String {
        segment_file_name(timeline, segno, self.seg_size)
    }

    /// Key of segment `segno` of `timeline`.
    pub(crate) fn segment_key(&self, timeline: TimelineId, segno: u64) -> String {
        crate::remote::segment_key(&self.cluster, timeline, segno, self.seg_size)
    }

    /// The newest timeline holding any WAL (full segment or partial version).
    pub(crate) fn newest_timeline(&self) -> Option<TimelineId> {
        self.timelines
            .iter()
            .rev()
            .find(|(_, t)| !t.segments.is_empty() || !t.partials.is_empty())
            .map(|(tli, _)| *tli)
    }

    /// Total stored bytes of every listed object.
    pub(crate) fn total_size(&self) -> u64 {
        let wal: u64 = self
            .timelines
            .values()
            .map(|t| {
                t.segments.values().map(|m| m.size).sum::<u64>()
                    + t.pieces.values().flatten().map(|p| p.size).sum::<u64>()
            })
            .sum();
        let other: u64 = self.histories.values().map(|m| m.size).sum::<u64>()
            + self.unrecognized.iter().map(|(m, _)| m.size).sum::<u64>();
        wal + other
    }

    /// Number of listed objects.
    pub(crate) fn object_count(&self) -> usize {
        let wal: usize = self
            .timelines
            .values()
            .map(|t| t.segments.len() + t.pieces.values().map(Vec::len).sum::<usize>())
            .sum();
        wal + self.histories.len() + self.unrecognized.len()
    }
}

/// Full segment headers read at most to learn the segment size.
const PROBED_SEGMENTS: usize = 3;

/// The segment size the header of the newest full segment object gives (a ranged GET of its
/// first [`HEADER_LEN`] bytes; the next newest when one is damaged, up to [`PROBED_SEGMENTS`]),
/// else the sizes of raw full segment objects ([`infer_segment_size`]); `None` when neither
/// tells. A transient storage failure is an error.
async fn probe_segment_size(
    storage: &dyn RemoteStorage,
    metas: &[ObjectMeta],
    prefix: &str,
    cancel: &CancellationToken,
) -> Result<Option<u32>, StorageError> {
    let newest_fulls = metas
        .iter()
        .rev()
        .filter(|m| {
            m.size > 0
                && m.key
                    .strip_prefix(prefix)
                    .is_some_and(looks_like_segment_name)
        })
        .take(PROBED_SEGMENTS);
    for meta in newest_fulls {
        let len = meta.size.min(HEADER_LEN as u64);
        match storage.get_range_bytes(&meta.key, 0..len, cancel).await {
            Ok(head) => match object_format::decoded_len(&head) {
                Ok(Some(n)) => {
                    if let Some(size) = u32::try_from(n).ok().filter(|s| is_valid_segment_size(*s))
                    {
                        return Ok(Some(size));
                    }
                }
                // Raw: the listing's sizes tell (below).
                Ok(None) => break,
                Err(e) => tracing::debug!(key = %meta.key, "unreadable header: {e}"),
            },
            // Gone meanwhile or unreadable: try the next one.
            Err(e) if !e.kind().is_retryable() => {
                tracing::debug!(key = %meta.key, "cannot read a full segment's header: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(infer_segment_size(metas, prefix))
}

/// The most common size among objects named like a full segment, if it is a valid segment size
/// (ties: the larger size, so a few truncated objects never shrink the guess). Meaningful for raw
/// objects only: an encoded full segment's size is its compressed size.
pub(crate) fn infer_segment_size(metas: &[ObjectMeta], prefix: &str) -> Option<u32> {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for meta in metas {
        let Some(name) = meta.key.strip_prefix(prefix) else {
            continue;
        };
        if !looks_like_segment_name(name) {
            continue;
        }
        if let Ok(size) = u32::try_from(meta.size)
            && is_valid_segment_size(size)
        {
            *counts.entry(size).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(size, count)| (count, size))
        .map(|(size, _)| size)
}

/// 24 uppercase hex digits: the shape of a full segment name at any segment size.
pub(crate) fn looks_like_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

/// The partial PostgreSQL should replay among versions of one segment: the first of
/// [`ranked_candidates`], i.e. the one holding the most WAL across safekeepers.
pub(crate) fn best_partial<'a, I>(partials: I) -> Option<&'a PartialObject>
where
    I: IntoIterator<Item = &'a PartialObject>,
{
    ranked_candidates(partials).into_iter().next()
}

/// The candidates for one segment, best first: one per safekeeper, its own newest version
/// (highest term, then highest commit LSN: a safekeeper that started a new term disowned what
/// its older terms hold past the new term's start), then ordered across safekeepers by the WAL
/// they hold (highest commit LSN first; equal commit LSNs: the lowest safekeeper id first).
/// Terms are never compared across safekeepers: sk5's term 2 says nothing about sk6's term 1.
pub(crate) fn ranked_candidates<'a, I>(partials: I) -> Vec<&'a PartialObject>
where
    I: IntoIterator<Item = &'a PartialObject>,
{
    let mut newest: BTreeMap<u64, &'a PartialObject> = BTreeMap::new();
    for p in partials {
        let slot = newest.entry(p.name.sk_id).or_insert(p);
        if (p.name.term, p.name.commit_lsn) > (slot.name.term, slot.name.commit_lsn) {
            *slot = p;
        }
    }
    let mut ranked: Vec<&PartialObject> = newest.into_values().collect();
    ranked.sort_by(|a, b| {
        b.name
            .commit_lsn
            .cmp(&a.name.commit_lsn)
            .then(a.name.sk_id.cmp(&b.name.sk_id))
    });
    ranked
}

/// Bytes compared at once by [`first_difference`]: slice equality is a `memcmp`, so equal
/// stretches cost memory bandwidth only; the byte-by-byte search runs in one chunk at most.
const COMPARE_CHUNK: usize = 64 << 10;

/// Offset of the first byte where `a` and `b` differ within their common length (the shorter
/// one's), or `None` when one is a prefix of the other.
pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    let common = a.len().min(b.len());
    let (a, b) = (&a[..common], &b[..common]);
    a.chunks(COMPARE_CHUNK)
        .zip(b.chunks(COMPARE_CHUNK))
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .and_then(|(i, (x, y))| {
            x.iter()
                .zip(y.iter())
                .position(|(p, q)| p != q)
                .map(|at| i * COMPARE_CHUNK + at)
        })
}

/// Two candidates of one segment that disagree on their common bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Divergence {
    /// The candidate that would have been served (the most WAL).
    pub best: PartialObject,
    /// A candidate from another safekeeper that disagrees with it.
    pub other: PartialObject,
    /// The first LSN where their bytes differ.
    pub at: Lsn,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partials {} (safekeeper {}) and {} (safekeeper {}) of one segment disagree at LSN {}: \
             the WAL history diverged inside one timeline; neither is served (choose one with \
             --prefer-safekeeper {} or {})",
            self.best.key,
            self.best.name.sk_id,
            self.other.key,
            self.other.name.sk_id,
            self.at,
            self.best.name.sk_id,
            self.other.name.sk_id
        )
    }
}

/// Which of `candidates` (best first, as [`ranked_candidates`] orders them, each with its WAL
/// bytes from the segment start; `seg_start`: that segment's first LSN) to serve.
///
/// When every candidate agrees with the first on their common bytes, the first (the most WAL).
/// They then all agree pairwise too: the first is the longest, so any two others' common bytes
/// are bytes both share with it. Otherwise, with `prefer` naming a safekeeper that has a
/// candidate here, the best candidate that agrees with that safekeeper's (its own, or a longer
/// one extending it); without, the [`Divergence`] between the first and the best-ranked
/// candidate that disagrees with it.
pub(crate) fn choose_agreed(
    candidates: &[(&PartialObject, &[u8])],
    seg_start: Lsn,
    prefer: Option<u64>,
) -> Result<usize, Box<Divergence>> {
    let Some(&(best, best_data)) = candidates.first() else {
        return Ok(0);
    };
    let disagreement = candidates
        .iter()
        .skip(1)
        .find_map(|&(p, data)| first_difference(best_data, data).map(|at| (p, at)));
    let Some((other, at)) = disagreement else {
        return Ok(0);
    };
    if let Some(j) = prefer.and_then(|id| candidates.iter().position(|(p, _)| p.name.sk_id == id)) {
        let preferred = candidates[j].1;
        if let Some(i) = candidates
            .iter()
            .position(|&(_, data)| first_difference(preferred, data).is_none())
        {
            return Ok(i);
        }
    }
    Err(Box::new(Divergence {
        best: best.clone(),
        other: other.clone(),
        at: seg_start + at as u64,
    }))
}

/// `wal` (the bytes `[segment start, commit LSN)`) followed by zeros up to `seg_size` bytes.
/// Fails when `wal` is longer than a segment.
pub(crate) fn pad_to_segment(wal: &[u8], seg_size: u32) -> anyhow::Result<Vec<u8>> {
    let seg_size = seg_size as usize;
    anyhow::ensure!(
        wal.len() <= seg_size,
        "a partial of {} bytes does not fit a {seg_size}-byte segment",
        wal.len()
    );
    let mut out = Vec::with_capacity(seg_size);
    out.extend_from_slice(wal);
    out.resize(seg_size, 0);
    Ok(out)
}

/// Human-readable byte count (`16.0 MiB`).
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
