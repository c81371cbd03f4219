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

pub mod acl;
pub mod app_http;
pub mod auth;
pub mod budget;
pub mod cluster;
pub mod cluster_queues;
pub mod config;
pub mod connection;
pub mod core;
pub mod http;
pub mod metrics;
pub mod outbound;
pub mod output;
pub mod replay;
pub mod retain;
pub mod router;
pub mod session;
pub mod sockjs;
pub mod status;
pub mod tls;
pub mod transport;
pub mod watchdog;
pub mod wildcard;

use std::{net::SocketAddr, sync::atomic::Ordering::Relaxed, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use crate::{config::Config, core::BrokerCore};
use crate::{connection::ConnInfo, transport::StreamTransport};

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: the signals that start a
/// graceful shutdown (used by the binary and by embedders).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound, running broker.
#[derive(Debug)]
pub struct Broker {
    core: Arc<BrokerCore>,
    tracker: TaskTracker,
    addrs: Addrs,
}

/// The addresses the broker's listeners are bound to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Addrs {
    /// STOMP over TCP.
    pub stomp: Option<SocketAddr>,
    /// HTTP and WebSocket.
    pub http: Option<SocketAddr>,
    /// STOMP over TLS.
    pub stomp_tls: Option<SocketAddr>,
    /// HTTPS and secure WebSocket.
    pub https: Option<SocketAddr>,
}

#[derive(Clone, Copy)]
enum Listener {
    Stomp,
    Http,
    StompTls,
    Https,
}

/// Delivers Kafka records into the router (the bridge's sink).
struct CoreSink(std::sync::Weak<BrokerCore>);

impl kafka_bridge::Sink for CoreSink {
    /// `Err(NotAccepting)` — the bridge pauses the partition and does not store
    /// the offset — while shutting down and when the router says the
    /// broker is only full now ([`router::RouteError::is_retryable`]: a
    /// `reject-publish` queue at its limit); any other refusal is final:
    /// counted, logged, `Ok` (the record is skipped).
    fn publish(&self, msg: kafka_bridge::BridgeMessage) -> Result<(), kafka_bridge::NotAccepting> {
        let Some(core) = self.0.upgrade() else {
            return Err(kafka_bridge::NotAccepting);
        };
        if core.draining.load(Relaxed) {
            return Err(kafka_bridge::NotAccepting);
        }
        let mut headers = stomp_codec::Headers::with_capacity(msg.headers.len());
        for (n, v) in msg.headers {
            headers.push(n, v);
        }
        let retain = msg.retain.map(|r| retain::RetainPolicy {
            last_n: r.last_n,
            ttl: r.ttl,
        });
        match core.publish_retained(&msg.destination, headers, msg.body, retain) {
            Ok(_) => Ok(()),
            Err(e) if e.is_retryable() => Err(kafka_bridge::NotAccepting),
            Err(e) => {
                core.metrics.messages_dropped.fetch_add(1, Relaxed);
                tracing::warn!(destination = %msg.destination, error = %e, "bridge message not routable");
                Ok(())
            }
        }
    }

    /// The frame and body limits a client's SEND is held to.
    fn max_message_bytes(&self) -> Option<usize> {
        let core = self.0.upgrade()?;
        let l = &core.config.limits;
        Some(l.max_frame_bytes.min(l.max_body_bytes))
    }

    fn rebuild_started(&self) {
        if let Some(core) = self.0.upgrade() {
            core.rebuild_started();
        }
    }

    fn rebuild_finished(&self) {
        if let Some(core) = self.0.upgrade() {
            core.rebuild_finished();
        }
    }

    fn retain_only(&self, msg: kafka_bridge::BridgeMessage) {
        let (Some(core), Some(r)) = (self.0.upgrade(), msg.retain) else {
            return;
        };
        let mut headers = stomp_codec::Headers::with_capacity(msg.headers.len());
        for (n, v) in msg.headers {
            headers.push(n, v);
        }
        let policy = retain::RetainPolicy {
            last_n: r.last_n,
            ttl: r.ttl,
        };
        if let Err(e) = core.retain_only(&msg.destination, headers, msg.body, policy) {
            tracing::warn!(destination = %msg.destination, error = %e, "rebuilt bridge message not retained");
        }
    }
}

