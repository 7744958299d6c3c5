//! A model of the manager's partial bookkeeping against a storage whose requests land, answer,
//! lose their answers, arrive late or never, and a process that crashes between any two steps.
//! Proptest drives random interleavings; after every step the invariants of `bookkeeping.rs`
//! are checked against what the storage really holds:
//! - (a) every partial object that exists, and every PUT that may still land, is listed in the
//!   durable control file; every full object is implied by the recorded flush LSN;
//! - (b) the archive's end (what restore reaches: full segments, and partial versions whose pieces
//!   chain from the segment start, `chain.rs`) never decreases, and no chain a restore would use
//!   is longer than the writer's bound;
//! - (c) no PUT starts at or below a version that exists (except a retry of the same name), and
//!   none for a key that a delete may still hit;
//! - an `Uploaded` entry always exists remotely;
//! - after the storage settles, exactly the pieces of the current version are left and every
//!   listed entry exists.
//!
//! The chain bound is [`MODEL_CHAIN`] (3) instead of the service's 19, and a segment takes 16
//! writes, so increments, merges and new bases all happen within a hundred steps.
//!
//! The model replays the manager's orchestration (`partial.rs`, `gc.rs`, `full.rs`, `audit.rs`)
//! step by step with the same bookkeeping functions; time is a counter, and a request abandoned
//! by its client may land until `GRACE` ticks later (the bound `LATE_REQUEST_GRACE` stands for).

use std::collections::BTreeMap;

use control_file::names::PartialName;
use control_file::{ClusterState, Lsn, ObjectStatus, PartialObject};
use proptest::prelude::*;

use super::*;

#[cfg(test)]
mod cases;

const SEG: u32 = 1 << 20;
const STEP: u64 = 64 << 10;
const MODEL_CHAIN: usize = 3;
const GRACE: u64 = 10;
const SK: u64 = 1;

/// A remote object: a partial piece (segment, commit, term, start) or a full segment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Partial(u64, Lsn, u64, Lsn),
    Full(u64),
}

fn key(n: &PartialName) -> Key {
    Key::Partial(n.segno, n.commit_lsn, n.term, n.start_lsn)
}

fn piece_of(k: &Key) -> Option<PartialName> {
    match k {
        Key::Partial(segno, commit, term, start) => Some(PartialName {
            timeline: 1,
            segno: *segno,
            commit_lsn: *commit,
            term: *term,
            sk_id: SK,
            start_lsn: *start,
        }),
        Key::Full(_) => None,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(PartialName),
    Delete(Vec<PartialName>),
}

#[derive(Clone, Debug)]
struct Request {
    op: Op,
    landed: bool,
    /// The current process waits for its answer.
    awaited: bool,
    /// Abandoned: may land until this time, never after.
    dead_after: Option<u64>,
}

/// What a manager process holds in memory; lost at a crash.
struct Proc {
    ledger: RequestLedger<u64>,
    live: bool,
    gate: bool,
    commit: Lsn,
    partial: Option<usize>,
    gc: Option<usize>,
    listing: Option<Vec<(PartialName, u64)>>,
    /// Full segments uploaded and not yet recorded.
    full_done: Vec<u64>,
}

struct World {
    now: u64,
    wal_end: Lsn,
    /// The control file (every update is durable at once, as `ControlStore::update` is).
    st: ClusterState,
    remote: BTreeMap<Key, ()>,
    requests: Vec<Request>,
    p: Proc,
    end_seen: Lsn,
    trace: Vec<String>,
}

#[derive(Clone, Debug)]
enum Action {
    Write,
    Follow,
    /// The manager is told it may upload while its LSNs are still the recorded, lagging ones
    /// (what the old code did after a restart): invariant (c) must hold even then.
    LiveStale,
    Persist,
    StartPartial,
    Land(usize),
    Respond(usize, bool),
    StartGc,
    FullUpload,
    FullRecord,
    AuditList,
    AuditFinish,
    Tick(u64),
    Crash,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => Just(Action::Write),
        2 => Just(Action::Follow),
        2 => Just(Action::LiveStale),
        2 => Just(Action::Persist),
        3 => Just(Action::StartPartial),
        3 => (0usize..8).prop_map(Action::Land),
        3 => ((0usize..8), any::<bool>()).prop_map(|(i, ok)| Action::Respond(i, ok)),
        2 => Just(Action::StartGc),
        1 => Just(Action::FullUpload),
        1 => Just(Action::FullRecord),
        2 => Just(Action::AuditList),
        2 => Just(Action::AuditFinish),
        2 => (1u64..=GRACE + 2).prop_map(Action::Tick),
        1 => Just(Action::Crash),
    ]
}

