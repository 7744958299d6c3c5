//! Chains of pieces: how a partial version of a segment is assembled from the objects that hold
//! it, and which piece the writer uploads next so that chains stay short and each WAL byte is sent
//! a bounded number of times.
//!
//! A *piece* is one object of one safekeeper, one term, one segment, holding the WAL
//! `[start_lsn, commit_lsn)` of its name (`PartialName`): a *base* starts at the segment start, an
//! *increment* inside it. A term never rewrites the WAL it holds, so all pieces of one (timeline,
//! segment, safekeeper, term) agree where they overlap, and the *version* ending at `E` exists
//! exactly when pieces chain from the segment start to `E`.
//!
//! Owns two pure rules, used by the writer (`cluster::manager`) and every reader (`archive`):
//! - [`best_chain`]: among a group's pieces, the highest reachable end and, for it, the chain with
//!   the fewest pieces (deterministic: the same pieces give the same chain whatever their order);
//! - [`next_start`]: where the writer's next piece starts: the chain's end (an increment) while
//!   the chain has room, otherwise the start of a run of low-level tail pieces that the new
//!   piece replaces (a merge, re-sending those bytes once, one level up).
//!
//! Invariants:
//! - A chain never has more than [`MAX_CHAIN`] pieces, so restoring a segment takes at most that
//!   many GETs whatever the write rate and however long the segment took to fill.
//! - Merges are tiered by level (the merge count, or the size class for large pieces): a merged
//!   piece is one level above everything it replaces, so a byte is re-sent at most once per
//!   level, 1-3 times in practice (the simulations in `chain/tests.rs` print the figures).

use std::collections::{BTreeMap, HashMap};

use control_file::Lsn;
use control_file::names::PartialName;

#[cfg(test)]
mod tests;

/// Most pieces in a chain: restore needs this many GETs at most (plus one LIST).
pub(crate) const MAX_CHAIN: usize = 19;
/// Size classes grow by this factor.
pub(crate) const LEVEL_FACTOR: u64 = 4;
/// Pieces below `LEVEL_UNIT * LEVEL_FACTOR` bytes are class 0.
pub(crate) const LEVEL_UNIT: u64 = 8 << 10;

/// The size class of a piece holding `bytes` of WAL.
pub(crate) fn level(bytes: u64) -> u32 {
    let mut class = 0;
    let mut cap = LEVEL_UNIT * LEVEL_FACTOR;
    while bytes >= cap {
        class += 1;
        cap = cap.saturating_mul(LEVEL_FACTOR);
    }
    class
}

/// The group a piece belongs to: pieces of one group chain with each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GroupKey {
    pub timeline: u32,
    pub segno: u64,
    pub sk_id: u64,
    pub term: u64,
}

impl GroupKey {
    pub(crate) fn of(p: &PartialName) -> GroupKey {
        GroupKey {
            timeline: p.timeline,
            segno: p.segno,
            sk_id: p.sk_id,
            term: p.term,
        }
    }
}

/// A version that exists: its end and the pieces (in WAL order) that hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chain<'a> {
    pub end: Lsn,
    pub pieces: Vec<&'a PartialName>,
}

/// The highest end reachable from `seg_start` through `pieces` (all of one group), with the
/// fewest pieces; `None` when no piece starts at the segment start. Ties between chains of equal
/// length go to the one whose pieces start earliest (lexicographically), so the result does not
/// depend on the input order.
pub(crate) fn best_chain<'a>(
    pieces: impl IntoIterator<Item = &'a PartialName>,
    seg_start: Lsn,
) -> Option<Chain<'a>> {
    let mut by_start: BTreeMap<Lsn, Vec<&'a PartialName>> = BTreeMap::new();
    for p in pieces {
        if p.commit_lsn > p.start_lsn {
            by_start.entry(p.start_lsn).or_default().push(p);
        }
    }
    for v in by_start.values_mut() {
        v.sort_by_key(|p| std::cmp::Reverse(p.commit_lsn));
        v.dedup_by_key(|p| p.commit_lsn);
    }
    // Breadth-first over positions: the first time a position is reached is with the fewest
    // pieces; positions are visited in LSN order within a depth, so ties resolve the same way.
    let mut reached: HashMap<Lsn, Option<&'a PartialName>> = HashMap::new();
    reached.insert(seg_start, None);
    let mut frontier = vec![seg_start];
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for pos in frontier {
            for p in by_start.get(&pos).into_iter().flatten() {
                if let std::collections::hash_map::Entry::Vacant(e) = reached.entry(p.commit_lsn) {
                    e.insert(Some(*p));
                    next.push(p.commit_lsn);
                }
            }
        }
        next.sort();
        frontier = next;
    }
    let end = *reached.keys().max()?;
    if end == seg_start {
        return None;
    }
    let mut chain = Vec::new();
    let mut pos = end;
    while let Some(Some(p)) = reached.get(&pos) {
        chain.push(*p);
        pos = p.start_lsn;
    }
    chain.reverse();
    Some(Chain { end, pieces: chain })
}

