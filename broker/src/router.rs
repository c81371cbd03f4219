//! Who is subscribed to what, and fan-out.
//!
//! * `/topic/...`: publish-subscribe. Exact subscriptions live in a sharded
//!   map of copy-on-write subscriber lists (publishers clone an `Arc`
//!   snapshot and release the shard before delivering); wildcard
//!   subscriptions (`*` one dot-segment, `#` zero or more, RabbitMQ style)
//!   live in a segment trie of copy-on-write lists ([`crate::wildcard`]),
//!   so a publish costs what it matches, not the number of wildcards.
//! * `/queue/...`: competing consumers, round-robin, with a buffer bounded
//!   by `queues.max_messages`/`max_bytes` while no consumer can take a
//!   message (none subscribed, or all at their prefetch or byte limit). A
//!   full buffer applies the queue's overflow policy, the same way whether
//!   or not consumers exist. At most `queues.max_queues` queues exist; a
//!   queue is removed as soon as it is empty and has no consumers. With
//!   `queues.mode = "broadcast"` a queue is instead delivered like a topic
//!   (every subscriber, nothing buffered: Spring's simple broker).
//! * `/user/<name>/<rest>`: every session of `<name>` subscribed to
//!   `/user/<rest>`; the MESSAGE says `destination:/user/<rest>`, the
//!   destination the client subscribed to (as Spring does).
//! * `/reply-queue/<opaque>`: a connection's private reply queue, created
//!   by a SEND with `reply-to:/temp-queue/<name>` (RabbitMQ style, see
//!   `session.rs`); its only subscriber is the owning connection.
//!
//! Every publish is first admitted against the broker-wide memory budget
//! ([`crate::budget`]); queue buffers are charged to it.
//!
//! Delivery is always `ConnShared::push`, which never blocks: a publisher
//! never waits for a subscriber, and no lock is held across an `.await`
//! (there are none in this module).

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use dashmap::DashMap;
use stomp_codec::{AckMode, Headers, MessageTemplate};

use crate::{
    config::{Config, QueueMode, QueueOverflow},
    metrics::{Metrics, Refusal},
    outbound::{ConnShared, DeliveryKind, Outbound},
    wildcard::PatternIndex,
};

/// A published message: the shared MESSAGE part, encoded once.
#[derive(Debug)]
pub struct Message {
    /// Where it was published.
    pub destination: Arc<str>,
    /// Its `message-id`, kept across redeliveries.
    pub message_id: Arc<str>,
    /// Shared headers and body.
    pub template: MessageTemplate,
    /// Whether a WebSocket may carry it as a text frame.
    pub text: bool,
    /// Approximate encoded size, for byte budgets.
    pub cost: usize,
    /// Cluster mode, `/queue/...`: settles the queue record with its owner
    /// (ACK, or given back) — see [`crate::cluster_queues`].
    pub ticket: Option<crate::cluster_queues::Ticket>,
}

impl Message {
    /// Builds a message. `headers` are the publisher's headers to pass
    /// through (without `destination`/`message-id`, which are set here).
    /// A user destination `/user/<name>/<rest>` is delivered as
    /// `destination:/user/<rest>`, what its subscribers subscribed to.
    pub fn new(destination: &str, message_id: &str, headers: Headers, body: Bytes) -> Message {
        let mut shared = Headers::with_capacity(headers.len() + 2);
        shared.push(
            Bytes::from_static(b"destination"),
            delivered_destination(destination),
        );
        shared.push(
            Bytes::from_static(b"message-id"),
            Bytes::copy_from_slice(message_id.as_bytes()),
        );
        let mut content_type: Option<Bytes> = None;
        for (n, v) in headers.iter() {
            if n.as_ref() == b"content-type" && content_type.is_none() {
                content_type = Some(v.clone());
            }
            shared.push(n.clone(), v.clone());
        }
        let text = is_textual(content_type.as_deref()) && std::str::from_utf8(&body).is_ok();
        let template = MessageTemplate::new(shared, body);
        let cost = template.approx_len();
        Message {
            destination: destination.into(),
            message_id: message_id.into(),
            template,
            text,
            cost,
            ticket: None,
        }
    }

    /// The same message carrying a cluster queue ticket.
    pub fn with_ticket(mut self, ticket: crate::cluster_queues::Ticket) -> Message {
        self.ticket = Some(ticket);
        self
    }
}

/// The `destination` header of a MESSAGE published to `destination`:
/// `/user/<name>/<rest>` becomes `/user/<rest>`, the destination every
/// session of `<name>` subscribed to (Spring's user destinations); others
/// are unchanged.
fn delivered_destination(destination: &str) -> Bytes {
    match destination
        .strip_prefix("/user/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((_, tail)) if !tail.is_empty() => {
            let mut d = Vec::with_capacity(6 + tail.len());
            d.extend_from_slice(b"/user/");
            d.extend_from_slice(tail.as_bytes());
            Bytes::from(d)
        }
        _ => Bytes::copy_from_slice(destination.as_bytes()),
    }
}

