//! Spring simple-broker and RabbitMQ conventions: user destinations
//! delivered under the subscribed name, `queues.mode = "broadcast"`, and
//! `/temp-queue/` request–reply with private, unguessable reply queues.

use std::time::Duration;

use anyhow::{ensure, Result};
use bytes::Bytes;
use e2e_tests::{body, wait_until, Client, Kind, TestBroker};
use stomp_broker::config::QueueMode;
use stomp_codec::{Command, Headers};

async fn login(b: &TestBroker, kind: Kind, user: &str) -> Result<Client> {
    let mut c = b.raw(kind).await;
    c.connect_with(&[("accept-version", "1.2"), ("login", user)])
        .await?;
    Ok(c)
}

e2e_tests::both_transports!(
    user_destination_messages_carry_the_subscribed_destination,
    broadcast_queues_deliver_every_message_to_every_subscriber,
    temp_queue_request_reply_round_trip_reaches_only_the_requester,
);

async fn user_destination_messages_carry_the_subscribed_destination(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut alice = login(&b, kind, "alice").await?;
    alice.subscribe("u", "/user/queue/updates", "auto").await?;
    let mut p = b.tcp_client().await;
    p.send_receipted("/user/alice/queue/updates", "by-send")
        .await?;
    let m = alice.message().await?;
    ensure!(body(&m) == "by-send");
    ensure!(
        m.header_str("destination") == Some("/user/queue/updates"),
        "{:?}",
        m.headers
    );
    // The in-process path (Kafka routes) too.
    b.core.publish(
        "/user/alice/queue/updates",
        Headers::new(),
        Bytes::from_static(b"by-route"),
    )?;
    let m = alice.message().await?;
    ensure!(body(&m) == "by-route");
    ensure!(m.header_str("destination") == Some("/user/queue/updates"));
    Ok(())
}

