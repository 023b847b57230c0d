//! A HyperLogLog sketch of 64-bit visitor hashes.
//!
//! A hash `h` is split into a register index (its top bits) and a rank: one plus
//! the number of leading zeros in the rest. A sketch keeps, per register, the
//! largest rank seen, so adding a hash twice, or merging a sketch into one that
//! already holds it, changes nothing: merges are idempotent and commutative, which is
//! what lets a replayed or re-sent flush merge again without counting anyone twice.
//!
//! Two representations, one estimator ([`super::estimate`]):
//! - **sparse**, while at most [`SPARSE_MAX`] registers are set: sorted entries of a
//!   finer sketch, precision [`SPARSE_P`] (2^26 registers), each `index << 6 | rank`
//!   in a `u32`. Two visitors share an entry only when their hashes agree in the top
//!   26 bits, so a sparse estimate is short only by such collisions: n²/2^27 of them
//!   are expected (0.002 at n = 500, 0.07 at n = 3072).
//! - **dense**: [`M`] = 2^14 registers of one byte in memory, 6 bits in the encoding;
//!   standard error 1.04/√M ≈ 0.81%.
//!
//! A sparse entry holds the top 26 bits of the hash, which contain the dense index
//! (top 14 bits), and its rank; the dense rank follows from the 12 bits in between
//! and the sparse rank, so turning a sparse sketch dense gives exactly the registers
//! the hashes would have set directly.
//!
//! How sketches are stored: `encoding.rs` beside this file.

use std::borrow::Cow;

use super::estimate;

mod encoding;

pub use encoding::SketchError;

/// Dense precision: 2^14 registers.
pub const P: u32 = 14;
/// Dense registers.
pub const M: usize = 1 << P;
/// Sparse precision: entries are registers of a 2^26-register sketch (26 index bits
/// and 6 rank bits fill a `u32`).
pub(crate) const SPARSE_P: u32 = 26;
/// Most entries a sparse sketch keeps; past this it turns dense. Both encode to the
/// same size here: 3072 × 4 bytes = 16384 × 6 bits.
pub const SPARSE_MAX: usize = 3072;

/// Encoding version written first.
const VERSION: u8 = 1;
const KIND_SPARSE: u8 = 0;
const KIND_DENSE: u8 = 1;
const HEADER: usize = 3;
/// Bits of an entry that hold the rank.
const RANK_BITS: u32 = 6;
/// A sparse sketch sorts what was appended in once it doubled the sorted part, but
/// not before this many entries.
const COMPACT_MIN: usize = 32;

/// Bits after the index, and thus the largest rank less one.
const fn rest_bits(precision: u32) -> u32 {
    64 - precision
}

/// The register index and rank of `hash` at `precision`.
fn index_rank(hash: u64, precision: u32) -> (usize, u8) {
    let rest = hash << precision;
    let zeros = rest.leading_zeros().min(rest_bits(precision));
    ((hash >> (64 - precision)) as usize, zeros as u8 + 1)
}

fn sparse_entry(hash: u64) -> u32 {
    let (index, rank) = index_rank(hash, SPARSE_P);
    (index as u32) << RANK_BITS | u32::from(rank)
}

fn entry_index(entry: u32) -> u32 {
    entry >> RANK_BITS
}

/// The dense register and rank a sparse entry stands for.
fn dense_of(entry: u32) -> (usize, u8) {
    const BETWEEN: u32 = SPARSE_P - P;
    let index = entry_index(entry);
    let between = index & ((1 << BETWEEN) - 1);
    let rank = if between != 0 {
        (between.leading_zeros() - (32 - BETWEEN)) as u8 + 1
    } else {
        BETWEEN as u8 + (entry & ((1 << RANK_BITS) - 1)) as u8
    };
    ((index >> BETWEEN) as usize, rank)
}

/// A HyperLogLog sketch (see the module documentation).
#[derive(Clone, Debug)]
pub struct Sketch {
    repr: Repr,
}

#[derive(Clone, Debug)]
enum Repr {
    /// Entries, the first `sorted` of them ascending with one per index; the rest
    /// appended since (sorted in on [`Sketch::compact`]).
    Sparse { entries: Vec<u32>, sorted: usize },
    /// [`M`] registers.
    Dense(Box<[u8]>),
}

