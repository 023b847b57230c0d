//! The generation-hash fields a batch's counts add to, named as the shared layout
//! says (`viewpipe_schema::pending`).

use viewpipe_schema::pending::{push_day_field, push_total_field};

use crate::store::counts::Counts;

/// Calls `f` with each generation-hash field `counts` adds to and its value: each
/// key's total ([`total_field`](viewpipe_schema::pending::total_field)) and each of its days ([`day_field`](viewpipe_schema::pending::day_field)). One buffer is
/// reused for the names.
pub(crate) fn for_each_field(counts: &Counts, mut f: impl FnMut(&str, i64)) {
    let mut name = String::with_capacity(64);
    for (key, key_counts) in counts.iter() {
        name.clear();
        push_total_field(&mut name, key);
        f(&name, key_counts.total());
        for (day, n) in key_counts.days() {
            name.clear();
            push_day_field(&mut name, key, *day);
            f(&name, *n);
        }
    }
}

/// The fields of [`for_each_field`], collected: what [`PendingStore::restore`](super::PendingStore::restore) writes.
pub fn fields(counts: &Counts) -> Vec<(String, i64)> {
    let mut out = Vec::with_capacity(counts.len() * 2);
    for_each_field(counts, |name, n| out.push((name.to_owned(), n)));
    out
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    #[test]
    fn counts_make_one_total_field_and_one_field_per_day() {
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).expect("date");
        let mut counts = Counts::default();
        counts.add("resource:x", day(20), None);
        counts.add("resource:x", day(21), None);
        counts.add("resource:x", day(21), None);
        counts.add("resource:y", day(21), None);
        let mut made = fields(&counts);
        made.sort();
        assert_eq!(
            made,
            vec![
                ("d:resource:x:2026-11-20".to_owned(), 1),
                ("d:resource:x:2026-11-21".to_owned(), 2),
                ("d:resource:y:2026-11-21".to_owned(), 1),
                ("t:resource:x".to_owned(), 3),
                ("t:resource:y".to_owned(), 1),
            ]
        );
        assert_eq!(counts.fields(), fields(&counts));
    }
}
