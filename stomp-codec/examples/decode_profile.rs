//! Decodes the 1000 ~158 B SENDs of the `decode/send_158B_x1000` bench a
//! given number of times, for instruction counts under callgrind (noise-free,
//! unlike wall-clock timings on a shared machine):
//!
//! ```sh
//! cargo build --profile bench -p stomp-codec --example decode_profile
//! valgrind --tool=callgrind --toggle-collect='*decode_rounds*' \
//!     target/release/examples/decode_profile 200
//! ```
//!
//! Instructions per frame = the collected total / (rounds × 1000). The
//! collected part is decoding and dropping the frames, as in the bench; the
//! buffer copies that set each round up are outside `decode_rounds`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use stomp_codec::{encode, Command, Decoded, Decoder, Frame, Limits, Version};

/// The bench's typical small SEND: ~150 bytes on the wire.
fn small_send(i: usize) -> Frame {
    Frame::new(Command::Send)
        .with_header("destination", "/queue/orders.eu-west")
        .with_header("content-type", "application/json")
        .with_header("receipt", format!("r-{i:06}"))
        .with_header("persistent", "true")
        .with_body(Bytes::from(format!(
            "{{\"order\":{i:06},\"qty\":3,\"sku\":\"A-1\"}}"
        )))
}

/// Decodes every frame in each buffer (and drops it); returns the count.
#[inline(never)]
fn decode_rounds(bufs: &mut [BytesMut]) -> usize {
    let mut n = 0;
    for buf in bufs {
        let mut dec = Decoder::new(Limits::default());
        while let Ok(Some(item)) = dec.decode(buf) {
            if let Decoded::Frame(f) = item {
                black_box(&f);
                n += 1;
            }
        }
    }
    n
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let mut wire = BytesMut::new();
    for i in 0..1000 {
        encode(&small_send(i), Version::V1_2, &mut wire);
    }
    let mut bufs: Vec<BytesMut> = (0..rounds).map(|_| BytesMut::from(&wire[..])).collect();
    let n = decode_rounds(&mut bufs);
    assert_eq!(n, rounds * 1000);
    println!(
        "decoded {n} frames of {} B in {rounds} rounds",
        wire.len() / 1000
    );
}
