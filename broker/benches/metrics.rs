//! Cost of a hot-path counter increment: one shared `AtomicU64` (what the
//! per-delivery counters were) against a [`ShardedCounter`], on one thread
//! and with four threads counting at once (the contended case a broker on
//! many cores hits for every delivery).
//!
//!     cargo bench -p stomp-broker --bench metrics

use std::{
    hint::black_box,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Barrier,
    },
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion};
use stomp_broker::metrics::ShardedCounter;

const THREADS: usize = 4;

/// Time for `iters` increments on each of `THREADS` threads at once.
fn contended(iters: u64, add: &(dyn Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        add();
                    }
                    t.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .max()
            .unwrap_or_default()
    })
}

fn increments(c: &mut Criterion) {
    let mut g = c.benchmark_group("counter_increment");
    let atomic = AtomicU64::new(0);
    let sharded = ShardedCounter::default();
    g.bench_function("atomic_1_thread", |b| {
        b.iter(|| atomic.fetch_add(black_box(1), Relaxed))
    });
    g.bench_function("sharded_1_thread", |b| {
        b.iter(|| sharded.fetch_add(black_box(1), Relaxed))
    });
    g.bench_function("atomic_4_threads", |b| {
        b.iter_custom(|iters| {
            contended(iters, &|| {
                atomic.fetch_add(black_box(1), Relaxed);
            })
        })
    });
    g.bench_function("sharded_4_threads", |b| {
        b.iter_custom(|iters| {
            contended(iters, &|| {
                sharded.fetch_add(black_box(1), Relaxed);
            })
        })
    });
    g.bench_function("sharded_read", |b| b.iter(|| sharded.load(Relaxed)));
    g.finish();
}

criterion_group!(benches, increments);
criterion_main!(benches);
