//! The scenarios (S1–S5; S6 is in s6.rs). Each prints one result table and
//! appends it as a JSON line to `--json` for scripts/bench-compare.sh.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt};
use hdrhistogram::Histogram;
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    net::{absorb, body_stamp, describe, Conn, SendTemplate, Session, Target, Transport},
    stats::{
        instant_at, new_hist, now_ns, percentiles, round, snapshot, Measured, Row, Snapshot, Window,
    },
};

/// Settings every scenario shares.
pub struct Common {
    /// Where to connect.
    pub target: Target,
    /// Broker process id for CPU/RSS (`--broker-pid`).
    pub broker_pid: Option<u32>,
    /// Append results here as JSON lines.
    pub json: Option<PathBuf>,
    /// Free-form label (e.g. "stomp-broker", "rabbitmq") put in the row.
    pub label: String,
    /// Connections opened concurrently during setup.
    pub connect_concurrency: usize,
    /// Subscriber connections driven by one task.
    pub conns_per_task: usize,
    /// Seconds of warm-up before measuring.
    pub warmup: f64,
    /// Seconds measured.
    pub duration: f64,
    /// Free-form broker variant put in the row (e.g. `ws-frame-per-message`).
    pub variant: Option<String>,
}

impl Common {
    pub(crate) fn row(&self, scenario: &str) -> Row {
        let mut r = Row::default();
        r.put("scenario", scenario)
            .put("label", self.label.as_str())
            .put(
                "transport",
                format!("{:?}", self.target.transport).to_lowercase(),
            );
        if let Some(v) = &self.variant {
            r.put("variant", v.as_str());
        }
        r
    }

    fn secs(&self) -> u64 {
        (self.duration * 1e9) as u64
    }

    fn warm(&self) -> u64 {
        (self.warmup * 1e9) as u64
    }
}

/// State shared by subscriber groups and the publisher of one run.
pub struct RunCtx {
    windows: Vec<Window>,
    pub(crate) stop: CancellationToken,
    pub(crate) delivered: AtomicU64,
    waiting: AtomicBool,
    notify: Notify,
}

impl RunCtx {
    pub(crate) fn new(windows: Vec<Window>) -> Arc<RunCtx> {
        Arc::new(RunCtx {
            windows,
            stop: CancellationToken::new(),
            delivered: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            notify: Notify::new(),
        })
    }

    #[inline]
    fn add_delivered(&self, n: u64) {
        if n > 0 {
            self.delivered.fetch_add(n, Ordering::Relaxed);
            if self.waiting.load(Ordering::Relaxed) {
                self.notify.notify_one();
            }
        }
    }
}

/// Opens `n` STOMP sessions (connection numbers `first..first + n`) with at
/// most `concurrency` handshakes in flight, subscribing each to
/// `dest(i)` when given.
pub(crate) async fn open_many(
    c: &Common,
    first: usize,
    n: usize,
    heart_beat: (u32, u32),
    dest: Option<&(dyn Fn(usize) -> String + Sync)>,
) -> Result<Vec<Session>> {
    open_many_on(c, &c.target, first, n, heart_beat, dest).await
}

/// [`open_many`] against `target` instead of `c.target`.
pub(crate) async fn open_many_on(
    c: &Common,
    target: &Target,
    first: usize,
    n: usize,
    heart_beat: (u32, u32),
    dest: Option<&(dyn Fn(usize) -> String + Sync)>,
) -> Result<Vec<Session>> {
    let started = now_ns();
    let mut out = Vec::with_capacity(n);
    let mut s = stream::iter(first..first + n)
        .map(|i| async move {
            let mut s = target.open_stomp(i, heart_beat).await?;
            if let Some(d) = dest {
                s.subscribe("0", &d(i)).await?;
            }
            anyhow::Ok(s)
        })
        .buffer_unordered(c.connect_concurrency.max(1));
    while let Some(r) = s.next().await {
        out.push(r.with_context(|| format!("after {} of {n} connections", out.len()))?);
        if out.len() % 5000 == 0 {
            eprintln!("loadgen: {} / {n} connected", out.len());
        }
    }
    eprintln!(
        "loadgen: {n} connections ready in {:.1} s",
        (now_ns() - started) as f64 / 1e9
    );
    Ok(out)
}

