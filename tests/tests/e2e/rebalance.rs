//! Rebalances injected at will, with the callbacks' operations driven directly
//! against real Redis, Postgres and a Kafka-protocol broker: the dev broker only
//! rebalances on a timer, so a revoke and re-assign inside one batch never happens
//! there, while real Kafka completes one in milliseconds.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::TopicPartitionList;

use aggregator::aggregator::{Aggregator, Claimed, Parts, Tuning};
use aggregator::dlq::Dlq;
use aggregator::store::pending::Pending;
use aggregator::store::pending::PendingStore;
use viewpipe_schema::pending::Layout;
use viewpipe_schema::Scope;
use viewpipe_tests::{redis_url, Stack};

fn event(offset: i64) -> Vec<u8> {
    format!(
        r#"{{"v":1,"contentType":"resource","contentId":"fast","occurredAt":"2026-11-20T10:00:00Z","path":"/p{offset}"}}"#
    )
    .into_bytes()
}

fn agg_scope(stack: &Stack) -> Scope {
    Scope {
        group: stack.group.clone(),
        topic: "views".into(),
    }
}

async fn store(stack: &Stack) -> PendingStore {
    let conn = redis::Client::open(redis_url())
        .expect("redis url")
        .get_connection_manager()
        .await
        .expect("redis");
    let layout = Layout::new(&stack.redis_prefix, &stack.group, "views").expect("layout");
    PendingStore::new(
        viewpipe_runtime::redis_conn::RedisConn::Single(conn),
        layout,
    )
}

async fn aggregator(stack: &Stack) -> Arc<Aggregator> {
    let brokers = stack.broker.addr().to_string();
    Arc::new(Aggregator::new(Parts {
        probe: aggregator::log_check::LogProbe::new(&stack.kafka(), &stack.group, "views")
            .expect("probe"),
        rt: tokio::runtime::Handle::current(),
        db: stack.db.clone(),
        scope: agg_scope(stack),
        pending: Pending::Redis(Box::new(store(stack).await)),
        dlq: Dlq {
            producer: viewpipe_runtime::kafka::producer_config(
                &viewpipe_runtime::kafka::KafkaSettings::plain(brokers.clone()),
            )
            .create()
            .expect("producer"),
            topic: "views.dlq".into(),
        },
        shutdown: viewpipe_runtime::Shutdown::default(),
        health: viewpipe_runtime::Health::new(),
        requested_flush: Arc::new(AtomicI64::new(0)),
        tuning: Tuning {
            flush_interval: Duration::from_secs(3600),
            flush_max_pending: 1_000_000,
            revoke_deadline: Duration::from_secs(5),
        },
    }))
}

/// Claims partition 0 and assigns it, as the assign callback does.
fn assign(agg: &Aggregator, consumer: &BaseConsumer) {
    let Claimed::Owned(claim, fence) = agg.claim(0, Duration::from_secs(1)) else {
        panic!("partition 0 claimed");
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("views", 0);
    agg.assign(consumer, &mut tpl, vec![(claim, fence, None)], Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_and_reassign_inside_one_batch_counts_every_offset_once() {
    let stack = Stack::start().await.expect("stack");
    let agg = aggregator(&stack).await;
    let consumer: BaseConsumer = viewpipe_runtime::kafka::base_config(&stack.kafka())
        .set("group.id", &stack.group)
        .create()
        .expect("consumer");
    let a = agg.clone();
    tokio::task::spawn_blocking(move || {
        assign(&a, &consumer);
        // Polled before the rebalance: offsets 0..10.
        for offset in 0..10 {
            a.add(0, offset, Some(&event(offset)), None);
        }
        // A rebalance inside the next poll takes the partition away and gives it
        // back at Postgres' position (nothing was flushed: offset 0) ...
        a.revoke(&consumer);
        assign(&a, &consumer);
        // ... and the consumer fetches 0..10 again, plus two new ones.
        for offset in 0..12 {
            a.add(0, offset, Some(&event(offset)), None);
        }
        // A message polled twice inside one batch (a seek back) counts once too.
        a.add(0, 11, Some(&event(11)), None);
        a.process();
        // The same partition claimed again while a batch is gathered (a rejoin the
        // callbacks never saw as a revoke): what was gathered under the old claim is
        // dropped, the consumer fetches from Postgres' position (still 0) again, and
        // offsets Redis already holds are re-counted in memory only.
        for offset in 12..15 {
            a.add(0, offset, Some(&event(offset)), None);
        }
        assign(&a, &consumer);
        for offset in 0..15 {
            a.add(0, offset, Some(&event(offset)), None);
        }
        a.process();
    })
    .await
    .expect("join");
    let key = viewpipe_schema::ContentKey::new("resource", "fast");
    let reader = ingest::read::Reader::new(
        stack.db.clone(),
        agg_scope(&stack),
        Some({
            let store = store(&stack).await;
            ingest::read::pending::PendingReader::new(store.connection(), store.layout().clone())
        }),
    );
    assert_eq!(
        reader.total(&key).await.expect("read"),
        15,
        "pending in Redis, read before any flush"
    );
    let a = agg.clone();
    let consumer: BaseConsumer = viewpipe_runtime::kafka::base_config(&stack.kafka())
        .set("group.id", &stack.group)
        .create()
        .expect("consumer");
    tokio::task::spawn_blocking(move || a.finish(&consumer, Duration::from_secs(10)))
        .await
        .expect("join");
    assert_eq!(
        reader.total(&key).await.expect("read"),
        15,
        "after the flush"
    );
    let rows = stack
        .rows("SELECT key, total FROM view_counter_total")
        .await
        .expect("rows");
    println!("15 offsets, polled up to three times across rebalances: Postgres holds {rows:?}");
    assert_eq!(rows, vec![("resource:fast".to_owned(), 15)]);
    let daily = stack
        .rows("SELECT key || '@' || day::text, count FROM view_counter_daily")
        .await
        .expect("daily");
    assert_eq!(daily, vec![("resource:fast@2026-11-20".to_owned(), 15)]);
}