impl Broker {
    /// Binds the configured listeners and starts serving (and the Kafka
    /// bridge, when configured). Shuts down when `shutdown` is cancelled;
    /// then [`Broker::wait`] drains.
    pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Broker> {
        let core = BrokerCore::new(config, shutdown)?;
        let tracker = TaskTracker::new();
        let listen = core.config.listen.clone();
        let tls = if listen.stomp_tls.is_empty() && listen.https.is_empty() {
            None
        } else {
            Some(tls::acceptor(&core.config.tls)?)
        };
        let mut addrs = Addrs::default();
        for (addr, kind, slot) in [
            (&listen.stomp, Listener::Stomp, &mut addrs.stomp),
            (&listen.http, Listener::Http, &mut addrs.http),
            (&listen.stomp_tls, Listener::StompTls, &mut addrs.stomp_tls),
            (&listen.https, Listener::Https, &mut addrs.https),
        ] {
            if addr.is_empty() {
                continue;
            }
            let l =
                bind(addr, listen.backlog).map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
            *slot = Some(l.local_addr()?);
            tracker.spawn(accept_loop(
                core.clone(),
                l,
                tracker.clone(),
                kind,
                tls.clone(),
            ));
        }
        let node_id = core.config.cluster.enabled.then(|| {
            core.config
                .cluster
                .node_id
                .clone()
                .unwrap_or_else(|| cluster::default_node_id(addrs.stomp.map(|a| a.port())))
        });
        if let Some(mut kafka) = core.config.kafka.clone().filter(|k| !k.brokers.is_empty()) {
            if let Some(node) = &node_id {
                // Every node reads the routed topics in its own group, stable
                // across its restarts: `<kafka.group_id>.<node_id>`.
                kafka.group_id = Some(format!("{}.{node}", kafka.effective_group_id()));
            }
            let sink = Arc::new(CoreSink(Arc::downgrade(&core)));
            let bridge = kafka_bridge::Bridge::start(kafka, sink, core.shutdown.child_token())
                .map_err(|e| anyhow::anyhow!("Kafka bridge: {e}"))?;
            core.set_bridge(bridge);
        }
        if let Some(node) = node_id {
            // Joins in the background: `/readyz` says 503 until joined.
            let c = cluster::Cluster::start(&core, node, core.shutdown.child_token())
                .map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
            core.set_cluster(c);
        }
        if core.config.listen.status_page {
            tracker.spawn(status::run(core.clone()));
        }
        tracker.spawn(watchdog::run(core.metrics.clone(), core.shutdown.clone()));
        if let Some(path) = &listen.port_file {
            let json = serde_json::json!({
                "stomp": addrs.stomp.map(|a| a.to_string()),
                "http": addrs.http.map(|a| a.to_string()),
                "stomp_tls": addrs.stomp_tls.map(|a| a.to_string()),
                "https": addrs.https.map(|a| a.to_string()),
            });
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, json.to_string())?;
            std::fs::rename(&tmp, path)?;
        }
        tracing::info!(
            stomp = ?addrs.stomp,
            http = ?addrs.http,
            stomp_tls = ?addrs.stomp_tls,
            https = ?addrs.https,
            ws_path = %listen.ws_path,
            kafka = core.bridge().is_some(),
            cluster = core.cluster().map(|c| c.node_id()),
            "stomp-broker listening"
        );
        Ok(Broker {
            core,
            tracker,
            addrs,
        })
    }

    /// Shared state: in-process publish/subscribe, metrics, router.
    pub fn core(&self) -> &Arc<BrokerCore> {
        &self.core
    }

    /// The bound addresses.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// The bound STOMP/TCP address.
    pub fn stomp_addr(&self) -> Option<SocketAddr> {
        self.addrs.stomp
    }

    /// The bound HTTP/WebSocket address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.addrs.http
    }

    /// Waits for shutdown, then for connections to finish (at most
    /// `shutdown_timeout_ms`), then for the Kafka bridge to commit and leave
    /// its group.
    pub async fn wait(self) {
        self.core.shutdown.cancelled().await;
        self.core.draining.store(true, Relaxed);
        if let Some(c) = self.core.cluster() {
            c.leave(Duration::from_millis(
                self.core.config.shutdown_timeout_ms.min(2_000),
            ));
        }
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
        if let Some(bridge) = self.core.bridge() {
            if tokio::time::timeout(limit, bridge.closed()).await.is_err() {
                tracing::warn!("Kafka bridge did not close within the shutdown timeout");
            }
        }
        tracing::info!("stomp-broker stopped");
    }
}

