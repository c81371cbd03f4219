//! Hostile input: a battery of malformed and abusive inputs over both
//! transports. Each must get an ERROR frame (or, where the stream itself is
//! broken, a clean close), never a panic — while a healthy client on
//! another connection keeps receiving its messages promptly.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use e2e_tests::{body, Client, Event, Kind, TestBroker};
use stomp_codec::Command;

/// What a hostile input must lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// An ERROR frame, then the connection closes.
    Error,
    /// An ERROR or a close (the stream was cut mid-frame, say).
    ErrorOrClose,
}

struct Case {
    name: String,
    /// Sent before the hostile bytes: a CONNECT, or nothing.
    connect: bool,
    bytes: Vec<u8>,
    expect: Expect,
}

fn case(name: impl Into<String>, connect: bool, bytes: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        connect,
        bytes: bytes.into(),
        expect,
    }
}

fn battery() -> Vec<Case> {
    use Expect::*;
    let mut v = Vec::new();
    let big = "x".repeat(4096);
    // Oversized and flooded input (broker started with 2 KiB frames, 16 headers, 256 B lines).
    v.push(case(
        "body over limit, content-length",
        true,
        format!(
            "SEND\ndestination:/topic/a\ncontent-length:{}\n\n{big}\0",
            big.len()
        ),
        Error,
    ));
    v.push(case(
        "body over limit, no content-length",
        true,
        format!("SEND\ndestination:/topic/a\n\n{big}\0"),
        Error,
    ));
    v.push(case(
        "declared body over limit",
        true,
        "SEND\ndestination:/topic/a\ncontent-length:99999999\n\n",
        Error,
    ));
    v.push(case(
        "header line over limit",
        true,
        format!(
            "SEND\ndestination:/topic/a\nx-long:{}\n\nb\0",
            "y".repeat(1000)
        ),
        Error,
    ));
    v.push(case(
        "header line over limit, unterminated",
        true,
        format!("SEND\nx-long:{}", "y".repeat(1000)),
        Error,
    ));
    v.push(case(
        "command line over limit",
        true,
        "SENDSENDSENDSENDSENDSENDSEND".repeat(20),
        Error,
    ));
    v.push(case(
        "header flood",
        true,
        format!("SEND\ndestination:/topic/a\n{}\nb\0", "h:v\n".repeat(100)),
        Error,
    ));
    v.push(case(
        "header flood before CONNECT",
        false,
        format!("CONNECT\n{}\n\0", "h:v\n".repeat(100)),
        Error,
    ));
    // Framing errors.
    for (name, raw) in [
        (
            "invalid escape \\t",
            "SEND\ndestination:/topic/a\nx:a\\tb\n\nb\0",
        ),
        (
            "trailing backslash",
            "SEND\ndestination:/topic/a\nx:ab\\\n\nb\0",
        ),
        (
            "escape in name",
            "SEND\ndestination:/topic/a\nx\\q:v\n\nb\0",
        ),
        (
            "lying content-length (too short)",
            "SEND\ndestination:/topic/a\ncontent-length:2\n\nhello\0",
        ),
        (
            "non-numeric content-length",
            "SEND\ndestination:/topic/a\ncontent-length:abc\n\nb\0",
        ),
        (
            "negative content-length",
            "SEND\ndestination:/topic/a\ncontent-length:-1\n\nb\0",
        ),
        (
            "content-length with space",
            "SEND\ndestination:/topic/a\ncontent-length: 1\n\nb\0",
        ),
        (
            "huge content-length",
            "SEND\ndestination:/topic/a\ncontent-length:99999999999999999999999\n\nb\0",
        ),
        (
            "header without colon",
            "SEND\ndestination:/topic/a\nnocolon\n\nb\0",
        ),
        ("empty header name", "SEND\n:value\n\nb\0"),
        ("NUL in header", "SEND\ndestination:/topic/a\nx:a\0b\n\nb\0"),
        (
            "body on SUBSCRIBE",
            "SUBSCRIBE\nid:1\ndestination:/topic/a\n\nbody\0",
        ),
        ("body on ACK", "ACK\nid:1\n\nbody\0"),
        ("bare CR", "\rSEND\n\n\0"),
        ("CR inside EOL", "SEND\r\r\ndestination:/topic/a\n\n\0"),
        ("lowercase command", "send\ndestination:/topic/a\n\nb\0"),
        ("unknown command", "FROB\n\n\0"),
        ("unknown command with receipt", "FROB\nreceipt:r\n\n\0"),
        ("HTTP request", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("TLS client hello", "\u{16}\u{3}\u{1}\u{2}\u{0}\u{1}"),
        (
            "server command MESSAGE",
            "MESSAGE\ndestination:/topic/a\nmessage-id:1\nsubscription:1\n\nb\0",
        ),
        ("server command CONNECTED", "CONNECTED\nversion:1.2\n\n\0"),
        ("server command RECEIPT", "RECEIPT\nreceipt-id:1\n\n\0"),
        ("server command ERROR", "ERROR\nmessage:x\n\n\0"),
    ] {
        v.push(case(format!("after CONNECT: {name}"), true, raw, Error));
        v.push(case(format!("before CONNECT: {name}"), false, raw, Error));
    }
    // Protocol misuse after CONNECT.
    for (name, raw) in [
        ("second CONNECT", "CONNECT\naccept-version:1.2\n\n\0"),
        ("STOMP after CONNECT", "STOMP\naccept-version:1.2\nhost:x\n\n\0"),
        ("SEND without destination", "SEND\n\nb\0"),
        ("SEND to empty destination", "SEND\ndestination:\n\nb\0"),
        ("SEND to unknown prefix", "SEND\ndestination:/exchange/amq.topic\n\nb\0"),
        ("SEND to wildcard", "SEND\ndestination:/topic/a.#\n\nb\0"),
        ("SEND with dot-dot", "SEND\ndestination:/topic/../queue/x\n\nb\0"),
        ("SEND with double slash", "SEND\ndestination://topic/a\n\nb\0"),
        ("SEND with control char", "SEND\ndestination:/topic/a\u{1}b\n\nb\0"),
        ("SEND non-UTF-8 destination", "SEND\ndestination:/topic/\u{80}\n\nb\0"),
        ("SUBSCRIBE without id", "SUBSCRIBE\ndestination:/topic/a\n\n\0"),
        ("SUBSCRIBE without destination", "SUBSCRIBE\nid:1\n\n\0"),
        ("SUBSCRIBE bad ack mode", "SUBSCRIBE\nid:1\ndestination:/topic/a\nack:sometimes\n\n\0"),
        ("SUBSCRIBE wildcard queue", "SUBSCRIBE\nid:1\ndestination:/queue/a.*\n\n\0"),
        ("SUBSCRIBE another user's destination", "SUBSCRIBE\nid:1\ndestination:/user/someone/queue/a\n\n\0"),
        ("duplicate subscription id", "SUBSCRIBE\nid:1\ndestination:/topic/a\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/b\n\n\0"),
        ("UNSUBSCRIBE unknown id", "UNSUBSCRIBE\nid:nope\n\n\0"),
        ("UNSUBSCRIBE without id", "UNSUBSCRIBE\n\n\0"),
        ("ACK unknown id", "ACK\nid:999\n\n\0"),
        ("ACK non-numeric id", "ACK\nid:abc\n\n\0"),
        ("ACK without id", "ACK\n\n\0"),
        ("NACK unknown id", "NACK\nid:999\n\n\0"),
        ("BEGIN without transaction", "BEGIN\n\n\0"),
        ("COMMIT unknown transaction", "COMMIT\ntransaction:t\n\n\0"),
        ("ABORT unknown transaction", "ABORT\ntransaction:t\n\n\0"),
        ("BEGIN twice", "BEGIN\ntransaction:t\n\n\0BEGIN\ntransaction:t\n\n\0"),
        ("SEND in unknown transaction", "SEND\ndestination:/topic/a\ntransaction:t\n\nb\0"),
        ("ACK in unknown transaction", "ACK\nid:1\ntransaction:t\n\n\0"),
        ("ACK of a message of another subscription id form", "ACK\nid:1-1\n\n\0"),
        ("SUBSCRIBE then UNSUBSCRIBE twice", "SUBSCRIBE\nid:1\ndestination:/topic/a\n\n\0UNSUBSCRIBE\nid:1\n\n\0UNSUBSCRIBE\nid:1\n\n\0"),
        ("COMMIT after ABORT", "BEGIN\ntransaction:t\n\n\0ABORT\ntransaction:t\n\n\0COMMIT\ntransaction:t\n\n\0"),
    ] {
        v.push(case(name, true, raw, Error));
    }
    let many_tx: String = (0..40)
        .map(|i| format!("BEGIN\ntransaction:t{i}\n\n\0"))
        .collect();
    v.push(case("transaction flood", true, many_tx, Error));
    let many_subs: String = (0..3000)
        .map(|i| format!("SUBSCRIBE\nid:{i}\ndestination:/topic/s.{i}\n\n\0"))
        .collect();
    v.push(case("thousands of subscriptions", true, many_subs, Error));
    // Bad handshakes.
    for (name, raw) in [
        (
            "accept-version none supported",
            "CONNECT\naccept-version:2.0,3.1\n\n\0",
        ),
        (
            "bad heart-beat",
            "CONNECT\naccept-version:1.2\nheart-beat:fast\n\n\0",
        ),
        (
            "heart-beat with three values",
            "CONNECT\naccept-version:1.2\nheart-beat:1,2,3\n\n\0",
        ),
        ("STOMP without accept-version", "STOMP\nhost:x\n\n\0"),
        (
            "non-UTF-8 login",
            "CONNECT\naccept-version:1.2\nlogin:\u{ff}\n\n\0",
        ),
    ] {
        v.push(case(name, false, raw, Error));
    }
    // Deterministic garbage: pseudo-random bytes behind a non-command byte.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..12 {
        let mut g = vec![b'Z'];
        for _ in 0..(16 + i * 40) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            g.push((seed & 0x7f) as u8);
        }
        v.push(case(format!("garbage #{i}"), i % 2 == 0, g, Error));
    }
    // A cut stream: the connection ends mid-frame (lying content-length).
    v.push(case(
        "truncated body then close",
        true,
        "SEND\ndestination:/topic/a\ncontent-length:100\n\nshort",
        ErrorOrClose,
    ));
    v
}

