//! Credential checks under abuse: a flood of wrong passwords from one
//! address is bounded before hashing and does not starve other addresses;
//! a token with an absurd `exp` is handled, not a panic.

use std::{net::SocketAddr, sync::atomic::Ordering::Relaxed, time::Duration};

use anyhow::{ensure, Result};
use e2e_tests::TestBroker;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::Instant,
};

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    Ok(s.connect(to).await?)
}

/// Sends CONNECT with `login`/`passcode`; returns what the broker answered
/// up to the first frame's end (or the close).
async fn stomp_connect(mut s: TcpStream, login: &str, passcode: &str) -> Result<String> {
    let frame = format!("CONNECT\naccept-version:1.2\nhost:/\nlogin:{login}\npasscode:{passcode}\nheart-beat:0,0\n\n\0");
    s.write_all(frame.as_bytes()).await?;
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !buf.contains(&0) {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await??;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_flood_from_one_address_is_bounded_and_does_not_starve_another() -> Result<()>
{
    let dir = std::env::temp_dir().join(format!("stomp-auth-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let users = dir.join("users.toml");
    let hash = stomp_broker::auth::hash_password("correct horse")?;
    std::fs::write(
        &users,
        format!("[[user]]\nname = \"ops\"\npassword_hash = \"{hash}\"\n"),
    )?;
    let b = TestBroker::start_with(|c| {
        c.auth.users_file = Some(users.clone());
        c.auth.max_failures_per_address = 10;
        c.auth.max_concurrent_hashes = 2;
    })
    .await;
    let attacker = [127, 0, 0, 1];
    let mut flood = Vec::new();
    for _ in 0..300 {
        let s = connect_from(attacker, b.stomp).await?;
        flood.push(tokio::spawn(stomp_connect(s, "ops", "wrong")));
    }
    // While the flood is being answered, a correct CONNECT from elsewhere.
    let good = connect_from([127, 0, 0, 2], b.stomp).await?;
    let started = Instant::now();
    let answer = stomp_connect(good, "ops", "correct horse").await?;
    let waited = started.elapsed();
    ensure!(answer.starts_with("CONNECTED"), "{answer}");
    ensure!(
        waited < Duration::from_secs(3),
        "the good CONNECT waited {waited:?}"
    );
    for f in flood {
        let answer = f.await??;
        ensure!(
            answer.starts_with("ERROR") && answer.contains("authentication failed"),
            "{answer}"
        );
    }
    let m = &b.core.metrics;
    // The attacker's budget (10) and the good one: nothing more was hashed.
    ensure!(
        m.auth_hashes.load(Relaxed) == 11,
        "{} hashes",
        m.auth_hashes.load(Relaxed)
    );
    ensure!(m.auth_throttled.load(Relaxed) == 290);
    ensure!(b.core.auth.peak_concurrent_hashes() <= 2);
    Ok(())
}

#[tokio::test]
async fn a_token_with_an_enormous_exp_connects_instead_of_panicking() -> Result<()> {
    const SECRET: &str = "test-hs256-secret-test-hs256-secret";
    let b = TestBroker::start_with(|c| c.auth.jwt.hs256_secret = Some(SECRET.into())).await;
    for exp in [serde_json::json!(u64::MAX), serde_json::json!(i64::MAX)] {
        let token = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({ "sub": "bob", "exp": exp }),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )?;
        let s = TcpStream::connect(b.stomp).await?;
        let answer = stomp_connect(s, "bob", &token).await?;
        ensure!(answer.starts_with("CONNECTED"), "exp {exp}: {answer:?}");
    }
    Ok(())
}
