//! A TCP forwarder whose upstream can be switched, as a failover moves a service's
//! address to another server: [`TcpSwitch::switch`] closes every open connection,
//! and new ones reach the new upstream. Clients see one address throughout.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running forwarder; stops when dropped.
pub struct TcpSwitch {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    /// Bumped on every switch; each connection ends when it changes.
    generation: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl TcpSwitch {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let upstream = Arc::new(Mutex::new(upstream));
        let (generation, _) = watch::channel(0);
        let (target, switched) = (upstream.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // Subscribed before the upstream is read: a switch in between
                // closes this connection, or it reaches the new upstream.
                let ends = switched.subscribe();
                let to = *target.lock().unwrap_or_else(|e| e.into_inner());
                tokio::spawn(forward(client, to, ends));
            }
        });
        Ok(Self {
            addr,
            upstream,
            generation,
            task,
        })
    }

    /// New connections go to `upstream`; every open one is closed.
    pub fn switch(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|e| e.into_inner()) = upstream;
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for TcpSwitch {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn forward(mut client: TcpStream, to: SocketAddr, mut switched: watch::Receiver<u64>) {
    let Ok(mut server) = TcpStream::connect(to).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = switched.changed() => {}
    }
}
