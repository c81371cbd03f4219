//! Rebuilding the broker's retained store when a bridge (re)starts with a
//! known consumer group, against a real Kafka (`scripts/kafka.sh start`).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use kafka_bridge::{BridgeMessage, NotAccepting, Retain, Sink};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

const WITHIN: Duration = Duration::from_secs(60);

/// What reached the sink, in one order for both kinds.
#[derive(Debug)]
struct Seen {
    seq: u64,
    msg: BridgeMessage,
}

/// Records live publishes and retain-only messages on separate channels,
/// numbered in the order the sink saw them.
struct RecordingSink {
    seq: AtomicU64,
    live: mpsc::UnboundedSender<Seen>,
    retained: mpsc::UnboundedSender<Seen>,
}

impl Sink for RecordingSink {
    fn publish(&self, msg: BridgeMessage) -> Result<(), NotAccepting> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let _ = self.live.send(Seen { seq, msg });
        Ok(())
    }

    fn retain_only(&self, msg: BridgeMessage) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let _ = self.retained.send(Seen { seq, msg });
    }
}

struct Channels {
    live: mpsc::UnboundedReceiver<Seen>,
    retained: mpsc::UnboundedReceiver<Seen>,
}

fn recording_sink() -> (Arc<RecordingSink>, Channels) {
    let (live_tx, live) = mpsc::unbounded_channel();
    let (retained_tx, retained) = mpsc::unbounded_channel();
    (
        Arc::new(RecordingSink {
            seq: AtomicU64::new(0),
            live: live_tx,
            retained: retained_tx,
        }),
        Channels { live, retained },
    )
}

async fn recv_seen(rx: &mut mpsc::UnboundedReceiver<Seen>, n: usize, what: &str) -> Vec<Seen> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + WITHIN;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(s)) => out.push(s),
            Ok(None) => panic!("{what}: channel closed after {} of {n}", out.len()),
            Err(_) => panic!("{what}: only {} of {n} within {WITHIN:?}", out.len()),
        }
    }
    out
}

