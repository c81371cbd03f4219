//! Kafka → STOMP against a real Kafka (`scripts/kafka.sh start`).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kafka_bridge::{BridgeMessage, BridgeState, NotAccepting, Sink};
use tokio::sync::mpsc;

const WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_three_partitions_are_routed_by_every_matching_route() {
    let brokers = bootstrap();
    let topic = unique("orders");
    create_topic(&brokers, &topic, 3)
        .await
        .expect("create topic");
    let p = producer(&brokers);
    let n = 30;
    for i in 0..n {
        let key = format!("k{i}");
        let value = format!(r#"{{"id":{i},"customer":"c-{}"}}"#, i % 4);
        let trace = format!("tr{i}");
        produce_record(
            &p,
            &topic,
            Rec {
                partition: Some(i % 3),
                key: Some(&key),
                headers: vec![("trace", &trace)],
                value: value.as_bytes(),
            },
        )
        .await
        .expect("produce");
    }

    let (sink, mut rx) = channel_sink();
    let mut cfg = config(
        &brokers,
        &unique("g"),
        &[
            &format!("{topic}=/topic/order.{{key}}"),
            &format!("{topic}=/topic/customer.{{json:/customer}}.{{partition}}"),
        ],
    );
    cfg.routes[1].copy_headers = vec!["trace".into()];
    let bridge = start(cfg, sink);
    let msgs = recv_n(&mut rx, 2 * n as usize, WITHIN).await;

    let mut by_route: BTreeMap<bool, Vec<&BridgeMessage>> = BTreeMap::new();
    for m in &msgs {
        by_route
            .entry(m.destination.starts_with("/topic/order."))
            .or_default()
            .push(m);
    }
    assert_eq!(by_route[&true].len(), n as usize);
    assert_eq!(by_route[&false].len(), n as usize);
    let mut ids = HashSet::new();
    for m in &by_route[&true] {
        let h = headers_map(m);
        let partition: i32 = h["kafka-partition"].parse().unwrap();
        let offset = h["kafka-offset"].parse::<i64>().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        let i = body["id"].as_i64().unwrap() as i32;
        assert_eq!(m.destination, format!("/topic/order.k{i}"));
        assert_eq!(partition, i % 3);
        assert_eq!(h["message-id"], format!("{topic}-{partition}-{offset}"));
        assert_eq!(h["kafka-topic"], topic);
        assert_eq!(h["content-type"], "application/json");
        assert!(h["kafka-timestamp"].parse::<i64>().unwrap() > 0);
        assert!(!h.contains_key("trace"), "route 0 copies no headers");
        assert!(m.retain.is_some());
        ids.insert(h["message-id"].to_owned());
    }
    assert_eq!(ids.len(), n as usize, "message ids are unique");
    for m in &by_route[&false] {
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        let i = body["id"].as_i64().unwrap();
        assert_eq!(
            m.destination,
            format!("/topic/customer.c-{}.{}", i % 4, i % 3)
        );
        assert_eq!(header(m, "trace"), Some(format!("tr{i}").as_str()));
    }
    assert_eq!(bridge.handle.state(), BridgeState::Up);
    // The counter is bumped just after `publish` returns: wait, don't race it.
    let handle = bridge.handle.clone();
    poll_until("routed counter", Duration::from_secs(5), move || {
        handle.metrics().routed() == 2 * n as u64
    })
    .await;
    assert_eq!(bridge.handle.metrics().records_consumed(), n as u64);
    assert_eq!(bridge.handle.metrics().unroutable(), 0);
    // Lag comes from librdkafka statistics (1 s interval in tests).
    let handle = bridge.handle.clone();
    let t = topic.clone();
    poll_until(
        "lag metric for partition 0",
        Duration::from_secs(10),
        move || handle.metrics().partition_lag(&t, 0) == Some(0),
    )
    .await;
    let mut prom = String::new();
    bridge.handle.metrics().write_prometheus(&mut prom);
    assert!(
        prom.contains(&format!(
            "kafka_bridge_consumer_lag{{topic=\"{topic}\",partition=\"2\"}} 0"
        )),
        "{prom}"
    );
    bridge.stop().await;
}

/// Refuses everything for the first `refuse_for`, then every third offer.
struct FlakySink {
    tx: mpsc::UnboundedSender<BridgeMessage>,
    started: std::sync::Mutex<Option<Instant>>,
    refuse_for: Duration,
    calls: AtomicU64,
}

impl Sink for FlakySink {
    fn publish(&self, msg: BridgeMessage) -> Result<(), NotAccepting> {
        let started = *self
            .started
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() < self.refuse_for || call % 3 == 1 {
            return Err(NotAccepting);
        }
        let _ = self.tx.send(msg);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sink_pauses_partitions_and_nothing_is_lost_or_reordered() {
    let brokers = bootstrap();
    let topic = unique("backpressure");
    create_topic(&brokers, &topic, 3)
        .await
        .expect("create topic");
    let p = producer(&brokers);
    let n = 90;
    for i in 0..n {
        let v = format!("{i}");
        produce_record(
            &p,
            &topic,
            Rec {
                partition: Some(i % 3),
                key: Some("k"),
                headers: vec![],
                value: v.as_bytes(),
            },
        )
        .await
        .expect("produce");
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink = Arc::new(FlakySink {
        tx,
        started: Default::default(),
        refuse_for: Duration::from_millis(1500),
        calls: AtomicU64::new(0),
    });
    let bridge = start(
        config(
            &brokers,
            &unique("g"),
            &[&format!("{topic}=/topic/bp.{{partition}}")],
        ),
        sink,
    );
    let msgs = recv_n(&mut rx, n as usize, WITHIN).await;
    assert_quiet(&mut rx, Duration::from_millis(500)).await;

    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut values = HashSet::new();
    for m in &msgs {
        let h = headers_map(m);
        let partition: i32 = h["kafka-partition"].parse().unwrap();
        let offset: i64 = h["kafka-offset"].parse().unwrap();
        let prev = last.insert(partition, offset);
        assert_eq!(
            offset,
            prev.map_or(0, |o| o + 1),
            "partition {partition} in order, no gap, no duplicate"
        );
        values.insert(String::from_utf8(m.body.to_vec()).unwrap());
    }
    assert_eq!(values.len(), n as usize);
    let metrics = bridge.handle.metrics();
    assert!(
        metrics.sink_full() > 3,
        "sink refused: {}",
        metrics.sink_full()
    );
    assert_eq!(metrics.paused_partitions(), 0, "all partitions resumed");
    let handle = bridge.handle.clone();
    poll_until("routed counter", Duration::from_secs(5), move || {
        handle.metrics().routed() == n as u64
    })
    .await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_records_are_counted_and_do_not_block_the_partition() {
    let brokers = bootstrap();
    let topic = unique("unroutable");
    create_topic(&brokers, &topic, 1)
        .await
        .expect("create topic");
    let p = producer(&brokers);
    for (key, value) in [
        (None, "no key"),
        (Some("a/b"), "slash"),
        (Some("ok1"), "1"),
        (Some("*"), "star"),
        (Some("ok2"), "2"),
    ] {
        produce_record(
            &p,
            &topic,
            Rec {
                partition: Some(0),
                key,
                headers: vec![],
                value: value.as_bytes(),
            },
        )
        .await
        .expect("produce");
    }
    let (sink, mut rx) = channel_sink();
    let bridge = start(
        config(
            &brokers,
            &unique("g"),
            &[&format!("{topic}=/topic/u.{{key}}")],
        ),
        sink,
    );
    let msgs = recv_n(&mut rx, 2, WITHIN).await;
    assert_eq!(msgs[0].destination, "/topic/u.ok1");
    assert_eq!(msgs[1].destination, "/topic/u.ok2");
    assert_eq!(
        header(&msgs[1], "content-type"),
        Some("application/json"),
        "\"2\" is JSON"
    );
    assert_eq!(
        header(&msgs[1], "message-id"),
        Some(format!("{topic}-0-4").as_str())
    );
    assert_eq!(bridge.handle.metrics().unroutable(), 3);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_bridge_resumes_from_committed_offsets() {
    let brokers = bootstrap();
    let topic = unique("resume");
    let group = unique("g");
    create_topic(&brokers, &topic, 3)
        .await
        .expect("create topic");
    let p = producer(&brokers);
    let route = format!("{topic}=/topic/r.{{key}}");
    for i in 0..15 {
        let k = format!("a{i}");
        produce_record(
            &p,
            &topic,
            Rec {
                partition: Some(i % 3),
                key: Some(&k),
                headers: vec![],
                value: b"x",
            },
        )
        .await
        .expect("produce");
    }
    let (sink, mut rx) = channel_sink();
    let first = start(config(&brokers, &group, &[&route]), sink);
    recv_n(&mut rx, 15, WITHIN).await;
    first.stop().await;

    for i in 0..15 {
        let k = format!("b{i}");
        produce_record(
            &p,
            &topic,
            Rec {
                partition: Some(i % 3),
                key: Some(&k),
                headers: vec![],
                value: b"y",
            },
        )
        .await
        .expect("produce");
    }
    // `latest` would skip everything if the group had no committed offsets:
    // receiving the b-records proves the second bridge resumed from the commits.
    let mut cfg = config(&brokers, &group, &[&route]);
    cfg.auto_offset_reset = kafka_bridge::OffsetReset::Latest;
    let (sink, mut rx) = channel_sink();
    let second = start(cfg, sink);
    let msgs = recv_n(&mut rx, 15, WITHIN).await;
    assert_quiet(&mut rx, Duration::from_millis(500)).await;
    let mut keys: Vec<String> = msgs
        .iter()
        .map(|m| m.destination.trim_start_matches("/topic/r.").to_owned())
        .collect();
    keys.sort();
    let mut expected: Vec<String> = (0..15).map(|i| format!("b{i}")).collect();
    expected.sort();
    assert_eq!(
        keys, expected,
        "exactly the records produced while no bridge ran"
    );
    second.stop().await;
}
