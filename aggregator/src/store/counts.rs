//! Counts held in memory: what one batch, or one partition generation, adds to each
//! key. A key's total is the sum of its days, so `total = Σ daily` holds by
//! construction. Views that carry a visitor also add its hash to a sketch of the
//! key's visitors of that day (see [`crate::store::visitors`]).

use std::collections::HashMap;

use chrono::NaiveDate;

use crate::store::visitors::{DayVisitors, Sketch};

/// What a batch or generation adds to one key. Small on purpose: an aggregator may
/// hold a million of these between flushes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyCounts {
    days: Days,
    /// The latest path seen, if any.
    path: Option<Box<str>>,
    /// Visitors per day; boxed so that keys whose views carry none pay one pointer.
    visitors: Option<Box<DayVisitors>>,
}

/// Views per UTC day, in arrival order. Nearly every key gets views of one day only
/// between two flushes, so that day is kept inline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Days {
    #[default]
    None,
    One([(NaiveDate, i64); 1]),
    Many(Vec<(NaiveDate, i64)>),
}

impl Days {
    fn as_slice(&self) -> &[(NaiveDate, i64)] {
        match self {
            Days::None => &[],
            Days::One(one) => one,
            Days::Many(many) => many,
        }
    }
}

impl KeyCounts {
    pub fn add(&mut self, day: NaiveDate, n: i64) {
        match &mut self.days {
            Days::None => self.days = Days::One([(day, n)]),
            Days::One([(d, count)]) if *d == day => *count += n,
            Days::One([first]) => self.days = Days::Many(vec![*first, (day, n)]),
            Days::Many(many) => match many.iter_mut().find(|(d, _)| *d == day) {
                Some((_, count)) => *count += n,
                None => many.push((day, n)),
            },
        }
    }

    /// Adds a visitor's hash ([`crate::store::visitors::hash`]) to `day`'s visitors.
    pub(crate) fn add_visitor(&mut self, day: NaiveDate, hash: u64) {
        self.visitors.get_or_insert_default().add(day, hash);
    }

    /// Remembers `path` as the latest, copying it only when it changed.
    pub(crate) fn set_path(&mut self, path: &str) {
        if self.path.as_deref() != Some(path) {
            self.path = Some(path.into());
        }
    }

    pub fn total(&self) -> i64 {
        self.days().iter().map(|(_, n)| n).sum()
    }

    pub fn days(&self) -> &[(NaiveDate, i64)] {
        self.days.as_slice()
    }

    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The visitor sketch of each day whose views carried visitors.
    pub fn visitors(&self) -> impl Iterator<Item = (NaiveDate, &Sketch)> {
        self.visitors.iter().flat_map(|v| v.iter())
    }

    /// Adds `other` (later views of the same key) to this.
    pub fn merge(&mut self, other: &KeyCounts) {
        for (day, n) in other.days() {
            self.add(*day, *n);
        }
        if let Some(path) = &other.path {
            self.set_path(path);
        }
        if let Some(visitors) = &other.visitors {
            self.visitors.get_or_insert_default().merge(visitors);
        }
    }
}

/// Counts by key (`"{contentType}:{contentId}"`). Keys are hashed with foldhash
/// (seeded per process, so crafted keys cannot aim at collisions): SipHash cost more
/// than a tenth of the aggregator's time.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    keys: HashMap<Box<str>, KeyCounts, foldhash::fast::RandomState>,
}

impl PartialEq for Counts {
    fn eq(&self, other: &Self) -> bool {
        self.keys.len() == other.keys.len()
            && self.keys.iter().all(|(k, c)| other.keys.get(k) == Some(c))
    }
}

impl Eq for Counts {}

/// Most keys a new generation's map is made with room for.
pub const NEXT_GENERATION_ROOM: usize = 131_072;

impl Counts {
    /// Empty counts with room for `keys` keys.
    pub fn with_capacity(keys: usize) -> Self {
        Self {
            keys: HashMap::with_capacity_and_hasher(keys, Default::default()),
        }
    }

    /// Empty counts for the generation after these, with room for as many keys, up
    /// to [`NEXT_GENERATION_ROOM`]: that spares growing the map step by step, and
    /// after a backlog the sealed map and an equally large empty one do not sit side
    /// by side.
    pub fn next_generation(&self) -> Self {
        Self::with_capacity(self.len().min(NEXT_GENERATION_ROOM))
    }

    /// The counts of `key`, created empty on first use (the key is copied only then).
    pub fn entry(&mut self, key: &str) -> &mut KeyCounts {
        if !self.keys.contains_key(key) {
            self.keys.insert(key.into(), KeyCounts::default());
        }
        self.keys.get_mut(key).expect("inserted above")
    }

