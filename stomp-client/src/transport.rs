//! The byte transports under a STOMP session: TCP, TLS over TCP, WebSocket
//! and WebSocket over TLS, behind one type.
//!
//! [`crate::Client`] uses this module; it is public so that tools which must
//! send exactly the bytes they mean (hostile-input tests, load generators)
//! share the connection code without going through the session layer.

use std::{pin::Pin, sync::Arc};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest,
        http::{HeaderValue, Uri},
        protocol::WebSocketConfig,
        Message,
    },
    WebSocketStream,
};

use crate::Error;

/// The WebSocket subprotocols offered by default.
pub const STOMP_SUBPROTOCOLS: &str = "v12.stomp, v11.stomp, v10.stomp";

/// The kind of transport a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `tcp://host:port`: STOMP over plain TCP.
    Tcp,
    /// `tls://host:port` or `stomps://host:port`: STOMP over TLS.
    Tls,
    /// `ws://host:port/path`: STOMP over WebSocket.
    Ws,
    /// `wss://host:port/path`: STOMP over WebSocket over TLS.
    Wss,
}

/// A parsed server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Which transport.
    pub scheme: Scheme,
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port (defaults: 61613 tcp, 61614 tls, 80 ws, 443 wss).
    pub port: u16,
    /// The URL as given (WebSocket requests use it unchanged).
    pub url: String,
}

impl Endpoint {
    /// Parses `tcp://`, `tls://`, `stomps://`, `ws://` or `wss://` URLs. A
    /// bare `host:port` means `tcp://host:port`.
    pub fn parse(url: &str) -> Result<Endpoint, Error> {
        let full = if url.contains("://") {
            url.to_owned()
        } else {
            format!("tcp://{url}")
        };
        let uri: Uri = full
            .parse()
            .map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))?;
        let scheme = match uri.scheme_str() {
            Some("tcp") | Some("stomp") => Scheme::Tcp,
            Some("tls") | Some("stomps") | Some("ssl") => Scheme::Tls,
            Some("ws") => Scheme::Ws,
            Some("wss") => Scheme::Wss,
            other => {
                return Err(Error::InvalidUrl(format!(
                    "{url}: unsupported scheme {other:?} (use tcp, tls, stomps, ws or wss)"
                )))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::InvalidUrl(format!("{url}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(match scheme {
            Scheme::Tcp => 61613,
            Scheme::Tls => 61614,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        });
        Ok(Endpoint {
            scheme,
            host,
            port,
            url: full,
        })
    }
}

/// How to open a transport.
#[derive(Clone)]
pub struct TransportOptions {
    /// TLS client configuration for `tls://` and `wss://`; `None` trusts the
    /// Mozilla root certificates (webpki-roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `Sec-WebSocket-Protocol` offered on WebSocket (`None`: no header).
    pub ws_protocols: Option<String>,
    /// Largest WebSocket message accepted from the server.
    pub max_ws_message: usize,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            tls: None,
            ws_protocols: Some(STOMP_SUBPROTOCOLS.to_owned()),
            max_ws_message: 2 * 1024 * 1024,
        }
    }
}

impl std::fmt::Debug for TransportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportOptions")
            .field("tls", &self.tls.is_some())
            .field("ws_protocols", &self.ws_protocols)
            .field("max_ws_message", &self.max_ws_message)
            .finish()
    }
}

/// A TLS client configuration trusting the Mozilla roots (webpki-roots).
pub fn default_tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    tls_config_with_roots(roots)
}

/// A TLS client configuration trusting exactly `roots` (ring provider).
pub fn tls_config_with_roots(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A byte stream: TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A boxed [`Io`].
pub type BoxIo = Pin<Box<dyn Io>>;

/// What one read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Bytes were appended to the buffer. `binary` is `Some(true)` for a
    /// WebSocket binary message, `Some(false)` for text, `None` on a stream.
    Data {
        /// WebSocket message type, if WebSocket.
        binary: Option<bool>,
    },
    /// The peer closed the connection (WebSocket: the close code, if any).
    Closed(Option<u16>),
}

/// An open transport.
pub enum Transport {
    /// TCP or TLS.
    Stream(BoxIo),
    /// WebSocket (over TCP or TLS).
    Ws(Box<WebSocketStream<BoxIo>>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Stream(_) => f.write_str("Transport::Stream"),
            Transport::Ws(_) => f.write_str("Transport::Ws"),
        }
    }
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> Error {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(io) => Error::io(io),
        other => Error::WebSocket(other.to_string()),
    }
}

async fn tcp(host: &str, port: u16) -> Result<TcpStream, Error> {
    let s = TcpStream::connect((host, port)).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn tls(
    host: &str,
    port: u16,
    config: Option<&Arc<rustls::ClientConfig>>,
) -> Result<BoxIo, Error> {
    let config = match config {
        Some(c) => c.clone(),
        None => default_tls_config()?,
    };
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| Error::Tls(format!("server name {host:?}: {e}")))?;
    let tcp = tcp(host, port).await?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(Box::pin(stream))
}

