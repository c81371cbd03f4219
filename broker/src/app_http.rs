//! `/app/...` destinations handled by HTTP endpoints (`[[app_http]]`): the
//! broker's equivalent of Spring's `@MessageMapping` handlers, for any
//! backend that speaks HTTP.
//!
//! A SEND whose destination starts with a route's `prefix` (longest prefix
//! wins) becomes `POST url` with the frame's body; see [`AppHttp::call`] for
//! the request headers. The session ([`crate::session`]) tracks the request
//! like a Kafka write: RECEIPT after a 2xx, ERROR `app handler failed` with
//! the HTTP `status` (504 timeout, 502 unreachable or oversize answer)
//! otherwise.
//!
//! One shared client (hyper-util's pooled client; rustls with the webpki
//! roots for `https://`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{AppHttpRoute, Config};
use crate::metrics::{PromText, PromType};

/// Prefix every `[[app_http]]` prefix must start with.
pub const APP_PREFIX: &str = "/app/";

/// Frame headers not passed to the backend as `stomp-header-<name>`: STOMP
/// control headers, and those sent otherwise.
const SKIPPED_HEADERS: &[&str] = &[
    "destination",
    "receipt",
    "transaction",
    "content-length",
    "content-type",
    "message-id",
    "subscription",
    "ack",
    "id",
    "login",
    "passcode",
    "host",
    "accept-version",
    "heart-beat",
];

/// Outcome labels of `stomp_app_http_requests_total`.
const OUTCOMES: [&str; 4] = ["ok", "status", "timeout", "error"];

/// Checks one route: the prefix, the URL and the extra headers.
pub fn validate_route(r: &AppHttpRoute) -> Result<(), String> {
    if !r.prefix.starts_with(APP_PREFIX) || r.prefix.len() == APP_PREFIX.len() {
        return Err(format!(
            "prefix must start with {APP_PREFIX} and name something under it"
        ));
    }
    if crate::router::validate_destination(r.prefix.trim_end_matches('/')).is_err() {
        return Err("prefix is not a valid destination prefix".into());
    }
    parse_url(&r.url)?;
    if r.timeout_ms == 0 {
        return Err("timeout_ms must be positive".into());
    }
    for (n, v) in &r.headers {
        HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("header {n:?}: {e}"))?;
        HeaderValue::from_str(v).map_err(|e| format!("header {n:?} value: {e}"))?;
    }
    Ok(())
}

fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("url {url:?}: must be http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("url {url:?}: no host"));
    }
    Ok(uri)
}

/// One configured route and its counters.
#[derive(Debug)]
pub struct Route {
    /// The destination prefix.
    pub prefix: String,
    uri: Uri,
    timeout: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
    outcomes: [AtomicU64; 4],
}

/// What the backend answered with a 2xx and a body: the MESSAGE for the
/// sender.
#[derive(Debug)]
pub struct Reply {
    /// The response's `content-type`, if any.
    pub content_type: Option<String>,
    /// The response body (at most `limits.max_body_bytes`).
    pub body: Bytes,
}

/// Why a request failed.
#[derive(Debug)]
pub enum Failure {
    /// The backend answered with a non-2xx status.
    Status(u16),
    /// No complete answer within `timeout_ms`.
    Timeout,
    /// Connection refused, reset, bad response...
    Unreachable(String),
    /// The response body is larger than `limits.max_body_bytes`.
    TooLarge,
}

impl Failure {
    /// The `status` header of the ERROR.
    pub fn status(&self) -> u16 {
        match self {
            Failure::Status(s) => *s,
            Failure::Timeout => 504,
            Failure::Unreachable(_) | Failure::TooLarge => 502,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(s) => write!(f, "the handler answered HTTP {s}"),
            Failure::Timeout => f.write_str("the handler did not answer in time"),
            Failure::Unreachable(e) => write!(f, "the handler could not be reached: {e}"),
            Failure::TooLarge => f.write_str("the handler's answer is larger than allowed"),
        }
    }
}

