//! `ingest publish`: an NDJSON file of views onto a topic, by default the replay
//! topic that `aggregator backfill` reads.
//!
//! Each line is validated as the API validates a view (the API's object form) or a
//! message of the views topic (event JSON, `"v":1`), and published with the same
//! producer settings and acknowledgement rule: a line counts as published once the
//! broker acknowledged it. Many lines are in flight at once. Ctrl-C stops reading,
//! waits for the lines in flight, and says from which line a rerun resumes
//! (`--skip`).

use std::io::Write as _;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use viewpipe_runtime::progress::Progress;
use viewpipe_runtime::{kafka, Shutdown};
use viewpipe_schema::{ContentKey, Namespaces, View};

use crate::settings::PublishArgs;

/// Most lines waiting for their acknowledgement.
const IN_FLIGHT: usize = 20_000;
/// Rejected lines printed at the end (all go to `--rejects`).
const SHOWN_REJECTS: usize = 20;

/// Exit status when some lines were rejected.
pub(crate) const EXIT_REJECTED: i32 = 2;
/// Exit status when stopped by a signal.
pub(crate) const EXIT_INTERRUPTED: i32 = 130;

/// A line that was not published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reject {
    pub line: u64,
    pub code: String,
    pub message: String,
}

/// Validates one line; `now` fills a missing `occurredAt` and bounds it.
pub(crate) fn parse_line<'l>(
    line: &'l str,
    namespaces: &Namespaces,
    now: chrono::DateTime<Utc>,
) -> Result<(ContentKey, View<'l>), (String, String)> {
    viewpipe_schema::event::check_json(line.as_bytes()).map_err(|e| {
        (
            "invalid_json".to_owned(),
            format!("line is not valid JSON: {e}"),
        )
    })?;
    // Either form gets `receivedAt` if it has none; only the API form may lack
    // `occurredAt`.
    let event = View::from_history(line.as_bytes(), namespaces, now)
        .map_err(|e| (e.code().to_owned(), e.to_string()))?
        .received(now);
    Ok((event.key(), event))
}

/// Runs `ingest publish`; returns the exit status.
pub async fn run(args: &PublishArgs) -> anyhow::Result<i32> {
    let producer: FutureProducer = kafka::producer_config(&args.kafka)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", (IN_FLIGHT * 2).to_string())
        .create()
        .context("invalid Kafka settings")?;
    check_topic(&producer, &args.topic, &args.kafka.brokers).await?;
    let (input, size) = open(&args.input).await?;
    let mut rejects = Rejects::create(args.rejects.as_deref())?;
    let shutdown = Shutdown::default();
    shutdown.on_signals();

    let started = Instant::now();
    let mut progress = Progress::new(&format!("publishing to {}", args.topic), size);
    let mut lines = input.lines();
    let mut in_flight = FuturesUnordered::new();
    let (mut line_no, mut bytes, mut published) = (0u64, 0u64, 0u64);
    let interrupted = loop {
        if shutdown.is_triggered() {
            break true;
        }
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break false,
            Err(e) => return Err(e).with_context(|| format!("cannot read line {}", line_no + 1)),
        };
        line_no += 1;
        bytes += line.len() as u64 + 1;
        if line_no <= args.skip || line.trim().is_empty() {
            continue;
        }
        let now = Utc::now();
        match parse_line(&line, &args.namespaces, now) {
            Ok((key, event)) => {
                while in_flight.len() >= IN_FLIGHT {
                    if let Some((n, outcome)) = in_flight.next().await {
                        settle(n, outcome, &mut published, &mut rejects);
                    }
                }
                let payload = event.to_json();
                let delivery = send(&producer, &args.topic, &key, &payload, &event).await;
                in_flight.push(delivery_of(line_no, delivery));
            }
            Err((code, message)) => rejects.add(Reject {
                line: line_no,
                code,
                message,
            }),
        }
        progress.update(
            bytes,
            published,
            &format!(
                "line {line_no}, {published} published, {} rejected",
                rejects.count
            ),
        );
    };
    while let Some((n, outcome)) = in_flight.next().await {
        settle(n, outcome, &mut published, &mut rejects);
    }
    rejects.close()?;
    let rejected = rejects.count;
    progress.finish(
        bytes,
        published,
        &format!("line {line_no}, {published} published, {rejected} rejected"),
    );
    let mut rejects = rejects.shown;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {published} events to {} in {secs:.1} s ({:.0} events/s); rejected {rejected}",
        args.topic,
        published as f64 / secs.max(0.001)
    );
    rejects.sort_by_key(|r| r.line);
    for r in &rejects {
        println!("  line {}: {}: {}", r.line, r.code, r.message);
    }
    if rejected > rejects.len() as u64 {
        let more = rejected - rejects.len() as u64;
        match &args.rejects {
            Some(path) => println!("  ... and {more} more, all in {}", path.display()),
            None => println!("  ... and {more} more (--rejects FILE lists them all)"),
        }
    }
    if interrupted {
        println!(
            "stopped after line {line_no}: every line up to it is published or listed as rejected; resume with --skip {line_no}"
        );
        return Ok(EXIT_INTERRUPTED);
    }
    Ok(if rejected > 0 { EXIT_REJECTED } else { 0 })
}

