//! Is the log a new owner finds the log that Postgres' position belongs to?
//!
//! An offset alone cannot say. A log that lost its tail (an unclean leader election)
//! and a topic deleted and created again both end before the position, and a
//! recreated log may already have grown past it. Resuming at the position would skip
//! new events in the second case; counting from the beginning would count old events
//! again in the first. So every sealing flush records a *mark* (a hash of timestamp,
//! key and payload) of the last message it counted, and the first flush of a log
//! counted from its beginning records the mark of that first message (the *anchor*).
//! Before resuming, a new owner reads both back from the log:
//!
//! - the last counted message is there, unchanged: the same log, resume;
//! - it is not, and the anchor's offset holds another message: a different log,
//!   every message of it is new, count it from its beginning;
//! - it is not, and the anchor is unchanged: the same log lost or replaced what was
//!   counted. Nothing can tell which of its messages are new, so the partition is
//!   held and reported (`log_truncated`) for the operator;
//! - the log does not reach the anchor yet (a recreated log still empty): held
//!   quietly and looked at again.
//!
//! Reads use a consumer of their own outside the group, so they can run inside the
//! rebalance callback.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::store::Claim;
use viewpipe_runtime::kafka::{self, KafkaSettings};

/// How long a read of an offset waits for an answer: its message, a later one, the
/// log's end, or the offset refused as out of range. Reads past the reported log end
/// wait too: some brokers report less than they hold (nisshi: the start of the last
/// batch + 1 in offset queries; its fetches report the true end).
const READ_WAIT: Duration = Duration::from_secs(2);
const WATERMARKS_WAIT: Duration = Duration::from_secs(2);

/// A message's mark: a hash of its timestamp, key and payload; never 0 (0 means
/// "unknown" where marks are stored).
pub fn mark(timestamp: Option<i64>, key: Option<&[u8]>, payload: Option<&[u8]>) -> i64 {
    let mut h = Hash::default();
    h.word(timestamp.map_or(u64::MAX, |t| t as u64));
    for part in [key, payload] {
        match part {
            Some(bytes) => {
                h.word(bytes.len() as u64);
                h.bytes(bytes);
            }
            None => h.word(u64::MAX - 1),
        }
    }
    (h.finish() | 1) as i64
}

/// A small, stable hash, a word at a time (marks are stored, so they must not change
/// between builds; the standard library's hasher may).
#[derive(Default)]
struct Hash(u64);

impl Hash {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;

    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(Self::K).rotate_left(29);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let mut w = [0u8; 8];
        w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.word(u64::from_le_bytes(w));
    }

    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^ (x >> 33)
    }
}

/// What a read found at an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Mark(i64),
    /// No message there: the broker says the offset is outside the log, or the
    /// next message read is a later one.
    Absent,
    /// Nothing came back in time (a slow or unreachable broker): nothing is known.
    NoAnswer,
}

/// What the log a claim resumes is, compared with the one its position came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The same log: resume at the position.
    Same,
    /// Another log (the topic was created again): count it from its beginning.
    Recreated,
    /// The same log without (some of) what was counted: hold it for the operator.
    Truncated,
    /// The log does not reach far enough to tell yet: hold it and look again.
    Unproven,
    /// The log starts after the position: retention deleted events before they
    /// were counted.
    Ahead,
}

/// Judges the log of `claim`, whose offsets run from `low` to `high` (as the broker
/// reports them), reading messages with `read`. Only what was read decides: a log is
/// resumed when its last counted message is found, and counted anew only when its
/// anchor is found changed.
pub(crate) fn judge(
    claim: &Claim,
    low: i64,
    high: i64,
    mut read: impl FnMut(i64) -> Seen,
) -> Verdict {
    let Some(next) = claim.next_offset else {
        return Verdict::Same; // counted from the beginning anyway
    };
    if next < low {
        return Verdict::Ahead;
    }
    let Some(last) = claim.last_mark else {
        // Flushed before marks were kept: whether the log reaches the position is
        // all there is to go by. The reported end may be short of the log's (some
        // brokers report the start of the last batch), so a message read there
        // proves the log reaches it.
        if high >= next {
            return Verdict::Same;
        }
        return match read(next - 1) {
            Seen::Mark(_) => Verdict::Same,
            Seen::Absent => Verdict::Recreated,
            Seen::NoAnswer => Verdict::Unproven,
        };
    };
    if next - 1 < low {
        // Retention took the last counted message, but not the position.
        return Verdict::Same;
    }
    match read(next - 1) {
        Seen::Mark(m) if m == last => return Verdict::Same,
        // Only an answer may hold a partition for the operator.
        Seen::NoAnswer => return Verdict::Unproven,
        Seen::Mark(_) | Seen::Absent => {}
    }
    match claim.anchor {
        Some((at, anchor)) if at >= low => match read(at) {
            Seen::Mark(m) if m == anchor => Verdict::Truncated,
            Seen::Mark(_) => Verdict::Recreated,
            Seen::Absent | Seen::NoAnswer => Verdict::Unproven,
        },
        // No anchor to compare (aged out, or never counted from the beginning).
        _ => Verdict::Truncated,
    }
}

