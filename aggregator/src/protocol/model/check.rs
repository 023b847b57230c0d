//! The depth-first explorer and the tests that run it.
//!
//! States are remembered by a 64-bit fingerprint (as TLC does), not kept whole: two
//! states sharing one are taken as one, which at the default bound's size has odds
//! below one in a million. The search is depth first, so memory holds the
//! fingerprints and one path; a violation's trace is that path (not the shortest).

use std::collections::HashSet;
use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use std::time::Instant;

use super::world::{Action, World};
use super::Bound;

/// What an exploration found.
pub(super) struct Explored {
    pub states: usize,
    /// States where Postgres holds every view of the log.
    pub complete: usize,
    /// The first broken invariant, with the steps that lead to it.
    pub violation: Option<(String, Vec<(Action, String)>)>,
}

fn fingerprint(world: &World) -> u64 {
    FixedState::with_seed(0x7669_6577).hash_one(world)
}

/// Explores every state reachable within `bound`, depth first, stopping at the
/// first violation.
pub(super) fn explore(bound: &Bound) -> Explored {
    let start = World::default();
    let mut seen: HashSet<u64, FixedState> = HashSet::with_hasher(FixedState::with_seed(1));
    seen.insert(fingerprint(&start));
    let mut complete = 0;
    // The path from the start: each state with the actions not yet tried from it, and
    // the action that led to it.
    let actions = start.actions(bound);
    let mut path: Vec<(World, Vec<Action>, Option<Action>)> = vec![(start, actions, None)];
    while let Some((world, untried, _)) = path.last_mut() {
        let Some(action) = untried.pop() else {
            path.pop();
            continue;
        };
        let mut next = world.clone();
        let broken = next.step(action, bound);
        if !seen.insert(fingerprint(&next)) {
            continue;
        }
        if let Err(what) = broken {
            let mut trace: Vec<Action> = path.iter().filter_map(|(_, _, a)| *a).collect();
            trace.push(action);
            return Explored {
                states: seen.len(),
                complete,
                violation: Some((what, replay(&trace, bound))),
            };
        }
        if next.complete(bound) {
            complete += 1;
        }
        if seen.len() % 2_000_000 == 0 {
            eprintln!(
                "model check: {} states, path {} long",
                seen.len(),
                path.len()
            );
        }
        let actions = next.actions(bound);
        path.push((next, actions, Some(action)));
    }
    Explored {
        states: seen.len(),
        complete,
        violation: None,
    }
}

/// Each of `actions` taken from the start, with the state it led to.
fn replay(actions: &[Action], bound: &Bound) -> Vec<(Action, String)> {
    let mut world = World::default();
    actions
        .iter()
        .map(|action| {
            let _ = world.step(*action, bound);
            (*action, world.summary())
        })
        .collect()
}

/// `bound`, or the deep one when `VIEWPIPE_MODEL_BOUND=deep`.
fn or_deep(name: &'static str, bound: Bound) -> (&'static str, Bound) {
    match std::env::var("VIEWPIPE_MODEL_BOUND").as_deref() {
        Ok("deep") => ("deep", Bound::DEEP),
        _ => (name, bound),
    }
}

/// Runs the check at `bound`, printing its size and any violation's trace.
fn run(name: &str, bound: &Bound) -> Explored {
    let started = Instant::now();
    let found = explore(bound);
    println!(
        "model check ({name} bound {bound:?}): {} states, {} with every view in Postgres, {:.1} s",
        found.states,
        found.complete,
        started.elapsed().as_secs_f64()
    );
    if let Some((what, trace)) = &found.violation {
        for (i, (action, state)) in trace.iter().enumerate() {
            println!("{i:3}. {action:?}\n     {state}");
        }
        println!("VIOLATION: {what}");
    }
    found
}

/// Runs the check at `bound` and fails on a violation.
fn check(name: &'static str, bound: Bound) {
    let (name, bound) = or_deep(name, bound);
    let found = run(name, &bound);
    if let Some((what, trace)) = &found.violation {
        panic!("{what} (after the {} steps above)", trace.len());
    }
    assert!(found.complete > 0, "no interleaving flushed the whole log");
}

#[test]
fn every_interleaving_with_a_redis_fault_keeps_the_invariants() {
    check("a Redis fault", Bound::REDIS_FAULT);
}

#[test]
fn every_interleaving_with_a_lost_reply_keeps_the_invariants() {
    check("a lost reply", Bound::LOST_REPLY);
}

/// A lagging replica promoted holds an older state under a surviving live mark
/// (or none), and an older fence. Marks name the data set they were written on (the
/// server's replication id), so the promotion voids them for every reader; a take-over
/// that finds no valid mark recounts; a batch never revives a voided mark, and a
/// writer whose fence the data set lacks restores.
#[test]
fn every_interleaving_with_a_promoted_replica_keeps_the_invariants() {
    check("a replica promoted", Bound::FAILOVER);
}

#[test]
fn every_interleaving_with_a_postgres_restore_keeps_the_invariants() {
    check("a Postgres restore", Bound::POSTGRES_RESTORE);
}

/// A known hole, kept in view: Postgres restored to before a claim hands its epoch
/// out again, and the claims' tokens in Redis tell the two owners apart; but when
/// Redis does not hold the first owner's token (its fence got no answer, or Redis
/// lost it before that owner wrote it again), the second claim is taken, and the
/// first owner's next flush (made from memory, which Redis being away does not stop)
/// lands on the second's. Closing it needs the flush to name the position it
/// extends.
#[test]
fn a_postgres_restore_beside_a_redis_fault_can_count_a_view_twice() {
    let bound = Bound {
        pg_restores: 1,
        ..Bound::REDIS_FAULT
    };
    let found = run("a Postgres restore and a Redis fault", &bound);
    let (what, trace) = found.violation.expect("the check finds the double count");
    assert_eq!(what, "Postgres counted a view twice");
    let did = |a: Action| trace.iter().any(|(b, _)| *b == a);
    let redis_fault = did(Action::WipeRedis) || did(Action::PauseRedis);
    assert!(did(Action::RestorePg) && redis_fault, "both faults");
}
