use bytes::{Bytes, BytesMut};

use crate::{escape::unescape, Command, Error, Frame, Headers, Version};

/// Input limits, checked before large input is buffered or copied.
///
/// `#[non_exhaustive]`: start from [`Limits::default`] and set fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest whole frame (command, headers, body, NUL) in bytes.
    pub max_frame: usize,
    /// Most header lines in one frame.
    pub max_headers: usize,
    /// Longest command or header line in bytes (EOL excluded).
    pub max_header_line: usize,
    /// Largest body in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 1024 * 1024,
            max_headers: 64,
            max_header_line: 8 * 1024,
            max_body: 1024 * 1024,
        }
    }
}

/// One item read from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame.
    Frame(Frame),
    /// An EOL between frames (`\n` or `\r\n`): a heart-beat.
    HeartBeat,
}

/// A streaming STOMP decoder.
///
/// Feed it a buffer that the caller appends to; each [`Decoder::decode`] call
/// removes at most one item from the front. The decoder keeps no partial
/// state between calls, so a frame split over any number of reads decodes the
/// same as a frame read at once.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
    version: Version,
    /// Scratch space for one call's header spans, reused so decoding a frame
    /// allocates only its `Headers`. Cleared at the start of every call.
    lines: Vec<LineSpan>,
}

/// Where a header line lies in the buffer: start, colon, end (EOL excluded),
/// and whether the line has a backslash (so may need unescaping).
type LineSpan = (usize, usize, usize, bool);

/// Byte classes for the one-pass header line scan.
const PLAIN: u8 = 0;
const LF: u8 = 1;
const COLON: u8 = 2;
const NUL_OR_CR: u8 = 3;
const BACKSLASH: u8 = 4;
static CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    t[b'\n' as usize] = LF;
    t[b':' as usize] = COLON;
    t[0] = NUL_OR_CR;
    t[b'\r' as usize] = NUL_OR_CR;
    t[b'\\' as usize] = BACKSLASH;
    t
};

const LONGEST_COMMAND: usize = 11; // UNSUBSCRIBE, DISCONNECT ...

