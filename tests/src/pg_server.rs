//! A private Postgres server for tests that restart or stall Postgres; the shared
//! one is never touched. Its data directory is a temporary directory, removed when
//! the server is dropped. Run as root, the server runs as the `postgres` user (which
//! the Debian packages create), as Postgres refuses to run as root.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::Command;

use crate::{free_addr, signal};

pub struct PgServer {
    pub addr: SocketAddr,
    dir: PathBuf,
    bin: PathBuf,
}

/// The directory of `initdb` and `pg_ctl`: the newest Debian Postgres installed,
/// or `PG_BIN`.
fn pg_bin() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql (apt install postgresql, or set PG_BIN)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no initdb under /usr/lib/postgresql")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl PgServer {
    /// Creates a cluster (trust authentication) and starts it on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("vp-pg-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir)?;
        let server = Self {
            addr: free_addr(),
            dir,
            bin: pg_bin()?,
        };
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&server.dir)
                .status()
                .await?;
            if !chown.success() {
                bail!("chown of {} to postgres failed", server.dir.display());
            }
        }
        let data = server.dir.join("data");
        server
            .run(
                "initdb",
                &["-A", "trust", "-U", "postgres", "-D", &path(&data)],
            )
            .await?;
        server.resume().await?;
        Ok(server)
    }

    /// Creates a cluster that accepts TCP connections only over TLS (`hostssl`),
    /// presenting `certs`' server certificate, and starts it on a free port.
    pub async fn start_tls(certs: &crate::tls::TestCerts) -> anyhow::Result<Self> {
        let server = Self::start().await?;
        server.crash().await?;
        let data = server.dir.join("data");
        std::fs::copy(&certs.cert, data.join("server.crt"))?;
        std::fs::copy(&certs.key, data.join("server.key"))?;
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(
            &mut conf,
            b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )?;
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status()
                .await?;
            if !chown.success() {
                bail!("chown of {} to postgres failed", data.display());
            }
        }
        server.resume().await?;
        Ok(server)
    }

    /// The admin URL (database `postgres`).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@{}/postgres", self.addr)
    }

    async fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("run {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn resume(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.addr.port(),
            path(&self.dir)
        );
        let data = path(&self.dir.join("data"));
        let log = path(&self.dir.join("log"));
        self.run(
            "pg_ctl",
            &["start", "-w", "-D", &data, "-l", &log, "-o", &options],
        )
        .await
    }

    /// Stops the server at once, as a crash would (committed work survives).
    pub async fn crash(&self) -> anyhow::Result<()> {
        let data = path(&self.dir.join("data"));
        self.run("pg_ctl", &["stop", "-m", "immediate", "-w", "-D", &data])
            .await
    }

    /// Stops every process of the server (SIGSTOP) for `pause`, then lets them go
    /// on: connections stay open, nothing answers.
    pub async fn stall(&self, pause: Duration) -> anyhow::Result<usize> {
        let pids = self.pids()?;
        for pid in &pids {
            signal(*pid, libc::SIGSTOP);
        }
        tokio::time::sleep(pause).await;
        for pid in &pids {
            signal(*pid, libc::SIGCONT);
        }
        Ok(pids.len())
    }

    /// The postmaster and its children.
    fn pids(&self) -> anyhow::Result<Vec<u32>> {
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))?;
        let master: u32 = pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid")?;
        let mut pids = vec![master];
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // Fields after the command name: state, then the parent pid.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if parent == Some(master) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Waits until the server accepts connections (after a stall or a restart).
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("private Postgres on {} did not come back", self.addr)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Ok(pids) = self.pids() {
            for pid in pids {
                signal(pid, libc::SIGCONT);
                signal(pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}
