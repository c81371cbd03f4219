//! State shared by every connection: configuration, router, metrics, ids,
//! shutdown signal, and the in-process client API.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, OnceLock, Weak,
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use dashmap::DashMap;
use stomp_codec::{AckMode, Headers, Limits};
use tokio_util::sync::CancellationToken;

use crate::{
    acl::Acl,
    auth::Authenticator,
    config::Config,
    metrics::{ConnRefusal, Metrics},
    outbound::{ConnShared, Outbound},
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
    /// Open SockJS sessions of the HTTP transports.
    pub sockjs: crate::sockjs::Registry,
    /// `[[app_http]]` handlers, when configured.
    pub app_http: Option<crate::app_http::AppHttp>,
    bridge: OnceLock<kafka_bridge::BridgeHandle>,
    cluster: OnceLock<Arc<crate::cluster::Cluster>>,
    rebuild: Mutex<RebuildGate>,
    per_address: DashMap<IpAddr, AddrSlots>,
    refusal_log: RefusalLog,
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
            app_http: crate::app_http::AppHttp::new(&config)?,
            bridge: OnceLock::new(),
            cluster: OnceLock::new(),
            rebuild: Mutex::new(RebuildGate::default()),
            per_address: DashMap::new(),
            refusal_log: RefusalLog::new(),
            admitted: AtomicUsize::new(0),
            sockjs: crate::sockjs::Registry::default(),
            next_conn: AtomicU64::new(1),
            next_msg: AtomicU64::new(1),
            node: if config.cluster.enabled {
                // Unique across the cluster's nodes too: ids travel between them.
                let who = config
                    .cluster
                    .node_id
                    .clone()
                    .unwrap_or_else(|| crate::cluster::default_node_id(None));
                format!("{who}.{:x}.{started:x}", std::process::id())
            } else {
                format!("{started:x}")
            },
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

    /// This node's cluster membership (`--cluster`), once joined.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Installs the cluster membership (once, at start).
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
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
            // Like a replay right after the SUBSCRIBE: the session paces
            // it inside the connection's byte budget (see crate::replay).
            let msgs = self.retained.replay(&d.destination);
            if msgs.is_empty() {
                continue;
            }
            let n = msgs.len() as u64;
            let out = Outbound::Replay {
                sub: d.sub.clone(),
                msgs,
            };
            if !conn.send_control(out) {
                // Closed meanwhile: these can no longer be replayed.
                self.metrics.replay_skipped.fetch_add(n, Relaxed);
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
    /// accept on) from `peer` if the limits allow; the guard releases the
    /// slot when dropped. A new slot is *unauthenticated*: it counts against
    /// `max_unauthenticated_per_address` until [`AdmitGuard::authenticated`]
    /// moves it (a Spring relay's thousands of authenticated sessions from
    /// one address then count only against `max_connections`).
    /// `max_connections_per_address` (0 = off) counts every slot of the
    /// address except those of `system_logins`. Each refusal is counted in
    /// `stomp_connections_rejected_total{reason}` and logged (rate-limited).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<AdmitGuard, &'static str> {
        if self.draining.load(Relaxed) {
            return Err("server shutting down");
        }
        let limits = &self.config.limits;
        if self.admitted.fetch_add(1, Relaxed) >= limits.max_connections {
            self.admitted.fetch_sub(1, Relaxed);
            return Err(self.refuse(peer, ConnRefusal::MaxConnections));
        }
        let refusal = {
            let mut n = self.per_address.entry(peer).or_default();
            let unauth = limits.max_unauthenticated_per_address;
            let per = limits.max_connections_per_address;
            if unauth > 0 && n.unauthenticated >= unauth {
                Some(ConnRefusal::UnauthenticatedPerAddress)
            } else if per > 0 && n.unauthenticated + n.authenticated >= per {
                Some(ConnRefusal::PerAddress)
            } else {
                n.unauthenticated += 1;
                None
            }
        };
        if let Some(why) = refusal {
            self.admitted.fetch_sub(1, Relaxed);
            self.forget_address_if_idle(peer);
            return Err(self.refuse(peer, why));
        }
        Ok(AdmitGuard {
            core: self.clone(),
            peer,
            state: AtomicU8::new(UNAUTHENTICATED),
        })
    }

    /// Counts and logs one refused connection; the client-facing reason.
    fn refuse(&self, peer: IpAddr, why: ConnRefusal) -> &'static str {
        self.metrics.connection_refused(why);
        if let Some(also) = self.refusal_log.note(why, Instant::now()) {
            let limits = &self.config.limits;
            let limit = match why {
                ConnRefusal::MaxConnections => limits.max_connections,
                ConnRefusal::PerAddress => limits.max_connections_per_address,
                ConnRefusal::UnauthenticatedPerAddress => limits.max_unauthenticated_per_address,
            };
            tracing::warn!(
                %peer,
                reason = why.as_str(),
                limit,
                refused_since_last_line = also,
                "connection refused: {}",
                why.message()
            );
        }
        why.message()
    }

    /// Whether `login` is one of `limits.system_logins` (exempt from the
    /// per-address limits and the frame-rate limit).
    pub fn is_system_login(&self, login: &str) -> bool {
        self.config
            .limits
            .system_logins
            .iter()
            .any(|l| l.as_str() == login)
    }

    fn forget_address_if_idle(&self, peer: IpAddr) {
        self.per_address.remove_if(&peer, |_, n| n.is_idle());
    }

    /// A new connection handle and the receiver its task drains.
    pub fn new_conn(&self) -> (Arc<ConnShared>, crate::outbound::OutboundRx) {
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
    rx: crate::outbound::OutboundRx,
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
                Outbound::Frame(_) | Outbound::Disconnect | Outbound::Replay { .. } => {}
            }
        }
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        self.core.router.unsubscribe(&self.handle);
    }
}