/// Drives many subscriber connections in one task: reads whatever arrives,
/// scans frames, records latency from the body's stamp.
async fn subscriber_group(sessions: Vec<Session>, ctx: Arc<RunCtx>) -> Measured {
    let mut m = Measured::new(ctx.windows.len());
    let mut bufs: Vec<BytesMut> = Vec::with_capacity(sessions.len());
    let mut conns: Vec<Conn> = Vec::with_capacity(sessions.len());
    for s in sessions {
        bufs.push(s.buf);
        conns.push(s.conn);
    }
    let mut sel = stream::select_all(conns.into_iter().enumerate().map(|(i, c)| {
        c.map(move |r| (i, Some(r)))
            .chain(stream::once(std::future::ready((i, None))))
    }));
    let stopped = ctx.stop.cancelled();
    tokio::pin!(stopped);
    let mut others = Vec::new();
    loop {
        let item = tokio::select! {
            biased;
            _ = &mut stopped => break,
            item = sel.next() => item,
        };
        let Some((i, r)) = item else { break };
        match r {
            Some(Ok(chunk)) => {
                let now = now_ns();
                let mut n = 0;
                m.reads += 1;
                let windows = &ctx.windows;
                let res = absorb(
                    &mut bufs[i],
                    &chunk,
                    |f, body| {
                        // Stamp 0 marks a record that is not measured
                        // (S6's probes, possibly replayed as retained).
                        if let Some(ts) = body_stamp(f, body).filter(|&ts| ts != 0) {
                            m.record(windows, ts, now);
                            n += 1;
                        }
                    },
                    |f| others.push(f),
                );
                ctx.add_delivered(n);
                if let Err(e) = res {
                    m.error(format!("bad frame: {e:#}"));
                }
                for f in others.drain(..) {
                    match f {
                        Some(f) if f.command == stomp_codec::Command::Error => {
                            m.error(format!("ERROR frame: {}", describe(&f)))
                        }
                        Some(_) => {}
                        None => m.error("undecodable frame".into()),
                    }
                }
            }
            Some(Err(e)) => m.error(format!("read: {e:#}")),
            None => m.closed += 1,
        }
    }
    m
}

pub(crate) fn spawn_groups(
    sessions: Vec<Session>,
    per_task: usize,
    ctx: &Arc<RunCtx>,
) -> Vec<JoinHandle<Measured>> {
    let mut handles = Vec::new();
    let mut it = sessions.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<Session> = it.by_ref().take(per_task.max(1)).collect();
        handles.push(tokio::spawn(subscriber_group(chunk, ctx.clone())));
    }
    handles
}

pub(crate) async fn join_groups(
    handles: Vec<JoinHandle<Measured>>,
    windows: usize,
) -> Result<Measured> {
    let mut all = Measured::new(windows);
    for h in handles {
        all.merge(&h.await?);
    }
    Ok(all)
}

/// What a publisher did.
pub(crate) struct Published {
    pub(crate) sent: u64,
    /// Actual send time minus scheduled send time (open loop only): the
    /// generator's own lateness, included in the reported latencies.
    pub(crate) lag: Histogram<u64>,
}

/// Open-loop publisher: message `k` (k = first, first + step, ...) is due
/// at `start + k / rate` and carries that scheduled time as its stamp, so a
/// stalled broker (or generator) shows up in the latency instead of
/// silently lowering the rate (no coordinated omission). `precise` (only on
/// a thread of its own) sleeps with the OS instead of tokio's timer.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn publish_open_loop(
    mut s: Session,
    templates: Arc<Vec<SendTemplate>>,
    rate: f64,
    start: u64,
    end: u64,
    first: u64,
    step: u64,
    stop: CancellationToken,
    precise: bool,
) -> Result<Published> {
    let period = 1e9 / rate;
    let mut k = first;
    let mut sent = 0;
    let mut lag = new_hist();
    let due = |k: u64| start + (k as f64 * period) as u64;
    loop {
        let t = due(k);
        if t >= end || stop.is_cancelled() {
            break;
        }
        let now = now_ns();
        if t > now {
            if precise {
                // Alone on its thread (see `publisher_thread`): a blocking
                // sleep wakes within tens of µs, tokio's timer wheel only
                // at millisecond ticks. At least 200 µs, so high rates go
                // out in small bursts instead of one wake-up per message
                // (what that delays is measured: stamps are scheduled times).
                std::thread::sleep(Duration::from_nanos((t - now).max(200_000)));
            } else {
                tokio::time::sleep_until(instant_at(t).into()).await;
            }
            continue;
        }
        let mut batch = 0;
        while batch < 1024 {
            let t = due(k);
            if t > now || t >= end {
                break;
            }
            let tpl = &templates[(k as usize) % templates.len()];
            s.conn.feed(tpl.frame(t)).await?;
            let _ = lag.record(now.saturating_sub(t).max(1));
            k += step;
            batch += 1;
        }
        s.conn.flush().await?;
        sent += batch;
    }
    Ok(Published { sent, lag })
}