impl World {
    fn new() -> World {
        let start = Lsn::from_segment(1, SEG);
        let st = ClusterState::new(SK, "c", 7, SEG, 16, 1, start);
        let mut w = World {
            now: 0,
            wal_end: start,
            p: Proc::start(&st, 0),
            st,
            remote: BTreeMap::new(),
            requests: Vec::new(),
            end_seen: Lsn::INVALID,
            trace: Vec::new(),
        };
        w.p.gate = false;
        w
    }

    /// The i-th request still in play (not landed-and-answered, not dead), if any.
    fn pick(&self, i: usize) -> Option<usize> {
        let open: Vec<usize> = (0..self.requests.len())
            .filter(|&r| {
                let q = &self.requests[r];
                (q.awaited || !q.landed) && q.dead_after.is_none_or(|d| self.now <= d)
            })
            .collect();
        (!open.is_empty()).then(|| open[i % open.len()])
    }

    fn land(&mut self, r: usize) {
        if self.requests[r].landed {
            return;
        }
        self.requests[r].landed = true;
        match self.requests[r].op.clone() {
            Op::Put(n) => {
                self.remote.insert(key(&n), ());
            }
            Op::Delete(names) => {
                for n in names {
                    self.remote.remove(&key(&n));
                }
            }
        }
    }

    fn step(&mut self, a: &Action) {
        self.trace.push(format!("t={} {a:?}", self.now));
        match *a {
            Action::Write => self.wal_end = Lsn(self.wal_end.0 + STEP),
            Action::Follow => {
                self.p.commit = self.p.commit.max(self.wal_end);
                self.p.live = true;
            }
            Action::LiveStale => self.p.live = true,
            Action::Persist => {
                self.st.flush_lsn = self.st.flush_lsn.max(self.p.commit);
                self.st.commit_lsn = self.st.commit_lsn.max(self.p.commit);
            }
            Action::StartPartial => self.start_partial(),
            Action::Land(i) => {
                if let Some(r) = self.pick(i) {
                    self.land(r);
                }
            }
            Action::Respond(i, ok) => {
                if let Some(r) = self.pick(i) {
                    if self.requests[r].awaited {
                        self.respond(r, ok);
                    }
                }
            }
            Action::StartGc => self.start_gc(),
            Action::FullUpload => self.full_upload(),
            Action::FullRecord => self.full_record(),
            Action::AuditList => {
                let listed = self
                    .remote
                    .keys()
                    .filter_map(|k| piece_of(k).map(|n| (n, 0)))
                    .collect();
                self.p.listing = Some(listed);
            }
            Action::AuditFinish => {
                if let Some(listed) = self.p.listing.take() {
                    adopt_listed(&mut self.st, SK, &listed);
                    self.p.gate = false;
                }
            }
            Action::Tick(d) => self.now += d,
            Action::Crash => {
                for q in self.requests.iter_mut().filter(|q| q.awaited) {
                    q.awaited = false;
                    q.dead_after = Some(self.now + GRACE);
                }
                self.p = Proc::start(&self.st, self.now);
            }
        }
        self.check();
    }

