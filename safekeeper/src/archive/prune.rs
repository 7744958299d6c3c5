//! Superseded pieces: which leftovers of crashes, merges and retired safekeepers `remote prune`
//! may delete, and which `remote verify` reports as warnings.
//!
//! Owns the rule. The objects are *pieces* (bases and increments, see `crate::chain`); the
//! versions they store are [`super::versions_of`]'s. A version is **superseded** when the same
//! safekeeper has another version of the same timeline and segment covering it: at least as much
//! WAL (commit LSN) and at least as new a term, i.e. a newer upload of the same history (a
//! safekeeper's term only grows, so this is the order in which it uploaded them). A piece is
//! **superseded** when
//! - its segment's full object exists, or
//! - it is on no chain of a version that is not superseded (it is on superseded versions' chains
//!   only, or on none: left over from a merge or a crash), and a version of its safekeeper that is
//!   not superseded covers it; that version is named as what supersedes it.
//!
//! Everything else stays, and what restore would not serve is reported with the reason
//! ([`Kept`]): pieces of another safekeeper's newest version, of a safekeeper's versions that
//! disagree (a higher term ending below a lower one: its WAL was truncated, so the longer one
//! holds WAL the newer term abandoned), pieces whose bytes no version holds (a broken chain),
//! names that are not WAL object names. An operator decides about those; `remote verify` says
//! what is wrong with them.
//!
//! Invariants:
//! - no piece of a version that is not superseded is ever superseded (unless the full segment
//!   exists): so the version restore serves for a segment without a full object
//!   ([`best_partial`]), every safekeeper's newest version, and every superseder stay whole;
//! - a superseded piece is deleted only after its bytes were read, decoded and found equal to the
//!   same WAL range of what supersedes it ([`confirm`]); one that differs, or cannot be read, is
//!   kept and reported, so a prune never destroys the evidence of a diverged history or of damage.

use std::collections::BTreeMap;

use bytes::Bytes;
use control_file::names::PartialName;
use remote_storage::{ErrorKind, RemoteStorage, RemoteStorageExt, StorageError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Archive, PartialObject, Piece, assemble, best_partial, decode_piece};
use crate::object_format;

/// What makes a piece superseded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SupersededBy {
    /// The full object of its segment (its key).
    FullSegment(String),
    /// A newer version of the same safekeeper, timeline and segment (its logical key).
    NewerVersion(String),
    /// The version of its safekeeper and term that holds its bytes on another chain (its logical
    /// key): the piece is left over from a merge.
    Chain(String),
}

impl SupersededBy {
    pub(crate) fn key(&self) -> &str {
        match self {
            SupersededBy::FullSegment(k)
            | SupersededBy::NewerVersion(k)
            | SupersededBy::Chain(k) => k,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            SupersededBy::FullSegment(k) => format!("superseded by the full segment {k}"),
            SupersededBy::NewerVersion(k) => format!("superseded by the newer version {k}"),
            SupersededBy::Chain(k) => format!("on no chain; its bytes are in the version {k}"),
        }
    }
}

/// A superseded piece.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Superseded {
    pub key: String,
    /// Stored bytes, as listed.
    pub size: u64,
    pub by: SupersededBy,
    /// The piece's name (which WAL it holds).
    #[serde(skip)]
    pub name: PartialName,
}

/// An object restore does not use that is not superseded either: left alone, reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Kept {
    pub key: String,
    pub size: u64,
    pub reason: String,
}

/// The superseded pieces and the objects left alone, in key order, and the pieces of every
/// version that supersedes something (what [`confirm`] reads).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Classification {
    pub superseded: Vec<Superseded>,
    pub kept: Vec<Kept>,
    #[serde(skip)]
    pub covering: BTreeMap<String, Vec<Piece>>,
}

impl Classification {
    pub(crate) fn superseded_bytes(&self) -> u64 {
        self.superseded.iter().map(|s| s.size).sum()
    }

    fn supersede(&mut self, piece: &Piece, by: SupersededBy, version: Option<&PartialObject>) {
        if let Some(v) = version {
            self.covering.insert(v.key.clone(), v.pieces.clone());
        }
        self.superseded.push(Superseded {
            key: piece.key.clone(),
            size: piece.size,
            by,
            name: piece.name.clone(),
        });
    }

    fn keep(&mut self, piece: &Piece, reason: String) {
        self.kept.push(Kept {
            key: piece.key.clone(),
            size: piece.size,
            reason,
        });
    }
}

