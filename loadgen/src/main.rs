//! `loadgen`: a load generator for STOMP over WebSocket (and TCP).
//!
//! Many client connections per task, source addresses spread over
//! 127.0.0.x, client-side WebSocket masking (tungstenite's client role),
//! send timestamps in message bodies, HdrHistogram latencies, open-loop
//! publishing at a fixed rate (latency from the *scheduled* send time) and a
//! windowed max-throughput mode. Every run prints a table and can append it
//! as a JSON line (`--json`) for scripts/bench-compare.sh.
//!
//! Traffic goes to 127.0.0.0/8 only: non-loopback targets are refused.

mod net;
mod s6;
mod s8;
mod scenarios;
mod soak;
mod stats;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::{
    net::{Target, Transport},
    scenarios::Common,
};

/// Load generator for STOMP over WebSocket and TCP brokers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Read the broker's addresses from its `--port-file` JSON
    /// (`{"stomp":"127.0.0.1:P","http":"127.0.0.1:Q"}`).
    #[arg(long, global = true)]
    port_file: Option<PathBuf>,
    /// WebSocket URL of the STOMP endpoint (e.g. ws://127.0.0.1:15694/ws).
    #[arg(long, global = true)]
    ws_url: Option<String>,
    /// WebSocket path used with --port-file.
    #[arg(long, global = true, default_value = "/ws")]
    ws_path: String,
    /// STOMP/TCP address (for --transport tcp).
    #[arg(long, global = true)]
    stomp_addr: Option<SocketAddr>,
    /// Transport.
    #[arg(long, global = true, value_enum, default_value = "ws")]
    transport: Transport,
    /// STOMP `host` header (RabbitMQ: the virtual host).
    #[arg(long, global = true, default_value = "/")]
    vhost: String,
    /// STOMP login (with --passcode), e.g. guest for RabbitMQ.
    #[arg(long, global = true)]
    login: Option<String>,
    /// STOMP passcode.
    #[arg(long, global = true, default_value = "")]
    passcode: String,
    /// Broker process id: CPU seconds and RSS are read from /proc/<pid>.
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    /// Spread client sockets over this many source addresses
    /// (127.0.0.2, 127.0.0.3, ...), ~28k ephemeral ports each.
    #[arg(long, global = true, default_value_t = 64)]
    source_ips: u32,
    /// Tokio worker threads (1 = current-thread runtime; the scripts pin
    /// the generator to one core).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Subscriber connections driven by one task.
    #[arg(long, global = true, default_value_t = 128)]
    conns_per_task: usize,
    /// Handshakes in flight while setting up connections.
    #[arg(long, global = true, default_value_t = 64)]
    connect_concurrency: usize,
    /// tungstenite read buffer per connection, bytes.
    #[arg(long, global = true, default_value_t = 16 * 1024)]
    read_buffer: usize,
    /// Warm-up seconds before measuring.
    #[arg(long, global = true, default_value_t = 2.0)]
    warmup: f64,
    /// Measured seconds (per phase for s5; the time limit for s4).
    #[arg(long, global = true, default_value_t = 10.0)]
    duration: f64,
    /// Append each result as a JSON line to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Label for the result row (e.g. stomp-broker, rabbitmq).
    #[arg(long, global = true, default_value = "broker")]
    label: String,
    /// How the broker was configured, put in the result row as `variant`
    /// (e.g. ws-frame-per-message); rows of a variant are reported apart.
    #[arg(long, global = true)]
    variant: Option<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// S1 fan-out: one publisher, N subscribers on one topic.
    S1 {
        /// Subscribers.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Body bytes (the first 8 carry the send time).
        #[arg(long, default_value_t = 200)]
        body: usize,
        /// Open-loop publish rate (messages/s); without it, max throughput.
        #[arg(long)]
        rate: Option<f64>,
        /// Max-throughput mode: messages not yet delivered to everyone.
        #[arg(long, default_value_t = 64)]
        window: u64,
        /// Topic.
        #[arg(long, default_value = "/topic/fanout")]
        topic: String,
        /// The target is `bare-fanout` (the tokio-tungstenite baseline, no
        /// STOMP): no CONNECT/SUBSCRIBE; the publisher sends the MESSAGE
        /// frames the broker would deliver, the server forwards them.
        #[arg(long)]
        bare: bool,
        /// Seconds to keep the connections open after the last delivery
        /// (scripts/bench-callgrind-s1.sh measures until then).
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
    },
    /// S2 per-order 1:1: N subscribers each on /topic/<prefix>.<id>,
    /// open-loop publishing spread over the ids.
    S2 {
        /// Subscribers (= distinct ids).
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Publish rate, messages/s in total.
        #[arg(long, default_value_t = 50_000.0)]
        rate: f64,
        /// Body bytes.
        #[arg(long, default_value_t = 200)]
        body: usize,
        /// Publisher connections sharing the schedule.
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Destination prefix.
        #[arg(long, default_value = "order")]
        prefix: String,
        /// Keep a `/topic/broker.stats` subscriber open (the live status
        /// page) for the whole run.
        #[arg(long)]
        status_subscriber: bool,
    },
    /// S3 idle: N connections exchanging only heart-beats.
    S3 {
        /// Connections.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Heart-beat both ways, ms.
        #[arg(long, default_value_t = 10_000)]
        heart_beat_ms: u32,
        /// Seconds to wait after connecting before measuring.
        #[arg(long, default_value_t = 5.0)]
        settle: f64,
    },
    /// S4 connect rate: WebSocket upgrade + CONNECT → CONNECTED per second.
    S4 {
        /// Connection attempts at most (also bounded by --duration).
        #[arg(long, default_value_t = 20_000)]
        total: usize,
        /// Concurrent connecting loops.
        #[arg(long, default_value_t = 32)]
        workers: usize,
    },
    /// S5 slow consumer among N subscribers (phase A undisturbed, phase B
    /// with one subscriber reading at a tenth of the rate for the whole phase).
    S5 {
        /// Subscribers that keep reading.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Publish rate to everyone, messages/s.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Body bytes.
        #[arg(long, default_value_t = 200)]
        body: usize,
        /// Topic.
        #[arg(long, default_value = "/topic/slow")]
        topic: String,
        /// Extra stream only the victim subscribes to (<topic>.victim),
        /// messages/s, so its backlog grows fast once it stalls (0 = none).
        #[arg(long, default_value_t = 200.0)]
        victim_rate: f64,
        /// Body bytes of the victim's extra stream.
        #[arg(long, default_value_t = 16 * 1024)]
        victim_body: usize,
    },
    /// Soak (issue 8): fan-out, per-order, connection churn and a slow
    /// consumer every minute, all at once for --duration seconds
    /// (scripts/soak.sh samples the broker and judges the run).
    Soak {
        /// Fan-out subscribers (one topic).
        #[arg(long, default_value_t = 200)]
        fanout_subscribers: usize,
        /// Fan-out publish rate, messages/s.
        #[arg(long, default_value_t = 50.0)]
        fanout_rate: f64,
        /// Per-order subscribers on /topic/order.<id>.
        #[arg(long, default_value_t = 2000)]
        order_subscribers: usize,
        /// Per-order publish rate, messages/s in total.
        #[arg(long, default_value_t = 2000.0)]
        order_rate: f64,
        /// Connects + disconnects per second.
        #[arg(long, default_value_t = 50.0)]
        churn_rate: f64,
        /// Seconds between slow consumers.
        #[arg(long, default_value_t = 60.0)]
        slow_every: f64,
        /// The slow consumer's own stream, 16 KiB messages/s.
        #[arg(long, default_value_t = 100.0)]
        slow_rate: f64,
        /// Body bytes (fan-out and per-order).
        #[arg(long, default_value_t = 200)]
        body: usize,
    },
    /// S8 wildcard subscriptions: N `/topic/<prefix>.<id>.*` subscribers
    /// and M `--hash-pattern` subscribers, open-loop publishing to
    /// `/topic/<prefix>.<id>.created` spread over the ids.
    S8 {
        /// Subscribers on `/topic/<prefix>.<id>.*` (= distinct ids).
        #[arg(long, default_value_t = 10_000)]
        star_subscribers: usize,
        /// Subscribers on --hash-pattern.
        #[arg(long, default_value_t = 1_000)]
        hash_subscribers: usize,
        /// Their pattern (`<prefix>` = --prefix; `{id}` = the subscriber's
        /// number, so each matches one id instead of every message).
        #[arg(long, default_value = "/topic/<prefix>.#")]
        hash_pattern: String,
        /// Publish rate, messages/s.
        #[arg(long, default_value_t = 50_000.0)]
        rate: f64,
        /// Body bytes.
        #[arg(long, default_value_t = 200)]
        body: usize,
        /// Destination prefix.
        #[arg(long, default_value = "order")]
        prefix: String,
    },
    /// S7 cluster (docs/benchmarks.md): one publisher on the node of
    /// --ws-url, subscribers on one topic spread round-robin over the nodes
    /// given with --sub-url (default: the publisher's node). Latency from
    /// the scheduled send time with --rate; deliveries/s without it.
    S7 {
        /// A subscriber node's WebSocket URL (repeatable; subscribers are
        /// spread round-robin). Default: --ws-url.
        #[arg(long)]
        sub_url: Vec<String>,
        /// Subscribers.
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        /// Body bytes (the first 8 carry the send time).
        #[arg(long, default_value_t = 200)]
        body: usize,
        /// Open-loop publish rate (messages/s); without it, max throughput.
        #[arg(long)]
        rate: Option<f64>,
        /// Max-throughput mode: messages not yet delivered to everyone.
        #[arg(long, default_value_t = 64)]
        window: u64,
        /// Topic.
        #[arg(long, default_value = "/topic/s7")]
        topic: String,
    },
    /// S6 Kafka → WebSocket: an open-loop Kafka producer keyed by order id,
    /// WebSocket subscribers on the destinations the broker's bridge route
    /// maps the records to; latency from the scheduled produce time.
    S6 {
        /// Kafka bootstrap servers (IP:port on 127.0.0.0/8).
        #[arg(long, env = "KAFKA_BOOTSTRAP")]
        kafka_bootstrap: String,
        /// Kafka topic (created with --partitions if missing); the broker's
        /// route must read it.
        #[arg(long, default_value = "orders")]
        topic: String,
        /// Partitions for a topic this run creates.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// The route's destination template (`{key}` = order id).
        #[arg(long, default_value = "/topic/order.{key}")]
        destination: String,
        /// Records per second (open loop).
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        /// Distinct order ids (record keys 0..ids).
        #[arg(long, default_value_t = 1000)]
        ids: usize,
        /// Per-order subscribers: subscriber i follows order i (≤ --ids).
        #[arg(long, default_value_t = 1000)]
        order_subscribers: usize,
        /// Subscribers to the wildcard (template with `{key}` = `*`), each
        /// receiving every record.
        #[arg(long, default_value_t = 0)]
        wildcard_subscribers: usize,
        /// Record value bytes (the first 8 carry the scheduled time).
        #[arg(long, default_value_t = 200)]
        body: usize,
        /// Producer linger.ms.
        #[arg(long, default_value_t = 1.0)]
        linger_ms: f64,
        /// Producer acks (all = leader + in-sync replicas; one replica here).
        #[arg(long, default_value = "all")]
        acks: String,
        /// Extra producer property key=value (repeatable), applied last.
        #[arg(long)]
        producer_config: Vec<String>,
        /// Kafka's JVM pid: its CPU and RSS are reported too.
        #[arg(long)]
        kafka_pid: Option<u32>,
        /// Write `scheduled_ms,latency_ms` for every record seen by one extra
        /// wildcard subscriber to this CSV (for finding stalls in time).
        #[arg(long)]
        trace: Option<PathBuf>,
    },
}

