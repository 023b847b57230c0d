//! The ingest at the edge: slow clients cut off, the connection cap, the server's own answers in the
//! error body, secrets kept out of `--help`,
//! logs and parse errors, the admin token's length and scheme, the read limit, and
//! `nosniff` on every answer.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use viewpipe_tests::chaos::metric;
use viewpipe_tests::{bin, Stack};

mod secrets;

const ADMIN_TOKEN: &str = "edge-admin-token-0123456789abcdef";
const PASSWORD: &str = "hunter2edge";

/// Opens `n` connections that send `head` then one byte of `trickle` every 300
/// ms, and says how many are still open after `within`.
async fn slow_clients(
    addr: std::net::SocketAddr,
    n: usize,
    head: &'static str,
    trickle: &'static str,
    within: Duration,
) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return false;
            };
            let start = Instant::now();
            if stream.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let mut bytes = trickle.bytes().cycle();
            let mut buf = [0u8; 1024];
            while start.elapsed() < within {
                let byte = [bytes.next().unwrap_or(b'a')];
                // A closed connection fails a write, or reads its end (or an answer).
                if stream.write_all(&byte).await.is_err() {
                    return false;
                }
                match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await
                {
                    Ok(Ok(_)) | Ok(Err(_)) => return false,
                    Err(_) => {}
                }
            }
            true
        }));
    }
    let mut open = 0;
    for task in tasks {
        if task.await.unwrap_or(false) {
            open += 1;
        }
    }
    open
}

#[tokio::test]
async fn slow_headers_and_bodies_are_cut_off() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ingest = stack
        .spawn_ingest(&[("HEADER_READ_TIMEOUT", "2s"), ("BODY_READ_TIMEOUT", "3s")])
        .await?;
    let within = Duration::from_secs(8);
    let (headers, bodies) = tokio::join!(
        slow_clients(ingest.addr, 20, "GET /healthz HTTP/1.1\r\n", "X-Slow: a\r\n", within),
        slow_clients(
            ingest.addr,
            20,
            "POST /api/views HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
            " ",
            within,
        )
    );
    println!(
        "slow clients still open after {} s: {headers}/20 sending headers (HEADER_READ_TIMEOUT=2s), {bodies}/20 sending a body (BODY_READ_TIMEOUT=3s)",
        within.as_secs()
    );
    assert_eq!((headers, bodies), (0, 0));
    // The ingest still serves, and still stops.
    let ok = reqwest::get(ingest.url("/healthz")).await?;
    assert_eq!(ok.status(), 200);
    ingest.stop(Duration::from_secs(10)).await?;
    stack.cleanup().await
}

