//! Memory is bounded in bytes, broker-wide: transactions, queues (number
//! and buffers), unacknowledged and retained messages, retained replay all
//! draw from one budget; over it a publish is refused with an ERROR, and
//! one queue overflow policy applies whether or not consumers exist.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use anyhow::{ensure, Result};
use bytes::Bytes;
use e2e_tests::{body, wait_until, TestBroker};
use stomp_broker::{
    config::{QueueOverflow, SlowConsumerPolicy},
    metrics::Refusal,
    retain::RetainPolicy,
    router::RouteError,
};
use stomp_codec::{Command, Headers};

const KIB: usize = 1024;

fn used(b: &TestBroker) -> usize {
    b.core.metrics.memory.used()
}

#[tokio::test]
async fn transaction_over_max_transaction_bytes_is_refused_and_its_bytes_released() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.max_transaction_bytes = 64 * KIB).await;
    let mut p = b.tcp_client().await;
    p.command(Command::Begin, &[("transaction", "t1")]).await?;
    let chunk = vec![b'x'; 10 * KIB];
    // Six 10 KiB SENDs fit in 64 KiB; the seventh does not (the frame
    // count limit, 1,000, is far away).
    for _ in 0..6 {
        p.send_with("/topic/tx", &chunk, &[("transaction", "t1")])
            .await?;
    }
    p.send_with(
        "/topic/tx",
        &chunk,
        &[("transaction", "t1"), ("receipt", "r7")],
    )
    .await?;
    let e = p.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("transaction too large"));
    ensure!(e.header_str("receipt-id") == Some("r7"));
    ensure!(b.core.metrics.refused_of(Refusal::TransactionBytes) == 1);
    // The open transaction's bytes go back to the budget with the connection.
    wait_until(|| used(&b) == 0).await?;
    Ok(())
}

#[tokio::test]
async fn transaction_bytes_are_charged_until_commit() -> Result<()> {
    let b = TestBroker::start().await;
    let mut p = b.tcp_client().await;
    p.command(Command::Begin, &[("transaction", "t1")]).await?;
    p.send_with(
        "/topic/tx",
        &[b'x'; 8 * KIB],
        &[("transaction", "t1"), ("receipt", "s")],
    )
    .await?;
    p.expect_receipt("s").await?;
    // While the transaction is open its SEND is charged...
    ensure!(used(&b) >= 8 * KIB, "{}", used(&b));
    p.command(Command::Commit, &[("transaction", "t1"), ("receipt", "c")])
        .await?;
    p.expect_receipt("c").await?;
    // ...and after COMMIT nothing is (no subscriber buffered it).
    ensure!(used(&b) == 0, "{}", used(&b));
    Ok(())
}

#[tokio::test]
async fn transaction_frames_are_refused_over_the_memory_budget() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.memory_budget_bytes = 256 * KIB).await;
    let mut p = b.tcp_client().await;
    p.command(Command::Begin, &[("transaction", "t1")]).await?;
    let chunk = vec![b'x'; 32 * KIB];
    for n in 0..20 {
        p.send_with(
            "/topic/tx",
            &chunk,
            &[("transaction", "t1"), ("receipt", &n.to_string())],
        )
        .await?;
        let f = p.recv().await?;
        if f.command == Command::Error {
            ensure!(n >= 7, "refused too early: {n}");
            ensure!(f.header_str("message") == Some("broker memory budget exhausted"));
            ensure!(f.header_str("receipt-id") == Some(n.to_string().as_str()));
            p.expect_closed().await?;
            wait_until(|| used(&b) == 0).await?;
            return Ok(());
        }
        ensure!(f.command == Command::Receipt);
    }
    anyhow::bail!("640 KiB of transaction accepted under a 256 KiB budget")
}

#[tokio::test]
async fn sends_creating_queues_beyond_max_queues_are_refused() -> Result<()> {
    let b = TestBroker::start_with(|c| c.queues.max_queues = 100).await;
    let mut p = b.tcp_client().await;
    for n in 0..100 {
        p.send_receipted(&format!("/queue/new.{n}"), "x").await?;
    }
    ensure!(b.core.router.queue_count() == 100);
    // An existing queue still takes messages.
    p.send_receipted("/queue/new.7", "y").await?;
    p.send_with("/queue/new.100", b"x", &[("receipt", "r")])
        .await?;
    let e = p.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("too many queues"));
    ensure!(e.header_str("receipt-id") == Some("r"));
    // A SUBSCRIBE cannot create one either.
    let mut c = b.tcp_client().await;
    c.command(
        Command::Subscribe,
        &[("id", "1"), ("destination", "/queue/other")],
    )
    .await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("too many queues"));
    ensure!(b.core.router.queue_count() == 100);
    ensure!(b.core.metrics.refused_of(Refusal::TooManyQueues) == 2);
    Ok(())
}

