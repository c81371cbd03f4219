//! Soak: a long mixed load (issue 8), run by scripts/soak.sh, which samples
//! the broker's RSS and /metrics every 10 s and judges the run. This
//! subcommand only generates the traffic, for `--duration` seconds:
//!
//! - fan-out: one publisher → `fanout_subs` subscribers on one topic at
//!   `fanout_rate` messages/s;
//! - per-order: `order_subs` subscribers on `/topic/order.<id>`, one
//!   publisher spreading `order_rate` messages/s over the ids;
//! - churn: `churn_rate` connections/s that CONNECT, DISCONNECT (receipted)
//!   and close;
//! - one slow consumer, re-created every `slow_every` seconds: it
//!   subscribes to the fan-out topic and to its own heavy stream, reads for
//!   a second, then stops reading; the broker should cut it off.
//!
//! Every loop ends at the deadline; every wait on the broker has a timeout.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Result};
use futures_util::StreamExt;
use stomp_codec::{Command, Frame};
use tokio::time::{timeout, MissedTickBehavior};

use crate::{
    net::{absorb, describe, SendTemplate, Session},
    scenarios::{join_groups, open_many, publish_open_loop, spawn_groups, Common, RunCtx},
    stats::{now_ns, Window},
};

/// Soak parameters (see the module documentation).
#[derive(Debug, Clone)]
pub struct SoakParams {
    /// Subscribers on the fan-out topic.
    pub fanout_subs: usize,
    /// Fan-out publish rate, messages/s.
    pub fanout_rate: f64,
    /// Per-order subscribers (= ids).
    pub order_subs: usize,
    /// Per-order publish rate, messages/s in total.
    pub order_rate: f64,
    /// Connects + disconnects per second.
    pub churn_rate: f64,
    /// Seconds between slow consumers.
    pub slow_every: f64,
    /// The slow consumer's own stream, messages/s (16 KiB bodies).
    pub slow_rate: f64,
    /// Body bytes of fan-out and per-order messages.
    pub body: usize,
}

const FANOUT_TOPIC: &str = "/topic/soak.fanout";
const SLOW_TOPIC: &str = "/topic/soak.slow";
const SLOW_BODY: usize = 16 * 1024;

#[derive(Default)]
struct Churn {
    ok: AtomicU64,
    errors: AtomicU64,
}

/// What happened to one slow consumer.
enum SlowOutcome {
    CutOff,
    StillConnected,
    Failed(String),
}

