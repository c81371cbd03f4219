//! The Kafka adapter around the pure mapping: one thread polls the consumer,
//! maps records, publishes them to the sink and stores offsets only after the
//! sink accepted them.
//!
//! When the group assigns partitions this process did not have (at start,
//! after a crash), the same thread first rebuilds the broker's retained store
//! for them: a short-lived reader outside the group re-reads each partition
//! from the first record of the retain window (`offsets_for_times`) up to the
//! group's committed offset and hands those records to
//! [`Sink::retain_only`]. Only then is the poll's record handled, so the
//! store fills oldest first and live records land after the rebuilt ones.
//! The group consumer's position and offsets are never touched by it.
//!
//! Before that, every newly assigned partition that has no committed offset
//! gets one: the rebalance callback resolves its start position
//! (`auto_offset_reset`, from the watermarks) and assigns the partition at
//! that explicit offset, and the loop commits it synchronously before
//! readiness, so a record produced after `/readyz` said ready is never
//! skipped, and a node that stops — gracefully or not — before it consumed
//! a record there still resumes from that position instead of from
//! `latest` again.
//!
//! Records older than [`CATCHUP_AGE`] (a backlog) are handed to the sink at
//! most `catchup_rate` per second; records whose message exceeds the
//! broker's limit are skipped (optionally dead-lettered).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::mapping::{map_record, CompiledRoute, RecordView};
use crate::{
    BridgeConfig, BridgeMessage, BridgeState, NotAccepting, OffsetReset, Retain, RouteConfig,
    Shared, Sink,
};

/// First and largest wait before offering a refused message again.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Longest single poll, so shutdown is noticed quickly.
const POLL_MAX: Duration = Duration::from_millis(100);
/// Longest wait for the group's committed offsets or `offsets_for_times`.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A record older than this is part of a backlog: handed to the sink at
/// most `catchup_rate` per second.
pub(crate) const CATCHUP_AGE: Duration = Duration::from_secs(2);

/// librdkafka properties of the group consumer alone: a `client` override of
/// one of them is not applied to the rebuild reader, which is in no group,
/// never commits and must see partition ends.
const GROUP_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.remote.assignor",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "client.id",
    "statistics.interval.ms",
];

/// How the retained store is rebuilt when partitions are assigned.
pub(crate) struct Rebuild {
    /// Configuration of the short-lived reader.
    client: ClientConfig,
    /// Longest rebuild per assignment; zero disables it.
    timeout: Duration,
    /// Retain window per topic (see [`rebuild_windows`]).
    windows: HashMap<String, Duration>,
}

impl Rebuild {
    pub(crate) fn new(config: &BridgeConfig, group_id: &str) -> Self {
        Self {
            client: rebuild_client_config(config, group_id),
            timeout: config.rebuild_timeout,
            windows: rebuild_windows(&config.routes),
        }
    }

    /// Whether an assignment can lead to a rebuild at all.
    pub(crate) fn enabled(&self) -> bool {
        !self.timeout.is_zero() && !self.windows.is_empty()
    }
}

/// Settings of the consumer loop besides routes and rebuild.
pub(crate) struct Options {
    pub(crate) catchup_rate: u32,
    pub(crate) dead_letter: Option<DeadLetterSink>,
}

/// Where records too large for the broker are produced to.
pub(crate) struct DeadLetterSink {
    pub(crate) topic: String,
    pub(crate) producer: FutureProducer<BridgeContext>,
}

