//! Retained messages for late subscribers.
//!
//! An order result may reach the broker before the browser that waits for it
//! has subscribed. Messages published with a [`RetainPolicy`] (the Kafka
//! bridge does, per route) are kept: the last `last_n` per destination, each
//! for `ttl`. A new subscription to a destination (or a wildcard matching
//! it) first receives what is retained there, marked `replayed:true`.
//!
//! Memory is bounded: at most `max_destinations` destinations and
//! `max_bytes` bytes of messages are kept; the least recently updated
//! destination is evicted first and counted (a `hashlink` linked hash map
//! keeps destinations in update order). The bytes are charged to the
//! broker-wide memory budget ([`crate::budget`]).
//!
//! A wildcard subscription finds the retained `/topic/` destinations it
//! matches through a segment trie of their names ([`NameIndex`]), walking
//! only what the pattern can reach instead of every retained destination.
//!
//! A replay is paced by the subscriber's outbound byte budget: the session
//! keeps what a subscription is owed in a cursor and sends it a slice at a
//! time (see [`crate::replay`]).

use std::{
    collections::VecDeque,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant},
};

use hashlink::LinkedHashMap;

use crate::{metrics::Metrics, router::Message, wildcard::NameIndex};

/// How long and how many messages to keep per destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainPolicy {
    /// Messages kept per destination (the newest).
    pub last_n: usize,
    /// How long each message stays replayable.
    pub ttl: Duration,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    msgs: VecDeque<(Instant, Arc<Message>)>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Destinations by last update, least recent first.
    map: LinkedHashMap<Box<str>, Entry>,
    /// Bytes of all retained messages.
    bytes: usize,
    /// Update counter: `Entry::seq` orders a wildcard replay.
    seq: u64,
    /// Names of the retained `/topic/` destinations (without `/topic/`).
    topics: NameIndex,
}

/// The retained-message store. One per broker.
#[derive(Debug)]
pub struct RetainStore {
    inner: Mutex<Inner>,
    max_destinations: usize,
    max_bytes: usize,
    metrics: Arc<Metrics>,
}

