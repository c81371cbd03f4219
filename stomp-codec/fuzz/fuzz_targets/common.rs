// Shared by both targets (included with `#[path]`-less `mod`, one copy per binary).
#![allow(dead_code)]
use bytes::BytesMut;
use stomp_codec::{encode, Decoded, Decoder, Error, Frame, Headers, Limits, Version};

pub fn version(b: u8) -> Version {
    Version::ALL[usize::from(b) % 3]
}

/// Decodes everything in `buf`; returns the items and how it ended.
pub fn decode_all(dec: &mut Decoder, buf: &mut BytesMut) -> (Vec<Decoded>, Result<(), Error>) {
    let mut out = Vec::new();
    loop {
        match dec.decode(buf) {
            Ok(Some(item)) => out.push(item),
            Ok(None) => return (out, Ok(())),
            Err(e) => return (out, Err(e)),
        }
    }
}

/// `encode` drops content-length headers and writes a correct one for a non-empty body.
pub fn normalized(frame: &Frame) -> Frame {
    let mut headers: Headers = frame
        .headers
        .iter()
        .filter(|(n, _)| n.as_ref() != b"content-length")
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    if !frame.body.is_empty() {
        headers.push("content-length", frame.body.len().to_string());
    }
    Frame { command: frame.command, headers, body: frame.body.clone() }
}

/// decode -> encode -> decode must give the normalized frame back, with nothing left over.
pub fn check_round_trip(frame: &Frame, version: Version) {
    let mut wire = BytesMut::new();
    encode(frame, version, &mut wire);
    // The re-encoding may add a content-length header (one more header, a few bytes).
    let mut limits = Limits::default();
    limits.max_headers += 1;
    limits.max_frame += 32;
    let mut dec = Decoder::new(limits);
    dec.set_version(version);
    let again = dec.decode(&mut wire);
    assert_eq!(again, Ok(Some(Decoded::Frame(normalized(frame)))), "re-decode differs");
    assert!(wire.is_empty(), "re-decode left bytes");
}
