//! `bare-fanout`: the bare tokio + tokio-tungstenite fan-out that S1 is
//! measured against (issue 15): no STOMP, no router, no budgets. Every
//! WebSocket data message a connection sends is forwarded, as the same
//! bytes, to every other connection. `loadgen s1 --bare` drives it: its
//! publisher sends ready-made MESSAGE frames (the bytes stomp-broker would
//! deliver in S1), so the wire bytes per delivery match the broker's.
//!
//! Same runtime shape as `stomp-broker` (multi-threaded tokio runtime with
//! the default worker count, i.e. one worker when pinned to one CPU;
//! mimalloc), same WebSocket buffer settings, `TCP_NODELAY`. One task per
//! connection with one `select!` over the socket and its queue, as in the
//! broker; writes are batched the usual way (`feed` what is queued,
//! `flush` once). Every queue is bounded: a delivery that finds a full
//! queue is dropped and counted (the load generator reports it as lost).
//!
//! Fan-out (`--fanout`): `mpsc` pushes each message into a bounded
//! per-connection channel (the broker's shape); `broadcast` appends it once
//! to a `tokio::sync::broadcast` ring that every connection reads with its
//! own cursor. Framing (`--batch`): off, one WebSocket message per delivery
//! (the honest bare baseline); on, everything one write takes is sent as a
//! single WebSocket message, as stomp-broker packs frames by default.
//!
//! Loopback only. `bare-fanout --help` for the flags.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{broadcast, mpsc},
};
use tokio_tungstenite::{
    accept_hdr_async_with_config,
    tungstenite::{
        handshake::server::{ErrorResponse, Request, Response},
        http::HeaderValue,
        protocol::WebSocketConfig,
        Message,
    },
    WebSocketStream,
};

/// Same allocator as stomp-broker, so the comparison is of the code.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bare WebSocket fan-out server (no STOMP): the S1 baseline.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Listen address (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write `{"http":"127.0.0.1:P"}` here once listening (what
    /// `loadgen --port-file` reads).
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// How a message reaches the connections.
    #[arg(long, value_enum, default_value = "mpsc")]
    fanout: Fanout,
    /// Send everything one write takes as one WebSocket message.
    #[arg(long)]
    batch: bool,
    /// Queue bound per connection (messages).
    #[arg(long, default_value_t = 4096)]
    capacity: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Fanout {
    /// A bounded `mpsc` channel per connection; the publisher pushes to each.
    Mpsc,
    /// One `tokio::sync::broadcast` ring; each connection keeps a cursor.
    Broadcast,
}

/// Largest write gathered from the queue before flushing (the broker's
/// `MAX_BATCH_BYTES`).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Connections to forward to, replaced whole (copy on write) when one
/// joins or leaves, so a publisher clones an `Arc` and walks it unlocked.
type Peers = Arc<Vec<(u64, mpsc::Sender<Bytes>)>>;

struct Hub {
    fanout: Fanout,
    batch: bool,
    capacity: usize,
    peers: Mutex<Peers>,
    ring: broadcast::Sender<(u64, Bytes)>,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

impl Hub {
    fn peers(&self) -> Peers {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn edit_peers(&self, f: impl FnOnce(&mut Vec<(u64, mpsc::Sender<Bytes>)>)) {
        let mut guard = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = guard.as_ref().clone();
        f(&mut v);
        *guard = Arc::new(v);
    }

    /// Forwards `bytes` from connection `from` to every other connection.
    fn publish(&self, from: u64, bytes: Bytes) {
        match self.fanout {
            Fanout::Mpsc => {
                for (id, tx) in self.peers().iter() {
                    if *id != from && tx.try_send(bytes.clone()).is_err() {
                        self.dropped.fetch_add(1, Relaxed);
                    }
                }
            }
            Fanout::Broadcast => {
                let _ = self.ring.send((from, bytes));
            }
        }
    }
}

/// A connection's queue, whichever way it is fed.
enum Inbox {
    Mpsc(mpsc::Receiver<Bytes>),
    Broadcast(broadcast::Receiver<(u64, Bytes)>),
}

impl Inbox {
    /// The next message for connection `me` (`None`: the hub is gone).
    async fn recv(&mut self, me: u64, hub: &Hub) -> Option<Bytes> {
        match self {
            Inbox::Mpsc(rx) => rx.recv().await,
            Inbox::Broadcast(rx) => loop {
                match rx.recv().await {
                    Ok((from, b)) if from != me => return Some(b),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        hub.dropped.fetch_add(n, Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            },
        }
    }

    /// A message already queued, without waiting.
    fn try_recv(&mut self, me: u64, hub: &Hub) -> Option<Bytes> {
        match self {
            Inbox::Mpsc(rx) => rx.try_recv().ok(),
            Inbox::Broadcast(rx) => loop {
                match rx.try_recv() {
                    Ok((from, b)) if from != me => return Some(b),
                    Ok(_) => continue,
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        hub.dropped.fetch_add(n, Relaxed);
                    }
                    Err(_) => return None,
                }
            },
        }
    }
}

fn ws_config() -> WebSocketConfig {
    // stomp-broker's `ws_config` with its defaults.
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(2 * 1024 * 1024))
        .max_frame_size(Some(2 * 1024 * 1024))
}

/// Answers the upgrade with `v12.stomp` when offered, as the broker would
/// (the load generator's client insists on a subprotocol it asked for).
#[allow(clippy::result_large_err)]
fn pick_protocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == "v12.stomp"));
    if offered {
        resp.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("v12.stomp"),
        );
    }
    Ok(resp)
}

