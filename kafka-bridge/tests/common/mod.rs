//! Helpers for the kafka-bridge integration tests against the real Kafka
//! started by `scripts/kafka.sh start`.
//!
//! The Kafka side (bootstrap, unique names, topics, producing, offsets,
//! polling) is the workspace's one Kafka test harness, the
//! `kafka-test-support` crate, re-exported here; this module adds only what
//! is about the bridge itself: a channel sink, a test configuration,
//! start/stop, and receiving what the bridge published.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_bridge::{
    Bridge, BridgeConfig, BridgeHandle, BridgeMessage, NotAccepting, OffsetReset, RouteConfig, Sink,
};
pub use kafka_test_support::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Polls the synchronous `cond` every 50 ms until it holds; panics after
/// `within` (the bridge's state and metrics are read without awaiting).
pub async fn poll_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    wait_for(what, within, || std::future::ready(cond()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A sink that forwards every message into a channel.
pub struct ChannelSink(pub mpsc::UnboundedSender<BridgeMessage>);

impl Sink for ChannelSink {
    fn publish(&self, msg: BridgeMessage) -> Result<(), NotAccepting> {
        let _ = self.0.send(msg);
        Ok(())
    }
}

pub fn channel_sink() -> (Arc<ChannelSink>, mpsc::UnboundedReceiver<BridgeMessage>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(ChannelSink(tx)), rx)
}

/// Config for tests: given brokers, fresh group, earliest, quick stats.
pub fn config(brokers: &str, group: &str, routes: &[&str]) -> BridgeConfig {
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

pub struct Running {
    pub handle: BridgeHandle,
    pub shutdown: CancellationToken,
}

pub fn start(cfg: BridgeConfig, sink: Arc<dyn Sink>) -> Running {
    let shutdown = CancellationToken::new();
    let handle = Bridge::start(cfg, sink, shutdown.clone()).expect("bridge start");
    Running { handle, shutdown }
}

impl Running {
    /// Cancels and waits (bounded) for the graceful close.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle.closed())
            .await
            .expect("bridge closed within 60 s");
    }
}

/// Receives exactly `n` messages or panics after `within`.
pub async fn recv_n(
    rx: &mut mpsc::UnboundedReceiver<BridgeMessage>,
    n: usize,
    within: Duration,
) -> Vec<BridgeMessage> {
    let deadline = Instant::now() + within;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(m)) => out.push(m),
            Ok(None) => panic!("sink channel closed after {} of {n} messages", out.len()),
            Err(_) => panic!("only {} of {n} messages within {within:?}", out.len()),
        }
    }
    out
}

/// Asserts nothing more arrives for `quiet`.
pub async fn assert_quiet(rx: &mut mpsc::UnboundedReceiver<BridgeMessage>, quiet: Duration) {
    if let Ok(Some(m)) = tokio::time::timeout(quiet, rx.recv()).await {
        panic!(
            "unexpected extra message {:?} ({:?})",
            m.destination,
            header(&m, "message-id")
        );
    }
}

pub fn header<'m>(m: &'m BridgeMessage, name: &str) -> Option<&'m str> {
    m.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

pub fn headers_map(m: &BridgeMessage) -> HashMap<&str, &str> {
    m.headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}
