//! `[[app_http]]`: `/app/...` SENDs POSTed to an HTTP handler (a real
//! hyper server in this process), the answer delivered to the sender,
//! RECEIPT only after a 2xx, ERROR `app handler failed` with `status`
//! otherwise.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use e2e_tests::{body, wait_until, Client, TestBroker};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use stomp_broker::config::AppHttpRoute;
use stomp_codec::Command;
use tokio::sync::Semaphore;

/// One request the backend received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// The test backend: what it saw, and a gate `/gate` requests wait on.
#[derive(Clone)]
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<Semaphore>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = Backend {
            addr,
            seen: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        };
        let state = b.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        b
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        self.seen.lock().unwrap().push(Seen {
            path: path.clone(),
            headers,
            body: body.clone(),
        });
        let reply = |status: u16, b: Bytes| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(b))
                .unwrap()
        };
        match path.as_str() {
            "/gate" => {
                self.gate.acquire().await.unwrap().forget();
                reply(200, Bytes::from(format!("{{\"echo\":\"{body}\"}}")))
            }
            "/fail" => reply(500, Bytes::from_static(b"boom")),
            "/hang" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                reply(200, Bytes::new())
            }
            "/empty" => reply(204, Bytes::new()),
            "/big" => reply(200, Bytes::from(vec![b'x'; 4096])),
            _ => reply(200, Bytes::from(format!("{{\"echo\":\"{body}\"}}"))),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn route(prefix: &str, url: String) -> AppHttpRoute {
    AppHttpRoute {
        prefix: prefix.into(),
        url,
        timeout_ms: 5_000,
        headers: BTreeMap::new(),
    }
}

/// A broker with `/app/orders/` → `/gate`, `/app/fail/` → 500,
/// `/app/hang/` → timeout (300 ms), `/app/empty/` → 204, `/app/big/` →
/// oversize, `/app/echo/` → 200 echo, `/app/down/` → a closed port.
async fn broker(backend: &Backend, tweak: impl FnOnce(&mut stomp_broker::Config)) -> TestBroker {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let backend = backend.clone();
    TestBroker::start_with(move |c| {
        c.limits.max_body_bytes = 1024;
        c.limits.max_frame_bytes = 64 * 1024;
        let mut hang = route("/app/hang/", backend.url("/hang"));
        hang.timeout_ms = 300;
        let mut echo = route("/app/echo/", backend.url("/echo"));
        echo.headers
            .insert("authorization".into(), "Bearer backend-secret".into());
        c.app_http = vec![
            route("/app/orders/", backend.url("/gate")),
            route("/app/fail/", backend.url("/fail")),
            hang,
            route("/app/empty/", backend.url("/empty")),
            route("/app/big/", backend.url("/big")),
            echo,
            route("/app/down/", format!("http://{closed}/x")),
        ];
        tweak(c);
    })
    .await
}

async fn login(b: &TestBroker, user: &str) -> Result<Client> {
    let mut c = Client::tcp(b.stomp).await?;
    c.connect_with(&[("accept-version", "1.2"), ("login", user)])
        .await?;
    Ok(c)
}

