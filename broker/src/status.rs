//! The status page (`GET /`), its JSON (`GET /stats.json`) and the live
//! stats stream on the broker-internal destination [`STATS_DESTINATION`].
//!
//! A background task samples the counters every second (a few atomic
//! loads); the full snapshot, which walks the destination table, is built
//! only when asked for: by `GET /stats.json`, and each second while someone
//! subscribes to `/topic/broker.stats` (the page does, over its own
//! WebSocket). The walk keeps only the busiest destinations as it goes
//! ([`Busiest`]) and, for the stats topic, runs on the blocking pool, so a
//! runtime worker never spends it while deliveries wait.
//!
//! Privacy: user destinations are aggregated (`/user/<name>/rest` counts
//! under `/user/*/rest`), so no user name appears in a snapshot; and
//! `[status]` ([`StatusConfig`]) can restrict the page, `/stats.json`,
//! `/metrics` ([`StatusAccess`]) and the stats topic
//! ([`may_subscribe_stats`]).

use std::{
    collections::{BinaryHeap, HashMap},
    net::IpAddr,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::{json, Value};
use stomp_codec::Headers;

use crate::{config::StatusConfig, core::BrokerCore, router::pattern_matches};

/// Where live stats are published.
pub const STATS_DESTINATION: &str = "/topic/broker.stats";

/// The page itself: plain HTML with a tiny built-in STOMP client (no
/// external assets).
pub const PAGE: &str = include_str!("status.html");

/// The last two counter samples, refreshed by [`run`], for rates.
#[derive(Debug, Default)]
pub struct StatusBoard {
    samples: Mutex<Option<(Sample, Sample)>>,
    access: OnceLock<StatusAccess>,
}

impl StatusBoard {
    /// Who may read the operator endpoints (compiled from `[status]` once).
    pub fn access(&self, config: &StatusConfig) -> &StatusAccess {
        self.access.get_or_init(|| StatusAccess::new(config))
    }

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
    queued: u64,
    delivered: u64,
    bytes_in: u64,
    bytes_out: u64,
}

fn sample(core: &BrokerCore) -> Sample {
    let m = &core.metrics;
    Sample {
        at: Instant::now(),
        published: m.messages_published.load(Relaxed),
        // Queued before delivered: a snapshot never shows more delivered
        // than queued (replays aside).
        queued: m.messages_queued.load(Relaxed),
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
    let mut busiest = Busiest::new(TOP_N);
    core.router
        .for_each_destination(|d, subs, queued| busiest.offer(d, subs, queued));
    let top: Vec<Value> = busiest
        .finish()
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
        let lag_total: i64 = bm.lag_snapshot().values().map(|l| (*l).max(0)).sum();
        json!({
            "state": format!("{:?}", b.state()),
            "records_consumed": bm.records_consumed(),
            "routed": bm.routed(),
            "unroutable": bm.unroutable(),
            "produced": bm.produced(),
            "produce_failures": bm.produce_failures(),
            "lag": lag,
            "lag_total": lag_total,
        })
    });
    json!({
        "server": concat!("stomp-broker/", env!("CARGO_PKG_VERSION")),
        "connections": m.connections.load(Relaxed),
        "subscriptions": m.subscriptions.load(Relaxed),
        "messages_published": now.published,
        "messages_queued": now.queued,
        "messages_delivered": now.delivered,
        "messages_dropped": m.messages_dropped.load(Relaxed),
        "slow_consumer_disconnects": m.slow_consumer_disconnects.load(Relaxed),
        "ready": readiness(core).is_ok(),
        "rate_in_per_s": rate(|s| s.published),
        "rate_out_per_s": rate(|s| s.delivered),
        "bytes_in_per_s": rate(|s| s.bytes_in),
        "bytes_out_per_s": rate(|s| s.bytes_out),
        "retained_destinations": m.retained_destinations.load(Relaxed),
        "top_destinations": top,
        "kafka": kafka,
        "cluster": core.cluster().map(|c| c.json()),
    })
}

/// Whether the broker is ready for traffic, as `GET /readyz` answers it
/// (and the `stomp_ready` gauge shows it): not shutting down; in a cluster,
/// joined at the end of the cluster topic; with a Kafka bridge, connected,
/// partitions assigned, their start positions committed and retained
/// messages rebuilt. `Err` says why not.
pub fn readiness(core: &BrokerCore) -> Result<(), String> {
    if core.draining.load(Relaxed) {
        return Err("shutting down".to_owned());
    }
    if core.config.cluster.enabled && !core.cluster().is_some_and(|c| c.is_joined()) {
        return Err("cluster not joined".to_owned());
    }
    match core.bridge().map(|b| b.readiness()) {
        None | Some(Ok(())) => Ok(()),
        Some(Err(why)) => Err(format!("kafka bridge not ready: {why}")),
    }
}

