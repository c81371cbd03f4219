//! The Kafka adapter around the pure mapping: one thread polls the consumer,
//! maps records, publishes them to the sink and stores offsets only after the
//! sink accepted them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::mapping::{map_record, CompiledRoute, RecordView};
use crate::{BridgeMessage, BridgeState, Shared, Sink, SinkFull};

/// First and largest wait before offering a refused message again.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Longest single poll, so shutdown is noticed quickly.
const POLL_MAX: Duration = Duration::from_millis(100);

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
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(
                    partitions = tpl.count(),
                    "kafka bridge: partitions assigned"
                );
                self.shared.on_assigned();
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "kafka bridge: partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka bridge: rebalance error"),
        }
    }
}

/// A record whose messages the sink has not all accepted yet; its partition is
/// paused until they are.
struct Pending {
    offset: i64,
    messages: VecDeque<BridgeMessage>,
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
                match consumer.poll(self.state.poll_timeout()) {
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
        let metrics = &self.shared.metrics;
        metrics.records_consumed.fetch_add(1, Ordering::Relaxed);
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        let key: PartitionKey = (topic.to_owned(), partition);
        if self.pending.contains_key(&key) {
            // Fetched before the pause took effect: dropped here, fetched
            // again after the resume (we seek past the pending record).
            metrics.records_consumed.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        // rdkafka's header accessor unwraps a non-UTF-8 header *name*; contain
        // that so a malformed record is skipped instead of killing the bridge.
        let headers = match msg.headers() {
            None => Ok(Vec::new()),
            Some(h) => catch_unwind(AssertUnwindSafe(|| {
                h.iter().map(|h| (h.key, h.value)).collect::<Vec<_>>()
            })),
        };
        let mut out = VecDeque::new();
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
                        Ok(m) => out.push_back(m),
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
        self.deliver(consumer, key, offset, out, None);
    }

    /// Offers `messages` to the sink in order; on `SinkFull` pauses the
    /// partition and keeps the rest as pending. Stores the offset when all
    /// were accepted. `prev` is the backoff of an earlier refusal.
    fn deliver(
        &mut self,
        consumer: &BaseConsumer<BridgeContext>,
        key: PartitionKey,
        offset: i64,
        mut messages: VecDeque<BridgeMessage>,
        prev: Option<Duration>,
    ) {
        let metrics = &self.shared.metrics;
        while let Some(m) = messages.pop_front() {
            match self.sink.publish(m.clone()) {
                Ok(()) => {
                    metrics.routed.fetch_add(1, Ordering::Relaxed);
                }
                Err(SinkFull) => {
                    metrics.sink_full.fetch_add(1, Ordering::Relaxed);
                    messages.push_front(m);
                    let backoff = prev.map_or(BACKOFF_MIN, |b| (b * 2).min(BACKOFF_MAX));
                    if prev.is_none() {
                        pause(consumer, &key, true);
                        metrics.paused_partitions.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            topic = key.0,
                            partition = key.1,
                            offset,
                            "broker queue full: partition paused"
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
