//! The handles: [`ClientBuilder`], [`Client`], [`Subscription`], [`Message`],
//! [`Transaction`].

use std::{
    future::IntoFuture,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures_util::{future::BoxFuture, Stream};
use stomp_codec::{AckMode, Command, Frame, Limits, Version};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{
    conn::{self, Cmd, Options, SessionInfo, Shared, State, SubSpec, Task},
    transport::{tls_config_with_roots, Endpoint, TransportOptions},
    Error,
};

/// Reconnect policy: exponential backoff between attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay before the first attempt.
    pub initial: Duration,
    /// Largest delay between attempts.
    pub max: Duration,
    /// Each delay is the previous one times this (at least 1).
    pub factor: f64,
    /// Give up after this many failed attempts (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    /// 100 ms, doubling up to 10 s, forever.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            factor: 2.0,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The delay before attempt `n` (0-based).
    pub fn delay(&self, n: u32) -> Duration {
        let f = self.factor.max(1.0).powi(n.min(64) as i32);
        let d = self.initial.as_secs_f64() * f;
        if d.is_finite() && d < self.max.as_secs_f64() {
            Duration::from_secs_f64(d)
        } else {
            self.max
        }
    }
}

/// What happened to the connection underneath a [`Client`]; see
/// [`Client::events`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The connection was lost (or the server sent an ERROR). Requests in
    /// flight failed with [`Error::Disconnected`].
    Disconnected {
        /// When the loss was noticed.
        at: SystemTime,
        /// Why.
        error: Error,
    },
    /// A reconnect attempt failed; another follows after the backoff unless
    /// `max_attempts` is reached.
    ReconnectFailed {
        /// 1-based attempt number.
        attempt: u32,
        /// Why it failed.
        error: Error,
    },
    /// Connected again and every live subscription re-subscribed (with the
    /// same id; confirmed by a RECEIPT). Messages sent to those destinations
    /// between `disconnected_at` and `reconnected_at` were not received
    /// (unless the broker kept them, e.g. in a queue).
    Reconnected {
        /// When the loss was noticed.
        disconnected_at: SystemTime,
        /// When the subscriptions were active again.
        reconnected_at: SystemTime,
        /// Attempts it took.
        attempts: u32,
    },
    /// The client is closed for good (disconnect, no reconnect configured,
    /// reconnect gave up, or every handle dropped).
    Closed,
}

impl ConnectionEvent {
    /// For [`ConnectionEvent::Reconnected`]: how long the client was away.
    pub fn gap(&self) -> Option<Duration> {
        match self {
            ConnectionEvent::Reconnected {
                disconnected_at,
                reconnected_at,
                ..
            } => Some(
                reconnected_at
                    .duration_since(*disconnected_at)
                    .unwrap_or_default(),
            ),
            _ => None,
        }
    }
}

/// Configures and opens a [`Client`].
///
/// ```no_run
/// # async fn f() -> Result<(), stomp_client::Error> {
/// use std::time::Duration;
/// use stomp_client::{Backoff, ClientBuilder};
/// let client = ClientBuilder::new("ws://localhost:8080/ws")
///     .login("svc-orders", "secret")
///     .heart_beat(10_000, 10_000)
///     .reconnect(Backoff::default())
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    opts: Result<OptionsDraft, Error>,
}

#[derive(Debug, Clone)]
struct OptionsDraft {
    transport: TransportOptions,
    login: Option<(String, String)>,
    bearer: Option<String>,
    host: Option<String>,
    headers: Vec<(String, String)>,
    versions: Vec<Version>,
    heart_beat: (u32, u32),
    heart_beat_tolerance: f64,
    limits: Limits,
    connect_timeout: Duration,
    receipt_timeout: Duration,
    reconnect: Option<Backoff>,
    subscription_buffer: usize,
    command_buffer: usize,
    max_pending_receipts: usize,
    roots: Option<rustls::RootCertStore>,
}

