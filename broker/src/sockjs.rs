//! SockJS (protocol 0.3.3) for clients that cannot use WebSocket, served
//! under `sockjs.path` on the HTTP and HTTPS listeners.
//!
//! Every SockJS session is one STOMP connection: the HTTP transports
//! (`xhr`, `xhr_streaming`, `eventsource`, with `xhr_send`) feed a
//! [`SockJsTransport`], the `websocket` transport a [`SockJsWsTransport`];
//! both implement [`Transport`], so [`connection::serve`] runs them like any
//! other connection (admission, auth, outbound byte budget, heart-beats).
//!
//! Bounds: a session holds an admission slot like a WebSocket; its outbound
//! side is a channel of one SockJS frame (the connection task's byte budget
//! bounds the rest); its inbound side a channel of [`INBOUND_DEPTH`] `xhr_send`
//! bodies of at most `sockjs.max_request_bytes` each. A session with no
//! receiving request open for `sockjs.disconnect_delay_ms` is closed.
//! The iframe transports (and JSONP) are not served: `iframe.html` is 404.

use std::{
    collections::HashMap,
    convert::Infallible,
    fmt::Write as _,
    hash::{BuildHasher, Hasher},
    io,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    header::{self, HeaderValue},
    Method, Request, Response, StatusCode,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{mpsc, Notify},
    time::Instant,
};
use tokio_tungstenite::{
    tungstenite::{Message, Utf8Bytes},
    WebSocketStream,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    connection::{self, ConnInfo},
    core::BrokerCore,
    output::Batch,
    transport::{CloseKind, Transport},
};

/// The HTTP response body type of the listener.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// `xhr_send` bodies queued per session before `xhr_send` waits.
pub const INBOUND_DEPTH: usize = 8;
/// Longest server or session id accepted in a URL.
pub const MAX_ID_LEN: usize = 64;
/// Bytes an `xhr_streaming` / `eventsource` response carries before it is
/// closed so the client opens a new one (SockJS `response_limit`).
pub const STREAM_LIMIT: usize = 128 * 1024;

const CLOSE_GO_AWAY: &str = "c[3000,\"Go away!\"]";
const CLOSE_ANOTHER: &str = "c[2010,\"Another connection still open\"]";

/// Open SockJS sessions of the HTTP transports, by session id.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<SjSession>>>,
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SjSession>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Option<Arc<SjSession>> {
        self.map().get(id).cloned()
    }

    /// Open sessions of the HTTP transports.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
struct SjSession {
    id: String,
    inbound: mpsc::Sender<Bytes>,
    state: Mutex<SjState>,
    /// Cancelled when the STOMP connection ends or the session times out.
    closed: CancellationToken,
    /// Wakes the timeout watcher when a receiving request comes or goes.
    changed: Notify,
}

#[derive(Debug)]
struct SjState {
    /// Outbound SockJS frames (`a[...]`, JSON-escaped); `None` while a
    /// receiving request holds it.
    receiver: Option<mpsc::Receiver<Bytes>>,
    /// Since when no receiving request is open.
    detached_since: Option<Instant>,
}

impl SjSession {
    fn state(&self) -> std::sync::MutexGuard<'_, SjState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the receiving side, if no other request holds it.
    fn attach(self: &Arc<Self>) -> Option<Attached> {
        let mut st = self.state();
        let rx = st.receiver.take()?;
        st.detached_since = None;
        drop(st);
        self.changed.notify_one();
        Some(Attached {
            session: self.clone(),
            rx: Some(rx),
        })
    }
}

/// A receiving request's hold on a session's outbound frames; given back on drop.
struct Attached {
    session: Arc<SjSession>,
    rx: Option<mpsc::Receiver<Bytes>>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut st = self.session.state();
        st.receiver = self.rx.take();
        st.detached_since = Some(Instant::now());
        drop(st);
        self.session.changed.notify_one();
    }
}

/// What a receiving request sends next.
enum Next {
    /// `a[...]`: one or more frames' JSON strings.
    Frames(Bytes),
    /// `h`.
    Heartbeat,
    /// `c[3000,"Go away!"]`; the response ends.
    Close,
}

