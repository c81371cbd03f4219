//! SockJS over plain HTTP, spoken by hand: the info endpoint, an xhr-polling
//! STOMP round trip, xhr_send limits, the Origin check, the session timeout
//! and a second receiving request.

use std::{net::SocketAddr, sync::atomic::Ordering::Relaxed};

use anyhow::{anyhow, bail, ensure, Context, Result};
use e2e_tests::{wait_until, TestBroker, WAIT};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// One HTTP/1.1 request with `Connection: close`; the whole response.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp> {
    let mut s = TcpStream::connect(addr).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .context("response timed out")??;
    let text = String::from_utf8(buf)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("bad response: {text}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status: {head}"))?;
    Ok(Resp {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// A SockJS xhr session spoken by hand.
struct Xhr {
    addr: SocketAddr,
    base: String,
}

impl Xhr {
    fn new(addr: SocketAddr, session: &str) -> Xhr {
        Xhr {
            addr,
            base: format!("/sockjs/000/{session}"),
        }
    }

    async fn poll(&self) -> Result<String> {
        let r = request(self.addr, "POST", &format!("{}/xhr", self.base), &[], b"").await?;
        ensure!(r.status == 200, "xhr: {} {}", r.status, r.body);
        Ok(r.body)
    }

    async fn send_raw(&self, body: &[u8]) -> Result<Resp> {
        request(
            self.addr,
            "POST",
            &format!("{}/xhr_send", self.base),
            &[("Content-Type", "text/plain")],
            body,
        )
        .await
    }

    /// Sends STOMP frames as one SockJS message.
    async fn send(&self, stomp: &str) -> Result<()> {
        let body = serde_json::to_string(&[stomp])?;
        let r = self.send_raw(body.as_bytes()).await?;
        ensure!(r.status == 204, "xhr_send: {} {}", r.status, r.body);
        Ok(())
    }

    /// Polls until an `a[...]` frame arrives; returns its messages joined.
    async fn frames(&self) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let body = self.poll().await?;
            if let Some(json) = body.strip_prefix('a') {
                let msgs: Vec<String> = serde_json::from_str(json.trim_end())?;
                return Ok(msgs.concat());
            }
            ensure!(body == "h\n", "unexpected poll answer {body:?}");
        }
        bail!("no frames within {WAIT:?}")
    }

    async fn open_and_connect(&self) -> Result<()> {
        ensure!(self.poll().await? == "o\n", "open frame expected");
        self.send("CONNECT\naccept-version:1.2\nhost:x\n\n\0")
            .await?;
        let got = self.frames().await?;
        ensure!(got.starts_with("CONNECTED\n"), "got {got:?}");
        Ok(())
    }
}

