//! `remote verify`: every check an archive must pass before anyone relies on it for recovery.
//!
//! Owns the list of checks and what counts as an error (recovery would fail or silently stop
//! early) versus a warning (worth knowing, recovery unaffected):
//! - structure, from the listing alone: continuity of full segments per timeline from the first to
//!   the last (each missing segment named), a history file for every timeline after 1 that holds
//!   WAL, names that are not WAL object names (warning);
//! - content, by reading every object: crc32c and length against what was recorded at upload
//!   (no recorded crc32c is a warning), then the object format ([`crate::object_format::decode`]:
//!   header, lengths, crc32c of the WAL bytes; raw objects pass through) and the decoded length (a
//!   full segment is exactly the segment size, a piece exactly `[start, commit)` of its name);
//!   for full segments and every version (its chain of pieces from the segment start, assembled)
//!   the WAL page header of every page (magic, page address, long header form, segment and block
//!   size), the records' CRCs and back-links, one system identifier across the archive (the most
//!   common one unless given), history files that parse, every version and leftover piece whose
//!   full segment exists agreeing with it, and, for a segment that only partials hold, the
//!   candidates of different safekeepers agreeing on their common bytes ([`divergence_problems`]:
//!   the check `restore-wal` makes before serving one);
//! - leftovers, from the listing alone: superseded pieces still present and pieces on no chain
//!   from the segment start (warnings, with their size; the rule is [`super::prune`]'s, and
//!   `remote prune` deletes the superseded ones).
//!
//! Invariant: a storage failure that may be transient aborts the whole check with an error
//! rather than being reported as damage, so "problems found" always means the stored bytes are
//! wrong, never that the network was.

use std::collections::BTreeMap;

use bytes::Bytes;
use control_file::Lsn;
use control_file::names::TimelineId;
use futures::StreamExt;
use remote_storage::{ErrorKind, ObjectMeta, RemoteStorage, StorageError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::history::parse_history;
use super::{Archive, PartialObject, Piece, decode_piece, first_difference, ranked_candidates};
use crate::object_format;
use crate::wal::format::{Expect, PageProblem, WAL_PAGE_SIZE, check_page_header, scan_segment};

/// Missing segments named individually per gap before the rest is summarized.
const NAMED_PER_GAP: u64 = 10;
/// Bad pages reported per object before the rest is summarized.
const PAGES_PER_OBJECT: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Severity {
    Error,
    Warning,
}

/// One finding, naming the object (or, for a missing segment, the key it should have).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Problem {
    pub severity: Severity,
    pub object: String,
    pub message: String,
}

impl Problem {
    fn error(object: &str, message: impl Into<String>) -> Problem {
        Problem {
            severity: Severity::Error,
            object: object.to_string(),
            message: message.into(),
        }
    }

    fn warning(object: &str, message: impl Into<String>) -> Problem {
        Problem {
            severity: Severity::Warning,
            object: object.to_string(),
            message: message.into(),
        }
    }
}

/// Knobs of the check.
#[derive(Clone, Debug)]
pub(crate) struct VerifyOptions {
    /// Objects read at once.
    pub jobs: usize,
    /// The system identifier every segment must carry; default: the most common one.
    pub system_identifier: Option<u64>,
}

/// The outcome: every problem found, sorted by object.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    pub objects_read: usize,
    pub bytes_read: u64,
    pub system_identifier: Option<u64>,
    pub problems: Vec<Problem>,
}

impl Report {
    pub(crate) fn errors(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }

    pub(crate) fn warnings(&self) -> usize {
        self.problems.len() - self.errors()
    }
}