    /// `partial.rs::start_partial`.
    fn start_partial(&mut self) {
        if self.p.partial.is_some() || !self.p.live || self.p.gate {
            return;
        }
        let commit = self.p.commit;
        if commit.is_segment_start(SEG) {
            return;
        }
        let segno = commit.segment_number(SEG);
        let base = PartialName {
            timeline: 1,
            segno,
            commit_lsn: commit,
            term: self.st.term_at(Lsn(commit.0 - 1)),
            sk_id: SK,
            start_lsn: Lsn::from_segment(segno, SEG),
        };
        let Some((name, level)) = plan_piece(&self.st, &base, MODEL_CHAIN) else {
            return;
        };
        // (c): never at or below a version that exists, unless the very same name.
        for k in self.remote.keys() {
            if let Key::Partial(segno, c, t, _) = k {
                assert!(
                    *segno != name.segno
                        || (name.term, name.commit_lsn) > (*t, *c)
                        || key(&name) == *k,
                    "(c) PUT of {name:?} below existing {k:?}\n{}",
                    self.trace.join("\n")
                );
            }
        }
        // No delete that may still land targets this key.
        for q in &self.requests {
            if let Op::Delete(names) = &q.op {
                let may_land = !q.landed && q.dead_after.is_none_or(|d| self.now <= d);
                assert!(
                    !(may_land && names.contains(&name)),
                    "PUT of {name:?} while a delete of it may land\n{}",
                    self.trace.join("\n")
                );
            }
        }
        record_intent(
            &mut self.st,
            PartialObject {
                name: name.clone(),
                status: ObjectStatus::InProgress,
                size: 0,
                crc32c: 0,
                level,
            },
        );
        self.p.ledger.started(&name);
        self.p.partial = Some(self.requests.len());
        self.requests.push(Request {
            op: Op::Put(name),
            landed: false,
            awaited: true,
            dead_after: None,
        });
    }

    /// The process gets an answer: `finish_partial` / `finish_gc`.
    fn respond(&mut self, r: usize, ok: bool) {
        if ok {
            self.land(r);
        }
        let q = &mut self.requests[r];
        q.awaited = false;
        if !ok {
            // The client gave up: the request may still land within the grace.
            q.dead_after = Some(self.now + GRACE);
        }
        match q.op.clone() {
            Op::Put(name) => {
                self.p.partial = None;
                self.p.ledger.ended(&name, ok, self.now + GRACE);
                if ok {
                    record_uploaded(&mut self.st, &name);
                }
            }
            Op::Delete(names) => {
                self.p.gc = None;
                if ok {
                    record_deleted(&mut self.st, &names);
                }
            }
        }
    }

    /// `gc.rs::start_gc`.
    fn start_gc(&mut self) {
        if self.p.gc.is_some() {
            return;
        }
        self.p.ledger.prune(self.now);
        let names = deletable(&self.st, &self.p.ledger, self.now);
        if names.is_empty() {
            return;
        }
        self.p.gc = Some(self.requests.len());
        self.requests.push(Request {
            op: Op::Delete(names),
            landed: false,
            awaited: true,
            dead_after: None,
        });
    }

    /// `full.rs`: the next complete segment goes up after the flush LSN past it is recorded
    /// (the upload itself is modelled as landing at once; its races are the partials').
    fn full_upload(&mut self) {
        let complete = self.p.commit.segment_number(SEG);
        let next = self.st.backup_lsn.segment_number(SEG) + self.p.full_done.len() as u64;
        if next < complete {
            self.st.flush_lsn = self.st.flush_lsn.max(Lsn::from_segment(next + 1, SEG));
            self.remote.insert(Key::Full(next), ());
            self.p.full_done.push(next);
        }
    }

    /// `full.rs::advance_backup`.
    fn full_record(&mut self) {
        for segno in std::mem::take(&mut self.p.full_done) {
            self.st.remote.add_full_segment(1, segno);
            self.st.backup_lsn = self.st.backup_lsn.max(Lsn::from_segment(segno + 1, SEG));
        }
        record_full_segments(&mut self.st);
    }

    /// What a restore reaches, and the longest chain it would use.
    fn end(&self) -> (Lsn, usize) {
        let pieces: Vec<PartialName> = self.remote.keys().filter_map(piece_of).collect();
        let chains = crate::chain::best_chains(&pieces, SEG);
        let full = self.remote.keys().filter_map(|k| match k {
            Key::Full(s) => Some(Lsn::from_segment(s + 1, SEG)),
            Key::Partial(..) => None,
        });
        let end = chains.values().map(|c| c.end).chain(full).max();
        let longest = chains.values().map(|c| c.pieces.len()).max().unwrap_or(0);
        (end.unwrap_or(Lsn::INVALID), longest)
    }

