//! Broker-wide counters, rendered as Prometheus text on `GET /metrics`.

use std::{
    fmt::Write,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
};

use dashmap::DashMap;
use stomp_codec::Command;

use crate::budget::MemoryBudget;

const COMMANDS: [Command; 15] = Command::ALL;

fn command_index(c: Command) -> usize {
    COMMANDS.iter().position(|&x| x == c).unwrap_or(0)
}

/// Why a publish (or a transaction frame) was refused, the label of
/// `stomp_publish_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The broker-wide memory budget is exhausted.
    MemoryBudget,
    /// A queue is full and its overflow policy is `reject-publish`.
    QueueFull,
    /// Creating the queue would pass `queues.max_queues`.
    TooManyQueues,
    /// The connection's open transactions would pass `max_transaction_bytes`.
    TransactionBytes,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::MemoryBudget,
        Refusal::QueueFull,
        Refusal::TooManyQueues,
        Refusal::TransactionBytes,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MemoryBudget => "memory_budget",
            Refusal::QueueFull => "queue_full",
            Refusal::TooManyQueues => "too_many_queues",
            Refusal::TransactionBytes => "transaction_bytes",
        }
    }
}

/// Why a connection (or an HTTP socket) was refused at admission, the
/// label of `stomp_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// `limits.max_connections` (all listeners together) was reached.
    MaxConnections,
    /// `limits.max_connections_per_address` was reached.
    PerAddress,
    /// `limits.max_unauthenticated_per_address` was reached.
    UnauthenticatedPerAddress,
}

impl ConnRefusal {
    /// Every reason, in label order.
    pub const ALL: [ConnRefusal; 3] = [
        ConnRefusal::MaxConnections,
        ConnRefusal::PerAddress,
        ConnRefusal::UnauthenticatedPerAddress,
    ];

    /// The metric label (the setting's name).
    pub fn as_str(self) -> &'static str {
        match self {
            ConnRefusal::MaxConnections => "max_connections",
            ConnRefusal::PerAddress => "max_connections_per_address",
            ConnRefusal::UnauthenticatedPerAddress => "max_unauthenticated_per_address",
        }
    }

    /// What the client is told (ERROR `message`, HTTP 503 body).
    pub fn message(self) -> &'static str {
        match self {
            ConnRefusal::MaxConnections => "too many connections",
            ConnRefusal::PerAddress => "too many connections from this address",
            ConnRefusal::UnauthenticatedPerAddress => {
                "too many unauthenticated connections from this address"
            }
        }
    }
}

/// All broker counters. Cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    /// The broker-wide memory budget (`stomp_memory_budget_bytes`,
    /// `stomp_memory_used_bytes`). Kept here because every component that
    /// buffers messages already shares the metrics.
    pub memory: MemoryBudget,
    /// Publishes refused, by reason.
    publish_refused: [AtomicU64; 4],
    /// `/queue/...` destinations that exist.
    pub queues: AtomicI64,
    /// Retained messages not replayed because they did not fit in the
    /// subscriber's outbound byte budget.
    pub replay_skipped: AtomicU64,
    /// Bytes held by the retained store.
    pub retained_bytes: AtomicI64,
    /// Open connections.
    pub connections: AtomicI64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections refused at admission, by reason.
    connections_rejected: [AtomicU64; 3],
    /// Active subscriptions.
    pub subscriptions: AtomicI64,
    frames_in: [AtomicU64; 15],
    frames_out: [AtomicU64; 15],
    /// Messages published (SEND, bridge, in-process).
    pub messages_published: AtomicU64,
    /// MESSAGE frames handed to subscribers.
    pub messages_delivered: AtomicU64,
    /// Messages dropped (slow-consumer drop policy, queue overflow, no route).
    pub messages_dropped: AtomicU64,
    /// Queue messages redelivered after NACK or disconnect.
    pub messages_redelivered: AtomicU64,
    /// Connections closed by the slow-consumer policy.
    pub slow_consumer_disconnects: AtomicU64,
    /// Retained messages replayed to new subscriptions.
    pub messages_replayed: AtomicU64,
    /// Destinations with retained messages.
    pub retained_destinations: AtomicI64,
    /// Retained destinations evicted because of `max_destinations`.
    pub retained_evicted: AtomicU64,
    /// Heart-beat timeouts.
    pub heartbeat_timeouts: AtomicU64,
    /// Bytes read from clients.
    pub bytes_in: AtomicU64,
    /// Bytes written to clients.
    pub bytes_out: AtomicU64,
    /// Password hashes verified (argon2; unknown users hash a dummy).
    pub auth_hashes: AtomicU64,
    /// Password hashes running now.
    pub auth_hashes_in_flight: AtomicI64,
    /// CONNECTs waiting for a hash slot or for their address's budget.
    pub auth_waiting: AtomicI64,
    /// CONNECTs refused without a check: their address's failure budget is
    /// spent.
    pub auth_throttled: AtomicU64,
    /// HTTP connections closed by the header-read or idle keep-alive timeout.
    pub http_timeouts: AtomicU64,
    /// Open SockJS sessions (also counted in `connections`).
    pub sockjs_sessions: AtomicI64,
    /// SockJS sessions opened, by the transport that opened them
    /// (see [`SOCKJS_TRANSPORTS`]).
    sockjs_sessions_total: [AtomicU64; 4],
    errors: DashMap<&'static str, AtomicU64>,
}

