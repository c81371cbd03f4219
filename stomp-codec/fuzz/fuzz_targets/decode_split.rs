//! The same bytes split at a fuzzer-chosen point must decode exactly as they do whole:
//! same items, same error (or none), same bytes left over. Byte 0 picks the version,
//! bytes 1-2 the split point, byte 3 whether to use small limits (bit 0) and a
//! small header-section limit (bit 1).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stomp_codec::{Decoder, Limits};

mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let version = common::version(data[0]);
    let split = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let mut limits = Limits::default();
    if data[3] & 1 == 1 {
        limits.max_frame = 256;
        limits.max_headers = 4;
        limits.max_header_line = 32;
        limits.max_body = 64;
    }
    if data[3] & 2 == 2 {
        limits.max_header_bytes = 100;
    }
    let input = &data[4..];
    let split = split % (input.len() + 1);

    let new_decoder = || {
        let mut d = Decoder::new(limits);
        d.set_version(version);
        d
    };

    let mut whole_buf = BytesMut::from(input);
    let whole = common::decode_all(&mut new_decoder(), &mut whole_buf);

    let mut dec = new_decoder();
    let mut buf = BytesMut::from(&input[..split]);
    let (mut items, mut end) = common::decode_all(&mut dec, &mut buf);
    if end.is_ok() {
        buf.extend_from_slice(&input[split..]);
        let (more, end2) = common::decode_all(&mut dec, &mut buf);
        items.extend(more);
        end = end2;
    }
    assert_eq!(items, whole.0, "items differ");
    assert_eq!(end, whole.1, "outcome differs");
    if end.is_ok() {
        assert_eq!(buf, whole_buf, "leftover differs");
    }
});
