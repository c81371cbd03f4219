use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use stomp_codec::{Frame, Headers};

/// Everything that can go wrong with a STOMP connection or one request on it.
///
/// `Clone`, so one connection failure can be reported to every waiter. The
/// doc of each variant says whether the connection is still usable.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not `tcp://`, `tls://`/`stomps://`, `ws://` or `wss://`
    /// with a host and port (or has another problem, named here).
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A socket operation failed. The connection is gone.
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// TLS configuration or handshake failed. No connection.
    #[error("TLS error: {0}")]
    Tls(String),
    /// The WebSocket handshake or framing failed. The connection is gone.
    #[error("WebSocket error: {0}")]
    WebSocket(String),
    /// The server sent an ERROR frame (its `message` header and body are in
    /// [`ServerError`]). The server closes the connection after an ERROR.
    #[error("server ERROR: {0}")]
    Protocol(ServerError),
    /// The server sent bytes that are not valid STOMP. The connection is
    /// closed by the client.
    #[error("malformed frame from the server: {0}")]
    Codec(stomp_codec::Error),
    /// The server sent a frame that makes no sense here (a client command,
    /// CONNECTED twice, a version we did not offer ...). The connection is
    /// closed by the client.
    #[error("unexpected frame from the server: {0}")]
    UnexpectedFrame(String),
    /// No RECEIPT arrived within the receipt timeout. The connection may
    /// still be fine; the outcome of the request is unknown.
    #[error("no RECEIPT within {0:?}")]
    ReceiptTimeout(Duration),
    /// Connecting (transport + CONNECTED) took longer than the connect
    /// timeout.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// Nothing (no frame, no heart-beat) arrived from the server for this
    /// long although heart-beats were negotiated. The connection is closed.
    #[error("no data or heart-beat from the server for {0:?}")]
    HeartbeatTimeout(Duration),
    /// The connection was lost while this request was in flight (its outcome
    /// is unknown), or a message being acknowledged came from an earlier
    /// connection. With reconnect on, the client itself may be usable again.
    #[error("connection lost")]
    Disconnected,
    /// The client was disconnected (by [`crate::Client::disconnect`], by giving
    /// up reconnecting, or because every handle was dropped). Nothing more can
    /// be done with it.
    #[error("client closed")]
    Closed,
}

impl Error {
    pub(crate) fn io(e: std::io::Error) -> Error {
        Error::Io(Arc::new(e))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io(e)
    }
}

impl From<stomp_codec::Error> for Error {
    fn from(e: stomp_codec::Error) -> Self {
        Error::Codec(e)
    }
}

/// The content of a server ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The `message` header (empty when absent).
    pub message: String,
    /// The `receipt-id` header: which request the ERROR is about, if any.
    pub receipt_id: Option<String>,
    /// All headers of the ERROR frame.
    pub headers: Headers,
    /// The body (often a longer explanation).
    pub body: Bytes,
}

impl ServerError {
    pub(crate) fn from_frame(f: &Frame) -> ServerError {
        ServerError {
            message: f.header_str("message").unwrap_or_default().to_owned(),
            receipt_id: f.header_str("receipt-id").map(str::to_owned),
            headers: f.headers.clone(),
            body: f.body.clone(),
        }
    }

    /// The body as text (lossy UTF-8).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.body_text();
        let body = body.trim();
        if body.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.message, body)
        }
    }
}
