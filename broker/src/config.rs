//! One typed configuration struct with every default in one place.
//!
//! Filled, in order, from [`Config::default`], a TOML file (`--config`),
//! environment variables (`STOMP_BROKER_*`) and command-line flags; see
//! [`Args`]. `config/example.toml` in the repository lists every key.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{acl::AclRule, auth::AuthConfig};

/// Largest accepted `heartbeat.tolerance`: a client may stay silent for a
/// hundred intervals, more is a typo.
pub const MAX_HEARTBEAT_TOLERANCE: f64 = 100.0;

/// Largest accepted duration setting (`*_ms`): one day.
pub const MAX_DURATION_MS: u64 = 86_400_000;

/// The whole broker configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners.
    pub listen: ListenConfig,
    /// Input and resource limits.
    pub limits: LimitsConfig,
    /// Heart-beating.
    pub heartbeat: HeartbeatConfig,
    /// `/queue/...` destinations.
    pub queues: QueueConfig,
    /// Retained messages for late subscribers.
    pub retain: RetainConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// Authorization rules, first match wins (`[[acl]]`).
    pub acl: Vec<AclRule>,
    /// Who may see the status page, `/stats.json`, `/metrics` and
    /// `/topic/broker.stats`.
    pub status: StatusConfig,
    /// TLS certificate and key for the `stomp_tls` and `https` listeners.
    pub tls: TlsConfig,
    /// The Kafka bridge (`[kafka]`); off unless `brokers` is set. Its keys
    /// are documented in docs/kafka.md.
    #[serde(skip_serializing)]
    pub kafka: Option<kafka_bridge::BridgeConfig>,
    /// `/app/...` destinations handled by HTTP endpoints (`[[app_http]]`),
    /// longest prefix first; they take precedence over `/app` → Kafka.
    pub app_http: Vec<AppHttpRoute>,
    /// Several nodes sharing `/topic` and `/user` destinations through Kafka
    /// (`[cluster]`, docs/cluster.md); off unless `enabled`.
    pub cluster: ClusterConfig,
    /// What to do with a subscriber whose outbound queue is full.
    pub slow_consumer: SlowConsumerPolicy,
    /// How long graceful shutdown may take before connections are cut, ms.
    pub shutdown_timeout_ms: u64,
    /// Logging.
    pub log: LogConfig,
    /// The SockJS endpoint (`[sockjs]`), for clients without WebSocket.
    pub sockjs: SockJsConfig,
}

/// The SockJS endpoint, served on the HTTP and HTTPS listeners.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SockJsConfig {
    /// Serve SockJS at all.
    pub enabled: bool,
    /// The URL prefix, e.g. `/sockjs`.
    pub path: String,
    /// Interval of SockJS `h` frames, ms.
    pub heartbeat_ms: u64,
    /// A session with no open receiving request for this long is closed, ms.
    pub disconnect_delay_ms: u64,
    /// Largest `xhr_send` body; unset means `limits.max_frame_bytes * 2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<usize>,
}

impl Default for SockJsConfig {
    fn default() -> Self {
        SockJsConfig {
            enabled: true,
            path: "/sockjs".into(),
            heartbeat_ms: 25_000,
            disconnect_delay_ms: 5_000,
            max_request_bytes: None,
        }
    }
}

impl Config {
    /// The effective `sockjs.max_request_bytes`.
    pub fn sockjs_max_request_bytes(&self) -> usize {
        self.sockjs
            .max_request_bytes
            .unwrap_or_else(|| self.limits.max_frame_bytes.saturating_mul(2))
    }
}

/// `[cluster]`: N broker nodes behind a load balancer, sharing `/topic/...`
/// and `/user/...` destinations through one Kafka topic (docs/cluster.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Join the cluster (`--cluster`); needs `kafka.brokers`.
    pub enabled: bool,
    /// This node's name (`--node-id`), unique in the cluster. Default:
    /// hostname plus the bound STOMP port, e.g. `host-61613`.
    pub node_id: Option<String>,
    /// The Kafka topic the nodes share; created if missing. Further internal
    /// topics would only be named with this prefix.
    pub topic: String,
    /// Partitions of `topic` when this node creates it.
    pub partitions: i32,
    /// Replication factor of `topic` when this node creates it; -1 = the
    /// Kafka cluster's default.
    pub replication_factor: i32,
    /// Most cluster records produced but not yet acknowledged by Kafka;
    /// beyond it a SEND is still delivered locally but not relayed
    /// (`stomp_cluster_produce_failures_total`).
    pub max_in_flight: usize,
    /// Most bytes (body plus headers) of cluster records produced but not
    /// yet acknowledged by Kafka; also charged to the memory budget while in
    /// flight. Beyond it (or when the budget is spent) a SEND is still
    /// delivered locally but not relayed. Sizes librdkafka's own producer
    /// queue (`queue.buffering.max.kbytes`) and the cluster consumer's
    /// prefetch (`queued.max.messages.kbytes`, a quarter of it, at most
    /// 16 MiB).
    pub max_in_flight_bytes: usize,
    /// How often this node announces itself on `topic`, ms; a node is
    /// "seen" if heard within 3 intervals.
    pub heartbeat_ms: u64,
    /// `/queue/...`: most records per queue-topic partition that the owner
    /// has taken and that are not done yet (dispatched and unacknowledged,
    /// or waiting for a consumer); the partition is paused beyond.
    pub queue_window: usize,
    /// Extra librdkafka properties for the relay producer, applied last
    /// (over the broker's latency defaults and `kafka.client`), e.g.
    /// `"linger.ms" = "5"` to trade latency for fewer produce requests.
    pub producer: BTreeMap<String, String>,
    /// Extra librdkafka properties for the cluster consumer, applied last
    /// (over the broker's latency defaults and `kafka.client`).
    pub consumer: BTreeMap<String, String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node_id: None,
            topic: "stomp-broker.cluster".into(),
            partitions: 6,
            replication_factor: -1,
            max_in_flight: 10_000,
            max_in_flight_bytes: 64 << 20,
            heartbeat_ms: 1_000,
            queue_window: 1_000,
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }
}

