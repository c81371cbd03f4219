//! The order-processing simulator of the demo: consumes Kafka topic
//! `orders` and, for each order, writes its status steps (RECEIVED,
//! PAYMENT_OK, PACKED, SHIPPED, a configurable delay apart) to
//! `order-results`, keyed by `orderId` — so the steps of one order land on
//! one partition, in order. Orders are processed concurrently.
//!
//! The customer of an order is the record's `stomp-user` header — the
//! authenticated STOMP user the broker stamped on the SEND — never the
//! body's `customerId`, which any client could set to someone else's name.
//!
//! Offsets are committed automatically as orders are read (at-most-once for
//! steps still pending at a crash): good enough for a demo; a real service
//! would store an order's offset after its last step was acknowledged.

use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::ClientConfig,
    consumer::{Consumer, StreamConsumer},
    message::Headers as _,
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
    Message,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::order::{self, Order};

/// Simulator settings (flags of the `order-simulator` binary).
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Topic the page's orders arrive on.
    pub orders_topic: String,
    /// Topic the status steps go to.
    pub results_topic: String,
    /// Consumer group of the simulator.
    pub group_id: String,
    /// Status names, in order.
    pub statuses: Vec<String>,
    /// Pause before each step after the first.
    pub step_delay: Duration,
    /// Create both topics with this many partitions if missing (`None`: don't).
    pub create_topics: Option<i32>,
}

impl SimulatorConfig {
    /// Defaults for `brokers`: topics `orders`/`order-results`, group
    /// `order-simulator`, the default statuses 600 ms apart, 3 partitions.
    pub fn new(brokers: impl Into<String>) -> SimulatorConfig {
        SimulatorConfig {
            brokers: brokers.into(),
            orders_topic: "orders".into(),
            results_topic: "order-results".into(),
            group_id: "order-simulator".into(),
            statuses: order::DEFAULT_STATUSES.map(String::from).to_vec(),
            step_delay: Duration::from_millis(600),
            create_topics: Some(3),
        }
    }
}

/// Creates `topics` with `partitions` partitions; existing topics are fine.
pub async fn ensure_topics(brokers: &str, topics: &[&str], partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("Kafka admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = tokio::time::timeout(Duration::from_secs(30), admin.create_topics(&new, &opts))
        .await
        .with_context(|| format!("creating topics: Kafka at {brokers} did not answer in 30 s"))?
        .context("creating topics")?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, partitions, "topic created"),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!(topic = %t, "topic exists")
            }
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// Runs until `cancel`: creates the topics if configured, calls `ready`,
/// then turns each order into its status steps. On cancel, steps still
/// pending are abandoned after at most one step delay plus 2 s.
pub async fn run(
    cfg: SimulatorConfig,
    cancel: CancellationToken,
    ready: impl FnOnce(),
) -> Result<()> {
    if let Some(p) = cfg.create_topics {
        ensure_topics(&cfg.brokers, &[&cfg.orders_topic, &cfg.results_topic], p).await?;
    }
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        // A new group starts at the beginning: orders placed before the
        // simulator (re)started are still processed.
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("topic.metadata.refresh.interval.ms", "10000")
        .create()
        .context("Kafka consumer")?;
    consumer
        .subscribe(&[&cfg.orders_topic])
        .context("subscribing to the orders topic")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "10000")
        .create()
        .context("Kafka producer")?;
    tracing::info!(
        brokers = %cfg.brokers,
        orders = %cfg.orders_topic,
        results = %cfg.results_topic,
        group = %cfg.group_id,
        step_delay_ms = cfg.step_delay.as_millis() as u64,
        "order simulator running"
    );
    ready();
    let tracker = TaskTracker::new();
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer error");
                continue;
            }
        };
        let value = msg.payload().unwrap_or_default();
        // The customer is who sent the order (stamped by the broker), not
        // what the body claims.
        let user = msg.headers().and_then(|hs| {
            hs.iter()
                .find(|h| h.key == order::USER_HEADER)
                .and_then(|h| h.value)
        });
        let order = match order::order_from_record(value, user) {
            Ok(o) => o,
            Err(problem) => {
                tracing::warn!(
                    partition = msg.partition(),
                    offset = msg.offset(),
                    ?problem,
                    "skipping a record that is not a usable order"
                );
                continue;
            }
        };
        tracing::info!(order = %order.order_id, customer = %order.customer_id, items = order.items.len(), "order received");
        tracker.spawn(process(
            order,
            cfg.clone(),
            producer.clone(),
            cancel.clone(),
        ));
    }
    tracker.close();
    let _ = tokio::time::timeout(cfg.step_delay + Duration::from_secs(2), tracker.wait()).await;
    Ok(())
}

/// Writes the steps of one order, each after the previous was acknowledged.
async fn process(
    order: Order,
    cfg: SimulatorConfig,
    producer: FutureProducer,
    cancel: CancellationToken,
) {
    let total = cfg.statuses.len() as u32;
    for (i, status) in cfg.statuses.iter().enumerate() {
        if i > 0 {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(cfg.step_delay) => {}
            }
        }
        let step = i as u32 + 1;
        let update = order::update(&order, status, step, total, order::now_ms());
        let body = match serde_json::to_vec(&update) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "serializing an update");
                return;
            }
        };
        let record = FutureRecord::to(&cfg.results_topic)
            .key(&order.order_id)
            .payload(&body);
        match producer.send(record, Duration::from_secs(10)).await {
            Ok(delivery) => tracing::info!(
                order = %order.order_id,
                status = %status,
                step,
                partition = delivery.partition,
                offset = delivery.offset,
                "status written"
            ),
            Err((e, _)) => {
                tracing::warn!(order = %order.order_id, status = %status, error = %e, "status not written; giving up on this order");
                return;
            }
        }
    }
}
