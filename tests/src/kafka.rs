//! Kafka support for the end-to-end tests through the whole broker.
//!
//! The Kafka helpers themselves (bootstrap, unique names, topics, producers,
//! consumers, offsets, [`PrivateKafka`], [`wait_for`]) are the workspace's one
//! Kafka test harness, the `kafka-test-support` crate, re-exported here so
//! that `e2e_tests::kafka::…` paths keep working. This module adds what needs
//! the broker: a bridge configuration, STOMP frame headers, `/readyz`, and
//! the `stomp-broker` binary as a child process (for crash tests).
//!
//! With no Kafka these helpers **fail** with a message saying how to start
//! one; they never skip.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use kafka_bridge::{BridgeConfig, OffsetReset, RouteConfig};
pub use kafka_test_support::*;
use stomp_codec::Frame;

/// A bridge configuration for tests: `brokers`, the given group, `earliest`
/// (a fresh group reads its unique topics from the start), statistics every
/// second (so `/readyz` follows Kafka's state quickly), routes in the
/// command-line form `topic=/topic/x.{key}`.
pub fn bridge_config(brokers: &str, group: &str, routes: &[&str]) -> BridgeConfig {
    let mut c = BridgeConfig::default();
    c.brokers = brokers.to_owned();
    c.group_id = Some(group.to_owned());
    c.auto_offset_reset = OffsetReset::Earliest;
    c.stats_interval = Duration::from_secs(1);
    c.routes = routes
        .iter()
        .map(|r| r.parse::<RouteConfig>().expect("route"))
        .collect();
    c
}

/// The headers of a STOMP frame as a map (first occurrence wins).
pub fn frame_headers(f: &Frame) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (n, v) in f.headers.iter() {
        out.entry(String::from_utf8_lossy(n).into_owned())
            .or_insert_with(|| String::from_utf8_lossy(v).into_owned());
    }
    out
}

/// `GET /readyz` status (0 when the HTTP port does not answer).
pub async fn readyz(http: SocketAddr) -> u16 {
    crate::http_get(http, "/readyz")
        .await
        .map(|(s, _)| s)
        .unwrap_or(0)
}

/// The `stomp-broker` binary of this build, built first with
/// `cargo build -p stomp-broker` into the target directory this test runs
/// from (a no-op when it is up to date), so the test never runs a stale one.
pub fn broker_binary() -> Result<PathBuf> {
    // <target>/<profile>/deps/<test binary>
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test binary location {}", exe.display()))?
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| anyhow!("no target dir above {}", profile_dir.display()))?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .args([
            "build",
            "--quiet",
            "-p",
            "stomp-broker",
            "--bin",
            "stomp-broker",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    // `cargo test` runs this binary with the test package's CARGO_MANIFEST_DIR,
    // CARGO_PKG_NAME, ... set; some build scripts (ring's) declare
    // `rerun-if-env-changed` on those, so passing them on would make this build
    // rebuild ring and everything above it, and the next `cargo test` rebuild
    // it all back (minutes per round trip on a small machine).
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_PRIMARY_PACKAGE"
        {
            cmd.env_remove(name);
        }
    }
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .context("running cargo build -p stomp-broker")?;
    if !out.status.success() {
        bail!(
            "cargo build -p stomp-broker failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bin = profile_dir.join("stomp-broker");
    if !bin.is_file() {
        bail!("{} not found after cargo build", bin.display());
    }
    Ok(bin)
}

/// A `stomp-broker` child process on ephemeral ports. Killed on drop.
pub struct BrokerProcess {
    child: Child,
    /// STOMP/TCP address.
    pub stomp: SocketAddr,
    /// HTTP/WebSocket address.
    pub http: SocketAddr,
    log: PathBuf,
}

impl BrokerProcess {
    /// Starts `bin` with `--stomp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0
    /// --port-file …` plus `args`, logging to `<dir>/broker-<n>.log`, and
    /// waits (≤ 30 s) for the port file.
    pub async fn start(bin: &Path, dir: &Path, args: &[String]) -> Result<BrokerProcess> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let port_file = dir.join(format!("ports-{n}.json"));
        let log = dir.join(format!("broker-{n}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args([
                "--stomp-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .arg("--port-file")
            .arg(&port_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut p = BrokerProcess {
            child,
            stomp: "0.0.0.0:0".parse()?,
            http: "0.0.0.0:0".parse()?,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    let addr = |k: &str| {
                        v.get(k)
                            .and_then(|a| a.as_str())
                            .and_then(|a| a.parse::<SocketAddr>().ok())
                    };
                    if let (Some(s), Some(h)) = (addr("stomp"), addr("http")) {
                        p.stomp = s;
                        p.http = h;
                        return Ok(p);
                    }
                }
            }
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "broker exited ({status}) before listening:\n{}",
                    p.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("broker wrote no port file within 30 s:\n{}", p.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The WebSocket URL of the STOMP endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// What the broker logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
