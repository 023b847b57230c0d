//! A private `redis-server` for tests that stop, restart or fill Redis: the shared
//! one is never touched. No persistence, so a restart loses every key (and the
//! script cache), as a crashed cache node would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::free_addr;

pub struct RedisServer {
    pub addr: SocketAddr,
    extra: Vec<String>,
    child: Option<Child>,
    /// The CA that signs the server's certificate, when it speaks only TLS.
    tls_ca: Option<Vec<u8>>,
}

impl RedisServer {
    /// Starts a server on a free loopback port; `extra` are further config
    /// arguments (e.g. `["--maxmemory", "2mb"]`).
    pub async fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let mut server = Self {
            addr: free_addr(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            tls_ca: None,
        };
        server.resume().await?;
        Ok(server)
    }

    /// Starts a server that speaks only TLS, presenting `certs`' server certificate
    /// (clients need no certificate of their own).
    pub async fn start_tls(certs: &crate::tls::TestCerts) -> anyhow::Result<Self> {
        let addr = free_addr();
        let path = |p: &Path| p.display().to_string();
        let extra = [
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            addr.port().to_string(),
            "--tls-cert-file".to_owned(),
            path(&certs.cert),
            "--tls-key-file".to_owned(),
            path(&certs.key),
            "--tls-ca-cert-file".to_owned(),
            path(&certs.ca),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let mut server = Self {
            addr,
            extra: extra.to_vec(),
            child: None,
            tls_ca: Some(certs.ca_pem()?),
        };
        server.resume().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:port`, or `rediss://localhost:port` for a TLS server (the
    /// name its certificate carries).
    pub fn url(&self) -> String {
        match self.tls_ca {
            None => format!("redis://{}", self.addr),
            Some(_) => format!("rediss://localhost:{}", self.addr.port()),
        }
    }

    /// Every key gone at once (`FLUSHALL`), the server left running (plain servers
    /// only).
    pub async fn flush_all(&self) -> anyhow::Result<()> {
        node_info(self.addr.port(), "FLUSHALL").await.map(drop)
    }

    /// Runs one command (words split on spaces) and answers it as text (plain
    /// servers only).
    pub async fn command(&self, command: &str) -> anyhow::Result<String> {
        node_info(self.addr.port(), command).await
    }

    /// Stops the server at once, without saving: every key is gone.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("kill redis-server")?;
        }
        Ok(())
    }

    /// Starts the server again on the same port (empty).
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let log = log_path(&std::env::temp_dir(), self.addr.port());
        // A snapshot left by a killed run on this port would be loaded: start empty.
        let _ = std::fs::remove_file(snapshot_path(self.addr.port()));
        let child = redis_server(self.addr.port(), &log)
            .args(&self.extra)
            .spawn()
            .context("spawn redis-server (apt install redis-server)")?;
        let url = self.url();
        let child = self.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            exited_early(child, &log)?;
            let timeouts = viewpipe_runtime::redis_conn::Timeouts {
                connect: Duration::from_secs(1),
                response: Duration::from_secs(1),
            };
            let conn = viewpipe_runtime::redis_conn::RedisConn::connect_with_ca(
                &url,
                timeouts,
                self.tls_ca.as_deref(),
            )
            .await;
            if let Ok(mut conn) = conn {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "redis-server on {} did not answer within 10 s{}",
            self.addr,
            log_tail(&log)
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(log_path(&std::env::temp_dir(), self.addr.port()));
        let _ = std::fs::remove_file(snapshot_path(self.addr.port()));
    }
}

/// A private Redis Cluster of `n` primaries (no replicas) on loopback, for the tests
/// that run the pipeline on a cluster. Like [`RedisServer`], nothing is persisted but
/// each node's cluster identity (its `nodes.conf`), so a node restarted with
/// [`RedisCluster::restart_node`] comes back owning its slots, and empty.
pub struct RedisCluster {
    dir: std::path::PathBuf,
    nodes: Vec<(u16, Option<Child>)>,
    tls: Option<ClusterTls>,
}

/// A cluster whose nodes also speak TLS, to clients and to each other: each node's
/// TLS port, and what every node is started with.
struct ClusterTls {
    ports: Vec<u16>,
    args: Vec<String>,
    ca: PathBuf,
}