/// SockJS transports, as labelled in `stomp_sockjs_sessions_total`.
pub const SOCKJS_TRANSPORTS: [&str; 4] = ["websocket", "xhr_streaming", "xhr", "eventsource"];

impl Metrics {
    /// Counts one SockJS session opened by `transport` (one of [`SOCKJS_TRANSPORTS`]).
    pub fn sockjs_opened(&self, transport: &str) {
        if let Some(i) = SOCKJS_TRANSPORTS.iter().position(|t| *t == transport) {
            self.sockjs_sessions_total[i].fetch_add(1, Relaxed);
        }
    }

    /// SockJS sessions opened by `transport`.
    pub fn sockjs_opened_of(&self, transport: &str) -> u64 {
        SOCKJS_TRANSPORTS
            .iter()
            .position(|t| *t == transport)
            .map_or(0, |i| self.sockjs_sessions_total[i].load(Relaxed))
    }

    /// Counts one frame received.
    pub fn frame_in(&self, c: Command) {
        self.frames_in[command_index(c)].fetch_add(1, Relaxed);
    }

    /// Counts frames sent.
    pub fn frames_out(&self, c: Command, n: u64) {
        self.frames_out[command_index(c)].fetch_add(n, Relaxed);
    }

    /// Counts one ERROR sent, by kind.
    pub fn error(&self, kind: &'static str) {
        self.errors.entry(kind).or_default().fetch_add(1, Relaxed);
    }

    /// Counts one connection refused at admission.
    pub fn connection_refused(&self, why: ConnRefusal) {
        self.connections_rejected[why as usize].fetch_add(1, Relaxed);
    }

    /// Connections refused at admission for `why`.
    pub fn connections_refused_of(&self, why: ConnRefusal) -> u64 {
        self.connections_rejected[why as usize].load(Relaxed)
    }

    /// Counts one refused publish.
    pub fn refused(&self, why: Refusal) {
        self.publish_refused[why as usize].fetch_add(1, Relaxed);
    }

    /// Refused publishes for `why`.
    pub fn refused_of(&self, why: Refusal) -> u64 {
        self.publish_refused[why as usize].load(Relaxed)
    }

    /// The count of ERRORs of `kind`.
    pub fn errors_of(&self, kind: &str) -> u64 {
        self.errors.get(kind).map(|v| v.load(Relaxed)).unwrap_or(0)
    }

