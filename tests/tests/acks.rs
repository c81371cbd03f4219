//! Ack modes, NACK redelivery, redelivery at disconnect, transactions.

use std::time::Duration;

use anyhow::{ensure, Result};
use e2e_tests::{body, both_transports, Client, Kind, TestBroker};
use stomp_codec::{Command, Frame};

both_transports!(
    client_individual_ack_acknowledges_one_message,
    client_ack_is_cumulative,
    nack_redelivers_to_another_consumer_with_same_message_id,
    unacked_messages_are_redelivered_when_consumer_disconnects,
    prefetch_window_holds_back_queue_messages_until_acked,
    ack_of_unknown_id_is_an_error,
    ack_by_message_id_and_subscription_in_1_1,
    transaction_commit_publishes_sends_in_order,
    transaction_abort_discards_sends,
    transaction_disconnect_discards_sends,
    acks_in_transaction_take_effect_only_on_commit,
    unknown_transaction_is_an_error,
);

async fn ack(c: &mut Client, m: &Frame, command: Command) -> Result<()> {
    let id = m.header_str("ack").expect("ack header").to_owned();
    c.command(command, &[("id", &id), ("receipt", &format!("a-{id}"))])
        .await?;
    c.expect_receipt(&format!("a-{id}")).await
}

async fn client_individual_ack_acknowledges_one_message(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.subscribe("q", "/queue/ci", "client-individual").await?;
    for n in 0..3 {
        c.send("/queue/ci", &n.to_string()).await?;
    }
    let m0 = c.message().await?;
    let m1 = c.message().await?;
    let m2 = c.message().await?;
    ensure!(m0.header_str("ack").is_some());
    ack(&mut c, &m1, Command::Ack).await?;
    // Acking m1 individually leaves m0 and m2 unacked: they come back on disconnect.
    drop(c);
    let mut d = b.client(kind).await;
    d.subscribe("q", "/queue/ci", "auto").await?;
    let mut got = vec![body(&d.message().await?), body(&d.message().await?)];
    got.sort();
    ensure!(got == vec![body(&m0), body(&m2)], "{got:?}");
    d.expect_silence(Duration::from_millis(150)).await
}

async fn client_ack_is_cumulative(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.subscribe("q", "/queue/cum", "client").await?;
    for n in 0..4 {
        c.send("/queue/cum", &n.to_string()).await?;
    }
    let mut ms = Vec::new();
    for _ in 0..4 {
        ms.push(c.message().await?);
    }
    // ACK of the third acknowledges the first three.
    ack(&mut c, &ms[2], Command::Ack).await?;
    drop(c);
    let mut d = b.client(kind).await;
    d.subscribe("q", "/queue/cum", "auto").await?;
    let m = d.message().await?;
    ensure!(body(&m) == "3");
    ensure!(m.header_str("redelivered") == Some("true"));
    d.expect_silence(Duration::from_millis(150)).await
}

async fn nack_redelivers_to_another_consumer_with_same_message_id(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut a = b.client(kind).await;
    let mut c = b.client(kind).await;
    a.subscribe("q", "/queue/nack", "client-individual").await?;
    c.subscribe("q", "/queue/nack", "client-individual").await?;
    a.send("/queue/nack", "job").await?;
    // Round-robin: the first consumer gets it.
    let m = a.message().await?;
    ensure!(m.header_str("redelivered").is_none());
    ack(&mut a, &m, Command::Nack).await?;
    let again = c.message().await?;
    ensure!(body(&again) == "job");
    ensure!(again.header_str("redelivered") == Some("true"));
    ensure!(again.header_str("message-id") == m.header_str("message-id"));
    a.expect_silence(Duration::from_millis(100)).await
}

async fn unacked_messages_are_redelivered_when_consumer_disconnects(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut a = b.client(kind).await;
    a.subscribe("q", "/queue/gone", "client").await?;
    let mut other = b.client(kind).await;
    other
        .subscribe("q", "/queue/gone", "client-individual")
        .await?;
    let mut p = b.client(kind).await;
    p.send("/queue/gone", "first").await?;
    p.send("/queue/gone", "second").await?;
    let m = a.message().await?;
    let first_id = m.header_str("message-id").map(str::to_owned);
    let o = other.message().await?;
    ack(&mut other, &o, Command::Ack).await?;
    // Abrupt close without ACK.
    drop(a);
    let r = other.message().await?;
    ensure!(body(&r) == body(&m));
    ensure!(r.header_str("redelivered") == Some("true"));
    ensure!(r.header_str("message-id").map(str::to_owned) == first_id);
    Ok(())
}

async fn prefetch_window_holds_back_queue_messages_until_acked(kind: Kind) -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.max_unacked_per_subscription = 2).await;
    let mut c = b.client(kind).await;
    c.subscribe("q", "/queue/pf", "client-individual").await?;
    for n in 0..4 {
        c.send("/queue/pf", &n.to_string()).await?;
    }
    let m0 = c.message().await?;
    let _m1 = c.message().await?;
    c.expect_silence(Duration::from_millis(150)).await?;
    ack(&mut c, &m0, Command::Ack).await?;
    ensure!(body(&c.message().await?) == "2");
    Ok(())
}

async fn ack_of_unknown_id_is_an_error(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.command(Command::Ack, &[("id", "12345")]).await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("unknown ack id"));
    Ok(())
}