impl RedisCluster {
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        Self::start_with(n, None).await
    }

    /// A cluster whose clients connect over TLS (`rediss+cluster://`), its nodes
    /// presenting `certs`' server certificate; the cluster bus is TLS too. Each node
    /// keeps a plain port for the harness's own checks.
    pub async fn start_tls(n: usize, certs: &crate::tls::TestCerts) -> anyhow::Result<Self> {
        let path = |p: &Path| p.display().to_string();
        let args = [
            "--tls-cert-file",
            &path(&certs.cert),
            "--tls-key-file",
            &path(&certs.key),
            "--tls-ca-cert-file",
            &path(&certs.ca),
            "--tls-auth-clients",
            "no",
            "--tls-cluster",
            "yes",
        ];
        let tls = ClusterTls {
            ports: (0..n).map(|_| cluster_port()).collect(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ca: certs.ca.clone(),
        };
        Self::start_with(n, Some(tls)).await
    }

    async fn start_with(n: usize, tls: Option<ClusterTls>) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("vp-cluster-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Self {
            dir,
            nodes: Vec::new(),
            tls,
        };
        for _ in 0..n {
            let port = cluster_port();
            cluster.nodes.push((port, None));
        }
        for i in 0..n {
            cluster.spawn(i).await?;
        }
        let addrs: Vec<String> = cluster.addrs();
        let mut cli = Command::new("redis-cli");
        if let Some(tls) = &cluster.tls {
            cli.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        let out = cli
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .context("redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.wait_ok().await?;
        Ok(cluster)
    }

    /// The nodes' client addresses (their TLS ports on a TLS cluster).
    fn addrs(&self) -> Vec<String> {
        let ports: Vec<u16> = match &self.tls {
            Some(tls) => tls.ports.clone(),
            None => self.nodes.iter().map(|(port, _)| *port).collect(),
        };
        ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// `redis+cluster://` (or `rediss+cluster://`) with every node.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss+cluster"
        } else {
            "redis+cluster"
        };
        format!("{scheme}://{}", self.addrs().join(","))
    }

    async fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let port = self.nodes[i].0;
        let conf = self.dir.join(format!("nodes-{port}.conf"));
        let log = log_path(&self.dir, port);
        let mut cmd = redis_server(port, &log);
        if let Some(tls) = &self.tls {
            cmd.arg("--tls-port")
                .arg(tls.ports[i].to_string())
                .args(&tls.args);
        }
        let child = cmd
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
            .arg("--cluster-config-file")
            .arg(&conf)
            .arg("--dir")
            .arg(&self.dir)
            .spawn()
            .context("spawn redis-server (apt install redis-server)")?;
        let child = self.nodes[i].1.insert(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            exited_early(child, &log)?;
            if node_info(port, "PING").await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "redis-server on port {port} did not answer within 10 s{}",
            log_tail(&log)
        )
    }

    /// Waits until every node reports the cluster healthy.
    async fn wait_ok(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let mut ok = true;
            for (port, _) in &self.nodes {
                let info = node_info(*port, "CLUSTER INFO").await.unwrap_or_default();
                ok &= info.contains("cluster_state:ok");
            }
            if ok {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs: String = self
            .nodes
            .iter()
            .map(|(port, _)| log_tail(&log_path(&self.dir, *port)))
            .collect();
        bail!("the Redis Cluster did not reach cluster_state:ok within 30 s{logs}")
    }

    /// Kills node `i` (-9) and starts it again at once: it keeps its slots and has
    /// lost every key, as a cache node restarted without persistence would.
    pub async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[i].1.take() {
            child.kill().await.context("kill redis-server")?;
        }
        self.spawn(i).await?;
        self.wait_ok().await
    }

    /// Every key on every node gone at once.
    pub async fn flush_all(&self) -> anyhow::Result<()> {
        for (port, _) in &self.nodes {
            node_info(*port, "FLUSHALL").await?;
        }
        Ok(())
    }

    /// How many keys each node holds.
    pub async fn key_counts(&self) -> anyhow::Result<Vec<i64>> {
        let mut counts = Vec::new();
        for (port, _) in &self.nodes {
            counts.push(node_info(*port, "DBSIZE").await?.trim().parse()?);
        }
        Ok(counts)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(child) = child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-server` on loopback `port`, keeping nothing on disk but its log (appended
/// to `log`, so a restart's lines follow the first run's), and killed with its
/// handle.
fn redis_server(port: u16, log: &Path) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ])
    .args(["--appendonly", "no", "--protected-mode", "no"])
    // A replica writes the snapshot it loads: into the temporary directory, by port.
    .arg("--dir")
    .arg(std::env::temp_dir())
    .arg("--dbfilename")
    .arg(snapshot_path(port).file_name().unwrap_or_default())
    .arg("--logfile")
    .arg(log)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    cmd
}

/// Where a server on `port` writes the snapshot a replica loads.
fn snapshot_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("viewpipe-redis-{port}.rdb"))
}

fn log_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("vp-redis-{port}.log"))
}

/// The last lines of a server's log, for an error saying why it did not come up
/// (a port taken meanwhile, a cluster that lost a node's vote).
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n  ");
    format!("\n{}:\n  {tail}", log.display())
}

/// An error when the server exited before answering (e.g. its port was taken).
fn exited_early(child: &mut Child, log: &Path) -> anyhow::Result<()> {
    match child.try_wait() {
        Ok(Some(status)) => bail!("redis-server exited with {status}{}", log_tail(log)),
        _ => Ok(()),
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = free_addr().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One command (words split on spaces) on the node at `port`, its answer as text.
async fn node_info(port: u16, command: &str) -> anyhow::Result<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut words = command.split(' ');
    let mut cmd = redis::cmd(words.next().unwrap_or("PING"));
    for w in words {
        cmd.arg(w);
    }
    let value: redis::Value = cmd.query_async(&mut conn).await?;
    Ok(match value {
        redis::Value::Int(n) => n.to_string(),
        other => redis::from_redis_value::<String>(other).unwrap_or_default(),
    })
}
