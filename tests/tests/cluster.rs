//! Cluster mode (`--cluster`): three in-process nodes on loopback share
//! `/topic/...` and `/user/...` destinations through a real Kafka (one
//! unique cluster topic per test); each reads Kafka routes in its own
//! consumer group. See docs/cluster.md.

use std::{collections::HashMap, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use e2e_tests::{
    body,
    kafka::{
        bootstrap, bridge_config, create_topic, frame_headers, free_port, produce, producer,
        readyz, unique, wait_for,
    },
    Client, TestBroker,
};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use stomp_broker::Config;
use stomp_codec::{Command, Frame};

const SECRET: &str = "cluster-test-hs256-secret-cluster-test";
const JOIN: Duration = Duration::from_secs(30);

/// A cluster node's configuration: Kafka at `brokers`, cluster topic
/// `topic`, node id `node`, bridge group `group` (the node appends its id),
/// routes in the command-line form. JWT (HS256) authentication, anonymous
/// allowed.
fn node(
    brokers: &str,
    topic: &str,
    node: &str,
    group: &str,
    routes: &[&str],
) -> impl FnOnce(&mut Config) {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    let node = node.to_owned();
    let group = group.to_owned();
    let routes: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
    move |c: &mut Config| {
        let routes: Vec<&str> = routes.iter().map(String::as_str).collect();
        c.kafka = Some(bridge_config(&brokers, &group, &routes));
        c.cluster.enabled = true;
        c.cluster.node_id = Some(node);
        c.cluster.topic = topic;
        c.cluster.partitions = 3;
        c.cluster.heartbeat_ms = 300;
        c.auth.jwt.hs256_secret = Some(SECRET.into());
        c.auth.allow_anonymous = Some(true);
    }
}

fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": user, "exp": exp }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn client_as(b: &TestBroker, user: &str) -> Result<Client> {
    let mut c = Client::tcp(b.stomp).await?;
    let f = c
        .connect_with(&[
            ("accept-version", "1.2"),
            ("Authorization", &format!("Bearer {}", token(user))),
        ])
        .await?;
    ensure!(f.header_str("user-name") == Some(user), "{:?}", f.headers);
    Ok(c)
}

/// Waits until every node says ready.
async fn all_ready(nodes: &[&TestBroker]) -> Result<()> {
    for n in nodes {
        let http = n.http;
        wait_for(
            "/readyz 200",
            JOIN,
            || async move { readyz(http).await == 200 },
        )
        .await?;
    }
    Ok(())
}

async fn stats(b: &TestBroker) -> Result<Value> {
    let (status, text) = b.http_get("/stats.json").await?;
    ensure!(status == 200, "{status} {text}");
    Ok(serde_json::from_str(&text)?)
}

/// A metric's value from `/metrics` (first line starting with `name`).
async fn metric(b: &TestBroker, name: &str) -> Result<f64> {
    let (_, text) = b.http_get("/metrics").await?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{name} not in /metrics"))
}