/// Runs an open-loop publisher on an OS thread of its own, with its own
/// single-threaded runtime and connection (index `idx`), so that thousands
/// of subscriber connections being read on the main runtime cannot delay
/// its schedule: the generator's lateness (`pub_lag_*`) would otherwise be
/// part of every latency it reports. Resolves when the publisher is done.
#[allow(clippy::too_many_arguments)]
pub(crate) fn publisher_thread(
    target: Target,
    idx: usize,
    templates: Arc<Vec<SendTemplate>>,
    rate: f64,
    start: u64,
    end: u64,
    first: u64,
    step: u64,
    stop: CancellationToken,
) -> tokio::sync::oneshot::Receiver<Result<Published>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let run = async {
            let s = target.open_stomp(idx, (0, 0)).await?;
            publish_open_loop(s, templates, rate, start, end, first, step, stop, true).await
        };
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run));
        let _ = tx.send(result);
    });
    rx
}

/// Closed-loop, maximum-throughput publisher: keeps at most `window`
/// messages not yet delivered to all `fanout` subscribers, so subscribers
/// are never pushed past the broker's slow-consumer budget. Stamps are
/// actual send times.
async fn publish_windowed(
    mut s: Session,
    tpl: SendTemplate,
    end: u64,
    window: u64,
    fanout: u64,
    ctx: Arc<RunCtx>,
) -> Result<Published> {
    let mut sent: u64 = 0;
    loop {
        if now_ns() >= end || ctx.stop.is_cancelled() {
            break;
        }
        let delivered = ctx.delivered.load(Ordering::Relaxed);
        let inflight = (sent * fanout).saturating_sub(delivered);
        let room = (window * fanout).saturating_sub(inflight) / fanout;
        if room == 0 {
            ctx.waiting.store(true, Ordering::Relaxed);
            let delivered2 = ctx.delivered.load(Ordering::Relaxed);
            if delivered2 == delivered {
                let _ =
                    tokio::time::timeout(Duration::from_millis(10), ctx.notify.notified()).await;
            }
            ctx.waiting.store(false, Ordering::Relaxed);
            continue;
        }
        let batch = room.min(256);
        for _ in 0..batch {
            s.conn.feed(tpl.frame(now_ns())).await?;
        }
        s.conn.flush().await?;
        sent += batch;
    }
    Ok(Published {
        sent,
        lag: new_hist(),
    })
}

/// Samples broker and generator at the window edges (memory over time,
/// sampled every second, is [`spawn_series`]'s job).
pub(crate) fn spawn_sampler(
    pid: Option<u32>,
    windows: Vec<Window>,
) -> JoinHandle<Vec<(Snapshot, Snapshot)>> {
    tokio::spawn(async move {
        let mut edges = Vec::new();
        for w in &windows {
            tokio::time::sleep_until(instant_at(w.start).into()).await;
            let a = snapshot(pid);
            tokio::time::sleep_until(instant_at(w.end).into()).await;
            edges.push((a, snapshot(pid)));
        }
        edges
    })
}

/// Samples the broker every second until `until` (memory over time).
fn spawn_series(pid: Option<u32>, until: u64) -> JoinHandle<Vec<Snapshot>> {
    tokio::spawn(async move {
        let mut v = Vec::new();
        while now_ns() < until {
            v.push(snapshot(pid));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        v
    })
}

/// Waits until deliveries stop arriving (at most `max`), then stops the
/// subscribers.
pub(crate) async fn drain(ctx: &RunCtx, expected: Option<u64>, max: Duration) {
    wait_delivered(ctx, expected, max).await;
    ctx.stop.cancel();
}

/// Waits until `expected` deliveries arrived or they stop arriving (at
/// most `max`).
async fn wait_delivered(ctx: &RunCtx, expected: Option<u64>, max: Duration) {
    let until = now_ns() + max.as_nanos() as u64;
    let mut last = ctx.delivered.load(Ordering::Relaxed);
    let mut quiet = 0;
    while now_ns() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let d = ctx.delivered.load(Ordering::Relaxed);
        if expected.is_some_and(|e| d >= e) {
            break;
        }
        quiet = if d == last { quiet + 1 } else { 0 };
        if quiet >= 10 {
            break;
        }
        last = d;
    }
}

