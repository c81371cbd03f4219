//! CONNECT negotiation, receipts, errors and frame handling, over TCP and WebSocket.

use std::time::Duration;

use anyhow::{ensure, Result};
use e2e_tests::{body, both_transports, Kind, TestBroker};
use stomp_codec::Command;

both_transports!(
    connect_negotiates_highest_common_version,
    connect_without_accept_version_speaks_1_0,
    unsupported_version_gets_error_with_version_header,
    stomp_command_connects_like_connect,
    frame_before_connect_is_an_error_then_close,
    unknown_command_is_an_error_then_close,
    missing_required_header_is_an_error_naming_it,
    second_connect_is_an_error,
    error_carries_receipt_id_of_failing_frame,
    receipts_for_subscribe_send_unsubscribe_and_disconnect,
    custom_send_headers_pass_through_to_message,
    unsubscribe_stops_delivery,
    unsubscribe_by_destination_in_1_0,
    connect_timeout_closes_silent_connection,
    escaped_headers_round_trip_in_1_2,
);

async fn connect_negotiates_highest_common_version(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    let f = c
        .connect_with(&[("accept-version", "1.0,1.1"), ("host", "anything")])
        .await?;
    ensure!(f.header_str("version") == Some("1.1"));
    ensure!(f
        .header_str("server")
        .is_some_and(|s| s.starts_with("stomp-broker/")));
    ensure!(f.header_str("session").is_some());
    // No heart-beat header: the client wants none, and the server (which
    // follows the client) offers none.
    ensure!(f.header_str("heart-beat") == Some("0,0"));
    let mut c = b.raw(kind).await;
    let f = c
        .connect_with(&[
            ("accept-version", "1.2,1.1,1.0"),
            ("login", "alice"),
            ("passcode", "x"),
        ])
        .await?;
    ensure!(f.header_str("version") == Some("1.2"));
    ensure!(f.header_str("user-name") == Some("alice"));
    Ok(())
}

async fn connect_without_accept_version_speaks_1_0(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    let f = c.connect_with(&[]).await?;
    ensure!(f.header_str("version") == Some("1.0"));
    // 1.0: SUBSCRIBE without id is fine, messages still flow.
    c.command(
        Command::Subscribe,
        &[("destination", "/topic/t"), ("receipt", "r")],
    )
    .await?;
    c.expect_receipt("r").await?;
    c.send("/topic/t", "hi").await?;
    let m = c.message().await?;
    ensure!(body(&m) == "hi");
    ensure!(m.header_str("subscription") == Some("/topic/t"));
    Ok(())
}

async fn unsupported_version_gets_error_with_version_header(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    c.command(Command::Connect, &[("accept-version", "2.0")])
        .await?;
    let e = c.expect_error_and_close().await?;
    ensure!(
        e.header_str("version") == Some("1.0,1.1,1.2"),
        "{:?}",
        e.headers
    );
    Ok(())
}

async fn stomp_command_connects_like_connect(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    c.command(Command::Stomp, &[("accept-version", "1.2"), ("host", "h")])
        .await?;
    let f = c.expect(Command::Connected).await?;
    ensure!(f.header_str("version") == Some("1.2"));
    Ok(())
}

async fn frame_before_connect_is_an_error_then_close(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    c.command(
        Command::Subscribe,
        &[("destination", "/topic/a"), ("id", "1")],
    )
    .await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("not connected"));
    ensure!(!e.body.is_empty());
    Ok(())
}

async fn unknown_command_is_an_error_then_close(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.send_raw(b"FROB\nx:y\n\n\0").await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("unknown command"));
    Ok(())
}

async fn missing_required_header_is_an_error_naming_it(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.command(Command::Subscribe, &[("destination", "/topic/a")])
        .await?;
    let e = c.expect_error_and_close().await?;
    ensure!(
        e.header_str("message") == Some("missing required header 'id'"),
        "{:?}",
        e.headers
    );
    let mut c = b.client(kind).await;
    c.command(Command::Send, &[]).await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("missing required header 'destination'"));
    Ok(())
}

