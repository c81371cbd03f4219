//! The examples, run as library functions against an embedded broker on
//! `127.0.0.1:0`, so they cannot rot.

use std::time::Duration;

use examples::{
    client::Credentials,
    embedded::{tick, EmbeddedBroker},
    publisher::{publish, PublishOptions},
    subscriber::{subscribe, SubscribeOptions},
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// Starts `subscribe` in a task and returns once its SUBSCRIBE was confirmed.
async fn spawn_subscriber(
    opts: SubscribeOptions,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<String>>> {
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut bodies = Vec::new();
        subscribe(
            &opts,
            cancel,
            move || {
                let _ = tx.send(());
            },
            |m| bodies.push(String::from_utf8_lossy(&m.body).into_owned()),
        )
        .await?;
        Ok(bodies)
    });
    tokio::time::timeout(WAIT, rx)
        .await
        .expect("subscriber subscribed in time")
        .expect("subscriber task alive");
    task
}

#[tokio::test]
async fn publisher_waits_for_receipts_and_tcp_subscriber_gets_every_message_in_order() {
    let broker = EmbeddedBroker::start(EmbeddedBroker::ephemeral_config())
        .await
        .unwrap();
    let addr = broker.stomp_addr().unwrap();
    let sub = spawn_subscriber(
        SubscribeOptions {
            addr: addr.clone(),
            destination: "/topic/order.*".into(),
            count: Some(10),
            credentials: Credentials::default(),
        },
        CancellationToken::new(),
    )
    .await;
    let mut confirmed = Vec::new();
    let report = publish(
        &PublishOptions {
            addr,
            destination: "/topic/order.42".into(),
            count: 10,
            ..PublishOptions::default()
        },
        |n, _| confirmed.push(n),
    )
    .await
    .unwrap();
    assert_eq!(report.confirmed, 10);
    assert_eq!(confirmed, (1..=10).collect::<Vec<_>>());
    let bodies = tokio::time::timeout(WAIT, sub)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let expected: Vec<String> = (1..=10)
        .map(|n| format!(r#"{{"orderId":"42","seq":{n}}}"#))
        .collect();
    assert_eq!(bodies, expected);
    broker.stop().await;
}

#[tokio::test]
async fn websocket_subscriber_gets_only_its_own_user_destination() {
    let broker = EmbeddedBroker::start(EmbeddedBroker::ephemeral_config())
        .await
        .unwrap();
    let ws = broker.ws_url().unwrap();
    let cancel = CancellationToken::new();
    let sub = spawn_subscriber(
        SubscribeOptions {
            addr: ws,
            destination: "/user/queue/order-updates".into(),
            count: Some(1),
            credentials: Credentials {
                login: Some("alice".into()),
                passcode: None,
            },
        },
        cancel.clone(),
    )
    .await;
    // Bob's update must not reach alice; hers must.
    let to_bob = broker
        .publish_json(
            "/user/bob/queue/order-updates",
            &serde_json::json!({"for": "bob"}),
        )
        .unwrap();
    assert_eq!(to_bob, 0, "nobody is subscribed as bob");
    let to_alice = broker
        .publish_json(
            "/user/alice/queue/order-updates",
            &serde_json::json!({"for": "alice"}),
        )
        .unwrap();
    assert_eq!(to_alice, 1);
    let bodies = tokio::time::timeout(WAIT, sub)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(bodies, vec![r#"{"for":"alice"}"#.to_owned()]);
    broker.stop().await;
}

#[tokio::test]
async fn embedded_broker_in_process_publish_reaches_local_subscription() {
    let broker = EmbeddedBroker::start(EmbeddedBroker::ephemeral_config())
        .await
        .unwrap();
    let mut local = broker.subscribe_local("/topic/ticks").unwrap();
    let cancel = CancellationToken::new();
    let ticking = {
        let cancel = cancel.clone();
        let broker = &broker;
        async move { tick(broker, "/topic/ticks", Duration::from_millis(10), cancel).await }
    };
    let reading = async {
        let mut got = Vec::new();
        for _ in 0..3 {
            let msg = tokio::time::timeout(WAIT, local.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&*msg.destination, "/topic/ticks");
            got.push(String::from_utf8_lossy(msg.template.body()).into_owned());
        }
        cancel.cancel();
        got
    };
    let (ticks, got) = tokio::join!(ticking, reading);
    assert!(ticks.unwrap() >= 3);
    assert_eq!(got, [r#"{"tick":1}"#, r#"{"tick":2}"#, r#"{"tick":3}"#]);
    drop(local);
    broker.stop().await;
}

#[tokio::test]
async fn publisher_reports_the_brokers_error() {
    let broker = EmbeddedBroker::start(EmbeddedBroker::ephemeral_config())
        .await
        .unwrap();
    let err = publish(
        &PublishOptions {
            addr: broker.stomp_addr().unwrap(),
            destination: "/nowhere/x".into(),
            count: 1,
            ..PublishOptions::default()
        },
        |_, _| {},
    )
    .await
    .unwrap_err();
    // The broker's ERROR frame, typed: its `message` header names the problem.
    match err.downcast_ref::<stomp_client::Error>() {
        Some(stomp_client::Error::Protocol(e)) => {
            assert_eq!(e.message, "unknown destination", "{err:#}")
        }
        _ => panic!("unexpected error: {err:#}"),
    }
    broker.stop().await;
}

/// GET over a raw TCP connection; returns (status, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test]
async fn demo_web_serves_the_page_and_the_stomp_bundle_and_nothing_else() {
    let dir = std::env::temp_dir().join(format!("demo-web-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("stomp.umd.min.js");
    std::fs::write(&bundle, "/* stomp.js */").unwrap();
    let cancel = CancellationToken::new();
    let (addr, serve) = examples::web::bind(
        "127.0.0.1:0",
        examples::web::WebConfig {
            web_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web"),
            stomp_js: bundle,
        },
        cancel.clone(),
    )
    .await
    .unwrap();
    let server = tokio::spawn(serve);
    let (status, body) = http_get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("stomp.umd.min.js") && body.contains("app.js"));
    assert_eq!(http_get(addr, "/stomp.umd.min.js").await.0, 200);
    assert_eq!(http_get(addr, "/app.js").await.0, 200);
    assert_eq!(http_get(addr, "/../Cargo.toml").await.0, 404);
    assert_eq!(http_get(addr, "/%2e%2e/Cargo.toml").await.0, 404);
    cancel.cancel();
    server.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
