//! The part of a connection that publishers see: a bounded-in-bytes outbound
//! queue and the slow-consumer policy.
//!
//! The connection's byte account (`pending`) holds what is queued or
//! encoded and not yet written, plus the messages it was sent and has not
//! acknowledged yet (client-ack subscriptions); everything in it is also
//! charged to the broker-wide [`crate::budget::MemoryBudget`].

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
    task::{Poll, Waker},
};

use stomp_codec::Frame;

use crate::{config::SlowConsumerPolicy, metrics::Metrics, router::Message, session::StompError};

/// Something for a connection's task to write or act on.
#[derive(Debug)]
pub enum Outbound {
    /// A message for one of this connection's subscriptions.
    Message {
        /// The shared, encoded-once message.
        msg: Arc<Message>,
        /// The subscription id it is for.
        sub: Arc<str>,
        /// First delivery, redelivery or replay.
        kind: DeliveryKind,
    },
    /// A frame produced asynchronously for this connection (e.g. a RECEIPT
    /// after Kafka acknowledged a SEND). Boxed, like `Fatal`, to keep the
    /// common variant small: every connection's queue allocates a block of
    /// slots of this size up front.
    Frame(Box<Frame>),
    /// An ERROR to send before closing (slow consumer, Kafka failure …).
    Fatal(Box<StompError>),
    /// Retained messages owed to subscription `sub` (a replay deferred
    /// during a retained-store rebuild): the session replays them paced
    /// by the byte budget, like a replay after SUBSCRIBE.
    Replay {
        /// The subscription id.
        sub: Arc<str>,
        /// Oldest first per destination.
        msgs: Vec<Arc<Message>>,
    },
    /// The Kafka writes a DISCONNECT waited for have all been answered:
    /// send its RECEIPT and close.
    Disconnect,
}

/// How a message reaches a subscription; decides the extra MESSAGE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    /// Published now.
    Live,
    /// A queue message delivered before (NACK, disconnect): `redelivered:true`.
    Redelivered,
    /// A retained message replayed to a new subscription: `replayed:true`.
    Replayed,
}

/// A connection as seen by the router: where to push messages.
#[derive(Debug)]
pub struct ConnShared {
    /// Broker-unique connection id (also the STOMP `session`).
    pub id: u64,
    queue: Arc<Queue>,
    pending: AtomicUsize,
    max_pending: usize,
    policy: SlowConsumerPolicy,
    slow: AtomicBool,
    metrics: Arc<Metrics>,
}

impl ConnShared {
    /// A connection handle and the receiving end its task drains.
    pub fn new(
        id: u64,
        max_pending: usize,
        policy: SlowConsumerPolicy,
        metrics: Arc<Metrics>,
    ) -> (Arc<ConnShared>, OutboundRx) {
        // Bounded by bytes, not slots: `pending` is checked before every
        // push, so the queue never holds more than `max_pending` bytes of
        // messages (plus one message, so a single large one still fits).
        let queue = Arc::new(Queue::default());
        let rx = OutboundRx {
            queue: queue.clone(),
        };
        let conn = ConnShared {
            id,
            queue,
            pending: AtomicUsize::new(0),
            max_pending,
            policy,
            slow: AtomicBool::new(false),
            metrics,
        };
        (Arc::new(conn), rx)
    }

    /// Queues a message of `cost` bytes, charged to the broker-wide memory
    /// budget. Returns false when it was not queued (connection closed,
    /// flagged slow, or dropped by policy). Never blocks, never awaits.
    pub fn push(&self, out: Outbound, cost: usize) -> bool {
        self.metrics.memory.charge(cost);
        let queued = self.push_precharged(out, cost);
        if !queued {
            self.metrics.memory.release(cost);
        }
        queued
    }