impl ClientBuilder {
    /// A builder for `url`: `tcp://host:port`, `tls://` / `stomps://`,
    /// `ws://host:port/path` or `wss://`.
    ///
    /// Defaults: STOMP 1.2, 1.1 or 1.0 (newest the server speaks);
    /// heart-beats 10 s both ways, failure declared after 2× the negotiated
    /// interval without data; connect timeout 10 s; receipt timeout 30 s;
    /// frames up to 1 MiB; 256 messages buffered per subscription; no
    /// reconnect.
    pub fn new(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            opts: Ok(OptionsDraft {
                transport: TransportOptions::default(),
                login: None,
                bearer: None,
                host: None,
                headers: Vec::new(),
                versions: Version::ALL.to_vec(),
                heart_beat: (10_000, 10_000),
                heart_beat_tolerance: 2.0,
                limits: Limits::default(),
                connect_timeout: Duration::from_secs(10),
                receipt_timeout: Duration::from_secs(30),
                reconnect: None,
                subscription_buffer: 256,
                command_buffer: 256,
                max_pending_receipts: 1024,
                roots: None,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut OptionsDraft)) -> Self {
        if let Ok(o) = &mut self.opts {
            f(o);
        }
        self
    }

    /// `login` and `passcode` headers in CONNECT.
    pub fn login(self, user: impl Into<String>, passcode: impl Into<String>) -> Self {
        let (u, p) = (user.into(), passcode.into());
        self.with(|o| o.login = Some((u, p)))
    }

    /// A bearer token (JWT), sent as `Authorization: Bearer <token>` in CONNECT.
    pub fn bearer(self, token: impl Into<String>) -> Self {
        let t = token.into();
        self.with(|o| o.bearer = Some(t))
    }

    /// Heart-beats in ms: send at least every `cx`, expect data at least every
    /// `cy` (0 disables that direction). The server may ask for slower ones.
    pub fn heart_beat(self, cx: u32, cy: u32) -> Self {
        self.with(|o| o.heart_beat = (cx, cy))
    }

    /// How many negotiated incoming intervals may pass without data before
    /// the connection is declared dead (default 2.0, at least 1.0).
    pub fn heart_beat_tolerance(self, factor: f64) -> Self {
        self.with(|o| o.heart_beat_tolerance = factor)
    }

    /// The `host` header (virtual host); default: the URL's host.
    pub fn host(self, vhost: impl Into<String>) -> Self {
        let h = vhost.into();
        self.with(|o| o.host = Some(h))
    }

    /// An extra CONNECT header.
    pub fn header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (n, v) = (name.into(), value.into());
        self.with(|o| o.headers.push((n, v)))
    }

    /// The versions offered in `accept-version` (default: all three).
    pub fn versions(self, versions: &[Version]) -> Self {
        let v = versions.to_vec();
        self.with(|o| o.versions = v)
    }

    /// Reconnect with `backoff` when the connection is lost.
    pub fn reconnect(self, backoff: Backoff) -> Self {
        self.with(|o| o.reconnect = Some(backoff))
    }

    /// Limit for transport + TLS + WebSocket handshake + CONNECTED.
    pub fn connect_timeout(self, d: Duration) -> Self {
        self.with(|o| o.connect_timeout = d)
    }

    /// How long a request with a receipt waits for its RECEIPT.
    pub fn receipt_timeout(self, d: Duration) -> Self {
        self.with(|o| o.receipt_timeout = d)
    }

    /// Limits on frames from the server (default: 1 MiB frames, 64 headers).
    pub fn limits(self, limits: Limits) -> Self {
        self.with(|o| {
            o.limits = limits;
            o.transport.max_ws_message = limits.max_frame.saturating_add(1024);
        })
    }

    /// Messages buffered per subscription before the connection stops
    /// reading from the socket (default 256).
    pub fn subscription_buffer(self, n: usize) -> Self {
        self.with(|o| o.subscription_buffer = n.max(1))
    }

    /// Requests with receipts in flight at most (default 1024); further
    /// requests wait.
    pub fn max_pending_receipts(self, n: usize) -> Self {
        self.with(|o| o.max_pending_receipts = n.max(1))
    }