    fn check(&mut self) {
        let t = || self.trace.join("\n");
        let listed = |k: &Key| self.st.remote.partials.iter().any(|p| key(&p.name) == *k);
        for k in self.remote.keys() {
            match k {
                Key::Partial(..) => assert!(listed(k), "(a) {k:?} exists, not listed\n{}", t()),
                Key::Full(s) => assert!(
                    self.st.flush_lsn >= Lsn::from_segment(s + 1, SEG),
                    "(a) full {s} not implied\n{}",
                    t()
                ),
            }
        }
        for q in &self.requests {
            if let Op::Put(n) = &q.op {
                let may_land = !q.landed && q.dead_after.is_none_or(|d| self.now <= d);
                assert!(
                    !may_land || listed(&key(n)),
                    "(a) pending PUT {n:?} not listed\n{}",
                    t()
                );
            }
        }
        for p in &self.st.remote.partials {
            if p.status == ObjectStatus::Uploaded {
                assert!(
                    self.remote.contains_key(&key(&p.name)),
                    "Uploaded {:?} gone\n{}",
                    p.name,
                    t()
                );
            }
        }
        let (end, longest) = self.end();
        assert!(
            longest <= MODEL_CHAIN,
            "a restore would need {longest} pieces\n{}",
            t()
        );
        assert!(
            end >= self.end_seen,
            "(b) archive end {end} < {}\n{}",
            self.end_seen,
            t()
        );
        self.end_seen = end;
    }

    /// Faults stop: abandoned requests die, every answer arrives, everything is uploaded and
    /// collected. Then exactly the current version is left, and it is what the list says.
    fn settle(&mut self) {
        let all = [
            Action::Tick(GRACE + 1),
            Action::Follow,
            Action::AuditList,
            Action::AuditFinish,
        ];
        for a in &all {
            self.step(a);
        }
        for _ in 0..64 {
            for r in 0..self.requests.len() {
                if self.requests[r].awaited {
                    self.respond(r, true);
                    self.check();
                }
            }
            self.step(&Action::FullUpload);
        }
        self.step(&Action::FullRecord);
        for _ in 0..3 {
            self.step(&Action::StartPartial);
            self.step(&Action::Tick(GRACE + 1));
            self.step(&Action::StartGc);
            for r in 0..self.requests.len() {
                if self.requests[r].awaited {
                    self.respond(r, true);
                    self.check();
                }
            }
        }
        let partials: Vec<PartialName> = self.remote.keys().filter_map(piece_of).collect();
        let t = self.trace.join("\n");
        if self.p.commit.is_segment_start(SEG) {
            assert!(partials.is_empty(), "left {partials:?}\n{t}");
        } else {
            // Exactly the pieces of the current version: one chain, ending at the commit LSN.
            let chains = crate::chain::best_chains(&partials, SEG);
            assert_eq!(chains.len(), 1, "left {partials:?}\n{t}");
            let chain = chains.values().next().expect("one chain");
            assert_eq!(chain.end, self.p.commit, "left {partials:?}\n{t}");
            assert_eq!(
                chain.pieces.len(),
                partials.len(),
                "left over {partials:?}\n{t}"
            );
            let term = self.st.term_at(Lsn(self.p.commit.0 - 1));
            assert!(chain.pieces.iter().all(|p| p.term == term), "{t}");
        }
        assert_eq!(
            self.st.remote.partials.len(),
            partials.len(),
            "list vs remote\n{t}"
        );
    }
}

impl Proc {
    /// A process starting on the control file `st` at `now` (`Manager::new`).
    fn start(st: &ClusterState, now: u64) -> Proc {
        Proc {
            ledger: RequestLedger::new(Some(st), now + GRACE),
            live: false,
            gate: true,
            commit: st.commit_lsn,
            partial: None,
            gc: None,
            listing: None,
            full_done: Vec::new(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Every interleaving keeps (a)-(c), and the storage settles to exactly the current version.
    #[test]
    fn bookkeeping_holds_in_every_interleaving(actions in prop::collection::vec(action(), 1..100)) {
        let mut w = World::new();
        for a in &actions {
            w.step(a);
        }
        w.settle();
    }
}
