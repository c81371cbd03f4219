//! Behind Spring's broker relay: one address opens a broker connection per
//! browser session plus one "system" connection carrying every message the
//! application sends. Authenticated sessions pass the per-address cap (which
//! applies to sockets that have not authenticated), a system login is not
//! cut off by the frame-rate limit, and every refusal is counted by reason.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use anyhow::{ensure, Result};
use e2e_tests::{Client, TestBroker};
use stomp_broker::metrics::ConnRefusal;
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// A STOMP/TCP session CONNECTed as `login` (passcode `pw`).
async fn session(b: &TestBroker, login: &str) -> Result<Client> {
    let mut c = Client::tcp(b.stomp).await?;
    c.connect_with(&[
        ("accept-version", "1.2"),
        ("host", "/"),
        ("login", login),
        ("passcode", "pw"),
    ])
    .await?;
    Ok(c)
}

#[tokio::test]
async fn authenticated_sessions_from_one_address_pass_the_unauthenticated_cap() -> Result<()> {
    // Scaled down from 12,000 browsers behind one relay against a cap of
    // 1,000: 200 authenticated sessions against a cap of 50.
    let b = TestBroker::start_with(|c| {
        c.limits.max_unauthenticated_per_address = 50;
        c.limits.max_connections = 1_000;
    })
    .await;
    let mut sessions = Vec::new();
    for i in 0..200 {
        sessions.push(session(&b, &format!("browser-{i}")).await?);
    }
    // Sockets that never authenticate are capped: 50 are admitted (they
    // get no answer while they wait for CONNECT), the 51st is refused.
    let mut idle = Vec::new();
    for k in 1..=50 {
        idle.push(TcpStream::connect(b.stomp).await?);
        // Admitted in the connection's own task: wait for it, so that the
        // one over the cap below is the one refused.
        e2e_tests::wait_until(|| b.core.metrics.connections.load(Relaxed) == 200 + k).await?;
    }
    let mut over = Client::tcp(b.stomp).await?;
    let e = over.expect_error_and_close().await?;
    ensure!(
        e.header_str("message") == Some("too many unauthenticated connections from this address"),
        "{:?}",
        e.headers
    );
    // The same cap holds on the HTTP port (idle HTTP sockets are
    // unauthenticated).
    let mut http = TcpStream::connect(b.http).await?;
    let _ = http
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut http, &mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    ensure!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // Every authenticated session still works.
    for (i, s) in sessions.iter_mut().enumerate().step_by(37) {
        s.send_receipted("/topic/relay", &i.to_string()).await?;
    }
    ensure!(
        b.core
            .metrics
            .connections_refused_of(ConnRefusal::UnauthenticatedPerAddress)
            == 2
    );
    let mut text = String::new();
    b.core.metrics.render(&mut text);
    ensure!(text.contains(
        "stomp_connections_rejected_total{reason=\"max_unauthenticated_per_address\"} 2\n"
    ));
    ensure!(text.contains("stomp_connections_rejected_total{reason=\"max_connections\"} 0\n"));
    // Once the idle sockets are gone, sockets get in again.
    drop(idle);
    e2e_tests::wait_until(|| b.core.metrics.connections.load(Relaxed) <= 200).await?;
    let mut tries = 0;
    while !matches!(b.http_get("/healthz").await, Ok((200, _))) {
        tries += 1;
        ensure!(tries < 100, "slots of closed sockets never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sessions.push(session(&b, "browser-200").await?);
    Ok(())
}

#[tokio::test]
async fn the_system_login_is_not_cut_off_by_the_frame_rate_limit() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("stomp-relay-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let users = dir.join("users.toml");
    let hash = stomp_broker::auth::hash_password("pw")?;
    std::fs::write(
        &users,
        format!(
            "[[user]]\nname = \"relay-system\"\npassword_hash = \"{hash}\"\n\
             [[user]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n"
        ),
    )?;
    let b = TestBroker::start_with(|c| {
        c.auth.users_file = Some(users.clone());
        c.limits.max_frames_per_second = 50;
        c.limits.system_logins = vec!["relay-system".into()];
    })
    .await;
    let mut watcher = session(&b, "alice").await?;
    watcher.subscribe("w", "/topic/app", "auto").await?;
    let mut flood = Vec::new();
    for i in 0..300 {
        flood.extend_from_slice(format!("SEND\ndestination:/topic/app\n\n{i}\0").as_bytes());
    }
    flood.extend_from_slice(b"SEND\ndestination:/topic/app\nreceipt:last\n\nlast\0");
    // The relay's system connection: 301 frames at once, six times the
    // limit; all delivered.
    let mut system = session(&b, "relay-system").await?;
    system.send_raw(&flood).await?;
    system.expect_receipt("last").await?;
    for i in 0..300 {
        let m = watcher.message().await?;
        ensure!(e2e_tests::body(&m) == i.to_string());
    }
    ensure!(e2e_tests::body(&watcher.message().await?) == "last");
    // Any other login is cut off.
    let mut other = session(&b, "alice").await?;
    other.send_raw(&flood).await?;
    let e = other.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("rate limit exceeded"));
    // The system connection is still open and sending.
    system.send_receipted("/topic/app", "still-here").await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn per_address_limit_is_off_by_default_and_counts_refusals_by_reason() -> Result<()> {
    let defaults = stomp_broker::config::Config::default().limits;
    ensure!(defaults.max_connections_per_address == 0);
    ensure!(defaults.max_unauthenticated_per_address == 1_000);
    // Opted back in, the per-address limit counts authenticated sessions
    // too, except a system login's.
    let b = TestBroker::start_with(|c| {
        c.limits.max_connections_per_address = 2;
        c.limits.system_logins = vec!["relay-system".into()];
    })
    .await;
    let _system = session(&b, "relay-system").await?;
    let _a = session(&b, "a").await?;
    let _b = session(&b, "b").await?;
    let mut over = Client::tcp(b.stomp).await?;
    let e = over.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("too many connections from this address"));
    ensure!(
        b.core
            .metrics
            .connections_refused_of(ConnRefusal::PerAddress)
            == 1
    );
    ensure!(
        b.core
            .metrics
            .connections_refused_of(ConnRefusal::UnauthenticatedPerAddress)
            == 0
    );
    Ok(())
}
