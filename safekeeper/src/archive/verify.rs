//! `remote verify`: every check an archive must pass before anyone relies on it for recovery.
//!
//! Owns the list of checks and what counts as an error (recovery would fail or silently stop
//! early) versus a warning (worth knowing, recovery unaffected):
//! - structure, from the listing alone: continuity of full segments per timeline from the first to
//!   the last (each missing segment named), object sizes (a full segment is exactly the segment
//!   size, a partial exactly what its name promises), a history file for every timeline after 1
//!   that holds WAL, names that are not WAL object names (warning);
//! - content, by reading every object: crc32c and length against what was recorded at upload
//!   (no recorded crc32c is a warning), the WAL page header of every page (magic, page address,
//!   long header form, segment and block size), the records' CRCs and back-links, one system
//!   identifier across the archive (the most common one unless given), history files that parse,
//!   every partial whose full segment exists being a prefix of it, and, for a segment that only
//!   partials hold, the candidates of different safekeepers agreeing on their common bytes
//!   ([`divergence_problems`]: the check `restore-wal` makes before serving one);
//! - leftovers, from the listing alone: superseded partials still present (warning, with their
//!   size; the rule is [`super::prune`]'s, and `remote prune` deletes them).
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
use super::{Archive, PartialObject, first_difference, ranked_candidates};
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
        for meta in objects.segments.values() {
            if meta.size != u64::from(archive.seg_size) {
                out.push(Problem::error(
                    &meta.key,
                    format!(
                        "{} bytes, but a full segment is {} bytes (truncated?)",
                        meta.size, archive.seg_size
                    ),
                ));
            }
        }
        for p in objects.partials.values().flatten() {
            let expected = p.name.bytes();
            if p.size != expected {
                out.push(Problem::error(
                    &p.key,
                    format!(
                        "{} bytes, but its name says [segment start, {}) = {expected} bytes",
                        p.size, p.name.commit_lsn
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

/// Superseded partials still present: warnings naming each and its size (recovery is not
/// affected; they cost storage, and pile up when a safekeeper crashed or was retired).
pub(crate) fn superseded_problems(archive: &Archive) -> Vec<Problem> {
    super::prune::classify(archive)
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
        .collect()
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

/// One unit of reading: a segment with its partials (so partials can be compared with the full
/// segment without reading it twice), or a history file.
enum Unit {
    Segment {
        full: Option<ObjectMeta>,
        partials: Vec<PartialObject>,
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
            .chain(objects.partials.keys())
            .copied()
            .collect();
        for segno in segnos {
            units.push(Unit::Segment {
                full: objects.segments.get(&segno).cloned(),
                partials: objects.partials.get(&segno).cloned().unwrap_or_default(),
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
            if let Some(data) = read(storage, &key, &mut f, cancel).await? {
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
            partials,
            segno,
        } => {
            let start = Lsn::from_segment(segno, seg_size);
            let mut full_data = None;
            if let Some(meta) = full
                && let Some(data) = read(storage, &meta.key, &mut f, cancel).await?
                && data.len() == seg_size as usize
            {
                check_wal(&meta.key, &data, start, seg_size, &mut f);
                full_data = Some(data);
            }
            let mut partial_data = Vec::new();
            for p in partials {
                let Some(data) = read(storage, &p.key, &mut f, cancel).await? else {
                    continue;
                };
                if data.len() as u64 != p.name.bytes() {
                    continue; // reported by the structural check
                }
                check_wal(&p.key, &data, start, seg_size, &mut f);
                if full_data.is_none() {
                    partial_data.push((p.clone(), data.clone()));
                }
                if let Some(full) = &full_data
                    && let Some(at) = data.iter().zip(full.iter()).position(|(a, b)| a != b)
                {
                    f.problems.push(Problem::error(
                        &p.key,
                        format!(
                            "differs from the full segment that supersedes it at {} \
                             (term {}: a diverged history or damage)",
                            start + at as u64,
                            p.name.term
                        ),
                    ));
                }
            }
            f.problems.extend(divergence_problems(&partial_data, start));
        }
    }
    Ok(f)
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