/// Receives `n` MESSAGEs (failing on anything else or a timeout).
async fn messages(c: &mut Client, n: usize) -> Result<Vec<Frame>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let f = c
            .recv_within(Duration::from_secs(10))
            .await
            .with_context(|| format!("after {} of {n} messages", out.len()))?;
        match f.command {
            Command::Message => out.push(f),
            _ => bail!("unexpected {:?} {:?} {}", f.command, f.headers, body(&f)),
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_fan_out_across_three_nodes_in_order_with_one_message_id() -> Result<()> {
    let brokers = bootstrap();
    let topic = unique("cluster-topic");
    let group = unique("cluster-group");
    let a = TestBroker::start_with(node(&brokers, &topic, "node-a", &group, &[])).await;
    let b = TestBroker::start_with(node(&brokers, &topic, "node-b", &group, &[])).await;
    let c = TestBroker::start_with(node(&brokers, &topic, "node-c", &group, &[])).await;
    all_ready(&[&a, &b, &c]).await?;
    for n in [&a, &b, &c] {
        wait_for("3 nodes seen", JOIN, || async {
            metric(n, "stomp_cluster_nodes").await.ok() == Some(3.0)
        })
        .await?;
    }

    // Subscribers on every node, exact and wildcard.
    let mut subs = Vec::new();
    for (i, (n, dest)) in [
        (&a, "/topic/prices.acme"),
        (&b, "/topic/prices.acme"),
        (&b, "/topic/prices.*"),
        (&c, "/topic/prices.acme"),
        (&c, "/topic/#"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut cl = n.tcp_client().await;
        cl.subscribe(&format!("s{i}"), dest, "auto").await?;
        subs.push((format!("{}:{dest}", n.stomp), cl));
    }

    // Two publishers on different nodes, every SEND receipted.
    const N: usize = 40;
    let mut pa = a.tcp_client().await;
    let mut pb = b.tcp_client().await;
    for i in 0..N {
        pa.send_receipted("/topic/prices.acme", &format!("a-{i}"))
            .await?;
        pb.send_receipted("/topic/prices.acme", &format!("b-{i}"))
            .await?;
    }

    let mut ids: HashMap<String, String> = HashMap::new();
    for (name, cl) in &mut subs {
        let got = messages(cl, 2 * N).await.context(name.clone())?;
        let mut next = HashMap::from([("a", 0usize), ("b", 0usize)]);
        for f in &got {
            let text = body(f);
            let (p, i) = text.split_once('-').context("body")?;
            let i: usize = i.parse()?;
            let want = next.get_mut(p).context("publisher")?;
            ensure!(
                i == *want,
                "{name}: {text} out of order (wanted {p}-{want})"
            );
            *want += 1;
            let id = frame_headers(f)
                .remove("message-id")
                .context("message-id")?;
            let known = ids.entry(text.clone()).or_insert_with(|| id.clone());
            ensure!(
                *known == id,
                "{name}: {text} has id {id}, elsewhere {known}"
            );
        }
        // No duplicates: nothing more arrives.
        cl.expect_silence(Duration::from_millis(300)).await?;
    }
    ensure!(ids.len() == 2 * N);

    // Counters: A and B each relayed N out; C took 2N in, A and B N each.
    for (n, out, inn) in [(&a, N, N), (&b, N, N), (&c, 0, 2 * N)] {
        wait_for("relayed counters", JOIN, || async {
            metric(n, "stomp_cluster_relayed_out_total").await.ok() == Some(out as f64)
                && metric(n, "stomp_cluster_relayed_in_total").await.ok() == Some(inn as f64)
        })
        .await?;
    }
    let (_, m) = a.http_get("/metrics").await?;
    ensure!(
        m.contains("stomp_cluster_info{node_id=\"node-a\"} 1"),
        "{m}"
    );
    ensure!(m.contains("stomp_cluster_lag "), "{m}");
    ensure!(m.contains("stomp_cluster_produce_failures_total 0"), "{m}");
    // Every relayed record's bytes were given back on its delivery report.
    for n in [&a, &b] {
        let (_, m) = n.http_get("/metrics").await?;
        ensure!(m.contains("stomp_cluster_in_flight 0\n"), "{m}");
        ensure!(m.contains("stomp_cluster_in_flight_bytes 0\n"), "{m}");
        ensure!(
            m.contains("stomp_cluster_relay_refused_total{reason=\"in_flight_bytes\"} 0\n"),
            "{m}"
        );
    }
    let s = stats(&c).await?;
    let cl = &s["cluster"];
    ensure!(cl["node_id"] == "node-c", "{s}");
    ensure!(cl["nodes"] == json!(["node-a", "node-b", "node-c"]), "{s}");
    ensure!(cl["relayed_in"] == json!(2 * N), "{s}");
    ensure!(cl["relayed_out"] == json!(0), "{s}");
    ensure!(cl["lag"].is_number(), "{s}");

    // A queue is shared (tests/tests/cluster_queues.rs has the details):
    // C's consumer gets what was sent on A, once.
    let mut qc = c.tcp_client().await;
    qc.subscribe("q", "/queue/shared", "auto").await?;
    pa.send_receipted("/queue/shared", "from-a").await?;
    let got = messages(&mut qc, 1).await?;
    ensure!(body(&got[0]) == "from-a", "{}", body(&got[0]));
    qc.expect_silence(Duration::from_millis(300)).await?;

    for n in [a, b, c] {
        n.stop().await;
    }
    Ok(())
}

/// The value of the sample `series` (name with its labels, exactly as
/// rendered) from `/metrics`.
async fn series(b: &TestBroker, series: &str) -> Result<f64> {
    let (_, text) = b.http_get("/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{series} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_latency_histogram_has_samples_per_stage_after_cross_node_messages() -> Result<()> {
    let brokers = bootstrap();
    let topic = unique("cluster-latency");
    let group = unique("cluster-latency-group");
    let a = TestBroker::start_with(node(&brokers, &topic, "node-a", &group, &[])).await;
    let b = TestBroker::start_with(node(&brokers, &topic, "node-b", &group, &[])).await;
    all_ready(&[&a, &b]).await?;
    for n in [&a, &b] {
        wait_for("2 nodes seen", JOIN, || async {
            metric(n, "stomp_cluster_nodes").await.ok() == Some(2.0)
        })
        .await?;
    }
    let mut sub = b.tcp_client().await;
    sub.subscribe("s", "/topic/latency", "auto").await?;
    const N: usize = 5;
    let mut pubr = a.tcp_client().await;
    for i in 0..N {
        pubr.send_receipted("/topic/latency", &format!("m-{i}"))
            .await?;
    }
    messages(&mut sub, N).await?;

    let h = "stomp_cluster_relay_latency_seconds";
    let count = |stage: &str| format!("{h}_count{{stage=\"{stage}\"}}");
    // Publishing node: every record acknowledged by Kafka was timed.
    wait_for(
        "produce_ack samples on the publishing node",
        JOIN,
        || async { series(&a, &count("produce_ack")).await.ok() == Some(N as f64) },
    )
    .await?;
    // Consuming node: every relayed message was timed from its relay to
    // the poll, and from the poll to its subscribers.
    for stage in ["consume", "deliver"] {
        ensure!(
            series(&b, &count(stage)).await? == N as f64,
            "{stage} on node-b"
        );
        ensure!(
            series(&b, &format!("{h}_bucket{{stage=\"{stage}\",le=\"+Inf\"}}")).await? == N as f64
        );
        ensure!(series(&b, &format!("{h}_sum{{stage=\"{stage}\"}}")).await? > 0.0);
        // Nothing came back to the publisher from itself.
        ensure!(series(&a, &count(stage)).await? == 0.0, "{stage} on node-a");
    }
    ensure!(series(&b, &count("produce_ack")).await? == 0.0);
    let (_, m) = b.http_get("/metrics").await?;
    ensure!(m.contains(&format!("# TYPE {h} histogram\n")), "{m}");

    for n in [a, b] {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_destinations_and_kafka_routes_reach_every_node() -> Result<()> {
    let brokers = bootstrap();
    let topic = unique("cluster-user");
    let group = unique("cluster-group");
    let orders = unique("orders");
    let prices = unique("prices");
    create_topic(&brokers, &orders, 2).await?;
    create_topic(&brokers, &prices, 1).await?;
    let routes = [
        format!("{orders}=/user/{{key}}/queue/orders"),
        format!("{prices}=/topic/price.{{key}}"),
    ];
    let routes: Vec<&str> = routes.iter().map(String::as_str).collect();
    let tweak = |id: &str| {
        let inner = node(&brokers, &topic, id, &group, &routes);
        move |c: &mut Config| {
            inner(c);
            if let Some(k) = c.kafka.as_mut() {
                for r in &mut k.routes {
                    if r.destination.starts_with("/topic/price.") {
                        r.retain_last = 1;
                        r.retain_ttl = Duration::from_secs(600);
                    }
                }
            }
        }
    };
    let a = TestBroker::start_with(tweak("node-a")).await;
    let b = TestBroker::start_with(tweak("node-b")).await;
    let c = TestBroker::start_with(tweak("node-c")).await;
    all_ready(&[&a, &b, &c]).await?;

    // alice on B and C; bob on C (must get nothing of alice's).
    let mut alice_b = client_as(&b, "alice").await?;
    alice_b.subscribe("x", "/user/queue/x", "auto").await?;
    alice_b.subscribe("o", "/user/queue/orders", "auto").await?;
    let mut alice_c = client_as(&c, "alice").await?;
    alice_c.subscribe("x", "/user/queue/x", "auto").await?;
    alice_c.subscribe("o", "/user/queue/orders", "auto").await?;
    let mut bob_c = client_as(&c, "bob").await?;
    bob_c.subscribe("x", "/user/queue/x", "auto").await?;
    bob_c.subscribe("o", "/user/queue/orders", "auto").await?;

    // SEND on A to alice.
    let mut sender = client_as(&a, "carol").await?;
    sender
        .send_receipted("/user/alice/queue/x", "hello-alice")
        .await?;
    let mut ids = Vec::new();
    for cl in [&mut alice_b, &mut alice_c] {
        let f = cl.message().await?;
        ensure!(body(&f) == "hello-alice");
        let h = frame_headers(&f);
        ensure!(
            h.get("destination").map(String::as_str) == Some("/user/queue/x"),
            "{h:?}"
        );
        ids.push(h.get("message-id").cloned().context("message-id")?);
    }
    ensure!(ids[0] == ids[1], "{ids:?}");

    // A Kafka route to /user/{key}/queue/orders: every node delivers it to
    // its own alice sessions, exactly once each (not relayed again).
    let p = producer(&brokers);
    produce(&p, &orders, Some("alice"), &[], b"order-1").await?;
    for cl in [&mut alice_b, &mut alice_c] {
        let f = cl.message().await?;
        ensure!(body(&f) == "order-1", "{}", body(&f));
        ensure!(
            frame_headers(&f).get("destination").map(String::as_str) == Some("/user/queue/orders")
        );
        cl.expect_silence(Duration::from_millis(300)).await?;
    }
    bob_c.expect_silence(Duration::from_millis(200)).await?;

    // A routed /topic on every node, and retained replay on a node that
    // starts later (its own group reads the route from the start).
    let mut subs = Vec::new();
    for n in [&a, &b, &c] {
        let mut cl = n.tcp_client().await;
        cl.subscribe("p", "/topic/price.acme", "auto").await?;
        subs.push(cl);
    }
    produce(&p, &prices, Some("acme"), &[], b"42").await?;
    for cl in &mut subs {
        let f = cl.message().await?;
        ensure!(body(&f) == "42");
        cl.expect_silence(Duration::from_millis(300)).await?;
    }
    let d = TestBroker::start_with(tweak("node-d")).await;
    all_ready(&[&d]).await?;
    let mut late = d.tcp_client().await;
    late.subscribe("p", "/topic/price.acme", "auto").await?;
    let f = late.message().await?;
    ensure!(body(&f) == "42");
    ensure!(frame_headers(&f).get("replayed").map(String::as_str) == Some("true"));
    // Each node reads routes in its own group: <group>.<node id>.
    let s = stats(&d).await?;
    ensure!(s["cluster"]["node_id"] == "node-d", "{s}");

    for n in [a, b, c, d] {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_the_node_joins() -> Result<()> {
    // Kafka that does not answer: the node serves, but is not ready.
    let dead = format!("127.0.0.1:{}", free_port());
    let topic = unique("cluster-dead");
    let n = TestBroker::start_with(node(&dead, &topic, "lonely", "g", &[])).await;
    let (status, text) = n.http_get("/readyz").await?;
    ensure!(
        status == 503 && text.contains("cluster not joined"),
        "{status} {text}"
    );
    ensure!(metric(&n, "stomp_cluster_nodes").await? == 1.0);
    let (_, m) = n.http_get("/metrics").await?;
    ensure!(
        m.contains("stomp_cluster_info{node_id=\"lonely\"} 1"),
        "{m}"
    );
    n.stop().await;

    // With Kafka: 200 once joined.
    let brokers = bootstrap();
    let n = TestBroker::start_with(node(&brokers, &topic, "joined", "g2", &[])).await;
    all_ready(&[&n]).await?;
    n.stop().await;
    Ok(())
}

#[test]
fn cluster_needs_kafka_brokers() {
    let mut c = Config::default();
    c.cluster.enabled = true;
    assert!(c.validate().is_err());
    c.kafka = Some(bridge_config("127.0.0.1:9092", "g", &[]));
    c.validate().expect("valid");
    c.cluster.node_id = Some("bad id".into());
    assert!(c.validate().is_err());
}