impl RetainStore {
    /// An empty store keeping at most `max_destinations` destinations and
    /// `max_bytes` bytes of messages.
    pub fn new(max_destinations: usize, max_bytes: usize, metrics: Arc<Metrics>) -> Self {
        RetainStore {
            inner: Mutex::new(Inner::default()),
            max_destinations,
            max_bytes,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `msg` for replay under `policy`.
    pub fn retain(&self, msg: Arc<Message>, policy: RetainPolicy) {
        if policy.last_n == 0 || policy.ttl.is_zero() || self.max_destinations == 0 {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        let dest: &str = &msg.destination;
        match inner.map.to_back(dest) {
            Some(e) => e.seq = seq,
            None => {
                inner.map.insert(
                    dest.into(),
                    Entry {
                        seq,
                        msgs: VecDeque::new(),
                        bytes: 0,
                    },
                );
                if let Some(name) = dest.strip_prefix("/topic/") {
                    inner.topics.insert(name);
                }
            }
        }
        let mut delta: isize = 0;
        if let Some(e) = inner.map.get_mut(dest) {
            e.msgs.push_back((now + policy.ttl, msg.clone()));
            e.bytes += msg.cost;
            delta += msg.cost as isize;
            while e.msgs.len() > policy.last_n {
                if let Some((_, old)) = e.msgs.pop_front() {
                    e.bytes -= old.cost;
                    delta -= old.cost as isize;
                }
            }
        }
        let memory = &self.metrics.memory;
        if delta >= 0 {
            inner.bytes += delta.unsigned_abs();
            memory.charge(delta.unsigned_abs());
        } else {
            inner.bytes -= delta.unsigned_abs();
            memory.release(delta.unsigned_abs());
        }
        // Evict expired destinations from the old end, then enforce the cap.
        while let Some((_, e)) = inner.map.front() {
            let expired = e.msgs.back().is_none_or(|(exp, _)| *exp <= now);
            let over = inner.map.len() > self.max_destinations || inner.bytes > self.max_bytes;
            if !expired && !over {
                break;
            }
            if let Some((name, e)) = inner.map.pop_front() {
                if let Some(t) = name.strip_prefix("/topic/") {
                    inner.topics.remove(t);
                }
                inner.bytes -= e.bytes;
                memory.release(e.bytes);
            }
            if over && !expired {
                self.metrics.retained_evicted.fetch_add(1, Relaxed);
            }
        }
        self.metrics
            .retained_destinations
            .store(inner.map.len() as i64, Relaxed);
        self.metrics
            .retained_bytes
            .store(inner.bytes as i64, Relaxed);
    }

    /// Unexpired retained messages for a subscription to `destination`
    /// (exact, or a `/topic/` wildcard pattern), oldest first.
    pub fn replay(&self, destination: &str) -> Vec<Arc<Message>> {
        let now = Instant::now();
        let inner = self.lock();
        let live = |e: &Entry| -> Vec<Arc<Message>> {
            e.msgs
                .iter()
                .filter(|(exp, _)| *exp > now)
                .map(|(_, m)| m.clone())
                .collect()
        };
        let pattern = destination
            .strip_prefix("/topic/")
            .filter(|p| p.split('.').any(|s| s == "*" || s == "#"));
        let out: Vec<Arc<Message>> = match pattern {
            None => inner.map.get(destination).map(live).unwrap_or_default(),
            Some(p) => {
                let mut found: Vec<&Entry> = inner
                    .topics
                    .matching(p)
                    .iter()
                    .filter_map(|name| inner.map.get(format!("/topic/{name}").as_str()))
                    .collect();
                // Least recently updated destination first, as before.
                found.sort_unstable_by_key(|e| e.seq);
                found.into_iter().flat_map(live).collect()
            }
        };
        self.metrics
            .messages_replayed
            .fetch_add(out.len() as u64, Relaxed);
        out
    }

    /// Destinations currently retained.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of retained messages.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

impl Drop for RetainStore {
    fn drop(&mut self) {
        let bytes = self
            .inner
            .get_mut()
            .map(|i| i.bytes)
            .unwrap_or_else(|e| e.into_inner().bytes);
        self.metrics.memory.release(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use stomp_codec::Headers;

    fn msg(dest: &str, body: &'static str) -> Arc<Message> {
        Arc::new(Message::new(
            dest,
            body,
            Headers::new(),
            Bytes::from_static(body.as_bytes()),
        ))
    }

    fn policy(n: usize) -> RetainPolicy {
        RetainPolicy {
            last_n: n,
            ttl: Duration::from_secs(60),
        }
    }

    fn bodies(v: Vec<Arc<Message>>) -> Vec<String> {
        v.iter()
            .map(|m| String::from_utf8_lossy(m.template.body()).into_owned())
            .collect()
    }

    #[test]
    fn keeps_last_n_per_destination() {
        let s = RetainStore::new(10, usize::MAX, Arc::default());
        for b in ["a", "b", "c"] {
            s.retain(msg("/topic/o.1", b), policy(2));
        }
        assert_eq!(bodies(s.replay("/topic/o.1")), vec!["b", "c"]);
        assert!(s.replay("/topic/o.2").is_empty());
    }

    #[test]
    fn evicts_least_recently_updated_destination_over_cap() {
        let metrics = Arc::new(Metrics::default());
        let s = RetainStore::new(2, usize::MAX, metrics.clone());
        s.retain(msg("/topic/o.1", "1"), policy(1));
        s.retain(msg("/topic/o.2", "2"), policy(1));
        s.retain(msg("/topic/o.1", "1b"), policy(1));
        s.retain(msg("/topic/o.3", "3"), policy(1));
        assert_eq!(s.len(), 2);
        assert!(
            s.replay("/topic/o.2").is_empty(),
            "o.2 was least recently updated"
        );
        assert_eq!(bodies(s.replay("/topic/o.1")), vec!["1b"]);
        assert_eq!(metrics.retained_evicted.load(Relaxed), 1);
    }

    #[test]
    fn store_is_bounded_in_bytes_and_charged_to_the_budget() {
        let metrics = Arc::new(Metrics::default());
        let cost = msg("/topic/o.0", "x").cost;
        // Room for three destinations' messages, not four.
        let s = RetainStore::new(1000, 3 * cost + cost / 2, metrics.clone());
        for d in ["/topic/o.1", "/topic/o.2", "/topic/o.3", "/topic/o.4"] {
            s.retain(msg(d, "x"), policy(1));
        }
        assert_eq!(s.len(), 3);
        assert!(s.replay("/topic/o.1").is_empty(), "oldest evicted");
        assert_eq!(s.bytes(), 3 * cost);
        assert_eq!(metrics.memory.used(), 3 * cost);
        assert_eq!(metrics.retained_evicted.load(Relaxed), 1);
        // Replacing a destination's message keeps its bytes, not adds them.
        s.retain(msg("/topic/o.4", "y"), policy(1));
        assert_eq!(metrics.memory.used(), 3 * cost);
        drop(s);
        assert_eq!(metrics.memory.used(), 0);
    }

    #[test]
    fn expired_messages_are_not_replayed() {
        let s = RetainStore::new(10, usize::MAX, Arc::default());
        s.retain(
            msg("/topic/o.1", "old"),
            RetainPolicy {
                last_n: 1,
                ttl: Duration::from_millis(1),
            },
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(s.replay("/topic/o.1").is_empty());
    }

    #[test]
    fn wildcard_subscription_replays_matching_destinations() {
        let s = RetainStore::new(10, usize::MAX, Arc::default());
        s.retain(msg("/topic/order.1", "1"), policy(1));
        s.retain(msg("/topic/order.2", "2"), policy(1));
        s.retain(msg("/topic/other.3", "3"), policy(1));
        let mut got = bodies(s.replay("/topic/order.*"));
        got.sort();
        assert_eq!(got, vec!["1", "2"]);
    }

    #[test]
    fn wildcard_replay_follows_evictions_in_update_order() {
        let metrics = Arc::new(Metrics::default());
        let s = RetainStore::new(3, usize::MAX, metrics.clone());
        s.retain(msg("/topic/order.1", "1"), policy(1));
        s.retain(msg("/topic/order.2", "2"), policy(1));
        s.retain(msg("/topic/other.9", "9"), policy(1));
        s.retain(msg("/topic/order.1", "1b"), policy(1));
        // Over the cap: order.2, least recently updated, goes.
        s.retain(msg("/topic/order.3", "3"), policy(1));
        assert_eq!(metrics.retained_evicted.load(Relaxed), 1);
        assert_eq!(bodies(s.replay("/topic/order.*")), vec!["1b", "3"]);
        assert_eq!(bodies(s.replay("/topic/#")), vec!["9", "1b", "3"]);
        // Evicted names leave the index (other.9 goes now); a new message
        // brings one back.
        s.retain(msg("/topic/order.2", "2b"), policy(1));
        assert_eq!(bodies(s.replay("/topic/order.*")), vec!["1b", "3", "2b"]);
        assert_eq!(bodies(s.replay("/topic/other.*")), Vec::<String>::new());
    }
}
