//! The connection task: owns the socket, the decoder, the heart-beat timers,
//! the subscription table and the receipts in flight. Handles talk to it over
//! one bounded command channel.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};
use stomp_codec::{
    encode, parse_heart_beat, AckMode, Command, Decoded, Decoder, Frame, Limits, Version,
};
use tokio::{
    sync::{broadcast, mpsc, oneshot},
    time::Instant,
};

use crate::{
    client::{AckInfo, Message},
    transport::{Endpoint, Incoming, Transport, TransportOptions},
    Backoff, ConnectionEvent, Error, ServerError,
};

/// Read at most this much from a stream socket per read.
const READ_CHUNK: usize = 64 * 1024;
/// Encode at most this many queued commands into one write.
const WRITE_BATCH: usize = 64;

pub(crate) type Reply = oneshot::Sender<Result<(), Error>>;

/// What a handle asks the connection task to do.
pub(crate) enum Cmd {
    /// Write `frame`. When `receipt` is set, the frame carries that receipt
    /// id and `reply` resolves on the RECEIPT. `generation`: the frame is an
    /// ACK/NACK for a message of that connection and is dropped (with
    /// [`Error::Disconnected`]) if the connection has been replaced since.
    Frame {
        frame: Frame,
        receipt: Option<String>,
        reply: Option<Reply>,
        generation: Option<u64>,
    },
    /// Register a subscription and send its SUBSCRIBE (with `receipt`).
    Subscribe {
        sub: SubSpec,
        tx: mpsc::Sender<Message>,
        receipt: String,
        reply: Reply,
    },
    /// Forget a subscription and send UNSUBSCRIBE.
    Unsubscribe {
        id: String,
        receipt: Option<String>,
        reply: Option<Reply>,
    },
    /// DISCONNECT with a receipt, then close; no reconnect afterwards.
    Disconnect { receipt: String, reply: Reply },
}

/// A live subscription, as re-sent after a reconnect.
#[derive(Debug, Clone)]
pub(crate) struct SubSpec {
    pub id: String,
    pub ack: AckMode,
    /// The SUBSCRIBE frame without a receipt.
    pub frame: Frame,
}

struct SubEntry {
    spec: SubSpec,
    tx: mpsc::Sender<Message>,
}

enum Waiter {
    User(Reply),
    Disconnect(Reply),
    Resubscribed {
        disconnected_at: SystemTime,
        attempts: u32,
    },
}

/// What the server told us in CONNECTED, and what was negotiated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionInfo {
    /// Negotiated protocol version.
    pub version: Version,
    /// `server` header.
    pub server: Option<String>,
    /// `session` header.
    pub session: Option<String>,
    /// `user-name` header (the broker reports the authenticated user).
    pub user_name: Option<String>,
    /// Negotiated heart-beats in ms: (we send every, we expect every); 0 = off.
    pub heart_beat: (u32, u32),
    /// WebSocket subprotocol the server chose, if WebSocket.
    pub subprotocol: Option<String>,
    /// The whole CONNECTED frame.
    pub connected: Frame,
}

/// Everything the builder decided.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub endpoint: Endpoint,
    pub transport: TransportOptions,
    pub login: Option<(String, String)>,
    pub bearer: Option<String>,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub versions: Vec<Version>,
    pub heart_beat: (u32, u32),
    pub heart_beat_tolerance: f64,
    pub limits: Limits,
    pub connect_timeout: Duration,
    pub receipt_timeout: Duration,
    pub reconnect: Option<Backoff>,
    pub subscription_buffer: usize,
    pub command_buffer: usize,
    pub max_pending_receipts: usize,
}

/// State shared by the handles and the task.
pub(crate) struct Shared {
    pub info: Mutex<Arc<SessionInfo>>,
    pub events: broadcast::Sender<ConnectionEvent>,
    pub closed: AtomicBool,
    pub next_id: std::sync::atomic::AtomicU64,
}

/// An established STOMP session on a transport.
pub(crate) struct Session {
    transport: Transport,
    decoder: Decoder,
    buf: BytesMut,
    info: SessionInfo,
}

impl Session {
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }
}