/// Options of every accepted connection: no Nagle delay, and TCP keepalive
/// so half-open peers (gone without FIN) are found even when no heart-beats
/// were negotiated. Best effort: a refused option is not a reason to drop
/// a listener or a connection.
fn tune_accepted(socket: &socket2::Socket) {
    let _ = socket.set_tcp_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let _ = socket.set_tcp_keepalive(&keepalive);
}

/// Applies [`tune_accepted`] to an accepted stream where the system does
/// not copy the listener's options to it (everywhere but Linux).
fn tune_if_not_inherited(stream: &tokio::net::TcpStream) {
    if !cfg!(target_os = "linux") {
        tune_accepted(&socket2::SockRef::from(stream));
    }
}

/// A listening socket with an explicit backlog (tokio's `bind` uses 128,
/// so a burst of connects waits out SYN retries).
fn bind(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's `bind` does: restart without waiting out TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    // Linux copies these to every socket `accept` returns (one call each
    // here instead of five per connection); elsewhere `accept_loop` sets them.
    if cfg!(target_os = "linux") {
        tune_accepted(&socket);
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    core: Arc<BrokerCore>,
    listener: TcpListener,
    tracker: TaskTracker,
    kind: Listener,
    tls: Option<TlsAcceptor>,
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
        tune_if_not_inherited(&stream);
        let core = core.clone();
        // HTTP sockets hold a connection slot from accept on, idle or not;
        // a WebSocket session keeps its socket's slot.
        let http_admission = match kind {
            Listener::Http | Listener::Https => match core.admit(peer.ip()) {
                Ok(g) => Some(g),
                Err(reason) => {
                    tracing::debug!(%peer, reason, "HTTP connection refused");
                    if let Listener::Http = kind {
                        tracker.spawn(async move {
                            let mut stream = stream;
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                stream.write_all(http::refusal(reason).as_bytes()),
                            )
                            .await;
                        });
                    }
                    continue;
                }
            },
            _ => None,
        };
        match (kind, tls.clone(), http_admission) {
            (Listener::Stomp, _, _) => {
                tracker.spawn(serve_stomp(core, stream, peer, "tcp"));
            }
            (Listener::Http, _, Some(admission)) => {
                tracker.spawn(http::serve_http(
                    core,
                    stream,
                    peer,
                    tracker.clone(),
                    "ws",
                    admission,
                ));
            }
            (Listener::StompTls, Some(acceptor), _) => {
                tracker.spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => serve_stomp(core, s, peer, "tls").await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            (Listener::Https, Some(acceptor), Some(admission)) => {
                let tracker2 = tracker.clone();
                tracker.spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => {
                            http::serve_http(core, s, peer, tracker2, "wss", admission).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            _ => {}
        }
    }
}

async fn serve_stomp<S>(
    core: Arc<BrokerCore>,
    mut stream: S,
    peer: SocketAddr,
    transport: &'static str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let admission = match core.admit(peer.ip()) {
        Ok(g) => g,
        Err(reason) => {
            core.metrics.error("connection_limit");
            let refusal = format!("ERROR\nmessage:{reason}\ncontent-type:text/plain\n\nConnection refused: {reason}.\0");
            let _ =
                tokio::time::timeout(Duration::from_secs(1), stream.write_all(refusal.as_bytes()))
                    .await;
            return;
        }
    };
    let info = ConnInfo {
        peer,
        transport,
        url_token: None,
        admission,
    };
    connection::serve(core, StreamTransport::new(stream), info).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted sockets carry TCP_NODELAY and the keepalive settings,
    /// whether inherited from the listener (Linux) or set per connection.
    #[tokio::test]
    async fn accepted_sockets_have_nodelay_and_keepalive() {
        let listener = bind("127.0.0.1:0", 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        // What `accept_loop` does with every accepted stream.
        tune_if_not_inherited(&stream);
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.tcp_nodelay().unwrap(), "TCP_NODELAY");
        assert!(sock.keepalive().unwrap(), "SO_KEEPALIVE");
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
    }
}
