use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

use crate::{escape::escape_into, Command, Frame, Headers, Version};

/// Appends `frame` to `dst`, escaped for `version`.
///
/// Any `content-length` header in the frame is ignored and a correct one is
/// written whenever the body is not empty, so bodies containing NUL survive.
pub fn encode(frame: &Frame, version: Version, dst: &mut BytesMut) {
    let escape_version = if frame.command.escapes_headers() {
        version
    } else {
        Version::V1_0
    };
    dst.reserve(estimate(frame));
    dst.extend_from_slice(frame.command.as_str().as_bytes());
    dst.put_u8(b'\n');
    write_headers(&frame.headers, escape_version, dst);
    write_content_length(frame.body.len(), dst);
    dst.put_u8(b'\n');
    dst.extend_from_slice(&frame.body);
    dst.put_u8(0);
}

/// Appends one heart-beat EOL.
pub fn encode_heartbeat(dst: &mut BytesMut) {
    dst.put_u8(b'\n');
}

fn estimate(frame: &Frame) -> usize {
    let headers: usize = frame
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 2)
        .sum();
    frame.command.as_str().len() + headers + frame.body.len() + 32
}

fn write_headers(headers: &Headers, version: Version, dst: &mut BytesMut) {
    for (name, value) in headers.iter() {
        if name.as_ref() == b"content-length" {
            continue;
        }
        write_header(name, value, version, dst);
    }
}

fn write_header(name: &[u8], value: &[u8], version: Version, dst: &mut BytesMut) {
    escape_into(name, version, dst);
    dst.put_u8(b':');
    escape_into(value, version, dst);
    dst.put_u8(b'\n');
}

fn write_content_length(len: usize, dst: &mut BytesMut) {
    if len > 0 {
        dst.extend_from_slice(b"content-length:");
        dst.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
        dst.put_u8(b'\n');
    }
}

/// The shared part of a MESSAGE, encoded once and reused for every subscriber.
///
/// Fan-out to N subscribers escapes the shared headers once per protocol
/// version in use (lazily) and never re-encodes the body; each subscriber's
/// own `subscription`/`ack` (and e.g. `redelivered`) headers are written in
/// front of the shared block by [`MessageTemplate::encode_for`].
#[derive(Debug)]
pub struct MessageTemplate {
    headers: Headers,
    body: Bytes,
    blocks: [OnceLock<Bytes>; 3],
}

impl MessageTemplate {
    /// A template from the shared headers (`destination`, `message-id`,
    /// `content-type`, custom headers …) and the body. `content-length` is
    /// computed; a `subscription` or `ack` header here would be repeated, so
    /// callers leave those out.
    pub fn new(headers: Headers, body: Bytes) -> Self {
        MessageTemplate {
            headers,
            body,
            blocks: [OnceLock::new(), OnceLock::new(), OnceLock::new()],
        }
    }

    /// The shared headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The shared header block for `version`, ending with the blank line.
    fn block(&self, version: Version) -> &Bytes {
        let slot = match version {
            Version::V1_0 => &self.blocks[0],
            Version::V1_1 => &self.blocks[1],
            Version::V1_2 => &self.blocks[2],
        };
        slot.get_or_init(|| {
            let mut dst = BytesMut::with_capacity(128);
            write_headers(&self.headers, version, &mut dst);
            write_content_length(self.body.len(), &mut dst);
            dst.put_u8(b'\n');
            dst.freeze()
        })
    }

    /// An upper bound of the encoded size for one subscriber, for byte
    /// accounting of outbound queues before encoding.
    pub fn approx_len(&self) -> usize {
        self.block(Version::V1_2).len() + self.body.len() + 64
    }

    /// Appends the complete MESSAGE frame for one subscriber to `dst`.
    ///
    /// `per_subscriber` holds that subscriber's own headers (typically
    /// `subscription`, `ack`, `redelivered`); they come first, so they win
    /// over any same-named shared header.
    pub fn encode_for(
        &self,
        version: Version,
        per_subscriber: &[(&str, &[u8])],
        dst: &mut BytesMut,
    ) {
        let block = self.block(version);
        let own: usize = per_subscriber
            .iter()
            .map(|(n, v)| n.len() + v.len() + 2)
            .sum();
        dst.reserve(8 + own + block.len() + self.body.len() + 1);
        dst.extend_from_slice(Command::Message.as_str().as_bytes());
        dst.put_u8(b'\n');
        for (name, value) in per_subscriber {
            // As in `encode`: the template writes the one true content-length;
            // a second one would take precedence in the receiver and break framing.
            if *name == "content-length" {
                continue;
            }
            write_header(name.as_bytes(), value, version, dst);
        }
        dst.extend_from_slice(block);
        dst.extend_from_slice(&self.body);
        dst.put_u8(0);
    }