#[tokio::test]
async fn empty_queues_without_consumers_are_removed() -> Result<()> {
    let b = TestBroker::start().await;
    let mut p = b.tcp_client().await;
    for n in 0..50 {
        p.send_receipted(&format!("/queue/tmp.{n}"), "x").await?;
    }
    ensure!(b.core.router.queue_count() == 50);
    ensure!(used(&b) > 0, "buffered messages are charged");
    let mut c = b.tcp_client().await;
    for n in 0..50 {
        c.subscribe(&n.to_string(), &format!("/queue/tmp.{n}"), "auto")
            .await?;
        ensure!(body(&c.message().await?) == "x");
        c.command(
            Command::Unsubscribe,
            &[("id", &n.to_string()), ("receipt", "u")],
        )
        .await?;
        c.expect_receipt("u").await?;
    }
    ensure!(b.core.router.queue_count() == 0);
    let (_, metrics) = b.http_get("/metrics").await?;
    ensure!(metrics.contains("\nstomp_queues 0\n"), "{metrics}");
    wait_until(|| used(&b) == 0).await?;
    // A queue that buffered nothing goes with its last consumer too.
    c.subscribe("q", "/queue/brief", "auto").await?;
    ensure!(b.core.router.queue_count() == 1);
    c.disconnect().await?;
    wait_until(|| b.core.router.queue_count() == 0).await?;
    Ok(())
}

#[tokio::test]
async fn unacked_client_ack_topic_messages_are_bounded_by_bytes() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.limits.max_pending_bytes_per_connection = 64 * KIB;
        c.slow_consumer = SlowConsumerPolicy::Drop;
    })
    .await;
    let mut c = b.tcp_client().await;
    c.subscribe("t", "/topic/unacked", "client").await?;
    let body = Bytes::from(vec![b'x'; 4 * KIB]);
    // One at a time, each written before the next: what bounds the
    // subscriber is what it has not acknowledged, not a queue backlog.
    let mut last = None;
    let mut received = 0;
    for _ in 0..100 {
        let dropped = b.core.metrics.messages_dropped.load(Relaxed);
        b.core
            .publish("/topic/unacked", Headers::new(), body.clone())?;
        if b.core.metrics.messages_dropped.load(Relaxed) == dropped {
            last = Some(c.message().await?);
            received += 1;
        }
    }
    // 400 KiB published, nothing acknowledged: only about 64 KiB may be held
    // for this subscriber (under 1,000 messages, the count limit).
    ensure!((10..=17).contains(&received), "received {received}");
    ensure!(used(&b) <= 64 * KIB + 5 * KIB, "used {}", used(&b));
    c.expect_silence(Duration::from_millis(100)).await?;
    // Acknowledging frees the connection's budget: messages flow again.
    let id = last.and_then(|m| m.header_str("ack").map(str::to_owned));
    c.command(
        Command::Ack,
        &[("id", id.as_deref().unwrap_or("")), ("receipt", "a")],
    )
    .await?;
    c.expect_receipt("a").await?;
    ensure!(used(&b) == 0, "used {}", used(&b));
    b.core.publish("/topic/unacked", Headers::new(), body)?;
    c.message().await?;
    Ok(())
}

/// Retains `n` destinations `/topic/replay.<i>` (each published twice: an
/// old value, then the latest) of about `size` bytes each, last value only.
fn retain_many(b: &TestBroker, n: usize, size: usize) -> Result<()> {
    let policy = Some(RetainPolicy {
        last_n: 1,
        ttl: Duration::from_secs(60),
    });
    for value in ["old", "new"] {
        for i in 0..n {
            b.core.publish_retained(
                &format!("/topic/replay.{i}"),
                Headers::new(),
                Bytes::from(format!("{i:04} {value} {}", "x".repeat(size))),
                policy,
            )?;
        }
    }
    Ok(())
}

/// Bytes accounted to connections (the broker-wide account minus the
/// retained store).
fn conn_bytes(b: &TestBroker) -> usize {
    used(b).saturating_sub(b.core.metrics.retained_bytes.load(Relaxed).max(0) as usize)
}

