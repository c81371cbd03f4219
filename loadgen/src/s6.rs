//! S6 Kafka → WebSocket: an open-loop Kafka producer (rdkafka) and STOMP
//! over WebSocket subscribers on the destinations the broker's bridge route
//! maps the records to. Latency = client receive time − the record's
//! *scheduled* produce time, on the one monotonic clock of this process.
//!
//! The broker must run with the bridge and a route from the topic to the
//! destination template, e.g. `--kafka-brokers 127.0.0.1:P --route
//! orders=/topic/order.{key}` (scripts/bench-kafka.sh does this).

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::{ClientContext, DefaultClientContext},
    config::ClientConfig,
    error::RDKafkaErrorCode,
    producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer},
};

use crate::{
    net::{absorb, body_stamp, Session},
    scenarios::{drain, join_groups, open_many, put_errors, spawn_groups, Common, RunCtx},
    stats::{instant_at, new_hist, now_ns, round, sample, snapshot, Snapshot, Window},
};

/// What `loadgen s6` needs besides the common settings.
pub struct S6Params {
    /// Kafka bootstrap servers (loopback only).
    pub bootstrap: String,
    /// Topic the broker's route reads.
    pub topic: String,
    /// Partitions when the topic has to be created.
    pub partitions: i32,
    /// Destination template of the route (`{key}` = the order id).
    pub destination: String,
    /// Records per second, open loop.
    pub rate: f64,
    /// Distinct order ids (record keys).
    pub ids: usize,
    /// Per-order subscribers: subscriber i follows id i (at most `ids`).
    pub order_subscribers: usize,
    /// Subscribers to the wildcard (`{key}` replaced by `*`).
    pub wildcard_subscribers: usize,
    /// Record value bytes (the first 8 carry the scheduled time).
    pub body: usize,
    /// Producer `linger.ms`.
    pub linger_ms: f64,
    /// Producer `acks`.
    pub acks: String,
    /// Extra producer properties `key=value`, applied last.
    pub producer_config: Vec<String>,
    /// Kafka's JVM pid: its CPU is reported too.
    pub kafka_pid: Option<u32>,
    /// CSV of every record's latency as one extra wildcard subscriber saw it.
    pub trace: Option<PathBuf>,
}

/// Refuses bootstrap addresses outside 127.0.0.0/8 (IP:port only, so a
/// name cannot resolve elsewhere).
pub fn check_bootstrap(list: &str) -> Result<()> {
    for a in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let addr: SocketAddr = a
            .parse()
            .with_context(|| format!("Kafka bootstrap {a}: expected IP:port"))?;
        match addr.ip() {
            IpAddr::V4(v4) if v4.octets()[0] == 127 => {}
            _ => bail!("{addr} is not in 127.0.0.0/8: loadgen only talks to loopback"),
        }
    }
    Ok(())
}

/// Delivery reports: successes, failures and, for records scheduled inside
/// the measurement window, the time from the scheduled produce time to
/// Kafka's acknowledgement (the Kafka half of the end-to-end latency).
struct Reports {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    window: Mutex<Option<Window>>,
    ack: Mutex<Histogram<u64>>,
    /// (scheduled, acknowledged) per record, kept only for `--trace`.
    trace: Option<Mutex<Vec<(u64, u64)>>>,
}

impl Reports {
    fn new(trace: bool) -> Reports {
        Reports {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
            window: Mutex::new(None),
            ack: Mutex::new(new_hist()),
            trace: trace.then(|| Mutex::new(Vec::new())),
        }
    }
}

struct Ctx(Arc<Reports>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    /// The record's scheduled produce time (ns on the [`now_ns`] clock).
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, stamp: usize) {
        match r {
            Ok(_) => {
                self.0.ok.fetch_add(1, Ordering::Relaxed);
                let (now, stamp) = (now_ns(), stamp as u64);
                let inside = self
                    .0
                    .window
                    .lock()
                    .ok()
                    .and_then(|w| *w)
                    .is_some_and(|w| stamp >= w.start && stamp < w.end);
                if inside {
                    if let Ok(mut h) = self.0.ack.lock() {
                        let _ = h.record(now.saturating_sub(stamp).max(1));
                    }
                }
                if let Some(Ok(mut t)) = self.0.trace.as_ref().map(|t| t.lock()) {
                    t.push((stamp, now));
                }
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = self.0.first_error.lock() {
                    f.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

type Prod = ThreadedProducer<Ctx>;

async fn ensure_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("Kafka admin client")?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &opts,
        ),
    )
    .await
    .map_err(|_| anyhow!("creating topic {topic}: no answer from Kafka at {bootstrap} in 30 s"))?
    .context("create topic")?;
    for r in res {
        match r {
            Ok(_) => eprintln!("loadgen: created topic {topic} ({partitions} partitions)"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("create topic {t}: {e}"),
        }
    }
    Ok(())
}

fn producer(p: &S6Params, reports: Arc<Reports>) -> Result<Prod> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &p.bootstrap)
        .set("client.id", "loadgen-s6")
        .set("acks", &p.acks)
        .set("linger.ms", p.linger_ms.to_string())
        // librdkafka leaves Nagle on by default; with several produce
        // requests in flight a small one then waits for the previous
        // segment's ACK. Measured: Kafka ack p99 at 5,000/s 11-20 ms with
        // Nagle, 7-9 ms without (docs/benchmarks.md, S6).
        .set("socket.nagle.disable", "true")
        .set("message.timeout.ms", "30000");
    for kv in &p.producer_config {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--producer-config {kv}: expected key=value"))?;
        cfg.set(k, v);
    }
    cfg.create_with_context(Ctx(reports))
        .context("Kafka producer")
}

