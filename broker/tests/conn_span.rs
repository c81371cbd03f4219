//! The per-connection tracing span keeps a constant size: `login` is
//! recorded once, after CONNECT, not on every loop event (the log formatter
//! appends a copy of the field on every `record`).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use stomp_broker::{Broker, Config};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;
use tracing::{span, Subscriber};
use tracing_subscriber::{
    fmt::{format::DefaultFields, FormattedFields},
    layer::{Context, SubscriberExt},
    registry::LookupSpan,
    Layer,
};

/// Captures the formatted fields of every `conn` span when it closes.
#[derive(Clone, Default)]
struct ClosedConnSpans(Arc<Mutex<Vec<String>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for ClosedConnSpans {
    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        if span.name() != "conn" {
            return;
        }
        let ext = span.extensions();
        if let Some(f) = ext.get::<FormattedFields<DefaultFields>>() {
            self.0.lock().unwrap().push(f.fields.clone());
        }
    }
}

/// Reads until `needle` has arrived (or the peer closes); returns all bytes.
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !buf.windows(needle.len()).any(|w| w == needle) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("broker answers in time")
            .unwrap();
        assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn conn_span_records_login_once_however_many_events() {
    let closed = ClosedConnSpans::default();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::sink),
        )
        .with(closed.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut config = Config::default();
    config.listen.stomp = "127.0.0.1:0".into();
    config.listen.http = String::new();
    config.heartbeat.server = "0,0".into();
    let shutdown = CancellationToken::new();
    let broker = Broker::start(config, shutdown.clone()).await.unwrap();
    let addr = broker.stomp_addr().unwrap();
    let waiter = tokio::spawn(broker.wait());

    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\nheart-beat:0,0\n\n\0")
        .await
        .unwrap();
    read_until(&mut s, &mut buf, b"CONNECTED").await;
    // One round trip per frame, so each is its own loop event (several
    // reads and writes each).
    for i in 0..50 {
        let frame = format!("SEND\ndestination:/topic/span\nreceipt:r{i}\n\nhello\0\n");
        s.write_all(frame.as_bytes()).await.unwrap();
        read_until(&mut s, &mut buf, format!("receipt-id:r{i}\n").as_bytes()).await;
    }
    s.write_all(b"DISCONNECT\nreceipt:bye\n\n\0").await.unwrap();
    read_until(&mut s, &mut buf, b"receipt-id:bye\n").await;
    drop(s);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let fields = loop {
        if let Some(f) = closed.0.lock().unwrap().first().cloned() {
            break f;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "conn span never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        fields.matches("login=").count(),
        1,
        "span fields: {} bytes: {:.300}",
        fields.len(),
        fields
    );
    assert!(fields.contains("login=\"guest\""), "{fields}");
    shutdown.cancel();
    waiter.await.unwrap();
}
