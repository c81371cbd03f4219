//! S8 wildcard fan-in (issue 15): many wildcard subscriptions, of which a
//! publish matches few. `--star-subscribers` connections subscribe to
//! `/topic/<prefix>.<id>.*` (one per id) and `--hash-subscribers` to
//! `--hash-pattern` (default `/topic/<prefix>.#`, every message; a pattern
//! with `{id}` gives hash subscriber `i` its own id). An open-loop
//! publisher sends to `/topic/<prefix>.<id>.created` spread over the ids.
//! The broker's cost per publish must follow what a message matches, not
//! how many wildcard subscriptions exist.

use std::{sync::Arc, time::Duration};

use anyhow::Result;

use crate::{
    net::SendTemplate,
    scenarios::{
        drain, gcd, join_groups, open_many, publisher_thread, put_errors, spawn_groups,
        spawn_sampler, Common, RunCtx,
    },
    stats::{now_ns, round, Window},
};

/// S8 settings.
pub struct S8Params {
    /// Subscribers on `/topic/<prefix>.<id>.*`, one id each.
    pub star_subscribers: usize,
    /// Subscribers on `hash_pattern`.
    pub hash_subscribers: usize,
    /// Their pattern; `{id}` is replaced by the subscriber's number.
    pub hash_pattern: String,
    /// Publish rate, messages/s in total.
    pub rate: f64,
    /// Body bytes.
    pub body: usize,
    /// Destination prefix.
    pub prefix: String,
}

/// Runs S8.
pub async fn s8(c: &Common, p: &S8Params) -> Result<()> {
    let stars = p.star_subscribers.max(1);
    let prefix = &p.prefix;
    let hash_pattern = p.hash_pattern.replace("<prefix>", prefix);
    let per_id = hash_pattern.contains("{id}");
    let star_dest = |i: usize| format!("/topic/{prefix}.{}.*", i - 1);
    let mut subs = open_many(c, 1, stars, (0, 0), Some(&star_dest)).await?;
    let hash_dest = |i: usize| hash_pattern.replace("{id}", &(i - 1 - stars).to_string());
    subs.extend(open_many(c, 1 + stars, p.hash_subscribers, (0, 0), Some(&hash_dest)).await?);
    let stride = (1..stars)
        .rev()
        .find(|s| gcd(*s, stars) == 1 && *s < stars / 2 + 1)
        .unwrap_or(1);
    let ids: Vec<usize> = (0..stars).map(|k| (k * stride) % stars).collect();
    let templates: Arc<Vec<SendTemplate>> = Arc::new(
        ids.iter()
            .map(|id| SendTemplate::new(&format!("/topic/{prefix}.{id}.created"), p.body))
            .collect(),
    );
    // Deliveries each template's message makes: its `.*` subscriber plus
    // the `#` subscribers it matches.
    let fanout: Vec<u64> = ids
        .iter()
        .map(|&id| {
            1 + if per_id {
                u64::from(id < p.hash_subscribers)
            } else {
                p.hash_subscribers as u64
            }
        })
        .collect();
    let t0 = now_ns() + 200_000_000;
    let w = Window {
        start: t0 + (c.warmup * 1e9) as u64,
        end: t0 + ((c.warmup + c.duration) * 1e9) as u64,
    };
    let ctx = RunCtx::new(vec![w]);
    let groups = spawn_groups(subs, c.conns_per_task, &ctx);
    let sampler = spawn_sampler(c.broker_pid, vec![w]);
    let published = publisher_thread(
        c.target.clone(),
        0,
        templates,
        p.rate,
        t0,
        w.end,
        0,
        1,
        ctx.stop.clone(),
    )
    .await??;
    let sent = published.sent;
    let expected: u64 = (0..sent).map(|k| fanout[k as usize % fanout.len()]).sum();
    drain(&ctx, Some(expected), Duration::from_secs(10)).await;
    let m = join_groups(groups, 1).await?;
    let edges = sampler.await?;
    let (a, b) = edges[0];
    let conns = (stars + p.hash_subscribers + 1) as u64;
    let mut row = c.row("s8");
    let lag = published.lag;
    row.put("connections", conns)
        .put("star_subscribers", stars as u64)
        .put("hash_subscribers", p.hash_subscribers as u64)
        .put("hash_pattern", hash_pattern.as_str())
        .put("publish_rate", p.rate)
        .put("body_bytes", p.body as u64)
        .put("published", sent)
        .put("expected_deliveries", expected)
        .put("delivered", m.total)
        .put("lost", expected.saturating_sub(m.total))
        .put("deliveries_per_s", round(m.count[0] as f64 / c.duration))
        .latency("", &m.hist[0])
        .latency("pub_lag_", &lag)
        .resources(&a, &b, m.count[0], conns, None);
    put_errors(&mut row, &m);
    row.emit(c.json.as_deref())
}