#[tokio::test]
async fn greeting_info_and_preflight() -> Result<()> {
    let b = TestBroker::start().await;
    let r = request(b.http, "GET", "/sockjs", &[], b"").await?;
    assert_eq!((r.status, r.body.as_str()), (200, "Welcome to SockJS!\n"));
    let r = request(b.http, "GET", "/sockjs/info", &[], b"").await?;
    assert_eq!(r.status, 200);
    let info: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(info["websocket"], true);
    assert_eq!(info["cookie_needed"], false);
    assert_eq!(info["origins"], serde_json::json!(["*:*"]));
    assert!(info["entropy"].is_u64());
    let r = request(
        b.http,
        "OPTIONS",
        "/sockjs/info",
        &[
            ("Origin", "http://localhost:8080"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    )
    .await?;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("http://localhost:8080")
    );
    assert_eq!(
        r.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("GET")));
    let r = request(b.http, "GET", "/sockjs/iframe.html", &[], b"").await?;
    assert_eq!(r.status, 404);
    // Ids with dots are refused.
    let r = request(b.http, "POST", "/sockjs/0.0/abc/xhr", &[], b"").await?;
    assert_eq!(r.status, 404);
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn xhr_polling_carries_a_stomp_session() -> Result<()> {
    let b = TestBroker::start().await;
    let x = Xhr::new(b.http, "poll1");
    x.open_and_connect().await?;
    assert_eq!(b.core.metrics.sockjs_opened_of("xhr"), 1);
    assert_eq!(b.core.metrics.sockjs_sessions.load(Relaxed), 1);
    x.send("SUBSCRIBE\nid:s1\ndestination:/topic/sj\nreceipt:r1\n\n\0")
        .await?;
    let got = x.frames().await?;
    ensure!(got.starts_with("RECEIPT\nreceipt-id:r1\n"), "got {got:?}");
    // A WebSocket client publishes; the SockJS client receives, NULs and
    // quotes surviving the JSON encoding both ways.
    let mut ws = b.ws_client().await;
    ws.send("/topic/sj", "from \"ws\" é").await?;
    let got = x.frames().await?;
    ensure!(got.starts_with("MESSAGE\n"), "got {got:?}");
    ensure!(got.ends_with("\n\nfrom \"ws\" é\0"), "got {got:?}");
    // And the SockJS client publishes to itself.
    x.send("SEND\ndestination:/topic/sj\n\nback\0").await?;
    let got = x.frames().await?;
    ensure!(got.ends_with("\n\nback\0"), "got {got:?}");
    let metrics = b.http_get("/metrics").await?.1;
    assert!(metrics.contains("stomp_sockjs_sessions 1"));
    assert!(metrics.contains("stomp_sockjs_sessions_total{transport=\"xhr\"} 1"));
    x.send("DISCONNECT\nreceipt:bye\n\n\0").await?;
    let got = x.frames().await?;
    ensure!(got.starts_with("RECEIPT\nreceipt-id:bye"), "got {got:?}");
    assert_eq!(x.poll().await?, "c[3000,\"Go away!\"]\n");
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn xhr_send_to_an_unknown_session_is_404() -> Result<()> {
    let b = TestBroker::start().await;
    let r = Xhr::new(b.http, "nosuch").send_raw(br#"["x"]"#).await?;
    assert_eq!(r.status, 404);
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn oversize_and_broken_xhr_send_are_refused() -> Result<()> {
    let b = TestBroker::start_with(|c| c.sockjs.max_request_bytes = Some(1000)).await;
    let x = Xhr::new(b.http, "big1");
    assert_eq!(x.poll().await?, "o\n");
    let big = serde_json::to_string(&["x".repeat(2000)])?;
    let r = x.send_raw(big.as_bytes()).await?;
    assert_eq!(r.status, 413);
    let r = x.send_raw(b"[not json").await?;
    assert_eq!(r.status, 500);
    assert_eq!(r.body, "Broken JSON encoding.");
    let r = x.send_raw(b"").await?;
    assert_eq!(r.status, 500);
    // The session still works within the limit.
    x.send("CONNECT\naccept-version:1.2\nhost:x\n\n\0").await?;
    ensure!(x.frames().await?.starts_with("CONNECTED\n"));
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn disallowed_origin_is_refused() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.listen.allowed_origins = vec!["http://good.example".into()];
    })
    .await;
    for (method, path) in [
        ("POST", "/sockjs/000/evil/xhr"),
        ("POST", "/sockjs/000/evil/xhr_streaming"),
        ("GET", "/sockjs/000/evil/eventsource"),
        ("GET", "/sockjs/info"),
    ] {
        let r = request(
            b.http,
            method,
            path,
            &[("Origin", "http://evil.example")],
            b"",
        )
        .await?;
        assert_eq!(r.status, 403, "{method} {path}");
    }
    assert_eq!(b.core.metrics.sockjs_sessions.load(Relaxed), 0);
    assert!(b.core.sockjs.is_empty());
    let r = request(
        b.http,
        "POST",
        "/sockjs/000/good/xhr",
        &[("Origin", "http://good.example")],
        b"",
    )
    .await?;
    assert_eq!((r.status, r.body.as_str()), (200, "o\n"));
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("http://good.example")
    );
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn session_timeout_ends_the_stomp_session() -> Result<()> {
    let b = TestBroker::start_with(|c| c.sockjs.disconnect_delay_ms = 300).await;
    let x = Xhr::new(b.http, "idle1");
    x.open_and_connect().await?;
    x.send("SUBSCRIBE\nid:s1\ndestination:/topic/idle\nreceipt:r1\n\n\0")
        .await?;
    ensure!(x.frames().await?.starts_with("RECEIPT\n"));
    assert_eq!(b.core.metrics.subscriptions.load(Relaxed), 1);
    assert_eq!(b.core.metrics.connections.load(Relaxed), 1);
    // No receiving request from now on: the session must end.
    wait_until(|| {
        b.core.metrics.subscriptions.load(Relaxed) == 0
            && b.core.metrics.connections.load(Relaxed) == 0
            && b.core.metrics.sockjs_sessions.load(Relaxed) == 0
    })
    .await?;
    let r = x
        .send_raw(br#"["SEND\ndestination:/topic/idle\n\nx\u0000"]"#)
        .await?;
    assert_eq!(r.status, 404);
    b.stop().await;
    Ok(())
}

/// Reads a streaming response until `needle` has arrived.
async fn read_until(s: &mut TcpStream, seen: &mut String, needle: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !seen.contains(needle) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .with_context(|| format!("waiting for {needle:?}, have {seen:?}"))??;
        ensure!(n > 0, "closed before {needle:?}: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Ok(())
}

#[tokio::test]
async fn second_receiving_request_gets_2010_and_streaming_heartbeats() -> Result<()> {
    let b = TestBroker::start_with(|c| c.sockjs.heartbeat_ms = 200).await;
    let mut s = TcpStream::connect(b.http).await?;
    s.write_all(
        b"POST /sockjs/000/dup1/xhr_streaming HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await?;
    let mut seen = String::new();
    read_until(&mut s, &mut seen, "\no\n").await?;
    ensure!(seen.contains(&format!("{}\n", "h".repeat(2048))), "prelude");
    // The streaming request holds the session: another one is refused.
    let x = Xhr::new(b.http, "dup1");
    assert_eq!(
        x.poll().await?,
        "c[2010,\"Another connection still open\"]\n"
    );
    // The stream carries heart-beats, then STOMP frames.
    read_until(&mut s, &mut seen, "\nh\n").await?;
    x.send("CONNECT\naccept-version:1.2\nhost:x\n\n\0").await?;
    read_until(&mut s, &mut seen, "a[\"CONNECTED\\n").await?;
    assert_eq!(b.core.metrics.sockjs_opened_of("xhr_streaming"), 1);
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn eventsource_carries_frames() -> Result<()> {
    let b = TestBroker::start().await;
    let mut s = TcpStream::connect(b.http).await?;
    s.write_all(b"GET /sockjs/000/es1/eventsource HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut seen = String::new();
    read_until(&mut s, &mut seen, "data: o\r\n\r\n").await?;
    ensure!(seen.contains("text/event-stream"), "{seen}");
    Xhr::new(b.http, "es1")
        .send("CONNECT\naccept-version:1.2\nhost:x\n\n\0")
        .await?;
    read_until(&mut s, &mut seen, "data: a[\"CONNECTED\\n").await?;
    assert_eq!(b.core.metrics.sockjs_opened_of("eventsource"), 1);
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn sessions_count_against_max_connections() -> Result<()> {
    // The request's socket holds one slot, the session a second.
    let b = TestBroker::start_with(|c| c.limits.max_connections = 2).await;
    assert_eq!(Xhr::new(b.http, "one").poll().await?, "o\n");
    let r = request(b.http, "POST", "/sockjs/000/two/xhr", &[], b"").await?;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(b.core.metrics.sockjs_sessions.load(Relaxed), 1);
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn websocket_transport_frames_and_heartbeats() -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let b = TestBroker::start_with(|c| c.sockjs.heartbeat_ms = 200).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/sockjs/000/w1/websocket", b.http))
            .await?;
    async fn next_text(
        ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
    ) -> Result<String> {
        loop {
            match tokio::time::timeout(WAIT, ws.next()).await? {
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(_)) => continue,
                other => bail!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(next_text(&mut ws).await?, "o");
    // Heart-beats while idle.
    assert_eq!(next_text(&mut ws).await?, "h");
    ws.send(Message::text(serde_json::to_string(&[
        "CONNECT\naccept-version:1.2\nhost:x\n\n\0",
    ])?))
    .await?;
    let mut got = next_text(&mut ws).await?;
    while got == "h" {
        got = next_text(&mut ws).await?;
    }
    let msgs: Vec<String> = serde_json::from_str(got.strip_prefix('a').context("a frame")?)?;
    ensure!(msgs.concat().starts_with("CONNECTED\n"), "{msgs:?}");
    assert_eq!(b.core.metrics.sockjs_opened_of("websocket"), 1);
    assert_eq!(b.core.metrics.sockjs_sessions.load(Relaxed), 1);
    // Broken JSON ends the session.
    ws.send(Message::text("[not json")).await?;
    let mut closed = false;
    for _ in 0..20 {
        match tokio::time::timeout(WAIT, ws.next()).await? {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                closed = true;
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    ensure!(closed, "session still open after broken JSON");
    wait_until(|| b.core.metrics.sockjs_sessions.load(Relaxed) == 0).await?;
    b.stop().await;
    Ok(())
}
