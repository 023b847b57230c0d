//! Connections over TLS to private servers with self-signed certificates: Postgres
//! (`sslmode=verify-full`, a server that refuses plain connections), Redis
//! (`rediss://` with `REDIS_TLS_CA`, a server with no plain port) and Kafka (the dev
//! broker speaking TLS, `KAFKA_SECURITY_PROTOCOL=ssl`). The pipeline counts exactly
//! over them; a certificate from another CA, or for another host, is refused at
//! start-up with a message that says so.

use std::net::SocketAddr;
use std::path::Path;

use viewpipe_devbroker::DevBroker;
use viewpipe_tests::chaos::Load;
use viewpipe_tests::faults::Running;
use viewpipe_tests::pg_server::PgServer;
use viewpipe_tests::redis_server::RedisServer;
use viewpipe_tests::tls::TestCerts;
use viewpipe_tests::{Stack, PARTITIONS};

/// The admin URL of a TLS Postgres, checked against `ca` (`verify-full`: the
/// certificate must be signed by `ca` and name `localhost`).
fn verify_full_url(pg: &PgServer, ca: &Path) -> String {
    format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.addr.port(),
        ca.display()
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A dev broker speaking only TLS, with viewpipe's topics.
async fn tls_broker(certs: &TestCerts) -> DevBroker {
    let cert = std::fs::read(&certs.cert).expect("cert");
    let key = std::fs::read(&certs.key).expect("key");
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let broker = DevBroker::start_tls(listen, &cert, &key)
        .await
        .expect("TLS dev broker");
    for topic in ["views", "views.replay", "views.dlq"] {
        broker.create_topic(topic, PARTITIONS).expect("topic");
    }
    broker
}

/// Every store over TLS: Postgres with verify-full (the server accepts no plain
/// TCP connection), Redis on a TLS-only port, Kafka through the TLS dev broker.
/// Views are posted concurrently while a reader polls; every one counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_counts_exactly_over_tls_to_postgres_redis_and_kafka() {
    let certs = TestCerts::new("stores").expect("certs");
    let pg = PgServer::start_tls(&certs).await.expect("TLS postgres");
    let redis = RedisServer::start_tls(&certs).await.expect("TLS redis");

    // The servers refuse what is not TLS, so the counts below came over TLS.
    let plain_pg = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
        pg.addr.port()
    );
    let refused = sea_orm::Database::connect(&plain_pg).await;
    let refusal = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        refusal.contains("no encryption") || refusal.contains("pg_hba.conf"),
        "a plain connection to the TLS Postgres was not refused: {refusal:?}"
    );
    let plain_redis = viewpipe_runtime::redis_conn::RedisConn::connect(
        &format!("redis://127.0.0.1:{}", redis.addr.port()),
        viewpipe_runtime::redis_conn::Timeouts::default(),
    )
    .await;
    assert!(
        plain_redis.is_err(),
        "a plain connection to the TLS Redis answered"
    );

    let broker = tls_broker(&certs).await;
    let stack = Stack::on_postgres(&verify_full_url(&pg, &certs.ca), PARTITIONS)
        .await
        .expect("stack on the TLS postgres")
        .with_redis(&redis.url());
    assert!(
        stack.db_url.contains("sslmode=verify-full"),
        "{}",
        stack.db_url
    );
    let (brokers, ca) = (broker.addr().to_string(), path(&certs.ca));
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_SECURITY_PROTOCOL", "ssl"),
        ("KAFKA_TLS_CA", ca.as_str()),
        ("REDIS_TLS_CA", ca.as_str()),
    ];
    let _aggregator = stack
        .spawn_aggregator(&env)
        .await
        .expect("aggregator over TLS");
    let ingest = stack.spawn_ingest(&env).await.expect("ingest over TLS");
    let load = Load {
        events: 3_000,
        keys: 60,
        days: 2,
        rate: 600.0,
        concurrency: 16,
    };
    Running::begin(&stack, &ingest, load)
        .end(&stack, &ingest, "Postgres, Redis and Kafka over TLS")
        .await;
}

/// The start-up error of an ingest with `env`, which must fail.
async fn refused(stack: &Stack, env: &[(&str, &str)]) -> String {
    match stack.spawn_ingest(env).await {
        Ok(_) => panic!("the ingest started with {env:?}"),
        Err(e) => format!("{e:#}"),
    }
}