fn connect_frame(opts: &Options) -> Frame {
    let versions: Vec<&str> = opts.versions.iter().map(|v| v.as_str()).collect();
    let mut f = Frame::new(Command::Connect)
        .with_header("accept-version", versions.join(","))
        .with_header(
            "host",
            opts.host
                .clone()
                .unwrap_or_else(|| opts.endpoint.host.clone()),
        )
        .with_header(
            "heart-beat",
            format!("{},{}", opts.heart_beat.0, opts.heart_beat.1),
        );
    if let Some((l, p)) = &opts.login {
        f.headers.push("login", l.clone());
        f.headers.push("passcode", p.clone());
    }
    if let Some(t) = &opts.bearer {
        f.headers.push("Authorization", format!("Bearer {t}"));
    }
    for (n, v) in &opts.headers {
        f.headers.push(n.clone(), v.clone());
    }
    f
}

/// Checks the server's reply to CONNECT and negotiates version and
/// heart-beats. Pure: fuzzed through [`crate::fuzzing`].
pub(crate) fn parse_connected(
    f: &Frame,
    offered: &[Version],
    heart_beat: (u32, u32),
) -> Result<SessionInfo, Error> {
    match f.command {
        Command::Connected => {}
        Command::Error => return Err(Error::Protocol(ServerError::from_frame(f))),
        other => {
            return Err(Error::UnexpectedFrame(format!(
                "{} instead of CONNECTED",
                other.as_str()
            )))
        }
    }
    let version = match f.header("version") {
        None => Version::V1_0,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(Version::parse)
            .ok_or_else(|| Error::UnexpectedFrame("CONNECTED with an unknown version".into()))?,
    };
    if !offered.contains(&version) {
        return Err(Error::UnexpectedFrame(format!(
            "server chose version {} which was not offered",
            version.as_str()
        )));
    }
    let (sx, sy) = match (version, f.header_str("heart-beat")) {
        (Version::V1_0, _) | (_, None) => (0, 0),
        (_, Some(v)) => parse_heart_beat(v)
            .map_err(|_| Error::UnexpectedFrame("CONNECTED with an invalid heart-beat".into()))?,
    };
    let (cx, cy) = heart_beat;
    let out = if cx == 0 || sy == 0 { 0 } else { cx.max(sy) };
    let inc = if cy == 0 || sx == 0 { 0 } else { cy.max(sx) };
    let text = |n: &str| f.header_str(n).map(str::to_owned);
    Ok(SessionInfo {
        version,
        server: text("server"),
        session: text("session"),
        user_name: text("user-name"),
        heart_beat: (out, inc),
        subprotocol: None,
        connected: f.clone(),
    })
}

/// Opens the transport and performs the CONNECT handshake, within the
/// connect timeout.
pub(crate) async fn establish(opts: &Options) -> Result<Session, Error> {
    let fut = async {
        let (mut transport, subprotocol) =
            Transport::connect(&opts.endpoint, &opts.transport).await?;
        let mut out = BytesMut::new();
        encode(&connect_frame(opts), Version::V1_0, &mut out);
        transport.write_all(&[out.freeze()]).await?;
        let mut decoder = Decoder::new(opts.limits);
        let mut buf = BytesMut::new();
        loop {
            match decoder.decode(&mut buf)? {
                Some(Decoded::HeartBeat) => continue,
                Some(Decoded::Frame(f)) => {
                    let mut info = parse_connected(&f, &opts.versions, opts.heart_beat)?;
                    info.subprotocol = subprotocol;
                    decoder.set_version(info.version);
                    return Ok(Session {
                        transport,
                        decoder,
                        buf,
                        info,
                    });
                }
                None => {}
            }
            if let Incoming::Closed(_) = transport.read(&mut buf, READ_CHUNK).await? {
                return Err(Error::io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before CONNECTED",
                )));
            }
        }
    };
    match tokio::time::timeout(opts.connect_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::ConnectTimeout(opts.connect_timeout)),
    }
}

/// Why serving a session stopped.
pub(crate) enum End {
    /// The connection failed; maybe reconnect.
    Lost(Error),
    /// DISCONNECT completed.
    Disconnected,
    /// Every handle is gone.
    Dropped,
}

