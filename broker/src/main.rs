//! `stomp-broker`: run the broker with embedded defaults, a TOML file,
//! environment variables or flags (`stomp-broker --help`).

use clap::Parser;
use stomp_broker::{
    config::{Args, LogFormat},
    Broker,
};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// mimalloc: the broker allocates on one worker and frees on another all the
/// time (a message is built by its publisher's task and dropped by its
/// subscribers'); glibc's malloc pays for that in `_int_malloc`/`_int_free`
/// (8 % of the broker's time in the S2 profile, docs/benchmarks.md).
/// The `system-alloc` feature keeps the system allocator instead, so heap
/// profilers that hook `malloc` (heaptrack) see every allocation.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.hash_password {
        let mut password = String::new();
        std::io::stdin().read_line(&mut password)?;
        println!(
            "{}",
            stomp_broker::auth::hash_password(password.trim_end_matches(['\r', '\n']))?
        );
        return Ok(());
    }
    let config = args.into_config()?;
    let filter = EnvFilter::try_new(&config.log.level)?;
    match config.log.format {
        LogFormat::Human => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let broker = Broker::start(config, shutdown.clone()).await?;
        tokio::spawn(async move {
            stomp_broker::shutdown_signal().await;
            tracing::info!("shutdown signal received");
            shutdown.cancel();
        });
        broker.wait().await;
        anyhow::Ok(())
    })?;
    // Don't wait for stragglers beyond the shutdown timeout.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}
