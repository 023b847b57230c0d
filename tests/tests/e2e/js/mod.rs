//! The npm package `viewpipe` (`ingest/js/`) against a live ingest and aggregator,
//! as its users would meet it: its own Vitest suite (`npm test`: the client, the
//! hook under StrictMode in jsdom, server rendering, its types against the live
//! `/openapi.json`); and a React page in StrictMode built with Vite, the package
//! installed into it from its `npm pack` tarball, loaded N times in headless
//! Chromium from another origin, each load counting exactly one view and showing
//! the count `GET` answers.
//!
//! `npm ci` runs once per test binary, and not at all while `node_modules` was
//! installed from the same `package-lock.json` (a copy kept beside it says which).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::process::Command;
use tokio::sync::OnceCell;

use viewpipe_tests::browser::{chromium_binary, chromium_version, Chromium, PageServer, Profile};
use viewpipe_tests::{log_dir, Service, Stack};

mod console;

const NAMESPACES: (&str, &str) = ("NAMESPACES", "page,resource");
const FLUSH: (&str, &str) = ("FLUSH_INTERVAL_MS", "300");
/// Page loads of the browser test.
const LOADS: i64 = 5;

/// `ingest/js`, the npm workspace.
fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ingest/js")
}

/// Runs `program args` in `dir` with `env` to its end; its output (standard output
/// and error, interleaved by stream) when it succeeds, an error holding all of it
/// when it fails.
async fn run(
    dir: &Path,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .env("FORCE_COLOR", "0")
        .env("npm_config_update_notifier", "false")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("start {program} (Node 20 and npm are needed)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "`{program} {}` in {} failed ({}):\n{text}",
            args.join(" "),
            dir.display(),
            out.status
        );
    }
    Ok(text)
}

/// What [`prepared`] did once for the whole binary.
struct Prepared {
    /// How long `npm ci` took, or `None` when `node_modules` was current.
    npm_ci: Option<Duration>,
    /// The package's tarball.
    tarball: PathBuf,
    /// What `npm pack --json` said of it.
    pack: Value,
}

/// `npm ci` in `ingest/js`, unless `node_modules` was installed from this very
/// `package-lock.json`; then the package packed. Done before any test uses the
/// workspace, since `npm test` and `npm pack` both rebuild the package's `dist/`.
async fn prepared() -> &'static Prepared {
    static PREPARED: OnceCell<Prepared> = OnceCell::const_new();
    PREPARED
        .get_or_init(|| async {
            let dir = js_dir();
            let lock = std::fs::read(dir.join("package-lock.json")).expect("package-lock.json");
            let stamp = dir.join("node_modules/.viewpipe-installed-lock.json");
            let mut npm_ci = None;
            if !std::fs::read(&stamp).is_ok_and(|installed| installed == lock) {
                let started = Instant::now();
                run(
                    &dir,
                    "npm",
                    &["ci", "--prefer-offline", "--no-audit", "--no-fund"],
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
                std::fs::write(&stamp, &lock).expect("the npm ci stamp");
                npm_ci = Some(started.elapsed());
            }
            let packed = std::env::temp_dir().join(format!("vp-js-pack-{}", std::process::id()));
            std::fs::create_dir_all(&packed).expect("the tarball's directory");
            let (tarball, pack) = pack(&packed).await;
            Prepared {
                npm_ci,
                tarball,
                pack,
            }
        })
        .await
}

fn describe_npm_ci(prepared: &Prepared) -> String {
    match prepared.npm_ci {
        Some(took) => format!("npm ci {:.1} s", took.as_secs_f64()),
        None => "npm ci skipped (node_modules current)".to_owned(),
    }
}