    /// Adds one view; returns the key's counts (to add its visitor, say).
    pub fn add(&mut self, key: &str, day: NaiveDate, path: Option<&str>) -> &mut KeyCounts {
        let counts = self.entry(key);
        counts.add(day, 1);
        if let Some(path) = path {
            counts.set_path(path);
        }
        counts
    }

    /// Adds one view of `visitor` (its hash, if the view carried one).
    pub fn add_view(
        &mut self,
        key: &str,
        day: NaiveDate,
        path: Option<&str>,
        visitor: Option<u64>,
    ) {
        let counts = self.add(key, day, path);
        if let Some(hash) = visitor {
            counts.add_visitor(day, hash);
        }
    }

    /// Moves `other`'s counts into this.
    pub(crate) fn absorb(&mut self, other: Counts) {
        if self.keys.is_empty() && self.keys.capacity() <= other.keys.capacity() {
            *self = other;
            return;
        }
        for (key, counts) in other.keys {
            match self.keys.get_mut(&key) {
                Some(mine) => mine.merge(&counts),
                None => {
                    self.keys.insert(key, counts);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn views(&self) -> i64 {
        self.keys.values().map(KeyCounts::total).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &KeyCounts)> {
        self.keys.iter().map(|(k, c)| (&**k, c))
    }

    pub fn get(&self, key: &str) -> Option<&KeyCounts> {
        self.keys.get(key)
    }

    /// Each Redis hash field these counts add to, with its value (the names are the
    /// pending store's, see [`crate::store::pending::fields`]).
    pub fn fields(&self) -> Vec<(String, i64)> {
        crate::store::pending::fields(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).expect("date")
    }

    #[test]
    fn the_next_generation_has_room_for_the_last_ones_keys_up_to_a_bound() {
        let mut small = Counts::default();
        for i in 0..1000 {
            small.add(&format!("resource:{i}"), day(20), None);
        }
        assert!(small.next_generation().keys.capacity() >= 1000);
        let mut large = Counts::default();
        for i in 0..300_000 {
            large.add(&format!("resource:{i}"), day(20), None);
        }
        let next = large.next_generation().keys.capacity();
        assert!(
            (NEXT_GENERATION_ROOM..300_000).contains(&next),
            "room for {next} keys after 300000"
        );
    }

    #[test]
    fn one_day_is_kept_inline_and_more_spill() {
        let mut c = KeyCounts::default();
        c.add(day(20), 1);
        c.add(day(20), 2);
        assert_eq!(c.days(), &[(day(20), 3)]);
        c.add(day(21), 1);
        c.add(day(22), 1);
        c.add(day(21), 1);
        assert_eq!(c.days(), &[(day(20), 3), (day(21), 2), (day(22), 1)]);
        assert_eq!(c.total(), 6);
        assert!(
            std::mem::size_of::<KeyCounts>() <= 48,
            "{}",
            std::mem::size_of::<KeyCounts>()
        );
    }

    #[test]
    fn totals_are_the_sum_of_days_and_absorbing_adds_up() {
        let mut a = Counts::default();
        a.add("resource:x", day(20), Some("/a"));
        a.add("resource:x", day(21), None);
        let mut b = Counts::default();
        b.add("resource:x", day(21), Some("/b"));
        b.add("resource:y", day(21), None);
        a.absorb(b);
        let x = a.get("resource:x").expect("x");
        assert_eq!(x.total(), 3);
        assert_eq!(x.days(), &[(day(20), 1), (day(21), 2)]);
        assert_eq!(x.path(), Some("/b"));
        assert_eq!(a.views(), 4);
        let y = a.get("resource:y").expect("y");
        assert_eq!(y.days(), &[(day(21), 1)]);
        assert_eq!(y.visitors().count(), 0, "no visitor, no sketch");
    }

    #[test]
    fn visitors_follow_their_key_and_day_through_absorbing() {
        let mut a = Counts::default();
        a.add_view("resource:x", day(20), None, Some(1 << 40));
        a.add_view("resource:x", day(20), None, Some(1 << 40));
        a.add_view("resource:x", day(20), None, None);
        let mut b = Counts::default();
        b.add_view("resource:x", day(20), None, Some(2 << 40));
        b.add_view("resource:x", day(21), None, Some(1 << 40));
        b.add_view("resource:y", day(21), None, Some(1 << 40));
        a.absorb(b);
        let visitors = |key: &str| -> Vec<(NaiveDate, u64)> {
            a.get(key)
                .map(|c| c.visitors().map(|(d, s)| (d, s.estimate())).collect())
                .unwrap_or_default()
        };
        assert_eq!(visitors("resource:x"), vec![(day(20), 2), (day(21), 1)]);
        assert_eq!(visitors("resource:y"), vec![(day(21), 1)]);
        assert_eq!(a.get("resource:x").map(KeyCounts::total), Some(5));
    }
}
