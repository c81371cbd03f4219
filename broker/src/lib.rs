//! `stomp-broker`: a standalone STOMP 1.0/1.1/1.2 broker over WebSocket and
//! TCP.
//!
//! * [`session`] — the protocol state machine (frames in, frames out).
//! * [`connection`] — the per-connection task driving a session over a
//!   [`transport::Transport`].
//! * [`router`] — destinations, subscriptions, fan-out.
//! * [`core`] — shared state and the in-process publish/subscribe API.
//! * [`Broker`] — binds the listeners and runs until shutdown.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod conn;
pub mod connection;
pub mod core;
pub mod http;
pub mod metrics;
pub mod retain;
pub mod router;
pub mod session;
pub mod transport;

use std::{net::SocketAddr, sync::atomic::Ordering::Relaxed, sync::Arc, time::Duration};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::transport::StreamTransport;
pub use crate::{config::Config, core::BrokerCore};

/// A bound, running broker.
#[derive(Debug)]
pub struct Broker {
    core: Arc<BrokerCore>,
    tracker: TaskTracker,
    stomp_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
}

impl Broker {
    /// Binds the configured listeners and starts serving. Shuts down when
    /// `shutdown` is cancelled; then [`Broker::wait`] drains.
    pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Broker> {
        let core = BrokerCore::new(config, shutdown)?;
        let tracker = TaskTracker::new();
        let mut stomp_addr = None;
        let mut http_addr = None;
        if !core.config.listen.stomp.is_empty() {
            let l = TcpListener::bind(&core.config.listen.stomp)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("binding STOMP listener {}: {e}", core.config.listen.stomp)
                })?;
            stomp_addr = Some(l.local_addr()?);
            tracker.spawn(accept_loop(
                core.clone(),
                l,
                tracker.clone(),
                Listener::Stomp,
            ));
        }
        if !core.config.listen.http.is_empty() {
            let l = TcpListener::bind(&core.config.listen.http)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("binding HTTP listener {}: {e}", core.config.listen.http)
                })?;
            http_addr = Some(l.local_addr()?);
            tracker.spawn(accept_loop(
                core.clone(),
                l,
                tracker.clone(),
                Listener::Http,
            ));
        }
        if let Some(path) = &core.config.listen.port_file {
            let json = serde_json::json!({
                "stomp": stomp_addr.map(|a| a.to_string()),
                "http": http_addr.map(|a| a.to_string()),
            });
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, json.to_string())?;
            std::fs::rename(&tmp, path)?;
        }
        tracing::info!(
            stomp = ?stomp_addr,
            http = ?http_addr,
            ws_path = %core.config.listen.ws_path,
            "stomp-broker listening"
        );
        Ok(Broker {
            core,
            tracker,
            stomp_addr,
            http_addr,
        })
    }

    /// Shared state: in-process publish/subscribe, metrics, router.
    pub fn core(&self) -> &Arc<BrokerCore> {
        &self.core
    }

    /// The bound STOMP/TCP address.
    pub fn stomp_addr(&self) -> Option<SocketAddr> {
        self.stomp_addr
    }

    /// The bound HTTP/WebSocket address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Waits for shutdown, then for connections to finish, at most
    /// `shutdown_timeout_ms` after shutdown began.
    pub async fn wait(self) {
        self.core.shutdown.cancelled().await;
        self.core.draining.store(true, Relaxed);
        self.tracker.close();
        let limit = Duration::from_millis(self.core.config.shutdown_timeout_ms);
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.core.metrics.connections.load(Relaxed),
                "shutdown timeout reached; closing remaining connections"
            );
        }
        tracing::info!("stomp-broker stopped");
    }
}

#[derive(Clone, Copy)]
enum Listener {
    Stomp,
    Http,
}

async fn accept_loop(
    core: Arc<BrokerCore>,
    listener: TcpListener,
    tracker: TaskTracker,
    kind: Listener,
) {
    loop {
        let accepted = tokio::select! {
            _ = core.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match kind {
            Listener::Stomp => {
                tracker.spawn(serve_tcp(core.clone(), stream, peer));
            }
            Listener::Http => {
                tracker.spawn(http::serve_http(
                    core.clone(),
                    stream,
                    peer,
                    tracker.clone(),
                ));
            }
        }
    }
}

async fn serve_tcp(core: Arc<BrokerCore>, mut stream: TcpStream, peer: SocketAddr) {
    if core.metrics.connections.load(Relaxed) >= core.config.limits.max_connections as i64 {
        core.metrics.connections_rejected.fetch_add(1, Relaxed);
        core.metrics.error("connection_limit");
        const REFUSAL: &[u8] = b"ERROR\nmessage:too many connections\ncontent-type:text/plain\n\nThe server's connection limit is reached.\0";
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(REFUSAL)).await;
        return;
    }
    connection::serve(core, StreamTransport::tcp(stream), peer, "tcp").await;
}
