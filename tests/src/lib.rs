//! Test harness: a throwaway stack per test, with real processes.
//!
//! Each [`Stack`] has its own broker (the dev broker in this process on a free port,
//! or a private nisshi process: see [`broker`]), its own
//! Postgres database (`vp_test_<id>`, migrated) and its own Redis key prefix, so tests
//! run side by side without seeing each other. `ingest` and `aggregator` are built in
//! the test process by their own `App::build` on port 0, or run as child processes
//! of the binaries `cargo build --bins` built where a test kills or signals them
//! (see [`service`]). Logs go to `target/test-logs/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub mod broker;
pub mod browser;
pub mod chaos;
pub mod faults;
pub mod openapi;
pub mod pg_server;
pub mod pgproxy;
pub mod redis_server;
pub mod service;
mod stack;
pub mod tcp_switch;
pub mod tls;

pub use service::{Kind, Service};
pub use stack::Stack;

pub const PARTITIONS: i32 = 8;

/// Postgres server the tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A free loopback port (bound and released; fine for tests).
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr")
}

/// `target/test-logs/`, where the services' (and private brokers') logs go.
pub fn log_dir() -> PathBuf {
    let dir = bin("ingest")
        .parent()
        .map_or_else(|| PathBuf::from("target"), |d| d.join(".."))
        .join("test-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A binary of this workspace built beside the running one: tests run from
/// `target/<profile>/deps/`, the benchmark from `target/<profile>/`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("target dir");
    let path = [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.exists());
    path.unwrap_or_else(|| {
        panic!(
            "{name} not built next to {}: run `cargo build --workspace --bins` (deploy/local/test does)",
            dir.display()
        )
    })
}

/// The smallest view the API takes: `contentId` in the `resource` namespace.
pub fn view(content_id: &str) -> serde_json::Value {
    serde_json::json!({"contentId": content_id, "contentType": "resource"})
}

/// Polls `check` every 100 ms until it answers `Ok`, and returns that; once
/// `within` has passed, panics with `what` and the last `Err` (what was seen
/// instead). The one wait loop for "this becomes true soon".
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(done) => return done,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The directory holding the previous release's `ingest` and `aggregator`, built by
/// `deploy/local/previous` from the commit in `deploy/local/previous-release`.
pub fn previous_release() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let named = std::fs::read_to_string(repo.join("deploy/local/previous-release"))
        .expect("deploy/local/previous-release");
    let commit = named
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("a commit in deploy/local/previous-release");
    let built = bin("ingest").canonicalize().expect("this build's ingest");
    let dir = built
        .parent()
        .and_then(|debug| debug.parent())
        .expect("target dir")
        .join("previous")
        .join(commit);
    assert!(
        dir.join("ingest").exists() && dir.join("aggregator").exists(),
        "the previous release's binaries are not built in {}: run deploy/local/previous",
        dir.display()
    );
    dir
}

#[allow(unsafe_code)]
pub(crate) fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child we spawned; no memory is shared.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Sends `sig` to the process group `pgid` (a child started as a group leader).
#[allow(unsafe_code)]
pub(crate) fn signal_group(pgid: u32, sig: i32) {
    // SAFETY: kill(2) on the group of a child we spawned; no memory is shared.
    unsafe {
        libc::kill(-(pgid as i32), sig);
    }
}