/// Listener addresses. An empty string disables a listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// STOMP over TCP (RabbitMQ's port 61613).
    pub stomp: String,
    /// HTTP: WebSocket endpoint, metrics, health (RabbitMQ Web-STOMP's 15674).
    pub http: String,
    /// Path of the STOMP WebSocket endpoint.
    pub ws_path: String,
    /// STOMP over TLS; empty disables (needs `[tls]`).
    pub stomp_tls: String,
    /// HTTPS/WSS listener; empty disables (needs `[tls]`).
    pub https: String,
    /// WebSocket `Origin`s allowed to connect. `"*"` allows any; an entry
    /// ending in `:*` allows any port. Requests without `Origin`
    /// (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Serve the status page (`GET /`, `GET /stats.json`) on the HTTP port.
    pub status_page: bool,
    /// After binding, write `{"stomp": addr, "http": addr, …}` as JSON here.
    pub port_file: Option<PathBuf>,
    /// Listen backlog of every listener: connections the kernel queues
    /// before the broker accepts them (capped by `net.core.somaxconn`).
    pub backlog: u32,
    /// Send every frame as its own WebSocket message instead of packing
    /// the frames of one flush into one message (RabbitMQ Web-STOMP's
    /// behaviour; for benchmark comparisons and clients that need it).
    pub ws_frame_per_message: bool,
}

/// Access to the operator endpoints: `GET /`, `/stats.json` and `/metrics`
/// (not `/healthz`, `/readyz`) and STOMP subscriptions that receive
/// `/topic/broker.stats`. Open to anyone unless restricted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StatusConfig {
    /// Client networks allowed (CIDR, e.g. `"127.0.0.1/32"`, `"10.0.0.0/8"`,
    /// `"::1/128"`; a bare address means just it); others get HTTP 403.
    /// Empty: any address.
    pub allow: Vec<String>,
    /// With `password`: HTTP Basic credentials required (HTTP 401
    /// otherwise), and the only STOMP user who may subscribe to
    /// `/topic/broker.stats`.
    pub username: Option<String>,
    /// The password for `username`.
    pub password: Option<String>,
}

impl StatusConfig {
    /// Whether any restriction is configured.
    pub fn is_restricted(&self) -> bool {
        !self.allow.is_empty() || self.username.is_some()
    }
}

/// TLS settings (rustls).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    pub key_file: Option<PathBuf>,
}

/// Input and resource limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest STOMP frame in bytes (command, headers, body). Keep it above
    /// `max_body_bytes` so a body of exactly `max_body_bytes` still fits with
    /// its headers (the default leaves 64 KiB for them).
    pub max_frame_bytes: usize,
    /// Largest body in bytes.
    pub max_body_bytes: usize,
    /// Most headers in one frame.
    pub max_headers: usize,
    /// Longest command or header line in bytes.
    pub max_header_line: usize,
    /// Largest header section (command, header lines, blank line) in bytes.
    pub max_header_bytes: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Most connections open at once (both listeners together).
    pub max_connections: usize,
    /// Time allowed between accepting a connection and its CONNECT, ms.
    pub connect_timeout_ms: u64,
    /// Time a frame may take to arrive once its first byte did, ms (stops
    /// slowloris clients that negotiated no heart-beats); 0 disables.
    pub frame_timeout_ms: u64,
    /// Outbound bytes queued for one connection, plus the bytes of messages
    /// it has not acknowledged yet, before the slow-consumer policy applies
    /// (a queue skips such a consumer instead).
    pub max_pending_bytes_per_connection: usize,
    /// Unacknowledged messages one `client`/`client-individual`
    /// subscription may hold (the prefetch window).
    pub max_unacked_per_subscription: usize,
    /// Open transactions per connection.
    pub max_transactions_per_connection: usize,
    /// SENDs and ACKs one transaction may hold.
    pub max_frames_per_transaction: usize,
    /// Frames per second one connection may send (token bucket, burst of
    /// one second); 0 disables.
    pub max_frames_per_second: u32,
    /// Connections open at once from one IP address, authenticated or not
    /// (`system_logins` sessions excepted); 0 disables. Off by default: a
    /// Spring broker relay opens one connection per browser session from
    /// one address; `max_unauthenticated_per_address` is the per-address
    /// protection.
    pub max_connections_per_address: usize,
    /// Sockets open at once from one IP address that have not (yet)
    /// authenticated: HTTP sockets, connections before their CONNECT is
    /// accepted, anonymous sessions; 0 disables. Authenticated sessions
    /// count only against `max_connections`.
    pub max_unauthenticated_per_address: usize,
    /// Logins (authenticated users) exempt from `max_frames_per_second` and
    /// the per-address limits: e.g. the `systemLogin` of a Spring broker
    /// relay, whose one connection carries every message the application
    /// sends.
    pub system_logins: Vec<String>,
    /// Time an HTTP request's headers may take to arrive once its first byte
    /// did, ms (slowloris on the HTTP port); 0 disables.
    pub http_header_timeout_ms: u64,
    /// Time an HTTP keep-alive connection may wait for its next request
    /// (and a new one for its first), ms; 0 disables.
    pub http_idle_timeout_ms: u64,
    /// The broker-wide memory budget in bytes that outbound queues, queue
    /// buffers, transactions, unacknowledged and retained messages draw
    /// from; over it, publishes are refused. 0 means half of the memory
    /// available (cgroup `memory.max` if set, else `MemTotal`).
    pub memory_budget_bytes: usize,
    /// Bytes of SENDs and ACKs one connection's open transactions may hold
    /// together.
    pub max_transaction_bytes: usize,
    /// `[[app_http]]` requests one connection may have waiting for their
    /// backend's answer; one more ends the session with an ERROR.
    pub max_app_requests_per_connection: usize,
}

