//! The client against the real broker (in-process, `127.0.0.1:0`) and
//! against fake servers that misbehave.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures_util::StreamExt;
use stomp_broker::{Broker, Config};
use stomp_client::{
    AckMode, Backoff, Client, ClientBuilder, ConnectionEvent, Error, Message, Subscription,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::broadcast,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

struct TestBroker {
    stomp: SocketAddr,
    http: SocketAddr,
    addrs: stomp_broker::Addrs,
    shutdown: CancellationToken,
    waiter: Option<tokio::task::JoinHandle<()>>,
}

impl TestBroker {
    async fn start_with(tweak: impl FnOnce(&mut Config)) -> Result<TestBroker> {
        let mut config = Config::default();
        config.listen.stomp = "127.0.0.1:0".into();
        config.listen.http = "127.0.0.1:0".into();
        config.shutdown_timeout_ms = 500;
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let broker = Broker::start(config, shutdown.clone()).await?;
        let addrs = broker.addrs();
        Ok(TestBroker {
            stomp: addrs.stomp.context("stomp listener")?,
            http: addrs.http.context("http listener")?,
            addrs,
            shutdown,
            waiter: Some(tokio::spawn(broker.wait())),
        })
    }

    async fn start() -> Result<TestBroker> {
        Self::start_with(|_| {}).await
    }

    fn tcp_url(&self) -> String {
        format!("tcp://{}", self.stomp)
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(w) = self.waiter.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn next(sub: &mut Subscription) -> Result<Message> {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .map_err(|_| anyhow!("no message within {WAIT:?}"))?
        .ok_or_else(|| anyhow!("subscription ended"))
}

async fn event(
    rx: &mut broadcast::Receiver<ConnectionEvent>,
    want: impl Fn(&ConnectionEvent) -> bool,
) -> Result<ConnectionEvent> {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = tokio::time::timeout(left, rx.recv())
            .await
            .map_err(|_| anyhow!("event not seen in time"))??;
        if want(&e) {
            return Ok(e);
        }
    }
}

async fn publish_and_receive(url: &str) -> Result<()> {
    let client = ClientBuilder::new(url)
        .heart_beat(500, 500)
        .connect()
        .await?;
    ensure!(client.version() == stomp_client::Version::V1_2);
    ensure!(client.session().heart_beat.0 > 0, "heart-beats negotiated");
    let mut sub = client.subscribe("/topic/orders.results").await?;
    client
        .send("/topic/orders.results", r#"{"order":1}"#)
        .content_type("application/json")
        .header("x-trace", "t-1")
        .receipt()
        .await?;
    let m = next(&mut sub).await?;
    ensure!(m.body_text() == r#"{"order":1}"#);
    ensure!(m.header("x-trace") == Some("t-1"));
    ensure!(m.destination() == Some("/topic/orders.results"));
    ensure!(m.subscription() == Some(sub.id()));
    // A receipt-less send is delivered too.
    client.send("/topic/orders.results", "two").await?;
    ensure!(next(&mut sub).await?.body_text() == "two");
    client.disconnect().await?;
    ensure!(client.is_closed());
    ensure!(tokio::time::timeout(WAIT, sub.next()).await?.is_none());
    ensure!(matches!(
        client.send("/topic/x", "late").await,
        Err(Error::Closed)
    ));
    Ok(())
}

#[tokio::test]
async fn tcp_and_websocket_publish_with_receipts_subscribe_and_disconnect() -> Result<()> {
    let b = TestBroker::start().await?;
    publish_and_receive(&b.tcp_url()).await.context("tcp")?;
    publish_and_receive(&b.ws_url()).await.context("ws")?;
    let c = Client::connect(&b.ws_url()).await?;
    ensure!(c.session().subprotocol.as_deref() == Some("v12.stomp"));
    Ok(())
}

#[tokio::test]
async fn an_error_naming_the_receipt_rejects_the_send() -> Result<()> {
    let b = TestBroker::start().await?;
    let client = Client::connect(&b.tcp_url()).await?;
    let mut events = client.events();
    match client.send("/nowhere/at-all", "x").receipt().await {
        Err(Error::Protocol(se)) => {
            ensure!(se
                .receipt_id
                .as_deref()
                .is_some_and(|r| r.starts_with("receipt-")));
            ensure!(!se.message.is_empty(), "{se:?}");
        }
        other => bail!("expected a server ERROR, got {other:?}"),
    }
    event(&mut events, |e| matches!(e, ConnectionEvent::Closed)).await?;
    ensure!(client.is_closed());
    Ok(())
}

#[tokio::test]
async fn acks_nacks_and_redelivery_on_a_queue() -> Result<()> {
    let b = TestBroker::start().await?;
    let a = Client::connect(&b.tcp_url()).await?;
    let c = Client::connect(&b.ws_url()).await?;
    let mut sa = a
        .subscribe("/queue/jobs")
        .ack(AckMode::ClientIndividual)
        .await?;
    a.send("/queue/jobs", "m0").receipt().await?;
    a.send("/queue/jobs", "m1").receipt().await?;
    let m0 = next(&mut sa).await?;
    let m1 = next(&mut sa).await?;
    ensure!((m0.body_text(), m1.body_text()) == ("m0".into(), "m1".into()));
    m0.ack().await?;
    // A second consumer; NACK of m1 hands it back to the queue.
    let mut sc = c
        .subscribe("/queue/jobs")
        .ack(AckMode::ClientIndividual)
        .await?;
    m1.nack().await?;
    let again = tokio::select! {
        m = next(&mut sc) => m?,
        m = next(&mut sa) => m?,
    };
    ensure!(again.body_text() == "m1");
    ensure!(again.header("redelivered") == Some("true"));
    ensure!(again.message_id() == m1.message_id());
    again.ack().await?;
    // Nothing unacknowledged is left: after `a` goes away, `c` gets only new work.
    drop(sa);
    a.disconnect().await?;
    c.send("/queue/jobs", "m2").receipt().await?;
    ensure!(next(&mut sc).await?.body_text() == "m2");
    Ok(())
}

#[tokio::test]
async fn transactions_commit_and_abort() -> Result<()> {
    let b = TestBroker::start().await?;
    let client = Client::connect(&b.tcp_url()).await?;
    let mut sub = client.subscribe("/topic/tx").await?;
    let t1 = client.begin().await?;
    t1.send("/topic/tx", "aborted").await?;
    t1.abort().await?;
    let t2 = client.begin().await?;
    t2.send("/topic/tx", "committed").await?;
    t2.commit().await?;
    client.send("/topic/tx", "after").receipt().await?;
    ensure!(next(&mut sub).await?.body_text() == "committed");
    ensure!(next(&mut sub).await?.body_text() == "after");

    // ACK inside a transaction takes effect on commit.
    let mut q = client
        .subscribe("/queue/txq")
        .ack(AckMode::ClientIndividual)
        .await?;
    client.send("/queue/txq", "job").receipt().await?;
    let m = next(&mut q).await?;
    let t3 = client.begin().await?;
    t3.ack(&m).await?;
    t3.commit().await?;
    Ok(())
}

fn tls_files() -> Result<(PathBuf, PathBuf, Vec<u8>)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let dir = std::env::temp_dir().join(format!(
        "stomp-client-tls-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir)?;
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem())?;
    std::fs::write(&k, cert.signing_key.serialize_pem())?;
    Ok((c, k, cert.cert.der().to_vec()))
}

#[tokio::test]
async fn tls_and_secure_websocket_with_a_private_root() -> Result<()> {
    let (cert, key, der) = tls_files()?;
    let b = TestBroker::start_with(|c| {
        c.listen.stomp_tls = "127.0.0.1:0".into();
        c.listen.https = "127.0.0.1:0".into();
        c.tls.cert_file = Some(cert.clone());
        c.tls.key_file = Some(key.clone());
    })
    .await?;
    let tls = b.addrs.stomp_tls.context("tls listener")?.port();
    let https = b.addrs.https.context("https listener")?.port();
    for url in [
        format!("tls://localhost:{tls}"),
        format!("wss://localhost:{https}/ws"),
    ] {
        let c = ClientBuilder::new(&url)
            .add_root_certificate(der.clone())
            .connect()
            .await
            .with_context(|| url.clone())?;
        let mut sub = c.subscribe("/topic/secure").await?;
        c.send("/topic/secure", "s").receipt().await?;
        ensure!(next(&mut sub).await?.body_text() == "s");
        c.disconnect().await?;
    }
    // Without the private root the handshake fails with a TLS error.
    match Client::connect(&format!("tls://localhost:{tls}")).await {
        Err(Error::Tls(_)) => {}
        other => bail!("expected a TLS error, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(cert.parent().unwrap_or(&cert));
    Ok(())
}

#[tokio::test]
async fn login_passcode_and_bearer_token_authenticate() -> Result<()> {
    const SECRET: &str = "client-test-secret";
    let dir = std::env::temp_dir().join(format!("stomp-client-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let users = dir.join("users.toml");
    let hash = stomp_broker::auth::hash_password("correct horse")?;
    std::fs::write(
        &users,
        format!("[[user]]\nname = \"ops\"\npassword_hash = \"{hash}\"\n"),
    )?;
    let b = TestBroker::start_with(|c| {
        c.auth.users_file = Some(users.clone());
        c.auth.jwt.hs256_secret = Some(SECRET.into());
        c.auth.jwt.leeway_s = 0;
    })
    .await?;
    let c = ClientBuilder::new(b.tcp_url())
        .login("ops", "correct horse")
        .connect()
        .await?;
    ensure!(c.session().user_name.as_deref() == Some("ops"));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "alice", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?;
    for url in [b.tcp_url(), b.ws_url()] {
        let c = ClientBuilder::new(url).bearer(&token).connect().await?;
        ensure!(c.session().user_name.as_deref() == Some("alice"));
    }
    match ClientBuilder::new(b.tcp_url())
        .login("ops", "wrong")
        .connect()
        .await
    {
        Err(Error::Protocol(se)) => ensure!(se.message == "authentication failed", "{se:?}"),
        other => bail!("expected an authentication ERROR, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A server that answers CONNECT with heart-beats and then says nothing.
/// Returns the bytes the client sent after CONNECT.
async fn silent_server(listener: TcpListener) -> Result<Vec<u8>> {
    let (mut s, _) = listener.accept().await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.contains(&0) {
        let n = s.read(&mut buf).await?;
        ensure!(n > 0, "closed before CONNECT");
        got.extend_from_slice(&buf[..n]);
    }
    s.write_all(b"CONNECTED\nversion:1.2\nheart-beat:100,100\n\n\0")
        .await?;
    let mut after = Vec::new();
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(after),
            Ok(n) => after.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_silent_server_is_detected_by_heart_beat() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(silent_server(listener));
    let client = ClientBuilder::new(format!("tcp://{addr}"))
        .heart_beat(100, 100)
        .connect()
        .await?;
    ensure!(client.session().heart_beat == (100, 100));
    let mut events = client.events();
    let started = tokio::time::Instant::now();
    let e = event(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await?;
    let ConnectionEvent::Disconnected { error, .. } = e else {
        bail!("not a disconnect")
    };
    ensure!(
        matches!(error, Error::HeartbeatTimeout(d) if d == Duration::from_millis(200)),
        "{error:?}"
    );
    ensure!(started.elapsed() < Duration::from_secs(2));
    event(&mut events, |e| matches!(e, ConnectionEvent::Closed)).await?;
    // The client closed the socket, after sending its own heart-beats.
    let after = tokio::time::timeout(WAIT, server).await???;
    ensure!(
        !after.is_empty() && after.iter().all(|&b| b == b'\n'),
        "{after:?}"
    );
    Ok(())
}

#[tokio::test]
async fn reconnects_after_a_broker_restart_resubscribes_and_reports_the_gap() -> Result<()> {
    let b = TestBroker::start().await?;
    let port = b.stomp;
    let client = ClientBuilder::new(b.tcp_url())
        .heart_beat(0, 0)
        .reconnect(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            factor: 2.0,
            max_attempts: None,
        })
        .connect()
        .await?;
    let mut events = client.events();
    let mut sub = client.subscribe("/topic/restart").id("keep-me").await?;
    client.send("/topic/restart", "before").receipt().await?;
    ensure!(next(&mut sub).await?.body_text() == "before");
    b.stop().await;
    event(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await?;
    // A send while disconnected is kept for the next connection.
    client.send("/topic/restart", "during-gap").await?;
    let b2 = TestBroker::start_with(|c| c.listen.stomp = port.to_string()).await?;
    let e = event(&mut events, |e| {
        matches!(e, ConnectionEvent::Reconnected { .. })
    })
    .await?;
    let gap = e.gap().context("gap")?;
    ensure!(
        gap > Duration::ZERO && gap < Duration::from_secs(10),
        "{gap:?}"
    );
    // Resubscribed with the same id: a message published now arrives.
    // Resubscribed with the same id (before the kept send went out).
    ensure!(next(&mut sub).await?.body_text() == "during-gap");
    let other = Client::connect(&b2.tcp_url()).await?;
    other.send("/topic/restart", "after").receipt().await?;
    let m = next(&mut sub).await?;
    ensure!(m.body_text() == "after");
    ensure!(m.subscription() == Some("keep-me"));
    client.send("/topic/restart", "mine").receipt().await?;
    ensure!(next(&mut sub).await?.body_text() == "mine");
    // DISCONNECT while reconnecting ends the client at once.
    b2.stop().await;
    event(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await?;
    tokio::time::timeout(WAIT, client.disconnect()).await??;
    ensure!(client.is_closed());
    ensure!(tokio::time::timeout(WAIT, sub.next()).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn an_undrained_subscription_back_pressures_without_losing_messages() -> Result<()> {
    let b = TestBroker::start().await?;
    let client = ClientBuilder::new(b.tcp_url())
        .subscription_buffer(2)
        .heart_beat(100, 100)
        .connect()
        .await?;
    let mut slow = client.subscribe("/queue/slow").await?;
    let mut fast = client.subscribe("/topic/fast").await?;
    let publisher = Client::connect(&b.tcp_url()).await?;
    for i in 0..20 {
        publisher
            .send("/queue/slow", format!("m{i}"))
            .receipt()
            .await?;
    }
    // Longer than the heart-beat limit: the connection survives the pause.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..20 {
        ensure!(next(&mut slow).await?.body_text() == format!("m{i}"));
    }
    publisher.send("/topic/fast", "f").receipt().await?;
    ensure!(next(&mut fast).await?.body_text() == "f");
    ensure!(!client.is_closed());
    Ok(())
}

#[tokio::test]
async fn invalid_urls_are_rejected() {
    for url in ["http://h:1", "tcp://", "ws://:80/ws"] {
        assert!(
            matches!(Client::connect(url).await, Err(Error::InvalidUrl(_))),
            "{url}"
        );
    }
}

mod hostile_servers {
    use super::*;
    use proptest::prelude::*;

    /// Serves `bytes` to the first client after reading its CONNECT, then
    /// closes.
    async fn serve_bytes(listener: TcpListener, bytes: Vec<u8>) {
        if let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        }
    }

    async fn run_client(bytes: Vec<u8>) -> Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve_bytes(listener, bytes));
        let connected = ClientBuilder::new(format!("tcp://{addr}"))
            .connect_timeout(Duration::from_secs(2))
            .receipt_timeout(Duration::from_secs(2))
            .connect()
            .await;
        let Ok(client) = connected else { return Ok(()) };
        let sub = client.subscribe("/topic/x").await;
        if let Ok(mut sub) = sub {
            while tokio::time::timeout(Duration::from_secs(2), sub.next())
                .await
                .ok()
                .flatten()
                .is_some()
            {}
        }
        // The task ended through its normal path (a panic would leave the
        // client open forever).
        let deadline = tokio::time::Instant::now() + WAIT;
        while !client.is_closed() {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "client never closed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    fn server_bytes() -> impl Strategy<Value = Vec<u8>> {
        let frames = prop::collection::vec(
            prop_oneof![
                Just(
                    b"MESSAGE\nsubscription:sub-1\nmessage-id:1\ndestination:/topic/x\n\nhi\0"
                        .to_vec()
                ),
                Just(b"RECEIPT\nreceipt-id:subscribe-2\n\n\0".to_vec()),
                Just(b"ERROR\nmessage:bad\n\nbody\0".to_vec()),
                Just(b"\n".to_vec()),
                prop::collection::vec(any::<u8>(), 0..64),
            ],
            0..6,
        );
        (any::<bool>(), frames).prop_map(|(connected, parts)| {
            let mut out = if connected {
                b"CONNECTED\nversion:1.2\n\n\0".to_vec()
            } else {
                Vec::new()
            };
            for p in parts {
                out.extend_from_slice(&p);
            }
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_bytes_from_a_server_never_panic_the_client(bytes in server_bytes()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(run_client(bytes)).unwrap();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_bytes_never_panic_the_read_path(bytes in server_bytes()) {
            stomp_client::fuzzing::read_path(&bytes);
        }

        #[test]
        fn random_bytes_never_panic_the_read_path(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            stomp_client::fuzzing::read_path(&bytes);
        }
    }

    #[test]
    fn the_read_path_delivers_messages_for_live_subscriptions() {
        let data = b"CONNECTED\nversion:1.2\n\n\0MESSAGE\nsubscription:a\nmessage-id:1\ndestination:/topic/x\n\nhi\0\nMESSAGE\nsubscription:b\nmessage-id:2\nack:2\ndestination:/topic/x\n\nho\0MESSAGE\nsubscription:zz\n\n\0";
        assert_eq!(stomp_client::fuzzing::read_path(data), 2);
    }
}