async fn ack_by_message_id_and_subscription_in_1_1(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    c.connect_with(&[("accept-version", "1.1")]).await?;
    c.subscribe("sub-a", "/queue/v11", "client-individual")
        .await?;
    c.send("/queue/v11", "x").await?;
    let m = c.message().await?;
    let mid = m.header_str("message-id").expect("message-id").to_owned();
    c.command(
        Command::Ack,
        &[
            ("message-id", &mid),
            ("subscription", "sub-a"),
            ("receipt", "r"),
        ],
    )
    .await?;
    c.expect_receipt("r").await?;
    drop(c);
    let mut d = b.client(kind).await;
    d.subscribe("q", "/queue/v11", "auto").await?;
    d.expect_silence(Duration::from_millis(150)).await
}

async fn transaction_commit_publishes_sends_in_order(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut sub = b.client(kind).await;
    sub.subscribe("s", "/topic/tx", "auto").await?;
    let mut p = b.client(kind).await;
    p.command(Command::Begin, &[("transaction", "t1")]).await?;
    p.send_with("/topic/tx", b"a", &[("transaction", "t1")])
        .await?;
    p.send_with("/topic/tx", b"b", &[("transaction", "t1")])
        .await?;
    sub.expect_silence(Duration::from_millis(150)).await?;
    p.command(Command::Commit, &[("transaction", "t1"), ("receipt", "c")])
        .await?;
    p.expect_receipt("c").await?;
    ensure!(body(&sub.message().await?) == "a");
    let m = sub.message().await?;
    ensure!(body(&m) == "b");
    ensure!(m.header_str("transaction").is_none());
    Ok(())
}

async fn transaction_abort_discards_sends(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut sub = b.client(kind).await;
    sub.subscribe("s", "/topic/txa", "auto").await?;
    let mut p = b.client(kind).await;
    p.command(Command::Begin, &[("transaction", "t")]).await?;
    p.send_with("/topic/txa", b"never", &[("transaction", "t")])
        .await?;
    p.command(Command::Abort, &[("transaction", "t"), ("receipt", "a")])
        .await?;
    p.expect_receipt("a").await?;
    p.send_receipted("/topic/txa", "after").await?;
    ensure!(body(&sub.message().await?) == "after");
    Ok(())
}

async fn transaction_disconnect_discards_sends(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut sub = b.client(kind).await;
    sub.subscribe("s", "/topic/txd", "auto").await?;
    let mut p = b.client(kind).await;
    p.command(Command::Begin, &[("transaction", "t")]).await?;
    p.send_with("/topic/txd", b"never", &[("transaction", "t")])
        .await?;
    p.disconnect().await?;
    sub.expect_silence(Duration::from_millis(200)).await
}

async fn acks_in_transaction_take_effect_only_on_commit(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.subscribe("q", "/queue/txack", "client-individual")
        .await?;
    c.send("/queue/txack", "one").await?;
    c.send("/queue/txack", "two").await?;
    let m1 = c.message().await?;
    let m2 = c.message().await?;
    c.command(Command::Begin, &[("transaction", "t")]).await?;
    c.command(
        Command::Ack,
        &[
            ("id", m1.header_str("ack").unwrap_or("")),
            ("transaction", "t"),
        ],
    )
    .await?;
    c.command(
        Command::Ack,
        &[
            ("id", m2.header_str("ack").unwrap_or("")),
            ("transaction", "t"),
        ],
    )
    .await?;
    c.command(Command::Abort, &[("transaction", "t")]).await?;
    c.command(Command::Begin, &[("transaction", "t2")]).await?;
    c.command(
        Command::Ack,
        &[
            ("id", m1.header_str("ack").unwrap_or("")),
            ("transaction", "t2"),
        ],
    )
    .await?;
    c.command(
        Command::Commit,
        &[("transaction", "t2"), ("receipt", "done")],
    )
    .await?;
    c.expect_receipt("done").await?;
    drop(c);
    // Only m1's ACK was committed: m2 comes back.
    let mut d = b.client(kind).await;
    d.subscribe("q", "/queue/txack", "auto").await?;
    ensure!(body(&d.message().await?) == "two");
    d.expect_silence(Duration::from_millis(150)).await
}

async fn unknown_transaction_is_an_error(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.client(kind).await;
    c.send_with("/topic/x", b"x", &[("transaction", "ghost")])
        .await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("unknown transaction"));
    Ok(())
}

#[tokio::test]
async fn nack_goes_to_a_consumer_that_subscribed_later() -> Result<()> {
    let b = TestBroker::start().await;
    let mut a = b.tcp_client().await;
    a.subscribe("sa", "/queue/late", "client-individual")
        .await?;
    for n in 0..3 {
        a.send("/queue/late", &format!("m{n}")).await?;
    }
    let _m0 = a.message().await?;
    let m1 = a.message().await?;
    let _m2 = a.message().await?;
    let mut c = b.ws_client().await;
    c.subscribe("sb", "/queue/late", "client-individual")
        .await?;
    ack(&mut a, &m1, Command::Nack).await?;
    let again = c.message().await?;
    ensure!(body(&again) == "m1" && again.header_str("redelivered") == Some("true"));
    a.expect_silence(Duration::from_millis(150)).await?;
    Ok(())
}

#[tokio::test]
async fn nack_with_a_single_consumer_redelivers_to_it() -> Result<()> {
    let b = TestBroker::start().await;
    let mut a = b.tcp_client().await;
    a.subscribe("sa", "/queue/single", "client-individual")
        .await?;
    a.send("/queue/single", "only").await?;
    let m = a.message().await?;
    ack(&mut a, &m, Command::Nack).await?;
    let again = a.message().await?;
    ensure!(body(&again) == "only" && again.header_str("redelivered") == Some("true"));
    ensure!(again.header_str("message-id") == m.header_str("message-id"));
    Ok(())
}
