//! Cluster mode, `/queue/...`: competing consumers across the nodes, each
//! message to exactly one consumer in the cluster (at-least-once). See
//! docs/cluster.md ("Queues across nodes").
//!
//! * **SEND** to a queue on any node: produced to the queue topic
//!   `<cluster.topic>.queues` (key = the queue, so one queue lives in one
//!   partition, in order; `acks=all`, idempotent). The RECEIPT follows
//!   Kafka's acknowledgement. Nothing is routed locally at SEND time.
//! * **Ownership**: every node is a member of one consumer group
//!   `<cluster.topic>.queues` on the queue topic (cooperative-sticky,
//!   offsets committed by hand). The node a partition is assigned to owns
//!   the queues in it.
//! * **Dispatch**: the owner hands each record to one consumer: a local one
//!   ([`Router::offer_queue`](crate::router::Router::offer_queue)), or a node
//!   that announced consumers of the queue (`qsub` records on the cluster
//!   topic, on change and with every heartbeat) by a `qmsg` record addressed
//!   to it, at most as many outstanding per node and queue as it announced
//!   credit. Nodes take turns.
//! * **Settling**: a message carries a [`Ticket`]: the consumer's ACK (or
//!   the write, for `ack:auto`) settles it as done, a NACK, a consumer that
//!   leaves holding it or its drop undelivered settles it as given back. On
//!   the owner that updates the partition's window directly; elsewhere it
//!   produces `qack`/`qnack` (partition, offset) for whoever owns the
//!   partition now. Given back → redelivered (`redelivered:true`), to
//!   another node first.
//! * **Window**: per partition at most `cluster.queue_window` records are
//!   taken and not done (the partition is paused beyond, and while the
//!   memory budget — which the held records are charged to — admits
//!   nothing more); the committed
//!   offset is the lowest record not done. A new owner resumes there:
//!   records below the end it found at assignment are marked redelivered.
//! * **Nodes gone**: a node not announcing for 3 heartbeat intervals (or
//!   announcing a new incarnation) gets nothing more; what was outstanding
//!   there is redelivered.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
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
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::KafkaError,
    message::{Header, Headers as _, Message as _, OwnedHeaders},
    producer::{
        BaseRecord, DeliveryResult, FutureProducer, FutureRecord, ProducerContext, ThreadedProducer,
    },
    types::RDKafkaErrorCode,
    ClientContext, Offset, TopicPartitionList,
};
use stomp_codec::Headers;
use tokio_util::sync::CancellationToken;

use crate::{
    cluster::{H_DESTINATION, H_KIND, H_MESSAGE_ID, H_ORIGIN, H_PASS_PREFIX, H_USER},
    config::ClusterConfig,
    core::BrokerCore,
    router::Message,
};

/// Record header (cluster topic, `qmsg`): the node it is addressed to.
pub const H_TARGET: &str = "stomp-cluster-target";
/// Record header (`qmsg`, `qack`, `qnack`): the queue record's partition.
pub const H_PARTITION: &str = "stomp-cluster-partition";
/// Record header (`qmsg`, `qack`, `qnack`): the queue record's offset.
pub const H_OFFSET: &str = "stomp-cluster-offset";
/// Record header (`qmsg`): `1` when delivered before.
pub const H_REDELIVERED: &str = "stomp-cluster-redelivered";

/// Announced credit per local consumer (outstanding messages an owner may
/// dispatch to this node per consumer), capped by the prefetch limit.
const CREDIT_PER_CONSUMER: usize = 100;
/// Most queues one announcement lists.
const MAX_ANNOUNCED: usize = 10_000;
/// Most settle/announce events waiting for the queue thread.
const MAX_INBOX: usize = 1_000_000;
/// Queue thread poll.
const POLL: Duration = Duration::from_millis(5);
/// How often offsets are committed (when changed).
const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// A queue message's receipt with its owner: settled once, as done (ACK,
/// or written for `ack:auto`) or given back (NACK, the consumer left, or
/// dropped undelivered — the default when dropped unsettled).
pub struct Ticket {
    inbox: Weak<Inbox>,
    partition: i32,
    offset: i64,
    settled: AtomicBool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// Delivered and acknowledged: done.
    pub fn ack(&self) {
        self.settle(true);
    }

    /// Given back: the owner redelivers it.
    pub fn nack(&self) {
        self.settle(false);
    }

    fn settle(&self, done: bool) {
        if self.settled.swap(true, Relaxed) {
            return;
        }
        if let Some(inbox) = self.inbox.upgrade() {
            inbox.push(Event::Settled {
                partition: self.partition,
                offset: self.offset,
                done,
            });
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.settle(false);
    }
}

/// What the queue thread is told by other threads.
#[derive(Debug)]
enum Event {
    /// A local ticket settled.
    Settled {
        partition: i32,
        offset: i64,
        done: bool,
    },
    /// `qack`/`qnack` from another node (or a failed `qmsg` produce).
    Remote {
        node: Arc<str>,
        partition: i32,
        offset: i64,
        done: bool,
    },
    /// `qsub` from another node.
    Announce {
        node: Arc<str>,
        incarnation: u64,
        queues: HashMap<String, usize>,
    },
}

/// Events for the queue thread, bounded: settle events are bounded by the
/// records taken (the windows), announcements are dropped past the limit.
#[derive(Debug, Default)]
struct Inbox(Mutex<VecDeque<Event>>);

impl Inbox {
    fn push(&self, e: Event) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_INBOX && matches!(e, Event::Announce { .. }) {
            return;
        }
        q.push_back(e);
    }