async fn broadcast_queues_deliver_every_message_to_every_subscriber(kind: Kind) -> Result<()> {
    let b = TestBroker::start_with(|c| c.queues.mode = QueueMode::Broadcast).await;
    let mut p = b.tcp_client().await;
    // Nobody subscribed: nothing is kept for later (Spring's simple broker).
    p.send_receipted("/queue/news", "early").await?;
    ensure!(b.core.router.queue_depth("/queue/news") == 0);
    ensure!(b.core.router.queue_count() == 0);

    let mut s1 = b.client(kind).await;
    s1.subscribe("a", "/queue/news", "auto").await?;
    let mut s2 = b.client(kind).await;
    s2.subscribe("b", "/queue/news", "client-individual")
        .await?;
    for text in ["one", "two"] {
        p.send_receipted("/queue/news", text).await?;
    }
    for c in [&mut s1, &mut s2] {
        let got = [body(&c.message().await?), body(&c.message().await?)];
        ensure!(got == ["one", "two"], "{got:?}");
    }
    // NACK on a broadcast queue does not hand the message to anyone else.
    p.send_receipted("/queue/news", "three").await?;
    ensure!(body(&s1.message().await?) == "three");
    let m = s2.message().await?;
    let ack = m.header_str("ack").unwrap_or_default().to_owned();
    s2.command(Command::Nack, &[("id", &ack), ("receipt", "n")])
        .await?;
    s2.expect_receipt("n").await?;
    s1.expect_silence(Duration::from_millis(200)).await?;
    s2.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn competing_queues_stay_the_default() -> Result<()> {
    let b = TestBroker::start().await;
    let mut s1 = b.client(Kind::Tcp).await;
    s1.subscribe("a", "/queue/work", "auto").await?;
    let mut s2 = b.client(Kind::Tcp).await;
    s2.subscribe("b", "/queue/work", "auto").await?;
    let mut p = b.tcp_client().await;
    p.send_receipted("/queue/work", "1").await?;
    p.send_receipted("/queue/work", "2").await?;
    let (m1, m2) = (s1.message().await?, s2.message().await?);
    ensure!(body(&m1) != body(&m2));
    s1.expect_silence(Duration::from_millis(100)).await?;
    s2.expect_silence(Duration::from_millis(100)).await?;
    Ok(())
}

/// A SEND with `reply-to:/temp-queue/<name>` and a receipt; returns nothing,
/// waits for the RECEIPT.
async fn request(c: &mut Client, dest: &str, temp: &str, text: &str) -> Result<()> {
    let r = format!("req-{text}");
    c.send_with(
        dest,
        text.as_bytes(),
        &[
            ("reply-to", temp),
            ("receipt", &r),
            ("correlation-id", text),
        ],
    )
    .await?;
    c.expect_receipt(&r).await
}

fn is_reply_queue(d: &str) -> bool {
    d.strip_prefix("/reply-queue/")
        .is_some_and(|t| t.len() == 32 && t.bytes().all(|c| c.is_ascii_hexdigit()))
}

async fn temp_queue_request_reply_round_trip_reaches_only_the_requester(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut service = b.client(kind).await;
    service.subscribe("rpc", "/queue/rpc", "auto").await?;
    let mut requester = b.client(kind).await;
    let mut other = b.client(kind).await;

    request(&mut requester, "/queue/rpc", "/temp-queue/replies", "q1").await?;
    let req = service.message().await?;
    let reply_to = req.header_str("reply-to").unwrap_or_default().to_owned();
    ensure!(is_reply_queue(&reply_to), "rewritten reply-to: {reply_to}");
    ensure!(req.header_str("correlation-id") == Some("q1"));

    service
        .send_with(
            &reply_to,
            b"a1",
            &[("correlation-id", "q1"), ("receipt", "r1")],
        )
        .await?;
    service.expect_receipt("r1").await?;
    let reply = requester.message().await?;
    ensure!(body(&reply) == "a1");
    ensure!(
        reply.header_str("subscription") == Some("/temp-queue/replies"),
        "{:?}",
        reply.headers
    );
    ensure!(reply.header_str("destination") == Some(reply_to.as_str()));
    ensure!(reply.header_str("correlation-id") == Some("q1"));
    other.expect_silence(Duration::from_millis(200)).await?;

    // The same name on the same connection: the same reply queue.
    request(&mut requester, "/queue/rpc", "/temp-queue/replies", "q2").await?;
    let again = service.message().await?;
    ensure!(again.header_str("reply-to") == Some(reply_to.as_str()));
    // The same name on another connection: a different one.
    request(&mut other, "/queue/rpc", "/temp-queue/replies", "q3").await?;
    let theirs = service.message().await?;
    let theirs = theirs.header_str("reply-to").unwrap_or_default();
    ensure!(is_reply_queue(theirs) && theirs != reply_to);
    Ok(())
}

#[tokio::test]
async fn a_third_connection_cannot_subscribe_to_a_reply_queue() -> Result<()> {
    let b = TestBroker::start().await;
    let mut service = b.client(Kind::Tcp).await;
    service.subscribe("rpc", "/queue/rpc", "auto").await?;
    let mut requester = b.client(Kind::Tcp).await;
    request(&mut requester, "/queue/rpc", "/temp-queue/r", "q").await?;
    let reply_to = service
        .message()
        .await?
        .header_str("reply-to")
        .unwrap_or_default()
        .to_owned();
    for (dest, expected) in [
        (reply_to.as_str(), "access denied"),
        ("/reply-queue/*", "access denied"),
        ("/temp-queue/r", "cannot subscribe to /temp-queue/"),
    ] {
        let mut thief = b.client(Kind::Ws).await;
        thief
            .command(Command::Subscribe, &[("id", "x"), ("destination", dest)])
            .await?;
        let e = thief.expect_error_and_close().await?;
        ensure!(
            e.header_str("message") == Some(expected),
            "{dest}: {:?}",
            e.headers
        );
    }
    // The status page does not list reply queue names.
    let (_, stats) = b.http_get("/stats.json").await?;
    ensure!(!stats.contains(&reply_to), "{stats}");
    // Still delivered to the requester only.
    service.send_receipted(&reply_to, "answer").await?;
    ensure!(body(&requester.message().await?) == "answer");
    Ok(())
}

#[tokio::test]
async fn reply_queues_are_writable_by_whoever_has_the_name_despite_acls() -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.acl = vec![stomp_broker::acl::AclRule {
            destination: "/queue/rpc".into(),
            allow: vec![
                stomp_broker::acl::Permission::Subscribe,
                stomp_broker::acl::Permission::Send,
            ],
        }];
    })
    .await;
    let mut service = login(&b, Kind::Tcp, "svc").await?;
    service.subscribe("rpc", "/queue/rpc", "auto").await?;
    let mut requester = login(&b, Kind::Ws, "alice").await?;
    request(&mut requester, "/queue/rpc", "/temp-queue/r", "q").await?;
    let reply_to = service
        .message()
        .await?
        .header_str("reply-to")
        .unwrap_or_default()
        .to_owned();
    service.send_receipted(&reply_to, "ok").await?;
    ensure!(body(&requester.message().await?) == "ok");
    Ok(())
}

