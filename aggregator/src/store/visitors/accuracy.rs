//! How far the estimate is from the truth, with real visitor ids through the real
//! hash: one sketch fed every id, and the same ids spread over several sketches
//! merged (as a key-day's visitors arrive over many flushes). Prints its figures;
//! `cargo test -p aggregator --lib store::visitors::accuracy -- --nocapture` shows them.

use super::{hash, Sketch};

/// `n` distinct visitor ids of run `seed`, added to `parts` sketches in turn, merged.
fn estimate(seed: u32, n: u64, parts: usize) -> (u64, bool) {
    let mut sketches = vec![Sketch::default(); parts];
    let mut id = String::new();
    for i in 0..n {
        id.clear();
        use std::fmt::Write;
        let _ = write!(id, "session-{seed}-{i}");
        sketches[i as usize % parts].insert(hash(&id));
    }
    let mut all = Sketch::default();
    for s in &sketches {
        all.merge(s);
    }
    (all.estimate(), all.is_dense())
}

fn error(estimate: u64, n: u64) -> f64 {
    (estimate as f64 - n as f64) / n as f64
}

#[test]
fn estimates_against_true_counts() {
    let mut lines = Vec::new();
    for n in [1_000, 100_000, 1_000_000] {
        for parts in [1, 8] {
            let (e, dense) = estimate(1, n, parts);
            let kind = if dense { "dense" } else { "sparse" };
            lines.push(format!(
                "{n} in {parts} sketch(es): {e} ({:+.3}%, {kind})",
                error(e, n) * 100.0
            ));
        }
    }
    eprintln!("visitor sketch accuracy: {}", lines.join("; "));
}

/// Mean and root-mean-square relative error over 20 runs at each size, across the
/// range where classic HyperLogLog needs its corrections (2.5 m ≈ 41k).
#[test]
fn bias_and_spread_over_many_runs() {
    let mut lines = Vec::new();
    for n in [5_000, 20_000, 41_000, 100_000] {
        let errors: Vec<f64> = (100..120)
            .map(|seed| error(estimate(seed, n, 1).0, n))
            .collect();
        let mean = errors.iter().sum::<f64>() / errors.len() as f64;
        let rms = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
        // 0.81% standard error: a mean over 20 runs beyond 1% would be a bias.
        assert!(mean.abs() < 0.01, "{n}: mean error {mean:+.4}");
        assert!(rms < 0.0125, "{n}: rms error {rms:.4}");
        lines.push(format!(
            "{n}: mean {:+.3}%, rms {:.3}%",
            mean * 100.0,
            rms * 100.0
        ));
    }
    eprintln!("visitor sketch over 20 runs each: {}", lines.join("; "));
}

#[test]
fn within_two_percent_at_100k_and_exact_while_small() {
    let mut worst: f64 = 0.0;
    for seed in 1..=5 {
        let (e, _) = estimate(seed, 100_000, 4);
        let err = error(e, 100_000);
        assert!(err.abs() < 0.02, "seed {seed}: {e} for 100000 ({err:+.4})");
        worst = worst.max(err.abs());
    }
    // While sparse, only ids sharing the top 26 bits of their hash merge: n²/2^27
    // expected (0.002 at 500, 0.07 at 3000), so exact below a few hundred and at
    // most a couple short up to 3072.
    let mut short = 0;
    for n in [1, 7, 100, 500, 2_000, 3_000] {
        for seed in 1..=5 {
            let (e, dense) = estimate(seed, n, 3);
            assert!(!dense, "{n} visitors stay sparse");
            let bound = if n <= 500 { 0 } else { 2 };
            assert!(
                e <= n && n - e <= bound,
                "seed {seed}: {e} for {n} visitors"
            );
            short += n - e;
        }
    }
    eprintln!(
        "visitor sketch: 100k distinct over 5 seeds within {:.3}% (bound 2%); 1..3000 over 5 seeds each: {short} visitor(s) short in all",
        worst * 100.0
    );
}