/// Whether a content type is text that a WebSocket text frame may carry.
/// No content type counts as text (stomp.js sends strings without one).
fn is_textual(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type else { return true };
    let Ok(ct) = std::str::from_utf8(ct) else {
        return false;
    };
    // Case-insensitive without allocating: this runs for every message.
    let mime = ct.split(';').next().unwrap_or("").trim().as_bytes();
    let starts = |p: &[u8]| mime.len() >= p.len() && mime[..p.len()].eq_ignore_ascii_case(p);
    let ends =
        |p: &[u8]| mime.len() >= p.len() && mime[mime.len() - p.len()..].eq_ignore_ascii_case(p);
    starts(b"text/")
        || [
            &b"application/json"[..],
            b"application/xml",
            b"application/javascript",
        ]
        .iter()
        .any(|m| mime.eq_ignore_ascii_case(m))
        || ends(b"+json")
        || ends(b"+xml")
}

/// One subscription as the router sees it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The subscribing connection.
    pub conn: Arc<ConnShared>,
    /// The client's subscription id.
    pub sub_id: Arc<str>,
    /// The subscription's ack mode.
    pub ack: AckMode,
    /// Queue messages delivered and not yet acknowledged (prefetch).
    pub inflight: Arc<AtomicUsize>,
    /// Router-unique key, for removal.
    pub key: u64,
}

/// What a destination string means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestKind<'a> {
    /// `/topic/<name>`.
    Topic(&'a str),
    /// `/queue/<name>`.
    Queue(&'a str),
    /// `/user/<user>/<rest>`: every session of `<user>` subscribed to
    /// `/user/<rest>` (Spring's user destinations). Holds the whole string.
    User(&'a str),
    /// `/reply-queue/<opaque>`: one connection's reply queue (see
    /// [`REPLY_QUEUE_PREFIX`]). Holds the whole string.
    ReplyQueue(&'a str),
}

/// Prefix of the routable names that `reply-to:/temp-queue/<name>` is
/// rewritten to; the rest is random and unguessable.
pub const REPLY_QUEUE_PREFIX: &str = "/reply-queue/";

/// Prefix of the `reply-to` values that ask for a private reply queue.
pub const TEMP_QUEUE_PREFIX: &str = "/temp-queue/";

/// Why a destination cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not under `/topic/` or `/queue/` (or another enabled prefix).
    #[error("unknown destination")]
    UnknownDestination,
    /// Wildcards in a SEND destination, or on a queue.
    #[error("wildcards are only allowed in /topic/ subscriptions")]
    WildcardNotAllowed,
    /// The queue is full and its policy is reject-publish.
    #[error("queue full")]
    QueueFull,
    /// Control characters, empty or `.`/`..` path segments.
    #[error("invalid destination")]
    InvalidDestination,
    /// The broker-wide memory budget is exhausted; try again later.
    #[error("broker memory budget exhausted")]
    OverBudget,
    /// Creating this queue would pass `queues.max_queues`.
    #[error("too many queues")]
    TooManyQueues,
}

impl RouteError {
    /// Whether the same publish may succeed later without change (a full
    /// queue drains, the memory budget frees up, empty queues are removed
    /// and make room under `queues.max_queues`): the Kafka bridge pauses
    /// and retries instead of dropping the record.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RouteError::QueueFull | RouteError::OverBudget | RouteError::TooManyQueues
        )
    }
}

/// Rejects destinations no client has a reason to use and that could only
/// confuse matching: control characters, `//`, `/./`, `/../`.
pub fn validate_destination(dest: &str) -> Result<(), RouteError> {
    // On the publish path for every message (twice: the session checks
    // the SEND, the router routes it), so branch-free where it can be.
    // Control characters are C0, DEL and C1 (U+0080..U+009F, which UTF-8
    // encodes as C2 80..C2 9F; in valid UTF-8 a C2 byte is always a lead).
    let b = dest.as_bytes();
    // A fold rather than `any`: no early exit, so it compiles to SIMD.
    let c0_or_del = b
        .iter()
        .fold(false, |bad, &c| bad | (c < 0x20) | (c == 0x7f));
    let c1 = || {
        b.windows(2)
            .any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1]))
    };
    if c0_or_del || b.first() != Some(&b'/') || (b.contains(&0xc2) && c1()) {
        return Err(RouteError::InvalidDestination);
    }
    let bad_segment = b[1..]
        .split(|&c| c == b'/')
        .any(|s| s.is_empty() || s == b"." || s == b"..");
    if bad_segment {
        return Err(RouteError::InvalidDestination);
    }
    Ok(())
}

/// Parses a destination into its kind.
pub fn parse_destination(dest: &str) -> Result<DestKind<'_>, RouteError> {
    validate_destination(dest)?;
    if let Some(name) = dest.strip_prefix("/topic/") {
        if !name.is_empty() {
            return Ok(DestKind::Topic(name));
        }
    } else if let Some(name) = dest.strip_prefix("/queue/") {
        if !name.is_empty() {
            return Ok(DestKind::Queue(name));
        }
    } else if let Some(rest) = dest.strip_prefix("/user/") {
        if let Some((user, tail)) = rest.split_once('/') {
            if !user.is_empty() && !tail.is_empty() {
                return Ok(DestKind::User(dest));
            }
        }
    } else if let Some(name) = dest.strip_prefix(REPLY_QUEUE_PREFIX) {
        if !name.is_empty() && !name.contains('/') {
            return Ok(DestKind::ReplyQueue(dest));
        }
    }
    Err(RouteError::UnknownDestination)
}

