//! The bookkeeping of partial objects, as pure functions of the control file's state and of the
//! requests that may still reach the storage: which version may be uploaded, what an upload's
//! completion supersedes, what GC may delete, and what a listing of the remote teaches. The
//! manager (`partial.rs`, `gc.rs`, `full.rs`, `audit.rs`) only calls these; the model test
//! (`bookkeeping/model.rs`) drives them through every interleaving of uploads, lost responses,
//! late requests, GC and crashes.
//!
//! Versions and pieces. All partial entries of a control file are this safekeeper's own, each a
//! *piece* holding `[start_lsn, commit_lsn)` of one segment (`chain.rs`). Pieces of one segment
//! and timeline are ordered by their version `(term, commit LSN)`: terms order one safekeeper's
//! own history (a newer term's WAL replaces an older one's from its start on), and within a term
//! a higher commit LSN holds more of the same WAL. The segment's *best* version is the highest
//! `(term, end)` that `Uploaded` pieces chain to from the segment start ([`best_uploaded`]); a
//! piece is *superseded* when the segment's full object is recorded, or when it is not on the
//! best version's chain and its own version is not above the best's.
//!
//! Invariants, each kept by one function here:
//! - (a) An object exists remotely only if the control file lists it (or it is a full segment or
//!   history file implied by the recorded state), also while a PUT, a retry or an abandoned
//!   request may still land: intent before the PUT ([`record_intent`]); an entry leaves the list
//!   only after its delete succeeded ([`record_deleted`]), and a delete is issued only when no
//!   request for the key can still land ([`RequestLedger`], [`deletable`]). An object that shows
//!   up anyway (a request that outlived every bound) is found by a listing and listed again
//!   ([`adopt_listed`]), not forgotten.
//! - (b) The archive's end of WAL never decreases: only superseded versions are deleted
//!   ([`deletable`]), and the best version of a segment is superseded only by a higher one that
//!   is `Uploaded` or by the full segment.
//! - (c) A partial is never uploaded at or below a version that may exist: [`plan_piece`] admits
//!   only a version above every listed one (or a retry of the listed best, same name and bytes).
//! - (d) A restore never needs more than [`MAX_CHAIN`] pieces: new pieces extend or shorten the
//!   best chain of their term ([`crate::chain::next_start`]), and only pieces off it are deleted.

use std::collections::{HashMap, HashSet};

use control_file::names::PartialName;
use control_file::{ClusterState, Lsn, ObjectStatus, PartialObject};

use crate::chain::{Chain, MAX_CHAIN, Tiered, best_chain, next_start};

#[cfg(test)]
mod model;

/// The order of one safekeeper's versions of a segment (see the module doc).
pub(super) fn version(name: &PartialName) -> (u64, Lsn) {
    (name.term, name.commit_lsn)
}

fn same_segment(a: &PartialName, b: &PartialName) -> bool {
    a.timeline == b.timeline && a.segno == b.segno
}

/// This safekeeper's best version of the segment of `name` over its `Uploaded` pieces: the
/// highest `(term, end)` they chain to from the segment start, with the chain.
pub(super) fn best_uploaded<'a>(st: &'a ClusterState, name: &PartialName) -> Option<Chain<'a>> {
    let seg_start = Lsn::from_segment(name.segno, st.wal_segment_size);
    let uploaded = || {
        st.remote
            .partials
            .iter()
            .filter(|p| p.status == ObjectStatus::Uploaded && same_segment(&p.name, name))
            .map(|p| &p.name)
    };
    let mut terms: Vec<u64> = uploaded().map(|p| p.term).collect();
    terms.sort_unstable();
    terms.dedup();
    // The highest term with a chain wins (a newer term replaces an older one's WAL).
    terms
        .into_iter()
        .rev()
        .find_map(|term| best_chain(uploaded().filter(|p| p.term == term), seg_start))
}

/// True when the segment's full object is recorded, or `name` is off the best version's chain
/// and not above it (see the module doc).
pub(super) fn superseded(st: &ClusterState, name: &PartialName) -> bool {
    if st.remote.contains_full_segment(name.timeline, name.segno) {
        return true;
    }
    let Some(best) = best_uploaded(st, name) else {
        return false;
    };
    let term = best.pieces.first().map(|p| p.term).unwrap_or(0);
    !best.pieces.iter().any(|p| *p == name) && version(name) <= (term, best.end)
}

