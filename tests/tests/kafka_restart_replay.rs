//! A `stomp-broker` process SIGKILLed after its Kafka bridge delivered and
//! committed order results, and restarted with the same consumer group: the
//! retained store is rebuilt from Kafka, so a late subscriber still gets the
//! results (`replayed:true`, the last `retain_last` per destination, none
//! older than `retain_ttl`), a subscriber of the new process that came
//! before the rebuild gets them replayed once it is over (not live, never
//! after a live record of the same destination), and
//! `/readyz` says ready only after the rebuild.

use std::{collections::HashSet, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use e2e_tests::{
    body,
    kafka::{
        bootstrap, broker_binary, committed_offsets, create_topic, frame_headers, now_ms,
        produce_at, producer, readyz, unique, wait_for, BrokerProcess, Landed,
    },
    Client,
};
use stomp_codec::{Command, Frame};

const PARTITIONS: i32 = 2;

/// `(message-id, replayed header, body)` of a MESSAGE.
fn describe(f: &Frame) -> (String, Option<String>, String) {
    let mut h = frame_headers(f);
    (
        h.remove("message-id").unwrap_or_default(),
        h.remove("replayed"),
        body(f),
    )
}

/// Subscribes to `destination` and returns exactly what it replays: the
/// MESSAGEs between the SUBSCRIBE's RECEIPT and the RECEIPT of an
/// UNSUBSCRIBE sent right after (the broker sends replays right after the
/// SUBSCRIBE's RECEIPT, before it reads the next frame).
async fn replayed(c: &mut Client, id: &str, destination: &str) -> Result<Vec<Frame>> {
    c.subscribe(id, destination, "auto").await?;
    let fence = format!("unsub-{id}");
    c.command(Command::Unsubscribe, &[("id", id), ("receipt", &fence)])
        .await?;
    let mut out = Vec::new();
    loop {
        let f = c.recv_within(Duration::from_secs(10)).await?;
        match f.command {
            Command::Message => out.push(f),
            Command::Receipt if f.header_str("receipt-id") == Some(fence.as_str()) => {
                return Ok(out)
            }
            _ => bail!("unexpected {:?} {:?} {}", f.command, f.headers, body(&f)),
        }
    }
}

/// The expected committed offset per partition once every landed record
/// was consumed: one past the last record, `0` for an empty partition
/// (its start position, committed when it was assigned).
fn ends(landed: &[Landed]) -> Vec<Option<i64>> {
    (0..PARTITIONS)
        .map(|p| {
            landed
                .iter()
                .filter(|l| l.partition == p)
                .map(|l| l.offset + 1)
                .max()
                .or(Some(0))
        })
        .collect()
}

/// Waits until the group's committed offsets are exactly `want`.
async fn wait_committed(
    what: &str,
    brokers: &str,
    group: &str,
    topic: &str,
    want: &[Option<i64>],
) -> Result<()> {
    wait_for(what, Duration::from_secs(30), || async {
        committed_offsets(brokers, group, topic, PARTITIONS)
            .await
            .is_ok_and(|c| c == want)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sigkilled_after_commit_replays_results_to_late_subscribers_after_restart(
) -> Result<()> {
    let brokers = bootstrap();
    let bin = tokio::task::spawn_blocking(broker_binary).await??;
    let topic = unique("order-results-replay");
    create_topic(&brokers, &topic, PARTITIONS).await?;
    let group = unique("e2e-replay");
    let dir = std::env::temp_dir().join(unique("e2e-replay"));
    std::fs::create_dir_all(&dir)?;
    // Keep the last 2 results per order for 60 s. Commit every 200 ms so
    // the test need not wait for librdkafka's 5 s default; the smallest
    // session timeout Kafka allows, so the restarted node gets the
    // partitions of the killed one soon.
    let config = dir.join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\nlevel = \"info\"\n\
             [kafka]\nauto_offset_reset = \"earliest\"\nstats_interval = 1\n\
             [kafka.client]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\
             \"auto.commit.interval.ms\" = \"200\"\n\
             [[kafka.routes]]\ntopics = [\"{topic}\"]\ndestination = \"/topic/order.{{key}}\"\n\
             retain_last = 2\nretain_ttl = \"60s\"\n"
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
    let mut sub1 = Client::ws(&b1.ws_url()).await?;
    sub1.connect_default().await?;
    sub1.subscribe("all", "/topic/order.*", "auto").await?;

    // Order results: "old" ones stamped 10 minutes ago (older than the
    // 60 s TTL), one of them after the fresh ones in the log.
    let p = producer(&brokers);
    let old = now_ms() - 600_000;
    let mut landed = Vec::new();
    let mut ids = Vec::new();
    for (key, status, ts) in [
        ("A", "NEW", old),
        ("A", "ACCEPTED", now_ms()),
        ("A", "PARTIAL", now_ms()),
        ("A", "FILLED", now_ms()),
        ("B", "FILLED", now_ms()),
        ("OLD", "FILLED", old),
    ] {
        let v = format!(r#"{{"orderId":"{key}","status":"{status}"}}"#);
        let l = produce_at(&p, &topic, key, ts, v.as_bytes()).await?;
        landed.push(l);
        ids.push(l.message_id(&topic));
    }
    // The first broker delivers them all live and commits them.
    let mut seen = HashSet::new();
    while seen.len() < ids.len() {
        let f = sub1.recv_within(Duration::from_secs(60)).await?;
        ensure!(f.command == Command::Message, "{:?}", f.command);
        seen.insert(describe(&f).0);
    }
    ensure!(seen == ids.iter().cloned().collect::<HashSet<_>>());
    let want_committed = ends(&landed);
    wait_committed(
        "the first broker's commits",
        &brokers,
        &group,
        &topic,
        &want_committed,
    )
    .await?;

    b1.kill()?;
    // Produced while no broker runs: after the committed offsets, so the
    // restarted broker must deliver it live (nothing skipped).
    let e = produce_at(&p, &topic, "E", now_ms(), br#"{"orderId":"E"}"#)
        .await?
        .message_id(&topic);

    let b2 = BrokerProcess::start(&bin, &dir, &args).await?;
    // A subscriber of the new process from before its partitions are
    // assigned (the killed member holds them until its session times out).
    let mut live = Client::ws(&b2.ws_url()).await?;
    live.connect_default().await?;
    live.subscribe("all", "/topic/order.*", "auto").await?;
    ensure!(
        !b2.log_text().contains("rebuilding retained messages"),
        "the live subscription must predate the rebuild for this test; log:\n{}",
        b2.log_text()
    );
    // Ready only once the partitions are assigned and the store rebuilt.
    wait_for("second broker ready", Duration::from_secs(60), || async {
        readyz(b2.http).await == 200
    })
    .await
    .with_context(|| b2.log_text())?;
    ensure!(
        b2.log_text().contains("retained messages rebuilt"),
        "/readyz 200 before the retained store was rebuilt; log:\n{}",
        b2.log_text()
    );
    let d = produce_at(&p, &topic, "D", now_ms(), br#"{"orderId":"D"}"#)
        .await?
        .message_id(&topic);
    // It gets E and D live, and — as it subscribed before the rebuild —
    // the retained results replayed (once, marked replayed) when the
    // rebuild is over; the rebuilt records are not sent live again. The
    // replay is paced by the byte budget (broker/src/replay.rs), so live
    // records of *other* orders may come between replayed ones, but a
    // replayed result never follows a live one of its own order.
    let rebuilt: HashSet<String> = [&ids[2], &ids[3], &ids[4]].into_iter().cloned().collect();
    let mut got = HashSet::new();
    let mut got_replayed = HashSet::new();
    let mut live_destinations = HashSet::new();
    while !(got.contains(&e) && got.contains(&d) && got_replayed.len() == rebuilt.len()) {
        let f = live
            .recv_within(Duration::from_secs(60))
            .await
            .with_context(|| format!("live records after the restart; log:\n{}", b2.log_text()))?;
        ensure!(f.command == Command::Message, "{:?}", f.command);
        let destination = f.header_str("destination").unwrap_or_default().to_owned();
        let (id, replayed, body) = describe(&f);
        if replayed.as_deref() == Some("true") {
            ensure!(
                rebuilt.contains(&id),
                "replayed {id} {body}: want only {rebuilt:?}"
            );
            ensure!(
                !live_destinations.contains(&destination),
                "replayed {id} {body} after a live record of {destination}"
            );
            ensure!(got_replayed.insert(id.clone()), "{id} replayed twice");
            continue;
        }
        ensure!(
            replayed.is_none() && (id == e || id == d),
            "live subscriber got {id} (replayed {replayed:?}) {body}; only {e} and {d} are new"
        );
        ensure!(got.insert(id.clone()), "{id} delivered twice");
        live_destinations.insert(destination);
    }
    ensure!(
        got_replayed == rebuilt,
        "a subscriber from before the rebuild got {got_replayed:?} replayed, want {rebuilt:?}"
    );
    // A late subscriber gets the pre-crash results replayed: the last two
    // of A, B's, none of the old record; and E's, retained live.
    let mut late = Client::ws(&b2.ws_url()).await?;
    late.connect_default().await?;
    let expect = [
        ("/topic/order.A", vec![&ids[2], &ids[3]]),
        ("/topic/order.B", vec![&ids[4]]),
        ("/topic/order.OLD", vec![]),
        ("/topic/order.E", vec![&e]),
    ];
    for (i, (dest, want)) in expect.iter().enumerate() {
        let frames = replayed(&mut late, &format!("late{i}"), dest).await?;
        let got: Vec<(String, Option<String>, String)> = frames.iter().map(describe).collect();
        let got_ids: Vec<&String> = got.iter().map(|g| &g.0).collect();
        ensure!(&got_ids == want, "{dest}: replayed {got:?}, want {want:?}");
        for (id, replayed, _) in &got {
            ensure!(
                replayed.as_deref() == Some("true"),
                "{dest}: {id} not marked replayed"
            );
        }
    }
    let log = b2.log_text();
    ensure!(
        log.contains("retained messages rebuilt"),
        "no rebuild logged:\n{log}"
    );
    let a = replayed(&mut late, "late-body", "/topic/order.A").await?;
    ensure!(
        a.iter().map(body).collect::<Vec<_>>()
            == [
                r#"{"orderId":"A","status":"PARTIAL"}"#,
                r#"{"orderId":"A","status":"FILLED"}"#
            ],
        "bodies of A"
    );
    // The rebuild committed nothing of its own: the group's offsets moved
    // only by what the new broker consumed live (E and D).
    let mut after = landed.clone();
    for id in [&e, &d] {
        let (partition, offset) = id
            .rsplit_once('-')
            .and_then(|(rest, o)| {
                let (_, p) = rest.rsplit_once('-')?;
                Some((p.parse().ok()?, o.parse().ok()?))
            })
            .context("message-id")?;
        after.push(Landed { partition, offset });
    }
    let want_committed = ends(&after);
    wait_committed(
        "the second broker's commits",
        &brokers,
        &group,
        &topic,
        &want_committed,
    )
    .await?;
    drop(b2);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
