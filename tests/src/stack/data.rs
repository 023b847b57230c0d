//! What a test reads from and does to its stack's broker, Postgres and Redis.

use super::*;

impl Stack {
    /// Messages in the views topic: the sum of its partitions' high watermarks.
    pub async fn published(&self) -> i64 {
        let brokers = self.broker.addr().to_string();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()
                .expect("consumer");
            (0..PARTITIONS)
                .map(|p| {
                    consumer
                        .fetch_watermarks("views", p, Duration::from_secs(10))
                        .expect("watermarks")
                        .1
                })
                .sum()
        })
        .await
        .expect("watermarks task")
    }

    /// Produces `events` to `topic` as another application (or release) would: an
    /// idempotent producer, each keyed `"{contentType}:{contentId}"`, sent in order
    /// and all acknowledged before this returns.
    pub async fn produce(&self, topic: &str, events: &[serde_json::Value]) {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.broker.addr().to_string())
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        let sends = events.iter().map(|event| {
            let key = format!("{}:{}", event["contentType"], event["contentId"]).replace('"', "");
            let payload = event.to_string();
            let producer = &producer;
            async move {
                let record = FutureRecord::to(topic).key(&key).payload(&payload);
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            }
        });
        for sent in futures::future::join_all(sends).await {
            sent.expect("produced");
        }
    }

    /// Waits until the views topic holds `n` messages: fails if it holds more, or
    /// fewer after 30 s.
    pub async fn wait_published(&self, n: i64) {
        let what = format!("{n} views published");
        crate::eventually(Duration::from_secs(30), &what, || async {
            let now = self.published().await;
            assert!(
                now <= n,
                "{now} views published, more than the {n} expected"
            );
            if now == n {
                Ok(())
            } else {
                Err(format!("{now}"))
            }
        })
        .await;
    }

    /// Drops the database and this stack's Redis keys now (dropping the stack does
    /// the same, errors aside).
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.cleaned = true;
        drop_database_and_keys(
            &self.admin_url,
            &self.id,
            &self.redis_url,
            &self.redis_prefix,
        )
        .await
    }

    /// This stack with the services using the Redis (or Redis Cluster) at `url`.
    pub fn with_redis(mut self, url: &str) -> Self {
        url.clone_into(&mut self.redis_url);
        self
    }

    /// A Redis connection and every key under this stack's prefix (SCAN, so a large
    /// shared keyspace is never blocked on).
    pub async fn redis_keys(
        &self,
    ) -> anyhow::Result<(viewpipe_runtime::redis_conn::RedisConn, Vec<String>)> {
        keys_under(&self.redis_url, &self.redis_prefix).await
    }

    /// Deletes every Redis key of this stack's deployment, as a Redis restart without
    /// persistence would (FLUSHALL would also wipe the keys of tests running beside
    /// this one): in one atomic step on one server, key by key on a cluster.
    /// Returns how many keys were deleted.
    pub async fn wipe_redis(&self) -> anyhow::Result<usize> {
        let (mut conn, keys) = self.redis_keys().await?;
        if conn.is_cluster() {
            conn.per_partition(&keys, false, String::clone, |pipe, key| {
                pipe.cmd("DEL").arg(key);
            })
            .await?;
            return Ok(keys.len());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for chunk in keys.chunks(1000) {
            pipe.cmd("DEL").arg(chunk).ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
        Ok(keys.len())
    }

    /// Terminates every Postgres connection to this stack's database (the services'
    /// pools and this harness' own), as a Postgres restart would.
    pub async fn kill_postgres_connections(&self) -> anyhow::Result<usize> {
        let admin = Database::connect(&self.admin_url).await?;
        let rows = admin
            .query_all(Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = 'vp_test_{}' AND pid <> pg_backend_pid()",
                    self.id
                ),
            ))
            .await?;
        admin.close().await.ok();
        Ok(rows.len())
    }

    /// Runs `aggregator flush` for this stack; returns its exit status and output.
    pub async fn flush_command(&self) -> anyhow::Result<(bool, String)> {
        let out = Command::new(bin("aggregator"))
            .arg("flush")
            .envs(self.env())
            .arg("--timeout-ms")
            .arg("20000")
            .output()
            .await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// Runs a query returning `(text, int8)` rows.
    pub async fn rows(&self, sql: &str) -> anyhow::Result<Vec<(String, i64)>> {
        let rows = self
            .db
            .query_all(Statement::from_string(sea_orm::DbBackend::Postgres, sql))
            .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?)))
            .collect()
    }

    /// Postgres' grand total: every view flushed.
    pub async fn flushed_total(&self) -> anyhow::Result<i64> {
        let rows = self
            .rows("SELECT 'all', COALESCE(SUM(total), 0)::int8 FROM view_counter_total")
            .await?;
        Ok(rows.first().map_or(0, |r| r.1))
    }

    /// Every key's flushed total.
    pub async fn totals(&self) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
        Ok(self
            .rows("SELECT key, total FROM view_counter_total")
            .await?
            .into_iter()
            .collect())
    }

    /// Waits until Postgres' grand total reaches `expected`; an error (which the
    /// caller may report with what else it knows) when it passes it, when a query
    /// fails, or after `within`.
    pub async fn wait_flushed_total(&self, expected: i64, within: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let sum = self.flushed_total().await?;
            if sum == expected {
                return Ok(());
            }
            if sum > expected {
                anyhow::bail!("Postgres holds {sum} views, more than the {expected} sent");
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("Postgres holds {sum} views after {within:?}; expected {expected}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
