//! Connection fairness: a subscriber receiving a flood of messages still has
//! its own socket read (DISCONNECT, ACK, heart-beats) and its deadlines
//! checked, end to end over TCP. The flood is made with
//! `slow_consumer = "drop"`, so the subscriber is not disconnected for
//! falling behind. Whether the old loop starves here depends on scheduling
//! (the queue must never be empty when the task looks); the deterministic
//! proof is `connection::tests::a_flooded_connection_*` in the broker, whose
//! transport refills the queue on every write.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use e2e_tests::{Client, Event, TestBroker};
use stomp_broker::config::SlowConsumerPolicy;
use stomp_codec::Command;

const TOPIC: &str = "/topic/flood";

/// One flood at a time: four at once on a shared 2-core machine measure the
/// machine, not the broker.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publishers sending 4 KiB messages to [`TOPIC`] as fast as the broker takes
/// them, until dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<Result<()>>,
}

impl Flood {
    async fn start(b: &TestBroker, publishers: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        let body = "x".repeat(4 * 1024);
        for _ in 0..publishers {
            let mut p = b.tcp_client().await;
            let (stop, body) = (stop.clone(), body.clone());
            tasks.spawn(async move {
                while !stop.load(Relaxed) {
                    p.send(TOPIC, &body).await?;
                }
                Ok(())
            });
        }
        Flood { stop, tasks }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        self.tasks.abort_all();
    }
}

/// Subscriptions the flooded client holds to [`TOPIC`]: each published
/// message is queued for it this many times, so its queue is at its limit
/// most of the time.
const FAN_IN: usize = 20;

async fn subscribe_many(sub: &mut Client) -> Result<()> {
    for i in 0..FAN_IN {
        sub.subscribe(&format!("s{i}"), TOPIC, "auto").await?;
    }
    Ok(())
}

async fn flood_broker(tweak: impl FnOnce(&mut stomp_broker::Config)) -> TestBroker {
    TestBroker::start_with(|c| {
        c.slow_consumer = SlowConsumerPolicy::Drop;
        // More than one write batch (256 KiB), so the queue is never emptied
        // in one turn; small, so the backlog ahead of a receipt is small.
        c.limits.max_pending_bytes_per_connection = 512 * 1024;
        tweak(c);
    })
    .await
}

/// Reads at full speed for half a second, and on until the broker has
/// dropped messages for this subscriber while it was reading: the flood
/// then outruns delivery. With `beat`, sends a heart-beat EOL every 100 ms
/// meanwhile.
async fn until_flooded(b: &TestBroker, sub: &mut Client, beat: bool) -> Result<()> {
    let start = Instant::now();
    let mut last_beat = Instant::now();
    let dropped = || b.core.metrics.messages_dropped.load(Relaxed);
    let mut before = None;
    loop {
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "the flood never filled the queue"
        );
        if start.elapsed() > Duration::from_millis(500) {
            let now = dropped();
            match before {
                None => before = Some(now),
                Some(b) if now > b + 1000 => return Ok(()),
                Some(_) => {}
            }
        }
        if beat && last_beat.elapsed() >= Duration::from_millis(100) {
            sub.send_raw(b"\n").await?;
            last_beat = Instant::now();
        }
        match sub.next_event(Duration::from_secs(5)).await? {
            Event::Frame(f) if f.command == Command::Message => {}
            Event::HeartBeat => {}
            other => bail!("unexpected {other:?}"),
        }
    }
}