/// Problems visible in the listing alone.
pub(crate) fn structural_problems(archive: &Archive) -> Vec<Problem> {
    let mut out = Vec::new();
    for (meta, reason) in &archive.unrecognized {
        out.push(Problem::warning(
            &meta.key,
            format!("not a WAL object name ({reason})"),
        ));
    }
    for (&tli, objects) in &archive.timelines {
        for gap in objects.gaps() {
            let (first, last) = (*gap.start(), *gap.end());
            for segno in first..=last.min(first.saturating_add(NAMED_PER_GAP - 1)) {
                let only_partials = if objects.partials.contains_key(&segno) {
                    " (only partial versions of it exist)"
                } else {
                    ""
                };
                out.push(Problem::error(
                    &archive.segment_key(tli, segno),
                    format!("missing: full segments before and after it exist{only_partials}"),
                ));
            }
            if last - first >= NAMED_PER_GAP {
                out.push(Problem::error(
                    &archive.segment_key(tli, first + NAMED_PER_GAP),
                    format!(
                        "missing, with {} more segments up to {}",
                        last - first - NAMED_PER_GAP,
                        archive.segment_name(tli, last)
                    ),
                ));
            }
        }
        let has_wal = !objects.segments.is_empty() || !objects.partials.is_empty();
        if tli > 1 && has_wal && !archive.histories.contains_key(&tli) {
            out.push(Problem::error(
                &crate::remote::history_key(&archive.cluster, tli),
                format!(
                    "missing: timeline {tli} holds WAL, but without its history file recovery \
                     cannot switch to it"
                ),
            ));
        }
    }
    out
}

/// Superseded pieces still present, and pieces on no chain that nothing supersedes: warnings
/// naming each and its size (recovery is not affected; they cost storage, and pile up when a
/// safekeeper crashed or was retired).
pub(crate) fn superseded_problems(archive: &Archive) -> Vec<Problem> {
    let classes = super::prune::classify(archive);
    let mut out: Vec<Problem> = classes
        .superseded
        .iter()
        .map(|s| {
            Problem::warning(
                &s.key,
                format!(
                    "{}, {} bytes: left over, `remote prune` deletes it",
                    s.by.describe(),
                    s.size
                ),
            )
        })
        .collect();
    for t in archive.timelines.values() {
        for segno in t.pieces.keys() {
            for p in t.off_chain(*segno) {
                if classes.superseded.iter().any(|s| s.key == p.key) {
                    continue;
                }
                out.push(Problem::warning(
                    &p.key,
                    format!(
                        "{} bytes on no chain from the segment start (a piece ending at {} is \
                         missing) and in no version: restore cannot use it",
                        p.size, p.name.start_lsn
                    ),
                ));
            }
        }
    }
    out
}

/// What one object's content check found.
#[derive(Default)]
struct ObjectFindings {
    problems: Vec<Problem>,
    /// (key, system identifier) of each WAL object whose first page header carries one.
    system_ids: Vec<(String, u64)>,
    bytes: u64,
    objects: usize,
}

/// One unit of reading: a segment with its pieces and the versions they hold (so versions can be
/// compared with the full segment without reading it twice), or a history file.
enum Unit {
    Segment {
        full: Option<ObjectMeta>,
        pieces: Vec<Piece>,
        versions: Vec<PartialObject>,
        segno: u64,
    },
    History {
        tli: TimelineId,
        key: String,
    },
}