    /// A TLS configuration for `tls://` and `wss://` (default: Mozilla roots).
    pub fn tls_config(self, config: Arc<rustls::ClientConfig>) -> Self {
        self.with(|o| o.transport.tls = Some(config))
    }

    /// Trust this DER certificate (in addition to earlier ones added here;
    /// replaces the default roots).
    pub fn add_root_certificate(mut self, der: impl Into<Vec<u8>>) -> Self {
        let der = rustls_pki_types::CertificateDer::from(der.into());
        if let Ok(o) = &mut self.opts {
            let roots = o.roots.get_or_insert_with(rustls::RootCertStore::empty);
            if let Err(e) = roots.add(der) {
                self.opts = Err(Error::Tls(format!("root certificate: {e}")));
            }
        }
        self
    }

    /// `Sec-WebSocket-Protocol` to offer (default `v12.stomp, v11.stomp,
    /// v10.stomp`; `None`: no header).
    pub fn ws_protocols(self, protocols: Option<&str>) -> Self {
        let p = protocols.map(str::to_owned);
        self.with(|o| o.transport.ws_protocols = p)
    }

    /// Connects and completes the STOMP handshake.
    pub async fn connect(self) -> Result<Client, Error> {
        let endpoint = Endpoint::parse(&self.url)?;
        let mut d = self.opts?;
        if d.versions.is_empty() {
            return Err(Error::InvalidUrl("no STOMP version offered".into()));
        }
        if let Some(roots) = d.roots.take() {
            d.transport.tls = Some(tls_config_with_roots(roots)?);
        }
        let opts = Arc::new(Options {
            endpoint,
            transport: d.transport,
            login: d.login,
            bearer: d.bearer,
            host: d.host,
            headers: d.headers,
            versions: d.versions,
            heart_beat: d.heart_beat,
            heart_beat_tolerance: d.heart_beat_tolerance,
            limits: d.limits,
            connect_timeout: d.connect_timeout,
            receipt_timeout: d.receipt_timeout,
            reconnect: d.reconnect,
            subscription_buffer: d.subscription_buffer,
            command_buffer: d.command_buffer,
            max_pending_receipts: d.max_pending_receipts,
        });
        let session = conn::establish(&opts).await?;
        let (tx, cmd_rx) = mpsc::channel(d.command_buffer);
        let (events, _) = broadcast::channel(64);
        let shared = Arc::new(Shared {
            info: Mutex::new(Arc::new(session.info().clone())),
            events: events.clone(),
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        });
        let state = State::new(session.info().version, Some(tx.downgrade()), events);
        let task = Task {
            opts: opts.clone(),
            cmd_rx,
            shared: shared.clone(),
            state,
            next_resub: 0,
            deferred: Vec::new(),
        };
        tokio::spawn(task.run(session));
        Ok(Client { tx, shared, opts })
    }
}