#[tokio::test]
async fn a_reply_queue_dies_with_its_connection() -> Result<()> {
    let b = TestBroker::start().await;
    let mut service = b.client(Kind::Tcp).await;
    service.subscribe("rpc", "/queue/rpc", "auto").await?;
    let mut requester = b.client(Kind::Tcp).await;
    request(&mut requester, "/queue/rpc", "/temp-queue/r", "q").await?;
    let reply_to = service
        .message()
        .await?
        .header_str("reply-to")
        .unwrap_or_default()
        .to_owned();
    ensure!(b.core.router.has_subscribers(&reply_to));
    let used = b.core.metrics.memory.used();
    ensure!(used > 0, "the temp queue is charged to the memory budget");
    requester.disconnect().await?;
    drop(requester);
    wait_until(|| !b.core.router.has_subscribers(&reply_to)).await?;
    wait_until(|| b.core.metrics.memory.used() == 0).await?;
    // A late reply is accepted and dropped; the replier is not punished.
    service.send_receipted(&reply_to, "late").await?;
    // A new connection with the same /temp-queue/ name gets a new queue.
    let mut next = b.client(Kind::Tcp).await;
    request(&mut next, "/queue/rpc", "/temp-queue/r", "q2").await?;
    let m = service.message().await?;
    ensure!(m.header_str("reply-to") != Some(reply_to.as_str()));
    next.expect_silence(Duration::from_millis(100)).await?;
    Ok(())
}

#[tokio::test]
async fn temp_queues_are_capped_per_connection() -> Result<()> {
    let b = TestBroker::start_with(|c| c.queues.max_temp_queues_per_connection = 2).await;
    let mut c = b.client(Kind::Tcp).await;
    request(&mut c, "/topic/void", "/temp-queue/a", "1").await?;
    request(&mut c, "/topic/void", "/temp-queue/b", "2").await?;
    request(&mut c, "/topic/void", "/temp-queue/a", "3").await?;
    c.send_with("/topic/void", b"4", &[("reply-to", "/temp-queue/c")])
        .await?;
    let e = c.expect_error_and_close().await?;
    ensure!(e.header_str("message") == Some("too many temporary queues"));
    // SEND to a /temp-queue/ name is refused (use the rewritten reply-to).
    let mut c = b.client(Kind::Tcp).await;
    c.send("/temp-queue/a", "x").await?;
    ensure!(c.expect_error_and_close().await?.header_str("message") == Some("unknown destination"));
    Ok(())
}

#[tokio::test]
async fn a_transactional_request_gets_its_reply_queue_at_commit() -> Result<()> {
    let b = TestBroker::start().await;
    let mut service = b.client(Kind::Tcp).await;
    service.subscribe("rpc", "/queue/rpc", "auto").await?;
    let mut requester = b.client(Kind::Tcp).await;
    requester
        .command(Command::Begin, &[("transaction", "t")])
        .await?;
    requester
        .send_with(
            "/queue/rpc",
            b"q",
            &[("reply-to", "/temp-queue/r"), ("transaction", "t")],
        )
        .await?;
    requester
        .command(Command::Commit, &[("transaction", "t"), ("receipt", "c")])
        .await?;
    requester.expect_receipt("c").await?;
    let reply_to = service
        .message()
        .await?
        .header_str("reply-to")
        .unwrap_or_default()
        .to_owned();
    ensure!(is_reply_queue(&reply_to), "{reply_to}");
    service.send_receipted(&reply_to, "a").await?;
    let m = requester.message().await?;
    ensure!(m.header_str("subscription") == Some("/temp-queue/r"));
    Ok(())
}