/// A server whose certificate another CA signed is refused, by each of the three
/// clients, with a start-up error that names the server and the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_from_another_ca_is_refused_with_a_clear_error() {
    let certs = TestCerts::new("server").expect("certs");
    let other = TestCerts::new("other").expect("other CA");
    let wrong_ca = path(&other.ca);
    let stack = Stack::start().await.expect("stack");

    let pg = PgServer::start_tls(&certs).await.expect("TLS postgres");
    let db = verify_full_url(&pg, &other.ca);
    let e = refused(&stack, &[("DATABASE_URL", db.as_str())]).await;
    println!("Postgres with the wrong CA: {e}");
    assert!(e.contains(&format!("localhost:{}", pg.addr.port())), "{e}");
    assert!(e.contains("not signed by a CA in sslrootcert"), "{e}");

    let redis = RedisServer::start_tls(&certs).await.expect("TLS redis");
    let url = redis.url();
    let e = refused(
        &stack,
        &[
            ("REDIS_URL", url.as_str()),
            ("REDIS_TLS_CA", wrong_ca.as_str()),
        ],
    )
    .await;
    println!("Redis with the wrong CA: {e}");
    assert!(
        e.contains(&format!(
            "cannot reach Redis at localhost:{}",
            redis.addr.port()
        )),
        "{e}"
    );
    assert!(e.contains("not signed by a CA in REDIS_TLS_CA"), "{e}");

    let broker = tls_broker(&certs).await;
    let brokers = broker.addr().to_string();
    let kafka = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_SECURITY_PROTOCOL", "ssl"),
    ];
    let e = refused(
        &stack,
        &[kafka[0], kafka[1], ("KAFKA_TLS_CA", wrong_ca.as_str())],
    )
    .await;
    println!("Kafka with the wrong CA: {e}");
    assert!(
        e.contains(&format!("cannot reach Kafka at {brokers} (ssl)")),
        "{e}"
    );
    assert!(e.contains("certificate verify failed"), "{e}");
    // And plain Kafka against the TLS port is not mistaken for a broker.
    let e = refused(&stack, &[kafka[0]]).await;
    assert!(
        e.contains(&format!("cannot reach Kafka at {brokers} (plaintext)")),
        "{e}"
    );
}

/// A broker certificate signed by the trusted CA but for another host is refused
/// while the hostname check is on (the default) and accepted with
/// `KAFKA_TLS_VERIFY_HOSTNAME=false`. SASL settings reach the wire: the dev broker
/// has no SASL, and the error says the handshake was attempted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_checks_the_hostname_and_attempts_sasl() {
    let certs = TestCerts::for_names("elsewhere", &["kafka.elsewhere.example"]).expect("certs");
    let broker = tls_broker(&certs).await;
    let stack = Stack::start().await.expect("stack");
    let (brokers, ca) = (broker.addr().to_string(), path(&certs.ca));
    let tls = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_SECURITY_PROTOCOL", "ssl"),
        ("KAFKA_TLS_CA", ca.as_str()),
    ];
    let e = refused(&stack, &tls).await;
    println!("Kafka certificate for another host: {e}");
    assert!(e.contains("certificate verify failed"), "{e}");

    let mut unchecked = tls.to_vec();
    unchecked.push(("KAFKA_TLS_VERIFY_HOSTNAME", "false"));
    let ingest = stack
        .spawn_ingest(&unchecked)
        .await
        .expect("ingest without the hostname check");
    let posted = reqwest::Client::new()
        .post(ingest.url("/api/views"))
        .json(&serde_json::json!({"contentId": "tls-1", "contentType": "resource"}))
        .send()
        .await
        .expect("post");
    assert_eq!(posted.status(), 202, "a view through the TLS broker");

    let plain = stack.broker.addr().to_string();
    let sasl = [
        ("KAFKA_BROKERS", plain.as_str()),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
        ("KAFKA_SASL_USERNAME", "app"),
        ("KAFKA_SASL_PASSWORD", "never-logged-pw"),
    ];
    let e = refused(&stack, &sasl).await;
    println!("SASL against a broker without SASL: {e}");
    assert!(e.contains("(sasl_plaintext)"), "{e}");
    assert!(e.to_uppercase().contains("SASL"), "{e}");
    assert!(
        !e.contains("never-logged-pw"),
        "the password reached an error: {e}"
    );
}