async fn serve(hub: Arc<Hub>, stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut ws = accept_hdr_async_with_config(stream, pick_protocol, Some(ws_config())).await?;
    let me = hub.next_id.fetch_add(1, Relaxed);
    let mut inbox = match hub.fanout {
        Fanout::Mpsc => {
            let (tx, rx) = mpsc::channel(hub.capacity);
            hub.edit_peers(|v| v.push((me, tx)));
            Inbox::Mpsc(rx)
        }
        Fanout::Broadcast => Inbox::Broadcast(hub.ring.subscribe()),
    };
    // Registered: tell the client it may count on deliveries from now on.
    ws.send(Message::Binary(Bytes::new())).await?;
    let result = run(&hub, me, &mut ws, &mut inbox).await;
    if hub.fanout == Fanout::Mpsc {
        hub.edit_peers(|v| v.retain(|(id, _)| *id != me));
    }
    result
}

async fn run(
    hub: &Hub,
    me: u64,
    ws: &mut WebSocketStream<TcpStream>,
    inbox: &mut Inbox,
) -> Result<()> {
    let mut packed = BytesMut::new();
    loop {
        tokio::select! {
            biased;
            msg = ws.next() => match msg {
                None | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(Message::Binary(b))) => hub.publish(me, b),
                Some(Ok(Message::Text(t))) => hub.publish(me, t.into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            },
            first = inbox.recv(me, hub) => {
                let Some(first) = first else { return Ok(()) };
                let mut bytes = 0;
                let mut next = Some(first);
                while let Some(b) = next.take() {
                    bytes += b.len();
                    if hub.batch {
                        packed.extend_from_slice(&b);
                    } else {
                        ws.feed(Message::Binary(b)).await?;
                    }
                    if bytes >= MAX_BATCH_BYTES {
                        break;
                    }
                    next = inbox.try_recv(me, hub);
                }
                if hub.batch {
                    ws.feed(Message::Binary(packed.split().freeze())).await?;
                }
                ws.flush().await?;
            }
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        bail!("{}: loopback addresses only", args.listen);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        if let Some(pf) = &args.port_file {
            std::fs::write(pf, format!("{{\"http\":\"{addr}\"}}"))
                .with_context(|| format!("{}", pf.display()))?;
        }
        eprintln!(
            "bare-fanout: listening on {addr} (fanout {:?}, batch {})",
            args.fanout, args.batch
        );
        let hub = Arc::new(Hub {
            fanout: args.fanout,
            batch: args.batch,
            capacity: args.capacity.max(1),
            peers: Mutex::new(Arc::new(Vec::new())),
            ring: broadcast::channel(args.capacity.max(1)).0,
            next_id: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = accepted?;
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        let _ = serve(hub, stream).await;
                    });
                }
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        eprintln!(
            "bare-fanout: dropped {} deliveries (full queues)",
            hub.dropped.load(Relaxed)
        );
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}
