//! The connection task: one `select!` over socket reads, the outbound
//! queue, heart-beat timers and shutdown, feeding a [`Session`].

use std::{net::SocketAddr, sync::atomic::Ordering::Relaxed, sync::Arc, time::Duration};

use bytes::BytesMut;
use stomp_codec::{Decoded, Decoder, Frame};
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use crate::{
    core::{AdmitGuard, BrokerCore},
    outbound::Outbound,
    session::{Flow, Session, StompError},
    transport::{CloseKind, Transport},
};

/// Largest batch of output gathered before writing.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Where the idle timer rests when no deadline is pending.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

enum Event {
    Read(std::io::Result<usize>),
    Out(Option<Outbound>),
    /// The deadline timer fired; which deadline is worked out after.
    Timer,
    ReadTimeout,
    FrameTimeout,
    HeartBeat,
    TokenExpired,
    Shutdown,
    /// Output is waiting (a replay slice): write it. Ready only when
    /// nothing else is.
    Drain,
}

/// Where one can end up after feeding input to the session.
enum Step {
    /// Everything buffered was consumed.
    Idle,
    /// A CONNECT must be authenticated before anything else is read.
    Authenticate(Frame),
    /// The connection ends.
    End(End),
}

/// Per-connection facts from the transport layer.
#[derive(Debug)]
pub struct ConnInfo {
    /// The peer address.
    pub peer: SocketAddr,
    /// `"tcp"`, `"ws"`, `"tls"`, `"wss"`.
    pub transport: &'static str,
    /// A token from the WebSocket URL, if any.
    pub url_token: Option<String>,
    /// The connection's admission slot, released when the connection ends.
    pub admission: AdmitGuard,
}

enum End {
    /// Peer closed or I/O failed: nothing more to say.
    Gone,
    /// Close after flushing (DISCONNECT).
    Close,
    /// Send this ERROR, then close.
    Error(StompError, CloseKind),
}

/// Serves one client connection until it ends.
///
/// Not an `async fn`: an async function keeps its arguments in its future
/// next to what it moves them into, and every idle connection holds that
/// future for its whole life. The connection's state is built here, boxed
/// once ([`Task`]), and only the box travels into [`run`].
pub fn serve<T: Transport>(
    core: Arc<BrokerCore>,
    transport: T,
    info: ConnInfo,
) -> impl std::future::Future<Output = ()> + Send {
    let (conn, rx) = core.new_conn();
    let span = tracing::info_span!(
        "conn",
        session = conn.id,
        peer = %info.peer,
        transport = info.transport,
        login = tracing::field::Empty
    );
    let session = Session::new(core.clone(), conn);
    let task = Box::new(Task::new(core, transport, session, rx));
    run(task, info).instrument(span)
}

/// The connection loop, one turn at a time: work out the deadlines and arm
/// the timer ([`Task::deadlines`]), wait for the next event
/// ([`Task::next_event`]), handle it ([`Task::handle`]: input goes through
/// [`Task::on_read`], deliveries through [`Task::on_outbound`]), then write
/// what the turn produced ([`Task::finish_turn`]). When the loop ends,
/// [`Task::close`] closes the transport and requeues unsent queue messages.
async fn run<T: Transport>(mut task: Box<Task<T>>, info: ConnInfo) {
    let metrics = task.core.metrics.clone();
    metrics.connections.fetch_add(1, Relaxed);
    metrics.connections_total.fetch_add(1, Relaxed);
    tracing::debug!("connection opened");
    // Created once: a fresh `cancelled()` per iteration would register and
    // unregister a waiter on the shared token for every message delivered.
    // Polled last (only when nothing else is ready); `is_cancelled`, an
    // atomic load, keeps a busy connection from missing it.
    let shutdown = task.core.shutdown.clone();
    let shutdown = shutdown.cancelled();
    tokio::pin!(shutdown);
    // One timer for every deadline, armed at the earliest and re-armed only
    // when it fires or an earlier deadline appears. Deadlines that move
    // later with traffic (heart-beats) cost nothing per message: when the
    // timer fires early, the deadlines are re-checked and it is re-armed.
    let timer = sleep_until(Instant::now() + FAR_FUTURE);
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    // Whether the socket read is polled before the outbound queue this turn.
    let mut read_first = false;

    let end = loop {
        let deadlines = task.deadlines();
        if let Some(n) = deadlines.earliest() {
            if armed.is_none_or(|a| n < a) {
                timer.as_mut().reset(n);
                armed = Some(n);
            }
        }
        read_first = !read_first;
        let event = task
            .next_event(
                read_first,
                timer.as_mut(),
                armed.is_some(),
                shutdown.as_mut(),
            )
            .await;
        let event = match event {
            Event::Timer => {
                armed = None;
                match deadlines.due(Instant::now()) {
                    Some(event) => event,
                    // Fired for a deadline that has since moved.
                    None => continue,
                }
            }
            other => other,
        };
        let ended = task.handle(event, &info).await;
        if let Some(end) = task.finish_turn(ended).await {
            break end;
        }
    };
    // Boxed, like the other once-per-connection steps: the task's future
    // is as large as its largest await, and every idle connection holds it.
    Box::pin(task.close(end)).await;
    tracing::debug!("connection closed");
    metrics.connections.fetch_sub(1, Relaxed);
    drop(info);
}