/// Bytes as the test client sends them; the escaped `\u{80}`-style code
/// points above stand for raw bytes, so map chars < 256 to single bytes.
fn raw_bytes(v: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(v) {
        Ok(s) => s
            .chars()
            .map(|c| {
                if (c as u32) < 256 {
                    c as u32 as u8
                } else {
                    b'?'
                }
            })
            .collect(),
        Err(_) => v.to_vec(),
    }
}

async fn run_case(b: &TestBroker, kind: Kind, c: &Case) -> Result<()> {
    let mut client = b.raw(kind).await;
    if c.connect {
        client.connect_default().await?;
    }
    let bytes = raw_bytes(&c.bytes);
    if kind == Kind::Ws {
        client.send_ws_binary(&bytes).await?;
    } else {
        client.send_raw(&bytes).await?;
    }
    if c.name.starts_with("truncated") {
        // Close our side: the broker must clean up.
        drop(client);
        return Ok(());
    }
    loop {
        match client.next_event(Duration::from_secs(5)).await {
            Ok(Event::Frame(f)) if f.command == Command::Error => {
                ensure!(
                    f.header_str("message").is_some_and(|m| !m.is_empty()),
                    "ERROR without message"
                );
                client.expect_closed().await?;
                return Ok(());
            }
            Ok(Event::Frame(f))
                if f.command == Command::Receipt || f.command == Command::Connected =>
            {
                continue
            }
            Ok(Event::Frame(f)) => bail!("unexpected {:?}", f.command),
            Ok(Event::HeartBeat) => continue,
            Ok(Event::Closed(_)) if c.expect == Expect::ErrorOrClose => return Ok(()),
            Ok(Event::Closed(code)) => bail!("closed without ERROR (code {code:?})"),
            Err(e) => bail!("{e}"),
        }
    }
}