pub async fn soak(c: &Common, p: &SoakParams) -> Result<()> {
    let started = now_ns();
    // Connection numbers: 0..3 publishers, then subscribers, then churn and
    // slow consumers (numbers only spread source addresses).
    let fanout = open_many(c, 3, p.fanout_subs, (0, 0), Some(&|_| FANOUT_TOPIC.into())).await?;
    let first_order = 3 + p.fanout_subs;
    let orders = open_many(
        c,
        first_order,
        p.order_subs,
        (0, 0),
        Some(&|i| format!("/topic/order.{}", i - first_order)),
    )
    .await?;
    let fan_pub = c.target.open_stomp(0, (0, 0)).await?;
    let order_pub = c.target.open_stomp(1, (0, 0)).await?;
    let slow_pub = c.target.open_stomp(2, (0, 0)).await?;

    let t0 = now_ns() + 200_000_000;
    let end = t0 + (c.duration * 1e9) as u64;
    eprintln!(
        "loadgen: soak traffic for {:.0} s ({} fan-out + {} per-order subscribers ready in {:.1} s)",
        c.duration,
        p.fanout_subs,
        p.order_subs,
        (t0 - started) as f64 / 1e9
    );
    let ctx = RunCtx::new(vec![Window { start: t0, end }]);
    let mut groups = spawn_groups(fanout, c.conns_per_task, &ctx);
    groups.extend(spawn_groups(orders, c.conns_per_task, &ctx));

    let stop = ctx.stop.clone();
    let fan_task = tokio::spawn(publish_open_loop(
        fan_pub,
        Arc::new(vec![SendTemplate::new(FANOUT_TOPIC, p.body)]),
        p.fanout_rate,
        t0,
        end,
        0,
        1,
        stop.clone(),
        false,
    ));
    let order_templates: Vec<SendTemplate> = (0..p.order_subs.max(1))
        .map(|i| SendTemplate::new(&format!("/topic/order.{i}"), p.body))
        .collect();
    let order_task = tokio::spawn(publish_open_loop(
        order_pub,
        Arc::new(order_templates),
        p.order_rate,
        t0,
        end,
        0,
        1,
        stop.clone(),
        false,
    ));
    let slow_stream = tokio::spawn(publish_open_loop(
        slow_pub,
        Arc::new(vec![SendTemplate::new(SLOW_TOPIC, SLOW_BODY)]),
        p.slow_rate,
        t0,
        end,
        0,
        1,
        stop.clone(),
        false,
    ));

    let churn = Arc::new(Churn::default());
    let churn_task = tokio::spawn(churn_loop(
        c.target.clone(),
        p.churn_rate,
        end,
        churn.clone(),
    ));
    let slow_task = tokio::spawn(slow_loop(
        c.target.clone(),
        p.slow_every,
        end,
        first_order + p.order_subs,
    ));

    let fan_sent = fan_task.await??.sent;
    let order_sent = order_task.await??.sent;
    let slow_sent = slow_stream.await??.sent;
    let slow = slow_task.await?;
    churn_task.await?;
    // Let the last deliveries arrive (bounded), then stop the subscribers.
    let expected = fan_sent * p.fanout_subs as u64 + order_sent;
    let until = now_ns() + 5_000_000_000;
    while ctx.delivered.load(Ordering::Relaxed) < expected && now_ns() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctx.stop.cancel();
    let m = join_groups(groups, 1).await?;

    let cut_off = slow
        .iter()
        .filter(|o| matches!(o, SlowOutcome::CutOff))
        .count();
    let still = slow
        .iter()
        .filter(|o| matches!(o, SlowOutcome::StillConnected))
        .count();
    let slow_failed: Vec<&String> = slow
        .iter()
        .filter_map(|o| match o {
            SlowOutcome::Failed(e) => Some(e),
            _ => None,
        })
        .collect();
    let mut row = c.row("soak");
    row.put("duration_s", c.duration)
        .put("fanout_subscribers", p.fanout_subs as u64)
        .put("fanout_rate", p.fanout_rate)
        .put("fanout_published", fan_sent)
        .put("order_subscribers", p.order_subs as u64)
        .put("order_rate", p.order_rate)
        .put("order_published", order_sent)
        .put("expected_deliveries", expected)
        .put("delivered", m.total)
        .put("lost", expected.saturating_sub(m.total))
        .put("churn_rate", p.churn_rate)
        .put("churn_ok", churn.ok.load(Ordering::Relaxed))
        .put("churn_errors", churn.errors.load(Ordering::Relaxed))
        .put("slow_stream_published", slow_sent)
        .put("slow_consumers", slow.len() as u64)
        .put("slow_cut_off", cut_off as u64)
        .put("slow_still_connected", still as u64)
        .put("slow_failed", slow_failed.len() as u64)
        .put("errors", m.errors)
        .put("closed_by_broker", m.closed);
    if let Some(e) = &m.first_error {
        row.put("first_error", e.as_str());
    }
    if let Some(e) = slow_failed.first() {
        row.put("slow_first_failure", e.as_str());
    }
    row.emit(c.json.as_deref())?;
    if m.errors > 0 || m.closed > 0 {
        bail!(
            "subscribers saw {} errors, {} closed by the broker",
            m.errors,
            m.closed
        );
    }
    Ok(())
}