type Delivery = rdkafka::producer::DeliveryFuture;

/// Queues one event; while the producer's queue is full, waits for it to drain.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &ContentKey,
    payload: &[u8],
    event: &View<'_>,
) -> Result<Delivery, KafkaError> {
    loop {
        let record = FutureRecord::to(topic)
            .key(key.as_str())
            .payload(payload)
            .timestamp(event.occurred_at.unwrap_or_default().timestamp_millis());
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

async fn delivery_of(
    line: u64,
    delivery: Result<Delivery, KafkaError>,
) -> (u64, Result<(), String>) {
    let outcome = match delivery {
        Err(e) => Err(e.to_string()),
        Ok(d) => match d.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(e.to_string()),
            Err(_) => Err("the producer went away".to_owned()),
        },
    };
    (line, outcome)
}

/// Rejected lines: counted, the first few kept to print, all written to the
/// `--rejects` file when there is one.
struct Rejects {
    file: Option<std::io::BufWriter<std::fs::File>>,
    shown: Vec<Reject>,
    count: u64,
}

impl Rejects {
    fn create(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let file = match path {
            Some(path) => Some(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            )),
            None => None,
        };
        Ok(Self {
            file,
            shown: Vec::new(),
            count: 0,
        })
    }

    fn add(&mut self, r: Reject) {
        if let Some(f) = self.file.as_mut() {
            let json = serde_json::json!({"line": r.line, "code": r.code, "message": r.message});
            let _ = writeln!(f, "{json}");
        }
        self.count += 1;
        if self.shown.len() < SHOWN_REJECTS {
            self.shown.push(r);
        }
    }

    fn close(&mut self) -> anyhow::Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.flush().context("cannot write the rejects file")?;
        }
        Ok(())
    }
}

fn settle(line: u64, outcome: Result<(), String>, published: &mut u64, rejects: &mut Rejects) {
    match outcome {
        Ok(()) => *published += 1,
        Err(e) => rejects.add(Reject {
            line,
            code: "not_acknowledged".to_owned(),
            message: format!("the broker did not acknowledge it: {e}"),
        }),
    }
}

/// Fails with a clear message when the broker is away or the topic missing.
async fn check_topic(producer: &FutureProducer, topic: &str, brokers: &str) -> anyhow::Result<()> {
    let client = producer.clone();
    let topic_owned = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(Some(&topic_owned), std::time::Duration::from_secs(10))
    })
    .await?
    .map_err(|e| anyhow::anyhow!("cannot reach Kafka at {brokers}: {e}"))?;
    let found = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if !found {
        anyhow::bail!("topic {topic} does not exist at {brokers}");
    }
    Ok(())
}

/// The input and its size in bytes when known (a file).
async fn open(input: &str) -> anyhow::Result<(Box<dyn AsyncBufRead + Unpin + Send>, Option<u64>)> {
    if input == "-" {
        return Ok((Box::new(BufReader::new(tokio::io::stdin())), None));
    }
    let file = tokio::fs::File::open(input)
        .await
        .with_context(|| format!("cannot open {input}"))?;
    let size = file.metadata().await.ok().map(|m| m.len());
    Ok((Box::new(BufReader::with_capacity(1 << 16, file)), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> Namespaces {
        "resource".parse().expect("namespaces")
    }

    #[test]
    fn both_forms_parse_and_bad_lines_say_why() {
        let now = Utc::now();
        let api = parse_line(
            r#"{"contentType":"resource","contentId":"a","occurredAt":"2026-01-05T10:00:00Z"}"#,
            &ns(),
            now,
        );
        let (key, event) = api.expect("API form");
        assert_eq!(key.as_str(), "resource:a");
        assert_eq!(
            event.occurred_at.map(|at| at.to_rfc3339()).as_deref(),
            Some("2026-01-05T10:00:00+00:00")
        );
        let wire = parse_line(
            r#"{"v":1,"contentType":"resource","contentId":"b","occurredAt":"2026-01-05T10:00:00Z"}"#,
            &ns(),
            now,
        );
        assert_eq!(wire.expect("event form").0.as_str(), "resource:b");
        let cases = [
            ("not json", "invalid_json"),
            (
                r#"{"contentType":"video","contentId":"a"}"#,
                "unknown_namespace",
            ),
            (
                r#"{"v":2,"contentType":"resource","contentId":"a","occurredAt":"2026-01-05T10:00:00Z"}"#,
                "unsupported_version",
            ),
            (r#"{"contentType":"resource"}"#, "missing_field"),
        ];
        for (line, code) in cases {
            let err = parse_line(line, &ns(), now).expect_err(line);
            assert_eq!(err.0, code, "{line}: {}", err.1);
        }
    }
}
