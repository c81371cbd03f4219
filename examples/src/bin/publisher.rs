//! A backend service publishing with receipts:
//!
//! ```sh
//! cargo run -p examples --bin publisher -- --addr 127.0.0.1:61613 --destination /topic/order.42 --count 10
//! ```
//!
//! Each SEND waits for its RECEIPT before the next goes out.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use examples::{
    client::Credentials,
    publisher::{publish, PublishOptions},
};

/// SEND messages over STOMP and wait for each RECEIPT.
#[derive(Debug, Parser)]
struct Args {
    /// Broker: `host:port` (STOMP/TCP) or `ws://host:port/ws`.
    #[arg(long, default_value = "127.0.0.1:61613")]
    addr: String,
    /// Destination, e.g. `/topic/order.42`, or `/app/orders` for Kafka.
    #[arg(long, default_value = "/topic/order.42")]
    destination: String,
    /// How many messages.
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Body; `{n}` becomes the sequence number.
    #[arg(long, default_value = r#"{"orderId":"42","seq":{n}}"#)]
    body: String,
    /// `content-type` of the body.
    #[arg(long, default_value = "application/json")]
    content_type: String,
    /// Extra header `name=value` (repeatable), e.g. `kafka-key=42`.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Pause between messages, ms.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// CONNECT `login`.
    #[arg(long)]
    login: Option<String>,
    /// CONNECT `passcode` (password or JWT).
    #[arg(long, env = "STOMP_PASSCODE")]
    passcode: Option<String>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected name=value, got {s:?}"))
}

#[tokio::main]
async fn main() -> Result<()> {
    examples::init_logging("warn");
    let a = Args::parse();
    let opts = PublishOptions {
        addr: a.addr,
        destination: a.destination,
        count: a.count,
        body: a.body,
        content_type: a.content_type,
        headers: a.headers,
        interval: Duration::from_millis(a.interval_ms),
        credentials: Credentials {
            login: a.login,
            passcode: a.passcode,
        },
    };
    let report = publish(&opts, |n, latency| {
        println!(
            "#{n} {} confirmed (RECEIPT after {:.1} ms)",
            opts.destination,
            latency.as_secs_f64() * 1e3
        );
    })
    .await?;
    println!(
        "{} messages confirmed in {:.1} ms (slowest receipt {:.1} ms)",
        report.confirmed,
        report.elapsed.as_secs_f64() * 1e3,
        report.max_receipt_latency.as_secs_f64() * 1e3
    );
    Ok(())
}