/// Runs every check. Fails only when the storage could not be read (see the module invariant).
pub(crate) async fn verify_archive(
    storage: &dyn RemoteStorage,
    archive: &Archive,
    opts: &VerifyOptions,
    cancel: &CancellationToken,
) -> Result<Report, StorageError> {
    let mut units = Vec::new();
    for objects in archive.timelines.values() {
        let segnos: std::collections::BTreeSet<u64> = objects
            .segments
            .keys()
            .chain(objects.pieces.keys())
            .copied()
            .collect();
        for segno in segnos {
            units.push(Unit::Segment {
                full: objects.segments.get(&segno).cloned(),
                pieces: objects.pieces.get(&segno).cloned().unwrap_or_default(),
                versions: objects.partials.get(&segno).cloned().unwrap_or_default(),
                segno,
            });
        }
    }
    for (&tli, meta) in &archive.histories {
        units.push(Unit::History {
            tli,
            key: meta.key.clone(),
        });
    }
    let mut findings = futures::stream::iter(units)
        .map(|unit| check_unit(storage, archive.seg_size, unit, cancel))
        .buffer_unordered(opts.jobs.max(1));
    let mut problems = structural_problems(archive);
    problems.extend(superseded_problems(archive));
    let mut system_ids = Vec::new();
    let (mut objects_read, mut bytes_read) = (0, 0);
    while let Some(f) = findings.next().await {
        let f = f?;
        problems.extend(f.problems);
        system_ids.extend(f.system_ids);
        objects_read += f.objects;
        bytes_read += f.bytes;
    }
    let expected = opts
        .system_identifier
        .or_else(|| most_common(system_ids.iter().map(|(_, id)| *id)));
    if let Some(expected) = expected {
        for (key, id) in system_ids.iter().filter(|(_, id)| *id != expected) {
            problems.push(Problem::error(
                key,
                format!("system identifier {id}, but the archive's is {expected} (WAL of another cluster)"),
            ));
        }
    }
    problems.sort_by(|a, b| (&a.object, a.severity).cmp(&(&b.object, b.severity)));
    Ok(Report {
        objects_read,
        bytes_read,
        system_identifier: expected,
        problems,
    })
}

fn most_common(ids: impl Iterator<Item = u64>) -> Option<u64> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts.into_iter().max_by_key(|&(_, n)| n).map(|(id, _)| id)
}

async fn check_unit(
    storage: &dyn RemoteStorage,
    seg_size: u32,
    unit: Unit,
    cancel: &CancellationToken,
) -> Result<ObjectFindings, StorageError> {
    let mut f = ObjectFindings::default();
    match unit {
        Unit::History { tli, key } => {
            if let Some(data) = read_decoded(storage, &key, &mut f, cancel).await? {
                let parsed = std::str::from_utf8(&data)
                    .map_err(|_| anyhow::anyhow!("not UTF-8 text"))
                    .and_then(|text| parse_history(tli, text));
                if let Err(e) = parsed {
                    f.problems
                        .push(Problem::error(&key, format!("malformed history: {e:#}")));
                }
            }
        }
        Unit::Segment {
            full,
            pieces,
            versions,
            segno,
        } => {
            check_segment(
                storage, seg_size, full, &pieces, &versions, segno, &mut f, cancel,
            )
            .await?
        }
    }
    Ok(f)
}

/// A segment: its full object, every piece, and every version assembled from its chain.
#[allow(clippy::too_many_arguments)]
async fn check_segment(
    storage: &dyn RemoteStorage,
    seg_size: u32,
    full: Option<ObjectMeta>,
    pieces: &[Piece],
    versions: &[PartialObject],
    segno: u64,
    f: &mut ObjectFindings,
    cancel: &CancellationToken,
) -> Result<(), StorageError> {
    let start = Lsn::from_segment(segno, seg_size);
    let mut full_data = None;
    if let Some(meta) = full
        && let Some(data) = read_decoded(storage, &meta.key, f, cancel).await?
    {
        if data.len() == seg_size as usize {
            check_wal(&meta.key, &data, start, seg_size, f);
            full_data = Some(data);
        } else {
            f.problems.push(Problem::error(
                &meta.key,
                format!(
                    "holds {} bytes of WAL, but a full segment is {seg_size} bytes (truncated?)",
                    data.len()
                ),
            ));
        }
    }
    let mut wal: BTreeMap<&str, Bytes> = BTreeMap::new();
    for p in pieces {
        let Some(object) = read(storage, &p.key, f, cancel).await? else {
            continue;
        };
        match decode_piece(p, object) {
            Ok(data) => {
                wal.insert(&p.key, data);
            }
            Err(e) => f.problems.push(Problem::error(&p.key, e)),
        }
    }
    let mut version_data = Vec::new();
    for v in versions {
        let parts: Option<Vec<&Bytes>> = v.pieces.iter().map(|p| wal.get(p.key.as_str())).collect();
        let Some(parts) = parts else {
            continue; // a piece is unreadable: reported above
        };
        let data = Bytes::from(
            parts
                .iter()
                .flat_map(|b| b.iter().copied())
                .collect::<Vec<u8>>(),
        );
        check_wal(&v.key, &data, start, seg_size, f);
        match &full_data {
            Some(full) => compare_with_full(&v.key, &data, 0, full, start, v.name.term, f),
            None => version_data.push((v.clone(), data)),
        }
    }
    if let Some(full) = &full_data {
        for p in pieces
            .iter()
            .filter(|p| !versions.iter().any(|v| v.pieces.contains(p)))
        {
            if let Some(data) = wal.get(p.key.as_str()) {
                let at = p.name.start_offset(seg_size) as usize;
                compare_with_full(&p.key, data, at, full, start, p.name.term, f);
            }
        }
    }
    f.problems.extend(divergence_problems(&version_data, start));
    Ok(())
}