/// One `[[app_http]]` route: SENDs whose destination starts with `prefix`
/// are POSTed to `url` (see `crate::app_http`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppHttpRoute {
    /// Destination prefix, starting with `/app/` (longest prefix wins).
    pub prefix: String,
    /// The endpoint, `http://` or `https://`.
    pub url: String,
    /// Time the backend has to answer (headers and body), ms.
    #[serde(default = "default_app_http_timeout_ms")]
    pub timeout_ms: u64,
    /// Extra request headers (e.g. an `Authorization` for the backend).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn default_app_http_timeout_ms() -> u64 {
    5_000
}

/// Heart-beat settings.
///
/// The server follows the client: it sends as often as the client asks
/// and expects to hear from it as often as the client says it can send,
/// each clamped to `[min_ms, max_ms]` (see
/// [`crate::session::negotiate_heart_beats`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// `sx,sy`: which directions the server heart-beats. A `0` turns that
    /// direction off (`0,0`: no heart-beats at all; `sx,0`: silent clients
    /// are never closed); any other number turns it on. The numbers no
    /// longer set the interval: `min_ms`/`max_ms` bound what the client asks.
    pub server: String,
    /// Shortest interval in ms the server sends heart-beats at or expects
    /// them at, whatever the client asks (protects the server from clients
    /// asking for a beat every millisecond).
    pub min_ms: u64,
    /// Longest interval in ms the server stays silent when the client wants
    /// heart-beats. A client that can only send less often is still
    /// accepted and judged by its own interval (STOMP's `max(cx, sy)`).
    pub max_ms: u64,
    /// A silent client is closed after `interval * tolerance + grace`.
    pub tolerance: f64,
    /// Added to the tolerated silence, ms (background tabs throttle
    /// timers), but never more than half the interval, so a client asking
    /// for 1 s heart-beats is closed within about 2.5 s of going silent.
    pub grace_ms: u64,
}

/// Queue settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Messages a queue keeps while no consumer can take them.
    pub max_messages: usize,
    /// Bytes a queue keeps while no consumer can take them.
    pub max_bytes: usize,
    /// What happens when a queue is full.
    pub overflow: QueueOverflow,
    /// Most queues that may exist at once; a SEND or SUBSCRIBE that would
    /// create one more is refused. Empty queues without consumers are
    /// removed.
    pub max_queues: usize,
    /// `competing` (default): each `/queue/` message goes to one consumer,
    /// round-robin, and waits in the queue while nobody can take it.
    /// `broadcast`: every subscriber of the queue gets every message and
    /// nothing is kept for later (Spring's simple broker).
    pub mode: QueueMode,
    /// `/temp-queue/<name>` reply queues (SEND `reply-to`) one connection
    /// may hold; one more gets ERROR `too many temporary queues`.
    pub max_temp_queues_per_connection: usize,
}

/// How `/queue/...` destinations deliver.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum QueueMode {
    /// Competing consumers: one consumer per message, round-robin; buffered
    /// while nobody can take it (RabbitMQ, ActiveMQ).
    Competing,
    /// Every subscriber gets every message, nothing is buffered (Spring's
    /// `enableSimpleBroker`).
    Broadcast,
}

/// Retained-message store settings (per-destination counts and TTLs are
/// set per Kafka route).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetainConfig {
    /// Most destinations with retained messages; the least recently updated
    /// is evicted first.
    pub max_destinations: usize,
    /// Most bytes of retained messages (at most half of the memory budget
    /// is used); the least recently updated destinations are evicted first.
    pub max_bytes: usize,
}