fn has_wildcard(name: &str) -> bool {
    // Most names published to have neither byte: one scan, no split.
    let b = name.as_bytes();
    b.iter().fold(false, |w, &c| w | (c == b'*') | (c == b'#'))
        && name.split('.').any(|s| s == "*" || s == "#")
}

/// RabbitMQ topic matching on dot-separated segments: `*` is exactly one
/// segment, `#` zero or more. Dynamic programming, O(pattern × topic), so a
/// hostile pattern like `#.#.#.#.x` cannot blow up.
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    let t: Vec<&str> = topic.split('.').collect();
    // reach[j]: the pattern prefix seen so far matches the first j segments.
    let mut reach = vec![false; t.len() + 1];
    reach[0] = true;
    let mut next = vec![false; t.len() + 1];
    for seg in pattern.split('.') {
        if seg == "#" {
            let mut any = false;
            for j in 0..=t.len() {
                any |= reach[j];
                next[j] = any;
            }
        } else {
            next[0] = false;
            for j in 1..=t.len() {
                next[j] = reach[j - 1] && (seg == "*" || seg == t[j - 1]);
            }
        }
        std::mem::swap(&mut reach, &mut next);
    }
    reach[t.len()]
}

#[derive(Debug)]
struct Queued {
    msg: Arc<Message>,
    redelivered: bool,
}

#[derive(Debug, Default)]
struct QueueState {
    consumers: Vec<Subscriber>,
    next: usize,
    buffer: VecDeque<Queued>,
    buffer_bytes: usize,
    /// Taken out of the router's map: whoever still holds the `Arc` looks
    /// the queue up again.
    removed: bool,
}

impl QueueState {
    fn is_idle(&self) -> bool {
        self.consumers.is_empty() && self.buffer.is_empty()
    }
}

/// Destination-map hasher: foldhash, seeded per process (destinations come
/// from clients, so the seed matters), several times cheaper than SipHash
/// for the short keys published to.
type Hasher = foldhash::fast::RandomState;

/// The routing table. One per broker.
#[derive(Debug)]
pub struct Router {
    topics: DashMap<Box<str>, Arc<Vec<Subscriber>>, Hasher>,
    wildcards: PatternIndex<Subscriber>,
    queues: DashMap<Box<str>, Arc<Mutex<QueueState>>, Hasher>,
    queue_count: AtomicUsize,
    max_queues: usize,
    next_key: AtomicU64,
    /// Bumped when a queue consumer subscribes or leaves (cluster mode
    /// announces its queue consumers on change).
    queue_epoch: AtomicU64,
    max_unacked: usize,
    queue_max_messages: usize,
    queue_max_bytes: usize,
    overflow: QueueOverflow,
    broadcast_queues: bool,
    metrics: Arc<Metrics>,
}

