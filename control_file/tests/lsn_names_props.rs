//! Property tests of LSN arithmetic and WAL object names: round trips, ordering, boundaries.

use control_file::lsn::{Lsn, XLOG_BLCKSZ, is_valid_segment_size};
use control_file::names::{
    PartialName, WalObjectName, history_file_name, max_segno, parse_history_file_name,
    parse_segment_file_name, segment_file_name,
};
use proptest::prelude::*;

/// Every valid segment size: 1 MiB ..= 1 GiB, powers of two.
fn seg_size() -> impl Strategy<Value = u32> {
    (20u32..=30).prop_map(|shift| 1u32 << shift)
}

/// Segment numbers biased to the boundaries: 0, 1, the last segment, and anything in between.
fn segno(seg: u32) -> impl Strategy<Value = u64> {
    let max = max_segno(seg);
    prop_oneof![
        Just(0),
        Just(1),
        Just(max),
        Just(max - 1),
        0..=max,
        0u64..1024
    ]
}

fn seg_and_segno() -> impl Strategy<Value = (u32, u64)> {
    seg_size().prop_flat_map(|seg| (Just(seg), segno(seg)))
}

fn lsn() -> impl Strategy<Value = Lsn> {
    prop_oneof![
        Just(Lsn(0)),
        Just(Lsn::MAX),
        Just(Lsn(u64::from(u32::MAX))),
        any::<u64>().prop_map(Lsn)
    ]
}

/// A valid base piece name: commit LSN in (segment start, segment end].
fn partial_name() -> impl Strategy<Value = (u32, PartialName)> {
    seg_and_segno().prop_flat_map(|(seg, segno)| {
        // The very last segment ends at 2^64, which is not an LSN: its partials hold at most seg-1.
        let max_size = u64::from(seg).min(u64::MAX - Lsn::from_segment(segno, seg).0);
        let size = prop_oneof![Just(1u64), Just(max_size), 1..=max_size];
        (1u32..=u32::MAX, size, 1u64..=u64::MAX, 1u64..=u64::MAX).prop_map(
            move |(timeline, size, term, sk_id)| {
                let commit_lsn = Lsn::from_segment(segno, seg) + size;
                (
                    seg,
                    PartialName::base(timeline, segno, commit_lsn, term, sk_id, seg),
                )
            },
        )
    })
}

/// A valid increment piece name: a base name with a start LSN strictly between the segment start
/// and the commit LSN (so the commit offset is at least 2).
fn delta_name() -> impl Strategy<Value = (u32, PartialName)> {
    partial_name()
        .prop_filter("an increment needs 2 bytes of room", |(seg, p)| {
            p.commit_offset(*seg) >= 2
        })
        .prop_flat_map(|(seg, p)| {
            let end = p.commit_offset(seg);
            let start = prop_oneof![Just(1u64), Just(end - 1), 1..end];
            start.prop_map(move |start| {
                let start_lsn = p.segment_start(seg) + start;
                (
                    seg,
                    PartialName {
                        start_lsn,
                        ..p.clone()
                    },
                )
            })
        })
}

/// Either kind of piece name.
fn piece_name() -> impl Strategy<Value = (u32, PartialName)> {
    prop_oneof![partial_name(), delta_name()]
}

