//! Kafka ↔ STOMP bridge.
//!
//! * **Kafka → STOMP**: one consumer, subscribed to the union of the routes'
//!   topics, turns every record into one message per matching route (see
//!   [`map_record`]) and hands it to the broker through [`Sink::publish`].
//!   Offsets are stored only after the sink accepted the record for every
//!   route (at-least-once); a sink that is not accepting (see [`Sink::publish`])
//!   pauses the partition until it accepts again.
//!   When partitions are assigned (at start, after a crash), the records of
//!   the retain window up to the committed offset are read again and handed
//!   to [`Sink::retain_only`], so late subscribers still get them replayed.
//! * **STOMP → Kafka**: [`BridgeHandle::produce`] sends a SEND to `/app/<topic>`
//!   to Kafka topic `<topic>` and resolves once Kafka acknowledged it, so the
//!   broker can answer with the RECEIPT only then.
//!
//! # Destination templates
//!
//! A route's `destination` is literal text with placeholders:
//! `{key}` (record key), `{topic}`, `{partition}`, `{header:NAME}` (first Kafka
//! header NAME) and `{json:/pointer}` (RFC 6901 pointer into the record value
//! parsed as JSON; strings are inserted raw, numbers and booleans as text).
//! Templates are compiled once by [`Bridge::start`]; a bad one is a config error.
//!
//! An inserted value must be 1–200 bytes of `[A-Za-z0-9._~@+=-]`, must not
//! start or end with `.` and must not contain `..`. Anything else (a missing
//! key or header, bad JSON, `/`, `*`, `#`, `>`, `:`, whitespace, control
//! characters, non-ASCII) makes the record **unroutable** for that route: it is
//! counted, logged with topic/partition/offset and skipped; the partition goes on.
//!
//! The Kafka client is an adapter around the pure mapping; librdkafka
//! reconnects by itself, so the bridge starts and keeps running while Kafka
//! is down and [`BridgeHandle::state`] says so.
#![warn(missing_docs)]

mod config;
mod consumer;
mod mapping;
mod metrics;
mod template;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

pub use config::{
    default_group_id, hostname, is_valid_topic, BridgeConfig, OffsetReset, RouteConfig,
    RouteParseError,
};
pub use mapping::{map_record, CompiledRoute, RecordView, RouteError, Unroutable};
pub use metrics::BridgeMetrics;
pub use template::{
    check_segment, DestinationTemplate, SegmentProblem, TemplateError, MAX_SEGMENT_LEN,
};

use consumer::BridgeContext;

/// What the bridge's producers share: acks from all in-sync replicas,
/// idempotence, and the produce timeout as librdkafka's message timeout.
fn producer_config(config: &BridgeConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", client_id)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            config
                .produce_timeout
                .as_millis()
                .clamp(1, i32::MAX as u128)
                .to_string(),
        );
    c
}