async fn battery_over(kind: Kind) -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.limits.max_frame_bytes = 2048;
        c.limits.max_body_bytes = 2048;
        c.limits.max_headers = 16;
        c.limits.max_header_line = 256;
        c.limits.max_subscriptions_per_connection = 1000;
        c.limits.max_transactions_per_connection = 16;
    })
    .await;
    // The healthy pair: a subscriber and a publisher measuring latency.
    let mut sub = b.client(kind).await;
    sub.subscribe("h", "/topic/healthy", "auto").await?;
    let mut publ = b.tcp_client().await;
    let cases = battery();
    ensure!(cases.len() >= 100, "battery has {} inputs", cases.len());
    let mut worst = Duration::ZERO;
    for (i, c) in cases.iter().enumerate() {
        run_case(&b, kind, c)
            .await
            .map_err(|e| anyhow::anyhow!("case {i} '{}' over {kind:?}: {e}", c.name))?;
        let sent = Instant::now();
        publ.send("/topic/healthy", &i.to_string()).await?;
        let m = sub.message().await?;
        ensure!(body(&m) == i.to_string());
        worst = worst.max(sent.elapsed());
    }
    // Generous bound: this catches a stalled broker, not a slow one.
    ensure!(
        worst < Duration::from_secs(1),
        "healthy client waited {worst:?}"
    );
    let errors: u64 = [
        "protocol",
        "limit",
        "not_connected",
        "destination",
        "access_denied",
        "version",
    ]
    .iter()
    .map(|k| b.core.metrics.errors_of(k))
    .sum();
    ensure!(errors >= 100, "ERROR frames counted: {errors}");
    eprintln!(
        "{} hostile inputs over {kind:?}; healthy client's worst latency {worst:?}",
        cases.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_over_tcp_get_errors_and_others_keep_working() -> Result<()> {
    battery_over(Kind::Tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_over_websocket_get_errors_and_others_keep_working() -> Result<()> {
    battery_over(Kind::Ws).await
}

#[tokio::test]
async fn slowloris_before_connect_is_cut_off() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.connect_timeout_ms = 400).await;
    let mut c = Client::tcp(b.stomp).await?;
    let started = Instant::now();
    for byte in b"CONNECT\naccept-version:1.2\n" {
        if c.send_raw(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("connect timeout"));
    Ok(())
}

/// A raw WebSocket client: handshake by hand, then frames built byte by byte
/// so protocol violations can be sent.
async fn raw_ws(b: &TestBroker) -> Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(b.http).await?;
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\n",
            b.http
        )
        .as_bytes(),
    )
    .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(s.read(&mut byte).await? == 1, "closed during handshake");
        head.push(byte[0]);
    }
    ensure!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    Ok(s)
}