/// What the broker knows about the SEND, for the request headers.
#[derive(Debug)]
pub struct AppRequest {
    /// The SEND's destination.
    pub destination: String,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// `session-<n>`, as in CONNECTED.
    pub session: String,
    /// The message id the broker gave the SEND.
    pub message_id: String,
    /// The frame's `content-type`.
    pub content_type: Option<String>,
    /// The frame's other application headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The routes and the shared HTTP client.
#[derive(Debug)]
pub struct AppHttp {
    /// Longest prefix first.
    routes: Vec<Route>,
    client: Client<HttpsConnector, Full<Bytes>>,
    max_body: usize,
    latency_micros: AtomicU64,
    latency_count: AtomicU64,
}

impl AppHttp {
    /// The handler set for `config`, `None` without `[[app_http]]` routes.
    pub fn new(config: &Config) -> anyhow::Result<Option<AppHttp>> {
        if config.app_http.is_empty() {
            return Ok(None);
        }
        let mut routes = Vec::with_capacity(config.app_http.len());
        for r in &config.app_http {
            validate_route(r).map_err(|e| anyhow::anyhow!("app_http {:?}: {e}", r.prefix))?;
            let headers = r
                .headers
                .iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect();
            routes.push(Route {
                prefix: r.prefix.clone(),
                uri: parse_url(&r.url).map_err(|e| anyhow::anyhow!(e))?,
                timeout: Duration::from_millis(r.timeout_ms),
                headers,
                outcomes: Default::default(),
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Some(AppHttp {
            routes,
            client,
            max_body: config.limits.max_body_bytes,
            latency_micros: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
        }))
    }

    /// The route for `destination` (longest matching prefix).
    pub fn route(&self, destination: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| destination.starts_with(r.prefix.as_str()))
    }

    /// POSTs `req` to route `route`'s URL and waits (at most its timeout)
    /// for the answer. Request headers: `content-type` from the frame,
    /// `stomp-destination`, `stomp-user` (absent for an anonymous sender),
    /// `stomp-session`, `stomp-message-id`, `stomp-header-<name>` for each
    /// other application header, and the route's `headers`.
    pub async fn call(&self, route: usize, req: AppRequest) -> Result<Option<Reply>, Failure> {
        let Some(r) = self.routes.get(route) else {
            return Err(Failure::Unreachable("no such route".into()));
        };
        let started = Instant::now();
        let result = tokio::time::timeout(r.timeout, self.request(r, req))
            .await
            .unwrap_or(Err(Failure::Timeout));
        let outcome = match &result {
            Ok(_) => 0,
            Err(Failure::Status(_)) => 1,
            Err(Failure::Timeout) => 2,
            Err(_) => 3,
        };
        r.outcomes[outcome].fetch_add(1, Relaxed);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.latency_micros.fetch_add(micros, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
        result
    }

    async fn request(&self, r: &Route, req: AppRequest) -> Result<Option<Reply>, Failure> {
        let mut b = Request::builder().method(Method::POST).uri(r.uri.clone());
        let mut add = |name: &str, value: &str| {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                b.headers_mut().map(|h| h.append(n, v));
            }
        };
        if let Some(ct) = &req.content_type {
            add("content-type", ct);
        }
        add("stomp-destination", &req.destination);
        if let Some(u) = &req.user {
            add("stomp-user", u);
        }
        add("stomp-session", &req.session);
        add("stomp-message-id", &req.message_id);
        for (n, v) in &req.headers {
            if SKIPPED_HEADERS.contains(&n.as_str()) || n.starts_with("stomp-") {
                continue;
            }
            add(&format!("stomp-header-{n}"), v);
        }
        if let Some(h) = b.headers_mut() {
            for (n, v) in &r.headers {
                h.insert(n.clone(), v.clone());
            }
        }
        let request = b
            .body(Full::new(req.body))
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| Failure::Unreachable(error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::Status(status.as_u16()));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(response.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Failure::TooLarge
                } else {
                    Failure::Unreachable(e.to_string())
                }
            })?
            .to_bytes();
        if status == hyper::StatusCode::NO_CONTENT || body.is_empty() {
            return Ok(None);
        }
        Ok(Some(Reply { content_type, body }))
    }

