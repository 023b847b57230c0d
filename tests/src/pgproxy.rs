//! A TCP proxy in front of Postgres that loses COMMIT replies: it forwards every n-th
//! of the `COMMIT`s it sees to the server, and the server's reply never reaches the
//! client. The transaction commits; the client either sees its connection closed
//! ([`Loss::Close`]: failovers, pooler restarts and network resets do that) or hears
//! nothing more on a socket that stays open ([`Loss::Silent`]: a NAT, a load balancer
//! or a failover that dropped the flow without a FIN or RST).
//!
//! The proxy reads the client's side of the wire protocol (startup, then typed
//! messages) and copies the server's side untouched. It answers SSL and GSS
//! encryption requests with "no" itself, so the conversation stays readable.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Protocol codes of the untyped requests a client may open with.
const SSL_REQUEST: i32 = 80_877_103;
const GSS_REQUEST: i32 = 80_877_104;
/// Longest message the proxy accepts from a client (ours send at most a few MiB).
const MAX_MESSAGE: usize = 256 << 20;

/// What happens to a connection whose COMMIT reply is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// The client's connection is closed.
    Close,
    /// Nothing more reaches the client; its socket stays open until it closes it.
    Silent,
}

/// A running proxy; stops when dropped.
pub struct PgProxy {
    pub addr: SocketAddr,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

struct Stats {
    commits: AtomicU64,
    lost: AtomicU64,
    lose_every: u64,
    /// Replies lost at most (`u64::MAX`: no limit).
    lose_at_most: u64,
    loss: Loss,
}

impl PgProxy {
    /// Listens on a free loopback port and forwards to `upstream`, losing the reply
    /// of every `lose_every`-th COMMIT (deterministic, so a run always has losses).
    pub async fn start(upstream: SocketAddr, lose_every: u64) -> anyhow::Result<Self> {
        Self::start_with(upstream, lose_every, u64::MAX, Loss::Close).await
    }

    /// Like [`PgProxy::start`], losing at most `at_most` replies, in the way `loss`
    /// says.
    pub async fn start_with(
        upstream: SocketAddr,
        lose_every: u64,
        at_most: u64,
        loss: Loss,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats {
            commits: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            lose_every: lose_every.max(1),
            lose_at_most: at_most,
            loss,
        });
        let shared = stats.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let stats = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = relay(client, server, &stats).await;
                    }
                });
            }
        });
        Ok(Self { addr, stats, task })
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
        let (userinfo, rest) = match rest.split_once('@') {
            Some((user, rest)) => (format!("{user}@"), rest),
            None => (String::new(), rest),
        };
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        format!("{scheme}://{userinfo}{}{path}", self.addr)
    }

    /// COMMITs seen, and how many of their replies were lost.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.stats.commits.load(Ordering::Relaxed),
            self.stats.lost.load(Ordering::Relaxed),
        )
    }
}

/// The host and port of a `postgres://` URL with a literal address, for a proxy in
/// front of it.
pub fn server_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or(rest);
    host_port
        .parse()
        .unwrap_or_else(|_| panic!("a literal host:port in the test database URL: {url}"))
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One client connection: the server's bytes are copied back as they come; the
/// client's are read message by message.
async fn relay(mut client: TcpStream, server: TcpStream, stats: &Stats) -> anyhow::Result<()> {
    let (mut from_server, mut to_server) = server.into_split();
    let (mut from_client, mut to_client) = client.split();
    // Startup: answer encryption requests ourselves, forward the startup message.
    loop {
        let len = from_client.read_i32().await?;
        let body = read_body(&mut from_client, len, 4).await?;
        let code = body
            .get(..4)
            .map_or(0, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if code == SSL_REQUEST || code == GSS_REQUEST {
            to_client.write_all(b"N").await?;
            continue;
        }
        to_server.write_all(&len.to_be_bytes()).await?;
        to_server.write_all(&body).await?;
        break;
    }
    let (mut client_read, mut client_write) = client.into_split();
    // Once muted, the server's bytes are read and dropped; the client's socket stays
    // open and hears nothing.
    let muted = Arc::new(AtomicBool::new(false));
    let mute = muted.clone();
    let back = tokio::spawn(async move {
        let mut buf = vec![0; 64 << 10];
        while let Ok(n) = from_server.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if !mute.load(Ordering::SeqCst) && client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        if !mute.load(Ordering::SeqCst) {
            let _ = client_write.shutdown().await;
        } else {
            // Hold the client's socket open until the client lets go.
            std::future::pending::<()>().await;
        }
    });
    while let Ok(tag) = client_read.read_u8().await {
        let len = client_read.read_i32().await?;
        let body = read_body(&mut client_read, len, 4).await?;
        let nth = if tag == b'Q' && is_commit(&body) {
            stats.commits.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let lose = nth > 0
            && nth % stats.lose_every == 0
            && stats.lost.load(Ordering::Relaxed) < stats.lose_at_most;
        if lose && stats.loss == Loss::Silent {
            // Nothing more reaches the client, and nothing tells it so.
            muted.store(true, Ordering::SeqCst);
            stats.lost.fetch_add(1, Ordering::Relaxed);
        } else if lose {
            // Nothing more reaches the client: stop the copy back first, then let the
            // server have the COMMIT, then cut the client off.
            back.abort();
            to_server.write_all(&[tag]).await?;
            to_server.write_all(&len.to_be_bytes()).await?;
            to_server.write_all(&body).await?;
            drop(client_read);
            stats.lost.fetch_add(1, Ordering::Relaxed);
            // Give the server time to commit before it sees the connection end.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(());
        }
        to_server.write_all(&[tag]).await?;
        to_server.write_all(&len.to_be_bytes()).await?;
        to_server.write_all(&body).await?;
    }
    back.abort();
    Ok(())
}

/// The rest of a message whose length field (counting itself, `counted` bytes) said
/// `len`.
async fn read_body(
    stream: &mut (impl AsyncReadExt + Unpin),
    len: i32,
    counted: usize,
) -> anyhow::Result<Vec<u8>> {
    let len = usize::try_from(len)?
        .checked_sub(counted)
        .filter(|&n| n <= MAX_MESSAGE)
        .ok_or_else(|| anyhow::anyhow!("bad message length {len}"))?;
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// A simple query that is `COMMIT` (or `END`), whatever its case and spacing.
fn is_commit(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace() || c == ';');
    text.eq_ignore_ascii_case("commit") || text.eq_ignore_ascii_case("end")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_recognised() {
        assert!(is_commit(b"COMMIT\0"));
        assert!(is_commit(b" commit ;\0"));
        assert!(!is_commit(b"SELECT 1\0"));
        assert!(!is_commit(b"COMMIT PREPARED 'x'\0"));
    }
}
