//! Topics, wildcards, queues, WebSocket framing details and the in-process API.

use std::time::Duration;

use anyhow::{ensure, Result};
use bytes::Bytes;
use e2e_tests::{body, both_transports, Client, Kind, TestBroker};
use stomp_codec::Headers;

both_transports!(
    topic_fans_out_to_every_subscriber,
    wildcard_star_matches_exactly_one_segment,
    wildcard_hash_matches_zero_or_more_segments,
    queue_round_robins_between_consumers,
    queue_buffers_until_a_consumer_subscribes,
    send_to_unknown_prefix_is_an_error,
    send_to_wildcard_destination_is_an_error,
    body_with_nul_survives_with_content_length,
);

async fn topic_fans_out_to_every_subscriber(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut subs = Vec::new();
    for i in 0..5 {
        let mut c = b.client(kind).await;
        c.subscribe(&format!("s{i}"), "/topic/fan", "auto").await?;
        subs.push(c);
    }
    let mut p = b.client(kind).await;
    for n in 0..3 {
        p.send("/topic/fan", &format!("m{n}")).await?;
    }
    for c in &mut subs {
        for n in 0..3 {
            ensure!(
                body(&c.message().await?) == format!("m{n}"),
                "order kept per subscriber"
            );
        }
    }
    Ok(())
}

async fn wildcard_star_matches_exactly_one_segment(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.subscribe("w", "/topic/order.*", "auto").await?;
    let mut p = b.client(kind).await;
    p.send("/topic/order.1.extra", "no").await?;
    p.send("/topic/order", "no").await?;
    p.send("/topic/order.17", "yes").await?;
    let m = c.message().await?;
    ensure!(body(&m) == "yes");
    ensure!(m.header_str("destination") == Some("/topic/order.17"));
    ensure!(m.header_str("subscription") == Some("w"));
    c.expect_silence(Duration::from_millis(150)).await
}

async fn wildcard_hash_matches_zero_or_more_segments(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.subscribe("w", "/topic/order.#", "auto").await?;
    let mut p = b.client(kind).await;
    for d in [
        "/topic/order",
        "/topic/order.1",
        "/topic/order.1.status",
        "/topic/orders.1",
    ] {
        p.send(d, d).await?;
    }
    for want in ["/topic/order", "/topic/order.1", "/topic/order.1.status"] {
        ensure!(body(&c.message().await?) == want);
    }
    c.expect_silence(Duration::from_millis(150)).await
}

async fn queue_round_robins_between_consumers(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut a = b.client(kind).await;
    let mut c = b.client(kind).await;
    a.subscribe("q", "/queue/work", "auto").await?;
    c.subscribe("q", "/queue/work", "auto").await?;
    let mut p = b.client(kind).await;
    for n in 0..10 {
        p.send("/queue/work", &n.to_string()).await?;
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(body(&a.message().await?).parse::<u32>()?);
        got.push(body(&c.message().await?).parse::<u32>()?);
    }
    a.expect_silence(Duration::from_millis(100)).await?;
    c.expect_silence(Duration::from_millis(100)).await?;
    got.sort_unstable();
    ensure!(
        got == (0..10).collect::<Vec<_>>(),
        "each message exactly once: {got:?}"
    );
    Ok(())
}

async fn queue_buffers_until_a_consumer_subscribes(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut p = b.client(kind).await;
    for n in 0..3 {
        p.send("/queue/later", &n.to_string()).await?;
    }
    p.send_receipted("/queue/other", "x").await?;
    ensure!(b.core.router.queue_depth("/queue/later") == 3);
    let mut c = b.client(kind).await;
    c.subscribe("q", "/queue/later", "auto").await?;
    for n in 0..3 {
        ensure!(body(&c.message().await?) == n.to_string());
    }
    Ok(())
}

async fn send_to_unknown_prefix_is_an_error(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.send("/exchange/x", "hi").await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("unknown destination"));
    Ok(())
}

async fn send_to_wildcard_destination_is_an_error(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.send("/topic/a.*", "hi").await?;
    c.expect_error_and_close().await?;
    Ok(())
}