/// Reads past MESSAGEs until a RECEIPT `id` arrives; returns how long it took.
async fn receipt_through_flood(sub: &mut Client, id: &str, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut messages = 0u64;
    loop {
        let left = within.saturating_sub(start.elapsed());
        let f = sub.recv_within(left).await.map_err(|e| {
            anyhow::anyhow!("no RECEIPT {id} within {within:?} ({messages} messages read): {e}")
        })?;
        match f.command {
            Command::Message => messages += 1,
            Command::Receipt if f.header_str("receipt-id") == Some(id) => {
                return Ok(start.elapsed())
            }
            other => bail!("unexpected {other:?} {:?}", f.headers),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooded_subscriber_gets_its_disconnect_receipt_within_a_second() -> Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let b = flood_broker(|_| {}).await;
    let mut sub = b.tcp_client().await;
    subscribe_many(&mut sub).await?;
    let _flood = Flood::start(&b, 2).await;
    until_flooded(&b, &mut sub, false).await?;
    sub.command(Command::Disconnect, &[("receipt", "bye")])
        .await?;
    let took = receipt_through_flood(&mut sub, "bye", Duration::from_secs(1)).await?;
    eprintln!("DISCONNECT receipt after {took:?} under flood");
    sub.expect_closed().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooded_subscriber_can_still_ack() -> Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let b = flood_broker(|_| {}).await;
    let mut sub = b.tcp_client().await;
    subscribe_many(&mut sub).await?;
    sub.subscribe("q", "/queue/work", "client-individual")
        .await?;
    let mut p = b.tcp_client().await;
    p.send_receipted("/queue/work", "job").await?;
    let _flood = Flood::start(&b, 2).await;
    // Find the queue message among the flood, then ACK it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ack_id = loop {
        ensure!(Instant::now() < deadline, "queue message never arrived");
        let f = sub.recv().await?;
        if f.header_str("subscription") == Some("q") {
            break f.header_str("ack").unwrap_or_default().to_owned();
        }
    };
    until_flooded(&b, &mut sub, false).await?;
    sub.command(Command::Ack, &[("id", &ack_id), ("receipt", "acked")])
        .await?;
    let took = receipt_through_flood(&mut sub, "acked", Duration::from_secs(1)).await?;
    eprintln!("ACK receipt after {took:?} under flood");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooded_subscriber_that_stops_heart_beating_is_timed_out() -> Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let b = flood_broker(|c| {
        c.heartbeat.server = "0,300".into();
        c.heartbeat.min_ms = 300;
        c.heartbeat.tolerance = 2.0;
        c.heartbeat.grace_ms = 400;
    })
    .await;
    let mut sub = Client::tcp(b.stomp).await?;
    sub.connect_with(&[("accept-version", "1.2"), ("heart-beat", "300,0")])
        .await?;
    subscribe_many(&mut sub).await?;
    let _flood = Flood::start(&b, 2).await;
    until_flooded(&b, &mut sub, true).await?;
    // The client stops heart-beating: after 300 ms × 2 + grace (capped at
    // half the interval) of silence the server must say so, flood or not.
    let start = Instant::now();
    loop {
        ensure!(
            start.elapsed() < Duration::from_secs(5),
            "silent client not timed out under flood"
        );
        match sub.next_event(Duration::from_secs(5)).await? {
            Event::Frame(f) if f.command == Command::Error => {
                ensure!(
                    f.header_str("message") == Some("heart-beat timeout"),
                    "{:?}",
                    f.headers
                );
                break;
            }
            Event::Frame(f) if f.command == Command::Message => {}
            Event::HeartBeat => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(b.core.metrics.heartbeat_timeouts.load(Relaxed) == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooded_subscriber_heart_beats_are_read() -> Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let b = flood_broker(|c| {
        c.heartbeat.server = "0,300".into();
        c.heartbeat.min_ms = 300;
        c.heartbeat.tolerance = 2.0;
        c.heartbeat.grace_ms = 400;
    })
    .await;
    let mut sub = Client::tcp(b.stomp).await?;
    sub.connect_with(&[("accept-version", "1.2"), ("heart-beat", "300,0")])
        .await?;
    subscribe_many(&mut sub).await?;
    let _flood = Flood::start(&b, 2).await;
    until_flooded(&b, &mut sub, true).await?;
    // Heart-beat every 100 ms for 2 more seconds while reading the flood:
    // the server must read them (a timeout arrives as ERROR after 1 s).
    let start = Instant::now();
    let mut last_beat = Instant::now();
    sub.send_raw(b"\n").await?;
    while start.elapsed() < Duration::from_secs(2) {
        if last_beat.elapsed() >= Duration::from_millis(100) {
            sub.send_raw(b"\n").await?;
            last_beat = Instant::now();
        }
        match sub.next_event(Duration::from_secs(1)).await? {
            Event::Frame(f) if f.command == Command::Message => {}
            Event::HeartBeat => {}
            Event::Frame(f) => bail!("unexpected {:?} {:?}", f.command, f.headers),
            Event::Closed(c) => bail!("closed ({c:?})"),
        }
    }
    ensure!(b.core.metrics.heartbeat_timeouts.load(Relaxed) == 0);
    sub.command(Command::Disconnect, &[("receipt", "bye")])
        .await?;
    receipt_through_flood(&mut sub, "bye", Duration::from_secs(1)).await?;
    Ok(())
}