impl Attached {
    /// Waits for outbound data, the session's end or the heart-beat interval.
    async fn next(&mut self, heartbeat: Duration) -> Next {
        let Some(rx) = self.rx.as_mut() else {
            return Next::Close;
        };
        let first = tokio::select! {
            biased;
            m = rx.recv() => m,
            _ = self.session.closed.cancelled() => rx.try_recv().ok(),
            _ = tokio::time::sleep(heartbeat) => return Next::Heartbeat,
        };
        let Some(first) = first else {
            return Next::Close;
        };
        let mut out = BytesMut::with_capacity(first.len() + 3);
        out.extend_from_slice(b"a[");
        out.extend_from_slice(&first);
        // Whatever else is already queued travels in the same frame.
        while let Ok(more) = rx.try_recv() {
            out.extend_from_slice(b",");
            out.extend_from_slice(&more);
        }
        out.extend_from_slice(b"]");
        Next::Frames(out.freeze())
    }
}

/// Whether SockJS serves `path`.
pub fn matches(core: &BrokerCore, path: &str) -> bool {
    let cfg = &core.config.sockjs;
    cfg.enabled
        && path
            .strip_prefix(cfg.path.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Appends `s` as a JSON string, escaping what SockJS requires (control
/// characters, and the ranges some browsers mangle, as Spring and
/// sockjs-node do).
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn needs_escape(c: char) -> bool {
    let u = c as u32;
    u < 0x20
        || (0x7f..=0x9f).contains(&u)
        || (0x200c..=0x200f).contains(&u)
        || (0x2028..=0x202f).contains(&u)
        || (0x2060..=0x206f).contains(&u)
        || (0xfff0..=0xffff).contains(&u)
        || u > 0xffff
}

/// A batch of STOMP frames as one JSON string. SockJS carries text only:
/// bytes that are not UTF-8 become U+FFFD.
fn batch_json(batch: &Batch) -> Bytes {
    let text = String::from_utf8_lossy(&batch.bytes);
    let mut out = String::with_capacity(text.len() + text.len() / 8 + 2);
    push_json_str(&mut out, &text);
    Bytes::from(out)
}

/// Client messages: a JSON array of strings (or, over WebSocket, one string).
fn parse_messages(body: &[u8]) -> Option<Vec<u8>> {
    let strings: Vec<String> = match serde_json::from_slice::<Vec<String>>(body) {
        Ok(v) => v,
        Err(_) => vec![serde_json::from_slice::<String>(body).ok()?],
    };
    Some(strings.concat().into_bytes())
}

/// The STOMP transport of an HTTP-transport SockJS session.
#[derive(Debug)]
pub struct SockJsTransport {
    session: Arc<SjSession>,
    inbound: mpsc::Receiver<Bytes>,
    outbound: mpsc::Sender<Bytes>,
}

impl Transport for SockJsTransport {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        tokio::select! {
            biased;
            m = self.inbound.recv() => match m {
                Some(b) => {
                    buf.extend_from_slice(&b);
                    Ok(b.len())
                }
                None => Ok(0),
            },
            _ = self.session.closed.cancelled() => Ok(0),
        }
    }

    async fn write_batch(&mut self, batch: &Batch) -> io::Result<()> {
        let frame = batch_json(batch);
        tokio::select! {
            r = self.outbound.send(frame) => r.map_err(|_| gone()),
            _ = self.session.closed.cancelled() => Err(gone()),
        }
    }

    async fn close(&mut self, _kind: CloseKind) {
        self.session.closed.cancel();
    }
}

impl Drop for SockJsTransport {
    fn drop(&mut self) {
        self.session.closed.cancel();
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "SockJS session closed")
}

/// The STOMP transport of a SockJS `websocket` session: SockJS framing
/// (`o`, `h`, `a[...]`, `c[...]`) inside WebSocket text messages.
#[derive(Debug)]
pub struct SockJsWsTransport<S> {
    ws: WebSocketStream<S>,
    heartbeat: tokio::time::Interval,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> SockJsWsTransport<S> {
    /// Sends the open frame and wraps the socket.
    pub async fn open(mut ws: WebSocketStream<S>, heartbeat: Duration) -> io::Result<Self> {
        ws.send(Message::Text(Utf8Bytes::from_static("o")))
            .await
            .map_err(io::Error::other)?;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(SockJsWsTransport { ws, heartbeat })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for SockJsWsTransport<S> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            let m = tokio::select! {
                m = self.ws.next() => m,
                _ = self.heartbeat.tick() => {
                    self.ws
                        .send(Message::Text(Utf8Bytes::from_static("h")))
                        .await
                        .map_err(|_| gone())?;
                    continue;
                }
            };
            let data: Bytes = match m {
                None | Some(Ok(Message::Close(_))) => return Ok(0),
                Some(Err(_)) => return Err(gone()),
                Some(Ok(Message::Text(t))) => t.into(),
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(_)) => continue,
            };
            if data.is_empty() {
                continue;
            }
            let Some(bytes) = parse_messages(&data) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "SockJS: broken JSON encoding",
                ));
            };
            if bytes.is_empty() {
                continue;
            }
            buf.extend_from_slice(&bytes);
            return Ok(bytes.len());
        }
    }

    async fn write_batch(&mut self, batch: &Batch) -> io::Result<()> {
        let json = batch_json(batch);
        let mut frame = String::with_capacity(json.len() + 3);
        frame.push_str("a[");
        frame.push_str(std::str::from_utf8(&json).map_err(io::Error::other)?);
        frame.push(']');
        self.ws
            .send(Message::Text(frame.into()))
            .await
            .map_err(|_| gone())
    }

    async fn close(&mut self, kind: CloseKind) {
        let c = match kind {
            CloseKind::GoingAway => "c[1001,\"server shutting down\"]",
            _ => CLOSE_GO_AWAY,
        };
        let _ = self.ws.send(Message::Text(Utf8Bytes::from_static(c))).await;
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Everything [`handle`] needs from the listener.
pub struct Ctx<G> {
    /// Shared broker state.
    pub core: Arc<BrokerCore>,
    /// The peer.
    pub peer: SocketAddr,
    /// Where connection tasks are spawned.
    pub tracker: TaskTracker,
    /// `"ws"` or `"wss"`: the listener.
    pub listener: &'static str,
    /// Held until the response body ends (keeps the HTTP clock busy).
    pub busy: G,
}

fn full(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

const TEXT: &str = "text/plain; charset=UTF-8";
const JS: &str = "application/javascript; charset=UTF-8";

fn no_cache(r: &mut Response<Body>) {
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, no-transform, must-revalidate, max-age=0"),
    );
}

/// CORS headers: the request's Origin echoed (it passed the origin check),
/// with credentials.
fn cors(origin: Option<&HeaderValue>, r: &mut Response<Body>) {
    let h = r.headers_mut();
    match origin {
        Some(o) if o.as_bytes() != b"null" => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        _ => {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
}

fn preflight(req: &Request<Incoming>, methods: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("31536000"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000"),
    );
    if let Some(v) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
    }
    r
}

fn entropy() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'.' && b != b'/')
}

