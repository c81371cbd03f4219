//! Broker-wide counters, rendered as Prometheus text on `GET /metrics`.
//!
//! The counters bumped for every frame and every delivery are
//! [`ShardedCounter`]s: one cache-line-padded cell per shard, each thread
//! adding to its own shard and readers summing them, so runtime workers on
//! many cores do not all write one cache line. Everything else is a plain
//! atomic. [`PromText`] is the one Prometheus text renderer (also used by
//! the cluster's metrics).

use std::{
    fmt::Write,
    sync::{
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering, Ordering::Relaxed},
        OnceLock,
    },
};

use dashmap::DashMap;
use stomp_codec::Command;

use crate::budget::MemoryBudget;

const COMMANDS: [Command; 15] = Command::ALL;

/// One shard's cell, alone on its cache line (128 bytes: x86 prefetches
/// lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Cell(AtomicU64);

/// Shards per counter: the CPUs available, rounded up to a power of two,
/// at most 64 (and at least 1).
fn shard_count() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .next_power_of_two()
            .min(64)
    })
}

/// This thread's shard number (threads are numbered in the order they
/// first count; runtime workers live for the whole run).
fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed);
    }
    SHARD.with(|s| *s)
}

/// A monotonic counter split over per-thread shards: adding touches only
/// the calling thread's cache line, reading sums every shard (reads are
/// rare: `/metrics`, the status sampler). Its methods mirror
/// [`AtomicU64`]'s so call sites read the same.
#[derive(Debug)]
pub struct ShardedCounter {
    cells: Box<[Cell]>,
}

impl Default for ShardedCounter {
    fn default() -> Self {
        ShardedCounter {
            cells: (0..shard_count()).map(|_| Cell::default()).collect(),
        }
    }
}

impl ShardedCounter {
    /// Adds `n` (the ordering is always relaxed: counters order nothing).
    #[inline]
    pub fn fetch_add(&self, n: u64, _order: Ordering) {
        let cells = &self.cells;
        // `cells.len()` is a power of two.
        cells[thread_shard() & (cells.len() - 1)]
            .0
            .fetch_add(n, Relaxed);
    }

    /// The sum over all shards.
    pub fn load(&self, _order: Ordering) -> u64 {
        self.cells
            .iter()
            .fold(0u64, |a, c| a.wrapping_add(c.0.load(Relaxed)))
    }
}

/// Prometheus text exposition (format 0.0.4): `# HELP`/`# TYPE` once per
/// metric, then its samples. Label values are escaped.
#[derive(Debug)]
pub struct PromText<'a> {
    out: &'a mut String,
}

/// A metric's type.
#[derive(Debug, Clone, Copy)]
pub enum PromType {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// `_sum` and `_count` samples.
    Summary,
    /// Cumulative `_bucket{le=...}` samples, `_sum` and `_count`.
    Histogram,
}

impl<'a> PromText<'a> {
    /// Appends to `out`.
    pub fn new(out: &'a mut String) -> Self {
        PromText { out }
    }

    /// The `# HELP` and `# TYPE` lines of `name`.
    pub fn header(&mut self, name: &str, kind: PromType, help: &str) -> &mut Self {
        let kind = match kind {
            PromType::Counter => "counter",
            PromType::Gauge => "gauge",
            PromType::Summary => "summary",
            PromType::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample; `label` is an optional `(name, value)`.
    pub fn sample(
        &mut self,
        name: &str,
        label: Option<(&str, &str)>,
        v: impl std::fmt::Display,
    ) -> &mut Self {
        match label {
            Some(l) => self.sample_labels(name, &[l], v),
            None => self.sample_labels(name, &[], v),
        }
    }

    /// One sample with any number of labels (`name{k1="v1",k2="v2"} v`;
    /// none renders `name v`).
    pub fn sample_labels(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        v: impl std::fmt::Display,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {v}");
        self
    }

    /// The samples of one histogram series: cumulative `_bucket`s (with
    /// `labels` plus `le`), `_sum` (seconds) and `_count`. The `# HELP`/`# TYPE`
    /// lines are written once per family with [`PromText::header`].
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        h: &LatencyHistogram,
    ) -> &mut Self {
        let snap = h.snapshot();
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, le) in LATENCY_BUCKETS_LE.iter().enumerate() {
            cumulative += snap.buckets[i];
            with_le.push(("le", le));
            self.sample_labels(&bucket, &with_le, cumulative);
            with_le.pop();
        }
        with_le.push(("le", "+Inf"));
        self.sample_labels(&bucket, &with_le, snap.count);
        self.sample_labels(&format!("{name}_sum"), labels, snap.sum_ns as f64 / 1e9)
            .sample_labels(&format!("{name}_count"), labels, snap.count)
    }

