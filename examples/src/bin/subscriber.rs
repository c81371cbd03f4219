//! Print what arrives on a destination:
//!
//! ```sh
//! cargo run -p examples --bin subscriber -- --destination '/topic/order.*'
//! cargo run -p examples --bin subscriber -- --addr ws://127.0.0.1:15674/ws \
//!     --login alice --destination /user/queue/order-updates
//! ```

use anyhow::Result;
use clap::Parser;
use examples::{
    client::Credentials,
    subscriber::{format_message, subscribe, SubscribeOptions},
};

/// SUBSCRIBE and print every MESSAGE (destination, message-id, body).
#[derive(Debug, Parser)]
struct Args {
    /// Broker: `host:port` (STOMP/TCP) or `ws://host:port/ws`.
    #[arg(long, default_value = "127.0.0.1:61613")]
    addr: String,
    /// Destination, e.g. `/topic/order.*` or `/user/queue/order-updates`.
    #[arg(long, default_value = "/topic/order.#")]
    destination: String,
    /// Exit after this many messages (default: run until Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
    /// CONNECT `login` (in development mode also the user name).
    #[arg(long)]
    login: Option<String>,
    /// CONNECT `passcode` (password or JWT).
    #[arg(long, env = "STOMP_PASSCODE")]
    passcode: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    examples::init_logging("warn");
    let a = Args::parse();
    let opts = SubscribeOptions {
        addr: a.addr,
        destination: a.destination,
        count: a.count,
        credentials: Credentials {
            login: a.login,
            passcode: a.passcode,
        },
    };
    let cancel = examples::cancel_on_signal();
    let n = subscribe(
        &opts,
        cancel,
        || eprintln!("subscribed to {} on {}", opts.destination, opts.addr),
        |m| println!("{}", format_message(m)),
    )
    .await?;
    eprintln!("{n} messages");
    Ok(())
}
