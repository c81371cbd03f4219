//! Codec benchmarks: decode and encode throughput, MESSAGE fan-out, and the
//! header-line parser, hand-written vs nom (`header_line`).
//!
//! `cargo bench -p stomp-codec --bench codec`; results and targets are recorded in
//! `docs/benchmarks.md` (## Codec).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use stomp_codec::{
    encode, Command, Decoded, Decoder, Frame, Headers, Limits, MessageTemplate, Version,
};

/// A typical small SEND: ~150 bytes on the wire.
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

fn body_send(size: usize) -> Frame {
    Frame::new(Command::Send)
        .with_header("destination", "/topic/blobs")
        .with_header("content-type", "application/octet-stream")
        .with_body(Bytes::from(vec![0xA5u8; size]))
}

fn wire_of(frames: &[Frame]) -> Bytes {
    let mut dst = BytesMut::new();
    for f in frames {
        encode(f, Version::V1_2, &mut dst);
    }
    dst.freeze()
}

fn decode_everything(wire: &mut BytesMut) -> usize {
    let mut dec = Decoder::new(Limits::default());
    let mut n = 0;
    while let Ok(Some(item)) = dec.decode(wire) {
        if let Decoded::Frame(f) = item {
            black_box(&f);
            n += 1;
        }
    }
    n
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");

    let frames: Vec<Frame> = (0..1000).map(small_send).collect();
    let wire = wire_of(&frames);
    let per_frame = wire.len() / frames.len();
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function(format!("send_{per_frame}B_x1000"), |b| {
        b.iter_batched_ref(
            || BytesMut::from(&wire[..]),
            |buf| assert_eq!(decode_everything(buf), 1000),
            BatchSize::SmallInput,
        )
    });

    for (size, count) in [(4 * 1024, 64usize), (64 * 1024, 16)] {
        let frames: Vec<Frame> = (0..count).map(|_| body_send(size)).collect();
        let wire = wire_of(&frames);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("body_{}KiB_x{count}", size / 1024), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| assert_eq!(decode_everything(buf), count),
                BatchSize::SmallInput,
            )
        });
    }

    // A frame arriving in 1 KiB reads: the decoder resumes where the last read
    // stopped, so this costs about what one read of the whole frame costs.
    let wire = wire_of(&[body_send(64 * 1024)]);
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("body_64KiB_in_1KiB_reads", |b| {
        b.iter(|| {
            let mut dec = Decoder::new(Limits::default());
            let mut buf = BytesMut::with_capacity(wire.len());
            let mut got = None;
            for chunk in wire.chunks(1024) {
                buf.extend_from_slice(chunk);
                if let Ok(Some(item)) = dec.decode(&mut buf) {
                    got = Some(item);
                }
            }
            assert!(got.is_some());
        })
    });
    g.finish();
}

