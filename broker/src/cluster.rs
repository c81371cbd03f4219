//! Cluster mode (`--cluster`): N broker nodes behind a load balancer share
//! `/topic/...` and `/user/...` destinations through one Kafka topic
//! (`cluster.topic`). Kafka is the only thing the nodes share: there is no
//! membership or node-to-node protocol. See docs/cluster.md.
//!
//! * **Out**: a SEND to a topic or user destination is routed locally at once
//!   (as without a cluster) and handed to [`Cluster::relay`], which produces
//!   it to the cluster topic without waiting (idempotent, `acks=all`, key =
//!   the publishing session, so each publisher's messages keep their order
//!   in one partition). At most `cluster.max_in_flight` records and
//!   `cluster.max_in_flight_bytes` bytes wait for Kafka's acknowledgement,
//!   and their bytes are charged to the broker's memory budget until the
//!   delivery report; beyond either limit, or with the budget spent, the
//!   message is not relayed and `stomp_cluster_produce_failures_total`
//!   (and `stomp_cluster_relay_refused_total{reason}`) counts it.
//!   librdkafka's own queue and the consumer's prefetch are sized from
//!   `cluster.max_in_flight_bytes` too, so the relay's memory is bounded in
//!   bytes ([`producer_queue_kbytes`], [`consumer_prefetch_kbytes`]).
//! * **In**: one thread per node reads every partition of the cluster topic
//!   with `assign` (no consumer group) from its end as of joining, skips its
//!   own records and publishes the others into the local router with their
//!   original `message-id`.
//! * **Seen nodes**: every node produces a heartbeat record every
//!   `cluster.heartbeat_ms`; a node is seen if heard within 3 intervals.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::{Header, Headers as _, Message as _, OwnedHeaders},
    producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer},
    types::RDKafkaErrorCode,
    ClientContext, Offset, TopicPartitionList,
};
use stomp_codec::Headers;
use tokio_util::sync::CancellationToken;

use crate::{
    config::ClusterConfig,
    core::BrokerCore,
    metrics::{LatencyHistogram, Metrics, PromType},
};

/// Record header: the producing node's id.
pub const H_ORIGIN: &str = "stomp-cluster-origin";
/// Record header: `msg` (a relayed message) or `hb` (a heartbeat).
pub const H_KIND: &str = "stomp-cluster-kind";
/// Record header: the message's `message-id`, the same on every node.
pub const H_MESSAGE_ID: &str = "stomp-message-id";
/// Record header: the destination the message was sent to.
pub const H_DESTINATION: &str = "stomp-destination";
/// Record header: the authenticated user who sent it (if any).
pub const H_USER: &str = "stomp-user";
/// Record header: when the publishing node relayed the message, µs since
/// the Unix epoch (its wall clock), for the `consume` stage of
/// `stomp_cluster_relay_latency_seconds` (finer than the record's
/// millisecond CreateTime, which is the fallback).
pub const H_SENT_US: &str = "stomp-cluster-sent-us";
/// Prefix of record headers carrying the message's passed-through STOMP
/// headers (`h.content-type`, ...).
pub const H_PASS_PREFIX: &str = "h.";

/// Bytes a relayed record is charged beyond its body, key and headers
/// (librdkafka's per-message bookkeeping).
const RECORD_OVERHEAD: usize = 128;
/// Most the cluster consumer prefetches, whatever `max_in_flight_bytes`.
const MAX_PREFETCH: usize = 16 << 20;

/// `queue.buffering.max.kbytes` of the relay producer: the in-flight byte
/// limit plus 1 MiB for heartbeats and librdkafka's own overhead.
pub fn producer_queue_kbytes(cfg: &ClusterConfig) -> usize {
    cfg.max_in_flight_bytes / 1024 + 1024
}

/// `queued.max.messages.kbytes` of the cluster consumer: a quarter of the
/// in-flight byte limit, at most 16 MiB, at least 64 KiB. librdkafka
/// derives `fetch.max.bytes` from it (never below `message.max.bytes`).
pub fn consumer_prefetch_kbytes(cfg: &ClusterConfig) -> usize {
    (cfg.max_in_flight_bytes / 4).clamp(64 << 10, MAX_PREFETCH) / 1024
}

/// How long the consumer waits for records per poll.
const POLL: Duration = Duration::from_millis(100);
/// Kafka metadata and watermark calls at join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The default node id: `<hostname>-<stomp port>`.
pub fn default_node_id(stomp_port: Option<u16>) -> String {
    let host: String = kafka_bridge::hostname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    match stomp_port {
        Some(p) => format!("{host}-{p}"),
        None => host,
    }
}

