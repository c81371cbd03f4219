//! State shared by every connection: configuration, router, metrics, ids,
//! shutdown signal, and the in-process client API.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, OnceLock, Weak,
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
    conn::{ConnShared, DeliveryKind, Outbound},
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
    rebuild: Mutex<RebuildGate>,
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
            rebuild: Mutex::new(RebuildGate::default()),
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

    /// Retained messages for a new subscription `sub` of `conn` to
    /// `destination`, to replay right after the SUBSCRIBE is answered.
    /// While the Kafka bridge rebuilds the retained store (from start until
    /// the first rebuild is over, and during later ones) the store is
    /// incomplete: the replay is deferred instead (empty now) and sent by
    /// [`BrokerCore::rebuild_finished`], before any live record that
    /// follows the rebuild. At most [`MAX_DEFERRED_REPLAYS`] wait; beyond
    /// that a subscription gets what is there now.
    pub fn replay_for(
        &self,
        destination: &str,
        conn: &Arc<ConnShared>,
        sub: &Arc<str>,
    ) -> Vec<Arc<Message>> {
        {
            let mut gate = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
            if gate.active {
                if gate.deferred.len() < MAX_DEFERRED_REPLAYS {
                    gate.deferred.push(DeferredReplay {
                        conn: Arc::downgrade(conn),
                        sub: sub.clone(),
                        destination: Arc::from(destination),
                    });
                    return Vec::new();
                }
                if !gate.overflow_logged {
                    gate.overflow_logged = true;
                    tracing::warn!(
                        max = MAX_DEFERRED_REPLAYS,
                        "too many subscriptions waiting for the retained-store rebuild; replaying what is there"
                    );
                }
            }
        }
        self.retained.replay(destination)
    }

    /// The Kafka bridge starts rebuilding the retained store: defer replays.
    pub fn rebuild_started(&self) {
        let mut gate = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        gate.active = true;
    }

    /// The rebuild is over: replay the retained messages to every
    /// subscription that came meanwhile (`replayed:true`, as usual).
    pub fn rebuild_finished(&self) {
        let deferred = {
            let mut gate = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
            gate.active = false;
            gate.overflow_logged = false;
            std::mem::take(&mut gate.deferred)
        };
        let n = deferred.len();
        for d in deferred {
            let Some(conn) = d.conn.upgrade() else {
                continue;
            };
            // Like a replay right after the SUBSCRIBE: within the
            // connection's byte budget, the newest messages that fit
            // (oldest of them first); the rest skipped and counted.
            let msgs = self.retained.replay(&d.destination);
            let fit = msgs
                .iter()
                .rev()
                .take_while(|m| conn.try_add_pending(m.cost))
                .count();
            let skipped = msgs.len() - fit;
            if skipped > 0 {
                self.metrics
                    .replay_skipped
                    .fetch_add(skipped as u64, Relaxed);
            }
            let mut rest = msgs.into_iter().skip(skipped);
            while let Some(msg) = rest.next() {
                let cost = msg.cost;
                let out = Outbound::Message {
                    msg,
                    sub: d.sub.clone(),
                    kind: DeliveryKind::Replayed,
                };
                if !conn.send_control(out) {
                    // Closed meanwhile: give back what was accounted.
                    conn.written(cost);
                    rest.for_each(|m| conn.written(m.cost));
                    break;
                }
            }
        }
        if n > 0 {
            tracing::info!(
                subscriptions = n,
                "retained store rebuilt: deferred replays sent"
            );
        }
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
    /// late subscribers under `retain` (see [`crate::retain`]). An error
    /// for which [`RouteError::is_retryable`] holds means "not now": the
    /// caller (the Kafka bridge) offers the same message again later.
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

/// Most subscriptions whose replay waits for a rebuild of the retained store.
pub const MAX_DEFERRED_REPLAYS: usize = 100_000;

/// Replays held back while the Kafka bridge rebuilds the retained store.
#[derive(Debug, Default)]
struct RebuildGate {
    active: bool,
    overflow_logged: bool,
    deferred: Vec<DeferredReplay>,
}

#[derive(Debug)]
struct DeferredReplay {
    conn: Weak<ConnShared>,
    sub: Arc<str>,
    destination: Arc<str>,
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
    fn replay_during_a_rebuild_is_deferred_until_it_finished() {
        let core = core();
        let (conn, mut rx) = core.new_conn();
        let sub: Arc<str> = Arc::from("s1");
        core.rebuild_started();
        // A subscriber arriving before or during the rebuild gets nothing now...
        assert!(core.replay_for("/topic/order.1", &conn, &sub).is_empty());
        core.retain_only(
            "/topic/order.1",
            bridge_headers("t-0-7"),
            Bytes::from_static(b"filled"),
            POLICY,
        )
        .expect("retained");
        assert!(
            rx.try_recv().is_err(),
            "replayed before the rebuild finished"
        );
        // ... and everything rebuilt once it is over, marked replayed, once.
        core.rebuild_finished();
        match rx.try_recv() {
            Ok(Outbound::Message { msg, sub, kind }) => {
                assert_eq!(&*msg.message_id, "t-0-7");
                assert_eq!(&*sub, "s1");
                assert_eq!(kind, DeliveryKind::Replayed);
                assert_eq!(conn.pending_bytes(), msg.cost);
            }
            other => panic!("expected the deferred replay, got {other:?}"),
        }
        assert!(rx.try_recv().is_err(), "replayed twice");
        core.rebuild_finished();
        assert!(rx.try_recv().is_err(), "replayed again by a later rebuild");
        // After the rebuild, a subscription replays at once.
        assert_eq!(core.replay_for("/topic/order.1", &conn, &sub).len(), 1);
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