/// A record over the broker's message limit, copied for the dead-letter
/// topic.
#[derive(Debug, Clone)]
struct DeadLetter {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// One step of handling a record: a message for the sink, or the record
/// for the dead-letter topic.
#[derive(Debug, Clone)]
enum Step {
    Publish(BridgeMessage),
    DeadLetter(Box<DeadLetter>),
}

/// Token bucket for catch-up pacing: `rate` records per second with a
/// burst of a hundredth of a second (small: the burst lands in
/// subscribers' pending-bytes budgets at once); a record taken without a
/// token is owed and paid for by waiting.
pub(crate) struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    pub(crate) fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        let burst = (rate / 100.0).max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token at `now`; returns how long to wait before handing
    /// the record on (zero when a token was there).
    pub(crate) fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Runs a future to completion on this (non-async) thread.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The rebuild reader's client configuration: the bridge's brokers and the
/// `client` overrides (security settings and the like) except [`GROUP_ONLY`]
/// ones. Its group id (`<group>.rebuild`) is needed by librdkafka for
/// `assign`; it never joins, never commits (auto-commit off, no commit
/// call), so the group is not even created on the Kafka side.
pub(crate) fn rebuild_client_config(config: &BridgeConfig, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{group_id}.rebuild"))
        .set("client.id", format!("{group_id}-rebuild"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // A start offset deleted meanwhile: read what is left.
        .set("auto.offset.reset", "earliest")
        // Bound librdkafka's prefetch (default 64 MiB per client).
        .set("queued.max.messages.kbytes", "16384");
    for (k, v) in &config.client {
        if !GROUP_ONLY.contains(&k.as_str()) {
            c.set(k, v);
        }
    }
    c
}

/// The retain window of each topic: the largest `retain_ttl` among the
/// routes of that topic that retain messages. Topics without one are not
/// rebuilt.
pub(crate) fn rebuild_windows(routes: &[RouteConfig]) -> HashMap<String, Duration> {
    let mut out: HashMap<String, Duration> = HashMap::new();
    for r in routes {
        if r.retain_last == 0 || r.retain_ttl.is_zero() {
            continue;
        }
        for t in &r.topics {
            let w = out.entry(t.clone()).or_default();
            *w = (*w).max(r.retain_ttl);
        }
    }
    out
}

/// The offsets of one partition to re-read into the retained store:
/// from `window_start` (what `offsets_for_times(now - window)` answered) or
/// from `had` (the offset after the last record this process already put
/// into the sink, when it held the partition before) if that is later, up to
/// the group's `committed` offset (exclusive; the group consumer starts
/// there). `None` when there is nothing to re-read: no committed offset (a
/// new group, which reads live from `auto_offset_reset`), no record inside
/// the window (`Offset::End`), or an empty range.
pub(crate) fn rebuild_range(
    window_start: Offset,
    committed: Offset,
    had: Option<i64>,
) -> Option<Range<i64>> {
    let Offset::Offset(end) = committed else {
        return None;
    };
    let Offset::Offset(start) = window_start else {
        return None;
    };
    let start = start.max(had.unwrap_or(0)).max(0);
    (start < end).then_some(start..end)
}

/// What is left of `ttl` for a record stamped `record_ms`, at `now_ms`
/// (both ms since the epoch). `None` when the record is older than `ttl`
/// or has no timestamp (its age is unknown, so it is not kept). A
/// timestamp in the future counts as now.
pub(crate) fn remaining_ttl(
    ttl: Duration,
    record_ms: Option<i64>,
    now_ms: i64,
) -> Option<Duration> {
    let record_ms = record_ms.filter(|&t| t >= 0)?;
    let age = Duration::from_millis(now_ms.saturating_sub(record_ms).max(0) as u64);
    ttl.checked_sub(age).filter(|left| !left.is_zero())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// librdkafka callbacks: logging, statistics (lag, broker states), errors and
/// rebalances feed the shared state.
pub(crate) struct BridgeContext {
    pub(crate) shared: Arc<Shared>,
    /// Whether this client's view of the brokers decides [`BridgeState`].
    pub(crate) drives_state: bool,
    pub(crate) role: &'static str,
}

impl ClientContext for BridgeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let role = self.role;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", role, fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", role, fac, "{log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", role, fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", role, fac, "{log_message}")
            }
        }
    }

    fn stats(&self, stats: Statistics) {
        if !self.drives_state {
            return;
        }
        let any_up = stats.brokers.values().any(|b| b.state == "UP");
        if self.role == "consumer" {
            let mut lag = BTreeMap::new();
            for (topic, t) in &stats.topics {
                for (&partition, p) in &t.partitions {
                    if partition >= 0 && p.desired && p.consumer_lag >= 0 {
                        lag.insert((topic.clone(), partition), p.consumer_lag);
                    }
                }
            }
            self.shared.metrics.set_lag(lag);
        }
        self.shared.on_broker_status(any_up);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(role = self.role, error = %error, reason, "kafka client error");
        if self.drives_state && error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown)
        {
            self.shared.on_all_brokers_down(reason);
        }
    }
}

impl ConsumerContext for BridgeContext {
    /// Takes the assignment into our own hands (the default callback just
    /// assigns): every newly assigned partition without a committed offset
    /// is assigned at an explicit start offset (`auto_offset_reset`
    /// resolved here, from the watermarks) instead of librdkafka's lazy
    /// "latest", which it would resolve only at its first fetch — after
    /// this node said it was ready, so a record produced in between would
    /// be skipped. The same offset is committed by the consumer loop before
    /// readiness ([`State::settle_assigned`]).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned = resolve_start_positions(consumer, tpl, self.shared.reset);
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match result {
                    Ok(()) => tracing::info!(
                        partitions = tpl.count(),
                        "kafka bridge: partitions assigned"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "kafka bridge: assigning partitions failed")
                    }
                }
                self.shared.on_assigned(assigned);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = tpl.count(), "kafka bridge: partitions revoked");
                self.unassign(consumer, tpl, cooperative);
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!(error = %code, "kafka bridge: rebalance error");
                self.unassign(consumer, tpl, cooperative);
            }
        }
    }
}

impl BridgeContext {
    fn unassign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, cooperative: bool) {
        let result = if cooperative {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "kafka bridge: unassigning partitions failed");
        }
    }
}

