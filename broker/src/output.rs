//! A connection's pending output: one contiguous buffer that frames are
//! encoded straight into, with segment marks saying which runs may travel
//! as WebSocket text and which must be binary.
//!
//! TCP writes the buffer as it is (one `write_all`, no per-frame copies or
//! allocations); WebSocket sends one message per run of frames of the same
//! kind (STOMP over WebSocket allows several frames per message), as
//! zero-copy slices of the buffer. With `listen.ws_frame_per_message` runs
//! never merge, so every frame is its own WebSocket message.

use bytes::{Bytes, BytesMut};

/// A run of bytes that is all text or all binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// End offset (exclusive) in the batch.
    pub end: usize,
    /// Whether a WebSocket may carry it in a text message.
    pub text: bool,
}

/// What one flush writes.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The frames, back to back.
    pub bytes: Bytes,
    /// Text/binary runs, in order, covering `bytes`.
    pub segments: Vec<Segment>,
    /// Bytes to credit to the connection's outbound budget once written.
    pub cost: usize,
    /// MESSAGE frames among the frames (`stomp_messages_delivered_total`
    /// counts them once the write succeeds).
    pub messages: u64,
}

impl Batch {
    /// The runs as byte slices with their kind.
    pub fn runs(&self) -> impl Iterator<Item = (Bytes, bool)> + '_ {
        let mut start = 0;
        self.segments.iter().map(move |s| {
            let run = self.bytes.slice(start..s.end);
            start = s.end;
            (run, s.text)
        })
    }
}

/// Pending output.
#[derive(Debug, Default)]
pub struct Output {
    buf: BytesMut,
    segments: Vec<Segment>,
    cost: usize,
    messages: u64,
    frame_per_segment: bool,
}

/// Capacity kept between flushes; more is released so idle connections stay small.
const KEEP_CAPACITY: usize = 64 * 1024;

impl Output {
    /// Pending output; with `frame_per_segment` every committed frame
    /// stays its own segment (one WebSocket message per frame).
    pub fn new(frame_per_segment: bool) -> Self {
        Output {
            frame_per_segment,
            ..Output::default()
        }
    }

    /// The buffer to encode the next frame into (then call [`Output::commit`]).
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Marks everything encoded since the last commit as one frame of the
    /// given kind, costing `cost` budget bytes.
    pub fn commit(&mut self, text: bool, cost: usize) {
        let end = self.buf.len();
        let start = self.segments.last().map_or(0, |s| s.end);
        if end == start {
            return;
        }
        self.cost += cost;
        match self.segments.last_mut() {
            Some(last) if last.text == text && !self.frame_per_segment => last.end = end,
            _ => self.segments.push(Segment { end, text }),
        }
    }

    /// [`Output::commit`] for a MESSAGE frame: also counted in the batch's
    /// [`Batch::messages`].
    pub fn commit_message(&mut self, text: bool, cost: usize) {
        self.commit(text, cost);
        self.messages += 1;
    }

    /// Like [`Output::commit`], deciding text or binary by whether the new
    /// bytes are UTF-8.
    pub fn commit_checked(&mut self, cost: usize) {
        let start = self.segments.last().map_or(0, |s| s.end);
        let text = std::str::from_utf8(&self.buf[start..]).is_ok();
        self.commit(text, cost);
    }

    /// Bytes pending.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes everything pending for one write.
    pub fn take(&mut self) -> Batch {
        let batch = Batch {
            bytes: self.buf.split().freeze(),
            segments: std::mem::take(&mut self.segments),
            cost: std::mem::take(&mut self.cost),
            messages: std::mem::take(&mut self.messages),
        };
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        }
        batch
    }

    /// Drops everything pending; returns the budget bytes it held.
    pub fn discard(&mut self) -> usize {
        self.buf.clear();
        self.segments.clear();
        self.messages = 0;
        std::mem::take(&mut self.cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_the_same_kind_merge() {
        let mut o = Output::default();
        o.buf().extend_from_slice(b"A\0");
        o.commit(true, 1);
        o.buf().extend_from_slice(b"B\0");
        o.commit_message(true, 1);
        o.buf().extend_from_slice(&[0xff, 0]);
        o.commit_message(false, 5);
        o.buf().extend_from_slice(b"\n");
        o.commit_checked(0);
        let b = o.take();
        assert_eq!(b.cost, 7);
        assert_eq!(b.messages, 2);
        let runs: Vec<(Bytes, bool)> = b.runs().collect();
        assert_eq!(
            runs,
            vec![
                (Bytes::from_static(b"A\0B\0"), true),
                (Bytes::from_static(&[0xff, 0]), false),
                (Bytes::from_static(b"\n"), true)
            ]
        );
        assert!(o.is_empty());
        assert_eq!(o.take().messages, 0, "take starts a new count");
    }

    #[test]
    fn discard_forgets_the_message_count() {
        let mut o = Output::default();
        o.buf().extend_from_slice(b"M\0");
        o.commit_message(true, 3);
        assert_eq!(o.discard(), 3);
        o.buf().extend_from_slice(b"R\0");
        o.commit(true, 0);
        assert_eq!(o.take().messages, 0);
    }

    #[test]
    fn frame_per_segment_keeps_frames_apart() {
        let mut o = Output::new(true);
        o.buf().extend_from_slice(b"A\0");
        o.commit(true, 1);
        o.buf().extend_from_slice(b"B\0");
        o.commit(true, 1);
        let runs: Vec<(Bytes, bool)> = o.take().runs().collect();
        assert_eq!(
            runs,
            vec![
                (Bytes::from_static(b"A\0"), true),
                (Bytes::from_static(b"B\0"), true)
            ]
        );
    }
}
