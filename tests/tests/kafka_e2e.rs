//! Kafka through the whole broker, against the real Kafka of
//! `scripts/kafka.sh` (`KAFKA_BOOTSTRAP` or `.kafka/bootstrap`; the tests
//! fail, never skip, without one): order results produced to Kafka reach
//! exactly the STOMP subscribers of their order over WebSocket and TCP, late
//! subscribers get the retained result, and SENDs to `/app/<topic>` land in
//! Kafka before their RECEIPT. Every test uses its own topics and group.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use e2e_tests::{
    body, both_transports,
    kafka::{
        bootstrap, bridge_config, consume, create_topic, delivered, enqueue, frame_headers,
        free_port, high_watermark, producer, record_headers, unique, wait_for, Landed,
    },
    Client, Kind, TestBroker,
};
use rdkafka::Message as _;
use stomp_codec::{Command, Frame};
use tokio::sync::watch;

/// Orders produced by the fan-out test.
const ORDERS: usize = 10_000;
/// Subscriber connections (half WebSocket, half TCP).
const SUBSCRIBERS: usize = 200;
/// Order ids each of them follows.
const ORDERS_PER_SUBSCRIBER: usize = 5;

fn order_id(i: usize) -> String {
    format!("o{i:05}")
}

fn order_json(id: &str, status: &str) -> String {
    serde_json::json!({ "orderId": id, "status": status }).to_string()
}

/// Checks one MESSAGE against the record it must come from.
fn check_order_message(
    f: &Frame,
    topic: &str,
    landed: &HashMap<String, Landed>,
    want_sub: Option<&str>,
) -> Result<String> {
    ensure!(f.command == Command::Message, "not a MESSAGE: {f:?}");
    let h = frame_headers(f);
    let dest = h.get("destination").context("destination")?;
    let key = dest
        .strip_prefix("/topic/order.")
        .with_context(|| format!("unexpected destination {dest}"))?
        .to_owned();
    let json: serde_json::Value = serde_json::from_slice(&f.body)
        .with_context(|| format!("body of {dest} is not JSON: {}", body(f)))?;
    ensure!(
        json["orderId"] == key.as_str(),
        "body {json} delivered on {dest}"
    );
    ensure!(json["status"] == "FILLED", "body {json}");
    let at = landed
        .get(&key)
        .with_context(|| format!("no record produced for {key}"))?;
    let want = |name: &str, value: String| -> Result<()> {
        ensure!(
            h.get(name) == Some(&value),
            "{name}: want {value:?}, got {:?} (headers {h:?})",
            h.get(name)
        );
        Ok(())
    };
    want("content-type", "application/json".into())?;
    want("message-id", at.message_id(topic))?;
    want("kafka-topic", topic.into())?;
    want("kafka-partition", at.partition.to_string())?;
    want("kafka-offset", at.offset.to_string())?;
    let ts: i64 = h
        .get("kafka-timestamp")
        .context("kafka-timestamp")?
        .parse()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    ensure!(
        (now - 600_000..=now + 60_000).contains(&ts),
        "kafka-timestamp {ts} is not a recent epoch-ms value"
    );
    ensure!(
        !h.contains_key("replayed"),
        "live delivery marked replayed: {h:?}"
    );
    if let Some(s) = want_sub {
        want("subscription", s.into())?;
    }
    Ok(key)
}