    fn take(&self) -> VecDeque<Event> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Counters for `/metrics` and `/stats.json`.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Records handed to a consumer (locally or to another node).
    pub dispatched: AtomicU64,
    /// Of them, redeliveries.
    pub redelivered: AtomicU64,
    /// Queue topic partitions this node owns.
    pub owned: AtomicI64,
    /// Records taken and not done (all owned partitions).
    pub window: AtomicI64,
    /// The queue consumer group has assigned (possibly nothing) at least once.
    pub joined: AtomicBool,
    /// Bytes the records taken and not done are charged to the memory budget.
    pub held_bytes: AtomicUsize,
    /// Times a partition was paused because the memory budget admitted
    /// nothing more (window-full pauses not counted).
    pub budget_pauses: AtomicU64,
}

/// What a `qmsg` delivery report needs: (target node, partition, offset).
type QmsgOpaque = Option<Box<(Arc<str>, i32, i64)>>;

/// Producer context for `qmsg` and the other cluster records: a `qmsg`
/// that Kafka refuses is given back at once.
struct QContext {
    inbox: Arc<Inbox>,
}

impl ClientContext for QContext {}

impl ProducerContext for QContext {
    type DeliveryOpaque = Box<QmsgOpaque>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        if let (Err(_), Some(o)) = (result, *opaque) {
            let (node, partition, offset) = *o;
            self.inbox.push(Event::Remote {
                node,
                partition,
                offset,
                done: false,
            });
        }
    }
}

/// Consumer context: commits the revoked partitions' positions before they
/// go, and flags every rebalance for the queue thread.
struct GroupContext {
    commit_points: Arc<Mutex<HashMap<i32, i64>>>,
    changed: Arc<AtomicBool>,
    topic: String,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let points = self
                .commit_points
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mut commit = TopicPartitionList::new();
            for e in tpl.elements() {
                if let Some(o) = points.get(&e.partition()) {
                    let _ =
                        commit.add_partition_offset(&self.topic, e.partition(), Offset::Offset(*o));
                }
            }
            if commit.count() > 0 {
                if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                    tracing::debug!(error = %e, "queue offsets not committed at revoke");
                }
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        self.changed.store(true, Relaxed);
    }
}

/// This node's part in cluster queues.
pub struct ClusterQueues {
    node_id: Arc<str>,
    cluster_topic: String,
    queue_topic: String,
    incarnation: u64,
    window: usize,
    heartbeat: Duration,
    /// SENDs to the queue topic (RECEIPT after the ack).
    send_producer: FutureProducer,
    /// `qsub`/`qmsg`/`qack`/`qnack` on the cluster topic.
    producer: ThreadedProducer<QContext>,
    inbox: Arc<Inbox>,
    stats: QueueStats,
    produce_timeout: Duration,
}

impl std::fmt::Debug for ClusterQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterQueues")
            .field("queue_topic", &self.queue_topic)
            .finish_non_exhaustive()
    }
}

fn header_value<'a>(name: &'a str, v: &'a str) -> Header<'a, &'a str> {
    Header {
        key: name,
        value: Some(v),
    }
}

