//! A small async STOMP 1.2 client over TCP or WebSocket, built on the
//! sans-IO `stomp-codec`: frames are encoded with [`encode`] and read back
//! with a [`Decoder`] over a buffer this client owns.
//!
//! It asks for no heart-beats (`heart-beat:0,0`), so an idle connection
//! stays open without timers; a production client would negotiate them.

use std::collections::VecDeque;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use stomp_codec::{encode, Command, Decoded, Decoder, Frame, Limits, Version};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};

enum Wire {
    Tcp(TcpStream),
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
}

/// Credentials sent in CONNECT.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// `login` (in the broker's development mode, the user name).
    pub login: Option<String>,
    /// `passcode` (a password or a JWT).
    pub passcode: Option<String>,
}

/// A connected STOMP session.
pub struct StompClient {
    wire: Wire,
    decoder: Decoder,
    buf: BytesMut,
    /// MESSAGE frames read while waiting for something else (a RECEIPT).
    pending: VecDeque<Frame>,
    next_receipt: u64,
    eof: bool,
    /// The `server` header of CONNECTED, if any.
    pub server: Option<String>,
}

impl StompClient {
    /// Connects to `addr` and completes the STOMP handshake.
    ///
    /// `addr` is `ws://host:port/path` (or `wss://`) for WebSocket, or
    /// `host:port` / `tcp://host:port` for STOMP over TCP.
    pub async fn connect(addr: &str, creds: &Credentials) -> Result<StompClient> {
        let wire = if addr.starts_with("ws://") || addr.starts_with("wss://") {
            let mut req = addr.into_client_request()?;
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("v12.stomp"),
            );
            let (ws, _) = tokio_tungstenite::connect_async(req)
                .await
                .with_context(|| format!("WebSocket connect to {addr}"))?;
            Wire::Ws(Box::new(ws))
        } else {
            let hostport = addr.strip_prefix("tcp://").unwrap_or(addr);
            let s = TcpStream::connect(hostport)
                .await
                .with_context(|| format!("TCP connect to {hostport}"))?;
            s.set_nodelay(true)?;
            Wire::Tcp(s)
        };
        let mut client = StompClient {
            wire,
            decoder: Decoder::new(Limits::default()),
            buf: BytesMut::with_capacity(8 * 1024),
            pending: VecDeque::new(),
            next_receipt: 1,
            eof: false,
            server: None,
        };
        let mut connect = Frame::new(Command::Connect)
            .with_header("accept-version", "1.2")
            .with_header("host", "stomp-broker")
            .with_header("heart-beat", "0,0");
        if let Some(l) = &creds.login {
            connect = connect.with_header("login", l.clone());
        }
        if let Some(p) = &creds.passcode {
            connect = connect.with_header("passcode", p.clone());
        }
        client.write(&connect).await?;
        let reply = client.read_frame().await?;
        match reply.command {
            Command::Connected => {
                client.server = reply.header_str("server").map(str::to_owned);
                Ok(client)
            }
            _ => Err(error_of(&reply)),
        }
    }

    /// Encodes and writes one frame.
    pub async fn write(&mut self, frame: &Frame) -> Result<()> {
        let mut out = BytesMut::new();
        encode(frame, Version::V1_2, &mut out);
        match &mut self.wire {
            Wire::Tcp(s) => s.write_all(&out).await?,
            Wire::Ws(ws) => {
                let msg = match std::str::from_utf8(&out) {
                    Ok(t) => Message::Text(t.into()),
                    Err(_) => Message::Binary(out.freeze()),
                };
                ws.send(msg).await?;
            }
        }
        Ok(())
    }

    /// Reads the next frame from the wire (heart-beats skipped). An ERROR
    /// frame is returned like any other; end of stream is an error.
    async fn read_frame(&mut self) -> Result<Frame> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Decoded::Frame(f))) => return Ok(f),
                Ok(Some(Decoded::HeartBeat)) => continue,
                Ok(None) => {}
                Err(e) => bail!("malformed frame from the server: {}", e.message()),
            }
            if self.eof {
                bail!("connection closed by the server");
            }
            match &mut self.wire {
                Wire::Tcp(s) => {
                    self.buf.reserve(8 * 1024);
                    if s.read_buf(&mut self.buf).await? == 0 {
                        self.eof = true;
                    }
                }
                Wire::Ws(ws) => match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => self.eof = true,
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(t))) => self.buf.extend_from_slice(t.as_bytes()),
                    Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// A fresh `receipt` id.
    fn receipt_id(&mut self) -> String {
        let id = format!("r-{}", self.next_receipt);
        self.next_receipt += 1;
        id
    }

    /// Writes `frame` with a `receipt` header and waits for its RECEIPT.
    /// MESSAGE frames that arrive meanwhile are kept for [`Self::next_message`];
    /// an ERROR fails with the broker's `message` and explanation.
    pub async fn request(&mut self, frame: Frame) -> Result<()> {
        let id = self.receipt_id();
        self.write(&frame.with_header("receipt", id.clone()))
            .await?;
        loop {
            let f = self.read_frame().await?;
            match f.command {
                Command::Receipt if f.header_str("receipt-id") == Some(id.as_str()) => {
                    return Ok(())
                }
                Command::Receipt => {}
                Command::Message => self.pending.push_back(f),
                _ => return Err(error_of(&f)),
            }
        }
    }

    /// SENDs `body` to `destination` with extra `headers` and waits until the
    /// broker confirms it with a RECEIPT (for `/app/...` destinations bridged
    /// to Kafka: after Kafka acknowledged the record).
    pub async fn send(
        &mut self,
        destination: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<()> {
        let mut f = Frame::new(Command::Send).with_header("destination", destination.to_owned());
        for (n, v) in headers {
            f = f.with_header(n.to_string(), v.to_string());
        }
        self.request(f.with_body(body)).await
    }

    /// SUBSCRIBEs to `destination` as subscription `id` (auto ack) and waits
    /// for the RECEIPT, so nothing published afterwards is missed.
    pub async fn subscribe(&mut self, destination: &str, id: &str) -> Result<()> {
        let f = Frame::new(Command::Subscribe)
            .with_header("destination", destination.to_owned())
            .with_header("id", id.to_owned())
            .with_header("ack", "auto");
        self.request(f).await
    }

    /// The next MESSAGE; an ERROR or the connection closing is an error.
    pub async fn next_message(&mut self) -> Result<Frame> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(f);
        }
        loop {
            let f = self.read_frame().await?;
            match f.command {
                Command::Message => return Ok(f),
                Command::Receipt => {}
                _ => return Err(error_of(&f)),
            }
        }
    }

    /// DISCONNECTs gracefully: waits for the RECEIPT, then closes.
    pub async fn disconnect(mut self) -> Result<()> {
        self.request(Frame::new(Command::Disconnect)).await?;
        match &mut self.wire {
            Wire::Tcp(s) => s.shutdown().await?,
            Wire::Ws(ws) => {
                let _ = SinkExt::close(ws).await;
            }
        }
        Ok(())
    }
}

/// An error for an unexpected frame (usually ERROR): its `message` header
/// and body.
fn error_of(f: &Frame) -> anyhow::Error {
    match f.command {
        Command::Error => anyhow!(
            "broker ERROR: {}: {}",
            f.header_str("message").unwrap_or("(no message)"),
            String::from_utf8_lossy(&f.body).trim()
        ),
        other => anyhow!("unexpected {other:?} frame from the broker"),
    }
}
