//! Kafka unavailability: the bridge starts while Kafka is down, reports it,
//! and records flow once Kafka is up; a Kafka restart mid-stream loses nothing.
//!
//! Uses a **private** Kafka (own data dir and port, jars shared with the main
//! instance through `KAFKA_LIBS`) so stopping it does not disturb other tests.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use kafka_bridge::BridgeState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_started_while_kafka_is_down_delivers_once_kafka_is_up_and_survives_a_restart() {
    // Both ports chosen once, below the ephemeral range, and kept across the
    // restart (`scripts/kafka.sh alloc`): nothing else can take them while
    // this Kafka is down. Needs the shared instance's jars.
    let kafka = PrivateKafka::new("kafka-outage");
    let port = kafka.port;
    let brokers = format!("127.0.0.1:{port}");
    let topic = unique("outage");
    let (sink, mut rx) = channel_sink();
    let group = unique("g");
    let mut cfg = config(&brokers, &group, &[&format!("{topic}=/topic/o.{{key}}")]);
    cfg.client
        .insert("reconnect.backoff.max.ms".into(), "1000".into());
    cfg.client
        .insert("topic.metadata.refresh.interval.ms".into(), "1000".into());

    let t0 = Instant::now();
    let bridge = start(cfg, sink);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "start must not wait for Kafka"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = bridge.handle.state();
    assert!(
        matches!(state, BridgeState::Connecting | BridgeState::Down(_)),
        "{state:?}"
    );

    kafka.script("start").expect("scripts/kafka.sh start");
    create_topic(&brokers, &topic, 1)
        .await
        .expect("create topic");
    let p = producer(&brokers);
    for i in 0..5 {
        let k = format!("a{i}");
        produce_record(
            &p,
            &topic,
            Rec {
                partition: Some(0),
                key: Some(&k),
                headers: vec![],
                value: b"1",
            },
        )
        .await
        .expect("produce");
    }
    let first = recv_n(&mut rx, 5, Duration::from_secs(90)).await;
    assert_eq!(first[0].destination, "/topic/o.a0");
    let h = bridge.handle.clone();
    poll_until("state Up", Duration::from_secs(30), move || {
        h.state() == BridgeState::Up
    })
    .await;
    // Kafka's restart may cost the group its membership; the group then
    // re-reads from its committed offsets, so let the auto-commit of a0-a4
    // land first (or they would come again, as at-least-once allows).
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed_offsets(&brokers, &group, &topic, 1)
        .await
        .expect("committed offsets")
        != [Some(5)]
    {
        assert!(Instant::now() < deadline, "a0-a4 committed within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Mid-stream: stop Kafka, queue records in the producer, bring Kafka back.
    kafka.script("stop").expect("scripts/kafka.sh stop");
    let h = bridge.handle.clone();
    poll_until("state Down", Duration::from_secs(30), move || {
        matches!(h.state(), BridgeState::Down(_))
    })
    .await;
    let producing = tokio::spawn(async move {
        for i in 0..5 {
            let k = format!("b{i}");
            produce_record(
                &p,
                &topic,
                Rec {
                    partition: Some(0),
                    key: Some(&k),
                    headers: vec![],
                    value: b"2",
                },
            )
            .await
            .expect("produce");
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    kafka.script("start").expect("scripts/kafka.sh start");
    producing.await.unwrap();
    let second = recv_n(&mut rx, 5, Duration::from_secs(90)).await;
    let keys: Vec<&str> = second.iter().map(|m| m.destination.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/topic/o.b0",
            "/topic/o.b1",
            "/topic/o.b2",
            "/topic/o.b3",
            "/topic/o.b4"
        ]
    );
    assert_quiet(&mut rx, Duration::from_millis(500)).await;
    let h = bridge.handle.clone();
    poll_until("state Up again", Duration::from_secs(60), move || {
        h.state() == BridgeState::Up
    })
    .await;
    bridge.stop().await;
    drop(kafka);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_kafka_is_unreachable_completes_promptly() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (sink, _rx) = channel_sink();
    let cfg = config(
        &format!("127.0.0.1:{port}"),
        &unique("g"),
        &["nowhere=/topic/n"],
    );
    let bridge = start(cfg, sink);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_ne!(bridge.handle.state(), BridgeState::Up);
    let t0 = Instant::now();
    bridge.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), bridge.handle.closed())
        .await
        .expect("closed within 15 s with Kafka down");
    assert_eq!(bridge.handle.state(), BridgeState::Down("stopped".into()));
    eprintln!("shutdown with Kafka down took {:?}", t0.elapsed());
}