async fn body_with_nul_survives_with_content_length(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.subscribe("s", "/topic/bin", "auto").await?;
    let payload = [0u8, 1, 2, 0, 255, 0];
    c.send_with(
        "/topic/bin",
        &payload,
        &[("content-type", "application/octet-stream")],
    )
    .await?;
    let m = c.message().await?;
    ensure!(m.body.as_ref() == payload);
    ensure!(m.header_str("content-length") == Some("6"));
    if kind == Kind::Ws {
        ensure!(
            c.last_ws_binary == Some(true),
            "binary bodies travel in binary WebSocket frames"
        );
    }
    Ok(())
}

#[tokio::test]
async fn websocket_text_bodies_use_text_frames_and_binary_content_types_use_binary() -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.ws_client().await;
    c.subscribe("s", "/topic/kinds", "auto").await?;
    c.send_with(
        "/topic/kinds",
        b"{\"a\":1}",
        &[("content-type", "application/json")],
    )
    .await?;
    c.message().await?;
    ensure!(c.last_ws_binary == Some(false));
    c.send_with("/topic/kinds", b"plain", &[]).await?;
    c.message().await?;
    ensure!(c.last_ws_binary == Some(false));
    c.send_with(
        "/topic/kinds",
        b"abc",
        &[("content-type", "application/octet-stream")],
    )
    .await?;
    c.message().await?;
    ensure!(c.last_ws_binary == Some(true));
    c.send_with(
        "/topic/kinds",
        &[0xff, 0xfe],
        &[("content-type", "text/plain")],
    )
    .await?;
    c.message().await?;
    ensure!(
        c.last_ws_binary == Some(true),
        "non-UTF-8 bodies are never sent as text"
    );
    Ok(())
}

#[tokio::test]
async fn websocket_subprotocol_negotiation_picks_best_offered() -> Result<()> {
    let b = TestBroker::start().await;
    let c = Client::ws_with_protocols(&b.ws_url(), Some("v10.stomp, v11.stomp")).await?;
    ensure!(c.subprotocol.as_deref() == Some("v11.stomp"));
    let c = Client::ws_with_protocols(&b.ws_url(), Some("v12.stomp, v10.stomp")).await?;
    ensure!(c.subprotocol.as_deref() == Some("v12.stomp"));
    let mut c = Client::ws_with_protocols(&b.ws_url(), None).await?;
    ensure!(c.subprotocol.is_none());
    c.connect_default().await?;
    Ok(())
}

#[tokio::test]
async fn websocket_frame_may_span_messages_and_message_may_hold_frames() -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.ws_client().await;
    // One SUBSCRIBE split over three WebSocket messages (text and binary).
    c.send_raw(b"SUBSCRIBE\nid:s\ndest").await?;
    c.send_ws_binary(b"ination:/topic/split\nreceipt:r").await?;
    c.send_raw(b"1\n\n\0").await?;
    c.expect_receipt("r1").await?;
    // Two SENDs in one WebSocket message.
    c.send_raw(b"SEND\ndestination:/topic/split\n\none\0SEND\ndestination:/topic/split\n\ntwo\0")
        .await?;
    ensure!(body(&c.message().await?) == "one");
    ensure!(body(&c.message().await?) == "two");
    Ok(())
}

#[tokio::test]
async fn in_process_api_publishes_and_subscribes_through_the_router() -> Result<()> {
    let b = TestBroker::start().await;
    let mut local = b.core.subscribe_local("/topic/local.*")?;
    let mut ws = b.ws_client().await;
    ws.subscribe("s", "/topic/local.1", "auto").await?;
    let mut h = Headers::new();
    h.push("content-type", "text/plain");
    h.push("message-id", "fixed-id-1");
    let n = b
        .core
        .publish("/topic/local.1", h, Bytes::from_static(b"from inside"))?;
    ensure!(n == 2, "delivered to {n}");
    let m = tokio::time::timeout(e2e_tests::WAIT, local.recv())
        .await?
        .expect("message");
    ensure!(&*m.message_id == "fixed-id-1");
    let wm = ws.message().await?;
    ensure!(body(&wm) == "from inside");
    ensure!(wm.header_str("message-id") == Some("fixed-id-1"));
    // A network SEND reaches the local subscriber too.
    ws.send("/topic/local.2", "from outside").await?;
    let m = tokio::time::timeout(e2e_tests::WAIT, local.recv())
        .await?
        .expect("message");
    ensure!(m.template.body().as_ref() == b"from outside");
    Ok(())
}