/// Reads single messages of the views topic, outside the consumer group.
pub struct LogProbe {
    consumer: BaseConsumer,
    topic: String,
}

impl LogProbe {
    /// `group` names the consumer group; librdkafka wants a group id also for a
    /// consumer that only assigns (it never joins it).
    pub fn new(kafka: &KafkaSettings, group: &str, topic: &str) -> KafkaResult<Self> {
        let consumer = kafka::base_config(kafka)
            .set("group.id", format!("{group}.log-check"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "25")
            .set("queued.min.messages", "1")
            .create()?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
        })
    }

    /// Judges the log `claim` resumes (see [`judge`]); `Unproven` when the broker
    /// does not say where the log starts and ends.
    pub fn check(&self, claim: &Claim) -> Verdict {
        if claim.next_offset.is_none() {
            return Verdict::Same;
        }
        let (low, high) = match self.bounds(claim.partition) {
            Ok(bounds) => bounds,
            Err(e) => {
                tracing::warn!(partition = claim.partition, error = %e, "cannot read the partition's log bounds");
                return Verdict::Unproven;
            }
        };
        tracing::debug!(partition = claim.partition, low, high, ?claim, "log check");
        judge(claim, low, high, |offset| {
            if offset < high {
                return self.read(claim.partition, offset, offset, READ_WAIT);
            }
            if high <= low {
                // The broker says the log is empty.
                return Seen::Absent;
            }
            // Past the reported end, which some brokers understate. Reading on from
            // the last message the broker says it holds either meets the offset or
            // reads through the log's true end without meeting it.
            self.read(claim.partition, high - 1, offset, READ_WAIT)
        })
    }

    /// The log's start and end as the broker reports them.
    pub fn bounds(&self, partition: i32) -> KafkaResult<(i64, i64)> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, WATERMARKS_WAIT)
    }

    /// The mark of the message at `offset`, reading from `from` (at or before it).
    /// Each step (the first message, each next one, the log's end) may take `wait`;
    /// silence after messages before `offset` were read means the log ends there.
    fn read(&self, partition: i32, from: i64, offset: i64, wait: Duration) -> Seen {
        let mut tpl = TopicPartitionList::new();
        let assigned = tpl
            .add_partition_offset(&self.topic, partition, Offset::Offset(from))
            .and_then(|()| self.consumer.assign(&tpl));
        if let Err(e) = assigned {
            tracing::warn!(partition, offset, error = %e, "cannot read a message for the log check");
            return Seen::NoAnswer;
        }
        let mut deadline = Instant::now() + wait;
        let mut seen = Seen::NoAnswer;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.consumer.poll(left) {
                Some(Ok(m)) if m.partition() == partition && m.offset() < offset => {
                    // On the way: the log reaches this far; silence now means it
                    // ends here.
                    seen = Seen::Absent;
                    deadline = Instant::now() + wait;
                }
                Some(Ok(m)) if m.partition() == partition && m.offset() == offset => {
                    seen = Seen::Mark(mark(m.timestamp().to_millis(), m.key(), m.payload()));
                    break;
                }
                // Past the offset (it is not a message of its own), or another
                // partition's leftover.
                Some(Ok(m)) if m.partition() == partition && m.offset() > offset => {
                    seen = Seen::Absent;
                    break;
                }
                Some(Ok(_)) => {}
                // The log ends at the offset (the end a fetch reports, which brokers
                // that understate it in offset queries report truly), or before it.
                // (librdkafka may report it as a global error, without the partition:
                // this consumer reads one partition at a time.)
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    seen = Seen::Absent;
                    break;
                }
                Some(Err(e))
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange
                        )
                    ) =>
                {
                    seen = Seen::Absent;
                    break;
                }
                // Anything else tells nothing about this offset.
                Some(Err(e)) => {
                    tracing::debug!(partition, offset, error = %e, "reading a message for the log check");
                }
                // Nothing yet, or an event that was not a message.
                None => {}
            }
        }
        let _ = self.consumer.unassign();
        tracing::debug!(partition, offset, ?seen, "log check read");
        seen
    }
}

#[cfg(test)]
mod tests;
