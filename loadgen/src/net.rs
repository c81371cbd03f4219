//! Client connections: TCP sockets bound to spread 127.0.0.x source
//! addresses, the WebSocket upgrade (client role, so frames are masked as a
//! browser masks them), the STOMP handshake, and a fast scanner for inbound
//! frames on the hot path.
//!
//! Why not `stomp-client` here: the measured connections stay on this lean
//! path on purpose. Thousands of subscribers must cost one socket and one
//! buffer each (the client spawns a task, channels and timers per
//! connection); inbound MESSAGEs are counted and time-stamped by [`scan`]
//! straight out of the read buffer instead of being decoded into frames,
//! copied into a per-subscription channel and woken up for; and publishers
//! write pre-encoded [`SendTemplate`] bytes with their own batching, so the
//! numbers measure the broker, not a general client. Setup and control
//! connections, where none of that matters, use `stomp-client`
//! ([`Target::control_client`]).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, Stream, StreamExt};
use stomp_codec::{encode, Command, Decoded, Decoder, Frame, Limits, Version};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig, Message,
    },
    WebSocketStream,
};
use tokio_util::codec::{BytesCodec, Framed};

/// How the generator reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// STOMP over WebSocket (`ws://host:port/path`), binary or text messages.
    Ws,
    /// STOMP over a plain TCP byte stream.
    Tcp,
}

/// Where and how to connect; shared by every connection of a run.
#[derive(Debug, Clone)]
pub struct Target {
    /// WebSocket or TCP.
    pub transport: Transport,
    /// Address of the WebSocket listener.
    pub ws_addr: SocketAddr,
    /// WebSocket URL (path included).
    pub ws_url: String,
    /// Address of the STOMP/TCP listener.
    pub stomp_addr: Option<SocketAddr>,
    /// STOMP `host` header (RabbitMQ treats it as the virtual host).
    pub host: String,
    /// STOMP `login`/`passcode`, if any.
    pub login: Option<(String, String)>,
    /// Number of source addresses (127.0.0.2 ..= 127.0.0.(1+n)).
    pub source_ips: u32,
    /// tungstenite read buffer per connection (bytes).
    pub read_buffer: usize,
}

impl Target {
    /// The source address for connection number `idx`: 127.0.0.2, .3, ...
    /// round-robin, so the 28k-port ephemeral range is per address.
    fn source(&self, idx: usize) -> SocketAddr {
        let n = self.source_ips.max(1) as usize;
        let i = (idx % n) as u32 + 2;
        let ip = Ipv4Addr::new(
            127,
            ((i >> 16) & 0xff) as u8,
            ((i >> 8) & 0xff) as u8,
            i as u8,
        );
        SocketAddr::new(IpAddr::V4(ip), 0)
    }

    /// A `stomp-client` connection for setup and control (not measured):
    /// same transport, `host` and login as the measured connections.
    pub async fn control_client(&self) -> Result<stomp_client::Client> {
        let url = match (self.transport, self.stomp_addr) {
            (Transport::Tcp, Some(a)) => format!("tcp://{a}"),
            (Transport::Tcp, None) => bail!("no STOMP/TCP address"),
            (Transport::Ws, _) => self.ws_url.clone(),
        };
        let mut b = stomp_client::Client::builder(&url).host(self.host.clone());
        if let Some((l, p)) = &self.login {
            b = b.login(l.clone(), p.clone());
        }
        b.connect()
            .await
            .with_context(|| format!("control connection to {url}"))
    }

    /// Opens connection `idx` (TCP connect from a spread source address, and
    /// the WebSocket upgrade for WebSocket targets).
    pub async fn open(&self, idx: usize) -> Result<Conn> {
        self.open_with(idx, None).await
    }

