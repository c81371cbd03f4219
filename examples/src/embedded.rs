//! Embedding the broker in an application: [`stomp_broker::Broker::start`]
//! with a [`Config`] and a cancellation token, then the in-process API —
//! `broker.core().publish(...)` reaches network subscribers through the same
//! router a SEND takes, and `subscribe_local` receives like a connection.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use stomp_broker::{core::LocalSubscription, Addrs, Broker, BrokerCore, Config};
use stomp_codec::Headers;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A broker running inside this process.
pub struct EmbeddedBroker {
    core: Arc<BrokerCore>,
    addrs: Addrs,
    shutdown: CancellationToken,
    waiter: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Binds the listeners in `config` (use `127.0.0.1:0` for ephemeral
    /// ports) and serves until [`EmbeddedBroker::stop`].
    pub async fn start(config: Config) -> Result<EmbeddedBroker> {
        let shutdown = CancellationToken::new();
        let broker = Broker::start(config, shutdown.clone())
            .await
            .context("starting the embedded broker")?;
        let core = broker.core().clone();
        let addrs = broker.addrs();
        // `wait` returns after shutdown is cancelled and connections drained.
        let waiter = tokio::spawn(broker.wait());
        Ok(EmbeddedBroker {
            core,
            addrs,
            shutdown,
            waiter,
        })
    }

    /// A configuration listening on ephemeral loopback ports.
    pub fn ephemeral_config() -> Config {
        let mut config = Config::default();
        config.listen.stomp = "127.0.0.1:0".into();
        config.listen.http = "127.0.0.1:0".into();
        config
    }

    /// The bound addresses.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// `host:port` of the STOMP/TCP listener.
    pub fn stomp_addr(&self) -> Option<String> {
        self.addrs.stomp.map(|a| a.to_string())
    }

    /// `ws://host:port/ws`, the WebSocket endpoint.
    pub fn ws_url(&self) -> Option<String> {
        let path = &self.core.config.listen.ws_path;
        self.addrs.http.map(|a| format!("ws://{a}{path}"))
    }

    /// Shared state: in-process publish/subscribe, metrics.
    pub fn core(&self) -> &Arc<BrokerCore> {
        &self.core
    }

    /// Publishes a JSON body from inside the process; returns how many
    /// subscribers it was delivered to.
    pub fn publish_json(&self, destination: &str, body: &serde_json::Value) -> Result<usize> {
        let mut headers = Headers::new();
        headers.push("content-type", "application/json");
        let n = self
            .core
            .publish(destination, headers, Bytes::from(body.to_string()))
            .with_context(|| format!("publishing to {destination}"))?;
        Ok(n)
    }

    /// An in-process subscription (same byte-bounded queue as a connection).
    pub fn subscribe_local(&self, destination: &str) -> Result<LocalSubscription> {
        self.core
            .subscribe_local(destination)
            .with_context(|| format!("subscribing to {destination}"))
    }

    /// Graceful shutdown: clients get ERROR `server shutting down`.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.waiter).await;
    }
}

/// Publishes `{"tick": n}` to `destination` every `interval` until
/// cancelled; what a service embedding the broker would do with its events.
pub async fn tick(
    broker: &EmbeddedBroker,
    destination: &str,
    interval: Duration,
    cancel: CancellationToken,
) -> Result<u64> {
    let mut n = 0;
    let mut timer = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(n),
            _ = timer.tick() => {}
        }
        n += 1;
        let delivered = broker.publish_json(destination, &serde_json::json!({ "tick": n }))?;
        tracing::info!(destination, n, delivered, "published");
    }
}
