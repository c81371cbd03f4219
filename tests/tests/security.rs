//! Authentication, authorization, user destinations, Origin checks, TLS and
//! abuse limits.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{ensure, Result};
use bytes::Bytes;
use e2e_tests::{body, Client, TestBroker};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use stomp_broker::{
    acl::{AclRule, Permission},
    Config,
};
use stomp_codec::{Command, Headers};

const SECRET: &str = "test-hs256-secret-test-hs256-secret";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn rs256(claims: Value) -> String {
    let pem = std::fs::read(fixture("rsa-private.pem")).expect("fixture");
    encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&pem).expect("rsa key"),
    )
    .expect("sign")
}

fn es256(claims: Value) -> String {
    let pem = std::fs::read(fixture("ec-private.pem")).expect("fixture");
    encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&pem).expect("ec key"),
    )
    .expect("sign")
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn claims(sub: &str, extra: Value) -> Value {
    let mut c =
        json!({ "sub": sub, "exp": now() + 600, "aud": "orders-web", "iss": "https://auth.test" });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn jwt_config(c: &mut Config) {
    c.auth.jwt.hs256_secret = Some(SECRET.into());
    c.auth.jwt.rs256_public_key_file = Some(fixture("rsa-public.pem"));
    c.auth.jwt.es256_public_key_file = Some(fixture("ec-public.pem"));
    c.auth.jwt.audience = vec!["orders-web".into()];
    c.auth.jwt.issuer = vec!["https://auth.test".into()];
    c.auth.jwt.leeway_s = 0;
    c.acl = vec![
        AclRule {
            destination: "/topic/order.{claim:orders}".into(),
            allow: vec![Permission::Subscribe],
        },
        AclRule {
            destination: "/topic/public.#".into(),
            allow: vec![Permission::Subscribe, Permission::Send],
        },
    ];
}

async fn connect_token(b: &TestBroker, token: &str) -> Result<Client> {
    let mut c = b.raw(e2e_tests::Kind::Ws).await;
    c.connect_with(&[("accept-version", "1.2"), ("passcode", token)])
        .await?;
    Ok(c)
}

async fn expect_auth_failure(b: &TestBroker, headers: &[(&str, &str)]) -> Result<()> {
    let mut c = b.raw(e2e_tests::Kind::Tcp).await;
    c.command(Command::Connect, headers).await?;
    let e = c.expect_error_and_close().await?;
    ensure!(
        e.header_str("message") == Some("authentication failed"),
        "{:?}",
        e.headers
    );
    Ok(())
}

#[tokio::test]
async fn valid_tokens_of_each_algorithm_and_transport_form_are_accepted() -> Result<()> {
    let b = TestBroker::start_with(jwt_config).await;
    for token in [
        hs256(claims("alice", json!({}))),
        rs256(claims("alice", json!({}))),
        es256(claims("alice", json!({}))),
    ] {
        let c = connect_token(&b, &token).await?;
        drop(c);
        let mut c = b.raw(e2e_tests::Kind::Tcp).await;
        let f = c
            .connect_with(&[
                ("accept-version", "1.2"),
                ("Authorization", &format!("Bearer {token}")),
            ])
            .await?;
        ensure!(f.header_str("user-name") == Some("alice"));
    }
    // Token on the WebSocket URL, for clients that cannot set headers.
    let token = hs256(claims("carol", json!({})));
    let mut c = Client::ws(&format!("{}?access_token={token}", b.ws_url())).await?;
    let f = c.connect_default().await?;
    ensure!(f.header_str("user-name") == Some("carol"));
    // The same token with every character percent-escaped (lowercase hex, as
    // some URL builders emit it) is decoded in full.
    let escaped: String = token.bytes().map(|b| format!("%{b:02x}")).collect();
    let mut c = Client::ws(&format!("{}?access_token={escaped}", b.ws_url())).await?;
    let f = c.connect_default().await?;
    ensure!(f.header_str("user-name") == Some("carol"));
    Ok(())
}

#[tokio::test]
async fn forged_wrong_algorithm_expired_early_and_wrong_audience_tokens_are_rejected() -> Result<()>
{
    let b = TestBroker::start_with(jwt_config).await;
    let good = hs256(claims("alice", json!({})));
    // Forged signature: flip the last character of the signature.
    let mut forged = good.clone();
    let last = forged.pop().unwrap_or('A');
    forged.push(if last == 'A' { 'B' } else { 'A' });
    // Signed with another secret.
    let other = encode(
        &Header::new(Algorithm::HS256),
        &claims("alice", json!({})),
        &EncodingKey::from_secret(b"some-other-secret-some-other-secret"),
    )?;
    // alg: none.
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims("alice", json!({})).to_string().as_bytes())
    );
    // HS/RS confusion: HS256 signed with the RSA *public* key as secret.
    let pubkey = std::fs::read(fixture("rsa-public.pem"))?;
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims("alice", json!({})),
        &EncodingKey::from_secret(&pubkey),
    )?;
    let expired = hs256(claims("alice", json!({ "exp": now() - 10 })));
    let not_yet = hs256(claims("alice", json!({ "nbf": now() + 3600 })));
    let wrong_aud = hs256(claims("alice", json!({ "aud": "someone-else" })));
    let wrong_iss = hs256(claims("alice", json!({ "iss": "https://evil.test" })));
    let no_sub =
        hs256(json!({ "exp": now() + 600, "aud": "orders-web", "iss": "https://auth.test" }));
    for (what, token) in [
        ("forged", forged),
        ("other secret", other),
        ("none", none),
        ("hs/rs confusion", confused),
        ("expired", expired),
        ("not yet valid", not_yet),
        ("wrong audience", wrong_aud),
        ("wrong issuer", wrong_iss),
        ("no subject", no_sub),
    ] {
        expect_auth_failure(&b, &[("accept-version", "1.2"), ("passcode", &token)])
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        expect_auth_failure(
            &b,
            &[
                ("accept-version", "1.2"),
                ("Authorization", &format!("Bearer {token}")),
            ],
        )
        .await
        .map_err(|e| anyhow::anyhow!("{what} (header): {e}"))?;
    }
    // No credentials at all: anonymous is off once auth is configured.
    expect_auth_failure(&b, &[("accept-version", "1.2")]).await?;
    ensure!(b.core.metrics.errors_of("auth") >= 19);
    Ok(())
}