/// Receives exactly `n` frames within `within`.
async fn recv_n(c: &mut Client, n: usize, within: Duration) -> Result<Vec<Frame>> {
    let deadline = Instant::now() + within;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = c
            .recv_within(left)
            .await
            .with_context(|| format!("after {} of {n} frames", out.len()))?;
        out.push(f);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_order_results_reach_exactly_their_subscribers_over_ws_and_tcp() -> Result<()>
{
    let t0 = Instant::now();
    let brokers = bootstrap();
    let topic = unique("order-results");
    create_topic(&brokers, &topic, 3).await?;
    let route = format!("{topic}=/topic/order.{{key}}");
    let cfg = bridge_config(&brokers, &unique("e2e-fanout"), &[&route]);
    let b = TestBroker::start_with(move |c| c.kafka = Some(cfg)).await;

    // 200 subscribers, alternating WebSocket and TCP, each following 5 orders
    // (orders 0..1000), plus one WebSocket wildcard subscriber that must see
    // all 10,000. Everyone is subscribed (RECEIPT) before the first record.
    let (done_tx, done_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(SUBSCRIBERS + 1);
    for s in 0..SUBSCRIBERS {
        let kind = if s % 2 == 0 { Kind::Ws } else { Kind::Tcp };
        let mut c = b.client(kind).await;
        let mut done = done_rx.clone();
        let ready = ready_tx.clone();
        tasks.spawn(async move {
            let mut subs = HashMap::new();
            for j in 0..ORDERS_PER_SUBSCRIBER {
                let id = order_id(s * ORDERS_PER_SUBSCRIBER + j);
                let sub = format!("sub-{id}");
                c.subscribe(&sub, &format!("/topic/order.{id}"), "auto")
                    .await?;
                subs.insert(id, sub);
            }
            ready.send(()).await?;
            let frames = recv_n(&mut c, ORDERS_PER_SUBSCRIBER, Duration::from_secs(90))
                .await
                .with_context(|| format!("subscriber {s} ({kind:?})"))?;
            // Nothing foreign arrives once every record has been routed.
            done.wait_for(|d| *d).await?;
            c.expect_silence(Duration::from_millis(300))
                .await
                .with_context(|| format!("subscriber {s} ({kind:?}) got a foreign message"))?;
            anyhow::Ok((s, kind, subs, frames))
        });
    }
    drop(ready_tx);
    let mut wild = b.client(Kind::Ws).await;
    wild.subscribe("all", "/topic/order.*", "auto").await?;
    for _ in 0..SUBSCRIBERS {
        ready_rx.recv().await.context("a subscriber task failed")?;
    }
    let subscribed = t0.elapsed();

    // Produce 10,000 order results with distinct keys over 3 partitions.
    let p = producer(&brokers);
    let t_produce = Instant::now();
    let mut pending = Vec::with_capacity(ORDERS);
    for i in 0..ORDERS {
        let id = order_id(i);
        let f = enqueue(
            &p,
            &topic,
            Some(&id),
            &[],
            order_json(&id, "FILLED").as_bytes(),
        )?;
        pending.push((id, f));
    }
    let mut landed = HashMap::with_capacity(ORDERS);
    for (id, f) in pending {
        landed.insert(id, delivered(f).await?);
    }
    let partitions: HashSet<i32> = landed.values().map(|l| l.partition).collect();
    ensure!(
        partitions.len() == 3,
        "records spread over partitions {partitions:?}"
    );
    let produced = t_produce.elapsed();

    // The wildcard subscriber sees every order exactly once.
    let mut seen = HashSet::with_capacity(ORDERS);
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.len() < ORDERS {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = wild
            .recv_within(left)
            .await
            .with_context(|| format!("wildcard subscriber after {} of {ORDERS}", seen.len()))?;
        let key = check_order_message(&f, &topic, &landed, Some("all"))?;
        ensure!(seen.insert(key.clone()), "duplicate delivery of {key}");
    }
    let routed = t_produce.elapsed();
    done_tx.send(true)?;
    wild.expect_silence(Duration::from_millis(300)).await?;

    let mut per_kind = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (s, kind, subs, frames) = joined??;
        let mut got = HashSet::new();
        for f in &frames {
            let h = frame_headers(f);
            let sub = h.get("subscription").cloned().unwrap_or_default();
            let key = check_order_message(f, &topic, &landed, None)
                .with_context(|| format!("subscriber {s} ({kind:?})"))?;
            ensure!(
                subs.get(&key) == Some(&sub),
                "subscriber {s} ({kind:?}) got order {key} on subscription {sub:?}; it follows {subs:?}"
            );
            ensure!(got.insert(key.clone()), "subscriber {s} got {key} twice");
        }
        ensure!(
            got.len() == subs.len(),
            "subscriber {s}: {got:?} vs {subs:?}"
        );
        *per_kind.entry(format!("{kind:?}")).or_insert(0) += 1;
    }
    ensure!(
        per_kind.get("Ws") == Some(&(SUBSCRIBERS / 2)),
        "{per_kind:?}"
    );
    ensure!(
        per_kind.get("Tcp") == Some(&(SUBSCRIBERS / 2)),
        "{per_kind:?}"
    );
    let m = b.core.bridge().context("bridge running")?.metrics();
    ensure!(m.routed() >= ORDERS as u64, "routed {}", m.routed());
    ensure!(m.unroutable() == 0, "unroutable {}", m.unroutable());
    eprintln!(
        "fan-out: {SUBSCRIBERS} subscribers ready after {subscribed:?}; {ORDERS} records produced in {produced:?}; \
         all delivered {routed:?} after the first produce; total {:?}",
        t0.elapsed()
    );
    b.stop().await;
    Ok(())
}

/// Waits until the bridge routed `n` messages in total.
async fn wait_routed(b: &TestBroker, n: u64) -> Result<()> {
    let core = b.core.clone();
    wait_for(
        &format!("{n} messages routed by the bridge"),
        Duration::from_secs(30),
        move || {
            let core = core.clone();
            async move { core.bridge().is_some_and(|br| br.metrics().routed() >= n) }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_gets_the_retained_order_result_by_key_and_by_json_pointer() -> Result<()> {
    let brokers = bootstrap();
    let topic = unique("order-results-late");
    create_topic(&brokers, &topic, 1).await?;
    // Two routes on one topic: by record key and by the JSON body's orderId.
    let by_key = format!("{topic}=/topic/order.{{key}}");
    let by_json = format!("{topic}=/topic/ojson.{{json:/orderId}}");
    let cfg = bridge_config(&brokers, &unique("e2e-late"), &[&by_key, &by_json]);
    let b = TestBroker::start_with(move |c| c.kafka = Some(cfg)).await;

    // Two results for one order before anybody subscribed: retain_last = 1
    // keeps only the newer one.
    let p = producer(&brokers);
    let first = e2e_tests::kafka::produce(
        &p,
        &topic,
        Some("k-1"),
        &[],
        order_json("A-17", "NEW").as_bytes(),
    )
    .await?;
    let second = e2e_tests::kafka::produce(
        &p,
        &topic,
        Some("k-1"),
        &[],
        order_json("A-17", "FILLED").as_bytes(),
    )
    .await?;
    ensure!(second.offset == first.offset + 1);
    wait_routed(&b, 4).await?;

    let mut ws = b.client(Kind::Ws).await;
    ws.subscribe("by-key", "/topic/order.k-1", "auto").await?;
    let mut tcp = b.client(Kind::Tcp).await;
    tcp.subscribe("by-json", "/topic/ojson.A-17", "auto")
        .await?;
    let mut other = b.client(Kind::Ws).await;
    other.subscribe("x", "/topic/order.k-2", "auto").await?;
    for (c, sub, dest) in [
        (&mut ws, "by-key", "/topic/order.k-1"),
        (&mut tcp, "by-json", "/topic/ojson.A-17"),
    ] {
        let f = c
            .message()
            .await
            .with_context(|| format!("replay on {dest}"))?;
        let h = frame_headers(&f);
        ensure!(
            h.get("replayed").map(String::as_str) == Some("true"),
            "{h:?}"
        );
        ensure!(
            h.get("subscription").map(String::as_str) == Some(sub),
            "{h:?}"
        );
        ensure!(
            h.get("destination").map(String::as_str) == Some(dest),
            "{h:?}"
        );
        ensure!(
            h.get("message-id") == Some(&second.message_id(&topic)),
            "only the newest result is retained: {h:?}"
        );
        ensure!(
            body(&f) == order_json("A-17", "FILLED"),
            "body {}",
            body(&f)
        );
        c.expect_silence(Duration::from_millis(300)).await?;
    }
    other.expect_silence(Duration::from_millis(200)).await?;

    // A later result arrives live, without `replayed`.
    let third = e2e_tests::kafka::produce(
        &p,
        &topic,
        Some("k-1"),
        &[],
        order_json("A-17", "SHIPPED").as_bytes(),
    )
    .await?;
    for c in [&mut ws, &mut tcp] {
        let f = c.message().await?;
        let h = frame_headers(&f);
        ensure!(!h.contains_key("replayed"), "{h:?}");
        ensure!(
            h.get("message-id") == Some(&third.message_id(&topic)),
            "{h:?}"
        );
    }
    other.expect_silence(Duration::from_millis(200)).await?;
    b.stop().await;
    Ok(())
}

both_transports!(send_to_app_destination_is_in_kafka_when_the_receipt_arrives);

async fn send_to_app_destination_is_in_kafka_when_the_receipt_arrives(kind: Kind) -> Result<()> {
    let brokers = bootstrap();
    let topic = unique("orders");
    create_topic(&brokers, &topic, 1).await?;
    // Producer-only bridge (no routes).
    let cfg = bridge_config(&brokers, &unique("e2e-send"), &[]);
    let b = TestBroker::start_with(move |c| c.kafka = Some(cfg)).await;
    let mut c = b.client(kind).await;
    let dest = format!("/app/{topic}");
    let payload = order_json("B-9", "PLACED");
    c.send_with(
        &dest,
        payload.as_bytes(),
        &[
            ("kafka-key", "B-9"),
            ("content-type", "application/json"),
            ("trace-id", "trace-abc"),
            ("receipt", "r-1"),
        ],
    )
    .await?;
    let r = c
        .recv_within(Duration::from_secs(15))
        .await
        .context("RECEIPT for the SEND to Kafka")?;
    ensure!(
        r.command == Command::Receipt && r.header_str("receipt-id") == Some("r-1"),
        "{:?} {:?} {}",
        r.command,
        r.headers,
        body(&r)
    );
    // The RECEIPT means Kafka has it: the partition's high watermark,
    // asked right now, already counts it.
    let high = high_watermark(&brokers, &topic, 0).await?;
    ensure!(high == 1, "high watermark {high} when the RECEIPT arrived");
    let recs = consume(&brokers, &topic, 1, Duration::from_secs(30)).await?;
    let rec = &recs[0];
    ensure!(rec.key() == Some(b"B-9".as_slice()), "key {:?}", rec.key());
    ensure!(rec.payload() == Some(payload.as_bytes()), "payload");
    let h = record_headers(rec);
    ensure!(
        h.get("trace-id").map(String::as_str) == Some("trace-abc"),
        "{h:?}"
    );
    ensure!(
        h.get("content-type").map(String::as_str) == Some("application/json"),
        "{h:?}"
    );
    for absent in ["destination", "receipt", "kafka-key", "content-length"] {
        ensure!(
            !h.contains_key(absent),
            "{absent} forwarded to Kafka: {h:?}"
        );
    }
    // The session is still usable.
    c.send_with(&dest, b"second", &[("receipt", "r-2")]).await?;
    c.expect_receipt("r-2").await?;
    let high = high_watermark(&brokers, &topic, 0).await?;
    ensure!(
        high == 2,
        "high watermark {high} when the second RECEIPT arrived"
    );
    let m = b.core.bridge().context("bridge")?.metrics();
    ensure!(m.produced() == 2, "produced {}", m.produced());
    b.stop().await;
    Ok(())
}

async fn expect_kafka_error(c: &mut Client, receipt: &str, within: Duration) -> Result<Frame> {
    let f = c.recv_within(within).await.context("waiting for ERROR")?;
    if f.command != Command::Error {
        bail!(
            "expected ERROR, got {:?} {:?} {}",
            f.command,
            f.headers,
            body(&f)
        );
    }
    ensure!(
        f.header_str("receipt-id") == Some(receipt),
        "ERROR without receipt-id {receipt}: {:?}",
        f.headers
    );
    Ok(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_an_invalid_kafka_topic_is_an_error_with_the_receipt_id() -> Result<()> {
    let brokers = bootstrap();
    let cfg = bridge_config(&brokers, &unique("e2e-badtopic"), &[]);
    let b = TestBroker::start_with(move |c| c.kafka = Some(cfg)).await;
    for kind in [Kind::Tcp, Kind::Ws] {
        let mut c = b.client(kind).await;
        c.send_with("/app/bad$topic", b"{}", &[("receipt", "r-bad")])
            .await?;
        let e = expect_kafka_error(&mut c, "r-bad", Duration::from_secs(5)).await?;
        let msg = e.header_str("message").unwrap_or_default().to_owned();
        ensure!(
            msg.contains("kafka") && msg.contains("valid Kafka topic"),
            "message {msg:?} does not name the failure"
        );
        // STOMP: after an ERROR the server closes the connection.
        c.expect_closed().await?;
    }
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_while_kafka_is_unreachable_is_an_error_naming_the_timeout() -> Result<()> {
    // Nobody listens on this port: the produce times out after 1 s.
    let brokers = format!("127.0.0.1:{}", free_port());
    let mut cfg = bridge_config(&brokers, &unique("e2e-down"), &[]);
    cfg.produce_timeout = Duration::from_secs(1);
    let b = TestBroker::start_with(move |c| c.kafka = Some(cfg)).await;
    let mut c = b.client(Kind::Ws).await;
    let t0 = Instant::now();
    c.send_with(
        "/app/orders-unreachable",
        b"{}",
        &[("receipt", "r-down"), ("kafka-key", "k")],
    )
    .await?;
    let e = expect_kafka_error(&mut c, "r-down", Duration::from_secs(10)).await?;
    let msg = e.header_str("message").unwrap_or_default().to_owned();
    ensure!(
        msg.contains("kafka write failed") && msg.contains("orders-unreachable"),
        "message {msg:?} does not name the topic"
    );
    ensure!(
        msg.contains("MessageTimedOut") || msg.contains("no acknowledgement"),
        "message {msg:?} does not name the timeout"
    );
    ensure!(
        t0.elapsed() < Duration::from_secs(5),
        "ERROR took {:?}",
        t0.elapsed()
    );
    b.stop().await;
    Ok(())
}