/// The protocol state of the task, apart from I/O: subscriptions, receipts,
/// what to do with each inbound frame. Driven directly by the fuzz target.
pub(crate) struct State {
    pub version: Version,
    pub generation: u64,
    subs: HashMap<String, SubEntry>,
    receipts: HashMap<String, Waiter>,
    /// For the ACK handles of delivered messages; weak so that the task does
    /// not keep its own command channel open.
    cmd_tx: Option<mpsc::WeakSender<Cmd>>,
    events: broadcast::Sender<ConnectionEvent>,
    disconnecting: bool,
}

/// A message to hand to a subscription.
pub(crate) type Delivery = (mpsc::Sender<Message>, Message);

impl State {
    pub fn new(
        version: Version,
        cmd_tx: Option<mpsc::WeakSender<Cmd>>,
        events: broadcast::Sender<ConnectionEvent>,
    ) -> State {
        State {
            version,
            generation: 0,
            subs: HashMap::new(),
            receipts: HashMap::new(),
            cmd_tx,
            events,
            disconnecting: false,
        }
    }

    pub fn pending_receipts(&self) -> usize {
        self.receipts.len()
    }

    /// Registers a subscription (fuzzing and tests).
    pub(crate) fn add_subscription(&mut self, sub: SubSpec, tx: mpsc::Sender<Message>) {
        self.subs.insert(sub.id.clone(), SubEntry { spec: sub, tx });
    }

    /// Registers a receipt waiter (fuzzing and tests).
    pub(crate) fn add_receipt(&mut self, id: String, reply: Reply) {
        self.receipts.insert(id, Waiter::User(reply));
    }

    fn encode(&self, f: &Frame, out: &mut Vec<Bytes>) {
        let mut b = BytesMut::new();
        encode(f, self.version, &mut b);
        out.push(b.freeze());
    }

    /// Applies one command, appending the bytes to write to `out`.
    fn on_cmd(&mut self, cmd: Cmd, out: &mut Vec<Bytes>) {
        match cmd {
            Cmd::Frame {
                frame,
                receipt,
                reply,
                generation,
            } => {
                if generation.is_some_and(|g| g != self.generation) {
                    if let Some(r) = reply {
                        let _ = r.send(Err(Error::Disconnected));
                    }
                    return;
                }
                self.encode(&frame, out);
                match (receipt, reply) {
                    (Some(id), Some(r)) => {
                        self.receipts.insert(id, Waiter::User(r));
                    }
                    (None, Some(r)) => {
                        let _ = r.send(Ok(()));
                    }
                    _ => {}
                }
            }
            Cmd::Subscribe {
                sub,
                tx,
                receipt,
                reply,
            } => {
                let f = sub.frame.clone().with_header("receipt", receipt.clone());
                self.encode(&f, out);
                self.subs.insert(sub.id.clone(), SubEntry { spec: sub, tx });
                self.receipts.insert(receipt, Waiter::User(reply));
            }
            Cmd::Unsubscribe { id, receipt, reply } => {
                if self.subs.remove(&id).is_none() {
                    if let Some(r) = reply {
                        let _ = r.send(Ok(()));
                    }
                    return;
                }
                let mut f = Frame::new(Command::Unsubscribe).with_header("id", id);
                if let Some(r) = &receipt {
                    f.headers.push("receipt", r.clone());
                }
                self.encode(&f, out);
                match (receipt, reply) {
                    (Some(id), Some(r)) => {
                        self.receipts.insert(id, Waiter::User(r));
                    }
                    (None, Some(r)) => {
                        let _ = r.send(Ok(()));
                    }
                    _ => {}
                }
            }
            Cmd::Disconnect { receipt, reply } => {
                let f = Frame::new(Command::Disconnect).with_header("receipt", receipt.clone());
                self.encode(&f, out);
                self.disconnecting = true;
                self.receipts.insert(receipt, Waiter::Disconnect(reply));
            }
        }
    }