#[tokio::test]
async fn receipt_follows_the_backend_answer_and_the_reply_reaches_the_user() -> Result<()> {
    let backend = Backend::start().await;
    let b = broker(&backend, |_| {}).await;
    let mut alice = login(&b, "alice").await?;
    alice.subscribe("r", "/user/queue/replies", "auto").await?;
    alice
        .send_with(
            "/app/orders/new",
            b"order-1",
            &[
                ("receipt", "r1"),
                ("content-type", "text/plain"),
                ("priority", "high"),
            ],
        )
        .await?;
    wait_until(|| !backend.seen().is_empty()).await?;
    // The backend holds its answer: no RECEIPT yet.
    alice.expect_silence(Duration::from_millis(300)).await?;
    backend.gate.add_permits(1);
    let reply = alice.message().await?;
    ensure!(body(&reply) == "{\"echo\":\"order-1\"}", "{reply:?}");
    ensure!(reply.header_str("content-type") == Some("application/json"));
    ensure!(reply.header_str("destination") == Some("/user/queue/replies"));
    alice.expect_receipt("r1").await?;

    let seen = &backend.seen()[0];
    ensure!(seen.path == "/gate" && seen.body == "order-1", "{seen:?}");
    let h = |n: &str| seen.headers.get(n).map(String::as_str);
    ensure!(
        h("stomp-destination") == Some("/app/orders/new"),
        "{seen:?}"
    );
    ensure!(h("stomp-user") == Some("alice"), "{seen:?}");
    ensure!(
        h("stomp-session").is_some_and(|s| s.starts_with("session-")),
        "{seen:?}"
    );
    ensure!(h("stomp-message-id").is_some(), "{seen:?}");
    ensure!(h("content-type") == Some("text/plain"), "{seen:?}");
    ensure!(h("stomp-header-priority") == Some("high"), "{seen:?}");
    ensure!(h("stomp-header-receipt").is_none(), "{seen:?}");

    // Counted per route and outcome.
    let (_, metrics) = b.http_get("/metrics").await?;
    ensure!(
        metrics.contains("stomp_app_http_requests_total{prefix=\"/app/orders/\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    ensure!(metrics.contains("stomp_app_http_latency_seconds_count 1"));
    Ok(())
}

#[tokio::test]
async fn reply_to_sends_the_answer_there_with_the_route_headers() -> Result<()> {
    let backend = Backend::start().await;
    let b = broker(&backend, |_| {}).await;
    let mut watcher = b.tcp_client().await;
    watcher.subscribe("a", "/topic/answers", "auto").await?;
    let mut bob = login(&b, "bob").await?;
    bob.subscribe("r", "/user/queue/replies", "auto").await?;
    bob.send_with(
        "/app/echo/x",
        b"hi",
        &[("receipt", "r1"), ("reply-to", "/topic/answers")],
    )
    .await?;
    bob.expect_receipt("r1").await?;
    let m = watcher.message().await?;
    ensure!(body(&m) == "{\"echo\":\"hi\"}");
    // Not to the default.
    bob.expect_silence(Duration::from_millis(200)).await?;
    let seen = &backend.seen()[0];
    ensure!(
        seen.headers.get("authorization").map(String::as_str) == Some("Bearer backend-secret"),
        "{seen:?}"
    );
    ensure!(
        seen.headers
            .get("stomp-header-reply-to")
            .map(String::as_str)
            == Some("/topic/answers")
    );
    Ok(())
}

#[tokio::test]
async fn anonymous_sender_gets_the_reply_on_its_own_session_only() -> Result<()> {
    let backend = Backend::start().await;
    let b = broker(&backend, |_| {}).await;
    let mut anon = b.tcp_client().await;
    anon.subscribe("r", "/user/queue/replies", "auto").await?;
    let mut other = b.tcp_client().await;
    other.subscribe("r", "/user/queue/replies", "auto").await?;
    anon.send_with("/app/echo/x", b"anon", &[("receipt", "r1")])
        .await?;
    let m = anon.message().await?;
    ensure!(body(&m) == "{\"echo\":\"anon\"}");
    anon.expect_receipt("r1").await?;
    other.expect_silence(Duration::from_millis(200)).await?;
    ensure!(!backend.seen()[0].headers.contains_key("stomp-user"));
    Ok(())
}

async fn expect_failure(
    c: &mut Client,
    destination: &str,
    status: &str,
) -> Result<stomp_codec::Frame> {
    c.send_with(destination, b"x", &[("receipt", "r9")]).await?;
    let err = c.expect_error_and_close().await?;
    ensure!(
        err.header_str("message") == Some("app handler failed"),
        "{err:?}"
    );
    ensure!(err.header_str("status") == Some(status), "{err:?}");
    ensure!(err.header_str("receipt-id") == Some("r9"), "{err:?}");
    Ok(err)
}

#[tokio::test]
async fn failures_end_the_session_with_the_status() -> Result<()> {
    let backend = Backend::start().await;
    let b = broker(&backend, |_| {}).await;
    let mut c = login(&b, "carol").await?;
    expect_failure(&mut c, "/app/fail/x", "500").await?;
    let mut c = login(&b, "carol").await?;
    let started = std::time::Instant::now();
    expect_failure(&mut c, "/app/hang/x", "504").await?;
    ensure!(started.elapsed() < Duration::from_secs(5));
    let mut c = login(&b, "carol").await?;
    expect_failure(&mut c, "/app/down/x", "502").await?;
    let mut c = login(&b, "carol").await?;
    // 4096 bytes against limits.max_body_bytes = 1024.
    expect_failure(&mut c, "/app/big/x", "502").await?;
    let (_, metrics) = b.http_get("/metrics").await?;
    for line in [
        "{prefix=\"/app/fail/\",outcome=\"status\"} 1",
        "{prefix=\"/app/hang/\",outcome=\"timeout\"} 1",
        "{prefix=\"/app/down/\",outcome=\"error\"} 1",
        "{prefix=\"/app/big/\",outcome=\"error\"} 1",
    ] {
        ensure!(
            metrics.contains(&format!("stomp_app_http_requests_total{line}")),
            "{line} in {metrics}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn no_content_means_receipt_and_no_reply() -> Result<()> {
    let backend = Backend::start().await;
    let b = broker(&backend, |_| {}).await;
    let mut c = login(&b, "dave").await?;
    c.subscribe("r", "/user/queue/replies", "auto").await?;
    c.send_with("/app/empty/x", b"x", &[("receipt", "r1")])
        .await?;
    c.expect_receipt("r1").await?;
    c.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn requests_in_flight_are_bounded_per_connection() -> Result<()> {
    let backend = Backend::start().await;
    let b = broker(&backend, |c| c.limits.max_app_requests_per_connection = 2).await;
    let mut c = login(&b, "erin").await?;
    for r in ["r1", "r2", "r3"] {
        c.send_with("/app/orders/x", b"x", &[("receipt", r)])
            .await?;
    }
    wait_until(|| backend.seen().len() == 2).await?;
    backend.gate.add_permits(2);
    // The two in flight settle, then the ERROR names the third.
    let mut got = Vec::new();
    loop {
        let f = c.recv().await?;
        if f.command == Command::Error {
            ensure!(
                f.header_str("message") == Some("too many pending app requests"),
                "{f:?}"
            );
            ensure!(
                f.header_str("unconfirmed-receipt-ids") == Some("r3"),
                "{f:?}"
            );
            break;
        }
        got.push(f.header_str("receipt-id").map(str::to_owned));
    }
    got.sort();
    ensure!(
        got == [Some("r1".to_owned()), Some("r2".to_owned())],
        "{got:?}"
    );
    ensure!(backend.seen().len() == 2, "the third was not sent");
    Ok(())
}

#[tokio::test]
async fn disconnect_waits_for_requests_in_flight() -> Result<()> {
    let backend = Backend::start().await;
    let b = broker(&backend, |_| {}).await;
    let mut c = login(&b, "frank").await?;
    c.send_with("/app/orders/x", b"x", &[("receipt", "r1")])
        .await?;
    wait_until(|| !backend.seen().is_empty()).await?;
    c.command(Command::Disconnect, &[("receipt", "bye")])
        .await?;
    c.expect_silence(Duration::from_millis(300)).await?;
    backend.gate.add_permits(1);
    c.expect_receipt("r1").await?;
    c.expect_receipt("bye").await?;
    c.expect_closed().await?;
    Ok(())
}

#[tokio::test]
async fn other_app_destinations_keep_their_behaviour_without_kafka() -> Result<()> {
    let backend = Backend::start().await;
    let b = broker(&backend, |_| {}).await;
    let mut c = login(&b, "gina").await?;
    c.send_with("/app/unrouted/x", b"x", &[("receipt", "r1")])
        .await?;
    let err = c
        .expect_error_and_close()
        .await
        .context("ERROR as before")?;
    ensure!(err.header_str("status").is_none(), "{err:?}");
    ensure!(backend.seen().is_empty());
    Ok(())
}

#[test]
fn bad_routes_are_config_errors() {
    for (prefix, url) in [
        ("/app/x/", "ftp://example.com/"),
        ("/app/x/", "not a url"),
        ("/topic/x/", "http://127.0.0.1:1/"),
        ("/app/", "http://127.0.0.1:1/"),
    ] {
        let text = format!("[[app_http]]\nprefix = {prefix:?}\nurl = {url:?}\n");
        assert!(
            stomp_broker::Config::from_toml(&text).is_err(),
            "{prefix} {url} accepted"
        );
    }
    let ok = stomp_broker::Config::from_toml(
        "[[app_http]]\nprefix = \"/app/orders/\"\nurl = \"https://example.com/orders\"\n\
         headers = { authorization = \"Bearer t\" }\n",
    )
    .unwrap();
    assert_eq!(ok.app_http[0].timeout_ms, 5000);
}