    /// [`Target::open`] with an explicit `SO_RCVBUF` (a small one makes a
    /// client that stops reading back up into the broker quickly).
    pub async fn open_with(&self, idx: usize, recv_buffer: Option<u32>) -> Result<Conn> {
        let dst = match self.transport {
            Transport::Ws => self.ws_addr,
            Transport::Tcp => self
                .stomp_addr
                .ok_or_else(|| anyhow!("no STOMP/TCP address (--stomp-addr)"))?,
        };
        let socket = TcpSocket::new_v4()?;
        let src = self.source(idx);
        if let Some(n) = recv_buffer {
            socket.set_recv_buffer_size(n)?;
        }
        socket
            .bind(src)
            .with_context(|| format!("bind {src} (127.0.0.0/8 must be local)"))?;
        let stream = socket
            .connect(dst)
            .await
            .with_context(|| format!("connect {src} -> {dst}"))?;
        stream.set_nodelay(true)?;
        match self.transport {
            Transport::Tcp => Ok(Conn::Tcp(Framed::new(stream, BytesCodec::new()))),
            Transport::Ws => {
                let mut request = self.ws_url.as_str().into_client_request()?;
                request.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_static("v12.stomp, v11.stomp, v10.stomp"),
                );
                let config = WebSocketConfig::default()
                    .read_buffer_size(self.read_buffer)
                    .write_buffer_size(0);
                let (ws, _resp) =
                    tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                        .await
                        .context("WebSocket upgrade")?;
                Ok(Conn::Ws(Box::new(ws)))
            }
        }
    }

    /// Opens connection `idx` to a bare fan-out server (`bare-fanout`, no
    /// STOMP) and waits for its "registered" message, after which the
    /// connection receives everything published.
    pub async fn open_bare(&self, idx: usize) -> Result<Session> {
        if self.transport != Transport::Ws {
            bail!("the bare fan-out server speaks WebSocket only");
        }
        let mut conn = self.open(idx).await?;
        match tokio::time::timeout(Duration::from_secs(30), conn.next()).await {
            Ok(Some(Ok(_))) => Ok(Session::new(conn)),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => bail!("bare fan-out server closed the connection"),
            Err(_) => bail!("bare fan-out server did not register the connection within 30 s"),
        }
    }

    /// Opens connection `idx` and completes CONNECT → CONNECTED.
    pub async fn open_stomp(&self, idx: usize, heart_beat: (u32, u32)) -> Result<Session> {
        let mut s = Session::new(self.open(idx).await?);
        s.handshake(self, heart_beat).await?;
        Ok(s)
    }
}

impl Session {
    /// CONNECT → CONNECTED with `target`'s host and credentials.
    pub async fn handshake(&mut self, target: &Target, heart_beat: (u32, u32)) -> Result<()> {
        let s = self;
        let mut connect = Frame::new(Command::Connect)
            .with_header("accept-version", "1.2")
            .with_header("host", target.host.clone())
            .with_header("heart-beat", format!("{},{}", heart_beat.0, heart_beat.1));
        if let Some((l, p)) = &target.login {
            connect = connect
                .with_header("login", l.clone())
                .with_header("passcode", p.clone());
        }
        s.send_frame(&connect).await?;
        let f = s.next_frame().await?;
        if f.command != Command::Connected {
            bail!("expected CONNECTED, got {}", describe(&f));
        }
        Ok(())
    }
}

/// Renders a frame for error messages (command and `message` header).
pub fn describe(f: &Frame) -> String {
    match f.header_str("message") {
        Some(m) => format!("{} ({m})", f.command.as_str()),
        None => f.command.as_str().to_string(),
    }
}

/// One client connection, WebSocket or TCP. As a `Stream` it yields the
/// payload of each WebSocket data message (or each TCP read).
pub enum Conn {
    /// STOMP over WebSocket.
    Ws(Box<WebSocketStream<TcpStream>>),
    /// STOMP over TCP.
    Tcp(Framed<TcpStream, BytesCodec>),
}

impl Stream for Conn {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Conn::Ws(ws) => loop {
                match ws.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(Message::Binary(b)))) => return Poll::Ready(Some(Ok(b))),
                    Poll::Ready(Some(Ok(Message::Text(t)))) => {
                        return Poll::Ready(Some(Ok(t.into())))
                    }
                    Poll::Ready(Some(Ok(Message::Close(_)))) | Poll::Ready(None) => {
                        return Poll::Ready(None)
                    }
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                    Poll::Pending => return Poll::Pending,
                }
            },
            Conn::Tcp(t) => match t.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(b.freeze()))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl Conn {
    /// Queues one STOMP frame's bytes (one WebSocket binary message).
    pub async fn feed(&mut self, bytes: Bytes) -> Result<()> {
        match self {
            Conn::Ws(ws) => ws.feed(Message::Binary(bytes)).await?,
            Conn::Tcp(t) => SinkExt::<Bytes>::feed(t, bytes).await?,
        }
        Ok(())
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        match self {
            Conn::Ws(ws) => ws.flush().await?,
            Conn::Tcp(t) => SinkExt::<Bytes>::flush(t).await?,
        }
        Ok(())
    }
}

/// A connection plus its read buffer and decoder, for control traffic.
pub struct Session {
    /// The connection.
    pub conn: Conn,
    /// Bytes received but not yet decoded.
    pub buf: BytesMut,
    decoder: Decoder,
}

impl Session {
    /// Wraps a connection.
    pub fn new(conn: Conn) -> Session {
        Session {
            conn,
            buf: BytesMut::new(),
            decoder: Decoder::new(Limits::default()),
        }
    }

    /// Encodes and writes one frame.
    pub async fn send_frame(&mut self, f: &Frame) -> Result<()> {
        let mut out = BytesMut::new();
        encode(f, Version::V1_2, &mut out);
        self.conn.feed(out.freeze()).await?;
        self.conn.flush().await
    }