/// In-memory sizes (bytes) of a WebSocket-over-TCP connection's task
/// state and the futures it awaits, for `examples/conn_sizes.rs` (the S3
/// memory budget, docs/benchmarks.md).
#[doc(hidden)]
pub fn sizes_ws_tcp() -> Vec<(&'static str, usize)> {
    type W = crate::transport::WsTransport<tokio::net::TcpStream>;
    fn ret3<A, B, C, R>(_: impl Fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }
    fn ret5<A, B, C, D, E, R>(_: impl Fn(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }
    fn ret2<A, B, R>(_: impl Fn(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }
    vec![
        ("Task (boxed)", std::mem::size_of::<Task<W>>()),
        ("run future", ret2(run::<W>)),
        ("Task::next_event future", ret5(Task::<W>::next_event)),
        ("Task::handle future", ret3(Task::<W>::handle)),
        ("Task::finish_turn future", ret2(Task::<W>::finish_turn)),
    ]
}

/// The connection's deadlines for one turn; `None` = not pending.
struct Deadlines {
    /// CONNECT due (before CONNECT) or client heart-beat due (after).
    read: Option<Instant>,
    /// Our heart-beat due.
    write: Option<Instant>,
    /// The session's token expires.
    expiry: Option<Instant>,
    /// A partial frame must be complete.
    frame: Option<Instant>,
}

impl Deadlines {
    fn earliest(&self) -> Option<Instant> {
        [self.read, self.write, self.expiry, self.frame]
            .into_iter()
            .flatten()
            .min()
    }

    /// The event for the first deadline that is due at `now`, in order of
    /// precedence (a dead peer before a heart-beat we owe it).
    fn due(&self, now: Instant) -> Option<Event> {
        let due = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        if due(self.read) {
            Some(Event::ReadTimeout)
        } else if due(self.frame) {
            Some(Event::FrameTimeout)
        } else if due(self.expiry) {
            Some(Event::TokenExpired)
        } else if due(self.write) {
            Some(Event::HeartBeat)
        } else {
            None
        }
    }
}

/// Everything one connection task owns.
struct Task<T> {
    core: Arc<BrokerCore>,
    transport: T,
    session: Session,
    rx: crate::outbound::OutboundRx,
    decoder: Decoder,
    rbuf: BytesMut,
    connect_deadline: Instant,
    last_read: Instant,
    last_write: Instant,
    tolerance: f64,
    grace: Duration,
    frame_timeout: Duration,
    /// When a partial frame started waiting in the read buffer, plus
    /// `frame_timeout`.
    frame_deadline: Option<Instant>,
}

impl<T: Transport> Task<T> {
    fn new(
        core: Arc<BrokerCore>,
        transport: T,
        session: Session,
        rx: crate::outbound::OutboundRx,
    ) -> Self {
        let now = Instant::now();
        Task {
            decoder: Decoder::new(core.limits),
            rbuf: BytesMut::new(),
            connect_deadline: deadline_after(now, core.config.connect_timeout()),
            last_read: now,
            last_write: now,
            tolerance: core.config.heartbeat.tolerance,
            grace: Duration::from_millis(core.config.heartbeat.grace_ms),
            frame_timeout: Duration::from_millis(core.config.limits.frame_timeout_ms),
            frame_deadline: None,
            core,
            transport,
            session,
            rx,
        }
    }

    fn deadlines(&self) -> Deadlines {
        let hb = self.session.heart_beats();
        let read = match (self.session.version(), hb.recv) {
            (None, _) => Some(self.connect_deadline),
            (Some(_), Some(every)) => Some(deadline_after(
                self.last_read,
                silence_allowed(every, self.tolerance, self.grace),
            )),
            (Some(_), None) => None,
        };
        Deadlines {
            read,
            write: hb.send.map(|every| deadline_after(self.last_write, every)),
            expiry: self
                .session
                .expires_at()
                .map(|at| expiry_deadline(at, std::time::SystemTime::now(), Instant::now())),
            frame: self.frame_deadline,
        }
    }

    /// Waits for the next event. Fairness: the socket and the outbound
    /// queue take turns at priority (`read_first`), and each turn does
    /// bounded work (one read, or one batch of at most MAX_BATCH_BYTES), so
    /// a flood of messages to this client cannot leave its own ACK,
    /// DISCONNECT or heart-beats unread, and a client that floods us cannot
    /// starve its own deliveries. The timer goes first: it is ready only
    /// when a deadline is due, and a flood must not postpone a heart-beat or
    /// token-expiry deadline either.
    async fn next_event(
        &mut self,
        read_first: bool,
        mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
        armed: bool,
        mut shutdown: std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> Event {
        if self.core.shutdown.is_cancelled() {
            return Event::Shutdown;
        }
        // A paced replay left output for the next write.
        let drain = self.session.has_output();
        let (transport, rbuf, rx) = (&mut self.transport, &mut self.rbuf, &mut self.rx);
        if read_first {
            tokio::select! {
                biased;
                _ = &mut timer, if armed => Event::Timer,
                r = transport.read(rbuf) => Event::Read(r),
                out = rx.recv() => Event::Out(out),
                _ = &mut shutdown => Event::Shutdown,
                _ = std::future::ready(()), if drain => Event::Drain,
            }
        } else {
            tokio::select! {
                biased;
                _ = &mut timer, if armed => Event::Timer,
                out = rx.recv() => Event::Out(out),
                r = transport.read(rbuf) => Event::Read(r),
                _ = &mut shutdown => Event::Shutdown,
                _ = std::future::ready(()), if drain => Event::Drain,
            }
        }
    }

    /// Handles one event; `Some` when the connection ends.
    async fn handle(&mut self, event: Event, info: &ConnInfo) -> Option<End> {
        match event {
            Event::Shutdown => Some(End::Error(
                StompError::new(
                    "shutdown",
                    "server shutting down",
                    "The server is shutting down; reconnect later.",
                ),
                CloseKind::GoingAway,
            )),
            Event::Read(Ok(0)) => Some(End::Gone),
            Event::Read(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::debug!(error = %e, "transport protocol violation");
                Some(End::Error(
                    StompError::new("protocol", "transport protocol violation", e.to_string()),
                    CloseKind::ProtocolError,
                ))
            }
            Event::Read(Err(e)) => {
                tracing::debug!(error = %e, "read failed");
                Some(End::Gone)
            }
            Event::Read(Ok(n)) => self.on_read(n, info).await,
            Event::Out(None) => Some(End::Gone),
            Event::Out(Some(item)) => self.on_outbound(item),
            Event::ReadTimeout => {
                let (message, detail, kind) = if self.session.version().is_none() {
                    (
                        "connect timeout",
                        "No CONNECT frame received in time.",
                        "connect_timeout",
                    )
                } else {
                    self.core.metrics.heartbeat_timeouts.fetch_add(1, Relaxed);
                    ("heart-beat timeout", "No data received from the client within the negotiated heart-beat interval.", "heartbeat_timeout")
                };
                Some(End::Error(
                    StompError::new(kind, message, detail),
                    CloseKind::Normal,
                ))
            }
            Event::FrameTimeout => Some(End::Error(
                StompError::new(
                    "frame_timeout",
                    "frame timeout",
                    "A frame was started but not completed in time.",
                ),
                CloseKind::ProtocolError,
            )),
            Event::HeartBeat => {
                self.session.push_heartbeat();
                None
            }
            // Resolved into one of the deadline events by `Deadlines::due`.
            Event::Timer | Event::Drain => None,
            Event::TokenExpired => Some(End::Error(
                StompError::new(
                    "token_expired",
                    "token expired",
                    "The session's token has expired; reconnect with a fresh one.",
                ),
                CloseKind::Normal,
            )),
        }
    }

    /// `n` bytes arrived: decodes and hands every complete frame to the
    /// session (authenticating a CONNECT first), then restarts or clears
    /// the frame timeout for what is left in the buffer.
    async fn on_read(&mut self, n: usize, info: &ConnInfo) -> Option<End> {
        self.core.metrics.bytes_in.fetch_add(n as u64, Relaxed);
        self.last_read = Instant::now();
        let ended = loop {
            match process_input(&mut self.decoder, &mut self.rbuf, &mut self.session) {
                Step::Idle => break None,
                Step::End(end) => break Some(end),
                Step::Authenticate(frame) => {
                    // Boxed: once per connection, and large (see `run`).
                    let result = Box::pin(authenticate(&self.core, &frame, info)).await;
                    match self.session.on_connect(frame, result) {
                        Ok(_) => {
                            if let Some(v) = self.session.version() {
                                self.decoder.set_version(v);
                            }
                            // Once per connection: the log formatter
                            // appends a field on every `record`.
                            if let Some(login) = self.session.login() {
                                tracing::Span::current().record("login", login);
                                // No longer counted as unauthenticated.
                                info.admission.authenticated(login);
                            }
                        }
                        Err(e) => break Some(End::Error(e, CloseKind::ProtocolError)),
                    }
                }
            }
        };
        if self.rbuf.is_empty() {
            // Nothing partial: hold no read buffer while idle (the next
            // read allocates what it needs; decoded frames keep theirs).
            self.rbuf = BytesMut::new();
        }
        self.frame_deadline = match (self.rbuf.is_empty(), self.frame_deadline) {
            (true, _) => None,
            (false, None) if !self.frame_timeout.is_zero() => {
                Some(deadline_after(Instant::now(), self.frame_timeout))
            }
            (false, d) => d,
        };
        ended
    }

    /// Deliveries: encodes `item` and whatever else is queued into the
    /// session's output, up to MAX_BATCH_BYTES.
    fn on_outbound(&mut self, item: Outbound) -> Option<End> {
        let mut next = Some(item);
        while let Some(item) = next.take() {
            if let Err(e) = self.session.on_outbound(item) {
                return Some(End::Error(e, CloseKind::Normal));
            }
            if self.session.output_len() >= MAX_BATCH_BYTES {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        self.session.disconnect_ready().then_some(End::Close)
    }

    /// Writes what the turn produced: for a DISCONNECT, the messages queued
    /// before it and its RECEIPT; for an error, the ERROR frame. `Some` when
    /// the loop ends: `ended`, or `Gone` when the write failed (a slow
    /// consumer is told why first, if the socket still takes it).
    async fn finish_turn(&mut self, ended: Option<End>) -> Option<End> {
        if let Some(v) = self.session.version() {
            self.decoder.set_version(v);
        }
        if matches!(ended, Some(End::Close)) {
            // DISCONNECT: messages already queued for this connection were
            // published before the receipt was due; write them first.
            while let Ok(item) = self.rx.try_recv() {
                if let Outbound::Message { .. } = item {
                    let _ = self.session.on_outbound(item);
                }
            }
            self.session.finish_disconnect();
        }
        if let Some(End::Error(e, _)) = &ended {
            tracing::info!(error = %e.message, "closing with ERROR");
            self.session.push_error(e);
        }
        if self.session.has_output() && !matches!(ended, Some(End::Gone)) {
            match flush(&self.core, &mut self.transport, &mut self.session).await {
                Ok(()) => self.last_write = Instant::now(),
                Err(e) if self.session.conn().is_slow() && ended.is_none() => {
                    // Blocked writing to a peer that stopped reading: say why
                    // if the socket still takes it, then close.
                    tracing::info!("slow consumer disconnected");
                    let err = StompError::new(
                        "slow_consumer",
                        "slow consumer",
                        "The connection is closed: slow consumer.",
                    );
                    self.session.discard_output();
                    self.session.push_error(&err);
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        Box::pin(flush(&self.core, &mut self.transport, &mut self.session)),
                    )
                    .await;
                    tracing::debug!(error = %e, "write abandoned");
                    return Some(End::Gone);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "write failed");
                    return Some(End::Gone);
                }
            }
        }
        if ended.is_none() {
            // Resume a paced retained replay in what the write (or an ACK)
            // gave back; its output is written next turn (`Event::Drain`).
            self.session.pump_replay();
        }
        ended
    }

    /// Closes the transport as `end` says, ends the session (unsubscribing
    /// first so requeued messages go to other consumers) and returns queue
    /// messages that were queued for this connection but never written.
    async fn close(mut self: Box<Self>, end: End) {
        match end {
            End::Gone => {}
            End::Close => self.transport.close(CloseKind::Normal).await,
            End::Error(_, kind) => self.transport.close(kind).await,
        }
        self.session.discard_output();
        self.session.close();
        self.rx.close();
        let mut unsent = Vec::new();
        while let Ok(item) = self.rx.try_recv() {
            if let Outbound::Message { msg, .. } = item {
                self.session.conn().written(msg.cost);
                if matches!(
                    crate::router::parse_destination(&msg.destination),
                    Ok(crate::router::DestKind::Queue(_))
                ) {
                    unsent.push(msg);
                }
            }
        }
        if !unsent.is_empty() {
            self.core.router.requeue(unsent, None);
        }
    }
}

/// `at + after`, saturating at [`FAR_FUTURE`] from `at`: no setting or
/// token can make a deadline overflow (`Instant + Duration` panics).
fn deadline_after(at: Instant, after: Duration) -> Instant {
    let after = after.min(FAR_FUTURE);
    at.checked_add(after).unwrap_or(at)
}

/// How long a client that promised a heart-beat `every` may stay silent:
/// `every × tolerance + grace`, the grace capped at half the interval (so a
/// client asking for 1 s is closed within about 2.5 s, while 10 s still gets
/// the whole 5 s), saturating (a tolerance that is not a finite number ≥ 1
/// counts as 1; validation rejects those anyway).
fn silence_allowed(every: Duration, tolerance: f64, grace: Duration) -> Duration {
    let grace = grace.min(every / 2);
    let tolerance = if tolerance.is_finite() {
        tolerance.max(1.0)
    } else {
        1.0
    };
    Duration::try_from_secs_f64(every.as_secs_f64() * tolerance)
        .unwrap_or(Duration::MAX)
        .saturating_add(grace)
}

/// The instant a token valid until `expires` (wall clock) runs out, given
/// the wall clock `now` and monotonic `now_instant`; an expiry in the past
/// is due now, one absurdly far away saturates.
fn expiry_deadline(
    expires: std::time::SystemTime,
    now: std::time::SystemTime,
    now_instant: Instant,
) -> Instant {
    let left = expires.duration_since(now).unwrap_or(Duration::ZERO);
    deadline_after(now_instant, left)
}

fn process_input(decoder: &mut Decoder, rbuf: &mut BytesMut, session: &mut Session) -> Step {
    loop {
        match decoder.decode(rbuf) {
            Ok(None) => return Step::Idle,
            Ok(Some(Decoded::HeartBeat)) => {}
            Ok(Some(Decoded::Frame(frame))) if session.needs_authentication(&frame) => {
                return Step::Authenticate(frame);
            }
            Ok(Some(Decoded::Frame(frame))) => match session.on_frame(frame) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => return Step::End(End::Close),
                Err(e) => return Step::End(End::Error(e, CloseKind::ProtocolError)),
            },
            Err(e) => {
                let mut err = StompError::from(e);
                err.receipt_id = receipt_in_raw(rbuf);
                return Step::End(End::Error(err, CloseKind::ProtocolError));
            }
        }
    }
}

/// Best effort: the `receipt` header of a frame the decoder rejected (an
/// unknown command, say), so its ERROR can carry `receipt-id`. Looks only
/// at the first few KiB of the header section.
fn receipt_in_raw(buf: &[u8]) -> Option<String> {
    let head = &buf[..buf.len().min(8 * 1024)];
    head.split(|&b| b == b'\n')
        .skip(1)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(b"receipt:"))
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty() && !v.contains('\0'))
        .map(str::to_owned)
}

