//! `tokio-util` adapter (feature `tokio-codec`) for use with `Framed`.

use bytes::BytesMut;

use crate::{encode, Decoded, Decoder, Error, Frame, Limits, Version};

/// Errors of the [`StompCodec`] adapter: I/O or protocol.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The underlying transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The peer sent bad STOMP.
    #[error(transparent)]
    Stomp(#[from] Error),
}

/// A `tokio_util::codec` decoder/encoder around [`Decoder`] and [`encode`].
#[derive(Debug, Clone)]
pub struct StompCodec {
    decoder: Decoder,
}

impl StompCodec {
    /// A codec with the given limits, speaking 1.2 until told otherwise.
    pub fn new(limits: Limits) -> Self {
        StompCodec {
            decoder: Decoder::new(limits),
        }
    }

    /// Sets the negotiated version for escaping in both directions.
    pub fn set_version(&mut self, version: Version) {
        self.decoder.set_version(version);
    }
}

impl tokio_util::codec::Decoder for StompCodec {
    type Item = Decoded;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, CodecError> {
        Ok(self.decoder.decode(src)?)
    }
}

impl tokio_util::codec::Encoder<&Frame> for StompCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode(frame, self.decoder.version(), dst);
        Ok(())
    }
}