/// Partitions the group assigned, as the rebalance callback resolved them,
/// waiting for the consumer loop to commit their start positions and
/// rebuild their retained messages.
#[derive(Debug, Default)]
pub(crate) struct Assigned {
    pub(crate) partitions: Vec<PartitionKey>,
    /// The committed offset of each partition as it was at assignment
    /// (`Offset::Invalid`: none); partitions whose look-up failed are absent.
    pub(crate) committed: HashMap<PartitionKey, Offset>,
    /// Start positions resolved for partitions without a committed offset,
    /// to be committed before readiness.
    pub(crate) starts: Vec<(PartitionKey, i64)>,
}

impl Assigned {
    pub(crate) fn merge(&mut self, later: Assigned) {
        for key in later.partitions {
            if !self.partitions.contains(&key) {
                self.partitions.push(key);
            }
        }
        self.committed.extend(later.committed);
        self.starts
            .retain(|(k, _)| !later.starts.iter().any(|(l, _)| l == k));
        self.starts.extend(later.starts);
    }
}

/// Asks the group coordinator for the committed offsets of `tpl`; for every
/// partition without one, resolves its start position (`reset`: the high
/// watermark for `latest`, the low one for `earliest`) and sets it as the
/// partition's explicit offset in `tpl`. Partitions with a committed offset
/// are left to librdkafka (it resumes from the committed offset). When a
/// look-up fails the partition is left as it was (librdkafka resolves it;
/// a warning says so) and is not rebuilt.
fn resolve_start_positions(
    consumer: &BaseConsumer<BridgeContext>,
    tpl: &mut TopicPartitionList,
    reset: OffsetReset,
) -> Assigned {
    let partitions: Vec<PartitionKey> = tpl
        .elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect();
    let mut out = Assigned {
        partitions,
        ..Assigned::default()
    };
    if out.partitions.is_empty() {
        return out;
    }
    let committed = match retry_until(LOOKUP_TIMEOUT, || {
        consumer.committed_offsets(tpl.clone(), LOOKUP_TIMEOUT)
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "committed offsets look-up failed: start positions left to librdkafka, retained store not rebuilt");
            return out;
        }
    };
    for (t, p) in &out.partitions {
        let offset = committed
            .find_partition(t, *p)
            .filter(|e| e.error().is_ok())
            .map_or(Offset::Invalid, |e| e.offset());
        out.committed.insert((t.clone(), *p), offset);
        if matches!(offset, Offset::Offset(_)) {
            continue;
        }
        // A partition of a topic created a moment ago may have no leader
        // yet: retry until the look-up deadline rather than leave it to
        // librdkafka's lazy resolution.
        let (low, high) = match retry_until(LOOKUP_TIMEOUT, || {
            consumer.fetch_watermarks(t, *p, LOOKUP_TIMEOUT)
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(topic = t, partition = p, error = %e, "watermark look-up failed: start position left to librdkafka");
                continue;
            }
        };
        let at = match reset {
            OffsetReset::Latest => high,
            OffsetReset::Earliest => low,
        };
        if tpl.set_partition_offset(t, *p, Offset::Offset(at)).is_ok() {
            out.starts.push(((t.clone(), *p), at));
        }
    }
    out
}

/// A record whose messages the sink has not all accepted yet; its partition is
/// paused until they are.
struct Pending {
    offset: i64,
    messages: VecDeque<Step>,
    next_try: Instant,
    backoff: Duration,
}

type PartitionKey = (String, i32);

struct State {
    routes: Vec<CompiledRoute>,
    by_topic: HashMap<String, Vec<usize>>,
    sink: Arc<dyn Sink>,
    shared: Arc<Shared>,
    pending: HashMap<PartitionKey, Pending>,
    /// Per partition, the offset after the last record this process put
    /// into the sink (live or rebuilt): a partition assigned again is
    /// rebuilt only from there.
    had: HashMap<PartitionKey, i64>,
    rebuild: Rebuild,
    /// Catch-up pacing; `None` = unlimited.
    pacer: Option<Pacer>,
    dead_letter: Option<DeadLetterSink>,
}

pub(crate) struct Runner {
    consumer: Option<BaseConsumer<BridgeContext>>,
    state: State,
    shutdown: CancellationToken,
    closed: CancellationToken,
    producer: FutureProducer<BridgeContext>,
    produce_timeout: Duration,
}