/// What one address holds (see [`BrokerCore::admit`]).
#[derive(Debug, Default)]
struct AddrSlots {
    /// Sockets that have not (yet) authenticated: HTTP sockets, STOMP
    /// connections before CONNECT, anonymous sessions.
    unauthenticated: usize,
    /// Authenticated sessions other than `system_logins`.
    authenticated: usize,
}

impl AddrSlots {
    fn is_idle(&self) -> bool {
        self.unauthenticated == 0 && self.authenticated == 0
    }
}

const UNAUTHENTICATED: u8 = 0;
const AUTHENTICATED: u8 = 1;
/// A `system_logins` session: counted only against `max_connections`.
const SYSTEM: u8 = 2;

/// Holds one connection slot of a peer address (see [`BrokerCore::admit`]).
#[derive(Debug)]
pub struct AdmitGuard {
    core: Arc<BrokerCore>,
    peer: IpAddr,
    state: AtomicU8,
}

impl AdmitGuard {
    /// The session authenticated as `login`: its slot stops counting against
    /// `max_unauthenticated_per_address`, and against
    /// `max_connections_per_address` too when `login` is a system login.
    /// Once per guard; later calls do nothing.
    pub fn authenticated(&self, login: &str) {
        let to = if self.core.is_system_login(login) {
            SYSTEM
        } else {
            AUTHENTICATED
        };
        if self
            .state
            .compare_exchange(UNAUTHENTICATED, to, Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        if let Some(mut n) = self.core.per_address.get_mut(&self.peer) {
            n.unauthenticated = n.unauthenticated.saturating_sub(1);
            if to == AUTHENTICATED {
                n.authenticated += 1;
            }
        }
        self.core.forget_address_if_idle(self.peer);
    }
}

impl Drop for AdmitGuard {
    fn drop(&mut self) {
        self.core.admitted.fetch_sub(1, Relaxed);
        let gone = match self.core.per_address.get_mut(&self.peer) {
            Some(mut n) => {
                match self.state.load(Relaxed) {
                    UNAUTHENTICATED => n.unauthenticated = n.unauthenticated.saturating_sub(1),
                    AUTHENTICATED => n.authenticated = n.authenticated.saturating_sub(1),
                    _ => {}
                }
                n.is_idle()
            }
            None => false,
        };
        if gone {
            self.core.forget_address_if_idle(self.peer);
        }
    }
}

/// Rate-limits the refusal log: per reason, at most one line a second; the
/// line says how many refusals of that reason it stands for since the last.
#[derive(Debug)]
struct RefusalLog {
    start: Instant,
    /// Per reason: ms since `start` of the last line, plus one (0 = never).
    last: [AtomicU64; ConnRefusal::ALL.len()],
    /// Per reason: refusals not logged since the last line.
    unlogged: [AtomicU64; ConnRefusal::ALL.len()],
}

impl RefusalLog {
    fn new() -> RefusalLog {
        RefusalLog {
            start: Instant::now(),
            last: Default::default(),
            unlogged: Default::default(),
        }
    }

