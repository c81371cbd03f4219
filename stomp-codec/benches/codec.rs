//! Codec benchmarks: decode and encode throughput, and MESSAGE fan-out.
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

criterion_group!(
    benches,
    bench_decode,
    bench_decode_trickle,
    bench_encode,
    bench_fanout
);
criterion_main!(benches);
