//! Chains: assembly from any set of pieces, and the writer policy's bounds (chain length, bytes
//! re-sent) simulated over whole segments at the rates of `bench/upload_cost`.

use control_file::Lsn;
use control_file::names::PartialName;
use proptest::prelude::*;

use super::*;

const SEG: u32 = 16 << 20;

fn piece(start: u64, end: u64) -> PartialName {
    PartialName {
        timeline: 1,
        segno: 0,
        commit_lsn: Lsn(end),
        term: 1,
        sk_id: 1,
        start_lsn: Lsn(start),
    }
}

#[test]
fn chain_needs_a_base() {
    let ps = [piece(100, 200), piece(200, 300)];
    assert_eq!(best_chain(&ps, Lsn(0)), None);
}

#[test]
fn fewest_pieces_win_and_order_does_not_matter() {
    let ps = vec![
        piece(0, 100),
        piece(100, 200),
        piece(200, 300),
        piece(0, 200),
        piece(300, 350),
        piece(100, 300),
    ];
    let c = best_chain(&ps, Lsn(0)).expect("chain");
    assert_eq!(c.end, Lsn(350));
    assert_eq!(c.pieces.len(), 3);
    // Equal length (3): [0,100)+[100,300)+[300,350) and [0,200)+[200,300)+[300,350); the
    // earliest-starting pieces first, deterministically.
    let mut rev = ps.clone();
    rev.reverse();
    let c2 = best_chain(&rev, Lsn(0)).expect("chain");
    assert_eq!(c.pieces, c2.pieces);
}

#[test]
fn gaps_end_the_chain() {
    let ps = [piece(0, 100), piece(150, 400)];
    let c = best_chain(&ps, Lsn(0)).expect("chain");
    assert_eq!(c.end, Lsn(100));
}

#[test]
fn groups_are_kept_apart() {
    let mut other_term = piece(100, 500);
    other_term.term = 2;
    let mut other_sk = piece(100, 600);
    other_sk.sk_id = 2;
    let ps = [piece(0, 100), other_term, other_sk];
    let chains = best_chains(&ps, SEG);
    assert_eq!(chains.len(), 1);
    assert_eq!(chains.values().next().map(|c| c.end), Some(Lsn(100)));
}

/// The writer over one segment, `sizes(tick)` new bytes per tick, from `first` bytes already in
/// one base. Returns (bytes sent / segment size, longest chain, ticks).
fn simulate(first: u64, sizes: impl Fn(u64) -> u64) -> (f64, usize, u64) {
    let mut chain: Vec<(PartialName, u8)> = vec![(piece(0, first), 0)];
    let (mut sent, mut longest, mut tick) = (first, 1, 0);
    let mut end = first;
    while end < u64::from(SEG) {
        let add = sizes(tick).min(u64::from(SEG) - end).max(1);
        let tiered: Vec<Tiered<'_>> = chain
            .iter()
            .map(|(p, l)| Tiered {
                piece: p,
                level: *l,
            })
            .collect();
        let (start, lvl) = next_start(&tiered, MAX_CHAIN);
        let start = start.0;
        chain.retain(|(p, _)| p.commit_lsn.0 <= start);
        chain.push((piece(start, end + add), lvl));
        sent += end + add - start;
        end += add;
        longest = longest.max(chain.len());
        let check = best_chain(chain.iter().map(|(p, _)| p), Lsn(0)).expect("chain");
        assert_eq!(check.end.0, end);
        assert_eq!(check.pieces.len(), chain.len());
        tick += 1;
    }
    (sent as f64 / f64::from(SEG), longest, tick)
}

#[test]
fn policy_bounds_at_the_bench_rates() {
    for (what, first, rate) in [
        ("600 B per tick (100 ms ticks at 6 KB/s)", 600, 600),
        ("5 KB/s from the segment start", 5_000, 5_000),
        ("5 KB/s after an 8 MiB burst", 8 << 20, 5_000),
        ("81 KB/s (pgbench -R 5)", 81_000, 81_000),
        ("1.4 MB/s (pgbench -R 200)", 1_400_000, 1_400_000),
        ("2 MB/s", 2_000_000, 2_000_000),
    ] {
        let (amp, longest, ticks) = simulate(first, |_| rate);
        eprintln!("{what}: {ticks} ticks, sent {amp:.2}x the segment, longest chain {longest}");
        assert!(longest <= MAX_CHAIN, "{what}");
        assert!(amp <= 5.0, "{what}: {amp}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever the rate pattern, the chain stays within bounds and no byte is re-sent more than
    /// once per size class (about 7 classes in 16 MiB).
    #[test]
    fn policy_bounds_for_any_rates(sizes in proptest::collection::vec(1u64..400_000, 1..64), first in 1u64..100_000) {
        let (amp, longest, _) = simulate(first, |t| sizes[(t as usize) % sizes.len()]);
        prop_assert!(longest <= MAX_CHAIN);
        prop_assert!(amp <= 8.0, "amplification {}", amp);
    }
}