/// The next piece to upload for the WAL up to `base.commit_lsn` of term `base.term` (its segment
/// is `base`'s), with its merge level; `None` when nothing may or need be uploaded. A retry of the
/// listed best when it is `InProgress` at exactly this version (same name, same bytes);
/// otherwise a piece above every listed version, extending this term's best chain
/// ([`next_start`]: an increment, or a merge of low-level tail pieces when the chain is full),
/// or a base when the term has no chain in this segment. `max_chain` is [`MAX_CHAIN`] in the
/// service.
pub(super) fn plan_piece(
    st: &ClusterState,
    base: &PartialName,
    max_chain: usize,
) -> Option<(PartialName, u8)> {
    if st.remote.contains_full_segment(base.timeline, base.segno) {
        return None;
    }
    let top = st
        .remote
        .partials
        .iter()
        .filter(|p| same_segment(&p.name, base))
        .max_by_key(|p| version(&p.name));
    if let Some(t) = top {
        if version(&t.name) == version(base) {
            return (t.status == ObjectStatus::InProgress).then(|| (t.name.clone(), t.level));
        }
        if version(&t.name) > version(base) {
            return None;
        }
    }
    let mut name = base.clone();
    let mut level = 0;
    if let Some(chain) = best_uploaded(st, base).filter(|c| {
        c.pieces.first().is_some_and(|p| p.term == base.term) && c.end < base.commit_lsn
    }) {
        let level_of = |n: &PartialName| {
            st.remote
                .partials
                .iter()
                .find(|p| p.name == *n)
                .map_or(0, |p| p.level)
        };
        let tiered: Vec<Tiered<'_>> = chain
            .pieces
            .iter()
            .map(|p| Tiered {
                piece: p,
                level: level_of(p),
            })
            .collect();
        (name.start_lsn, level) = next_start(&tiered, max_chain);
    }
    Some((name, level))
}

/// [`plan_piece`] with the service's chain bound.
pub(super) fn plan_next_piece(st: &ClusterState, base: &PartialName) -> Option<(PartialName, u8)> {
    plan_piece(st, base, MAX_CHAIN)
}

/// Step 2 of the partial protocol: `entry` is listed `InProgress` before its PUT.
pub(super) fn record_intent(st: &mut ClusterState, entry: PartialObject) {
    st.remote.partials.retain(|p| p.name != entry.name);
    st.remote.partials.push(entry);
}

/// Step 3: the PUT of `name` succeeded. It becomes `Uploaded` — or `Deleting` when something
/// superseded it meanwhile (the full segment was recorded while it was in flight, or a higher
/// version landed) — and every `Uploaded` piece of the segment that the new best version no
/// longer needs becomes `Deleting`. `InProgress` pieces stay `InProgress` (superseded, so
/// deletable once quiet): `Deleting` always means "its PUT completed", so no request of a
/// previous process can still write it ([`RequestLedger::new`]).
pub(super) fn record_uploaded(st: &mut ClusterState, name: &PartialName) {
    for p in st.remote.partials.iter_mut() {
        if p.name == *name {
            p.status = ObjectStatus::Uploaded;
        }
    }
    let now_superseded: Vec<PartialName> = st
        .remote
        .partials
        .iter()
        .filter(|p| {
            p.status == ObjectStatus::Uploaded
                && same_segment(&p.name, name)
                && superseded(st, &p.name)
        })
        .map(|p| p.name.clone())
        .collect();
    for p in st.remote.partials.iter_mut() {
        if now_superseded.contains(&p.name) {
            p.status = ObjectStatus::Deleting;
        }
    }
}

/// Step 5: the full segments just recorded supersede every partial of their segment: the
/// `Uploaded` ones become `Deleting`; `InProgress` ones (a PUT may still land) stay so, and are
/// deleted once quiet like every superseded version.
pub(super) fn record_full_segments(st: &mut ClusterState) {
    let full: Vec<bool> = st
        .remote
        .partials
        .iter()
        .map(|p| {
            st.remote
                .contains_full_segment(p.name.timeline, p.name.segno)
        })
        .collect();
    for (p, is_full) in st.remote.partials.iter_mut().zip(full) {
        if is_full && p.status == ObjectStatus::Uploaded {
            p.status = ObjectStatus::Deleting;
        }
    }
}

/// The entries GC may delete now: superseded (or already `Deleting`), and no request for their
/// key can still land (`ledger`). An `InProgress` piece above the best version is never deleted:
/// its object may be the archive's end (invariant (b)); it stays until a version at or above it
/// is `Uploaded`. Pieces on the best version's chain are never deleted.
pub(super) fn deletable<T: Ord + Copy>(
    st: &ClusterState,
    ledger: &RequestLedger<T>,
    now: T,
) -> Vec<PartialName> {
    st.remote
        .partials
        .iter()
        .filter(|p| p.status == ObjectStatus::Deleting || superseded(st, &p.name))
        .filter(|p| ledger.quiet(&p.name, now))
        .map(|p| p.name.clone())
        .collect()
}

/// Step 4: the delete of `names` succeeded; their entries leave the list.
pub(super) fn record_deleted(st: &mut ClusterState, names: &[PartialName]) {
    let gone: HashSet<&PartialName> = names.iter().collect();
    st.remote.partials.retain(|p| !gone.contains(&p.name));
}

