//! The header section as a whole is capped (`limits.max_header_bytes`), on
//! top of the per-line and header-count limits.

use anyhow::{ensure, Result};
use e2e_tests::TestBroker;

/// A SEND whose header section is `lines` lines of `len` bytes.
fn send_with_headers(lines: usize, len: usize) -> Vec<u8> {
    let mut v = b"SEND\ndestination:/topic/a\nreceipt:r1\n".to_vec();
    for i in 0..lines {
        let name = format!("h{i:03}:");
        v.extend_from_slice(name.as_bytes());
        v.extend(std::iter::repeat_n(b'x', len - name.len()));
        v.push(b'\n');
    }
    v.extend_from_slice(b"\nbody\0");
    v
}

#[tokio::test]
async fn header_section_over_limit_gets_an_error() -> Result<()> {
    let b = TestBroker::start().await;
    // 40 lines of 2,000 bytes: every line and the header count are within
    // their limits, the section (~80 KB) is not (64 KiB by default).
    let mut c = b.tcp_client().await;
    c.send_raw(&send_with_headers(40, 2000)).await?;
    let err = c.expect_error_and_close().await?;
    ensure!(
        err.header_str("message") == Some("header section too large"),
        "{:?}",
        err.headers
    );
    // Within the limit the same shape is accepted.
    let mut ok = b.tcp_client().await;
    ok.send_raw(&send_with_headers(20, 2000)).await?;
    ok.expect_receipt("r1").await
}

#[tokio::test]
async fn header_section_limit_is_configurable() -> Result<()> {
    let b = TestBroker::start_with(|c| c.limits.max_header_bytes = 4096).await;
    let mut c = b.tcp_client().await;
    c.send_raw(&send_with_headers(3, 2000)).await?;
    let err = c.expect_error_and_close().await?;
    ensure!(err.header_str("message") == Some("header section too large"));
    Ok(())
}