impl Transport {
    /// Opens the transport `endpoint` names. For WebSocket, returns the
    /// subprotocol the server chose.
    pub async fn connect(
        endpoint: &Endpoint,
        opts: &TransportOptions,
    ) -> Result<(Transport, Option<String>), Error> {
        let (host, port) = (endpoint.host.as_str(), endpoint.port);
        match endpoint.scheme {
            Scheme::Tcp => Ok((Transport::Stream(Box::pin(tcp(host, port).await?)), None)),
            Scheme::Tls => Ok((
                Transport::Stream(tls(host, port, opts.tls.as_ref()).await?),
                None,
            )),
            Scheme::Ws | Scheme::Wss => {
                let io: BoxIo = if endpoint.scheme == Scheme::Ws {
                    Box::pin(tcp(host, port).await?)
                } else {
                    tls(host, port, opts.tls.as_ref()).await?
                };
                // tungstenite wants ws/wss; it does not care about TLS itself
                // (the stream is already encrypted).
                let mut req = endpoint
                    .url
                    .as_str()
                    .into_client_request()
                    .map_err(ws_err)?;
                if let Some(p) = &opts.ws_protocols {
                    let v = HeaderValue::from_str(p)
                        .map_err(|e| Error::InvalidUrl(format!("subprotocols: {e}")))?;
                    req.headers_mut().insert("Sec-WebSocket-Protocol", v);
                }
                let config = WebSocketConfig::default()
                    .max_message_size(Some(opts.max_ws_message))
                    .max_frame_size(Some(opts.max_ws_message));
                let (ws, resp) = tokio_tungstenite::client_async_with_config(req, io, Some(config))
                    .await
                    .map_err(ws_err)?;
                let proto = resp
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                Ok((Transport::Ws(Box::new(ws)), proto))
            }
        }
    }

    /// Whether this is a WebSocket transport.
    pub fn is_ws(&self) -> bool {
        matches!(self, Transport::Ws(_))
    }

    /// Reads what is available and appends it to `buf` (at most `max` bytes
    /// from a stream; one whole message from WebSocket). Cancel-safe.
    pub async fn read(&mut self, buf: &mut BytesMut, max: usize) -> Result<Incoming, Error> {
        match self {
            Transport::Stream(s) => {
                buf.reserve(max.min(64 * 1024));
                let n = s.as_mut().take(max as u64).read_buf(buf).await?;
                Ok(if n == 0 {
                    Incoming::Closed(None)
                } else {
                    Incoming::Data { binary: None }
                })
            }
            Transport::Ws(ws) => loop {
                match ws.next().await {
                    None => return Ok(Incoming::Closed(None)),
                    Some(Err(e)) => return Err(ws_err(e)),
                    Some(Ok(Message::Text(t))) => {
                        buf.extend_from_slice(t.as_bytes());
                        return Ok(Incoming::Data {
                            binary: Some(false),
                        });
                    }
                    Some(Ok(Message::Binary(b))) => {
                        buf.extend_from_slice(&b);
                        return Ok(Incoming::Data { binary: Some(true) });
                    }
                    Some(Ok(Message::Close(cf))) => {
                        return Ok(Incoming::Closed(cf.map(|c| u16::from(c.code))))
                    }
                    Some(Ok(_)) => {}
                }
            },
        }
    }

    /// Writes each chunk (on WebSocket: one message per chunk, text when it
    /// is UTF-8, else binary) and flushes once.
    pub async fn write_all(&mut self, chunks: &[Bytes]) -> Result<(), Error> {
        match self {
            Transport::Stream(s) => {
                for c in chunks {
                    s.write_all(c).await?;
                }
                s.flush().await?;
            }
            Transport::Ws(ws) => {
                for c in chunks {
                    let msg = match std::str::from_utf8(c) {
                        Ok(t) => Message::Text(t.into()),
                        Err(_) => Message::Binary(c.clone()),
                    };
                    ws.feed(msg).await.map_err(ws_err)?;
                }
                ws.flush().await.map_err(ws_err)?;
            }
        }
        Ok(())
    }

    /// Sends one WebSocket binary message (an error on a stream transport).
    pub async fn write_ws_binary(&mut self, bytes: Bytes) -> Result<(), Error> {
        match self {
            Transport::Ws(ws) => ws.send(Message::Binary(bytes)).await.map_err(ws_err),
            Transport::Stream(_) => Err(Error::InvalidUrl("not a WebSocket".into())),
        }
    }

    /// Closes politely (WebSocket close frame / TCP shutdown); errors ignored.
    pub async fn close(&mut self) {
        match self {
            Transport::Stream(s) => {
                let _ = s.shutdown().await;
            }
            Transport::Ws(ws) => {
                let _ = WebSocketStream::close(ws.as_mut(), None).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports() {
        let e = Endpoint::parse("tcp://localhost:1234").unwrap();
        assert_eq!(
            (e.scheme, e.host.as_str(), e.port),
            (Scheme::Tcp, "localhost", 1234)
        );
        assert_eq!(Endpoint::parse("stomps://h").unwrap().port, 61614);
        assert_eq!(Endpoint::parse("ws://h/ws").unwrap().port, 80);
        let e = Endpoint::parse("wss://[::1]:8443/ws").unwrap();
        assert_eq!(
            (e.scheme, e.host.as_str(), e.port),
            (Scheme::Wss, "::1", 8443)
        );
        assert_eq!(
            Endpoint::parse("127.0.0.1:61613").unwrap().scheme,
            Scheme::Tcp
        );
        assert!(matches!(
            Endpoint::parse("http://h"),
            Err(Error::InvalidUrl(_))
        ));
        assert!(matches!(
            Endpoint::parse("tcp://"),
            Err(Error::InvalidUrl(_))
        ));
    }
}