pub(crate) fn put_errors(row: &mut Row, m: &Measured) {
    row.put("errors", m.errors)
        .put("closed_by_broker", m.closed);
    if let Some(e) = &m.first_error {
        row.put("first_error", e.as_str());
    }
}

// ------------------------------------------------------------------ S1

/// S1 fan-out: one publisher, `subscribers` subscribers on one topic.
/// `bare`: the target is `bare-fanout` (no STOMP; the baseline).
#[allow(clippy::too_many_arguments)]
pub async fn s1(
    c: &Common,
    subscribers: usize,
    body: usize,
    rate: Option<f64>,
    window: u64,
    topic: &str,
    bare: bool,
    hold: f64,
) -> Result<()> {
    fanout(
        c,
        "s1",
        std::slice::from_ref(&c.target),
        subscribers,
        body,
        rate,
        window,
        topic,
        bare,
        hold,
    )
    .await
}

/// [`open_many_on`] for a bare fan-out server: WebSocket connections
/// without CONNECT or SUBSCRIBE, each ready once the server registered it.
async fn open_many_bare(
    c: &Common,
    target: &Target,
    first: usize,
    n: usize,
) -> Result<Vec<Session>> {
    let started = now_ns();
    let mut out = Vec::with_capacity(n);
    let mut s = stream::iter(first..first + n)
        .map(|i| target.open_bare(i))
        .buffer_unordered(c.connect_concurrency.max(1));
    while let Some(r) = s.next().await {
        out.push(r.with_context(|| format!("after {} of {n} connections", out.len()))?);
    }
    eprintln!(
        "loadgen: {n} connections ready in {:.1} s",
        (now_ns() - started) as f64 / 1e9
    );
    Ok(out)
}

/// One publisher on `c.target`, `subscribers` subscribers on one topic
/// spread round-robin over `sub_targets` (S1: the same broker; S7: other
/// cluster nodes). `bare`: the targets are `bare-fanout` servers; the
/// publisher sends the MESSAGE frames subscribers are to receive. `hold`:
/// seconds to keep every connection open after the last delivery (the
/// server is idle then: scripts/bench-callgrind-s1.sh stops measuring).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fanout(
    c: &Common,
    scenario: &str,
    sub_targets: &[Target],
    subscribers: usize,
    body: usize,
    rate: Option<f64>,
    window: u64,
    topic: &str,
    bare: bool,
    hold: f64,
) -> Result<()> {
    let mut subs = Vec::with_capacity(subscribers);
    let parts = sub_targets.len().max(1);
    for (k, t) in sub_targets.iter().enumerate() {
        let n = subscribers / parts + usize::from(k < subscribers % parts);
        let first = 1 + subs.len();
        if bare {
            subs.extend(open_many_bare(c, t, first, n).await?);
        } else {
            subs.extend(open_many_on(c, t, first, n, (0, 0), Some(&|_| topic.to_string())).await?);
        }
    }
    let publisher = if bare {
        c.target.open_bare(0).await?
    } else {
        c.target.open_stomp(0, (0, 0)).await?
    };
    let t0 = now_ns() + 200_000_000;
    let w = Window {
        start: t0 + c.warm(),
        end: t0 + c.warm() + c.secs(),
    };
    let ctx = RunCtx::new(vec![w]);
    let groups = spawn_groups(subs, c.conns_per_task, &ctx);
    let sampler = spawn_sampler(c.broker_pid, vec![w]);
    let tpl = if bare {
        SendTemplate::bare_message(topic, body)
    } else {
        SendTemplate::new(topic, body)
    };
    let published = match rate {
        Some(r) => {
            publish_open_loop(
                publisher,
                Arc::new(vec![tpl]),
                r,
                t0,
                w.end,
                0,
                1,
                ctx.stop.clone(),
                false,
            )
            .await?
        }
        None => {
            tokio::time::sleep_until(instant_at(t0).into()).await;
            publish_windowed(
                publisher,
                tpl,
                w.end,
                window,
                subscribers as u64,
                ctx.clone(),
            )
            .await?
        }
    };
    let expected = published.sent * subscribers as u64;
    wait_delivered(&ctx, Some(expected), Duration::from_secs(10)).await;
    if hold > 0.0 {
        eprintln!("loadgen: all delivered; holding the connections for {hold} s");
        tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    }
    ctx.stop.cancel();
    let m = join_groups(groups, 1).await?;
    let edges = sampler.await?;
    let (a, b) = edges[0];
    let mut row = c.row(scenario);
    if scenario != "s1" {
        row.put("sub_nodes", parts as u64);
    }
    if bare {
        row.put("server", "bare-fanout");
    }
    row.put("mode", if rate.is_some() { "open-loop" } else { "max" })
        .put("connections", subscribers as u64 + 1)
        .put("subscribers", subscribers as u64)
        .put("body_bytes", body as u64);
    if let Some(r) = rate {
        row.put("publish_rate", r);
    } else {
        row.put("window_msgs", window);
    }
    row.put("published", published.sent)
        .put("delivered", m.total)
        .put("lost", expected.saturating_sub(m.total))
        .put("deliveries_per_s", round(m.count[0] as f64 / c.duration));
    if c.target.transport == Transport::Ws {
        // RabbitMQ sends one MESSAGE per WebSocket message; stomp-broker
        // packs what one write holds unless --ws-frame-per-message.
        row.put(
            "frames_per_ws_message",
            crate::stats::round3(m.total as f64 / m.reads.max(1) as f64),
        );
    }
    row.latency("", &m.hist[0]);
    if rate.is_some() {
        row.latency("pub_lag_", &published.lag);
    }
    row.resources(&a, &b, m.count[0], subscribers as u64 + 1, None);
    put_errors(&mut row, &m);
    row.emit(c.json.as_deref())
}