fn ws_frame(fin: bool, opcode: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(mask_bit | n as u8),
        n if n < 65536 => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [1u8, 2, 3, 4];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_protocol_violations_close_cleanly_and_others_keep_working() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestBroker::start().await;
    let mut sub = b.ws_client().await;
    sub.subscribe("h", "/topic/healthy", "auto").await?;
    let mut publ = b.tcp_client().await;
    let connect = ws_frame(true, 0x1, true, b"CONNECT\naccept-version:1.2\n\n\0");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "unmasked client frame",
            ws_frame(true, 0x1, false, b"CONNECT\naccept-version:1.2\n\n\0"),
        ),
        ("reserved opcode 0x3", ws_frame(true, 0x3, true, b"x")),
        ("reserved opcode 0xB", ws_frame(true, 0xB, true, b"x")),
        ("oversized ping", ws_frame(true, 0x9, true, &[7u8; 200])),
        ("fragmented ping", ws_frame(false, 0x9, true, b"x")),
        (
            "bad UTF-8 in a text frame",
            ws_frame(true, 0x1, true, &[0xff, 0xfe, 0xfd]),
        ),
        (
            "continuation without a start",
            ws_frame(true, 0x0, true, b"SEND"),
        ),
        ("new data frame inside a fragmented message", {
            let mut v = ws_frame(false, 0x1, true, b"SEND\n");
            v.extend(ws_frame(true, 0x1, true, b"x"));
            v
        }),
        ("RSV bits set", {
            let mut v = ws_frame(true, 0x1, true, b"x");
            v[0] |= 0x40;
            v
        }),
        (
            "message over the size limit",
            ws_frame(true, 0x2, true, &vec![b'a'; 3 * 1024 * 1024]),
        ),
    ];
    for (i, (name, bytes)) in cases.iter().enumerate() {
        let mut s = raw_ws(&b).await?;
        s.write_all(&connect).await?;
        let _ = s.write_all(bytes).await;
        // Read until the server closes: it may say ERROR and/or send a close frame first.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        ensure!(closed.is_ok(), "{name}: connection not closed");
        let text = String::from_utf8_lossy(&got);
        ensure!(text.contains("CONNECTED"), "{name}: {text}");
        publ.send("/topic/healthy", &i.to_string()).await?;
        ensure!(
            body(&sub.message().await?) == i.to_string(),
            "{name}: healthy client"
        );
    }
    Ok(())
}

#[tokio::test]
async fn slowloris_after_connect_is_cut_off_by_the_frame_timeout() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.frame_timeout_ms = 300).await;
    let mut c = b.tcp_client().await;
    let started = Instant::now();
    // Half a frame, then one more byte now and then: never completes.
    c.send_raw(b"SEND\ndestination:/topic/slow\ncontent-length:100\n\nabc")
        .await?;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.send_raw(b"x").await.is_err() {
            break;
        }
    }
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("frame timeout"));
    ensure!(started.elapsed() >= Duration::from_millis(300));
    Ok(())
}
