//! The HTTP listener: the STOMP WebSocket endpoint (`/ws` by default),
//! `/metrics`, `/healthz`, `/readyz`. Serves plain TCP and TLS alike.
//! The operator endpoints (`/`, `/stats.json`, `/metrics`) obey `[status]`
//! (see [`crate::status::StatusAccess`]); `/healthz` and `/readyz` are open.
//!
//! Every HTTP socket holds an admission slot from accept on (see
//! [`crate::core::BrokerCore::admit`]); a WebSocket session takes over its
//! socket's slot. Until it is upgraded, a socket is closed when a request's
//! headers take longer than `limits.http_header_timeout_ms` from their first
//! byte, or when it waits longer than `limits.http_idle_timeout_ms` for its
//! first or next request ([`HttpClock`]).

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::Instant,
};
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role, protocol::WebSocketConfig},
    WebSocketStream,
};
use tokio_util::task::TaskTracker;

use crate::{
    connection::{self, ConnInfo},
    core::{AdmitGuard, BrokerCore},
    sockjs::{self, SockJsWsTransport},
    transport::WsTransport,
};

/// STOMP WebSocket subprotocols, best first.
const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// WebSocket settings for many mostly idle connections: small buffers,
/// message size bounded by the frame limit.
pub fn ws_config(core: &BrokerCore) -> WebSocketConfig {
    // One WebSocket message may carry several frames, or part of one.
    let max = core
        .config
        .limits
        .max_frame_bytes
        .saturating_mul(2)
        .max(64 * 1024);
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(
            core.config
                .limits
                .max_pending_bytes_per_connection
                .max(64 * 1024)
                * 2,
        )
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// Where an HTTP connection is between requests, for its timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's first byte since then.
    Idle(Instant),
    /// A request's headers started arriving then.
    Headers(Instant),
    /// A request is being answered.
    Busy,
    /// Handed to the WebSocket session, which has its own timeouts.
    Upgraded,
}

/// The header-read and idle deadlines of one HTTP connection. The socket
/// wrapper ([`Watched`]) reports the first byte of a request; the service
/// reports requests and upgrades; [`serve_http`] sleeps until the deadline.
#[derive(Debug)]
struct HttpClock {
    phase: Mutex<Phase>,
    /// Set once upgraded: reads then skip the clock entirely.
    upgraded: AtomicBool,
    /// Wakes the deadline watcher when a deadline moves earlier.
    earlier: Notify,
}

impl HttpClock {
    fn new() -> HttpClock {
        HttpClock {
            phase: Mutex::new(Phase::Idle(Instant::now())),
            upgraded: AtomicBool::new(false),
            earlier: Notify::new(),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        // A plain enum, valid after any panic.
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, p: Phase) {
        if p == Phase::Upgraded {
            self.upgraded.store(true, Relaxed);
        }
        *self.phase() = p;
    }

    /// Bytes arrived: an idle connection starts a request's headers.
    fn on_bytes(&self) {
        if self.upgraded.load(Relaxed) {
            return;
        }
        let mut p = self.phase();
        if let Phase::Idle(_) = *p {
            *p = Phase::Headers(Instant::now());
            drop(p);
            self.earlier.notify_one();
        }
    }

    /// The current deadline and what it limits, if any.
    fn deadline(&self, header: Duration, idle: Duration) -> Option<(Instant, &'static str)> {
        match *self.phase() {
            Phase::Idle(since) if !idle.is_zero() => Some((since + idle, "idle")),
            Phase::Headers(since) if !header.is_zero() => Some((since + header, "header")),
            _ => None,
        }
    }
}

/// Marks the connection idle when dropped (at the end of a SockJS response).
struct IdleOnDrop(Arc<HttpClock>);

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        if !self.0.upgraded.load(Relaxed) {
            self.0.set(Phase::Idle(Instant::now()));
        }
    }
}

/// An HTTP socket that tells its [`HttpClock`] when bytes arrive.
struct Watched<S> {
    inner: S,
    clock: Arc<HttpClock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.on_bytes();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The response to an HTTP socket refused at accept (connection limits).
pub fn refusal(reason: &str) -> String {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    )
}

