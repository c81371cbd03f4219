//! Property tests: round-trips, the every-prefix property, chunking independence,
//! fan-out template equivalence, and decoding of arbitrary bytes (the stable-toolchain
//! counterpart of the cargo-fuzz targets in `fuzz/`).

mod common;

use bytes::{Bytes, BytesMut};
use common::{decode_all, decoder, enc, normalized};
use proptest::prelude::*;
use stomp_codec::{
    encode, Command, Decoded, Decoder, Error, Frame, Headers, Limits, MessageTemplate, Version,
};

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![
        Just(Version::V1_0),
        Just(Version::V1_1),
        Just(Version::V1_2)
    ]
}

fn command() -> impl Strategy<Value = Command> {
    proptest::sample::select(&Command::ALL[..])
}

/// A byte biased towards the ones that matter to the grammar.
fn any_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => proptest::sample::select(&b":\\\n\rcnrt0 -"[..]),
        2 => any::<u8>(),
        2 => proptest::sample::select(&b"abcxyz/._"[..]),
    ]
}

/// Whether `b` can be carried in a header name or value of `command` in `version`
/// (what the encoder can represent without loss).
fn representable(command: Command, version: Version, b: u8, in_name: bool) -> bool {
    let escaped = command.escapes_headers() && version != Version::V1_0;
    match b {
        0 => false,
        b'\n' => escaped,
        b'\r' => escaped && version == Version::V1_2,
        b':' => escaped || !in_name,
        _ => true,
    }
}

fn header_bytes(
    command: Command,
    version: Version,
    in_name: bool,
    max: usize,
) -> impl Strategy<Value = Vec<u8>> {
    let min = usize::from(in_name);
    proptest::collection::vec(
        any_byte().prop_filter("representable", move |&b| {
            representable(command, version, b, in_name)
        }),
        min..max,
    )
}

/// An arbitrary frame that `encode` can represent in `version`: no content-length
/// header (the encoder owns it), bodies only on SEND/MESSAGE/ERROR.
fn frame_for(version: Version) -> impl Strategy<Value = Frame> {
    command().prop_flat_map(move |command| {
        let header = (
            prop_oneof![
                header_bytes(command, version, true, 12),
                proptest::sample::select(&["destination", "id", "ack", "receipt", "x:y"][..])
                    .prop_map(|s| s.as_bytes().to_vec())
                    .prop_filter("representable name", move |n| n
                        .iter()
                        .all(|&b| representable(command, version, b, true))),
            ],
            header_bytes(command, version, false, 24),
        )
            .prop_filter("encoder owns content-length", |(n, _)| {
                n != b"content-length"
            });
        let body = if command.allows_body() {
            proptest::collection::vec(any_byte(), 0..200).boxed()
        } else {
            Just(Vec::new()).boxed()
        };
        (proptest::collection::vec(header, 0..8), body).prop_map(move |(headers, body)| Frame {
            command,
            headers: headers.into_iter().collect(),
            body: Bytes::from(body),
        })
    })
}

fn versioned_frame() -> impl Strategy<Value = (Version, Frame)> {
    version().prop_flat_map(|v| (Just(v), frame_for(v)))
}

/// One piece of a stream: a frame (written in one of several valid wire forms) or a heart-beat.
#[derive(Debug, Clone)]
enum Piece {
    Frame {
        frame: Frame,
        crlf: bool,
        content_length: bool,
    },
    HeartBeat {
        crlf: bool,
    },
}

fn piece(version: Version) -> impl Strategy<Value = Piece> {
    prop_oneof![
        3 => (frame_for(version), any::<bool>(), any::<bool>()).prop_map(move |(frame, crlf, cl)| {
            Piece::Frame { frame, crlf: crlf && version == Version::V1_2, content_length: cl }
        }),
        1 => any::<bool>().prop_map(|crlf| Piece::HeartBeat { crlf }),
    ]
}

fn stream() -> impl Strategy<Value = (Version, Vec<Piece>)> {
    version().prop_flat_map(|v| (Just(v), proptest::collection::vec(piece(v), 1..6)))
}