#[tokio::test]
async fn an_expiring_token_ends_its_session() -> Result<()> {
    let b = TestBroker::start_with(jwt_config).await;
    let token = hs256(claims("alice", json!({ "exp": now() + 2 })));
    let mut c = connect_token(&b, &token).await?;
    c.subscribe("s", "/topic/public.news", "auto").await?;
    let e = c.recv_within(Duration::from_secs(6)).await?;
    ensure!(
        e.command == Command::Error && e.header_str("message") == Some("token expired"),
        "{e:?}"
    );
    c.expect_closed().await?;
    Ok(())
}

#[tokio::test]
async fn cross_user_attacks_get_errors_and_leak_nothing() -> Result<()> {
    let b = TestBroker::start_with(jwt_config).await;
    let alice = hs256(claims("alice", json!({ "orders": ["100", "101"] })));
    let bob = hs256(claims("bob", json!({ "orders": ["200"] })));

    let mut bob_orders = connect_token(&b, &bob).await?;
    bob_orders
        .subscribe("o", "/topic/order.200", "auto")
        .await?;
    let mut bob_user = connect_token(&b, &bob).await?;
    bob_user
        .subscribe("u", "/user/queue/order-updates", "auto")
        .await?;

    // Alice may read her own orders.
    let mut a = connect_token(&b, &alice).await?;
    a.subscribe("mine", "/topic/order.100", "auto").await?;

    // Every attempt at Bob's data is refused with the same ERROR.
    for (dest, extra) in [
        ("/topic/order.200", None),
        ("/topic/order.*", None),
        ("/topic/order.#", None),
        ("/topic/#", None),
        ("/topic/order.200.x", None),
        ("/user/bob/queue/order-updates", None),
        ("/user/bob/#", None),
        ("/user/queue/../bob/queue/order-updates", None),
        (
            "/topic/order.100",
            Some(("destination", "/topic/order.200")),
        ),
        ("/queue/order.200", None),
    ] {
        let mut c = connect_token(&b, &alice).await?;
        let mut f = stomp_codec::Frame::new(Command::Subscribe)
            .with_header("id", "x")
            .with_header("destination", dest);
        if let Some((n, v)) = extra {
            // A repeated header: only the first counts, so this subscribes
            // to `dest`, which must be allowed on its own merits.
            f.headers.push(n, v);
            c.send_frame(&f).await?;
            c.command(
                Command::Subscribe,
                &[("id", "y"), ("destination", "/topic/order.200")],
            )
            .await?;
        } else {
            c.send_frame(&f).await?;
        }
        let e = c
            .expect_error_and_close()
            .await
            .map_err(|e| anyhow::anyhow!("{dest}: {e}"))?;
        ensure!(
            matches!(
                e.header_str("message"),
                Some("access denied" | "invalid destination")
            ),
            "{dest}: {:?}",
            e.headers
        );
    }
    // Publishing to Bob is refused too (no send rule for orders).
    let mut c = connect_token(&b, &alice).await?;
    c.send("/topic/order.200", "fake").await?;
    ensure!(c.expect_error_and_close().await?.header_str("message") == Some("access denied"));

    // The server publishes Bob's results: only Bob's sessions get them.
    b.core.publish(
        "/topic/order.200",
        Headers::new(),
        Bytes::from_static(b"bob-order"),
    )?;
    b.core.publish(
        "/user/bob/queue/order-updates",
        Headers::new(),
        Bytes::from_static(b"bob-update"),
    )?;
    b.core.publish(
        "/topic/order.100",
        Headers::new(),
        Bytes::from_static(b"alice-order"),
    )?;
    ensure!(body(&bob_orders.message().await?) == "bob-order");
    ensure!(body(&bob_user.message().await?) == "bob-update");
    ensure!(body(&a.message().await?) == "alice-order");
    a.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn user_destinations_reach_every_session_of_that_user_only() -> Result<()> {
    let b = TestBroker::start().await;
    // Development mode: the login names the user.
    let mut a1 = b.raw(e2e_tests::Kind::Ws).await;
    a1.connect_with(&[("accept-version", "1.2"), ("login", "alice")])
        .await?;
    a1.subscribe("u", "/user/queue/updates", "auto").await?;
    let mut a2 = b.raw(e2e_tests::Kind::Tcp).await;
    a2.connect_with(&[("accept-version", "1.2"), ("login", "alice")])
        .await?;
    a2.subscribe("u", "/user/queue/updates", "auto").await?;
    let mut bob = b.raw(e2e_tests::Kind::Ws).await;
    bob.connect_with(&[("accept-version", "1.2"), ("login", "bob")])
        .await?;
    bob.subscribe("u", "/user/queue/updates", "auto").await?;
    let mut p = b.tcp_client().await;
    p.send_receipted("/user/alice/queue/updates", "for-alice")
        .await?;
    for c in [&mut a1, &mut a2] {
        let m = c.message().await?;
        ensure!(body(&m) == "for-alice");
        ensure!(m.header_str("subscription") == Some("u"));
    }
    bob.expect_silence(Duration::from_millis(200)).await?;
    // Anonymous sessions have no user destinations.
    let mut anon = b.tcp_client().await;
    anon.command(
        Command::Subscribe,
        &[("id", "u"), ("destination", "/user/queue/updates")],
    )
    .await?;
    ensure!(anon.expect_error_and_close().await?.header_str("message") == Some("access denied"));
    Ok(())
}

#[tokio::test]
async fn users_file_passwords_are_checked_and_failures_rate_limited() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("stomp-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let users = dir.join("users.toml");
    let hash = stomp_broker::auth::hash_password("correct horse")?;
    std::fs::write(
        &users,
        format!("[[user]]\nname = \"ops\"\npassword_hash = \"{hash}\"\n"),
    )?;
    let b = TestBroker::start_with(|c| {
        c.auth.users_file = Some(users.clone());
        c.auth.max_failures_per_address = 3;
        c.auth.failure_window_s = 60;
    })
    .await;
    let mut ok = b.raw(e2e_tests::Kind::Tcp).await;
    let f = ok
        .connect_with(&[
            ("accept-version", "1.2"),
            ("login", "ops"),
            ("passcode", "correct horse"),
        ])
        .await?;
    ensure!(f.header_str("user-name") == Some("ops"));
    for _ in 0..3 {
        expect_auth_failure(
            &b,
            &[
                ("accept-version", "1.2"),
                ("login", "ops"),
                ("passcode", "wrong"),
            ],
        )
        .await?;
    }
    // Now even the right password is refused from this address for a while.
    expect_auth_failure(
        &b,
        &[
            ("accept-version", "1.2"),
            ("login", "ops"),
            ("passcode", "correct horse"),
        ],
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn websocket_from_a_foreign_origin_is_refused_with_403() -> Result<()> {
    let b = TestBroker::start().await;
    let handshake = |origin: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n",
            b.http
        )
    };
    for (origin, status) in [
        ("https://evil.example", "403"),
        ("http://localhost:3000", "101"),
        ("null", "403"),
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(b.http).await?;
        s.write_all(handshake(origin).as_bytes()).await?;
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(e2e_tests::WAIT, s.read(&mut buf)).await??;
        let line = String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        ensure!(line.contains(status), "{origin}: {line}");
    }
    Ok(())
}

#[tokio::test]
async fn frame_rate_limit_closes_a_flooding_connection() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.max_frames_per_second = 50).await;
    let mut c = b.tcp_client().await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.extend_from_slice(b"SEND\ndestination:/topic/flood\n\nx\0");
    }
    c.send_raw(&flood).await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("rate limit exceeded"));
    Ok(())
}