impl ClusterQueues {
    /// Creates the producers and starts the queue thread (which creates the
    /// queue topic if missing and joins the group, retrying while Kafka
    /// does not answer).
    pub fn start(
        core: &Arc<BrokerCore>,
        node_id: &str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<ClusterQueues>> {
        let cfg: ClusterConfig = core.config.cluster.clone();
        let kafka = core
            .config
            .kafka
            .clone()
            .ok_or_else(|| anyhow::anyhow!("cluster needs kafka.brokers"))?;
        let timeout_ms = kafka
            .produce_timeout
            .as_millis()
            .clamp(1, i32::MAX as u128)
            .to_string();
        let mut scfg = crate::cluster::base_config(&kafka, &format!("{node_id}-queue-producer"));
        scfg.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .set("socket.nagle.disable", "true")
            .set("message.timeout.ms", &timeout_ms);
        let send_producer: FutureProducer = scfg
            .create()
            .map_err(|e| anyhow::anyhow!("cluster queue producer: {e}"))?;
        let queue_topic = format!("{}.queues", cfg.topic);
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        let inbox = Arc::new(Inbox::default());
        let mut pcfg = crate::cluster::base_config(&kafka, &format!("{node_id}-queue-control"));
        pcfg.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .set("socket.nagle.disable", "true")
            .set("message.timeout.ms", &timeout_ms);
        let producer: ThreadedProducer<QContext> = pcfg
            .create_with_context(QContext {
                inbox: inbox.clone(),
            })
            .map_err(|e| anyhow::anyhow!("cluster queue control producer: {e}"))?;
        let queues = Arc::new(ClusterQueues {
            node_id: Arc::from(node_id),
            cluster_topic: cfg.topic.clone(),
            queue_topic: queue_topic.clone(),
            incarnation,
            window: cfg.queue_window.max(1),
            heartbeat: Duration::from_millis(cfg.heartbeat_ms.max(1)),
            send_producer,
            producer,
            inbox,
            stats: QueueStats::default(),
            produce_timeout: kafka.produce_timeout,
        });
        let q = queues.clone();
        let weak = Arc::downgrade(core);
        let group_cfg = {
            let mut c = crate::cluster::base_config(&kafka, &format!("{node_id}-queue-consumer"));
            c.set("group.id", &queue_topic)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500")
                .set("fetch.wait.max.ms", "5")
                .set("fetch.error.backoff.ms", "50")
                .set("queued.max.messages.kbytes", "8192")
                .set("socket.nagle.disable", "true");
            c
        };
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                let made = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = ensure_queue_topic(&kafka, &cfg, &q.queue_topic, &q.node_id) => r,
                };
                match made {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster queue topic not ready; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
            let spawned = std::thread::Builder::new()
                .name("cluster-queues".into())
                .spawn(move || {
                    let commit_points = Arc::new(Mutex::new(HashMap::new()));
                    let changed = Arc::new(AtomicBool::new(false));
                    let consumer: Result<BaseConsumer<GroupContext>, _> = group_cfg
                        .create_with_context(GroupContext {
                            commit_points: commit_points.clone(),
                            changed: changed.clone(),
                            topic: q.queue_topic.clone(),
                        });
                    let consumer = match consumer {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(error = %e, "cluster queue consumer not created");
                            return;
                        }
                    };
                    if let Err(e) = consumer.subscribe(&[q.queue_topic.as_str()]) {
                        tracing::error!(error = %e, "cluster queue topic not subscribed");
                        return;
                    }
                    Owner {
                        q: q.clone(),
                        core: weak,
                        consumer,
                        commit_points,
                        changed,
                        parts: HashMap::new(),
                        pending: HashMap::new(),
                        nodes: HashMap::new(),
                        outstanding: HashMap::new(),
                        rr: HashMap::new(),
                        last_commit: Instant::now(),
                        last_announce: None,
                        announced_epoch: u64::MAX,
                        held: 0,
                    }
                    .run(&shutdown);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cluster queue thread not started");
            }
        });
        Ok(queues)
    }

    /// The counters.
    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// The queue group has assigned partitions (possibly none) once.
    pub fn is_joined(&self) -> bool {
        self.stats.joined.load(Relaxed)
    }

    fn push(&self, e: Event) {
        self.inbox.push(e);
    }

    /// Produces a SEND to `/queue/<queue>` to the queue topic; resolves once
    /// Kafka acknowledged it (or failed).
    pub fn send(
        &self,
        queue: &str,
        destination: &str,
        message_id: &str,
        user: Option<&str>,
        pass: &Headers,
        body: &Bytes,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let mut headers = OwnedHeaders::new_with_capacity(pass.len() + 4)
            .insert(header_value(H_ORIGIN, &self.node_id))
            .insert(header_value(H_MESSAGE_ID, message_id))
            .insert(header_value(H_DESTINATION, destination));
        if let Some(u) = user {
            headers = headers.insert(header_value(H_USER, u));
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
        let record = FutureRecord::to(&self.queue_topic)
            .key(queue)
            .payload(body.as_ref())
            .headers(headers);
        let sent = self
            .send_producer
            .send_result(record)
            .map_err(|(e, _)| e.to_string());
        let timeout = self.produce_timeout;
        async move {
            match sent {
                Err(e) => Err(e),
                Ok(delivery) => {
                    match tokio::time::timeout(timeout + Duration::from_secs(1), delivery).await {
                        Ok(Ok(Ok(_))) => Ok(()),
                        Ok(Ok(Err((e, _)))) => Err(e.to_string()),
                        Ok(Err(_)) => Err("producer gone".into()),
                        Err(_) => Err("timed out".into()),
                    }
                }
            }
        }
    }

    /// A cluster-topic record of kind `qsub`, `qmsg`, `qack` or `qnack`
    /// from another node (read by the cluster consumer thread).
    pub(crate) fn on_record(
        &self,
        core: &BrokerCore,
        kind: &[u8],
        origin: &str,
        msg: &rdkafka::message::BorrowedMessage<'_>,
    ) {
        if kind == b"qmsg" {
            // Addressed to one node: the others stop at this header.
            let to_me = msg.headers().is_some_and(|hs| {
                hs.iter()
                    .any(|h| h.key == H_TARGET && h.value == Some(self.node_id.as_bytes()))
            });
            if !to_me {
                return;
            }
        }
        let mut target = None;
        let mut partition = None;
        let mut offset = None;
        let mut redelivered = false;
        let mut id = None;
        let mut destination = None;
        let mut pass = Headers::new();
        if let Some(hs) = msg.headers() {
            for h in hs.iter() {
                let v = h.value.unwrap_or_default();
                let s = std::str::from_utf8(v).ok();
                match h.key {
                    H_TARGET => target = s,
                    H_PARTITION => partition = s.and_then(|s| s.parse::<i32>().ok()),
                    H_OFFSET => offset = s.and_then(|s| s.parse::<i64>().ok()),
                    H_REDELIVERED => redelivered = v == b"1",
                    H_MESSAGE_ID => id = s,
                    H_DESTINATION => destination = s,
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
        match kind {
            b"qsub" => {
                let Some(v) = msg
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                else {
                    return;
                };
                let incarnation = v["inc"].as_u64().unwrap_or(0);
                let mut queues = HashMap::new();
                if let Some(m) = v["queues"].as_object() {
                    for (k, c) in m.iter().take(MAX_ANNOUNCED) {
                        if let Some(c) = c.as_u64() {
                            queues.insert(k.clone(), c as usize);
                        }
                    }
                }
                self.push(Event::Announce {
                    node: Arc::from(origin),
                    incarnation,
                    queues,
                });
            }
            b"qack" | b"qnack" => {
                if let (Some(partition), Some(offset)) = (partition, offset) {
                    self.push(Event::Remote {
                        node: Arc::from(origin),
                        partition,
                        offset,
                        done: kind == b"qack",
                    });
                }
            }
            b"qmsg" => {
                if target != Some(&*self.node_id) {
                    return;
                }
                let (Some(partition), Some(offset), Some(id), Some(destination)) =
                    (partition, offset, id, destination)
                else {
                    return;
                };
                let body = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
                let message = Arc::new(
                    Message::new(destination, id, pass, body)
                        .with_ticket(self.ticket(partition, offset)),
                );
                // Nobody here can take it now: the ticket drops unsettled,
                // which gives it back to the owner.
                let _ = core.router.offer_queue(&message, redelivered);
            }
            _ => {}
        }
    }

    fn ticket(&self, partition: i32, offset: i64) -> Ticket {
        Ticket {
            inbox: Arc::downgrade(&self.inbox),
            partition,
            offset,
            settled: AtomicBool::new(false),
        }
    }

    fn produce_control(
        &self,
        kind: &str,
        key: &str,
        extra: &[(&str, &str)],
        body: &[u8],
        opaque: QmsgOpaque,
    ) {
        let mut headers = OwnedHeaders::new_with_capacity(extra.len() + 2)
            .insert(header_value(H_KIND, kind))
            .insert(header_value(H_ORIGIN, &self.node_id));
        for (k, v) in extra {
            headers = headers.insert(header_value(k, v));
        }
        let record = BaseRecord::with_opaque_to(&self.cluster_topic, Box::new(opaque))
            .key(key)
            .payload(body)
            .headers(headers);
        if let Err((e, record)) = self.producer.send(record) {
            tracing::debug!(error = %e, kind, "cluster queue record not produced");
            if let Some(o) = *record.delivery_opaque {
                let (node, partition, offset) = *o;
                self.push(Event::Remote {
                    node,
                    partition,
                    offset,
                    done: false,
                });
            }
        }
    }

    /// Prometheus text.
    pub fn write_prometheus(&self, out: &mut String) {
        let s = &self.stats;
        crate::metrics::PromText::new(out)
            .counter(
                "stomp_cluster_queue_dispatched_total",
                "Queue messages this node (as owner) handed to a consumer, here or on another node.",
                s.dispatched.load(Relaxed),
            )
            .counter(
                "stomp_cluster_queue_redelivered_total",
                "Of them, redeliveries (NACK, consumer or node gone, new owner).",
                s.redelivered.load(Relaxed),
            )
            .gauge(
                "stomp_cluster_queue_owned_partitions",
                "Queue topic partitions this node owns.",
                s.owned.load(Relaxed).max(0),
            );
    }

    /// The `queues` part of `/stats.json`'s `cluster` object.
    pub fn json(&self) -> serde_json::Value {
        let s = &self.stats;
        serde_json::json!({
            "topic": self.queue_topic,
            "joined": self.is_joined(),
            "owned_partitions": s.owned.load(Relaxed).max(0),
            "window": s.window.load(Relaxed).max(0),
            "dispatched": s.dispatched.load(Relaxed),
            "redelivered": s.redelivered.load(Relaxed),
            "held_bytes": s.held_bytes.load(Relaxed),
            "budget_pauses": s.budget_pauses.load(Relaxed),
        })
    }
}

/// Creates the queue topic unless it exists.
async fn ensure_queue_topic(
    kafka: &kafka_bridge::BridgeConfig,
    cfg: &ClusterConfig,
    topic: &str,
    node_id: &str,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        crate::cluster::base_config(kafka, &format!("{node_id}-queue-admin"))
            .create()
            .map_err(|e| anyhow::anyhow!("cluster admin client: {e}"))?;
    let new = NewTopic::new(
        topic,
        cfg.partitions,
        TopicReplication::Fixed(cfg.replication_factor),
    );
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&[new], &opts)
        .await
        .map_err(|e| anyhow::anyhow!("creating queue topic {topic}: {e}"))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, "cluster queue topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => anyhow::bail!("creating queue topic {t}: {code}"),
        }
    }
    Ok(())
}

