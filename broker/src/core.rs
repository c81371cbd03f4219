//! State shared by every connection: configuration, router, metrics, ids,
//! shutdown signal, and the in-process client API.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, OnceLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use dashmap::DashMap;
use stomp_codec::{AckMode, Headers, Limits};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    acl::Acl,
    auth::Authenticator,
    config::Config,
    conn::{ConnShared, Outbound},
    metrics::Metrics,
    retain::{RetainPolicy, RetainStore},
    router::{Message, RouteError, Router, SubscriptionHandle},
};

/// Everything connections share. Created once by [`crate::Broker`].
#[derive(Debug)]
pub struct BrokerCore {
    /// Effective configuration.
    pub config: Config,
    /// Codec limits derived from the configuration.
    pub limits: Limits,
    /// `heartbeat.server` `(sx, sy)`: a 0 turns that heart-beat direction
    /// off; the intervals follow the client (`session::negotiate_heart_beats`).
    pub server_heart_beat: (u32, u32),
    /// Routing table.
    pub router: Router,
    /// Retained messages for late subscribers.
    pub retained: RetainStore,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// Set once shutdown has begun (for `/readyz`).
    pub draining: AtomicBool,
    /// The latest status snapshot (`/stats.json`).
    pub status: crate::status::StatusBoard,
    /// Credential checks.
    pub auth: Arc<Authenticator>,
    /// Authorization rules.
    pub acl: Acl,
    bridge: OnceLock<kafka_bridge::BridgeHandle>,
    per_address: DashMap<IpAddr, usize>,
    /// Admission slots held ([`AdmitGuard`]s): STOMP connections and HTTP
    /// sockets, counted from accept.
    admitted: AtomicUsize,
    next_conn: AtomicU64,
    next_msg: AtomicU64,
    node: String,
}

impl BrokerCore {
    /// Shared state for `config` (already validated).
    pub fn new(config: Config, shutdown: CancellationToken) -> anyhow::Result<Arc<BrokerCore>> {
        config.validate()?;
        let metrics = Arc::new(Metrics::default());
        let auth =
            Arc::new(Authenticator::from_config(&config.auth)?.with_metrics(metrics.clone()));
        let budget = config.memory_budget();
        metrics.memory.set_limit(budget);
        tracing::info!(bytes = budget, "memory budget");
        // The retained store only shrinks when something new is retained,
        // which a spent budget refuses: it may take at most half the budget
        // so that it can never hold the broker at the limit by itself.
        let retain_bytes = config.retain.max_bytes.min(budget / 2);
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Ok(Arc::new(BrokerCore {
            limits: config.codec_limits(),
            server_heart_beat: config.server_heart_beat()?,
            router: Router::new(&config, metrics.clone()),
            retained: RetainStore::new(
                config.retain.max_destinations,
                retain_bytes,
                metrics.clone(),
            ),
            metrics,
            shutdown,
            draining: AtomicBool::new(false),
            status: crate::status::StatusBoard::default(),
            auth,
            acl: Acl::new(config.acl.clone()),
            bridge: OnceLock::new(),
            per_address: DashMap::new(),
            admitted: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            next_msg: AtomicU64::new(1),
            node: format!("{started:x}"),
            config,
        }))
    }

    /// The Kafka bridge, when configured.
    pub fn bridge(&self) -> Option<&kafka_bridge::BridgeHandle> {
        self.bridge.get()
    }

    /// Installs the Kafka bridge (once, at start).
    pub fn set_bridge(&self, bridge: kafka_bridge::BridgeHandle) {
        let _ = self.bridge.set(bridge);
    }