/// The slowloris shape of issue item 9: a ~480 KB header section, then the
/// body one byte per read. Each read must cost O(new bytes), so 1,000 trickled
/// reads cost about as much as decoding the frame from one buffer.
fn bench_decode_trickle(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_trickle");
    g.sample_size(10);
    let mut limits = Limits::default();
    limits.max_frame = 4 * 1024 * 1024;
    limits.max_header_bytes = 1024 * 1024;
    let mut head = b"SEND\ndestination:/queue/a\n".to_vec();
    for i in 0..60 {
        let name = format!("h{i:04}:");
        head.extend_from_slice(name.as_bytes());
        head.extend(std::iter::repeat_n(b'x', 8000 - name.len()));
        head.push(b'\n');
    }
    head.push(b'\n');
    let body = vec![b'b'; 1000];
    let whole: Vec<u8> = [&head[..], &body[..], b"\0"].concat();
    g.throughput(Throughput::Bytes(whole.len() as u64));
    g.bench_function("header_480KB_one_read", |b| {
        b.iter(|| {
            let mut dec = Decoder::new(limits);
            let mut buf = BytesMut::from(&whole[..]);
            assert!(matches!(dec.decode(&mut buf), Ok(Some(_))));
        })
    });
    g.bench_function("header_480KB_then_1000_body_reads_of_1B", |b| {
        b.iter(|| {
            let mut dec = Decoder::new(limits);
            let mut buf = BytesMut::with_capacity(whole.len());
            buf.extend_from_slice(&head);
            assert!(matches!(dec.decode(&mut buf), Ok(None)));
            for byte in &body {
                buf.extend_from_slice(std::slice::from_ref(byte));
                assert!(matches!(dec.decode(&mut buf), Ok(None)));
            }
            buf.extend_from_slice(b"\0");
            assert!(matches!(dec.decode(&mut buf), Ok(Some(_))));
        })
    });
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let frames: Vec<Frame> = (0..1000).map(small_send).collect();
    let total = wire_of(&frames).len();
    let mut dst = BytesMut::with_capacity(total * 2);
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function(format!("send_{}B_x1000", total / 1000), |b| {
        b.iter(|| {
            dst.clear();
            for f in &frames {
                encode(f, Version::V1_2, &mut dst);
            }
            black_box(dst.len())
        })
    });
    for size in [4 * 1024, 64 * 1024] {
        let frame = body_send(size);
        let len = wire_of(std::slice::from_ref(&frame)).len();
        let mut dst = BytesMut::with_capacity(len * 2);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("body_{}KiB", size / 1024), |b| {
            b.iter(|| {
                dst.clear();
                encode(&frame, Version::V1_2, &mut dst);
                black_box(dst.len())
            })
        });
    }
    g.finish();
}

fn bench_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    const SUBSCRIBERS: usize = 1000;
    let headers: Headers = [
        ("destination", "/topic/prices.eu"),
        ("message-id", "m-000000042"),
        ("content-type", "application/json"),
        ("x-origin", "kafka:prices/3@1234567"),
    ]
    .into_iter()
    .collect();
    let body = Bytes::from(vec![b'x'; 1024]);
    let ids: Vec<(String, String)> = (0..SUBSCRIBERS)
        .map(|i| (format!("sub-{i}"), format!("{i}:42")))
        .collect();
    let template = MessageTemplate::new(headers.clone(), body.clone());
    let mut dst = BytesMut::with_capacity(SUBSCRIBERS * 1200);
    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    g.bench_function("template_1KiB_x1000_subscribers", |b| {
        b.iter(|| {
            dst.clear();
            for (sub, ack) in &ids {
                template.encode_for(
                    Version::V1_2,
                    &[("subscription", sub.as_bytes()), ("ack", ack.as_bytes())],
                    &mut dst,
                );
            }
            black_box(dst.len())
        })
    });
    // Reference: building and encoding a whole frame per subscriber.
    g.bench_function("naive_frame_per_subscriber_1KiB_x1000", |b| {
        b.iter(|| {
            dst.clear();
            for (sub, ack) in &ids {
                let mut f = Frame::new(Command::Message)
                    .with_header("subscription", sub.clone())
                    .with_header("ack", ack.clone())
                    .with_body(body.clone());
                for (n, v) in headers.iter() {
                    f.headers.push(n.clone(), v.clone());
                }
                encode(&f, Version::V1_2, &mut dst);
            }
            black_box(dst.len())
        })
    });
    g.finish();
}

/// A nom 8 parser for the whole header section built from combinators
/// (command line, then `name:value` header lines up to LF or CRLF, then the
/// blank line), with the limits and checks of the decoder's: line length,
/// header count, header-section size, no NUL and no bare CR, a colon and a
/// non-empty name, the first `content-length` parsed strictly; a backslash
/// only marks the line for unescaping when the frame is built, as in the
/// decoder. Benchmarked against the decoder's header step (`decoder/...`),
/// which keeps its resumable one-pass scan (a fast path for whole ordinary
/// lines and a word-at-a-time skip of plain bytes since "Round 2
/// optimisation"; before that nom's `take_till`): faster than this parser
/// (numbers in docs/benchmarks.md, "Header lines: hand-written vs nom" and
/// "Round 2 optimisation"). Not used by the decoder: it re-parses from the
/// start of the section whenever input is incomplete.
mod nom_head {
    use nom::{
        branch::alt,
        bytes::streaming::{tag, take_till},
        IResult, Parser,
    };
    use stomp_codec::{Command, Error, Limits};

