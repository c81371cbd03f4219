//! The broker embedded in an application:
//!
//! ```sh
//! cargo run -p examples --bin embedded                      # ticks on /topic/ticks
//! cargo run -p examples --bin subscriber -- --destination /topic/ticks
//! ```
//!
//! Starts `stomp_broker::Broker` in-process, publishes `{"tick":n}` every
//! second with `core().publish(...)` and reads them back through an
//! in-process subscription, until Ctrl-C.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use examples::embedded::{tick, EmbeddedBroker};
use stomp_broker::Config;

/// Run an embedded broker that publishes ticks.
#[derive(Debug, Parser)]
struct Args {
    /// STOMP/TCP listen address.
    #[arg(long, default_value = "127.0.0.1:61613")]
    stomp_listen: String,
    /// HTTP/WebSocket listen address.
    #[arg(long, default_value = "127.0.0.1:15674")]
    http_listen: String,
    /// Where the ticks go.
    #[arg(long, default_value = "/topic/ticks")]
    destination: String,
    /// Tick interval, ms.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    examples::init_logging("info");
    let a = Args::parse();
    let mut config = Config::default();
    config.listen.stomp = a.stomp_listen;
    config.listen.http = a.http_listen;
    let broker = EmbeddedBroker::start(config).await?;
    println!(
        "embedded broker: stomp {} · websocket {}",
        broker.stomp_addr().unwrap_or_default(),
        broker.ws_url().unwrap_or_default()
    );

    // An in-process subscriber: what a component of the host application
    // would use to observe traffic without a socket.
    let mut local = broker.subscribe_local(&a.destination)?;
    tokio::spawn(async move {
        while let Some(msg) = local.recv().await {
            println!(
                "local subscriber: {} {}",
                msg.destination,
                String::from_utf8_lossy(msg.template.body())
            );
        }
    });

    let cancel = examples::cancel_on_signal();
    let n = tick(
        &broker,
        &a.destination,
        Duration::from_millis(a.interval_ms),
        cancel,
    )
    .await?;
    println!("published {n} ticks; shutting down");
    broker.stop().await;
    Ok(())
}
