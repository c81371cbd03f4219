//! The Kafka → STOMP path under faults, through the whole broker, against
//! the real Kafka of `scripts/kafka.sh` (`KAFKA_BOOTSTRAP` or
//! `.kafka/bootstrap`; fails, never skips, without one):
//!
//! * a record larger than the broker's frame limit is never delivered; it
//!   goes to the dead-letter topic and the subscriber gets every good one;
//! * a full `reject-publish` queue pauses the partition: nothing beyond it
//!   is committed, and everything arrives once a consumer drains it;
//! * a backlog is handed on at `catchup_rate`, so a subscriber with a small
//!   pending-bytes budget is not disconnected by the recovery;
//! * a SIGKILLed node resumes every partition where it was, including
//!   partitions that never carried a record and with no auto-commit yet.

use std::{
    collections::HashSet,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use e2e_tests::{
    body,
    kafka::{
        big_producer, bootstrap, bridge_config, broker_binary, committed_offsets, consume,
        create_topic, create_topic_with, delivered, frame_headers, now_ms, producer, readyz,
        record_headers, unique, wait_for, BrokerProcess,
    },
    Client, Kind, TestBroker,
};
use rdkafka::{producer::FutureRecord, Message as _};
use stomp_broker::config::QueueOverflow;
use stomp_codec::Command;

const BIG: &[(&str, &str)] = &[("max.message.bytes", "8388608")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_over_the_frame_limit_is_dead_lettered_and_never_delivered() -> Result<()> {
    let brokers = bootstrap();
    let topic = unique("big-records");
    let dlq = unique("big-records-dlq");
    create_topic_with(&brokers, &topic, 1, BIG).await?;
    create_topic_with(&brokers, &dlq, 1, BIG).await?;
    let mut cfg = bridge_config(
        &brokers,
        &unique("e2e-big"),
        &[&format!("{topic}=/topic/feed.{{key}}")],
    );
    cfg.dead_letter_topic = Some(dlq.clone());
    let b = TestBroker::start_with(move |c| c.kafka = Some(cfg)).await;
    let mut sub = b.client(Kind::Ws).await;
    sub.subscribe("s", "/topic/feed.*", "auto").await?;

    // 30 good records, one of 2 MiB (over the 1 MiB frame limit), 30 good.
    let p = big_producer(&brokers);
    let big = vec![b'x'; 2 * 1024 * 1024];
    let mut big_offset = None;
    for i in 0..61 {
        let key = format!("k{}", i % 3);
        let good = format!(r#"{{"n":{i}}}"#);
        let value: &[u8] = if i == 30 { &big } else { good.as_bytes() };
        let rec = FutureRecord::to(&topic).key(&key).payload(value).headers(
            rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: "trace",
                value: Some("t-1"),
            }),
        );
        let l = delivered(p.send_result(rec).map_err(|(e, _)| e)?).await?;
        if i == 30 {
            big_offset = Some(l.offset);
        }
    }
    let big_offset = big_offset.context("big record produced")?;

    // Every good record, in order, nothing else and no ERROR.
    for i in (0..61).filter(|&i| i != 30) {
        let f = sub
            .recv_within(Duration::from_secs(60))
            .await
            .with_context(|| format!("waiting for good record {i}"))?;
        ensure!(
            f.command == Command::Message,
            "{:?} {}",
            f.command,
            body(&f)
        );
        ensure!(
            body(&f) == format!(r#"{{"n":{i}}}"#),
            "got {} bytes",
            f.body.len()
        );
    }
    let m = b.core.bridge().context("bridge")?.metrics();
    ensure!(m.unroutable() == 1, "unroutable {}", m.unroutable());
    ensure!(
        m.dead_lettered() == 1,
        "dead-lettered {}",
        m.dead_lettered()
    );
    ensure!(b.core.metrics.slow_consumer_disconnects.load(Relaxed) == 0);

    // The dead-letter topic holds the record: value, key, headers, origin.
    let got = consume(&brokers, &dlq, 1, Duration::from_secs(30)).await?;
    let r = &got[0];
    ensure!(r.payload().map(<[u8]>::len) == Some(big.len()));
    ensure!(r.key() == Some(&b"k0"[..]));
    let h = record_headers(r);
    ensure!(h.get("trace").map(String::as_str) == Some("t-1"), "{h:?}");
    ensure!(h.get("dead-letter-topic") == Some(&topic), "{h:?}");
    ensure!(h.get("dead-letter-partition").map(String::as_str) == Some("0"));
    ensure!(h.get("dead-letter-offset") == Some(&big_offset.to_string()));
    ensure!(h
        .get("dead-letter-reason")
        .is_some_and(|r| r.contains("limit")));
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_reject_publish_queue_pauses_the_partition_and_nothing_is_lost() -> Result<()> {
    let brokers = bootstrap();
    let topic = unique("jobs");
    let group = unique("e2e-jobs");
    create_topic(&brokers, &topic, 1).await?;
    let mut cfg = bridge_config(&brokers, &group, &[&format!("{topic}=/queue/jobs")]);
    cfg.client
        .insert("auto.commit.interval.ms".into(), "100".into());
    let b = TestBroker::start_with(move |c| {
        c.kafka = Some(cfg);
        c.queues.max_messages = 5;
        c.queues.overflow = QueueOverflow::RejectPublish;
    })
    .await;
    let p = producer(&brokers);
    for i in 0..30 {
        e2e_tests::kafka::produce(&p, &topic, None, &[], format!("job-{i}").as_bytes()).await?;
    }
    // No consumer: the queue holds 5, the bridge is refused the 6th.
    let core = b.core.clone();
    wait_for(
        "the bridge paused on the full queue",
        Duration::from_secs(60),
        || {
            let core = core.clone();
            async move {
                core.bridge().is_some_and(|br| {
                    br.metrics().sink_full() > 0 && br.metrics().paused_partitions() == 1
                })
            }
        },
    )
    .await?;
    let m = b.core.bridge().context("bridge")?.metrics();
    ensure!(m.routed() == 5, "routed {}", m.routed());
    // Offsets of refused records are not committed: the group stays at 5.
    wait_for("offset 5 committed", Duration::from_secs(30), || async {
        committed_offsets(&brokers, &group, &topic, 1).await.ok() == Some(vec![Some(5)])
    })
    .await?;
    // ... and stays there while the queue is full (auto-commit runs every
    // 100 ms, the bridge retries every <= 500 ms): sampled for a second.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let c = committed_offsets(&brokers, &group, &topic, 1).await?;
        ensure!(
            c == vec![Some(5)],
            "committed {c:?} while the queue is full"
        );
        ensure!(
            m.routed() == 5,
            "routed {} while the queue is full",
            m.routed()
        );
    }
    // A consumer drains the queue: all 30 arrive, in order.
    let mut worker = b.client(Kind::Tcp).await;
    worker.subscribe("w", "/queue/jobs", "auto").await?;
    for i in 0..30 {
        let f = worker.recv_within(Duration::from_secs(30)).await?;
        ensure!(f.command == Command::Message, "{:?}", f.command);
        ensure!(body(&f) == format!("job-{i}"), "job {i}: got {}", body(&f));
    }
    wait_for("offset 30 committed", Duration::from_secs(30), || async {
        committed_offsets(&brokers, &group, &topic, 1).await.ok() == Some(vec![Some(30)])
    })
    .await?;
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_is_paced_at_catchup_rate_and_a_steady_subscriber_is_not_disconnected() -> Result<()>
{
    const N: usize = 2_000;
    let brokers = bootstrap();
    let topic = unique("backlog");
    create_topic(&brokers, &topic, 1).await?;
    let mut cfg = bridge_config(
        &brokers,
        &unique("e2e-backlog"),
        &[&format!("{topic}=/topic/feed.all")],
    );
    cfg.catchup_rate = 1_000;
    let b = TestBroker::start_with(move |c| {
        c.kafka = Some(cfg);
        c.limits.max_pending_bytes_per_connection = 64 * 1024;
    })
    .await;
    let core = b.core.clone();
    wait_for("bridge ready", Duration::from_secs(60), || {
        let core = core.clone();
        async move { core.bridge().is_some_and(|br| br.readiness().is_ok()) }
    })
    .await?;
    let mut sub = b.client(Kind::Ws).await;
    sub.subscribe("s", "/topic/feed.all", "auto").await?;

    // A backlog: records stamped a minute ago, as if produced during an
    // outage, 512 bytes each (1 MiB in all, 16 times the budget).
    let p = producer(&brokers);
    let old = now_ms() - 60_000;
    let pad = "p".repeat(500);
    let mut acks = Vec::with_capacity(N);
    for i in 0..N {
        let v = format!("{i:06}{pad}");
        let rec = FutureRecord::<(), _>::to(&topic)
            .payload(v.as_bytes())
            .timestamp(old);
        acks.push(p.send_result(rec).map_err(|(e, _)| e)?);
    }
    for a in acks {
        delivered(a).await?;
    }
    let mut first = None;
    for i in 0..N {
        let f = sub
            .recv_within(Duration::from_secs(30))
            .await
            .with_context(|| format!("record {i}"))?;
        ensure!(
            f.command == Command::Message,
            "{:?} {}",
            f.command,
            body(&f)
        );
        ensure!(
            body(&f).starts_with(&format!("{i:06}")),
            "record {i} out of order"
        );
        first.get_or_insert_with(Instant::now);
    }
    let took = first.map(|t| t.elapsed()).unwrap_or_default();
    ensure!(
        took >= Duration::from_millis(1_500),
        "{N} backlog records at 1,000/s took only {took:?}"
    );
    ensure!(b.core.metrics.slow_consumer_disconnects.load(Relaxed) == 0);
    eprintln!("backlog of {N} records delivered in {took:?} at catchup_rate 1000");
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sigkilled_before_its_first_auto_commit_resumes_every_partition() -> Result<()> {
    const PARTITIONS: i32 = 3;
    let brokers = bootstrap();
    let bin = tokio::task::spawn_blocking(broker_binary).await??;
    let topic = unique("resume-kill");
    create_topic(&brokers, &topic, PARTITIONS).await?;
    let group = unique("e2e-resume-kill");
    let dir = std::env::temp_dir().join(unique("e2e-resume-kill"));
    std::fs::create_dir_all(&dir)?;
    // auto_offset_reset is the default, `latest`; no auto-commit within
    // the test; the smallest session timeout, so the restarted node gets
    // the killed one's partitions soon.
    let config = dir.join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nstats_interval = 1\n\
             [kafka.client]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\
             \"auto.commit.interval.ms\" = \"600000\"\n\
             [[kafka.routes]]\ntopics = [\"{topic}\"]\ndestination = \"/topic/r.{{partition}}\"\n"
        ),
    )?;
    let args: Vec<String> = [
        "--config",
        &config.to_string_lossy(),
        "--kafka-brokers",
        &brokers,
        "--kafka-group-id",
        &group,
    ]
    .map(String::from)
    .to_vec();
    let mut b1 = BrokerProcess::start(&bin, &dir, &args).await?;
    wait_for("first broker ready", Duration::from_secs(60), || async {
        readyz(b1.http).await == 200
    })
    .await
    .with_context(|| b1.log_text())?;
    // Ready means every partition has a committed start position.
    let c = committed_offsets(&brokers, &group, &topic, PARTITIONS).await?;
    ensure!(
        c == vec![Some(0); 3],
        "committed at ready: {c:?}; log:\n{}",
        b1.log_text()
    );
    let mut sub1 = Client::ws(&b1.ws_url()).await?;
    sub1.connect_default().await.context("CONNECT")?;
    sub1.subscribe("s", "/topic/r.*", "auto")
        .await
        .context("SUBSCRIBE")?;
    let p = producer(&brokers);
    let first = e2e_tests::kafka::produce_at(&p, &topic, "k", now_ms(), b"first").await?;
    let _ = first;
    let f = sub1
        .recv_within(Duration::from_secs(30))
        .await
        .with_context(|| format!("the first record; log:\n{}", b1.log_text()))?;
    ensure!(f.command == Command::Message);
    b1.kill()?;

    // 20 records per partition while no node runs.
    let mut want = HashSet::new();
    for part in 0..PARTITIONS {
        for i in 0..20 {
            let v = format!("p{part}-{i}");
            let rec = FutureRecord::<(), _>::to(&topic)
                .partition(part)
                .payload(v.as_bytes());
            let l = delivered(p.send_result(rec).map_err(|(e, _)| e)?).await?;
            want.insert(l.message_id(&topic));
        }
    }
    let b2 = BrokerProcess::start(&bin, &dir, &args).await?;
    let mut sub2 = Client::ws(&b2.ws_url()).await?;
    sub2.connect_default()
        .await
        .context("CONNECT to the restarted broker")?;
    sub2.subscribe("s", "/topic/r.*", "auto")
        .await
        .with_context(|| format!("SUBSCRIBE to the restarted broker; log:\n{}", b2.log_text()))?;
    let mut got = HashSet::new();
    while !want.is_subset(&got) {
        let f = sub2
            .recv_within(Duration::from_secs(60))
            .await
            .with_context(|| {
                format!(
                    "{} of {} records after the restart; log:\n{}",
                    want.intersection(&got).count(),
                    want.len(),
                    b2.log_text()
                )
            })?;
        ensure!(f.command == Command::Message, "{:?}", f.command);
        got.insert(frame_headers(&f).remove("message-id").unwrap_or_default());
    }
    drop(b2);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