/// Serves one accepted HTTP connection (with upgrades), plain or TLS.
/// `admission` is the socket's slot, taken at accept; a WebSocket session
/// keeps it, otherwise it is released when the socket closes.
pub async fn serve_http<S>(
    core: Arc<BrokerCore>,
    stream: S,
    peer: SocketAddr,
    tracker: TaskTracker,
    transport: &'static str,
    admission: AdmitGuard,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = Arc::new(HttpClock::new());
    let header_timeout = Duration::from_millis(core.config.limits.http_header_timeout_ms);
    let idle_timeout = Duration::from_millis(core.config.limits.http_idle_timeout_ms);
    let admission = Arc::new(Mutex::new(Some(admission)));
    let metrics = core.metrics.clone();
    let svc = {
        let clock = clock.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            clock.set(Phase::Busy);
            let slot = admission.clone();
            let core = core.clone();
            let tracker = tracker.clone();
            let clock = clock.clone();
            async move {
                if sockjs::matches(&core, req.uri().path()) {
                    // The clock stays busy until the response body ends
                    // (streaming transports hold it open).
                    let ctx = sockjs::Ctx {
                        core,
                        peer,
                        tracker,
                        listener: transport,
                        busy: IdleOnDrop(clock.clone()),
                    };
                    let r = sockjs::handle(ctx, req, &slot).await;
                    if r.status() == StatusCode::SWITCHING_PROTOCOLS {
                        clock.set(Phase::Upgraded);
                    }
                    return Ok::<_, Infallible>(r);
                }
                let r = route(core, req, peer, tracker, transport, slot);
                clock.set(if r.status() == StatusCode::SWITCHING_PROTOCOLS {
                    Phase::Upgraded
                } else {
                    Phase::Idle(Instant::now())
                });
                Ok::<_, Infallible>(r.map(BodyExt::boxed_unsync))
            }
        })
    };
    let io = Watched {
        inner: stream,
        clock: clock.clone(),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    loop {
        let deadline = clock.deadline(header_timeout, idle_timeout);
        let sleep = tokio::time::sleep_until(
            deadline.map_or_else(|| Instant::now() + Duration::from_secs(86_400), |d| d.0),
        );
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "http connection error");
                }
                return;
            }
            _ = clock.earlier.notified() => {}
            _ = sleep => {
                // Still the same deadline (not moved by a request since)?
                match clock.deadline(header_timeout, idle_timeout) {
                    Some((at, kind)) if at <= Instant::now() => {
                        metrics.http_timeouts.fetch_add(1, Relaxed);
                        tracing::debug!(%peer, timeout = kind, "http connection timed out");
                        return;
                    }
                    _ => {}
                }
            }
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The socket's admission slot, until a WebSocket session takes it.
pub(crate) type Slot = Arc<Mutex<Option<AdmitGuard>>>;

