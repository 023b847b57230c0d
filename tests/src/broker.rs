//! The Kafka-protocol broker of a test stack.
//!
//! By default the dev broker (librdkafka's mock cluster, in this process). With
//! `VIEWPIPE_TEST_BROKER=nisshi` (`deploy/local/test --broker nisshi`), a private
//! `nisshi` process per stack: an independent Kafka implementation in Rust (the
//! broker formerly called Tansu). `NISSHI_BIN` names its binary.
//!
//! The dev broker's fault injection (down, up, restart) exists only on the dev broker;
//! tests that need it check [`Broker::can_inject_faults`] and skip on nisshi.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use viewpipe_devbroker::DevBroker;

use crate::free_addr;

pub enum Broker {
    Dev(DevBroker),
    Nisshi(Nisshi),
}

/// Which broker the tests run against: `dev` (default) or `nisshi`.
pub fn kind() -> String {
    std::env::var("VIEWPIPE_TEST_BROKER").unwrap_or_else(|_| "dev".to_owned())
}

impl Broker {
    /// A broker of the kind [`kind`] names, on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        match kind().as_str() {
            "dev" => Ok(Self::Dev(DevBroker::start("127.0.0.1:0".parse()?).await?)),
            "nisshi" => Ok(Self::Nisshi(Nisshi::start().await?)),
            other => bail!("VIEWPIPE_TEST_BROKER={other}: expected dev or nisshi"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Dev(b) => b.addr(),
            Self::Nisshi(b) => b.addr,
        }
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        match self {
            Self::Dev(b) => b.create_topic(name, partitions),
            Self::Nisshi(b) => b.create_topic(name, partitions),
        }
    }

    /// True for the dev broker, whose faults tests can inject.
    pub fn can_inject_faults(&self) -> bool {
        matches!(self, Self::Dev(_))
    }

    /// The dev broker's outage: every request refused until [`Broker::up`].
    pub fn down(&self) -> anyhow::Result<()> {
        self.dev()?.down()
    }

    pub fn up(&self) -> anyhow::Result<()> {
        self.dev()?.up()
    }

    /// The dev broker restarted empty on the same address.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Dev(b) => b.restart().await,
            Self::Nisshi(_) => bail!("only the dev broker restarts on demand"),
        }
    }

    fn dev(&self) -> anyhow::Result<&DevBroker> {
        match self {
            Self::Dev(b) => Ok(b),
            Self::Nisshi(_) => bail!("fault injection is the dev broker's only"),
        }
    }
}

/// A private `nisshi broker` process, in memory (nothing on disk).
pub struct Nisshi {
    pub addr: SocketAddr,
    _child: Child,
}

fn nisshi_bin() -> String {
    std::env::var("NISSHI_BIN").unwrap_or_else(|_| "nisshi".to_owned())
}

impl Nisshi {
    pub async fn start() -> anyhow::Result<Self> {
        let addr = free_addr();
        let url = format!("tcp://{addr}");
        let log =
            std::fs::File::create(crate::log_dir().join(format!("nisshi-{}.log", addr.port())))?;
        let child = Command::new(nisshi_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "spawn {} (deploy/local/test --broker nisshi builds it)",
                    nisshi_bin()
                )
            })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(Self {
                    addr,
                    _child: child,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("nisshi did not listen on {addr} within 20 s")
    }

    fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let out = std::process::Command::new(nisshi_bin())
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://{}", self.addr),
            ])
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .context("nisshi topic create")?;
        if !out.status.success() {
            bail!(
                "nisshi topic create {name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}
