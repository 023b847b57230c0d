//! A development Kafka broker: librdkafka's mock cluster on a fixed address.
//!
//! The mock cluster speaks the real Kafka protocol but listens on a random loopback
//! port. We listen on the address the user asked for, forward every connection to the
//! mock broker, and make the broker advertise our address in its metadata, so clients
//! only ever see the fixed address. Topics must be created here: the mock cluster
//! does not implement CreateTopics.
//!
//! Started with a certificate ([`DevBroker::start_tls`]), it speaks TLS to clients
//! (`security.protocol=ssl`) and plain Kafka to the mock broker behind it: enough to
//! test a client's TLS settings, CA and hostname check against a real handshake.
//!
//! Limits worth knowing, all librdkafka's mock cluster's: data lives in memory only;
//! a partition keeps a bounded log (about 5 MiB or 100k batches) and drops its oldest
//! batches silently, like a short retention; there is no CreateTopics or
//! DeleteTopics (topics are made here), no `offsets_for_times`, and no transaction
//! markers; a new group's first join waits 3 s unless the initial rebalance delay is
//! set to 0, as `advertise` does.

use std::ffi::CString;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{crypto, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The id librdkafka gives the single mock broker.
const BROKER_ID: i32 = 1;

/// A running dev broker; dropping it stops it.
pub struct DevBroker {
    // Owns the mock cluster; every mock operation goes through its client.
    producer: BaseProducer,
    addr: SocketAddr,
    forwarder: JoinHandle<()>,
    tls: Option<TlsAcceptor>,
}

impl DevBroker {
    /// Starts a broker listening on `listen` (port 0 picks a free one).
    pub async fn start(listen: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(listen, None).await
    }

    /// Starts a broker that speaks TLS on `listen`, presenting the PEM certificate
    /// chain `cert` and its private key `key`.
    pub async fn start_tls(listen: SocketAddr, cert: &[u8], key: &[u8]) -> anyhow::Result<Self> {
        Self::start_with(listen, Some(acceptor(cert, key)?)).await
    }

    async fn start_with(listen: SocketAddr, tls: Option<TlsAcceptor>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let producer: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .set("log_level", "3")
            .create()
            .context("cannot create the mock cluster")?;
        let mock = producer
            .client()
            .mock_cluster()
            .ok_or_else(|| anyhow!("librdkafka did not create a mock cluster"))?;
        let backend: SocketAddr = mock
            .bootstrap_servers()
            .split(',')
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("unexpected mock bootstrap {:?}", mock.bootstrap_servers()))?;
        drop(mock);
        advertise(&producer, addr)?;
        let forwarder = tokio::spawn(forward(listener, backend, tls.clone()));
        Ok(Self {
            producer,
            addr,
            forwarder,
            tls,
        })
    }

    /// Stops the broker and starts an empty one on the same address, as a restart of
    /// this in-memory broker does: every topic and message is gone.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.forwarder.abort();
        // The listener is dropped with the aborted task, shortly.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match Self::start_with(self.addr, self.tls.clone()).await {
                Ok(broker) => {
                    *self = broker;
                    return Ok(());
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The address clients bootstrap from.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        self.mock()?
            .create_topic(name, partitions, 1)
            .with_context(|| format!("cannot create topic {name}"))
    }

    /// Makes the broker unreachable (connections closed, new ones refused by the
    /// broker) until [`DevBroker::up`].
    pub fn down(&self) -> anyhow::Result<()> {
        self.mock()?.broker_down(BROKER_ID).context("broker_down")
    }

    pub fn up(&self) -> anyhow::Result<()> {
        self.mock()?.broker_up(BROKER_ID).context("broker_up")
    }

    fn mock(
        &self,
    ) -> anyhow::Result<rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext>>
    {
        self.producer
            .client()
            .mock_cluster()
            .ok_or_else(|| anyhow!("mock cluster is gone"))
    }
}

impl Drop for DevBroker {
    fn drop(&mut self) {
        self.forwarder.abort();
        let _ = self.producer.flush(Duration::from_millis(100));
    }
}

/// Points the broker's advertised listener at `addr` and removes the 3 s delay the
/// mock group coordinator otherwise adds before a new group's first join.
#[allow(unsafe_code)]
fn advertise(producer: &BaseProducer, addr: SocketAddr) -> anyhow::Result<()> {
    let host = CString::new(addr.ip().to_string())?;
    // SAFETY: the pointer comes from a live client that owns the mock cluster and
    // outlives this call; librdkafka copies `host` and locks the cluster internally.
    unsafe {
        let cluster =
            rdkafka::bindings::rd_kafka_handle_mock_cluster(producer.client().native_ptr());
        if cluster.is_null() {
            return Err(anyhow!("librdkafka did not create a mock cluster"));
        }
        rdkafka::bindings::rd_kafka_mock_broker_set_host_port(
            cluster,
            BROKER_ID,
            host.as_ptr(),
            i32::from(addr.port()),
        );
        rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
    }
    Ok(())
}

/// A TLS server configuration from PEM files' contents.
fn acceptor(cert: &[u8], key: &[u8]) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .context("the TLS certificate is not PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key).context("the TLS key is not a PEM private key")?;
    let config = ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS certificate and key do not go together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn forward(listener: TcpListener, backend: SocketAddr, tls: Option<TlsAcceptor>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let Ok(mut server) = TcpStream::connect(backend).await else {
                return;
            };
            let _ = server.set_nodelay(true);
            match tls {
                None => {
                    let mut client = client;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                // A client that fails the handshake (it does not trust our
                // certificate) is simply dropped, as a real broker would.
                Some(tls) => {
                    if let Ok(mut client) = tls.accept(client).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }
            }
        });
    }
}