// ------------------------------------------------------------------ S2

/// S2 per-order 1:1: `subscribers` subscribers each on
/// `/topic/<prefix>.<id>`, open-loop publishing at `rate` spread over ids.
pub async fn s2(
    c: &Common,
    subscribers: usize,
    rate: f64,
    body: usize,
    publishers: usize,
    prefix: &str,
    status_subscriber: bool,
) -> Result<()> {
    let dest = |i: usize| format!("/topic/{prefix}.{}", i - publishers);
    let subs = open_many(c, publishers, subscribers, (0, 0), Some(&dest)).await?;
    // The live status page: a `/topic/broker.stats` subscriber open for the
    // whole run, as a browser showing the page would be.
    let status = if status_subscriber {
        let mut s = c
            .target
            .open_stomp(publishers + subscribers, (0, 0))
            .await?;
        s.subscribe("stats", STATS_TOPIC).await?;
        Some(s)
    } else {
        None
    };
    // Spread ids with a stride coprime to the id count so consecutive
    // messages hit different subscribers (and different broker shards).
    let n = subscribers;
    let stride = (1..n)
        .rev()
        .find(|s| gcd(*s, n) == 1 && *s < n / 2 + 1)
        .unwrap_or(1);
    let templates: Arc<Vec<SendTemplate>> = Arc::new(
        (0..n)
            .map(|k| SendTemplate::new(&format!("/topic/{prefix}.{}", (k * stride) % n), body))
            .collect(),
    );
    let t0 = now_ns() + 200_000_000;
    let w = Window {
        start: t0 + c.warm(),
        end: t0 + c.warm() + c.secs(),
    };
    let ctx = RunCtx::new(vec![w]);
    let groups = spawn_groups(subs, c.conns_per_task, &ctx);
    let status = status.map(|s| tokio::spawn(count_messages(s, ctx.stop.clone())));
    let sampler = spawn_sampler(c.broker_pid, vec![w]);
    let mut tasks = Vec::new();
    for p in 0..publishers {
        tasks.push(publisher_thread(
            c.target.clone(),
            p,
            templates.clone(),
            rate,
            t0,
            w.end,
            p as u64,
            publishers as u64,
            ctx.stop.clone(),
        ));
    }
    let mut sent = 0;
    let mut lag = new_hist();
    for t in tasks {
        let p = t.await??;
        sent += p.sent;
        let _ = lag.add(&p.lag);
    }
    drain(&ctx, Some(sent), Duration::from_secs(10)).await;
    let m = join_groups(groups, 1).await?;
    let edges = sampler.await?;
    let (a, b) = edges[0];
    let mut row = c.row("s2");
    row.put("connections", (subscribers + publishers) as u64)
        .put("subscribers", subscribers as u64)
        .put("publishers", publishers as u64);
    if let Some(t) = status {
        row.put("status_subscriber", true)
            .put("status_messages", t.await?);
    }
    row.put("publish_rate", rate)
        .put("body_bytes", body as u64)
        .put("published", sent)
        .put("delivered", m.total)
        .put("lost", sent.saturating_sub(m.total))
        .put("deliveries_per_s", round(m.count[0] as f64 / c.duration))
        .latency("", &m.hist[0])
        .latency("pub_lag_", &lag)
        .resources(&a, &b, m.count[0], (subscribers + publishers) as u64, None);
    put_errors(&mut row, &m);
    row.emit(c.json.as_deref())
}