#[tokio::test]
async fn per_address_connection_limit_refuses_extra_connections() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.max_connections_per_address = 2).await;
    let _a = b.tcp_client().await;
    let _w = b.ws_client().await;
    let mut third = Client::tcp(b.stomp).await?;
    let e = third.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("too many connections from this address"));
    Ok(())
}

fn tls_files() -> Result<(PathBuf, PathBuf, Vec<u8>)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let dir = std::env::temp_dir().join(format!("stomp-tls-{}-{}", std::process::id(), now()));
    std::fs::create_dir_all(&dir)?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem())?;
    std::fs::write(&key_path, cert.signing_key.serialize_pem())?;
    Ok((cert_path, key_path, cert.cert.der().to_vec()))
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    der: &[u8],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(der.to_vec()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    Ok(connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost")?.to_owned(),
            tcp,
        )
        .await?)
}

#[tokio::test]
async fn tls_listeners_serve_stomp_and_secure_websocket_end_to_end() -> Result<()> {
    let (cert, key, der) = tls_files()?;
    let mut addrs = None;
    let b = TestBroker::start_with(|c| {
        c.listen.stomp_tls = "127.0.0.1:0".into();
        c.listen.https = "127.0.0.1:0".into();
        c.tls.cert_file = Some(cert.clone());
        c.tls.key_file = Some(key.clone());
        c.listen.port_file = Some(cert.with_file_name("ports.json"));
    })
    .await;
    let ports: Value =
        serde_json::from_str(&std::fs::read_to_string(cert.with_file_name("ports.json"))?)?;
    for k in ["stomp_tls", "https"] {
        let a: std::net::SocketAddr = ports[k].as_str().unwrap_or_default().parse()?;
        addrs.get_or_insert_with(Vec::new).push(a);
    }
    let addrs = addrs.unwrap_or_default();
    // STOMP over TLS.
    let mut tls = tls_connect(addrs[0], &der).await?;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"CONNECT\naccept-version:1.2\n\n\0SUBSCRIBE\nid:s\ndestination:/topic/secure\nreceipt:r\n\n\0")
            .await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains("receipt-id:r") {
            let n = tokio::time::timeout(e2e_tests::WAIT, tls.read(&mut buf)).await??;
            ensure!(n > 0, "TLS connection closed early");
            got.extend_from_slice(&buf[..n]);
        }
        ensure!(String::from_utf8_lossy(&got).starts_with("CONNECTED"));
    }
    // Secure WebSocket: publish over wss, receive over the TLS STOMP connection.
    let wss = tls_connect(addrs[1], &der).await?;
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", addrs[1].port()), wss)
            .await?;
    {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        ws.send(Message::Text(
            "CONNECT\naccept-version:1.2\n\n\0SEND\ndestination:/topic/secure\n\nover wss\0".into(),
        ))
        .await?;
    }
    {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains("over wss") {
            let n = tokio::time::timeout(e2e_tests::WAIT, tls.read(&mut buf)).await??;
            ensure!(n > 0, "TLS connection closed early");
            got.extend_from_slice(&buf[..n]);
        }
    }
    drop(b);
    Ok(())
}

