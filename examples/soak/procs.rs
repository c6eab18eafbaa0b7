//! The processes of a soak run: the standalone sandbox and the service replicas, each killed when
//! its guard is dropped (on every exit path of the driver, panics included), with its output
//! appended to a log file in the run directory.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `bin args…` with stdout and stderr appended to `log`, after a marker line.
    pub fn spawn(bin: &str, args: &[String], log: &Path, what: &str) -> anyhow::Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        writeln!(
            file,
            "=== soak: starting {what} at {} ===",
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
        )?;
        let err = file.try_clone()?;
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("cannot start {bin} ({what})"))?;
        Ok(Self { child })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` when the process has exited by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `url` answers 2xx, at most `within`.
pub async fn wait_ready(http: &reqwest::Client, url: &str, within: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Ok(r) = http.get(url).timeout(Duration::from_secs(2)).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{url} did not become ready within {within:?}")
}

/// The standalone sandbox (`sandbox serve` with `args`), logging to `run_dir/sandbox.log`, once
/// it answers at `url`.
pub async fn spawn_sandbox(
    bin: &str,
    args: &[String],
    run_dir: &Path,
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<Proc> {
    let sandbox = Proc::spawn(bin, args, &run_dir.join("sandbox.log"), "sandbox")?;
    wait_ready(http, &format!("{url}/stats"), Duration::from_secs(30)).await?;
    Ok(sandbox)
}

/// One service process, restartable on the same ports.
pub struct Replica {
    pub index: usize,
    pub grpc_port: u16,
    pub http_port: u16,
    pub args: Vec<String>,
    pub log: PathBuf,
    pub proc: Option<Proc>,
    pub starts: u32,
    pub kills: u32,
    /// Exits nobody asked for (crashes), with their status.
    pub crashes: Vec<String>,
}

impl Replica {
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn ready_url(&self) -> String {
        format!("http://127.0.0.1:{}/readyz", self.http_port)
    }

    pub fn start(&mut self, bin: &str) -> anyhow::Result<()> {
        self.starts += 1;
        let what = format!("service-{} (start #{})", self.index, self.starts);
        self.proc = Some(Proc::spawn(bin, &self.args, &self.log, &what)?);
        Ok(())
    }

    /// `kill -9`, then reaped.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            append(
                &self.log,
                &format!("=== soak: kill -9 of pid {} ===", p.id()),
            );
            drop(p);
            self.kills += 1;
        }
    }

    /// Notices an exit nobody asked for; the caller restarts the replica.
    pub fn check_crash(&mut self) -> bool {
        if let Some(p) = self.proc.as_mut()
            && let Some(status) = p.exited()
        {
            let line = format!("service-{} exited by itself: {status}", self.index);
            append(&self.log, &format!("=== soak: {line} ==="));
            self.crashes.push(line);
            self.proc = None;
            return true;
        }
        false
    }
}

/// Appends a line to a log file, ignoring failures (it is diagnostics only).
pub fn append(path: &Path, line: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// Runs the binary to completion (a CLI subcommand) and returns its stdout, failing with its
/// stderr when it exits non-zero. Blocking: only for set-up and the end of the run.
pub fn run_cli(bin: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {bin} {}", args.first().unwrap_or(&"")))?;
    anyhow::ensure!(
        out.status.success(),
        "`refund-service {}` failed ({}): {}",
        args.iter().take(2).copied().collect::<Vec<_>>().join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