/// An error when `data` (WAL from `at` bytes into the segment) differs from the full segment.
fn compare_with_full(
    key: &str,
    data: &[u8],
    at: usize,
    full: &[u8],
    start: Lsn,
    term: u64,
    f: &mut ObjectFindings,
) {
    let theirs = full.get(at..).unwrap_or_default();
    if let Some(i) = data.iter().zip(theirs.iter()).position(|(a, b)| a != b) {
        f.problems.push(Problem::error(
            key,
            format!(
                "differs from the full segment that supersedes it at {} (term {term}: a diverged \
                 history or damage)",
                start + (at + i) as u64
            ),
        ));
    }
}

/// Candidates of one segment (read intact, no full segment) that `restore-wal` would refuse to
/// choose between: every safekeeper's newest partial is compared with the best one (the most
/// WAL) on their common bytes; each disagreement is an error on the runner-up naming the best
/// and the first differing LSN. Comparing with the best alone suffices: it is the longest, so
/// two runners-up that both agree with it agree with each other.
pub(crate) fn divergence_problems(partials: &[(PartialObject, Bytes)], start: Lsn) -> Vec<Problem> {
    let ranked = ranked_candidates(partials.iter().map(|(p, _)| p));
    let data = |p: &PartialObject| {
        partials
            .iter()
            .find(|(q, _)| q == p)
            .map(|(_, d)| &d[..])
            .unwrap_or_default()
    };
    let Some((best, rest)) = ranked.split_first() else {
        return Vec::new();
    };
    rest.iter()
        .filter_map(|other| {
            let at = first_difference(data(best), data(other))?;
            Some(Problem::error(
                &other.key,
                format!(
                    "diverges from {} (safekeeper {}, more WAL) at {}: the WAL history forked \
                     inside one timeline; restore-wal refuses this segment unless \
                     --prefer-safekeeper {} or {} says which to trust",
                    best.key,
                    best.name.sk_id,
                    start + at as u64,
                    best.name.sk_id,
                    other.name.sk_id
                ),
            ))
        })
        .collect()
}

/// [`read`], then [`object_format::decode`]; a format problem is recorded and gives `Ok(None)`.
async fn read_decoded(
    storage: &dyn RemoteStorage,
    key: &str,
    f: &mut ObjectFindings,
    cancel: &CancellationToken,
) -> Result<Option<Bytes>, StorageError> {
    let Some(object) = read(storage, key, f, cancel).await? else {
        return Ok(None);
    };
    match object_format::decode(object, key) {
        Ok(d) => Ok(Some(d.data)),
        Err(e) => {
            f.problems.push(Problem::error(key, e.to_string()));
            Ok(None)
        }
    }
}

