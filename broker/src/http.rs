//! The HTTP listener: the STOMP WebSocket endpoint (`/ws` by default),
//! `/metrics`, `/healthz`, `/readyz`.

use std::{convert::Infallible, net::SocketAddr, sync::atomic::Ordering::Relaxed, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role, protocol::WebSocketConfig},
    WebSocketStream,
};
use tokio_util::task::TaskTracker;

use crate::{connection, core::BrokerCore, transport::WsTransport};

/// STOMP WebSocket subprotocols, best first.
const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// WebSocket settings for many mostly idle connections: small buffers,
/// message size bounded by the frame limit.
pub fn ws_config(core: &BrokerCore) -> WebSocketConfig {
    let max = core.config.limits.max_frame_bytes + 4096;
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
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

/// Serves one accepted HTTP connection (with upgrades).
pub async fn serve_http(
    core: Arc<BrokerCore>,
    stream: TcpStream,
    peer: SocketAddr,
    tracker: TaskTracker,
) {
    let _ = stream.set_nodelay(true);
    let svc = hyper::service::service_fn(move |req| {
        let core = core.clone();
        let tracker = tracker.clone();
        async move { Ok::<_, Infallible>(route(core, req, peer, tracker)) }
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
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == core.config.listen.ws_path {
        return upgrade(core, req, peer, tracker);
    }
    match path {
        "/metrics" => {
            let mut out = String::with_capacity(4096);
            core.metrics.render(&mut out);
            let mut r = text(StatusCode::OK, out);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if core.draining.load(Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else {
                text(StatusCode::OK, "ready\n")
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

fn upgrade(
    core: Arc<BrokerCore>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    tracker: TaskTracker,
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
    if core.draining.load(Relaxed) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    if core.metrics.connections.load(Relaxed) >= core.config.limits.max_connections as i64 {
        core.metrics.connections_rejected.fetch_add(1, Relaxed);
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
    }
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
                connection::serve(core, WsTransport::new(ws), peer, "ws").await;
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
