//! A sans-IO codec for STOMP 1.0, 1.1 and 1.2.
//!
//! Bytes in, frames out; frames in, bytes out. Nothing here touches a socket or
//! a runtime, so the broker, tests, fuzzers and benchmarks all drive the same
//! code.
//!
//! * [`Decoder`] is a streaming decoder over a [`bytes::BytesMut`]: it returns
//!   `Ok(None)` until a frame is whole, reports heart-beat EOLs between frames,
//!   and checks every [`Limits`] bound *before* buffering large input. Header
//!   values and bodies of decoded [`Frame`]s are zero-copy [`bytes::Bytes`]
//!   slices of the input (a header value is copied only when it contains an
//!   escape sequence).
//! * [`encode`] writes a frame with the escaping of the negotiated [`Version`];
//!   [`MessageTemplate`] builds the shared part of a MESSAGE once for fan-out.
//! * [`ClientFrame`] is a typed, validated view of a client frame with the
//!   per-version required-header rules.
//!
//! ```
//! use bytes::BytesMut;
//! use stomp_codec::{Command, Decoded, Decoder, Limits, Version};
//!
//! let mut dec = Decoder::new(Limits::default());
//! dec.set_version(Version::V1_2);
//! let mut buf = BytesMut::from(&b"SEND\ndestination:/queue/a\n\nhello\0\n"[..]);
//! let Some(Decoded::Frame(frame)) = dec.decode(&mut buf).unwrap() else { panic!() };
//! assert_eq!(frame.command, Command::Send);
//! assert_eq!(frame.header("destination"), Some(&b"/queue/a"[..]));
//! assert_eq!(&frame.body[..], b"hello");
//! assert_eq!(dec.decode(&mut buf).unwrap(), Some(Decoded::HeartBeat));
//! assert_eq!(dec.decode(&mut buf).unwrap(), None);
//! ```
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod decode;
mod encode;
mod error;
mod escape;
mod frame;
mod view;

pub use decode::{Decoded, Decoder, Limits};
pub use encode::{encode, encode_heartbeat, MessageTemplate};
pub use error::Error;
pub use escape::{escape_into, unescape};
pub use frame::{Command, Frame, Headers, Version};
pub use view::{
    parse_heart_beat, AckMode, ClientFrame, Connect, FrameAck, Send, Subscribe, Unsubscribe,
};