fn route(
    core: Arc<BrokerCore>,
    req: Request<Incoming>,
    peer: SocketAddr,
    tracker: TaskTracker,
    transport: &'static str,
    slot: Slot,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == core.config.listen.ws_path {
        return upgrade(core, req, peer, tracker, transport, slot, None);
    }
    let operator = match path {
        "/metrics" => true,
        "/" | "/index.html" | "/stats.json" => core.config.listen.status_page,
        _ => false,
    };
    if operator {
        if let Some(denied) = status_denied(&core, &req, peer) {
            return denied;
        }
    }
    match path {
        "/metrics" => {
            let mut out = String::with_capacity(4096);
            core.metrics.render(&mut out);
            crate::status::write_prometheus(&core, &mut out);
            if let Some(app) = &core.app_http {
                app.render(&mut out);
            }
            if let Some(cluster) = core.cluster() {
                cluster.write_prometheus(&mut out);
            }
            if let Some(bridge) = core.bridge() {
                bridge.metrics().write_prometheus(&mut out);
            }
            let mut r = text(StatusCode::OK, out);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/" | "/index.html" if core.config.listen.status_page => {
            let page = crate::status::PAGE.replace("__WS_PATH__", &core.config.listen.ws_path);
            let mut r = text(StatusCode::OK, page);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        "/stats.json" if core.config.listen.status_page => {
            let mut r = text(StatusCode::OK, core.status.json(&core));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match crate::status::readiness(&core) {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The 403/401 answer when `[status]` refuses this request for an operator
/// endpoint; `None` when it may proceed.
fn status_denied(
    core: &BrokerCore,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Option<Response<Full<Bytes>>> {
    let access = core.status.access(&core.config.status);
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match access.check(peer.ip(), auth) {
        Ok(()) => None,
        Err(crate::status::Denied::Address) => {
            tracing::debug!(%peer, path = req.uri().path(), "status endpoint: address not allowed");
            Some(text(StatusCode::FORBIDDEN, "forbidden\n"))
        }
        Err(crate::status::Denied::Credentials) => {
            let mut r = text(StatusCode::UNAUTHORIZED, "credentials required\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"stomp-broker status\", charset=\"UTF-8\""),
            );
            Some(r)
        }
    }
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Picks the best STOMP subprotocol the client offered.
pub fn choose_subprotocol<'a>(offered: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let offered: Vec<&str> = offered.flat_map(|v| v.split(',')).map(str::trim).collect();
    SUBPROTOCOLS
        .into_iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
}

/// Whether a browser `Origin` may open a WebSocket (cross-site WebSocket
/// hijacking protection). Entries: `*`, an exact origin, or one ending in
/// `:*` for any port.
pub fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        if a == "*" || a == origin {
            return true;
        }
        match a.strip_suffix(":*") {
            Some(base) => {
                origin == base
                    || origin
                        .strip_prefix(base)
                        .and_then(|rest| rest.strip_prefix(':'))
                        .is_some_and(|port| {
                            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                        })
            }
            None => false,
        }
    })
}

/// A token from the URL query (`?access_token=…`), percent-decoded (every
/// `%XX` escape, either case; a literal `+` stays `+`, since tokens are not
/// form text). A value that does not decode to UTF-8 is no token.
pub(crate) fn url_token(req: &Request<Incoming>, param: &str) -> Option<String> {
    query_param(req.uri().query()?, param)
}

fn query_param(query: &str, param: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if k != param || v.is_empty() {
            return None;
        }
        percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .ok()
            .map(|v| v.into_owned())
    })
}

