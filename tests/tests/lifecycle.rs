//! Heart-beats, limits, slow consumers, shutdown, HTTP endpoints.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use e2e_tests::{body, both_transports, wait_until, Client, Event, Kind, TestBroker};
use stomp_codec::Command;

both_transports!(
    server_sends_heart_beats_at_negotiated_interval,
    silent_client_is_closed_after_heart_beat_timeout,
    client_that_heart_beats_stays_connected,
    oversized_frame_is_an_error_and_others_keep_working,
    too_many_subscriptions_is_an_error,
    slow_subscriber_is_disconnected_without_stalling_others,
    slow_subscriber_under_drop_policy_loses_messages_but_stays,
    shutdown_tells_clients_and_closes,
    delivered_counts_written_messages_and_queued_counts_accepted_ones,
);

async fn server_sends_heart_beats_at_negotiated_interval(kind: Kind) -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.heartbeat.server = "100,100".into();
        c.heartbeat.min_ms = 100;
    })
    .await;
    let mut c = b.raw(kind).await;
    let f = c
        .connect_with(&[("accept-version", "1.2"), ("heart-beat", "0,50")])
        .await?;
    // The client's 50 ms clamped to min_ms; it sends none, so none expected.
    ensure!(
        f.header_str("heart-beat") == Some("100,0"),
        "{:?}",
        f.headers
    );
    let start = Instant::now();
    let mut beats = 0;
    while beats < 4 {
        match c.next_event(Duration::from_secs(2)).await? {
            Event::HeartBeat => beats += 1,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    // max(min_ms 100, 50) = 100 ms between beats: 4 beats take at least ~300 ms.
    ensure!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    Ok(())
}

async fn silent_client_is_closed_after_heart_beat_timeout(kind: Kind) -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.heartbeat.server = "0,100".into();
        c.heartbeat.min_ms = 100;
        c.heartbeat.grace_ms = 100;
    })
    .await;
    let mut c = b.raw(kind).await;
    c.connect_with(&[("accept-version", "1.2"), ("heart-beat", "200,0")])
        .await?;
    let start = Instant::now();
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("heart-beat timeout"));
    // 200 ms * 2.0 + 100 ms grace (at most half the interval).
    ensure!(
        start.elapsed() >= Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );
    Ok(())
}

async fn client_that_heart_beats_stays_connected(kind: Kind) -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.heartbeat.server = "0,100".into();
        c.heartbeat.min_ms = 100;
        c.heartbeat.grace_ms = 50;
    })
    .await;
    let mut c = b.raw(kind).await;
    c.connect_with(&[("accept-version", "1.2"), ("heart-beat", "100,0")])
        .await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        c.send_raw(b"\n").await?;
    }
    c.subscribe("s", "/topic/alive", "auto").await?;
    Ok(())
}

async fn oversized_frame_is_an_error_and_others_keep_working(kind: Kind) -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.limits.max_frame_bytes = 1024;
        c.limits.max_body_bytes = 1024;
    })
    .await;
    let mut healthy = b.client(kind).await;
    healthy.subscribe("s", "/topic/ok", "auto").await?;
    let mut bad = b.client(kind).await;
    bad.send("/topic/ok", &"x".repeat(4096)).await?;
    let e = bad.expect_error_and_close().await?;
    ensure!(
        matches!(
            e.header_str("message"),
            Some("frame too large" | "body too large")
        ),
        "{:?}",
        e.headers
    );
    let mut p = b.client(kind).await;
    p.send("/topic/ok", "fine").await?;
    ensure!(body(&healthy.message().await?) == "fine");
    Ok(())
}

async fn too_many_subscriptions_is_an_error(kind: Kind) -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.max_subscriptions_per_connection = 2).await;
    let mut c = b.client(kind).await;
    c.subscribe("1", "/topic/a", "auto").await?;
    c.subscribe("2", "/topic/b", "auto").await?;
    c.command(
        Command::Subscribe,
        &[("id", "3"), ("destination", "/topic/c")],
    )
    .await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("too many subscriptions"));
    Ok(())
}