    /// The next frame (heart-beats skipped), within 30 s.
    pub async fn next_frame(&mut self) -> Result<Frame> {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match self.decoder.decode(&mut self.buf) {
                    Ok(Some(Decoded::Frame(f))) => return Ok(f),
                    Ok(Some(Decoded::HeartBeat)) => continue,
                    Ok(None) => {}
                    Err(e) => bail!("bad frame from broker: {e:?}"),
                }
                match self.conn.next().await {
                    Some(chunk) => self.buf.extend_from_slice(&chunk?),
                    None => bail!("connection closed by broker"),
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no frame from broker within 30 s"))?
    }

    /// SUBSCRIBE (auto ack) with a receipt, waiting for the RECEIPT so the
    /// subscription is active before anyone publishes.
    pub async fn subscribe(&mut self, id: &str, destination: &str) -> Result<()> {
        let f = Frame::new(Command::Subscribe)
            .with_header("id", id.to_string())
            .with_header("destination", destination.to_string())
            .with_header("ack", "auto")
            .with_header("receipt", format!("sub-{id}"));
        self.send_frame(&f).await?;
        loop {
            let r = self.next_frame().await?;
            match r.command {
                Command::Receipt => return Ok(()),
                Command::Message => continue,
                _ => bail!("SUBSCRIBE {destination}: {}", describe(&r)),
            }
        }
    }
}

/// What lies at the front of a receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// More bytes are needed.
    Incomplete,
    /// A heart-beat EOL of this many bytes.
    HeartBeat(usize),
    /// A MESSAGE frame of `len` bytes whose body starts at `body`.
    Message {
        /// Whole frame length including the NUL.
        len: usize,
        /// Offset of the body.
        body: usize,
    },
    /// Another frame (RECEIPT, ERROR, ...) of `len` bytes.
    Other {
        /// Whole frame length including the NUL.
        len: usize,
    },
}

/// Finds the extent of the first frame in `buf` without building it: the
/// load generator must not be the bottleneck, so the hot path reads only the
/// command line, `content-length` and the body's first 8 bytes. Anything that
/// is not a MESSAGE is handed to the real decoder by the caller.
pub fn scan(buf: &[u8]) -> Result<Scan> {
    match buf.first() {
        None => return Ok(Scan::Incomplete),
        Some(b'\n') => return Ok(Scan::HeartBeat(1)),
        Some(b'\r') => {
            return match buf.get(1) {
                None => Ok(Scan::Incomplete),
                Some(b'\n') => Ok(Scan::HeartBeat(2)),
                Some(_) => bail!("bad EOL"),
            }
        }
        Some(_) => {}
    }
    let mut pos = 0;
    let mut first = true;
    let mut is_message = false;
    let mut content_length: Option<usize> = None;
    let body = loop {
        let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
            return Ok(Scan::Incomplete);
        };
        let mut line = &buf[pos..pos + nl];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        let next = pos + nl + 1;
        if first {
            is_message = line == b"MESSAGE";
            first = false;
        } else if line.is_empty() {
            break next;
        } else if content_length.is_none() {
            if let Some(v) = line.strip_prefix(b"content-length:") {
                let s = std::str::from_utf8(v).context("content-length")?;
                content_length = Some(s.trim().parse().context("content-length")?);
            }
        }
        pos = next;
    };
    let len = match content_length {
        Some(n) => {
            let end = body + n;
            match buf.get(end) {
                None => return Ok(Scan::Incomplete),
                Some(0) => end + 1,
                Some(_) => bail!("frame not terminated by NUL after content-length"),
            }
        }
        None => match memchr::memchr(0, &buf[body..]) {
            None => return Ok(Scan::Incomplete),
            Some(i) => body + i + 1,
        },
    };
    Ok(if is_message {
        Scan::Message { len, body }
    } else {
        Scan::Other { len }
    })
}

/// Decodes a whole non-MESSAGE frame found by [`scan`] (ERROR, RECEIPT...).
pub fn decode_one(frame: &[u8]) -> Option<Frame> {
    let mut b = BytesMut::from(frame);
    match Decoder::new(Limits::default()).decode(&mut b) {
        Ok(Some(Decoded::Frame(f))) => Some(f),
        _ => None,
    }
}

