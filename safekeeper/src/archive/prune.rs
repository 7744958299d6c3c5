//! Superseded pieces: which leftovers of crashes, merges and retired safekeepers `remote prune`
//! may delete, and which `remote verify` reports as warnings.
//!
//! Owns the rule. The objects are *pieces* (bases and increments, see `crate::chain`); the
//! versions they store are [`super::versions_of`]'s. A piece is **superseded** when
//! - its segment's full object exists, or
//! - it is on the chain of a version that the same safekeeper has another version of the same
//!   timeline and segment covering (at least as much WAL, at least as new a term: a newer upload of
//!   the same history; a safekeeper's term only grows, so this is the order it uploaded them in), or
//! - it is on no version's chain (left over from a merge, or from a crash between the upload of a
//!   merged piece and the deletion of those it replaced) and a version of its safekeeper with at
//!   least its term holds its bytes (ends at or after its commit LSN).
//!
//! Everything else stays, and what restore would not serve is reported with the reason
//! ([`Kept`]): another safekeeper's newest version, a safekeeper's versions that disagree (a
//! higher term ending below a lower one: its WAL was truncated, so the longer one holds WAL the
//! newer term abandoned), pieces on no chain whose bytes no version holds (a broken chain), names
//! that are not WAL object names. An operator decides about those; `remote verify` says what is
//! wrong with them.
//!
//! Invariants:
//! - no piece of the version restore serves for a segment without a full object
//!   ([`best_partial`]), nor of any safekeeper's newest version there, is ever superseded;
//! - a superseded piece is deleted only after its bytes were read, decoded and found equal to the
//!   same WAL range of what supersedes it ([`confirm`]); one that differs, or cannot be read, is
//!   kept and reported, so a prune never destroys the evidence of a diverged history or of damage;
//! - what supersedes a piece is never itself deleted by the same prune unless the segment's full
//!   object supersedes both (the superseder chosen is the newest version of its safekeeper).

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use control_file::names::PartialName;
use remote_storage::{ErrorKind, RemoteStorage, RemoteStorageExt, StorageError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{
    Archive, PartialObject, Piece, assemble, best_partial, decode_piece, ranked_candidates,
};
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
            if let Some(full) = t.segments.get(segno) {
                for piece in pieces {
                    out.supersede(piece, SupersededBy::FullSegment(full.key.clone()), None);
                }
                continue;
            }
            let served = best_partial(versions);
            // Every safekeeper's newest version: restore's candidates, never superseded.
            let newest: HashSet<&str> = ranked_candidates(versions)
                .iter()
                .flat_map(|v| v.pieces.iter().map(|p| p.key.as_str()))
                .collect();
            for piece in pieces {
                if served.is_some_and(|v| v.pieces.contains(piece)) {
                    continue;
                }
                let on_chain = versions.iter().find(|v| v.pieces.contains(piece));
                match on_chain {
                    Some(v) if newest.contains(piece.key.as_str()) => {
                        out.keep(piece, kept_reason(v, versions, served));
                    }
                    Some(v) => match newest_covering(&v.name, versions) {
                        Some(q) => {
                            let by = SupersededBy::NewerVersion(q.key.clone());
                            out.supersede(piece, by, Some(q));
                        }
                        None => out.keep(piece, kept_reason(v, versions, served)),
                    },
                    None => classify_off_chain(&mut out, piece, versions),
                }
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

/// A piece on no chain: superseded by the newest version of its safekeeper that holds its bytes
/// (at least its term and commit LSN; never one that is itself superseded, since no version
/// covers it), else kept (a broken chain).
fn classify_off_chain(out: &mut Classification, piece: &Piece, versions: &[PartialObject]) {
    let n = &piece.name;
    let best = versions
        .iter()
        .filter(|v| {
            v.name.sk_id == n.sk_id && v.name.term >= n.term && v.name.commit_lsn >= n.commit_lsn
        })
        .max_by_key(|v| (v.name.term, v.name.commit_lsn));
    let Some(v) = best else {
        let reason = format!(
            "on no chain from the segment start (a piece before {} is missing) and no version of \
             sk{} holds its bytes: left for inspection (see remote verify)",
            n.start_lsn, n.sk_id
        );
        out.keep(piece, reason);
        return;
    };
    // A base off the chain is an older version; an increment of the same term a leftover.
    let by = if v.name.term != n.term || n.start_lsn == v.name.start_lsn {
        SupersededBy::NewerVersion(v.key.clone())
    } else {
        SupersededBy::Chain(v.key.clone())
    };
    out.supersede(piece, by, Some(v));
}

/// The newest version of `n`'s safekeeper, other than `n`'s own, that covers it: at least its
/// term and commit LSN.
fn newest_covering<'a>(
    n: &PartialName,
    versions: &'a [PartialObject],
) -> Option<&'a PartialObject> {
    versions
        .iter()
        .filter(|q| {
            (q.name.term, q.name.commit_lsn) != (n.term, n.commit_lsn)
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
            return Ok(match object_format::decode(object) {
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
