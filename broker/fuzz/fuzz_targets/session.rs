//! A whole STOMP session fed with arbitrary bytes: the decoder turns them
//! into frames, the session handles them (CONNECT authenticated as a fixed
//! user), and messages published meanwhile flow back through the session.
//! Must never panic, and closing must leave the router without
//! subscriptions.
#![no_main]

use std::sync::{atomic::Ordering::Relaxed, Arc};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use stomp_broker::{
    auth::Identity,
    session::{Flow, Session},
    BrokerCore, Config,
};
use stomp_codec::{Decoded, Decoder, Headers};
use tokio_util::sync::CancellationToken;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut cfg = Config::default();
        cfg.limits.max_subscriptions_per_connection = 16;
        cfg.limits.max_unacked_per_subscription = 4;
        cfg.queues.max_messages = 32;
        let core: Arc<BrokerCore> = BrokerCore::new(cfg, CancellationToken::new()).expect("core");
        let (conn, mut rx) = core.new_conn();
        let mut session = Session::new(core.clone(), conn);
        let mut decoder = Decoder::new(core.limits);
        let mut buf = BytesMut::from(data);
        let dests = ["/topic/a", "/topic/a.b", "/queue/q", "/user/u/queue/u"];
        let mut n = 0usize;
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(Decoded::Frame(f))) => f,
                Ok(Some(Decoded::HeartBeat)) => continue,
                Ok(None) | Err(_) => break,
            };
            let result = if session.needs_authentication(&frame) {
                let who = Identity {
                    user: Some("u".into()),
                    ..Identity::default()
                };
                session.on_connect(frame, Ok(who))
            } else {
                session.on_frame(frame)
            };
            if let Some(v) = session.version() {
                decoder.set_version(v);
            }
            n += 1;
            let _ = core.publish(dests[n % dests.len()], Headers::new(), Bytes::from_static(b"m"));
            while let Ok(item) = rx.try_recv() {
                if session.on_outbound(item).is_err() {
                    break;
                }
            }
            let _ = session.take_output();
            match result {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => break,
                Err(e) => {
                    session.push_error(&e);
                    break;
                }
            }
        }
        session.close();
        drop(session);
        assert_eq!(core.metrics.subscriptions.load(Relaxed), 0);
    });
});