#[tokio::test]
async fn wildcard_replay_is_paced_and_delivers_everything_to_a_slow_reader() -> Result<()> {
    const BUDGET: usize = 32 * KIB;
    const N: usize = 160; // 160 x 4 KiB: 20 times the budget
    let b = TestBroker::start_with(|c| {
        c.limits.max_pending_bytes_per_connection = BUDGET;
        c.slow_consumer = SlowConsumerPolicy::Disconnect;
    })
    .await;
    retain_many(&b, N, 4 * KIB)?;
    let mut c = b.tcp_client().await;
    c.subscribe("w", "/topic/replay.*", "auto").await?;
    // Not reading for a while: the broker writes a slice at a time and
    // never accounts more than the budget to the connection.
    let until = tokio::time::Instant::now() + Duration::from_millis(300);
    while tokio::time::Instant::now() < until {
        ensure!(conn_bytes(&b) <= BUDGET, "pending {}", conn_bytes(&b));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < N {
        let m = c.message().await?;
        ensure!(m.header_str("replayed") == Some("true"), "{:?}", m.headers);
        let text = body(&m);
        ensure!(
            text[5..].starts_with("new "),
            "not the latest value: {}",
            &text[..10]
        );
        ensure!(seen.insert(text[..4].to_owned()), "twice: {}", &text[..4]);
        ensure!(conn_bytes(&b) <= BUDGET, "pending {}", conn_bytes(&b));
    }
    c.expect_silence(Duration::from_millis(100)).await?;
    ensure!(b.core.metrics.replay_skipped.load(Relaxed) == 0);
    ensure!(b.core.metrics.slow_consumer_disconnects.load(Relaxed) == 0);
    ensure!(b.core.metrics.replay_pending.load(Relaxed) == 0);
    // Not cut off: the connection still answers.
    c.send_receipted("/topic/after", "x").await?;
    Ok(())
}

/// The frames that arrive until 200 ms pass without one.
async fn drain(c: &mut e2e_tests::Client) -> Result<Vec<stomp_codec::Frame>> {
    let mut slice = Vec::new();
    loop {
        match c.recv_within(Duration::from_millis(200)).await {
            Ok(m) => slice.push(m),
            Err(e) if e.to_string().contains("timed out") => return Ok(slice),
            Err(e) => return Err(e),
        }
    }
}

#[tokio::test]
async fn replay_waits_for_acks_within_the_budget_and_never_follows_a_live_value() -> Result<()> {
    const BUDGET: usize = 32 * KIB;
    const N: usize = 40;
    let b = TestBroker::start_with(|c| c.limits.max_pending_bytes_per_connection = BUDGET).await;
    retain_many(&b, N, 4 * KIB)?;
    let mut c = b.tcp_client().await;
    // Client acknowledgement: unacknowledged messages stay accounted, so
    // the replay stops at the budget until the client ACKs.
    c.subscribe("w", "/topic/replay.*", "client").await?;
    let mut got: Vec<String> = Vec::new();
    let mut last_ack = None;
    let first = drain(&mut c).await?;
    // Half the budget is the replay's share: a few 4 KiB messages.
    ensure!((1..=5).contains(&first.len()), "{}", first.len());
    ensure!(conn_bytes(&b) <= BUDGET, "pending {}", conn_bytes(&b));
    ensure!(b.core.metrics.replay_pending.load(Relaxed) as usize == N - first.len());
    // A newer live value for the destination replayed last.
    let last = format!("/topic/replay.{}", N - 1);
    b.core
        .publish(&last, Headers::new(), Bytes::from_static(b"live"))?;
    let mut frames = first;
    loop {
        for m in &frames {
            let text = body(m);
            if text == "live" {
                ensure!(m.header_str("replayed").is_none());
            } else {
                ensure!(m.header_str("replayed") == Some("true"));
            }
            got.push(text.get(..4).unwrap_or(&text).to_owned());
            last_ack = m.header_str("ack").map(str::to_owned);
        }
        if frames.is_empty() {
            break;
        }
        let id = last_ack.clone().unwrap_or_default();
        c.command(Command::Ack, &[("id", &id)]).await?;
        frames = drain(&mut c).await?;
    }
    let live_at = got.iter().position(|t| t == "live");
    ensure!(live_at.is_some(), "live message missing: {got:?}");
    let stale = format!("{:04}", N - 1);
    // The older retained value of that destination never follows it (it
    // is dropped from the replay).
    ensure!(!got.contains(&stale), "{got:?}");
    ensure!(got.len() == N, "{} {got:?}", got.len());
    ensure!(b.core.metrics.replay_skipped.load(Relaxed) == 0);
    ensure!(b.core.metrics.replay_pending.load(Relaxed) == 0);
    Ok(())
}

#[tokio::test]
async fn over_the_memory_budget_sends_get_error_and_the_broker_keeps_serving() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.memory_budget_bytes = 512 * KIB).await;
    let (_, metrics) = b.http_get("/metrics").await?;
    ensure!(
        metrics.contains("\nstomp_memory_budget_bytes 524288\n"),
        "{metrics}"
    );
    // A queue without consumers buffers until the budget is spent.
    let mut p = b.tcp_client().await;
    let chunk = vec![b'x'; 16 * KIB];
    let mut accepted = 0;
    let err = loop {
        p.send_with(
            "/queue/fill",
            &chunk,
            &[("receipt", &format!("r{accepted}"))],
        )
        .await?;
        let f = p.recv().await?;
        if f.command != Command::Receipt {
            break f;
        }
        accepted += 1;
        ensure!(accepted < 100, "budget never enforced");
    };
    ensure!(err.command == Command::Error);
    ensure!(err.header_str("message") == Some("broker memory budget exhausted"));
    ensure!(err.header_str("receipt-id") == Some(format!("r{accepted}").as_str()));
    p.expect_closed().await?;
    ensure!(used(&b) <= 512 * KIB + 17 * KIB, "used {}", used(&b));
    ensure!(b.core.metrics.refused_of(Refusal::MemoryBudget) == 1);
    // In-process publishes (the Kafka bridge) get a retryable error.
    let r = b
        .core
        .publish("/topic/any", Headers::new(), Bytes::from(chunk));
    ensure!(r == Err(RouteError::OverBudget) && RouteError::OverBudget.is_retryable());
    // Others are still served: a consumer drains the queue, after which
    // publishing works again.
    let mut c = b.tcp_client().await;
    c.subscribe("q", "/queue/fill", "auto").await?;
    for _ in 0..accepted {
        c.message().await?;
    }
    wait_until(|| used(&b) == 0).await?;
    let mut p2 = b.tcp_client().await;
    p2.send_receipted("/queue/fill", "again").await?;
    ensure!(body(&c.message().await?) == "again");
    Ok(())
}