    /// [`MessageTemplate::encode_for`] with the subscriber's own header
    /// lines already encoded (escaped for `version`, each ending in `\n`,
    /// e.g. from [`MessageTemplate::own_header_lines`]): fan-out to a
    /// subscription whose headers never change (`subscription:<id>` of an
    /// `auto` subscription) encodes them once, not once per message.
    pub fn encode_with_lines(&self, version: Version, own_lines: &[u8], dst: &mut BytesMut) {
        let block = self.block(version);
        dst.reserve(8 + own_lines.len() + block.len() + self.body.len() + 1);
        dst.extend_from_slice(b"MESSAGE\n");
        dst.extend_from_slice(own_lines);
        dst.extend_from_slice(block);
        dst.extend_from_slice(&self.body);
        dst.put_u8(0);
    }

    /// Encodes per-subscriber header lines once for
    /// [`MessageTemplate::encode_with_lines`] (escaped as `version` wants;
    /// a `content-length` is left out, as in `encode_for`).
    pub fn own_header_lines(version: Version, headers: &[(&str, &[u8])]) -> Bytes {
        let mut dst = BytesMut::new();
        for (name, value) in headers {
            if *name != "content-length" {
                write_header(name.as_bytes(), value, version, &mut dst);
            }
        }
        dst.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_adds_content_length_and_escapes() {
        let f = Frame::new(Command::Message)
            .with_header("destination", "/topic/a:b")
            .with_header("content-length", "999")
            .with_body("hi");
        let mut dst = BytesMut::new();
        encode(&f, Version::V1_2, &mut dst);
        assert_eq!(
            &dst[..],
            b"MESSAGE\ndestination:/topic/a\\cb\ncontent-length:2\n\nhi\0"
        );
    }

    #[test]
    fn connected_is_never_escaped() {
        let f = Frame::new(Command::Connected).with_header("server", "a:b");
        let mut dst = BytesMut::new();
        encode(&f, Version::V1_2, &mut dst);
        assert_eq!(&dst[..], b"CONNECTED\nserver:a:b\n\n\0");
    }

    #[test]
    fn template_matches_plain_encoding() {
        let headers: Headers = [("destination", "/topic/x"), ("message-id", "7")]
            .into_iter()
            .collect();
        let t = MessageTemplate::new(headers.clone(), Bytes::from_static(b"body"));
        let mut a = BytesMut::new();
        t.encode_for(
            Version::V1_2,
            &[("subscription", b"s-1"), ("ack", b"9")],
            &mut a,
        );
        let mut frame = Frame::new(Command::Message)
            .with_header("subscription", "s-1")
            .with_header("ack", "9")
            .with_body("body");
        for (n, v) in headers.iter() {
            frame.headers.push(n.clone(), v.clone());
        }
        let mut b = BytesMut::new();
        encode(&frame, Version::V1_2, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn pre_encoded_lines_match_encode_for_in_every_version() {
        let headers: Headers = [("destination", "/topic/x"), ("message-id", "7")]
            .into_iter()
            .collect();
        let t = MessageTemplate::new(headers, Bytes::from_static(b"body"));
        // An id that needs escaping in 1.1/1.2 (colon, newline) but not in 1.0.
        let own: [(&str, &[u8]); 2] = [("subscription", b"a:b\nc"), ("content-length", b"1")];
        for v in [Version::V1_0, Version::V1_1, Version::V1_2] {
            let mut a = BytesMut::new();
            t.encode_for(v, &own, &mut a);
            let mut b = BytesMut::new();
            t.encode_with_lines(v, &MessageTemplate::own_header_lines(v, &own), &mut b);
            assert_eq!(a, b, "{v:?}");
        }
    }
}
