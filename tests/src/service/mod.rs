//! The services a test runs: built in the test process by their own
//! `App::build(settings, ..)` on port 0, or started as child processes where a test
//! kills or signals them, or reads what only a whole process has (its own metrics,
//! its memory).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tracing::Instrument;

use viewpipe_runtime::Shutdown;

use crate::{bin, log_dir};

mod http;

/// Which service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ingest,
    Aggregator,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ingest => "ingest",
            Kind::Aggregator => "aggregator",
        }
    }

    /// The setting naming its listener.
    fn addr_setting(self) -> &'static str {
        match self {
            Kind::Ingest => "INGEST_ADDR",
            Kind::Aggregator => "AGGREGATOR_ADDR",
        }
    }
}

/// How a service runs.
enum Run {
    /// `App::run_until_stopped` on this process's runtime.
    InProcess {
        shutdown: Shutdown,
        task: Option<JoinHandle<anyhow::Result<()>>>,
    },
    /// A child process of the built binary.
    Process(Child),
}

/// A running `ingest` or `aggregator`.
pub struct Service {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    run: Run,
    /// The client [`Service::api`] makes on first use.
    api: tokio::sync::OnceCell<crate::openapi::Api>,
}

/// The settings every test service gets (the process' environment is not read for
/// these, so tests running side by side cannot see each other's).
pub type Env = Vec<(String, String)>;

/// The one metrics recorder of this test process, shared by every service built in
/// it (with both services' histogram buckets).
fn recorder() -> PrometheusHandle {
    static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();
    RECORDER
        .get_or_init(|| {
            let histograms =
                [ingest::metrics::HISTOGRAMS, aggregator::metrics::HISTOGRAMS].concat();
            viewpipe_runtime::metrics::install(&histograms).expect("the test process's recorder")
        })
        .clone()
}

/// Logs of the services built in this process go to one file per test binary
/// (`target/test-logs/in-process-<pid>.log`), each line under the service's span.
fn in_process_log() -> PathBuf {
    static LOG: OnceLock<PathBuf> = OnceLock::new();
    LOG.get_or_init(|| {
        let path = log_dir().join(format!("in-process-{}.log", std::process::id()));
        if let Ok(file) = std::fs::File::create(&path) {
            let filter = tracing_subscriber::EnvFilter::new(
                "info,sqlx=warn,sea_orm=warn,rdkafka=warn,viewpipe_devbroker=warn",
            );
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .try_init();
        }
        path
    })
    .clone()
}

/// `KAFKA_BROKERS` → `--kafka-brokers`: every setting is also a long flag. Settings
/// the command does not have (`RUST_LOG`, the aggregator's own given to the ingest)
/// are left out, as the binary ignores such environment variables.
/// A setting given twice keeps its last value, as in an environment.
fn flags<C: clap::CommandFactory>(env: &Env) -> Vec<String> {
    let command = C::command();
    let settings: std::collections::BTreeMap<&str, &str> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    settings
        .into_iter()
        .filter_map(|(k, v)| {
            let long = k.to_lowercase().replace('_', "-");
            command
                .get_arguments()
                .any(|a| a.get_long() == Some(long.as_str()))
                .then(|| format!("--{long}={v}"))
        })
        .collect()
}

impl Service {
    /// Builds `kind` in this process with `env` as its settings, on a free port, and
    /// waits until it is ready.
    pub async fn in_process(kind: Kind, id: &str, mut env: Env) -> anyhow::Result<Self> {
        let log_path = in_process_log();
        env.push((kind.addr_setting().to_owned(), "127.0.0.1:0".to_owned()));
        let args = |flags: Vec<String>| std::iter::once(kind.name().to_owned()).chain(flags);
        let shutdown = Shutdown::default();
        let span = tracing::info_span!("service", name = kind.name(), stack = id);
        let (addr, task) = match kind {
            Kind::Ingest => {
                let cli = ingest::settings::Cli::try_parse_from(args(flags::<
                    ingest::settings::Cli,
                >(&env)))?;
                let app = ingest::App::build(cli.settings, recorder(), shutdown.clone())
                    .instrument(span.clone())
                    .await?;
                let addr = app.local_addr()?;
                (addr, tokio::spawn(app.run_until_stopped().instrument(span)))
            }
            Kind::Aggregator => {
                let cli = aggregator::settings::Cli::try_parse_from(args(flags::<
                    aggregator::settings::Cli,
                >(&env)))?;
                let app = aggregator::App::build(cli.run, recorder(), shutdown.clone())
                    .instrument(span.clone())
                    .await?;
                let addr = app.local_addr()?;
                (addr, tokio::spawn(app.run_until_stopped().instrument(span)))
            }
        };
        let service = Self {
            kind,
            addr,
            log_path,
            run: Run::InProcess {
                shutdown,
                task: Some(task),
            },
            api: Default::default(),
        };
        service.wait_ready(Duration::from_secs(30)).await?;
        Ok(service)
    }