fn assert_empty(rx: &mut mpsc::UnboundedReceiver<Seen>, what: &str) {
    if let Ok(s) = rx.try_recv() {
        panic!(
            "{what}: unexpected {} ({:?})",
            s.msg.destination,
            header(&s.msg, "message-id")
        );
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Produces one keyed record to `partition` stamped `ts_ms`; returns its offset.
async fn produce_at(p: &FutureProducer, topic: &str, partition: i32, key: &str, ts_ms: i64) -> i64 {
    let value = format!(r#"{{"order":"{key}","ts":{ts_ms}}}"#);
    let rec = FutureRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(&value)
        .timestamp(ts_ms);
    p.send(rec, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("test produce")
        .offset
}

fn id(m: &BridgeMessage) -> String {
    header(m, "message-id").unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_rebuilds_retained_messages_of_the_window_as_retain_only() {
    let brokers = bootstrap();
    let topic = unique("rebuild");
    let group = unique("g");
    create_topic(&brokers, &topic, 2)
        .await
        .expect("create topic");
    let p = producer(&brokers);
    let now = now_ms();
    let min = 60_000;
    // (partition, key, age in minutes)
    let records = [
        (0, "a", 20), // older than every route's TTL
        (0, "a", 5),  // inside the 10-minute route's TTL only
        (0, "a", 0),
        (0, "a", 0),
        (0, "a", 0),
        (1, "b", 0),
        (1, "c", 20), // an old timestamp after a fresh record
    ];
    let mut offsets = Vec::new();
    for (partition, key, age) in records {
        offsets.push(produce_at(&p, &topic, partition, key, now - age * min).await);
    }
    let id_of = |i: usize| format!("{topic}-{}-{}", records[i].0, offsets[i]);

    let mut cfg = config(
        &brokers,
        &group,
        &[
            &format!("{topic}=/topic/short.{{key}}"),
            &format!("{topic}=/topic/long.{{key}}"),
            &format!("{topic}=/topic/none.{{key}}"),
        ],
    );
    cfg.routes[0].retain_last = 2;
    cfg.routes[0].retain_ttl = Duration::from_secs(60);
    cfg.routes[1].retain_last = 1;
    cfg.routes[1].retain_ttl = Duration::from_secs(600);
    cfg.routes[2].retain_last = 0;

    // First run: a new group reads everything live and rebuilds nothing.
    let (sink, mut first_rx) = recording_sink();
    let first = start(cfg.clone(), sink);
    let live_first = recv_seen(&mut first_rx.live, 3 * records.len(), "first run").await;
    first.stop().await;
    assert_empty(&mut first_rx.retained, "a new group rebuilds nothing");
    let live_by_key: HashMap<(String, String), BridgeMessage> = live_first
        .into_iter()
        .map(|s| ((s.msg.destination.clone(), id(&s.msg)), s.msg))
        .collect();
    let ends = vec![Some(offsets[4] + 1), Some(offsets[6] + 1)];
    assert_eq!(
        committed_offsets(&brokers, &group, &topic, 2)
            .await
            .expect("committed offsets"),
        ends
    );

    // Second run, same group: the records of the window come back as
    // retain-only, with what is left of each route's TTL, before anything
    // is consumed live.
    let (sink, mut rx) = recording_sink();
    let second = start(cfg, sink);
    let rebuilt = recv_seen(&mut rx.retained, 9, "rebuild").await;
    let mut got: Vec<(String, String)> = rebuilt
        .iter()
        .map(|s| (s.msg.destination.clone(), id(&s.msg)))
        .collect();
    got.sort();
    let mut want = vec![
        ("/topic/short.a".to_owned(), id_of(2)),
        ("/topic/short.a".to_owned(), id_of(3)),
        ("/topic/short.a".to_owned(), id_of(4)),
        ("/topic/short.b".to_owned(), id_of(5)),
        ("/topic/long.a".to_owned(), id_of(1)),
        ("/topic/long.a".to_owned(), id_of(2)),
        ("/topic/long.a".to_owned(), id_of(3)),
        ("/topic/long.a".to_owned(), id_of(4)),
        ("/topic/long.b".to_owned(), id_of(5)),
    ];
    want.sort();
    assert_eq!(got, want, "exactly the records inside each route's TTL");
    // Counted once the topic's rebuild is done (kafka_bridge_retained_rebuilt_total).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while second.handle.metrics().retained_rebuilt() < 9 {
        assert!(tokio::time::Instant::now() < deadline, "rebuilt counter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(second.handle.metrics().retained_rebuilt(), 9);
    // Per destination oldest first, so the store keeps the newest last_n.
    let short_a: Vec<String> = rebuilt
        .iter()
        .filter(|s| s.msg.destination == "/topic/short.a")
        .map(|s| id(&s.msg))
        .collect();
    assert_eq!(short_a, vec![id_of(2), id_of(3), id_of(4)]);
    for s in &rebuilt {
        let m = &s.msg;
        let retain = m.retain.clone().expect("rebuilt messages carry a policy");
        let (last_n, ttl) = if m.destination.starts_with("/topic/short.") {
            (2, Duration::from_secs(60))
        } else {
            (1, Duration::from_secs(600))
        };
        assert_eq!(retain.last_n, last_n);
        assert!(retain.ttl <= ttl, "{:?} > {ttl:?}", retain.ttl);
        if id(m) == id_of(1) {
            // Five minutes old: about five minutes left of ten.
            assert!(
                retain.ttl > Duration::from_secs(240) && retain.ttl <= Duration::from_secs(300),
                "{:?}",
                retain.ttl
            );
        } else {
            assert!(
                retain.ttl > ttl - Duration::from_secs(50),
                "{:?}",
                retain.ttl
            );
        }
        // The same message the first run delivered live, policy aside.
        let live = &live_by_key[&(m.destination.clone(), id(m))];
        assert_eq!(
            (&live.headers, &live.body),
            (&m.headers, &m.body),
            "{}",
            m.destination
        );
    }
    // The rebuild committed nothing, for the group or under its own id.
    assert_eq!(
        committed_offsets(&brokers, &group, &topic, 2)
            .await
            .expect("committed offsets"),
        ends
    );
    assert_eq!(
        committed_offsets(&brokers, &format!("{group}.rebuild"), &topic, 2)
            .await
            .expect("committed offsets"),
        vec![None, None]
    );

    // A new record is delivered live (after the rebuild: the rebuilt records
    // were delivered before the restart and are not delivered again).
    let d = produce_at(&p, &topic, 1, "d", now_ms()).await;
    let live = recv_seen(&mut rx.live, 3, "live after the rebuild").await;
    for s in &live {
        assert_eq!(id(&s.msg), format!("{topic}-1-{d}"));
        assert!(
            rebuilt.iter().all(|r| r.seq < s.seq),
            "rebuild finished before live records were handled"
        );
    }
    assert_eq!(
        live.iter()
            .find(|s| s.msg.destination == "/topic/short.d")
            .and_then(|s| s.msg.retain.clone()),
        Some(Retain {
            last_n: 2,
            ttl: Duration::from_secs(60)
        })
    );
    assert_empty(&mut rx.live, "only the new record is live");
    assert_empty(&mut rx.retained, "the new record is not rebuilt");
    second.stop().await;
    assert_eq!(
        committed_offsets(&brokers, &group, &topic, 2)
            .await
            .expect("committed offsets"),
        vec![Some(offsets[4] + 1), Some(d + 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_timeout_zero_disables_the_rebuild() {
    let brokers = bootstrap();
    let topic = unique("rebuild-off");
    let group = unique("g");
    create_topic(&brokers, &topic, 1)
        .await
        .expect("create topic");
    let p = producer(&brokers);
    let route = format!("{topic}=/topic/o.{{key}}");
    let first_offset = produce_at(&p, &topic, 0, "a", now_ms()).await;
    let (sink, mut rx) = recording_sink();
    let first = start(config(&brokers, &group, &[&route]), sink);
    recv_seen(&mut rx.live, 1, "first run").await;
    first.stop().await;

    let mut cfg = config(&brokers, &group, &[&route]);
    cfg.rebuild_timeout = Duration::ZERO;
    let (sink, mut rx) = recording_sink();
    let second = start(cfg, sink);
    let next = produce_at(&p, &topic, 0, "b", now_ms()).await;
    let live = recv_seen(&mut rx.live, 1, "second run").await;
    assert_eq!(id(&live[0].msg), format!("{topic}-0-{next}"));
    assert!(next > first_offset);
    assert_empty(&mut rx.retained, "rebuild disabled");
    second.stop().await;
}

fn partition_of(m: &BridgeMessage) -> i32 {
    header(m, "kafka-partition").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_assigned_again_is_rebuilt_only_from_where_this_process_left_it() {
    let brokers = bootstrap();
    let topic = unique("rebuild-handover");
    let group = unique("g");
    create_topic(&brokers, &topic, 2)
        .await
        .expect("create topic");
    let p = producer(&brokers);
    let mut cfg = config(&brokers, &group, &[&format!("{topic}=/topic/h.{{key}}")]);
    cfg.routes[0].retain_last = 10;
    cfg.client
        .insert("auto.commit.interval.ms".into(), "200".into());
    let r0 = produce_at(&p, &topic, 0, "r0", now_ms()).await;
    let r1 = produce_at(&p, &topic, 1, "r1", now_ms()).await;

    // X alone reads both partitions live, and commits them.
    let (sink, mut x) = recording_sink();
    let bx = start(cfg.clone(), sink);
    recv_seen(&mut x.live, 2, "X live").await;
    let ends = vec![Some(r0 + 1), Some(r1 + 1)];
    let deadline = tokio::time::Instant::now() + WITHIN;
    while committed_offsets(&brokers, &group, &topic, 2)
        .await
        .expect("committed offsets")
        != ends
    {
        assert!(tokio::time::Instant::now() < deadline, "X's commits");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Y joins and gets one partition: it rebuilds that partition's record.
    // X keeps the other, which it had, and rebuilds nothing.
    let (sink, mut y) = recording_sink();
    let by = start(cfg.clone(), sink);
    let y_rebuilt = recv_seen(&mut y.retained, 1, "Y rebuild").await;
    let py = partition_of(&y_rebuilt[0].msg);
    let px = 1 - py;
    let offs = [r0, r1];
    assert_eq!(
        id(&y_rebuilt[0].msg),
        format!("{topic}-{py}-{}", offs[py as usize])
    );
    // A live record on each side proves both rebuilds are over.
    let ry = produce_at(&p, &topic, py, "ry", now_ms()).await;
    let rx = produce_at(&p, &topic, px, "rx", now_ms()).await;
    let got = recv_seen(&mut y.live, 1, "Y live").await;
    assert_eq!(id(&got[0].msg), format!("{topic}-{py}-{ry}"));
    let got = recv_seen(&mut x.live, 1, "X live after the handover").await;
    assert_eq!(id(&got[0].msg), format!("{topic}-{px}-{rx}"));
    assert_empty(&mut x.retained, "X had its partition: nothing to rebuild");
    assert_empty(&mut y.retained, "Y rebuilt one record");

    // Y leaves: X gets Y's partition back and rebuilds only what Y consumed
    // meanwhile (ry), not what X had itself put into the store (r0/r1).
    by.stop().await;
    let rebuilt = recv_seen(&mut x.retained, 1, "X rebuild after Y left").await;
    assert_eq!(id(&rebuilt[0].msg), format!("{topic}-{py}-{ry}"));
    let rz = produce_at(&p, &topic, py, "rz", now_ms()).await;
    let got = recv_seen(&mut x.live, 1, "X live on the regained partition").await;
    assert_eq!(id(&got[0].msg), format!("{topic}-{py}-{rz}"));
    assert_empty(&mut x.retained, "rebuilt once");
    assert_empty(&mut x.live, "nothing delivered twice");
    bx.stop().await;
}