impl Decoder {
    /// A decoder with the given limits, unescaping as STOMP 1.2 until
    /// [`Decoder::set_version`] is called (CONNECT is never escaped, so the
    /// handshake decodes the same under any version).
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            version: Version::V1_2,
            lines: Vec::new(),
        }
    }

    /// Sets the negotiated version, which decides header unescaping.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// The version used for unescaping.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes one item from the front of `buf`.
    ///
    /// Returns `Ok(None)` when more input is needed (never an error for a
    /// valid but incomplete stream), `Ok(Some(_))` after removing the item's
    /// bytes from `buf`, or an error as soon as the input is known to be bad
    /// or over a limit. After an error the stream cannot be resynchronised.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, Error> {
        match buf.first() {
            None => return Ok(None),
            Some(b'\n') => {
                let _ = buf.split_to(1);
                return Ok(Some(Decoded::HeartBeat));
            }
            Some(b'\r') => {
                return match buf.get(1) {
                    None => Ok(None),
                    Some(b'\n') => {
                        let _ = buf.split_to(2);
                        Ok(Some(Decoded::HeartBeat))
                    }
                    Some(_) => Err(Error::BadEol),
                };
            }
            Some(_) => {}
        }

        let limits = self.limits;
        let max_line = limits.max_header_line;
        // Never look past the first byte that makes the frame too large: every
        // check below is positional, so the result is the same whether the
        // stream arrives whole or a byte at a time.
        let view_len = buf.len().min(limits.max_frame.saturating_add(1));
        let lines = &mut self.lines;
        lines.clear();
        let mut command = None;
        let mut content_length: Option<usize> = None;
        let mut pos = 0usize;
        let body_start = loop {
            let window_end = view_len.min(pos.saturating_add(max_line).saturating_add(2));
            // One pass over the line finds its LF, first colon, first NUL or CR
            // and whether it has a backslash (lines are short: a table beats
            // several memchr calls).
            let (mut found, mut colon, mut bad, mut backslash) = (None, None, None, false);
            for (j, &b) in buf[pos..window_end].iter().enumerate() {
                match CLASS[usize::from(b)] {
                    PLAIN => {}
                    LF => {
                        found = Some(pos + j);
                        break;
                    }
                    COLON => {
                        colon = colon.or(Some(pos + j));
                    }
                    NUL_OR_CR => {
                        bad = bad.or(Some(pos + j));
                    }
                    _ => backslash = true,
                }
            }
            let Some(nl) = found else {
                // Incomplete line: decide now whether it can still become valid.
                let partial = &buf[pos..view_len];
                if command.is_none() {
                    check_command_prefix(&buf[pos..window_end])?;
                } else {
                    check_partial_line(partial, max_line)?;
                }
                if partial.len() > max_line.saturating_add(1) {
                    return Err(Error::HeaderLineTooLong);
                }
                if view_len > limits.max_frame {
                    return Err(Error::FrameTooLarge);
                }
                return Ok(None);
            };
            let mut end = nl;
            if end > pos && buf[end - 1] == b'\r' {
                end -= 1;
            }
            let line = &buf[pos..end];
            if command.is_none() {
                command = Some(Command::parse(line).ok_or(Error::UnknownCommand)?);
            } else if line.is_empty() {
                break nl + 1;
            } else if let Some(b) = bad.filter(|&b| b < end) {
                // No NUL and no bare CR in a header line; a CR at index
                // `max_line` is left for the length check, which an
                // incremental reader would have hit first.
                if buf[b] == 0 {
                    return Err(Error::NulInHeader);
                }
                if b - pos < max_line {
                    return Err(Error::BadEol);
                }
            }
            if line.len() > max_line {
                return Err(Error::HeaderLineTooLong);
            }
            if nl + 1 > limits.max_frame {
                return Err(Error::FrameTooLarge);
            }
            if pos > 0 {
                if lines.len() >= limits.max_headers {
                    return Err(Error::TooManyHeaders);
                }
                let colon = match colon {
                    None => return Err(Error::HeaderWithoutColon),
                    Some(c) if c == pos => return Err(Error::EmptyHeaderName),
                    Some(c) => c,
                };
                if content_length.is_none() && &buf[pos..colon] == b"content-length" {
                    let n = parse_content_length(&buf[colon + 1..end])?;
                    if n > limits.max_body {
                        return Err(Error::BodyTooLarge);
                    }
                    content_length = Some(n);
                }
                lines.push((pos, colon, end, backslash));
            }
            pos = nl + 1;
        };
        let Some(command) = command else {
            return Err(Error::UnknownCommand);
        };

        let body_end = match content_length {
            Some(n) => {
                // Judged from the header alone, before any of the body is buffered.
                if n > 0 && !command.allows_body() {
                    return Err(Error::BodyNotAllowed);
                }
                let needed = body_start + n + 1;
                if needed > limits.max_frame {
                    return Err(Error::FrameTooLarge);
                }
                if buf.len() < needed {
                    buf.reserve(needed - buf.len());
                    return Ok(None);
                }
                if buf[body_start + n] != 0 {
                    return Err(Error::MissingNul);
                }
                body_start + n
            }
            None => {
                // The longest body this frame may still have: within max_body and
                // leaving room for the NUL within max_frame. Searching no further
                // makes the limits hold even when the NUL is already buffered.
                let Some(room) = limits.max_frame.checked_sub(body_start + 1) else {
                    return Err(Error::FrameTooLarge);
                };
                let max_len = limits.max_body.min(room);
                let avail = &buf[body_start..buf.len().min(body_start + max_len + 1)];
                match memchr::memchr(0, avail) {
                    Some(i) => {
                        if i > 0 && !command.allows_body() {
                            return Err(Error::BodyNotAllowed);
                        }
                        body_start + i
                    }
                    None => {
                        if !avail.is_empty() && !command.allows_body() {
                            return Err(Error::BodyNotAllowed);
                        }
                        if avail.len() > max_len {
                            return Err(if avail.len() > limits.max_body {
                                Error::BodyTooLarge
                            } else {
                                Error::FrameTooLarge
                            });
                        }
                        return Ok(None);
                    }
                }
            }
        };

        let frame_bytes: Bytes = buf.split_to(body_end + 1).freeze();
        let version = if command.escapes_headers() {
            self.version
        } else {
            Version::V1_0
        };
        let mut headers = Headers::with_capacity(self.lines.len());
        for &(start, colon, end, backslash) in &self.lines {
            let (name, value) = if backslash && version != Version::V1_0 {
                (
                    unescape(frame_bytes.slice(start..colon), version)?,
                    unescape(frame_bytes.slice(colon + 1..end), version)?,
                )
            } else {
                let name = well_known_name(&frame_bytes[start..colon])
                    .unwrap_or_else(|| frame_bytes.slice(start..colon));
                (name, frame_bytes.slice(colon + 1..end))
            };
            headers.push(name, value);
        }
        Ok(Some(Decoded::Frame(Frame {
            command,
            headers,
            body: frame_bytes.slice(body_start..body_end),
        })))
    }
}