/// The ingest's address without the trailing `/`.
fn origin_of(ingest: &Service) -> String {
    ingest.url("").trim_end_matches('/').to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_npm_package_passes_its_own_tests_against_a_live_stack() {
    let prepared = prepared().await;
    let stack = Stack::start().await.expect("stack");
    let ingest = stack
        .spawn_ingest(&[NAMESPACES, ("CORS_ORIGINS", "*")])
        .await
        .expect("ingest");
    let _aggregator = stack
        .spawn_aggregator(&[NAMESPACES, FLUSH])
        .await
        .expect("aggregator");
    let url = origin_of(&ingest);
    let started = Instant::now();
    let outcome = run(&js_dir(), "npm", &["test"], &[("VIEWPIPE_URL", &url)]).await;
    let took = started.elapsed();
    let output = outcome.unwrap_or_else(|e| panic!("npm test against {url}: {e:#}"));
    eprintln!("{output}");
    let summary: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Test Files") || l.starts_with("Tests"))
        .collect();
    eprintln!(
        "npm package: `npm test` in ingest/js against a live ingest and aggregator: {} ({:.1} s, build included); {}",
        summary.join(", "),
        took.as_secs_f64(),
        describe_npm_ci(prepared)
    );
}

/// The package's tarball, packed into `dir`: its path and what `npm pack --json`
/// says of it (size, files).
async fn pack(dir: &Path) -> (PathBuf, Value) {
    let out = run(
        &js_dir(),
        "npm",
        &[
            "pack",
            "--workspace",
            "viewpipe",
            "--json",
            "--pack-destination",
            dir.to_str().expect("utf-8 path"),
        ],
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    // The prepack build writes its lines before the JSON.
    let json = out
        .find("[\n")
        .map(|i| &out[i..])
        .and_then(|s| {
            serde_json::Deserializer::from_str(s)
                .into_iter::<Value>()
                .next()
        })
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("npm pack --json printed no JSON:\n{out}"));
    let info = json[0].clone();
    let file = dir.join(info["filename"].as_str().expect("the tarball's name"));
    assert!(file.is_file(), "{} was not written", file.display());
    (file, info)
}

/// Every file under `dir`, keyed by its path below it (`/index.html` also as `/`).
fn pages_of(dir: &Path) -> HashMap<String, String> {
    fn walk(root: &Path, dir: &Path, pages: &mut HashMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("read the built app") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, pages);
            } else {
                let rel = path.strip_prefix(root).expect("below the root");
                let text = std::fs::read_to_string(&path).expect("a text file");
                pages.insert(format!("/{}", rel.display()), text);
            }
        }
    }
    let mut pages = HashMap::new();
    walk(dir, dir, &mut pages);
    let index = pages.get("/index.html").cloned().expect("index.html");
    pages.insert("/".to_owned(), index);
    pages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_react_page_in_strict_mode_counts_each_load_once_and_shows_the_count() {
    chromium_binary(); // fails at once, saying how to install it, when missing
    let prepared = prepared().await;
    let stack = Stack::start().await.expect("stack");
    let work = std::env::temp_dir().join(format!("vp-js-{}", stack.id));
    std::fs::create_dir_all(&work).expect("work dir");

    // The package as a user gets it: packed, then installed from the tarball.
    let (tarball, info) = (&prepared.tarball, &prepared.pack);
    let files: Vec<String> = info["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| format!("{} ({} B)", f["path"].as_str().unwrap_or("?"), f["size"]))
        .collect();
    eprintln!(
        "npm pack: {} {} B packed, {} B unpacked, {} files: {}",
        info["filename"].as_str().unwrap_or("?"),
        info["size"],
        info["unpackedSize"],
        files.len(),
        files.join(", ")
    );
    let app = js_dir().join("examples/react-page");
    run(
        &app,
        "npm",
        &[
            "install",
            "--no-save",
            "--no-package-lock",
            "--prefer-offline",
            "--no-audit",
            "--no-fund",
            tarball.to_str().expect("utf-8 path"),
        ],
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let installed = app.join("node_modules/viewpipe");
    assert!(
        installed.is_dir() && !installed.is_symlink(),
        "viewpipe is installed from the tarball, not linked"
    );
    // A development build: React's StrictMode checks (effects run twice) are on
    // only there.
    let dist = work.join("dist");
    let built = run(
        &js_dir(),
        "node",
        &[
            "node_modules/vite/bin/vite.js",
            "build",
            "examples/react-page",
            "--outDir",
            dist.to_str().expect("utf-8 path"),
            "--emptyOutDir",
            "--mode",
            "development",
            "--logLevel",
            "warn",
        ],
        &[("NODE_ENV", "development")],
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(built.trim(), "", "vite build warned");
    let pages = pages_of(&dist);
    let bundle: usize = pages
        .iter()
        .filter(|(path, _)| path.ends_with(".js"))
        .map(|(_, js)| js.len())
        .sum();

    // The page on another origin (another host name and port than the ingest's),
    // which CORS_ORIGINS lets read the answers.
    let mut server = PageServer::start(pages).await.expect("page server");
    let site = format!("http://localhost:{}", server.addr.port());
    let ingest = stack
        .spawn_ingest(&[NAMESPACES, ("CORS_ORIGINS", &site)])
        .await
        .expect("ingest");
    let _aggregator = stack
        .spawn_aggregator(&[NAMESPACES, FLUSH])
        .await
        .expect("aggregator");
    let api_origin = origin_of(&ingest);
    let id = format!("react-page-{}", stack.id);
    let profile = Profile::new(&stack.id).expect("browser profile");

    let mut shown = Vec::new();
    let mut last = Value::Null;
    for load in 1..=LOADS {
        let url = format!("{site}/?api={api_origin}&id={id}&report=1&load={load}");
        let log = log_dir().join(format!("{}-chromium-react-{load}.log", stack.id));
        let browser = Chromium::open(&url, &profile, &log).expect("chromium");
        let report = server
            .report(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("load {load}: {e:#} (browser log: {})", log.display()));
        browser.close().await;
        assert_eq!(
            (&report["error"], &report["isLoading"]),
            (&Value::Null, &json!(false)),
            "load {load}: the view answered: {report}"
        );
        assert_eq!(
            (&report["effectRuns"], &report["posts"]),
            (&json!(2), &json!(1)),
            "load {load}: StrictMode ran the effect twice, one view was posted: {report}"
        );
        // Counted exactly once before the next load.
        ingest.wait_count("page", &id, load).await;
        assert_eq!(
            report["shown"],
            json!(format!("{load} views")),
            "load {load} shows the count GET answers: {report}"
        );
        shown.push(report["viewCount"].as_i64().unwrap_or(-1));
        last = report;
    }
    drop(profile);
    // Nothing more arrives, and Postgres holds the same once flushed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counted = ingest.count("page", &id).await;
    assert_eq!(counted, LOADS, "views counted after {LOADS} loads");
    stack
        .wait_flushed_total(LOADS, Duration::from_secs(60))
        .await
        .expect("flushed");
    assert_eq!(
        stack.totals().await.expect("totals"),
        [(format!("page:{id}"), LOADS)].into_iter().collect()
    );
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "react page ({}, React {}): the package installed from its tarball into a Vite app ({} KB of JS), <React.StrictMode> with useViews (development build: the effect ran twice per load), from {site}: {LOADS} loads -> {counted} views counted (GET and Postgres), 1 POST per load, displayed {:?} vs GET after each load {:?}: last displayed {} = GET {counted}; {}",
        chromium_version().await,
        last["react"].as_str().unwrap_or("?"),
        bundle / 1024,
        shown,
        (1..=LOADS).collect::<Vec<_>>(),
        last["shown"],
        describe_npm_ci(prepared)
    );
}
