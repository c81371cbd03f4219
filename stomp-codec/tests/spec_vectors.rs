//! Known-answer vectors: the frame examples of the STOMP 1.2 specification (plus the
//! 1.0/1.1 escaping differences). Each vector is decoded from the wire, its command,
//! headers, body and the bytes left in the buffer are checked, then it is encoded
//! back and compared with the expected bytes and decoded again.

mod common;

use bytes::BytesMut;
use common::{decode_all, decode_one, decoder, enc, header_pairs, normalized};
use stomp_codec::{encode, ClientFrame, Command, Decoded, Error, Frame, Version};

struct Vector {
    name: &'static str,
    version: Version,
    /// The frame as it travels (ends with its NUL).
    wire: &'static [u8],
    /// Bytes of the next frame(s) that follow in the same buffer; must be left untouched.
    rest: &'static [u8],
    command: Command,
    headers: &'static [(&'static [u8], &'static [u8])],
    body: &'static [u8],
    /// What `encode` writes for the decoded frame; `None` means exactly `wire`.
    encoded: Option<&'static [u8]>,
}

const V12: Version = Version::V1_2;

fn vectors() -> Vec<Vector> {
    vec![
        Vector {
            name: "CONNECT (spec: Connecting)",
            version: V12,
            wire: b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n\0",
            rest: b"",
            command: Command::Connect,
            headers: &[(b"accept-version", b"1.2"), (b"host", b"stomp.github.org")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "CONNECT offering several versions (spec: Protocol Negotiation)",
            version: V12,
            wire: b"CONNECT\naccept-version:1.0,1.1,2.0\nhost:stomp.github.org\n\n\0",
            rest: b"SEND\n",
            command: Command::Connect,
            headers: &[
                (b"accept-version", b"1.0,1.1,2.0"),
                (b"host", b"stomp.github.org"),
            ],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "CONNECT with heart-beat (spec: Heart-beating)",
            version: V12,
            wire: b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\nheart-beat:4000,10000\n\n\0",
            rest: b"\n",
            command: Command::Connect,
            headers: &[
                (b"accept-version", b"1.2"),
                (b"host", b"stomp.github.org"),
                (b"heart-beat", b"4000,10000"),
            ],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "STOMP frame (spec: CONNECT or STOMP Frame)",
            version: V12,
            wire: b"STOMP\naccept-version:1.2\nhost:stomp.github.org\n\n\0",
            rest: b"",
            command: Command::Stomp,
            headers: &[(b"accept-version", b"1.2"), (b"host", b"stomp.github.org")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "CONNECTED (spec: CONNECTED Frame)",
            version: V12,
            wire: b"CONNECTED\nversion:1.2\n\n\0",
            rest: b"",
            command: Command::Connected,
            headers: &[(b"version", b"1.2")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "CONNECTED with heart-beat, session and server",
            version: V12,
            wire: b"CONNECTED\nversion:1.1\nheart-beat:0,0\nsession:s-1\nserver:broker/0.1\n\n\0",
            rest: b"",
            command: Command::Connected,
            headers: &[
                (b"version", b"1.1"),
                (b"heart-beat", b"0,0"),
                (b"session", b"s-1"),
                (b"server", b"broker/0.1"),
            ],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "ERROR for failed version negotiation (spec: Protocol Negotiation)",
            version: V12,
            wire: b"ERROR\nversion:1.2,2.1\ncontent-type:text/plain\n\nSupported protocol versions are 1.2 2.1\0",
            rest: b"",
            command: Command::Error,
            headers: &[(b"version", b"1.2,2.1"), (b"content-type", b"text/plain")],
            body: b"Supported protocol versions are 1.2 2.1",
            encoded: Some(
                b"ERROR\nversion:1.2,2.1\ncontent-type:text/plain\ncontent-length:39\n\nSupported protocol versions are 1.2 2.1\0",
            ),
        },
        Vector {
            name: "SEND with content-type (spec: SEND)",
            version: V12,
            wire: b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\n\0",
            rest: b"\n\n",
            command: Command::Send,
            headers: &[(b"destination", b"/queue/a"), (b"content-type", b"text/plain")],
            body: b"hello queue a\n",
            encoded: Some(
                b"SEND\ndestination:/queue/a\ncontent-type:text/plain\ncontent-length:14\n\nhello queue a\n\0",
            ),
        },
        Vector {
            name: "SEND with receipt (spec: Header receipt)",
            version: V12,
            wire: b"SEND\ndestination:/queue/a\nreceipt:message-12345\n\nhello queue a\0",
            rest: b"",
            command: Command::Send,
            headers: &[(b"destination", b"/queue/a"), (b"receipt", b"message-12345")],
            body: b"hello queue a",
            encoded: Some(
                b"SEND\ndestination:/queue/a\nreceipt:message-12345\ncontent-length:13\n\nhello queue a\0",
            ),
        },
        Vector {
            name: "SUBSCRIBE with ack:client (spec: SUBSCRIBE)",
            version: V12,
            wire: b"SUBSCRIBE\nid:0\ndestination:/queue/foo\nack:client\n\n\0",
            rest: b"",
            command: Command::Subscribe,
            headers: &[(b"id", b"0"), (b"destination", b"/queue/foo"), (b"ack", b"client")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "UNSUBSCRIBE (spec: UNSUBSCRIBE)",
            version: V12,
            wire: b"UNSUBSCRIBE\nid:0\n\n\0",
            rest: b"",
            command: Command::Unsubscribe,
            headers: &[(b"id", b"0")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "ACK in a transaction (spec: ACK)",
            version: V12,
            wire: b"ACK\nid:12345\ntransaction:tx1\n\n\0",
            rest: b"",
            command: Command::Ack,
            headers: &[(b"id", b"12345"), (b"transaction", b"tx1")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "NACK in a transaction (spec: NACK)",
            version: V12,
            wire: b"NACK\nid:12345\ntransaction:tx1\n\n\0",
            rest: b"",
            command: Command::Nack,
            headers: &[(b"id", b"12345"), (b"transaction", b"tx1")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "BEGIN (spec: BEGIN)",
            version: V12,
            wire: b"BEGIN\ntransaction:tx1\n\n\0",
            rest: b"",
            command: Command::Begin,
            headers: &[(b"transaction", b"tx1")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "COMMIT (spec: COMMIT)",
            version: V12,
            wire: b"COMMIT\ntransaction:tx1\n\n\0",
            rest: b"",
            command: Command::Commit,
            headers: &[(b"transaction", b"tx1")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "ABORT (spec: ABORT)",
            version: V12,
            wire: b"ABORT\ntransaction:tx1\n\n\0",
            rest: b"",
            command: Command::Abort,
            headers: &[(b"transaction", b"tx1")],
            body: b"",
            encoded: None,
        },
        // The specification prints DISCONNECT and RECEIPT without the blank line that the
        // grammar requires (a known erratum); the grammar wins, see
        // `spec_erratum_frames_without_blank_line_are_rejected`.
        Vector {
            name: "DISCONNECT with receipt (spec: DISCONNECT)",
            version: V12,
            wire: b"DISCONNECT\nreceipt:77\n\n\0",
            rest: b"",
            command: Command::Disconnect,
            headers: &[(b"receipt", b"77")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "RECEIPT (spec: RECEIPT)",
            version: V12,
            wire: b"RECEIPT\nreceipt-id:77\n\n\0",
            rest: b"",
            command: Command::Receipt,
            headers: &[(b"receipt-id", b"77")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "MESSAGE (spec: MESSAGE)",
            version: V12,
            wire: b"MESSAGE\nsubscription:0\nmessage-id:007\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\0",
            rest: b"MESSAGE\nsubscription:0\n",
            command: Command::Message,
            headers: &[
                (b"subscription", b"0"),
                (b"message-id", b"007"),
                (b"destination", b"/queue/a"),
                (b"content-type", b"text/plain"),
            ],
            body: b"hello queue a",
            encoded: Some(
                b"MESSAGE\nsubscription:0\nmessage-id:007\ndestination:/queue/a\ncontent-type:text/plain\ncontent-length:13\n\nhello queue a\0",
            ),
        },
        Vector {
            name: "MESSAGE with repeated header (spec: Repeated Header Entries)",
            version: V12,
            wire: b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0",
            rest: b"",
            command: Command::Message,
            headers: &[(b"foo", b"World"), (b"foo", b"Hello")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "ERROR with content-length body (spec: ERROR)",
            version: V12,
            wire: b"ERROR\nreceipt-id:message-12345\ncontent-type:text/plain\ncontent-length:170\nmessage:malformed frame received\n\nThe message:\n-----\nMESSAGE\ndestined:/queue/a\nreceipt:message-12345\n\nHello queue a!\n-----\nDid not contain a destination header, which is REQUIRED\nfor message propagation.\n\0",
            rest: b"",
            command: Command::Error,
            headers: &[
                (b"receipt-id", b"message-12345"),
                (b"content-type", b"text/plain"),
                (b"content-length", b"170"),
                (b"message", b"malformed frame received"),
            ],
            body: b"The message:\n-----\nMESSAGE\ndestined:/queue/a\nreceipt:message-12345\n\nHello queue a!\n-----\nDid not contain a destination header, which is REQUIRED\nfor message propagation.\n",
            encoded: Some(
                b"ERROR\nreceipt-id:message-12345\ncontent-type:text/plain\nmessage:malformed frame received\ncontent-length:170\n\nThe message:\n-----\nMESSAGE\ndestined:/queue/a\nreceipt:message-12345\n\nHello queue a!\n-----\nDid not contain a destination header, which is REQUIRED\nfor message propagation.\n\0",
            ),
        },
        Vector {
            name: "escaping: every 1.2 escape in name and value (spec: Value Encoding)",
            version: V12,
            wire: b"MESSAGE\nkey\\cwith\\ncolon:a\\\\b\\cc\\nd\\re\n\n\0",
            rest: b"",
            command: Command::Message,
            headers: &[(b"key:with\ncolon", b"a\\b:c\nd\re")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "escaping: 1.1 has \\\\ \\n \\c",
            version: Version::V1_1,
            wire: b"SEND\ndestination:/a\\cb\\\\c\\nd\n\n\0",
            rest: b"",
            command: Command::Send,
            headers: &[(b"destination", b"/a:b\\c\nd")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "escaping: 1.0 backslashes are literal, extra colons belong to the value",
            version: Version::V1_0,
            wire: b"SEND\ndestination:/a\\nb\\c:d\\\n\n\0",
            rest: b"",
            command: Command::Send,
            headers: &[(b"destination", b"/a\\nb\\c:d\\")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "escaping: CONNECT is never unescaped, even in 1.2",
            version: V12,
            wire: b"CONNECT\nlogin:dom\\ain\\nuser\npasscode:a:b\\c\n\n\0",
            rest: b"",
            command: Command::Connect,
            headers: &[(b"login", b"dom\\ain\\nuser"), (b"passcode", b"a:b\\c")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "escaping: CONNECTED is never unescaped, even in 1.2",
            version: V12,
            wire: b"CONNECTED\nversion:1.2\nserver:x\\y:z\n\n\0",
            rest: b"",
            command: Command::Connected,
            headers: &[(b"version", b"1.2"), (b"server", b"x\\y:z")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "1.2 CRLF line endings throughout",
            version: V12,
            wire: b"SEND\r\ndestination:/queue/a\r\nreceipt:1\r\n\r\nhi\0",
            rest: b"\r\n",
            command: Command::Send,
            headers: &[(b"destination", b"/queue/a"), (b"receipt", b"1")],
            body: b"hi",
            encoded: Some(b"SEND\ndestination:/queue/a\nreceipt:1\ncontent-length:2\n\nhi\0"),
        },
        Vector {
            name: "content-length body with NULs",
            version: V12,
            wire: b"SEND\ndestination:/queue/bin\ncontent-length:5\n\n\0a\0\0b\0",
            rest: b"\n",
            command: Command::Send,
            headers: &[(b"destination", b"/queue/bin"), (b"content-length", b"5")],
            body: b"\0a\0\0b",
            encoded: None,
        },
        Vector {
            name: "content-length:0 on a body-less frame",
            version: V12,
            wire: b"SUBSCRIBE\nid:1\ndestination:/t\ncontent-length:0\n\n\0",
            rest: b"",
            command: Command::Subscribe,
            headers: &[(b"id", b"1"), (b"destination", b"/t"), (b"content-length", b"0")],
            body: b"",
            encoded: Some(b"SUBSCRIBE\nid:1\ndestination:/t\n\n\0"),
        },
        Vector {
            name: "repeated headers: all kept in order, the first wins",
            version: V12,
            wire: b"SEND\ndestination:/first\nx:1\ndestination:/second\nx:2\nx:3\n\n\0",
            rest: b"",
            command: Command::Send,
            headers: &[
                (b"destination", b"/first"),
                (b"x", b"1"),
                (b"destination", b"/second"),
                (b"x", b"2"),
                (b"x", b"3"),
            ],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "no trimming of whitespace around names and values",
            version: V12,
            wire: b"SEND\ndestination: /a \n x :y\n\n\0",
            rest: b"",
            command: Command::Send,
            headers: &[(b"destination", b" /a "), (b" x ", b"y")],
            body: b"",
            encoded: None,
        },
        Vector {
            name: "empty header value",
            version: V12,
            wire: b"SEND\ndestination:/a\nempty:\n\n\0",
            rest: b"",
            command: Command::Send,
            headers: &[(b"destination", b"/a"), (b"empty", b"")],
            body: b"",
            encoded: None,
        },
    ]
}

#[test]
fn spec_vectors_decode_check_remainder_and_encode_back() {
    for v in vectors() {
        let mut input = v.wire.to_vec();
        input.extend_from_slice(v.rest);
        let (frame, rest) = decode_one(v.version, &input);
        assert_eq!(frame.command, v.command, "{}: command", v.name);
        let want: Vec<(Vec<u8>, Vec<u8>)> = v
            .headers
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(header_pairs(&frame), want, "{}: headers", v.name);
        assert_eq!(&frame.body[..], v.body, "{}: body", v.name);
        assert_eq!(&rest[..], v.rest, "{}: bytes left in the buffer", v.name);

        let encoded = enc(&frame, v.version);
        let expected = v.encoded.unwrap_or(v.wire);
        assert_eq!(
            &encoded[..],
            expected,
            "{}: encoding\n got: {:?}\nwant: {:?}",
            v.name,
            String::from_utf8_lossy(&encoded),
            String::from_utf8_lossy(expected)
        );
        let (again, left) = decode_one(v.version, &encoded);
        assert!(left.is_empty(), "{}: re-decoding left bytes", v.name);
        assert_eq!(again, normalized(&frame), "{}: re-decoded frame", v.name);
    }
}

#[test]
fn spec_vectors_decode_identically_one_byte_at_a_time() {
    for v in vectors() {
        let mut dec = decoder(v.version);
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, &b) in v.wire.iter().enumerate() {
            buf.extend_from_slice(&[b]);
            match dec.decode(&mut buf) {
                Ok(None) => assert!(
                    i + 1 < v.wire.len(),
                    "{}: complete frame not decoded",
                    v.name
                ),
                Ok(Some(Decoded::Frame(f))) => {
                    assert_eq!(
                        i + 1,
                        v.wire.len(),
                        "{}: frame decoded early at {i}",
                        v.name
                    );
                    got = Some(f);
                }
                other => panic!("{}: at byte {i}: {other:?}", v.name),
            }
        }
        let (whole, _) = decode_one(v.version, v.wire);
        assert_eq!(got, Some(whole), "{}", v.name);
        assert!(buf.is_empty());
    }
}

#[test]
fn error_frame_spec_body_is_170_octets() {
    let v = vectors()
        .into_iter()
        .find(|v| v.name.starts_with("ERROR with content-length"))
        .expect("vector present");
    assert_eq!(v.body.len(), 170);
}

#[test]
fn spec_erratum_frames_without_blank_line_are_rejected() {
    // As printed in the specification: no empty line before the NUL.
    let mut buf = BytesMut::from(&b"DISCONNECT\nreceipt:77\n\0"[..]);
    assert_eq!(decoder(V12).decode(&mut buf), Err(Error::NulInHeader));
    let mut buf = BytesMut::from(&b"RECEIPT\nreceipt-id:77\n\0"[..]);
    assert_eq!(decoder(V12).decode(&mut buf), Err(Error::NulInHeader));
}

#[test]
fn several_frames_and_heart_beats_in_one_buffer() {
    let input: &[u8] = b"\n\r\nCONNECT\naccept-version:1.2\nhost:h\n\n\0\n\n\
SUBSCRIBE\nid:0\ndestination:/t\n\n\0\r\n\
SEND\ndestination:/t\ncontent-length:3\n\na\0b\0\n\
DISCONNECT\nreceipt:9\n\n\0SEND\ndest";
    let mut dec = decoder(V12);
    let mut buf = BytesMut::from(input);
    let (items, end) = decode_all(&mut dec, &mut buf);
    assert_eq!(end, Ok(()));
    let hb = Decoded::HeartBeat;
    let kinds: Vec<Option<Command>> = items
        .iter()
        .map(|i| match i {
            Decoded::Frame(f) => Some(f.command),
            Decoded::HeartBeat => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            None,
            None,
            Some(Command::Connect),
            None,
            None,
            Some(Command::Subscribe),
            None,
            Some(Command::Send),
            None,
            Some(Command::Disconnect),
        ]
    );
    assert_eq!(items[0], hb);
    let Decoded::Frame(send) = &items[7] else {
        panic!()
    };
    assert_eq!(&send.body[..], b"a\0b");
    assert_eq!(send.header("destination"), Some(&b"/t"[..]));
    let Decoded::Frame(disc) = &items[9] else {
        panic!()
    };
    assert_eq!(disc.header("receipt"), Some(&b"9"[..]));
    // The incomplete next frame stays in the buffer, untouched.
    assert_eq!(&buf[..], b"SEND\ndest");
}

#[test]
fn heart_beat_eols_are_reported_one_at_a_time() {
    let mut dec = decoder(V12);
    let mut buf = BytesMut::from(&b"\r\n\n\r"[..]);
    assert_eq!(dec.decode(&mut buf), Ok(Some(Decoded::HeartBeat)));
    assert_eq!(&buf[..], b"\n\r");
    assert_eq!(dec.decode(&mut buf), Ok(Some(Decoded::HeartBeat)));
    assert_eq!(&buf[..], b"\r");
    // A lone CR may still become CRLF.
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], b"\r");
    buf.extend_from_slice(b"\n");
    assert_eq!(dec.decode(&mut buf), Ok(Some(Decoded::HeartBeat)));
    assert!(buf.is_empty());
    assert_eq!(dec.decode(&mut buf), Ok(None));
}

#[test]
fn content_length_body_may_contain_nul_and_eol() {
    let body: &[u8] = b"\0\n\r\n\0\0";
    let wire = [
        &b"MESSAGE\ndestination:/q\ncontent-length:6\n\n"[..],
        body,
        b"\0",
    ]
    .concat();
    let (frame, rest) = decode_one(V12, &wire);
    assert!(rest.is_empty());
    assert_eq!(&frame.body[..], body);
    assert_eq!(&enc(&frame, V12)[..], &wire[..]);
}

#[test]
fn first_content_length_wins() {
    let (frame, rest) = decode_one(
        V12,
        b"SEND\ndestination:/q\ncontent-length:2\ncontent-length:4\n\na\0\0MORE",
    );
    assert_eq!(&frame.body[..], b"a\0");
    assert_eq!(&rest[..], b"MORE");
    assert_eq!(frame.header("content-length"), Some(&b"2"[..]));
}

#[test]
fn repeated_headers_first_wins_in_typed_view() {
    let (frame, _) = decode_one(
        V12,
        b"SUBSCRIBE\nid:a\nid:b\ndestination:/one\ndestination:/two\nack:client-individual\nack:auto\n\n\0",
    );
    let Ok(ClientFrame::Subscribe(s)) = ClientFrame::parse(&frame, V12) else {
        panic!("not a valid SUBSCRIBE")
    };
    assert_eq!((s.id, s.destination), ("a", "/one"));
    assert_eq!(s.ack, stomp_codec::AckMode::ClientIndividual);
    assert_eq!(frame.headers.len(), 6);
}

#[test]
fn escaping_differs_by_version_on_decode() {
    let wire: &[u8] = b"SEND\ndestination:a\\nb\n\n\0";
    let value = |v| {
        decode_one(v, wire)
            .0
            .header("destination")
            .map(<[u8]>::to_vec)
    };
    assert_eq!(value(Version::V1_0), Some(b"a\\nb".to_vec()));
    assert_eq!(value(Version::V1_1), Some(b"a\nb".to_vec()));
    assert_eq!(value(Version::V1_2), Some(b"a\nb".to_vec()));

    let cr: &[u8] = b"SEND\ndestination:a\\rb\n\n\0";
    assert_eq!(
        decoder(Version::V1_1).decode(&mut BytesMut::from(cr)),
        Err(Error::InvalidEscape)
    );
    assert_eq!(
        decode_one(Version::V1_2, cr).0.header("destination"),
        Some(&b"a\rb"[..])
    );
    assert_eq!(
        decode_one(Version::V1_0, cr).0.header("destination"),
        Some(&b"a\\rb"[..])
    );
}

#[test]
fn escaping_differs_by_version_on_encode() {
    let f = Frame::new(Command::Send).with_header("k:\\", "a\nb\rc:d\\e");
    assert_eq!(
        &enc(&f, Version::V1_2)[..],
        b"SEND\nk\\c\\\\:a\\nb\\rc\\cd\\\\e\n\n\0"
    );
    // 1.1 cannot escape CR: it becomes a space.
    assert_eq!(
        &enc(&f, Version::V1_1)[..],
        b"SEND\nk\\c\\\\:a\\nb c\\cd\\\\e\n\n\0"
    );
    // 1.0 has no escaping: EOLs become spaces, the rest is literal.
    let f10 = Frame::new(Command::Send).with_header("k", "a\nb\rc:d\\e");
    assert_eq!(&enc(&f10, Version::V1_0)[..], b"SEND\nk:a b c:d\\e\n\n\0");
    // CONNECT is never escaped, whatever the version.
    let c = Frame::new(Command::Connect).with_header("login", "a:b\\c");
    assert_eq!(&enc(&c, Version::V1_2)[..], b"CONNECT\nlogin:a:b\\c\n\n\0");
}

#[test]
fn connect_decodes_the_same_under_every_version() {
    let wire: &[u8] = b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:h\nlogin:a\\b\n\n\0";
    let frames: Vec<Frame> = Version::ALL
        .iter()
        .map(|&v| decode_one(v, wire).0)
        .collect();
    assert_eq!(frames[0], frames[1]);
    assert_eq!(frames[1], frames[2]);
    assert_eq!(frames[0].header("login"), Some(&b"a\\b"[..]));
}

#[test]
fn heart_beat_header_examples_parse() {
    let (frame, _) = decode_one(
        V12,
        b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\nheart-beat:4000,10000\n\n\0",
    );
    let Ok(ClientFrame::Connect(c)) = ClientFrame::parse(&frame, V12) else {
        panic!()
    };
    assert_eq!(c.heart_beat, (4000, 10000));
    assert_eq!(c.accept_version, vec![Version::V1_2]);
    assert_eq!(c.host, Some("stomp.github.org"));
    assert_eq!(stomp_codec::parse_heart_beat("0,0"), Ok((0, 0)));
}

#[test]
fn connect_without_accept_version_means_1_0() {
    let (frame, _) = decode_one(V12, b"CONNECT\nlogin:u\npasscode:p\n\n\0");
    let Ok(ClientFrame::Connect(c)) = ClientFrame::parse(&frame, V12) else {
        panic!()
    };
    assert_eq!(c.accept_version, vec![Version::V1_0]);
    assert_eq!((c.login, c.passcode), (Some("u"), Some("p")));
    assert_eq!(c.heart_beat, (0, 0));
}

#[test]
fn typed_views_of_spec_client_frames() {
    let (send, _) = decode_one(V12, b"SEND\ndestination:/queue/a\ntransaction:tx1\n\nx\0");
    assert_eq!(
        ClientFrame::parse(&send, V12),
        Ok(ClientFrame::Send(stomp_codec::Send {
            destination: "/queue/a",
            transaction: Some("tx1")
        }))
    );
    let (ack, _) = decode_one(V12, b"ACK\nid:12345\ntransaction:tx1\n\n\0");
    assert_eq!(
        ClientFrame::parse(&ack, V12),
        Ok(ClientFrame::Ack(stomp_codec::FrameAck {
            id: Some("12345"),
            message_id: None,
            subscription: None,
            transaction: Some("tx1")
        }))
    );
    let (ack11, _) = decode_one(Version::V1_1, b"ACK\nsubscription:0\nmessage-id:007\n\n\0");
    assert!(matches!(
        ClientFrame::parse(&ack11, Version::V1_1),
        Ok(ClientFrame::Ack(stomp_codec::FrameAck {
            message_id: Some("007"),
            subscription: Some("0"),
            ..
        }))
    ));
    let (unsub10, _) = decode_one(Version::V1_0, b"UNSUBSCRIBE\ndestination:/queue/a\n\n\0");
    assert_eq!(
        ClientFrame::parse(&unsub10, Version::V1_0),
        Ok(ClientFrame::Unsubscribe(stomp_codec::Unsubscribe {
            id: None,
            destination: Some("/queue/a")
        }))
    );
    for (wire, want) in [
        (
            &b"BEGIN\ntransaction:tx1\n\n\0"[..],
            ClientFrame::Begin("tx1"),
        ),
        (b"COMMIT\ntransaction:tx1\n\n\0", ClientFrame::Commit("tx1")),
        (b"ABORT\ntransaction:tx1\n\n\0", ClientFrame::Abort("tx1")),
        (b"DISCONNECT\nreceipt:77\n\n\0", ClientFrame::Disconnect),
    ] {
        let (f, _) = decode_one(V12, wire);
        assert_eq!(ClientFrame::parse(&f, V12), Ok(want));
    }
}

#[test]
fn decoded_values_are_slices_of_the_input_unless_escaped() {
    let mut buf = BytesMut::from(&b"SEND\ndestination:/plain\nk:esc\\c\n\nbody\0"[..]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let Ok(Some(Decoded::Frame(f))) = decoder(V12).decode(&mut buf) else {
        panic!()
    };
    let inside = |p: *const u8| (start..end).contains(&(p as usize));
    assert!(inside(f.headers.get("destination").expect("dest").as_ptr()));
    assert!(inside(f.body.as_ptr()));
    assert!(!inside(f.headers.get("k").expect("k").as_ptr()));
    assert_eq!(f.header("k"), Some(&b"esc:"[..]));
}

#[test]
fn encode_replaces_stale_content_length() {
    let f = Frame::new(Command::Send)
        .with_header("content-length", "999")
        .with_header("destination", "/q")
        .with_body(&b"a\0b"[..]);
    let mut dst = BytesMut::from(&b"PREFIX"[..]);
    encode(&f, V12, &mut dst);
    assert_eq!(
        &dst[..],
        b"PREFIXSEND\ndestination:/q\ncontent-length:3\n\na\0b\0"
    );
}

#[test]
fn template_ignores_per_subscriber_content_length() {
    let t = stomp_codec::MessageTemplate::new(
        [("destination", "/t")].into_iter().collect(),
        bytes::Bytes::from_static(b"abc"),
    );
    let mut dst = BytesMut::new();
    t.encode_for(
        V12,
        &[("content-length", b"1"), ("subscription", b"0")],
        &mut dst,
    );
    assert_eq!(
        &dst[..],
        b"MESSAGE\nsubscription:0\ndestination:/t\ncontent-length:3\n\nabc\0"
    );
}