    /// [`ConnShared::push`] for a caller that already charged `cost` to
    /// the memory budget (a fan-out charges all its deliveries at once) and
    /// releases it when this returns false. Charging before the push keeps
    /// the account from dipping below zero when the write is quicker.
    pub fn push_precharged(&self, out: Outbound, cost: usize) -> bool {
        if self.slow.load(Relaxed) {
            return false;
        }
        let before = self.pending.fetch_add(cost, Relaxed);
        if before > 0 && before + cost > self.max_pending {
            self.pending.fetch_sub(cost, Relaxed);
            match self.policy {
                SlowConsumerPolicy::Drop => {
                    self.metrics.messages_dropped.fetch_add(1, Relaxed);
                }
                SlowConsumerPolicy::Disconnect => {
                    if !self.slow.swap(true, Relaxed) {
                        self.metrics.slow_consumer_disconnects.fetch_add(1, Relaxed);
                        let _ = self.queue.send(Outbound::Fatal(Box::new(StompError::new(
                            "slow_consumer",
                            "slow consumer",
                            "The connection is closed: slow consumer.",
                        ))));
                    }
                }
            }
            return false;
        }
        if self.queue.send(out).is_err() {
            self.pending.fetch_sub(cost, Relaxed);
            return false;
        }
        true
    }

    /// Whether a message of `cost` bytes fits in this connection's byte
    /// budget now (a queue skips a consumer that has no room rather than
    /// condemning it).
    pub fn has_room(&self, cost: usize) -> bool {
        let pending = self.pending.load(Relaxed);
        pending == 0 || pending + cost <= self.max_pending
    }

    /// Queues a control item (not counted against the byte budget).
    pub fn send_control(&self, out: Outbound) -> bool {
        self.queue.send(out).is_ok()
    }

    /// Accounts a retained replay's message for this connection if it
    /// fits in half its byte budget (the other half stays free for live
    /// messages, so a replay never makes the slow-consumer policy condemn
    /// the connection); the write credits it back. False, and nothing
    /// accounted, when it does not fit now (see [`crate::replay`]).
    pub fn try_add_replay(&self, cost: usize) -> bool {
        let before = self.pending.fetch_add(cost, Relaxed);
        if before > 0 && before + cost > self.max_pending / 2 {
            self.pending.fetch_sub(cost, Relaxed);
            return false;
        }
        // Charged before the output that carries it can be written.
        self.metrics.memory.charge(cost);
        true
    }

    /// Gives back `cost` bytes of this connection's account: called by the
    /// connection task after a write, and by the session when a message is
    /// acknowledged or dropped.
    pub fn written(&self, cost: usize) {
        self.pending.fetch_sub(cost, Relaxed);
        self.metrics.memory.release(cost);
    }

    /// Bytes queued and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.load(Relaxed)
    }

    /// Whether the slow-consumer policy has condemned this connection.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Relaxed)
    }

    /// Whether the connection's task has gone away.
    pub fn is_closed(&self) -> bool {
        self.queue.lock().rx_closed
    }
}

