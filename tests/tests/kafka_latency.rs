//! Kafka record → WebSocket client latency, through an in-process broker and
//! the real Kafka of `scripts/kafka.sh`. A benchmark, not a test: ignored by
//! default; results go to docs/benchmarks.md.
//!
//! ```sh
//! KAFKA_BOOTSTRAP=$(scripts/kafka.sh bootstrap) \
//!   cargo test --release -p e2e-tests --test kafka_latency -- --ignored --nocapture
//! ```
//!
//! The producer stamps each record with the microseconds since a shared
//! monotonic origin just before handing it to librdkafka (`linger.ms=0`); a
//! WebSocket client computes `now - stamp` on receipt. Latency therefore
//! covers produce → Kafka (acks=1 default) → bridge consumer fetch → routing →
//! WebSocket write → client decode. Everything (producer, broker, clients)
//! runs in this one process, on the same cores as Kafka.
//!
//! Knobs (environment): `LAT_RATE` records/s (default 1000), `LAT_SECS`
//! (default 10), `LAT_SUBSCRIBERS` WebSocket clients following 10 orders
//! each (default 100), plus one wildcard WebSocket client seeing every record.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use e2e_tests::{
    kafka::{bootstrap, bridge_config, create_topic, enqueue, producer, readyz, unique, wait_for},
    Kind, TestBroker,
};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<u64>) -> String {
    v.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        v.len(),
        ms(percentile(&v, 50.0)),
        ms(percentile(&v, 90.0)),
        ms(percentile(&v, 99.0)),
        ms(percentile(&v, 99.9)),
        ms(v.last().copied().unwrap_or(0)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture (docs/benchmarks.md)"]
async fn kafka_to_websocket_latency() -> Result<()> {
    let rate = env_or("LAT_RATE", 1000);
    let secs = env_or("LAT_SECS", 10);
    let subscribers = env_or("LAT_SUBSCRIBERS", 100);
    let total = rate * secs;
    let keys = subscribers.max(1) * 10;

    let brokers = bootstrap();
    let topic = unique("latency");
    create_topic(&brokers, &topic, 3).await?;
    let route = format!("{topic}=/topic/lat.{{key}}");
    let cfg = bridge_config(&brokers, &unique("e2e-latency"), &[&route]);
    let b = TestBroker::start_with(move |c| c.kafka = Some(cfg)).await;
    let http = b.http;
    wait_for("bridge Up", Duration::from_secs(60), move || async move {
        readyz(http).await == 200
    })
    .await?;

    let origin = Instant::now();
    let stamp = move || origin.elapsed().as_micros() as u64;
    let latency_of = move |f: &stomp_codec::Frame| -> Result<u64> {
        let v: serde_json::Value = serde_json::from_slice(&f.body)?;
        let sent = v["sentUs"].as_u64().context("sentUs")?;
        Ok(stamp().saturating_sub(sent))
    };

    // Per-order subscribers: client s follows keys s*10 .. s*10+10; every
    // key gets rate*secs/keys records.
    let per_key = total / keys;
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..subscribers {
        let mut c = b.client(Kind::Ws).await;
        for j in 0..10 {
            let k = s * 10 + j;
            c.subscribe(&format!("s{k}"), &format!("/topic/lat.k{k}"), "auto")
                .await?;
        }
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(per_key * 10);
            while lat.len() < per_key * 10 {
                let f = c.recv_within(Duration::from_secs(60)).await?;
                lat.push(latency_of(&f)?);
            }
            anyhow::Ok(lat)
        });
    }
    let mut wild = b.client(Kind::Ws).await;
    wild.subscribe("all", "/topic/lat.*", "auto").await?;
    let wild_task = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(total);
        while lat.len() < total {
            let f = wild.recv_within(Duration::from_secs(60)).await?;
            lat.push(latency_of(&f)?);
        }
        anyhow::Ok(lat)
    });

    // Paced producer: one record per tick.
    let p = producer(&brokers);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut acks = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let key = format!("k{}", i % keys);
        let body = format!(
            r#"{{"orderId":"{key}","status":"FILLED","seq":{i},"sentUs":{}}}"#,
            stamp()
        );
        acks.push(enqueue(&p, &topic, Some(&key), &[], body.as_bytes())?);
    }
    let produce_secs = started.elapsed().as_secs_f64();
    for a in acks {
        e2e_tests::kafka::delivered(a).await?;
    }
    let wild_lat = wild_task.await??;
    let mut per_order = Vec::with_capacity(per_key * keys);
    while let Some(r) = tasks.join_next().await {
        per_order.extend(r??);
    }
    println!(
        "Kafka → WebSocket latency: {total} records at {rate}/s for {secs} s (achieved {:.0}/s), \
         3 partitions, {subscribers} WebSocket subscribers × 10 orders + 1 wildcard",
        total as f64 / produce_secs
    );
    println!("| receiver | samples | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    println!("{}", summary("wildcard `/topic/lat.*`", wild_lat));
    println!("{}", summary("per-order subscribers", per_order));
    b.stop().await;
    Ok(())
}