proptest! {
    #[test]
    fn lsn_display_parse_round_trip(lsn in lsn()) {
        let text = lsn.to_string();
        prop_assert_eq!(text.parse::<Lsn>(), Ok(lsn));
        prop_assert_eq!(text.to_lowercase().parse::<Lsn>(), Ok(lsn));
        let (hi, lo) = text.split_once('/').expect("slash");
        prop_assert_eq!(u64::from_str_radix(hi, 16).expect("hi"), lsn.0 >> 32);
        prop_assert_eq!(u64::from_str_radix(lo, 16).expect("lo"), lsn.0 & 0xFFFF_FFFF);
        prop_assert_eq!(text.to_uppercase(), text);
    }

    #[test]
    fn lsn_parse_never_panics(s in "\\PC{0,20}") {
        if let Ok(lsn) = s.parse::<Lsn>() {
            prop_assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }
    }

    #[test]
    fn segment_math(seg in seg_size(), lsn in lsn()) {
        let segno = lsn.segment_number(seg);
        let offset = lsn.segment_offset(seg);
        prop_assert!(offset < u64::from(seg));
        prop_assert_eq!(Lsn::from_segment(segno, seg) + offset, lsn);
        prop_assert_eq!(lsn.segment_start(seg), Lsn::from_segment(segno, seg));
        prop_assert!(lsn.segment_start(seg) <= lsn);
        prop_assert_eq!(lsn.is_segment_start(seg), offset == 0);
        prop_assert!(segno <= max_segno(seg));
        prop_assert!(lsn.block_offset() < XLOG_BLCKSZ);
    }

    #[test]
    fn segment_boundaries(( seg, segno) in seg_and_segno()) {
        let start = Lsn::from_segment(segno, seg);
        prop_assert!(start.is_segment_start(seg));
        prop_assert_eq!(start.segment_number(seg), segno);
        prop_assert_eq!(start.segment_offset(seg), 0);
        prop_assert_eq!(start.segment_start(seg), start);
        if segno > 0 {
            let before = Lsn(start.0 - 1);
            prop_assert_eq!(before.segment_number(seg), segno - 1);
            prop_assert_eq!(before.segment_offset(seg), u64::from(seg) - 1);
            prop_assert!(!before.is_segment_start(seg));
        }
        let last_byte = start + (u64::from(seg) - 1);
        prop_assert_eq!(last_byte.segment_number(seg), segno);
        prop_assert_eq!(start.checked_sub(start), Some(0));
        prop_assert_eq!(Lsn::checked_from_segment(max_segno(seg) + 1, seg), None);
    }

    #[test]
    fn lsn_order_matches_segment_order(seg in seg_size(), a in lsn(), b in lsn()) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(lo.segment_number(seg) <= hi.segment_number(seg));
        prop_assert_eq!(hi.checked_sub(lo), Some(hi.0 - lo.0));
        prop_assert_eq!(lo.checked_sub(hi).is_some(), lo == hi);
    }

    #[test]
    fn segment_name_round_trip((seg, segno) in seg_and_segno(), tli in 1u32..=u32::MAX) {
        let name = segment_file_name(tli, segno, seg);
        prop_assert_eq!(name.len(), 24);
        prop_assert!(name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')));
        prop_assert_eq!(parse_segment_file_name(&name, seg), Ok((tli, segno)));
        prop_assert_eq!(&name[..8], format!("{tli:08X}"));
        let kind = WalObjectName::parse(&name, seg).expect("classify");
        prop_assert_eq!(kind.to_file_name(seg), name);
    }

    /// Names sort like (timeline, segno): listing order is WAL order.
    #[test]
    fn segment_name_order(seg in seg_size(), a in (1u32..4, 0u64..100_000), b in (1u32..4, 0u64..100_000)) {
        let na = segment_file_name(a.0, a.1, seg);
        let nb = segment_file_name(b.0, b.1, seg);
        prop_assert_eq!(na.cmp(&nb), a.cmp(&b));
    }

    #[test]
    fn segment_name_parse_never_panics(seg in seg_size(), s in "[0-9A-Fa-f+\\-_ ]{0,30}") {
        if let Ok((tli, segno)) = parse_segment_file_name(&s, seg) {
            prop_assert_eq!(segment_file_name(tli, segno, seg), s);
        }
    }

    #[test]
    fn history_name_round_trip(tli in 1u32..=u32::MAX) {
        let name = history_file_name(tli);
        prop_assert_eq!(parse_history_file_name(&name), Ok(tli));
        prop_assert_eq!(name.len(), 16);
    }

    #[test]
    fn partial_name_round_trip((seg, p) in partial_name()) {
        let name = p.to_file_name(seg);
        prop_assert_eq!(PartialName::parse(&name, seg), Ok(p.clone()));
        prop_assert_eq!(WalObjectName::parse(&name, seg), Ok(WalObjectName::Partial(p.clone())));
        let size = p.commit_offset(seg);
        prop_assert!(size >= 1 && size <= u64::from(seg));
        prop_assert_eq!(Lsn::from_segment(p.segno, seg) + size, p.commit_lsn);
        prop_assert!(p.is_base(seg));
        prop_assert_eq!(p.bytes(), size);
        prop_assert_eq!(p.as_version(seg), p.clone());
        prop_assert!(name.starts_with(&p.segment_file_name(seg)));
        let suffix = format!("_sk{}.partial", p.sk_id);
        prop_assert!(name.ends_with(&suffix));
    }

    #[test]
    fn delta_name_round_trip((seg, d) in delta_name()) {
        let name = d.to_file_name(seg);
        prop_assert_eq!(PartialName::parse(&name, seg), Ok(d.clone()));
        prop_assert_eq!(WalObjectName::parse(&name, seg), Ok(WalObjectName::Partial(d.clone())));
        prop_assert!(!d.is_base(seg));
        prop_assert_eq!(d.start_lsn + d.bytes(), d.commit_lsn);
        prop_assert!(d.bytes() >= 1 && d.bytes() < d.commit_offset(seg));
        prop_assert_eq!(d.start_offset(seg) + d.bytes(), d.commit_offset(seg));
        let suffix = format!("_sk{}_{:016X}.delta", d.sk_id, d.start_lsn.0);
        prop_assert!(name.ends_with(&suffix), "{}", name);
        // The version it ends is named by the base spelling of the same segment, commit and term.
        let version = d.as_version(seg);
        prop_assert!(version.is_base(seg));
        prop_assert_eq!(version.commit_lsn, d.commit_lsn);
        let version_name = version.to_file_name(seg);
        prop_assert_eq!(&name[..version_name.len() - ".partial".len()], &version_name[..version_name.len() - ".partial".len()]);
    }

    /// An increment that would start at or before the segment start, or at or after its commit
    /// LSN, is rejected: a piece holds at least one byte and a base is spelled `.partial`.
    #[test]
    fn delta_name_rejects_bad_start((seg, d) in delta_name(), past in 0u64..=1 << 20) {
        let seg_start = d.segment_start(seg);
        let delta_of = |start_lsn: Lsn| {
            let stem = PartialName { start_lsn: seg_start, ..d.clone() }.to_file_name(seg);
            format!("{}_{:016X}.delta", stem.trim_end_matches(".partial"), start_lsn.0)
        };
        prop_assert!(PartialName::parse(&delta_of(d.start_lsn), seg).is_ok());
        prop_assert!(PartialName::parse(&delta_of(seg_start), seg).is_err());
        if let Some(below) = seg_start.0.checked_sub(1 + past) {
            prop_assert!(PartialName::parse(&delta_of(Lsn(below)), seg).is_err());
        }
        if let Some(at_or_after) = d.commit_lsn.checked_add(past) {
            prop_assert!(PartialName::parse(&delta_of(at_or_after), seg).is_err());
        }
    }

    /// A commit LSN exactly at the segment start (nothing partial) or past its end is rejected.
    #[test]
    fn partial_name_rejects_outside_segment((seg, p) in partial_name(), past in 1u64..=1 << 20) {
        let start = Lsn::from_segment(p.segno, seg);
        let at_start = PartialName { commit_lsn: start, ..p.clone() };
        prop_assert!(PartialName::parse(&at_start.to_file_name(seg), seg).is_err());
        if let Some(beyond) = start.checked_add(u64::from(seg) + past) {
            let beyond = PartialName { commit_lsn: beyond, ..p.clone() };
            prop_assert!(PartialName::parse(&beyond.to_file_name(seg), seg).is_err());
        }
        if start.0 > 0 {
            let below = PartialName { commit_lsn: Lsn(start.0 - 1), ..p };
            prop_assert!(PartialName::parse(&below.to_file_name(seg), seg).is_err());
        }
    }

    /// Any mutation of a valid name either fails to parse or is itself canonical: one object, one name.
    #[test]
    fn mutated_partial_names_are_canonical(
        (seg, p) in piece_name(),
        at in any::<prop::sample::Index>(),
        ch in prop::char::range('+', 'z'),
    ) {
        let mut chars: Vec<char> = p.to_file_name(seg).chars().collect();
        let i = at.index(chars.len());
        chars[i] = ch;
        let mutated: String = chars.into_iter().collect();
        if let Ok(q) = PartialName::parse(&mutated, seg) {
            prop_assert_eq!(q.to_file_name(seg), mutated);
        }
    }
}

