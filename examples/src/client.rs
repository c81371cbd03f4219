//! Connecting the examples: CONNECT credentials and a [`connect`] helper
//! over the workspace's STOMP client, [`stomp_client`].

use anyhow::{Context, Result};
use stomp_client::{Client, ClientBuilder};

/// Credentials sent in CONNECT.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// `login` (in the broker's development mode, the user name).
    pub login: Option<String>,
    /// `passcode` (a password or a JWT).
    pub passcode: Option<String>,
}

/// Connects to `addr` and completes the STOMP handshake.
///
/// `addr` is `ws://host:port/path` (or `wss://`) for WebSocket, or
/// `host:port` / `tcp://host:port` (`tls://` for TLS) for STOMP over TCP.
pub async fn connect(addr: &str, creds: &Credentials) -> Result<Client> {
    let mut b = ClientBuilder::new(addr);
    match (&creds.login, &creds.passcode) {
        (Some(l), p) => b = b.login(l.clone(), p.clone().unwrap_or_default()),
        (None, Some(p)) => b = b.header("passcode", p.clone()),
        (None, None) => {}
    }
    b.connect()
        .await
        .with_context(|| format!("STOMP connect to {addr}"))
}