#[tokio::test]
async fn reject_publish_with_consumers_at_prefetch_errors_the_sender() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.queues.max_messages = 2;
        c.queues.overflow = QueueOverflow::RejectPublish;
        c.limits.max_unacked_per_subscription = 1;
    })
    .await;
    let mut c = b.tcp_client().await;
    c.subscribe("q", "/queue/busy", "client").await?;
    let mut p = b.tcp_client().await;
    // One to the consumer (now at its prefetch limit), two buffered...
    for n in 0..3 {
        p.send_receipted("/queue/busy", &n.to_string()).await?;
    }
    // ...and the fourth finds the buffer full: ERROR, not a silent drop.
    p.send_with("/queue/busy", b"3", &[("receipt", "r3")])
        .await?;
    let e = p.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("queue full"));
    ensure!(e.header_str("receipt-id") == Some("r3"));
    ensure!(b.core.metrics.messages_dropped.load(Relaxed) == 0);
    ensure!(b.core.metrics.refused_of(Refusal::QueueFull) == 1);
    Ok(())
}

#[tokio::test]
async fn drop_oldest_with_consumers_at_prefetch_drops_and_counts() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.queues.max_messages = 2;
        c.limits.max_unacked_per_subscription = 1;
    })
    .await;
    let mut c = b.tcp_client().await;
    c.subscribe("q", "/queue/busy", "client-individual").await?;
    let mut p = b.tcp_client().await;
    for n in 0..5 {
        p.send_receipted("/queue/busy", &n.to_string()).await?;
    }
    // 0 delivered; 1..4 buffered in a buffer of 2: 1 and 2 dropped, counted.
    ensure!(b.core.metrics.messages_dropped.load(Relaxed) == 2);
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = c.message().await?;
        got.push(body(&m));
        let id = m.header_str("ack").unwrap_or("").to_owned();
        c.command(Command::Ack, &[("id", &id)]).await?;
    }
    ensure!(got == ["0", "3", "4"], "{got:?}");
    Ok(())
}

#[tokio::test]
async fn the_account_returns_to_zero_after_acks_nacks_and_disconnects() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.max_unacked_per_subscription = 3).await;
    let mut c1 = b.tcp_client().await;
    c1.subscribe("q", "/queue/acct", "client-individual")
        .await?;
    let mut t = b.tcp_client().await;
    t.subscribe("t", "/topic/acct", "client").await?;
    let mut p = b.tcp_client().await;
    for n in 0..10 {
        p.send_receipted("/queue/acct", &n.to_string()).await?;
        p.send_receipted("/topic/acct", &n.to_string()).await?;
    }
    let m = c1.message().await?;
    let id = m.header_str("ack").unwrap_or("").to_owned();
    c1.command(Command::Nack, &[("id", &id), ("receipt", "n")])
        .await?;
    while c1.recv().await?.command != Command::Receipt {}
    ensure!(used(&b) > 0);
    // Both leave with messages unacknowledged and queued.
    drop(c1);
    drop(t);
    let mut c2 = b.tcp_client().await;
    c2.subscribe("q", "/queue/acct", "auto").await?;
    for _ in 0..10 {
        c2.message().await?;
    }
    wait_until(|| used(&b) == 0).await?;
    Ok(())
}
