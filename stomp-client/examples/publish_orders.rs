//! Publish order results with receipts (the README's "Publishing from a Rust
//! service" example; compiled by `cargo test` so it cannot rot).
//!
//! ```sh
//! cargo run -p stomp-client --example publish_orders -- tcp://127.0.0.1:61613
//! ```

use stomp_client::{Client, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or("tcp://127.0.0.1:61613".into());
    let client = Client::builder(url)
        .login("order-service", "secret")
        .connect()
        .await?;
    for (order, status) in [("42", "paid"), ("43", "shipped")] {
        client
            .send(
                &format!("/topic/order.{order}"),
                format!(r#"{{"status":"{status}"}}"#),
            )
            .content_type("application/json")
            .receipt() // resolves when the broker has the message, fails on its ERROR
            .await?;
    }
    client.disconnect().await
}
