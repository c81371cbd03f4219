//! The HTTP listener: the STOMP WebSocket endpoint (`/ws` by default),
//! `/metrics`, `/healthz`, `/readyz`. Serves plain TCP and TLS alike.

use std::{convert::Infallible, net::SocketAddr, sync::atomic::Ordering::Relaxed, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role, protocol::WebSocketConfig},
    WebSocketStream,
};
use tokio_util::task::TaskTracker;

use crate::{
    connection::{self, ConnInfo},
    core::BrokerCore,
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

/// Serves one accepted HTTP connection (with upgrades), plain or TLS.
pub async fn serve_http<S>(
    core: Arc<BrokerCore>,
    stream: S,
    peer: SocketAddr,
    tracker: TaskTracker,
    transport: &'static str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let core = core.clone();
        let tracker = tracker.clone();
        async move { Ok::<_, Infallible>(route(core, req, peer, tracker, transport)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "http connection error");
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

fn route(
    core: Arc<BrokerCore>,
    req: Request<Incoming>,
    peer: SocketAddr,
    tracker: TaskTracker,
    transport: &'static str,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == core.config.listen.ws_path {
        return upgrade(core, req, peer, tracker, transport);
    }
    match path {
        "/metrics" => {
            let mut out = String::with_capacity(4096);
            core.metrics.render(&mut out);
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
        "/readyz" => {
            if core.draining.load(Relaxed) {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            }
            // With a Kafka bridge: connected, partitions assigned, their
            // start positions committed and retained messages rebuilt.
            match core.bridge().map(|b| b.readiness()) {
                None | Some(Ok(())) => text(StatusCode::OK, "ready\n"),
                Some(Err(why)) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("kafka bridge not ready: {why}\n"),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
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

/// A token from the URL query (`?access_token=…`), undoing the percent
/// escapes a JWT may need.
fn url_token(req: &Request<Incoming>, param: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == param && !v.is_empty()).then(|| {
            v.replace("%2B", "+")
                .replace("%2F", "/")
                .replace("%3D", "=")
        })
    })
}

fn upgrade(
    core: Arc<BrokerCore>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    tracker: TaskTracker,
    transport: &'static str,
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
    let admission = match core.admit(peer.ip()) {
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
    tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                let info = ConnInfo {
                    peer,
                    transport,
                    url_token: token,
                    admission,
                };
                connection::serve(core, WsTransport::new(ws), info).await;
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
