//! Helpers for tests against the real Kafka of `scripts/kafka.sh`
//! (`KAFKA_BOOTSTRAP`, else `<repo>/.kafka/bootstrap`): unique names, topic
//! creation, producers that report partition and offset, a consumer,
//! committed offsets and watermarks, polling with a deadline, and a private
//! Kafka that a test may stop and restart.
//!
//! One harness for the whole workspace: the kafka-bridge integration tests
//! (`kafka-bridge/tests/common`, which adds the bridge's sink and start/stop
//! helpers) and the end-to-end tests (`e2e_tests::kafka`, which re-exports
//! this crate and adds broker helpers) both use it.
//!
//! With no Kafka these helpers **fail** with a message saying how to start
//! one; they never skip.

use std::{
    collections::HashMap,
    net::{TcpListener, TcpStream, ToSocketAddrs},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::ClientConfig,
    consumer::{Consumer, StreamConsumer},
    message::{Header, OwnedHeaders, OwnedMessage},
    producer::{DeliveryFuture, FutureProducer, FutureRecord},
    Message as _,
};

/// Repository root (the workspace).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Kafka to test against: `KAFKA_BOOTSTRAP`, else `<repo>/.kafka/bootstrap`.
/// Panics (never skips) when there is none or it does not answer.
pub fn bootstrap() -> String {
    let addr = match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(b) if !b.trim().is_empty() => b.trim().to_owned(),
        _ => {
            let path = repo_root().join(".kafka/bootstrap");
            match std::fs::read_to_string(&path) {
                Ok(s) => s.trim().to_owned(),
                Err(_) => panic!(
                    "the Kafka tests need a real Kafka: run `scripts/kafka.sh start` \
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

/// A name no other test (or earlier run) uses; valid as a Kafka topic, a
/// group id and a destination segment (no dots).
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

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Creates `name` with `partitions` partitions (replication 1).
pub async fn create_topic(brokers: &str, name: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let res = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &opts,
        )
        .await?;
    for r in res {
        r.map_err(|(t, e)| anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// Creates `name` with `partitions` partitions and topic configs `configs`
/// (e.g. `max.message.bytes` for records over Kafka's 1 MB default).
pub async fn create_topic_with(
    brokers: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    for r in admin.create_topics(&[topic], &opts).await? {
        r.map_err(|(t, e)| anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// Like [`producer`], allowed records of up to 8 MiB.
pub fn big_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "120000")
        .set("message.max.bytes", "8388608")
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

/// A test producer: no batching delay, generous delivery timeout (records
/// produced while Kafka is down wait for it).
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "120000")
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Landed {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl Landed {
    /// The `message-id` the bridge gives this record: `<topic>-<partition>-<offset>`.
    pub fn message_id(&self, topic: &str) -> String {
        format!("{topic}-{}-{}", self.partition, self.offset)
    }
}

/// Enqueues one record without waiting for the acknowledgement.
pub fn enqueue(
    p: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    value: &[u8],
) -> Result<DeliveryFuture> {
    let mut rec = FutureRecord::to(topic)
        .payload(value)
        .headers(self::headers(headers));
    if let Some(k) = key {
        rec = rec.key(k);
    }
    p.send_result(rec)
        .map_err(|(e, _)| anyhow!("enqueue to {topic}: {e}"))
}

/// Produces one keyed record stamped `timestamp_ms` (ms since the epoch;
/// an old stamp makes an "old" record) and waits for the acknowledgement.
pub async fn produce_at(
    p: &FutureProducer,
    topic: &str,
    key: &str,
    timestamp_ms: i64,
    value: &[u8],
) -> Result<Landed> {
    let rec = FutureRecord::to(topic)
        .payload(value)
        .key(key)
        .timestamp(timestamp_ms);
    let f = p
        .send_result(rec)
        .map_err(|(e, _)| anyhow!("enqueue to {topic}: {e}"))?;
    delivered(f).await
}

/// Now in ms since the epoch (the unit of Kafka record timestamps).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The committed offset of `group` for each partition `0..partitions` of
/// `topic` (`None` where it has none), asked of Kafka by a client that does
/// not join the group.
pub async fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<Option<i64>>> {
    let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
        let out = (0..partitions)
            .map(
                |p| match got.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(rdkafka::Offset::Offset(o)) => Some(o),
                    _ => None,
                },
            )
            .collect();
        anyhow::Ok(out)
    })
    .await?
}

/// Waits for an enqueued record's acknowledgement.
pub async fn delivered(f: DeliveryFuture) -> Result<Landed> {
    let d = f
        .await
        .map_err(|_| anyhow!("producer dropped"))?
        .map_err(|(e, _)| anyhow!("produce failed: {e}"))?;
    Ok(Landed {
        partition: d.partition,
        offset: d.offset,
    })
}

/// Produces one record and waits for Kafka's acknowledgement.
pub async fn produce(
    p: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    value: &[u8],
) -> Result<Landed> {
    delivered(enqueue(p, topic, key, headers, value)?).await
}

/// Reads `n` records of `topic` from the beginning (fresh group), or fails
/// after `within`.
pub async fn consume(
    brokers: &str,
    topic: &str,
    n: usize,
    within: Duration,
) -> Result<Vec<OwnedMessage>> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("e2e-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()?;
    c.subscribe(&[topic])?;
    let deadline = Instant::now() + within;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => bail!("consuming {topic}: {e}"),
            Err(_) => bail!(
                "only {} of {n} records of {topic} within {within:?}",
                out.len()
            ),
        }
    }
    Ok(out)
}

/// The high watermark (offset of the next record) of one partition, asked
/// of Kafka now.
pub async fn high_watermark(brokers: &str, topic: &str, partition: i32) -> Result<i64> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let c: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("e2e-watermark"))
            .create()?;
        let (_, high) = c.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
        anyhow::Ok(high)
    })
    .await?
}