/// Classifies every piece and unrecognized object of a listing (see the module docs).
pub(crate) fn classify(archive: &Archive) -> Classification {
    let mut out = Classification::default();
    for t in archive.timelines.values() {
        for (segno, pieces) in &t.pieces {
            let versions = t.partials.get(segno).map(Vec::as_slice).unwrap_or(&[]);
            match t.segments.get(segno) {
                Some(full) => {
                    for piece in pieces {
                        out.supersede(piece, SupersededBy::FullSegment(full.key.clone()), None);
                    }
                }
                None => classify_segment(&mut out, pieces, versions),
            }
        }
    }
    for (meta, reason) in &archive.unrecognized {
        out.kept.push(Kept {
            key: meta.key.clone(),
            size: meta.size,
            reason: format!("not a WAL object name ({reason})"),
        });
    }
    out.superseded.sort_by(|a, b| a.key.cmp(&b.key));
    out.kept.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// The pieces of a segment without a full object. A version is superseded when another version
/// of its safekeeper covers it ([`newest_covering`]); the others (each safekeeper's newest, and
/// versions that disagree with a newer term) stay whole: no piece on their chains is ever
/// superseded. Every other piece is superseded by the newest of those that covers it.
fn classify_segment(out: &mut Classification, pieces: &[Piece], versions: &[PartialObject]) {
    let served = best_partial(versions);
    let standing: Vec<&PartialObject> = versions
        .iter()
        .filter(|v| newest_covering(&v.name, versions.iter()).is_none())
        .collect();
    for piece in pieces {
        if served.is_some_and(|v| v.pieces.contains(piece)) {
            continue;
        }
        if let Some(v) = standing.iter().find(|v| v.pieces.contains(piece)) {
            out.keep(piece, kept_reason(v, versions, served));
            continue;
        }
        let n = &piece.name;
        match newest_covering(n, standing.iter().copied()) {
            Some(q) => {
                // An increment of the same term is a leftover of a merge; anything else (a base,
                // an older term) an older version.
                let by = if q.name.term == n.term && n.start_lsn != q.name.start_lsn {
                    SupersededBy::Chain(q.key.clone())
                } else {
                    SupersededBy::NewerVersion(q.key.clone())
                };
                out.supersede(piece, by, Some(q));
            }
            None => {
                let reason = format!(
                    "on no chain from the segment start (a piece ending at {} is missing) and no \
                     version of sk{} holds its bytes: left for inspection (see remote verify)",
                    n.start_lsn, n.sk_id
                );
                out.keep(piece, reason);
            }
        }
    }
}

/// The newest of `versions` of `n`'s safekeeper that covers `n` (at least its term and commit
/// LSN), other than `n` itself (a version of the same name).
fn newest_covering<'a>(
    n: &PartialName,
    versions: impl Iterator<Item = &'a PartialObject>,
) -> Option<&'a PartialObject> {
    versions
        .filter(|q| {
            q.name != *n
                && q.name.sk_id == n.sk_id
                && q.name.term >= n.term
                && q.name.commit_lsn >= n.commit_lsn
        })
        .max_by_key(|q| (q.name.term, q.name.commit_lsn))
}

fn kept_reason(
    v: &PartialObject,
    versions: &[PartialObject],
    served: Option<&PartialObject>,
) -> String {
    let disagreeing = versions.iter().find(|q| {
        q.name.sk_id == v.name.sk_id
            && q.name != v.name
            && (q.name.term > v.name.term) != (q.name.commit_lsn > v.name.commit_lsn)
    });
    if let Some(q) = disagreeing {
        return format!(
            "not superseded: sk{}'s versions disagree (term {} ends at {}, term {} at {}): left for \
             inspection",
            v.name.sk_id, v.name.term, v.name.commit_lsn, q.name.term, q.name.commit_lsn
        );
    }
    let served = served.map_or("nothing".to_string(), |s| s.key.clone());
    format!(
        "not superseded: a piece of sk{}'s newest version {} of this segment; restore serves \
         {served} (another safekeeper's: a retired one, or one behind)",
        v.name.sk_id, v.key
    )
}

