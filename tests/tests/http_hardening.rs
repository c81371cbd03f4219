//! The HTTP port under hostile clients: header-read and idle keep-alive
//! timeouts, HTTP sockets counted against the connection limits from
//! accept, and the listen backlog.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use e2e_tests::{wait_until, Client, TestBroker};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

/// Reads until the peer closes (Ok(bytes)) or `within` passes (Err).
async fn closed_within(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => bail!("still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(all),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn http_socket_trickling_header_bytes_is_closed_after_the_header_timeout() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.limits.http_header_timeout_ms = 300;
        c.limits.http_idle_timeout_ms = 60_000;
    })
    .await;
    let mut s = TcpStream::connect(b.http).await?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await?;
    let started = Instant::now();
    // One header byte every 50 ms, never finishing: each byte is progress,
    // but the headers as a whole must arrive within the timeout.
    let mut closed = false;
    for _ in 0..100 {
        if s.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => bail!(
                "unexpected response: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    }
    ensure!(closed, "a trickling socket was never closed");
    let took = started.elapsed();
    ensure!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    wait_until(|| b.core.metrics.http_timeouts.load(Relaxed) == 1).await?;
    Ok(())
}

#[tokio::test]
async fn idle_keep_alive_http_socket_is_closed_after_the_idle_timeout() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.limits.http_header_timeout_ms = 60_000;
        c.limits.http_idle_timeout_ms = 300;
    })
    .await;
    // Never sends a byte.
    let mut silent = TcpStream::connect(b.http).await?;
    // Sends one keep-alive request, reads the answer, then stays idle.
    let mut s = TcpStream::connect(b.http).await?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let started = Instant::now();
    let rest = closed_within(&mut s, Duration::from_secs(5)).await?;
    let text = String::from_utf8_lossy(&rest);
    ensure!(text.starts_with("HTTP/1.1 200"), "{text}");
    let took = started.elapsed();
    ensure!(took >= Duration::from_millis(250), "closed after {took:?}");
    closed_within(&mut silent, Duration::from_secs(5)).await?;
    wait_until(|| b.core.metrics.http_timeouts.load(Relaxed) == 2).await?;
    Ok(())
}

#[tokio::test]
async fn http_keep_alive_requests_within_the_idle_timeout_are_served() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.limits.http_header_timeout_ms = 2_000;
        c.limits.http_idle_timeout_ms = 2_000;
    })
    .await;
    let mut s = TcpStream::connect(b.http).await?;
    // Three requests 700 ms apart: more than the idle timeout in total, so
    // each request must move the deadline.
    for _ in 0..3 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        while !String::from_utf8_lossy(&buf).ends_with("ok\n") {
            let mut chunk = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await??;
            ensure!(n > 0, "closed while in use");
            buf.extend_from_slice(&chunk[..n]);
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    ensure!(b.core.metrics.http_timeouts.load(Relaxed) == 0);
    Ok(())
}

#[tokio::test]
async fn idle_http_sockets_count_against_the_per_address_limit() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.max_connections_per_address = 2).await;
    let first = TcpStream::connect(b.http).await?;
    let _second = TcpStream::connect(b.http).await?;
    // Accepted in order: the third is over the limit although the first
    // two have not sent a byte.
    let mut third = TcpStream::connect(b.http).await?;
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answer = closed_within(&mut third, Duration::from_secs(5)).await?;
    let text = String::from_utf8_lossy(&answer);
    ensure!(
        text.starts_with("HTTP/1.1 503") && text.contains("too many connections from this address"),
        "{text}"
    );
    // They share the limit with STOMP connections.
    let mut stomp = Client::tcp(b.stomp).await?;
    let e = stomp.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("too many connections from this address"));
    // Closing one frees its slot.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = b.http_get("/healthz").await?;
        if status == 200 {
            break;
        }
        ensure!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_websocket_session_keeps_its_sockets_slot_instead_of_taking_a_second() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.max_connections_per_address = 1).await;
    let mut ws = b.ws_client().await;
    ws.send_receipted("/topic/x", "hello").await?;
    // The one slot is the WebSocket's: nothing else gets in.
    let mut stomp = Client::tcp(b.stomp).await?;
    stomp.expect_error_and_close().await?;
    ws.disconnect().await?;
    Ok(())
}

/// The backlog of the listening socket bound to `port`, as `ss` reports it
/// (Send-Q of a listening socket).
fn listen_backlog(port: u16) -> Result<u32> {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .context("running ss")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("LISTEN"))
        .with_context(|| format!("no listener on {port}: {text}"))?;
    line.split_whitespace()
        .nth(2)
        .context("no Send-Q")?
        .parse()
        .context("Send-Q")
}

#[tokio::test]
async fn listeners_use_the_configured_backlog() -> Result<()> {
    let b = TestBroker::start().await;
    ensure!(listen_backlog(b.stomp.port())? == 1024);
    ensure!(listen_backlog(b.http.port())? == 1024);
    let b = TestBroker::start_with(|c| c.listen.backlog = 777).await;
    ensure!(listen_backlog(b.stomp.port())? == 777);
    ensure!(listen_backlog(b.http.port())? == 777);
    Ok(())
}