/// Serves one request under `sockjs.path`.
pub async fn handle<G: Send + 'static>(
    ctx: Ctx<G>,
    req: Request<Incoming>,
    slot: &crate::http::Slot,
) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut r = handle_inner(ctx, req, origin.as_ref(), slot).await;
    if r.status() != StatusCode::SWITCHING_PROTOCOLS {
        cors(origin.as_ref(), &mut r);
    }
    r
}

async fn handle_inner<G: Send + 'static>(
    ctx: Ctx<G>,
    req: Request<Incoming>,
    origin: Option<&HeaderValue>,
    slot: &crate::http::Slot,
) -> Response<Body> {
    let core = ctx.core.clone();
    let cfg = &core.config.sockjs;
    let rest = req.uri().path()[cfg.path.len()..].to_owned();
    if let Some(o) = origin {
        let ok = o
            .to_str()
            .is_ok_and(|o| crate::http::origin_allowed(&core.config.listen.allowed_origins, o));
        if !ok {
            core.metrics.error("origin");
            tracing::info!(peer = %ctx.peer, origin = ?o, "SockJS origin rejected");
            return full(StatusCode::FORBIDDEN, TEXT, "origin not allowed\n");
        }
    }
    let method = req.method().clone();
    match rest.as_str() {
        "" | "/" => {
            return match method {
                Method::GET | Method::HEAD => full(StatusCode::OK, TEXT, "Welcome to SockJS!\n"),
                _ => full(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n"),
            }
        }
        "/info" => {
            return match method {
                Method::GET => {
                    let body = format!(
                        "{{\"websocket\":true,\"cookie_needed\":false,\"origins\":[\"*:*\"],\"entropy\":{}}}",
                        entropy()
                    );
                    let mut r = full(StatusCode::OK, "application/json; charset=UTF-8", body);
                    no_cache(&mut r);
                    r
                }
                Method::OPTIONS => preflight(&req, "OPTIONS, GET"),
                _ => full(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n"),
            }
        }
        _ => {}
    }
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let [server, session, kind] = parts[..] else {
        return full(StatusCode::NOT_FOUND, TEXT, "not found\n");
    };
    if !valid_id(server) || !valid_id(session) {
        return full(StatusCode::NOT_FOUND, TEXT, "not found\n");
    }
    let session = session.to_owned();
    if core.draining.load(Relaxed) && kind != "xhr_send" {
        return full(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "server shutting down\n",
        );
    }
    match (kind, &method) {
        ("websocket", &Method::GET) => {
            let heartbeat = Duration::from_millis(cfg.heartbeat_ms);
            crate::http::upgrade(
                core.clone(),
                req,
                ctx.peer,
                ctx.tracker.clone(),
                ctx.listener,
                slot.clone(),
                Some(heartbeat),
            )
            .map(BodyExt::boxed_unsync)
        }
        ("websocket", _) => full(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n"),
        ("xhr" | "xhr_streaming" | "xhr_send", &Method::OPTIONS) => {
            preflight(&req, "OPTIONS, POST")
        }
        ("xhr_send", &Method::POST) => xhr_send(&core, req, &session).await,
        ("xhr" | "xhr_streaming", &Method::POST) | ("eventsource", &Method::GET) => {
            receive(ctx, req, kind, session).await
        }
        ("xhr" | "xhr_streaming" | "xhr_send" | "eventsource", _) => {
            full(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
        }
        _ => full(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    }
}

async fn xhr_send(core: &Arc<BrokerCore>, req: Request<Incoming>, id: &str) -> Response<Body> {
    let Some(session) = core.sockjs.get(id) else {
        return full(StatusCode::NOT_FOUND, TEXT, "unknown session\n");
    };
    let max = core.config.sockjs_max_request_bytes();
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return full(StatusCode::PAYLOAD_TOO_LARGE, TEXT, "request too large\n");
    }
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return full(StatusCode::PAYLOAD_TOO_LARGE, TEXT, "request too large\n");
        }
        Err(_) => return full(StatusCode::BAD_REQUEST, TEXT, "broken request body\n"),
    };
    if body.is_empty() {
        return full(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "Payload expected.");
    }
    let Some(bytes) = parse_messages(&body) else {
        return full(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            "Broken JSON encoding.",
        );
    };
    if !bytes.is_empty() {
        let sent = tokio::select! {
            r = session.inbound.send(Bytes::from(bytes)) => r.is_ok(),
            _ = session.closed.cancelled() => false,
        };
        if !sent {
            return full(StatusCode::NOT_FOUND, TEXT, "session closed\n");
        }
    }
    let mut r = full(StatusCode::NO_CONTENT, TEXT, Bytes::new());
    no_cache(&mut r);
    r
}

/// Creates a session and starts its STOMP connection task.
fn open_session(
    core: &Arc<BrokerCore>,
    req: &Request<Incoming>,
    peer: SocketAddr,
    tracker: &TaskTracker,
    listener: &'static str,
    id: &str,
    kind: &'static str,
) -> Result<(Arc<SjSession>, bool), &'static str> {
    let admission = core.admit(peer.ip())?;
    let (in_tx, in_rx) = mpsc::channel(INBOUND_DEPTH);
    let (out_tx, out_rx) = mpsc::channel(1);
    let session = Arc::new(SjSession {
        id: id.to_owned(),
        inbound: in_tx,
        state: Mutex::new(SjState {
            receiver: Some(out_rx),
            detached_since: Some(Instant::now()),
        }),
        closed: CancellationToken::new(),
        changed: Notify::new(),
    });
    {
        let mut map = core.sockjs.map();
        if let Some(existing) = map.get(id) {
            // Raced with another request opening the same id.
            return Ok((existing.clone(), false));
        }
        map.insert(id.to_owned(), session.clone());
    }
    core.metrics.sockjs_sessions.fetch_add(1, Relaxed);
    core.metrics.sockjs_opened(kind);
    let transport = SockJsTransport {
        session: session.clone(),
        inbound: in_rx,
        outbound: out_tx,
    };
    let info = ConnInfo {
        peer,
        transport: if listener == "wss" {
            "sockjs-tls"
        } else {
            "sockjs"
        },
        url_token: crate::http::url_token(req, core.auth.url_token_param()),
        admission,
    };
    tracker.spawn(connection::serve(core.clone(), transport, info));
    tokio::spawn(watch(core.clone(), session.clone()));
    Ok((session, true))
}

/// Closes and forgets a session once no receiving request has been open
/// for `sockjs.disconnect_delay_ms`.
async fn watch(core: Arc<BrokerCore>, session: Arc<SjSession>) {
    let delay = Duration::from_millis(core.config.sockjs.disconnect_delay_ms);
    loop {
        let notified = session.changed.notified();
        let since = session.state().detached_since;
        match since {
            None => notified.await,
            Some(since) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(since + delay) => {
                        if session.state().detached_since == Some(since) {
                            break;
                        }
                    }
                }
            }
        }
    }
    if !session.closed.is_cancelled() {
        tracing::debug!(session = %session.id, "SockJS session timed out");
    }
    session.closed.cancel();
    core.sockjs.map().remove(&session.id);
    core.metrics.sockjs_sessions.fetch_sub(1, Relaxed);
}