/// Checks the bytes of an incomplete header line (no LF yet): a NUL, or a CR
/// followed by anything, can never become valid. Only the first
/// `max_line + 1` bytes are judged; past them the line is too long anyway.
fn check_partial_line(partial: &[u8], max_line: usize) -> Result<(), Error> {
    let scan = &partial[..partial.len().min(max_line.saturating_add(1))];
    match memchr::memchr2(0, b'\r', scan) {
        Some(i) if scan[i] == 0 => Err(Error::NulInHeader),
        // A CR with a following byte (not LF: there is none in a partial line).
        Some(i) if i + 1 < scan.len() => Err(Error::BadEol),
        _ => Ok(()),
    }
}

/// Common header names as static `Bytes`: no reference count to touch when
/// the frame is built or dropped.
fn well_known_name(raw: &[u8]) -> Option<Bytes> {
    const NAMES: [&[u8]; 20] = [
        b"destination",
        b"content-type",
        b"content-length",
        b"receipt",
        b"receipt-id",
        b"id",
        b"ack",
        b"subscription",
        b"message-id",
        b"transaction",
        b"message",
        b"persistent",
        b"accept-version",
        b"host",
        b"login",
        b"passcode",
        b"heart-beat",
        b"version",
        b"session",
        b"server",
    ];
    NAMES
        .iter()
        .find(|n| **n == raw)
        .map(|n| Bytes::from_static(n))
}

/// Rejects a partial command line early when no command starts with it.
fn check_command_prefix(partial: &[u8]) -> Result<(), Error> {
    const COMMANDS: [&[u8]; 15] = [
        b"CONNECT",
        b"STOMP",
        b"SEND",
        b"SUBSCRIBE",
        b"UNSUBSCRIBE",
        b"ACK",
        b"NACK",
        b"BEGIN",
        b"COMMIT",
        b"ABORT",
        b"DISCONNECT",
        b"CONNECTED",
        b"MESSAGE",
        b"RECEIPT",
        b"ERROR",
    ];
    let p = partial.strip_suffix(b"\r").unwrap_or(partial);
    if p.len() <= LONGEST_COMMAND && COMMANDS.iter().any(|c| c.starts_with(p)) {
        Ok(())
    } else {
        Err(Error::UnknownCommand)
    }
}

fn parse_content_length(raw: &[u8]) -> Result<usize, Error> {
    // Digits only: no sign, no spaces. At most 19 digits fit any usize;
    // longer is nonsense, not an overflow to wrap.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(input: &[u8]) -> Result<Option<Decoded>, Error> {
        Decoder::new(Limits::default()).decode(&mut BytesMut::from(input))
    }

    #[test]
    fn partial_garbage_command_is_rejected_early() {
        assert_eq!(dec(b"GET / HTTP/1.1"), Err(Error::UnknownCommand));
        assert_eq!(dec(b"SUBSCR"), Ok(None));
    }

    #[test]
    fn content_length_parses_strictly() {
        assert_eq!(parse_content_length(b"12"), Ok(12));
        assert_eq!(parse_content_length(b""), Err(Error::InvalidContentLength));
        assert_eq!(
            parse_content_length(b"-1"),
            Err(Error::InvalidContentLength)
        );
        assert_eq!(
            parse_content_length(b"1 "),
            Err(Error::InvalidContentLength)
        );
        assert_eq!(
            parse_content_length(b"99999999999999999999999"),
            Err(Error::InvalidContentLength)
        );
    }

    #[test]
    fn body_is_a_zero_copy_slice() {
        let mut buf = BytesMut::from(&b"SEND\ndestination:/a\ncontent-length:3\n\nabc\0"[..]);
        let base = buf.as_ptr() as usize;
        let Some(Decoded::Frame(f)) = Decoder::new(Limits::default()).decode(&mut buf).unwrap()
        else {
            panic!()
        };
        assert_eq!(f.body.as_ptr() as usize, base + 38);
    }
}