#[tokio::test]
async fn queue_overflow_drops_oldest_and_counts() -> Result<()> {
    let b = TestBroker::start_with(|c| c.queues.max_messages = 3).await;
    let mut p = b.tcp_client().await;
    for n in 0..5 {
        p.send("/queue/small", &n.to_string()).await?;
    }
    p.send_receipted("/queue/x", "sync").await?;
    let mut c = b.tcp_client().await;
    c.subscribe("q", "/queue/small", "auto").await?;
    for n in 2..5 {
        ensure!(body(&c.message().await?) == n.to_string());
    }
    let (_, metrics) = b.http_get("/metrics").await?;
    ensure!(
        metrics.contains("stomp_messages_dropped_total 2"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn queue_overflow_reject_publish_errors_the_sender() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.queues.max_messages = 1;
        c.queues.overflow = stomp_broker::config::QueueOverflow::RejectPublish;
    })
    .await;
    let mut p = b.tcp_client().await;
    p.send_receipted("/queue/tiny", "1").await?;
    p.send("/queue/tiny", "2").await?;
    let e = p.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("queue full"));
    Ok(())
}

#[tokio::test]
async fn late_subscriber_gets_retained_messages_replayed_first() -> Result<()> {
    use stomp_broker::retain::RetainPolicy;
    let b = TestBroker::start().await;
    let policy = Some(RetainPolicy {
        last_n: 1,
        ttl: Duration::from_secs(60),
    });
    for (dest, body) in [
        ("/topic/order.7", "placed"),
        ("/topic/order.7", "shipped"),
        ("/topic/order.8", "other"),
    ] {
        b.core.publish_retained(
            dest,
            Headers::new(),
            Bytes::from_static(body.as_bytes()),
            policy,
        )?;
    }
    let mut c = b.ws_client().await;
    c.subscribe("s", "/topic/order.7", "auto").await?;
    let m = c.message().await?;
    ensure!(body(&m) == "shipped", "only the last one is retained");
    ensure!(m.header_str("replayed") == Some("true"));
    ensure!(m.header_str("subscription") == Some("s"));
    c.expect_silence(Duration::from_millis(100)).await?;
    // Live messages after the replay carry no replay mark.
    b.core.publish(
        "/topic/order.7",
        Headers::new(),
        Bytes::from_static(b"delivered"),
    )?;
    let m = c.message().await?;
    ensure!(body(&m) == "delivered" && m.header_str("replayed").is_none());
    // A wildcard subscription replays every matching destination.
    let mut w = b.tcp_client().await;
    w.subscribe("w", "/topic/order.*", "auto").await?;
    let mut got = vec![body(&w.message().await?), body(&w.message().await?)];
    got.sort();
    ensure!(got == ["other", "shipped"], "{got:?}");
    Ok(())
}

/// Publishes `n` messages back to back to one WebSocket subscriber and
/// returns how many WebSocket messages carried them.
async fn ws_messages_for_burst(frame_per_message: bool, n: usize) -> Result<u64> {
    let b = TestBroker::start_with(|c| c.listen.ws_frame_per_message = frame_per_message).await;
    let mut c = b.ws_client().await;
    c.subscribe("s", "/topic/burst", "auto").await?;
    let before = c.ws_messages;
    // No await between publishes: they queue up for one write.
    for i in 0..n {
        b.core
            .publish("/topic/burst", Headers::new(), Bytes::from(format!("m{i}")))?;
    }
    for i in 0..n {
        ensure!(body(&c.message().await?) == format!("m{i}"));
    }
    Ok(c.ws_messages - before)
}

#[tokio::test]
async fn websocket_frames_are_packed_unless_one_frame_per_message_is_configured() -> Result<()> {
    let packed = ws_messages_for_burst(false, 50).await?;
    ensure!(
        packed < 50,
        "by default frames of one write share a WebSocket message ({packed} messages)"
    );
    let apart = ws_messages_for_burst(true, 50).await?;
    ensure!(
        apart == 50,
        "ws_frame_per_message: one WebSocket message per frame, got {apart}"
    );
    Ok(())
}