/// One queue record the owner holds.
struct Entry {
    queue: Arc<str>,
    destination: Arc<str>,
    message_id: Arc<str>,
    user: Option<Arc<str>>,
    pass: Headers,
    body: Bytes,
    cost: usize,
    state: State,
    redelivered: bool,
    /// Where it was given back from: tried last next time.
    avoid: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Pending,
    Local,
    Remote(Arc<str>),
}

/// An owned partition.
struct Part {
    /// Records taken and not done, by offset.
    entries: BTreeMap<i64, Entry>,
    /// The next offset to take (-1: whatever comes first).
    next: i64,
    /// Records below this were possibly delivered by a previous owner.
    redeliver_below: i64,
    paused: bool,
    committed: i64,
}

impl Part {
    fn commit_point(&self) -> Option<i64> {
        self.entries
            .keys()
            .next()
            .copied()
            .or((self.next >= 0).then_some(self.next))
    }
}

/// Another node's announcement.
struct NodeInfo {
    incarnation: u64,
    heard: Instant,
    /// Queue → credit.
    queues: HashMap<String, usize>,
    /// Queues it gave something back on: no more until it announces again.
    blocked: BTreeSet<String>,
}

/// The queue thread's state: everything about owned partitions lives here
/// (other threads talk to it through the inbox).
struct Owner {
    q: Arc<ClusterQueues>,
    core: Weak<BrokerCore>,
    consumer: BaseConsumer<GroupContext>,
    commit_points: Arc<Mutex<HashMap<i32, i64>>>,
    changed: Arc<AtomicBool>,
    parts: HashMap<i32, Part>,
    /// Queue → pending (partition, offset), in order.
    pending: HashMap<Arc<str>, BTreeSet<(i32, i64)>>,
    nodes: HashMap<Arc<str>, NodeInfo>,
    /// (node, queue) → dispatched there and not settled.
    outstanding: HashMap<(Arc<str>, Arc<str>), usize>,
    /// Queue → next target index (round-robin).
    rr: HashMap<Arc<str>, usize>,
    last_commit: Instant,
    last_announce: Option<Instant>,
    announced_epoch: u64,
    /// Bytes charged to the memory budget for the records in `parts`.
    held: usize,
}