#[tokio::test]
async fn jwks_file_keys_are_selected_by_kid() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.auth.jwt.jwks_file = Some(fixture("jwks.json"));
        c.auth.jwt.leeway_s = 0;
    })
    .await;
    let pem = std::fs::read(fixture("rsa-private.pem"))?;
    let key = EncodingKey::from_rsa_pem(&pem)?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-rsa-1".into());
    let token = encode(&header, &claims("dave", json!({})), &key)?;
    let c = connect_token(&b, &token).await?;
    ensure!(c.version == stomp_codec::Version::V1_2);
    // A kid the JWKS does not have is refused.
    header.kid = Some("unknown-kid".into());
    let token = encode(&header, &claims("dave", json!({})), &key)?;
    expect_auth_failure(&b, &[("accept-version", "1.2"), ("passcode", &token)]).await?;
    Ok(())
}

/// GET `path` with extra request header lines; returns (status, raw headers, body).
async fn http_get_with(
    b: &TestBroker,
    path: &str,
    extra: &[(&str, &str)],
) -> Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(b.http).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (n, v) in extra {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_owned(), body.to_owned()))
}

#[tokio::test]
async fn status_snapshot_aggregates_user_destinations_so_no_user_name_leaks() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.auth.jwt.hs256_secret = Some(SECRET.into());
        c.auth.jwt.leeway_s = 0;
    })
    .await;
    let mut names = Vec::new();
    for user in ["alice-k2", "bob-k2"] {
        let mut c = connect_token(&b, &hs256(claims(user, json!({})))).await?;
        c.subscribe("u", "/user/queue/order-updates", "auto")
            .await?;
        names.push((user, c));
    }
    let (status, json_text) = b.http_get("/stats.json").await?;
    ensure!(status == 200, "{status} {json_text}");
    for (user, _) in &names {
        ensure!(
            !json_text.contains(user),
            "user name {user} in /stats.json: {json_text}"
        );
    }
    let v: Value = serde_json::from_str(&json_text)?;
    let top = v["top_destinations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        top.iter()
            .any(|d| d["destination"] == "/user/*/queue/order-updates" && d["subscriptions"] == 2),
        "{top:?}"
    );
    // The live stream carries the same snapshot.
    let mut watcher = connect_token(&b, &hs256(claims("ops-k2", json!({})))).await?;
    watcher
        .subscribe("s", "/topic/broker.stats", "auto")
        .await?;
    let m = watcher.message().await?;
    ensure!(!body_has_any(&m, &["alice-k2", "bob-k2"]), "{}", body(&m));
    ensure!(
        body(&m).contains("/user/*/queue/order-updates"),
        "{}",
        body(&m)
    );
    b.stop().await;
    Ok(())
}