/// Checks a CONNECT's credentials (password hashing runs off the async
/// workers).
async fn authenticate(
    core: &Arc<BrokerCore>,
    frame: &Frame,
    info: &ConnInfo,
) -> Result<crate::auth::Identity, crate::auth::AuthError> {
    let text = |name: &str| frame.header_str(name).map(str::to_owned);
    core.auth
        .authenticate_async(
            info.peer.ip(),
            text("login"),
            text("passcode"),
            text("Authorization").or_else(|| text("authorization")),
            info.url_token.clone(),
        )
        .await
}

/// Longest a single batched write may take before the peer is considered dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

async fn flush<T: Transport>(
    core: &BrokerCore,
    transport: &mut T,
    session: &mut Session,
) -> std::io::Result<()> {
    let batch = session.take_output();
    let bytes = batch.bytes.len();
    let cost = batch.cost;
    let messages = batch.messages;
    let conn = session.conn().clone();
    let write = transport.write_batch(&batch);
    tokio::pin!(write);
    // Fast path: the socket takes the batch at once, no timers needed.
    let first = tokio::select! {
        biased;
        r = &mut write => Some(r),
        _ = std::future::ready(()) => None,
    };
    let result = match first {
        Some(r) => r,
        // Slow path, boxed so its timers are not part of every idle
        // connection's future (see `run`).
        None => {
            Box::pin(async {
                tokio::select! {
                    r = tokio::time::timeout(WRITE_TIMEOUT, &mut write) => {
                        r.unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out")))
                    }
                    _ = condemned(&conn) => Err(std::io::Error::other("slow consumer")),
                }
            })
            .await
        }
    };
    conn.written(cost);
    core.metrics.bytes_out.fetch_add(bytes as u64, Relaxed);
    if result.is_ok() && messages > 0 {
        core.metrics.messages_delivered.fetch_add(messages, Relaxed);
    }
    result
}

