//! Transports: byte streams the connection task reads STOMP from and writes
//! frames to. TCP and WebSocket are adapters over the same session code.

use std::{future::Future, io};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::{
    tungstenite::{
        protocol::{frame::coding::CloseCode, CloseFrame},
        Message, Utf8Bytes,
    },
    WebSocketStream,
};

use crate::output::Batch;

/// Bytes to reserve before each socket read; small, for many idle connections.
const READ_CHUNK: usize = 4 * 1024;

/// How a connection ends, for transports that can say so (WebSocket close codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// Normal close (1000).
    Normal,
    /// Server shutting down (1001).
    GoingAway,
    /// Protocol error (1002).
    ProtocolError,
}

/// A full-duplex frame transport.
pub trait Transport: Send {
    /// Appends received bytes to `buf`; `Ok(0)` is end of stream.
    /// Must be cancel-safe (used in `select!`).
    fn read(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
    /// Writes a batch of frames and flushes once.
    fn write_batch(&mut self, batch: &Batch) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the transport.
    fn close(&mut self, kind: CloseKind) -> impl Future<Output = ()> + Send;
}

/// STOMP over a raw byte stream (TCP, TLS).
#[derive(Debug)]
pub struct StreamTransport<S> {
    stream: S,
}

impl<S> StreamTransport<S> {
    /// Wraps any byte stream.
    pub fn new(stream: S) -> Self {
        StreamTransport { stream }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for StreamTransport<S> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        buf.reserve(READ_CHUNK);
        self.stream.read_buf(buf).await
    }

    async fn write_batch(&mut self, batch: &Batch) -> io::Result<()> {
        self.stream.write_all(&batch.bytes).await
    }

    async fn close(&mut self, _kind: CloseKind) {
        let _ = self.stream.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// STOMP over WebSocket: each outgoing run of same-kind frames (see
/// [`Batch::runs`]: consecutive text frames, or consecutive binary ones) is
/// one WebSocket message, so a message may hold several frames — or each
/// frame its own message with `listen.ws_frame_per_message` (see
/// [`crate::output`]); incoming text and binary messages are concatenated
/// into the byte stream (a frame may span messages, a message may hold
/// several frames).
#[derive(Debug)]
pub struct WsTransport<S> {
    ws: WebSocketStream<S>,
}

impl<S> WsTransport<S> {
    /// Wraps an upgraded WebSocket.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsTransport { ws }
    }
}

/// Maps WebSocket errors to I/O errors; a peer's protocol violation (bad
/// framing, oversized message, invalid UTF-8 in a text message) becomes
/// `InvalidData`, so the connection can answer with an ERROR before closing.
fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(io) => io,
        // A peer that vanished (tab closed, process killed) is not a
        // protocol violation worth an ERROR: it is gone.
        E::Protocol(
            tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )
        | E::ConnectionClosed
        | E::AlreadyClosed => io::Error::new(io::ErrorKind::ConnectionReset, "connection closed"),
        E::Capacity(c) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message too large: {c}"),
        ),
        E::Protocol(p) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket protocol error: {p}"),
        ),
        E::Utf8(u) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("invalid UTF-8 in a text message: {u}"),
        ),
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for WsTransport<S> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.ws.next().await {
                None => return Ok(0),
                Some(Err(e)) => return Err(ws_err(e)),
                Some(Ok(Message::Text(t))) if !t.is_empty() => {
                    buf.extend_from_slice(t.as_bytes());
                    return Ok(t.len());
                }
                Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                    buf.extend_from_slice(&b);
                    return Ok(b.len());
                }
                Some(Ok(Message::Close(_))) => return Ok(0),
                // Pings are answered by tungstenite; empty messages carry nothing.
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn write_batch(&mut self, batch: &Batch) -> io::Result<()> {
        for (run, text) in batch.runs() {
            let msg = if text {
                match Utf8Bytes::try_from(run.clone()) {
                    Ok(t) => Message::Text(t),
                    Err(_) => Message::Binary(run),
                }
            } else {
                Message::Binary(run)
            };
            self.ws.feed(msg).await.map_err(ws_err)?;
        }
        self.ws.flush().await.map_err(ws_err)
    }

    async fn close(&mut self, kind: CloseKind) {
        let code = match kind {
            CloseKind::Normal => CloseCode::Normal,
            CloseKind::GoingAway => CloseCode::Away,
            CloseKind::ProtocolError => CloseCode::Protocol,
        };
        let reason = match kind {
            CloseKind::GoingAway => "server shutting down",
            _ => "",
        };
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }))
            .await;
        // Give the peer a moment to answer the close handshake.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}