/// A connected STOMP client. Cheap to clone; all clones share one
/// connection, served by one background task. The connection closes when
/// [`Client::disconnect`] is called or when every clone, [`Subscription`],
/// [`Message`] and [`Transaction`] is dropped.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    opts: Arc<Options>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.opts.endpoint.url)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Client {
    /// Connects to `url` with defaults (see [`ClientBuilder::new`]).
    pub async fn connect(url: &str) -> Result<Client, Error> {
        ClientBuilder::new(url).connect().await
    }

    /// A builder for `url`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// The current session (changes after a reconnect).
    pub fn session(&self) -> Arc<SessionInfo> {
        self.shared
            .info
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> Version {
        self.session().version
    }

    /// Whether the client is closed for good.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Connection events (loss, reconnect with the gap, close). Bounded: a
    /// receiver that falls more than 64 events behind gets `Lagged`.
    pub fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.shared.events.subscribe()
    }

    fn next_id(&self, prefix: &str) -> String {
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{n}")
    }

    async fn push(&self, cmd: Cmd) -> Result<(), Error> {
        self.tx.send(cmd).await.map_err(|_| Error::Closed)
    }

    async fn wait(&self, rx: oneshot::Receiver<Result<(), Error>>) -> Result<(), Error> {
        match tokio::time::timeout(self.opts.receipt_timeout, rx).await {
            Err(_) => Err(Error::ReceiptTimeout(self.opts.receipt_timeout)),
            Ok(Err(_)) => Err(Error::Closed),
            Ok(Ok(r)) => r,
        }
    }

    /// Sends `frame`; with `receipt`, adds a `receipt` header and resolves on
    /// the RECEIPT (or fails with the ERROR naming it).
    pub(crate) async fn request(
        &self,
        mut frame: Frame,
        receipt: bool,
        generation: Option<u64>,
    ) -> Result<(), Error> {
        if !receipt && generation.is_none() {
            return self
                .push(Cmd::Frame {
                    frame,
                    receipt: None,
                    reply: None,
                    generation,
                })
                .await;
        }
        let (reply, rx) = oneshot::channel();
        let id = receipt.then(|| self.next_id("receipt"));
        if let Some(id) = &id {
            frame.headers.push("receipt", id.clone());
        }
        self.push(Cmd::Frame {
            frame,
            receipt: id,
            reply: Some(reply),
            generation,
        })
        .await?;
        self.wait(rx).await
    }

    /// A SEND to `destination`. Add headers, ask for a receipt, then `.await`:
    ///
    /// ```no_run
    /// # async fn f(client: stomp_client::Client) -> Result<(), stomp_client::Error> {
    /// client
    ///     .send("/topic/orders", r#"{"id":1}"#)
    ///     .header("content-type", "application/json")
    ///     .receipt()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Without `.receipt()` the future resolves once the frame is queued for
    /// the connection (nothing tells whether the broker got it).
    pub fn send(&self, destination: &str, body: impl Into<Bytes>) -> SendRequest<'_> {
        SendRequest {
            client: self,
            frame: Frame::new(Command::Send)
                .with_header("destination", destination.to_owned())
                .with_body(body),
            receipt: false,
        }
    }

    /// A SUBSCRIBE to `destination` (ack `auto` unless changed); `.await`
    /// resolves once the broker confirmed it with a RECEIPT, so nothing
    /// published afterwards is missed.
    pub fn subscribe(&self, destination: &str) -> SubscribeRequest<'_> {
        SubscribeRequest {
            client: self,
            destination: destination.to_owned(),
            id: None,
            ack: AckMode::Auto,
            headers: Vec::new(),
        }
    }

    /// BEGINs a transaction.
    pub async fn begin(&self) -> Result<Transaction, Error> {
        let id = self.next_id("tx");
        self.request(
            Frame::new(Command::Begin).with_header("transaction", id.clone()),
            false,
            None,
        )
        .await?;
        Ok(Transaction {
            client: self.clone(),
            id,
            done: false,
        })
    }

    /// Sends DISCONNECT with a receipt, waits for it and closes the
    /// connection. Every clone is closed afterwards; subscriptions end.
    pub async fn disconnect(&self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.push(Cmd::Disconnect {
            receipt: self.next_id("disconnect"),
            reply,
        })
        .await?;
        self.wait(rx).await
    }
}

/// A SEND being prepared; `.await` it. See [`Client::send`].
#[must_use = "a SendRequest does nothing until awaited"]
pub struct SendRequest<'a> {
    client: &'a Client,
    frame: Frame,
    receipt: bool,
}

impl SendRequest<'_> {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.frame.headers.push(name.to_owned(), value.to_owned());
        self
    }

    /// Sets `content-type`.
    pub fn content_type(self, value: &str) -> Self {
        self.header("content-type", value)
    }

    /// Asks for a RECEIPT: the future resolves when the broker confirmed the
    /// message, or fails with [`Error::Protocol`] when it refused it.
    pub fn receipt(mut self) -> Self {
        self.receipt = true;
        self
    }
}