/// Writes `piece` and returns the item it must decode to.
fn write_piece(p: &Piece, version: Version, dst: &mut Vec<u8>) -> Decoded {
    match p {
        Piece::HeartBeat { crlf } => {
            dst.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
            Decoded::HeartBeat
        }
        Piece::Frame {
            frame,
            crlf,
            content_length,
        } => {
            // Command and headers as the encoder writes them, then our own choice of
            // EOLs and of whether to declare the length (required when the body has a NUL).
            let head = enc(
                &Frame {
                    body: Bytes::new(),
                    ..frame.clone()
                },
                version,
            );
            let head = &head[..head.len() - 2]; // drop the blank line's LF and the NUL
            let eol: &[u8] = if *crlf { b"\r\n" } else { b"\n" };
            for line in head.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                dst.extend_from_slice(line);
                dst.extend_from_slice(eol);
            }
            let mut expected = frame.clone();
            if *content_length || frame.body.contains(&0) {
                let value = frame.body.len().to_string();
                dst.extend_from_slice(b"content-length:");
                dst.extend_from_slice(value.as_bytes());
                dst.extend_from_slice(eol);
                expected.headers.push("content-length", value);
            }
            dst.extend_from_slice(eol);
            dst.extend_from_slice(&frame.body);
            dst.push(0);
            Decoded::Frame(expected)
        }
    }
}

fn build(version: Version, pieces: &[Piece]) -> (Vec<u8>, Vec<Decoded>) {
    let mut wire = Vec::new();
    let items = pieces
        .iter()
        .map(|p| write_piece(p, version, &mut wire))
        .collect();
    (wire, items)
}

/// Feeds `wire` in chunks ending at `cuts`, decoding after each; returns all items
/// and the final result.
fn decode_chunked(
    limits: Limits,
    version: Version,
    wire: &[u8],
    cuts: &[usize],
) -> (Vec<Decoded>, Result<(), Error>, BytesMut) {
    let mut dec = Decoder::new(limits);
    dec.set_version(version);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
        let cut = cut.clamp(start, wire.len());
        buf.extend_from_slice(&wire[start..cut]);
        start = cut;
        let (got, end) = decode_all(&mut dec, &mut buf);
        items.extend(got);
        if end.is_err() {
            return (items, end, buf);
        }
    }
    (items, Ok(()), buf)
}

