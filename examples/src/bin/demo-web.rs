//! Serves the order-tracking demo page (`examples/web/`) and the stomp.js
//! UMD bundle from `tests/interop/node_modules` — no CDN:
//!
//! ```sh
//! cargo run -p examples --bin demo-web -- --listen 127.0.0.1:8080
//! ```

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use examples::web::{bind, WebConfig};

const WEB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/web");
const STOMP_JS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/interop/node_modules/@stomp/stompjs/bundles/stomp.umd.min.js"
);

/// Static server for the demo page.
#[derive(Debug, Parser)]
struct Args {
    /// Listen address (port 0: any free port).
    #[arg(long, env = "DEMO_WEB_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Directory with index.html.
    #[arg(long, default_value = WEB_DIR)]
    web_dir: PathBuf,
    /// The @stomp/stompjs UMD bundle.
    #[arg(long, env = "STOMPJS_BUNDLE", default_value = STOMP_JS)]
    stomp_js: PathBuf,
    /// Write the bound address (`127.0.0.1:PORT`) to this file.
    #[arg(long)]
    port_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    examples::init_logging("info");
    let a = Args::parse();
    let cancel = examples::cancel_on_signal();
    let cfg = WebConfig {
        web_dir: a.web_dir,
        stomp_js: a.stomp_js,
    };
    let (addr, serve) = bind(&a.listen, cfg, cancel).await?;
    if let Some(path) = a.port_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())?;
        std::fs::rename(&tmp, &path)?;
    }
    println!("demo page: http://{addr}/");
    serve.await;
    Ok(())
}
