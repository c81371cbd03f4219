//! The status page (`GET /`), its JSON (`GET /stats.json`) and the live
//! stats stream on the broker-internal destination [`STATS_DESTINATION`].
//!
//! A background task samples the counters every second (a few atomic
//! loads); the full snapshot, which walks the destination table, is built
//! only when asked for: by `GET /stats.json`, and each second while someone
//! subscribes to `/topic/broker.stats` (the page does, over its own
//! WebSocket).

use std::{
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::{json, Value};
use stomp_codec::Headers;

use crate::core::BrokerCore;

/// Where live stats are published.
pub const STATS_DESTINATION: &str = "/topic/broker.stats";

/// The page itself: plain HTML with a tiny built-in STOMP client (no
/// external assets).
pub const PAGE: &str = include_str!("status.html");

/// The last two counter samples, refreshed by [`run`], for rates.
#[derive(Debug, Default)]
pub struct StatusBoard {
    samples: Mutex<Option<(Sample, Sample)>>,
}

impl StatusBoard {
    /// A snapshot as JSON text, with rates over the last sampled second.
    pub fn json(&self, core: &BrokerCore) -> String {
        let samples = self.samples.lock().map(|s| *s).unwrap_or(None);
        match samples {
            Some((prev, now)) => snapshot(core, Some(&prev), &now).to_string(),
            None => snapshot(core, None, &sample(core)).to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    published: u64,
    delivered: u64,
    bytes_in: u64,
    bytes_out: u64,
}

fn sample(core: &BrokerCore) -> Sample {
    let m = &core.metrics;
    Sample {
        at: Instant::now(),
        published: m.messages_published.load(Relaxed),
        delivered: m.messages_delivered.load(Relaxed),
        bytes_in: m.bytes_in.load(Relaxed),
        bytes_out: m.bytes_out.load(Relaxed),
    }
}

/// One snapshot of the broker's state, with rates since `prev`.
fn snapshot(core: &BrokerCore, prev: Option<&Sample>, now: &Sample) -> Value {
    let m = &core.metrics;
    let rate = |f: fn(&Sample) -> u64| -> f64 {
        match prev {
            Some(p) => {
                let secs = now.at.duration_since(p.at).as_secs_f64().max(1e-3);
                (f(now).saturating_sub(f(p))) as f64 / secs
            }
            None => 0.0,
        }
    };
    let top: Vec<Value> = core
        .router
        .top_destinations(10)
        .into_iter()
        .map(|(d, subs, depth)| json!({ "destination": d, "subscriptions": subs, "queued": depth }))
        .collect();
    let kafka = core.bridge().map(|b| {
        let bm = b.metrics();
        let lag: Vec<Value> = bm
            .lag_snapshot()
            .into_iter()
            .map(|((t, p), l)| json!({ "topic": t, "partition": p, "lag": l }))
            .collect();
        json!({
            "state": format!("{:?}", b.state()),
            "records_consumed": bm.records_consumed(),
            "routed": bm.routed(),
            "unroutable": bm.unroutable(),
            "produced": bm.produced(),
            "produce_failures": bm.produce_failures(),
            "lag": lag,
        })
    });
    json!({
        "server": concat!("stomp-broker/", env!("CARGO_PKG_VERSION")),
        "connections": m.connections.load(Relaxed),
        "subscriptions": m.subscriptions.load(Relaxed),
        "messages_published": now.published,
        "messages_delivered": now.delivered,
        "messages_dropped": m.messages_dropped.load(Relaxed),
        "slow_consumer_disconnects": m.slow_consumer_disconnects.load(Relaxed),
        "rate_in_per_s": rate(|s| s.published),
        "rate_out_per_s": rate(|s| s.delivered),
        "bytes_in_per_s": rate(|s| s.bytes_in),
        "bytes_out_per_s": rate(|s| s.bytes_out),
        "retained_destinations": m.retained_destinations.load(Relaxed),
        "top_destinations": top,
        "kafka": kafka,
    })
}

/// Samples every second until shutdown.
pub async fn run(core: Arc<BrokerCore>) {
    let mut prev = sample(&core);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = core.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = sample(&core);
        if let Ok(mut l) = core.status.samples.lock() {
            *l = Some((prev, now));
        }
        if core.router.has_subscribers(STATS_DESTINATION) {
            let text = snapshot(&core, Some(&prev), &now).to_string();
            let mut h = Headers::new();
            h.push("content-type", "application/json");
            let _ = core.publish(STATS_DESTINATION, h, Bytes::from(text));
        }
        prev = now;
    }
}