/// Where the broker publishes its statistics (the status page's feed).
const STATS_TOPIC: &str = "/topic/broker.stats";

/// Reads a session until `stop`, counting MESSAGE frames (not measured:
/// their bodies carry no stamp).
async fn count_messages(mut s: Session, stop: CancellationToken) -> u64 {
    let mut n = 0u64;
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => break,
            c = s.conn.next() => c,
        };
        match chunk {
            Some(Ok(chunk)) => {
                let _ = absorb(&mut s.buf, &chunk, |_, _| n += 1, |_| {});
            }
            _ => break,
        }
    }
    n
}

pub(crate) fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

// ------------------------------------------------------------------ S3

/// S3 idle: `n` connections that only exchange heart-beats; broker RSS per
/// connection and idle CPU.
pub async fn s3(c: &Common, n: usize, heart_beat_ms: u32, settle: f64) -> Result<()> {
    let base = snapshot(c.broker_pid);
    let sessions = open_many(c, 0, n, (heart_beat_ms, heart_beat_ms), None).await?;
    let stop = CancellationToken::new();
    let beats = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
    for s in sessions {
        let stop = stop.clone();
        let beats = beats.clone();
        let closed = closed.clone();
        tasks.push(tokio::spawn(idle_conn(
            s,
            heart_beat_ms,
            stop,
            beats,
            closed,
        )));
    }
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let a = snapshot(c.broker_pid);
    tokio::time::sleep(Duration::from_secs_f64(c.duration)).await;
    let b = snapshot(c.broker_pid);
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let mut row = c.row("s3");
    row.put("connections", n as u64)
        .put("heart_beat_ms", heart_beat_ms)
        .put("idle_s", c.duration)
        .put("server_heart_beats", beats.load(Ordering::Relaxed))
        .put("closed_by_broker", closed.load(Ordering::Relaxed));
    if let (Some(x), Some(y)) = (base.broker, b.broker) {
        row.put("broker_rss_base_mib", round(x.rss_kib as f64 / 1024.0))
            .put("broker_rss_mib", round(y.rss_kib as f64 / 1024.0));
    }
    row.resources(&a, &b, 0, n as u64, base.broker.map(|x| x.rss_kib));
    row.emit(c.json.as_deref())
}

async fn idle_conn(
    mut s: Session,
    hb_ms: u32,
    stop: CancellationToken,
    beats: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(u64::from(hb_ms.max(100))));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick(), if hb_ms > 0 => {
                if s.conn.feed(Bytes::from_static(b"\n")).await.is_err() || s.conn.flush().await.is_err() {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            r = s.conn.next() => match r {
                Some(Ok(_)) => { beats.fetch_add(1, Ordering::Relaxed); }
                _ => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        }
    }
}

// ------------------------------------------------------------------ S4

/// S4 connect rate: `workers` loops each doing TCP connect + WebSocket
/// upgrade + CONNECT → CONNECTED, then closing; `total` attempts at most.
pub async fn s4(c: &Common, total: usize, workers: usize) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let deadline = now_ns() + c.secs();
    let a = snapshot(c.broker_pid);
    let started = now_ns();
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let next = next.clone();
        let target = c.target.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = new_hist();
            let mut errs = 0u64;
            let mut first_err = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= total || now_ns() >= deadline {
                    break;
                }
                let t = now_ns();
                match target.open_stomp(i, (0, 0)).await {
                    Ok(s) => {
                        let _ = h.record((now_ns() - t).max(1));
                        drop(s);
                    }
                    Err(e) => {
                        errs += 1;
                        first_err.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (h, errs, first_err)
        }));
    }
    let mut h = new_hist();
    let mut errs = 0;
    let mut first_err = None;
    for t in tasks {
        let (hh, e, fe) = t.await?;
        let _ = h.add(&hh);
        errs += e;
        if first_err.is_none() {
            first_err = fe;
        }
    }
    let elapsed = (now_ns() - started) as f64 / 1e9;
    let b = snapshot(c.broker_pid);
    let ok = h.len();
    let (p50, p99, p999, max) = percentiles(&h);
    let mut row = c.row("s4");
    row.put("workers", workers as u64)
        .put("connects", ok)
        .put("elapsed_s", round(elapsed))
        .put("connects_per_s", round(ok as f64 / elapsed))
        .put("p50_us", round(p50))
        .put("p99_us", round(p99))
        .put("p999_us", round(p999))
        .put("max_us", round(max))
        .put("errors", errs);
    if let (Some(x), Some(y)) = (a.broker, b.broker) {
        row.put(
            "broker_cpu_ms_per_k_connects",
            round(1e6 * (y.cpu_s - x.cpu_s) / (ok.max(1) as f64)),
        );
    }
    row.resources(&a, &b, 0, 0, None);
    if let Some(e) = first_err {
        row.put("first_error", e);
    }
    row.emit(c.json.as_deref())
}

