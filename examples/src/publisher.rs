//! A backend service publishing over STOMP/TCP (or WebSocket) with receipts:
//! every SEND carries a `receipt` header and the next one goes out only
//! after the broker's RECEIPT, so a returned `Ok` means the broker took
//! every message (for `/app/...` destinations: Kafka acknowledged it).

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::client::{connect, Credentials};

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// `host:port` (STOMP/TCP) or `ws://host:port/ws`.
    pub addr: String,
    /// Destination, e.g. `/topic/order.42` or `/app/orders`.
    pub destination: String,
    /// How many messages.
    pub count: u64,
    /// Body template; `{n}` is replaced by the sequence number (1-based).
    pub body: String,
    /// `content-type` header.
    pub content_type: String,
    /// Extra headers, e.g. `kafka-key`.
    pub headers: Vec<(String, String)>,
    /// Pause between messages.
    pub interval: Duration,
    /// CONNECT credentials.
    pub credentials: Credentials,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            addr: "127.0.0.1:61613".into(),
            destination: "/topic/order.42".into(),
            count: 10,
            body: r#"{"orderId":"42","seq":{n}}"#.into(),
            content_type: "application/json".into(),
            headers: Vec::new(),
            interval: Duration::ZERO,
            credentials: Credentials::default(),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy)]
pub struct PublishReport {
    /// Messages confirmed by a RECEIPT.
    pub confirmed: u64,
    /// Slowest SEND → RECEIPT round trip.
    pub max_receipt_latency: Duration,
    /// Whole run, connect to disconnect.
    pub elapsed: Duration,
}

/// Connects, publishes `count` messages waiting for each RECEIPT, and
/// disconnects. `on_confirmed(n, latency)` runs after each RECEIPT.
pub async fn publish(
    opts: &PublishOptions,
    mut on_confirmed: impl FnMut(u64, Duration),
) -> Result<PublishReport> {
    let start = Instant::now();
    let client = connect(&opts.addr, &opts.credentials).await?;
    let mut max = Duration::ZERO;
    for n in 1..=opts.count {
        if n > 1 && !opts.interval.is_zero() {
            tokio::time::sleep(opts.interval).await;
        }
        let body = opts.body.replace("{n}", &n.to_string());
        let sent = Instant::now();
        let mut send = client
            .send(&opts.destination, body)
            .content_type(&opts.content_type)
            .receipt();
        for (name, value) in &opts.headers {
            send = send.header(name, value);
        }
        send.await?;
        let latency = sent.elapsed();
        max = max.max(latency);
        on_confirmed(n, latency);
    }
    client.disconnect().await?;
    Ok(PublishReport {
        confirmed: opts.count,
        max_receipt_latency: max,
        elapsed: start.elapsed(),
    })
}
