//! One Redis server or a Redis Cluster, behind one connection type.
//!
//! `REDIS_URL` names a single server as usual (`redis://[user:password@]host:port`)
//! or a cluster as `redis+cluster://[user:password@]host:port,host:port,...` (any
//! reachable nodes; the rest of the cluster is discovered from them). `rediss://` and
//! `rediss+cluster://` are the same over TLS; the servers' certificates are checked
//! against the system's trust store or the CA certificates given to
//! [`RedisConn::connect_with_ca`].
//!
//! Every key a multi-key command or transaction touches belongs to one partition, and
//! a partition's keys share one hash tag (see [`viewpipe_schema::pending::Layout`]), so each
//! such command stays inside one hash slot. Work that spans partitions goes through
//! [`RedisConn::per_partition`]: one pipeline on a single server, one pipeline per
//! partition (sent concurrently) on a cluster.

use std::time::Duration;

use futures::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::socket2::TcpKeepalive;
use redis::io::tcp::TcpSettings;
use redis::{
    Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, ServerErrorKind,
    TlsCertificates, Value,
};

/// The scheme that names a Redis Cluster, and the scheme of its nodes' URLs.
const CLUSTER_SCHEMES: [(&str, &str); 2] =
    [("redis+cluster", "redis"), ("rediss+cluster", "rediss")];

/// A connection to one Redis server or to a Redis Cluster. Cheap to clone; clones
/// share the underlying connections.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Timeouts of every Redis connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            response: Duration::from_secs(5),
        }
    }
}

/// TCP keepalive and a user timeout on every Redis socket: a flow dropped without a
/// FIN or RST (a NAT, a load balancer, a failover) is found dead within about 20 s
/// even while nothing is asked, instead of after the kernel's two hours. Requests in
/// flight have their own deadline ([`Timeouts::response`]).
fn tcp_settings() -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(2);
    TcpSettings::default()
        .set_keepalive(keepalive)
        .set_user_timeout(Duration::from_secs(20))
}

/// The node URLs of a `redis+cluster://` URL, or `None` for a single server's URL.
pub(crate) fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    let Some((_, node_scheme)) = CLUSTER_SCHEMES.iter().find(|(s, _)| *s == scheme) else {
        return Ok(None);
    };
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((c, r)) => (format!("{c}@"), r),
        None => (String::new(), rest),
    };
    let (hosts, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if tail
        .trim_start_matches('/')
        .starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(
            "a Redis Cluster has only database 0: leave the database out of REDIS_URL".into(),
        );
    }
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{node_scheme}://{credentials}{h}{tail}"))
        .collect();
    if nodes.is_empty() {
        return Err(format!(
            "{scheme}:// needs at least one node: {scheme}://host:port[,host:port...]"
        ));
    }
    Ok(Some(nodes))
}

impl RedisConn {
    /// Connects to the server or cluster `url` names.
    pub async fn connect(url: &str, timeouts: Timeouts) -> RedisResult<Self> {
        Self::connect_with_ca(url, timeouts, None).await
    }

