//! Failures mid-stream, through the whole broker: Kafka stopped and restarted
//! (a private Kafka, so other tests keep theirs), and the `stomp-broker`
//! process SIGKILLed and restarted with the same consumer group. Nothing
//! produced to Kafka is lost: every record reaches a subscriber, live or
//! replayed (at-least-once: duplicates allowed, none skipped).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use e2e_tests::{
    body,
    kafka::{
        bootstrap, bridge_config, broker_binary, create_topic, delivered, enqueue, frame_headers,
        producer, readyz, unique, wait_for, BrokerProcess, Landed, PrivateKafka,
    },
    Client, Event, Kind, TestBroker,
};
use stomp_codec::Command;

/// Waits until `GET /readyz` answers `status`; on timeout the error carries
/// the last `/readyz` answer and the bridge's metrics, to say why.
async fn wait_ready(http: std::net::SocketAddr, status: u16, within: Duration) -> Result<()> {
    let waited = wait_for(&format!("/readyz {status}"), within, move || async move {
        readyz(http).await == status
    })
    .await;
    if waited.is_err() {
        let last = e2e_tests::http_get(http, "/readyz").await;
        let metrics = e2e_tests::http_get(http, "/metrics")
            .await
            .map(|(_, m)| {
                m.lines()
                    .filter(|l| l.starts_with("kafka_"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        return waited
            .with_context(|| format!("last /readyz: {last:?}; bridge metrics:\n{metrics}"));
    }
    Ok(())
}

/// Reads MESSAGEs, recording their `message-id`s, until `want` are all
/// seen or `within` passes. Returns how many duplicates arrived.
async fn collect_until(
    c: &mut Client,
    seen: &mut HashSet<String>,
    want: &HashSet<String>,
    within: Duration,
) -> Result<usize> {
    let deadline = Instant::now() + within;
    let mut dups = 0;
    while !want.is_subset(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = c.recv_within(left).await.with_context(|| {
            format!(
                "{} of {} expected records missing",
                want.difference(seen).count(),
                want.len()
            )
        })?;
        ensure!(
            f.command == Command::Message,
            "{:?} {:?} {}",
            f.command,
            f.headers,
            body(&f)
        );
        let id = frame_headers(&f)
            .remove("message-id")
            .context("message-id")?;
        if !seen.insert(id) {
            dups += 1;
        }
    }
    Ok(dups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_restart_mid_stream_keeps_websocket_clients_and_loses_no_record() -> Result<()> {
    const OUTAGE: Duration = Duration::from_secs(30);
    let t0 = Instant::now();
    let kafka = PrivateKafka::new("e2e-kafka-outage");
    tokio::task::block_in_place(|| kafka.script("start"))?;
    let brokers = kafka.brokers();
    let topic = unique("order-results-outage");
    create_topic(&brokers, &topic, 2).await?;
    let route = format!("{topic}=/topic/order.{{key}}");
    let mut cfg = bridge_config(&brokers, &unique("e2e-outage"), &[&route]);
    cfg.client
        .insert("reconnect.backoff.max.ms".into(), "1000".into());
    let b = TestBroker::start_with(move |c| c.kafka = Some(cfg)).await;
    wait_ready(b.http, 200, Duration::from_secs(60))
        .await
        .context("bridge Up with Kafka running")?;

    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = b.client(Kind::Ws).await;
        c.subscribe(&format!("s{i}"), "/topic/order.*", "auto")
            .await?;
        clients.push((c, HashSet::new()));
    }
    let p = producer(&brokers);
    let produce_batch = |tag: &'static str| {
        let p = p.clone();
        let topic = topic.clone();
        async move {
            let mut fs = Vec::new();
            for i in 0..50 {
                let id = format!("{tag}{i:03}");
                let v = format!(r#"{{"orderId":"{id}","status":"FILLED"}}"#);
                fs.push(enqueue(&p, &topic, Some(&id), &[], v.as_bytes())?);
            }
            let mut ids = HashSet::new();
            for f in fs {
                ids.insert(delivered(f).await?.message_id(&topic));
            }
            anyhow::Ok(ids)
        }
    };

    // Before the outage.
    let before = produce_batch("a").await?;
    for (c, seen) in &mut clients {
        collect_until(c, seen, &before, Duration::from_secs(30))
            .await
            .context("before the outage")?;
    }

    // Kafka goes away: not ready, but the WebSocket sessions stay usable.
    tokio::task::block_in_place(|| kafka.script("stop"))?;
    let down_at = Instant::now();
    wait_ready(b.http, 503, Duration::from_secs(30))
        .await
        .context("/readyz while Kafka is down")?;
    let (_, why) = b.http_get("/readyz").await?;
    ensure!(why.contains("kafka"), "/readyz body {why:?}");
    let noticed = down_at.elapsed();
    // Records produced while Kafka is down wait in the producer.
    let during = tokio::spawn(produce_batch("b"));
    for (i, (c, _)) in clients.iter_mut().enumerate() {
        c.send_receipted(&format!("/topic/ping.{i}"), "still here")
            .await
            .context("session usable while Kafka is down")?;
    }
    // Hold the outage for OUTAGE (issue 8: 30 s) from the moment Kafka was
    // stopped: every 5 s /readyz must still say 503 and every WebSocket
    // session must still answer a receipted SEND.
    let mut round = 0;
    while down_at.elapsed() < OUTAGE {
        let left = OUTAGE.saturating_sub(down_at.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(5))).await;
        round += 1;
        let still_down = readyz(b.http).await;
        ensure!(
            still_down == 503,
            "/readyz {still_down} while Kafka is down ({:?} in)",
            down_at.elapsed()
        );
        for (i, (c, _)) in clients.iter_mut().enumerate() {
            c.send_receipted(&format!("/topic/ping.{i}"), &format!("outage {round}"))
                .await
                .with_context(|| {
                    format!("session {i} usable {:?} into the outage", down_at.elapsed())
                })?;
        }
    }
    let outage = down_at.elapsed();

    tokio::task::block_in_place(|| kafka.script("start"))?;
    let during = tokio::time::timeout(Duration::from_secs(120), during)
        .await
        .context("records produced during the outage acknowledged")???;
    wait_ready(b.http, 200, Duration::from_secs(90))
        .await
        .context("/readyz after Kafka returned")?;
    let after = produce_batch("c").await?;
    let mut dups = 0;
    for (c, seen) in &mut clients {
        dups += collect_until(c, seen, &during, Duration::from_secs(60))
            .await
            .context("records produced during the outage")?;
        dups += collect_until(c, seen, &after, Duration::from_secs(30))
            .await
            .context("records produced after the outage")?;
        ensure!(seen.len() == 150, "{} distinct records", seen.len());
    }
    ensure!(
        b.core.metrics.connections.load(Ordering::Relaxed) >= 3,
        "clients disconnected"
    );
    eprintln!(
        "kafka outage: down {outage:?}; /readyz 503 after {noticed:?}; {dups} duplicates; total {:?}",
        t0.elapsed()
    );
    b.stop().await;
    drop(kafka);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sigkilled_mid_stream_resumes_from_committed_offsets_and_skips_nothing() -> Result<()>
{
    const TOTAL: usize = 3_000;
    const KILL_AFTER: usize = 1_000;
    let t0 = Instant::now();
    let brokers = bootstrap();
    let bin = tokio::task::spawn_blocking(broker_binary).await??;
    let topic = unique("order-results-crash");
    create_topic(&brokers, &topic, 3).await?;
    let group = unique("e2e-crash");
    let dir = std::env::temp_dir().join(unique("e2e-crash"));
    std::fs::create_dir_all(&dir)?;
    // A new group starts at the beginning of its (new) topic. The CLI has no
    // flag for auto_offset_reset, so it comes from a config file. A SIGKILLed
    // member stays in the group until its session times out (45 s by
    // default), which delays the restarted node's assignment: use the
    // smallest session timeout the Kafka broker allows.
    let config = dir.join("broker.toml");
    std::fs::write(
        &config,
        "[kafka]\nauto_offset_reset = \"earliest\"\nstats_interval = 1\n\
         [kafka.client]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
    )?;
    let args: Vec<String> = [
        "--config",
        &config.to_string_lossy(),
        "--kafka-brokers",
        &brokers,
        "--kafka-group-id",
        &group,
        "--route",
        &format!("{topic}=/topic/order.{{key}}"),
    ]
    .map(String::from)
    .to_vec();

    let mut b1 = BrokerProcess::start(&bin, &dir, &args).await?;
    wait_ready(b1.http, 200, Duration::from_secs(60))
        .await
        .with_context(|| format!("first broker ready; log:\n{}", b1.log_text()))?;
    let mut sub1 = Client::ws(&b1.ws_url()).await?;
    sub1.connect_default().await?;
    sub1.subscribe("all", "/topic/order.*", "auto").await?;

    // A stream of order results, ~1,000/s. So that the kill is always
    // mid-stream however slow the machine, the producer holds at 2/3 of the
    // stream until the broker has been killed.
    let produced = Arc::new(AtomicUsize::new(0));
    let (killed_tx, mut killed_rx) = tokio::sync::watch::channel(false);
    let producing = {
        let p = producer(&brokers);
        let topic = topic.clone();
        let produced = produced.clone();
        tokio::spawn(async move {
            let mut landed: HashMap<String, Landed> = HashMap::new();
            for batch in 0..TOTAL / 50 {
                if batch * 50 == TOTAL * 2 / 3 {
                    killed_rx.wait_for(|k| *k).await?;
                }
                let mut fs = Vec::new();
                for i in 0..50 {
                    let id = format!("o{:05}", batch * 50 + i);
                    let v = format!(r#"{{"orderId":"{id}","status":"FILLED"}}"#);
                    fs.push((
                        id.clone(),
                        enqueue(&p, &topic, Some(&id), &[], v.as_bytes())?,
                    ));
                }
                for (id, f) in fs {
                    landed.insert(id, delivered(f).await?);
                }
                produced.fetch_add(50, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(landed)
        })
    };

    // Collect until KILL_AFTER records arrived, then SIGKILL mid-stream and
    // drain what had been sent before the kill.
    let mut seen1 = HashSet::new();
    while seen1.len() < KILL_AFTER {
        let f = sub1.recv_within(Duration::from_secs(60)).await?;
        seen1.insert(frame_headers(&f).remove("message-id").context("id")?);
    }
    b1.kill()?;
    let at_kill = produced.load(Ordering::Relaxed);
    killed_tx.send(true)?;
    loop {
        match sub1.next_event(Duration::from_secs(10)).await? {
            Event::Frame(f) if f.command == Command::Message => {
                seen1.insert(frame_headers(&f).remove("message-id").context("id")?);
            }
            Event::Frame(f) => bail!("unexpected {:?} {:?}", f.command, f.headers),
            Event::HeartBeat => {}
            Event::Closed(_) => break,
        }
    }

    // Restart with the same group: it resumes from the committed offsets;
    // whatever it routes before the new subscriber arrives is retained and
    // replayed to it.
    let b2 = BrokerProcess::start(&bin, &dir, &args).await?;
    let restarted = Instant::now();
    let mut sub2 = Client::ws(&b2.ws_url()).await?;
    sub2.connect_default().await?;
    sub2.subscribe("all", "/topic/order.*", "auto").await?;
    let landed = tokio::time::timeout(Duration::from_secs(120), producing)
        .await
        .context("producer finished")???;
    let all: HashSet<String> = landed.values().map(|l| l.message_id(&topic)).collect();
    ensure!(all.len() == TOTAL);
    let missing_after_b1: HashSet<String> = all.difference(&seen1).cloned().collect();
    let mut seen2 = HashSet::new();
    collect_until(
        &mut sub2,
        &mut seen2,
        &missing_after_b1,
        Duration::from_secs(90),
    )
    .await
    .with_context(|| {
        format!(
            "after the restart (first broker delivered {} of {TOTAL}); log:\n{}",
            seen1.len(),
            b2.log_text()
        )
    })?;
    let redelivered = seen2.intersection(&seen1).count();
    let ready = readyz(b2.http).await;
    ensure!(ready == 200, "/readyz {ready} after the restart");
    eprintln!(
        "broker crash: killed after {} delivered ({at_kill} produced); restarted node delivered the other {} \
         within {:?} ({redelivered} already seen before the kill); total {:?}",
        seen1.len(),
        missing_after_b1.len(),
        restarted.elapsed(),
        t0.elapsed()
    );
    drop(b2);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
