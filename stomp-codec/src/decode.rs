use bytes::{Buf, Bytes, BytesMut};

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
    /// Largest header section (command line, header lines and the blank
    /// line, EOLs included) in bytes.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 1024 * 1024,
            max_headers: 64,
            max_header_line: 8 * 1024,
            max_body: 1024 * 1024,
            max_header_bytes: 64 * 1024,
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
/// removes at most one item from the front. Between calls the decoder
/// remembers how far it got into an incomplete frame (the header lines
/// parsed, the end of the header section, how much of the body was searched
/// for its NUL), so a frame trickled in one byte per read costs time in
/// proportion to the bytes that arrive, not to the bytes already buffered.
/// The result is the same however the input is split.
///
/// Until an item is returned (or an error), the caller must only append to
/// the buffer it passes in; [`Decoder::reset`] forgets a partial frame.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
    version: Version,
    /// The header spans of the frame being decoded, kept across calls while
    /// the frame is incomplete and reused so decoding a frame allocates only
    /// its `Headers`.
    lines: Vec<LineSpan>,
    /// How far the frame at the front of the buffer has been parsed.
    progress: Progress,
    /// Bytes examined by the header and body scans, to prove in tests that
    /// input is not re-scanned.
    #[cfg(test)]
    scanned: usize,
    /// Tests only: parse every line with the general steps, to compare the
    /// fast path against them.
    #[cfg(test)]
    general_only: bool,
}

/// The parse position in an incomplete frame. `Default` is "nothing parsed".
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Start of the first header line not yet parsed (0: the command line).
    pos: usize,
    /// The command, once its line is complete.
    command: Option<Command>,
    /// The first `content-length` header's value.
    content_length: Option<usize>,
    /// How far the line at `pos` has been scanned, and what was found in it.
    scan: usize,
    colon: Option<usize>,
    bad: Option<usize>,
    backslash: bool,
    /// Set once the blank line that ends the header section is parsed.
    body_start: Option<usize>,
    /// Bytes of a body without `content-length` already searched for the NUL.
    body_scanned: usize,
}

impl Progress {
    /// The furthest buffer offset the decoder relies on.
    fn seen(&self) -> usize {
        match self.body_start {
            Some(b) => b + self.body_scanned,
            None => self.scan.max(self.pos),
        }
    }
}

