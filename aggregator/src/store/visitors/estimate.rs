//! The cardinality estimate of a HyperLogLog sketch, from the histogram of its
//! registers: Otmar Ertl's "improved raw estimator" (New cardinality estimation
//! algorithms for HyperLogLog sketches, 2017, section 3).
//!
//! The classic estimator needs corrections at both ends (linear counting while many
//! registers are empty, empirical bias tables in between). Ertl's replaces the terms
//! of empty and saturated registers with the two series σ and τ, which makes the
//! estimate nearly unbiased over the whole range with no tables and no switch-over:
//!
//! `E = α∞ m² / (m σ(C₀/m) + Σ_{k=1..q} C_k 2^-k + m τ(1 - C_{q+1}/m) 2^-q)`
//!
//! where `m` is the number of registers, `q` the bits after the index, `C_k` how
//! many registers hold `k`, and `α∞ = 1 / (2 ln 2)`.

/// `1 / (2 ln 2)`: the bias constant of HyperLogLog as the register count grows.
const ALPHA_INF: f64 = 0.721_347_520_444_481_7;

/// The estimate for a register histogram: `histogram[k]` registers hold `k`, for
/// `k` in `0..=q+1`; the register count is the histogram's sum.
pub(crate) fn ertl(histogram: &[u32]) -> f64 {
    let m: f64 = histogram.iter().map(|&c| f64::from(c)).sum();
    let Some(q) = histogram.len().checked_sub(2) else {
        return 0.0;
    };
    if m == 0.0 {
        return 0.0;
    }
    // Horner's scheme from the top: m τ(..) 2^-q + Σ C_k 2^-k.
    let mut z = m * tau(1.0 - f64::from(histogram[q + 1]) / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + f64::from(histogram[k]));
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    ALPHA_INF * m * m / z
}

/// σ(x) = x + Σ_{k≥1} x^(2^k) 2^(k-1), summed until a term no longer changes the
/// sum. Infinite at x = 1 (every register empty: the estimate is then 0).
fn sigma(x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut power, mut weight, mut sum) = (x, 1.0, x);
    loop {
        power *= power;
        let before = sum;
        sum += power * weight;
        weight += weight;
        if sum == before {
            return sum;
        }
    }
}

/// τ(x) = (1 - x - Σ_{k≥1} (1 - x^(2^-k))² 2^-k) / 3, summed until a term no longer
/// changes the sum; 0 at both ends.
fn tau(x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut root, mut weight, mut sum) = (x, 1.0, 1.0 - x);
    loop {
        root = root.sqrt();
        let before = sum;
        weight *= 0.5;
        sum -= (1.0 - root).powi(2) * weight;
        if sum == before {
            return sum / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_match_their_closed_forms_where_known() {
        // σ(0) = 0, τ at its ends is 0.
        assert_eq!(sigma(0.0), 0.0);
        assert_eq!(tau(0.0), 0.0);
        assert_eq!(tau(1.0), 0.0);
        // σ(x) for small x is about x + x² (the later terms vanish).
        let x = 1e-3;
        assert!((sigma(x) - (x + x * x)).abs() < 1e-9);
        // An empty sketch estimates 0; a full one something finite.
        assert_eq!(ertl(&[16, 0, 0]), 0.0);
        let e = ertl(&[0, 16, 0, 0]);
        assert!(e.is_finite() && e > 0.0, "{e}");
    }

    #[test]
    fn few_set_registers_estimate_their_number() {
        // k registers of 2^26 set to rank 1 or 2, the rest empty: about k.
        for k in [1u32, 10, 500, 3000] {
            let mut histogram = vec![0u32; 40];
            histogram[0] = (1 << 26) - k;
            histogram[1] = k / 2;
            histogram[2] = k - k / 2;
            let e = ertl(&histogram);
            assert!((e - f64::from(k)).abs() < 0.5, "{k}: {e}");
        }
    }
}
