//! Unique visitors per key and UTC day.
//!
//! A view's visitor is its `sessionId`, else its `visitorId` (see
//! `viewpipe_schema::EventRef::visitor`); views without either have none. The
//! aggregator hashes it ([`hash`]) as the view is consumed and keeps, beside the
//! key's views of the day, a HyperLogLog [`Sketch`] of the hashes in the partition's
//! in-memory generation. The flush merges those sketches into `view_visitors_daily`
//! in the same transaction as the counts ([`rows::merge_into`]); a backfill replaces a
//! month's rows with the replay's sketches.
//!
//! A merge keeps the largest rank per register, so merging the same visitors again
//! (a generation counted again after a crash, a flush sent twice) changes nothing:
//! the estimate can only be as exact as the sketch, never inflated by a replay.

pub mod estimate;
pub mod rows;
pub mod sketch;

#[cfg(test)]
mod accuracy;

use chrono::NaiveDate;

pub use sketch::{Sketch, SketchError};

/// The 64-bit hash of a visitor id that the sketches hold: XXH3-64 without a seed.
/// Sketches outlive releases in Postgres, so this must never change.
pub fn hash(visitor: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(visitor.as_bytes())
}

/// One key's visitor sketches, per UTC day, in arrival order (nearly always one day).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DayVisitors {
    days: Vec<(NaiveDate, Sketch)>,
}

impl DayVisitors {
    /// Adds a visitor's hash to `day`.
    pub fn add(&mut self, day: NaiveDate, hash: u64) {
        match self.days.iter_mut().find(|(d, _)| *d == day) {
            Some((_, sketch)) => sketch.insert(hash),
            None => self.push(day, Sketch::of(hash)),
        }
    }

    /// Adds `other`'s visitors, day by day.
    pub fn merge(&mut self, other: &DayVisitors) {
        for (day, sketch) in &other.days {
            match self.days.iter_mut().find(|(d, _)| d == day) {
                Some((_, mine)) => mine.merge(sketch),
                None => self.push(*day, sketch.clone()),
            }
        }
    }

    /// A key rarely has visitors on more than a day or two between flushes: room
    /// for one more day at a time (a plain push would make room for four).
    fn push(&mut self, day: NaiveDate, sketch: Sketch) {
        self.days.reserve_exact(1);
        self.days.push((day, sketch));
    }

    pub fn iter(&self) -> impl Iterator<Item = (NaiveDate, &Sketch)> {
        self.days.iter().map(|(d, s)| (*d, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_visitor_hash_is_the_fixed_xxh3_of_the_id() {
        // XXH3-64 of the empty input is fixed by the specification; a change of hash
        // would make every stored sketch disagree with new ones.
        assert_eq!(hash(""), 0x2d06_8005_38d3_94c2);
        assert_ne!(hash("s1"), hash("s2"));
    }

    #[test]
    fn days_keep_their_own_visitors() {
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).expect("date");
        let mut a = DayVisitors::default();
        a.add(day(20), hash("s1"));
        a.add(day(20), hash("s1"));
        a.add(day(21), hash("s1"));
        let mut b = DayVisitors::default();
        b.add(day(21), hash("s2"));
        b.add(day(22), hash("s3"));
        a.merge(&b);
        let estimates: Vec<(NaiveDate, u64)> = a.iter().map(|(d, s)| (d, s.estimate())).collect();
        assert_eq!(estimates, vec![(day(20), 1), (day(21), 2), (day(22), 1)]);
    }
}
