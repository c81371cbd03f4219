//! A subscriber: connects (TCP or WebSocket), SUBSCRIBEs with a receipt and
//! hands every MESSAGE to a callback until a count is reached or it is
//! cancelled.

use anyhow::{anyhow, Result};
use futures_util::StreamExt;
use stomp_codec::Frame;
use tokio_util::sync::CancellationToken;

use crate::client::{connect, Credentials};

/// Where to listen.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// `host:port` (STOMP/TCP) or `ws://host:port/ws`.
    pub addr: String,
    /// Destination, e.g. `/topic/order.*` or `/user/queue/order-updates`.
    pub destination: String,
    /// Stop after this many messages (`None`: until cancelled).
    pub count: Option<u64>,
    /// CONNECT credentials (the login names the user for `/user/...`).
    pub credentials: Credentials,
}

/// Runs the subscriber. `on_subscribed` runs once the broker confirmed the
/// SUBSCRIBE (anything published from then on is delivered);
/// `on_message` runs for each MESSAGE. Returns how many were received.
pub async fn subscribe(
    opts: &SubscribeOptions,
    cancel: CancellationToken,
    on_subscribed: impl FnOnce(),
    mut on_message: impl FnMut(&Frame),
) -> Result<u64> {
    let client = connect(&opts.addr, &opts.credentials).await?;
    let mut sub = client.subscribe(&opts.destination).await?;
    on_subscribed();
    let mut received = 0;
    while opts.count.is_none_or(|c| received < c) {
        let frame = tokio::select! {
            _ = cancel.cancelled() => break,
            m = sub.next() => m.ok_or_else(|| anyhow!("connection closed by the server"))?,
        };
        received += 1;
        on_message(frame.frame());
    }
    drop(sub);
    client.disconnect().await?;
    Ok(received)
}

/// One line for a MESSAGE: destination, message-id, body (lossy UTF-8).
pub fn format_message(f: &Frame) -> String {
    format!(
        "{} [{}] {}",
        f.header_str("destination").unwrap_or("?"),
        f.header_str("message-id").unwrap_or("?"),
        String::from_utf8_lossy(&f.body)
    )
}
