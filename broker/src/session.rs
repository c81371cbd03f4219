//! The STOMP session state machine: frames in, frames out. No sockets here;
//! the connection task ([`crate::connection`]) feeds it and writes what it
//! produces, so every protocol rule is testable without I/O.

use std::{
    collections::{HashMap, VecDeque},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use bytes::Bytes;
use stomp_codec::{
    encode, AckMode, ClientFrame, Command, Connect, Frame, FrameAck, Headers, MessageTemplate,
    Version,
};

use crate::{
    acl::Permission,
    auth::{AuthError, Identity},
    core::BrokerCore,
    metrics::Refusal,
    outbound::{ConnShared, DeliveryKind, Outbound},
    output::{Batch, Output},
    replay::ReplayCursors,
    router::{
        parse_destination, DestKind, Message, RouteError, Subscriber, SubscriptionHandle,
        REPLY_QUEUE_PREFIX, TEMP_QUEUE_PREFIX,
    },
};

/// A protocol error: becomes exactly one ERROR frame, then the connection closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StompError {
    /// Short text for the `message` header.
    pub message: String,
    /// Longer explanation for the body.
    pub detail: String,
    /// Metric label.
    pub kind: &'static str,
    /// `receipt-id` for the ERROR when the failing frame asked for a receipt.
    pub receipt_id: Option<String>,
    /// Add `version:1.0,1.1,1.2` (failed version negotiation).
    pub with_versions: bool,
    /// The HTTP status for `status:` (a failed `[[app_http]]` handler).
    pub status: Option<u16>,
}

/// ERROR header listing, comma-separated, the receipt ids of SENDs to
/// `/app/...` that got no RECEIPT before the connection ended: each may or
/// may not be in Kafka (docs/kafka.md, "SEND to /app").
pub const UNCONFIRMED_RECEIPTS_HEADER: &str = "unconfirmed-receipt-ids";

impl StompError {
    /// An error with a message, a detail and a metric kind.
    pub fn new(kind: &'static str, message: impl Into<String>, detail: impl Into<String>) -> Self {
        StompError {
            message: message.into(),
            detail: detail.into(),
            kind,
            receipt_id: None,
            with_versions: false,
            status: None,
        }
    }

    fn with_receipt(mut self, receipt: Option<&str>) -> Self {
        if self.receipt_id.is_none() {
            self.receipt_id = receipt.map(str::to_owned);
        }
        self
    }
}

impl From<stomp_codec::Error> for StompError {
    fn from(e: stomp_codec::Error) -> Self {
        StompError::new(
            "protocol",
            e.message(),
            format!("The frame could not be processed: {}.", e.message()),
        )
    }
}

/// What the connection should do after a call into the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// Flush the output, then close (after DISCONNECT).
    Close,
}

#[derive(Debug)]
struct Unacked {
    ack_id: u64,
    msg: Arc<Message>,
}

#[derive(Debug)]
struct SubState {
    destination: Arc<str>,
    handle: SubscriptionHandle,
    sub: Subscriber,
    is_queue: bool,
    unacked: VecDeque<Unacked>,
    /// `subscription:<id>\n`, escaped for the session's version once at
    /// SUBSCRIBE: all an `auto` subscription adds to a live MESSAGE.
    own_line: Bytes,
}

#[derive(Debug)]
enum TxOp {
    Send(Frame),
    Ack(Frame),
}

/// An open transaction: its frames and the bytes they hold (charged to the
/// memory budget until COMMIT, ABORT or disconnect).
#[derive(Debug, Default)]
struct Tx {
    ops: Vec<TxOp>,
    bytes: usize,
}

/// Approximate bytes a buffered frame holds.
fn frame_cost(frame: &Frame) -> usize {
    frame.body.len()
        + frame
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 2)
            .sum::<usize>()
        + 64
}

/// Negotiated heart-beat intervals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartBeats {
    /// How often the server must send something.
    pub send: Option<Duration>,
    /// How often the client promised to send something.
    pub recv: Option<Duration>,
}

/// The server's side of heart-beating (`[heartbeat]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartBeatPolicy {
    /// The server sends heart-beats to clients that want them
    /// (`heartbeat.server` `sx` non-zero).
    pub send: bool,
    /// The server expects heart-beats from clients that offer them
    /// (`heartbeat.server` `sy` non-zero).
    pub recv: bool,
    /// `heartbeat.min_ms`.
    pub min_ms: u32,
    /// `heartbeat.max_ms`.
    pub max_ms: u32,
}

impl HeartBeatPolicy {
    /// The policy configured in `[heartbeat]`.
    pub fn from_config(server: (u32, u32), cfg: &crate::config::HeartbeatConfig) -> Self {
        let ms = |v: u64| u32::try_from(v).unwrap_or(u32::MAX).max(1);
        let min_ms = ms(cfg.min_ms);
        HeartBeatPolicy {
            send: server.0 != 0,
            recv: server.1 != 0,
            min_ms,
            max_ms: ms(cfg.max_ms).max(min_ms),
        }
    }
}

/// Heart-beat negotiation: returns the server's `heart-beat` answer
/// `(sx, sy)` and the intervals both sides then use.
///
/// The server follows the client: `sx` is the client's `cy` and `sy` its
/// `cx`, each clamped to `[min_ms, max_ms]` (0 where the client or the
/// policy says 0). The specification's arithmetic then applies: each
/// direction is 0 when either side says 0, else the larger of the two. The
/// server sends every `sx` (at least as often as the client asked: `sx` is
/// below `max(sx, cy)` only when `cy` is over `max_ms`) and expects the
/// client every `max(cx, sy)`.
pub fn negotiate_heart_beats(
    client: (u32, u32),
    policy: &HeartBeatPolicy,
) -> ((u32, u32), HeartBeats) {
    let (cx, cy) = client;
    let clamp = |on: bool, v: u32| {
        if on && v != 0 {
            v.clamp(policy.min_ms, policy.max_ms)
        } else {
            0
        }
    };
    let (sx, sy) = (clamp(policy.send, cy), clamp(policy.recv, cx));
    let ms = |v: u32| Duration::from_millis(u64::from(v));
    let beats = HeartBeats {
        send: (sx != 0 && cy != 0).then(|| ms(sx)),
        recv: (cx != 0 && sy != 0).then(|| ms(cx.max(sy))),
    };
    ((sx, sy), beats)
}

/// Per-connection frame-rate limiter: `governor`'s GCRA, equivalent to a
/// token bucket holding one second of frames (`None` = no limit). Lives in
/// the session, so it is per connection and allocates nothing per frame.
type RateLimit = Option<governor::DefaultDirectRateLimiter>;

fn rate_limit(per_sec: u32) -> RateLimit {
    // One clock for every limiter: building a `quanta` clock probes the CPU
    // (`cpuid`) each time, 6.6 % of the broker's CPU in the S4 connect
    // profile (docs/benchmarks.md); a clone is a copy.
    static CLOCK: std::sync::LazyLock<governor::clock::DefaultClock> =
        std::sync::LazyLock::new(Default::default);
    std::num::NonZeroU32::new(per_sec).map(|n| {
        governor::RateLimiter::direct_with_clock(governor::Quota::per_second(n), CLOCK.clone())
    })
}

/// Longest `unconfirmed-receipt-ids` value; ids that do not fit are left
/// out and `unconfirmed-receipt-ids-truncated:true` is added.
const MAX_UNCONFIRMED_HEADER: usize = 64 * 1024;

/// ERROR header added when [`UNCONFIRMED_RECEIPTS_HEADER`] could not list
/// every id: the client must then treat every unanswered receipt as
/// unconfirmed.
pub const UNCONFIRMED_TRUNCATED_HEADER: &str = "unconfirmed-receipt-ids-truncated";