/// Upgrades to a STOMP WebSocket session, or, with `sockjs_heartbeat`, to a
/// SockJS `websocket` session sending `h` frames at that interval.
pub(crate) fn upgrade(
    core: Arc<BrokerCore>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    tracker: TaskTracker,
    transport: &'static str,
    slot: Slot,
    sockjs_heartbeat: Option<Duration>,
) -> Response<Full<Bytes>> {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let is_upgrade = header_has_token(&req, header::CONNECTION, "upgrade")
        && header_has_token(&req, header::UPGRADE, "websocket");
    let (Some(key), true) = (key, is_upgrade) else {
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    };
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut r = text(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version\n",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .is_ok_and(|o| origin_allowed(&core.config.listen.allowed_origins, o));
        if !ok {
            core.metrics.error("origin");
            tracing::info!(%peer, origin = ?origin, "WebSocket origin rejected");
            return text(StatusCode::FORBIDDEN, "origin not allowed\n");
        }
    }
    if core.draining.load(Relaxed) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n");
    }
    // The socket's slot, taken at accept, becomes the session's.
    let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    let admission = match taken.map_or_else(|| core.admit(peer.ip()), Ok) {
        Ok(g) => g,
        Err(reason) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    };
    let token = url_token(&req, core.auth.url_token_param());
    let protocol = choose_subprotocol(
        req.headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config = ws_config(&core);
    let spawner = tracker.clone();
    tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut info = ConnInfo {
                    peer,
                    transport,
                    url_token: token,
                    admission,
                };
                let Some(hb) = sockjs_heartbeat else {
                    serve_ws(core, upgraded, config, info, &spawner).await;
                    return;
                };
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                {
                    match SockJsWsTransport::open(ws, hb).await {
                        Ok(t) => {
                            info.transport = if transport == "wss" {
                                "sockjs-tls"
                            } else {
                                "sockjs"
                            };
                            let metrics = core.metrics.clone();
                            metrics.sockjs_sessions.fetch_add(1, Relaxed);
                            metrics.sockjs_opened("websocket");
                            // Its own task, like `serve_ws`'s.
                            spawner.spawn(async move {
                                connection::serve(core, t, info).await;
                                metrics.sockjs_sessions.fetch_sub(1, Relaxed);
                            });
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "SockJS websocket open failed")
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(%peer, error = %e, "websocket upgrade failed"),
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    r
}

/// Starts a STOMP WebSocket session on an upgraded connection. A plain
/// TCP socket is taken back out of hyper's boxed I/O (and its HTTP clock):
/// less memory per idle connection, no dynamic dispatch per read. Other
/// sockets (TLS) stay wrapped.
///
/// The session runs as a task of its own, spawned on `spawner`, and the
/// upgrade task ends: a task's allocation is as large as its largest
/// state, and the upgrade's states (handshake, SockJS open, both transport
/// types) would otherwise stay allocated for every idle connection's life
/// (about 1 KiB each, docs/benchmarks.md).
async fn serve_ws(
    core: Arc<BrokerCore>,
    upgraded: hyper::upgrade::Upgraded,
    config: WebSocketConfig,
    info: ConnInfo,
    spawner: &TaskTracker,
) {
    match upgraded.downcast::<TokioIo<Watched<tokio::net::TcpStream>>>() {
        Ok(parts) => {
            let hyper::upgrade::Parts { io, read_buf, .. } = parts;
            // Copied out and dropped now: the `Bytes` keeps hyper's whole
            // read buffer alive, even when empty.
            let part = read_buf.to_vec();
            drop(read_buf);
            let ws = WebSocketStream::from_partially_read(
                io.into_inner().inner,
                part,
                Role::Server,
                Some(config),
            )
            .await;
            spawner.spawn(connection::serve(core, WsTransport::new(ws), info));
        }
        Err(upgraded) => {
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            spawner.spawn(connection::serve(core, WsTransport::new(ws), info));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_with_any_port() {
        let allowed = vec![
            "http://localhost:*".to_owned(),
            "https://app.example.com".to_owned(),
        ];
        assert!(origin_allowed(&allowed, "http://localhost:3000"));
        assert!(origin_allowed(&allowed, "http://localhost"));
        assert!(origin_allowed(&allowed, "https://APP.example.com"));
        assert!(!origin_allowed(&allowed, "http://localhost.evil.com"));
        assert!(!origin_allowed(&allowed, "http://localhost:80@evil"));
        assert!(!origin_allowed(&allowed, "https://evil.example.com"));
        assert!(!origin_allowed(&allowed, "null"));
        assert!(origin_allowed(&["*".to_owned()], "https://anything"));
    }

    #[test]
    fn url_token_undoes_every_percent_escape() {
        // %2B and %25 were missed by the old three-escape replacement.
        assert_eq!(
            query_param("x=1&access_token=a%2Bb%25c%2fd%3D", "access_token").as_deref(),
            Some("a+b%c/d=")
        );
        // Decoded once: an escaped escape stays an escape.
        assert_eq!(
            query_param("access_token=%252F", "access_token").as_deref(),
            Some("%2F")
        );
        // A literal '+' is kept (tokens are not form text).
        assert_eq!(
            query_param("access_token=a+b", "access_token").as_deref(),
            Some("a+b")
        );
        assert_eq!(query_param("access_token=", "access_token"), None);
        assert_eq!(query_param("other=t", "access_token"), None);
        // Not UTF-8 after decoding: no token.
        assert_eq!(query_param("access_token=%FF", "access_token"), None);
    }

    #[test]
    fn best_subprotocol_wins() {
        assert_eq!(
            choose_subprotocol(["v10.stomp, v12.stomp"].into_iter()),
            Some("v12.stomp")
        );
        assert_eq!(
            choose_subprotocol(["v11.stomp", "v10.stomp"].into_iter()),
            Some("v11.stomp")
        );
        assert_eq!(choose_subprotocol(["mqtt"].into_iter()), None);
        assert_eq!(choose_subprotocol(std::iter::empty()), None);
    }
}