impl Default for RetainConfig {
    fn default() -> Self {
        RetainConfig {
            max_destinations: 100_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Queue overflow policy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum QueueOverflow {
    /// Drop the oldest buffered message to make room.
    DropOldest,
    /// Drop the new message.
    DropNewest,
    /// Refuse the SEND with an ERROR to the publisher.
    RejectPublish,
}

/// Slow-consumer policy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumerPolicy {
    /// Send ERROR `slow consumer` and close the connection.
    Disconnect,
    /// Drop messages to that subscriber and count them.
    Drop,
}

/// Log settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive, e.g. `info` or `stomp_broker=debug`.
    pub level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: ListenConfig::default(),
            limits: LimitsConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            queues: QueueConfig::default(),
            retain: RetainConfig::default(),
            auth: AuthConfig::default(),
            acl: Vec::new(),
            status: StatusConfig::default(),
            tls: TlsConfig::default(),
            kafka: None,
            app_http: Vec::new(),
            cluster: ClusterConfig::default(),
            slow_consumer: SlowConsumerPolicy::Disconnect,
            shutdown_timeout_ms: 5_000,
            log: LogConfig::default(),
            sockjs: SockJsConfig::default(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            stomp: "127.0.0.1:61613".into(),
            http: "127.0.0.1:15674".into(),
            ws_path: "/ws".into(),
            stomp_tls: String::new(),
            status_page: true,
            https: String::new(),
            allowed_origins: [
                "http://localhost:*",
                "https://localhost:*",
                "http://127.0.0.1:*",
                "https://127.0.0.1:*",
                "http://[::1]:*",
                "https://[::1]:*",
            ]
            .map(String::from)
            .to_vec(),
            port_file: None,
            backlog: 1024,
            ws_frame_per_message: false,
        }
    }
}

