//! Malformed input: each entry decodes to exactly one `stomp_codec::Error`, whether
//! the input arrives in one buffer or one byte at a time; typed-view (`ClientFrame`)
//! violations per protocol version; and limits enforced before input is buffered.

mod common;

use bytes::BytesMut;
use common::{decode_all, decode_err, decode_one};
use stomp_codec::{ClientFrame, Decoded, Decoder, Error, Limits, Version};

const V10: Version = Version::V1_0;
const V11: Version = Version::V1_1;
const V12: Version = Version::V1_2;

fn lim(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

/// (name, limits, version, input, expected error)
type Case = (&'static str, Limits, Version, Vec<u8>, Error);

fn decoder_cases() -> Vec<Case> {
    let d = Limits::default();
    let small_body = lim(|l| l.max_body = 8);
    let few_headers = lim(|l| l.max_headers = 3);
    let short_lines = lim(|l| l.max_header_line = 16);
    let small_frame = lim(|l| l.max_frame = 64);
    let long = |n: usize| vec![b'x'; n];
    let cat = |parts: &[&[u8]]| parts.concat();
    vec![
        (
            "unknown command",
            d,
            V12,
            b"FOO\n\n\0".to_vec(),
            Error::UnknownCommand,
        ),
        (
            "lowercase command",
            d,
            V12,
            b"send\ndestination:/a\n\n\0".to_vec(),
            Error::UnknownCommand,
        ),
        (
            "mixed-case command",
            d,
            V12,
            b"Send\n\n\0".to_vec(),
            Error::UnknownCommand,
        ),
        (
            "command with trailing space",
            d,
            V12,
            b"SEND \n\n\0".to_vec(),
            Error::UnknownCommand,
        ),
        (
            "command with leading space",
            d,
            V12,
            b" SEND\n\n\0".to_vec(),
            Error::UnknownCommand,
        ),
        (
            "HTTP request line",
            d,
            V12,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Error::UnknownCommand,
        ),
        (
            "partial garbage command, no EOL yet",
            d,
            V12,
            b"SENX".to_vec(),
            Error::UnknownCommand,
        ),
        (
            "command that is a prefix plus more",
            d,
            V12,
            b"SENDER\n\n\0".to_vec(),
            Error::UnknownCommand,
        ),
        (
            "NUL in command",
            d,
            V12,
            b"SE\0ND\n\n\0".to_vec(),
            Error::UnknownCommand,
        ),
        (
            "NUL right away",
            d,
            V12,
            b"\0".to_vec(),
            Error::UnknownCommand,
        ),
        (
            "over-long command line",
            d,
            V12,
            cat(&[b"SEND", &long(20_000)]),
            Error::UnknownCommand,
        ),
        (
            "CR inside command line",
            d,
            V12,
            b"SEND\rX\n\n\0".to_vec(),
            Error::UnknownCommand,
        ),
        (
            "bare CR between frames",
            d,
            V12,
            b"\rX".to_vec(),
            Error::BadEol,
        ),
        (
            "bare CR after a frame",
            d,
            V12,
            b"SEND\ndestination:/a\n\n\0\r\r\n".to_vec(),
            Error::BadEol,
        ),
        (
            "bare CR inside header value",
            d,
            V12,
            b"SEND\ndestination:/a\rb\n\n\0".to_vec(),
            Error::BadEol,
        ),
        (
            "bare CR inside header value, 1.0",
            d,
            V10,
            b"SEND\ndestination:/a\rb\n\n\0".to_vec(),
            Error::BadEol,
        ),
        (
            "bare CR inside CONNECT header",
            d,
            V12,
            b"CONNECT\nhost:a\rb\n\n\0".to_vec(),
            Error::BadEol,
        ),
        (
            "CR CR LF ending a header line",
            d,
            V12,
            b"SEND\ndestination:/a\r\r\n\n\0".to_vec(),
            Error::BadEol,
        ),
        (
            "header without colon",
            d,
            V12,
            b"SEND\ndestination\n\n\0".to_vec(),
            Error::HeaderWithoutColon,
        ),
        (
            "header without colon after a valid one",
            d,
            V12,
            b"SEND\ndestination:/a\nbogus\n\n\0".to_vec(),
            Error::HeaderWithoutColon,
        ),
        (
            "empty header name",
            d,
            V12,
            b"SEND\n:value\n\n\0".to_vec(),
            Error::EmptyHeaderName,
        ),
        (
            "NUL in header value",
            d,
            V12,
            b"SEND\ndestination:/a\0b\n\n\0".to_vec(),
            Error::NulInHeader,
        ),
        (
            "NUL in header name",
            d,
            V12,
            b"SEND\nde\0st:/a\n\n\0".to_vec(),
            Error::NulInHeader,
        ),
        (
            "NUL in incomplete header line",
            d,
            V12,
            b"SEND\ndestination:/a\0".to_vec(),
            Error::NulInHeader,
        ),
        (
            "undefined escape \\t",
            d,
            V12,
            b"SEND\ndestination:/a\\tb\n\n\0".to_vec(),
            Error::InvalidEscape,
        ),
        (
            "undefined escape in header name",
            d,
            V12,
            b"SEND\nde\\st:/a\n\n\0".to_vec(),
            Error::InvalidEscape,
        ),
        (
            "trailing backslash",
            d,
            V12,
            b"SEND\ndestination:/a\\\n\n\0".to_vec(),
            Error::InvalidEscape,
        ),
        (
            "\\r escape in 1.1",
            d,
            V11,
            b"SEND\ndestination:/a\\rb\n\n\0".to_vec(),
            Error::InvalidEscape,
        ),
        (
            "\\t escape in 1.1",
            d,
            V11,
            b"MESSAGE\nx:\\t\n\n\0".to_vec(),
            Error::InvalidEscape,
        ),
        (
            "upper-case \\N escape",
            d,
            V12,
            b"SEND\nx:\\N\n\n\0".to_vec(),
            Error::InvalidEscape,
        ),
        (
            "non-numeric content-length",
            d,
            V12,
            b"SEND\ncontent-length:abc\n\n\0".to_vec(),
            Error::InvalidContentLength,
        ),
        (
            "negative content-length",
            d,
            V12,
            b"SEND\ncontent-length:-1\n\n\0".to_vec(),
            Error::InvalidContentLength,
        ),
        (
            "content-length with plus sign",
            d,
            V12,
            b"SEND\ncontent-length:+1\n\nx\0".to_vec(),
            Error::InvalidContentLength,
        ),
        (
            "empty content-length",
            d,
            V12,
            b"SEND\ncontent-length:\n\n\0".to_vec(),
            Error::InvalidContentLength,
        ),
        (
            "content-length with spaces",
            d,
            V12,
            b"SEND\ncontent-length: 1\n\nx\0".to_vec(),
            Error::InvalidContentLength,
        ),
        (
            "fractional content-length",
            d,
            V12,
            b"SEND\ncontent-length:1.0\n\nx\0".to_vec(),
            Error::InvalidContentLength,
        ),
        (
            "content-length over 19 digits",
            d,
            V12,
            b"SEND\ncontent-length:99999999999999999999\n\n\0".to_vec(),
            Error::InvalidContentLength,
        ),
        (
            "lying content-length (byte after body not NUL)",
            d,
            V12,
            b"SEND\ncontent-length:2\n\nabc\0".to_vec(),
            Error::MissingNul,
        ),
        (
            "short content-length: body shorter than the NUL position",
            d,
            V12,
            b"MESSAGE\ncontent-length:0\n\nx\0".to_vec(),
            Error::MissingNul,
        ),
        (
            "content-length larger than max_body",
            small_body,
            V12,
            b"SEND\ncontent-length:9\n\n123456789\0".to_vec(),
            Error::BodyTooLarge,
        ),
        (
            "body larger than max_body, no NUL",
            small_body,
            V12,
            b"SEND\n\n123456789".to_vec(),
            Error::BodyTooLarge,
        ),
        (
            "body larger than max_body, NUL in same buffer",
            small_body,
            V12,
            b"SEND\n\n123456789\0".to_vec(),
            Error::BodyTooLarge,
        ),
        (
            "body on SUBSCRIBE",
            d,
            V12,
            b"SUBSCRIBE\nid:0\ndestination:/a\n\nx\0".to_vec(),
            Error::BodyNotAllowed,
        ),
        (
            "body on SUBSCRIBE, no NUL yet",
            d,
            V12,
            b"SUBSCRIBE\nid:0\ndestination:/a\n\nx".to_vec(),
            Error::BodyNotAllowed,
        ),
        (
            "body on CONNECT via content-length",
            d,
            V12,
            b"CONNECT\ncontent-length:1\n\nx\0".to_vec(),
            Error::BodyNotAllowed,
        ),
        (
            "body on RECEIPT",
            d,
            V12,
            b"RECEIPT\nreceipt-id:1\n\nx\0".to_vec(),
            Error::BodyNotAllowed,
        ),
        (
            "body on DISCONNECT",
            d,
            V12,
            b"DISCONNECT\n\n\n\0".to_vec(),
            Error::BodyNotAllowed,
        ),
        (
            "too many headers",
            few_headers,
            V12,
            b"SEND\na:1\nb:2\nc:3\nd:4\n\n\0".to_vec(),
            Error::TooManyHeaders,
        ),
        (
            "too many repeated headers",
            few_headers,
            V12,
            b"SEND\na:1\na:1\na:1\na:1\n\n\0".to_vec(),
            Error::TooManyHeaders,
        ),
        (
            "over-long header line",
            short_lines,
            V12,
            b"SEND\ndestination:/queue/abc\n\n\0".to_vec(),
            Error::HeaderLineTooLong,
        ),
        (
            "over-long header line, no EOL yet",
            short_lines,
            V12,
            cat(&[b"SEND\n", &long(18)]),
            Error::HeaderLineTooLong,
        ),
        (
            "over-long header line, CRLF",
            short_lines,
            V12,
            cat(&[b"SEND\n", &long(17), b"\r\n\n\0"]),
            Error::HeaderLineTooLong,
        ),
        (
            "over-long header line, default limit",
            d,
            V12,
            cat(&[b"SEND\nx:", &long(9000), b"\n\n\0"]),
            Error::HeaderLineTooLong,
        ),
        (
            "frame too large (headers)",
            small_frame,
            V12,
            cat(&[b"SEND\n", &[&b"a:1234567\n"[..]; 8].concat(), b"\n\0"]),
            Error::FrameTooLarge,
        ),
        (
            "frame too large (content-length)",
            small_frame,
            V12,
            cat(&[b"SEND\ncontent-length:60\n\n", &long(60), b"\0"]),
            Error::FrameTooLarge,
        ),
        (
            "frame too large (body without NUL)",
            small_frame,
            V12,
            cat(&[b"SEND\n\n", &long(100)]),
            Error::FrameTooLarge,
        ),
        (
            "frame too large (body with NUL, one buffer)",
            small_frame,
            V12,
            cat(&[b"SEND\n\n", &long(100), b"\0"]),
            Error::FrameTooLarge,
        ),
        (
            "frame too large by the NUL alone",
            small_frame,
            V12,
            cat(&[b"SEND\n\n", &long(58), b"\0"]),
            Error::FrameTooLarge,
        ),
        (
            "second frame malformed after a good one",
            d,
            V12,
            b"SEND\ndestination:/a\n\n\0\nSNED\n\n\0".to_vec(),
            Error::UnknownCommand,
        ),
    ]
}

#[test]
fn malformed_inputs_fail_with_the_expected_error() {
    let cases = decoder_cases();
    assert!(cases.len() >= 40, "table too small: {}", cases.len());
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(name, limits, version, input, want)| {
            let got = decode_err(*limits, *version, input);
            (got != Some(*want)).then(|| format!("{name}: got {got:?}, want {want:?}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn malformed_inputs_fail_the_same_when_fed_byte_by_byte() {
    for (name, limits, version, input, want) in decoder_cases() {
        let mut dec = Decoder::new(limits);
        dec.set_version(version);
        let mut buf = BytesMut::new();
        let mut got = None;
        for &b in &input {
            buf.extend_from_slice(&[b]);
            let (_, end) = decode_all(&mut dec, &mut buf);
            if let Err(e) = end {
                got = Some(e);
                break;
            }
        }
        assert_eq!(got, Some(want), "{name}");
    }
}

#[test]
fn frame_exactly_at_the_limits_is_accepted() {
    let l = lim(|l| {
        l.max_frame = 64;
        l.max_body = 8;
        l.max_header_line = 16;
        l.max_headers = 2;
    });
    // 5 + 17 + 17 + 1 + 8 + 1 = 49 bytes; header lines of exactly 16 bytes.
    let input = b"SEND\ndestination:/que\nabcdefghijklmn:o\n\n12345678\0";
    let mut dec = Decoder::new(l);
    let mut buf = BytesMut::from(&input[..]);
    let Ok(Some(Decoded::Frame(f))) = dec.decode(&mut buf) else {
        panic!("rejected")
    };
    assert_eq!(&f.body[..], b"12345678");
    // A frame of exactly max_frame bytes (NUL included).
    let l = lim(|l| l.max_frame = 16);
    let exact = b"SEND\n\n123456789\0";
    assert_eq!(exact.len(), 16);
    let mut buf = BytesMut::from(&exact[..]);
    assert!(matches!(
        Decoder::new(l).decode(&mut buf),
        Ok(Some(Decoded::Frame(_)))
    ));
}

#[test]
fn header_line_over_limit_is_rejected_before_its_eol_arrives() {
    let l = lim(|l| l.max_header_line = 100);
    let mut dec = Decoder::new(l);
    // limit + 1 bytes might still be `limit` bytes + CR of a CRLF: not decided yet.
    let mut buf = BytesMut::from(&b"SEND\n"[..]);
    buf.extend_from_slice(&[b'a'; 101]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    // limit + 2 bytes without an EOL can no longer be a valid line.
    buf.extend_from_slice(b"a");
    assert_eq!(dec.decode(&mut buf), Err(Error::HeaderLineTooLong));
}

#[test]
fn command_line_is_judged_before_its_eol_arrives() {
    let mut dec = Decoder::new(Limits::default());
    assert_eq!(dec.decode(&mut BytesMut::from(&b"SUBSCR"[..])), Ok(None));
    assert_eq!(
        dec.decode(&mut BytesMut::from(&b"SUBSCRIBE\r"[..])),
        Ok(None)
    );
    assert_eq!(
        dec.decode(&mut BytesMut::from(&b"SUBSCRIBEX"[..])),
        Err(Error::UnknownCommand)
    );
}

#[test]
fn declared_content_length_over_max_body_is_rejected_before_the_body_arrives() {
    let l = lim(|l| l.max_body = 1000);
    let mut dec = Decoder::new(l);
    let mut buf = BytesMut::from(&b"SEND\ndestination:/a\ncontent-length:1001\n"[..]);
    assert_eq!(dec.decode(&mut buf), Err(Error::BodyTooLarge));
    // Within max_body but over max_frame: also rejected with no body buffered.
    let l = lim(|l| {
        l.max_body = 1000;
        l.max_frame = 500;
    });
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:600\n\n"[..]);
    assert_eq!(Decoder::new(l).decode(&mut buf), Err(Error::FrameTooLarge));
}

#[test]
fn declared_body_on_bodyless_command_is_rejected_before_the_body_arrives() {
    let mut buf =
        BytesMut::from(&b"SUBSCRIBE\nid:0\ndestination:/a\ncontent-length:500000\n\n"[..]);
    assert_eq!(
        Decoder::new(Limits::default()).decode(&mut buf),
        Err(Error::BodyNotAllowed)
    );
}

#[test]
fn body_without_nul_is_rejected_once_over_max_body() {
    let l = lim(|l| l.max_body = 10);
    let mut dec = Decoder::new(l);
    let mut buf = BytesMut::from(&b"SEND\ndestination:/a\n\n"[..]);
    buf.extend_from_slice(&[b'b'; 10]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"b");
    assert_eq!(dec.decode(&mut buf), Err(Error::BodyTooLarge));
}

#[test]
fn too_many_headers_is_rejected_before_the_frame_ends() {
    let l = lim(|l| l.max_headers = 2);
    let mut buf = BytesMut::from(&b"SEND\na:1\nb:2\nc:3\n"[..]);
    assert_eq!(Decoder::new(l).decode(&mut buf), Err(Error::TooManyHeaders));
}

#[test]
fn frame_too_large_is_rejected_while_headers_are_incomplete() {
    let l = lim(|l| l.max_frame = 32);
    let mut buf = BytesMut::from(&b"SEND\n"[..]);
    buf.extend_from_slice(&[b'h'; 27]);
    assert_eq!(Decoder::new(l).decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"h");
    assert_eq!(Decoder::new(l).decode(&mut buf), Err(Error::FrameTooLarge));
}

#[test]
fn an_error_does_not_consume_or_hide_earlier_frames() {
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"SEND\ndestination:/a\n\nok\0\nsend\n"[..]);
    let (items, end) = decode_all(&mut dec, &mut buf);
    assert_eq!(items.len(), 2);
    assert_eq!(end, Err(Error::UnknownCommand));
}

// ----- typed views: ClientFrame::parse -----

fn parse(version: Version, wire: &[u8]) -> Result<(), Error> {
    let (frame, _) = decode_one(version, wire);
    ClientFrame::parse(&frame, version).map(|_| ())
}

fn view_cases() -> Vec<(&'static str, Version, &'static [u8], Error)> {
    vec![
        (
            "SEND without destination",
            V12,
            b"SEND\n\nx\0",
            Error::MissingHeader("destination"),
        ),
        (
            "SEND with empty destination",
            V12,
            b"SEND\ndestination:\n\n\0",
            Error::MissingHeader("destination"),
        ),
        (
            "SEND with non-UTF-8 destination",
            V12,
            b"SEND\ndestination:/\xff\xfe\n\n\0",
            Error::NonUtf8Header,
        ),
        (
            "SEND with non-UTF-8 transaction",
            V12,
            b"SEND\ndestination:/a\ntransaction:\xc3\n\n\0",
            Error::NonUtf8Header,
        ),
        (
            "SUBSCRIBE without id in 1.2",
            V12,
            b"SUBSCRIBE\ndestination:/a\n\n\0",
            Error::MissingHeader("id"),
        ),
        (
            "SUBSCRIBE without id in 1.1",
            V11,
            b"SUBSCRIBE\ndestination:/a\n\n\0",
            Error::MissingHeader("id"),
        ),
        (
            "SUBSCRIBE without destination",
            V12,
            b"SUBSCRIBE\nid:0\n\n\0",
            Error::MissingHeader("destination"),
        ),
        (
            "SUBSCRIBE with non-UTF-8 id",
            V12,
            b"SUBSCRIBE\nid:\x80\ndestination:/a\n\n\0",
            Error::NonUtf8Header,
        ),
        (
            "SUBSCRIBE with invalid ack mode",
            V12,
            b"SUBSCRIBE\nid:0\ndestination:/a\nack:sometimes\n\n\0",
            Error::InvalidHeader("ack"),
        ),
        (
            "SUBSCRIBE with upper-case ack mode",
            V12,
            b"SUBSCRIBE\nid:0\ndestination:/a\nack:CLIENT\n\n\0",
            Error::InvalidHeader("ack"),
        ),
        (
            "SUBSCRIBE client-individual in 1.0",
            V10,
            b"SUBSCRIBE\ndestination:/a\nack:client-individual\n\n\0",
            Error::InvalidHeader("ack"),
        ),
        (
            "UNSUBSCRIBE without id in 1.2",
            V12,
            b"UNSUBSCRIBE\n\n\0",
            Error::MissingHeader("id"),
        ),
        (
            "UNSUBSCRIBE by destination only in 1.1",
            V11,
            b"UNSUBSCRIBE\ndestination:/a\n\n\0",
            Error::MissingHeader("id"),
        ),
        (
            "UNSUBSCRIBE with nothing in 1.0",
            V10,
            b"UNSUBSCRIBE\n\n\0",
            Error::MissingHeader("id"),
        ),
        (
            "ACK without id in 1.2",
            V12,
            b"ACK\nmessage-id:1\nsubscription:0\n\n\0",
            Error::MissingHeader("id"),
        ),
        (
            "ACK without subscription in 1.1",
            V11,
            b"ACK\nmessage-id:1\n\n\0",
            Error::MissingHeader("subscription"),
        ),
        (
            "ACK without message-id in 1.1",
            V11,
            b"ACK\nsubscription:0\nid:1\n\n\0",
            Error::MissingHeader("message-id"),
        ),
        (
            "ACK without message-id in 1.0",
            V10,
            b"ACK\n\n\0",
            Error::MissingHeader("message-id"),
        ),
        (
            "ACK with non-UTF-8 id",
            V12,
            b"ACK\nid:\xff\n\n\0",
            Error::NonUtf8Header,
        ),
        (
            "NACK in 1.0",
            V10,
            b"NACK\nmessage-id:1\n\n\0",
            Error::UnsupportedInVersion,
        ),
        (
            "NACK without id in 1.2",
            V12,
            b"NACK\n\n\0",
            Error::MissingHeader("id"),
        ),
        (
            "NACK without subscription in 1.1",
            V11,
            b"NACK\nmessage-id:1\n\n\0",
            Error::MissingHeader("subscription"),
        ),
        (
            "BEGIN without transaction",
            V12,
            b"BEGIN\n\n\0",
            Error::MissingHeader("transaction"),
        ),
        (
            "COMMIT without transaction",
            V12,
            b"COMMIT\n\n\0",
            Error::MissingHeader("transaction"),
        ),
        (
            "ABORT with empty transaction",
            V12,
            b"ABORT\ntransaction:\n\n\0",
            Error::MissingHeader("transaction"),
        ),
        (
            "BEGIN with non-UTF-8 transaction",
            V12,
            b"BEGIN\ntransaction:\xfe\n\n\0",
            Error::NonUtf8Header,
        ),
        (
            "STOMP without accept-version",
            V12,
            b"STOMP\nhost:h\n\n\0",
            Error::MissingHeader("accept-version"),
        ),
        (
            "CONNECT with heart-beat of one number",
            V12,
            b"CONNECT\naccept-version:1.2\nheart-beat:10000\n\n\0",
            Error::InvalidHeader("heart-beat"),
        ),
        (
            "CONNECT with negative heart-beat",
            V12,
            b"CONNECT\naccept-version:1.2\nheart-beat:-1,0\n\n\0",
            Error::InvalidHeader("heart-beat"),
        ),
        (
            "CONNECT with three heart-beat numbers",
            V12,
            b"CONNECT\naccept-version:1.2\nheart-beat:1,2,3\n\n\0",
            Error::InvalidHeader("heart-beat"),
        ),
        (
            "CONNECT with heart-beat over u32",
            V12,
            b"CONNECT\naccept-version:1.2\nheart-beat:4294967296,0\n\n\0",
            Error::InvalidHeader("heart-beat"),
        ),
        (
            "CONNECT with non-numeric heart-beat",
            V12,
            b"CONNECT\naccept-version:1.2\nheart-beat:a,b\n\n\0",
            Error::InvalidHeader("heart-beat"),
        ),
        (
            "CONNECT with non-UTF-8 login",
            V12,
            b"CONNECT\naccept-version:1.2\nlogin:\xff\n\n\0",
            Error::NonUtf8Header,
        ),
        (
            "MESSAGE from a client",
            V12,
            b"MESSAGE\ndestination:/a\n\n\0",
            Error::CommandNotAllowed,
        ),
        (
            "CONNECTED from a client",
            V12,
            b"CONNECTED\nversion:1.2\n\n\0",
            Error::CommandNotAllowed,
        ),
        (
            "ERROR from a client",
            V12,
            b"ERROR\n\n\0",
            Error::CommandNotAllowed,
        ),
        (
            "RECEIPT from a client",
            V12,
            b"RECEIPT\nreceipt-id:1\n\n\0",
            Error::CommandNotAllowed,
        ),
    ]
}

#[test]
fn client_frames_violating_version_rules_are_rejected() {
    for (name, version, wire, want) in view_cases() {
        assert_eq!(parse(version, wire), Err(want), "{name}");
    }
}

#[test]
fn client_frames_valid_in_one_version_only() {
    // The same bytes, judged per version: proves the rules are version-dependent.
    let sub = b"SUBSCRIBE\ndestination:/a\n\n\0";
    assert_eq!(parse(V10, sub), Ok(()));
    let ack11 = b"ACK\nmessage-id:1\nsubscription:0\n\n\0";
    assert_eq!(parse(V11, ack11), Ok(()));
    assert_eq!(parse(V12, ack11), Err(Error::MissingHeader("id")));
    let ack12 = b"ACK\nid:1\n\n\0";
    assert_eq!(parse(V12, ack12), Ok(()));
    assert_eq!(parse(V11, ack12), Err(Error::MissingHeader("message-id")));
    let nack = b"NACK\nmessage-id:1\nsubscription:0\n\n\0";
    assert_eq!(parse(V11, nack), Ok(()));
    assert_eq!(parse(V10, nack), Err(Error::UnsupportedInVersion));
    let ci = b"SUBSCRIBE\nid:0\ndestination:/a\nack:client-individual\n\n\0";
    assert_eq!(parse(V11, ci), Ok(()));
    let unsub = b"UNSUBSCRIBE\ndestination:/a\n\n\0";
    assert_eq!(parse(V10, unsub), Ok(()));
}

#[test]
fn error_messages_name_the_header() {
    assert_eq!(
        Error::MissingHeader("destination").message(),
        "missing required header 'destination'"
    );
    assert_eq!(
        Error::InvalidHeader("ack").message(),
        "invalid value for header 'ack'"
    );
    assert_eq!(Error::BodyTooLarge.message(), "body too large");
}