impl Runner {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        consumer: Option<BaseConsumer<BridgeContext>>,
        routes: Vec<CompiledRoute>,
        sink: Arc<dyn Sink>,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
        closed: CancellationToken,
        producer: FutureProducer<BridgeContext>,
        produce_timeout: Duration,
        rebuild: Rebuild,
        options: Options,
    ) -> Self {
        let mut by_topic: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            for t in &r.topics {
                let ids = by_topic.entry(t.clone()).or_default();
                if !ids.contains(&i) {
                    ids.push(i);
                }
            }
        }
        Self {
            consumer,
            state: State {
                routes,
                by_topic,
                sink,
                shared,
                pending: HashMap::new(),
                had: HashMap::new(),
                rebuild,
                pacer: (options.catchup_rate > 0)
                    .then(|| Pacer::new(options.catchup_rate, Instant::now())),
                dead_letter: options.dead_letter,
            },
            shutdown,
            closed,
            producer,
            produce_timeout,
        }
    }

    pub(crate) fn run(mut self) {
        if let Some(consumer) = self.consumer.take() {
            while !self.shutdown.is_cancelled() {
                self.state.retry_pending(&consumer);
                let polled = consumer.poll(self.state.poll_timeout());
                // Partitions assigned during that poll: commit their start
                // positions and rebuild their retained messages before any
                // of their records is handled.
                self.state.settle_assigned(&consumer, &self.shutdown);
                match polled {
                    None => {}
                    Some(Ok(msg)) => self.state.handle(&consumer, &msg),
                    Some(Err(e)) => {
                        self.state
                            .shared
                            .metrics
                            .consumer_errors
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "kafka consumer error");
                    }
                }
            }
            self.state.close(consumer);
        } else {
            while !self.shutdown.is_cancelled() {
                std::thread::sleep(POLL_MAX);
            }
        }
        if let Err(e) = self.producer.flush(self.produce_timeout) {
            tracing::warn!(error = %e, "kafka producer flush on shutdown failed");
        }
        self.state
            .shared
            .set_state(BridgeState::Down("stopped".into()));
        self.closed.cancel();
        tracing::info!("kafka bridge stopped");
    }
}

impl State {
    fn poll_timeout(&self) -> Duration {
        let now = Instant::now();
        self.pending
            .values()
            .map(|p| p.next_try.saturating_duration_since(now))
            .min()
            .unwrap_or(POLL_MAX)
            .min(POLL_MAX)
    }