    /// Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            out,
            "stomp_connections",
            "Open connections.",
            self.connections.load(Relaxed),
        );
        counter(
            out,
            "stomp_connections_total",
            "Connections accepted.",
            self.connections_total.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP stomp_connections_rejected_total Connections and HTTP sockets refused at admission, by reason (the limit reached).\n# TYPE stomp_connections_rejected_total counter"
        );
        for r in ConnRefusal::ALL {
            let _ = writeln!(
                out,
                "stomp_connections_rejected_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.connections_refused_of(r)
            );
        }
        gauge(
            out,
            "stomp_sockjs_sessions",
            "Open SockJS sessions.",
            self.sockjs_sessions.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP stomp_sockjs_sessions_total SockJS sessions opened, by transport.\n# TYPE stomp_sockjs_sessions_total counter"
        );
        for t in SOCKJS_TRANSPORTS {
            let _ = writeln!(
                out,
                "stomp_sockjs_sessions_total{{transport=\"{t}\"}} {}",
                self.sockjs_opened_of(t)
            );
        }
        gauge(
            out,
            "stomp_subscriptions",
            "Active subscriptions.",
            self.subscriptions.load(Relaxed),
        );
        for (name, arr, help) in [
            (
                "stomp_frames_in_total",
                &self.frames_in,
                "Frames received by command.",
            ),
            (
                "stomp_frames_out_total",
                &self.frames_out,
                "Frames sent by command.",
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, c) in COMMANDS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{command=\"{}\"}} {}",
                    c.as_str(),
                    arr[i].load(Relaxed)
                );
            }
        }
        counter(
            out,
            "stomp_messages_published_total",
            "Messages published.",
            self.messages_published.load(Relaxed),
        );
        counter(
            out,
            "stomp_messages_delivered_total",
            "MESSAGE frames delivered to subscribers.",
            self.messages_delivered.load(Relaxed),
        );
        counter(
            out,
            "stomp_messages_dropped_total",
            "Messages dropped (slow consumer drop policy, queue overflow).",
            self.messages_dropped.load(Relaxed),
        );
        counter(
            out,
            "stomp_messages_redelivered_total",
            "Queue messages redelivered.",
            self.messages_redelivered.load(Relaxed),
        );
        counter(
            out,
            "stomp_messages_replayed_total",
            "Retained messages replayed to new subscriptions.",
            self.messages_replayed.load(Relaxed),
        );
        gauge(
            out,
            "stomp_retained_destinations",
            "Destinations with retained messages.",
            self.retained_destinations.load(Relaxed),
        );
        counter(
            out,
            "stomp_retained_evicted_total",
            "Retained destinations evicted at the cap.",
            self.retained_evicted.load(Relaxed),
        );
        gauge(
            out,
            "stomp_retained_bytes",
            "Bytes held by the retained store.",
            self.retained_bytes.load(Relaxed),
        );
        counter(
            out,
            "stomp_replay_skipped_total",
            "Retained messages not replayed: over the subscriber's byte budget.",
            self.replay_skipped.load(Relaxed),
        );
        gauge(
            out,
            "stomp_queues",
            "Queues (/queue/...) that exist.",
            self.queues.load(Relaxed),
        );
        gauge(
            out,
            "stomp_memory_budget_bytes",
            "The broker-wide memory budget (limits.memory_budget_bytes).",
            i64::try_from(self.memory.limit()).unwrap_or(i64::MAX),
        );
        gauge(
            out,
            "stomp_memory_used_bytes",
            "Bytes charged to the memory budget: outbound, unacked, queues, transactions, retained.",
            i64::try_from(self.memory.used()).unwrap_or(i64::MAX),
        );
        let _ = writeln!(
            out,
            "# HELP stomp_publish_refused_total Publishes refused, by reason.\n# TYPE stomp_publish_refused_total counter"
        );
        for r in Refusal::ALL {
            let _ = writeln!(
                out,
                "stomp_publish_refused_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.refused_of(r)
            );
        }
        counter(
            out,
            "stomp_slow_consumer_disconnects_total",
            "Connections closed as slow consumers.",
            self.slow_consumer_disconnects.load(Relaxed),
        );
        counter(
            out,
            "stomp_heartbeat_timeouts_total",
            "Connections closed for missing heart-beats.",
            self.heartbeat_timeouts.load(Relaxed),
        );
        counter(
            out,
            "stomp_bytes_in_total",
            "Bytes read from clients.",
            self.bytes_in.load(Relaxed),
        );
        counter(
            out,
            "stomp_bytes_out_total",
            "Bytes written to clients.",
            self.bytes_out.load(Relaxed),
        );
        counter(
            out,
            "stomp_auth_hashes_total",
            "Password hashes verified (unknown users hash a dummy).",
            self.auth_hashes.load(Relaxed),
        );
        gauge(
            out,
            "stomp_auth_hashes_in_flight",
            "Password hashes running now (at most auth.max_concurrent_hashes).",
            self.auth_hashes_in_flight.load(Relaxed),
        );
        gauge(
            out,
            "stomp_auth_waiting",
            "CONNECTs waiting for a hash slot or their address's failure budget.",
            self.auth_waiting.load(Relaxed),
        );
        counter(
            out,
            "stomp_auth_throttled_total",
            "CONNECTs refused without a check (address failure budget spent).",
            self.auth_throttled.load(Relaxed),
        );
        counter(
            out,
            "stomp_http_timeouts_total",
            "HTTP connections closed by the header-read or idle keep-alive timeout.",
            self.http_timeouts.load(Relaxed),
        );
        let _ = writeln!(out, "# HELP stomp_errors_total ERROR frames sent, by kind.\n# TYPE stomp_errors_total counter");
        let mut errors: Vec<(&'static str, u64)> = self
            .errors
            .iter()
            .map(|e| (*e.key(), e.value().load(Relaxed)))
            .collect();
        errors.sort_unstable();
        for (kind, v) in errors {
            let _ = writeln!(out, "stomp_errors_total{{kind=\"{kind}\"}} {v}");
        }
    }
}
