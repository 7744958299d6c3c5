//! The bookkeeping of partial objects, as pure functions of the control file's state and of the
//! requests that may still reach the storage: which version may be uploaded, what an upload's
//! completion supersedes, what GC may delete, and what a listing of the remote teaches. The
//! manager (`partial.rs`, `gc.rs`, `full.rs`, `audit.rs`) only calls these; the model test
//! (`bookkeeping/model.rs`) drives them through every interleaving of uploads, lost responses,
//! late requests, GC and crashes.
//!
//! Versions. All partial entries of a control file are this safekeeper's own. Two versions of one
//! segment and timeline are ordered by `(term, commit LSN)`: terms order one safekeeper's own
//! history (a newer term's WAL replaces an older one's from its start on), and within a term a
//! higher commit LSN holds more of the same WAL. A version is *superseded* when the segment's
//! full object is recorded or a higher version of the same segment is `Uploaded`.
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
//! - (c) A partial is never uploaded at or below a version that may exist: [`may_upload`] admits
//!   only a version above every listed one (or a retry of the listed best, same name and bytes).

use std::collections::{HashMap, HashSet};

use control_file::names::PartialName;
use control_file::{ClusterState, Lsn, ObjectStatus, PartialObject};

#[cfg(test)]
mod model;

/// The order of one safekeeper's versions of a segment (see the module doc).
pub(super) fn version(name: &PartialName) -> (u64, Lsn) {
    (name.term, name.commit_lsn)
}

fn same_segment(a: &PartialName, b: &PartialName) -> bool {
    a.timeline == b.timeline && a.segno == b.segno
}

/// True when the segment's full object is recorded or a higher version is `Uploaded`.
pub(super) fn superseded(st: &ClusterState, name: &PartialName) -> bool {
    st.remote.contains_full_segment(name.timeline, name.segno)
        || st.remote.partials.iter().any(|p| {
            p.status == ObjectStatus::Uploaded
                && same_segment(&p.name, name)
                && version(&p.name) > version(name)
        })
}

/// What to do with a candidate version (invariant (c)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UploadVerdict {
    /// Above every listed version: upload it.
    Upload,
    /// The listed best, `InProgress` (its PUT failed or was cut off): upload the same bytes again.
    Retry,
    /// Already `Uploaded`: nothing to do.
    AlreadyUploaded,
    /// At or below a listed version, or the full segment is recorded: never.
    Below,
}

/// Whether version `name` may be uploaded now (invariant (c)).
pub(super) fn may_upload(st: &ClusterState, name: &PartialName) -> UploadVerdict {
    if st.remote.contains_full_segment(name.timeline, name.segno) {
        return UploadVerdict::Below;
    }
    let best = st
        .remote
        .partials
        .iter()
        .filter(|p| same_segment(&p.name, name))
        .max_by_key(|p| version(&p.name));
    match best {
        None => UploadVerdict::Upload,
        Some(b) if version(name) > version(&b.name) => UploadVerdict::Upload,
        Some(b) if b.name == *name => match b.status {
            ObjectStatus::Uploaded => UploadVerdict::AlreadyUploaded,
            ObjectStatus::InProgress => UploadVerdict::Retry,
            ObjectStatus::Deleting => UploadVerdict::Below,
        },
        Some(_) => UploadVerdict::Below,
    }
}

/// Step 2 of the partial protocol: `entry` is listed `InProgress` before its PUT.
pub(super) fn record_intent(st: &mut ClusterState, entry: PartialObject) {
    st.remote.partials.retain(|p| p.name != entry.name);
    st.remote.partials.push(entry);
}

/// Step 3: the PUT of `name` succeeded. It becomes `Uploaded` — or `Deleting` when something
/// superseded it meanwhile (the full segment was recorded while it was in flight) — and every
/// lower `Uploaded` version of the segment becomes `Deleting`. Lower `InProgress` versions stay
/// `InProgress` (superseded, so deletable once quiet): `Deleting` always means "its PUT
/// completed", so no request of a previous process can still write it ([`RequestLedger::new`]).
pub(super) fn record_uploaded(st: &mut ClusterState, name: &PartialName) {
    let status = if superseded(st, name) {
        ObjectStatus::Deleting
    } else {
        ObjectStatus::Uploaded
    };
    for p in st.remote.partials.iter_mut() {
        if p.name == *name {
            p.status = status;
        } else if status == ObjectStatus::Uploaded
            && p.status == ObjectStatus::Uploaded
            && same_segment(&p.name, name)
            && version(&p.name) < version(name)
        {
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
/// key can still land (`ledger`). An `InProgress` best version is never deleted: its object may
/// be the archive's end (invariant (b)); it stays until a higher version is `Uploaded`.
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
/// uploaded; when superseded, GC collects it). Returns the adopted names.
pub(super) fn adopt_listed(
    st: &mut ClusterState,
    sk_id: u64,
    listed: &[(PartialName, u64)],
) -> Vec<PartialName> {
    let mut adopted = Vec::new();
    for (name, size) in listed {
        if name.sk_id != sk_id || st.remote.partials.iter().any(|p| p.name == *name) {
            continue;
        }
        st.remote.partials.push(PartialObject {
            name: name.clone(),
            status: ObjectStatus::InProgress,
            size: *size,
            crc32c: 0,
        });
        adopted.push(name.clone());
    }
    adopted
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
}

impl<T: Ord + Copy> RequestLedger<T> {
    /// A ledger for a process that found `st` at start: the PUTs of its `InProgress` entries may
    /// land until `inherited_until`.
    pub(super) fn new(st: Option<&ClusterState>, inherited_until: T) -> RequestLedger<T> {
        let inherited = st
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

    /// Forget keys that are quiet for good (bounded memory).
    pub(super) fn prune(&mut self, now: T) {
        self.unsettled.retain(|_, t| now < *t);
    }
}
