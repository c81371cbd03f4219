//! Helpers shared by the integration tests (each test file includes this module).
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use stomp_codec::{encode, Decoded, Decoder, Error, Frame, Headers, Limits, Version};

/// A decoder for `version` with default limits.
pub fn decoder(version: Version) -> Decoder {
    let mut d = Decoder::new(Limits::default());
    d.set_version(version);
    d
}

/// Decodes every complete item in `buf`, stopping at `Ok(None)` or the first error.
/// Returns the items and the terminating result (`Ok(())` = incomplete/empty).
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

/// Decodes exactly one frame from `input`, returning it and what is left in the buffer.
pub fn decode_one(version: Version, input: &[u8]) -> (Frame, BytesMut) {
    let mut buf = BytesMut::from(input);
    match decoder(version).decode(&mut buf) {
        Ok(Some(Decoded::Frame(f))) => (f, buf),
        other => panic!(
            "expected a frame from {:?}, got {other:?}",
            Bytes::copy_from_slice(input)
        ),
    }
}

/// The error that decoding `input` (whole, in one buffer) ends with, after any complete items.
pub fn decode_err(limits: Limits, version: Version, input: &[u8]) -> Option<Error> {
    let mut d = Decoder::new(limits);
    d.set_version(version);
    let mut buf = BytesMut::from(input);
    decode_all(&mut d, &mut buf).1.err()
}

/// Encodes one frame for `version`.
pub fn enc(frame: &Frame, version: Version) -> BytesMut {
    let mut dst = BytesMut::new();
    encode(frame, version, &mut dst);
    dst
}

/// What `decode(encode(frame))` must give: `encode` drops every `content-length`
/// header and appends a correct one when the body is not empty.
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
    Frame {
        command: frame.command,
        headers,
        body: frame.body.clone(),
    }
}

/// Header list of a frame as owned byte pairs, for comparisons with literals.
pub fn header_pairs(frame: &Frame) -> Vec<(Vec<u8>, Vec<u8>)> {
    frame
        .headers
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
}