fn body_has_any(f: &stomp_codec::Frame, needles: &[&str]) -> bool {
    let b = body(f);
    needles.iter().any(|n| b.contains(n))
}

#[tokio::test]
async fn status_endpoints_refuse_addresses_outside_the_allow_list() -> Result<()> {
    let b = TestBroker::start_with(|c| c.status.allow = vec!["10.0.0.0/8".into()]).await;
    for path in ["/", "/stats.json", "/metrics"] {
        let (status, _, _) = http_get_with(&b, path, &[]).await?;
        ensure!(status == 403, "{path}: {status}");
    }
    for path in ["/healthz", "/readyz"] {
        let (status, _, _) = http_get_with(&b, path, &[]).await?;
        ensure!(status == 200, "{path}: {status}");
    }
    b.stop().await;
    let b = TestBroker::start_with(|c| {
        c.status.allow = vec!["127.0.0.0/8".into(), "::1/128".into()];
    })
    .await;
    for path in ["/", "/stats.json", "/metrics"] {
        let (status, _, _) = http_get_with(&b, path, &[]).await?;
        ensure!(status == 200, "{path}: {status}");
    }
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn status_endpoints_require_basic_credentials_when_configured() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.status.username = Some("ops".into());
        c.status.password = Some("s3cret".into());
    })
    .await;
    // base64("ops:s3cret"), base64("ops:wrong")
    let good = ("Authorization", "Basic b3BzOnMzY3JldA==");
    let bad = ("Authorization", "Basic b3BzOndyb25n");
    for path in ["/", "/stats.json", "/metrics"] {
        let (status, head, _) = http_get_with(&b, path, &[]).await?;
        ensure!(status == 401, "{path}: {status}");
        ensure!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: basic"),
            "{head}"
        );
        let (status, _, _) = http_get_with(&b, path, &[bad]).await?;
        ensure!(status == 401, "{path} with a wrong password: {status}");
        let (status, _, body) = http_get_with(&b, path, &[good]).await?;
        ensure!(status == 200, "{path} with credentials: {status}");
        ensure!(!body.is_empty());
    }
    let (status, _, _) = http_get_with(&b, "/healthz", &[]).await?;
    ensure!(status == 200);
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn stats_topic_is_only_for_the_status_user_once_status_is_restricted() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.auth.jwt.hs256_secret = Some(SECRET.into());
        c.auth.jwt.leeway_s = 0;
        c.status.username = Some("ops".into());
        c.status.password = Some("s3cret".into());
    })
    .await;
    for dest in ["/topic/broker.stats", "/topic/#", "/topic/broker.*"] {
        let mut alice = connect_token(&b, &hs256(claims("alice", json!({})))).await?;
        alice
            .command(
                Command::Subscribe,
                &[("id", "s"), ("destination", dest), ("receipt", "r")],
            )
            .await?;
        let e = alice.expect_error_and_close().await?;
        ensure!(
            e.header_str("message") == Some("access denied"),
            "{dest}: {:?}",
            e.headers
        );
    }
    // Other topics stay open to alice.
    let mut alice = connect_token(&b, &hs256(claims("alice", json!({})))).await?;
    alice.subscribe("t", "/topic/order.1", "auto").await?;
    let mut ops = connect_token(&b, &hs256(claims("ops", json!({})))).await?;
    ops.subscribe("s", "/topic/broker.stats", "auto").await?;
    let m = ops.message().await?;
    ensure!(body(&m).contains("\"connections\""), "{}", body(&m));
    b.stop().await;
    Ok(())
}