impl Default for Sketch {
    fn default() -> Self {
        Self {
            repr: Repr::Sparse {
                entries: Vec::new(),
                sorted: 0,
            },
        }
    }
}

impl PartialEq for Sketch {
    /// Same registers in the same representation, whatever the order of additions.
    fn eq(&self, other: &Self) -> bool {
        match (&self.settled().repr, &other.settled().repr) {
            (Repr::Sparse { entries: a, .. }, Repr::Sparse { entries: b, .. }) => a == b,
            (Repr::Dense(a), Repr::Dense(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Sketch {}

impl Sketch {
    /// A sketch holding one hash.
    pub fn of(hash: u64) -> Self {
        let mut sketch = Self::default();
        sketch.insert(hash);
        sketch
    }

    /// Adds a visitor's hash ([`super::hash`]).
    pub fn insert(&mut self, hash: u64) {
        match &mut self.repr {
            Repr::Sparse { entries, sorted } => {
                let entry = sparse_entry(hash);
                // The same visitor's views often arrive back to back.
                if entries.last() == Some(&entry) {
                    return;
                }
                entries.push(entry);
                if entries.len() >= (*sorted * 2).max(COMPACT_MIN) {
                    self.compact();
                }
            }
            Repr::Dense(registers) => {
                let (index, rank) = index_rank(hash, P);
                let r = &mut registers[index];
                *r = (*r).max(rank);
            }
        }
    }

    /// Adds everything `other` holds.
    pub fn merge(&mut self, other: &Sketch) {
        match (&mut self.repr, &other.repr) {
            (Repr::Sparse { entries, .. }, Repr::Sparse { entries: more, .. }) => {
                entries.extend_from_slice(more);
                self.compact();
            }
            (Repr::Sparse { .. }, Repr::Dense(_)) => {
                self.densify();
                self.merge(other);
            }
            (Repr::Dense(registers), Repr::Sparse { entries, .. }) => {
                for &entry in entries {
                    let (index, rank) = dense_of(entry);
                    registers[index] = registers[index].max(rank);
                }
            }
            (Repr::Dense(registers), Repr::Dense(more)) => {
                for (r, m) in registers.iter_mut().zip(more.iter()) {
                    *r = (*r).max(*m);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(&self.repr, Repr::Sparse { entries, .. } if entries.is_empty())
    }

    #[cfg(test)]
    pub(crate) fn is_dense(&self) -> bool {
        matches!(self.repr, Repr::Dense(_))
    }

    /// The estimated number of distinct hashes added.
    pub fn estimate(&self) -> u64 {
        let settled = self.settled();
        let estimate = match &settled.repr {
            Repr::Sparse { entries, .. } => {
                let mut histogram = [0u32; rest_bits(SPARSE_P) as usize + 2];
                histogram[0] = (1u32 << SPARSE_P) - entries.len() as u32;
                for &entry in entries.iter() {
                    histogram[(entry & ((1 << RANK_BITS) - 1)) as usize] += 1;
                }
                estimate::ertl(&histogram)
            }
            Repr::Dense(registers) => {
                let mut histogram = [0u32; rest_bits(P) as usize + 2];
                for &r in registers.iter() {
                    histogram[r as usize] += 1;
                }
                estimate::ertl(&histogram)
            }
        };
        estimate.round() as u64
    }

    /// Sorts in what was appended, keeps the largest rank per index, and turns dense
    /// when too many registers are set.
    pub(crate) fn compact(&mut self) {
        let Repr::Sparse { entries, sorted } = &mut self.repr else {
            return;
        };
        // Sorted by index, then rank: the last entry of each index has its largest.
        entries.sort_unstable();
        let mut kept = 0;
        for i in 0..entries.len() {
            let entry = entries[i];
            if kept > 0 && entry_index(entries[kept - 1]) == entry_index(entry) {
                entries[kept - 1] = entry;
            } else {
                entries[kept] = entry;
                kept += 1;
            }
        }
        entries.truncate(kept);
        *sorted = kept;
        if kept > SPARSE_MAX {
            self.densify();
        }
    }

    /// This sketch with nothing left unsorted: itself when it is so already.
    fn settled(&self) -> Cow<'_, Sketch> {
        match &self.repr {
            Repr::Sparse { entries, sorted } if *sorted < entries.len() => {
                let mut copy = self.clone();
                copy.compact();
                Cow::Owned(copy)
            }
            _ => Cow::Borrowed(self),
        }
    }

    fn densify(&mut self) {
        let Repr::Sparse { entries, .. } = &self.repr else {
            return;
        };
        let mut registers = vec![0u8; M].into_boxed_slice();
        for &entry in entries {
            let (index, rank) = dense_of(entry);
            registers[index] = registers[index].max(rank);
        }
        self.repr = Repr::Dense(registers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct, well-spread test hashes (the visitor hash of `"v{i}"` would do too,
    /// but splitmix64 needs no string).
    pub(crate) fn hashes(seed: u64, n: usize) -> impl Iterator<Item = u64> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678;
        (0..n).map(move |_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    }

    pub(super) fn sketch_of(seed: u64, n: usize) -> Sketch {
        let mut s = Sketch::default();
        hashes(seed, n).for_each(|h| s.insert(h));
        s
    }

    #[test]
    fn ranks_count_leading_zeros_after_the_index() {
        assert_eq!(index_rank(u64::MAX, P), ((1 << P) - 1, 1));
        // Index 0, then a 1 in the rest's third bit: two zeros, rank 3.
        assert_eq!(index_rank(1 << (64 - P - 3), P), (0, 3));
        // Nothing after the index: the largest rank.
        assert_eq!(index_rank(5 << (64 - P), P), (5, 51));
        assert_eq!(index_rank(0, SPARSE_P), (0, 39));
    }

    #[test]
    fn sparse_entries_turn_into_the_registers_the_hashes_set() {
        for h in hashes(1, 20_000).chain([0, u64::MAX, 1, 1 << 38, 1 << 50, 3 << 49]) {
            assert_eq!(dense_of(sparse_entry(h)), index_rank(h, P), "hash {h:#x}");
        }
        // A sketch that turned dense on its own equals one fed dense from the start.
        let grown = sketch_of(2, 10_000);
        assert!(grown.is_dense());
        let mut direct = Sketch {
            repr: Repr::Dense(vec![0u8; M].into_boxed_slice()),
        };
        hashes(2, 10_000).for_each(|h| direct.insert(h));
        assert_eq!(grown, direct);
    }

    #[test]
    fn sparse_counts_are_exact_but_for_index_collisions() {
        for n in [0, 1, 2, 10, 100, 500, 1000, 3000] {
            let s = sketch_of(n as u64, n);
            assert!(!s.is_dense(), "{n} visitors stay sparse");
            // Distinct 26-bit prefixes among these hashes: what the sketch can see.
            let mut prefixes: Vec<u64> = hashes(n as u64, n).map(|h| h >> 38).collect();
            prefixes.sort_unstable();
            prefixes.dedup();
            assert_eq!(s.estimate(), prefixes.len() as u64, "{n} visitors");
        }
    }

    #[test]
    fn adding_or_merging_the_same_visitors_again_changes_nothing() {
        for n in [50, 5_000, 50_000] {
            let once = sketch_of(7, n);
            let mut twice = once.clone();
            hashes(7, n).for_each(|h| twice.insert(h));
            assert_eq!(twice, once, "{n}: the same ids added twice");
            let mut merged = once.clone();
            merged.merge(&once);
            assert_eq!(merged, once, "{n}: merged into itself");
            assert_eq!(merged.estimate(), once.estimate());
        }
    }

    #[test]
    fn merging_is_the_union_in_any_order_and_representation() {
        // Parts that stay sparse, and one that is dense, merged both ways round.
        let parts = [sketch_of(1, 300), sketch_of(2, 2_000), sketch_of(3, 20_000)];
        let mut all = Sketch::default();
        for seed in 1..=3 {
            hashes(seed, [300, 2_000, 20_000][seed as usize - 1]).for_each(|h| all.insert(h));
        }
        let mut forward = Sketch::default();
        parts.iter().for_each(|p| forward.merge(p));
        let mut backward = Sketch::default();
        parts.iter().rev().for_each(|p| backward.merge(p));
        assert_eq!(forward, all);
        assert_eq!(backward, all);
        // Two sparse sketches whose union no longer fits turn dense.
        let mut a = sketch_of(4, 2_000);
        a.merge(&sketch_of(5, 2_000));
        assert!(a.is_dense());
    }
}
