//! Partial versions from pieces: which versions a segment's pieces hold ([`versions_of`]) and a
//! version's WAL bytes from its pieces' objects ([`assemble`]).
//!
//! Invariants: a version exists only where pieces of one (timeline, segment, safekeeper, term)
//! chain from the segment start to its end, and its chain is the one with the fewest pieces
//! (`crate::chain::best_chain`); assembled bytes are returned only when every piece decodes
//! (`crate::object_format::decode`: header, lengths, crc32c) to exactly `[start, commit)` of its
//! name, so they are exactly `[segment start, commit)` of the version.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use control_file::Lsn;
use control_file::names::PartialName;

use super::{PartialObject, Piece};
use crate::chain::{Chain, GroupKey, best_chain};
use crate::object_format;

/// The partial versions the pieces of one segment (`pieces`, all of one timeline and segment)
/// hold, in key order of their names. Per (safekeeper, term): the highest end pieces chain to
/// from the segment start (its newest version), and every other end they chain to that is not
/// on that version's chain (an older version stored apart: an older base, or a chain through
/// pieces a merge replaced); each with the chain of the fewest pieces. Ends on the newest
/// version's chain are prefixes of it, not listed. `prefix`: the keys' `<cluster>/wal/`.
pub(crate) fn versions_of(pieces: &[Piece], prefix: &str, seg_size: u32) -> Vec<PartialObject> {
    let by_name: HashMap<&PartialName, &Piece> = pieces.iter().map(|p| (&p.name, p)).collect();
    let version = |chain: Chain<'_>| -> Option<PartialObject> {
        let chain_pieces: Vec<Piece> = chain
            .pieces
            .iter()
            .filter_map(|n| by_name.get(n).map(|p| (*p).clone()))
            .collect();
        let name = chain_pieces.last()?.name.as_version(seg_size);
        Some(PartialObject {
            key: format!("{prefix}{}", name.to_file_name(seg_size)),
            name,
            pieces: chain_pieces,
        })
    };
    let mut groups: BTreeMap<GroupKey, Vec<&PartialName>> = BTreeMap::new();
    for p in pieces {
        groups
            .entry(GroupKey::of(&p.name))
            .or_default()
            .push(&p.name);
    }
    let mut out = Vec::new();
    for (group, members) in groups {
        let seg_start = Lsn::from_segment(group.segno, seg_size);
        let Some(top) = best_chain(members.iter().copied(), seg_start) else {
            continue;
        };
        let on_top: BTreeSet<Lsn> = top.pieces.iter().map(|p| p.commit_lsn).collect();
        let others: BTreeSet<Lsn> = members
            .iter()
            .map(|n| n.commit_lsn)
            .filter(|end| !on_top.contains(end))
            .collect();
        for end in others {
            let below = members.iter().copied().filter(|n| n.commit_lsn <= end);
            if let Some(chain) = best_chain(below, seg_start).filter(|c| c.end == end) {
                out.extend(version(chain));
            }
        }
        out.extend(version(top));
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// The WAL bytes of `version` from its pieces' stored bytes (`objects[i]` is `version.pieces[i]`'s
/// object): each decoded ([`object_format::decode`]: crc32c and lengths), each holding exactly
/// `[start, commit)` of its name, concatenated. The error names the piece and the problem.
pub(crate) fn assemble(version: &PartialObject, objects: Vec<Bytes>) -> Result<Bytes, String> {
    if objects.len() != version.pieces.len() {
        return Err(format!(
            "{} objects for a chain of {} pieces",
            objects.len(),
            version.pieces.len()
        ));
    }
    let mut parts = Vec::with_capacity(objects.len());
    for (piece, object) in version.pieces.iter().zip(objects) {
        parts.push(decode_piece(piece, object)?);
    }
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    let mut out = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
    for part in parts {
        out.extend_from_slice(&part);
    }
    Ok(Bytes::from(out))
}

/// The WAL bytes of one piece: decoded, and exactly as long as its name says.
pub(crate) fn decode_piece(piece: &Piece, object: Bytes) -> Result<Bytes, String> {
    let decoded =
        object_format::decode(object, &piece.key).map_err(|e| format!("{}: {e}", piece.key))?;
    let expected = piece.name.bytes();
    if decoded.data.len() as u64 != expected {
        return Err(format!(
            "{}: holds {} bytes of WAL, but its name says [{}, {}) = {expected} bytes",
            piece.key,
            decoded.data.len(),
            piece.name.start_lsn,
            piece.name.commit_lsn
        ));
    }
    Ok(decoded.data)
}