/// Reads every superseded piece and what supersedes it (decoding both), and keeps (moves to
/// `kept`) those whose WAL differs from the same range of it or that cannot be read. Fails only
/// when the storage failed in a way that may be transient. A piece gone meanwhile is dropped
/// from the result. Reads each superseder once.
pub(crate) async fn confirm(
    storage: &dyn RemoteStorage,
    mut classes: Classification,
    seg_size: u32,
    cancel: &CancellationToken,
) -> Result<Classification, StorageError> {
    let mut by_superseder: BTreeMap<SupersededBy, Vec<Superseded>> = BTreeMap::new();
    for s in std::mem::take(&mut classes.superseded) {
        by_superseder.entry(s.by.clone()).or_default().push(s);
    }
    let mut confirmed = Vec::new();
    for (by, victims) in by_superseder {
        let covering = match read_superseder(storage, &by, &classes, seg_size, cancel).await? {
            Ok(data) => data,
            Err(problem) => {
                for s in victims {
                    let reason = format!(
                        "{}, which cannot be read ({problem}): left alone",
                        by.describe()
                    );
                    classes.kept.push(Kept {
                        key: s.key,
                        size: s.size,
                        reason,
                    });
                }
                continue;
            }
        };
        for s in victims {
            match check_victim(storage, &s, &covering, seg_size, cancel).await? {
                Verdict::Confirmed => confirmed.push(s),
                Verdict::Gone => {}
                Verdict::Keep(reason) => classes.kept.push(Kept {
                    key: s.key,
                    size: s.size,
                    reason,
                }),
            }
        }
    }
    confirmed.sort_by(|a, b| a.key.cmp(&b.key));
    classes.superseded = confirmed;
    classes.kept.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(classes)
}

enum Verdict {
    Confirmed,
    Gone,
    Keep(String),
}

/// The WAL bytes of a superseder from its segment start: the decoded full segment (exactly one
/// segment long), or a version assembled from its pieces. The inner `Err` says why it is
/// unusable.
async fn read_superseder(
    storage: &dyn RemoteStorage,
    by: &SupersededBy,
    classes: &Classification,
    seg_size: u32,
    cancel: &CancellationToken,
) -> Result<Result<Bytes, String>, StorageError> {
    let pieces = match by {
        SupersededBy::FullSegment(key) => {
            let object = match storage.get_bytes(key, cancel).await {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::NotFound || unreadable(&e) => {
                    return Ok(Err(e.to_string()));
                }
                Err(e) => return Err(e),
            };
            return Ok(match object_format::decode(object, key) {
                Ok(d) if d.data.len() == seg_size as usize => Ok(d.data),
                Ok(d) => Err(format!(
                    "it decodes to {} bytes, not a segment of {seg_size}",
                    d.data.len()
                )),
                Err(e) => Err(e.to_string()),
            });
        }
        SupersededBy::NewerVersion(key) | SupersededBy::Chain(key) => {
            match classes.covering.get(key) {
                Some(p) if !p.is_empty() => p,
                _ => return Ok(Err("its pieces are unknown".into())),
            }
        }
    };
    let mut objects = Vec::with_capacity(pieces.len());
    for p in pieces {
        match storage.get_bytes(&p.key, cancel).await {
            Ok(b) => objects.push(b),
            Err(e) if e.kind() == ErrorKind::NotFound || unreadable(&e) => {
                return Ok(Err(e.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
    let version = PartialObject {
        name: pieces[pieces.len() - 1].name.as_version(seg_size),
        key: by.key().to_string(),
        pieces: pieces.clone(),
    };
    Ok(assemble(&version, objects))
}

/// Reads one victim and compares its WAL with the same range of its superseder's.
async fn check_victim(
    storage: &dyn RemoteStorage,
    s: &Superseded,
    covering: &[u8],
    seg_size: u32,
    cancel: &CancellationToken,
) -> Result<Verdict, StorageError> {
    let object = match storage.get_bytes(&s.key, cancel).await {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Verdict::Gone),
        Err(e) if unreadable(&e) => {
            return Ok(Verdict::Keep(format!(
                "superseded, but cannot be read ({e}): left for inspection"
            )));
        }
        Err(e) => return Err(e),
    };
    let piece = Piece {
        name: s.name.clone(),
        key: s.key.clone(),
        size: s.size,
    };
    let wal = match decode_piece(&piece, object) {
        Ok(w) => w,
        Err(e) => {
            return Ok(Verdict::Keep(format!(
                "superseded, but cannot be decoded ({e}): left for inspection"
            )));
        }
    };
    let from = s.name.start_offset(seg_size) as usize;
    let Some(theirs) = covering.get(from..from + wal.len()) else {
        return Ok(Verdict::Keep(format!(
            "{}, which does not hold its bytes: left for inspection",
            s.by.describe()
        )));
    };
    if let Some(at) = wal.iter().zip(theirs).position(|(a, b)| a != b) {
        return Ok(Verdict::Keep(format!(
            "{}, but differs from it at {}: a diverged history or damage, left for inspection \
             (see remote verify)",
            s.by.describe(),
            s.name.start_lsn + at as u64
        )));
    }
    Ok(Verdict::Confirmed)
}

/// A read that failed because of the object itself, not the network.
fn unreadable(e: &StorageError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ChecksumMismatch
            | ErrorKind::LengthMismatch
            | ErrorKind::Permanent
            | ErrorKind::InvalidInput
    )
}

#[cfg(test)]
mod tests;