fn loopback(addr: &SocketAddr) -> Result<()> {
    match addr.ip() {
        IpAddr::V4(v4) if v4.octets()[0] == 127 => Ok(()),
        _ => bail!("{addr} is not in 127.0.0.0/8: loadgen only talks to loopback"),
    }
}

fn ws_host(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .context("only ws:// URLs are supported")?;
    let host = rest.split('/').next().unwrap_or(rest);
    host.parse()
        .with_context(|| format!("{host}: expected an IP:port"))
}

fn target(cli: &Cli) -> Result<Target> {
    let (mut ws_url, mut stomp_addr) = (cli.ws_url.clone(), cli.stomp_addr);
    if let Some(pf) = &cli.port_file {
        let text = std::fs::read_to_string(pf).with_context(|| format!("{}", pf.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).context("port file JSON")?;
        if ws_url.is_none() {
            if let Some(h) = v.get("http").and_then(|h| h.as_str()) {
                ws_url = Some(format!("ws://{h}{}", cli.ws_path));
            }
        }
        if stomp_addr.is_none() {
            if let Some(s) = v.get("stomp").and_then(|s| s.as_str()) {
                stomp_addr = Some(s.parse().context("stomp address in port file")?);
            }
        }
    }
    let ws_url = ws_url.context("give --port-file or --ws-url")?;
    let ws_addr = ws_host(&ws_url)?;
    loopback(&ws_addr)?;
    if let Some(a) = &stomp_addr {
        loopback(a)?;
    }
    Ok(Target {
        transport: cli.transport,
        ws_addr,
        ws_url,
        stomp_addr,
        host: cli.vhost.clone(),
        login: cli.login.clone().map(|l| (l, cli.passcode.clone())),
        source_ips: cli.source_ips.clamp(1, 250),
        read_buffer: cli.read_buffer,
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let common = Common {
        target: target(&cli)?,
        broker_pid: cli.broker_pid,
        json: cli.json.clone(),
        label: cli.label.clone(),
        connect_concurrency: cli.connect_concurrency,
        conns_per_task: cli.conns_per_task,
        warmup: cli.warmup,
        duration: cli.duration,
        variant: cli.variant.clone(),
    };
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    stats::now_ns();
    rt.block_on(async {
        match &cli.scenario {
            Scenario::S1 {
                subscribers,
                body,
                rate,
                window,
                topic,
                bare,
                hold,
            } => {
                scenarios::s1(
                    &common,
                    *subscribers,
                    *body,
                    *rate,
                    *window,
                    topic,
                    *bare,
                    *hold,
                )
                .await
            }
            Scenario::S2 {
                subscribers,
                rate,
                body,
                publishers,
                prefix,
                status_subscriber,
            } => {
                scenarios::s2(
                    &common,
                    *subscribers,
                    *rate,
                    *body,
                    *publishers,
                    prefix,
                    *status_subscriber,
                )
                .await
            }
            Scenario::S3 {
                connections,
                heart_beat_ms,
                settle,
            } => scenarios::s3(&common, *connections, *heart_beat_ms, *settle).await,
            Scenario::S4 { total, workers } => scenarios::s4(&common, *total, *workers).await,
            Scenario::S5 {
                subscribers,
                rate,
                body,
                topic,
                victim_rate,
                victim_body,
            } => {
                scenarios::s5(
                    &common,
                    *subscribers,
                    *rate,
                    *body,
                    topic,
                    *victim_rate,
                    *victim_body,
                )
                .await
            }
            Scenario::Soak {
                fanout_subscribers,
                fanout_rate,
                order_subscribers,
                order_rate,
                churn_rate,
                slow_every,
                slow_rate,
                body,
            } => {
                let p = soak::SoakParams {
                    fanout_subs: *fanout_subscribers,
                    fanout_rate: *fanout_rate,
                    order_subs: *order_subscribers,
                    order_rate: *order_rate,
                    churn_rate: *churn_rate,
                    slow_every: *slow_every,
                    slow_rate: *slow_rate,
                    body: *body,
                };
                soak::soak(&common, &p).await
            }
            Scenario::S8 {
                star_subscribers,
                hash_subscribers,
                hash_pattern,
                rate,
                body,
                prefix,
            } => {
                let p = s8::S8Params {
                    star_subscribers: *star_subscribers,
                    hash_subscribers: *hash_subscribers,
                    hash_pattern: hash_pattern.clone(),
                    rate: *rate,
                    body: *body,
                    prefix: prefix.clone(),
                };
                s8::s8(&common, &p).await
            }
            Scenario::S7 {
                sub_url,
                subscribers,
                body,
                rate,
                window,
                topic,
            } => {
                let mut targets = Vec::new();
                for u in sub_url {
                    let addr = ws_host(u)?;
                    loopback(&addr)?;
                    let mut t = common.target.clone();
                    t.ws_addr = addr;
                    t.ws_url = u.clone();
                    targets.push(t);
                }
                if targets.is_empty() {
                    targets.push(common.target.clone());
                }
                scenarios::fanout(
                    &common,
                    "s7",
                    &targets,
                    *subscribers,
                    *body,
                    *rate,
                    *window,
                    topic,
                    false,
                    0.0,
                )
                .await
            }
            Scenario::S6 {
                kafka_bootstrap,
                topic,
                partitions,
                destination,
                rate,
                ids,
                order_subscribers,
                wildcard_subscribers,
                body,
                linger_ms,
                acks,
                producer_config,
                kafka_pid,
                trace,
            } => {
                let p = s6::S6Params {
                    bootstrap: kafka_bootstrap.clone(),
                    topic: topic.clone(),
                    partitions: *partitions,
                    destination: destination.clone(),
                    rate: *rate,
                    ids: *ids,
                    order_subscribers: *order_subscribers,
                    wildcard_subscribers: *wildcard_subscribers,
                    body: *body,
                    linger_ms: *linger_ms,
                    acks: acks.clone(),
                    producer_config: producer_config.clone(),
                    kafka_pid: *kafka_pid,
                    trace: trace.clone(),
                };
                s6::s6(&common, &p).await
            }
        }
    })
}