    /// Handles one inbound frame. `Ok(Some(..))`: a message to deliver;
    /// `Err(end)`: the session is over.
    pub fn on_frame(&mut self, f: Frame) -> Result<Option<Delivery>, End> {
        match f.command {
            Command::Message => Ok(self.message(f)),
            Command::Receipt => {
                let Some(id) = f.header_str("receipt-id") else {
                    tracing::debug!("RECEIPT without receipt-id ignored");
                    return Ok(None);
                };
                match self.receipts.remove(id) {
                    Some(Waiter::User(r)) => {
                        let _ = r.send(Ok(()));
                    }
                    Some(Waiter::Disconnect(r)) => {
                        let _ = r.send(Ok(()));
                        return Err(End::Disconnected);
                    }
                    Some(Waiter::Resubscribed {
                        disconnected_at,
                        attempts,
                    }) => {
                        let _ = self.events.send(ConnectionEvent::Reconnected {
                            disconnected_at,
                            reconnected_at: SystemTime::now(),
                            attempts,
                        });
                    }
                    None => tracing::debug!(receipt = id, "RECEIPT for nothing in flight"),
                }
                Ok(None)
            }
            Command::Error => {
                let se = ServerError::from_frame(&f);
                if let Some(id) = &se.receipt_id {
                    if let Some(Waiter::User(r)) = self.receipts.remove(id) {
                        let _ = r.send(Err(Error::Protocol(se.clone())));
                    }
                }
                Err(End::Lost(Error::Protocol(se)))
            }
            other => Err(End::Lost(Error::UnexpectedFrame(format!(
                "{} after the handshake",
                other.as_str()
            )))),
        }
    }

    fn message(&mut self, f: Frame) -> Option<Delivery> {
        let sub_id = f
            .header_str("subscription")
            .or_else(|| f.header_str("destination"))?;
        let Some(entry) = self.subs.get(sub_id) else {
            tracing::debug!(subscription = sub_id, "MESSAGE for no live subscription");
            return None;
        };
        let ack = if entry.spec.ack == AckMode::Auto {
            None
        } else {
            let mut headers = Vec::with_capacity(2);
            match self.version {
                Version::V1_2 => headers.push(("id", f.headers.get("ack")?.clone())),
                Version::V1_1 => {
                    headers.push(("message-id", f.headers.get("message-id")?.clone()));
                    headers.push(("subscription", Bytes::from(sub_id.to_owned())));
                }
                Version::V1_0 => headers.push(("message-id", f.headers.get("message-id")?.clone())),
            }
            self.cmd_tx
                .as_ref()
                .and_then(|w| w.upgrade())
                .map(|tx| AckInfo {
                    tx,
                    generation: self.generation,
                    headers,
                })
        };
        Some((entry.tx.clone(), Message::new(f, ack)))
    }

    /// The connection is gone: every request in flight fails. The ERROR that
    /// ended it (if any) already went to the request it named.
    fn fail_in_flight(&mut self) {
        for (_, w) in self.receipts.drain() {
            match w {
                Waiter::User(r) => {
                    let _ = r.send(Err(Error::Disconnected));
                }
                // The goal of DISCONNECT is reached.
                Waiter::Disconnect(r) => {
                    let _ = r.send(Ok(()));
                }
                Waiter::Resubscribed { .. } => {}
            }
        }
    }
}

type Reserve = Pin<
    Box<dyn Future<Output = Result<mpsc::OwnedPermit<Message>, mpsc::error::SendError<()>>> + Send>,
>;

/// Delivers `d` now if the subscription has room; otherwise returns what to
/// wait for.
fn deliver((tx, msg): Delivery) -> Option<(Reserve, Message)> {
    match tx.try_send(msg) {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(msg)) => Some((Box::pin(tx.reserve_owned()), msg)),
        // The Subscription was dropped; its UNSUBSCRIBE is on the way.
        Err(mpsc::error::TrySendError::Closed(_)) => None,
    }
}

/// Writes `out`, giving up after `limit` (a server that stops reading must
/// not hang the task: heart-beats and the receive deadline wait behind it).
async fn write(s: &mut Session, out: &[Bytes], limit: Duration) -> Result<(), Error> {
    match tokio::time::timeout(limit, s.transport.write_all(out)).await {
        Ok(r) => r,
        Err(_) => Err(Error::io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the server did not read what the client wrote",
        ))),
    }
}