    /// Admits a new connection (a STOMP connection, or an HTTP socket from
    /// accept on) from `peer` if the total and per-address limits allow;
    /// the guard releases the slot when dropped.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<AdmitGuard, &'static str> {
        if self.draining.load(Relaxed) {
            return Err("server shutting down");
        }
        if self.admitted.fetch_add(1, Relaxed) >= self.config.limits.max_connections {
            self.admitted.fetch_sub(1, Relaxed);
            self.metrics.connections_rejected.fetch_add(1, Relaxed);
            return Err("too many connections");
        }
        let per = self.config.limits.max_connections_per_address;
        let mut n = self.per_address.entry(peer).or_insert(0);
        if per > 0 && *n >= per {
            drop(n);
            self.admitted.fetch_sub(1, Relaxed);
            self.metrics.connections_rejected.fetch_add(1, Relaxed);
            return Err("too many connections from this address");
        }
        *n += 1;
        Ok(AdmitGuard {
            core: self.clone(),
            peer,
        })
    }

    /// A new connection handle and the receiver its task drains.
    pub fn new_conn(&self) -> (Arc<ConnShared>, mpsc::UnboundedReceiver<Outbound>) {
        ConnShared::new(
            self.next_conn.fetch_add(1, Relaxed),
            self.config.limits.max_pending_bytes_per_connection,
            self.config.slow_consumer,
            self.metrics.clone(),
        )
    }

    /// A broker-unique `message-id`, unique across restarts too.
    pub fn next_message_id(&self) -> String {
        let n = self.next_msg.fetch_add(1, Relaxed);
        let mut buf = itoa::Buffer::new();
        let n = buf.format(n);
        let mut id = String::with_capacity(self.node.len() + 1 + n.len());
        id.push_str(&self.node);
        id.push('-');
        id.push_str(n);
        id
    }

    /// Publishes from inside the process (the Kafka bridge, tests): the same
    /// path a SEND takes. `headers` pass through to MESSAGE; a `message-id`
    /// among them is used instead of a generated one.
    pub fn publish(
        &self,
        destination: &str,
        headers: Headers,
        body: Bytes,
    ) -> Result<usize, RouteError> {
        self.publish_retained(destination, headers, body, None)
    }

    /// Like [`BrokerCore::publish`], and keeps the message for replay to
    /// late subscribers under `retain` (see [`crate::retain`]).
    pub fn publish_retained(
        &self,
        destination: &str,
        headers: Headers,
        body: Bytes,
        retain: Option<RetainPolicy>,
    ) -> Result<usize, RouteError> {
        let msg = self.local_message(destination, headers, body);
        self.admit_message(&msg)?;
        // Retain first: a SUBSCRIBE that lands between the two steps then
        // gets the message twice (replayed and live; same message-id)
        // rather than not at all.
        if let Some(policy) = retain {
            crate::router::validate_destination(destination)?;
            self.retained.retain(msg.clone(), policy);
        }
        self.router.publish(msg)
    }

    /// Keeps a message for replay to late subscribers under `retain`
    /// without delivering it to current subscribers: the Kafka bridge
    /// rebuilding the retained store after a restart from records that were
    /// delivered before it.
    pub fn retain_only(
        &self,
        destination: &str,
        headers: Headers,
        body: Bytes,
        retain: RetainPolicy,
    ) -> Result<(), RouteError> {
        crate::router::validate_destination(destination)?;
        let msg = self.local_message(destination, headers, body);
        self.admit_message(&msg)?;
        self.retained.retain(msg, retain);
        Ok(())
    }

    /// Refuses a message while the memory budget is exhausted.
    fn admit_message(&self, msg: &Message) -> Result<(), RouteError> {
        if self.metrics.memory.admits(msg.cost) {
            Ok(())
        } else {
            self.metrics.refused(crate::metrics::Refusal::MemoryBudget);
            Err(RouteError::OverBudget)
        }
    }

    /// A message published from inside the process: `headers` pass through
    /// except `destination`/`content-length`; their `message-id` is kept.
    fn local_message(&self, destination: &str, headers: Headers, body: Bytes) -> Arc<Message> {
        let id = match headers.get_str("message-id") {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => self.next_message_id(),
        };
        let mut pass = Headers::with_capacity(headers.len());
        for (n, v) in headers.iter() {
            if !matches!(
                n.as_ref(),
                b"message-id" | b"destination" | b"content-length"
            ) {
                pass.push(n.clone(), v.clone());
            }
        }
        Arc::new(Message::new(destination, &id, pass, body))
    }

    /// Subscribes from inside the process: a local link with the same
    /// byte-bounded queue as a network connection.
    pub fn subscribe_local(
        self: &Arc<Self>,
        destination: &str,
    ) -> Result<LocalSubscription, RouteError> {
        let (conn, rx) = self.new_conn();
        let (handle, _) =
            self.router
                .subscribe(destination, &conn, Arc::from("local"), AckMode::Auto)?;
        Ok(LocalSubscription {
            core: self.clone(),
            conn,
            rx,
            handle,
        })
    }
}

/// An in-process subscription (see [`BrokerCore::subscribe_local`]).
#[derive(Debug)]
pub struct LocalSubscription {
    core: Arc<BrokerCore>,
    conn: Arc<ConnShared>,
    rx: mpsc::UnboundedReceiver<Outbound>,
    handle: SubscriptionHandle,
}

impl LocalSubscription {
    /// The next message, or `None` once the broker dropped the subscription
    /// (e.g. it fell behind under the disconnect policy).
    pub async fn recv(&mut self) -> Option<Arc<Message>> {
        loop {
            match self.rx.recv().await? {
                Outbound::Message { msg, .. } => {
                    self.conn.written(msg.cost);
                    return Some(msg);
                }
                Outbound::Fatal(_) => return None,
                Outbound::Frame(_) => {}
            }
        }
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        self.core.router.unsubscribe(&self.handle);
    }
}

/// Holds one connection slot of a peer address (see [`BrokerCore::admit`]).
#[derive(Debug)]
pub struct AdmitGuard {
    core: Arc<BrokerCore>,
    peer: IpAddr,
}

impl Drop for AdmitGuard {
    fn drop(&mut self) {
        self.core.admitted.fetch_sub(1, Relaxed);
        let gone = match self.core.per_address.get_mut(&self.peer) {
            Some(mut n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if gone {
            self.core.per_address.remove_if(&self.peer, |_, n| *n == 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn core() -> Arc<BrokerCore> {
        BrokerCore::new(Config::default(), CancellationToken::new()).expect("core")
    }

    fn bridge_headers(id: &str) -> Headers {
        let mut h = Headers::new();
        h.push("message-id", id.to_owned());
        h.push("kafka-offset", "7");
        h
    }

    const POLICY: RetainPolicy = RetainPolicy {
        last_n: 1,
        ttl: Duration::from_secs(60),
    };

    #[test]
    fn retain_only_keeps_for_late_subscribers_without_delivering_live() {
        let core = core();
        let mut live = core.subscribe_local("/topic/order.*").expect("subscribe");
        core.retain_only(
            "/topic/order.1",
            bridge_headers("t-0-7"),
            Bytes::from_static(b"filled"),
            POLICY,
        )
        .expect("retained");
        assert!(live.rx.try_recv().is_err(), "delivered live");
        let replay = core.retained.replay("/topic/order.1");
        assert_eq!(replay.len(), 1);
        assert_eq!(&*replay[0].message_id, "t-0-7");
        assert_eq!(&replay[0].template.body()[..], b"filled");
    }

    #[test]
    fn retain_only_rejects_an_invalid_destination() {
        let core = core();
        assert!(core
            .retain_only("/topic/a/../b", Headers::new(), Bytes::new(), POLICY)
            .is_err());
        assert!(core.retained.is_empty());
    }
}