/// Counters and state shown on `/metrics`, `/stats.json` and the status page.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Records produced, not yet acknowledged.
    pub in_flight: AtomicUsize,
    /// Messages acknowledged by Kafka (relayed to the other nodes).
    pub relayed_out: AtomicU64,
    /// Messages from other nodes published locally.
    pub relayed_in: AtomicU64,
    /// Messages not relayed: in-flight limits, memory budget, queue full,
    /// Kafka errors.
    pub produce_failures: AtomicU64,
    /// Bytes of relayed records produced, not yet acknowledged (charged to
    /// the memory budget).
    pub in_flight_bytes: AtomicUsize,
    /// Not relayed because `cluster.max_in_flight` records were in flight.
    pub refused_in_flight: AtomicU64,
    /// Not relayed because `cluster.max_in_flight_bytes` were in flight.
    pub refused_in_flight_bytes: AtomicU64,
    /// Not relayed because the broker's memory budget was spent.
    pub refused_memory_budget: AtomicU64,
    /// Not relayed because librdkafka refused the record (its queue full,
    /// record too large).
    pub refused_producer: AtomicU64,
    /// Records behind on the cluster topic (all partitions).
    pub lag: AtomicI64,
    /// Joined and caught up.
    pub joined: AtomicBool,
    /// Node id → when it was last heard.
    seen: Mutex<HashMap<String, Instant>>,
    /// Per-hop latency of relayed messages
    /// (`stomp_cluster_relay_latency_seconds{stage}`).
    pub latency: RelayLatency,
}

/// Where a relayed message's time goes, hop by hop
/// (`stomp_cluster_relay_latency_seconds{stage=...}`).
#[derive(Debug, Default)]
pub struct RelayLatency {
    /// Publishing node: handed to the producer → Kafka's acknowledgement
    /// (delivery report).
    pub produce_ack: LatencyHistogram,
    /// Relayed by the publishing node (its wall clock, [`H_SENT_US`]) →
    /// returned by this node's consumer poll (this node's wall clock):
    /// the producer's queue and linger, Kafka, the fetch and the
    /// consumer's queue. Across machines it includes their clock offset.
    pub consume: LatencyHistogram,
    /// Consuming node: returned by the poll → handed to the local
    /// subscribers' queues (router).
    pub deliver: LatencyHistogram,
}

impl RelayLatency {
    /// The stages and their `stage` label values.
    fn stages(&self) -> [(&'static str, &LatencyHistogram); 3] {
        [
            ("produce_ack", &self.produce_ack),
            ("consume", &self.consume),
            ("deliver", &self.deliver),
        ]
    }
}

/// Microseconds since the Unix epoch by the wall clock (0 before it).
fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a produced record carries to its delivery report.
#[derive(Debug)]
struct Relayed {
    /// Bytes charged to the in-flight limit and the memory budget; 0 for
    /// a heartbeat (not charged, not counted).
    charged: usize,
    /// When it was handed to the producer.
    sent: Instant,
}

/// Producer context: counts acknowledgements and failures and gives a
/// relayed record's bytes back to the memory budget.
struct RelayContext {
    stats: Arc<ClusterStats>,
    metrics: Arc<Metrics>,
}

impl ClientContext for RelayContext {}

impl ProducerContext for RelayContext {
    type DeliveryOpaque = Box<Relayed>;