pub(crate) struct Task {
    pub opts: Arc<Options>,
    pub cmd_rx: mpsc::Receiver<Cmd>,
    pub shared: Arc<Shared>,
    pub state: State,
    pub next_resub: u64,
    /// Commands received while reconnecting, applied on the next connection.
    pub deferred: Vec<Cmd>,
}

impl Task {
    /// Runs the connection (and its reconnects) until it is over.
    pub async fn run(mut self, mut session: Session) {
        loop {
            let end = self.serve(&mut session).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), session.transport.close()).await;
            let err = match end {
                End::Disconnected | End::Dropped => {
                    self.state.fail_in_flight();
                    break;
                }
                End::Lost(err) => err,
            };
            tracing::debug!(error = %err, "STOMP connection lost");
            self.state.fail_in_flight();
            let at = SystemTime::now();
            let _ = self.shared.events.send(ConnectionEvent::Disconnected {
                at,
                error: err.clone(),
            });
            if self.state.disconnecting {
                break;
            }
            let Some(backoff) = self.opts.reconnect.clone() else {
                break;
            };
            match self.reconnect(&backoff, at).await {
                Some(s) => session = s,
                None => break,
            }
        }
        self.close();
    }

    fn close(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.state.subs.clear();
        self.cmd_rx.close();
        let deferred = std::mem::take(&mut self.deferred);
        let queued = std::iter::from_fn(|| self.cmd_rx.try_recv().ok());
        for cmd in deferred.into_iter().chain(queued.collect::<Vec<_>>()) {
            let reply = match cmd {
                Cmd::Frame { reply, .. } | Cmd::Unsubscribe { reply, .. } => reply,
                Cmd::Subscribe { reply, .. } | Cmd::Disconnect { reply, .. } => Some(reply),
            };
            if let Some(r) = reply {
                let _ = r.send(Err(Error::Closed));
            }
        }
        let _ = self.shared.events.send(ConnectionEvent::Closed);
    }

    async fn reconnect(
        &mut self,
        backoff: &Backoff,
        disconnected_at: SystemTime,
    ) -> Option<Session> {
        let mut attempt: u32 = 0;
        loop {
            if self.cmd_rx.is_closed() {
                return None;
            }
            let delay = backoff.delay(attempt);
            attempt += 1;
            // While waiting, commands are kept for the next connection (up to
            // the command buffer's size), and a DISCONNECT ends it all.
            let wake = Instant::now() + delay;
            loop {
                let room = self.deferred.len() < self.opts.command_buffer;
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    cmd = self.cmd_rx.recv(), if room => match cmd {
                        None => return None,
                        Some(Cmd::Disconnect { reply, .. }) => {
                            let _ = reply.send(Ok(()));
                            return None;
                        }
                        Some(cmd) => self.deferred.push(cmd),
                    },
                }
            }
            match establish(&self.opts).await {
                Ok(mut s) => {
                    self.state.version = s.info.version;
                    self.state.generation += 1;
                    *self.shared.info.lock().unwrap_or_else(|e| e.into_inner()) =
                        Arc::new(s.info.clone());
                    let mut frames: Vec<Frame> = self
                        .state
                        .subs
                        .values()
                        .map(|e| e.spec.frame.clone())
                        .collect();
                    match frames.last_mut() {
                        None => {
                            let _ = self.shared.events.send(ConnectionEvent::Reconnected {
                                disconnected_at,
                                reconnected_at: SystemTime::now(),
                                attempts: attempt,
                            });
                        }
                        Some(last) => {
                            self.next_resub += 1;
                            let id = format!("resubscribe-{}", self.next_resub);
                            last.headers.push("receipt", id.clone());
                            self.state.receipts.insert(
                                id,
                                Waiter::Resubscribed {
                                    disconnected_at,
                                    attempts: attempt,
                                },
                            );
                        }
                    }
                    let mut out = Vec::with_capacity(frames.len());
                    for f in &frames {
                        self.state.encode(f, &mut out);
                    }
                    match write(&mut s, &out, self.opts.receipt_timeout).await {
                        Ok(()) => return Some(s),
                        Err(e) => {
                            self.state.fail_in_flight();
                            tracing::debug!(error = %e, "resubscribing failed");
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "reconnect attempt failed");
                    let _ = self
                        .shared
                        .events
                        .send(ConnectionEvent::ReconnectFailed { attempt, error: e });
                }
            }
            if backoff.max_attempts.is_some_and(|m| attempt >= m) {
                return None;
            }
        }
    }

    /// Serves one established session until it ends.
    async fn serve(&mut self, s: &mut Session) -> End {
        let (out_ms, in_ms) = s.info.heart_beat;
        let send_every = (out_ms > 0).then(|| Duration::from_millis(out_ms.into()));
        let read_limit = (in_ms > 0).then(|| {
            Duration::from_millis(in_ms.into()).mul_f64(self.opts.heart_beat_tolerance.max(1.0))
        });
        let mut last_write = Instant::now();
        let mut read_deadline = read_limit.map(|l| Instant::now() + l);
        let mut blocked: Option<(Reserve, Message)> = None;
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        if !self.deferred.is_empty() {
            let mut out = Vec::new();
            for cmd in std::mem::take(&mut self.deferred) {
                self.state.on_cmd(cmd, &mut out);
            }
            if let Err(e) = write(s, &out, self.opts.receipt_timeout).await {
                return End::Lost(e);
            }
        }
        loop {
            // Decode what is buffered before reading more.
            while blocked.is_none() {
                match s.decoder.decode(&mut s.buf) {
                    Err(e) => return End::Lost(Error::Codec(e)),
                    Ok(None) => break,
                    Ok(Some(Decoded::HeartBeat)) => {}
                    Ok(Some(Decoded::Frame(f))) => match self.state.on_frame(f) {
                        Ok(None) => {}
                        Ok(Some(d)) => blocked = deliver(d),
                        Err(end) => return end,
                    },
                }
            }
            let hb_at = send_every.map(|d| last_write + d);
            let deadline = if blocked.is_none() {
                read_deadline
            } else {
                None
            };
            let can_take = self.state.pending_receipts() < self.opts.max_pending_receipts;
            tokio::select! {
                biased;
                permit = async {
                    match blocked.as_mut() {
                        Some((reserve, _)) => reserve.await,
                        None => std::future::pending().await,
                    }
                }, if blocked.is_some() => {
                    if let (Ok(p), Some((_, msg))) = (permit, blocked.take()) {
                        p.send(msg);
                    }
                    blocked = None;
                    // The socket was not read while we waited for the
                    // subscriber: restart the heart-beat clock.
                    read_deadline = read_limit.map(|l| Instant::now() + l);
                }
                cmd = self.cmd_rx.recv(), if can_take => {
                    let Some(cmd) = cmd else { return End::Dropped };
                    let mut out = Vec::new();
                    self.state.on_cmd(cmd, &mut out);
                    while out.len() < WRITE_BATCH
                        && self.state.pending_receipts() < self.opts.max_pending_receipts
                    {
                        match self.cmd_rx.try_recv() {
                            Ok(cmd) => self.state.on_cmd(cmd, &mut out),
                            Err(_) => break,
                        }
                    }
                    if !out.is_empty() {
                        if let Err(e) = write(s, &out, self.opts.receipt_timeout).await {
                            return End::Lost(e);
                        }
                        last_write = Instant::now();
                    }
                }
                r = s.transport.read(&mut s.buf, READ_CHUNK), if blocked.is_none() => {
                    match r {
                        Ok(Incoming::Data { .. }) => {
                            read_deadline = read_limit.map(|l| Instant::now() + l);
                        }
                        Ok(Incoming::Closed(_)) => {
                            return End::Lost(Error::io(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "the server closed the connection",
                            )))
                        }
                        Err(e) => return End::Lost(e),
                    }
                }
                _ = tokio::time::sleep_until(hb_at.unwrap_or(far)), if hb_at.is_some() => {
                    let eol = [Bytes::from_static(b"\n")];
                    if let Err(e) = write(s, &eol, self.opts.receipt_timeout).await {
                        return End::Lost(e);
                    }
                    last_write = Instant::now();
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    return End::Lost(Error::HeartbeatTimeout(read_limit.unwrap_or_default()));
                }
            }
        }
    }
}