impl Drop for ConnShared {
    /// Whatever is still accounted (items left in a closed queue) goes
    /// back to the broker-wide budget; the receiver learns that nothing
    /// more will come.
    fn drop(&mut self) {
        self.metrics.memory.release(*self.pending.get_mut());
        let waker = {
            let mut q = self.queue.lock();
            q.tx_dropped = true;
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A connection's outbound queue: a `VecDeque` under an uncontended mutex
/// and the receiving task's waker. Replaces tokio's unbounded `mpsc`
/// because fan-out pushes to a thousand queues per message: a push here is
/// one lock, one `push_back` into a ring reused across batches, one unlock,
/// and a wake-up only for the first item after the receiver went to sleep
/// (one wake per batch, not per message). tokio's channel touched several
/// cache lines of its own per push (tail index, block slot, ready bits,
/// semaphore, receiver waker), allocated a block every 32 messages, and
/// allocates its first block for every connection, idle or not.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Outbound>,
    /// The receiving task, when it is waiting for an item.
    waker: Option<Waker>,
    /// The receiver closed (or dropped): pushes are refused.
    rx_closed: bool,
    /// The connection handle is gone: nothing more will be pushed.
    tx_dropped: bool,
}

/// Items a drained queue may keep room for; a burst that grew it beyond
/// this gives the memory back once drained (idle connections stay small).
const KEEP_SLOTS: usize = 1024;

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing panics while holding the lock; a poisoned one is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `out`, waking the receiver if it sleeps; gives `out` back
    /// when the receiver has closed.
    fn send(&self, out: Outbound) -> Result<(), Outbound> {
        let waker = {
            let mut q = self.lock();
            if q.rx_closed {
                return Err(out);
            }
            q.items.push_back(out);
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    fn pop(q: &mut QueueState) -> Option<Outbound> {
        let item = q.items.pop_front();
        if q.items.is_empty() && q.items.capacity() > KEEP_SLOTS {
            q.items = VecDeque::new();
        }
        item
    }
}

/// The receiving end of a connection's outbound queue (the connection
/// task's). Dropping it closes the queue.
#[derive(Debug)]
pub struct OutboundRx {
    queue: Arc<Queue>,
}

/// [`OutboundRx::try_recv`] found nothing queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

impl OutboundRx {
    /// The next item; `None` once the queue is empty and its
    /// [`ConnShared`] is gone. Cancel-safe (nothing is taken unless it
    /// returns it). Takes part in tokio's cooperative budget, as tokio's
    /// channels do: a task whose queue never runs dry still yields now and
    /// then, so the time driver runs and its deadlines fire (heart-beats,
    /// token expiry — see `a_flooded_connection_still_checks_its_heart_beat_deadline`).
    pub async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| {
            let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            let mut q = self.queue.lock();
            if let Some(item) = Queue::pop(&mut q) {
                coop.made_progress();
                return Poll::Ready(Some(item));
            }
            if q.tx_dropped {
                coop.made_progress();
                return Poll::Ready(None);
            }
            match &mut q.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<Outbound, Empty> {
        Queue::pop(&mut self.queue.lock()).ok_or(Empty)
    }

    /// Refuses further pushes; what is queued can still be received.
    pub fn close(&mut self) {
        self.queue.lock().rx_closed = true;
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        let items = {
            let mut q = self.queue.lock();
            q.rx_closed = true;
            q.waker = None;
            std::mem::take(&mut q.items)
        };
        // Dropped outside the lock: a message's drop may run other code.
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (Arc<ConnShared>, OutboundRx) {
        ConnShared::new(
            1,
            1 << 20,
            SlowConsumerPolicy::Disconnect,
            Arc::new(Metrics::default()),
        )
    }

    fn receipt(id: &str) -> Outbound {
        Outbound::Frame(Box::new(
            Frame::new(stomp_codec::Command::Receipt).with_header("receipt-id", id.to_owned()),
        ))
    }

    fn receipt_id(item: Option<Outbound>) -> String {
        match item {
            Some(Outbound::Frame(f)) => f.header_str("receipt-id").unwrap_or("").to_owned(),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn items_arrive_in_order_and_the_queue_ends_with_its_connection() {
        let (conn, mut rx) = conn();
        for id in ["a", "b", "c"] {
            assert!(conn.send_control(receipt(id)));
        }
        assert_eq!(receipt_id(rx.recv().await), "a");
        assert_eq!(receipt_id(rx.try_recv().ok()), "b");
        drop(conn);
        // What was queued before the handle went away is still delivered.
        assert_eq!(receipt_id(rx.recv().await), "c");
        assert!(rx.recv().await.is_none());
        assert_eq!(rx.try_recv().err(), Some(Empty));
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_pushes_and_keeps_what_it_holds() {
        let (conn, mut rx) = conn();
        assert!(conn.push(receipt("kept"), 10));
        rx.close();
        assert!(conn.is_closed());
        assert!(!conn.send_control(receipt("late")));
        assert!(
            !conn.push(receipt("late"), 10),
            "refused push is not accounted"
        );
        assert_eq!(conn.pending_bytes(), 10);
        assert_eq!(receipt_id(rx.try_recv().ok()), "kept");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_sleeping_receiver_is_woken_by_a_push_from_another_task() {
        let (conn, mut rx) = conn();
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (receipt_id(first), receipt_id(second))
        });
        // Let the receiver go to sleep first, then push from elsewhere.
        tokio::task::yield_now().await;
        let pusher = conn.clone();
        tokio::spawn(async move {
            pusher.send_control(receipt("x"));
            pusher.send_control(receipt("y"));
        })
        .await
        .expect("pusher");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken within 5 s")
            .expect("waiter");
        assert_eq!(got, ("x".to_owned(), "y".to_owned()));
    }

    #[test]
    fn a_drained_queue_gives_back_a_burst_s_memory() {
        let (conn, mut rx) = conn();
        for _ in 0..(KEEP_SLOTS * 2) {
            conn.send_control(Outbound::Disconnect);
        }
        while rx.try_recv().is_ok() {}
        assert!(conn.queue.lock().items.capacity() <= KEEP_SLOTS);
    }
}
