//! Test support: an in-process broker on `127.0.0.1:0` and a small STOMP
//! client over TCP or WebSocket that speaks raw frames, so tests can send
//! exactly what they mean (including malformed input).
//!
//! The raw [`Client`] is a thin layer over the transport of the workspace's
//! client crate (`stomp_client::transport`: TCP and WebSocket connection,
//! reads, text/binary writes, close codes) plus a frame decoder it owns, so
//! hostile tests keep byte-level control. Tests of ordinary client
//! behaviour can use the full client instead: [`TestBroker::stomp_client`].

pub mod kafka;

use std::{net::SocketAddr, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use stomp_broker::{Broker, BrokerCore, Config};
use stomp_client::transport::{Endpoint, Incoming, Transport, TransportOptions};
use stomp_codec::{encode, Command, Decoded, Decoder, Frame, Limits, Version};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

/// How long tests wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// A broker running in this process on ephemeral ports.
pub struct TestBroker {
    /// STOMP/TCP address.
    pub stomp: SocketAddr,
    /// HTTP/WebSocket address.
    pub http: SocketAddr,
    /// Shared state (metrics, in-process API).
    pub core: std::sync::Arc<BrokerCore>,
    /// Cancel to shut down.
    pub shutdown: CancellationToken,
    waiter: Option<tokio::task::JoinHandle<()>>,
}

impl TestBroker {
    /// Starts a broker with defaults changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
        let mut config = Config::default();
        config.listen.stomp = "127.0.0.1:0".into();
        config.listen.http = "127.0.0.1:0".into();
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let broker = Broker::start(config, shutdown.clone())
            .await
            .expect("broker starts");
        let stomp = broker.stomp_addr().expect("stomp listener");
        let http = broker.http_addr().expect("http listener");
        let core = broker.core().clone();
        let waiter = tokio::spawn(broker.wait());
        TestBroker {
            stomp,
            http,
            core,
            shutdown,
            waiter: Some(waiter),
        }
    }

    /// Starts a broker with the default configuration.
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    /// The WebSocket URL of the STOMP endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// A TCP client, connected at the STOMP level with `accept-version:1.2`.
    pub async fn tcp_client(&self) -> Client {
        let mut c = Client::tcp(self.stomp).await.expect("tcp connect");
        c.connect_default().await.expect("CONNECTED");
        c
    }

    /// A WebSocket client, connected at the STOMP level.
    pub async fn ws_client(&self) -> Client {
        let mut c = Client::ws(&self.ws_url()).await.expect("ws connect");
        c.connect_default().await.expect("CONNECTED");
        c
    }

    /// Shuts down and waits for the drain to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(w) = self.waiter.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), w).await;
        }
    }

    /// GET a path on the HTTP port; returns (status, body).
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.http, path).await
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Minimal HTTP/1.1 GET for health and metrics checks.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad response: {text}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

/// One thing read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A frame.
    Frame(Frame),
    /// A heart-beat EOL.
    HeartBeat,
    /// The connection closed (for WebSocket: the close code, if any).
    Closed(Option<u16>),
}

/// A raw STOMP test client.
pub struct Client {
    wire: Transport,
    decoder: Decoder,
    buf: BytesMut,
    /// Whether the last WebSocket message was binary (for text/binary tests).
    pub last_ws_binary: Option<bool>,
    /// WebSocket text and binary messages received (frames may be packed
    /// several to a message).
    pub ws_messages: u64,
    /// Negotiated version.
    pub version: Version,
    /// WebSocket subprotocol the server chose.
    pub subprotocol: Option<String>,
    closed: bool,
}

impl Client {
    fn with_wire(wire: Transport) -> Client {
        let mut limits = Limits::default();
        limits.max_frame = 64 * 1024 * 1024;
        limits.max_body = 64 * 1024 * 1024;
        Client {
            wire,
            decoder: Decoder::new(limits),
            buf: BytesMut::new(),
            last_ws_binary: None,
            ws_messages: 0,
            version: Version::V1_2,
            subprotocol: None,
            closed: false,
        }
    }

    /// Opens a TCP connection (no CONNECT yet).
    pub async fn tcp(addr: SocketAddr) -> Result<Client> {
        let endpoint = Endpoint::parse(&format!("tcp://{addr}"))?;
        let (wire, _) = Transport::connect(&endpoint, &TransportOptions::default()).await?;
        Ok(Self::with_wire(wire))
    }

    /// Opens a WebSocket offering the STOMP subprotocols (no CONNECT yet).
    pub async fn ws(url: &str) -> Result<Client> {
        Self::ws_with_protocols(url, Some("v10.stomp, v11.stomp, v12.stomp")).await
    }