/// The status part of `/metrics`: `stomp_ready` (1 when [`readiness`] is
/// `Ok`, else 0), so that alerting need not probe `/readyz` separately.
pub fn write_prometheus(core: &BrokerCore, out: &mut String) {
    crate::metrics::PromText::new(out).gauge(
        "stomp_ready",
        "1 when the broker is ready for traffic (GET /readyz answers 200), else 0.",
        i64::from(readiness(core).is_ok()),
    );
}

/// Destinations listed in a snapshot.
const TOP_N: usize = 10;

/// `/user/<name>/<rest>` → `/user/*/<rest>`: how a user destination is
/// shown, so that no user name leaks; other destinations are unchanged.
pub fn public_destination(destination: &str) -> std::borrow::Cow<'_, str> {
    match destination
        .strip_prefix("/user/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((_, tail)) => format!("/user/*/{tail}").into(),
        None => destination.into(),
    }
}

/// The `n` busiest of `all` (destination, subscriptions, queued) after
/// merging user destinations by [`public_destination`] (counts summed):
/// most subscriptions first, then most queued, then by name.
pub fn aggregate_top(all: Vec<(String, usize, usize)>, n: usize) -> Vec<(String, usize, usize)> {
    let mut b = Busiest::new(n);
    for (d, subs, queued) in all {
        b.offer(&d, subs, queued);
    }
    b.finish()
}

/// [`aggregate_top`] as a walk goes: keeps the `n` busiest destinations
/// seen so far in a heap, allocating a name only for one that enters it,
/// plus one entry per merged user destination. A walk over 10,000 topics
/// therefore costs 10,000 comparisons, not 10,000 strings, a hash map and
/// a sort of all of them (which was what the status page cost each second).
#[derive(Debug)]
pub struct Busiest {
    n: usize,
    /// The worst of the kept ones on top.
    heap: BinaryHeap<Ranked>,
    /// `/user/*/<rest>` → summed counts; ranked at [`Busiest::finish`].
    users: HashMap<String, (usize, usize)>,
}

/// Ordered so that "greater" means "less busy": fewer subscriptions, then
/// fewer queued, then a later name.
#[derive(Debug, PartialEq, Eq)]
struct Ranked {
    subs: usize,
    queued: usize,
    name: String,
}

impl Ranked {
    fn cmp_key(&self, subs: usize, queued: usize, name: &str) -> std::cmp::Ordering {
        subs.cmp(&self.subs)
            .then(queued.cmp(&self.queued))
            .then_with(|| self.name.as_str().cmp(name))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.cmp_key(other.subs, other.queued, &other.name)
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Busiest {
    /// Keeps the `n` busiest.
    pub fn new(n: usize) -> Busiest {
        Busiest {
            n,
            heap: BinaryHeap::with_capacity(n.min(1024) + 1),
            users: HashMap::new(),
        }
    }

    /// One destination and its counts (each destination once; user
    /// destinations are merged by their [`public_destination`]).
    pub fn offer(&mut self, destination: &str, subs: usize, queued: usize) {
        match public_destination(destination) {
            std::borrow::Cow::Owned(public) => {
                let e = self.users.entry(public).or_default();
                e.0 += subs;
                e.1 += queued;
            }
            std::borrow::Cow::Borrowed(d) => self.rank(d, subs, queued),
        }
    }

    fn rank(&mut self, name: &str, subs: usize, queued: usize) {
        if self.n == 0 {
            return;
        }
        if self.heap.len() == self.n {
            // Busier than the least busy kept one?
            let beats = self
                .heap
                .peek()
                .is_some_and(|worst| worst.cmp_key(subs, queued, name).is_gt());
            if !beats {
                return;
            }
            self.heap.pop();
        }
        self.heap.push(Ranked {
            subs,
            queued,
            name: name.to_owned(),
        });
    }

    /// The busiest, most first.
    pub fn finish(mut self) -> Vec<(String, usize, usize)> {
        for (d, (subs, queued)) in std::mem::take(&mut self.users) {
            self.rank(&d, subs, queued);
        }
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| (r.name, r.subs, r.queued))
            .collect()
    }
}

/// A network of `[status] allow`: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses `addr/prefix` or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| "not an IP address or CIDR network".to_owned())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("prefix length must be 0-{max}"))?,
    };
    Ok(Cidr {
        addr: addr.to_canonical(),
        prefix,
    })
}

/// Why a request for an operator endpoint is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The client address is not in `status.allow` (HTTP 403).
    Address,
    /// Missing or wrong HTTP Basic credentials (HTTP 401).
    Credentials,
}

/// `[status]` compiled: checks a request's address and `Authorization`.
#[derive(Debug, Clone, Default)]
pub struct StatusAccess {
    allow: Vec<Cidr>,
    /// An `allow` entry did not parse: refuse every address.
    broken: bool,
    /// `base64(user:password)`, what `Authorization: Basic …` must carry.
    basic: Option<String>,
}

impl StatusAccess {
    /// Compiles `config` (checked by `Config::validate`; should an entry
    /// not parse anyway, nobody is allowed: never fail open).
    pub fn new(config: &StatusConfig) -> StatusAccess {
        let parsed: Result<Vec<Cidr>, String> =
            config.allow.iter().map(|n| parse_cidr(n)).collect();
        let (allow, broken) = match parsed {
            Ok(allow) => (allow, false),
            Err(_) => (Vec::new(), true),
        };
        StatusAccess {
            allow,
            broken,
            basic: match (&config.username, &config.password) {
                (Some(u), Some(p)) => Some(base64(format!("{u}:{p}").as_bytes())),
                _ => None,
            },
        }
    }

    /// Whether a client at `peer` presenting `authorization` (the header
    /// value, if any) may read the status page, `/stats.json`, `/metrics`.
    pub fn check(&self, peer: IpAddr, authorization: Option<&[u8]>) -> Result<(), Denied> {
        if self.broken || (!self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(peer))) {
            return Err(Denied::Address);
        }
        let Some(expected) = &self.basic else {
            return Ok(());
        };
        let given = authorization
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .map(|(_, cred)| cred.trim());
        match given {
            Some(cred) if constant_time_eq(cred.as_bytes(), expected.as_bytes()) => Ok(()),
            _ => Err(Denied::Credentials),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Standard base64 with padding (RFC 4648), for HTTP Basic.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether a session of `user` may SUBSCRIBE to `destination` as far as
/// the stats topic is concerned: unrestricted when `[status]` restricts
/// nothing or the destination cannot receive [`STATS_DESTINATION`];
/// otherwise only `status.username` may (nobody when only `allow` is set).
pub fn may_subscribe_stats(config: &StatusConfig, user: Option<&str>, destination: &str) -> bool {
    if !config.is_restricted() {
        return true;
    }
    let receives_stats = destination
        .strip_prefix("/topic/")
        .zip(STATS_DESTINATION.strip_prefix("/topic/"))
        .is_some_and(|(pattern, stats)| pattern_matches(pattern, stats));
    if !receives_stats {
        return true;
    }
    matches!((config.username.as_deref(), user), (Some(ops), Some(u)) if ops == u)
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
            // The snapshot walks every destination: on a blocking-pool
            // thread, so that no runtime worker (on which deliveries run)
            // waits for it.
            let c = core.clone();
            let built =
                tokio::task::spawn_blocking(move || snapshot(&c, Some(&prev), &now).to_string());
            let Ok(text) = built.await else { break };
            let mut h = Headers::new();
            h.push("content-type", "application/json");
            let _ = core.publish(STATS_DESTINATION, h, Bytes::from(text));
        }
        prev = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_destinations_are_aggregated_without_names() {
        let all = vec![
            ("/user/alice/queue/order-updates".to_owned(), 2, 0),
            ("/user/bob/queue/order-updates".to_owned(), 1, 3),
            ("/user/carol/topic/x".to_owned(), 1, 0),
            ("/topic/order.1".to_owned(), 2, 0),
            ("/queue/jobs".to_owned(), 1, 5),
        ];
        let top = aggregate_top(all, 10);
        assert_eq!(
            top,
            vec![
                ("/user/*/queue/order-updates".to_owned(), 3, 3),
                ("/topic/order.1".to_owned(), 2, 0),
                ("/queue/jobs".to_owned(), 1, 5),
                ("/user/*/topic/x".to_owned(), 1, 0),
            ]
        );
        for (d, _, _) in &top {
            for name in ["alice", "bob", "carol"] {
                assert!(!d.contains(name), "{d}");
            }
        }
    }

    #[test]
    fn aggregation_happens_before_the_cut() {
        // 20 users with one subscription each beat a topic with 5.
        let mut all: Vec<_> = (0..20)
            .map(|i| (format!("/user/u{i}/queue/q"), 1, 0))
            .collect();
        all.push(("/topic/busy".to_owned(), 5, 0));
        let top = aggregate_top(all, 1);
        assert_eq!(top, vec![("/user/*/queue/q".to_owned(), 20, 0)]);
    }

    #[test]
    fn walk_keeps_the_same_busiest_as_a_full_sort() {
        // Many ties in both counts, so the name decides often; user
        // destinations spread over several users merge past the cut.
        let mut all: Vec<(String, usize, usize)> = (0..2000usize)
            .map(|i| (format!("/topic/t{}", i * 7919 % 2000), i % 13, i % 3))
            .collect();
        for u in 0..40 {
            all.push((format!("/user/u{u}/queue/q{}", u % 4), 1, u % 2));
        }
        all.push(("/reply-queue/*".to_owned(), 12, 0));
        let naive = |all: &[(String, usize, usize)], n: usize| {
            let mut merged: HashMap<String, (usize, usize)> = HashMap::new();
            for (d, s, q) in all {
                let e = merged
                    .entry(public_destination(d).into_owned())
                    .or_default();
                e.0 += s;
                e.1 += q;
            }
            let mut v: Vec<_> = merged.into_iter().map(|(d, (s, q))| (d, s, q)).collect();
            v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
            v.truncate(n);
            v
        };
        for n in [0, 1, 10, 57, 5000] {
            let mut b = Busiest::new(n);
            for (d, s, q) in &all {
                b.offer(d, *s, *q);
            }
            assert_eq!(b.finish(), naive(&all, n), "n = {n}");
        }
        assert!(naive(&all, 5000)
            .iter()
            .any(|(d, s, q)| d == "/user/*/queue/q1" && (*s, *q) == (10, 10)));
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let lo = parse_cidr("127.0.0.1/32").unwrap();
        assert!(lo.contains("127.0.0.1".parse().unwrap()));
        assert!(lo.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!lo.contains("127.0.0.2".parse().unwrap()));
        let ten = parse_cidr("10.0.0.0/8").unwrap();
        assert!(ten.contains("10.200.1.2".parse().unwrap()));
        assert!(!ten.contains("11.0.0.1".parse().unwrap()));
        assert!(!ten.contains("::1".parse().unwrap()));
        let any = parse_cidr("0.0.0.0/0").unwrap();
        assert!(any.contains("192.0.2.1".parse().unwrap()));
        let v6 = parse_cidr("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(parse_cidr("::1").unwrap().contains("::1".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "host",
            "10.0.0/8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn basic_credentials_and_addresses_are_checked() {
        let cfg = StatusConfig {
            allow: vec!["127.0.0.0/8".into()],
            username: Some("ops".into()),
            password: Some("s3cret".into()),
        };
        let a = StatusAccess::new(&cfg);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        // base64("ops:s3cret")
        assert_eq!(base64(b"ops:s3cret"), "b3BzOnMzY3JldA==");
        assert_eq!(a.check(lo, Some(b"Basic b3BzOnMzY3JldA==")), Ok(()));
        assert_eq!(a.check(lo, Some(b"basic  b3BzOnMzY3JldA== ")), Ok(()));
        assert_eq!(
            a.check(lo, Some(b"Basic b3BzOndyb25n")),
            Err(Denied::Credentials)
        );
        assert_eq!(a.check(lo, Some(b"Bearer x")), Err(Denied::Credentials));
        assert_eq!(a.check(lo, Some(&[0xff, 0xfe])), Err(Denied::Credentials));
        assert_eq!(a.check(lo, None), Err(Denied::Credentials));
        assert_eq!(
            a.check(
                "192.0.2.1".parse().unwrap(),
                Some(b"Basic b3BzOnMzY3JldA==")
            ),
            Err(Denied::Address)
        );
        let broken = StatusAccess::new(&StatusConfig {
            allow: vec!["not-a-network".into()],
            ..StatusConfig::default()
        });
        assert_eq!(broken.check(lo, None), Err(Denied::Address));
        let open = StatusAccess::new(&StatusConfig::default());
        assert_eq!(open.check("192.0.2.1".parse().unwrap(), None), Ok(()));
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn stats_topic_subscriptions_follow_the_status_restriction() {
        let open = StatusConfig::default();
        assert!(may_subscribe_stats(&open, None, STATS_DESTINATION));
        let creds = StatusConfig {
            allow: vec![],
            username: Some("ops".into()),
            password: Some("pw".into()),
        };
        for d in [
            STATS_DESTINATION,
            "/topic/#",
            "/topic/broker.*",
            "/topic/*.stats",
        ] {
            assert!(may_subscribe_stats(&creds, Some("ops"), d), "{d}");
            assert!(!may_subscribe_stats(&creds, Some("alice"), d), "{d}");
            assert!(!may_subscribe_stats(&creds, None, d), "{d}");
        }
        for d in [
            "/topic/order.1",
            "/topic/broker.other",
            "/queue/broker.stats",
        ] {
            assert!(may_subscribe_stats(&creds, Some("alice"), d), "{d}");
        }
        let only_net = StatusConfig {
            allow: vec!["127.0.0.1/32".into()],
            ..StatusConfig::default()
        };
        assert!(!may_subscribe_stats(
            &only_net,
            Some("ops"),
            STATS_DESTINATION
        ));
    }
}