/// How a destination is routed (see [`Router::route`]).
#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    /// Exact subscribers in `topics`; `topic` is the name wildcard
    /// subscriptions are matched against (for `/topic/` names only).
    Exact { topic: Option<&'a str> },
    /// A wildcard `/topic/` pattern (subscriptions only).
    Pattern(&'a str),
    /// A queue with competing consumers.
    Queue(&'a str),
}

/// Where a subscription was registered, to remove it later.
#[derive(Debug, Clone)]
pub struct SubscriptionHandle {
    destination: Box<str>,
    key: u64,
}

impl Router {
    /// An empty router.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Router {
        Router {
            topics: DashMap::with_hasher(Hasher::default()),
            wildcards: PatternIndex::default(),
            queues: DashMap::with_hasher(Hasher::default()),
            queue_count: AtomicUsize::new(0),
            max_queues: config.queues.max_queues,
            next_key: AtomicU64::new(1),
            queue_epoch: AtomicU64::new(0),
            max_unacked: config.limits.max_unacked_per_subscription.max(1),
            queue_max_messages: config.queues.max_messages,
            queue_max_bytes: config.queues.max_bytes,
            overflow: config.queues.overflow,
            broadcast_queues: config.queues.mode == QueueMode::Broadcast,
            metrics,
        }
    }

    /// Whether `destination` is a queue with competing consumers (acked
    /// messages go back to it on NACK or disconnect), as opposed to a
    /// destination every subscriber gets everything from.
    pub fn is_competing_queue(&self, destination: &str) -> bool {
        !self.broadcast_queues && matches!(parse_destination(destination), Ok(DestKind::Queue(_)))
    }

    /// How `destination` is routed. With `queues.mode = "broadcast"` a
    /// queue is delivered like an exact topic.
    fn route<'a>(&self, destination: &'a str) -> Result<Route<'a>, RouteError> {
        match parse_destination(destination)? {
            DestKind::Topic(name) if has_wildcard(name) => Ok(Route::Pattern(name)),
            DestKind::Topic(name) => Ok(Route::Exact { topic: Some(name) }),
            DestKind::Queue(d) | DestKind::User(d) | DestKind::ReplyQueue(d) if has_wildcard(d) => {
                Err(RouteError::WildcardNotAllowed)
            }
            DestKind::Queue(name) if !self.broadcast_queues => Ok(Route::Queue(name)),
            DestKind::Queue(_) | DestKind::User(_) | DestKind::ReplyQueue(_) => {
                Ok(Route::Exact { topic: None })
            }
        }
    }

    /// Registers a subscription. For queues, buffered messages are
    /// dispatched at once.
    pub fn subscribe(
        &self,
        destination: &str,
        conn: &Arc<ConnShared>,
        sub_id: Arc<str>,
        ack: AckMode,
    ) -> Result<(SubscriptionHandle, Subscriber), RouteError> {
        let route = self.route(destination)?;
        let sub = Subscriber {
            conn: conn.clone(),
            sub_id,
            ack,
            inflight: Arc::new(AtomicUsize::new(0)),
            key: self.next_key.fetch_add(1, Relaxed),
        };
        match route {
            Route::Pattern(name) => self.wildcards.insert(name, sub.clone()),
            Route::Exact { .. } => {
                let mut entry = self.topics.entry(destination.into()).or_default();
                Arc::make_mut(entry.value_mut()).push(sub.clone());
            }
            Route::Queue(name) => {
                self.with_queue(name, false, |st| {
                    st.consumers.push(sub.clone());
                    self.pump(st);
                })?;
                self.queue_epoch.fetch_add(1, Relaxed);
            }
        }
        self.metrics.subscriptions.fetch_add(1, Relaxed);
        Ok((
            SubscriptionHandle {
                destination: destination.into(),
                key: sub.key,
            },
            sub,
        ))
    }

    /// Removes a subscription.
    pub fn unsubscribe(&self, handle: &SubscriptionHandle) {
        let removed = match self.route(&handle.destination) {
            Ok(Route::Pattern(name)) => self.wildcards.remove(name, |s| s.key == handle.key),
            Ok(Route::Exact { .. }) => {
                let name: &str = &handle.destination;
                let mut removed = false;
                if let Some(mut entry) = self.topics.get_mut(name) {
                    let list = Arc::make_mut(entry.value_mut());
                    let before = list.len();
                    list.retain(|s| s.key != handle.key);
                    removed = before != list.len();
                }
                self.topics.remove_if(name, |_, v| v.is_empty());
                removed
            }
            Ok(Route::Queue(name)) => match self.queues.get(name).map(|q| q.clone()) {
                Some(q) => {
                    let removed = {
                        let mut st = q.lock().unwrap_or_else(|e| e.into_inner());
                        let before = st.consumers.len();
                        st.consumers.retain(|s| s.key != handle.key);
                        before != st.consumers.len()
                    };
                    self.remove_if_idle(name);
                    self.queue_epoch.fetch_add(1, Relaxed);
                    removed
                }
                None => false,
            },
            Err(_) => false,
        };
        if removed {
            self.metrics.subscriptions.fetch_sub(1, Relaxed);
        }
    }

    /// Runs `f` on queue `name`, creating the queue if needed (refused
    /// past `max_queues` unless `force`). Retries when it raced with the
    /// queue's removal, so nothing is ever put into a queue no longer in
    /// the map.
    fn with_queue<R>(
        &self,
        name: &str,
        force: bool,
        mut f: impl FnMut(&mut QueueState) -> R,
    ) -> Result<R, RouteError> {
        loop {
            let q = match self.queues.get(name) {
                Some(q) => q.clone(),
                None => self.create_queue(name, force)?,
            };
            let mut st = q.lock().unwrap_or_else(|e| e.into_inner());
            if !st.removed {
                return Ok(f(&mut st));
            }
        }
    }

    fn create_queue(&self, name: &str, force: bool) -> Result<Arc<Mutex<QueueState>>, RouteError> {
        match self.queues.entry(name.into()) {
            dashmap::mapref::entry::Entry::Occupied(e) => Ok(e.get().clone()),
            dashmap::mapref::entry::Entry::Vacant(e) => {
                // Exact under concurrency: creations in other shards race.
                let counted = self.queue_count.fetch_update(Relaxed, Relaxed, |n| {
                    (force || n < self.max_queues).then_some(n + 1)
                });
                if counted.is_err() {
                    self.metrics.refused(Refusal::TooManyQueues);
                    return Err(RouteError::TooManyQueues);
                }
                self.metrics.queues.fetch_add(1, Relaxed);
                Ok(e.insert(Arc::default()).clone())
            }
        }
    }

    /// Removes queue `name` if it is empty and has no consumers.
    fn remove_if_idle(&self, name: &str) {
        let removed = self.queues.remove_if(name, |_, q| {
            let mut st = q.lock().unwrap_or_else(|e| e.into_inner());
            let idle = st.is_idle();
            st.removed |= idle;
            idle
        });
        if removed.is_some() {
            self.queue_count.fetch_sub(1, Relaxed);
            self.metrics.queues.fetch_sub(1, Relaxed);
        }
    }

    /// Queues that exist now.
    pub fn queue_count(&self) -> usize {
        self.queue_count.load(Relaxed)
    }

    /// Publishes a message to its destination. Returns how many
    /// subscriptions it was handed to (for a queue: 1, or 0 if buffered).
    pub fn publish(&self, msg: Arc<Message>) -> Result<usize, RouteError> {
        let dest = msg.destination.clone();
        let route = self.route(&dest)?;
        if !self.metrics.memory.admits(msg.cost) {
            self.metrics.refused(Refusal::MemoryBudget);
            return Err(RouteError::OverBudget);
        }
        match route {
            Route::Pattern(_) => Err(RouteError::WildcardNotAllowed),
            Route::Exact { topic } => {
                self.metrics.messages_published.fetch_add(1, Relaxed);
                Ok(self.publish_topic(topic, &msg))
            }
            Route::Queue(name) => {
                let mut left_idle = false;
                let delivered = self.with_queue(name, false, |st| {
                    if self.try_consumers(st, &msg, false, None) {
                        self.metrics.messages_published.fetch_add(1, Relaxed);
                        return Ok(true);
                    }
                    // No consumer can take it now (none, or all at their
                    // prefetch or byte limit): buffer, under the policy.
                    if self.buffer_full(st, &msg) {
                        match self.overflow {
                            QueueOverflow::RejectPublish => {
                                self.metrics.refused(Refusal::QueueFull);
                                left_idle = st.is_idle();
                                return Err(RouteError::QueueFull);
                            }
                            QueueOverflow::DropNewest => {
                                self.metrics.messages_published.fetch_add(1, Relaxed);
                                self.metrics.messages_dropped.fetch_add(1, Relaxed);
                                left_idle = st.is_idle();
                                return Ok(false);
                            }
                            QueueOverflow::DropOldest => {}
                        }
                    }
                    self.metrics.messages_published.fetch_add(1, Relaxed);
                    self.buffer(st, msg.clone(), false, true);
                    Ok(false)
                })?;
                if left_idle {
                    // Refused or dropped at a queue this publish may have
                    // created: do not leave it behind empty.
                    self.remove_if_idle(name);
                }
                Ok(usize::from(delivered?))
            }
        }
    }

    /// Fans out to exact subscribers of the message's destination and, for
    /// `/topic/` names, to matching wildcard subscriptions.
    fn publish_topic(&self, name: Option<&str>, msg: &Arc<Message>) -> usize {
        let mut delivered = 0;
        let exact = self
            .topics
            .get(&*msg.destination)
            .map(|e| e.value().clone());
        if let Some(subs) = exact {
            delivered += self.fan_out(&subs, msg);
        }
        if let Some(name) = name.filter(|_| !self.wildcards.is_empty()) {
            for subs in self.wildcards.matches(name) {
                delivered += self.fan_out(&subs, msg);
            }
        }
        self.metrics
            .messages_queued
            .fetch_add(delivered as u64, Relaxed);
        delivered
    }

    /// Delivers to every subscriber in `subs`, charging the memory budget
    /// once for all of them (one atomic operation per fan-out rather than
    /// per delivery) and giving back what was not delivered.
    fn fan_out(&self, subs: &[Subscriber], msg: &Arc<Message>) -> usize {
        let all = subs.len() * msg.cost;
        self.metrics.memory.charge(all);
        let mut delivered = 0;
        for s in subs {
            let out = Outbound::Message {
                msg: msg.clone(),
                sub: s.sub_id.clone(),
                kind: DeliveryKind::Live,
            };
            delivered += usize::from(s.conn.push_precharged(out, msg.cost));
        }
        self.metrics.memory.release(all - delivered * msg.cost);
        delivered
    }

    fn offer_to(&self, s: &Subscriber, msg: &Arc<Message>, redelivered: bool) -> bool {
        s.conn.push(
            Outbound::Message {
                msg: msg.clone(),
                sub: s.sub_id.clone(),
                kind: if redelivered {
                    DeliveryKind::Redelivered
                } else {
                    DeliveryKind::Live
                },
            },
            msg.cost,
        )
    }

    fn buffer_full(&self, st: &QueueState, msg: &Message) -> bool {
        st.buffer.len() >= self.queue_max_messages
            || st.buffer_bytes + msg.cost > self.queue_max_bytes
    }

    /// Appends `msg` to the queue's buffer, charged to the memory budget.
    /// With `bounded` and the drop-oldest policy, the oldest messages make
    /// room first (counted as dropped). Messages put back after NACK or a
    /// consumer leaving are not bounded: they were accepted before and
    /// their bytes were already accounted to the consumer.
    fn buffer(&self, st: &mut QueueState, msg: Arc<Message>, redelivered: bool, bounded: bool) {
        if bounded && self.overflow == QueueOverflow::DropOldest {
            while !st.buffer.is_empty() && self.buffer_full(st, &msg) {
                if let Some(old) = st.buffer.pop_front() {
                    st.buffer_bytes -= old.msg.cost;
                    self.metrics.memory.release(old.msg.cost);
                }
                self.metrics.messages_dropped.fetch_add(1, Relaxed);
            }
        }
        st.buffer_bytes += msg.cost;
        self.metrics.memory.charge(msg.cost);
        st.buffer.push_back(Queued { msg, redelivered });
    }

    fn try_consumers(
        &self,
        st: &mut QueueState,
        msg: &Arc<Message>,
        redelivered: bool,
        skip: Option<u64>,
    ) -> bool {
        let n = st.consumers.len();
        for i in 0..n {
            let idx = (st.next + i) % n;
            let c = &st.consumers[idx];
            if Some(c.key) == skip {
                continue;
            }
            let prefetch = c.ack != AckMode::Auto;
            // A client-ack consumer keeps what it has not acknowledged in
            // its byte budget: skip it when full (the message buffers here)
            // rather than condemning it as a slow consumer.
            if prefetch
                && (c.inflight.load(Relaxed) >= self.max_unacked || !c.conn.has_room(msg.cost))
            {
                continue;
            }
            if self.offer_to(c, msg, redelivered) {
                if prefetch {
                    c.inflight.fetch_add(1, Relaxed);
                }
                st.next = (idx + 1) % n;
                self.metrics.messages_queued.fetch_add(1, Relaxed);
                return true;
            }
        }
        false
    }

    /// Dispatches buffered messages while some consumer can take them.
    fn pump(&self, st: &mut QueueState) {
        while let Some(front) = st.buffer.pop_front() {
            if self.try_consumers(st, &front.msg, front.redelivered, None) {
                st.buffer_bytes -= front.msg.cost;
                self.metrics.memory.release(front.msg.cost);
            } else {
                st.buffer.push_front(front);
                break;
            }
        }
    }

    /// A consumer acknowledged (or gave up) queue messages: dispatch more.
    pub fn queue_ready(&self, destination: &str) {
        if let Ok(Route::Queue(name)) = self.route(destination) {
            if let Some(q) = self.queues.get(name).map(|q| q.clone()) {
                let mut st = q.lock().unwrap_or_else(|e| e.into_inner());
                self.pump(&mut st);
            }
        }
    }

    /// Puts queue messages back (NACK, or unacknowledged at disconnect),
    /// marked redelivered. `skip` is the subscription that gave them up: it
    /// gets them again only if no other consumer can take them (they wait
    /// in the buffer until [`Router::queue_ready`]).
    pub fn requeue(&self, msgs: Vec<Arc<Message>>, skip: Option<u64>) {
        for msg in msgs {
            if let Some(t) = &msg.ticket {
                // Cluster queue message: its owner redelivers it.
                t.nack();
                continue;
            }
            if let Ok(Route::Queue(name)) = self.route(&msg.destination) {
                self.metrics.messages_redelivered.fetch_add(1, Relaxed);
                // Creating the queue again past `max_queues` is allowed
                // here: the message was accepted before.
                let requeued = self.with_queue(name, true, |st| {
                    // Drop consumers whose connection has gone, so a message
                    // is not handed straight back to the one that just left.
                    st.consumers.retain(|c| !c.conn.is_closed());
                    if !self.try_consumers(st, &msg, true, skip) {
                        self.buffer(st, msg.clone(), true, false);
                    }
                });
                debug_assert!(requeued.is_ok(), "a forced queue is always created");
            }
        }
    }

    /// Cluster mode: hands a queue message to one local consumer that can
    /// take it now (prefetch and byte budget allowing), never buffering.
    /// False when none can (or the destination is no competing queue).
    pub fn offer_queue(&self, msg: &Arc<Message>, redelivered: bool) -> bool {
        let Ok(Route::Queue(name)) = self.route(&msg.destination) else {
            return false;
        };
        let Some(q) = self.queues.get(name).map(|q| q.clone()) else {
            return false;
        };
        let mut st = q.lock().unwrap_or_else(|e| e.into_inner());
        st.consumers.retain(|c| !c.conn.is_closed());
        self.try_consumers(&mut st, msg, redelivered, None)
    }

    /// Changes whenever a queue consumer subscribes or leaves.
    pub fn queue_epoch(&self) -> u64 {
        self.queue_epoch.load(Relaxed)
    }

    /// Queues with live consumers here: (name without `/queue/`, consumers).
    /// At most `max` of them.
    pub fn queue_consumers(&self, max: usize) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for q in self.queues.iter() {
            if out.len() >= max {
                break;
            }
            let n = {
                let st = q.value().lock().unwrap_or_else(|e| e.into_inner());
                st.consumers.iter().filter(|c| !c.conn.is_closed()).count()
            };
            if n > 0 {
                out.push((q.key().to_string(), n));
            }
        }
        out
    }

    /// Whether anyone subscribes to exactly `destination`.
    pub fn has_subscribers(&self, destination: &str) -> bool {
        self.topics.get(destination).is_some_and(|s| !s.is_empty())
    }

    /// Calls `f(destination, subscriptions, queued)` for every destination:
    /// exact topics, user destinations, queues, and wildcard patterns as
    /// themselves (`/topic/order.*`). Reply queue names are capabilities
    /// (whoever has one may send to it): they are summed under one name,
    /// `/reply-queue/*`, never listed. Allocates nothing per destination;
    /// each `DashMap` shard is read-locked only while it is walked (which
    /// holds up subscribes to it, never publishes).
    pub fn for_each_destination(&self, mut f: impl FnMut(&str, usize, usize)) {
        let mut reply_subs = 0;
        for e in self.topics.iter() {
            if e.key().starts_with(REPLY_QUEUE_PREFIX) {
                reply_subs += e.value().len();
            } else {
                f(e.key(), e.value().len(), 0);
            }
        }
        if reply_subs > 0 {
            f(&format!("{REPLY_QUEUE_PREFIX}*"), reply_subs, 0);
        }
        let mut name = String::new();
        for q in self.queues.iter() {
            let (consumers, depth) = {
                let st = q.value().lock().unwrap_or_else(|e| e.into_inner());
                (st.consumers.len(), st.buffer.len())
            };
            name.clear();
            name.push_str("/queue/");
            name.push_str(q.key());
            f(&name, consumers, depth);
        }
        self.wildcards.for_each_pattern(|p, c| {
            name.clear();
            name.push_str("/topic/");
            name.push_str(p);
            f(&name, c, 0);
        });
    }

    /// The `n` destinations with the most subscriptions (see
    /// [`Router::for_each_destination`]), most first, then most queued,
    /// then by name.
    pub fn top_destinations(&self, n: usize) -> Vec<(String, usize, usize)> {
        let mut all = Vec::new();
        self.for_each_destination(|d, subs, queued| all.push((d.to_owned(), subs, queued)));
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Messages waiting in a queue (for tests).
    pub fn queue_depth(&self, destination: &str) -> usize {
        match self.route(destination) {
            Ok(Route::Queue(name)) => self
                .queues
                .get(name)
                .map(|q| q.lock().unwrap_or_else(|e| e.into_inner()).buffer.len())
                .unwrap_or(0),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_star_or_hash_segments_are_wildcards() {
        for w in ["*", "#", "a.*", "#.b", "a.*.c", "a.b.#"] {
            assert!(has_wildcard(w), "{w}");
        }
        for n in ["a", "a.b", "a*.b", "a.#b", "a.b*c", "*a", "a#", ""] {
            assert!(!has_wildcard(n), "{n}");
        }
    }

    #[test]
    fn wildcards_match_rabbitmq_style() {
        assert!(pattern_matches("order.*", "order.1"));
        assert!(!pattern_matches("order.*", "order.1.2"));
        assert!(!pattern_matches("order.*", "order"));
        assert!(pattern_matches("order.#", "order"));
        assert!(pattern_matches("order.#", "order.1.2"));
        assert!(pattern_matches("#", "a.b"));
        assert!(pattern_matches("*.b.#", "a.b"));
        assert!(!pattern_matches("*.b.#", "a.c.b"));
        assert!(pattern_matches("a.#.z", "a.z"));
        assert!(pattern_matches("a.#.z", "a.b.c.z"));
    }

    #[test]
    fn destinations_parse() {
        assert_eq!(parse_destination("/topic/a"), Ok(DestKind::Topic("a")));
        assert_eq!(parse_destination("/queue/q"), Ok(DestKind::Queue("q")));
        assert_eq!(
            parse_destination("/topic/"),
            Err(RouteError::InvalidDestination)
        );
        assert_eq!(
            parse_destination("/user/a/../b/queue"),
            Err(RouteError::InvalidDestination)
        );
        assert_eq!(
            parse_destination("/user/bob/queue/x"),
            Ok(DestKind::User("/user/bob/queue/x"))
        );
        assert_eq!(
            parse_destination("/exchange/x"),
            Err(RouteError::UnknownDestination)
        );
    }

    #[test]
    fn control_characters_and_dot_segments_are_invalid() {
        for bad in [
            "topic/a",
            "/topic/a\tb",
            "/topic/a\u{7f}",
            "/topic/a\u{85}b", // NEL, a C1 control (UTF-8 C2 85)
            "/topic/a\u{9f}",
            "/topic//a",
            "/topic/./a",
            "/topic/a/..",
            "/",
        ] {
            assert_eq!(
                validate_destination(bad),
                Err(RouteError::InvalidDestination),
                "{bad:?}"
            );
        }
        for good in [
            "/topic/a",
            "/topic/caf\u{e9}.\u{a0}x",
            "/topic/\u{100}",
            "/queue/a.b",
        ] {
            assert_eq!(validate_destination(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn only_a_full_broker_is_retryable() {
        assert!(RouteError::QueueFull.is_retryable());
        assert!(RouteError::OverBudget.is_retryable());
        assert!(RouteError::TooManyQueues.is_retryable());
        assert!(!RouteError::WildcardNotAllowed.is_retryable());
        assert!(!RouteError::UnknownDestination.is_retryable());
        assert!(!RouteError::InvalidDestination.is_retryable());
        assert_eq!(
            RouteError::OverBudget.to_string(),
            "broker memory budget exhausted"
        );
    }

    fn msg(dest: &str) -> Arc<Message> {
        Arc::new(Message::new(
            dest,
            "1",
            Headers::new(),
            Bytes::from_static(b"x"),
        ))
    }

    #[test]
    fn queues_are_capped_removed_when_idle_and_charged() {
        let mut config = Config::default();
        config.queues.max_queues = 2;
        let metrics = Arc::new(Metrics::default());
        let router = Router::new(&config, metrics.clone());
        router.publish(msg("/queue/a")).expect("a");
        router.publish(msg("/queue/b")).expect("b");
        assert_eq!(
            router.publish(msg("/queue/c")),
            Err(RouteError::TooManyQueues)
        );
        assert_eq!(router.queue_count(), 2);
        let cost = msg("/queue/a").cost;
        assert_eq!(metrics.memory.used(), 2 * cost);
        let (conn, mut rx) = ConnShared::new(
            1,
            1 << 20,
            crate::config::SlowConsumerPolicy::Disconnect,
            metrics.clone(),
        );
        let (handle, _) = router
            .subscribe("/queue/a", &conn, Arc::from("s"), AckMode::Auto)
            .expect("subscribe");
        assert!(rx.try_recv().is_ok(), "buffered message dispatched");
        // Out of the queue, into the connection: still charged once.
        assert_eq!(metrics.memory.used(), 2 * cost);
        conn.written(cost);
        router.unsubscribe(&handle);
        assert_eq!(
            router.queue_count(),
            1,
            "empty queue without consumers removed"
        );
        // A message given back (disconnect) recreates it even at the cap.
        router.publish(msg("/queue/c")).expect("room again");
        router.requeue(vec![msg("/queue/a")], None);
        assert_eq!(router.queue_count(), 3);
        assert_eq!(router.queue_depth("/queue/a"), 1);
    }

    #[test]
    fn user_messages_say_the_subscribed_destination() {
        let header = |d: &str| {
            let m = Message::new(d, "1", Headers::new(), Bytes::new());
            let mut out = bytes::BytesMut::new();
            m.template
                .encode_for(stomp_codec::Version::V1_2, &[], &mut out);
            (
                m.destination.to_string(),
                String::from_utf8_lossy(&out).into_owned(),
            )
        };
        let (routed, wire) = header("/user/alice/queue/x");
        assert_eq!(routed, "/user/alice/queue/x", "routing keeps the user");
        assert!(wire.contains("destination:/user/queue/x\n"), "{wire}");
        assert!(!wire.contains("alice"), "{wire}");
        let (_, wire) = header("/topic/a");
        assert!(wire.contains("destination:/topic/a\n"), "{wire}");
    }

    #[test]
    fn reply_queues_parse_and_are_never_listed_by_name() {
        assert_eq!(
            parse_destination("/reply-queue/ab12"),
            Ok(DestKind::ReplyQueue("/reply-queue/ab12"))
        );
        assert_eq!(
            parse_destination("/reply-queue/a/b"),
            Err(RouteError::UnknownDestination)
        );
        assert_eq!(
            parse_destination("/temp-queue/x"),
            Err(RouteError::UnknownDestination)
        );
        let metrics = Arc::new(Metrics::default());
        let router = Router::new(&Config::default(), metrics.clone());
        let (conn, _rx) = ConnShared::new(
            1,
            1 << 20,
            crate::config::SlowConsumerPolicy::Disconnect,
            metrics,
        );
        for d in ["/reply-queue/secret1", "/reply-queue/secret2"] {
            router
                .subscribe(d, &conn, Arc::from("/temp-queue/r"), AckMode::Auto)
                .expect("subscribe");
        }
        let top = router.top_destinations(10);
        assert_eq!(top, vec![("/reply-queue/*".to_owned(), 2, 0)]);
    }

    #[test]
    fn broadcast_mode_routes_queues_like_topics() {
        let mut config = Config::default();
        config.queues.mode = QueueMode::Broadcast;
        let metrics = Arc::new(Metrics::default());
        let router = Router::new(&config, metrics.clone());
        assert!(!router.is_competing_queue("/queue/a"));
        assert_eq!(
            router.publish(msg("/queue/a")),
            Ok(0),
            "nobody listens: dropped"
        );
        assert_eq!(router.queue_count(), 0);
        assert_eq!(
            router.publish(msg("/queue/a.*")),
            Err(RouteError::WildcardNotAllowed)
        );
        let competing = Router::new(&Config::default(), metrics);
        assert!(competing.is_competing_queue("/queue/a"));
        assert!(!competing.is_competing_queue("/topic/a"));
    }

    #[test]
    fn textual_content_types() {
        assert!(is_textual(None));
        assert!(is_textual(Some(b"text/plain;charset=utf-8")));
        assert!(is_textual(Some(b"application/json")));
        assert!(is_textual(Some(b"application/vnd.order+json")));
        assert!(!is_textual(Some(b"application/octet-stream")));
        assert!(is_textual(Some(b"Text/HTML; charset=utf-8")));
        assert!(is_textual(Some(b"APPLICATION/JSON")));
        assert!(!is_textual(Some(b"application/jsonx")));
    }
}