    /// (start, colon, end, has backslash), as the decoder records a line.
    pub type Span = (usize, usize, usize, bool);

    fn eol(input: &[u8]) -> IResult<&[u8], &[u8]> {
        alt((tag(&b"\n"[..]), tag(&b"\r\n"[..]))).parse(input)
    }

    /// One line up to its EOL (EOL excluded from the output).
    fn command_line(input: &[u8]) -> IResult<&[u8], &[u8]> {
        let (rest, line) = take_till(|b| matches!(b, b'\n' | b'\r')).parse(input)?;
        let (rest, _) = eol(rest)?;
        Ok((rest, line))
    }

    /// One header line: `name:value` then EOL.
    fn header_line(input: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
        let (rest, name) = take_till(|b| matches!(b, b':' | b'\n' | b'\r' | 0)).parse(input)?;
        let (rest, _) = tag(&b":"[..]).parse(rest)?;
        let (rest, value) = take_till(|b| matches!(b, b'\n' | b'\r' | 0)).parse(rest)?;
        let (rest, _) = eol(rest)?;
        Ok((rest, (name, value)))
    }

    /// The STOMP error for a line nom rejected at `at`.
    fn line_error(at: &[u8]) -> Error {
        match at {
            [0, ..] => Error::NulInHeader,
            [b'\r', b'\n', ..] | [b'\n', ..] => Error::HeaderWithoutColon,
            _ => Error::BadEol,
        }
    }

    fn content_length(raw: &[u8]) -> Result<usize, Error> {
        if raw.is_empty() || raw.len() > 19 {
            return Err(Error::InvalidContentLength);
        }
        raw.iter().try_fold(0usize, |acc, &d| {
            if !d.is_ascii_digit() {
                return Err(Error::InvalidContentLength);
            }
            acc.checked_mul(10)
                .and_then(|a| a.checked_add(usize::from(d - b'0')))
                .ok_or(Error::InvalidContentLength)
        })
    }

    /// Parses a header section at the front of `buf` into `spans`; returns
    /// the body's offset, `None` if the section is incomplete.
    pub fn parse_section(
        buf: &[u8],
        limits: &Limits,
        spans: &mut Vec<Span>,
    ) -> Result<Option<usize>, Error> {
        spans.clear();
        let off = |rest: &[u8]| buf.len() - rest.len();
        let (mut rest, line) = match command_line(buf) {
            Ok(v) => v,
            Err(nom::Err::Incomplete(_)) => return Ok(None),
            Err(_) => return Err(Error::BadEol),
        };
        if line.len() > limits.max_header_line {
            return Err(Error::HeaderLineTooLong);
        }
        Command::parse(line).ok_or(Error::UnknownCommand)?;
        let mut first_length = None;
        loop {
            if let Ok((after, _)) = eol(rest) {
                let body = off(after);
                if body > limits.max_header_bytes {
                    return Err(Error::HeadersTooLarge);
                }
                return Ok(Some(body));
            }
            let start = off(rest);
            let (after, (name, value)) = match header_line(rest) {
                Ok(v) => v,
                Err(nom::Err::Incomplete(_)) => return Ok(None),
                Err(nom::Err::Error(e) | nom::Err::Failure(e)) => return Err(line_error(e.input)),
            };
            let colon = start + name.len();
            let end = colon + 1 + value.len();
            if end - start > limits.max_header_line {
                return Err(Error::HeaderLineTooLong);
            }
            if off(after) > limits.max_header_bytes {
                return Err(Error::HeadersTooLarge);
            }
            if spans.len() >= limits.max_headers {
                return Err(Error::TooManyHeaders);
            }
            if name.is_empty() {
                return Err(Error::EmptyHeaderName);
            }
            if first_length.is_none() && name == b"content-length" {
                let n = content_length(value)?;
                if n > limits.max_body {
                    return Err(Error::BodyTooLarge);
                }
                first_length = Some(n);
            }
            let backslash = name.contains(&b'\\') || value.contains(&b'\\');
            spans.push((start, colon, end, backslash));
            rest = after;
        }
    }
}

