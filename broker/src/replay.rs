//! Paced retained replay: what a new subscription is owed from the
//! retained store ([`crate::retain`]), sent a slice at a time inside the
//! connection's outbound byte budget.
//!
//! A SUBSCRIBE (or, during a retained-store rebuild,
//! [`crate::BrokerCore::rebuild_finished`]) hands the session the retained
//! messages the subscription matches. The session keeps them here, one
//! cursor per subscription, and the connection task moves them into its
//! output at the end of every turn while they fit in half the connection's
//! byte budget ([`crate::outbound::ConnShared::try_add_replay`]); the other
//! half stays free for live messages, so a replay never makes the
//! slow-consumer policy condemn a subscriber. When the budget is full the
//! replay waits; it resumes when a write (or an ACK) gives bytes back.
//!
//! Bounded: a cursor holds `Arc`s the retained store already holds (at most
//! the store's size per subscription). Ordering: per destination, oldest
//! first; a live message delivered to the subscription drops the retained
//! ones of its destination still waiting (a newer value is never followed
//! by an older retained one). Live messages for other destinations may
//! arrive before the retained messages still waiting.

use std::{
    collections::VecDeque,
    sync::{atomic::Ordering::Relaxed, Arc},
};

use crate::{metrics::Metrics, router::Message};

#[derive(Debug)]
struct Cursor {
    sub: Arc<str>,
    msgs: VecDeque<Arc<Message>>,
}

/// One session's replay cursors. Counts what waits in
/// `stomp_replay_pending`.
#[derive(Debug)]
pub struct ReplayCursors {
    cursors: VecDeque<Cursor>,
    metrics: Arc<Metrics>,
}

impl ReplayCursors {
    /// No replay waiting.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        ReplayCursors {
            cursors: VecDeque::new(),
            metrics,
        }
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.cursors.is_empty()
    }

    /// Retained messages waiting, across this session's subscriptions.
    pub fn len(&self) -> usize {
        self.cursors.iter().map(|c| c.msgs.len()).sum()
    }

    fn gauge(&self, delta: i64) {
        self.metrics.replay_pending.fetch_add(delta, Relaxed);
    }

    /// Queues `msgs` (oldest first per destination) for subscription `sub`.
    pub fn add(&mut self, sub: Arc<str>, msgs: Vec<Arc<Message>>) {
        if msgs.is_empty() {
            return;
        }
        self.gauge(msgs.len() as i64);
        match self.cursors.iter_mut().find(|c| c.sub == sub) {
            Some(c) => c.msgs.extend(msgs),
            None => self.cursors.push_back(Cursor {
                sub,
                msgs: msgs.into(),
            }),
        }
    }

    /// A live message for `destination` reached `sub`: the older retained
    /// ones of that destination still waiting are dropped.
    pub fn superseded(&mut self, sub: &str, destination: &str) {
        let Some(i) = self.cursors.iter().position(|c| &*c.sub == sub) else {
            return;
        };
        let c = &mut self.cursors[i];
        let before = c.msgs.len();
        c.msgs.retain(|m| &*m.destination != destination);
        let removed = before - c.msgs.len();
        if c.msgs.is_empty() {
            self.cursors.remove(i);
        }
        self.gauge(-(removed as i64));
    }

    /// The subscription ended: its cursor goes.
    pub fn drop_sub(&mut self, sub: &str) {
        if let Some(i) = self.cursors.iter().position(|c| &*c.sub == sub) {
            if let Some(c) = self.cursors.remove(i) {
                self.gauge(-(c.msgs.len() as i64));
            }
        }
    }

    /// Drops every cursor (the session ends).
    pub fn clear(&mut self) {
        let n = self.len();
        self.cursors.clear();
        self.gauge(-(n as i64));
    }

    /// The next message to replay and its subscription, if `fits` accepts
    /// its cost (and accounts it); `None` when nothing waits or it does not
    /// fit now.
    pub fn next(&mut self, fits: impl FnOnce(usize) -> bool) -> Option<(Arc<str>, Arc<Message>)> {
        let c = self.cursors.front_mut()?;
        let cost = c.msgs.front()?.cost;
        if !fits(cost) {
            return None;
        }
        let msg = c.msgs.pop_front()?;
        let sub = c.sub.clone();
        if c.msgs.is_empty() {
            self.cursors.pop_front();
        }
        self.gauge(-1);
        Some((sub, msg))
    }
}

impl Drop for ReplayCursors {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stomp_codec::Headers;

    fn msg(dest: &str, id: &str) -> Arc<Message> {
        Arc::new(Message::new(dest, id, Headers::new(), bytes::Bytes::new()))
    }

    fn pending(m: &Metrics) -> i64 {
        m.replay_pending.load(Relaxed)
    }

    #[test]
    fn paces_by_budget_and_counts_what_waits() {
        let metrics = Arc::new(Metrics::default());
        let mut r = ReplayCursors::new(metrics.clone());
        r.add("s".into(), vec![msg("/topic/a", "1"), msg("/topic/b", "2")]);
        assert_eq!(pending(&metrics), 2);
        // Does not fit: nothing taken, nothing lost.
        assert!(r.next(|_| false).is_none());
        assert_eq!(r.len(), 2);
        let (sub, m) = r.next(|_| true).expect("first");
        assert_eq!((&*sub, &*m.message_id), ("s", "1"));
        assert_eq!(pending(&metrics), 1);
        drop(r);
        assert_eq!(pending(&metrics), 0);
    }

    #[test]
    fn a_live_message_drops_the_older_retained_ones_of_its_destination() {
        let metrics = Arc::new(Metrics::default());
        let mut r = ReplayCursors::new(metrics.clone());
        r.add(
            "s".into(),
            vec![
                msg("/topic/a", "1"),
                msg("/topic/b", "2"),
                msg("/topic/a", "3"),
            ],
        );
        r.add("t".into(), vec![msg("/topic/a", "4")]);
        r.superseded("s", "/topic/a");
        assert_eq!(pending(&metrics), 2);
        let (_, m) = r.next(|_| true).expect("b");
        assert_eq!(&*m.message_id, "2");
        // Another subscription's cursor is untouched.
        let (sub, m) = r.next(|_| true).expect("t");
        assert_eq!((&*sub, &*m.message_id), ("t", "4"));
        assert!(r.is_empty());
        assert_eq!(pending(&metrics), 0);
    }

    #[test]
    fn unsubscribe_and_close_drop_cursors() {
        let metrics = Arc::new(Metrics::default());
        let mut r = ReplayCursors::new(metrics.clone());
        r.add("s".into(), vec![msg("/topic/a", "1")]);
        r.add("t".into(), vec![msg("/topic/b", "2"), msg("/topic/c", "3")]);
        r.drop_sub("s");
        assert_eq!(pending(&metrics), 2);
        r.clear();
        assert!(r.is_empty());
        assert_eq!(pending(&metrics), 0);
    }
}