async fn slow_subscriber_is_disconnected_without_stalling_others(kind: Kind) -> Result<()> {
    let b =
        TestBroker::start_with(|c| c.limits.max_pending_bytes_per_connection = 256 * 1024).await;
    let mut slow = b.client(kind).await;
    slow.subscribe("s", "/topic/flood", "auto").await?;
    let mut fast = b.client(kind).await;
    fast.subscribe("s", "/topic/flood", "auto").await?;
    let payload = "p".repeat(4096);
    // ~24 MiB in total, more than socket buffers can absorb. The publisher
    // goes in batches the fast subscriber keeps up with, so only the
    // subscriber that never reads exceeds its 256 KiB budget.
    let mut p = b.tcp_client().await;
    // A batch is ~84 KiB of budget; the previous batch's bytes may still be
    // uncredited when the next one is queued, so two must fit in 256 KiB.
    for batch in 0..300 {
        for _ in 0..20 {
            p.send("/topic/flood", &payload).await?;
        }
        for n in 0..20 {
            let m = fast.message().await.map_err(|e| {
                anyhow::anyhow!("fast subscriber lost message {n} of batch {batch}: {e}")
            })?;
            ensure!(m.body.len() == 4096);
        }
    }
    let metrics = &b.core.metrics;
    wait_until(|| {
        metrics
            .slow_consumer_disconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await?;
    // The slow one, when it finally reads, finds its backlog and then the ERROR.
    loop {
        match slow.recv_within(Duration::from_secs(10)).await {
            Ok(f) if f.command == Command::Message => continue,
            Ok(f) => {
                ensure!(
                    f.command == Command::Error && f.header_str("message") == Some("slow consumer")
                );
                break;
            }
            Err(e) => {
                ensure!(e.to_string().contains("closed"), "{e}");
                break;
            }
        }
    }
    Ok(())
}

async fn slow_subscriber_under_drop_policy_loses_messages_but_stays(kind: Kind) -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.limits.max_pending_bytes_per_connection = 64 * 1024;
        c.slow_consumer = stomp_broker::config::SlowConsumerPolicy::Drop;
    })
    .await;
    let mut slow = b.client(kind).await;
    slow.subscribe("s", "/topic/drop", "auto").await?;
    let mut p = b.tcp_client().await;
    let payload = "d".repeat(4096);
    for _ in 0..6000 {
        p.send("/topic/drop", &payload).await?;
    }
    p.send_receipted("/topic/other", "done").await?;
    let dropped = b
        .core
        .metrics
        .messages_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    ensure!(dropped > 0, "some messages dropped");
    ensure!(
        b.core
            .metrics
            .slow_consumer_disconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    );
    // Still connected: drain and then a fresh message arrives.
    let mut received = 0u64;
    while let Ok(f) = slow.recv_within(Duration::from_millis(500)).await {
        ensure!(f.command == Command::Message);
        received += 1;
    }
    ensure!(
        received + dropped == 6000,
        "received {received} + dropped {dropped}"
    );
    p.send("/topic/drop", "again").await?;
    ensure!(body(&slow.message().await?) == "again");
    Ok(())
}