/// Header sections of realistic frames: ~150 B SENDs with 3–6 headers, and a
/// 20-header frame (a MESSAGE-like set of application headers).
fn header_sections() -> Vec<(String, Vec<u8>)> {
    let send = |n: usize| {
        let mut f = Frame::new(Command::Send)
            .with_header("destination", "/queue/orders.eu-west")
            .with_header("content-type", "application/json")
            .with_header("receipt", "r-000042");
        for (k, v) in [
            ("persistent", "true"),
            ("priority", "4"),
            ("correlation-id", "c-7f3a9e"),
        ]
        .iter()
        .take(n - 3)
        {
            f = f.with_header(*k, *v);
        }
        f.with_body(Bytes::from_static(
            b"{\"order\":42,\"qty\":3,\"sku\":\"A-1\"}",
        ))
    };
    let mut twenty = Frame::new(Command::Send).with_header("destination", "/topic/prices.eq");
    for i in 1..20 {
        twenty = twenty.with_header(format!("x-attr-{i:02}"), format!("value-{i:04}-abcdef"));
    }
    let mut out = Vec::new();
    for (name, f) in [
        ("send_3_headers", send(3)),
        ("send_6_headers", send(6)),
        (
            "send_20_headers",
            twenty.with_body(Bytes::from_static(b"{}")),
        ),
    ] {
        let wire = wire_of(&[f]);
        let name = format!("{name}_{}B", wire.len());
        out.push((name, wire.to_vec()));
    }
    out
}

fn bench_header_line(c: &mut Criterion) {
    let mut g = c.benchmark_group("header_line");
    let limits = Limits::default();
    for (name, wire) in header_sections() {
        // Both parsers must agree before either is timed.
        let mut dec = Decoder::new(limits);
        let mut spans = Vec::new();
        let hand = dec.bench_parse_header_section(&wire).unwrap();
        let nom = nom_head::parse_section(&wire, &limits, &mut spans).unwrap();
        assert!(hand.is_some());
        assert_eq!(hand, nom, "{name}: body offset");
        assert_eq!(dec.bench_header_spans(), &spans[..], "{name}: header spans");
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("decoder/{name}"), |b| {
            b.iter(|| black_box(dec.bench_parse_header_section(black_box(&wire))))
        });
        g.bench_function(format!("nom/{name}"), |b| {
            b.iter(|| {
                black_box(nom_head::parse_section(
                    black_box(&wire),
                    &limits,
                    &mut spans,
                ))
            })
        });
    }
    // The same errors for bad lines.
    for bad in [
        &b"SEND\nnocolon\n\n\0"[..],
        b"SEND\n:empty\n\n\0",
        b"SEND\na:b\0c\n\n\0",
        b"SEND\na:b\rc\n\n\0",
        b"SEND\ncontent-length:x\n\n\0",
    ] {
        let mut dec = Decoder::new(limits);
        let hand = dec.bench_parse_header_section(bad);
        let nom = nom_head::parse_section(bad, &limits, &mut Vec::new());
        assert_eq!(hand, nom, "{:?}", String::from_utf8_lossy(bad));
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_decode,
    bench_decode_trickle,
    bench_encode,
    bench_fanout,
    bench_header_line
);
criterion_main!(benches);
