//! The order-tracking demo's order-processing service:
//!
//! ```sh
//! cargo run -p examples --bin order-simulator -- --brokers "$(scripts/kafka.sh bootstrap)"
//! ```
//!
//! Consumes `orders`, writes RECEIVED → PAYMENT_OK → PACKED → SHIPPED to
//! `order-results` (keyed by orderId). Prints `order-simulator ready` on
//! stdout once it consumes. See docs/demo.md.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use examples::simulator::{run, SimulatorConfig};

/// Turn orders into status steps, Kafka to Kafka.
#[derive(Debug, Parser)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic the orders arrive on (the page SENDs to `/app/<this>`).
    #[arg(long, default_value = "orders")]
    orders_topic: String,
    /// Topic the status steps are written to (routed by the broker).
    #[arg(long, default_value = "order-results")]
    results_topic: String,
    /// Consumer group.
    #[arg(long, default_value = "order-simulator")]
    group_id: String,
    /// Status steps, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "RECEIVED,PAYMENT_OK,PACKED,SHIPPED"
    )]
    statuses: Vec<String>,
    /// Delay between steps, ms.
    #[arg(long, env = "DEMO_STEP_DELAY_MS", default_value_t = 600)]
    step_delay_ms: u64,
    /// Partitions of the topics it creates.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Don't create the topics.
    #[arg(long)]
    no_create_topics: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    examples::init_logging("info,rdkafka=warn");
    let a = Args::parse();
    anyhow::ensure!(!a.statuses.is_empty(), "--statuses is empty");
    let cfg = SimulatorConfig {
        brokers: a.brokers,
        orders_topic: a.orders_topic,
        results_topic: a.results_topic,
        group_id: a.group_id,
        statuses: a.statuses,
        step_delay: Duration::from_millis(a.step_delay_ms),
        create_topics: (!a.no_create_topics).then_some(a.partitions),
    };
    let cancel = examples::cancel_on_signal();
    run(cfg, cancel, || println!("order-simulator ready")).await
}