    fn delivery(&self, result: &DeliveryResult<'_>, relayed: Box<Relayed>) {
        if relayed.charged > 0 {
            self.release(relayed.charged);
            match result {
                Ok(_) => {
                    self.stats
                        .latency
                        .produce_ack
                        .observe(relayed.sent.elapsed());
                    self.stats.relayed_out.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    self.stats.produce_failures.fetch_add(1, Relaxed);
                }
            };
        }
    }
}

impl RelayContext {
    /// Gives back one relayed record: its in-flight slot and its bytes.
    fn release(&self, charged: usize) {
        self.stats.in_flight.fetch_sub(1, Relaxed);
        self.stats.in_flight_bytes.fetch_sub(charged, Relaxed);
        self.metrics.memory.release(charged);
    }
}

/// This node's membership in the cluster.
pub struct Cluster {
    node_id: String,
    topic: String,
    max_in_flight: usize,
    max_in_flight_bytes: usize,
    heartbeat: Duration,
    producer: ThreadedProducer<RelayContext>,
    stats: Arc<ClusterStats>,
    /// Next offset to read per partition (for the lag).
    positions: Mutex<Vec<i64>>,
    warned: AtomicBool,
    /// `/queue/...` across the nodes (see [`crate::cluster_queues`]).
    /// `None` only for a `Cluster` built by [`Cluster::new`] alone (unit tests).
    queues: Option<Arc<crate::cluster_queues::ClusterQueues>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// The librdkafka settings every cluster client shares: bootstrap servers
/// and the operator's extra `kafka.client` properties (security, ...).
pub(crate) fn base_config(kafka: &kafka_bridge::BridgeConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", client_id);
    for (k, v) in &kafka.client {
        c.set(k, v);
    }
    c
}

impl Cluster {
    /// The cluster handle with its relay producer (nothing connects yet).
    fn new(
        kafka: &kafka_bridge::BridgeConfig,
        cfg: &ClusterConfig,
        node_id: &str,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Cluster> {
        let stats = Arc::new(ClusterStats::default());
        let mut pcfg = base_config(kafka, &format!("{node_id}-cluster-producer"));
        pcfg.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .set("socket.nagle.disable", "true")
            .set(
                "message.timeout.ms",
                kafka
                    .produce_timeout
                    .as_millis()
                    .clamp(1, i32::MAX as u128)
                    .to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                (cfg.max_in_flight + 1_000).to_string(),
            )
            .set(
                "queue.buffering.max.kbytes",
                producer_queue_kbytes(cfg).to_string(),
            );
        for (k, v) in &cfg.producer {
            pcfg.set(k, v);
        }
        let producer: ThreadedProducer<RelayContext> = pcfg
            .create_with_context(RelayContext {
                stats: stats.clone(),
                metrics,
            })
            .map_err(|e| anyhow::anyhow!("cluster producer: {e}"))?;
        Ok(Cluster {
            node_id: node_id.to_owned(),
            topic: cfg.topic.clone(),
            max_in_flight: cfg.max_in_flight,
            max_in_flight_bytes: cfg.max_in_flight_bytes,
            heartbeat: Duration::from_millis(cfg.heartbeat_ms),
            producer,
            stats,
            positions: Mutex::new(Vec::new()),
            warned: AtomicBool::new(false),
            queues: None,
        })
    }

    /// Starts the cluster membership: creates the producer and consumer
    /// and joins in the background — creates the cluster topic if missing,
    /// assigns every partition from its current end, then starts the
    /// consumer and heartbeat threads — retrying every second while Kafka
    /// does not answer. The node is ready ([`Cluster::is_joined`]) once
    /// joined.
    pub fn start(
        core: &Arc<BrokerCore>,
        node_id: String,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Cluster>> {
        let cfg: ClusterConfig = core.config.cluster.clone();
        let kafka = core
            .config
            .kafka
            .clone()
            .ok_or_else(|| anyhow::anyhow!("cluster needs kafka.brokers"))?;
        let queues = crate::cluster_queues::ClusterQueues::start(core, &node_id, shutdown.clone())?;
        let cluster = Arc::new(Cluster {
            queues: Some(queues),
            ..Cluster::new(&kafka, &cfg, &node_id, core.metrics.clone())?
        });
        cluster.heard(&node_id);
        let mut ccfg = base_config(&kafka, &format!("{node_id}-cluster-consumer"));
        // No group: `assign` only. librdkafka still wants a group id for a
        // consumer handle; nothing is committed under it.
        ccfg.set("group.id", format!("{}.{node_id}", cfg.topic))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", "5")
            .set("fetch.error.backoff.ms", "50")
            .set(
                "queued.max.messages.kbytes",
                consumer_prefetch_kbytes(&cfg).to_string(),
            )
            .set("socket.nagle.disable", "true");
        for (k, v) in &cfg.consumer {
            ccfg.set(k, v);
        }
        let consumer: BaseConsumer = ccfg
            .create()
            .map_err(|e| anyhow::anyhow!("cluster consumer: {e}"))?;
        let c = cluster.clone();
        let weak = Arc::downgrade(core);
        tokio::spawn(async move {
            let mut consumer = Some(consumer);
            while !shutdown.is_cancelled() {
                let attempt = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = join(&kafka, &cfg, &node_id, &mut consumer) => r,
                };
                match attempt {
                    Ok(positions) => {
                        *c.positions.lock().unwrap_or_else(|e| e.into_inner()) = positions;
                        let Some(consumer) = consumer.take() else {
                            return;
                        };
                        let spawned = {
                            let (c, weak, sd) = (c.clone(), weak.clone(), shutdown.clone());
                            std::thread::Builder::new()
                                .name("cluster-consumer".into())
                                .spawn(move || consume_loop(consumer, c, weak, sd))
                        }
                        .and_then(|_| {
                            let (c, weak, sd) = (c.clone(), weak.clone(), shutdown.clone());
                            std::thread::Builder::new()
                                .name("cluster-heartbeat".into())
                                .spawn(move || heartbeat_loop(c, weak, sd))
                        });
                        if let Err(e) = spawned {
                            tracing::error!(error = %e, "cluster threads not started");
                            return;
                        }
                        c.stats.joined.store(true, Relaxed);
                        tracing::info!(node_id = %node_id, topic = %cfg.topic, "joined the cluster");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "joining the cluster failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
        Ok(cluster)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The counters.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// Joined (assigned at the end of the cluster topic) and not leaving.
    pub fn is_joined(&self) -> bool {
        self.stats.joined.load(Relaxed) && self.queues.as_ref().is_none_or(|q| q.is_joined())
    }

    /// `/queue/...` across the nodes.
    pub fn queues(&self) -> Option<&Arc<crate::cluster_queues::ClusterQueues>> {
        self.queues.as_ref()
    }

    /// Nodes heard within the last 3 heartbeat intervals, self included,
    /// sorted.
    pub fn nodes(&self) -> Vec<String> {
        let window = self.heartbeat * 3;
        let seen = self.stats.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = seen
            .iter()
            .filter(|(n, t)| **n == self.node_id || t.elapsed() <= window)
            .map(|(n, _)| n.clone())
            .collect();
        if !v.contains(&self.node_id) {
            v.push(self.node_id.clone());
        }
        v.sort();
        v
    }

    fn heard(&self, node: &str) {
        let mut seen = self.stats.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Forget nodes gone for long (bounded map).
        if seen.len() > 10_000 {
            let window = self.heartbeat * 3;
            seen.retain(|_, t| t.elapsed() <= window);
        }
        match seen.get_mut(node) {
            Some(t) => *t = Instant::now(),
            None => {
                if seen.len() < 10_000 {
                    seen.insert(node.to_owned(), Instant::now());
                }
            }
        }
    }

    /// Relays a message that a client on this node sent to a topic or user
    /// destination (already delivered locally): produced without waiting.
    /// `key` orders each publisher's messages (its session). Not relayed —
    /// and counted — when `cluster.max_in_flight` records or
    /// `cluster.max_in_flight_bytes` bytes already wait, or when the memory
    /// budget does not admit the record; otherwise the record's bytes are
    /// charged to the budget until Kafka's delivery report.
    pub fn relay(
        &self,
        key: &str,
        destination: &str,
        message_id: &str,
        user: Option<&str>,
        pass: &Headers,
        body: &Bytes,
    ) {
        let size = RECORD_OVERHEAD
            + H_SENT_US.len()
            + 20
            + key.len()
            + body.len()
            + H_KIND.len()
            + 3
            + H_ORIGIN.len()
            + self.node_id.len()
            + H_MESSAGE_ID.len()
            + message_id.len()
            + H_DESTINATION.len()
            + destination.len()
            + user.map_or(0, |u| H_USER.len() + u.len())
            + pass
                .iter()
                .map(|(n, v)| H_PASS_PREFIX.len() + n.len() + v.len())
                .sum::<usize>();
        if let Err(reason) = self.reserve(size) {
            self.stats.produce_failures.fetch_add(1, Relaxed);
            if !self.warned.swap(true, Relaxed) {
                tracing::warn!(
                    reason,
                    max_in_flight = self.max_in_flight,
                    max_in_flight_bytes = self.max_in_flight_bytes,
                    "cluster relay limit reached: messages delivered locally only"
                );
            }
            return;
        }
        let sent_us = wall_us().to_string();
        let mut headers = OwnedHeaders::new_with_capacity(pass.len() + 6)
            .insert(Header {
                key: H_KIND,
                value: Some("msg"),
            })
            .insert(Header {
                key: H_ORIGIN,
                value: Some(self.node_id.as_str()),
            })
            .insert(Header {
                key: H_MESSAGE_ID,
                value: Some(message_id),
            })
            .insert(Header {
                key: H_DESTINATION,
                value: Some(destination),
            })
            .insert(Header {
                key: H_SENT_US,
                value: Some(sent_us.as_str()),
            });
        if let Some(u) = user {
            headers = headers.insert(Header {
                key: H_USER,
                value: Some(u),
            });
        }
        let mut name = String::new();
        for (n, v) in pass.iter() {
            let Ok(n) = std::str::from_utf8(n) else {
                continue;
            };
            name.clear();
            name.push_str(H_PASS_PREFIX);
            name.push_str(n);
            headers = headers.insert(Header {
                key: name.as_str(),
                value: Some(v.as_ref()),
            });
        }
        let relayed = Box::new(Relayed {
            charged: size,
            sent: Instant::now(),
        });
        let record = BaseRecord::with_opaque_to(&self.topic, relayed)
            .key(key)
            .payload(body.as_ref())
            .headers(headers);
        if let Err((e, _)) = self.producer.send(record) {
            self.producer.context().release(size);
            self.stats.refused_producer.fetch_add(1, Relaxed);
            self.stats.produce_failures.fetch_add(1, Relaxed);
            tracing::debug!(error = %e, "cluster produce refused");
        }
    }

    /// Takes an in-flight slot and `size` bytes (of the in-flight limit and
    /// the memory budget) for one relayed record, or says which limit
    /// refused it (counted) and takes nothing.
    fn reserve(&self, size: usize) -> Result<(), &'static str> {
        let s = &self.stats;
        if s.in_flight.fetch_add(1, Relaxed) >= self.max_in_flight {
            s.in_flight.fetch_sub(1, Relaxed);
            s.refused_in_flight.fetch_add(1, Relaxed);
            return Err("in_flight");
        }
        let before = s.in_flight_bytes.fetch_add(size, Relaxed);
        // One record larger than the limit still goes alone.
        if before > 0 && before.saturating_add(size) > self.max_in_flight_bytes {
            s.in_flight_bytes.fetch_sub(size, Relaxed);
            s.in_flight.fetch_sub(1, Relaxed);
            s.refused_in_flight_bytes.fetch_add(1, Relaxed);
            return Err("in_flight_bytes");
        }
        let budget = &self.producer.context().metrics.memory;
        if !budget.try_charge(size) {
            s.in_flight_bytes.fetch_sub(size, Relaxed);
            s.in_flight.fetch_sub(1, Relaxed);
            s.refused_memory_budget.fetch_add(1, Relaxed);
            return Err("memory_budget");
        }
        Ok(())
    }

    /// Leaving (graceful shutdown): not ready any more; flushes what is
    /// in flight (bounded by `timeout`).
    pub fn leave(&self, timeout: Duration) {
        self.stats.joined.store(false, Relaxed);
        let _ = self.producer.flush(timeout);
    }

    /// Prometheus text.
    pub fn write_prometheus(&self, out: &mut String) {
        use crate::metrics::PromText;
        let s = &self.stats;
        PromText::new(out)
            .header(
                "stomp_cluster_info",
                PromType::Gauge,
                "This node's id in the cluster.",
            )
            .sample("stomp_cluster_info", Some(("node_id", &self.node_id)), 1)
            .gauge(
                "stomp_cluster_nodes",
                "Nodes heard within the last 3 heartbeat intervals, self included.",
                self.nodes().len() as i64,
            )
            .gauge(
                "stomp_cluster_lag",
                "Records behind on the cluster topic.",
                s.lag.load(Relaxed).max(0),
            )
            .counter(
                "stomp_cluster_relayed_out_total",
                "Messages relayed to the other nodes (acknowledged by Kafka).",
                s.relayed_out.load(Relaxed),
            )
            .counter(
                "stomp_cluster_relayed_in_total",
                "Messages from other nodes delivered here.",
                s.relayed_in.load(Relaxed),
            )
            .counter(
                "stomp_cluster_produce_failures_total",
                "Messages not relayed (in-flight limits, memory budget, Kafka errors).",
                s.produce_failures.load(Relaxed),
            )
            .header(
                "stomp_cluster_relay_refused_total",
                PromType::Counter,
                "Messages not relayed because a limit refused them (also in stomp_cluster_produce_failures_total).",
            )
            .sample(
                "stomp_cluster_relay_refused_total",
                Some(("reason", "in_flight")),
                s.refused_in_flight.load(Relaxed),
            )
            .sample(
                "stomp_cluster_relay_refused_total",
                Some(("reason", "in_flight_bytes")),
                s.refused_in_flight_bytes.load(Relaxed),
            )
            .sample(
                "stomp_cluster_relay_refused_total",
                Some(("reason", "memory_budget")),
                s.refused_memory_budget.load(Relaxed),
            )
            .sample(
                "stomp_cluster_relay_refused_total",
                Some(("reason", "producer")),
                s.refused_producer.load(Relaxed),
            )
            .gauge(
                "stomp_cluster_in_flight",
                "Relayed messages awaiting Kafka's acknowledgement.",
                s.in_flight.load(Relaxed) as i64,
            )
            .gauge(
                "stomp_cluster_in_flight_bytes",
                "Bytes of relayed messages awaiting Kafka's acknowledgement (charged to the memory budget).",
                s.in_flight_bytes.load(Relaxed) as i64,
            );
        let mut p = PromText::new(out);
        p.header(
            "stomp_cluster_relay_latency_seconds",
            PromType::Histogram,
            "Relayed messages' latency per hop: produce_ack (publishing node: produce to Kafka's ack), consume (relayed by the publishing node to polled here; wall clocks), deliver (polled here to handed to local subscribers).",
        );
        for (stage, h) in s.latency.stages() {
            p.histogram(
                "stomp_cluster_relay_latency_seconds",
                &[("stage", stage)],
                h,
            );
        }
        if let Some(queues) = &self.queues {
            queues.write_prometheus(out);
        }
    }

    /// The `cluster` object of `/stats.json`.
    pub fn json(&self) -> serde_json::Value {
        let s = &self.stats;
        serde_json::json!({
            "node_id": self.node_id,
            "nodes": self.nodes(),
            "joined": self.is_joined(),
            "lag": s.lag.load(Relaxed).max(0),
            "relayed_in": s.relayed_in.load(Relaxed),
            "relayed_out": s.relayed_out.load(Relaxed),
            "produce_failures": s.produce_failures.load(Relaxed),
            "in_flight": s.in_flight.load(Relaxed),
            "in_flight_bytes": s.in_flight_bytes.load(Relaxed),
            "queues": self.queues.as_ref().map(|q| q.json()),
        })
    }
}

/// One attempt to join: the topic exists, and `consumer` is assigned every
/// partition at its end as of now. Returns those end offsets.
async fn join(
    kafka: &kafka_bridge::BridgeConfig,
    cfg: &ClusterConfig,
    node_id: &str,
    consumer: &mut Option<BaseConsumer>,
) -> anyhow::Result<Vec<i64>> {
    ensure_topic(kafka, cfg, node_id).await?;
    let c = consumer
        .take()
        .ok_or_else(|| anyhow::anyhow!("no consumer"))?;
    let topic = cfg.topic.clone();
    let (c, res) = tokio::task::spawn_blocking(move || {
        let res = (|| -> anyhow::Result<Vec<i64>> {
            let md = c.fetch_metadata(Some(&topic), JOIN_TIMEOUT)?;
            let parts = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| t.partitions().len())
                .unwrap_or(0);
            if parts == 0 {
                anyhow::bail!("cluster topic {topic} has no partitions yet");
            }
            let mut tpl = TopicPartitionList::new();
            let mut positions = Vec::with_capacity(parts);
            for p in 0..i32::try_from(parts)? {
                let (_, high) = c.fetch_watermarks(&topic, p, JOIN_TIMEOUT)?;
                tpl.add_partition_offset(&topic, p, Offset::Offset(high))?;
                positions.push(high);
            }
            c.assign(&tpl)?;
            Ok(positions)
        })();
        (c, res)
    })
    .await?;
    *consumer = Some(c);
    res
}

/// Creates the cluster topic unless it exists.
async fn ensure_topic(
    kafka: &kafka_bridge::BridgeConfig,
    cfg: &ClusterConfig,
    node_id: &str,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(kafka, &format!("{node_id}-admin"))
        .create()
        .map_err(|e| anyhow::anyhow!("cluster admin client: {e}"))?;
    let topic = NewTopic::new(
        &cfg.topic,
        cfg.partitions,
        TopicReplication::Fixed(cfg.replication_factor),
    );
    let opts = AdminOptions::new()
        .operation_timeout(Some(JOIN_TIMEOUT))
        .request_timeout(Some(JOIN_TIMEOUT));
    let results = admin
        .create_topics(&[topic], &opts)
        .await
        .map_err(|e| anyhow::anyhow!("creating cluster topic {}: {e}", cfg.topic))?;
    for r in results {
        match r {
            Ok(_) => {
                tracing::info!(topic = %cfg.topic, partitions = cfg.partitions, "cluster topic created")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => anyhow::bail!("creating cluster topic {t}: {code}"),
        }
    }
    Ok(())
}

/// Reads the cluster topic: heartbeats update the seen nodes; messages
/// from other nodes go into the local router with their `message-id`.
fn consume_loop(
    consumer: BaseConsumer,
    cluster: Arc<Cluster>,
    core: Weak<BrokerCore>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let Some(res) = consumer.poll(POLL) else {
            continue;
        };
        let polled = Instant::now();
        let msg = match res {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(_)) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cluster consumer");
                continue;
            }
        };
        {
            let mut pos = cluster.positions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = usize::try_from(msg.partition())
                .ok()
                .and_then(|p| pos.get_mut(p))
            {
                *p = msg.offset() + 1;
            }
        }
        let mut kind = None;
        let mut origin = None;
        let mut id = None;
        let mut destination = None;
        let mut sent_us = None;
        let mut pass = Headers::new();
        if let Some(hs) = msg.headers() {
            for h in hs.iter() {
                let v = h.value.unwrap_or_default();
                match h.key {
                    H_KIND => kind = Some(v),
                    H_ORIGIN => origin = std::str::from_utf8(v).ok(),
                    H_MESSAGE_ID => id = std::str::from_utf8(v).ok(),
                    H_DESTINATION => destination = std::str::from_utf8(v).ok(),
                    H_SENT_US => {
                        sent_us = std::str::from_utf8(v)
                            .ok()
                            .and_then(|v| v.parse::<u64>().ok())
                    }
                    k => {
                        if let Some(name) = k.strip_prefix(H_PASS_PREFIX) {
                            pass.push(
                                Bytes::copy_from_slice(name.as_bytes()),
                                Bytes::copy_from_slice(v),
                            );
                        }
                    }
                }
            }
        }
        let Some(origin) = origin else { continue };
        if origin == cluster.node_id {
            continue;
        }
        match kind {
            Some(b"hb") => cluster.heard(origin),
            Some(k @ (b"qsub" | b"qmsg" | b"qack" | b"qnack")) => {
                let Some(core) = core.upgrade() else { break };
                if let Some(queues) = &cluster.queues {
                    queues.on_record(&core, k, origin, &msg);
                }
            }
            Some(b"msg") => {
                let (Some(id), Some(destination)) = (id, destination) else {
                    continue;
                };
                let Some(core) = core.upgrade() else { break };
                pass.push(
                    Bytes::from_static(b"message-id"),
                    Bytes::copy_from_slice(id.as_bytes()),
                );
                let sent_us = sent_us.or_else(|| {
                    msg.timestamp()
                        .to_millis()
                        .and_then(|ms| u64::try_from(ms).ok())
                        .map(|ms| ms.saturating_mul(1000))
                });
                if let Some(sent_us) = sent_us {
                    let took = wall_us().saturating_sub(sent_us);
                    cluster
                        .stats
                        .latency
                        .consume
                        .observe(Duration::from_micros(took));
                }
                let body = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
                match core.publish(destination, pass, body) {
                    Ok(_) => {
                        cluster.stats.latency.deliver.observe(polled.elapsed());
                        cluster.stats.relayed_in.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        core.metrics.messages_dropped.fetch_add(1, Relaxed);
                        tracing::debug!(destination, error = %e, "relayed message not delivered");
                    }
                }
            }
            _ => {}
        }
    }
    cluster.stats.joined.store(false, Relaxed);
}

/// Announces this node every heartbeat interval and measures the lag.
fn heartbeat_loop(cluster: Arc<Cluster>, core: Weak<BrokerCore>, shutdown: CancellationToken) {
    let mut next = Instant::now();
    while !shutdown.is_cancelled() {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        next = now + cluster.heartbeat;
        let Some(core) = core.upgrade() else { break };
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let value = serde_json::json!({
            "ts": ts,
            "connections": core.metrics.connections.load(Relaxed),
        })
        .to_string();
        drop(core);
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: H_KIND,
                value: Some("hb"),
            })
            .insert(Header {
                key: H_ORIGIN,
                value: Some(cluster.node_id.as_str()),
            });
        let record = BaseRecord::with_opaque_to(
            &cluster.topic,
            Box::new(Relayed {
                charged: 0,
                sent: Instant::now(),
            }),
        )
        .key(cluster.node_id.as_str())
        .payload(value.as_str())
        .headers(headers);
        if let Err((e, _)) = cluster.producer.send(record) {
            tracing::debug!(error = %e, "cluster heartbeat not produced");
        }
        cluster.heard(&cluster.node_id);
        // Lag: the partitions' ends now against what the consumer read.
        let positions = cluster
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut lag = 0i64;
        let mut ok = true;
        for (p, pos) in positions.iter().enumerate() {
            match cluster.producer.client().fetch_watermarks(
                &cluster.topic,
                p as i32,
                Duration::from_secs(1),
            ) {
                Ok((_, high)) => lag += (high - pos).max(0),
                Err(_) => ok = false,
            }
        }
        if ok {
            cluster.stats.lag.store(lag, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster handle whose producer points at a closed port: records
    /// stay in flight (nothing acknowledges them).
    fn unreachable(max_in_flight: usize, max_bytes: usize, budget: usize) -> Cluster {
        let mut kafka = kafka_bridge::BridgeConfig::default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        kafka.brokers = format!("127.0.0.1:{port}");
        kafka.produce_timeout = Duration::from_secs(300);
        let cfg = ClusterConfig {
            enabled: true,
            max_in_flight,
            max_in_flight_bytes: max_bytes,
            ..ClusterConfig::default()
        };
        let metrics = Arc::new(Metrics::default());
        metrics.memory.set_limit(budget);
        Cluster::new(&kafka, &cfg, "unit-node", metrics).expect("cluster")
    }

    fn relay_n(c: &Cluster, n: usize, body: usize) {
        let body = Bytes::from(vec![b'x'; body]);
        let mut pass = Headers::new();
        pass.push(
            Bytes::from_static(b"content-type"),
            Bytes::from_static(b"text/plain"),
        );
        for i in 0..n {
            c.relay("1", "/topic/t", &format!("m-{i}"), Some("u"), &pass, &body);
        }
    }

    fn refused(c: &Cluster) -> [u64; 4] {
        let s = &c.stats;
        [
            s.refused_in_flight.load(Relaxed),
            s.refused_in_flight_bytes.load(Relaxed),
            s.refused_memory_budget.load(Relaxed),
            s.refused_producer.load(Relaxed),
        ]
    }

    #[test]
    fn relay_is_bounded_by_in_flight_bytes_and_charges_the_budget() {
        let c = unreachable(10_000, 16 * 1024, usize::MAX);
        relay_n(&c, 100, 1000);
        let bytes = c.stats.in_flight_bytes.load(Relaxed);
        let n = c.stats.in_flight.load(Relaxed);
        assert!(bytes <= 16 * 1024, "{bytes}");
        assert!((10..16).contains(&n), "{n} records in flight");
        assert_eq!(c.producer.context().metrics.memory.used(), bytes);
        assert_eq!(refused(&c), [0, 100 - n as u64, 0, 0]);
        assert_eq!(c.stats.produce_failures.load(Relaxed), 100 - n as u64);
        let mut text = String::new();
        c.write_prometheus(&mut text);
        assert!(text.contains(&format!("stomp_cluster_in_flight_bytes {bytes}\n")));
        assert!(text.contains(&format!(
            "stomp_cluster_relay_refused_total{{reason=\"in_flight_bytes\"}} {}\n",
            100 - n
        )));
    }

    #[test]
    fn relay_is_refused_when_the_memory_budget_is_spent() {
        let c = unreachable(10_000, 64 << 20, 8 * 1024);
        relay_n(&c, 50, 1000);
        let used = c.producer.context().metrics.memory.used();
        assert!(used <= 8 * 1024, "{used}");
        assert_eq!(used, c.stats.in_flight_bytes.load(Relaxed));
        let n = c.stats.in_flight.load(Relaxed) as u64;
        assert!(n >= 5, "{n}");
        assert_eq!(refused(&c), [0, 0, 50 - n, 0]);
    }

    #[test]
    fn relay_is_bounded_by_in_flight_records() {
        let c = unreachable(3, 64 << 20, usize::MAX);
        relay_n(&c, 10, 10);
        assert_eq!(c.stats.in_flight.load(Relaxed), 3);
        assert_eq!(refused(&c), [7, 0, 0, 0]);
    }

    #[test]
    fn a_record_that_librdkafka_refuses_gives_its_bytes_back() {
        // Larger than librdkafka's message.max.bytes (1 MB): refused by
        // send(), nothing stays charged.
        let c = unreachable(10_000, 64 << 20, usize::MAX);
        relay_n(&c, 1, 2_000_000);
        assert_eq!(refused(&c), [0, 0, 0, 1]);
        assert_eq!(c.stats.in_flight.load(Relaxed), 0);
        assert_eq!(c.stats.in_flight_bytes.load(Relaxed), 0);
        assert_eq!(c.producer.context().metrics.memory.used(), 0);
    }

    #[test]
    fn librdkafka_queues_are_sized_from_max_in_flight_bytes() {
        let cfg = ClusterConfig::default();
        assert_eq!(producer_queue_kbytes(&cfg), 64 * 1024 + 1024);
        assert_eq!(consumer_prefetch_kbytes(&cfg), 16 * 1024);
        let small = ClusterConfig {
            max_in_flight_bytes: 1 << 20,
            ..ClusterConfig::default()
        };
        assert_eq!(consumer_prefetch_kbytes(&small), 256);
        let tiny = ClusterConfig {
            max_in_flight_bytes: 4096,
            ..ClusterConfig::default()
        };
        assert_eq!(consumer_prefetch_kbytes(&tiny), 64);
    }
}