impl<'a> IntoFuture for SendRequest<'a> {
    type Output = Result<(), Error>;
    type IntoFuture = BoxFuture<'a, Result<(), Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.client.request(self.frame, self.receipt, None))
    }
}

/// A SUBSCRIBE being prepared; `.await` it. See [`Client::subscribe`].
#[must_use = "a SubscribeRequest does nothing until awaited"]
pub struct SubscribeRequest<'a> {
    client: &'a Client,
    destination: String,
    id: Option<String>,
    ack: AckMode,
    headers: Vec<(String, String)>,
}

impl SubscribeRequest<'_> {
    /// The acknowledgement mode (default `auto`).
    pub fn ack(mut self, mode: AckMode) -> Self {
        self.ack = mode;
        self
    }

    /// The subscription id (default: generated, unique per client).
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.to_owned());
        self
    }

    /// Adds a header (e.g. `selector`, `durable`).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

impl<'a> IntoFuture for SubscribeRequest<'a> {
    type Output = Result<Subscription, Error>;
    type IntoFuture = BoxFuture<'a, Result<Subscription, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = self.client;
            let id = self.id.unwrap_or_else(|| c.next_id("sub"));
            let mut frame = Frame::new(Command::Subscribe)
                .with_header("id", id.clone())
                .with_header("destination", self.destination)
                .with_header("ack", self.ack.as_str());
            for (n, v) in self.headers {
                frame.headers.push(n, v);
            }
            let (tx, rx) = mpsc::channel(c.opts.subscription_buffer);
            let (reply, done) = oneshot::channel();
            c.push(Cmd::Subscribe {
                sub: SubSpec {
                    id: id.clone(),
                    ack: self.ack,
                    frame,
                },
                tx,
                receipt: c.next_id("subscribe"),
                reply,
            })
            .await?;
            let mut sub = Subscription {
                id,
                rx,
                client: c.clone(),
                active: true,
            };
            if let Err(e) = c.wait(done).await {
                sub.active = false;
                return Err(e);
            }
            Ok(sub)
        })
    }
}

/// The messages of one subscription, as a [`Stream`].
///
/// Buffered up to [`ClientBuilder::subscription_buffer`] messages. When the
/// buffer is full the connection task stops reading the socket (TCP
/// back-pressure reaches the broker, whose slow-consumer policy then
/// applies) but keeps sending heart-beats and commands, and does not count
/// the pause against the server's heart-beat. A stream that is never polled
/// therefore stalls every subscription of this client: drain it or drop it.
///
/// The stream ends when the client is closed. With reconnect, it continues
/// across reconnects (the subscription is re-sent with the same id).
/// Dropping it sends UNSUBSCRIBE.
pub struct Subscription {
    id: String,
    rx: mpsc::Receiver<Message>,
    client: Client,
    active: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish()
    }
}

impl Subscription {
    /// The subscription id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next message (`None` once the client is closed).
    pub async fn next_message(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// UNSUBSCRIBEs and waits for the RECEIPT.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.active = false;
        let (reply, rx) = oneshot::channel();
        self.client
            .push(Cmd::Unsubscribe {
                id: self.id.clone(),
                receipt: Some(self.client.next_id("unsubscribe")),
                reply: Some(reply),
            })
            .await?;
        self.client.wait(rx).await
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.active {
            let _ = self.client.tx.try_send(Cmd::Unsubscribe {
                id: std::mem::take(&mut self.id),
                receipt: None,
                reply: None,
            });
        }
    }
}

/// How to acknowledge a message (absent for `auto` subscriptions).
#[derive(Clone)]
pub(crate) struct AckInfo {
    pub tx: mpsc::Sender<Cmd>,
    pub generation: u64,
    /// `id` (1.2) or `message-id` [+ `subscription`] (1.0/1.1).
    pub headers: Vec<(&'static str, Bytes)>,
}

/// A MESSAGE received on a [`Subscription`].
#[derive(Clone)]
pub struct Message {
    frame: Frame,
    ack: Option<AckInfo>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("headers", &self.frame.headers)
            .field("body", &self.frame.body)
            .finish()
    }
}