async fn second_connect_is_an_error(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.command(Command::Connect, &[("accept-version", "1.2")])
        .await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("already connected"));
    Ok(())
}

async fn error_carries_receipt_id_of_failing_frame(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.command(
        Command::Commit,
        &[("transaction", "nope"), ("receipt", "r-9")],
    )
    .await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("receipt-id") == Some("r-9"));
    ensure!(e.header_str("message") == Some("unknown transaction"));
    Ok(())
}

async fn receipts_for_subscribe_send_unsubscribe_and_disconnect(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.subscribe("s1", "/topic/r", "auto").await?;
    c.send_receipted("/topic/nobody", "x").await?;
    c.command(Command::Unsubscribe, &[("id", "s1"), ("receipt", "u")])
        .await?;
    c.expect_receipt("u").await?;
    c.disconnect().await?;
    c.expect_closed().await?;
    Ok(())
}

async fn custom_send_headers_pass_through_to_message(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut sub = b.client(kind).await;
    sub.subscribe("s", "/topic/h", "auto").await?;
    let mut p = b.client(kind).await;
    p.send_with(
        "/topic/h",
        b"{}",
        &[
            ("content-type", "application/json"),
            ("x-order", "42"),
            ("receipt", "r"),
        ],
    )
    .await?;
    p.expect_receipt("r").await?;
    let m = sub.message().await?;
    ensure!(m.header_str("x-order") == Some("42"));
    ensure!(m.header_str("content-type") == Some("application/json"));
    ensure!(m.header_str("destination") == Some("/topic/h"));
    ensure!(m.header_str("subscription") == Some("s"));
    ensure!(m.header_str("message-id").is_some_and(|s| !s.is_empty()));
    ensure!(
        m.header_str("receipt").is_none(),
        "receipt header must not leak"
    );
    ensure!(
        m.header("ack").is_none(),
        "auto subscriptions carry no ack header"
    );
    Ok(())
}

async fn unsubscribe_stops_delivery(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.subscribe("s", "/topic/u", "auto").await?;
    c.command(Command::Unsubscribe, &[("id", "s"), ("receipt", "u")])
        .await?;
    c.expect_receipt("u").await?;
    c.send_receipted("/topic/u", "x").await?;
    c.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

async fn unsubscribe_by_destination_in_1_0(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    c.connect_with(&[]).await?;
    c.command(Command::Subscribe, &[("destination", "/topic/d")])
        .await?;
    c.command(
        Command::Unsubscribe,
        &[("destination", "/topic/d"), ("receipt", "u")],
    )
    .await?;
    c.expect_receipt("u").await?;
    c.send_with("/topic/d", b"x", &[("receipt", "s")]).await?;
    c.expect_receipt("s").await?;
    c.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

async fn connect_timeout_closes_silent_connection(kind: Kind) -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.connect_timeout_ms = 200).await;
    let mut c = b.raw(kind).await;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("connect timeout"));
    Ok(())
}

async fn escaped_headers_round_trip_in_1_2(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.subscribe("s", "/topic/esc", "auto").await?;
    c.send_raw(b"SEND\ndestination:/topic/esc\nx-odd:a\\cb\\nc\\\\d\n\nbody\0")
        .await?;
    let m = c.message().await?;
    ensure!(
        m.header_str("x-odd") == Some("a:b\nc\\d"),
        "{:?}",
        m.headers
    );
    Ok(())
}

#[tokio::test]
async fn unknown_command_error_carries_receipt_id() -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.ws_client().await;
    c.send_raw(b"FROBNICATE\nreceipt:bad-1\n\n\0").await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("unknown command"));
    ensure!(
        e.header_str("receipt-id") == Some("bad-1"),
        "{:?}",
        e.headers
    );
    Ok(())
}