/// Resolves once the connection is flagged as a slow consumer while a write
/// is blocked, so a peer that stopped reading cannot pin the task. Polls
/// only while a write is pending.
async fn condemned(conn: &crate::outbound::ConnShared) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if conn.is_slow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn deadline_after_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(deadline_after(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(
            deadline_after(now, Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
    }

    #[test]
    fn silent_client_is_detected_within_about_twice_its_interval() {
        let grace = Duration::from_millis(5000);
        // 1 s: 2 s + 0.5 s (grace capped at half the interval), under 3 s.
        let one = Duration::from_secs(1);
        assert_eq!(
            silence_allowed(one, 2.0, grace),
            Duration::from_millis(2500)
        );
        // 10 s: 20 s + the full 5 s grace, as before.
        let ten = Duration::from_secs(10);
        assert_eq!(silence_allowed(ten, 2.0, grace), Duration::from_secs(25));
        // A small grace is kept whole.
        let small = Duration::from_millis(100);
        assert_eq!(
            silence_allowed(one, 2.0, small),
            Duration::from_millis(2100)
        );
    }

    #[test]
    fn infinite_tolerance_does_not_panic() {
        let every = Duration::from_secs(10);
        let grace = Duration::from_secs(5);
        assert_eq!(silence_allowed(every, 2.0, grace), Duration::from_secs(25));
        for t in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -3.0, 0.0] {
            assert_eq!(silence_allowed(every, t, grace), Duration::from_secs(15));
        }
        assert_eq!(silence_allowed(every, 1e300, grace), Duration::MAX);
    }

    #[test]
    fn far_future_token_expiry_saturates() {
        let now = Instant::now();
        let wall = SystemTime::now();
        // The largest expiry a SystemTime can hold from a JWT `exp`.
        let far = UNIX_EPOCH
            .checked_add(Duration::from_secs(i64::MAX as u64 / 2))
            .unwrap_or(wall);
        assert_eq!(expiry_deadline(far, wall, now), now + FAR_FUTURE);
        let past = wall - Duration::from_secs(1);
        assert_eq!(expiry_deadline(past, wall, now), now);
    }

    /// A transport that plays a script of client input and, on every write,
    /// queues more outbound items for the connection: a flood that never
    /// lets the outbound queue run dry.
    struct FloodedTransport {
        script: std::collections::VecDeque<&'static [u8]>,
        conn: Arc<crate::outbound::ConnShared>,
        log: Arc<std::sync::Mutex<WriteLog>>,
    }

    #[derive(Default)]
    struct WriteLog {
        written: Vec<u8>,
        writes: usize,
        writes_at_receipt: Option<usize>,
    }

    fn filler() -> Outbound {
        Outbound::Frame(Box::new(
            Frame::new(stomp_codec::Command::Receipt).with_header("receipt-id", "flood"),
        ))
    }

    impl Transport for FloodedTransport {
        async fn read(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
            match self.script.pop_front() {
                Some(b) => {
                    buf.extend_from_slice(b);
                    Ok(b.len())
                }
                None => std::future::pending().await,
            }
        }

        async fn write_batch(&mut self, batch: &crate::output::Batch) -> std::io::Result<()> {
            {
                let mut log = self.log.lock().expect("log");
                log.writes += 1;
                log.written.extend_from_slice(&batch.bytes);
                if log.writes_at_receipt.is_none()
                    && log.written.windows(15).any(|w| w == b"receipt-id:bye\n")
                {
                    log.writes_at_receipt = Some(log.writes);
                }
            }
            for _ in 0..10 {
                self.conn.send_control(filler());
            }
            Ok(())
        }

        async fn close(&mut self, _kind: CloseKind) {}
    }

    /// Runs a connection that plays `script` under a never-ending flood of
    /// outbound items; returns what it wrote, or `None` if it did not end
    /// within 10 s.
    async fn run_flooded(
        tweak: impl FnOnce(&mut crate::Config),
        script: &[&'static [u8]],
    ) -> Option<WriteLog> {
        let mut config = crate::Config::default();
        tweak(&mut config);
        let core =
            BrokerCore::new(config, tokio_util::sync::CancellationToken::new()).expect("core");
        let (conn, rx) = core.new_conn();
        for _ in 0..100 {
            conn.send_control(filler());
        }
        let log = Arc::new(std::sync::Mutex::new(WriteLog::default()));
        let transport = FloodedTransport {
            script: script.iter().copied().collect(),
            conn: conn.clone(),
            log: log.clone(),
        };
        let peer: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let info = ConnInfo {
            peer,
            transport: "tcp",
            url_token: None,
            admission: core.admit(peer.ip()).expect("admitted"),
        };
        let session = Session::new(core.clone(), conn);
        let task = Box::new(Task::new(core.clone(), transport, session, rx));
        tokio::time::timeout(Duration::from_secs(10), run(task, info))
            .await
            .ok()?;
        let log = std::mem::take(&mut *log.lock().expect("log"));
        Some(log)
    }

    #[tokio::test]
    async fn a_flooded_connection_still_reads_connect_and_disconnect() {
        // The outbound queue is never empty: before the fix the socket was
        // never read and this never ended.
        let log = run_flooded(
            |c| c.heartbeat.server = "0,0".into(),
            &[
                b"CONNECT\naccept-version:1.2\nhost:/\n\n\0",
                b"DISCONNECT\nreceipt:bye\n\n\0",
            ],
        )
        .await
        .expect("the connection read its CONNECT and DISCONNECT despite the flood");
        let text = String::from_utf8_lossy(&log.written);
        assert!(text.contains("CONNECTED"), "{text:.200}");
        // Bounded work per turn: the DISCONNECT was read within a few turns.
        let at = log.writes_at_receipt.expect("RECEIPT bye written");
        assert!(at <= 4, "receipt after {at} writes");
    }

    #[tokio::test]
    async fn a_flooded_connection_still_checks_its_heart_beat_deadline() {
        // The client promises a heart-beat every 100 ms, then stays silent
        // while the flood goes on: the read deadline must still fire.
        let log = run_flooded(
            |c| {
                c.heartbeat.server = "0,100".into();
                c.heartbeat.min_ms = 100;
                c.heartbeat.tolerance = 1.0;
                c.heartbeat.grace_ms = 0;
            },
            &[b"CONNECT\naccept-version:1.2\nhost:/\nheart-beat:100,0\n\n\0"],
        )
        .await
        .expect("the heart-beat deadline fired despite the flood");
        let text = String::from_utf8_lossy(&log.written);
        assert!(text.contains("message:heart-beat timeout"), "{text:.200}");
    }

    proptest! {
        #[test]
        fn deadline_helpers_never_panic(
            every_ms in any::<u64>(),
            tolerance in proptest::num::f64::ANY,
            grace_ms in any::<u64>(),
            exp_secs in any::<u64>(),
        ) {
            let now = Instant::now();
            let every = Duration::from_millis(every_ms);
            let silence = silence_allowed(every, tolerance, Duration::from_millis(grace_ms));
            let d = deadline_after(now, silence);
            prop_assert!(d >= now && d <= now + FAR_FUTURE);
            if let Some(exp) = UNIX_EPOCH.checked_add(Duration::from_secs(exp_secs)) {
                let e = expiry_deadline(exp, SystemTime::now(), now);
                prop_assert!(e >= now && e <= now + FAR_FUTURE);
            }
        }
    }
}