/// Implemented by the broker: accept a message for fan-out without waiting.
pub trait Sink: Send + Sync + 'static {
    /// Takes the message for delivery to the destination's subscribers.
    /// `Ok` means the broker is done with it — routed (queued to each
    /// matching subscriber's outbound queue or stored in a `/queue/...`; not
    /// necessarily written to any socket yet), or refused for good (e.g. an
    /// invalid destination; the sink counts and logs that) — and the bridge
    /// stores the record's offset. `Err(NotAccepting)` means the broker is not
    /// accepting **now** (a full `reject-publish` queue, its memory budget,
    /// too many queues, shutdown): the bridge pauses the record's partition,
    /// does not store its offset and offers the same message again later
    /// (with backoff), so the sink must not keep a message it refused.
    ///
    /// Slow subscribers never make the sink refuse: a subscriber whose
    /// outbound queue is over its budget is handled by the broker's
    /// slow-consumer policy (disconnected, or its messages dropped), so topic
    /// fan-out puts no back-pressure on Kafka; only the refusals above do.
    fn publish(&self, msg: BridgeMessage) -> Result<(), NotAccepting>;

    /// The largest MESSAGE the broker delivers, in bytes of body plus
    /// headers (see [`BridgeMessage::size`]); `None` = no limit (the
    /// default). A record whose message is larger is never handed to
    /// [`Sink::publish`]: it is counted as unroutable, logged with
    /// topic/partition/offset and skipped, or first produced to
    /// [`BridgeConfig::dead_letter_topic`] when one is set.
    fn max_message_bytes(&self) -> Option<usize> {
        None
    }

    /// The bridge is about to rebuild the retained store (see
    /// [`Sink::retain_only`]): called once when the bridge starts with a
    /// rebuild configured, and whenever partitions are assigned. Until
    /// [`Sink::rebuild_finished`], the store is incomplete: the broker
    /// defers the replay of new subscriptions rather than replay part of it.
    fn rebuild_started(&self) {}

    /// The rebuild for the latest assignment is over (done, cut short by
    /// `rebuild_timeout`, or nothing to do): called before any record of
    /// the newly assigned partitions goes to [`Sink::publish`].
    fn rebuild_finished(&self) {}

    /// Keeps `msg` in the retained store under `msg.retain` **without**
    /// delivering it to anyone: the bridge calls this while rebuilding the
    /// store after a (re)start from records the broker had already delivered
    /// before (see [`BridgeConfig::rebuild_timeout`]). `msg.retain.ttl` is
    /// what is left of the route's TTL, counted from the record's timestamp.
    /// No offset depends on it, so it cannot refuse; a sink that retains
    /// nothing ignores it (the default).
    fn retain_only(&self, msg: BridgeMessage) {
        let _ = msg;
    }
}

/// A record mapped to a STOMP message by one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeMessage {
    /// STOMP destination, e.g. `/topic/order.42`.
    pub destination: String,
    /// MESSAGE headers (content-type, copied headers, kafka-*, message-id).
    /// The broker adds its own `subscription`/`ack` headers and honours the
    /// bridge's `message-id`.
    pub headers: Vec<(String, String)>,
    /// The record value (empty for a tombstone).
    pub body: Bytes,
    /// Late-subscriber replay policy of the route; `None` = do not retain.
    pub retain: Option<Retain>,
}

impl BridgeMessage {
    /// The size the broker's frame limits see: body plus every header
    /// (`name:value\n`, the destination included).
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 2)
            .sum();
        self.body.len() + headers + "destination:\n".len() + self.destination.len()
    }
}

/// Per-route replay policy: the broker keeps the last `last_n` messages of each
/// destination for `ttl` and replays them to new subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retain {
    /// How many messages per destination.
    pub last_n: usize,
    /// How long each stays replayable.
    pub ttl: Duration,
}

/// Returned by [`Sink::publish`] when the broker is not accepting the message
/// now (a full `reject-publish` queue, over the memory budget, too many
/// queues, or closing); the bridge retries it. Not a signal of slow
/// subscribers: those never cause it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAccepting;

/// Connection state of the bridge, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeState {
    /// Started, not yet connected to Kafka.
    Connecting,
    /// Connected to Kafka (partition assignment may still be pending).
    Up,
    /// Not connected (or stopped); the reason says why. librdkafka keeps
    /// reconnecting in the background.
    Down(String),
}