/// Structured garbage: fragments of STOMP and noise, so inputs get past the command line.
fn fuzzish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        proptest::sample::select(
            &[
                "SEND\n",
                "MESSAGE\n",
                "CONNECT\n",
                "SUBSCRIBE\n",
                "ERROR\n",
                "ACK\r\n",
                "destination:/q\n",
                "content-length:",
                "content-length:3\n",
                "0",
                "3\n",
                "\n",
                "\r\n",
                "\r",
                ":",
                "\\",
                "\\n",
                "\\c",
                "\\r",
                "\\t",
                "\0",
                "a",
                "\n\n",
                "id:1\n",
                "x:y\n",
                "abc",
                "\n\0",
            ][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 1..4),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

fn small_limits() -> impl Strategy<Value = Limits> {
    (1usize..200, 0usize..6, 1usize..40, 0usize..60, 1usize..250).prop_map(
        |(frame, headers, line, body, header_bytes)| {
            let mut l = Limits::default();
            l.max_frame = frame;
            l.max_headers = headers;
            l.max_header_line = line;
            l.max_body = body;
            l.max_header_bytes = header_bytes;
            l
        },
    )
}

proptest! {
    // 1024 cases unless PROPTEST_CASES says otherwise (scripts/fuzz-smoke.sh raises it).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1024),
        ..ProptestConfig::default()
    })]

    #[test]
    fn encode_then_decode_round_trips((version, frame) in versioned_frame()) {
        let wire = enc(&frame, version);
        let mut buf = BytesMut::from(&wire[..]);
        let got = decoder(version).decode(&mut buf);
        prop_assert_eq!(got, Ok(Some(Decoded::Frame(normalized(&frame)))));
        prop_assert!(buf.is_empty(), "bytes left: {:?}", buf);
    }

    #[test]
    fn every_strict_prefix_is_incomplete_never_an_error((version, pieces) in stream()) {
        let (wire, items) = build(version, &pieces);
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let (got, end) = decode_all(&mut decoder(version), &mut buf);
            prop_assert_eq!(end, Ok(()), "prefix of {} bytes", cut);
            prop_assert!(got.len() < items.len() || buf.is_empty());
            prop_assert_eq!(&got[..], &items[..got.len()], "prefix of {} bytes", cut);
        }
        let mut buf = BytesMut::from(&wire[..]);
        let (got, end) = decode_all(&mut decoder(version), &mut buf);
        prop_assert_eq!(end, Ok(()));
        prop_assert_eq!(got, items);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn any_chunking_decodes_like_the_whole_stream(
        (version, pieces) in stream(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let (wire, items) = build(version, &pieces);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.sort_unstable();
        let (got, end, rest) = decode_chunked(Limits::default(), version, &wire, &cuts);
        prop_assert_eq!(end, Ok(()));
        prop_assert!(rest.is_empty());
        prop_assert_eq!(got, items);
    }

    #[test]
    fn template_encodes_like_encode_of_the_equivalent_frame(
        version in version(),
        shared in proptest::collection::vec(
            (header_bytes(Command::Message, Version::V1_2, true, 10),
             header_bytes(Command::Message, Version::V1_2, false, 20)),
            0..6,
        ),
        own in proptest::collection::vec(
            (proptest::sample::select(&["subscription", "ack", "redelivered", "a:b", "n\\l", "content-length"][..]),
             header_bytes(Command::Message, Version::V1_2, false, 20)),
            0..4,
        ),
        body in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let headers: Headers = shared.iter().cloned().collect();
        let body = Bytes::from(body);
        let template = MessageTemplate::new(headers.clone(), body.clone());
        let own: Vec<(&str, &[u8])> = own.iter().map(|(n, v)| (*n, &v[..])).collect();
        let mut frame = Frame::new(Command::Message).with_body(body);
        for (n, v) in &own {
            frame.headers.push(n.to_string(), v.to_vec());
        }
        for (n, v) in headers.iter() {
            frame.headers.push(n.clone(), v.clone());
        }
        // Twice, and for every version: the cached shared block must not leak across versions.
        for v in [version, Version::V1_2, Version::V1_1, Version::V1_0, version] {
            let mut a = BytesMut::new();
            template.encode_for(v, &own, &mut a);
            let mut b = BytesMut::new();
            encode(&frame, v, &mut b);
            prop_assert_eq!(&a, &b);
            prop_assert!(template.approx_len() + 128 >= a.len());
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics_and_frames_round_trip(
        version in version(),
        input in prop_oneof![fuzzish_bytes(), proptest::collection::vec(any::<u8>(), 0..64)],
    ) {
        let mut buf = BytesMut::from(&input[..]);
        let (items, _) = decode_all(&mut decoder(version), &mut buf);
        for item in items {
            let Decoded::Frame(frame) = item else { continue };
            let wire = enc(&frame, version);
            let mut re = BytesMut::from(&wire[..]);
            let again = decoder(version).decode(&mut re);
            prop_assert_eq!(again, Ok(Some(Decoded::Frame(normalized(&frame)))));
            prop_assert!(re.is_empty());
        }
    }

    #[test]
    fn arbitrary_bytes_decode_the_same_however_split(
        version in version(),
        limits in prop_oneof![Just(Limits::default()), small_limits()],
        input in fuzzish_bytes(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let whole = decode_chunked(limits, version, &input, &[]);
        let split = decode_chunked(limits, version, &input, &cuts);
        prop_assert_eq!(&whole.0, &split.0);
        prop_assert_eq!(whole.1, split.1);
        if whole.1.is_ok() {
            // After an error the stream is dead; what was fed after it does not matter.
            prop_assert_eq!(&whole.2, &split.2);
        }
    }
}

#[test]
fn single_byte_feeding_matches_whole_for_a_mixed_stream() {
    // A deterministic companion to the chunking property, with every wire form at once.
    let wire: &[u8] = b"\r\nSEND\r\ndestination:/a\\cb\r\ncontent-length:3\r\n\r\na\0b\0\n\
MESSAGE\nsubscription:0\nmessage-id:1\ndestination:/a\n\nhello\0\n\n";
    let cuts: Vec<usize> = (1..wire.len()).collect();
    let whole = decode_chunked(Limits::default(), Version::V1_2, wire, &[]);
    let bytewise = decode_chunked(Limits::default(), Version::V1_2, wire, &cuts);
    assert_eq!(whole.0.len(), 6);
    assert_eq!(whole.0, bytewise.0);
    assert_eq!(whole.1, Ok(()));
}
