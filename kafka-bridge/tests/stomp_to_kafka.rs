//! STOMP → Kafka (`BridgeHandle::produce`) against a real Kafka.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use kafka_bridge::{BridgeState, ProduceError, SendStamp};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_app_destination_lands_in_topic_with_key_and_headers() {
    let brokers = bootstrap();
    let topic = unique("app");
    create_topic(&brokers, &topic, 1)
        .await
        .expect("create topic");
    let (sink, _rx) = channel_sink();
    let bridge = start(config(&brokers, &unique("g"), &[]), sink);
    let handle = bridge.handle.clone();
    let dest = format!("/app/{topic}");
    assert!(handle.is_app_destination(&dest));
    assert!(!handle.is_app_destination("/topic/x"));

    let headers = h(&[
        ("destination", &dest),
        ("receipt", "r-1"),
        ("content-length", "13"),
        ("transaction", "tx-1"),
        ("kafka-key", "order-7"),
        ("content-type", "application/json"),
        ("trace-id", "abc"),
    ]);
    handle
        .produce(
            &dest,
            &headers,
            Bytes::from_static(br#"{"orderId":7}"#),
            &SendStamp {
                user: Some("alice".into()),
                session: "session-3".into(),
                message_id: "node-1".into(),
            },
        )
        .await
        .expect("produce acknowledged by Kafka");
    assert_eq!(handle.metrics().produced(), 1);

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique("verify"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("record within 30 s")
        .expect("record");
    assert_eq!(msg.key(), Some(&b"order-7"[..]));
    assert_eq!(msg.payload(), Some(&br#"{"orderId":7}"#[..]));
    let got: Vec<(String, String)> = msg
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|x| {
                    (
                        x.key.to_owned(),
                        String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        got,
        h(&[
            ("content-type", "application/json"),
            ("trace-id", "abc"),
            ("stomp-user", "alice"),
            ("stomp-session", "session-3"),
            ("stomp-message-id", "node-1"),
        ])
    );

    // Producer-only bridge (no routes) reports Up from the producer's statistics.
    let h2 = handle.clone();
    poll_until("state Up", Duration::from_secs(20), move || {
        h2.state() == BridgeState::Up
    })
    .await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_without_key_and_to_invalid_destinations() {
    let brokers = bootstrap();
    let topic = unique("nokey");
    create_topic(&brokers, &topic, 1)
        .await
        .expect("create topic");
    let (sink, _rx) = channel_sink();
    let bridge = start(config(&brokers, &unique("g"), &[]), sink);
    let handle = &bridge.handle;
    handle
        .produce(
            &format!("/app/{topic}"),
            &[],
            Bytes::from_static(b"plain"),
            &SendStamp::default(),
        )
        .await
        .expect("keyless produce");
    assert!(matches!(
        handle
            .produce("/topic/x", &[], Bytes::new(), &SendStamp::default())
            .await,
        Err(ProduceError::NotAppDestination(_))
    ));
    assert!(matches!(
        handle
            .produce("/app/bad topic", &[], Bytes::new(), &SendStamp::default())
            .await,
        Err(ProduceError::InvalidTopic(_))
    ));
    assert!(matches!(
        handle
            .produce("/app/", &[], Bytes::new(), &SendStamp::default())
            .await,
        Err(ProduceError::InvalidTopic(_))
    ));
    assert_eq!(handle.metrics().produced(), 1);
    assert_eq!(handle.metrics().produce_failures(), 3);
    bridge.stop().await;
}
