//! Lenient where RabbitMQ is: STOMP 1.0 NACK and `ack:client-individual`,
//! 1.0/1.1 ACK/NACK by `message-id` when `subscription` does not match, a
//! body of exactly `max_body_bytes`; and where a transactional SEND's
//! RECEIPT comes.

use std::time::Duration;

use anyhow::{ensure, Result};
use e2e_tests::{body, both_transports, Kind, TestBroker};
use stomp_codec::Command;

both_transports!(
    stomp_1_0_client_individual_and_nack_work,
    ack_with_wrong_subscription_finds_the_message_by_message_id,
    ack_of_unknown_message_id_is_still_an_error,
    body_of_exactly_max_body_bytes_is_delivered,
    body_over_max_body_bytes_is_still_refused,
    transactional_send_is_receipted_at_once_and_published_at_commit,
);

async fn stomp_1_0_client_individual_and_nack_work(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    // No accept-version: STOMP 1.0.
    let f = c.connect_with(&[("login", "guest")]).await?;
    ensure!(f.header_str("version") == Some("1.0"));
    c.command(
        Command::Subscribe,
        &[
            ("destination", "/queue/ci10"),
            ("ack", "client-individual"),
            ("receipt", "sub"),
        ],
    )
    .await?;
    c.expect_receipt("sub").await?;
    c.send("/queue/ci10", "m1").await?;
    c.send("/queue/ci10", "m2").await?;
    let m1 = c.message().await?;
    let m2 = c.message().await?;
    ensure!(body(&m1) == "m1" && body(&m2) == "m2");
    // Individual: ACK of m2 leaves m1 unacknowledged.
    let id2 = m2.header_str("message-id").unwrap_or_default().to_owned();
    c.command(Command::Ack, &[("message-id", &id2), ("receipt", "a2")])
        .await?;
    c.expect_receipt("a2").await?;
    // NACK (a 1.1 command) of m1: redelivered, to this only consumer.
    let id1 = m1.header_str("message-id").unwrap_or_default().to_owned();
    c.command(Command::Nack, &[("message-id", &id1), ("receipt", "n1")])
        .await?;
    c.expect_receipt("n1").await?;
    let again = c.message().await?;
    ensure!(body(&again) == "m1");
    ensure!(again.header_str("redelivered") == Some("true"));
    ensure!(again.header_str("message-id") == Some(id1.as_str()));
    c.expect_silence(Duration::from_millis(150)).await
}

async fn ack_with_wrong_subscription_finds_the_message_by_message_id(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    c.connect_with(&[("accept-version", "1.1")]).await?;
    c.subscribe("s1", "/queue/wrongsub", "client-individual")
        .await?;
    c.send("/queue/wrongsub", "x").await?;
    let m = c.message().await?;
    let id = m.header_str("message-id").unwrap_or_default().to_owned();
    // NACK naming a subscription that does not hold the message: found by
    // message-id, redelivered (before: ERROR "unknown ack id").
    c.command(
        Command::Nack,
        &[
            ("message-id", &id),
            ("subscription", "not-s1"),
            ("receipt", "n"),
        ],
    )
    .await?;
    c.expect_receipt("n").await?;
    let again = c.message().await?;
    ensure!(again.header_str("redelivered") == Some("true"));
    ensure!(again.header_str("message-id") == Some(id.as_str()));
    c.command(
        Command::Ack,
        &[
            ("message-id", &id),
            ("subscription", "nope"),
            ("receipt", "a"),
        ],
    )
    .await?;
    c.expect_receipt("a").await?;
    // Acknowledged: nothing comes back after a disconnect.
    c.disconnect().await?;
    let mut d = b.client(kind).await;
    d.subscribe("d", "/queue/wrongsub", "auto").await?;
    d.expect_silence(Duration::from_millis(200)).await
}

async fn ack_of_unknown_message_id_is_still_an_error(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    c.connect_with(&[("accept-version", "1.1")]).await?;
    c.subscribe("s1", "/queue/unk", "client").await?;
    c.command(
        Command::Ack,
        &[("message-id", "no-such-message"), ("subscription", "s1")],
    )
    .await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("unknown ack id"));
    Ok(())
}

async fn body_of_exactly_max_body_bytes_is_delivered(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let max = b.core.config.limits.max_body_bytes;
    let mut sub = b.client(kind).await;
    sub.subscribe("s", "/topic/big", "auto").await?;
    let mut p = b.client(kind).await;
    let payload = vec![b'x'; max];
    p.send_with(
        "/topic/big",
        &payload,
        &[("receipt", "big"), ("content-type", "text/plain")],
    )
    .await?;
    p.expect_receipt("big").await?;
    let m = sub.message().await?;
    ensure!(m.body.len() == max, "{} bytes", m.body.len());
    Ok(())
}

async fn body_over_max_body_bytes_is_still_refused(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let max = b.core.config.limits.max_body_bytes;
    let mut p = b.client(kind).await;
    p.send_with("/topic/big", &vec![b'x'; max + 1], &[("receipt", "big")])
        .await?;
    let e = p.expect_error_and_close().await?;
    ensure!(
        e.header_str("message") == Some("body too large"),
        "{:?}",
        e.headers
    );
    Ok(())
}

async fn transactional_send_is_receipted_at_once_and_published_at_commit(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut sub = b.client(kind).await;
    sub.subscribe("s", "/topic/txr", "auto").await?;
    let mut p = b.client(kind).await;
    p.command(Command::Begin, &[("transaction", "t")]).await?;
    p.send_with(
        "/topic/txr",
        b"held",
        &[("transaction", "t"), ("receipt", "in-tx")],
    )
    .await?;
    // The RECEIPT means "added to the transaction"; nothing is published yet.
    p.expect_receipt("in-tx").await?;
    sub.expect_silence(Duration::from_millis(150)).await?;
    p.command(Command::Commit, &[("transaction", "t"), ("receipt", "c")])
        .await?;
    p.expect_receipt("c").await?;
    ensure!(body(&sub.message().await?) == "held");
    Ok(())
}