impl Owner {
    fn run(mut self, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() {
            let Some(core) = self.core.upgrade() else {
                break;
            };
            let polled = self.consumer.poll(POLL).map(|r| r.map(|m| m.detach()));
            if self.changed.swap(false, Relaxed) {
                self.reassign(&core);
            }
            match polled {
                Some(Ok(m)) => self.take(&m),
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => tracing::debug!(error = %e, "cluster queue consumer"),
            }
            self.drain_inbox(&core);
            self.expire_nodes();
            self.dispatch(&core);
            self.flow(&core);
            self.commit();
            self.announce(&core);
        }
        // Leaving: commit what is done; the rest goes to the next owner.
        self.last_commit = Instant::now() - COMMIT_EVERY;
        self.commit();
        if let Some(core) = self.core.upgrade() {
            let held: usize = self
                .parts
                .values()
                .flat_map(|p| p.entries.values())
                .map(|e| e.cost)
                .sum();
            core.metrics.memory.release(held);
        }
        self.held = 0;
        self.q.stats.held_bytes.store(0, Relaxed);
        self.q.stats.owned.store(0, Relaxed);
    }

    /// The assignment changed: start owning new partitions, forget revoked.
    fn reassign(&mut self, core: &BrokerCore) {
        let Ok(tpl) = self.consumer.assignment() else {
            return;
        };
        self.q.stats.joined.store(true, Relaxed);
        let now: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let gone: Vec<i32> = self
            .parts
            .keys()
            .filter(|p| !now.contains(p))
            .copied()
            .collect();
        for p in gone {
            if let Some(part) = self.parts.remove(&p) {
                for (off, e) in part.entries {
                    core.metrics.memory.release(e.cost);
                    self.held = self.held.saturating_sub(e.cost);
                    if let Some(set) = self.pending.get_mut(&e.queue) {
                        set.remove(&(p, off));
                    }
                    if let State::Remote(n) = &e.state {
                        self.settle_outstanding(n, &e.queue);
                    }
                }
            }
            self.commit_points
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&p);
        }
        for p in now {
            if self.parts.contains_key(&p) {
                continue;
            }
            let high = self
                .consumer
                .fetch_watermarks(&self.q.queue_topic, p, Duration::from_secs(2))
                .map(|(_, h)| h)
                .unwrap_or(i64::MAX);
            self.parts.insert(
                p,
                Part {
                    entries: BTreeMap::new(),
                    next: -1,
                    redeliver_below: high,
                    paused: false,
                    committed: -1,
                },
            );
        }
        self.pending.retain(|_, s| !s.is_empty());
        self.q.stats.owned.store(self.parts.len() as i64, Relaxed);
    }

    /// A record from the queue topic.
    fn take(&mut self, m: &rdkafka::message::OwnedMessage) {
        let p = m.partition();
        let Some(part) = self.parts.get_mut(&p) else {
            return;
        };
        let off = m.offset();
        if part.next >= 0 && off < part.next {
            return;
        }
        part.next = off + 1;
        let mut id = None;
        let mut destination = None;
        let mut user = None;
        let mut pass = Headers::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                let v = h.value.unwrap_or_default();
                match h.key {
                    H_MESSAGE_ID => id = std::str::from_utf8(v).ok(),
                    H_DESTINATION => destination = std::str::from_utf8(v).ok(),
                    H_USER => user = std::str::from_utf8(v).ok(),
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
        let (Some(id), Some(destination)) = (id, destination) else {
            return;
        };
        let Some(queue) = destination.strip_prefix("/queue/") else {
            return;
        };
        let body = Bytes::copy_from_slice(m.payload().unwrap_or_default());
        let cost = body.len()
            + destination.len()
            + id.len()
            + pass
                .iter()
                .map(|(n, v)| n.len() + v.len() + 2)
                .sum::<usize>()
            + 64;
        if let Some(core) = self.core.upgrade() {
            core.metrics.memory.charge(cost);
        }
        self.held += cost;
        let queue: Arc<str> = Arc::from(queue);
        part.entries.insert(
            off,
            Entry {
                queue: queue.clone(),
                destination: Arc::from(destination),
                message_id: Arc::from(id),
                user: user.map(Arc::from),
                pass,
                body,
                cost,
                state: State::Pending,
                redelivered: off < part.redeliver_below,
                avoid: None,
            },
        );
        self.pending.entry(queue).or_default().insert((p, off));
    }

    fn drain_inbox(&mut self, core: &BrokerCore) {
        let events: Vec<Event> = { self.q.inbox.take().into_iter().collect() };
        for e in events {
            match e {
                Event::Settled {
                    partition,
                    offset,
                    done,
                } => {
                    if self.parts.contains_key(&partition) {
                        self.settled(core, partition, offset, done, None);
                    } else {
                        // Not ours (any more): tell whoever owns it.
                        let (mut pb, mut ob) = (itoa::Buffer::new(), itoa::Buffer::new());
                        self.q.produce_control(
                            if done { "qack" } else { "qnack" },
                            &self.q.node_id,
                            &[
                                (H_PARTITION, pb.format(partition)),
                                (H_OFFSET, ob.format(offset)),
                            ],
                            b"",
                            None,
                        );
                    }
                }
                Event::Remote {
                    node,
                    partition,
                    offset,
                    done,
                } => {
                    if self.parts.contains_key(&partition) {
                        self.settled(core, partition, offset, done, Some(node));
                    }
                }
                Event::Announce {
                    node,
                    incarnation,
                    queues,
                } => {
                    let restarted = self
                        .nodes
                        .get(&node)
                        .is_some_and(|n| n.incarnation != incarnation);
                    if restarted {
                        self.node_gone(&node);
                    }
                    if self.nodes.len() < 10_000 || self.nodes.contains_key(&node) {
                        self.nodes.insert(
                            node,
                            NodeInfo {
                                incarnation,
                                heard: Instant::now(),
                                queues,
                                blocked: BTreeSet::new(),
                            },
                        );
                    }
                }
            }
        }
    }

    /// Record (partition, offset) is done, or given back by `from` (None:
    /// this node).
    fn settled(&mut self, core: &BrokerCore, p: i32, off: i64, done: bool, from: Option<Arc<str>>) {
        let Some(part) = self.parts.get_mut(&p) else {
            return;
        };
        let Some(e) = part.entries.get_mut(&off) else {
            return;
        };
        let was = e.state.clone();
        if done {
            let Some(e) = part.entries.remove(&off) else {
                return;
            };
            core.metrics.memory.release(e.cost);
            self.held = self.held.saturating_sub(e.cost);
            if let Some(set) = self.pending.get_mut(&e.queue) {
                set.remove(&(p, off));
            }
            if let State::Remote(n) = &was {
                self.settle_outstanding(n, &e.queue);
            }
            return;
        }
        // Given back: only from where it is now (a late NACK from an
        // earlier delivery changes nothing).
        let here = match (&was, &from) {
            (State::Local, None) => true,
            (State::Remote(n), Some(f)) => n == f,
            _ => false,
        };
        if !here {
            return;
        }
        e.state = State::Pending;
        e.redelivered = true;
        e.avoid = Some(from.clone().unwrap_or_else(|| self.q.node_id.clone()));
        let queue = e.queue.clone();
        self.pending
            .entry(queue.clone())
            .or_default()
            .insert((p, off));
        if let Some(n) = from {
            self.settle_outstanding(&n, &queue);
            if let Some(info) = self.nodes.get_mut(&n) {
                info.blocked.insert(queue.to_string());
            }
        }
    }

    fn settle_outstanding(&mut self, node: &Arc<str>, queue: &Arc<str>) {
        let key = (node.clone(), queue.clone());
        if let Some(n) = self.outstanding.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.outstanding.remove(&key);
            }
        }
    }

    /// Everything outstanding on `node` goes back to pending.
    fn node_gone(&mut self, node: &Arc<str>) {
        self.nodes.remove(node);
        self.outstanding.retain(|(n, _), _| n != node);
        for (p, part) in self.parts.iter_mut() {
            for (off, e) in part.entries.iter_mut() {
                if matches!(&e.state, State::Remote(n) if n == node) {
                    e.state = State::Pending;
                    e.redelivered = true;
                    e.avoid = Some(node.clone());
                    self.pending
                        .entry(e.queue.clone())
                        .or_default()
                        .insert((*p, *off));
                }
            }
        }
    }

    fn expire_nodes(&mut self) {
        let window = self.q.heartbeat * 3;
        let gone: Vec<Arc<str>> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.heard.elapsed() > window)
            .map(|(k, _)| k.clone())
            .collect();
        for n in gone {
            tracing::info!(node = %n, "cluster queues: node not heard, redelivering what it held");
            self.node_gone(&n);
        }
    }

    /// Hands pending records to consumers, in order per queue.
    fn dispatch(&mut self, core: &BrokerCore) {
        let queues: Vec<Arc<str>> = self
            .pending
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(q, _)| q.clone())
            .collect();
        for queue in queues {
            // Targets: this node (None) and nodes with consumers of it.
            let mut targets: Vec<Option<Arc<str>>> = vec![None];
            for (n, info) in &self.nodes {
                if info.queues.get(&*queue).copied().unwrap_or(0) > 0
                    && !info.blocked.contains(&*queue)
                {
                    targets.push(Some(n.clone()));
                }
            }
            targets.sort();
            let items: Vec<(i32, i64)> = self
                .pending
                .get(&queue)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            for (p, off) in items {
                if !self.dispatch_one(core, &queue, &targets, p, off) {
                    break;
                }
            }
        }
        self.pending.retain(|_, s| !s.is_empty());
    }

    fn dispatch_one(
        &mut self,
        core: &BrokerCore,
        queue: &Arc<str>,
        targets: &[Option<Arc<str>>],
        p: i32,
        off: i64,
    ) -> bool {
        let Some(e) = self.parts.get(&p).and_then(|part| part.entries.get(&off)) else {
            if let Some(s) = self.pending.get_mut(queue) {
                s.remove(&(p, off));
            }
            return true;
        };
        let avoid = e.avoid.clone();
        let start = self.rr.get(queue).copied().unwrap_or(0);
        let n = targets.len();
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        // The node that gave it back goes last.
        order.sort_by_key(|&i| {
            let name = targets[i].clone().unwrap_or_else(|| self.q.node_id.clone());
            Some(&name) == avoid.as_ref()
        });
        for i in order {
            if self.try_target(core, queue, &targets[i], p, off) {
                self.rr.insert(queue.clone(), (i + 1) % n);
                if let Some(s) = self.pending.get_mut(queue) {
                    s.remove(&(p, off));
                }
                return true;
            }
        }
        false
    }

    fn try_target(
        &mut self,
        core: &BrokerCore,
        queue: &Arc<str>,
        target: &Option<Arc<str>>,
        p: i32,
        off: i64,
    ) -> bool {
        let Some(e) = self
            .parts
            .get_mut(&p)
            .and_then(|part| part.entries.get_mut(&off))
        else {
            return false;
        };
        match target {
            None => {
                let msg = Arc::new(
                    Message::new(
                        &e.destination,
                        &e.message_id,
                        e.pass.clone(),
                        e.body.clone(),
                    )
                    .with_ticket(self.q.ticket(p, off)),
                );
                // Not taken: defuse the ticket so it gives nothing back.
                if !core.router.offer_queue(&msg, e.redelivered) {
                    if let Some(t) = &msg.ticket {
                        t.settled.store(true, Relaxed);
                    }
                    return false;
                }
                e.state = State::Local;
            }
            Some(node) => {
                let credit = self
                    .nodes
                    .get(node)
                    .and_then(|i| i.queues.get(&**queue).copied())
                    .unwrap_or(0);
                let key = (node.clone(), queue.clone());
                let out = self.outstanding.get(&key).copied().unwrap_or(0);
                if out >= credit {
                    return false;
                }
                let (mut pb, mut ob) = (itoa::Buffer::new(), itoa::Buffer::new());
                let mut extra: Vec<(&str, &str)> = vec![
                    (H_TARGET, node),
                    (H_PARTITION, pb.format(p)),
                    (H_OFFSET, ob.format(off)),
                    (H_MESSAGE_ID, &e.message_id),
                    (H_DESTINATION, &e.destination),
                ];
                if e.redelivered {
                    extra.push((H_REDELIVERED, "1"));
                }
                if let Some(u) = &e.user {
                    extra.push((H_USER, u));
                }
                let names: Vec<(String, &[u8])> = e
                    .pass
                    .iter()
                    .filter_map(|(n, v)| {
                        Some((
                            format!("{H_PASS_PREFIX}{}", std::str::from_utf8(n).ok()?),
                            v.as_ref(),
                        ))
                    })
                    .collect();
                let mut headers = OwnedHeaders::new_with_capacity(extra.len() + names.len() + 2)
                    .insert(header_value(H_KIND, "qmsg"))
                    .insert(header_value(H_ORIGIN, &self.q.node_id));
                for (k, v) in &extra {
                    headers = headers.insert(header_value(k, v));
                }
                for (k, v) in &names {
                    headers = headers.insert(Header {
                        key: k.as_str(),
                        value: Some(*v),
                    });
                }
                let opaque: QmsgOpaque = Some(Box::new((node.clone(), p, off)));
                let record = BaseRecord::with_opaque_to(&self.q.cluster_topic, Box::new(opaque))
                    .key(&**node)
                    .payload(e.body.as_ref())
                    .headers(headers);
                if let Err((err, _)) = self.q.producer.send(record) {
                    tracing::debug!(error = %err, "qmsg not produced");
                    return false;
                }
                *self.outstanding.entry(key).or_insert(0) += 1;
                e.state = State::Remote(node.clone());
            }
        }
        self.q.stats.dispatched.fetch_add(1, Relaxed);
        if e.redelivered {
            self.q.stats.redelivered.fetch_add(1, Relaxed);
        }
        true
    }

    /// Pauses partitions whose window is full or while the memory budget
    /// admits nothing more (the records held are charged to it); resumes
    /// them once the window is down to half and the budget has a tenth of
    /// its limit free again (hysteresis, so a budget at the edge does not
    /// pause and resume on every record).
    fn flow(&mut self, core: &BrokerCore) {
        let window = self.q.window;
        let memory = &core.metrics.memory;
        let over = !memory.admits(1);
        let headroom = memory.admits(memory.limit() / 10);
        let mut total = 0i64;
        for (p, part) in self.parts.iter_mut() {
            total += part.entries.len() as i64;
            let window_full = part.entries.len() >= window;
            let full = window_full || over;
            let low = part.entries.len() <= window / 2 && headroom;
            let pause = full && !part.paused;
            let resume = part.paused && !full && low;
            if !pause && !resume {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.q.queue_topic, *p);
            if pause {
                if self.consumer.pause(&tpl).is_ok() {
                    part.paused = true;
                    if !window_full {
                        self.q.stats.budget_pauses.fetch_add(1, Relaxed);
                    }
                }
            } else if self.consumer.resume(&tpl).is_ok() {
                part.paused = false;
            }
        }
        self.q.stats.window.store(total, Relaxed);
        self.q.stats.held_bytes.store(self.held, Relaxed);
    }

    fn commit(&mut self) {
        if self.last_commit.elapsed() < COMMIT_EVERY {
            return;
        }
        self.last_commit = Instant::now();
        let mut tpl = TopicPartitionList::new();
        let mut points = self.commit_points.lock().unwrap_or_else(|e| e.into_inner());
        for (p, part) in self.parts.iter_mut() {
            if let Some(c) = part.commit_point() {
                points.insert(*p, c);
                if c != part.committed
                    && tpl
                        .add_partition_offset(&self.q.queue_topic, *p, Offset::Offset(c))
                        .is_ok()
                {
                    part.committed = c;
                }
            }
        }
        drop(points);
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "queue offsets not committed");
            }
        }
    }

    /// `qsub`: this node's queue consumers, on change and every heartbeat.
    fn announce(&mut self, core: &BrokerCore) {
        let epoch = core.router.queue_epoch();
        let due = self
            .last_announce
            .is_none_or(|t| t.elapsed() >= self.q.heartbeat);
        if !due && epoch == self.announced_epoch {
            return;
        }
        self.announced_epoch = epoch;
        self.last_announce = Some(Instant::now());
        let per = CREDIT_PER_CONSUMER
            .min(core.config.limits.max_unacked_per_subscription)
            .max(1);
        let queues: serde_json::Map<String, serde_json::Value> = core
            .router
            .queue_consumers(MAX_ANNOUNCED)
            .into_iter()
            .map(|(q, n)| (q, serde_json::Value::from(n * per)))
            .collect();
        let body = serde_json::json!({"inc": self.q.incarnation, "queues": queues}).to_string();
        self.q
            .produce_control("qsub", &self.q.node_id, &[], body.as_bytes(), None);
    }
}
