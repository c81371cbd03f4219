//! Cost of finding the wildcard subscriptions a published topic matches,
//! with 100 / 1,000 / 10,000 wildcard subscriptions that do not match it:
//! the trie ([`PatternIndex`]) must stay flat, the old linear scan (kept
//! here only, for comparison) grows with the count.
//!
//!     cargo bench -p stomp-broker --bench wildcard

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use stomp_broker::{router::pattern_matches, wildcard::PatternIndex};

/// The old router: every wildcard pattern tested against every publish.
fn linear_scan(subs: &[(Box<str>, u64)], topic: &str) -> Vec<u64> {
    subs.iter()
        .filter(|(p, _)| pattern_matches(p, topic))
        .map(|(_, s)| *s)
        .collect()
}

fn patterns(non_matching: usize) -> Vec<(Box<str>, u64)> {
    // `order.<id>.*` for ids the published topic never uses, plus the
    // ten that match it: `order.hit.*` and `order.#`.
    let mut v: Vec<(Box<str>, u64)> = (0..non_matching)
        .map(|i| (format!("order.{i}.*").into(), i as u64))
        .collect();
    for i in 0..5 {
        v.push(("order.hit.*".into(), 1_000_000 + i));
        v.push(("order.#".into(), 2_000_000 + i));
    }
    v
}

fn lookup(c: &mut Criterion) {
    let topic = "order.hit.created";
    let mut g = c.benchmark_group("wildcard_lookup");
    for n in [100usize, 1_000, 10_000] {
        let subs = patterns(n);
        let idx = PatternIndex::default();
        for (p, s) in &subs {
            idx.insert(p, *s);
        }
        let found = |t: &str| idx.matches(t).iter().map(|l| l.len()).sum::<usize>();
        assert_eq!(found(topic), 10);
        assert_eq!(linear_scan(&subs, topic).len(), 10);
        g.bench_with_input(BenchmarkId::new("trie", n), &n, |b, _| {
            b.iter(|| found(black_box(topic)))
        });
        // Each lookup a different topic (S8 publishes round-robin over its
        // ids): the same cost, there is no per-topic cache to miss.
        let topics: Vec<String> = (0..n).map(|i| format!("order.{i}.created")).collect();
        let mut k = 0;
        g.bench_with_input(BenchmarkId::new("trie_rotating_topics", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % topics.len();
                found(black_box(&topics[k]))
            })
        });
        g.bench_with_input(BenchmarkId::new("linear_scan", n), &n, |b, _| {
            b.iter(|| linear_scan(black_box(&subs), black_box(topic)).len())
        });
    }
    g.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