    /// Notes one refusal at `now`. `Some(n)`: write a line now, for this
    /// refusal and `n` earlier ones that were not logged; `None`: counted
    /// for the next line.
    fn note(&self, why: ConnRefusal, now: Instant) -> Option<u64> {
        let i = why as usize;
        let ms = u64::try_from(now.saturating_duration_since(self.start).as_millis())
            .unwrap_or(u64::MAX - 1)
            + 1;
        let last = self.last[i].load(Relaxed);
        if (last == 0 || ms >= last.saturating_add(1000))
            && self.last[i]
                .compare_exchange(last, ms, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.unlogged[i].swap(0, Relaxed));
        }
        self.unlogged[i].fetch_add(1, Relaxed);
        None
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

    fn core_with(tweak: impl FnOnce(&mut Config)) -> Arc<BrokerCore> {
        let mut c = Config::default();
        tweak(&mut c);
        BrokerCore::new(c, CancellationToken::new()).expect("core")
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn authenticated_sessions_do_not_count_against_the_unauthenticated_cap() {
        let core = core_with(|c| c.limits.max_unauthenticated_per_address = 2);
        let a = core.admit(PEER).expect("a");
        let _b = core.admit(PEER).expect("b");
        assert_eq!(
            core.admit(PEER).err(),
            Some("too many unauthenticated connections from this address")
        );
        a.authenticated("alice");
        let c = core.admit(PEER).expect("c, once a authenticated");
        c.authenticated("alice");
        let _d = core.admit(PEER).expect("d");
        // Another address has its own cap.
        let _e = core
            .admit(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
            .expect("e");
        assert_eq!(
            core.metrics
                .connections_refused_of(ConnRefusal::UnauthenticatedPerAddress),
            1
        );
        drop((a, c));
        assert_eq!(
            core.per_address.get(&PEER).map(|n| n.authenticated),
            Some(0)
        );
    }

    #[test]
    fn system_logins_are_exempt_from_the_per_address_limit() {
        let core = core_with(|c| {
            c.limits.max_connections_per_address = 2;
            c.limits.system_logins = vec!["relay-system".into()];
        });
        let sys = core.admit(PEER).expect("system");
        sys.authenticated("relay-system");
        let a = core.admit(PEER).expect("a");
        a.authenticated("alice");
        let _b = core.admit(PEER).expect("b");
        assert_eq!(
            core.admit(PEER).err(),
            Some("too many connections from this address")
        );
        assert_eq!(
            core.metrics.connections_refused_of(ConnRefusal::PerAddress),
            1
        );
        drop((sys, a, _b));
        assert!(core.per_address.is_empty(), "address entry not forgotten");
        assert_eq!(core.admitted.load(Relaxed), 0);
    }

    #[test]
    fn refusal_log_writes_at_most_one_line_a_second_per_reason_with_a_count() {
        let log = RefusalLog::new();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(log.note(ConnRefusal::MaxConnections, at(0)), Some(0));
        for ms in 1..=500 {
            assert_eq!(log.note(ConnRefusal::MaxConnections, at(ms)), None);
        }
        // Another reason has its own line.
        assert_eq!(
            log.note(ConnRefusal::UnauthenticatedPerAddress, at(600)),
            Some(0)
        );
        assert_eq!(log.note(ConnRefusal::MaxConnections, at(900)), None);
        // A second later: one line standing for the 501 refusals not logged.
        assert_eq!(log.note(ConnRefusal::MaxConnections, at(1_001)), Some(501));
        assert_eq!(log.note(ConnRefusal::MaxConnections, at(1_002)), None);
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
            Ok(Outbound::Replay { sub, msgs }) => {
                assert_eq!(msgs.len(), 1);
                assert_eq!(&*msgs[0].message_id, "t-0-7");
                assert_eq!(&*sub, "s1");
                // Accounted only when the session paces it into its output.
                assert_eq!(conn.pending_bytes(), 0);
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
