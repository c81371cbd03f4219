//! Helpers for the integration tests against the real Kafka started by
//! `scripts/kafka.sh start`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_bridge::{
    Bridge, BridgeConfig, BridgeHandle, BridgeMessage, OffsetReset, RouteConfig, Sink, SinkFull,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Repository root (the workspace).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Kafka to test against: `KAFKA_BOOTSTRAP`, else `<repo>/.kafka/bootstrap`.
/// Fails loudly (never skips) when there is none or it does not answer.
pub fn bootstrap() -> String {
    let addr = match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(b) if !b.trim().is_empty() => b.trim().to_owned(),
        _ => {
            let path = repo_root().join(".kafka/bootstrap");
            match std::fs::read_to_string(&path) {
                Ok(s) => s.trim().to_owned(),
                Err(_) => panic!(
                    "the kafka-bridge integration tests need a real Kafka: run `scripts/kafka.sh start` \
                     (or set KAFKA_BOOTSTRAP=host:port); {} does not exist",
                    path.display()
                ),
            }
        }
    };
    let first = addr.split(',').next().unwrap_or_default().to_owned();
    let reachable = first
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|sa| TcpStream::connect_timeout(&sa, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "Kafka at {addr} is not reachable: run `scripts/kafka.sh start` (status: `scripts/kafka.sh status`)"
    );
    addr
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn create_topic(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let res = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .expect("create_topics request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "120000")
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

/// One record to produce.
pub struct Rec<'a> {
    pub partition: Option<i32>,
    pub key: Option<&'a str>,
    pub headers: Vec<(&'a str, &'a str)>,
    pub value: &'a [u8],
}

pub async fn produce(p: &FutureProducer, topic: &str, r: Rec<'_>) {
    let mut h = OwnedHeaders::new();
    for (k, v) in &r.headers {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut rec = FutureRecord::to(topic).payload(r.value).headers(h);
    if let Some(p) = r.partition {
        rec = rec.partition(p);
    }
    if let Some(k) = r.key {
        rec = rec.key(k);
    }
    p.send(rec, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("test produce");
}

/// A sink that forwards every message into a channel.
pub struct ChannelSink(pub mpsc::UnboundedSender<BridgeMessage>);

impl Sink for ChannelSink {
    fn publish(&self, msg: BridgeMessage) -> Result<(), SinkFull> {
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

/// The committed offsets of `group` for `topic`'s partitions `0..n`, asked of
/// Kafka by a client that does not join the group.
pub async fn committed(brokers: &str, group: &str, topic: &str, n: i32) -> Vec<rdkafka::Offset> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..n {
            tpl.add_partition(&topic, p);
        }
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..n)
            .map(|p| got.find_partition(&topic, p).unwrap().offset())
            .collect()
    })
    .await
    .unwrap()
}

/// Polls `cond` every 50 ms until true or panics after `within`.
pub async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