/// Reads the send timestamp (first 8 bytes of the body, little-endian ns).
pub fn body_stamp(frame: &[u8], body: usize) -> Option<u64> {
    let b = frame.get(body..body + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// The `message-id` of [`SendTemplate::bare_message`]: as long as the
/// broker's ids during an S1 run (`<start time in hex>-<counter>`).
const BARE_MESSAGE_ID: &str = "187e7a5f1c2b3d4e-1234567";

/// Pre-encoded SEND frames to one destination with a fixed body size: the
/// header block is built once, each message copies it, writes its timestamp
/// into the body's first 8 bytes and pads the rest.
#[derive(Clone)]
pub struct SendTemplate {
    head: Bytes,
    body_len: usize,
}

impl SendTemplate {
    /// A template for `destination` with `body_len`-byte bodies (at least 8).
    pub fn new(destination: &str, body_len: usize) -> SendTemplate {
        let body_len = body_len.max(8);
        let head = format!(
            "SEND\ndestination:{destination}\ncontent-type:application/octet-stream\ncontent-length:{body_len}\n\n"
        );
        SendTemplate {
            head: Bytes::from(head),
            body_len,
        }
    }

    /// A template of the MESSAGE frames stomp-broker delivers in S1 for a
    /// SEND from [`SendTemplate::new`] (same headers, same lengths; the
    /// message-id is a fixed stand-in of the broker's length), for
    /// `loadgen s1 --bare`: the bare fan-out server forwards these bytes
    /// unchanged, so each delivery puts the same bytes on the wire.
    pub fn bare_message(destination: &str, body_len: usize) -> SendTemplate {
        let body_len = body_len.max(8);
        let head = format!(
            "MESSAGE\nsubscription:0\ndestination:{destination}\nmessage-id:{BARE_MESSAGE_ID}\ncontent-type:application/octet-stream\ncontent-length:{body_len}\n\n"
        );
        SendTemplate {
            head: Bytes::from(head),
            body_len,
        }
    }

    /// One SEND frame carrying `stamp`.
    pub fn frame(&self, stamp: u64) -> Bytes {
        let mut out = BytesMut::with_capacity(self.head.len() + self.body_len + 1);
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&stamp.to_le_bytes());
        out.resize(out.len() + self.body_len - 8, b'x');
        out.extend_from_slice(&[0]);
        out.freeze()
    }
}

/// Consumes complete frames from the front of `data`, calling `on_message`
/// with each MESSAGE's bytes and body offset and `on_other` with the decoded
/// non-MESSAGE frames; returns the number of bytes consumed.
pub fn drain_frames(
    data: &[u8],
    mut on_message: impl FnMut(&[u8], usize),
    mut on_other: impl FnMut(Option<Frame>),
) -> Result<usize> {
    let mut off = 0;
    loop {
        match scan(&data[off..])? {
            Scan::Incomplete => return Ok(off),
            Scan::HeartBeat(n) => off += n,
            Scan::Message { len, body } => {
                on_message(&data[off..off + len], body);
                off += len;
            }
            Scan::Other { len } => {
                on_other(decode_one(&data[off..off + len]));
                off += len;
            }
        }
    }
}

/// Appends `chunk` to a connection's leftover buffer (or scans it in place
/// when nothing is left over, the common case: one frame per WebSocket
/// message) and processes every complete frame.
pub fn absorb(
    leftover: &mut BytesMut,
    chunk: &[u8],
    on_message: impl FnMut(&[u8], usize),
    on_other: impl FnMut(Option<Frame>),
) -> Result<()> {
    if leftover.is_empty() {
        let used = drain_frames(chunk, on_message, on_other)?;
        if used < chunk.len() {
            leftover.extend_from_slice(&chunk[used..]);
        }
    } else {
        leftover.extend_from_slice(chunk);
        let used = drain_frames(leftover, on_message, on_other)?;
        leftover.advance(used);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_message_with_content_length_and_stamp() {
        let t = SendTemplate::new("/topic/a", 20);
        let send = t.frame(42);
        // Turn the SEND into a MESSAGE as a broker would.
        let msg = [b"MESSAGE\nsubscription:0\n".as_slice(), &send[5..]].concat();
        match scan(&msg).unwrap() {
            Scan::Message { len, body } => {
                assert_eq!(len, msg.len());
                assert_eq!(body_stamp(&msg, body), Some(42));
            }
            other => panic!("{other:?}"),
        }
        for cut in 0..msg.len() {
            assert_eq!(scan(&msg[..cut]).unwrap(), Scan::Incomplete, "prefix {cut}");
        }
    }

    #[test]
    fn drain_handles_heartbeats_receipts_and_split_frames() {
        let data = b"\nRECEIPT\nreceipt-id:1\n\n\0\r\nMESSAGE\ndestination:/t\n\n12345678\0MESS";
        let mut msgs = 0;
        let mut others = Vec::new();
        let mut left = BytesMut::new();
        absorb(&mut left, data, |_, _| msgs += 1, |f| others.push(f)).unwrap();
        assert_eq!(msgs, 1);
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].as_ref().unwrap().command, Command::Receipt);
        assert_eq!(&left[..], b"MESS");
    }
}
