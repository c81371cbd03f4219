//! Heart-beats follow what the client asks for, within `heartbeat.min_ms`
//! and `heartbeat.max_ms`, and a silent client is closed within about twice
//! its interval.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use e2e_tests::{both_transports, Event, Kind, TestBroker};

both_transports!(
    connected_echoes_the_clients_one_second_request,
    request_below_min_ms_gets_min_ms,
    server_beats_every_second_for_a_client_asking_one_second,
    silent_client_asking_one_second_is_closed_within_three_seconds,
);

async fn connected_echoes_the_clients_one_second_request(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    let f = c
        .connect_with(&[("accept-version", "1.2"), ("heart-beat", "1000,1000")])
        .await?;
    // Before: the default offer 10000,10000 acted as a floor.
    ensure!(
        f.header_str("heart-beat") == Some("1000,1000"),
        "{:?}",
        f.headers
    );
    // Asymmetric requests are answered per direction (cy,cx).
    let mut c = b.raw(kind).await;
    let f = c
        .connect_with(&[("accept-version", "1.2"), ("heart-beat", "4000,2000")])
        .await?;
    ensure!(
        f.header_str("heart-beat") == Some("2000,4000"),
        "{:?}",
        f.headers
    );
    Ok(())
}

async fn request_below_min_ms_gets_min_ms(kind: Kind) -> Result<()> {
    let b = TestBroker::start_with(|c| {
        c.heartbeat.min_ms = 500;
        c.heartbeat.max_ms = 30_000;
    })
    .await;
    let mut c = b.raw(kind).await;
    let f = c
        .connect_with(&[("accept-version", "1.2"), ("heart-beat", "1,10")])
        .await?;
    ensure!(
        f.header_str("heart-beat") == Some("500,500"),
        "{:?}",
        f.headers
    );
    let mut c = b.raw(kind).await;
    let f = c
        .connect_with(&[("accept-version", "1.2"), ("heart-beat", "0,120000")])
        .await?;
    ensure!(
        f.header_str("heart-beat") == Some("30000,0"),
        "{:?}",
        f.headers
    );
    Ok(())
}

async fn server_beats_every_second_for_a_client_asking_one_second(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    c.connect_with(&[("accept-version", "1.2"), ("heart-beat", "0,1000")])
        .await?;
    let start = Instant::now();
    for _ in 0..2 {
        match c.next_event(Duration::from_millis(1900)).await? {
            Event::HeartBeat => {}
            other => bail!("expected a heart-beat, got {other:?}"),
        }
    }
    // Two beats at 1 s: after about 2 s (the old floor gave one per 10 s).
    let took = start.elapsed();
    ensure!(took >= Duration::from_millis(1500), "{took:?}");
    ensure!(took < Duration::from_millis(3500), "{took:?}");
    Ok(())
}

async fn silent_client_asking_one_second_is_closed_within_three_seconds(kind: Kind) -> Result<()> {
    let b = TestBroker::start().await;
    let mut c = b.raw(kind).await;
    c.connect_with(&[("accept-version", "1.2"), ("heart-beat", "1000,0")])
        .await?;
    let start = Instant::now();
    let e = c.expect_error_and_close().await?;
    let took = start.elapsed();
    ensure!(e.header_str("message") == Some("heart-beat timeout"));
    // 1 s × 2.0 + grace capped at 0.5 s = 2.5 s after the CONNECT.
    ensure!(
        took >= Duration::from_millis(2000),
        "closed too early: {took:?}"
    );
    ensure!(
        took < Duration::from_millis(3000),
        "closed too late: {took:?}"
    );
    Ok(())
}