    fn handle(&mut self, consumer: &BaseConsumer<BridgeContext>, msg: &BorrowedMessage<'_>) {
        let shared = self.shared.clone();
        let metrics = &shared.metrics;
        metrics.records_consumed.fetch_add(1, Ordering::Relaxed);
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        let key: PartitionKey = (topic.to_owned(), partition);
        if self.pending.contains_key(&key) {
            // Fetched before the pause took effect: dropped here, fetched
            // again after the resume (we seek past the pending record).
            metrics.records_consumed.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.pace(msg);
        let headers = record_headers(msg);
        let mut out = VecDeque::new();
        let limit = self.sink.max_message_bytes();
        let mut oversize = None;
        let route_ids = self
            .by_topic
            .get(topic)
            .map(Vec::as_slice)
            .unwrap_or_default();
        match headers {
            Ok(headers) => {
                let view = RecordView::new(
                    topic,
                    partition,
                    offset,
                    msg.timestamp().to_millis(),
                    msg.key(),
                    headers,
                    msg.payload(),
                );
                for &i in route_ids {
                    let Some(route) = self.routes.get(i) else {
                        continue;
                    };
                    match map_record(route, &view) {
                        Ok(m) if limit.is_some_and(|l| m.size() > l) => {
                            // Never deliver what the broker's own limits
                            // refuse: it would be a frame no client could
                            // have sent, and it would eat a subscriber's
                            // whole pending-bytes budget.
                            metrics.unroutable.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                topic,
                                partition,
                                offset,
                                route = route.template().as_str(),
                                size = m.size(),
                                limit,
                                dead_letter_topic =
                                    self.dead_letter.as_ref().map(|d| d.topic.as_str()),
                                "kafka record larger than the broker's message limit skipped"
                            );
                            oversize = Some(m.size());
                        }
                        Ok(m) => out.push_back(Step::Publish(m)),
                        Err(e) => {
                            metrics.unroutable.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(topic, partition, offset, route = route.template().as_str(), error = %e, "unroutable kafka record skipped");
                        }
                    }
                }
            }
            Err(_) => {
                metrics
                    .unroutable
                    .fetch_add(route_ids.len() as u64, Ordering::Relaxed);
                tracing::warn!(
                    topic,
                    partition,
                    offset,
                    "unroutable kafka record skipped: header names are not UTF-8"
                );
            }
        }
        if let (Some(size), Some(_)) = (oversize, &self.dead_letter) {
            let headers = record_headers(msg).unwrap_or_default();
            let mut h: Vec<(String, Option<Vec<u8>>)> = headers
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.map(<[u8]>::to_vec)))
                .collect();
            for (n, v) in [
                (
                    "dead-letter-reason",
                    format!(
                        "message of {size} bytes exceeds the broker's limit of {} bytes",
                        limit.unwrap_or(0)
                    ),
                ),
                ("dead-letter-topic", topic.to_owned()),
                ("dead-letter-partition", partition.to_string()),
                ("dead-letter-offset", offset.to_string()),
            ] {
                h.push((n.to_owned(), Some(v.into_bytes())));
            }
            out.push_front(Step::DeadLetter(Box::new(DeadLetter {
                key: msg.key().map(<[u8]>::to_vec),
                value: msg.payload().map(<[u8]>::to_vec),
                headers: h,
            })));
        }
        self.deliver(consumer, key, offset, out, None);
    }

    /// Catch-up pacing: a record older than [`CATCHUP_AGE`] waits for a
    /// token of the `catchup_rate` bucket.
    fn pace(&mut self, msg: &BorrowedMessage<'_>) {
        let Some(pacer) = self.pacer.as_mut() else {
            return;
        };
        let Some(ts) = msg.timestamp().to_millis() else {
            return;
        };
        if now_ms().saturating_sub(ts) < CATCHUP_AGE.as_millis() as i64 {
            return;
        }
        let wait = pacer.take(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// Produces a record to the dead-letter topic and waits for the ack.
    fn dead_letter(&self, d: &DeadLetter) -> Result<(), KafkaError> {
        let Some(dl) = &self.dead_letter else {
            return Ok(());
        };
        let mut headers = OwnedHeaders::new_with_capacity(d.headers.len());
        for (n, v) in &d.headers {
            headers = headers.insert(Header {
                key: n.as_str(),
                value: v.as_deref(),
            });
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&dl.topic).headers(headers);
        if let Some(k) = &d.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &d.value {
            rec = rec.payload(v.as_slice());
        }
        let f = dl.producer.send_result(rec).map_err(|(e, _)| e)?;
        match block_on(f) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(e),
            Err(_canceled) => Err(KafkaError::Canceled),
        }
    }

    /// Offers `messages` to the sink in order; on `NotAccepting` pauses the
    /// partition and keeps the rest as pending. Stores the offset when all
    /// were accepted. `prev` is the backoff of an earlier refusal.
    fn deliver(
        &mut self,
        consumer: &BaseConsumer<BridgeContext>,
        key: PartitionKey,
        offset: i64,
        mut messages: VecDeque<Step>,
        prev: Option<Duration>,
    ) {
        let metrics = &self.shared.metrics;
        while let Some(m) = messages.pop_front() {
            let accepted = match &m {
                Step::Publish(msg) => match self.sink.publish(msg.clone()) {
                    Ok(()) => {
                        metrics.routed.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(NotAccepting) => {
                        metrics.sink_full.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                },
                Step::DeadLetter(d) => match self.dead_letter(d) {
                    Ok(()) => {
                        metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(e) => {
                        if prev.is_none() {
                            tracing::warn!(topic = key.0, partition = key.1, offset, error = %e, "dead-letter produce failed; partition paused, retrying");
                        }
                        false
                    }
                },
            };
            if !accepted {
                messages.push_front(m);
                let backoff = prev.map_or(BACKOFF_MIN, |b| (b * 2).min(BACKOFF_MAX));
                if prev.is_none() {
                    pause(consumer, &key, true);
                    metrics.paused_partitions.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        topic = key.0,
                        partition = key.1,
                        offset,
                        "broker not accepting: partition paused, offset not stored"
                    );
                }
                self.pending.insert(
                    key,
                    Pending {
                        offset,
                        messages,
                        next_try: Instant::now() + backoff,
                        backoff,
                    },
                );
                return;
            }
        }
        if let Err(e) = consumer.store_offset(&key.0, key.1, offset) {
            // Typically the partition was revoked meanwhile; its next owner
            // re-reads from the committed offset (at-least-once).
            tracing::warn!(topic = key.0, partition = key.1, offset, error = %e, "kafka offset store failed");
        }
        if prev.is_some() {
            pause(consumer, &key, false);
            if let Err(e) = consumer.seek(
                &key.0,
                key.1,
                Offset::Offset(offset + 1),
                Duration::from_secs(5),
            ) {
                tracing::warn!(topic = key.0, partition = key.1, error = %e, "kafka seek after resume failed");
            }
            metrics.paused_partitions.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(
                topic = key.0,
                partition = key.1,
                offset,
                "broker queue drained: partition resumed"
            );
        }
        self.had.insert(key, offset + 1);
    }

    fn retry_pending(&mut self, consumer: &BaseConsumer<BridgeContext>) {
        if self.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let due: Vec<PartitionKey> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next_try <= now)
            .map(|(k, _)| k.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let assignment = consumer.assignment().ok();
        for key in due {
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            let still_ours = assignment
                .as_ref()
                .is_none_or(|a| a.find_partition(&key.0, key.1).is_some());
            if !still_ours {
                self.shared
                    .metrics
                    .paused_partitions
                    .fetch_sub(1, Ordering::Relaxed);
                tracing::info!(
                    topic = key.0,
                    partition = key.1,
                    offset = p.offset,
                    "pending record dropped: partition revoked (its new owner re-reads it)"
                );
                continue;
            }
            self.deliver(consumer, key, p.offset, p.messages, Some(p.backoff));
        }
    }

    /// Graceful end: commit what the sink accepted, leave the group.
    fn close(&mut self, consumer: BaseConsumer<BridgeContext>) {
        if !self.pending.is_empty() {
            tracing::info!(records = self.pending.len(), "kafka bridge stopping with records the broker had not accepted; they are re-read next start");
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "kafka offset commit on shutdown failed"),
        }
        consumer.unsubscribe();
        // Dropping the consumer closes it: final commit of stored offsets and LeaveGroup.
        drop(consumer);
    }
}

/// Calls `f` until it succeeds or `limit` has passed since the first call
/// (100 ms between attempts); returns the last result.
fn retry_until<T>(limit: Duration, mut f: impl FnMut() -> KafkaResult<T>) -> KafkaResult<T> {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "kafka look-up failed; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Commits the start positions the rebalance callback assigned explicitly,
/// synchronously, so a node that stops — gracefully or not — before it
/// consumed a record there resumes from that position instead of from
/// `latest` again.
fn commit_start_positions(consumer: &BaseConsumer<BridgeContext>, starts: &[(PartitionKey, i64)]) {
    let mut tpl = TopicPartitionList::new();
    for ((t, p), at) in starts {
        if tpl
            .add_partition_offset(t, *p, Offset::Offset(*at))
            .is_err()
        {
            continue;
        }
    }
    if tpl.count() == 0 {
        return;
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => tracing::info!(
            partitions = ?tpl.to_topic_map(),
            "kafka bridge: start positions of partitions without committed offset committed"
        ),
        Err(e) => tracing::warn!(error = %e, "committing start positions failed"),
    }
}

/// The rebuild of the retained store (see the module docs).
impl State {
    /// Settles the partitions assigned since the last call: commits the
    /// start positions the rebalance callback resolved for those without a
    /// committed offset, then rebuilds the retained messages, topic by
    /// topic, within `rebuild.timeout` in all. Readiness waits for it.
    fn settle_assigned(
        &mut self,
        consumer: &BaseConsumer<BridgeContext>,
        shutdown: &CancellationToken,
    ) {
        let Some(assigned) = self.shared.take_assigned() else {
            return;
        };
        let rebuild = self.rebuild.enabled();
        if rebuild {
            self.sink.rebuild_started();
        }
        commit_start_positions(consumer, &assigned.starts);
        if rebuild {
            self.rebuild_assigned(assigned.partitions, &assigned.committed, shutdown);
            self.sink.rebuild_finished();
        }
        self.shared.settled();
    }

    /// Rebuilds the retained messages of `assigned`, topic by topic, within
    /// `rebuild.timeout` in all.
    fn rebuild_assigned(
        &mut self,
        assigned: Vec<(String, i32)>,
        committed: &HashMap<PartitionKey, Offset>,
        shutdown: &CancellationToken,
    ) {
        let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in assigned {
            if self.rebuild.windows.contains_key(&topic) {
                let ps = by_topic.entry(topic).or_default();
                if !ps.contains(&partition) {
                    ps.push(partition);
                }
            }
        }
        let deadline = Instant::now() + self.rebuild.timeout;
        for (topic, partitions) in by_topic {
            if shutdown.is_cancelled() || Instant::now() >= deadline {
                return;
            }
            let committed: HashMap<i32, Offset> = partitions
                .iter()
                .filter_map(|&p| Some((p, *committed.get(&(topic.clone(), p))?)))
                .collect();
            if let Err(e) = self.rebuild_topic(&topic, &partitions, &committed, deadline, shutdown)
            {
                // Nothing depends on it: live consumption goes on from the
                // committed offsets either way; only late subscribers miss
                // what came before the restart.
                tracing::warn!(topic, error = %e, "retained store not rebuilt");
            }
        }
    }

    fn rebuild_topic(
        &mut self,
        topic: &str,
        partitions: &[i32],
        committed: &HashMap<i32, Offset>,
        deadline: Instant,
        shutdown: &CancellationToken,
    ) -> Result<(), KafkaError> {
        let Some(&window) = self.rebuild.windows.get(topic) else {
            return Ok(());
        };
        let started = Instant::now();
        let lookup = || {
            deadline
                .saturating_duration_since(Instant::now())
                .min(LOOKUP_TIMEOUT)
        };
        // Only partitions with committed records this process has not put
        // into the store yet (a re-assignment after an eager rebalance has
        // none): no reader at all otherwise.
        let candidates: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|&p| {
                let had = self.had.get(&(topic.to_owned(), p)).copied();
                let committed = committed.get(&p).copied().unwrap_or(Offset::Invalid);
                rebuild_range(Offset::Offset(0), committed, had).is_some()
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let reader: BaseConsumer<BridgeContext> =
            self.rebuild.client.create_with_context(BridgeContext {
                shared: self.shared.clone(),
                drives_state: false,
                role: "rebuild",
            })?;
        let since = now_ms().saturating_sub(window.as_millis() as i64);
        let mut times = TopicPartitionList::new();
        for &p in &candidates {
            times.add_partition_offset(topic, p, Offset::Offset(since))?;
        }
        let starts = reader.offsets_for_times(times, lookup())?;
        let mut ranges: HashMap<i32, Range<i64>> = HashMap::new();
        let mut assign = TopicPartitionList::new();
        for &p in &candidates {
            let start = match starts.find_partition(topic, p) {
                Some(e) if e.error().is_ok() => e.offset(),
                Some(e) => {
                    tracing::warn!(topic, partition = p, error = ?e.error(), "offsets_for_times failed; partition not rebuilt");
                    continue;
                }
                None => continue,
            };
            let end = committed.get(&p).copied().unwrap_or(Offset::Invalid);
            let had = self.had.get(&(topic.to_owned(), p)).copied();
            if let Some(r) = rebuild_range(start, end, had) {
                assign.add_partition_offset(topic, p, Offset::Offset(r.start))?;
                ranges.insert(p, r);
            }
        }
        if ranges.is_empty() {
            return Ok(());
        }
        tracing::info!(topic, ranges = ?ranges, window = ?window, "rebuilding retained messages");
        reader.assign(&assign)?;
        let mut records = 0u64;
        let mut retained = 0u64;
        while !ranges.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || shutdown.is_cancelled() {
                tracing::warn!(topic, unfinished = ?ranges, records, "retained store rebuild cut short (rebuild_timeout or shutdown)");
                break;
            }
            match reader.poll(left.min(POLL_MAX)) {
                None => {}
                Some(Ok(msg)) => {
                    let p = msg.partition();
                    let Some(end) = ranges.get(&p).map(|r| r.end) else {
                        continue;
                    };
                    if msg.offset() < end {
                        records += 1;
                        retained += self.retain_record(&msg);
                        self.had.insert((topic.to_owned(), p), msg.offset() + 1);
                    }
                    if msg.offset() + 1 >= end {
                        ranges.remove(&p);
                    }
                }
                // The committed offset may lie past the last record read
                // (a transaction marker, compaction): the end of the
                // partition ends its range too.
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    ranges.remove(&p);
                }
                Some(Err(e)) => {
                    tracing::warn!(topic, error = %e, "kafka rebuild reader error");
                }
            }
        }
        drop(reader);
        self.shared
            .metrics
            .retained_rebuilt
            .fetch_add(retained, Ordering::Relaxed);
        tracing::info!(topic, records, retained, elapsed = ?started.elapsed(), "retained messages rebuilt");
        Ok(())
    }

    /// Hands one re-read record to the sink as retain-only, once per
    /// retaining route, with what is left of that route's TTL. Returns how
    /// many messages were retained.
    fn retain_record(&self, msg: &BorrowedMessage<'_>) -> u64 {
        let topic = msg.topic();
        let route_ids = self
            .by_topic
            .get(topic)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Ok(headers) = record_headers(msg) else {
            return 0;
        };
        let timestamp = msg.timestamp().to_millis();
        let view = RecordView::new(
            topic,
            msg.partition(),
            msg.offset(),
            timestamp,
            msg.key(),
            headers,
            msg.payload(),
        );
        let now = now_ms();
        let mut n = 0;
        for &i in route_ids {
            let Some(route) = self.routes.get(i) else {
                continue;
            };
            let Some(policy) = route.retain() else {
                continue;
            };
            let Some(ttl) = remaining_ttl(policy.ttl, timestamp, now) else {
                continue;
            };
            // Unroutable records were counted and logged when first read.
            if let Ok(mut m) = map_record(route, &view) {
                m.retain = Some(Retain {
                    last_n: policy.last_n,
                    ttl,
                });
                self.sink.retain_only(m);
                n += 1;
            }
        }
        n
    }
}

/// A Kafka header: name and (possibly null) value.
type RecordHeader<'a> = (&'a str, Option<&'a [u8]>);

/// The record's headers. rdkafka's header accessor unwraps a non-UTF-8
/// header *name*; contain that so a malformed record is skipped instead of
/// killing the bridge.
fn record_headers<'a>(msg: &'a BorrowedMessage<'_>) -> std::thread::Result<Vec<RecordHeader<'a>>> {
    match msg.headers() {
        None => Ok(Vec::new()),
        Some(h) => catch_unwind(AssertUnwindSafe(|| {
            h.iter().map(|h| (h.key, h.value)).collect::<Vec<_>>()
        })),
    }
}

fn pause(consumer: &BaseConsumer<BridgeContext>, key: &PartitionKey, pause: bool) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&key.0, key.1);
    let r = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = r {
        tracing::warn!(topic = key.0, partition = key.1, pause, error = %e, "kafka pause/resume failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(topics: &[&str], retain_last: usize, ttl_s: u64) -> RouteConfig {
        let mut r = RouteConfig::new(
            topics.iter().map(|t| t.to_string()).collect(),
            "/topic/x.{key}",
        );
        r.retain_last = retain_last;
        r.retain_ttl = Duration::from_secs(ttl_s);
        r
    }

    #[test]
    fn pacer_hands_on_at_most_rate_records_per_second_after_a_small_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1000, t0);
        let mut now = t0;
        for _ in 0..2000 {
            now += p.take(now);
        }
        // 2,000 records at 1,000/s with a burst of 10: 1.99 s.
        let took = now - t0;
        assert!(
            took >= Duration::from_millis(1985) && took <= Duration::from_millis(1995),
            "{took:?}"
        );
    }

    #[test]
    fn pacer_refills_while_idle_but_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1000, t0);
        for _ in 0..10 {
            assert_eq!(p.take(t0), Duration::ZERO);
        }
        assert!(p.take(t0) > Duration::ZERO, "burst is rate/100 = 10");
        let later = t0 + Duration::from_secs(60);
        let mut free = 0;
        while p.take(later).is_zero() {
            free += 1;
        }
        assert_eq!(free, 10, "an idle minute does not buy a minute of records");
    }

    #[test]
    fn rebuild_window_is_largest_ttl_of_retaining_routes_per_topic() {
        let w = rebuild_windows(&[
            route(&["a", "b"], 1, 60),
            route(&["a"], 3, 600),
            route(&["a", "c"], 0, 3600), // retains nothing
            route(&["d"], 1, 0),         // zero TTL retains nothing
        ]);
        assert_eq!(w.get("a"), Some(&Duration::from_secs(600)));
        assert_eq!(w.get("b"), Some(&Duration::from_secs(60)));
        assert_eq!(w.get("c"), None);
        assert_eq!(w.get("d"), None);
    }

    #[test]
    fn rebuild_range_runs_from_window_start_to_committed_offset() {
        assert_eq!(
            rebuild_range(Offset::Offset(40), Offset::Offset(100), None),
            Some(40..100)
        );
        // Offset 0 is a real start.
        assert_eq!(
            rebuild_range(Offset::Offset(0), Offset::Offset(3), None),
            Some(0..3)
        );
    }

    #[test]
    fn rebuild_range_is_empty_without_committed_offset_or_records_in_window() {
        // A new group: it reads live from auto_offset_reset.
        assert_eq!(
            rebuild_range(Offset::Offset(40), Offset::Invalid, None),
            None
        );
        // Every record is older than the window.
        assert_eq!(rebuild_range(Offset::End, Offset::Offset(100), None), None);
        // The window starts after the committed offset (records produced
        // since; the group consumer reads them live).
        assert_eq!(
            rebuild_range(Offset::Offset(100), Offset::Offset(100), None),
            None
        );
        assert_eq!(
            rebuild_range(Offset::Offset(120), Offset::Offset(100), None),
            None
        );
    }

    #[test]
    fn rebuild_range_skips_what_this_process_already_had() {
        // Re-assigned after an eager rebalance: nothing to rebuild.
        assert_eq!(
            rebuild_range(Offset::Offset(40), Offset::Offset(100), Some(100)),
            None
        );
        // Held it up to 70, then another member consumed 70..100.
        assert_eq!(
            rebuild_range(Offset::Offset(40), Offset::Offset(100), Some(70)),
            Some(70..100)
        );
        // What it had is older than the window: the window decides.
        assert_eq!(
            rebuild_range(Offset::Offset(40), Offset::Offset(100), Some(10)),
            Some(40..100)
        );
    }

    #[test]
    fn remaining_ttl_counts_from_the_record_timestamp() {
        let ttl = Duration::from_secs(60);
        let now = 1_000_000_000;
        assert_eq!(
            remaining_ttl(ttl, Some(now - 20_000), now),
            Some(Duration::from_secs(40))
        );
        assert_eq!(remaining_ttl(ttl, Some(now), now), Some(ttl));
        // Clock skew: a timestamp in the future counts as now.
        assert_eq!(remaining_ttl(ttl, Some(now + 5_000), now), Some(ttl));
    }

    #[test]
    fn remaining_ttl_rejects_records_older_than_ttl_or_without_timestamp() {
        let ttl = Duration::from_secs(60);
        let now = 1_000_000_000;
        assert_eq!(remaining_ttl(ttl, Some(now - 60_000), now), None);
        assert_eq!(remaining_ttl(ttl, Some(now - 3_600_000), now), None);
        assert_eq!(remaining_ttl(ttl, None, now), None);
        assert_eq!(remaining_ttl(ttl, Some(-1), now), None);
    }

    #[test]
    fn rebuild_reader_never_commits_and_keeps_only_non_group_overrides() {
        let mut cfg = BridgeConfig {
            brokers: "k1:9092,k2:9092".into(),
            ..BridgeConfig::default()
        };
        for (k, v) in [
            ("security.protocol", "SASL_SSL"),
            ("queued.max.messages.kbytes", "4096"),
            ("enable.auto.commit", "true"),
            ("group.id", "other"),
            ("group.instance.id", "node-1"),
            ("auto.offset.reset", "latest"),
            ("enable.partition.eof", "false"),
        ] {
            cfg.client.insert(k.into(), v.into());
        }
        let c = rebuild_client_config(&cfg, "g1");
        assert_eq!(c.get("bootstrap.servers"), Some("k1:9092,k2:9092"));
        assert_eq!(c.get("group.id"), Some("g1.rebuild"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("enable.partition.eof"), Some("true"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(c.get("group.instance.id"), None);
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("4096"));
    }
}