/// Why [`Bridge::start`] refused the configuration.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A route does not compile.
    #[error("route {index} ({route}): {source}")]
    Route {
        /// Position in `routes`.
        index: usize,
        /// The route in `topics=destination` form.
        route: String,
        /// What is wrong.
        #[source]
        source: RouteError,
    },
    /// Another configuration value is invalid.
    #[error("invalid bridge configuration: {0}")]
    InvalidConfig(String),
    /// librdkafka rejected the client configuration (e.g. a bad `client` override).
    #[error("Kafka client configuration: {0}")]
    Kafka(#[from] KafkaError),
    /// The consumer thread could not be started.
    #[error("cannot start the bridge thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Why a SEND could not be produced to Kafka. The broker reports it to the
/// client in an ERROR frame (which, as STOMP requires, ends the session).
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The destination does not start with the app prefix.
    #[error("destination {0:?} is not an application destination")]
    NotAppDestination(String),
    /// The part after the prefix is not a valid Kafka topic name.
    #[error("destination {0:?} does not name a valid Kafka topic ([A-Za-z0-9._-], 1-249 chars)")]
    InvalidTopic(String),
    /// Kafka did not acknowledge the record (broker error, or no answer within
    /// `produce_timeout`).
    #[error("Kafka did not accept the message for topic {topic:?}: {source}")]
    Kafka {
        /// Target topic.
        topic: String,
        /// The client's error (e.g. `MessageTimedOut` while Kafka is down).
        #[source]
        source: KafkaError,
    },
    /// No answer at all within `produce_timeout` (plus a grace second).
    #[error("no acknowledgement from Kafka for topic {0:?} in time")]
    Timeout(String),
}

/// State shared between the handle, the consumer thread and the client contexts.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<BridgeState>,
    pub(crate) metrics: BridgeMetrics,
    /// Partitions the group assigned since the consumer loop last looked
    /// (filled by the rebalance callback, drained by the loop to commit
    /// start positions and rebuild the retained store before their first
    /// record is handled). `Some` (possibly empty) once an assignment came.
    assigned: Mutex<Option<consumer::Assigned>>,
    /// Where a partition without a committed offset starts.
    pub(crate) reset: OffsetReset,
    /// Whether this bridge consumes at all (routes configured).
    consumes: bool,
    /// An assignment arrived at least once.
    has_assignment: AtomicBool,
    /// The latest assignment is not settled yet: start positions being
    /// committed or the retained store being rebuilt.
    settling: AtomicBool,
}

impl Shared {
    fn set_state(&self, s: BridgeState) {
        if let Ok(mut st) = self.state.lock() {
            if *st != s {
                tracing::info!(from = ?*st, to = ?s, "kafka bridge state");
                *st = s;
            }
        }
    }

    fn state(&self) -> BridgeState {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| BridgeState::Down("state lock poisoned".into()))
    }

    pub(crate) fn on_assigned(&self, assigned: consumer::Assigned) {
        self.settling.store(true, Ordering::SeqCst);
        if let Ok(mut a) = self.assigned.lock() {
            match a.as_mut() {
                Some(earlier) => earlier.merge(assigned),
                None => *a = Some(assigned),
            }
        }
        self.has_assignment.store(true, Ordering::SeqCst);
        self.set_state(BridgeState::Up);
    }

    /// The partitions assigned since the last call; `None` when no
    /// assignment came meanwhile (`Some(empty)` for an empty one).
    pub(crate) fn take_assigned(&self) -> Option<consumer::Assigned> {
        self.assigned.lock().ok().and_then(|mut a| a.take())
    }

    /// The assignment taken by the last [`Shared::take_assigned`] is settled
    /// (start positions committed, retained store rebuilt), unless another
    /// one came in meanwhile.
    pub(crate) fn settled(&self) {
        let more = self.assigned.lock().map(|a| a.is_some()).unwrap_or(false);
        if !more {
            self.settling.store(false, Ordering::SeqCst);
        }
    }

    /// `/readyz`: connected to Kafka and, when consuming, the group has
    /// assigned this node its partitions (possibly none, e.g. a routed
    /// topic that does not exist yet), each one's start position is
    /// committed and its retained messages are rebuilt.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        match self.state() {
            BridgeState::Up => {}
            other => return Err(format!("{other:?}")),
        }
        if !self.consumes {
            return Ok(());
        }
        if !self.has_assignment.load(Ordering::SeqCst) {
            return Err("waiting for the consumer group to assign partitions".into());
        }
        if self.settling.load(Ordering::SeqCst) {
            return Err(
                "committing start positions and rebuilding retained messages of assigned partitions"
                    .into(),
            );
        }
        Ok(())
    }

    /// Connection state from librdkafka's view of the brokers.
    pub(crate) fn on_broker_status(&self, any_up: bool) {
        if any_up {
            self.set_state(BridgeState::Up);
        } else if self.state() != BridgeState::Connecting {
            self.set_state(BridgeState::Down(
                "no connection to any Kafka broker".into(),
            ));
        }
    }

    pub(crate) fn on_all_brokers_down(&self, reason: &str) {
        self.set_state(BridgeState::Down(format!(
            "all Kafka brokers down: {reason}"
        )));
    }
}