    /// Opens a WebSocket offering `protocols` (or none).
    pub async fn ws_with_protocols(url: &str, protocols: Option<&str>) -> Result<Client> {
        let opts = TransportOptions {
            ws_protocols: protocols.map(str::to_owned),
            // As large as the decoder below accepts.
            max_ws_message: 64 * 1024 * 1024,
            ..TransportOptions::default()
        };
        let (wire, subprotocol) = Transport::connect(&Endpoint::parse(url)?, &opts).await?;
        let mut c = Self::with_wire(wire);
        c.subprotocol = subprotocol;
        Ok(c)
    }

    /// Sends raw bytes (one WebSocket text message on WebSocket, binary when
    /// the bytes are not UTF-8).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.wire
            .write_all(&[Bytes::copy_from_slice(bytes)])
            .await?;
        Ok(())
    }

    /// Sends one WebSocket binary message (WebSocket only).
    pub async fn send_ws_binary(&mut self, bytes: &[u8]) -> Result<()> {
        if !self.wire.is_ws() {
            bail!("not a WebSocket");
        }
        self.wire
            .write_ws_binary(Bytes::copy_from_slice(bytes))
            .await?;
        Ok(())
    }

    /// Encodes and sends a frame.
    pub async fn send_frame(&mut self, frame: &Frame) -> Result<()> {
        let mut b = BytesMut::new();
        encode(frame, self.version, &mut b);
        self.send_raw(&b).await
    }

    /// The next event, or an error after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Event> {
        tokio::time::timeout(timeout, self.next_event_inner())
            .await
            .map_err(|_| anyhow!("timed out waiting for the server"))?
    }

    async fn next_event_inner(&mut self) -> Result<Event> {
        loop {
            if let Some(d) = self.decoder.decode(&mut self.buf)? {
                return Ok(match d {
                    Decoded::Frame(f) => Event::Frame(f),
                    Decoded::HeartBeat => Event::HeartBeat,
                });
            }
            if self.closed {
                return Ok(Event::Closed(None));
            }
            match self.wire.read(&mut self.buf, 8192).await {
                Err(_) => self.closed = true,
                Ok(Incoming::Data { binary }) => {
                    if binary.is_some() {
                        self.last_ws_binary = binary;
                        self.ws_messages += 1;
                    }
                }
                Ok(Incoming::Closed(code)) => {
                    if code.is_some() && self.buf.is_empty() {
                        return Ok(Event::Closed(code));
                    }
                    self.closed = true;
                }
            }
        }
    }

    /// The next frame, skipping heart-beats; errors on close or timeout.
    pub async fn recv(&mut self) -> Result<Frame> {
        self.recv_within(WAIT).await
    }

    /// Like [`Client::recv`] with a custom timeout.
    pub async fn recv_within(&mut self, timeout: Duration) -> Result<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Event::Frame(f) => return Ok(f),
                Event::HeartBeat => continue,
                Event::Closed(code) => bail!("connection closed (code {code:?})"),
            }
        }
    }

    /// Waits for a frame of `command`, failing on any other frame.
    pub async fn expect(&mut self, command: Command) -> Result<Frame> {
        let f = self.recv().await?;
        if f.command != command {
            bail!(
                "expected {command:?}, got {:?} {:?} {:?}",
                f.command,
                f.headers,
                f.body
            );
        }
        Ok(f)
    }

    /// Asserts nothing arrives for `d` (heart-beats ignored).
    pub async fn expect_silence(&mut self, d: Duration) -> Result<()> {
        match self.recv_within(d).await {
            Ok(f) => bail!("unexpected frame {:?} {:?}", f.command, f.headers),
            Err(e) if e.to_string().contains("timed out") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Expects an ERROR, then the connection closing. Returns the ERROR.
    pub async fn expect_error_and_close(&mut self) -> Result<Frame> {
        let err = self
            .expect(Command::Error)
            .await
            .context("waiting for ERROR")?;
        self.expect_closed().await?;
        Ok(err)
    }

    /// Waits until the connection is closed; returns the WebSocket close code.
    pub async fn expect_closed(&mut self) -> Result<Option<u16>> {
        loop {
            match self.next_event(WAIT).await? {
                Event::Closed(code) => return Ok(code),
                Event::HeartBeat => {}
                Event::Frame(f) => bail!("expected close, got {:?} {:?}", f.command, f.headers),
            }
        }
    }

    /// CONNECT with `headers`; returns the CONNECTED frame.
    pub async fn connect_with(&mut self, headers: &[(&str, &str)]) -> Result<Frame> {
        let mut f = Frame::new(Command::Connect);
        for (n, v) in headers {
            f.headers.push(n.to_string(), v.to_string());
        }
        self.send_frame(&f).await?;
        let connected = self.expect(Command::Connected).await?;
        if let Some(v) = connected.header_str("version").and_then(Version::parse) {
            self.version = v;
            self.decoder.set_version(v);
        }
        Ok(connected)
    }

    /// CONNECT as stomp.js does by default (1.2, no heart-beats).
    pub async fn connect_default(&mut self) -> Result<Frame> {
        self.connect_with(&[("accept-version", "1.2,1.1,1.0"), ("host", "/")])
            .await
    }

    /// SUBSCRIBE with a receipt, waiting for it.
    pub async fn subscribe(&mut self, id: &str, destination: &str, ack: &str) -> Result<()> {
        let receipt = format!("sub-{id}");
        let f = Frame::new(Command::Subscribe)
            .with_header("id", id.to_owned())
            .with_header("destination", destination.to_owned())
            .with_header("ack", ack.to_owned())
            .with_header("receipt", receipt.clone());
        self.send_frame(&f).await?;
        self.expect_receipt(&receipt).await
    }

    /// Waits for RECEIPT `id`.
    pub async fn expect_receipt(&mut self, id: &str) -> Result<()> {
        let r = self.expect(Command::Receipt).await?;
        if r.header_str("receipt-id") != Some(id) {
            bail!("expected receipt {id}, got {:?}", r.headers);
        }
        Ok(())
    }

    /// SEND a text body.
    pub async fn send(&mut self, destination: &str, body: &str) -> Result<()> {
        self.send_with(destination, body.as_bytes(), &[]).await
    }

    /// SEND with extra headers.
    pub async fn send_with(
        &mut self,
        destination: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<()> {
        let mut f = Frame::new(Command::Send)
            .with_header("destination", destination.to_owned())
            .with_body(Bytes::copy_from_slice(body));
        for (n, v) in headers {
            f.headers.push(n.to_string(), v.to_string());
        }
        self.send_frame(&f).await
    }

    /// SEND with a receipt, waiting for it.
    pub async fn send_receipted(&mut self, destination: &str, body: &str) -> Result<()> {
        let r = format!("send-{destination}-{body}");
        self.send_with(destination, body.as_bytes(), &[("receipt", &r)])
            .await?;
        self.expect_receipt(&r).await
    }

    /// Sends a frame of `command` with `headers` (no body).
    pub async fn command(&mut self, command: Command, headers: &[(&str, &str)]) -> Result<()> {
        let mut f = Frame::new(command);
        for (n, v) in headers {
            f.headers.push(n.to_string(), v.to_string());
        }
        self.send_frame(&f).await
    }

    /// DISCONNECT with a receipt, waiting for it and the close.
    pub async fn disconnect(&mut self) -> Result<()> {
        self.command(Command::Disconnect, &[("receipt", "bye")])
            .await?;
        self.expect_receipt("bye").await?;
        Ok(())
    }

    /// Receives a MESSAGE and returns it, failing on anything else.
    pub async fn message(&mut self) -> Result<Frame> {
        self.expect(Command::Message).await
    }
}

/// The body of a frame as text.
pub fn body(f: &Frame) -> String {
    String::from_utf8_lossy(&f.body).into_owned()
}

/// Polls `cond` until true or [`WAIT`] passes.
pub async fn wait_until(mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            bail!("condition not met within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Which transport a test runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// STOMP over TCP.
    Tcp,
    /// STOMP over WebSocket at `/ws`.
    Ws,
}

impl TestBroker {
    /// A client of `kind`, not yet STOMP-connected.
    pub async fn raw(&self, kind: Kind) -> Client {
        match kind {
            Kind::Tcp => Client::tcp(self.stomp).await.expect("tcp connect"),
            Kind::Ws => Client::ws(&self.ws_url()).await.expect("ws connect"),
        }
    }

    /// A STOMP-connected client of `kind`.
    pub async fn client(&self, kind: Kind) -> Client {
        let mut c = self.raw(kind).await;
        c.connect_default().await.expect("CONNECTED");
        c
    }

    /// The URL of this broker for `kind` (`tcp://...` or `ws://.../ws`).
    pub fn url(&self, kind: Kind) -> String {
        match kind {
            Kind::Tcp => format!("tcp://{}", self.stomp),
            Kind::Ws => self.ws_url(),
        }
    }

    /// The full client (`stomp_client`: receipts, subscription streams, acks,
    /// transactions, heart-beats) connected over `kind`, without heart-beats.
    pub async fn stomp_client(&self, kind: Kind) -> stomp_client::Client {
        stomp_client::Client::builder(self.url(kind))
            .heart_beat(0, 0)
            .connect()
            .await
            .expect("stomp_client connects")
    }
}

/// Runs each named `async fn(Kind) -> anyhow::Result<()>` as two tests,
/// `<name>::tcp` and `<name>::ws`.
#[macro_export]
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn tcp() {
                    super::$name($crate::Kind::Tcp).await.unwrap()
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn ws() {
                    super::$name($crate::Kind::Ws).await.unwrap()
                }
            }
        )*
    };
}