/// Value bytes: the stamp (LE ns on the [`now_ns`] clock) then padding.
fn value(stamp: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(8));
    v.extend_from_slice(&stamp.to_le_bytes());
    v.resize(len.max(8), b'x');
    v
}

fn send(prod: &Prod, topic: &str, key: &str, value: &[u8], stamp: u64) -> Result<(), String> {
    let record = BaseRecord::with_opaque_to(topic, stamp as usize)
        .key(key)
        .payload(value);
    prod.send(record).map_err(|(e, _)| e.to_string())
}

/// Produces probe records (key `probe`, stamp 0 = not measured) until the
/// probe subscriber receives one: the bridge has its partitions and reads
/// from the end of the topic.
async fn wait_for_bridge(
    p: &S6Params,
    prod: &Prod,
    probe: &mut stomp_client::Subscription,
) -> Result<u64> {
    let started = now_ns();
    let deadline = started + 90_000_000_000;
    let v = value(0, p.body);
    let mut sent = 0u64;
    loop {
        if now_ns() > deadline {
            bail!(
                "no record came through the broker's bridge within 90 s: is the broker running \
                 with --kafka-brokers {} --route {}={}?",
                p.bootstrap,
                p.topic,
                p.destination
            );
        }
        if send(prod, &p.topic, "probe", &v, 0).is_ok() {
            sent += 1;
        }
        match tokio::time::timeout(
            Duration::from_millis(250),
            futures_util::StreamExt::next(probe),
        )
        .await
        {
            Err(_) => continue,
            Ok(Some(_)) => {
                eprintln!(
                    "loadgen: bridge delivering after {:.1} s ({sent} probe records)",
                    (now_ns() - started) as f64 / 1e9
                );
                return Ok(sent);
            }
            Ok(None) => bail!("probe subscriber closed by the broker"),
        }
    }
}

/// One wildcard subscriber that keeps (scheduled, received) for every
/// measured record until `stop`, for `--trace`.
async fn tracer(
    mut s: Session,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => break,
            c = futures_util::StreamExt::next(&mut s.conn) => c,
        };
        match chunk {
            Some(Ok(chunk)) => {
                let now = now_ns();
                absorb(
                    &mut s.buf,
                    &chunk,
                    |f, body| {
                        if let Some(ts) = body_stamp(f, body).filter(|&t| t != 0) {
                            out.push((ts, now));
                        }
                    },
                    |_| {},
                )?;
            }
            Some(Err(e)) => bail!("trace subscriber: {e:#}"),
            None => bail!("trace subscriber closed by the broker"),
        }
    }
    Ok(out)
}

fn write_trace(
    path: &std::path::Path,
    rows: &[(u64, u64)],
    acks: &[(u64, u64)],
    t0: u64,
) -> Result<()> {
    let acked: std::collections::HashMap<u64, u64> = acks.iter().copied().collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    // Wall clock of the trace's zero, to line it up with other logs (GC).
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
        - now_ns().saturating_sub(t0) as f64 / 1e6;
    writeln!(f, "# zero_unix_ms={unix_ms:.3}")?;
    writeln!(f, "scheduled_ms,latency_ms,kafka_ack_ms")?;
    for (sent, recv) in rows {
        let ack = acked
            .get(sent)
            .map(|a| format!("{:.3}", a.saturating_sub(*sent) as f64 / 1e6))
            .unwrap_or_default();
        writeln!(
            f,
            "{:.3},{:.3},{ack}",
            sent.saturating_sub(t0) as f64 / 1e6,
            recv.saturating_sub(*sent) as f64 / 1e6
        )?;
    }
    f.flush()?;
    Ok(())
}

struct Produced {
    sent: u64,
    per_id: Vec<u64>,
    send_errors: u64,
    first_send_error: Option<String>,
    lag: Histogram<u64>,
}