// ------------------------------------------------------------------ S5

/// S5 slow consumer: `subscribers` on one topic at an open-loop `rate`;
/// phase A undisturbed, phase B with one extra subscriber that reads at a
/// tenth of its phase-A byte rate for the whole phase (reconnecting when
/// the broker cuts it off). Reports the others' latency in both phases, broker RSS over
/// time and what happened to the stalled subscriber.
#[allow(clippy::too_many_arguments)]
pub async fn s5(
    c: &Common,
    subscribers: usize,
    rate: f64,
    body: usize,
    topic: &str,
    victim_rate: f64,
    victim_body: usize,
) -> Result<()> {
    let subs = open_many(c, 3, subscribers, (0, 0), Some(&|_| topic.to_string())).await?;
    let publisher = c.target.open_stomp(0, (0, 0)).await?;
    let victim_topic = format!("{topic}.victim");
    let victim_publisher = if victim_rate > 0.0 {
        Some(c.target.open_stomp(2, (0, 0)).await?)
    } else {
        None
    };
    // The victim: a small receive buffer so that it backs up into the
    // broker once it reads slowly, as a struggling browser tab would.
    let mut victim_topics = vec![topic.to_string()];
    if victim_publisher.is_some() {
        victim_topics.push(victim_topic.clone());
    }

    let t0 = now_ns() + 200_000_000;
    let a_w = Window {
        start: t0 + c.warm(),
        end: t0 + c.warm() + c.secs(),
    };
    let b_w = Window {
        start: a_w.end,
        end: a_w.end + c.secs(),
    };
    let ctx = RunCtx::new(vec![a_w, b_w]);
    let groups = spawn_groups(subs, c.conns_per_task, &ctx);
    let sampler = spawn_sampler(c.broker_pid, vec![a_w, b_w]);
    let series = spawn_series(c.broker_pid, b_w.end + 2_000_000_000);
    let victim_task = tokio::spawn(slow_reader(
        c.target.clone(),
        victim_topics,
        b_w.start,
        ctx.stop.clone(),
    ));
    // The victim's own heavy stream (both phases, so the only difference
    // between A and B is that the victim reads at a tenth of the rate): its
    // backlog grows by 0.9 × victim_rate × victim_body bytes/s in phase B.
    let victim_pub = victim_publisher.map(|s| {
        tokio::spawn(publish_open_loop(
            s,
            Arc::new(vec![SendTemplate::new(&victim_topic, victim_body)]),
            victim_rate,
            t0,
            b_w.end,
            0,
            1,
            ctx.stop.clone(),
            false,
        ))
    });
    let published = publish_open_loop(
        publisher,
        Arc::new(vec![SendTemplate::new(topic, body)]),
        rate,
        t0,
        b_w.end,
        0,
        1,
        ctx.stop.clone(),
        false,
    )
    .await?;
    let victim_sent = match victim_pub {
        Some(t) => t.await??.sent,
        None => 0,
    };
    drain(&ctx, None, Duration::from_secs(5)).await;
    let m = join_groups(groups, 2).await?;
    let edges = sampler.await?;
    let rss = series.await?;
    let victim = victim_task.await??;
    let mut row = c.row("s5");
    row.put("subscribers", subscribers as u64)
        .put("publish_rate", rate)
        .put("body_bytes", body as u64)
        .put("published", published.sent)
        .put("delivered_others", m.total)
        .put(
            "lost_others",
            (published.sent * subscribers as u64).saturating_sub(m.total),
        )
        .latency("undisturbed_", &m.hist[0])
        .latency("stalled_", &m.hist[1]);
    let (_, p99a, _, _) = percentiles(&m.hist[0]);
    let (_, p99b, _, _) = percentiles(&m.hist[1]);
    row.put("p99_ratio", crate::stats::round3(p99b / p99a));
    row.latency("pub_lag_", &published.lag);
    let rss_mib: Vec<f64> = rss
        .iter()
        .filter_map(|s| {
            s.broker
                .map(|b| (b.rss_kib as f64 / 1024.0 * 10.0).round() / 10.0)
        })
        .collect();
    if !rss_mib.is_empty() {
        let max = rss_mib.iter().cloned().fold(f64::MIN, f64::max);
        row.put("broker_rss_max_mib", max)
            .put("broker_rss_series_mib", serde_json::json!(rss_mib));
    }
    let (a, b) = edges[1];
    row.resources(&a, &b, m.count[1], subscribers as u64 + 2, None);
    row.put("victim_stream_rate", victim_rate)
        .put("victim_stream_body_bytes", victim_body as u64)
        .put("victim_stream_published", victim_sent)
        .put("victim_received", victim.received)
        .put("victim_read_bps_undisturbed", round(victim.fast_bps))
        .put("victim_read_bps_slow", round(victim.slow_bps))
        .put("victim_cut_off", victim.cut_off)
        .put("victim_outcome", victim.outcome);
    put_errors(&mut row, &m);
    row.emit(c.json.as_deref())
}