/// Room the default frame limit leaves for the command and headers on top
/// of the largest body (as large as the default `limits.max_header_bytes`,
/// less the frame's closing NUL).
pub const HEADER_ROOM: usize = 64 * 1024;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 1024 * 1024 + HEADER_ROOM,
            max_body_bytes: 1024 * 1024,
            max_headers: 64,
            max_header_line: 8 * 1024,
            max_header_bytes: 64 * 1024,
            max_subscriptions_per_connection: 1024,
            max_connections: 100_000,
            connect_timeout_ms: 10_000,
            frame_timeout_ms: 30_000,
            max_pending_bytes_per_connection: 2 * 1024 * 1024,
            max_unacked_per_subscription: 1_000,
            max_transactions_per_connection: 16,
            max_frames_per_transaction: 1_000,
            max_frames_per_second: 100_000,
            max_connections_per_address: 0,
            max_unauthenticated_per_address: 1_000,
            system_logins: Vec::new(),
            http_header_timeout_ms: 10_000,
            http_idle_timeout_ms: 60_000,
            memory_budget_bytes: 0,
            max_transaction_bytes: 4 * 1024 * 1024,
            max_app_requests_per_connection: 64,
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            server: "10000,10000".into(),
            min_ms: 1_000,
            max_ms: 60_000,
            tolerance: 2.0,
            grace_ms: 5_000,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_messages: 10_000,
            max_bytes: 64 * 1024 * 1024,
            overflow: QueueOverflow::DropOldest,
            max_queues: 10_000,
            mode: QueueMode::Competing,
            max_temp_queues_per_connection: 100,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Reads a TOML file; missing keys keep their defaults.
    pub fn from_toml_file(path: &std::path::Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Config::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses TOML text; missing keys keep their defaults.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.server_heart_beat()?;
        for addr in [
            &self.listen.stomp,
            &self.listen.http,
            &self.listen.stomp_tls,
            &self.listen.https,
        ] {
            if !addr.is_empty() {
                addr.parse::<SocketAddr>()
                    .map_err(|e| anyhow::anyhow!("listen address {addr:?}: {e}"))?;
            }
        }
        let tls_listener = !self.listen.stomp_tls.is_empty() || !self.listen.https.is_empty();
        if tls_listener && (self.tls.cert_file.is_none() || self.tls.key_file.is_none()) {
            anyhow::bail!("listen.stomp_tls / listen.https need tls.cert_file and tls.key_file");
        }
        if !self.listen.ws_path.starts_with('/') {
            anyhow::bail!("listen.ws_path must start with '/'");
        }
        if self.sockjs.enabled {
            let p = &self.sockjs.path;
            if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') {
                anyhow::bail!("sockjs.path must start with '/', and not be '/' or end with '/'");
            }
            if *p == self.listen.ws_path {
                anyhow::bail!("sockjs.path must differ from listen.ws_path");
            }
            if self.sockjs.heartbeat_ms == 0
                || self.sockjs.disconnect_delay_ms == 0
                || self.sockjs.heartbeat_ms > MAX_DURATION_MS
                || self.sockjs.disconnect_delay_ms > MAX_DURATION_MS
            {
                anyhow::bail!(
                    "sockjs.heartbeat_ms and sockjs.disconnect_delay_ms must be 1..=86400000"
                );
            }
            if self.sockjs.max_request_bytes == Some(0) {
                anyhow::bail!("sockjs.max_request_bytes must be positive");
            }
        }
        if self.limits.max_frame_bytes == 0
            || self.limits.max_header_bytes == 0
            || self.limits.max_pending_bytes_per_connection == 0
        {
            anyhow::bail!("limits must be positive");
        }
        if self.listen.backlog == 0 || self.listen.backlog > i32::MAX as u32 {
            anyhow::bail!("listen.backlog must be between 1 and {}", i32::MAX);
        }
        let tolerance = self.heartbeat.tolerance;
        // `!(a..=b).contains` is also true for NaN; infinity is out of range.
        if !(1.0..=MAX_HEARTBEAT_TOLERANCE).contains(&tolerance) {
            anyhow::bail!(
                "heartbeat.tolerance must be a number from 1.0 to {MAX_HEARTBEAT_TOLERANCE}, not {tolerance}"
            );
        }
        for (name, ms) in [
            ("heartbeat.grace_ms", self.heartbeat.grace_ms),
            ("heartbeat.min_ms", self.heartbeat.min_ms),
            ("heartbeat.max_ms", self.heartbeat.max_ms),
            ("limits.connect_timeout_ms", self.limits.connect_timeout_ms),
            ("limits.frame_timeout_ms", self.limits.frame_timeout_ms),
            (
                "limits.http_header_timeout_ms",
                self.limits.http_header_timeout_ms,
            ),
            (
                "limits.http_idle_timeout_ms",
                self.limits.http_idle_timeout_ms,
            ),
            ("shutdown_timeout_ms", self.shutdown_timeout_ms),
        ]
        .into_iter()
        .chain(
            self.app_http
                .iter()
                .map(|r| ("app_http.timeout_ms", r.timeout_ms)),
        ) {
            if ms > MAX_DURATION_MS {
                anyhow::bail!("{name} must be at most {MAX_DURATION_MS} (one day), not {ms}");
            }
        }
        let hb = &self.heartbeat;
        if hb.min_ms == 0 || hb.min_ms > hb.max_ms {
            anyhow::bail!(
                "heartbeat.min_ms and heartbeat.max_ms: need 1 <= min_ms <= max_ms, not {} and {}",
                hb.min_ms,
                hb.max_ms
            );
        }
        for net in &self.status.allow {
            crate::status::parse_cidr(net)
                .map_err(|e| anyhow::anyhow!("status.allow {net:?}: {e}"))?;
        }
        let cl = &self.cluster;
        if cl.enabled {
            if self.kafka.as_ref().is_none_or(|k| k.brokers.is_empty()) {
                anyhow::bail!("cluster.enabled (--cluster) needs kafka.brokers (--kafka-brokers)");
            }
            if let Some(id) = &cl.node_id {
                if id.is_empty()
                    || id.len() > 100
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    anyhow::bail!("cluster.node_id {id:?}: 1 to 100 characters of [A-Za-z0-9._-]");
                }
            }
            if !kafka_bridge::is_valid_topic(&cl.topic) {
                anyhow::bail!(
                    "cluster.topic {:?} is not a valid Kafka topic name",
                    cl.topic
                );
            }
            if !(1..=10_000).contains(&cl.partitions) {
                anyhow::bail!("cluster.partitions must be from 1 to 10000");
            }
            if cl.replication_factor != -1 && !(1..=100).contains(&cl.replication_factor) {
                anyhow::bail!("cluster.replication_factor must be -1 or from 1 to 100");
            }
            if !(1..=1_000_000).contains(&cl.max_in_flight) {
                anyhow::bail!("cluster.max_in_flight must be from 1 to 1000000");
            }
            if !(1024..=(1 << 31)).contains(&cl.max_in_flight_bytes) {
                anyhow::bail!("cluster.max_in_flight_bytes must be from 1024 to 2147483648");
            }
            if !(100..=60_000).contains(&cl.heartbeat_ms) {
                anyhow::bail!("cluster.heartbeat_ms must be from 100 to 60000");
            }
            if !(1..=1_000_000).contains(&cl.queue_window) {
                anyhow::bail!("cluster.queue_window must be from 1 to 1000000");
            }
        }
        match (&self.status.username, &self.status.password) {
            (None, None) => {}
            (Some(u), Some(p)) if !u.is_empty() && !u.contains(':') && !p.is_empty() => {}
            _ => anyhow::bail!(
                "status.username and status.password go together: a non-empty user name without ':' and a non-empty password"
            ),
        }
        if self.limits.max_app_requests_per_connection == 0 {
            anyhow::bail!("limits.max_app_requests_per_connection must be positive");
        }
        let mut prefixes = std::collections::HashSet::new();
        for r in &self.app_http {
            crate::app_http::validate_route(r)
                .map_err(|e| anyhow::anyhow!("app_http {:?}: {e}", r.prefix))?;
            if !prefixes.insert(r.prefix.as_str()) {
                anyhow::bail!("app_http {:?}: prefix listed twice", r.prefix);
            }
        }
        Ok(())
    }

    /// The server's heart-beat offer `(sx, sy)`.
    pub fn server_heart_beat(&self) -> anyhow::Result<(u32, u32)> {
        stomp_codec::parse_heart_beat(&self.heartbeat.server)
            .map_err(|_| anyhow::anyhow!("heartbeat.server must be 'sx,sy' in ms"))
    }

    /// Codec limits derived from [`LimitsConfig`].
    pub fn codec_limits(&self) -> stomp_codec::Limits {
        let mut l = stomp_codec::Limits::default();
        l.max_frame = self.limits.max_frame_bytes;
        l.max_body = self.limits.max_body_bytes;
        l.max_headers = self.limits.max_headers;
        l.max_header_line = self.limits.max_header_line;
        l.max_header_bytes = self.limits.max_header_bytes;
        l
    }

    /// The memory budget in bytes: `limits.memory_budget_bytes`, or the
    /// machine-derived default when that is 0.
    pub fn memory_budget(&self) -> usize {
        match self.limits.memory_budget_bytes {
            0 => crate::budget::default_limit(),
            n => n,
        }
    }

    /// `connect_timeout_ms` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.connect_timeout_ms)
    }
}