/// Every group's best chain, keyed by group; groups whose pieces do not reach from the segment
/// start have none. `seg_size` gives each segment's start. (The readers keep every version of a
/// group, `archive/versions.rs`; the model test uses this.)
#[cfg(test)]
pub(crate) fn best_chains<'a>(
    pieces: impl IntoIterator<Item = &'a PartialName>,
    seg_size: u32,
) -> BTreeMap<GroupKey, Chain<'a>> {
    let mut groups: BTreeMap<GroupKey, Vec<&'a PartialName>> = BTreeMap::new();
    for p in pieces {
        groups.entry(GroupKey::of(p)).or_default().push(p);
    }
    groups
        .into_iter()
        .filter_map(|(k, ps)| {
            let start = Lsn::from_segment(k.segno, seg_size);
            best_chain(ps, start).map(|c| (k, c))
        })
        .collect()
}

/// One piece of the chain the writer extends, with its merge level: how many times the bytes in
/// it were merged (0 for an increment or a base), as the control file records it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tiered<'a> {
    pub piece: &'a PartialName,
    pub level: u8,
}

impl Tiered<'_> {
    /// The level a merge decision uses: the recorded merge level, or the size class when that is
    /// higher (so a large piece, e.g. a burst uploaded in one go, is not merged with small ones
    /// while smaller runs can still be).
    fn effective(&self) -> u32 {
        let bytes = self
            .piece
            .commit_lsn
            .0
            .saturating_sub(self.piece.start_lsn.0);
        u32::from(self.level).max(level(bytes))
    }
}

/// Where the writer's next piece starts and its merge level, given the chain it extends
/// (`pieces`, in WAL order, non-empty, ending where the new bytes begin) and `max` pieces allowed
/// (normally [`MAX_CHAIN`]). While the chain has room: at its end, level 0 (an increment). When
/// it is full: at the start of the tail run of pieces whose effective level is `<= l`, for the
/// smallest `l` whose run has at least two pieces; the new piece replaces the run and gets level
/// `l + 1`. Every merge thus lifts the bytes it re-sends to a level above all of theirs, so a
/// byte is re-sent at most once per level, and levels grow like a counter in base `max`
/// (a chain of 19 reaches level 4 only after thousands of uploads into one segment). The run may
/// reach the first piece: then the new piece is a base.
pub(crate) fn next_start(pieces: &[Tiered<'_>], max: usize) -> (Lsn, u8) {
    let Some(last) = pieces.last() else {
        return (Lsn::INVALID, 0);
    };
    if pieces.len() < max {
        return (last.piece.commit_lsn, 0);
    }
    let levels: Vec<u32> = pieces.iter().map(Tiered::effective).collect();
    let mut classes = levels.clone();
    classes.sort_unstable();
    classes.dedup();
    for l in classes {
        let run = levels.iter().rev().take_while(|x| **x <= l).count();
        if run >= 2 {
            let start = pieces[pieces.len() - run].piece.start_lsn;
            return (start, u8::try_from(l + 1).unwrap_or(u8::MAX));
        }
    }
    // A chain of one piece with max <= 1: replace it.
    (pieces[0].piece.start_lsn, 0)
}
