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

/// `bound`, or `deep` when `VIEWPIPE_MODEL_BOUND=deep`.
fn or_deep(name: &'static str, bound: Bound, deep: Bound) -> (&'static str, Bound) {
    match std::env::var("VIEWPIPE_MODEL_BOUND").as_deref() {
        Ok("deep") => ("deep", deep),
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

/// Runs the check at `bound` (or `deep`) and fails on a violation.
fn check(name: &'static str, bound: Bound, deep: Bound) {
    let (name, bound) = or_deep(name, bound, deep);
    let found = run(name, &bound);
    if let Some((what, trace)) = &found.violation {
        panic!("{what} (after the {} steps above)", trace.len());
    }
    assert!(found.complete > 0, "no interleaving flushed the whole log");
}

#[test]
fn every_interleaving_with_a_redis_fault_keeps_the_invariants() {
    check("a Redis fault", Bound::REDIS_FAULT, Bound::DEEP);
}

#[test]
fn every_interleaving_with_a_lost_reply_keeps_the_invariants() {
    check("a lost reply", Bound::LOST_REPLY, Bound::DEEP);
}

/// A lagging replica promoted holds an older state under a surviving live mark
/// (or none), and an older fence. Marks name the data set they were written on (the
/// server's replication id), so the promotion voids them for every reader; a take-over
/// that finds the meta hash written on another data set recounts; a batch never revives a voided mark, and a
/// writer whose fence the data set lacks restores.
#[test]
fn every_interleaving_with_a_promoted_replica_keeps_the_invariants() {
    // Deep: with a lost reply as well (a write the old primary applied unanswered).
    let deep = Bound {
        lost_replies: 1,
        ..Bound::FAILOVER
    };
    check("a replica promoted", Bound::FAILOVER, deep);
}

#[test]
fn every_interleaving_with_a_postgres_restore_keeps_the_invariants() {
    // Deep: beside a Redis fault, which takes a first claim's token out of Redis.
    let deep = Bound {
        redis_faults: 1,
        ..Bound::POSTGRES_RESTORE
    };
    check("a Postgres restore", Bound::POSTGRES_RESTORE, deep);
}