/// Command-line flags; each also reads an environment variable.
///
/// Flags override the environment, which overrides the file, which
/// overrides the defaults of [`Config`].
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "stomp-broker",
    version,
    about = "A standalone STOMP broker over WebSocket and TCP, with a Kafka bridge."
)]
pub struct Args {
    /// TOML configuration file (see config/example.toml).
    #[arg(long, env = "STOMP_BROKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// STOMP over TCP listen address; empty disables [default: 127.0.0.1:61613].
    #[arg(long, env = "STOMP_BROKER_STOMP_LISTEN")]
    pub stomp_listen: Option<String>,
    /// HTTP/WebSocket listen address; empty disables [default: 127.0.0.1:15674].
    #[arg(long, env = "STOMP_BROKER_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// WebSocket endpoint path [default: /ws].
    #[arg(long, env = "STOMP_BROKER_WS_PATH")]
    pub ws_path: Option<String>,
    /// Send each frame as its own WebSocket message (listen.ws_frame_per_message).
    #[arg(long, env = "STOMP_BROKER_WS_FRAME_PER_MESSAGE")]
    pub ws_frame_per_message: bool,
    /// SockJS endpoint path prefix (sockjs.path).
    #[arg(long, env = "STOMP_BROKER_SOCKJS_PATH")]
    pub sockjs_path: Option<String>,
    /// Write the bound addresses as JSON to this file once listening.
    #[arg(long, env = "STOMP_BROKER_PORT_FILE")]
    pub port_file: Option<PathBuf>,
    /// Heart-beat directions `sx,sy`: 0 turns one off, "0,0" both; intervals follow the client [default: 10000,10000].
    #[arg(long, env = "STOMP_BROKER_HEART_BEAT")]
    pub heart_beat: Option<String>,
    /// Tolerated client silence factor [default: 2.0].
    #[arg(long, env = "STOMP_BROKER_HEART_BEAT_TOLERANCE")]
    pub heart_beat_tolerance: Option<f64>,
    /// Extra tolerated client silence in ms, at most half the interval [default: 5000].
    #[arg(long, env = "STOMP_BROKER_HEART_BEAT_GRACE_MS")]
    pub heart_beat_grace_ms: Option<u64>,
    /// Shortest heart-beat interval in ms, whatever the client asks [default: 1000].
    #[arg(long, env = "STOMP_BROKER_HEART_BEAT_MIN_MS")]
    pub heart_beat_min_ms: Option<u64>,
    /// Longest heart-beat interval in ms the server stays silent [default: 60000].
    #[arg(long, env = "STOMP_BROKER_HEART_BEAT_MAX_MS")]
    pub heart_beat_max_ms: Option<u64>,
    /// Largest frame in bytes; the body limit is lowered to leave 64 KiB of it (at most half) for headers [default: 1114112].
    #[arg(long, env = "STOMP_BROKER_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Most connections at once [default: 100000].
    #[arg(long, env = "STOMP_BROKER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most subscriptions per connection [default: 1024].
    #[arg(long, env = "STOMP_BROKER_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Outbound bytes per connection before the slow-consumer policy [default: 2097152].
    #[arg(long, env = "STOMP_BROKER_MAX_PENDING_BYTES")]
    pub max_pending_bytes: Option<usize>,
    /// Broker-wide memory budget in bytes; 0 = half of the memory available [default: 0].
    #[arg(long, env = "STOMP_BROKER_MEMORY_BUDGET_BYTES")]
    pub memory_budget_bytes: Option<usize>,
    /// Time allowed before CONNECT, ms [default: 10000].
    #[arg(long, env = "STOMP_BROKER_CONNECT_TIMEOUT_MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Slow-consumer policy [default: disconnect].
    #[arg(long, env = "STOMP_BROKER_SLOW_CONSUMER", value_enum)]
    pub slow_consumer: Option<SlowConsumerPolicy>,
    /// Messages buffered per queue without consumers [default: 10000].
    #[arg(long, env = "STOMP_BROKER_QUEUE_MAX_MESSAGES")]
    pub queue_max_messages: Option<usize>,
    /// Queue overflow policy [default: drop-oldest].
    #[arg(long, env = "STOMP_BROKER_QUEUE_OVERFLOW", value_enum)]
    pub queue_overflow: Option<QueueOverflow>,
    /// `/queue/` delivery: competing consumers or broadcast to all [default: competing].
    #[arg(long, env = "STOMP_BROKER_QUEUE_MODE", value_enum)]
    pub queue_mode: Option<QueueMode>,
    /// Graceful shutdown time limit in ms [default: 5000].
    #[arg(long, env = "STOMP_BROKER_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Kafka bootstrap servers; enables the Kafka bridge.
    #[arg(long, env = "STOMP_BROKER_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Kafka consumer group id [default: stomp-broker-<hostname>].
    #[arg(long, env = "STOMP_BROKER_KAFKA_GROUP_ID")]
    pub kafka_group_id: Option<String>,
    /// Join a cluster of nodes sharing destinations through Kafka (needs --kafka-brokers).
    #[arg(long, env = "STOMP_BROKER_CLUSTER")]
    pub cluster: bool,
    /// This node's id in the cluster [default: <hostname>-<stomp port>].
    #[arg(long, env = "STOMP_BROKER_NODE_ID")]
    pub node_id: Option<String>,
    /// A Kafka route `topic[,topic…]=/destination/template`, e.g.
    /// `order-results=/topic/order.{key}`; repeatable.
    #[arg(long = "route", env = "STOMP_BROKER_ROUTES", value_delimiter = ';')]
    pub routes: Vec<kafka_bridge::RouteConfig>,
    /// STOMP over TLS listen address (needs --tls-cert/--tls-key).
    #[arg(long, env = "STOMP_BROKER_STOMP_TLS_LISTEN")]
    pub stomp_tls_listen: Option<String>,
    /// HTTPS/WSS listen address (needs --tls-cert/--tls-key).
    #[arg(long, env = "STOMP_BROKER_HTTPS_LISTEN")]
    pub https_listen: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "STOMP_BROKER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "STOMP_BROKER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Print an argon2 hash of the password read from stdin (for the users file) and exit.
    #[arg(long)]
    pub hash_password: bool,
    /// Log format [default: human].
    #[arg(long, env = "STOMP_BROKER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `stomp_broker=debug` [default: info].
    #[arg(long, env = "STOMP_BROKER_LOG")]
    pub log_level: Option<String>,
}