impl Message {
    pub(crate) fn new(frame: Frame, ack: Option<AckInfo>) -> Message {
        Message { frame, ack }
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.frame.body
    }

    /// The body as text (lossy UTF-8).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.frame.body).into_owned()
    }

    /// The first header `name` as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.frame.header_str(name)
    }

    /// The `destination` header.
    pub fn destination(&self) -> Option<&str> {
        self.header("destination")
    }

    /// The `message-id` header.
    pub fn message_id(&self) -> Option<&str> {
        self.header("message-id")
    }

    /// The `subscription` header.
    pub fn subscription(&self) -> Option<&str> {
        self.header("subscription")
    }

    /// The whole MESSAGE frame.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The whole MESSAGE frame, by value.
    pub fn into_frame(self) -> Frame {
        self.frame
    }

    fn ack_frame(&self, command: Command, transaction: Option<&str>) -> Option<(Frame, &AckInfo)> {
        let info = self.ack.as_ref()?;
        let mut f = Frame::new(command);
        for (n, v) in &info.headers {
            f.headers.push(*n, v.clone());
        }
        if let Some(t) = transaction {
            f.headers.push("transaction", t.to_owned());
        }
        Some((f, info))
    }

    async fn settle(&self, command: Command, transaction: Option<&str>) -> Result<(), Error> {
        let Some((frame, info)) = self.ack_frame(command, transaction) else {
            // `auto` subscription: nothing to acknowledge.
            return Ok(());
        };
        let (reply, rx) = oneshot::channel();
        info.tx
            .send(Cmd::Frame {
                frame,
                receipt: None,
                reply: Some(reply),
                generation: Some(info.generation),
            })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// ACKs this message (`client`: and every earlier one of the
    /// subscription). Resolves once the ACK is written; fails with
    /// [`Error::Disconnected`] if the message came from a connection that
    /// has since been replaced (the broker redelivers it). A no-op for
    /// `auto` subscriptions.
    pub async fn ack(&self) -> Result<(), Error> {
        self.settle(Command::Ack, None).await
    }

    /// NACKs this message (STOMP 1.1+); otherwise like [`Message::ack`].
    pub async fn nack(&self) -> Result<(), Error> {
        self.settle(Command::Nack, None).await
    }
}

/// A transaction: SENDs and ACKs in it take effect on [`Transaction::commit`].
/// Dropped without commit or abort, it is aborted.
pub struct Transaction {
    client: Client,
    id: String,
    done: bool,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("id", &self.id).finish()
    }
}

impl Transaction {
    /// The transaction id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A SEND inside the transaction.
    pub fn send(&self, destination: &str, body: impl Into<Bytes>) -> SendRequest<'_> {
        self.client
            .send(destination, body)
            .header("transaction", &self.id)
    }

    /// ACKs `msg` inside the transaction.
    pub async fn ack(&self, msg: &Message) -> Result<(), Error> {
        msg.settle(Command::Ack, Some(&self.id)).await
    }

    /// NACKs `msg` inside the transaction.
    pub async fn nack(&self, msg: &Message) -> Result<(), Error> {
        msg.settle(Command::Nack, Some(&self.id)).await
    }

    async fn finish(mut self, command: Command) -> Result<(), Error> {
        self.done = true;
        let f = Frame::new(command).with_header("transaction", self.id.clone());
        self.client.request(f, true, None).await
    }

    /// COMMITs and waits for the RECEIPT.
    pub async fn commit(self) -> Result<(), Error> {
        self.finish(Command::Commit).await
    }

    /// ABORTs and waits for the RECEIPT.
    pub async fn abort(self) -> Result<(), Error> {
        self.finish(Command::Abort).await
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.client.tx.try_send(Cmd::Frame {
                frame: Frame::new(Command::Abort).with_header("transaction", self.id.clone()),
                receipt: None,
                reply: None,
                generation: None,
            });
        }
    }
}