#[tokio::test]
async fn past_max_connections_new_connections_wait_for_one_to_close() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ingest = stack
        .spawn_ingest(&[("MAX_CONNECTIONS", "5"), ("HEADER_READ_TIMEOUT", "60s")])
        .await?;
    // Five connections that send nothing hold every slot.
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(ingest.addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = ingest.url("/healthz");
    let client = || reqwest::Client::builder().pool_max_idle_per_host(0).build();
    let at_cap = client()?
        .get(&health)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    // One closes: the waiting request is served.
    let waiting = tokio::spawn({
        let health = health.clone();
        let client = client()?;
        async move {
            client
                .get(&health)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(idle.pop());
    let after_one_closed = waiting.await?;
    println!(
        "MAX_CONNECTIONS=5 with 5 idle connections: a sixth request {}; after one closed: {:?}",
        match &at_cap {
            Ok(r) => format!("answered {}", r.status()),
            Err(e) if e.is_timeout() => "not answered within 2 s".to_owned(),
            Err(e) => format!("failed: {e}"),
        },
        after_one_closed.as_ref().map_err(ToString::to_string)
    );
    assert!(at_cap.is_err_and(|e| e.is_timeout()));
    assert_eq!(after_one_closed.ok(), Some(200));
    drop(idle);
    ingest.stop(Duration::from_secs(10)).await?;
    stack.cleanup().await
}

#[tokio::test]
async fn every_answer_says_nosniff() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ingest = stack
        .spawn_ingest(&[("METRICS_ADDR", "127.0.0.1:0")])
        .await?;
    let client = reqwest::Client::new();
    let mut missing = Vec::new();
    for path in [
        "/healthz",
        "/openapi.json",
        "/api/views?contentType=resource&contentId=a",
        "/api/views?contentType=nope&contentId=a",
        "/no/such/route",
        "/metrics",
    ] {
        let answer = client.get(ingest.url(path)).send().await?;
        let header = answer.headers().get("x-content-type-options").cloned();
        if header.as_ref().and_then(|h| h.to_str().ok()) != Some("nosniff") {
            missing.push(format!("{path} ({})", answer.status()));
        }
    }
    let aggregator = stack.spawn_aggregator(&[]).await?;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let answer = client.get(aggregator.url(path)).send().await?;
        let header = answer.headers().get("x-content-type-options").cloned();
        if header.as_ref().and_then(|h| h.to_str().ok()) != Some("nosniff") {
            missing.push(format!("aggregator {path} ({})", answer.status()));
        }
    }
    println!("answers without X-Content-Type-Options: nosniff: {missing:?}");
    assert!(missing.is_empty());
    aggregator.stop(Duration::from_secs(10)).await?;
    ingest.stop(Duration::from_secs(10)).await?;
    stack.cleanup().await
}

/// Sends `request` on a new connection and reads the answer to its end (the server
/// closes it): the status and the body.
async fn raw(
    addr: std::net::SocketAddr,
    request: &[u8],
    pause: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    tokio::time::sleep(pause).await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test]
async fn the_servers_own_answers_carry_the_error_body() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ingest = stack.spawn_ingest(&[("BODY_READ_TIMEOUT", "1s")]).await?;
    let long_uri = format!(
        "GET /api/views?contentId={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..120)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: [(&str, Vec<u8>, Duration, u16, &str); 4] = [
        ("a request line that is not HTTP", b"HELLO THERE\r\n\r\n".to_vec(), Duration::ZERO, 400, "bad_request"),
        ("a 70,000-byte URI", long_uri.into_bytes(), Duration::ZERO, 414, "uri_too_long"),
        ("121 headers", many_headers.into_bytes(), Duration::ZERO, 431, "headers_too_large"),
        (
            "10 of 100 body bytes, then nothing for 2 s (BODY_READ_TIMEOUT=1s)",
            b"POST /api/views HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"content".to_vec(),
            Duration::from_secs(2),
            408,
            "body_timeout",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, request, pause, status, code) in cases {
        let (got, body) = raw(ingest.addr, &request, pause).await?;
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let got_code = parsed["error"]["code"].as_str().unwrap_or("");
        println!("{what}: {got} {body}");
        if got != status || got_code != code || parsed["success"] != false {
            wrong.push(format!(
                "{what}: {got} {body:?}, expected {status} with code {code}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let ok = reqwest::get(ingest.url("/healthz")).await?;
    assert_eq!(ok.status(), 200);
    ingest.stop(Duration::from_secs(10)).await?;
    stack.cleanup().await
}

/// Runs `name` with `env` (on top of the parent's) to its end or `within`: its exit
/// code (`None`: still running, killed) and all it printed.
async fn run(
    name: &str,
    args: &[&str],
    env: &[(String, String)],
    within: Duration,
) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(bin(name))
        .args(args)
        .envs(env.iter().cloned())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(within, child).await {
        Ok(Ok(out)) => (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Ok(Err(e)) => (None, format!("cannot run {name}: {e}")),
        Err(_) => (None, String::new()),
    }
}

#[tokio::test]
async fn reads_over_the_read_limit_get_429() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ingest = stack
        .spawn_ingest(&[("READ_RATE_LIMIT_PER_ADDR", "5/m")])
        .await?;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut retry_after = Vec::new();
    for path in [
        "/api/views?contentType=resource&contentId=a",
        "/api/views/daily?contentType=resource&contentId=a",
        "/api/views/top?contentType=resource",
    ]
    .iter()
    .cycle()
    .take(8)
    {
        let answer = client.get(ingest.url(path)).send().await?;
        statuses.push(answer.status().as_u16());
        if answer.status() == 429 {
            retry_after.push(answer.headers().get("retry-after").cloned());
        }
    }
    // A write is not a read: still accepted.
    let write = client
        .post(ingest.url("/api/views"))
        .json(&serde_json::json!({"contentType": "resource", "contentId": "a"}))
        .send()
        .await?
        .status()
        .as_u16();
    println!("8 reads at READ_RATE_LIMIT_PER_ADDR=5/m: {statuses:?}; then a write: {write}");
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert!(retry_after.iter().all(Option::is_some));
    assert_eq!(write, 202);
    ingest.stop(Duration::from_secs(10)).await?;
    stack.cleanup().await
}
