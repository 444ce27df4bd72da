//! The service under test as a child process: `orderflow serve` on a free port against a
//! fresh database, timed from spawn to a 200 from its readiness probe; its memory read from
//! /proc; the `orderflow archive run` command with the same environment; the database
//! dropped at the end.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use sqlx::{mysql::MySqlConnectOptions, ConnectOptions, Connection, Executor};
use tokio::process::{Child, Command};

use crate::machine;

/// A debug build migrating a fresh database and starting the embedded Kafka can take a while.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
pub const ADMIN_EMAIL: &str = "bench-admin@orderflow.bench";

pub struct Service {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pub database_url: String,
    pub admin_password: String,
    /// Spawn until readiness answered 200.
    pub startup: Duration,
    pub log_path: PathBuf,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

/// `orderflow` next to the bench binary, built first with the bench's own profile: so
/// `cargo run -p bench [--release]` never starts a missing or stale service. If the build
/// fails (say, the sources are mid-edit) an existing binary is used, with a warning.
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating the bench binary")?;
    let bin = me.with_file_name("orderflow");
    // target/<profile dir>/bench: the `dev` profile's directory is `debug`.
    let profile = match me
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
    {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    eprintln!("bench: cargo build -p orderflow --profile {profile}");
    let built = std::process::Command::new(&cargo)
        .args([
            "build",
            "-p",
            "orderflow",
            "--profile",
            &profile,
            "--manifest-path",
        ])
        .arg(&manifest)
        .status();
    match built {
        Ok(status) if status.success() => {}
        Ok(_) | Err(_) if bin.exists() => {
            eprintln!(
                "bench: warning: could not build the service; using the existing {}",
                bin.display()
            );
        }
        Ok(status) => bail!("building the service failed ({status})"),
        Err(e) => bail!("running {cargo} to build the service: {e}"),
    }
    Ok(bin)
}

/// A port that was free a moment ago (the service cannot be told to pick one itself).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `orderflow_bench_<utc time>_<random>`: unique, and a plain identifier the service accepts.
pub fn fresh_database_name() -> String {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!(
        "orderflow_bench_{}_{suffix}",
        chrono::Utc::now().format("%Y%m%d_%H%M%S")
    )
}

impl Service {
    pub async fn start(
        bin: &Path,
        server_url: &str,
        redis_url: &str,
        database: &str,
    ) -> anyhow::Result<Self> {
        if !bin.exists() {
            bail!(
                "service binary {} not found: build it first (cargo build -p orderflow, with --release for a release bench) or pass --service-bin",
                bin.display()
            );
        }
        let port = free_port()?;
        let database_url = format!("{}/{database}", server_url.trim_end_matches('/'));
        let admin_password = uuid::Uuid::new_v4().simple().to_string();
        let env: Vec<(String, String)> = [
            ("DATABASE_URL", database_url.as_str()),
            ("REDIS_URL", redis_url),
            // One Redis may serve several runs (and the tests): a key space of our own.
            ("CACHE_KEY_PREFIX", &format!("{database}:")),
            ("ADMIN_EMAIL", ADMIN_EMAIL),
            ("ADMIN_PASSWORD", &admin_password),
            ("JWT_SECRET", &format!("bench-secret-{admin_password}")),
            ("JWT_TTL_SECS", "86400"),
            ("HTTP_ADDR", &format!("127.0.0.1:{port}")),
            // Under overload the load generator's pool opens more connections than its 1,000
            // tasks (a connection per request in flight, others closing): at the default cap
            // of 1,024 the excess was answered 503 or dropped by the connection cap, not by
            // order admission, which is what `overload` measures (the cap has its own tests).
            ("HTTP_MAX_CONNECTIONS", "4096"),
            // Only matter with KAFKA_BROKERS set (a shared broker): topics and group of our own.
            ("KAFKA_TOPIC_PREFIX", &format!("{database}.")),
            ("KAFKA_CONSUMER_GROUP", database),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let log_path = std::env::temp_dir().join(format!("{database}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let started = Instant::now();
        let child = Command::new(bin)
            .arg("serve")
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // If the bench dies early, the service goes with it.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the service exited at once")?;
        let mut service = Self {
            child,
            pid,
            base: format!("http://127.0.0.1:{port}"),
            database_url,
            admin_password,
            startup: Duration::ZERO,
            log_path,
            bin: bin.to_owned(),
            env,
        };
        service.wait_ready(started).await?;
        service.startup = started.elapsed();
        Ok(service)
    }

    /// Another process of the same service (same database, secrets, Kafka topics and
    /// consumer group, cache prefix) on a port of its own: a replica (`bench replicas`).
    pub async fn replica(&self) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut env = self.env.clone();
        for (k, v) in &mut env {
            if k == "HTTP_ADDR" {
                *v = format!("127.0.0.1:{port}");
            }
        }
        let log_path = self.log_path.with_extension(format!("{port}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .arg("serve")
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id().context("the replica exited at once")?;
        let mut replica = Self {
            child,
            pid,
            base: format!("http://127.0.0.1:{port}"),
            database_url: self.database_url.clone(),
            admin_password: self.admin_password.clone(),
            startup: Duration::ZERO,
            log_path,
            bin: self.bin.clone(),
            env,
        };
        replica.wait_ready(started).await?;
        replica.startup = started.elapsed();
        Ok(replica)
    }

    async fn wait_ready(&mut self, started: Instant) -> anyhow::Result<()> {
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/actuator/health/readiness", self.base);
        loop {
            if let Ok(r) = probe.get(&url).send().await {
                if r.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the service exited with {status} before it was ready; its log:\n{}",
                    self.log_tail()
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "the service was not ready after {READY_TIMEOUT:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The build profile the service reports (`orderflow_build_info`), so a copied release
    /// binary is not labelled by its path. None for a build that does not report it.
    pub async fn build_profile(&self) -> Option<String> {
        let text = reqwest::get(format!("{}/actuator/prometheus", self.base))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let line = text
            .lines()
            .find(|l| l.starts_with("orderflow_build_info{"))?;
        let (_, rest) = line.split_once("profile=\"")?;
        rest.split_once('"').map(|(profile, _)| profile.to_owned())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Resident memory now, in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        machine::status_kib(self.pid, "VmRSS").map(|k| k as f64 / 1024.0)
    }

    /// Peak resident memory since start (the kernel's high-water mark), in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        machine::status_kib(self.pid, "VmHWM").map(|k| k as f64 / 1024.0)
    }

    /// Still running? (A crash under load must fail the run.)
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the service exited with {status} during the run; its log:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    /// `orderflow archive run --older-than-days N` with the service's environment; returns
    /// the summary it prints (JSON) and the command's wall time.
    pub async fn archive_run(
        &self,
        older_than_days: u32,
    ) -> anyhow::Result<(serde_json::Value, Duration)> {
        let started = Instant::now();
        let out = Command::new(&self.bin)
            .args(["archive", "run", "--older-than-days"])
            .arg(older_than_days.to_string())
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running orderflow archive run")?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!(
                "orderflow archive run failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Its JSON log lines share stdout with the summary: the summary is the one with a runKey.
        let summary = stdout
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("runKey").is_some())
            .with_context(|| format!("no JSON summary in the archive output: {stdout}"))?;
        Ok((summary, took))
    }

    /// SIGTERM, then SIGKILL if it has not exited in time; returns how long it took.
    pub async fn stop(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        if self.child.try_wait()?.is_some() {
            return Ok(Duration::ZERO);
        }
        // No signal API in std: the kill(1) command sends SIGTERM to this one process id.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(_) => Ok(started.elapsed()),
            Err(_) => {
                self.child.kill().await?;
                bail!("the service did not stop within 30 s of SIGTERM; killed");
            }
        }
    }
}

/// Drops the bench database (its name comes from `fresh_database_name`, a plain identifier).
pub async fn drop_database(database_url: &str) -> anyhow::Result<()> {
    let opts = MySqlConnectOptions::from_str(database_url)?;
    let name = opts.get_database().unwrap_or_default().to_owned();
    if !name.starts_with("orderflow_bench_")
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!("refusing to drop {name:?}: not a bench database");
    }
    let mut conn = opts.database("mysql").connect().await?;
    conn.execute(format!("DROP DATABASE IF EXISTS `{name}`").as_str())
        .await?;
    conn.close().await?;
    Ok(())
}
