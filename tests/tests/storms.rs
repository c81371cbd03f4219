//! Client storms: bursts of connects and disconnects, and consumers that
//! vanish holding unacknowledged queue messages.

use std::{collections::HashSet, sync::atomic::Ordering::Relaxed, time::Duration};

use anyhow::{ensure, Result};
use e2e_tests::{body, wait_until, Client, TestBroker};
use stomp_codec::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connects_and_disconnects_in_a_burst() -> Result<()> {
    let b = TestBroker::start().await;
    let mut healthy = b.ws_client().await;
    healthy.subscribe("h", "/topic/storm", "auto").await?;
    let total = 10_000;
    let concurrency = 200;
    let addr = b.stomp;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        tasks.spawn(async move {
            let mut ok = 0u32;
            for i in 0..total / concurrency {
                let mut c = Client::tcp(addr).await?;
                c.connect_default().await?;
                if (w + i) % 2 == 0 {
                    // Half say goodbye properly, half just vanish.
                    c.disconnect().await?;
                }
                ok += 1;
            }
            anyhow::Ok(ok)
        });
    }
    let mut connected = 0;
    while let Some(r) = tasks.join_next().await {
        connected += r??;
    }
    ensure!(connected == total as u32);
    let m = &b.core.metrics;
    wait_until(|| m.connections.load(Relaxed) == 1).await?;
    ensure!(m.connections_total.load(Relaxed) >= total as u64 + 1);
    let mut p = b.tcp_client().await;
    p.send("/topic/storm", "still serving").await?;
    ensure!(body(&healthy.message().await?) == "still serving");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_vanishing_with_unacked_messages_lose_nothing() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.max_unacked_per_subscription = 5).await;
    let total = 300;
    let mut p = b.tcp_client().await;
    for n in 0..total {
        p.send("/queue/jobs", &n.to_string()).await?;
    }
    p.send_receipted("/queue/other", "sync").await?;
    // Consumers that take a few messages, ack some, and drop dead.
    let mut acked: HashSet<String> = HashSet::new();
    for round in 0..20 {
        let mut c = b.tcp_client().await;
        c.subscribe("q", "/queue/jobs", "client-individual").await?;
        let (mut seen, mut receipt_due) = (0, false);
        while seen < 5 || receipt_due {
            let f = c.recv().await?;
            match f.command {
                Command::Receipt => receipt_due = false,
                Command::Message => {
                    seen += 1;
                    if (round + seen) % 3 == 0 && !receipt_due {
                        let id = f.header_str("ack").unwrap_or_default().to_owned();
                        c.command(Command::Ack, &[("id", &id), ("receipt", "a")])
                            .await?;
                        receipt_due = true;
                        acked.insert(body(&f));
                    }
                }
                other => anyhow::bail!("unexpected {other:?}"),
            }
        }
        drop(c); // abrupt: no DISCONNECT, no ACK for the rest
    }
    // A last consumer drains the queue: everything not acked arrives, once.
    let mut last = b.tcp_client().await;
    last.subscribe("q", "/queue/jobs", "auto").await?;
    let mut rest: HashSet<String> = HashSet::new();
    while rest.len() + acked.len() < total {
        let m = last.recv_within(Duration::from_secs(5)).await?;
        ensure!(rest.insert(body(&m)), "duplicate {}", body(&m));
    }
    ensure!(
        rest.is_disjoint(&acked),
        "acked messages must not come back"
    );
    let all: HashSet<String> = rest.union(&acked).cloned().collect();
    ensure!(
        all == (0..total).map(|n| n.to_string()).collect::<HashSet<_>>(),
        "none lost"
    );
    ensure!(b.core.metrics.messages_redelivered.load(Relaxed) > 0);
    Ok(())
}
