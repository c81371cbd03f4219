//! A known node resumes every partition where it was, and is ready only
//! once its partitions are assigned, their start positions committed and
//! the retained store rebuilt (real Kafka, `scripts/kafka.sh start`).

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use kafka_bridge::{BridgeHandle, BridgeMessage, NotAccepting, OffsetReset, Sink};

const WITHIN: Duration = Duration::from_secs(60);

fn ids(msgs: &[BridgeMessage]) -> HashSet<String> {
    msgs.iter()
        .map(|m| header(m, "message-id").unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_that_never_carried_a_record_resume_where_they_were_after_a_graceful_stop() {
    let brokers = bootstrap();
    let topic = unique("resume");
    let group = unique("g-resume");
    create_topic(&brokers, &topic, 3)
        .await
        .expect("create topic");
    let mut cfg = config(&brokers, &group, &[&format!("{topic}=/topic/r.{{key}}")]);
    cfg.auto_offset_reset = OffsetReset::Latest;

    let (sink, mut rx) = channel_sink();
    let bridge = start(cfg.clone(), sink);
    poll_until("bridge ready", WITHIN, || bridge.handle.readiness().is_ok()).await;
    // Ready: every partition has its start position committed already.
    assert_eq!(
        committed_offsets(&brokers, &group, &topic, 3)
            .await
            .expect("committed offsets"),
        vec![Some(0); 3]
    );
    let p = producer(&brokers);
    for i in 0..5 {
        let v = format!("before-{i}");
        produce_record(
            &p,
            &topic,
            Rec {
                partition: Some(0),
                key: Some("k"),
                headers: vec![],
                value: v.as_bytes(),
            },
        )
        .await
        .expect("produce");
    }
    recv_n(&mut rx, 5, WITHIN).await;
    bridge.stop().await;
    assert_eq!(
        committed_offsets(&brokers, &group, &topic, 3)
            .await
            .expect("committed offsets"),
        vec![Some(5), Some(0), Some(0)]
    );

    // 20 records per partition while the node is down.
    let mut want = HashSet::new();
    for part in 0..3 {
        for i in 0..20 {
            let v = format!("down-{part}-{i}");
            produce_record(
                &p,
                &topic,
                Rec {
                    partition: Some(part),
                    key: Some("k"),
                    headers: vec![],
                    value: v.as_bytes(),
                },
            )
            .await
            .expect("produce");
            want.insert(format!(
                "{topic}-{part}-{}",
                if part == 0 { 5 + i } else { i }
            ));
        }
    }
    let (sink, mut rx) = channel_sink();
    let bridge = start(cfg, sink);
    let got = recv_n(&mut rx, 60, WITHIN).await;
    assert_eq!(ids(&got), want);
    assert_quiet(&mut rx, Duration::from_millis(500)).await;
    bridge.stop().await;
}

/// What a sink saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    RebuildStarted,
    RetainOnly { ready: bool },
    RebuildFinished,
    Publish { ready: bool },
}

#[derive(Default)]
struct EventSink {
    handle: OnceLock<BridgeHandle>,
    events: Mutex<Vec<Event>>,
}

impl EventSink {
    fn ready(&self) -> bool {
        self.handle.get().is_some_and(|h| h.readiness().is_ok())
    }
    fn push(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }
    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

impl Sink for EventSink {
    fn publish(&self, _msg: BridgeMessage) -> Result<(), NotAccepting> {
        self.push(Event::Publish {
            ready: self.ready(),
        });
        Ok(())
    }
    fn retain_only(&self, _msg: BridgeMessage) {
        self.push(Event::RetainOnly {
            ready: self.ready(),
        });
    }
    fn rebuild_started(&self) {
        self.push(Event::RebuildStarted);
    }
    fn rebuild_finished(&self) {
        self.push(Event::RebuildFinished);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_assignment_and_the_rebuild() {
    let brokers = bootstrap();
    let topic = unique("ready");
    let group = unique("g-ready");
    create_topic(&brokers, &topic, 2)
        .await
        .expect("create topic");
    let cfg = config(&brokers, &group, &[&format!("{topic}=/topic/r.{{key}}")]);
    let p = producer(&brokers);
    for i in 0..4 {
        let v = format!("v{i}");
        produce_record(
            &p,
            &topic,
            Rec {
                partition: Some(i % 2),
                key: Some("k"),
                headers: vec![],
                value: v.as_bytes(),
            },
        )
        .await
        .expect("produce");
    }
    // A first run consumes and commits them.
    let (sink, mut rx) = channel_sink();
    let bridge = start(cfg.clone(), sink);
    recv_n(&mut rx, 4, WITHIN).await;
    bridge.stop().await;

    // The second run rebuilds them: not ready before or during that.
    let sink = Arc::new(EventSink::default());
    let bridge = start(cfg, sink.clone());
    let _ = sink.handle.set(bridge.handle.clone());
    assert!(
        bridge.handle.readiness().is_err(),
        "ready before assignment"
    );
    poll_until("bridge ready", WITHIN, || bridge.handle.readiness().is_ok()).await;
    let v = "live";
    produce_record(
        &p,
        &topic,
        Rec {
            partition: Some(0),
            key: Some("k"),
            headers: vec![],
            value: v.as_bytes(),
        },
    )
    .await
    .expect("produce");
    poll_until("the live record", WITHIN, || {
        sink.events().contains(&Event::Publish { ready: true })
    })
    .await;
    let ev = sink.events();
    // Started at start (store empty) and again at the assignment; the four
    // committed records rebuilt while not ready; then live while ready.
    assert_eq!(ev.first(), Some(&Event::RebuildStarted), "{ev:?}");
    let finished = ev
        .iter()
        .position(|e| *e == Event::RebuildFinished)
        .expect("rebuild finished");
    let retained = ev[..finished]
        .iter()
        .filter(|e| **e == Event::RetainOnly { ready: false })
        .count();
    assert_eq!(retained, 4, "{ev:?}");
    assert!(!ev.contains(&Event::RetainOnly { ready: true }), "{ev:?}");
    assert!(
        ev[..finished]
            .iter()
            .all(|e| !matches!(e, Event::Publish { .. })),
        "{ev:?}"
    );
    bridge.stop().await;
}
