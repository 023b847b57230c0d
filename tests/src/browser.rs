//! A real browser for the tests of what web pages send: a headless Chromium
//! ([`Chromium`]) and a small HTTP server for the pages it loads ([`PageServer`]),
//! on an origin of its own, which also takes the reports the pages post back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Where Chromium is looked for when `CHROMIUM` does not name it.
const CANDIDATES: &[&str] = &["/usr/bin/chromium", "/usr/bin/chromium-browser"];

/// The Chromium binary: `CHROMIUM` when set, else the first of [`CANDIDATES`].
/// Panics, saying how to install it, when there is none: a browser test that
/// cannot run must fail rather than pass unseen.
pub fn chromium_binary() -> PathBuf {
    let looked_at: Vec<PathBuf> = match std::env::var_os("CHROMIUM") {
        Some(given) => vec![PathBuf::from(given)],
        None => CANDIDATES.iter().map(PathBuf::from).collect(),
    };
    let found = looked_at.iter().find(|p| p.is_file()).cloned();
    found.unwrap_or_else(|| {
        panic!(
            "Chromium not found at {looked_at:?}: install it with `sudo apt-get install chromium` \
             (deploy/local/test does), or set CHROMIUM to its path"
        )
    })
}

/// `Chromium 156.0.8078.79 built on Debian ...` → `Chromium 156.0.8078.79`.
pub async fn chromium_version() -> String {
    let out = Command::new(chromium_binary())
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .await;
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A browser profile directory for one test: several [`Chromium`] runs in it are
/// one browser (one User-Agent, one history). Removed on drop, also when the test
/// fails half-way.
pub struct Profile(PathBuf);

impl Profile {
    pub fn new(id: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("vp-chromium-{id}"));
        std::fs::create_dir_all(&dir).context("the browser profile directory")?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A headless Chromium showing one page, with a profile of its own. Dropping it
/// kills its whole process group and removes the profile.
pub struct Chromium {
    child: Child,
    profile: PathBuf,
}

impl Chromium {
    /// Opens `url` in a new headless Chromium using `profile`. Its output goes to
    /// `log`.
    pub fn open(url: &str, profile: &Profile, log: &Path) -> anyhow::Result<Self> {
        let profile = profile.path();
        let log = std::fs::File::create(log).context("the browser's log file")?;
        let child = Command::new(chromium_binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--no-proxy-server",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--mute-audio",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: the renderers and helpers it starts go with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("start chromium")?;
        Ok(Self {
            child,
            profile: profile.to_owned(),
        })
    }

    /// Asks the browser to quit (SIGTERM to its group) and waits up to 10 s, then
    /// kills what is left.
    pub async fn close(mut self) {
        if let Some(pid) = self.child.id() {
            crate::signal_group(pid, libc::SIGTERM);
            let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        }
        // Drop kills whatever did not exit.
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            crate::signal_group(pid, libc::SIGKILL);
        }
        // Chromium leaves a lock in its profile; the next run in it would refuse.
        for lock in ["SingletonLock", "SingletonSocket", "SingletonCookie"] {
            let _ = std::fs::remove_file(self.profile.join(lock));
        }
    }
}

/// Serves fixed pages over HTTP/1.1 on a port of its own, and passes on every JSON
/// body posted to `/report`. A path's extension sets the `Content-Type` (`.js`,
/// `.css`, `.svg`, `.json`; HTML otherwise), so a built app's module scripts load.
pub struct PageServer {
    pub addr: SocketAddr,
    reports: mpsc::UnboundedReceiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    /// Serves `pages` (path → HTML) on 127.0.0.1.
    pub async fn start(pages: HashMap<String, String>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, reports) = mpsc::unbounded_channel();
        let pages = Arc::new(pages);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (pages, tx) = (pages.clone(), tx.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &pages, &tx).await;
                });
            }
        });
        Ok(Self {
            addr,
            reports,
            task,
        })
    }

    /// The next report a page posted, within `within`.
    pub async fn report(&mut self, within: Duration) -> anyhow::Result<Value> {
        match tokio::time::timeout(within, self.reports.recv()).await {
            Ok(Some(report)) => Ok(report),
            Ok(None) => bail!("the page server stopped"),
            Err(_) => bail!("no page reported within {within:?}"),
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request on one connection (answered with `Connection: close`).
async fn serve(
    mut stream: TcpStream,
    pages: &HashMap<String, String>,
    reports: &mpsc::UnboundedSender<Value>,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            bail!("request head too large");
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-request");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let path = target.split('?').next().unwrap_or("");
    let (status, content) = match (method, pages.get(path)) {
        ("POST", _) if path == "/report" => {
            let report = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let _ = reports.send(report);
            ("204 No Content", String::new())
        }
        ("GET", Some(page)) => ("200 OK", page.clone()),
        _ => ("404 Not Found", "not found".to_owned()),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{content}",
        content_type(path),
        content.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// The `Content-Type` of a page server path, by its extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        _ => "text/html; charset=utf-8",
    }
}