    /// A counter with one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, v: u64) -> &mut Self {
        self.header(name, PromType::Counter, help)
            .sample(name, None, v)
    }

    /// A gauge with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, v: i64) -> &mut Self {
        self.header(name, PromType::Gauge, help)
            .sample(name, None, v)
    }
}

/// Escapes a Prometheus label value (backslash, quote, newline).
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Upper bounds of [`LatencyHistogram`]'s buckets, in seconds (fine around
/// the 1–10 ms a relayed message should take, coarse beyond).
pub const LATENCY_BUCKETS_S: [f64; 17] = [
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5,
];
/// [`LATENCY_BUCKETS_S`] as Prometheus `le` label values.
const LATENCY_BUCKETS_LE: [&str; 17] = [
    "0.0005", "0.001", "0.002", "0.003", "0.004", "0.005", "0.0075", "0.01", "0.015", "0.02",
    "0.03", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
];

/// A latency histogram with fixed buckets ([`LATENCY_BUCKETS_S`], plus
/// `+Inf`), lock-free: observing is three relaxed atomic adds. Rendered
/// as a Prometheus histogram by [`PromText::histogram`].
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Non-cumulative counts; the last one is above the largest bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Non-cumulative counts per bucket, the last above the largest bound.
    pub buckets: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Sum of the observations, ns.
    pub sum_ns: u64,
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|&le| s <= le)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            count: self.count.load(Relaxed),
            sum_ns: self.sum_ns.load(Relaxed),
        }
    }
}

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
    /// Retained messages owed to a subscription that can no longer be
    /// replayed (the connection closed before the deferred replay).
    pub replay_skipped: AtomicU64,
    /// Retained messages waiting in replay cursors, all sessions.
    pub replay_pending: AtomicI64,
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
    frames_in: [ShardedCounter; 15],
    frames_out: [ShardedCounter; 15],
    /// Messages published (SEND, bridge, in-process).
    pub messages_published: ShardedCounter,
    /// MESSAGE frames queued to subscribers' connections (counted by the
    /// router when a connection accepts one; not yet written).
    pub messages_queued: ShardedCounter,
    /// MESSAGE frames written to clients' sockets (counted by the
    /// connection task once per successful write, see
    /// [`crate::output::Batch::messages`]).
    pub messages_delivered: ShardedCounter,
    /// Messages dropped (slow-consumer drop policy, queue overflow, no route).
    pub messages_dropped: AtomicU64,
    /// Queue messages redelivered after NACK or disconnect.
    pub messages_redelivered: AtomicU64,
    /// Connections closed by the slow-consumer policy.
    pub slow_consumer_disconnects: AtomicU64,
    /// Times the runtime watchdog woke more than
    /// [`crate::watchdog::STALL`] late: some task ran that long without
    /// yielding, or the process got no CPU (see `watchdog.rs`).
    pub runtime_stalls: AtomicU64,
    /// Retained messages replayed to new subscriptions.
    pub messages_replayed: AtomicU64,
    /// Destinations with retained messages.
    pub retained_destinations: AtomicI64,
    /// Retained destinations evicted because of `max_destinations`.
    pub retained_evicted: AtomicU64,
    /// Heart-beat timeouts.
    pub heartbeat_timeouts: AtomicU64,
    /// Bytes read from clients.
    pub bytes_in: ShardedCounter,
    /// Bytes written to clients.
    pub bytes_out: ShardedCounter,
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
        use PromType::Counter;
        let mut p = PromText::new(out);
        p.gauge(
            "stomp_connections",
            "Open connections.",
            self.connections.load(Relaxed),
        )
        .counter(
            "stomp_connections_total",
            "Connections accepted.",
            self.connections_total.load(Relaxed),
        )
        .header(
            "stomp_connections_rejected_total",
            Counter,
            "Connections and HTTP sockets refused at admission, by reason (the limit reached).",
        );
        for r in ConnRefusal::ALL {
            p.sample(
                "stomp_connections_rejected_total",
                Some(("reason", r.as_str())),
                self.connections_refused_of(r),
            );
        }
        p.gauge(
            "stomp_sockjs_sessions",
            "Open SockJS sessions.",
            self.sockjs_sessions.load(Relaxed),
        )
        .header(
            "stomp_sockjs_sessions_total",
            Counter,
            "SockJS sessions opened, by transport.",
        );
        for t in SOCKJS_TRANSPORTS {
            p.sample(
                "stomp_sockjs_sessions_total",
                Some(("transport", t)),
                self.sockjs_opened_of(t),
            );
        }
        p.gauge(
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
            p.header(name, Counter, help);
            for (i, c) in COMMANDS.iter().enumerate() {
                p.sample(name, Some(("command", c.as_str())), arr[i].load(Relaxed));
            }
        }
        p.counter(
            "stomp_messages_published_total",
            "Messages published.",
            self.messages_published.load(Relaxed),
        )
        .counter(
            "stomp_messages_queued_total",
            "MESSAGE frames queued to subscribers' connections, not yet written.",
            self.messages_queued.load(Relaxed),
        )
        .counter(
            "stomp_messages_delivered_total",
            "MESSAGE frames written to subscribers' sockets.",
            self.messages_delivered.load(Relaxed),
        )
        .counter(
            "stomp_messages_dropped_total",
            "Messages dropped (slow consumer drop policy, queue overflow).",
            self.messages_dropped.load(Relaxed),
        )
        .counter(
            "stomp_messages_redelivered_total",
            "Queue messages redelivered.",
            self.messages_redelivered.load(Relaxed),
        )
        .counter(
            "stomp_messages_replayed_total",
            "Retained messages replayed to new subscriptions.",
            self.messages_replayed.load(Relaxed),
        )
        .gauge(
            "stomp_retained_destinations",
            "Destinations with retained messages.",
            self.retained_destinations.load(Relaxed),
        )
        .counter(
            "stomp_retained_evicted_total",
            "Retained destinations evicted at the cap.",
            self.retained_evicted.load(Relaxed),
        )
        .gauge(
            "stomp_retained_bytes",
            "Bytes held by the retained store.",
            self.retained_bytes.load(Relaxed),
        )
        .counter(
            "stomp_replay_skipped_total",
            "Retained messages owed to a subscription that could no longer be replayed.",
            self.replay_skipped.load(Relaxed),
        )
        .gauge(
            "stomp_replay_pending",
            "Retained messages waiting in replay cursors, paced by subscribers' byte budgets.",
            self.replay_pending.load(Relaxed),
        )
        .gauge(
            "stomp_queues",
            "Queues (/queue/...) that exist.",
            self.queues.load(Relaxed),
        )
        .gauge(
            "stomp_memory_budget_bytes",
            "The broker-wide memory budget (limits.memory_budget_bytes).",
            i64::try_from(self.memory.limit()).unwrap_or(i64::MAX),
        )
        .gauge(
            "stomp_memory_used_bytes",
            "Bytes charged to the memory budget: outbound, unacked, queues, transactions, retained.",
            i64::try_from(self.memory.used()).unwrap_or(i64::MAX),
        )
        .header(
            "stomp_publish_refused_total",
            Counter,
            "Publishes refused, by reason.",
        );
        for r in Refusal::ALL {
            p.sample(
                "stomp_publish_refused_total",
                Some(("reason", r.as_str())),
                self.refused_of(r),
            );
        }
        p.counter(
            "stomp_slow_consumer_disconnects_total",
            "Connections closed as slow consumers.",
            self.slow_consumer_disconnects.load(Relaxed),
        )
        .counter(
            "stomp_runtime_stalls_total",
            "Times a runtime worker was busy (or without CPU) for over 5 ms at a stretch.",
            self.runtime_stalls.load(Relaxed),
        )
        .counter(
            "stomp_heartbeat_timeouts_total",
            "Connections closed for missing heart-beats.",
            self.heartbeat_timeouts.load(Relaxed),
        )
        .counter(
            "stomp_bytes_in_total",
            "Bytes read from clients.",
            self.bytes_in.load(Relaxed),
        )
        .counter(
            "stomp_bytes_out_total",
            "Bytes written to clients.",
            self.bytes_out.load(Relaxed),
        )
        .counter(
            "stomp_auth_hashes_total",
            "Password hashes verified (unknown users hash a dummy).",
            self.auth_hashes.load(Relaxed),
        )
        .gauge(
            "stomp_auth_hashes_in_flight",
            "Password hashes running now (at most auth.max_concurrent_hashes).",
            self.auth_hashes_in_flight.load(Relaxed),
        )
        .gauge(
            "stomp_auth_waiting",
            "CONNECTs waiting for a hash slot or their address's failure budget.",
            self.auth_waiting.load(Relaxed),
        )
        .counter(
            "stomp_auth_throttled_total",
            "CONNECTs refused without a check (address failure budget spent).",
            self.auth_throttled.load(Relaxed),
        )
        .counter(
            "stomp_http_timeouts_total",
            "HTTP connections closed by the header-read or idle keep-alive timeout.",
            self.http_timeouts.load(Relaxed),
        )
        .header("stomp_errors_total", Counter, "ERROR frames sent, by kind.");
        let mut errors: Vec<(&'static str, u64)> = self
            .errors
            .iter()
            .map(|e| (*e.key(), e.value().load(Relaxed)))
            .collect();
        errors.sort_unstable();
        for (kind, v) in errors {
            p.sample("stomp_errors_total", Some(("kind", kind)), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_counter_sums_every_thread() {
        let c = ShardedCounter::default();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.fetch_add(2, Relaxed);
                    }
                });
            }
        });
        c.fetch_add(5, Relaxed);
        assert_eq!(c.load(Relaxed), 16_005);
    }

    #[test]
    fn hot_counters_render_under_their_names() {
        let m = Metrics::default();
        m.messages_delivered.fetch_add(3, Relaxed);
        m.messages_queued.fetch_add(5, Relaxed);
        m.frame_in(Command::Send);
        m.frames_out(Command::Message, 4);
        m.bytes_out.fetch_add(7, Relaxed);
        m.error("bad\"kind");
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "# HELP stomp_messages_queued_total MESSAGE frames queued to subscribers' connections, not yet written.\n# TYPE stomp_messages_queued_total counter\nstomp_messages_queued_total 5\n",
            "# HELP stomp_messages_delivered_total MESSAGE frames written to subscribers' sockets.\n# TYPE stomp_messages_delivered_total counter\nstomp_messages_delivered_total 3\n",
            "stomp_frames_in_total{command=\"SEND\"} 1\n",
            "stomp_frames_out_total{command=\"MESSAGE\"} 4\n",
            "stomp_bytes_out_total 7\n",
            "stomp_errors_total{kind=\"bad\\\"kind\"} 1\n",
        ] {
            assert!(out.contains(line), "{line:?} missing from:\n{out}");
        }
    }

    #[test]
    fn samples_with_several_labels_escape_each_value() {
        let mut out = String::new();
        PromText::new(&mut out)
            .header("m_total", PromType::Counter, "Help.")
            .sample_labels("m_total", &[("a", "x\"y"), ("b", "z\\")], 2)
            .sample_labels("m_total", &[], 3)
            .header("s", PromType::Summary, "Sum.")
            .sample("s_sum", None, 0.5)
            .sample_labels("s_count", &[("only", "one")], 1);
        assert_eq!(
            out,
            "# HELP m_total Help.\n# TYPE m_total counter\nm_total{a=\"x\\\"y\",b=\"z\\\\\"} 2\nm_total 3\n\
             # HELP s Sum.\n# TYPE s summary\ns_sum 0.5\ns_count{only=\"one\"} 1\n"
        );
    }

    #[test]
    fn latency_histogram_renders_cumulative_buckets_sum_and_count() {
        let h = LatencyHistogram::default();
        h.observe(std::time::Duration::from_micros(300));
        h.observe(std::time::Duration::from_millis(3));
        h.observe(std::time::Duration::from_millis(40));
        h.observe(std::time::Duration::from_secs(10));
        let mut out = String::new();
        PromText::new(&mut out)
            .header("lat_seconds", PromType::Histogram, "Latency.")
            .histogram("lat_seconds", &[("stage", "consume")], &h);
        assert!(out.contains("# TYPE lat_seconds histogram\n"), "{out}");
        for line in [
            "lat_seconds_bucket{stage=\"consume\",le=\"0.0005\"} 1\n",
            "lat_seconds_bucket{stage=\"consume\",le=\"0.002\"} 1\n",
            "lat_seconds_bucket{stage=\"consume\",le=\"0.003\"} 2\n",
            "lat_seconds_bucket{stage=\"consume\",le=\"0.05\"} 3\n",
            "lat_seconds_bucket{stage=\"consume\",le=\"2.5\"} 3\n",
            "lat_seconds_bucket{stage=\"consume\",le=\"+Inf\"} 4\n",
            "lat_seconds_sum{stage=\"consume\"} 10.0433\n",
            "lat_seconds_count{stage=\"consume\"} 4\n",
        ] {
            assert!(out.contains(line), "{line} not in {out}");
        }
    }
}
