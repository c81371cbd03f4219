//! What the status page's charts and the operator alerts read: `/stats.json`
//! carries every number the charts draw (messages in/out per second,
//! connections, Kafka bridge lag as `kafka.lag_total`, cluster lag) and a
//! `ready` flag, and `/metrics` the `stomp_ready` gauge that follows
//! `/readyz` (deploy/prometheus/alerts.yml alerts on it).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use e2e_tests::{
    kafka::{bootstrap, bridge_config, create_topic, free_port, readyz, unique, wait_for},
    TestBroker,
};
use serde_json::Value;

async fn stats(b: &TestBroker) -> Result<Value> {
    let (status, text) = b.http_get("/stats.json").await?;
    ensure!(status == 200, "{status} {text}");
    Ok(serde_json::from_str(&text)?)
}

/// The value of the unlabelled sample `name` in `/metrics`.
async fn metric(b: &TestBroker, name: &str) -> Result<f64> {
    let (_, text) = b.http_get("/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{name} not in /metrics"))
}

fn number(v: &Value, path: &str) -> Result<f64> {
    v.pointer(path)
        .and_then(Value::as_f64)
        .with_context(|| format!("{path} is not a number in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_json_has_every_field_the_charts_draw() -> Result<()> {
    let brokers = bootstrap();
    let topic = unique("status-charts");
    create_topic(&brokers, &topic, 1).await?;
    let b = TestBroker::start_with(|c| {
        c.kafka = Some(bridge_config(
            &brokers,
            &unique("status-charts"),
            &[&format!("{topic}=/topic/charts.{{key}}")],
        ));
        c.cluster.enabled = true;
        c.cluster.node_id = Some("charts-1".into());
        c.cluster.topic = unique("status-charts-cluster");
        c.cluster.partitions = 1;
        c.cluster.heartbeat_ms = 300;
    })
    .await;
    let http = b.http;
    wait_for("/readyz 200", Duration::from_secs(60), || async move {
        readyz(http).await == 200
    })
    .await?;

    // Traffic, so that the rates are non-zero in the next samples.
    let mut sub = b.tcp_client().await;
    sub.subscribe("s", "/topic/charts.traffic", "auto").await?;
    let mut publisher = b.tcp_client().await;
    for _ in 0..20 {
        publisher
            .send_receipted("/topic/charts.traffic", "tick")
            .await?;
    }
    for _ in 0..20 {
        sub.message().await?;
    }
    // The next samples have non-zero rates.
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = stats(&b).await?;
        if number(&s, "/rate_in_per_s")? > 0.0 && number(&s, "/rate_out_per_s")? > 0.0 {
            break s;
        }
        ensure!(Instant::now() < deadline, "rates still 0 after 10 s: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(number(&s, "/connections")? >= 2.0, "{s}");
    number(&s, "/rate_in_per_s")?;
    number(&s, "/rate_out_per_s")?;
    ensure!(
        number(&s, "/kafka/lag_total")? >= 0.0,
        "kafka.lag_total: {s}"
    );
    ensure!(s["kafka"]["lag"].is_array(), "{s}");
    ensure!(number(&s, "/cluster/lag")? >= 0.0, "cluster.lag: {s}");
    ensure!(s["ready"] == Value::Bool(true), "ready: {s}");
    ensure!(metric(&b, "stomp_ready").await? == 1.0);
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_ready_follows_readyz() -> Result<()> {
    // Plain broker: ready, no kafka or cluster objects (their charts stay hidden).
    let b = TestBroker::start().await;
    ensure!(readyz(b.http).await == 200);
    ensure!(metric(&b, "stomp_ready").await? == 1.0);
    let s = stats(&b).await?;
    ensure!(s["ready"] == Value::Bool(true) && s["kafka"].is_null() && s["cluster"].is_null());
    b.stop().await;

    // A cluster node whose Kafka does not answer never joins: /readyz 503,
    // stomp_ready 0, stats.ready false.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let b = TestBroker::start_with(|c| {
        c.kafka = Some(bridge_config(&nowhere, &unique("status-unready"), &[]));
        c.cluster.enabled = true;
        c.cluster.node_id = Some("unready-1".into());
        c.cluster.topic = unique("status-unready");
    })
    .await;
    ensure!(readyz(b.http).await == 503);
    ensure!(metric(&b, "stomp_ready").await? == 0.0);
    ensure!(stats(&b).await?["ready"] == Value::Bool(false));
    b.stop().await;
    Ok(())
}