    /// Connects as [`RedisConn::connect`] does; over TLS (`rediss://`), the servers'
    /// certificates must be signed by one of the PEM certificates in `root_ca`
    /// instead of the system's trust store.
    pub async fn connect_with_ca(
        url: &str,
        timeouts: Timeouts,
        root_ca: Option<&[u8]>,
    ) -> RedisResult<Self> {
        let certs = |ca: &[u8]| TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.to_vec()),
        };
        let invalid = |e: String| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "invalid REDIS_URL",
                e,
            ))
        };
        match cluster_nodes(url).map_err(invalid)? {
            Some(nodes) => {
                let mut builder = ClusterClient::builder(nodes)
                    .tcp_settings(tcp_settings())
                    .connection_timeout(timeouts.connect)
                    .response_timeout(timeouts.response)
                    .retries(2);
                if let Some(ca) = root_ca {
                    builder = builder.certs(certs(ca));
                }
                let client = builder.build()?;
                Ok(Self::Cluster(client.get_async_connection().await?))
            }
            None => {
                let info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
                let client = match root_ca {
                    Some(ca) => redis::Client::build_with_tls(info, certs(ca))?,
                    None => redis::Client::open(info)?,
                };
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_response_timeout(Some(timeouts.response))
                    .set_number_of_retries(2);
                Ok(Self::Single(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Whether `item` opens its transaction in [`RedisConn::per_partition`] over
    /// `items` (which must not repeat): one server takes them all in one, a cluster
    /// one each. A server-wide question (`INFO`) is asked once per transaction so.
    pub fn opens_transaction<T: PartialEq>(&self, items: &[T], item: &T) -> bool {
        self.is_cluster() || items.first() == Some(item)
    }

    /// Runs the commands `build` adds for each of `items` (each item's commands
    /// touching the keys of one hash slot only, that of `slot_key(item)`) and returns
    /// their answers in order: as one pipeline on a single server, as one pipeline per
    /// item, sent concurrently, on a cluster. `atomic` makes each pipeline a
    /// transaction: on a cluster that holds per item, not across items.
    pub async fn per_partition<T>(
        &self,
        items: &[T],
        atomic: bool,
        slot_key: impl Fn(&T) -> String,
        build: impl Fn(&mut Pipeline, &T),
    ) -> RedisResult<Vec<Value>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = |items: &[T]| {
            let mut pipe = redis::pipe();
            if atomic {
                pipe.atomic();
            }
            for item in items {
                build(&mut pipe, item);
            }
            pipe
        };
        match self {
            Self::Single(conn) => pipeline(items).query_async(&mut conn.clone()).await,
            Self::Cluster(conn) => {
                let answers = try_join_all(items.chunks(1).map(|item| {
                    let (pipe, key) = (pipeline(item), slot_key(&item[0]));
                    let mut conn = conn.clone();
                    async move {
                        match pipe.query_async::<Vec<Value>>(&mut conn).await {
                            // A transaction sent to a node that no longer serves its
                            // slot (a reshard, a failover) is aborted, not redirected.
                            // A plain command on the slot's key is, and teaches the
                            // client where the slot lives now; then it goes again.
                            Err(e)
                                if atomic
                                    && e.kind()
                                        == ErrorKind::Server(ServerErrorKind::ExecAbort) =>
                            {
                                let _: i64 = redis::cmd("EXISTS")
                                    .arg(&key)
                                    .query_async(&mut conn)
                                    .await?;
                                pipe.query_async::<Vec<Value>>(&mut conn).await
                            }
                            other => other,
                        }
                    }
                }))
                .await?;
                Ok(answers.into_iter().flatten().collect())
            }
        }
    }

    /// The primaries' addresses (`host`, `port`) of a cluster; empty for one server.
    pub async fn primaries(&self) -> RedisResult<Vec<(String, u16)>> {
        let Self::Cluster(conn) = self else {
            return Ok(Vec::new());
        };
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn.clone())
            .await?;
        let mut primaries = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            if !flags.split(',').any(|f| f == "master") {
                continue;
            }
            let addr = addr.split('@').next().unwrap_or(addr);
            if flags.contains("fail") {
                // Its keys cannot be listed: saying "all" would be wrong.
                return Err(redis::RedisError::from((
                    ErrorKind::Io,
                    "a Redis Cluster primary is failing",
                    addr.to_owned(),
                )));
            }
            if let Some((host, port)) = addr.rsplit_once(':') {
                if let Ok(port) = port.parse() {
                    primaries.push((host.to_owned(), port));
                }
            }
        }
        Ok(primaries)
    }

    /// Every key matching `pattern`, by `SCAN` (so a large keyspace is never blocked
    /// on), on every primary of a cluster.
    pub async fn scan(&self, pattern: &str) -> RedisResult<Vec<String>> {
        let primaries = self.primaries().await?;
        let nodes: Vec<Option<&(String, u16)>> = if primaries.is_empty() {
            vec![None]
        } else {
            primaries.iter().map(Some).collect()
        };
        let mut keys = Vec::new();
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let (next, batch): (u64, Vec<String>) = self.on_node(&cmd, node).await?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }

    /// Runs `cmd` on the primary at `host:port` of a cluster (as is on one server).
    pub(crate) async fn on_node<T: redis::FromRedisValue>(
        &self,
        cmd: &Cmd,
        node: Option<&(String, u16)>,
    ) -> RedisResult<T> {
        match (self, node) {
            (Self::Cluster(conn), Some((host, port))) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let value = conn.clone().route_command(cmd.clone(), route).await?;
                Ok(redis::from_redis_value(value)?)
            }
            _ => cmd.query_async(&mut self.clone()).await,
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_nodes() {
        assert_eq!(cluster_nodes("redis://127.0.0.1:6379"), Ok(None));
        assert_eq!(cluster_nodes("rediss://cache.example:6380"), Ok(None));
        assert_eq!(
            cluster_nodes("rediss+cluster://u:pw@a:7000,b:7001"),
            Ok(Some(vec![
                "rediss://u:pw@a:7000".into(),
                "rediss://u:pw@b:7001".into()
            ]))
        );
        assert_eq!(
            cluster_nodes("redis+cluster://a:7000,b:7001"),
            Ok(Some(vec!["redis://a:7000".into(), "redis://b:7001".into()]))
        );
        assert_eq!(
            cluster_nodes("redis+cluster://user:p%40ss@a:7000, b:7001/"),
            Ok(Some(vec![
                "redis://user:p%40ss@a:7000/".into(),
                "redis://user:p%40ss@b:7001/".into()
            ]))
        );
        assert!(cluster_nodes("redis+cluster://").is_err());
        assert!(cluster_nodes("redis+cluster://a:7000/2").is_err());
    }
}