/// A listing found these objects of this safekeeper (`sk_id`): every one the control file does
/// not list is listed again, `InProgress` (the request that wrote it late may have siblings
/// still on their way; it may be the archive's end, and no version at or below it will be
/// uploaded; when superseded, GC collects it). Its size is the WAL bytes its name says it holds
/// (the listed size is the stored, compressed one). Returns the adopted names.
pub(super) fn adopt_listed(
    st: &mut ClusterState,
    sk_id: u64,
    listed: &[(PartialName, u64)],
) -> Vec<PartialName> {
    let mut adopted = Vec::new();
    for (name, _stored_size) in listed {
        if name.sk_id != sk_id || st.remote.partials.iter().any(|p| p.name == *name) {
            continue;
        }
        st.remote.partials.push(PartialObject {
            name: name.clone(),
            status: ObjectStatus::InProgress,
            size: name.bytes(),
            crc32c: 0,
            level: 0,
        });
        adopted.push(name.clone());
    }
    adopted
}

/// The end of the WAL the archive holds without a hole: the full segments below `backup_lsn`,
/// then the best `Uploaded` version of the segment that starts there. A partial of a later
/// segment does not count while the segment before it is not up in full (its tail is nowhere).
pub(super) fn remote_end(st: &ClusterState) -> Lsn {
    let segno = st.backup_lsn.segment_number(st.wal_segment_size);
    let probe = st
        .remote
        .partials
        .iter()
        .find(|p| p.status == ObjectStatus::Uploaded && p.name.segno == segno);
    probe
        .and_then(|p| best_uploaded(st, &p.name))
        .map_or(st.backup_lsn, |c| c.end.max(st.backup_lsn))
}

/// Which keys may still be written by a request this process sent or inherited, generic over
/// the clock so the model test can drive it.
///
/// A request may land after the client gave up on it (a timeout, a cancelled task, a killed
/// process: the server may have the whole request already). So a key is *quiet* — safe to
/// delete without it coming back — only when no request for it is running and `grace` has passed
/// since the last one that ended without a clear answer, or since this process started for the
/// keys a previous process may have been writing (those listed `InProgress` at start: a
/// `Deleting` or `Uploaded` entry's PUT completed).
#[derive(Clone, Debug)]
pub(super) struct RequestLedger<T> {
    /// Keys with a request running now (added at spawn, removed when the task is joined).
    running: HashSet<PartialName>,
    /// Keys whose last request ended without a clear answer: not quiet before this time.
    unsettled: HashMap<PartialName, T>,
    /// Keys a previous process may have been writing (`InProgress` at start): quiet only from
    /// `inherited_until` (start + grace) on.
    inherited: HashSet<PartialName>,
    inherited_until: T,
    /// Keys that were inherited or had a request end without a clear answer, until deleted:
    /// only their deletes need a listing after the grace (`audit.rs`); a key whose every request
    /// answered clearly cannot come back after its delete.
    doubtful: HashSet<PartialName>,
}

impl<T: Ord + Copy> RequestLedger<T> {
    /// A ledger for a process that found `st` at start: the PUTs of its `InProgress` entries may
    /// land until `inherited_until`.
    pub(super) fn new(st: Option<&ClusterState>, inherited_until: T) -> RequestLedger<T> {
        let inherited: HashSet<PartialName> = st
            .map(|s| {
                s.remote
                    .partials
                    .iter()
                    .filter(|p| p.status == ObjectStatus::InProgress)
                    .map(|p| p.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        RequestLedger {
            running: HashSet::new(),
            unsettled: HashMap::new(),
            doubtful: inherited.clone(),
            inherited,
            inherited_until,
        }
    }

    /// A request for `key` was spawned.
    pub(super) fn started(&mut self, key: &PartialName) {
        self.running.insert(key.clone());
    }

    /// The request for `key` ended; `settled` when its answer was clear (success, or a failure
    /// the storage reported before sending anything), else it may still land until `until`.
    pub(super) fn ended(&mut self, key: &PartialName, settled: bool, until: T) {
        self.running.remove(key);
        if !settled {
            self.doubtful.insert(key.clone());
            let e = self.unsettled.entry(key.clone()).or_insert(until);
            *e = (*e).max(until);
        }
    }

    /// True when no request for `key` can land any more (see the type's doc).
    pub(super) fn quiet(&self, key: &PartialName, now: T) -> bool {
        !self.running.contains(key)
            && (now >= self.inherited_until || !self.inherited.contains(key))
            && self.unsettled.get(key).is_none_or(|t| now >= *t)
    }

    /// True when a request for `key` may have landed unseen (see `doubtful`).
    pub(super) fn doubtful(&self, key: &PartialName) -> bool {
        self.doubtful.contains(key)
    }

    /// `key` was deleted: nothing more to remember about it.
    pub(super) fn forget(&mut self, key: &PartialName) {
        self.doubtful.remove(key);
        self.inherited.remove(key);
    }

    /// Forget keys that are quiet for good (bounded memory).
    pub(super) fn prune(&mut self, now: T) {
        self.unsettled.retain(|_, t| now < *t);
    }
}