async fn receive<G: Send + 'static>(
    ctx: Ctx<G>,
    req: Request<Incoming>,
    kind: &str,
    id: String,
) -> Response<Body> {
    let core = ctx.core.clone();
    let kind: &'static str = match kind {
        "xhr" => "xhr",
        "xhr_streaming" => "xhr_streaming",
        _ => "eventsource",
    };
    let (session, opened) = match core.sockjs.get(&id) {
        Some(s) => (s, false),
        None => match open_session(&core, &req, ctx.peer, &ctx.tracker, ctx.listener, &id, kind) {
            Ok(opened) => opened,
            Err(reason) => {
                return full(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{reason}\n"))
            }
        },
    };
    let heartbeat = Duration::from_millis(core.config.sockjs.heartbeat_ms);
    let attached = session.attach();
    if kind == "xhr" {
        let body = if opened {
            drop(attached);
            "o\n".to_owned()
        } else {
            match attached {
                None => format!("{CLOSE_ANOTHER}\n"),
                Some(mut a) => match a.next(heartbeat).await {
                    Next::Frames(b) => {
                        let mut s = String::from_utf8_lossy(&b).into_owned();
                        s.push('\n');
                        s
                    }
                    Next::Heartbeat => "h\n".to_owned(),
                    Next::Close => format!("{CLOSE_GO_AWAY}\n"),
                },
            }
        };
        let mut r = full(StatusCode::OK, JS, body);
        no_cache(&mut r);
        return r;
    }
    let (ctype, prelude): (&'static str, Bytes) = if kind == "xhr_streaming" {
        let mut p = vec![b'h'; 2048];
        p.push(b'\n');
        (JS, Bytes::from(p))
    } else {
        (
            "text/event-stream; charset=UTF-8",
            Bytes::from_static(b"\r\n"),
        )
    };
    let wrap = move |frame: &[u8]| -> Bytes {
        let mut out = BytesMut::with_capacity(frame.len() + 10);
        if kind == "eventsource" {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(frame);
            out.extend_from_slice(b"\r\n\r\n");
        } else {
            out.extend_from_slice(frame);
            out.extend_from_slice(b"\n");
        }
        out.freeze()
    };
    let mut first = BytesMut::from(&prelude[..]);
    let stream_state = match attached {
        None => {
            first.extend_from_slice(&wrap(CLOSE_ANOTHER.as_bytes()));
            None
        }
        Some(a) => {
            if opened {
                first.extend_from_slice(&wrap(b"o"));
            }
            Some(a)
        }
    };
    struct St<G> {
        first: Option<Bytes>,
        attached: Option<Attached>,
        sent: usize,
        _busy: G,
    }
    let st = St {
        first: Some(first.freeze()),
        attached: stream_state,
        sent: 0,
        _busy: ctx.busy,
    };
    let stream = futures_util::stream::unfold(st, move |mut st| async move {
        if let Some(f) = st.first.take() {
            return Some((Ok::<_, Infallible>(Frame::data(f)), st));
        }
        if st.sent >= STREAM_LIMIT {
            return None;
        }
        let a = st.attached.as_mut()?;
        let chunk = match a.next(heartbeat).await {
            Next::Frames(b) => wrap(&b),
            Next::Heartbeat => wrap(b"h"),
            Next::Close => {
                st.attached = None;
                wrap(CLOSE_GO_AWAY.as_bytes())
            }
        };
        st.sent += chunk.len();
        Some((Ok(Frame::data(chunk)), st))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    no_cache(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_nul_and_special_ranges() {
        let mut s = String::new();
        push_json_str(&mut s, "A\0\"\\\n\u{2028}é\u{1F600}");
        assert_eq!(s, "\"A\\u0000\\\"\\\\\\n\\u2028é\\ud83d\\ude00\"");
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "A\0\"\\\n\u{2028}é\u{1F600}");
    }

    #[test]
    fn client_messages_parse() {
        assert_eq!(parse_messages(br#"["a","b\u0000"]"#).unwrap(), b"ab\0");
        assert_eq!(parse_messages(br#""x""#).unwrap(), b"x");
        assert!(parse_messages(b"[1]").is_none());
        assert!(parse_messages(b"nope").is_none());
    }

    #[test]
    fn ids() {
        assert!(valid_id("abc123"));
        assert!(!valid_id("a.b"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"x".repeat(MAX_ID_LEN + 1)));
    }
}
