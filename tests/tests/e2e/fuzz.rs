//! An outside fuzzer holds the API to its document: schemathesis reads the ingest's
//! `/openapi.json` and sends what it generates from it (valid requests, which must
//! be accepted, and invalid ones, which must be refused), following the document's
//! links, with every check on: status codes, content types, headers and response
//! bodies as documented, no 5xx, auth enforced where declared. Twice: with a fixed
//! seed, and with a random one it prints so a failure can be replayed.
//!
//! The few rules JSON Schema cannot state (`occurredAt` at most 5 minutes ahead,
//! `from` not after `to`, a span of at most 366 days, `days` or `from`/`to`) are in
//! the document's descriptions; `tests/schemathesis/hooks.py` keeps the fuzzer's
//! valid requests inside them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::process::Command;

use viewpipe_tests::{Service, Stack};

const TOKEN: &str = "fuzz-admin-token-long-enough-for-32";
const FIXED_SEED: u64 = 13;

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_the_document_and_the_service_agree() {
    let schemathesis = schemathesis();
    let stack = Stack::start().await.expect("stack");
    let _aggregator = stack.spawn_aggregator(&[]).await.expect("aggregator");
    let ingest = stack
        .spawn_ingest(&[("ADMIN_TOKEN", TOKEN), ("NAMESPACES", "resource,course")])
        .await
        .expect("ingest");
    // Flushes answer 200 only once the aggregator owns the partitions.
    wait_for_flush(&ingest).await;

    // schemathesis keeps a cache in its working directory: a private one.
    let workdir = std::env::temp_dir().join(format!("vp-fuzz-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&workdir).expect("a working directory");
    let random_seed = u64::from(rand::random::<u32>());
    for seed in [FIXED_SEED, random_seed] {
        let started = Instant::now();
        let out = Command::new(&schemathesis)
            .arg("run")
            .arg(ingest.url("/openapi.json"))
            .args(["--checks", "all", "--seed", &seed.to_string()])
            // One worker: Python 3.11's parser is not thread-safe, and hypothesis
            // parses source while it generates ("AST constructor recursion depth
            // mismatch" with two).
            .args(["--max-examples", "60", "--workers", "1"])
            .args(["--generation-database", "none", "--no-color"])
            .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
            .current_dir(&workdir)
            .env("PYTHONPATH", hooks_dir())
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .output()
            .await
            .expect("run schemathesis");
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!(
            "schemathesis --seed {seed} ({:.0} s):\n{}",
            started.elapsed().as_secs_f64(),
            summary(&stdout)
        );
        assert!(
            out.status.success(),
            "schemathesis --seed {seed} found the service and its document disagree:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&workdir);
}

/// The schemathesis command: `SCHEMATHESIS` (the test command sets it), or where
/// `deploy/local/schemathesis` installs it.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("VIEWPIPE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/viewpipe")
                });
            cache.join("schemathesis-4.32.5/bin/schemathesis")
        });
    assert!(
        path.exists(),
        "schemathesis not found at {}: run deploy/local/schemathesis (deploy/local/test does) or set SCHEMATHESIS",
        path.display()
    );
    path
}

fn hooks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis")
}

async fn wait_for_flush(ingest: &Service) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = http
            .post(ingest.url("/api/views/flush"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .map(|r| r.status().as_u16());
        if status.as_ref().is_ok_and(|s| *s == 200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no flush completed within 60 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The run's closing lines: operations, test cases, failures, seed.
fn summary(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    let from = lines
        .iter()
        .rposition(|l| l.contains("SUMMARY"))
        .unwrap_or(lines.len().saturating_sub(20));
    lines[from..].join("\n")
}