/// Entry point: [`Bridge::start`].
pub struct Bridge;

impl Bridge {
    /// Compiles the routes, creates the Kafka clients and starts the consumer
    /// thread. Does not wait for Kafka: with Kafka down it returns a handle in
    /// state `Connecting`/`Down` and records flow once Kafka is reachable.
    /// Cancelling `shutdown` commits the stored offsets, leaves the group and
    /// flushes pending produces; [`BridgeHandle::closed`] resolves after that.
    pub fn start(
        config: BridgeConfig,
        sink: Arc<dyn Sink>,
        shutdown: CancellationToken,
    ) -> Result<BridgeHandle, BridgeError> {
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, r)| {
                CompiledRoute::compile(r).map_err(|source| BridgeError::Route {
                    index,
                    route: r.to_string(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if config.app_prefix.is_empty() {
            return Err(BridgeError::InvalidConfig(
                "app_prefix must not be empty".into(),
            ));
        }
        if config.brokers.trim().is_empty() {
            return Err(BridgeError::InvalidConfig(
                "brokers must not be empty".into(),
            ));
        }
        let group_id = config.effective_group_id();
        if config
            .dead_letter_topic
            .as_deref()
            .is_some_and(|t| !is_valid_topic(t))
        {
            return Err(BridgeError::InvalidConfig(
                "dead_letter_topic is not a valid Kafka topic name".into(),
            ));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(BridgeState::Connecting),
            metrics: BridgeMetrics::default(),
            assigned: Mutex::new(None),
            reset: config.auto_offset_reset,
            consumes: !routes.is_empty(),
            has_assignment: AtomicBool::new(false),
            settling: AtomicBool::new(false),
        });
        let stats_ms = config
            .stats_interval
            .as_millis()
            .clamp(100, 3_600_000)
            .to_string();

        let mut pcfg = producer_config(&config, &format!("{group_id}-producer"));
        // librdkafka leaves Nagle on: small produce requests (one SEND
        // awaiting its RECEIPT) would wait for the previous ACK.
        pcfg.set("socket.nagle.disable", "true");
        if routes.is_empty() {
            pcfg.set("statistics.interval.ms", &stats_ms);
        }
        for (k, v) in &config.client {
            pcfg.set(k, v);
        }
        let producer: FutureProducer<BridgeContext> = pcfg.create_with_context(BridgeContext {
            shared: shared.clone(),
            drives_state: routes.is_empty(),
            role: "producer",
        })?;

        let consumer = if routes.is_empty() {
            None
        } else {
            let mut ccfg = ClientConfig::new();
            ccfg.set("bootstrap.servers", &config.brokers)
                .set("group.id", &group_id)
                .set("client.id", format!("{group_id}-consumer"))
                .set("enable.auto.commit", "true")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", config.auto_offset_reset.as_str())
                .set("enable.partition.eof", "false")
                // A node restarted after a crash gets its partitions back
                // after this long (librdkafka's default is 45 s).
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "3000")
                // Notice subscribed topics created after start within 10 s
                // (librdkafka's default is 5 min).
                .set("topic.metadata.refresh.interval.ms", "10000")
                .set("statistics.interval.ms", &stats_ms);
            for (k, v) in &config.client {
                ccfg.set(k, v);
            }
            let consumer: BaseConsumer<BridgeContext> =
                ccfg.create_with_context(BridgeContext {
                    shared: shared.clone(),
                    drives_state: true,
                    role: "consumer",
                })?;
            let mut topics: Vec<&str> = routes
                .iter()
                .flat_map(|r| r.topics.iter().map(String::as_str))
                .collect();
            topics.sort_unstable();
            topics.dedup();
            consumer.subscribe(&topics)?;
            tracing::info!(group_id = %group_id, topics = ?topics, brokers = %config.brokers, "kafka bridge subscribed");
            Some(consumer)
        };

        // Dead letters: a producer of its own, because the records it
        // carries are the ones over the broker's limits (larger than the
        // 1 MB librdkafka allows a producer by default).
        let dead_letter = match (&consumer, &config.dead_letter_topic) {
            (Some(_), Some(topic)) => {
                let mut dcfg = producer_config(&config, &format!("{group_id}-dead-letter"));
                dcfg.set("message.max.bytes", "104857600");
                for (k, v) in &config.client {
                    dcfg.set(k, v);
                }
                let producer: FutureProducer<BridgeContext> =
                    dcfg.create_with_context(BridgeContext {
                        shared: shared.clone(),
                        drives_state: false,
                        role: "dead-letter",
                    })?;
                Some(consumer::DeadLetterSink {
                    topic: topic.clone(),
                    producer,
                })
            }
            _ => None,
        };
        let rebuild = consumer::Rebuild::new(&config, &group_id);
        if consumer.is_some() && rebuild.enabled() {
            // No retained message of the routed topics is there yet: the
            // broker defers new subscriptions' replays until the first
            // rebuild is over.
            sink.rebuild_started();
        }
        let closed = CancellationToken::new();
        let runner = consumer::Runner::new(
            consumer,
            routes,
            sink,
            shared.clone(),
            shutdown,
            closed.clone(),
            producer.clone(),
            config.produce_timeout,
            rebuild,
            consumer::Options {
                catchup_rate: config.catchup_rate,
                dead_letter,
            },
        );
        std::thread::Builder::new()
            .name("kafka-bridge".into())
            .spawn(move || runner.run())?;

        Ok(BridgeHandle {
            inner: Arc::new(Inner {
                app_prefix: config.app_prefix,
                key_header: config.key_header,
                produce_timeout: config.produce_timeout,
                producer,
                shared,
                closed,
            }),
        })
    }
}

struct Inner {
    app_prefix: String,
    key_header: String,
    produce_timeout: Duration,
    producer: FutureProducer<BridgeContext>,
    shared: Arc<Shared>,
    closed: CancellationToken,
}

/// Cheap-to-clone handle on a running bridge.
#[derive(Clone)]
pub struct BridgeHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BridgeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeHandle")
            .field("state", &self.state())
            .field("app_prefix", &self.inner.app_prefix)
            .finish()
    }
}