impl Args {
    /// Builds the effective configuration: defaults, then file, then these.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($src:expr => $dst:expr) => {
                if let Some(v) = $src {
                    $dst = v;
                }
            };
        }
        set!(self.stomp_listen => cfg.listen.stomp);
        set!(self.http_listen => cfg.listen.http);
        set!(self.ws_path => cfg.listen.ws_path);
        if self.ws_frame_per_message {
            cfg.listen.ws_frame_per_message = true;
        }
        set!(self.sockjs_path => cfg.sockjs.path);
        if self.port_file.is_some() {
            cfg.listen.port_file = self.port_file;
        }
        set!(self.heart_beat => cfg.heartbeat.server);
        set!(self.heart_beat_tolerance => cfg.heartbeat.tolerance);
        set!(self.heart_beat_grace_ms => cfg.heartbeat.grace_ms);
        set!(self.heart_beat_min_ms => cfg.heartbeat.min_ms);
        set!(self.heart_beat_max_ms => cfg.heartbeat.max_ms);
        if let Some(v) = self.max_frame_bytes {
            cfg.limits.max_frame_bytes = v;
            // A body of the body limit must still fit with its headers.
            let room = HEADER_ROOM.min(v / 2);
            cfg.limits.max_body_bytes = cfg.limits.max_body_bytes.min(v - room);
        }
        set!(self.max_connections => cfg.limits.max_connections);
        set!(self.max_subscriptions => cfg.limits.max_subscriptions_per_connection);
        set!(self.max_pending_bytes => cfg.limits.max_pending_bytes_per_connection);
        set!(self.memory_budget_bytes => cfg.limits.memory_budget_bytes);
        set!(self.connect_timeout_ms => cfg.limits.connect_timeout_ms);
        set!(self.slow_consumer => cfg.slow_consumer);
        set!(self.queue_max_messages => cfg.queues.max_messages);
        set!(self.queue_overflow => cfg.queues.overflow);
        set!(self.queue_mode => cfg.queues.mode);
        set!(self.shutdown_timeout_ms => cfg.shutdown_timeout_ms);
        set!(self.stomp_tls_listen => cfg.listen.stomp_tls);
        set!(self.https_listen => cfg.listen.https);
        if self.tls_cert.is_some() {
            cfg.tls.cert_file = self.tls_cert;
        }
        if self.tls_key.is_some() {
            cfg.tls.key_file = self.tls_key;
        }
        if self.kafka_brokers.is_some() || self.kafka_group_id.is_some() || !self.routes.is_empty()
        {
            let kafka = cfg
                .kafka
                .get_or_insert_with(kafka_bridge::BridgeConfig::default);
            if let Some(b) = self.kafka_brokers {
                kafka.brokers = b;
            }
            if self.kafka_group_id.is_some() {
                kafka.group_id = self.kafka_group_id;
            }
            kafka.routes.extend(self.routes);
        }
        if self.cluster {
            cfg.cluster.enabled = true;
        }
        if self.node_id.is_some() {
            cfg.cluster.node_id = self.node_id;
        }
        set!(self.log_format => cfg.log.format);
        set!(self.log_level => cfg.log.level);
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_gives_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Config::from_toml("[limits]\nmax_frame = 3\n").is_err());
    }

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../../config/example.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    /// Every key the struct serialises (all but unset optional ones) must be
    /// in config/example.toml and in README.md's configuration reference,
    /// so the docs cannot drift from the code.
    #[test]
    fn every_config_key_is_documented() {
        fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    match v {
                        toml::Value::Table(_) => keys(&path, v, out),
                        _ => out.push(path),
                    }
                }
            }
        }
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let mut all = Vec::new();
        keys("", &defaults, &mut all);
        assert!(all.len() > 30, "{all:?}");
        let example: toml::Value =
            toml::from_str(include_str!("../../config/example.toml")).unwrap();
        let mut in_example = Vec::new();
        keys("", &example, &mut in_example);
        let readme = include_str!("../../README.md");
        for key in &all {
            if key == "acl" || key == "app_http" {
                // Arrays of tables: documented by commented examples.
                assert!(readme.contains(&format!("[[{key}]]")));
                assert!(include_str!("../../config/example.toml").contains(&format!("[[{key}]]")));
                continue;
            }
            assert!(
                in_example.contains(key),
                "{key} missing from config/example.toml"
            );
            assert!(
                readme.contains(&format!("`{key}`")),
                "{key} missing from README.md"
            );
        }
    }

    #[test]
    fn heartbeat_tolerance_must_be_finite_and_sensible() {
        for bad in ["inf", "-inf", "nan", "0.5", "-1.0", "100.5", "1e300"] {
            let err = Config::from_toml(&format!("[heartbeat]\ntolerance = {bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("heartbeat.tolerance"), "{bad}: {err}");
        }
        for good in ["1.0", "2.5", "100.0"] {
            assert!(Config::from_toml(&format!("[heartbeat]\ntolerance = {good}\n")).is_ok());
        }
    }

    #[test]
    fn absurd_durations_are_rejected() {
        for key in [
            "heartbeat.grace_ms",
            "limits.connect_timeout_ms",
            "limits.frame_timeout_ms",
            "limits.http_header_timeout_ms",
            "limits.http_idle_timeout_ms",
            "shutdown_timeout_ms",
        ] {
            let (table, field) = key.rsplit_once('.').unwrap_or(("", key));
            let header = if table.is_empty() {
                String::new()
            } else {
                format!("[{table}]\n")
            };
            let text = format!("{field} = {}\n", i64::MAX);
            let err = Config::from_toml(&format!("{header}{text}"))
                .expect_err(key)
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
            let ok = format!("{header}{field} = {MAX_DURATION_MS}\n");
            assert!(Config::from_toml(&ok).is_ok(), "{key}");
        }
    }

    proptest::proptest! {
        /// Validation never panics and accepts a tolerance only when the
        /// heart-beat arithmetic can use it.
        #[test]
        fn validate_never_panics_on_any_timing(
            tolerance in proptest::num::f64::ANY,
            grace_ms in proptest::num::u64::ANY,
            frame_ms in proptest::num::u64::ANY,
        ) {
            let mut cfg = Config::default();
            cfg.heartbeat.tolerance = tolerance;
            cfg.heartbeat.grace_ms = grace_ms;
            cfg.limits.frame_timeout_ms = frame_ms;
            if cfg.validate().is_ok() {
                proptest::prop_assert!(tolerance.is_finite() && tolerance >= 1.0);
                proptest::prop_assert!(grace_ms <= MAX_DURATION_MS && frame_ms <= MAX_DURATION_MS);
                let every = Duration::from_millis(u64::from(u32::MAX));
                let _ = every.mul_f64(tolerance) + Duration::from_millis(grace_ms);
            }
        }
    }

    #[test]
    fn status_settings_are_checked() {
        let ok = "[status]\nallow = [\"127.0.0.1/32\", \"10.0.0.0/8\", \"::1\"]\nusername = \"ops\"\npassword = \"pw\"\n";
        let cfg = Config::from_toml(ok).unwrap();
        assert!(cfg.status.is_restricted());
        assert!(!Config::default().status.is_restricted());
        for bad in [
            "[status]\nallow = [\"10.0.0.0/33\"]\n",
            "[status]\nallow = [\"localhost\"]\n",
            "[status]\nusername = \"ops\"\n",
            "[status]\npassword = \"pw\"\n",
            "[status]\nusername = \"a:b\"\npassword = \"pw\"\n",
            "[status]\nusername = \"ops\"\npassword = \"\"\n",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_backlog_defaults_to_1024_and_must_be_positive() {
        assert_eq!(Config::default().listen.backlog, 1024);
        assert!(Config::from_toml("[listen]\nbacklog = 0\n").is_err());
        assert!(Config::from_toml("[listen]\nbacklog = 4096\n").is_ok());
    }

    #[test]
    fn queue_mode_defaults_to_competing_and_parses_broadcast() {
        assert_eq!(Config::default().queues.mode, QueueMode::Competing);
        let cfg = Config::from_toml("[queues]\nmode = \"broadcast\"\n").unwrap();
        assert_eq!(cfg.queues.mode, QueueMode::Broadcast);
        assert!(Config::from_toml("[queues]\nmode = \"fanout\"\n").is_err());
        let args = Args {
            queue_mode: Some(QueueMode::Broadcast),
            ..Args::default()
        };
        assert_eq!(
            args.into_config().unwrap().queues.mode,
            QueueMode::Broadcast
        );
    }

    #[test]
    fn default_frame_limit_leaves_room_for_headers_of_the_largest_body() {
        let l = Config::default().limits;
        assert_eq!(l.max_frame_bytes, l.max_body_bytes + HEADER_ROOM);
        // --max-frame-bytes lowers the body limit to keep that room.
        let small = Args {
            max_frame_bytes: Some(65_536),
            ..Args::default()
        };
        let cfg = small.into_config().unwrap();
        assert_eq!(cfg.limits.max_body_bytes, 32_768);
        let big = Args {
            max_frame_bytes: Some(4 * 1024 * 1024),
            ..Args::default()
        };
        let cfg = big.into_config().unwrap();
        assert_eq!(cfg.limits.max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn heartbeat_bounds_are_checked() {
        let hb = &Config::default().heartbeat;
        assert_eq!((hb.min_ms, hb.max_ms), (1000, 60_000));
        assert!(Config::from_toml("[heartbeat]\nmin_ms = 200\nmax_ms = 200\n").is_ok());
        for bad in [
            "[heartbeat]\nmin_ms = 0\n",
            "[heartbeat]\nmin_ms = 5000\nmax_ms = 4000\n",
            "[heartbeat]\nmax_ms = 5000000000\n",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_file() {
        let args = Args {
            stomp_listen: Some("127.0.0.1:0".into()),
            heart_beat: Some("100,200".into()),
            ..Args::default()
        };
        let cfg = args.into_config().unwrap();
        assert_eq!(cfg.listen.stomp, "127.0.0.1:0");
        assert_eq!(cfg.server_heart_beat().unwrap(), (100, 200));
    }
}
