//! Superseded partials: which leftovers of crashes and retired safekeepers `remote prune` may
//! delete, and which `remote verify` reports as warnings.
//!
//! Owns the rule. A partial is **superseded** when
//! - its segment's full object exists (with the size of a full segment), or
//! - the same safekeeper has another version of the same timeline and segment that holds at
//!   least as much WAL (commit LSN) and is at least as new (term), i.e. a newer upload of the
//!   same history. A safekeeper's term only grows, so this is the order in which it uploaded them.
//!
//! Everything else stays, and what restore would not serve is reported with the reason
//! ([`Kept`]): another safekeeper's versions, a safekeeper's versions that disagree (a higher
//! term ending below a lower one: its WAL was truncated, so the longer one holds WAL the newer
//! term abandoned), objects whose size does not match their name, names that are not WAL
//! object names. An operator decides about those; `remote verify` says what is wrong with them.
//!
//! Invariants:
//! - the partial restore serves for a segment without a full object ([`best_partial`]) is never
//!   superseded, whatever the rule above says;
//! - a superseded partial is deleted only after its bytes were read and found to be a prefix of
//!   what supersedes it ([`confirm`]); one that differs, or cannot be read, is kept and reported,
//!   so a prune never destroys the evidence of a diverged history or of damage;
//! - what supersedes a partial is never itself deleted by the same prune unless the segment's
//!   full object supersedes both (the superseder chosen is the newest version of its safekeeper).

use remote_storage::{ErrorKind, RemoteStorage, RemoteStorageExt, StorageError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Archive, PartialObject, best_partial};

/// What makes a partial superseded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SupersededBy {
    /// The full object of its segment (its key).
    FullSegment(String),
    /// A newer version of the same safekeeper, timeline and segment (its key).
    NewerVersion(String),
}

impl SupersededBy {
    pub(crate) fn key(&self) -> &str {
        match self {
            SupersededBy::FullSegment(k) | SupersededBy::NewerVersion(k) => k,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            SupersededBy::FullSegment(k) => format!("superseded by the full segment {k}"),
            SupersededBy::NewerVersion(k) => format!("superseded by the newer version {k}"),
        }
    }
}

/// A superseded partial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Superseded {
    pub key: String,
    pub size: u64,
    pub by: SupersededBy,
}

/// An object restore does not use that is not superseded either: left alone, reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Kept {
    pub key: String,
    pub size: u64,
    pub reason: String,
}

/// The superseded partials and the objects left alone, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Classification {
    pub superseded: Vec<Superseded>,
    pub kept: Vec<Kept>,
}

impl Classification {
    pub(crate) fn superseded_bytes(&self) -> u64 {
        self.superseded.iter().map(|s| s.size).sum()
    }
}

/// Classifies every partial and unrecognized object of a listing (see the module docs).
pub(crate) fn classify(archive: &Archive) -> Classification {
    let seg_size = archive.seg_size;
    let sound = |p: &PartialObject| p.size == p.name.bytes();
    let mut out = Classification::default();
    for t in archive.timelines.values() {
        for (segno, versions) in &t.partials {
            let full = t
                .segments
                .get(segno)
                .filter(|m| m.size == u64::from(seg_size));
            let served = if full.is_none() {
                best_partial(versions)
            } else {
                None
            };
            for p in versions {
                if Some(p) == served {
                    continue;
                }
                let (key, size) = (p.key.clone(), p.size);
                if !sound(p) {
                    let reason = format!(
                        "{} bytes, but its name says {}: left for inspection (see remote verify)",
                        p.size,
                        p.name.bytes()
                    );
                    out.kept.push(Kept { key, size, reason });
                } else if let Some(full) = full {
                    let by = SupersededBy::FullSegment(full.key.clone());
                    out.superseded.push(Superseded { key, size, by });
                } else if let Some(q) = newest_covering(p, versions, sound) {
                    let by = SupersededBy::NewerVersion(q.key.clone());
                    out.superseded.push(Superseded { key, size, by });
                } else {
                    let reason = kept_reason(p, versions, served);
                    out.kept.push(Kept { key, size, reason });
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

/// The newest version of `p`'s safekeeper that covers it: at least its term and commit LSN.
fn newest_covering<'a>(
    p: &PartialObject,
    versions: &'a [PartialObject],
    sound: impl Fn(&PartialObject) -> bool,
) -> Option<&'a PartialObject> {
    versions
        .iter()
        .filter(|q| {
            q.name != p.name
                && q.name.sk_id == p.name.sk_id
                && q.name.term >= p.name.term
                && q.name.commit_lsn >= p.name.commit_lsn
                && sound(q)
        })
        .max_by_key(|q| (q.name.term, q.name.commit_lsn))
}

fn kept_reason(
    p: &PartialObject,
    versions: &[PartialObject],
    served: Option<&PartialObject>,
) -> String {
    let disagreeing = versions.iter().find(|q| {
        q.name.sk_id == p.name.sk_id
            && q.name != p.name
            && (q.name.term > p.name.term) != (q.name.commit_lsn > p.name.commit_lsn)
    });
    if let Some(q) = disagreeing {
        return format!(
            "not superseded: sk{}'s versions disagree (term {} ends at {}, term {} at {}): left for \
             inspection",
            p.name.sk_id, p.name.term, p.name.commit_lsn, q.name.term, q.name.commit_lsn
        );
    }
    let served = served.map_or("nothing".to_string(), |s| s.key.clone());
    format!(
        "not superseded: sk{}'s newest version of this segment; restore serves {served} \
         (another safekeeper's: a retired one, or one behind)",
        p.name.sk_id
    )
}

/// Reads every superseded partial and what supersedes it, and keeps (moves to `kept`) those
/// whose bytes are not a prefix of it or cannot be read. Fails only when the storage failed in
/// a way that may be transient. A partial gone meanwhile is dropped from the result.
pub(crate) async fn confirm(
    storage: &dyn RemoteStorage,
    mut classes: Classification,
    cancel: &CancellationToken,
) -> Result<Classification, StorageError> {
    let mut confirmed = Vec::new();
    for s in std::mem::take(&mut classes.superseded) {
        let victim = match storage.get_bytes(&s.key, cancel).await {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) if unreadable(&e) => {
                let reason = format!("superseded, but cannot be read ({e}): left for inspection");
                classes.kept.push(Kept {
                    key: s.key,
                    size: s.size,
                    reason,
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        let len = victim.len() as u64;
        let covering = match storage.get_range_bytes(s.by.key(), 0..len, cancel).await {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound || unreadable(&e) => {
                let reason = format!(
                    "{}, which cannot be read ({e}): left alone",
                    s.by.describe()
                );
                classes.kept.push(Kept {
                    key: s.key,
                    size: s.size,
                    reason,
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(at) = victim.iter().zip(covering.iter()).position(|(a, b)| a != b) {
            let reason = format!(
                "{}, but differs from it at byte {at}: a diverged history or damage, left for \
                 inspection (see remote verify)",
                s.by.describe()
            );
            classes.kept.push(Kept {
                key: s.key,
                size: s.size,
                reason,
            });
            continue;
        }
        confirmed.push(s);
    }
    classes.superseded = confirmed;
    classes.kept.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(classes)
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