/// `stomp_messages_queued_total` counts MESSAGEs a subscriber's connection
/// accepted, `stomp_messages_delivered_total` those written to its socket:
/// with a subscriber that stopped reading (its socket full) queued runs
/// ahead; once it reads everything the two agree.
async fn delivered_counts_written_messages_and_queued_counts_accepted_ones(
    kind: Kind,
) -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    const N: u64 = 1000;
    // 16 MB in all: far more than loopback socket buffers hold for a peer
    // that does not read, well under the connection's byte budget (so the
    // slow-consumer policy stays out of it).
    let b = TestBroker::start_with(|c| {
        c.limits.max_pending_bytes_per_connection = 64 * 1024 * 1024;
        c.limits.memory_budget_bytes = 512 * 1024 * 1024;
        c.listen.status_page = true;
    })
    .await;
    let mut stuck = b.client(kind).await;
    stuck.subscribe("s", "/topic/flood", "auto").await?;
    let mut p = b.tcp_client().await;
    let payload = "q".repeat(16 * 1024);
    for _ in 0..N {
        p.send("/topic/flood", &payload).await?;
    }
    p.send_receipted("/topic/none", "done").await?;
    let m = &b.core.metrics;
    wait_until(|| m.messages_queued.load(Relaxed) == N).await?;
    let delivered = m.messages_delivered.load(Relaxed);
    ensure!(
        delivered < N,
        "the stuck subscriber's socket cannot hold {N} messages, yet {delivered} counted as written"
    );
    let (status, text) = b.http_get("/metrics").await?;
    ensure!(status == 200);
    ensure!(
        text.contains(&format!("stomp_messages_queued_total {N}\n")),
        "{text}"
    );
    let shown = metric(&text, "stomp_messages_delivered_total")?;
    ensure!(shown < N, "delivered {shown} while stuck");
    ensure!(m.slow_consumer_disconnects.load(Relaxed) == 0);
    // It reads: everything arrives and delivered catches up with queued.
    for n in 0..N {
        let f = stuck
            .recv_within(Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!("message {n}: {e}"))?;
        ensure!(f.command == Command::Message && f.body.len() == payload.len());
    }
    wait_until(|| m.messages_delivered.load(Relaxed) == N).await?;
    ensure!(m.messages_queued.load(Relaxed) == N);
    let (_, text) = b.http_get("/metrics").await?;
    ensure!(
        metric(&text, "stomp_messages_delivered_total")? == N,
        "{text}"
    );
    ensure!(metric(&text, "stomp_messages_queued_total")? == N, "{text}");
    // /stats.json shows the status sampler's latest sample (taken every
    // second): poll until it has caught up.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, json) = b.http_get("/stats.json").await?;
        ensure!(status == 200, "{status} {json}");
        let v: serde_json::Value = serde_json::from_str(&json)?;
        if v["messages_queued"] == N && v["messages_delivered"] == N {
            break;
        }
        ensure!(Instant::now() < deadline, "{json}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The value of an unlabelled sample in Prometheus text.
fn metric(text: &str, name: &str) -> Result<u64> {
    let prefix = format!("{name} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .ok_or_else(|| anyhow::anyhow!("no {name} in\n{text}"))?;
    Ok(line[prefix.len()..].trim().parse()?)
}

async fn shutdown_tells_clients_and_closes(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.subscribe("s", "/topic/bye", "auto").await?;
    let started = Instant::now();
    let shutdown = b.shutdown.clone();
    shutdown.cancel();
    let e = c.expect(Command::Error).await?;
    ensure!(e.header_str("message") == Some("server shutting down"));
    let code = c.expect_closed().await?;
    if kind == Kind::Ws {
        ensure!(code == Some(1001), "close code {code:?}");
    }
    b.stop().await;
    ensure!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[tokio::test]
async fn http_endpoints_report_health_and_metrics() -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.tcp_client().await;
    c.subscribe("s", "/topic/m", "auto").await?;
    c.send("/topic/m", "x").await?;
    c.message().await?;
    ensure!(b.http_get("/healthz").await?.0 == 200);
    ensure!(b.http_get("/readyz").await?.0 == 200);
    ensure!(b.http_get("/nope").await?.0 == 404);
    // The delivered count lands just after the write the client saw:
    // poll for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let (status, m) = b.http_get("/metrics").await?;
        ensure!(status == 200);
        let settled = [
            "stomp_messages_queued_total 1\n",
            "stomp_messages_delivered_total 1\n",
        ]
        .iter()
        .all(|n| m.contains(n));
        if settled || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for needle in [
        "stomp_connections 1",
        "stomp_subscriptions 1",
        "stomp_frames_in_total{command=\"SEND\"} 1",
        "stomp_frames_out_total{command=\"MESSAGE\"} 1",
        "stomp_messages_published_total 1",
        "stomp_messages_queued_total 1\n",
        "stomp_messages_delivered_total 1\n",
        "stomp_slow_consumer_disconnects_total 0",
        "stomp_bytes_in_total",
    ] {
        ensure!(m.contains(needle), "missing {needle} in\n{m}");
    }
    Ok(())
}

#[tokio::test]
async fn connection_limit_refuses_extra_connections() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.max_connections = 2).await;
    let _a = b.tcp_client().await;
    let _w = b.ws_client().await;
    let mut t = Client::tcp(b.stomp).await?;
    let e = t.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("too many connections"));
    ensure!(
        Client::ws(&b.ws_url()).await.is_err(),
        "WebSocket upgrade refused with 503"
    );
    Ok(())
}

#[tokio::test]
async fn broker_keeps_serving_after_garbage_connections() -> Result<()> {
    let b = TestBroker::start().await;
    let mut healthy = b.ws_client().await;
    healthy.subscribe("s", "/topic/h", "auto").await?;
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"\xff\xfe\x00",
        b"SEND\ndestination:/topic/h\ncontent-length:abc\n\n\0",
    ] {
        let mut g = Client::tcp(b.stomp).await?;
        g.send_raw(garbage).await?;
        g.expect_error_and_close().await?;
    }
    let mut p = b.tcp_client().await;
    p.send("/topic/h", "still here").await?;
    ensure!(body(&healthy.message().await?) == "still here");
    Ok(())
}
