//! Tests of the log check: marks and verdicts, case by case.

use super::*;

const LAST: i64 = 77;
const ANCHOR: i64 = 55;

fn claim(last_mark: Option<i64>, anchor: Option<(i64, i64)>) -> Claim {
    Claim {
        next_offset: Some(100),
        last_mark,
        anchor,
        ..Claim::default()
    }
}

/// A log whose message at each offset has the mark `log(offset)`, from `low` to
/// `high`.
fn reads(low: i64, high: i64, log: impl Fn(i64) -> i64) -> impl FnMut(i64) -> Seen {
    move |o| {
        if (low..high).contains(&o) {
            Seen::Mark(log(o))
        } else {
            Seen::Absent
        }
    }
}

fn counted_log(o: i64) -> i64 {
    match o {
        0 => ANCHOR,
        99 => LAST,
        _ => 1,
    }
}

#[test]
fn marks_differ_with_timestamp_key_and_payload_and_are_never_zero() {
    let base = mark(Some(1), Some(b"k"), Some(b"{\"v\":1}"));
    assert_ne!(base, 0);
    assert_eq!(base, mark(Some(1), Some(b"k"), Some(b"{\"v\":1}")));
    assert_ne!(base, mark(Some(2), Some(b"k"), Some(b"{\"v\":1}")));
    assert_ne!(base, mark(Some(1), None, Some(b"{\"v\":1}")));
    assert_ne!(base, mark(Some(1), Some(b"k"), Some(b"{\"v\":2}")));
    // Payloads the same up to zero padding still differ (the length is hashed).
    assert_ne!(
        mark(None, None, Some(b"ab")),
        mark(None, None, Some(b"ab\0"))
    );
}

#[test]
fn the_same_log_resumes_also_when_it_grew() {
    let c = claim(Some(LAST), Some((0, ANCHOR)));
    assert_eq!(judge(&c, 0, 100, reads(0, 100, counted_log)), Verdict::Same);
    assert_eq!(
        judge(&c, 0, 5000, reads(0, 5000, counted_log)),
        Verdict::Same
    );
}

#[test]
fn a_broker_reporting_a_short_log_end_changes_nothing() {
    // nisshi reports the start of the last batch + 1 as the end: here 91 of 100.
    let c = claim(Some(LAST), Some((0, ANCHOR)));
    assert_eq!(judge(&c, 0, 91, reads(0, 100, counted_log)), Verdict::Same);
    let before_marks = claim(None, None);
    assert_eq!(
        judge(&before_marks, 0, 91, reads(0, 100, counted_log)),
        Verdict::Same
    );
    assert_eq!(
        judge(&before_marks, 0, 10, reads(0, 10, counted_log)),
        Verdict::Recreated
    );
}

#[test]
fn a_recreated_log_is_counted_anew_whether_shorter_or_longer() {
    let c = claim(Some(LAST), Some((0, ANCHOR)));
    let other = |_| 9;
    assert_eq!(judge(&c, 0, 10, reads(0, 10, other)), Verdict::Recreated);
    assert_eq!(
        judge(&c, 0, 5000, reads(0, 5000, other)),
        Verdict::Recreated
    );
}

#[test]
fn a_log_that_lost_or_replaced_its_tail_is_held() {
    let c = claim(Some(LAST), Some((0, ANCHOR)));
    assert_eq!(
        judge(&c, 0, 60, reads(0, 60, counted_log)),
        Verdict::Truncated
    );
    let replaced = |o| if o < 60 { counted_log(o) } else { 3 };
    assert_eq!(
        judge(&c, 0, 500, reads(0, 500, replaced)),
        Verdict::Truncated
    );
    // Without an anchor nothing tells a recreated log from a truncated one.
    let c = claim(Some(LAST), None);
    assert_eq!(judge(&c, 0, 500, reads(0, 500, |_| 9)), Verdict::Truncated);
}

#[test]
fn a_read_without_an_answer_is_looked_at_again_never_judged() {
    let c = claim(Some(LAST), Some((0, ANCHOR)));
    // The anchor answers, the last message does not (a slow broker): not truncated.
    let slow = |o| {
        if o == 0 {
            Seen::Mark(ANCHOR)
        } else {
            Seen::NoAnswer
        }
    };
    assert_eq!(judge(&c, 0, 100, slow), Verdict::Unproven);
    assert_eq!(
        judge(&claim(None, None), 0, 50, |_| Seen::NoAnswer),
        Verdict::Unproven
    );
}

#[test]
fn an_empty_log_is_looked_at_again() {
    let c = claim(Some(LAST), Some((0, ANCHOR)));
    assert_eq!(judge(&c, 0, 0, reads(0, 0, counted_log)), Verdict::Unproven);
}

#[test]
fn an_aged_out_last_message_or_a_row_without_marks_goes_by_offsets() {
    let c = claim(Some(LAST), Some((0, ANCHOR)));
    assert_eq!(judge(&c, 100, 200, |_| Seen::Absent), Verdict::Same);
    assert_eq!(judge(&c, 150, 200, |_| Seen::Absent), Verdict::Ahead);
    let legacy = claim(None, None);
    assert_eq!(judge(&legacy, 0, 50, |_| Seen::Absent), Verdict::Recreated);
    assert_eq!(judge(&legacy, 0, 150, |_| Seen::Absent), Verdict::Same);
}