/// STOMP SEND headers that are never forwarded to Kafka.
const NOT_FORWARDED: &[&str] = &["destination", "receipt", "content-length", "transaction"];

/// Kafka headers whose names start with this (ASCII case-insensitive) are
/// set by the broker only: a client's SEND headers with this prefix are
/// dropped, so a backend can trust them.
pub const STAMP_PREFIX: &str = "stomp-";
/// Kafka header: the authenticated user who sent the SEND (absent for an
/// anonymous session). The backend's equivalent of Spring's `Principal`.
pub const USER_HEADER: &str = "stomp-user";
/// Kafka header: the STOMP session that sent the SEND (`session-<n>`, the
/// `session` header of its CONNECTED frame).
pub const SESSION_HEADER: &str = "stomp-session";
/// Kafka header: the SEND's id for de-duplication — the client's
/// `idempotency-key` header, else its `message-id` header, else an id the
/// broker made up (unique, so a retry without a client id cannot be
/// recognised).
pub const MESSAGE_ID_HEADER: &str = "stomp-message-id";
/// SEND headers a client uses to give a SEND a stable id across retries
/// (first present, non-empty one wins).
pub const CLIENT_ID_HEADERS: [&str; 2] = ["idempotency-key", "message-id"];

/// What the broker knows about a SEND's origin; stamped on its Kafka record
/// (see [`USER_HEADER`], [`SESSION_HEADER`], [`MESSAGE_ID_HEADER`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendStamp {
    /// The authenticated user; `None` for an anonymous session.
    pub user: Option<String>,
    /// The session id (`session-<n>`).
    pub session: String,
    /// A broker-unique id, used when the client gave none.
    pub message_id: String,
}

