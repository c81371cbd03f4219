//! The demo's static file server: `examples/web/` plus the stomp.js UMD
//! bundle from `tests/interop/node_modules` (no CDN), on one address.
//!
//! Only flat file names (`[A-Za-z0-9._-]`, no leading dot) are served, so a
//! request cannot leave the web directory.

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What to serve.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Directory with `index.html` and the page's assets.
    pub web_dir: PathBuf,
    /// The `@stomp/stompjs` UMD bundle, served as `/stomp.umd.min.js`.
    pub stomp_js: PathBuf,
}

/// Binds `addr` and returns the bound address and the serving future
/// (which runs until `cancel`).
pub async fn bind(
    addr: &str,
    cfg: WebConfig,
    cancel: CancellationToken,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    anyhow::ensure!(
        cfg.web_dir.join("index.html").is_file(),
        "{} has no index.html",
        cfg.web_dir.display()
    );
    anyhow::ensure!(
        cfg.stomp_js.is_file(),
        "stomp.js bundle {} not found (run scripts/install-deps.sh, or npm ci in tests/interop)",
        cfg.stomp_js.display()
    );
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let cfg = Arc::new(cfg);
    let serve = async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = cancel.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let cfg = cfg.clone();
                    async move { Ok::<_, Infallible>(respond(&cfg, &req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    };
    Ok((local, serve))
}

async fn respond(cfg: &WebConfig, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(405, "method not allowed");
    }
    let path = match req.uri().path() {
        "/" => cfg.web_dir.join("index.html"),
        "/stomp.umd.min.js" => cfg.stomp_js.clone(),
        p => match p.strip_prefix('/').filter(|n| is_flat_name(n)) {
            Some(name) => cfg.web_dir.join(name),
            None => return plain(404, "not found"),
        },
    };
    match tokio::fs::read(&path).await {
        Ok(body) => Response::builder()
            .header("content-type", content_type(&path))
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| plain(500, "response")),
        Err(_) => plain(404, "not found"),
    }
}

fn is_flat_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn content_type(path: &std::path::Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "application/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn plain(status: u16, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flat_names_are_served() {
        assert!(is_flat_name("app.js"));
        assert!(!is_flat_name("../Cargo.toml"));
        assert!(!is_flat_name(".git"));
        assert!(!is_flat_name("a/b"));
        assert!(!is_flat_name("%2e%2e"));
    }
}