/// Where a header line lies in the buffer: start, colon, end (EOL excluded),
/// and whether the line has a backslash (so may need unescaping).
type LineSpan = (usize, usize, usize, bool);

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
            progress: Progress::default(),
            #[cfg(test)]
            scanned: 0,
            #[cfg(test)]
            general_only: false,
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

    /// Forgets any partially parsed frame, for a caller that switches to
    /// another buffer. Never needed while the same buffer is only appended to.
    pub fn reset(&mut self) {
        self.progress = Progress::default();
        self.lines.clear();
    }

    /// Runs only the header-section step (command line and header lines) on
    /// a whole section at the front of `buf`, forgetting any partial frame
    /// first; returns the body's offset. For the hand-written vs nom
    /// header-line benchmark (`benches/codec.rs`), not part of the API.
    #[doc(hidden)]
    pub fn bench_parse_header_section(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        self.reset();
        self.parse_header_section(buf)
    }

    /// The header line spans (start, colon, end, has backslash) found by the
    /// last [`Decoder::bench_parse_header_section`]. Benchmark only.
    #[doc(hidden)]
    pub fn bench_header_spans(&self) -> &[(usize, usize, usize, bool)] {
        &self.lines
    }

    /// Decodes one item from the front of `buf`.
    ///
    /// Returns `Ok(None)` when more input is needed (never an error for a
    /// valid but incomplete stream), `Ok(Some(_))` after removing the item's
    /// bytes from `buf`, or an error as soon as the input is known to be bad
    /// or over a limit. After an error the stream cannot be resynchronised.
    ///
    /// The steps, each a function below: `take_heart_beat` between
    /// frames; then `Decoder::decode_frame`: `Decoder::parse_header_section`
    /// (the command line via `parse_command_line`, then header lines, each
    /// found by `Decoder::scan_line` and checked by `check_line_bytes`,
    /// `check_line_limits` and `Decoder::record_header`; an incomplete
    /// line judged by `Decoder::check_partial_line`), the body located by
    /// `Decoder::body_end_by_content_length` or `Decoder::body_end_by_nul`,
    /// and the frame built by `Decoder::finish_frame`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, Error> {
        if buf.len() < self.progress.seen() {
            // Not the buffer we were parsing: start over rather than trust
            // offsets into it.
            self.reset();
        }
        if self.progress.seen() == 0 {
            if let Some(item) = take_heart_beat(buf) {
                return item;
            }
        }
        let result = self.decode_frame(buf);
        if !matches!(result, Ok(None)) {
            self.reset();
        }
        result
    }

    /// Continues parsing the frame at the front of `buf` from where the last
    /// call stopped: header section, then body, then the frame.
    fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, Error> {
        let body_start = match self.progress.body_start {
            Some(b) => b,
            None => match self.parse_header_section(buf)? {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        let Some(command) = self.progress.command else {
            return Err(Error::UnknownCommand);
        };
        let body_end = match self.progress.content_length {
            Some(n) => self.body_end_by_content_length(buf, command, body_start, n)?,
            None => self.body_end_by_nul(buf, command, body_start)?,
        };
        let Some(body_end) = body_end else {
            return Ok(None);
        };
        let frame = self.finish_frame(buf, command, body_start, body_end)?;
        Ok(Some(Decoded::Frame(frame)))
    }

    /// Parses header lines from where the last call stopped. Returns the
    /// offset of the body once the blank line is parsed, `None` while the
    /// header section is incomplete.
    fn parse_header_section(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        let limits = self.limits;
        // Never look past the first byte that makes the frame or its header
        // section too large: every check is positional, so the result is the
        // same whether the stream arrives whole or a byte at a time.
        let head_cap = limits.max_frame.min(limits.max_header_bytes);
        let view_len = buf.len().min(head_cap.saturating_add(1));
        loop {
            // Whole, ordinary lines take the fast path; it stops (leaving
            // the scan state as `scan_line` would) at the first byte or line
            // that needs the general steps below: a backslash, NUL or bare
            // CR, the end of the input, or a line that fails a check.
            #[cfg(test)]
            let fast = !self.general_only;
            #[cfg(not(test))]
            let fast = true;
            if fast && self.progress.scan <= self.progress.pos {
                if let Some(body_start) = self.fast_lines(buf, view_len) {
                    return Ok(Some(body_start));
                }
            }
            let pos = self.progress.pos;
            let window_end =
                view_len.min(pos.saturating_add(limits.max_header_line).saturating_add(2));
            let Some(line) = self.scan_line(buf, pos, window_end) else {
                self.check_partial_line(buf, pos, window_end, view_len)?;
                return Ok(None);
            };
            let nl = line.nl;
            let mut end = nl;
            if end > pos && buf[end - 1] == b'\r' {
                end -= 1;
            }
            if self.progress.command.is_none() {
                self.progress.command = Some(parse_command_line(&buf[pos..end])?);
            } else if end == pos {
                // The blank line that ends the header section.
                if nl + 1 > limits.max_header_bytes {
                    return Err(Error::HeadersTooLarge);
                }
                self.progress.pos = nl + 1;
                self.progress.body_start = Some(nl + 1);
                return Ok(Some(nl + 1));
            } else {
                check_line_bytes(buf, pos, end, line.bad, limits.max_header_line)?;
            }
            check_line_limits(&limits, end - pos, nl)?;
            if pos > 0 {
                self.record_header(buf, pos, end, line)?;
            }
            self.progress.pos = nl + 1;
        }
    }

    /// The fast path of [`Decoder::parse_header_section`]: parses the
    /// complete, ordinary lines from `progress.pos` on (no backslash, NUL or
    /// bare CR; every check passed) with locals and a word-at-a-time scan,
    /// and returns the body's offset if it reaches the blank line. At the
    /// first byte it does not handle it stops and leaves `progress` exactly
    /// as the general steps would have left it there: the lines before
    /// recorded, and the current line scanned up to (not including) that
    /// byte, with its colon if one was seen. The general steps then resume
    /// from that byte, so nothing is scanned twice and every error, limit
    /// and partial-input verdict comes from the one general code path.
    fn fast_lines(&mut self, buf: &[u8], view_len: usize) -> Option<usize> {
        let Decoder {
            limits,
            lines,
            progress: p,
            #[cfg(test)]
            scanned,
            ..
        } = self;
        let head_cap = limits.max_frame.min(limits.max_header_bytes);
        let max_line = limits.max_header_line;
        let mut pos = p.pos;
        let mut command = p.command;
        let mut content_length = p.content_length;
        #[cfg(test)]
        let start = pos;
        // Where the general steps take over, and the current line's colon.
        let (stop, colon) = loop {
            let window_end = view_len.min(pos.saturating_add(max_line).saturating_add(2));
            let window = buf.get(..window_end).unwrap_or_default();
            let mut j = pos;
            let mut colon = None;
            // The line's end (EOL excluded) and its LF, or `None` at a byte
            // for the general steps (or the end of the window).
            let eol = loop {
                let rest = window.get(j..).unwrap_or_default();
                // Before the colon a colon stops the run; after it, only
                // LF, CR, NUL, backslash (and other control bytes).
                j += if colon.is_none() {
                    plain_run(rest)
                } else {
                    value_run(rest)
                };
                match window.get(j) {
                    None => break None,
                    Some(b'\n') => break Some((j, j)),
                    Some(b':') => {
                        colon = Some(j);
                        j += 1;
                    }
                    Some(b'\r') if window.get(j + 1) == Some(&b'\n') => break Some((j, j + 1)),
                    Some(0 | b'\r' | b'\\') => break None,
                    // Another control byte: plain.
                    Some(_) => j += 1,
                }
            };
            let Some((end, nl)) = eol else {
                break (j, colon);
            };
            // A line that fails a check is left to the general steps, which
            // report the error in their order.
            if nl + 1 > head_cap || end - pos > max_line {
                break (nl, colon);
            }
            match command {
                None => match buf.get(pos..end).and_then(Command::parse) {
                    Some(c) => command = Some(c),
                    None => break (nl, colon),
                },
                Some(_) if end == pos => {
                    // The blank line that ends the header section.
                    #[cfg(test)]
                    {
                        *scanned += nl + 1 - start;
                    }
                    p.command = command;
                    p.content_length = content_length;
                    p.pos = nl + 1;
                    p.scan = nl + 1;
                    p.body_start = Some(nl + 1);
                    return Some(nl + 1);
                }
                Some(_) => {
                    let Some(c) = colon.filter(|&c| c > pos) else {
                        break (nl, colon);
                    };
                    if lines.len() >= limits.max_headers {
                        break (nl, colon);
                    }
                    if content_length.is_none() && buf.get(pos..c) == Some(&b"content-length"[..]) {
                        match buf.get(c + 1..end).map(parse_content_length) {
                            Some(Ok(n)) if n <= limits.max_body => content_length = Some(n),
                            _ => break (nl, colon),
                        }
                    }
                    lines.push((pos, c, end, false));
                }
            }
            pos = nl + 1;
        };
        #[cfg(test)]
        {
            *scanned += stop - start;
        }
        p.command = command;
        p.content_length = content_length;
        p.pos = pos;
        p.scan = stop;
        p.colon = colon;
        p.bad = None;
        p.backslash = false;
        None
    }

    /// Scans the line at `pos` up to `window_end` for its LF, first colon,
    /// first NUL or CR and whether it has a backslash, resuming where the
    /// last call stopped so no byte is classified twice. Returns the line
    /// once its LF is found (and moves the scan past it); otherwise saves
    /// what was found in `progress` and returns `None`.
    fn scan_line(&mut self, buf: &[u8], pos: usize, window_end: usize) -> Option<ScannedLine> {
        let p = &mut self.progress;
        // One pass over the line: `plain_run` skips the bytes that need no
        // attention a word at a time; only the byte that stops it is
        // classified.
        let from = p.scan.max(pos).min(window_end);
        let fresh = buf.get(from..window_end).unwrap_or_default();
        // Locals, not `p`'s fields, in the loop: they stay in registers.
        let (mut colon, mut bad, mut backslash) = (p.colon, p.bad, p.backslash);
        let mut found = None;
        let mut j = 0;
        while j < fresh.len() {
            j += plain_run(fresh.get(j..).unwrap_or_default());
            let Some(&b) = fresh.get(j) else {
                break;
            };
            match b {
                b'\n' => {
                    found = Some(from + j);
                    break;
                }
                b':' => colon = colon.or(Some(from + j)),
                0 | b'\r' => bad = bad.or(Some(from + j)),
                b'\\' => backslash = true,
                // Another control byte below 0x0E: `plain_run` stops at
                // those too (a cheaper word test), but they are plain.
                _ => {}
            }
            j += 1;
        }
        #[cfg(test)]
        {
            self.scanned += found.map_or(window_end, |nl| nl + 1) - from;
        }
        match found {
            None => {
                (p.colon, p.bad, p.backslash) = (colon, bad, backslash);
                p.scan = window_end;
                None
            }
            Some(nl) => {
                p.colon = None;
                p.bad = None;
                p.backslash = false;
                p.scan = nl + 1;
                Some(ScannedLine {
                    nl,
                    colon,
                    bad,
                    backslash,
                })
            }
        }
    }

    /// Judges a line whose LF has not arrived yet (the scan state is in
    /// `progress`): an error as soon as it can never become valid or is over
    /// a limit, `Ok` while more input may complete it.
    fn check_partial_line(
        &self,
        buf: &[u8],
        pos: usize,
        window_end: usize,
        view_len: usize,
    ) -> Result<(), Error> {
        let limits = &self.limits;
        let max_line = limits.max_header_line;
        let partial_len = view_len.saturating_sub(pos);
        if self.progress.command.is_none() {
            check_command_prefix(buf.get(pos..window_end).unwrap_or_default())?;
        } else if let Some(b) = self.progress.bad {
            // A NUL, or a CR followed by anything, can never become
            // valid. Only the first `max_line + 1` bytes are judged;
            // past them the line is too long anyway.
            let judged = partial_len.min(max_line.saturating_add(1));
            let at = b - pos;
            if at < judged {
                if buf.get(b) == Some(&0) {
                    return Err(Error::NulInHeader);
                }
                if at + 1 < judged {
                    return Err(Error::BadEol);
                }
            }
        }
        if partial_len > max_line.saturating_add(1) {
            return Err(Error::HeaderLineTooLong);
        }
        if view_len > limits.max_frame {
            return Err(Error::FrameTooLarge);
        }
        if view_len > limits.max_header_bytes {
            return Err(Error::HeadersTooLarge);
        }
        Ok(())
    }

    /// Checks a complete header line's name (`pos..colon`), handles the
    /// first `content-length` and remembers the line's span for
    /// [`Decoder::finish_frame`].
    fn record_header(
        &mut self,
        buf: &[u8],
        pos: usize,
        end: usize,
        line: ScannedLine,
    ) -> Result<(), Error> {
        if self.lines.len() >= self.limits.max_headers {
            return Err(Error::TooManyHeaders);
        }
        let colon = match line.colon {
            None => return Err(Error::HeaderWithoutColon),
            Some(c) if c == pos => return Err(Error::EmptyHeaderName),
            Some(c) => c,
        };
        let p = &mut self.progress;
        if p.content_length.is_none() && &buf[pos..colon] == b"content-length" {
            let n = parse_content_length(&buf[colon + 1..end])?;
            if n > self.limits.max_body {
                return Err(Error::BodyTooLarge);
            }
            p.content_length = Some(n);
        }
        self.lines.push((pos, colon, end, line.backslash));
        Ok(())
    }

    /// The body's end for a frame with `content-length: n`: `None` until
    /// `body_start + n + 1` bytes are buffered (reserving room for them), an
    /// error as soon as the header alone shows the frame is bad or too large.
    fn body_end_by_content_length(
        &self,
        buf: &mut BytesMut,
        command: Command,
        body_start: usize,
        n: usize,
    ) -> Result<Option<usize>, Error> {
        // Judged from the header alone, before any of the body is buffered.
        if n > 0 && !command.allows_body() {
            return Err(Error::BodyNotAllowed);
        }
        let needed = body_start + n + 1;
        if needed > self.limits.max_frame {
            return Err(Error::FrameTooLarge);
        }
        if buf.len() < needed {
            buf.reserve(needed - buf.len());
            return Ok(None);
        }
        if buf[body_start + n] != 0 {
            return Err(Error::MissingNul);
        }
        Ok(Some(body_start + n))
    }

    /// The body's end for a frame without `content-length`: the first NUL,
    /// searched for only in bytes not searched by an earlier call and never
    /// further than the limits allow.
    fn body_end_by_nul(
        &mut self,
        buf: &[u8],
        command: Command,
        body_start: usize,
    ) -> Result<Option<usize>, Error> {
        let limits = self.limits;
        // The longest body this frame may still have: within max_body and
        // leaving room for the NUL within max_frame. Searching no further
        // makes the limits hold even when the NUL is already buffered.
        let Some(room) = limits.max_frame.checked_sub(body_start + 1) else {
            return Err(Error::FrameTooLarge);
        };
        let max_len = limits.max_body.min(room);
        let avail_end = buf.len().min(body_start + max_len + 1);
        // Only the bytes not searched by an earlier call.
        let from = (body_start + self.progress.body_scanned).min(avail_end);
        let fresh = buf.get(from..avail_end).unwrap_or_default();
        #[cfg(test)]
        {
            self.scanned += fresh.len();
        }
        match memchr::memchr(0, fresh) {
            Some(i) => {
                if from + i > body_start && !command.allows_body() {
                    return Err(Error::BodyNotAllowed);
                }
                Ok(Some(from + i))
            }
            None => {
                let avail_len = avail_end - body_start;
                self.progress.body_scanned = avail_len;
                if avail_len > 0 && !command.allows_body() {
                    return Err(Error::BodyNotAllowed);
                }
                if avail_len > max_len {
                    return Err(if avail_len > limits.max_body {
                        Error::BodyTooLarge
                    } else {
                        Error::FrameTooLarge
                    });
                }
                Ok(None)
            }
        }
    }

    /// Splits the frame (through its NUL) off `buf` and builds it: header
    /// names and values are slices of the frozen bytes, unescaped per the
    /// version only when the line has a backslash; the body is a slice too.
    fn finish_frame(
        &self,
        buf: &mut BytesMut,
        command: Command,
        body_start: usize,
        body_end: usize,
    ) -> Result<Frame, Error> {
        let mut frame_bytes: Bytes = buf.split_to(body_end + 1).freeze();
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
        // A non-empty body takes over the frame's own reference to the
        // buffer (one reference-count increment and decrement fewer than a
        // slice); an empty one is `Bytes::new()` and keeps nothing alive.
        let body = if body_end > body_start {
            frame_bytes.truncate(body_end);
            frame_bytes.advance(body_start);
            frame_bytes
        } else {
            Bytes::new()
        };
        Ok(Frame {
            command,
            headers,
            body,
        })
    }
}

/// What [`Decoder::scan_line`] found in a complete line: its LF, first
/// colon, first NUL or CR, and whether it has a backslash.
#[derive(Debug, Clone, Copy)]
struct ScannedLine {
    nl: usize,
    colon: Option<usize>,
    bad: Option<usize>,
    backslash: bool,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// A word with the high bit set in the byte of `w` (little-endian) that is
/// the first one below 0x0E (NUL, CR, LF and other control bytes), a colon
/// or a backslash. Bits above the first may be spurious (a borrow carries
/// into the next byte), so only the lowest set bit is meaningful; zero when
/// no byte matches.
#[inline(always)]
fn special_bytes(w: u64) -> u64 {
    // `x - k` borrows into the high bit of a byte below `k`; `& !x` drops
    // bytes that had their high bit set already (0x80 and up are plain).
    let below = w.wrapping_sub(ONES * 0x0E) & !w;
    let c = w ^ (ONES * u64::from(b':'));
    let colon = c.wrapping_sub(ONES) & !c;
    let s = w ^ (ONES * u64::from(b'\\'));
    let backslash = s.wrapping_sub(ONES) & !s;
    (below | colon | backslash) & HIGHS
}

/// [`special_bytes`] without the colon: for the value part of a header
/// line, where only the first colon matters.
#[inline(always)]
fn value_special_bytes(w: u64) -> u64 {
    let below = w.wrapping_sub(ONES * 0x0E) & !w;
    let s = w ^ (ONES * u64::from(b'\\'));
    let backslash = s.wrapping_sub(ONES) & !s;
    (below | backslash) & HIGHS
}

/// [`plain_run`] for a header value: a colon does not end the run.
#[inline(always)]
fn value_run(bytes: &[u8]) -> usize {
    let mut i = 0;
    while let Some(word) = bytes.get(i..i + 8) {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let m = value_special_bytes(u64::from_le_bytes(word));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if b < 0x0E || b == b'\\' {
            return i;
        }
        i += 1;
    }
    i
}

/// The length of the run of plain bytes (none below 0x0E, no colon, no
/// backslash) at the front of `bytes`, tested eight bytes at a time (SWAR:
/// plain `u64` arithmetic, no `unsafe`, no per-byte table). A control byte
/// other than LF, CR and NUL also ends the run; the caller treats it as
/// plain.
#[inline(always)]
fn plain_run(bytes: &[u8]) -> usize {
    let mut i = 0;
    while let Some(word) = bytes.get(i..i + 8) {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let m = special_bytes(u64::from_le_bytes(word));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if b < 0x0E || b == b':' || b == b'\\' {
            return i;
        }
        i += 1;
    }
    i
}

/// Takes a heart-beat EOL (`\n` or `\r\n`) off the front of `buf`, between
/// frames. `None` when `buf` starts a frame; otherwise the item to return
/// (`Ok(None)` while the buffer is empty or holds a lone CR).
fn take_heart_beat(buf: &mut BytesMut) -> Option<Result<Option<Decoded>, Error>> {
    match buf.first() {
        None => Some(Ok(None)),
        Some(b'\n') => {
            let _ = buf.split_to(1);
            Some(Ok(Some(Decoded::HeartBeat)))
        }
        Some(b'\r') => Some(match buf.get(1) {
            None => Ok(None),
            Some(b'\n') => {
                let _ = buf.split_to(2);
                Ok(Some(Decoded::HeartBeat))
            }
            Some(_) => Err(Error::BadEol),
        }),
        Some(_) => None,
    }
}

/// The command line (EOL excluded) as a [`Command`].
fn parse_command_line(line: &[u8]) -> Result<Command, Error> {
    Command::parse(line).ok_or(Error::UnknownCommand)
}

/// No NUL and no bare CR in a complete header line `pos..end` (`bad` is the
/// first NUL or CR the scan found); a CR at index `max_line` is left for the
/// length check, which an incremental reader would have hit first.
fn check_line_bytes(
    buf: &[u8],
    pos: usize,
    end: usize,
    bad: Option<usize>,
    max_line: usize,
) -> Result<(), Error> {
    if let Some(b) = bad.filter(|&b| b < end) {
        if buf[b] == 0 {
            return Err(Error::NulInHeader);
        }
        if b - pos < max_line {
            return Err(Error::BadEol);
        }
    }
    Ok(())
}

/// The limits on a complete command or header line of `line_len` bytes whose
/// LF is at `nl`: the line's length, the frame's and the header section's.
fn check_line_limits(limits: &Limits, line_len: usize, nl: usize) -> Result<(), Error> {
    if line_len > limits.max_header_line {
        return Err(Error::HeaderLineTooLong);
    }
    if nl + 1 > limits.max_frame {
        return Err(Error::FrameTooLarge);
    }
    if nl + 1 > limits.max_header_bytes {
        return Err(Error::HeadersTooLarge);
    }
    Ok(())
}

/// Common header names as static `Bytes`: no reference count to touch when
/// the frame is built or dropped.
fn well_known_name(raw: &[u8]) -> Option<Bytes> {
    // A `match` on byte strings compiles to a switch on the length and one
    // comparison, not a search through the list.
    let name: &'static [u8] = match raw {
        b"destination" => b"destination",
        b"content-type" => b"content-type",
        b"content-length" => b"content-length",
        b"receipt" => b"receipt",
        b"receipt-id" => b"receipt-id",
        b"id" => b"id",
        b"ack" => b"ack",
        b"subscription" => b"subscription",
        b"message-id" => b"message-id",
        b"transaction" => b"transaction",
        b"message" => b"message",
        b"persistent" => b"persistent",
        b"accept-version" => b"accept-version",
        b"host" => b"host",
        b"login" => b"login",
        b"passcode" => b"passcode",
        b"heart-beat" => b"heart-beat",
        b"version" => b"version",
        b"session" => b"session",
        b"server" => b"server",
        _ => return None,
    };
    Some(Bytes::from_static(name))
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

    /// A header block of `n` lines of `len` bytes each.
    fn big_headers(n: usize, len: usize) -> Vec<u8> {
        let mut v = b"SEND\ndestination:/queue/a\n".to_vec();
        for i in 0..n {
            let name = format!("h{i:04}:");
            v.extend_from_slice(name.as_bytes());
            v.extend(std::iter::repeat_n(b'x', len - name.len()));
            v.push(b'\n');
        }
        v.push(b'\n');
        v
    }

    fn roomy() -> Limits {
        Limits {
            max_frame: 4 * 1024 * 1024,
            max_header_bytes: 1024 * 1024,
            ..Limits::default()
        }
    }

    #[test]
    fn trickled_body_after_a_large_header_block_is_scanned_once() {
        // ~480 KB of headers, then a body one byte per call: each byte must
        // be examined once, not the whole header section again per call.
        let head = big_headers(60, 8000);
        assert!(head.len() > 480_000);
        for content_length in [false, true] {
            let mut dec = Decoder::new(roomy());
            let mut buf = BytesMut::new();
            let body_len = 10_000;
            let mut wire = head.clone();
            if content_length {
                let cl = format!("content-length:{body_len}\n\n");
                wire.truncate(wire.len() - 1);
                wire.extend_from_slice(cl.as_bytes());
            }
            let header_len = wire.len();
            buf.extend_from_slice(&wire);
            assert_eq!(dec.decode(&mut buf), Ok(None));
            for i in 0..body_len {
                buf.extend_from_slice(&[b'a' + (i % 26) as u8]);
                assert_eq!(dec.decode(&mut buf), Ok(None));
            }
            buf.extend_from_slice(b"\0");
            let Ok(Some(Decoded::Frame(f))) = dec.decode(&mut buf) else {
                panic!("frame expected");
            };
            assert_eq!(f.body.len(), body_len);
            assert_eq!(f.headers.len(), 61 + usize::from(content_length));
            assert!(
                dec.scanned <= header_len + body_len + 1,
                "scanned {} bytes of a {}-byte frame (content-length: {content_length})",
                dec.scanned,
                header_len + body_len + 1
            );
        }
    }

    #[test]
    fn trickled_header_line_is_scanned_once() {
        let mut dec = Decoder::new(Limits::default());
        let line = big_headers(1, 8000);
        let mut buf = BytesMut::new();
        for &b in &line {
            buf.extend_from_slice(&[b]);
            assert_eq!(dec.decode(&mut buf), Ok(None));
        }
        buf.extend_from_slice(b"\0");
        assert!(matches!(dec.decode(&mut buf), Ok(Some(Decoded::Frame(_)))));
        assert!(dec.scanned <= line.len() + 1, "scanned {}", dec.scanned);
    }

    #[test]
    fn decode_rejects_header_section_over_limit() {
        let mut l = Limits {
            max_header_bytes: 1000,
            ..Limits::default()
        };
        let wire = [big_headers(3, 400), b"\0".to_vec()].concat();
        assert_eq!(
            Decoder::new(l).decode(&mut BytesMut::from(&wire[..])),
            Err(Error::HeadersTooLarge)
        );
        // The same error, as early, however the input is split.
        let mut dec = Decoder::new(l);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let err = wire.iter().find_map(|&b| {
            buf.extend_from_slice(&[b]);
            fed += 1;
            dec.decode(&mut buf).err()
        });
        assert_eq!(err, Some(Error::HeadersTooLarge));
        assert_eq!(fed, 1001);
        // Exactly at the limit is fine.
        let fits = big_headers(2, 400);
        l.max_header_bytes = fits.len();
        let mut buf = BytesMut::from(&[fits, b"\0".to_vec()].concat()[..]);
        assert!(matches!(
            Decoder::new(l).decode(&mut buf),
            Ok(Some(Decoded::Frame(_)))
        ));
        // The default allows the default line limit several times over.
        let d = Limits::default();
        assert!(d.max_header_bytes >= 4 * d.max_header_line);
    }

    #[test]
    fn a_new_shorter_buffer_starts_a_new_frame() {
        let mut dec = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"SEND\ndestination:/a\n"[..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        let mut other = BytesMut::from(&b"ACK\nid:1\n\n\0"[..]);
        let Ok(Some(Decoded::Frame(f))) = dec.decode(&mut other) else {
            panic!("frame expected");
        };
        assert_eq!(f.command, Command::Ack);
        dec.reset();
        let mut buf = BytesMut::from(&b"SEND\ndestination:/a\n\nx\0"[..]);
        assert!(matches!(dec.decode(&mut buf), Ok(Some(Decoded::Frame(_)))));
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

    /// Everything a decoder returns for `wire`, fed in pieces of `step`
    /// bytes (0: all at once), and the bytes it scanned.
    fn run(mut dec: Decoder, wire: &[u8], step: usize) -> (Vec<Result<Decoded, Error>>, usize) {
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        let chunks: Vec<&[u8]> = if step == 0 {
            vec![wire]
        } else {
            wire.chunks(step).collect()
        };
        'feed: for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(item)) => out.push(Ok(item)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        break 'feed;
                    }
                }
            }
        }
        (out, dec.scanned)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// The fast path gives exactly what the general steps give (frames,
        /// heart-beats, errors and where they happen), whole or split, and
        /// scans no more bytes.
        #[test]
        fn fast_path_matches_the_general_steps(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    &b"SEND\n"[..], b"MESSAGE\r\n", b"SUBSCRIBE\n", b"CONNECT\n", b"SE",
                    b"destination:/q/a\n", b"id:1\r\n", b"content-length:", b"3", b"0",
                    b"content-length:2\n", b"a:b:c\n", b"x", b"abcdefghijkl", b":", b"\n",
                    b"\r\n", b"\r", b"\0", b"\\", b"\\c", b"\t", b"\n\n", b"body\0",
                    b"h\\n:v\\c\n", b"123456789", b"\0\n",
                ]),
                0..40,
            ),
            small in proptest::prelude::any::<bool>(),
            version in 0usize..3,
            step in 0usize..4,
        ) {
            let wire = parts.concat();
            let limits = if small {
                Limits {
                    max_frame: 64,
                    max_headers: 3,
                    max_header_line: 12,
                    max_body: 8,
                    max_header_bytes: 40,
                }
            } else {
                Limits::default()
            };
            let mut fast = Decoder::new(limits);
            fast.set_version(Version::ALL[version]);
            let mut general = fast.clone();
            general.general_only = true;
            let (a, scanned_fast) = run(fast, &wire, step);
            let (b, scanned_general) = run(general, &wire, step);
            proptest::prop_assert_eq!(a, b);
            proptest::prop_assert!(scanned_fast <= scanned_general);
        }
    }
}