/// The Kafka headers of the record produced from a SEND with `headers`: the
/// client's headers except the STOMP transport ones, `key_header` and any
/// `stomp-*` one, then the broker's [`USER_HEADER`] (when authenticated),
/// [`SESSION_HEADER`] and [`MESSAGE_ID_HEADER`]. Pure, for unit tests.
pub fn record_headers<'a>(
    headers: &'a [(String, String)],
    key_header: &str,
    stamp: &'a SendStamp,
) -> Vec<(&'a str, &'a str)> {
    let mut out: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(name, _)| {
            *name != key_header && !NOT_FORWARDED.contains(&name.as_str()) && !is_stamp_header(name)
        })
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if let Some(user) = stamp.user.as_deref().filter(|u| !u.is_empty()) {
        out.push((USER_HEADER, user));
    }
    out.push((SESSION_HEADER, stamp.session.as_str()));
    let client_id = CLIENT_ID_HEADERS.iter().find_map(|id| {
        headers
            .iter()
            .find(|(n, v)| n == id && !v.is_empty())
            .map(|(_, v)| v.as_str())
    });
    out.push((
        MESSAGE_ID_HEADER,
        client_id.unwrap_or(stamp.message_id.as_str()),
    ));
    out
}

/// Whether `name` is reserved for the broker ([`STAMP_PREFIX`], any case).
pub fn is_stamp_header(name: &str) -> bool {
    name.len() >= STAMP_PREFIX.len()
        && name.as_bytes()[..STAMP_PREFIX.len()].eq_ignore_ascii_case(STAMP_PREFIX.as_bytes())
}

impl BridgeHandle {
    /// Current connection state.
    pub fn state(&self) -> BridgeState {
        self.inner.shared.state()
    }