    /// Starts `kind`'s binary with `env` as its environment, listening on `addr`,
    /// and waits until it is ready. Its output goes to
    /// `target/test-logs/<id>-<name>-<port>.log`.
    pub async fn process(kind: Kind, id: &str, env: Env) -> anyhow::Result<Self> {
        Self::process_of(kind, &bin(kind.name()), id, env).await
    }

    /// [`Service::process`] with another build of the binary, `exe` (e.g. the
    /// previous release's, for the rolling-upgrade test).
    pub async fn process_of(
        kind: Kind,
        exe: &std::path::Path,
        id: &str,
        mut env: Env,
    ) -> anyhow::Result<Self> {
        // The child binds this port again; another test's port-0 bind may take it in
        // between, in which case the child fails to start and says so in its log.
        let addr = crate::free_addr();
        env.push((kind.addr_setting().to_owned(), addr.to_string()));
        let log_path = log_dir().join(format!("{id}-{}-{}.log", kind.name(), addr.port()));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(exe)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", kind.name()))?;
        let service = Self {
            kind,
            addr,
            log_path,
            run: Run::Process(child),
            api: Default::default(),
        };
        service.wait_ready(Duration::from_secs(30)).await?;
        Ok(service)
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// True for a child process: only then are its metrics its own (services built
    /// in one process share one recorder).
    pub fn is_process(&self) -> bool {
        matches!(self.run, Run::Process(_))
    }

    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = http.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {within:?}; see {}",
                    self.name(),
                    self.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What `/readyz` says once it names `fault`, or after 30 s.
    pub async fn readyz_until(&self, fault: &str) -> String {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut said = String::new();
        while Instant::now() < deadline {
            if let Ok(answer) = http.get(self.url("/readyz")).send().await {
                said = answer.text().await.unwrap_or_default();
                if said.contains(fault) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        said
    }

    /// Stops the service as SIGTERM would and waits for it: an in-process service's
    /// shutdown token, a child's SIGTERM. Errors if it did not stop cleanly.
    pub async fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        let name = self.name();
        if let Run::InProcess { shutdown, task } = &mut self.run {
            shutdown.trigger();
            let Some(task) = task.take() else {
                return Ok(());
            };
            return tokio::time::timeout(within, task)
                .await
                .with_context(|| format!("{name} did not stop within {within:?}"))?
                .context("the service's task panicked")?;
        }
        let status = self.terminate(within).await?;
        if !status.success() {
            bail!("{name} exited with {status}");
        }
        Ok(())
    }

    fn child(&mut self) -> anyhow::Result<&mut Child> {
        match &mut self.run {
            Run::Process(child) => Ok(child),
            Run::InProcess { .. } => bail!(
                "{} runs in the test process: start it with a *_process spawn to kill or signal it",
                self.kind.name()
            ),
        }
    }

    /// The process id, while a process runs.
    pub fn pid(&self) -> Option<u32> {
        match &self.run {
            Run::Process(child) => child.id(),
            _ => None,
        }
    }

    /// The process' peak resident memory (`VmHWM`) in KiB, while it runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let Run::Process(child) = &self.run else {
            return None;
        };
        let pid = child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// Kills the process with SIGKILL (no chance to flush or leave the group).
    pub async fn kill9(mut self) -> anyhow::Result<()> {
        let child = self.child()?;
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// Stops the process (SIGSTOP): it keeps its sockets and does nothing until
    /// [`Service::thaw`].
    pub fn freeze(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Lets a frozen process go on (SIGCONT).
    pub fn thaw(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&mut self, sig: i32) -> anyhow::Result<()> {
        let name = self.kind.name();
        let pid = self
            .child()?
            .id()
            .with_context(|| format!("{name} has exited"))?;
        crate::signal(pid, sig);
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let name = self.kind.name();
        let child = self.child()?;
        let pid = child.id().context("already exited")?;
        crate::signal(pid, libc::SIGTERM);
        tokio::time::timeout(within, child.wait())
            .await
            .with_context(|| format!("{name} did not exit within {within:?} of SIGTERM"))?
            .map_err(Into::into)
    }
}

impl Drop for Service {
    /// An in-process service left running (a test that failed half-way) is told to
    /// stop; a child process is killed (`kill_on_drop`).
    fn drop(&mut self) {
        if let Run::InProcess { shutdown, .. } = &self.run {
            shutdown.trigger();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn settings_become_flags_the_last_value_winning() {
        let given = env(&[
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("RUST_LOG", "info"),
            ("REDIS_URL", "none"),
        ]);
        // The ingest has no session timeout; a repeated setting is given once.
        assert_eq!(
            flags::<ingest::settings::Cli>(&given),
            vec!["--redis-url=none".to_owned()]
        );
        assert_eq!(
            flags::<aggregator::settings::Cli>(&given),
            vec![
                "--kafka-session-timeout-ms=6000".to_owned(),
                "--redis-url=none".to_owned()
            ]
        );
    }
}
