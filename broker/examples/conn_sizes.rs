//! Prints the in-memory size of what one idle WebSocket connection holds
//! inline (the connection future, the session, tungstenite's stream), for
//! the S3 memory budget (docs/benchmarks.md). Build in release: debug
//! futures are much larger.
//!
//! `cargo run --release -p stomp-broker --example conn_sizes`

use std::mem::size_of;

use hyper_util::rt::TokioIo;
use stomp_broker::{connection, session::Session, transport::WsTransport};

type Io = TokioIo<hyper::upgrade::Upgraded>;

fn returned<A, B, C, R>(_: impl Fn(A, B, C) -> R) -> usize {
    size_of::<R>()
}

fn main() {
    println!(
        "connection::serve future (WebSocket over TCP): {} B",
        returned(connection::serve::<WsTransport<tokio::net::TcpStream>>)
    );
    println!(
        "connection::serve future (WebSocket over hyper's Upgraded, TLS): {} B",
        returned(connection::serve::<WsTransport<Io>>)
    );
    for (what, bytes) in connection::sizes_ws_tcp() {
        println!("{what} (WebSocket over TCP): {bytes} B");
    }
    println!("Session: {} B", size_of::<Session>());
    println!(
        "WebSocketStream<TokioIo<Upgraded>>: {} B",
        size_of::<tokio_tungstenite::WebSocketStream<Io>>()
    );
    println!(
        "stomp_codec::Decoder: {} B",
        size_of::<stomp_codec::Decoder>()
    );
    println!("tokio Sleep: {} B", size_of::<tokio::time::Sleep>());
}