/// `ids` joined with `,`, at most `max` bytes (whole ids only); and whether
/// all of them fit.
fn join_bounded(ids: &[String], max: usize) -> (String, bool) {
    let mut out = String::new();
    for id in ids {
        let extra = id.len() + usize::from(!out.is_empty());
        if out.len() + extra > max {
            return (out, false);
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(id);
    }
    (out, true)
}

/// Kafka writes one connection may have in flight (SEND to `/app/...`).
const MAX_KAFKA_INFLIGHT: usize = 1024;

/// A connection's SENDs to a backend (Kafka, or an `[[app_http]]`
/// handler) that have not been answered yet, shared with the tasks that
/// write them. When one fails the session stops writing to
/// Kafka, lets the others settle (each within `produce_timeout`), answers
/// the ones that succeeded with their RECEIPT and then ends with one ERROR
/// listing every receipt id without a RECEIPT (`unconfirmed-receipt-ids`).
#[derive(Debug, Default)]
struct BackendWrites {
    /// Writes started and not finished: (sequence number, receipt id).
    inflight: Vec<(u64, Option<String>)>,
    /// How many of them are `[[app_http]]` requests.
    app_requests: usize,
    next_seq: u64,
    /// The first failure; once set, no more SENDs are written.
    failed: Option<StompError>,
    /// Receipt ids of SENDs that failed or were not attempted (at most
    /// about `MAX_KAFKA_INFLIGHT` more than are in flight: past that the
    /// session ends at once).
    unconfirmed: Vec<String>,
    /// The ERROR was queued for the connection task.
    fatal_queued: bool,
    /// A DISCONNECT came while writes were in flight: its RECEIPT waits
    /// until they are answered ([`Outbound::Disconnect`]).
    disconnect_waiting: bool,
}

impl BackendWrites {
    /// Every receipt id the client will not get a RECEIPT for if the
    /// connection ends now.
    fn unconfirmed_receipts(&self) -> Vec<String> {
        let mut all = self.unconfirmed.clone();
        all.extend(self.inflight.iter().filter_map(|(_, r)| r.clone()));
        all
    }

    /// Starts one more write, or refuses it. `over_limit` is the error that
    /// ends the session when the caller's bound is reached. `Ok(Some(seq))`:
    /// go ahead; `Ok(None)`: the session is already ending, so nothing more
    /// is written and the SEND's receipt is only named in the coming ERROR;
    /// `Err`: so many receipts are unanswered that the ERROR goes out now
    /// (bounded: a client that keeps sending while the others settle gets
    /// the ERROR at once; it names every unanswered receipt, those still in
    /// flight included).
    fn begin(
        &mut self,
        receipt: Option<String>,
        over_limit: Option<StompError>,
        conn: &ConnShared,
    ) -> Result<Option<u64>, StompError> {
        if self.failed.is_none() {
            self.failed = over_limit;
        }
        if let Some(failed) = &self.failed {
            let full = self.unconfirmed.len() >= MAX_KAFKA_INFLIGHT;
            let failed = full.then(|| failed.clone());
            if let Some(r) = receipt {
                self.unconfirmed.push(r);
            }
            if let Some(err) = failed {
                return Err(err);
            }
            self.finish_if_settled(conn);
            return Ok(None);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.inflight.push((seq, receipt));
        Ok(Some(seq))
    }

    /// Write `seq` is answered: its RECEIPT on success; on failure the first
    /// error is kept (naming this receipt) and the receipt is unconfirmed.
    /// Then [`BackendWrites::finish_if_settled`].
    fn settle(
        &mut self,
        seq: u64,
        receipt: Option<String>,
        result: Result<(), StompError>,
        conn: &ConnShared,
    ) {
        self.inflight.retain(|(s, _)| *s != seq);
        match result {
            Ok(()) => {
                if let Some(r) = receipt {
                    conn.send_control(Outbound::Frame(Box::new(
                        Frame::new(Command::Receipt).with_header("receipt-id", r),
                    )));
                }
            }
            Err(mut err) => {
                if self.failed.is_none() {
                    err.receipt_id = receipt.clone();
                    self.failed = Some(err);
                }
                if let Some(r) = receipt {
                    self.unconfirmed.push(r);
                }
            }
        }
        self.finish_if_settled(conn);
    }

    /// Once nothing is in flight: queues the ERROR if a write failed, else
    /// lets a waiting DISCONNECT finish.
    fn finish_if_settled(&mut self, conn: &ConnShared) {
        if self.fatal_queued || !self.inflight.is_empty() {
            return;
        }
        if let Some(err) = &self.failed {
            self.fatal_queued = true;
            conn.send_control(Outbound::Fatal(Box::new(err.clone())));
        } else if self.disconnect_waiting {
            self.disconnect_waiting = false;
            conn.send_control(Outbound::Disconnect);
        }
    }
}

/// A SEND's headers that its MESSAGE carries on: all but the transport and
/// routing ones (`destination` is set per delivery, `message-id` and
/// `subscription`/`ack` by the broker).
fn passed_through_headers(frame: &Frame) -> Headers {
    let mut pass = Headers::with_capacity(frame.headers.len());
    for (n, v) in frame.headers.iter() {
        if !matches!(
            n.as_ref(),
            b"destination"
                | b"transaction"
                | b"receipt"
                | b"content-length"
                | b"message-id"
                | b"subscription"
                | b"ack"
        ) {
            pass.push(n.clone(), v.clone());
        }
    }
    pass
}

/// The ERROR for a connection with `MAX_KAFKA_INFLIGHT` Kafka writes unanswered.
fn kafka_writes_limit() -> StompError {
    StompError::new(
        "limit",
        "too many pending Kafka writes",
        format!(
            "At most {MAX_KAFKA_INFLIGHT} SENDs to Kafka may await acknowledgement per connection."
        ),
    )
}

fn lock_writes(w: &std::sync::Mutex<BackendWrites>) -> std::sync::MutexGuard<'_, BackendWrites> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

fn access_denied() -> StompError {
    StompError::new(
        "access_denied",
        "access denied",
        "You are not allowed to use this destination.",
    )
}

/// One client's STOMP session.
#[derive(Debug)]
pub struct Session {
    core: Arc<BrokerCore>,
    conn: Arc<ConnShared>,
    version: Option<Version>,
    identity: Identity,
    rate: RateLimit,
    /// Kafka and `[[app_http]]` writes in flight; created by the first
    /// such SEND (most sessions never make one).
    backend_writes: Option<Arc<std::sync::Mutex<BackendWrites>>>,
    heart_beats: HeartBeats,
    subs: HashMap<Arc<str>, SubState, foldhash::fast::RandomState>,
    /// The `auto` subscription the last live delivery went to, and its
    /// [`SubState::own_line`]: consecutive deliveries to it (a fan-out
    /// batch) skip the `subs` lookup. Cleared whenever `subs` changes, so
    /// the key is always a live subscription's own `Arc` (compared by
    /// pointer: a delivery carries the `Arc` its subscription was made with).
    last_auto: Option<(Arc<str>, Bytes)>,
    transactions: HashMap<String, Tx>,
    /// Bytes held by all open transactions.
    tx_bytes: usize,
    next_ack: u64,
    out: Output,
    /// A DISCONNECT's receipt, written after what was already queued.
    disconnect_receipt: Option<String>,
    /// DISCONNECT received; waiting for Kafka writes in flight.
    disconnecting: bool,
    /// Those writes are answered: the connection task closes.
    disconnect_ready: bool,
    /// Retained messages owed to subscriptions, replayed a slice at a
    /// time inside the byte budget ([`Session::pump_replay`]).
    replay: ReplayCursors,
    /// Private reply queues: `/temp-queue/<name>` (also the id of their
    /// implicit subscription) → the routable `/reply-queue/<opaque>` that
    /// `reply-to` is rewritten to. They end with the session.
    temp_queues: HashMap<Arc<str>, Arc<str>>,
    /// Bytes the temp-queue entries hold, charged to the memory budget.
    temp_bytes: usize,
    /// An anonymous session's private user name for `/user/queue/...`
    /// (created on first use; see [`Session::user_name`]).
    anon_name: Option<Arc<str>>,
}

impl Session {
    /// A session for a freshly accepted connection.
    pub fn new(core: Arc<BrokerCore>, conn: Arc<ConnShared>) -> Session {
        let rate = rate_limit(core.config.limits.max_frames_per_second);
        let out = Output::new(core.config.listen.ws_frame_per_message);
        let replay = ReplayCursors::new(core.metrics.clone());
        Session {
            core,
            conn,
            version: None,
            identity: Identity::default(),
            rate,
            backend_writes: None,
            heart_beats: HeartBeats::default(),
            subs: HashMap::default(),
            last_auto: None,
            transactions: HashMap::new(),
            tx_bytes: 0,
            next_ack: 1,
            out,
            disconnect_receipt: None,
            disconnecting: false,
            disconnect_ready: false,
            replay,
            temp_queues: HashMap::new(),
            temp_bytes: 0,
            anon_name: None,
        }
    }

    /// The session's backend-write state, created on first use.
    fn backend_writes(&mut self) -> &Arc<std::sync::Mutex<BackendWrites>> {
        self.backend_writes.get_or_insert_with(Arc::default)
    }

    /// The negotiated version, once CONNECTED was sent.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// The negotiated heart-beats.
    pub fn heart_beats(&self) -> HeartBeats {
        self.heart_beats
    }

    /// The authenticated user, if any.
    pub fn login(&self) -> Option<&str> {
        self.identity.user.as_deref()
    }

    /// When the session's credentials expire (JWT `exp`).
    pub fn expires_at(&self) -> Option<std::time::SystemTime> {
        self.identity.expires_at
    }

    /// Whether `frame` is a CONNECT that must be authenticated before the
    /// session can continue (see [`Session::on_connect`]).
    pub fn needs_authentication(&self, frame: &Frame) -> bool {
        self.version.is_none() && matches!(frame.command, Command::Connect | Command::Stomp)
    }

    /// Handles CONNECT once its credentials were checked.
    pub fn on_connect(
        &mut self,
        frame: Frame,
        auth: Result<Identity, AuthError>,
    ) -> Result<Flow, StompError> {
        self.core.metrics.frame_in(frame.command);
        let receipt = frame.header_str("receipt").map(str::to_owned);
        let result = (|| {
            let ClientFrame::Connect(c) = ClientFrame::parse(&frame, Version::V1_2)? else {
                return Err(StompError::new("protocol", "internal error", ""));
            };
            let identity = auth.map_err(|e| {
                tracing::info!(reason = %e, "authentication failed");
                StompError::new(
                    "auth",
                    "authentication failed",
                    "The credentials were not accepted.",
                )
            })?;
            self.connect(&c, identity)
        })();
        result.map_err(|e| e.with_receipt(receipt.as_deref()))?;
        // A system login (a Spring relay's "system" connection carries every
        // message the application sends) is not frame-rate limited.
        if self.login().is_some_and(|l| self.core.is_system_login(l)) {
            self.rate = None;
        }
        self.receipt(receipt.as_deref());
        Ok(Flow::Continue)
    }

    /// The connection handle.
    pub fn conn(&self) -> &Arc<ConnShared> {
        &self.conn
    }

    /// Everything produced so far, for one write; the caller credits its
    /// cost to the connection after writing.
    pub fn take_output(&mut self) -> Batch {
        self.out.take()
    }

    /// Drops pending output (when the peer is gone); credits its budget.
    pub fn discard_output(&mut self) {
        let cost = self.out.discard();
        self.conn.written(cost);
    }

    /// Whether output is waiting.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes of output waiting.
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// A DISCONNECT that waited for Kafka writes may now finish
    /// ([`Session::finish_disconnect`]).
    pub fn disconnect_ready(&self) -> bool {
        self.disconnect_ready
    }

    /// After DISCONNECT: the RECEIPT, once messages already queued for this
    /// connection have been added to the output.
    pub fn finish_disconnect(&mut self) {
        let receipt = self.disconnect_receipt.take();
        self.receipt(receipt.as_deref());
    }

    fn push_frame(&mut self, frame: &Frame) {
        let version = self.version.unwrap_or(Version::V1_2);
        encode(frame, version, self.out.buf());
        self.out.commit_checked(0);
        self.core.metrics.frames_out(frame.command, 1);
    }

    /// Queues a heart-beat EOL.
    pub fn push_heartbeat(&mut self) {
        stomp_codec::encode_heartbeat(self.out.buf());
        self.out.commit(true, 0);
    }

    /// The ERROR frame for `err` (the one place errors become frames).
    pub fn push_error(&mut self, err: &StompError) {
        self.core.metrics.error(err.kind);
        let mut f = Frame::new(Command::Error)
            .with_header("message", err.message.clone())
            .with_header("content-type", "text/plain;charset=utf-8");
        if let Some(r) = &err.receipt_id {
            f.headers.push("receipt-id", r.clone());
        }
        if err.with_versions {
            f.headers.push("version", "1.0,1.1,1.2");
        }
        if let Some(status) = err.status {
            f.headers.push("status", status.to_string());
        }
        // Whatever ends the session, name the SENDs to Kafka left without
        // an answer (the connection closes after this frame).
        let unconfirmed = self
            .backend_writes
            .as_deref()
            .map(|w| lock_writes(w).unconfirmed_receipts())
            .unwrap_or_default();
        if !unconfirmed.is_empty() {
            let (list, complete) = join_bounded(&unconfirmed, MAX_UNCONFIRMED_HEADER);
            f.headers.push(UNCONFIRMED_RECEIPTS_HEADER, list);
            if !complete {
                f.headers.push(UNCONFIRMED_TRUNCATED_HEADER, "true");
            }
        }
        f.body = Bytes::from(err.detail.clone());
        self.push_frame(&f);
    }

    fn receipt(&mut self, receipt: Option<&str>) {
        if let Some(r) = receipt {
            let f = Frame::new(Command::Receipt).with_header("receipt-id", r.to_owned());
            self.push_frame(&f);
        }
    }

    /// Handles one decoded client frame.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Flow, StompError> {
        self.core.metrics.frame_in(frame.command);
        if self.disconnecting {
            // After DISCONNECT nothing more is processed (STOMP: the client
            // sends nothing after it); the RECEIPT is on its way.
            return Ok(Flow::Continue);
        }
        let receipt = frame.header_str("receipt").map(str::to_owned);
        if self.rate.as_ref().is_some_and(|r| r.check().is_err()) {
            return Err(StompError::new(
                "rate_limit",
                "rate limit exceeded",
                format!(
                    "At most {} frames per second per connection.",
                    self.core.config.limits.max_frames_per_second
                ),
            ));
        }
        let flow = self
            .dispatch(frame, receipt.as_deref())
            .map_err(|e| e.with_receipt(receipt.as_deref()))?;
        // A SUBSCRIBE's replay starts right after its RECEIPT.
        self.pump_replay();
        Ok(flow)
    }

    /// Moves waiting retained messages into the output while they fit in
    /// the connection's replay share of its byte budget (see
    /// [`crate::replay`]). The connection task calls this at the end of
    /// every turn: a write or an ACK that gave bytes back resumes it.
    pub fn pump_replay(&mut self) {
        if self.replay.is_empty() {
            return;
        }
        if self.disconnecting {
            // Nothing follows a DISCONNECT's RECEIPT.
            self.replay.clear();
            return;
        }
        while let Some((sub, msg)) = self.replay.next(|cost| self.conn.try_add_replay(cost)) {
            self.encode_message(msg, &sub, DeliveryKind::Replayed);
        }
    }

    fn dispatch(&mut self, frame: Frame, receipt: Option<&str>) -> Result<Flow, StompError> {
        let Some(version) = self.version else {
            return match frame.command {
                // CONNECT goes through `on_connect`, after authentication.
                Command::Connect | Command::Stomp => Err(StompError::new(
                    "protocol",
                    "internal error",
                    "CONNECT was not authenticated.",
                )),
                _ => Err(StompError::new(
                    "not_connected",
                    "not connected",
                    format!(
                        "{} received before CONNECT; send CONNECT first.",
                        frame.command.as_str()
                    ),
                )),
            };
        };
        if !frame.command.is_client() {
            return Err(stomp_codec::Error::CommandNotAllowed.into());
        }
        let mut scratch = None;
        let parsed = parse_client_frame(&frame, version, &mut scratch)?;
        match parsed {
            ClientFrame::Connect(_) => {
                return Err(StompError::new(
                    "protocol",
                    "already connected",
                    "A second CONNECT on one connection is not allowed.",
                ))
            }
            ClientFrame::Send(s) => {
                if let Some(tx) = s.transaction {
                    self.authorize_send(s.destination)?;
                    let op = TxOp::Send(frame.clone());
                    self.add_to_transaction(tx, op, frame_cost(&frame))?;
                } else if self.send(&frame, s.destination, receipt)? {
                    // RECEIPT follows when Kafka acknowledged the write.
                    return Ok(Flow::Continue);
                }
            }
            ClientFrame::Subscribe(s) => self.subscribe(s.destination, s.id, s.ack)?,
            ClientFrame::Unsubscribe(u) => self.unsubscribe(u.id, u.destination)?,
            ClientFrame::Ack(a) | ClientFrame::Nack(a) => {
                if let Some(tx) = a.transaction {
                    let op = TxOp::Ack(frame.clone());
                    self.add_to_transaction(tx, op, frame_cost(&frame))?;
                } else {
                    self.ack(&a, frame.command == Command::Nack)?;
                }
            }
            ClientFrame::Begin(tx) => {
                if self.transactions.contains_key(tx) {
                    return Err(StompError::new(
                        "protocol",
                        "transaction already started",
                        format!("Transaction '{tx}' is already open."),
                    ));
                }
                let max = self.core.config.limits.max_transactions_per_connection;
                if self.transactions.len() >= max {
                    return Err(StompError::new(
                        "limit",
                        "too many transactions",
                        format!("At most {max} open transactions per connection."),
                    ));
                }
                self.transactions.insert(tx.to_owned(), Tx::default());
            }
            ClientFrame::Commit(tx) => {
                let ops = self.end_transaction(tx)?;
                for op in ops {
                    match op {
                        TxOp::Send(f) => {
                            let dest = f.header_str("destination").unwrap_or_default().to_owned();
                            self.send(&f, &dest, None)?;
                        }
                        TxOp::Ack(f) => {
                            let mut scratch = None;
                            if let ClientFrame::Ack(a) | ClientFrame::Nack(a) =
                                parse_client_frame(&f, version, &mut scratch)?
                            {
                                self.ack(&a, f.command == Command::Nack)?;
                            }
                        }
                    }
                }
            }
            ClientFrame::Abort(tx) => {
                self.end_transaction(tx)?;
            }
            ClientFrame::Disconnect => {
                self.disconnect_receipt = receipt.map(str::to_owned);
                // STOMP: the RECEIPT for DISCONNECT says every earlier frame
                // was processed, so SENDs to Kafka still in flight get their
                // RECEIPT (or the ERROR) first. Each settles within the
                // bridge's produce timeout.
                let Some(writes) = &self.backend_writes else {
                    return Ok(Flow::Close);
                };
                let mut w = lock_writes(writes);
                if w.inflight.is_empty() {
                    return Ok(Flow::Close);
                }
                w.disconnect_waiting = true;
                self.disconnecting = true;
                return Ok(Flow::Continue);
            }
        }
        self.receipt(receipt);
        Ok(Flow::Continue)
    }

    /// Adds a frame of `cost` bytes to open transaction `tx`, within the
    /// frame and byte limits and the memory budget.
    fn add_to_transaction(&mut self, tx: &str, op: TxOp, cost: usize) -> Result<(), StompError> {
        let limits = &self.core.config.limits;
        let (max_frames, max_bytes) = (
            limits.max_frames_per_transaction,
            limits.max_transaction_bytes,
        );
        let metrics = &self.core.metrics;
        let t = self
            .transactions
            .get_mut(tx)
            .ok_or_else(|| unknown_tx(tx))?;
        if t.ops.len() >= max_frames {
            return Err(StompError::new(
                "limit",
                "transaction too large",
                format!("A transaction may hold at most {max_frames} frames."),
            ));
        }
        if self.tx_bytes + cost > max_bytes {
            metrics.refused(Refusal::TransactionBytes);
            return Err(StompError::new(
                "limit",
                "transaction too large",
                format!(
                    "The open transactions of a connection may hold at most {max_bytes} bytes."
                ),
            ));
        }
        if !metrics.memory.try_charge(cost) {
            metrics.refused(Refusal::MemoryBudget);
            return Err(over_budget());
        }
        t.ops.push(op);
        t.bytes += cost;
        self.tx_bytes += cost;
        Ok(())
    }

    /// Closes transaction `tx` (COMMIT or ABORT), giving its bytes back.
    fn end_transaction(&mut self, tx: &str) -> Result<Vec<TxOp>, StompError> {
        let t = self.transactions.remove(tx).ok_or_else(|| unknown_tx(tx))?;
        self.tx_bytes -= t.bytes;
        self.core.metrics.memory.release(t.bytes);
        Ok(t.ops)
    }

    fn connect(&mut self, c: &Connect<'_>, identity: Identity) -> Result<(), StompError> {
        let Some(&version) = c.accept_version.first() else {
            let mut e = StompError::new(
                "version",
                "unsupported protocol version",
                "Supported protocol versions are 1.0, 1.1 and 1.2.",
            );
            e.with_versions = true;
            return Err(e);
        };
        self.version = Some(version);
        self.identity = identity;
        // STOMP 1.0 has no heart-beats.
        let client_hb = if version == Version::V1_0 {
            (0, 0)
        } else {
            c.heart_beat
        };
        let policy =
            HeartBeatPolicy::from_config(self.core.server_heart_beat, &self.core.config.heartbeat);
        let (offer, beats) = negotiate_heart_beats(client_hb, &policy);
        self.heart_beats = beats;
        let mut f = Frame::new(Command::Connected)
            .with_header("version", version.as_str())
            .with_header("heart-beat", format!("{},{}", offer.0, offer.1))
            .with_header(
                "server",
                concat!("stomp-broker/", env!("CARGO_PKG_VERSION")),
            )
            .with_header("session", format!("session-{}", self.conn.id));
        if let Some(user) = &self.identity.user {
            f.headers.push("user-name", user.clone());
        }
        self.push_frame(&f);
        Ok(())
    }

    fn authorize_send(&self, destination: &str) -> Result<(), StompError> {
        crate::router::validate_destination(destination)
            .map_err(|e| route_error(e, destination))?;
        // A reply queue's name is its capability: whoever was handed it
        // (in a `reply-to`) may send to it, whatever the ACL (as RabbitMQ).
        if matches!(parse_destination(destination), Ok(DestKind::ReplyQueue(_))) {
            return Ok(());
        }
        if self
            .core
            .acl
            .allows(&self.identity, destination, Permission::Send)
        {
            Ok(())
        } else {
            Err(access_denied())
        }
    }

    /// Publishes a SEND. Returns true when the RECEIPT is deferred (a Kafka
    /// write that answers later).
    fn send(
        &mut self,
        frame: &Frame,
        destination: &str,
        receipt: Option<&str>,
    ) -> Result<bool, StompError> {
        self.authorize_send(destination)?;
        let rewritten = self.temp_reply_to(frame)?;
        let frame = rewritten.as_ref().unwrap_or(frame);
        if let Some(route) = self
            .core
            .app_http
            .as_ref()
            .and_then(|a| a.route(destination))
        {
            return self.send_to_app_http(route, frame, destination, receipt);
        }
        if let Some(bridge) = self
            .core
            .bridge()
            .filter(|b| b.is_app_destination(destination))
        {
            return self.send_to_kafka(bridge.clone(), frame, destination, receipt);
        }
        if let Some(queues) = self
            .core
            .cluster()
            .and_then(|c| c.queues())
            .filter(|_| self.core.router.is_competing_queue(destination))
        {
            return self.send_to_cluster_queue(queues.clone(), frame, destination, receipt);
        }
        let pass = passed_through_headers(frame);
        let id = self.core.next_message_id();
        // Cluster: topic and user destinations go to the other nodes too
        // (after the local delivery; queues stay node-local).
        let relay = self
            .core
            .cluster()
            .filter(|_| {
                matches!(
                    parse_destination(destination),
                    Ok(DestKind::Topic(_) | DestKind::User(_))
                )
            })
            .map(|c| (c.clone(), pass.clone()));
        let msg = Arc::new(Message::new(destination, &id, pass, frame.body.clone()));
        self.core
            .router
            .publish(msg)
            .map_err(|e| route_error(e, destination))?;
        if let Some((cluster, pass)) = relay {
            let mut key = itoa::Buffer::new();
            cluster.relay(
                key.format(self.conn.id),
                destination,
                &id,
                self.identity.user.as_deref(),
                &pass,
                &frame.body,
            );
        }
        Ok(false)
    }

    /// A SEND with `reply-to:/temp-queue/<name>` (RabbitMQ's temp queues):
    /// the frame with `reply-to` rewritten to this connection's private
    /// `/reply-queue/<opaque>`, created on first use together with its
    /// implicit `auto` subscription `/temp-queue/<name>`. `None` when the
    /// frame has no such `reply-to`.
    fn temp_reply_to(&mut self, frame: &Frame) -> Result<Option<Frame>, StompError> {
        let Some(reply_to) = frame
            .header_str("reply-to")
            .filter(|r| r.starts_with(TEMP_QUEUE_PREFIX))
        else {
            return Ok(None);
        };
        let reply_dest = match self.temp_queues.get(reply_to) {
            Some(d) => d.clone(),
            None => self.create_temp_queue(reply_to)?,
        };
        let mut f = Frame::new(frame.command);
        f.body = frame.body.clone();
        let mut done = false;
        for (n, v) in frame.headers.iter() {
            if n.as_ref() == b"reply-to" {
                // Only the first counts; repeats would only confuse.
                if !done {
                    f.headers
                        .push(n.clone(), Bytes::copy_from_slice(reply_dest.as_bytes()));
                    done = true;
                }
            } else {
                f.headers.push(n.clone(), v.clone());
            }
        }
        Ok(Some(f))
    }

    /// Creates the reply queue for `temp` (`/temp-queue/<name>`): bounded
    /// per connection and charged to the memory budget.
    fn create_temp_queue(&mut self, temp: &str) -> Result<Arc<str>, StompError> {
        let name = &temp[TEMP_QUEUE_PREFIX.len()..];
        if name.is_empty()
            || crate::router::validate_destination(temp).is_err()
            || name.split(['/', '.']).any(|s| s == "*" || s == "#")
        {
            return Err(StompError::new(
                "destination",
                "invalid reply-to",
                format!("reply-to '{temp}': use /temp-queue/<name> with a plain name."),
            ));
        }
        let max = self.core.config.queues.max_temp_queues_per_connection;
        if self.temp_queues.len() >= max {
            return Err(StompError::new(
                "limit",
                "too many temporary queues",
                format!("At most {max} /temp-queue/ reply queues per connection."),
            ));
        }
        if self.subs.contains_key(temp) {
            return Err(StompError::new(
                "protocol",
                "duplicate subscription id",
                format!(
                    "Subscription id '{temp}' is taken: it is the implicit subscription of reply-to:{temp}."
                ),
            ));
        }
        let reply_dest: Arc<str> =
            Arc::from(format!("{REPLY_QUEUE_PREFIX}{}", unguessable_token()));
        let cost = TEMP_QUEUE_OVERHEAD + 2 * temp.len() + reply_dest.len();
        let metrics = &self.core.metrics;
        if !metrics.memory.try_charge(cost) {
            metrics.refused(Refusal::MemoryBudget);
            return Err(over_budget());
        }
        let id: Arc<str> = Arc::from(temp);
        let subscribed =
            self.core
                .router
                .subscribe(&reply_dest, &self.conn, id.clone(), AckMode::Auto);
        let (handle, sub) = match subscribed {
            Ok(s) => s,
            Err(e) => {
                metrics.memory.release(cost);
                return Err(route_error(e, &reply_dest));
            }
        };
        self.temp_bytes += cost;
        let own_line = self.own_line(&id);
        self.last_auto = None;
        self.subs.insert(
            id.clone(),
            SubState {
                destination: reply_dest.clone(),
                handle,
                sub,
                is_queue: false,
                unacked: VecDeque::new(),
                own_line,
            },
        );
        self.temp_queues.insert(id, reply_dest.clone());
        Ok(reply_dest)
    }

    /// SEND to an application destination: written to Kafka by the bridge,
    /// stamped with the session's user, session id and message id (see
    /// [`kafka_bridge::record_headers`]). The RECEIPT (if asked for) is sent
    /// only after Kafka acknowledged. A failed write ends the session, but
    /// only once every other write in flight has settled (see
    /// [`BackendWrites`]), so each receipted SEND gets a RECEIPT or is named in
    /// the ERROR.
    fn send_to_kafka(
        &mut self,
        bridge: kafka_bridge::BridgeHandle,
        frame: &Frame,
        destination: &str,
        receipt: Option<&str>,
    ) -> Result<bool, StompError> {
        let receipt = receipt.map(str::to_owned);
        let writes = self.backend_writes().clone();
        let seq = {
            let mut w = lock_writes(&writes);
            let over = (w.inflight.len() >= MAX_KAFKA_INFLIGHT).then(kafka_writes_limit);
            match w.begin(receipt.clone(), over, &self.conn)? {
                Some(seq) => seq,
                None => return Ok(receipt_is_deferred(frame)),
            }
        };
        let headers: Vec<(String, String)> = frame
            .headers
            .iter()
            .filter(|(n, _)| !matches!(n.as_ref(), b"transaction" | b"content-length"))
            .filter_map(|(n, v)| {
                Some((
                    String::from_utf8(n.to_vec()).ok()?,
                    String::from_utf8(v.to_vec()).ok()?,
                ))
            })
            .collect();
        let stamp = kafka_bridge::SendStamp {
            user: self.identity.user.clone(),
            session: format!("session-{}", self.conn.id),
            message_id: self.core.next_message_id(),
        };
        let body = frame.body.clone();
        let destination = destination.to_owned();
        let conn = self.conn.clone();
        tokio::spawn(async move {
            let result = bridge.produce(&destination, &headers, body, &stamp).await;
            let result = result.map_err(|e| {
                tracing::warn!(%destination, error = %e, "Kafka write failed");
                StompError::new(
                    "kafka",
                    format!("kafka write failed: {e}"),
                    format!(
                        "The message could not be written to Kafka: {e}. \
                         Every SEND named in {UNCONFIRMED_RECEIPTS_HEADER} may or may not \
                         be in Kafka: retry it with the same idempotency-key."
                    ),
                )
            });
            lock_writes(&writes).settle(seq, receipt, result, &conn);
        });
        Ok(receipt_is_deferred(frame))
    }

    /// Cluster mode, SEND to `/queue/...`: produced to the queue topic,
    /// whose owner hands it to one consumer somewhere in the cluster (see
    /// [`crate::cluster_queues`]); not routed here now. The RECEIPT (if
    /// asked for) follows Kafka's acknowledgement, tracked like a Kafka
    /// write ([`BackendWrites`]): a failure ends the session with ERROR
    /// naming the unconfirmed receipts.
    fn send_to_cluster_queue(
        &mut self,
        queues: Arc<crate::cluster_queues::ClusterQueues>,
        frame: &Frame,
        destination: &str,
        receipt: Option<&str>,
    ) -> Result<bool, StompError> {
        let receipt = receipt.map(str::to_owned);
        let writes = self.backend_writes().clone();
        let seq = {
            let mut w = lock_writes(&writes);
            let over = (w.inflight.len() >= MAX_KAFKA_INFLIGHT).then(kafka_writes_limit);
            match w.begin(receipt.clone(), over, &self.conn)? {
                Some(seq) => seq,
                None => return Ok(receipt_is_deferred(frame)),
            }
        };
        let pass = passed_through_headers(frame);
        let id = self.core.next_message_id();
        let queue = destination.strip_prefix("/queue/").unwrap_or(destination);
        let sent = queues.send(
            queue,
            destination,
            &id,
            self.identity.user.as_deref(),
            &pass,
            &frame.body,
        );
        let destination = destination.to_owned();
        let conn = self.conn.clone();
        tokio::spawn(async move {
            let result = sent.await.map_err(|e| {
                tracing::warn!(%destination, error = %e, "cluster queue write failed");
                StompError::new(
                    "kafka",
                    format!("queue write failed: {e}"),
                    format!(
                        "The message to {destination} could not be written to Kafka: {e}. \
                         Every SEND named in {UNCONFIRMED_RECEIPTS_HEADER} may or may not \
                         have been accepted: send it again."
                    ),
                )
            });
            lock_writes(&writes).settle(seq, receipt, result, &conn);
        });
        Ok(receipt_is_deferred(frame))
    }

    /// Where the `[[app_http]]` handler's answer to `frame` goes: its
    /// `reply-to` (checked now as a SEND of the sender's; `/user/queue/...`
    /// and `/user/topic/...` mean the sender's own), else the sender's
    /// `/user/queue/replies` (an anonymous sender's private user name, see
    /// [`Session::user_name`]).
    fn app_reply_destination(&mut self, frame: &Frame) -> Result<String, StompError> {
        let Some(reply_to) = frame.header_str("reply-to") else {
            return Ok(format!("/user/{}/queue/replies", self.user_name()));
        };
        if let Some(rest) = reply_to.strip_prefix("/user/") {
            if rest.starts_with("queue/") || rest.starts_with("topic/") {
                crate::router::validate_destination(reply_to)
                    .map_err(|e| route_error(e, reply_to))?;
                return Ok(format!("/user/{}/{rest}", self.user_name()));
            }
        }
        if reply_to.starts_with(crate::app_http::APP_PREFIX) {
            return Err(StompError::new(
                "destination",
                "invalid reply-to",
                format!("reply-to '{reply_to}': a reply cannot go to an /app destination."),
            ));
        }
        self.authorize_send(reply_to)?;
        parse_destination(reply_to).map_err(|e| route_error(e, reply_to))?;
        Ok(reply_to.to_owned())
    }

    /// The name `/user/queue/...` resolves with: the authenticated user, or
    /// for an anonymous session a private, unguessable name of its own
    /// (`anon-<128 random bits>`), as Spring uses the session for anonymous
    /// users.
    fn user_name(&mut self) -> Arc<str> {
        if let Some(u) = &self.identity.user {
            return Arc::from(u.as_str());
        }
        self.anon_name
            .get_or_insert_with(|| Arc::from(format!("anon-{}", unguessable_token())))
            .clone()
    }

    /// SEND to a destination an `[[app_http]]` route handles: POSTed to its
    /// URL by a task, tracked like a Kafka write ([`BackendWrites`]). A 2xx
    /// answer with a body is published to the reply destination, then the
    /// RECEIPT follows; anything else ends the session with ERROR
    /// `app handler failed` and `status:`.
    fn send_to_app_http(
        &mut self,
        route: usize,
        frame: &Frame,
        destination: &str,
        receipt: Option<&str>,
    ) -> Result<bool, StompError> {
        let reply_dest = self.app_reply_destination(frame)?;
        let receipt = receipt.map(str::to_owned);
        let max = self.core.config.limits.max_app_requests_per_connection;
        let writes = self.backend_writes().clone();
        let seq = {
            let mut w = lock_writes(&writes);
            let over = (w.app_requests >= max).then(|| {
                StompError::new(
                    "limit",
                    "too many pending app requests",
                    format!(
                        "At most {max} SENDs to /app handlers may await their answer per connection \
                         (limits.max_app_requests_per_connection)."
                    ),
                )
            });
            match w.begin(receipt.clone(), over, &self.conn)? {
                Some(seq) => {
                    w.app_requests += 1;
                    seq
                }
                None => return Ok(receipt_is_deferred(frame)),
            }
        };
        let headers: Vec<(String, String)> = frame
            .headers
            .iter()
            .filter_map(|(n, v)| {
                Some((
                    String::from_utf8(n.to_vec()).ok()?,
                    String::from_utf8(v.to_vec()).ok()?,
                ))
            })
            .collect();
        let request = crate::app_http::AppRequest {
            destination: destination.to_owned(),
            user: self.identity.user.clone(),
            session: format!("session-{}", self.conn.id),
            message_id: self.core.next_message_id(),
            content_type: frame.header_str("content-type").map(str::to_owned),
            headers,
            body: frame.body.clone(),
        };
        let core = self.core.clone();
        let conn = self.conn.clone();
        let destination = destination.to_owned();
        tokio::spawn(async move {
            let result = match core.app_http.as_ref() {
                Some(app) => app.call(route, request).await,
                None => Err(crate::app_http::Failure::Unreachable("no handlers".into())),
            };
            // Deliver the answer before the RECEIPT (and before the lock:
            // publishing takes the router's).
            let delivered = match result {
                Ok(Some(reply)) => {
                    let mut h = Headers::with_capacity(1);
                    if let Some(ct) = reply.content_type {
                        h.push("content-type", ct);
                    }
                    let id = core.next_message_id();
                    let msg = Arc::new(Message::new(&reply_dest, &id, h, reply.body));
                    core.router.publish(msg).map(drop).map_err(|e| {
                        let e = route_error(e, &reply_dest);
                        StompError::new(
                            "app_http",
                            "app reply not delivered",
                            format!(
                                "The handler for {destination} answered, but its reply could not \
                                 be delivered to {reply_dest}: {}",
                                e.detail
                            ),
                        )
                    })
                }
                Ok(None) => Ok(()),
                Err(f) => {
                    tracing::warn!(%destination, error = %f, "app handler failed");
                    let mut e = StompError::new(
                        "app_http",
                        "app handler failed",
                        format!("The handler for {destination} failed: {f}."),
                    );
                    e.status = Some(f.status());
                    Err(e)
                }
            };
            let mut w = lock_writes(&writes);
            w.app_requests = w.app_requests.saturating_sub(1);
            w.settle(seq, receipt, delivered, &conn);
        });
        Ok(receipt_is_deferred(frame))
    }

    /// The router destination for a SUBSCRIBE, after authorization.
    /// `/user/queue/...` and `/user/topic/...` mean this user's own
    /// destinations (`/user/<name>/queue/...`), always permitted to an
    /// authenticated user; naming another user is denied.
    fn resolve_subscription(&mut self, destination: &str) -> Result<String, StompError> {
        crate::router::validate_destination(destination)
            .map_err(|e| route_error(e, destination))?;
        if !crate::status::may_subscribe_stats(
            &self.core.config.status,
            self.identity.user.as_deref(),
            destination,
        ) {
            return Err(access_denied());
        }
        if destination.starts_with(REPLY_QUEUE_PREFIX) {
            // Only the connection that created a reply queue receives from it.
            return Err(access_denied());
        }
        if destination.starts_with(TEMP_QUEUE_PREFIX) {
            return Err(StompError::new(
                "destination",
                "cannot subscribe to /temp-queue/",
                "Put reply-to:/temp-queue/<name> on a SEND instead: replies arrive on the \
                 implicit subscription with id /temp-queue/<name>.",
            ));
        }
        if let Some(rest) = destination.strip_prefix("/user/") {
            let own = rest.starts_with("queue/") || rest.starts_with("topic/");
            return match (&self.identity.user, own) {
                (Some(user), true) => Ok(format!("/user/{user}/{rest}")),
                // An anonymous session's own: replies of `[[app_http]]`
                // handlers (its private name, see `user_name`).
                (None, true) if self.core.app_http.is_some() => {
                    Ok(format!("/user/{}/{rest}", self.user_name()))
                }
                _ => Err(access_denied()),
            };
        }
        if self
            .core
            .acl
            .allows(&self.identity, destination, Permission::Subscribe)
        {
            Ok(destination.to_owned())
        } else {
            Err(access_denied())
        }
    }

    fn subscribe(&mut self, destination: &str, id: &str, ack: AckMode) -> Result<(), StompError> {
        let resolved = self.resolve_subscription(destination)?;
        let destination = resolved.as_str();
        if self.subs.contains_key(id) {
            return Err(StompError::new(
                "protocol",
                "duplicate subscription id",
                format!("Subscription id '{id}' is already in use on this connection."),
            ));
        }
        let max = self.core.config.limits.max_subscriptions_per_connection;
        // Temp queues' implicit subscriptions have their own cap.
        if self.subs.len() - self.temp_queues.len() >= max {
            return Err(StompError::new(
                "limit",
                "too many subscriptions",
                format!("At most {max} subscriptions per connection."),
            ));
        }
        let id: Arc<str> = Arc::from(id);
        let (handle, sub) = self
            .core
            .router
            .subscribe(destination, &self.conn, id.clone(), ack)
            .map_err(|e| route_error(e, destination))?;
        let is_queue = self.core.router.is_competing_queue(destination);
        let own_line = self.own_line(&id);
        self.last_auto = None;
        self.subs.insert(
            id.clone(),
            SubState {
                destination: Arc::from(destination),
                handle,
                sub,
                is_queue,
                unacked: VecDeque::new(),
                own_line,
            },
        );
        if !is_queue {
            // Late subscriber: what was retained here comes right after the
            // RECEIPT, before anything published later.
            let msgs = self.core.replay_for(destination, &self.conn, &id);
            self.replay.add(id, msgs);
        }
        Ok(())
    }

    fn unsubscribe(
        &mut self,
        id: Option<&str>,
        destination: Option<&str>,
    ) -> Result<(), StompError> {
        let key: Option<Arc<str>> = match (id, destination) {
            (Some(id), _) => self.subs.get_key_value(id).map(|(k, _)| k.clone()),
            (None, Some(d)) => self
                .subs
                .iter()
                .find(|(_, s)| &*s.destination == d)
                .map(|(k, _)| k.clone()),
            (None, None) => None,
        };
        let Some(key) = key else {
            return Err(StompError::new(
                "protocol",
                "unknown subscription",
                format!(
                    "No subscription '{}' on this connection.",
                    id.or(destination).unwrap_or("")
                ),
            ));
        };
        self.last_auto = None;
        if let Some(st) = self.subs.remove(&key) {
            self.drop_sub(st);
        }
        self.replay.drop_sub(&key);
        // Unsubscribing a temp queue's implicit subscription ends the queue.
        if self.temp_queues.remove(&key).is_some() {
            self.release_temp(&key);
        }
        Ok(())
    }

    /// Gives back the memory-budget charge of temp queue `temp`.
    fn release_temp(&mut self, temp: &str) {
        let cost = TEMP_QUEUE_OVERHEAD + 2 * temp.len() + REPLY_QUEUE_PREFIX.len() + TOKEN_LEN;
        self.temp_bytes -= cost;
        self.core.metrics.memory.release(cost);
    }

    fn drop_sub(&mut self, st: SubState) {
        self.core.router.unsubscribe(&st.handle);
        let unacked: usize = st.unacked.iter().map(|u| u.msg.cost).sum();
        self.conn.written(unacked);
        if st.is_queue && !st.unacked.is_empty() {
            self.core
                .router
                .requeue(st.unacked.into_iter().map(|u| u.msg).collect(), None);
        }
    }

    fn ack(&mut self, a: &FrameAck<'_>, nack: bool) -> Result<(), StompError> {
        let version = self.version.unwrap_or(Version::V1_2);
        let found = match version {
            Version::V1_2 => {
                a.id.and_then(|id| id.parse::<u64>().ok())
                    .and_then(|ack_id| {
                        self.subs.iter().find_map(|(k, s)| {
                            s.unacked
                                .binary_search_by_key(&ack_id, |u| u.ack_id)
                                .ok()
                                .map(|pos| (k.clone(), pos))
                        })
                    })
            }
            // 1.0/1.1: the named subscription first; when the message is
            // not there (a client that got the `subscription` header wrong),
            // by `message-id` alone, as RabbitMQ does.
            _ => a.message_id.and_then(|mid| {
                let find = |named: bool| {
                    self.subs
                        .iter()
                        .filter(|(k, _)| !named || a.subscription.is_none_or(|s| &***k == s))
                        .find_map(|(k, s)| {
                            s.unacked
                                .iter()
                                .position(|u| &*u.msg.message_id == mid)
                                .map(|pos| (k.clone(), pos))
                        })
                };
                find(true).or_else(|| find(false))
            }),
        };
        let Some((key, pos)) = found else {
            return Err(StompError::new(
                "protocol",
                "unknown ack id",
                format!(
                    "No unacknowledged message '{}' on this connection.",
                    a.id.or(a.message_id).unwrap_or("")
                ),
            ));
        };
        let Some(st) = self.subs.get_mut(&key) else {
            return Ok(());
        };
        let taken: Vec<Unacked> = match st.sub.ack {
            AckMode::Client => st.unacked.drain(..=pos).collect(),
            _ => st.unacked.remove(pos).into_iter().collect(),
        };
        // Acknowledged (or given back): out of the connection's byte budget.
        self.conn.written(taken.iter().map(|u| u.msg.cost).sum());
        if st.is_queue {
            st.sub.inflight.fetch_sub(taken.len(), Relaxed);
            let dest = st.destination.clone();
            if !nack {
                for u in &taken {
                    if let Some(t) = &u.msg.ticket {
                        t.ack();
                    }
                }
            }
            if nack {
                // NACK: redeliver to another consumer; this one gets it back
                // only when nobody else can take it.
                self.core
                    .router
                    .requeue(taken.into_iter().map(|u| u.msg).collect(), Some(st.sub.key));
            }
            self.core.router.queue_ready(&dest);
        }
        Ok(())
    }

    /// Handles an item from the connection's outbound queue.
    pub fn on_outbound(&mut self, item: Outbound) -> Result<(), StompError> {
        match item {
            Outbound::Message { msg, sub, kind } => {
                if kind == DeliveryKind::Live && !self.replay.is_empty() {
                    // Newer than any retained message of its destination
                    // still waiting for this subscription.
                    self.replay.superseded(&sub, &msg.destination);
                }
                self.encode_message(msg, &sub, kind);
                Ok(())
            }
            Outbound::Replay { sub, msgs } => {
                if self.subs.contains_key(&sub) {
                    self.replay.add(sub, msgs);
                } else {
                    // Unsubscribed (or closed) meanwhile.
                    self.core
                        .metrics
                        .replay_skipped
                        .fetch_add(msgs.len() as u64, Relaxed);
                }
                Ok(())
            }
            Outbound::Frame(f) => {
                self.push_frame(&f);
                Ok(())
            }
            Outbound::Fatal(e) => Err(*e),
            Outbound::Disconnect => {
                self.disconnect_ready = true;
                Ok(())
            }
        }
    }

    /// `subscription:<id>\n` for this session's version.
    fn own_line(&self, id: &str) -> Bytes {
        let version = self.version.unwrap_or(Version::V1_2);
        MessageTemplate::own_header_lines(version, &[("subscription", id.as_bytes())])
    }

    fn encode_message(&mut self, msg: Arc<Message>, sub: &Arc<str>, kind: DeliveryKind) {
        let version = self.version.unwrap_or(Version::V1_2);
        if kind == DeliveryKind::Live {
            if let Some((last, line)) = &self.last_auto {
                if Arc::ptr_eq(last, sub) {
                    // Fast path: a live message to the same `auto`
                    // subscription as the last one.
                    msg.template
                        .encode_with_lines(version, line, self.out.buf());
                    self.out.commit_message(msg.text, msg.cost);
                    if let Some(t) = &msg.ticket {
                        t.ack();
                    }
                    self.core.metrics.frames_out(Command::Message, 1);
                    return;
                }
            }
        }
        let cost = msg.cost;
        let max_unacked = self.core.config.limits.max_unacked_per_subscription;
        let Some(st) = self.subs.get_mut(sub) else {
            // Unsubscribed while the message was in flight.
            self.conn.written(cost);
            if self.core.router.is_competing_queue(&msg.destination) {
                self.core.router.requeue(vec![msg], None);
            }
            return;
        };
        if st.sub.ack == AckMode::Auto && kind == DeliveryKind::Live {
            msg.template
                .encode_with_lines(version, &st.own_line, self.out.buf());
            self.out.commit_message(msg.text, cost);
            if let Some(t) = &msg.ticket {
                t.ack();
            }
            self.core.metrics.frames_out(Command::Message, 1);
            self.last_auto = Some((sub.clone(), st.own_line.clone()));
            return;
        }
        let mut ack_buf = itoa::Buffer::new();
        let mut headers: [(&str, &[u8]); 3] =
            [("subscription", sub.as_bytes()), ("", b""), ("", b"")];
        let mut n = 1;
        if st.sub.ack != AckMode::Auto {
            if !st.is_queue && st.unacked.len() >= max_unacked {
                // A topic subscriber that does not acknowledge: drop, count.
                self.core.metrics.messages_dropped.fetch_add(1, Relaxed);
                self.conn.written(cost);
                return;
            }
            let ack_id = self.next_ack;
            self.next_ack += 1;
            st.unacked.push_back(Unacked {
                ack_id,
                msg: msg.clone(),
            });
            headers[n] = ("ack", ack_buf.format(ack_id).as_bytes());
            n += 1;
        }
        // An unacknowledged message stays in the connection's byte budget
        // until ACK/NACK (or the subscription ends), not until written.
        let write_credit = if st.sub.ack == AckMode::Auto { cost } else { 0 };
        match kind {
            DeliveryKind::Live => {}
            DeliveryKind::Redelivered => {
                headers[n] = ("redelivered", b"true");
                n += 1;
            }
            DeliveryKind::Replayed => {
                headers[n] = ("replayed", b"true");
                n += 1;
            }
        }
        msg.template
            .encode_for(version, &headers[..n], self.out.buf());
        self.out.commit_message(msg.text, write_credit);
        if st.sub.ack == AckMode::Auto {
            // Cluster queue message: written is done.
            if let Some(t) = &msg.ticket {
                t.ack();
            }
        }
        self.core.metrics.frames_out(Command::Message, 1);
    }

    /// Ends the session: removes subscriptions and puts unacknowledged queue
    /// messages back for other consumers. Transactions are discarded.
    pub fn close(&mut self) {
        let open: Vec<String> = self.transactions.keys().cloned().collect();
        for tx in open {
            let _ = self.end_transaction(&tx);
        }
        self.replay.clear();
        self.last_auto = None;
        let subs: Vec<SubState> = self.subs.drain().map(|(_, s)| s).collect();
        for st in subs {
            self.drop_sub(st);
        }
        // Reply queues die with the connection: later replies find no
        // subscriber and are dropped, like a topic nobody reads.
        self.temp_queues.clear();
        self.core.metrics.memory.release(self.temp_bytes);
        self.temp_bytes = 0;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// Bookkeeping bytes of one temp queue besides its names (map entries,
/// subscription state), charged to the memory budget.
const TEMP_QUEUE_OVERHEAD: usize = 256;

/// Hex characters of a reply queue's random name (128 bits).
const TOKEN_LEN: usize = 32;

/// 128 random bits from the OS, hex: a reply queue's name, which is all it
/// takes to send to it.
fn unguessable_token() -> String {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; TOKEN_LEN / 2];
    OsRng.fill_bytes(&mut bytes);
    let mut s = String::with_capacity(TOKEN_LEN);
    for b in bytes {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    s
}

/// Parses a client frame of `version`, lenient where RabbitMQ is: a STOMP
/// 1.0 client may send NACK and subscribe with `ack:client-individual`
/// (1.1 features that stomp.py and Ruby clients use with 1.0). `scratch`
/// holds the rewritten copy the codec's strict parser is given then.
fn parse_client_frame<'a>(
    frame: &'a Frame,
    version: Version,
    scratch: &'a mut Option<Frame>,
) -> Result<ClientFrame<'a>, stomp_codec::Error> {
    if version == Version::V1_0 {
        match frame.command {
            Command::Nack => {
                // Parsed as the 1.0 ACK it mirrors (`message-id` required).
                let mut f = frame.clone();
                f.command = Command::Ack;
                if let ClientFrame::Ack(a) = ClientFrame::parse(scratch.insert(f), version)? {
                    return Ok(ClientFrame::Nack(a));
                }
            }
            Command::Subscribe if frame.header("ack") == Some(b"client-individual") => {
                let mut f = frame.clone();
                f.headers.remove("ack");
                if let ClientFrame::Subscribe(mut sub) =
                    ClientFrame::parse(scratch.insert(f), version)?
                {
                    sub.ack = AckMode::ClientIndividual;
                    return Ok(ClientFrame::Subscribe(sub));
                }
            }
            _ => {}
        }
    }
    ClientFrame::parse(frame, version)
}

/// A SEND's RECEIPT is deferred when it asked for one.
fn receipt_is_deferred(frame: &Frame) -> bool {
    frame.header("receipt").is_some()
}

fn unknown_tx(tx: &str) -> StompError {
    StompError::new(
        "protocol",
        "unknown transaction",
        format!("Transaction '{tx}' was not started with BEGIN."),
    )
}

fn over_budget() -> StompError {
    StompError::new(
        "memory_budget",
        RouteError::OverBudget.to_string(),
        "The broker is at its memory limit and refused this frame; the connection is closed. Retry later.",
    )
}

fn route_error(e: RouteError, destination: &str) -> StompError {
    match e {
        RouteError::OverBudget => over_budget(),
        RouteError::QueueFull => StompError::new(
            "queue_full",
            e.to_string(),
            format!("Queue '{destination}' is full and refuses new messages."),
        ),
        RouteError::TooManyQueues => StompError::new(
            "too_many_queues",
            e.to_string(),
            format!(
                "Queue '{destination}' cannot be created: the broker holds its maximum number of queues."
            ),
        ),
        RouteError::UnknownDestination
        | RouteError::WildcardNotAllowed
        | RouteError::InvalidDestination => StompError::new(
            "destination",
            e.to_string(),
            format!("Destination '{destination}': {e}. Use /topic/... or /queue/..."),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HeartBeatPolicy {
        HeartBeatPolicy::from_config((10_000, 10_000), &Default::default())
    }

    fn secs(s: f64) -> Option<Duration> {
        Some(Duration::from_secs_f64(s))
    }

    #[test]
    fn heart_beats_follow_the_client_not_the_server_offer() {
        // stomp.js asking for 1 s gets 1 s both ways, not the old 10 s floor.
        let (offer, hb) = negotiate_heart_beats((1000, 1000), &policy());
        assert_eq!(offer, (1000, 1000));
        assert_eq!((hb.send, hb.recv), (secs(1.0), secs(1.0)));
        // stomp.js's default.
        let (offer, hb) = negotiate_heart_beats((10_000, 10_000), &policy());
        assert_eq!(offer, (10_000, 10_000));
        assert_eq!((hb.send, hb.recv), (secs(10.0), secs(10.0)));
        // Asymmetric: each direction follows its own side.
        let (offer, hb) = negotiate_heart_beats((4000, 2500), &policy());
        assert_eq!(offer, (2500, 4000));
        assert_eq!((hb.send, hb.recv), (secs(2.5), secs(4.0)));
    }

    #[test]
    fn heart_beats_are_clamped_to_min_and_max() {
        // Below min_ms: min_ms both ways.
        let (offer, hb) = negotiate_heart_beats((10, 1), &policy());
        assert_eq!(offer, (1000, 1000));
        assert_eq!((hb.send, hb.recv), (secs(1.0), secs(1.0)));
        // Over max_ms: the server still sends every max_ms (more often than
        // asked is allowed); the client is judged by what it can do.
        let (offer, hb) = negotiate_heart_beats((300_000, 300_000), &policy());
        assert_eq!(offer, (60_000, 60_000));
        assert_eq!((hb.send, hb.recv), (secs(60.0), secs(300.0)));
    }

    #[test]
    fn heart_beats_off_when_either_side_says_zero() {
        let (offer, hb) = negotiate_heart_beats((0, 0), &policy());
        assert_eq!(offer, (0, 0));
        assert_eq!(hb, HeartBeats::default());
        let (offer, hb) = negotiate_heart_beats((0, 500), &policy());
        assert_eq!(offer, (1000, 0));
        assert_eq!((hb.send, hb.recv), (secs(1.0), None));
        // heartbeat.server "0,0": off whatever the client asks.
        let off = HeartBeatPolicy::from_config((0, 0), &Default::default());
        assert_eq!(
            negotiate_heart_beats((1000, 1000), &off),
            ((0, 0), HeartBeats::default())
        );
        // "10000,0": the server beats but never closes silent clients.
        let send_only = HeartBeatPolicy::from_config((10_000, 0), &Default::default());
        let (offer, hb) = negotiate_heart_beats((1000, 1000), &send_only);
        assert_eq!(offer, (1000, 0));
        assert_eq!((hb.send, hb.recv), (secs(1.0), None));
    }

    fn frame(command: Command, headers: &[(&'static str, &'static str)]) -> Frame {
        let mut f = Frame::new(command);
        for (n, v) in headers {
            f.headers.push(*n, *v);
        }
        f
    }

    #[test]
    fn stomp_1_0_accepts_nack_and_client_individual_like_rabbitmq() {
        let nack = frame(Command::Nack, &[("message-id", "m-1")]);
        let mut scratch = None;
        match parse_client_frame(&nack, Version::V1_0, &mut scratch) {
            Ok(ClientFrame::Nack(a)) => assert_eq!(a.message_id, Some("m-1")),
            other => panic!("{other:?}"),
        }
        let sub = frame(
            Command::Subscribe,
            &[("destination", "/queue/a"), ("ack", "client-individual")],
        );
        let mut scratch = None;
        match parse_client_frame(&sub, Version::V1_0, &mut scratch) {
            Ok(ClientFrame::Subscribe(s)) => {
                assert_eq!(s.ack, AckMode::ClientIndividual);
                assert_eq!((s.id, s.destination), ("/queue/a", "/queue/a"));
            }
            other => panic!("{other:?}"),
        }
        // Still strict where 1.0 itself is: a NACK needs its message-id.
        let bare = frame(Command::Nack, &[]);
        assert!(parse_client_frame(&bare, Version::V1_0, &mut None).is_err());
        let bad = frame(Command::Subscribe, &[("destination", "/q/a"), ("ack", "x")]);
        assert!(parse_client_frame(&bad, Version::V1_0, &mut None).is_err());
    }

    #[test]
    fn unconfirmed_receipts_are_joined_whole_within_the_bound() {
        let ids: Vec<String> = ["r-1", "r-22", "r-333"].map(String::from).to_vec();
        assert_eq!(join_bounded(&ids, 100), ("r-1,r-22,r-333".into(), true));
        assert_eq!(join_bounded(&ids, 14), ("r-1,r-22,r-333".into(), true));
        assert_eq!(join_bounded(&ids, 13), ("r-1,r-22".into(), false));
        assert_eq!(join_bounded(&ids, 2), (String::new(), false));
        assert_eq!(join_bounded(&[], 0), (String::new(), true));
    }
}