/// `rate` connections/s: CONNECT → CONNECTED, DISCONNECT → RECEIPT, close.
/// Each attempt is its own task with a 10 s limit, so a slow broker shows up
/// as errors rather than a lower rate.
async fn churn_loop(target: crate::net::Target, rate: f64, end: u64, churn: Arc<Churn>) {
    if rate <= 0.0 {
        return;
    }
    let target = Arc::new(target);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut idx: usize = 100_000;
    let mut tasks = tokio::task::JoinSet::new();
    while now_ns() < end {
        tick.tick().await;
        idx += 1;
        let (target, churn) = (target.clone(), churn.clone());
        tasks.spawn(async move {
            let r = timeout(Duration::from_secs(10), async {
                let mut s = target.open_stomp(idx, (0, 0)).await?;
                let f = Frame::new(Command::Disconnect).with_header("receipt", "bye");
                s.send_frame(&f).await?;
                let r = s.next_frame().await?;
                if r.command != Command::Receipt {
                    bail!("DISCONNECT answered by {}", describe(&r));
                }
                anyhow::Ok(())
            })
            .await;
            match r {
                Ok(Ok(())) => churn.ok.fetch_add(1, Ordering::Relaxed),
                Ok(Err(e)) => {
                    if churn.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("loadgen: churn: {e:#}");
                    }
                    0
                }
                Err(_) => {
                    if churn.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("loadgen: churn: timed out");
                    }
                    0
                }
            };
        });
        while tasks.try_join_next().is_some() {}
    }
    while timeout(Duration::from_secs(15), tasks.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    tasks.abort_all();
}

/// A slow consumer every `every` seconds until `end`.
async fn slow_loop(
    target: crate::net::Target,
    every: f64,
    end: u64,
    first_idx: usize,
) -> Vec<SlowOutcome> {
    let mut out = Vec::new();
    let period = (every * 1e9) as u64;
    let mut next = now_ns();
    let mut idx = first_idx;
    loop {
        // Leave the consumer connected until shortly before the next one;
        // none that would stall for less than 10 s.
        let give_up = (next + period).min(end).saturating_sub(2_000_000_000);
        if give_up < next + 11_000_000_000 {
            break;
        }
        let o = match slow_consumer(&target, idx, give_up).await {
            Ok(o) => o,
            Err(e) => SlowOutcome::Failed(format!("{e:#}")),
        };
        match &o {
            SlowOutcome::CutOff => eprintln!("loadgen: slow consumer {} cut off", out.len() + 1),
            SlowOutcome::StillConnected => {
                eprintln!("loadgen: slow consumer {} NOT cut off", out.len() + 1)
            }
            SlowOutcome::Failed(e) => eprintln!("loadgen: slow consumer {}: {e}", out.len() + 1),
        }
        out.push(o);
        idx += 1;
        next += period;
        let now = now_ns();
        if next > now {
            tokio::time::sleep(Duration::from_nanos(next - now)).await;
        }
    }
    out
}

/// One slow consumer: 4 KiB receive buffer, subscribes to the fan-out
/// topic and the heavy stream, reads for a second, stops reading until
/// `give_up`, then reads what is left to see whether the broker sent
/// ERROR and closed.
async fn slow_consumer(
    target: &crate::net::Target,
    idx: usize,
    give_up: u64,
) -> Result<SlowOutcome> {
    let mut s = Session::new(target.open_with(idx, Some(4096)).await?);
    s.handshake(target, (0, 0)).await?;
    s.subscribe("0", FANOUT_TOPIC).await?;
    s.subscribe("1", SLOW_TOPIC).await?;
    let read_until = now_ns() + 1_000_000_000;
    while let Some(left) = read_until.checked_sub(now_ns()) {
        match timeout(Duration::from_nanos(left), s.conn.next()).await {
            Err(_) => break,
            Ok(Some(Ok(_))) => {}
            Ok(_) => bail!("closed before it stopped reading"),
        }
    }
    // Stalled: not reading at all.
    let now = now_ns();
    if give_up > now {
        tokio::time::sleep(Duration::from_nanos(give_up - now)).await;
    }
    // Read what is queued: the broker should have sent ERROR and closed.
    let deadline = now_ns() + 1_500_000_000;
    loop {
        let Some(left) = deadline.checked_sub(now_ns()) else {
            return Ok(SlowOutcome::StillConnected);
        };
        match timeout(Duration::from_nanos(left), s.conn.next()).await {
            Err(_) => return Ok(SlowOutcome::StillConnected),
            Ok(Some(Ok(chunk))) => {
                let _ = absorb(&mut s.buf, &chunk, |_, _| {}, |_| {});
            }
            Ok(Some(Err(_))) | Ok(None) => {
                // Closed (with or without a readable ERROR: it may be
                // lost behind a full socket buffer when the broker resets).
                return Ok(SlowOutcome::CutOff);
            }
        }
    }
}