struct VictimReport {
    received: u64,
    /// Bytes/s it read while keeping up (phase A) and in phase B.
    fast_bps: f64,
    slow_bps: f64,
    /// Times the broker closed it during phase B (it reconnects each time,
    /// so the disturbance lasts the whole phase).
    cut_off: u64,
    outcome: String,
}

/// The slow subscriber: reads normally until `slow_from`, then for the
/// whole of phase B at a tenth of the byte rate it read before (sleeping
/// after each chunk; its small receive buffer makes the broker hold the
/// rest). When the broker closes it as a slow consumer it connects and
/// subscribes again at once, so phase B is disturbed from start to end.
async fn slow_reader(
    target: Target,
    topics: Vec<String>,
    slow_from: u64,
    stop: CancellationToken,
) -> Result<VictimReport> {
    let open = || async {
        let mut s = Session::new(target.open_with(1, Some(4096)).await?);
        s.handshake(&target, (0, 0)).await?;
        for (i, t) in topics.iter().enumerate() {
            s.subscribe(&i.to_string(), t).await?;
        }
        anyhow::Ok(s)
    };
    let mut s = open().await?;
    let mut received = 0u64;
    let mut errors = Vec::new();
    let started = now_ns();
    let mut fast_bytes = 0u64;
    // Phase A: keep up.
    loop {
        let left = slow_from.saturating_sub(now_ns());
        if left == 0 {
            break;
        }
        match tokio::time::timeout(Duration::from_nanos(left), s.conn.next()).await {
            Err(_) => break,
            Ok(Some(Ok(chunk))) => {
                fast_bytes += chunk.len() as u64;
                let _ = absorb(&mut s.buf, &chunk, |_, _| received += 1, |f| errors.push(f));
            }
            Ok(_) => {
                s = open().await?;
            }
        }
    }
    let fast_bps = fast_bytes as f64 / ((slow_from.saturating_sub(started)) as f64 / 1e9).max(1e-3);
    let slow_rate = (fast_bps / 10.0).max(1.0);
    // Phase B: a tenth of the rate until the run stops.
    let mut slow_bytes = 0u64;
    let mut cut_off = 0u64;
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => break,
            item = s.conn.next() => item,
        };
        match item {
            Some(Ok(chunk)) => {
                slow_bytes += chunk.len() as u64;
                let _ = absorb(&mut s.buf, &chunk, |_, _| received += 1, |f| errors.push(f));
                let pause = Duration::from_secs_f64(chunk.len() as f64 / slow_rate);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            _ => {
                cut_off += 1;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = open() => s = r?,
                }
            }
        }
    }
    let slow_bps =
        slow_bytes as f64 / ((now_ns().saturating_sub(slow_from)) as f64 / 1e9).max(1e-3);
    let last_error = errors.iter().rev().find_map(|f| f.as_ref().map(describe));
    let outcome = match (cut_off, last_error) {
        (0, _) => "connected, reading slowly, for the whole phase".to_string(),
        (n, Some(e)) => {
            format!("closed by the broker {n} times (last: {e}), reconnected each time")
        }
        (n, None) => format!("closed by the broker {n} times, reconnected each time"),
    };
    Ok(VictimReport {
        received,
        fast_bps,
        slow_bps,
        cut_off,
        outcome,
    })
}
