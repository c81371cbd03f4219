//! Arbitrary bytes must never panic the decoder; every frame it yields must survive
//! decode -> encode -> decode unchanged. The first byte picks the protocol version.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stomp_codec::{Decoded, Decoder, Limits};

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&v, input)) = data.split_first() else { return };
    let version = common::version(v);
    let mut dec = Decoder::new(Limits::default());
    dec.set_version(version);
    let mut buf = BytesMut::from(input);
    let (items, _) = common::decode_all(&mut dec, &mut buf);
    for item in items {
        if let Decoded::Frame(frame) = item {
            common::check_round_trip(&frame, version);
        }
    }
});