    /// Prometheus text for `/metrics` (through [`PromText`], the one renderer).
    pub fn render(&self, out: &mut String) {
        const REQUESTS: &str = "stomp_app_http_requests_total";
        const LATENCY: &str = "stomp_app_http_latency_seconds";
        let mut p = PromText::new(out);
        p.header(
            REQUESTS,
            PromType::Counter,
            "Requests to [[app_http]] handlers, by route prefix and outcome (ok: 2xx; status: other HTTP status; timeout; error: unreachable, bad or oversize answer).",
        );
        for r in &self.routes {
            for (i, o) in OUTCOMES.iter().enumerate() {
                p.sample_labels(
                    REQUESTS,
                    &[("prefix", &r.prefix), ("outcome", o)],
                    r.outcomes[i].load(Relaxed),
                );
            }
        }
        p.header(
            LATENCY,
            PromType::Summary,
            "Time [[app_http]] requests took, answer body included.",
        )
        .sample(
            "stomp_app_http_latency_seconds_sum",
            None,
            self.latency_micros.load(Relaxed) as f64 / 1e6,
        )
        .sample(
            "stomp_app_http_latency_seconds_count",
            None,
            self.latency_count.load(Relaxed),
        );
    }
}

/// An error and its sources, for the ERROR body ("connection refused" is
/// usually two levels down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text `render` wrote by hand before it went through `PromText`:
    /// the output must not change.
    #[test]
    fn metrics_text_is_unchanged_by_the_shared_renderer() {
        let mut config = Config::default();
        for (prefix, url) in [
            ("/app/orders/", "http://127.0.0.1:9/orders"),
            ("/app/a", "https://example.invalid/a"),
        ] {
            config.app_http.push(AppHttpRoute {
                prefix: prefix.into(),
                url: url.into(),
                timeout_ms: 1_000,
                headers: Default::default(),
            });
        }
        let app = AppHttp::new(&config).expect("valid").expect("routes");
        // Longest prefix first: /app/orders/ is route 0.
        app.routes[0].outcomes[0].fetch_add(5, Relaxed);
        app.routes[0].outcomes[2].fetch_add(1, Relaxed);
        app.routes[1].outcomes[3].fetch_add(2, Relaxed);
        app.latency_micros.fetch_add(1_250_000, Relaxed);
        app.latency_count.fetch_add(8, Relaxed);
        let mut out = String::new();
        app.render(&mut out);
        assert_eq!(
            out,
            "# HELP stomp_app_http_requests_total Requests to [[app_http]] handlers, by route prefix and outcome (ok: 2xx; status: other HTTP status; timeout; error: unreachable, bad or oversize answer).\n\
             # TYPE stomp_app_http_requests_total counter\n\
             stomp_app_http_requests_total{prefix=\"/app/orders/\",outcome=\"ok\"} 5\n\
             stomp_app_http_requests_total{prefix=\"/app/orders/\",outcome=\"status\"} 0\n\
             stomp_app_http_requests_total{prefix=\"/app/orders/\",outcome=\"timeout\"} 1\n\
             stomp_app_http_requests_total{prefix=\"/app/orders/\",outcome=\"error\"} 0\n\
             stomp_app_http_requests_total{prefix=\"/app/a\",outcome=\"ok\"} 0\n\
             stomp_app_http_requests_total{prefix=\"/app/a\",outcome=\"status\"} 0\n\
             stomp_app_http_requests_total{prefix=\"/app/a\",outcome=\"timeout\"} 0\n\
             stomp_app_http_requests_total{prefix=\"/app/a\",outcome=\"error\"} 2\n\
             # HELP stomp_app_http_latency_seconds Time [[app_http]] requests took, answer body included.\n\
             # TYPE stomp_app_http_latency_seconds summary\n\
             stomp_app_http_latency_seconds_sum 1.25\n\
             stomp_app_http_latency_seconds_count 8\n"
        );
    }
}