#[test]
fn valid_segment_sizes_are_exactly_powers_of_two_from_1mib_to_1gib() {
    let valid: Vec<u32> = (0..32)
        .map(|s| 1u32 << s)
        .filter(|&s| is_valid_segment_size(s))
        .collect();
    assert_eq!(valid, (20..=30).map(|s| 1u32 << s).collect::<Vec<_>>());
    assert!(!is_valid_segment_size((16 << 20) + 1));
    assert!(!is_valid_segment_size(u32::MAX));
}

#[test]
fn boundary_examples() {
    let seg = 16 << 20;
    assert_eq!(segment_file_name(1, 0, seg), "000000010000000000000000");
    assert_eq!(
        segment_file_name(u32::MAX, max_segno(seg), seg),
        "FFFFFFFFFFFFFFFF000000FF"
    );
    assert_eq!(segment_file_name(1, 255, seg), "0000000100000000000000FF");
    assert_eq!(segment_file_name(1, 256, seg), "000000010000000100000000");
    assert_eq!(
        segment_file_name(1, 4095, 1 << 20),
        "000000010000000000000FFF"
    );
    assert_eq!(segment_file_name(1, 4, 1 << 30), "000000010000000100000000");
    assert_eq!(Lsn(0x16_B374_D848).segment_number(seg), 0x16B3);
    assert_eq!(Lsn(0x0100_0000).to_string(), "0/1000000");
    let last = PartialName::base(1, max_segno(seg), Lsn::MAX, 1, 1, seg);
    assert_eq!(
        PartialName::parse(&last.to_file_name(seg), seg),
        Ok(last.clone())
    );
    assert_eq!(last.commit_offset(seg), u64::from(seg) - 1);
    let last_delta = PartialName {
        start_lsn: Lsn(Lsn::MAX.0 - 1),
        ..last.clone()
    };
    assert_eq!(
        PartialName::parse(&last_delta.to_file_name(seg), seg),
        Ok(last_delta.clone())
    );
    assert_eq!(last_delta.bytes(), 1);
}
