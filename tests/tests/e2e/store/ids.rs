//! Client-chosen event ids in Postgres: counted once, and forgotten only when nothing can be judged by them.

use super::*;

#[tokio::test]
async fn client_ids_count_once_and_a_replay_of_the_first_still_counts() {
    let stack = Stack::start().await.expect("stack");
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    let sighting_at = |key, event_id, message: &str, occurred_at| Sighting {
        key,
        event_id,
        message: message.to_owned(),
        occurred_at,
    };
    let sighting = |key, event_id, message: &str| sighting_at(key, event_id, message, base);
    let seen = event_ids::first_sightings(
        &stack.db,
        &[
            sighting(KEY, "e1", "views:0:5"),
            sighting(KEY, "e2", "views:0:6"),
            sighting(KEY, "e1", "views:1:9"),
            sighting("resource:other", "e1", "views:1:10"),
        ],
    )
    .await
    .expect("ids");
    assert_eq!(seen, vec![true, true, false, true]);
    // The message that first carried e1 is consumed again after a crash: it counts;
    // another message with e1 still does not.
    let again = event_ids::first_sightings(
        &stack.db,
        &[
            sighting(KEY, "e1", "views:0:5"),
            sighting(KEY, "e1", "views:2:1"),
        ],
    )
    .await
    .expect("replay");
    assert_eq!(again, vec![true, false]);
    let rows = stack
        .rows("SELECT '', count(*) FROM view_event_ids")
        .await
        .expect("rows");
    assert_eq!(rows[0].1, 3, "one row per remembered id");
    // The window is in event time: a retry consumed 25 h after the first sighting
    // (a lagging consumer, a hold, a restore) is still a duplicate; a view that
    // reused the id more than 24 h later in event time is another view.
    stack
        .db
        .execute_unprepared("UPDATE view_event_ids SET seen_at = now() - interval '25 hours'")
        .await
        .expect("age the ids");
    let later = event_ids::first_sightings(
        &stack.db,
        &[
            sighting(KEY, "e1", "views:3:1"),
            sighting_at(KEY, "e1", "views:3:2", base + chrono::Duration::hours(25)),
        ],
    )
    .await
    .expect("later");
    assert_eq!(later, vec![false, true]);
    // Forgotten only when old enough in event time (no partition here says more).
    let forget = || event_ids::forget_expired(&stack.db, 100);
    assert_eq!(forget().await.expect("expire"), 0, "recent in event time");
    stack
        .db
        .execute_unprepared(
            "UPDATE view_event_ids SET occurred_at = occurred_at - interval '100 hours'
             WHERE event_id = 'e2'",
        )
        .await
        .expect("age e2 in event time");
    assert_eq!(forget().await.expect("expire"), 1);
}

/// An id row outlives its age while its message can still be read again (its
/// partition has not flushed past it) or while its partition's consumer has not
/// come far enough in event time (a lagging consumer, a held partition).
#[tokio::test]
async fn ids_are_forgotten_only_when_nothing_can_be_judged_by_them() {
    let stack = Stack::start().await.expect("stack");
    let scope = Scope {
        group: stack.group.clone(),
        topic: "views".into(),
    };
    let old = chrono::Utc::now() - chrono::Duration::hours(200);
    let claim = postgres::claim(&stack.db, &scope, 0).await.expect("claim");
    let sightings = [("e1", "views:0:3"), ("e2", "views:0:30")].map(|(id, message)| Sighting {
        key: KEY,
        event_id: id,
        message: message.to_owned(),
        occurred_at: old,
    });
    event_ids::first_sightings(&stack.db, &sightings)
        .await
        .expect("ids");
    let forget = || event_ids::forget_expired(&stack.db, 100);
    // Nothing flushed yet: both messages may be read again.
    assert_eq!(forget().await.expect("expire"), 0, "nothing flushed");
    // Flushed to offset 10 with the clock just past the window: e1 (offset 3) is
    // below, but the clock says a retry of it may still come.
    let flush_to = |clock: chrono::DateTime<chrono::Utc>, gen: i64| PartitionCommit {
        partition: 0,
        epoch: claim.epoch,
        next_offset: 10,
        extends: None,
        gen,
        seals: true,
        flush_seq: 0,
        marks: LogMarks::default(),
        event_clock: Some(clock),
    };
    let empty = Counts::default();
    let near = old + event_ids::WINDOW + event_ids::LATENESS - chrono::Duration::hours(1);
    postgres::flush(&stack.db, &scope, &[&empty], &[flush_to(near, 1)])
        .await
        .expect("flush");
    assert_eq!(
        forget().await.expect("expire"),
        0,
        "the clock is not far enough"
    );
    postgres::flush(
        &stack.db,
        &scope,
        &[&empty],
        &[flush_to(chrono::Utc::now(), 2)],
    )
    .await
    .expect("flush");
    assert_eq!(
        forget().await.expect("expire"),
        1,
        "e1 only: e2's message is not flushed"
    );
    let left = stack
        .rows("SELECT event_id, count(*) FROM view_event_ids GROUP BY event_id")
        .await
        .expect("rows");
    assert_eq!(left, vec![("e2".to_owned(), 1)]);
}