/// Reads and verifies one object. `Ok(None)` when it cannot be used (the problem is recorded);
/// `Err` when the storage failed in a way that may be transient.
async fn read(
    storage: &dyn RemoteStorage,
    key: &str,
    f: &mut ObjectFindings,
    cancel: &CancellationToken,
) -> Result<Option<Bytes>, StorageError> {
    let result = match storage.get(key, None, cancel).await {
        Ok(r) => {
            let has_crc = r.meta.crc32c.is_some();
            r.bytes().await.map(|b| (b, has_crc))
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((data, has_crc)) => {
            f.objects += 1;
            f.bytes += data.len() as u64;
            if !has_crc {
                f.problems.push(Problem::warning(
                    key,
                    "no crc32c recorded (not written by a safekeeper?): content checked, bytes not",
                ));
            }
            Ok(Some(data))
        }
        Err(e) => match e.kind() {
            ErrorKind::ChecksumMismatch => {
                f.problems
                    .push(Problem::error(key, format!("damaged: {}", e.message())));
                Ok(None)
            }
            ErrorKind::LengthMismatch => {
                f.problems.push(Problem::error(
                    key,
                    format!("truncated or extended: {}", e.message()),
                ));
                Ok(None)
            }
            ErrorKind::NotFound => {
                f.problems
                    .push(Problem::warning(key, "deleted while the check ran"));
                Ok(None)
            }
            ErrorKind::Permanent | ErrorKind::InvalidInput => {
                f.problems
                    .push(Problem::error(key, format!("cannot be read: {e}")));
                Ok(None)
            }
            _ => Err(e),
        },
    }
}

/// Page headers of every page and the records of `data` (a segment image from its start,
/// complete or a partial prefix).
fn check_wal(key: &str, data: &[u8], start: Lsn, seg_size: u32, f: &mut ObjectFindings) {
    let mut bad_pages = Vec::new();
    let mut first_zeroed: Option<Lsn> = None;
    for (i, page) in data.chunks(WAL_PAGE_SIZE).enumerate() {
        let lsn = start + (i * WAL_PAGE_SIZE) as u64;
        // A partial may end inside the header of its last page: nothing to check there yet.
        let header_len = if i == 0 { 40 } else { 24 };
        if page.len() < header_len {
            break;
        }
        match check_page_header(page, lsn.0, seg_size, Expect::default()) {
            Ok(header) => {
                if let Some(zero) = first_zeroed {
                    bad_pages.push(format!(
                        "page at {zero} is zeroed but the later page at {lsn} is not"
                    ));
                    first_zeroed = None;
                }
                if let Some(long) = header.long {
                    f.system_ids.push((key.to_string(), long.system_identifier));
                }
            }
            // Zeroed pages end the WAL of a segment (after a WAL switch): fine if all that follow
            // are zeroed too.
            Err(PageProblem::Zeroed) if i > 0 => {
                first_zeroed.get_or_insert(lsn);
            }
            Err(problem) => bad_pages.push(format!("page header at {lsn}: {problem}")),
        }
    }
    let count = bad_pages.len();
    for msg in bad_pages.into_iter().take(PAGES_PER_OBJECT) {
        f.problems.push(Problem::error(key, msg));
    }
    if count > PAGES_PER_OBJECT {
        f.problems.push(Problem::error(
            key,
            format!("{} more bad pages", count - PAGES_PER_OBJECT),
        ));
    }
    if count > 0 {
        return;
    }
    let scan = scan_segment(data, start.0, seg_size, Expect::default());
    if scan.stop.is_corruption() {
        let detail = match &scan.stop {
            crate::wal::format::ScanStop::BadRecord { offset, reason, .. } => {
                format!("WAL record at {}: {reason}", start + *offset as u64)
            }
            crate::wal::format::ScanStop::BadPage { offset, problem } => {
                format!("page at {}: {problem}", start + *offset as u64)
            }
            other => format!("{other:?}"),
        };
        f.problems.push(Problem::error(
            key,
            format!("{detail} (after {} valid records)", scan.records),
        ));
    }
}