/// Headers of a Kafka record as text.
pub fn record_headers(m: &OwnedMessage) -> HashMap<String, String> {
    use rdkafka::message::Headers as _;
    let mut out = HashMap::new();
    if let Some(h) = m.headers() {
        for hd in h.iter() {
            out.insert(
                hd.key.to_owned(),
                String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
            );
        }
    }
    out
}

/// One record to produce, optionally to a given partition.
#[derive(Debug, Clone, Default)]
pub struct Rec<'a> {
    /// Partition (`None`: the producer's partitioner decides).
    pub partition: Option<i32>,
    /// Record key.
    pub key: Option<&'a str>,
    /// Record headers.
    pub headers: Vec<(&'a str, &'a str)>,
    /// Record value.
    pub value: &'a [u8],
}

/// Produces `r` and waits for Kafka's acknowledgement.
pub async fn produce_record(p: &FutureProducer, topic: &str, r: Rec<'_>) -> Result<Landed> {
    let mut rec = FutureRecord::to(topic)
        .payload(r.value)
        .headers(headers(&r.headers));
    if let Some(part) = r.partition {
        rec = rec.partition(part);
    }
    if let Some(k) = r.key {
        rec = rec.key(k);
    }
    let f = p
        .send_result(rec)
        .map_err(|(e, _)| anyhow!("enqueue to {topic}: {e}"))?;
    delivered(f).await
}

fn headers(headers: &[(&str, &str)]) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    h
}

/// Polls `cond` every 50 ms until it holds, or fails after `within`.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A second, private Kafka (own data dir and port, the shared instance's
/// jars) that a test may stop and restart without disturbing other tests.
/// Stopped and deleted on drop.
pub struct PrivateKafka {
    dir: PathBuf,
    /// Its listener port on 127.0.0.1.
    pub port: u16,
}

impl PrivateKafka {
    /// A private Kafka on a free port (not started yet). Needs the shared
    /// instance's jars (`scripts/kafka.sh start` fetched them).
    ///
    /// Both of its ports are chosen once, below the kernel's ephemeral range
    /// (`scripts/kafka.sh alloc`), and kept across stop/start: while it is
    /// down no `bind(0)` or outgoing connection of another test can take
    /// them, so it comes back on the same address with the same data.
    pub fn new(name: &str) -> PrivateKafka {
        let _ = bootstrap();
        let mut k = PrivateKafka {
            dir: std::env::temp_dir().join(unique(name)),
            port: 0,
        };
        k.script("alloc").expect("scripts/kafka.sh alloc");
        let boot = std::fs::read_to_string(k.dir.join("bootstrap")).expect("alloc wrote bootstrap");
        k.port = boot
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("bootstrap is 127.0.0.1:PORT");
        k
    }

    /// `127.0.0.1:<port>`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `scripts/kafka.sh <cmd>` for this instance.
    pub fn script(&self, cmd: &str) -> Result<()> {
        let mut c = Command::new("bash");
        c.arg(repo_root().join("scripts/kafka.sh"))
            .arg(cmd)
            .env("KAFKA_DIR", &self.dir)
            .env("KAFKA_HEAP_OPTS", "-Xms128m -Xmx384m");
        let libs = repo_root().join(".kafka/libs");
        if libs.is_dir() {
            c.env("KAFKA_LIBS", libs);
        }
        let out = c.output().context("run scripts/kafka.sh")?;
        if !out.status.success() {
            bail!(
                "scripts/kafka.sh {cmd} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        let _ = self.script("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_are_valid_topic_group_and_segment_names() {
        let a = unique("t");
        let b = unique("t");
        assert_ne!(a, b);
        for n in [a, b] {
            assert!(n.starts_with("t-") && n.len() <= 249, "{n}");
            assert!(
                n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{n}: only [A-Za-z0-9-] (no dots: a destination segment)"
            );
        }
    }

    #[test]
    fn landed_message_id_is_topic_partition_offset() {
        let l = Landed {
            partition: 2,
            offset: 41,
        };
        assert_eq!(l.message_id("orders"), "orders-2-41");
    }
}