    /// For `/readyz`: `Ok` when connected to Kafka and — when consuming —
    /// the group has assigned this node its partitions, their start
    /// positions are committed and their retained messages rebuilt;
    /// otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.inner.shared.readiness()
    }

    /// True when `destination` starts with the app prefix (`/app/` by default),
    /// i.e. a SEND to it should go to [`BridgeHandle::produce`].
    pub fn is_app_destination(&self, destination: &str) -> bool {
        destination.starts_with(&self.inner.app_prefix)
    }

    /// Produces a SEND to Kafka: `/app/orders` → topic `orders`, the
    /// `key_header` value (if any) as the record key, the other STOMP headers
    /// as Kafka headers (except destination, receipt, content-length,
    /// transaction, the key header and any `stomp-*` header), plus the
    /// broker's `stomp-user`, `stomp-session` and `stomp-message-id` from
    /// `stamp` (see [`record_headers`]). Resolves once Kafka acknowledged the
    /// record (acks=all, idempotent producer), so a RECEIPT sent afterwards
    /// means "stored in Kafka".
    pub async fn produce(
        &self,
        destination: &str,
        headers: &[(String, String)],
        body: Bytes,
        stamp: &SendStamp,
    ) -> Result<(), ProduceError> {
        let result = self.produce_inner(destination, headers, body, stamp).await;
        let m = &self.inner.shared.metrics;
        match &result {
            Ok(()) => m.produced.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(destination, error = %e, "kafka produce failed");
                m.produce_failures.fetch_add(1, Ordering::Relaxed)
            }
        };
        result
    }

    async fn produce_inner(
        &self,
        destination: &str,
        headers: &[(String, String)],
        body: Bytes,
        stamp: &SendStamp,
    ) -> Result<(), ProduceError> {
        let inner = &self.inner;
        let topic = destination
            .strip_prefix(inner.app_prefix.as_str())
            .ok_or_else(|| ProduceError::NotAppDestination(destination.to_owned()))?;
        if !is_valid_topic(topic) {
            return Err(ProduceError::InvalidTopic(destination.to_owned()));
        }
        let key = headers
            .iter()
            .find(|(n, _)| *n == inner.key_header)
            .map(|(_, v)| v.as_bytes());
        let forwarded = record_headers(headers, &inner.key_header, stamp);
        let mut kafka_headers = OwnedHeaders::new_with_capacity(forwarded.len());
        for (key, value) in forwarded {
            kafka_headers = kafka_headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::to(topic)
            .payload(body.as_ref())
            .headers(kafka_headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        let send = inner.producer.send(record, inner.produce_timeout);
        match tokio::time::timeout(inner.produce_timeout + Duration::from_secs(1), send).await {
            Err(_) => Err(ProduceError::Timeout(topic.to_owned())),
            Ok(Ok(_delivery)) => Ok(()),
            Ok(Err((source, _msg))) => Err(ProduceError::Kafka {
                topic: topic.to_owned(),
                source,
            }),
        }
    }

    /// The bridge's counters.
    pub fn metrics(&self) -> &BridgeMetrics {
        &self.inner.shared.metrics
    }

    /// Resolves after the shutdown token was cancelled and the bridge finished:
    /// stored offsets committed, consumer group left, pending produces flushed.
    /// With Kafka unreachable this can take up to about `produce_timeout`;
    /// callers that must exit promptly should bound the wait.
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn stamp(user: Option<&str>) -> SendStamp {
        SendStamp {
            user: user.map(str::to_owned),
            session: "session-7".into(),
            message_id: "node-42".into(),
        }
    }

    #[test]
    fn record_headers_drop_client_stamp_headers_and_stamp_the_user() {
        let headers = h(&[
            ("destination", "/app/orders"),
            ("receipt", "r1"),
            ("stomp-user", "mallory"),
            ("STOMP-Session", "session-1"),
            ("Stomp-Message-Id", "forged"),
            ("stomp-", "x"),
            ("kafka-key", "k"),
            ("trace-id", "t"),
        ]);
        let s = stamp(Some("alice"));
        assert_eq!(
            record_headers(&headers, "kafka-key", &s),
            vec![
                ("trace-id", "t"),
                ("stomp-user", "alice"),
                ("stomp-session", "session-7"),
                ("stomp-message-id", "node-42"),
            ]
        );
    }

    #[test]
    fn record_headers_omit_user_for_anonymous_sessions() {
        let headers = h(&[("stomp-user", "alice")]);
        for user in [None, Some("")] {
            let s = stamp(user);
            assert_eq!(
                record_headers(&headers, "kafka-key", &s),
                vec![
                    ("stomp-session", "session-7"),
                    ("stomp-message-id", "node-42"),
                ]
            );
        }
    }

    #[test]
    fn record_headers_take_the_message_id_from_the_client_when_given() {
        let s = stamp(None);
        let id = |headers: &[(&str, &str)]| {
            let headers = h(headers);
            record_headers(&headers, "kafka-key", &s)
                .into_iter()
                .find(|(n, _)| *n == MESSAGE_ID_HEADER)
                .map(|(_, v)| v.to_owned())
        };
        assert_eq!(id(&[]).as_deref(), Some("node-42"));
        assert_eq!(id(&[("message-id", "m1")]).as_deref(), Some("m1"));
        assert_eq!(
            id(&[("message-id", "m1"), ("idempotency-key", "k1")]).as_deref(),
            Some("k1")
        );
        assert_eq!(id(&[("idempotency-key", "")]).as_deref(), Some("node-42"));
    }

    #[test]
    fn stamp_prefix_is_case_insensitive() {
        assert!(is_stamp_header("stomp-user"));
        assert!(is_stamp_header("STOMP-USER"));
        assert!(is_stamp_header("Stomp-anything"));
        assert!(!is_stamp_header("stomp"));
        assert!(!is_stamp_header("stompuser"));
        assert!(!is_stamp_header("x-stomp-user"));
        assert!(!is_stamp_header("é"));
    }
}
