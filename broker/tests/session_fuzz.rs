//! The whole session fed with arbitrary frame sequences (the stable-toolchain
//! counterpart of a session fuzz target): it never panics, errors end the
//! session, and closing a session always leaves the router clean.

use std::sync::{atomic::Ordering::Relaxed, Arc};

use bytes::Bytes;
use proptest::prelude::*;
use stomp_broker::{auth::Identity, session::Session, BrokerCore, Config};
use stomp_codec::{Command, Frame, Headers};
use tokio_util::sync::CancellationToken;

fn header() -> impl Strategy<Value = (String, String)> {
    let names = prop::sample::select(vec![
        "destination",
        "id",
        "ack",
        "receipt",
        "transaction",
        "message-id",
        "subscription",
        "content-type",
        "accept-version",
        "heart-beat",
        "login",
        "passcode",
        "x-custom",
    ]);
    let values = prop_oneof![
        prop::sample::select(vec![
            "/topic/a",
            "/topic/a.b",
            "/topic/a.*",
            "/topic/#",
            "/queue/q",
            "/queue/q.*",
            "/user/queue/u",
            "/user/bob/queue/u",
            "/app/x",
            "/exchange/e",
            "",
            "1",
            "2",
            "t",
            "auto",
            "client",
            "client-individual",
            "1.0",
            "1.1",
            "1.2",
            "1.2,1.1",
            "9.9",
            "10,10",
            "0,0",
            "x,y",
            "text/plain",
            "application/octet-stream",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,12}",
        "[0-9]{1,4}",
    ];
    (names, values).prop_map(|(n, v)| (n.to_owned(), v))
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(Command::ALL.to_vec()),
        prop::collection::vec(header(), 0..6),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(command, headers, body)| {
            let mut f = Frame::new(command);
            for (n, v) in headers {
                f.headers.push(n, v);
            }
            if command.allows_body() {
                f.body = Bytes::from(body);
            }
            f
        })
}

fn run(frames: Vec<Frame>, publish: Vec<(u8, Vec<u8>)>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut cfg = Config::default();
        cfg.limits.max_subscriptions_per_connection = 8;
        cfg.limits.max_unacked_per_subscription = 4;
        cfg.queues.max_messages = 16;
        let core: Arc<BrokerCore> = BrokerCore::new(cfg, CancellationToken::new()).expect("core");
        let (conn, mut rx) = core.new_conn();
        let mut session = Session::new(core.clone(), conn);
        let dests = ["/topic/a", "/topic/a.b", "/queue/q", "/user/u/queue/u"];
        let mut publish = publish.into_iter();
        for frame in frames {
            let result = if session.needs_authentication(&frame) {
                let identity = Identity {
                    user: Some("u".into()),
                    ..Identity::default()
                };
                session.on_connect(frame, Ok(identity))
            } else {
                session.on_frame(frame)
            };
            if let Some((d, body)) = publish.next() {
                let _ = core.publish(
                    dests[usize::from(d) % dests.len()],
                    Headers::new(),
                    Bytes::from(body),
                );
            }
            while let Ok(item) = rx.try_recv() {
                if session.on_outbound(item).is_err() {
                    break;
                }
            }
            let _ = session.take_output();
            match result {
                Ok(stomp_broker::session::Flow::Continue) => {}
                Ok(stomp_broker::session::Flow::Close) => {
                    session.finish_disconnect();
                    break;
                }
                Err(e) => {
                    assert!(!e.message.is_empty());
                    session.push_error(&e);
                    break;
                }
            }
        }
        session.close();
        drop(session);
        assert_eq!(
            core.metrics.subscriptions.load(Relaxed),
            0,
            "router left with subscriptions"
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_frame_sequences_never_panic_and_leave_the_router_clean(
        frames in prop::collection::vec(frame(), 1..24),
        publish in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..8)), 0..24),
    ) {
        run(frames, publish);
    }

    #[test]
    fn connected_sessions_survive_arbitrary_frames(
        frames in prop::collection::vec(frame(), 1..24),
        publish in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..8)), 0..24),
    ) {
        let mut all = vec![Frame::new(Command::Connect).with_header("accept-version", "1.2")];
        all.extend(frames);
        run(all, publish);
    }
}