/// Open loop: record `k` is due at `start + k / rate`, keyed by order id
/// `k % ids` (spread with a stride coprime to `ids`), and carries the due
/// time, so a slow Kafka or bridge shows up as latency, not as a lower rate.
async fn produce_open_loop(p: &S6Params, prod: &Prod, start: u64, end: u64) -> Produced {
    let period = 1e9 / p.rate;
    let ids = p.ids.max(1);
    let stride = (1..ids)
        .rev()
        .find(|s| gcd(*s, ids) == 1 && *s < ids / 2 + 1)
        .unwrap_or(1);
    let keys: Vec<String> = (0..ids).map(|i| i.to_string()).collect();
    let mut out = Produced {
        sent: 0,
        per_id: vec![0; ids],
        send_errors: 0,
        first_send_error: None,
        lag: new_hist(),
    };
    let mut buf = value(0, p.body);
    let due = |k: u64| start + (k as f64 * period) as u64;
    let mut k = 0u64;
    loop {
        let t = due(k);
        if t >= end {
            break;
        }
        let now = now_ns();
        if t > now {
            tokio::time::sleep_until(instant_at(t).into()).await;
            continue;
        }
        while due(k) <= now && due(k) < end {
            let t = due(k);
            let id = (k as usize * stride) % ids;
            buf[..8].copy_from_slice(&t.to_le_bytes());
            match send(prod, &p.topic, &keys[id], &buf, t) {
                Ok(()) => {
                    out.sent += 1;
                    out.per_id[id] += 1;
                }
                Err(e) => {
                    out.send_errors += 1;
                    out.first_send_error.get_or_insert(e);
                }
            }
            let _ = out.lag.record(now.saturating_sub(t).max(1));
            k += 1;
        }
    }
    out
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// S6 Kafka → WebSocket latency.
pub async fn s6(c: &Common, p: &S6Params) -> Result<()> {
    check_bootstrap(&p.bootstrap)?;
    if !p.destination.contains("{key}") {
        bail!("--destination must contain {{key}} (the route's template)");
    }
    if p.order_subscribers > p.ids {
        bail!(
            "--order-subscribers ({}) > --ids ({})",
            p.order_subscribers,
            p.ids
        );
    }
    ensure_topic(&p.bootstrap, &p.topic, p.partitions).await?;
    let reports = Arc::new(Reports::new(p.trace.is_some()));
    let prod = producer(p, reports.clone())?;

    let dest = |key: &str| p.destination.replace("{key}", key);
    // Per-order subscribers first, so no record for their ids exists yet
    // (nothing retained is replayed to them).
    let order_dest = |i: usize| dest(&(i - 1).to_string());
    let order_subs = open_many(c, 1, p.order_subscribers, (0, 0), Some(&order_dest)).await?;
    // The readiness probe is a control connection: the full client.
    let probe = c.target.control_client().await?;
    let mut probe_sub = probe.subscribe(&dest("probe")).await?;
    let probes = wait_for_bridge(p, &prod, &mut probe_sub).await?;
    drop(probe_sub);
    probe.disconnect().await?;
    // Wildcard subscribers may get the retained probe replayed; its stamp
    // is 0, which the subscribers do not count.
    let wild_dest = |_: usize| dest("*");
    let wild_subs = open_many(
        c,
        1 + p.order_subscribers,
        p.wildcard_subscribers,
        (0, 0),
        Some(&wild_dest),
    )
    .await?;
    let trace_sub = match &p.trace {
        Some(_) => {
            let idx = 1 + p.order_subscribers + p.wildcard_subscribers;
            let mut s = c.target.open_stomp(idx, (0, 0)).await?;
            s.subscribe("trace", &dest("*")).await?;
            Some(s)
        }
        None => None,
    };
    let ok_before = reports.ok.load(Ordering::Relaxed);
    let failed_before = reports.failed.load(Ordering::Relaxed);

    let t0 = now_ns() + 200_000_000;
    let w = Window {
        start: t0 + (c.warmup * 1e9) as u64,
        end: t0 + ((c.warmup + c.duration) * 1e9) as u64,
    };
    if let Ok(mut rw) = reports.window.lock() {
        *rw = Some(w);
    }
    let ctx = RunCtx::new(vec![w]);
    let order_groups = spawn_groups(order_subs, c.conns_per_task, &ctx);
    let wild_groups = spawn_groups(wild_subs, c.conns_per_task, &ctx);
    let trace_task = trace_sub.map(|s| tokio::spawn(tracer(s, ctx.stop.clone())));
    let (broker_pid, kafka_pid) = (c.broker_pid, p.kafka_pid);
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(instant_at(w.start).into()).await;
        let a = (
            snapshot(broker_pid),
            kafka_pid.and_then(|k| sample(&k.to_string())),
        );
        tokio::time::sleep_until(instant_at(w.end).into()).await;
        let b = (
            snapshot(broker_pid),
            kafka_pid.and_then(|k| sample(&k.to_string())),
        );
        (a, b)
    });
    let produced = produce_open_loop(p, &prod, t0, w.end).await;
    // Wait for the acknowledgements without blocking the runtime (a
    // blocking `flush` here would stall the subscribers on this thread and
    // show up as latency of the last records).
    let settled = async {
        while reports.ok.load(Ordering::Relaxed) + reports.failed.load(Ordering::Relaxed)
            < ok_before + failed_before + produced.sent
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let flushed = tokio::time::timeout(Duration::from_secs(30), settled).await;
    let followed: u64 = produced.per_id[..p.order_subscribers].iter().sum();
    let expected = followed + produced.sent * p.wildcard_subscribers as u64;
    drain(&ctx, Some(expected), Duration::from_secs(10)).await;
    let om = join_groups(order_groups, 1).await?;
    let wm = join_groups(wild_groups, 1).await?;
    let ((a, ka), (b, kb)): ((Snapshot, _), (Snapshot, _)) = sampler.await?;
    if let (Some(t), Some(path)) = (trace_task, &p.trace) {
        let acks = match &reports.trace {
            Some(m) => m.lock().map(|v| v.clone()).unwrap_or_default(),
            None => Vec::new(),
        };
        write_trace(path, &t.await??, &acks, t0)?;
        eprintln!("loadgen: trace written to {}", path.display());
    }

    let acked = reports.ok.load(Ordering::Relaxed) - ok_before;
    let failed = reports.failed.load(Ordering::Relaxed) - failed_before;
    let in_window = om.count[0] + wm.count[0];
    let mut row = c.row("s6");
    row.put("topic", p.topic.as_str())
        .put("destination", p.destination.as_str())
        .put("rate", p.rate)
        .put("ids", p.ids as u64)
        .put("order_subscribers", p.order_subscribers as u64)
        .put("wildcard_subscribers", p.wildcard_subscribers as u64)
        .put("body_bytes", p.body as u64)
        .put(
            "producer",
            format!(
                "acks={} linger.ms={} socket.nagle.disable=true {}",
                p.acks,
                p.linger_ms,
                p.producer_config.join(" ")
            )
            .trim_end()
            .to_string(),
        )
        .put("probe_records", probes)
        .put("produced", produced.sent)
        .put("kafka_acked", acked)
        .put("kafka_failed", failed + produced.send_errors)
        .put(
            "records_per_s",
            round(produced.sent as f64 / (c.warmup + c.duration)),
        )
        .put("delivered", om.total + wm.total)
        .put("lost", expected.saturating_sub(om.total + wm.total))
        .put("deliveries_per_s", round(in_window as f64 / c.duration))
        .latency("", &om.hist[0]);
    if p.wildcard_subscribers > 0 {
        row.latency("wildcard_", &wm.hist[0]);
    }
    if let Ok(h) = reports.ack.lock() {
        row.latency("kafka_ack_", &h);
    }
    row.latency("pub_lag_", &produced.lag).resources(
        &a,
        &b,
        in_window,
        (p.order_subscribers + p.wildcard_subscribers) as u64,
        None,
    );
    if let (Some(x), Some(y)) = (ka, kb) {
        let secs = (b.at.saturating_sub(a.at)) as f64 / 1e9;
        row.put(
            "kafka_cpu_pct",
            round(100.0 * (y.cpu_s - x.cpu_s) / secs.max(1e-9)),
        )
        .put("kafka_rss_mib", round(y.rss_kib as f64 / 1024.0));
    }
    let mut all = om;
    all.merge(&wm);
    put_errors(&mut row, &all);
    if flushed.is_err() {
        row.put("producer_flush", "records still unacknowledged after 30 s");
    }
    let first = produced
        .first_send_error
        .or_else(|| reports.first_error.lock().ok().and_then(|f| f.clone()));
    if let Some(e) = first {
        row.put("first_kafka_error", e);
    }
    row.emit(c.json.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_must_be_loopback_ip() {
        assert!(check_bootstrap("127.0.0.1:9092").is_ok());
        assert!(check_bootstrap("127.0.0.1:9092,127.0.0.2:9093").is_ok());
        assert!(check_bootstrap("10.0.0.1:9092").is_err());
        assert!(check_bootstrap("localhost:9092").is_err());
        assert!(check_bootstrap("127.0.0.1:9092,192.168.1.1:9092").is_err());
    }

    #[test]
    fn value_carries_stamp_then_padding() {
        let v = value(0x0102_0304, 20);
        assert_eq!(v.len(), 20);
        assert_eq!(u64::from_le_bytes(v[..8].try_into().unwrap()), 0x0102_0304);
        assert!(v[8..].iter().all(|b| *b == b'x'));
        assert_eq!(value(7, 3).len(), 8);
    }
}
