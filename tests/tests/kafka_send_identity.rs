//! SEND to `/app/<topic>` against the real Kafka of `scripts/kafka.sh`
//! (`KAFKA_BOOTSTRAP` or `.kafka/bootstrap`): every record carries the
//! identity the broker knows (`stomp-user`, `stomp-session`) and a stable id
//! (`stomp-message-id`), never what the client claims; and a failed write
//! answers every receipted SEND in flight on the connection before it closes.

use std::{collections::HashSet, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use e2e_tests::{
    body,
    kafka::{bootstrap, bridge_config, consume, create_topic, free_port, record_headers, unique},
    Client, Kind, TestBroker,
};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use stomp_codec::{Command, Frame};

const SECRET: &str = "k2-hs256-secret-k2-hs256-secret-k2";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": sub, "exp": exp }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// Connects as `user` (a JWT in `passcode`); returns the client and its
/// CONNECTED `session` header.
async fn connect_as(b: &TestBroker, kind: Kind, user: &str) -> Result<(Client, String)> {
    let mut c = b.raw(kind).await;
    let f = c
        .connect_with(&[("accept-version", "1.2"), ("passcode", &token(user))])
        .await?;
    ensure!(f.header_str("user-name") == Some(user), "{:?}", f.headers);
    let session = f
        .header_str("session")
        .context("session header")?
        .to_owned();
    Ok((c, session))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_record_carries_the_authenticated_user_not_the_claimed_one() -> Result<()> {
    let brokers = bootstrap();
    let topic = unique("orders-identity");
    create_topic(&brokers, &topic, 1).await?;
    let cfg = bridge_config(&brokers, &unique("k2-identity"), &[]);
    let b = TestBroker::start_with(move |c| {
        c.kafka = Some(cfg);
        c.auth.jwt.hs256_secret = Some(SECRET.into());
        c.auth.allow_anonymous = Some(true);
    })
    .await;
    let dest = format!("/app/{topic}");

    // alice claims to be mallory, and to be another session, and tries to
    // pick the broker's id: all three are dropped, whatever their case.
    let (mut alice, alice_session) = connect_as(&b, Kind::Ws, "alice").await?;
    alice
        .send_with(
            &dest,
            br#"{"orderId":"o-1","customerId":"mallory"}"#,
            &[
                ("stomp-user", "mallory"),
                ("STOMP-Session", "session-1"),
                ("Stomp-Message-Id", "forged"),
                ("idempotency-key", "alice-order-1"),
                ("receipt", "r-alice"),
            ],
        )
        .await?;
    alice.expect_receipt("r-alice").await?;
    // A retry with the same idempotency-key carries the same id.
    alice
        .send_with(
            &dest,
            b"retry",
            &[("idempotency-key", "alice-order-1"), ("receipt", "r-retry")],
        )
        .await?;
    alice.expect_receipt("r-retry").await?;
    // Without a client id the broker makes one up.
    alice
        .send_with(&dest, b"no id", &[("receipt", "r-noid")])
        .await?;
    alice.expect_receipt("r-noid").await?;

    // An anonymous session has no stomp-user at all, even when it claims one.
    let mut anon = b.client(Kind::Tcp).await;
    anon.send_with(
        &dest,
        b"anon",
        &[("stomp-user", "alice"), ("receipt", "r-anon")],
    )
    .await?;
    anon.expect_receipt("r-anon").await?;

    let recs = consume(&brokers, &topic, 4, Duration::from_secs(30)).await?;
    let hs: Vec<_> = recs.iter().map(record_headers).collect();
    for h in &hs[..3] {
        ensure!(
            h.get("stomp-user").map(String::as_str) == Some("alice"),
            "{h:?}"
        );
        ensure!(
            h.get("stomp-session") == Some(&alice_session),
            "{h:?} (session {alice_session})"
        );
        for k in h.keys() {
            ensure!(
                !k.eq_ignore_ascii_case("stomp-user") || k == "stomp-user",
                "client header {k} forwarded: {h:?}"
            );
            ensure!(
                !k.to_ascii_lowercase().starts_with("stomp-")
                    || ["stomp-user", "stomp-session", "stomp-message-id"].contains(&k.as_str()),
                "client header {k} forwarded: {h:?}"
            );
        }
    }
    ensure!(
        hs[0].get("stomp-message-id").map(String::as_str) == Some("alice-order-1"),
        "{:?}",
        hs[0]
    );
    ensure!(hs[1].get("stomp-message-id") == hs[0].get("stomp-message-id"));
    let generated = hs[2].get("stomp-message-id").context("broker id")?;
    ensure!(
        !generated.is_empty() && generated != "alice-order-1",
        "{generated}"
    );
    ensure!(!hs[3].contains_key("stomp-user"), "{:?}", hs[3]);
    ensure!(hs[3].contains_key("stomp-session"), "{:?}", hs[3]);
    ensure!(hs[3].contains_key("stomp-message-id"), "{:?}", hs[3]);
    ensure!(hs[3].get("stomp-session") != Some(&alice_session));
    b.stop().await;
    Ok(())
}

/// The next frames up to and including the ERROR: (receipt ids, ERROR).
async fn receipts_then_error(c: &mut Client, within: Duration) -> Result<(Vec<String>, Frame)> {
    let mut receipts = Vec::new();
    loop {
        let f = c.recv_within(within).await.context("waiting for ERROR")?;
        match f.command {
            Command::Receipt => {
                receipts.push(f.header_str("receipt-id").context("receipt-id")?.to_owned())
            }
            Command::Error => return Ok((receipts, f)),
            other => bail!("unexpected {other:?} {:?} {}", f.headers, body(&f)),
        }
    }
}

fn unconfirmed(e: &Frame) -> HashSet<String> {
    e.header_str("unconfirmed-receipt-ids")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_kafka_write_names_every_unanswered_receipt_before_closing() -> Result<()> {
    // Nobody listens on this port: each produce times out after 1 s.
    let brokers = format!("127.0.0.1:{}", free_port());
    let mut cfg = bridge_config(&brokers, &unique("k2-down"), &[]);
    cfg.produce_timeout = Duration::from_secs(1);
    let b = TestBroker::start_with(move |c| c.kafka = Some(cfg)).await;
    let mut c = b.client(Kind::Ws).await;
    let ids = ["r-1", "r-2", "r-3"];
    for r in ids {
        c.send_with("/app/orders-down", b"{}", &[("receipt", r)])
            .await?;
    }
    let (receipts, e) = receipts_then_error(&mut c, Duration::from_secs(10)).await?;
    ensure!(
        receipts.is_empty(),
        "RECEIPTs {receipts:?} from a dead Kafka"
    );
    let failed = e.header_str("receipt-id").unwrap_or_default().to_owned();
    ensure!(ids.contains(&failed.as_str()), "{:?}", e.headers);
    let listed = unconfirmed(&e);
    ensure!(
        listed == ids.iter().map(|s| s.to_string()).collect(),
        "unconfirmed-receipt-ids {listed:?}, want all of {ids:?}: {:?}",
        e.headers
    );
    ensure!(
        e.header_str("message")
            .unwrap_or_default()
            .contains("kafka write failed"),
        "{:?}",
        e.headers
    );
    c.expect_closed().await?;
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_flight_get_their_receipt_before_the_error_of_a_failed_one() -> Result<()> {
    let brokers = bootstrap();
    let topic = unique("orders-mixed");
    create_topic(&brokers, &topic, 1).await?;
    let cfg = bridge_config(&brokers, &unique("k2-mixed"), &[]);
    let b = TestBroker::start_with(move |c| c.kafka = Some(cfg)).await;
    let mut c = b.client(Kind::Tcp).await;
    let good = format!("/app/{topic}");
    // g-1 goes to Kafka; b-1 fails at once (not a valid topic); g-2 comes
    // after the failure, or is written before it was noticed.
    c.send_with(&good, b"one", &[("receipt", "g-1")]).await?;
    c.send_with("/app/bad$topic", b"x", &[("receipt", "b-1")])
        .await?;
    c.send_with(&good, b"two", &[("receipt", "g-2")]).await?;
    let (receipts, e) = receipts_then_error(&mut c, Duration::from_secs(30)).await?;
    ensure!(
        receipts.contains(&"g-1".to_owned()),
        "no RECEIPT for g-1 before the ERROR: {receipts:?} {:?}",
        e.headers
    );
    ensure!(e.header_str("receipt-id") == Some("b-1"), "{:?}", e.headers);
    let listed = unconfirmed(&e);
    ensure!(listed.contains("b-1"), "{listed:?}");
    // Every receipt has exactly one answer: a RECEIPT or a place in the list.
    for r in ["g-1", "b-1", "g-2"] {
        let answered =
            receipts.iter().filter(|x| *x == r).count() + usize::from(listed.contains(r));
        ensure!(answered == 1, "{r}: {receipts:?} {listed:?}");
    }
    c.expect_closed().await?;
    // Whatever got a RECEIPT is in Kafka.
    let recs = consume(&brokers, &topic, receipts.len(), Duration::from_secs(30)).await?;
    ensure!(recs.len() == receipts.len());
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_receipt_comes_after_the_receipts_of_writes_in_flight() -> Result<()> {
    let brokers = bootstrap();
    let topic = unique("orders-disconnect");
    create_topic(&brokers, &topic, 1).await?;
    let cfg = bridge_config(&brokers, &unique("disc-wait"), &[]);
    let b = TestBroker::start_with(move |c| c.kafka = Some(cfg)).await;
    for kind in [Kind::Tcp, Kind::Ws] {
        let mut c = b.client(kind).await;
        let dest = format!("/app/{topic}");
        let ids: Vec<String> = (1..=5).map(|i| format!("{kind:?}-{i}")).collect();
        for id in &ids {
            c.send_with(&dest, id.as_bytes(), &[("receipt", id)])
                .await?;
        }
        // DISCONNECT right behind the SENDs, while their writes are in
        // flight; a SEND after it is ignored (no RECEIPT "after").
        c.command(Command::Disconnect, &[("receipt", "bye")])
            .await?;
        c.send_with(&dest, b"after", &[("receipt", "after")])
            .await?;
        let mut got = Vec::new();
        loop {
            let f = c
                .recv_within(Duration::from_secs(30))
                .await
                .context("waiting for RECEIPTs")?;
            ensure!(
                f.command == Command::Receipt,
                "{kind:?}: unexpected {:?} {:?} {}",
                f.command,
                f.headers,
                body(&f)
            );
            let id = f.header_str("receipt-id").context("receipt-id")?.to_owned();
            let last = id == "bye";
            got.push(id);
            if last {
                break;
            }
        }
        let mut expected = ids.clone();
        expected.push("bye".into());
        let mut sorted = got.clone();
        sorted[..got.len() - 1].sort();
        ensure!(
            sorted == expected,
            "{kind:?}: every SEND's RECEIPT before DISCONNECT's: {got:?}"
        );
        c.expect_closed().await?;
    }
    // The five of each transport are in Kafka.
    let recs = consume(&brokers, &topic, 10, Duration::from_secs(30)).await?;
    ensure!(recs.len() == 10, "{} records", recs.len());
    b.stop().await;
    Ok(())
}
