//! Example programs for `stomp-broker`, as a library so that
//! `tests/smoke.rs` can run them against an embedded broker:
//!
//! * [`client`] — CONNECT credentials and a `connect` helper over the
//!   workspace's STOMP client crate, `stomp-client`;
//! * [`publisher`] — a backend service that SENDs with receipts and waits
//!   for each RECEIPT (`cargo run -p examples --bin publisher`);
//! * [`subscriber`] — prints what arrives on a destination
//!   (`cargo run -p examples --bin subscriber`);
//! * [`embedded`] — the broker as a library, with in-process publish and
//!   subscribe (`cargo run -p examples --bin embedded`);
//! * [`order`] and [`simulator`] — the order-tracking demo's order-processing
//!   simulator (Kafka `orders` → status steps → Kafka `order-results`);
//! * [`web`] — the static file server for the demo page.
//!
//! `docs/demo.md` describes the demo (`scripts/demo.sh`).

pub mod client;
pub mod embedded;
pub mod order;
pub mod publisher;
pub mod simulator;
pub mod subscriber;
pub mod web;

pub use stomp_broker::shutdown_signal;

/// A cancellation token cancelled by [`shutdown_signal`].
pub fn cancel_on_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        t.cancel();
    });
    token
}

/// Logs to stderr; `RUST_LOG` overrides `default`.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
