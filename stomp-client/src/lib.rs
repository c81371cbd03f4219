//! An async STOMP client for tokio, built on the broker's sans-IO
//! [`stomp_codec`].
//!
//! * Transports: `tcp://`, `tls://` (or `stomps://`), `ws://`, `wss://`
//!   (rustls; see [`transport`]).
//! * CONNECT with login/passcode or a bearer token, version negotiation
//!   (1.2, 1.1, 1.0), heart-beats both ways with failure detection
//!   ([`Error::HeartbeatTimeout`]).
//! * [`Client::send`] resolving on the RECEIPT (or failing with the server
//!   ERROR that names it), [`Client::subscribe`] returning a [`Subscription`]
//!   stream with `ack()`/`nack()` per [`Message`], [`Transaction`]s, graceful
//!   [`Client::disconnect`].
//! * Optional reconnect with backoff that re-subscribes every live
//!   subscription with its id and reports the gap ([`ConnectionEvent`]).
//!
//! # Structure
//!
//! One **connection task** per client owns the socket, the decoder, the
//! heart-beat timers, the subscription table and the receipts in flight; it
//! runs one `select!` over socket reads, commands from handles and the two
//! heart-beat timers. [`Client`] is a cheap handle that sends commands over a
//! bounded channel; each [`Subscription`] owns a bounded channel of messages.
//! Nothing is unbounded: commands (256), receipts in flight (1024, then
//! requests wait), messages per subscription (256, then the task stops
//! reading the socket — see [`Subscription`]), frame size ([`Limits`]).
//! Anything the server sends that is not valid STOMP ends the connection
//! with an [`Error`], never a panic (fuzzed: `stomp-client/fuzz`).
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use stomp_client::{AckMode, Client};
//!
//! # async fn f() -> Result<(), stomp_client::Error> {
//! let client = Client::builder("tcp://127.0.0.1:61613")
//!     .login("svc", "secret")
//!     .connect()
//!     .await?;
//! let mut jobs = client
//!     .subscribe("/queue/jobs")
//!     .ack(AckMode::ClientIndividual)
//!     .await?;
//! client.send("/queue/jobs", "hello").receipt().await?;
//! if let Some(msg) = jobs.next().await {
//!     println!("{}", msg.body_text());
//!     msg.ack().await?;
//! }
//! client.disconnect().await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod client;
mod conn;
mod error;
pub mod transport;

pub use client::{
    Backoff, Client, ClientBuilder, ConnectionEvent, Message, SendRequest, SubscribeRequest,
    Subscription, Transaction,
};
pub use conn::SessionInfo;
pub use error::{Error, ServerError};
pub use stomp_codec::{AckMode, Frame, Headers, Limits, Version};

/// Entry points for the fuzz target and property tests: the client's read
/// path without a socket. Not part of the stable API.
#[doc(hidden)]
pub mod fuzzing {
    use bytes::BytesMut;
    use stomp_codec::{AckMode, Command, Decoded, Decoder, Frame, Limits, Version};
    use tokio::sync::{broadcast, mpsc, oneshot};

    use crate::conn::{parse_connected, State, SubSpec};

    /// Feeds `data`, as if sent by a server, through the client's read path:
    /// the CONNECTED handshake check, then frame handling with two live
    /// subscriptions (auto and client-individual) and a receipt in flight.
    /// Returns how many messages were delivered. Must never panic.
    pub fn read_path(data: &[u8]) -> usize {
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(data);
        let (events, _keep) = broadcast::channel(4);
        let (cmd_tx, _cmd_rx) = mpsc::channel(4);
        let mut state = State::new(Version::V1_2, Some(cmd_tx.downgrade()), events);
        let (tx, mut rx) = mpsc::channel(8);
        for (id, ack) in [("a", AckMode::Auto), ("b", AckMode::ClientIndividual)] {
            let frame = Frame::new(Command::Subscribe)
                .with_header("id", id)
                .with_header("destination", "/topic/x");
            state.add_subscription(
                SubSpec {
                    id: id.into(),
                    ack,
                    frame,
                },
                tx.clone(),
            );
        }
        let (reply, _rx) = oneshot::channel();
        state.add_receipt("r-1".into(), reply);
        let mut connected = false;
        let mut delivered = 0;
        loop {
            let item = match decoder.decode(&mut buf) {
                Ok(Some(i)) => i,
                Ok(None) | Err(_) => return delivered,
            };
            let Decoded::Frame(f) = item else { continue };
            if !connected {
                match parse_connected(&f, &Version::ALL, (1000, 1000)) {
                    Ok(info) => {
                        connected = true;
                        state.version = info.version;
                        decoder.set_version(info.version);
                    }
                    Err(_) => return delivered,
                }
                continue;
            }
            match state.on_frame(f) {
                Ok(Some((tx, msg))) => {
                    let _ = msg.header("ack");
                    if tx.try_send(msg).is_ok() {
                        delivered += 1;
                    }
                    while rx.try_recv().is_ok() {}
                }
                Ok(None) => {}
                Err(_) => return delivered,
            }
        }
    }
}
